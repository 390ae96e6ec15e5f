import { type Static, Type } from "@sinclair/typebox";
import type { FastifyRequest } from "fastify";
import type { AppContext } from "../../app/context.js";
import { unwrap } from "../../app/errors.js";
import {
  type App,
  decodeCursor,
  encodeCursor,
  ListQuery,
  Page,
  pageOf,
  ROLES,
  Timestamp,
} from "../../app/http.js";
import { requestPrincipal } from "../orgs/auth.js";
import { EVENT_TYPES, type EventType } from "./events.js";
import * as service from "./webhooks.service.js";

const EventTypeSchema = Type.Unsafe<EventType>({
  type: "string",
  enum: [...EVENT_TYPES],
  description: "An event type.",
  examples: ["balance.low"],
});

export const WebhookEndpointSchema = Type.Object(
  {
    id: Type.String({ examples: ["whe_01JD3M6Q8Z4X2N7V5B9C1K3H0T"] }),
    url: Type.String({ examples: ["https://example.com/hooks/tally"] }),
    events: Type.Array(EventTypeSchema, {
      description: "Event types delivered; empty = every type.",
    }),
    org_id: Type.Union([Type.String(), Type.Null()], {
      description: "The organisation whose events are delivered; null = every organisation.",
    }),
    status: Type.Union([Type.Literal("enabled"), Type.Literal("disabled")], {
      description: "`disabled` after deliveries failed persistently; see `disabled_reason`.",
    }),
    disabled_reason: Type.Union([Type.String(), Type.Null()]),
    disabled_at: Type.Union([Timestamp(), Type.Null()]),
    created_at: Timestamp(),
  },
  { title: "WebhookEndpoint" },
);
export type WebhookEndpointDto = Static<typeof WebhookEndpointSchema>;

const CreatedWebhookEndpointSchema = Type.Composite(
  [
    WebhookEndpointSchema,
    Type.Object({
      secret: Type.String({
        description:
          "Signing secret (Standard Webhooks, `whsec_` + base64). Returned only in this response.",
        examples: ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
      }),
    }),
  ],
  { title: "CreatedWebhookEndpoint" },
);

const CreateEndpointBody = Type.Object(
  {
    url: Type.String({
      minLength: 1,
      maxLength: 2000,
      description:
        "http(s) URL. Hosts on loopback, private, link-local or metadata addresses are refused unless TALLY_ALLOW_PRIVATE_WEBHOOK_URLS is set.",
      examples: ["https://example.com/hooks/tally"],
    }),
    events: Type.Optional(
      Type.Array(EventTypeSchema, {
        uniqueItems: true,
        maxItems: EVENT_TYPES.length,
        description: "Event types to deliver; omitted or empty = every type.",
      }),
    ),
    org_id: Type.Optional(
      Type.Union([Type.String({ minLength: 1, maxLength: 160 }), Type.Null()], {
        description:
          "`org_…` id or `ext:<external_id>`. Platform keys: omitted or null = every organisation. Organisation keys: always their own organisation.",
      }),
    ),
  },
  { additionalProperties: false },
);

export const WebhookDeliverySchema = Type.Object(
  {
    id: Type.String({ examples: ["dlv_01JD3M6Q8Z4X2N7V5B9C1K3H0T"] }),
    event_id: Type.String(),
    event_type: EventTypeSchema,
    attempt: Type.Integer({ description: "1 for the first attempt of this event." }),
    status_code: Type.Union([Type.Integer(), Type.Null()], {
      description: "HTTP status received; null when no response arrived.",
    }),
    error: Type.Union([Type.String(), Type.Null()]),
    duration_ms: Type.Integer(),
    succeeded: Type.Boolean(),
    created_at: Timestamp(),
  },
  { title: "WebhookDelivery" },
);

const EndpointParams = Type.Object({
  id: Type.String({ minLength: 1, maxLength: 64, description: "`whe_…` id." }),
});

function endpointDto(e: service.WebhookEndpoint): WebhookEndpointDto {
  return {
    id: e.id,
    url: e.url,
    events: e.events as EventType[],
    org_id: e.org_id,
    status: e.disabled_at ? "disabled" : "enabled",
    disabled_reason: e.disabled_reason,
    disabled_at: e.disabled_at?.toISOString() ?? null,
    created_at: e.created_at.toISOString(),
  };
}

function deliveryDto(d: service.WebhookDelivery) {
  return {
    id: d.id,
    event_id: d.event_id,
    event_type: d.event_type as EventType,
    attempt: d.attempt,
    status_code: d.status_code,
    error: d.error,
    duration_ms: d.duration_ms,
    succeeded: d.succeeded,
    created_at: d.created_at.toISOString(),
  };
}

/** These routes have no `{org_id}`: the service scopes organisation keys to their own org. */
function scopeOf(request: FastifyRequest): service.EndpointScope {
  return { orgId: requestPrincipal(request).orgId };
}

function before(cursor: string | undefined): string | undefined {
  return cursor ? String(decodeCursor(cursor, 1)[0]) : undefined;
}

export function registerNotifyRoutes(app: App, ctx: AppContext): void {
  const tags = ["webhooks"];
  // The platform's integration: not the customer portal's, whatever the user's role.
  const access = { access: { roles: ROLES.admin, portal: false as const } };

  app.post(
    "/v1/webhook-endpoints",
    {
      schema: {
        tags,
        summary: "Create a webhook endpoint",
        description:
          "Events are POSTed as JSON `{id, type, created_at, org_id, data}` with Standard Webhooks headers `webhook-id`, `webhook-timestamp`, `webhook-signature`. Delivery is at least once (deduplicate on `webhook-id`, the event id), retried with backoff for 3 days; an endpoint failing all that time is disabled. An organisation has at most 20 endpoints, and so do platform-wide ones (no `org_id`): one more is 409 `invalid_state`. The `secret` is shown only here.",
        body: CreateEndpointBody,
        response: { 201: CreatedWebhookEndpointSchema },
      },
      config: access,
    },
    async (request, reply) => {
      const endpoint = unwrap(
        await service.createEndpoint(ctx, scopeOf(request), {
          url: request.body.url,
          events: request.body.events,
          orgRef: request.body.org_id,
        }),
      );
      return reply.code(201).send({ ...endpointDto(endpoint), secret: endpoint.secret });
    },
  );

  app.get(
    "/v1/webhook-endpoints",
    {
      schema: {
        tags,
        summary: "List webhook endpoints",
        description:
          "Platform keys see every endpoint; organisation admin keys their organisation's.",
        querystring: Type.Object(
          {
            ...ListQuery,
            org_id: Type.Optional(
              Type.String({
                minLength: 1,
                maxLength: 160,
                description: "Only this organisation's endpoints.",
              }),
            ),
          },
          { additionalProperties: false },
        ),
        response: { 200: Page(WebhookEndpointSchema) },
      },
      config: access,
    },
    async (request) => {
      const limit = request.query.limit ?? 50;
      const rows = unwrap(
        await service.listEndpoints(ctx, scopeOf(request), {
          limit,
          before: before(request.query.cursor),
          orgRef: request.query.org_id,
        }),
      );
      return pageOf(rows, limit, endpointDto, (e) => encodeCursor([e.id]));
    },
  );

  app.get(
    "/v1/webhook-endpoints/:id",
    {
      schema: {
        tags,
        summary: "Get a webhook endpoint (without its secret)",
        params: EndpointParams,
        response: { 200: WebhookEndpointSchema },
      },
      config: access,
    },
    async (request) =>
      endpointDto(unwrap(await service.getEndpoint(ctx, scopeOf(request), request.params.id))),
  );

  app.delete(
    "/v1/webhook-endpoints/:id",
    {
      schema: {
        tags,
        summary: "Delete a webhook endpoint",
        description: "Stops its deliveries at once and deletes its delivery log.",
        params: EndpointParams,
        response: { 204: Type.Null() },
      },
      config: access,
    },
    async (request, reply) => {
      unwrap(await service.deleteEndpoint(ctx, scopeOf(request), request.params.id));
      return reply.code(204).send(null);
    },
  );

  app.post(
    "/v1/webhook-endpoints/:id/enable",
    {
      schema: {
        tags,
        summary: "Re-enable a disabled webhook endpoint",
        description: "Events raised while it was disabled are not delivered.",
        params: EndpointParams,
        response: { 200: WebhookEndpointSchema },
      },
      config: access,
    },
    async (request) =>
      endpointDto(unwrap(await service.enableEndpoint(ctx, scopeOf(request), request.params.id))),
  );

  app.get(
    "/v1/webhook-endpoints/:id/deliveries",
    {
      schema: {
        tags,
        summary: "List delivery attempts of a webhook endpoint (newest first)",
        params: EndpointParams,
        querystring: Type.Object(ListQuery, { additionalProperties: false }),
        response: { 200: Page(WebhookDeliverySchema) },
      },
      config: access,
    },
    async (request) => {
      const limit = request.query.limit ?? 50;
      const rows = unwrap(
        await service.listDeliveries(ctx, scopeOf(request), request.params.id, {
          limit,
          before: before(request.query.cursor),
        }),
      );
      return pageOf(rows, limit, deliveryDto, (d) => encodeCursor([d.id]));
    },
  );
}
