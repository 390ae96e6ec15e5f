import { sql } from "kysely";
import { type Db, inSnapshot } from "../../db/index.js";
import type { BlockStatus, EntryType, LedgerEntriesTable } from "./ledger.tables.js";

export type EntryRow = LedgerEntriesTable;

export function findBalance(db: Db, orgId: string) {
  return db.selectFrom("org_balances").selectAll().where("org_id", "=", orgId).executeTakeFirst();
}

export function listBlocks(
  db: Db,
  orgId: string,
  opts: { status?: BlockStatus; limit: number; before?: string },
) {
  let q = db
    .selectFrom("credit_blocks")
    .selectAll()
    .where("org_id", "=", orgId)
    .orderBy("id", "desc")
    .limit(opts.limit + 1);
  if (opts.status) q = q.where("status", "=", opts.status);
  if (opts.before) q = q.where("id", "<", opts.before);
  return q.execute();
}

export interface EntryFilters {
  type?: EntryType;
  user_id?: string;
  from?: Date;
  to?: Date;
  /**
   * Entries referring to `id`. Usage entries are not in the reference index (migration 0021):
   * the usage entry of an event `id` is named by the usage module (`usageEntryId`).
   */
  reference?: { id: string; usageEntryId: string | null };
}

/** Written literally, so that the partial indexes of migration 0021 match the query. */
const NOT_USAGE = sql<boolean>`type <> 'usage'`;

/** Newest first; keyset paging on the per-org sequence. */
export function listEntries(
  db: Db,
  orgId: string,
  filters: EntryFilters,
  opts: { limit: number; beforeSequence?: string },
) {
  let q = db
    .selectFrom("ledger_entries")
    .selectAll()
    .where("org_id", "=", orgId)
    .orderBy("sequence", "desc")
    .limit(opts.limit + 1);
  if (filters.type) {
    q = q.where("type", "=", filters.type);
    if (filters.type !== "usage") q = q.where(NOT_USAGE);
  }
  if (filters.user_id) q = q.where("user_id", "=", filters.user_id);
  if (filters.from) q = q.where("created_at", ">=", filters.from);
  if (filters.to) q = q.where("created_at", "<", filters.to);
  const reference = filters.reference;
  if (reference) {
    q = q.where((eb) => {
      const others = eb.and([eb("reference_id", "=", reference.id), NOT_USAGE]);
      if (reference.usageEntryId === null) return others;
      const usage = eb.and([
        eb("id", "=", reference.usageEntryId),
        eb("reference_id", "=", reference.id),
      ]);
      return eb.or([others, usage]);
    });
  }
  if (opts.beforeSequence) q = q.where("sequence", "<", opts.beforeSequence);
  return q.execute();
}

export function findEntry(db: Db, orgId: string, id: string) {
  return db
    .selectFrom("ledger_entries")
    .selectAll()
    .where("org_id", "=", orgId)
    .where("id", "=", id)
    .executeTakeFirst();
}

/** Ascending chunk of the chain, for verification and exports. */
export function entriesAfter(
  db: Db,
  orgId: string,
  afterSequence: string,
  limit: number,
  upTo?: string,
) {
  let query = db
    .selectFrom("ledger_entries")
    .selectAll()
    .where("org_id", "=", orgId)
    .where("sequence", ">", afterSequence);
  if (upTo !== undefined) query = query.where("sequence", "<=", upTo);
  return query.orderBy("sequence").limit(limit).execute();
}

/** The organisation's highest entry sequence ("0" without entries). */
export async function lastSequence(db: Db, orgId: string): Promise<string> {
  const row = await db
    .selectFrom("ledger_entries")
    .select(sql<string>`coalesce(max(sequence), 0)`.as("last"))
    .where("org_id", "=", orgId)
    .executeTakeFirstOrThrow();
  return row.last;
}

export async function sumActiveBlocks(db: Db, orgId: string): Promise<string> {
  const row = await db
    .selectFrom("credit_blocks")
    .select(sql<string>`coalesce(sum(remaining), 0)`.as("total"))
    .where("org_id", "=", orgId)
    .where("status", "=", "active")
    .executeTakeFirstOrThrow();
  return row.total;
}

/** Organisations that hold an active block past its expiry. */
export async function orgsWithExpiredBlocks(
  db: Db,
  now: Date,
  limit: number,
  except: readonly string[] = [],
): Promise<string[]> {
  let query = db
    .selectFrom("credit_blocks")
    .select("org_id")
    .distinct()
    .where("status", "=", "active")
    .where("expires_at", "<=", now);
  if (except.length > 0) query = query.where("org_id", "not in", except);
  const rows = await query.limit(limit).execute();
  return rows.map((r) => r.org_id);
}

export async function allOrgIdsWithBalances(db: Db): Promise<string[]> {
  const rows = await db.selectFrom("org_balances").select("org_id").orderBy("org_id").execute();
  return rows.map((r) => r.org_id);
}

/**
 * Monthly totals of an organisation's entries created in [from, to) — per calendar month (UTC),
 * type and sign — and the balance before `from` (balance_after of the last earlier entry).
 * Reads through the (org_id, created_at) index. For the reports module's reconciliation view.
 * Both reads see one snapshot: an entry committing between them would otherwise be in neither
 * (stamped before `from`, committed after the opening balance was read).
 */
export function monthlyEntryTotals(db: Db, orgId: string, from: Date, to: Date) {
  return inSnapshot(db, (tx) => readEntryTotals(tx, orgId, from, to));
}

async function readEntryTotals(db: Db, orgId: string, from: Date, to: Date) {
  const before = await db
    .selectFrom("ledger_entries")
    .select("balance_after")
    .where("org_id", "=", orgId)
    .where("created_at", "<", from)
    .orderBy("created_at", "desc")
    .orderBy("sequence", "desc")
    .limit(1)
    .executeTakeFirst();
  const totals = await db
    .selectFrom("ledger_entries")
    .select([
      sql<string>`to_char(created_at at time zone 'UTC', 'YYYY-MM')`.as("period"),
      "type",
      sql<boolean>`amount > 0`.as("positive"),
      sql<string>`sum(amount)::text`.as("amount"),
      sql<string>`count(*)::text`.as("entries"),
    ])
    .where("org_id", "=", orgId)
    .where("created_at", ">=", from)
    .where("created_at", "<", to)
    .groupBy([sql`1`, "type", sql`3`])
    .execute();
  return { openingBalance: before?.balance_after ?? "0", totals };
}
