import type { AppContext } from "../../app/context.js";
import { fail, ok, type Result } from "../../app/errors.js";
import { execute, q, type Sql } from "../../db/bulk.js";
import { type Db, inSnapshot } from "../../db/index.js";
import type { Actor } from "../orgs/auth.js";
import { type Credits, creditsFromDb, formatCredits } from "./credits.js";
import { entryHash, GENESIS_HASH } from "./hash.js";
import * as repo from "./ledger.repo.js";
import type { EntryType } from "./ledger.tables.js";
import {
  type LedgerEntry,
  openLedgers,
  type Posting,
  postEntries,
  saveLedgers,
} from "./posting.js";

export type { LedgerEntry, Posting };
export { openLedgers, postEntries, saveLedgers };

export interface BalanceView {
  org_id: string;
  balance: Credits;
  reserved: Credits;
  available: Credits;
  debt: Credits;
  last_sequence: bigint;
  head_hash: string;
  updated_at: Date | null;
}

export async function getBalance(db: Db, orgId: string): Promise<BalanceView> {
  return balanceView(orgId, await repo.findBalance(db, orgId));
}

/** What a balance view is made of: an `org_balances` row, numbers as text. */
export interface BalanceRow {
  balance: string;
  reserved: string;
  debt: string;
  last_sequence: string;
  head_hash: string;
  updated_at: Date | null;
}

/** The view of an `org_balances` row, or of none: nothing ever moved. */
export function balanceView(orgId: string, row: BalanceRow | undefined): BalanceView {
  if (!row) {
    return {
      org_id: orgId,
      balance: 0n,
      reserved: 0n,
      available: 0n,
      debt: 0n,
      last_sequence: 0n,
      head_hash: GENESIS_HASH,
      updated_at: null,
    };
  }
  const balance = creditsFromDb(row.balance);
  const reserved = creditsFromDb(row.reserved);
  return {
    org_id: orgId,
    balance,
    reserved,
    available: balance - reserved,
    debt: creditsFromDb(row.debt),
    last_sequence: BigInt(row.last_sequence),
    head_hash: row.head_hash,
    updated_at: row.updated_at,
  };
}

/**
 * The `low_balance` and `auto_topup` fields, and holds past their expiry, from the modules that
 * own them (alerts, auto-topup, usage): SQL expressions read in the balance's own statement, so
 * reading a balance is one query — one pool connection and one answer to wait for, under load too.
 */
export interface BalanceFlags {
  /** Boolean: one of the organisation's alert thresholds is crossed (else: low at ≤ 0). */
  inAlert(orgId: string): Sql;
  /** Text: `off`, `idle`, `in_flight` or `disabled`. */
  autoTopup(orgId: string): Sql;
  /** Numeric: credits still counted as reserved by holds past their expiry at `now`. */
  overdueHolds(orgId: string, now: Date): Sql;
}

export const defaultBalanceFlags: BalanceFlags = {
  inAlert: () => q`false`,
  autoTopup: () => q`'off'`,
  overdueHolds: () => q`0`,
};

export type AutoTopupState = "off" | "idle" | "in_flight" | "disabled";

/**
 * The balance as `GET …/balance` and the CLI show it: a hold past its expiry no longer counts in
 * `reserved`, though the sweeper may not have marked it yet; credits past their expiry are
 * expired first (their `expiry` entries written now, not when the expiry worker comes by), so
 * the balance shown is always the ledger's.
 */
export async function readBalance(
  ctx: AppContext,
  orgId: string,
  flags: BalanceFlags,
  now: Date,
): Promise<{ view: BalanceView; inAlert: boolean; autoTopup: AutoTopupState }> {
  // Always one row; the balance columns are null when the organisation has none yet.
  const read = () =>
    execute<
      { [K in keyof BalanceRow]: BalanceRow[K] | null } & {
        in_alert: boolean;
        auto_topup: AutoTopupState;
        expiry_due: boolean;
      }
    >(
      ctx.db,
      q`select b.balance, b.debt, b.last_sequence, b.head_hash, b.updated_at,
          b.reserved - ${flags.overdueHolds(orgId, now)} as reserved,
          ${flags.inAlert(orgId)} as in_alert, ${flags.autoTopup(orgId)} as auto_topup,
          exists (select 1 from credit_blocks as k where k.org_id = ${orgId}
            and k.status = 'active' and k.expires_at <= ${now.toISOString()}::timestamptz)
            as expiry_due
        from (select 1) as one left join org_balances as b on b.org_id = ${orgId}`,
    );
  let rows = await read();
  if (rows[0]!.expiry_due) {
    await expireOrg(ctx, orgId, now);
    rows = await read();
  }
  const { in_alert, auto_topup, expiry_due: _, ...found } = rows[0]!;
  return {
    view: balanceView(orgId, found.balance === null ? undefined : (found as BalanceRow)),
    inAlert: in_alert,
    autoTopup: auto_topup,
  };
}

/** SQLSTATE numeric_value_out_of_range (PostgreSQL and PGlite). */
const NUMERIC_OUT_OF_RANGE = "22003";

export interface AdjustInput {
  orgId: string;
  amount: Credits;
  reason: string;
  category: "promotional" | "correction";
  expiresAt: Date | null;
  priority: number | null;
  actor: Actor;
  userId: string | null;
}

/**
 * A manual correction: positive → a new block (promotional or adjustment, free credits);
 * negative → drawn from blocks in burn order, never into debt nor into credits that open
 * reservations hold.
 */
export async function adjustCredits(
  ctx: AppContext,
  input: AdjustInput,
): Promise<Result<LedgerEntry, "insufficient_credits" | "invalid_request">> {
  if (input.amount === 0n) return fail("invalid_request", "amount must not be zero");
  const meta = { actor: input.actor, userId: input.userId, reason: input.reason };
  const posting: Posting =
    input.amount > 0n
      ? {
          kind: "credit",
          type: "adjustment",
          amount: input.amount,
          block: {
            source: input.category === "promotional" ? "promotional" : "adjustment",
            expiresAt: input.expiresAt,
            priority: input.priority ?? 0,
          },
          ...meta,
        }
      : { kind: "debit", type: "adjustment", amount: -input.amount, allowDebt: false, ...meta };
  let result: Awaited<ReturnType<typeof postEntries>>;
  try {
    result = await ctx.db
      .transaction()
      .execute((tx) => postEntries(tx, ctx, input.orgId, [posting]));
  } catch (error) {
    // The new balance does not fit NUMERIC(38,12): bad input (rolled back), not a fault.
    if ((error as { code?: unknown }).code === NUMERIC_OUT_OF_RANGE) {
      const message = "The balance would exceed the largest amount Tally can hold.";
      return fail("invalid_request", message, [{ field: "/amount", message }]);
    }
    throw error;
  }
  if (!result.ok) {
    return result.code === "insufficient_credits"
      ? fail(
          "insufficient_credits",
          "The organisation does not hold enough credits to remove (credits held by open reservations cannot be removed).",
        )
      : fail("invalid_request", "Nothing to adjust.");
  }
  return ok(result.entries[0]!);
}

/** Writes `expiry` entries for blocks past their expiry, one transaction per organisation. */
export async function expireDueBlocks(ctx: AppContext, batch = 100): Promise<number> {
  let expired = 0;
  // An organisation whose expiry fails is logged and left for the next run, not retried round
  // after round, and never holds up the others.
  const failed = new Set<string>();
  // Bounded: each round expires every due block of the organisations it picks.
  for (let round = 0; round < 1000; round++) {
    // The ledgers expire as of the instant the blocks were found due (a clock stepping back
    // must not leave them due yet unexpired, picked round after round).
    const now = ctx.clock.now();
    const orgIds = await repo.orgsWithExpiredBlocks(ctx.db, now, batch, [...failed]);
    if (orgIds.length === 0) break;
    for (const orgId of orgIds) {
      try {
        expired += await expireOrg(ctx, orgId, now);
      } catch (err) {
        ctx.logger.error({ err, org_id: orgId }, "could not expire an organisation's credits");
        failed.add(orgId);
      }
    }
  }
  return expired;
}

/** Writes the `expiry` entries of one organisation's blocks due at `now`; how many. */
function expireOrg(ctx: AppContext, orgId: string, now: Date): Promise<number> {
  return ctx.db.transaction().execute(async (tx) => {
    const ledgers = await openLedgers(tx, ctx, [orgId], { blocks: true, now });
    await saveLedgers(tx, ledgers.values());
    return ledgers.get(orgId)!.entries.length;
  });
}

export function entryFromRow(r: repo.EntryRow): LedgerEntry {
  const allocations = typeof r.allocations === "string" ? JSON.parse(r.allocations) : r.allocations;
  return {
    org_id: r.org_id,
    sequence: BigInt(r.sequence),
    id: r.id,
    type: r.type,
    amount: creditsFromDb(r.amount),
    balance_after: creditsFromDb(r.balance_after),
    debt_change: creditsFromDb(r.debt_change),
    allocations: (allocations as { block_id: string; amount: string }[]).map((a) => ({
      block_id: a.block_id,
      amount: creditsFromDb(a.amount),
    })),
    actor_type: r.actor_type,
    actor_id: r.actor_id,
    user_id: r.user_id,
    reason: r.reason,
    description: r.description,
    reference_type: r.reference_type,
    reference_id: r.reference_id,
    created_at: r.created_at,
    prev_hash: r.prev_hash,
    hash: r.hash,
  };
}

export interface VerifyReport {
  ok: boolean;
  entries: number;
  head_hash: string;
  first_bad_sequence: number | null;
  problems: string[];
}

/**
 * Recomputes the chain from the first entry: gapless sequences, prev_hash links, hashes,
 * running balance; then checks the balance row against the chain and the blocks:
 * balance = Σ amounts = Σ remaining of active blocks − debt, and debt = Σ debt changes.
 *
 * The balance row and the blocks are read first, from one snapshot, and the chain is checked up
 * to that row's last sequence: entries never change, so writes committing while it runs (later
 * sequences) cannot look like a fault.
 */
export async function verifyLedger(db: Db, orgId: string): Promise<VerifyReport> {
  const { balance, blocks, lastEntry } = await inSnapshot(db, async (trx) => ({
    balance: await getBalance(trx, orgId),
    blocks: creditsFromDb(await repo.sumActiveBlocks(trx, orgId)),
    lastEntry: BigInt(await repo.lastSequence(trx, orgId)),
  }));
  const upTo = balance.last_sequence.toString();
  const problems: string[] = [];
  let firstBad: bigint | null = null;
  const bad = (sequence: bigint, problem: string) => {
    firstBad ??= sequence;
    problems.push(`sequence ${sequence}: ${problem}`);
  };
  let prevHash = GENESIS_HASH;
  let expected = 1n;
  let running = 0n;
  let debt = 0n;
  let count = 0;
  let after = "0";
  for (;;) {
    const rows = await repo.entriesAfter(db, orgId, after, 1000, upTo);
    if (rows.length === 0) break;
    for (const row of rows) {
      const e = entryFromRow(row);
      count++;
      if (firstBad === null) {
        // Sequences only grow (primary key, ascending read): a mismatch is a gap, and the
        // first bad sequence is the missing one.
        if (e.sequence !== expected) bad(expected, `missing (the next entry is ${e.sequence})`);
        else if (e.prev_hash !== prevHash)
          bad(e.sequence, "prev_hash does not link to the previous entry");
        else if (entryHash(e.prev_hash, e) !== e.hash)
          bad(e.sequence, "hash does not match the entry");
        else if (running + e.amount !== e.balance_after)
          bad(e.sequence, "balance_after ≠ previous + amount");
        else if (
          e.type !== "purchase" &&
          e.type !== "bonus" &&
          e.type !== "adjustment" &&
          e.amount > 0n
        ) {
          bad(e.sequence, `a ${e.type} entry cannot add credits`);
        } else {
          const allocated = e.allocations.reduce((s, a) => s + a.amount, 0n);
          if (allocated - e.debt_change !== e.amount) {
            bad(e.sequence, "allocations minus debt change ≠ amount");
          }
        }
      }
      prevHash = e.hash;
      running = e.balance_after;
      debt += e.debt_change;
      expected = e.sequence + 1n;
      after = row.sequence;
    }
  }

  if (lastEntry > balance.last_sequence) {
    problems.push(
      `balance row: last_sequence ${balance.last_sequence} is behind the last entry, ${lastEntry}`,
    );
  }
  if (firstBad === null) {
    if (balance.last_sequence > BigInt(count)) {
      bad(
        BigInt(count) + 1n,
        `missing (the balance row's last sequence is ${balance.last_sequence})`,
      );
    }
    if (balance.head_hash !== prevHash) problems.push("balance row: head_hash ≠ chain head");
    if (balance.balance !== running) problems.push("balance row: balance ≠ Σ entry amounts");
    if (balance.debt !== debt) problems.push("balance row: debt ≠ Σ entry debt changes");
    if (blocks - balance.debt !== balance.balance) {
      problems.push(
        `balance ${formatCredits(balance.balance)} ≠ Σ active blocks ${formatCredits(blocks)} − debt ${formatCredits(balance.debt)}`,
      );
    }
  }
  return {
    ok: problems.length === 0,
    entries: count,
    head_hash: prevHash,
    first_bad_sequence: firstBad === null ? null : Number(firstBad),
    problems,
  };
}

export type { EntryType };
