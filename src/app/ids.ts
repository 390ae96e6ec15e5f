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

/** `value` (a non-negative integer below 2^53) as `length` base32 digits, most significant first. */
function encode(value: number, length: number): string {
  let out = "";
  for (let i = 0; i < length; i++) {
    out = ALPHABET[value % 32]! + out;
    value = Math.floor(value / 32);
  }
  return out;
}

const TWO_40 = 2 ** 40;

export function createIdGenerator(now: () => number = Date.now): IdGenerator {
  let lastMs = -1;
  // The 80-bit counter as two 40-bit halves (plain numbers: BigInt arithmetic cost a usage
  // event several ids' worth of microseconds).
  let high = 0;
  let low = 0;
  return {
    newId(prefix) {
      let ms = now();
      if (ms <= lastMs) {
        ms = lastMs;
        low++;
        if (low === TWO_40) {
          low = 0;
          high = high === TWO_40 - 1 ? 0 : high + 1;
        }
      } else {
        lastMs = ms;
        const random = randomBytes(10);
        high = random.readUIntBE(0, 5);
        low = random.readUIntBE(5, 5);
      }
      return `${prefix}_${encode(ms, 10)}${encode(high, 8)}${encode(low, 8)}`;
    },
  };
}

/** Plan names an organisation can have (and TALLY_CREDIT_PLANS may name). */
export const PLAN_NAME_PATTERN = "^[A-Za-z0-9._-]{1,64}$";

/** Client-supplied ids: organisation external ids, user ids, usage event ids. */
export const CLIENT_ID_PATTERN = "^[A-Za-z0-9._:-]{1,128}$";
