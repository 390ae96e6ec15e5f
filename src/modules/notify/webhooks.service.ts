import { sql } from "kysely";
import type { AppContext } from "../../app/context.js";
import { fail, ok, type Result } from "../../app/errors.js";
import { resolveOrganization } from "../orgs/orgs.service.js";
import { type DeliverPayload, type EventType, endpointKey, eventBody } from "./events.js";
import type { Job, QueueOptions } from "./jobs.js";
import * as repo from "./notify.repo.js";
import { checkWebhookUrl } from "./ssrf.js";
import { generateWebhookSecret, postWebhook, signedHeaders } from "./webhooks.delivery.js";

export type WebhookEndpoint = repo.EndpointRow;
export type WebhookDelivery = repo.DeliveryRow;

/**
 * Who is asking: `orgId` null is the platform (every endpoint), a string an organisation admin
 * (only that organisation's endpoints; anything else answers like an unknown id).
 */
export interface EndpointScope {
  orgId: string | null;
}

const NOT_FOUND = "Webhook endpoint not found.";

/**
 * Endpoints per organisation, and platform-wide (`org_id` null): every event fans out to each
 * of its organisation's endpoints and to every platform-wide one.
 */
export const MAX_ENDPOINTS = 20;

/** A delivery that takes this long (or a timeout) makes its endpoint slow for `SLOW_FOR_MS`. */
const SLOW_AFTER_MS = 1_000;
const SLOW_FOR_MS = 60_000;

/**
 * How many deliveries to one endpoint a runner makes at once: half its slots (10 of 20), so
 * that even a burst to one endpoint leaves room for the others; a fifth (4 of 20) while the
 * endpoint is slow — a delivery to it under way for `SLOW_AFTER_MS`, or one that took that long
 * in the last minute. Its other deliveries wait unclaimed, their attempts not counted.
 */
export class EndpointPacing {
  private readonly slowUntil = new Map<string, number>();

  constructor(private readonly slowAfterMs = SLOW_AFTER_MS) {}

  /** A delivery to the endpoint of `key` took `ms` (a timeout: the whole deadline). */
  noteDuration(key: string, ms: number): void {
    const now = performance.now();
    if (ms >= this.slowAfterMs) this.slowUntil.set(key, now + SLOW_FOR_MS);
    if (this.slowUntil.size > 1_000) {
      for (const [k, until] of this.slowUntil) if (until <= now) this.slowUntil.delete(k);
    }
  }

  readonly concurrency: NonNullable<QueueOptions["concurrency"]> = (key, load) => {
    const slow =
      load.oldestRunningMs >= this.slowAfterMs ||
      (this.slowUntil.get(key) ?? 0) > performance.now();
    return Math.max(1, slow ? Math.floor(load.slots / 5) : Math.ceil(load.slots / 2));
  };
}

function visible(endpoint: WebhookEndpoint | undefined, scope: EndpointScope) {
  return endpoint !== undefined && (scope.orgId === null || endpoint.org_id === scope.orgId);
}

export async function createEndpoint(
  ctx: AppContext,
  scope: EndpointScope,
  input: { url: string; events?: EventType[]; orgRef?: string | null },
): Promise<Result<WebhookEndpoint, "invalid_request" | "not_found" | "invalid_state">> {
  let orgId: string | null = scope.orgId;
  if (input.orgRef !== undefined && input.orgRef !== null) {
    const org = await resolveOrganization(ctx.db, input.orgRef);
    if (!org || (scope.orgId !== null && org.id !== scope.orgId)) {
      return fail("not_found", "Organisation not found.");
    }
    orgId = org.id;
  }
  const check = await checkWebhookUrl(input.url, {
    allowPrivate: ctx.config.allowPrivateWebhookUrls,
  });
  if (!check.ok) {
    return fail("invalid_request", `The webhook URL ${check.reason}.`, [
      { field: "/url", message: check.reason },
    ]);
  }
  const now = ctx.clock.now();
  const row: WebhookEndpoint = {
    id: ctx.ids.newId("whe"),
    org_id: orgId,
    url: check.url.href,
    events: [...new Set(input.events ?? [])],
    secret: generateWebhookSecret(),
    created_at: now,
    updated_at: now,
    failing_since: null,
    consecutive_failures: 0,
    disabled_at: null,
    disabled_reason: null,
  };
  const created = await ctx.db.transaction().execute(async (trx) => {
    // Creations for one owner take turns, so the count holds.
    await sql`select pg_advisory_xact_lock(hashtext(${`webhook_endpoints:${orgId ?? ""}`}))`.execute(
      trx,
    );
    if ((await repo.countEndpoints(trx, orgId)) >= MAX_ENDPOINTS) return false;
    await repo.insertEndpoint(trx, row);
    return true;
  });
  if (!created) {
    return fail(
      "invalid_state",
      `${orgId === null ? "There are" : "This organisation has"} already ${MAX_ENDPOINTS} webhook endpoints${orgId === null ? " for all organisations" : ""}, the most allowed: delete one first.`,
    );
  }
  return ok(row);
}

export async function getEndpoint(
  ctx: AppContext,
  scope: EndpointScope,
  id: string,
): Promise<Result<WebhookEndpoint, "not_found">> {
  const endpoint = await repo.findEndpoint(ctx.db, id);
  return visible(endpoint, scope) ? ok(endpoint!) : fail("not_found", NOT_FOUND);
}

export async function listEndpoints(
  ctx: AppContext,
  scope: EndpointScope,
  options: { limit: number; before?: string; orgRef?: string },
): Promise<Result<WebhookEndpoint[], "not_found">> {
  let orgId = scope.orgId;
  if (options.orgRef !== undefined) {
    const org = await resolveOrganization(ctx.db, options.orgRef);
    if (!org || (scope.orgId !== null && org.id !== scope.orgId)) {
      return fail("not_found", "Organisation not found.");
    }
    orgId = org.id;
  }
  return ok(
    await repo.listEndpoints(ctx.db, { orgId, limit: options.limit, before: options.before }),
  );
}

export async function deleteEndpoint(
  ctx: AppContext,
  scope: EndpointScope,
  id: string,
): Promise<Result<null, "not_found">> {
  const found = await getEndpoint(ctx, scope, id);
  if (!found.ok) return found;
  // Pending delivery jobs of the endpoint find it gone and finish without sending.
  const deleted = await ctx.db.transaction().execute((trx) => repo.deleteEndpoint(trx, id));
  return deleted ? ok(null) : fail("not_found", NOT_FOUND);
}

/** Re-enables an endpoint disabled after persistent failures (events in between are not resent). */
export async function enableEndpoint(
  ctx: AppContext,
  scope: EndpointScope,
  id: string,
): Promise<Result<WebhookEndpoint, "not_found">> {
  const found = await getEndpoint(ctx, scope, id);
  if (!found.ok) return found;
  await repo.enableEndpoint(ctx.db, id, ctx.clock.now());
  return ok((await repo.findEndpoint(ctx.db, id))!);
}

export async function listDeliveries(
  ctx: AppContext,
  scope: EndpointScope,
  id: string,
  options: { limit: number; before?: string },
): Promise<Result<WebhookDelivery[], "not_found">> {
  const found = await getEndpoint(ctx, scope, id);
  if (!found.ok) return found;
  return ok(await repo.listDeliveries(ctx.db, id, options));
}

// ---- delivery -------------------------------------------------------------------------------

/**
 * Retries for 3 days: 10 s, 20 s, 40 s … doubling up to every 4 h (about 25 attempts), each
 * ±25 %. An endpoint is disabled when a delivery exhausts them without any success of the
 * endpoint since that delivery's first attempt (all attempts over 3 days failed).
 */
export const WEBHOOK_QUEUE_OPTIONS: Required<Pick<QueueOptions, "backoff" | "maxAgeMs">> = {
  backoff: { baseMs: 10_000, maxMs: 4 * 60 * 60_000, jitter: 0.25 },
  maxAgeMs: 3 * 24 * 60 * 60_000,
};

/** The `webhook.deliver` handler: one signed POST, logged; a failure throws so the job retries. */
export function createDeliverHandler(
  options: { timeoutMs?: number; pacing?: EndpointPacing } = {},
) {
  return async function deliverWebhook(job: Job<DeliverPayload>, ctx: AppContext): Promise<void> {
    const endpoint = await repo.findEndpoint(ctx.db, job.payload.endpointId);
    // Deleted or disabled since the event: nothing to deliver.
    if (!endpoint || endpoint.disabled_at) return;
    const event = job.orgId ? await repo.findEvent(ctx.db, job.orgId, job.payload.eventId) : null;
    if (!event) return;

    const body = JSON.stringify(eventBody(event));
    const attemptAt = ctx.clock.now();
    const headers = signedHeaders(endpoint.secret, event.id, attemptAt, body);
    const result = await postWebhook(endpoint.url, headers, body, {
      allowPrivate: ctx.config.allowPrivateWebhookUrls,
      timeoutMs: options.timeoutMs,
    });
    options.pacing?.noteDuration(endpointKey(endpoint.id), result.durationMs);
    const succeeded =
      result.statusCode !== null && result.statusCode >= 200 && result.statusCode < 300;
    const error = succeeded
      ? null
      : (result.error ??
        (result.statusCode !== null ? `HTTP ${result.statusCode}` : "request failed"));
    await ctx.db.transaction().execute((trx) =>
      repo.recordDelivery(trx, {
        org_id: event.org_id,
        id: ctx.ids.newId("dlv"),
        endpoint_id: endpoint.id,
        event_id: event.id,
        event_type: event.type,
        attempt: job.attempts,
        status_code: result.statusCode,
        error,
        duration_ms: result.durationMs,
        succeeded,
        created_at: attemptAt,
      }),
    );
    if (!succeeded) throw new Error(error!);
  };
}

/** `onDead` of `webhook.deliver`: disable an endpoint that has not succeeded for 3 days. */
export async function onDeliveryDead(job: Job, error: string, ctx: AppContext): Promise<void> {
  const { endpointId, eventId } = job.payload as DeliverPayload;
  const first = await repo.firstAttemptAt(ctx.db, endpointId, eventId);
  if (!first) return;
  const now = ctx.clock.now();
  const reason =
    `Every delivery attempt since ${first.toISOString()} failed (last: ${error}); ` +
    `disabled at ${now.toISOString()}. Fix the endpoint, then POST /v1/webhook-endpoints/${endpointId}/enable.`;
  if (await repo.disableEndpoint(ctx.db, endpointId, now, reason, first)) {
    ctx.logger.warn({ endpoint: endpointId, event: eventId, error }, "webhook endpoint disabled");
  }
}
