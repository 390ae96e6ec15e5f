import { describe, expect, it } from "vitest";
import { isoString } from "./instant.js";

describe("isoString", () => {
  it("is toISOString, for the same instant again and for others in between", () => {
    const instants = [0, 1, 1, 1_764_000_000_123, 1, -62_135_596_800_000, 253_402_300_799_999];
    for (const ms of instants) {
      expect(isoString(new Date(ms))).toBe(new Date(ms).toISOString());
    }
  });

  it("formats a Date changed in place as it now is", () => {
    const d = new Date(1_000);
    expect(isoString(d)).toBe("1970-01-01T00:00:01.000Z");
    d.setTime(2_000);
    expect(isoString(d)).toBe("1970-01-01T00:00:02.000Z");
  });
});
