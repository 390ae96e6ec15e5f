import { execFile } from "node:child_process";
import { writeFileSync } from "node:fs";
import { type AddressInfo, createServer } from "node:net";
import { join } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { loadConfig } from "../src/app/config.js";
import { createLogger, createRuntime } from "../src/app/runtime.js";
import type { Database } from "../src/db/index.js";
import { adjustCredits } from "../src/modules/ledger/ledger.service.js";
import { insertUser } from "../src/modules/orgs/orgs.repo.js";
import { createOrganization } from "../src/modules/orgs/orgs.service.js";
import { createReservation } from "../src/modules/usage/usage.service.js";
import { pgliteDataDir } from "./support/db.js";

/**
 * `tally keys|orgs|balance` end to end: the real bin on a PGlite data directory. Each process
 * costs about two seconds, so one data directory serves a whole sequence of commands.
 */

const run = promisify(execFile);
const ROOT = join(import.meta.dirname, "..");

interface Outcome {
  code: number;
  stdout: string;
  stderr: string;
}

function tally(
  dataDir: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<Outcome> {
  return run(process.execPath, [join(ROOT, "bin/tally.mjs"), ...args], {
    env: {
      ...process.env,
      TALLY_DATA_DIR: dataDir,
      DATABASE_URL: "",
      LOG_LEVEL: "silent",
      ...env,
    },
  }).then(
    (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
    (e: Outcome) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );
}

async function json(dataDir: string, args: string[]) {
  const r = await tally(dataDir, [...args, "--json"]);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout);
}

/** A command refused as a usage error: exit 2, with `message` in its error output. */
async function refused(dataDir: string, args: string[], message = "") {
  const r = await tally(dataDir, args);
  expect(r.code, args.join(" ")).toBe(2);
  expect(r.stderr).toContain(message);
}

/**
 * One organisation with 100.5 − 0.25 credits, a user and a 40-credit hold past its expiry that
 * the sweeper has not marked yet (no workers here), written through the services.
 */
async function seed(database: Database) {
  const runtime = await createRuntime(loadConfig({ LOG_LEVEL: "silent", TALLY_DEMO: "false" }), {
    database: { ...database, close: async () => {} },
    logger: createLogger("silent"),
    workers: false,
  });
  const ctx = runtime.ctx;
  const org = await createOrganization(ctx, { name: "Seeded Ltd", external_id: "seeded" });
  if (!org.ok) throw new Error("seed org");
  for (const amount of [100_500_000_000_000n, -250_000_000_000n]) {
    await adjustCredits(ctx, {
      orgId: org.value.id,
      amount,
      reason: "seed",
      category: "correction",
      expiresAt: null,
      priority: null,
      actor: { type: "system", id: "test" },
      userId: null,
    });
  }
  const hold = await createReservation(ctx, {
    orgId: org.value.id,
    amount: 40_000_000_000_000n,
    expiresInSeconds: 60,
    description: "overdue",
    principal: {
      kind: "operator",
      id: "test",
      role: "admin",
      orgId: null,
      actor: { type: "system", id: "test" },
      userId: null,
    },
  });
  if (!hold.ok) throw new Error("seed hold");
  await ctx.db
    .updateTable("reservations")
    .set({ expires_at: new Date(Date.now() - 1000) })
    .where("id", "=", hold.value.id)
    .execute();
  const now = ctx.clock.now();
  await insertUser(ctx.db, {
    org_id: org.value.id,
    id: "ada",
    email: "ada@example.com",
    name: "Ada",
    role: "admin",
    created_at: now,
    updated_at: now,
  });
  await runtime.app.close();
}

describe("tally CLI: orgs, balance, keys", () => {
  it("--help documents every command", async () => {
    const r = await tally("/nonexistent-never-opened", ["--help"]);
    expect(r.code).toBe(0);
    for (const command of ["start", "migrate", "keys", "orgs", "balance", "verify"]) {
      expect(r.stdout).toMatch(new RegExp(`^  ${command}\\b`, "m"));
    }
    expect(r.stdout).toContain("create, list, revoke");
    expect(r.stdout).toContain("create, list, show");
    const keys = await tally("/nonexistent-never-opened", ["keys", "--help"]);
    for (const sub of ["create", "list", "revoke"])
      expect(keys.stdout).toMatch(new RegExp(`^  ${sub}\\b`, "m"));
  });

  it("orgs create|list|show and balance", async () => {
    const dir = await pgliteDataDir(seed);

    const created = await tally(dir, [
      "orgs",
      "create",
      "--name",
      "Acme Inc",
      "--external-id",
      "acme",
    ]);
    expect(created.code, created.stderr).toBe(0);
    expect(created.stdout).toMatch(/^Created org_\w{26} \(ext:acme\): Acme Inc$/m);

    const free = await json(dir, ["orgs", "create", "--name", "Free Co", "--plan", "free"]);
    expect(free).toMatchObject({
      id: expect.stringMatching(/^org_/),
      name: "Free Co",
      external_id: null,
      plan: "free",
      credits_enabled: false,
      overdraft_limit: "0",
    });

    await refused(
      dir,
      ["orgs", "create", "--name", "Again", "--external-id", "acme"],
      'external_id "acme" exists',
    );
    await refused(
      dir,
      ["orgs", "create", "--name", "X", "--external-id", "no spaces"],
      "--external-id",
    );

    const all = await json(dir, ["orgs", "list"]);
    expect(all.has_more).toBe(false);
    expect(all.data.map((o: { name: string }) => o.name)).toEqual([
      "Free Co",
      "Acme Inc",
      "Seeded Ltd",
    ]);
    expect(all.data[2]).toMatchObject({
      external_id: "seeded",
      balance: "100.25",
      available: "100.25",
    });

    const searched = await tally(dir, ["orgs", "list", "--search", "seed"]);
    expect(searched.code).toBe(0);
    const lines = searched.stdout.trim().split("\n");
    expect(lines[0]).toMatch(/^ID\s+EXTERNAL ID\s+NAME\s+PLAN\s+BALANCE\s+AVAILABLE$/);
    expect(lines).toHaveLength(2);
    expect(lines[1]).toMatch(/^org_\w+\s+seeded\s+Seeded Ltd\s+professional\s+100\.25\s+100\.25$/);

    const shown = await json(dir, ["orgs", "show", "ext:seeded"]);
    expect(shown).toMatchObject({
      name: "Seeded Ltd",
      external_id: "seeded",
      credits_enabled: true,
      balance: { balance: "100.25", reserved: "0", available: "100.25", last_sequence: 2 },
      users: [{ id: "ada", email: "ada@example.com", role: "admin" }],
      api_keys: [],
    });
    const shownText = await tally(dir, ["orgs", "show", shown.id]);
    expect(shownText.stdout).toMatch(/^balance:\s+100\.25$/m);
    expect(shownText.stdout).toMatch(/^\s+ada\s+ada@example\.com\s+Ada\s+admin$/m);

    // The hold past its expiry is no longer reserved, as GET …/balance answers.
    const balance = await json(dir, ["balance", "ext:seeded"]);
    expect(balance).toEqual({
      org_id: shown.id,
      balance: "100.25",
      reserved: "0",
      available: "100.25",
      overdraft_limit: "0",
      debt: "0",
      low_balance: false,
      auto_topup: "off",
      last_sequence: 2,
      updated_at: expect.any(String),
    });
    const balanceText = await tally(dir, ["balance", "ext:seeded"]);
    expect(balanceText.stdout).toMatch(/^\s+reserved:\s+0$/m);
    expect(balanceText.stdout).toMatch(/^\s+low balance:\s+no$/m);

    for (const args of [
      ["balance", "ext:nope"],
      ["orgs", "show", "org_unknown"],
    ]) {
      const missing = await tally(dir, args);
      expect(missing.code).toBe(2);
      expect(missing.stdout).toBe("");
      expect(missing.stderr).toMatch(/^No organisation (ext:nope|org_unknown)\. .*tally orgs list/);
    }
  }, 180_000);

  it("text output shows control characters from stored names as \\xNN, never raw", async () => {
    const dir = await pgliteDataDir(seed);
    const created = await tally(dir, [
      "orgs",
      "create",
      "--name",
      "Evil\u001b[2J\u001b]0;owned\u0007 Co",
    ]);
    expect(created.code, created.stderr).toBe(0);
    const listed = await tally(dir, ["orgs", "list"]);
    expect(listed.code, listed.stderr).toBe(0);
    expect(listed.stdout).toContain("Evil\\x1b[2J\\x1b]0;owned\\x07 Co");
    expect([...listed.stdout].filter((c) => c < " " && c !== "\n")).toEqual([]);
    // A line break or tab in a name cannot forge a row or shift the columns.
    const forged = await tally(dir, ["orgs", "create", "--name", "Mallory\norg_FAKE\tBig Corp"]);
    expect(forged.code, forged.stderr).toBe(0);
    const rows = (await tally(dir, ["orgs", "list"])).stdout.trim().split("\n");
    expect(rows.filter((r) => r.startsWith("org_FAKE"))).toEqual([]);
    expect(rows.find((r) => r.includes("Mallory"))).toContain("Mallory\\norg_FAKE\\tBig Corp");
    // JSON for scripts keeps the name as stored (JSON escapes it).
    const data = await json(dir, ["orgs", "list"]);
    expect(data.data.map((o: { name: string }) => o.name)).toContain(
      "Evil\u001b[2J\u001b]0;owned\u0007 Co",
    );
  }, 120_000);

  it("an argument commander refuses is exit 2 with its message and a hint, not the whole help", async () => {
    const dir = "/nonexistent-never-opened";
    for (const args of [["report"], ["orgs", "list", "--limit", "abc"], ["nosuch"]]) {
      const r = await tally(dir, args);
      expect(r.code, args.join(" ")).toBe(2);
      const lines = r.stderr.trim().split("\n");
      expect(lines[0]).toMatch(/^error: /);
      expect(lines.slice(1)).toEqual(["(run the command with --help for its usage)"]);
    }
    expect((await tally(dir, ["--help"])).code).toBe(0);
  }, 60_000);

  it("keys create|list|revoke", async () => {
    const dir = await pgliteDataDir(seed);

    const ingest = await json(dir, ["keys", "create", "--org", "ext:seeded", "--role", "ingest"]);
    const platform = await json(dir, ["keys", "create", "--platform", "--name", "ops"]);
    // A platform key has the platform role; the admin key's name is reserved (as in the API).
    await refused(
      dir,
      ["keys", "create", "--platform", "--role", "read"],
      "--role is for --org keys",
    );
    await refused(dir, ["keys", "create", "--platform", "--name", "TALLY_ADMIN_KEY"], "reserved");

    // Platform keys first (the seeding runtime generated one, "initial admin"), then by org.
    const listed = await json(dir, ["keys", "list"]);
    const ids = listed.data.map((k: { id: string }) => k.id);
    expect(ids).toHaveLength(3);
    expect(ids.slice(0, 2)).toContain(platform.id);
    expect(ids[2]).toBe(ingest.id);
    expect(listed.data[2]).toEqual({
      id: ingest.id,
      name: "cli",
      role: "ingest",
      org_id: ingest.org_id,
      key_prefix: expect.any(String),
      created_at: expect.any(String),
      last_used_at: null,
      revoked_at: null,
    });
    expect(JSON.stringify(listed)).not.toContain(ingest.key);
    const platformKeys = (await json(dir, ["keys", "list", "--platform"])).data as {
      id: string;
      name: string;
      role: string;
    }[];
    expect(platformKeys.map((k) => [k.name, k.role]).sort()).toEqual([
      ["initial admin", "platform"],
      ["ops", "platform"],
    ]);
    const initial = platformKeys.find((k) => k.name === "initial admin")!;

    const revoked = await tally(dir, ["keys", "revoke", ingest.id]);
    expect(revoked.code, revoked.stderr).toBe(0);
    expect(revoked.stdout.trim()).toBe(`Revoked ${ingest.id} (ingest of ${ingest.org_id}).`);
    const again = await tally(dir, ["keys", "revoke", ingest.id]);
    expect(again.code).toBe(0);
    expect(again.stdout).toContain("was already revoked at");

    const text = await tally(dir, ["keys", "list", "--org", "ext:seeded"]);
    expect(text.stdout).toMatch(
      new RegExp(`^${ingest.id}\\s+${ingest.org_id}\\s+ingest\\s+cli\\s+.*revoked \\d{4}-`, "m"),
    );
    expect((await json(dir, ["keys", "list", "--org", "ext:seeded", "--active"])).data).toEqual([]);

    // The last platform key: revoked, with a hint how to get one back.
    const first = await tally(dir, ["keys", "revoke", initial.id]);
    expect(first.stdout).toContain(`Revoked ${initial.id} (platform).`);
    expect(first.stderr).toBe("");
    const last = await tally(dir, ["keys", "revoke", platform.id, "--json"]);
    expect(JSON.parse(last.stdout)).toMatchObject({
      id: platform.id,
      revoked_at: expect.any(String),
    });
    expect(last.stderr).toContain("No active platform key is left");

    await refused(dir, ["keys", "revoke", "key_unknown"], "No API key key_unknown");
    await refused(dir, ["keys", "list", "--platform", "--org", "ext:seeded"]);
    await refused(dir, ["keys", "list", "--org", "ext:nope"], "No organisation ext:nope");
  }, 180_000);

  it("a database, port or data directory that cannot be used is one line, not a stack trace", async () => {
    const oneLine = (r: Outcome, code: number, pattern: RegExp) => {
      expect(r.code, r.stderr).toBe(code);
      expect(r.stderr).toMatch(pattern);
      expect(r.stderr.trim().split("\n")).toHaveLength(1);
    };
    const unreachable = await tally("/nonexistent-never-opened", ["migrate"], {
      DATABASE_URL: "postgres://postgres@127.0.0.1:1/tally",
    });
    oneLine(unreachable, 1, /^Cannot reach the database: .*DATABASE_URL/);

    const file = join(await pgliteDataDir(), "a-file");
    writeFileSync(file, "");
    oneLine(await tally(file, ["migrate"]), 1, /^Cannot use the file system: .*TALLY_DATA_DIR/);

    oneLine(
      await tally("/nonexistent-never-opened", ["report", "--org", "x", "--month", "0001-01"]),
      2,
      /^--month must be YYYY-MM from 1970-01 on/,
    );

    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, "127.0.0.1", resolve));
    try {
      const { port } = taken.address() as AddressInfo;
      const r = await tally(await pgliteDataDir(), ["start"], {
        PORT: String(port),
        TALLY_DEMO: "false",
      });
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr).toContain(`Cannot listen on 127.0.0.1:${port}: the port is already in use`);
      expect(r.stderr).not.toMatch(/\n\s+at /);
    } finally {
      taken.close();
    }
  }, 120_000);
});
