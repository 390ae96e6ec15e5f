import { sql } from "kysely";
import { expect } from "vitest";
import type { Db } from "../../src/db/index.js";
import { creditsFromDb, formatCredits, parseCredits } from "../../src/modules/ledger/credits.js";
import { getBalance, verifyLedger } from "../../src/modules/ledger/ledger.service.js";

const sum = (xs: Iterable<bigint>) => {
  let s = 0n;
  for (const x of xs) s += x;
  return s;
};

/**
 * The DESIGN.md ledger invariants for one organisation, checked against the database directly
 * (independently of `verifyLedger`, which is checked too):
 *   1. balance = Σ entry amounts = Σ remaining of active blocks − debt;
 *   2. sequences 1..n gapless, balance_after running sum, hash chain (verifyLedger);
 *   5. every stored usage event has exactly one usage ledger entry (its transaction), and no usage
 *      entry lacks its event;
 *   6. 0 ≤ remaining ≤ original;
 *   7. reserved = Σ held reservations;
 *   8. monthly rollups and daily totals equal the sums over the stored events.
 * Returns the balance (fixed-point) for the caller's own arithmetic.
 */
export async function checkOrgInvariants(db: Db, orgId: string): Promise<bigint> {
  const report = await verifyLedger(db, orgId);
  expect(report.problems, `ledger of ${orgId}`).toEqual([]);
  expect(report.ok).toBe(true);

  const balance = await getBalance(db, orgId);
  const entries = await db
    .selectFrom("ledger_entries")
    .select(["sequence", "amount", "balance_after", "type", "reference_id", "id"])
    .where("org_id", "=", orgId)
    .orderBy("sequence")
    .execute();
  expect(entries.map((e) => Number(e.sequence))).toEqual(entries.map((_, i) => i + 1));
  expect(BigInt(balance.last_sequence)).toBe(BigInt(entries.length));
  const total = sum(entries.map((e) => creditsFromDb(e.amount)));
  expect(formatCredits(balance.balance)).toBe(formatCredits(total));
  if (entries.length > 0) {
    expect(creditsFromDb(entries.at(-1)!.balance_after)).toBe(balance.balance);
  }

  const blocks = await db
    .selectFrom("credit_blocks")
    .select(["id", "original", "remaining", "status"])
    .where("org_id", "=", orgId)
    .execute();
  for (const b of blocks) {
    const remaining = creditsFromDb(b.remaining);
    expect(remaining >= 0n, `block ${b.id} remaining ≥ 0`).toBe(true);
    expect(remaining <= creditsFromDb(b.original), `block ${b.id} remaining ≤ original`).toBe(true);
  }
  const active = sum(
    blocks.filter((b) => b.status === "active").map((b) => creditsFromDb(b.remaining)),
  );
  expect(formatCredits(active - balance.debt)).toBe(formatCredits(balance.balance));

  const held = await db
    .selectFrom("reservations")
    .select("amount")
    .where("org_id", "=", orgId)
    .where("status", "=", "held")
    .execute();
  expect(formatCredits(balance.reserved)).toBe(
    formatCredits(sum(held.map((h) => creditsFromDb(h.amount)))),
  );
  expect(balance.available).toBe(balance.balance - balance.reserved);

  // Every stored event once, with exactly one usage entry, and the other way round.
  const events = await db
    .selectFrom("usage_events")
    .select(["id", "cost", "transaction_id"])
    .where("org_id", "=", orgId)
    .execute();
  const usage = entries.filter((e) => e.type === "usage");
  expect(new Set(events.map((e) => e.id)).size).toBe(events.length);
  expect(usage.map((u) => u.reference_id).sort()).toEqual(events.map((e) => e.id).sort());
  const entryById = new Map(usage.map((u) => [u.id, u]));
  for (const e of events) {
    const entry = entryById.get(e.transaction_id);
    expect(entry?.reference_id, `usage entry of event ${e.id}`).toBe(e.id);
    expect(creditsFromDb(entry!.amount)).toBe(-creditsFromDb(e.cost));
  }

  await checkRollups(db, orgId);
  return balance.balance;
}

/** Invariant 8: monthly rollups (and daily totals) equal the sums over the stored events. */
export async function checkRollups(db: Db, orgId: string): Promise<void> {
  const rollups = await sql<Record<string, string>>`
    select to_char(period, 'YYYY-MM') as p, type, sum(cost)::text as cost,
           sum(events)::text as events, sum(input_tokens)::text as input,
           sum(output_tokens)::text as output, sum(quantity)::text as quantity
      from usage_rollups where org_id = ${orgId} group by 1, 2 order by 1, 2`.execute(db);
  const fromEvents = await sql<Record<string, string>>`
    select to_char(timestamp at time zone 'UTC', 'YYYY-MM') as p, type, sum(cost)::text as cost,
           count(*)::text as events, coalesce(sum(input_tokens), 0)::text as input,
           coalesce(sum(output_tokens), 0)::text as output,
           (coalesce(sum(coalesce(input_tokens, 0) + coalesce(cached_input_tokens, 0)
                         + coalesce(cache_write_tokens, 0) + coalesce(output_tokens, 0)), 0)
            + coalesce(sum(quantity), 0))::text as quantity
      from usage_events where org_id = ${orgId} group by 1, 2 order by 1, 2`.execute(db);
  const norm = (rows: Record<string, string>[]) =>
    rows.map((r) => ({
      p: r.p,
      type: r.type,
      cost: formatCredits(creditsFromDb(r.cost!)),
      events: BigInt(r.events!),
      input: BigInt(r.input!),
      output: BigInt(r.output!),
      quantity: formatCredits(parseCredits(r.quantity!)),
    }));
  expect(norm(rollups.rows)).toEqual(norm(fromEvents.rows));

  const daily = await sql<{ cost: string | null; events: string | null }>`
    select sum(cost)::text as cost, sum(events)::text as events
      from usage_daily where org_id = ${orgId}`.execute(db);
  const total = await sql<{ cost: string | null; events: string }>`
    select sum(cost)::text as cost, count(*)::text as events
      from usage_events where org_id = ${orgId}`.execute(db);
  expect(formatCredits(creditsFromDb(daily.rows[0]!.cost ?? "0"))).toBe(
    formatCredits(creditsFromDb(total.rows[0]!.cost ?? "0")),
  );
  expect(BigInt(daily.rows[0]!.events ?? "0")).toBe(BigInt(total.rows[0]!.events));
}
