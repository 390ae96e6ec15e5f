import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { createTestApp } from "../../../test/support/app.js";
import { creditsFromDb, parseCredits } from "./credits.js";
import { expireDueBlocks, getBalance, verifyLedger } from "./ledger.service.js";
import { type Posting, postEntries } from "./posting.js";

/**
 * Random sequences of grants (priorities, expiries, unit costs), usage debits (may create debt),
 * negative adjustments (refused when short), refunds of a block, clock moves and expiry runs,
 * applied to the real ledger and to a deliberately naive reference model. After every step the
 * balances agree and every invariant of DESIGN.md holds (verifyLedger checks the chain, gapless
 * sequences, balance_after, Σ allocations − debt, balance = Σ entries = Σ blocks − debt).
 */

interface ModelBlock {
  id: string;
  remaining: bigint;
  original: bigint;
  priority: number;
  expiresAt: number | null;
  unitCost: bigint;
  seq: number;
  status: "active" | "depleted" | "expired" | "voided";
}

class Model {
  blocks: ModelBlock[] = [];
  balance = 0n;
  debt = 0n;
  private seq = 0;

  private drawable(now: number) {
    return this.blocks
      .filter((b) => b.status === "active" && (b.expiresAt === null || b.expiresAt > now))
      .sort(
        (a, b) =>
          a.priority - b.priority ||
          (a.expiresAt ?? Number.POSITIVE_INFINITY) - (b.expiresAt ?? Number.POSITIVE_INFINITY) ||
          (a.unitCost < b.unitCost ? -1 : a.unitCost > b.unitCost ? 1 : 0) ||
          a.seq - b.seq,
      );
  }

  expire(now: number) {
    for (const b of this.blocks) {
      if (b.status === "active" && b.expiresAt !== null && b.expiresAt <= now) {
        this.balance -= b.remaining;
        b.remaining = 0n;
        b.status = "expired";
      }
    }
  }

  grant(id: string, amount: bigint, priority: number, expiresAt: number | null, unitCost: bigint) {
    const repay = amount < this.debt ? amount : this.debt;
    this.debt -= repay;
    this.balance += amount;
    this.blocks.push({
      id,
      remaining: amount - repay,
      original: amount,
      priority,
      expiresAt,
      unitCost,
      seq: this.seq++,
      status: amount - repay > 0n ? "active" : "depleted",
    });
  }

  /** Returns false when refused: nothing changes but the expiry of due blocks. */
  debit(amount: bigint, allowDebt: boolean, now: number): boolean {
    const blocks = this.drawable(now);
    const held = blocks.reduce((s, b) => s + b.remaining, 0n);
    this.expire(now);
    if (!allowDebt && held < amount) return false;
    let left = amount;
    for (const b of blocks) {
      const take = b.remaining < left ? b.remaining : left;
      b.remaining -= take;
      if (b.remaining === 0n) b.status = "depleted";
      left -= take;
    }
    this.debt += left;
    this.balance -= amount;
    return true;
  }

  void(id: string, now: number) {
    this.expire(now);
    const b = this.blocks.find((x) => x.id === id)!;
    if (b.status !== "active") return;
    this.balance -= b.remaining;
    b.remaining = 0n;
    b.status = "voided";
  }
}

const amount = fc.oneof(
  fc.bigInt({ min: 1n, max: 1000n * 10n ** 12n }),
  fc.bigInt({ min: 1n, max: 1000n }),
);

const op = fc.oneof(
  {
    weight: 3,
    arbitrary: fc.record({
      kind: fc.constant("grant" as const),
      amount,
      // Few distinct priorities and expiries, so that ties reach the later burn-order keys.
      priority: fc.integer({ min: 0, max: 1 }),
      expiresInMin: fc.option(fc.constantFrom(30, 60, 120), { nil: null, freq: 2 }),
      unitCost: fc.constantFrom("0", "0.001", "0.01"),
    }),
  },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant("usage" as const), amount }) },
  fc.record({ kind: fc.constant("withdraw" as const), amount }),
  fc.record({ kind: fc.constant("refund" as const), pick: fc.nat() }),
  fc.record({ kind: fc.constant("advance" as const), minutes: fc.integer({ min: 1, max: 90 }) }),
  fc.record({ kind: fc.constant("expireWorker" as const) }),
);

describe("ledger posting against a reference model", async () => {
  const app = await createTestApp();
  const ctx = app.runtime.ctx;
  const actor = { type: "system" as const, id: "property-test" };

  it("keeps every invariant through random operation sequences", async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 18 }), async (ops) => {
        const orgId = await app.createOrg();
        const model = new Model();
        const post = (postings: Posting[]) =>
          ctx.db.transaction().execute((tx) => postEntries(tx, ctx, orgId, postings));

        for (const o of ops) {
          const now = app.clock.now().getTime();
          switch (o.kind) {
            case "grant": {
              const expiresAt = o.expiresInMin === null ? null : now + o.expiresInMin * 60_000;
              const r = await post([
                {
                  kind: "credit",
                  type: "adjustment",
                  amount: o.amount,
                  block: {
                    source: "adjustment",
                    priority: o.priority,
                    expiresAt: expiresAt === null ? null : new Date(expiresAt),
                    unitCost: o.unitCost,
                  },
                  actor,
                },
              ]);
              if (!r.ok) throw new Error("grant refused");
              const blockId = r.entries[0]!.allocations[0]!.block_id;
              model.grant(blockId, o.amount, o.priority, expiresAt, parseCredits(o.unitCost));
              break;
            }
            case "usage":
            case "withdraw": {
              const allowDebt = o.kind === "usage";
              const r = await post([
                {
                  kind: "debit",
                  type: o.kind === "usage" ? "usage" : "adjustment",
                  amount: o.amount,
                  allowDebt,
                  actor,
                },
              ]);
              const accepted = model.debit(o.amount, allowDebt, now);
              expect(r.ok).toBe(accepted);
              break;
            }
            case "refund": {
              const candidates = model.blocks;
              if (candidates.length === 0) break;
              const target = candidates[o.pick % candidates.length]!;
              if (target.status !== "active") break;
              const r = await post([{ kind: "void", type: "refund", blockId: target.id, actor }]);
              // A block that expired in the meantime is gone from the active set.
              const expired = target.expiresAt !== null && target.expiresAt <= now;
              expect(r.ok).toBe(!expired);
              model.void(target.id, now);
              break;
            }
            case "advance":
              app.clock.advance(o.minutes * 60_000);
              break;
            case "expireWorker":
              await expireDueBlocks(ctx);
              model.expire(now);
              break;
          }

          const balance = await getBalance(ctx.db, orgId);
          expect(balance.balance).toBe(model.balance);
          expect(balance.debt).toBe(model.debt);
          const report = await verifyLedger(ctx.db, orgId);
          expect(report.problems).toEqual([]);
          expect(report.ok).toBe(true);

          const rows = await ctx.db
            .selectFrom("credit_blocks")
            .select(["id", "remaining", "original", "status"])
            .where("org_id", "=", orgId)
            .execute();
          for (const row of rows) {
            const m = model.blocks.find((b) => b.id === row.id)!;
            const remaining = creditsFromDb(row.remaining);
            expect(remaining).toBe(m.remaining);
            expect(row.status).toBe(m.status);
            expect(remaining >= 0n && remaining <= creditsFromDb(row.original)).toBe(true);
          }
        }
      }),
      { numRuns: 150 },
    );
    // 150 sequences take ~7 s alone; allow for a machine busy with other test files.
  }, 120_000);
});
