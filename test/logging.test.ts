import { afterAll, describe, expect, it } from "vitest";
import { loadConfig } from "../src/app/config.js";
import { createLogger, createRuntime } from "../src/app/runtime.js";
import { createApiKey } from "../src/modules/orgs/orgs.service.js";
import { TestClock } from "./support/app.js";
import { testDatabase } from "./support/db.js";

describe("logs", async () => {
  const lines: string[] = [];
  const logger = createLogger("info", { write: (line: string) => void lines.push(line) });
  const runtime = await createRuntime(loadConfig({ LOG_LEVEL: "info" }), {
    database: await testDatabase(),
    clock: new TestClock(),
    logger,
    workers: false,
  });
  afterAll(() => runtime.close());
  const { secret: platformKey } = await createApiKey(runtime.ctx, {
    orgId: null,
    name: "logging",
    role: "platform",
  });
  let n = 0;
  const call = (method: "GET" | "POST", url: string, key: string, body?: object) =>
    runtime.app.inject({
      method,
      url,
      headers: { authorization: `Bearer ${key}`, "idempotency-key": `log-${++n}` },
      payload: body,
    });

  it("never contain API keys, in requests or in responses", async () => {
    lines.length = 0;
    const org = await call("POST", "/v1/organizations", platformKey, { name: "Logged" });
    expect(org.statusCode).toBe(201);
    const orgId = org.json().id;
    const created = await call("POST", `/v1/organizations/${orgId}/api-keys`, platformKey, {
      name: "k",
      role: "admin",
    });
    const orgKey: string = created.json().key;
    expect((await call("GET", `/v1/organizations/${orgId}`, orgKey)).statusCode).toBe(200);
    const unknownKey = "tally_unknownunknownunknownunknownunknownxx";
    expect((await call("GET", "/v1/organizations", unknownKey)).statusCode).toBe(401);
    expect((await call("GET", "/v1/organizations", orgKey)).statusCode).toBe(403);
    await runtime.ctx.logger.flush?.();

    const log = lines.join("");
    // The capture works: the requests were logged.
    expect(log).toContain(`/v1/organizations/${orgId}`);
    expect(log).toContain('"statusCode":401');
    for (const secret of [platformKey, orgKey, unknownKey]) {
      expect(log).not.toContain(secret);
      expect(log).not.toContain(secret.slice(6));
    }
    expect(log).not.toMatch(/bearer/i);
  });

  it("never contain webhook secrets, portal link tokens or session tokens", async () => {
    lines.length = 0;
    const org = await call("POST", "/v1/organizations", platformKey, { name: "Portal" });
    const orgId = org.json().id;
    const user = await call("POST", `/v1/organizations/${orgId}/users`, platformKey, {
      id: "ada",
      email: "ada@example.com",
      role: "admin",
    });
    expect(user.statusCode).toBe(201);
    const endpoint = await call("POST", "/v1/webhook-endpoints", platformKey, {
      url: "http://93.184.215.14/hooks",
      org_id: orgId,
    });
    expect(endpoint.statusCode, endpoint.body).toBe(201);
    const secret: string = endpoint.json().secret;
    const link = await call("POST", `/v1/organizations/${orgId}/portal-sessions`, platformKey, {
      user_id: "ada",
    });
    expect(link.statusCode, link.body).toBe(201);
    const url = new URL(link.json().url);
    const token = url.searchParams.get("token")!;
    const entered = await runtime.app.inject({ method: "GET", url: url.pathname + url.search });
    expect(entered.statusCode).toBe(303);
    const session = String(entered.headers["set-cookie"]).split(";")[0]!.split("=")[1]!;
    // A link that does not work is logged without its token too.
    const unknown = "tps_unknownunknownunknownunknownunknownxx";
    await runtime.app.inject({ method: "GET", url: `/portal/enter?token=${unknown}` });
    // Nor one whose parameter name is percent-encoded (the query parser decodes it).
    const encoded = "tps_encodedencodedencodedencodedencodedxx";
    await runtime.app.inject({ method: "GET", url: `/portal/enter?a=1&%74oken=${encoded}` });
    const signedIn = await runtime.app.inject({
      method: "GET",
      url: "/web/session",
      headers: { cookie: `tally_session=${session}` },
    });
    expect(signedIn.statusCode).toBe(200);
    await runtime.ctx.logger.flush?.();

    const log = lines.join("");
    expect(log).toContain("/portal/enter?token=[redacted]");
    expect(log).toContain("/portal/enter?a=1&%74oken=[redacted]");
    for (const s of [secret, secret.slice(6), token, token.slice(4), unknown, encoded, session]) {
      expect(log).not.toContain(s);
    }
  });

  it("redact secrets even when a request's headers or a key object are logged", () => {
    lines.length = 0;
    runtime.ctx.logger.info(
      {
        req: { headers: { authorization: `Bearer ${platformKey}`, cookie: "tss_session" } },
        created: { key: platformKey, secret: "whsec_abc" },
        key: platformKey,
      },
      "diagnostics",
    );
    const log = lines.join("");
    expect(log).toContain("diagnostics");
    expect(log).toContain("[redacted]");
    expect(log).not.toContain(platformKey);
    expect(log).not.toContain("tss_session");
    expect(log).not.toContain("whsec_abc");
  });
});
