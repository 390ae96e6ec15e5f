import { type Kysely, sql } from "kysely";

/**
 * Balances, credit blocks and the append-only, hash-chained ledger. The database itself refuses
 * UPDATE, DELETE and TRUNCATE on ledger entries: corrections are new entries.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`
    create table org_balances (
      org_id text primary key references organizations(id),
      balance numeric(38,12) not null default 0,
      reserved numeric(38,12) not null default 0 check (reserved >= 0),
      debt numeric(38,12) not null default 0 check (debt >= 0),
      last_sequence bigint not null default 0,
      head_hash text not null,
      updated_at timestamptz not null
    )`.execute(db);

  await sql`
    create table credit_blocks (
      org_id text not null references organizations(id),
      id text not null,
      source text not null check (source in ('purchase','bonus','adjustment','promotional')),
      original numeric(38,12) not null check (original > 0),
      remaining numeric(38,12) not null check (remaining >= 0 and remaining <= original),
      unit_cost numeric(38,12) not null default 0 check (unit_cost >= 0),
      priority integer not null default 0,
      effective_at timestamptz not null,
      expires_at timestamptz,
      status text not null
        check (status in ('active','pending_payment','depleted','expired','voided')),
      purchase_id text,
      created_at timestamptz not null,
      updated_at timestamptz not null,
      primary key (org_id, id)
    )`.execute(db);
  await sql`create index credit_blocks_active on credit_blocks (org_id) where status = 'active'`.execute(
    db,
  );
  await sql`create index credit_blocks_expiring on credit_blocks (expires_at) where status = 'active' and expires_at is not null`.execute(
    db,
  );
  await sql`create index credit_blocks_purchase on credit_blocks (org_id, purchase_id) where purchase_id is not null`.execute(
    db,
  );

  await sql`
    create table ledger_entries (
      org_id text not null references organizations(id),
      sequence bigint not null check (sequence > 0),
      id text not null,
      type text not null
        check (type in ('purchase','bonus','usage','refund','adjustment','expiry')),
      amount numeric(38,12) not null,
      balance_after numeric(38,12) not null,
      debt_change numeric(38,12) not null default 0,
      allocations jsonb not null,
      actor_type text not null check (actor_type in ('api_key','user','system')),
      actor_id text not null,
      user_id text,
      reason text,
      description text,
      reference_type text,
      reference_id text,
      created_at timestamptz not null,
      prev_hash text not null,
      hash text not null,
      primary key (org_id, sequence),
      unique (org_id, id)
    )`.execute(db);
  await sql`create index ledger_entries_reference on ledger_entries (org_id, reference_id) where reference_id is not null`.execute(
    db,
  );
  await sql`create index ledger_entries_type on ledger_entries (org_id, type, sequence)`.execute(
    db,
  );
  await sql`create index ledger_entries_user on ledger_entries (org_id, user_id, sequence) where user_id is not null`.execute(
    db,
  );
  await sql`create index ledger_entries_created on ledger_entries (org_id, created_at)`.execute(db);

  await sql`
    create function tally_ledger_immutable() returns trigger language plpgsql as $$
    begin
      raise exception 'ledger entries are immutable: % refused', tg_op
        using errcode = 'restrict_violation';
    end
    $$`.execute(db);
  await sql`
    create trigger ledger_entries_immutable before update or delete on ledger_entries
    for each row execute function tally_ledger_immutable()`.execute(db);
  await sql`
    create trigger ledger_entries_no_truncate before truncate on ledger_entries
    for each statement execute function tally_ledger_immutable()`.execute(db);
}

export async function down(): Promise<void> {
  throw new Error("Tally migrations are forward-only");
}
