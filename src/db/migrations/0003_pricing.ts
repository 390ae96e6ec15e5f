import { type Kysely, sql } from "kysely";

/**
 * Price catalogue: global (not per organisation), versioned, immutable.
 *
 * A version is one `price_versions` row plus its `model_prices` and `meter_prices` rows, all
 * written in one transaction. Version numbers are assigned max + 1 under a table lock by the
 * pricing service, so they are unique, gapless and in commit order; the primary key is the
 * backstop. Triggers reject UPDATE, DELETE and TRUNCATE: a rated usage event names the version
 * it was priced with, so a version must never change after the fact.
 *
 * The default catalogue (version 1, effective from 1970-01-01) is inserted here with literal
 * values, so that this migration keeps meaning the same thing forever; it is documented in
 * src/modules/pricing/DEFAULT_CATALOGUE.md (a test checks that the two agree).
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .createTable("price_versions")
    .addColumn("version", "bigint", (c) => c.primaryKey())
    .addColumn("effective_from", "timestamptz", (c) => c.notNull())
    .addColumn("created_at", "timestamptz", (c) => c.notNull())
    .addColumn("created_by", "text", (c) => c.notNull())
    .addCheckConstraint("price_versions_version_positive", sql`version > 0`)
    .execute();

  await db.schema
    .createTable("model_prices")
    .addColumn("version", "bigint", (c) => c.notNull().references("price_versions.version"))
    .addColumn("model", "text", (c) => c.notNull())
    .addColumn("provider", "text", (c) => c.notNull())
    .addColumn("input", sql`numeric(38,6)`, (c) => c.notNull())
    .addColumn("cached_input", sql`numeric(38,6)`, (c) => c.notNull())
    .addColumn("cache_write", sql`numeric(38,6)`, (c) => c.notNull())
    .addColumn("output", sql`numeric(38,6)`, (c) => c.notNull())
    .addPrimaryKeyConstraint("model_prices_pk", ["version", "model"])
    .addCheckConstraint(
      "model_prices_non_negative",
      sql`input >= 0 and cached_input >= 0 and cache_write >= 0 and output >= 0`,
    )
    .execute();

  await db.schema
    .createTable("meter_prices")
    .addColumn("version", "bigint", (c) => c.notNull().references("price_versions.version"))
    .addColumn("meter", "text", (c) => c.notNull())
    .addColumn("type", "text", (c) => c.notNull())
    .addColumn("unit", "text", (c) => c.notNull())
    .addColumn("rate", sql`numeric(38,6)`, (c) => c.notNull())
    .addColumn("aggregation", "text", (c) => c.notNull())
    .addPrimaryKeyConstraint("meter_prices_pk", ["version", "meter"])
    .addCheckConstraint("meter_prices_rate_non_negative", sql`rate >= 0`)
    .addCheckConstraint(
      "meter_prices_type",
      sql`type in ('compute', 'storage', 'bandwidth', 'data_ops')`,
    )
    .addCheckConstraint(
      "meter_prices_aggregation",
      sql`(type = 'storage' and aggregation = 'time_weighted') or (type <> 'storage' and aggregation = 'sum')`,
    )
    .execute();

  await sql`
    create function tally_price_catalogue_immutable() returns trigger language plpgsql as $$
    begin
      raise exception 'price catalogue versions are immutable (% on %)', tg_op, tg_table_name
        using errcode = 'P0001';
    end
    $$`.execute(db);
  for (const table of ["price_versions", "model_prices", "meter_prices"]) {
    await sql`
      create trigger ${sql.raw(`${table}_immutable`)} before update or delete on ${sql.table(table)}
      for each row execute function tally_price_catalogue_immutable()`.execute(db);
    await sql`
      create trigger ${sql.raw(`${table}_no_truncate`)} before truncate on ${sql.table(table)}
      for each statement execute function tally_price_catalogue_immutable()`.execute(db);
  }

  // ---- the default catalogue: version 1, credits where 1 credit = US$0.01 ---------------------
  await sql`
    insert into price_versions (version, effective_from, created_at, created_by)
    values (1, '1970-01-01T00:00:00Z', now(), 'system:default-catalogue')`.execute(db);
  await sql`
    insert into model_prices (version, model, provider, input, cached_input, cache_write, output)
    values
      (1, 'gpt-4o',           'openai',    '250',  '125', '250',  '1000'),
      (1, 'gpt-4o-mini',      'openai',    '15',   '7.5', '15',   '60'),
      (1, 'gpt-4.1',          'openai',    '200',  '50',  '200',  '800'),
      (1, 'gpt-4.1-mini',     'openai',    '40',   '10',  '40',   '160'),
      (1, 'o3',               'openai',    '200',  '50',  '200',  '800'),
      (1, 'claude-opus-4',    'anthropic', '1500', '150', '1875', '7500'),
      (1, 'claude-sonnet-4',  'anthropic', '300',  '30',  '375',  '1500'),
      (1, 'claude-3-5-haiku', 'anthropic', '80',   '8',   '100',  '400')`.execute(db);
  await sql`
    insert into meter_prices (version, meter, type, unit, rate, aggregation)
    values
      (1, 'compute.vcpu_seconds', 'compute',   'vCPU-second', '0.002',    'sum'),
      (1, 'storage.gb',           'storage',   'GB-hour',     '0.0001',   'time_weighted'),
      (1, 'bandwidth.egress_gb',  'bandwidth', 'GB',          '0.9',      'sum'),
      (1, 'data_ops.reads',       'data_ops',  'operation',   '0.000004', 'sum')`.execute(db);
}

export async function down(): Promise<void> {
  throw new Error("Tally migrations are forward-only");
}
