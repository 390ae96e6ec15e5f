import { sql } from "kysely";
import { describe, expect, it } from "vitest";
import type { Role } from "../../src/app/http.js";
import { createTestApp, type TestApp } from "./app.js";

/**
 * The security matrix runner shared by the modules' `*.security.test.ts` files: every route of a
 * module × every kind of caller × own / foreign organisations (and resources). Each module lists
 * its routes in `<module>.security.matrix.ts`; `test/isolation.test.ts` fails while any `/v1`
 * operation of the OpenAPI document is not a row of exactly one module's matrix.
 *
 * What a cell expects follows from the row alone (`scope`, `roles`, `success`):
 * - no key, a revoked key or an unknown key → 401 `unauthenticated` (public rows: no difference);
 * - a browser session without its CSRF token on POST/PUT/PATCH/DELETE → 403 `forbidden`;
 * - another organisation, by id or `ext:`, or an unknown one → 404 `not_found`, exactly the same
 *   answer as for an unknown organisation (org keys and portal sessions; platform callers see
 *   every organisation);
 * - a role the row does not list → 403 `forbidden` (platform keys and operator sessions are
 *   always allowed), and so is a portal session on a row marked `portal: false`;
 * - an `{org_id}` route on an organisation whose plan has no credits billing → 403
 *   `plan_not_eligible` when the row says `credits`;
 * - a resource of another organisation under one's own organisation's path → 404, platform too;
 * - otherwise the row's documented success status.
 * Every refused write leaves the module's tables unchanged, and no answer to an organisation's
 * caller contains another organisation's ids.
 */

export type OrgRole = Exclude<Role, "platform">;

export const CALLERS = [
  "no key",
  "revoked key",
  "garbage key",
  "platform",
  "admin",
  "billing",
  "ingest",
  "read",
  "operator session",
  "portal admin",
  "portal billing",
  "portal viewer",
  "portal admin, no CSRF token",
] as const;
export type Caller = (typeof CALLERS)[number];

/** The API role each authenticated caller acts with. */
const ROLE_OF: Record<Exclude<Caller, "no key" | "revoked key" | "garbage key">, Role> = {
  platform: "platform",
  admin: "admin",
  billing: "billing",
  ingest: "ingest",
  read: "read",
  "operator session": "platform",
  "portal admin": "admin",
  "portal billing": "billing",
  "portal viewer": "read",
  "portal admin, no CSRF token": "admin",
};

export type Target =
  /** The caller's organisation by id / by `ext:<external_id>`. */
  | "own"
  | "own ext"
  /** Another organisation by id / by `ext:<external_id>`. */
  | "foreign"
  | "foreign ext"
  /** An organisation id that does not exist. */
  | "unknown"
  /** The caller's organisation in the path, a resource of another organisation in it. */
  | "foreign resource"
  /** An organisation (not the caller's) whose plan does not include credits billing. */
  | "no credits plan"
  /** Nothing organisation-scoped. */
  | "-";

export interface OrgRef {
  id: string;
  /** As written in the path or body: the id or `ext:<external_id>`. */
  ref: string;
}

export interface FixtureInput {
  app: TestApp;
  /** The organisation the request names (in the path, the body or the query). */
  org: OrgRef;
  /** The organisation that owns the resources the fixture creates. */
  owner: OrgRef;
  /** A number unique to this call, for unique names and ids. */
  n: number;
}

export interface Fixture {
  /** Values for the path's placeholders other than `{org_id}`. */
  params?: Record<string, string>;
  body?: unknown;
  /** Query string without `?`. */
  query?: string;
}

export interface MatrixRoute {
  method: "GET" | "POST" | "PUT" | "PATCH" | "DELETE";
  /** Exactly as in the OpenAPI document. */
  path: string;
  /**
   * - `org`: `{org_id}` in the path, checked before the role;
   * - `resource`: no organisation in the path, but the request names an organisation or one of
   *   its resources (body, query, or an id in the path), checked after the role;
   * - `global`: nothing organisation-scoped (catalogues, platform-wide views);
   * - `public`: no authentication at all (the answer is the same whoever calls).
   */
  scope: "org" | "resource" | "global" | "public";
  /** Organisation roles allowed; platform callers always are. */
  roles: readonly OrgRole[];
  success: number;
  /** `org` routes: the organisation's plan must include credits billing. */
  credits?: boolean;
  /** Refused to customer users' portal sessions whatever their role (403). */
  portal?: false;
  /** `resource` routes: the targets that apply (default own and foreign). */
  targets?: readonly Target[];
  /** Builds what one call needs; called afresh for every write, once per owner for reads. */
  fixture?: (input: FixtureInput) => Promise<Fixture> | Fixture;
  /** Further checks on a successful answer. */
  verify?: (
    input: FixtureInput & { body: string; contentType: string; world: World },
  ) => Promise<void> | void;
}

export interface SecurityMatrix {
  module: string;
  routes: readonly MatrixRoute[];
  /**
   * Tables (or `table(col, …)`) whose content a refused write must leave unchanged.
   * Columns that change on reads (such as `api_keys.last_used_at`) must be left out.
   */
  tables: readonly string[];
  /** Environment for the test app. */
  env?: Record<string, string>;
  /** Runs once after the organisations and callers exist (balances, packages, …). */
  setup?: (world: World) => Promise<void>;
}

export interface World {
  app: TestApp;
  own: OrgRef & { external: string };
  foreign: OrgRef & { external: string };
  starter: OrgRef;
  /** Credentials of every caller, all bound to `own` where organisation-bound. */
  credentials: Record<Caller, Credentials>;
}

interface Credentials {
  key: string | null;
  cookie?: string;
  csrf?: string;
}

const UNKNOWN_ORG = "org_00000000000000000000000000";
const UNSAFE = new Set(["POST", "PUT", "PATCH", "DELETE"]);
const CODES: Record<number, string> = {
  401: "unauthenticated",
  403: "forbidden",
  404: "not_found",
};

export const operationOf = (r: Pick<MatrixRoute, "method" | "path">) => `${r.method} ${r.path}`;

function extraParams(path: string): string[] {
  return [...path.matchAll(/\{([a-z_]+)\}/g)].map((m) => m[1]!).filter((p) => p !== "org_id");
}

export function targetsOf(route: MatrixRoute): Target[] {
  switch (route.scope) {
    case "org":
      return [
        "own",
        "own ext",
        "foreign",
        "foreign ext",
        "unknown",
        ...(extraParams(route.path).length > 0
          ? (["foreign resource"] as const)
          : (["no credits plan"] as const)),
      ];
    case "resource":
      return [...(route.targets ?? ["own", "foreign"])];
    default:
      return ["-"];
  }
}

/**
 * Cells that would only repeat another: a missing or bad key is answered the same way whatever
 * the path names (own, foreign, unknown and foreign-resource cells show that), and reads need no
 * CSRF token (the session's ordinary cells show that).
 */
function worthCalling(route: MatrixRoute, caller: Caller, target: Target): boolean {
  if (caller === "portal admin, no CSRF token") return UNSAFE.has(route.method);
  if (caller === "no key" || caller === "revoked key" || caller === "garbage key") {
    return target !== "own ext" && target !== "foreign ext" && target !== "no credits plan";
  }
  return true;
}

/** What a cell must answer: status, and the error code for refusals. */
export function expectedCell(route: MatrixRoute, caller: Caller, target: Target): string {
  const cell = (status: number, code = CODES[status]) => (code ? `${status} ${code}` : `${status}`);
  if (route.scope === "public") return cell(route.success);
  if (caller === "no key" || caller === "revoked key" || caller === "garbage key") return cell(401);
  if (caller === "portal admin, no CSRF token" && UNSAFE.has(route.method)) return cell(403);
  const role = ROLE_OF[caller];
  const platform = role === "platform";
  const allowed =
    (platform || route.roles.includes(role)) &&
    !(route.portal === false && caller.startsWith("portal"));
  const otherOrg = target === "foreign" || target === "foreign ext" || target === "no credits plan";
  if (route.scope === "org") {
    if (target === "unknown" || (otherOrg && !platform)) return cell(404);
    if (!allowed) return cell(403);
    if (target === "no credits plan" && route.credits) return cell(403, "plan_not_eligible");
    if (target === "foreign resource") return cell(404);
    return cell(route.success);
  }
  if (!allowed) return cell(403);
  if (route.scope === "resource" && otherOrg && !platform) return cell(404);
  return cell(route.success);
}

/** Organisations, keys and browser sessions for a matrix. */
export async function createWorld(app: TestApp, name: string): Promise<World> {
  const external = (side: string) => `${name}-${side}`;
  const own = { id: "", ref: "", external: external("own") };
  const foreign = { id: "", ref: "", external: external("foreign") };
  for (const org of [own, foreign]) {
    org.id = await app.createOrg({ external_id: org.external });
    org.ref = org.id;
  }
  const starterId = await app.createOrg({ plan: "starter" });
  const starter = { id: starterId, ref: starterId };

  const revoked = await app.call("POST", `/v1/organizations/${own.id}/api-keys`, {
    body: { name: "revoked", role: "admin" },
  });
  expect(revoked.statusCode, revoked.body).toBe(201);
  const revokedOk = await app.call(
    "DELETE",
    `/v1/organizations/${own.id}/api-keys/${revoked.json().id}`,
  );
  expect(revokedOk.statusCode, revokedOk.body).toBe(204);

  const login = await app.call("POST", "/web/login", {
    key: null,
    body: { api_key: app.platformKey },
  });
  expect(login.statusCode, login.body).toBe(200);
  const operator = { key: null, cookie: cookieOf(login), csrf: login.json().csrf_token };

  const portal = async (role: "admin" | "billing" | "viewer"): Promise<Credentials> => {
    const user = `matrix-${role}`;
    const created = await app.call("POST", `/v1/organizations/${own.id}/users`, {
      body: { id: user, email: `${user}@example.com`, role },
    });
    expect(created.statusCode, created.body).toBe(201);
    const link = await app.call("POST", `/v1/organizations/${own.id}/portal-sessions`, {
      body: { user_id: user },
    });
    expect(link.statusCode, link.body).toBe(201);
    const url = new URL(link.json().url);
    const entered = await app.call("GET", url.pathname + url.search, { key: null });
    expect(entered.statusCode, entered.body).toBe(303);
    const cookie = cookieOf(entered);
    const session = await app.call("GET", "/web/session", { key: null, headers: { cookie } });
    expect(session.statusCode, session.body).toBe(200);
    return { key: null, cookie, csrf: session.json().csrf_token };
  };
  const portalAdmin = await portal("admin");

  return {
    app,
    own,
    foreign,
    starter,
    credentials: {
      "no key": { key: null },
      "revoked key": { key: revoked.json().key },
      "garbage key": { key: "tally_0000000000000000000000000000000000000000" },
      platform: { key: app.platformKey },
      admin: { key: await app.orgKey(own.id, "admin") },
      billing: { key: await app.orgKey(own.id, "billing") },
      ingest: { key: await app.orgKey(own.id, "ingest") },
      read: { key: await app.orgKey(own.id, "read") },
      "operator session": operator,
      "portal admin": portalAdmin,
      "portal billing": await portal("billing"),
      "portal viewer": await portal("viewer"),
      "portal admin, no CSRF token": { key: null, cookie: portalAdmin.cookie },
    },
  };
}

function cookieOf(res: { headers: Record<string, unknown> }): string {
  const raw = res.headers["set-cookie"];
  const list = (Array.isArray(raw) ? raw : [raw]).filter((c): c is string => typeof c === "string");
  const found = list.find((c) => c.startsWith("tally_session="));
  if (!found) throw new Error("no session cookie");
  return found.split(";")[0]!;
}

/** Calls the API as `caller`. */
export function callAs(
  world: World,
  caller: Caller,
  method: MatrixRoute["method"],
  url: string,
  body?: unknown,
) {
  const c = world.credentials[caller];
  const headers: Record<string, string> = {};
  if (c.cookie) headers.cookie = c.cookie;
  if (c.csrf) headers["x-csrf-token"] = c.csrf;
  return world.app.call(method, url, { key: c.key, body, headers });
}

/** A digest of the tables' contents, in one round trip. */
async function tableState(app: TestApp, tables: readonly string[]): Promise<unknown> {
  if (tables.length === 0) return null;
  const parts = tables.map((spec) => {
    const m = /^([a-z_]+)(?:\(([a-z_, ]+)\))?$/.exec(spec);
    if (!m) throw new Error(`bad table spec ${spec}`);
    const row = m[2] ? `row(${m[2]})::text` : "t::text";
    return `(select md5(coalesce(string_agg(${row}, '|' order by ${row}), '')) from ${m[1]} t) as "${m[1]}"`;
  });
  const result = await sql.raw(`select ${parts.join(", ")}`).execute(app.runtime.ctx.db);
  return result.rows[0];
}

/** Every `org_id` value anywhere in a JSON value. */
function orgIdsIn(value: unknown, out: unknown[] = []): unknown[] {
  if (Array.isArray(value)) for (const v of value) orgIdsIn(v, out);
  else if (value && typeof value === "object") {
    for (const [k, v] of Object.entries(value)) {
      if (k === "org_id") out.push(v);
      else orgIdsIn(v, out);
    }
  }
  return out;
}

/** Registers the matrix of one module: one test per route. */
export function runSecurityMatrix(matrix: SecurityMatrix): void {
  describe(`${matrix.module} security matrix`, async () => {
    const app = await createTestApp({ env: matrix.env });
    const world = await createWorld(app, `${matrix.module}-matrix`);
    await matrix.setup?.(world);
    const orgOf: Record<Target, { org: OrgRef; owner: OrgRef }> = {
      own: { org: world.own, owner: world.own },
      "own ext": { org: { id: world.own.id, ref: `ext:${world.own.external}` }, owner: world.own },
      foreign: { org: world.foreign, owner: world.foreign },
      "foreign ext": {
        org: { id: world.foreign.id, ref: `ext:${world.foreign.external}` },
        owner: world.foreign,
      },
      unknown: { org: { id: UNKNOWN_ORG, ref: UNKNOWN_ORG }, owner: world.own },
      "foreign resource": { org: world.own, owner: world.foreign },
      "no credits plan": { org: world.starter, owner: world.starter },
      "-": { org: world.own, owner: world.own },
    };
    let n = 0;

    it.each(matrix.routes.map((r) => [operationOf(r), r] as const))("%s", async (_, route) => {
      const cached = new Map<string, Fixture>();
      const fixture = async (target: Target): Promise<Fixture & FixtureInput> => {
        const input: FixtureInput = { app, ...orgOf[target], n: ++n };
        const key = input.owner.id;
        let made = UNSAFE.has(route.method) ? undefined : cached.get(key);
        if (!made) {
          made = (await route.fixture?.(input)) ?? {};
          if (!UNSAFE.has(route.method)) cached.set(key, made);
        }
        return { ...input, ...made };
      };

      const actual: Record<string, string> = {};
      const want: Record<string, string> = {};
      const problems: string[] = [];
      const errors: Record<string, string> = {};
      for (const caller of CALLERS) {
        for (const target of targetsOf(route)) {
          if (!worthCalling(route, caller, target)) continue;
          const f = await fixture(target);
          let url = route.path.replace("{org_id}", encodeURIComponent(f.org.ref));
          for (const p of extraParams(route.path)) {
            const value = f.params?.[p];
            if (value === undefined)
              throw new Error(`${operationOf(route)}: no fixture for {${p}}`);
            url = url.replace(`{${p}}`, encodeURIComponent(value));
          }
          if (f.query) url += `?${f.query}`;
          const cell = target === "-" ? caller : `${caller} → ${target}`;
          const expected = expectedCell(route, caller, target);
          const refusal = Number(expected.slice(0, 3)) >= 400;
          const checkState = refusal && UNSAFE.has(route.method);
          const before = checkState ? await tableState(app, matrix.tables) : null;

          const res = await callAs(world, caller, route.method, url, f.body);
          const json = String(res.headers["content-type"] ?? "").includes("json");
          const code = res.statusCode >= 400 && json ? ` ${res.json().error?.code}` : "";
          actual[cell] = `${res.statusCode}${code}`;
          want[cell] = expected;
          if (res.statusCode === 404 && json) {
            errors[cell] = JSON.stringify({ ...res.json().error, request_id: undefined });
          }

          if (checkState && actual[cell] === expected) {
            const after = await tableState(app, matrix.tables);
            if (JSON.stringify(after) !== JSON.stringify(before)) {
              problems.push(
                `${cell}: a refused request changed ${JSON.stringify({ before, after })}`,
              );
            }
          }
          const role = caller in ROLE_OF ? ROLE_OF[caller as keyof typeof ROLE_OF] : null;
          if (role !== "platform") {
            // Nothing of another organisation reaches an organisation's caller.
            const theirs = [world.foreign.id, world.starter.id];
            if (f.owner.id !== world.own.id) theirs.push(...Object.values(f.params ?? {}));
            for (const id of theirs) {
              if (res.body.includes(id)) problems.push(`${cell}: the answer contains ${id}`);
            }
          }
          if (res.statusCode < 300 && actual[cell] === expected) {
            if (json && route.scope !== "global" && route.scope !== "public") {
              for (const id of orgIdsIn(res.json())) {
                if (id !== f.org.id) problems.push(`${cell}: the answer has org_id ${id}`);
              }
            }
            await route.verify?.({
              ...f,
              world,
              body: res.body,
              contentType: String(res.headers["content-type"] ?? ""),
            });
          }
        }
      }
      expect(actual).toEqual(want);
      expect(problems).toEqual([]);
      // Another organisation is answered exactly like one that does not exist.
      if (route.scope === "org") {
        for (const caller of CALLERS) {
          const unknown = errors[`${caller} → unknown`];
          for (const target of ["foreign", "foreign ext", "no credits plan"]) {
            const foreign = errors[`${caller} → ${target}`];
            if (foreign !== undefined) expect(foreign, `${caller} → ${target}`).toBe(unknown);
          }
        }
      }
    });

    it("leaves the organisations' ledgers verifiable", async () => {
      for (const org of [world.own, world.foreign]) {
        const res = await app.call("GET", `/v1/organizations/${org.id}/ledger/verify`);
        expect(res.json()).toMatchObject({ ok: true, first_bad_sequence: null });
      }
    });
  });
}
