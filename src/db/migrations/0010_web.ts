import { type Kysely, sql } from "kysely";

/**
 * Browser sessions of the operator console and the customer portal. Not a per-organisation
 * table: operator sessions belong to no organisation, and a session is found by its token hash
 * before anything else is known (on a sharded PostgreSQL it stays on the coordinator).
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .createTable("web_sessions")
    .addColumn("id", "text", (c) => c.primaryKey())
    .addColumn("token_hash", "text", (c) => c.notNull().unique())
    .addColumn("kind", "text", (c) => c.notNull().check(sql`kind in ('operator', 'portal')`))
    .addColumn("org_id", "text", (c) => c.references("organizations.id"))
    .addColumn("user_id", "text")
    .addColumn("role", "text", (c) => c.notNull())
    .addColumn("api_key_id", "text", (c) => c.references("api_keys.id"))
    .addColumn("csrf_token_hash", "text", (c) => c.notNull())
    .addColumn("return_url", "text")
    .addColumn("created_at", "timestamptz", (c) => c.notNull())
    .addColumn("expires_at", "timestamptz", (c) => c.notNull())
    .addColumn("revoked_at", "timestamptz")
    .addCheckConstraint(
      "web_sessions_kind_fields",
      sql`(kind = 'operator' and api_key_id is not null and org_id is null)
          or (kind = 'portal' and org_id is not null and user_id is not null)`,
    )
    .execute();
  await db.schema
    .createIndex("web_sessions_expiry")
    .on("web_sessions")
    .column("expires_at")
    .execute();
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await db.schema.dropTable("web_sessions").execute();
}
