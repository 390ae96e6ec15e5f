import type { AppContext } from "../../app/context.js";
import type { Db } from "../../db/index.js";
import type { Actor } from "../orgs/auth.js";
import * as repo from "./billing.repo.js";
import { paymentProvider } from "./providers/index.js";
import type { ChargeResult } from "./providers/provider.js";
import { newPurchaseRow, type Purchase } from "./purchases.service.js";

/**
 * Off-session purchases: a package bought with the organisation's saved card without the
 * customer present (auto-topup). The purchase is created in the caller's transaction and then
 * charged with a caller-chosen deterministic idempotency key, so a crash or a retry never
 * charges twice; a successful charge is fulfilled with `fulfilPurchase` like any purchase.
 */

export type CreditPackageRow = repo.PackageRow;

/**
 * A package by id, read in the caller's transaction (`db`); with `share`, locked against changes
 * until that transaction ends (what was checked is what `createOffSessionPurchase` charges).
 */
export function findPackageIn(
  db: Db,
  id: string,
  lock?: "share",
): Promise<CreditPackageRow | undefined> {
  return repo.findPackage(db, id, lock);
}

export interface SavedCard {
  /** Tally's payment method id (`pmt_…`). */
  id: string;
  brand: string | null;
  last4: string | null;
}

/** The card auto-topup would charge now: the most recently saved active one of the provider. */
export async function savedPaymentMethod(
  db: Db,
  ctx: AppContext,
  orgId: string,
): Promise<SavedCard | null> {
  const pm = await repo.findDefaultPaymentMethod(db, orgId, paymentProvider(ctx).name);
  return pm ? { id: pm.id, brand: pm.brand, last4: pm.last4 } : null;
}

export type OffSessionPurchaseOutcome =
  | { ok: true; purchase: Purchase }
  | { ok: false; reason: "package_unavailable" | "no_payment_method"; message: string };

export const AUTO_TOPUP_ACTOR: Actor = { type: "system", id: "auto_topup" };

/**
 * Creates a pending `auto_topup` purchase of a package, bound to the saved card it will be
 * charged with (kept on the purchase so that a retry charges the same card with the same key).
 * Runs in the caller's transaction (`db`).
 */
export async function createOffSessionPurchase(
  db: Db,
  ctx: AppContext,
  input: { orgId: string; packageId: string; actor?: Actor },
): Promise<OffSessionPurchaseOutcome> {
  const pkg = await repo.findPackage(db, input.packageId);
  if (!pkg?.active) {
    return {
      ok: false,
      reason: "package_unavailable",
      message: `The auto-topup package "${input.packageId}" is not available.`,
    };
  }
  const provider = paymentProvider(ctx);
  const pm = await repo.findDefaultPaymentMethod(db, input.orgId, provider.name);
  if (!pm) {
    return { ok: false, reason: "no_payment_method", message: "No saved payment method." };
  }
  // An authentication the customer never completes leaves it pending; it then expires like an
  // abandoned checkout (a late payment still counts).
  const row = newPurchaseRow(ctx, pkg, {
    id: ctx.ids.newId("pur"),
    orgId: input.orgId,
    source: "auto_topup",
    provider: provider.name,
    actor: input.actor ?? AUTO_TOPUP_ACTOR,
    userId: null,
    successUrl: null,
    cancelUrl: null,
    savePaymentMethod: false,
    paymentMethodId: pm.id,
  });
  await repo.insertPurchase(db, row);
  return { ok: true, purchase: row };
}

/**
 * Charges an off-session purchase's card for its amount. The `idempotencyKey` must be
 * deterministic for the purchase (e.g. `topup:<attempt id>`): calling again with it returns the
 * first outcome and never charges twice. Declines and authentication requests are results;
 * processor faults throw (`PaymentProviderError`, retryable or not).
 */
export async function chargeOffSessionPurchase(
  ctx: AppContext,
  purchase: Purchase,
  idempotencyKey: string,
  metadata: Record<string, string> = {},
): Promise<ChargeResult> {
  const pm = purchase.payment_method_id
    ? await ctx.db
        .selectFrom("payment_methods")
        .selectAll()
        .where("org_id", "=", purchase.org_id)
        .where("id", "=", purchase.payment_method_id)
        .executeTakeFirst()
    : undefined;
  if (!pm) {
    return { status: "declined", paymentId: null, error: "The saved payment method is gone." };
  }
  return paymentProvider(ctx).chargeOffSession({
    orgId: purchase.org_id,
    paymentMethod: {
      id: pm.provider_payment_method_id,
      brand: pm.brand,
      last4: pm.last4,
      customerId: pm.provider_customer_id,
      sandboxBehaviour: pm.sandbox_behaviour,
    },
    amountMinor: BigInt(purchase.amount_minor),
    currency: purchase.currency,
    idempotencyKey,
    metadata: { ...metadata, purchase_id: purchase.id, source: "auto_topup" },
  });
}

/**
 * An off-session payment left waiting for the customer's authentication when its purchase
 * expired: cancelled at the processor, so that it can no longer succeed after the attempt
 * behind it has been given up. Throws `PaymentProviderError` when that is not possible.
 */
export async function cancelOffSessionPayment(ctx: AppContext, paymentId: string): Promise<void> {
  await paymentProvider(ctx).cancelPayment(paymentId);
}

/** A purchase read in the caller's transaction (`db`). */
export function findPurchaseIn(db: Db, orgId: string, id: string): Promise<Purchase | undefined> {
  return repo.findPurchase(db, orgId, id);
}
