import { describe, expect, it } from "vitest";
import { createTestApp } from "../../../test/support/app.js";
import { runDueJobs } from "../notify/notify.service.js";
import { startSmtp } from "./test-smtp.js";

describe("low-balance alerts", async () => {
  const smtp = await startSmtp();
  const app = await createTestApp({
    env: { TALLY_SMTP_URL: smtp.url, TALLY_EMAIL_FROM: "Tally <alerts@tally.test>" },
  });
  const ctx = app.runtime.ctx;

  const alertsOf = (orgId: string) => `/v1/organizations/${orgId}/alerts`;
  const adjust = async (orgId: string, amount: string) => {
    const res = await app.call("POST", `/v1/organizations/${orgId}/adjustments`, {
      body: { amount, reason: "test" },
    });
    expect(res.statusCode, res.body).toBe(201);
  };
  let usageSeq = 0;
  /** Usage of `vcpuSeconds` × 0.002 credits (may go into debt). */
  const use = async (key: string, vcpuSeconds: number) => {
    const res = await app.call("POST", "/v1/usage-events", {
      key,
      body: {
        id: `u-${++usageSeq}`,
        type: "compute",
        meter: "compute.vcpu_seconds",
        quantity: String(vcpuSeconds),
      },
    });
    expect(res.statusCode, res.body).toBe(200);
  };
  const events = async (orgId: string, type?: string) => {
    let q = ctx.db.selectFrom("events").selectAll().where("org_id", "=", orgId);
    if (type) q = q.where("type", "=", type);
    const rows = await q.orderBy("id").execute();
    return rows.map((r) => ({ type: r.type, data: r.data as Record<string, unknown> }));
  };
  const jobsOf = async (orgId: string) =>
    (await ctx.db.selectFrom("jobs").select("id").where("org_id", "=", orgId).execute()).length;
  const setup = async (thresholds: string[], credits: string, emails?: string[]) => {
    const orgId = await app.createOrg();
    if (credits !== "0") await adjust(orgId, `+${credits}`);
    const put = await app.call("PUT", alertsOf(orgId), { body: { thresholds, emails } });
    expect(put.statusCode, put.body).toBe(200);
    return orgId;
  };

  it("GET before any PUT: no thresholds", async () => {
    const orgId = await app.createOrg();
    const res = await app.call("GET", alertsOf(orgId));
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({
      org_id: orgId,
      thresholds: [],
      emails: [],
      state: [],
      updated_at: null,
    });
  });

  it("PUT stores thresholds highest first with their state; GET returns the same", async () => {
    const orgId = await setup(["100", "500.50", "0"], "300", ["ops@example.com"]);
    const res = await app.call("GET", alertsOf(orgId));
    expect(res.json()).toMatchObject({
      thresholds: ["500.5", "100", "0"],
      emails: ["ops@example.com"],
      state: [
        { threshold: "500.5", in_alert: true },
        { threshold: "100", in_alert: false },
        { threshold: "0", in_alert: false },
      ],
    });
    // A PUT does not raise an event: the balance crossed nothing.
    expect(await events(orgId, "balance.low")).toEqual([]);
  });

  it("refuses bad configurations with 400", async () => {
    const orgId = await app.createOrg();
    const bodies: unknown[] = [
      {},
      { thresholds: "100" },
      { thresholds: [100] },
      { thresholds: ["-5"] },
      { thresholds: ["1.0000000000001"] },
      { thresholds: ["100", "100.0"] },
      { thresholds: Array.from({ length: 11 }, (_, i) => String(i)) },
      { thresholds: ["1"], emails: ["not-an-address"] },
      { thresholds: ["1"], emails: Array.from({ length: 11 }, (_, i) => `a${i}@example.com`) },
      { thresholds: ["1"], extra: true },
    ];
    for (const body of bodies) {
      const res = await app.call("PUT", alertsOf(orgId), { body });
      expect(res.statusCode, JSON.stringify(body)).toBe(400);
      expect(res.json().error.code).toBe("invalid_request");
    }
    expect((await app.call("GET", alertsOf(orgId))).json().thresholds).toEqual([]);
  });

  it("one write crossing several thresholds: one balance.low, for the lowest; all in alert", async () => {
    const orgId = await setup(["500", "100", "50"], "1000");
    await adjust(orgId, "-960");
    const low = await events(orgId, "balance.low");
    expect(low).toEqual([
      {
        type: "balance.low",
        data: {
          threshold: "50",
          crossed_thresholds: ["500", "100", "50"],
          balance: "40",
          previous_balance: "1000",
          available: "40",
        },
      },
    ]);
    const state = (await app.call("GET", alertsOf(orgId))).json().state;
    expect(state.map((s: { in_alert: boolean }) => s.in_alert)).toEqual([true, true, true]);
    const balance = (await app.call("GET", `/v1/organizations/${orgId}/balance`)).json();
    expect(balance.low_balance).toBe(true);
  });

  it("a write that also expires a block that fell due is still one write: one balance.low", async () => {
    const orgId = await setup(["500", "100"], "450");
    const promo = await app.call("POST", `/v1/organizations/${orgId}/adjustments`, {
      body: {
        amount: "+100",
        reason: "promotion",
        category: "promotional",
        expires_at: new Date(app.clock.now().getTime() + 3_600_000).toISOString(),
      },
    });
    expect(promo.statusCode, promo.body).toBe(201); // 550
    app.clock.advance(2 * 3_600_000); // the promotion is due; the expiry task has not run
    try {
      await adjust(orgId, "-400"); // 550 → 450 (expiry) → 50, one transaction
    } finally {
      app.clock.advance(-2 * 3_600_000);
    }
    expect(await events(orgId, "balance.low")).toEqual([
      {
        type: "balance.low",
        data: {
          threshold: "100",
          crossed_thresholds: ["500", "100"],
          balance: "50",
          previous_balance: "550",
          available: "50",
        },
      },
    ]);
    const types = (await app.call("GET", `/v1/organizations/${orgId}/transactions?limit=10`))
      .json()
      .data.map((e: { type: string }) => e.type);
    expect(types.slice(0, 2)).toEqual(["adjustment", "expiry"]);
  });

  it("crossing the thresholds one write at a time: one notice each", async () => {
    const orgId = await setup(["500", "100"], "600");
    await adjust(orgId, "-150"); // 450 < 500
    await adjust(orgId, "-100"); // 350: nothing new
    await adjust(orgId, "-300"); // 50 < 100
    expect((await events(orgId, "balance.low")).map((e) => e.data.threshold)).toEqual([
      "500",
      "100",
    ]);
  });

  it("oscillating around a threshold: one event per downward crossing, re-armed at ≥ T", async () => {
    const orgId = await setup(["100"], "150");
    await adjust(orgId, "-60"); // 90: crossing 1
    await adjust(orgId, "-5"); // 85: still below, nothing
    await adjust(orgId, "+15"); // 100: back at T → re-armed
    let state = (await app.call("GET", alertsOf(orgId))).json().state;
    expect(state).toMatchObject([{ threshold: "100", in_alert: false }]);
    const balance = (await app.call("GET", `/v1/organizations/${orgId}/balance`)).json();
    expect(balance.low_balance).toBe(false);
    await adjust(orgId, "-0.000000000001"); // just below: crossing 2
    await adjust(orgId, "+20"); // re-armed
    await adjust(orgId, "-30"); // crossing 3
    await adjust(orgId, "+5"); // still below: no re-arm
    await adjust(orgId, "-5"); // nothing
    const low = await events(orgId, "balance.low");
    expect(low.map((e) => e.data.balance)).toEqual(["90", "99.999999999999", "89.999999999999"]);
    state = (await app.call("GET", alertsOf(orgId))).json().state;
    expect(state).toMatchObject([{ threshold: "100", in_alert: true }]);
  });

  it("balance.depleted on > 0 → ≤ 0 and balance.recovered on ≤ 0 → > 0, with or without thresholds", async () => {
    const orgId = await app.createOrg();
    const key = await app.orgKey(orgId, "ingest");
    await adjust(orgId, "+10"); // 0 → 10: recovered? no: 0 is ≤ 0 and 10 > 0 → recovered
    await adjust(orgId, "-10"); // 10 → 0: depleted
    await use(key, 1000); // 0 → -2: already ≤ 0, nothing
    await adjust(orgId, "+1"); // -2 → -1 (debt repaid): still ≤ 0
    await adjust(orgId, "+3"); // -1 → 2: recovered
    await use(key, 2000); // 2 → -2: depleted
    expect(await events(orgId)).toEqual([
      { type: "balance.recovered", data: { balance: "10", previous_balance: "0" } },
      { type: "balance.depleted", data: { balance: "0", previous_balance: "10" } },
      { type: "balance.recovered", data: { balance: "2", previous_balance: "-1" } },
      { type: "balance.depleted", data: { balance: "-2", previous_balance: "2" } },
    ]);
  });

  it("a PUT evaluates new thresholds against the balance without an event; kept ones keep their state", async () => {
    const orgId = await setup(["100"], "50");
    let state = (await app.call("GET", alertsOf(orgId))).json().state;
    expect(state).toMatchObject([{ threshold: "100", in_alert: true }]);
    const changedAt = state[0].changed_at;
    app.clock.advance(60_000);
    const put = await app.call("PUT", alertsOf(orgId), { body: { thresholds: ["100", "20"] } });
    state = put.json().state;
    expect(state).toEqual([
      { threshold: "100", in_alert: true, changed_at: changedAt },
      { threshold: "20", in_alert: false, changed_at: app.clock.now().toISOString() },
    ]);
    expect(await events(orgId, "balance.low")).toEqual([]);
    await adjust(orgId, "-40"); // 10 < 20: crosses 20 only (100 was already in alert)
    await adjust(orgId, "+140"); // 150: both re-armed
    await adjust(orgId, "-60"); // 90 < 100
    expect((await events(orgId, "balance.low")).map((e) => e.data.crossed_thresholds)).toEqual([
      ["20"],
      ["100"],
    ]);
    // Removing a threshold drops its state.
    const removed = await app.call("PUT", alertsOf(orgId), { body: { thresholds: [] } });
    expect(removed.json()).toMatchObject({ thresholds: [], state: [] });
  });

  it("a rolled-back write notifies nobody and changes no state", async () => {
    const orgId = await setup(["100"], "150");
    const before = await events(orgId); // the first grant's balance.recovered
    // A later observer fails: the transaction that crossed the threshold rolls back.
    const failing = {
      observe: async () => {
        throw new Error("boom");
      },
    };
    ctx.balanceObservers.push(failing);
    try {
      const res = await app.call("POST", `/v1/organizations/${orgId}/adjustments`, {
        body: { amount: "-60", reason: "rolled back" },
      });
      expect(res.statusCode).toBe(500);
    } finally {
      ctx.balanceObservers.splice(ctx.balanceObservers.indexOf(failing), 1);
    }
    expect(await events(orgId)).toEqual(before);
    expect(await jobsOf(orgId)).toBe(before.length); // one fan-out job per event, nothing else
    expect((await app.call("GET", alertsOf(orgId))).json().state[0].in_alert).toBe(false);
  });

  it("concurrent usage crossing a threshold: exactly one balance.low", async () => {
    const orgId = await setup(["50"], "100");
    const key = await app.orgKey(orgId, "ingest");
    // 30 × 2 credits: 100 → 40, crossing 50 once, whatever the flush boundaries.
    await Promise.all(Array.from({ length: 30 }, () => use(key, 1000)));
    const balance = (await app.call("GET", `/v1/organizations/${orgId}/balance`)).json();
    expect(balance.balance).toBe("40");
    expect(await events(orgId, "balance.low")).toHaveLength(1);
  });

  it("emails the configured addresses after commit: low balance and depleted", async () => {
    const orgId = await setup(["100"], "150", ["ops@example.com", "cfo@example.com"]);
    await adjust(orgId, "-100"); // 50 < 100
    await adjust(orgId, "-50"); // 0: depleted
    const before = smtp.received.length;
    await runDueJobs(ctx);
    const mails = smtp.received.slice(before);
    expect(mails).toHaveLength(2);
    for (const m of mails) expect(m.to.sort()).toEqual(["cfo@example.com", "ops@example.com"]);
    const low = mails.find((m) => m.raw.includes("Subject: Low credit balance"));
    expect(low?.raw).toContain("fell below 100 credits and is now 50 credits");
    expect(mails.some((m) => m.raw.includes("Subject: Credits used up"))).toBe(true);
  });

  it("roles: read keys read, billing and admin keys write, other organisations get 404", async () => {
    const orgId = await app.createOrg();
    const other = await app.createOrg();
    const body = { thresholds: ["10"] };
    const keys = {
      read: await app.orgKey(orgId, "read"),
      ingest: await app.orgKey(orgId, "ingest"),
      billing: await app.orgKey(orgId, "billing"),
      admin: await app.orgKey(orgId, "admin"),
      otherAdmin: await app.orgKey(other, "admin"),
    };
    expect((await app.call("GET", alertsOf(orgId), { key: keys.read })).statusCode).toBe(200);
    expect((await app.call("GET", alertsOf(orgId), { key: keys.ingest })).statusCode).toBe(403);
    expect((await app.call("PUT", alertsOf(orgId), { key: keys.read, body })).statusCode).toBe(403);
    for (const key of [keys.billing, keys.admin, app.platformKey]) {
      expect((await app.call("PUT", alertsOf(orgId), { key, body })).statusCode).toBe(200);
    }
    for (const method of ["GET", "PUT"] as const) {
      const res = await app.call(method, alertsOf(orgId), { key: keys.otherAdmin, body });
      expect(res.statusCode).toBe(404);
    }
    expect((await app.call("GET", alertsOf(orgId), { key: null })).statusCode).toBe(401);
    const starter = await app.createOrg({ plan: "starter" });
    const res = await app.call("GET", alertsOf(starter));
    expect(res.json().error.code).toBe("plan_not_eligible");
  });
});
