import { describe, expect, it } from "vitest";
import { createTestApp, TestClock, twoInstances } from "../../../test/support/app.js";
import { onPostgres } from "../../../test/support/db.js";
import type { Runtime } from "../../app/runtime.js";
import { parseCredits } from "../ledger/credits.js";
import { getBalance, verifyLedger } from "../ledger/ledger.service.js";
import { createApiKey } from "../orgs/orgs.service.js";

/**
 * Invariant 5 for usage events: one id, at most one effect — under concurrent requests (which
 * share ingest flushes, or on PostgreSQL run in two flushes at once), and across two service
 * instances with their own ingest engines on one database.
 */

const TIMESTAMP = "2026-11-24T09:00:00.000Z";
/** gpt-4o: `input` tokens × 250 per 1M. */
const event = <E extends Record<string, unknown>>(
  id: string,
  input = 1000,
  extra: E = {} as E,
) => ({
  id,
  type: "ai_tokens",
  model: "gpt-4o",
  timestamp: TIMESTAMP,
  tokens: { input },
  ...extra,
});

interface Result {
  id: string;
  status: "accepted" | "duplicate";
  cost: string;
  transaction_id: string;
  balance_after: string;
}

describe("usage events under concurrency", async () => {
  const app = await createTestApp();
  const ctx = app.runtime.ctx;

  async function setup(credits = "100") {
    const orgId = await app.createOrg();
    const grant = await app.call("POST", `/v1/organizations/${orgId}/adjustments`, {
      body: { amount: `+${credits}`, reason: "grant" },
    });
    expect(grant.statusCode, grant.body).toBe(201);
    return { orgId, key: await app.orgKey(orgId, "ingest") };
  }

  const usageEntries = (orgId: string, id: string) =>
    ctx.db
      .selectFrom("ledger_entries")
      .select(["id", "amount"])
      .where("org_id", "=", orgId)
      .where("type", "=", "usage")
      .where("reference_id", "=", id)
      .execute();

  it("the same event from 20 concurrent requests: one accepted, 19 duplicates, one ledger entry", async () => {
    const { orgId, key } = await setup();
    const e = event("evt-same", 4000); // 1 credit
    const responses = await Promise.all(
      Array.from({ length: 20 }, () => app.call("POST", "/v1/usage-events", { key, body: e })),
    );
    for (const r of responses) expect(r.statusCode, r.body).toBe(200);
    const results = responses.map((r) => r.json().data[0] as Result);
    expect(results.filter((r) => r.status === "accepted")).toHaveLength(1);
    expect(results.filter((r) => r.status === "duplicate")).toHaveLength(19);
    const accepted = results.find((r) => r.status === "accepted")!;
    for (const r of results) {
      expect({ ...r, status: "accepted" }).toEqual(accepted);
    }
    expect(accepted).toMatchObject({ cost: "1", balance_after: "99" });

    const entries = await usageEntries(orgId, e.id);
    expect(entries).toEqual([{ id: accepted.transaction_id, amount: expect.any(String) }]);
    expect(parseCredits(entries[0]!.amount)).toBe(-parseCredits("1"));
    const stored = await ctx.db
      .selectFrom("usage_events")
      .select("id")
      .where("org_id", "=", orgId)
      .execute();
    expect(stored).toEqual([{ id: e.id }]);
    expect((await getBalance(ctx.db, orgId)).balance).toBe(parseCredits("99"));
    expect(await verifyLedger(ctx.db, orgId)).toMatchObject({ ok: true, entries: 2 });
  });

  it("the same id with 20 different payloads at once: one accepted, 19 × 409 event_conflict", async () => {
    const { orgId, key } = await setup();
    const responses = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        app.call("POST", "/v1/usage-events", { key, body: event("evt-contested", 1000 * (i + 1)) }),
      ),
    );
    const ok = responses.filter((r) => r.statusCode === 200);
    const conflicts = responses.filter((r) => r.statusCode === 409);
    expect(ok).toHaveLength(1);
    expect(conflicts).toHaveLength(19);
    for (const r of conflicts) expect(r.json().error.code).toBe("event_conflict");
    const winner = ok[0]!.json().data[0] as Result;
    expect(winner.status).toBe("accepted");
    // The stored event is the winner's payload, charged once.
    const winnerInput = (responses.indexOf(ok[0]!) + 1) * 1000;
    expect(parseCredits(winner.cost)).toBe(parseCredits("0.00025") * BigInt(winnerInput));
    expect(await usageEntries(orgId, "evt-contested")).toHaveLength(1);
    expect((await getBalance(ctx.db, orgId)).balance).toBe(
      parseCredits("100") - parseCredits(winner.cost),
    );
    const [stored] = await ctx.db
      .selectFrom("usage_events")
      .select(["input_tokens", "transaction_id"])
      .where("org_id", "=", orgId)
      .execute();
    expect(stored).toEqual({
      input_tokens: String(winnerInput),
      transaction_id: winner.transaction_id,
    });
    expect(await verifyLedger(ctx.db, orgId)).toMatchObject({ ok: true, entries: 2 });
  });

  it("two payload groups racing for one id: the winning group is accepted + duplicates, the other all 409", async () => {
    const { orgId, key } = await setup();
    const a = event("evt-groups", 1000);
    const b = event("evt-groups", 1000, { user_id: "someone" });
    const responses = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        app.call("POST", "/v1/usage-events", { key, body: { events: [i % 2 === 0 ? a : b] } }),
      ),
    );
    const groupA = responses.filter((_, i) => i % 2 === 0);
    const groupB = responses.filter((_, i) => i % 2 === 1);
    const aWon = groupA.some((r) => r.statusCode === 200);
    const [winners, losers] = aWon ? [groupA, groupB] : [groupB, groupA];
    for (const r of winners) expect(r.statusCode, r.body).toBe(200);
    for (const r of losers) {
      expect(r.statusCode, r.body).toBe(409);
      expect(r.json().error.code).toBe("event_conflict");
    }
    const statuses = winners.map((r) => (r.json().data[0] as Result).status).sort();
    expect(statuses).toEqual(["accepted", ...Array(9).fill("duplicate")]);
    expect(await usageEntries(orgId, "evt-groups")).toHaveLength(1);
    expect((await getBalance(ctx.db, orgId)).balance).toBe(parseCredits("99.75"));
  });

  it("concurrent batches with overlapping ids across two organisations: each id once, exact balances", async () => {
    const one = await setup();
    const two = await setup();
    // 12 batches, each 10 ids out of 40 (overlapping windows), both orgs interleaved in
    // different orders so that flushes lock them in one order regardless.
    const batches = Array.from({ length: 12 }, (_, b) =>
      Array.from({ length: 10 }, (_, j) => {
        const id = `ov-${(b * 3 + j) % 40}`;
        const org = (b + j) % 2 === 0 ? one.orgId : two.orgId;
        return event(id, 1000, { org_id: org });
      }),
    );
    const responses = await Promise.all(
      batches.map((events) => app.call("POST", "/v1/usage-events", { body: { events } })),
    );
    for (const r of responses) expect(r.statusCode, r.body).toBe(200);
    const accepted = new Map<string, number>();
    const expected = new Set<string>();
    responses.forEach((r, b) => {
      (r.json().data as Result[]).forEach((res, j) => {
        const key = `${batches[b]![j]!.org_id}/${res.id}`;
        expected.add(key);
        if (res.status === "accepted") accepted.set(key, (accepted.get(key) ?? 0) + 1);
      });
    });
    expect([...accepted.keys()].sort()).toEqual([...expected].sort());
    expect([...accepted.values()].every((n) => n === 1)).toBe(true);
    for (const org of [one.orgId, two.orgId]) {
      const ids = [...expected].filter((k) => k.startsWith(`${org}/`)).length;
      const stored = await ctx.db
        .selectFrom("usage_events")
        .select("id")
        .where("org_id", "=", org)
        .execute();
      expect(stored).toHaveLength(ids);
      expect((await getBalance(ctx.db, org)).balance).toBe(
        parseCredits("100") - BigInt(ids) * parseCredits("0.25"),
      );
      expect(await verifyLedger(ctx.db, org)).toMatchObject({ ok: true, entries: ids + 1 });
    }
  });
});

/**
 * Two service instances (two runtimes, two connection pools, two ingest engines) on ONE
 * PostgreSQL database. PGlite is single-process by design, so this runs on PostgreSQL only.
 */
describe.runIf(onPostgres)("two instances on one PostgreSQL database", async () => {
  const clock = new TestClock();
  const [a, b] = await twoInstances({ env: { TALLY_USAGE_BACKDATE_DAYS: "35" }, clock });
  const { secret: key } = await createApiKey(a.ctx, { orgId: null, name: "two", role: "platform" });
  const call = (runtime: Runtime, method: "GET" | "POST", path: string, body?: unknown) =>
    runtime.app.inject({
      method,
      url: path,
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      payload: body === undefined ? undefined : JSON.stringify(body),
    });

  it("overlapping event ids ingested through both at once: each recorded once, balance exact", async () => {
    const orgIds: string[] = [];
    for (let i = 0; i < 2; i++) {
      const created = await call(i === 0 ? a : b, "POST", "/v1/organizations", {
        name: `Shared ${i}`,
      });
      expect(created.statusCode, created.body).toBe(201);
      orgIds.push(created.json().id);
      const grant = await call(a, "POST", `/v1/organizations/${orgIds[i]}/adjustments`, {
        amount: "+100",
        reason: "grant",
      });
      expect(grant.statusCode, grant.body).toBe(201);
    }
    // Instance A sends ids 0–149, instance B ids 50–199, in batches of 25, each event for one of
    // the two organisations (the same id always for the same org and payload).
    const eventFor = (n: number) =>
      event(`mi-${n}`, 1000 * (1 + (n % 3)), { org_id: orgIds[n % 2] });
    const batchesOf = (from: number, to: number, reverse: boolean) => {
      const ids = Array.from({ length: to - from }, (_, i) => from + i);
      if (reverse) ids.reverse();
      const out: number[][] = [];
      for (let i = 0; i < ids.length; i += 25) out.push(ids.slice(i, i + 25));
      return out;
    };
    const sends = [
      ...batchesOf(0, 150, false).map((ids) => ({ runtime: a, ids })),
      ...batchesOf(50, 200, true).map((ids) => ({ runtime: b, ids })),
    ];
    // Twice over: the second wave retries everything (all duplicates by then, or racing).
    const waves = [...sends, ...sends.map((s) => ({ ...s, ids: [...s.ids].reverse() }))];
    const responses = await Promise.all(
      waves.map((s) =>
        call(s.runtime, "POST", "/v1/usage-events", { events: s.ids.map(eventFor) }),
      ),
    );
    for (const r of responses) expect(r.statusCode, r.body).toBe(200);

    const acceptedCount = new Map<number, number>();
    const txn = new Map<number, string>();
    responses.forEach((r, w) => {
      (r.json().data as Result[]).forEach((res, j) => {
        const n = waves[w]!.ids[j]!;
        expect(res.id).toBe(`mi-${n}`);
        if (res.status === "accepted") acceptedCount.set(n, (acceptedCount.get(n) ?? 0) + 1);
        const seen = txn.get(n);
        if (seen) expect(res.transaction_id).toBe(seen);
        else txn.set(n, res.transaction_id);
      });
    });
    expect(acceptedCount.size).toBe(200);
    expect([...acceptedCount.values()].every((c) => c === 1)).toBe(true);

    for (const [i, orgId] of orgIds.entries()) {
      const mine = Array.from({ length: 200 }, (_, n) => n).filter((n) => n % 2 === i);
      const stored = await a.ctx.db
        .selectFrom("usage_events")
        .select("id")
        .where("org_id", "=", orgId)
        .execute();
      expect(stored.map((s) => s.id).sort()).toEqual(mine.map((n) => `mi-${n}`).sort());
      const cost = mine.reduce((s, n) => s + BigInt(1 + (n % 3)) * parseCredits("0.25"), 0n);
      const balance = await getBalance(b.ctx.db, orgId);
      expect(balance.balance).toBe(parseCredits("100") - cost);
      expect(balance.last_sequence).toBe(BigInt(mine.length + 1));
      expect(await verifyLedger(a.ctx.db, orgId)).toMatchObject({
        ok: true,
        entries: mine.length + 1,
      });
    }
  });
});
