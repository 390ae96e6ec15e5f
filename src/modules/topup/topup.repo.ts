import { sql } from "kysely";
import { q, type Sql } from "../../db/bulk.js";
import type { Db } from "../../db/index.js";
import type { TopupAttemptStatus, TopupAttemptsTable, TopupSettingsTable } from "./topup.tables.js";

export type SettingsRow = TopupSettingsTable;
export type AttemptRow = TopupAttemptsTable;

// ---- settings -------------------------------------------------------------------------------

/** `org_id`s among `orgIds` with auto-topup enabled (one indexed lookup). */
/** Which of `orgIds` have auto-topup enabled: rows `{ org_id, module: 'topup' }` (hot path SQL). */
export function enabledOrgsQuery(orgIds: readonly string[]): Sql {
  return q`select org_id, 'topup' as module from topup_settings
    where org_id = any(${[...orgIds]}::text[]) and enabled`;
}

export function findSettings(db: Db, orgId: string) {
  return db.selectFrom("topup_settings").selectAll().where("org_id", "=", orgId).executeTakeFirst();
}

/** The settings row, locked until the transaction ends. */
export function lockSettings(db: Db, orgId: string) {
  return db
    .selectFrom("topup_settings")
    .selectAll()
    .where("org_id", "=", orgId)
    .forUpdate()
    .executeTakeFirst();
}

export function findEnabledSettings(db: Db, orgIds: readonly string[]) {
  return db
    .selectFrom("topup_settings")
    .selectAll()
    .where("org_id", "in", orgIds)
    .where("enabled", "=", true)
    .execute();
}

export async function upsertSettings(db: Db, row: SettingsRow): Promise<SettingsRow> {
  const { org_id: _org, created_at: _created, ...update } = row;
  return db
    .insertInto("topup_settings")
    .values(row)
    .onConflict((oc) => oc.column("org_id").doUpdateSet(update))
    .returningAll()
    .executeTakeFirstOrThrow();
}

export function updateSettings(
  db: Db,
  orgId: string,
  patch: Partial<Omit<SettingsRow, "org_id" | "created_at">> & { updated_at: Date },
) {
  return db
    .updateTable("topup_settings")
    .set(patch)
    .where("org_id", "=", orgId)
    .returningAll()
    .executeTakeFirst();
}

/** One more failure; disables auto-topup when it reaches `max_failures`. */
export function recordFailure(db: Db, orgId: string, reason: string, now: Date) {
  return db
    .updateTable("topup_settings")
    .set((eb) => ({
      failure_count: eb("failure_count", "+", 1),
      enabled: sql<boolean>`case when failure_count + 1 >= max_failures then false else enabled end`,
      disabled_reason: sql<
        string | null
      >`case when enabled and failure_count + 1 >= max_failures then ${reason} else disabled_reason end`,
      updated_at: now,
    }))
    .where("org_id", "=", orgId)
    .returningAll()
    .executeTakeFirst();
}

// ---- attempts -------------------------------------------------------------------------------

/**
 * Inserts an `in_flight` attempt unless the organisation already has one: the unique partial
 * index decides, so two instances can never both start one. Returns whether it was inserted.
 */
export async function insertInFlightAttempt(db: Db, row: AttemptRow): Promise<boolean> {
  const inserted = await db
    .insertInto("topup_attempts")
    .values({ ...row, status: "in_flight" })
    .onConflict((oc) => oc.column("org_id").where("status", "=", "in_flight").doNothing())
    .returning("id")
    .executeTakeFirst();
  return inserted !== undefined;
}

export async function insertAttempt(db: Db, row: AttemptRow): Promise<void> {
  await db.insertInto("topup_attempts").values(row).execute();
}

export function findAttempt(db: Db, orgId: string, id: string) {
  return db
    .selectFrom("topup_attempts")
    .selectAll()
    .where("org_id", "=", orgId)
    .where("id", "=", id)
    .executeTakeFirst();
}

/** By id alone: the public sandbox confirmation page knows nothing else. */
export function findAttemptById(db: Db, id: string) {
  return db.selectFrom("topup_attempts").selectAll().where("id", "=", id).executeTakeFirst();
}

export function findAttemptByPurchase(db: Db, orgId: string, purchaseId: string) {
  return db
    .selectFrom("topup_attempts")
    .selectAll()
    .where("org_id", "=", orgId)
    .where("purchase_id", "=", purchaseId)
    .executeTakeFirst();
}

export function updateAttempt(
  db: Db,
  orgId: string,
  id: string,
  patch: Partial<Omit<AttemptRow, "org_id" | "id" | "created_at">> & { updated_at: Date },
  onlyIfStatus?: readonly TopupAttemptStatus[],
) {
  let q = db
    .updateTable("topup_attempts")
    .set(patch)
    .where("org_id", "=", orgId)
    .where("id", "=", id);
  if (onlyIfStatus) q = q.where("status", "in", onlyIfStatus);
  return q.returningAll().executeTakeFirst();
}

/** The settings' state and whether an attempt is in flight, in one query. */
/**
 * Text SQL for the balance's `auto_topup`: `in_flight` while an attempt is, `idle` when enabled,
 * `disabled` when turned off by a failure, else `off` (also without settings).
 */
export function flagExpression(orgId: string): Sql {
  return q`coalesce((select case
      when exists (select 1 from topup_attempts a where a.org_id = s.org_id and a.status = 'in_flight')
        then 'in_flight'
      when s.enabled then 'idle'
      when s.disabled_reason is not null then 'disabled'
      else 'off' end
    from topup_settings s where s.org_id = ${orgId}), 'off')`;
}

export async function hasInFlight(db: Db, orgId: string): Promise<boolean> {
  const row = await db
    .selectFrom("topup_attempts")
    .select("id")
    .where("org_id", "=", orgId)
    .where("status", "=", "in_flight")
    .executeTakeFirst();
  return row !== undefined;
}

/**
 * What the monthly limit counts — Σ amount (minor units) of the organisation's attempts in
 * `currency` created since `from` that succeeded or may still be charged — and whether one is in
 * flight, from one snapshot: read apart, an attempt failing in between would be counted as
 * pending and then not be in flight.
 */
export async function commitments(
  db: Db,
  orgId: string,
  currency: string,
  from: Date,
): Promise<{ committedMinor: bigint; inFlight: boolean }> {
  const row = await db
    .selectFrom("topup_attempts")
    .select([
      sql<string>`coalesce(sum(amount_minor) filter (where currency = ${currency}
        and created_at >= ${from}
        and status in ('succeeded', 'in_flight', 'action_required')), 0)::text`.as("committed"),
      sql<boolean>`coalesce(bool_or(status = 'in_flight'), false)`.as("in_flight"),
    ])
    .where("org_id", "=", orgId)
    .where((eb) => eb.or([eb("status", "=", "in_flight"), eb("created_at", ">=", from)]))
    .executeTakeFirstOrThrow();
  return { committedMinor: BigInt(row.committed), inFlight: row.in_flight };
}

/** Σ amount (minor units) of the organisation's attempts in `statuses` created since `from`. */
export async function sumAmounts(
  db: Db,
  orgId: string,
  currency: string,
  from: Date,
  statuses: readonly TopupAttemptStatus[],
): Promise<bigint> {
  const row = await db
    .selectFrom("topup_attempts")
    .select(sql<string | null>`sum(amount_minor)::text`.as("total"))
    .where("org_id", "=", orgId)
    .where("currency", "=", currency)
    .where("created_at", ">=", from)
    .where("status", "in", statuses)
    .executeTakeFirst();
  return BigInt(row?.total ?? "0");
}

/** Newest first. */
export function listAttempts(db: Db, orgId: string, opts: { limit: number; before?: string }) {
  let q = db
    .selectFrom("topup_attempts")
    .selectAll()
    .where("org_id", "=", orgId)
    .orderBy("id", "desc")
    .limit(opts.limit + 1);
  if (opts.before !== undefined) q = q.where("id", "<", opts.before);
  return q.execute();
}

/** Attempts waiting for a payment outcome, least recently touched first. */
export function openAttempts(db: Db, touchedBefore: Date, limit: number) {
  return db
    .selectFrom("topup_attempts")
    .selectAll()
    .where("status", "in", ["in_flight", "action_required"])
    .where("updated_at", "<", touchedBefore)
    .where("purchase_id", "is not", null)
    .orderBy("updated_at")
    .limit(limit)
    .execute();
}
