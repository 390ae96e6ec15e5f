import { sql } from "kysely";
import type { Db } from "../../db/index.js";
import type {
  CreditPackagesTable,
  InboundWebhookEventsTable,
  PaymentMethodsTable,
  ProviderName,
  PurchaseStatus,
  PurchasesTable,
  RefundNoticesTable,
  RefundsTable,
} from "./billing.tables.js";

export type PackageRow = CreditPackagesTable;
export type PurchaseRow = PurchasesTable;
export type PaymentMethodRow = PaymentMethodsTable;
export type RefundRow = RefundsTable;
export type InboundEventRow = InboundWebhookEventsTable;

// ---- packages -------------------------------------------------------------------------------

export async function insertPackage(db: Db, row: PackageRow): Promise<void> {
  await db.insertInto("credit_packages").values(row).execute();
}

export function findPackage(db: Db, id: string, lock?: "share") {
  const q = db.selectFrom("credit_packages").selectAll().where("id", "=", id);
  return (lock ? q.forShare() : q).executeTakeFirst();
}

/** Catalogue order: oldest first, paged by id. */
export function listPackages(db: Db, opts: { limit: number; after?: string; active?: boolean }) {
  let q = db
    .selectFrom("credit_packages")
    .selectAll()
    .orderBy("id")
    .limit(opts.limit + 1);
  if (opts.after !== undefined) q = q.where("id", ">", opts.after);
  if (opts.active !== undefined) q = q.where("active", "=", opts.active);
  return q.execute();
}

export function activePackagesIn(db: Db, currencies: readonly string[]) {
  if (currencies.length === 0) return Promise.resolve([] as PackageRow[]);
  return db
    .selectFrom("credit_packages")
    .selectAll()
    .where("active", "=", true)
    .where("currency", "in", currencies)
    .execute();
}

export function updatePackage(
  db: Db,
  id: string,
  patch: Partial<Omit<PackageRow, "id" | "created_at" | "currency">> & { updated_at: Date },
) {
  return db
    .updateTable("credit_packages")
    .set(patch)
    .where("id", "=", id)
    .returningAll()
    .executeTakeFirst();
}

// ---- purchases ------------------------------------------------------------------------------

export async function insertPurchase(db: Db, row: PurchaseRow): Promise<void> {
  await db.insertInto("purchases").values(row).execute();
}

export function findPurchase(db: Db, orgId: string, id: string) {
  return db
    .selectFrom("purchases")
    .selectAll()
    .where("org_id", "=", orgId)
    .where("id", "=", id)
    .executeTakeFirst();
}

/** By id alone: the public sandbox checkout page knows nothing else. */
export function findPurchaseById(db: Db, id: string) {
  return db.selectFrom("purchases").selectAll().where("id", "=", id).executeTakeFirst();
}

/** Keeps a refund notice for a payment no purchase carries yet (the largest total wins). */
export async function keepRefundNotice(db: Db, notice: RefundNoticesTable): Promise<void> {
  await db
    .insertInto("refund_notices")
    .values(notice)
    .onConflict((oc) =>
      oc.columns(["provider", "payment_id"]).doUpdateSet((eb) => ({
        refunded_total_minor: sql<string>`greatest(${eb.ref("refund_notices.refunded_total_minor")}, ${eb.ref("excluded.refunded_total_minor")})`,
        received_at: eb.ref("excluded.received_at"),
      })),
    )
    .execute();
}

/** Refund notices no purchase took within the retention period (payments not Tally's). */
export async function purgeRefundNotices(db: Db, before: Date): Promise<number> {
  const r = await db
    .deleteFrom("refund_notices")
    .where("received_at", "<", before)
    .executeTakeFirst();
  return Number(r.numDeletedRows);
}

/**
 * Serialises, until the transaction ends, everything that links a processor payment to a
 * purchase: the payment being applied, and a refund of it being reflected or kept. Without it,
 * a payment and its refund notified at the same moment each miss the other's uncommitted row
 * and the refund is never applied.
 */
export async function lockPayment(db: Db, provider: ProviderName, paymentId: string) {
  await sql`select pg_advisory_xact_lock(hashtext(${`payment:${provider}:${paymentId}`}))`.execute(
    db,
  );
}

/** Paid purchases whose payment has a kept refund notice (the recovery task applies them). */
export function purchasesWithRefundNotices(db: Db, limit: number) {
  return db
    .selectFrom("refund_notices as n")
    .innerJoin("purchases as p", (join) =>
      join
        .onRef("p.provider", "=", "n.provider")
        .onRef("p.provider_payment_id", "=", "n.payment_id"),
    )
    .selectAll("p")
    .limit(limit)
    .execute();
}

/** Removes and returns the kept refund notice of a payment, if any. */
export function takeRefundNotice(db: Db, provider: ProviderName, paymentId: string) {
  return db
    .deleteFrom("refund_notices")
    .where("provider", "=", provider)
    .where("payment_id", "=", paymentId)
    .returningAll()
    .executeTakeFirst();
}

/** The purchase a processor payment paid (payment ids are unique per provider). */
export function findPurchaseByPaymentId(db: Db, provider: ProviderName, paymentId: string) {
  return db
    .selectFrom("purchases")
    .selectAll()
    .where("provider", "=", provider)
    .where("provider_payment_id", "=", paymentId)
    .executeTakeFirst();
}

export function findPurchaseBySessionId(db: Db, provider: ProviderName, sessionId: string) {
  return db
    .selectFrom("purchases")
    .selectAll()
    .where("provider", "=", provider)
    .where("provider_session_id", "=", sessionId)
    .executeTakeFirst();
}

/** Row-locks a purchase for the rest of the transaction. */
export function lockPurchase(db: Db, orgId: string, id: string) {
  return db
    .selectFrom("purchases")
    .selectAll()
    .where("org_id", "=", orgId)
    .where("id", "=", id)
    .forUpdate()
    .executeTakeFirst();
}

/** Newest first. */
export function listPurchases(
  db: Db,
  orgId: string,
  opts: { limit: number; before?: string; status?: PurchaseStatus },
) {
  let q = db
    .selectFrom("purchases")
    .selectAll()
    .where("org_id", "=", orgId)
    .orderBy("id", "desc")
    .limit(opts.limit + 1);
  if (opts.before !== undefined) q = q.where("id", "<", opts.before);
  if (opts.status !== undefined) q = q.where("status", "=", opts.status);
  return q.execute();
}

export function updatePurchase(
  db: Db,
  orgId: string,
  id: string,
  patch: Partial<Omit<PurchaseRow, "org_id" | "id" | "created_at">> & { updated_at: Date },
  onlyIfStatus?: readonly PurchaseStatus[],
) {
  let q = db.updateTable("purchases").set(patch).where("org_id", "=", orgId).where("id", "=", id);
  if (onlyIfStatus) q = q.where("status", "in", onlyIfStatus);
  return q.returningAll().executeTakeFirst();
}

/** Pending purchases whose checkout window has passed become `expired` (a late payment still counts). */
export async function expirePendingPurchases(db: Db, now: Date, limit: number): Promise<number> {
  const result = await db
    .updateTable("purchases")
    .set({ status: "expired", updated_at: now })
    .where("status", "=", "pending")
    .where((eb) =>
      eb(
        eb.refTuple("org_id", "id"),
        "in",
        eb
          .selectFrom("purchases")
          .select(["org_id", "id"])
          .where("status", "=", "pending")
          .where("expires_at", "<=", now)
          .limit(limit)
          .$asTuple("org_id", "id"),
      ),
    )
    .executeTakeFirst();
  return Number(result.numUpdatedRows);
}

// ---- payment methods ------------------------------------------------------------------------

/** Saves (or re-activates) a card; the most recently saved active card is the one used. */
export async function upsertPaymentMethod(db: Db, row: PaymentMethodRow) {
  return db
    .insertInto("payment_methods")
    .values(row)
    .onConflict((oc) =>
      oc.columns(["org_id", "provider", "provider_payment_method_id"]).doUpdateSet({
        provider_customer_id: row.provider_customer_id,
        brand: row.brand,
        last4: row.last4,
        sandbox_behaviour: row.sandbox_behaviour,
        status: "active",
        updated_at: row.updated_at,
      }),
    )
    .returningAll()
    .executeTakeFirstOrThrow();
}

export function findDefaultPaymentMethod(db: Db, orgId: string, provider: ProviderName) {
  return db
    .selectFrom("payment_methods")
    .selectAll()
    .where("org_id", "=", orgId)
    .where("provider", "=", provider)
    .where("status", "=", "active")
    .orderBy("updated_at", "desc")
    .orderBy("id", "desc")
    .limit(1)
    .executeTakeFirst();
}

/** The processor customer already used for this organisation, if any. */
export async function findCustomerId(
  db: Db,
  orgId: string,
  provider: ProviderName,
): Promise<string | null> {
  const row = await db
    .selectFrom("payment_methods")
    .select("provider_customer_id")
    .where("org_id", "=", orgId)
    .where("provider", "=", provider)
    .where("provider_customer_id", "is not", null)
    .orderBy("updated_at", "desc")
    .limit(1)
    .executeTakeFirst();
  return row?.provider_customer_id ?? null;
}

// ---- refunds --------------------------------------------------------------------------------

export async function insertRefund(db: Db, row: RefundRow): Promise<void> {
  await db.insertInto("refunds").values(row).execute();
}

export function findRefund(db: Db, orgId: string, id: string) {
  return db
    .selectFrom("refunds")
    .selectAll()
    .where("org_id", "=", orgId)
    .where("id", "=", id)
    .executeTakeFirst();
}

export function refundsOfPurchase(db: Db, orgId: string, purchaseId: string) {
  return db
    .selectFrom("refunds")
    .selectAll()
    .where("org_id", "=", orgId)
    .where("purchase_id", "=", purchaseId)
    .orderBy("id")
    .execute();
}

export function updateRefund(
  db: Db,
  orgId: string,
  id: string,
  patch: Partial<Omit<RefundRow, "org_id" | "id" | "created_at">> & { updated_at: Date },
  only?: { status: RefundRow["status"]; unacknowledged?: boolean },
) {
  let q = db.updateTable("refunds").set(patch).where("org_id", "=", orgId).where("id", "=", id);
  if (only) {
    q = q.where("status", "=", only.status);
    if (only.unacknowledged) q = q.where("provider_refund_id", "is", null);
  }
  return q.returningAll().executeTakeFirst();
}

/**
 * Refunds started through the API that the processor has not acknowledged yet (the process died
 * or the processor was unreachable), untouched since `before`: the recovery task finishes them.
 */
export function unacknowledgedRefunds(db: Db, before: Date, limit: number) {
  return db
    .selectFrom("refunds")
    .selectAll()
    .where("status", "=", "pending")
    .where("origin", "=", "api")
    .where("provider_refund_id", "is", null)
    .where("updated_at", "<=", before)
    .orderBy("updated_at")
    .limit(limit)
    .execute();
}

// ---- inbound webhook events -----------------------------------------------------------------

export function findInboundEvent(db: Db, provider: ProviderName, eventId: string) {
  return db
    .selectFrom("inbound_webhook_events")
    .selectAll()
    .where("provider", "=", provider)
    .where("event_id", "=", eventId)
    .executeTakeFirst();
}

/**
 * Claims an inbound event: true for the first delivery. A concurrent duplicate waits on the
 * primary key until the first transaction ends, then finds the row (false) — or claims the event
 * if the first rolled back.
 */
export async function claimInboundEvent(db: Db, row: InboundEventRow): Promise<boolean> {
  const result = await db
    .insertInto("inbound_webhook_events")
    .values(row)
    .onConflict((oc) => oc.columns(["provider", "event_id"]).doNothing())
    .executeTakeFirst();
  return Number(result.numInsertedOrUpdatedRows ?? 0n) === 1;
}

export async function finishInboundEvent(
  db: Db,
  provider: ProviderName,
  eventId: string,
  patch: Pick<InboundEventRow, "status" | "error" | "org_id" | "object_id" | "processed_at">,
): Promise<void> {
  await db
    .updateTable("inbound_webhook_events")
    .set(patch)
    .where("provider", "=", provider)
    .where("event_id", "=", eventId)
    .execute();
}
