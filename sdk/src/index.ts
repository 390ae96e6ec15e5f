/**
 * @tally/sdk — a typed client for the Tally credits billing API.
 *
 * Types come from the service's OpenAPI document (`schema.d.ts`, generated); requests go through
 * openapi-fetch. The client adds bearer auth, an `Idempotency-Key` on every POST, retries with
 * exponential backoff and jitter for requests that are safe to repeat, and `TallyError`s that
 * carry the API's error code. Amounts are exact decimal strings throughout: compare them by
 * value, never through a JS number.
 */
import createClient, { type Client } from "openapi-fetch";
import type { paths } from "./schema.js";

export type { paths } from "./schema.js";

type Json<T> = T extends { content: { "application/json": infer B } } ? B : never;
type Op<P extends keyof paths, M extends "get" | "post"> = NonNullable<paths[P][M]>;
type ResponseOf<P extends keyof paths, M extends "get" | "post", S extends number> =
  Op<P, M> extends { responses: infer R } ? (S extends keyof R ? Json<R[S]> : never) : never;
type BodyOf<P extends keyof paths, M extends "post"> =
  Op<P, M> extends { requestBody: infer B } ? Json<B> : never;

/** A usage event as `POST /v1/usage-events` accepts it. */
export type UsageEvent = Extract<
  BodyOf<"/v1/usage-events", "post">,
  { events: unknown }
>["events"][number];
/** `{data: [{id, status, cost, transaction_id, balance_after}]}` */
export type IngestResult = ResponseOf<"/v1/usage-events", "post", 200>;
export type Balance = ResponseOf<"/v1/organizations/{org_id}/balance", "get", 200>;
export type Reservation = ResponseOf<"/v1/organizations/{org_id}/reservations", "post", 201>;
/** The ingest result of the settled events plus the reservation, now `settled`. */
export type SettleResult = ResponseOf<
  "/v1/organizations/{org_id}/reservations/{reservation_id}/settle",
  "post",
  200
>;
export type Purchase = ResponseOf<"/v1/organizations/{org_id}/purchases", "post", 201>;
export type ErrorEnvelope = ResponseOf<"/v1/organizations/{org_id}/balance", "get", 400>;

export interface ErrorDetail {
  field?: string;
  message: string;
  [key: string]: unknown;
}

/**
 * An error answer of the API (`status` ≥ 400, `code` from the API's catalogue such as
 * `invalid_request` or `insufficient_credits`), or a request that never got one
 * (`status` 0, `code` `network_error`).
 */
export class TallyError extends Error {
  override readonly name = "TallyError";
  readonly status: number;
  readonly code: string;
  readonly request_id: string | null;
  readonly details: ErrorDetail[];

  constructor(init: {
    status: number;
    code: string;
    message: string;
    request_id?: string | null;
    details?: ErrorDetail[];
    cause?: unknown;
  }) {
    super(init.message, init.cause === undefined ? undefined : { cause: init.cause });
    this.status = init.status;
    this.code = init.code;
    this.request_id = init.request_id ?? null;
    this.details = init.details ?? [];
  }

  /** Builds the error from an API answer (the envelope when there is one). */
  static fromResponse(response: Response, body: unknown): TallyError {
    const envelope = (body as { error?: Partial<ErrorEnvelope["error"]> } | null)?.error;
    const requestId = response.headers.get("x-request-id");
    if (envelope && typeof envelope.code === "string") {
      return new TallyError({
        status: response.status,
        code: envelope.code,
        message: envelope.message ?? `HTTP ${response.status}`,
        request_id: envelope.request_id ?? requestId,
        details: (envelope.details as ErrorDetail[] | undefined) ?? [],
      });
    }
    return new TallyError({
      status: response.status,
      code: response.status >= 500 ? "internal" : "http_error",
      message: `HTTP ${response.status}${response.statusText ? ` ${response.statusText}` : ""}`,
      request_id: requestId,
    });
  }
}

export type FetchLike = (request: Request) => Promise<Response>;

export interface TallyClientOptions {
  /** Where Tally listens, e.g. `https://billing.example.com`. */
  baseUrl: string;
  /** A platform key or an organisation key: the secret (`tally_…`), not the key's id. */
  apiKey: string;
  /** A fetch implementation (default: the global one). */
  fetch?: FetchLike;
  /** Retries after the first attempt for requests that are safe to repeat (default 3). */
  retries?: number;
  /** First backoff delay; doubles each retry, with jitter (default 250 ms). */
  retryDelayMs?: number;
  /** Longest wait before a retry; a longer `Retry-After` ends the retries (default 30 s). */
  maxRetryDelayMs?: number;
}

export interface RequestOptions {
  /** Replaces the generated `Idempotency-Key` (reuse one to repeat a call safely later). */
  idempotencyKey?: string;
  /** `On-Behalf-Of`: the user of the organisation acting through this call. */
  onBehalfOf?: string;
}

export interface ReserveOptions extends RequestOptions {
  /** How long the hold lasts (default 300, at most 86400). */
  expiresInSeconds?: number;
  description?: string;
}

export interface BuyPackageOptions extends RequestOptions {
  successUrl?: string;
  cancelUrl?: string;
  /** Save the card for auto-topup (default true). */
  savePaymentMethod?: boolean;
}

export interface TallyClient {
  /** The typed openapi-fetch client for every route (`api.GET("/v1/prices")`, …). */
  readonly api: Client<paths>;
  /** Records usage events (one or up to 1000) and returns each one's cost and balance after. */
  ingest(events: UsageEvent | UsageEvent[], options?: RequestOptions): Promise<IngestResult>;
  /** The organisation's balance (`org_…` or `ext:<external_id>`). */
  balance(org: string): Promise<Balance>;
  /** Holds `amount` credits (a decimal string); `insufficient_credits` (402) when not covered. */
  reserve(org: string, amount: string, options?: ReserveOptions): Promise<Reservation>;
  /** Records the actual usage against a hold and releases it. */
  settle(
    org: string,
    reservationId: string,
    events: UsageEvent[],
    options?: RequestOptions,
  ): Promise<SettleResult>;
  /** Releases a hold without usage. */
  release(org: string, reservationId: string, options?: RequestOptions): Promise<Reservation>;
  /** Starts a purchase of a credit package; send the customer to `checkout_url`. */
  buyPackage(org: string, packageId: string, options?: BuyPackageOptions): Promise<Purchase>;
}

const SAFE_METHODS = new Set(["GET", "HEAD", "OPTIONS"]);

export function createTallyClient(options: TallyClientOptions): TallyClient {
  const api = createClient<paths>({
    baseUrl: options.baseUrl.replace(/\/+$/, ""),
    headers: { authorization: `Bearer ${options.apiKey}` },
    fetch: retryingFetch(options),
  });

  /** Unwraps an openapi-fetch result: the body, or a `TallyError`. */
  async function call<T>(
    pending: Promise<{ data?: T; error?: unknown; response: Response }>,
  ): Promise<T> {
    const { data, error, response } = await pending;
    if (!response.ok) throw TallyError.fromResponse(response, error);
    return data as T;
  }

  const headersOf = (o: RequestOptions = {}) => {
    const headers: Record<string, string> = {};
    if (o.idempotencyKey !== undefined) headers["idempotency-key"] = o.idempotencyKey;
    if (o.onBehalfOf !== undefined) headers["on-behalf-of"] = o.onBehalfOf;
    return headers;
  };

  return {
    api,
    ingest: (events, o) =>
      call(
        api.POST("/v1/usage-events", {
          body: Array.isArray(events) ? { events } : events,
          headers: headersOf(o),
        }),
      ),
    balance: (org) =>
      call(api.GET("/v1/organizations/{org_id}/balance", { params: { path: { org_id: org } } })),
    reserve: (org, amount, o = {}) =>
      call(
        api.POST("/v1/organizations/{org_id}/reservations", {
          params: { path: { org_id: org } },
          body: {
            amount,
            ...(o.expiresInSeconds === undefined ? {} : { expires_in_seconds: o.expiresInSeconds }),
            ...(o.description === undefined ? {} : { description: o.description }),
          },
          headers: headersOf(o),
        }),
      ),
    settle: (org, reservationId, events, o) =>
      call(
        api.POST("/v1/organizations/{org_id}/reservations/{reservation_id}/settle", {
          params: { path: { org_id: org, reservation_id: reservationId } },
          body: { events },
          headers: headersOf(o),
        }),
      ),
    release: (org, reservationId, o) =>
      call(
        api.POST("/v1/organizations/{org_id}/reservations/{reservation_id}/release", {
          params: { path: { org_id: org, reservation_id: reservationId } },
          headers: headersOf(o),
        }),
      ),
    buyPackage: (org, packageId, o = {}) =>
      call(
        api.POST("/v1/organizations/{org_id}/purchases", {
          params: { path: { org_id: org } },
          body: {
            package_id: packageId,
            ...(o.successUrl === undefined ? {} : { success_url: o.successUrl }),
            ...(o.cancelUrl === undefined ? {} : { cancel_url: o.cancelUrl }),
            ...(o.savePaymentMethod === undefined
              ? {}
              : { save_payment_method: o.savePaymentMethod }),
          },
          headers: headersOf(o),
        }),
      ),
  };
}

/**
 * The transport under openapi-fetch: gives every POST an `Idempotency-Key` (kept across its
 * retries, so the server applies it once), and retries requests that are safe to repeat — GET,
 * HEAD, OPTIONS and POSTs with an `Idempotency-Key` — on network errors, 429, 5xx and
 * `409 idempotency_in_progress` (the first attempt is still running on the server).
 */
export function retryingFetch(options: Omit<TallyClientOptions, "baseUrl" | "apiKey">): FetchLike {
  const base: FetchLike = options.fetch ?? ((request) => globalThis.fetch(request));
  const retries = Math.max(0, options.retries ?? 3);
  const firstDelay = options.retryDelayMs ?? 250;
  const maxDelay = options.maxRetryDelayMs ?? 30_000;

  return async (input) => {
    let request = input;
    if (request.method === "POST" && !request.headers.has("idempotency-key")) {
      const headers = new Headers(request.headers);
      headers.set("idempotency-key", globalThis.crypto.randomUUID());
      request = new Request(request, { headers });
    }
    const repeatable =
      SAFE_METHODS.has(request.method) ||
      (request.method === "POST" && request.headers.has("idempotency-key"));

    for (let attempt = 0; ; attempt++) {
      const last = !repeatable || attempt >= retries;
      // A body can be read once: every attempt but the last sends a copy.
      const sent = last ? request : request.clone();
      let response: Response;
      try {
        response = await base(sent);
      } catch (error) {
        if (last || request.signal?.aborted) throw networkError(error);
        await sleep(backoffDelay(attempt, firstDelay, maxDelay));
        continue;
      }
      if (last || !(await isRetryable(response))) return response;
      const wait = retryAfterMs(response.headers.get("retry-after"), Date.now());
      if (wait !== null && wait > maxDelay) return response;
      await response.body?.cancel().catch(() => {});
      await sleep(wait ?? backoffDelay(attempt, firstDelay, maxDelay));
    }
  };
}

async function isRetryable(response: Response): Promise<boolean> {
  if (response.status === 429 || response.status >= 500) return true;
  if (response.status !== 409) return false;
  try {
    const body = (await response.clone().json()) as { error?: { code?: string } };
    return body.error?.code === "idempotency_in_progress";
  } catch {
    return false;
  }
}

function networkError(error: unknown): TallyError {
  if (error instanceof TallyError) return error;
  const message = error instanceof Error ? error.message : String(error);
  return new TallyError({ status: 0, code: "network_error", message, cause: error });
}

/** Exponential backoff with jitter: a random wait in [d/2, d] for d = first·2^attempt (capped). */
export function backoffDelay(attempt: number, firstDelayMs: number, maxDelayMs: number): number {
  const ceiling = Math.min(maxDelayMs, firstDelayMs * 2 ** attempt);
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

/** `Retry-After` in milliseconds (delta-seconds or an HTTP date); null when absent or unreadable. */
export function retryAfterMs(header: string | null, nowMs: number): number | null {
  if (header === null || header.trim() === "") return null;
  const value = header.trim();
  if (/^\d+$/.test(value)) return Number(value) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, at - nowMs);
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
