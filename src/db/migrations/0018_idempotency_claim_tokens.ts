import type { Kysely } from "kysely";

/**
 * Which claim of an Idempotency-Key is current: a fresh random token per claim (and per
 * takeover). A request's transactions mark the key only while it still holds their token, so a
 * request that outlived its claim — taken over by a retry after `LOCK_MS` — cannot commit
 * anything, whatever the instances' clocks say.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema.alterTable("idempotency_keys").addColumn("claim_token", "text").execute();
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await db.schema.alterTable("idempotency_keys").dropColumn("claim_token").execute();
}
