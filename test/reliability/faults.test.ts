import http from "node:http";
import type { AddressInfo } from "node:net";
import net from "node:net";
import type { LightMyRequestResponse } from "fastify";
import { sql } from "kysely";
import pg from "pg";
import { afterAll, beforeEach, describe, expect, it } from "vitest";
import { openDatabase } from "../../src/db/index.js";
import { setPaymentProvider } from "../../src/modules/billing/providers/index.js";
import { StripeProvider } from "../../src/modules/billing/providers/stripe.js";
import { expirePurchases } from "../../src/modules/billing/purchases.service.js";
import {
  REFUND_RETRY_AFTER_MS,
  resumePendingRefunds,
} from "../../src/modules/billing/refunds.service.js";
import { formatCredits, parseCredits } from "../../src/modules/ledger/credits.js";
import { emitEvent, runDueJobs } from "../../src/modules/notify/notify.service.js";
import { createJobRunner } from "../../src/modules/notify/notify.worker.js";
import { startReceiver } from "../../src/modules/notify/test-receiver.js";
import { WEBHOOK_QUEUE_OPTIONS } from "../../src/modules/notify/webhooks.service.js";
import { reconcileOpenAttempts } from "../../src/modules/topup/topup.runner.js";
import { TOPUP_QUEUE } from "../../src/modules/topup/topup.service.js";
import { createTestApp, type TestApp, waitFor } from "../support/app.js";
import { onPostgres, TEST_DATABASE_URL, testDatabaseUrl } from "../support/db.js";
import { startFakeStripe } from "../support/fake-stripe.js";
import { checkOrgInvariants } from "./invariants.js";

/**
 * Faults from outside: the database connection killed mid-transaction or unreachable for a while,
 * a payment processor that hangs or fails, webhook receivers that hang or fail. Under each, a
 * request either succeeds (and its effect is stored) or fails with the error envelope (and
 * nothing half-written is left behind), the service recovers by itself, and the ledger
 * invariants hold.
 */

// biome-ignore lint/suspicious/noExplicitAny: JSON bodies
type Json = Record<string, any>;
type Response = LightMyRequestResponse & { json<T = Json>(): T };

const FORM = { "content-type": "application/x-www-form-urlencoded" };
/** gpt-4o input is 250 credits per 1M tokens: 1000 tokens cost 0.25. */
const EVENT_COST = parseCredits("0.25");
const usageEvent = (id: string) => ({
  id,
  type: "ai_tokens",
  model: "gpt-4o",
  tokens: { input: 1000 },
});

/** The common error envelope, with the request id also in `x-request-id`. */
function expectEnvelope(res: Response, status: number, code: string): Json {
  expect(res.statusCode, res.body).toBe(status);
  expect(res.headers["content-type"]).toMatch(/^application\/json/);
  const body = res.json();
  expect(body).toEqual({
    error: {
      code,
      message: expect.any(String),
      request_id: expect.stringMatching(/^req_/),
      details: expect.any(Array),
    },
  });
  expect(body.error.message.length).toBeGreaterThan(0);
  expect(res.headers["x-request-id"]).toBe(body.error.request_id);
  return body;
}

/** A 5xx under a database fault must be exactly this: 503 `service_unavailable`, enveloped. */
function isCleanUnavailable(res: Response): boolean {
  if (res.statusCode !== 503) return false;
  try {
    const body = res.json();
    return (
      body.error?.code === "service_unavailable" &&
      typeof body.error.request_id === "string" &&
      res.headers["x-request-id"] === body.error.request_id
    );
  } catch {
    return false;
  }
}

async function grant(app: TestApp, orgId: string, amount: string): Promise<void> {
  const res = await app.call("POST", `/v1/organizations/${orgId}/adjustments`, {
    body: { amount, reason: "grant" },
  });
  expect(res.statusCode, res.body).toBe(201);
}

/**
 * A key revoked by another instance (straight in the database, over `url`) is refused here at
 * once, also after database faults: the per-instance key cache is invalidated through the
 * database's notifications, so its listening connection must have been re-established.
 */
async function expectRevocationHonoured(app: TestApp, orgId: string, url: string) {
  const created = await app.call("POST", `/v1/organizations/${orgId}/api-keys`, {
    body: { name: "revoked after faults", role: "read" },
  });
  expect(created.statusCode, created.body).toBe(201);
  const { id, key } = created.json();
  const read = () => app.call("GET", `/v1/organizations/${orgId}/balance`, { key });
  // Used twice: cached, if the cache is live.
  expect((await read()).statusCode).toBe(200);
  expect((await read()).statusCode).toBe(200);
  const other = new pg.Client({ connectionString: url });
  await other.connect();
  try {
    const { rowCount } = await other.query("update api_keys set revoked_at = now() where id = $1", [
      id,
    ]);
    expect(rowCount).toBe(1);
  } finally {
    await other.end();
  }
  // The notification is asynchronous; the cache's own backstop is 60 s, far beyond this wait.
  const refused = await waitFor(async () => {
    const r = await read();
    return r.statusCode === 401 ? r : null;
  });
  expectEnvelope(refused, 401, "unauthenticated");
}

// ---- payment processor ----------------------------------------------------------------------

describe("payment processor faults (the real Stripe SDK against the fake Stripe)", async () => {
  const fake = await startFakeStripe();
  afterAll(() => fake.close());
  const app = await createTestApp({ env: fake.env });
  const ctx = app.runtime.ctx;
  /** The provider as the runtime builds it from the configuration. */
  const configured = ctx.payments;
  /**
   * The same SDK with a short timeout, so a hanging processor costs about two seconds per call
   * (one attempt and one SDK retry) — long enough that a busy machine does not time out calls
   * the fake answers.
   */
  const quick = new StripeProvider({
    secretKey: fake.secretKey,
    apiBase: fake.url,
    timeoutMs: 1000,
    maxNetworkRetries: 1,
  });
  setPaymentProvider(ctx, quick);
  const pkg = (
    await app.call("POST", "/v1/credit-packages", {
      body: { name: "Growth", credits: "1000", bonus_credits: "200", price: "49.00" },
    })
  ).json();

  beforeEach(() => {
    fake.clearFaults();
    setPaymentProvider(ctx, quick);
  });

  type Fault = "hang" | "500" | "lost answer";
  /** The processor misbehaves for the next `times` requests. */
  function inject(fault: Fault, times: number): void {
    if (fault === "hang") fake.hangNext(times);
    else if (fault === "500") fake.failNext(500, times);
    else fake.loseAnswerNext(times);
  }

  const nowSeconds = () => Math.floor(app.clock.now().getTime() / 1000);
  const purchaseOf = async (orgId: string, id: string) =>
    (await app.call("GET", `/v1/organizations/${orgId}/purchases/${id}`)).json();
  const balanceOf = async (orgId: string) =>
    (await app.call("GET", `/v1/organizations/${orgId}/balance`)).json();
  const entriesOf = (orgId: string, referenceId: string) =>
    ctx.db
      .selectFrom("ledger_entries")
      .select(["type", "amount"])
      .where("org_id", "=", orgId)
      .where("reference_id", "=", referenceId)
      .orderBy("sequence")
      .execute();

  /** A purchase paid through Stripe Checkout and its `checkout.session.completed` webhook. */
  async function paidPurchase(orgId: string, savePaymentMethod: boolean): Promise<string> {
    const res = await app.call("POST", `/v1/organizations/${orgId}/purchases`, {
      body: { package_id: pkg.id, save_payment_method: savePaymentMethod },
    });
    expect(res.statusCode, res.body).toBe(201);
    const purchaseId = res.json().id as string;
    const session = [...fake.sessions.values()].find((s) => s.client_reference_id === purchaseId)!;
    fake.completeSession(session.id as string);
    const event = fake.event("checkout.session.completed", {
      ...fake.sessions.get(session.id as string)!,
      _internal: undefined,
    });
    const { payload, signature } = fake.signedWebhook(event, { timestamp: nowSeconds() });
    const hook = await app.call("POST", "/v1/webhooks/stripe", {
      key: null,
      rawBody: payload,
      headers: { "stripe-signature": signature },
    });
    expect(hook.statusCode, hook.body).toBe(200);
    expect((await purchaseOf(orgId, purchaseId)).status).toBe("paid");
    return purchaseId;
  }

  it("the configured Stripe client has a bounded timeout and a bounded number of retries", () => {
    expect(configured).toBeInstanceOf(StripeProvider);
    const client = (configured as StripeProvider).client;
    const timeout = client.getApiField("timeout");
    expect(timeout).toBeGreaterThan(0);
    expect(timeout).toBeLessThanOrEqual(30_000);
    const retries = client.getApiField("maxNetworkRetries");
    expect(retries).toBeGreaterThanOrEqual(0);
    expect(retries).toBeLessThanOrEqual(3);
  });

  it.each(["hang", "500"] as const)(
    "checkout creation, processor %s: 503 envelope, the purchase failed and granted nothing; the next purchase works",
    async (fault) => {
      const orgId = await app.createOrg();
      inject(fault, 2);
      const res = await app.call("POST", `/v1/organizations/${orgId}/purchases`, {
        body: { package_id: pkg.id, save_payment_method: false },
      });
      expectEnvelope(res, 503, "service_unavailable");
      // Both the attempt and the SDK's retry met the fault; Stripe created nothing.
      const sent = fake.requests.filter(
        (r) =>
          r.path === "/v1/checkout/sessions" &&
          (r.body.metadata as Json | undefined)?.org_id === orgId,
      );
      expect(sent.map((r) => r.injected)).toEqual([true, true]);

      const list = (await app.call("GET", `/v1/organizations/${orgId}/purchases`)).json().data;
      expect(list).toHaveLength(1);
      expect(list[0]).toMatchObject({
        status: "failed",
        failure_code: "checkout_unavailable",
        checkout_url: null,
      });
      expect((await balanceOf(orgId)).balance).toBe("0");
      expect(await entriesOf(orgId, list[0].id)).toEqual([]);
      await checkOrgInvariants(ctx.db, orgId);

      // The processor is back: the next purchase opens a checkout (no restart, no cleanup).
      const again = await app.call("POST", `/v1/organizations/${orgId}/purchases`, {
        body: { package_id: pkg.id, save_payment_method: false },
      });
      expect(again.statusCode, again.body).toBe(201);
      expect(again.json().checkout_url).toContain(fake.url);
    },
  );

  /** The saved card of an organisation behaves like `behaviour` at the fake Stripe from now on. */
  const setCardOf = async (orgId: string, behaviour: "decline" | "requires_action") => {
    const card = await ctx.db
      .selectFrom("payment_methods")
      .select("provider_payment_method_id")
      .where("org_id", "=", orgId)
      .executeTakeFirstOrThrow();
    fake.setCardBehaviour(card.provider_payment_method_id, behaviour);
  };

  it.each(["hang", "500", "lost answer"] as const)(
    "refund, processor %s: 503 envelope; the refund is recorded pending with the credits voided, then completed exactly once",
    async (fault) => {
      const orgId = await app.createOrg();
      const purchaseId = await paidPurchase(orgId, false);
      const { provider_payment_id: paymentId } = await ctx.db
        .selectFrom("purchases")
        .select("provider_payment_id")
        .where("org_id", "=", orgId)
        .where("id", "=", purchaseId)
        .executeTakeFirstOrThrow();
      const refundsAtStripe = () =>
        [...fake.refunds.values()].filter((r) => r.payment_intent === paymentId);

      inject(fault, 2);
      const res = await app.call(
        "POST",
        `/v1/organizations/${orgId}/purchases/${purchaseId}/refund`,
        { body: { reason: "fault test" } },
      );
      const body = expectEnvelope(res, 503, "service_unavailable");

      // Nothing half-done: the refund is recorded (pending, not acknowledged) and the credits
      // it pays back are voided, so they cannot be spent meanwhile; the purchase is still paid.
      const [refund, ...others] = await ctx.db
        .selectFrom("refunds")
        .selectAll()
        .where("org_id", "=", orgId)
        .where("purchase_id", "=", purchaseId)
        .execute();
      expect(others).toEqual([]);
      expect(refund).toMatchObject({ status: "pending", provider_refund_id: null });
      expect(body.error.message).toContain(refund!.id);
      expect((await purchaseOf(orgId, purchaseId)).status).toBe("paid");
      expect((await balanceOf(orgId)).balance).toBe("0");
      const voids = await entriesOf(orgId, refund!.id);
      expect(voids.map((e) => [e.type, formatCredits(parseCredits(e.amount))]).sort()).toEqual([
        ["refund", "-1000"],
        ["refund", "-200"],
      ]);
      // Only a lost answer reached Stripe's logic: the money moved, Tally did not hear of it.
      expect(refundsAtStripe()).toHaveLength(fault === "lost answer" ? 1 : 0);
      await checkOrgInvariants(ctx.db, orgId);

      if (fault === "lost answer") {
        // Nobody retries the request: the recovery task finishes it with the same key.
        app.clock.advance(REFUND_RETRY_AFTER_MS + 1000);
        expect(await resumePendingRefunds(ctx)).toBeGreaterThanOrEqual(1);
      } else {
        const retry = await app.call(
          "POST",
          `/v1/organizations/${orgId}/purchases/${purchaseId}/refund`,
          { body: { reason: "fault test" } },
        );
        expect(retry.statusCode, retry.body).toBe(200);
        expect(retry.json()).toMatchObject({ refund_id: refund!.id, amount: "49.00" });
      }
      const atStripe = refundsAtStripe();
      expect(atStripe).toHaveLength(1);
      expect(atStripe[0]).toMatchObject({ amount: 4900, metadata: { refund_id: refund!.id } });
      const keys = fake.requests
        .filter((r) => r.path === "/v1/refunds" && r.body.payment_intent === paymentId)
        .map((r) => r.idempotencyKey);
      expect(new Set(keys)).toEqual(new Set([`refund:${refund!.id}`]));
      const done = await ctx.db
        .selectFrom("refunds")
        .selectAll()
        .where("org_id", "=", orgId)
        .where("id", "=", refund!.id)
        .executeTakeFirstOrThrow();
      expect(done).toMatchObject({ status: "succeeded", provider_refund_id: atStripe[0]!.id });
      expect((await purchaseOf(orgId, purchaseId)).status).toBe("refunded");
      expect(await entriesOf(orgId, refund!.id)).toHaveLength(2);
      expect((await balanceOf(orgId)).balance).toBe("0");
      await checkOrgInvariants(ctx.db, orgId);
    },
  );

  /** An organisation with a saved card and auto-topup of `pkg` below 100 credits. */
  async function orgWithAutoTopup() {
    const orgId = await app.createOrg();
    await paidPurchase(orgId, true); // 1000 + 200 bonus, the card saved
    const put = await app.call("PUT", `/v1/organizations/${orgId}/auto-topup`, {
      body: { enabled: true, threshold: "100", package_id: pkg.id },
    });
    expect(put.statusCode, put.body).toBe(200);
    return orgId;
  }
  const attemptsOf = async (orgId: string) =>
    (await app.call("GET", `/v1/organizations/${orgId}/auto-topup/attempts`)).json().data as Json[];
  const chargesOf = (orgId: string) =>
    fake.requests.filter(
      (r) =>
        r.path === "/v1/payment_intents" && (r.body.metadata as Json | undefined)?.org_id === orgId,
    );
  const intentsOf = (orgId: string) =>
    [...fake.paymentIntents.values()].filter(
      (pi) =>
        (pi.metadata as Json | undefined)?.org_id === orgId &&
        (pi.metadata as Json).source === "auto_topup",
    );

  it.each(["hang", "500", "lost answer"] as const)(
    "auto-topup charge, processor %s: the attempt stays in flight, is retried with backoff and the same key, and charges once",
    async (fault) => {
      const orgId = await orgWithAutoTopup();
      await grant(app, orgId, "-1150"); // 50 left: below the threshold, an attempt starts
      inject(fault, 2);
      await runDueJobs(ctx);

      const [attempt, ...more] = await attemptsOf(orgId);
      expect(more).toEqual([]);
      expect(attempt).toMatchObject({ status: "in_flight", purchase_id: expect.any(String) });
      // Recoverable, not half-done: the purchase waits for its payment, nothing is granted.
      expect((await purchaseOf(orgId, attempt!.purchase_id)).status).toBe("pending");
      expect(await entriesOf(orgId, attempt!.purchase_id)).toEqual([]);
      expect((await balanceOf(orgId)).balance).toBe("50");
      expect(intentsOf(orgId)).toHaveLength(fault === "lost answer" ? 1 : 0);
      // The job is rescheduled with backoff (30 s base, ±25 %), not retried at once.
      const job = await ctx.db
        .selectFrom("jobs")
        .selectAll()
        .where("queue", "=", TOPUP_QUEUE)
        .where("org_id", "=", orgId)
        .executeTakeFirstOrThrow();
      expect(job).toMatchObject({ status: "pending", attempts: 1 });
      expect(job.last_error).toMatch(/Stripe/);
      expect(job.run_at.getTime()).toBeGreaterThanOrEqual(app.clock.now().getTime() + 22_000);
      await runDueJobs(ctx);
      expect(chargesOf(orgId)).toHaveLength(2); // not due yet: no new charge request

      // Later, with the processor answering again: one charge, granted once.
      app.clock.advance(30 * 60_000);
      await runDueJobs(ctx);
      expect((await attemptsOf(orgId))[0]).toMatchObject({
        id: attempt!.id,
        status: "succeeded",
      });
      expect((await purchaseOf(orgId, attempt!.purchase_id)).status).toBe("paid");
      expect(intentsOf(orgId)).toHaveLength(1);
      expect(new Set(chargesOf(orgId).map((r) => r.idempotencyKey))).toEqual(
        new Set([`topup:${attempt!.id}`]),
      );
      expect((await balanceOf(orgId)).balance).toBe("1250");
      expect(
        (await entriesOf(orgId, attempt!.purchase_id)).map((e) => [
          e.type,
          formatCredits(parseCredits(e.amount)),
        ]),
      ).toEqual([
        ["purchase", "1000"],
        ["bonus", "200"],
      ]);
      await checkOrgInvariants(ctx.db, orgId);
    },
  );

  it("an auto-topup payment refunded at Stripe before the job could apply it is granted and voided at once", async () => {
    const orgId = await orgWithAutoTopup();
    await grant(app, orgId, "-1150"); // 50 left: an attempt starts
    inject("lost answer", 2); // Stripe charges; the job never hears of it and is retried later
    await runDueJobs(ctx);
    const [intent] = intentsOf(orgId);
    expect(intent).toMatchObject({ status: "succeeded" });
    // Meanwhile the payment is refunded in the dashboard; the notice finds no purchase yet.
    const refunded = fake.event("charge.refunded", {
      id: `ch_for_${intent!.id}`,
      object: "charge",
      amount: intent!.amount,
      amount_refunded: intent!.amount,
      currency: intent!.currency,
      payment_intent: intent!.id,
      refunded: true,
      status: "succeeded",
    });
    const { payload, signature } = fake.signedWebhook(refunded, { timestamp: nowSeconds() });
    const hook = await app.call("POST", "/v1/webhooks/stripe", {
      key: null,
      rawBody: payload,
      headers: { "stripe-signature": signature },
    });
    expect(hook.json()).toMatchObject({ outcome: "no_purchase_for_this_payment_yet" });

    app.clock.advance(30 * 60_000);
    await runDueJobs(ctx);
    const [attempt] = await attemptsOf(orgId);
    expect(attempt).toMatchObject({ status: "succeeded" });
    expect(await purchaseOf(orgId, attempt!.purchase_id)).toMatchObject({
      status: "refunded",
      refunded_amount: "49.00",
    });
    // The package was granted and voided in one transaction: the balance is where it was.
    expect((await balanceOf(orgId)).balance).toBe("50");
    await checkOrgInvariants(ctx.db, orgId);
  });

  it("one off-session decline, reported by the job and then by Stripe's notification, is one failure", async () => {
    const orgId = await orgWithAutoTopup();
    await app.call("PUT", `/v1/organizations/${orgId}/auto-topup`, {
      body: { enabled: true, threshold: "100", package_id: pkg.id, max_failures: 3 },
    });
    await setCardOf(orgId, "decline");
    await grant(app, orgId, "-1150");
    await runDueJobs(ctx);
    const [attempt] = await attemptsOf(orgId);
    expect(attempt).toMatchObject({ status: "failed" });
    const [intent] = intentsOf(orgId);
    const failedNotice = fake.event("payment_intent.payment_failed", {
      ...intent!,
      last_payment_error: {
        code: "card_declined",
        decline_code: "generic_decline",
        message: "Your card was declined.",
      },
    });
    const { payload, signature } = fake.signedWebhook(failedNotice, { timestamp: nowSeconds() });
    const hook = await app.call("POST", "/v1/webhooks/stripe", {
      key: null,
      rawBody: payload,
      headers: { "stripe-signature": signature },
    });
    expect(hook.json()).toMatchObject({ ignored: true, outcome: "purchase_not_pending" });
    const failures = (
      await ctx.db
        .selectFrom("events")
        .select(["type", "data"])
        .where("org_id", "=", orgId)
        .where("type", "in", ["purchase.failed", "auto_topup.failed"])
        .execute()
    ).map((e) => e.type);
    expect(failures.sort()).toEqual(["auto_topup.failed", "purchase.failed"]);
    const settings = (await app.call("GET", `/v1/organizations/${orgId}/auto-topup`)).json();
    expect(settings).toMatchObject({ enabled: true, failure_count: 1 });
  });

  it("an authentication left undone until its purchase expires: the payment is cancelled at Stripe, then the attempt given up", async () => {
    const orgId = await orgWithAutoTopup();
    await setCardOf(orgId, "requires_action");
    const start = app.clock.now().toISOString();
    try {
      await grant(app, orgId, "-1150");
      await runDueJobs(ctx);
      const [attempt] = await attemptsOf(orgId);
      expect(attempt).toMatchObject({ status: "action_required" });
      const [intent] = intentsOf(orgId);
      app.clock.advance(25 * 60 * 60_000);
      await expirePurchases(ctx);
      await reconcileOpenAttempts(ctx);
      expect(fake.paymentIntents.get(intent!.id as string)!.status).toBe("canceled");
      expect((await attemptsOf(orgId))[0]).toMatchObject({ id: attempt!.id, status: "failed" });

      // Had it gone through meanwhile, the attempt would wait for the processor's notification.
      const other = await orgWithAutoTopup();
      await setCardOf(other, "requires_action");
      await grant(app, other, "-1150");
      await runDueJobs(ctx);
      const [late] = intentsOf(other);
      late!.status = "succeeded"; // the customer authenticated at the last minute
      app.clock.advance(25 * 60 * 60_000);
      await expirePurchases(ctx);
      await reconcileOpenAttempts(ctx);
      expect((await attemptsOf(other))[0]).toMatchObject({ status: "action_required" });
    } finally {
      app.clock.set(start);
    }
  });

  it("a charge hanging at the processor holds up neither usage ingest nor other requests", async () => {
    // The production timeout: the hang lasts until the processor drops the connection.
    setPaymentProvider(
      ctx,
      new StripeProvider({ secretKey: fake.secretKey, apiBase: fake.url, maxNetworkRetries: 1 }),
    );
    const orgId = await orgWithAutoTopup();
    const ingestKey = await app.orgKey(orgId, "ingest");
    await grant(app, orgId, "-1150");
    fake.hangNext(1);
    let finished = false;
    const jobs = runDueJobs(ctx).finally(() => {
      finished = true;
    });
    try {
      await waitFor(() => chargesOf(orgId).some((r) => r.injected));
      const usage = await app.call("POST", "/v1/usage-events", {
        key: ingestKey,
        body: usageEvent("during-hang"),
      });
      expect(usage.statusCode, usage.body).toBe(200);
      expect(usage.json().data[0]).toMatchObject({ status: "accepted", balance_after: "49.75" });
      const balance = await balanceOf(orgId);
      expect(balance).toMatchObject({ balance: "49.75", auto_topup: "in_flight" });
      const other = await app.call("POST", `/v1/organizations/${orgId}/purchases`, {
        body: { package_id: pkg.id, save_payment_method: false },
      });
      expect(other.statusCode, other.body).toBe(201);
      expect(finished).toBe(false); // the charge is still waiting for the processor
    } finally {
      fake.dropHanging(); // the processor drops the connection; the SDK retries with the same key
    }
    await jobs;
    expect((await attemptsOf(orgId))[0]).toMatchObject({ status: "succeeded" });
    expect(intentsOf(orgId)).toHaveLength(1);
    expect((await balanceOf(orgId)).balance).toBe("1249.75");
    await checkOrgInvariants(ctx.db, orgId);
  });
});

// ---- webhook receivers ----------------------------------------------------------------------

/** A receiver that never answers until `release()`, which then drops the connections. */
async function startStuckReceiver() {
  const open = new Set<http.ServerResponse>();
  let received = 0;
  let answer: number | "hang" = "hang";
  const server = http.createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      received++;
      if (answer === "hang") open.add(res);
      else res.writeHead(answer).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const stuck = {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks`,
    get received() {
      return received;
    },
    get hanging() {
      return open.size;
    },
    /** Drops the hanging requests; later ones are answered with `status`. */
    release(status: number) {
      answer = status;
      for (const res of open) res.destroy();
      open.clear();
    },
    close: () =>
      new Promise<void>((resolve) => {
        stuck.release(503);
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
  afterAll(() => stuck.close());
  return stuck;
}

describe("webhook receivers that hang or fail", async () => {
  const app = await createTestApp({ env: { TALLY_ALLOW_PRIVATE_WEBHOOK_URLS: "true" } });
  const ctx = app.runtime.ctx;
  const healthy = await startReceiver();
  const failing = await startReceiver();
  const stuck = await startStuckReceiver();

  it("a hanging endpoint and a failing one hold up neither other endpoints (later events too) nor the request path; both are retried with backoff", async () => {
    const orgId = await app.createOrg();
    await grant(app, orgId, "+100");
    failing.respond = () => 500;
    const endpoints: Record<string, string> = {};
    for (const [name, url] of [
      ["stuck", stuck.url],
      ["failing", failing.url],
      ["healthy", healthy.url],
    ] as const) {
      const res = await app.call("POST", "/v1/webhook-endpoints", {
        body: { url, org_id: orgId, events: ["balance.low"] },
      });
      expect(res.statusCode, res.body).toBe(201);
      endpoints[name] = res.json().id;
    }
    const emit = () =>
      ctx.db
        .transaction()
        .execute((tx) =>
          emitEvent(tx, ctx, { type: "balance.low", orgId, data: { balance: "1" } }),
        );
    const got = (r: { requests: { body: string }[] }, id: string) =>
      r.requests.some((q) => JSON.parse(q.body).id === id);

    // A delivery deadline far longer than this test: only the stuck endpoint's own slot waits.
    const runner = createJobRunner(ctx, { pollIntervalMs: 20, webhookTimeoutMs: 120_000 });
    runner.start();
    const first = await emit();
    try {
      await waitFor(() => got(healthy, first.id) && got(failing, first.id) && stuck.hanging === 1);
      // A later event reaches the healthy endpoint while the first delivery still hangs.
      const second = await emit();
      await waitFor(() => got(healthy, second.id) && got(failing, second.id));
      expect(stuck.hanging).toBeGreaterThanOrEqual(1);
      // The request path does not wait for deliveries either.
      const adjust = await app.call("POST", `/v1/organizations/${orgId}/adjustments`, {
        body: { amount: "-1", reason: "while a delivery hangs" },
      });
      expect(adjust.statusCode, adjust.body).toBe(201);
      const balance = await app.call("GET", `/v1/organizations/${orgId}/balance`);
      expect(balance.json().balance).toBe("99");
      await waitFor(() => stuck.hanging === 2);
    } finally {
      stuck.release(204); // the hanging connections drop: those attempts fail
      await runner.stop();
    }

    const deliveries = async (name: string) =>
      (await app.call("GET", `/v1/webhook-endpoints/${endpoints[name]}/deliveries`)).json()
        .data as Json[];
    expect((await deliveries("healthy")).map((d) => d.succeeded)).toEqual([true, true]);
    for (const name of ["stuck", "failing"]) {
      const failed = await deliveries(name);
      expect(failed).toHaveLength(2);
      for (const d of failed) {
        expect(d).toMatchObject({ attempt: 1, succeeded: false, error: expect.any(String) });
      }
    }
    expect((await deliveries("failing")).map((d) => d.error)).toEqual(["HTTP 500", "HTTP 500"]);

    // Retried with backoff: not before the first delay, then with the same message id.
    const { backoff } = WEBHOOK_QUEUE_OPTIONS;
    app.clock.advance(backoff.baseMs * (1 - backoff.jitter) - 1000);
    await runDueJobs(ctx);
    expect(stuck.received).toBe(2);
    expect(failing.requests).toHaveLength(2);
    failing.respond = () => 204;
    app.clock.advance(backoff.baseMs * 2 * backoff.jitter + 2000);
    await runDueJobs(ctx);
    expect(stuck.received).toBe(4);
    for (const name of ["stuck", "failing"]) {
      const all = await deliveries(name);
      expect(all.filter((d) => d.attempt === 2 && d.succeeded)).toHaveLength(2);
    }
    const ids = failing.requests.map((r) => r.headers["webhook-id"]);
    expect(new Set(ids).size).toBe(2); // one message id per event, kept across retries
    await checkOrgInvariants(ctx.db, orgId);
  });
});

// ---- PostgreSQL: backends terminated --------------------------------------------------------

describe.runIf(onPostgres)("PostgreSQL backends terminated (pg_terminate_backend)", async () => {
  // Vitest collects skipped suites too: nothing here may touch PostgreSQL on a PGlite run.
  if (!onPostgres) return;
  const app = await createTestApp();
  const ctx = app.runtime.ctx;
  const { rows } = await sql<{ name: string }>`select current_database() as name`.execute(ctx.db);
  const dbName = rows[0]!.name;
  const admin = new pg.Client({ connectionString: TEST_DATABASE_URL! });
  admin.on("error", () => {});
  await admin.connect();
  afterAll(() => admin.end());

  let lastKilled: number[] = [];
  /**
   * Terminates every backend of this file's database and no other (the server is shared): the
   * materialized CTE fixes the set first, so the terminate never sees another database's rows.
   * Returns how many.
   */
  async function terminateAll(): Promise<number> {
    const { rows } = await admin.query<{ pid: number }>(
      `with mine as materialized (
         select pid from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()
       )
       select pid from mine where pg_terminate_backend(pid)`,
      [dbName],
    );
    lastKilled = rows.map((r) => r.pid);
    return rows.length;
  }

  /**
   * Waits until the last terminated backends have exited and the service answers again. Until
   * the pool has seen a killed idle connection close, a request may still draw it and get a 503.
   */
  async function settle(): Promise<void> {
    await waitFor(
      async () =>
        (
          await admin.query("select 1 from pg_stat_activity where pid = any($1::int[])", [
            lastKilled,
          ])
        ).rowCount === 0,
    );
    await waitFor(async () => (await app.call("GET", "/readyz", { key: null })).statusCode === 200);
  }

  it("a connection killed while idle in the pool or while checked out does not crash the process", async () => {
    const crashes: unknown[] = [];
    const onCrash = (error: unknown) => crashes.push(error);
    process.on("uncaughtException", onCrash);
    try {
      // Several idle connections in the pool.
      const ready = await Promise.all(
        Array.from({ length: 4 }, () => app.call("GET", "/readyz", { key: null })),
      );
      for (const r of ready) expect(r.statusCode).toBe(200);
      expect(await terminateAll()).toBeGreaterThan(0);
      await settle();

      // A connection checked out, its backend killed between two statements: the next one
      // fails, and the dead connection's 'error' event must find a listener.
      await ctx.db.connection().execute(async (conn) => {
        const pid = (await sql<{ pid: number }>`select pg_backend_pid() as pid`.execute(conn))
          .rows[0]!.pid;
        await admin.query("select pg_terminate_backend($1)", [pid]);
        await waitFor(
          async () =>
            (await admin.query("select 1 from pg_stat_activity where pid = $1", [pid])).rowCount ===
            0,
        );
        await expect(sql`select 1`.execute(conn)).rejects.toThrow();
      });

      // Service as usual, without a restart.
      await settle();
      const orgId = await app.createOrg();
      await grant(app, orgId, "+5");
      expect(crashes).toEqual([]);
    } finally {
      process.off("uncaughtException", onCrash);
    }
  });

  it("ingest, adjustments and purchases under repeated terminations: each request stored or refused cleanly, service resumes by itself, invariants hold", async () => {
    const orgs = [await app.createOrg(), await app.createOrg()];
    const keys: Record<string, string> = {};
    for (const orgId of orgs) {
      await grant(app, orgId, "+1000");
      keys[orgId] = await app.orgKey(orgId, "ingest");
    }
    const pkg = (
      await app.call("POST", "/v1/credit-packages", {
        body: { name: "Small", credits: "100", bonus_credits: "20", price: "10.00" },
      })
    ).json();

    interface Outcome {
      kind: "ingest" | "adjust" | "buy" | "pay";
      orgId: string;
      res: Response;
      ids?: string[];
      reason?: string;
      purchaseId?: string;
    }
    const outcomes: Outcome[] = [];
    const failed = (kind?: Outcome["kind"]) =>
      outcomes.filter((o) => o.res.statusCode >= 500 && (!kind || o.kind === kind));
    let stop = false;
    let seq = 0;

    const ingestLoop = async (w: number) => {
      while (!stop) {
        const orgId = orgs[w % 2]!;
        const ids = [1, 2, 3].map(() => `k-${w}-${++seq}`);
        const res = await app.call("POST", "/v1/usage-events", {
          key: keys[orgId]!,
          body: { events: ids.map(usageEvent) },
        });
        outcomes.push({ kind: "ingest", orgId, res, ids });
      }
    };
    const adjustLoop = async (w: number) => {
      while (!stop) {
        const orgId = orgs[w % 2]!;
        const n = ++seq;
        const reason = `fault-${n}`;
        const res = await app.call("POST", `/v1/organizations/${orgId}/adjustments`, {
          body: { amount: n % 2 === 0 ? "+2" : "-1", reason },
        });
        outcomes.push({ kind: "adjust", orgId, res, reason });
      }
    };
    const purchaseLoop = async (w: number) => {
      while (!stop) {
        const orgId = orgs[w % 2]!;
        const res = await app.call("POST", `/v1/organizations/${orgId}/purchases`, {
          body: { package_id: pkg.id },
        });
        outcomes.push({ kind: "buy", orgId, res });
        if (res.statusCode !== 201) continue;
        const purchaseId = res.json().id as string;
        const pay = await app.call("POST", `/sandbox/checkout/${purchaseId}`, {
          key: null,
          rawBody: new URLSearchParams({ action: "pay", card: "success" }).toString(),
          headers: FORM,
        });
        outcomes.push({ kind: "pay", orgId, res: pay, purchaseId });
      }
    };
    const loops = [
      ...[0, 1, 2, 3].map(ingestLoop),
      ...[0, 1].map(adjustLoop),
      ...[0, 1].map(purchaseLoop),
    ];

    // Kill every backend of the database again and again, at uneven intervals, until every
    // kind of request has met the fault a few times.
    let kills = 0;
    try {
      await waitFor(
        async () => {
          await new Promise((r) => setTimeout(r, 15 + Math.random() * 40));
          kills += await terminateAll();
          return (
            failed().length >= 12 &&
            failed("ingest").length >= 3 &&
            failed("adjust").length >= 1 &&
            failed("buy").length + failed("pay").length >= 1
          );
        },
        { timeoutMs: 60_000, intervalMs: 0 },
      );
    } finally {
      stop = true;
      await Promise.all(loops);
    }
    expect(kills).toBeGreaterThan(0);

    // Every answer is a success or a clean 503 envelope; never a 500 or a hang.
    const SUCCESS = { ingest: 200, adjust: 201, buy: 201, pay: 303 };
    const unexpected = outcomes
      .filter((o) => o.res.statusCode !== SUCCESS[o.kind] && !isCleanUnavailable(o.res))
      .map((o) => `${o.kind} ${o.res.statusCode} ${o.res.body.slice(0, 200)}`);
    expect(unexpected).toEqual([]);
    for (const o of failed().slice(0, 5)) expectEnvelope(o.res, 503, "service_unavailable");

    // The service recovers by itself.
    await settle();

    // No half-written state. A refused request is all or nothing: normally nothing, or — when
    // only the COMMIT's acknowledgement was lost — everything (a retry then finds it done).
    const storedEvents = new Set(
      (await ctx.db.selectFrom("usage_events").select(["org_id", "id"]).execute()).map(
        (e) => `${e.org_id}/${e.id}`,
      ),
    );
    let inDoubt = 0;
    for (const o of outcomes.filter((x) => x.kind === "ingest")) {
      const stored = o.ids!.filter((id) => storedEvents.has(`${o.orgId}/${id}`)).length;
      if (o.res.statusCode === 200) {
        expect(stored).toBe(o.ids!.length);
        expect(o.res.json().data.map((d: Json) => d.status)).toEqual(o.ids!.map(() => "accepted"));
      } else {
        expect([0, o.ids!.length]).toContain(stored);
        if (stored > 0) inDoubt++;
      }
    }
    const adjustmentReasons = await ctx.db
      .selectFrom("ledger_entries")
      .select(["id", "reason"])
      .where("type", "=", "adjustment")
      .where("reason", "like", "fault-%")
      .execute();
    for (const o of outcomes.filter((x) => x.kind === "adjust")) {
      const entries = adjustmentReasons.filter((e) => e.reason === o.reason);
      if (o.res.statusCode === 201) expect(entries.map((e) => e.id)).toEqual([o.res.json().id]);
      else expect(entries.length).toBeLessThanOrEqual(1);
    }
    for (const orgId of orgs) {
      await checkPurchases(orgId);
      await checkOrgInvariants(ctx.db, orgId);
    }

    // Clients retry what failed: the same events and the same checkouts. Everything lands once.
    for (const o of outcomes.filter((x) => x.kind === "ingest" && x.res.statusCode !== 200)) {
      const retry = await app.call("POST", "/v1/usage-events", {
        key: keys[o.orgId]!,
        body: { events: o.ids!.map(usageEvent) },
      });
      expect(retry.statusCode, retry.body).toBe(200);
      const statuses = new Set(retry.json().data.map((d: Json) => d.status));
      expect(statuses.size).toBe(1); // all accepted now, or all found done
    }
    for (const o of outcomes.filter((x) => x.kind === "pay" && x.res.statusCode !== 303)) {
      const retry = await app.call("POST", `/sandbox/checkout/${o.purchaseId}`, {
        key: null,
        rawBody: new URLSearchParams({ action: "pay", card: "success" }).toString(),
        headers: FORM,
      });
      expect(retry.statusCode, retry.body).toBe(303);
    }
    // And new work goes through as usual.
    for (const orgId of orgs) {
      const usage = await app.call("POST", "/v1/usage-events", {
        key: keys[orgId]!,
        body: usageEvent(`after-${orgId}`),
      });
      expect(usage.statusCode, usage.body).toBe(200);
    }
    const direct = new URL(TEST_DATABASE_URL!);
    direct.pathname = `/${dbName}`;
    await expectRevocationHonoured(app, orgs[0]!, direct.toString());

    for (const orgId of orgs) {
      const balance = await checkOrgInvariants(ctx.db, orgId);
      await checkPurchases(orgId);
      const verify = await app.call("GET", `/v1/organizations/${orgId}/ledger/verify`);
      expect(verify.json()).toMatchObject({ ok: true, first_bad_sequence: null });
      // Independently of the ledger: what the clients were told, plus what was in doubt.
      const ids = new Set<string>([`after-${orgId}`]);
      for (const o of outcomes) {
        if (o.kind === "ingest" && o.orgId === orgId) for (const id of o.ids!) ids.add(id);
      }
      const events = await ctx.db
        .selectFrom("usage_events")
        .select("id")
        .where("org_id", "=", orgId)
        .execute();
      expect(events.map((e) => e.id).sort()).toEqual([...ids].sort());
      const adjustments = await ctx.db
        .selectFrom("ledger_entries")
        .select("amount")
        .where("org_id", "=", orgId)
        .where("type", "=", "adjustment")
        .execute();
      const paid = await ctx.db
        .selectFrom("purchases")
        .select("id")
        .where("org_id", "=", orgId)
        .where("status", "=", "paid")
        .execute();
      const expected =
        adjustments.reduce((s, a) => s + parseCredits(a.amount), 0n) +
        BigInt(paid.length) * parseCredits("120") -
        BigInt(ids.size) * EVENT_COST;
      expect(formatCredits(balance)).toBe(formatCredits(expected));
    }
    // Reported, not asserted: how often the outcome of a refused request was in fact stored.
    console.info(
      `faults: ${kills} backends terminated, ${failed().length} requests refused with 503, ${inDoubt} ingest requests committed without an acknowledgement`,
    );

    /** A purchase is paid with exactly its two grants, or unpaid with none. */
    async function checkPurchases(orgId: string) {
      const purchases = await ctx.db
        .selectFrom("purchases")
        .select(["id", "status"])
        .where("org_id", "=", orgId)
        .execute();
      const grants = await ctx.db
        .selectFrom("ledger_entries")
        .select(["reference_id", "type", "amount"])
        .where("org_id", "=", orgId)
        .where("type", "in", ["purchase", "bonus"])
        .execute();
      for (const p of purchases) {
        const mine = grants
          .filter((g) => g.reference_id === p.id)
          .map((g) => [g.type, formatCredits(parseCredits(g.amount))])
          .sort();
        if (p.status === "paid") {
          expect(mine).toEqual([
            ["bonus", "20"],
            ["purchase", "100"],
          ]);
        } else {
          expect(p.status).toBe("pending");
          expect(mine).toEqual([]);
        }
      }
      expect(grants.every((g) => purchases.some((p) => p.id === g.reference_id))).toBe(true);
    }
  }, 120_000);
});

// ---- PostgreSQL: unreachable for a while ------------------------------------------------------

/**
 * A TCP proxy between Tally and PostgreSQL (the shared server itself is never restarted). `up`
 * forwards; `refuse` cuts every connection and stops listening (a database restarting:
 * connection refused); `stall` cuts every connection and accepts new ones without ever
 * answering (a database host gone silent); `freeze` stops forwarding on the connections open now
 * without closing them, and forwards new ones (a firewall that silently dropped some flows);
 * `restore` forwards again on the same port.
 */
async function startPgProxy(target: { host: string; port: number }) {
  let mode: "up" | "stall" = "up";
  const sockets = new Set<net.Socket>();
  const pairs = new Set<[net.Socket, net.Socket]>();
  const track = (s: net.Socket) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
    s.on("error", () => s.destroy());
  };
  const server = net.createServer((client) => {
    track(client);
    if (mode === "stall") return;
    const upstream = net.connect(target);
    track(upstream);
    client.pipe(upstream);
    upstream.pipe(client);
    const pair: [net.Socket, net.Socket] = [client, upstream];
    pairs.add(pair);
    client.on("close", () => {
      pairs.delete(pair);
      upstream.destroy();
    });
    upstream.on("close", () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  const cut = () => {
    for (const s of sockets) s.destroy();
  };
  const listen = () =>
    server.listening
      ? Promise.resolve()
      : new Promise<void>((resolve, reject) => {
          server.once("error", reject);
          server.listen(port, "127.0.0.1", () => {
            server.off("error", reject);
            resolve();
          });
        });
  const unlisten = () =>
    server.listening
      ? new Promise<void>((resolve) => server.close(() => resolve()))
      : Promise.resolve();
  return {
    port,
    async refuse() {
      const closed = unlisten();
      cut();
      await closed;
    },
    async stall() {
      mode = "stall";
      cut();
      await listen();
    },
    freeze() {
      for (const [client, upstream] of pairs) {
        client.unpipe(upstream);
        upstream.unpipe(client);
        client.pause();
        upstream.pause();
      }
      pairs.clear();
    },
    async restore() {
      if (mode === "stall") cut(); // connections that were never answered
      mode = "up";
      await listen();
    },
    async close() {
      const closed = unlisten();
      cut();
      await closed;
    },
  };
}

describe.runIf(onPostgres)("PostgreSQL unreachable for a while (TCP proxy)", async () => {
  if (!onPostgres) return;
  const direct = new URL((await testDatabaseUrl())!);
  const proxy = await startPgProxy({
    host: direct.hostname,
    port: Number(direct.port || 5432),
  });
  afterAll(() => proxy.close());
  const viaProxy = new URL(direct);
  viaProxy.hostname = "127.0.0.1";
  viaProxy.port = String(proxy.port);
  const app = await createTestApp({
    database: await openDatabase({ url: viaProxy.toString(), poolSize: 5, connectTimeoutMs: 1000 }),
  });
  const ctx = app.runtime.ctx;

  it("/readyz answers 503 with the envelope during the outage and 200 after; requests fail cleanly; ingest resumes by itself", async () => {
    const orgId = await app.createOrg();
    await grant(app, orgId, "+100");
    const key = await app.orgKey(orgId, "ingest");
    const readyz = () => app.call("GET", "/readyz", { key: null });
    expect((await readyz()).json()).toEqual({ status: "ok" });

    // Steady ingest traffic throughout, one request after another.
    const outcomes: { ids: string[]; res: Response }[] = [];
    let stop = false;
    let seq = 0;
    const traffic = (async () => {
      while (!stop) {
        const ids = [`p-${++seq}`, `p-${++seq}`];
        const res = await app.call("POST", "/v1/usage-events", {
          key,
          body: { events: ids.map(usageEvent) },
        });
        outcomes.push({ ids, res });
        // Pace the retries of a client that is being refused.
        if (res.statusCode !== 200) await new Promise((r) => setTimeout(r, 10));
      }
    })();
    const succeededSince = (n: number) =>
      outcomes.slice(n).filter((o) => o.res.statusCode === 200).length;
    const failedSince = (n: number) =>
      outcomes.slice(n).filter((o) => o.res.statusCode !== 200).length;

    try {
      await waitFor(() => succeededSince(0) >= 5);

      // The database goes away: connections cut, new ones refused.
      await proxy.refuse();
      const cutAt = outcomes.length;
      const down = await waitFor(async () => {
        const r = await readyz();
        return r.statusCode === 503 ? r : null;
      });
      expectEnvelope(down, 503, "service_unavailable");
      expectEnvelope(
        await app.call("POST", "/v1/usage-events", { key, body: usageEvent("refused-1") }),
        503,
        "service_unavailable",
      );
      expectEnvelope(
        await app.call("GET", `/v1/organizations/${orgId}/balance`),
        503,
        "service_unavailable",
      );
      await waitFor(() => failedSince(cutAt) >= 3);

      // Connections accepted but never answered: the connect timeout answers instead.
      await proxy.stall();
      expectEnvelope(await readyz(), 503, "service_unavailable");
      expectEnvelope(
        await app.call("POST", "/v1/usage-events", { key, body: usageEvent("stalled-1") }),
        503,
        "service_unavailable",
      );

      // Back: ready again and ingest resumes by itself, no restart.
      await proxy.restore();
      await waitFor(async () => (await readyz()).statusCode === 200);
      const backAt = outcomes.length;
      await waitFor(() => succeededSince(backAt) >= 5);
      await expectRevocationHonoured(app, orgId, direct.toString());
    } finally {
      stop = true;
      await proxy.restore();
      await traffic;
    }

    // Failures were clean, and left nothing (or, for a lost acknowledgement, everything).
    const bad = outcomes.filter((o) => o.res.statusCode !== 200 && !isCleanUnavailable(o.res));
    expect(bad.map((o) => `${o.res.statusCode} ${o.res.body.slice(0, 200)}`)).toEqual([]);
    const stored = new Set(
      (
        await ctx.db.selectFrom("usage_events").select("id").where("org_id", "=", orgId).execute()
      ).map((e) => e.id),
    );
    expect(stored.has("refused-1")).toBe(false);
    expect(stored.has("stalled-1")).toBe(false);
    for (const o of outcomes) {
      const n = o.ids.filter((id) => stored.has(id)).length;
      if (o.res.statusCode === 200) expect(n).toBe(o.ids.length);
      else expect([0, o.ids.length]).toContain(n);
    }
    const balance = await checkOrgInvariants(ctx.db, orgId);
    expect(formatCredits(balance)).toBe(
      formatCredits(parseCredits("100") - BigInt(stored.size) * EVENT_COST),
    );
  }, 120_000);
});

describe.runIf(onPostgres)("a listening connection gone silent", async () => {
  if (!onPostgres) return;
  const direct = new URL((await testDatabaseUrl())!);
  const proxy = await startPgProxy({ host: direct.hostname, port: Number(direct.port || 5432) });
  afterAll(() => proxy.close());
  const viaProxy = new URL(direct);
  viaProxy.hostname = "127.0.0.1";
  viaProxy.port = String(proxy.port);
  const database = await openDatabase({ url: viaProxy.toString(), poolSize: 1 });
  afterAll(() => database.close());

  it("is given up by its heartbeat and listened again: nothing is missed unannounced", async () => {
    const states: boolean[] = [];
    let heard = 0;
    const stop = await database.listen(
      "tally_heartbeat_test",
      { onMessage: () => heard++, onState: (live) => states.push(live) },
      { heartbeatMs: 100 },
    );
    try {
      const notify = () => sql`select pg_notify('tally_heartbeat_test', 'x')`.execute(database.db);
      await waitFor(() => states.at(-1) === true);
      await notify();
      await waitFor(() => heard === 1);

      // The connection stays open but nothing passes any more (the pool's connection too).
      proxy.freeze();
      // Told within two beats, not after TCP's minutes: caches stop trusting notifications.
      await waitFor(() => states.includes(false), { timeoutMs: 2_000 });
      // Re-established through the proxy, which forwards new connections.
      await waitFor(() => states.at(-1) === true, { timeoutMs: 5_000 });
      const unproxied = await openDatabase({ url: direct.toString(), poolSize: 1 });
      try {
        await sql`select pg_notify('tally_heartbeat_test', 'y')`.execute(unproxied.db);
      } finally {
        await unproxied.close();
      }
      await waitFor(() => heard === 2);
      // (A machine loaded enough to stall the event loop for a beat may add a reconnection.)
      expect(states[0]).toBe(true);
      expect(states.at(-1)).toBe(true);
    } finally {
      await stop();
    }
  }, 30_000);
});
