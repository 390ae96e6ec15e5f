import { describe, expect, it } from "vitest";
import { MAX_JSON_DEPTH } from "../src/app/http.js";
import { BODY_LIMIT } from "../src/app/server.js";
import { createTestApp, type TestApp } from "./support/app.js";

/**
 * The size and shape limits of request bodies: a full usage batch fits, anything over the limit
 * is 413 in the error envelope, and neither nesting nor huge strings can reach a 500.
 */

type Response = Awaited<ReturnType<TestApp["call"]>>;

function expectError(res: Response, status: number, code: string) {
  expect(res.statusCode, res.body.slice(0, 300)).toBe(status);
  expect(res.json()).toEqual({
    error: {
      code,
      message: expect.any(String),
      request_id: expect.stringMatching(/^req_/),
      details: expect.any(Array),
    },
  });
}

/** A realistic event, padded towards the per-event share of the body limit (~4 KiB). */
function event(i: number, padding: number) {
  return {
    id: `big-${i}`,
    type: "ai_tokens",
    model: "gpt-4o",
    user_id: `user-${i % 50}`,
    operation: "chat.completion",
    timestamp: "2026-11-24T09:59:00Z",
    tokens: { input: 1200, cached_input: 300, cache_write: 0, output: 350 },
    metadata: Object.fromEntries(
      Array.from({ length: 8 }, (_, k) => [`key_${k}`, "m".repeat(padding)]),
    ),
  };
}

describe("request body limits", async () => {
  const app = await createTestApp();
  const org = await app.createOrg();
  const key = await app.orgKey(org, "ingest");
  await app.call("POST", `/v1/organizations/${org}/adjustments`, {
    body: { amount: "+100000000", reason: "room for a big batch" },
  });
  // Counted in the database: a page of the API would stop at its limit.
  const eventCount = async () =>
    Number(
      (
        await app.runtime.ctx.db
          .selectFrom("usage_events")
          .select((eb) => eb.fn.countAll<string>().as("n"))
          .where("org_id", "=", org)
          .executeTakeFirstOrThrow()
      ).n,
    );

  it("a batch of 1000 events of up to ~4 KiB each fits and is accepted", async () => {
    const events = Array.from({ length: 1000 }, (_, i) => event(i, 425));
    const raw = JSON.stringify({ events });
    expect(raw.length).toBeGreaterThan(3.5 * 1024 * 1024);
    expect(raw.length).toBeLessThan(BODY_LIMIT);
    const res = await app.call("POST", "/v1/usage-events", { key, rawBody: raw });
    expect(res.statusCode, res.body.slice(0, 300)).toBe(200);
    const data = res.json().data as { status: string }[];
    expect(data).toHaveLength(1000);
    expect(data.every((d) => d.status === "accepted")).toBe(true);
    expect(await eventCount()).toBe(1000);
  });

  it("a body over the limit is 413 payload_too_large and records nothing", async () => {
    const before = await eventCount();
    const events = Array.from({ length: 1000 }, (_, i) => event(10_000 + i, 500));
    const raw = JSON.stringify({ events });
    expect(raw.length).toBeGreaterThan(BODY_LIMIT);
    expectError(
      await app.call("POST", "/v1/usage-events", { key, rawBody: raw }),
      413,
      "payload_too_large",
    );
    // The limit is on bytes, not characters: 2-byte characters count twice.
    const wide = JSON.stringify({ name: "é".repeat(BODY_LIMIT / 2 + 1) });
    expect(wide.length).toBeLessThan(BODY_LIMIT);
    expectError(
      await app.call("POST", "/v1/organizations", { rawBody: wide }),
      413,
      "payload_too_large",
    );
    expect(await eventCount()).toBe(before);
  });

  it("more than 1000 events is 400 however small they are", async () => {
    const events = Array.from({ length: 1001 }, (_, i) => ({
      id: `small-${i}`,
      type: "compute",
      meter: "compute.vcpu_seconds",
      quantity: "1",
    }));
    expectError(
      await app.call("POST", "/v1/usage-events", { key, body: { events } }),
      400,
      "invalid_request",
    );
  });

  it("nesting deeper than the limit is 400, anywhere in the body", async () => {
    // An event whose provider usage carries `depth` nested objects.
    const deepUsage = (depth: number) =>
      `{"id":"deep-${depth}","type":"ai_tokens","model":"gpt-4o","provider_usage":{"provider":"openai",` +
      `"usage":{"prompt_tokens":10,"completion_tokens":1,"extra":${'{"a":'.repeat(depth)}1${"}".repeat(depth)}}}}`;
    // The provider's usage object may carry nested details of its own…
    const shallow = await app.call("POST", "/v1/usage-events", { key, rawBody: deepUsage(3) });
    expect(shallow.statusCode, shallow.body).toBe(200);
    // …but not thousands of levels (which overflowed recursive walkers: a 500 before).
    for (const depth of [MAX_JSON_DEPTH, 5_000, 500_000]) {
      const res = await app.call("POST", "/v1/usage-events", { key, rawBody: deepUsage(depth) });
      expectError(res, 400, "invalid_request");
      expect(res.json().error.message).toContain("nested too deeply");
    }
    for (const raw of [
      "[".repeat(100_000) + "]".repeat(100_000),
      `{"name":${"[".repeat(50)}1${"]".repeat(50)}}`,
    ]) {
      expectError(
        await app.call("POST", "/v1/organizations", { rawBody: raw }),
        400,
        "invalid_request",
      );
    }
  });

  it("huge strings are 400 wherever they are, never 500", async () => {
    const huge = "x".repeat(3 * 1024 * 1024);
    const cases: [string, string, unknown][] = [
      ["POST", "/v1/organizations", { name: huge }],
      ["POST", "/v1/organizations", { name: "ok", metadata: { [huge]: "v" } }],
      ["POST", "/v1/organizations", { name: "ok", metadata: { k: huge } }],
      ["POST", "/v1/organizations", { [huge]: 1, name: "ok" }],
      ["POST", "/v1/usage-events", { id: huge, type: "compute" }],
      [
        "POST",
        "/v1/usage-events",
        {
          id: "q",
          type: "compute",
          meter: "compute.vcpu_seconds",
          quantity: `1${"0".repeat(100_000)}`,
        },
      ],
      [
        "PUT",
        "/v1/prices",
        { models: [{ model: huge, provider: "openai", input: "1", output: "1" }], meters: [] },
      ],
    ];
    for (const [method, url, body] of cases) {
      const res = await app.call(method as "POST", url, { body });
      expectError(res, 400, "invalid_request");
    }
    // In headers, the HTTP layer's own limits apply; in the path, the router's.
    const longPath = await app.call("GET", `/v1/organizations/ext:${"x".repeat(600)}`);
    expectError(longPath, 404, "not_found");
    const longKey = await app.call("POST", "/v1/organizations", {
      body: { name: "k" },
      headers: { "idempotency-key": "k".repeat(5000) },
    });
    expectError(longKey, 400, "invalid_request");
  });

  it("the Stripe webhook has a limit of its own (1 MiB)", async () => {
    const res = await app.call("POST", "/v1/webhooks/stripe", {
      key: null,
      rawBody: JSON.stringify({ id: "evt", pad: "x".repeat(1024 * 1024) }),
      headers: { "stripe-signature": "t=1,v1=00" },
    });
    expectError(res, 413, "payload_too_large");
  });
});
