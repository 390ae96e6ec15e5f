import { describe, expect, it } from "vitest";
import { createTestApp } from "../../../test/support/app.js";
import { runSecurityMatrix } from "../../../test/support/security-matrix.js";
import { ORGS_MATRIX } from "./orgs.security.matrix.js";

runSecurityMatrix(ORGS_MATRIX);

describe("orgs security", async () => {
  const app = await createTestApp();
  const own = await app.createOrg({ external_id: "matrix-own" });
  const foreign = await app.createOrg({ external_id: "matrix-foreign" });
  const keys = {
    admin: await app.orgKey(own, "admin"),
    billing: await app.orgKey(own, "billing"),
    ingest: await app.orgKey(own, "ingest"),
    read: await app.orgKey(own, "read"),
    "garbage key": "tally_0000000000000000000000000000000000000000",
  };

  let n = 0;
  /** A fresh user and key in the organisation. */
  async function fixtures(orgId: string) {
    const user = `u-${++n}`;
    const created = await app.call("POST", `/v1/organizations/${orgId}/users`, {
      body: { id: user, email: `${user}@example.com`, role: "viewer" },
    });
    expect(created.statusCode).toBe(201);
    const key = await app.call("POST", `/v1/organizations/${orgId}/api-keys`, {
      body: { name: "victim", role: "read" },
    });
    expect(key.statusCode).toBe(201);
    return { user, key: key.json().id as string };
  }

  it("a denied write changes nothing", async () => {
    const vars = await fixtures(own);
    for (const caller of ["billing", "read", "ingest", "garbage key"] as const) {
      await app.call("DELETE", `/v1/organizations/${own}/users/${vars.user}`, {
        key: keys[caller],
      });
      await app.call("DELETE", `/v1/organizations/${own}/api-keys/${vars.key}`, {
        key: keys[caller],
      });
      await app.call("PATCH", `/v1/organizations/${own}`, {
        key: keys[caller],
        body: { plan: "free" },
      });
    }
    await app.call("PATCH", `/v1/organizations/${own}`, {
      key: keys.admin,
      body: { plan: "free" },
    });
    expect((await app.call("GET", `/v1/organizations/${own}/users/${vars.user}`)).statusCode).toBe(
      200,
    );
    const listed = (await app.call("GET", `/v1/organizations/${own}/api-keys?limit=1000`)).json();
    expect(listed.data.find((k: { id: string }) => k.id === vars.key).revoked_at).toBeNull();
    expect((await app.call("GET", `/v1/organizations/${own}`)).json().plan).toBe("professional");
  });

  it("an org admin renames its organisation but cannot change its plan or overdraft limit", async () => {
    const renamed = await app.call("PATCH", `/v1/organizations/${own}`, {
      key: keys.admin,
      body: { name: "Renamed by its admin", metadata: { team: "ops" } },
    });
    expect(renamed.statusCode).toBe(200);
    expect(renamed.json()).toMatchObject({
      name: "Renamed by its admin",
      metadata: { team: "ops" },
    });
    for (const body of [
      { overdraft_limit: "1000" },
      { plan: "enterprise" },
      { name: "Sneaky", overdraft_limit: "5" },
    ]) {
      const res = await app.call("PATCH", `/v1/organizations/${own}`, { key: keys.admin, body });
      expect(res.statusCode).toBe(403);
      expect(res.json().error.code).toBe("forbidden");
    }
    const org = (await app.call("GET", `/v1/organizations/${own}`)).json();
    expect(org).toMatchObject({
      name: "Renamed by its admin",
      plan: "professional",
      overdraft_limit: "0",
    });
    const byPlatform = await app.call("PATCH", `/v1/organizations/${own}`, {
      body: { overdraft_limit: "10" },
    });
    expect(byPlatform.json().overdraft_limit).toBe("10");
    await app.call("PATCH", `/v1/organizations/${own}`, { body: { overdraft_limit: "0" } });
  });

  it("an org key cannot reach a foreign organisation's user or key through its own org path", async () => {
    const theirs = await fixtures(foreign);
    const admin = keys.admin;
    expect(
      (await app.call("GET", `/v1/organizations/${own}/users/${theirs.user}`, { key: admin }))
        .statusCode,
    ).toBe(404);
    expect(
      (await app.call("DELETE", `/v1/organizations/${own}/api-keys/${theirs.key}`, { key: admin }))
        .statusCode,
    ).toBe(404);
    const list = (
      await app.call("GET", `/v1/organizations/${own}/users?limit=1000`, { key: admin })
    )
      .json()
      .data.map((u: { id: string }) => u.id);
    expect(list).not.toContain(theirs.user);
  });

  it("malformed Authorization headers are 401", async () => {
    for (const authorization of ["Basic dXNlcjpwYXNz", "Bearer", "Bearer a b", app.platformKey]) {
      const res = await app.call("GET", "/v1/organizations", {
        key: null,
        headers: { authorization },
      });
      expect(res.statusCode, authorization).toBe(401);
      expect(res.json().error.code).toBe("unauthenticated");
    }
  });

  it("HEAD requests are authenticated like GET", async () => {
    const res = await app.runtime.app.inject({ method: "HEAD", url: `/v1/organizations/${own}` });
    expect(res.statusCode).toBe(401);
  });
});
