import type { paths } from "../../../sdk/src/schema";
/**
 * The browser's client of Tally's API. Authentication is the httpOnly session cookie (never a
 * key in storage); state-changing requests carry the session's CSRF token and an
 * Idempotency-Key, so a retried click never buys twice.
 */

export interface ErrorDetail {
  field?: string;
  message: string;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details: ErrorDetail[] = [],
  ) {
    super(message);
  }
}

export interface Page<T> {
  data: T[];
  has_more: boolean;
  next_cursor: string | null;
}

let csrfToken: string | null = null;
const unauthenticatedListeners = new Set<() => void>();

export function setCsrfToken(token: string | null): void {
  csrfToken = token;
}

/** Called when the session has ended (expired, signed out elsewhere, key revoked). */
export function onUnauthenticated(listener: () => void): () => void {
  unauthenticatedListeners.add(listener);
  return () => unauthenticatedListeners.delete(listener);
}

function randomKey(): string {
  // crypto.randomUUID needs a secure context; getRandomValues does not.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return `web-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

type Query = Record<string, string | number | boolean | null | undefined>;

export function withQuery(path: string, query?: Query): string {
  if (!query) return path;
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) {
    if (v !== undefined && v !== null && v !== "") params.set(k, String(v));
  }
  const qs = params.toString();
  return qs ? `${path}?${qs}` : path;
}

export async function request<T>(
  method: "GET" | "POST" | "PUT" | "PATCH" | "DELETE",
  path: string,
  body?: unknown,
  options: { query?: Query; signal?: AbortSignal; csrfRetried?: boolean } = {},
): Promise<T> {
  const headers: Record<string, string> = { accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  if (method !== "GET") {
    if (csrfToken) headers["x-csrf-token"] = csrfToken;
    if (method === "POST") headers["idempotency-key"] = randomKey();
  }
  let res: Response;
  try {
    res = await fetch(withQuery(path, options.query), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      signal: options.signal,
    });
  } catch (error) {
    if ((error as Error).name === "AbortError") throw error;
    throw new ApiError(0, "network_error", "Tally could not be reached. Check your connection.");
  }
  if (res.status === 204) return undefined as T;
  const text = await res.text();
  let json: unknown = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    // not JSON: handled below
  }
  if (!res.ok) {
    const err = (json as { error?: { code?: string; message?: string; details?: ErrorDetail[] } })
      ?.error;
    const apiError = new ApiError(
      res.status,
      err?.code ?? `http_${res.status}`,
      err?.message ?? `The request failed (${res.status}).`,
      err?.details ?? [],
    );
    if (res.status === 401 && !path.startsWith("/web/")) {
      for (const listener of unauthenticatedListeners) listener();
    }
    // Another tab renewed the session (a new portal link, a new sign-in): the cookie is the new
    // session's, the token this page holds the old one's. Nothing was done; fetch the current
    // token and send the request once more.
    if (res.status === 403 && method !== "GET" && !options.csrfRetried) {
      if (/X-CSRF-Token/.test(apiError.message)) {
        const current = await request<Session | undefined>("GET", "/web/session").catch(
          () => undefined,
        );
        if (current?.csrf_token && current.csrf_token !== csrfToken) {
          csrfToken = current.csrf_token;
          return request<T>(method, path, body, { ...options, csrfRetried: true });
        }
      }
    }
    throw apiError;
  }
  return json as T;
}

export const api = {
  get: <T>(path: string, query?: Query, signal?: AbortSignal) =>
    request<T>("GET", path, undefined, { query, signal }),
  post: <T>(path: string, body?: unknown) => request<T>("POST", path, body ?? {}),
  put: <T>(path: string, body: unknown) => request<T>("PUT", path, body),
  patch: <T>(path: string, body: unknown) => request<T>("PATCH", path, body),
  delete: <T>(path: string) => request<T>("DELETE", path),
};

export function orgPath(orgId: string, rest = ""): string {
  return `/v1/organizations/${encodeURIComponent(orgId)}${rest}`;
}

// ---- optional features ----------------------------------------------------------------------

/**
 * Which optional routes this server has (auto-topup, alerts, refunds, reports), read from its
 * OpenAPI document once, so the UI can show "not available" instead of failing.
 */
let features: Promise<Set<string>> | null = null;

export function loadFeatures(): Promise<Set<string>> {
  features ??= fetch("/openapi.json", { credentials: "same-origin" })
    .then((r) => (r.ok ? r.json() : { paths: {} }))
    .then((doc: { paths?: Record<string, Record<string, unknown>> }) => {
      const set = new Set<string>();
      for (const [path, ops] of Object.entries(doc.paths ?? {})) {
        for (const method of Object.keys(ops)) set.add(`${method.toUpperCase()} ${path}`);
      }
      return set;
    })
    .catch(() => new Set<string>());
  return features;
}

export const FEATURES = {
  autoTopup: "PUT /v1/organizations/{org_id}/auto-topup",
  autoTopupAttempts: "GET /v1/organizations/{org_id}/auto-topup/attempts",
  alerts: "PUT /v1/organizations/{org_id}/alerts",
  refund: "POST /v1/organizations/{org_id}/purchases/{id}/refund",
  usageDaily: "GET /v1/organizations/{org_id}/usage-daily",
  usageSummaries: "GET /v1/organizations/{org_id}/usage-summaries",
} as const;

// ---- shapes (API.md) ------------------------------------------------------------------------

export interface Session {
  kind: "operator" | "portal";
  role: string;
  user_role: "admin" | "billing" | "viewer" | null;
  csrf_token: string;
  expires_at: string;
  server_time: string;
  org: { id: string; name: string } | null;
  user: { id: string; email: string; name: string | null } | null;
  return_url: string | null;
}

// The API's own types, generated from /openapi.json into the SDK (`npm run sdk:generate`).
type Json<T> = T extends { content: { "application/json": infer B } } ? B : never;
type Get<P extends keyof paths> =
  NonNullable<paths[P]["get"]> extends { responses: { 200: infer R } } ? Json<R> : never;
type Item<T> = T extends { data: (infer I)[] } ? I : never;

export type Organization = Get<"/v1/organizations/{org_id}">;
export type Balance = Get<"/v1/organizations/{org_id}/balance">;
export type CreditBlock = Item<Get<"/v1/organizations/{org_id}/credit-blocks">>;
export type LedgerEntry = Item<Get<"/v1/organizations/{org_id}/transactions">>;
export type CreditPackage = Get<"/v1/credit-packages/{id}">;
export type Purchase = Get<"/v1/organizations/{org_id}/purchases/{id}">;
export type AutoTopup = Get<"/v1/organizations/{org_id}/auto-topup">;
export type Alerts = Get<"/v1/organizations/{org_id}/alerts">;
export type UsageSummary = Item<Get<"/v1/organizations/{org_id}/usage-summaries">>;
export type DailyUsage = Item<Get<"/v1/organizations/{org_id}/usage-daily">>;
export type WebhookEndpoint = Get<"/v1/webhook-endpoints/{id}">;
export type WebhookDelivery = Item<Get<"/v1/webhook-endpoints/{id}/deliveries">>;
