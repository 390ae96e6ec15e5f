import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { stableJson } from "../../app/stable-json.js";
import { payloadHashes } from "./prepare.js";
import type { UsageEventInput } from "./usage.schemas.js";

const payloadHash = (e: UsageEventInput) => payloadHashes(e).payloadHash;

/** The format stored payload hashes were computed with: it must never change. */
function reference(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(reference).join(",")}]`;
  if (value && typeof value === "object") {
    const keys = Object.keys(value).sort();
    return `{${keys
      .map((k) => `${JSON.stringify(k)}:${reference((value as Record<string, unknown>)[k])}`)
      .join(",")}}`;
  }
  return JSON.stringify(value) ?? "null";
}

describe("payload hash", () => {
  it("is pinned for a known event (org_id and timestamp left out, keys sorted at every level)", () => {
    const event = {
      id: "evt-1",
      org_id: "org_x",
      timestamp: "2026-11-01T00:00:00Z",
      type: "ai_tokens",
      model: "gpt-4o",
      user_id: "u-1",
      tokens: { output: 300, input: 1200 },
      metadata: { é: 'x"y', a: "1" },
    } as UsageEventInput;
    expect(stableJson(event, new Set(["org_id", "timestamp"]))).toBe(
      '{"id":"evt-1","metadata":{"a":"1","é":"x\\"y"},"model":"gpt-4o","tokens":{"input":1200,"output":300},"type":"ai_tokens","user_id":"u-1"}',
    );
    expect(payloadHash(event)).toBe(
      "2c451aa59b32ce805d4e01effa4a56a9721fe44b166a34e5172aa48498c28b0c",
    );
    expect(payloadHash({ ...event, org_id: "org_y", timestamp: undefined })).toBe(
      payloadHash(event),
    );
  });

  it("writes any JSON value (and undefined members) exactly as the stored format does", () => {
    const withUndefined = fc.dictionary(fc.string(), fc.option(fc.jsonValue(), { nil: undefined }));
    fc.assert(
      fc.property(fc.oneof(fc.jsonValue(), withUndefined), (value) => {
        expect(stableJson(value)).toBe(reference(value));
      }),
      { numRuns: 500 },
    );
  });

  it("leaves out the omitted keys at the top level only", () => {
    fc.assert(
      fc.property(
        fc.dictionary(fc.constantFrom("a", "org_id", "timestamp", "z"), fc.jsonValue()),
        (value) => {
          const { org_id: _o, timestamp: _t, ...rest } = value;
          expect(stableJson(value, new Set(["org_id", "timestamp"]))).toBe(reference(rest));
          expect(stableJson({ nested: value }, new Set(["org_id"]))).toBe(
            reference({ nested: value }),
          );
        },
      ),
    );
  });
});
