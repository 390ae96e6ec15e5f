import { beforeAll, describe, expect, it } from "vitest";
import { createTestApp } from "../../../test/support/app.js";

type Who = "none" | "revoked" | "platform" | "admin" | "billing" | "ingest" | "read";
type OrgRole = Exclude<Who, "none" | "revoked" | "platform">;

interface Route {
  name: string;
  method: "GET" | "POST";
  /** Path below /v1/organizations/{org}/; `txn` is a transaction of that organisation. */
  path: (txn: string) => string;
  body?: unknown;
  /** Organisation roles allowed (platform keys always are). */
  roles: readonly OrgRole[];
  status: number;
}

const READ: readonly OrgRole[] = ["admin", "billing", "read"];

const ROUTES: Route[] = [
  {
    name: "GET balance",
    method: "GET",
    path: () => "balance",
    roles: ["admin", "billing", "ingest", "read"],
    status: 200,
  },
  {
    name: "GET credit-blocks",
    method: "GET",
    path: () => "credit-blocks",
    roles: READ,
    status: 200,
  },
  { name: "GET transactions", method: "GET", path: () => "transactions", roles: READ, status: 200 },
  {
    name: "GET transactions.csv",
    method: "GET",
    path: () => "transactions.csv",
    roles: READ,
    status: 200,
  },
  {
    name: "GET transactions/{id}",
    method: "GET",
    path: (txn) => `transactions/${txn}`,
    roles: READ,
    status: 200,
  },
  {
    name: "GET ledger/verify",
    method: "GET",
    path: () => "ledger/verify",
    roles: READ,
    status: 200,
  },
  {
    name: "POST adjustments",
    method: "POST",
    path: () => "adjustments",
    body: { amount: "+1", reason: "security matrix" },
    roles: ["admin"],
    status: 201,
  },
];

const WHO: Who[] = ["none", "revoked", "platform", "admin", "billing", "ingest", "read"];

function expected(route: Route, who: Who, foreign: boolean): { status: number; code?: string } {
  if (who === "none" || who === "revoked") return { status: 401, code: "unauthenticated" };
  if (who === "platform") return { status: route.status };
  // Another organisation is answered exactly like an unknown one, whatever the role.
  if (foreign) return { status: 404, code: "not_found" };
  if (!route.roles.includes(who)) return { status: 403, code: "forbidden" };
  return { status: route.status };
}

describe("ledger security", async () => {
  const app = await createTestApp();
  const own = { id: "", external: "sec-own", txn: "" };
  const other = { id: "", external: "sec-other", txn: "" };
  const keys = {} as Record<Who, string | null>;

  beforeAll(async () => {
    for (const org of [own, other]) {
      org.id = await app.createOrg({ external_id: org.external });
      const res = await app.call("POST", `/v1/organizations/${org.id}/adjustments`, {
        body: { amount: "+1000", reason: "seed" },
      });
      expect(res.statusCode, res.body).toBe(201);
      org.txn = res.json().id;
    }
    keys.none = null;
    keys.platform = app.platformKey;
    for (const role of ["admin", "billing", "ingest", "read"] as const) {
      keys[role] = await app.orgKey(own.id, role);
    }
    const created = await app.call("POST", `/v1/organizations/${own.id}/api-keys`, {
      body: { name: "to revoke", role: "admin" },
    });
    keys.revoked = created.json().key;
    const revoked = await app.call(
      "DELETE",
      `/v1/organizations/${own.id}/api-keys/${created.json().id}`,
    );
    expect(revoked.statusCode, revoked.body).toBeLessThan(300);
  });

  const state = async (orgId: string) => {
    const b = (await app.call("GET", `/v1/organizations/${orgId}/balance`)).json();
    return { balance: b.balance, last_sequence: b.last_sequence };
  };

  const cases = ROUTES.flatMap((route) =>
    WHO.flatMap((who) =>
      [false, true].map((foreign) => ({ route, who, foreign, ...expected(route, who, foreign) })),
    ),
  );

  it.each(cases)(
    "$route.name with $who key on foreign=$foreign org → $status",
    async ({ route, who, foreign, status, code }) => {
      const org = foreign ? other : own;
      const before = await state(org.id);
      const res = await app.call(
        route.method,
        `/v1/organizations/${org.id}/${route.path(org.txn)}`,
        {
          key: keys[who],
          body: route.body,
        },
      );
      expect(res.statusCode, res.body).toBe(status);
      if (code) {
        expect(res.json().error).toMatchObject({ code });
        // A refusal changes nothing.
        expect(await state(org.id)).toEqual(before);
      } else if (route.method === "GET" && route.path("") !== "transactions.csv") {
        const body = res.json();
        if ("org_id" in body) expect(body.org_id).toBe(org.id);
      }
    },
  );

  it("a foreign organisation is indistinguishable from an unknown one", async () => {
    for (const route of ROUTES) {
      const call = (orgId: string) =>
        app.call(route.method, `/v1/organizations/${orgId}/${route.path(other.txn)}`, {
          key: keys.admin,
          body: route.body,
        });
      const foreign = await call(other.id);
      const unknown = await call("org_00000000000000000000000000");
      expect(foreign.statusCode).toBe(404);
      expect(unknown.statusCode).toBe(404);
      const strip = (r: typeof foreign) => ({ ...r.json().error, request_id: undefined });
      expect(strip(foreign)).toEqual(strip(unknown));
    }
  });

  it("a transaction of another organisation is 404 even under the caller's own org", async () => {
    const res = await app.call("GET", `/v1/organizations/${own.id}/transactions/${other.txn}`, {
      key: keys.read,
    });
    expect(res.statusCode).toBe(404);
    expect(res.json().error.code).toBe("not_found");
  });

  it.each(ROUTES)("$name accepts ext:<external_id> in the path", async (route) => {
    const res = await app.call(
      route.method,
      `/v1/organizations/ext:${own.external}/${route.path(own.txn)}`,
      { key: keys.admin, body: route.body },
    );
    expect(res.statusCode, res.body).toBe(route.status);
    const foreign = await app.call(
      route.method,
      `/v1/organizations/ext:${other.external}/${route.path(other.txn)}`,
      { key: keys.admin, body: route.body },
    );
    expect(foreign.statusCode).toBe(404);
    const platform = await app.call(
      route.method,
      `/v1/organizations/ext:${other.external}/${route.path(other.txn)}`,
      { body: route.body },
    );
    expect(platform.statusCode, platform.body).toBe(route.status);
  });

  it("ledgers stay consistent after the whole matrix", async () => {
    for (const org of [own, other]) {
      const res = await app.call("GET", `/v1/organizations/${org.id}/ledger/verify`);
      expect(res.json()).toMatchObject({ ok: true, first_bad_sequence: null });
    }
    // Only the seeds and the allowed adjustments (+1 each) were written: own org — platform and
    // admin in the matrix, admin via ext:; other org — platform in the matrix and via ext:.
    expect(await state(own.id)).toEqual({ balance: "1003", last_sequence: 4 });
    expect(await state(other.id)).toEqual({ balance: "1002", last_sequence: 3 });
  });
});
