import { describe, expect, it } from "vitest";
import { createTestApp } from "../../../test/support/app.js";
import { insertTopupPurchase } from "../../../test/support/purchases.js";
import { escapeHtml } from "./sandbox.page.js";

const FORM = { "content-type": "application/x-www-form-urlencoded" };

describe("sandbox checkout page", async () => {
  const app = await createTestApp();
  const orgId = await app.createOrg();
  const evilName = `<script>alert("x")</script> & 'Co'`;
  const pkg = (
    await app.call("POST", "/v1/credit-packages", {
      body: { name: evilName, credits: "1000", bonus_credits: "200", price: "49.00" },
    })
  ).json();
  const buy = async (body: Record<string, unknown> = {}) =>
    (
      await app.call("POST", `/v1/organizations/${orgId}/purchases`, {
        body: { package_id: pkg.id, ...body },
      })
    ).json();
  const submit = (purchaseId: string, form: Record<string, string>) =>
    app.call("POST", `/sandbox/checkout/${purchaseId}`, {
      key: null,
      rawBody: new URLSearchParams(form).toString(),
      headers: FORM,
    });
  const purchase = async (id: string) =>
    (await app.call("GET", `/v1/organizations/${orgId}/purchases/${id}`)).json();

  it("renders the package, the amount, the five test cards and Pay/Cancel", async () => {
    const p = await buy();
    const res = await app.call("GET", new URL(p.checkout_url).pathname, { key: null });
    expect(res.statusCode).toBe(200);
    expect(res.headers["content-type"]).toMatch(/^text\/html/);
    expect(res.headers["content-security-policy"]).toContain("default-src 'none'");
    expect(res.headers["cache-control"]).toBe("no-store");
    expect(res.body).toContain("1000 + 200 bonus");
    expect(res.body).toContain("49.00 USD");
    for (const card of [
      "success",
      "decline",
      "requires_action",
      "decline_off_session",
      "action_off_session",
    ]) {
      expect(res.body).toContain(`name="card" value="${card}"`);
    }
    expect(res.body).toContain('name="action" value="pay"');
    expect(res.body).toContain('name="action" value="cancel"');
    expect(res.body).toContain(`action="/sandbox/checkout/${p.id}"`);
  });

  it("escapes everything it shows", async () => {
    const p = await buy();
    const res = await app.call("GET", `/sandbox/checkout/${p.id}`, { key: null });
    expect(res.body).not.toContain("<script>");
    expect(res.body).toContain(escapeHtml(evilName));
    expect(escapeHtml(evilName)).toBe(
      "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;Co&#39;",
    );
  });

  it("unknown purchases are 404", async () => {
    expect((await app.call("GET", "/sandbox/checkout/pur_nope", { key: null })).statusCode).toBe(
      404,
    );
    expect((await submit("pur_nope", { action: "cancel" })).statusCode).toBe(404);
  });

  it("a declined checkout can be paid with another card only within its window", async () => {
    const p = await buy();
    expect((await submit(p.id, { action: "pay", card: "decline" })).statusCode).toBe(402);
    app.clock.advance(25 * 3_600_000);
    const page = await app.call("GET", `/sandbox/checkout/${p.id}`, { key: null });
    expect(page.body).toContain("This checkout has expired.");
    expect((await submit(p.id, { action: "pay", card: "success" })).statusCode).toBe(409);
    expect((await purchase(p.id)).status).toBe("failed");
  });

  it("auto-topup purchases have no checkout page (404): they are charged off-session", async () => {
    const id = await insertTopupPurchase(app.runtime.ctx, {
      org_id: orgId,
      package_id: pkg.id,
      provider: "sandbox",
      status: "failed",
      failure_code: "card_declined",
      failure_message: "declined",
      expires_at: new Date(app.clock.now().getTime() + 86_400_000),
    });
    expect((await app.call("GET", `/sandbox/checkout/${id}`, { key: null })).statusCode).toBe(404);
    expect((await submit(id, { action: "pay", card: "success" })).statusCode).toBe(404);
    expect((await purchase(id)).status).toBe("failed");
  });

  it("cancel redirects to cancel_url and leaves the purchase pending", async () => {
    const p = await buy({ cancel_url: "https://app.example.com/cancelled" });
    const res = await submit(p.id, { action: "cancel" });
    expect(res.statusCode).toBe(303);
    expect(res.headers.location).toBe("https://app.example.com/cancelled");
    expect((await purchase(p.id)).status).toBe("pending");
  });

  it("refuses bad forms with 400", async () => {
    const p = await buy();
    const forms: Record<string, string>[] = [
      { action: "pay" },
      { action: "pay", card: "gold" },
      { action: "steal" },
      { card: "success" },
      { action: "pay", card: "success", extra: "1" },
    ];
    for (const form of forms) {
      const res = await submit(p.id, form);
      expect(res.statusCode, JSON.stringify(form)).toBe(400);
      expect(res.json().error.code).toBe("invalid_request");
    }
    expect((await purchase(p.id)).status).toBe("pending");
  });

  it("pay saves the card with its off-session behaviour when asked", async () => {
    const p = await buy({ save_payment_method: true });
    const res = await submit(p.id, { action: "pay", card: "decline_off_session" });
    expect(res.statusCode).toBe(303);
    const paid = await purchase(p.id);
    expect(paid.status).toBe("paid");
    const methods = await app.runtime.ctx.db
      .selectFrom("payment_methods")
      .selectAll()
      .where("org_id", "=", orgId)
      .execute();
    expect(methods).toHaveLength(1);
    expect(methods[0]).toMatchObject({
      provider: "sandbox",
      brand: "visa",
      last4: "0341",
      sandbox_behaviour: "decline_off_session",
      provider_customer_id: `sbx_cus_${orgId}`,
      status: "active",
    });

    // Paid: the page shows the state without a form; submitting again changes nothing.
    const page = await app.call("GET", `/sandbox/checkout/${p.id}`, { key: null });
    expect(page.body).toContain("This purchase is paid.");
    expect(page.body).not.toContain("<form");
    const again = await submit(p.id, { action: "pay", card: "action_off_session" });
    expect(again.statusCode).toBe(303);
    const after = await app.runtime.ctx.db
      .selectFrom("payment_methods")
      .selectAll()
      .where("org_id", "=", orgId)
      .execute();
    expect(after).toHaveLength(1);
  });

  it("does not save the card when not asked", async () => {
    const org = await app.createOrg();
    const p = (
      await app.call("POST", `/v1/organizations/${org}/purchases`, {
        body: { package_id: pkg.id, save_payment_method: false },
      })
    ).json();
    expect((await submit(p.id, { action: "pay", card: "success" })).statusCode).toBe(303);
    const methods = await app.runtime.ctx.db
      .selectFrom("payment_methods")
      .selectAll()
      .where("org_id", "=", org)
      .execute();
    expect(methods).toHaveLength(0);
  });

  it("form bodies stay refused on the JSON API", async () => {
    const res = await app.call("POST", `/v1/organizations/${orgId}/purchases`, {
      rawBody: `package_id=${pkg.id}`,
      headers: FORM,
    });
    expect(res.statusCode).toBe(415);
  });
});
