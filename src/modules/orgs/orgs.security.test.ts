import { describe, expect, it } from "vitest";
import { createTestApp } from "../../../test/support/app.js";
import type { Role } from "../../app/http.js";

/**
 * The security matrix of the orgs module: every route × every kind of caller × own / foreign
 * organisation. A new route is one row in ROUTES; the completeness test fails until it has one.
 */

type OrgRole = Exclude<Role, "platform">;
type Caller = "no key" | "revoked key" | "garbage key" | "platform" | OrgRole;
type Target = "own" | "foreign" | "foreign ext";

const CALLERS: Caller[] = [
  "no key",
  "revoked key",
  "garbage key",
  "platform",
  "admin",
  "billing",
  "ingest",
  "read",
];
const TARGETS: Target[] = ["own", "foreign", "foreign ext"];

/** Values substituted into a path: `{org}`, `{user}`, `{key}`. */
type Vars = { org: string; orgId: string; user: string; key: string };

interface RouteCase {
  method: "GET" | "POST" | "PATCH" | "DELETE";
  /** As in the OpenAPI document, with `{org_id}`, `{user_id}`, `{key_id}`. */
  path: string;
  /** Organisation roles allowed; platform keys are always allowed. */
  roles: readonly OrgRole[];
  success: number;
  body?: (vars: Vars, n: number) => unknown;
  /** Fresh resources the call needs beyond those named in the path. */
  needs?: ("user" | "key")[];
}

const ROUTES: RouteCase[] = [
  {
    method: "POST",
    path: "/v1/organizations",
    roles: [],
    success: 201,
    body: (_v, n) => ({ name: `Matrix ${n}` }),
  },
  { method: "GET", path: "/v1/organizations", roles: [], success: 200 },
  {
    method: "GET",
    path: "/v1/organizations/{org_id}",
    roles: ["admin", "billing", "ingest", "read"],
    success: 200,
  },
  {
    method: "PATCH",
    path: "/v1/organizations/{org_id}",
    roles: [],
    success: 200,
    body: (_v, n) => ({ name: `Renamed ${n}` }),
  },
  {
    method: "POST",
    path: "/v1/organizations/{org_id}/users",
    roles: ["admin"],
    success: 201,
    body: (_v, n) => ({ id: `new-${n}`, email: `new-${n}@example.com`, role: "viewer" }),
  },
  {
    method: "GET",
    path: "/v1/organizations/{org_id}/users",
    roles: ["admin", "billing", "read"],
    success: 200,
  },
  {
    method: "GET",
    path: "/v1/organizations/{org_id}/users/{user_id}",
    roles: ["admin", "billing", "read"],
    success: 200,
  },
  {
    method: "PATCH",
    path: "/v1/organizations/{org_id}/users/{user_id}",
    roles: ["admin"],
    success: 200,
    body: () => ({ name: "Patched" }),
  },
  {
    method: "DELETE",
    path: "/v1/organizations/{org_id}/users/{user_id}",
    roles: ["admin"],
    success: 204,
  },
  {
    method: "POST",
    path: "/v1/organizations/{org_id}/api-keys",
    roles: ["admin"],
    success: 201,
    body: () => ({ name: "matrix", role: "read" }),
  },
  { method: "GET", path: "/v1/organizations/{org_id}/api-keys", roles: ["admin"], success: 200 },
  {
    method: "DELETE",
    path: "/v1/organizations/{org_id}/api-keys/{key_id}",
    roles: ["admin"],
    success: 204,
  },
  {
    method: "POST",
    path: "/v1/platform-keys",
    roles: [],
    success: 201,
    body: () => ({ name: "matrix" }),
  },
  {
    method: "POST",
    path: "/v1/organizations/{org_id}/portal-sessions",
    roles: ["admin"],
    success: 201,
    body: (v) => ({ user_id: v.user }),
    needs: ["user"],
  },
];

/** The OpenAPI tags of this module's routes, for the completeness check. */
const MODULE_TAGS = ["organizations", "users", "api keys", "portal"];

const STATUS_CODES: Record<number, string> = {
  401: "unauthenticated",
  403: "forbidden",
  404: "not_found",
};

function expected(route: RouteCase, caller: Caller, target: Target | null): number {
  if (caller === "no key" || caller === "revoked key" || caller === "garbage key") return 401;
  if (caller === "platform") return route.success;
  // Another organisation's ids are answered exactly like unknown ones, whatever the role.
  if (target !== null && target !== "own") return 404;
  return route.roles.includes(caller) ? route.success : 403;
}

describe("orgs security matrix", async () => {
  const app = await createTestApp();
  const own = await app.createOrg({ external_id: "matrix-own" });
  const foreign = await app.createOrg({ external_id: "matrix-foreign" });
  const keys: Record<Caller, string | null> = {
    "no key": null,
    "revoked key": await app.orgKey(own, "admin"),
    "garbage key": "tally_0000000000000000000000000000000000000000",
    platform: app.platformKey,
    admin: await app.orgKey(own, "admin"),
    billing: await app.orgKey(own, "billing"),
    ingest: await app.orgKey(own, "ingest"),
    read: await app.orgKey(own, "read"),
  };
  const revokedId = (await app.call("GET", `/v1/organizations/${own}/api-keys`))
    .json()
    .data.find((k: { key_prefix: string }) => keys["revoked key"]!.startsWith(k.key_prefix)).id;
  expect(
    (await app.call("DELETE", `/v1/organizations/${own}/api-keys/${revokedId}`)).statusCode,
  ).toBe(204);

  let n = 0;
  /** Fresh resources in the target organisation, so destructive rows do not interfere. */
  async function fixtures(
    orgId: string,
    ref: string,
    needs: ("user" | "key")[] = ["user", "key"],
  ): Promise<Vars> {
    const vars: Vars = { org: ref, orgId, user: "none", key: "none" };
    if (needs.includes("user")) {
      vars.user = `u-${++n}`;
      const created = await app.call("POST", `/v1/organizations/${orgId}/users`, {
        body: { id: vars.user, email: `${vars.user}@example.com`, role: "viewer" },
      });
      expect(created.statusCode).toBe(201);
    }
    if (needs.includes("key")) {
      const key = await app.call("POST", `/v1/organizations/${orgId}/api-keys`, {
        body: { name: "victim", role: "read" },
      });
      expect(key.statusCode).toBe(201);
      vars.key = key.json().id;
    }
    return vars;
  }

  const needsOf = (route: RouteCase) => [
    ...(route.needs ?? []),
    ...(route.path.includes("{user_id}") ? (["user"] as const) : []),
    ...(route.path.includes("{key_id}") ? (["key"] as const) : []),
  ];

  const refs: Record<Target, [string, string]> = {
    own: [own, own],
    foreign: [foreign, foreign],
    "foreign ext": [foreign, "ext:matrix-foreign"],
  };

  it.each(ROUTES.map((r) => [`${r.method} ${r.path}`, r] as const))("%s", async (_name, route) => {
    const isOrgRoute = route.path.includes("{org_id}");
    const actual: Record<string, string> = {};
    const want: Record<string, string> = {};
    for (const caller of CALLERS) {
      for (const target of isOrgRoute ? TARGETS : [null]) {
        const [orgId, ref] = refs[target ?? "own"];
        const vars = await fixtures(orgId, ref, needsOf(route));
        const url = route.path
          .replace("{org_id}", vars.org)
          .replace("{user_id}", vars.user)
          .replace("{key_id}", vars.key);
        const res = await app.call(route.method, url, {
          key: keys[caller],
          body: route.body?.(vars, ++n),
        });
        const cell = target ? `${caller} → ${target}` : caller;
        const code = res.statusCode >= 400 ? ` ${res.json().error?.code}` : "";
        actual[cell] = `${res.statusCode}${code}`;
        const status = expected(route, caller, target);
        want[cell] = `${status}${STATUS_CODES[status] ? ` ${STATUS_CODES[status]}` : ""}`;
      }
    }
    expect(actual).toEqual(want);
  });

  it("a denied write changes nothing", async () => {
    const vars = await fixtures(own, own);
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

  it("an org key cannot reach a foreign organisation's user or key through its own org path", async () => {
    const theirs = await fixtures(foreign, foreign);
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

  it("every route of the module has a row", async () => {
    const doc = (await app.call("GET", "/openapi.json", { key: null })).json();
    const documented: string[] = [];
    for (const [path, operations] of Object.entries<Record<string, { tags?: string[] }>>(
      doc.paths,
    )) {
      for (const [method, op] of Object.entries(operations)) {
        if (op.tags?.some((t) => MODULE_TAGS.includes(t))) {
          documented.push(`${method.toUpperCase()} ${path}`);
        }
      }
    }
    expect(documented.sort()).toEqual(ROUTES.map((r) => `${r.method} ${r.path}`).sort());
  });
});
