import { randomBytes } from "node:crypto";

/**
 * Prefixed, time-sortable identifiers: `org_01JD3…`. The body is a ULID-style 26-character
 * Crockford base32 string: 48 bits of milliseconds, then 80 bits that are random for a new
 * millisecond and incremented within one, so ids from one generator sort in creation order.
 */
export type IdPrefix =
  | "org"
  | "key"
  | "txn"
  | "blk"
  | "pur"
  | "pkg"
  | "rsv"
  | "whe"
  | "ref"
  | "req"
  | "evt"
  | "psn"
  | "job"
  | "att"
  | "dlv"
  | "pv"
  | "sbx"
  | "pmt"
  | "ses";

export interface IdGenerator {
  newId(prefix: IdPrefix): string;
}

const ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

function encode(value: bigint, length: number): string {
  let out = "";
  for (let i = 0; i < length; i++) {
    out = ALPHABET[Number(value & 31n)] + out;
    value >>= 5n;
  }
  return out;
}

export function createIdGenerator(now: () => number = Date.now): IdGenerator {
  let lastMs = -1;
  let lastRandom = 0n;
  const MAX_RANDOM = (1n << 80n) - 1n;
  return {
    newId(prefix) {
      let ms = now();
      if (ms <= lastMs) {
        ms = lastMs;
        lastRandom = lastRandom === MAX_RANDOM ? 0n : lastRandom + 1n;
      } else {
        lastMs = ms;
        lastRandom = BigInt(`0x${randomBytes(10).toString("hex")}`);
      }
      return `${prefix}_${encode(BigInt(ms), 10)}${encode(lastRandom, 16)}`;
    },
  };
}

/** Client-supplied ids: organisation external ids, user ids, usage event ids. */
export const CLIENT_ID_PATTERN = "^[A-Za-z0-9._:-]{1,128}$";
