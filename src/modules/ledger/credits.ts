/**
 * Exact credit arithmetic.
 *
 * A `Credits` value is a `bigint` holding credits × 10^12 (12 fractional digits, the scale of
 * `NUMERIC(38,12)` in SQL). Amounts cross the wire and the database as decimal strings and are
 * converted here, never through a JS `number`.
 *
 * Rates and quantities carry at most 6 fractional digits, so `rate × quantity` has at most 12 and
 * is exact at this scale: nothing in the ledger is ever rounded.
 */
export type Credits = bigint;

export const CREDIT_SCALE = 12;
export const ONE_CREDIT: Credits = 10n ** 12n;
export const ZERO: Credits = 0n;

/** 38 significant digits of which 12 are fractional (`NUMERIC(38,12)`): |x| < 10^26. */
const MAX_ABS: Credits = 10n ** 38n - 1n;

const DECIMAL = /^([+-])?(\d+)(?:\.(\d+))?$/;

export class DecimalFormatError extends Error {
  constructor(
    readonly input: unknown,
    readonly problem: string,
  ) {
    super(`${typeof input === "string" ? JSON.stringify(input) : typeof input}: ${problem}`);
  }
}

/**
 * Parses a plain decimal string (`"12.5"`, `"-0.000125"`, `"+100"`) into a scaled bigint.
 * Exponents, JS numbers, blanks, `NaN`/`Infinity` and more than `maxFractionDigits` are refused.
 */
export function parseScaled(input: unknown, scale: number, maxFractionDigits = scale): bigint {
  if (typeof input !== "string") throw new DecimalFormatError(input, "must be a decimal string");
  const m = DECIMAL.exec(input);
  if (!m) throw new DecimalFormatError(input, "must be a plain decimal number such as 12.5");
  const [, sign, int = "", frac = ""] = m;
  if (frac.length > maxFractionDigits) {
    throw new DecimalFormatError(input, `at most ${maxFractionDigits} fractional digits`);
  }
  if (int.length > 40) throw new DecimalFormatError(input, "too large");
  const digits = BigInt(int + frac.padEnd(scale, "0"));
  return sign === "-" ? -digits : digits;
}

/** Formats a scaled bigint as the shortest exact decimal string (`"12.5"`, `"-3"`, `"0"`). */
export function formatScaled(value: bigint, scale: number): string {
  const negative = value < 0n;
  const [int, frac] = splitScaled(negative ? -value : value, scale);
  let end = frac.length;
  while (end > 0 && frac.charCodeAt(end - 1) === 48 /* "0" */) end--;
  const body = end > 0 ? `${int}.${frac.slice(0, end)}` : int;
  return negative ? `-${body}` : body;
}

/**
 * The integer and fractional digits of a non-negative scaled value, from its decimal text (one
 * conversion; the hot path formats several amounts per event).
 */
function splitScaled(abs: bigint, scale: number): [int: string, frac: string] {
  const digits = abs.toString().padStart(scale + 1, "0");
  const point = digits.length - scale;
  return [digits.slice(0, point), digits.slice(point)];
}

export function parseCredits(input: unknown, maxFractionDigits = CREDIT_SCALE): Credits {
  const value = parseScaled(input, CREDIT_SCALE, maxFractionDigits);
  if (value > MAX_ABS || value < -MAX_ABS) throw new DecimalFormatError(input, "too large");
  return value;
}

export function formatCredits(value: Credits): string {
  return formatScaled(value, CREDIT_SCALE);
}

/** Parses a credits value coming from the database (`NUMERIC` as text, e.g. `"12.500000000000"`). */
export function creditsFromDb(value: string): Credits {
  return parseScaled(value, CREDIT_SCALE);
}

/** The database form: all 12 fractional digits, which PostgreSQL reads back exactly. */
export function creditsToDb(value: Credits): string {
  const negative = value < 0n;
  const [int, frac] = splitScaled(negative ? -value : value, CREDIT_SCALE);
  return negative ? `-${int}.${frac}` : `${int}.${frac}`;
}

/** Rates and quantities: decimals with at most 6 fractional digits, held × 10^6. */
export const RATE_SCALE = 6;
export type Scaled6 = bigint;

export function parseScaled6(input: unknown): Scaled6 {
  const value = parseScaled(input, RATE_SCALE);
  if (value > 10n ** 30n || value < -(10n ** 30n)) throw new DecimalFormatError(input, "too large");
  return value;
}

export function formatScaled6(value: Scaled6): string {
  return formatScaled(value, RATE_SCALE);
}

/** rate (×10^6) × quantity (×10^6) = credits (×10^12), exactly. */
export function multiplyRate(rate: Scaled6, quantity: Scaled6): Credits {
  return rate * quantity;
}

/**
 * Credits for `tokens` at `ratePerMillion` (×10^6): tokens × rate / 10^6 at scale 12 is exactly
 * tokens × (rate × 10^6), so the scaled rate is the per-token cost in 10^-12 credits.
 */
export function tokenCost(tokens: bigint, ratePerMillion: Scaled6): Credits {
  return tokens * ratePerMillion;
}

export function minCredits(a: Credits, b: Credits): Credits {
  return a < b ? a : b;
}

export function maxCredits(a: Credits, b: Credits): Credits {
  return a > b ? a : b;
}

export function sumCredits(values: Iterable<Credits>): Credits {
  let total = 0n;
  for (const v of values) total += v;
  return total;
}

/** Division rounded half to even; for ratios that cannot be exact (e.g. GB-hours from ms). */
export function divideRoundHalfEven(numerator: bigint, denominator: bigint): bigint {
  if (denominator === 0n) throw new RangeError("division by zero");
  if (denominator < 0n) return divideRoundHalfEven(-numerator, -denominator);
  const q = numerator / denominator;
  const r = numerator % denominator;
  if (r === 0n) return q;
  const twice = (r < 0n ? -r : r) * 2n;
  const away = numerator < 0n ? q - 1n : q + 1n;
  if (twice > denominator) return away;
  if (twice < denominator) return q;
  return q % 2n === 0n ? q : away;
}
