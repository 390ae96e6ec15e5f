import { sql } from "kysely";
import { describe, expect, it } from "vitest";
import { createTestApp, twoInstances, waitFor } from "../../../test/support/app.js";
import { onPostgres } from "../../../test/support/db.js";
import type { Runtime } from "../../app/runtime.js";
import { hashSecret } from "./keys.js";

/**
 * The per-instance cache of API keys and organisations must never let a revoked key or a changed
 * organisation through once the change has been heard — on this instance at once, on others
 * when the `tally_cache` notification arrives — and must not cache while it cannot hear.
 */
describe("request lookups cache", async () => {
  const app = await createTestApp();
  const db = app.runtime.ctx.db;
  const lookups = app.runtime.ctx.lookups;

  it("serves a key from memory, and forgets it when the key is revoked behind its back", async () => {
    const org = await app.createOrg();
    const key = await app.orgKey(org, "read");
    expect((await app.call("GET", `/v1/organizations/${org}`, { key })).statusCode).toBe(200);

    // Cached: a query counter on the underlying loader shows no second read.
    const hash = hashSecret(key);
    const first = await lookups.apiKey(hash);
    const second = await lookups.apiKey(hash);
    expect(second).toBe(first);

    // Revoked by SQL, not through the API: only the trigger's notification can tell the cache.
    await sql`update api_keys set revoked_at = now() where key_hash = ${hash}`.execute(db);
    await waitFor(async () => (await lookups.apiKey(hash)) === undefined);
    const res = await app.call("GET", `/v1/organizations/${org}`, { key });
    expect(res.statusCode).toBe(401);
  });

  it("revoking through the API refuses the key on the very next request", async () => {
    const org = await app.createOrg();
    const admin = await app.orgKey(org, "admin");
    const created = (
      await app.call("POST", `/v1/organizations/${org}/api-keys`, {
        key: admin,
        body: { name: "short-lived", role: "read" },
      })
    ).json();
    const key = created.key as string;
    expect((await app.call("GET", `/v1/organizations/${org}`, { key })).statusCode).toBe(200);
    const revoke = await app.call("DELETE", `/v1/organizations/${org}/api-keys/${created.id}`, {
      key: admin,
    });
    expect(revoke.statusCode).toBe(204);
    expect((await app.call("GET", `/v1/organizations/${org}`, { key })).statusCode).toBe(401);
  });

  it("sees an organisation's plan change made behind its back", async () => {
    const org = await app.createOrg();
    const key = await app.orgKey(org, "ingest");
    const event = (id: string) => ({
      key,
      body: { id, type: "compute", meter: "compute.vcpu_seconds", quantity: "1" },
    });
    expect((await app.call("POST", "/v1/usage-events", event("e1"))).statusCode).toBe(200);
    await sql`update organizations set plan = 'free' where id = ${org}`.execute(db);
    await waitFor(async () => (await lookups.organization(org))?.plan === "free");
    const res = await app.call("POST", "/v1/usage-events", event("e2"));
    expect(res.json().error.code).toBe("plan_not_eligible");
  });

  it("does not cache while change notifications cannot be heard", async () => {
    const org = await app.createOrg();
    lookups.setLive(false);
    try {
      const a = await lookups.organization(org);
      const b = await lookups.organization(org);
      expect(b).toEqual(a);
      expect(b).not.toBe(a); // read twice
    } finally {
      lookups.setLive(true);
    }
    const c = await lookups.organization(org);
    expect(await lookups.organization(org)).toBe(c);
  });

  it("a read that raced an invalidation is not kept", async () => {
    const org = await app.createOrg();
    const pending = lookups.organization(org);
    lookups.invalidate(); // the change was heard while the read was in flight
    const raced = await pending;
    expect(await lookups.organization(org)).not.toBe(raced);
  });
});

describe.runIf(onPostgres)("request lookups across two instances", async () => {
  const [a, b] = await twoInstances({ poolSize: 3 });
  const inject = (
    r: Runtime,
    method: "GET" | "POST" | "DELETE",
    path: string,
    key: string,
    body?: unknown,
  ) =>
    r.app.inject({
      method,
      url: path,
      headers: {
        authorization: `Bearer ${key}`,
        ...(body ? { "content-type": "application/json" } : {}),
      },
      payload: body ? JSON.stringify(body) : undefined,
    });

  it("a key revoked on one instance is refused by the other once it has heard", async () => {
    const platform = a.generatedAdminKey!;
    const org = (await inject(a, "POST", "/v1/organizations", platform, { name: "Two" })).json().id;
    const created = (
      await inject(a, "POST", `/v1/organizations/${org}/api-keys`, platform, {
        name: "k",
        role: "read",
      })
    ).json();
    // Instance b caches the key.
    expect((await inject(b, "GET", `/v1/organizations/${org}`, created.key)).statusCode).toBe(200);
    expect((await inject(b, "GET", `/v1/organizations/${org}`, created.key)).statusCode).toBe(200);
    await waitFor(async () => (await b.ctx.lookups.apiKey(hashSecret(created.key))) !== undefined);

    const revoke = await inject(
      a,
      "DELETE",
      `/v1/organizations/${org}/api-keys/${created.id}`,
      platform,
    );
    expect(revoke.statusCode).toBe(204);
    await waitFor(
      async () =>
        (await inject(b, "GET", `/v1/organizations/${org}`, created.key)).statusCode === 401,
    );
  });
});
