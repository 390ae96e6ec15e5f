import type { Static } from "@sinclair/typebox";
import { describe, expect, it } from "vitest";
import { createTestApp, type TestApp } from "../../../test/support/app.js";
import { startSmtp } from "../alerts/test-smtp.js";
import { findPackageIn } from "../billing/offsession.service.js";
import { setPaymentProvider } from "../billing/providers/index.js";
import type { ChargeInput, ChargeResult } from "../billing/providers/provider.js";
import { PaymentProviderError } from "../billing/providers/provider.js";
import { SandboxProvider } from "../billing/providers/sandbox.js";
import { expirePurchases, failPurchase, fulfilPurchase } from "../billing/purchases.service.js";
import { runDueJobs } from "../notify/notify.service.js";
import { insertInFlightAttempt } from "./topup.repo.js";
import type { TopupAttemptSchema } from "./topup.routes.js";
import { reconcileOpenAttempts } from "./topup.runner.js";
import { onTopupPurchaseSettled, refusalBeforeCharge } from "./topup.service.js";

const FORM = { "content-type": "application/x-www-form-urlencoded" };

type Card = "success" | "decline_off_session" | "action_off_session";

/** Sandbox provider that counts off-session calls and can be told to fail or answer otherwise. */
class CountingSandbox extends SandboxProvider {
  calls: ChargeInput[] = [];
  answer?: (input: ChargeInput) => Promise<ChargeResult> | null;
  constructor() {
    super("http://tally.test");
  }
  override async chargeOffSession(input: ChargeInput): Promise<ChargeResult> {
    this.calls.push(input);
    const special = this.answer?.(input);
    if (special) return special;
    return super.chargeOffSession(input);
  }
}

function helpers(app: TestApp) {
  const ctx = app.runtime.ctx;
  let seq = 0;
  const h = {
    ctx,
    async pkg(body: Record<string, unknown> = {}) {
      const res = await app.call("POST", "/v1/credit-packages", {
        body: { name: "Auto", credits: "1000", bonus_credits: "200", price: "49.00", ...body },
      });
      expect(res.statusCode, res.body).toBe(201);
      return res.json().id as string;
    },
    /** A new organisation with a saved sandbox card (its checkout grants the package too). */
    async orgWithCard(packageId: string, card: Card = "success") {
      const orgId = await app.createOrg();
      const p = await app.call("POST", `/v1/organizations/${orgId}/purchases`, {
        body: { package_id: packageId, save_payment_method: true },
      });
      expect(p.statusCode, p.body).toBe(201);
      const paid = await app.call("POST", `/sandbox/checkout/${p.json().id}`, {
        key: null,
        rawBody: new URLSearchParams({ action: "pay", card }).toString(),
        headers: FORM,
      });
      expect(paid.statusCode, paid.body).toBe(303);
      return orgId;
    },
    put(orgId: string, body: Record<string, unknown>, key?: string) {
      return app.call("PUT", `/v1/organizations/${orgId}/auto-topup`, { body, key });
    },
    async enable(orgId: string, body: Record<string, unknown>) {
      const res = await h.put(orgId, { enabled: true, ...body });
      expect(res.statusCode, res.body).toBe(200);
      return res.json();
    },
    async settings(orgId: string) {
      return (await app.call("GET", `/v1/organizations/${orgId}/auto-topup`)).json();
    },
    async attempts(orgId: string) {
      const res = await app.call("GET", `/v1/organizations/${orgId}/auto-topup/attempts`);
      expect(res.statusCode, res.body).toBe(200);
      return res.json().data as Static<typeof TopupAttemptSchema>[];
    },
    async adjust(orgId: string, amount: string) {
      const res = await app.call("POST", `/v1/organizations/${orgId}/adjustments`, {
        body: { amount, reason: "test" },
      });
      expect(res.statusCode, res.body).toBe(201);
      return res.json().balance_after as string;
    },
    async use(key: string, vcpuSeconds = 1000) {
      const res = await app.call("POST", "/v1/usage-events", {
        key,
        body: {
          id: `u-${++seq}`,
          type: "compute",
          meter: "compute.vcpu_seconds",
          quantity: String(vcpuSeconds),
        },
      });
      expect(res.statusCode, res.body).toBe(200);
    },
    async balance(orgId: string) {
      return (await app.call("GET", `/v1/organizations/${orgId}/balance`)).json();
    },
    async events(orgId: string, type: string) {
      const rows = await ctx.db
        .selectFrom("events")
        .selectAll()
        .where("org_id", "=", orgId)
        .where("type", "=", type)
        .orderBy("id")
        .execute();
      return rows.map((r) => r.data as Record<string, unknown>);
    },
    async purchases(orgId: string, source = "auto_topup") {
      return ctx.db
        .selectFrom("purchases")
        .selectAll()
        .where("org_id", "=", orgId)
        .where("source", "=", source as "auto_topup")
        .execute();
    },
    async entries(orgId: string, purchaseId: string) {
      return ctx.db
        .selectFrom("ledger_entries")
        .select(["type", "amount"])
        .where("org_id", "=", orgId)
        .where("reference_id", "=", purchaseId)
        .orderBy("sequence")
        .execute();
    },
  };
  return h;
}

describe("auto-topup", async () => {
  const smtp = await startSmtp();
  const app = await createTestApp({
    env: { TALLY_SMTP_URL: smtp.url, TALLY_EMAIL_FROM: "Tally <alerts@tally.test>" },
  });
  const provider = new CountingSandbox();
  setPaymentProvider(app.runtime.ctx, provider);
  const h = helpers(app);
  const ctx = h.ctx;
  const packageId = await h.pkg();

  describe("settings", () => {
    it("GET before any PUT: disabled, no card", async () => {
      const orgId = await app.createOrg();
      expect(await h.settings(orgId)).toEqual({
        org_id: orgId,
        enabled: false,
        threshold: "0",
        package_id: null,
        monthly_limit: null,
        max_failures: 1,
        currency: "USD",
        payment_method: null,
        status: "disabled",
        disabled_reason: null,
        failure_count: 0,
        spent_this_month: "0.00",
        updated_at: null,
      });
      expect((await h.balance(orgId)).auto_topup).toBe("off");
    });

    it("enabling without a saved card is 409 invalid_state", async () => {
      const orgId = await app.createOrg();
      const res = await h.put(orgId, { enabled: true, threshold: "100", package_id: packageId });
      expect(res.statusCode).toBe(409);
      expect(res.json().error.code).toBe("invalid_state");
    });

    it("unknown package 404, inactive package 409, bad values 400", async () => {
      const orgId = await h.orgWithCard(packageId);
      const body = { enabled: true, threshold: "100", package_id: packageId };
      const unknown = await h.put(orgId, { ...body, package_id: "pkg_nope" });
      expect(unknown.statusCode).toBe(404);
      const inactive = await h.pkg({ name: "Old", active: false });
      const res = await h.put(orgId, { ...body, package_id: inactive });
      expect(res.statusCode).toBe(409);
      expect(res.json().error.code).toBe("invalid_state");
      for (const bad of [
        { ...body, threshold: "-1" },
        { ...body, threshold: 100 },
        { ...body, monthly_limit: "10.001" },
        { ...body, monthly_limit: "-5" },
        { ...body, max_failures: 0 },
        { ...body, max_failures: 11 },
        { ...body, extra: 1 },
        { threshold: "100", package_id: packageId },
        { enabled: true, package_id: packageId },
        { enabled: true, threshold: "100" },
      ]) {
        const r = await h.put(orgId, bad);
        expect(r.statusCode, JSON.stringify(bad)).toBe(400);
        expect(r.json().error.code).toBe("invalid_request");
      }
      expect((await h.settings(orgId)).enabled).toBe(false);
    });

    it("PUT stores the settings; GET shows card, status and spend; disabling keeps the rest", async () => {
      const orgId = await h.orgWithCard(packageId);
      const put = await h.enable(orgId, {
        threshold: "100.5",
        package_id: packageId,
        monthly_limit: "500",
        max_failures: 3,
      });
      expect(put).toMatchObject({
        enabled: true,
        threshold: "100.5",
        package_id: packageId,
        monthly_limit: "500.00",
        max_failures: 3,
        currency: "USD",
        payment_method: { brand: "visa", last4: "4242" },
        status: "idle",
        disabled_reason: null,
        spent_this_month: "0.00",
      });
      expect(await h.settings(orgId)).toEqual(put);
      expect((await h.balance(orgId)).auto_topup).toBe("idle");
      const off = await h.put(orgId, { enabled: false });
      expect(off.statusCode, off.body).toBe(200);
      expect(off.json()).toMatchObject({
        enabled: false,
        status: "disabled",
        threshold: "100.5",
        package_id: packageId,
        disabled_reason: null,
      });
      expect((await h.balance(orgId)).auto_topup).toBe("off");
    });

    it("roles: read keys read, billing/admin write, other organisations 404", async () => {
      const orgId = await h.orgWithCard(packageId);
      const other = await app.createOrg();
      const read = await app.orgKey(orgId, "read");
      const billing = await app.orgKey(orgId, "billing");
      const ingest = await app.orgKey(orgId, "ingest");
      const otherAdmin = await app.orgKey(other, "admin");
      const body = { enabled: true, threshold: "10", package_id: packageId };
      const base = `/v1/organizations/${orgId}/auto-topup`;
      expect((await app.call("GET", base, { key: read })).statusCode).toBe(200);
      expect((await app.call("GET", `${base}/attempts`, { key: read })).statusCode).toBe(200);
      expect((await app.call("GET", base, { key: ingest })).statusCode).toBe(403);
      expect((await h.put(orgId, body, read)).statusCode).toBe(403);
      expect((await h.put(orgId, body, billing)).statusCode).toBe(200);
      for (const [method, url] of [
        ["GET", base],
        ["PUT", base],
        ["GET", `${base}/attempts`],
      ] as const) {
        const res = await app.call(method, url, { key: otherAdmin, body });
        expect(res.statusCode, `${method} ${url}`).toBe(404);
      }
      expect((await app.call("GET", base, { key: null })).statusCode).toBe(401);
    });
  });

  it("success: one attempt, the package granted like a purchase (purchase + bonus, source auto_topup)", async () => {
    const orgId = await h.orgWithCard(packageId); // balance 1200
    await h.enable(orgId, { threshold: "100", package_id: packageId });
    await h.adjust(orgId, "-1000"); // 200: above, nothing
    expect(await h.attempts(orgId)).toEqual([]);
    await h.adjust(orgId, "-100"); // 100 ≤ 100: start
    const [attempt] = await h.attempts(orgId);
    expect(attempt).toMatchObject({
      status: "in_flight",
      amount: "49.00",
      currency: "USD",
      package_id: packageId,
      purchase_id: null,
      balance: "100",
    });
    expect((await h.settings(orgId)).status).toBe("in_flight");
    expect((await h.balance(orgId)).auto_topup).toBe("in_flight");
    await h.adjust(orgId, "-10"); // still ≤ threshold: no second attempt
    expect(await h.attempts(orgId)).toHaveLength(1);

    await runDueJobs(ctx);
    const [done] = await h.attempts(orgId);
    expect(done).toMatchObject({ id: attempt!.id, status: "succeeded", error: null });
    const [purchase] = await h.purchases(orgId);
    expect(purchase).toMatchObject({
      id: done!.purchase_id,
      status: "paid",
      source: "auto_topup",
      actor_type: "system",
      actor_id: "auto_topup",
    });
    expect(await h.entries(orgId, purchase!.id)).toEqual([
      { type: "purchase", amount: "1000.000000000000" },
      { type: "bonus", amount: "200.000000000000" },
    ]);
    expect((await h.balance(orgId)).balance).toBe("1290");
    expect(await h.events(orgId, "auto_topup.succeeded")).toEqual([
      {
        attempt_id: attempt!.id,
        purchase_id: purchase!.id,
        package_id: packageId,
        amount: "49.00",
        currency: "USD",
        credits: "1000",
        bonus_credits: "200",
      },
    ]);
    expect(provider.calls.filter((c) => c.idempotencyKey === `topup:${attempt!.id}`)).toHaveLength(
      1,
    );
    expect(await h.settings(orgId)).toMatchObject({ status: "idle", spent_this_month: "49.00" });
    // Re-armed: the next crossing starts the next one.
    await h.adjust(orgId, "-1200"); // 90
    expect((await h.attempts(orgId)).map((a) => a.status)).toEqual(["in_flight", "succeeded"]);
  });

  it("a refund that leaves the balance below the threshold starts no topup; the next usage does", async () => {
    const orgId = await h.orgWithCard(packageId); // balance 1200, all from one purchase
    await h.enable(orgId, { threshold: "100", package_id: packageId });
    const [bought] = await h.purchases(orgId, "checkout");
    const refund = await app.call(
      "POST",
      `/v1/organizations/${orgId}/purchases/${bought!.id}/refund`,
      {
        body: { reason: "customer asked" },
      },
    );
    expect(refund.statusCode, refund.body).toBe(200);
    expect((await h.balance(orgId)).balance).toBe("0");
    expect(await h.attempts(orgId)).toEqual([]);

    const key = await app.orgKey(orgId, "ingest");
    await h.use(key, 10);
    expect((await h.attempts(orgId)).map((a) => a.status)).toEqual(["in_flight"]);
  });

  it("a refund that also expires a block that fell due starts no topup either", async () => {
    const orgId = await h.orgWithCard(packageId); // balance 1200, all from one purchase
    const promo = await app.call("POST", `/v1/organizations/${orgId}/adjustments`, {
      body: {
        amount: "+5",
        reason: "promotion",
        category: "promotional",
        expires_at: new Date(app.clock.now().getTime() + 3_600_000).toISOString(),
      },
    });
    expect(promo.statusCode, promo.body).toBe(201);
    await h.enable(orgId, { threshold: "100", package_id: packageId });
    const [bought] = await h.purchases(orgId, "checkout");
    app.clock.advance(2 * 3_600_000); // the promotion is due; the expiry task has not run
    try {
      const refund = await app.call(
        "POST",
        `/v1/organizations/${orgId}/purchases/${bought!.id}/refund`,
        { body: { reason: "customer asked" } },
      );
      expect(refund.statusCode, refund.body).toBe(200);
      expect((await h.balance(orgId)).balance).toBe("0");
      expect(await h.attempts(orgId)).toEqual([]);
    } finally {
      app.clock.advance(-2 * 3_600_000);
    }
  });

  it("the database holds at most one attempt in flight per organisation", async () => {
    const orgId = await app.createOrg();
    const row = (id: string) => ({
      org_id: orgId,
      id,
      status: "in_flight" as const,
      package_id: packageId,
      purchase_id: null,
      amount_minor: "4900",
      currency: "USD",
      payment_id: null,
      action_url: null,
      error: null,
      balance: "0",
      created_at: app.clock.now(),
      updated_at: app.clock.now(),
    });
    expect(await insertInFlightAttempt(ctx.db, row("att_a"))).toBe(true);
    expect(await insertInFlightAttempt(ctx.db, row("att_b"))).toBe(false);
    await expect(
      ctx.db.insertInto("topup_attempts").values(row("att_c")).execute(),
    ).rejects.toThrow();
    // Once it is settled, the next one may start.
    await ctx.db
      .updateTable("topup_attempts")
      .set({ status: "succeeded" })
      .where("org_id", "=", orgId)
      .where("id", "=", "att_a")
      .execute();
    expect(await insertInFlightAttempt(ctx.db, row("att_d"))).toBe(true);
  });

  it("a storm of 30 concurrent usage writes below the threshold starts exactly one topup", async () => {
    const orgId = await h.orgWithCard(packageId); // 1200
    const key = await app.orgKey(orgId, "ingest");
    await h.enable(orgId, { threshold: "1200", package_id: packageId });
    await Promise.all(Array.from({ length: 30 }, () => h.use(key))); // 30 × 2 credits
    const attempts = await h.attempts(orgId);
    expect(attempts).toHaveLength(1);
    expect(attempts[0]!.status).toBe("in_flight");
    await Promise.all([runDueJobs(ctx), runDueJobs(ctx)]);
    expect(await h.purchases(orgId)).toHaveLength(1);
    expect((await h.balance(orgId)).balance).toBe("2340"); // 1200 − 60 + 1200
    expect((await h.attempts(orgId)).map((a) => a.status)).toEqual(["succeeded"]);
  });

  it("decline: counted, tried again by the next low write, disabled after max_failures with a reason and an email", async () => {
    const orgId = await h.orgWithCard(packageId, "decline_off_session");
    await app.call("PUT", `/v1/organizations/${orgId}/alerts`, {
      body: { thresholds: [], emails: ["billing@example.com"] },
    });
    await h.enable(orgId, { threshold: "100", package_id: packageId, max_failures: 2 });
    await h.adjust(orgId, "-1150"); // 50
    await runDueJobs(ctx);
    let [attempt] = await h.attempts(orgId);
    expect(attempt).toMatchObject({
      status: "failed",
      error: expect.stringContaining("declined"),
    });
    const [purchase] = await h.purchases(orgId);
    expect(purchase).toMatchObject({ status: "failed", failure_code: "card_declined" });
    expect(await h.settings(orgId)).toMatchObject({
      enabled: true,
      status: "idle",
      failure_count: 1,
    });
    let failed = await h.events(orgId, "auto_topup.failed");
    expect(failed).toEqual([
      {
        attempt_id: attempt!.id,
        purchase_id: purchase!.id,
        package_id: packageId,
        amount: "49.00",
        currency: "USD",
        error: attempt!.error,
        failure_count: 1,
        max_failures: 2,
        disabled: false,
        disabled_reason: null,
      },
    ]);
    // Still enabled: the next write that leaves the balance below the threshold tries again,
    // and that second decline disables it.
    await h.adjust(orgId, "-10"); // 40
    await runDueJobs(ctx);
    const attempts = await h.attempts(orgId);
    expect(attempts.map((a) => a.status)).toEqual(["failed", "failed"]);
    const settings = await h.settings(orgId);
    expect(settings).toMatchObject({ enabled: false, status: "disabled", failure_count: 2 });
    expect(settings.disabled_reason).toMatch(/^payment_failed: .*declined/);
    expect((await h.balance(orgId)).auto_topup).toBe("disabled");
    failed = await h.events(orgId, "auto_topup.failed");
    expect(failed[1]).toMatchObject({
      failure_count: 2,
      disabled: true,
      disabled_reason: settings.disabled_reason,
    });
    [attempt] = attempts;
    const mails = smtp.received.filter((m) => m.to.includes("billing@example.com"));
    expect(mails).toHaveLength(2);
    expect(mails[1]!.raw).toContain("Subject: Auto-topup failed");
    expect(mails[1]!.raw).toContain("Auto-topup has been turned off");
    // Disabled: further crossings start nothing; enabling again clears the failures.
    await h.adjust(orgId, "+100");
    await h.adjust(orgId, "-100");
    expect(await h.attempts(orgId)).toHaveLength(2);
    const again = await h.enable(orgId, { threshold: "100", package_id: packageId });
    expect(again).toMatchObject({ failure_count: 0, disabled_reason: null, status: "idle" });
  });

  it("requires action: action_required with a URL; confirming on the sandbox page pays it", async () => {
    const orgId = await h.orgWithCard(packageId, "action_off_session");
    await app.call("PUT", `/v1/organizations/${orgId}/alerts`, {
      body: { thresholds: [], emails: ["owner@example.com"] },
    });
    await h.enable(orgId, { threshold: "100", package_id: packageId });
    await h.adjust(orgId, "-1150"); // 50
    await runDueJobs(ctx);
    const [attempt] = await h.attempts(orgId);
    const actionUrl = `http://tally.test/sandbox/auto-topup/${attempt!.id}`;
    expect(attempt).toMatchObject({ status: "action_required", action_url: actionUrl });
    expect(await h.events(orgId, "auto_topup.action_required")).toEqual([
      {
        attempt_id: attempt!.id,
        purchase_id: attempt!.purchase_id,
        package_id: packageId,
        amount: "49.00",
        currency: "USD",
        action_url: actionUrl,
        error: expect.stringContaining("authentication"),
      },
    ]);
    const mail = smtp.received.find((m) => m.to.includes("owner@example.com"));
    expect(mail?.raw).toContain("Subject: Action required");
    expect(mail?.raw).toContain(actionUrl);
    expect((await h.settings(orgId)).status).toBe("idle"); // not in flight: waits for the customer

    const page = await app.call("GET", new URL(actionUrl).pathname, { key: null });
    expect(page.statusCode).toBe(200);
    expect(page.body).toContain('value="confirm"');
    const confirm = await app.call("POST", new URL(actionUrl).pathname, {
      key: null,
      rawBody: "action=confirm",
      headers: FORM,
    });
    expect(confirm.statusCode).toBe(200);
    expect(confirm.body).toContain("Payment confirmed");
    expect((await h.attempts(orgId))[0]).toMatchObject({ status: "succeeded" });
    expect((await h.balance(orgId)).balance).toBe("1250");
    expect(await h.events(orgId, "auto_topup.succeeded")).toHaveLength(1);
    // Confirming again changes nothing.
    const twice = await app.call("POST", new URL(actionUrl).pathname, {
      key: null,
      rawBody: "action=confirm",
      headers: FORM,
    });
    expect(twice.statusCode).toBe(409);
    expect((await h.balance(orgId)).balance).toBe("1250");
    const bad = await app.call("POST", "/sandbox/auto-topup/att_nope", {
      key: null,
      rawBody: "action=confirm",
      headers: FORM,
    });
    expect(bad.statusCode).toBe(404);
  });

  it("monthly limit: skipped_limit once per crossing, never exceeded, fresh budget next month", async () => {
    const orgId = await h.orgWithCard(packageId);
    await h.enable(orgId, { threshold: "100", package_id: packageId, monthly_limit: "60.00" });
    await h.adjust(orgId, "-1150"); // 50 → topup 1 (49.00)
    await runDueJobs(ctx);
    await h.adjust(orgId, "-1200"); // 50 → 49 + 49 > 60: skipped
    let attempts = await h.attempts(orgId);
    expect(attempts.map((a) => a.status)).toEqual(["skipped_limit", "succeeded"]);
    expect(attempts[0]!.error).toContain("monthly limit of 60.00 USD");
    await h.adjust(orgId, "-10"); // still below: no new record
    await h.adjust(orgId, "+100");
    await h.adjust(orgId, "-100"); // a new crossing: skipped again, once
    await runDueJobs(ctx);
    attempts = await h.attempts(orgId);
    expect(attempts.map((a) => a.status)).toEqual(["skipped_limit", "skipped_limit", "succeeded"]);
    expect(await h.purchases(orgId)).toHaveLength(1);
    expect((await h.settings(orgId)).spent_this_month).toBe("49.00");

    // December: a new month's budget; the trigger re-arms for the same (still low) balance.
    app.clock.set("2026-12-01T00:00:05.000Z");
    try {
      await h.adjust(orgId, "-1");
      attempts = await h.attempts(orgId);
      expect(attempts[0]!.status).toBe("in_flight");
      await runDueJobs(ctx);
      expect((await h.settings(orgId)).spent_this_month).toBe("49.00");
    } finally {
      app.clock.set("2026-11-24T10:00:00.000Z");
    }
  });

  it("pending charge: stays in flight until the processor's notification settles the purchase", async () => {
    const orgId = await h.orgWithCard(packageId);
    await h.enable(orgId, { threshold: "100", package_id: packageId });
    provider.answer = (input) =>
      input.orgId === orgId ? Promise.resolve({ status: "pending", paymentId: "pi_slow" }) : null;
    try {
      await h.adjust(orgId, "-1150");
      await runDueJobs(ctx);
    } finally {
      provider.answer = undefined;
    }
    const [attempt] = await h.attempts(orgId);
    expect(attempt).toMatchObject({ status: "in_flight" });
    expect((await h.settings(orgId)).status).toBe("in_flight");
    // What billing's payment_intent.succeeded handler does:
    const paid = await fulfilPurchase(ctx, orgId, attempt!.purchase_id!, {
      providerPaymentId: "pi_slow",
    });
    expect(paid.ok).toBe(true);
    if (!paid.ok) return;
    await onTopupPurchaseSettled(ctx.db, ctx, paid.value.purchase);
    await onTopupPurchaseSettled(ctx.db, ctx, paid.value.purchase); // a repeated notification
    expect((await h.attempts(orgId))[0]).toMatchObject({ status: "succeeded" });
    expect(await h.events(orgId, "auto_topup.succeeded")).toHaveLength(1);
  });

  it("a charge still processing when its purchase expires keeps the attempt in flight", async () => {
    const orgId = await h.orgWithCard(packageId);
    await h.enable(orgId, {
      threshold: "100",
      package_id: packageId,
      monthly_limit: "60.00",
      max_failures: 3,
    });
    provider.answer = (input) =>
      input.orgId === orgId ? Promise.resolve({ status: "pending", paymentId: "pi_debit" }) : null;
    const start = app.clock.now().toISOString();
    try {
      await h.adjust(orgId, "-1150");
      await runDueJobs(ctx);
      // A day later the bank debit is still processing; the purchase's window has passed.
      app.clock.advance(25 * 60 * 60_000);
      await expirePurchases(ctx);
      await reconcileOpenAttempts(ctx);
      const [attempt] = await h.attempts(orgId);
      expect(attempt).toMatchObject({ status: "in_flight" });
      expect(await h.settings(orgId)).toMatchObject({ status: "in_flight" });
      // Another low write starts no second charge while the first may still go through.
      await h.adjust(orgId, "-1");
      await runDueJobs(ctx);
      expect(await h.attempts(orgId)).toHaveLength(1);

      // The debit fails at last: a counted decline, reported once.
      const failed = await failPurchase(ctx, orgId, attempt!.purchase_id!, {
        code: "insufficient_funds",
        message: "The debit was returned.",
      });
      expect(failed.ok).toBe(true);
      if (!failed.ok) return;
      await onTopupPurchaseSettled(ctx.db, ctx, failed.value);
      expect((await h.attempts(orgId))[0]).toMatchObject({ status: "failed" });
      expect(await h.settings(orgId)).toMatchObject({ failure_count: 1, spent_this_month: "0.00" });
      expect(await h.events(orgId, "purchase.failed")).toHaveLength(1);
    } finally {
      provider.answer = undefined;
      app.clock.set(start);
    }
  });

  it("reconciliation: an attempt whose purchase was settled elsewhere is brought in line", async () => {
    const orgId = await h.orgWithCard(packageId);
    await h.enable(orgId, { threshold: "100", package_id: packageId });
    provider.answer = (input) =>
      input.orgId === orgId ? Promise.resolve({ status: "pending", paymentId: "pi_lost" }) : null;
    try {
      await h.adjust(orgId, "-1150");
      await runDueJobs(ctx);
    } finally {
      provider.answer = undefined;
    }
    const [attempt] = await h.attempts(orgId);
    await fulfilPurchase(ctx, orgId, attempt!.purchase_id!, { providerPaymentId: "pi_lost" });
    app.clock.advance(2 * 60_000);
    await reconcileOpenAttempts(ctx);
    expect((await h.attempts(orgId))[0]).toMatchObject({ status: "succeeded" });
  });

  it("processor faults are retried with the same key; the charge happens once", async () => {
    const orgId = await h.orgWithCard(packageId);
    await h.enable(orgId, { threshold: "100", package_id: packageId });
    let faults = 2;
    provider.answer = (input) =>
      input.orgId === orgId && faults-- > 0
        ? Promise.reject(new PaymentProviderError("processor timeout", true))
        : null;
    try {
      await h.adjust(orgId, "-1150");
      await runDueJobs(ctx);
      expect((await h.attempts(orgId))[0]).toMatchObject({ status: "in_flight" });
      for (let i = 0; i < 3; i++) {
        app.clock.advance(5 * 60_000);
        await runDueJobs(ctx);
      }
    } finally {
      provider.answer = undefined;
    }
    const [attempt] = await h.attempts(orgId);
    expect(attempt).toMatchObject({ status: "succeeded" });
    const calls = provider.calls.filter((c) => c.idempotencyKey === `topup:${attempt!.id}`);
    expect(calls).toHaveLength(3);
    expect(await h.purchases(orgId)).toHaveLength(1);
    expect((await h.balance(orgId)).balance).toBe("1250");
  });

  it("a failure that does not count (a permanent processor error) waits for the next crossing", async () => {
    const orgId = await h.orgWithCard(packageId);
    await h.enable(orgId, { threshold: "100", package_id: packageId, max_failures: 3 });
    provider.answer = (input) =>
      input.orgId === orgId
        ? Promise.reject(new PaymentProviderError("processor refused the request", false))
        : null;
    try {
      await h.adjust(orgId, "-1150"); // 50
      await runDueJobs(ctx);
      expect((await h.attempts(orgId)).map((a) => a.status)).toEqual(["failed"]);
      expect(await h.settings(orgId)).toMatchObject({ enabled: true, failure_count: 0 });
      // Not re-armed: more low writes start nothing (no retry loop on an uncounted failure).
      for (let i = 0; i < 3; i++) {
        await h.adjust(orgId, "-1");
        await runDueJobs(ctx);
      }
      expect(await h.attempts(orgId)).toHaveLength(1);
    } finally {
      provider.answer = undefined;
    }
    // Back above the threshold and down again: a new crossing, a new attempt.
    await h.adjust(orgId, "+100");
    await h.adjust(orgId, "-100");
    await runDueJobs(ctx);
    expect((await h.attempts(orgId)).map((a) => a.status)).toEqual(["succeeded", "failed"]);
  });

  /** What an attempt checks once more before its first charge (refusalBeforeCharge). */
  describe("checks before the first charge", () => {
    /** A saved card, 1000 credits, auto-topup below 100 and an attempt in flight. */
    async function attemptInFlight(monthlyLimit: string | null) {
      const pkg = await h.pkg({ bonus_credits: "0" });
      const orgId = await h.orgWithCard(pkg);
      await h.enable(orgId, {
        threshold: "100",
        package_id: pkg,
        ...(monthlyLimit ? { monthly_limit: monthlyLimit } : {}),
      });
      await h.adjust(orgId, "-950");
      expect((await h.attempts(orgId)).map((a) => a.status)).toEqual(["in_flight"]);
      return { orgId, pkg };
    }
    const reprice = async (pkg: string, price: string) => {
      const res = await app.call("PATCH", `/v1/credit-packages/${pkg}`, { body: { price } });
      expect(res.statusCode, res.body).toBe(200);
    };

    it("a price raised past the monthly limit while the attempt waited: no charge", async () => {
      const { orgId, pkg } = await attemptInFlight("60.00");
      await reprice(pkg, "500.00");
      await runDueJobs(ctx);
      const [attempt] = await h.attempts(orgId);
      expect(attempt).toMatchObject({ status: "failed" });
      expect(attempt!.error).toContain("monthly limit of 60.00 USD would be exceeded");
      expect(await h.settings(orgId)).toMatchObject({ spent_this_month: "0.00", enabled: true });
      expect((await h.balance(orgId)).balance).toBe("50");
    });

    it("a price changed within the limit: charged at the new price", async () => {
      const { orgId, pkg } = await attemptInFlight("60.00");
      await reprice(pkg, "59.00");
      await runDueJobs(ctx);
      expect(await h.attempts(orgId)).toMatchObject([{ status: "succeeded", amount: "59.00" }]);
      expect(await h.settings(orgId)).toMatchObject({ spent_this_month: "59.00" });
    });

    it("a price change waits while an attempt checks and creates its purchase", async () => {
      const { orgId, pkg } = await attemptInFlight("60.00");
      const [attempt] = await ctx.db
        .selectFrom("topup_attempts")
        .selectAll()
        .where("org_id", "=", orgId)
        .execute();
      let reached!: () => void;
      let release!: () => void;
      const atGate = new Promise<void>((r) => (reached = r));
      const gate = new Promise<void>((r) => (release = r));
      // The runner's transaction: checked at 50.00, purchase created at the price it reads.
      const charging = ctx.db.transaction().execute(async (tx) => {
        expect(await refusalBeforeCharge(tx, attempt!)).toBeNull();
        reached();
        await gate;
        return (await findPackageIn(tx, pkg))!.price_minor;
      });
      await atGate;
      let repriced = false;
      const repricing = reprice(pkg, "500.00").then(() => (repriced = true));
      await new Promise((r) => setTimeout(r, 300));
      expect(repriced).toBe(false);
      release();
      expect(await charging).toBe("4900");
      await repricing;
      expect(repriced).toBe(true);
    });

    it("auto-topup turned off while the attempt waited: no charge", async () => {
      const { orgId, pkg } = await attemptInFlight(null);
      const off = await h.put(orgId, { enabled: false, threshold: "100", package_id: pkg });
      expect(off.statusCode, off.body).toBe(200);
      await runDueJobs(ctx);
      expect(await h.attempts(orgId)).toMatchObject([
        { status: "failed", error: "Auto-topup was turned off before the payment was made." },
      ]);
      expect(await h.settings(orgId)).toMatchObject({ spent_this_month: "0.00" });
    });
  });
});
