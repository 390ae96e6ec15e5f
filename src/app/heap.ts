import { setFlagsFromString } from "node:v8";

/**
 * How far V8 lets the old generation grow past what survived the last full collection before it
 * collects again: to (1 + percent/100) × that. Left to itself V8 picks up to 4× while collection
 * is cheap, and a server with 8,000 batch events in flight then peaked at 315–345 MB, most of it
 * garbage waiting for the next full collection. At 3× the peak is 270 MB with the same
 * throughput; at 2× it is 215 MB, but a single hot organisation's ingest lost 10 % to the extra
 * collections (bench/results/2026-11-24-heap-growth.md).
 */
export const HEAP_GROWING_PERCENT = 200;

/**
 * Applies `HEAP_GROWING_PERCENT` to this process unless the operator chose a factor of their own
 * (`node --heap-growing-percent=N` or the same in `NODE_OPTIONS`). V8 reads the setting at every
 * full collection, so setting it at run time takes effect from the next one. For `tally start`
 * only: tests and one-shot commands keep V8's defaults.
 */
export function limitHeapGrowth(
  execArgv: readonly string[] = process.execArgv,
  nodeOptions: string = process.env.NODE_OPTIONS ?? "",
  set: (flags: string) => void = setFlagsFromString,
): boolean {
  const chosen = [...execArgv, nodeOptions].some((a) => /heap[-_]growing[-_]percent/.test(a));
  if (chosen) return false;
  set(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`);
  return true;
}
