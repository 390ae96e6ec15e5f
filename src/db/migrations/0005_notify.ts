import { type Kysely, sql } from "kysely";

/** Jobs (the transactional outbox), domain events, webhook endpoints and delivery attempts. */
export async function up(db: Kysely<unknown>): Promise<void> {
  // Not per-organisation: some jobs have no organisation and workers claim across all of them.
  // On a sharded PostgreSQL this table stays on the coordinator (or is replaced per shard).
  await db.schema
    .createTable("jobs")
    .addColumn("id", "text", (c) => c.primaryKey())
    .addColumn("queue", "text", (c) => c.notNull())
    .addColumn("org_id", "text")
    .addColumn("dedupe_key", "text", (c) => c.unique())
    .addColumn("payload", "jsonb", (c) => c.notNull())
    .addColumn("status", "text", (c) =>
      c.notNull().check(sql`status in ('pending', 'running', 'done', 'dead')`),
    )
    .addColumn("attempts", "integer", (c) => c.notNull().defaultTo(0))
    .addColumn("run_at", "timestamptz", (c) => c.notNull())
    .addColumn("locked_until", "timestamptz")
    .addColumn("locked_by", "text")
    .addColumn("last_error", "text")
    .addColumn("created_at", "timestamptz", (c) => c.notNull())
    .addColumn("updated_at", "timestamptz", (c) => c.notNull())
    .execute();
  // Workers look for pending jobs that are due and for running jobs whose lease ran out.
  await db.schema
    .createIndex("jobs_due")
    .on("jobs")
    .columns(["run_at"])
    .where(sql<boolean>`status = 'pending'`)
    .execute();
  await db.schema
    .createIndex("jobs_lease")
    .on("jobs")
    .columns(["locked_until"])
    .where(sql<boolean>`status = 'running'`)
    .execute();
  await db.schema
    .createIndex("jobs_finished")
    .on("jobs")
    .columns(["updated_at"])
    .where(sql<boolean>`status in ('done', 'dead')`)
    .execute();

  await db.schema
    .createTable("events")
    .addColumn("org_id", "text", (c) => c.notNull().references("organizations.id"))
    .addColumn("id", "text", (c) => c.notNull())
    .addColumn("type", "text", (c) => c.notNull())
    .addColumn("data", "jsonb", (c) => c.notNull())
    .addColumn("created_at", "timestamptz", (c) => c.notNull())
    .addPrimaryKeyConstraint("events_pk", ["org_id", "id"])
    .execute();

  // org_id null = an endpoint of the platform that receives every organisation's events, so
  // the key cannot lead with org_id (like api_keys).
  await db.schema
    .createTable("webhook_endpoints")
    .addColumn("id", "text", (c) => c.primaryKey())
    .addColumn("org_id", "text", (c) => c.references("organizations.id"))
    .addColumn("url", "text", (c) => c.notNull())
    .addColumn("events", "jsonb", (c) => c.notNull().defaultTo(sql`'[]'::jsonb`))
    .addColumn("secret", "text", (c) => c.notNull())
    .addColumn("created_at", "timestamptz", (c) => c.notNull())
    .addColumn("updated_at", "timestamptz", (c) => c.notNull())
    .addColumn("failing_since", "timestamptz")
    .addColumn("consecutive_failures", "integer", (c) => c.notNull().defaultTo(0))
    .addColumn("disabled_at", "timestamptz")
    .addColumn("disabled_reason", "text")
    .execute();
  await db.schema
    .createIndex("webhook_endpoints_org")
    .on("webhook_endpoints")
    .columns(["org_id", "id"])
    .execute();

  await db.schema
    .createTable("webhook_deliveries")
    .addColumn("org_id", "text", (c) => c.notNull())
    .addColumn("id", "text", (c) => c.notNull())
    .addColumn("endpoint_id", "text", (c) => c.notNull())
    .addColumn("event_id", "text", (c) => c.notNull())
    .addColumn("event_type", "text", (c) => c.notNull())
    .addColumn("attempt", "integer", (c) => c.notNull())
    .addColumn("status_code", "integer")
    .addColumn("error", "text")
    .addColumn("duration_ms", "integer", (c) => c.notNull())
    .addColumn("succeeded", "boolean", (c) => c.notNull())
    .addColumn("created_at", "timestamptz", (c) => c.notNull())
    .addPrimaryKeyConstraint("webhook_deliveries_pk", ["org_id", "id"])
    .execute();
  await db.schema
    .createIndex("webhook_deliveries_endpoint")
    .on("webhook_deliveries")
    .columns(["endpoint_id", "id"])
    .execute();
}

export async function down(): Promise<void> {
  throw new Error("Tally migrations are forward-only");
}
