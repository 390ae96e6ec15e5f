import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { SourceMap } from "node:module";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import pg from "pg";
import { runLoad } from "./load.js";
import { createDatabase, dropDatabase, postgresCpu, postgresCpuDelta } from "./pg.js";
import { resultBase } from "./report.js";
import { ADMIN_KEY, ROOT, startTally } from "./servers.js";
import { batchEvents, flushMetrics, singleEvents, TallyApi } from "./tally.js";
import { log, round } from "./util.js";

/**
 * `npm run bench -- --profile`: runs the Tally server under `node --cpu-prof` for the hot-org
 * single-event scenario and for batch ingest, and writes a summary of where the server's CPU time
 * goes (bottom-up, by component) to bench/results/profile-<date>.md.
 */

interface CpuNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number };
  children?: number[];
}
interface CpuProfile {
  nodes: CpuNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

/**
 * tsx runs each TypeScript file as one minified line, so profile positions need a source map to
 * name the original line. The same esbuild transform tsx applies (minified whitespace, kept
 * names) of the file as it is on disk gives the same code and its map.
 */
type Transform = (code: string, options: Record<string, unknown>) => { code: string; map: string };

async function sourceMaps(): Promise<(url: string, line: number, column: number) => number | null> {
  let transform: Transform | null = null;
  try {
    // esbuild comes with tsx; without it positions stay as generated line:column.
    transform = ((await import("esbuild")) as unknown as { transformSync: Transform })
      .transformSync;
  } catch {
    transform = null;
  }
  const maps = new Map<string, SourceMap | null>();
  return (url, line, column) => {
    const path = url.replace(/^file:\/\//, "");
    if (!transform || !path.startsWith(ROOT) || path.includes("node_modules")) return null;
    if (!maps.has(path)) {
      try {
        const out = transform(readFileSync(path, "utf8"), {
          target: `node${process.versions.node}`,
          loader: path.endsWith(".ts") ? "ts" : "js",
          format: "esm",
          sourcemap: true,
          minifyWhitespace: true,
          keepNames: true,
          sourcefile: path,
        });
        maps.set(path, new SourceMap(JSON.parse(out.map)));
      } catch {
        maps.set(path, null);
      }
    }
    const entry = maps.get(path)?.findEntry(line, column) as { originalLine?: number } | undefined;
    return entry?.originalLine === undefined ? null : entry.originalLine + 1;
  };
}

/** Component of a URL-bearing frame, or null when the frame says nothing. */
function component(url: string, fn: string): string | null {
  const u = url.replace(/^file:\/\//, "");
  const rules: [RegExp, string | ((f: string) => string)][] = [
    [/\/src\/modules\/ledger\/hash\.ts/, "ledger hash chain (canonical JSON + SHA-256)"],
    [
      /\/src\/modules\/usage\/prepare\.ts/,
      (f) =>
        /payloadHash|stableStringify/.test(f)
          ? "event payload hash (stable JSON + SHA-256)"
          : "event preparation (org resolution, pricing lookup)",
    ],
    [/\/src\/modules\/pricing\//, "pricing (rating, catalogue)"],
    [/\/src\/modules\/usage\/usage\.routes\.ts/, "usage route (body validation, response)"],
    [/\/src\/modules\/usage\/engine\.ts/, "ingest engine (classify, rollups, rows)"],
    [
      /\/src\/modules\/ledger\/posting\.ts|ledger\.service\.ts/,
      "ledger posting (allocations, rows)",
    ],
    [/\/src\/modules\/ledger\/credits\.ts/, "credit arithmetic and formatting"],
    [/\/src\/modules\/orgs\//, "authentication (API key lookup)"],
    [/\/src\/app\/idempotency\.ts/, "idempotency hook"],
    [/\/src\/app\/ids\.ts/, "id generation"],
    [/\/src\/(app|db)\//, "app plumbing (hooks, errors, db dialect)"],
    [/\/src\//, "other Tally code"],
    [/node_modules\/kysely\//, "Kysely (query building, compiling)"],
    [
      /node_modules\/(pg|pg-protocol|pg-types|pg-pool|postgres-\w+)\//,
      "pg driver (encode, decode)",
    ],
    [/node_modules\/(ajv|ajv-formats|fast-uri)\//, "Ajv (validation)"],
    [/node_modules\/secure-json-parse\//, "JSON parse (request bodies)"],
    [/node_modules\/fast-json-stringify\//, "response serialisation"],
    [
      /node_modules\/(fastify|@fastify|find-my-way|avvio|light-my-request|toad-cache|process-warning)\//,
      "HTTP framework (Fastify)",
    ],
    [/node_modules\/(pino|thread-stream|sonic-boom)/, "logging (pino)"],
    [/node_modules\/(prom-client|tdigest|bintrees)\//, "metrics (prom-client)"],
    [/node_modules\/(tsx|esbuild|get-tsconfig)\//, "tsx loader"],
    [/node_modules\//, "other libraries"],
    [
      /^node:(internal\/)?(http|_http|net|stream|internal\/streams|internal\/http)/,
      "Node sockets and HTTP (socket writes of HTTP responses and pg queries, HTTP parser)",
    ],
    [/^node:/, "Node core (other)"],
  ];
  if (!u) return null;
  for (const [re, c] of rules) if (re.test(u)) return typeof c === "string" ? c : c(fn);
  return null;
}

function nativeLeaf(fn: string): string | null {
  if (fn === "(garbage collector)") return "garbage collection";
  if (fn === "(idle)") return "idle";
  if (fn === "(program)") return "V8/native (program)";
  if (/^validate\d*$/.test(fn)) return "Ajv (validation)";
  return null;
}

export interface ProfileSummary {
  totalMs: number;
  busyMs: number;
  categories: { name: string; ms: number; pct: number }[];
  top: { name: string; where: string; selfMs: number; pct: number }[];
  natives: { name: string; caller: string; component: string; selfMs: number; pct: number }[];
}

/** Bottom-up: each sample goes to the deepest frame that names a component. */
export async function summariseProfile(
  p: CpuProfile,
  window?: [number, number],
): Promise<ProfileSummary> {
  const byId = new Map<number, CpuNode>();
  const parent = new Map<number, number>();
  for (const n of p.nodes) {
    byId.set(n.id, n);
    for (const c of n.children ?? []) parent.set(c, n.id);
  }
  const categoryOf = new Map<number, string>();
  const categorise = (id: number): string => {
    const cached = categoryOf.get(id);
    if (cached) return cached;
    const leaf = byId.get(id)!;
    let c = nativeLeaf(leaf.callFrame.functionName);
    // Node core frames are transparent: a socket write made by pg code belongs to pg. Only when
    // no library or Tally frame is on the stack (writes flushed on a later tick, the HTTP
    // parser's callbacks) does the Node core component count.
    let core: string | null = null;
    let cur: number | undefined = id;
    while (!c && cur !== undefined) {
      const f = byId.get(cur)!.callFrame;
      const found =
        component(f.url, f.functionName) ??
        (/^validate\d*$/.test(f.functionName) ? "Ajv (validation)" : null);
      if (found?.startsWith("Node ")) core ??= found;
      else c = found;
      cur = parent.get(cur);
    }
    c ??= core;
    c ??= "unattributed (native, promises)";
    categoryOf.set(id, c);
    return c;
  };

  const cat = new Map<string, number>();
  const self = new Map<number, number>();
  let t = p.startTime;
  let total = 0;
  for (let i = 0; i < p.samples.length; i++) {
    t += p.timeDeltas[i] ?? 0;
    if (window && (t < window[0] || t > window[1])) continue;
    const dt = p.timeDeltas[i + 1] ?? p.timeDeltas[i] ?? 0;
    const id = p.samples[i]!;
    total += dt;
    const c = categorise(id);
    cat.set(c, (cat.get(c) ?? 0) + dt);
    self.set(id, (self.get(id) ?? 0) + dt);
  }
  const idle = cat.get("idle") ?? 0;
  const busy = total - idle;
  const pct = (us: number) => round((us / Math.max(1, busy)) * 100, 1);
  const categories = [...cat.entries()]
    .filter(([name]) => name !== "idle")
    .sort((a, b) => b[1] - a[1])
    .map(([name, us]) => ({ name, ms: round(us / 1000), pct: pct(us) }));

  const original = await sourceMaps();
  const where = (n: CpuNode) => {
    const f = n.callFrame;
    const u = f.url.replace(/^file:\/\//, "");
    const short = u.startsWith(ROOT) ? relative(ROOT, u) : u;
    if (!short) return "(native)";
    const line = original(f.url, f.lineNumber, f.columnNumber);
    const minified = u.startsWith(ROOT) && !u.includes("node_modules");
    return `${short}:${line ?? (minified ? `1:${f.columnNumber + 1}` : f.lineNumber + 1)}`;
  };
  const selfByFn = new Map<string, { name: string; where: string; us: number }>();
  const natives = new Map<string, { name: string; caller: string; comp: string; us: number }>();
  for (const [id, us] of self) {
    const n = byId.get(id)!;
    if (n.callFrame.functionName === "(idle)") continue;
    const name = n.callFrame.functionName || "(anonymous)";
    const key = `${name}@${where(n)}`;
    const e = selfByFn.get(key) ?? { name, where: where(n), us: 0 };
    e.us += us;
    selfByFn.set(key, e);
    if (!n.callFrame.url) {
      // A native function: show who called it (the nearest frame with a URL).
      let cur = parent.get(id);
      while (cur !== undefined && !byId.get(cur)!.callFrame.url) cur = parent.get(cur);
      const caller =
        cur === undefined
          ? "?"
          : `${byId.get(cur)!.callFrame.functionName || "(anonymous)"} ${where(byId.get(cur)!)}`;
      const comp = categorise(id);
      const k = `${name}<-${caller}<-${comp}`;
      const ne = natives.get(k) ?? { name, caller, comp, us: 0 };
      ne.us += us;
      natives.set(k, ne);
    }
  }
  const top = [...selfByFn.values()]
    .sort((a, b) => b.us - a.us)
    .slice(0, 30)
    .map((e) => ({ name: e.name, where: e.where, selfMs: round(e.us / 1000), pct: pct(e.us) }));
  const nativeTop = [...natives.values()]
    .filter((e) => !e.name.startsWith("("))
    .sort((a, b) => b.us - a.us)
    .slice(0, 15)
    .map((e) => ({
      name: e.name,
      caller: e.caller,
      component: e.comp,
      selfMs: round(e.us / 1000),
      pct: pct(e.us),
    }));
  return {
    totalMs: round(total / 1000),
    busyMs: round(busy / 1000),
    categories,
    top,
    natives: nativeTop,
  };
}

/**
 * What the database's connections to the bench database are doing, sampled every 20 ms from
 * pg_stat_activity: running, waiting for a lock, for the WAL flush of a commit, or for Tally
 * (ClientRead: the next statement of a transaction has not arrived yet).
 */
function sampleActivity(url: string, database: string) {
  const counts = new Map<string, number>();
  let samples = 0;
  let stopped = false;
  const client = new pg.Client({ connectionString: url });
  const done = (async () => {
    await client.connect();
    while (!stopped) {
      const rows = (
        await client.query<{ state: string; wait: string | null; query: string }>(
          `select state, wait_event_type || ':' || wait_event as wait, query
             from pg_stat_activity
            where datname = $1 and pid <> pg_backend_pid() and backend_type = 'client backend'`,
          [database],
        )
      ).rows;
      samples++;
      for (const r of rows) {
        if (r.state === "idle") continue;
        const statement = r.query
          .replace(/\s+/g, " ")
          .replace(/\(\$\d+(, \$\d+)*\)(, \(\$\d+(, \$\d+)*\))*/g, "(…)")
          .replace(/\$\d+(, \$\d+)+/g, "…")
          .slice(0, 70);
        const what = r.wait ?? "on CPU";
        const key = `${r.state} · ${what} · ${statement}`;
        counts.set(key, (counts.get(key) ?? 0) + 1);
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    await client.end();
  })();
  return async () => {
    stopped = true;
    await done;
    const total = [...counts.values()].reduce((a, b) => a + b, 0);
    return {
      samples,
      busyConnectionsAvg: round(total / Math.max(1, samples), 2),
      top: [...counts.entries()]
        .sort((a, b) => b[1] - a[1])
        .slice(0, 15)
        .map(([what, n]) => ({ what, pct: round((n / Math.max(1, total)) * 100, 1) })),
    };
  };
}

/** Index and sequential scans per table (approximate: statistics are flushed lazily). */
async function tableScans(url: string): Promise<Map<string, number>> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    const rows = (
      await c.query<{ relname: string; n: string }>(
        "select relname, (coalesce(idx_scan, 0) + seq_scan)::text as n from pg_stat_user_tables",
      )
    ).rows;
    return new Map(rows.map((r) => [r.relname, Number(r.n)]));
  } finally {
    await c.end();
  }
}

interface ProfiledRun {
  name: string;
  eventsPerSec: number;
  events: number;
  seconds: number;
  serverCpuPct: number;
  postgresCpuPct: number;
  loadGeneratorPct: number;
  serverUsPerEvent: number;
  postgresUsPerEvent: number;
  flush: { count: number; avgEvents: number; avgMs: number };
  activity: Awaited<ReturnType<ReturnType<typeof sampleActivity>>>;
  /** Table lookups (index + sequential scans) per request. */
  lookupsPerRequest: { table: string; perRequest: number }[];
  requests: number;
  summary: ProfileSummary;
}

async function profiledRun(
  name: string,
  durationSec: number,
  warmupSec: number,
  kind: "hot" | "batch",
): Promise<ProfiledRun> {
  const dbName = `bench_profile_${process.pid}`;
  const dir = mkdtempSync(join(tmpdir(), "tally-bench-prof-"));
  const url = await createDatabase(dbName);
  try {
    const server = await startTally(
      `tally-prof-${kind}`,
      { databaseUrl: url },
      ["--cpu-prof", `--cpu-prof-dir=${dir}`],
      { fromSource: true },
    );
    let run: Omit<ProfiledRun, "summary">;
    let window: [number, number];
    try {
      const api = new TallyApi(server.url);
      const org = await api.createFundedOrg(`prof-${kind}`);
      const key = await api.createKey(org, "ingest");
      const headers = {
        "content-type": "application/json",
        authorization: `Bearer ${kind === "hot" ? key : ADMIN_KEY}`,
      };
      const spec = (tag: string, sec: number) => ({
        url: server.url,
        path: "/v1/usage-events",
        headers,
        connections: kind === "hot" ? 64 : 8,
        durationSec: sec,
        makeBody: kind === "hot" ? singleEvents(tag) : batchEvents(tag, 1000, () => org),
      });
      await runLoad(spec(`pw-${kind}`, warmupSec));
      await new Promise((resolve) => setTimeout(resolve, 1500));
      const scans0 = await tableScans(url);
      const activity = sampleActivity(url, dbName);
      const m0 = await flushMetrics(server.url);
      const c0 = {
        server: server.cpuSeconds(),
        pg: await postgresCpu(dbName),
        self: process.cpuUsage(),
      };
      const t0 = process.hrtime.bigint();
      const r = await runLoad(spec(`pm-${kind}`, durationSec));
      const t1 = process.hrtime.bigint();
      const wall = Number(t1 - t0) / 1e9;
      const serverCpu = server.cpuSeconds() - c0.server;
      const pgCpu = postgresCpuDelta(c0.pg, await postgresCpu(dbName));
      const self = process.cpuUsage(c0.self);
      const m1 = await flushMetrics(server.url);
      const dbActivity = await activity();
      await new Promise((resolve) => setTimeout(resolve, 1500));
      const scans1 = await tableScans(url);
      const lookups = [...scans1.entries()]
        .map(([table, n]) => ({
          table,
          perRequest: round((n - (scans0.get(table) ?? 0)) / Math.max(1, r.requests), 2),
        }))
        .filter((x) => x.perRequest > 0)
        .sort((a, b) => b.perRequest - a.perRequest);
      const flushes = m1.count - m0.count;
      window = [Number(t0 / 1000n), Number(t1 / 1000n)];
      run = {
        name,
        eventsPerSec: round(r.eventsPerSec),
        events: r.eventsAcked,
        seconds: round(wall, 1),
        serverCpuPct: round((serverCpu / wall) * 100),
        postgresCpuPct: round((pgCpu / wall) * 100),
        loadGeneratorPct: round(((self.user + self.system) / 1e6 / wall) * 100),
        serverUsPerEvent: round((serverCpu / Math.max(1, r.eventsAcked)) * 1e6),
        postgresUsPerEvent: round((pgCpu / Math.max(1, r.eventsAcked)) * 1e6),
        flush: {
          count: flushes,
          avgEvents: round((m1.events - m0.events) / Math.max(1, flushes)),
          avgMs: round(((m1.seconds - m0.seconds) / Math.max(1, flushes)) * 1000, 2),
        },
        activity: dbActivity,
        lookupsPerRequest: lookups,
        requests: r.requests,
      };
    } finally {
      await server.stop();
    }
    const file = readdirSync(dir).find((f) => f.endsWith(".cpuprofile"));
    if (!file) throw new Error("the server wrote no CPU profile");
    const text = readFileSync(join(dir, file), "utf8");
    // Keep the raw profile when asked (open it in Chrome DevTools or speedscope).
    if (process.env.BENCH_KEEP_PROFILES) {
      writeFileSync(join(process.env.BENCH_KEEP_PROFILES, `${kind}.cpuprofile`), text);
    }
    const profile = JSON.parse(text) as CpuProfile;
    let summary = await summariseProfile(profile, window);
    if (summary.totalMs === 0) {
      log("profile clock does not match hrtime: summarising the whole profile");
      summary = await summariseProfile(profile);
    }
    return { ...run, summary };
  } finally {
    await dropDatabase(dbName);
    rmSync(dir, { recursive: true, force: true });
  }
}

function markdown(runs: ProfiledRun[]): string {
  const l: string[] = [];
  l.push(
    `# Tally server CPU profile — ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC`,
  );
  l.push("");
  l.push(
    "`npm run bench -- --profile`: the Tally server under `node --cpu-prof` (1 ms sampling) on a fresh PostgreSQL database; only the samples of the measured window count. Components are attributed bottom-up: each sample goes to the deepest stack frame that belongs to a known component (so JSON.stringify called by the hash chain counts as hashing, a pg call made by Kysely counts as the pg driver). Percentages are of the server's busy (non-idle) samples; µs/event multiplies that share by the server's measured CPU time per event. PostgreSQL CPU comes from /proc: the backends of the profiled database plus the WAL writer, checkpointer and background writer.",
  );
  l.push("");
  for (const r of runs) {
    l.push(`## ${r.name}`);
    l.push("");
    l.push(
      `${r.events} events in ${r.seconds} s = **${r.eventsPerSec} events/s**. CPU (100 % = one core): Tally ${r.serverCpuPct} %, PostgreSQL ${r.postgresCpuPct} %, load generator ${r.loadGeneratorPct} %. Per event: Tally ${r.serverUsPerEvent} µs, PostgreSQL ${r.postgresUsPerEvent} µs. Flushes: ${r.flush.count}, ${r.flush.avgEvents} events and ${r.flush.avgMs} ms each on average.`,
    );
    l.push("");
    l.push(
      `Profile window: ${r.summary.totalMs} ms sampled, ${r.summary.busyMs} ms busy (samples count wall time while the thread is busy, including time the OS gives other processes, so shares are approximate on a loaded machine).`,
    );
    l.push("");
    l.push("| component | share of busy server CPU | µs/event |");
    l.push("|---|---:|---:|");
    for (const c of r.summary.categories) {
      l.push(`| ${c.name} | ${c.pct} % | ${round((c.pct / 100) * r.serverUsPerEvent, 1)} |`);
    }
    l.push("");
    l.push(
      `Database side: ${r.activity.busyConnectionsAvg} of Tally's connections busy on average (${r.activity.samples} samples of pg_stat_activity, every 20 ms). What they were doing:`,
    );
    l.push("");
    l.push("| state · wait · statement | share |");
    l.push("|---|---:|");
    for (const a of r.activity.top) l.push(`| ${a.what.replace(/\|/g, "\\|")} | ${a.pct} % |`);
    l.push("");
    l.push(
      `Table lookups per HTTP request (index + sequential scans from pg_stat_user_tables, ${r.requests} requests; approximate):`,
    );
    l.push("");
    l.push(
      r.lookupsPerRequest.map((x) => `${x.table} ${x.perRequest}`).join(", ") || "(none recorded)",
    );
    l.push("");
    l.push("Top functions by self time:");
    l.push("");
    l.push("| function | where | self | |");
    l.push("|---|---|---:|---:|");
    for (const t of r.summary.top.slice(0, 20)) {
      l.push(`| \`${t.name}\` | ${t.where} | ${t.selfMs} ms | ${t.pct} % |`);
    }
    l.push("");
    l.push("Native functions (self time) and their callers:");
    l.push("");
    l.push("| native | called from | component (deepest library or Tally frame) | self | |");
    l.push("|---|---|---|---:|---:|");
    for (const t of r.summary.natives.slice(0, 12)) {
      l.push(`| \`${t.name}\` | ${t.caller} | ${t.component} | ${t.selfMs} ms | ${t.pct} % |`);
    }
    l.push("");
  }
  return l.join("\n");
}

export async function runProfile(durationSec: number, warmupSec: number): Promise<string> {
  const runs: ProfiledRun[] = [];
  log("profiling: hot org, single events, 64 connections");
  runs.push(
    await profiledRun(
      "Hot org, single-event requests, 64 connections",
      durationSec,
      warmupSec,
      "hot",
    ),
  );
  log("profiling: batch ingest, 1000-event requests, 8 connections");
  runs.push(
    await profiledRun(
      "Batch ingest, 1000-event requests, 8 connections",
      durationSec,
      warmupSec,
      "batch",
    ),
  );
  const base = resultBase(new Date().toISOString(), "profile-");
  writeFileSync(`${base}.md`, markdown(runs));
  writeFileSync(`${base}.json`, `${JSON.stringify(runs, null, 2)}\n`);
  log(`wrote ${relative(ROOT, base)}.md`);
  return `${base}.md`;
}
