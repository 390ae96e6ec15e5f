import { execFile } from "node:child_process";
import { type AddressInfo, createServer } from "node:net";
import { join } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { loadConfig } from "../src/app/config.js";
import { createLogger, createRuntime } from "../src/app/runtime.js";
import { pgliteDataDir } from "./support/db.js";

/** A first start: the generated platform key, and demo data only on a database nobody set up. */

const run = promisify(execFile);
const ROOT = join(import.meta.dirname, "..");

function cleanEnv(env: Record<string, string>): NodeJS.ProcessEnv {
  return {
    ...Object.fromEntries(
      Object.entries(process.env).filter(
        ([k]) => !/^(TALLY_|STRIPE_|DATABASE_URL$|PORT$|HOST$|LOG_LEVEL$)/.test(k),
      ),
    ),
    LOG_LEVEL: "silent",
    ...env,
  };
}

function tally(args: string[], env: Record<string, string>) {
  return run(process.execPath, [join(ROOT, "bin/tally.mjs"), ...args], {
    env: cleanEnv(env),
  }).then(
    (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({
      code: e.code,
      stdout: e.stdout,
      stderr: e.stderr,
    }),
  );
}

describe("first start", { timeout: 120_000 }, () => {
  it("shows the generated platform key even when the start then fails (a port in use)", async () => {
    const dir = await pgliteDataDir(); // migrated, no platform key yet
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, "127.0.0.1", resolve));
    const { port } = taken.address() as AddressInfo;
    let first: Awaited<ReturnType<typeof tally>>;
    try {
      first = await tally(["start"], {
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
    const keys = await tally(["keys", "list", "--platform", "--json"], { TALLY_DATA_DIR: dir });
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
});
