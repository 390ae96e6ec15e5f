import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, inject, onTestFinished } from "vitest";
import { type Database, openDatabase } from "../../src/db/index.js";
import { adminQuery } from "./global-setup.js";

/** Databases of this run only: `tally_t_<run>_…`, dropped by the global teardown. */
function runPrefix(): string {
  const template = inject("pgTemplate");
  if (!template) throw new Error("global setup did not build a PostgreSQL template");
  return `tally_t_${template.replace(/^tally_tpl_/, "")}_`;
}

export const TEST_DATABASE_URL = process.env.TEST_DATABASE_URL || null;
export const onPostgres = TEST_DATABASE_URL !== null;

let templateBlob: Blob | null = null;

/** A fresh, migrated database for one test file: a PGlite clone, or a PostgreSQL database. */
export async function testDatabase(options: { poolSize?: number } = {}): Promise<Database> {
  const url = await testDatabaseUrl();
  if (url) return openDatabase({ url, poolSize: options.poolSize ?? 10 });
  templateBlob ??= new Blob([readFileSync(inject("pgliteTemplate"))]);
  return openDatabase({ url: null, loadDataDir: templateBlob });
}

/**
 * A temporary PGlite data directory holding the migrated template (initialising an empty one
 * takes several seconds), removed after the file. For tests of processes that open a data dir.
 */
export async function pgliteDataDir(
  seed: (database: Database) => Promise<void> = async () => {},
): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), "tally-datadir-"));
  removeAfterwards(dir);
  templateBlob ??= new Blob([readFileSync(inject("pgliteTemplate"))]);
  const seeded = await openDatabase({ url: null, dataDir: dir, loadDataDir: templateBlob });
  try {
    await seed(seeded);
  } finally {
    await seeded.close();
  }
  return dir;
}

/** Removes a temporary directory after the current test, or after the file outside a test. */
export function removeAfterwards(dir: string): void {
  const remove = () => rmSync(dir, { recursive: true, force: true });
  try {
    onTestFinished(remove);
  } catch {
    afterAll(remove);
  }
}

/** PostgreSQL only: a new database cloned from the migrated template; null on PGlite runs. */
export async function testDatabaseUrl(): Promise<string | null> {
  if (!TEST_DATABASE_URL) return null;
  const template = inject("pgTemplate");
  if (!template) throw new Error("global setup did not build a PostgreSQL template");
  const name = `${runPrefix()}${randomBytes(6).toString("hex")}`;
  for (let attempt = 0; ; attempt++) {
    try {
      await adminQuery(TEST_DATABASE_URL, `create database ${name} template ${template}`);
      break;
    } catch (error) {
      // Two files cloning at the same instant: "source database is being accessed by other users".
      if (attempt >= 20) throw error;
      await new Promise((r) => setTimeout(r, 100 + Math.random() * 200));
    }
  }
  const u = new URL(TEST_DATABASE_URL);
  u.pathname = `/${name}`;
  return u.toString();
}

/** An empty (unmigrated) PostgreSQL database, for migration tests. */
export async function emptyPostgresDatabaseUrl(): Promise<string> {
  if (!TEST_DATABASE_URL) throw new Error("PostgreSQL only");
  const name = `${runPrefix()}${randomBytes(6).toString("hex")}`;
  await adminQuery(TEST_DATABASE_URL, `create database ${name}`);
  const u = new URL(TEST_DATABASE_URL);
  u.pathname = `/${name}`;
  return u.toString();
}
