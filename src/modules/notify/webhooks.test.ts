import { createHmac } from "node:crypto";
import { sql } from "kysely";
import { beforeEach, describe, expect, it } from "vitest";
import { createTestApp, waitFor } from "../../../test/support/app.js";
import { FANOUT_QUEUE, fanOutEvent } from "./events.js";
import { JobRunner } from "./jobs.js";
import { type EventType, emitEvent, runDueJobs } from "./notify.service.js";
import { createJobRunner, createNotifyWorker } from "./notify.worker.js";
import { startReceiver } from "./test-receiver.js";
import { EndpointPacing, WEBHOOK_QUEUE_OPTIONS } from "./webhooks.service.js";

/** Standard Webhooks verification written from the spec, not with the library that signs. */
function verifySignature(secret: string, headers: Record<string, unknown>, body: string) {
  const key = Buffer.from(secret.slice("whsec_".length), "base64");
  const expected = createHmac("sha256", key)
    .update(`${headers["webhook-id"]}.${headers["webhook-timestamp"]}.${body}`)
    .digest("base64");
  return String(headers["webhook-signature"])
    .split(" ")
    .some((s) => s === `v1,${expected}`);
}

describe("webhook delivery", async () => {
  const app = await createTestApp({ env: { TALLY_ALLOW_PRIVATE_WEBHOOK_URLS: "true" } });
  const ctx = app.runtime.ctx;
  const receiver = await startReceiver();
  const orgId = await app.createOrg();

  async function createEndpoint(body: Record<string, unknown> = {}) {
    const res = await app.call("POST", "/v1/webhook-endpoints", {
      body: { url: receiver.url, ...body },
    });
    expect(res.statusCode, res.body).toBe(201);
    return res.json() as { id: string; secret: string };
  }

  async function emit(type: EventType = "balance.low", data: Record<string, unknown> = {}) {
    return ctx.db
      .transaction()
      .execute((trx) => emitEvent(trx, ctx, { type, orgId, data: { balance: "12.5", ...data } }));
  }

  async function deliveries(endpointId: string) {
    const res = await app.call("GET", `/v1/webhook-endpoints/${endpointId}/deliveries`);
    expect(res.statusCode, res.body).toBe(200);
    return res.json().data as Array<Record<string, unknown>>;
  }

  beforeEach(async () => {
    // Each test starts from an empty queue and no endpoints.
    await runDueJobs(ctx);
    await ctx.db.deleteFrom("webhook_endpoints").execute();
    receiver.requests.length = 0;
    receiver.respond = () => 204;
  });

  it("creates an endpoint with a Standard Webhooks secret", async () => {
    const res = await app.call("POST", "/v1/webhook-endpoints", {
      body: { url: receiver.url, events: ["balance.low", "purchase.completed"], org_id: orgId },
    });
    expect(res.statusCode, res.body).toBe(201);
    const body = res.json();
    expect(body).toEqual({
      id: expect.stringMatching(/^whe_/),
      url: receiver.url,
      events: ["balance.low", "purchase.completed"],
      org_id: orgId,
      status: "enabled",
      disabled_reason: null,
      disabled_at: null,
      created_at: "2026-11-24T10:00:00.000Z",
      secret: expect.stringMatching(/^whsec_[A-Za-z0-9+/]+=*$/),
    });
    expect(Buffer.from(body.secret.slice(6), "base64").length).toBeGreaterThanOrEqual(24);

    const got = await app.call("GET", `/v1/webhook-endpoints/${body.id}`);
    expect(got.statusCode).toBe(200);
    expect(got.json().secret).toBeUndefined();
    expect(got.json().events).toEqual(["balance.low", "purchase.completed"]);

    const list = await app.call("GET", "/v1/webhook-endpoints");
    expect(list.json().data.map((e: { id: string }) => e.id)).toContain(body.id);

    const del = await app.call("DELETE", `/v1/webhook-endpoints/${body.id}`);
    expect(del.statusCode).toBe(204);
    expect((await app.call("GET", `/v1/webhook-endpoints/${body.id}`)).statusCode).toBe(404);
    expect((await app.call("DELETE", `/v1/webhook-endpoints/${body.id}`)).statusCode).toBe(404);
  });

  it("rejects unknown event types, non-http URLs and unknown organisations", async () => {
    const bad = [
      { url: receiver.url, events: ["balance.lowish"] },
      { url: "ftp://example.com/x" },
      { url: "not a url" },
      { url: receiver.url, extra: true },
    ];
    for (const body of bad) {
      const res = await app.call("POST", "/v1/webhook-endpoints", { body });
      expect(res.statusCode, JSON.stringify(body)).toBe(400);
      expect(res.json().error.code).toBe("invalid_request");
    }
    const res = await app.call("POST", "/v1/webhook-endpoints", {
      body: { url: receiver.url, org_id: "org_00000000000000000000000000" },
    });
    expect(res.statusCode).toBe(404);
  });

  it("delivers nothing for a rolled-back transaction", async () => {
    await createEndpoint();
    await expect(
      ctx.db.transaction().execute(async (trx) => {
        await emitEvent(trx, ctx, { type: "balance.low", orgId, data: {} });
        throw new Error("roll back");
      }),
    ).rejects.toThrow("roll back");
    expect(await runDueJobs(ctx)).toBe(0);
    expect(receiver.requests).toHaveLength(0);
    expect(
      await ctx.db.selectFrom("events").selectAll().where("org_id", "=", orgId).execute(),
    ).toHaveLength(0);
  });

  it("delivers a committed event, signed, in the documented shape", async () => {
    const endpoint = await createEndpoint();
    const { id } = await emit("balance.low", { threshold: "100" });
    expect(receiver.requests).toHaveLength(0); // nothing leaves before a worker runs
    await runDueJobs(ctx);
    expect(receiver.requests).toHaveLength(1);
    const [request] = receiver.requests;
    expect(JSON.parse(request!.body)).toEqual({
      id,
      type: "balance.low",
      created_at: "2026-11-24T10:00:00.000Z",
      org_id: orgId,
      data: { balance: "12.5", threshold: "100" },
    });
    expect(request!.headers["content-type"]).toBe("application/json");
    expect(request!.headers["webhook-id"]).toBe(id);
    expect(request!.headers["webhook-timestamp"]).toBe(
      String(Math.floor(app.clock.now().getTime() / 1000)),
    );
    expect(verifySignature(endpoint.secret, request!.headers, request!.body)).toBe(true);
    expect(verifySignature(endpoint.secret, request!.headers, `${request!.body} `)).toBe(false);

    const [attempt] = await deliveries(endpoint.id);
    expect(attempt).toEqual({
      id: expect.stringMatching(/^dlv_/),
      event_id: id,
      event_type: "balance.low",
      attempt: 1,
      status_code: 204,
      error: null,
      duration_ms: expect.any(Number),
      succeeded: true,
      created_at: "2026-11-24T10:00:00.000Z",
    });
    expect(await runDueJobs(ctx)).toBe(0);
  });

  it("delivers only to endpoints of the event's organisation (or all) and type", async () => {
    const otherOrg = await app.createOrg();
    const all = await createEndpoint();
    const mine = await createEndpoint({ org_id: orgId, events: ["balance.low"] });
    const wrongType = await createEndpoint({ org_id: orgId, events: ["purchase.completed"] });
    const other = await createEndpoint({ org_id: otherOrg });
    await emit("balance.low");
    await runDueJobs(ctx);
    expect(receiver.requests).toHaveLength(2);
    expect(await deliveries(all.id)).toHaveLength(1);
    expect(await deliveries(mine.id)).toHaveLength(1);
    expect(await deliveries(wrongType.id)).toHaveLength(0);
    expect(await deliveries(other.id)).toHaveLength(0);
  });

  it("retries with backoff: two failures, then success, three attempts logged", async () => {
    const endpoint = await createEndpoint();
    receiver.respond = (_r, i) => (i < 2 ? 500 : 200);
    const { backoff } = WEBHOOK_QUEUE_OPTIONS;
    const low = (n: number) => backoff.baseMs * 2 ** (n - 1) * (1 - backoff.jitter);
    const high = (n: number) => backoff.baseMs * 2 ** (n - 1) * (1 + backoff.jitter);

    await emit();
    await runDueJobs(ctx);
    expect(receiver.requests).toHaveLength(1);

    app.clock.advance(low(1) - 500);
    expect(await runDueJobs(ctx)).toBe(0); // not due yet
    app.clock.advance(high(1) - low(1) + 1000);
    expect(await runDueJobs(ctx)).toBe(1);
    expect(receiver.requests).toHaveLength(2);

    app.clock.advance(low(2) - 500);
    expect(await runDueJobs(ctx)).toBe(0);
    app.clock.advance(high(2) - low(2) + 1000);
    expect(await runDueJobs(ctx)).toBe(1);
    expect(receiver.requests).toHaveLength(3);

    app.clock.advance(24 * 3600_000);
    expect(await runDueJobs(ctx)).toBe(0);
    const ids = new Set(receiver.requests.map((r) => r.headers["webhook-id"]));
    expect(ids.size).toBe(1); // the same message id on every retry
    for (const r of receiver.requests) {
      expect(verifySignature(endpoint.secret, r.headers, r.body)).toBe(true);
    }

    const attempts = (await deliveries(endpoint.id)).reverse();
    expect(attempts.map((a) => [a.attempt, a.status_code, a.succeeded, a.error])).toEqual([
      [1, 500, false, "HTTP 500"],
      [2, 500, false, "HTTP 500"],
      [3, 200, true, null],
    ]);
    const ep = (await app.call("GET", `/v1/webhook-endpoints/${endpoint.id}`)).json();
    expect(ep.status).toBe("enabled");
  });

  it("records a timeout as a failed attempt", async () => {
    const endpoint = await createEndpoint();
    receiver.respond = () => "hang";
    const runner = createJobRunner(ctx, { webhookTimeoutMs: 200 });
    await emit();
    await runner.runDueJobs();
    const [attempt] = await deliveries(endpoint.id);
    expect(attempt).toMatchObject({
      succeeded: false,
      status_code: null,
      error: "timed out after 200 ms",
    });
    receiver.respond = () => 204;
    app.clock.advance(60_000);
    await runner.runDueJobs();
    expect((await deliveries(endpoint.id))[0]).toMatchObject({ attempt: 2, succeeded: true });
  });

  it("a crashed worker's job is picked up again once its lease has passed", async () => {
    await createEndpoint();
    await emit();
    const crashed = createJobRunner(ctx, { leaseMs: 60_000 });
    const claimed = await crashed.claimDueJobs(10);
    expect(claimed).toHaveLength(1); // the fan-out job; this runner now "dies"

    expect(await runDueJobs(ctx)).toBe(0); // leased to the dead runner
    app.clock.advance(59_000); // leases run on the database's clock, not the instance's
    expect(await runDueJobs(ctx)).toBe(0);
    await sql`update jobs set locked_until = now() - interval '1 second' where id = ${claimed[0]!.id}`.execute(
      ctx.db,
    );
    await runDueJobs(ctx);
    expect(receiver.requests).toHaveLength(1);
    const job = await ctx.db
      .selectFrom("jobs")
      .selectAll()
      .where("id", "=", claimed[0]!.id)
      .executeTakeFirstOrThrow();
    expect(job).toMatchObject({ status: "done", attempts: 2 });
  });

  it("two runners at once deliver every event exactly once", async () => {
    app.clock.advance(1); // this test's jobs are those created at this instant
    await createEndpoint();
    const ids: string[] = [];
    for (let i = 0; i < 30; i++) ids.push((await emit()).id);
    const a = createJobRunner(ctx, { batchSize: 3 });
    const b = createJobRunner(ctx, { batchSize: 3 });
    const [ranA, ranB] = await Promise.all([a.runDueJobs(), b.runDueJobs()]);
    expect(ranA + ranB).toBe(60); // 30 fan-outs + 30 deliveries
    expect(Math.min(ranA, ranB)).toBeGreaterThan(0); // both took a share
    const delivered = receiver.requests.map((r) => r.headers["webhook-id"]);
    expect(delivered.sort()).toEqual([...ids].sort());
    const jobs = await ctx.db
      .selectFrom("jobs")
      .select(["status", "attempts"])
      .where("org_id", "=", orgId)
      .where("created_at", "=", app.clock.now())
      .execute();
    expect(jobs).toHaveLength(60);
    expect(jobs.every((j) => j.status === "done" && j.attempts === 1)).toBe(true);
  });

  it("disables an endpoint whose deliveries all fail for 3 days", async () => {
    const endpoint = await createEndpoint();
    receiver.respond = () => 503;
    await emit();
    const start = app.clock.now().getTime();
    await runDueJobs(ctx);
    while (app.clock.now().getTime() - start < 4 * 24 * 3600_000) {
      app.clock.advance(30 * 60_000);
      await runDueJobs(ctx);
    }
    const attempts = await deliveries(endpoint.id);
    expect(attempts.length).toBeGreaterThan(15);
    const spanMs =
      Date.parse(attempts[0]!.created_at as string) -
      Date.parse(attempts[attempts.length - 1]!.created_at as string);
    expect(spanMs).toBeGreaterThanOrEqual(24 * 3600_000); // retried for at least 24 h
    const ep = (await app.call("GET", `/v1/webhook-endpoints/${endpoint.id}`)).json();
    expect(ep.status).toBe("disabled");
    expect(ep.disabled_reason).toMatch(/failed/);

    // Disabled: new events are not sent; re-enabled: they are.
    const before = receiver.requests.length;
    await emit();
    await runDueJobs(ctx);
    expect(receiver.requests).toHaveLength(before);
    receiver.respond = () => 204;
    const enabled = await app.call("POST", `/v1/webhook-endpoints/${endpoint.id}/enable`);
    expect(enabled.statusCode, enabled.body).toBe(200);
    expect(enabled.json()).toMatchObject({ status: "enabled", disabled_reason: null });
    await emit();
    await runDueJobs(ctx);
    expect(receiver.requests).toHaveLength(before + 1);
  });

  it("does not disable an endpoint that succeeded in between", async () => {
    const endpoint = await createEndpoint();
    // Always fails for one event, succeeds for others.
    let poisoned = "";
    receiver.respond = (r) => (JSON.parse(r.body).id === poisoned ? 500 : 204);
    poisoned = (await emit()).id;
    await runDueJobs(ctx);
    const start = app.clock.now().getTime();
    while (app.clock.now().getTime() - start < 4 * 24 * 3600_000) {
      app.clock.advance(6 * 3600_000);
      await emit("balance.recovered");
      await runDueJobs(ctx);
    }
    const job = await ctx.db
      .selectFrom("jobs")
      .select(["status", "last_error"])
      .where("dedupe_key", "=", `webhook:${endpoint.id}:${poisoned}`)
      .executeTakeFirstOrThrow();
    expect(job).toEqual({ status: "dead", last_error: "HTTP 500" });
    const ep = (await app.call("GET", `/v1/webhook-endpoints/${endpoint.id}`)).json();
    expect(ep.status).toBe("enabled");
  });

  it("stops delivering to a deleted endpoint", async () => {
    const endpoint = await createEndpoint();
    receiver.respond = () => 500;
    await emit();
    await runDueJobs(ctx);
    expect(receiver.requests).toHaveLength(1);
    await app.call("DELETE", `/v1/webhook-endpoints/${endpoint.id}`);
    app.clock.advance(3600_000);
    await runDueJobs(ctx);
    expect(receiver.requests).toHaveLength(1);
  });

  it("one endpoint gets at most half of a runner's slots, a slow one a fifth: other endpoints' deliveries go on", async () => {
    const slow = await startReceiver();
    slow.respond = () => "hang";
    const slowEndpoint = await createEndpoint({ url: slow.url, org_id: orgId });
    const otherOrg = await app.createOrg();
    await createEndpoint({ org_id: otherOrg });
    for (let i = 0; i < 10; i++) await emit();
    for (let i = 0; i < 3; i++) {
      await ctx.db
        .transaction()
        .execute((trx) =>
          emitEvent(trx, ctx, { type: "balance.low", orgId: otherOrg, data: { balance: "1" } }),
        );
    }
    // Fanned out first: the 13 deliveries are due together, the hanging endpoint's first.
    await new JobRunner({ ctx }).register(FANOUT_QUEUE, fanOutEvent).runDueJobs();
    const runner = createJobRunner(ctx, {
      batchSize: 6,
      pollIntervalMs: 20,
      webhookTimeoutMs: 4_000, // the hanging three stay claimed while the rest is checked
    });
    try {
      await waitFor(
        async () => {
          await runner.tick();
          return receiver.requests.length === 3;
        },
        { timeoutMs: 5_000 },
      );
      // 3 of the 6 slots (half), though its deliveries came first and none was slow yet.
      expect(slow.requests).toHaveLength(3);
      const waiting = await ctx.db
        .selectFrom("jobs")
        .select(["status", "attempts"])
        .where("concurrency_key", "=", `webhook:${slowEndpoint.id}`)
        .where("status", "=", "pending")
        .execute();
      // Not claimed (or handed straight back): no attempt counted.
      expect(waiting).toEqual(Array(7).fill({ status: "pending", attempts: 0 }));
    } finally {
      await runner.shutdown(); // waits for the three to time out (attempt 1, failed)
    }

    // Once it answers, every delivery arrives; the ones that waited on their first attempt.
    slow.respond = () => 204;
    const fresh = createJobRunner(ctx);
    for (let i = 0; i < 10 && slow.requests.length < 13; i++) {
      app.clock.advance(60_000);
      await fresh.runDueJobs();
    }
    const log = await deliveries(slowEndpoint.id);
    expect(log.filter((d) => !d.succeeded).map((d) => d.attempt)).toEqual([1, 1, 1]);
    expect(
      log
        .filter((d) => d.succeeded)
        .map((d) => d.attempt)
        .sort(),
    ).toEqual([1, 1, 1, 1, 1, 1, 1, 2, 2, 2]);
  });

  it("pacing: an endpoint is slow while a delivery runs a second, and for a minute after one took that long", () => {
    const pacing = new EndpointPacing();
    const limit = (key: string, oldestRunningMs = 0) =>
      pacing.concurrency(key, { oldestRunningMs, slots: 20 });
    expect(limit("webhook:a")).toBe(10);
    expect(limit("webhook:a", 999)).toBe(10);
    expect(limit("webhook:a", 1_000)).toBe(4);
    pacing.noteDuration("webhook:a", 999);
    expect(limit("webhook:a")).toBe(10);
    pacing.noteDuration("webhook:a", 10_000);
    expect(limit("webhook:a")).toBe(4);
    expect(limit("webhook:b")).toBe(10);
    expect(pacing.concurrency("webhook:a", { oldestRunningMs: 0, slots: 3 })).toBe(1);
  });

  it("a quick endpoint is not limited: a burst is delivered in one round, nothing deferred", async () => {
    const quick = await startReceiver();
    const endpoint = await createEndpoint({ url: quick.url, org_id: orgId });
    for (let i = 0; i < 30; i++) await emit();
    await createJobRunner(ctx, { batchSize: 10 }).runDueJobs();
    expect(quick.requests).toHaveLength(30);
    const jobs = await ctx.db
      .selectFrom("jobs")
      .select(["status", "attempts"])
      .where("queue", "=", "webhook.deliver")
      .where(sql`payload->>'endpointId'`, "=", endpoint.id)
      .execute();
    expect(jobs).toEqual(Array(30).fill({ status: "done", attempts: 1 }));
  });

  it("an organisation has at most 20 endpoints, and so does the platform-wide set", async () => {
    const org = await app.createOrg();
    const results = await Promise.all(
      Array.from({ length: 23 }, () =>
        app.call("POST", "/v1/webhook-endpoints", { body: { url: receiver.url, org_id: org } }),
      ),
    );
    expect(results.filter((r) => r.statusCode === 201)).toHaveLength(20);
    const refused = results.filter((r) => r.statusCode !== 201);
    expect(refused.map((r) => r.statusCode)).toEqual([409, 409, 409]);
    expect(refused[0]!.json().error).toMatchObject({ code: "invalid_state" });
    expect(refused[0]!.json().error.message).toMatch(/20 webhook endpoints/);
    // Platform-wide endpoints are counted on their own.
    expect((await createEndpoint()).id).toEqual(expect.any(String));
    // Deleting one makes room.
    const one = results.find((r) => r.statusCode === 201)!.json().id;
    expect((await app.call("DELETE", `/v1/webhook-endpoints/${one}`)).statusCode).toBe(204);
    const again = await app.call("POST", "/v1/webhook-endpoints", {
      body: { url: receiver.url, org_id: org },
    });
    expect(again.statusCode).toBe(201);
  });

  it("createNotifyWorker is a periodic task that runs the context's due jobs", async () => {
    await createEndpoint();
    const task = createNotifyWorker(ctx);
    expect(task.everyMs).toBeLessThanOrEqual(1000);
    await emit();
    await task.run(ctx);
    expect(receiver.requests).toHaveLength(1);
  });

  it("the background runner delivers without runDueJobs", async () => {
    await createEndpoint();
    const runner = createJobRunner(ctx, { pollIntervalMs: 20 });
    runner.start();
    try {
      await emit();
      await waitFor(() => receiver.requests.length > 0);
      expect(receiver.requests).toHaveLength(1);
    } finally {
      await runner.stop();
    }
  });
});
