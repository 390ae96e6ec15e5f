import { describe, expect, it } from "vitest";
import {
  compareDecimals,
  divideDecimals,
  formatDecimal,
  formatMoney,
  formatPercent,
  parseDecimal,
  roundDecimal,
  sumDecimals,
} from "../web/src/lib/format.js";

describe("web amount formatting (exact decimal strings, never floats)", () => {
  it("groups the integer digits by locale and keeps every fraction digit", () => {
    expect(formatDecimal("1234567.5", { locale: "en-US" })).toBe("1,234,567.5");
    expect(formatDecimal("1234567.5", { locale: "de-DE" })).toBe("1.234.567,5");
    expect(formatDecimal("1234567.5", { locale: "fr-FR" })).toBe("1\u202f234\u202f567,5");
    expect(formatDecimal("0.000000000001", { locale: "en-US" })).toBe("0.000000000001");
    // Beyond a double's 15–17 significant digits, nothing is lost.
    expect(formatDecimal("12345678901234567890123456.123456789012", { locale: "en-US" })).toBe(
      "12,345,678,901,234,567,890,123,456.123456789012",
    );
    expect(formatDecimal("0.1", { locale: "en-US" })).toBe("0.1");
  });

  it("handles signs, zero and trailing zeros", () => {
    expect(formatDecimal("-0.000125", { locale: "en-US" })).toBe("-0.000125");
    expect(formatDecimal("-1234.50", { locale: "en-US" })).toBe("-1,234.5");
    expect(formatDecimal("+100", { locale: "en-US", signed: true })).toBe("+100");
    expect(formatDecimal("100", { locale: "en-US", signed: true })).toBe("+100");
    expect(formatDecimal("-20", { locale: "en-US", signed: true })).toBe("-20");
    expect(formatDecimal("0", { locale: "en-US", signed: true })).toBe("0");
    expect(formatDecimal("-0.0", { locale: "en-US" })).toBe("0");
    expect(formatDecimal("007.10", { locale: "en-US" })).toBe("7.1");
    expect(formatDecimal("not a number")).toBe("not a number");
  });

  it("rounds half to even on the digits when asked to shorten", () => {
    expect(formatDecimal("2.5", { locale: "en-US", maxFraction: 0 })).toBe("2");
    expect(formatDecimal("3.5", { locale: "en-US", maxFraction: 0 })).toBe("4");
    expect(formatDecimal("0.123456789", { locale: "en-US", maxFraction: 4 })).toBe("0.1235");
    expect(formatDecimal("9999.99995", { locale: "en-US", maxFraction: 4 })).toBe("10,000");
    expect(formatDecimal("-0.00004", { locale: "en-US", maxFraction: 4 })).toBe("0");
    expect(roundDecimal(parseDecimal("1.00005"), 4)).toEqual({
      negative: false,
      int: "1",
      frac: "",
    });
  });

  it("formats money with the currency's symbol and digits", () => {
    expect(formatMoney("49", "USD", "en-US")).toBe("$49.00");
    expect(formatMoney("1234.5", "EUR", "de-DE")).toBe("1.234,50\u00a0€");
    expect(formatMoney("1200", "JPY", "ja-JP")).toBe("￥1,200");
    expect(formatMoney("-0.5", "USD", "en-US")).toBe("-$0.50");
    // A price per credit keeps its extra digits.
    expect(formatMoney("0.040833", "USD", "en-US")).toBe("$0.040833");
  });

  it("does exact arithmetic for totals and ratios", () => {
    expect(sumDecimals(["0.1", "0.2"])).toBe("0.3");
    expect(sumDecimals(["-1.5", "0.000000000001", "2"])).toBe("0.500000000001");
    expect(compareDecimals("10", "9.999999999999")).toBe(1);
    expect(divideDecimals("10.00", "1000", 6)).toBe("0.01");
    expect(divideDecimals("49", "1200", 6)).toBe("0.040833");
    expect(divideDecimals("1", "3", 2)).toBe("0.33");
    expect(divideDecimals("0.125", "1", 2)).toBe("0.12");
    expect(formatPercent("18.333", "en-US")).toBe("18.33%");
  });
});
