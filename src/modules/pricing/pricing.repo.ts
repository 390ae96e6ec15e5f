import { sql } from "kysely";
import type { Db } from "../../db/index.js";
import { formatScaled6, parseScaled6 } from "../ledger/credits.js";
import {
  type Aggregation,
  type MeterPrice,
  type MeterType,
  type ModelPrice,
  PriceVersion,
} from "./catalogue.js";

export interface NewVersion {
  effective_from: Date;
  created_at: Date;
  created_by: string;
  models: readonly ModelPrice[];
  meters: readonly MeterPrice[];
}

/**
 * Serialises catalogue writers (SHARE ROW EXCLUSIVE conflicts with itself but not with plain
 * reads), so `max + 1` is unique and versions become visible in number order. Call inside the
 * writing transaction.
 */
export async function lockForNewVersion(trx: Db): Promise<void> {
  await sql`lock table price_versions in share row exclusive mode`.execute(trx);
}

/** The highest version number (0 on an empty table); one index probe. */
export async function maxVersion(db: Db): Promise<number> {
  const row = await db
    .selectFrom("price_versions")
    .select((eb) => eb.fn.max("version").as("max"))
    .executeTakeFirst();
  return row?.max ? Number(row.max) : 0;
}

export async function insertVersion(trx: Db, version: number, v: NewVersion): Promise<void> {
  await trx
    .insertInto("price_versions")
    .values({
      version,
      effective_from: v.effective_from,
      created_at: v.created_at,
      created_by: v.created_by,
    })
    .execute();
  if (v.models.length > 0) {
    await trx
      .insertInto("model_prices")
      .values(
        v.models.map((m) => ({
          version,
          model: m.model,
          provider: m.provider,
          input: formatScaled6(m.input),
          cached_input: formatScaled6(m.cached_input),
          cache_write: formatScaled6(m.cache_write),
          output: formatScaled6(m.output),
        })),
      )
      .execute();
  }
  if (v.meters.length > 0) {
    await trx
      .insertInto("meter_prices")
      .values(
        v.meters.map((m) => ({
          version,
          meter: m.meter,
          type: m.type,
          unit: m.unit,
          rate: formatScaled6(m.rate),
          aggregation: m.aggregation,
        })),
      )
      .execute();
  }
}

/** Every version with after < version ≤ upTo, with its prices. */
export async function loadVersions(db: Db, after: number, upTo: number): Promise<PriceVersion[]> {
  const [versions, models, meters] = await Promise.all([
    db
      .selectFrom("price_versions")
      .selectAll()
      .where("version", ">", String(after))
      .where("version", "<=", String(upTo))
      .orderBy("version")
      .execute(),
    db
      .selectFrom("model_prices")
      .selectAll()
      .where("version", ">", String(after))
      .where("version", "<=", String(upTo))
      .execute(),
    db
      .selectFrom("meter_prices")
      .selectAll()
      .where("version", ">", String(after))
      .where("version", "<=", String(upTo))
      .execute(),
  ]);
  const modelsOf = groupBy(models, (m) => m.version);
  const metersOf = groupBy(meters, (m) => m.version);
  return versions.map(
    (v) =>
      new PriceVersion(
        Number(v.version),
        v.effective_from,
        v.created_at,
        v.created_by,
        (modelsOf.get(v.version) ?? []).map(
          (m): ModelPrice => ({
            model: m.model,
            provider: m.provider,
            input: parseScaled6(m.input),
            cached_input: parseScaled6(m.cached_input),
            cache_write: parseScaled6(m.cache_write),
            output: parseScaled6(m.output),
          }),
        ),
        (metersOf.get(v.version) ?? []).map(
          (m): MeterPrice => ({
            meter: m.meter,
            type: m.type as MeterType,
            unit: m.unit,
            rate: parseScaled6(m.rate),
            aggregation: m.aggregation as Aggregation,
          }),
        ),
      ),
  );
}

export interface VersionSummaryRow {
  version: number;
  effective_from: Date;
  created_at: Date;
  models_count: number;
  meters_count: number;
}

/** Newest first; `before` is the last version number of the previous page. */
export async function listVersions(
  db: Db,
  opts: { limit: number; before?: number },
): Promise<VersionSummaryRow[]> {
  let q = db
    .selectFrom("price_versions as v")
    .select((eb) => [
      "v.version",
      "v.effective_from",
      "v.created_at",
      eb
        .selectFrom("model_prices as mp")
        .select((e) => e.fn.countAll().as("n"))
        .whereRef("mp.version", "=", "v.version")
        .as("models_count"),
      eb
        .selectFrom("meter_prices as me")
        .select((e) => e.fn.countAll().as("n"))
        .whereRef("me.version", "=", "v.version")
        .as("meters_count"),
    ])
    .orderBy("v.version", "desc")
    .limit(opts.limit + 1);
  if (opts.before !== undefined) q = q.where("v.version", "<", String(opts.before));
  const rows = await q.execute();
  return rows.map((r) => ({
    version: Number(r.version),
    effective_from: r.effective_from,
    created_at: r.created_at,
    models_count: Number(r.models_count ?? 0),
    meters_count: Number(r.meters_count ?? 0),
  }));
}

function groupBy<T, K>(items: readonly T[], key: (item: T) => K): Map<K, T[]> {
  const out = new Map<K, T[]>();
  for (const item of items) {
    const k = key(item);
    const list = out.get(k);
    if (list) list.push(item);
    else out.set(k, [item]);
  }
  return out;
}
