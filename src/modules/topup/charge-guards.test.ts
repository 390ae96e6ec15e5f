import { describe, expect, it } from "vitest";
import { createTestApp } from "../../../test/support/app.js";
import { runDueJobs } from "../notify/notify.service.js";

const FORM = { "content-type": "application/x-www-form-urlencoded" };

/** What an attempt checks once more before its first charge (refusalBeforeCharge). */
describe("auto-topup: checks before the first charge", async () => {
  const app = await createTestApp();
  const ctx = app.runtime.ctx;

  const pkg = async () => {
    const res = await app.call("POST", "/v1/credit-packages", {
      body: { name: "Auto", credits: "1000", bonus_credits: "0", price: "49.00" },
    });
    expect(res.statusCode, res.body).toBe(201);
    return res.json().id as string;
  };
  /** An organisation with a saved card, 1000 credits, auto-topup below 100, an attempt in flight. */
  async function attemptInFlight(monthlyLimit: string | null) {
    const packageId = await pkg();
    const orgId = await app.createOrg();
    const p = await app.call("POST", `/v1/organizations/${orgId}/purchases`, {
      body: { package_id: packageId, save_payment_method: true },
    });
    expect(p.statusCode, p.body).toBe(201);
    const paid = await app.call("POST", `/sandbox/checkout/${p.json().id}`, {
      key: null,
      rawBody: new URLSearchParams({ action: "pay", card: "success" }).toString(),
      headers: FORM,
    });
    expect(paid.statusCode, paid.body).toBe(303);
    const put = await app.call("PUT", `/v1/organizations/${orgId}/auto-topup`, {
      body: {
        enabled: true,
        threshold: "100",
        package_id: packageId,
        ...(monthlyLimit ? { monthly_limit: monthlyLimit } : {}),
      },
    });
    expect(put.statusCode, put.body).toBe(200);
    const adjust = await app.call("POST", `/v1/organizations/${orgId}/adjustments`, {
      body: { amount: "-950", reason: "test" },
    });
    expect(adjust.statusCode, adjust.body).toBe(201);
    expect((await attempts(orgId)).map((a) => a.status)).toEqual(["in_flight"]);
    return { orgId, packageId };
  }
  const attempts = async (orgId: string) =>
    (await app.call("GET", `/v1/organizations/${orgId}/auto-topup/attempts`)).json().data as {
      status: string;
      amount: string;
      error: string | null;
    }[];
  const settings = async (orgId: string) =>
    (await app.call("GET", `/v1/organizations/${orgId}/auto-topup`)).json();
  const reprice = async (packageId: string, price: string) => {
    const res = await app.call("PATCH", `/v1/credit-packages/${packageId}`, { body: { price } });
    expect(res.statusCode, res.body).toBe(200);
  };

  it("a price raised past the monthly limit while the attempt waited: no charge", async () => {
    const { orgId, packageId } = await attemptInFlight("60.00");
    await reprice(packageId, "500.00");
    await runDueJobs(ctx);
    const [attempt] = await attempts(orgId);
    expect(attempt).toMatchObject({ status: "failed" });
    expect(attempt!.error).toContain("monthly limit of 60.00 USD would be exceeded");
    expect(await settings(orgId)).toMatchObject({ spent_this_month: "0.00", enabled: true });
    const balance = (await app.call("GET", `/v1/organizations/${orgId}/balance`)).json();
    expect(balance.balance).toBe("50");
  });

  it("a price changed within the limit: charged at the new price", async () => {
    const { orgId, packageId } = await attemptInFlight("60.00");
    await reprice(packageId, "59.00");
    await runDueJobs(ctx);
    expect(await attempts(orgId)).toMatchObject([{ status: "succeeded", amount: "59.00" }]);
    expect(await settings(orgId)).toMatchObject({ spent_this_month: "59.00" });
  });

  it("auto-topup turned off while the attempt waited: no charge", async () => {
    const { orgId } = await attemptInFlight(null);
    const { threshold, package_id } = await settings(orgId);
    const off = await app.call("PUT", `/v1/organizations/${orgId}/auto-topup`, {
      body: { enabled: false, threshold, package_id },
    });
    expect(off.statusCode, off.body).toBe(200);
    await runDueJobs(ctx);
    const [attempt] = await attempts(orgId);
    expect(attempt).toMatchObject({
      status: "failed",
      error: "Auto-topup was turned off before the payment was made.",
    });
    expect(await settings(orgId)).toMatchObject({ spent_this_month: "0.00" });
  });
});
