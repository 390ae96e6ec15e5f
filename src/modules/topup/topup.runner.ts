import type { AppContext } from "../../app/context.js";
import type { PeriodicTask } from "../../app/workers.js";
import {
  chargeOffSessionPurchase,
  createOffSessionPurchase,
  findPurchaseIn,
} from "../billing/offsession.service.js";
import { PaymentProviderError, paymentProvider } from "../billing/providers/index.js";
import { failPurchase, fulfilPurchase, type Purchase } from "../billing/purchases.service.js";
import {
  type Job,
  jobRunnerFor,
  PermanentJobError,
  type QueueOptions,
} from "../notify/notify.service.js";
import * as repo from "./topup.repo.js";
import {
  markActionRequired,
  markFailed,
  markPending,
  markSucceeded,
  reconcileAttempt,
  refusalBeforeCharge,
  TOPUP_QUEUE,
  type TopupAttempt,
} from "./topup.service.js";

/**
 * The `topup.charge` job: performs one attempt after the transaction that started it committed.
 * Every step can run again after a crash without doing anything twice: the purchase is linked
 * to the attempt in the transaction that creates it, the charge carries the idempotency key
 * `topup:<attempt id>` (the processor returns the first outcome), `fulfilPurchase` grants once
 * per payment id, and the attempt's status changes are guarded.
 */

export interface ChargePayload {
  attemptId: string;
}

export const TOPUP_QUEUE_OPTIONS: QueueOptions = {
  // Processor faults: retried from 30 s doubling to 30 min for a day, then the attempt fails.
  backoff: { baseMs: 30_000, maxMs: 30 * 60_000, jitter: 0.25 },
  maxAgeMs: 24 * 60 * 60_000,
  onDead: async (job, error, ctx) => {
    const { attemptId } = (job.payload ?? {}) as Partial<ChargePayload>;
    if (!job.orgId || !attemptId) return;
    const attempt = await repo.findAttempt(ctx.db, job.orgId, attemptId);
    if (!attempt) return;
    if (attempt.purchase_id) {
      await failPurchase(ctx, attempt.org_id, attempt.purchase_id, {
        code: "processor_error",
        message: error,
      });
    }
    await markFailed(ctx.db, ctx, attempt, {
      error: `The payment could not be made: ${error}`,
      countsAsFailure: false,
    });
  },
};

export function sandboxActionUrl(ctx: AppContext, attemptId: string): string {
  return `${ctx.config.publicUrl}/sandbox/auto-topup/${encodeURIComponent(attemptId)}`;
}

export async function chargeTopupAttempt(job: Job<ChargePayload>, ctx: AppContext): Promise<void> {
  if (!job.orgId) throw new PermanentJobError("topup job without an organisation");
  let attempt = await repo.findAttempt(ctx.db, job.orgId, job.payload.attemptId);
  if (attempt?.status !== "in_flight") return;

  const purchase = await purchaseOf(ctx, attempt);
  if (!purchase) return;
  attempt = { ...attempt, purchase_id: purchase.id };

  let result: Awaited<ReturnType<typeof chargeOffSessionPurchase>>;
  try {
    result = await chargeOffSessionPurchase(ctx, purchase, `topup:${attempt.id}`, {
      topup_attempt_id: attempt.id,
    });
  } catch (error) {
    if (error instanceof PaymentProviderError && !error.retryable) {
      throw new PermanentJobError(error.message);
    }
    throw error; // retried with the same key
  }

  switch (result.status) {
    case "succeeded": {
      const fulfilled = await fulfilPurchase(ctx, attempt.org_id, purchase.id, {
        providerPaymentId: result.paymentId,
      });
      if (!fulfilled.ok) {
        ctx.logger.error(
          { org_id: attempt.org_id, attempt_id: attempt.id, purchase_id: purchase.id },
          `auto-topup charged but not fulfilled: ${fulfilled.message}`,
        );
        throw new PermanentJobError(fulfilled.message ?? fulfilled.code);
      }
      await markSucceeded(ctx.db, ctx, attempt, fulfilled.value.purchase);
      return;
    }
    case "pending":
      // Settled by the processor's notification (billing calls onTopupPurchaseSettled) or by
      // the reconciliation task.
      await markPending(ctx.db, ctx, attempt, result.paymentId);
      return;
    case "declined":
      await failPurchase(ctx, attempt.org_id, purchase.id, {
        code: "card_declined",
        message: result.error,
      });
      await markFailed(ctx.db, ctx, attempt, { error: result.error, countsAsFailure: true });
      return;
    case "requires_action": {
      const actionUrl =
        result.actionUrl ??
        (paymentProvider(ctx).name === "sandbox" ? sandboxActionUrl(ctx, attempt.id) : null);
      await markActionRequired(ctx.db, ctx, attempt, {
        paymentId: result.paymentId,
        actionUrl,
        error: result.error ?? "The payment requires authentication by the customer.",
      });
      return;
    }
  }
}

/** The attempt's purchase, created (and linked, in one transaction) on the first run. */
async function purchaseOf(ctx: AppContext, attempt: TopupAttempt): Promise<Purchase | null> {
  if (attempt.purchase_id) {
    const existing = await findPurchaseIn(ctx.db, attempt.org_id, attempt.purchase_id);
    if (!existing) throw new PermanentJobError(`purchase ${attempt.purchase_id} is missing`);
    return existing;
  }
  return ctx.db.transaction().execute(async (tx) => {
    const refusal = await refusalBeforeCharge(tx, attempt);
    if (refusal) {
      await markFailed(tx, ctx, attempt, { error: refusal, countsAsFailure: false });
      return null;
    }
    const created = await createOffSessionPurchase(tx, ctx, {
      orgId: attempt.org_id,
      packageId: attempt.package_id,
    });
    if (!created.ok) {
      await markFailed(tx, ctx, attempt, {
        error: created.message,
        countsAsFailure: false,
        disableReason: `${created.reason}: ${created.message}`,
      });
      return null;
    }
    const linked = await tx
      .updateTable("topup_attempts")
      .set({
        purchase_id: created.purchase.id,
        amount_minor: created.purchase.amount_minor,
        updated_at: ctx.clock.now(),
      })
      .where("org_id", "=", attempt.org_id)
      .where("id", "=", attempt.id)
      .where("status", "=", "in_flight")
      .where("purchase_id", "is", null)
      .executeTakeFirst();
    // Another runner linked one first (a lease taken over): roll back ours, use theirs next run.
    if (linked.numUpdatedRows !== 1n) throw new Error("attempt already has a purchase");
    return created.purchase;
  });
}

/** Registers the `topup.charge` queue on the context's job runner. */
export function registerTopupJobs(ctx: AppContext): void {
  jobRunnerFor(ctx).register<ChargePayload>(TOPUP_QUEUE, chargeTopupAttempt, TOPUP_QUEUE_OPTIONS);
}

/**
 * Safety net for outcomes that arrive outside the job: a purchase that was paid, failed or
 * expired while its attempt still says in_flight / action_required (a missed processor
 * notification, a checkout completed by hand) brings the attempt in line.
 */
export async function reconcileOpenAttempts(ctx: AppContext, limit = 100): Promise<number> {
  const before = new Date(ctx.clock.now().getTime() - 60_000);
  const open = await repo.openAttempts(ctx.db, before, limit);
  for (const attempt of open) await reconcileAttempt(ctx, attempt);
  return open.length;
}

export const topupReconcileTask: PeriodicTask = {
  name: "topup-reconcile",
  everyMs: 60_000,
  run: (ctx) => reconcileOpenAttempts(ctx),
};
