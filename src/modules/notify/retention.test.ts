import { describe, expect, it } from "vitest";
import { createTestApp } from "../../../test/support/app.js";
import { refundRecoveryTask } from "../billing/refunds.service.js";
import { emitEvent, NOTIFY_RETENTION_DAYS, purgeOldNotifications } from "./notify.service.js";

const DAY = 86_400_000;

describe("retention of notifications and refund notices", async () => {
  const app = await createTestApp();
  const ctx = app.runtime.ctx;

  it("purges outbox events and delivery logs past their retention, and nothing newer", async () => {
    const orgId = await app.createOrg();
    for (let i = 0; i < 3; i++) {
      await ctx.db
        .transaction()
        .execute((tx) => emitEvent(tx, ctx, { type: "balance.low", orgId, data: { i } }));
    }
    const events = await ctx.db
      .selectFrom("events")
      .select("id")
      .where("org_id", "=", orgId)
      .execute();
    expect(events).toHaveLength(3);
    const old = new Date(app.clock.now().getTime() - (NOTIFY_RETENTION_DAYS + 1) * DAY);
    await ctx.db
      .updateTable("events")
      .set({ created_at: old })
      .where("id", "=", events[0]!.id)
      .execute();
    const delivery = (id: string, createdAt: Date) => ({
      org_id: orgId,
      id,
      endpoint_id: "whe_x",
      event_id: events[1]!.id,
      event_type: "balance.low",
      attempt: 1,
      status_code: 500,
      error: null,
      duration_ms: 5,
      succeeded: false,
      created_at: createdAt,
    });
    await ctx.db
      .insertInto("webhook_deliveries")
      .values([delivery("whd_old", old), delivery("whd_new", app.clock.now())])
      .execute();

    // Small batches: the purge goes on until nothing old is left.
    expect(await purgeOldNotifications(ctx, 1)).toBe(2);
    const left = await ctx.db
      .selectFrom("events")
      .select("id")
      .where("org_id", "=", orgId)
      .execute();
    expect(left.map((e) => e.id).sort()).toEqual([events[1]!.id, events[2]!.id].sort());
    const logs = await ctx.db
      .selectFrom("webhook_deliveries")
      .select("id")
      .where("org_id", "=", orgId)
      .execute();
    expect(logs.map((d) => d.id)).toEqual(["whd_new"]);
    expect(await purgeOldNotifications(ctx)).toBe(0);
  });

  it("drops refund notices no purchase took within 90 days", async () => {
    const now = app.clock.now();
    await ctx.db
      .insertInto("refund_notices")
      .values([
        {
          provider: "stripe",
          payment_id: "pi_old",
          refunded_total_minor: "100",
          currency: "USD",
          received_at: new Date(now.getTime() - 91 * DAY),
        },
        {
          provider: "stripe",
          payment_id: "pi_new",
          refunded_total_minor: "100",
          currency: "USD",
          received_at: now,
        },
      ])
      .execute();
    await refundRecoveryTask.run(ctx);
    const kept = await ctx.db.selectFrom("refund_notices").select("payment_id").execute();
    expect(kept.map((k) => k.payment_id)).toEqual(["pi_new"]);
  });
});
