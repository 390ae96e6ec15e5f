import { describe, expect, it } from "vitest";
import { loadConfig } from "../../../app/config.js";
import { createPaymentProvider } from "./index.js";
import { PaymentProviderError, type SavedPaymentMethod } from "./provider.js";
import { SandboxProvider } from "./sandbox.js";
import { StripeProvider } from "./stripe.js";

const card = (behaviour: SavedPaymentMethod["sandboxBehaviour"]): SavedPaymentMethod => ({
  id: `sbx_pm_${behaviour}`,
  brand: "visa",
  last4: "4242",
  customerId: "sbx_cus_org_1",
  sandboxBehaviour: behaviour,
});

const charge = (pm: SavedPaymentMethod, key: string, amountMinor = 4900n) => ({
  orgId: "org_1",
  paymentMethod: pm,
  amountMinor,
  currency: "USD",
  idempotencyKey: key,
  metadata: {},
});

describe("sandbox provider", () => {
  it("opens checkout on Tally's own sandbox page, without network", async () => {
    const sandbox = new SandboxProvider("http://tally.test");
    const session = await sandbox.createCheckout({
      purchase: { id: "pur_1", orgId: "org_1", amountMinor: 4900n, currency: "USD" },
      package: { id: "pkg_1", name: "Growth" },
      customer: { orgId: "org_1", name: "Acme" },
      successUrl: "https://x/ok",
      cancelUrl: "https://x/no",
      savePaymentMethod: true,
    });
    expect(session).toEqual({
      sessionId: "sbx_cs_pur_1",
      url: "http://tally.test/sandbox/checkout/pur_1",
      customerId: "sbx_cus_org_1",
    });
    expect(await sandbox.retrieveCheckout(session.sessionId)).toMatchObject({
      status: "open",
      paymentStatus: "unpaid",
    });
    const state = sandbox.completeCheckout({
      purchaseId: "pur_1",
      orgId: "org_1",
      card: "decline_off_session",
    });
    expect(state).toMatchObject({
      status: "complete",
      paymentStatus: "paid",
      paymentId: "sbx_pi_pur_1",
      paymentMethod: { last4: "0341", sandboxBehaviour: "decline_off_session" },
    });
    expect(await sandbox.retrieveCheckout(session.sessionId)).toEqual(state);
  });

  it("off-session charges follow the saved card's behaviour", async () => {
    const sandbox = new SandboxProvider("http://tally.test");
    expect(await sandbox.chargeOffSession(charge(card("success"), "k1"))).toMatchObject({
      status: "succeeded",
    });
    expect(await sandbox.chargeOffSession(charge(card("decline_off_session"), "k2"))).toMatchObject(
      { status: "declined", error: expect.stringContaining("declined") },
    );
    expect(await sandbox.chargeOffSession(charge(card("action_off_session"), "k3"))).toMatchObject({
      status: "requires_action",
    });
    expect(sandbox.charges.map((c) => c.idempotencyKey)).toEqual(["k1"]);
  });

  it("is deterministic per idempotency key: same key, same result, one charge", async () => {
    const a = new SandboxProvider("http://tally.test");
    const first = await a.chargeOffSession(charge(card("success"), "topup:att_1"));
    const again = await a.chargeOffSession(charge(card("success"), "topup:att_1"));
    expect(again).toEqual(first);
    expect(a.charges).toHaveLength(1);
    // Another instance (a restart, a second node) derives the same payment id.
    const b = new SandboxProvider("http://tally.test");
    expect(await b.chargeOffSession(charge(card("success"), "topup:att_1"))).toEqual(first);
    // A different key is a different charge.
    const other = await a.chargeOffSession(charge(card("success"), "topup:att_2"));
    expect(other.paymentId).not.toBe(first.paymentId);
    expect(a.charges).toHaveLength(2);
    // The same key with other parameters is refused, like Stripe's idempotency error.
    await expect(a.chargeOffSession(charge(card("success"), "topup:att_1", 1n))).rejects.toThrow(
      PaymentProviderError,
    );
  });

  it("refunds once per key", async () => {
    const sandbox = new SandboxProvider("http://tally.test");
    const input = { paymentId: "sbx_pi_pur_1", amountMinor: 100n, idempotencyKey: "refund:r1" };
    const r1 = await sandbox.refund(input);
    expect(r1.status).toBe("succeeded");
    expect(await sandbox.refund(input)).toEqual(r1);
    expect(sandbox.refunds).toHaveLength(1);
    await expect(sandbox.refund({ ...input, amountMinor: 200n })).rejects.toThrow(
      PaymentProviderError,
    );
  });

  it("the factory picks the provider from the configuration", () => {
    expect(createPaymentProvider(loadConfig({}))).toBeInstanceOf(SandboxProvider);
    const stripe = createPaymentProvider(
      loadConfig({
        STRIPE_SECRET_KEY: "sk_test_x",
        STRIPE_WEBHOOK_SECRET: "whsec_x",
        STRIPE_API_BASE: "http://127.0.0.1:1",
      }),
    );
    expect(stripe).toBeInstanceOf(StripeProvider);
    expect(stripe.name).toBe("stripe");
  });
});
