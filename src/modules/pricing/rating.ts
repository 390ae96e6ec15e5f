/**
 * Rating: the exact cost in credits of one usage event, given its rates. Pure functions.
 *
 * Rates (credits per 1M tokens, or per unit) and quantities carry ≤ 6 fractional digits and are
 * held × 10^6 (`Scaled6`); costs are `Credits` (× 10^12). Token and meter costs are products of
 * those and therefore exact. The one place where rating rounds is a storage interval, because
 * hours = ms / 3 600 000 is in general not a finite decimal: the exact rational cost is rounded
 * once, half to even, to 12 decimals. The ledger then records the rated cost as is.
 */
import {
  type Credits,
  divideRoundHalfEven,
  multiplyRate,
  type Scaled6,
  tokenCost,
} from "../ledger/credits.js";
import type { ModelPrice } from "./catalogue.js";

/** Token counts in disjoint buckets: `input` excludes cached input and cache writes. */
export interface TokenCounts {
  readonly input: bigint;
  readonly cached_input: bigint;
  readonly cache_write: bigint;
  readonly output: bigint;
}

export const TOKEN_BUCKETS = ["input", "cached_input", "cache_write", "output"] as const;

/** A bigint × 10^12 that is a quantity, not credits (GB-hours billed for a storage interval). */
export type Scaled12 = bigint;

const MS_PER_HOUR = 3_600_000n;
const SCALE6 = 1_000_000n;

/** Σ over buckets of tokens × rate per 1M ÷ 10^6 — exact. */
export function tokensCost(
  rates: Pick<ModelPrice, "input" | "cached_input" | "cache_write" | "output">,
  tokens: TokenCounts,
): Credits {
  return (
    tokenCost(tokens.input, rates.input) +
    tokenCost(tokens.cached_input, rates.cached_input) +
    tokenCost(tokens.cache_write, rates.cache_write) +
    tokenCost(tokens.output, rates.output)
  );
}

/** quantity × rate for a `sum` meter (compute, bandwidth, data_ops) — exact. */
export function meterCost(rate: Scaled6, quantity: Scaled6): Credits {
  return multiplyRate(rate, quantity);
}

export interface StorageCharge {
  /** Credits for the interval: exact rational rounded once, half to even, to 12 decimals. */
  readonly cost: Credits;
  /** GB-hours billed (× 10^12), rounded the same way — for reports; `cost` is not derived from it. */
  readonly quantity: Scaled12;
}

/**
 * A `time_weighted` (storage) interval: the previous reading's GB held from `from` (previous
 * reading's time) to `to` (this reading's time), at `rate` credits per GB-hour.
 *
 * cost = GB × (ms ÷ 3 600 000) × rate. With GB and rate × 10^6, cost × 10^12 is
 * GB₆ × rate₆ × ms ÷ 3 600 000 — one division, rounded half to even. `to` before `from` is a
 * caller bug (readings must be billed in time order) and throws.
 */
export function storageIntervalCost(
  rate: Scaled6,
  previousGb: Scaled6,
  from: Date,
  to: Date,
): StorageCharge {
  const ms = BigInt(to.getTime() - from.getTime());
  if (ms < 0n) throw new RangeError("storage interval ends before it starts");
  if (previousGb < 0n || rate < 0n) throw new RangeError("negative storage reading or rate");
  return {
    cost: divideRoundHalfEven(previousGb * rate * ms, MS_PER_HOUR),
    quantity: divideRoundHalfEven(previousGb * ms * SCALE6, MS_PER_HOUR),
  };
}
