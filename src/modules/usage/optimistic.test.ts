import { type CompiledQuery, sql } from "kysely";
import type { Registry } from "prom-client";
import { describe, expect, it, vi } from "vitest";
import { createTestApp, TestClock, twoInstances, waitFor } from "../../../test/support/app.js";
import { onPostgres } from "../../../test/support/db.js";
import type { Runtime } from "../../app/runtime.js";
import { type Db, FLUSH_APPLICATION_NAME } from "../../db/index.js";
import * as alertsRepo from "../alerts/alerts.repo.js";
import { type Credits, parseCredits } from "../ledger/credits.js";
import { GENESIS_HASH } from "../ledger/hash.js";
import { getBalance, openLedgers, verifyLedger } from "../ledger/ledger.service.js";
import type { EntryType } from "../ledger/ledger.tables.js";
import { LedgerCache } from "../ledger/ledger-cache.js";
import { type Block, type LedgerState, OrgLedger } from "../ledger/posting.js";
import { createApiKey } from "../orgs/orgs.service.js";

/**
 * The optimistic ingest path (IngestEngine.write): a flush for organisations whose ledgers this
 * instance remembers is ONE statement on restored ledgers, refused — writing nothing — when the
 * balance row moved on (`ledger:stale`), an observer has something to do (`ledger:observed`,
 * `observers`), an event was stored already (`usage:stored`) or the request needs locks
 * (`locks`); a refused flush is written again on the locking path. Every scenario checks the
 * exact amounts, the ledger chain and which way the flush went
 * (`tally_ingest_optimistic_flushes_total{outcome}`).
 */

const OPTIMISTIC = "tally_ingest_optimistic_flushes_total";
const TXN_ID = /^txn_[0-9A-HJKMNP-TV-Z]{26}$/;
const C = (value: string) => parseCredits(value);
const MINUTE = 60_000;
const HOUR = 60 * MINUTE;

interface Result {
  id: string;
  status: "accepted" | "duplicate";
  cost: string;
  transaction_id: string;
  balance_after: string;
}

/** The counter's value per outcome. */
async function outcomes(registry: Registry): Promise<Record<string, number>> {
  const metric = registry.getSingleMetric(OPTIMISTIC);
  if (!metric) throw new Error(`${OPTIMISTIC} is not registered`);
  const { values } = await metric.get();
  const out: Record<string, number> = {};
  for (const v of values) out[String(v.labels.outcome)] = v.value;
  return out;
}

/** What `fn` added to the counter (outcomes that did not move are left out). */
async function counted<T>(
  registries: Registry | Registry[],
  fn: () => Promise<T>,
): Promise<{ result: T; delta: Record<string, number> }> {
  const list = Array.isArray(registries) ? registries : [registries];
  const before = await Promise.all(list.map(outcomes));
  const result = await fn();
  const after = await Promise.all(list.map(outcomes));
  const delta: Record<string, number> = {};
  after.forEach((values, i) => {
    for (const [outcome, value] of Object.entries(values)) {
      const d = value - (before[i]![outcome] ?? 0);
      if (d !== 0) delta[outcome] = (delta[outcome] ?? 0) + d;
    }
  });
  return { result, delta };
}

describe("optimistic ingest", async () => {
  const app = await createTestApp();
  const ctx = app.runtime.ctx;
  const registry = ctx.metrics.registry;
  type Res = Awaited<ReturnType<typeof app.call>>;

  const url = (orgId: string, path: string) => `/v1/organizations/${orgId}/${path}`;
  const adjust = async (orgId: string, amount: string, extra: Record<string, unknown> = {}) => {
    const res = await app.call("POST", url(orgId, "adjustments"), {
      body: { amount, reason: "test", ...extra },
    });
    expect(res.statusCode, res.body).toBe(201);
    return res.json();
  };
  async function setup(credits: string) {
    const orgId = await app.createOrg();
    if (credits !== "0") await adjust(orgId, `+${credits}`);
    return { orgId, key: await app.orgKey(orgId, "ingest") };
  }

  let n = 0;
  /** gpt-4o input tokens: 4000 cost 1 credit (250 per 1M). Timestamped at the clock's now. */
  const usage = (credits: number, extra: Record<string, unknown> = {}) => ({
    id: `opt-${++n}`,
    type: "ai_tokens",
    model: "gpt-4o",
    timestamp: app.clock.now().toISOString(),
    tokens: { input: Math.round(credits * 4000) },
    ...extra,
  });
  const send = (key: string, events: unknown[]) =>
    app.call("POST", "/v1/usage-events", { key, body: { events } });
  async function ingest(key: string, events: unknown[]): Promise<Result[]> {
    const res = await send(key, events);
    expect(res.statusCode, res.body).toBe(200);
    return res.json().data;
  }
  /** Ingests and returns the counter's movement too. */
  const ingestCounted = (key: string, events: unknown[]) =>
    counted(registry, () => ingest(key, events));

  const balanceOf = (orgId: string) => getBalance(ctx.db, orgId);
  const versionOf = async (orgId: string) =>
    (
      await ctx.db
        .selectFrom("org_balances")
        .select("version")
        .where("org_id", "=", orgId)
        .executeTakeFirstOrThrow()
    ).version;
  const entriesOf = (orgId: string, type?: EntryType) => {
    let query = ctx.db
      .selectFrom("ledger_entries")
      .select(["id", "type", "amount", "balance_after", "reference_id", "debt_change"])
      .where("org_id", "=", orgId);
    if (type) query = query.where("type", "=", type);
    return query.orderBy("sequence").execute();
  };
  const eventsOf = async (orgId: string, type: string) =>
    (
      await ctx.db
        .selectFrom("events")
        .select(["type", "data"])
        .where("org_id", "=", orgId)
        .where("type", "=", type)
        .orderBy("id")
        .execute()
    ).map((r) => ({ type: r.type, data: r.data as Record<string, unknown> }));
  const storedEvents = (orgId: string) =>
    ctx.db
      .selectFrom("usage_events")
      .select(["id", "cost", "transaction_id"])
      .where("org_id", "=", orgId)
      .orderBy("id")
      .execute();
  async function expectVerified(orgId: string, entries: number) {
    const report = await verifyLedger(ctx.db, orgId);
    expect(report, report.problems.join("; ")).toMatchObject({ ok: true, entries });
  }
  /** One accepted result, exactly. */
  function expectAccepted(r: Result, id: string, cost: string, balanceAfter: Credits) {
    expect(r).toEqual({
      id,
      status: "accepted",
      cost: expect.any(String),
      transaction_id: expect.stringMatching(TXN_ID),
      balance_after: expect.any(String),
    });
    expect(C(r.cost)).toBe(C(cost));
    expect(C(r.balance_after)).toBe(balanceAfter);
  }
  /** The usage entry of event `id`: one, with the result's transaction id and amounts. */
  async function expectUsageEntry(orgId: string, r: Result) {
    const rows = (await entriesOf(orgId, "usage")).filter((e) => e.reference_id === r.id);
    expect(rows).toHaveLength(1);
    expect(rows[0]!.id).toBe(r.transaction_id);
    expect(C(rows[0]!.amount)).toBe(-C(r.cost));
    expect(C(rows[0]!.balance_after)).toBe(C(r.balance_after));
  }

  it("the second and later flushes of an organisation are one optimistic statement, with the locking path's results", async () => {
    const { orgId, key } = await setup("100");
    const first = usage(1);
    const one = await ingestCounted(key, [first]);
    // The grant went through postEntries: this engine has not seen the ledger yet.
    expect(one.delta).toEqual({});
    expectAccepted(one.result[0]!, first.id, "1", C("99"));

    const second = usage(2.5);
    const two = await ingestCounted(key, [second]);
    expect(two.delta).toEqual({ written: 1 });
    expectAccepted(two.result[0]!, second.id, "2.5", C("96.5"));
    expect(Object.keys(two.result[0]!)).toEqual(Object.keys(one.result[0]!));

    // A batch: one flush, one statement, every balance_after in order.
    const batch = [usage(0.25), usage(3), usage(0, { tokens: {} }), usage(1.75)];
    const three = await ingestCounted(key, batch);
    expect(three.delta).toEqual({ written: 1 });
    expectAccepted(three.result[0]!, batch[0]!.id, "0.25", C("96.25"));
    expectAccepted(three.result[1]!, batch[1]!.id, "3", C("93.25"));
    expectAccepted(three.result[2]!, batch[2]!.id, "0", C("93.25"));
    expectAccepted(three.result[3]!, batch[3]!.id, "1.75", C("91.5"));

    for (const r of [one.result[0]!, two.result[0]!, ...three.result]) {
      await expectUsageEntry(orgId, r);
    }
    expect((await storedEvents(orgId)).map((e) => e.transaction_id).sort()).toEqual(
      [one.result[0]!, two.result[0]!, ...three.result].map((r) => r.transaction_id).sort(),
    );
    const balance = await balanceOf(orgId);
    expect(balance.balance).toBe(C("91.5"));
    expect(balance.last_sequence).toBe(7n);
    // The rollups came with the statement too.
    const daily = await ctx.db
      .selectFrom("usage_daily")
      .select(["cost", "events"])
      .where("org_id", "=", orgId)
      .execute();
    expect(daily).toHaveLength(1);
    expect(C(daily[0]!.cost)).toBe(C("8.5"));
    expect(Number(daily[0]!.events)).toBe(6);
    // grant + 6 usage entries; each write moved the version on by one.
    expect(await versionOf(orgId)).toBe("4");
    await expectVerified(orgId, 7);
  });

  it("an optimistic flush whose clock reads earlier than the last write is stamped at that write's instant", async () => {
    const { orgId, key } = await setup("100");
    const at = app.clock.now();
    await ingest(key, [usage(1)]); // locking path: the engine now remembers the ledger
    app.clock.advance(-20); // read before the previous flush's instant (or a lagging clock)
    try {
      const events = [usage(1)];
      const optimistic = await ingestCounted(key, events);
      expect(optimistic.delta).toEqual({ written: 1 });
    } finally {
      app.clock.advance(20);
    }
    const rows = await ctx.db
      .selectFrom("ledger_entries")
      .select(["sequence", "created_at"])
      .where("org_id", "=", orgId)
      .where("type", "=", "usage")
      .orderBy("sequence")
      .execute();
    expect(rows.map((r) => r.created_at.toISOString())).toEqual([
      at.toISOString(),
      at.toISOString(),
    ]);
    const received = await ctx.db
      .selectFrom("usage_events")
      .select("received_at")
      .where("org_id", "=", orgId)
      .execute();
    expect(received.map((r) => r.received_at.toISOString())).toEqual([
      at.toISOString(),
      at.toISOString(),
    ]);
    await expectVerified(orgId, 3);
  });

  it("a ledger changed through another path is refused as stale and written exactly under the locks", async () => {
    const { orgId, key } = await setup("100");
    const [a] = await ingest(key, [usage(1)]);
    expect(C(a!.balance_after)).toBe(C("99"));
    const b = await ingestCounted(key, [usage(2)]);
    expect(b.delta).toEqual({ written: 1 });

    // An adjustment is posted by postEntries, which moves org_balances.version on.
    const before = await versionOf(orgId);
    await adjust(orgId, "+7.5");
    expect(BigInt(await versionOf(orgId))).toBe(BigInt(before) + 1n);

    const c = usage(3);
    const stale = await ingestCounted(key, [c]);
    expect(stale.delta).toEqual({ "ledger:stale": 1 });
    // grant 100 − 1 − 2 + 7.5 − 3
    expectAccepted(stale.result[0]!, c.id, "3", C("101.5"));
    await expectUsageEntry(orgId, stale.result[0]!);

    // The locking path remembered the ledger as it then was: the next flush is optimistic again.
    const d = usage(0.5);
    const again = await ingestCounted(key, [d]);
    expect(again.delta).toEqual({ written: 1 });
    expectAccepted(again.result[0]!, d.id, "0.5", C("101"));

    // A debit adjustment too.
    await adjust(orgId, "-1");
    const e = usage(1);
    const staleAgain = await ingestCounted(key, [e]);
    expect(staleAgain.delta).toEqual({ "ledger:stale": 1 });
    expectAccepted(staleAgain.result[0]!, e.id, "1", C("99"));

    expect((await balanceOf(orgId)).balance).toBe(C("99"));
    await expectVerified(orgId, 8);
  });

  it("a hold taken through another path (no ledger entry, only `reserved`) makes the remembered ledger stale", async () => {
    const { orgId, key } = await setup("100");
    await ingest(key, [usage(1)]);
    const hold = await app.call("POST", url(orgId, "reservations"), {
      key,
      body: { amount: "30" },
    });
    expect(hold.statusCode, hold.body).toBe(201);
    const e = usage(2);
    const stale = await ingestCounted(key, [e]);
    expectAccepted(stale.result[0]!, e.id, "2", C("97"));
    // Written on top of the remembered ledger, the reservation would be lost.
    const balance = await balanceOf(orgId);
    expect(balance.balance).toBe(C("97"));
    expect(balance.reserved).toBe(C("30"));
    expect(balance.available).toBe(C("67"));
    expect(stale.delta).toEqual({ "ledger:stale": 1 });

    // Settling the hold needs its lock: not tried optimistically.
    const f = usage(4);
    const settled = await counted(registry, () =>
      app.call("POST", url(orgId, `reservations/${hold.json().id}/settle`), {
        key,
        body: { events: [f] },
      }),
    );
    expect(settled.result.statusCode, settled.result.body).toBe(200);
    expect(settled.delta).toEqual({ locks: 1 });
    const after = await balanceOf(orgId);
    expect(after.balance).toBe(C("93"));
    expect(after.reserved).toBe(0n);
    await expectVerified(orgId, 4);
  });

  it("an event stored by an earlier flush: refused as usage:stored, answered as the duplicate it is", async () => {
    const { orgId, key } = await setup("50");
    await ingest(key, [usage(1)]);
    const e = usage(2);
    const original = await ingestCounted(key, [e]);
    expect(original.delta).toEqual({ written: 1 });
    const entriesBefore = (await entriesOf(orgId)).length;
    const balanceBefore = await balanceOf(orgId);

    const dup = await ingestCounted(key, [e]);
    expect(dup.delta).toEqual({ "usage:stored": 1 });
    expect(dup.result).toEqual([{ ...original.result[0]!, status: "duplicate" }]);
    expect((await entriesOf(orgId)).length).toBe(entriesBefore);
    expect(await balanceOf(orgId)).toEqual(balanceBefore);

    // With a new event in the same request: the duplicate answered, the new one written once.
    const fresh = usage(3);
    const mixed = await ingestCounted(key, [e, fresh]);
    expect(mixed.delta).toEqual({ "usage:stored": 1 });
    expect(mixed.result[0]).toEqual({ ...original.result[0]!, status: "duplicate" });
    expectAccepted(mixed.result[1]!, fresh.id, "3", C("44"));
    for (const r of [original.result[0]!, mixed.result[1]!]) await expectUsageEntry(orgId, r);
    expect(await storedEvents(orgId)).toHaveLength(3);

    expect((await balanceOf(orgId)).balance).toBe(C("44"));
    await expectVerified(orgId, 4);
  });

  it("the same id with another payload than an earlier flush stored: 409 event_conflict, nothing written", async () => {
    const { orgId, key } = await setup("50");
    await ingest(key, [usage(1)]);
    const e = usage(2);
    const [original] = await ingest(key, [e]);
    const before = {
      balance: await balanceOf(orgId),
      version: await versionOf(orgId),
      entries: await entriesOf(orgId),
      events: await storedEvents(orgId),
    };

    const other = usage(5, { id: e.id });
    const fresh = usage(1);
    const conflict = await counted(registry, () => send(key, [fresh, other]));
    expect(conflict.result.statusCode, conflict.result.body).toBe(409);
    expect(conflict.result.json().error).toMatchObject({
      code: "event_conflict",
      details: [{ field: "/events/1/id", message: expect.stringContaining(e.id) }],
    });
    expect(conflict.delta).toEqual({ "usage:stored": 1 });
    expect({
      balance: await balanceOf(orgId),
      version: await versionOf(orgId),
      entries: await entriesOf(orgId),
      events: await storedEvents(orgId),
    }).toEqual(before);

    // The ledger is still remembered at its version: the next flush is optimistic.
    const next = usage(1);
    const again = await ingestCounted(key, [next]);
    expect(again.delta).toEqual({ written: 1 });
    expectAccepted(again.result[0]!, next.id, "1", C("46"));
    expect(C(original!.balance_after)).toBe(C("47"));
    await expectVerified(orgId, 4);
  });

  it("an organisation with alert thresholds: stale once settings change, then on the locking path for the pause, then refused as observed", async () => {
    const { orgId, key } = await setup("100");
    const [a] = await ingest(key, [usage(1)]);
    expect(C(a!.balance_after)).toBe(C("99"));
    // Configuring alerts moves the ledger's version (a trigger): the remembered ledger is stale.
    const version = await versionOf(orgId);
    const put = await app.call("PUT", url(orgId, "alerts"), { body: { thresholds: ["90"] } });
    expect(put.statusCode, put.body).toBe(200);
    expect(BigInt(await versionOf(orgId))).toBe(BigInt(version) + 1n);

    const crossing = usage(10);
    const stale = await ingestCounted(key, [crossing]);
    expect(stale.delta).toEqual({ "ledger:stale": 1 });
    expectAccepted(stale.result[0]!, crossing.id, "10", C("89"));
    expect(await eventsOf(orgId, "balance.low")).toEqual([
      {
        type: "balance.low",
        data: {
          threshold: "90",
          crossed_thresholds: ["90"],
          balance: "89",
          previous_balance: "99",
          available: "89",
        },
      },
    ]);

    // The locking path saw the thresholds: the organisation is paused, not even tried.
    const next = usage(1);
    const untried = await ingestCounted(key, [next]);
    expect(untried.delta).toEqual({});
    expectAccepted(untried.result[0]!, next.id, "1", C("88"));

    // Within the pause it stays on the locking path.
    for (const [i, cost] of [1, 2].entries()) {
      const e = usage(cost);
      const paused = await ingestCounted(key, [e]);
      expect(paused.delta).toEqual({});
      expectAccepted(paused.result[0]!, e.id, String(cost), C(i === 0 ? "87" : "85"));
    }
    // Each of those flushes saw the thresholds again and renewed the pause.
    app.clock.advance(59 * 1000);
    const late = await ingestCounted(key, [usage(1)]);
    expect(late.delta).toEqual({});
    app.clock.advance(59 * 1000);
    const later = await ingestCounted(key, [usage(0.5)]);
    expect(later.delta).toEqual({});

    // A minute after the last of them: tried again (and refused: the thresholds are still there).
    app.clock.advance(61 * 1000);
    const e = usage(1);
    const retried = await ingestCounted(key, [e]);
    expect(retried.delta).toEqual({ "ledger:observed": 1 });
    expectAccepted(retried.result[0]!, e.id, "1", C("82.5"));

    expect(await eventsOf(orgId, "balance.low")).toHaveLength(1);
    expect((await balanceOf(orgId)).balance).toBe(C("82.5"));
    await expectVerified(orgId, 9);
  });

  it("a flush that takes the balance from above zero to zero or below runs the observers: balance.depleted once", async () => {
    const { orgId, key } = await setup("2");
    await ingest(key, [usage(1)]);
    const e = usage(1);
    const depleting = await ingestCounted(key, [e]);
    expect(depleting.delta).toEqual({ observers: 1 });
    expectAccepted(depleting.result[0]!, e.id, "1", 0n);
    expect(await eventsOf(orgId, "balance.depleted")).toEqual([
      { type: "balance.depleted", data: { balance: "0", previous_balance: "1" } },
    ]);

    // Further usage stays at or below zero: idle, optimistic, into debt.
    const f = usage(1.5);
    const debt = await ingestCounted(key, [f]);
    expect(debt.delta).toEqual({ written: 1 });
    expectAccepted(debt.result[0]!, f.id, "1.5", C("-1.5"));
    expect(await eventsOf(orgId, "balance.depleted")).toHaveLength(1);

    const balance = await balanceOf(orgId);
    expect(balance.balance).toBe(C("-1.5"));
    expect(balance.debt).toBe(C("1.5"));

    // A grant back above zero (not through the engine) is recovered; the next usage is stale.
    // (The first grant, from 0, was a recovery too.)
    expect(await eventsOf(orgId, "balance.recovered")).toHaveLength(1);
    await adjust(orgId, "+5");
    expect((await eventsOf(orgId, "balance.recovered")).map((e) => e.data)).toEqual([
      { balance: "2", previous_balance: "0" },
      { balance: "3.5", previous_balance: "-1.5" },
    ]);
    const g = usage(1);
    const stale = await ingestCounted(key, [g]);
    expect(stale.delta).toEqual({ "ledger:stale": 1 });
    expectAccepted(stale.result[0]!, g.id, "1", C("2.5"));
    expect((await balanceOf(orgId)).debt).toBe(0n);
    await expectVerified(orgId, 6);
  });

  it("a block expiring while its ledger is remembered: the expiry entry is written with the next flush, the usage drawn from the other block", async () => {
    const { orgId, key } = await setup("10");
    const expiresAt = new Date(app.clock.now().getTime() + HOUR);
    await adjust(orgId, "+5", { expires_at: expiresAt.toISOString() });
    // Burn order: the expiring block first.
    const [a] = await ingest(key, [usage(1)]);
    expect(C(a!.balance_after)).toBe(C("14"));

    app.clock.advance(2 * HOUR);
    const e = usage(2);
    const after = await ingestCounted(key, [e]);
    expect(after.delta).toEqual({ written: 1 });
    // 15 − 1 − 4 expired − 2
    expectAccepted(after.result[0]!, e.id, "2", C("8"));

    const entries = await entriesOf(orgId);
    expect(entries.map((x) => x.type)).toEqual([
      "adjustment",
      "adjustment",
      "usage",
      "expiry",
      "usage",
    ]);
    expect(C(entries[3]!.amount)).toBe(C("-4"));
    expect(C(entries[3]!.balance_after)).toBe(C("10"));
    const blocks = await ctx.db
      .selectFrom("credit_blocks")
      .select(["status", "remaining", "expires_at"])
      .where("org_id", "=", orgId)
      .orderBy("created_at")
      .orderBy("id")
      .execute();
    const expiring = blocks.find((b) => b.expires_at !== null)!;
    const permanent = blocks.find((b) => b.expires_at === null)!;
    expect(expiring.status).toBe("expired");
    expect(C(expiring.remaining)).toBe(0n);
    expect(permanent.status).toBe("active");
    expect(C(permanent.remaining)).toBe(C("8"));
    expect((await balanceOf(orgId)).balance).toBe(C("8"));
    await expectVerified(orgId, 5);
  });

  it("a block expiring while remembered with nothing else to draw: the usage goes into debt (a zero crossing, observed)", async () => {
    const { orgId, key } = await setup("0");
    await adjust(orgId, "+5", {
      expires_at: new Date(app.clock.now().getTime() + HOUR).toISOString(),
    });
    const [a] = await ingest(key, [usage(1)]);
    expect(C(a!.balance_after)).toBe(C("4"));
    // Still remembered at 4: the optimistic write would cross zero.
    app.clock.advance(2 * HOUR);
    const e = usage(1.5);
    const after = await ingestCounted(key, [e]);
    expect(after.delta).toEqual({ observers: 1 });
    expectAccepted(after.result[0]!, e.id, "1.5", C("-1.5"));
    const balance = await balanceOf(orgId);
    expect(balance.balance).toBe(C("-1.5"));
    expect(balance.debt).toBe(C("1.5"));
    expect((await entriesOf(orgId)).map((x) => x.type)).toEqual([
      "adjustment",
      "usage",
      "expiry",
      "usage",
    ]);
    expect(await eventsOf(orgId, "balance.depleted")).toEqual([
      { type: "balance.depleted", data: { balance: "-1.5", previous_balance: "4" } },
    ]);
    await expectVerified(orgId, 4);
  });

  it("a flush for several organisations is optimistic only when every one is remembered", async () => {
    const one = await setup("20");
    const two = await setup("20");
    const platform = (events: unknown[]) =>
      counted(registry, async () => {
        const res = await app.call("POST", "/v1/usage-events", { body: { events } });
        expect(res.statusCode, res.body).toBe(200);
        return res.json().data as Result[];
      });
    await ingest(one.key, [usage(1)]);
    // `two` is not remembered: the whole flush goes the locking way, untried.
    const first = await platform([
      usage(1, { org_id: one.orgId }),
      usage(2, { org_id: two.orgId }),
    ]);
    expect(first.delta).toEqual({});
    expect(first.result.map((r) => C(r.balance_after))).toEqual([C("18"), C("18")]);
    const second = await platform([
      usage(1, { org_id: two.orgId }),
      usage(3, { org_id: one.orgId }),
    ]);
    expect(second.delta).toEqual({ written: 1 });
    expect(second.result.map((r) => C(r.balance_after))).toEqual([C("17"), C("15")]);
    // One of them moved on: the flush is refused as a whole and written exactly.
    await adjust(two.orgId, "+1");
    const third = await platform([
      usage(1, { org_id: one.orgId }),
      usage(1, { org_id: two.orgId }),
    ]);
    expect(third.delta).toEqual({ "ledger:stale": 1 });
    expect(third.result.map((r) => C(r.balance_after))).toEqual([C("14"), C("17")]);
    expect((await balanceOf(one.orgId)).balance).toBe(C("14"));
    expect((await balanceOf(two.orgId)).balance).toBe(C("17"));
    await expectVerified(one.orgId, 5);
    await expectVerified(two.orgId, 5);
  });

  it("in a flush with an organisation that has alert thresholds, only that one is paused", async () => {
    const watched = await setup("50");
    const plain = await setup("50");
    const put = await app.call("PUT", url(watched.orgId, "alerts"), {
      body: { thresholds: ["10"] },
    });
    expect(put.statusCode, put.body).toBe(200);
    const platform = (events: unknown[]) =>
      counted(registry, async () => {
        const res = await app.call("POST", "/v1/usage-events", { body: { events } });
        expect(res.statusCode, res.body).toBe(200);
        return res.json().data as Result[];
      });
    // Neither is remembered yet: the locking path, which sees the thresholds of one.
    const mixed = await platform([
      usage(1, { org_id: watched.orgId }),
      usage(1, { org_id: plain.orgId }),
    ]);
    expect(mixed.delta).toEqual({});
    // The other one is optimistic from now on; the watched one is not tried.
    const alone = await platform([usage(2, { org_id: plain.orgId })]);
    expect(alone.delta).toEqual({ written: 1 });
    expect(C(alone.result[0]!.balance_after)).toBe(C("47"));
    const paused = await platform([usage(2, { org_id: watched.orgId })]);
    expect(paused.delta).toEqual({});
    expect(C(paused.result[0]!.balance_after)).toBe(C("47"));
    await expectVerified(watched.orgId, 3);
    await expectVerified(plain.orgId, 3);
  });

  it("an optimistic statement that committed but whose answer was lost answers its events accepted, once", async () => {
    const { orgId, key } = await setup("100");
    await ingest(key, [usage(1)]);
    const executeQuery = ctx.flushDb.executeQuery.bind(ctx.flushDb);
    let lost = 0;
    const spy = vi.spyOn(ctx.flushDb, "executeQuery").mockImplementation((async (
      query: CompiledQuery,
    ) => {
      const result = await executeQuery(query);
      if (query.sql.includes("tally_guard") && lost++ === 0) {
        throw new Error("Connection terminated unexpectedly");
      }
      return result;
    }) as typeof ctx.flushDb.executeQuery);
    const [a, b] = [usage(2), usage(3)];
    let res: Awaited<ReturnType<typeof ingestCounted>>;
    try {
      // `a` twice in one request: the second is a duplicate of the first, as it was the first time.
      res = await ingestCounted(key, [a, b, a]);
    } finally {
      spy.mockRestore();
    }
    expect(lost).toBe(1);
    // Written once, by the statement whose answer was lost; reported as this request's own.
    expectAccepted(res.result[0]!, a.id, "2", C("97"));
    expectAccepted(res.result[1]!, b.id, "3", C("94"));
    expect(res.result[2]).toMatchObject({
      id: a.id,
      status: "duplicate",
      transaction_id: res.result[0]!.transaction_id,
    });
    expect(await storedEvents(orgId)).toHaveLength(3);
    await expectUsageEntry(orgId, res.result[0]!);
    await expectVerified(orgId, 4);
  });

  it("a failed optimistic statement (error) is written under the locks; a failed flush forgets the ledger", async () => {
    const { orgId, key } = await setup("100");
    await ingest(key, [usage(1)]);

    // The optimistic statement fails for a reason of its own: the locking path writes the flush.
    const executeQuery = ctx.flushDb.executeQuery.bind(ctx.flushDb);
    let failed = 0;
    const spy = vi.spyOn(ctx.flushDb, "executeQuery").mockImplementation(((
      query: CompiledQuery,
    ) => {
      if (query.sql.includes("tally_guard") && failed++ === 0) {
        return Promise.reject(new Error("connection lost"));
      }
      return executeQuery(query);
    }) as typeof ctx.flushDb.executeQuery);
    const e = usage(2);
    let error: Awaited<ReturnType<typeof ingestCounted>>;
    try {
      error = await ingestCounted(key, [e]);
    } finally {
      spy.mockRestore();
    }
    expect(failed).toBe(1);
    expect(error.delta).toEqual({ error: 1 });
    expectAccepted(error.result[0]!, e.id, "2", C("97"));
    await expectUsageEntry(orgId, error.result[0]!);

    // Stale, and then the locking path fails too: the request fails, nothing is written, and the
    // stale ledger is not tried again.
    await adjust(orgId, "+3");
    const transaction = vi.spyOn(ctx.db, "transaction").mockImplementationOnce(() => {
      throw new Error("no connection");
    });
    const f = usage(4);
    let refused: Awaited<ReturnType<typeof counted<Res>>>;
    try {
      refused = await counted(registry, () => send(key, [f]));
    } finally {
      transaction.mockRestore();
    }
    expect(refused.result.statusCode).toBe(500);
    expect(refused.delta).toEqual({ "ledger:stale": 1 });
    expect(await storedEvents(orgId)).toHaveLength(2);
    expect((await balanceOf(orgId)).balance).toBe(C("100"));

    const retry = await ingestCounted(key, [f]);
    expect(retry.delta).toEqual({});
    expectAccepted(retry.result[0]!, f.id, "4", C("96"));
    const next = usage(1);
    const optimistic = await ingestCounted(key, [next]);
    expect(optimistic.delta).toEqual({ written: 1 });
    expectAccepted(optimistic.result[0]!, next.id, "1", C("95"));
    await expectVerified(orgId, 6);
  });

  describe("LedgerCache", () => {
    const NOW = new Date("2026-11-24T10:00:00.000Z");
    const state = (balance: string, version = 1n): LedgerState => ({
      balance: C(balance),
      reserved: 0n,
      debt: 0n,
      lastSequence: 1n,
      headHash: GENESIS_HASH,
      version,
      updatedAt: NOW,
    });
    const block = (orgId: string, id: string, remaining: string): Block => ({
      org_id: orgId,
      id,
      source: "adjustment",
      original: C(remaining),
      remaining: C(remaining),
      unit_cost: 0n,
      priority: 0,
      effective_at: NOW,
      expires_at: null,
      status: "active",
      purchase_id: null,
      created_at: NOW,
      updated_at: NOW,
    });
    /** A ledger as openLedgers leaves it: blocks loaded, nothing unsaved. */
    const ledger = (orgId: string, blocks = 1, balance = "10") => {
      const l = new OrgLedger(ctx, orgId, state(balance), NOW);
      l.setBlocks(Array.from({ length: blocks }, (_, i) => block(orgId, `blk_${i}`, balance)));
      return l;
    };
    const limits = {
      maxOrgs: 3,
      maxBlocks: 2,
      maxTotalBlocks: 100,
      pauseMs: MINUTE,
      staleInARow: 3,
      stalePauseMs: 1000,
    };

    it("open: null unless every organisation is remembered", () => {
      const cache = new LedgerCache(limits);
      expect(cache.open(ctx, ["org_a"], NOW)).toBeNull();
      cache.remember([ledger("org_a")]);
      expect(cache.open(ctx, ["org_a", "org_b"], NOW)).toBeNull();
      expect(cache.open(ctx, ["org_b", "org_a"], NOW)).toBeNull();
      const opened = cache.open(ctx, ["org_a"], NOW)!;
      expect([...opened.keys()]).toEqual(["org_a"]);
      const a = opened.get("org_a")!;
      expect(a.balance).toBe(C("10"));
      expect(a.version).toBe(1n);
      expect(a.now).toEqual(NOW);
      expect(a.activeBlocks().map((b) => b.id)).toEqual(["blk_0"]);
      cache.remember([ledger("org_b")]);
      expect([...cache.open(ctx, ["org_a", "org_b"], NOW)!.keys()]).toEqual(["org_a", "org_b"]);
      cache.forget(["org_a"]);
      expect(cache.open(ctx, ["org_a", "org_b"], NOW)).toBeNull();
      expect(cache.open(ctx, ["org_b"], NOW)).not.toBeNull();
    });

    it("open: null while any organisation is paused, until the pause is over", () => {
      const cache = new LedgerCache(limits);
      cache.remember([ledger("org_a"), ledger("org_b")]);
      cache.pause(["org_b"], NOW);
      const later = (ms: number) => new Date(NOW.getTime() + ms);
      expect(cache.open(ctx, ["org_a"], NOW)).not.toBeNull();
      expect(cache.open(ctx, ["org_a", "org_b"], NOW)).toBeNull();
      expect(cache.open(ctx, ["org_b"], later(MINUTE - 1))).toBeNull();
      // Pausing does not forget: after the pause the remembered ledger is there.
      expect(cache.open(ctx, ["org_a", "org_b"], later(MINUTE))).not.toBeNull();
      expect(cache.open(ctx, ["org_b"], NOW)).not.toBeNull();
    });

    it("remembers at most maxOrgs, forgetting the least recently used", () => {
      const cache = new LedgerCache(limits);
      cache.remember([ledger("org_a"), ledger("org_b"), ledger("org_c")]);
      // Using a makes b the least recently used.
      expect(cache.open(ctx, ["org_a"], NOW)).not.toBeNull();
      cache.remember([ledger("org_d")]);
      expect(cache.open(ctx, ["org_b"], NOW)).toBeNull();
      for (const id of ["org_a", "org_c", "org_d"]) {
        expect(cache.open(ctx, [id], NOW), id).not.toBeNull();
      }
      // Now a (opened first above) is the least recently used; remembering c again refreshes it.
      cache.remember([ledger("org_c", 1, "7")]);
      cache.remember([ledger("org_e")]);
      expect(cache.open(ctx, ["org_a"], NOW)).toBeNull();
      expect(cache.open(ctx, ["org_c"], NOW)!.get("org_c")!.balance).toBe(C("7"));
      expect(cache.open(ctx, ["org_d", "org_e"], NOW)).not.toBeNull();
    });

    it("stale three times in a row (no optimistic write between): paused for stalePauseMs", () => {
      const cache = new LedgerCache(limits);
      const later = (ms: number) => new Date(NOW.getTime() + ms);
      cache.remember([ledger("org_a"), ledger("org_b")]);
      cache.stale(["org_a", "org_b"], NOW);
      cache.stale(["org_a"], NOW);
      cache.written(["org_b"]); // b's run ends
      cache.stale(["org_b"], NOW);
      expect(cache.open(ctx, ["org_a", "org_b"], NOW)).not.toBeNull();
      cache.stale(["org_a", "org_b"], NOW); // a: third in a row; b: second
      expect(cache.open(ctx, ["org_a"], NOW)).toBeNull();
      expect(cache.open(ctx, ["org_b"], NOW)).not.toBeNull();
      expect(cache.open(ctx, ["org_a"], later(999))).toBeNull();
      expect(cache.open(ctx, ["org_a"], later(1000))).not.toBeNull();
      // The run starts again after the pause.
      cache.stale(["org_a"], later(1000));
      expect(cache.open(ctx, ["org_a"], later(1000))).not.toBeNull();
    });

    it("remembers at most maxTotalBlocks blocks in all, forgetting the least recently used", () => {
      const cache = new LedgerCache({ ...limits, maxOrgs: 10, maxTotalBlocks: 4 });
      cache.remember([ledger("org_a", 2), ledger("org_b", 2)]);
      expect(cache.open(ctx, ["org_a", "org_b"], NOW)).not.toBeNull();
      cache.remember([ledger("org_c", 1)]); // 5 blocks: a (least recently used) goes
      expect(cache.open(ctx, ["org_a"], NOW)).toBeNull();
      expect(cache.open(ctx, ["org_b", "org_c"], NOW)).not.toBeNull();
      // Remembering b again with fewer blocks, and forgetting, keep the count right.
      cache.remember([ledger("org_b", 1)]);
      cache.remember([ledger("org_d", 2)]); // b 1 + c 1 + d 2 = 4: all stay
      expect(cache.open(ctx, ["org_b", "org_c", "org_d"], NOW)).not.toBeNull();
      cache.forget(["org_d"]);
      cache.remember([ledger("org_e", 2)]); // 4 again
      expect(cache.open(ctx, ["org_b", "org_c", "org_e"], NOW)).not.toBeNull();
    });

    it("does not remember ledgers with more than maxBlocks active blocks, nor ones with unsaved changes", () => {
      const cache = new LedgerCache(limits);
      cache.remember([ledger("org_a", 2)]);
      expect(cache.open(ctx, ["org_a"], NOW)!.get("org_a")!.activeBlocks()).toHaveLength(2);
      // Remembered again with too many blocks: the old entry goes too.
      cache.remember([ledger("org_a", 3)]);
      expect(cache.open(ctx, ["org_a"], NOW)).toBeNull();
      cache.remember([ledger("org_b", 0, "0")]);
      expect(cache.open(ctx, ["org_b"], NOW)).not.toBeNull();

      const unsaved = ledger("org_b");
      unsaved.apply({
        kind: "debit",
        type: "usage",
        amount: C("1"),
        allowDebt: true,
        actor: { type: "system", id: "test" },
      });
      expect(unsaved.changed).toBe(true);
      cache.remember([unsaved]);
      expect(cache.open(ctx, ["org_b"], NOW)).toBeNull();
    });

    it("restore and snapshot copy the blocks: a restored ledger's postings do not reach the cache", () => {
      const cache = new LedgerCache(limits);
      const original = ledger("org_a", 1, "10");
      cache.remember([original]);
      // The remembered blocks are copies of the ledger's too.
      original.apply({
        kind: "debit",
        type: "usage",
        amount: C("4"),
        allowDebt: true,
        actor: { type: "system", id: "test" },
      });
      const restored = cache.open(ctx, ["org_a"], NOW)!.get("org_a")!;
      expect(restored.activeBlocks()[0]!.remaining).toBe(C("10"));
      restored.apply({
        kind: "debit",
        type: "usage",
        amount: C("10"),
        allowDebt: true,
        actor: { type: "system", id: "test" },
      });
      expect(restored.balance).toBe(0n);
      expect(restored.activeBlocks()).toHaveLength(0);

      const again = cache.open(ctx, ["org_a"], NOW)!.get("org_a")!;
      expect(again.balance).toBe(C("10"));
      expect(again.entries).toHaveLength(0);
      expect(again.changed).toBe(false);
      expect(again.activeBlocks().map((b) => [b.id, b.remaining, b.status])).toEqual([
        ["blk_0", C("10"), "active"],
      ]);
    });

    it("restore expires the blocks past their expiry as of the flush's now (on a copy)", () => {
      const cache = new LedgerCache(limits);
      const l = new OrgLedger(ctx, "org_a", state("10"), NOW);
      l.setBlocks([
        { ...block("org_a", "blk_exp", "4"), expires_at: new Date(NOW.getTime() + HOUR) },
        block("org_a", "blk_keep", "6"),
      ]);
      cache.remember([l]);
      const later = new Date(NOW.getTime() + 2 * HOUR);
      const restored = cache.open(ctx, ["org_a"], later)!.get("org_a")!;
      expect(restored.balance).toBe(C("6"));
      expect(restored.entries.map((e) => e.type)).toEqual(["expiry"]);
      expect(restored.activeBlocks().map((b) => b.id)).toEqual(["blk_keep"]);
      const before = cache.open(ctx, ["org_a"], NOW)!.get("org_a")!;
      expect(before.balance).toBe(C("10"));
      expect(before.activeBlocks().map((b) => [b.id, b.status])).toEqual([
        ["blk_exp", "active"],
        ["blk_keep", "active"],
      ]);
    });
  });
});

/**
 * Two service instances (two runtimes, two engines, two ledger caches) on ONE PostgreSQL
 * database: each one's remembered ledger goes stale whenever the other writes.
 */
describe.runIf(onPostgres)("optimistic ingest across two instances", async () => {
  const clock = new TestClock();
  const [a, b] = await twoInstances({ env: { TALLY_USAGE_BACKDATE_DAYS: "35" }, clock });
  const registries = [a.ctx.metrics.registry, b.ctx.metrics.registry];
  const { secret: key } = await createApiKey(a.ctx, { orgId: null, name: "two", role: "platform" });
  const call = (runtime: Runtime, method: "GET" | "POST", path: string, body?: unknown) =>
    runtime.app.inject({
      method,
      url: path,
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      payload: body === undefined ? undefined : JSON.stringify(body),
    });
  let n = 0;
  /** gpt-4o input tokens: 4000 cost 1 credit. */
  const usage = (orgId: string, credits: number) => ({
    id: `two-${++n}`,
    org_id: orgId,
    type: "ai_tokens",
    model: "gpt-4o",
    timestamp: clock.now().toISOString(),
    tokens: { input: credits * 4000 },
  });
  async function ingest(runtime: Runtime, events: unknown[]): Promise<Result[]> {
    const res = await call(runtime, "POST", "/v1/usage-events", { events });
    expect(res.statusCode, res.body).toBe(200);
    return res.json().data;
  }

  it("alternating events through both: each refused as stale by the other's write, every result exact", async () => {
    const created = await call(a, "POST", "/v1/organizations", { name: "Shared" });
    expect(created.statusCode, created.body).toBe(201);
    const orgId: string = created.json().id;
    const grant = await call(b, "POST", `/v1/organizations/${orgId}/adjustments`, {
      amount: "+1000",
      reason: "grant",
    });
    expect(grant.statusCode, grant.body).toBe(201);

    let expected = C("1000");
    let events = 0;
    // Sequential, alternating: from the third on, each instance's remembered ledger is one
    // write behind — refused as stale three times in a row, each instance then stops trying
    // for a second (its last event is not tried).
    const alternating = await counted(registries, async () => {
      for (let i = 0; i < 10; i++) {
        const cost = 1 + (i % 3);
        const e = usage(orgId, cost);
        const [r] = await ingest(i % 2 === 0 ? a : b, [e]);
        expected -= C(String(cost));
        events++;
        expect(r).toMatchObject({ id: e.id, status: "accepted" });
        expect(C(r!.cost)).toBe(C(String(cost)));
        expect(C(r!.balance_after)).toBe(expected);
      }
    });
    expect(alternating.delta).toEqual({ "ledger:stale": 6 });

    // After that second, twice in a row through one instance: the second is written
    // optimistically.
    clock.advance(1000);
    const twice = await counted(registries, async () => {
      for (let i = 0; i < 2; i++) {
        const [r] = await ingest(a, [usage(orgId, 1)]);
        expected -= C("1");
        events++;
        expect(C(r!.balance_after)).toBe(expected);
      }
    });
    expect(twice.delta).toEqual({ "ledger:stale": 1, written: 1 });

    // Concurrently through both: whatever each flush finds, every balance_after is distinct and
    // the chain is the sum of them.
    const concurrent = await counted(registries, () =>
      Promise.all(
        Array.from({ length: 20 }, (_, i) => ingest(i % 2 === 0 ? a : b, [usage(orgId, 2)])),
      ),
    );
    const afters = concurrent.result
      .map((r) => C(r[0]!.balance_after))
      .sort((x, y) => (x < y ? 1 : x > y ? -1 : 0));
    expect(afters).toEqual(Array.from({ length: 20 }, (_, i) => expected - BigInt(i + 1) * C("2")));
    expected -= 20n * C("2");
    events += 20;
    for (const outcome of Object.keys(concurrent.delta)) {
      expect(["written", "ledger:stale"]).toContain(outcome);
    }

    const balance = await getBalance(b.ctx.db, orgId);
    expect(balance.balance).toBe(expected);
    expect(balance.last_sequence).toBe(BigInt(events + 1));
    const stored = await a.ctx.db
      .selectFrom("usage_events")
      .select("id")
      .where("org_id", "=", orgId)
      .execute();
    expect(stored).toHaveLength(events);
    const report = await verifyLedger(a.ctx.db, orgId);
    expect(report, report.problems.join("; ")).toMatchObject({ ok: true, entries: events + 1 });
  });
});

describe.runIf(onPostgres)("optimistic ingest racing a change of alert settings", async () => {
  const app = await createTestApp();
  const ctx = app.runtime.ctx;

  it("thresholds committed while the optimistic statement waits for the lock: stale, and balance.low is raised", async () => {
    const orgId = await app.createOrg();
    const grant = await app.call("POST", `/v1/organizations/${orgId}/adjustments`, {
      body: { amount: "+100", reason: "grant" },
    });
    expect(grant.statusCode, grant.body).toBe(201);
    const key = await app.orgKey(orgId, "ingest");
    const event = (id: string, credits: number) => ({
      id,
      type: "ai_tokens",
      model: "gpt-4o",
      timestamp: app.clock.now().toISOString(),
      tokens: { input: credits * 4000 },
    });
    const first = await app.call("POST", "/v1/usage-events", { key, body: event("race-1", 1) });
    expect(first.statusCode, first.body).toBe(200); // the ledger is remembered at 99

    // What PUT …/alerts does (putAlertSettings), held open: the balance row locked, a threshold
    // of 90 written. Its version bump (a trigger) is what the optimistic statement must see.
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    let holding!: () => void;
    const held = new Promise<void>((r) => {
      holding = r;
    });
    const put = ctx.db.transaction().execute(async (tx) => {
      const ledger = (await openLedgers(tx, ctx, [orgId], { blocks: false })).get(orgId)!;
      await alertsRepo.upsertSettings(tx, orgId, [], ctx.clock.now());
      await alertsRepo.insertThresholds(
        tx,
        orgId,
        [{ threshold: C("90"), inAlert: ledger.balance < C("90") }],
        ctx.clock.now(),
      );
      holding();
      await gate;
    });
    await held;
    const { result: ingest, delta } = await counted(ctx.metrics.registry, async () => {
      const pending = app.call("POST", "/v1/usage-events", { key, body: event("race-2", 10) });
      // The optimistic statement has taken its snapshot and waits for the balance row.
      await waitFor(async () => {
        const r = await sql<{ n: number }>`select count(*)::int as n from pg_stat_activity
          where wait_event_type = 'Lock' and query like '%ledger:lock%'`.execute(ctx.db);
        return r.rows[0]!.n > 0;
      });
      release();
      await put;
      return pending;
    });
    expect(ingest.statusCode, ingest.body).toBe(200);
    expect(ingest.json().data[0].balance_after).toBe("89");
    expect(delta).toEqual({ "ledger:stale": 1 });
    const low = await ctx.db
      .selectFrom("events")
      .select(["type", "data"])
      .where("org_id", "=", orgId)
      .where("type", "=", "balance.low")
      .execute();
    expect(low).toHaveLength(1);
    const report = await verifyLedger(ctx.db, orgId);
    expect(report.ok, report.problems.join("; ")).toBe(true);
  });
});

/**
 * PostgreSQL: the one-statement flushes run on connections of their own, where a prepared
 * statement always uses its generic plan; every other statement keeps being planned with its
 * values (an ON CONFLICT on a partial index, as auto-topup's, can only be matched that way).
 */
describe.runIf(onPostgres)("the flush's own PostgreSQL connections", async () => {
  const app = await createTestApp();
  const ctx = app.runtime.ctx;
  const planMode = async (db: Db) =>
    (await sql<{ mode: string }>`select current_setting('plan_cache_mode') as mode`.execute(db))
      .rows[0]!.mode;

  it("plan prepared statements generically there, and only there", async () => {
    expect(await planMode(ctx.flushDb)).toBe("force_generic_plan");
    expect(await planMode(ctx.db)).toBe("auto");
  });

  it("carry the optimistic flushes", async () => {
    const orgId = await app.createOrg();
    const funded = await app.call("POST", `/v1/organizations/${orgId}/adjustments`, {
      body: { amount: "+10", reason: "test" },
    });
    expect(funded.statusCode, funded.body).toBe(201);
    const key = await app.orgKey(orgId, "ingest");
    const send = (id: string) =>
      app.call("POST", "/v1/usage-events", {
        key,
        body: { events: [{ id, type: "ai_tokens", model: "gpt-4o", tokens: { input: 4000 } }] },
      });
    expect((await send("own-1")).statusCode).toBe(200); // the locking path remembers the ledger
    const { result, delta } = await counted(ctx.metrics.registry, () => send("own-2"));
    expect(result.statusCode, result.body).toBe(200);
    expect(delta).toEqual({ written: 1 });
    const { rows } = await sql<{ query: string }>`select query from pg_stat_activity
      where datname = current_database() and application_name = ${FLUSH_APPLICATION_NAME}`.execute(
      ctx.db,
    );
    expect(rows.some((r) => r.query.startsWith('with "ledger:lock"'))).toBe(true);
  });
});
