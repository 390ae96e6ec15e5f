import { sql } from "kysely";
import type { Db } from "../../db/index.js";
import type { ApiKeysTable, OrganizationsTable, UsersTable } from "./orgs.tables.js";

export type OrgRow = OrganizationsTable;
export type UserRow = UsersTable;
export type ApiKeyRow = ApiKeysTable;

export async function insertOrg(db: Db, row: OrgRow): Promise<boolean> {
  const result = await db
    .insertInto("organizations")
    .values({ ...row, metadata: JSON.stringify(row.metadata) })
    .onConflict((oc) => oc.column("external_id").doNothing())
    .executeTakeFirst();
  return Number(result.numInsertedOrUpdatedRows ?? 0n) === 1;
}

export function findOrgById(db: Db, id: string) {
  return db.selectFrom("organizations").selectAll().where("id", "=", id).executeTakeFirst();
}

export function findOrgByExternalId(db: Db, externalId: string) {
  return db
    .selectFrom("organizations")
    .selectAll()
    .where("external_id", "=", externalId)
    .executeTakeFirst();
}

export function listOrgs(
  db: Db,
  opts: { limit: number; before?: string; search?: string; ids?: string[] },
) {
  let q = db
    .selectFrom("organizations")
    .selectAll()
    .orderBy("id", "desc")
    .limit(opts.limit + 1);
  if (opts.before) q = q.where("id", "<", opts.before);
  if (opts.ids) q = opts.ids.length ? q.where("id", "in", opts.ids) : q.where(sql<boolean>`false`);
  if (opts.search) {
    const like = `%${opts.search.replace(/[\\%_]/g, (c) => `\\${c}`)}%`;
    q = q.where((eb) =>
      eb.or([
        eb("name", "ilike", like),
        eb("external_id", "ilike", like),
        eb("id", "=", opts.search!),
      ]),
    );
  }
  return q.execute();
}

export async function updateOrg(
  db: Db,
  id: string,
  patch: Partial<Pick<OrgRow, "name" | "plan" | "overdraft_limit" | "metadata">> & {
    updated_at: Date;
  },
) {
  const values: Record<string, unknown> = { ...patch };
  if (patch.metadata !== undefined) values.metadata = JSON.stringify(patch.metadata);
  return db
    .updateTable("organizations")
    .set(values)
    .where("id", "=", id)
    .returningAll()
    .executeTakeFirst();
}

export async function insertUser(db: Db, row: UserRow): Promise<boolean> {
  const result = await db
    .insertInto("users")
    .values(row)
    .onConflict((oc) => oc.columns(["org_id", "id"]).doNothing())
    .executeTakeFirst();
  return Number(result.numInsertedOrUpdatedRows ?? 0n) === 1;
}

export function findUser(db: Db, orgId: string, userId: string) {
  return db
    .selectFrom("users")
    .selectAll()
    .where("org_id", "=", orgId)
    .where("id", "=", userId)
    .executeTakeFirst();
}

export function listUsers(db: Db, orgId: string, limit: number, after?: string) {
  let q = db
    .selectFrom("users")
    .selectAll()
    .where("org_id", "=", orgId)
    .orderBy("id")
    .limit(limit + 1);
  if (after !== undefined) q = q.where("id", ">", after);
  return q.execute();
}

export function updateUser(
  db: Db,
  orgId: string,
  userId: string,
  patch: Partial<Pick<UserRow, "email" | "name" | "role">> & { updated_at: Date },
) {
  return db
    .updateTable("users")
    .set(patch)
    .where("org_id", "=", orgId)
    .where("id", "=", userId)
    .returningAll()
    .executeTakeFirst();
}

export async function deleteUser(db: Db, orgId: string, userId: string): Promise<boolean> {
  const r = await db
    .deleteFrom("users")
    .where("org_id", "=", orgId)
    .where("id", "=", userId)
    .executeTakeFirst();
  return Number(r.numDeletedRows) === 1;
}

export async function insertApiKey(db: Db, row: ApiKeyRow): Promise<void> {
  await db.insertInto("api_keys").values(row).execute();
}

/**
 * Idempotent: the configured admin key is registered once, by hash. Returns the registered row,
 * which may be an earlier one, revoked since.
 */
export async function registerApiKeyByHash(db: Db, row: ApiKeyRow): Promise<ApiKeyRow> {
  await db
    .insertInto("api_keys")
    .values(row)
    // A key registered before `keyPrefix` showed less keeps nothing more than it shows now.
    .onConflict((oc) =>
      oc
        .column("key_hash")
        .doUpdateSet({ key_prefix: (eb) => eb.ref("excluded.key_prefix") })
        .whereRef("api_keys.key_prefix", "<>", "excluded.key_prefix"),
    )
    .execute();
  return db
    .selectFrom("api_keys")
    .selectAll()
    .where("key_hash", "=", row.key_hash)
    .executeTakeFirstOrThrow();
}

/** Revokes the platform keys registered under `name` except the one with `keepHash`. */
export async function revokeNamedPlatformKeysExcept(
  db: Db,
  name: string,
  keepHash: string,
  at: Date,
): Promise<void> {
  await db
    .updateTable("api_keys")
    .set({ revoked_at: at })
    .where("org_id", "is", null)
    .where("role", "=", "platform")
    .where("name", "=", name)
    .where("key_hash", "!=", keepHash)
    .where("revoked_at", "is", null)
    .execute();
}

export function findActiveKeyByHash(db: Db, hash: string) {
  return db
    .selectFrom("api_keys")
    .selectAll()
    .where("key_hash", "=", hash)
    .where("revoked_at", "is", null)
    .executeTakeFirst();
}

export function findActiveKeyById(db: Db, id: string) {
  return db
    .selectFrom("api_keys")
    .selectAll()
    .where("id", "=", id)
    .where("revoked_at", "is", null)
    .executeTakeFirst();
}

export async function countPlatformKeys(db: Db): Promise<number> {
  const row = await db
    .selectFrom("api_keys")
    .select(sql<string>`count(*)`.as("n"))
    .where("org_id", "is", null)
    .where("revoked_at", "is", null)
    .executeTakeFirstOrThrow();
  return Number(row.n);
}

export function listApiKeys(db: Db, orgId: string | null, limit: number, before?: string) {
  let q = db
    .selectFrom("api_keys")
    .selectAll()
    .orderBy("id", "desc")
    .limit(limit + 1);
  q = orgId === null ? q.where("org_id", "is", null) : q.where("org_id", "=", orgId);
  if (before) q = q.where("id", "<", before);
  return q.execute();
}

export async function revokeApiKey(db: Db, orgId: string, keyId: string, at: Date) {
  return db
    .updateTable("api_keys")
    .set({ revoked_at: at })
    .where("org_id", "=", orgId)
    .where("id", "=", keyId)
    .where("revoked_at", "is", null)
    .returningAll()
    .executeTakeFirst();
}

export async function touchApiKey(db: Db, keyId: string, at: Date): Promise<void> {
  await db.updateTable("api_keys").set({ last_used_at: at }).where("id", "=", keyId).execute();
}

export async function insertPortalSession(
  db: Db,
  row: {
    org_id: string;
    id: string;
    user_id: string;
    token_hash: string;
    return_url: string | null;
    created_at: Date;
    expires_at: Date;
  },
) {
  await db
    .insertInto("portal_sessions")
    .values({ ...row, used_at: null })
    .execute();
}

/** The portal link with this token hash if it can still be used (unused, not expired). */
export function findUsablePortalSession(db: Db, tokenHash: string, now: Date) {
  return db
    .selectFrom("portal_sessions")
    .select(["org_id", "user_id"])
    .where("token_hash", "=", tokenHash)
    .where("used_at", "is", null)
    .where("expires_at", ">", now)
    .executeTakeFirst();
}

/** One-time: marks the link used and returns it, or nothing if unknown, used or expired. */
export function consumePortalSession(db: Db, tokenHash: string, now: Date) {
  return db
    .updateTable("portal_sessions")
    .set({ used_at: now })
    .where("token_hash", "=", tokenHash)
    .where("used_at", "is", null)
    .where("expires_at", ">", now)
    .returningAll()
    .executeTakeFirst();
}

export function findApiKeyById(db: Db, keyId: string) {
  return db.selectFrom("api_keys").selectAll().where("id", "=", keyId).executeTakeFirst();
}

/** Revokes any key by id, platform keys included (operators, CLI); nothing if already revoked. */
export function revokeApiKeyById(db: Db, keyId: string, at: Date) {
  return db
    .updateTable("api_keys")
    .set({ revoked_at: at })
    .where("id", "=", keyId)
    .where("revoked_at", "is", null)
    .returningAll()
    .executeTakeFirst();
}

/**
 * Keys without paging (CLI): of one organisation, platform keys (`orgId` null), or every key
 * (`orgId` undefined) — platform keys first, then by organisation, newest first.
 */
export function listAllApiKeys(db: Db, orgId?: string | null) {
  let q = db
    .selectFrom("api_keys")
    .selectAll()
    .orderBy(sql`org_id is not null`)
    .orderBy("org_id")
    .orderBy("id", "desc");
  if (orgId === null) q = q.where("org_id", "is", null);
  else if (orgId !== undefined) q = q.where("org_id", "=", orgId);
  return q.execute();
}
