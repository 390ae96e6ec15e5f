import { type Kysely, sql } from "kysely";

/**
 * A processor's refund notice about a payment no purchase carries yet: the payment's own
 * notification is late or being retried. The notice waits here and is applied when a purchase
 * is paid with that payment. One row per payment, holding the largest cumulative amount seen.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`create table refund_notices (
    provider text not null,
    payment_id text not null,
    refunded_total_minor numeric(20, 0) not null check (refunded_total_minor >= 0),
    currency text not null,
    received_at timestamptz not null,
    primary key (provider, payment_id)
  )`.execute(db);
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql`drop table refund_notices`.execute(db);
}
