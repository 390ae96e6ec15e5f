import { afterAll, describe, expect, it } from "vitest";
import { createTestApp } from "../../../test/support/app.js";
import { startFakeStripe } from "../../../test/support/fake-stripe.js";
import { expirePurchases, fulfilPurchase } from "./purchases.service.js";

// biome-ignore lint/suspicious/noExplicitAny: JSON response bodies
type Json = Record<string, any>;

describe("purchases (sandbox provider)", async () => {
  const app = await createTestApp();
  const orgId = await app.createOrg({ name: "Acme" });
  const billingKey = await app.orgKey(orgId, "billing");
  const readKey = await app.orgKey(orgId, "read");

  const pkg = (
    await app.call("POST", "/v1/credit-packages", {
      body: {
        name: "Growth",
        credits: "1000",
        bonus_credits: "200",
        price: "49.00",
        bonus_expires_in_days: 30,
      },
    })
  ).json();
  const noBonus = (
    await app.call("POST", "/v1/credit-packages", {
      body: { name: "Plain", credits: "300", price: "10.00" },
    })
  ).json();
  const retired = (
    await app.call("POST", "/v1/credit-packages", {
      body: { name: "Retired", credits: "10", price: "1.00", active: false },
    })
  ).json();

  const buy = (body: Json, key = billingKey, headers?: Record<string, string>) =>
    app.call("POST", `/v1/organizations/${orgId}/purchases`, { key, body, headers });
  const pay = (purchaseId: string, card = "success") =>
    app.call("POST", `/sandbox/checkout/${purchaseId}`, {
      key: null,
      rawBody: new URLSearchParams({ action: "pay", card }).toString(),
      headers: { "content-type": "application/x-www-form-urlencoded" },
    });

  it("creates a pending purchase with a sandbox checkout", async () => {
    const res = await buy({ package_id: pkg.id });
    expect(res.statusCode).toBe(201);
    const p = res.json();
    expect(p).toMatchObject({
      id: expect.stringMatching(/^pur_/),
      org_id: orgId,
      status: "pending",
      source: "checkout",
      package_id: pkg.id,
      package_name: "Growth",
      credits: "1000",
      bonus_credits: "200",
      amount: "49.00",
      currency: "USD",
      refunded_amount: "0.00",
      provider: "sandbox",
      save_payment_method: true,
      user_id: null,
      actor: { type: "api_key", id: expect.stringMatching(/^key_/) },
      paid_at: null,
      created_at: "2026-11-24T10:00:00.000Z",
      expires_at: "2026-11-25T10:00:00.000Z",
    });
    expect(p.checkout_url).toBe(`http://tally.test/sandbox/checkout/${p.id}`);
    expect(p.success_url).toBe(`http://tally.test/portal?purchase=${p.id}&checkout=success`);
    expect(p.cancel_url).toBe(`http://tally.test/portal?purchase=${p.id}&checkout=cancel`);

    const got = await app.call("GET", `/v1/organizations/${orgId}/purchases/${p.id}`, {
      key: readKey,
    });
    expect(got.statusCode).toBe(200);
    expect(got.json()).toEqual(p);
  });

  it("records the acting user and the given return URLs", async () => {
    await app.call("POST", `/v1/organizations/${orgId}/users`, {
      body: { id: "u-17", email: "ada@example.com", role: "billing" },
    });
    const res = await buy(
      {
        package_id: noBonus.id,
        success_url: "https://app.example.com/ok",
        cancel_url: "https://app.example.com/no",
        save_payment_method: false,
      },
      billingKey,
      { "on-behalf-of": "u-17" },
    );
    expect(res.statusCode).toBe(201);
    expect(res.json()).toMatchObject({
      user_id: "u-17",
      success_url: "https://app.example.com/ok",
      cancel_url: "https://app.example.com/no",
      save_payment_method: false,
    });
  });

  it("refuses unknown (404) and inactive (409) packages and bad bodies (400)", async () => {
    const unknown = await buy({ package_id: "pkg_nope" });
    expect(unknown.statusCode).toBe(404);
    expect(unknown.json().error.code).toBe("not_found");
    const inactive = await buy({ package_id: retired.id });
    expect(inactive.statusCode).toBe(409);
    expect(inactive.json().error.code).toBe("invalid_state");
    for (const body of [
      {},
      { package_id: pkg.id, success_url: "javascript:alert(1)" },
      { package_id: pkg.id, success_url: "not a url" },
      { package_id: pkg.id, save_payment_method: "yes" },
      { package_id: pkg.id, extra: 1 },
    ]) {
      const res = await buy(body);
      expect(res.statusCode, JSON.stringify(body)).toBe(400);
      expect(res.json().error.code).toBe("invalid_request");
    }
  });

  it("replays a purchase for the same Idempotency-Key", async () => {
    const headers = { "idempotency-key": "buy-once" };
    const first = await buy({ package_id: noBonus.id }, billingKey, headers);
    const second = await buy({ package_id: noBonus.id }, billingKey, headers);
    expect(second.statusCode).toBe(201);
    expect(second.json().id).toBe(first.json().id);
  });

  it("pays in the sandbox: purchase and bonus entries, exactly once", async () => {
    const p = (await buy({ package_id: pkg.id })).json();
    const res = await pay(p.id);
    expect(res.statusCode).toBe(303);
    expect(res.headers.location).toBe(p.success_url);

    const paid = (
      await app.call("GET", `/v1/organizations/${orgId}/purchases/${p.id}`, { key: readKey })
    ).json();
    expect(paid).toMatchObject({ status: "paid", paid_at: "2026-11-24T10:00:00.000Z" });

    const balance = (await app.call("GET", `/v1/organizations/${orgId}/balance`)).json();
    expect(balance.balance).toBe("1200");

    const blocks = (await app.call("GET", `/v1/organizations/${orgId}/credit-blocks`)).json()
      .data as Json[];
    const ofPurchase = blocks.filter((b) => b.purchase_id === p.id);
    expect(ofPurchase).toHaveLength(2);
    const paidBlock = ofPurchase.find((b) => b.source === "purchase")!;
    const bonusBlock = ofPurchase.find((b) => b.source === "bonus")!;
    expect(paidBlock).toMatchObject({ original: "1000", unit_cost: "0.049", expires_at: null });
    expect(bonusBlock).toMatchObject({
      original: "200",
      unit_cost: "0",
      expires_at: "2026-12-24T10:00:00.000Z",
    });

    const entries = (
      await app.call("GET", `/v1/organizations/${orgId}/transactions?reference_id=${p.id}`)
    ).json().data as Json[];
    expect(entries.map((e) => [e.type, e.amount]).sort()).toEqual([
      ["bonus", "200"],
      ["purchase", "1000"],
    ]);
    expect(entries[0]!.actor).toEqual(p.actor);

    // Paying again (double submit, back button) changes nothing.
    const again = await pay(p.id);
    expect(again.statusCode).toBe(303);
    const after = (await app.call("GET", `/v1/organizations/${orgId}/balance`)).json();
    expect(after.balance).toBe("1200");
    const entriesAfter = (
      await app.call("GET", `/v1/organizations/${orgId}/transactions?reference_id=${p.id}`)
    ).json().data;
    expect(entriesAfter).toHaveLength(2);
  });

  it("concurrent payments of one purchase grant once", async () => {
    const before = (await app.call("GET", `/v1/organizations/${orgId}/balance`)).json().balance;
    const p = (await buy({ package_id: noBonus.id })).json();
    const results = await Promise.all([pay(p.id), pay(p.id), pay(p.id)]);
    expect(results.map((r) => r.statusCode)).toEqual([303, 303, 303]);
    const after = (await app.call("GET", `/v1/organizations/${orgId}/balance`)).json().balance;
    expect(Number(after) - Number(before)).toBe(300);
  });

  it("a declined card marks the purchase failed; another card may still pay it", async () => {
    const p = (await buy({ package_id: noBonus.id })).json();
    const declined = await pay(p.id, "decline");
    expect(declined.statusCode).toBe(402);
    expect(declined.body).toContain("declined");
    const failed = (await app.call("GET", `/v1/organizations/${orgId}/purchases/${p.id}`)).json();
    expect(failed).toMatchObject({ status: "failed", failure_code: "card_declined" });
    // A second card declined on the same page is a second failure, with its own event.
    expect((await pay(p.id, "decline")).statusCode).toBe(402);
    const failures = (
      await app.runtime.ctx.db
        .selectFrom("events")
        .select("data")
        .where("org_id", "=", orgId)
        .where("type", "=", "purchase.failed")
        .execute()
    ).filter((e) => (e.data as { purchase_id?: string }).purchase_id === p.id);
    expect(failures).toHaveLength(2);

    const action = await pay(p.id, "requires_action");
    expect(action.statusCode).toBe(402);
    expect(action.body).toContain("authentication");

    const ok = await pay(p.id, "success");
    expect(ok.statusCode).toBe(303);
    const paid = (await app.call("GET", `/v1/organizations/${orgId}/purchases/${p.id}`)).json();
    expect(paid).toMatchObject({ status: "paid", failure_code: null });
  });

  it("lists newest first with paging and a status filter", async () => {
    const page1 = await app.call("GET", `/v1/organizations/${orgId}/purchases?limit=2`, {
      key: readKey,
    });
    expect(page1.statusCode).toBe(200);
    expect(page1.json().data).toHaveLength(2);
    expect(page1.json().has_more).toBe(true);
    const page2 = await app.call(
      "GET",
      `/v1/organizations/${orgId}/purchases?limit=1000&cursor=${page1.json().next_cursor}`,
      { key: readKey },
    );
    const all = [...page1.json().data, ...page2.json().data] as Json[];
    const ids = all.map((p) => p.id);
    expect(ids).toEqual([...ids].sort().reverse());
    expect(new Set(ids).size).toBe(ids.length);

    const paid = await app.call("GET", `/v1/organizations/${orgId}/purchases?status=paid`);
    expect(paid.json().data.length).toBeGreaterThanOrEqual(3);
    expect(paid.json().data.every((p: Json) => p.status === "paid")).toBe(true);
    const bad = await app.call("GET", `/v1/organizations/${orgId}/purchases?status=done`);
    expect(bad.statusCode).toBe(400);
  });

  it("expires unpaid purchases after 24 h; an expired checkout cannot be paid", async () => {
    const p = (await buy({ package_id: noBonus.id })).json();
    app.clock.advance(24 * 60 * 60 * 1000);
    const refused = await pay(p.id);
    expect(refused.statusCode).toBe(409);
    expect(refused.body).toContain("expired");
    expect(await expirePurchases(app.runtime.ctx)).toBeGreaterThanOrEqual(1);
    const expired = (await app.call("GET", `/v1/organizations/${orgId}/purchases/${p.id}`)).json();
    expect(expired.status).toBe("expired");
  });
});

describe("fulfilPurchase", async () => {
  const app = await createTestApp();
  const ctx = app.runtime.ctx;
  const orgId = await app.createOrg();
  const pkg = (
    await app.call("POST", "/v1/credit-packages", {
      body: { name: "Plain", credits: "300", bonus_credits: "30", price: "10.00" },
    })
  ).json();
  const buy = async () =>
    (
      await app.call("POST", `/v1/organizations/${orgId}/purchases`, {
        body: { package_id: pkg.id },
      })
    ).json().id as string;
  const balance = async () =>
    (await app.call("GET", `/v1/organizations/${orgId}/balance`)).json().balance;

  it("grants once per payment; a repeated notification is recognised", async () => {
    const id = await buy();
    const first = await fulfilPurchase(ctx, orgId, id, { providerPaymentId: "sbx_pi_one" });
    expect(first).toMatchObject({ ok: true, value: { fulfilled: true } });
    const again = await fulfilPurchase(ctx, orgId, id, { providerPaymentId: "sbx_pi_one" });
    expect(again).toMatchObject({ ok: true, value: { fulfilled: false } });
    expect(await balance()).toBe("330");
  });

  it("refuses a second payment for a paid purchase and a payment reused for another purchase", async () => {
    const id = await buy();
    expect((await fulfilPurchase(ctx, orgId, id, { providerPaymentId: "sbx_pi_two" })).ok).toBe(
      true,
    );
    const second = await fulfilPurchase(ctx, orgId, id, { providerPaymentId: "sbx_pi_other" });
    expect(second).toMatchObject({ ok: false, code: "invalid_state" });

    const other = await buy();
    const reused = await fulfilPurchase(ctx, orgId, other, { providerPaymentId: "sbx_pi_two" });
    expect(reused).toMatchObject({ ok: false, code: "invalid_state" });
    const row = (await app.call("GET", `/v1/organizations/${orgId}/purchases/${other}`)).json();
    expect(row.status).toBe("pending");
    expect(await balance()).toBe("660");
  });

  it("a late payment of an expired purchase still counts; unknown purchases are not found", async () => {
    const id = await buy();
    app.clock.advance(25 * 60 * 60 * 1000);
    await expirePurchases(ctx);
    const late = await fulfilPurchase(ctx, orgId, id, { providerPaymentId: "sbx_pi_late" });
    expect(late).toMatchObject({
      ok: true,
      value: { fulfilled: true, purchase: { status: "paid" } },
    });
    expect(await balance()).toBe("990");
    expect(await fulfilPurchase(ctx, orgId, "pur_nope", { providerPaymentId: "x" })).toMatchObject({
      ok: false,
      code: "not_found",
    });
  });
});

describe("purchases (Stripe provider against the fake Stripe)", async () => {
  const fake = await startFakeStripe();
  afterAll(() => fake.close());
  const app = await createTestApp({ env: fake.env });
  const orgId = await app.createOrg({ name: "Stripe Org" });
  const pkg = (
    await app.call("POST", "/v1/credit-packages", {
      body: { name: "Growth", credits: "1000", bonus_credits: "200", price: "49.00" },
    })
  ).json();

  it("opens a Stripe Checkout Session for the purchase", async () => {
    const res = await app.call("POST", `/v1/organizations/${orgId}/purchases`, {
      body: { package_id: pkg.id },
    });
    expect(res.statusCode).toBe(201);
    const p = res.json();
    expect(p.provider).toBe("stripe");
    expect(p.checkout_url).toMatch(new RegExp(`^${fake.url}/c/pay/cs_test_`));
    const [call] = fake.calls("POST", "/v1/checkout/sessions");
    expect(call!.body).toMatchObject({
      client_reference_id: p.id,
      metadata: { purchase_id: p.id, org_id: orgId },
      payment_intent_data: { setup_future_usage: "off_session" },
      success_url: p.success_url,
    });
    // The sandbox page does not serve Stripe purchases.
    const page = await app.call("GET", `/sandbox/checkout/${p.id}`, { key: null });
    expect(page.statusCode).toBe(404);
  });

  it("sends Stripe the minor units Stripe counts (HUF in hundredths, not ICU's whole forints)", async () => {
    const huf = (
      await app.call("POST", "/v1/credit-packages", {
        body: { name: "Forint", credits: "1000", price: "4990", currency: "HUF" },
      })
    ).json();
    expect(huf.price).toBe("4990.00");
    const res = await app.call("POST", `/v1/organizations/${orgId}/purchases`, {
      body: { package_id: huf.id, save_payment_method: false },
    });
    expect(res.statusCode).toBe(201);
    expect(res.json()).toMatchObject({ amount: "4990.00", currency: "HUF" });
    const call = fake.calls("POST", "/v1/checkout/sessions").at(-1)!;
    expect(call.body).toMatchObject({
      line_items: [{ price_data: { currency: "huf", unit_amount: "499000" } }],
    });
    await app.call("PATCH", `/v1/credit-packages/${huf.id}`, { body: { active: false } });
  });

  it("answers 503 and marks the purchase failed when Stripe is down", async () => {
    fake.failNext(500, 3);
    const res = await app.call("POST", `/v1/organizations/${orgId}/purchases`, {
      body: { package_id: pkg.id, save_payment_method: false },
    });
    expect(res.statusCode).toBe(503);
    expect(res.json().error.code).toBe("service_unavailable");
    const failed = await app.call("GET", `/v1/organizations/${orgId}/purchases?status=failed`);
    expect(failed.json().data).toHaveLength(1);
    expect(failed.json().data[0].failure_code).toBe("checkout_unavailable");
  });
});
