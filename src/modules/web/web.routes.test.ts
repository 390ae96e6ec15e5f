import { describe, expect, it } from "vitest";
import { createTestApp, type TestApp } from "../../../test/support/app.js";
import { PUBLIC_WEBHOOK_URL } from "../notify/notify.security.matrix.js";

const app = await createTestApp();

interface Jar {
  cookie: string;
  csrf: string;
}

function setCookieOf(res: { headers: Record<string, unknown> }, name = "tally_session"): string {
  const raw = res.headers["set-cookie"];
  const list = Array.isArray(raw) ? raw : raw ? [raw] : [];
  const found = list.find((c: string) => c.startsWith(`${name}=`));
  if (!found) throw new Error("no session cookie set");
  return found as string;
}

async function signIn(t: TestApp = app, key = t.platformKey): Promise<Jar> {
  const res = await t.call("POST", "/web/login", { key: null, body: { api_key: key } });
  expect(res.statusCode).toBe(200);
  return { cookie: setCookieOf(res).split(";")[0]!, csrf: res.json().csrf_token };
}

/** A request authenticated by the session cookie only (no Authorization header). */
function asBrowser(
  jar: Jar,
  method: "GET" | "POST" | "PUT" | "PATCH" | "DELETE",
  url: string,
  opts: { body?: unknown; csrf?: string | null; headers?: Record<string, string> } = {},
) {
  const headers: Record<string, string> = { cookie: jar.cookie, ...opts.headers };
  const csrf = opts.csrf === undefined ? jar.csrf : opts.csrf;
  if (csrf !== null) headers["x-csrf-token"] = csrf;
  return app.call(method, url, { key: null, body: opts.body, headers });
}

async function orgWithUsers() {
  const org = await app.createOrg();
  for (const [id, role] of [
    ["ada", "admin"],
    ["bill", "billing"],
    ["vic", "viewer"],
  ] as const) {
    const res = await app.call("POST", `/v1/organizations/${org}/users`, {
      body: { id, email: `${id}@example.com`, role },
    });
    expect(res.statusCode).toBe(201);
  }
  return org;
}

async function portalLink(org: string, user: string, returnUrl?: string): Promise<string> {
  const res = await app.call("POST", `/v1/organizations/${org}/portal-sessions`, {
    body: { user_id: user, ...(returnUrl ? { return_url: returnUrl } : {}) },
  });
  expect(res.statusCode).toBe(201);
  return new URL(res.json().url).pathname + new URL(res.json().url).search;
}

async function enterPortal(org: string, user: string): Promise<Jar> {
  const res = await app.call("GET", await portalLink(org, user), { key: null });
  expect(res.statusCode).toBe(303);
  expect(res.headers.location).toBe("/portal");
  const cookie = setCookieOf(res).split(";")[0]!;
  const session = await app.call("GET", "/web/session", { key: null, headers: { cookie } });
  expect(session.statusCode).toBe(200);
  return { cookie, csrf: session.json().csrf_token };
}

describe("operator sign-in", () => {
  it("exchanges a platform key for an httpOnly, SameSite=Lax session cookie that is not the key", async () => {
    const res = await app.call("POST", "/web/login", {
      key: null,
      body: { api_key: app.platformKey },
    });
    expect(res.statusCode).toBe(200);
    const cookie = setCookieOf(res);
    expect(cookie).toMatch(/^tally_session=tss_[A-Za-z0-9_-]+;/);
    expect(cookie).toContain("HttpOnly");
    expect(cookie).toContain("SameSite=Lax");
    expect(cookie).toContain("Path=/");
    expect(cookie).toContain("Max-Age=43200");
    expect(cookie).not.toContain("Secure");
    expect(cookie).not.toContain(app.platformKey);
    expect(res.body).not.toContain(app.platformKey);
    expect(res.headers["cache-control"]).toBe("no-store");
    const body = res.json();
    expect(body).toMatchObject({ kind: "operator", role: "platform", org: null, user: null });
    expect(body.csrf_token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(new Date(body.expires_at).getTime() - app.clock.now().getTime()).toBe(12 * 3600_000);
  });

  it("refuses organisation keys, unknown keys and bad bodies", async () => {
    const org = await app.createOrg();
    const adminKey = await app.orgKey(org, "admin");
    const orgKey = await app.call("POST", "/web/login", { key: null, body: { api_key: adminKey } });
    expect(orgKey.statusCode).toBe(403);
    expect(orgKey.headers["set-cookie"]).toBeUndefined();
    const unknown = await app.call("POST", "/web/login", {
      key: null,
      body: { api_key: "tally_nope" },
    });
    expect(unknown.statusCode).toBe(401);
    expect(unknown.json().error.code).toBe("unauthenticated");
    const bad = await app.call("POST", "/web/login", { key: null, body: { key: "x" } });
    expect(bad.statusCode).toBe(400);
  });

  it("acts as the platform key it signed in with, and state changes need the CSRF token", async () => {
    const jar = await signIn();
    expect((await asBrowser(jar, "GET", "/v1/organizations")).statusCode).toBe(200);
    expect((await asBrowser(jar, "GET", "/v1/organizations", { csrf: null })).statusCode).toBe(200);

    const noToken = await asBrowser(jar, "POST", "/v1/organizations", {
      body: { name: "Nope" },
      csrf: null,
    });
    expect(noToken.statusCode).toBe(403);
    expect(noToken.json().error.code).toBe("forbidden");
    const wrongToken = await asBrowser(jar, "POST", "/v1/organizations", {
      body: { name: "Nope" },
      csrf: "x".repeat(43),
    });
    expect(wrongToken.statusCode).toBe(403);
    const created = await asBrowser(jar, "POST", "/v1/organizations", {
      body: { name: "Made in the console" },
    });
    expect(created.statusCode).toBe(201);

    const adjusted = await asBrowser(
      jar,
      "POST",
      `/v1/organizations/${created.json().id}/adjustments`,
      {
        body: { amount: "+25", reason: "welcome credit" },
      },
    );
    expect(adjusted.statusCode).toBe(201);
    const keys = await app.runtime.ctx.db
      .selectFrom("api_keys")
      .select("id")
      .where("name", "=", "test platform")
      .execute();
    expect(adjusted.json().actor).toEqual({ type: "api_key", id: keys[0]!.id });
  });

  it("leaves API-key requests alone (no CSRF needed with a bearer key, even with a cookie)", async () => {
    const jar = await signIn();
    const res = await app.call("POST", "/v1/organizations", {
      body: { name: "Key request" },
      headers: { cookie: jar.cookie },
    });
    expect(res.statusCode).toBe(201);
  });

  it("replays Idempotency-Key per session", async () => {
    const jar = await signIn();
    const first = await asBrowser(jar, "POST", "/v1/organizations", {
      body: { name: "Once" },
      headers: { "idempotency-key": "console-1" },
    });
    const again = await asBrowser(jar, "POST", "/v1/organizations", {
      body: { name: "Once" },
      headers: { "idempotency-key": "console-1" },
    });
    expect(again.json().id).toBe(first.json().id);
    expect(again.headers["idempotent-replayed"]).toBe("true");
  });

  it("expires after 12 hours", async () => {
    const jar = await signIn();
    app.clock.advance(12 * 3600_000 - 1000);
    expect((await asBrowser(jar, "GET", "/web/session")).statusCode).toBe(200);
    app.clock.advance(2000);
    const expired = await asBrowser(jar, "GET", "/web/session");
    expect(expired.statusCode).toBe(204);
    expect(String(expired.headers["set-cookie"])).toMatch(/tally_session=;/);
    expect((await asBrowser(jar, "GET", "/v1/organizations")).statusCode).toBe(401);
  });

  it("ends at logout (which needs the CSRF token) and when the key is revoked", async () => {
    const jar = await signIn();
    expect((await asBrowser(jar, "POST", "/web/logout", { csrf: null })).statusCode).toBe(403);
    const out = await asBrowser(jar, "POST", "/web/logout");
    expect(out.statusCode).toBe(204);
    expect(String(out.headers["set-cookie"])).toMatch(/tally_session=;/);
    expect((await asBrowser(jar, "GET", "/v1/organizations")).statusCode).toBe(401);
    // Logging out again (stale cookie) is harmless.
    expect((await asBrowser(jar, "POST", "/web/logout")).statusCode).toBe(204);

    const created = await app.call("POST", "/v1/platform-keys", { body: { name: "temp" } });
    const temp = await signIn(app, created.json().key);
    expect((await asBrowser(temp, "GET", "/v1/organizations")).statusCode).toBe(200);
    await app.runtime.ctx.db
      .updateTable("api_keys")
      .set({ revoked_at: app.clock.now() })
      .where("id", "=", created.json().id)
      .execute();
    expect((await asBrowser(temp, "GET", "/v1/organizations")).statusCode).toBe(401);
  });

  it("never stores the session token or the key in clear", async () => {
    const jar = await signIn();
    const token = jar.cookie.split("=")[1]!;
    const rows = await app.runtime.ctx.db.selectFrom("web_sessions").selectAll().execute();
    const dump = JSON.stringify(rows);
    expect(dump).not.toContain(token);
    expect(dump).not.toContain(app.platformKey);
    expect(dump).not.toContain(jar.csrf);
  });
});

describe("portal sessions", () => {
  it("redeems a one-time link for a cookie bound to the organisation and user", async () => {
    const org = await orgWithUsers();
    const link = await portalLink(org, "bill", "https://app.example.com/settings");
    const res = await app.call("GET", link, { key: null });
    expect(res.statusCode).toBe(303);
    expect(res.headers.location).toBe("/portal");
    expect(res.headers["cache-control"]).toBe("no-store");
    expect(res.headers["referrer-policy"]).toBe("no-referrer");
    const cookie = setCookieOf(res);
    expect(cookie).toContain("HttpOnly");
    expect(cookie).toContain("SameSite=Lax");
    expect(cookie).toContain("Max-Age=7200");

    const session = await app.call("GET", "/web/session", {
      key: null,
      headers: { cookie: cookie.split(";")[0]! },
    });
    expect(session.json()).toMatchObject({
      kind: "portal",
      role: "billing",
      user_role: "billing",
      org: { id: org },
      user: { id: "bill", email: "bill@example.com" },
      return_url: "https://app.example.com/settings",
    });

    const again = await app.call("GET", link, { key: null });
    expect(again.statusCode).toBe(303);
    expect(again.headers.location).toBe("/portal?link=invalid");
    expect(again.headers["set-cookie"]).toBeUndefined();
  });

  it("refuses expired, unknown and missing tokens", async () => {
    const org = await orgWithUsers();
    const link = await portalLink(org, "ada");
    app.clock.advance(15 * 60_000 + 1);
    for (const url of [link, "/portal/enter?token=tps_unknown", "/portal/enter"]) {
      const res = await app.call("GET", url, { key: null });
      expect(res.statusCode).toBe(303);
      expect(res.headers.location).toBe("/portal?link=invalid");
    }
  });

  it("is scoped to its organisation and acts as the user", async () => {
    const org = await orgWithUsers();
    const other = await app.createOrg();
    const jar = await enterPortal(org, "bill");
    expect((await asBrowser(jar, "GET", `/v1/organizations/${org}/balance`)).statusCode).toBe(200);
    expect((await asBrowser(jar, "GET", `/v1/organizations/${other}/balance`)).statusCode).toBe(
      404,
    );
    expect((await asBrowser(jar, "GET", "/v1/organizations")).statusCode).toBe(403);
    // billing may not adjust credits
    const adjust = await asBrowser(jar, "POST", `/v1/organizations/${org}/adjustments`, {
      body: { amount: "+5", reason: "me" },
    });
    expect(adjust.statusCode).toBe(403);

    // Nor may a customer's admin: free credits, API keys, portal links and users are the
    // platform's to hand out, whatever the portal role.
    const admin = await enterPortal(org, "ada");
    for (const [path, body] of [
      ["adjustments", { amount: "+5", reason: "portal admin" }],
      ["api-keys", { name: "mine", role: "admin" }],
      ["portal-sessions", { user_id: "bill" }],
      ["users", { id: "eve", email: "eve@example.com", role: "admin" }],
    ] as const) {
      const refused = await asBrowser(admin, "POST", `/v1/organizations/${org}/${path}`, { body });
      expect(refused.statusCode, path).toBe(403);
      expect(refused.json().error.message).toMatch(/customer portal/);
    }
    expect((await app.call("GET", `/v1/organizations/${org}/api-keys`)).json().data).toEqual([]);
    // What the admin may do is done as the user.
    const alerts = await asBrowser(admin, "PUT", `/v1/organizations/${org}/alerts`, {
      body: { thresholds: ["10"] },
    });
    expect(alerts.statusCode, alerts.body).toBe(200);
  });

  it("attributes purchases to the portal user", async () => {
    const org = await orgWithUsers();
    const pkg = await app.call("POST", "/v1/credit-packages", {
      body: { name: "Starter", credits: "1000", bonus_credits: "100", price: "10.00" },
    });
    expect(pkg.statusCode).toBe(201);
    const jar = await enterPortal(org, "bill");
    const bought = await asBrowser(jar, "POST", `/v1/organizations/${org}/purchases`, {
      body: { package_id: pkg.json().id },
    });
    expect(bought.statusCode).toBe(201);
    expect(bought.json()).toMatchObject({
      user_id: "bill",
      actor: { type: "user", id: "bill" },
      success_url: expect.stringMatching(/\/portal\?purchase=pur_.*&checkout=success$/),
    });
  });

  it("viewers read but cannot change anything", async () => {
    const org = await orgWithUsers();
    const pkg = await app.call("POST", "/v1/credit-packages", {
      body: { name: "Viewer test", credits: "10", price: "1.00" },
    });
    const jar = await enterPortal(org, "vic");
    const session = await asBrowser(jar, "GET", "/web/session");
    expect(session.json()).toMatchObject({ role: "read", user_role: "viewer" });
    expect((await asBrowser(jar, "GET", `/v1/organizations/${org}/transactions`)).statusCode).toBe(
      200,
    );
    const buy = await asBrowser(jar, "POST", `/v1/organizations/${org}/purchases`, {
      body: { package_id: pkg.json().id },
    });
    expect(buy.statusCode).toBe(403);
    expect(buy.json().error.code).toBe("forbidden");
    const link = await asBrowser(jar, "POST", `/v1/organizations/${org}/portal-sessions`, {
      body: { user_id: "ada" },
    });
    expect(link.statusCode).toBe(403);
  });

  it("a link opened in a browser signed in to the operator console leaves that session alone", async () => {
    const org = await orgWithUsers();
    const operator = await signIn();
    const link = await portalLink(org, "ada");
    const res = await app.call("GET", link, { key: null, headers: { cookie: operator.cookie } });
    expect(res.statusCode).toBe(303);
    expect(res.headers.location).toBe("/portal?link=operator");
    expect(res.headers["set-cookie"]).toBeUndefined();
    const still = await asBrowser(operator, "GET", "/web/session");
    expect(still.statusCode).toBe(200);
    expect(still.json().kind).toBe("operator");
    // The link was not used: another browser can still enter with it.
    const elsewhere = await app.call("GET", link, { key: null });
    expect(elsewhere.headers.location).toBe("/portal");
  });

  it("a link for another account leaves a customer's portal session alone; one for the same user renews it", async () => {
    const org = await orgWithUsers();
    const other = await orgWithUsers();
    const jar = await enterPortal(org, "ada");
    for (const link of [await portalLink(other, "ada"), await portalLink(org, "bill")]) {
      const res = await app.call("GET", link, { key: null, headers: { cookie: jar.cookie } });
      expect(res.statusCode).toBe(303);
      expect(res.headers.location).toBe("/portal?link=signed-in");
      expect(res.headers["set-cookie"]).toBeUndefined();
      const still = await asBrowser(jar, "GET", "/web/session");
      expect(still.json()).toMatchObject({ kind: "portal", org: { id: org }, user: { id: "ada" } });
      // The link was not used: the browser it was meant for can still enter with it.
      expect((await app.call("GET", link, { key: null })).headers.location).toBe("/portal");
    }
    // The same user's new link (opened from the application again) replaces the session.
    const again = await app.call("GET", await portalLink(org, "ada"), {
      key: null,
      headers: { cookie: jar.cookie },
    });
    expect(again.headers.location).toBe("/portal");
    expect(setCookieOf(again)).toBeTruthy();
    expect((await asBrowser(jar, "GET", "/web/session")).statusCode).toBe(204);
    // An unusable link is reported as such, and the session stays.
    const renewed = { cookie: setCookieOf(again).split(";")[0]!, csrf: "" };
    const usedLink = await portalLink(org, "vic");
    expect((await app.call("GET", usedLink, { key: null })).headers.location).toBe("/portal");
    const reused = await app.call("GET", usedLink, {
      key: null,
      headers: { cookie: renewed.cookie },
    });
    expect(reused.headers.location).toBe("/portal?link=invalid");
    expect((await asBrowser(renewed, "GET", "/web/session")).json().user.id).toBe("ada");
  });

  it("follows the user: a role change applies at once, removal ends the session", async () => {
    const org = await orgWithUsers();
    const jar = await enterPortal(org, "vic");
    await app.call("PATCH", `/v1/organizations/${org}/users/vic`, { body: { role: "billing" } });
    expect((await asBrowser(jar, "GET", "/web/session")).json().role).toBe("billing");
    await app.call("DELETE", `/v1/organizations/${org}/users/vic`);
    expect((await asBrowser(jar, "GET", "/web/session")).statusCode).toBe(204);
    expect((await asBrowser(jar, "GET", `/v1/organizations/${org}/balance`)).statusCode).toBe(401);
    // Someone added later under the same id does not inherit the session.
    app.clock.advance(1000);
    const readded = await app.call("POST", `/v1/organizations/${org}/users`, {
      body: { id: "vic", email: "new-vic@example.com", role: "admin" },
    });
    expect(readded.statusCode, readded.body).toBe(201);
    expect((await asBrowser(jar, "GET", "/web/session")).statusCode).toBe(204);
    expect((await asBrowser(jar, "GET", `/v1/organizations/${org}/balance`)).statusCode).toBe(401);
  });

  it("expires after two hours", async () => {
    const org = await orgWithUsers();
    const jar = await enterPortal(org, "ada");
    app.clock.advance(2 * 3600_000 + 1);
    expect((await asBrowser(jar, "GET", `/v1/organizations/${org}/balance`)).statusCode).toBe(401);
  });
});

describe("web app and headers", () => {
  it("redirects / to the dashboard", async () => {
    const res = await app.call("GET", "/", { key: null });
    expect(res.statusCode).toBe(302);
    expect(res.headers.location).toBe("/dashboard");
  });

  it("serves the app for every dashboard and portal path with a strict CSP", async () => {
    for (const url of ["/dashboard", "/dashboard/orgs/org_x/usage", "/portal", "/portal/x"]) {
      const res = await app.call("GET", url, { key: null });
      expect(res.statusCode, url).toBe(200);
      expect(res.headers["content-type"]).toContain("text/html");
      expect(res.body).toContain('<div id="root">');
      const csp = String(res.headers["content-security-policy"]);
      expect(csp).toContain("default-src 'self'");
      expect(csp).toContain("script-src 'self'");
      expect(csp).toContain("frame-ancestors 'none'");
      expect(csp).not.toContain("unsafe");
      expect(res.headers["x-content-type-options"]).toBe("nosniff");
      expect(res.headers["x-frame-options"]).toBe("SAMEORIGIN");
      expect(res.headers["strict-transport-security"]).toBeUndefined();
    }
    const html = (await app.call("GET", "/dashboard", { key: null })).body;
    const script = /src="(\/assets\/[^"]+\.js)"/.exec(html)?.[1];
    expect(script).toBeDefined();
    const asset = await app.call("GET", script!, { key: null });
    expect(asset.statusCode).toBe(200);
    expect(asset.headers["cache-control"]).toContain("immutable");
  });

  it("puts the headers that matter for JSON on API responses, and the page headers elsewhere", async () => {
    const res = await app.call("GET", "/v1/organizations");
    expect(res.statusCode).toBe(200);
    expect(res.headers["x-content-type-options"]).toBe("nosniff");
    expect(res.headers["referrer-policy"]).toBe("no-referrer");
    expect(res.headers["x-frame-options"]).toBe("SAMEORIGIN");
    expect(res.headers["cross-origin-resource-policy"]).toBe("same-origin");
    expect(res.headers["content-security-policy"]).toBe(
      "default-src 'none';frame-ancestors 'none'",
    );
    // Page-only headers stay off the API's answers (and its errors)…
    const missing = await app.call("GET", "/v1/organizations/org_nope/balance");
    expect(missing.statusCode).toBe(404);
    // Refusals by authentication (an earlier hook than the routes) carry them too.
    const anonymous = await app.call("GET", "/v1/organizations", { key: null });
    expect(anonymous.statusCode).toBe(401);
    for (const r of [res, missing, anonymous]) {
      expect(r.headers["x-content-type-options"]).toBe("nosniff");
      expect(r.headers["cross-origin-opener-policy"]).toBeUndefined();
      expect(r.headers["x-dns-prefetch-control"]).toBeUndefined();
      expect(r.headers["origin-agent-cluster"]).toBeUndefined();
    }
    // …and stay on everything else.
    for (const url of ["/dashboard", "/readyz", "/no-such-page"]) {
      const other = await app.call("GET", url, { key: null });
      expect(other.headers["cross-origin-opener-policy"], url).toBe("same-origin");
      expect(other.headers["x-dns-prefetch-control"], url).toBe("off");
      expect(String(other.headers["content-security-policy"]), url).toContain("default-src 'self'");
    }
  });

  it("marks cookies Secure (__Host- prefixed) and sends HSTS when served over https", async () => {
    const tls = await createTestApp({ env: { TALLY_PUBLIC_URL: "https://tally.example.com" } });
    const res = await tls.call("POST", "/web/login", {
      key: null,
      body: { api_key: tls.platformKey },
    });
    const cookie = setCookieOf(res, "__Host-tally_session");
    expect(cookie).toContain("Secure");
    expect(cookie).toContain("Path=/");
    expect(cookie).not.toContain("Domain");
    expect(res.headers["strict-transport-security"]).toContain("max-age=");
    expect(res.headers["content-security-policy"]).toContain("upgrade-insecure-requests");
    const api = await tls.call("GET", "/v1/organizations");
    expect(api.statusCode).toBe(200);
    expect(api.headers["strict-transport-security"]).toContain("max-age=");
    const session = await tls.call("GET", "/web/session", {
      key: null,
      headers: { cookie: cookie.split(";")[0]! },
    });
    expect(session.statusCode).toBe(200);
    // The unprefixed name is not accepted over https.
    const plain = await tls.call("GET", "/web/session", {
      key: null,
      headers: { cookie: cookie.split(";")[0]!.replace("__Host-", "") },
    });
    expect(plain.statusCode).toBe(204);
  });

  it("lets the API docs use inline styles, and nothing else", async () => {
    const res = await app.call("GET", "/docs", { key: null });
    const csp = String(res.headers["content-security-policy"]);
    expect(csp).toContain("style-src 'self' 'unsafe-inline'");
    expect(csp).toContain("script-src 'self'");
    expect(csp).not.toMatch(/script-src[^;]*unsafe/);
  });
});

describe("cross-site requests", () => {
  it("a CSRF token works only with the session it was issued for", async () => {
    const a = await signIn();
    const b = await signIn();
    expect(a.csrf).not.toBe(b.csrf);
    const crossed = await asBrowser(a, "POST", "/v1/organizations", {
      body: { name: "Crossed" },
      csrf: b.csrf,
    });
    expect(crossed.statusCode).toBe(403);
    expect(crossed.json().error.code).toBe("forbidden");
    const org = await orgWithUsers();
    const portal = await enterPortal(org, "ada");
    const portalWithOperatorToken = await asBrowser(
      portal,
      "PUT",
      `/v1/organizations/${org}/alerts`,
      { body: { thresholds: ["10"] }, csrf: a.csrf },
    );
    expect(portalWithOperatorToken.statusCode).toBe(403);
    // The session token itself is not the CSRF token either.
    const tokenAsCsrf = await asBrowser(a, "POST", "/v1/organizations", {
      body: { name: "Crossed" },
      csrf: a.cookie.split("=")[1]!,
    });
    expect(tokenAsCsrf.statusCode).toBe(403);
  });

  it("PUT, PATCH and DELETE need the token like POST; nothing changes without it", async () => {
    const org = await orgWithUsers();
    // The portal's writes are POST and PUT; the console's include PATCH and DELETE.
    const portal = await enterPortal(org, "ada");
    const operator = await signIn();
    const endpoint = await app.call("POST", "/v1/webhook-endpoints", {
      body: { url: PUBLIC_WEBHOOK_URL, org_id: org },
    });
    expect(endpoint.statusCode, endpoint.body).toBe(201);
    const attempts = [
      [portal, "PUT", `/v1/organizations/${org}/alerts`, { thresholds: ["10"] }],
      [operator, "PATCH", `/v1/organizations/${org}`, { name: "Renamed" }],
      [operator, "DELETE", `/v1/webhook-endpoints/${endpoint.json().id}`, undefined],
    ] as const;
    for (const [jar, method, url, body] of attempts) {
      for (const csrf of [null, "", "x".repeat(43), "x".repeat(201)]) {
        const res = await asBrowser(jar, method, url, { body, csrf });
        expect(res.statusCode, `${method} ${url} csrf=${csrf}`).toBe(403);
        expect(res.json().error.code).toBe("forbidden");
      }
    }
    expect((await app.call("GET", `/v1/organizations/${org}/alerts`)).json().thresholds).toEqual(
      [],
    );
    expect((await app.call("GET", `/v1/organizations/${org}`)).json().name).not.toBe("Renamed");
    expect((await app.call("GET", `/v1/webhook-endpoints/${endpoint.json().id}`)).statusCode).toBe(
      200,
    );
    for (const [jar, method, url, body] of attempts) {
      const res = await asBrowser(jar, method, url, { body });
      expect(res.statusCode, `${method} ${url}`).toBeLessThan(300);
    }
  });

  it("cross-site forms cannot sign in or reach the JSON API (no simple requests)", async () => {
    const jar = await signIn();
    for (const type of ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data"]) {
      const login = await app.call("POST", "/web/login", {
        key: null,
        rawBody: `api_key=${app.platformKey}`,
        headers: { "content-type": type },
      });
      expect(login.statusCode, type).toBe(415);
      expect(login.headers["set-cookie"]).toBeUndefined();
      const form = { headers: { "content-type": type }, body: "name=Forged" };
      const write = await asBrowser(jar, "POST", "/v1/organizations", { ...form, csrf: null });
      expect(write.statusCode, type).toBe(403);
      // Even with the header (which a form cannot send) the body is not accepted.
      const withToken = await asBrowser(jar, "POST", "/v1/organizations", form);
      expect(withToken.statusCode, type).toBe(415);
    }
  });

  it("sends no CORS headers, whatever the Origin", async () => {
    const jar = await signIn();
    const origin = "https://evil.example";
    const session = await asBrowser(jar, "GET", "/web/session", { headers: { origin } });
    expect(session.statusCode).toBe(200);
    expect(session.headers["access-control-allow-origin"]).toBeUndefined();
    expect(session.headers["access-control-allow-credentials"]).toBeUndefined();
    const preflight = await app.runtime.app.inject({
      method: "OPTIONS",
      url: "/v1/organizations",
      headers: {
        origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": "x-csrf-token, content-type",
      },
    });
    expect(preflight.statusCode).toBeGreaterThanOrEqual(400);
    expect(preflight.headers["access-control-allow-origin"]).toBeUndefined();
    expect(preflight.headers["access-control-allow-headers"]).toBeUndefined();
  });

  it("API answers are not framed or sniffed", async () => {
    const created = await app.call("POST", "/v1/platform-keys", { body: { name: "headers" } });
    expect(created.statusCode).toBe(201);
    expect(created.headers["x-content-type-options"]).toBe("nosniff");
    expect(created.headers["x-frame-options"]).toBe("SAMEORIGIN");
    expect(String(created.headers["content-security-policy"])).toContain("frame-ancestors 'none'");
    expect(created.headers["x-powered-by"]).toBeUndefined();
  });
});
