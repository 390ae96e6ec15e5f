/**
 * The least a group-commit ingest has to do, for the hot-organisation scenario: what Tally's
 * engine would cost with every API feature taken away. It writes the rows Tally writes, into
 * Tally's own schema (its migrations, indexes and triggers): per event a `usage_events` row and a
 * hash-chained `usage` ledger entry drawn from the organisation's one block; per flush the
 * monthly and daily rollups, the block and the balance row — in ONE autocommit statement, one
 * flush in flight, everything that arrives meanwhile joining the next, every answer after the
 * commit. What it leaves out: authentication, schema validation, the price catalogue and its
 * versions, provider shapes, idempotency keys, duplicate and conflict handling beyond the
 * insert's ON CONFLICT, reservations, storage gauges, observers, optimistic guards, several
 * instances, metrics, security headers and rate limits. Events are trusted as sent.
 *
 * Started by `bench/run.ts` (and `bench/ingest.ts hot --group-commit`) with DATABASE_URL pointing
 * at a new database of its own; the hot organisation is `org_hot`, funded with one block.
 */
import { createHash, randomBytes } from "node:crypto";
import Fastify from "fastify";
import pg from "pg";
import { migrateToLatest, openDatabase } from "../../src/db/index.js";
import { formatCredits } from "../../src/modules/ledger/credits.js";
import { entryHash, GENESIS_HASH } from "../../src/modules/ledger/hash.js";
import { serve } from "./serve.js";

const ORG = "org_hot";
const BLOCK = "blk_hot";
const FUNDS = 10n ** 9n * 10n ** 12n; // a billion credits, scale 12

const database = await openDatabase({ url: process.env.DATABASE_URL! });
await migrateToLatest(database.db);
await database.close();

const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 1 });
pool.on("error", () => {});
const started = new Date();
await pool.query(
  `insert into organizations (id, name, plan, created_at, updated_at) values ($1, 'hot', 'standard', $2, $2)`,
  [ORG, started],
);
await pool.query(
  `insert into credit_blocks (org_id, id, source, original, remaining, effective_at, status, created_at, updated_at)
   values ($1, $2, 'adjustment', $3, $3, $4, 'active', $4, $4)`,
  [ORG, BLOCK, formatCredits(FUNDS), started],
);
// The grant that funds the block: the chain's first entry.
const grant = {
  org_id: ORG,
  sequence: 1n,
  id: "txn_grant",
  type: "adjustment" as const,
  amount: FUNDS,
  balance_after: FUNDS,
  debt_change: 0n,
  allocations: [{ block_id: BLOCK, amount: FUNDS }],
  actor_type: "system",
  actor_id: "bench",
  user_id: null,
  reason: "bench funds",
  description: null,
  reference_type: null,
  reference_id: null,
  created_at: started,
};
const grantHash = entryHash(GENESIS_HASH, grant);
await pool.query(
  `insert into ledger_entries (org_id, sequence, id, type, amount, balance_after, allocations,
     actor_type, actor_id, reason, created_at, prev_hash, hash)
   values ($1, 1, $2, 'adjustment', $3, $3, $4, 'system', 'bench', $5, $6, $7, $8)`,
  [
    ORG,
    grant.id,
    formatCredits(FUNDS),
    JSON.stringify([{ block_id: BLOCK, amount: formatCredits(FUNDS) }]),
    grant.reason,
    started,
    GENESIS_HASH,
    grantHash,
  ],
);
await pool.query(
  `insert into org_balances (org_id, balance, last_sequence, head_hash, updated_at)
   values ($1, $2, 1, $3, $4)`,
  [ORG, formatCredits(FUNDS), grantHash, started],
);
// The ledger lives here from now on: the only writer is this process.
let balance = FUNDS;
let sequence = 1n;
let head = grantHash;

/** Credits per token at scale 12 (Tally's default catalogue): input, cached, cache write, output. */
const RATES: Record<string, readonly [bigint, bigint, bigint, bigint]> = {
  "gpt-4o": [250_000000n, 125_000000n, 250_000000n, 1000_000000n],
  "gpt-4o-mini": [15_000000n, 7_500000n, 15_000000n, 60_000000n],
};

interface EventInput {
  id: string;
  model: string;
  user_id?: string;
  operation?: string;
  timestamp?: string;
  tokens: { input?: number; cached_input?: number; cache_write?: number; output?: number };
}

interface Pending {
  event: EventInput;
  tokens: [bigint, bigint, bigint, bigint];
  cost: bigint;
  payloadHash: string;
  resolve(result: object): void;
  reject(error: unknown): void;
}

let queue: Pending[] = [];
let flushing = false;

function submit(event: EventInput): Promise<object> {
  const rates = RATES[event.model];
  if (!rates) return Promise.reject(Object.assign(new Error("unknown model"), { statusCode: 422 }));
  const t = event.tokens;
  const tokens: Pending["tokens"] = [
    BigInt(t.input ?? 0),
    BigInt(t.cached_input ?? 0),
    BigInt(t.cache_write ?? 0),
    BigInt(t.output ?? 0),
  ];
  const cost = tokens.reduce((sum, n, i) => sum + n * rates[i]!, 0n);
  const payloadHash = createHash("sha256").update(JSON.stringify(event)).digest("hex");
  return new Promise((resolve, reject) => {
    queue.push({ event, tokens, cost, payloadHash, resolve, reject });
    if (!flushing) {
      flushing = true;
      setImmediate(flush);
    }
  });
}

let txnCounter = 0;
const txnPrefix = randomBytes(6).toString("hex");

async function flush(): Promise<void> {
  const batch = queue;
  queue = [];
  const now = new Date();
  const period = `${now.toISOString().slice(0, 7)}-01`;
  const day = now.toISOString().slice(0, 10);
  const ev: unknown[][] = Array.from({ length: 12 }, () => []);
  const le: unknown[][] = Array.from({ length: 10 }, () => []);
  const rollups = new Map<string, { t: bigint[]; cost: bigint; events: number }>();
  let total = 0n;
  let b = balance;
  let s = sequence;
  let h = head;
  const results: object[] = [];
  for (const p of batch) {
    const e = p.event;
    s += 1n;
    b -= p.cost;
    total += p.cost;
    const id = `txn_${txnPrefix}${(txnCounter++).toString(36).padStart(10, "0")}`;
    const entry = {
      org_id: ORG,
      sequence: s,
      id,
      type: "usage" as const,
      amount: -p.cost,
      balance_after: b,
      debt_change: 0n,
      allocations: [{ block_id: BLOCK, amount: -p.cost }],
      actor_type: "api_key",
      actor_id: "key_bench",
      user_id: e.user_id ?? null,
      reason: null,
      description: `ai_tokens ${e.model}`,
      reference_type: "usage_event",
      reference_id: e.id,
      created_at: now,
    };
    const hash = entryHash(h, entry);
    const ts = e.timestamp ?? now.toISOString();
    const cost = formatCredits(p.cost);
    for (const [column, value] of [
      e.id,
      ts,
      e.user_id ?? null,
      e.operation ?? null,
      e.model,
      p.tokens[0]!.toString(),
      p.tokens[1]!.toString(),
      p.tokens[2]!.toString(),
      p.tokens[3]!.toString(),
      cost,
      id,
      p.payloadHash,
    ].entries()) {
      ev[column]!.push(value);
    }
    for (const [column, value] of [
      s.toString(),
      id,
      formatCredits(-p.cost),
      formatCredits(b),
      JSON.stringify([{ block_id: BLOCK, amount: formatCredits(-p.cost) }]),
      e.user_id ?? null,
      entry.description,
      e.id,
      h,
      hash,
    ].entries()) {
      le[column]!.push(value);
    }
    h = hash;
    const key = `${e.model}\u0000${e.operation ?? ""}\u0000${e.user_id ?? ""}`;
    const r = rollups.get(key) ?? { t: [0n, 0n, 0n, 0n], cost: 0n, events: 0 };
    for (let i = 0; i < 4; i++) r.t[i]! += p.tokens[i]!;
    r.cost += p.cost;
    r.events += 1;
    rollups.set(key, r);
    results.push({
      id: e.id,
      status: "accepted",
      cost,
      transaction_id: id,
      balance_after: formatCredits(b),
    });
  }
  const ro: unknown[][] = Array.from({ length: 10 }, () => []);
  for (const [key, r] of rollups) {
    const [model, operation, user] = key.split("\u0000");
    const quantity = r.t.reduce((x, y) => x + y, 0n) * 10n ** 12n;
    for (const [column, value] of [
      model,
      operation,
      user,
      formatCredits(quantity),
      r.t[0]!.toString(),
      r.t[1]!.toString(),
      r.t[2]!.toString(),
      r.t[3]!.toString(),
      formatCredits(r.cost),
      r.events,
    ].entries()) {
      ro[column]!.push(value);
    }
  }
  try {
    await pool.query({
      name: "flush",
      text: `with ev as (
          insert into usage_events (org_id, id, type, timestamp, user_id, operation, model,
            input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, cost,
            transaction_id, payload_hash, received_at, price_version)
          select $1, v.id, 'ai_tokens', v.ts, v.user_id, v.operation, v.model, v.i, v.c, v.w, v.o,
            v.cost, v.txn, v.hash, $2, 1
          from unnest($3::text[], $4::timestamptz[], $5::text[], $6::text[], $7::text[],
            $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::numeric[], $13::text[],
            $14::text[]) as v(id, ts, user_id, operation, model, i, c, w, o, cost, txn, hash)
          on conflict (org_id, id) do nothing returning 1),
        le as (
          insert into ledger_entries (org_id, sequence, id, type, amount, balance_after,
            debt_change, allocations, actor_type, actor_id, user_id, description,
            reference_type, reference_id, created_at, prev_hash, hash)
          select $1, v.seq, v.id, 'usage', v.amount, v.after, 0, v.alloc::jsonb, 'api_key',
            'key_bench', v.user_id, v.description, 'usage_event', v.ref, $2, v.prev, v.hash
          from unnest($15::bigint[], $16::text[], $17::numeric[], $18::numeric[], $19::text[],
            $20::text[], $21::text[], $22::text[], $23::text[], $24::text[])
            as v(seq, id, amount, after, alloc, user_id, description, ref, prev, hash)
          returning 1),
        ro as (
          insert into usage_rollups as r (org_id, period, type, model, operation, user_id, unit,
            quantity, input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, cost,
            events)
          select $1, $25::date, 'ai_tokens', v.model, v.operation, v.user_id, 'tokens', v.q, v.i,
            v.c, v.w, v.o, v.cost, v.events
          from unnest($26::text[], $27::text[], $28::text[], $29::numeric[], $30::bigint[],
            $31::bigint[], $32::bigint[], $33::bigint[], $34::numeric[], $35::bigint[])
            as v(model, operation, user_id, q, i, c, w, o, cost, events)
          on conflict (org_id, period, type, model, operation, user_id, resource, meter, unit) do update
            set quantity = r.quantity + excluded.quantity,
                input_tokens = r.input_tokens + excluded.input_tokens,
                cached_input_tokens = r.cached_input_tokens + excluded.cached_input_tokens,
                cache_write_tokens = r.cache_write_tokens + excluded.cache_write_tokens,
                output_tokens = r.output_tokens + excluded.output_tokens,
                cost = r.cost + excluded.cost, events = r.events + excluded.events
          returning 1),
        da as (
          insert into usage_daily as d (org_id, day, type, cost, events)
          values ($1, $36::date, 'ai_tokens', $37, $38)
          on conflict (org_id, day, type) do update
            set cost = d.cost + excluded.cost, events = d.events + excluded.events
          returning 1),
        bl as (
          update credit_blocks set remaining = remaining - $37::numeric, updated_at = $2
          where org_id = $1 and id = $39 returning 1),
        ba as (
          update org_balances set balance = $40, last_sequence = $41, head_hash = $42,
            updated_at = $2, version = version + 1
          where org_id = $1 returning 1)
        select (select count(*) from ev) as events, (select count(*) from le) as entries,
          (select count(*) from ro) as rollups, (select count(*) from da) as daily,
          (select count(*) from bl) as blocks, (select count(*) from ba) as balances`,
      values: [
        ORG,
        now,
        ...ev,
        ...le,
        period,
        ...ro,
        day,
        formatCredits(total),
        batch.length,
        BLOCK,
        formatCredits(b),
        s.toString(),
        h,
      ],
    });
    balance = b;
    sequence = s;
    head = h;
    for (const [i, p] of batch.entries()) p.resolve(results[i]!);
  } catch (error) {
    for (const p of batch) p.reject(error);
  }
  if (queue.length > 0) setImmediate(flush);
  else flushing = false;
}

const app = Fastify({ logger: false, bodyLimit: 4 * 1024 * 1024 });
app.get("/healthz", async () => ({ status: "ok" }));
app.post("/v1/usage-events", async (request) => {
  const body = request.body as EventInput | { events: EventInput[] };
  const events = "events" in body ? body.events : [body];
  return { data: await Promise.all(events.map(submit)) };
});

await serve(app, 8092, () => pool.end());
