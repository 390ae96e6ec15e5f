import { type Kysely, sql } from "kysely";

/** Credit packages, purchases, saved payment methods, inbound payment webhooks, refunds. */
export async function up(db: Kysely<unknown>): Promise<void> {
  // The platform's catalogue: global, not per organisation.
  await db.schema
    .createTable("credit_packages")
    .addColumn("id", "text", (c) => c.primaryKey())
    .addColumn("name", "text", (c) => c.notNull())
    .addColumn("description", "text")
    .addColumn("credits", sql`numeric(38,12)`, (c) => c.notNull().check(sql`credits > 0`))
    .addColumn("bonus_credits", sql`numeric(38,12)`, (c) =>
      c.notNull().defaultTo(0).check(sql`bonus_credits >= 0`),
    )
    .addColumn("price_minor", "bigint", (c) => c.notNull().check(sql`price_minor > 0`))
    .addColumn("currency", "text", (c) => c.notNull())
    .addColumn("bonus_expires_in_days", "integer")
    .addColumn("active", "boolean", (c) => c.notNull().defaultTo(true))
    .addColumn("created_at", "timestamptz", (c) => c.notNull())
    .addColumn("updated_at", "timestamptz", (c) => c.notNull())
    .execute();

  await db.schema
    .createTable("purchases")
    .addColumn("org_id", "text", (c) => c.notNull().references("organizations.id"))
    .addColumn("id", "text", (c) => c.notNull())
    .addColumn("package_id", "text", (c) => c.notNull().references("credit_packages.id"))
    .addColumn("package_name", "text", (c) => c.notNull())
    .addColumn("source", "text", (c) => c.notNull().check(sql`source in ('checkout','auto_topup')`))
    .addColumn("status", "text", (c) =>
      c
        .notNull()
        .check(
          sql`status in ('pending','paid','failed','expired','refunded','partially_refunded')`,
        ),
    )
    .addColumn("provider", "text", (c) => c.notNull())
    .addColumn("provider_session_id", "text")
    .addColumn("provider_payment_id", "text")
    .addColumn("amount_minor", "bigint", (c) => c.notNull())
    .addColumn("currency", "text", (c) => c.notNull())
    .addColumn("credits", sql`numeric(38,12)`, (c) => c.notNull())
    .addColumn("bonus_credits", sql`numeric(38,12)`, (c) => c.notNull())
    .addColumn("bonus_expires_in_days", "integer")
    .addColumn("refunded_minor", "bigint", (c) => c.notNull().defaultTo(0))
    .addColumn("user_id", "text")
    .addColumn("actor_type", "text", (c) => c.notNull())
    .addColumn("actor_id", "text", (c) => c.notNull())
    .addColumn("success_url", "text")
    .addColumn("cancel_url", "text")
    .addColumn("checkout_url", "text")
    .addColumn("save_payment_method", "boolean", (c) => c.notNull().defaultTo(false))
    .addColumn("payment_method_id", "text")
    .addColumn("failure_code", "text")
    .addColumn("failure_message", "text")
    .addColumn("paid_at", "timestamptz")
    .addColumn("expires_at", "timestamptz")
    .addColumn("created_at", "timestamptz", (c) => c.notNull())
    .addColumn("updated_at", "timestamptz", (c) => c.notNull())
    .addPrimaryKeyConstraint("purchases_pk", ["org_id", "id"])
    .execute();
  // One payment grants credits once, whichever organisation a (mis)routed notification names.
  await db.schema
    .createIndex("purchases_provider_payment")
    .on("purchases")
    .columns(["provider", "provider_payment_id"])
    .unique()
    .where(sql.ref("provider_payment_id"), "is not", null)
    .execute();
  await db.schema
    .createIndex("purchases_provider_session")
    .on("purchases")
    .columns(["provider", "provider_session_id"])
    .where(sql.ref("provider_session_id"), "is not", null)
    .execute();
  // The sandbox checkout page and provider callbacks know only the purchase id.
  await db.schema.createIndex("purchases_id").on("purchases").column("id").execute();
  await db.schema
    .createIndex("purchases_pending_expiry")
    .on("purchases")
    .column("expires_at")
    .where(sql.ref("status"), "=", "pending")
    .execute();
  await db.schema
    .createIndex("purchases_org_status")
    .on("purchases")
    .columns(["org_id", "status", "id"])
    .execute();

  await db.schema
    .createTable("payment_methods")
    .addColumn("org_id", "text", (c) => c.notNull().references("organizations.id"))
    .addColumn("id", "text", (c) => c.notNull())
    .addColumn("provider", "text", (c) => c.notNull())
    .addColumn("provider_payment_method_id", "text", (c) => c.notNull())
    .addColumn("provider_customer_id", "text")
    .addColumn("brand", "text")
    .addColumn("last4", "text")
    .addColumn("sandbox_behaviour", "text")
    .addColumn("status", "text", (c) => c.notNull().defaultTo("active"))
    .addColumn("created_at", "timestamptz", (c) => c.notNull())
    .addColumn("updated_at", "timestamptz", (c) => c.notNull())
    .addPrimaryKeyConstraint("payment_methods_pk", ["org_id", "id"])
    .addUniqueConstraint("payment_methods_provider_id", [
      "org_id",
      "provider",
      "provider_payment_method_id",
    ])
    .execute();

  // Keyed by the provider's event id: an event arrives before Tally knows its organisation.
  await db.schema
    .createTable("inbound_webhook_events")
    .addColumn("provider", "text", (c) => c.notNull())
    .addColumn("event_id", "text", (c) => c.notNull())
    .addColumn("type", "text", (c) => c.notNull())
    .addColumn("org_id", "text")
    .addColumn("object_id", "text")
    .addColumn("status", "text", (c) => c.notNull())
    .addColumn("error", "text")
    .addColumn("received_at", "timestamptz", (c) => c.notNull())
    .addColumn("processed_at", "timestamptz")
    .addPrimaryKeyConstraint("inbound_webhook_events_pk", ["provider", "event_id"])
    .execute();

  await db.schema
    .createTable("refunds")
    .addColumn("org_id", "text", (c) => c.notNull().references("organizations.id"))
    .addColumn("id", "text", (c) => c.notNull())
    .addColumn("purchase_id", "text", (c) => c.notNull())
    .addColumn("origin", "text", (c) => c.notNull())
    .addColumn("status", "text", (c) => c.notNull())
    .addColumn("provider", "text", (c) => c.notNull())
    .addColumn("provider_refund_id", "text")
    .addColumn("amount_minor", "bigint", (c) => c.notNull().check(sql`amount_minor >= 0`))
    .addColumn("currency", "text", (c) => c.notNull())
    .addColumn("credits_removed", sql`numeric(38,12)`, (c) => c.notNull())
    .addColumn("bonus_removed", sql`numeric(38,12)`, (c) => c.notNull())
    .addColumn("reason", "text")
    .addColumn("user_id", "text")
    .addColumn("actor_type", "text", (c) => c.notNull())
    .addColumn("actor_id", "text", (c) => c.notNull())
    .addColumn("created_at", "timestamptz", (c) => c.notNull())
    .addColumn("updated_at", "timestamptz", (c) => c.notNull())
    .addPrimaryKeyConstraint("refunds_pk", ["org_id", "id"])
    .addForeignKeyConstraint("refunds_purchase", ["org_id", "purchase_id"], "purchases", [
      "org_id",
      "id",
    ])
    .execute();
  await db.schema
    .createIndex("refunds_provider_refund")
    .on("refunds")
    .columns(["provider", "provider_refund_id"])
    .unique()
    .where(sql.ref("provider_refund_id"), "is not", null)
    .execute();
  await db.schema
    .createIndex("refunds_purchase")
    .on("refunds")
    .columns(["org_id", "purchase_id"])
    .execute();
}

export async function down(): Promise<void> {
  throw new Error("Tally migrations are forward-only");
}
