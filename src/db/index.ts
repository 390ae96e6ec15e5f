import { closeSync, mkdirSync, openSync, readFileSync, rmSync, writeSync } from "node:fs";
import { join, resolve } from "node:path";
import { PGlite, types as pgliteTypes } from "@electric-sql/pglite";
import { Kysely, PostgresDialect, sql } from "kysely";
import { type Migration, type MigrationProvider, Migrator } from "kysely/migration";
import pg from "pg";
import { migrations } from "./migrations/index.js";
import { PGliteDialect } from "./pglite-dialect.js";
import type { DB } from "./schema.js";

export type Db = Kysely<DB>;

export interface Database {
  readonly db: Db;
  readonly kind: "postgres" | "pglite";
  /** The embedded instance (PGlite only): dumps, direct access in tests. */
  readonly pglite?: PGlite;
  close(): Promise<void>;
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

export interface OpenOptions {
  /** `postgres://…`; null → embedded PGlite. */
  url: string | null;
  /** PGlite data directory; null → in memory. */
  dataDir?: string | null;
  /** PGlite: start from a dump made by `dumpDataDir` (test templates). */
  loadDataDir?: Blob;
  poolSize?: number;
  onInitialising?: () => void;
}

export async function openDatabase(options: OpenOptions): Promise<Database> {
  if (options.url) {
    const pool = new pg.Pool({ connectionString: options.url, max: options.poolSize ?? 10 });
    // An idle client losing its connection (database restart) must not crash the process.
    pool.on("error", () => {});
    const db = new Kysely<DB>({ dialect: new PostgresDialect({ pool }) });
    return { db, kind: "postgres", close: () => db.destroy() };
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
    const db = new Kysely<DB>({ dialect: new PGliteDialect(pglite) });
    return {
      db,
      kind: "pglite",
      pglite,
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
      const pid = Number(readFileSync(path, "utf8").trim());
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

/** True when the database answers and every known migration is applied. */
export async function isReady(db: Db): Promise<boolean> {
  try {
    const { rows } = await sql<{ n: string }>`select count(*) as n from kysely_migration`.execute(
      db,
    );
    return Number(rows[0]?.n) >= Object.keys(migrations).length;
  } catch {
    return false;
  }
}
