import { type Kysely, sql } from "kysely";

/**
 * Optimistic ledger writes (see `src/modules/ledger/ledger-cache.ts`).
 *
 * 1. `org_balances.version` counts the writes of an organisation's ledger: every statement that
 *    changes its balance, blocks or chain rewrites the row with `version + 1`. An instance that
 *    remembers an organisation's ledger at version v may write on top of it in one statement
 *    that locks the row and finds it still at v. Such a write runs no balance observer, so a
 *    change of what the observers watch (alert or auto-topup settings) counts too: triggers bump
 *    the version, under the row's lock, in the changing transaction.
 * 2. `tally_guard(ok, what)`: true when `ok`, otherwise it raises SQLSTATE `TL001` with `what` as
 *    the message, which aborts the whole statement (and everything it wrote).
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .alterTable("org_balances")
    .addColumn("version", "bigint", (c) => c.notNull().defaultTo(0))
    .execute();
  await sql`
    create function tally_guard(ok boolean, what text) returns boolean language plpgsql as $$
    begin
      if ok is not true then
        raise exception using errcode = 'TL001', message = what;
      end if;
      return true;
    end $$`.execute(db);
  await sql`
    create function tally_bump_ledger_version() returns trigger language plpgsql as $$
    begin
      update org_balances set version = version + 1
        where org_id = case when tg_op = 'DELETE' then old.org_id else new.org_id end;
      return null;
    end $$`.execute(db);
  for (const table of WATCHED) {
    await sql`
      create trigger ${sql.id(`${table}_ledger_version`)}
        after insert or update or delete on ${sql.table(table)}
        for each row execute function tally_bump_ledger_version()`.execute(db);
  }
}

/** What balance observers read to decide whether they have work (see `BalanceObserver`). */
const WATCHED = ["alert_settings", "topup_settings"] as const;

export async function down(db: Kysely<unknown>): Promise<void> {
  for (const table of WATCHED) {
    await sql`drop trigger ${sql.id(`${table}_ledger_version`)} on ${sql.table(table)}`.execute(db);
  }
  await sql`drop function tally_bump_ledger_version()`.execute(db);
  await sql`drop function tally_guard(boolean, text)`.execute(db);
  await db.schema.alterTable("org_balances").dropColumn("version").execute();
}
