import { sql } from "kysely";
import { describe, expect, it } from "vitest";
import { createTestApp } from "./support/app.js";

describe("operational routes", async () => {
  const app = await createTestApp();

  it("GET /healthz answers ok", async () => {
    const res = await app.call("GET", "/healthz", { key: null });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ status: "ok" });
  });

  it("GET /readyz is 200 once migrations are applied", async () => {
    const res = await app.call("GET", "/readyz", { key: null });
    expect(res.statusCode).toBe(200);
  });

  it("GET /readyz is 503 once a newer version has migrated the database", async () => {
    const db = app.runtime.ctx.db;
    await sql`insert into kysely_migration (name, timestamp) values ('9999_from_the_future', now())`.execute(
      db,
    );
    try {
      expect((await app.call("GET", "/readyz", { key: null })).statusCode).toBe(503);
    } finally {
      await sql`delete from kysely_migration where name = '9999_from_the_future'`.execute(db);
    }
    expect((await app.call("GET", "/readyz", { key: null })).statusCode).toBe(200);
  });

  it("GET /metrics exposes request counters by route and status", async () => {
    await app.call("GET", "/healthz", { key: null });
    const res = await app.call("GET", "/metrics", { key: null });
    expect(res.statusCode).toBe(200);
    expect(res.body).toMatch(
      /tally_http_requests_total\{method="GET",route="\/healthz",status="200"\} \d+/,
    );
    expect(res.body).toContain("process_cpu_seconds_total");
  });

  it("counts usage events refused before the engine as rejected, one per event", async () => {
    const rejected = async () => {
      const text = (await app.call("GET", "/metrics", { key: null })).body;
      return Number(/^tally_usage_events_total\{status="rejected"\} (\d+)/m.exec(text)?.[1] ?? 0);
    };
    const org = await app.createOrg();
    const before = await rejected();
    const invalid = await app.call("POST", "/v1/usage-events", {
      body: {
        events: [
          { id: "r-1", org_id: org, type: "compute", meter: "compute.vcpu_seconds", quantity: "1" },
          {
            id: "r-2",
            org_id: org,
            type: "compute",
            meter: "compute.vcpu_seconds",
            quantity: "-1",
          },
        ],
      },
    });
    expect(invalid.statusCode).toBe(400);
    const unpriced = await app.call("POST", "/v1/usage-events", {
      body: { id: "r-3", org_id: org, type: "ai_tokens", model: "no-such-model", tokens: {} },
    });
    expect(unpriced.statusCode).toBe(422);
    expect(await rejected()).toBe(before + 3);
  });

  it("GET /openapi.json describes the answers of /healthz and /metrics", async () => {
    const doc = (await app.call("GET", "/openapi.json", { key: null })).json();
    expect(doc.paths["/healthz"].get.responses["200"].content["application/json"]).toBeDefined();
    expect(doc.paths["/metrics"].get.responses["200"].content["text/plain"]).toBeDefined();
  });

  it("GET /openapi.json describes the v1 routes with the error envelope", async () => {
    const res = await app.call("GET", "/openapi.json", { key: null });
    expect(res.statusCode).toBe(200);
    const doc = res.json();
    expect(doc.openapi).toMatch(/^3\./);
    const post = doc.paths["/v1/organizations"].post;
    expect(Object.keys(post.responses)).toEqual(
      expect.arrayContaining(["201", "400", "401", "403"]),
    );
    expect(post.responses["400"].content["application/json"].schema.properties.error).toBeDefined();
  });

  it("GET /docs renders the API reference", async () => {
    const res = await app.call("GET", "/docs/", { key: null });
    expect(res.statusCode).toBe(200);
    expect(res.headers["content-type"]).toMatch(/^text\/html/);
    expect(res.body).toContain("swagger-ui");
    // The page loads its document from the same server.
    const spec = await app.call("GET", "/docs/json", { key: null });
    expect(spec.statusCode).toBe(200);
    expect(spec.json().paths["/v1/usage-events"]).toBeDefined();
  });

  it("unknown routes get the error envelope with a request id", async () => {
    const res = await app.call("GET", "/v1/does-not-exist");
    expect(res.statusCode).toBe(404);
    const body = res.json();
    expect(body.error.code).toBe("not_found");
    expect(body.error.request_id).toMatch(/^req_/);
    expect(res.headers["x-request-id"]).toBe(body.error.request_id);
  });
});
