import type { AppContext } from "../../app/context.js";
import type { Db } from "../../db/index.js";
import { enqueueJob, type Job } from "./jobs.js";
import * as repo from "./notify.repo.js";

/** Every event type a webhook endpoint can subscribe to. */
export const EVENT_TYPES = [
  "balance.low",
  "balance.depleted",
  "balance.recovered",
  "purchase.completed",
  "purchase.failed",
  "purchase.refunded",
  "auto_topup.succeeded",
  "auto_topup.failed",
  "auto_topup.action_required",
] as const;
export type EventType = (typeof EVENT_TYPES)[number];

export function isEventType(value: string): value is EventType {
  return (EVENT_TYPES as readonly string[]).includes(value);
}

/** JSON-serialisable event data (amounts as decimal strings, never JS numbers). */
export type EventData = Record<string, unknown>;

export interface EmitEventInput {
  type: EventType;
  orgId: string;
  data: EventData;
}

export const FANOUT_QUEUE = "webhook.fanout";
export const DELIVER_QUEUE = "webhook.deliver";

export interface FanoutPayload {
  eventId: string;
}
export interface DeliverPayload {
  eventId: string;
  endpointId: string;
}

/**
 * Records an event and schedules its webhook deliveries, in the caller's transaction (pass it as
 * `db`): the event exists, and will be delivered, exactly when the caller's change commits.
 *
 * Fan-out happens in a job, not here: the caller's transaction writes two rows whatever the
 * number of endpoints, and takes no lock on the endpoint table. The endpoints that receive the
 * event are those enabled and subscribed when the fan-out job runs (normally within a second).
 */
export async function emitEvent(
  db: Db,
  ctx: AppContext,
  input: EmitEventInput,
): Promise<{ id: string }> {
  if (!isEventType(input.type)) throw new Error(`unknown event type ${input.type}`);
  const row: repo.EventRow = {
    org_id: input.orgId,
    id: ctx.ids.newId("evt"),
    type: input.type,
    data: input.data,
    created_at: ctx.clock.now(),
  };
  await repo.insertEvent(db, row);
  await enqueueJob<FanoutPayload>(db, ctx, {
    queue: FANOUT_QUEUE,
    orgId: input.orgId,
    payload: { eventId: row.id },
  });
  return { id: row.id };
}

/** The JSON body POSTed to endpoints. */
export function eventBody(event: repo.EventRow) {
  return {
    id: event.id,
    type: event.type,
    created_at: event.created_at.toISOString(),
    org_id: event.org_id,
    data: event.data,
  };
}

/** The concurrency key of an endpoint's deliveries (`jobs.concurrency_key`). */
export function endpointKey(endpointId: string): string {
  return `webhook:${endpointId}`;
}

/**
 * One delivery job per matching endpoint. Re-running (a crash after the commit below but before
 * the job was marked done) enqueues nothing twice: the dedupe key names event and endpoint.
 */
export async function fanOutEvent(job: Job<FanoutPayload>, ctx: AppContext): Promise<void> {
  if (!job.orgId) return;
  const event = await repo.findEvent(ctx.db, job.orgId, job.payload.eventId);
  if (!event) return;
  const endpoints = await repo.matchingEndpoints(ctx.db, event.org_id, event.type);
  if (endpoints.length === 0) return;
  await ctx.db.transaction().execute(async (trx) => {
    for (const endpoint of endpoints) {
      await enqueueJob<DeliverPayload>(trx, ctx, {
        queue: DELIVER_QUEUE,
        orgId: event.org_id,
        payload: { eventId: event.id, endpointId: endpoint.id },
        dedupeKey: `webhook:${endpoint.id}:${event.id}`,
        concurrencyKey: endpointKey(endpoint.id),
      });
    }
  });
}
