import { describe, expect, it } from "vitest";
import { csvCell, csvLine } from "./csv.js";

describe("csvCell", () => {
  it("prefixes text a spreadsheet would run as a formula with a quote", () => {
    for (const text of ["=SUM(A1)", "+1+1", "-2+3", "@cmd", "\tx", "\rx"]) {
      expect(csvCell(text).replace(/^"|"$/g, "")).toBe(`'${text}`);
    }
  });

  it("leaves plain numbers, signed or not, as numbers", () => {
    for (const n of ["-30", "+5", "12.500000000000", "-0.000125", "0"]) expect(csvCell(n)).toBe(n);
    expect(csvCell(-3n)).toBe("-3");
  });

  it("quotes commas, quotes and line breaks (RFC 4180); empty for null", () => {
    expect(csvCell('a "b", c')).toBe('"a ""b"", c"');
    expect(csvCell("two\r\nlines")).toBe('"two\r\nlines"');
    expect(csvCell(null)).toBe("");
    expect(csvLine(["a", 1, null, true])).toBe("a,1,,true\r\n");
  });
});
