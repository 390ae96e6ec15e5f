import { type Kysely, sql } from "kysely";

/**
 * Two changes for the ingest hot path.
 *
 * 1. Usage events, ledger entries and rollups are written by the thousand, and each row of those
 *    tables only by a transaction that holds its organisation's `org_balances` row lock — a row
 *    that references `organizations`, which are never deleted. Their own foreign keys proved
 *    nothing new while costing, per inserted row, a lookup and a KEY SHARE lock on the
 *    organisation's row. They go; every other table keeps its foreign keys. Without them a
 *    `truncate organizations cascade` would no longer reach (and be refused by) the ledger, so
 *    organisations refuse TRUNCATE themselves.
 *
 * 2. Every request needs its API key and organisation. Instances cache both (see
 *    `src/modules/orgs/lookups.ts`) and must hear at once when one changes: these triggers send
 *    `tally_cache` notifications from the changing transaction (delivered on commit). A key's
 *    `last_used_at` bookkeeping does not notify.
 */
const DROPPED = [
  ["usage_events", "usage_events_org_id_fkey"],
  ["ledger_entries", "ledger_entries_org_id_fkey"],
  ["usage_rollups", "usage_rollups_org_id_fkey"],
  ["usage_daily", "usage_daily_org_id_fkey"],
] as const;

export async function up(db: Kysely<unknown>): Promise<void> {
  for (const [table, constraint] of DROPPED) {
    await sql`alter table ${sql.table(table)} drop constraint if exists ${sql.id(constraint)}`.execute(
      db,
    );
  }
  await sql`
    create trigger organizations_no_truncate before truncate on organizations
      for each statement execute function tally_ledger_immutable()`.execute(db);

  await sql`
    create function tally_notify_cache() returns trigger language plpgsql as $$
    begin
      perform pg_notify('tally_cache', tg_table_name);
      return null;
    end $$`.execute(db);
  await sql`
    create trigger organizations_cache after update or delete on organizations
      for each row execute function tally_notify_cache()`.execute(db);
  await sql`
    create trigger api_keys_cache_update after update on api_keys
      for each row
      when (old.revoked_at is distinct from new.revoked_at
         or old.role is distinct from new.role
         or old.org_id is distinct from new.org_id
         or old.key_hash is distinct from new.key_hash)
      execute function tally_notify_cache()`.execute(db);
  await sql`
    create trigger api_keys_cache_delete after delete on api_keys
      for each row execute function tally_notify_cache()`.execute(db);
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql`drop trigger api_keys_cache_delete on api_keys`.execute(db);
  await sql`drop trigger api_keys_cache_update on api_keys`.execute(db);
  await sql`drop trigger organizations_cache on organizations`.execute(db);
  await sql`drop function tally_notify_cache()`.execute(db);
  await sql`drop trigger organizations_no_truncate on organizations`.execute(db);
  for (const [table, constraint] of DROPPED) {
    await sql`alter table ${sql.table(table)} add constraint ${sql.id(constraint)} foreign key (org_id) references organizations(id)`.execute(
      db,
    );
  }
}
