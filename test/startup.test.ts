import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, utimesSync, writeFileSync } from "node:fs";
import { type AddressInfo, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { sql } from "kysely";
import { afterAll, describe, expect, it } from "vitest";
import { loadConfig } from "../src/app/config.js";
import { createLogger, createRuntime } from "../src/app/runtime.js";
import { type Database, DataDirLockedError, lockDataDir, openDatabase } from "../src/db/index.js";
import { migrations } from "../src/db/migrations/index.js";
import { waitFor } from "./support/app.js";
import {
  emptyPostgresDatabaseUrl,
  onPostgres,
  pgliteDataDir,
  removeAfterwards,
  testDatabaseUrl,
} from "./support/db.js";

const ROOT = resolve(fileURLToPath(import.meta.url), "../..");
const ADMIN_KEY = "startup-test-admin-key-0123456789";

/** The parent's environment without any Tally configuration, plus `env`. */
function cleanEnv(env: Record<string, string>): NodeJS.ProcessEnv {
  const base = Object.fromEntries(
    Object.entries(process.env).filter(
      ([k]) => !/^(TALLY_|STRIPE_|DATABASE_URL$|PORT$|HOST$|LOG_LEVEL$)/.test(k),
    ),
  );
  return { ...base, ...env };
}

interface Cli {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<number | null>;
}

const children: ChildProcess[] = [];
afterAll(() => {
  for (const child of children) if (child.exitCode === null) child.kill("SIGKILL");
});

function startCli(args: string[], env: Record<string, string>): Cli {
  const child = spawn(process.execPath, [join(ROOT, "bin/tally.mjs"), ...args], {
    cwd: ROOT,
    env: cleanEnv(env),
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.push(child);
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (d) => {
    stdout += d;
  });
  child.stderr!.on("data", (d) => {
    stderr += d;
  });
  const exited = new Promise<number | null>((done) => child.on("exit", (code) => done(code)));
  return { child, stdout: () => stdout, stderr: () => stderr, exited };
}

async function runCli(args: string[], env: Record<string, string>) {
  const cli = startCli(args, env);
  const code = await cli.exited;
  return { code, stdout: cli.stdout(), stderr: cli.stderr() };
}

// Child processes start TypeScript through tsx and open databases: generous on a busy machine.
describe("startup", { timeout: 90_000 }, () => {
  it("shows the generated platform key even when the start then fails (a port in use)", async () => {
    const dir = await pgliteDataDir(); // migrated, no platform key yet
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, "127.0.0.1", resolve));
    const { port } = taken.address() as AddressInfo;
    let first: Awaited<ReturnType<typeof runCli>>;
    try {
      first = await runCli(["start"], {
        TALLY_DATA_DIR: dir,
        PORT: String(port),
        TALLY_DEMO: "false",
      });
    } finally {
      taken.close();
    }
    expect(first.code).toBe(1);
    expect(first.stderr).toContain("the port is already in use");
    const shown = /(tally_\S+)/.exec(first.stdout)?.[1];
    expect(shown, first.stdout).toBeDefined();
    const keys = await runCli(["keys", "list", "--platform", "--json"], { TALLY_DATA_DIR: dir });
    const stored = JSON.parse(keys.stdout).data as { key_prefix: string; revoked_at: null }[];
    expect(stored).toHaveLength(1);
    expect(shown!.startsWith(stored[0]!.key_prefix)).toBe(true);
  });

  it("seeds no demo data into a database with an operator's package, even without organisations", async () => {
    const dir = await pgliteDataDir();
    const base = {
      LOG_LEVEL: "silent",
      TALLY_DATA_DIR: dir,
      TALLY_ADMIN_KEY: "first-start-admin-key-0123456789abcdef",
    };
    const first = await createRuntime(loadConfig({ ...base, TALLY_DEMO: "false" }), {
      logger: createLogger("silent"),
      workers: false,
    });
    const created = await first.app.inject({
      method: "POST",
      url: "/v1/credit-packages",
      headers: { authorization: `Bearer ${base.TALLY_ADMIN_KEY}` },
      payload: { name: "Pro 100", credits: "100", price: "10.00" },
    });
    expect(created.statusCode).toBe(201);
    await first.close();

    // A restart without TALLY_DEMO (the default) puts no demo packages on sale.
    const second = await createRuntime(loadConfig(base), {
      logger: createLogger("silent"),
      workers: false,
    });
    try {
      const listed = await second.app.inject({
        method: "GET",
        url: "/v1/credit-packages",
        headers: { authorization: `Bearer ${base.TALLY_ADMIN_KEY}` },
      });
      expect(second.demo).toBeNull();
      expect((listed.json().data as { name: string }[]).map((p) => p.name)).toEqual(["Pro 100"]);
    } finally {
      await second.close();
    }
  });
  it("refuses bad configuration, listing every problem", async () => {
    const { code, stdout, stderr } = await runCli(["start"], {
      PORT: "abc",
      LOG_LEVEL: "loud",
      TALLY_ADMIN_KEY: "short",
      TALLY_PAYMENT_PROVIDER: "stripe",
    });
    expect(code).not.toBe(0);
    expect(code).not.toBeNull();
    expect(stderr).toContain("Invalid configuration");
    for (const problem of [
      'PORT must be an integer between 0 and 65535 (got "abc")',
      "LOG_LEVEL must be one of",
      "TALLY_ADMIN_KEY must be at least 24 characters",
      "STRIPE_SECRET_KEY is required",
    ]) {
      expect(stderr).toContain(problem);
    }
    // A configuration error is a message, not a crash.
    expect(stderr).not.toMatch(/\n\s+at /);
    expect(stdout).not.toContain("listening");
  });

  it("a second process cannot open an embedded data dir in use", async () => {
    const dataDir = await pgliteDataDir();
    const server = startCli(["start"], {
      PORT: "0",
      TALLY_DATA_DIR: dataDir,
      TALLY_ADMIN_KEY: ADMIN_KEY,
      LOG_LEVEL: "warn",
    });
    const url = await waitFor(
      () => {
        if (server.child.exitCode !== null) {
          throw new Error(`tally start exited: ${server.stderr()}`);
        }
        return /listening on (http:\/\/\S+)/.exec(server.stdout())?.[1];
      },
      { timeoutMs: 45_000 },
    );
    expect((await fetch(`${url}/healthz`)).status).toBe(200);

    const error = await openDatabase({ url: null, dataDir }).then(
      (db) => db.close().then(() => null),
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(DataDirLockedError);
    expect((error as Error).message).toContain(`process ${server.child.pid}`);
    const cli = await runCli(["keys", "create", "--platform"], { TALLY_DATA_DIR: dataDir });
    expect(cli.code).toBe(2);
    expect(cli.stderr).toContain(`in use by process ${server.child.pid}`);

    server.child.kill("SIGTERM");
    expect(await server.exited).toBe(0);
    // A clean shutdown releases the directory.
    expect(existsSync(join(dataDir, "tally.lock"))).toBe(false);
    lockDataDir(dataDir)();
  });

  it("an empty lock file (another process between creating it and writing its pid) is not taken over", async () => {
    const dir = mkdtempSync(join(tmpdir(), "tally-lock-"));
    removeAfterwards(dir);
    writeFileSync(join(dir, "tally.lock"), "");
    expect(() => lockDataDir(dir)).toThrow(DataDirLockedError);
    expect(existsSync(join(dir, "tally.lock"))).toBe(true);
    // One that stayed empty (its process died in between) is stale after a few seconds.
    const old = new Date(Date.now() - 60_000);
    utimesSync(join(dir, "tally.lock"), old, old);
    lockDataDir(dir)();
  });

  it("a lock left by a dead process is taken over", async () => {
    const dead = spawn(process.execPath, ["-e", ""]);
    await new Promise((done) => dead.on("exit", done));
    const dir = mkdtempSync(join(tmpdir(), "tally-lock-"));
    removeAfterwards(dir);
    writeFileSync(join(dir, "tally.lock"), String(dead.pid));
    const release = lockDataDir(dir);
    expect(existsSync(join(dir, "tally.lock"))).toBe(true);
    release();
    expect(existsSync(join(dir, "tally.lock"))).toBe(false);
  });

  describe.runIf(onPostgres)("on PostgreSQL", () => {
    it("two instances migrating one empty database at once apply each migration once", async () => {
      const url = await emptyPostgresDatabaseUrl();
      const config = loadConfig({
        DATABASE_URL: url,
        TALLY_ADMIN_KEY: ADMIN_KEY,
        LOG_LEVEL: "silent",
      });
      const start = () => createRuntime(config, { workers: false, logger: createLogger("silent") });
      const runtimes = await Promise.all([start(), start()]);
      try {
        const { rows } = await sql<{ name: string }>`select name from kysely_migration`.execute(
          runtimes[0]!.ctx.db,
        );
        expect(rows.map((r) => r.name).sort()).toEqual(Object.keys(migrations).sort());
        for (const runtime of runtimes) {
          expect((await runtime.app.inject({ url: "/readyz" })).statusCode).toBe(200);
          const res = await runtime.app.inject({
            url: "/v1/organizations",
            headers: { authorization: `Bearer ${ADMIN_KEY}` },
          });
          expect(res.statusCode).toBe(200);
        }
        // The configured admin key is registered once, however many instances start.
        const keys = await runtimes[0]!.ctx.db
          .selectFrom("api_keys")
          .select("id")
          .where("org_id", "is", null)
          .execute();
        expect(keys).toHaveLength(1);
      } finally {
        await Promise.all(runtimes.map((r) => r.close()));
      }
    });
  });

  describe("tally keys create", () => {
    const ORG = "org_01KCL1TEST0000000000000000";

    /** A migrated database holding one organisation, shared by the CLI and a runtime. */
    async function sharedDatabase(): Promise<Record<string, string>> {
      const seed = async ({ db }: Database) => {
        const now = new Date();
        await db
          .insertInto("organizations")
          .values({
            id: ORG,
            name: "CLI",
            external_id: "cli-org",
            plan: "professional",
            overdraft_limit: "0",
            metadata: "{}",
            created_at: now,
            updated_at: now,
          })
          .execute();
      };
      if (!onPostgres) return { TALLY_DATA_DIR: await pgliteDataDir(seed) };
      const url = (await testDatabaseUrl())!;
      const database = await openDatabase({ url, poolSize: 1 });
      await seed(database).finally(() => database.close());
      return { DATABASE_URL: url };
    }

    it("creates platform and organisation keys that authenticate", async () => {
      const env = await sharedDatabase();

      const platform = await runCli(["keys", "create", "--platform", "--json"], env);
      expect(platform.code, platform.stderr).toBe(0);
      const created = JSON.parse(platform.stdout);
      expect(created).toMatchObject({
        id: expect.stringMatching(/^key_/),
        org_id: null,
        role: "platform",
        key: expect.stringMatching(/^tally_/),
      });

      const read = await runCli(
        ["keys", "create", "--org", "ext:cli-org", "--role", "read", "--name", "ro", "--json"],
        env,
      );
      expect(read.code, read.stderr).toBe(0);
      const readKey = JSON.parse(read.stdout);
      expect(readKey).toMatchObject({
        org_id: ORG,
        role: "read",
        key: expect.stringMatching(/^tally_/),
      });

      // (PGlite is one process at a time: the runtime opens the directory after the CLI.)
      const runtime = await createRuntime(loadConfig({ ...env, LOG_LEVEL: "silent" }), {
        workers: false,
        logger: createLogger("silent"),
      });
      try {
        const call = (url: string, key: string) =>
          runtime.app.inject({ url, headers: { authorization: `Bearer ${key}` } });
        expect((await call("/v1/organizations", created.key)).statusCode).toBe(200);
        expect((await call(`/v1/organizations/${ORG}`, readKey.key)).statusCode).toBe(200);
        expect((await call("/v1/organizations", readKey.key)).statusCode).toBe(403);
        expect((await call("/v1/organizations", "tally_not_a_key")).statusCode).toBe(401);
        const listed = (await call(`/v1/organizations/${ORG}/api-keys`, created.key)).json().data;
        expect(listed).toEqual([
          expect.objectContaining({ id: readKey.id, name: "ro", role: "read" }),
        ]);
      } finally {
        await runtime.close();
      }
    });

    it("refuses ambiguous or incomplete options", async () => {
      const [both, noRole, badRole, blank, long] = await Promise.all([
        runCli(["keys", "create", "--platform", "--org", "org_x", "--role", "read"], {}),
        runCli(["keys", "create", "--org", "org_x"], {}),
        runCli(["keys", "create", "--org", "org_x", "--role", "platform"], {}),
        runCli(["keys", "create", "--platform", "--name", "   "], {}),
        runCli(["keys", "create", "--platform", "--name", "k".repeat(201)], {}),
      ]);
      for (const bad of [blank, long]) {
        expect(bad.code).toBe(2);
        expect(bad.stderr).toContain("--name must be 1–200 characters.");
      }
      expect(both.code).toBe(2);
      expect(both.stderr).toContain("exactly one of --platform or --org");
      expect(noRole.code).toBe(2);
      expect(noRole.stderr).toContain("--role");
      expect(badRole.code).not.toBe(0);
      expect(badRole.stderr).toContain("Allowed choices are admin, billing, ingest, read");
    });
  });
});
