/** A tiny JSON-over-HTTP client for tests that talk to real Tally processes. */

// biome-ignore lint/suspicious/noExplicitAny: JSON response bodies, checked by the assertions.
type Json = any;

export interface Reply<T = Json> {
  status: number;
  body: T;
  text: string;
}

export type Call = <T = Json>(
  method: "GET" | "POST" | "PUT" | "PATCH" | "DELETE",
  path: string,
  body?: unknown,
  headers?: Record<string, string>,
) => Promise<Reply<T>>;

/**
 * Calls `baseUrl` with `key` (null: no Authorization). A string body is sent as is (forms);
 * anything else as JSON. Network errors (a killed process) reject.
 */
export function client(baseUrl: string, key: string | null): Call {
  return async (method, path, body, headers = {}) => {
    const h: Record<string, string> = { ...headers };
    if (key) h.authorization = `Bearer ${key}`;
    let payload: string | undefined;
    if (typeof body === "string") payload = body;
    else if (body !== undefined) {
      payload = JSON.stringify(body);
      h["content-type"] ??= "application/json";
    }
    const res = await fetch(`${baseUrl}${path}`, {
      method,
      headers: h,
      body: payload,
      redirect: "manual",
    });
    const text = await res.text();
    let parsed: unknown = null;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      parsed = null;
    }
    return { status: res.status, body: parsed as never, text };
  };
}

/** Throws unless `reply.status` is `status`; returns the body. */
export function expectStatus<T = Json>(reply: Reply<T>, status: number, what = "request"): T {
  if (reply.status !== status) {
    throw new Error(`${what}: expected ${status}, got ${reply.status} ${reply.text}`);
  }
  return reply.body;
}
