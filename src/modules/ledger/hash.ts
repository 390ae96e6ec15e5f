import { hash } from "node:crypto";
import { isoString } from "../../db/instant.js";
import { type Credits, formatCredits } from "./credits.js";
import type { EntryType } from "./ledger.tables.js";

export const GENESIS_HASH = "0".repeat(64);

/** The fields of an entry that its hash covers (everything but the hash itself). */
export interface HashedEntry {
  org_id: string;
  sequence: bigint;
  id: string;
  type: EntryType;
  amount: Credits;
  balance_after: Credits;
  debt_change: Credits;
  allocations: readonly { block_id: string; amount: Credits }[];
  actor_type: string;
  actor_id: string;
  user_id: string | null;
  reason: string | null;
  description: string | null;
  reference_type: string | null;
  reference_id: string | null;
  created_at: Date;
}

/**
 * The canonical form of an entry, version 1: the UTF-8 JSON text of the array
 *
 *   [1, org_id, sequence, id, type, amount, balance_after, debt_change,
 *    [[block_id, amount], …], actor_type, actor_id, user_id, reason, description,
 *    reference_type, reference_id, created_at]
 *
 * where sequence is a decimal string, amounts are shortest exact decimal strings ("12.5",
 * "-0.000125", "0"), absent values are null and created_at is RFC 3339 UTC with milliseconds.
 * `hash = hex(SHA-256(prev_hash_hex ‖ canonical))`; the first entry's prev_hash is 64 zeros.
 * Anyone can recompute the chain from an export with these rules.
 */
export function canonicalEntry(e: HashedEntry): string {
  return JSON.stringify([
    1,
    e.org_id,
    e.sequence.toString(),
    e.id,
    e.type,
    formatCredits(e.amount),
    formatCredits(e.balance_after),
    formatCredits(e.debt_change),
    e.allocations.map((a) => [a.block_id, formatCredits(a.amount)]),
    e.actor_type,
    e.actor_id,
    e.user_id,
    e.reason,
    e.description,
    e.reference_type,
    e.reference_id,
    isoString(e.created_at),
  ]);
}

export function entryHash(prevHash: string, entry: HashedEntry): string {
  return hash("sha256", prevHash + canonicalEntry(entry), "hex");
}
