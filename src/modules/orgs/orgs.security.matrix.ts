import type { TestApp } from "../../../test/support/app.js";
import type { SecurityMatrix } from "../../../test/support/security-matrix.js";

async function user(app: TestApp, orgId: string, n: number): Promise<string> {
  const id = `u-${n}`;
  const res = await app.call("POST", `/v1/organizations/${orgId}/users`, {
    body: { id, email: `${id}@example.com`, role: "viewer" },
  });
  if (res.statusCode !== 201) throw new Error(res.body);
  return id;
}

async function apiKey(app: TestApp, orgId: string): Promise<string> {
  const res = await app.call("POST", `/v1/organizations/${orgId}/api-keys`, {
    body: { name: "victim", role: "read" },
  });
  if (res.statusCode !== 201) throw new Error(res.body);
  return res.json().id;
}

/** Organisations, users, API keys, platform keys and portal links. */
export const ORGS_MATRIX: SecurityMatrix = {
  module: "orgs",
  tables: [
    "organizations",
    "users",
    "api_keys(id, org_id, name, role, key_hash, revoked_at)",
    "portal_sessions",
  ],
  routes: [
    {
      method: "POST",
      path: "/v1/organizations",
      scope: "global",
      roles: [],
      success: 201,
      fixture: ({ n }) => ({ body: { name: `Matrix ${n}` } }),
    },
    { method: "GET", path: "/v1/organizations", scope: "global", roles: [], success: 200 },
    {
      method: "GET",
      path: "/v1/organizations/{org_id}",
      scope: "org",
      roles: ["admin", "billing", "read"],
      success: 200,
    },
    {
      method: "PATCH",
      path: "/v1/organizations/{org_id}",
      scope: "org",
      roles: ["admin"],
      portal: false,
      success: 200,
      fixture: ({ n }) => ({ body: { name: `Renamed ${n}` } }),
    },
    {
      method: "POST",
      path: "/v1/organizations/{org_id}/users",
      scope: "org",
      roles: ["admin"],
      portal: false,
      success: 201,
      fixture: ({ n }) => ({
        body: { id: `new-${n}`, email: `new-${n}@example.com`, role: "viewer" },
      }),
    },
    {
      method: "GET",
      path: "/v1/organizations/{org_id}/users",
      scope: "org",
      roles: ["admin", "billing", "read"],
      success: 200,
    },
    {
      method: "GET",
      path: "/v1/organizations/{org_id}/users/{user_id}",
      scope: "org",
      roles: ["admin", "billing", "read"],
      success: 200,
      fixture: async ({ app, owner, n }) => ({ params: { user_id: await user(app, owner.id, n) } }),
    },
    {
      method: "PATCH",
      path: "/v1/organizations/{org_id}/users/{user_id}",
      scope: "org",
      roles: ["admin"],
      portal: false,
      success: 200,
      fixture: async ({ app, owner, n }) => ({
        params: { user_id: await user(app, owner.id, n) },
        body: { name: "Patched" },
      }),
    },
    {
      method: "DELETE",
      path: "/v1/organizations/{org_id}/users/{user_id}",
      scope: "org",
      roles: ["admin"],
      portal: false,
      success: 204,
      fixture: async ({ app, owner, n }) => ({ params: { user_id: await user(app, owner.id, n) } }),
    },
    {
      method: "POST",
      path: "/v1/organizations/{org_id}/api-keys",
      scope: "org",
      roles: ["admin"],
      portal: false,
      success: 201,
      fixture: () => ({ body: { name: "matrix", role: "read" } }),
    },
    {
      method: "GET",
      path: "/v1/organizations/{org_id}/api-keys",
      scope: "org",
      roles: ["admin", "billing", "read"],
      success: 200,
    },
    {
      method: "DELETE",
      path: "/v1/organizations/{org_id}/api-keys/{key_id}",
      scope: "org",
      roles: ["admin"],
      portal: false,
      success: 204,
      fixture: async ({ app, owner }) => ({ params: { key_id: await apiKey(app, owner.id) } }),
    },
    {
      method: "POST",
      path: "/v1/platform-keys",
      scope: "global",
      roles: [],
      success: 201,
      fixture: () => ({ body: { name: "matrix" } }),
    },
    {
      method: "POST",
      path: "/v1/organizations/{org_id}/portal-sessions",
      scope: "org",
      roles: ["admin"],
      portal: false,
      success: 201,
      fixture: async ({ app, owner, n }) => ({ body: { user_id: await user(app, owner.id, n) } }),
    },
  ],
};
