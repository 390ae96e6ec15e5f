import { type Kysely, sql } from "kysely";

/**
 * Outbox events and the webhook delivery log are kept for a retention period
 * (`NOTIFY_RETENTION_DAYS`), then purged by age: these indexes find the old rows.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`create index events_created_at on events (created_at)`.execute(db);
  await sql`create index webhook_deliveries_created_at on webhook_deliveries (created_at)`.execute(
    db,
  );
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql`drop index webhook_deliveries_created_at`.execute(db);
  await sql`drop index events_created_at`.execute(db);
}
