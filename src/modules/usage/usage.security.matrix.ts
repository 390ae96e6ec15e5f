import type { TestApp } from "../../../test/support/app.js";
import type { SecurityMatrix } from "../../../test/support/security-matrix.js";

const INGEST = ["admin", "ingest"] as const;
const READ_BALANCE = ["admin", "billing", "ingest", "read"] as const;

const event = (n: number, orgRef?: string) => ({
  id: `matrix-${n}`,
  ...(orgRef ? { org_id: orgRef } : {}),
  type: "ai_tokens",
  model: "gpt-4o",
  tokens: { input: 1000, output: 10 },
});

async function reservation(app: TestApp, orgId: string): Promise<string> {
  const res = await app.call("POST", `/v1/organizations/${orgId}/reservations`, {
    body: { amount: "1" },
  });
  if (res.statusCode !== 201) throw new Error(res.body);
  return res.json().id;
}

/** Usage events and reservations. */
export const USAGE_MATRIX: SecurityMatrix = {
  module: "usage",
  tables: [
    "usage_events",
    "reservations",
    "storage_gauges",
    "usage_rollups",
    "usage_daily",
    "org_balances",
    "credit_blocks",
    "ledger_entries",
  ],
  setup: async ({ app, own, foreign }) => {
    for (const org of [own, foreign]) {
      const res = await app.call("POST", `/v1/organizations/${org.id}/adjustments`, {
        body: { amount: "+1000000", reason: "matrix" },
      });
      if (res.statusCode !== 201) throw new Error(res.body);
    }
  },
  routes: [
    {
      method: "POST",
      path: "/v1/usage-events",
      // The organisation is named by each event's `org_id`.
      scope: "resource",
      targets: ["own", "own ext", "foreign", "foreign ext"],
      roles: INGEST,
      portal: false,
      success: 200,
      fixture: ({ org, n }) => ({ body: { events: [event(n, org.ref)] } }),
    },
    {
      method: "GET",
      path: "/v1/organizations/{org_id}/usage-events",
      scope: "org",
      roles: ["admin", "billing", "read"],
      success: 200,
      credits: true,
      fixture: async ({ app, owner, n }) => {
        await app.call("POST", "/v1/usage-events", { body: event(n, owner.id) });
        return {};
      },
    },
    {
      method: "POST",
      path: "/v1/organizations/{org_id}/reservations",
      scope: "org",
      roles: INGEST,
      portal: false,
      success: 201,
      credits: true,
      fixture: () => ({ body: { amount: "1", description: "matrix" } }),
    },
    {
      method: "GET",
      path: "/v1/organizations/{org_id}/reservations",
      scope: "org",
      roles: READ_BALANCE,
      success: 200,
      credits: true,
      fixture: async ({ app, owner }) => {
        await app.call("POST", `/v1/organizations/${owner.id}/reservations`, {
          body: { amount: "1" },
        });
        return {};
      },
    },
    {
      method: "GET",
      path: "/v1/organizations/{org_id}/reservations/{reservation_id}",
      scope: "org",
      roles: READ_BALANCE,
      success: 200,
      credits: true,
      fixture: async ({ app, owner }) => ({
        params: { reservation_id: await reservation(app, owner.id) },
      }),
    },
    {
      method: "POST",
      path: "/v1/organizations/{org_id}/reservations/{reservation_id}/settle",
      scope: "org",
      roles: INGEST,
      portal: false,
      success: 200,
      credits: true,
      fixture: async ({ app, owner, n }) => ({
        params: { reservation_id: await reservation(app, owner.id) },
        body: { events: [event(n)] },
      }),
    },
    {
      method: "POST",
      path: "/v1/organizations/{org_id}/reservations/{reservation_id}/release",
      scope: "org",
      roles: INGEST,
      portal: false,
      success: 200,
      credits: true,
      fixture: async ({ app, owner }) => ({
        params: { reservation_id: await reservation(app, owner.id) },
      }),
    },
  ],
};
