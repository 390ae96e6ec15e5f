import type { TestApp } from "../../../test/support/app.js";
import type { SecurityMatrix } from "../../../test/support/security-matrix.js";

const ANY = ["admin", "billing", "ingest", "read"] as const;
const READ = ["admin", "billing", "read"] as const;
const BILLING = ["admin", "billing"] as const;

async function creditPackage(app: TestApp, n: number): Promise<string> {
  const res = await app.call("POST", "/v1/credit-packages", {
    body: { name: `Matrix ${n}`, credits: "1000", bonus_credits: "100", price: "10.00" },
  });
  if (res.statusCode !== 201) throw new Error(res.body);
  return res.json().id;
}

async function purchase(app: TestApp, orgId: string, n: number, paid = false): Promise<string> {
  const res = await app.call("POST", `/v1/organizations/${orgId}/purchases`, {
    body: { package_id: await creditPackage(app, n) },
  });
  if (res.statusCode !== 201) throw new Error(res.body);
  const id: string = res.json().id;
  if (paid) {
    const pay = await app.runtime.app.inject({
      method: "POST",
      url: `/sandbox/checkout/${id}`,
      headers: { "content-type": "application/x-www-form-urlencoded" },
      payload: "action=pay&card=success",
    });
    if (pay.statusCode !== 303) throw new Error(pay.body);
  }
  return id;
}

/** Credit packages, purchases, refunds and the payment processor's webhook. */
export const BILLING_MATRIX: SecurityMatrix = {
  module: "billing",
  tables: [
    "credit_packages",
    "purchases",
    "payment_methods",
    "refunds",
    "inbound_webhook_events",
    "org_balances",
    "credit_blocks",
    "ledger_entries",
    "jobs",
  ],
  routes: [
    {
      method: "POST",
      path: "/v1/credit-packages",
      scope: "global",
      roles: [],
      success: 201,
      fixture: ({ n }) => ({ body: { name: `New ${n}`, credits: "10", price: "1.00" } }),
    },
    { method: "GET", path: "/v1/credit-packages", scope: "global", roles: ANY, success: 200 },
    {
      method: "GET",
      path: "/v1/credit-packages/{id}",
      scope: "global",
      roles: ANY,
      success: 200,
      fixture: async ({ app, n }) => ({ params: { id: await creditPackage(app, n) } }),
    },
    {
      method: "PATCH",
      path: "/v1/credit-packages/{id}",
      scope: "global",
      roles: [],
      success: 200,
      fixture: async ({ app, n }) => ({
        params: { id: await creditPackage(app, n) },
        body: { name: `Renamed ${n}` },
      }),
    },
    {
      method: "POST",
      path: "/v1/organizations/{org_id}/purchases",
      scope: "org",
      roles: BILLING,
      success: 201,
      credits: true,
      fixture: async ({ app, n }) => ({ body: { package_id: await creditPackage(app, n) } }),
    },
    {
      method: "GET",
      path: "/v1/organizations/{org_id}/purchases",
      scope: "org",
      roles: READ,
      success: 200,
      credits: true,
      fixture: async ({ app, owner, n }) => {
        // (An organisation without credits billing cannot buy: nothing to list there.)
        await purchase(app, owner.id, n).catch(() => undefined);
        return {};
      },
    },
    {
      method: "GET",
      path: "/v1/organizations/{org_id}/purchases/{id}",
      scope: "org",
      roles: READ,
      success: 200,
      credits: true,
      fixture: async ({ app, owner, n }) => ({ params: { id: await purchase(app, owner.id, n) } }),
    },
    {
      method: "POST",
      path: "/v1/organizations/{org_id}/purchases/{id}/refund",
      scope: "org",
      roles: BILLING,
      portal: false,
      success: 200,
      credits: true,
      fixture: async ({ app, owner, n }) => ({
        params: { id: await purchase(app, owner.id, n, true) },
        body: { reason: "matrix" },
      }),
    },
    {
      // Public: the payment processor signs its calls; API keys play no part. With the sandbox
      // processor the route is not served (signatures: stripe.webhooks.test.ts).
      method: "POST",
      path: "/v1/webhooks/stripe",
      scope: "public",
      roles: [],
      success: 404,
      fixture: () => ({ body: { id: "evt_matrix", type: "checkout.session.completed" } }),
    },
  ],
};
