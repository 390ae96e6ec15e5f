import { type Kysely, sql } from "kysely";

/**
 * Jobs that share a `concurrency_key` (webhook deliveries: their endpoint) run only so many at
 * once per runner (the queue's `concurrency`); a runner does not claim the jobs of a key it
 * already runs at its limit.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema.alterTable("jobs").addColumn("concurrency_key", "text").execute();
  // Deliveries already queued are paced like new ones: keyed by their endpoint.
  await sql`update jobs set concurrency_key = 'webhook:' || (payload->>'endpointId')
    where queue = 'webhook.deliver' and status in ('pending', 'running')`.execute(db);
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await db.schema.alterTable("jobs").dropColumn("concurrency_key").execute();
}
