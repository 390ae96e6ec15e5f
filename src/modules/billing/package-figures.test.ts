import { describe, expect, it } from "vitest";
import { parseCredits } from "../ledger/credits.js";
import {
  formatFixed,
  highestPricePerCredit,
  type PackageAmounts,
  packageFigures,
  pricePerCredit,
} from "./package-figures.js";
import { unitCostOf } from "./purchase-figures.js";

const pkg = (
  credits: string,
  bonus: string,
  priceMinor: bigint,
  currency = "USD",
): PackageAmounts => ({
  credits: parseCredits(credits),
  bonusCredits: parseCredits(bonus),
  priceMinor,
  currency,
});

describe("package figures", () => {
  const base = pkg("500", "0", 2500n); // 0.05 per credit
  const mid = pkg("1000", "200", 4900n); // 49 / 1200 = 0.0408333…
  const big = pkg("3000", "1000", 12000n); // 0.03 per credit
  const reference = highestPricePerCredit([mid, base, big]);

  it("picks the highest price per credit as the savings reference", () => {
    expect(reference).toEqual(pricePerCredit(base));
  });

  it("computes total credits, price per credit, bonus % and savings %", () => {
    expect(packageFigures(base, reference)).toEqual({
      totalCredits: parseCredits("500"),
      effectivePricePerCredit: "0.050000",
      bonusPercent: "0.00",
      savingsPercent: "0.00",
    });
    expect(packageFigures(mid, reference)).toEqual({
      totalCredits: parseCredits("1200"),
      effectivePricePerCredit: "0.040833",
      bonusPercent: "20.00",
      savingsPercent: "18.33",
    });
    expect(packageFigures(big, reference)).toEqual({
      totalCredits: parseCredits("4000"),
      effectivePricePerCredit: "0.030000",
      bonusPercent: "33.33",
      savingsPercent: "40.00",
    });
  });

  it("rounds half to even", () => {
    // 1 / 800 × 100 = 0.125 → 0.12; 3 / 800 × 100 = 0.375 → 0.38
    expect(packageFigures(pkg("800", "1", 100n), null).bonusPercent).toBe("0.12");
    expect(packageFigures(pkg("800", "3", 100n), null).bonusPercent).toBe("0.38");
    // 0.0000125 per credit → 0.000012; 0.0000135 → 0.000014
    expect(packageFigures(pkg("80000", "0", 100n), null).effectivePricePerCredit).toBe("0.000012");
    expect(packageFigures(pkg("200000", "0", 270n), null).effectivePricePerCredit).toBe("0.000014");
  });

  it("uses the currency's exponent (JPY has none)", () => {
    const yen = pkg("1000", "0", 1200n, "JPY");
    expect(packageFigures(yen, null).effectivePricePerCredit).toBe("1.200000");
  });

  it("handles fractional credits exactly", () => {
    const p = pkg("0.5", "0.25", 300n); // 3.00 / 0.75 = 4
    expect(packageFigures(p, null).effectivePricePerCredit).toBe("4.000000");
    expect(packageFigures(p, null).bonusPercent).toBe("50.00");
  });

  it("a package priced above every active one (an inactive one) saves 0, not a negative", () => {
    expect(packageFigures(pkg("100", "0", 1000n), reference).savingsPercent).toBe("0.00");
    expect(packageFigures(base, null).savingsPercent).toBe("0.00");
  });

  it("formats fixed digits", () => {
    expect(formatFixed(0n, 2)).toBe("0.00");
    expect(formatFixed(-5n, 2)).toBe("-0.05");
    expect(formatFixed(12345n, 0)).toBe("12345");
  });
});

describe("unit cost of a purchase", () => {
  it("is amount ÷ paid credits with 12 fractional digits, rounded half to even", () => {
    expect(unitCostOf(4900n, "USD", parseCredits("1000"))).toBe("0.049");
    expect(unitCostOf(1000n, "USD", parseCredits("3"))).toBe("3.333333333333");
    expect(unitCostOf(2000n, "USD", parseCredits("3"))).toBe("6.666666666667");
    expect(unitCostOf(1200n, "JPY", parseCredits("1000"))).toBe("1.2");
  });
});
