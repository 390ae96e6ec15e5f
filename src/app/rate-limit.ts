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

  app.addHook("onRequest", async (request, reply) => {
    if (RATE_LIMIT_EXEMPT.has(request.routeOptions.url ?? "")) return;
    const keyed = presentedKeyHash(request) !== null;
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
