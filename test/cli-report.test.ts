import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { loadConfig } from "../src/app/config.js";
import { createLogger, createRuntime } from "../src/app/runtime.js";
import type { Database } from "../src/db/index.js";
import { createApiKey } from "../src/modules/orgs/orgs.service.js";
import { TestClock } from "./support/app.js";
import { pgliteDataDir } from "./support/db.js";

const run = promisify(execFile);
const ROOT = join(import.meta.dirname, "..");

/** One organisation with usage in October and November 2026 and a grant, through the API. */
async function seed(database: Database) {
  const runtime = await createRuntime(loadConfig({ LOG_LEVEL: "silent" }), {
    database: { ...database, close: async () => {} },
    clock: new TestClock(new Date("2026-11-24T10:00:00Z")),
    logger: createLogger("silent"),
    workers: false,
  });
  const { secret } = await createApiKey(runtime.ctx, {
    orgId: null,
    name: "seed",
    role: "platform",
  });
  const call = async (url: string, payload: unknown) => {
    const res = await runtime.app.inject({
      method: "POST",
      url,
      headers: { authorization: `Bearer ${secret}`, "content-type": "application/json" },
      payload: JSON.stringify(payload),
    });
    if (res.statusCode >= 300) throw new Error(`${url}: ${res.statusCode} ${res.body}`);
    return res.json();
  };
  const org = await call("/v1/organizations", { name: "Report Co", external_id: "rep-cli" });
  await call(`/v1/organizations/${org.id}/adjustments`, { amount: "+100", reason: "grant" });
  const event = (id: string, timestamp: string, extra: Record<string, unknown>) => ({
    id,
    org_id: org.id,
    type: "ai_tokens",
    timestamp,
    model: "gpt-4o",
    ...extra,
  });
  await call("/v1/usage-events", {
    events: [
      // gpt-4o: 4000 input × 250/1M = 1; 1000 output × 1000/1M = 1
      event("a", "2026-11-02T00:00:00Z", {
        tokens: { input: 4000 },
        user_id: "u-1",
        operation: "chat",
      }),
      event("b", "2026-11-03T00:00:00Z", {
        tokens: { output: 1000 },
        user_id: "u-2",
        operation: "chat",
      }),
      event("c", "2026-10-31T23:59:59.999Z", { tokens: { input: 4000 } }),
      {
        id: "d",
        org_id: org.id,
        type: "compute",
        timestamp: "2026-11-04T00:00:00Z",
        meter: "compute.vcpu_seconds",
        quantity: "250",
        resource: "vm-1",
      }, // 0.5
    ],
  });
  await runtime.app.close();
  return org.id as string;
}

function tally(dataDir: string, args: string[]) {
  return run(process.execPath, [join(ROOT, "bin/tally.mjs"), ...args], {
    env: { ...process.env, TALLY_DATA_DIR: dataDir, DATABASE_URL: "", LOG_LEVEL: "silent" },
  }).then(
    (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({
      code: e.code,
      stdout: e.stdout,
      stderr: e.stderr,
    }),
  );
}

describe("tally report", () => {
  it("prints a month's usage summary and ledger movements as JSON, CSV and text", async () => {
    let orgId = "";
    const dir = await pgliteDataDir(async (db) => {
      orgId = await seed(db);
    });

    const json = await tally(dir, [
      "report",
      "--org",
      "ext:rep-cli",
      "--month",
      "2026-11",
      "--json",
    ]);
    expect(json.code, json.stderr).toBe(0);
    const { usage, ledger } = JSON.parse(json.stdout);
    expect(usage).toMatchObject({
      org_id: orgId,
      period: "2026-11",
      total_cost: "2.5",
      events: 3,
      by_type: [
        { type: "ai_tokens", unit: "tokens", quantity: "5000", cost: "2", events: 2 },
        { type: "compute", unit: "vCPU-second", quantity: "250", cost: "0.5", events: 1 },
      ],
      by_user: [
        { user_id: "u-1", cost: "1", events: 1 },
        { user_id: "u-2", cost: "1", events: 1 },
        { user_id: null, cost: "0.5", events: 1 },
      ],
      by_resource: [
        {
          resource: "vm-1",
          type: "compute",
          unit: "vCPU-second",
          quantity: "250",
          cost: "0.5",
          events: 1,
        },
      ],
    });
    // Every entry was written at the seed clock's now (2026-11-24): the grant and four usages.
    expect(ledger).toMatchObject({
      period: "2026-11",
      opening_balance: "0",
      adjusted_in: "100",
      consumed: "3.5",
      net: "96.5",
      closing_balance: "96.5",
      entries: 5,
    });

    const csv = await tally(dir, ["report", "--org", orgId, "--month", "2026-10", "--csv"]);
    expect(csv.code, csv.stderr).toBe(0);
    const lines = csv.stdout.split("\r\n");
    expect(lines[0]).toBe(
      "org_id,period,breakdown,key,type,unit,quantity,input_tokens,cached_input_tokens,cache_write_tokens,output_tokens,cost,events",
    );
    expect(lines[1]).toBe(`${orgId},2026-10,total,,,,,,,,,1,1`);
    expect(lines).toContain(`${orgId},2026-10,model,gpt-4o,ai_tokens,,,4000,0,0,0,1,1`);

    const text = await tally(dir, ["report", "--org", "ext:rep-cli", "--month", "2026-11"]);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toContain(`Report Co (${orgId}) — 2026-11 (UTC)`);
    expect(text.stdout).toContain("Usage: 2.5 credits, 3 events");
    expect(text.stdout).toMatch(/closing balance\s+96\.5/);
  }, 60_000);

  it("exits 2 on an unknown organisation or a malformed month", async () => {
    const dir = await pgliteDataDir();
    const unknown = await tally(dir, ["report", "--org", "ext:nobody", "--month", "2026-11"]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain("No organisation ext:nobody.");
    const month = await tally(dir, ["report", "--org", "ext:nobody", "--month", "2026-13"]);
    expect(month.code).toBe(2);
    expect(month.stderr).toContain("--month must be YYYY-MM");
    const noOrg = await tally(dir, ["report", "--month", "2026-11"]);
    expect(noOrg.code).not.toBe(0);
  }, 60_000);
});
