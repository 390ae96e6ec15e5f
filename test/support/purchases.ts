import type { AppContext } from "../../src/app/context.js";
import { insertPurchase, type PurchaseRow } from "../../src/modules/billing/billing.repo.js";

/**
 * Writes an auto-topup purchase as the auto-topup job would (pending, 49.00 USD for 1000 credits
 * unless `values` say otherwise) and returns its id.
 */
export async function insertTopupPurchase(
  ctx: AppContext,
  values: Pick<PurchaseRow, "org_id" | "package_id" | "provider"> & Partial<PurchaseRow>,
): Promise<string> {
  const now = ctx.clock.now();
  const id = values.id ?? ctx.ids.newId("pur");
  await insertPurchase(ctx.db, {
    id,
    package_name: "Growth",
    source: "auto_topup",
    status: "pending",
    provider_session_id: null,
    provider_payment_id: null,
    amount_minor: "4900",
    currency: "USD",
    credits: "1000",
    bonus_credits: "0",
    bonus_expires_in_days: null,
    refunded_minor: "0",
    user_id: null,
    actor_type: "system",
    actor_id: "auto_topup",
    success_url: null,
    cancel_url: null,
    checkout_url: null,
    save_payment_method: false,
    payment_method_id: null,
    failure_code: null,
    failure_message: null,
    paid_at: null,
    expires_at: null,
    created_at: now,
    updated_at: now,
    ...values,
  });
  return id;
}
