import { describe, expect, it } from "vitest";
import { createTestApp } from "../../../test/support/app.js";
import { runSecurityMatrix } from "../../../test/support/security-matrix.js";
import * as repo from "./notify.repo.js";
import { NOTIFY_MATRIX, PUBLIC_WEBHOOK_URL as PUBLIC_URL } from "./notify.security.matrix.js";
import { emitEvent, runDueJobs } from "./notify.service.js";
import { startReceiver } from "./test-receiver.js";
import { generateWebhookSecret } from "./webhooks.delivery.js";

runSecurityMatrix(NOTIFY_MATRIX);

describe("webhook endpoints: access and SSRF", async () => {
  const app = await createTestApp(); // TALLY_ALLOW_PRIVATE_WEBHOOK_URLS unset
  const ctx = app.runtime.ctx;
  const orgA = await app.createOrg();
  const orgB = await app.createOrg({ external_id: "org-b" });
  const adminA = await app.orgKey(orgA, "admin");
  const adminB = await app.orgKey(orgB, "admin");

  async function create(key: string, body: Record<string, unknown>) {
    return app.call("POST", "/v1/webhook-endpoints", { key, body: { url: PUBLIC_URL, ...body } });
  }

  it("refuses loopback, private, link-local and metadata URLs", async () => {
    const refused = [
      "http://127.0.0.1/hooks",
      "http://127.1:8080/",
      "http://10.0.0.1/hooks",
      "http://172.16.5.4/",
      "http://192.168.1.1/",
      "http://100.64.0.1/",
      "http://169.254.169.254/latest/meta-data/",
      "http://[::1]/hooks",
      "http://[::ffff:127.0.0.1]/",
      "http://[::ffff:169.254.169.254]/",
      "http://[fd00::1]/",
      "http://[fe80::1]/",
      "http://0.0.0.0/",
      "http://224.0.0.1/",
      "http://localhost/hooks",
      "http://localhost:9999/hooks",
    ];
    for (const url of refused) {
      const res = await create(app.platformKey, { url });
      expect(res.statusCode, url).toBe(400);
      const error = res.json().error;
      expect(error.code).toBe("invalid_request");
      expect(error.details[0].field).toBe("/url");
    }
    expect((await create(app.platformKey, {})).statusCode).toBe(201);
  });

  it("refuses private addresses again at delivery time (DNS may have changed)", async () => {
    const receiver = await startReceiver();
    // Only the endpoints below may receive anything (the others point at a real public host).
    await ctx.db.deleteFrom("webhook_endpoints").execute();
    // As if the name had resolved publicly at creation and points at loopback now.
    for (const url of [receiver.url, `http://localhost:${receiver.port}/hooks`]) {
      const id = ctx.ids.newId("whe");
      const now = app.clock.now();
      await repo.insertEndpoint(ctx.db, {
        id,
        org_id: orgA,
        url,
        events: [],
        secret: generateWebhookSecret(),
        created_at: now,
        updated_at: now,
        failing_since: null,
        consecutive_failures: 0,
        disabled_at: null,
        disabled_reason: null,
      });
      await ctx.db
        .transaction()
        .execute((trx) => emitEvent(trx, ctx, { type: "balance.low", orgId: orgA, data: {} }));
      await runDueJobs(ctx);
      const [attempt] = await repo.listDeliveries(ctx.db, id, { limit: 10 });
      expect(attempt).toMatchObject({ succeeded: false, status_code: null });
      expect(attempt!.error).toMatch(
        /^refused: (127\.0\.0\.1 is a loopback|localhost does not resolve to public addresses only)/,
      );
      await repo.deleteEndpoint(ctx.db, id);
    }
    expect(receiver.requests).toHaveLength(0);
  });

  it("org admins create endpoints for their own organisation only", async () => {
    const own = await create(adminA, {});
    expect(own.statusCode, own.body).toBe(201);
    expect(own.json().org_id).toBe(orgA);
    const explicitNull = await create(adminA, { org_id: null });
    expect(explicitNull.json().org_id).toBe(orgA);
    const byExternal = await create(adminB, { org_id: "ext:org-b" });
    expect(byExternal.json().org_id).toBe(orgB);

    const foreign = await create(adminA, { org_id: orgB });
    expect(foreign.statusCode).toBe(404);
    expect(foreign.json().error.code).toBe("not_found");

    const global = await create(app.platformKey, {});
    expect(global.json().org_id).toBeNull();
  });

  it("org admins see only their organisation's endpoints; foreign ids are 404", async () => {
    const a = (await create(adminA, {})).json();
    const b = (await create(adminB, {})).json();
    const global = (await create(app.platformKey, {})).json();

    const listA = (await app.call("GET", "/v1/webhook-endpoints", { key: adminA })).json();
    const idsA = listA.data.map((e: { id: string }) => e.id);
    expect(idsA).toContain(a.id);
    expect(idsA).not.toContain(b.id);
    expect(idsA).not.toContain(global.id);
    expect(listA.data.every((e: { org_id: string }) => e.org_id === orgA)).toBe(true);

    const all = (await app.call("GET", "/v1/webhook-endpoints?limit=1000")).json();
    const ids = all.data.map((e: { id: string }) => e.id);
    expect(ids).toEqual(expect.arrayContaining([a.id, b.id, global.id]));
    const onlyB = (await app.call("GET", `/v1/webhook-endpoints?org_id=${orgB}`)).json();
    expect(onlyB.data.every((e: { org_id: string }) => e.org_id === orgB)).toBe(true);
    expect(
      (await app.call("GET", `/v1/webhook-endpoints?org_id=${orgB}`, { key: adminA })).statusCode,
    ).toBe(404);

    for (const id of [b.id, global.id, "whe_unknown"]) {
      for (const [method, url] of [
        ["GET", `/v1/webhook-endpoints/${id}`],
        ["GET", `/v1/webhook-endpoints/${id}/deliveries`],
        ["POST", `/v1/webhook-endpoints/${id}/enable`],
        ["DELETE", `/v1/webhook-endpoints/${id}`],
      ] as const) {
        const res = await app.call(method, url, { key: adminA });
        expect(res.statusCode, `${method} ${url}`).toBe(404);
        expect(res.json().error.code).toBe("not_found");
      }
    }
    // Still there for their owners.
    expect(
      (await app.call("GET", `/v1/webhook-endpoints/${b.id}`, { key: adminB })).statusCode,
    ).toBe(200);
    expect((await app.call("GET", `/v1/webhook-endpoints/${global.id}`)).statusCode).toBe(200);
    expect(
      (await app.call("DELETE", `/v1/webhook-endpoints/${a.id}`, { key: adminA })).statusCode,
    ).toBe(204);
  });

  it("billing, read and ingest keys are forbidden; no key is unauthenticated", async () => {
    const b = (await create(adminA, {})).json();
    for (const role of ["billing", "read", "ingest"] as const) {
      const key = await app.orgKey(orgA, role);
      for (const [method, url, body] of [
        ["POST", "/v1/webhook-endpoints", { url: PUBLIC_URL }],
        ["GET", "/v1/webhook-endpoints", undefined],
        ["GET", `/v1/webhook-endpoints/${b.id}`, undefined],
        ["GET", `/v1/webhook-endpoints/${b.id}/deliveries`, undefined],
        ["POST", `/v1/webhook-endpoints/${b.id}/enable`, undefined],
        ["DELETE", `/v1/webhook-endpoints/${b.id}`, undefined],
      ] as const) {
        const res = await app.call(method, url, { key, body });
        expect(res.statusCode, `${role} ${method} ${url}`).toBe(403);
        expect(res.json().error.code).toBe("forbidden");
      }
    }
    const res = await app.call("GET", "/v1/webhook-endpoints", { key: null });
    expect(res.statusCode).toBe(401);
  });
});
