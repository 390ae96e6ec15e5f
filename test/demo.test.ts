import { describe, expect, it } from "vitest";
import { loadConfig } from "../src/app/config.js";
import { seedDemo } from "../src/app/demo.js";
import { createLogger, createRuntime } from "../src/app/runtime.js";
import { parseCredits } from "../src/modules/ledger/credits.js";
import { verifyLedger } from "../src/modules/ledger/ledger.service.js";
import { createTestApp } from "./support/app.js";
import { pgliteDataDir } from "./support/db.js";

describe("demo data", () => {
  it("TALLY_DEMO=true seeds a consistent, labelled organisation with two months of usage (embedded only)", async () => {
    const app = await createTestApp({ env: { TALLY_DEMO: "true" } });
    let demo = app.runtime.demo;
    if (app.runtime.ctx.dbKind === "postgres") {
      // Ignored on PostgreSQL (API.md); `tally demo` seeds on purpose.
      expect(demo).toBeNull();
      demo = await seedDemo(app.runtime.ctx);
    }
    if (!demo) throw new Error("no demo data");
    expect(demo.created).toBe(true);
    expect(demo.portalUrl).toMatch(/^http:\/\/tally\.test\/portal\/enter\?token=/);

    const org = (await app.call("GET", "/v1/organizations/ext:demo")).json();
    expect(org.name).toContain("demo");
    const report = await verifyLedger(app.runtime.ctx.db, demo.orgId);
    expect(report).toMatchObject({ ok: true, problems: [] });
    expect(report.entries).toBeGreaterThan(600);

    const balance = (await app.call("GET", "/v1/organizations/ext:demo/balance")).json();
    expect(parseCredits(balance.balance) > 0n).toBe(true);

    const months = await app.runtime.ctx.db
      .selectFrom("usage_rollups")
      .select("period")
      .distinct()
      .where("org_id", "=", demo.orgId)
      .execute();
    expect(months.length).toBeGreaterThanOrEqual(2);
    const types = await app.runtime.ctx.db
      .selectFrom("usage_rollups")
      .select("type")
      .distinct()
      .where("org_id", "=", demo.orgId)
      .execute();
    expect(types.map((t) => t.type).sort()).toEqual([
      "ai_tokens",
      "bandwidth",
      "compute",
      "data_ops",
      "storage",
    ]);
    const purchases = (await app.call("GET", "/v1/organizations/ext:demo/purchases")).json();
    expect(purchases.data[0]).toMatchObject({ status: "paid" });

    const again = await seedDemo(app.runtime.ctx);
    expect(again).toMatchObject({ created: false, orgId: demo.orgId });
    expect((await verifyLedger(app.runtime.ctx.db, demo.orgId)).entries).toBe(report.entries);
  }, 60_000);

  it("seeds an empty embedded database opened by the runtime, and nothing when TALLY_DEMO=false", async () => {
    for (const [demoEnv, expected] of [
      [undefined, true],
      ["false", false],
    ] as const) {
      const dir = await pgliteDataDir();
      const env: Record<string, string> = { LOG_LEVEL: "silent", TALLY_DATA_DIR: dir };
      if (demoEnv) env.TALLY_DEMO = demoEnv;
      const runtime = await createRuntime(loadConfig(env), {
        logger: createLogger("silent"),
        workers: false,
      });
      try {
        expect(runtime.demo !== null).toBe(expected);
      } finally {
        await runtime.close();
      }
    }
  }, 90_000);
});
