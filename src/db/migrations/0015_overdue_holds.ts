import { type Kysely, sql } from "kysely";

/**
 * A hold is over at its `expires_at`, before the sweeper marks it: the balance read and a new
 * hold look up one organisation's held reservations past their expiry. This index finds them
 * without scanning every organisation's (the sweeper's own index is on `expires_at` alone).
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`create index reservations_held_by_org on reservations (org_id, expires_at)
    where status = 'held'`.execute(db);
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql`drop index reservations_held_by_org`.execute(db);
}
