import { closeSync, mkdirSync, openSync, readFileSync, rmSync, statSync, writeSync } from "node:fs";
import { join, resolve } from "node:path";
import { PGlite, types as pgliteTypes } from "@electric-sql/pglite";
import { Kysely, PostgresDialect, sql } from "kysely";
import { type Migration, type MigrationProvider, Migrator } from "kysely/migration";
import pg from "pg";
import { hookedDialect } from "./commit-hooks.js";
import { migrations } from "./migrations/index.js";
import { PGliteDialect } from "./pglite-dialect.js";
import type { DB } from "./schema.js";

export type Db = Kysely<DB>;

/**
 * Runs `fn` on one snapshot, for a read made of several statements that must agree: in `db` when
 * it is already a transaction (the caller chose its isolation), else in a new repeatable-read one.
 */
export function inSnapshot<T>(db: Db, fn: (tx: Db) => Promise<T>): Promise<T> {
  return db.isTransaction
    ? fn(db)
    : db.transaction().setIsolationLevel("repeatable read").execute(fn);
}

export interface Database {
  readonly db: Db;
  /**
   * For the ingest engine's one-statement autocommit flushes, and nothing else: PostgreSQL
   * connections of their own (as many as flushes run at once) on which a prepared statement
   * always uses its generic plan. PGlite: `db`.
   */
  readonly flushDb: Db;
  readonly kind: "postgres" | "pglite";
  /** The embedded instance (PGlite only): dumps, direct access in tests. */
  readonly pglite?: PGlite;
  /**
   * Follows the notifications of `channel`: `onMessage` for each, `onState(true)` once listening
   * (again) and `onState(false)` when the listening connection is lost — nothing is heard until
   * the next `onState(true)`. PostgreSQL: a dedicated connection, re-established with backoff,
   * with a heartbeat (`select 1` every `heartbeatMs`, default 5 s): a connection that stops
   * answering (a host or a firewall gone silent, which TCP itself notices only after minutes)
   * is given up after at most two beats. PGlite: in process, live from the start. Resolves to a
   * function that stops listening; `close` stops every listener too.
   */
  listen(
    channel: string,
    handlers: ListenHandlers,
    options?: { heartbeatMs?: number },
  ): Promise<() => Promise<void>>;
  close(): Promise<void>;
}

export interface ListenHandlers {
  onMessage(): void;
  onState(live: boolean): void;
}

/**
 * Both drivers return the same JS types: `numeric` and `int8` as strings (exactness is the
 * caller's business: credits go through `creditsFromDb`, counters through `BigInt`/`Number`),
 * `date` as `YYYY-MM-DD` text, `timestamptz` as `Date`, `jsonb` parsed.
 */
const OID = { INT8: 20, NUMERIC: 1700, DATE: 1082 } as const;
const asText = (value: string) => value;
pg.types.setTypeParser(OID.INT8, asText);
pg.types.setTypeParser(OID.NUMERIC, asText);
// A calendar date has no time zone: keep "2026-11-01" rather than a local-midnight Date.
pg.types.setTypeParser(OID.DATE, asText);
const PGLITE_PARSERS = {
  [pgliteTypes.INT8]: asText,
  [pgliteTypes.NUMERIC]: asText,
  [pgliteTypes.DATE]: asText,
};

/** PostgreSQL connections for the ingest engine's autocommit flushes (its flushes in flight). */
export const FLUSH_CONNECTIONS = 2;
export const FLUSH_APPLICATION_NAME = "tally ingest flush";

export interface OpenOptions {
  /** `postgres://…`; null → embedded PGlite. */
  url: string | null;
  /** PGlite data directory; null → in memory. */
  dataDir?: string | null;
  /** PGlite: start from a dump made by `dumpDataDir` (test templates). */
  loadDataDir?: Blob;
  poolSize?: number;
  /** PostgreSQL: how long to wait for a connection (default 10 s). */
  connectTimeoutMs?: number;
  onInitialising?: () => void;
}

export async function openDatabase(options: OpenOptions): Promise<Database> {
  if (options.url) {
    const { url, connectTimeoutMs } = options;
    const db = postgresDb(url, { max: options.poolSize ?? 10, connectTimeoutMs });
    // The flush statement's parameters are arrays, one per column: planned with their values,
    // it was planned again on every execution, its estimated cost always below the generic
    // plan's (which assumes 10 rows per array) — 15–25 % of PostgreSQL's CPU per event
    // (bench/results). Its generic plan is the same index lookups and nested loops. The setting
    // is per connection and would apply to every statement with parameters (some need their
    // values to be planned: an ON CONFLICT on a partial index), hence connections of its own.
    const flushDb = postgresDb(url, {
      max: FLUSH_CONNECTIONS,
      connectTimeoutMs,
      applicationName: FLUSH_APPLICATION_NAME,
      setup: "set plan_cache_mode = force_generic_plan",
    });
    const listeners = new Set<() => Promise<void>>();
    return {
      db,
      flushDb,
      kind: "postgres",
      async listen(channel, handlers, listenOptions) {
        const stop = listenPostgres(url, channel, handlers, listenOptions?.heartbeatMs ?? 5_000);
        listeners.add(stop);
        return () => {
          listeners.delete(stop);
          return stop();
        };
      },
      async close() {
        await Promise.all([...listeners].map((stop) => stop()));
        await Promise.all([db.destroy(), flushDb.destroy()]);
      },
    };
  }

  let unlock = () => {};
  let dataDir: string | undefined;
  if (options.dataDir) {
    dataDir = resolve(options.dataDir);
    mkdirSync(dataDir, { recursive: true });
    unlock = lockDataDir(dataDir);
    if (isEmptyDataDir(dataDir)) options.onInitialising?.();
  }
  try {
    const pglite = await PGlite.create({
      dataDir,
      loadDataDir: options.loadDataDir,
      parsers: PGLITE_PARSERS,
    });
    const db = new Kysely<DB>({ dialect: hookedDialect(new PGliteDialect(pglite)) });
    return {
      db,
      flushDb: db,
      kind: "pglite",
      pglite,
      async listen(channel, handlers) {
        const unlisten = await pglite.listen(checkChannel(channel), () => handlers.onMessage());
        handlers.onState(true);
        return () => unlisten();
      },
      async close() {
        await db.destroy();
        await pglite.close();
        unlock();
      },
    };
  } catch (error) {
    unlock();
    throw error;
  }
}

/** A Kysely instance over a pool of PostgreSQL connections. */
function postgresDb(
  url: string,
  pool: { max: number; connectTimeoutMs?: number; applicationName?: string; setup?: string },
): Db {
  const connections = new pg.Pool({
    connectionString: url,
    max: pool.max,
    // How the connections show in pg_stat_activity (the pool's own, when given).
    application_name: pool.applicationName,
    // Unreachable database (or no free client for this long): fail the request with a 503
    // instead of waiting forever.
    connectionTimeoutMillis: pool.connectTimeoutMs ?? 10_000,
  });
  // A client whose connection dies (database restart, pg_terminate_backend) emits 'error'.
  // An idle client's error goes to the pool's listener; a checked-out client has no listener
  // of its own, and an unhandled 'error' event is an uncaught exception that ends the process.
  // The query in flight fails by itself, and the pool drops the dead client on release.
  connections.on("error", () => {});
  connections.on("connect", (client) => {
    client.on("error", () => {});
    prepareMarked(client);
    // Queued before the client's first query; a failure shows in that query.
    if (pool.setup) client.query(pool.setup).catch(() => {});
  });
  return new Kysely<DB>({ dialect: hookedDialect(new PostgresDialect({ pool: connections })) });
}

/**
 * A statement whose text ends with this comment is run as a named prepared statement on
 * PostgreSQL: parsed and planned once per connection, not per execution. For statements run
 * often with a text that does not vary (array parameters instead of value lists), such as the
 * ingest engine's one statement per flush. PGlite runs it as any other.
 */
export const PREPARED = "/* tally:prepared */";

/** Texts seen, with their statement names; beyond the bound, new texts are not prepared. */
const preparedNames = new Map<string, string>();
const MAX_PREPARED = 500;

function prepareMarked(client: pg.PoolClient): void {
  const query = client.query.bind(client) as (...args: unknown[]) => unknown;
  (client as { query: unknown }).query = (
    config: unknown,
    values?: unknown,
    callback?: unknown,
  ) => {
    if (typeof config === "string" && Array.isArray(values) && config.endsWith(PREPARED)) {
      let name = preparedNames.get(config);
      if (name === undefined && preparedNames.size < MAX_PREPARED) {
        name = `tally_${preparedNames.size + 1}`;
        preparedNames.set(config, name);
      }
      if (name !== undefined) return query({ name, text: config, values }, callback);
    }
    return query(config, values, callback);
  };
}

function checkChannel(channel: string): string {
  if (!/^[a-z_]+$/.test(channel)) throw new Error(`invalid channel name ${channel}`);
  return channel;
}

function listenPostgres(
  url: string,
  channel: string,
  handlers: ListenHandlers,
  heartbeatMs: number,
) {
  checkChannel(channel);
  let stopped = false;
  let current: pg.Client | null = null;
  let retryMs = 100;
  let timer: NodeJS.Timeout | null = null;
  let heartbeat: NodeJS.Timeout | null = null;
  const stopHeartbeat = () => {
    if (heartbeat) clearInterval(heartbeat);
    heartbeat = null;
  };
  /** Gives a connection up at once: its socket destroyed, `end` follows (no goodbye to wait for). */
  const drop = (client: pg.Client) =>
    (
      client as unknown as { connection: { stream: { destroy(): void } } }
    ).connection.stream.destroy();
  const retry = () => {
    if (stopped || timer) return;
    timer = setTimeout(() => {
      timer = null;
      void connect();
    }, retryMs);
    retryMs = Math.min(retryMs * 2, 5_000);
  };
  const connect = async () => {
    // keepAlive: a connection silently dropped by a firewall or NAT is noticed, not kept.
    const client = new pg.Client({
      connectionString: url,
      connectionTimeoutMillis: 10_000,
      keepAlive: true,
      keepAliveInitialDelayMillis: 10_000,
    });
    client.on("error", () => {}); // an `end` follows
    client.on("notification", (n) => {
      if (n.channel === channel) handlers.onMessage();
    });
    client.on("end", () => {
      if (current !== client) return;
      current = null;
      stopHeartbeat();
      handlers.onState(false);
      retry();
    });
    try {
      await client.connect();
      await client.query(`listen ${channel}`);
    } catch {
      client.end().catch(() => {});
      retry();
      return;
    }
    if (stopped) {
      await client.end().catch(() => {});
      return;
    }
    current = client;
    retryMs = 100;
    let beating = false;
    heartbeat = setInterval(() => {
      // The previous beat is still unanswered a whole interval later: the connection is dead.
      // Checked after the event loop's pending reads (setImmediate), so a loop that merely
      // stalled does not drop a connection whose answer is waiting to be read.
      if (beating) {
        setImmediate(() => {
          if (beating) drop(client);
        });
        return;
      }
      beating = true;
      client.query("select 1").then(
        () => {
          beating = false;
        },
        () => drop(client),
      );
    }, heartbeatMs).unref();
    handlers.onState(true);
  };
  void connect();
  return async () => {
    stopped = true;
    if (timer) clearTimeout(timer);
    stopHeartbeat();
    const client = current;
    current = null;
    if (!client) return;
    // A connection gone silent would never acknowledge the goodbye: give it a second.
    const ended = client.end().catch(() => {});
    const late = setTimeout(() => drop(client), 1_000);
    await ended;
    clearTimeout(late);
  };
}

function isEmptyDataDir(dir: string): boolean {
  try {
    readFileSync(join(dir, "PG_VERSION"));
    return false;
  } catch {
    return true;
  }
}

export class DataDirLockedError extends Error {}

/**
 * PGlite has no lock of its own and two processes on one data directory corrupt it. We hold
 * `tally.lock` (created exclusively, holding our pid) for as long as the database is open; a
 * lock whose process is gone is stale and taken over.
 */
export function lockDataDir(dir: string): () => void {
  const path = join(dir, "tally.lock");
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(path, "wx");
      writeSync(fd, String(process.pid));
      closeSync(fd);
      let released = false;
      const release = () => {
        if (released) return;
        released = true;
        process.off("exit", release);
        rmSync(path, { force: true });
      };
      process.on("exit", release);
      return release;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
      const text = readFileSync(path, "utf8").trim();
      // Empty: another process has just created it and is writing its pid — not a stale lock.
      if (text === "" && Date.now() - statSync(path).mtimeMs < 10_000) {
        throw new DataDirLockedError(
          `The embedded database in ${dir} is being opened by another process. Stop it first, or use another TALLY_DATA_DIR.`,
        );
      }
      const pid = Number(text);
      if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && isAlive(pid)) {
        throw new DataDirLockedError(
          `The embedded database in ${dir} is in use by process ${pid}. Stop it first, or use another TALLY_DATA_DIR.`,
        );
      }
      rmSync(path, { force: true });
    }
  }
  throw new DataDirLockedError(`Could not lock ${dir}`);
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

const provider: MigrationProvider = {
  async getMigrations(): Promise<Record<string, Migration>> {
    return migrations;
  },
};

/**
 * Runs pending migrations. Kysely's Migrator takes a PostgreSQL advisory lock, so several
 * instances starting together apply each migration exactly once.
 */
export async function migrateToLatest(db: Db): Promise<string[]> {
  const migrator = new Migrator({ db, provider });
  const { error, results } = await migrator.migrateToLatest();
  if (error) throw error;
  return (results ?? []).filter((r) => r.status === "Success").map((r) => r.migrationName);
}

/**
 * True when the database answers within `timeoutMs` and its migrations are exactly the known
 * ones: all applied, and none this build does not know (a newer version migrated the database,
 * and this one's writes may no longer fit it). A probe must answer promptly, also while
 * connections to the database hang.
 */
export async function isReady(db: Db, timeoutMs = 5_000): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), timeoutMs);
  });
  const known = Object.keys(migrations);
  const probe = sql<{ n: string; unknown: string }>`
    select count(*) as n, count(*) filter (where not (name = any(${known}))) as unknown
      from kysely_migration`
    .execute(db)
    .then(({ rows }) => Number(rows[0]?.n) === known.length && Number(rows[0]?.unknown) === 0)
    .catch(() => false);
  try {
    return await Promise.race([probe, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

const CONNECTION_LOST = [
  "Connection terminated",
  "not queryable",
  "connection has been discarded",
  "timeout exceeded when trying to connect",
];
const NETWORK_ERRORS = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENOTFOUND",
  "EAI_AGAIN",
]);

/**
 * A value too large for its column (SQLSTATE 22003, e.g. a sum of credits reaching 10^26): the
 * input's magnitudes are to blame, and the statement changed nothing.
 */
export function isOutOfRange(error: unknown): boolean {
  return (error as { code?: unknown } | null)?.code === "22003";
}

/**
 * A transaction aborted by a concurrent one (SQLSTATE 40001 serialization failure, 40P01
 * deadlock): it changed nothing, and the same request can simply be tried again.
 */
export function isWriteConflict(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return code === "40001" || code === "40P01";
}

/**
 * True for errors that say the database cannot be reached or the connection was lost (server
 * restart, terminated backend, network), as opposed to errors of the query itself: SQLSTATE class
 * 08 (connection exception), 57P01–57P03 (shutdown, crash, not accepting connections yet), 53300
 * (too many connections), socket errors, and the drivers' own connection-loss errors. Such a
 * request failed without effect or with its outcome unknown (a lost COMMIT acknowledgement):
 * the client should retry, idempotently.
 */
export function isDatabaseUnavailable(error: unknown): boolean {
  for (let e = error, depth = 0; e && typeof e === "object" && depth < 5; depth++) {
    const { code, message, errors, cause } = e as {
      code?: unknown;
      message?: unknown;
      errors?: unknown;
      cause?: unknown;
    };
    if (typeof code === "string") {
      if (code.startsWith("08") || /^57P0[123]$/.test(code) || code === "53300") return true;
      if (NETWORK_ERRORS.has(code)) return true;
    }
    if (typeof message === "string" && CONNECTION_LOST.some((m) => message.includes(m))) {
      return true;
    }
    if (Array.isArray(errors) && errors.some((inner) => isDatabaseUnavailable(inner))) return true;
    e = cause;
  }
  return false;
}
