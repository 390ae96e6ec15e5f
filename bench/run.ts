/**
 * `npm run bench` — Tally and its baselines, side by side, in one run on this machine.
 *
 *   npm run bench                 full run: writes bench/results/<date>.{json,md}, latest.svg and
 *                                 the table between the bench markers in README.md
 *   npm run bench -- --quick      CI: a few seconds per scenario, one repetition; asserts the
 *                                 invariants only and writes nothing
 *   npm run bench -- --profile    CPU profiles of the Tally server (hot org, batch) and a summary
 *                                 in bench/results/profile-<date>.md
 *   --duration S --reps N --warmup S   override the timings
 *
 * Needs PostgreSQL (DATABASE_URL, else postgres://postgres@127.0.0.1:5432/postgres) with the
 * right to create databases, and pgbench. Every database and temporary directory the bench
 * creates is dropped at the end. Any broken invariant exits non-zero.
 */
import { execFile, execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { cpus, loadavg, tmpdir, totalmem } from "node:os";
import { join } from "node:path";
import { PGlite } from "@electric-sql/pglite";
import { sql } from "kysely";
import pg from "pg";
import { openDatabase } from "../src/db/index.js";
import { verifyLedger } from "../src/modules/ledger/ledger.service.js";
import {
  type Body,
  type LoadResult,
  retryUntilAcknowledged,
  runLoad,
  runProbe,
} from "./lib/load.js";
import {
  adminUrl,
  checkpoint,
  createDatabase,
  dropDatabase,
  pgbenchInit,
  pgbenchPath,
  pgbenchRun,
  postgresCpu,
  postgresCpuDelta,
  serverInfo,
} from "./lib/pg.js";
import { runProfile } from "./lib/profile.js";
import { writeReports } from "./lib/report.js";
import { ADMIN_KEY, killAll, ROOT, type Server, startBaseline, startTally } from "./lib/servers.js";
import { batchEvents, createOrgs, flushMetrics, singleEvents, TallyApi } from "./lib/tally.js";
import type { Invariant, Machine, Results, RunDetail, Scenario, Target } from "./lib/types.js";
import {
  InvariantError,
  log,
  prng,
  processCpuSeconds,
  round,
  summarise,
  zipfSampler,
} from "./lib/util.js";

// ---- options ------------------------------------------------------------------------------

const argv = process.argv.slice(2);
const flag = (name: string) => argv.includes(`--${name}`);
const option = (name: string): number | null => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 && argv[i + 1] !== undefined ? Number(argv[i + 1]) : null;
};
const quick = flag("quick");
const profile = flag("profile");

const settings = {
  durationSec: option("duration") ?? (quick ? 2 : 10),
  warmupSec: option("warmup") ?? (quick ? 0 : 3),
  reps: option("reps") ?? (quick ? 1 : 3),
  hotConnections: 64,
  zipfOrgs: quick ? 20 : 1000,
  zipfExponent: 1.0,
  batchSize: 1000,
  batchConnections: 8,
  batchOrgs: quick ? 2 : 8,
  balanceProbeRate: 50,
  summaryEvents: quick ? 20_000 : 10_000_000,
  pgbenchClients: 8,
  pgbenchScales: quick ? "1" : "1,10",
  /** V8/Node flags for the Tally servers (BENCH_NODE_FLAGS), e.g. heap tuning; none by default. */
  tallyNodeFlags: process.env.BENCH_NODE_FLAGS?.trim() ?? "",
};
const tallyFlags = settings.tallyNodeFlags.split(" ").filter(Boolean);

const startedAt = Date.now();
const tag = `b${Date.now().toString(36)}`;
const dbNames = {
  tally: `bench_tally_${process.pid}`,
  naive: `bench_naive_${process.pid}`,
  groupCommit: `bench_group_commit_${process.pid}`,
  pgbench: `bench_pgbench_${process.pid}`,
};
const tempDirs: string[] = [];
const createdDbs: string[] = [];
const createDb = (name: string) => {
  createdDbs.push(name);
  return createDatabase(name);
};
const invariants: Invariant[] = [];
const scenarios: Record<string, Scenario> = {};

function invariant(name: string, ok: boolean, detail: string): void {
  invariants.push({ name, ok, detail });
  log(`${ok ? "ok  " : "FAIL"} ${name}: ${detail}`);
}

function record(key: string, label: string, unit: string, runs: RunDetail[], notes?: string) {
  scenarios[key] = {
    key,
    label,
    unit,
    summary: summarise(runs.map((r) => r.value)),
    runs,
    ...(notes ? { notes } : {}),
  };
  const s = scenarios[key]!.summary;
  log(
    `${label}: median ${round(s.median)} ${unit} (min ${round(s.min)}, max ${round(s.max)}, spread ${round(s.spreadPct)} %)`,
  );
}

// ---- invariant checks -----------------------------------------------------------------------

type Query = (text: string, params?: unknown[]) => Promise<Record<string, unknown>[]>;

/** Ingested batches whose counts are checked against the database. */
interface Expected {
  tag: string;
  acked: number;
}

/** Events stored and usage entries written for a tag equal the events acknowledged. */
async function checkCounts(query: Query, label: string, expected: Expected): Promise<void> {
  const like = `${expected.tag}-%`;
  const [events] = await query("select count(*)::int as n from usage_events where id like $1", [
    like,
  ]);
  const [entries] = await query(
    `select count(*)::int as n from ledger_entries
      where type = 'usage' and reference_type = 'usage_event' and reference_id like $1`,
    [like],
  );
  const stored = Number(events!.n);
  const posted = Number(entries!.n);
  invariant(
    `${label}: events stored = events acknowledged (200)`,
    stored === expected.acked,
    `${stored} stored, ${expected.acked} acknowledged`,
  );
  invariant(
    `${label}: one usage ledger entry per event`,
    posted === stored,
    `${posted} usage entries for ${stored} events`,
  );
}

/**
 * The minimal group-commit baseline did the work it is measured for: every acknowledged event
 * stored with one usage entry, and its chain verifies by Tally's own rules. (Requests still in
 * flight when a run stops — one per connection at most — may be stored without being counted.)
 */
async function checkGroupCommit(url: string, acked: number, runs: number): Promise<void> {
  const database = await openDatabase({ url });
  try {
    const [row] = (
      await sql<{ events: number; entries: number }>`select
        (select count(*)::int from usage_events where org_id = 'org_hot') as events,
        (select count(*)::int from ledger_entries where org_id = 'org_hot' and type = 'usage') as entries`.execute(
        database.db,
      )
    ).rows;
    const inFlight = runs * settings.hotConnections;
    invariant(
      "Minimal group commit: every acknowledged event stored, with one usage entry each",
      row!.events === row!.entries && row!.events >= acked && row!.events <= acked + inFlight,
      `${row!.events} stored, ${row!.entries} usage entries, ${acked} acknowledged (+ at most ${inFlight} in flight at the ends of the runs)`,
    );
    const report = await verifyLedger(database.db, "org_hot");
    invariant(
      "Minimal group commit: its ledger chain verifies",
      report.ok && report.entries === row!.entries + 1,
      `${report.entries} entries (the grant and one per event)${report.ok ? "" : `: ${report.problems.join("; ")}`}`,
    );
  } finally {
    await database.close();
  }
}

/** Monthly rollups count every event of the organisations exactly once. */
async function checkRollups(query: Query, label: string, orgIds: readonly string[]) {
  const [row] = await query(
    `select (select count(*) from usage_events where org_id = any($1))::bigint::text as events,
            (select coalesce(sum(events), 0) from usage_rollups where org_id = any($1))::bigint::text as rolled,
            (select count(*) from ledger_entries where org_id = any($1) and type = 'usage')::bigint::text as entries`,
    [orgIds],
  );
  invariant(
    `${label}: rollups and ledger count every event once`,
    row!.events === row!.rolled && row!.events === row!.entries,
    `${row!.events} events, ${row!.rolled} in rollups, ${row!.entries} usage entries`,
  );
}

/** The chain verifies and balance = Σ entries, for every organisation given (through the API). */
async function verifyOrgs(api: TallyApi, label: string, orgIds: readonly string[]) {
  const bad: string[] = [];
  let entries = 0;
  let next = 0;
  const worker = async () => {
    for (;;) {
      const id = orgIds[next++];
      if (!id) return;
      const v = await api.verify(id);
      entries += v.entries;
      if (!v.ok) bad.push(`${id} (first bad sequence ${v.first_bad_sequence})`);
    }
  };
  await Promise.all(Array.from({ length: 4 }, worker));
  invariant(
    `${label}: GET …/ledger/verify ok`,
    bad.length === 0,
    bad.length === 0
      ? `${orgIds.length} organisations, ${entries} entries`
      : `failed for ${bad.join(", ")}`,
  );
}

function noServerErrors(label: string, r: LoadResult, retryFailures: string[]) {
  const fiveXX = Object.entries(r.statuses)
    .filter(([s]) => s.startsWith("5"))
    .reduce((a, [, n]) => a + n, 0);
  const other = Object.entries(r.statuses).filter(([s]) => s !== "200");
  invariant(
    `${label}: every request answered 200 (no 5xx, no lost events)`,
    fiveXX === 0 && retryFailures.length === 0 && other.length === 0,
    `statuses ${JSON.stringify(r.statuses)}, ${r.errors} socket errors, ${r.timeouts} timeouts, ${r.unacknowledged.length} re-sent${retryFailures.length ? `; retries failed: ${retryFailures.slice(0, 3).join("; ")}` : ""}`,
  );
}

// ---- Tally ingest runs ------------------------------------------------------------------------

interface IngestRun {
  server: Server;
  /** The PostgreSQL database behind the server (its CPU is measured); none for PGlite. */
  database?: string;
  label: string;
  tag: string;
  headers: Record<string, string>;
  connections: number;
  durationSec: number;
  makeBody: (n: number) => Body;
}

/**
 * One measured ingest run: load, then every cut-off request re-sent with the same ids until
 * acknowledged. Returns the run's details and what the database must now hold.
 */
async function ingestRun(run: IngestRun): Promise<{ detail: RunDetail; expected: Expected }> {
  await checkpoint(log);
  const m0 = await flushMetrics(run.server.url);
  const pg0 = run.database ? await postgresCpu(run.database) : null;
  const cpu0 = {
    server: run.server.cpuSeconds(),
    self: process.cpuUsage(),
    at: process.hrtime.bigint(),
  };
  const r = await runLoad({
    url: run.server.url,
    path: "/v1/usage-events",
    method: "POST",
    headers: run.headers,
    connections: run.connections,
    durationSec: run.durationSec,
    makeBody: run.makeBody,
  });
  const wall = Number(process.hrtime.bigint() - cpu0.at) / 1e9;
  const serverCpu = run.server.cpuSeconds() - cpu0.server;
  const pgCpu = pg0 && run.database ? postgresCpuDelta(pg0, await postgresCpu(run.database)) : 0;
  const self = process.cpuUsage(cpu0.self);
  const m1 = await flushMetrics(run.server.url);
  const retry = await retryUntilAcknowledged(
    `${run.server.url}/v1/usage-events`,
    run.headers,
    r.unacknowledged,
  );
  noServerErrors(run.label, r, retry.failures);
  const flushes = m1.count - m0.count;
  return {
    detail: {
      value: r.eventsPerSec,
      requests: r.requests,
      statuses: r.statuses,
      errors: r.errors,
      timeouts: r.timeouts,
      latencyMs: r.latencyMs,
      retried: r.unacknowledged.length,
      cpu: {
        serverPct: round((serverCpu / wall) * 100),
        postgresPct: pg0 ? round((pgCpu / wall) * 100) : null,
        loadGeneratorPct: round(((self.user + self.system) / 1e6 / wall) * 100),
      },
      cpuPerEventUs: {
        server: round((serverCpu / Math.max(1, r.eventsAcked)) * 1e6),
        postgres: pg0 ? round((pgCpu / Math.max(1, r.eventsAcked)) * 1e6) : null,
      },
      extra: { serverPeakRssMb: round(run.server.peakRssMb() ?? 0) },
      flush: {
        count: flushes,
        avgEvents: round((m1.events - m0.events) / Math.max(1, flushes)),
        avgMs: round(((m1.seconds - m0.seconds) / Math.max(1, flushes)) * 1000, 2),
      },
    },
    expected: { tag: run.tag, acked: r.eventsAcked + retry.events },
  };
}

async function httpRun(server: Server, label: string, makeBody: (n: number) => Body, sec: number) {
  await checkpoint(log);
  const r = await runLoad({
    url: server.url,
    path: "/v1/usage-events",
    method: "POST",
    headers: { "content-type": "application/json" },
    connections: settings.hotConnections,
    durationSec: sec,
    makeBody,
  });
  // A baseline that answers errors measures nothing: the run fails (a schema change it did not
  // follow once made the group commit answer 500 to every request).
  const bad = Object.keys(r.statuses).filter((s) => s !== "200");
  if (bad.length > 0) {
    invariant(`${label}: every request answered 200`, false, JSON.stringify(r.statuses));
  }
  return {
    value: r.rps,
    requests: r.requests,
    statuses: r.statuses,
    errors: r.errors,
    timeouts: r.timeouts,
    latencyMs: r.latencyMs,
  } satisfies RunDetail;
}

// ---- the run --------------------------------------------------------------------------------

async function machine(): Promise<Machine> {
  const info = await serverInfo();
  const cpu = cpus();
  return {
    cpus: cpu.length,
    cpuModel: cpu[0]?.model.trim() ?? "unknown",
    memoryGb: round(totalmem() / 1024 ** 3, 1),
    os: `${process.platform} ${process.arch}`,
    node: process.version,
    postgres: info.version,
    postgresSettings: info.settings,
    loadAverageStart: loadavg().map((v) => round(v, 2)),
    loadAverageEnd: [],
    note: "",
  };
}

function gitCommit(): string | null {
  try {
    return execFileSync("git", ["rev-parse", "--short", "HEAD"], { cwd: ROOT }).toString().trim();
  } catch {
    return null;
  }
}

async function main(): Promise<number> {
  const pgbench = pgbenchPath();
  if (!pgbench && !quick) throw new Error("pgbench not found (apt-get install postgresql-client)");
  const host = await machine();
  log(
    `${quick ? "quick" : "full"} run on ${host.cpus} × ${host.cpuModel}, PostgreSQL ${host.postgres}, Node ${host.node}, load ${host.loadAverageStart.join(" ")}`,
  );

  const dur = settings.durationSec;
  const warm = settings.warmupSec;
  const reps = settings.reps;

  // Databases and servers.
  const tallyUrl = await createDb(dbNames.tally);
  const naiveUrl = await createDb(dbNames.naive);
  const groupCommitUrl = await createDb(dbNames.groupCommit);
  const pgbenchUrl = pgbench ? await createDb(dbNames.pgbench) : null;
  log(
    "starting Tally (PostgreSQL), the bare Fastify route, the naive implementation and the minimal group commit",
  );
  const [tally, bare, naive, groupCommit] = await Promise.all([
    startTally("tally", { databaseUrl: tallyUrl }, tallyFlags),
    startBaseline("bare-fastify", "bench/baselines/bare-fastify.ts"),
    startBaseline("naive-ingest", "bench/baselines/naive-ingest.ts", { DATABASE_URL: naiveUrl }),
    startBaseline("group-commit", "bench/baselines/group-commit.ts", {
      DATABASE_URL: groupCommitUrl,
    }),
  ]);
  // Quick mode measures nothing, so PGlite's slow first start may overlap the other scenarios.
  const pgliteStart = quick ? startPglite() : null;
  pgliteStart?.catch(() => {});
  const tallyDb = new pg.Pool({ connectionString: tallyUrl, max: 2 });
  const query: Query = async (text, params) => (await tallyDb.query(text, params)).rows;
  const api = new TallyApi(tally.url);

  try {
    // Organisations: one hot org (its own ingest key), the Zipf population, the batch orgs.
    log(`creating organisations (1 hot, ${settings.zipfOrgs} Zipf, ${settings.batchOrgs} batch)`);
    const hot = await api.createFundedOrg(`${tag}-hot`);
    const hotKey = await api.createKey(hot, "ingest");
    const readKey = await api.createKey(hot, "read");
    const zipfOrgs = await createOrgs(api, `${tag}-z`, settings.zipfOrgs);
    const batchOrgs = await createOrgs(api, `${tag}-batch`, settings.batchOrgs);
    const hotHeaders = { "content-type": "application/json", authorization: `Bearer ${hotKey}` };
    const platformHeaders = {
      "content-type": "application/json",
      authorization: `Bearer ${ADMIN_KEY}`,
    };

    // pgbench: one database per scale.
    const scales = settings.pgbenchScales.split(",").map(Number);
    const pgbenchDbs = new Map<number, string>();
    if (pgbench && pgbenchUrl) {
      for (const [i, scale] of scales.entries()) {
        const url = i === 0 ? pgbenchUrl : await createDb(`${dbNames.pgbench}_s${scale}`);
        log(`pgbench: initialising scale ${scale}`);
        await pgbenchInit(pgbench, url, scale);
        pgbenchDbs.set(scale, url);
      }
    }

    // ---- rounds: pgbench, bare Fastify, naive, Tally hot org — interleaved, so that the
    // ratios compare numbers taken under the same background load.
    const pgbenchRuns = new Map<number, RunDetail[]>(scales.map((s) => [s, []]));
    const bareRuns: RunDetail[] = [];
    const naiveRuns: RunDetail[] = [];
    const groupCommitRuns: RunDetail[] = [];
    let groupCommitAcked = 0;
    const hotRuns: RunDetail[] = [];
    let pgbenchCommand = "";
    const hotExpected: Expected[] = [];
    let hotN = 0;
    const hotRun = (label: string, sec: number) =>
      ingestRun({
        server: tally,
        database: dbNames.tally,
        label,
        tag: `${tag}-h${hotN++}`,
        headers: hotHeaders,
        connections: settings.hotConnections,
        durationSec: sec,
        makeBody: singleEvents(`${tag}-h${hotN - 1}`),
      });

    for (let round_ = 1; round_ <= reps; round_++) {
      log(`round ${round_}/${reps}`);
      if (pgbench) {
        for (const [scale, url] of pgbenchDbs) {
          await checkpoint(log);
          const r = await pgbenchRun(pgbench, url, settings.pgbenchClients, dur);
          pgbenchCommand = r.command;
          pgbenchRuns.get(scale)!.push({ value: r.tps });
          log(`  pgbench scale ${scale}: ${round(r.tps)} tps`);
        }
      }
      if (round_ === 1 && warm > 0)
        await httpRun(bare, "bare warm-up", singleEvents(`${tag}-bw`), warm);
      bareRuns.push(await httpRun(bare, "bare", singleEvents(`${tag}-b${round_}`), dur));
      log(`  bare Fastify: ${round(bareRuns.at(-1)!.value)} rps`);
      if (round_ === 1 && warm > 0)
        await httpRun(naive, "naive warm-up", singleEvents(`${tag}-nw`), warm);
      naiveRuns.push(await httpRun(naive, "naive", singleEvents(`${tag}-n${round_}`), dur));
      log(`  naive: ${round(naiveRuns.at(-1)!.value)} rps`);
      if (round_ === 1 && warm > 0) {
        const w = await httpRun(
          groupCommit,
          "group commit warm-up",
          singleEvents(`${tag}-gw`),
          warm,
        );
        groupCommitAcked += w.statuses["200"] ?? 0;
      }
      const g = await httpRun(groupCommit, "group commit", singleEvents(`${tag}-g${round_}`), dur);
      groupCommitAcked += g.statuses["200"] ?? 0;
      groupCommitRuns.push(g);
      log(`  minimal group commit: ${round(groupCommitRuns.at(-1)!.value)} events/s`);
      if (round_ === 1 && warm > 0) {
        const w = await hotRun("Tally hot org warm-up", warm);
        hotExpected.push(w.expected);
        await checkCounts(query, "Tally hot org warm-up", w.expected);
      }
      const h = await hotRun(`Tally hot org round ${round_}`, dur);
      hotRuns.push(h.detail);
      hotExpected.push(h.expected);
      await checkCounts(query, `Tally hot org round ${round_}`, h.expected);
      log(`  Tally hot org: ${round(h.detail.value)} events/s`);
    }
    for (const [scale, runs] of pgbenchRuns) {
      if (runs.length > 0)
        record(
          `pgbench_s${scale}`,
          `pgbench TPC-B-like, scale ${scale}, ${settings.pgbenchClients} clients`,
          "tps",
          runs,
          pgbenchCommand,
        );
    }
    record("bare_fastify", "Bare Fastify route, 64 connections", "req/s", bareRuns);
    record(
      "naive",
      "Naive one-transaction-per-event ingest, 64 connections",
      "events/s",
      naiveRuns,
    );
    record(
      "group_commit",
      "Minimal group commit (Tally's rows, no API features), one hot org, 64 connections",
      "events/s",
      groupCommitRuns,
      "bench/baselines/group-commit.ts: the rows Tally writes per event and per flush, into Tally's schema, one statement per flush, one flush in flight — without authentication, validation, the price catalogue, duplicate handling, guards, observers, metrics or several instances. What a group commit of this design can reach on this machine.",
    );
    await checkGroupCommit(
      groupCommitUrl,
      groupCommitAcked,
      groupCommitRuns.length + (warm > 0 ? 1 : 0),
    );
    record(
      "tally_hot",
      "Tally single-event ingest, one hot org, 64 connections",
      "events/s",
      hotRuns,
    );
    await checkRollups(query, "Tally hot org", [hot]);
    await verifyOrgs(api, "Tally hot org", [hot]);

    // ---- Zipf over many organisations (platform key, org_id in each event).
    {
      const pick = zipfSampler(zipfOrgs.length, settings.zipfExponent, prng(42));
      const runs: RunDetail[] = [];
      for (let i = warm > 0 ? 0 : 1; i <= reps; i++) {
        const t = `${tag}-z${i}`;
        const r = await ingestRun({
          server: tally,
          database: dbNames.tally,
          label: i === 0 ? "Tally Zipf warm-up" : `Tally Zipf round ${i}`,
          tag: t,
          headers: platformHeaders,
          connections: settings.hotConnections,
          durationSec: i === 0 ? warm : dur,
          makeBody: singleEvents(t, () => zipfOrgs[pick()]!),
        });
        await checkCounts(
          query,
          i === 0 ? "Tally Zipf warm-up" : `Tally Zipf round ${i}`,
          r.expected,
        );
        if (i > 0) runs.push(r.detail);
      }
      record(
        "tally_zipf",
        `Tally single-event ingest, ${zipfOrgs.length} orgs (Zipf s=${settings.zipfExponent}), 64 connections`,
        "events/s",
        runs,
      );
      const touched = (
        await query(
          "select distinct org_id from usage_events where org_id = any($1) and id like $2",
          [zipfOrgs, `${tag}-z%`],
        )
      ).map((r) => String(r.org_id));
      await checkRollups(query, "Tally Zipf", zipfOrgs);
      await verifyOrgs(api, "Tally Zipf", touched);
    }

    // ---- batch ingest: 1000-event requests, one organisation per request.
    {
      const runs: RunDetail[] = [];
      for (let i = warm > 0 ? 0 : 1; i <= reps; i++) {
        const t = `${tag}-c${i}`;
        const label = i === 0 ? "Tally batch warm-up" : `Tally batch round ${i}`;
        const r = await ingestRun({
          server: tally,
          database: dbNames.tally,
          label,
          tag: t,
          headers: platformHeaders,
          connections: settings.batchConnections,
          durationSec: i === 0 ? warm : dur,
          makeBody: batchEvents(t, settings.batchSize, (n) => batchOrgs[n % batchOrgs.length]!),
        });
        await checkCounts(query, label, r.expected);
        if (i > 0) runs.push(r.detail);
      }
      record(
        "tally_batch",
        `Tally batch ingest, ${settings.batchSize}-event requests, ${settings.batchConnections} connections`,
        "events/s",
        runs,
      );
      await checkRollups(query, "Tally batch", batchOrgs);
      await verifyOrgs(api, "Tally batch", batchOrgs);
    }

    // ---- balance reads while the hot org ingests at full speed.
    {
      const p50: RunDetail[] = [];
      const p99: RunDetail[] = [];
      const healthP99: RunDetail[] = [];
      const ingestDuring: RunDetail[] = [];
      for (let i = 1; i <= reps; i++) {
        await checkpoint(log); // before the probes start (hotRun's own then has nothing to write)
        const probe = runProbe(
          `${tally.url}/v1/organizations/${hot}/balance`,
          readKey,
          settings.balanceProbeRate,
          dur,
        );
        // The same probe on a route with no authentication and no database: what any request
        // waits for on this machine under that load (the event loop, a free core).
        const control = runProbe(`${tally.url}/healthz`, readKey, settings.balanceProbeRate, dur);
        const label = `Tally balance-under-load round ${i}`;
        const [ingest, latency, health] = await Promise.all([hotRun(label, dur), probe, control]);
        await checkCounts(query, label, ingest.expected);
        hotExpected.push(ingest.expected);
        ingestDuring.push(ingest.detail);
        const extra = { probes: latency.count, max: latency.max, p90: latency.p90 };
        p50.push({ value: latency.p50, extra });
        p99.push({ value: latency.p99, extra });
        healthP99.push({
          value: health.p99,
          extra: { probes: health.count, p50: health.p50, p90: health.p90, max: health.max },
        });
        for (const [what, r] of [
          ["balance", latency],
          ["/healthz", health],
        ] as const) {
          invariant(
            `${label}: ${what} probes answered 200`,
            Object.keys(r.statuses).every((s) => s === "200") && r.count > 0,
            `statuses ${JSON.stringify(r.statuses)}`,
          );
        }
      }
      record("balance_p50", "Balance GET p50 while hot-org ingest runs", "ms", p50);
      record("balance_p99", "Balance GET p99 while hot-org ingest runs", "ms", p99);
      record(
        "healthz_p99",
        "GET /healthz p99 at the same time (no authentication, no database)",
        "ms",
        healthP99,
        "A second probe at the same rate, on a route that only answers: the wait any request has on this machine while the hot organisation ingests, before any work of its own.",
      );
      record(
        "tally_hot_during_probe",
        "Hot-org ingest during the balance probe",
        "events/s",
        ingestDuring,
      );
      await checkRollups(query, "Tally hot org (after balance runs)", [hot]);
      await verifyOrgs(api, "Tally hot org (after balance runs)", [hot]);
    }

    // ---- the database's floor: the rows one event needs, written by PostgreSQL alone.
    {
      const floorOrg = await api.createFundedOrg(`${tag}-floor`);
      const n = quick ? 5_000 : 100_000;
      const runs: RunDetail[] = [];
      for (let i = 1; i <= reps; i++) runs.push(await postgresFloor(tallyDb, floorOrg, n, i));
      record(
        "pg_floor",
        `PostgreSQL alone: INSERT…SELECT of the usage_events + ledger_entries rows of ${n.toLocaleString("en-US")} events, one connection`,
        "events/s",
        runs,
        "No client, no HTTP, no Node: the rows Tally writes per event (with the same indexes, constraints and foreign keys), generated inside PostgreSQL in one transaction per run. The fastest any ingest path could write on this machine per database connection.",
      );
    }

    const rssPg = tally.peakRssMb();
    await tally.stop();
    record("rss_pg", "Tally server peak RSS (VmHWM), PostgreSQL", "MB", [
      { value: round(rssPg ?? Number.NaN), extra: { readyRssMb: round(tally.readyRssMb ?? 0) } },
    ]);

    // ---- PGlite batch ingest (quick mode started its server at the beginning).
    await pgliteBatch(await (pgliteStart ?? startPglite()), dur, warm, reps);
  } finally {
    await Promise.allSettled([tally.stop(), bare.stop(), naive.stop(), groupCommit.stop()]);
    await tallyDb.end();
  }

  // ---- monthly summary of an organisation with 10M events (bench/summary.ts, its own
  // database), last: loading the events would disturb anything running beside it.
  await monthlySummary();

  // ---- targets.
  const med = (k: string) => scenarios[k]?.summary.median ?? Number.NaN;
  const targets: Target[] = [];
  const target = (t: Omit<Target, "pass">) =>
    targets.push({
      ...t,
      pass: t.comparator === ">=" ? t.value >= t.target : t.value <= t.target,
    });
  if (scenarios.pgbench_s1)
    target({
      key: "hot_vs_pgbench",
      label: "Hot-org single-event ÷ pgbench scale-1 tps",
      value: med("tally_hot") / med("pgbench_s1"),
      target: 5,
      comparator: ">=",
      unit: "×",
      basis: "median events/s ÷ median tps",
    });
  target({
    key: "hot_vs_bare",
    label: "Hot-org single-event ÷ bare Fastify req/s",
    value: (med("tally_hot") / med("bare_fastify")) * 100,
    target: 30,
    comparator: ">=",
    unit: "%",
    basis: "median events/s ÷ median req/s",
  });
  target({
    key: "hot_vs_naive",
    label: "Hot-org single-event ÷ naive per-event transactions",
    value: med("tally_hot") / med("naive"),
    target: 10,
    comparator: ">=",
    unit: "×",
    basis: "median ÷ median",
  });
  target({
    key: "batch",
    label: "Batch ingest (1000-event requests)",
    value: med("tally_batch"),
    target: 100_000,
    comparator: ">=",
    unit: "events/s",
    basis: "median",
  });
  target({
    key: "balance_p99",
    label: "Balance GET p99 under full ingest load",
    value: med("balance_p99"),
    target: 5,
    comparator: "<=",
    unit: "ms",
    basis: "median over rounds of each round's p99",
  });
  target({
    key: "pglite_batch",
    label: "PGlite batch ingest",
    value: med("pglite_batch"),
    target: 40_000,
    comparator: ">=",
    unit: "events/s",
    basis: "median",
  });
  target({
    key: "summary_p95",
    label: `Monthly summary p95 at ${settings.summaryEvents.toLocaleString("en-US")} events`,
    value: med("summary_p95"),
    target: 20,
    comparator: "<=",
    unit: "ms",
    basis: "p95 through the service and through HTTP, the slower of the two",
  });
  target({
    key: "rss",
    label: "Server peak RSS (PostgreSQL mode)",
    value: med("rss_pg"),
    target: 300,
    comparator: "<=",
    unit: "MB",
    basis: "VmHWM at the end of the PostgreSQL scenarios",
  });

  host.loadAverageEnd = loadavg().map((v) => round(v, 2));
  host.note =
    "Shared machine: other processes (agents, test suites) may run during the benchmark; the load averages at start and end show how busy it was. Tally, PostgreSQL and the load generator share the same cores.";
  const ok = invariants.every((i) => i.ok);
  const results: Results = {
    date: new Date().toISOString(),
    mode: quick ? "quick" : "full",
    gitCommit: gitCommit(),
    machine: host,
    settings,
    scenarios,
    targets,
    invariants,
    totalSeconds: round((Date.now() - startedAt) / 1000),
    ok,
  };

  log(quick ? "targets (quick mode: reported, not asserted):" : "targets:");
  for (const t of targets) {
    log(
      `  ${t.pass ? "met " : "MISS"} ${t.label}: ${round(t.value, 2)} ${t.unit} (target ${t.comparator} ${t.target})`,
    );
  }
  if (!quick) {
    const files = writeReports(results);
    log(`wrote ${files.join(", ")}`);
  }
  const failed = invariants.filter((i) => !i.ok);
  log(
    `${invariants.length - failed.length}/${invariants.length} invariants hold; ${results.totalSeconds} s`,
  );
  return failed.length === 0 ? 0 : 1;
}

/**
 * `bench/summary.ts` in a child process: the month's summary of one organisation with
 * `settings.summaryEvents` events, from the rollups (service and HTTP) and as a GROUP BY over
 * the raw events. Its own detailed report goes to bench/results/summary-*.md (full runs).
 */
async function monthlySummary(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "tally-bench-summary-"));
  tempDirs.push(dir);
  const out = join(dir, "summary.json");
  const args = ["--import", "tsx", "bench/summary.ts", "--events", String(settings.summaryEvents)];
  args.push("--json-out", out);
  if (quick)
    args.push("--iterations", "20", "--raw-iterations", "1", "--other-orgs", "2", "--quick");
  log(
    `monthly summary: ${settings.summaryEvents.toLocaleString("en-US")} events (bench/summary.ts)`,
  );
  await new Promise<void>((resolve, reject) => {
    execFile(
      process.execPath,
      args,
      { cwd: ROOT, env: { ...process.env, DATABASE_URL: adminUrl() }, maxBuffer: 16 << 20 },
      (error, _stdout, stderr) =>
        error ? reject(new Error(`${error.message}\n${stderr}`)) : resolve(),
    );
  });
  const r = JSON.parse(readFileSync(out, "utf8")) as {
    results: {
      service_rollups: { p50_ms: number; p95_ms: number };
      http_inject_rollups: { p50_ms: number; p95_ms: number };
      group_by_raw_events: { p50_ms: number };
    };
    data: { load_seconds: number; total_cost: string; usage_events: number };
  };
  const {
    service_rollups: service,
    http_inject_rollups: http,
    group_by_raw_events: raw,
  } = r.results;
  // bench/summary.ts fails unless the rollups' summary equals the GROUP BY over the events.
  invariant(
    "Monthly summary: rollups = GROUP BY over the raw events",
    true,
    `total ${r.data.total_cost} credits over ${r.data.usage_events.toLocaleString("en-US")} events, both ways`,
  );
  record(
    "summary_p95",
    `Monthly usage summary p95, one organisation with ${settings.summaryEvents.toLocaleString("en-US")} events (from the rollups; the slower of service and HTTP)`,
    "ms",
    [
      {
        value: Math.max(service.p95_ms, http.p95_ms),
        extra: {
          serviceP50Ms: service.p50_ms,
          serviceP95Ms: service.p95_ms,
          httpP50Ms: http.p50_ms,
          httpP95Ms: http.p95_ms,
          loadSeconds: r.data.load_seconds,
        },
      },
    ],
  );
  record(
    "summary_raw_p50",
    "The same summary as a GROUP BY over the raw usage_events, p50 (the baseline)",
    "ms",
    [{ value: raw.p50_ms }],
  );
}

/**
 * The rows `n` events need — their usage_events rows and usage ledger entries — generated and
 * inserted by the database itself (INSERT…SELECT over generate_series): the floor of ingest.
 */
function floorStatements(
  orgId: string,
  prefix: string,
  n: number,
  sequenceBase: number,
): [text: string, params: unknown[]][] {
  return [
    [
      `insert into usage_events (org_id, id, type, timestamp, user_id, operation, model,
              input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, cost,
              price_version, transaction_id, payload_hash, received_at)
       select $1, $2 || '-' || g, 'ai_tokens', now(), 'u-' || (g % 100), 'chat.completion',
              'gpt-4o-mini', 1200, 300, 0, 350, 0.04125, 1, 'txn_' || $2 || '_' || g,
              md5(g::text) || md5($2 || g), now()
         from generate_series(1, $3::int) g`,
      [orgId, prefix, n],
    ],
    [
      `insert into ledger_entries (org_id, sequence, id, type, amount, balance_after, debt_change,
              allocations, actor_type, actor_id, user_id, description, reference_type,
              reference_id, created_at, prev_hash, hash)
       select $1, $3::bigint + g, 'txn_' || $2 || '_' || g, 'usage', -0.04125,
              1000000000000 - g * 0.04125, 0,
              jsonb_build_array(jsonb_build_object('block_id', 'blk_floor', 'amount', '-0.04125')),
              'api_key', 'key_floor', 'u-' || (g % 100), 'gpt-4o-mini · chat.completion',
              'usage_event', $2 || '-' || g, now(), md5(g::text) || md5($2 || (g - 1)),
              md5(g::text) || md5($2 || g)
         from generate_series(1, $4::int) g`,
      [orgId, prefix, sequenceBase, n],
    ],
  ];
}

/**
 * The same floor on embedded PGlite, in this process (nothing else runs in it meanwhile): its
 * CPU per event is what the database alone costs Tally's one thread on PGlite.
 */
async function pgliteFloor(lite: PGlite, orgId: string, n: number, run: number) {
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  await lite.transaction(async (tx) => {
    for (const [text, params] of floorStatements(orgId, `lfloor${run}-${tag}`, n, 1e9 * run)) {
      await tx.query(text, params);
    }
  });
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  const used = process.cpuUsage(cpu0);
  const cpu = (used.user + used.system) / 1e6;
  log(
    `  PGlite floor run ${run}: ${round(n / wall)} events/s, ${round((cpu / n) * 1e6, 1)} µs of CPU per event`,
  );
  return {
    value: n / wall,
    extra: { seconds: round(wall, 2), cpuPerEventUs: round((cpu / n) * 1e6, 1) },
  } satisfies RunDetail;
}

/**
 * The PostgreSQL-only floor of ingest: one transaction inserting, for n events, the usage_events
 * and ledger_entries rows Tally would write, generated by the server itself (no client, no
 * parameters). Returns events/s and PostgreSQL CPU per event.
 */
async function postgresFloor(pool: pg.Pool, orgId: string, n: number, run: number) {
  const client = await pool.connect();
  const p = `floor${run}-${tag}`;
  try {
    // The backend's own CPU time (other databases' work on a shared server does not count).
    const pid = Number((await client.query("select pg_backend_pid() as pid")).rows[0].pid);
    const cpu0 = processCpuSeconds(pid);
    const t0 = process.hrtime.bigint();
    await client.query("begin");
    for (const [text, params] of floorStatements(orgId, p, n, 1_000_000_000 * run)) {
      await client.query(text, params);
    }
    await client.query("commit");
    const wall = Number(process.hrtime.bigint() - t0) / 1e9;
    const cpu = processCpuSeconds(pid) - cpu0;
    log(
      `  PostgreSQL floor run ${run}: ${round(n / wall)} events/s, ${round((cpu / n) * 1e6, 1)} µs of backend CPU per event`,
    );
    return {
      value: n / wall,
      extra: { seconds: round(wall, 2), backendCpuPerEventUs: round((cpu / n) * 1e6, 1) },
    } satisfies RunDetail;
  } catch (error) {
    await client.query("rollback").catch(() => {});
    throw error;
  } finally {
    client.release();
  }
}

/** Batch ingest on embedded PGlite: a server of its own on a fresh data directory. */
async function startPglite(): Promise<{ server: Server; dir: string }> {
  const dir = mkdtempSync(join(tmpdir(), "tally-bench-pglite-"));
  tempDirs.push(dir);
  log("starting Tally (PGlite)");
  const server = await startTally("tally-pglite", { dataDir: join(dir, "data") }, tallyFlags);
  return { server, dir };
}

async function pgliteBatch(
  { server, dir }: { server: Server; dir: string },
  dur: number,
  warm: number,
  reps: number,
): Promise<void> {
  const api = new TallyApi(server.url);
  const expected: Expected[] = [];
  const runs: RunDetail[] = [];
  let orgs: string[] = [];
  try {
    orgs = await createOrgs(api, `${tag}-lite`, settings.batchOrgs);
    const headers = { "content-type": "application/json", authorization: `Bearer ${ADMIN_KEY}` };
    for (let i = warm > 0 ? 0 : 1; i <= reps; i++) {
      const t = `${tag}-l${i}`;
      const r = await ingestRun({
        server,
        label: i === 0 ? "PGlite batch warm-up" : `PGlite batch round ${i}`,
        tag: t,
        headers,
        connections: settings.batchConnections,
        durationSec: i === 0 ? warm : dur,
        makeBody: batchEvents(t, settings.batchSize, (n) => orgs[n % orgs.length]!),
      });
      expected.push(r.expected);
      if (i > 0) runs.push(r.detail);
    }
    await verifyOrgs(api, "PGlite batch", orgs);
    record(
      "pglite_batch",
      `Tally on PGlite, batch ingest, ${settings.batchSize}-event requests, ${settings.batchConnections} connections`,
      "events/s",
      runs,
    );
    const rss = server.peakRssMb();
    record("rss_pglite", "Tally server peak RSS (VmHWM), PGlite", "MB", [
      { value: round(rss ?? Number.NaN), extra: { readyRssMb: round(server.readyRssMb ?? 0) } },
    ]);
  } finally {
    await server.stop();
  }
  // The server is gone: open its data directory and count.
  const lite = await PGlite.create({ dataDir: join(dir, "data") });
  try {
    const query: Query = async (text, params) =>
      (await lite.query<Record<string, unknown>>(text, params)).rows;
    for (const e of expected) await checkCounts(query, `PGlite ${e.tag.slice(tag.length + 1)}`, e);
    await checkRollups(query, "PGlite batch", orgs);
    if (orgs[0]) {
      const n = quick ? 2_000 : 20_000;
      const runs: RunDetail[] = [];
      for (let i = 1; i <= reps; i++) runs.push(await pgliteFloor(lite, orgs[0], n, i));
      record(
        "pglite_floor",
        `PGlite alone: INSERT…SELECT of the usage_events + ledger_entries rows of ${n.toLocaleString("en-US")} events, in one thread`,
        "events/s",
        runs,
        "As the PostgreSQL floor, on embedded PGlite in the bench process: the fastest Tally on PGlite could write, with every microsecond of its own work on the same thread on top.",
      );
    }
  } finally {
    await lite.close();
  }
}

async function cleanup(): Promise<void> {
  killAll();
  await Promise.allSettled(createdDbs.map((n) => dropDatabase(n)));
  for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
}

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    log(`${signal}: cleaning up`);
    void cleanup().finally(() => process.exit(130));
  });
}

let code = 1;
try {
  if (profile) await runProfile(settings.durationSec, settings.warmupSec);
  else code = await main();
  if (profile) code = 0;
} catch (error) {
  log(error instanceof InvariantError ? error.message : String((error as Error).stack ?? error));
  code = 1;
} finally {
  await cleanup();
}
log(`admin database: ${adminUrl().replace(/\/\/[^@]*@/, "//…@")}`);
process.exit(code);
