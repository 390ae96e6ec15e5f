import { sql } from "kysely";
import { afterAll, describe, expect, it } from "vitest";
import { createTestApp, TestClock, twoInstances } from "../../../test/support/app.js";
import { onPostgres } from "../../../test/support/db.js";
import { createLogger, createRuntime, type Runtime } from "../../app/runtime.js";
import { setPaymentProvider } from "../billing/providers/index.js";
import type { ChargeInput, ChargeResult } from "../billing/providers/provider.js";
import { SandboxProvider } from "../billing/providers/sandbox.js";
import { JobRunner, runDueJobs } from "../notify/notify.service.js";
import { createApiKey } from "../orgs/orgs.service.js";
import { chargeTopupAttempt } from "./topup.runner.js";
import { TOPUP_QUEUE } from "./topup.service.js";

/**
 * Invariant 9 and "a crash never charges twice" with more than one service instance: the
 * processor is one (shared) sandbox, as Stripe is one for every instance.
 */
class CountingSandbox extends SandboxProvider {
  calls: ChargeInput[] = [];
  crashAfterCharge = false;
  constructor() {
    super("http://tally.test");
  }
  override async chargeOffSession(input: ChargeInput): Promise<ChargeResult> {
    this.calls.push(input);
    const result = await super.chargeOffSession(input);
    if (this.crashAfterCharge) throw new Error("process killed after the charge");
    return result;
  }
}

type Call = (
  method: "GET" | "POST" | "PUT",
  path: string,
  body?: unknown,
  headers?: Record<string, string>,
) => Promise<{ statusCode: number; body: string; json<T = Record<string, string>>(): T }>;

const caller =
  (runtime: Runtime, key: string | null): Call =>
  (method, path, body, headers = {}) =>
    runtime.app.inject({
      method,
      url: path,
      headers: {
        ...(key ? { authorization: `Bearer ${key}` } : {}),
        ...(body !== undefined && typeof body !== "string"
          ? { "content-type": "application/json" }
          : {}),
        ...headers,
      },
      payload:
        body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
    }) as never;

/** A package, an organisation with a saved success card (balance 1200) and auto-topup on. */
async function setupOrg(call: Call, publicCall: Call, threshold: string) {
  const pkg = await call("POST", "/v1/credit-packages", {
    name: "Auto",
    credits: "1000",
    bonus_credits: "200",
    price: "49.00",
  });
  expect(pkg.statusCode, pkg.body).toBe(201);
  const org = await call("POST", "/v1/organizations", { name: "Shared" });
  const orgId = org.json().id as string;
  const purchase = await call("POST", `/v1/organizations/${orgId}/purchases`, {
    package_id: pkg.json().id,
    save_payment_method: true,
  });
  const paid = await publicCall(
    "POST",
    `/sandbox/checkout/${purchase.json().id}`,
    "action=pay&card=success",
    { "content-type": "application/x-www-form-urlencoded" },
  );
  expect(paid.statusCode, paid.body).toBe(303);
  const put = await call("PUT", `/v1/organizations/${orgId}/auto-topup`, {
    enabled: true,
    threshold,
    package_id: pkg.json().id,
  });
  expect(put.statusCode, put.body).toBe(200);
  return orgId;
}

describe("auto-topup across a crash", async () => {
  const app = await createTestApp();
  const provider = new CountingSandbox();
  setPaymentProvider(app.runtime.ctx, provider);
  const call = caller(app.runtime, app.platformKey);
  const publicCall = caller(app.runtime, null);

  /** A second service instance on the same database (its own job runner and ingest engine). */
  async function secondInstance(): Promise<Runtime> {
    const runtime = await createRuntime(app.config, {
      database: app.runtime.database,
      clock: app.clock,
      logger: createLogger("silent"),
      workers: false,
    });
    setPaymentProvider(runtime.ctx, provider);
    // The database belongs to the first instance: close only this one's server and workers.
    afterAll(async () => {
      await runtime.workers.stop();
      await runtime.app.close();
    });
    return runtime;
  }

  const attemptsOf = async (orgId: string) =>
    (await call("GET", `/v1/organizations/${orgId}/auto-topup/attempts`)).json<{
      data: { id: string; status: string }[];
    }>().data;
  const purchaseEntries = (orgId: string) =>
    app.runtime.ctx.db
      .selectFrom("ledger_entries")
      .select("type")
      .where("org_id", "=", orgId)
      .where("type", "in", ["purchase", "bonus"])
      .execute();

  it("attempt committed, job never run by the instance that died: another instance charges it once", async () => {
    const orgId = await setupOrg(call, publicCall, "100");
    await call("POST", `/v1/organizations/${orgId}/adjustments`, { amount: "-1150", reason: "r" });
    const attempt = (await attemptsOf(orgId))[0]!;
    expect(attempt.status).toBe("in_flight");
    // The first instance "crashes" here: its runner never runs the job.
    const other = await secondInstance();
    await runDueJobs(other.ctx);
    expect((await attemptsOf(orgId))[0]).toMatchObject({ status: "succeeded" });
    expect(provider.calls.filter((c) => c.idempotencyKey === `topup:${attempt.id}`)).toHaveLength(
      1,
    );
    // Checkout purchase + topup purchase, each with its bonus.
    expect(await purchaseEntries(orgId)).toHaveLength(4);
  });

  it("killed after the processor charged, before fulfilment: the retry gets the same charge, credits once", async () => {
    const orgId = await setupOrg(call, publicCall, "100");
    await call("POST", `/v1/organizations/${orgId}/adjustments`, { amount: "-1150", reason: "r" });
    const attempt = (await attemptsOf(orgId))[0]!;

    // Instance 1 claims the job (lease) and dies right after the processor charged the card.
    const doomed = new JobRunner({ ctx: app.runtime.ctx, workerId: "doomed" });
    doomed.register(TOPUP_QUEUE, async () => {});
    const claimed = await doomed.claimDueJobs(10);
    const job = claimed.find((j) => j.queue === TOPUP_QUEUE)!;
    expect(job).toBeDefined();
    provider.crashAfterCharge = true;
    await expect(
      chargeTopupAttempt(
        {
          id: job.id,
          queue: job.queue,
          orgId: job.org_id,
          payload: JSON.parse(JSON.stringify(job.payload)),
          attempts: job.attempts,
          createdAt: job.created_at,
          runAt: job.run_at,
        },
        app.runtime.ctx,
      ),
    ).rejects.toThrow("process killed");
    provider.crashAfterCharge = false;
    expect(provider.charges.filter((c) => c.idempotencyKey === `topup:${attempt.id}`)).toHaveLength(
      1,
    );
    expect((await attemptsOf(orgId))[0]).toMatchObject({ status: "in_flight" });

    // Instance 2: nothing to do while the dead runner's lease lasts, then it takes the job over.
    const other = await secondInstance();
    await runDueJobs(other.ctx);
    expect((await attemptsOf(orgId))[0]).toMatchObject({ status: "in_flight" });
    // The lease ends (leases run on the database's clock).
    await sql`update jobs set locked_until = now() - interval '1 second' where status = 'running'`.execute(
      app.runtime.ctx.db,
    );
    app.clock.advance(3 * 60_000);
    await runDueJobs(other.ctx);

    const [done] = await attemptsOf(orgId);
    expect(done).toMatchObject({ id: attempt.id, status: "succeeded" });
    const calls = provider.calls.filter((c) => c.idempotencyKey === `topup:${attempt.id}`);
    expect(calls).toHaveLength(2); // asked twice, with one key…
    expect(provider.charges.filter((c) => c.idempotencyKey === `topup:${attempt.id}`)).toHaveLength(
      1,
    ); // …charged once
    expect(await purchaseEntries(orgId)).toHaveLength(4);
    const balance = (await call("GET", `/v1/organizations/${orgId}/balance`)).json();
    expect(balance.balance).toBe("1250");
  });
});

/**
 * Two service instances (two runtimes, two pools, two ingest engines, two job runners) on ONE
 * PostgreSQL database. PGlite is single-process by design, so this runs on PostgreSQL only.
 */
describe.runIf(onPostgres)("auto-topup with two instances on one PostgreSQL database", async () => {
  const clock = new TestClock();
  const provider = new CountingSandbox();
  const [a, b] = await twoInstances({ clock });
  for (const runtime of [a, b]) setPaymentProvider(runtime.ctx, provider);
  const { secret: key } = await createApiKey(a.ctx, { orgId: null, name: "two", role: "platform" });

  it("a storm of usage through both instances starts exactly one topup, charged once", async () => {
    const orgId = await setupOrg(caller(a, key), caller(a, null), "1200");
    const keyRes = await caller(b, key)("POST", `/v1/organizations/${orgId}/api-keys`, {
      name: "ingest",
      role: "ingest",
    });
    const ingest = keyRes.json().key as string;
    const responses = await Promise.all(
      Array.from({ length: 30 }, (_, i) =>
        caller(i % 2 === 0 ? a : b, ingest)("POST", "/v1/usage-events", {
          id: `storm-${i}`,
          type: "compute",
          meter: "compute.vcpu_seconds",
          quantity: "1000",
        }),
      ),
    );
    for (const r of responses) expect(r.statusCode, r.body).toBe(200);
    const attempts = await a.ctx.db
      .selectFrom("topup_attempts")
      .selectAll()
      .where("org_id", "=", orgId)
      .execute();
    expect(attempts).toHaveLength(1);
    expect(attempts[0]!.status).toBe("in_flight");

    await Promise.all([runDueJobs(a.ctx), runDueJobs(b.ctx)]);
    const after = await a.ctx.db
      .selectFrom("topup_attempts")
      .select("status")
      .where("org_id", "=", orgId)
      .execute();
    expect(after).toEqual([{ status: "succeeded" }]);
    expect(provider.calls.filter((c) => c.orgId === orgId)).toHaveLength(1);
    const balance = (await caller(b, key)("GET", `/v1/organizations/${orgId}/balance`)).json();
    expect(balance.balance).toBe("2340");
  });
});
