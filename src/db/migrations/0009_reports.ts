import { type Kysely, sql } from "kysely";

/**
 * Reports: the chargeback view reads one month of every organisation's rollups. The primary key
 * (org_id, period, …) serves per-organisation summaries; this index serves per-period ones.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`create index usage_rollups_period on usage_rollups (period, org_id)`.execute(db);
}

export async function down(): Promise<void> {
  throw new Error("Tally migrations are forward-only");
}
