/**
 * A low-rate latency probe in a process of its own (so the main load generator's event loop does
 * not add to the latencies it measures): an autocannon instance at a fixed overall rate, every
 * 2xx latency kept for exact percentiles. Prints one JSON line and exits.
 *
 *   node --import tsx bench/lib/probe.ts <url> <bearer key> <requests per second> <seconds>
 */
import autocannon from "autocannon";
import { percentile } from "./util.js";

const [url, key, rate, seconds] = process.argv.slice(2);
const latencies: number[] = [];
const statuses: Record<string, number> = {};
const instance = autocannon({
  url: url!,
  connections: 1,
  duration: Number(seconds),
  overallRate: Number(rate),
  timeout: 30,
  headers: { authorization: `Bearer ${key}` },
});
instance.on("response", (_client: unknown, status: number, _bytes: number, ms: number) => {
  statuses[status] = (statuses[status] ?? 0) + 1;
  if (status >= 200 && status < 300) latencies.push(ms);
});
await instance;
process.stdout.write(
  `${JSON.stringify({
    count: latencies.length,
    statuses,
    p50: percentile(latencies, 50),
    p90: percentile(latencies, 90),
    p99: percentile(latencies, 99),
    max: percentile(latencies, 100),
  })}\n`,
);
