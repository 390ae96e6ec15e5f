/**
 * Supporting measurements for bench/results/profile-<date>.md (not part of `npm run bench`):
 *
 *   npx tsx bench/experiments.ts        (N=100000 events per floor run by default)
 *
 * 1. The PostgreSQL floor of ingest (the usage_events + ledger_entries rows of N events written
 *    by INSERT…SELECT inside the server) with the schema as it is, without the foreign keys to
 *    organizations, and also without the secondary indexes: backend CPU per event.
 * 2. Client-side encoding of 20,000 usage_events rows: Kysely multi-row VALUES (500 rows and
 *    24 parameters per row per statement, as the engine does) against one parameter per column
 *    (unnest of arrays): Node CPU and backend CPU per row.
 * 3. The same floor on embedded PGlite (in this process).
 *
 * It creates and drops its own database and temporary directory.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PGlite } from "@electric-sql/pglite";
import { Kysely, PostgresDialect } from "kysely";
import pg from "pg";
import { createDatabase, dropDatabase } from "./lib/pg.js";
import { startTally } from "./lib/servers.js";
import { TallyApi } from "./lib/tally.js";
import { processCpuSeconds, round } from "./lib/util.js";

const N = Number(process.env.N ?? 100000);
const name = `bench_exp_${process.pid}`;
const url = await createDatabase(name);
const out: Record<string, unknown> = {};
try {
  const server = await startTally("exp", { databaseUrl: url });
  const org = await new TallyApi(server.url).createFundedOrg("exp");
  await server.stop();
  const pool = new pg.Pool({ connectionString: url, max: 2 });
  const floorSql = async (c: pg.PoolClient, p: string, n: number, seqBase: number) => {
    await c.query(
      `insert into usage_events (org_id, id, type, timestamp, user_id, operation, model, input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, cost, price_version, transaction_id, payload_hash, received_at)
      select $1, $2 || '-' || g, 'ai_tokens', now(), 'u-' || (g % 100), 'chat.completion', 'gpt-4o-mini', 1200, 300, 0, 350, 0.04125, 1, 'txn_' || $2 || '_' || g, md5(g::text) || md5($2 || g), now() from generate_series(1, $3::int) g`,
      [org, p, n],
    );
    await c.query(
      `insert into ledger_entries (org_id, sequence, id, type, amount, balance_after, debt_change, allocations, actor_type, actor_id, user_id, description, reference_type, reference_id, created_at, prev_hash, hash)
      select $1, $3::bigint + g, 'txn_' || $2 || '_' || g, 'usage', -0.04125, 1000000000000 - g * 0.04125, 0, jsonb_build_array(jsonb_build_object('block_id', 'blk_floor', 'amount', '-0.04125')), 'api_key', 'key_floor', 'u-' || (g % 100), 'gpt-4o-mini · chat.completion', 'usage_event', $2 || '-' || g, now(), md5(g::text) || md5($2 || (g - 1)), md5(g::text) || md5($2 || g) from generate_series(1, $4::int) g`,
      [org, p, seqBase, n],
    );
  };
  let seq = 1_000_000;
  const floor = async (label: string) => {
    const c = await pool.connect();
    const pid = Number((await c.query("select pg_backend_pid() as pid")).rows[0].pid);
    const results = [];
    for (let i = 0; i < 3; i++) {
      const c0 = processCpuSeconds(pid);
      const t0 = performance.now();
      await c.query("begin");
      await floorSql(c, `${label}${i}`, N, seq);
      seq += N + 10;
      await c.query("commit");
      results.push({
        evs: round(N / ((performance.now() - t0) / 1000)),
        cpuUs: round(((processCpuSeconds(pid) - c0) / N) * 1e6, 1),
      });
    }
    c.release();
    out[`floor: ${label}`] = results;
    console.log(label, JSON.stringify(results));
  };
  await floor("schema as is");
  const fks = (
    await pool.query(
      `select conrelid::regclass::text as t, conname from pg_constraint where contype = 'f' and conrelid::regclass::text in ('usage_events', 'ledger_entries')`,
    )
  ).rows;
  for (const f of fks) await pool.query(`alter table ${f.t} drop constraint ${f.conname}`);
  await floor("without the organizations foreign keys");
  for (const ix of [
    "usage_events_time",
    "ledger_entries_reference",
    "ledger_entries_type",
    "ledger_entries_user",
    "ledger_entries_created",
  ])
    await pool.query(`drop index ${ix}`);
  await floor("also without secondary indexes (PK and unique(org_id,id) only)");

  // Client encoding: 20k usage_events rows, 500 per statement (Kysely multi-row VALUES) vs unnest arrays.
  const M = 20_000;
  const cols = [
    "org_id",
    "id",
    "type",
    "timestamp",
    "timestamp_defaulted",
    "user_id",
    "operation",
    "model",
    "meter",
    "resource",
    "quantity",
    "billed_quantity",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "provider_usage",
    "metadata",
    "cost",
    "price_version",
    "transaction_id",
    "reservation_id",
    "payload_hash",
    "received_at",
  ] as const;
  const row = (p: string, i: number) => ({
    org_id: org,
    id: `${p}-${i}`,
    type: "ai_tokens",
    timestamp: new Date(),
    timestamp_defaulted: true,
    user_id: `u-${i % 100}`,
    operation: "chat.completion",
    model: "gpt-4o-mini",
    meter: null,
    resource: null,
    quantity: null,
    billed_quantity: null,
    input_tokens: "1200",
    cached_input_tokens: "300",
    cache_write_tokens: "0",
    output_tokens: "350",
    provider_usage: null,
    metadata: null,
    cost: "0.04125",
    price_version: 1,
    transaction_id: `txn_${p}_${i}`,
    reservation_id: null,
    payload_hash: "a".repeat(64),
    received_at: new Date(),
  });
  const kpool = new pg.Pool({ connectionString: url, max: 1 });
  const db = new Kysely<Record<string, Record<string, unknown>>>({
    dialect: new PostgresDialect({ pool: kpool }),
  });
  const measure = async (label: string, fn: (p: string) => Promise<void>) => {
    const pids = (
      await pool.query(
        "select pid from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()",
        [name],
      )
    ).rows.map((r) => Number(r.pid));
    const backend = () => pids.reduce((s, p) => s + processCpuSeconds(p), 0);
    const results = [];
    for (let i = 0; i < 3; i++) {
      const b0 = backend();
      const u0 = process.cpuUsage();
      const t0 = performance.now();
      await fn(`${label.slice(0, 3)}${i}`);
      const u = process.cpuUsage(u0);
      results.push({
        evs: round(M / ((performance.now() - t0) / 1000)),
        nodeUs: round((u.user + u.system) / M, 1),
        pgUs: round(((backend() - b0) / M) * 1e6, 1),
      });
    }
    out[`encode: ${label}`] = results;
    console.log(label, JSON.stringify(results));
  };
  await db.selectFrom("organizations").select("id").limit(1).execute();
  await measure("Kysely multi-row VALUES, 500 rows per statement", async (p) => {
    const rows = Array.from({ length: M }, (_, i) => row(p, i));
    await db.transaction().execute(async (tx) => {
      for (let i = 0; i < M; i += 500)
        await tx
          .insertInto("usage_events")
          .values(rows.slice(i, i + 500))
          .execute();
    });
  });
  const kc = await kpool.connect();
  await measure("pg unnest arrays, 2000 rows per statement", async (p) => {
    const rows = Array.from({ length: M }, (_, i) => row(p, i));
    await kc.query("begin");
    for (let i = 0; i < M; i += 2000) {
      const part = rows.slice(i, i + 2000);
      const types = [
        "text",
        "text",
        "text",
        "timestamptz",
        "bool",
        "text",
        "text",
        "text",
        "text",
        "text",
        "numeric",
        "numeric",
        "int8",
        "int8",
        "int8",
        "int8",
        "jsonb",
        "jsonb",
        "numeric",
        "int4",
        "text",
        "text",
        "text",
        "timestamptz",
      ];
      const arrays = cols.map((c) =>
        part.map((r) => {
          const v = r[c];
          return v instanceof Date ? v.toISOString() : v;
        }),
      );
      await kc.query(
        `insert into usage_events (${cols.join(", ")}) select * from unnest(${types.map((t, k) => `$${k + 1}::${t}[]`).join(", ")})`,
        arrays,
      );
    }
    await kc.query("commit");
  });
  kc.release();
  await db.destroy();
  await pool.end();

  // PGlite floor, in this process.
  const dir = mkdtempSync(join(tmpdir(), "exp-lite-"));
  const lite = await startTally("exp-lite", { dataDir: join(dir, "d") });
  const liteOrg = await new TallyApi(lite.url).createFundedOrg("exp");
  await lite.stop();
  const pgl = await PGlite.create({ dataDir: join(dir, "d") });
  const L = 20_000;
  const res = [];
  for (let i = 0; i < 3; i++) {
    const u0 = process.cpuUsage();
    const t0 = performance.now();
    await pgl.transaction(async (tx) => {
      await tx.query(
        `insert into usage_events (org_id, id, type, timestamp, user_id, operation, model, input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, cost, price_version, transaction_id, payload_hash, received_at)
        select $1, $2 || '-' || g, 'ai_tokens', now(), 'u-' || (g % 100), 'chat.completion', 'gpt-4o-mini', 1200, 300, 0, 350, 0.04125, 1, 'txn_' || $2 || '_' || g, md5(g::text) || md5($2 || g), now() from generate_series(1, $3::int) g`,
        [liteOrg, `l${i}`, L],
      );
      await tx.query(
        `insert into ledger_entries (org_id, sequence, id, type, amount, balance_after, debt_change, allocations, actor_type, actor_id, user_id, description, reference_type, reference_id, created_at, prev_hash, hash)
        select $1, $3::bigint + g, 'txn_' || $2 || '_' || g, 'usage', -0.04125, 1000000000000 - g * 0.04125, 0, jsonb_build_array(jsonb_build_object('block_id', 'blk_floor', 'amount', '-0.04125')), 'api_key', 'key_floor', 'u-' || (g % 100), 'gpt-4o-mini · chat.completion', 'usage_event', $2 || '-' || g, now(), md5(g::text) || md5($2 || (g - 1)), md5(g::text) || md5($2 || g) from generate_series(1, $4::int) g`,
        [liteOrg, `l${i}`, 1_000_000 * (i + 1), L],
      );
    });
    const u = process.cpuUsage(u0);
    res.push({
      evs: round(L / ((performance.now() - t0) / 1000)),
      cpuUs: round((u.user + u.system) / L, 1),
    });
  }
  out["PGlite floor (INSERT…SELECT, schema as is)"] = res;
  console.log("pglite floor", JSON.stringify(res));
  await pgl.close();
  rmSync(dir, { recursive: true, force: true });
} finally {
  await dropDatabase(name);
}
console.log(JSON.stringify(out));
