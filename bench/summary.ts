/**
 * Monthly usage summary benchmark (issue 7): an organisation with N usage events (default 10M)
 * in one month, on PostgreSQL. Measures the summary served from the rollups — through the
 * service function and through HTTP (inject) — against the same summary computed by GROUP BY
 * over the raw usage_events, in the same run, and checks that both give the same numbers.
 *
 *   npx tsx bench/summary.ts [--events 10000000] [--users 200] [--month 2026-10]
 *                            [--iterations 200] [--raw-iterations 5] [--keep]
 *                            [--json-out FILE] [--quick]
 *
 * DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres) names the server; the
 * benchmark creates its own database there and drops it afterwards (unless --keep). Events and
 * rollups are synthesised with SQL: events by generate_series, rollups and daily rows by
 * INSERT … SELECT … GROUP BY over those events, so they match exactly. Results go to
 * bench/results/summary-[<events>-]<date>[-<n>].json and .md (not with --quick), and to
 * --json-out: `npm run bench` runs this script last and reports its p95 against the target.
 */
import { writeFileSync } from "node:fs";
import { cpus, loadavg, totalmem } from "node:os";
import { parseArgs } from "node:util";
import { sql } from "kysely";
import pg from "pg";
import { loadConfig } from "../src/app/config.js";
import { createLogger, createRuntime } from "../src/app/runtime.js";
import { openDatabase } from "../src/db/index.js";
import { createApiKey, createOrganization } from "../src/modules/orgs/orgs.service.js";
import { summaryLinesQueries } from "../src/modules/reports/reports.repo.js";
import {
  chargebackRows,
  periodBounds,
  usageSummaries,
} from "../src/modules/reports/reports.service.js";
import { resultBase } from "./lib/report.js";

const { values: args } = parseArgs({
  options: {
    events: { type: "string", default: "10000000" },
    users: { type: "string", default: "200" },
    month: { type: "string" },
    iterations: { type: "string", default: "200" },
    "raw-iterations": { type: "string", default: "5" },
    chunk: { type: "string", default: "1000000" },
    "other-orgs": { type: "string", default: "50" },
    keep: { type: "boolean", default: false },
    /** Also write the result as JSON here (`npm run bench` reads it). */
    "json-out": { type: "string" },
    /** Write no bench/results files (`npm run bench -- --quick`). */
    quick: { type: "boolean", default: false },
  },
});
const EVENTS = Number(args.events);
const USERS = Number(args.users);
const ITERATIONS = Number(args.iterations);
const RAW_ITERATIONS = Number(args["raw-iterations"]);
const CHUNK = Number(args.chunk);
const OTHER_ORGS = Number(args["other-orgs"]);
const MONTH = args.month ?? previousMonth(new Date());
if (!(EVENTS > 0 && USERS > 0 && ITERATIONS > 0 && RAW_ITERATIONS > 0 && CHUNK > 0)) {
  throw new Error("--events, --users, --iterations, --raw-iterations and --chunk must be > 0");
}
if (!(OTHER_ORGS >= 0)) throw new Error("--other-orgs must be ≥ 0");
if (!/^\d{4}-(0[1-9]|1[0-2])$/.test(MONTH)) throw new Error("--month must be YYYY-MM");

const ADMIN_URL = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const DB_NAME = `tally_bench_summary_${process.pid}`;
const log = (line: string) => process.stderr.write(`[summary-bench] ${line}\n`);

function previousMonth(now: Date): string {
  const d = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - 1, 1));
  return d.toISOString().slice(0, 7);
}

async function admin(statement: string) {
  const client = new pg.Client({ connectionString: ADMIN_URL });
  await client.connect();
  try {
    await client.query(statement);
  } finally {
    await client.end();
  }
}

function percentile(sorted: number[], p: number): number {
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

function stats(samples: number[]) {
  const sorted = [...samples].sort((a, b) => a - b);
  const round = (x: number) => Math.round(x * 100) / 100;
  return {
    n: samples.length,
    p50_ms: round(percentile(sorted, 50)),
    p95_ms: round(percentile(sorted, 95)),
    min_ms: round(sorted[0]!),
    max_ms: round(sorted[sorted.length - 1]!),
    mean_ms: round(samples.reduce((a, b) => a + b, 0) / samples.length),
  };
}

async function time<T>(fn: () => Promise<T>): Promise<[number, T]> {
  const t0 = performance.now();
  const result = await fn();
  return [performance.now() - t0, result];
}

// Default catalogue rates (credits per 1M tokens; per unit): DEFAULT_CATALOGUE.md.
const MODELS = sql`(values
  (0, 'gpt-4o', 250, 125, 250, 1000), (1, 'gpt-4o-mini', 15, 7.5, 15, 60),
  (2, 'gpt-4.1', 200, 50, 200, 800), (3, 'gpt-4.1-mini', 40, 10, 40, 160),
  (4, 'o3', 200, 50, 200, 800), (5, 'claude-opus-4', 1500, 150, 1875, 7500),
  (6, 'claude-sonnet-4', 300, 30, 375, 1500), (7, 'claude-3-5-haiku', 80, 8, 100, 400))
  as m(i, model, r_in, r_cached, r_write, r_out)`;
const UNIT = sql`case type when 'ai_tokens' then 'tokens' when 'compute' then 'vCPU-second'
  when 'storage' then 'GB-hour' when 'bandwidth' then 'GB' else 'operation' end`;

async function main() {
  const started = new Date();
  const { start, end } = periodBounds(MONTH);
  const stepMs = (end.getTime() - start.getTime()) / EVENTS;
  log(`creating database ${DB_NAME}`);
  await admin(`drop database if exists ${DB_NAME} with (force)`);
  await admin(`create database ${DB_NAME}`);
  const url = new URL(ADMIN_URL);
  url.pathname = `/${DB_NAME}`;
  const database = await openDatabase({ url: url.toString(), poolSize: 4 });
  try {
    const runtime = await createRuntime(
      loadConfig({ LOG_LEVEL: "silent", DATABASE_URL: url.toString() }),
      { database, logger: createLogger("silent"), workers: false },
    );
    const { ctx, app } = runtime;
    const db = ctx.db;
    const org = await createOrganization(ctx, { name: "Bench summary org" });
    if (!org.ok) throw new Error("could not create the organisation");
    const orgId = org.value.id;
    const { secret } = await createApiKey(ctx, { orgId: null, name: "bench", role: "platform" });
    const pgVersion = (
      await sql<{ v: string }>`select current_setting('server_version') as v`.execute(db)
    ).rows[0]!.v;

    // ---- load ---------------------------------------------------------------------------
    // 4 in 5 events are ai_tokens (8 models × USERS users (+ none) × 6 operations), the rest
    // spread over the four meter types on 50 resources. Dimensions come from hashes of the
    // row number, so every combination occurs, as it would in real traffic.
    const loadStarted = performance.now();
    for (let lo = 1; lo <= EVENTS; lo += CHUNK) {
      const hi = Math.min(EVENTS, lo + CHUNK - 1);
      const [ms] = await time(() =>
        sql`
          insert into usage_events (org_id, id, type, timestamp, user_id, operation, model, meter,
            resource, quantity, billed_quantity, input_tokens, cached_input_tokens,
            cache_write_tokens, output_tokens, cost, price_version, transaction_id,
            payload_hash, received_at)
          select ${orgId}, 'evt-' || lpad(g::text, 10, '0'), s.type, s.ts,
                 case when s.type = 'ai_tokens' and s.ui > 0 then 'u-' || s.ui end,
                 case when s.type = 'ai_tokens' then (array['chat.completion', 'embedding',
                   'summarise', 'classify', 'agent.step', 'rerank'])[s.oi + 1] end,
                 case when s.type = 'ai_tokens' then m.model end,
                 case s.type when 'compute' then 'compute.vcpu_seconds'
                   when 'storage' then 'storage.gb' when 'bandwidth' then 'bandwidth.egress_gb'
                   when 'data_ops' then 'data_ops.reads' end,
                 case when s.type <> 'ai_tokens' then 'res-' || s.ri end,
                 case when s.type <> 'ai_tokens' then s.q end,
                 case when s.type = 'storage' then s.q end,
                 case when s.type = 'ai_tokens' then s.t_in end,
                 case when s.type = 'ai_tokens' then s.t_cached end,
                 case when s.type = 'ai_tokens' then s.t_write end,
                 case when s.type = 'ai_tokens' then s.t_out end,
                 (case s.type
                   when 'ai_tokens' then (s.t_in * m.r_in + s.t_cached * m.r_cached
                     + s.t_write * m.r_write + s.t_out * m.r_out) / 1000000.0
                   when 'compute' then s.q * 0.002 when 'storage' then s.q * 0.0001
                   when 'bandwidth' then s.q * 0.9 else s.q * 0.000004 end)::numeric(38,12),
                 1, 'txn_bench_' || g, 'bench', s.ts
            from (
              select g,
                     case when g % 5 = 0
                       then (array['compute', 'bandwidth', 'data_ops', 'storage'])[(g / 5) % 4 + 1]
                       else 'ai_tokens' end as type,
                     ${start.toISOString()}::timestamptz
                       + ((g - 1) * ${stepMs}::float8) * interval '1 millisecond' as ts,
                     abs(hashint8extended(g, 1)) % 8 as mi,
                     abs(hashint8extended(g, 2)) % (${USERS} + 1) as ui,
                     abs(hashint8extended(g, 3)) % 6 as oi,
                     abs(hashint8extended(g, 4)) % 50 as ri,
                     (abs(hashint8extended(g, 5)) % 100000) / 1000.0 as q,
                     abs(hashint8extended(g, 6)) % 4000 as t_in,
                     abs(hashint8extended(g, 7)) % 1000 as t_cached,
                     abs(hashint8extended(g, 8)) % 100 as t_write,
                     abs(hashint8extended(g, 9)) % 1500 as t_out
                from generate_series(${lo}::bigint, ${hi}::bigint) g
            ) s
            join ${MODELS} on m.i = s.mi`.execute(db),
      );
      log(
        `events ${hi.toLocaleString("en")} / ${EVENTS.toLocaleString("en")} (${(ms / 1000).toFixed(1)} s)`,
      );
    }
    const [rollupMs] = await time(async () => {
      await sql`
        insert into usage_rollups (org_id, period, type, model, operation, user_id, resource,
          meter, unit, quantity, input_tokens, cached_input_tokens, cache_write_tokens,
          output_tokens, cost, events)
        select org_id, date_trunc('month', timestamp at time zone 'UTC')::date, type,
               coalesce(model, ''), coalesce(operation, ''), coalesce(user_id, ''),
               coalesce(resource, ''), coalesce(meter, ''), ${UNIT},
               sum(case type when 'ai_tokens' then input_tokens + cached_input_tokens
                     + cache_write_tokens + output_tokens
                   when 'storage' then coalesce(billed_quantity, 0) else quantity end),
               coalesce(sum(input_tokens), 0), coalesce(sum(cached_input_tokens), 0),
               coalesce(sum(cache_write_tokens), 0), coalesce(sum(output_tokens), 0),
               sum(cost), count(*)
          from usage_events where org_id = ${orgId}
         group by 1, 2, 3, 4, 5, 6, 7, 8, 9`.execute(db);
      await sql`
        insert into usage_daily (org_id, day, type, cost, events)
        select org_id, (timestamp at time zone 'UTC')::date, type, sum(cost), count(*)
          from usage_events where org_id = ${orgId} group by 1, 2, 3`.execute(db);
      // Other tenants in the same table (rollups only: the chargeback view and a realistic
      // plan for the per-organisation query need them, the raw comparison does not).
      if (OTHER_ORGS > 0) {
        await sql`
          insert into organizations (id, name, plan, created_at, updated_at)
          select 'org_bench_other_' || lpad(i::text, 5, '0'), 'Other ' || i, 'professional',
                 now(), now()
            from generate_series(1, ${OTHER_ORGS}::int) i`.execute(db);
        await sql`
          insert into usage_rollups
          select o.id, r.period, r.type, r.model, r.operation, r.user_id, r.resource, r.meter,
                 r.unit, r.quantity, r.input_tokens, r.cached_input_tokens, r.cache_write_tokens,
                 r.output_tokens, r.cost, r.events
            from usage_rollups r
           cross join (select id from organizations where id like 'org_bench_other_%') o
           where r.org_id = ${orgId}`.execute(db);
      }
      await sql`analyze usage_events`.execute(db);
      await sql`analyze usage_rollups`.execute(db);
    });
    const loadSeconds = (performance.now() - loadStarted) / 1000;
    // Measure the steady state, not the aftermath of a 4 GB bulk load: autovacuum would start
    // on the new rows and the checkpointer would write them out while the summaries run.
    log("vacuum and checkpoint before measuring");
    await sql`vacuum (analyze) usage_events, usage_rollups, usage_daily`.execute(db);
    await sql`checkpoint`.execute(db);
    const counts = (
      await sql<{ events: string; rollups: string; all_rollups: string; size: string }>`
        select (select count(*) from usage_events)::text as events,
               (select count(*) from usage_rollups)::text as all_rollups,
               (select count(*) from usage_rollups where org_id = ${orgId}
                  and period = ${`${MONTH}-01`}::date)::text as rollups,
               pg_size_pretty(pg_total_relation_size('usage_events')) as size`.execute(db)
    ).rows[0]!;
    log(
      `loaded ${counts.events} events (${counts.size}), ${counts.rollups} rollup rows for ${MONTH}, in ${loadSeconds.toFixed(0)} s (rollups ${(rollupMs / 1000).toFixed(1)} s)`,
    );

    // ---- the same summary over the raw events ---------------------------------------------
    const rawQuery = sql<{ mask: number; cost: string; events: string }>`
      select period,
             grouping(type, unit, model, operation, user_id, resource) as mask,
             type, unit, model, operation, user_id, resource,
             sum(quantity)::text as quantity, sum(input_tokens)::text as input_tokens,
             sum(cached_input_tokens)::text as cached_input_tokens,
             sum(cache_write_tokens)::text as cache_write_tokens,
             sum(output_tokens)::text as output_tokens,
             sum(cost)::text as cost, count(*)::text as events
        from (
          select to_char(timestamp at time zone 'UTC', 'YYYY-MM') as period, type,
                 ${UNIT} as unit, coalesce(model, '') as model,
                 coalesce(operation, '') as operation, coalesce(user_id, '') as user_id,
                 coalesce(resource, '') as resource, cost, input_tokens, cached_input_tokens,
                 cache_write_tokens, output_tokens,
                 case type when 'ai_tokens' then input_tokens + cached_input_tokens
                   + cache_write_tokens + output_tokens
                   when 'storage' then coalesce(billed_quantity, 0) else quantity end as quantity
            from usage_events
           where org_id = ${orgId} and timestamp >= ${start.toISOString()}::timestamptz
             and timestamp < ${end.toISOString()}::timestamptz
        ) e
       group by grouping sets (
         (period), (period, type, unit), (period, model), (period, operation), (period, user_id),
         (period, resource, type, unit))`;

    const periods = [MONTH];
    const summary = async () => (await usageSummaries(ctx, { orgId, periods }))[0]!;
    const [y, mo] = MONTH.split("-").map(Number) as [number, number];
    const http = async () => {
      const res = await app.inject({
        method: "GET",
        url: `/v1/organizations/${orgId}/usage-summaries?year=${y}&month=${mo}`,
        headers: { authorization: `Bearer ${secret}` },
      });
      if (res.statusCode !== 200) throw new Error(`HTTP ${res.statusCode}: ${res.body}`);
      return res.json().data[0];
    };

    // Same numbers both ways, or the comparison means nothing.
    const fromRollups = await summary();
    const rawRows = (await rawQuery.execute(db)).rows;
    const rawTotal = rawRows.find((r) => Number(r.mask) === 0b111111)!;
    const rawLines = rawRows.length;
    if (
      fromRollups.events !== Number(rawTotal.events) ||
      fromRollups.total_cost !== formatExact(rawTotal.cost)
    ) {
      throw new Error(
        `rollup summary ${fromRollups.total_cost}/${fromRollups.events} ≠ raw ${rawTotal.cost}/${rawTotal.events}`,
      );
    }
    log(`checked: ${fromRollups.events} events, ${fromRollups.total_cost} credits both ways`);

    const queries = summaryLinesQueries(orgId, `${MONTH}-01`, `${MONTH}-01`);
    const plan: string[] = [];
    for (const query of [queries.quantities, queries.costs]) {
      const { rows } = await sql<{
        "QUERY PLAN": string;
      }>`explain (analyze, buffers, costs off) ${query}`.execute(db);
      plan.push(...rows.map((r) => r["QUERY PLAN"]), "");
    }

    const measure = async (name: string, n: number, fn: () => Promise<unknown>, warmUp = 5) => {
      for (let i = 0; i < warmUp; i++) await fn();
      const samples: number[] = [];
      for (let i = 0; i < n; i++) samples.push((await time(fn))[0]);
      const s = stats(samples);
      log(`${name}: p50 ${s.p50_ms} ms, p95 ${s.p95_ms} ms (n=${n})`);
      return s;
    };
    const loadBefore = loadavg()[0]!;
    const service = await measure("service (rollups)", ITERATIONS, summary);
    const httpStats = await measure("HTTP inject (rollups)", ITERATIONS, http);
    const chargeback = await measure(
      `chargeback, ${OTHER_ORGS + 1} organisations`,
      Math.min(ITERATIONS, 20),
      () => chargebackRows(ctx, { periods, sort: "cost" }),
      1,
    );
    const raw = await measure("GROUP BY raw events", RAW_ITERATIONS, () => rawQuery.execute(db), 1);

    const result = {
      benchmark: "monthly usage summary (issue 7)",
      date: started.toISOString(),
      machine: {
        cpus: cpus().length,
        cpu_model: cpus()[0]?.model ?? null,
        memory_gb: Math.round(totalmem() / 2 ** 30),
        node: process.version,
        postgres: pgVersion,
        // Other work on the machine inflates the tail: recorded so that runs can be compared.
        load_average_1m: { before_measuring: loadBefore, after_measuring: loadavg()[0]! },
      },
      parameters: {
        events: EVENTS,
        month: MONTH,
        users: USERS,
        models: 8,
        operations: 6,
        resources: 50,
        other_orgs: OTHER_ORGS,
        iterations: ITERATIONS,
        raw_iterations: RAW_ITERATIONS,
      },
      data: {
        usage_events: Number(counts.events),
        usage_events_size: counts.size,
        rollup_rows_in_month: Number(counts.rollups),
        rollup_rows_all_orgs: Number(counts.all_rollups),
        summary_lines: rawLines,
        load_seconds: Math.round(loadSeconds),
        total_cost: fromRollups.total_cost,
      },
      results: {
        service_rollups: service,
        http_inject_rollups: httpStats,
        group_by_raw_events: raw,
        chargeback_all_orgs: chargeback,
        speedup_p50: Math.round(raw.p50_ms / service.p50_ms),
        target_p95_ms: 20,
        meets_target: service.p95_ms <= 20 && httpStats.p95_ms <= 20,
      },
      rollup_query_plan: plan,
    };

    const json = `${JSON.stringify(result, null, 2)}\n`;
    if (args["json-out"]) writeFileSync(args["json-out"], json);
    if (!args.quick) {
      const prefix = EVENTS === 10_000_000 ? "summary-" : `summary-${EVENTS}-`;
      const base = resultBase(started.toISOString(), prefix);
      writeFileSync(`${base}.json`, json);
      writeFileSync(`${base}.md`, markdown(result));
      log(`wrote ${base}.json and .md`);
    }
    await runtime.app.close();
  } finally {
    await database.close();
    if (!args.keep) await admin(`drop database if exists ${DB_NAME} with (force)`);
    else log(`kept database ${DB_NAME}`);
  }
}

/** NUMERIC text → the API's shortest exact form (no float on the way). */
function formatExact(text: string): string {
  if (!text.includes(".")) return text;
  return text.replace(/0+$/, "").replace(/\.$/, "");
}

// biome-ignore lint/suspicious/noExplicitAny: the result object above, printed.
function markdown(r: any): string {
  const row = (name: string, s: ReturnType<typeof stats>) =>
    `| ${name} | ${s.p50_ms} | ${s.p95_ms} | ${s.min_ms} | ${s.max_ms} | ${s.n} |`;
  return `# Monthly usage summary benchmark (${r.date.slice(0, 10)})

One organisation with **${r.data.usage_events.toLocaleString("en")} usage events** in ${r.parameters.month}
(${r.data.usage_events_size}; ${r.parameters.users} users, ${r.parameters.models} models, ${r.parameters.operations} operations,
${r.parameters.resources} resources), PostgreSQL ${r.machine.postgres}, ${r.machine.cpus} CPUs (${r.machine.cpu_model}),
Node ${r.machine.node}; 1-minute load average ${r.machine.load_average_1m.before_measuring.toFixed(1)} → ${r.machine.load_average_1m.after_measuring.toFixed(1)} while measuring. The month has ${r.data.rollup_rows_in_month.toLocaleString("en")} rollup rows; the summary has
${r.data.summary_lines.toLocaleString("en")} lines (total + by type, model, operation, user, resource).
${r.parameters.other_orgs} other organisations share the rollup table (${r.data.rollup_rows_all_orgs.toLocaleString("en")} rows).
Data load: ${r.data.load_seconds} s. Both ways give the same result (total ${r.data.total_cost} credits).

| monthly summary | p50 ms | p95 ms | min ms | max ms | n |
|---|---|---|---|---|---|
${row("service function, from rollups", r.results.service_rollups)}
${row("HTTP GET (inject), from rollups", r.results.http_inject_rollups)}
${row("GROUP BY over raw usage_events", r.results.group_by_raw_events)}

Rollups are **${r.results.speedup_p50}× faster** at p50; target p95 ≤ ${r.results.target_p95_ms} ms: **${r.results.meets_target ? "met" : "NOT met"}**.

Chargeback (\`GET /v1/usage-summaries\`, service function) over the month of all
${r.parameters.other_orgs + 1} organisations: p50 ${r.results.chargeback_all_orgs.p50_ms} ms, p95 ${r.results.chargeback_all_orgs.p95_ms} ms.

Rollup query plans (the two queries run side by side; primary key range scans):

\`\`\`
${r.rollup_query_plan.join("\n").trim()}
\`\`\`

Reproduce: \`npx tsx bench/summary.ts --events ${r.parameters.events}\` (DATABASE_URL names the server).
`;
}

await main();
