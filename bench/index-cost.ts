/**
 * What the ledger's secondary indexes cost a hot-organisation flush (PostgreSQL, durable commits):
 * the ledger_entries rows of N flushes of F usage entries, each flush one autocommit INSERT…SELECT
 * (so each waits for its WAL to reach the disk, as the engine's flushes do), written into two
 * copies of the table that differ only in indexes, alternating. Reports wall time and WAL bytes
 * per entry for each copy.
 *
 *   npx tsx bench/index-cost.ts [flushes per round = 300] [entries per flush = 32] [rounds = 4]
 */
import pg from "pg";
import { createDatabase, dropDatabase } from "./lib/pg.js";

const FLUSHES = Number(process.argv[2] ?? 300);
const PER_FLUSH = Number(process.argv[3] ?? 32);
const ROUNDS = Number(process.argv[4] ?? 4);

const TABLE = `(
  org_id text not null, sequence bigint not null check (sequence > 0), id text not null,
  type text not null check (type in ('purchase','bonus','usage','refund','adjustment','expiry')),
  amount numeric(38,12) not null, balance_after numeric(38,12) not null,
  debt_change numeric(38,12) not null default 0, allocations jsonb not null,
  actor_type text not null, actor_id text not null, user_id text, reason text, description text,
  reference_type text, reference_id text, created_at timestamptz not null,
  prev_hash text not null, hash text not null,
  primary key (org_id, sequence), unique (org_id, id))`;

const VARIANTS = {
  /** The indexes of migration 0002. */
  all: [
    "create index on le_all (org_id, reference_id) where reference_id is not null",
    "create index on le_all (org_id, type, sequence)",
    "create index on le_all (org_id, user_id, sequence) where user_id is not null",
    "create index on le_all (org_id, created_at)",
  ],
  /** Usage entries left out of the type and reference indexes. */
  partial: [
    "create index on le_partial (org_id, reference_id) where reference_id is not null and type <> 'usage'",
    "create index on le_partial (org_id, type, sequence) where type <> 'usage'",
    "create index on le_partial (org_id, user_id, sequence) where user_id is not null",
    "create index on le_partial (org_id, created_at)",
  ],
} as const;

const name = `bench_index_cost_${process.pid}`;
const url = await createDatabase(name);
const client = new pg.Client({ connectionString: url });
await client.connect();
try {
  for (const [variant, indexes] of Object.entries(VARIANTS)) {
    await client.query(`create table le_${variant} ${TABLE}`);
    for (const ix of indexes) await client.query(ix);
  }
  const seq: Record<string, number> = { all: 0, partial: 0 };
  const totals: Record<string, { ms: number; wal: bigint; entries: number }> = {
    all: { ms: 0, wal: 0n, entries: 0 },
    partial: { ms: 0, wal: 0n, entries: 0 },
  };
  const insert = (variant: string, from: number) =>
    client.query(
      `insert into le_${variant} select 'org_hot', g, 'txn_' || md5(g::text), 'usage', -0.04125, 1000000 - g * 0.04125, 0,
        '[{"block_id":"blk_0123456789abcdefghij","amount":"0.04125"}]', 'api_key', 'key_0123456789abcdefghij',
        'u-' || (g % 100), null, 'gpt-4o-mini · chat.completion', 'usage_event', 'evt-' || g, now(),
        md5(g::text) || md5((g + 1)::text), md5((g + 2)::text) || md5((g + 3)::text)
      from generate_series($1::bigint, $2::bigint) g`,
      [from, from + PER_FLUSH - 1],
    );
  for (let round = 0; round <= ROUNDS; round++) {
    for (const variant of round % 2 === 0 ? ["all", "partial"] : ["partial", "all"]) {
      const lsn0 = (await client.query("select pg_current_wal_insert_lsn() as l")).rows[0].l;
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < FLUSHES; i++) {
        await insert(variant, seq[variant]! + 1);
        seq[variant]! += PER_FLUSH;
      }
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      const wal = BigInt(
        (await client.query("select pg_wal_lsn_diff(pg_current_wal_insert_lsn(), $1) as d", [lsn0]))
          .rows[0].d,
      );
      if (round === 0) continue; // warm-up
      totals[variant]!.ms += ms;
      totals[variant]!.wal += wal;
      totals[variant]!.entries += FLUSHES * PER_FLUSH;
      console.log(
        `${variant.padEnd(8)} round ${round}: ${(ms / FLUSHES).toFixed(3)} ms/flush, ${(Number(wal) / (FLUSHES * PER_FLUSH)).toFixed(0)} WAL bytes/entry`,
      );
    }
  }
  for (const [variant, t] of Object.entries(totals)) {
    console.log(
      `${variant}: ${(t.ms / (t.entries / PER_FLUSH)).toFixed(3)} ms per flush of ${PER_FLUSH}, ${(Number(t.wal) / t.entries).toFixed(0)} WAL bytes per entry`,
    );
  }
} finally {
  await client.end();
  await dropDatabase(name);
}
