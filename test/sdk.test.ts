import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { exportOpenApi, OPENAPI_PATH } from "../scripts/export-openapi.js";
import {
  backoffDelay,
  createTallyClient,
  type FetchLike,
  retryAfterMs,
  type TallyClient,
  TallyError,
  type UsageEvent,
} from "../sdk/src/index.js";
import { loadConfig } from "../src/app/config.js";
import { createLogger, createRuntime, type Runtime } from "../src/app/runtime.js";
import { createApiKey } from "../src/modules/orgs/orgs.service.js";
import { removeAfterwards, testDatabase } from "./support/db.js";

/** The SDK against a real, listening Tally (PGlite or PostgreSQL per TEST_DATABASE_URL). */

let runtime: Runtime;
let baseUrl: string;
let platformKey: string;
let admin: TallyClient;

beforeAll(async () => {
  runtime = await createRuntime(loadConfig({ LOG_LEVEL: "silent", PORT: "0" }), {
    database: await testDatabase(),
    logger: createLogger("silent"),
    workers: false,
  });
  baseUrl = await runtime.listen();
  ({ secret: platformKey } = await createApiKey(runtime.ctx, {
    orgId: null,
    name: "sdk test",
    role: "platform",
  }));
  admin = createTallyClient({ baseUrl, apiKey: platformKey });
});
afterAll(() => runtime?.close());

let orgCounter = 0;
/** An organisation with `credits` granted, and an ingest key for it. */
async function setup(credits: string) {
  const externalId = `sdk-${++orgCounter}`;
  const { data: org } = await admin.api.POST("/v1/organizations", {
    body: { name: `SDK ${orgCounter}`, external_id: externalId },
  });
  const orgId = org!.id;
  const path = { org_id: orgId };
  const adjusted = await admin.api.POST("/v1/organizations/{org_id}/adjustments", {
    params: { path },
    body: { amount: `+${credits}`, reason: "sdk test grant" },
  });
  expect(adjusted.response.status).toBe(201);
  const { data: key } = await admin.api.POST("/v1/organizations/{org_id}/api-keys", {
    params: { path },
    body: { name: "sdk ingest", role: "ingest" },
  });
  return { orgId, externalId, ingestKey: key!.key };
}

let eventCounter = 0;
/** gpt-4o: 1000 input tokens cost 0.25 credits, 100 output tokens 0.1. */
const chat = (): UsageEvent => ({
  id: `sdk-evt-${++eventCounter}`,
  type: "ai_tokens",
  model: "gpt-4o",
  operation: "chat.completion",
  tokens: { input: 1000, output: 100 },
});

describe("SDK against a live server", () => {
  it("ingests usage and reads the balance (exact decimal strings)", async () => {
    const { orgId, externalId, ingestKey } = await setup("100");
    const tally = createTallyClient({ baseUrl, apiKey: ingestKey });

    const one = await tally.ingest(chat());
    expect(one.data).toEqual([
      {
        id: expect.any(String),
        status: "accepted",
        cost: "0.35",
        transaction_id: expect.stringMatching(/^txn_/),
        balance_after: "99.65",
      },
    ]);
    const batch = await tally.ingest([chat(), chat()]);
    expect(batch.data.map((r) => [r.status, r.cost, r.balance_after])).toEqual([
      ["accepted", "0.35", "99.3"],
      ["accepted", "0.35", "98.95"],
    ]);

    const balance = await tally.balance(orgId);
    expect(balance).toMatchObject({
      org_id: orgId,
      balance: "98.95",
      reserved: "0",
      available: "98.95",
    });
    // ext:<external_id> names the organisation too (platform key).
    expect((await admin.balance(`ext:${externalId}`)).balance).toBe("98.95");
  });

  it("reads a CSV export as text through the raw client (parseAs: text)", async () => {
    const { orgId, ingestKey } = await setup("10");
    await createTallyClient({ baseUrl, apiKey: ingestKey }).ingest(chat());
    const { data, response } = await admin.api.GET(
      "/v1/organizations/{org_id}/usage-summaries.csv",
      { params: { path: { org_id: orgId } }, parseAs: "text" },
    );
    expect(response.status).toBe(200);
    expect(typeof data).toBe("string");
    expect((data as string).split("\r\n")[0]).toMatch(/^org_id,/);
  });

  it("reserve → settle with usage, reserve → release", async () => {
    const { orgId, ingestKey } = await setup("50");
    const tally = createTallyClient({ baseUrl, apiKey: ingestKey });

    const hold = await tally.reserve(orgId, "10", { description: "agent run" });
    expect(hold).toMatchObject({ status: "held", amount: "10", description: "agent run" });
    expect(await tally.balance(orgId)).toMatchObject({ reserved: "10", available: "40" });

    const settled = await tally.settle(orgId, hold.id, [
      {
        id: `sdk-cpu-${++eventCounter}`,
        type: "compute",
        meter: "compute.vcpu_seconds",
        quantity: "100",
      },
      chat(),
    ]);
    expect(settled.reservation).toMatchObject({ id: hold.id, status: "settled" });
    expect(settled.data.map((r) => r.cost)).toEqual(["0.2", "0.35"]);
    expect(await tally.balance(orgId)).toMatchObject({
      balance: "49.45",
      reserved: "0",
      available: "49.45",
    });

    const second = await tally.reserve(orgId, "5", { expiresInSeconds: 60 });
    const released = await tally.release(orgId, second.id);
    expect(released).toMatchObject({ id: second.id, status: "released" });
    expect(await tally.balance(orgId)).toMatchObject({ balance: "49.45", reserved: "0" });

    // Settling a released hold: a typed 409.
    const error = await tally.settle(orgId, second.id, [chat()]).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TallyError);
    expect(error).toMatchObject({ status: 409, code: "invalid_state" });
  });

  it("bad input → TallyError with code, message, request_id and details", async () => {
    const { orgId, ingestKey } = await setup("5");
    const tally = createTallyClient({ baseUrl, apiKey: ingestKey });

    const invalid = (await tally.reserve(orgId, "ten").catch((e: unknown) => e)) as TallyError;
    expect(invalid).toBeInstanceOf(TallyError);
    expect(invalid).toMatchObject({
      name: "TallyError",
      status: 400,
      code: "invalid_request",
      message: expect.any(String),
      request_id: expect.stringMatching(/^req_/),
    });
    expect(invalid.details.length).toBeGreaterThan(0);
    expect(invalid.details[0]).toMatchObject({ message: expect.any(String) });

    await expect(tally.reserve(orgId, "1000")).rejects.toMatchObject({
      status: 402,
      code: "insufficient_credits",
    });
    await expect(admin.balance("org_00000000000000000000000000")).rejects.toMatchObject({
      status: 404,
      code: "not_found",
    });
    const anonymous = createTallyClient({ baseUrl, apiKey: "key_not_a_real_key" });
    await expect(anonymous.balance(orgId)).rejects.toMatchObject({
      status: 401,
      code: "unauthenticated",
    });
  });

  it("retries a POST after two 503s with the same Idempotency-Key: exactly one effect", async () => {
    const { orgId, ingestKey } = await setup("30");
    const seen: { key: string | null; status: number; body: string }[] = [];
    let calls = 0;
    // 1st attempt reaches the server but its answer is lost (a proxy says 503); the 2nd is
    // refused before reaching it; the 3rd gets through and is answered from the stored first.
    const flaky: FetchLike = async (request) => {
      calls++;
      const key = request.headers.get("idempotency-key");
      if (calls === 2) {
        seen.push({ key, status: 503, body: "" });
        return new Response("upstream unavailable", { status: 503 });
      }
      const real = await fetch(request);
      const body = await real.text();
      seen.push({ key, status: real.status, body });
      if (calls === 1) return new Response("bad gateway", { status: 503 });
      return new Response(body, { status: real.status, headers: real.headers });
    };
    const tally = createTallyClient({ baseUrl, apiKey: ingestKey, fetch: flaky, retryDelayMs: 5 });

    const hold = await tally.reserve(orgId, "12");
    expect(calls).toBe(3);
    expect(seen[0]!.key).toMatch(/^[0-9a-f-]{36}$/);
    expect(seen.map((s) => s.key)).toEqual([seen[0]!.key, seen[0]!.key, seen[0]!.key]);
    expect(JSON.parse(seen[0]!.body).id).toBe(hold.id);
    expect(JSON.parse(seen[2]!.body).id).toBe(hold.id);

    const { data: holds } = await admin.api.GET("/v1/organizations/{org_id}/reservations", {
      params: { path: { org_id: orgId } },
    });
    expect(holds!.data.map((r) => r.id)).toEqual([hold.id]);
    expect(await tally.balance(orgId)).toMatchObject({ reserved: "12", available: "18" });
  });

  it("retries network errors and 429 (Retry-After), gives up after `retries`", async () => {
    const { orgId, ingestKey } = await setup("1");
    let calls = 0;
    const sometimes: FetchLike = async (request) => {
      calls++;
      if (calls === 1) throw new TypeError("fetch failed");
      if (calls === 2)
        return Response.json(
          { error: { code: "rate_limited", message: "slow down", request_id: "r", details: [] } },
          { status: 429, headers: { "retry-after": "0" } },
        );
      return fetch(request);
    };
    const tally = createTallyClient({
      baseUrl,
      apiKey: ingestKey,
      fetch: sometimes,
      retryDelayMs: 5,
    });
    expect((await tally.balance(orgId)).balance).toBe("1");
    expect(calls).toBe(3);

    let attempts = 0;
    const down: FetchLike = async () => {
      attempts++;
      return new Response("down", { status: 503 });
    };
    const broken = createTallyClient({
      baseUrl,
      apiKey: ingestKey,
      fetch: down,
      retries: 2,
      retryDelayMs: 1,
    });
    await expect(broken.balance(orgId)).rejects.toMatchObject({ status: 503, code: "internal" });
    expect(attempts).toBe(3);

    const offline = createTallyClient({
      baseUrl,
      apiKey: ingestKey,
      retries: 1,
      retryDelayMs: 1,
      fetch: async () => {
        throw new TypeError("fetch failed");
      },
    });
    await expect(offline.balance(orgId)).rejects.toMatchObject({
      status: 0,
      code: "network_error",
    });
  });

  it("never retries requests that are not safe to repeat, nor 4xx answers", async () => {
    const { orgId } = await setup("1");
    const methods: string[] = [];
    const failing: FetchLike = async (request) => {
      methods.push(request.method);
      return new Response("oops", { status: 503 });
    };
    const tally = createTallyClient({
      baseUrl,
      apiKey: platformKey,
      fetch: failing,
      retryDelayMs: 1,
    });
    const patched = await tally.api.PATCH("/v1/organizations/{org_id}", {
      params: { path: { org_id: orgId } },
      body: { name: "renamed" },
    });
    expect(patched.response.status).toBe(503);
    expect(methods).toEqual(["PATCH"]);

    let posts = 0;
    const counting: FetchLike = async (request) => {
      posts++;
      return fetch(request);
    };
    const counted = createTallyClient({ baseUrl, apiKey: platformKey, fetch: counting });
    await expect(counted.reserve(orgId, "-1")).rejects.toMatchObject({ status: 400 });
    expect(posts).toBe(1);
  });

  it("keeps a caller's Idempotency-Key: the same key replays the first answer", async () => {
    const { orgId, ingestKey } = await setup("10");
    const tally = createTallyClient({ baseUrl, apiKey: ingestKey });
    const first = await tally.reserve(orgId, "3", { idempotencyKey: "job-42" });
    const again = await tally.reserve(orgId, "3", { idempotencyKey: "job-42" });
    expect(again.id).toBe(first.id);
    await expect(tally.reserve(orgId, "4", { idempotencyKey: "job-42" })).rejects.toMatchObject({
      status: 409,
      code: "idempotency_conflict",
    });
    expect(await tally.balance(orgId)).toMatchObject({ reserved: "3" });
  });
});

describe("generated SDK files", () => {
  const stale =
    "is stale: run `npm run sdk:generate` and commit sdk/openapi.json and sdk/src/schema.d.ts";

  it("sdk/openapi.json is the live /openapi.json, and the export script produces it", async () => {
    const live = await (await fetch(`${baseUrl}/openapi.json`)).json();
    const committed = JSON.parse(readFileSync(OPENAPI_PATH, "utf8"));
    expect(committed, `sdk/openapi.json ${stale}`).toEqual(live);
    expect(JSON.parse(await exportOpenApi())).toEqual(live);
  });

  it("sdk/src/schema.d.ts is generated from sdk/openapi.json", async () => {
    const dir = mkdtempSync(join(tmpdir(), "tally-sdk-"));
    removeAfterwards(dir);
    const root = join(import.meta.dirname, "..");
    await promisify(execFile)(
      process.execPath,
      [
        join(root, "node_modules/openapi-typescript/bin/cli.js"),
        OPENAPI_PATH,
        "-o",
        join(dir, "schema.d.ts"),
      ],
      { cwd: root },
    );
    const committed = readFileSync(join(root, "sdk/src/schema.d.ts"), "utf8");
    expect(
      committed === readFileSync(join(dir, "schema.d.ts"), "utf8"),
      `schema.d.ts ${stale}`,
    ).toBe(true);
  });
});

describe("SDK retry timing", () => {
  it("backoff doubles with jitter in [d/2, d], capped", () => {
    for (let attempt = 0; attempt < 6; attempt++) {
      const d = Math.min(1000, 100 * 2 ** attempt);
      const wait = backoffDelay(attempt, 100, 1000);
      expect(wait).toBeGreaterThanOrEqual(d / 2);
      expect(wait).toBeLessThanOrEqual(d);
    }
  });

  it("reads Retry-After as seconds or an HTTP date", () => {
    const now = Date.parse("2026-11-24T10:00:00Z");
    expect(retryAfterMs("3", now)).toBe(3000);
    expect(retryAfterMs("Tue, 24 Nov 2026 10:00:05 GMT", now)).toBe(5000);
    expect(retryAfterMs("Tue, 24 Nov 2026 09:00:00 GMT", now)).toBe(0);
    expect(retryAfterMs(null, now)).toBeNull();
    expect(retryAfterMs("soon", now)).toBeNull();
  });
});
