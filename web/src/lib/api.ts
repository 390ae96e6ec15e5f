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
  options: { query?: Query; signal?: AbortSignal } = {},
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

export interface Organization {
  id: string;
  name: string;
  external_id: string | null;
  plan: string;
  overdraft_limit: string;
  credits_enabled?: boolean;
  metadata: Record<string, string>;
  created_at: string;
}

export interface Balance {
  org_id: string;
  balance: string;
  reserved: string;
  available: string;
  overdraft_limit: string;
  debt?: string;
  low_balance: boolean;
  auto_topup: "off" | "idle" | "in_flight" | "disabled";
  updated_at: string | null;
  last_sequence: number;
}

export interface CreditBlock {
  id: string;
  source: string;
  original: string;
  remaining: string;
  unit_cost: string;
  priority: number;
  effective_at: string;
  expires_at: string | null;
  status: string;
  purchase_id: string | null;
  created_at: string;
}

export interface LedgerEntry {
  id: string;
  sequence: number;
  type: string;
  amount: string;
  balance_after: string;
  actor: { type: string; id: string };
  user_id: string | null;
  reason: string | null;
  description: string | null;
  reference: { type: string; id: string } | null;
  created_at: string;
}

export interface CreditPackage {
  id: string;
  name: string;
  description: string | null;
  credits: string;
  bonus_credits: string;
  total_credits: string;
  price: string;
  currency: string;
  effective_price_per_credit: string;
  bonus_percent: string;
  savings_percent: string;
  bonus_expires_in_days: number | null;
  active: boolean;
}

export interface Purchase {
  id: string;
  status: string;
  source?: string;
  package_id: string;
  package_name?: string;
  credits: string;
  bonus_credits: string;
  amount: string;
  currency: string;
  refunded_amount?: string;
  checkout_url: string | null;
  user_id?: string | null;
  created_at: string;
  paid_at?: string | null;
}

export interface AutoTopup {
  enabled: boolean;
  threshold: string;
  package_id: string | null;
  monthly_limit?: string | null;
  max_failures?: number;
  payment_method: { brand: string; last4: string } | null;
  status: string;
  disabled_reason: string | null;
  spent_this_month?: string;
}

export interface Alerts {
  thresholds: string[];
  emails?: string[];
  state?: { threshold: string; in_alert: boolean; changed_at: string | null }[];
}

export interface UsageSummary {
  period: string;
  total_cost: string;
  events: number;
  by_type: { type: string; unit: string; quantity: string; cost: string; events: number }[];
  by_model: {
    model: string;
    input_tokens: string | number;
    cached_input_tokens: string | number;
    cache_write_tokens: string | number;
    output_tokens: string | number;
    cost: string;
    events: number;
  }[];
  by_user: { user_id: string | null; cost: string; events: number }[];
}

export interface DailyUsage {
  day: string;
  type: string;
  cost: string;
  events: number;
}

export interface WebhookEndpoint {
  id: string;
  url: string;
  events: string[];
  org_id: string | null;
  status?: string;
  disabled_reason?: string | null;
  created_at: string;
}

export interface WebhookDelivery {
  id: string;
  event_id: string;
  event_type: string;
  attempt: number;
  status_code: number | null;
  error: string | null;
  duration_ms: number;
  succeeded: boolean;
  created_at: string;
}
