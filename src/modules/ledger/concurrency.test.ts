import { sql } from "kysely";
import { describe, expect, it } from "vitest";
import { createTestApp } from "../../../test/support/app.js";
import { onPostgres } from "../../../test/support/db.js";
import { formatCredits, parseCredits } from "./credits.js";
import { getBalance, verifyLedger } from "./ledger.service.js";
import { openLedgers, postEntries, saveLedgers } from "./posting.js";

/**
 * Real concurrency needs real connections: PGlite is single-connection and serialises every
 * transaction, so these run on PostgreSQL only (TEST_DATABASE_URL).
 */
describe.runIf(onPostgres)("ledger under concurrency (PostgreSQL)", async () => {
  const app = await createTestApp();
  const ctx = app.runtime.ctx;
  const SYSTEM = { type: "system" as const, id: "tally" };

  const adjust = (orgId: string, amount: string) =>
    app.call("POST", `/v1/organizations/${orgId}/adjustments`, {
      body: { amount, reason: `concurrent ${amount}` },
    });

  async function sequences(orgId: string): Promise<number[]> {
    const rows = await ctx.db
      .selectFrom("ledger_entries")
      .select("sequence")
      .where("org_id", "=", orgId)
      .orderBy("sequence")
      .execute();
    return rows.map((r) => Number(r.sequence));
  }

  const oneTo = (n: number) => Array.from({ length: n }, (_, i) => i + 1);

  it("50 debits and 50 credits at once: exact balance, gapless sequences, valid chain", async () => {
    const orgId = await app.createOrg();
    expect((await adjust(orgId, "+100")).statusCode).toBe(201);

    const requests = Array.from({ length: 100 }, (_, i) =>
      adjust(orgId, i % 2 === 0 ? "-1" : "+1.000000000001"),
    );
    const responses = await Promise.all(requests);
    for (const res of responses) expect(res.statusCode, res.body).toBe(201);

    const expected =
      parseCredits("100") + 50n * parseCredits("1.000000000001") - 50n * parseCredits("1");
    const balance = await getBalance(ctx.db, orgId);
    expect(formatCredits(balance.balance)).toBe("100.00000000005");
    expect(balance.balance).toBe(expected);
    expect(balance.last_sequence).toBe(101n);
    expect(await sequences(orgId)).toEqual(oneTo(101));

    // Each response's balance_after is the running balance at its own sequence.
    const bySequence = new Map<number, { amount: string; balance_after: string }>(
      responses.map((r) => [r.json().sequence, r.json()]),
    );
    expect(bySequence.size).toBe(100);
    let running = parseCredits("100");
    for (let s = 2; s <= 101; s++) {
      const entry = bySequence.get(s)!;
      running += parseCredits(entry.amount);
      expect(entry.balance_after).toBe(formatCredits(running));
    }
    expect(await verifyLedger(ctx.db, orgId)).toMatchObject({
      ok: true,
      entries: 101,
      first_bad_sequence: null,
    });
  });

  it("concurrent debits never take more than is held", async () => {
    const orgId = await app.createOrg();
    expect((await adjust(orgId, "+10")).statusCode).toBe(201);
    const responses = await Promise.all(Array.from({ length: 30 }, () => adjust(orgId, "-1")));
    const statuses = responses.map((r) => r.statusCode).sort();
    expect(statuses.filter((s) => s === 201)).toHaveLength(10);
    expect(statuses.filter((s) => s === 402)).toHaveLength(20);
    const balance = await getBalance(ctx.db, orgId);
    expect(balance.balance).toBe(0n);
    expect(balance.last_sequence).toBe(11n);
    expect(await verifyLedger(ctx.db, orgId)).toMatchObject({ ok: true, entries: 11 });
  });

  it("40 concurrent usage debits beyond the balance become debt, repaid by the next credit", async () => {
    const orgId = await app.createOrg();
    expect((await adjust(orgId, "+10")).statusCode).toBe(201);
    const usage = parseCredits("0.5");

    const results = await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        ctx.db.transaction().execute((tx) =>
          postEntries(tx, ctx, orgId, [
            {
              kind: "debit",
              type: "usage",
              amount: usage,
              allowDebt: true,
              actor: SYSTEM,
              reference: { type: "usage_event", id: `evt-${i}` },
            },
          ]),
        ),
      ),
    );
    for (const r of results) expect(r.ok).toBe(true);

    const balance = await getBalance(ctx.db, orgId);
    expect(formatCredits(balance.balance)).toBe("-10");
    expect(formatCredits(balance.debt)).toBe("10");
    expect(balance.last_sequence).toBe(41n);
    expect(await sequences(orgId)).toEqual(oneTo(41));
    const debtIncurred = await sql<{ total: string }>`
      select sum(debt_change) as total from ledger_entries where org_id = ${orgId}`.execute(ctx.db);
    expect(formatCredits(parseCredits(debtIncurred.rows[0]!.total))).toBe("10");
    // Invariant 1: balance = Σ remaining of active blocks − debt.
    expect(await verifyLedger(ctx.db, orgId)).toMatchObject({ ok: true, entries: 41 });

    // The next credit repays the debt first, visibly.
    const credit = await adjust(orgId, "+15");
    expect(credit.statusCode, credit.body).toBe(201);
    expect(credit.json()).toMatchObject({ amount: "15", balance_after: "5", debt_change: "-10" });
    const after = await getBalance(ctx.db, orgId);
    expect(formatCredits(after.debt)).toBe("0");
    expect(formatCredits(after.balance)).toBe("5");
    expect(await verifyLedger(ctx.db, orgId)).toMatchObject({ ok: true, entries: 42 });
  });

  it("two organisations locked in opposite orders never deadlock", async () => {
    // Fresh organisations without balance rows: the first openLedgers calls also create them.
    const a = await app.createOrg();
    const b = await app.createOrg();
    const rounds = 30;
    const results = await Promise.allSettled(
      Array.from({ length: rounds }, (_, i) =>
        ctx.db.transaction().execute(async (tx) => {
          const order = i % 2 === 0 ? [a, b] : [b, a];
          const ledgers = await openLedgers(tx, ctx, order, { blocks: true });
          // Hold both locks a moment so that the transactions really overlap.
          await sql`select pg_sleep(0.005)`.execute(tx);
          for (const orgId of order) {
            const outcome = ledgers.get(orgId)!.apply({
              kind: "credit",
              type: "bonus",
              amount: parseCredits("1"),
              block: { source: "bonus" },
              actor: SYSTEM,
            });
            expect(outcome.ok).toBe(true);
          }
          await saveLedgers(tx, ledgers.values());
        }),
      ),
    );
    const failures = results.filter((r) => r.status === "rejected");
    expect(failures.map((f) => String((f as PromiseRejectedResult).reason))).toEqual([]);
    for (const orgId of [a, b]) {
      const balance = await getBalance(ctx.db, orgId);
      expect(balance.balance).toBe(BigInt(rounds) * parseCredits("1"));
      expect(balance.last_sequence).toBe(BigInt(rounds));
      expect(await sequences(orgId)).toEqual(oneTo(rounds));
      expect(await verifyLedger(ctx.db, orgId)).toMatchObject({ ok: true, entries: rounds });
    }
  });

  it("a ledger opened while another transaction held the lock sees that transaction's blocks", async () => {
    // openLedgers reads the blocks in the statement that takes the lock; a transaction that
    // changed them while we waited must make it read them again (the row-version check).
    const orgId = await app.createOrg();
    expect((await adjust(orgId, "+10")).statusCode).toBe(201);
    let release = () => {};
    const gate = new Promise<void>((r) => {
      release = r;
    });
    let locked = () => {};
    const holding = new Promise<void>((r) => {
      locked = r;
    });
    const first = ctx.db.transaction().execute(async (tx) => {
      const ledger = (await openLedgers(tx, ctx, [orgId], { blocks: true })).get(orgId)!;
      ledger.apply({
        kind: "credit",
        type: "adjustment",
        amount: parseCredits("5"),
        block: { source: "adjustment" },
        actor: SYSTEM,
        reason: "granted while another waits",
      });
      await saveLedgers(tx, [ledger]);
      locked();
      await gate;
    });
    await holding;
    const second = ctx.db.transaction().execute(async (tx) => {
      const ledger = (await openLedgers(tx, ctx, [orgId], { blocks: true })).get(orgId)!;
      return ledger.activeBlocks().map((b) => formatCredits(b.remaining));
    });
    // Only let the first commit once the second is really waiting for the balance row.
    for (;;) {
      const waiting = await sql<{ n: number }>`
        select count(*)::int as n from pg_stat_activity
         where datname = current_database() and wait_event_type = 'Lock'`.execute(ctx.db);
      if (waiting.rows[0]!.n > 0) break;
      await new Promise((r) => setTimeout(r, 10));
    }
    release();
    await first;
    expect((await second).sort()).toEqual(["10", "5"]);
  });
});
