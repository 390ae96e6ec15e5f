import type { LightMyRequestResponse } from "fastify";
import { afterAll } from "vitest";
import { type Config, loadConfig } from "../../src/app/config.js";
import type { Clock } from "../../src/app/context.js";
import type { Role } from "../../src/app/http.js";
import { createLogger, createRuntime, type Runtime } from "../../src/app/runtime.js";
import { type Database, openDatabase } from "../../src/db/index.js";
import { createApiKey } from "../../src/modules/orgs/orgs.service.js";
import { testDatabase, testDatabaseUrl } from "./db.js";

/** A clock the test moves by hand. */
export class TestClock implements Clock {
  constructor(private current = new Date("2026-11-24T10:00:00.000Z")) {}
  now(): Date {
    return new Date(this.current.getTime());
  }
  set(date: Date | string): void {
    this.current = new Date(date);
  }
  advance(ms: number): void {
    this.current = new Date(this.current.getTime() + ms);
  }
}

export interface TestApp {
  runtime: Runtime;
  clock: TestClock;
  config: Config;
  platformKey: string;
  /** Calls the API in-process. `key: null` sends no Authorization header. */
  call(
    method: "GET" | "POST" | "PUT" | "PATCH" | "DELETE",
    url: string,
    options?: {
      key?: string | null;
      body?: unknown;
      headers?: Record<string, string>;
      rawBody?: string | Buffer;
    },
  ): Promise<LightMyRequestResponse & { json<T = any>(): T }>;
  /** Creates an organisation (platform key) and returns its id. */
  createOrg(body?: Record<string, unknown>): Promise<string>;
  /** Creates an organisation key with `role` and returns its secret. */
  orgKey(orgId: string, role: Exclude<Role, "platform">): Promise<string>;
  close(): Promise<void>;
}

/**
 * A Tally runtime on a fresh test database with a controllable clock and no background workers
 * (tests run them explicitly). Closed automatically after the file.
 */
export async function createTestApp(
  options: {
    env?: Record<string, string>;
    clock?: TestClock;
    workers?: boolean;
    /** A database opened by the test (default: a fresh test database). */
    database?: Database;
  } = {},
): Promise<TestApp> {
  const config = loadConfig({
    LOG_LEVEL: "silent",
    TALLY_PUBLIC_URL: "http://tally.test",
    TALLY_USAGE_BACKDATE_DAYS: "35",
    ...options.env,
  });
  const clock = options.clock ?? new TestClock();
  const database = options.database ?? (await testDatabase());
  const runtime = await createRuntime(config, {
    database,
    clock,
    logger: createLogger("silent"),
    workers: options.workers ?? false,
  });
  const { secret: platformKey } = await createApiKey(runtime.ctx, {
    orgId: null,
    name: "test platform",
    role: "platform",
  });
  let counter = 0;
  const app: TestApp = {
    runtime,
    clock,
    config,
    platformKey,
    async call(method, url, opts = {}) {
      const headers: Record<string, string> = { ...opts.headers };
      const key = opts.key === undefined ? platformKey : opts.key;
      if (key !== null) headers.authorization = `Bearer ${key}`;
      let payload: string | Buffer | undefined;
      if (opts.rawBody !== undefined) payload = opts.rawBody;
      else if (opts.body !== undefined) payload = JSON.stringify(opts.body);
      if (payload !== undefined) headers["content-type"] ??= "application/json";
      const res = await runtime.app.inject({ method, url, headers, payload });
      assertDocumented(runtime, method, url, res.statusCode);
      return res as never;
    },
    async createOrg(body = {}) {
      const res = await app.call("POST", "/v1/organizations", {
        body: { name: `Org ${++counter}`, ...body },
      });
      if (res.statusCode !== 201) throw new Error(`createOrg: ${res.statusCode} ${res.body}`);
      return res.json().id;
    },
    async orgKey(orgId, role) {
      const res = await app.call("POST", `/v1/organizations/${orgId}/api-keys`, {
        body: { name: `${role} key`, role },
      });
      if (res.statusCode !== 201) throw new Error(`orgKey: ${res.statusCode} ${res.body}`);
      return res.json().key;
    },
    close: () => runtime.close(),
  };
  afterAll(() => app.close());
  return app;
}

/** Waits for a condition with a deadline instead of sleeping. */
export async function waitFor<T>(
  check: () => Promise<T | undefined | null | false> | T | undefined | null | false,
  { timeoutMs = 10_000, intervalMs = 20 } = {},
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error("waitFor: condition not met before the deadline");
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/**
 * Two service instances — each its own runtime, connection pool, ingest engine and caches — on one
 * new PostgreSQL test database, closed after the suite. For `describe.runIf(onPostgres)` suites:
 * PGlite is one process. (Vitest still runs a skipped suite's body to collect it; on PGlite runs
 * each instance then gets an in-memory database of its own, and no test uses them.)
 */
export async function twoInstances(
  options: { env?: Record<string, string>; clock?: Clock; poolSize?: number } = {},
): Promise<[Runtime, Runtime]> {
  const url = await testDatabaseUrl();
  const config = loadConfig({
    LOG_LEVEL: "silent",
    TALLY_PUBLIC_URL: "http://tally.test",
    ...options.env,
  });
  const runtimes: Runtime[] = [];
  afterAll(async () => {
    for (const r of runtimes) await r.close();
  });
  for (let i = 0; i < 2; i++) {
    runtimes.push(
      await createRuntime(config, {
        database: await openDatabase({ url, poolSize: options.poolSize ?? 5 }),
        clock: options.clock,
        logger: createLogger("silent"),
        workers: false,
      }),
    );
  }
  return runtimes as [Runtime, Runtime];
}

type Operation = { method: string; pattern: RegExp; params: number; statuses: Set<string> };
const operations = new WeakMap<Runtime, Operation[]>();

/**
 * Every answer a test receives must be one its operation documents in `/openapi.json`: the
 * document has to describe every route exactly, errors included.
 */
function assertDocumented(runtime: Runtime, method: string, url: string, status: number): void {
  let ops = operations.get(runtime);
  if (!ops) {
    const doc = runtime.app.swagger() as {
      paths: Record<string, Record<string, { responses?: Record<string, unknown> }>>;
    };
    ops = [];
    for (const [path, methods] of Object.entries(doc.paths)) {
      const source = path.replace(/[.*+?^$()|[\]\\]/g, "\\$&").replace(/\{[^}]+\}/g, "[^/]+");
      for (const [m, op] of Object.entries(methods)) {
        ops.push({
          method: m.toUpperCase(),
          pattern: new RegExp(`^${source}$`),
          params: (path.match(/\{/g) ?? []).length,
          statuses: new Set(Object.keys(op.responses ?? {})),
        });
      }
    }
    // A literal path wins over a template that also matches (`/transactions.csv`).
    ops.sort((a, b) => a.params - b.params);
    operations.set(runtime, ops);
  }
  const path = url.split("?")[0]!;
  const op = ops.find((o) => o.method === method && o.pattern.test(path));
  if (!op) return; // unknown routes, the web pages
  const s = String(status);
  if (op.statuses.has(s) || op.statuses.has(`${s[0]}XX`) || op.statuses.has("default")) return;
  throw new Error(
    `${method} ${path} answered ${status}, which /openapi.json does not document for it (${[...op.statuses].join(", ")})`,
  );
}
