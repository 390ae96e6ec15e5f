import { spawn } from "node:child_process";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { sql } from "kysely";
import { describe, expect, it } from "vitest";
import { openDatabase } from "../src/db/index.js";
import { onPostgres, pgliteDataDir, testDatabaseUrl } from "./support/db.js";

const ROOT = resolve(fileURLToPath(import.meta.url), "../..");

function runCli(args: string[], env: Record<string, string>) {
  const base = Object.fromEntries(
    Object.entries(process.env).filter(
      ([k]) => !/^(TALLY_|STRIPE_|DATABASE_URL$|PORT$|HOST$|LOG_LEVEL$)/.test(k),
    ),
  );
  return new Promise<{ code: number | null; stdout: string; stderr: string }>((done) => {
    const child = spawn(process.execPath, [join(ROOT, "bin/tally.mjs"), ...args], {
      cwd: ROOT,
      env: { ...base, PORT: "0", LOG_LEVEL: "warn", ...env },
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.on("exit", (code) => {
      clearTimeout(timer);
      done({ code, stdout, stderr });
    });
  });
}

const STACK = /\n\s+at /;

describe("start-up errors about the database: one clear line, no stack trace", {
  timeout: 120_000,
}, () => {
  it(`(${onPostgres ? "PostgreSQL" : "PGlite"}) a database migrated by a newer version of Tally`, async () => {
    let env: Record<string, string>;
    const future = sql`insert into kysely_migration (name, timestamp) values ('0099_from_the_future', now()::text)`;
    if (onPostgres) {
      const url = (await testDatabaseUrl())!;
      const database = await openDatabase({ url, poolSize: 1 });
      await future.execute(database.db);
      await database.close();
      env = { DATABASE_URL: url };
    } else {
      const dir = await pgliteDataDir(async (database) => {
        await future.execute(database.db);
      });
      env = { TALLY_DATA_DIR: dir, TALLY_DEMO: "false" };
    }
    for (const cmd of [["start"], ["migrate"]]) {
      const { code, stderr } = await runCli(cmd, env);
      expect(code, cmd[0]).toBe(1);
      expect(stderr).not.toMatch(STACK);
      expect(stderr).toContain(
        "The database was migrated by a newer version of Tally (it has migration 0099_from_the_future",
      );
    }
  });

  it.runIf(onPostgres)("DATABASE_URL asking for TLS from a server without it", async () => {
    const url = new URL((await testDatabaseUrl())!);
    url.searchParams.set("sslmode", "require");
    const { code, stderr } = await runCli(["start"], { DATABASE_URL: url.toString() });
    expect(code).toBe(1);
    expect(stderr).not.toMatch(STACK);
    expect(stderr).toContain("Cannot set up TLS to the database");
  });
});
