import { describe, expect, it } from "vitest";
import { createTestApp } from "../../../test/support/app.js";
import { parseCredits } from "../ledger/credits.js";
import { postEntries } from "../ledger/ledger.service.js";
import { setPaymentProvider } from "./providers/index.js";
import { PaymentProviderError, type RefundInput, type RefundResult } from "./providers/provider.js";
import { SandboxProvider } from "./providers/sandbox.js";
import { refundAmountMinor, resumePendingRefunds } from "./refunds.service.js";

// biome-ignore lint/suspicious/noExplicitAny: JSON response bodies
type Json = Record<string, any>;

describe("refundAmountMinor", () => {
  const c = parseCredits;
  it("is amount × remaining ÷ credits, rounded down to the minor unit", () => {
    expect(refundAmountMinor(4900n, c("1000"), c("1000"))).toBe(4900n);
    expect(refundAmountMinor(4900n, c("1000"), c("900"))).toBe(4410n);
    expect(refundAmountMinor(1000n, c("3"), c("2"))).toBe(666n); // 666.67 → 666
    expect(refundAmountMinor(1000n, c("3"), c("0.000000000001"))).toBe(0n);
    expect(refundAmountMinor(4900n, c("1000"), 0n)).toBe(0n);
    // Exact with 12 fractional digits and amounts far beyond a JS number.
    expect(refundAmountMinor(10n ** 20n, c("7"), c("3.5"))).toBe(5n * 10n ** 19n);
  });
  it("refuses remaining outside 0..credits", () => {
    expect(() => refundAmountMinor(100n, c("10"), c("11"))).toThrow(RangeError);
    expect(() => refundAmountMinor(100n, 0n, 0n)).toThrow(RangeError);
  });
});

describe("refunds (sandbox provider)", async () => {
  const app = await createTestApp();
  const ctx = app.runtime.ctx;
  const sandbox = ctx.payments as SandboxProvider;
  const orgId = await app.createOrg({ name: "Refund Org" });
  const billingKey = await app.orgKey(orgId, "billing");
  const adminKey = await app.orgKey(orgId, "admin");
  const readKey = await app.orgKey(orgId, "read");
  const ingestKey = await app.orgKey(orgId, "ingest");
  const otherOrg = await app.createOrg({ name: "Other" });
  const otherKey = await app.orgKey(otherOrg, "billing");

  const createPackage = async (body: Json) =>
    (await app.call("POST", "/v1/credit-packages", { body })).json();
  const growth = await createPackage({
    name: "Growth",
    credits: "1000",
    bonus_credits: "200",
    price: "49.00",
  });
  const thirds = await createPackage({ name: "Thirds", credits: "3", price: "10.00" });
  const expiringBonus = await createPackage({
    name: "Expiring bonus",
    credits: "100",
    bonus_credits: "50",
    price: "20.00",
    bonus_expires_in_days: 30,
  });

  const buy = async (packageId: string, org = orgId) =>
    (
      await app.call("POST", `/v1/organizations/${org}/purchases`, {
        body: { package_id: packageId, save_payment_method: false },
      })
    ).json() as Json;
  const pay = (purchaseId: string, card = "success") =>
    app.call("POST", `/sandbox/checkout/${purchaseId}`, {
      key: null,
      rawBody: new URLSearchParams({ action: "pay", card }).toString(),
      headers: { "content-type": "application/x-www-form-urlencoded" },
    });
  const bought = async (packageId: string, org = orgId) => {
    const p = await buy(packageId, org);
    expect((await pay(p.id)).statusCode).toBe(303);
    return p;
  };
  const refund = (purchaseId: string, body?: Json, key: string | null = billingKey, org = orgId) =>
    app.call("POST", `/v1/organizations/${org}/purchases/${purchaseId}/refund`, { key, body });
  const balance = async (org = orgId) =>
    (await app.call("GET", `/v1/organizations/${org}/balance`)).json().balance as string;
  const use = async (amount: string, org = orgId) => {
    const res = await app.call("POST", `/v1/organizations/${org}/adjustments`, {
      body: { amount: `-${amount}`, reason: "usage stand-in" },
    });
    expect(res.statusCode).toBe(201);
  };
  const purchase = async (id: string, org = orgId) =>
    (await app.call("GET", `/v1/organizations/${org}/purchases/${id}`)).json() as Json;
  const blocksOf = async (purchaseId: string, org = orgId) =>
    (
      (await app.call("GET", `/v1/organizations/${org}/credit-blocks?limit=1000`)).json()
        .data as Json[]
    ).filter((b) => b.purchase_id === purchaseId);
  const events = (type: string, org = orgId) =>
    ctx.db
      .selectFrom("events")
      .selectAll()
      .where("org_id", "=", org)
      .where("type", "=", type)
      .orderBy("id")
      .execute();
  const verify = async (org = orgId) =>
    (await app.call("GET", `/v1/organizations/${org}/ledger/verify`)).json();

  it("refunds an unused purchase in full and voids paid and bonus credits", async () => {
    const before = await balance();
    const p = await bought(growth.id);
    expect(Number(await balance()) - Number(before)).toBe(1200);

    const res = await refund(p.id, { reason: "Customer cancelled" });
    expect(res.statusCode).toBe(200);
    const body = res.json();
    expect(body).toMatchObject({
      refund_id: expect.stringMatching(/^ref_/),
      purchase_id: p.id,
      status: "succeeded",
      amount: "49.00",
      currency: "USD",
      credits_removed: "1200",
      paid_credits_removed: "1000",
      bonus_credits_removed: "200",
      reason: "Customer cancelled",
      purchase: { id: p.id, status: "refunded", refunded_amount: "49.00" },
    });
    expect(await balance()).toBe(before);
    expect((await blocksOf(p.id)).map((b) => [b.source, b.status, b.remaining]).sort()).toEqual([
      ["bonus", "voided", "0"],
      ["purchase", "voided", "0"],
    ]);

    // One `refund` entry per block, attributed and explained.
    const entries = (
      await app.call(
        "GET",
        `/v1/organizations/${orgId}/transactions?reference_id=${body.refund_id}`,
      )
    ).json().data as Json[];
    expect(entries.map((e) => [e.type, e.amount]).sort()).toEqual([
      ["refund", "-1000"],
      ["refund", "-200"],
    ]);
    expect(entries[0]).toMatchObject({
      reason: "Customer cancelled",
      actor: { type: "api_key" },
      reference: { type: "refund", id: body.refund_id },
    });

    // The processor refunded once, with the refund's idempotency key.
    expect(sandbox.refunds).toContainEqual({
      idempotencyKey: `refund:${body.refund_id}`,
      refundId: expect.stringMatching(/^sbx_re_/),
    });

    // A second refund → 409; the event was written once.
    const again = await refund(p.id);
    expect(again.statusCode).toBe(409);
    expect(again.json().error.code).toBe("invalid_state");
    const refunded = (await events("purchase.refunded")).filter(
      (e) => (e.data as Json).purchase_id === p.id,
    );
    expect(refunded).toHaveLength(1);
    expect(refunded[0]!.data).toMatchObject({
      purchase_id: p.id,
      status: "refunded",
      package_id: growth.id,
      amount: "49.00",
      refunded_amount: "49.00",
      refund: {
        refund_id: body.refund_id,
        amount: "49.00",
        credits_removed: "1200",
        origin: "api",
        status: "succeeded",
      },
    });
    expect((await verify()).ok).toBe(true);
  });

  it("refunds only the unused paid credits: bonus credits burn first", async () => {
    const p = await bought(growth.id);
    const before = await balance();
    // 300 used: the 200 bonus credits (unit cost 0) go first, then 100 paid credits.
    await use("300");
    const res = await refund(p.id);
    expect(res.statusCode).toBe(200);
    expect(res.json()).toMatchObject({
      amount: "44.10", // 49.00 × 900 ÷ 1000
      credits_removed: "900",
      paid_credits_removed: "900",
      bonus_credits_removed: "0",
      purchase: { status: "partially_refunded", refunded_amount: "44.10" },
    });
    expect(Number(before) - Number(await balance())).toBe(1200);
  });

  it("an expiring bonus also burns first; the rest of it is voided too", async () => {
    const p = await bought(expiringBonus.id);
    await use("20"); // from the bonus (expires first)
    const res = await refund(p.id);
    expect(res.json()).toMatchObject({
      amount: "20.00",
      paid_credits_removed: "100",
      bonus_credits_removed: "30",
      purchase: { status: "refunded" },
    });
  });

  it("rounds the money down to the minor unit", async () => {
    const p = await bought(thirds.id);
    await use("1");
    const res = await refund(p.id);
    expect(res.json()).toMatchObject({
      amount: "6.66", // 10.00 × 2 ÷ 3 = 6.666…
      credits_removed: "2",
      purchase: { status: "partially_refunded" },
    });
  });

  it("credits that repaid debt count as used", async () => {
    const debtor = await app.createOrg({ name: "Debtor" });
    await ctx.db.transaction().execute((tx) =>
      postEntries(tx, ctx, debtor, [
        {
          kind: "debit",
          type: "usage",
          amount: parseCredits("100"),
          allowDebt: true,
          actor: { type: "system", id: "test" },
        },
      ]),
    );
    expect(await balance(debtor)).toBe("-100");
    const p = await bought(growth.id, debtor);
    expect(await balance(debtor)).toBe("1100");
    const res = await refund(p.id, undefined, app.platformKey, debtor);
    expect(res.statusCode).toBe(200);
    // The paid block started at 900 remaining: 100 went to the debt.
    expect(res.json()).toMatchObject({
      amount: "44.10",
      paid_credits_removed: "900",
      bonus_credits_removed: "200",
      purchase: { status: "partially_refunded" },
    });
    expect(await balance(debtor)).toBe("0");
    expect((await verify(debtor)).ok).toBe(true);
  });

  it("does not take credits that open reservations hold (402, nothing changes); an expired hold no longer counts", async () => {
    const holder = await app.createOrg({ name: "Holder" });
    const p = await bought(thirds.id, holder); // 3 credits for 10.00
    const hold = async (amount: string, expires = 60) => {
      const res = await app.call("POST", `/v1/organizations/${holder}/reservations`, {
        body: { amount, expires_in_seconds: expires },
      });
      expect(res.statusCode).toBe(201);
      return res.json().id as string;
    };
    const held = await hold("1");
    const refused = await refund(p.id, undefined, app.platformKey, holder);
    expect(refused.statusCode).toBe(402);
    expect(refused.json().error).toMatchObject({ code: "insufficient_credits" });
    expect(refused.json().error.message).toMatch(/held by open reservations/);
    expect(await balance(holder)).toBe("3");
    expect((await purchase(p.id, holder)).status).toBe("paid");
    expect(await blocksOf(p.id, holder)).toMatchObject([{ remaining: "3" }]);

    // Released, and a hold past its expiry the sweeper has not marked yet: neither holds credits.
    const release = await app.call(
      "POST",
      `/v1/organizations/${holder}/reservations/${held}/release`,
    );
    expect(release.statusCode).toBe(200);
    const overdue = await hold("2", 1);
    app.clock.advance(1000);
    const res = await refund(p.id, undefined, app.platformKey, holder);
    expect(res.statusCode).toBe(200);
    expect(res.json()).toMatchObject({ amount: "10.00", credits_removed: "3" });
    const after = (await app.call("GET", `/v1/organizations/${holder}/balance`)).json();
    expect(after).toMatchObject({ balance: "0", reserved: "0", available: "0" });
    const rsv = await app.call("GET", `/v1/organizations/${holder}/reservations/${overdue}`);
    expect(rsv.json().status).toBe("expired");
    expect((await verify(holder)).ok).toBe(true);
  });

  it("refuses purchases that are not paid, or have nothing unused left (409)", async () => {
    const pending = await buy(growth.id);
    const r1 = await refund(pending.id);
    expect(r1.statusCode).toBe(409);
    expect(r1.json().error.code).toBe("invalid_state");

    const failed = await buy(growth.id);
    expect((await pay(failed.id, "decline")).statusCode).toBe(402);
    expect((await refund(failed.id)).statusCode).toBe(409);

    const usedUp = await bought(thirds.id);
    await use("3");
    const before = await balance();
    const r3 = await refund(usedUp.id);
    expect(r3.statusCode).toBe(409);
    expect(r3.json().error.message).toMatch(/nothing to refund/);
    expect(await balance()).toBe(before);
    expect((await purchase(usedUp.id)).status).toBe("paid");
  });

  it("validates the body and the ids", async () => {
    const p = await bought(thirds.id);
    const bad = await refund(p.id, { reason: "x".repeat(501) });
    expect(bad.statusCode).toBe(400);
    expect((await refund(p.id, { why: "no" })).statusCode).toBe(400);
    expect((await refund("pur_unknown")).statusCode).toBe(404);
    expect((await purchase(p.id)).status).toBe("paid");
  });

  it("needs a billing, admin or platform key; other organisations see 404", async () => {
    const p = await bought(thirds.id);
    for (const key of [readKey, ingestKey]) {
      const res = await refund(p.id, undefined, key);
      expect(res.statusCode).toBe(403);
      expect(res.json().error.code).toBe("forbidden");
    }
    expect((await refund(p.id, undefined, null)).statusCode).toBe(401);
    // A key of another organisation: its own path, or this org's path.
    expect((await refund(p.id, undefined, otherKey, otherOrg)).statusCode).toBe(404);
    expect((await refund(p.id, undefined, otherKey)).statusCode).toBe(404);
    expect((await purchase(p.id)).status).toBe("paid");

    expect((await refund(p.id, undefined, adminKey)).statusCode).toBe(200);
    const q = await bought(thirds.id);
    expect((await refund(q.id, undefined, app.platformKey)).statusCode).toBe(200);
  });

  it("replays the response for the same Idempotency-Key", async () => {
    const p = await bought(thirds.id);
    const headers = { "idempotency-key": `refund-${p.id}` };
    const path = `/v1/organizations/${orgId}/purchases/${p.id}/refund`;
    const first = await app.call("POST", path, { key: billingKey, body: {}, headers });
    const second = await app.call("POST", path, { key: billingKey, body: {}, headers });
    expect(second.statusCode).toBe(200);
    expect(second.json().refund_id).toBe(first.json().refund_id);
  });

  it("concurrent refunds of one purchase refund once", async () => {
    const p = await bought(growth.id);
    const before = await balance();
    const results = await Promise.all([refund(p.id), refund(p.id), refund(p.id)]);
    const okIds = new Set(
      results.filter((r) => r.statusCode === 200).map((r) => r.json().refund_id),
    );
    expect(okIds.size).toBe(1);
    for (const r of results) expect([200, 409]).toContain(r.statusCode);
    expect(Number(before) - Number(await balance())).toBe(1200);
    expect(
      sandbox.refunds.filter((r) => r.idempotencyKey === `refund:${[...okIds][0]}`),
    ).toHaveLength(1);
    const rows = await ctx.db
      .selectFrom("refunds")
      .selectAll()
      .where("purchase_id", "=", p.id)
      .execute();
    expect(rows).toHaveLength(1);
  });

  it("emits purchase.completed and purchase.failed with useful data", async () => {
    const p = await bought(expiringBonus.id);
    const [completed] = (await events("purchase.completed")).filter(
      (e) => (e.data as Json).purchase_id === p.id,
    );
    expect(completed!.data).toEqual({
      purchase_id: p.id,
      status: "paid",
      source: "checkout",
      package_id: expiringBonus.id,
      package_name: "Expiring bonus",
      credits: "100",
      bonus_credits: "50",
      total_credits: "150",
      amount: "20.00",
      currency: "USD",
      refunded_amount: "0.00",
      provider: "sandbox",
      user_id: null,
      actor: { type: "api_key", id: expect.stringMatching(/^key_/) },
      paid_at: app.clock.now().toISOString(),
    });

    const f = await buy(thirds.id);
    await pay(f.id, "decline");
    const [failed] = (await events("purchase.failed")).filter(
      (e) => (e.data as Json).purchase_id === f.id,
    );
    expect(failed!.data).toMatchObject({
      purchase_id: f.id,
      status: "failed",
      failure_code: "card_declined",
      amount: "10.00",
    });
  });
});

describe("refunds when the processor fails", async () => {
  const app = await createTestApp();
  const ctx = app.runtime.ctx;
  const orgId = await app.createOrg({ name: "Flaky" });
  const pkg = (
    await app.call("POST", "/v1/credit-packages", {
      body: { name: "P", credits: "100", bonus_credits: "10", price: "5.00" },
    })
  ).json();

  /** The sandbox, failing refunds as told: before refunding, or after (a lost answer). */
  let mode: "ok" | "down" | "lost_answer" | "refused" = "ok";
  class FlakySandbox extends SandboxProvider {
    override async refund(input: RefundInput): Promise<RefundResult> {
      if (mode === "down") throw new PaymentProviderError("connection refused", true);
      if (mode === "refused") throw new PaymentProviderError("charge disputed", false);
      const result = await super.refund(input);
      if (mode === "lost_answer") throw new PaymentProviderError("timeout", true);
      return result;
    }
  }
  const sandbox = new FlakySandbox(app.config.publicUrl);
  setPaymentProvider(ctx, sandbox);

  const bought = async () => {
    const p = (
      await app.call("POST", `/v1/organizations/${orgId}/purchases`, {
        body: { package_id: pkg.id },
      })
    ).json();
    await app.call("POST", `/sandbox/checkout/${p.id}`, {
      key: null,
      rawBody: "action=pay&card=success",
      headers: { "content-type": "application/x-www-form-urlencoded" },
    });
    return p as Json;
  };
  const refund = (id: string, headers: Record<string, string> = {}) =>
    app.call("POST", `/v1/organizations/${orgId}/purchases/${id}/refund`, { body: {}, headers });
  const balance = async () =>
    (await app.call("GET", `/v1/organizations/${orgId}/balance`)).json().balance as string;
  const refundRows = (purchaseId: string) =>
    ctx.db.selectFrom("refunds").selectAll().where("purchase_id", "=", purchaseId).execute();

  it("processor down: 503, credits already voided, a retry (same Idempotency-Key) finishes the same refund", async () => {
    const p = await bought();
    mode = "down";
    const key = { "idempotency-key": `refund-${p.id}` };
    const res = await refund(p.id, key);
    expect(res.statusCode).toBe(503);
    expect(res.json().error.code).toBe("service_unavailable");
    expect(await balance()).toBe("0");
    const [pending] = await refundRows(p.id);
    expect(pending).toMatchObject({ status: "pending", provider_refund_id: null });
    expect(
      (await app.call("GET", `/v1/organizations/${orgId}/purchases/${p.id}`)).json().status,
    ).toBe("paid");

    mode = "ok";
    // The 503 was not kept for the key: the retry runs, and its answer is the one replayed.
    const retry = await refund(p.id, key);
    expect(retry.statusCode).toBe(200);
    expect(retry.headers["idempotent-replayed"]).toBeUndefined();
    expect(retry.json()).toMatchObject({ refund_id: pending!.id, amount: "5.00" });
    const replay = await refund(p.id, key);
    expect(replay.headers["idempotent-replayed"]).toBe("true");
    expect(replay.json()).toEqual(retry.json());
    expect(await refundRows(p.id)).toHaveLength(1);
    expect(
      sandbox.refunds.filter((r) => r.idempotencyKey === `refund:${pending!.id}`),
    ).toHaveLength(1);
  });

  it("answer lost after the processor refunded: the recovery task finishes it, refunding once", async () => {
    const p = await bought();
    mode = "lost_answer";
    expect((await refund(p.id)).statusCode).toBe(503);
    const [pending] = await refundRows(p.id);
    expect(
      sandbox.refunds.filter((r) => r.idempotencyKey === `refund:${pending!.id}`),
    ).toHaveLength(1);

    mode = "ok";
    // Too recent: the request may still be running.
    expect(await resumePendingRefunds(ctx)).toBe(0);
    app.clock.advance(3 * 60_000);
    expect(await resumePendingRefunds(ctx)).toBe(1);
    const [done] = await refundRows(p.id);
    expect(done).toMatchObject({ status: "succeeded", provider_refund_id: expect.any(String) });
    const after = (await app.call("GET", `/v1/organizations/${orgId}/purchases/${p.id}`)).json();
    expect(after).toMatchObject({ status: "refunded", refunded_amount: "5.00" });
    expect(
      sandbox.refunds.filter((r) => r.idempotencyKey === `refund:${pending!.id}`),
    ).toHaveLength(1);
    expect(await resumePendingRefunds(ctx)).toBe(0);
  });

  it("refused by the processor: the refund fails and the credits are restored", async () => {
    const p = await bought();
    mode = "refused";
    const res = await refund(p.id);
    expect(res.statusCode).toBe(409);
    expect(res.json().error.message).toMatch(/refused the refund.*restored/);
    expect(await balance()).toBe("110");
    const [failed] = await refundRows(p.id);
    expect(failed!.status).toBe("failed");
    const blocks = (
      (await app.call("GET", `/v1/organizations/${orgId}/credit-blocks?status=active`)).json()
        .data as Json[]
    ).filter((b) => b.purchase_id === p.id);
    expect(blocks.map((b) => [b.source, b.remaining, b.unit_cost]).sort()).toEqual([
      ["bonus", "10", "0"],
      ["purchase", "100", "0.05"],
    ]);

    // The purchase is still paid and can be refunded later.
    mode = "ok";
    const later = await refund(p.id);
    expect(later.statusCode).toBe(200);
    expect(later.json()).toMatchObject({ amount: "5.00", credits_removed: "110" });
    expect(await balance()).toBe("0");
    expect((await app.call("GET", `/v1/organizations/${orgId}/ledger/verify`)).json().ok).toBe(
      true,
    );
  });

  it("the OpenAPI document describes the refund and Stripe webhook routes", async () => {
    const doc = (await app.call("GET", "/openapi.json", { key: null })).json();
    const refundOp = doc.paths["/v1/organizations/{org_id}/purchases/{id}/refund"].post;
    expect(Object.keys(refundOp.responses)).toEqual(
      expect.arrayContaining(["200", "400", "403", "404", "409", "503"]),
    );
    expect(refundOp.responses["200"].content["application/json"].schema.properties).toHaveProperty(
      "credits_removed",
    );
    const webhook = doc.paths["/v1/webhooks/stripe"].post;
    expect(webhook.security).toEqual([]);
    expect(webhook.responses["200"]).toBeDefined();
  });

  it("the Stripe webhook route does not exist with the sandbox provider", async () => {
    const res = await app.call("POST", "/v1/webhooks/stripe", {
      key: null,
      body: { id: "evt_1", type: "checkout.session.completed" },
      headers: { "stripe-signature": "t=1,v1=abc" },
    });
    expect(res.statusCode).toBe(404);
    expect(res.json().error.code).toBe("not_found");
  });
});
