/**
 * The straightforward design Tally is measured against: `POST /v1/usage-events` behind the same
 * HTTP stack (Fastify, JSON-schema validation, exact bigint pricing), but one database
 * transaction per event — lock the balance row (SELECT … FOR UPDATE), insert the event, insert a
 * ledger entry, update the balance, commit, answer. Started by `bench/run.ts` with DATABASE_URL
 * pointing at a database of its own.
 */
import { randomUUID } from "node:crypto";
import Fastify from "fastify";
import pg from "pg";
import { serve } from "./serve.js";

pg.types.setTypeParser(1700, (v: string) => v);
pg.types.setTypeParser(20, (v: string) => v);

const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 10 });
pool.on("error", () => {});

await pool.query(`
  create table if not exists naive_balances (
    org_id text primary key,
    balance numeric(38,12) not null,
    last_sequence bigint not null default 0
  );
  create table if not exists naive_events (
    org_id text not null,
    id text not null,
    type text not null,
    model text not null,
    user_id text,
    operation text,
    input_tokens bigint not null,
    cached_input_tokens bigint not null,
    cache_write_tokens bigint not null,
    output_tokens bigint not null,
    cost numeric(38,12) not null,
    transaction_id text not null,
    received_at timestamptz not null,
    primary key (org_id, id)
  );
  create table if not exists naive_ledger (
    org_id text not null,
    sequence bigint not null,
    id text not null,
    amount numeric(38,12) not null,
    balance_after numeric(38,12) not null,
    event_id text not null,
    created_at timestamptz not null,
    primary key (org_id, sequence)
  );`);

/** Credits per 1M tokens × 10^6 (the same default catalogue as Tally). */
const PRICES: Record<string, [bigint, bigint, bigint, bigint]> = {
  "gpt-4o": [250_000000n, 125_000000n, 250_000000n, 1000_000000n],
  "gpt-4o-mini": [15_000000n, 7_500000n, 15_000000n, 60_000000n],
  "claude-sonnet-4": [300_000000n, 30_000000n, 375_000000n, 1500_000000n],
};

const SCALE = 10n ** 12n;
function format(v: bigint): string {
  const neg = v < 0n;
  const a = neg ? -v : v;
  const frac = (a % SCALE).toString().padStart(12, "0").replace(/0+$/, "");
  return `${neg ? "-" : ""}${a / SCALE}${frac ? `.${frac}` : ""}`;
}
function parse(s: string): bigint {
  const neg = s.startsWith("-");
  const [i, f = ""] = (neg ? s.slice(1) : s).split(".");
  const v = BigInt(i!) * SCALE + BigInt(f.padEnd(12, "0").slice(0, 12) || "0");
  return neg ? -v : v;
}

const Tokens = {
  type: "object",
  additionalProperties: false,
  properties: {
    input: { type: "integer", minimum: 0 },
    cached_input: { type: "integer", minimum: 0 },
    cache_write: { type: "integer", minimum: 0 },
    output: { type: "integer", minimum: 0 },
  },
} as const;
const Event = {
  type: "object",
  additionalProperties: false,
  required: ["id", "type", "model", "tokens"],
  properties: {
    id: { type: "string", pattern: "^[A-Za-z0-9._:-]{1,128}$" },
    org_id: { type: "string", maxLength: 64 },
    type: { const: "ai_tokens" },
    model: { type: "string", maxLength: 200 },
    user_id: { type: "string", maxLength: 128 },
    operation: { type: "string", maxLength: 200 },
    timestamp: { type: "string", format: "date-time" },
    tokens: Tokens,
  },
} as const;

interface EventInput {
  id: string;
  org_id?: string;
  model: string;
  user_id?: string;
  operation?: string;
  tokens: { input?: number; cached_input?: number; cache_write?: number; output?: number };
}

const DEFAULT_ORG = process.env.NAIVE_ORG ?? "org_hot";

async function ingestOne(e: EventInput) {
  const rates = PRICES[e.model];
  if (!rates) throw Object.assign(new Error("price_not_found"), { statusCode: 422 });
  const t = [
    e.tokens.input ?? 0,
    e.tokens.cached_input ?? 0,
    e.tokens.cache_write ?? 0,
    e.tokens.output ?? 0,
  ];
  const cost = t.reduce((s, n, i) => s + BigInt(n) * rates[i]!, 0n);
  const orgId = e.org_id ?? DEFAULT_ORG;
  const client = await pool.connect();
  try {
    await client.query("begin");
    let row = (
      await client.query<{ balance: string; last_sequence: string }>({
        name: "lock",
        text: "select balance, last_sequence from naive_balances where org_id = $1 for update",
        values: [orgId],
      })
    ).rows[0];
    if (!row) {
      await client.query(
        "insert into naive_balances (org_id, balance) values ($1, 1000000000000) on conflict do nothing",
        [orgId],
      );
      row = (
        await client.query<{ balance: string; last_sequence: string }>({
          name: "lock",
          text: "select balance, last_sequence from naive_balances where org_id = $1 for update",
          values: [orgId],
        })
      ).rows[0]!;
    }
    const balanceAfter = parse(row.balance) - cost;
    const sequence = BigInt(row.last_sequence) + 1n;
    const txn = `txn_${randomUUID()}`;
    const now = new Date();
    const inserted = await client.query({
      name: "event",
      text: `insert into naive_events (org_id, id, type, model, user_id, operation, input_tokens,
               cached_input_tokens, cache_write_tokens, output_tokens, cost, transaction_id, received_at)
             values ($1, $2, 'ai_tokens', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             on conflict do nothing returning id`,
      values: [
        orgId,
        e.id,
        e.model,
        e.user_id ?? null,
        e.operation ?? null,
        t[0],
        t[1],
        t[2],
        t[3],
        format(cost),
        txn,
        now,
      ],
    });
    if (inserted.rowCount === 0) {
      await client.query("rollback");
      return {
        id: e.id,
        status: "duplicate",
        cost: format(cost),
        transaction_id: null,
        balance_after: row.balance,
      };
    }
    await client.query({
      name: "entry",
      text: `insert into naive_ledger (org_id, sequence, id, amount, balance_after, event_id, created_at)
             values ($1, $2, $3, $4, $5, $6, $7)`,
      values: [orgId, sequence.toString(), txn, format(-cost), format(balanceAfter), e.id, now],
    });
    await client.query({
      name: "balance",
      text: "update naive_balances set balance = $2, last_sequence = $3 where org_id = $1",
      values: [orgId, format(balanceAfter), sequence.toString()],
    });
    await client.query("commit");
    return {
      id: e.id,
      status: "accepted",
      cost: format(cost),
      transaction_id: txn,
      balance_after: format(balanceAfter),
    };
  } catch (error) {
    await client.query("rollback").catch(() => {});
    throw error;
  } finally {
    client.release();
  }
}

const app = Fastify({ logger: false, bodyLimit: 4 * 1024 * 1024 });
app.get("/healthz", async () => ({ status: "ok" }));
app.post(
  "/v1/usage-events",
  {
    schema: {
      body: {
        oneOf: [
          Event,
          {
            type: "object",
            additionalProperties: false,
            required: ["events"],
            properties: { events: { type: "array", minItems: 1, maxItems: 1000, items: Event } },
          },
        ],
      },
    },
  },
  async (request) => {
    const body = request.body as EventInput | { events: EventInput[] };
    const events = "events" in body ? body.events : [body];
    const data = [];
    for (const e of events) data.push(await ingestOne(e));
    return { data };
  },
);

await serve(app, 8091, () => pool.end());
