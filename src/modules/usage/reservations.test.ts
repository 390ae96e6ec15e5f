import { describe, expect, it } from "vitest";
import { createTestApp } from "../../../test/support/app.js";
import { parseCredits } from "../ledger/credits.js";
import { getBalance, verifyLedger } from "../ledger/ledger.service.js";
import { expireReservations } from "./usage.service.js";

/** Reservations: hold, settle with usage, release, expiry; admission under concurrency. */

const RSV_ID = /^rsv_[0-9A-HJKMNP-TV-Z]{26}$/;
const NOW = Date.parse("2026-11-24T10:00:00.000Z");
const at = (ms: number) => new Date(ms).toISOString();
const C = (value: string) => parseCredits(value);

describe("reservations", async () => {
  const app = await createTestApp();
  const ctx = app.runtime.ctx;
  type Res = Awaited<ReturnType<typeof app.call>>;

  async function ok(res: Promise<Res> | Res, status = 200) {
    const r = await res;
    expect(r.statusCode, r.body).toBe(status);
    return r.json();
  }
  function expectError(res: Res, status: number, code: string) {
    expect(res.statusCode, res.body).toBe(status);
    expect(res.json().error).toMatchObject({ code, message: expect.any(String) });
    return res.json().error.details as { field?: string; message: string }[];
  }

  const url = (orgId: string, path: string) => `/v1/organizations/${orgId}/${path}`;
  const balance = (orgId: string) => ok(app.call("GET", url(orgId, "balance")));
  const reserve = (orgId: string, body: Record<string, unknown>, key?: string) =>
    app.call("POST", url(orgId, "reservations"), { body, key });
  const settle = (orgId: string, id: string, events: unknown[], key?: string) =>
    app.call("POST", url(orgId, `reservations/${id}/settle`), { body: { events }, key });
  const release = (orgId: string, id: string, key?: string) =>
    app.call("POST", url(orgId, `reservations/${id}/release`), { key });
  const getReservation = (orgId: string, id: string) =>
    ok(app.call("GET", url(orgId, `reservations/${id}`)));
  const storedEvents = async (orgId: string) =>
    (await ok(app.call("GET", url(orgId, "usage-events?limit=1000")))).data as {
      id: string;
      reservation_id: string | null;
      cost: string;
    }[];

  async function setup(credits: string) {
    const orgId = await app.createOrg();
    await ok(
      app.call("POST", url(orgId, "adjustments"), { body: { amount: `+${credits}`, reason: "g" } }),
      201,
    );
    return { orgId, key: await app.orgKey(orgId, "ingest") };
  }

  let n = 0;
  /** gpt-4o output tokens: 1000 tokens cost 1 credit. */
  const usage = (outputTokens: number) => ({
    id: `rsv-evt-${++n}`,
    type: "ai_tokens",
    model: "gpt-4o",
    timestamp: "2026-11-24T09:00:00Z",
    tokens: { output: outputTokens },
  });

  it("create → 201 held; reserved and available on the balance", async () => {
    const { orgId, key } = await setup("100");
    const r = await ok(reserve(orgId, { amount: "25.5", description: "render job" }, key), 201);
    expect(r).toEqual({
      id: expect.stringMatching(RSV_ID),
      org_id: orgId,
      amount: "25.5",
      status: "held",
      description: "render job",
      expires_at: at(NOW + 300_000),
      settled_cost: null,
      created_at: at(NOW),
      closed_at: null,
    });
    expect(await balance(orgId)).toMatchObject({
      balance: "100",
      reserved: "25.5",
      available: "74.5",
    });
    const custom = await ok(
      reserve(orgId, { amount: "0.000000000001", expires_in_seconds: 86_400 }, key),
      201,
    );
    expect(custom.expires_at).toBe(at(NOW + 86_400_000));
    expect(await balance(orgId)).toMatchObject({ reserved: "25.500000000001" });
    expect(await getReservation(orgId, r.id)).toEqual(r);

    const list = await ok(app.call("GET", url(orgId, "reservations?status=held")));
    expect(list.data.map((x: { id: string }) => x.id).sort()).toEqual([r.id, custom.id].sort());
    // A hold is not a ledger entry.
    expect((await balance(orgId)).last_sequence).toBe(1);
  });

  it("invalid amounts and expiries → 400", async () => {
    const { orgId, key } = await setup("10");
    for (const body of [
      { amount: "0" },
      { amount: "-1" },
      { amount: 5 },
      { amount: "1.0000000000001" },
      { amount: "1", expires_in_seconds: 0 },
      { amount: "1", expires_in_seconds: 86_401 },
      { amount: "1", color: "red" },
      {},
    ]) {
      expectError(await reserve(orgId, body, key), 400, "invalid_request");
    }
    expect(await balance(orgId)).toMatchObject({ reserved: "0" });
  });

  it("402 insufficient_credits when available + overdraft_limit < amount", async () => {
    const { orgId, key } = await setup("10");
    expectError(
      await reserve(orgId, { amount: "10.000000000001" }, key),
      402,
      "insufficient_credits",
    );
    await ok(reserve(orgId, { amount: "4" }, key), 201);
    expectError(
      await reserve(orgId, { amount: "6.000000000001" }, key),
      402,
      "insufficient_credits",
    );

    // The platform raises the overdraft limit: available 6 + overdraft 5 = 11.
    await ok(app.call("PATCH", `/v1/organizations/${orgId}`, { body: { overdraft_limit: "5" } }));
    expectError(
      await reserve(orgId, { amount: "11.000000000001" }, key),
      402,
      "insufficient_credits",
    );
    await ok(reserve(orgId, { amount: "11" }, key), 201);
    expect(await balance(orgId)).toMatchObject({ balance: "10", reserved: "15", available: "-5" });
    expectError(
      await reserve(orgId, { amount: "0.000000000001" }, key),
      402,
      "insufficient_credits",
    );
    // An organisation key cannot raise its own overdraft limit.
    const admin = await app.orgKey(orgId, "admin");
    const patch = await app.call("PATCH", `/v1/organizations/${orgId}`, {
      key: admin,
      body: { overdraft_limit: "1000" },
    });
    expectError(patch, 403, "forbidden");
  });

  it("admission reads the overdraft limit as it is now, not as this instance's cache last saw it", async () => {
    const { orgId, key } = await setup("1");
    await ok(reserve(orgId, { amount: "1" }, key), 201); // the organisation is now cached
    // Changed by another instance, whose cache notice has not arrived here yet.
    const lookups = app.runtime.ctx.lookups;
    const invalidate = lookups.invalidate;
    lookups.invalidate = () => {};
    try {
      await app.runtime.ctx.db
        .updateTable("organizations")
        .set({ overdraft_limit: "3" })
        .where("id", "=", orgId)
        .execute();
      expect(Number((await lookups.organization(orgId))?.overdraft_limit)).toBe(0); // stale
      await ok(reserve(orgId, { amount: "3" }, key), 201);
      expectError(
        await reserve(orgId, { amount: "0.000000000001" }, key),
        402,
        "insufficient_credits",
      );
    } finally {
      lookups.invalidate = invalidate;
      lookups.invalidate();
    }
  });

  it("settle records the events (cost may exceed the hold) and releases the hold in one go", async () => {
    const { orgId, key } = await setup("100");
    const hold = await ok(reserve(orgId, { amount: "5" }, key), 201);
    const events = [usage(4000), usage(2500)]; // 4 + 2.5 = 6.5 > 5
    app.clock.advance(1000);
    try {
      const res = await ok(settle(orgId, hold.id, events, key));
      expect(res.data).toEqual([
        expect.objectContaining({
          id: events[0]!.id,
          status: "accepted",
          cost: "4",
          balance_after: "96",
        }),
        expect.objectContaining({
          id: events[1]!.id,
          status: "accepted",
          cost: "2.5",
          balance_after: "93.5",
        }),
      ]);
      expect(res.reservation).toMatchObject({
        id: hold.id,
        status: "settled",
        settled_cost: "6.5",
        closed_at: at(NOW + 1000),
      });
    } finally {
      app.clock.set(new Date(NOW));
    }
    expect(await balance(orgId)).toMatchObject({
      balance: "93.5",
      reserved: "0",
      available: "93.5",
    });
    const stored = await storedEvents(orgId);
    expect(stored.map((e) => [e.id, e.reservation_id]).sort()).toEqual(
      events.map((e) => [e.id, hold.id]).sort(),
    );
    expect(await verifyLedger(ctx.db, orgId)).toMatchObject({ ok: true, entries: 3 });
  });

  it("settle with no events releases the hold at cost 0; with usage below the hold, the rest is freed", async () => {
    const { orgId, key } = await setup("20");
    const a = await ok(reserve(orgId, { amount: "8" }, key), 201);
    const b = await ok(reserve(orgId, { amount: "8" }, key), 201);
    const empty = await ok(settle(orgId, a.id, [], key));
    expect(empty.data).toEqual([]);
    expect(empty.reservation).toMatchObject({ status: "settled", settled_cost: "0" });
    expect(await balance(orgId)).toMatchObject({ balance: "20", reserved: "8", available: "12" });
    const some = await ok(settle(orgId, b.id, [usage(500)], key));
    expect(some.reservation.settled_cost).toBe("0.5");
    expect(await balance(orgId)).toMatchObject({
      balance: "19.5",
      reserved: "0",
      available: "19.5",
    });
  });

  it("settle twice → 409 invalid_state, and the second settle's events are not recorded", async () => {
    const { orgId, key } = await setup("100");
    const hold = await ok(reserve(orgId, { amount: "5" }, key), 201);
    await ok(settle(orgId, hold.id, [usage(1000)], key));
    const before = await balance(orgId);
    const late = usage(3000);
    expectError(await settle(orgId, hold.id, [late], key), 409, "invalid_state");
    expect(await balance(orgId)).toEqual(before);
    expect((await storedEvents(orgId)).map((e) => e.id)).not.toContain(late.id);
    expect((await getReservation(orgId, hold.id)).settled_cost).toBe("1");
  });

  it("two concurrent settles of one hold: one wins, the other is 409 and records nothing", async () => {
    const { orgId, key } = await setup("100");
    const other = await ok(reserve(orgId, { amount: "7" }, key), 201);
    for (let round = 0; round < 3; round++) {
      const hold = await ok(reserve(orgId, { amount: "5" }, key), 201);
      const first = usage(1000);
      const second = usage(2000);
      const [r1, r2] = await Promise.all([
        settle(orgId, hold.id, [first], key),
        settle(orgId, hold.id, [second], key),
      ]);
      expect([r1.statusCode, r2.statusCode].sort(), `${r1.body} ${r2.body}`).toEqual([200, 409]);
      const loser = r1.statusCode === 409 ? r1 : r2;
      expectError(loser, 409, "invalid_state");
      const lostId = loser === r1 ? first.id : second.id;
      expect((await storedEvents(orgId)).map((e) => e.id)).not.toContain(lostId);
      // Only the other, still held reservation remains reserved.
      expect((await balance(orgId)).reserved).toBe("7");
    }
    expect((await getReservation(orgId, other.id)).status).toBe("held");
    expect(await verifyLedger(ctx.db, orgId)).toMatchObject({ ok: true });
  });

  it("400 concurrent settles (sharing flushes) each settle their own hold exactly", async () => {
    const { orgId, key } = await setup("1000");
    const holds: string[] = [];
    for (let i = 0; i < 400; i++) {
      holds.push((await ok(reserve(orgId, { amount: "1" }, key), 201)).id);
    }
    expect((await balance(orgId)).reserved).toBe("400");
    const responses = await Promise.all(holds.map((id) => settle(orgId, id, [usage(100)], key)));
    for (const r of responses) expect(r.statusCode, r.body).toBe(200);
    // 400 × 0.1
    expect(await balance(orgId)).toMatchObject({ balance: "960", reserved: "0" });
    const settled = await ctx.db
      .selectFrom("reservations")
      .select("id")
      .where("org_id", "=", orgId)
      .where("status", "=", "settled")
      .execute();
    expect(settled).toHaveLength(400);
    expect(await verifyLedger(ctx.db, orgId)).toMatchObject({ ok: true, entries: 401 });
  });

  it("settle: an invalid or conflicting event refuses the whole settle and keeps the hold", async () => {
    const { orgId, key } = await setup("100");
    const hold = await ok(reserve(orgId, { amount: "5" }, key), 201);
    const recorded = usage(1000);
    await ok(app.call("POST", "/v1/usage-events", { key, body: recorded }));

    expectError(
      await settle(orgId, hold.id, [usage(1), { ...usage(1), model: "unknown-model" }], key),
      422,
      "price_not_found",
    );
    expectError(
      await settle(orgId, hold.id, [{ ...usage(1), quantity: 3 }], key),
      400,
      "invalid_request",
    );
    expectError(
      await settle(orgId, hold.id, [usage(1), { ...recorded, tokens: { output: 9 } }], key),
      409,
      "event_conflict",
    );
    const other = await app.createOrg();
    expectError(
      await settle(orgId, hold.id, [{ ...usage(1), org_id: other }]),
      400,
      "invalid_request",
    );
    expect(await getReservation(orgId, hold.id)).toMatchObject({ status: "held" });
    expect(await balance(orgId)).toMatchObject({ balance: "99", reserved: "5" });
    expect(await storedEvents(orgId)).toHaveLength(1);
    // Still settleable; an already recorded event in a settle is a duplicate, not charged again.
    const res = await ok(settle(orgId, hold.id, [recorded, usage(500)], key));
    expect(res.data.map((r: { status: string }) => r.status)).toEqual(["duplicate", "accepted"]);
    expect(res.reservation).toMatchObject({ status: "settled", settled_cost: "0.5" });
    expect(await balance(orgId)).toMatchObject({ balance: "98.5", reserved: "0" });
  });

  it("release → released; releasing or settling it again → 409", async () => {
    const { orgId, key } = await setup("10");
    const hold = await ok(reserve(orgId, { amount: "3" }, key), 201);
    app.clock.advance(2000);
    try {
      const released = await ok(release(orgId, hold.id, key));
      expect(released).toMatchObject({
        id: hold.id,
        status: "released",
        settled_cost: null,
        closed_at: at(NOW + 2000),
      });
    } finally {
      app.clock.set(new Date(NOW));
    }
    expect(await balance(orgId)).toMatchObject({ balance: "10", reserved: "0", available: "10" });
    expectError(await release(orgId, hold.id, key), 409, "invalid_state");
    expectError(await settle(orgId, hold.id, [usage(1)], key), 409, "invalid_state");

    const settled = await ok(reserve(orgId, { amount: "3" }, key), 201);
    await ok(settle(orgId, settled.id, [], key));
    expectError(await release(orgId, settled.id, key), 409, "invalid_state");
    expect(await balance(orgId)).toMatchObject({ balance: "10", reserved: "0" });
  });

  it("unknown or another organisation's reservation → 404", async () => {
    const a = await setup("10");
    const b = await setup("10");
    const holdB = await ok(reserve(b.orgId, { amount: "2" }, b.key), 201);
    const unknown = "rsv_00000000000000000000000000";
    expectError(await settle(a.orgId, unknown, [], a.key), 404, "not_found");
    expectError(await release(a.orgId, unknown, a.key), 404, "not_found");
    expectError(await settle(a.orgId, holdB.id, [usage(1)], a.key), 404, "not_found");
    expectError(await release(a.orgId, holdB.id, a.key), 404, "not_found");
    expectError(
      await app.call("GET", url(a.orgId, `reservations/${holdB.id}`), { key: a.key }),
      404,
      "not_found",
    );
    // Another organisation's key on b's path.
    expectError(await release(b.orgId, holdB.id, a.key), 404, "not_found");
    expectError(await reserve(b.orgId, { amount: "1" }, a.key), 404, "not_found");
    expect(await getReservation(b.orgId, holdB.id)).toMatchObject({ status: "held" });
    expect(await balance(b.orgId)).toMatchObject({ reserved: "2" });
  });

  it("expiry: past expires_at the sweeper marks the hold expired and frees it; settle is then 409", async () => {
    const { orgId, key } = await setup("10");
    const soon = await ok(reserve(orgId, { amount: "4", expires_in_seconds: 60 }, key), 201);
    const later = await ok(reserve(orgId, { amount: "1", expires_in_seconds: 600 }, key), 201);

    // Not due yet.
    app.clock.set(new Date(NOW + 59_999));
    expect(await expireReservations(ctx)).toBe(0);
    // Due but not swept yet: over already. Settling is refused, its credits are not reserved,
    // and it shows (and lists) as expired.
    app.clock.set(new Date(NOW + 60_000));
    try {
      expectError(await settle(orgId, soon.id, [usage(1)], key), 409, "invalid_state");
      expect(await balance(orgId)).toMatchObject({ balance: "10", reserved: "1", available: "9" });
      expect(await getReservation(orgId, soon.id)).toMatchObject({
        status: "expired",
        closed_at: at(NOW + 60_000),
      });
      const listed = async (status: string) =>
        (await ok(app.call("GET", url(orgId, `reservations?status=${status}`)))).data.map(
          (r: { id: string }) => r.id,
        );
      expect(await listed("held")).toEqual([later.id]);
      expect(await listed("expired")).toEqual([soon.id]);
      app.clock.set(new Date(NOW + 61_000));
      expect(await expireReservations(ctx)).toBe(1);
      expect(await getReservation(orgId, soon.id)).toMatchObject({
        status: "expired",
        closed_at: at(NOW + 60_000),
      });
      expect(await getReservation(orgId, later.id)).toMatchObject({ status: "held" });
      expect(await balance(orgId)).toMatchObject({ balance: "10", reserved: "1", available: "9" });
      expectError(await settle(orgId, soon.id, [usage(1)], key), 409, "invalid_state");
      expectError(await release(orgId, soon.id, key), 409, "invalid_state");
      expect(await expireReservations(ctx)).toBe(0);
      const list = await ok(app.call("GET", url(orgId, "reservations?status=expired")));
      expect(list.data.map((r: { id: string }) => r.id)).toEqual([soon.id]);
    } finally {
      app.clock.set(new Date(NOW));
    }
  });

  it("expiry before the sweeper: a new hold may use the credits; releasing it by hand is 409", async () => {
    const { orgId, key } = await setup("20");
    const first = await ok(reserve(orgId, { amount: "10", expires_in_seconds: 60 }, key), 201);
    const second = await ok(reserve(orgId, { amount: "6", expires_in_seconds: 120 }, key), 201);
    expect(await balance(orgId)).toMatchObject({ reserved: "16", available: "4" });
    app.clock.set(new Date(NOW + 60_000));
    try {
      // Admission expires the overdue holds first, under the organisation's lock.
      const next = await ok(reserve(orgId, { amount: "10", expires_in_seconds: 600 }, key), 201);
      expect(await getReservation(orgId, first.id)).toMatchObject({
        status: "expired",
        closed_at: at(NOW + 60_000),
      });
      expect(await balance(orgId)).toMatchObject({ reserved: "16", available: "4" });
      expect(await expireReservations(ctx)).toBe(0);
      // Released by hand after its expiry: refused, as a settle would be; it stays expired.
      app.clock.set(new Date(NOW + 120_000));
      expectError(await release(orgId, second.id, key), 409, "invalid_state");
      expect(await getReservation(orgId, second.id)).toMatchObject({
        status: "expired",
        closed_at: at(NOW + 120_000),
      });
      expect(await expireReservations(ctx)).toBe(0);
      expect(await getReservation(orgId, next.id)).toMatchObject({ status: "held" });
      expect(await balance(orgId)).toMatchObject({ reserved: "10", available: "10" });
    } finally {
      app.clock.set(new Date(NOW));
    }
  });

  it("RACE: 30 concurrent holds of 10 against 100 available → exactly 10 succeed", async () => {
    const { orgId, key } = await setup("100");
    const responses = await Promise.all(
      Array.from({ length: 30 }, () => reserve(orgId, { amount: "10" }, key)),
    );
    const statuses = responses.map((r) => r.statusCode);
    expect(statuses.filter((s) => s === 201)).toHaveLength(10);
    expect(statuses.filter((s) => s === 402)).toHaveLength(20);
    for (const r of responses.filter((x) => x.statusCode === 402)) {
      expect(r.json().error.code).toBe("insufficient_credits");
    }
    const b = await getBalance(ctx.db, orgId);
    expect(b.reserved).toBe(C("100"));
    expect(b.available).toBe(0n);
    const held = await ctx.db
      .selectFrom("reservations")
      .select("amount")
      .where("org_id", "=", orgId)
      .where("status", "=", "held")
      .execute();
    expect(held).toHaveLength(10);
  });
});
