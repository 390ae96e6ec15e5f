import type { AppContext } from "../../app/context.js";
import { fail, ok, type Result } from "../../app/errors.js";
import { type Db, inSnapshot } from "../../db/index.js";
import { alertEmails } from "../alerts/alerts.service.js";
import {
  cancelOffSessionPayment,
  findPackageIn,
  findPurchaseIn,
  savedPaymentMethod,
} from "../billing/offsession.service.js";
import type { Purchase } from "../billing/purchases.service.js";
import {
  type Credits,
  creditsFromDb,
  creditsToDb,
  DecimalFormatError,
  formatCredits,
} from "../ledger/credits.js";
import { formatMoney, parseMoney } from "../ledger/money.js";
import type { BalanceChange } from "../ledger/posting.js";
import {
  autoTopupActionRequiredEmail,
  autoTopupFailedEmail,
  type EmailContent,
  emitEvent,
  enqueueEmail,
  enqueueJob,
} from "../notify/notify.service.js";
import { resolveOrganization } from "../orgs/orgs.service.js";
import * as repo from "./topup.repo.js";

/**
 * Auto-topup: when a write leaves an organisation's balance at or below its threshold, buy the
 * configured package with the saved card.
 *
 * - **Deciding** happens in the balance observer, inside the transaction that changed the
 *   balance (it holds the organisation's balance lock): it inserts the attempt and its
 *   `topup.charge` job together, so an attempt exists exactly when the write committed. The
 *   unique partial index `topup_attempts (org_id) where status = 'in_flight'` makes a second
 *   attempt in flight impossible, across any number of instances.
 * - **The trigger is armed** per crossing: starting an attempt disarms it; the balance coming
 *   back above the threshold, a successful topup, or a decline that leaves auto-topup enabled
 *   (fewer than `max_failures` declines) re-arms it. So an authentication request, a processor
 *   fault or the monthly limit produce one attempt per downward crossing, not one per usage
 *   flush, and a declined card is tried again by the next write, up to `max_failures` in a row.
 *   After `skipped_limit` the trigger also re-arms in the next month.
 * - **Charging** happens in the job (after commit), with the idempotency key
 *   `topup:<attempt id>`: a crash or retry at any point asks the processor again with the same
 *   key and gets the same single charge back.
 */

export const TOPUP_QUEUE = "topup.charge";

export type TopupSettings = repo.SettingsRow;
export type TopupAttempt = repo.AttemptRow;
export type TopupStatus = "idle" | "in_flight" | "disabled";

export const enabledOrgsQuery = repo.enabledOrgsQuery;

// ---- calendar months (UTC) ------------------------------------------------------------------

export function monthKey(at: Date): string {
  return at.toISOString().slice(0, 7);
}

export function monthStart(at: Date): Date {
  return new Date(Date.UTC(at.getUTCFullYear(), at.getUTCMonth(), 1));
}

function nextMonthKey(at: Date): string {
  return monthKey(new Date(Date.UTC(at.getUTCFullYear(), at.getUTCMonth() + 1, 1)));
}

// ---- settings -------------------------------------------------------------------------------

export interface TopupSettingsView {
  enabled: boolean;
  threshold: Credits;
  packageId: string | null;
  currency: string;
  monthlyLimitMinor: bigint | null;
  maxFailures: number;
  failureCount: number;
  paymentMethod: { brand: string | null; last4: string | null } | null;
  status: TopupStatus;
  disabledReason: string | null;
  spentThisMonthMinor: bigint;
  updatedAt: Date | null;
}

export async function getTopupSettings(ctx: AppContext, orgId: string): Promise<TopupSettingsView> {
  // Four reads, one snapshot: a decline or a payment committing between them would show a state
  // that never was (enabled next to a failure that disabled it, in flight next to its charge).
  const { settings, card, inFlight, currency, spent } = await inSnapshot(ctx.db, async (tx) => {
    const settings = await repo.findSettings(tx, orgId);
    const card = await savedPaymentMethod(tx, ctx, orgId);
    const inFlight = await repo.hasInFlight(tx, orgId);
    const currency = settings?.currency ?? ctx.config.currency;
    const spent = await repo.sumAmounts(tx, orgId, currency, monthStart(ctx.clock.now()), [
      "succeeded",
    ]);
    return { settings, card, inFlight, currency, spent };
  });
  return {
    enabled: settings?.enabled ?? false,
    threshold: settings ? creditsFromDb(settings.threshold) : 0n,
    packageId: settings?.package_id ?? null,
    currency,
    monthlyLimitMinor:
      settings?.monthly_limit_minor == null ? null : BigInt(settings.monthly_limit_minor),
    maxFailures: settings?.max_failures ?? 1,
    failureCount: settings?.failure_count ?? 0,
    paymentMethod: card ? { brand: card.brand, last4: card.last4 } : null,
    status: inFlight ? "in_flight" : settings?.enabled ? "idle" : "disabled",
    disabledReason: settings?.disabled_reason ?? null,
    spentThisMonthMinor: spent,
    updatedAt: settings?.updated_at ?? null,
  };
}

export interface PutTopupInput {
  enabled: boolean;
  threshold?: Credits;
  packageId?: string;
  /** Money decimal string in the package's currency; null or absent = no limit. */
  monthlyLimit?: string | null;
  maxFailures?: number;
}

/**
 * Replaces the settings. `threshold` and `package_id` are required to enable; when disabling
 * they may be omitted (the previous ones are kept). `monthly_limit` and `max_failures` are
 * replaced (absent: no limit, 1). Enabling (again) re-arms the trigger and, when it was off,
 * clears the failure count and `disabled_reason`. It does not start an attempt by itself: the
 * next write that leaves the balance at or below the threshold does.
 */
export async function putTopupSettings(
  ctx: AppContext,
  orgId: string,
  input: PutTopupInput,
): Promise<Result<TopupSettingsView, "invalid_request" | "not_found" | "invalid_state">> {
  const existing = await repo.findSettings(ctx.db, orgId);
  const threshold = input.threshold ?? (existing ? creditsFromDb(existing.threshold) : undefined);
  const packageId = input.packageId ?? existing?.package_id;
  if (threshold === undefined || packageId === undefined) {
    if (!input.enabled && !existing) return ok(await getTopupSettings(ctx, orgId));
    const missing = [
      ...(threshold === undefined ? ["threshold"] : []),
      ...(packageId === undefined ? ["package_id"] : []),
    ];
    return fail(
      "invalid_request",
      `${missing.join(" and ")} required to enable auto-topup.`,
      missing.map((f) => ({ field: `/${f}`, message: "required when enabled is true" })),
    );
  }
  const pkg = await findPackageIn(ctx.db, packageId);
  if (!pkg) return fail("not_found", `Package "${packageId}" not found.`);
  if (input.enabled && !pkg.active) {
    return fail("invalid_state", "The package is not available for purchase.");
  }
  let limit: bigint | null = null;
  if (input.monthlyLimit != null) {
    try {
      limit = parseMoney(input.monthlyLimit, pkg.currency).minor;
    } catch (error) {
      if (!(error instanceof DecimalFormatError)) throw error;
      const message = `not a ${pkg.currency} amount (at most the currency's fractional digits)`;
      return fail("invalid_request", `monthly_limit is ${message}.`, [
        { field: "/monthly_limit", message },
      ]);
    }
  }
  if (input.enabled && !(await savedPaymentMethod(ctx.db, ctx, orgId))) {
    return fail(
      "invalid_state",
      "No saved payment method: buy credits once with save_payment_method: true first.",
    );
  }
  const now = ctx.clock.now();
  const wasOn = existing?.enabled ?? false;
  await repo.upsertSettings(ctx.db, {
    org_id: orgId,
    enabled: input.enabled,
    threshold: creditsToDb(threshold),
    package_id: pkg.id,
    currency: pkg.currency,
    monthly_limit_minor: limit === null ? null : limit.toString(),
    max_failures: input.maxFailures ?? 1,
    failure_count: input.enabled && wasOn ? (existing?.failure_count ?? 0) : 0,
    disabled_reason: input.enabled && wasOn ? (existing?.disabled_reason ?? null) : null,
    armed: true,
    rearm_month: null,
    created_at: existing?.created_at ?? now,
    updated_at: now,
  });
  return ok(await getTopupSettings(ctx, orgId));
}

/** For the balance view: off (never enabled or turned off), idle, in_flight or disabled. */
export const autoTopupExpression = repo.flagExpression;

export function listAttempts(
  ctx: AppContext,
  orgId: string,
  opts: { limit: number; before?: string },
) {
  return repo.listAttempts(ctx.db, orgId, opts);
}

// ---- the trigger (balance observer) ---------------------------------------------------------

/**
 * Called inside the balance-changing transaction for organisations with auto-topup enabled.
 * Row-lock order is attempt → settings everywhere (here and in the settle functions), so this
 * never deadlocks with a job finishing an attempt.
 */
export async function onBalanceChanges(
  tx: Db,
  ctx: AppContext,
  changes: readonly BalanceChange[],
): Promise<void> {
  const settings = new Map(
    (await repo.findEnabledSettings(tx, [...new Set(changes.map((c) => c.orgId))])).map((s) => [
      s.org_id,
      s,
    ]),
  );
  if (settings.size === 0) return;
  const now = ctx.clock.now();
  for (const change of changes) {
    const s = settings.get(change.orgId);
    if (!s) continue;
    if (change.after > creditsFromDb(s.threshold)) {
      if (!s.armed || s.rearm_month !== null) {
        await repo.updateSettings(tx, s.org_id, {
          armed: true,
          rearm_month: null,
          updated_at: now,
        });
        s.armed = true;
        s.rearm_month = null;
      }
      continue;
    }
    const armed = s.armed || (s.rearm_month !== null && monthKey(now) >= s.rearm_month);
    if (!armed) continue;
    // A refund takes credits away on purpose: buying them straight back would undo it. Blocks
    // that fell due are expired in the same transaction as the refund; they do not make it a
    // write of another kind.
    const types = change.entryTypes;
    if (types.includes("refund") && types.every((t) => t === "refund" || t === "expiry")) continue;
    const started = await startAttempt(tx, ctx, s, change.after, now);
    if (started) {
      s.armed = false;
      s.rearm_month = started === "skipped_limit" ? nextMonthKey(now) : null;
    }
  }
}

/**
 * Why an attempt about to charge for the first time must not: auto-topup was turned off since it
 * started (by the customer, or by `max_failures` from a decline reported meanwhile), or its
 * package's price changed and the new price would break the monthly limit the attempt was
 * admitted under. Null when it may charge. Locks the settings row, so a concurrent change waits.
 */
export async function refusalBeforeCharge(tx: Db, attempt: TopupAttempt): Promise<string | null> {
  const s = await repo.lockSettings(tx, attempt.org_id);
  if (!s?.enabled) return "Auto-topup was turned off before the payment was made.";
  const pkg = await findPackageIn(tx, attempt.package_id, "share");
  if (!pkg || s.monthly_limit_minor === null) return null; // an unavailable package: purchase says
  const price = BigInt(pkg.price_minor);
  if (pkg.currency === attempt.currency && price === BigInt(attempt.amount_minor)) return null;
  const limit = BigInt(s.monthly_limit_minor);
  const { committedMinor } = await repo.commitments(
    tx,
    attempt.org_id,
    pkg.currency,
    monthStart(attempt.created_at),
  );
  const others =
    committedMinor - (pkg.currency === attempt.currency ? BigInt(attempt.amount_minor) : 0n);
  if (others + price <= limit) return null;
  const money = (minor: bigint) =>
    `${formatMoney({ minor, currency: pkg.currency })} ${pkg.currency}`;
  return (
    `The package's price changed to ${money(price)}: the monthly limit of ${money(limit)} ` +
    `would be exceeded (${money(others)} spent or pending this month).`
  );
}

async function startAttempt(
  tx: Db,
  ctx: AppContext,
  s: TopupSettings,
  balance: Credits,
  now: Date,
): Promise<TopupAttempt["status"] | null> {
  const orgId = s.org_id;
  const pkg = await findPackageIn(tx, s.package_id);
  const attempt: TopupAttempt = {
    org_id: orgId,
    id: ctx.ids.newId("att"),
    status: "in_flight",
    package_id: s.package_id,
    purchase_id: null,
    amount_minor: pkg?.price_minor ?? "0",
    currency: pkg?.currency ?? s.currency,
    payment_id: null,
    action_url: null,
    error: null,
    balance: creditsToDb(balance),
    created_at: now,
    updated_at: now,
  };

  if (!pkg?.active) {
    // Nothing can be bought: record it, turn auto-topup off and say why.
    if (await repo.hasInFlight(tx, orgId)) return null;
    const error = `The auto-topup package "${s.package_id}" is no longer available.`;
    await repo.insertAttempt(tx, { ...attempt, status: "failed", error });
    await repo.updateSettings(tx, orgId, {
      enabled: false,
      disabled_reason: `package_unavailable: ${error}`,
      armed: false,
      updated_at: now,
    });
    await notifyFailed(
      tx,
      ctx,
      { ...attempt, status: "failed", error },
      {
        error,
        failureCount: s.failure_count,
        maxFailures: s.max_failures,
        disabledReason: `package_unavailable: ${error}`,
      },
    );
    return "failed";
  }

  if (s.monthly_limit_minor !== null) {
    const limit = BigInt(s.monthly_limit_minor);
    const { committedMinor: committed, inFlight } = await repo.commitments(
      tx,
      orgId,
      pkg.currency,
      monthStart(now),
    );
    if (committed + BigInt(pkg.price_minor) > limit) {
      if (inFlight) return null;
      const money = (minor: bigint) =>
        `${formatMoney({ minor, currency: pkg.currency })} ${pkg.currency}`;
      const error =
        `The monthly limit of ${money(limit)} would be exceeded ` +
        `(${money(committed)} spent or pending this month, package ${money(BigInt(pkg.price_minor))}).`;
      await repo.insertAttempt(tx, { ...attempt, status: "skipped_limit", error });
      await repo.updateSettings(tx, orgId, {
        armed: false,
        rearm_month: nextMonthKey(now),
        updated_at: now,
      });
      ctx.logger.info(
        { org_id: orgId, attempt_id: attempt.id },
        "auto-topup skipped: monthly limit",
      );
      return "skipped_limit";
    }
  }

  if (!(await repo.insertInFlightAttempt(tx, attempt))) return null; // one is in flight already
  await enqueueJob(tx, ctx, {
    queue: TOPUP_QUEUE,
    orgId,
    payload: { attemptId: attempt.id },
    dedupeKey: `topup:${attempt.id}`,
  });
  await repo.updateSettings(tx, orgId, { armed: false, rearm_month: null, updated_at: now });
  return "in_flight";
}

// ---- outcomes -------------------------------------------------------------------------------

const money = (a: { amount_minor: string; currency: string }) =>
  formatMoney({ minor: BigInt(a.amount_minor), currency: a.currency });

/** Runs `fn` in `db` when it is a transaction, else in a new one. */
function inTransaction<T>(db: Db, fn: (tx: Db) => Promise<T>): Promise<T> {
  return db.isTransaction ? fn(db) : db.transaction().execute(fn);
}

async function sendEmail(tx: Db, ctx: AppContext, orgId: string, content: EmailContent) {
  const to = await alertEmails(tx, orgId);
  if (to.length > 0) await enqueueEmail(tx, ctx, { to, orgId, ...content });
}

async function orgName(tx: Db, orgId: string): Promise<string> {
  return (await resolveOrganization(tx, orgId))?.name ?? orgId;
}

/** in_flight | action_required | failed (a late payment) → succeeded. */
export async function markSucceeded(
  db: Db,
  ctx: AppContext,
  attempt: TopupAttempt,
  purchase: Purchase,
): Promise<boolean> {
  return inTransaction(db, async (tx) => {
    const now = ctx.clock.now();
    const done = await repo.updateAttempt(
      tx,
      attempt.org_id,
      attempt.id,
      {
        status: "succeeded",
        error: null,
        payment_id: purchase.provider_payment_id ?? attempt.payment_id,
        updated_at: now,
      },
      ["in_flight", "action_required", "failed"],
    );
    if (!done) return false;
    await repo.updateSettings(tx, attempt.org_id, {
      failure_count: 0,
      armed: true,
      rearm_month: null,
      updated_at: now,
    });
    await emitEvent(tx, ctx, {
      type: "auto_topup.succeeded",
      orgId: attempt.org_id,
      data: {
        attempt_id: attempt.id,
        purchase_id: purchase.id,
        package_id: purchase.package_id,
        amount: money(purchase),
        currency: purchase.currency,
        credits: formatCredits(creditsFromDb(purchase.credits)),
        bonus_credits: formatCredits(creditsFromDb(purchase.bonus_credits)),
      },
    });
    return true;
  });
}

export interface FailureInput {
  error: string;
  /** A decline counts towards `max_failures`; processor faults and timeouts do not. */
  countsAsFailure: boolean;
  /** Turn auto-topup off whatever the count (nothing to charge: no card, no package). */
  disableReason?: string;
}

/** in_flight | action_required → failed; counts the failure and may disable auto-topup. */
export async function markFailed(
  db: Db,
  ctx: AppContext,
  attempt: TopupAttempt,
  input: FailureInput,
): Promise<boolean> {
  return inTransaction(db, async (tx) => {
    const now = ctx.clock.now();
    const failed = await repo.updateAttempt(
      tx,
      attempt.org_id,
      attempt.id,
      { status: "failed", error: input.error, updated_at: now },
      ["in_flight", "action_required"],
    );
    if (!failed) return false;
    let settings: TopupSettings | undefined;
    if (input.disableReason) {
      settings = await repo.updateSettings(tx, attempt.org_id, {
        enabled: false,
        disabled_reason: input.disableReason,
        updated_at: now,
      });
    } else if (input.countsAsFailure) {
      settings = await repo.recordFailure(
        tx,
        attempt.org_id,
        `payment_failed: ${input.error}`,
        now,
      );
    } else {
      settings = await repo.findSettings(tx, attempt.org_id);
    }
    if (input.countsAsFailure && settings?.enabled && !settings.armed) {
      // A decline, with fewer than `max_failures` so far: the next write that leaves the balance
      // at or below the threshold tries again. Failures that do not count (processor faults, a
      // job that died with its outcome unknown, an authentication left to expire) wait for the
      // next crossing, or they could repeat without limit.
      settings = await repo.updateSettings(tx, attempt.org_id, { armed: true, updated_at: now });
    }
    await notifyFailed(tx, ctx, failed, {
      error: input.error,
      failureCount: settings?.failure_count ?? 0,
      maxFailures: settings?.max_failures ?? 1,
      disabledReason: settings && !settings.enabled ? settings.disabled_reason : null,
    });
    return true;
  });
}

async function notifyFailed(
  tx: Db,
  ctx: AppContext,
  attempt: TopupAttempt,
  info: { error: string; failureCount: number; maxFailures: number; disabledReason: string | null },
) {
  await emitEvent(tx, ctx, {
    type: "auto_topup.failed",
    orgId: attempt.org_id,
    data: {
      attempt_id: attempt.id,
      purchase_id: attempt.purchase_id,
      package_id: attempt.package_id,
      amount: money(attempt),
      currency: attempt.currency,
      error: info.error,
      failure_count: info.failureCount,
      max_failures: info.maxFailures,
      disabled: info.disabledReason !== null,
      disabled_reason: info.disabledReason,
    },
  });
  await sendEmail(
    tx,
    ctx,
    attempt.org_id,
    autoTopupFailedEmail({
      orgName: await orgName(tx, attempt.org_id),
      error: info.error,
      disabled: info.disabledReason !== null,
    }),
  );
}

/** in_flight → action_required: the customer must authenticate the payment at `actionUrl`. */
export async function markActionRequired(
  db: Db,
  ctx: AppContext,
  attempt: TopupAttempt,
  input: { paymentId: string | null; actionUrl: string | null; error: string | null },
): Promise<boolean> {
  return inTransaction(db, async (tx) => {
    const updated = await repo.updateAttempt(
      tx,
      attempt.org_id,
      attempt.id,
      {
        status: "action_required",
        payment_id: input.paymentId,
        action_url: input.actionUrl,
        error: input.error,
        updated_at: ctx.clock.now(),
      },
      ["in_flight"],
    );
    if (!updated) return false;
    await emitEvent(tx, ctx, {
      type: "auto_topup.action_required",
      orgId: attempt.org_id,
      data: {
        attempt_id: attempt.id,
        purchase_id: updated.purchase_id,
        package_id: updated.package_id,
        amount: money(updated),
        currency: updated.currency,
        action_url: input.actionUrl,
        error: input.error,
      },
    });
    await sendEmail(
      tx,
      ctx,
      attempt.org_id,
      autoTopupActionRequiredEmail({
        orgName: await orgName(tx, attempt.org_id),
        actionUrl: input.actionUrl ?? undefined,
      }),
    );
    return true;
  });
}

/** The processor has not decided yet: the attempt stays in flight until its notification. */
export async function markPending(
  db: Db,
  ctx: AppContext,
  attempt: TopupAttempt,
  paymentId: string,
): Promise<void> {
  await repo.updateAttempt(
    db,
    attempt.org_id,
    attempt.id,
    { payment_id: paymentId, updated_at: ctx.clock.now() },
    ["in_flight"],
  );
}

/**
 * For billing's payment notifications (Stripe `payment_intent.succeeded|payment_failed`), after
 * `fulfilPurchase` / `failPurchase`: brings the auto-topup attempt behind an `auto_topup`
 * purchase in line with the purchase's status, raising `auto_topup.succeeded` or
 * `auto_topup.failed`. Idempotent (guarded status changes); a no-op for other purchases. Pass
 * a transaction to make it part of yours, or `ctx.db`.
 */
export async function onTopupPurchaseSettled(
  db: Db,
  ctx: AppContext,
  purchase: Purchase,
): Promise<void> {
  if (purchase.source !== "auto_topup") return;
  await inTransaction(db, async (tx) => {
    const attempt = await repo.findAttemptByPurchase(tx, purchase.org_id, purchase.id);
    if (!attempt) return;
    switch (purchase.status) {
      case "paid":
      case "refunded":
      case "partially_refunded":
        await markSucceeded(tx, ctx, attempt, purchase);
        return;
      case "failed":
        await markFailed(tx, ctx, attempt, {
          error: purchase.failure_message ?? "The payment failed.",
          countsAsFailure: true,
        });
        return;
      case "expired":
        // A charge still processing at the processor (a bank debit takes days) may yet succeed:
        // the attempt stays in flight — counted against the monthly limit, and no second charge
        // starts — until the processor's notification settles the purchase.
        if (attempt.status === "in_flight" && attempt.payment_id !== null) return;
        await markFailed(tx, ctx, attempt, {
          error: "The payment was not completed before the purchase expired.",
          countsAsFailure: false,
        });
        return;
      case "pending":
        return;
    }
  });
}

/** Re-reads the purchase of an attempt and settles the attempt from it (reconciliation). */
export async function reconcileAttempt(ctx: AppContext, attempt: TopupAttempt): Promise<void> {
  if (!attempt.purchase_id) return;
  const purchase = await findPurchaseIn(ctx.db, attempt.org_id, attempt.purchase_id);
  if (!purchase) return;
  if (
    purchase.status === "expired" &&
    attempt.status === "action_required" &&
    attempt.payment_id !== null
  ) {
    // Given up only once the payment can no longer go through (a customer authenticating
    // later would otherwise pay for an attempt already counted as failed). If it cannot be
    // cancelled, it succeeded or is being processed: its notification settles the attempt.
    try {
      await cancelOffSessionPayment(ctx, attempt.payment_id);
    } catch (error) {
      ctx.logger.warn(
        { err: error, attempt_id: attempt.id, payment_id: attempt.payment_id },
        "auto-topup: the expired payment could not be cancelled; waiting for the processor",
      );
      return;
    }
  }
  await onTopupPurchaseSettled(ctx.db, ctx, purchase);
}
