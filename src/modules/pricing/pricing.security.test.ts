import { describe, expect, it } from "vitest";
import { createTestApp } from "../../../test/support/app.js";

const BODY = {
  models: [{ model: "gpt-4o", provider: "openai", input: "1", output: "2" }],
  meters: [],
};

describe("pricing routes — access", async () => {
  const app = await createTestApp();
  const orgId = await app.createOrg();
  const keys = {
    admin: await app.orgKey(orgId, "admin"),
    billing: await app.orgKey(orgId, "billing"),
    ingest: await app.orgKey(orgId, "ingest"),
    read: await app.orgKey(orgId, "read"),
  };

  it.each(["/v1/prices", "/v1/prices/versions", "/v1/prices/versions/1"])(
    "GET %s: any key may read; no or a bad key → 401",
    async (url) => {
      for (const key of [app.platformKey, ...Object.values(keys)]) {
        const res = await app.call("GET", url, { key });
        expect(res.statusCode, res.body).toBe(200);
      }
      const none = await app.call("GET", url, { key: null });
      expect(none.statusCode).toBe(401);
      expect(none.json().error.code).toBe("unauthenticated");
      const bad = await app.call("GET", url, { key: "key_not_a_real_key_0000000000000000" });
      expect(bad.statusCode).toBe(401);
    },
  );

  it.each(Object.keys(keys) as (keyof typeof keys)[])(
    "PUT /v1/prices with an org %s key → 403, nothing written",
    async (role) => {
      const res = await app.call("PUT", "/v1/prices", { key: keys[role], body: BODY });
      expect(res.statusCode, res.body).toBe(403);
      expect(res.json().error.code).toBe("forbidden");
      expect((await app.call("GET", "/v1/prices")).json().version).toBe(1);
    },
  );

  it("PUT /v1/prices without a key → 401; with the platform key → 200", async () => {
    const none = await app.call("PUT", "/v1/prices", { key: null, body: BODY });
    expect(none.statusCode).toBe(401);
    expect((await app.call("GET", "/v1/prices")).json().version).toBe(1);
    const ok = await app.call("PUT", "/v1/prices", { body: BODY });
    expect(ok.statusCode, ok.body).toBe(200);
    expect(ok.json().version).toBe(2);
  });

  it("a revoked key cannot read prices", async () => {
    const key = await app.orgKey(orgId, "read");
    const list = await app.call("GET", `/v1/organizations/${orgId}/api-keys`);
    const id = list
      .json()
      .data.find((k: { key_prefix: string }) => key.startsWith(k.key_prefix))?.id;
    expect(id).toBeDefined();
    await app.call("DELETE", `/v1/organizations/${orgId}/api-keys/${id}`);
    expect((await app.call("GET", "/v1/prices", { key })).statusCode).toBe(401);
  });
});
