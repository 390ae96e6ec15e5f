import { fail, ok, type Result } from "../../app/errors.js";
import type { Db } from "../../db/index.js";
import type { Scaled6 } from "../ledger/credits.js";
import * as repo from "./pricing.repo.js";

export type MeterType = "compute" | "storage" | "bandwidth" | "data_ops";
export const METER_TYPES: readonly MeterType[] = ["compute", "storage", "bandwidth", "data_ops"];

/**
 * How a meter's events turn into a billed quantity. `sum`: the event's quantity is billed as
 * is (compute, bandwidth, data_ops). `time_weighted`: the event is a gauge reading and the
 * interval since the previous reading is billed at that previous reading (storage, GB-hours).
 * The aggregation follows from the type; the catalogue stores it to say so explicitly.
 */
export type Aggregation = "sum" | "time_weighted";

export function aggregationOf(type: MeterType): Aggregation {
  return type === "storage" ? "time_weighted" : "sum";
}

/** Credits per 1M tokens for each disjoint token bucket, scaled × 10^6. */
export interface ModelPrice {
  readonly model: string;
  readonly provider: string;
  readonly input: Scaled6;
  readonly cached_input: Scaled6;
  readonly cache_write: Scaled6;
  readonly output: Scaled6;
}

/** Credits per unit, scaled × 10^6. */
export interface MeterPrice {
  readonly meter: string;
  readonly type: MeterType;
  readonly unit: string;
  readonly rate: Scaled6;
  readonly aggregation: Aggregation;
}

/** One immutable version of the catalogue, with O(1) lookups by model and meter name. */
export class PriceVersion {
  private readonly modelsByName: ReadonlyMap<string, ModelPrice>;
  private readonly metersByName: ReadonlyMap<string, MeterPrice>;

  constructor(
    readonly version: number,
    readonly effectiveFrom: Date,
    readonly createdAt: Date,
    readonly createdBy: string,
    models: readonly ModelPrice[],
    meters: readonly MeterPrice[],
  ) {
    const sortedModels = [...models].sort((a, b) => compare(a.model, b.model));
    const sortedMeters = [...meters].sort((a, b) => compare(a.meter, b.meter));
    this.modelsByName = new Map(sortedModels.map((m) => [m.model, Object.freeze({ ...m })]));
    this.metersByName = new Map(sortedMeters.map((m) => [m.meter, Object.freeze({ ...m })]));
    Object.freeze(this);
  }

  model(name: string): ModelPrice | undefined {
    return this.modelsByName.get(name);
  }

  meter(name: string): MeterPrice | undefined {
    return this.metersByName.get(name);
  }

  /** Models sorted by name. */
  get models(): ModelPrice[] {
    return [...this.modelsByName.values()];
  }

  /** Meters sorted by name. */
  get meters(): MeterPrice[] {
    return [...this.metersByName.values()];
  }
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** A price found for an event: the rates and the version they come from. */
export interface PriceQuote<P> {
  readonly version: PriceVersion;
  readonly price: P;
}

/** The period during which one version is the one in effect: [start, next segment's start). */
interface Segment {
  readonly startMs: number;
  readonly version: PriceVersion;
}

/**
 * In-memory copy of every catalogue version, for the usage hot path.
 *
 * Versions are immutable and only ever added, so the cache never invalidates anything: `refresh`
 * costs one indexed `max(version)` query — none while change notifications are heard and none
 * arrived since the last — and loads only the versions it has not seen. Version
 * numbers are assigned under a table lock in commit order (see `putCatalogue`), so "every
 * version ≤ the max I have seen is loaded" is a sound invariant.
 *
 * Selection (API.md): an event is priced with the most recently created version whose
 * `effective_from` ≤ the event's timestamp. That makes the catalogue a step function of time,
 * precomputed as sorted segments, so `versionAt` is a binary search and lookups are Map gets —
 * hundreds of events per millisecond is far below what this costs.
 *
 * Usage: the ingest path calls `await catalogue.refresh(ctx.db)` once per request or flush,
 * before opening its transaction, then prices each event synchronously with `modelPriceAt` /
 * `meterPriceAt` (or `versionAt` and the version's `model` / `meter`).
 */
export class PriceCatalogue {
  private byNumber = new Map<number, PriceVersion>();
  private segments: Segment[] = [];
  private loadedUpTo = 0;
  private running: Promise<boolean> | null = null;
  private queued: Promise<boolean> | null = null;
  /** Change notifications are heard (`setLive`); each one, or a change of that, bumps the generation. */
  private live = false;
  private generation = 0;
  /** The generation as of the start of the last completed load, while live. */
  private loadedAt = -1;

  /**
   * A version may have been created (a `tally_cache` notification: migration 0014 sends one for
   * every new version, delivered on commit to every instance; or this instance created one).
   */
  changed(): void {
    this.generation++;
  }

  /** Whether change notifications are heard; without them every refresh asks the database. */
  setLive(live: boolean): void {
    this.generation++;
    this.live = live;
  }

  /** The highest version number loaded (0 before the first refresh). */
  get latestVersion(): number {
    return this.loadedUpTo;
  }

  /**
   * Loads the versions created since the last refresh (by this or any other instance): when it
   * resolves, every version committed before the call is loaded. Concurrent calls share at most
   * two round trips (the load running and one queued behind it, because the running one may
   * have read `max(version)` before the caller's own write committed). Resolves true when the
   * load it waited for found something new.
   *
   * Call it with the root `db`, outside any transaction: on PGlite a refresh issued while the
   * caller holds a transaction would wait for that transaction, which waits for the refresh.
   */
  refresh(db: Db): Promise<boolean> {
    // Nothing was created since the last load: no query (the usage hot path calls this per
    // request). Another instance's version counts from the moment its notification arrives.
    if (this.live && this.loadedAt === this.generation && !this.queued) {
      return Promise.resolve(false);
    }
    if (!this.running) return this.start(db);
    this.queued ??= this.running.then(
      () => this.start(db),
      () => this.start(db),
    );
    return this.queued;
  }

  private start(db: Db): Promise<boolean> {
    this.queued = null;
    const load = this.load(db).finally(() => {
      if (this.running === load) this.running = null;
    });
    this.running = load;
    return load;
  }

  private async load(db: Db): Promise<boolean> {
    const generation = this.generation;
    const max = await repo.maxVersion(db);
    if (max <= this.loadedUpTo) {
      if (this.live) this.loadedAt = generation;
      return false;
    }
    const loaded = await repo.loadVersions(db, this.loadedUpTo, max);
    for (const v of loaded) this.byNumber.set(v.version, v);
    const ascending = [...this.byNumber.values()].sort((a, b) => a.version - b.version);
    this.segments = buildSegments(ascending);
    this.loadedUpTo = max;
    if (this.live) this.loadedAt = generation;
    return loaded.length > 0;
  }

  /** The version with this number, if loaded. */
  get(version: number): PriceVersion | undefined {
    return this.byNumber.get(version);
  }

  /** The version that prices an event at `timestamp`, or null when none was in effect yet. */
  versionAt(timestamp: Date): PriceVersion | null {
    const t = timestamp.getTime();
    const segs = this.segments;
    let lo = 0;
    let hi = segs.length - 1;
    let found: Segment | null = null;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const seg = segs[mid]!;
      if (seg.startMs <= t) {
        found = seg;
        lo = mid + 1;
      } else {
        hi = mid - 1;
      }
    }
    return found?.version ?? null;
  }

  /** The model's rates in effect at `timestamp`, or `price_not_found`. */
  modelPriceAt(timestamp: Date, model: string): Result<PriceQuote<ModelPrice>, "price_not_found"> {
    const version = this.versionAt(timestamp);
    if (!version) return noCatalogue(timestamp);
    const price = version.model(model);
    if (!price) {
      return fail(
        "price_not_found",
        `No price for model "${model}" in price version ${version.version} (in effect at ${timestamp.toISOString()}).`,
      );
    }
    return ok({ version, price });
  }

  /**
   * The meter's rate in effect at `timestamp`, or `price_not_found` — also when the meter exists
   * but is of another type than the event (a `compute` event cannot name a storage meter).
   */
  meterPriceAt(
    timestamp: Date,
    meter: string,
    type?: MeterType,
  ): Result<PriceQuote<MeterPrice>, "price_not_found"> {
    const version = this.versionAt(timestamp);
    if (!version) return noCatalogue(timestamp);
    const price = version.meter(meter);
    if (!price) {
      return fail(
        "price_not_found",
        `No price for meter "${meter}" in price version ${version.version} (in effect at ${timestamp.toISOString()}).`,
      );
    }
    if (type !== undefined && price.type !== type) {
      return fail(
        "price_not_found",
        `Meter "${meter}" is a ${price.type} meter in price version ${version.version}, not ${type}.`,
      );
    }
    return ok({ version, price });
  }
}

function noCatalogue(timestamp: Date) {
  return fail("price_not_found", `No price catalogue was in effect at ${timestamp.toISOString()}.`);
}

/**
 * Version v is in effect from its `effective_from` until the earliest `effective_from` of any
 * later-created version (exclusive); a version superseded before it starts is never in effect.
 */
function buildSegments(ascending: readonly PriceVersion[]): Segment[] {
  const segments: Segment[] = [];
  let bound = Number.POSITIVE_INFINITY;
  for (let i = ascending.length - 1; i >= 0; i--) {
    const v = ascending[i]!;
    const start = v.effectiveFrom.getTime();
    if (start < bound) {
      segments.push({ startMs: start, version: v });
      bound = start;
    }
  }
  return segments.reverse();
}
