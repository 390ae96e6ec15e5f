import type { Body } from "./load.js";
import { ADMIN_KEY } from "./servers.js";

/** Small client for the Tally API calls the bench makes outside the load generator. */
export class TallyApi {
  constructor(readonly url: string) {}

  async call<T>(method: string, path: string, body?: unknown, key = ADMIN_KEY): Promise<T> {
    const res = await fetch(this.url + path, {
      method,
      headers: {
        authorization: `Bearer ${key}`,
        ...(body === undefined ? {} : { "content-type": "application/json" }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${path} → ${res.status}: ${text.slice(0, 500)}`);
    return JSON.parse(text) as T;
  }

  /** An organisation with plenty of credits (so usage never runs into debt). */
  async createFundedOrg(name: string): Promise<string> {
    const org = await this.call<{ id: string }>("POST", "/v1/organizations", {
      name,
      external_id: name,
    });
    await this.call("POST", `/v1/organizations/${org.id}/adjustments`, {
      amount: "+1000000000000",
      reason: "benchmark credits",
    });
    return org.id;
  }

  async createKey(orgId: string, role: "ingest" | "read"): Promise<string> {
    const k = await this.call<{ key: string }>("POST", `/v1/organizations/${orgId}/api-keys`, {
      name: `bench-${role}`,
      role,
    });
    return k.key;
  }

  verify(orgId: string) {
    return this.call<{ ok: boolean; entries: number; first_bad_sequence: number | null }>(
      "GET",
      `/v1/organizations/${orgId}/ledger/verify`,
    );
  }

  balance(orgId: string) {
    return this.call<{ balance: string; last_sequence: number }>(
      "GET",
      `/v1/organizations/${orgId}/balance`,
    );
  }
}

/** Creates `count` funded organisations with a few requests in flight at once. */
export async function createOrgs(api: TallyApi, prefix: string, count: number): Promise<string[]> {
  const ids: string[] = new Array(count);
  let next = 0;
  const worker = async () => {
    for (;;) {
      const i = next++;
      if (i >= count) return;
      ids[i] = await api.createFundedOrg(`${prefix}-${i}`);
    }
  };
  await Promise.all(Array.from({ length: Math.min(8, count) }, worker));
  return ids;
}

const TOKENS = `"tokens":{"input":1200,"cached_input":300,"cache_write":0,"output":350}`;

/** One AI-token usage event (gpt-4o-mini, exact cost 0.04125 credits), as JSON text. */
export function eventJson(id: string, n: number, orgId?: string): string {
  const org = orgId ? `"org_id":"${orgId}",` : "";
  return `{"id":"${id}",${org}"type":"ai_tokens","model":"gpt-4o-mini","operation":"chat.completion","user_id":"u-${n % 100}",${TOKENS}}`;
}

/** Single-event bodies with ids `<tag>-<n>`; `org(n)` picks the organisation (platform key). */
export function singleEvents(tag: string, org?: (n: number) => string): (n: number) => Body {
  return (n) => ({ body: eventJson(`${tag}-${n}`, n, org?.(n)), events: 1 });
}

/** Batch bodies of `size` events, one organisation per request. */
export function batchEvents(
  tag: string,
  size: number,
  org: (n: number) => string,
): (n: number) => Body {
  return (n) => {
    const orgId = org(n);
    const parts = new Array<string>(size);
    for (let i = 0; i < size; i++) parts[i] = eventJson(`${tag}-${n}-${i}`, i, orgId);
    return { body: `{"events":[${parts.join(",")}]}`, events: size };
  };
}

/** The ingest engine's flush counters from `/metrics`: flushes, events flushed, seconds. */
export async function flushMetrics(url: string) {
  const text = await (await fetch(`${url}/metrics`)).text();
  const num = (re: RegExp) => Number(re.exec(text)?.[1] ?? 0);
  return {
    count: num(/^tally_ingest_flush_events_count (\S+)/m),
    events: num(/^tally_ingest_flush_events_sum (\S+)/m),
    seconds: num(/^tally_ingest_flush_seconds_sum (\S+)/m),
    /** Optimistic flushes by outcome (written, or the reason they were refused). */
    optimistic: Object.fromEntries(
      [...text.matchAll(/^tally_ingest_optimistic_flushes_total\{outcome="([^"]+)"\} (\S+)/gm)].map(
        (m) => [m[1]!, Number(m[2])],
      ),
    ),
  };
}
