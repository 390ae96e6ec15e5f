import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import { sql } from "kysely";
import { describe, expect, it } from "vitest";
import { loadConfig } from "../src/app/config.js";
import { createLogger, createRuntime } from "../src/app/runtime.js";
import type { Database } from "../src/db/index.js";
import { adjustCredits } from "../src/modules/ledger/ledger.service.js";
import { createOrganization } from "../src/modules/orgs/orgs.service.js";
import { pgliteDataDir } from "./support/db.js";

const run = promisify(execFile);
const ROOT = join(import.meta.dirname, "..");

/** Two organisations with a few entries each, written through the real service functions. */
async function seed(database: Database, tamper: boolean) {
  const runtime = await createRuntime(loadConfig({ LOG_LEVEL: "silent" }), {
    database: { ...database, close: async () => {} },
    logger: createLogger("silent"),
    workers: false,
  });
  const ctx = runtime.ctx;
  for (const name of ["A", "B"]) {
    const org = await createOrganization(ctx, { name, external_id: `cli-${name}` });
    if (!org.ok) throw new Error("org");
    for (const amount of [100n, -30n, 5n]) {
      await adjustCredits(ctx, {
        orgId: org.value.id,
        amount: amount * 10n ** 12n,
        reason: "seed",
        category: "correction",
        expiresAt: null,
        priority: null,
        actor: { type: "system", id: "test" },
        userId: null,
      });
    }
  }
  if (tamper) {
    await sql`alter table ledger_entries disable trigger ledger_entries_immutable`.execute(ctx.db);
    await sql`update ledger_entries set amount = -31 where sequence = 2 and org_id = (select id from organizations where external_id = 'cli-B')`.execute(
      ctx.db,
    );
    await sql`alter table ledger_entries enable trigger ledger_entries_immutable`.execute(ctx.db);
  }
  await runtime.app.close();
}

function tally(dataDir: string, args: string[]) {
  return run(process.execPath, [join(ROOT, "bin/tally.mjs"), ...args], {
    env: { ...process.env, TALLY_DATA_DIR: dataDir, DATABASE_URL: "", LOG_LEVEL: "silent" },
  }).then(
    (r) => ({ code: 0, stdout: r.stdout }),
    (e: { code: number; stdout: string }) => ({ code: e.code, stdout: e.stdout }),
  );
}

describe("tally verify", () => {
  it("exits 0 when every ledger verifies", async () => {
    const dir = await pgliteDataDir((db) => seed(db, false));
    const r = await tally(dir, ["verify", "--json"]);
    expect(r.code).toBe(0);
    const reports = r.stdout
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(reports).toHaveLength(2);
    for (const report of reports)
      expect(report).toMatchObject({ ok: true, entries: 3, first_bad_sequence: null });
  }, 60_000);

  it("exits 1 and names the first bad sequence of a tampered ledger", async () => {
    const dir = await pgliteDataDir((db) => seed(db, true));
    const all = await tally(dir, ["verify"]);
    expect(all.code).toBe(1);
    expect(all.stdout).toMatch(/FAIL org_/);
    expect(all.stdout).toContain("1 of 2 organisations verified.");
    const one = await tally(dir, ["verify", "--org", "ext:cli-B", "--json"]);
    expect(one.code).toBe(1);
    expect(JSON.parse(one.stdout.trim())).toMatchObject({ ok: false, first_bad_sequence: 2 });
    const good = await tally(dir, ["verify", "--org", "ext:cli-A"]);
    expect(good.code).toBe(0);
  }, 60_000);
});
