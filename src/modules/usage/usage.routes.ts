import type { TSchema } from "@sinclair/typebox";
import { Type } from "@sinclair/typebox";
import { Ajv, type ErrorObject } from "ajv";
import addFormatsModule from "ajv-formats";
import type { AppContext } from "../../app/context.js";
import { AppError, ErrorEnvelopeSchema, unwrap } from "../../app/errors.js";
import {
  type App,
  decodeCursor,
  detailsOf,
  encodeCursor,
  filterBound,
  ListQuery,
  OrgParams,
  Page,
  pageOf,
  parseInstant,
  ROLES,
  Timestamp,
} from "../../app/http.js";
import {
  creditsFromDb,
  formatCredits,
  formatScaled6,
  parseCredits,
  parseScaled6,
} from "../ledger/credits.js";
import { requestOrg, requestPrincipal } from "../orgs/auth.js";
import type { IngestEngine, IngestOutcome } from "./engine.js";
import {
  ReservationSchema,
  StoredUsageEventSchema,
  UsageBatchSchema,
  type UsageEventInput,
  UsageEventSchema,
  UsageResultSchema,
  UsageTypeSchema,
} from "./usage.schemas.js";
import * as service from "./usage.service.js";
import type { UsageEventsTable } from "./usage.tables.js";

const addFormats = addFormatsModule as unknown as (ajv: Ajv) => Ajv;
const ajv = addFormats(new Ajv({ coerceTypes: false, allErrors: true, strict: false }));
const validateEvent = ajv.compile(UsageEventSchema as TSchema);
const validateBatch = ajv.compile(UsageBatchSchema as TSchema);

/**
 * `POST /v1/usage-events` takes `{events: [...]}` or one event object. Validating the two shapes
 * separately gives errors that point at the event and field at fault instead of a union's noise.
 */
const parsedBodies = new WeakMap<object, ReturnType<typeof parseUsageBody>>();

function parseUsageBody(body: unknown): { events: UsageEventInput[]; single: boolean } {
  const isBatch = typeof body === "object" && body !== null && "events" in body;
  const validate = isBatch ? validateBatch : validateEvent;
  if (!validate(body)) {
    throw new AppError(
      "invalid_request",
      "The request body is invalid.",
      detailsOf((validate.errors ?? []) as ErrorObject[], "body"),
    );
  }
  return isBatch
    ? { events: (body as { events: UsageEventInput[] }).events, single: false }
    : { events: [body as UsageEventInput], single: true };
}

/** How many events a request body carried, as far as it can be told. */
function submittedEvents(body: unknown): number {
  const events = (body as { events?: unknown } | null)?.events;
  return Array.isArray(events) ? events.length : 1;
}

function ingestResponse(outcome: IngestOutcome) {
  if (!outcome.ok) throw new AppError(outcome.code, outcome.message, outcome.details);
  return {
    data: outcome.results.map((r) => ({
      id: r.id,
      status: r.status,
      cost: formatCredits(r.cost),
      transaction_id: r.transactionId,
      balance_after: formatCredits(r.balanceAfter),
    })),
  };
}

/** A hold past its expiry shows as `expired` at once, before the sweeper marks it. */
function reservationDto(r: service.Reservation, now: Date) {
  const overdue = service.isOverdue(r, now);
  return {
    id: r.id,
    org_id: r.org_id,
    amount: formatCredits(creditsFromDb(r.amount)),
    status: overdue ? "expired" : r.status,
    description: r.description,
    expires_at: r.expires_at.toISOString(),
    settled_cost: r.settled_cost === null ? null : formatCredits(creditsFromDb(r.settled_cost)),
    created_at: r.created_at.toISOString(),
    closed_at: (overdue ? r.expires_at : r.closed_at)?.toISOString() ?? null,
  };
}

function storedEventDto(e: UsageEventsTable) {
  const quantities: Record<string, string | number> = {};
  if (e.type === "ai_tokens") {
    quantities.input_tokens = Number(e.input_tokens);
    quantities.cached_input_tokens = Number(e.cached_input_tokens);
    quantities.cache_write_tokens = Number(e.cache_write_tokens);
    quantities.output_tokens = Number(e.output_tokens);
  } else {
    if (e.quantity !== null) quantities.quantity = formatScaled6(parseScaled6(e.quantity));
    if (e.billed_quantity !== null)
      quantities.billed_quantity = formatCredits(creditsFromDb(e.billed_quantity));
  }
  return {
    id: e.id,
    org_id: e.org_id,
    type: e.type,
    timestamp: e.timestamp.toISOString(),
    user_id: e.user_id,
    operation: e.operation,
    model: e.model,
    meter: e.meter,
    resource: e.resource,
    quantities,
    cost: formatCredits(creditsFromDb(e.cost)),
    price_version: e.price_version,
    transaction_id: e.transaction_id,
    reservation_id: e.reservation_id,
    provider_usage:
      (typeof e.provider_usage === "string" ? JSON.parse(e.provider_usage) : e.provider_usage) ??
      null,
    metadata:
      ((typeof e.metadata === "string" ? JSON.parse(e.metadata) : e.metadata) as Record<
        string,
        string
      >) ?? null,
    received_at: e.received_at.toISOString(),
  };
}

const PRICING_ERRORS = {
  ...ErrorEnvelopeSchema,
  description: "An event cannot be priced (`price_not_found`, `timestamp_out_of_range`).",
};

export function registerUsageRoutes(app: App, ctx: AppContext, engine: IngestEngine): void {
  const tags = ["usage"];

  app.post(
    "/v1/usage-events",
    {
      schema: {
        tags,
        summary: "Record usage events (one, or a batch of up to 1000)",
        description:
          "Prices each event and deducts its cost in real time. The response is sent after the events are durable. A repeated event id is a `duplicate` when the event as submitted is the same, else `409 event_conflict`. Any invalid event rejects the whole request and nothing is recorded.",
        body: Type.Union([UsageBatchSchema, UsageEventSchema]),
        response: {
          200: UsageResultSchema,
          422: PRICING_ERRORS,
        },
      },
      // Validated by parseUsageBody for precise errors; the schema above documents the shapes.
      // Before the handler, as schemas are: an invalid body does not use up an Idempotency-Key.
      validatorCompiler: () => () => true,
      preValidation: async (request) => {
        try {
          parsedBodies.set(request, parseUsageBody(request.body));
        } catch (error) {
          if (error instanceof AppError) engine.countRejected(submittedEvents(request.body));
          throw error;
        }
      },
      config: { access: { roles: ROLES.ingest, portal: false } },
    },
    async (request) => {
      let outcome: IngestOutcome;
      try {
        const { events, single } = parsedBodies.get(request)!;
        outcome = await service.ingestUsage(
          ctx,
          engine,
          requestPrincipal(request),
          events,
          (i) => (single ? "" : `/events/${i}`),
          request.idempotency,
        );
      } catch (error) {
        // Refused before the engine (schema, price, time window, plan): counted like the
        // engine counts the requests it refuses.
        if (error instanceof AppError) engine.countRejected(submittedEvents(request.body));
        throw error;
      }
      return ingestResponse(outcome);
    },
  );

  app.get(
    "/v1/organizations/:org_id/usage-events",
    {
      schema: {
        tags,
        summary: "Stored usage events, newest first",
        params: OrgParams,
        querystring: Type.Object(
          {
            ...ListQuery,
            type: Type.Optional(UsageTypeSchema),
            model: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
            user_id: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
            from: Type.Optional(Timestamp("Usage at or after.")),
            to: Type.Optional(Timestamp("Usage before.")),
          },
          { additionalProperties: false },
        ),
        response: { 200: Page(StoredUsageEventSchema) },
      },
      config: { access: { roles: ROLES.read, org: true, credits: true } },
    },
    async (request) => {
      const q = request.query;
      const limit = q.limit ?? 50;
      let query = ctx.db
        .selectFrom("usage_events")
        .selectAll()
        .where("org_id", "=", requestOrg(request).id)
        .orderBy("timestamp", "desc")
        .orderBy("id", "desc")
        .limit(limit + 1);
      if (q.type) query = query.where("type", "=", q.type);
      if (q.model !== undefined) query = query.where("model", "=", q.model);
      if (q.user_id !== undefined) query = query.where("user_id", "=", q.user_id);
      if (q.from) query = query.where("timestamp", ">=", filterBound(q.from));
      if (q.to) query = query.where("timestamp", "<", filterBound(q.to));
      if (q.cursor) {
        const [ts, id] = decodeCursor(q.cursor, 2);
        const at = parseInstant(String(ts));
        if (!at) throw new AppError("invalid_request", "The cursor is not valid.");
        query = query.where((eb) =>
          eb.or([
            eb("timestamp", "<", at),
            eb.and([eb("timestamp", "=", at), eb("id", "<", String(id))]),
          ]),
        );
      }
      const rows = await query.execute();
      return pageOf(rows, limit, storedEventDto, (e) =>
        encodeCursor([e.timestamp.toISOString(), e.id]),
      );
    },
  );

  // ---- reservations -------------------------------------------------------------------------

  const ReservationParams = Type.Object({
    org_id: OrgParams.properties.org_id,
    reservation_id: Type.String({ maxLength: 64 }),
  });

  app.post(
    "/v1/organizations/:org_id/reservations",
    {
      schema: {
        tags: ["reservations"],
        summary: "Hold credits before an expensive operation",
        params: OrgParams,
        body: Type.Object(
          {
            amount: Type.String({
              pattern: "^\\+?\\d{1,15}(\\.\\d{1,12})?$",
              description: "Credits to hold (> 0).",
              examples: ["25"],
            }),
            expires_in_seconds: Type.Optional(
              Type.Integer({ minimum: 1, maximum: service.MAX_HOLD_SECONDS, default: 300 }),
            ),
            description: Type.Optional(Type.String({ maxLength: 500 })),
          },
          { additionalProperties: false },
        ),
        response: {
          201: ReservationSchema,
          402: {
            ...ErrorEnvelopeSchema,
            description: "Not enough available credits (`insufficient_credits`).",
          },
        },
      },
      config: { access: { roles: ROLES.ingest, org: true, credits: true, portal: false } },
    },
    async (request, reply) => {
      const org = requestOrg(request);
      const amount = parseCredits(request.body.amount);
      if (amount <= 0n) {
        throw new AppError("invalid_request", "amount must be positive.", [
          { field: "/amount", message: "must be > 0" },
        ]);
      }
      const reservation = unwrap(
        await service.createReservation(ctx, {
          orgId: org.id,
          amount,
          expiresInSeconds: request.body.expires_in_seconds ?? 300,
          description: request.body.description ?? null,
          principal: requestPrincipal(request),
        }),
      );
      return reply.code(201).send(reservationDto(reservation, ctx.clock.now()));
    },
  );

  app.post(
    "/v1/organizations/:org_id/reservations/:reservation_id/settle",
    {
      schema: {
        tags: ["reservations"],
        summary: "Settle a hold with the actual usage events and release it",
        params: ReservationParams,
        body: Type.Object(
          { events: Type.Array(UsageEventSchema, { minItems: 0, maxItems: 1000 }) },
          { additionalProperties: false },
        ),
        response: {
          200: Type.Composite([UsageResultSchema, Type.Object({ reservation: ReservationSchema })]),
          // The events are priced as usual.
          422: PRICING_ERRORS,
        },
      },
      config: { access: { roles: ROLES.ingest, org: true, credits: true, portal: false } },
    },
    async (request) => {
      const org = requestOrg(request);
      const outcome = await service.settleReservation(
        ctx,
        engine,
        requestPrincipal(request),
        org.id,
        request.params.reservation_id,
        request.body.events,
        request.idempotency,
      );
      const body = ingestResponse(outcome);
      const reservation = await ctx.db
        .selectFrom("reservations")
        .selectAll()
        .where("org_id", "=", org.id)
        .where("id", "=", request.params.reservation_id)
        .executeTakeFirstOrThrow();
      return { ...body, reservation: reservationDto(reservation, ctx.clock.now()) };
    },
  );

  app.post(
    "/v1/organizations/:org_id/reservations/:reservation_id/release",
    {
      schema: {
        tags: ["reservations"],
        summary: "Release a hold without usage",
        params: ReservationParams,
        response: { 200: ReservationSchema },
      },
      config: { access: { roles: ROLES.ingest, org: true, credits: true, portal: false } },
    },
    async (request) => {
      const r = unwrap(
        await service.releaseReservation(
          ctx,
          requestOrg(request).id,
          request.params.reservation_id,
        ),
      );
      return reservationDto(r, ctx.clock.now());
    },
  );

  app.get(
    "/v1/organizations/:org_id/reservations",
    {
      schema: {
        tags: ["reservations"],
        summary: "Reservations, newest first",
        params: OrgParams,
        querystring: Type.Object(
          {
            ...ListQuery,
            status: Type.Optional(
              Type.Union([
                Type.Literal("held"),
                Type.Literal("settled"),
                Type.Literal("released"),
                Type.Literal("expired"),
              ]),
            ),
          },
          { additionalProperties: false },
        ),
        response: { 200: Page(ReservationSchema) },
      },
      config: { access: { roles: ROLES.readBalance, org: true, credits: true } },
    },
    async (request) => {
      const limit = request.query.limit ?? 50;
      let q = ctx.db
        .selectFrom("reservations")
        .selectAll()
        .where("org_id", "=", requestOrg(request).id)
        .orderBy("id", "desc")
        .limit(limit + 1);
      const now = ctx.clock.now();
      const status = request.query.status;
      // As shown: a hold past its expiry is `expired`, not `held`.
      if (status === "held") q = q.where("status", "=", "held").where("expires_at", ">", now);
      else if (status === "expired") {
        q = q.where((eb) =>
          eb.or([
            eb("status", "=", "expired"),
            eb.and([eb("status", "=", "held"), eb("expires_at", "<=", now)]),
          ]),
        );
      } else if (status) q = q.where("status", "=", status);
      if (request.query.cursor)
        q = q.where("id", "<", String(decodeCursor(request.query.cursor, 1)[0]));
      return pageOf(
        await q.execute(),
        limit,
        (r) => reservationDto(r, now),
        (r) => encodeCursor([r.id]),
      );
    },
  );

  app.get(
    "/v1/organizations/:org_id/reservations/:reservation_id",
    {
      schema: {
        tags: ["reservations"],
        summary: "One reservation",
        params: ReservationParams,
        response: { 200: ReservationSchema },
      },
      config: { access: { roles: ROLES.readBalance, org: true, credits: true } },
    },
    async (request) => {
      const r = await ctx.db
        .selectFrom("reservations")
        .selectAll()
        .where("org_id", "=", requestOrg(request).id)
        .where("id", "=", request.params.reservation_id)
        .executeTakeFirst();
      if (!r) throw new AppError("not_found", "Reservation not found.");
      return reservationDto(r, ctx.clock.now());
    },
  );
}
