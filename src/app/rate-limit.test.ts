import { describe, expect, it } from "vitest";
import { createTestApp, type TestApp } from "../../test/support/app.js";

/** A window long enough that no test, however slow the machine, crosses into the next one. */
const WINDOW = 60;

async function spend(app: TestApp, n: number, key: string | null, url: string): Promise<number[]> {
  const statuses: number[] = [];
  for (let i = 0; i < n; i++) statuses.push((await app.call("GET", url, { key })).statusCode);
  return statuses;
}

function expectRateLimited(res: Awaited<ReturnType<TestApp["call"]>>) {
  expect(res.statusCode).toBe(429);
  const body = res.json();
  expect(body).toEqual({
    error: {
      code: "rate_limited",
      message: expect.stringContaining("retry in"),
      request_id: expect.stringMatching(/^req_/),
      details: [],
    },
  });
  const retryAfter = Number(res.headers["retry-after"]);
  expect(Number.isInteger(retryAfter)).toBe(true);
  expect(retryAfter).toBeGreaterThanOrEqual(1);
  expect(retryAfter).toBeLessThanOrEqual(WINDOW);
  expect(res.headers["x-ratelimit-limit"]).toBe(String(WINDOW));
}

describe("rate limiting", async () => {
  // One request per second per key and per address, over a minute: 60 per window.
  const app = await createTestApp({
    env: {
      TALLY_RATE_LIMIT_PER_SECOND: "1",
      TALLY_RATE_LIMIT_ANONYMOUS_PER_SECOND: "1",
      TALLY_RATE_LIMIT_WINDOW_SECONDS: String(WINDOW),
    },
  });
  // Fixtures are made with the platform key; each test spends a budget of its own.
  const org = await app.createOrg();
  const readKey = await app.orgKey(org, "read");
  const ingestKey = await app.orgKey(org, "ingest");
  const spareKey = await app.orgKey(org, "read");

  it("answers 429 rate_limited with Retry-After once a key has spent its budget", async () => {
    const url = `/v1/organizations/${org}/balance`;
    expect(new Set(await spend(app, WINDOW, readKey, url))).toEqual(new Set([200]));
    const limited = await app.call("GET", url, { key: readKey });
    expectRateLimited(limited);
    expect(limited.json().error.message).toContain("API key");
    // Every route of that key, not only the one that spent it.
    expectRateLimited(await app.call("GET", `/v1/organizations/${org}`, { key: readKey }));
    // Other keys of the same organisation and address have budgets of their own.
    expect((await app.call("GET", url, { key: ingestKey })).statusCode).toBe(200);
  });

  it("a throttled write changes nothing", async () => {
    const url = `/v1/organizations/${org}/balance`;
    await spend(app, WINDOW, ingestKey, url);
    const event = {
      id: "throttled-1",
      type: "compute",
      meter: "compute.vcpu_seconds",
      quantity: "1",
    };
    const res = await app.call("POST", "/v1/usage-events", { key: ingestKey, body: event });
    expectRateLimited(res);
    const events = await app.call("GET", `/v1/organizations/${org}/usage-events`);
    expect(events.json().data).toEqual([]);
  });

  it("counts requests without a key per address, and unknown keys per key", async () => {
    // In use before the address fails (so the rate limiter knows it).
    expect((await app.call("GET", `/v1/organizations/${org}`, { key: spareKey })).statusCode).toBe(
      200,
    );
    const statuses = await spend(app, WINDOW, null, "/v1/organizations");
    expect(new Set(statuses)).toEqual(new Set([401]));
    const limited = await app.call("GET", "/v1/organizations", { key: null });
    expectRateLimited(limited);
    expect(limited.json().error.message).toContain("address");
    // Pages and webhooks have no key either.
    expectRateLimited(await app.call("GET", "/v1/does-not-exist", { key: null }));
    // A valid key from the same address is not affected by the address's budget.
    expect((await app.call("GET", `/v1/organizations/${org}`, { key: spareKey })).statusCode).toBe(
      200,
    );
    // The address has failed authentication as often as its budget allows (60 times: 401s),
    // so made-up secrets from it are refused before any lookup, each one, not per secret.
    for (let i = 0; i < 3; i++) {
      const guess = `tally_${String(i).repeat(40)}`;
      const refused = await app.call("GET", "/v1/organizations", { key: guess });
      expect(refused.statusCode).toBe(429);
      expect(refused.json().error.message).toContain("failed authentications");
    }
  });

  it("gives a made-up secret no budget of its own: its 401s spend its address's", async () => {
    const garbage = "tally_1111111111111111111111111111111111111111";
    // A fresh instance, so the address has no failures yet; keys get far more than 60.
    const fresh = await createTestApp({
      env: {
        TALLY_RATE_LIMIT_PER_SECOND: "1000",
        TALLY_RATE_LIMIT_ANONYMOUS_PER_SECOND: "1",
        TALLY_RATE_LIMIT_WINDOW_SECONDS: String(WINDOW),
      },
    });
    expect((await fresh.call("GET", "/v1/organizations")).statusCode).toBe(200);
    expect(new Set(await spend(fresh, WINDOW, garbage, "/v1/organizations"))).toEqual(
      new Set([401]),
    );
    expect((await fresh.call("GET", "/v1/organizations", { key: garbage })).statusCode).toBe(429);
    // Being refused does not make a secret known: it stays refused.
    expect((await fresh.call("GET", "/v1/organizations", { key: garbage })).statusCode).toBe(429);
    // A key that authenticated here lately still works from that address.
    expect((await fresh.call("GET", "/v1/organizations")).statusCode).toBe(200);
  });

  it("never throttles health, readiness and metrics", async () => {
    // The address budget is spent by the previous test; spend it here too in case of reordering.
    await spend(app, WINDOW + 1, null, "/v1/organizations");
    for (const url of ["/healthz", "/readyz", "/metrics"]) {
      expect(new Set(await spend(app, 5, null, url)), url).toEqual(new Set([200]));
    }
  });
});

describe("rate limiting switched off", async () => {
  const app = await createTestApp({
    env: {
      TALLY_RATE_LIMIT_PER_SECOND: "0",
      TALLY_RATE_LIMIT_ANONYMOUS_PER_SECOND: "1",
      TALLY_RATE_LIMIT_WINDOW_SECONDS: String(WINDOW),
    },
  });

  it("0 turns one budget off and leaves the other", async () => {
    const keyed = await spend(app, WINDOW + 20, app.platformKey, "/v1/organizations");
    expect(new Set(keyed)).toEqual(new Set([200]));
    const anonymous = await spend(app, WINDOW + 1, null, "/v1/organizations");
    expect(anonymous.slice(0, WINDOW)).toEqual(Array(WINDOW).fill(401));
    expect(anonymous[WINDOW]).toBe(429);
  });
});

describe("rate limiting with a short window", async () => {
  const app = await createTestApp({
    env: { TALLY_RATE_LIMIT_PER_SECOND: "1", TALLY_RATE_LIMIT_WINDOW_SECONDS: "1" },
  });

  it("lets a key through again in the next window", async () => {
    const key = app.platformKey;
    const url = "/v1/organizations";
    // The window is one request per second: keep asking until one is refused…
    let refused = false;
    for (let i = 0; i < 50 && !refused; i++) {
      refused = (await app.call("GET", url, { key })).statusCode === 429;
    }
    expect(refused).toBe(true);
    // …and then until one is let through (waiting on the condition, not on a clock).
    const deadline = Date.now() + 15_000;
    let status = 429;
    while (status === 429 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      status = (await app.call("GET", url, { key })).statusCode;
    }
    expect(status).toBe(200);
  });
});
