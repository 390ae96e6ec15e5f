import { describe, expect, it } from "vitest";
import { createTestApp } from "../../../test/support/app.js";
import { expireReservations } from "../usage/usage.service.js";
import { expireDueBlocks } from "./ledger.service.js";
import type { BalanceChange } from "./posting.js";

describe("balance observers", async () => {
  const app = await createTestApp();
  const ctx = app.runtime.ctx;

  it("see every balance change inside the transaction, with the balance before and after", async () => {
    const orgId = await app.createOrg();
    const key = await app.orgKey(orgId, "ingest");
    const seen: BalanceChange[] = [];
    const observer = {
      observe: async (_tx: unknown, _ctx: unknown, changes: BalanceChange[]) => {
        seen.push(...changes.filter((c) => c.orgId === orgId));
      },
    };
    ctx.balanceObservers.push(observer);
    try {
      await app.call("POST", `/v1/organizations/${orgId}/adjustments`, {
        body: { amount: "+10", reason: "r" },
      });
      await app.call("POST", "/v1/usage-events", {
        key,
        body: { id: "o-1", type: "compute", meter: "compute.vcpu_seconds", quantity: "1000" },
      });
      const hold = await app.call("POST", `/v1/organizations/${orgId}/reservations`, {
        key,
        body: { amount: "3" },
      });
      expect(hold.statusCode).toBe(201);
    } finally {
      ctx.balanceObservers.splice(ctx.balanceObservers.indexOf(observer), 1);
    }
    expect(seen.map((c) => [c.before, c.after, c.reserved])).toEqual([
      [0n, 10n * 10n ** 12n, 0n],
      [10n * 10n ** 12n, 8n * 10n ** 12n, 0n],
      [8n * 10n ** 12n, 8n * 10n ** 12n, 3n * 10n ** 12n],
    ]);
  });

  it("an organisation whose expiries fail does not hold up the others' (blocks and holds)", async () => {
    const [bad, good] = [await app.createOrg(), await app.createOrg()];
    const inAnHour = new Date(app.clock.now().getTime() + 3_600_000).toISOString();
    for (const org of [bad, good]) {
      await app.call("POST", `/v1/organizations/${org}/adjustments`, {
        body: { amount: "+10", reason: "r", expires_at: inAnHour },
      });
      await app.call("POST", `/v1/organizations/${org}/adjustments`, {
        body: { amount: "+5", reason: "r" },
      });
      const hold = await app.call("POST", `/v1/organizations/${org}/reservations`, {
        body: { amount: "1", expires_in_seconds: 60 },
      });
      expect(hold.statusCode).toBe(201);
    }
    app.clock.advance(3_600_000);
    const observer = {
      observe: async (_tx: unknown, _ctx: unknown, changes: BalanceChange[]) => {
        if (changes.some((c) => c.orgId === bad)) throw new Error("observer failed");
      },
    };
    ctx.balanceObservers.push(observer);
    try {
      expect(await expireDueBlocks(ctx)).toBeGreaterThanOrEqual(1);
      expect(await expireReservations(ctx)).toBeGreaterThanOrEqual(1);
    } finally {
      ctx.balanceObservers.splice(ctx.balanceObservers.indexOf(observer), 1);
    }
    const state = async (org: string) => {
      const [block] = await ctx.db
        .selectFrom("credit_blocks")
        .select("status")
        .where("org_id", "=", org)
        .where("expires_at", "is not", null)
        .execute();
      const [hold] = await ctx.db
        .selectFrom("reservations")
        .select("status")
        .where("org_id", "=", org)
        .execute();
      return [block!.status, hold!.status];
    };
    expect(await state(good)).toEqual(["expired", "expired"]);
    expect(await state(bad)).toEqual(["active", "held"]); // left for the next run
  });

  it("roll the change back when they fail", async () => {
    const orgId = await app.createOrg();
    const observer = {
      observe: async () => {
        throw new Error("observer failed");
      },
    };
    ctx.balanceObservers.push(observer);
    try {
      const res = await app.call("POST", `/v1/organizations/${orgId}/adjustments`, {
        body: { amount: "+10", reason: "r" },
      });
      expect(res.statusCode).toBe(500);
    } finally {
      ctx.balanceObservers.splice(ctx.balanceObservers.indexOf(observer), 1);
    }
    const balance = await app.call("GET", `/v1/organizations/${orgId}/balance`);
    expect(balance.json()).toMatchObject({ balance: "0", last_sequence: 0 });
  });
});
