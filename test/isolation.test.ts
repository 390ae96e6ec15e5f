import { readFile } from "node:fs/promises";
import { describe, expect, it } from "vitest";
import { ALERTS_MATRIX } from "../src/modules/alerts/alerts.security.matrix.js";
import { BILLING_MATRIX } from "../src/modules/billing/billing.security.matrix.js";
import { LEDGER_MATRIX } from "../src/modules/ledger/ledger.security.matrix.js";
import { NOTIFY_MATRIX } from "../src/modules/notify/notify.security.matrix.js";
import { ORGS_MATRIX } from "../src/modules/orgs/orgs.security.matrix.js";
import { PRICING_MATRIX } from "../src/modules/pricing/pricing.security.matrix.js";
import { REPORTS_MATRIX } from "../src/modules/reports/reports.security.matrix.js";
import { TOPUP_MATRIX } from "../src/modules/topup/topup.security.matrix.js";
import { USAGE_MATRIX } from "../src/modules/usage/usage.security.matrix.js";
import { createTestApp } from "./support/app.js";
import { operationOf, type SecurityMatrix } from "./support/security-matrix.js";

/**
 * Tenant isolation is only as good as its coverage: every `/v1` operation of the API must be a
 * row of exactly one module's security matrix (`src/modules/<m>/<m>.security.matrix.ts`, run by
 * `<m>.security.test.ts`). A new route cannot ship without its row.
 */
const MATRICES: SecurityMatrix[] = [
  ALERTS_MATRIX,
  BILLING_MATRIX,
  LEDGER_MATRIX,
  NOTIFY_MATRIX,
  ORGS_MATRIX,
  PRICING_MATRIX,
  REPORTS_MATRIX,
  TOPUP_MATRIX,
  USAGE_MATRIX,
];

describe("tenant isolation coverage", async () => {
  const app = await createTestApp();
  const doc = (await app.call("GET", "/openapi.json", { key: null })).json();
  const documented: string[] = [];
  for (const [path, operations] of Object.entries<Record<string, unknown>>(doc.paths)) {
    for (const method of Object.keys(operations)) {
      if (path.startsWith("/v1/")) documented.push(`${method.toUpperCase()} ${path}`);
    }
  }

  const owners = new Map<string, string[]>();
  for (const matrix of MATRICES) {
    for (const route of matrix.routes) {
      const op = operationOf(route);
      owners.set(op, [...(owners.get(op) ?? []), matrix.module]);
    }
  }

  it("reads the operations from the OpenAPI document", () => {
    expect(documented.length).toBeGreaterThan(50);
    expect(documented).toContain("GET /v1/organizations/{org_id}/balance");
  });

  it("every /v1 operation is a row of exactly one module's matrix", () => {
    const missing = documented.filter((op) => !owners.has(op));
    const twice = [...owners].filter(([, modules]) => modules.length > 1).map(([op]) => op);
    expect(missing, "operations without a security-matrix row").toEqual([]);
    expect(twice, "operations in more than one row").toEqual([]);
  });

  it("every row is a documented operation (no stale rows)", () => {
    const stale = [...owners.keys()].filter((op) => !documented.includes(op));
    expect(stale).toEqual([]);
  });

  it("every module runs its matrix in <module>.security.test.ts", async () => {
    for (const matrix of MATRICES) {
      const file = `src/modules/${matrix.module}/${matrix.module}.security.test.ts`;
      const source = await readFile(new URL(`../${file}`, import.meta.url), "utf8");
      expect(source, file).toContain(`runSecurityMatrix(${matrix.module.toUpperCase()}_MATRIX)`);
    }
  });
});
