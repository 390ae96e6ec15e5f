import { type Static, Type } from "@sinclair/typebox";

/** The one catalogue of error codes: code → HTTP status → default message. */
export const ERRORS = {
  invalid_request: { status: 400, message: "The request is invalid." },
  unauthenticated: { status: 401, message: "A valid API key is required." },
  insufficient_credits: { status: 402, message: "Not enough credits available." },
  forbidden: { status: 403, message: "This key is not allowed to perform this action." },
  plan_not_eligible: {
    status: 403,
    message: "The organisation's plan does not include credits billing.",
  },
  not_found: { status: 404, message: "Not found." },
  idempotency_conflict: {
    status: 409,
    message: "This Idempotency-Key was used with a different request.",
  },
  idempotency_in_progress: {
    status: 409,
    message: "A request with this Idempotency-Key is still in progress.",
  },
  event_conflict: {
    status: 409,
    message: "A usage event with this id was recorded with a different payload.",
  },
  invalid_state: { status: 409, message: "The resource is not in a state that allows this." },
  payload_too_large: { status: 413, message: "The request body is too large." },
  unsupported_media_type: { status: 415, message: "Content-Type must be application/json." },
  price_not_found: { status: 422, message: "No price for this model or meter at that time." },
  timestamp_out_of_range: {
    status: 422,
    message: "The usage timestamp is outside the accepted window.",
  },
  rate_limited: { status: 429, message: "Too many requests." },
  internal: { status: 500, message: "Internal error." },
  service_unavailable: { status: 503, message: "The service is temporarily unavailable." },
} as const satisfies Record<string, { status: number; message: string }>;

export type ErrorCode = keyof typeof ERRORS;

export interface ErrorDetail {
  /** Where the problem is: a JSON pointer into the body, or `query.limit`, `header.x`. */
  readonly field?: string;
  readonly message: string;
  readonly [key: string]: unknown;
}

/** A fault or an expected refusal surfaced over HTTP with a catalogue code. */
export class AppError extends Error {
  readonly status: number;
  constructor(
    readonly code: ErrorCode,
    message?: string,
    readonly details: ErrorDetail[] = [],
    readonly headers: Record<string, string> = {},
  ) {
    super(message ?? ERRORS[code].message);
    this.status = ERRORS[code].status;
  }
}

export function invalid(message: string, field?: string): AppError {
  return new AppError("invalid_request", message, [field ? { field, message } : { message }]);
}

export function notFound(what = "Not found."): AppError {
  return new AppError("not_found", what);
}

export const ErrorEnvelopeSchema = Type.Object(
  {
    error: Type.Object({
      code: Type.String({ examples: ["invalid_request"] }),
      message: Type.String(),
      request_id: Type.String(),
      details: Type.Array(
        Type.Object(
          { field: Type.Optional(Type.String()), message: Type.String() },
          { additionalProperties: true },
        ),
      ),
    }),
  },
  { title: "Error", description: "The common error envelope." },
);
export type ErrorEnvelope = Static<typeof ErrorEnvelopeSchema>;

export function errorBody(
  code: ErrorCode,
  message: string,
  requestId: string,
  details: readonly ErrorDetail[] = [],
): ErrorEnvelope {
  return { error: { code, message, request_id: requestId, details: [...details] } };
}

/** Expected outcomes of use-cases are values, not exceptions. */
export type Result<T, C extends ErrorCode = ErrorCode> =
  | { ok: true; value: T }
  | { ok: false; code: C; message?: string; details?: ErrorDetail[] };

export function ok<T>(value: T): { ok: true; value: T } {
  return { ok: true, value };
}

export function fail<C extends ErrorCode>(
  code: C,
  message?: string,
  details?: ErrorDetail[],
): { ok: false; code: C; message?: string; details?: ErrorDetail[] } {
  return { ok: false, code, message, details };
}

/** Turns a failed Result into the AppError the HTTP layer renders. */
export function unwrap<T>(result: Result<T>): T {
  if (result.ok) return result.value;
  throw new AppError(result.code, result.message, result.details);
}

const outOfRange =
  "An amount is beyond what Tally stores: credits, balances and their monthly totals must stay below 10^26 in absolute value.";

/** The answer when a write fails because a value is too large for its column (`isOutOfRange`). */
export const OUT_OF_RANGE = {
  code: "invalid_request",
  message: outOfRange,
  details: [{ message: outOfRange }],
} as const satisfies { code: ErrorCode; message: string; details: readonly ErrorDetail[] };
