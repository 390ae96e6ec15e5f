import { DecimalFormatError, formatScaled, parseScaled } from "./credits.js";

/**
 * Money is what a customer pays: integer minor units of an ISO 4217 currency, counted as the
 * payment processor counts them — these are the amounts Tally sends to Stripe and reads back.
 * That is 2 decimals for most currencies, none for Stripe's zero-decimal ones and 3 for its
 * three-decimal ones. The table is fixed here, not taken from the runtime's display data (ICU),
 * which gives 0 for HUF, ISK or IDR — Stripe counts those in hundredths — and may change with a
 * Node upgrade under amounts already stored.
 */
export interface Money {
  readonly minor: bigint;
  readonly currency: string;
}

const ZERO_DECIMAL = new Set([
  "BIF",
  "CLP",
  "DJF",
  "GNF",
  "JPY",
  "KMF",
  "KRW",
  "MGA",
  "PYG",
  "RWF",
  "UGX",
  "VND",
  "VUV",
  "XAF",
  "XOF",
  "XPF",
]);
const THREE_DECIMAL = new Set(["BHD", "JOD", "KWD", "OMR", "TND"]);
/**
 * Amounts Stripe accepts only in whole multiples of a step: ISK in whole krónur (card networks
 * dropped fractional ISK), three-decimal currencies with a last digit of 0.
 */
const STEP: ReadonlyMap<string, { minor: bigint; problem: string }> = new Map([
  ["ISK", { minor: 100n, problem: "ISK amounts must be whole krónur" }],
  ...[...THREE_DECIMAL].map(
    (c) => [c, { minor: 10n, problem: `${c} amounts must end in 0 (at most 2 decimals)` }] as const,
  ),
]);

const supported = new Set(Intl.supportedValuesOf("currency"));

export function isCurrency(code: string): boolean {
  return /^[A-Z]{3}$/.test(code) && supported.has(code);
}

export function currencyExponent(currency: string): number {
  if (!isCurrency(currency)) throw new DecimalFormatError(currency, "unknown currency");
  return ZERO_DECIMAL.has(currency) ? 0 : THREE_DECIMAL.has(currency) ? 3 : 2;
}

/** `"49.00"` USD → 4900n. More fractional digits than the currency has → error. */
export function parseMoney(input: unknown, currency: string): Money {
  const exponent = currencyExponent(currency);
  const minor = parseScaled(input, exponent);
  if (minor > 10n ** 15n || minor < -(10n ** 15n)) throw new DecimalFormatError(input, "too large");
  const step = STEP.get(currency);
  if (step && minor % step.minor !== 0n) throw new DecimalFormatError(input, step.problem);
  return { minor, currency };
}

/** Always with the currency's full exponent: `"49.00"`, `"1200"` (JPY). */
export function formatMoney(money: Money): string {
  const exponent = currencyExponent(money.currency);
  const s = formatScaled(money.minor, exponent);
  if (exponent === 0) return s;
  const [int, frac = ""] = s.split(".");
  return `${int}.${frac.padEnd(exponent, "0")}`;
}
