import type { Db } from "../../db/index.js";
import type {
  CreditPackagesTable,
  PaymentMethodsTable,
  ProviderName,
  PurchaseStatus,
  PurchasesTable,
} from "./billing.tables.js";

export type PackageRow = CreditPackagesTable;
export type PurchaseRow = PurchasesTable;
export type PaymentMethodRow = PaymentMethodsTable;

// ---- packages -------------------------------------------------------------------------------

export async function insertPackage(db: Db, row: PackageRow): Promise<void> {
  await db.insertInto("credit_packages").values(row).execute();
}

export function findPackage(db: Db, id: string) {
  return db.selectFrom("credit_packages").selectAll().where("id", "=", id).executeTakeFirst();
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
