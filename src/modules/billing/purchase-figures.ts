import {
  creditsFromDb,
  divideRoundHalfEven,
  formatCredits,
  formatScaled,
  ONE_CREDIT,
} from "../ledger/credits.js";
import { currencyExponent, formatMoney } from "../ledger/money.js";
import type { PurchaseRow } from "./billing.repo.js";

/** What follows from a purchase row alone: shared by purchases and refunds. */

const MS_PER_DAY = 24 * 60 * 60 * 1000;

/**
 * Money per paid credit as a decimal string with 12 fractional digits (rounded half to even):
 * amount ÷ credits. It is stored on the paid block for revenue reports and display; refunds are
 * computed exactly in minor units from the purchase amount, never from this rounded figure.
 */
export function unitCostOf(amountMinor: bigint, currency: string, credits: bigint): string {
  if (credits <= 0n) throw new RangeError("credits must be positive");
  const exponent = 10n ** BigInt(currencyExponent(currency));
  // amount_minor / 10^exp / (credits / 10^12), held × 10^12
  const scaled = divideRoundHalfEven(amountMinor * ONE_CREDIT * ONE_CREDIT, exponent * credits);
  return formatScaled(scaled, 12);
}

/** When a purchase's bonus credits expire (null: never). */
export function bonusExpiry(p: PurchaseRow, paidAt: Date): Date | null {
  return p.bonus_expires_in_days === null
    ? null
    : new Date(paidAt.getTime() + p.bonus_expires_in_days * MS_PER_DAY);
}

/**
 * The `data` of `purchase.*` events: what was bought, for how much, by whom, and where it stands.
 * Amounts are decimal strings, as everywhere in the API.
 */
export function purchaseEventData(p: PurchaseRow): Record<string, unknown> {
  const credits = creditsFromDb(p.credits);
  const bonus = creditsFromDb(p.bonus_credits);
  return {
    purchase_id: p.id,
    status: p.status,
    source: p.source,
    package_id: p.package_id,
    package_name: p.package_name,
    credits: formatCredits(credits),
    bonus_credits: formatCredits(bonus),
    total_credits: formatCredits(credits + bonus),
    amount: formatMoney({ minor: BigInt(p.amount_minor), currency: p.currency }),
    currency: p.currency,
    refunded_amount: formatMoney({ minor: BigInt(p.refunded_minor), currency: p.currency }),
    provider: p.provider,
    user_id: p.user_id,
    actor: { type: p.actor_type, id: p.actor_id },
    paid_at: p.paid_at?.toISOString() ?? null,
  };
}
