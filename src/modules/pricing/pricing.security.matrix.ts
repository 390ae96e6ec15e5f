import type { SecurityMatrix } from "../../../test/support/security-matrix.js";

const ANY = ["admin", "billing", "ingest", "read"] as const;

/** The price catalogue: readable with any key, replaced by platform keys only. */
export const PRICING_MATRIX: SecurityMatrix = {
  module: "pricing",
  tables: ["price_versions", "model_prices", "meter_prices"],
  routes: [
    { method: "GET", path: "/v1/prices", scope: "global", roles: ANY, success: 200 },
    {
      method: "PUT",
      path: "/v1/prices",
      scope: "global",
      roles: [],
      success: 200,
      fixture: () => ({
        body: {
          models: [{ model: "gpt-4o", provider: "openai", input: "1", output: "2" }],
          meters: [],
        },
      }),
    },
    { method: "GET", path: "/v1/prices/versions", scope: "global", roles: ANY, success: 200 },
    {
      method: "GET",
      path: "/v1/prices/versions/{version}",
      scope: "global",
      roles: ANY,
      success: 200,
      fixture: () => ({ params: { version: "1" } }),
    },
  ],
};
