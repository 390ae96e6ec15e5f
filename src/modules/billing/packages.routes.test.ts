import { describe, expect, it } from "vitest";
import { createTestApp } from "../../../test/support/app.js";

describe("credit packages", async () => {
  const app = await createTestApp();
  const orgId = await app.createOrg();
  const readKey = await app.orgKey(orgId, "read");
  const ingestKey = await app.orgKey(orgId, "ingest");
  const adminKey = await app.orgKey(orgId, "admin");

  const create = (body: Record<string, unknown>, key?: string) =>
    app.call("POST", "/v1/credit-packages", { body, key });

  const starter = await create({ name: "Starter", credits: "500", price: "25.00" });
  const growth = await create({
    name: "Growth",
    credits: "1000",
    bonus_credits: "200",
    price: "49.00",
    bonus_expires_in_days: 90,
    description: "Most popular",
  });
  const scale = await create({
    name: "Scale",
    credits: "3000",
    bonus_credits: "1000",
    price: "120",
  });

  it("creates packages with computed figures", () => {
    expect(starter.statusCode).toBe(201);
    expect(growth.statusCode).toBe(201);
    expect(growth.json()).toMatchObject({
      id: expect.stringMatching(/^pkg_/),
      name: "Growth",
      description: "Most popular",
      credits: "1000",
      bonus_credits: "200",
      total_credits: "1200",
      price: "49.00",
      currency: "USD",
      effective_price_per_credit: "0.040833",
      bonus_percent: "20.00",
      savings_percent: "18.33",
      bonus_expires_in_days: 90,
      active: true,
    });
    expect(scale.json()).toMatchObject({ price: "120.00", savings_percent: "40.00" });
  });

  it("lists packages; savings are against the priciest active package of the currency", async () => {
    const res = await app.call("GET", "/v1/credit-packages", { key: readKey });
    expect(res.statusCode).toBe(200);
    const byName = Object.fromEntries(res.json().data.map((p: { name: string }) => [p.name, p]));
    expect(byName.Starter).toMatchObject({ savings_percent: "0.00", bonus_percent: "0.00" });
    expect(byName.Growth).toMatchObject({ savings_percent: "18.33" });
    expect(byName.Scale).toMatchObject({ savings_percent: "40.00", total_credits: "4000" });
  });

  it("pages with a cursor", async () => {
    const first = await app.call("GET", "/v1/credit-packages?limit=2");
    expect(first.json().data).toHaveLength(2);
    expect(first.json().has_more).toBe(true);
    const second = await app.call(
      "GET",
      `/v1/credit-packages?limit=2&cursor=${first.json().next_cursor}`,
    );
    expect(second.json().data.map((p: { name: string }) => p.name)).toEqual(["Scale"]);
    expect(second.json().has_more).toBe(false);
  });

  it("validates the price against the currency's exponent", async () => {
    const usd = await create({ name: "Bad", credits: "10", price: "49.001" });
    expect(usd.statusCode).toBe(400);
    expect(usd.json().error.code).toBe("invalid_request");
    expect(usd.json().error.details[0].field).toBe("/price");

    const jpy = await create({ name: "Bad", credits: "10", price: "1200.5", currency: "JPY" });
    expect(jpy.statusCode).toBe(400);
    expect(jpy.json().error.details[0].field).toBe("/price");

    const yen = await create({ name: "Yen", credits: "1000", price: "1200", currency: "JPY" });
    expect(yen.statusCode).toBe(201);
    expect(yen.json()).toMatchObject({
      price: "1200",
      currency: "JPY",
      effective_price_per_credit: "1.200000",
      savings_percent: "0.00",
    });
    // Deactivate so the other tests' catalogue stays USD-only.
    await app.call("PATCH", `/v1/credit-packages/${yen.json().id}`, { body: { active: false } });
  });

  it("rejects bad amounts, currencies and unknown fields", async () => {
    const cases: Record<string, unknown>[] = [
      { name: "x", credits: "0", price: "1.00" },
      { name: "x", credits: "-5", price: "1.00" },
      { name: "x", credits: "10", price: "0" },
      { name: "x", credits: "10", price: 10 },
      { name: "x", credits: "10", price: "1e3" },
      { name: "x", credits: "10", bonus_credits: "-1", price: "1.00" },
      { name: "x", credits: "10", price: "1.00", currency: "XYZ" },
      { name: "x", credits: "10", price: "1.00", currency: "usd" },
      { name: "x", credits: "1.0000000000001", price: "1.00" },
      { name: "x", credits: "10", price: "1.00", bonus_expires_in_days: 0 },
      { name: "x", credits: "10", price: "1.00", colour: "red" },
      { name: "", credits: "10", price: "1.00" },
      { name: "x".repeat(201), credits: "10", price: "1.00" },
      { name: "x", credits: "10", price: "1.00", description: "d".repeat(501) },
    ];
    for (const body of cases) {
      const res = await create(body);
      expect(res.statusCode, JSON.stringify(body)).toBe(400);
      expect(res.json().error.code).toBe("invalid_request");
    }
  });

  it("updates and deactivates; org keys no longer see inactive packages", async () => {
    const id = starter.json().id;
    const patched = await app.call("PATCH", `/v1/credit-packages/${id}`, {
      body: { name: "Starter (old)", active: false },
    });
    expect(patched.statusCode).toBe(200);
    expect(patched.json()).toMatchObject({ name: "Starter (old)", active: false });

    const asOrg = await app.call("GET", "/v1/credit-packages", { key: readKey });
    expect(asOrg.json().data.map((p: { id: string }) => p.id)).not.toContain(id);
    // The savings reference is now Growth (the priciest active package).
    const scaleNow = asOrg.json().data.find((p: { name: string }) => p.name === "Scale");
    expect(scaleNow.savings_percent).toBe("26.53");

    expect((await app.call("GET", `/v1/credit-packages/${id}`, { key: readKey })).statusCode).toBe(
      404,
    );
    const inactiveForOrg = await app.call("GET", "/v1/credit-packages?active=false", {
      key: readKey,
    });
    expect(inactiveForOrg.json().data).toEqual([]);

    const asPlatform = await app.call("GET", "/v1/credit-packages?active=false");
    expect(asPlatform.json().data.map((p: { id: string }) => p.id)).toContain(id);
    const one = await app.call("GET", `/v1/credit-packages/${id}`);
    expect(one.statusCode).toBe(200);
    // Priced above every active package: it saves nothing (never a negative saving).
    expect(one.json().savings_percent).toBe("0.00");

    await app.call("PATCH", `/v1/credit-packages/${id}`, {
      body: { name: "Starter", active: true },
    });
  });

  it("validates a patched price against the package's currency", async () => {
    const id = growth.json().id;
    const bad = await app.call("PATCH", `/v1/credit-packages/${id}`, { body: { price: "1.234" } });
    expect(bad.statusCode).toBe(400);
    const empty = await app.call("PATCH", `/v1/credit-packages/${id}`, { body: {} });
    expect(empty.statusCode).toBe(400);
    const currency = await app.call("PATCH", `/v1/credit-packages/${id}`, {
      body: { currency: "EUR" },
    });
    expect(currency.statusCode).toBe(400);
    const unknown = await app.call("PATCH", "/v1/credit-packages/pkg_nope", {
      body: { active: false },
    });
    expect(unknown.statusCode).toBe(404);
  });

  it("refuses a price per credit the ledger cannot hold (such a package could be paid, never granted)", async () => {
    const huge = {
      name: "Huge",
      credits: "0.000000000001",
      price: "999999999999999",
      currency: "JPY",
    };
    const res = await create(huge);
    expect(res.statusCode).toBe(400);
    expect(res.json().error.details).toEqual([
      { field: "/price", message: expect.stringMatching(/price per credit too large/) },
    ]);
    // At the limit: 10^26 − 1 per credit is fine, and is granted when paid.
    const edge = await create({ ...huge, credits: "0.00000000001", price: "999999999999999" });
    expect(edge.statusCode).toBe(201);
    const org = await app.createOrg();
    const bought = await app.call("POST", `/v1/organizations/${org}/purchases`, {
      body: { package_id: edge.json().id },
    });
    const paid = await app.call("POST", `/sandbox/checkout/${bought.json().id}`, {
      key: null,
      rawBody: "action=pay&card=success",
      headers: { "content-type": "application/x-www-form-urlencoded" },
    });
    expect(paid.statusCode).toBe(303);
    const balance = await app.call("GET", `/v1/organizations/${org}/balance`);
    expect(balance.json().balance).toBe("0.00000000001");
    // A PATCH that would cross the limit, by its credits or its price, changes nothing.
    const id = edge.json().id;
    const fewer = await app.call("PATCH", `/v1/credit-packages/${id}`, {
      body: { credits: "0.000000000001" },
    });
    expect(fewer.statusCode).toBe(400);
    expect(fewer.json().error.details[0].field).toBe("/credits");
    const dearer = await app.call("PATCH", `/v1/credit-packages/${id}`, {
      body: { credits: "0.000000000001", price: "1" },
    });
    expect(dearer.statusCode).toBe(200);
    expect((await app.call("GET", `/v1/credit-packages/${id}`)).json().credits).toBe(
      "0.000000000001",
    );
  });

  it("lets any key read but only platform keys write", async () => {
    for (const key of [readKey, ingestKey, adminKey]) {
      expect((await app.call("GET", "/v1/credit-packages", { key })).statusCode).toBe(200);
      const post = await create({ name: "x", credits: "1", price: "1.00" }, key);
      expect(post.statusCode).toBe(403);
      expect(post.json().error.code).toBe("forbidden");
      const patch = await app.call("PATCH", `/v1/credit-packages/${growth.json().id}`, {
        key,
        body: { active: false },
      });
      expect(patch.statusCode).toBe(403);
    }
    expect((await app.call("GET", "/v1/credit-packages", { key: null })).statusCode).toBe(401);
  });

  it("is described in the OpenAPI document", async () => {
    const doc = (await app.call("GET", "/openapi.json", { key: null })).json();
    expect(doc.paths["/v1/credit-packages"].post).toBeDefined();
    expect(doc.paths["/v1/credit-packages/{id}"].patch).toBeDefined();
    const buy = doc.paths["/v1/organizations/{org_id}/purchases"].post;
    expect(Object.keys(buy.responses)).toEqual(
      expect.arrayContaining(["201", "400", "403", "404", "409", "503"]),
    );
    expect(doc.paths["/v1/organizations/{org_id}/purchases/{id}"].get).toBeDefined();
    expect(doc.paths["/sandbox/checkout/{purchase_id}"]).toBeUndefined();
  });
});
