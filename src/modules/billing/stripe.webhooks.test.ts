import { afterAll, describe, expect, it } from "vitest";
import { createTestApp } from "../../../test/support/app.js";
import { startFakeStripe } from "../../../test/support/fake-stripe.js";
import { insertTopupPurchase } from "../../../test/support/purchases.js";
import type { Db } from "../../db/index.js";
import type { StripeProvider } from "./providers/stripe.js";
import { expirePurchases, fulfilPurchaseInTx } from "./purchases.service.js";
import {
  applyKeptRefunds,
  reflectProviderRefundInTx,
  resumePendingRefunds,
} from "./refunds.service.js";

// biome-ignore lint/suspicious/noExplicitAny: JSON bodies
type Json = Record<string, any>;

describe("Stripe webhooks against the fake Stripe", async () => {
  const fake = await startFakeStripe();
  afterAll(() => fake.close());
  const app = await createTestApp({ env: fake.env });
  const ctx = app.runtime.ctx;
  const orgId = await app.createOrg({ name: "Stripe Org" });
  const pkg = (
    await app.call("POST", "/v1/credit-packages", {
      body: { name: "Growth", credits: "1000", bonus_credits: "200", price: "49.00" },
    })
  ).json();

  const nowSeconds = () => Math.floor(app.clock.now().getTime() / 1000);

  /** Sends a signed delivery of `event` as Stripe would. */
  const deliver = (event: Json, options: { secret?: string; timestamp?: number } = {}) => {
    const { payload, signature } = fake.signedWebhook(event, {
      timestamp: nowSeconds(),
      ...options,
    });
    return app.call("POST", "/v1/webhooks/stripe", {
      key: null,
      rawBody: payload,
      headers: { "stripe-signature": signature },
    });
  };

  /** A purchase with its Stripe Checkout Session. */
  const checkout = async (body: Json = {}) => {
    const res = await app.call("POST", `/v1/organizations/${orgId}/purchases`, {
      body: { package_id: pkg.id, ...body },
    });
    expect(res.statusCode).toBe(201);
    const purchase = res.json();
    const session = [...fake.sessions.values()].find((s) => s.client_reference_id === purchase.id)!;
    return { purchase, sessionId: session.id as string };
  };
  const sessionEvent = (type: string, sessionId: string, id?: string) =>
    fake.event(type, { ...fake.sessions.get(sessionId)!, _internal: undefined }, id);

  const purchase = async (id: string) =>
    (await app.call("GET", `/v1/organizations/${orgId}/purchases/${id}`)).json() as Json;
  const balance = async () =>
    (await app.call("GET", `/v1/organizations/${orgId}/balance`)).json().balance as string;
  const entriesOf = async (purchaseId: string) =>
    (
      await app.call("GET", `/v1/organizations/${orgId}/transactions?reference_id=${purchaseId}`)
    ).json().data as Json[];
  const inbound = (eventId: string) =>
    ctx.db
      .selectFrom("inbound_webhook_events")
      .selectAll()
      .where("event_id", "=", eventId)
      .executeTakeFirst();

  it("checkout.session.completed (paid) grants credits and bonus and saves the card", async () => {
    const { purchase: p, sessionId } = await checkout();
    fake.completeSession(sessionId, { last4: "4444", brand: "mastercard" });
    const before = await balance();
    const event = sessionEvent("checkout.session.completed", sessionId);
    const res = await deliver(event);
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ received: true, outcome: "purchase_paid" });

    const paid = await purchase(p.id);
    expect(paid).toMatchObject({ status: "paid", paid_at: app.clock.now().toISOString() });
    expect(Number(await balance()) - Number(before)).toBe(1200);
    expect((await entriesOf(p.id)).map((e) => [e.type, e.amount]).sort()).toEqual([
      ["bonus", "200"],
      ["purchase", "1000"],
    ]);
    // The session was re-fetched (with the PaymentIntent's card) before fulfilling.
    const fetched = fake.calls("GET", `/v1/checkout/sessions/${sessionId}`);
    expect(fetched.length).toBeGreaterThanOrEqual(1);
    const card = await ctx.db
      .selectFrom("payment_methods")
      .selectAll()
      .where("org_id", "=", orgId)
      .executeTakeFirstOrThrow();
    expect(card).toMatchObject({ provider: "stripe", brand: "mastercard", last4: "4444" });
    expect(await inbound(event.id as string)).toMatchObject({
      status: "processed",
      org_id: orgId,
      object_id: sessionId,
      type: "checkout.session.completed",
    });
    const events = await ctx.db
      .selectFrom("events")
      .selectAll()
      .where("org_id", "=", orgId)
      .where("type", "=", "purchase.completed")
      .execute();
    expect(events.map((e) => (e.data as Json).purchase_id)).toContain(p.id);

    // The same delivery again: acknowledged as a duplicate, nothing granted.
    const again = await deliver(event);
    expect(again.statusCode).toBe(200);
    expect(again.json()).toEqual({ received: true, duplicate: true });
    // A different event about the same (paid) session: recognised as already paid.
    const other = await deliver(sessionEvent("checkout.session.completed", sessionId));
    expect(other.json()).toMatchObject({ outcome: "already_paid" });
    expect(Number(await balance()) - Number(before)).toBe(1200);
    expect(await entriesOf(p.id)).toHaveLength(2);
  });

  it("a forged, missing or tampered signature → 400 and nothing changes", async () => {
    const { purchase: p, sessionId } = await checkout();
    fake.completeSession(sessionId);
    const before = await balance();
    const event = sessionEvent("checkout.session.completed", sessionId);

    const forged = await deliver(event, { secret: "whsec_not_the_secret" });
    expect(forged.statusCode).toBe(400);
    expect(forged.json().error.code).toBe("invalid_request");

    const missing = await app.call("POST", "/v1/webhooks/stripe", {
      key: null,
      rawBody: JSON.stringify(event),
    });
    expect(missing.statusCode).toBe(400);
    expect(missing.json().error.code).toBe("invalid_request");

    // A valid signature of another body.
    const { signature } = fake.signedWebhook(sessionEvent("checkout.session.expired", sessionId), {
      timestamp: nowSeconds(),
    });
    const tampered = await app.call("POST", "/v1/webhooks/stripe", {
      key: null,
      rawBody: JSON.stringify(event),
      headers: { "stripe-signature": signature },
    });
    expect(tampered.statusCode).toBe(400);

    expect((await purchase(p.id)).status).toBe("pending");
    expect(await balance()).toBe(before);
    expect(await inbound(event.id as string)).toBeUndefined();
    expect(fake.calls("GET", `/v1/checkout/sessions/${sessionId}`)).toHaveLength(0);

    // The genuine delivery still works afterwards.
    expect((await deliver(event)).json()).toMatchObject({ outcome: "purchase_paid" });
  });

  it("a signature older than 300 s → 400; within the tolerance it is accepted", async () => {
    const { purchase: p, sessionId } = await checkout();
    fake.completeSession(sessionId);
    const event = sessionEvent("checkout.session.completed", sessionId);
    const stale = await deliver(event, { timestamp: nowSeconds() - 301 });
    expect(stale.statusCode).toBe(400);
    expect(stale.json().error.message).toMatch(/tolerance/i);
    expect((await purchase(p.id)).status).toBe("pending");

    const recent = await deliver(event, { timestamp: nowSeconds() - 290 });
    expect(recent.statusCode).toBe(200);
    expect((await purchase(p.id)).status).toBe("paid");
  });

  it("async payment: completed (unpaid) waits; succeeded arriving first grants once", async () => {
    const { purchase: p, sessionId } = await checkout();
    fake.completeSession(sessionId, { payment: "pending" });
    const completedUnpaid = sessionEvent("checkout.session.completed", sessionId);
    const before = await balance();

    // The bank debit clears; Stripe's async_payment_succeeded overtakes the completed event.
    const session = fake.sessions.get(sessionId)!;
    fake.paymentIntents.get(session.payment_intent as string)!.status = "succeeded";
    session.payment_status = "paid";
    const succeeded = await deliver(
      sessionEvent("checkout.session.async_payment_succeeded", sessionId),
    );
    expect(succeeded.json()).toMatchObject({ outcome: "purchase_paid" });
    // The late completed event carries payment_status "unpaid"; the re-fetched session is paid.
    expect((completedUnpaid as Json).data.object.payment_status).toBe("unpaid");
    const late = await deliver(completedUnpaid);
    expect(late.json()).toMatchObject({ outcome: "already_paid" });

    expect((await purchase(p.id)).status).toBe("paid");
    expect(Number(await balance()) - Number(before)).toBe(1200);
    expect(await entriesOf(p.id)).toHaveLength(2);
  });

  it("async payment: completed (unpaid) leaves it pending; async_payment_failed fails it", async () => {
    const { purchase: p, sessionId } = await checkout();
    fake.completeSession(sessionId, { payment: "pending" });
    const waiting = await deliver(sessionEvent("checkout.session.completed", sessionId));
    expect(waiting.json()).toMatchObject({ outcome: "awaiting_payment" });
    expect((await purchase(p.id)).status).toBe("pending");

    const failed = await deliver(sessionEvent("checkout.session.async_payment_failed", sessionId));
    expect(failed.json()).toMatchObject({ outcome: "purchase_failed" });
    expect(await purchase(p.id)).toMatchObject({
      status: "failed",
      failure_code: "async_payment_failed",
    });
    const events = await ctx.db
      .selectFrom("events")
      .selectAll()
      .where("org_id", "=", orgId)
      .where("type", "=", "purchase.failed")
      .execute();
    expect(events.map((e) => (e.data as Json).purchase_id)).toContain(p.id);
  });

  it("a bank debit still processing past the checkout window stays pending for days; its late failure fails it", async () => {
    const { purchase: p, sessionId } = await checkout();
    fake.completeSession(sessionId, { payment: "pending" });
    await deliver(sessionEvent("checkout.session.completed", sessionId));
    app.clock.advance(25 * 3_600_000);
    await expirePurchases(ctx);
    expect((await purchase(p.id)).status).toBe("pending"); // not `expired` while it processes
    // Had it shown expired all the same (a purchase completed before this rule), a late failure
    // still fails it, with its code and event.
    await ctx.db
      .updateTable("purchases")
      .set({ status: "expired" })
      .where("id", "=", p.id)
      .execute();
    app.clock.advance(3 * 24 * 3_600_000);
    const failed = await deliver(sessionEvent("checkout.session.async_payment_failed", sessionId));
    expect(failed.json()).toMatchObject({ outcome: "purchase_failed" });
    expect(await purchase(p.id)).toMatchObject({
      status: "failed",
      failure_code: "async_payment_failed",
    });
  });

  it("concurrent duplicate notifications grant once", async () => {
    const { purchase: p, sessionId } = await checkout();
    fake.completeSession(sessionId);
    const before = await balance();
    const completed = sessionEvent("checkout.session.completed", sessionId);
    const asyncSucceeded = sessionEvent("checkout.session.async_payment_succeeded", sessionId);
    const results = await Promise.all([
      deliver(completed),
      deliver(completed),
      deliver(asyncSucceeded),
      deliver(completed),
      deliver(asyncSucceeded),
    ]);
    expect(results.map((r) => r.statusCode)).toEqual([200, 200, 200, 200, 200]);
    const outcomes = results.map((r) => r.json().outcome ?? "duplicate");
    expect(outcomes.filter((o) => o === "purchase_paid")).toHaveLength(1);
    expect(Number(await balance()) - Number(before)).toBe(1200);
    expect(await entriesOf(p.id)).toHaveLength(2);
    expect((await purchase(p.id)).status).toBe("paid");
  });

  it("checkout.session.expired marks the purchase expired", async () => {
    const { purchase: p, sessionId } = await checkout();
    // Stripe has not expired it (a forged-looking early event): the re-fetch says open.
    const early = await deliver(sessionEvent("checkout.session.expired", sessionId));
    expect(early.json()).toMatchObject({ outcome: "awaiting_payment" });
    expect((await purchase(p.id)).status).toBe("pending");

    fake.expireSession(sessionId);
    const res = await deliver(sessionEvent("checkout.session.expired", sessionId));
    expect(res.json()).toMatchObject({ outcome: "purchase_expired" });
    expect((await purchase(p.id)).status).toBe("expired");
  });

  it("ignores event types it does not use and sessions it does not know", async () => {
    const other = await deliver(
      fake.event("customer.created", { id: "cus_x", object: "customer" }),
    );
    expect(other.statusCode).toBe(200);
    expect(other.json()).toMatchObject({ received: true, ignored: true });

    const foreign = fake.event("checkout.session.completed", {
      id: "cs_test_elsewhere",
      object: "checkout.session",
      client_reference_id: "pur_not_ours",
      metadata: {},
      payment_status: "paid",
      status: "complete",
    });
    const res = await deliver(foreign);
    expect(res.statusCode).toBe(200);
    expect(res.json()).toMatchObject({ ignored: true, outcome: "unknown_session" });
    expect(await inbound(foreign.id as string)).toMatchObject({ status: "ignored" });
  });

  it("only the purchase's own session pays it: another session naming it (a payment link's client_reference_id) grants nothing", async () => {
    const stripe = (ctx.payments as StripeProvider).client;
    const otherSession = (reference: string, unitAmount: number) =>
      stripe.checkout.sessions.create({
        mode: "payment",
        client_reference_id: reference,
        success_url: "https://example.com/ok",
        line_items: [
          {
            quantity: 1,
            price_data: { currency: "usd", unit_amount: unitAmount, product_data: { name: "Tip" } },
          },
        ],
      });
    // A purchase whose checkout could not be opened: failed, with no session of its own.
    fake.failNext(500, 3);
    const failed = await app.call("POST", `/v1/organizations/${orgId}/purchases`, {
      body: { package_id: pkg.id, save_payment_method: false },
    });
    expect(failed.statusCode).toBe(503);
    const [victim] = (await app.call("GET", `/v1/organizations/${orgId}/purchases?limit=1`)).json()
      .data as Json[];
    expect(victim).toMatchObject({ status: "failed" });
    // And a pending one, with its own session open.
    const { purchase: open } = await checkout();
    const before = await balance();
    for (const target of [victim!, open]) {
      const tip = await otherSession(target.id, 100); // 1.00 USD
      fake.completeSession(tip.id);
      const res = await deliver(sessionEvent("checkout.session.completed", tip.id));
      expect(res.statusCode).toBe(200);
      expect(res.json()).toMatchObject({ ignored: true, outcome: "unknown_session" });
      expect((await purchase(target.id)).status).toBe(target.status);
    }
    expect(await balance()).toBe(before);
  });

  it("a customer deleted at Stripe does not block the organisation's checkouts: a new one is used", async () => {
    const org = await app.createOrg({ name: "Deleted customer" });
    const buy = (save: boolean) =>
      app.call("POST", `/v1/organizations/${org}/purchases`, {
        body: { package_id: pkg.id, save_payment_method: save },
      });
    const first = (await buy(true)).json();
    const session = [...fake.sessions.values()].find((s) => s.client_reference_id === first.id)!;
    fake.completeSession(session.id as string);
    await deliver(sessionEvent("checkout.session.completed", session.id as string));
    const customer = fake.sessions.get(session.id as string)!.customer as string;
    expect(customer).toMatch(/^cus_/);
    fake.customers.delete(customer); // deleted in the Stripe dashboard
    for (const save of [true, false]) {
      const res = await buy(save);
      expect(res.statusCode, res.body).toBe(201);
      const opened = [...fake.sessions.values()].find(
        (s) => s.client_reference_id === res.json().id,
      )!;
      expect(opened.customer ?? null).not.toBe(customer);
      if (save) expect(opened.customer).toMatch(/^cus_/);
    }
  });

  it("a return URL without a host is 400 (Stripe would refuse it, failing the purchase)", async () => {
    const res = await app.call("POST", `/v1/organizations/${orgId}/purchases`, {
      body: { package_id: pkg.id, success_url: "https://" },
    });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.details[0].field).toBe("/success_url");
  });

  it("a paid session of the purchase that charged another amount grants nothing", async () => {
    const { purchase: p, sessionId } = await checkout();
    fake.completeSession(sessionId);
    fake.sessions.get(sessionId)!.amount_total = 100; // as if altered at the processor
    const before = await balance();
    const res = await deliver(sessionEvent("checkout.session.completed", sessionId));
    expect(res.statusCode).toBe(200);
    expect(res.json()).toMatchObject({ outcome: "amount or currency does not match the purchase" });
    expect((await purchase(p.id)).status).toBe("pending");
    expect(await balance()).toBe(before);
  });

  it("answers 503 when Stripe cannot be reached to re-fetch the session; the retry works", async () => {
    const { purchase: p, sessionId } = await checkout();
    fake.completeSession(sessionId);
    const event = sessionEvent("checkout.session.completed", sessionId);
    fake.failNext(500, 3);
    const res = await deliver(event);
    expect(res.statusCode).toBe(503);
    expect(await inbound(event.id as string)).toBeUndefined();
    expect((await purchase(p.id)).status).toBe("pending");
    const retry = await deliver(event);
    expect(retry.json()).toMatchObject({ outcome: "purchase_paid" });
  });

  describe("off-session payments (auto-topup)", () => {
    const customer = "cus_test_topup";
    const pm = fake.createPaymentMethod({ customer });
    const stripe = (ctx.payments as StripeProvider).client;

    /** A pending auto-topup purchase and its PaymentIntent at Stripe. */
    const topup = async (amount = 4900) => {
      const id = await insertTopupPurchase(ctx, {
        org_id: orgId,
        package_id: pkg.id,
        provider: "stripe",
        bonus_credits: "200",
      });
      const intent = await stripe.paymentIntents.create({
        amount,
        currency: "usd",
        customer,
        payment_method: pm,
        off_session: true,
        confirm: true,
        metadata: { purchase_id: id, org_id: orgId },
      });
      return { id, intent: intent as unknown as Json };
    };

    it("payment_intent.succeeded grants the purchase once", async () => {
      const { id, intent } = await topup();
      const before = await balance();
      const event = fake.event("payment_intent.succeeded", intent);
      expect((await deliver(event)).json()).toMatchObject({ outcome: "purchase_paid" });
      expect((await deliver(event)).json()).toMatchObject({ duplicate: true });
      expect((await deliver(fake.event("payment_intent.succeeded", intent))).json()).toMatchObject({
        outcome: "already_paid",
      });
      expect(Number(await balance()) - Number(before)).toBe(1200);
      expect(await purchase(id)).toMatchObject({ status: "paid", source: "auto_topup" });
    });

    it("payment_intent.payment_failed fails it", async () => {
      const { id, intent } = await topup();
      const failedIntent = {
        ...intent,
        status: "requires_payment_method",
        last_payment_error: { code: "card_declined", message: "Your card was declined." },
      };
      const res = await deliver(fake.event("payment_intent.payment_failed", failedIntent));
      expect(res.json()).toMatchObject({ outcome: "purchase_failed" });
      expect(await purchase(id)).toMatchObject({
        status: "failed",
        failure_code: "card_declined",
        failure_message: "Your card was declined.",
      });
    });

    it("one decline reported twice (job and notification) is one purchase.failed", async () => {
      const { id, intent } = await topup();
      const declined = {
        ...intent,
        status: "requires_payment_method",
        last_payment_error: { code: "card_declined", message: "Your card was declined." },
      };
      const failedEvents = async () =>
        (
          await ctx.db
            .selectFrom("events")
            .select("data")
            .where("type", "=", "purchase.failed")
            .execute()
        ).filter((e) => JSON.stringify(e.data).includes(id));
      expect(
        (await deliver(fake.event("payment_intent.payment_failed", declined))).json(),
      ).toMatchObject({
        outcome: "purchase_failed",
      });
      // Stripe's second delivery under a new event id, as after the charge job's own report.
      expect(
        (await deliver(fake.event("payment_intent.payment_failed", declined))).json(),
      ).toMatchObject({
        ignored: true,
        outcome: "purchase_not_pending",
      });
      expect(await failedEvents()).toHaveLength(1);
    });

    it("authentication_required is not a decline: the purchase stays payable", async () => {
      const { id, intent } = await topup();
      const needsAuth = {
        ...intent,
        status: "requires_payment_method",
        last_payment_error: {
          code: "authentication_required",
          decline_code: "authentication_required",
          message: "This payment requires authentication.",
        },
      };
      const res = await deliver(fake.event("payment_intent.payment_failed", needsAuth));
      expect(res.json()).toMatchObject({ ignored: true, outcome: "authentication_required" });
      expect(await purchase(id)).toMatchObject({ status: "pending", failure_code: null });
      // The customer authenticates later: the payment succeeds and is granted.
      const paid = await deliver(fake.event("payment_intent.succeeded", intent));
      expect(paid.json()).toMatchObject({ outcome: "purchase_paid" });
    });

    it("a refund notified before payment_intent.succeeded is applied with it", async () => {
      const { id, intent } = await topup();
      const before = await balance();
      const early = await deliver(
        fake.event("charge.refunded", {
          id: `ch_for_${intent.id}`,
          object: "charge",
          amount: 4900,
          amount_refunded: 4900,
          currency: "usd",
          payment_intent: intent.id,
          refunded: true,
          status: "succeeded",
        }),
      );
      expect(early.json()).toMatchObject({ outcome: "no_purchase_for_this_payment_yet" });
      const paid = await deliver(fake.event("payment_intent.succeeded", intent));
      expect(paid.json()).toMatchObject({ outcome: "purchase_paid" });
      expect(await purchase(id)).toMatchObject({ status: "refunded", refunded_amount: "49.00" });
      expect(await balance()).toBe(before);
    });

    it("a PaymentIntent whose amount does not match the purchase grants nothing", async () => {
      const { id, intent } = await topup(100);
      const res = await deliver(fake.event("payment_intent.succeeded", intent));
      expect(res.statusCode).toBe(200);
      expect(res.json().outcome).toMatch(/does not match/);
      expect((await purchase(id)).status).toBe("pending");
    });

    it("PaymentIntents of checkout purchases are left to the session events", async () => {
      const { purchase: p, sessionId } = await checkout();
      fake.completeSession(sessionId);
      const intent = fake.paymentIntents.get(
        fake.sessions.get(sessionId)!.payment_intent as string,
      )!;
      const res = await deliver(fake.event("payment_intent.payment_failed", intent));
      expect(res.json()).toMatchObject({ ignored: true, outcome: "checkout_payment" });
      expect((await purchase(p.id)).status).toBe("pending");
    });
  });

  describe("refunds", () => {
    const paidPurchase = async () => {
      const { purchase: p, sessionId } = await checkout({ save_payment_method: false });
      fake.completeSession(sessionId);
      await deliver(sessionEvent("checkout.session.completed", sessionId));
      const intentId = fake.sessions.get(sessionId)!.payment_intent as string;
      return { p, intentId };
    };
    const chargeRefunded = (intentId: string, amountRefunded: number) =>
      fake.event("charge.refunded", {
        id: `ch_for_${intentId}`,
        object: "charge",
        amount: 4900,
        amount_refunded: amountRefunded,
        currency: "usd",
        payment_intent: intentId,
        refunded: amountRefunded === 4900,
        status: "succeeded",
      });

    it("refunds through the Stripe Refunds API with the refund's idempotency key", async () => {
      const { p, intentId } = await paidPurchase();
      const before = await balance();
      await app.call("POST", `/v1/organizations/${orgId}/adjustments`, {
        body: { amount: "-700", reason: "usage stand-in" },
      });
      const res = await app.call("POST", `/v1/organizations/${orgId}/purchases/${p.id}/refund`, {
        body: {},
      });
      expect(res.statusCode).toBe(200);
      // Burn order across the org's blocks may draw from older purchases first; the refund
      // covers what is left of this one.
      const body = res.json();
      expect(body.status).toBe("succeeded");
      const call = fake
        .calls("POST", "/v1/refunds")
        .find((c) => c.idempotencyKey === `refund:${body.refund_id}`)!;
      expect(call.body).toMatchObject({
        payment_intent: intentId,
        metadata: { refund_id: body.refund_id, purchase_id: p.id },
      });
      const stripeRefund = [...fake.refunds.values()].find((r) => r.payment_intent === intentId)!;
      expect((await purchase(p.id)).refunded_amount.replace(".", "")).toBe(
        String(stripeRefund.amount),
      );
      expect(Number(before) - 700 - Number(await balance())).toBe(Number(body.credits_removed));

      // Stripe then reports the refund it made for us: already recorded, nothing more voided.
      const echo = await deliver(chargeRefunded(intentId, stripeRefund.amount as number));
      expect(echo.json()).toMatchObject({ ignored: true, outcome: "refund_already_recorded" });
      const rows = await ctx.db
        .selectFrom("refunds")
        .selectAll()
        .where("purchase_id", "=", p.id)
        .execute();
      expect(rows).toHaveLength(1);
    });

    it("Stripe unreachable: the refund completes later with the same key, refunded once", async () => {
      const { p, intentId } = await paidPurchase();
      fake.failNext(500, 3);
      const res = await app.call("POST", `/v1/organizations/${orgId}/purchases/${p.id}/refund`, {
        body: {},
      });
      expect(res.statusCode).toBe(503);
      const [pending] = await ctx.db
        .selectFrom("refunds")
        .selectAll()
        .where("purchase_id", "=", p.id)
        .execute();
      expect(pending!.status).toBe("pending");
      app.clock.advance(5 * 60_000);
      expect(await resumePendingRefunds(ctx)).toBe(1);
      expect((await purchase(p.id)).status).toBe("refunded");
      expect([...fake.refunds.values()].filter((r) => r.payment_intent === intentId)).toHaveLength(
        1,
      );
      expect(
        fake.requests.filter((r) => r.idempotencyKey === `refund:${pending!.id}`).length,
      ).toBeGreaterThanOrEqual(2);
    });

    it("a pending refund whose payment was meanwhile refunded in the dashboard stands; no credits come back", async () => {
      const { p, intentId } = await paidPurchase();
      const before = await balance();
      fake.failNext(500, 3);
      const res = await app.call("POST", `/v1/organizations/${orgId}/purchases/${p.id}/refund`, {
        body: {},
      });
      expect(res.statusCode).toBe(503);
      // An operator refunds the whole payment in the Stripe dashboard; its notice finds Tally's
      // pending refund covering it.
      const stripe = (ctx.payments as StripeProvider).client;
      await stripe.refunds.create({ payment_intent: intentId, amount: 4900 });
      const notice = await deliver(chargeRefunded(intentId, 4900));
      expect(notice.json()).toMatchObject({ outcome: "refund_already_recorded" });
      // Stripe then refuses Tally's refund: the charge is already refunded.
      app.clock.advance(5 * 60_000);
      expect(await resumePendingRefunds(ctx)).toBe(1);
      const [row] = await ctx.db
        .selectFrom("refunds")
        .selectAll()
        .where("purchase_id", "=", p.id)
        .execute();
      expect(row).toMatchObject({
        status: "succeeded",
        provider_refund_id: null,
        amount_minor: "4900",
      });
      expect(await purchase(p.id)).toMatchObject({ status: "refunded", refunded_amount: "49.00" });
      // The credits voided for the refund stay voided: the money is back with the customer.
      expect(Number(before) - Number(await balance())).toBe(1200);
      expect((await app.call("GET", `/v1/organizations/${orgId}/ledger/verify`)).json().ok).toBe(
        true,
      );
    });

    it("a refund notified before the payment is kept and applied with it", async () => {
      const { purchase: p, sessionId } = await checkout({ save_payment_method: false });
      fake.completeSession(sessionId);
      const intentId = fake.sessions.get(sessionId)!.payment_intent as string;
      const before = await balance();
      // checkout.session.completed failed once (Stripe retries it later); meanwhile the payment
      // is refunded in the dashboard, and that notice arrives first.
      const early = await deliver(chargeRefunded(intentId, 4900));
      expect(early.json()).toMatchObject({
        ignored: true,
        outcome: "no_purchase_for_this_payment_yet",
      });
      // A smaller, older total delivered late does not lower what is kept.
      await deliver(chargeRefunded(intentId, 1000));
      const paid = await deliver(sessionEvent("checkout.session.completed", sessionId));
      expect(paid.json()).toMatchObject({ outcome: "purchase_paid" });
      expect(await purchase(p.id)).toMatchObject({ status: "refunded", refunded_amount: "49.00" });
      expect(await balance()).toBe(before);
      const kept = await ctx.db.selectFrom("refund_notices").selectAll().execute();
      expect(kept.filter((k) => k.payment_id === intentId)).toEqual([]);
      expect((await app.call("GET", `/v1/organizations/${orgId}/ledger/verify`)).json().ok).toBe(
        true,
      );
    });

    it("a payment and its refund applied at the same moment: the refund is applied, in either order", async () => {
      for (const first of ["payment", "refund"] as const) {
        const { purchase: p, sessionId } = await checkout({ save_payment_method: false });
        fake.completeSession(sessionId);
        const intentId = fake.sessions.get(sessionId)!.payment_intent as string;
        const before = await balance();
        const pay = (tx: Db) =>
          fulfilPurchaseInTx(tx, ctx, orgId, p.id, { providerPaymentId: intentId });
        const refund = (tx: Db) =>
          reflectProviderRefundInTx(tx, ctx, {
            provider: "stripe",
            paymentId: intentId,
            refundedTotalMinor: 4900n,
            currency: "usd",
          });
        // The first one's transaction stays open, its work done, while the second one runs.
        let reached!: () => void;
        let release!: () => void;
        const atGate = new Promise<void>((r) => (reached = r));
        const gate = new Promise<void>((r) => (release = r));
        const held = ctx.db.transaction().execute(async (tx) => {
          await (first === "payment" ? pay(tx) : refund(tx));
          reached();
          await gate;
        });
        await atGate;
        const second = ctx.db.transaction().execute(async (tx) => {
          await (first === "payment" ? refund(tx) : pay(tx));
        });
        await new Promise((r) => setTimeout(r, 300));
        release();
        await Promise.all([held, second]);
        expect(await purchase(p.id), first).toMatchObject({
          status: "refunded",
          refunded_amount: "49.00",
        });
        expect(await balance(), first).toBe(before);
      }
    });

    it("the recovery task applies a kept refund whose payment a purchase carries", async () => {
      const { p, intentId } = await paidPurchase();
      const before = await balance();
      // What a crash, or a version without the payment lock, could leave behind.
      await ctx.db
        .insertInto("refund_notices")
        .values({
          provider: "stripe",
          payment_id: intentId,
          refunded_total_minor: "4900",
          currency: "USD",
          received_at: app.clock.now(),
        })
        .execute();
      expect(await applyKeptRefunds(ctx)).toBe(1);
      expect(await purchase(p.id)).toMatchObject({ status: "refunded", refunded_amount: "49.00" });
      expect(Number(before) - Number(await balance())).toBe(1200);
      expect(await applyKeptRefunds(ctx)).toBe(0);
    });

    it("charge.refunded from the dashboard is reflected: credits voided, a provider refund", async () => {
      const { p, intentId } = await paidPurchase();
      const before = await balance();
      // A partial refund in the dashboard (20.00 of 49.00): all remaining credits are voided.
      const partial = await deliver(chargeRefunded(intentId, 2000));
      expect(partial.json()).toMatchObject({ outcome: "refund_recorded" });
      expect(await purchase(p.id)).toMatchObject({
        status: "partially_refunded",
        refunded_amount: "20.00",
      });
      expect(Number(before) - Number(await balance())).toBe(1200);
      const refunds = () =>
        ctx.db
          .selectFrom("refunds")
          .selectAll()
          .where("purchase_id", "=", p.id)
          .orderBy("id")
          .execute();
      expect(await refunds()).toMatchObject([
        {
          origin: "provider",
          status: "succeeded",
          amount_minor: "2000",
          credits_removed: "1000.000000000000",
          bonus_removed: "200.000000000000",
          actor_type: "system",
          actor_id: "stripe",
        },
      ]);
      const entries = (await entriesOf(p.id)).length;

      // Later the rest is refunded: recorded, nothing left to void. Repeats change nothing.
      const rest = chargeRefunded(intentId, 4900);
      expect((await deliver(rest)).json()).toMatchObject({ outcome: "refund_recorded" });
      expect((await deliver(rest)).json()).toMatchObject({ duplicate: true });
      expect((await deliver(chargeRefunded(intentId, 2000))).json()).toMatchObject({
        outcome: "refund_already_recorded",
      });
      expect(await purchase(p.id)).toMatchObject({ status: "refunded", refunded_amount: "49.00" });
      expect((await refunds()).map((r) => r.amount_minor)).toEqual(["2000", "2900"]);
      expect((await entriesOf(p.id)).length).toBe(entries);

      // An API refund of it is now refused.
      const api = await app.call("POST", `/v1/organizations/${orgId}/purchases/${p.id}/refund`, {
        body: {},
      });
      expect(api.statusCode).toBe(409);

      const events = await ctx.db
        .selectFrom("events")
        .selectAll()
        .where("org_id", "=", orgId)
        .where("type", "=", "purchase.refunded")
        .execute();
      const ofPurchase = events.filter((e) => (e.data as Json).purchase_id === p.id);
      expect(ofPurchase.map((e) => (e.data as Json).refund.origin)).toEqual([
        "provider",
        "provider",
      ]);
      expect((await app.call("GET", `/v1/organizations/${orgId}/ledger/verify`)).json().ok).toBe(
        true,
      );
    });
  });
});

describe("Stripe without STRIPE_WEBHOOK_SECRET", async () => {
  const fake = await startFakeStripe();
  afterAll(() => fake.close());
  const { STRIPE_WEBHOOK_SECRET: _unset, ...env } = fake.env;
  const app = await createTestApp({ env });

  it("starts and opens checkouts; notifications are refused with 503 (Stripe retries) and change nothing", async () => {
    const orgId = await app.createOrg();
    const pkg = (
      await app.call("POST", "/v1/credit-packages", {
        body: { name: "Solo", credits: "10", price: "5.00" },
      })
    ).json();
    const bought = await app.call("POST", `/v1/organizations/${orgId}/purchases`, {
      body: { package_id: pkg.id },
    });
    expect(bought.statusCode, bought.body).toBe(201);
    const event = fake.event("charge.refunded", { id: "ch_x", object: "charge" });
    const { payload, signature } = fake.signedWebhook(event, {
      timestamp: Math.floor(app.clock.now().getTime() / 1000),
    });
    const res = await app.call("POST", "/v1/webhooks/stripe", {
      key: null,
      rawBody: payload,
      headers: { "stripe-signature": signature },
    });
    expect(res.statusCode, res.body).toBe(503);
    expect(res.json().error).toMatchObject({ code: "service_unavailable" });
    expect(res.json().error.message).toContain("STRIPE_WEBHOOK_SECRET");
    const recorded = await app.runtime.ctx.db
      .selectFrom("inbound_webhook_events")
      .selectAll()
      .execute();
    expect(recorded).toEqual([]);
  });
});
