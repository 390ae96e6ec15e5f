import type { AppContext } from "../../app/context.js";
import { fail, ok, type Result } from "../../app/errors.js";
import type { Claim } from "../../app/idempotency.js";
import { q, type Sql } from "../../db/bulk.js";
import type { Db } from "../../db/index.js";
import { type Credits, creditsFromDb, creditsToDb } from "../ledger/credits.js";
import { openLedgers, saveLedgers } from "../ledger/ledger.service.js";
import type { OrgLedger } from "../ledger/posting.js";
import type { Principal } from "../orgs/auth.js";
import type { IngestEngine, IngestOutcome, IngestResult } from "./engine.js";
import { prepareEvents } from "./prepare.js";
import type { UsageEventInput } from "./usage.schemas.js";
import type { ReservationsTable } from "./usage.tables.js";

export type Reservation = ReservationsTable;

/** Validates, prices and records events; resolves after they are durable and deducted. */
export async function ingestUsage(
  ctx: AppContext,
  engine: IngestEngine,
  principal: Principal,
  events: readonly UsageEventInput[],
  pointer: (index: number) => string,
  claim: Claim | null = null,
): Promise<IngestOutcome> {
  const recorded = new Map<number, IngestResult>();
  const prepared = await prepareEvents(ctx, principal, events, pointer, { recorded });
  if (recorded.size === 0)
    return engine.submit({ events: prepared, actor: principal.actor, claim });
  // Some events were answered from their stored rows; the others go to the engine as usual.
  const outcome: IngestOutcome =
    prepared.length > 0
      ? await engine.submit({ events: prepared, actor: principal.actor, claim })
      : { ok: true, results: [], settledCost: 0n };
  if (!outcome.ok) return outcome;
  const fresh = outcome.results.values();
  return {
    ...outcome,
    results: events.map((_e, i) => recorded.get(i) ?? fresh.next().value!),
  };
}

/** The `usage` ledger entry of a stored usage event (the ledger's reference filter asks). */
export async function usageEntryOfEvent(
  db: Db,
  orgId: string,
  eventId: string,
): Promise<string | null> {
  const row = await db
    .selectFrom("usage_events")
    .select("transaction_id")
    .where("org_id", "=", orgId)
    .where("id", "=", eventId)
    .executeTakeFirst();
  return row?.transaction_id ?? null;
}

export const MAX_HOLD_SECONDS = 86_400;

/**
 * Holds credits before expensive work. Admission: available + overdraft_limit ≥ amount, checked
 * under the organisation's balance lock so concurrent holds never over-reserve.
 */
export async function createReservation(
  ctx: AppContext,
  input: {
    orgId: string;
    amount: Credits;
    expiresInSeconds: number;
    description: string | null;
    principal: Principal;
  },
): Promise<Result<Reservation, "insufficient_credits">> {
  return ctx.db.transaction().execute(async (tx) => {
    // With blocks: credits past their expiry are expired first and never admit work.
    const ledger = (await openLedgers(tx, ctx, [input.orgId], { blocks: true })).get(input.orgId)!;
    await expireOverdueHolds(tx, ledger);
    await saveLedgers(tx, [ledger]);
    // The limit as it is now, not as this instance's organisation cache last saw it.
    const { overdraft_limit } = await tx
      .selectFrom("organizations")
      .select("overdraft_limit")
      .where("id", "=", input.orgId)
      .executeTakeFirstOrThrow();
    if (ledger.available + creditsFromDb(overdraft_limit) < input.amount) {
      return fail("insufficient_credits", "Not enough credits available to reserve this amount.");
    }
    ledger.reserve(input.amount);
    const now = ledger.now;
    const row: Reservation = {
      org_id: input.orgId,
      id: ctx.ids.newId("rsv"),
      amount: creditsToDb(input.amount),
      status: "held",
      description: input.description,
      expires_at: new Date(now.getTime() + input.expiresInSeconds * 1000),
      actor_type: input.principal.actor.type,
      actor_id: input.principal.actor.id,
      user_id: input.principal.userId,
      settled_cost: null,
      created_at: now,
      closed_at: null,
    };
    await tx.insertInto("reservations").values(row).execute();
    await saveLedgers(tx, [ledger]);
    return ok(row);
  });
}

/** Settles a hold with the actual usage: events recorded as usual, the hold released. */
export async function settleReservation(
  ctx: AppContext,
  engine: IngestEngine,
  principal: Principal,
  orgId: string,
  reservationId: string,
  events: readonly UsageEventInput[],
  claim: Claim | null = null,
): Promise<IngestOutcome> {
  const prepared = await prepareEvents(ctx, principal, events, (i) => `/events/${i}`, {
    orgId,
  });
  return engine.submit({
    events: prepared,
    actor: principal.actor,
    reservation: { orgId, id: reservationId },
    claim,
  });
}

/** Releases a held reservation. One past its expiry has expired instead: `409 invalid_state`. */
export async function releaseReservation(
  ctx: AppContext,
  orgId: string,
  reservationId: string,
): Promise<Result<Reservation, "not_found" | "invalid_state">> {
  return ctx.db.transaction().execute(async (tx) => {
    const ledger = (await openLedgers(tx, ctx, [orgId], { blocks: false })).get(orgId)!;
    await expireOverdueHolds(tx, ledger);
    await saveLedgers(tx, [ledger]);
    const hold = await tx
      .selectFrom("reservations")
      .selectAll()
      .where("org_id", "=", orgId)
      .where("id", "=", reservationId)
      .forUpdate()
      .executeTakeFirst();
    if (!hold) return fail("not_found", "Reservation not found.");
    if (hold.status !== "held") return fail("invalid_state", `The reservation is ${hold.status}.`);
    ledger.release(creditsFromDb(hold.amount));
    const closed = await tx
      .updateTable("reservations")
      .set({ status: "released", closed_at: ledger.now })
      .where("org_id", "=", orgId)
      .where("id", "=", reservationId)
      .returningAll()
      .executeTakeFirstOrThrow();
    await saveLedgers(tx, [ledger]);
    return ok(closed);
  });
}

/**
 * THE expiry of holds: marks the organisation's holds past their expiry `expired` (closed when
 * they expired) and releases them on its ledger, opened under its lock — by the sweeper, and
 * before admission, a release or a refund reads them. Save the ledger before the transaction
 * commits. Returns how many expired.
 */
export async function expireOverdueHolds(tx: Db, ledger: OrgLedger): Promise<number> {
  const expired = await tx
    .updateTable("reservations")
    .set((eb) => ({ status: "expired", closed_at: eb.ref("expires_at") }))
    .where("org_id", "=", ledger.orgId)
    .where("status", "=", "held")
    .where("expires_at", "<=", ledger.now)
    .returning("amount")
    .execute();
  for (const r of expired) ledger.release(creditsFromDb(r.amount));
  return expired.length;
}

/** A hold past its expiry is over, whether or not the sweeper has marked it yet. */
export function isOverdue(hold: Pick<Reservation, "status" | "expires_at">, now: Date): boolean {
  return hold.status === "held" && hold.expires_at <= now;
}

/** SQL numeric: what `org_id`'s holds past their expiry at `now` still count in `reserved`. */
export function overdueHoldsExpression(orgId: string, now: Date): Sql {
  return q`coalesce((select sum(r.amount) from reservations as r
    where r.org_id = ${orgId} and r.status = 'held'
      and r.expires_at <= ${now.toISOString()}::timestamptz), 0)`;
}

/** Releases holds past their expiry, organisation by organisation; run periodically. */
export async function expireReservations(ctx: AppContext, limit = 500): Promise<number> {
  const due = await ctx.db
    .selectFrom("reservations")
    .select("org_id")
    .distinct()
    .where("status", "=", "held")
    .where("expires_at", "<=", ctx.clock.now())
    .limit(limit)
    .execute();
  let n = 0;
  for (const { org_id } of due) {
    // One organisation failing does not hold up the others' holds.
    try {
      n += await ctx.db.transaction().execute(async (tx) => {
        const ledger = (await openLedgers(tx, ctx, [org_id], { blocks: false })).get(org_id)!;
        const expired = await expireOverdueHolds(tx, ledger);
        await saveLedgers(tx, [ledger]);
        return expired;
      });
    } catch (err) {
      ctx.logger.error({ err, org_id }, "could not expire an organisation's holds");
    }
  }
  return n;
}
