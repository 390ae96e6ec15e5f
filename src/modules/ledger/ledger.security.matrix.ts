import { expect } from "vitest";
import type { TestApp } from "../../../test/support/app.js";
import type { MatrixRoute, SecurityMatrix } from "../../../test/support/security-matrix.js";

const READ = ["admin", "billing", "read"] as const;

async function adjustment(app: TestApp, orgId: string, amount = "+1000"): Promise<string> {
  const res = await app.call("POST", `/v1/organizations/${orgId}/adjustments`, {
    body: { amount, reason: "seed" },
  });
  if (res.statusCode !== 201) throw new Error(res.body);
  return res.json().id;
}

const read = (path: string, roles: MatrixRoute["roles"] = READ): MatrixRoute => ({
  method: "GET",
  path,
  scope: "org",
  roles,
  success: 200,
  credits: true,
});

/** Balance, credit blocks, transactions, verification and adjustments. */
export const LEDGER_MATRIX: SecurityMatrix = {
  module: "ledger",
  tables: ["org_balances", "credit_blocks", "ledger_entries"],
  setup: async ({ app, own, foreign }) => {
    for (const org of [own, foreign]) await adjustment(app, org.id);
  },
  routes: [
    read("/v1/organizations/{org_id}/balance", ["admin", "billing", "ingest", "read"]),
    read("/v1/organizations/{org_id}/credit-blocks"),
    read("/v1/organizations/{org_id}/transactions"),
    {
      ...read("/v1/organizations/{org_id}/transactions.csv"),
      verify: async ({ app, body, contentType, org }) => {
        expect(contentType).toContain("text/csv");
        const ids = body
          .trim()
          .split(/\r?\n/)
          .slice(1)
          .map((row) => row.split(",")[0]);
        const theirs = await app.runtime.ctx.db
          .selectFrom("ledger_entries")
          .select("id")
          .where("org_id", "=", org.id)
          .execute();
        expect(ids.length).toBeGreaterThan(0);
        expect(theirs.map((e) => e.id)).toEqual(expect.arrayContaining(ids));
      },
    },
    {
      ...read("/v1/organizations/{org_id}/transactions/{txn_id}"),
      fixture: async ({ app, owner }) => ({
        params: { txn_id: await adjustment(app, owner.id, "+1") },
      }),
    },
    read("/v1/organizations/{org_id}/ledger/verify"),
    {
      method: "POST",
      path: "/v1/organizations/{org_id}/adjustments",
      scope: "org",
      roles: ["admin"],
      portal: false,
      success: 201,
      credits: true,
      fixture: () => ({ body: { amount: "+1", reason: "security matrix" } }),
      verify: ({ body }) => expect(JSON.parse(body)).toMatchObject({ amount: "1" }),
    },
  ],
};
