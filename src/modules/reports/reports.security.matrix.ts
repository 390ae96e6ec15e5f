import { expect } from "vitest";
import type { MatrixRoute, SecurityMatrix } from "../../../test/support/security-matrix.js";

const orgReport = (path: string, query?: string): MatrixRoute => ({
  method: "GET",
  path,
  scope: "org",
  roles: ["admin", "billing", "read"],
  success: 200,
  credits: true,
  fixture: () => (query ? { query } : {}),
});

/** The organisations of a CSV report's rows (the `org_id` column). */
function csvOrgs(body: string): Set<string> {
  const [header = "", ...lines] = body.split("\r\n").slice(0, -1);
  const column = header.split(",").indexOf("org_id");
  expect(column).toBeGreaterThanOrEqual(0);
  expect(lines.length).toBeGreaterThan(0);
  return new Set(lines.map((l) => l.split(",")[column] ?? ""));
}

/** Usage and ledger reports, per organisation and (platform) across organisations. */
export const REPORTS_MATRIX: SecurityMatrix = {
  module: "reports",
  tables: [],
  setup: async ({ app, own, foreign }) => {
    for (const org of [own, foreign]) {
      const res = await app.call("POST", "/v1/usage-events", {
        body: {
          id: `sec-${org.external}`,
          org_id: org.id,
          type: "ai_tokens",
          model: "gpt-4o",
          tokens: { input: 1000 },
        },
      });
      expect(res.statusCode, res.body).toBe(200);
    }
  },
  routes: [
    orgReport("/v1/organizations/{org_id}/usage-summaries", "year=2026&month=11"),
    {
      ...orgReport("/v1/organizations/{org_id}/usage-summaries.csv", "year=2026&month=11"),
      verify: ({ body, org }) => expect(csvOrgs(body)).toEqual(new Set([org.id])),
    },
    orgReport("/v1/organizations/{org_id}/usage-daily"),
    orgReport("/v1/organizations/{org_id}/ledger-summaries", "year=2026"),
    { method: "GET", path: "/v1/usage-summaries", scope: "global", roles: [], success: 200 },
    {
      method: "GET",
      path: "/v1/usage-summaries.csv",
      scope: "global",
      roles: [],
      success: 200,
      fixture: () => ({ query: "year=2026" }),
      verify: ({ body, world }) => {
        const orgs = csvOrgs(body);
        expect(orgs.has(world.own.id) && orgs.has(world.foreign.id)).toBe(true);
      },
    },
  ],
};
