import { DecimalFormatError, formatScaled, parseScaled } from "./credits.js";

/**
 * Money is what a customer pays: integer minor units of an ISO 4217 currency. The exponent comes
 * from the currency (USD 2, JPY 0, KWD 3), as reported by the runtime's ICU data.
 */
export interface Money {
  readonly minor: bigint;
  readonly currency: string;
}

const supported = new Set(Intl.supportedValuesOf("currency"));
const exponents = new Map<string, number>();

export function isCurrency(code: string): boolean {
  return /^[A-Z]{3}$/.test(code) && supported.has(code);
}

export function currencyExponent(currency: string): number {
  let exponent = exponents.get(currency);
  if (exponent === undefined) {
    if (!isCurrency(currency)) throw new DecimalFormatError(currency, "unknown currency");
    exponent =
      new Intl.NumberFormat("en", { style: "currency", currency }).resolvedOptions()
        .maximumFractionDigits ?? 2;
    exponents.set(currency, exponent);
  }
  return exponent;
}

/** `"49.00"` USD → 4900n. More fractional digits than the currency has → error. */
export function parseMoney(input: unknown, currency: string): Money {
  const exponent = currencyExponent(currency);
  const minor = parseScaled(input, exponent);
  if (minor > 10n ** 15n || minor < -(10n ** 15n)) throw new DecimalFormatError(input, "too large");
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
