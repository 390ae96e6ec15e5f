import { Registry } from "prom-client";
import { describe, expect, it, vi } from "vitest";
import { createTestApp } from "../../../test/support/app.js";
import { IngestEngine, type IngestOutcome, type IngestRequest } from "./engine.js";
import type { PreparedEvent } from "./prepare.js";

/**
 * A flush refused as out of range is split in halves, each written and answered on its own: a
 * half that then fails for another reason fails only its own requests, never those a sibling
 * half committed. The writes are stubbed; what is checked is who gets which answer.
 */
describe("ingest engine: answers of a split flush", async () => {
  const app = await createTestApp();

  it("a half failing after the split fails only its own requests", async () => {
    const ctx = app.runtime.ctx;
    // Its own metrics registry: the app's engine registered the same metric names.
    const engine = new IngestEngine(
      { ...ctx, metrics: { ...ctx.metrics, registry: new Registry() } },
      {
        maxBatchEvents: 1000,
        maxConcurrentFlushes: 1,
      },
    );
    const written: string[][] = [];
    const request = (orgId: string): IngestRequest => ({
      events: [{ orgId } as PreparedEvent],
      actor: { type: "system", id: "test" },
    });
    const ok: IngestOutcome = { ok: true, results: [], settledCost: 0n };
    // biome-ignore lint/suspicious/noExplicitAny: the private write of one transaction
    vi.spyOn(engine as any, "writeOnce").mockImplementation((async (
      batch: { request: IngestRequest }[],
    ) => {
      const orgs = batch.map((p) => p.request.events[0]!.orgId);
      written.push(orgs);
      if (orgs.length === 4) throw Object.assign(new Error("numeric overflow"), { code: "22003" });
      if (orgs.includes("org_c")) throw new Error("Connection terminated unexpectedly");
      return orgs.map(() => ok);
    }) as never);

    const answers = await Promise.allSettled(
      ["org_a", "org_b", "org_c", "org_d"].map((o) => engine.submit(request(o))),
    );
    expect(written).toEqual([
      ["org_a", "org_b", "org_c", "org_d"],
      ["org_a", "org_b"],
      ["org_c", "org_d"],
    ]);
    expect(answers.map((a) => a.status)).toEqual([
      "fulfilled",
      "fulfilled",
      "rejected",
      "rejected",
    ]);
    expect((answers[0] as PromiseFulfilledResult<IngestOutcome>).value).toEqual(ok);
    await engine.drain();
  });
});
