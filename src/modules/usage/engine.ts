import { Counter, Histogram } from "prom-client";
import type { AppContext } from "../../app/context.js";
import { type ErrorCode, type ErrorDetail, OUT_OF_RANGE } from "../../app/errors.js";
import type { Claim } from "../../app/idempotency.js";
import {
  type Column,
  failedGuard,
  ident,
  join,
  q,
  unnestRows,
  type WriteStep,
} from "../../db/bulk.js";
import { withoutCommitHook } from "../../db/commit-hooks.js";
import { type Db, isOutOfRange, isWriteConflict } from "../../db/index.js";
import { isoString } from "../../db/instant.js";
import {
  type Credits,
  creditsFromDb,
  creditsToDb,
  formatScaled,
  parseScaled6,
  type Scaled6,
} from "../ledger/credits.js";
import { openLedgers, saveLedgers } from "../ledger/ledger.service.js";
import { LedgerCache } from "../ledger/ledger-cache.js";
import { OptimisticMiss, type OrgLedger } from "../ledger/posting.js";
import type { Actor } from "../orgs/auth.js";
import { storageIntervalCost } from "../pricing/pricing.service.js";
import { type PreparedEvent, sameSubmission } from "./prepare.js";
import {
  findStoredEvents,
  orgScopedKey,
  type StoredEvent,
  storedResult,
  storedSubmission,
} from "./stored.js";

/**
 * The ingest engine: group commit for usage events.
 *
 * Requests hand their validated, priced events to `submit`. Whatever arrives while a flush is
 * being written is collected and written by the next flush in ONE transaction: events inserted,
 * each touched organisation's balance row locked once (in org_id order, so instances never
 * deadlock), one `usage` ledger entry per event drawn from blocks in memory, blocks and balance
 * written once per organisation, rollups upserted. A request's promise resolves only after the
 * commit, so every acknowledged event is durable and in the balance.
 *
 * Duplicates are decided under the organisation's lock: an id already stored (or earlier in the
 * same flush) with the same submission is a `duplicate`; with another submission the whole
 * request is refused with `event_conflict` and none of its events is written — without failing
 * the other requests of the flush.
 *
 * The common flush — organisations this instance wrote last, events that are new, no holds, no
 * storage gauges, nothing for alerts or auto-topup to do — is ONE autocommit statement: ledgers
 * restored from the `LedgerCache`, the statement locks the balance rows itself and is refused
 * (writing nothing) unless they are still at the remembered versions and every event was new.
 * Anything else, or a refusal, takes the locking path: a transaction that locks the balance rows
 * and reads them, the blocks and the stored events first.
 */

export interface IngestRequest {
  events: PreparedEvent[];
  actor: Actor;
  /** Settles this hold in the same transaction as the events. */
  reservation?: { orgId: string; id: string };
  /**
   * The request's Idempotency-Key claim: marked applied in the flush that commits the request
   * (a flush runs outside any one request's commit hook), so a retry after a lost answer is
   * told so instead of running again.
   */
  claim?: Claim | null;
}

export interface IngestResult {
  id: string;
  status: "accepted" | "duplicate";
  cost: Credits;
  transactionId: string;
  balanceAfter: Credits;
}

export type IngestOutcome =
  | { ok: true; results: IngestResult[]; settledCost: Credits }
  | { ok: false; code: ErrorCode; message: string; details: ErrorDetail[] };

export interface IngestEngineOptions {
  /** Upper bound of events per flush transaction. */
  maxBatchEvents: number;
  /** Flush transactions in flight at once (PGlite: 1 — it has one connection). */
  maxConcurrentFlushes: number;
}

interface Pending {
  request: IngestRequest;
  /** Organisations whose balance rows the request's flush will lock. */
  orgs: string[];
  resolve(outcome: IngestOutcome): void;
  reject(error: unknown): void;
}

export class IngestEngine {
  private queue: Pending[] = [];
  private readonly ledgers = new LedgerCache();
  private readonly busyOrgs = new Set<string>();
  private active = 0;
  private scheduled = false;
  private readonly metrics;

  constructor(
    private readonly ctx: AppContext,
    private readonly options: IngestEngineOptions,
  ) {
    const registers = [ctx.metrics.registry];
    this.metrics = {
      events: new Counter({
        name: "tally_usage_events_total",
        help: "Usage events by outcome",
        labelNames: ["status"] as const,
        registers,
      }),
      flushSize: new Histogram({
        name: "tally_ingest_flush_events",
        help: "Events per ingest flush",
        buckets: [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2000],
        registers,
      }),
      optimistic: new Counter({
        name: "tally_ingest_optimistic_flushes_total",
        help: "Flushes tried in one optimistic statement, by outcome (written, or why it was refused)",
        labelNames: ["outcome"] as const,
        registers,
      }),
      flushSeconds: new Histogram({
        name: "tally_ingest_flush_seconds",
        help: "Ingest flush transaction latency",
        buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
        registers,
      }),
    };
  }

  submit(request: IngestRequest): Promise<IngestOutcome> {
    return new Promise((resolve, reject) => {
      const orgs = new Set(request.events.map((e) => e.orgId));
      if (request.reservation) orgs.add(request.reservation.orgId);
      this.queue.push({ request, orgs: [...orgs], resolve, reject });
      this.schedule();
    });
  }

  /** Counts events of a request refused before it reached the engine. */
  countRejected(events: number): void {
    this.metrics.events.inc({ status: "rejected" }, events);
  }

  /** Resolves when everything submitted so far is written. */
  async drain(): Promise<void> {
    while (this.queue.length > 0 || this.active > 0) {
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  private schedule(): void {
    if (this.scheduled || this.active >= this.options.maxConcurrentFlushes) return;
    this.scheduled = true;
    // One turn of the event loop lets concurrent requests join the same flush. A flush serves
    // many requests: it runs outside the scheduling request's Idempotency-Key hook (usage
    // events are exactly-once by their ids).
    setImmediate(() =>
      withoutCommitHook(() => {
        this.scheduled = false;
        this.flushNext();
      }),
    );
  }

  private flushNext(): void {
    if (this.queue.length === 0 || this.active >= this.options.maxConcurrentFlushes) return;
    // A request whose organisation is in a flush already in flight waits for the next flush:
    // starting a second one would only queue on that organisation's balance lock while holding
    // a connection. Waiting requests of a hot organisation thus join one larger flush.
    const batch: Pending[] = [];
    const waiting: Pending[] = [];
    const batchOrgs = new Set<string>();
    let events = 0;
    for (const next of this.queue) {
      const busy = next.orgs.some((o) => this.busyOrgs.has(o));
      const full =
        batch.length > 0 && events + next.request.events.length > this.options.maxBatchEvents;
      if (busy || full) {
        waiting.push(next);
        continue;
      }
      batch.push(next);
      events += next.request.events.length;
      for (const o of next.orgs) batchOrgs.add(o);
    }
    if (batch.length === 0) return; // everything waits for a flush in flight to finish
    this.queue = waiting;
    for (const o of batchOrgs) this.busyOrgs.add(o);
    this.active++;
    const started = process.hrtime.bigint();
    this.write(batch)
      .catch((error) => {
        for (const p of batch) p.reject(error); // only if answering itself failed
      })
      .finally(() => {
        this.metrics.flushSize.observe(events);
        this.metrics.flushSeconds.observe(Number(process.hrtime.bigint() - started) / 1e9);
        this.active--;
        for (const o of batchOrgs) this.busyOrgs.delete(o);
        if (this.queue.length > 0) this.schedule();
      });
    if (this.queue.length > 0) this.schedule();
  }

  /**
   * Writes a batch and answers each of its requests; never throws. A flush refused because a
   * value is out of range (a cost, balance or monthly total reaching 10^26) is refused for some
   * request's magnitudes: the batch is split in halves and each half written again, down to the
   * request at fault, so the requests that merely shared its flush still succeed — in a few more
   * transactions, not one per request. Each half is answered by its own outcome: a half that
   * fails for another reason fails only its own requests, not those a sibling half committed.
   */
  private async write(batch: Pending[]): Promise<void> {
    let outcomes: IngestOutcome[];
    try {
      outcomes = await this.writeOnce(batch);
    } catch (error) {
      if (!isOutOfRange(error)) {
        for (const p of batch) p.reject(error);
        return;
      }
      if (batch.length > 1) {
        const half = Math.ceil(batch.length / 2);
        await this.write(batch.slice(0, half));
        await this.write(batch.slice(half));
        return;
      }
      outcomes = [{ ok: false, ...OUT_OF_RANGE, details: [...OUT_OF_RANGE.details] }];
    }
    outcomes.forEach((o, i) => {
      if (o.ok) {
        for (const r of o.results) this.metrics.events.inc({ status: r.status });
      } else {
        this.metrics.events.inc({ status: "rejected" }, batch[i]!.request.events.length);
      }
      batch[i]!.resolve(o);
    });
  }

  private async writeOnce(batch: Pending[]): Promise<IngestOutcome[]> {
    const requests = batch.map((p) => p.request);
    const orgIds = [...new Set(batch.flatMap((p) => p.orgs))];
    // First assume every event is new (the common case: one statement fewer); if one was not,
    // the flush rolls back and is written again after looking the stored events up.
    let lookUpStored = false;
    const given = new Map<string, string>();
    const now = this.ctx.clock.now();
    const restored = this.ledgers.open(this.ctx, orgIds, now);
    if (restored) {
      try {
        const outcomes = await writeBatch(this.ctx.flushDb, this.ctx, requests, {
          lookUpStored: false,
          restored,
          given,
        });
        this.ledgers.remember(restored.values());
        this.ledgers.written(orgIds);
        this.metrics.optimistic.inc({ outcome: "written" });
        return outcomes;
      } catch (error) {
        this.ledgers.forget(orgIds);
        const reason =
          error instanceof OptimisticMiss
            ? error.reason
            : error instanceof StoredEventsNeeded
              ? "usage:stored"
              : (failedGuard(error) ?? "error");
        this.metrics.optimistic.inc({ outcome: reason });
        if (reason === "usage:stored") lookUpStored = true;
        if (reason === "ledger:stale") this.ledgers.stale(orgIds, now);
        // Anything else (a stale version, a database error) is for the locking path to decide.
      }
    }
    for (let attempt = 1; ; attempt++) {
      try {
        let opened: Map<string, OrgLedger> | undefined;
        const outcomes = await this.ctx.db.transaction().execute((tx) =>
          writeBatch(tx, this.ctx, requests, {
            lookUpStored,
            given,
            opened: (ledgers) => {
              opened = ledgers;
            },
            // Organisations with alert thresholds or auto-topup are written under their locks
            // (their observers run in the transaction); the others may stay optimistic.
            observed: (watched) => this.ledgers.pause(watched, now),
          }),
        );
        if (opened) this.ledgers.remember(opened.values());
        return outcomes;
      } catch (error) {
        // Events stored already are posted again by an attempt that did not look them up, and
        // may push a total out of range only for that reason: look them up before deciding.
        if ((error instanceof StoredEventsNeeded || isOutOfRange(error)) && !lookUpStored) {
          lookUpStored = true;
          continue;
        }
        if (attempt < 3 && isWriteConflict(error)) continue;
        throw error;
      }
    }
  }
}

interface Accepted {
  event: PreparedEvent;
  requestIndex: number;
  /** The event's index in its request. */
  slot: number;
  cost: Credits;
  billedQuantity: bigint | null;
  transactionId: string;
  balanceAfter: Credits;
}

/** A flush written without looking its events up needs them looked up after all. */
export class StoredEventsNeeded extends Error {}

export interface WriteBatchOptions {
  /**
   * False: the events are not looked up first; the events' insert tells. If any was stored
   * already — or a request is refused, whose answer a stored conflicting event would take
   * precedence over — it throws `StoredEventsNeeded` (roll back, call again with `true`).
   */
  lookUpStored: boolean;
  /**
   * Ledgers restored from a `LedgerCache`: written optimistically (no locking read; `tx` may be
   * the database itself) or refused with `OptimisticMiss` / a failed guard, having written
   * nothing. Only for requests without holds or storage readings.
   */
  restored?: Map<string, OrgLedger>;
  /** Called with the ledgers opened under their locks. */
  opened?: (ledgers: Map<string, OrgLedger>) => void;
  /** Told which organisations have balance observers with work (see `SaveOptions.observed`). */
  observed?: (orgIds: ReadonlySet<string>) => void;
  /**
   * The transaction ids this flush gave its events, by `requestIndex:slot`, across its attempts.
   * An attempt whose outcome is unknown (the database's answer to a commit was lost) may have
   * written them: a stored event carrying the id given to the same request and slot was written
   * by this flush, and is answered `accepted`, not `duplicate`.
   */
  given?: Map<string, string>;
}

/**
 * One flush, in the caller's transaction: the balance rows locked, blocks (and holds, gauges)
 * read, everything classified and posted in memory, then every row written by ONE statement.
 * Exported for tests and the demo data.
 */
export async function writeBatch(
  tx: Db,
  ctx: AppContext,
  requests: readonly IngestRequest[],
  options: WriteBatchOptions = { lookUpStored: true },
): Promise<IngestOutcome[]> {
  const { restored } = options;
  if (
    restored &&
    requests.some((r) => r.reservation || r.claim || r.events.some((e) => e.cost === null))
  ) {
    throw new OptimisticMiss("locks");
  }
  const orgIds = new Set<string>();
  for (const r of requests) {
    for (const e of r.events) orgIds.add(e.orgId);
    if (r.reservation) orgIds.add(r.reservation.orgId);
  }
  const ledgers = restored ?? (await openLedgers(tx, ctx, [...orgIds], { blocks: true }));
  options.opened?.(ledgers);
  // Each organisation's writes are stamped with its ledger's instant (see OrgLedger.now).
  const nowOf = (orgId: string) => ledgers.get(orgId)!.now;

  const existing = options.lookUpStored
    ? await findStoredEvents(
        tx,
        requests.flatMap((r) => r.events),
      )
    : new Map<string, StoredEvent>();
  const holds = await lockReservations(tx, requests);
  const claimsHeld = await lockClaims(tx, requests);

  // Classify request by request, in order: a refused request contributes nothing.
  const outcomes: (IngestOutcome | null)[] = requests.map(() => null);
  requests.forEach((r, i) => {
    // Taken over by a retry while this request waited (over a minute): the retry runs it.
    if (r.claim && !claimsHeld.has(claimKey(r.claim))) {
      outcomes[i] = {
        ok: false,
        code: "idempotency_in_progress",
        message:
          "This request ran so long that a retry with the same Idempotency-Key took it over; nothing of it was applied.",
        details: [],
      };
    }
  });
  const inFlush = new Map<string, Accepted>();
  const accepted: Accepted[] = [];
  const duplicates: { requestIndex: number; slot: number; of: Accepted | StoredEvent }[] = [];
  requests.forEach((request, requestIndex) => {
    if (outcomes[requestIndex]) return;
    const mine: Accepted[] = [];
    const myDuplicates: typeof duplicates = [];
    const conflicts: ErrorDetail[] = [];
    const seen = new Map<string, Accepted>();
    request.events.forEach((event, slot) => {
      const k = orgScopedKey(event.orgId, event.id);
      const stored = existing.get(k);
      const earlier = seen.get(k) ?? inFlush.get(k);
      if (stored) {
        if (sameSubmission(event, storedSubmission(stored)))
          myDuplicates.push({ requestIndex, slot, of: stored });
        else
          conflicts.push({
            field: `/events/${slot}/id`,
            message: `event ${event.id} was recorded with a different payload`,
          });
      } else if (earlier) {
        if (sameSubmission(event, earlier.event))
          myDuplicates.push({ requestIndex, slot, of: earlier });
        else
          conflicts.push({
            field: `/events/${slot}/id`,
            message: `event ${event.id} appears with a different payload`,
          });
      } else {
        const a: Accepted = {
          event,
          requestIndex,
          slot,
          cost: 0n,
          billedQuantity: null,
          transactionId: "",
          balanceAfter: 0n,
        };
        seen.set(k, a);
        mine.push(a);
      }
    });
    if (conflicts.length > 0) {
      outcomes[requestIndex] = {
        ok: false,
        code: "event_conflict",
        message: conflicts[0]!.message,
        details: conflicts,
      };
      return;
    }
    if (request.reservation) {
      const hold = holds.get(orgScopedKey(request.reservation.orgId, request.reservation.id));
      if (!hold || hold.status !== "held" || hold.expires_at <= nowOf(hold.org_id)) {
        outcomes[requestIndex] = {
          ok: false,
          code: hold ? "invalid_state" : "not_found",
          message: hold
            ? `The reservation is ${hold.status === "held" ? "expired" : hold.status}.`
            : "Reservation not found.",
          details: [],
        };
        return;
      }
      // Another settle of the same hold later in this flush must find it settled, not held.
      hold.status = "settled";
    }
    for (const a of mine) {
      inFlush.set(orgScopedKey(a.event.orgId, a.event.id), a);
      accepted.push(a);
    }
    duplicates.push(...myDuplicates);
  });

  if (!options.lookUpStored && outcomes.some((o) => o !== null)) throw new StoredEventsNeeded();

  const steps: WriteStep[] = [];
  const gauges = await priceStorage(tx, accepted);
  if (gauges) steps.push(gauges);

  // Post: one usage entry per accepted event, in request order.
  for (const a of accepted) {
    const ledger = ledgers.get(a.event.orgId)!;
    const request = requests[a.requestIndex]!;
    const outcome = ledger.apply({
      kind: "debit",
      type: "usage",
      amount: a.cost,
      allowDebt: true,
      actor: request.actor,
      userId: a.event.userId,
      description: describe(a.event),
      reference: { type: "usage_event", id: a.event.id },
    });
    if (!outcome.ok || !outcome.entry) throw new Error("usage debit refused");
    a.transactionId = outcome.entry.id;
    a.balanceAfter = outcome.entry.balance_after;
    options.given?.set(a.transactionId, `${a.requestIndex}:${a.slot}`);
  }

  // Settle holds: release what was reserved, in the same transaction as the events.
  const settled = new Map<number, Credits>();
  const settledRows: [string, string, string, Date][] = [];
  for (const [i, request] of requests.entries()) {
    if (!request.reservation || outcomes[i]) continue;
    const hold = holds.get(orgScopedKey(request.reservation.orgId, request.reservation.id))!;
    const cost = accepted.filter((a) => a.requestIndex === i).reduce((s, a) => s + a.cost, 0n);
    ledgers.get(hold.org_id)!.release(creditsFromDb(hold.amount));
    settled.set(i, cost);
    settledRows.push([hold.org_id, hold.id, creditsToDb(cost), nowOf(hold.org_id)]);
  }
  if (settledRows.length > 0) {
    const source = unnestRows(
      [
        ["org_id", "text"],
        ["id", "text"],
        ["settled_cost", "numeric"],
        ["closed_at", "timestamptz"],
      ],
      settledRows,
    );
    steps.push({
      name: "usage:settled",
      statement: q`update reservations as r
        set status = 'settled', settled_cost = v.settled_cost, closed_at = v.closed_at
        from (${source}) as v
        where r.org_id = v.org_id and r.id = v.id returning 1`,
    });
  }

  if (accepted.length > 0) {
    steps.push(insertEvents(accepted, requests, nowOf));
    steps.push(...upsertRollups(accepted));
  }
  const claims = requests.flatMap((r, i) =>
    r.claim && !outcomes[i] ? [[r.claim.scope, r.claim.key, r.claim.token]] : [],
  );
  if (claims.length > 0) {
    const source = unnestRows(
      [
        ["scope", "text"],
        ["key", "text"],
        ["token", "text"],
      ],
      claims,
    );
    steps.push({
      name: "usage:claims",
      statement: q`update idempotency_keys as k set effect_committed = true
        from (${source}) as v
        where k.scope = v.scope and k.key = v.key and k.claim_token = v.token returning 1`,
    });
  }
  const written = await saveLedgers(
    tx,
    ledgers.values(),
    steps,
    restored
      ? {
          optimistic: {
            guards:
              accepted.length > 0
                ? [
                    {
                      name: "usage:stored",
                      condition: q`(select count(*) from ${ident(EVENTS_STEP)}) = ${accepted.length}`,
                    },
                  ]
                : [],
          },
        }
      : { observed: options.observed },
  );
  if ((written.get(EVENTS_STEP) ?? 0) !== accepted.length) {
    if (!options.lookUpStored) throw new StoredEventsNeeded();
    throw new Error("usage events stored concurrently despite the organisation lock");
  }

  const results = requests.map((r) => new Array<IngestResult>(r.events.length));
  for (const a of accepted) {
    results[a.requestIndex]![a.slot] = {
      id: a.event.id,
      status: "accepted",
      cost: a.cost,
      transactionId: a.transactionId,
      balanceAfter: a.balanceAfter,
    };
  }
  for (const { requestIndex, slot, of } of duplicates) {
    results[requestIndex]![slot] =
      "event" in of
        ? {
            id: of.event.id,
            status: "duplicate",
            cost: of.cost,
            transactionId: of.transactionId,
            balanceAfter: of.balanceAfter,
          }
        : storedResult(
            of,
            options.given?.get(of.transaction_id) === `${requestIndex}:${slot}`
              ? "accepted"
              : "duplicate",
          );
  }
  return requests.map(
    (_r, i) => outcomes[i] ?? { ok: true, results: results[i]!, settledCost: settled.get(i) ?? 0n },
  );
}

const claimKey = (c: Pick<Claim, "scope" | "key" | "token">) =>
  `${c.scope}\u0000${c.key}\u0000${c.token}`;

/**
 * The Idempotency-Key claims of the flush's requests that are still theirs, locked until the
 * flush commits: a retry cannot take one over meanwhile (its takeover waits for the lock, then
 * finds the claim applied), and a request whose claim was taken over is refused.
 */
async function lockClaims(tx: Db, requests: readonly IngestRequest[]): Promise<Set<string>> {
  const claims = requests.flatMap((r) => (r.claim ? [r.claim] : []));
  const held = new Set<string>();
  if (claims.length === 0) return held;
  // By the primary key (scope, key), as flat IN lists; the token is compared here.
  const rows = await tx
    .selectFrom("idempotency_keys")
    .select(["scope", "key", "claim_token"])
    .where("scope", "in", [...new Set(claims.map((c) => c.scope))])
    .where("key", "in", [...new Set(claims.map((c) => c.key))])
    .forUpdate()
    .execute();
  for (const r of rows) {
    if (r.claim_token) held.add(claimKey({ scope: r.scope, key: r.key, token: r.claim_token }));
  }
  return held;
}

async function lockReservations(tx: Db, requests: readonly IngestRequest[]) {
  const wanted = requests.flatMap((r) => (r.reservation ? [r.reservation] : []));
  const holds = new Map<
    string,
    { org_id: string; id: string; amount: string; status: string; expires_at: Date }
  >();
  if (wanted.length === 0) return holds;
  const rows = await tx
    .selectFrom("reservations")
    .select(["org_id", "id", "amount", "status", "expires_at"])
    // Flat IN lists, not a row-tuple list (see findStoredEvents); reservation ids are unique anyway.
    .where("org_id", "in", [...new Set(wanted.map((w) => w.orgId))])
    .where(
      "id",
      "in",
      wanted.map((w) => w.id),
    )
    .forUpdate()
    .execute();
  const keys = new Set(wanted.map((w) => orgScopedKey(w.orgId, w.id)));
  for (const r of rows)
    if (keys.has(orgScopedKey(r.org_id, r.id))) holds.set(orgScopedKey(r.org_id, r.id), r);
  return holds;
}

/**
 * Storage gauges: the interval since the previous reading of the same resource is billed at the
 * previous reading. The first reading bills nothing. A reading older than the last one known
 * (out of order) is recorded but bills nothing and leaves the gauge as it is: that interval was
 * already billed at the reading known then.
 */
async function priceStorage(tx: Db, accepted: Accepted[]): Promise<WriteStep | null> {
  for (const a of accepted) if (a.event.cost !== null) a.cost = a.event.cost;
  const storage = accepted.filter((a) => a.event.cost === null);
  if (storage.length === 0) return null;
  const gaugeKey = (e: PreparedEvent) => `${e.orgId}\u0000${e.meter}\u0000${e.resource}`;
  const keys = [...new Map(storage.map((a) => [gaugeKey(a.event), a.event])).values()];
  const rows = await tx
    .selectFrom("storage_gauges")
    .selectAll()
    .where("org_id", "in", [...new Set(keys.map((e) => e.orgId))])
    .where("resource", "in", [...new Set(keys.map((e) => e.resource!))])
    .execute();
  const gauges = new Map<
    string,
    { at: Date; gb: Scaled6; dirty: boolean; orgId: string; meter: string; resource: string }
  >();
  const wanted = new Set(keys.map(gaugeKey));
  for (const r of rows) {
    if (!wanted.has(`${r.org_id}\u0000${r.meter}\u0000${r.resource}`)) continue;
    gauges.set(`${r.org_id}\u0000${r.meter}\u0000${r.resource}`, {
      at: r.last_timestamp,
      gb: parseScaled6(r.last_quantity),
      dirty: false,
      orgId: r.org_id,
      meter: r.meter,
      resource: r.resource,
    });
  }
  const ordered = [...storage].sort(
    (x, y) => x.event.timestamp.getTime() - y.event.timestamp.getTime(),
  );
  for (const a of ordered) {
    const e = a.event;
    const k = gaugeKey(e);
    const gauge = gauges.get(k);
    if (!gauge) {
      gauges.set(k, {
        at: e.timestamp,
        gb: e.quantity!,
        dirty: true,
        orgId: e.orgId,
        meter: e.meter!,
        resource: e.resource!,
      });
      a.billedQuantity = 0n;
      continue;
    }
    if (e.timestamp < gauge.at) {
      a.billedQuantity = 0n;
      continue;
    }
    const charge = storageIntervalCost(e.storageRate!, gauge.gb, gauge.at, e.timestamp);
    a.cost = charge.cost;
    a.billedQuantity = charge.quantity;
    gauge.at = e.timestamp;
    gauge.gb = e.quantity!;
    gauge.dirty = true;
  }
  const dirty = [...gauges.values()].filter((g) => g.dirty);
  if (dirty.length === 0) return null;
  const source = unnestRows(
    [
      ["org_id", "text"],
      ["meter", "text"],
      ["resource", "text"],
      ["last_timestamp", "timestamptz"],
      ["last_quantity", "numeric"],
    ],
    dirty.map((g) => [g.orgId, g.meter, g.resource, g.at, formatScaled(g.gb, 6)]),
  );
  return {
    name: "usage:gauges",
    statement: q`insert into storage_gauges (org_id, meter, resource, last_timestamp, last_quantity)
      ${source}
      on conflict (org_id, meter, resource) do update
        set last_timestamp = excluded.last_timestamp, last_quantity = excluded.last_quantity
      returning 1`,
  };
}

function describe(e: PreparedEvent): string {
  if (e.type === "ai_tokens") return `${e.model}${e.operation ? ` · ${e.operation}` : ""}`;
  return `${e.meter}${e.resource ? ` · ${e.resource}` : ""}`;
}

const EVENT_COLUMNS = [
  ["org_id", "text"],
  ["id", "text"],
  ["type", "text"],
  ["timestamp", "timestamptz"],
  ["timestamp_defaulted", "boolean"],
  ["user_id", "text"],
  ["operation", "text"],
  ["model", "text"],
  ["meter", "text"],
  ["resource", "text"],
  ["quantity", "numeric"],
  ["billed_quantity", "numeric"],
  ["input_tokens", "bigint"],
  ["cached_input_tokens", "bigint"],
  ["cache_write_tokens", "bigint"],
  ["output_tokens", "bigint"],
  ["provider_usage", "jsonb"],
  ["metadata", "jsonb"],
  ["cost", "numeric"],
  ["price_version", "integer"],
  ["transaction_id", "text"],
  ["reservation_id", "text"],
  ["payload_hash", "text"],
  ["received_at", "timestamptz"],
] as const satisfies readonly Column[];

const EVENTS_STEP = "usage:events";

/** The accepted events; an id stored already is skipped (and shows in the count). */
function insertEvents(
  accepted: readonly Accepted[],
  requests: readonly IngestRequest[],
  nowOf: (orgId: string) => Date,
): WriteStep {
  const rows = accepted.map((a) => {
    const e = a.event;
    return [
      e.orgId,
      e.id,
      e.type,
      e.timestamp,
      e.timestampDefaulted,
      e.userId,
      e.operation,
      e.model,
      e.meter,
      e.resource,
      e.quantity === null ? null : formatScaled(e.quantity, 6),
      a.billedQuantity === null ? null : formatScaled(a.billedQuantity, 12),
      e.tokens?.input ?? null,
      e.tokens?.cached_input ?? null,
      e.tokens?.cache_write ?? null,
      e.tokens?.output ?? null,
      e.providerUsage === null ? null : JSON.stringify(e.providerUsage),
      e.metadata === null ? null : JSON.stringify(e.metadata),
      creditsToDb(a.cost),
      e.priceVersion,
      a.transactionId,
      requests[a.requestIndex]!.reservation?.id ?? null,
      e.payloadHash,
      nowOf(e.orgId),
    ];
  });
  return {
    name: EVENTS_STEP,
    statement: q`insert into usage_events (${join(EVENT_COLUMNS.map(([c]) => ident(c)))})
      ${unnestRows(EVENT_COLUMNS, rows)}
      on conflict (org_id, id) do nothing
      returning 1`,
  };
}

interface RollupRow {
  org_id: string;
  period: string;
  type: string;
  model: string;
  operation: string;
  user_id: string;
  resource: string;
  meter: string;
  unit: string;
  quantity: bigint;
  input_tokens: bigint;
  cached_input_tokens: bigint;
  cache_write_tokens: bigint;
  output_tokens: bigint;
  cost: bigint;
  events: bigint;
}

/**
 * Monthly rollups (all dimensions) and daily cost per type, aggregated in memory first (one row
 * per key, as one statement may not upsert a row twice).
 */
function upsertRollups(accepted: readonly Accepted[]): WriteStep[] {
  const monthly = new Map<string, RollupRow>();
  const daily = new Map<
    string,
    { org_id: string; day: string; type: string; cost: bigint; events: bigint }
  >();
  for (const a of accepted) {
    const e = a.event;
    const iso = isoString(e.timestamp);
    const period = `${iso.slice(0, 7)}-01`;
    const k = `${e.orgId}\u0000${period}\u0000${e.type}\u0000${e.model ?? ""}\u0000${e.operation ?? ""}\u0000${e.userId ?? ""}\u0000${e.resource ?? ""}\u0000${e.meter ?? ""}\u0000${e.unit}`;
    let row = monthly.get(k);
    if (!row) {
      row = {
        org_id: e.orgId,
        period,
        type: e.type,
        model: e.model ?? "",
        operation: e.operation ?? "",
        user_id: e.userId ?? "",
        resource: e.resource ?? "",
        meter: e.meter ?? "",
        unit: e.unit,
        quantity: 0n,
        input_tokens: 0n,
        cached_input_tokens: 0n,
        cache_write_tokens: 0n,
        output_tokens: 0n,
        cost: 0n,
        events: 0n,
      };
      monthly.set(k, row);
    }
    row.quantity += quantityOf(a);
    if (e.tokens) {
      row.input_tokens += e.tokens.input;
      row.cached_input_tokens += e.tokens.cached_input;
      row.cache_write_tokens += e.tokens.cache_write;
      row.output_tokens += e.tokens.output;
    }
    row.cost += a.cost;
    row.events += 1n;

    const day = iso.slice(0, 10);
    const dk = `${e.orgId}\u0000${day}\u0000${e.type}`;
    const d = daily.get(dk) ?? { org_id: e.orgId, day, type: e.type, cost: 0n, events: 0n };
    d.cost += a.cost;
    d.events += 1n;
    daily.set(dk, d);
  }

  const monthlySource = unnestRows(
    ROLLUP_COLUMNS,
    [...monthly.values()].map((r) => [
      r.org_id,
      r.period,
      r.type,
      r.model,
      r.operation,
      r.user_id,
      r.resource,
      r.meter,
      r.unit,
      creditsToDb(r.quantity),
      r.input_tokens,
      r.cached_input_tokens,
      r.cache_write_tokens,
      r.output_tokens,
      creditsToDb(r.cost),
      r.events,
    ]),
  );
  const dailySource = unnestRows(
    [
      ["org_id", "text"],
      ["day", "date"],
      ["type", "text"],
      ["cost", "numeric"],
      ["events", "bigint"],
    ],
    [...daily.values()].map((d) => [d.org_id, d.day, d.type, creditsToDb(d.cost), d.events]),
  );
  const add = (c: string) => q`${ident(c)} = usage_rollups.${ident(c)} + excluded.${ident(c)}`;
  return [
    {
      name: "usage:rollups",
      statement: q`insert into usage_rollups (${join(ROLLUP_COLUMNS.map(([c]) => ident(c)))})
        ${monthlySource}
        on conflict (org_id, period, type, model, operation, user_id, resource, meter, unit) do update
          set ${join(ROLLUP_SUMS.map(add))}
        returning 1`,
    },
    {
      name: "usage:daily",
      statement: q`insert into usage_daily (org_id, day, type, cost, events)
        ${dailySource}
        on conflict (org_id, day, type) do update
          set cost = usage_daily.cost + excluded.cost, events = usage_daily.events + excluded.events
        returning 1`,
    },
  ];
}

const ROLLUP_COLUMNS = [
  ["org_id", "text"],
  ["period", "date"],
  ["type", "text"],
  ["model", "text"],
  ["operation", "text"],
  ["user_id", "text"],
  ["resource", "text"],
  ["meter", "text"],
  ["unit", "text"],
  ["quantity", "numeric"],
  ["input_tokens", "bigint"],
  ["cached_input_tokens", "bigint"],
  ["cache_write_tokens", "bigint"],
  ["output_tokens", "bigint"],
  ["cost", "numeric"],
  ["events", "bigint"],
] as const satisfies readonly Column[];

const ROLLUP_SUMS = [
  "quantity",
  "input_tokens",
  "cached_input_tokens",
  "cache_write_tokens",
  "output_tokens",
  "cost",
  "events",
] as const;

/** Rollup quantity, × 10^12: total tokens, the meter quantity, or GB-hours billed. */
function quantityOf(a: Accepted): bigint {
  const e = a.event;
  if (e.tokens) {
    return (
      (e.tokens.input + e.tokens.cached_input + e.tokens.cache_write + e.tokens.output) * 10n ** 12n
    );
  }
  if (e.type === "storage") return a.billedQuantity ?? 0n;
  return (e.quantity ?? 0n) * 10n ** 6n;
}
