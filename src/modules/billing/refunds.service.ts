import type { AppContext } from "../../app/context.js";
import { fail, ok, type Result } from "../../app/errors.js";
import type { PeriodicTask } from "../../app/workers.js";
import type { Db } from "../../db/index.js";
import { type Credits, creditsFromDb, creditsToDb, formatCredits } from "../ledger/credits.js";
import { openLedgers, type Posting, postEntries, saveLedgers } from "../ledger/ledger.service.js";
import { formatMoney } from "../ledger/money.js";
import type { Block, OrgLedger } from "../ledger/posting.js";
import { emitEvent } from "../notify/notify.service.js";
import type { Actor, Principal } from "../orgs/auth.js";
import { expireOverdueHolds } from "../usage/usage.service.js";
import * as repo from "./billing.repo.js";
import type { ProviderName, PurchaseStatus } from "./billing.tables.js";
import { paymentProvider } from "./providers/index.js";
import { PaymentProviderError, type RefundResult } from "./providers/provider.js";
import { bonusExpiry, purchaseEventData, unitCostOf } from "./purchase-figures.js";
import type { Purchase } from "./purchases.service.js";

/**
 * Refunds: money back for the unused paid credits of a purchase, and the purchase's remaining
 * paid and bonus credits voided with `refund` ledger entries.
 *
 * Order of work (`POST …/refund`):
 *   1. one transaction, under the organisation's ledger lock: compute the amount from the blocks'
 *      remaining credits, insert the refund (`pending`) and void the blocks;
 *   2. ask the processor to refund, idempotency key `refund:<refund_id>`;
 *   3. one transaction: the refund `succeeded`, the purchase `refunded`/`partially_refunded`,
 *      a `purchase.refunded` event.
 * Voiding *before* the money moves means the credits being paid back can never be spent in the
 * meantime (usage between computing the amount and voiding would otherwise be refunded too), and a
 * crash leaves money owed to the customer, recorded as a pending refund, rather than credits and
 * money both in their hands. A crash or processor outage after step 1 is finished by a retry of
 * the request or by `refundRecoveryTask` with the same idempotency key, so the processor refunds
 * once. If the processor refuses the refund for good, the refund becomes `failed` and the voided
 * credits are restored with `adjustment` entries.
 */

export type Refund = repo.RefundRow;

export interface RefundOutcome {
  refund: Refund;
  purchase: Purchase;
}

export interface RefundPurchaseInput {
  orgId: string;
  purchaseId: string;
  principal: Pick<Principal, "actor" | "userId">;
  reason: string | null;
}

/** Refunds are sent to the processor after this long without an answer (recovery task). */
export const REFUND_RETRY_AFTER_MS = 2 * 60_000;

const PROVIDER_ACTOR = (provider: ProviderName): Actor => ({ type: "system", id: provider });

/**
 * Money for the unused paid credits at the purchase's price: amount × remaining ÷ credits, exact
 * in bigint and rounded DOWN to the currency's minor unit (the customer never gets back more than
 * the unused share; at most one minor unit less).
 */
export function refundAmountMinor(
  amountMinor: bigint,
  paidCredits: Credits,
  remainingPaid: Credits,
): bigint {
  if (paidCredits <= 0n) throw new RangeError("paid credits must be positive");
  if (remainingPaid < 0n || remainingPaid > paidCredits) {
    throw new RangeError("remaining paid credits must be within 0..credits");
  }
  return (amountMinor * remainingPaid) / paidCredits;
}

export async function refundPurchase(
  ctx: AppContext,
  input: RefundPurchaseInput,
): Promise<
  Result<
    RefundOutcome,
    "not_found" | "invalid_state" | "insufficient_credits" | "service_unavailable"
  >
> {
  const started = await ctx.db.transaction().execute((tx) => startRefund(tx, ctx, input));
  if (!started.ok) return started;
  return completeRefund(ctx, started.value);
}

/** Step 1. Returns the unfinished refund of this purchase instead when there is one (a retry). */
async function startRefund(
  tx: Db,
  ctx: AppContext,
  input: RefundPurchaseInput,
): Promise<Result<Refund, "not_found" | "invalid_state" | "insufficient_credits">> {
  const { orgId, purchaseId } = input;
  const seen = await repo.findPurchase(tx, orgId, purchaseId);
  if (!seen) return fail("not_found", "Purchase not found.");
  // Refusing an unpaid purchase before taking any lock also keeps this transaction (ledger →
  // purchase) from deadlocking with a concurrent fulfilment of it (purchase → ledger).
  if (!(["paid", "refunded", "partially_refunded"] as PurchaseStatus[]).includes(seen.status)) {
    return fail(
      "invalid_state",
      `Only paid purchases can be refunded; this one is ${seen.status}.`,
    );
  }
  // Ledger lock first, then the purchase: the order every refund path uses.
  const ledger = (await openLedgers(tx, ctx, [orgId], { blocks: true })).get(orgId)!;
  const purchase = (await repo.lockPurchase(tx, orgId, purchaseId))!;
  const unfinished = (await repo.refundsOfPurchase(tx, orgId, purchaseId)).find(
    (r) => r.origin === "api" && r.status === "pending" && r.provider_refund_id === null,
  );
  if (unfinished) {
    await saveLedgers(tx, [ledger]);
    return ok(unfinished);
  }
  switch (purchase.status) {
    case "paid":
      break;
    case "refunded":
    case "partially_refunded":
      return fail("invalid_state", "The purchase has already been refunded.");
    default:
      return fail(
        "invalid_state",
        `Only paid purchases can be refunded; this one is ${purchase.status}.`,
      );
  }
  const provider = paymentProvider(ctx);
  if (purchase.provider !== provider.name || !purchase.provider_payment_id) {
    return fail(
      "invalid_state",
      `The purchase was paid through ${purchase.provider}, which is not the configured payment processor.`,
    );
  }

  const blocks = purchaseBlocks(ledger, purchase.id);
  const remainingPaid = sum(blocks.filter((b) => b.source === "purchase"));
  const amount = refundAmountMinor(
    BigInt(purchase.amount_minor),
    creditsFromDb(purchase.credits),
    remainingPaid,
  );
  if (amount === 0n) {
    return fail("invalid_state", "No unused paid credits remain: there is nothing to refund.");
  }
  // Credits held by open reservations pay for work under way: a refund may not take them (as a
  // negative adjustment may not), or that work would end in debt. Holds past their expiry are
  // over first.
  await expireOverdueHolds(tx, ledger);
  await saveLedgers(tx, [ledger]);
  const removing = sum(blocks);
  if (ledger.reserved > 0n && ledger.available < removing) {
    return fail(
      "insufficient_credits",
      `The refund would remove ${formatCredits(removing)} credits, but only ${formatCredits(ledger.available)} are not held by open reservations (${formatCredits(ledger.reserved)} held). Settle or release them first.`,
    );
  }

  const now = ctx.clock.now();
  const refund: Refund = {
    org_id: orgId,
    id: ctx.ids.newId("ref"),
    purchase_id: purchase.id,
    origin: "api",
    status: "pending",
    provider: purchase.provider,
    provider_refund_id: null,
    amount_minor: amount.toString(),
    currency: purchase.currency,
    credits_removed: creditsToDb(remainingPaid),
    bonus_removed: creditsToDb(sum(blocks.filter((b) => b.source !== "purchase"))),
    reason: input.reason,
    user_id: input.principal.userId,
    actor_type: input.principal.actor.type,
    actor_id: input.principal.actor.id,
    created_at: now,
    updated_at: now,
  };
  await repo.insertRefund(tx, refund);
  voidBlocks(ledger, blocks, refund, purchase, {
    actor: input.principal.actor,
    userId: input.principal.userId,
    reason: input.reason,
  });
  await saveLedgers(tx, [ledger]);
  return ok(refund);
}

/** Steps 2 and 3 for a pending refund the processor has not acknowledged yet. */
export async function completeRefund(
  ctx: AppContext,
  refund: Refund,
): Promise<Result<RefundOutcome, "invalid_state" | "service_unavailable">> {
  const purchase = (await repo.findPurchase(ctx.db, refund.org_id, refund.purchase_id))!;
  let result: RefundResult;
  try {
    result = await paymentProvider(ctx).refund({
      paymentId: purchase.provider_payment_id!,
      amountMinor: BigInt(refund.amount_minor),
      idempotencyKey: `refund:${refund.id}`,
      metadata: { refund_id: refund.id, purchase_id: purchase.id, org_id: refund.org_id },
    });
  } catch (error) {
    if (error instanceof PaymentProviderError && error.code === "charge_already_refunded") {
      // The whole payment was refunded at the processor (e.g. in the Stripe dashboard) while this
      // refund waited. Its notice found this refund pending and counted it as covering that much,
      // so this refund stands, without a processor id: the money is back, the credits stay voided.
      ctx.logger.warn({ refund_id: refund.id }, "payment already refunded at the processor");
      result = { refundId: null, status: "succeeded" };
    } else if (error instanceof PaymentProviderError && !error.retryable) {
      ctx.logger.error({ err: error, refund_id: refund.id }, "the processor refused a refund");
      return refuseRefund(ctx, refund, error.message);
    } else {
      ctx.logger.warn({ err: error, refund_id: refund.id }, "refund not acknowledged; will retry");
      return fail(
        "service_unavailable",
        `The payment processor is unavailable. Refund ${refund.id} is pending and will be completed automatically; retrying this request completes it now.`,
      );
    }
  }
  if (result.status === "failed") {
    return refuseRefund(ctx, refund, "the processor declined the refund");
  }
  return ctx.db.transaction().execute(async (tx) => {
    const now = ctx.clock.now();
    const acknowledged = await repo.updateRefund(
      tx,
      refund.org_id,
      refund.id,
      {
        // `pending` at the processor (slow refund methods) is final for Tally: the money is on
        // its way, the credits are gone.
        status: result.status === "succeeded" ? "succeeded" : "pending",
        provider_refund_id: result.refundId,
        updated_at: now,
      },
      { status: "pending", unacknowledged: true },
    );
    if (!acknowledged) return currentOutcome(tx, refund);
    const locked = (await repo.lockPurchase(tx, refund.org_id, refund.purchase_id))!;
    const refundedMinor = min(
      BigInt(locked.refunded_minor) + BigInt(refund.amount_minor),
      BigInt(locked.amount_minor),
    );
    const updated = (await repo.updatePurchase(tx, refund.org_id, refund.purchase_id, {
      status: refundedStatus(refundedMinor, BigInt(locked.amount_minor)),
      refunded_minor: refundedMinor.toString(),
      updated_at: now,
    }))!;
    await emitRefunded(tx, ctx, updated, acknowledged);
    return ok({ refund: acknowledged, purchase: updated });
  });
}

/** The processor will not refund: the refund fails and the voided credits come back. */
async function refuseRefund(
  ctx: AppContext,
  refund: Refund,
  why: string,
): Promise<Result<RefundOutcome, "invalid_state">> {
  return ctx.db.transaction().execute(async (tx) => {
    const now = ctx.clock.now();
    const failed = await repo.updateRefund(
      tx,
      refund.org_id,
      refund.id,
      { status: "failed", updated_at: now },
      { status: "pending", unacknowledged: true },
    );
    if (!failed) return currentOutcome(tx, refund);
    const purchase = (await repo.findPurchase(tx, refund.org_id, refund.purchase_id))!;
    const meta = {
      actor: { type: "system", id: "tally" } as Actor,
      userId: refund.user_id,
      reason: `Refund ${refund.id} refused by the payment processor: ${why}`.slice(0, 500),
      reference: { type: "refund", id: refund.id },
    };
    const postings: Posting[] = [];
    const paid = creditsFromDb(refund.credits_removed);
    if (paid > 0n) {
      postings.push({
        kind: "credit",
        type: "adjustment",
        amount: paid,
        block: {
          source: "purchase",
          unitCost: unitCostOf(
            BigInt(purchase.amount_minor),
            purchase.currency,
            creditsFromDb(purchase.credits),
          ),
          purchaseId: purchase.id,
        },
        description: `Credits of ${purchase.package_name} restored`,
        ...meta,
      });
    }
    const bonus = creditsFromDb(refund.bonus_removed);
    const expiresAt = bonusExpiry(purchase, purchase.paid_at ?? now);
    if (bonus > 0n && (expiresAt === null || expiresAt > now)) {
      postings.push({
        kind: "credit",
        type: "adjustment",
        amount: bonus,
        block: { source: "bonus", unitCost: "0", purchaseId: purchase.id, expiresAt },
        description: `Bonus credits of ${purchase.package_name} restored`,
        ...meta,
      });
    }
    if (postings.length > 0) {
      const posted = await postEntries(tx, ctx, refund.org_id, postings);
      if (!posted.ok) throw new Error(`could not restore refunded credits: ${posted.code}`);
    }
    return fail(
      "invalid_state",
      `The payment processor refused the refund (${why}); the credits were restored.`,
    );
  });
}

/** Another caller (a concurrent retry, the recovery task) finished this refund first. */
async function currentOutcome(
  tx: Db,
  refund: Refund,
): Promise<Result<RefundOutcome, "invalid_state">> {
  const current = (await repo.findRefund(tx, refund.org_id, refund.id))!;
  const purchase = (await repo.findPurchase(tx, refund.org_id, refund.purchase_id))!;
  if (current.status === "failed") {
    return fail("invalid_state", "The payment processor refused the refund.");
  }
  return ok({ refund: current, purchase });
}

/**
 * Finishes refunds that were started but never acknowledged by the processor (a crash or an
 * outage between the two transactions), with their original idempotency keys.
 */
export async function resumePendingRefunds(ctx: AppContext, limit = 50): Promise<number> {
  const before = new Date(ctx.clock.now().getTime() - REFUND_RETRY_AFTER_MS);
  const pending = await repo.unacknowledgedRefunds(ctx.db, before, limit);
  let finished = 0;
  for (const refund of pending) {
    const result = await completeRefund(ctx, refund);
    if (result.ok || result.code === "invalid_state") finished++;
  }
  return finished;
}

/**
 * A refund notice kept for a payment no purchase carries (`refund_notices`) is dropped after this
 * long: a payment's own notification is retried for 3 days at most.
 */
export const REFUND_NOTICE_RETENTION_DAYS = 90;

/** Finishes pending refunds, and drops refund notices past their retention. */
export const refundRecoveryTask: PeriodicTask = {
  name: "refund-recovery",
  everyMs: 60_000,
  run: async (ctx) => {
    await resumePendingRefunds(ctx);
    await applyKeptRefunds(ctx);
    const before = ctx.clock.now().getTime() - REFUND_NOTICE_RETENTION_DAYS * 86_400_000;
    await repo.purgeRefundNotices(ctx.db, new Date(before));
  },
};

/**
 * Kept refund notices whose payment a purchase now carries: applied here. Normally the payment
 * takes its notice as it is applied; this catches one left by a crash or by an earlier version
 * that had no `lockPayment`.
 */
export async function applyKeptRefunds(ctx: AppContext): Promise<number> {
  let applied = 0;
  for (const purchase of await repo.purchasesWithRefundNotices(ctx.db, 100)) {
    const outcome = await ctx.db.transaction().execute(async (tx) => {
      await repo.lockPayment(tx, purchase.provider, purchase.provider_payment_id!);
      return applyKeptRefundInTx(tx, ctx, purchase);
    });
    if (outcome?.status === "processed") applied++;
  }
  return applied;
}

export interface ProviderRefundNotice {
  provider: ProviderName;
  paymentId: string;
  /** Everything refunded on the payment so far, per the processor (cumulative, minor units). */
  refundedTotalMinor: bigint;
  currency: string;
}

export type ReflectOutcome =
  | { status: "processed"; orgId: string; refund: Refund }
  | { status: "ignored"; orgId: string | null; reason: string };

/**
 * A purchase just paid: a refund the processor notified before the payment was applied is
 * applied now, in the caller's transaction (the credits just granted are voided).
 */
export async function applyKeptRefundInTx(
  tx: Db,
  ctx: AppContext,
  purchase: Purchase,
): Promise<ReflectOutcome | null> {
  if (!purchase.provider_payment_id) return null;
  const kept = await repo.takeRefundNotice(tx, purchase.provider, purchase.provider_payment_id);
  if (!kept) return null;
  return reflectProviderRefundInTx(tx, ctx, {
    provider: kept.provider,
    paymentId: kept.payment_id,
    refundedTotalMinor: BigInt(kept.refunded_total_minor),
    currency: kept.currency,
  });
}

/**
 * A refund made at the processor (e.g. in the Stripe dashboard), in the caller's transaction.
 * Notifications carry the cumulative refunded amount, so the new part is what exceeds every
 * refund Tally already knows of (including its own API refunds, pending ones too, which the
 * processor also reports): repeats and out-of-order notifications change nothing.
 *
 * Tally cannot tell which credits a refund made elsewhere was meant to cover, so it takes the
 * safe reading: every remaining paid and bonus credit of the purchase is voided (`refund`
 * entries), whatever the amount. An operator who meant a goodwill partial refund re-grants
 * credits with an adjustment.
 */
export async function reflectProviderRefundInTx(
  tx: Db,
  ctx: AppContext,
  notice: ProviderRefundNotice,
): Promise<ReflectOutcome> {
  // A payment being applied meanwhile either committed (found below) or takes the notice kept
  // below once this transaction ends.
  await repo.lockPayment(tx, notice.provider, notice.paymentId);
  const found = await repo.findPurchaseByPaymentId(tx, notice.provider, notice.paymentId);
  if (!found) {
    // The payment's own notification may be late (or retried after a failure): keep the refund
    // until a purchase is paid with this payment (`applyKeptRefundInTx`). A payment that is not
    // Tally's (another product on the same account) leaves a row nobody takes.
    await repo.keepRefundNotice(tx, {
      provider: notice.provider,
      payment_id: notice.paymentId,
      refunded_total_minor: notice.refundedTotalMinor.toString(),
      currency: notice.currency.toUpperCase(),
      received_at: ctx.clock.now(),
    });
    return { status: "ignored", orgId: null, reason: "no purchase for this payment yet" };
  }
  const orgId = found.org_id;
  if (found.currency !== notice.currency.toUpperCase()) {
    return { status: "ignored", orgId, reason: "currency does not match the purchase" };
  }
  const ledger = (await openLedgers(tx, ctx, [orgId], { blocks: true })).get(orgId)!;
  const purchase = (await repo.lockPurchase(tx, orgId, found.id))!;
  const known = (await repo.refundsOfPurchase(tx, orgId, purchase.id))
    .filter((r) => r.status !== "failed")
    .reduce((total, r) => total + BigInt(r.amount_minor), 0n);
  const amountMinor = BigInt(purchase.amount_minor);
  const extra = min(notice.refundedTotalMinor, amountMinor) - known;
  if (extra <= 0n) {
    await saveLedgers(tx, [ledger]);
    return { status: "ignored", orgId, reason: "refund already recorded" };
  }
  if (!(["paid", "refunded", "partially_refunded"] as PurchaseStatus[]).includes(purchase.status)) {
    await saveLedgers(tx, [ledger]);
    return { status: "ignored", orgId, reason: `purchase is ${purchase.status}` };
  }

  const now = ctx.clock.now();
  const blocks = purchaseBlocks(ledger, purchase.id);
  const actor = PROVIDER_ACTOR(notice.provider);
  const refund: Refund = {
    org_id: orgId,
    id: ctx.ids.newId("ref"),
    purchase_id: purchase.id,
    origin: "provider",
    status: "succeeded",
    provider: notice.provider,
    provider_refund_id: null,
    amount_minor: extra.toString(),
    currency: purchase.currency,
    credits_removed: creditsToDb(sum(blocks.filter((b) => b.source === "purchase"))),
    bonus_removed: creditsToDb(sum(blocks.filter((b) => b.source !== "purchase"))),
    reason: `Refunded at ${notice.provider}`,
    user_id: null,
    actor_type: actor.type,
    actor_id: actor.id,
    created_at: now,
    updated_at: now,
  };
  await repo.insertRefund(tx, refund);
  voidBlocks(ledger, blocks, refund, purchase, { actor, userId: null, reason: refund.reason });
  await saveLedgers(tx, [ledger]);
  const refundedMinor = min(BigInt(purchase.refunded_minor) + extra, amountMinor);
  const updated = (await repo.updatePurchase(tx, orgId, purchase.id, {
    status: refundedStatus(min(notice.refundedTotalMinor, amountMinor), amountMinor),
    refunded_minor: refundedMinor.toString(),
    updated_at: now,
  }))!;
  await emitRefunded(tx, ctx, updated, refund);
  return { status: "processed", orgId, refund };
}

// ---- helpers --------------------------------------------------------------------------------

/** The purchase's paid and bonus blocks that still hold credits (restored ones included). */
function purchaseBlocks(ledger: OrgLedger, purchaseId: string): Block[] {
  return ledger
    .activeBlocks()
    .filter(
      (b) =>
        b.purchase_id === purchaseId &&
        (b.source === "purchase" || b.source === "bonus") &&
        b.remaining > 0n,
    );
}

function sum(blocks: readonly Block[]): Credits {
  return blocks.reduce((total, b) => total + b.remaining, 0n);
}

function voidBlocks(
  ledger: OrgLedger,
  blocks: readonly Block[],
  refund: Refund,
  purchase: Purchase,
  meta: { actor: Actor; userId: string | null; reason: string | null },
): void {
  for (const block of blocks) {
    const outcome = ledger.apply({
      kind: "void",
      type: "refund",
      blockId: block.id,
      ...meta,
      description: `Refund ${refund.id}: ${block.source === "bonus" ? "bonus " : ""}credits of ${purchase.package_name} (${purchase.id})`,
      reference: { type: "refund", id: refund.id },
    });
    if (!outcome.ok) throw new Error(`could not void block ${block.id}: ${outcome.code}`);
  }
}

function refundedStatus(refundedMinor: bigint, amountMinor: bigint): PurchaseStatus {
  return refundedMinor >= amountMinor ? "refunded" : "partially_refunded";
}

function min(a: bigint, b: bigint): bigint {
  return a < b ? a : b;
}

/** The figures of a refund as the API and the `purchase.refunded` event show them. */
export function refundFigures(refund: Refund) {
  const paid = creditsFromDb(refund.credits_removed);
  const bonus = creditsFromDb(refund.bonus_removed);
  return {
    refund_id: refund.id,
    amount: formatMoney({ minor: BigInt(refund.amount_minor), currency: refund.currency }),
    currency: refund.currency,
    credits_removed: formatCredits(paid + bonus),
    paid_credits_removed: formatCredits(paid),
    bonus_credits_removed: formatCredits(bonus),
    origin: refund.origin,
    reason: refund.reason,
  };
}

async function emitRefunded(tx: Db, ctx: AppContext, purchase: Purchase, refund: Refund) {
  await emitEvent(tx, ctx, {
    type: "purchase.refunded",
    orgId: purchase.org_id,
    data: {
      ...purchaseEventData(purchase),
      refund: { ...refundFigures(refund), status: refund.status },
    },
  });
}
