import helmet, { type HelmetOptions } from "helmet";
import type { AppContext } from "./context.js";
import type { App } from "./http.js";

/** The headers helmet sets with these options (it sets the same ones on every response). */
function helmetHeaders(options: HelmetOptions): Record<string, string> {
  const headers: Record<string, string> = {};
  const response = {
    setHeader: (name: string, value: string) => {
      headers[name.toLowerCase()] = String(value);
    },
    removeHeader: (name: string) => {
      delete headers[name.toLowerCase()];
    },
  };
  let failed: unknown = null;
  helmet(options)({} as never, response as never, (error?: unknown) => {
    failed = error ?? null;
  });
  if (failed) throw failed;
  return headers;
}

/** The headers named in `names` that `headers` has. */
function pick(headers: Record<string, string>, names: readonly string[]): Record<string, string> {
  return Object.fromEntries(names.flatMap((n) => (n in headers ? [[n, headers[n]!]] : [])));
}

/**
 * Security headers on every response, computed once: helmet's for the web app, the docs and
 * everything else; a shorter set for the JSON API. Installed before rate limiting and
 * authentication, so that their refusals carry them too. (@fastify/helmet rebuilt the middleware
 * and re-parsed the policy for every request, a measurable share of a usage event's CPU; the
 * headers never vary.)
 */
export function installSecurityHeaders(app: App, ctx: AppContext): void {
  const secure = ctx.config.publicUrl.startsWith("https:");
  const directives = {
    "default-src": ["'self'"],
    "base-uri": ["'self'"],
    "connect-src": ["'self'"],
    "font-src": ["'self'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
    "img-src": ["'self'", "data:"],
    "object-src": ["'none'"],
    "script-src": ["'self'"],
    "script-src-attr": ["'none'"],
    "style-src": ["'self'"],
    ...(secure ? { "upgrade-insecure-requests": [] } : {}),
  };
  const pageHeaders = helmetHeaders({
    contentSecurityPolicy: { useDefaults: false, directives },
    // HSTS only means something over https; on a plain-http install it would mislead.
    strictTransportSecurity: secure ? { maxAge: 180 * 24 * 60 * 60 } : false,
  });
  // The JSON API gets the headers that mean something for a response no browser renders
  // (OWASP's REST Security Cheat Sheet): no sniffing, no framing, no referrer, no cross-origin
  // reads (the dashboard calls it with its session cookie), HSTS over https, and a policy that
  // loads nothing should one be opened as a document. The other seven are for HTML pages; on a
  // usage event's answer they were 400 of its 620 header bytes (bench/results/2026-11-24-api-headers.md).
  const apiHeaders: Record<string, string> = {
    ...pick(pageHeaders, [
      "cross-origin-resource-policy",
      "referrer-policy",
      "strict-transport-security",
      "x-content-type-options",
      "x-frame-options",
    ]),
    "content-security-policy": "default-src 'none';frame-ancestors 'none'",
  };
  // Swagger UI (/docs) sets some styles inline; it gets that and nothing else.
  const docsPolicy = Object.entries({ ...directives, "style-src": ["'self'", "'unsafe-inline'"] })
    .map(([k, v]) => [k, ...v].join(" "))
    .join(";");
  // Hooks on every request are synchronous where they can be: an async hook costs a promise and
  // a microtask turn per request on the usage hot path.
  app.addHook("onRequest", (request, reply, done) => {
    const url = request.url;
    if (url.startsWith("/v1/")) reply.headers(apiHeaders);
    else {
      reply.headers(pageHeaders);
      if (url === "/docs" || url.startsWith("/docs/")) {
        reply.header("content-security-policy", docsPolicy);
      }
    }
    done();
  });
}
