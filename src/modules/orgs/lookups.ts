import type { Db } from "../../db/index.js";
import * as repo from "./orgs.repo.js";
import { type Organization, resolveOrganization } from "./orgs.service.js";

/**
 * The two rows almost every request reads — its API key and its organisation — cached per
 * instance, so that the hot path does not pay two queries per request.
 *
 * Never stale beyond a commit: triggers (migration 0011) notify `tally_cache` whenever a key is
 * revoked or changed or an organisation is updated, from the changing transaction, and every
 * instance drops its whole cache on each notification (they are rare). While the listening
 * connection is down the cache is bypassed, and a read that raced an invalidation is not kept
 * (generation check). Entries also expire after `ttlMs` as a backstop. Only active keys and
 * existing organisations are cached, so unknown secrets cannot fill memory.
 */
export class RequestLookups {
  private readonly keys = new Map<string, Entry<repo.ApiKeyRow>>();
  private readonly orgs = new Map<string, Entry<Organization>>();
  private generation = 0;
  private live = false;

  constructor(
    private readonly db: Db,
    private readonly options = { ttlMs: 60_000, maxEntries: 10_000 },
  ) {}

  /** Active (unrevoked) key by the SHA-256 of its secret. */
  apiKey(hash: string): Promise<repo.ApiKeyRow | undefined> {
    return this.cached(this.keys, hash, () => repo.findActiveKeyByHash(this.db, hash));
  }

  /** Organisation by id or `ext:<external_id>`. */
  organization(ref: string): Promise<Organization | undefined> {
    return this.cached(this.orgs, ref, () => resolveOrganization(this.db, ref));
  }

  /** A key's `last_used_at` was written: keep the cached copy in step. */
  touched(hash: string, at: Date): void {
    const entry = this.keys.get(hash);
    if (entry) entry.value = { ...entry.value, last_used_at: at };
  }

  /** Something changed: forget everything, and any read in flight. */
  invalidate(): void {
    this.generation++;
    this.keys.clear();
    this.orgs.clear();
  }

  /** Whether change notifications are being heard; caching only happens while they are. */
  setLive(live: boolean): void {
    this.invalidate();
    this.live = live;
  }

  private async cached<V>(
    map: Map<string, Entry<V>>,
    key: string,
    load: () => Promise<V | undefined>,
  ): Promise<V | undefined> {
    const now = performance.now();
    if (this.live) {
      const hit = map.get(key);
      if (hit && hit.until > now) return hit.value;
    }
    const generation = this.generation;
    const value = await load();
    if (value !== undefined && this.live && generation === this.generation) {
      if (map.size >= this.options.maxEntries) map.clear();
      map.set(key, { value, until: now + this.options.ttlMs });
    }
    return value;
  }
}

interface Entry<V> {
  value: V;
  until: number;
}
