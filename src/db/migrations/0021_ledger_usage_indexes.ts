import { type Kysely, sql } from "kysely";

/**
 * Usage entries — one per usage event, nearly every row of a busy ledger — leave the `type` and
 * `reference_id` indexes. Each index entry is written, WAL-logged and fsynced on the ingest hot
 * path; these two were a fifth of a usage entry's WAL (bench/results/2026-12-07-index-cost.md).
 * They still serve what they are for:
 * - `type=usage` is most of the ledger: the primary key, read newest first, finds its pages;
 * - the reference of a usage entry is its usage event, whose row (keyed by org and event id)
 *   names the entry, so `reference_id=<event id>` is one unique-key lookup in each table.
 *
 * Writes are stamped no earlier than `org_balances.updated_at` from now on (posting.ts,
 * `writeInstant`); a balance row whose last save was stamped before its last entry is brought up
 * to that entry's time, so the next entry cannot go back before it.
 *
 * On an existing large ledger the two index builds hold the table's lock for their duration:
 * run `tally migrate` in a quiet moment.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`drop index ledger_entries_type`.execute(db);
  await sql`create index ledger_entries_type on ledger_entries (org_id, type, sequence) where type <> 'usage'`.execute(
    db,
  );
  await sql`drop index ledger_entries_reference`.execute(db);
  await sql`create index ledger_entries_reference on ledger_entries (org_id, reference_id) where reference_id is not null and type <> 'usage'`.execute(
    db,
  );
  await sql`
    update org_balances as b set updated_at = e.created_at
      from ledger_entries as e
     where e.org_id = b.org_id and e.sequence = b.last_sequence and e.created_at > b.updated_at`.execute(
    db,
  );
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql`drop index ledger_entries_type`.execute(db);
  await sql`create index ledger_entries_type on ledger_entries (org_id, type, sequence)`.execute(
    db,
  );
  await sql`drop index ledger_entries_reference`.execute(db);
  await sql`create index ledger_entries_reference on ledger_entries (org_id, reference_id) where reference_id is not null`.execute(
    db,
  );
}
