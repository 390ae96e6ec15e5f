import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import net, { type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openDatabase } from "../../src/db/index.js";
import { formatCredits, parseCredits } from "../../src/modules/ledger/credits.js";
import { waitFor } from "../support/app.js";
import { start } from "../support/process.js";
import { checkOrgInvariants } from "./invariants.js";

/**
 * A real PostgreSQL crash restart under load. The machine's shared PostgreSQL must never be
 * restarted (other test files use it at the same time), so this file brings its own private
 * cluster in a temporary directory (Debian's initdb and pg_ctl), runs a real `tally start` on it,
 * and crash-restarts the cluster (`-m immediate`: no checkpoint, WAL recovery on start) while
 * several clients ingest usage. Requests either succeed or fail cleanly with the 503 envelope,
 * /readyz tells the outage as it is, the service recovers by itself (same process), every
 * acknowledged event is stored exactly once and the ledger invariants hold. Independent of
 * TEST_DATABASE_URL: it runs in both CI passes.
 */

const execFileP = promisify(execFile);

// biome-ignore lint/suspicious/noExplicitAny: JSON bodies, checked by the assertions.
type Json = any;

const ADMIN_KEY = "reliability-db-restart-admin-key-0123456789";
/** No request may take longer than this, outage or not (a hang fails the test). */
const REQUEST_BOUND_MS = 30_000;
const GRANT = "100000";
const CLIENTS = 4;
const BATCH = 10;
const TIMESTAMP = new Date(Date.now() - 60_000).toISOString();
/** PostgreSQL's log line when it starts after a crash (lc_messages is C: the cluster's locale). */
const CRASH_RECOVERY = "database system was not properly shut down; automatic recovery in progress";

/** The newest /usr/lib/postgresql/<version>/bin holding initdb and pg_ctl. */
async function postgresBin(): Promise<string> {
  const root = "/usr/lib/postgresql";
  const versions = existsSync(root) ? await readdir(root) : [];
  const bins = versions
    .filter((v) => /^\d+(\.\d+)?$/.test(v))
    .sort((a, b) => Number(b) - Number(a))
    .map((v) => join(root, v, "bin"))
    .filter((bin) => existsSync(join(bin, "initdb")) && existsSync(join(bin, "pg_ctl")));
  if (bins.length === 0) {
    throw new Error(
      `db-restart.test.ts needs PostgreSQL's server binaries (initdb, pg_ctl) in ${root}/<version>/bin ` +
        `to run a private cluster; found versions: [${versions.join(", ")}]. ` +
        "Install them (Debian: apt-get install postgresql).",
    );
  }
  return bins[0]!;
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** A private PostgreSQL cluster: its own data directory, socket directory and TCP port. */
interface Cluster {
  readonly url: string;
  /** pg_ctl with the data directory and log file, run as the cluster's owner. */
  ctl(...args: string[]): Promise<string>;
  /** `pg_ctl start` with the cluster's options (port, socket directory, fsync), waiting for it. */
  start(): Promise<void>;
  log(): Promise<string>;
  /** Stops it (immediately) and deletes its directory; never throws. */
  destroy(): Promise<void>;
}

async function privateCluster(): Promise<Cluster> {
  const bin = await postgresBin();
  // initdb refuses to run as root: as root, the binaries run as `postgres`, which then owns the
  // directory (data directory, socket and log inside it).
  const asRoot = process.getuid?.() === 0;
  // As root, under /tmp: `postgres` must be able to reach it (TMPDIR may be private to root).
  const dir = await mkdtemp(join(asRoot ? "/tmp" : tmpdir(), "tally-pg-restart-"));
  const data = join(dir, "data");
  const logFile = join(dir, "server.log");
  let started = false;
  const run = async (tool: string, args: string[]) => {
    const [file, argv] = asRoot
      ? ["runuser", ["-u", "postgres", "--", join(bin, tool), ...args]]
      : [join(bin, tool), args];
    try {
      const { stdout } = await execFileP(file, argv, {
        cwd: dir,
        env: { ...process.env, LC_ALL: "C", LANG: "C", PGTZ: "UTC" },
        timeout: 90_000,
      });
      return stdout;
    } catch (error) {
      const e = error as Error & { stdout?: string; stderr?: string };
      const log = await readFile(logFile, "utf8").catch(() => "");
      throw new Error(
        `${tool} ${args.join(" ")} failed: ${e.message}\n${e.stdout}\n${e.stderr}\n--- server log ---\n${log.slice(-4000)}`,
      );
    }
  };
  // -l: the server's output goes to the log file, never to pg_ctl's (awaited) stdout.
  const ctl = (...args: string[]) => run("pg_ctl", ["-D", data, "-l", logFile, ...args]);
  let port = 0;
  const startServer = async () => {
    await ctl(
      "-o",
      `-p ${port} -h 127.0.0.1 -k ${dir} -c fsync=on -c max_connections=50`,
      "-w",
      "-t",
      "60",
      "start",
    );
  };
  const destroy = async () => {
    // Also after a failed start (a server that came up late): stopping none is harmless.
    await ctl("-m", "immediate", "-w", "stop").catch(() => {});
    await rm(dir, { recursive: true, force: true }).catch(() => {});
  };
  try {
    if (asRoot) await execFileP("chown", ["postgres:postgres", dir]);
    // --no-sync: initdb's own files need no flush (no OS crash here); the server runs with fsync.
    await run("initdb", [
      "-D",
      data,
      "-A",
      "trust",
      "-U",
      "postgres",
      "-E",
      "UTF8",
      "--locale=C",
      "--no-sync",
    ]);
    // The port is free when picked, not necessarily when the server binds it: retry on a clash.
    for (let attempt = 1; !started; attempt++) {
      port = await freePort();
      try {
        await startServer();
        started = true;
      } catch (error) {
        if (attempt >= 3) throw error;
      }
    }
    const admin = new pg.Client({
      connectionString: `postgres://postgres@127.0.0.1:${port}/postgres`,
    });
    await admin.connect();
    try {
      await admin.query("create database tally");
    } finally {
      await admin.end();
    }
    return {
      url: `postgres://postgres@127.0.0.1:${port}/tally`,
      ctl,
      start: startServer,
      log: () => readFile(logFile, "utf8").catch(() => ""),
      destroy,
    };
  } catch (error) {
    await destroy();
    throw error;
  }
}

interface Reply {
  status: number;
  body: Json;
  text: string;
  contentType: string | null;
  requestId: string | null;
}

/** One HTTP call, bounded: a request that hangs rejects (and fails the test). */
async function call(
  baseUrl: string,
  key: string | null,
  method: "GET" | "POST" | "PUT" | "DELETE",
  path: string,
  body?: unknown,
): Promise<Reply> {
  const headers: Record<string, string> = {};
  if (key) headers.authorization = `Bearer ${key}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(`${baseUrl}${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(REQUEST_BOUND_MS),
  });
  const text = await res.text();
  let parsed: unknown = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = null;
  }
  return {
    status: res.status,
    body: parsed,
    text,
    contentType: res.headers.get("content-type"),
    requestId: res.headers.get("x-request-id"),
  };
}

function expectStatus(reply: Reply, status: number, what: string): Json {
  expect(reply.status, `${what}: ${reply.text}`).toBe(status);
  return reply.body;
}

/** Exactly the common error envelope with `503 service_unavailable`. */
function isCleanUnavailable(reply: Reply): boolean {
  const error = reply.body?.error;
  return (
    reply.status === 503 &&
    /^application\/json/.test(reply.contentType ?? "") &&
    Object.keys(reply.body).join() === "error" &&
    error.code === "service_unavailable" &&
    typeof error.message === "string" &&
    error.message.length > 0 &&
    /^req_/.test(error.request_id ?? "") &&
    Array.isArray(error.details) &&
    reply.requestId === error.request_id
  );
}

function expectUnavailable(reply: Reply, what: string): void {
  expect(isCleanUnavailable(reply), `${what}: ${reply.status} ${reply.text}`).toBe(true);
}

/** gpt-4o input: 250 credits per 1M tokens → 4000 tokens = 1 credit. */
function usageEvent(id: string, n: number) {
  return {
    id,
    type: "ai_tokens",
    model: "gpt-4o",
    timestamp: TIMESTAMP,
    user_id: `u-${n % 5}`,
    tokens: { input: 4000 + (n % 7) * 1000, output: n % 3 },
  };
}

interface UsageResult {
  id: string;
  status: "accepted" | "duplicate";
  cost: string;
  transaction_id: string;
}

describe("PostgreSQL crash-restarted under load (private cluster)", { timeout: 120_000 }, () => {
  let cluster: Cluster | null = null;
  beforeAll(async () => {
    cluster = await privateCluster();
  }, 90_000);
  afterAll(async () => {
    await cluster?.destroy();
  }, 60_000);

  it("requests succeed or fail with the 503 envelope, /readyz tells the outage, ingest recovers by itself, every acknowledged event is stored exactly once", async () => {
    const pgCluster = cluster!;
    const tally = await start({ env: { DATABASE_URL: pgCluster.url, TALLY_ADMIN_KEY: ADMIN_KEY } });
    const api = (key: string | null) => call.bind(null, tally.url, key);
    const admin = api(ADMIN_KEY);
    const readyz = () => call(tally.url, null, "GET", "/readyz");

    const orgId = expectStatus(
      await admin("POST", "/v1/organizations", { name: "DB restart" }),
      201,
      "create org",
    ).id as string;
    expectStatus(
      await admin("POST", `/v1/organizations/${orgId}/adjustments`, {
        amount: `+${GRANT}`,
        reason: "grant",
      }),
      201,
      "grant",
    );
    const key = expectStatus(
      await admin("POST", `/v1/organizations/${orgId}/api-keys`, {
        name: "ingest",
        role: "ingest",
      }),
      201,
      "ingest key",
    ).key as string;
    const ingest = api(key);
    expect((await readyz()).body).toEqual({ status: "ok" });

    // Several clients, each sending batches of new events back to back; a refused client
    // retries its next batch after a short pause.
    type Batch = {
      events: ReturnType<typeof usageEvent>[];
      reply: Reply | null;
      error: string | null;
    };
    const batches: Batch[] = [];
    let stop = false;
    const acked = () => batches.filter((b) => b.reply?.status === 200).length;
    const refused = () => batches.filter((b) => b.reply && b.reply.status !== 200).length;
    const client = async () => {
      while (!stop) {
        const n = batches.length;
        const batch: Batch = {
          events: Array.from({ length: BATCH }, (_, i) =>
            usageEvent(`restart-${n}-${i}`, n * BATCH + i),
          ),
          reply: null,
          error: null,
        };
        batches.push(batch);
        try {
          batch.reply = await ingest("POST", "/v1/usage-events", { events: batch.events });
        } catch (error) {
          batch.error = String(error); // a hang (beyond the bound) or a dropped connection
        }
        if (batch.reply?.status !== 200) await new Promise((r) => setTimeout(r, 50));
      }
    };
    const clients = Array.from({ length: CLIENTS }, client);
    let refusedInRestart = 0;

    try {
      await waitFor(() => acked() >= 10, { timeoutMs: 60_000 });

      // 1. A crash restart in the middle of the traffic: every backend dies at once, no
      //    checkpoint; the server comes back through WAL recovery.
      const refusedBefore = refused();
      await pgCluster.ctl("-m", "immediate", "-w", "-t", "60", "restart");
      await waitFor(async () => (await readyz()).status === 200, { timeoutMs: 60_000 });
      let since = acked();
      await waitFor(() => acked() >= since + 5, { timeoutMs: 60_000 });
      refusedInRestart = refused() - refusedBefore;

      // 2. The same crash, with the server kept down a while to watch the outage: /readyz and
      //    requests answer 503 in the envelope; the clients keep meeting it.
      await pgCluster.ctl("-m", "immediate", "-w", "-t", "60", "stop");
      const refusedAtStop = refused();
      const readyDuringOutage = await waitFor(
        async () => {
          const r = await readyz();
          return r.status !== 200 ? r : null;
        },
        { timeoutMs: 30_000 },
      );
      expectUnavailable(readyDuringOutage, "/readyz while the database is down");
      expectUnavailable(
        await ingest("POST", "/v1/usage-events", usageEvent("while-down", 0)),
        "ingest while the database is down",
      );
      expectUnavailable(
        await admin("GET", `/v1/organizations/${orgId}/balance`),
        "balance while the database is down",
      );
      // Liveness is not readiness: the process itself is fine and says so.
      expect((await call(tally.url, null, "GET", "/healthz")).status).toBe(200);
      await waitFor(() => refused() >= refusedAtStop + 3, { timeoutMs: 30_000 });

      // Back up (WAL recovery again); Tally was not restarted and needs nothing done.
      await pgCluster.start();
      await waitFor(async () => (await readyz()).status === 200, { timeoutMs: 60_000 });
      since = acked();
      await waitFor(() => acked() >= since + 5, { timeoutMs: 60_000 });
    } finally {
      stop = true;
      await Promise.all(clients);
    }

    // Both starts were crash recoveries.
    const serverLog = await pgCluster.log();
    expect(serverLog.split(CRASH_RECOVERY).length - 1, serverLog).toBe(2);

    // Every answer: 200 with every event accepted, or the clean 503 envelope. Never a hang,
    // a dropped connection, a 500 or a body outside the envelope.
    const unexpected = batches
      .filter(
        (b) =>
          b.error !== null ||
          (b.reply!.status === 200
            ? !b.reply!.body.data.every((r: UsageResult) => r.status === "accepted")
            : !isCleanUnavailable(b.reply!)),
      )
      .map((b) => b.error ?? `${b.reply!.status} ${b.reply!.text.slice(0, 300)}`);
    expect(unexpected, `unexpected replies; tally output:\n${tally.logs()}`).toEqual([]);
    expect(refused()).toBeGreaterThanOrEqual(3);

    const database = await openDatabase({ url: pgCluster.url, poolSize: 2 });
    try {
      const stored = (
        await database.db
          .selectFrom("usage_events")
          .select("id")
          .where("org_id", "=", orgId)
          .execute()
      ).map((e) => e.id);
      const storedSet = new Set(stored);
      expect(storedSet.size, "an event stored twice").toBe(stored.length);
      expect(storedSet.has("while-down")).toBe(false);

      // Exactly once: every acknowledged event stored; a refused batch is all or nothing
      // (nothing, or everything when only the COMMIT's acknowledgement was lost); nothing else.
      const ackedResults = new Map<string, UsageResult>();
      for (const b of batches) {
        const n = b.events.filter((e) => storedSet.has(e.id)).length;
        if (b.reply!.status === 200) {
          expect(n, "acknowledged events lost").toBe(BATCH);
          for (const r of b.reply!.body.data as UsageResult[]) ackedResults.set(r.id, r);
        } else {
          expect([0, BATCH], "a refused batch half-written").toContain(n);
        }
      }
      const sent = new Set(batches.flatMap((b) => b.events.map((e) => e.id)));
      expect(stored.filter((id) => !sent.has(id))).toEqual([]);

      // Clients retry every batch with the same ids: acknowledged events are duplicates with
      // their original results; the others duplicates exactly when they had been stored.
      for (const b of batches) {
        const reply = await ingest("POST", "/v1/usage-events", { events: b.events });
        expectStatus(reply, 200, "retry");
        for (const r of reply.body.data as UsageResult[]) {
          const original = ackedResults.get(r.id);
          if (original) expect(r).toEqual({ ...original, status: "duplicate" });
          else expect(r.status).toBe(storedSet.has(r.id) ? "duplicate" : "accepted");
        }
      }

      // A key revoked straight in the database is refused here: the key cache's notification
      // listener reconnected by itself after the restarts.
      const readKey = expectStatus(
        await admin("POST", `/v1/organizations/${orgId}/api-keys`, { name: "r", role: "read" }),
        201,
        "read key",
      );
      const read = () => call(tally.url, readKey.key, "GET", `/v1/organizations/${orgId}/balance`);
      expectStatus(await read(), 200, "read");
      expectStatus(await read(), 200, "read (cached)");
      await database.db
        .updateTable("api_keys")
        .set({ revoked_at: new Date() })
        .where("id", "=", readKey.id)
        .execute();
      const revoked = await waitFor(
        async () => {
          const r = await read();
          return r.status === 401 ? r : null;
        },
        { timeoutMs: 20_000 },
      );
      expect(revoked.body.error.code).toBe("unauthenticated");

      // The ledger: the verify route and the invariants, and the balance from the events.
      const total = batches.length * BATCH;
      const verify = expectStatus(
        await admin("GET", `/v1/organizations/${orgId}/ledger/verify`),
        200,
        "verify",
      );
      expect(verify).toMatchObject({ ok: true, first_bad_sequence: null, entries: 1 + total });
      const balance = await checkOrgInvariants(database.db, orgId);
      const events = await database.db
        .selectFrom("usage_events")
        .select("cost")
        .where("org_id", "=", orgId)
        .execute();
      expect(events).toHaveLength(total);
      const spent = events.reduce((s, e) => s + parseCredits(e.cost), 0n);
      expect(formatCredits(balance)).toBe(formatCredits(parseCredits(GRANT) - spent));
    } finally {
      await database.close();
    }
    expect(await tally.stop()).toBe(0);
    console.info(
      `db-restart: ${batches.length} batches, ${acked()} acknowledged, ${refused()} refused with 503 (${refusedInRestart} around the restart)`,
    );
  });
});
