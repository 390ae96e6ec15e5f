import { type Kysely, sql } from "kysely";

/** Low-balance alert thresholds with their state, auto-topup settings and attempts. */
export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .createTable("alert_settings")
    .addColumn("org_id", "text", (c) => c.primaryKey().references("organizations.id"))
    .addColumn("emails", "jsonb", (c) => c.notNull().defaultTo(sql`'[]'::jsonb`))
    .addColumn("created_at", "timestamptz", (c) => c.notNull())
    .addColumn("updated_at", "timestamptz", (c) => c.notNull())
    .execute();

  // One row per threshold: its state is changed only by a transaction that holds the
  // organisation's balance row lock (a balance change, or a PUT of the configuration).
  await db.schema
    .createTable("alert_thresholds")
    .addColumn("org_id", "text", (c) => c.notNull().references("alert_settings.org_id"))
    .addColumn("threshold", sql`numeric(38,12)`, (c) => c.notNull().check(sql`threshold >= 0`))
    .addColumn("in_alert", "boolean", (c) => c.notNull())
    .addColumn("changed_at", "timestamptz", (c) => c.notNull())
    .addPrimaryKeyConstraint("alert_thresholds_pk", ["org_id", "threshold"])
    .execute();

  await db.schema
    .createTable("topup_settings")
    .addColumn("org_id", "text", (c) => c.primaryKey().references("organizations.id"))
    .addColumn("enabled", "boolean", (c) => c.notNull())
    .addColumn("threshold", sql`numeric(38,12)`, (c) => c.notNull())
    .addColumn("package_id", "text", (c) => c.notNull().references("credit_packages.id"))
    .addColumn("currency", "text", (c) => c.notNull())
    .addColumn("monthly_limit_minor", "bigint")
    .addColumn("max_failures", "integer", (c) => c.notNull())
    .addColumn("failure_count", "integer", (c) => c.notNull().defaultTo(0))
    .addColumn("disabled_reason", "text")
    // The trigger: false after an attempt started, true again when the balance is back above
    // the threshold (or a topup succeeded). `rearm_month` ('YYYY-MM') re-arms it in a new
    // month after the monthly limit stopped an attempt.
    .addColumn("armed", "boolean", (c) => c.notNull().defaultTo(true))
    .addColumn("rearm_month", "text")
    .addColumn("created_at", "timestamptz", (c) => c.notNull())
    .addColumn("updated_at", "timestamptz", (c) => c.notNull())
    .execute();

  await db.schema
    .createTable("topup_attempts")
    .addColumn("org_id", "text", (c) => c.notNull().references("organizations.id"))
    .addColumn("id", "text", (c) => c.notNull())
    .addColumn("status", "text", (c) =>
      c
        .notNull()
        .check(sql`status in ('in_flight','succeeded','failed','action_required','skipped_limit')`),
    )
    .addColumn("package_id", "text", (c) => c.notNull())
    .addColumn("purchase_id", "text")
    .addColumn("amount_minor", "bigint", (c) => c.notNull())
    .addColumn("currency", "text", (c) => c.notNull())
    .addColumn("payment_id", "text")
    .addColumn("action_url", "text")
    .addColumn("error", "text")
    .addColumn("balance", sql`numeric(38,12)`, (c) => c.notNull())
    .addColumn("created_at", "timestamptz", (c) => c.notNull())
    .addColumn("updated_at", "timestamptz", (c) => c.notNull())
    .addPrimaryKeyConstraint("topup_attempts_pk", ["org_id", "id"])
    .execute();
  // Invariant 9: at most one attempt in flight per organisation, enforced by the database.
  await db.schema
    .createIndex("topup_attempts_one_in_flight")
    .on("topup_attempts")
    .column("org_id")
    .unique()
    .where(sql.ref("status"), "=", "in_flight")
    .execute();
  await db.schema
    .createIndex("topup_attempts_purchase")
    .on("topup_attempts")
    .columns(["org_id", "purchase_id"])
    .where(sql.ref("purchase_id"), "is not", null)
    .execute();
  await db.schema
    .createIndex("topup_attempts_month")
    .on("topup_attempts")
    .columns(["org_id", "created_at"])
    .execute();
  // The sandbox confirmation page knows only the attempt id.
  await db.schema.createIndex("topup_attempts_id").on("topup_attempts").column("id").execute();
  await db.schema
    .createIndex("topup_attempts_open")
    .on("topup_attempts")
    .column("updated_at")
    .where(sql<boolean>`status in ('in_flight', 'action_required')`)
    .execute();
}

export async function down(): Promise<void> {
  throw new Error("Tally migrations are forward-only");
}
