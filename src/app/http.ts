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
import { isDatabaseUnavailable, isOutOfRange, isWriteConflict } from "../db/index.js";
import {
  AppError,
  ERRORS,
  type ErrorCode,
  type ErrorDetail,
  errorBody,
  OUT_OF_RANGE,
} from "./errors.js";
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
 * `credits` that the organisation's plan must include credits billing. `portal: false` keeps a
 * route from customer users' portal sessions whatever their role: minting credits, API keys,
 * portal links or users is for the platform and the API keys it hands out.
 */
export type Access =
  | { public: true }
  | {
      public?: false;
      roles: readonly Role[];
      org?: boolean;
      credits?: boolean;
      portal?: false;
    };

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
  interface FastifyRequest {
    /**
     * The request failed in a way that leaves its effect unknown (the database connection was
     * lost, possibly after COMMIT): an Idempotency-Key must not be released for a re-run.
     */
    outcomeUnknown?: boolean;
    /**
     * A 5xx answer of a request that committed a step which running the same request again
     * finishes (a refund whose processor was unreachable): its Idempotency-Key is released.
     */
    resumable?: boolean;
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

export const Metadata = Type.Record(Type.String(), Type.String({ maxLength: 500 }), {
  maxProperties: 50,
  // A Record's key schema is not validated; propertyNames is.
  propertyNames: { minLength: 1, maxLength: 128 },
  description: "Up to 50 keys (1–128 characters) with string values of at most 500 characters.",
});

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

/** A streamed CSV answer (errors stay JSON in the envelope). */
export function CsvResponse(description: string) {
  // A plain JSON schema, not TypeBox: the handler replies with a stream, not a typed string.
  return { description, content: { "text/csv": { schema: { type: "string" } } } };
}

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
    // A cursor is client input: its values reach queries, so they must be storable text or
    // safe integers (a NUL in a decoded cursor was a 500).
    if (
      Array.isArray(values) &&
      values.length === arity &&
      values.every(
        (v) =>
          (typeof v === "string" && !UNSTORABLE.test(v)) ||
          (typeof v === "number" && Number.isSafeInteger(v)),
      )
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
  // RFC 3339 allows leap seconds and any year; a timestamp must also name an instant that
  // JavaScript and PostgreSQL can both hold (`…T23:59:60Z` and year 0 were a 500).
  const rfc3339 = ajv.formats["date-time"] as { validate: (s: string) => boolean };
  ajv.addFormat("date-time", {
    ...rfc3339,
    validate: (s: string) => rfc3339.validate(s) && parseInstant(s) !== null,
  });
  return ajv;
}

/**
 * A `from`/`to` filter bound (a valid RFC 3339 time) at the millisecond precision Tally stores
 * instants with. Digits past the millisecond are rounded up, not dropped as `Date` does: the
 * rounded bound selects exactly the stored instants the exact one would, with `>=` and `<` alike.
 */
export function filterBound(text: string): Date {
  const at = new Date(text);
  const fraction = /\.(\d+)/.exec(text)?.[1] ?? "";
  return /[1-9]/.test(fraction.slice(3)) ? new Date(at.getTime() + 1) : at;
}

/** The instant a timestamp names, if it is one the database can store (years 1–9999 UTC). */
export function parseInstant(text: string): Date | null {
  const ms = Date.parse(text);
  if (!Number.isFinite(ms)) return null;
  const at = new Date(ms);
  const year = at.getUTCFullYear();
  return year >= 1 && year <= 9999 ? at : null;
}

/**
 * PostgreSQL text cannot hold NUL (it would be a 500), and a lone UTF-16 surrogate is stored as
 * U+FFFD — a ledger entry read back would no longer match its hash. Both are refused anywhere in
 * a JSON body, before any route sees it. (In `u` mode `\p{Cs}` matches only unpaired surrogates.)
 */
// biome-ignore lint/suspicious/noControlCharactersInRegex: NUL is exactly what is refused.
const UNSTORABLE = /\u0000|\p{Cs}/u;

/**
 * Far deeper than any request schema nests (a usage batch with provider usage is about 6), and
 * far shallower than what 4 MiB of brackets can nest: recursive walkers (this one, Ajv,
 * `JSON.stringify` for idempotency) would overflow the stack on such a body.
 */
export const MAX_JSON_DEPTH = 32;

interface TextProblem {
  pointer: string;
  kind: "unstorable" | "too_deep";
}

/**
 * The first string (value or key) that PostgreSQL cannot store, or the first level nested too
 * deeply. Every request body goes through here: the path is a stack of segments, joined into a
 * pointer only for the problem found, not for every value.
 */
export function findUnstorableText(value: unknown): TextProblem | null {
  const path: (string | number)[] = [];
  const problem = (kind: TextProblem["kind"]): TextProblem => ({
    pointer: path.length === 0 ? "/" : `/${path.join("/")}`,
    kind,
  });
  const walk = (v: unknown): TextProblem | null => {
    if (typeof v === "string") return UNSTORABLE.test(v) ? problem("unstorable") : null;
    if (!v || typeof v !== "object") return null;
    if (path.length >= MAX_JSON_DEPTH) return problem("too_deep");
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) {
        path.push(i);
        const found = walk(v[i]);
        if (found) return found;
        path.pop();
      }
      return null;
    }
    for (const k in v) {
      if (!Object.hasOwn(v, k)) continue;
      path.push(k);
      if (UNSTORABLE.test(k)) return problem("unstorable");
      const found = walk((v as Record<string, unknown>)[k]);
      if (found) return found;
      path.pop();
    }
    return null;
  };
  return walk(value);
}

function refuseText(problem: TextProblem, field: string): AppError {
  return problem.kind === "too_deep"
    ? new AppError("invalid_request", "The JSON is nested too deeply.", [
        { field, message: `nested deeper than ${MAX_JSON_DEPTH} levels` },
      ])
    : new AppError("invalid_request", "Text must be valid Unicode without NUL characters.", [
        { field, message: "contains a NUL character or an unpaired surrogate" },
      ]);
}

/**
 * Path and query integers must be written as plain decimal integers: the validator's type
 * coercion (`+value`) would also take `0x10`, `1e1`, `1.0` or ` 5`.
 */
function looseIntegers(request: FastifyRequest): AppError | undefined {
  const schema = request.routeOptions.schema;
  const details: ErrorDetail[] = [];
  for (const [part, partSchema, values] of [
    ["path", schema?.params, request.params],
    ["query", schema?.querystring, request.query],
  ] as const) {
    const properties = (
      partSchema as { properties?: Record<string, { type?: unknown }> } | undefined
    )?.properties;
    if (!properties || typeof values !== "object" || values === null) continue;
    for (const [name, value] of Object.entries(values)) {
      if (properties[name]?.type !== "integer") continue;
      for (const v of [value].flat()) {
        if (typeof v === "string" && !/^-?\d+$/.test(v)) {
          details.push({ field: `${part}.${name}`, message: "must be a decimal integer" });
        }
      }
    }
  }
  if (details.length === 0) return undefined;
  const inPath = details[0]!.field?.startsWith("path.");
  return new AppError(
    "invalid_request",
    inPath ? "Invalid path." : "Invalid query string.",
    details,
  );
}

export function installValidation(app: App): void {
  // Path and query text reach the database before validation (authentication resolves
  // `{org_id}` in onRequest), so they are checked first of all.
  app.addHook("onRequest", (request, _reply, done) => {
    const parts = [["path", request.params]] as [string, unknown][];
    if (request.routeOptions.schema?.querystring) parts.push(["query", request.query]);
    for (const [part, value] of parts) {
      const problem = findUnstorableText(value);
      if (problem) {
        const name = problem.pointer.split("/").filter(Boolean).join(".");
        done(refuseText(problem, `${part}.${name}`));
        return;
      }
    }
    done(looseIntegers(request));
  });
  app.addHook("preValidation", (request, _reply, done) => {
    const problem =
      request.body === undefined || request.body === null ? null : findUnstorableText(request.body);
    done(problem ? refuseText(problem, problem.pointer) : undefined);
  });
  // JSON only: a text/plain body is 415, not a string that fails the schema. An empty body
  // with a JSON content type (clients that set it on every DELETE) is no body; where a body is
  // required, the schema says so.
  app.removeContentTypeParser(["application/json", "text/plain"]);
  const parseJson = app.getDefaultJsonParser("error", "error");
  app.addContentTypeParser("application/json", { parseAs: "string" }, (request, body, done) => {
    // JSON is UTF-8 (RFC 8259): a body declared in another charset would be read wrongly.
    const charset = /;\s*charset\s*=\s*"?([^";\s]+)/i.exec(request.headers["content-type"] ?? "");
    if (charset && !/^utf-?8$/i.test(charset[1]!)) {
      const message = `JSON bodies are UTF-8; charset=${charset[1]} is not accepted.`;
      return done(new AppError("unsupported_media_type", message), undefined);
    }
    if (body.length === 0) return done(null, undefined);
    return parseJson(request, body.toString(), done);
  });

  const bodyAjv = makeAjv(false);
  const textAjv = makeAjv(true);
  app.setValidatorCompiler(({ schema, httpPart }) =>
    (httpPart === "body" ? bodyAjv : textAjv).compile(schema),
  );
  app.setSchemaErrorFormatter((errors, dataVar) => {
    const err = new AppError(
      "invalid_request",
      `Invalid ${PART_NAMES[dataVar] ?? dataVar}.`,
      detailsOf(errors as ErrorObject[], dataVar),
    );
    return err as unknown as Error;
  });
}

const PART_NAMES: Record<string, string> = {
  body: "request body",
  querystring: "query string",
  params: "path",
  headers: "request headers",
};
const PART_PREFIX: Record<string, string> = {
  querystring: "query",
  params: "path",
  headers: "header",
};

/** At most this many details per error: a body with thousands of bad items gets the first ones. */
export const MAX_DETAILS = 100;

/**
 * One detail per problem, the first `MAX_DETAILS` of them (then one saying how many more). Body
 * fields are JSON pointers (`/metadata/k1`); query, path and header fields are `query.limit`,
 * `path.org_id`, `header.idempotency-key`. A failed union (`anyOf`) is one problem, not one per
 * branch. Linear in the errors (times the depth of their paths): a body of many bad items must
 * not cost more than it took to validate.
 */
export function detailsOf(errors: ErrorObject[], part: string): ErrorDetail[] {
  // The unions that failed, by the value they failed at. A branch's errors are at that value or
  // below it, and under the union's schema path; the innermost such union owns them.
  const unionsAt = new Map<string, ErrorObject[]>();
  for (const e of errors) {
    if (e.keyword !== "anyOf") continue;
    const list = unionsAt.get(e.instancePath);
    if (list) list.push(e);
    else unionsAt.set(e.instancePath, [e]);
  }
  const ownerOf = (e: ErrorObject): ErrorObject | undefined => {
    if (unionsAt.size === 0) return undefined;
    let owner: ErrorObject | undefined;
    let path = e.instancePath;
    for (;;) {
      for (const u of unionsAt.get(path) ?? []) {
        if (
          u !== e &&
          e.schemaPath.startsWith(`${u.schemaPath}/`) &&
          (!owner || u.schemaPath.length > owner.schemaPath.length)
        ) {
          owner = u;
        }
      }
      if (path === "") return owner;
      path = path.slice(0, path.lastIndexOf("/"));
    }
  };
  const branches = new Map<ErrorObject, ErrorObject[]>();
  const problems: ErrorObject[] = [];
  for (const e of errors) {
    const owner = ownerOf(e);
    if (!owner) problems.push(e);
    else if (branches.has(owner)) branches.get(owner)!.push(e);
    else branches.set(owner, [e]);
  }

  const details: ErrorDetail[] = [];
  for (const e of problems.slice(0, MAX_DETAILS)) {
    let pointer = e.instancePath || "";
    let message = e.message ?? "invalid";
    if (e.keyword === "required") {
      pointer += `/${(e.params as { missingProperty: string }).missingProperty}`;
      message = "is required";
    } else if (e.keyword === "additionalProperties") {
      pointer += `/${(e.params as { additionalProperty: string }).additionalProperty}`;
      message = "unknown field";
    } else if (e.keyword === "anyOf") {
      const own = branches.get(e) ?? [];
      const allowed = own
        .filter((b) => b.keyword === "const")
        .map((b) => JSON.stringify((b.params as { allowedValue: unknown }).allowedValue));
      message =
        allowed.length > 0 && own.every((b) => b.keyword === "const" || b.keyword === "type")
          ? `must be one of ${allowed.join(", ")}`
          : [...new Set(own.map((b) => b.message ?? "invalid"))].join(", or ") || message;
    }
    const field =
      part === "body"
        ? pointer || undefined
        : [PART_PREFIX[part] ?? part, ...pointer.split("/").filter(Boolean)].join(".");
    details.push(field === undefined ? { message } : { field, message });
  }
  if (problems.length > MAX_DETAILS) {
    details.push({ message: `and ${problems.length - MAX_DETAILS} more problems` });
  }
  return details;
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
      return sendError(reply, request, mapped, mappedMessage(fe, mapped), parseProblem(fe, mapped));
    }
    if (
      fe instanceof SyntaxError ||
      (fe.statusCode && fe.statusCode >= 400 && fe.statusCode < 500)
    ) {
      // Body parser errors (malformed JSON, __proto__ keys) and other client errors.
      return sendError(reply, request, "invalid_request", fe.message, [{ message: fe.message }]);
    }
    if (isOutOfRange(error)) {
      const { code, message, details } = OUT_OF_RANGE;
      return sendError(reply, request, code, message, details);
    }
    if (isWriteConflict(error)) {
      // A deadlock or serialization failure with a concurrent write: rolled back, nothing
      // written; the same request succeeds when tried again.
      request.log.warn({ err: error }, "write conflict");
      reply.header("retry-after", "1");
      return sendError(
        reply,
        request,
        "service_unavailable",
        "A concurrent write conflicted with this one; nothing was written. Retry the request.",
      );
    }
    if (isDatabaseUnavailable(error)) {
      // Not a bug of this request: the database is restarting or unreachable. Nothing was
      // written, or (a lost COMMIT acknowledgement) the outcome is unknown: retry idempotently.
      request.log.warn({ err: error }, "database unavailable");
      request.outcomeUnknown = true;
      reply.header("retry-after", "1");
      return sendError(
        reply,
        request,
        "service_unavailable",
        "The database is unavailable; retry shortly.",
      );
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

/**
 * Fastify constructor options for what fails before routing. Path parameters carry
 * `ext:<external_id>` and client ids of up to 128 characters (Fastify's default limit is 100),
 * and a bad URL must still be answered in the error envelope.
 */
export const ROUTER_OPTIONS = {
  routerOptions: { maxParamLength: 512 },
  frameworkErrors(error: FastifyError, request: FastifyRequest, reply: FastifyReply) {
    if (error.code === "FST_ERR_MAX_PARAM_LENGTH") {
      return sendError(reply, request, "not_found", "No such resource.");
    }
    return sendError(reply, request, "invalid_request", "The URL is not valid.", [
      { field: "path", message: error.message },
    ]);
  },
};

/** What the body parser found wrong (the JSON parser's own words), as the one detail. */
function parseProblem(error: FastifyError, code: ErrorCode): ErrorDetail[] {
  if (code !== "invalid_request") return [];
  const cause = error.cause instanceof Error ? error.cause.message : null;
  return [{ message: cause ?? error.message }];
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
