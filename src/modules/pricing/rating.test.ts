import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { formatCredits, formatScaled, parseScaled6 } from "../ledger/credits.js";
import { meterCost, storageIntervalCost, type TokenCounts, tokensCost } from "./rating.js";

const rates = (input: string, cached_input: string, cache_write: string, output: string) => ({
  input: parseScaled6(input),
  cached_input: parseScaled6(cached_input),
  cache_write: parseScaled6(cache_write),
  output: parseScaled6(output),
});
const tokens = (input: number, cached_input = 0, cache_write = 0, output = 0): TokenCounts => ({
  input: BigInt(input),
  cached_input: BigInt(cached_input),
  cache_write: BigInt(cache_write),
  output: BigInt(output),
});
const at = (iso: string) => new Date(iso);

describe("tokensCost", () => {
  it("sums every bucket at its own rate per 1M tokens", () => {
    // 1200×250 + 300×125 + 0×250 + 350×1000 = 300000 + 37500 + 350000 = 687500 per 1M → 0.6875
    const cost = tokensCost(rates("250", "125", "250", "1000"), tokens(1200, 300, 0, 350));
    expect(formatCredits(cost)).toBe("0.6875");
  });

  it("prices cache writes separately (Anthropic-style rates)", () => {
    // 1000×300 + 2000×30 + 4000×375 + 500×1500 = 300000+60000+1500000+750000 = 2610000 → 2.61
    const cost = tokensCost(rates("300", "30", "375", "1500"), tokens(1000, 2000, 4000, 500));
    expect(formatCredits(cost)).toBe("2.61");
  });

  it("is exact for one token at the smallest rate", () => {
    expect(formatCredits(tokensCost(rates("0.000001", "0", "0", "0"), tokens(1)))).toBe(
      "0.000000000001",
    );
  });

  it("is exact for a trillion tokens at 6-decimal rates", () => {
    // 999999999999 × 123456.789012 = 123456789012000000 − 123456.789012
    //                              = 123456789011876543.210988; ÷ 10^6:
    const cost = tokensCost(
      rates("123456.789012", "0", "0", "0"),
      tokens(999_999_999_999, 0, 0, 0),
    );
    expect(formatCredits(cost)).toBe("123456789011.876543210988");
    // All four buckets at 10^12 tokens and the largest accepted rate (≤ 12 integer digits).
    const max = "999999999999.999999";
    const big = tokensCost(rates(max, max, max, max), tokens(1e12, 1e12, 1e12, 1e12));
    // 4 × 10^12 × 999999999999.999999 ÷ 10^6 = 4 × 999999999999999999 = 3999999999999999996
    expect(formatCredits(big)).toBe("3999999999999999996");
  });

  it("costs nothing for no tokens", () => {
    expect(tokensCost(rates("250", "125", "250", "1000"), tokens(0))).toBe(0n);
  });

  it("is additive: cost(a + b) = cost(a) + cost(b) (property)", () => {
    const rate = fc.bigInt({ min: 0n, max: 999_999_999_999_999_999n }); // ≤ 12 integer, 6 frac digits
    const count = fc.bigInt({ min: 0n, max: 500_000_000_000n });
    const counts = fc.record({
      input: count,
      cached_input: count,
      cache_write: count,
      output: count,
    });
    fc.assert(
      fc.property(
        fc.record({ input: rate, cached_input: rate, cache_write: rate, output: rate }),
        counts,
        counts,
        (r, a, b) => {
          const sum: TokenCounts = {
            input: a.input + b.input,
            cached_input: a.cached_input + b.cached_input,
            cache_write: a.cache_write + b.cache_write,
            output: a.output + b.output,
          };
          expect(tokensCost(r, sum)).toBe(tokensCost(r, a) + tokensCost(r, b));
        },
      ),
      { numRuns: 500 },
    );
  });

  it("agrees with decimal long multiplication done on strings (property)", () => {
    // Reference: shift the decimal point by string manipulation, independent of credits.ts.
    const reference = (count: bigint, rateDigits: string, rateFrac: string): string => {
      const product = (count * BigInt(rateDigits + rateFrac)).toString();
      // rate has rateFrac.length fractional digits; ÷ 10^6 (per 1M) adds 6 more.
      const frac = rateFrac.length + 6;
      const padded = product.padStart(frac + 1, "0");
      const int = padded.slice(0, padded.length - frac).replace(/^0+(?=\d)/, "");
      const f = padded.slice(padded.length - frac).replace(/0+$/, "");
      return f ? `${int}.${f}` : int;
    };
    fc.assert(
      fc.property(
        fc.bigInt({ min: 0n, max: 1_000_000_000_000n }),
        fc.stringMatching(/^[1-9]\d{0,5}$/),
        fc.stringMatching(/^\d{0,6}$/),
        (count, int, frac) => {
          const rate = frac ? `${int}.${frac}` : int;
          const cost = tokensCost(rates(rate, "0", "0", "0"), { ...tokens(0), input: count });
          expect(formatCredits(cost)).toBe(reference(count, int, frac));
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe("meterCost", () => {
  it("multiplies quantity by rate exactly", () => {
    expect(formatCredits(meterCost(parseScaled6("0.002"), parseScaled6("3600")))).toBe("7.2");
    expect(formatCredits(meterCost(parseScaled6("0.9"), parseScaled6("123456.654321")))).toBe(
      "111110.9888889",
    );
    expect(formatCredits(meterCost(parseScaled6("0.000004"), parseScaled6("1000000")))).toBe("4");
    expect(formatCredits(meterCost(parseScaled6("0.000001"), parseScaled6("0.000001")))).toBe(
      "0.000000000001",
    );
    expect(
      formatCredits(meterCost(parseScaled6("999999.999999"), parseScaled6("999999.999999"))),
    ).toBe("999999999998.000000000001");
  });

  it("is additive in the quantity (property)", () => {
    const q = fc.bigInt({ min: 0n, max: 10n ** 18n });
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: 10n ** 18n }), q, q, (rate, a, b) => {
        expect(meterCost(rate, a + b)).toBe(meterCost(rate, a) + meterCost(rate, b));
      }),
    );
  });
});

describe("storageIntervalCost", () => {
  const gbHours = (v: bigint) => formatScaled(v, 12);

  it("bills the previous reading × hours × rate", () => {
    const charge = storageIntervalCost(
      parseScaled6("0.0001"),
      parseScaled6("10"),
      at("2026-11-24T10:00:00Z"),
      at("2026-11-24T11:00:00Z"),
    );
    expect(formatCredits(charge.cost)).toBe("0.001");
    expect(gbHours(charge.quantity)).toBe("10");
  });

  it("is exact when the interval is a finite decimal number of hours", () => {
    // 2.5 GB × 90 min (1.5 h) × 0.000123 = 0.000461250
    const charge = storageIntervalCost(
      parseScaled6("0.000123"),
      parseScaled6("2.5"),
      at("2026-11-24T10:00:00Z"),
      at("2026-11-24T11:30:00Z"),
    );
    expect(formatCredits(charge.cost)).toBe("0.00046125");
    expect(gbHours(charge.quantity)).toBe("3.75");
  });

  it("rounds the exact rational once, half to even, to 12 decimals", () => {
    // 1 GB × 1 ms × 1 credit/GB-hour = 1/3600000 = 0.000000277777… → 0.000000277778
    const oneMs = storageIntervalCost(
      parseScaled6("1"),
      parseScaled6("1"),
      at("2026-11-24T10:00:00.000Z"),
      at("2026-11-24T10:00:00.001Z"),
    );
    expect(formatCredits(oneMs.cost)).toBe("0.000000277778");
    expect(gbHours(oneMs.quantity)).toBe("0.000000277778");

    // 0.000001 GB × 0.5 h × 0.000001 = 0.5 × 10^-12: a tie, rounded to even (0), not up.
    const halfTie = storageIntervalCost(
      parseScaled6("0.000001"),
      parseScaled6("0.000001"),
      at("2026-11-24T10:00:00Z"),
      at("2026-11-24T10:30:00Z"),
    );
    expect(halfTie.cost).toBe(0n);
    expect(gbHours(halfTie.quantity)).toBe("0.0000005");
    // 1.5 × 10^-12 → 2 × 10^-12 (even); 2.5 × 10^-12 → 2 × 10^-12 (even).
    const t = (minutes: number) =>
      storageIntervalCost(
        parseScaled6("0.000001"),
        parseScaled6("0.000001"),
        at("2026-11-24T10:00:00Z"),
        new Date(at("2026-11-24T10:00:00Z").getTime() + minutes * 60_000),
      ).cost;
    expect(t(90)).toBe(2n);
    expect(t(150)).toBe(2n);
    expect(t(210)).toBe(4n);
  });

  it("computes the cost from the exact quantity, not from the rounded GB-hours", () => {
    // 3 GB × 1 ms = 0.000000833333… GB-h; × 999999 credits/GB-h = 0.83333250000… credits.
    const charge = storageIntervalCost(
      parseScaled6("999999"),
      parseScaled6("3"),
      at("2026-11-24T10:00:00.000Z"),
      at("2026-11-24T10:00:00.001Z"),
    );
    expect(formatCredits(charge.cost)).toBe("0.8333325");
    expect(gbHours(charge.quantity)).toBe("0.000000833333");
  });

  it("bills nothing for an empty interval or a zero reading", () => {
    const t0 = at("2026-11-24T10:00:00Z");
    expect(storageIntervalCost(parseScaled6("1"), parseScaled6("5"), t0, t0)).toEqual({
      cost: 0n,
      quantity: 0n,
    });
    expect(storageIntervalCost(parseScaled6("1"), 0n, t0, at("2026-11-25T10:00:00Z")).cost).toBe(
      0n,
    );
  });

  it("refuses an interval that ends before it starts", () => {
    expect(() =>
      storageIntervalCost(1n, 1n, at("2026-11-24T10:00:00Z"), at("2026-11-24T09:00:00Z")),
    ).toThrow(RangeError);
  });

  it("a month of readings costs what the whole month costs, within one unit per interval", () => {
    // 720 hourly readings of 100 GB at 0.0001 credits/GB-h vs one 720 h interval: both exact here.
    const rate = parseScaled6("0.0001");
    const start = at("2026-11-01T00:00:00Z").getTime();
    let total = 0n;
    for (let h = 0; h < 720; h++) {
      total += storageIntervalCost(
        rate,
        parseScaled6("100"),
        new Date(start + h * 3_600_000),
        new Date(start + (h + 1) * 3_600_000),
      ).cost;
    }
    expect(formatCredits(total)).toBe("7.2");
  });
});
