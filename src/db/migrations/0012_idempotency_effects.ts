import type { Kysely } from "kysely";

/**
 * Whether an Idempotency-Key's request committed anything: set inside each of its transactions,
 * just before COMMIT (see `src/db/commit-hooks.ts`), so it is true exactly when an effect is
 * durable. A claim whose request died is re-run only when it is still false.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .alterTable("idempotency_keys")
    .addColumn("effect_committed", "boolean", (c) => c.notNull().defaultTo(false))
    .execute();
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await db.schema.alterTable("idempotency_keys").dropColumn("effect_committed").execute();
}
