import { ConfigError } from "../../app/config.js";
import type { AppContext } from "../../app/context.js";
import { fail, ok, type Result } from "../../app/errors.js";
import type { Role } from "../../app/http.js";
import type { Db } from "../../db/index.js";
import { creditsToDb } from "../ledger/credits.js";
import { generateSecret, hashSecret, keyPrefix } from "./keys.js";
import * as repo from "./orgs.repo.js";

export type Organization = repo.OrgRow;
export type UserRole = "admin" | "billing" | "viewer";
export type OrgKeyRole = Exclude<Role, "platform">;

export const PORTAL_SESSION_TTL_MS = 15 * 60 * 1000;

export interface CreateOrgInput {
  name: string;
  external_id?: string | null;
  plan?: string;
  overdraft_limit?: bigint;
  metadata?: Record<string, string>;
}

export async function createOrganization(
  ctx: AppContext,
  input: CreateOrgInput,
): Promise<Result<Organization, "invalid_state">> {
  const now = ctx.clock.now();
  const row: Organization = {
    id: ctx.ids.newId("org"),
    name: input.name,
    external_id: input.external_id ?? null,
    plan: input.plan ?? "professional",
    overdraft_limit: creditsToDb(input.overdraft_limit ?? 0n),
    metadata: input.metadata ?? {},
    created_at: now,
    updated_at: now,
  };
  if (!(await repo.insertOrg(ctx.db, row))) {
    return fail("invalid_state", `An organisation with external_id "${input.external_id}" exists.`);
  }
  return ok((await repo.findOrgById(ctx.db, row.id))!);
}

/** `org_…` ids and `ext:<external_id>` both name an organisation. */
export function resolveOrganization(db: Db, ref: string): Promise<Organization | undefined> {
  if (ref.startsWith("ext:")) return repo.findOrgByExternalId(db, ref.slice(4));
  return repo.findOrgById(db, ref);
}

export function isCreditsEligible(ctx: AppContext, org: Organization): boolean {
  return ctx.config.creditPlans.includes(org.plan);
}

export interface CreatedKey {
  row: repo.ApiKeyRow;
  secret: string;
}

export async function createApiKey(
  ctx: AppContext,
  input: { orgId: string | null; name: string; role: Role },
): Promise<CreatedKey> {
  const secret = generateSecret("key");
  const row: repo.ApiKeyRow = {
    id: ctx.ids.newId("key"),
    org_id: input.orgId,
    name: input.name,
    role: input.role,
    key_hash: hashSecret(secret),
    key_prefix: keyPrefix(secret),
    created_at: ctx.clock.now(),
    last_used_at: null,
    revoked_at: null,
  };
  await repo.insertApiKey(ctx.db, row);
  return { row, secret };
}

/** The name under which `TALLY_ADMIN_KEY` is registered. */
export const ADMIN_KEY_NAME = "TALLY_ADMIN_KEY";

/**
 * Start-up: accept `TALLY_ADMIN_KEY` as a platform key; without one, generate a platform key
 * when none exists and return its secret so the caller prints it once. Changing
 * `TALLY_ADMIN_KEY` rotates it: keys registered from its earlier values stop working. A value
 * once revoked (by hand, or by such a rotation) never works again: starting with it is refused,
 * so an instance started with an old or leaked value cannot bring it back for every instance.
 */
export async function bootstrapPlatformKey(ctx: AppContext): Promise<string | null> {
  if (ctx.config.adminKey) {
    const keyHash = hashSecret(ctx.config.adminKey);
    const registered = await repo.registerApiKeyByHash(ctx.db, {
      id: ctx.ids.newId("key"),
      org_id: null,
      name: ADMIN_KEY_NAME,
      role: "platform",
      key_hash: keyHash,
      key_prefix: keyPrefix(ctx.config.adminKey),
      created_at: ctx.clock.now(),
      last_used_at: null,
      revoked_at: null,
    });
    if (registered.revoked_at !== null) {
      throw new ConfigError([
        `TALLY_ADMIN_KEY: this key (${registered.id}) was revoked on ${registered.revoked_at.toISOString()}; set a new value to rotate it`,
      ]);
    }
    await repo.revokeNamedPlatformKeysExcept(ctx.db, ADMIN_KEY_NAME, keyHash, ctx.clock.now());
    // Revoked here: this instance forgets at once (others through `tally_cache`).
    ctx.lookups.invalidate();
    return null;
  }
  if ((await repo.countPlatformKeys(ctx.db)) > 0) return null;
  const { secret } = await createApiKey(ctx, {
    orgId: null,
    name: "initial admin",
    role: "platform",
  });
  return secret;
}

export async function createPortalSession(
  ctx: AppContext,
  input: { orgId: string; userId: string; returnUrl: string | null },
): Promise<Result<{ url: string; expires_at: Date }, "invalid_request">> {
  const user = await repo.findUser(ctx.db, input.orgId, input.userId);
  if (!user) return fail("invalid_request", `No user "${input.userId}" in this organisation.`);
  const token = generateSecret("portal");
  const now = ctx.clock.now();
  const expires = new Date(now.getTime() + PORTAL_SESSION_TTL_MS);
  await repo.insertPortalSession(ctx.db, {
    org_id: input.orgId,
    id: ctx.ids.newId("psn"),
    user_id: input.userId,
    token_hash: hashSecret(token),
    return_url: input.returnUrl,
    created_at: now,
    expires_at: expires,
  });
  return ok({ url: `${ctx.config.publicUrl}/portal/enter?token=${token}`, expires_at: expires });
}

// ---- browser sessions (used by the web module) ------------------------------------------------

/** The active (unrevoked) API key with this secret, if any. */
export function findActiveKeyBySecret(ctx: AppContext, secret: string) {
  return repo.findActiveKeyByHash(ctx.db, hashSecret(secret));
}

/** The API key with this id if it is still active. */
export function findActiveKeyById(ctx: AppContext, id: string) {
  return repo.findActiveKeyById(ctx.db, id);
}

export function findUser(ctx: AppContext, orgId: string, userId: string) {
  return repo.findUser(ctx.db, orgId, userId);
}

/** Whom a portal link that can still be used signs in, without using it. */
export async function peekPortalLink(
  ctx: AppContext,
  token: string,
): Promise<{ orgId: string; userId: string } | null> {
  const row = await repo.findUsablePortalSession(ctx.db, hashSecret(token), ctx.clock.now());
  return row ? { orgId: row.org_id, userId: row.user_id } : null;
}

/**
 * Redeems a portal link: one time, before it expires. Returns what the link grants, or null
 * for an unknown, used or expired token.
 */
export async function redeemPortalLink(
  ctx: AppContext,
  token: string,
): Promise<{ orgId: string; userId: string; returnUrl: string | null } | null> {
  const row = await repo.consumePortalSession(ctx.db, hashSecret(token), ctx.clock.now());
  return row ? { orgId: row.org_id, userId: row.user_id, returnUrl: row.return_url } : null;
}

/** An API key as the API and the CLI show it: never the secret or its hash. */
export function apiKeyView(k: repo.ApiKeyRow) {
  return {
    id: k.id,
    name: k.name,
    role: k.role,
    org_id: k.org_id,
    key_prefix: k.key_prefix,
    created_at: k.created_at.toISOString(),
    last_used_at: k.last_used_at?.toISOString() ?? null,
    revoked_at: k.revoked_at?.toISOString() ?? null,
  };
}
