import { type Kysely, sql } from "kysely";

/**
 * Optimistic ledger writes (see `src/modules/ledger/ledger-cache.ts`).
 *
 * 1. `org_balances.version` counts the writes of an organisation's ledger: every statement that
 *    changes its balance, blocks or chain rewrites the row with `version + 1`. An instance that
 *    remembers an organisation's ledger at version v may write on top of it in one statement
 *    that locks the row and finds it still at v.
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
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql`drop function tally_guard(boolean, text)`.execute(db);
  await db.schema.alterTable("org_balances").dropColumn("version").execute();
}
