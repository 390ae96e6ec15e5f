import { describe, expect, it } from "vitest";
import { createTestApp, waitFor } from "../../../test/support/app.js";

const ORG_ID = /^org_[0-9A-HJKMNP-TV-Z]{26}$/;
const KEY_ID = /^key_[0-9A-HJKMNP-TV-Z]{26}$/;

describe("orgs routes", async () => {
  const app = await createTestApp();

  /** Asserts the error envelope and returns its details. */
  function expectError(
    res: Awaited<ReturnType<typeof app.call>>,
    status: number,
    code: string,
  ): { field?: string; message: string }[] {
    expect(res.statusCode, res.body).toBe(status);
    const body = res.json();
    expect(body.error).toMatchObject({ code, message: expect.any(String) });
    expect(body.error.request_id).toMatch(/^req_/);
    expect(Array.isArray(body.error.details)).toBe(true);
    return body.error.details;
  }

  describe("organisations", () => {
    it("POST creates an organisation with defaults", async () => {
      const res = await app.call("POST", "/v1/organizations", { body: { name: "Acme" } });
      expect(res.statusCode).toBe(201);
      expect(res.json()).toEqual({
        id: expect.stringMatching(ORG_ID),
        name: "Acme",
        external_id: null,
        plan: "professional",
        overdraft_limit: "0",
        credits_enabled: true,
        metadata: {},
        created_at: "2026-11-24T10:00:00.000Z",
        updated_at: "2026-11-24T10:00:00.000Z",
      });
    });

    it("POST takes every field", async () => {
      const res = await app.call("POST", "/v1/organizations", {
        body: {
          name: "Globex",
          external_id: "globex-1",
          plan: "starter",
          overdraft_limit: "12.500000000000",
          metadata: { tier: "gold", region: "eu" },
        },
      });
      expect(res.statusCode).toBe(201);
      expect(res.json()).toMatchObject({
        name: "Globex",
        external_id: "globex-1",
        plan: "starter",
        overdraft_limit: "12.5",
        credits_enabled: false,
        metadata: { tier: "gold", region: "eu" },
      });
    });

    it("GET returns it by id and by ext:<external_id>", async () => {
      const id = await app.createOrg({ external_id: "cust:42", metadata: { a: "b" } });
      const byId = await app.call("GET", `/v1/organizations/${id}`);
      expect(byId.statusCode).toBe(200);
      expect(byId.json()).toMatchObject({ id, external_id: "cust:42", metadata: { a: "b" } });
      const byExt = await app.call("GET", "/v1/organizations/ext:cust:42");
      expect(byExt.statusCode).toBe(200);
      expect(byExt.json()).toEqual(byId.json());
      // Also encoded, as an HTTP client would send it.
      const encoded = await app.call(
        "GET",
        `/v1/organizations/${encodeURIComponent("ext:cust:42")}`,
      );
      expect(encoded.json().id).toBe(id);
    });

    it("a 128-character external id works in paths as ext:<external_id>", async () => {
      const ext = "e".repeat(128);
      const id = await app.createOrg({ external_id: ext });
      const res = await app.call("GET", `/v1/organizations/ext:${ext}`);
      expect(res.statusCode).toBe(200);
      expect(res.json().id).toBe(id);
    });

    it("reusing an external_id is 409 invalid_state and creates nothing", async () => {
      await app.createOrg({ external_id: "dup-1" });
      const res = await app.call("POST", "/v1/organizations", {
        body: { name: "Another", external_id: "dup-1" },
      });
      expectError(res, 409, "invalid_state");
      const list = await app.call("GET", "/v1/organizations?search=dup-1");
      expect(list.json().data).toHaveLength(1);
    });

    it("unknown ids and external ids are 404", async () => {
      expectError(
        await app.call("GET", "/v1/organizations/org_00000000000000000000000000"),
        404,
        "not_found",
      );
      expectError(await app.call("GET", "/v1/organizations/ext:nobody"), 404, "not_found");
      expectError(await app.call("GET", "/v1/organizations/whatever"), 404, "not_found");
      expectError(
        await app.call("PATCH", "/v1/organizations/ext:nobody", { body: { name: "x" } }),
        404,
        "not_found",
      );
    });

    it("PATCH updates the given fields only", async () => {
      const id = await app.createOrg({ name: "Before", metadata: { keep: "no" } });
      app.clock.advance(60_000);
      const res = await app.call("PATCH", `/v1/organizations/${id}`, {
        body: { name: "After", overdraft_limit: "100.25", plan: "enterprise" },
      });
      expect(res.statusCode).toBe(200);
      expect(res.json()).toMatchObject({
        id,
        name: "After",
        plan: "enterprise",
        overdraft_limit: "100.25",
        metadata: { keep: "no" },
        created_at: "2026-11-24T10:00:00.000Z",
        updated_at: "2026-11-24T10:01:00.000Z",
      });
      const meta = await app.call("PATCH", `/v1/organizations/${id}`, {
        body: { metadata: { replaced: "yes" } },
      });
      expect(meta.json()).toMatchObject({ name: "After", metadata: { replaced: "yes" } });
      expect((await app.call("GET", `/v1/organizations/${id}`)).json()).toEqual(meta.json());
      app.clock.set("2026-11-24T10:00:00.000Z");
    });

    it("PATCH of nothing, of external_id or of a JSON-number limit is 400", async () => {
      const id = await app.createOrg();
      expectError(
        await app.call("PATCH", `/v1/organizations/${id}`, { body: {} }),
        400,
        "invalid_request",
      );
      expectError(
        await app.call("PATCH", `/v1/organizations/${id}`, { body: { external_id: "x" } }),
        400,
        "invalid_request",
      );
      expectError(
        await app.call("PATCH", `/v1/organizations/${id}`, { body: { overdraft_limit: 5 } }),
        400,
        "invalid_request",
      );
    });

    it("GET /v1/organizations pages with limit and cursor, newest first", async () => {
      const ids: string[] = [];
      for (let i = 0; i < 5; i++) ids.push(await app.createOrg({ name: `Paging ${i}` }));
      const seen: string[] = [];
      let cursor: string | null = null;
      let pages = 0;
      do {
        const url: string = `/v1/organizations?search=Paging&limit=2${cursor ? `&cursor=${cursor}` : ""}`;
        const res = await app.call("GET", url);
        expect(res.statusCode).toBe(200);
        const page = res.json();
        expect(page.data.length).toBeLessThanOrEqual(2);
        seen.push(...page.data.map((o: { id: string }) => o.id));
        expect(page.has_more).toBe(page.next_cursor !== null);
        cursor = page.next_cursor;
        pages++;
      } while (cursor && pages < 10);
      expect(seen).toEqual([...ids].reverse());
      expect(pages).toBe(3);
    });

    it("GET /v1/organizations has a default limit of 50 and refuses out-of-range limits", async () => {
      // More organisations than one default page, whatever the tests before created.
      const existing = (await app.call("GET", "/v1/organizations?limit=1000")).json().data.length;
      for (let i = existing; i < 51; i++) await app.createOrg({ name: `Page filler ${i}` });
      const all = await app.call("GET", "/v1/organizations");
      expect(all.statusCode).toBe(200);
      expect(all.json().data).toHaveLength(50);
      expect(all.json().has_more).toBe(true);
      for (const limit of ["0", "1001", "abc", "-1", "2.5"]) {
        const details = expectError(
          await app.call("GET", `/v1/organizations?limit=${limit}`),
          400,
          "invalid_request",
        );
        expect(details[0]?.field, limit).toBe("query.limit");
      }
    });

    it("search finds by name, external id or id, and treats % and _ literally", async () => {
      const a = await app.createOrg({ name: "Searchable Widgets", external_id: "sw-77" });
      const b = await app.createOrg({ name: "100% Cotton_Co" });
      const search = async (q: string) =>
        (await app.call("GET", `/v1/organizations?search=${encodeURIComponent(q)}`))
          .json()
          .data.map((o: { id: string }) => o.id);
      expect(await search("searchable widg")).toEqual([a]);
      expect(await search("SW-7")).toEqual([a]);
      expect(await search(a)).toEqual([a]);
      expect(await search("100%")).toEqual([b]);
      expect(await search("n_C")).toEqual([b]);
      expect(await search("0%25")).toEqual([]);
      expect(await search("nothing like this")).toEqual([]);
    });

    it("a bad cursor is 400", async () => {
      for (const cursor of [
        "garbage!",
        "bm90LWpzb24",
        Buffer.from("[1,2]").toString("base64url"),
      ]) {
        const details = expectError(
          await app.call("GET", `/v1/organizations?cursor=${cursor}`),
          400,
          "invalid_request",
        );
        expect(details[0]?.field).toBe("query.cursor");
      }
    });

    it("unknown query parameters are 400", async () => {
      expectError(await app.call("GET", "/v1/organizations?colour=red"), 400, "invalid_request");
    });
  });

  describe("request validation", () => {
    it("malformed JSON is 400 invalid_request", async () => {
      const res = await app.call("POST", "/v1/organizations", { rawBody: '{"name": "x",' });
      expectError(res, 400, "invalid_request");
    });

    it("an empty JSON body is 400", async () => {
      const res = await app.call("POST", "/v1/organizations", { rawBody: "" });
      expectError(res, 400, "invalid_request");
    });

    it("a non-JSON content type is 415", async () => {
      for (const type of ["application/x-www-form-urlencoded", "text/plain"]) {
        const res = await app.call("POST", "/v1/organizations", {
          rawBody: '{"name":"x"}',
          headers: { "content-type": type },
        });
        expectError(res, 415, "unsupported_media_type");
      }
    });

    it("JSON in a charset other than UTF-8 is 415 (it was read as UTF-8, é stored as U+FFFD)", async () => {
      const latin1 = Buffer.concat([
        Buffer.from('{"name":"Caf'),
        Buffer.from([0xe9]),
        Buffer.from('"}'),
      ]);
      const res = await app.call("POST", "/v1/organizations", {
        rawBody: latin1,
        headers: { "content-type": "application/json; charset=iso-8859-1" },
      });
      expectError(res, 415, "unsupported_media_type");
      for (const type of ["application/json; charset=utf-8", 'application/json;charset="UTF8"']) {
        const ok = await app.call("POST", "/v1/organizations", {
          rawBody: '{"name":"Café"}',
          headers: { "content-type": type },
        });
        expect(ok.statusCode, type).toBe(201);
        expect(ok.json().name).toBe("Café");
      }
    });

    it("a body over 4 MiB is 413", async () => {
      const res = await app.call("POST", "/v1/organizations", {
        rawBody: JSON.stringify({ name: "x".repeat(4 * 1024 * 1024) }),
      });
      expectError(res, 413, "payload_too_large");
    });

    it("a DELETE with a JSON content type and no body is fine", async () => {
      const org = await app.createOrg();
      await app.call("POST", `/v1/organizations/${org}/users`, {
        body: { id: "u", email: "u@example.com", role: "viewer" },
      });
      const res = await app.call("DELETE", `/v1/organizations/${org}/users/u`, {
        headers: { "content-type": "application/json" },
      });
      expect(res.statusCode).toBe(204);
    });

    it("schema violations list every problem with its field", async () => {
      const res = await app.call("POST", "/v1/organizations", {
        body: { external_id: "has space", plan: "" },
      });
      const details = expectError(res, 400, "invalid_request");
      const fields = details.map((d) => d.field);
      expect(fields).toEqual(expect.arrayContaining(["/name", "/external_id", "/plan"]));
      expect(details.find((d) => d.field === "/name")?.message).toBe("is required");
    });

    it("unknown fields are 400 and named", async () => {
      const res = await app.call("POST", "/v1/organizations", {
        body: { name: "x", colour: "red" },
      });
      const details = expectError(res, 400, "invalid_request");
      expect(details).toEqual([{ field: "/colour", message: "unknown field" }]);
    });

    it("a name over 200 characters is 400; 200 is fine", async () => {
      expectError(
        await app.call("POST", "/v1/organizations", { body: { name: "n".repeat(201) } }),
        400,
        "invalid_request",
      );
      const ok = await app.call("POST", "/v1/organizations", { body: { name: "n".repeat(200) } });
      expect(ok.statusCode).toBe(201);
    });

    it("metadata over 50 keys or with values over 500 characters is 400", async () => {
      const keys = (n: number) =>
        Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, "v"]));
      expectError(
        await app.call("POST", "/v1/organizations", { body: { name: "m", metadata: keys(51) } }),
        400,
        "invalid_request",
      );
      expectError(
        await app.call("POST", "/v1/organizations", {
          body: { name: "m", metadata: { long: "v".repeat(501) } },
        }),
        400,
        "invalid_request",
      );
      expectError(
        await app.call("POST", "/v1/organizations", {
          body: { name: "m", metadata: { n: 1 } },
        }),
        400,
        "invalid_request",
      );
      for (const key of ["k".repeat(129), ""]) {
        expectError(
          await app.call("POST", "/v1/organizations", {
            body: { name: "m", metadata: { [key]: "v" } },
          }),
          400,
          "invalid_request",
        );
      }
      const ok = await app.call("POST", "/v1/organizations", {
        body: { name: "m", metadata: { ...keys(49), long: "v".repeat(500) } },
      });
      expect(ok.statusCode).toBe(201);
      expect(Object.keys(ok.json().metadata)).toHaveLength(50);
    });

    it("a JSON number where a decimal string belongs is 400", async () => {
      const details = expectError(
        await app.call("POST", "/v1/organizations", { body: { name: "n", overdraft_limit: 10 } }),
        400,
        "invalid_request",
      );
      expect(details[0]?.field).toBe("/overdraft_limit");
      for (const bad of ["-1", "1e3", "1.0000000000001", " 1", "NaN"]) {
        expectError(
          await app.call("POST", "/v1/organizations", {
            body: { name: "n", overdraft_limit: bad },
          }),
          400,
          "invalid_request",
        );
      }
    });

    it("a body that is not an object is 400", async () => {
      expectError(
        await app.call("POST", "/v1/organizations", { body: ["x"] }),
        400,
        "invalid_request",
      );
      expectError(
        await app.call("POST", "/v1/organizations", { body: "x" }),
        400,
        "invalid_request",
      );
    });

    it("a __proto__ key is refused, not merged", async () => {
      const res = await app.call("POST", "/v1/organizations", {
        rawBody: '{"name":"p","__proto__":{"admin":true}}',
      });
      expectError(res, 400, "invalid_request");
    });
  });

  describe("users", () => {
    it("create, list, get, patch and delete", async () => {
      const org = await app.createOrg();
      const base = `/v1/organizations/${org}/users`;
      const created = await app.call("POST", base, {
        body: { id: "u-1", email: "ada@example.com", name: "Ada", role: "admin" },
      });
      expect(created.statusCode).toBe(201);
      expect(created.json()).toEqual({
        id: "u-1",
        email: "ada@example.com",
        name: "Ada",
        role: "admin",
        created_at: "2026-11-24T10:00:00.000Z",
        updated_at: "2026-11-24T10:00:00.000Z",
      });
      await app.call("POST", base, {
        body: { id: "u-2", email: "bob@example.com", role: "viewer" },
      });

      const list = await app.call("GET", base);
      expect(list.statusCode).toBe(200);
      expect(list.json()).toMatchObject({ has_more: false, next_cursor: null });
      expect(list.json().data.map((u: { id: string }) => u.id)).toEqual(["u-1", "u-2"]);
      expect(list.json().data[1].name).toBeNull();

      expect((await app.call("GET", `${base}/u-2`)).json()).toMatchObject({
        email: "bob@example.com",
      });

      const patched = await app.call("PATCH", `${base}/u-2`, {
        body: { role: "billing", name: "Bob" },
      });
      expect(patched.statusCode).toBe(200);
      expect(patched.json()).toMatchObject({
        id: "u-2",
        role: "billing",
        name: "Bob",
        email: "bob@example.com",
      });
      const cleared = await app.call("PATCH", `${base}/u-2`, { body: { name: null } });
      expect(cleared.json().name).toBeNull();

      const del = await app.call("DELETE", `${base}/u-2`);
      expect(del.statusCode).toBe(204);
      expect(del.body).toBe("");
      expectError(await app.call("GET", `${base}/u-2`), 404, "not_found");
      expectError(await app.call("DELETE", `${base}/u-2`), 404, "not_found");
      expectError(
        await app.call("PATCH", `${base}/u-2`, { body: { name: "x" } }),
        404,
        "not_found",
      );
    });

    it("users page with limit and cursor", async () => {
      const org = await app.createOrg();
      const base = `/v1/organizations/${org}/users`;
      for (const id of ["c", "a", "e", "b", "d"]) {
        await app.call("POST", base, { body: { id, email: `${id}@example.com`, role: "viewer" } });
      }
      const first = (await app.call("GET", `${base}?limit=3`)).json();
      expect(first.data.map((u: { id: string }) => u.id)).toEqual(["a", "b", "c"]);
      expect(first.has_more).toBe(true);
      const second = (await app.call("GET", `${base}?limit=3&cursor=${first.next_cursor}`)).json();
      expect(second.data.map((u: { id: string }) => u.id)).toEqual(["d", "e"]);
      expect(second).toMatchObject({ has_more: false, next_cursor: null });
      expectError(await app.call("GET", `${base}?cursor=%%%`), 400, "invalid_request");
    });

    it("a duplicate user id is 409; bad email, role or id is 400", async () => {
      const org = await app.createOrg();
      const base = `/v1/organizations/${org}/users`;
      await app.call("POST", base, { body: { id: "u", email: "u@example.com", role: "viewer" } });
      expectError(
        await app.call("POST", base, { body: { id: "u", email: "u@example.com", role: "viewer" } }),
        409,
        "invalid_state",
      );
      const details = expectError(
        await app.call("POST", base, { body: { id: "bad id", email: "nope", role: "owner" } }),
        400,
        "invalid_request",
      );
      expect(details.map((d) => d.field).sort()).toEqual(["/email", "/id", "/role"]);
      // A union is one problem, not one per branch.
      expect(details.find((d) => d.field === "/role")?.message).toBe(
        'must be one of "admin", "billing", "viewer"',
      );
      expectError(
        await app.call("PATCH", `${base}/u`, { body: { role: "owner" } }),
        400,
        "invalid_request",
      );
      expectError(await app.call("PATCH", `${base}/u`, { body: {} }), 400, "invalid_request");
    });

    it("the same user id may exist in two organisations", async () => {
      const a = await app.createOrg();
      const b = await app.createOrg();
      for (const org of [a, b]) {
        const res = await app.call("POST", `/v1/organizations/${org}/users`, {
          body: { id: "shared", email: "s@example.com", role: "viewer" },
        });
        expect(res.statusCode).toBe(201);
      }
      await app.call("DELETE", `/v1/organizations/${a}/users/shared`);
      expect((await app.call("GET", `/v1/organizations/${b}/users/shared`)).statusCode).toBe(200);
    });

    it("users are reachable through ext:<external_id>", async () => {
      await app.createOrg({ external_id: "with-users" });
      const res = await app.call("POST", "/v1/organizations/ext:with-users/users", {
        body: { id: "x", email: "x@example.com", role: "viewer" },
      });
      expect(res.statusCode).toBe(201);
      const list = await app.call("GET", "/v1/organizations/ext:with-users/users");
      expect(list.json().data).toHaveLength(1);
    });
  });

  describe("api keys", () => {
    it("create shows the secret once; the list has no secrets", async () => {
      const org = await app.createOrg();
      const res = await app.call("POST", `/v1/organizations/${org}/api-keys`, {
        body: { name: "backend", role: "ingest" },
      });
      expect(res.statusCode).toBe(201);
      const created = res.json();
      expect(created).toMatchObject({
        id: expect.stringMatching(KEY_ID),
        name: "backend",
        role: "ingest",
        org_id: org,
        key: expect.stringMatching(/^tally_[A-Za-z0-9_-]{40}$/),
        created_at: "2026-11-24T10:00:00.000Z",
        last_used_at: null,
        revoked_at: null,
      });
      expect(created.key.startsWith(created.key_prefix)).toBe(true);
      expect(created.key_prefix.length).toBeLessThan(created.key.length / 2);

      const list = await app.call("GET", `/v1/organizations/${org}/api-keys`);
      expect(list.statusCode).toBe(200);
      const listed = list.json().data;
      expect(listed).toHaveLength(1);
      expect(listed[0]).toEqual({
        id: created.id,
        name: "backend",
        role: "ingest",
        org_id: org,
        key_prefix: created.key_prefix,
        created_at: created.created_at,
        last_used_at: null,
        revoked_at: null,
      });
      expect(list.body).not.toContain(created.key);
      expect(list.body).not.toContain("key_hash");
    });

    it("a new key works, last_used_at is recorded, revoking it is immediate", async () => {
      const org = await app.createOrg();
      const created = (
        await app.call("POST", `/v1/organizations/${org}/api-keys`, {
          body: { name: "reader", role: "read" },
        })
      ).json();
      const get = await app.call("GET", `/v1/organizations/${org}`, { key: created.key });
      expect(get.statusCode).toBe(200);

      const used = await waitFor(async () => {
        const keys = (await app.call("GET", `/v1/organizations/${org}/api-keys`)).json().data;
        return keys.find((k: { id: string; last_used_at: string | null }) => k.id === created.id)
          ?.last_used_at;
      });
      expect(used).toBe("2026-11-24T10:00:00.000Z");

      const revoke = await app.call("DELETE", `/v1/organizations/${org}/api-keys/${created.id}`);
      expect(revoke.statusCode).toBe(204);
      expectError(
        await app.call("GET", `/v1/organizations/${org}`, { key: created.key }),
        401,
        "unauthenticated",
      );

      const listed = (await app.call("GET", `/v1/organizations/${org}/api-keys`)).json().data;
      expect(listed[0].revoked_at).toBe("2026-11-24T10:00:00.000Z");
      expectError(
        await app.call("DELETE", `/v1/organizations/${org}/api-keys/${created.id}`),
        404,
        "not_found",
      );
    });

    it("an org admin key can create keys of its org and the keys page", async () => {
      const org = await app.createOrg();
      const admin = await app.orgKey(org, "admin");
      for (const role of ["billing", "read", "ingest"]) {
        const res = await app.call("POST", `/v1/organizations/${org}/api-keys`, {
          key: admin,
          body: { name: role, role },
        });
        expect(res.statusCode).toBe(201);
      }
      const first = (await app.call("GET", `/v1/organizations/${org}/api-keys?limit=2`)).json();
      expect(first.data).toHaveLength(2);
      const second = (
        await app.call(
          "GET",
          `/v1/organizations/${org}/api-keys?limit=2&cursor=${first.next_cursor}`,
        )
      ).json();
      expect(second.data).toHaveLength(2);
      expect(second.has_more).toBe(false);
      const all = [...first.data, ...second.data].map((k: { role: string }) => k.role);
      expect(all).toEqual(["ingest", "read", "billing", "admin"]);
    });

    it("an org key role must be an org role; a key of another org cannot be revoked here", async () => {
      const org = await app.createOrg();
      const other = await app.createOrg();
      expectError(
        await app.call("POST", `/v1/organizations/${org}/api-keys`, {
          body: { name: "x", role: "platform" },
        }),
        400,
        "invalid_request",
      );
      const otherKey = (
        await app.call("POST", `/v1/organizations/${other}/api-keys`, {
          body: { name: "x", role: "read" },
        })
      ).json();
      expectError(
        await app.call("DELETE", `/v1/organizations/${org}/api-keys/${otherKey.id}`),
        404,
        "not_found",
      );
      expect(
        (await app.call("GET", `/v1/organizations/${other}`, { key: otherKey.key })).statusCode,
      ).toBe(200);
    });

    it("platform keys: created by platform keys, work on every organisation", async () => {
      const res = await app.call("POST", "/v1/platform-keys", { body: { name: "ops" } });
      expect(res.statusCode).toBe(201);
      const created = res.json();
      expect(created).toMatchObject({
        id: expect.stringMatching(KEY_ID),
        name: "ops",
        role: "platform",
        org_id: null,
        key: expect.stringMatching(/^tally_/),
      });
      const org = await app.createOrg();
      expect(
        (await app.call("GET", `/v1/organizations/${org}`, { key: created.key })).statusCode,
      ).toBe(200);
      expect((await app.call("GET", "/v1/organizations", { key: created.key })).statusCode).toBe(
        200,
      );
      expectError(
        await app.call("POST", "/v1/platform-keys", { body: {} }),
        400,
        "invalid_request",
      );
    });
  });

  describe("portal sessions", () => {
    it("creates a one-time link valid for 15 minutes", async () => {
      const org = await app.createOrg();
      await app.call("POST", `/v1/organizations/${org}/users`, {
        body: { id: "u-1", email: "u@example.com", role: "billing" },
      });
      const res = await app.call("POST", `/v1/organizations/${org}/portal-sessions`, {
        body: { user_id: "u-1", return_url: "https://app.example.com/settings" },
      });
      expect(res.statusCode).toBe(201);
      const body = res.json();
      expect(body).toEqual({
        url: expect.stringMatching(
          /^http:\/\/tally\.test\/portal\/enter\?token=tps_[A-Za-z0-9_-]+$/,
        ),
        expires_at: "2026-11-24T10:15:00.000Z",
      });
      const again = await app.call("POST", `/v1/organizations/${org}/portal-sessions`, {
        body: { user_id: "u-1" },
      });
      expect(again.json().url).not.toBe(body.url);
    });

    it("an unknown user is 400; a bad return_url is 400", async () => {
      const org = await app.createOrg();
      expectError(
        await app.call("POST", `/v1/organizations/${org}/portal-sessions`, {
          body: { user_id: "ghost" },
        }),
        400,
        "invalid_request",
      );
      await app.call("POST", `/v1/organizations/${org}/users`, {
        body: { id: "u-1", email: "u@example.com", role: "billing" },
      });
      expectError(
        await app.call("POST", `/v1/organizations/${org}/portal-sessions`, {
          body: { user_id: "u-1", return_url: "javascript:alert(1)" },
        }),
        400,
        "invalid_request",
      );
    });

    it("a user of another organisation is unknown here", async () => {
      const org = await app.createOrg();
      const other = await app.createOrg();
      await app.call("POST", `/v1/organizations/${other}/users`, {
        body: { id: "theirs", email: "t@example.com", role: "admin" },
      });
      expectError(
        await app.call("POST", `/v1/organizations/${org}/portal-sessions`, {
          body: { user_id: "theirs" },
        }),
        400,
        "invalid_request",
      );
    });
  });

  describe("On-Behalf-Of", () => {
    it("a user of the organisation is accepted; an unknown one is 400", async () => {
      const org = await app.createOrg();
      await app.call("POST", `/v1/organizations/${org}/users`, {
        body: { id: "u-1", email: "u@example.com", role: "admin" },
      });
      const known = await app.call("GET", `/v1/organizations/${org}`, {
        headers: { "on-behalf-of": "u-1" },
      });
      expect(known.statusCode).toBe(200);
      const details = expectError(
        await app.call("GET", `/v1/organizations/${org}`, { headers: { "on-behalf-of": "ghost" } }),
        400,
        "invalid_request",
      );
      expect(details[0]?.field).toBe("header.on-behalf-of");
      const admin = await app.orgKey(org, "admin");
      expectError(
        await app.call("GET", `/v1/organizations/${org}/users`, {
          key: admin,
          headers: { "on-behalf-of": "ghost" },
        }),
        400,
        "invalid_request",
      );
    });

    it("a user of another organisation is refused", async () => {
      const org = await app.createOrg();
      const other = await app.createOrg();
      await app.call("POST", `/v1/organizations/${other}/users`, {
        body: { id: "theirs", email: "t@example.com", role: "admin" },
      });
      expectError(
        await app.call("GET", `/v1/organizations/${org}`, {
          headers: { "on-behalf-of": "theirs" },
        }),
        400,
        "invalid_request",
      );
    });
  });
});
