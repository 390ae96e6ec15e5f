import { sql } from "kysely";
import type { Db } from "../../db/index.js";
import type {
  EventsTable,
  WebhookDeliveriesTable,
  WebhookEndpointsTable,
} from "./notify.tables.js";

export type EventRow = EventsTable;
export type DeliveryRow = WebhookDeliveriesTable;
export interface EndpointRow extends Omit<WebhookEndpointsTable, "events"> {
  events: string[];
}

function endpointOf(row: WebhookEndpointsTable): EndpointRow {
  return {
    ...row,
    events: typeof row.events === "string" ? JSON.parse(row.events) : row.events,
  };
}

// ---- events ---------------------------------------------------------------------------------

export async function insertEvent(db: Db, row: EventRow): Promise<void> {
  await db
    .insertInto("events")
    .values({ ...row, data: JSON.stringify(row.data ?? {}) })
    .execute();
}

export async function findEvent(db: Db, orgId: string, id: string): Promise<EventRow | undefined> {
  const row = await db
    .selectFrom("events")
    .selectAll()
    .where("org_id", "=", orgId)
    .where("id", "=", id)
    .executeTakeFirst();
  if (row && typeof row.data === "string") row.data = JSON.parse(row.data);
  return row;
}

export async function listEvents(
  db: Db,
  orgId: string,
  options: { limit: number; before?: string; type?: string },
): Promise<EventRow[]> {
  let q = db
    .selectFrom("events")
    .selectAll()
    .where("org_id", "=", orgId)
    .orderBy("id", "desc")
    .limit(options.limit + 1);
  if (options.before) q = q.where("id", "<", options.before);
  if (options.type) q = q.where("type", "=", options.type);
  return q.execute();
}

// ---- endpoints ------------------------------------------------------------------------------

/** Endpoints of an organisation, or platform-wide ones (`orgId` null), disabled ones included. */
export async function countEndpoints(db: Db, orgId: string | null): Promise<number> {
  const { n } = await db
    .selectFrom("webhook_endpoints")
    .select((eb) => eb.fn.countAll<string>().as("n"))
    .where("org_id", orgId === null ? "is" : "=", orgId)
    .executeTakeFirstOrThrow();
  return Number(n);
}

export async function insertEndpoint(db: Db, row: EndpointRow): Promise<void> {
  await db
    .insertInto("webhook_endpoints")
    .values({ ...row, events: JSON.stringify(row.events) })
    .execute();
}

export async function findEndpoint(db: Db, id: string): Promise<EndpointRow | undefined> {
  const row = await db
    .selectFrom("webhook_endpoints")
    .selectAll()
    .where("id", "=", id)
    .executeTakeFirst();
  return row && endpointOf(row);
}

/** Newest first; `orgId` null lists every endpoint, a string only that organisation's. */
export async function listEndpoints(
  db: Db,
  options: { orgId: string | null; limit: number; before?: string },
): Promise<EndpointRow[]> {
  let q = db
    .selectFrom("webhook_endpoints")
    .selectAll()
    .orderBy("id", "desc")
    .limit(options.limit + 1);
  if (options.orgId !== null) q = q.where("org_id", "=", options.orgId);
  if (options.before) q = q.where("id", "<", options.before);
  return (await q.execute()).map(endpointOf);
}

/** Enabled endpoints that want `type` events of `orgId`: the org's own and the global ones. */
export async function matchingEndpoints(
  db: Db,
  orgId: string,
  type: string,
): Promise<EndpointRow[]> {
  const rows = await db
    .selectFrom("webhook_endpoints")
    .selectAll()
    .where((eb) => eb.or([eb("org_id", "=", orgId), eb("org_id", "is", null)]))
    .where("disabled_at", "is", null)
    .where(sql<boolean>`(events = '[]'::jsonb or events @> ${JSON.stringify([type])}::jsonb)`)
    .orderBy("id")
    .execute();
  return rows.map(endpointOf);
}

/** Deletes an endpoint and its delivery log; false when it did not exist. */
export async function deleteEndpoint(db: Db, id: string): Promise<boolean> {
  const result = await db.deleteFrom("webhook_endpoints").where("id", "=", id).executeTakeFirst();
  if (result.numDeletedRows === 0n) return false;
  await db.deleteFrom("webhook_deliveries").where("endpoint_id", "=", id).execute();
  return true;
}

export async function enableEndpoint(db: Db, id: string, now: Date): Promise<void> {
  await db
    .updateTable("webhook_endpoints")
    .set({
      disabled_at: null,
      disabled_reason: null,
      failing_since: null,
      consecutive_failures: 0,
      updated_at: now,
    })
    .where("id", "=", id)
    .execute();
}

export async function disableEndpoint(
  db: Db,
  id: string,
  now: Date,
  reason: string,
  /** Only while the endpoint has failed without a success since this time. */
  failingSinceAtMost: Date,
): Promise<boolean> {
  const result = await db
    .updateTable("webhook_endpoints")
    .set({ disabled_at: now, disabled_reason: reason, updated_at: now })
    .where("id", "=", id)
    .where("disabled_at", "is", null)
    .where("failing_since", "<=", failingSinceAtMost)
    .executeTakeFirst();
  return result.numUpdatedRows > 0n;
}

// ---- deliveries -----------------------------------------------------------------------------

/** Records one attempt and updates the endpoint's health in the same statement batch. */
export async function recordDelivery(db: Db, row: DeliveryRow): Promise<void> {
  await db.insertInto("webhook_deliveries").values(row).execute();
  await db
    .updateTable("webhook_endpoints")
    .set(
      row.succeeded
        ? { failing_since: null, consecutive_failures: 0 }
        : {
            failing_since: sql`coalesce(failing_since, ${row.created_at})`,
            consecutive_failures: sql`consecutive_failures + 1`,
          },
    )
    .where("id", "=", row.endpoint_id)
    .execute();
}

export async function listDeliveries(
  db: Db,
  endpointId: string,
  options: { limit: number; before?: string },
): Promise<DeliveryRow[]> {
  let q = db
    .selectFrom("webhook_deliveries")
    .selectAll()
    .where("endpoint_id", "=", endpointId)
    .orderBy("id", "desc")
    .limit(options.limit + 1);
  if (options.before) q = q.where("id", "<", options.before);
  return q.execute();
}

/** When the first attempt to deliver `eventId` to the endpoint was made. */
export async function firstAttemptAt(
  db: Db,
  endpointId: string,
  eventId: string,
): Promise<Date | null> {
  const row = await db
    .selectFrom("webhook_deliveries")
    .select((eb) => eb.fn.min("created_at").as("first"))
    .where("endpoint_id", "=", endpointId)
    .where("event_id", "=", eventId)
    .executeTakeFirst();
  return (row?.first as Date | null | undefined) ?? null;
}

// ---- retention ------------------------------------------------------------------------------

/**
 * Deletes up to `limit` rows of an outbox table (events, or the delivery log) created before
 * `before`; returns how many.
 */
export async function purgeOlderThan(
  db: Db,
  table: "events" | "webhook_deliveries",
  before: Date,
  limit: number,
): Promise<number> {
  const r = await db
    .deleteFrom(table)
    .where((eb) =>
      eb(
        eb.refTuple("org_id", "id"),
        "in",
        eb
          .selectFrom(table)
          .select(["org_id", "id"])
          .where("created_at", "<", before)
          .limit(limit)
          .$asTuple("org_id", "id"),
      ),
    )
    .executeTakeFirst();
  return Number(r.numDeletedRows);
}
