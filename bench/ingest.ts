/**
 * One ingest scenario, measured quickly — the loop for working on the engine (the full,
 * recorded comparison is `npm run bench`):
 *
 *   npx tsx bench/ingest.ts [hot|batch|zipf] [--duration S] [--reps N] [--connections C] [--pglite]
 *                                            [--probe R]   (balance GETs at R/s alongside, hot only)
 *   npx tsx bench/ingest.ts hot --group-commit   (bench/baselines/group-commit.ts instead of Tally)
 *   BENCH_NODE_FLAGS="--max-semi-space-size=4" npx tsx bench/ingest.ts batch   (V8 flags)
 *
 * Starts Tally on a fresh database, runs the load `reps` times and prints events/s, the CPU
 * each event cost the server and PostgreSQL, and the average flush. Drops what it created.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type ProbeResult, runLoad, runProbe } from "./lib/load.js";
import { createDatabase, dropDatabase, postgresCpu, postgresCpuDelta } from "./lib/pg.js";
import { ADMIN_KEY, startBaseline, startTally } from "./lib/servers.js";
import { batchEvents, createOrgs, flushMetrics, singleEvents, TallyApi } from "./lib/tally.js";
import { log, prng, round, zipfSampler } from "./lib/util.js";

const argv = process.argv.slice(2);
const scenario = argv.find((a) => !a.startsWith("--")) ?? "hot";
const option = (name: string, fallback: number) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? Number(argv[i + 1]) : fallback;
};
const durationSec = option("duration", 5);
const reps = option("reps", 2);
const pglite = argv.includes("--pglite");
const probeRate = option("probe", 0);
const groupCommit = argv.includes("--group-commit");
if (groupCommit && (scenario !== "hot" || pglite || probeRate > 0)) {
  throw new Error(
    "--group-commit is a baseline for the hot scenario on PostgreSQL, without --probe",
  );
}

async function main() {
  const dbName = `bench_ingest_${process.pid}`;
  const dataDir = pglite ? mkdtempSync(join(tmpdir(), "tally-bench-ingest-")) : null;
  const nodeFlags = (process.env.BENCH_NODE_FLAGS ?? "").split(" ").filter(Boolean);
  const server = groupCommit
    ? await startBaseline("group-commit", "bench/baselines/group-commit.ts", {
        DATABASE_URL: await createDatabase(dbName),
      })
    : await startTally(
        "tally",
        dataDir ? { dataDir } : { databaseUrl: await createDatabase(dbName) },
        nodeFlags,
      );
  try {
    const api = new TallyApi(server.url);
    const tag = `i${Date.now().toString(36)}`;
    const platform = { "content-type": "application/json", authorization: `Bearer ${ADMIN_KEY}` };
    let headers: Record<string, string> = platform;
    let connections = 64;
    let makeBody: ReturnType<typeof singleEvents>;
    let probe: (() => Promise<[ProbeResult, ProbeResult]>) | null = null;
    if (groupCommit) {
      headers = { "content-type": "application/json" };
      makeBody = singleEvents(tag);
    } else if (scenario === "hot") {
      const org = await api.createFundedOrg(`${tag}-hot`);
      headers = { ...platform, authorization: `Bearer ${await api.createKey(org, "ingest")}` };
      if (probeRate > 0) {
        const url = `${server.url}/v1/organizations/${org}/balance`;
        const key = await api.createKey(org, "read");
        // The same probe on /healthz (no authentication, no database): what any request waits
        // for on this machine under that load.
        probe = () =>
          Promise.all([
            runProbe(url, key, probeRate, durationSec),
            runProbe(`${server.url}/healthz`, key, probeRate, durationSec),
          ]);
      }
      makeBody = singleEvents(tag);
    } else if (scenario === "zipf") {
      const orgs = await createOrgs(api, `${tag}-z`, 1000);
      const pick = zipfSampler(orgs.length, 1, prng(42));
      makeBody = singleEvents(tag, () => orgs[pick()]!);
    } else if (scenario === "batch") {
      const orgs = await createOrgs(api, `${tag}-b`, 8);
      connections = 8;
      makeBody = batchEvents(tag, 1000, (n) => orgs[n % orgs.length]!);
    } else {
      throw new Error(`unknown scenario ${scenario}`);
    }
    connections = option("connections", connections);
    for (let rep = 0; rep <= reps; rep++) {
      const m0 = await flushMetrics(server.url);
      const pg0 = pglite ? null : await postgresCpu(dbName);
      const cpu0 = server.cpuSeconds();
      const t0 = process.hrtime.bigint();
      const probed = rep > 0 ? probe?.() : undefined;
      const r = await runLoad({
        url: server.url,
        path: "/v1/usage-events",
        method: "POST",
        headers,
        connections,
        durationSec: rep === 0 ? 2 : durationSec,
        makeBody: (n) => makeBody(n + rep * 10_000_000),
      });
      const wall = Number(process.hrtime.bigint() - t0) / 1e9;
      const serverCpu = server.cpuSeconds() - cpu0;
      const pgCpu = pg0 ? postgresCpuDelta(pg0, await postgresCpu(dbName)) : 0;
      const m1 = await flushMetrics(server.url);
      const flushes = Math.max(1, m1.count - m0.count);
      const acked = Math.max(1, r.eventsAcked);
      log(
        `${rep === 0 ? "warm-up" : `rep ${rep}`}: ${round(r.eventsPerSec)} events/s, ` +
          `server ${round((serverCpu / acked) * 1e6)} µs/event (${round((serverCpu / wall) * 100)} %), ` +
          `postgres ${round((pgCpu / acked) * 1e6)} µs/event (${round((pgCpu / wall) * 100)} %), ` +
          `flush ${round((m1.events - m0.events) / flushes)} events in ${round(((m1.seconds - m0.seconds) / flushes) * 1000, 2)} ms, ` +
          `p99 ${r.latencyMs.p99} ms, peak RSS ${round(server.peakRssMb() ?? 0)} MB, statuses ${JSON.stringify(r.statuses)}, ` +
          `optimistic ${JSON.stringify(m1.optimistic)}`,
      );
      if (probed) {
        const [balance, health] = await probed;
        for (const [name, p] of [
          ["balance GET", balance],
          ["GET /healthz", health],
        ] as const) {
          log(
            `  ${name}: p50 ${p.p50} ms, p90 ${p.p90} ms, p99 ${p.p99} ms, max ${p.max} ms (${p.count})`,
          );
        }
      }
    }
  } finally {
    await server.stop();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
    else await dropDatabase(dbName);
  }
}

await main();
