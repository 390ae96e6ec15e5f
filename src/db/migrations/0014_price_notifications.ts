import { type Kysely, sql } from "kysely";

/**
 * Every instance keeps the price catalogue in memory and asked the database for its newest
 * version on every usage request. A new version now sends a `tally_cache` notification (as keys
 * and organisations do, migration 0011), so instances ask only after hearing one.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`
    create trigger price_versions_cache after insert on price_versions
      for each statement execute function tally_notify_cache()`.execute(db);
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql`drop trigger price_versions_cache on price_versions`.execute(db);
}
