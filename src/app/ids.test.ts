import { describe, expect, it } from "vitest";
import { CLIENT_ID_PATTERN, createIdGenerator, type IdPrefix } from "./ids.js";

const CROCKFORD = "[0-9A-HJKMNP-TV-Z]";
const FORMAT = new RegExp(`^([a-z]+)_(${CROCKFORD}{26})$`);

describe("ids", () => {
  it("prefixes the body and uses 26 Crockford base32 characters", () => {
    const ids = createIdGenerator();
    const prefixes: IdPrefix[] = ["org", "key", "txn", "blk", "pur", "pkg", "rsv", "whe", "ref"];
    for (const prefix of prefixes) {
      const id = ids.newId(prefix);
      expect(id).toMatch(FORMAT);
      expect(id.startsWith(`${prefix}_`)).toBe(true);
    }
  });

  it("encodes the creation millisecond in the first 10 characters", () => {
    const ms = Date.UTC(2026, 10, 24, 10, 0, 0, 0);
    const id = createIdGenerator(() => ms).newId("org");
    const body = id.slice(4, 14);
    let decoded = 0n;
    for (const c of body)
      decoded = decoded * 32n + BigInt("0123456789ABCDEFGHJKMNPQRSTVWXYZ".indexOf(c));
    expect(Number(decoded)).toBe(ms);
  });

  it("sorts in creation order across milliseconds", () => {
    let ms = 1_700_000_000_000;
    const ids = createIdGenerator(() => ms);
    const made: string[] = [];
    for (let i = 0; i < 200; i++) {
      ms += 1 + (i % 7);
      made.push(ids.newId("txn"));
    }
    expect([...made].sort()).toEqual(made);
  });

  it("sorts in creation order within one millisecond", () => {
    const ids = createIdGenerator(() => 1_700_000_000_000);
    const made = Array.from({ length: 1000 }, () => ids.newId("txn"));
    expect(new Set(made).size).toBe(made.length);
    expect([...made].sort()).toEqual(made);
  });

  it("stays ordered when the clock steps backwards", () => {
    let ms = 1_700_000_000_500;
    const ids = createIdGenerator(() => ms);
    const a = ids.newId("txn");
    ms -= 400;
    const b = ids.newId("txn");
    ms += 1000;
    const c = ids.newId("txn");
    expect([a, b, c].sort()).toEqual([a, b, c]);
    expect(new Set([a, b, c]).size).toBe(3);
  });

  it("gives different random parts to different generators in the same millisecond", () => {
    const a = createIdGenerator(() => 1_700_000_000_000).newId("org");
    const b = createIdGenerator(() => 1_700_000_000_000).newId("org");
    expect(a.slice(0, 14)).toBe(b.slice(0, 14));
    expect(a).not.toBe(b);
  });

  it("real-clock ids sort in creation order", () => {
    const ids = createIdGenerator();
    const made = Array.from({ length: 5000 }, () => ids.newId("evt"));
    expect([...made].sort()).toEqual(made);
  });
});

describe("client ids", () => {
  const pattern = new RegExp(CLIENT_ID_PATTERN);
  it("accepts 1–128 characters of [A-Za-z0-9._:-]", () => {
    for (const ok of ["a", "u-17", "evt.8f2c:1_x", "A".repeat(128)]) {
      expect(pattern.test(ok), ok).toBe(true);
    }
    for (const bad of ["", "a b", "ü", "a/b", "A".repeat(129), "a\n"]) {
      expect(pattern.test(bad), JSON.stringify(bad)).toBe(false);
    }
  });
});
