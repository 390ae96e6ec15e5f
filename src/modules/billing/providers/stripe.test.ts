import Stripe from "stripe";
import { afterAll, beforeEach, describe, expect, it } from "vitest";
import { type FakeStripe, startFakeStripe } from "../../../../test/support/fake-stripe.js";
import { PaymentProviderError } from "./provider.js";
import { STRIPE_API_VERSION, StripeProvider } from "./stripe.js";

describe("Stripe provider (real SDK against the fake Stripe)", async () => {
  const fake: FakeStripe = await startFakeStripe();
  afterAll(() => fake.close());
  const provider = new StripeProvider({
    secretKey: fake.secretKey,
    apiBase: fake.url,
    timeoutMs: 1000,
    maxNetworkRetries: 2,
  });

  const checkoutInput = (id: string, save: boolean) => ({
    purchase: { id, orgId: "org_1", amountMinor: 4900n, currency: "USD" },
    package: { id: "pkg_1", name: "Growth", description: "1000 + 200 bonus" },
    customer: { orgId: "org_1", name: "Acme" },
    successUrl: "https://app.example.com/ok",
    cancelUrl: "https://app.example.com/cancel",
    savePaymentMethod: save,
  });

  beforeEach(() => {
    fake.requests.length = 0;
  });

  it("creates a Checkout Session in payment mode carrying the purchase", async () => {
    const session = await provider.createCheckout(checkoutInput("pur_A", true));
    expect(session.sessionId).toMatch(/^cs_test_/);
    expect(session.url).toContain(session.sessionId);
    expect(session.customerId).toMatch(/^cus_test_/);

    const [customer] = fake.calls("POST", "/v1/customers");
    expect(customer!.body).toMatchObject({ name: "Acme", metadata: { org_id: "org_1" } });
    const [call] = fake.calls("POST", "/v1/checkout/sessions");
    expect(call!.headers["stripe-version"]).toBe(STRIPE_API_VERSION);
    expect(call!.headers.authorization).toBe(`Bearer ${fake.secretKey}`);
    expect(call!.idempotencyKey).toBe("tally:checkout:pur_A");
    expect(call!.body).toMatchObject({
      mode: "payment",
      client_reference_id: "pur_A",
      customer: session.customerId,
      metadata: { purchase_id: "pur_A", org_id: "org_1" },
      success_url: "https://app.example.com/ok",
      cancel_url: "https://app.example.com/cancel",
      line_items: [
        {
          quantity: "1",
          price_data: {
            currency: "usd",
            unit_amount: "4900",
            product_data: { name: "Growth", description: "1000 + 200 bonus" },
          },
        },
      ],
      payment_intent_data: {
        setup_future_usage: "off_session",
        metadata: { purchase_id: "pur_A", org_id: "org_1" },
      },
    });
  });

  it("does not ask to save the card or create a customer when not saving", async () => {
    await provider.createCheckout(checkoutInput("pur_B", false));
    expect(fake.calls("POST", "/v1/customers")).toHaveLength(0);
    const [call] = fake.calls("POST", "/v1/checkout/sessions");
    expect(call!.body.customer).toBeUndefined();
    expect((call!.body.payment_intent_data as Record<string, unknown>).setup_future_usage).toBe(
      undefined,
    );
  });

  it("reuses a known customer", async () => {
    const first = await provider.createCheckout(checkoutInput("pur_C", true));
    fake.requests.length = 0;
    await provider.createCheckout({
      ...checkoutInput("pur_D", true),
      customer: { orgId: "org_1", name: "Acme", customerId: first.customerId },
    });
    expect(fake.calls("POST", "/v1/customers")).toHaveLength(0);
    expect(fake.calls("POST", "/v1/checkout/sessions")[0]!.body.customer).toBe(first.customerId);
  });

  it("retrieves the checkout state with the payment and the saved card", async () => {
    const session = await provider.createCheckout(checkoutInput("pur_E", true));
    expect(await provider.retrieveCheckout(session.sessionId)).toEqual({
      status: "open",
      paymentStatus: "unpaid",
      paymentId: null,
      paymentMethod: null,
      amountMinor: 4900n,
      currency: "USD",
    });
    fake.completeSession(session.sessionId, { last4: "1881", brand: "visa" });
    const state = await provider.retrieveCheckout(session.sessionId);
    expect(state).toMatchObject({
      status: "complete",
      paymentStatus: "paid",
      paymentId: expect.stringMatching(/^pi_test_/),
      paymentMethod: {
        id: expect.stringMatching(/^pm_test_/),
        brand: "visa",
        last4: "1881",
        customerId: session.customerId,
      },
    });
  });

  it("reports an asynchronous payment as complete but unpaid", async () => {
    const session = await provider.createCheckout(checkoutInput("pur_F", false));
    fake.completeSession(session.sessionId, { payment: "pending" });
    expect(await provider.retrieveCheckout(session.sessionId)).toMatchObject({
      status: "complete",
      paymentStatus: "unpaid",
    });
  });

  it("charges off-session: success, decline, authentication required", async () => {
    const customerId = "cus_test_offsession";
    const card = (behaviour: "success" | "decline" | "requires_action") => ({
      id: fake.createPaymentMethod({ customer: customerId, behaviour }),
      brand: "visa",
      last4: "4242",
      customerId,
    });
    const charge = (pm: ReturnType<typeof card>, key: string) =>
      provider.chargeOffSession({
        orgId: "org_1",
        paymentMethod: pm,
        amountMinor: 4900n,
        currency: "USD",
        idempotencyKey: key,
        metadata: { topup_attempt_id: key },
      });

    const ok = await charge(card("success"), "topup:att_1");
    expect(ok).toEqual({ status: "succeeded", paymentId: expect.stringMatching(/^pi_test_/) });
    const [call] = fake.calls("POST", "/v1/payment_intents");
    expect(call!.idempotencyKey).toBe("topup:att_1");
    expect(call!.body).toMatchObject({
      amount: "4900",
      currency: "usd",
      customer: customerId,
      off_session: "true",
      confirm: "true",
      metadata: { topup_attempt_id: "topup:att_1", org_id: "org_1" },
    });

    const declined = await charge(card("decline"), "topup:att_2");
    expect(declined).toMatchObject({
      status: "declined",
      paymentId: expect.stringMatching(/^pi_test_/),
      error: expect.stringContaining("declined"),
    });

    const action = await charge(card("requires_action"), "topup:att_3");
    expect(action).toMatchObject({
      status: "requires_action",
      paymentId: expect.stringMatching(/^pi_test_/),
    });
  });

  it("the same idempotency key is one charge, even when the first answer is lost", async () => {
    const pm = {
      id: fake.createPaymentMethod({ customer: "cus_test_retry" }),
      brand: "visa",
      last4: "4242",
      customerId: "cus_test_retry",
    };
    const input = {
      orgId: "org_1",
      paymentMethod: pm,
      amountMinor: 1000n,
      currency: "USD",
      idempotencyKey: "topup:att_retry",
      metadata: {},
    };
    // Stripe creates the PaymentIntent but its answer is lost: the SDK retries with the key.
    fake.loseAnswerNext();
    const first = await provider.chargeOffSession(input);
    expect(first).toMatchObject({ status: "succeeded" });
    expect(fake.requests.filter((r) => r.path === "/v1/payment_intents")).toHaveLength(2);
    expect(fake.calls("POST", "/v1/payment_intents")).toHaveLength(1);
    const again = await provider.chargeOffSession(input);
    expect(again).toEqual(first);
    // A 500 is retried by the SDK with the same key; Stripe creates nothing new.
    fake.failNext(500);
    const afterFailure = await provider.chargeOffSession(input);
    expect(afterFailure).toEqual(first);
    const sent = fake.requests.filter((r) => r.path === "/v1/payment_intents");
    expect(new Set(sent.map((r) => r.idempotencyKey))).toEqual(new Set(["topup:att_retry"]));
    expect(fake.calls("POST", "/v1/payment_intents")).toHaveLength(1);
    expect(
      [...fake.paymentIntents.values()].filter((p) => p.customer === "cus_test_retry"),
    ).toHaveLength(1);
  });

  it("refunds with an idempotency key, once", async () => {
    const session = await provider.createCheckout(checkoutInput("pur_G", false));
    fake.completeSession(session.sessionId);
    const { paymentId } = await provider.retrieveCheckout(session.sessionId);
    const input = { paymentId: paymentId!, amountMinor: 1500n, idempotencyKey: "refund:ref_1" };
    fake.failNext(503);
    const refund = await provider.refund(input);
    expect(refund).toEqual({ refundId: expect.stringMatching(/^re_test_/), status: "succeeded" });
    expect(await provider.refund(input)).toEqual(refund);

    const sent = fake.requests.filter((r) => r.path === "/v1/refunds");
    expect(sent.length).toBeGreaterThanOrEqual(2);
    expect(sent.every((r) => r.idempotencyKey === "refund:ref_1")).toBe(true);
    expect(sent[sent.length - 1]!.body).toMatchObject({
      payment_intent: paymentId,
      amount: "1500",
    });
    expect([...fake.refunds.values()].filter((r) => r.payment_intent === paymentId)).toHaveLength(
      1,
    );
  });

  it("turns faults into PaymentProviderError: timeouts and 5xx retryable, bad requests not", async () => {
    const noRetry = new StripeProvider({
      secretKey: fake.secretKey,
      apiBase: fake.url,
      timeoutMs: 200,
      maxNetworkRetries: 0,
    });
    fake.hangNext();
    const timeout = await noRetry.retrieveCheckout("cs_test_x").catch((e) => e);
    expect(timeout).toBeInstanceOf(PaymentProviderError);
    expect(timeout.retryable).toBe(true);

    // Calls that are answered get time to be, however busy the machine.
    const patient = new StripeProvider({
      secretKey: fake.secretKey,
      apiBase: fake.url,
      timeoutMs: 10_000,
      maxNetworkRetries: 0,
    });
    fake.failNext(500);
    const serverError = await patient.retrieveCheckout("cs_test_x").catch((e) => e);
    expect(serverError).toBeInstanceOf(PaymentProviderError);
    expect(serverError.retryable).toBe(true);

    const missing = await patient.retrieveCheckout("cs_test_missing").catch((e) => e);
    expect(missing).toBeInstanceOf(PaymentProviderError);
    expect(missing.retryable).toBe(false);
    expect(missing.message).toContain("No such checkout.session");

    const wrongKey = new StripeProvider({ secretKey: "sk_test_wrong", apiBase: fake.url });
    const auth = await wrongKey.retrieveCheckout("cs_test_x").catch((e) => e);
    expect(auth).toBeInstanceOf(PaymentProviderError);
    expect(auth.retryable).toBe(false);
  });

  it("the fake answers unknown endpoints with Stripe's 404 error", async () => {
    const client = new Stripe(fake.secretKey, {
      host: "127.0.0.1",
      port: new URL(fake.url).port,
      protocol: "http",
      maxNetworkRetries: 0,
    });
    const err = await client.balance.retrieve().catch((e) => e);
    expect(err).toBeInstanceOf(Stripe.errors.StripeInvalidRequestError);
    expect(err.statusCode).toBe(404);
    expect(err.message).toContain("Unrecognized request URL");
  });

  it("signs webhook payloads the SDK verifies", () => {
    const event = fake.event("checkout.session.completed", {
      id: "cs_test_1",
      object: "checkout.session",
    });
    const { payload, signature } = fake.signedWebhook(event);
    const verified = new Stripe(fake.secretKey).webhooks.constructEvent(
      payload,
      signature,
      fake.webhookSecret,
    );
    expect(verified.id).toBe(event.id);
    expect(verified.type).toBe("checkout.session.completed");
    const forged = fake.signedWebhook(event, { secret: "whsec_other" });
    expect(() =>
      new Stripe(fake.secretKey).webhooks.constructEvent(
        forged.payload,
        forged.signature,
        fake.webhookSecret,
      ),
    ).toThrow();
  });
});
