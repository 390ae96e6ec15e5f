import { type Credits, divideRoundHalfEven, ONE_CREDIT } from "../ledger/credits.js";
import { currencyExponent } from "../ledger/money.js";

/**
 * The catalogue's computed figures. They are ratios (money ÷ credits, credits ÷ credits), which
 * are not finite decimals in general, so they are display values: decimal strings rounded half to
 * even to a fixed number of fractional digits, never used for ledger or money arithmetic.
 */
export const PRICE_PER_CREDIT_DIGITS = 6;
export const PERCENT_DIGITS = 2;

export interface PackageAmounts {
  credits: Credits;
  bonusCredits: Credits;
  priceMinor: bigint;
  currency: string;
}

/** An exact non-negative fraction. */
export interface Ratio {
  num: bigint;
  den: bigint;
}

export interface PackageFigures {
  totalCredits: Credits;
  /** Money per credit (of all credits, bonus included), PRICE_PER_CREDIT_DIGITS digits. */
  effectivePricePerCredit: string;
  /** bonus ÷ credits × 100, PERCENT_DIGITS digits. */
  bonusPercent: string;
  /** (1 − price per credit ÷ the highest price per credit) × 100, PERCENT_DIGITS digits. */
  savingsPercent: string;
}

/** Money (major units) per credit, exactly: price_minor ÷ 10^exponent ÷ (total ÷ 10^12). */
export function pricePerCredit(p: PackageAmounts): Ratio {
  const total = p.credits + p.bonusCredits;
  if (total <= 0n) throw new RangeError("a package has a positive number of credits");
  return {
    num: p.priceMinor * ONE_CREDIT,
    den: 10n ** BigInt(currencyExponent(p.currency)) * total,
  };
}

export function compareRatios(a: Ratio, b: Ratio): number {
  const l = a.num * b.den;
  const r = b.num * a.den;
  return l < r ? -1 : l > r ? 1 : 0;
}

/** The most expensive price per credit among `packages` (the savings reference), or null. */
export function highestPricePerCredit(packages: Iterable<PackageAmounts>): Ratio | null {
  let best: Ratio | null = null;
  for (const p of packages) {
    const r = pricePerCredit(p);
    if (best === null || compareRatios(r, best) > 0) best = r;
  }
  return best;
}

/** `value` (scaled by 10^digits) as a decimal string with exactly `digits` fractional digits. */
export function formatFixed(scaled: bigint, digits: number): string {
  const negative = scaled < 0n;
  const abs = negative ? -scaled : scaled;
  const unit = 10n ** BigInt(digits);
  const int = abs / unit;
  const body = digits > 0 ? `${int}.${(abs % unit).toString().padStart(digits, "0")}` : `${int}`;
  return negative && abs !== 0n ? `-${body}` : body;
}

function ratioToFixed(r: Ratio, digits: number): string {
  return formatFixed(divideRoundHalfEven(r.num * 10n ** BigInt(digits), r.den), digits);
}

/**
 * Figures of one package. `reference` is the highest price per credit among the active packages
 * of its currency (null when there are none: savings 0). A package priced above the reference
 * (possible only for an inactive one) saves nothing: 0, never a negative saving.
 */
export function packageFigures(p: PackageAmounts, reference: Ratio | null): PackageFigures {
  const ppc = pricePerCredit(p);
  // (1 − ppc/ref) × 100 = (ref.num·ppc.den − ppc.num·ref.den) × 100 / (ref.num·ppc.den)
  const savings =
    reference !== null && reference.num > 0n && ppc.num * reference.den < reference.num * ppc.den
      ? ratioToFixed(
          {
            num: (reference.num * ppc.den - ppc.num * reference.den) * 100n,
            den: reference.num * ppc.den,
          },
          PERCENT_DIGITS,
        )
      : formatFixed(0n, PERCENT_DIGITS);
  return {
    totalCredits: p.credits + p.bonusCredits,
    effectivePricePerCredit: ratioToFixed(ppc, PRICE_PER_CREDIT_DIGITS),
    bonusPercent: ratioToFixed({ num: p.bonusCredits * 100n, den: p.credits }, PERCENT_DIGITS),
    savingsPercent: savings,
  };
}
