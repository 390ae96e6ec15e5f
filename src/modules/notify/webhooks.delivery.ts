import { randomBytes } from "node:crypto";
import http from "node:http";
import https from "node:https";
import { performance } from "node:perf_hooks";
import { Webhook } from "standardwebhooks";
import { guardedLookup, literalHostRefusal } from "./ssrf.js";

/** Standard Webhooks secret: `whsec_` + base64 of 24 random bytes. */
export function generateWebhookSecret(): string {
  return `whsec_${randomBytes(24).toString("base64")}`;
}

/** The three Standard Webhooks headers for one attempt. */
export function signedHeaders(
  secret: string,
  messageId: string,
  timestamp: Date,
  body: string,
): Record<"webhook-id" | "webhook-timestamp" | "webhook-signature", string> {
  return {
    "webhook-id": messageId,
    "webhook-timestamp": String(Math.floor(timestamp.getTime() / 1000)),
    "webhook-signature": new Webhook(secret).sign(messageId, timestamp, body),
  };
}

export interface PostResult {
  statusCode: number | null;
  error: string | null;
  durationMs: number;
}

export const WEBHOOK_TIMEOUT_MS = 10_000;
const USER_AGENT = "Tally-Webhooks/1";

// Keep-alive agents whose sockets connect only to addresses `guardedLookup` approved.
const guardedAgents = {
  "http:": new http.Agent({ keepAlive: true, lookup: guardedLookup }),
  "https:": new https.Agent({ keepAlive: true, lookup: guardedLookup }),
};
const plainAgents = {
  "http:": new http.Agent({ keepAlive: true }),
  "https:": new https.Agent({ keepAlive: true }),
};

/**
 * POSTs `body` once. Never throws: the outcome (status code or error, and the time taken) is
 * returned for the delivery log. Redirects are not followed (a 3xx is a failure), so an
 * endpoint cannot bounce the request to another host.
 */
export async function postWebhook(
  rawUrl: string,
  headers: Record<string, string>,
  body: string,
  options: { allowPrivate: boolean; timeoutMs?: number },
): Promise<PostResult> {
  const started = performance.now();
  const elapsed = () => Math.round(performance.now() - started);
  let url: URL;
  try {
    url = new URL(rawUrl);
  } catch {
    return { statusCode: null, error: "invalid URL", durationMs: elapsed() };
  }
  // Host names are checked by guardedLookup on the very connection that is made; IP literals
  // never reach a lookup function, so they are checked here.
  const refused = options.allowPrivate ? null : literalHostRefusal(url);
  if (refused) return { statusCode: null, error: `refused: ${refused}`, durationMs: elapsed() };
  const protocol = url.protocol as "http:" | "https:";
  const agent = (options.allowPrivate ? plainAgents : guardedAgents)[protocol];
  if (!agent) return { statusCode: null, error: "unsupported protocol", durationMs: elapsed() };
  const request = protocol === "https:" ? https.request : http.request;
  const timeoutMs = options.timeoutMs ?? WEBHOOK_TIMEOUT_MS;

  let req: http.ClientRequest;
  try {
    req = request(url, {
      method: "POST",
      agent,
      headers: {
        ...headers,
        "content-type": "application/json",
        "content-length": Buffer.byteLength(body),
        "user-agent": USER_AGENT,
      },
    });
  } catch (err) {
    // Thrown at once for what the URL parser let through (a stored URL from before a check).
    return {
      statusCode: null,
      error: `invalid URL: ${(err as Error).message}`,
      durationMs: elapsed(),
    };
  }

  return new Promise<PostResult>((resolve) => {
    let settled = false;
    const settle = (result: Omit<PostResult, "durationMs">) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve({ ...result, durationMs: elapsed() });
    };
    const timer = setTimeout(() => {
      settle({ statusCode: null, error: `timed out after ${timeoutMs} ms` });
      req.destroy();
    }, timeoutMs);
    req.on("response", (res) => {
      // The body is not used; read it so the connection can be reused, within the deadline.
      res.resume();
      res.on("end", () => settle({ statusCode: res.statusCode ?? null, error: null }));
      res.on("error", (err) => settle({ statusCode: res.statusCode ?? null, error: err.message }));
    });
    req.on("error", (err: NodeJS.ErrnoException) => {
      const reason = err.code === "EFORBIDDENADDRESS" ? `refused: ${err.message}` : err.message;
      settle({ statusCode: null, error: reason || err.code || "request failed" });
    });
    req.end(body);
  });
}
