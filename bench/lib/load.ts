import { execFile } from "node:child_process";
import autocannon from "autocannon";
import { ROOT } from "./servers.js";
import { percentile, sleep } from "./util.js";

/** A request body and how many usage events it carries. */
export interface Body {
  body: string;
  events: number;
}

export interface LoadSpec {
  url: string;
  path: string;
  method?: "GET" | "POST";
  headers: Record<string, string>;
  connections: number;
  durationSec: number;
  /** A fresh body per request (unique event ids), or none for GET. */
  makeBody?: (n: number) => Body;
  /** Requests per second over all connections (low-rate probes). */
  overallRate?: number;
  /** Keep every response latency (ms) for exact percentiles. */
  keepLatencies?: boolean;
}

export interface LoadResult {
  durationSec: number;
  requests: number;
  ok: number;
  rps: number;
  /** Usage events in requests answered 200. */
  eventsAcked: number;
  eventsPerSec: number;
  statuses: Record<string, number>;
  errors: number;
  timeouts: number;
  latencyMs: { p50: number; p90: number; p99: number; max: number };
  /** Bodies sent whose response never arrived or was not a 200 (to retry with the same ids). */
  unacknowledged: Body[];
}

/**
 * Runs autocannon with one generated body per request. Every body is remembered until its 200
 * arrives, so requests cut off when the run stops (the server may still commit them) can be
 * retried with the same event ids afterwards: each event then ends up acknowledged exactly once.
 */
export async function runLoad(spec: LoadSpec): Promise<LoadResult> {
  const pending = new Map<number, Body>();
  let next = 0;
  let eventsAcked = 0;
  const latencies: number[] = [];
  const statuses: Record<string, number> = {};

  const request = spec.makeBody
    ? {
        method: spec.method ?? "POST",
        path: spec.path,
        setupRequest: (req: { body?: string | Buffer }, context: Record<string, unknown>) => {
          const n = next++;
          const b = spec.makeBody!(n);
          pending.set(n, b);
          context.n = n;
          req.body = b.body;
          return req;
        },
        onResponse: (status: number, _body: string, context: Record<string, unknown>) => {
          statuses[status] = (statuses[status] ?? 0) + 1;
          if (status !== 200) return;
          const n = context.n as number;
          const b = pending.get(n);
          if (b) {
            eventsAcked += b.events;
            pending.delete(n);
          }
        },
      }
    : {
        method: spec.method ?? "GET",
        path: spec.path,
        onResponse: (status: number) => {
          statuses[status] = (statuses[status] ?? 0) + 1;
        },
      };

  const instance = autocannon({
    url: spec.url,
    connections: spec.connections,
    pipelining: 1,
    duration: spec.durationSec,
    timeout: 30,
    headers: spec.headers,
    requests: [request],
    ...(spec.overallRate ? { overallRate: spec.overallRate } : {}),
  });
  if (spec.keepLatencies) {
    instance.on("response", (_client: unknown, status: number, _bytes: number, ms: number) => {
      if (status >= 200 && status < 300) latencies.push(ms);
    });
  }
  const result = await instance;
  const ok = statuses["200"] ?? 0;
  const requests = Object.values(statuses).reduce((a, b) => a + b, 0);
  const duration = result.duration || spec.durationSec;
  return {
    durationSec: duration,
    requests,
    ok,
    rps: ok / duration,
    eventsAcked,
    eventsPerSec: eventsAcked / duration,
    statuses,
    errors: result.errors,
    timeouts: result.timeouts,
    latencyMs: spec.keepLatencies
      ? {
          p50: percentile(latencies, 50),
          p90: percentile(latencies, 90),
          p99: percentile(latencies, 99),
          max: percentile(latencies, 100),
        }
      : {
          p50: result.latency.p50,
          p90: result.latency.p90,
          p99: result.latency.p99,
          max: result.latency.max,
        },
    unacknowledged: [...pending.values()],
  };
}

/**
 * Sends bodies again (same event ids) until each gets a 200. Returns the events acknowledged
 * and the status counts of the responses. A client that lost a response does exactly this.
 */
export async function retryUntilAcknowledged(
  url: string,
  headers: Record<string, string>,
  bodies: readonly Body[],
): Promise<{ events: number; duplicates: number; failures: string[] }> {
  let events = 0;
  let duplicates = 0;
  const failures: string[] = [];
  const queue = [...bodies];
  const worker = async () => {
    for (;;) {
      const b = queue.shift();
      if (!b) return;
      let done = false;
      for (let attempt = 1; attempt <= 5 && !done; attempt++) {
        try {
          const res = await fetch(url, { method: "POST", headers, body: b.body });
          const text = await res.text();
          if (res.status === 200) {
            const data = (JSON.parse(text) as { data: { status: string }[] }).data;
            events += data.length;
            duplicates += data.filter((d) => d.status === "duplicate").length;
            done = true;
          } else if (attempt === 5) {
            failures.push(`HTTP ${res.status}: ${text.slice(0, 300)}`);
          }
        } catch (error) {
          if (attempt === 5) failures.push(String(error));
        }
        if (!done) await sleep(200 * attempt);
      }
    }
  };
  await Promise.all(Array.from({ length: 8 }, worker));
  return { events, duplicates, failures };
}

export interface ProbeResult {
  count: number;
  statuses: Record<string, number>;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

/** GET `url` at `rate` requests/s for `seconds` from a process of its own (`probe.ts`). */
export function runProbe(
  url: string,
  key: string,
  rate: number,
  seconds: number,
): Promise<ProbeResult> {
  const args = ["--import", "tsx", "bench/lib/probe.ts", url, key, String(rate), String(seconds)];
  return new Promise((resolve, reject) => {
    execFile(process.execPath, args, { cwd: ROOT }, (error, stdout, stderr) => {
      if (error) reject(new Error(`${error.message}\n${stderr}`));
      else resolve(JSON.parse(stdout.trim().split("\n").at(-1)!) as ProbeResult);
    });
  });
}
