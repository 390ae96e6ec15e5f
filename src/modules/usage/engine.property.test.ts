import fc from "fast-check";
import { sql } from "kysely";
import { describe, expect, it } from "vitest";
import { createTestApp } from "../../../test/support/app.js";
import { creditsFromDb, formatCredits, parseCredits } from "../ledger/credits.js";
import { getBalance, verifyLedger } from "../ledger/ledger.service.js";
import { expireReservations } from "./usage.service.js";

/**
 * The ingest engine against a small reference model. Each step is either a round of operations
 * sent CONCURRENTLY (usage batches with repeated ids and payload variations, grants,
 * reservation holds, settles and releases — they share flushes) or a clock tick followed by the
 * reservation sweeper.
 *
 * Within a round the outcome of most operations does not depend on how the flushes serialise
 * them, and the model predicts it exactly: a request is refused with `event_conflict` when one
 * of its events reuses a recorded id with another payload (or an id earlier in the same
 * request); a round-new id is recorded exactly once whichever request wins it. Where the order
 * does matter (two operations closing the same hold, admission of a hold while balances move),
 * the test checks that the observed outcome is one that some order allows, and the model
 * follows it. After every step, per organisation: balance, reserved, available and debt equal
 * the model; the ledger verifies; every recorded event is stored exactly once with one usage
 * entry; monthly and daily rollups equal the sums over the stored events; each hold's status is
 * the model's.
 */

const NOW = Date.parse("2026-11-24T10:00:00.000Z");
const UNIT = 10n ** 12n;

/** Three payloads an event id can carry; a different one under the same id is a conflict. */
const VARIANTS = [
  // gpt-4o: 1000 input tokens × 250 per 1M = 0.25
  { body: { type: "ai_tokens", model: "gpt-4o", tokens: { input: 1000 } }, cost: UNIT / 4n },
  // gpt-4o: 2000 input tokens = 0.5; and a user, so rollups split by user
  {
    body: { type: "ai_tokens", model: "gpt-4o", tokens: { input: 2000 }, user_id: "u-1" },
    cost: UNIT / 2n,
  },
  // 1.5 vCPU-seconds × 0.002 = 0.003
  {
    body: { type: "compute", meter: "compute.vcpu_seconds", quantity: "1.5" },
    cost: 3n * 10n ** 9n,
  },
] as const;
type Variant = 0 | 1 | 2;

/** Odd ids happened last month: rollups cover two periods. */
const timestampOf = (id: number) =>
  id % 2 === 0 ? "2026-11-24T09:00:00.000Z" : "2026-10-30T12:00:00.000Z";
const eventName = (id: number) => `e${id}`;

interface EventSpec {
  org: number;
  id: number;
  /** null: the id's usual payload (most repeats are then duplicates, some conflicts). */
  variant: Variant | null;
}

type Op =
  | { kind: "ingest"; org: number; platform: boolean; events: EventSpec[] }
  | { kind: "grant"; org: number; amount: bigint }
  | { kind: "reserve"; org: number; amount: bigint; expiresIn: number }
  | { kind: "settle"; org: number; pick: number; events: EventSpec[] }
  | { kind: "release"; org: number; pick: number };

type Resolved = { org: number; id: number; variant: Variant };
type Step = { kind: "round"; ops: Op[] } | { kind: "tick"; seconds: number };

const ID_POOL = 6;

function steps(orgs: number) {
  const org = fc.nat({ max: orgs - 1 });
  const variant = fc.oneof(
    { weight: 4, arbitrary: fc.constant(null) },
    { weight: 1, arbitrary: fc.constantFrom<Variant>(0, 1, 2) },
  );
  const event = fc.record({ org, id: fc.nat({ max: ID_POOL - 1 }), variant });
  const op: fc.Arbitrary<Op> = fc.oneof(
    {
      weight: 5,
      arbitrary: fc.record({
        kind: fc.constant("ingest" as const),
        org,
        platform: fc.boolean(),
        events: fc.array(event, { minLength: 1, maxLength: 4 }),
      }),
    },
    {
      weight: 2,
      arbitrary: fc.record({
        kind: fc.constant("grant" as const),
        org,
        amount: fc.constantFrom(1n, 3n, 10n).map((c) => c * UNIT),
      }),
    },
    {
      weight: 3,
      arbitrary: fc.record({
        kind: fc.constant("reserve" as const),
        org,
        amount: fc.constantFrom(UNIT / 2n, UNIT, 2n * UNIT),
        expiresIn: fc.constantFrom(60, 300, 3600),
      }),
    },
    {
      weight: 3,
      arbitrary: fc.record({
        kind: fc.constant("settle" as const),
        org,
        pick: fc.nat(),
        events: fc.array(event, { minLength: 0, maxLength: 2 }),
      }),
    },
    {
      weight: 2,
      arbitrary: fc.record({ kind: fc.constant("release" as const), org, pick: fc.nat() }),
    },
  );
  const step: fc.Arbitrary<Step> = fc.oneof(
    {
      weight: 6,
      arbitrary: fc.record({
        kind: fc.constant("round" as const),
        ops: fc.array(op, { minLength: 1, maxLength: 6 }),
      }),
    },
    {
      weight: 1,
      arbitrary: fc.record({
        kind: fc.constant("tick" as const),
        seconds: fc.integer({ min: 30, max: 400 }),
      }),
    },
  );
  return fc.array(step, { minLength: 1, maxLength: 10 });
}

interface StoredModel {
  variant: Variant;
  cost: bigint;
  transactionId: string;
  balanceAfter: string;
}
interface HoldModel {
  id: string;
  amount: bigint;
  status: "held" | "settled" | "released" | "expired";
  expiresAt: number;
}
interface OrgModel {
  id: string;
  key: string;
  balance: bigint;
  events: Map<string, StoredModel>;
  holds: HoldModel[];
}

const sum = (xs: Iterable<bigint>) => {
  let s = 0n;
  for (const x of xs) s += x;
  return s;
};

/** Outcomes seen over all runs: request kind:status[:code], and per-event statuses. */
const STATS = new Map<string, number>();
describe("ingest engine against a reference model", async () => {
  const app = await createTestApp();
  const ctx = app.runtime.ctx;

  async function checkOrg(m: OrgModel) {
    const b = await getBalance(ctx.db, m.id);
    const reserved = sum(m.holds.filter((h) => h.status === "held").map((h) => h.amount));
    expect(formatCredits(b.balance)).toBe(formatCredits(m.balance));
    expect(formatCredits(b.reserved)).toBe(formatCredits(reserved));
    expect(b.available).toBe(m.balance - reserved);
    // Without expiring blocks, what usage could not draw is exactly the negative balance.
    expect(b.debt).toBe(m.balance < 0n ? -m.balance : 0n);

    const report = await verifyLedger(ctx.db, m.id);
    expect(report.problems).toEqual([]);
    expect(report.ok).toBe(true);

    const events = await ctx.db
      .selectFrom("usage_events")
      .select(["id", "cost", "transaction_id"])
      .where("org_id", "=", m.id)
      .execute();
    expect(events.map((e) => e.id).sort()).toEqual([...m.events.keys()].sort());
    for (const e of events) {
      const model = m.events.get(e.id)!;
      expect(creditsFromDb(e.cost)).toBe(model.cost);
      expect(e.transaction_id).toBe(model.transactionId);
    }
    const usage = await ctx.db
      .selectFrom("ledger_entries")
      .select(["reference_id", "amount", "id"])
      .where("org_id", "=", m.id)
      .where("type", "=", "usage")
      .execute();
    expect(usage.map((u) => u.reference_id).sort()).toEqual([...m.events.keys()].sort());
    for (const u of usage) {
      const model = m.events.get(u.reference_id!)!;
      expect(u.id).toBe(model.transactionId);
      expect(creditsFromDb(u.amount)).toBe(-model.cost);
    }

    // Invariant 8: rollups equal the sums over the stored events.
    const rollups = await sql<Record<string, string>>`
      select to_char(period, 'YYYY-MM') as p, sum(cost)::text as cost, sum(events)::text as events,
             sum(input_tokens)::text as input, sum(output_tokens)::text as output,
             sum(quantity)::text as quantity
        from usage_rollups where org_id = ${m.id} group by 1 order by 1`.execute(ctx.db);
    const fromEvents = await sql<Record<string, string>>`
      select to_char(timestamp at time zone 'UTC', 'YYYY-MM') as p, sum(cost)::text as cost,
             count(*)::text as events, coalesce(sum(input_tokens), 0)::text as input,
             coalesce(sum(output_tokens), 0)::text as output,
             (coalesce(sum(coalesce(input_tokens, 0) + coalesce(cached_input_tokens, 0)
                           + coalesce(cache_write_tokens, 0) + coalesce(output_tokens, 0)), 0)
              + coalesce(sum(quantity), 0))::text as quantity
        from usage_events where org_id = ${m.id} group by 1 order by 1`.execute(ctx.db);
    const norm = (rows: Record<string, string>[]) =>
      rows.map((r) => ({
        p: r.p,
        cost: creditsFromDb(r.cost!),
        events: BigInt(r.events!),
        input: BigInt(r.input!),
        output: BigInt(r.output!),
        quantity: parseCredits(r.quantity!),
      }));
    expect(norm(rollups.rows)).toEqual(norm(fromEvents.rows));
    const daily = await sql<{ cost: string | null; events: string | null }>`
      select sum(cost)::text as cost, sum(events)::text as events from usage_daily where org_id = ${m.id}`.execute(
      ctx.db,
    );
    expect(creditsFromDb(daily.rows[0]!.cost ?? "0")).toBe(
      sum([...m.events.values()].map((e) => e.cost)),
    );
    expect(BigInt(daily.rows[0]!.events ?? "0")).toBe(BigInt(m.events.size));

    const holds = await ctx.db
      .selectFrom("reservations")
      .select(["id", "status", "amount"])
      .where("org_id", "=", m.id)
      .orderBy("id")
      .execute();
    const byId = (a: { id: string }, b: { id: string }) => (a.id < b.id ? -1 : 1);
    expect(holds.sort(byId).map((h) => [h.id, h.status])).toEqual(
      [...m.holds].sort(byId).map((h) => [h.id, h.status]),
    );
  }

  it("keeps balances, duplicates, holds and rollups exact through concurrent rounds", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 2, max: 3 }).chain((n) => fc.tuple(fc.constant(n), steps(n))),
        async ([orgCount, plan]) => {
          // Sweep the holds of earlier runs, so that this run's sweeper counts only its own.
          app.clock.set(new Date(NOW + 10 * 86_400_000));
          await expireReservations(ctx);
          app.clock.set(new Date(NOW));
          const orgs: OrgModel[] = [];
          for (let i = 0; i < orgCount; i++) {
            const id = await app.createOrg();
            const grant = await app.call("POST", `/v1/organizations/${id}/adjustments`, {
              body: { amount: "+5", reason: "opening credits" },
            });
            expect(grant.statusCode, grant.body).toBe(201);
            orgs.push({
              id,
              key: await app.orgKey(id, "ingest"),
              balance: 5n * UNIT,
              events: new Map(),
              holds: [],
            });
          }
          for (const step of plan) {
            if (step.kind === "tick") {
              app.clock.advance(step.seconds * 1000);
              const now = app.clock.now().getTime();
              let due = 0;
              for (const m of orgs) {
                for (const h of m.holds) {
                  if (h.status === "held" && h.expiresAt <= now) {
                    h.status = "expired";
                    due++;
                  }
                }
              }
              expect(await expireReservations(ctx)).toBe(due);
            } else {
              await runRound(orgs, step.ops);
            }
            for (const m of orgs) await checkOrg(m);
          }
        },
      ),
      { numRuns: 40 },
    );
    // The generators reach every kind of outcome (so a weakened generator cannot pass silently).
    for (const outcome of [
      "accepted",
      "duplicate",
      "ingest:409:event_conflict",
      "reserve:201",
      "settle:200",
      "settle:409:invalid_state",
      "release:200",
    ]) {
      expect(STATS.get(outcome) ?? 0, outcome).toBeGreaterThan(0);
    }
    // Seconds alone; allow for a machine busy with other test files.
  }, 120_000);

  async function runRound(orgs: OrgModel[], ops: Op[]) {
    const now = app.clock.now().getTime();
    // Ids recorded before the round decide duplicates and conflicts; a round-new id carries the
    // payload of its first use in the round in every other request (only within one request
    // may it differ), so whichever request's flush records it, the result is the same.
    const roundPayload = new Map<string, Variant>();
    const holdOf = (op: { org: number; pick: number }) => {
      const holds = orgs[op.org]!.holds;
      return holds.length === 0 ? null : holds[op.pick % holds.length]!;
    };

    const resolve = (ops: Op[]) =>
      ops.map((op) => {
        const hold = op.kind === "settle" || op.kind === "release" ? holdOf(op) : null;
        if (op.kind !== "ingest" && op.kind !== "settle")
          return { op, hold, events: [] as Resolved[] };
        const inRequest = new Map<string, Variant>();
        const events = op.events.map((e) => {
          const org = op.kind === "settle" || !op.platform ? op.org : e.org;
          const k = `${org}/${e.id}`;
          let variant: Variant = e.variant ?? ((e.id % 3) as Variant);
          const stored = orgs[org]!.events.get(eventName(e.id));
          if (!stored && !inRequest.has(k)) {
            const fixed = roundPayload.get(k);
            if (fixed === undefined) roundPayload.set(k, variant);
            else variant = fixed;
          }
          if (!inRequest.has(k)) inRequest.set(k, variant);
          return { org, id: e.id, variant };
        });
        return { op, hold, events };
      });
    const resolved = resolve(ops);
    const preHeld = orgs.map((m) =>
      sum(m.holds.filter((h) => h.status === "held").map((h) => h.amount)),
    );

    const conflicts = (events: { org: number; id: number; variant: Variant }[]) =>
      events.some((e, i) => {
        const stored = orgs[e.org]!.events.get(eventName(e.id));
        if (stored) return stored.variant !== e.variant;
        const first = events.findIndex((x) => x.org === e.org && x.id === e.id);
        return first < i && events[first]!.variant !== e.variant;
      });
    const body = (e: { org: number; id: number; variant: Variant }, withOrg: boolean) => ({
      id: eventName(e.id),
      ...(withOrg ? { org_id: orgs[e.org]!.id } : {}),
      timestamp: timestampOf(e.id),
      ...VARIANTS[e.variant].body,
    });

    // Bounds for holds admitted while balances move in the same round.
    const startAvailable = orgs.map((m, i) => m.balance - preHeld[i]!);

    const url = (org: number, path: string) => `/v1/organizations/${orgs[org]!.id}/${path}`;
    const responses = await Promise.all(
      resolved.map(({ op, hold, events }) => {
        const m = orgs[op.org]!;
        switch (op.kind) {
          case "ingest":
            return app.call("POST", "/v1/usage-events", {
              key: op.platform ? app.platformKey : m.key,
              body: { events: events.map((e) => body(e, op.platform)) },
            });
          case "grant":
            return app.call("POST", url(op.org, "adjustments"), {
              body: { amount: `+${formatCredits(op.amount)}`, reason: "property grant" },
            });
          case "reserve":
            return app.call("POST", url(op.org, "reservations"), {
              key: m.key,
              body: { amount: formatCredits(op.amount), expires_in_seconds: op.expiresIn },
            });
          case "settle":
            return app.call("POST", url(op.org, `reservations/${hold?.id ?? "rsv_none"}/settle`), {
              key: m.key,
              body: { events: events.map((e) => body(e, false)) },
            });
          case "release":
            return app.call("POST", url(op.org, `reservations/${hold?.id ?? "rsv_none"}/release`), {
              key: m.key,
            });
        }
        return op satisfies never;
      }),
    );

    for (const [i, r] of responses.entries()) {
      const k = `${resolved[i]!.op.kind}:${r.statusCode}${r.statusCode >= 400 ? `:${r.json().error.code}` : ""}`;
      STATS.set(k, (STATS.get(k) ?? 0) + 1);
      if (r.statusCode === 200 && r.json().data)
        for (const d of r.json().data) STATS.set(d.status, (STATS.get(d.status) ?? 0) + 1);
    }
    // Closing a hold: at most one operation per hold may win.
    const closers = new Map<HoldModel, { index: number; valid: boolean }[]>();
    const recorded = new Map<
      string,
      {
        id: string;
        cost: string;
        transaction_id: string;
        balance_after: string;
        accepted: number;
        variant: Variant;
      }
    >();

    resolved.forEach(({ op, hold, events }, index) => {
      const res = responses[index]!;
      const m = orgs[op.org]!;
      const detail = `${op.kind} → ${res.statusCode} ${res.body}`;
      switch (op.kind) {
        case "grant":
          expect(res.statusCode, detail).toBe(201);
          m.balance += op.amount;
          return;
        case "reserve": {
          if (res.statusCode === 201) {
            const r = res.json();
            m.holds.push({
              id: r.id,
              amount: op.amount,
              status: "held",
              expiresAt: now + op.expiresIn * 1000,
            });
            // Admitted: some order had this much available.
            const most =
              startAvailable[op.org]! +
              sum(
                resolved
                  .filter((x) => x.op.kind === "grant" && x.op.org === op.org)
                  .map((x) => (x.op as { amount: bigint }).amount),
              ) +
              preHeld[op.org]!;
            expect(op.amount <= most, detail).toBe(true);
          } else {
            expect(res.statusCode, detail).toBe(402);
            expect(res.json().error.code).toBe("insufficient_credits");
            // Refused: some order left less than this available.
            const costs = sum(
              resolved.flatMap((x) =>
                x.events.filter((e) => e.org === op.org).map((e) => VARIANTS[e.variant].cost),
              ),
            );
            const otherHolds = sum(
              resolved
                .filter((x) => x.op.kind === "reserve" && x.op.org === op.org && x.op !== op)
                .map((x) => (x.op as { amount: bigint }).amount),
            );
            expect(op.amount > startAvailable[op.org]! - costs - otherHolds, detail).toBe(true);
          }
          return;
        }
        case "release": {
          if (!hold) {
            expect(res.statusCode, detail).toBe(404);
            return;
          }
          const list = closers.get(hold) ?? [];
          list.push({ index, valid: hold.status === "held" });
          closers.set(hold, list);
          if (res.statusCode !== 200) {
            expect(res.statusCode, detail).toBe(409);
            expect(res.json().error.code, detail).toBe("invalid_state");
          }
          return;
        }
        case "settle":
        case "ingest": {
          const conflict = conflicts(events);
          let valid = !conflict;
          if (op.kind === "settle") {
            if (!hold) {
              // An unknown hold: 404 unless a conflict is found first.
              expect(res.statusCode, detail).toBe(conflict ? 409 : 404);
              return;
            }
            const open = hold.status === "held" && hold.expiresAt > now;
            const list = closers.get(hold) ?? [];
            list.push({ index, valid: valid && open });
            closers.set(hold, list);
            valid &&= open;
            if (!conflict && !open) {
              expect(res.statusCode, detail).toBe(409);
              expect(res.json().error.code, detail).toBe("invalid_state");
              return;
            }
          }
          if (conflict) {
            expect(res.statusCode, detail).toBe(409);
            expect(res.json().error.code, detail).toBe("event_conflict");
            return;
          }
          if (op.kind === "settle" && res.statusCode === 409) {
            // Lost the race for the hold to another settle or release.
            expect(res.json().error.code, detail).toBe("invalid_state");
            return;
          }
          expect(res.statusCode, detail).toBe(200);
          const results = res.json().data as {
            id: string;
            status: string;
            cost: string;
            transaction_id: string;
            balance_after: string;
          }[];
          expect(results.map((r) => r.id)).toEqual(events.map((e) => eventName(e.id)));
          let accepted = 0n;
          results.forEach((r, i) => {
            const e = events[i]!;
            const stored = orgs[e.org]!.events.get(r.id);
            if (stored) {
              expect(r, detail).toEqual({
                id: r.id,
                status: "duplicate",
                cost: formatCredits(stored.cost),
                transaction_id: stored.transactionId,
                balance_after: stored.balanceAfter,
              });
              return;
            }
            expect(parseCredits(r.cost), detail).toBe(VARIANTS[e.variant].cost);
            const k = `${e.org}/${r.id}`;
            const seen = recorded.get(k);
            if (r.status === "accepted") accepted += parseCredits(r.cost);
            if (!seen) {
              recorded.set(k, {
                ...r,
                accepted: r.status === "accepted" ? 1 : 0,
                variant: e.variant,
              });
            } else {
              expect(
                { cost: r.cost, transaction_id: r.transaction_id, balance_after: r.balance_after },
                detail,
              ).toEqual({
                cost: seen.cost,
                transaction_id: seen.transaction_id,
                balance_after: seen.balance_after,
              });
              if (r.status === "accepted") seen.accepted++;
            }
          });
          if (op.kind === "settle") {
            const reservation = res.json().reservation;
            expect(reservation.status).toBe("settled");
            expect(parseCredits(reservation.settled_cost)).toBe(accepted);
          }
          return;
        }
      }
    });

    for (const [hold, attempts] of closers) {
      const winners = attempts.filter((a) => responses[a.index]!.statusCode === 200);
      const anyValid = attempts.some((a) => a.valid);
      expect(
        winners.length,
        `hold ${hold.id}: ${attempts.map((a) => responses[a.index]!.body).join(" | ")}`,
      ).toBe(anyValid ? 1 : 0);
      if (winners.length === 1) {
        const op = resolved[winners[0]!.index]!.op;
        hold.status = op.kind === "release" ? "released" : "settled";
      }
    }

    for (const [k, r] of recorded) {
      // Each round-new id recorded exactly once, by exactly one accepted result.
      expect(r.accepted, k).toBe(1);
      const org = orgs[Number(k.split("/")[0])]!;
      org.events.set(r.id, {
        variant: r.variant,
        cost: VARIANTS[r.variant].cost,
        transactionId: r.transaction_id,
        balanceAfter: r.balance_after,
      });
      org.balance -= VARIANTS[r.variant].cost;
    }
  }
});
