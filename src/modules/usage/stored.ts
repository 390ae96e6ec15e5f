import type { Db } from "../../db/index.js";
import { creditsFromDb } from "../ledger/credits.js";
import type { IngestResult } from "./engine.js";

/** A stored usage event, as duplicates are decided and answered. */
export interface StoredEvent {
  org_id: string;
  id: string;
  payload_hash: string;
  timestamp: Date;
  timestamp_defaulted: boolean;
  cost: string;
  transaction_id: string;
  /** Of the event's `usage` ledger entry. */
  balance_after: string;
}

/** A map key for a row identified by (organisation, id): events, reservations. */
export const orgScopedKey = (orgId: string, id: string) => `${orgId}\u0000${id}`;

/** The stored events among `events` (by organisation and id), keyed by `orgScopedKey`. */
export async function findStoredEvents(
  db: Db,
  events: readonly { orgId: string; id: string }[],
): Promise<Map<string, StoredEvent>> {
  const keys = new Map<string, { orgId: string; id: string }>();
  for (const e of events) keys.set(orgScopedKey(e.orgId, e.id), { orgId: e.orgId, id: e.id });
  const found = new Map<string, StoredEvent>();
  const all = [...keys.values()];
  for (let i = 0; i < all.length; i += 1000) {
    const part = all.slice(i, i + 1000);
    const rows = await db
      .selectFrom("usage_events as e")
      .innerJoin("ledger_entries as l", (j) =>
        j.onRef("l.org_id", "=", "e.org_id").onRef("l.id", "=", "e.transaction_id"),
      )
      .select([
        "e.org_id",
        "e.id",
        "e.payload_hash",
        "e.timestamp",
        "e.timestamp_defaulted",
        "e.cost",
        "e.transaction_id",
        "l.balance_after",
      ])
      // Two flat IN lists, not a list of row tuples: a long tuple list nests deeply enough to
      // overflow PGlite's parser stack. The superset is filtered by key below.
      .where("e.org_id", "in", [...new Set(part.map((k) => k.orgId))])
      .where(
        "e.id",
        "in",
        part.map((k) => k.id),
      )
      .execute();
    for (const r of rows) {
      const k = orgScopedKey(r.org_id, r.id);
      if (keys.has(k)) found.set(k, r);
    }
  }
  return found;
}

/** What `sameSubmission` compares of a stored event. */
export function storedSubmission(s: StoredEvent) {
  return {
    payloadHash: s.payload_hash,
    timestamp: s.timestamp,
    timestampDefaulted: s.timestamp_defaulted,
  };
}

/** The answer for a submission of a stored event. */
export function storedResult(
  s: StoredEvent,
  status: IngestResult["status"] = "duplicate",
): IngestResult {
  return {
    id: s.id,
    status,
    cost: creditsFromDb(s.cost),
    transactionId: s.transaction_id,
    balanceAfter: creditsFromDb(s.balance_after),
  };
}
