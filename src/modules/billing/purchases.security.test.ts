import { describe, expect, it } from "vitest";
import { createTestApp } from "../../../test/support/app.js";

describe("purchases: security matrix", async () => {
  const app = await createTestApp();
  const orgA = await app.createOrg({ name: "A" });
  const orgB = await app.createOrg({ name: "B" });
  const starter = await app.createOrg({ name: "Starter", plan: "starter" });
  const keys = {
    admin: await app.orgKey(orgA, "admin"),
    billing: await app.orgKey(orgA, "billing"),
    read: await app.orgKey(orgA, "read"),
    ingest: await app.orgKey(orgA, "ingest"),
    otherBilling: await app.orgKey(orgB, "billing"),
    starterAdmin: await app.orgKey(starter, "admin"),
  };
  const pkg = (
    await app.call("POST", "/v1/credit-packages", {
      body: { name: "Growth", credits: "1000", price: "49.00" },
    })
  ).json();
  const body = { package_id: pkg.id };
  const purchasesOf = (org: string) => `/v1/organizations/${org}/purchases`;

  const mine = await app.call("POST", purchasesOf(orgA), { key: keys.billing, body });
  const theirs = await app.call("POST", purchasesOf(orgB), { key: keys.otherBilling, body });

  it("billing, admin and platform keys can buy", async () => {
    expect(mine.statusCode).toBe(201);
    expect(theirs.statusCode).toBe(201);
    for (const key of [keys.admin, app.platformKey]) {
      expect((await app.call("POST", purchasesOf(orgA), { key, body })).statusCode).toBe(201);
    }
  });

  it("read and ingest keys cannot buy (403)", async () => {
    for (const key of [keys.read, keys.ingest]) {
      const res = await app.call("POST", purchasesOf(orgA), { key, body });
      expect(res.statusCode).toBe(403);
      expect(res.json().error.code).toBe("forbidden");
    }
  });

  it("read keys can read; ingest keys cannot", async () => {
    const id = mine.json().id;
    expect((await app.call("GET", purchasesOf(orgA), { key: keys.read })).statusCode).toBe(200);
    expect(
      (await app.call("GET", `${purchasesOf(orgA)}/${id}`, { key: keys.read })).statusCode,
    ).toBe(200);
    expect((await app.call("GET", purchasesOf(orgA), { key: keys.ingest })).statusCode).toBe(403);
  });

  it("another organisation's key gets 404, not 403", async () => {
    const id = mine.json().id;
    for (const [method, url] of [
      ["POST", purchasesOf(orgA)],
      ["GET", purchasesOf(orgA)],
      ["GET", `${purchasesOf(orgA)}/${id}`],
    ] as const) {
      const res = await app.call(method, url, { key: keys.otherBilling, body });
      expect(res.statusCode, `${method} ${url}`).toBe(404);
      expect(res.json().error.code).toBe("not_found");
    }
  });

  it("a purchase id of another organisation is not found under one's own", async () => {
    const res = await app.call("GET", `${purchasesOf(orgB)}/${mine.json().id}`, {
      key: keys.otherBilling,
    });
    expect(res.statusCode).toBe(404);
    // Not even a platform key finds it under the wrong organisation.
    const platform = await app.call("GET", `${purchasesOf(orgB)}/${mine.json().id}`);
    expect(platform.statusCode).toBe(404);
    const list = await app.call("GET", purchasesOf(orgB), { key: keys.otherBilling });
    expect(list.json().data.map((p: { id: string }) => p.id)).toEqual([theirs.json().id]);
  });

  it("no key → 401", async () => {
    expect((await app.call("POST", purchasesOf(orgA), { key: null, body })).statusCode).toBe(401);
    expect((await app.call("GET", purchasesOf(orgA), { key: null })).statusCode).toBe(401);
  });

  it("a plan without credits billing → 403 plan_not_eligible", async () => {
    for (const key of [keys.starterAdmin, app.platformKey]) {
      const res = await app.call("POST", purchasesOf(starter), { key, body });
      expect(res.statusCode).toBe(403);
      expect(res.json().error.code).toBe("plan_not_eligible");
    }
  });

  it("accepts ext:<external_id> for the organisation", async () => {
    const ext = await app.createOrg({ name: "Ext", external_id: "cust-42" });
    const res = await app.call("POST", "/v1/organizations/ext:cust-42/purchases", { body });
    expect(res.statusCode).toBe(201);
    expect(res.json().org_id).toBe(ext);
  });
});
