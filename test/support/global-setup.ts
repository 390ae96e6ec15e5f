import { randomBytes } from "node:crypto";
import { rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import type { TestProject } from "vitest/node";
import { migrateToLatest, openDatabase } from "../../src/db/index.js";

declare module "vitest" {
  export interface ProvidedContext {
    pgliteTemplate: string;
    pgTemplate: string | null;
  }
}

/**
 * Builds one migrated database per run — a PGlite data-dir dump (PGlite's cold start is seconds)
 * and, with TEST_DATABASE_URL, a PostgreSQL template database — that every test file clones.
 */
export default async function setup(project: TestProject) {
  const pglite = await openDatabase({ url: null });
  await migrateToLatest(pglite.db);
  const file = join(
    tmpdir(),
    `tally-template-${process.pid}-${randomBytes(4).toString("hex")}.tar`,
  );
  const dump = await pglite.pglite!.dumpDataDir("none");
  writeFileSync(file, Buffer.from(await dump.arrayBuffer()));
  await pglite.close();
  project.provide("pgliteTemplate", file);

  const url = process.env.TEST_DATABASE_URL;
  let template: string | null = null;
  if (url) {
    template = `tally_tpl_${randomBytes(4).toString("hex")}`;
    await adminQuery(url, `create database ${template}`);
    const u = new URL(url);
    u.pathname = `/${template}`;
    const db = await openDatabase({ url: u.toString(), poolSize: 1 });
    await migrateToLatest(db.db);
    await db.close();
  }
  project.provide("pgTemplate", template);

  return async () => {
    rmSync(file, { force: true });
    if (url && template) {
      const { rows } = await adminQuery(
        url,
        "select datname from pg_database where datname like $1 or datname = $2",
        [`tally\\_t\\_${template.replace(/^tally_tpl_/, "")}\\_%`, template],
      );
      for (const { datname } of rows as { datname: string }[]) {
        await adminQuery(url, `drop database if exists ${datname} with (force)`);
      }
    }
  };
}

export async function adminQuery(url: string, text: string, params: unknown[] = []) {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await client.query(text, params);
  } finally {
    await client.end();
  }
}
