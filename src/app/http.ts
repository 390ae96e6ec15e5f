import type { TypeBoxTypeProvider } from "@fastify/type-provider-typebox";
import { type TSchema, Type } from "@sinclair/typebox";
import { Ajv, type ErrorObject } from "ajv";
import addFormatsModule from "ajv-formats";
import type {
  FastifyBaseLogger,
  FastifyError,
  FastifyInstance,
  FastifyReply,
  FastifyRequest,
  RawReplyDefaultExpression,
  RawRequestDefaultExpression,
  RawServerDefault,
} from "fastify";
import { AppError, ERRORS, type ErrorCode, type ErrorDetail, errorBody } from "./errors.js";
import { CLIENT_ID_PATTERN } from "./ids.js";

export type App = FastifyInstance<
  RawServerDefault,
  RawRequestDefaultExpression,
  RawReplyDefaultExpression,
  FastifyBaseLogger,
  TypeBoxTypeProvider
>;

/** Key roles; portal users act with admin, billing or read (viewer). */
export type Role = "platform" | "admin" | "billing" | "ingest" | "read";

/**
 * What a route needs. `roles` lists the organisation roles allowed (platform keys are always
 * allowed unless `platformOnly`), `org` says the path has `{org_id}` to resolve and scope-check,
 * `credits` that the organisation's plan must include credits billing.
 */
export type Access =
  | { public: true }
  | { public?: false; roles: readonly Role[]; org?: boolean; credits?: boolean };

export const ROLES = {
  /** Anything an organisation may read. */
  read: ["admin", "billing", "read"] as const,
  /** Balance-type reads that ingest keys also need. */
  readBalance: ["admin", "billing", "read", "ingest"] as const,
  ingest: ["admin", "ingest"] as const,
  billing: ["admin", "billing"] as const,
  admin: ["admin"] as const,
  platform: [] as const,
} satisfies Record<string, readonly Role[]>;

declare module "fastify" {
  interface FastifyContextConfig {
    access?: Access;
  }
}

// ---- common schemas -------------------------------------------------------------------------

export const Credits = (description?: string) =>
  Type.String({
    pattern: "^[+-]?\\d{1,26}(\\.\\d{1,12})?$",
    description: description ?? "Credits as an exact decimal string (≤ 12 fractional digits).",
    examples: ["12.5"],
  });

export const Rate = (description?: string) =>
  Type.String({
    pattern: "^\\d{1,24}(\\.\\d{1,6})?$",
    description: description ?? "A non-negative decimal with at most 6 fractional digits.",
    examples: ["2.5"],
  });

export const ClientId = (description: string) =>
  Type.String({ pattern: CLIENT_ID_PATTERN, description, examples: ["u-17"] });

export const Name = (description = "A name (1–200 characters).") =>
  Type.String({ minLength: 1, maxLength: 200, description });

export const Timestamp = (description?: string) =>
  Type.String({ format: "date-time", description, examples: ["2026-11-24T10:00:00Z"] });

export const Metadata = Type.Record(
  Type.String({ maxLength: 128 }),
  Type.String({ maxLength: 500 }),
  {
    maxProperties: 50,
    description: "Up to 50 string keys with string values of at most 500 characters.",
  },
);

export const OrgParams = Type.Object({
  org_id: Type.String({
    minLength: 1,
    maxLength: 160,
    description: "`org_…` id or `ext:<external_id>`.",
  }),
});

export const ListQuery = {
  limit: Type.Optional(
    Type.Integer({ minimum: 1, maximum: 1000, default: 50, description: "Page size (1–1000)." }),
  ),
  cursor: Type.Optional(
    Type.String({ maxLength: 500, description: "`next_cursor` of the previous page." }),
  ),
};

export function Page<T extends TSchema>(item: T) {
  return Type.Object({
    data: Type.Array(item),
    has_more: Type.Boolean(),
    next_cursor: Type.Union([Type.String(), Type.Null()]),
  });
}

/** Opaque keyset cursors: base64url of a JSON array of the sort key values. */
export function encodeCursor(values: readonly (string | number)[]): string {
  return Buffer.from(JSON.stringify(values)).toString("base64url");
}

export function decodeCursor(cursor: string, arity: number): (string | number)[] {
  try {
    const values = JSON.parse(Buffer.from(cursor, "base64url").toString("utf8"));
    if (
      Array.isArray(values) &&
      values.length === arity &&
      values.every((v) => typeof v === "string" || typeof v === "number")
    ) {
      return values;
    }
  } catch {}
  throw new AppError("invalid_request", "The cursor is not valid.", [
    { field: "query.cursor", message: "not a cursor returned by this list" },
  ]);
}

/** Shapes `limit + 1` fetched rows into a page: the extra row only says there is more. */
export function pageOf<R, D>(rows: R[], limit: number, dto: (r: R) => D, cursor: (r: R) => string) {
  const has_more = rows.length > limit;
  const kept = has_more ? rows.slice(0, limit) : rows;
  const last = kept[kept.length - 1];
  return { data: kept.map(dto), has_more, next_cursor: has_more && last ? cursor(last) : null };
}

// ---- validation -----------------------------------------------------------------------------

const addFormats = addFormatsModule as unknown as (ajv: Ajv) => Ajv;

/**
 * Bodies are validated strictly (no type coercion: a JSON number is not a decimal string);
 * query strings, params and headers are text, so there scalars are coerced.
 */
function makeAjv(coerce: boolean): Ajv {
  const ajv = new Ajv({
    coerceTypes: coerce,
    useDefaults: true,
    removeAdditional: false,
    allErrors: true,
    strict: false,
  });
  addFormats(ajv);
  return ajv;
}

export function installValidation(app: App): void {
  const bodyAjv = makeAjv(false);
  const textAjv = makeAjv(true);
  app.setValidatorCompiler(({ schema, httpPart }) =>
    (httpPart === "body" ? bodyAjv : textAjv).compile(schema),
  );
  app.setSchemaErrorFormatter((errors, dataVar) => {
    const err = new AppError(
      "invalid_request",
      `The ${dataVar === "body" ? "request body" : dataVar} is invalid.`,
      errors.map((e) => detailOf(e as ErrorObject, dataVar)),
    );
    return err as unknown as Error;
  });
}

function detailOf(e: ErrorObject, part: string): ErrorDetail {
  let field = e.instancePath || "";
  if (e.keyword === "required")
    field += `/${(e.params as { missingProperty: string }).missingProperty}`;
  if (e.keyword === "additionalProperties") {
    field += `/${(e.params as { additionalProperty: string }).additionalProperty}`;
    return { field: `${part}${field}`, message: "unknown field" };
  }
  return { field: `${part}${field}`, message: e.message ?? "invalid" };
}

// ---- errors ---------------------------------------------------------------------------------

const FASTIFY_CODES: Record<string, ErrorCode> = {
  FST_ERR_CTP_INVALID_MEDIA_TYPE: "unsupported_media_type",
  FST_ERR_CTP_BODY_TOO_LARGE: "payload_too_large",
  FST_ERR_CTP_EMPTY_JSON_BODY: "invalid_request",
  FST_ERR_CTP_INVALID_JSON_BODY: "invalid_request",
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: "invalid_request",
  FST_ERR_VALIDATION: "invalid_request",
  FST_ERR_RATE_LIMIT_EXCEEDED: "rate_limited",
};

export function sendError(
  reply: FastifyReply,
  request: FastifyRequest,
  code: ErrorCode,
  message: string,
  details: readonly ErrorDetail[] = [],
  status?: number,
) {
  return reply
    .code(status ?? ERRORS[code].status)
    .type("application/json; charset=utf-8")
    .send(errorBody(code, message, request.id, details));
}

export function installErrorHandling(app: App): void {
  app.setErrorHandler((error: FastifyError | AppError | Error, request, reply) => {
    if (error instanceof AppError) {
      for (const [k, v] of Object.entries(error.headers)) reply.header(k, v);
      return sendError(reply, request, error.code, error.message, error.details);
    }
    const fe = error as FastifyError;
    // Schema validation: formatted by installValidation, but Fastify may wrap it.
    if (fe.validation) {
      return sendError(reply, request, "invalid_request", fe.message, [{ message: fe.message }]);
    }
    const mapped = fe.code ? FASTIFY_CODES[fe.code] : undefined;
    if (mapped) {
      return sendError(reply, request, mapped, mappedMessage(fe, mapped));
    }
    if (
      fe instanceof SyntaxError ||
      (fe.statusCode && fe.statusCode >= 400 && fe.statusCode < 500)
    ) {
      // Body parser errors (malformed JSON, __proto__ keys) and other client errors.
      return sendError(reply, request, "invalid_request", fe.message);
    }
    request.log.error({ err: error }, "unhandled error");
    return sendError(reply, request, "internal", "Internal error.");
  });
  app.setNotFoundHandler((request, reply) =>
    sendError(
      reply,
      request,
      "not_found",
      `No route ${request.method} ${request.url.split("?")[0]}.`,
    ),
  );
}

function mappedMessage(error: FastifyError, code: ErrorCode): string {
  switch (code) {
    case "payload_too_large":
      return "The request body is too large.";
    case "unsupported_media_type":
      return "Content-Type must be application/json.";
    default:
      return error.message;
  }
}
