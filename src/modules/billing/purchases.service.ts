import type { AppContext } from "../../app/context.js";
import { fail, ok, type Result } from "../../app/errors.js";
import type { PeriodicTask } from "../../app/workers.js";
import type { Db } from "../../db/index.js";
import { creditsFromDb } from "../ledger/credits.js";
import { type Posting, postEntries } from "../ledger/ledger.service.js";
import { emitEvent } from "../notify/notify.service.js";
import type { Actor, Principal } from "../orgs/auth.js";
import type { Organization } from "../orgs/orgs.service.js";
import * as repo from "./billing.repo.js";
import type { PurchaseStatus } from "./billing.tables.js";
import { paymentProvider } from "./providers/index.js";
import type { SavedPaymentMethod } from "./providers/provider.js";
import { type SandboxCard, SandboxProvider, sandboxCardOutcome } from "./providers/sandbox.js";
import { bonusExpiry, purchaseEventData, unitCostOf } from "./purchase-figures.js";
import { applyKeptRefundInTx } from "./refunds.service.js";

export type Purchase = repo.PurchaseRow;

/** A checkout left unpaid this long becomes `expired` (Stripe Checkout's default lifetime). */
export const CHECKOUT_TTL_MS = 24 * 60 * 60 * 1000;

/** A checkout completed with a bank debit still processing waits this long for its outcome. */
export const DEBIT_WAIT_MS = 14 * 24 * 60 * 60 * 1000;

/** Statuses from which a confirmed payment still grants credits (a late payment counts). */
const PAYABLE: readonly PurchaseStatus[] = ["pending", "failed", "expired"];
const SETTLED: readonly PurchaseStatus[] = ["paid", "refunded", "partially_refunded"];

export interface CreatePurchaseInput {
  org: Organization;
  principal: Pick<Principal, "actor" | "userId">;
  packageId: string;
  successUrl?: string;
  cancelUrl?: string;
  savePaymentMethod: boolean;
}

/**
 * Creates a pending purchase of a package and opens the processor's checkout for it. The purchase
 * row exists before the checkout so that the processor session carries its id; a processor fault
 * leaves the purchase `failed` and answers 503 (the client may retry with a new request).
 */
/**
 * A pending purchase of a package, copying the package's terms so that later edits of the
 * package never change what was sold. Expires like an abandoned checkout after 24 h (a late
 * payment still counts).
 */
export function newPurchaseRow(
  ctx: AppContext,
  pkg: repo.PackageRow,
  input: {
    id: string;
    orgId: string;
    source: Purchase["source"];
    provider: Purchase["provider"];
    actor: { type: string; id: string };
    userId: string | null;
    successUrl: string | null;
    cancelUrl: string | null;
    savePaymentMethod: boolean;
    paymentMethodId: string | null;
  },
): Purchase {
  const now = ctx.clock.now();
  return {
    org_id: input.orgId,
    id: input.id,
    package_id: pkg.id,
    package_name: pkg.name,
    source: input.source,
    status: "pending",
    provider: input.provider,
    provider_session_id: null,
    provider_payment_id: null,
    amount_minor: pkg.price_minor,
    currency: pkg.currency,
    credits: pkg.credits,
    bonus_credits: pkg.bonus_credits,
    bonus_expires_in_days: pkg.bonus_expires_in_days,
    refunded_minor: "0",
    user_id: input.userId,
    actor_type: input.actor.type as Purchase["actor_type"],
    actor_id: input.actor.id,
    success_url: input.successUrl,
    cancel_url: input.cancelUrl,
    checkout_url: null,
    save_payment_method: input.savePaymentMethod,
    payment_method_id: input.paymentMethodId,
    failure_code: null,
    failure_message: null,
    paid_at: null,
    expires_at: new Date(now.getTime() + CHECKOUT_TTL_MS),
    created_at: now,
    updated_at: now,
  };
}

export async function createPurchase(
  ctx: AppContext,
  input: CreatePurchaseInput,
): Promise<Result<Purchase, "not_found" | "invalid_state" | "service_unavailable">> {
  const pkg = await repo.findPackage(ctx.db, input.packageId);
  if (!pkg) return fail("not_found", `Package "${input.packageId}" not found.`);
  if (!pkg.active) return fail("invalid_state", "The package is not available for purchase.");

  const provider = paymentProvider(ctx);
  const id = ctx.ids.newId("pur");
  const base = ctx.config.publicUrl;
  const row = newPurchaseRow(ctx, pkg, {
    id,
    orgId: input.org.id,
    source: "checkout",
    provider: provider.name,
    actor: input.principal.actor,
    userId: input.principal.userId,
    successUrl: input.successUrl ?? `${base}/portal?purchase=${id}&checkout=success`,
    cancelUrl: input.cancelUrl ?? `${base}/portal?purchase=${id}&checkout=cancel`,
    savePaymentMethod: input.savePaymentMethod,
    paymentMethodId: null,
  });
  await repo.insertPurchase(ctx.db, row);
  // Read before the processor call: a database fault here is not the processor's (it must not
  // mark the purchase failed as `checkout_unavailable`).
  const customerId = await repo.findCustomerId(ctx.db, input.org.id, provider.name);

  let session: Awaited<ReturnType<typeof provider.createCheckout>>;
  try {
    session = await provider.createCheckout({
      purchase: {
        id,
        orgId: row.org_id,
        amountMinor: BigInt(row.amount_minor),
        currency: row.currency,
      },
      package: { id: pkg.id, name: pkg.name, description: pkg.description },
      customer: {
        orgId: input.org.id,
        name: input.org.name,
        customerId,
      },
      successUrl: row.success_url!,
      cancelUrl: row.cancel_url!,
      savePaymentMethod: input.savePaymentMethod,
    });
  } catch (error) {
    ctx.logger.error({ err: error, purchase_id: id }, "checkout could not be created");
    await repo.updatePurchase(
      ctx.db,
      row.org_id,
      id,
      {
        status: "failed",
        failure_code: "checkout_unavailable",
        failure_message: "The payment processor could not open a checkout.",
        updated_at: ctx.clock.now(),
      },
      ["pending"],
    );
    return fail("service_unavailable", "The payment processor is unavailable; try again.");
  }
  const updated = await repo.updatePurchase(ctx.db, row.org_id, id, {
    provider_session_id: session.sessionId,
    checkout_url: session.url,
    updated_at: ctx.clock.now(),
  });
  return ok(updated!);
}

export async function getPurchase(
  ctx: AppContext,
  orgId: string,
  id: string,
): Promise<Result<Purchase, "not_found">> {
  const row = await repo.findPurchase(ctx.db, orgId, id);
  return row ? ok(row) : fail("not_found", "Purchase not found.");
}

export function listPurchases(
  ctx: AppContext,
  orgId: string,
  opts: { limit: number; before?: string; status?: PurchaseStatus },
) {
  return repo.listPurchases(ctx.db, orgId, opts);
}

export interface PaymentConfirmation {
  /** The processor's payment id: one payment grants credits once, ever. */
  providerPaymentId: string;
  /** The card, when the checkout saved it (stored if the purchase asked to save it). */
  paymentMethod?: SavedPaymentMethod | null;
}

export type FulfilOutcome = {
  purchase: Purchase;
  /** false: this payment had already been fulfilled (a repeated notification). */
  fulfilled: boolean;
};

/**
 * Marks a purchase paid and grants its credits, exactly once, in one transaction: the status
 * change is guarded (`pending`, `failed` or `expired` → `paid`; a late payment still counts) and
 * the payment id is unique across purchases, so however many times and however concurrently the
 * processor notifies, one `purchase` entry (paid block, unit cost = amount ÷ credits) and one
 * `bonus` entry (free block, optional expiry) are written, and one `purchase.completed` event.
 */
export async function fulfilPurchase(
  ctx: AppContext,
  orgId: string,
  purchaseId: string,
  payment: PaymentConfirmation,
): Promise<Result<FulfilOutcome, "not_found" | "invalid_state">> {
  try {
    return await ctx.db
      .transaction()
      .execute((tx) => fulfilPurchaseInTx(tx, ctx, orgId, purchaseId, payment));
  } catch (error) {
    if (isUniqueViolation(error)) {
      // Two purchases raced for one payment id: never grant twice for one payment.
      ctx.logger.warn(
        { purchase_id: purchaseId, payment_id: payment.providerPaymentId },
        "payment id already used by another purchase",
      );
      return fail("invalid_state", "This payment has already been applied to another purchase.");
    }
    throw error;
  }
}

/**
 * `fulfilPurchase` inside the caller's transaction (the Stripe webhook records the inbound event
 * in the same one). A payment id already used by another purchase is refused before any write,
 * so the caller's transaction is not aborted by the unique index in the common case.
 */
export async function fulfilPurchaseInTx(
  tx: Db,
  ctx: AppContext,
  orgId: string,
  purchaseId: string,
  payment: PaymentConfirmation,
): Promise<Result<FulfilOutcome, "not_found" | "invalid_state">> {
  const now = ctx.clock.now();
  const current = await repo.findPurchase(tx, orgId, purchaseId);
  if (!current) return fail("not_found", "Purchase not found.");
  // Before any lock of the ledger, as `reflectProviderRefundInTx` does.
  await repo.lockPayment(tx, current.provider, payment.providerPaymentId);
  const owner = await repo.findPurchaseByPaymentId(tx, current.provider, payment.providerPaymentId);
  if (owner && (owner.org_id !== orgId || owner.id !== purchaseId)) {
    ctx.logger.warn(
      { purchase_id: purchaseId, payment_id: payment.providerPaymentId, paid: owner.id },
      "payment id already used by another purchase",
    );
    return fail("invalid_state", "This payment has already been applied to another purchase.");
  }
  const paid = await repo.updatePurchase(
    tx,
    orgId,
    purchaseId,
    {
      status: "paid",
      provider_payment_id: payment.providerPaymentId,
      paid_at: now,
      failure_code: null,
      failure_message: null,
      updated_at: now,
    },
    PAYABLE,
  );
  if (!paid) {
    const settled = await repo.findPurchase(tx, orgId, purchaseId);
    if (!settled) return fail("not_found", "Purchase not found.");
    if (settled.provider_payment_id === payment.providerPaymentId) {
      return ok({ purchase: settled, fulfilled: false });
    }
    ctx.logger.warn(
      { purchase_id: purchaseId, payment_id: payment.providerPaymentId },
      "a second payment arrived for an already paid purchase",
    );
    return fail("invalid_state", `The purchase is already ${settled.status}.`);
  }

  const credits = creditsFromDb(paid.credits);
  const bonus = creditsFromDb(paid.bonus_credits);
  const actor: Actor = { type: paid.actor_type, id: paid.actor_id };
  const meta = {
    actor,
    userId: paid.user_id,
    reference: { type: "purchase", id: paid.id },
  };
  const postings: Posting[] = [
    {
      kind: "credit",
      type: "purchase",
      amount: credits,
      block: {
        source: "purchase",
        unitCost: unitCostOf(BigInt(paid.amount_minor), paid.currency, credits),
        purchaseId: paid.id,
      },
      description: `Purchase of ${paid.package_name}`,
      ...meta,
    },
  ];
  if (bonus > 0n) {
    postings.push({
      kind: "credit",
      type: "bonus",
      amount: bonus,
      block: {
        source: "bonus",
        unitCost: "0",
        purchaseId: paid.id,
        expiresAt: bonusExpiry(paid, now),
      },
      description: `Bonus credits of ${paid.package_name}`,
      ...meta,
    });
  }
  const posted = await postEntries(tx, ctx, orgId, postings);
  // Credits cannot be refused; anything else is a fault and rolls the payment back.
  if (!posted.ok) throw new Error(`could not post purchase credits: ${posted.code}`);

  let purchase = paid;
  if (paid.save_payment_method && payment.paymentMethod) {
    const pm = payment.paymentMethod;
    const saved = await repo.upsertPaymentMethod(tx, {
      org_id: orgId,
      id: ctx.ids.newId("pmt"),
      provider: paid.provider,
      provider_payment_method_id: pm.id,
      provider_customer_id: pm.customerId,
      brand: pm.brand,
      last4: pm.last4,
      sandbox_behaviour: pm.sandboxBehaviour ?? null,
      status: "active",
      created_at: now,
      updated_at: now,
    });
    purchase = (await repo.updatePurchase(tx, orgId, purchaseId, {
      payment_method_id: saved.id,
      updated_at: now,
    }))!;
  }
  await emitEvent(tx, ctx, {
    type: "purchase.completed",
    orgId,
    data: purchaseEventData(purchase),
  });
  // A refund the processor notified before this payment was applied is applied with it.
  await applyKeptRefundInTx(tx, ctx, purchase);
  return ok({ purchase, fulfilled: true });
}

/**
 * A payment attempt was declined or an asynchronous payment failed: `pending` → `failed`, with a
 * `purchase.failed` event for each recorded failure. A checkout purchase may fail again (the
 * customer tries another card on the same page). An off-session purchase has one charge, so its
 * failure is recorded once, however many reports of it arrive (the charge job and the
 * processor's notification both report a decline) — and it may come after the purchase expired,
 * while the processor was still processing the payment (a bank debit takes days).
 */
export async function failPurchase(
  ctx: AppContext,
  orgId: string,
  purchaseId: string,
  failure: { code: string; message: string },
): Promise<Result<Purchase, "invalid_state">> {
  return ctx.db
    .transaction()
    .execute((tx) => failPurchaseInTx(tx, ctx, orgId, purchaseId, failure));
}

export async function failPurchaseInTx(
  tx: Db,
  ctx: AppContext,
  orgId: string,
  purchaseId: string,
  failure: { code: string; message: string },
): Promise<Result<Purchase, "invalid_state">> {
  const current = await repo.findPurchase(tx, orgId, purchaseId);
  // A checkout fails once per declined card on its page; and a bank debit that fails after its
  // checkout window passed (it showed `expired` meanwhile) fails it too.
  const from: PurchaseStatus[] =
    current?.source === "auto_topup" ? ["pending", "expired"] : ["pending", "failed", "expired"];
  const row = await repo.updatePurchase(
    tx,
    orgId,
    purchaseId,
    {
      status: "failed",
      failure_code: failure.code,
      failure_message: failure.message,
      updated_at: ctx.clock.now(),
    },
    from,
  );
  if (!row) return fail("invalid_state", "The purchase is no longer pending.");
  await emitEvent(tx, ctx, {
    type: "purchase.failed",
    orgId,
    data: {
      ...purchaseEventData(row),
      failure_code: row.failure_code,
      failure_message: row.failure_message,
    },
  });
  return ok(row);
}

/** The processor says the checkout expired unpaid: `pending`/`failed` → `expired`. */
export async function expirePurchaseInTx(
  tx: Db,
  ctx: AppContext,
  orgId: string,
  purchaseId: string,
): Promise<Purchase | undefined> {
  return repo.updatePurchase(
    tx,
    orgId,
    purchaseId,
    { status: "expired", updated_at: ctx.clock.now() },
    ["pending", "failed"],
  );
}

/** Pending purchases past their checkout window become `expired`. */
export function expirePurchases(ctx: AppContext, limit = 500): Promise<number> {
  return repo.expirePendingPurchases(ctx.db, ctx.clock.now(), limit);
}

/** For the composition root's workers. */
export const purchaseExpiryTask: PeriodicTask = {
  name: "purchase-expiry",
  everyMs: 60_000,
  run: (ctx) => expirePurchases(ctx),
};

export function isExpired(ctx: AppContext, p: Purchase): boolean {
  // A declined checkout may be paid with another card — within its window, as a pending one.
  return (
    p.status === "expired" ||
    ((p.status === "pending" || p.status === "failed") &&
      p.expires_at !== null &&
      p.expires_at <= ctx.clock.now())
  );
}

export type SandboxSettlement =
  | { outcome: "paid"; purchase: Purchase }
  | { outcome: "already_paid"; purchase: Purchase }
  | { outcome: "declined"; purchase: Purchase }
  | { outcome: "requires_action"; purchase: Purchase };

/**
 * The sandbox checkout page's Pay: applies the chosen test card. A paying card settles the
 * purchase (credits granted, card saved when asked); `decline` marks it `failed` (another card
 * may still pay it); `requires_action` leaves it pending. A settled purchase is left unchanged.
 */
export async function settleSandboxCheckout(
  ctx: AppContext,
  purchaseId: string,
  card: SandboxCard,
): Promise<Result<SandboxSettlement, "not_found" | "invalid_state">> {
  const provider = paymentProvider(ctx);
  const purchase = await repo.findPurchaseById(ctx.db, purchaseId);
  // Auto-topup purchases are charged off-session: they have no checkout page.
  if (
    purchase?.provider !== "sandbox" ||
    purchase.source !== "checkout" ||
    !(provider instanceof SandboxProvider)
  ) {
    return fail("not_found", "Checkout not found.");
  }
  if (SETTLED.includes(purchase.status)) return ok({ outcome: "already_paid", purchase });
  if (isExpired(ctx, purchase)) return fail("invalid_state", "This checkout has expired.");

  const outcome = sandboxCardOutcome(card);
  switch (outcome.kind) {
    case "paid": {
      const state = provider.completeCheckout({
        purchaseId: purchase.id,
        orgId: purchase.org_id,
        card,
      });
      const result = await fulfilPurchase(ctx, purchase.org_id, purchase.id, {
        providerPaymentId: state.paymentId!,
        paymentMethod: state.paymentMethod,
      });
      if (!result.ok) return result;
      return ok({
        outcome: result.value.fulfilled ? "paid" : "already_paid",
        purchase: result.value.purchase,
      });
    }
    case "declined": {
      provider.completeCheckout({ purchaseId: purchase.id, orgId: purchase.org_id, card });
      const failed = await failPurchase(ctx, purchase.org_id, purchase.id, {
        code: "card_declined",
        message: "The card was declined (sandbox card decline).",
      });
      if (!failed.ok) return failed;
      return ok({ outcome: "declined", purchase: failed.value });
    }
    case "requires_action":
      return ok({ outcome: "requires_action", purchase });
  }
}

export function isUniqueViolation(error: unknown): boolean {
  return (
    typeof error === "object" && error !== null && (error as { code?: unknown }).code === "23505"
  );
}
