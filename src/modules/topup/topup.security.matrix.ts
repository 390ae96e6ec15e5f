import type { SecurityMatrix } from "../../../test/support/security-matrix.js";

const READ = ["admin", "billing", "read"] as const;

/** Auto-topup settings and attempts. */
export const TOPUP_MATRIX: SecurityMatrix = {
  module: "topup",
  tables: ["topup_settings", "topup_attempts", "purchases", "jobs"],
  routes: [
    {
      method: "GET",
      path: "/v1/organizations/{org_id}/auto-topup",
      scope: "org",
      roles: READ,
      success: 200,
      credits: true,
    },
    {
      method: "PUT",
      path: "/v1/organizations/{org_id}/auto-topup",
      scope: "org",
      roles: ["admin", "billing"],
      success: 200,
      credits: true,
      fixture: ({ n }) => ({ body: { enabled: false, threshold: String(n) } }),
    },
    {
      method: "GET",
      path: "/v1/organizations/{org_id}/auto-topup/attempts",
      scope: "org",
      roles: READ,
      success: 200,
      credits: true,
    },
  ],
};
