import { type RawBuilder, sql } from "kysely";
import { beforeEach, describe, expect, it } from "vitest";
import { createTestApp } from "../../../test/support/app.js";
import { onPostgres } from "../../../test/support/db.js";
import { entryHash } from "./hash.js";
import { entryFromRow } from "./ledger.service.js";

/**
 * Invariant 3: ledger entries cannot be changed or removed — the database refuses it, whoever
 * asks. And if someone with the power to disable the triggers does it anyway, verification finds
 * the first entry that no longer fits the hash chain.
 */
describe(`ledger immutability (${onPostgres ? "PostgreSQL" : "PGlite"})`, async () => {
  const app = await createTestApp();
  const ctx = app.runtime.ctx;
  let orgId: string;

  const base = () => `/v1/organizations/${orgId}`;
  const verify = async () => {
    const res = await app.call("GET", `${base()}/ledger/verify`);
    expect(res.statusCode, res.body).toBe(200);
    return res.json() as {
      ok: boolean;
      entries: number;
      head_hash: string;
      first_bad_sequence: number | null;
      problems: string[];
    };
  };
  const adjust = async (amount: string) => {
    const res = await app.call("POST", `${base()}/adjustments`, {
      body: { amount, reason: `adjust ${amount}` },
    });
    expect(res.statusCode, res.body).toBe(201);
    return res.json();
  };
  const count = async () => {
    const row = await sql<{ n: string }>`
      select count(*) as n from ledger_entries where org_id = ${orgId}`.execute(ctx.db);
    return Number(row.rows[0]!.n);
  };

  /** Runs `statements` in one session (one transaction) with the row trigger switched off. */
  async function tamper(...statements: RawBuilder<unknown>[]) {
    await ctx.db.transaction().execute(async (tx) => {
      await sql`alter table ledger_entries disable trigger ledger_entries_immutable`.execute(tx);
      for (const statement of statements) await statement.execute(tx);
      await sql`alter table ledger_entries enable trigger ledger_entries_immutable`.execute(tx);
    });
  }

  beforeEach(async () => {
    orgId = await app.createOrg();
    await adjust("+100");
    await adjust("-30");
    await adjust("+5.5");
    await adjust("-0.000000000001");
    expect(await verify()).toMatchObject({ ok: true, entries: 4, first_bad_sequence: null });
  });

  describe("the database refuses", () => {
    it.each([
      ["UPDATE", () => sql`update ledger_entries set amount = 0 where org_id = ${orgId}`],
      ["UPDATE of every row", () => sql`update ledger_entries set reason = 'rewritten'`],
      ["DELETE", () => sql`delete from ledger_entries where org_id = ${orgId}`],
      ["DELETE of every row", () => sql`delete from ledger_entries`],
      ["TRUNCATE", () => sql`truncate ledger_entries`],
      ["TRUNCATE by cascade", () => sql`truncate organizations cascade`],
    ])("%s on ledger_entries", async (_name, statement) => {
      const before = await verify();
      await expect(statement().execute(ctx.db)).rejects.toThrow(/immutable/);
      expect(await count()).toBe(4);
      expect(await verify()).toEqual(before);
    });

    it("also inside a transaction, which then rolls back", async () => {
      await expect(
        ctx.db.transaction().execute(async (tx) => {
          await sql`insert into ledger_entries
            select org_id, sequence + 100, id || 'x', type, amount, balance_after, debt_change,
                   allocations, actor_type, actor_id, user_id, reason, description,
                   reference_type, reference_id, created_at, prev_hash, hash
              from ledger_entries where org_id = ${orgId}`.execute(tx);
          await sql`delete from ledger_entries where org_id = ${orgId} and sequence > 100`.execute(
            tx,
          );
        }),
      ).rejects.toThrow(/immutable/);
      expect(await count()).toBe(4);
    });

    it.runIf(!onPostgres)("through the embedded PGlite connection too", async () => {
      const pglite = app.runtime.database.pglite!;
      await expect(pglite.query("update ledger_entries set amount = 0")).rejects.toThrow(
        /immutable/,
      );
      await expect(pglite.query("delete from ledger_entries")).rejects.toThrow(/immutable/);
      await expect(pglite.query("truncate ledger_entries")).rejects.toThrow(/immutable/);
      expect(await count()).toBe(4);
    });
  });

  describe("verification finds tampering", () => {
    it("a changed amount: the first bad sequence is that entry", async () => {
      await tamper(
        sql`update ledger_entries set amount = -3 where org_id = ${orgId} and sequence = 2`,
      );
      // The trigger is back on for everyone else.
      await expect(
        sql`update ledger_entries set amount = 0 where org_id = ${orgId}`.execute(ctx.db),
      ).rejects.toThrow(/immutable/);
      const report = await verify();
      expect(report).toMatchObject({ ok: false, entries: 4, first_bad_sequence: 2 });
      expect(report.problems[0]).toMatch(/^sequence 2: hash/);
    });

    it("a rewritten entry with a recomputed hash breaks the link from the next entry", async () => {
      const row = await ctx.db
        .selectFrom("ledger_entries")
        .selectAll()
        .where("org_id", "=", orgId)
        .where("sequence", "=", "2")
        .executeTakeFirstOrThrow();
      const forged = { ...entryFromRow(row), reason: "innocent" };
      const hash = entryHash(forged.prev_hash, forged);
      await tamper(
        sql`update ledger_entries set reason = 'innocent', hash = ${hash}
             where org_id = ${orgId} and sequence = 2`,
      );
      const report = await verify();
      expect(report).toMatchObject({ ok: false, first_bad_sequence: 3 });
      expect(report.problems[0]).toMatch(/^sequence 3: prev_hash/);
    });

    it("a changed balance_after", async () => {
      await tamper(
        sql`update ledger_entries set balance_after = balance_after + 1
             where org_id = ${orgId} and sequence = 3`,
      );
      expect(await verify()).toMatchObject({ ok: false, first_bad_sequence: 3 });
    });

    it("a changed allocation", async () => {
      await tamper(
        sql`update ledger_entries set allocations = '[]'::jsonb
             where org_id = ${orgId} and sequence = 2`,
      );
      expect(await verify()).toMatchObject({ ok: false, first_bad_sequence: 2 });
    });

    it("a deleted middle entry: the gap is the first bad sequence", async () => {
      await tamper(sql`delete from ledger_entries where org_id = ${orgId} and sequence = 2`);
      const report = await verify();
      expect(report).toMatchObject({ ok: false, entries: 3, first_bad_sequence: 2 });
      expect(report.problems[0]).toMatch(/^sequence 2: missing/);
    });

    it("a deleted first entry", async () => {
      await tamper(sql`delete from ledger_entries where org_id = ${orgId} and sequence = 1`);
      expect(await verify()).toMatchObject({ ok: false, entries: 3, first_bad_sequence: 1 });
    });

    it("a deleted newest entry: the balance row still names it", async () => {
      await tamper(sql`delete from ledger_entries where org_id = ${orgId} and sequence = 4`);
      const report = await verify();
      expect(report).toMatchObject({ ok: false, entries: 3, first_bad_sequence: 4 });
    });

    it("a block's remaining changed directly: balance ≠ Σ blocks − debt", async () => {
      await sql`update credit_blocks set remaining = remaining - 1
                 where org_id = ${orgId} and status = 'active' and remaining >= 1`.execute(ctx.db);
      const report = await verify();
      expect(report.ok).toBe(false);
      // The chain itself is intact; the mismatch is between the balance and the blocks.
      expect(report.first_bad_sequence).toBeNull();
      expect(report.problems.join("\n")).toMatch(/Σ active blocks/);
    });

    it("a balance row changed directly", async () => {
      await sql`update org_balances set balance = balance + 1 where org_id = ${orgId}`.execute(
        ctx.db,
      );
      const report = await verify();
      expect(report.ok).toBe(false);
      expect(report.problems.join("\n")).toMatch(/balance ≠ Σ entry amounts/);
    });

    it("an untouched organisation next to a tampered one still verifies", async () => {
      const tampered = orgId;
      await tamper(sql`delete from ledger_entries where org_id = ${tampered} and sequence = 3`);
      orgId = await app.createOrg();
      await adjust("+1");
      expect(await verify()).toMatchObject({ ok: true, entries: 1 });
      orgId = tampered;
      expect((await verify()).first_bad_sequence).toBe(3);
    });
  });
});
