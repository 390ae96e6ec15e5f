import { type Selectable, sql } from "kysely";
import type { AppContext } from "../../app/context.js";
import {
  type Column,
  type Guard,
  ident,
  join,
  q,
  type ReadStep,
  type Sql,
  unnestRows,
  type WriteStep,
  writeTogether,
} from "../../db/bulk.js";
import type { Db } from "../../db/index.js";
import type { Actor } from "../orgs/auth.js";
import { type Credits, creditsFromDb, creditsToDb, minCredits, parseCredits } from "./credits.js";
import { entryHash, GENESIS_HASH, type HashedEntry } from "./hash.js";
import type {
  BlockSource,
  BlockStatus,
  CreditBlocksTable,
  EntryType,
  OrgBalancesTable,
} from "./ledger.tables.js";

/**
 * Posting: the one way credits move. Every module (usage, purchases, refunds, adjustments,
 * expiry) expresses its movements as postings and hands them to an `OrgLedger`, which holds the
 * organisation's balance row lock for the transaction, applies the postings in memory (burn order,
 * debt, hash chain) and then writes entries, blocks and the balance with a few set-based
 * statements. Many postings — a whole ingest flush — cost one lock and a handful of statements.
 */

export interface PostingMeta {
  actor: Actor;
  userId?: string | null;
  reason?: string | null;
  description?: string | null;
  reference?: { type: string; id: string } | null;
}

export interface NewBlock {
  source: BlockSource;
  /** Money paid per credit, decimal string (≤ 12 fractional digits); 0 for free credits. */
  unitCost?: string;
  priority?: number;
  expiresAt?: Date | null;
  purchaseId?: string | null;
}

export type Posting =
  | ({
      kind: "credit";
      type: "purchase" | "bonus" | "adjustment";
      amount: Credits;
      block: NewBlock;
    } & PostingMeta)
  | ({
      kind: "debit";
      type: "usage" | "adjustment";
      amount: Credits;
      /**
       * Usage is a fact: what blocks cannot cover becomes debt. Anything else is refused, and so
       * is taking credits that open reservations hold (beyond what is available).
       */
      allowDebt: boolean;
    } & PostingMeta)
  | ({ kind: "void"; type: "refund" | "expiry"; blockId: string } & PostingMeta);

export interface Allocation {
  block_id: string;
  amount: Credits;
}

export interface LedgerEntry extends HashedEntry {
  prev_hash: string;
  hash: string;
}

export interface Block {
  org_id: string;
  id: string;
  source: BlockSource;
  original: Credits;
  remaining: Credits;
  unit_cost: Credits;
  priority: number;
  effective_at: Date;
  expires_at: Date | null;
  status: BlockStatus;
  purchase_id: string | null;
  created_at: Date;
  updated_at: Date;
}

/** One organisation's balance moved (or its reservations changed) in a transaction. */
export interface BalanceChange {
  orgId: string;
  /** Balance before the postings this save wrote. */
  before: Credits;
  after: Credits;
  reserved: Credits;
  /** Types of the ledger entries this save wrote (empty for a reservation-only change). */
  entryTypes: EntryType[];
}

/**
 * Called inside the transaction that changed balances, after the ledger rows are written, so
 * that reactions (alert state, auto-topup attempts, outbox rows) commit or roll back with the
 * change itself. Registered on `AppContext.balanceObservers` by the composition root.
 */
export interface BalanceObserver {
  /**
   * Which of these organisations the observer has work for, read in the statement that writes
   * the ledgers (one round trip fewer per transaction): one row or more per such organisation,
   * each with its `org_id`. The rows are handed to `observe`.
   */
  prefetch?(orgIds: readonly string[]): Sql;
  /** `prefetched`: the rows of `prefetch` (none without one). */
  observe(tx: Db, ctx: AppContext, changes: BalanceChange[], prefetched: unknown[]): Promise<void>;
  /**
   * True when `observe` would do nothing for this change of an organisation that `prefetch`
   * returns no row for. An optimistic save runs no observer: it needs every change idle and
   * guards that the prefetch is empty. Without `idle`, no save is optimistic.
   */
  idle?(change: BalanceChange): boolean;
}

/** Why an optimistic save could not be written; the caller writes again under the locks. */
export class OptimisticMiss extends Error {
  constructor(readonly reason: string) {
    super(`optimistic ledger write refused: ${reason}`);
  }
}

/** The saved state of a ledger, as `org_balances` holds it. */
export interface LedgerState {
  balance: Credits;
  reserved: Credits;
  debt: Credits;
  lastSequence: bigint;
  headHash: string;
  version: bigint;
  /** `org_balances.updated_at`: the instant of the organisation's latest write. */
  updatedAt: Date;
}

/** The furthest a write adopts the organisation's latest write instant ahead of its own clock. */
const MAX_CLOCK_LAG_MS = 60_000;

/**
 * The instant a ledger writes at: the clock, but never before the organisation's latest write.
 * Entries then carry non-decreasing `created_at` along their sequence even when a writer read its
 * clock before waiting for the balance lock, or instances' clocks differ a little — so "entries
 * before a month" is the same set by time as by sequence. A clock more than a minute behind is a
 * misconfigured instance, not a race: it is logged and its own clock is used, so one instance
 * whose clock ran far ahead cannot pin every other one's time (blocks expiring early).
 */
function writeInstant(ctx: AppContext, orgId: string, clock: Date, state: LedgerState): Date {
  const lag = state.updatedAt.getTime() - clock.getTime();
  if (lag <= 0) return clock;
  if (lag <= MAX_CLOCK_LAG_MS) return new Date(state.updatedAt.getTime());
  ctx.logger.warn(
    { org_id: orgId, lag_ms: lag },
    "this instance's clock is behind the organisation's latest write by more than a minute; writing at its own time",
  );
  return clock;
}

export type ApplyOutcome =
  | { ok: true; entry: LedgerEntry | null }
  | { ok: false; code: "insufficient_credits" | "not_found" };

const SYSTEM: Actor = { type: "system", id: "tally" };

/** Burn order: priority → expiry (never-expiring last) → unit cost → creation → id. */
export function burnOrder(a: Block, b: Block): number {
  if (a.priority !== b.priority) return a.priority - b.priority;
  const ae = a.expires_at?.getTime() ?? Number.POSITIVE_INFINITY;
  const be = b.expires_at?.getTime() ?? Number.POSITIVE_INFINITY;
  if (ae !== be) return ae < be ? -1 : 1;
  if (a.unit_cost !== b.unit_cost) return a.unit_cost < b.unit_cost ? -1 : 1;
  const ac = a.created_at.getTime();
  const bc = b.created_at.getTime();
  if (ac !== bc) return ac - bc;
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}

export class OrgLedger {
  balance: Credits;
  reserved: Credits;
  debt: Credits;
  lastSequence: bigint;
  headHash: string;
  /** `org_balances.version` as of the last save (each save writes version + 1). */
  version: bigint;
  readonly entries: LedgerEntry[] = [];
  /** When this ledger's entries and changes are stamped (see `writeInstant`). */
  readonly now: Date;
  private initial: { balance: Credits; reserved: Credits; sequence: bigint };
  private savedEntries = 0;
  /** Active blocks in burn order; null until loaded. */
  private blocks: Block[] | null = null;
  private readonly newBlocks = new Set<Block>();
  private readonly changedBlocks = new Set<Block>();

  constructor(
    readonly ctx: AppContext,
    readonly orgId: string,
    state: LedgerState,
    clock: Date,
  ) {
    this.now = writeInstant(ctx, orgId, clock, state);
    this.balance = state.balance;
    this.reserved = state.reserved;
    this.debt = state.debt;
    this.lastSequence = state.lastSequence;
    this.headHash = state.headHash;
    this.version = state.version;
    this.initial = { balance: this.balance, reserved: this.reserved, sequence: this.lastSequence };
  }

  /** A ledger as `snapshot` saw it, its blocks copied (and expired as of `now`). */
  static restore(
    ctx: AppContext,
    orgId: string,
    saved: { state: LedgerState; blocks: readonly Block[] },
    now: Date,
  ): OrgLedger {
    const ledger = new OrgLedger(ctx, orgId, saved.state, now);
    ledger.setBlocks(saved.blocks.map((b) => ({ ...b })));
    return ledger;
  }

  /** The saved state and active blocks (copies); null before blocks are loaded or with unsaved changes. */
  snapshot(): { state: LedgerState; blocks: Block[] } | null {
    if (!this.blocks || this.changed) return null;
    return {
      state: {
        balance: this.balance,
        reserved: this.reserved,
        debt: this.debt,
        lastSequence: this.lastSequence,
        headHash: this.headHash,
        version: this.version,
        updatedAt: this.now,
      },
      blocks: this.blocks.filter((b) => b.status === "active").map((b) => ({ ...b })),
    };
  }

  get available(): Credits {
    return this.balance - this.reserved;
  }

  /** The balance when the ledger was opened or last saved. */
  get balanceAtLastSave(): Credits {
    return this.initial.balance;
  }

  get reservedAtLastSave(): Credits {
    return this.initial.reserved;
  }

  get changed(): boolean {
    return (
      this.entries.length > this.savedEntries ||
      this.reserved !== this.initial.reserved ||
      this.changedBlocks.size > 0 ||
      this.newBlocks.size > 0
    );
  }

  /** Credits that debits can draw now (active, unexpired blocks). */
  get drawable(): Credits {
    let total = 0n;
    for (const b of this.requireBlocks()) if (this.isDrawable(b)) total += b.remaining;
    return total;
  }

  activeBlocks(): readonly Block[] {
    return this.requireBlocks();
  }

  /** Called by `openLedgers`: loads active blocks and expires the ones past `expires_at`. */
  setBlocks(blocks: Block[]): void {
    this.blocks = blocks.sort(burnOrder);
    for (const block of [...this.blocks]) {
      if (block.expires_at && block.expires_at <= this.now) {
        this.voidBlock(block, "expired", {
          type: "expiry",
          actor: SYSTEM,
          description: `Credits expired at ${block.expires_at.toISOString()}`,
          reference: { type: "credit_block", id: block.id },
        });
      }
    }
  }

  apply(posting: Posting): ApplyOutcome {
    switch (posting.kind) {
      case "credit":
        return { ok: true, entry: this.credit(posting) };
      case "debit":
        return this.debit(posting);
      case "void": {
        const block = this.requireBlocks().find((b) => b.id === posting.blockId);
        if (!block) return { ok: false, code: "not_found" };
        return {
          ok: true,
          entry: this.voidBlock(block, posting.type === "expiry" ? "expired" : "voided", posting),
        };
      }
    }
  }

  reserve(amount: Credits): void {
    this.reserved += amount;
  }

  release(amount: Credits): void {
    this.reserved -= amount;
    if (this.reserved < 0n) throw new Error(`reserved would go negative for ${this.orgId}`);
  }

  private credit(p: Extract<Posting, { kind: "credit" }>): LedgerEntry {
    if (p.amount <= 0n) throw new RangeError("a credit must be positive");
    const repay = minCredits(p.amount, this.debt);
    const block: Block = {
      org_id: this.orgId,
      id: this.ctx.ids.newId("blk"),
      source: p.block.source,
      original: p.amount,
      remaining: p.amount - repay,
      unit_cost: p.block.unitCost ? parseCredits(p.block.unitCost) : 0n,
      priority: p.block.priority ?? 0,
      effective_at: this.now,
      expires_at: p.block.expiresAt ?? null,
      status: p.amount - repay > 0n ? "active" : "depleted",
      purchase_id: p.block.purchaseId ?? null,
      created_at: this.now,
      updated_at: this.now,
    };
    this.newBlocks.add(block);
    if (this.blocks && block.status === "active") {
      const at = this.blocks.findIndex((b) => burnOrder(block, b) < 0);
      this.blocks.splice(at < 0 ? this.blocks.length : at, 0, block);
    }
    this.debt -= repay;
    return this.append(p, p.type, p.amount, -repay, [
      { block_id: block.id, amount: block.remaining },
    ]);
  }

  private debit(p: Extract<Posting, { kind: "debit" }>): ApplyOutcome {
    if (p.amount < 0n) throw new RangeError("a debit amount must not be negative");
    const blocks = this.requireBlocks();
    if (!p.allowDebt && (this.drawable < p.amount || this.available < p.amount))
      return { ok: false, code: "insufficient_credits" };
    let left = p.amount;
    const allocations: Allocation[] = [];
    for (const block of blocks) {
      if (left === 0n) break;
      if (!this.isDrawable(block) || block.remaining === 0n) continue;
      const take = minCredits(left, block.remaining);
      block.remaining -= take;
      if (block.remaining === 0n) block.status = "depleted";
      this.touch(block);
      allocations.push({ block_id: block.id, amount: -take });
      left -= take;
    }
    this.debt += left;
    if (allocations.length > 0) this.compact();
    return { ok: true, entry: this.append(p, p.type, -p.amount, left, allocations) };
  }

  private voidBlock(
    block: Block,
    status: "expired" | "voided",
    meta: PostingMeta & { type: EntryType },
  ) {
    const amount = block.remaining;
    block.remaining = 0n;
    block.status = status;
    this.touch(block);
    this.blocks = this.requireBlocks().filter((b) => b !== block);
    if (amount === 0n) return null;
    return this.append(meta, meta.type, -amount, 0n, [{ block_id: block.id, amount: -amount }]);
  }

  /**
   * Active and unexpired. A block is drawable from its creation: its `effective_at` is the
   * creating transaction's clock, which another instance's (or a transaction that read its
   * clock before waiting for this lock) may see as a moment in the future.
   */
  private isDrawable(b: Block): boolean {
    return b.status === "active" && (b.expires_at === null || b.expires_at > this.now);
  }

  /** Drops depleted blocks from the front so hot debits stay O(1). */
  private compact(): void {
    const blocks = this.blocks!;
    let i = 0;
    while (i < blocks.length && blocks[i]!.status !== "active") i++;
    if (i > 0) blocks.splice(0, i);
  }

  private touch(block: Block): void {
    block.updated_at = this.now;
    if (!this.newBlocks.has(block)) this.changedBlocks.add(block);
  }

  private requireBlocks(): Block[] {
    if (!this.blocks) throw new Error("blocks not loaded: open the ledger with { blocks: true }");
    return this.blocks;
  }

  private append(
    meta: PostingMeta,
    type: EntryType,
    amount: Credits,
    debtChange: Credits,
    allocations: Allocation[],
  ): LedgerEntry {
    this.balance += amount;
    this.lastSequence += 1n;
    const entry: LedgerEntry = {
      org_id: this.orgId,
      sequence: this.lastSequence,
      id: this.ctx.ids.newId("txn"),
      type,
      amount,
      balance_after: this.balance,
      debt_change: debtChange,
      allocations,
      actor_type: meta.actor.type,
      actor_id: meta.actor.id,
      user_id: meta.userId ?? null,
      reason: storable(meta.reason),
      description: storable(meta.description),
      reference_type: meta.reference?.type ?? null,
      reference_id: meta.reference?.id ?? null,
      created_at: this.now,
      prev_hash: this.headHash,
      hash: "",
    };
    entry.hash = entryHash(this.headHash, entry); // the hash covers the HashedEntry fields only
    this.headHash = entry.hash;
    this.entries.push(entry);
    return entry;
  }

  /** Rows to write since the last save; used by `saveLedgers`. */
  writes() {
    return {
      newBlocks: [...this.newBlocks],
      changedBlocks: [...this.changedBlocks],
      entries: this.entries.slice(this.savedEntries),
    };
  }

  /** After `saveLedgers`: later saves in the same transaction write only what is new. */
  markSaved(): void {
    this.savedEntries = this.entries.length;
    this.newBlocks.clear();
    this.changedBlocks.clear();
    this.version += 1n;
    this.initial = { balance: this.balance, reserved: this.reserved, sequence: this.lastSequence };
  }
}

/**
 * Text as PostgreSQL stores it, so that the hash covers exactly what is stored: a text column
 * refuses NUL and keeps a lone surrogate as U+FFFD. Request bodies are checked for both at the
 * edge; this covers texts Tally composes itself (a processor's message cut at 500 characters can
 * split a surrogate pair).
 */
function storable(text: string | null | undefined): string | null {
  if (text === null || text === undefined) return null;
  if (text.isWellFormed() && !text.includes("\0")) return text;
  return text.replaceAll("\0", "").toWellFormed();
}

/**
 * Locks the balance rows of `orgIds` (creating missing ones) in `org_id` order — the same order
 * in every instance, so two transactions never deadlock — and returns one ledger per org.
 * Must run inside a transaction.
 */
export async function openLedgers(
  tx: Db,
  ctx: AppContext,
  orgIds: readonly string[],
  options: { blocks: boolean; now?: Date },
): Promise<Map<string, OrgLedger>> {
  const ids = [...new Set(orgIds)].sort();
  const now = options.now ?? ctx.clock.now();
  let locked = await lockBalances(tx, ids, options.blocks);
  if (locked.length < ids.length) {
    const have = new Set(locked.map((r) => r.org_id));
    await tx
      .insertInto("org_balances")
      .values(
        ids
          .filter((id) => !have.has(id))
          .map((org_id) => ({ org_id, head_hash: GENESIS_HASH, updated_at: now }) as never),
      )
      .onConflict((oc) => oc.column("org_id").doNothing())
      .execute();
    locked = await lockBalances(tx, ids, options.blocks);
  }
  const ledgers = new Map<string, OrgLedger>();
  for (const row of locked) {
    const state: LedgerState = {
      balance: creditsFromDb(row.balance),
      reserved: creditsFromDb(row.reserved),
      debt: creditsFromDb(row.debt),
      lastSequence: BigInt(row.last_sequence),
      headHash: row.head_hash,
      version: BigInt(row.version),
      updatedAt: row.updated_at,
    };
    ledgers.set(row.org_id, new OrgLedger(ctx, row.org_id, state, now));
  }
  if (ledgers.size !== ids.length) throw new Error("organisation without a balance row");
  if (!options.blocks) return ledgers;

  // The blocks came with the lock unless a balance row changed while we waited for it: the
  // statement read the blocks as of its start. Every change of blocks rewrites the balance row,
  // so an unchanged row version proves those blocks current; otherwise read them again.
  const stale = locked.filter((r) => r.locked_version !== r.seen_version).map((r) => r.org_id);
  const byOrg = new Map<string, Block[]>();
  for (const r of locked) {
    if (!stale.includes(r.org_id)) byOrg.set(r.org_id, (r.blocks ?? []).map(blockFromJson));
  }
  if (stale.length > 0) {
    const rows = await tx
      .selectFrom("credit_blocks")
      .selectAll()
      .where("org_id", "in", stale)
      .where("status", "=", "active")
      .execute();
    for (const id of stale) byOrg.set(id, []);
    for (const r of rows) byOrg.get(r.org_id)!.push(blockFromRow(r));
  }
  for (const [orgId, blocks] of byOrg) ledgers.get(orgId)!.setBlocks(blocks);
  return ledgers;
}

/**
 * `select … for update` of the balance rows, in `org_id` order; with `blocks`, each row also
 * carries its active blocks (as JSON, exact numbers as text) and the row version both as locked
 * and as the statement's snapshot saw it.
 */
async function lockBalances(
  tx: Db,
  ids: readonly string[],
  blocks: boolean,
): Promise<
  (Selectable<OrgBalancesTable> & {
    locked_version?: string;
    seen_version?: string;
    blocks?: BlockJson[] | null;
  })[]
> {
  const base = tx.selectFrom("org_balances as b").selectAll("b").where("b.org_id", "in", ids);
  if (!blocks) return base.orderBy("b.org_id").forUpdate().execute();
  return base
    .select([
      sql<string>`b.xmin::text`.as("locked_version"),
      sql<string>`(select o.xmin::text from org_balances o where o.org_id = b.org_id)`.as(
        "seen_version",
      ),
      sql<BlockJson[] | null>`(
        select json_agg(json_build_object(
          'org_id', c.org_id, 'id', c.id, 'source', c.source, 'original', c.original::text,
          'remaining', c.remaining::text, 'unit_cost', c.unit_cost::text, 'priority', c.priority,
          'effective_at', c.effective_at, 'expires_at', c.expires_at, 'status', c.status,
          'purchase_id', c.purchase_id, 'created_at', c.created_at, 'updated_at', c.updated_at))
        from credit_blocks c where c.org_id = b.org_id and c.status = 'active')`.as("blocks"),
    ])
    .orderBy("b.org_id")
    .forUpdate("b")
    .execute();
}

type BlockRow = Selectable<CreditBlocksTable>;
type Instant = "effective_at" | "expires_at" | "created_at" | "updated_at";

/** A block row as `json_build_object` sends it: instants as ISO text. */
type BlockJson = Omit<BlockRow, Instant> & {
  [K in Instant]: BlockRow[K] extends Date ? string : string | null;
};

function blockFromJson(j: BlockJson): Block {
  return blockFromRow({
    ...j,
    effective_at: new Date(j.effective_at),
    expires_at: j.expires_at === null ? null : new Date(j.expires_at),
    created_at: new Date(j.created_at),
    updated_at: new Date(j.updated_at),
  });
}

function blockFromRow(r: BlockRow): Block {
  return {
    ...r,
    original: creditsFromDb(r.original),
    remaining: creditsFromDb(r.remaining),
    unit_cost: creditsFromDb(r.unit_cost),
  };
}

const ENTRY_COLUMNS = [
  ["org_id", "text"],
  ["sequence", "bigint"],
  ["id", "text"],
  ["type", "text"],
  ["amount", "numeric"],
  ["balance_after", "numeric"],
  ["debt_change", "numeric"],
  ["allocations", "jsonb"],
  ["actor_type", "text"],
  ["actor_id", "text"],
  ["user_id", "text"],
  ["reason", "text"],
  ["description", "text"],
  ["reference_type", "text"],
  ["reference_id", "text"],
  ["created_at", "timestamptz"],
  ["prev_hash", "text"],
  ["hash", "text"],
] as const satisfies readonly Column[];

const BLOCK_COLUMNS = [
  ["org_id", "text"],
  ["id", "text"],
  ["source", "text"],
  ["original", "numeric"],
  ["remaining", "numeric"],
  ["unit_cost", "numeric"],
  ["priority", "integer"],
  ["effective_at", "timestamptz"],
  ["expires_at", "timestamptz"],
  ["status", "text"],
  ["purchase_id", "text"],
  ["created_at", "timestamptz"],
  ["updated_at", "timestamptz"],
] as const satisfies readonly Column[];

export interface SaveOptions {
  /**
   * The ledgers were not opened under their locks (`OrgLedger.restore`): the statement locks the
   * balance rows itself, in `org_id` order, and is refused unless each is still at the ledger's
   * version, no observer has anything to do, and the caller's `guards` hold. Refused, it throws
   * `OptimisticMiss` and writes nothing. It may run outside a transaction: one statement is
   * atomic.
   */
  optimistic?: { guards: readonly Guard[] };
  /** Not optimistic: told which of the changed organisations an observer's prefetch returned. */
  observed?: (orgIds: ReadonlySet<string>) => void;
}

/**
 * Writes the changes of every ledger — new and changed blocks, entries, balances — together with
 * the caller's own `steps` in ONE statement, then runs the balance observers. Returns the rows
 * each of the caller's steps wrote.
 */
export async function saveLedgers(
  tx: Db,
  ledgers: Iterable<OrgLedger>,
  steps: readonly WriteStep[] = [],
  options: SaveOptions = {},
): Promise<Map<string, number>> {
  const changed = [...ledgers].filter((l) => l.changed);
  if (changed.length === 0) return (await writeTogether(tx, steps)).counts;
  const changes: BalanceChange[] = changed
    .filter((l) => l.balance !== l.balanceAtLastSave || l.reserved !== l.reservedAtLastSave)
    .map((l) => ({
      orgId: l.orgId,
      before: l.balanceAtLastSave,
      after: l.balance,
      reserved: l.reserved,
      entryTypes: [...new Set(l.writes().entries.map((e) => e.type))],
    }));
  const ctx = changed[0]!.ctx;
  const { optimistic } = options;
  if (optimistic) {
    for (const o of ctx.balanceObservers) {
      if (!o.idle || !changes.every((c) => o.idle!(c))) throw new OptimisticMiss("observers");
    }
  }
  const newBlocks: Block[] = [];
  const changedBlocks: Block[] = [];
  const entries: LedgerEntry[] = [];
  for (const l of changed) {
    const w = l.writes();
    newBlocks.push(...w.newBlocks);
    changedBlocks.push(...w.changedBlocks);
    entries.push(...w.entries);
  }

  const all: WriteStep[] = [...steps];
  if (newBlocks.length > 0) {
    const rows = newBlocks.map((b) => [
      b.org_id,
      b.id,
      b.source,
      creditsToDb(b.original),
      creditsToDb(b.remaining),
      creditsToDb(b.unit_cost),
      b.priority,
      b.effective_at,
      b.expires_at,
      b.status,
      b.purchase_id,
      b.created_at,
      b.updated_at,
    ]);
    all.push({
      name: "ledger:new_blocks",
      statement: q`insert into credit_blocks (${columnList(BLOCK_COLUMNS)})
        ${unnestRows(BLOCK_COLUMNS, rows)} returning 1`,
    });
  }
  if (changedBlocks.length > 0) {
    const rows = changedBlocks.map((b) => [
      b.org_id,
      b.id,
      creditsToDb(b.remaining),
      b.status,
      b.updated_at,
    ]);
    const source = unnestRows(
      [
        ["org_id", "text"],
        ["id", "text"],
        ["remaining", "numeric"],
        ["status", "text"],
        ["updated_at", "timestamptz"],
      ],
      rows,
    );
    all.push({
      name: "ledger:changed_blocks",
      statement: q`update credit_blocks as b
        set remaining = v.remaining, status = v.status, updated_at = v.updated_at
        from (${source}) as v
        where b.org_id = v.org_id and b.id = v.id returning 1`,
    });
  }
  if (entries.length > 0) {
    const rows = entries.map((e) => [
      e.org_id,
      e.sequence,
      e.id,
      e.type,
      creditsToDb(e.amount),
      creditsToDb(e.balance_after),
      creditsToDb(e.debt_change),
      JSON.stringify(
        e.allocations.map((a) => ({ block_id: a.block_id, amount: creditsToDb(a.amount) })),
      ),
      e.actor_type,
      e.actor_id,
      e.user_id,
      e.reason,
      e.description,
      e.reference_type,
      e.reference_id,
      e.created_at,
      e.prev_hash,
      e.hash,
    ]);
    all.push({
      name: "ledger:entries",
      statement: q`insert into ledger_entries (${columnList(ENTRY_COLUMNS)})
        ${unnestRows(ENTRY_COLUMNS, rows)} returning 1`,
    });
  }
  const balances = unnestRows(
    [
      ["org_id", "text"],
      ["balance", "numeric"],
      ["reserved", "numeric"],
      ["debt", "numeric"],
      ["last_sequence", "bigint"],
      ["head_hash", "text"],
      ["updated_at", "timestamptz"],
    ],
    changed.map((l) => [
      l.orgId,
      creditsToDb(l.balance),
      creditsToDb(l.reserved),
      creditsToDb(l.debt),
      l.lastSequence,
      l.headHash,
      l.now,
    ]),
  );
  all.push({
    name: "ledger:balances",
    statement: q`update org_balances as b
      set balance = v.balance, reserved = v.reserved, debt = v.debt,
          last_sequence = v.last_sequence, head_hash = v.head_hash, updated_at = v.updated_at,
          version = b.version + 1
      from (${balances}) as v
      where b.org_id = v.org_id returning 1`,
  });
  const orgIds = changed.map((l) => l.orgId);
  const reads: ReadStep[] = ctx.balanceObservers.flatMap((o, i) =>
    o.prefetch ? [{ name: `observer ${i}`, query: o.prefetch(orgIds) }] : [],
  );
  if (optimistic) {
    const written = await writeTogether(
      tx,
      [lockStep(orgIds), ...all],
      [],
      [...optimisticGuards(changed, reads), ...optimistic.guards],
    );
    for (const l of changed) l.markSaved();
    return written.counts;
  }
  const written = await writeTogether(tx, all, reads);
  for (const l of changed) l.markSaved();
  if (options.observed) {
    const observed = new Set<string>();
    for (const rows of written.reads.values()) {
      for (const row of rows) observed.add((row as { org_id: string }).org_id);
    }
    options.observed(observed);
  }
  if (changes.length > 0) {
    for (const [i, observer] of ctx.balanceObservers.entries()) {
      await observer.observe(tx, ctx, changes, written.reads.get(`observer ${i}`) ?? []);
    }
  }
  return written.counts;
}

const LOCK = "ledger:lock";

/** Locks the balance rows in `org_id` order (as `openLedgers` does) and reads their versions. */
function lockStep(orgIds: readonly string[]): WriteStep {
  return {
    name: LOCK,
    statement: q`select org_id, version from org_balances
      where org_id = any(${[...orgIds]}::text[]) order by org_id for update`,
  };
}

/**
 * `ledger:stale`: every balance row, once locked, is still at the version the ledger was opened
 * at (a row changed while the statement waited for its lock shows its new version: the lock
 * reads the latest). `ledger:observed`: no observer's prefetch returns a row.
 */
function optimisticGuards(ledgers: readonly OrgLedger[], reads: readonly ReadStep[]): Guard[] {
  const expected = unnestRows(
    [
      ["org_id", "text"],
      ["version", "bigint"],
    ],
    ledgers.map((l) => [l.orgId, l.version]),
  );
  const guards: Guard[] = [
    {
      name: "ledger:stale",
      condition: q`(select count(*) from ${ident(LOCK)} as l
        join (${expected}) as e on e.org_id = l.org_id and e.version = l.version)
        = ${ledgers.length}`,
    },
  ];
  for (const r of reads) {
    guards.push({ name: "ledger:observed", condition: q`not exists (${r.query})` });
  }
  return guards;
}

function columnList(columns: readonly Column[]) {
  return join(columns.map(([name]) => ident(name)));
}

export type PostResult =
  | { ok: true; entries: LedgerEntry[]; ledger: OrgLedger }
  | { ok: false; code: "insufficient_credits" | "not_found"; index: number };

/**
 * Posts a batch for one organisation inside the caller's transaction: all or nothing. On a
 * refusal nothing is written (the caller decides whether to roll back its own changes).
 */
export async function postEntries(
  tx: Db,
  ctx: AppContext,
  orgId: string,
  postings: readonly Posting[],
): Promise<PostResult> {
  const needsBlocks = postings.some((p) => p.kind !== "credit");
  const ledger = (await openLedgers(tx, ctx, [orgId], { blocks: needsBlocks })).get(orgId)!;
  const entries: LedgerEntry[] = [];
  for (const [index, posting] of postings.entries()) {
    const outcome = ledger.apply(posting);
    if (!outcome.ok) {
      // Expiries found while loading the blocks are facts: keep them even though a posting is
      // refused — from a ledger opened afresh, since this one holds the postings before it.
      const fresh = (await openLedgers(tx, ctx, [orgId], { blocks: needsBlocks })).get(orgId)!;
      await saveLedgers(tx, [fresh]);
      return { ok: false, code: outcome.code, index };
    }
    if (outcome.entry) entries.push(outcome.entry);
  }
  // One save: the expiries and the postings are one write, one balance change for the observers
  // (one alert for the lowest threshold crossed, not one per step).
  await saveLedgers(tx, [ledger]);
  return { ok: true, entries, ledger };
}
