import { describe, expect, it } from "vitest";
import { createTestApp } from "../../../test/support/app.js";
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
