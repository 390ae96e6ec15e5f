import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { inject } from "vitest";
import { type Database, openDatabase } from "../../src/db/index.js";
import { adminQuery } from "./global-setup.js";

export const TEST_DATABASE_URL = process.env.TEST_DATABASE_URL ?? null;
export const onPostgres = TEST_DATABASE_URL !== null;

let templateBlob: Blob | null = null;

/** A fresh, migrated database for one test file: a PGlite clone, or a PostgreSQL database. */
export async function testDatabase(options: { poolSize?: number } = {}): Promise<Database> {
  const url = await testDatabaseUrl();
  if (url) return openDatabase({ url, poolSize: options.poolSize ?? 10 });
  templateBlob ??= new Blob([readFileSync(inject("pgliteTemplate"))]);
  return openDatabase({ url: null, loadDataDir: templateBlob });
}

/** PostgreSQL only: a new database cloned from the migrated template; null on PGlite runs. */
export async function testDatabaseUrl(): Promise<string | null> {
  if (!TEST_DATABASE_URL) return null;
  const template = inject("pgTemplate");
  if (!template) throw new Error("global setup did not build a PostgreSQL template");
  const name = `tally_t_${randomBytes(6).toString("hex")}`;
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
  const name = `tally_t_${randomBytes(6).toString("hex")}`;
  await adminQuery(TEST_DATABASE_URL, `create database ${name}`);
  const u = new URL(TEST_DATABASE_URL);
  u.pathname = `/${name}`;
  return u.toString();
}
