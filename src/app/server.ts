import swagger from "@fastify/swagger";
import swaggerUi from "@fastify/swagger-ui";
import type { TypeBoxTypeProvider } from "@fastify/type-provider-typebox";
import { type TSchema, Type } from "@sinclair/typebox";
import Fastify, { type RouteOptions } from "fastify";
import { FLUSH_CONNECTIONS, isReady } from "../db/index.js";
import { registerAlertRoutes } from "../modules/alerts/alerts.routes.js";
import { registerBillingRoutes } from "../modules/billing/billing.routes.js";
import { registerLedgerRoutes } from "../modules/ledger/ledger.routes.js";
import { registerNotifyRoutes } from "../modules/notify/notify.routes.js";
import { installAuth, type SessionAuthenticator } from "../modules/orgs/auth.js";
import { registerOrgRoutes } from "../modules/orgs/orgs.routes.js";
import { registerPricingRoutes } from "../modules/pricing/pricing.routes.js";
import { registerReportsRoutes } from "../modules/reports/reports.routes.js";
import { registerTopupRoutes } from "../modules/topup/topup.routes.js";
import { IngestEngine } from "../modules/usage/engine.js";
import { registerUsageRoutes } from "../modules/usage/usage.routes.js";
import { registerWebRoutes } from "../modules/web/web.routes.js";
import { balanceFlags } from "./balance-reactions.js";
import type { AppContext } from "./context.js";
import { ErrorEnvelopeSchema } from "./errors.js";
import {
  type App,
  installErrorHandling,
  installValidation,
  ROUTER_OPTIONS,
  sendError,
} from "./http.js";
import { installIdempotency } from "./idempotency.js";
import { installRateLimit, RATE_LIMIT_EXEMPT } from "./rate-limit.js";
import { installSecurityHeaders } from "./security-headers.js";

export const BODY_LIMIT = 4 * 1024 * 1024;

export interface ServerOptions {
  sessions?: SessionAuthenticator;
}

const ERROR_RESPONSES: Record<number, string> = {
  400: "Invalid request (`invalid_request`).",
  401: "No, unknown or revoked API key (`unauthenticated`).",
  403: "The key's role does not allow this (`forbidden`, `plan_not_eligible`).",
  404: "Unknown id, or an id of another organisation (`not_found`).",
  409: "Conflict (`idempotency_conflict`, `idempotency_in_progress`, `invalid_state`, …).",
  429: "Rate limited (`rate_limited`).",
  500: "A fault of the service (`internal`); never an answer to bad input.",
  503: "The database is unavailable (`service_unavailable`); retry shortly, idempotently.",
};
const BODY_METHODS = new Set(["POST", "PUT", "PATCH", "DELETE"]);

/** What the shared plumbing answers on any route: parsing, body limit, rate limit. */
function plumbingErrors(route: RouteOptions): Record<number, string> {
  const errors: Record<number, string> = {};
  const withBody = [route.method].flat().some((m) => BODY_METHODS.has(m));
  if (withBody || route.schema?.querystring || route.schema?.params) {
    errors[400] = "Invalid request (`invalid_request`).";
  }
  if (withBody) {
    errors[413] = "The body is over the size limit (`payload_too_large`).";
    errors[415] = "The body is not JSON (`unsupported_media_type`).";
  }
  if (!RATE_LIMIT_EXEMPT.has(route.url ?? "")) errors[429] = ERROR_RESPONSES[429]!;
  return errors;
}

/**
 * The composition root of the HTTP service: cross-cutting plumbing first, then every module's
 * routes, registered explicitly so that the route table is readable in one place.
 */
export async function buildServer(ctx: AppContext, options: ServerOptions = {}): Promise<App> {
  const app = Fastify({
    ...ROUTER_OPTIONS,
    loggerInstance: ctx.logger,
    genReqId: () => ctx.ids.newId("req"),
    bodyLimit: BODY_LIMIT,
    trustProxy: false,
    ajv: { customOptions: { coerceTypes: false } },
  }).withTypeProvider<TypeBoxTypeProvider>() as unknown as App;

  installValidation(app);
  installErrorHandling(app);

  app.addHook("onRoute", (route) => {
    if (!route.schema) return;
    const v1 = route.url?.startsWith("/v1/") ?? false;
    const errors = { ...(v1 ? ERROR_RESPONSES : {}), ...plumbingErrors(route) };
    if (Object.keys(errors).length === 0) return;
    const response = (route.schema.response ?? {}) as Record<string, unknown>;
    for (const [status, description] of Object.entries(errors)) {
      response[status] ??= { ...ErrorEnvelopeSchema, description };
    }
    route.schema.response = response;
    if (!v1 || route.schema.headers) return;
    const headers: Record<string, TSchema> = {};
    if (route.config?.access) {
      headers["on-behalf-of"] = Type.Optional(
        Type.String({
          description:
            "The platform user acting (a user of the organisation), recorded on ledger entries as `user_id`.",
        }),
      );
    }
    if ([route.method].flat().includes("POST")) {
      headers["idempotency-key"] = Type.Optional(
        Type.String({ maxLength: 255, description: "Replays the first response for 24 h." }),
      );
    }
    if (Object.keys(headers).length > 0) route.schema.headers = Type.Object(headers);
  });

  await app.register(swagger, {
    openapi: {
      openapi: "3.0.3",
      info: {
        title: "Tally API",
        version: "1.0.0",
        description:
          "Prepaid credits billing: balances, usage metering, purchases, auto-topup, alerts and an immutable ledger.",
      },
      components: {
        securitySchemes: { bearer: { type: "http", scheme: "bearer", description: "API key" } },
      },
      security: [{ bearer: [] }],
    },
  });
  await app.register(swaggerUi, { routePrefix: "/docs" });

  app.addHook("onResponse", (request, reply, done) => {
    const route = request.routeOptions.url ?? "unmatched";
    const labels = { method: request.method, route, status: String(reply.statusCode) };
    ctx.metrics.httpRequests.inc(labels);
    ctx.metrics.httpDuration.observe(labels, reply.elapsedTime / 1000);
    done();
  });
  app.addHook("onRequest", (request, reply, done) => {
    reply.header("x-request-id", request.id);
    done();
  });

  installSecurityHeaders(app, ctx);
  // Before authentication: a throttled request costs no database work.
  await installRateLimit(app, ctx.config.rateLimit);
  installAuth(app, ctx, options.sessions);
  installIdempotency(app, ctx);

  registerWebRoutes(app, ctx);
  registerOperationalRoutes(app, ctx);
  registerOrgRoutes(app, ctx);
  registerLedgerRoutes(app, ctx, balanceFlags);
  registerAlertRoutes(app, ctx);
  registerTopupRoutes(app, ctx);
  registerNotifyRoutes(app, ctx);
  registerPricingRoutes(app, ctx);
  registerBillingRoutes(app, ctx);

  const ingest = new IngestEngine(ctx, {
    // One full batch request per flush: two flushes of 1,000 events keep Tally and PostgreSQL
    // busier than one of 2,000 (batch ingest +15 %, bench/results).
    maxBatchEvents: 1000,
    maxConcurrentFlushes: ctx.dbKind === "pglite" ? 1 : FLUSH_CONNECTIONS,
  });
  app.addHook("onClose", () => ingest.drain());
  registerUsageRoutes(app, ctx, ingest);
  registerReportsRoutes(app, ctx);

  return app;
}

function registerOperationalRoutes(app: App, ctx: AppContext): void {
  const publicAccess = { access: { public: true } } as const;
  app.get(
    "/healthz",
    {
      schema: {
        tags: ["operations"],
        summary: "Process is up",
        security: [],
        response: { 200: Type.Object({ status: Type.Literal("ok") }) },
      },
      config: publicAccess,
    },
    async () => ({ status: "ok" as const }),
  );
  app.get(
    "/readyz",
    {
      schema: {
        tags: ["operations"],
        summary: "Database answers and migrations are applied",
        security: [],
        response: {
          200: Type.Object({ status: Type.Literal("ok") }),
          503: {
            ...ErrorEnvelopeSchema,
            description:
              "The database does not answer, migrations are pending, or a newer version has " +
              "applied migrations this one does not know (`service_unavailable`).",
          },
        },
      },
      config: publicAccess,
    },
    async (request, reply) => {
      if (await isReady(ctx.db)) return { status: "ok" as const };
      return sendError(
        reply,
        request,
        "service_unavailable",
        "Not ready: the database does not answer or its migrations are not applied.",
      );
    },
  );
  app.get(
    "/metrics",
    {
      schema: {
        tags: ["operations"],
        summary: "Prometheus metrics",
        security: [],
        response: {
          200: {
            description: "Prometheus text exposition format.",
            // A plain JSON schema: the handler replies with text, not a typed value.
            content: { "text/plain": { schema: { type: "string" } } },
          },
        },
      },
      config: publicAccess,
    },
    async (_request, reply) => {
      reply.type(ctx.metrics.registry.contentType);
      return ctx.metrics.registry.metrics();
    },
  );
  app.get("/openapi.json", { schema: { hide: true }, config: publicAccess }, async () =>
    app.swagger(),
  );
}
