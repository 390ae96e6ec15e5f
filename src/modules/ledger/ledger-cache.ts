import type { AppContext } from "../../app/context.js";
import { type Block, type LedgerState, OrgLedger } from "./posting.js";

interface Saved {
  state: LedgerState;
  blocks: Block[];
}

export interface LedgerCacheLimits {
  /** Organisations remembered; the least recently used are forgotten first. */
  maxOrgs: number;
  /** Ledgers with more active blocks are not remembered (copying them costs more than reading). */
  maxBlocks: number;
  /** Active blocks remembered in all (bounds the memory: a block is a few hundred bytes). */
  maxTotalBlocks: number;
  /** How long `pause` keeps an organisation on the locking path. */
  pauseMs: number;
  /** Optimistic writes refused as stale in a row before an organisation is paused… */
  staleInARow: number;
  /** …for this long: others write it too (several instances), so trying costs more than it saves. */
  stalePauseMs: number;
}

const DEFAULT_LIMITS: LedgerCacheLimits = {
  maxOrgs: 10_000,
  maxBlocks: 256,
  maxTotalBlocks: 50_000,
  pauseMs: 60_000,
  staleInARow: 3,
  stalePauseMs: 1_000,
};

/**
 * The ledgers this instance wrote last, so that its next write for the same organisation needs
 * no locking read first: the ledger is restored from here and saved optimistically — one
 * statement that locks the balance row itself and is refused, writing nothing, unless the row is
 * still at the remembered version (`saveLedgers`). Whatever else writes the ledger (another
 * instance, a purchase, an expiry) moves the version on; the refused write is done again on the
 * locking path, which remembers the ledger as it then is. Nothing here is ever trusted without
 * that check, so a stale entry costs time, never correctness.
 */
export class LedgerCache {
  private readonly saved = new Map<string, Saved>();
  private readonly paused = new Map<string, number>();
  private readonly staleRuns = new Map<string, number>();
  private totalBlocks = 0;

  constructor(private readonly limits: LedgerCacheLimits = DEFAULT_LIMITS) {}

  /** Ledgers of all `orgIds` as remembered, or null unless every one is (and none is paused). */
  open(ctx: AppContext, orgIds: readonly string[], now: Date): Map<string, OrgLedger> | null {
    const found: [string, Saved][] = [];
    for (const orgId of orgIds) {
      const until = this.paused.get(orgId);
      if (until !== undefined) {
        if (until > now.getTime()) return null;
        this.paused.delete(orgId);
      }
      const saved = this.saved.get(orgId);
      if (!saved) return null;
      found.push([orgId, saved]);
    }
    const ledgers = new Map<string, OrgLedger>();
    for (const [orgId, saved] of found) {
      this.saved.delete(orgId); // most recently used last
      this.saved.set(orgId, saved);
      ledgers.set(orgId, OrgLedger.restore(ctx, orgId, saved, now));
    }
    return ledgers;
  }

  /** After a commit: the ledgers as written. */
  remember(ledgers: Iterable<OrgLedger>): void {
    for (const ledger of ledgers) {
      const saved = ledger.snapshot();
      this.drop(ledger.orgId);
      if (saved && saved.blocks.length <= this.limits.maxBlocks) {
        this.saved.set(ledger.orgId, saved);
        this.totalBlocks += saved.blocks.length;
      }
    }
    for (const orgId of this.saved.keys()) {
      const within =
        this.saved.size <= this.limits.maxOrgs && this.totalBlocks <= this.limits.maxTotalBlocks;
      if (within) break;
      this.drop(orgId);
    }
  }

  forget(orgIds: Iterable<string>): void {
    for (const orgId of orgIds) this.drop(orgId);
  }

  private drop(orgId: string): void {
    const saved = this.saved.get(orgId);
    if (!saved) return;
    this.totalBlocks -= saved.blocks.length;
    this.saved.delete(orgId);
  }

  /** Keeps these organisations on the locking path for a while (their observers have work). */
  pause(orgIds: Iterable<string>, now: Date, ms = this.limits.pauseMs): void {
    for (const orgId of orgIds) {
      this.paused.delete(orgId);
      this.paused.set(orgId, now.getTime() + ms);
    }
    trimOldest(this.paused, this.limits.maxOrgs);
  }

  /**
   * An optimistic write for these organisations was refused as stale. After `staleInARow` such
   * refusals with no optimistic write between, they stay on the locking path for
   * `stalePauseMs`: when several instances write one organisation, each one's remembered ledger
   * is nearly always behind.
   */
  stale(orgIds: readonly string[], now: Date): void {
    const runOut = orgIds.filter((orgId) => {
      const run = (this.staleRuns.get(orgId) ?? 0) + 1;
      this.staleRuns.delete(orgId);
      if (run < this.limits.staleInARow) this.staleRuns.set(orgId, run);
      return run >= this.limits.staleInARow;
    });
    if (runOut.length > 0) this.pause(runOut, now, this.limits.stalePauseMs);
    trimOldest(this.staleRuns, this.limits.maxOrgs);
  }

  /** An optimistic write for these organisations went through: their stale runs end. */
  written(orgIds: readonly string[]): void {
    for (const orgId of orgIds) this.staleRuns.delete(orgId);
  }
}

/** Drops a map's oldest entries (insertion order) beyond `max`. */
function trimOldest<K, V>(map: Map<K, V>, max: number): void {
  for (const key of map.keys()) {
    if (map.size <= max) break;
    map.delete(key);
  }
}
