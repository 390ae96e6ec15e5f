import type { TestApp } from "../../../test/support/app.js";
import type { MatrixRoute, SecurityMatrix } from "../../../test/support/security-matrix.js";

/** A public address literal: no DNS needed, and nothing is delivered (no workers run). */
export const PUBLIC_WEBHOOK_URL = "http://93.184.215.14/hooks";

async function endpoint(app: TestApp, orgId: string): Promise<string> {
  // The matrix makes one per case for the same owner: keep under the per-organisation limit.
  await app.runtime.ctx.db.deleteFrom("webhook_endpoints").where("org_id", "=", orgId).execute();
  const res = await app.call("POST", "/v1/webhook-endpoints", {
    body: { url: PUBLIC_WEBHOOK_URL, org_id: orgId },
  });
  if (res.statusCode !== 201) throw new Error(res.body);
  return res.json().id;
}

/** Routes below /v1/webhook-endpoints/{id}: the endpoint's organisation decides. */
const ofEndpoint = (method: MatrixRoute["method"], path: string, success: number): MatrixRoute => ({
  method,
  path,
  scope: "resource",
  roles: ["admin"],
  portal: false,
  success,
  fixture: async ({ app, owner }) => ({ params: { id: await endpoint(app, owner.id) } }),
});

/** Webhook endpoints (no `{org_id}` in their paths: scoped by the key's organisation). */
export const NOTIFY_MATRIX: SecurityMatrix = {
  module: "notify",
  tables: ["webhook_endpoints", "webhook_deliveries", "jobs", "events"],
  routes: [
    {
      method: "POST",
      path: "/v1/webhook-endpoints",
      scope: "resource",
      targets: ["own", "own ext", "foreign", "foreign ext"],
      roles: ["admin"],
      portal: false,
      success: 201,
      fixture: ({ org }) => ({ body: { url: PUBLIC_WEBHOOK_URL, org_id: org.ref } }),
    },
    {
      method: "GET",
      path: "/v1/webhook-endpoints",
      scope: "resource",
      targets: ["own", "own ext", "foreign", "foreign ext"],
      roles: ["admin"],
      portal: false,
      success: 200,
      fixture: async ({ app, org, owner }) => {
        await endpoint(app, owner.id);
        return { query: `org_id=${encodeURIComponent(org.ref)}` };
      },
    },
    ofEndpoint("GET", "/v1/webhook-endpoints/{id}", 200),
    ofEndpoint("DELETE", "/v1/webhook-endpoints/{id}", 204),
    ofEndpoint("POST", "/v1/webhook-endpoints/{id}/enable", 200),
    ofEndpoint("GET", "/v1/webhook-endpoints/{id}/deliveries", 200),
  ],
};
