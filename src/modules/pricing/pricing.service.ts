/**
 * Pricing use-cases: the versioned price catalogue and what the usage module needs to rate events.
 *
 * For the usage module (the hot path):
 * ```ts
 * const catalogue = sharedCatalogue(ctx);            // one per database, process-wide
 * await catalogue.refresh(ctx.db);                   // once per request / flush: one cheap query
 * const q = catalogue.modelPriceAt(event.timestamp, event.model);   // Result<PriceQuote, "price_not_found">
 * if (q.ok) cost = tokensCost(q.value.price, tokens); // exact Credits; q.value.version.version → price_version
 * ```
 * See `catalogue.ts` (PriceCatalogue, PriceVersion), `rating.ts` (tokensCost, meterCost,
 * storageIntervalCost) and `providers.ts` (normaliseProviderUsage).
 */
import type { AppContext } from "../../app/context.js";
import { type ErrorDetail, fail, ok, type Result } from "../../app/errors.js";
import type { Db } from "../../db/index.js";
import type { Scaled6 } from "../ledger/credits.js";
import type { Actor } from "../orgs/auth.js";
import {
  type Aggregation,
  aggregationOf,
  type MeterPrice,
  type MeterType,
  type ModelPrice,
  PriceCatalogue,
  type PriceVersion,
} from "./catalogue.js";
import * as repo from "./pricing.repo.js";

export {
  type Aggregation,
  aggregationOf,
  METER_TYPES,
  type MeterPrice,
  type MeterType,
  type ModelPrice,
  PriceCatalogue,
  type PriceQuote,
  PriceVersion,
} from "./catalogue.js";
export { MAX_TOKEN_COUNT, normaliseProviderUsage, type Provider } from "./providers.js";
export {
  meterCost,
  type Scaled12,
  type StorageCharge,
  storageIntervalCost,
  type TokenCounts,
  tokensCost,
} from "./rating.js";

const catalogues = new WeakMap<Db, PriceCatalogue>();

/**
 * The process-wide catalogue cache for this database. Every caller shares it, so one refresh
 * serves all; it is only as fresh as its last `refresh(db)`.
 */
export function sharedCatalogue(ctx: Pick<AppContext, "db">): PriceCatalogue {
  let catalogue = catalogues.get(ctx.db);
  if (!catalogue) {
    catalogue = new PriceCatalogue();
    catalogues.set(ctx.db, catalogue);
  }
  return catalogue;
}

export interface CatalogueInput {
  /** Default: now. */
  effectiveFrom?: Date;
  models: ReadonlyArray<{
    model: string;
    provider: string;
    input: Scaled6;
    /** Default: the input rate (no discount for cached input). */
    cached_input?: Scaled6;
    /** Default: the input rate (cache writes cost like input). */
    cache_write?: Scaled6;
    output: Scaled6;
  }>;
  meters: ReadonlyArray<{
    meter: string;
    type: MeterType;
    unit: string;
    rate: Scaled6;
    /** Follows from the type (storage → time_weighted, else sum); any other value is refused. */
    aggregation?: Aggregation;
  }>;
}

/**
 * Writes a new catalogue version (the whole catalogue, replacing the previous one from
 * `effectiveFrom` on). Duplicate names, negative rates or an aggregation that does not match the
 * meter's type → `invalid_request` listing every problem (fields as JSON pointers into the body).
 */
export async function putCatalogue(
  ctx: AppContext,
  input: CatalogueInput,
  actor: Actor,
): Promise<Result<PriceVersion, "invalid_request">> {
  const problems: ErrorDetail[] = [];
  const models: ModelPrice[] = [];
  const seenModels = new Map<string, number>();
  input.models.forEach((m, i) => {
    const first = seenModels.get(m.model);
    if (first !== undefined) {
      problems.push({
        field: `/models/${i}/model`,
        message: `duplicate model "${m.model}" (also at models/${first})`,
      });
    } else seenModels.set(m.model, i);
    const price: ModelPrice = {
      model: m.model,
      provider: m.provider,
      input: m.input,
      cached_input: m.cached_input ?? m.input,
      cache_write: m.cache_write ?? m.input,
      output: m.output,
    };
    for (const bucket of ["input", "cached_input", "cache_write", "output"] as const) {
      if (price[bucket] < 0n) {
        problems.push({ field: `/models/${i}/${bucket}`, message: "must not be negative" });
      }
    }
    models.push(price);
  });

  const meters: MeterPrice[] = [];
  const seenMeters = new Map<string, number>();
  input.meters.forEach((m, i) => {
    const first = seenMeters.get(m.meter);
    if (first !== undefined) {
      problems.push({
        field: `/meters/${i}/meter`,
        message: `duplicate meter "${m.meter}" (also at meters/${first})`,
      });
    } else seenMeters.set(m.meter, i);
    const aggregation = aggregationOf(m.type);
    if (m.aggregation !== undefined && m.aggregation !== aggregation) {
      problems.push({
        field: `/meters/${i}/aggregation`,
        message:
          m.type === "storage"
            ? "storage meters are time_weighted (billed per GB-hour between readings)"
            : `only storage meters are time_weighted; a ${m.type} meter is "sum"`,
      });
    }
    if (m.rate < 0n) problems.push({ field: `/meters/${i}/rate`, message: "must not be negative" });
    meters.push({ meter: m.meter, type: m.type, unit: m.unit, rate: m.rate, aggregation });
  });

  if (problems.length > 0) {
    return fail("invalid_request", "The price catalogue is invalid.", problems);
  }

  const now = ctx.clock.now();
  const newVersion: repo.NewVersion = {
    effective_from: input.effectiveFrom ?? now,
    created_at: now,
    created_by: `${actor.type}:${actor.id}`,
    models,
    meters,
  };
  const number = await ctx.db.transaction().execute(async (trx) => {
    await repo.lockForNewVersion(trx);
    const next = (await repo.maxVersion(trx)) + 1;
    await repo.insertVersion(trx, next, newVersion);
    return next;
  });
  ctx.logger.info(
    { version: number, effective_from: newVersion.effective_from, actor: newVersion.created_by },
    "price catalogue version created",
  );
  sharedCatalogue(ctx).changed(); // this instance's next refresh must not wait for the notification
  return ok(await versionOrThrow(ctx, number));
}

/** The version in effect now (`ctx.clock`), or at `at`. */
export async function getCatalogueAt(
  ctx: AppContext,
  at: Date = ctx.clock.now(),
): Promise<Result<PriceVersion, "not_found">> {
  const catalogue = sharedCatalogue(ctx);
  await catalogue.refresh(ctx.db);
  const version = catalogue.versionAt(at);
  if (!version)
    return fail("not_found", `No price catalogue was in effect at ${at.toISOString()}.`);
  return ok(version);
}

/** The version in effect now. */
export function getCurrentCatalogue(ctx: AppContext): Promise<Result<PriceVersion, "not_found">> {
  return getCatalogueAt(ctx, ctx.clock.now());
}

export async function getVersion(
  ctx: AppContext,
  version: number,
): Promise<Result<PriceVersion, "not_found">> {
  const catalogue = sharedCatalogue(ctx);
  await catalogue.refresh(ctx.db);
  const found = catalogue.get(version);
  return found ? ok(found) : fail("not_found", `Price version ${version} does not exist.`);
}

export type VersionSummary = repo.VersionSummaryRow;

/** Versions newest first; `before` = the last version number of the previous page. */
export function listVersions(
  ctx: AppContext,
  paging: { limit: number; before?: number },
): Promise<VersionSummary[]> {
  return repo.listVersions(ctx.db, paging);
}

async function versionOrThrow(ctx: AppContext, number: number): Promise<PriceVersion> {
  const catalogue = sharedCatalogue(ctx);
  await catalogue.refresh(ctx.db);
  const version = catalogue.get(number);
  if (!version) throw new Error(`price version ${number} was written but cannot be read`);
  return version;
}
