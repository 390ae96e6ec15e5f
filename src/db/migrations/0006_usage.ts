import { type Kysely, sql } from "kysely";

/** Usage events, storage gauge state, monthly and daily rollups, reservations. */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`
    create table usage_events (
      org_id text not null references organizations(id),
      id text not null,
      type text not null check (type in ('ai_tokens','compute','storage','bandwidth','data_ops')),
      timestamp timestamptz not null,
      timestamp_defaulted boolean not null default false,
      user_id text,
      operation text,
      model text,
      meter text,
      resource text,
      quantity numeric(38,6),
      billed_quantity numeric(38,12),
      input_tokens bigint,
      cached_input_tokens bigint,
      cache_write_tokens bigint,
      output_tokens bigint,
      provider_usage jsonb,
      metadata jsonb,
      cost numeric(38,12) not null,
      price_version integer,
      transaction_id text not null,
      reservation_id text,
      payload_hash text not null,
      received_at timestamptz not null,
      primary key (org_id, id)
    )`.execute(db);
  await sql`create index usage_events_time on usage_events (org_id, timestamp desc, id desc)`.execute(
    db,
  );

  await sql`
    create table storage_gauges (
      org_id text not null references organizations(id),
      meter text not null,
      resource text not null,
      last_timestamp timestamptz not null,
      last_quantity numeric(38,6) not null,
      primary key (org_id, meter, resource)
    )`.execute(db);

  // Dimensions use '' for "none" so that they can be part of the primary key.
  await sql`
    create table usage_rollups (
      org_id text not null references organizations(id),
      period date not null,
      type text not null,
      model text not null default '',
      operation text not null default '',
      user_id text not null default '',
      resource text not null default '',
      meter text not null default '',
      unit text not null,
      quantity numeric(38,12) not null default 0,
      input_tokens bigint not null default 0,
      cached_input_tokens bigint not null default 0,
      cache_write_tokens bigint not null default 0,
      output_tokens bigint not null default 0,
      cost numeric(38,12) not null default 0,
      events bigint not null default 0,
      primary key (org_id, period, type, model, operation, user_id, resource, meter)
    )`.execute(db);

  await sql`
    create table usage_daily (
      org_id text not null references organizations(id),
      day date not null,
      type text not null,
      cost numeric(38,12) not null default 0,
      events bigint not null default 0,
      primary key (org_id, day, type)
    )`.execute(db);

  await sql`
    create table reservations (
      org_id text not null references organizations(id),
      id text not null,
      amount numeric(38,12) not null check (amount > 0),
      status text not null check (status in ('held','settled','released','expired')),
      description text,
      expires_at timestamptz not null,
      actor_type text not null,
      actor_id text not null,
      user_id text,
      settled_cost numeric(38,12),
      created_at timestamptz not null,
      closed_at timestamptz,
      primary key (org_id, id)
    )`.execute(db);
  await sql`create index reservations_held on reservations (expires_at) where status = 'held'`.execute(
    db,
  );
}

export async function down(): Promise<void> {
  throw new Error("Tally migrations are forward-only");
}
