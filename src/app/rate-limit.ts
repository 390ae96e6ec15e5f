import rateLimit, { normalizeIP } from "@fastify/rate-limit";
import { presentedKeyHash } from "../modules/orgs/keys.js";
import type { Config } from "./config.js";
import { AppError } from "./errors.js";
import type { App } from "./http.js";

/** Probes and scrapers are never throttled: a limited health check would look like an outage. */
export const RATE_LIMIT_EXEMPT: ReadonlySet<string> = new Set(["/healthz", "/readyz", "/metrics"]);

/**
 * Per-instance request budgets (fixed windows in memory, so N instances allow N times the
 * budget): one per API key, one per client address for requests without a key (dashboard and
 * portal sessions, payment webhooks, pages). Checked before authentication, so a throttled
 * request costs no database work; the key is identified by a hash of the presented secret, the
 * same identity the key lookup uses. Over budget → 429 `rate_limited` with `Retry-After`.
 *
 * Made-up secrets would each get a budget of their own, so every 401 also counts against its
 * address: once an address has failed authentication as often as its budget allows in a window,
 * its requests with secrets this instance has not seen succeed in the last 10 minutes are
 * refused until the window ends.
 */
export async function installRateLimit(app: App, config: Config["rateLimit"]): Promise<void> {
  const { perKeyPerSecond, anonymousPerSecond, windowSeconds } = config;
  if (perKeyPerSecond === 0 && anonymousPerSecond === 0) return;
  // `global: false`: no per-route hooks; the one hook below decides which budget applies.
  await app.register(rateLimit, { global: false });
  const timeWindow = windowSeconds * 1000;
  const perKey = app.createRateLimit({
    max: perKeyPerSecond * windowSeconds,
    timeWindow,
    keyGenerator: (request) => `key:${presentedKeyHash(request)}`,
  });
  const perAddress = app.createRateLimit({
    max: anonymousPerSecond * windowSeconds,
    timeWindow,
    // An IPv6 client usually holds a whole /64: one budget for the prefix.
    keyGenerator: (request) => `ip:${normalizeIP(request.ip)}`,
  });

  const failures =
    anonymousPerSecond > 0
      ? new FailureCounter(anonymousPerSecond * windowSeconds, timeWindow)
      : null;
  /** Secrets that authenticated here lately (by hash), and until when they count as known. */
  const known = new Map<string, number>();
  app.addHook("onResponse", async (request, reply) => {
    if (reply.statusCode === 401) {
      failures?.add(`ip:${normalizeIP(request.ip)}`);
      return;
    }
    // Only a secret that authenticated (a 429 or a public route's answer proves nothing).
    const hash = presentedKeyHash(request);
    if (hash === null || !failures || request.principal?.kind !== "api_key") return;
    if (known.size >= 50_000) known.clear();
    known.set(hash, Date.now() + KNOWN_FOR_MS);
  });

  app.addHook("onRequest", async (request, reply) => {
    if (RATE_LIMIT_EXEMPT.has(request.routeOptions.url ?? "")) return;
    const hash = presentedKeyHash(request);
    const keyed = hash !== null;
    if (keyed && failures && !((known.get(hash) ?? 0) > Date.now())) {
      const wait = failures.blockedFor(`ip:${normalizeIP(request.ip)}`);
      if (wait > 0) {
        const retryAfter = String(wait);
        reply.header("x-ratelimit-remaining", "0");
        reply.header("x-ratelimit-reset", retryAfter);
        throw new AppError(
          "rate_limited",
          `Too many failed authentications from this address; retry in ${retryAfter} s.`,
          [],
          { "retry-after": retryAfter },
        );
      }
    }
    if ((keyed ? perKeyPerSecond : anonymousPerSecond) === 0) return;
    const result = await (keyed ? perKey : perAddress)(request);
    if (result.isAllowed || !result.isExceeded) return;
    const retryAfter = String(Math.max(1, result.ttlInSeconds));
    reply.header("x-ratelimit-limit", String(result.max));
    reply.header("x-ratelimit-remaining", "0");
    reply.header("x-ratelimit-reset", retryAfter);
    throw new AppError(
      "rate_limited",
      `Too many requests ${keyed ? "for this API key" : "from this address"}; retry in ${retryAfter} s.`,
      [],
      { "retry-after": retryAfter },
    );
  });
}

/** How long a secret that authenticated counts as known to the failure gate. */
const KNOWN_FOR_MS = 10 * 60_000;

/** Failed authentications per address in fixed windows (in memory, per instance). */
class FailureCounter {
  private readonly windows = new Map<string, { count: number; until: number }>();

  constructor(
    private readonly max: number,
    private readonly windowMs: number,
  ) {}

  add(address: string): void {
    const now = Date.now();
    let w = this.windows.get(address);
    if (!w || w.until <= now) {
      if (this.windows.size >= 10_000) this.prune(now);
      w = { count: 0, until: now + this.windowMs };
      this.windows.set(address, w);
    }
    w.count++;
  }

  /** Seconds until `address` may try unknown secrets again; 0 when it may now. */
  blockedFor(address: string): number {
    const w = this.windows.get(address);
    const now = Date.now();
    if (!w || w.until <= now || w.count < this.max) return 0;
    return Math.max(1, Math.ceil((w.until - now) / 1000));
  }

  private prune(now: number): void {
    for (const [address, w] of this.windows) if (w.until <= now) this.windows.delete(address);
    if (this.windows.size >= 10_000) this.windows.clear();
  }
}
