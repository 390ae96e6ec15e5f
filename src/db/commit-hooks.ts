import { AsyncLocalStorage } from "node:async_hooks";
import {
  CompiledQuery,
  type DatabaseConnection,
  type Dialect,
  type Driver,
  type QueryResult,
} from "kysely";

/**
 * A statement run inside every transaction that commits a write, just before its COMMIT, for as
 * long as an async context is marked with it. The idempotency layer uses it to record, atomically
 * with a request's effects, that the request committed something (`src/app/idempotency.ts`).
 *
 * Explicit transactions run the hook before COMMIT. A write outside any transaction (an
 * autocommit INSERT/UPDATE/DELETE) is wrapped in one, so it is covered too.
 */
export type CommitHook = (connection: DatabaseConnection) => Promise<void>;

const current = new AsyncLocalStorage<CommitHook | null>();

/** Runs `fn` with `hook` applied to every transaction it (and what it awaits) commits. */
export function withCommitHook<T>(hook: CommitHook, fn: () => T): T {
  return current.run(hook, fn);
}

/** Runs `fn` outside any hook: for work started by one request on behalf of many (the engine). */
export function withoutCommitHook<T>(fn: () => T): T {
  // Only when there is a hook to leave: the first `run` turns on Node's promise hooks for the
  // whole process, a cost every promise pays, which requests without an Idempotency-Key never
  // need to.
  return current.getStore() ? current.run(null, fn) : fn();
}

/** The dialect with a driver that applies the current hook. */
export function hookedDialect(dialect: Dialect): Dialect {
  return {
    createAdapter: () => dialect.createAdapter(),
    createQueryCompiler: () => dialect.createQueryCompiler(),
    createIntrospector: (db) => dialect.createIntrospector(db),
    createDriver: () => hookedDriver(dialect.createDriver()),
  };
}

const WRITE_NODES = new Set([
  "InsertQueryNode",
  "UpdateQueryNode",
  "DeleteQueryNode",
  "MergeQueryNode",
]);
// A raw `with …` may hold data-modifying CTEs (`writeTogether`): treated as a write.
const RAW_WRITE = /^\s*(insert|update|delete|merge|with)\b/i;

function isWrite(query: CompiledQuery): boolean {
  const kind = query.query?.kind;
  if (kind && WRITE_NODES.has(kind)) return true;
  return kind === "RawNode" && RAW_WRITE.test(query.sql);
}

class HookedConnection implements DatabaseConnection {
  inTransaction = false;
  constructor(readonly inner: DatabaseConnection) {}

  async executeQuery<R>(query: CompiledQuery): Promise<QueryResult<R>> {
    const hook = current.getStore();
    if (!hook || this.inTransaction || !isWrite(query)) return this.inner.executeQuery<R>(query);
    await this.inner.executeQuery(CompiledQuery.raw("begin"));
    try {
      const result = await this.inner.executeQuery<R>(query);
      await hook(this.inner);
      await this.inner.executeQuery(CompiledQuery.raw("commit"));
      return result;
    } catch (error) {
      await this.inner.executeQuery(CompiledQuery.raw("rollback")).catch(() => {});
      throw error;
    }
  }

  streamQuery<R>(query: CompiledQuery, chunkSize: number): AsyncIterableIterator<QueryResult<R>> {
    return this.inner.streamQuery<R>(query, chunkSize);
  }
}

function hookedDriver(inner: Driver): Driver {
  const unwrap = (c: DatabaseConnection) => (c as HookedConnection).inner;
  const driver: Driver = {
    init: (options) => inner.init(options),
    acquireConnection: async (options) =>
      new HookedConnection(await inner.acquireConnection(options)),
    async beginTransaction(connection, settings) {
      await inner.beginTransaction(unwrap(connection), settings);
      (connection as HookedConnection).inTransaction = true;
    },
    async commitTransaction(connection) {
      try {
        const hook = current.getStore();
        if (hook) await hook(unwrap(connection));
        await inner.commitTransaction(unwrap(connection));
      } finally {
        (connection as HookedConnection).inTransaction = false;
      }
    },
    async rollbackTransaction(connection) {
      try {
        await inner.rollbackTransaction(unwrap(connection));
      } finally {
        (connection as HookedConnection).inTransaction = false;
      }
    },
    releaseConnection: (connection, options) =>
      inner.releaseConnection(unwrap(connection), options),
    destroy: (options) => inner.destroy(options),
  };
  const { savepoint, rollbackToSavepoint, releaseSavepoint } = inner;
  if (savepoint)
    driver.savepoint = (c, name, compile) => savepoint.call(inner, unwrap(c), name, compile);
  if (rollbackToSavepoint) {
    driver.rollbackToSavepoint = (c, name, compile) =>
      rollbackToSavepoint.call(inner, unwrap(c), name, compile);
  }
  if (releaseSavepoint) {
    driver.releaseSavepoint = (c, name, compile) =>
      releaseSavepoint.call(inner, unwrap(c), name, compile);
  }
  return driver;
}
