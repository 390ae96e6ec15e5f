import type { Kysely } from "kysely";

/**
 * Jobs that share a `concurrency_key` (webhook deliveries: their endpoint) run only so many at
 * once per runner (the queue's `concurrency`); a runner does not claim the jobs of a key it
 * already runs at its limit.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema.alterTable("jobs").addColumn("concurrency_key", "text").execute();
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await db.schema.alterTable("jobs").dropColumn("concurrency_key").execute();
}
