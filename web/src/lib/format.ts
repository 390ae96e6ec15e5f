/**
 * Amounts arrive as exact decimal strings ("12.5", "-0.000125") and are shown without ever
 * passing through a JS number: the integer digits are grouped by `Intl.NumberFormat` as a BigInt
 * and the fraction digits are appended as they are. (Charts are the one place numbers are used,
 * for drawing only.)
 */

const DECIMAL = /^([+-])?(\d+)(?:\.(\d+))?$/;

export interface DecimalParts {
  negative: boolean;
  /** Integer digits without leading zeros ("0" for zero). */
  int: string;
  /** Fraction digits without trailing zeros ("" for none). */
  frac: string;
}

export function parseDecimal(value: string): DecimalParts {
  const m = DECIMAL.exec(value.trim());
  if (!m) throw new Error(`not a decimal: ${JSON.stringify(value)}`);
  const int = m[2]!.replace(/^0+(?=\d)/, "");
  const frac = (m[3] ?? "").replace(/0+$/, "");
  const zero = /^0$/.test(int) && frac === "";
  return { negative: m[1] === "-" && !zero, int, frac };
}

export function isDecimal(value: string): boolean {
  return DECIMAL.test(value.trim());
}

/** Rounds half to even to at most `digits` fraction digits, on the digits themselves. */
export function roundDecimal(parts: DecimalParts, digits: number): DecimalParts {
  if (parts.frac.length <= digits) return parts;
  const scaled = BigInt(parts.int + parts.frac.slice(0, digits));
  const rest = parts.frac.slice(digits);
  const half = `5${"0".repeat(rest.length - 1)}`;
  let rounded = scaled;
  if (rest > half || (rest === half && scaled % 2n === 1n)) rounded += 1n;
  const s = rounded.toString().padStart(digits + 1, "0");
  const int = digits === 0 ? s : s.slice(0, -digits);
  const frac = (digits === 0 ? "" : s.slice(-digits)).replace(/0+$/, "");
  const zero = /^0+$/.test(int) && frac === "";
  return { negative: parts.negative && !zero, int: int.replace(/^0+(?=\d)/, ""), frac };
}

const integerFormats = new Map<string, Intl.NumberFormat>();
function integerFormat(locale: string | undefined, options?: Intl.NumberFormatOptions) {
  const key = `${locale ?? ""}|${JSON.stringify(options ?? {})}`;
  let nf = integerFormats.get(key);
  if (!nf) {
    nf = new Intl.NumberFormat(locale, { ...options, maximumFractionDigits: 0 });
    integerFormats.set(key, nf);
  }
  return nf;
}

export function decimalSeparator(locale?: string): string {
  return (
    new Intl.NumberFormat(locale).formatToParts(1.5).find((p) => p.type === "decimal")?.value ?? "."
  );
}

/**
 * Formats with the locale's sign, grouping and currency placement: the parts of the integer
 * (as a BigInt) are kept and the fraction is inserted after the last integer digit group.
 */
function formatParts(
  parts: DecimalParts,
  locale: string | undefined,
  options: Intl.NumberFormatOptions | undefined,
  minFraction: number,
  signDisplay: "auto" | "always",
): string {
  const nf = integerFormat(locale, { ...options, signDisplay });
  const big = BigInt(parts.int);
  // BigInt has no −0: format ∓1 for the sign and layout, then put the zero back.
  const zeroInt = big === 0n;
  const formatted = nf.formatToParts(
    zeroInt ? (parts.negative ? -1n : 1n) : parts.negative ? -big : big,
  );
  if (signDisplay === "always" && zeroInt && !parts.negative && parts.frac === "") {
    // "+0" reads oddly: zero has no sign.
    const idx = formatted.findIndex((p) => p.type === "plusSign");
    if (idx >= 0) formatted.splice(idx, 1);
  }
  const frac = parts.frac.padEnd(minFraction, "0");
  let lastInteger = -1;
  for (let i = 0; i < formatted.length; i++) {
    const p = formatted[i]!;
    if (p.type === "integer") {
      if (zeroInt) p.value = "0";
      lastInteger = i;
    }
  }
  return formatted
    .map((p, i) =>
      i === lastInteger && frac !== "" ? p.value + decimalSeparator(locale) + frac : p.value,
    )
    .join("");
}

export interface DecimalFormat {
  locale?: string;
  /** Round (half to even) to at most this many fraction digits for display. */
  maxFraction?: number;
  minFraction?: number;
  /** Show "+" on positive values (ledger amounts). */
  signed?: boolean;
}

/** "1234567.5" → "1,234,567.5" (en-US), "1.234.567,5" (de-DE). Invalid input is shown as is. */
export function formatDecimal(value: string, opts: DecimalFormat = {}): string {
  if (!isDecimal(value)) return value;
  let parts = parseDecimal(value);
  if (opts.maxFraction !== undefined) parts = roundDecimal(parts, opts.maxFraction);
  return formatParts(
    parts,
    opts.locale,
    undefined,
    opts.minFraction ?? 0,
    opts.signed ? "always" : "auto",
  );
}

/** "49.00" USD → "$49.00"; the fraction is shown to the currency's digits as sent. */
export function formatMoney(amount: string, currency: string, locale?: string): string {
  if (!isDecimal(amount)) return `${amount} ${currency}`;
  const minFraction = currencyDigits(currency, locale);
  // Per-credit prices carry more digits than the currency has: they are kept.
  const parts = parseDecimal(amount);
  try {
    return formatParts(parts, locale, { style: "currency", currency }, minFraction, "auto");
  } catch {
    return `${formatDecimal(amount, { locale, minFraction })} ${currency}`;
  }
}

export function currencyDigits(currency: string, locale?: string): number {
  try {
    return (
      new Intl.NumberFormat(locale, { style: "currency", currency }).resolvedOptions()
        .minimumFractionDigits ?? 2
    );
  } catch {
    return 2;
  }
}

/** "20.00" → "20%"; "18.33" → "18.33%". */
export function formatPercent(value: string, locale?: string): string {
  return `${formatDecimal(value, { locale, maxFraction: 2 })}%`;
}

// ---- exact arithmetic for aggregation -------------------------------------------------------

const SCALE_DIGITS = 12;

/** A decimal string as a BigInt scaled by 10^12 (credits' precision). */
export function toScaled(value: string): bigint {
  const p = parseDecimal(value);
  const frac = p.frac.padEnd(SCALE_DIGITS, "0").slice(0, SCALE_DIGITS);
  const n = BigInt(p.int + frac);
  return p.negative ? -n : n;
}

export function fromScaled(value: bigint): string {
  const negative = value < 0n;
  const digits = (negative ? -value : value).toString().padStart(SCALE_DIGITS + 1, "0");
  const int = digits.slice(0, -SCALE_DIGITS);
  const frac = digits.slice(-SCALE_DIGITS).replace(/0+$/, "");
  return `${negative ? "-" : ""}${int}${frac ? `.${frac}` : ""}`;
}

export function sumDecimals(values: readonly string[]): string {
  return fromScaled(values.reduce((acc, v) => acc + toScaled(v), 0n));
}

export function compareDecimals(a: string, b: string): number {
  const d = toScaled(a) - toScaled(b);
  return d < 0n ? -1 : d > 0n ? 1 : 0;
}

/** For drawing only (chart coordinates); never for amounts shown as text. */
export function chartNumber(value: string): number {
  return Number(value);
}

// ---- dates ----------------------------------------------------------------------------------

export function formatDateTime(iso: string | null | undefined, locale?: string): string {
  if (!iso) return "—";
  return new Intl.DateTimeFormat(locale, {
    dateStyle: "medium",
    timeStyle: "short",
    timeZone: "UTC",
  }).format(new Date(iso));
}

export function formatDate(iso: string, locale?: string): string {
  return new Intl.DateTimeFormat(locale, { dateStyle: "medium", timeZone: "UTC" }).format(
    new Date(iso.length === 10 ? `${iso}T00:00:00Z` : iso),
  );
}

/** "2026-11" → "Nov 2026". */
export function formatMonth(period: string, locale?: string): string {
  return new Intl.DateTimeFormat(locale, {
    month: "short",
    year: "numeric",
    timeZone: "UTC",
  }).format(new Date(`${period}-01T00:00:00Z`));
}

export function isZero(value: string): boolean {
  return isDecimal(value) && toScaled(value) === 0n;
}

export function isPositive(value: string): boolean {
  return isDecimal(value) && toScaled(value) > 0n;
}

/** a ÷ b rounded half to even to `digits` fraction digits, exactly (b ≠ 0). */
export function divideDecimals(a: string, b: string, digits: number): string {
  const num = toScaled(a);
  const den = toScaled(b);
  if (den === 0n) throw new Error("division by zero");
  const scale = 10n ** BigInt(digits);
  const negative = num < 0n !== den < 0n;
  const n = (num < 0n ? -num : num) * scale;
  const d = den < 0n ? -den : den;
  let q = n / d;
  const r = n % d;
  if (r * 2n > d || (r * 2n === d && q % 2n === 1n)) q += 1n;
  const s = q.toString().padStart(digits + 1, "0");
  const int = digits === 0 ? s : s.slice(0, -digits);
  const frac = digits === 0 ? "" : s.slice(-digits).replace(/0+$/, "");
  const zero = q === 0n;
  return `${negative && !zero ? "-" : ""}${int}${frac ? `.${frac}` : ""}`;
}
