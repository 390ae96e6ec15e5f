import { describe, expect, it } from "vitest";
import { createTestApp } from "../../../test/support/app.js";
import { runSecurityMatrix } from "../../../test/support/security-matrix.js";
import { BILLING_MATRIX } from "./billing.security.matrix.js";

runSecurityMatrix(BILLING_MATRIX);

describe("purchases: security", async () => {
  const app = await createTestApp();
  const orgA = await app.createOrg({ name: "A" });
  const orgB = await app.createOrg({ name: "B" });
  const starter = await app.createOrg({ name: "Starter", plan: "starter" });
  const pkg = (
    await app.call("POST", "/v1/credit-packages", {
      body: { name: "Growth", credits: "1000", price: "49.00" },
    })
  ).json();
  const body = { package_id: pkg.id };
  const purchasesOf = (org: string) => `/v1/organizations/${org}/purchases`;

  it("a plan without credits billing → 403 plan_not_eligible, for its own keys too", async () => {
    for (const key of [await app.orgKey(starter, "admin"), app.platformKey]) {
      const res = await app.call("POST", purchasesOf(starter), { key, body });
      expect(res.statusCode).toBe(403);
      expect(res.json().error.code).toBe("plan_not_eligible");
    }
  });

  it("lists only the organisation's own purchases", async () => {
    const mine = await app.call("POST", purchasesOf(orgA), { body });
    const theirs = await app.call("POST", purchasesOf(orgB), { body });
    const list = await app.call("GET", purchasesOf(orgB), { key: await app.orgKey(orgB, "read") });
    expect(list.json().data.map((p: { id: string }) => p.id)).toEqual([theirs.json().id]);
    expect(list.body).not.toContain(mine.json().id);
  });

  it("the sandbox checkout of a purchase answers for that purchase only", async () => {
    const mine = (await app.call("POST", purchasesOf(orgA), { body })).json();
    const page = await app.call("GET", `/sandbox/checkout/${mine.id}`, { key: null });
    expect(page.statusCode).toBe(200);
    expect(page.body).not.toContain(orgB);
    expect(
      (await app.call("GET", "/sandbox/checkout/pur_00000000000000000000000000")).statusCode,
    ).toBe(404);
  });
});
