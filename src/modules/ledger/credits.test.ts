import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  creditsFromDb,
  creditsToDb,
  DecimalFormatError,
  divideRoundHalfEven,
  formatCredits,
  multiplyRate,
  parseCredits,
  parseScaled6,
  tokenCost,
} from "./credits.js";
import { formatMoney, parseMoney } from "./money.js";

/** Credits as bigints within NUMERIC(38,12). */
const credits = fc.bigInt({ min: -(10n ** 30n), max: 10n ** 30n });

describe("Credits", () => {
  it("parses and formats exact decimals", () => {
    expect(parseCredits("12.5")).toBe(12_500_000_000_000n);
    expect(parseCredits("-0.000125")).toBe(-125_000_000n);
    expect(parseCredits("+100")).toBe(100n * 10n ** 12n);
    expect(parseCredits("0.000000000001")).toBe(1n);
    expect(formatCredits(12_500_000_000_000n)).toBe("12.5");
    expect(formatCredits(-125_000_000n)).toBe("-0.000125");
    expect(formatCredits(0n)).toBe("0");
    expect(formatCredits(-1n)).toBe("-0.000000000001");
    expect(formatCredits(parseCredits("-0"))).toBe("0");
  });

  it.each([
    ["0.0000000000001", "13 fractional digits"],
    ["1e3", "exponent"],
    ["1E-3", "exponent"],
    [".5", "no integer part"],
    ["5.", "dangling point"],
    ["", "empty"],
    [" 1", "whitespace"],
    ["NaN", "NaN"],
    ["Infinity", "Infinity"],
    ["0x10", "hex"],
    ["1,5", "comma"],
    ["--1", "double sign"],
    ["1".repeat(27), "beyond NUMERIC(38,12)"],
  ])("rejects %j (%s)", (input) => {
    expect(() => parseCredits(input)).toThrow(DecimalFormatError);
  });

  it("rejects JS numbers, bigints and other non-strings", () => {
    for (const value of [1.5, 1, 10n, null, undefined, {}, ["1"]]) {
      expect(() => parseCredits(value)).toThrow(DecimalFormatError);
    }
  });

  it("format ∘ parse is the identity on canonical strings, parse ∘ format on values", () => {
    fc.assert(
      fc.property(credits, (c) => {
        expect(parseCredits(formatCredits(c))).toBe(c);
        expect(creditsFromDb(creditsToDb(c))).toBe(c);
      }),
    );
  });

  it("addition is exact and associative with no loss at 12 digits", () => {
    fc.assert(
      fc.property(credits, credits, credits, (a, b, c) => {
        const left = parseCredits(formatCredits(parseCredits(formatCredits(a + b)) + c));
        const right = parseCredits(formatCredits(a + parseCredits(formatCredits(b + c))));
        expect(left).toBe(right);
        expect(left - c - b).toBe(a);
      }),
    );
    // The classic float failure is exact here.
    expect(formatCredits(parseCredits("0.1") + parseCredits("0.2"))).toBe("0.3");
    expect(formatCredits(parseCredits("0.000000000001") * 3n)).toBe("0.000000000003");
  });

  it("rate × quantity is exact at scale 12", () => {
    expect(formatCredits(multiplyRate(parseScaled6("0.000004"), parseScaled6("0.000001")))).toBe(
      "0.000000000004",
    );
    expect(formatCredits(multiplyRate(parseScaled6("0.9"), parseScaled6("12.5")))).toBe("11.25");
    // 1,234,567 tokens at 2.5 credits per million = 3.0864175 credits.
    expect(formatCredits(tokenCost(1_234_567n, parseScaled6("2.5")))).toBe("3.0864175");
    expect(() => parseScaled6("0.0000001")).toThrow(DecimalFormatError);
  });

  it("rounds half to even only where a division is unavoidable", () => {
    expect(divideRoundHalfEven(5n, 2n)).toBe(2n);
    expect(divideRoundHalfEven(7n, 2n)).toBe(4n);
    expect(divideRoundHalfEven(-5n, 2n)).toBe(-2n);
    expect(divideRoundHalfEven(-7n, 2n)).toBe(-4n);
    expect(divideRoundHalfEven(10n, 3n)).toBe(3n);
    expect(divideRoundHalfEven(20n, 3n)).toBe(7n);
  });
});

describe("Money", () => {
  it("uses the currency's exponent", () => {
    expect(parseMoney("49.00", "USD").minor).toBe(4900n);
    expect(parseMoney("49", "USD").minor).toBe(4900n);
    expect(formatMoney({ minor: 4900n, currency: "USD" })).toBe("49.00");
    expect(parseMoney("1200", "JPY").minor).toBe(1200n);
    expect(formatMoney({ minor: 1200n, currency: "JPY" })).toBe("1200");
    expect(parseMoney("1.23", "KWD").minor).toBe(1230n);
    // Minor units as Stripe counts them, whatever the runtime's display data says.
    expect(parseMoney("4990", "HUF").minor).toBe(499000n);
    expect(formatMoney({ minor: 499000n, currency: "HUF" })).toBe("4990.00");
    expect(parseMoney("4990.50", "HUF").minor).toBe(499050n);
    expect(parseMoney("1500", "ISK").minor).toBe(150000n);
    expect(parseMoney("1500", "IDR").minor).toBe(150000n);
    expect(parseMoney("1500", "UGX").minor).toBe(1500n);
    expect(() => parseMoney("1500.5", "ISK")).toThrow(/whole krónur/);
    expect(() => parseMoney("1.234", "KWD")).toThrow(/must end in 0/);
    expect(() => parseMoney("49.001", "USD")).toThrow(DecimalFormatError);
    expect(() => parseMoney("1200.5", "JPY")).toThrow(DecimalFormatError);
    expect(() => parseMoney("1", "XYZ")).toThrow(DecimalFormatError);
  });
});
