import type { SecurityMatrix } from "../../../test/support/security-matrix.js";

/** Low-balance alert settings. */
export const ALERTS_MATRIX: SecurityMatrix = {
  module: "alerts",
  tables: ["alert_settings", "alert_thresholds", "jobs", "events"],
  routes: [
    {
      method: "GET",
      path: "/v1/organizations/{org_id}/alerts",
      scope: "org",
      roles: ["admin", "billing", "read"],
      success: 200,
      credits: true,
    },
    {
      method: "PUT",
      path: "/v1/organizations/{org_id}/alerts",
      scope: "org",
      roles: ["admin", "billing"],
      success: 200,
      credits: true,
      fixture: ({ n }) => ({ body: { thresholds: [String(n)], emails: ["ops@example.com"] } }),
    },
  ],
};
