import { readFileSync } from "node:fs";
import { sql } from "kysely";
import { describe, expect, it } from "vitest";
import { createTestApp } from "../../../test/support/app.js";
import { formatScaled6, parseScaled6 } from "../ledger/credits.js";
import type { Actor } from "../orgs/auth.js";
import { PriceCatalogue } from "./catalogue.js";
import * as repo from "./pricing.repo.js";
import { type CatalogueInput, putCatalogue, sharedCatalogue } from "./pricing.service.js";

const actor: Actor = { type: "system", id: "test" };

function model(name: string, input: string) {
  const r = parseScaled6(input);
  return { model: name, provider: "openai", input: r, cached_input: r, cache_write: r, output: r };
}

describe("price catalogue", async () => {
  const app = await createTestApp();
  const ctx = app.runtime.ctx;

  async function put(effectiveFrom: string | undefined, gpt4oInput: string, extra = {}) {
    const input: CatalogueInput = {
      effectiveFrom: effectiveFrom ? new Date(effectiveFrom) : undefined,
      models: [model("gpt-4o", gpt4oInput)],
      meters: [],
      ...extra,
    };
    const result = await putCatalogue(ctx, input, actor);
    if (!result.ok) throw new Error(JSON.stringify(result));
    return result.value;
  }

  it("is seeded with the default catalogue documented in DEFAULT_CATALOGUE.md", async () => {
    const catalogue = new PriceCatalogue();
    await catalogue.refresh(ctx.db);
    const v1 = catalogue.get(1)!;
    expect(v1.effectiveFrom.toISOString()).toBe("1970-01-01T00:00:00.000Z");

    const doc = readFileSync(new URL("./DEFAULT_CATALOGUE.md", import.meta.url), "utf8");
    const rows = doc
      .split("\n")
      .filter((line) => line.startsWith("| `"))
      .map((line) =>
        line
          .split("|")
          .slice(1, -1)
          .map((cell) => cell.trim().replace(/`/g, "")),
      );
    const documentedModels = rows.filter((r) => r.length === 6);
    const documentedMeters = rows.filter((r) => r.length === 5);
    expect(documentedModels.length).toBeGreaterThanOrEqual(5);
    expect(new Set(documentedModels.map((r) => r[1]))).toEqual(new Set(["openai", "anthropic"]));

    const seededModels = v1.models.map((m) => [
      m.model,
      m.provider,
      formatScaled6(m.input),
      formatScaled6(m.cached_input),
      formatScaled6(m.cache_write),
      formatScaled6(m.output),
    ]);
    expect(seededModels).toEqual([...documentedModels].sort((a, b) => (a[0]! < b[0]! ? -1 : 1)));
    const seededMeters = v1.meters.map((m) => [
      m.meter,
      m.type,
      m.unit,
      formatScaled6(m.rate),
      m.aggregation,
    ]);
    expect(seededMeters).toEqual([...documentedMeters].sort((a, b) => (a[0]! < b[0]! ? -1 : 1)));
    // Exactly the four meters of API.md's example.
    expect(seededMeters).toEqual([
      ["bandwidth.egress_gb", "bandwidth", "GB", "0.9", "sum"],
      ["compute.vcpu_seconds", "compute", "vCPU-second", "0.002", "sum"],
      ["data_ops.reads", "data_ops", "operation", "0.000004", "sum"],
      ["storage.gb", "storage", "GB-hour", "0.0001", "time_weighted"],
    ]);
  });

  it("selects the most recently created version whose effective_from ≤ the timestamp", async () => {
    const v2 = await put("2026-11-01T00:00:00Z", "2");
    const v3 = await put("2026-10-01T00:00:00Z", "3"); // earlier start, created later
    const v4 = await put("2026-12-01T00:00:00Z", "4");
    expect([v2.version, v3.version, v4.version]).toEqual([2, 3, 4]);

    const catalogue = new PriceCatalogue();
    await catalogue.refresh(ctx.db);
    const versionAt = (iso: string) => catalogue.versionAt(new Date(iso))?.version ?? null;
    expect(versionAt("1969-12-31T23:59:59.999Z")).toBeNull();
    expect(versionAt("1970-01-01T00:00:00Z")).toBe(1);
    expect(versionAt("2026-09-30T23:59:59.999Z")).toBe(1); // before v3: old prices stay
    expect(versionAt("2026-10-01T00:00:00Z")).toBe(3); // v3 supersedes from its start…
    expect(versionAt("2026-11-15T00:00:00Z")).toBe(3); // …including v2's period: v2 never applies
    expect(versionAt("2026-11-30T23:59:59.999Z")).toBe(3);
    expect(versionAt("2026-12-01T00:00:00Z")).toBe(4);
    expect(versionAt("2100-01-01T00:00:00Z")).toBe(4);

    const quote = catalogue.modelPriceAt(new Date("2026-10-02T00:00:00Z"), "gpt-4o");
    expect(quote.ok && quote.value.version.version).toBe(3);
    expect(quote.ok && formatScaled6(quote.value.price.input)).toBe("3");
    // Version 3 holds only gpt-4o: the models of version 1 are not inherited.
    const missing = catalogue.modelPriceAt(new Date("2026-10-02T00:00:00Z"), "gpt-4o-mini");
    expect(missing).toMatchObject({ ok: false, code: "price_not_found" });
    expect(catalogue.modelPriceAt(new Date("2026-09-02T00:00:00Z"), "gpt-4o-mini").ok).toBe(true);
    expect(catalogue.modelPriceAt(new Date("1969-01-01T00:00:00Z"), "gpt-4o")).toMatchObject({
      ok: false,
      code: "price_not_found",
    });
  });

  it("meterPriceAt checks the meter's type", async () => {
    const catalogue = new PriceCatalogue();
    await catalogue.refresh(ctx.db);
    const t = new Date("2020-01-01T00:00:00Z");
    const storage = catalogue.meterPriceAt(t, "storage.gb", "storage");
    expect(storage.ok && storage.value.price.aggregation).toBe("time_weighted");
    expect(catalogue.meterPriceAt(t, "storage.gb", "compute")).toMatchObject({
      ok: false,
      code: "price_not_found",
      message: expect.stringMatching(/storage meter/),
    });
    expect(catalogue.meterPriceAt(t, "nope")).toMatchObject({ ok: false, code: "price_not_found" });
  });

  it("refresh is a no-op until another writer creates a version, then sees it", async () => {
    const catalogue = new PriceCatalogue();
    expect(await catalogue.refresh(ctx.db)).toBe(true);
    const before = catalogue.latestVersion;
    expect(await catalogue.refresh(ctx.db)).toBe(false);

    // Another path: the service (HTTP PUT uses it) with its own shared cache.
    const res = await app.call("PUT", "/v1/prices", {
      body: { effective_from: "2027-01-01T00:00:00Z", models: [], meters: [] },
    });
    expect(res.statusCode, res.body).toBe(200);
    expect(await catalogue.refresh(ctx.db)).toBe(true);
    expect(catalogue.latestVersion).toBe(before + 1);
    expect(catalogue.versionAt(new Date("2027-06-01T00:00:00Z"))?.version).toBe(before + 1);

    // Another path: plain SQL, as a different instance's transaction would write it.
    await ctx.db.transaction().execute(async (trx) => {
      await repo.lockForNewVersion(trx);
      const next = (await repo.maxVersion(trx)) + 1;
      await repo.insertVersion(trx, next, {
        effective_from: new Date("2028-01-01T00:00:00Z"),
        created_at: new Date("2026-11-24T10:00:00Z"),
        created_by: "system:elsewhere",
        models: [model("elsewhere-model", "1.5")],
        meters: [],
      });
    });
    expect(await catalogue.refresh(ctx.db)).toBe(true);
    expect(catalogue.latestVersion).toBe(before + 2);
    expect(
      catalogue.versionAt(new Date("2028-01-01T00:00:00Z"))?.model("elsewhere-model")?.input,
    ).toBe(1_500_000n);
  });

  it("concurrent refreshes share loads, and a refresh sees every write committed before it", async () => {
    const catalogue = new PriceCatalogue();
    const [a, b] = await Promise.all([catalogue.refresh(ctx.db), catalogue.refresh(ctx.db)]);
    expect(a).toBe(true);
    expect(b).toBe(false); // the queued second load found nothing new
    const latest = catalogue.latestVersion;
    expect(latest).toBeGreaterThan(1);

    // A refresh still running when a write commits must not satisfy a refresh called after it.
    const running = catalogue.refresh(ctx.db);
    const written = await put("2030-01-01T00:00:00Z", "9");
    await catalogue.refresh(ctx.db);
    await running;
    expect(catalogue.get(written.version)?.model("gpt-4o")?.input).toBe(9_000_000n);
  });

  it("concurrent writers get distinct, consecutive versions", async () => {
    const start = await repo.maxVersion(ctx.db);
    const written = await Promise.all(
      Array.from({ length: 6 }, (_, i) => put("2029-01-01T00:00:00Z", String(i + 1))),
    );
    const numbers = written.map((v) => v.version).sort((a, b) => a - b);
    expect(numbers).toEqual([1, 2, 3, 4, 5, 6].map((i) => start + i));
    await sharedCatalogue(ctx).refresh(ctx.db);
    // The last-created of them is in effect from 2029 on.
    expect(sharedCatalogue(ctx).versionAt(new Date("2029-02-01T00:00:00Z"))?.version).toBe(
      start + 6,
    );
  });

  it("versions cannot be changed or removed", async () => {
    await expect(
      sql`update model_prices set input = 0 where version = 1`.execute(ctx.db),
    ).rejects.toThrow(/immutable/);
    await expect(sql`delete from meter_prices where version = 1`.execute(ctx.db)).rejects.toThrow(
      /immutable/,
    );
    await expect(
      sql`update price_versions set effective_from = now() where version = 1`.execute(ctx.db),
    ).rejects.toThrow(/immutable/);
    await expect(sql`truncate price_versions cascade`.execute(ctx.db)).rejects.toThrow(/immutable/);
  });
});
