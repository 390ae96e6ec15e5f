import { spawnSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { HEAP_GROWING_PERCENT, limitHeapGrowth } from "./heap.js";

describe("limitHeapGrowth", () => {
  it("sets V8's heap growing factor when the operator chose none", () => {
    const set: string[] = [];
    expect(limitHeapGrowth([], "", (f) => set.push(f))).toBe(true);
    expect(set).toEqual([`--heap-growing-percent=${HEAP_GROWING_PERCENT}`]);
  });

  it("leaves a factor given on the command line or in NODE_OPTIONS alone", () => {
    const set: string[] = [];
    expect(limitHeapGrowth(["--heap-growing-percent=50"], "", (f) => set.push(f))).toBe(false);
    expect(
      limitHeapGrowth([], "--max-old-space-size=512 --heap_growing_percent=80", (f) => set.push(f)),
    ).toBe(false);
    expect(limitHeapGrowth(["--max-semi-space-size=32"], "--inspect", (f) => set.push(f))).toBe(
      true,
    );
    expect(set).toEqual([`--heap-growing-percent=${HEAP_GROWING_PERCENT}`]);
  });

  it("is a flag this Node's V8 knows (an unknown one is reported on stderr)", () => {
    const stderr = (flag: string) =>
      spawnSync(process.execPath, ["-e", `require("node:v8").setFlagsFromString("${flag}")`], {
        encoding: "utf8",
      }).stderr;
    expect(stderr(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`)).toBe("");
    expect(stderr("--heap-growing-percentage=200")).toContain("unrecognized flag");
  });
});
