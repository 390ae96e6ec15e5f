import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import { createTestApp } from "../../../test/support/app.js";
import { stableJson } from "../../app/stable-json.js";
import { parseCredits } from "../ledger/credits.js";
import { verifyLedger } from "../ledger/ledger.service.js";

/**
 * POST /v1/usage-events and GET …/usage-events. Expected costs are worked out by hand from the
 * documented default catalogue (DEFAULT_CATALOGUE.md; rates per 1M tokens / per unit), not with
 * the rating code under test.
 */

const TXN_ID = /^txn_[0-9A-HJKMNP-TV-Z]{26}$/;
const HOUR = 3_600_000;
const DAY = 24 * HOUR;
/** The TestClock's fixed "now". */
const NOW = Date.parse("2026-11-24T10:00:00.000Z");
const at = (ms: number) => new Date(ms).toISOString();
/** Yesterday, at hh:mm UTC. */
const yesterday = (hh: number, mm = 0) => at(NOW - DAY - 10 * HOUR + hh * HOUR + mm * 60_000);

/** Compares decimal amounts by value. */
const C = (value: string) => parseCredits(value);

describe("usage events routes", async () => {
  const app = await createTestApp();
  const ctx = app.runtime.ctx;
  type Res = Awaited<ReturnType<typeof app.call>>;
  /** A JSON object of a response, as loosely typed as `json()` returns it. */
  // biome-ignore lint/suspicious/noExplicitAny: response bodies are checked by the assertions.
  type Json = Record<string, any>;

  const ingest = (body: unknown, key?: string, headers?: Record<string, string>) =>
    app.call("POST", "/v1/usage-events", { body, key, headers });

  async function ok(res: Promise<Res> | Res, status = 200) {
    const r = await res;
    expect(r.statusCode, r.body).toBe(status);
    return r.json();
  }

  function expectError(res: Res, status: number, code: string) {
    expect(res.statusCode, res.body).toBe(status);
    const error = res.json().error;
    expect(error).toMatchObject({ code, message: expect.any(String) });
    return error.details as { field?: string; message: string; code?: string }[];
  }

  const url = (orgId: string, path: string) => `/v1/organizations/${orgId}/${path}`;
  const balance = (orgId: string) => ok(app.call("GET", url(orgId, "balance")));
  const grant = (orgId: string, amount: string) =>
    ok(app.call("POST", url(orgId, "adjustments"), { body: { amount, reason: "grant" } }), 201);
  const stored = async (orgId: string, query = "") =>
    (await ok(app.call("GET", url(orgId, `usage-events?limit=1000${query}`)))).data as Json[];
  const transactions = async (orgId: string) =>
    (await ok(app.call("GET", url(orgId, "transactions?limit=1000")))).data as Json[];

  /** An org with `credits` granted and an ingest key. */
  async function setup(credits = "1000", body: Record<string, unknown> = {}) {
    const orgId = await app.createOrg(body);
    if (credits !== "0") await grant(orgId, `+${credits}`);
    return { orgId, key: await app.orgKey(orgId, "ingest") };
  }

  /** What a refused request must leave untouched. */
  async function snapshot(orgId: string) {
    const b = await balance(orgId);
    return {
      balance: b.balance,
      last_sequence: b.last_sequence,
      events: (await stored(orgId)).length,
    };
  }

  let n = 0;
  const evtId = (prefix = "evt") => `${prefix}-${++n}`;

  const tokensEvent = (extra: Record<string, unknown> = {}) => ({
    id: evtId(),
    type: "ai_tokens",
    timestamp: yesterday(12),
    model: "gpt-4o",
    tokens: { input: 1000 },
    ...extra,
  });

  describe("pricing of every event type", () => {
    it("ai_tokens with every token bucket, including cached_input and cache_write", async () => {
      const { orgId, key } = await setup("100");
      const body = {
        events: [
          // gpt-4o: 1200×250 + 300×125 + 100×250 + 350×1000 = 712 500 per 1M → 0.7125
          tokensEvent({
            user_id: "u-17",
            operation: "chat.completion",
            tokens: { input: 1200, cached_input: 300, cache_write: 100, output: 350 },
            metadata: { request_id: "r-1" },
          }),
          // claude-sonnet-4: 2000×300 + 10000×30 + 4000×375 + 800×1500 = 3 600 000 → 3.6
          tokensEvent({
            model: "claude-sonnet-4",
            tokens: { input: 2000, cached_input: 10000, cache_write: 4000, output: 800 },
          }),
          // gpt-4o-mini, fractional rates: 1×15 + 1×7.5 + 1×15 + 1×60 = 97.5 → 0.0000975
          tokensEvent({
            model: "gpt-4o-mini",
            tokens: { input: 1, cached_input: 1, cache_write: 1, output: 1 },
          }),
          // Missing buckets are 0: 7 output tokens of gpt-4o = 7000 → 0.007
          tokensEvent({ tokens: { output: 7 } }),
          // No tokens at all costs nothing but is recorded.
          tokensEvent({ tokens: {} }),
        ],
      };
      const res = await ok(ingest(body, key));
      const costs = ["0.7125", "3.6", "0.0000975", "0.007", "0"];
      expect(res.data).toHaveLength(5);
      let running = C("100");
      res.data.forEach((r: Record<string, string>, i: number) => {
        running -= C(costs[i]!);
        expect(r).toEqual({
          id: body.events[i]!.id,
          status: "accepted",
          cost: expect.any(String),
          transaction_id: expect.stringMatching(TXN_ID),
          balance_after: expect.any(String),
        });
        expect(C(r.cost!)).toBe(C(costs[i]!));
        expect(C(r.balance_after!)).toBe(running);
      });
      expect(C((await balance(orgId)).balance)).toBe(C("95.6804025"));
      expect(running).toBe(C("95.6804025"));

      const [first] = await stored(orgId, "&user_id=u-17");
      expect(first).toMatchObject({
        id: body.events[0]!.id,
        org_id: orgId,
        type: "ai_tokens",
        timestamp: yesterday(12),
        user_id: "u-17",
        operation: "chat.completion",
        model: "gpt-4o",
        meter: null,
        resource: null,
        quantities: {
          input_tokens: 1200,
          cached_input_tokens: 300,
          cache_write_tokens: 100,
          output_tokens: 350,
        },
        price_version: 1,
        transaction_id: res.data[0].transaction_id,
        metadata: { request_id: "r-1" },
        received_at: at(NOW),
      });
      expect(C(first!.cost)).toBe(C("0.7125"));

      // One usage ledger entry per event, referencing it, with the acting user.
      const entries = await transactions(orgId);
      const entry = entries.find((e) => e.id === res.data[0].transaction_id)!;
      expect(entry).toMatchObject({
        type: "usage",
        user_id: "u-17",
        reference: { type: "usage_event", id: body.events[0]!.id },
        actor: { type: "api_key" },
      });
      expect(C(entry.amount)).toBe(-C("0.7125"));
      expect(entries.filter((e) => e.type === "usage")).toHaveLength(5);
      expect(await verifyLedger(ctx.db, orgId)).toMatchObject({ ok: true, entries: 6 });
    });

    it("provider_usage: OpenAI Chat Completions, OpenAI Responses and Anthropic are normalised", async () => {
      const { orgId, key } = await setup("100");
      const chat = tokensEvent({
        tokens: undefined,
        provider_usage: {
          provider: "openai",
          usage: {
            prompt_tokens: 1500,
            completion_tokens: 400,
            total_tokens: 1900,
            prompt_tokens_details: { cached_tokens: 1000, audio_tokens: 0 },
            completion_tokens_details: { reasoning_tokens: 100, accepted_prediction_tokens: 0 },
          },
        },
      });
      const responses = tokensEvent({
        model: "o3",
        tokens: undefined,
        provider_usage: {
          provider: "openai",
          usage: {
            input_tokens: 3000,
            input_tokens_details: { cached_tokens: 2000 },
            output_tokens: 1000,
            output_tokens_details: { reasoning_tokens: 600 },
            total_tokens: 4000,
          },
        },
      });
      const anthropic = tokensEvent({
        model: "claude-sonnet-4",
        tokens: undefined,
        provider_usage: {
          provider: "anthropic",
          usage: {
            input_tokens: 100,
            cache_creation_input_tokens: 2000,
            cache_read_input_tokens: 5000,
            output_tokens: 300,
            service_tier: "standard",
          },
        },
      });
      const res = await ok(ingest({ events: [chat, responses, anthropic] }, key));
      // Chat: cached tokens are inside prompt_tokens; reasoning inside completion_tokens.
      //   input (1500−1000)×250 + cached 1000×125 + output 400×1000 = 650 000 → 0.65
      // Responses (o3: 200 / 50 / 200 / 800):
      //   input (3000−2000)×200 + cached 2000×50 + output 1000×800 = 1 100 000 → 1.1
      // Anthropic: cache counts come in addition to input_tokens.
      //   100×300 + read 5000×30 + creation 2000×375 + 300×1500 = 1 380 000 → 1.38
      expect(res.data.map((r: { cost: string }) => C(r.cost))).toEqual([
        C("0.65"),
        C("1.1"),
        C("1.38"),
      ]);
      expect(C((await balance(orgId)).balance)).toBe(C("96.87"));

      const byId = new Map((await stored(orgId)).map((e) => [e.id, e]));
      expect(byId.get(chat.id)!.quantities).toEqual({
        input_tokens: 500,
        cached_input_tokens: 1000,
        cache_write_tokens: 0,
        output_tokens: 400,
      });
      expect(byId.get(chat.id)!.provider_usage).toEqual(
        (chat as Record<string, unknown>).provider_usage,
      );
      expect(byId.get(responses.id)!.quantities).toEqual({
        input_tokens: 1000,
        cached_input_tokens: 2000,
        cache_write_tokens: 0,
        output_tokens: 1000,
      });
      expect(byId.get(anthropic.id)!.quantities).toEqual({
        input_tokens: 100,
        cached_input_tokens: 5000,
        cache_write_tokens: 2000,
        output_tokens: 300,
      });
    });

    it("an invalid provider usage object is 400 with the field at fault", async () => {
      const { orgId, key } = await setup();
      const before = await snapshot(orgId);
      const res = await ingest(
        {
          events: [
            tokensEvent(),
            tokensEvent({
              tokens: undefined,
              provider_usage: {
                provider: "openai",
                usage: {
                  prompt_tokens: 10,
                  completion_tokens: 5,
                  prompt_tokens_details: { cached_tokens: 11 },
                },
              },
            }),
          ],
        },
        key,
      );
      const details = expectError(res, 400, "invalid_request");
      expect(
        details.some((d) =>
          /events\/1\/provider_usage\/usage\/.*cached_tokens/.test(d.field ?? ""),
        ),
      ).toBe(true);
      expect(await snapshot(orgId)).toEqual(before);
    });

    it("compute, bandwidth and data_ops: quantity × rate, exact with 6-decimal quantities", async () => {
      const { orgId, key } = await setup("100");
      const meter = (type: string, m: string, quantity: string, extra = {}) => ({
        id: evtId(),
        type,
        timestamp: yesterday(12),
        meter: m,
        quantity,
        ...extra,
      });
      const res = await ok(
        ingest(
          {
            events: [
              // 1234.567891 vCPU-s × 0.002 = 2.469135782
              meter("compute", "compute.vcpu_seconds", "1234.567891", { resource: "vm-1" }),
              // 2.000001 GB × 0.9 = 1.8000009
              meter("bandwidth", "bandwidth.egress_gb", "2.000001"),
              // 123456.789012 reads × 0.000004 = 0.493827156048
              meter("data_ops", "data_ops.reads", "123456.789012"),
              // The smallest quantity: 0.000001 × 0.000004 = 0.000000000004
              meter("data_ops", "data_ops.reads", "0.000001"),
              meter("compute", "compute.vcpu_seconds", "0"),
            ],
          },
          key,
        ),
      );
      const costs = ["2.469135782", "1.8000009", "0.493827156048", "0.000000000004", "0"];
      expect(res.data.map((r: { cost: string }) => C(r.cost))).toEqual(costs.map(C));
      expect(res.data.map((r: { cost: string }) => r.cost)).toEqual(costs);
      expect(C((await balance(orgId)).balance)).toBe(C("95.237036161948"));
      const compute = await stored(orgId, "&type=compute");
      expect(compute).toHaveLength(2);
      const vm1 = compute.find((e) => e.resource === "vm-1")!;
      expect(vm1).toMatchObject({
        meter: "compute.vcpu_seconds",
        model: null,
        quantities: { quantity: "1234.567891" },
      });
      expect(await verifyLedger(ctx.db, orgId)).toMatchObject({ ok: true });
    });

    it("storage gauges bill the previous reading × hours × rate; the first bills nothing", async () => {
      const { orgId, key } = await setup("100");
      const reading = (resource: string, timestamp: string, quantity: string) => ({
        id: evtId("gauge"),
        type: "storage",
        meter: "storage.gb",
        resource,
        timestamp,
        quantity,
      });
      const send = async (...events: ReturnType<typeof reading>[]) =>
        (await ok(ingest({ events }, key))).data.map((r: { cost: string }) => r.cost);

      // First reading: nothing to bill yet.
      expect(await send(reading("bucket-a", yesterday(0), "100"))).toEqual(["0"]);
      // 100 GB held 2 h at 0.0001 per GB-hour = 0.02.
      expect(await send(reading("bucket-a", yesterday(2), "50"))).toEqual(["0.02"]);
      // An older reading (out of order) bills nothing and leaves the gauge as it is…
      expect(await send(reading("bucket-a", yesterday(1), "999999"))).toEqual(["0"]);
      // …so the next interval is still billed at 50 GB from 02:00: 50 × 1.5 h × 0.0001 = 0.0075.
      expect(await send(reading("bucket-a", yesterday(3, 30), "1"))).toEqual(["0.0075"]);
      // 1 GB for 20 min = 1/3 GB-hour × 0.0001 = 0.0000333… → rounded once to 12 decimals.
      expect(await send(reading("bucket-a", yesterday(3, 50), "1"))).toEqual(["0.000033333333"]);

      // Gauges are per resource.
      expect(await send(reading("bucket-b", yesterday(1), "10"))).toEqual(["0"]);
      // Any text names a resource, quotes, commas, braces and backslashes included.
      const odd = 'vol "a",{b}\\c';
      expect(await send(reading(odd, yesterday(1), "10"))).toEqual(["0"]);
      expect(await send(reading(odd, yesterday(2), "10"))).toEqual(["0.001"]);

      // Readings in one batch out of order are billed in timestamp order:
      //   01:00 first reading (0); 02:00 bills 10 GB × 1 h; 04:00 bills 30 GB × 2 h.
      expect(
        await send(
          reading("bucket-c", yesterday(4), "20"),
          reading("bucket-c", yesterday(1), "10"),
          reading("bucket-c", yesterday(2), "30"),
        ),
      ).toEqual(["0.006", "0", "0.001"]);

      const gauges = await ctx.db
        .selectFrom("storage_gauges")
        .select(["resource", "last_timestamp", "last_quantity"])
        .where("org_id", "=", orgId)
        .execute();
      const byName = (x: unknown[], y: unknown[]) => (String(x[0]) < String(y[0]) ? -1 : 1);
      expect(
        gauges
          .map((g) => [g.resource, g.last_timestamp.toISOString(), C(g.last_quantity)])
          .sort(byName),
      ).toEqual(
        [
          ["bucket-a", yesterday(3, 50), C("1")],
          ["bucket-b", yesterday(1), C("10")],
          ["bucket-c", yesterday(4), C("20")],
          ['vol "a",{b}\\c', yesterday(2), C("10")],
        ].sort(byName),
      );

      // GB-hours billed are stored with the event.
      const c = (await stored(orgId, "&type=storage")).find(
        (e) => e.resource === "bucket-c" && e.timestamp === yesterday(4),
      )!;
      expect(c.quantities).toEqual({ quantity: "20", billed_quantity: "60" });
      const total =
        C("0.02") + C("0.0075") + C("0.000033333333") + C("0.006") + C("0.001") + C("0.001");
      expect(C((await balance(orgId)).balance)).toBe(C("100") - total);
    });

    it("gauges of two organisations with the same resource name are separate, also in one batch", async () => {
      const a = await setup("10");
      const b = await setup("10");
      const reading = (orgId: string, hh: number, quantity: string) => ({
        id: evtId("shared-gauge"),
        org_id: orgId,
        type: "storage",
        meter: "storage.gb",
        resource: "db-main",
        timestamp: yesterday(hh),
        quantity,
      });
      await ok(ingest({ events: [reading(a.orgId, 0, "100"), reading(b.orgId, 0, "1")] }));
      const res = await ok(
        ingest({ events: [reading(b.orgId, 1, "5"), reading(a.orgId, 1, "7")] }),
      );
      // b: 1 GB × 1 h × 0.0001; a: 100 GB × 1 h × 0.0001
      expect(res.data.map((r: { cost: string }) => r.cost)).toEqual(["0.0001", "0.01"]);
      expect((await balance(a.orgId)).balance).toBe("9.99");
      expect((await balance(b.orgId)).balance).toBe("9.9999");
    });

    it("a storage reading with a defaulted timestamp starts its gauge at now", async () => {
      const { orgId, key } = await setup("1");
      const res = await ok(
        ingest(
          {
            id: evtId(),
            type: "storage",
            meter: "storage.gb",
            resource: "solo",
            quantity: "123.456789",
          },
          key,
        ),
      );
      expect(res.data[0]).toMatchObject({ status: "accepted", cost: "0", balance_after: "1" });
      const [e] = await stored(orgId);
      expect(e!.timestamp).toBe(at(NOW));
      expect(e!.quantities).toEqual({ quantity: "123.456789", billed_quantity: "0" });
    });
  });

  describe("request shapes and organisations", () => {
    it("a single event object gets a one-element result", async () => {
      const { orgId, key } = await setup("10");
      const event = tokensEvent({ tokens: { output: 1000 } });
      const res = await ok(ingest(event, key));
      expect(res).toEqual({
        data: [
          {
            id: event.id,
            status: "accepted",
            cost: "1",
            transaction_id: expect.stringMatching(TXN_ID),
            balance_after: "9",
          },
        ],
      });
      expect((await stored(orgId)).map((e) => e.id)).toEqual([event.id]);
    });

    it("org_id may be omitted with an org key; ext: references resolve", async () => {
      const { orgId, key } = await setup("10", { external_id: "acme-usage" });
      const a = tokensEvent();
      const b = tokensEvent({ org_id: "ext:acme-usage" });
      const c = tokensEvent({ org_id: orgId });
      await ok(ingest({ events: [a, b] }, key));
      // A platform key names the organisation either way.
      await ok(ingest({ events: [c, tokensEvent({ org_id: "ext:acme-usage" })] }));
      expect(await stored(orgId)).toHaveLength(4);
      // gpt-4o 1000 input tokens = 0.25 each.
      expect(C((await balance(orgId)).balance)).toBe(C("9"));
    });

    it("a platform key without org_id → 400; an org key naming another org → 404", async () => {
      const { orgId, key } = await setup();
      const other = await setup();
      const before = await snapshot(orgId);
      const otherBefore = await snapshot(other.orgId);

      const platform = await ingest({ events: [tokensEvent({ org_id: orgId }), tokensEvent()] });
      const details = expectError(platform, 400, "invalid_request");
      expect(details).toEqual([
        expect.objectContaining({ field: expect.stringMatching(/events\/1\/org_id$/) }),
      ]);

      const foreign = await ingest(
        { events: [tokensEvent(), tokensEvent({ org_id: other.orgId })] },
        key,
      );
      expectError(foreign, 404, "not_found");
      const unknown = await ingest(tokensEvent({ org_id: "org_00000000000000000000000000" }));
      expectError(unknown, 404, "not_found");
      const unknownExt = await ingest(tokensEvent({ org_id: "ext:nobody" }));
      expectError(unknownExt, 404, "not_found");

      expect(await snapshot(orgId)).toEqual(before);
      expect(await snapshot(other.orgId)).toEqual(otherBefore);
    });

    it("one batch may carry several organisations (platform key)", async () => {
      const a = await setup("10");
      const b = await setup("10");
      const res = await ok(
        ingest({
          events: [
            tokensEvent({ org_id: a.orgId }),
            tokensEvent({ org_id: b.orgId, tokens: { output: 1000 } }),
            tokensEvent({ org_id: a.orgId }),
          ],
        }),
      );
      expect(res.data.map((r: { balance_after: string }) => r.balance_after)).toEqual([
        "9.75",
        "9",
        "9.5",
      ]);
      expect((await balance(a.orgId)).balance).toBe("9.5");
      expect((await balance(b.orgId)).balance).toBe("9");
    });

    it("read and billing keys may not ingest (403); no key → 401", async () => {
      const { orgId } = await setup();
      const read = await app.orgKey(orgId, "read");
      expectError(await ingest(tokensEvent(), read), 403, "forbidden");
      expectError(
        await app.call("POST", "/v1/usage-events", { key: null, body: tokensEvent() }),
        401,
        "unauthenticated",
      );
      expect((await snapshot(orgId)).events).toBe(0);
    });

    it("an organisation whose plan excludes credits billing → 403 plan_not_eligible", async () => {
      const orgId = await app.createOrg({ plan: "starter" });
      const key = await app.orgKey(orgId, "ingest");
      expectError(await ingest(tokensEvent(), key), 403, "plan_not_eligible");
      expectError(await ingest(tokensEvent({ org_id: orgId })), 403, "plan_not_eligible");
      const rows = await ctx.db
        .selectFrom("usage_events")
        .select("id")
        .where("org_id", "=", orgId)
        .execute();
      expect(rows).toEqual([]);
      expectError(await app.call("GET", url(orgId, "usage-events")), 403, "plan_not_eligible");
    });
  });

  describe("duplicates and conflicts", () => {
    it("the same id and payload again → duplicate with the original cost, transaction and balance_after", async () => {
      const { orgId, key } = await setup("10");
      const event = tokensEvent({ tokens: { input: 1000, output: 500 } }); // 0.25 + 0.5
      const first = (await ok(ingest(event, key))).data[0];
      expect(first).toMatchObject({ status: "accepted", cost: "0.75", balance_after: "9.25" });
      await ok(ingest(tokensEvent(), key)); // moves the balance on: 9
      // Key order and an explicit org_id do not make it another submission.
      const again = {
        org_id: orgId,
        tokens: { output: 500, input: 1000 },
        model: "gpt-4o",
        timestamp: event.timestamp,
        type: "ai_tokens",
        id: event.id,
      };
      const second = (await ok(ingest({ events: [again] }, key))).data[0];
      expect(second).toEqual({ ...first, status: "duplicate" });
      expect((await balance(orgId)).balance).toBe("9");
      expect((await stored(orgId)).filter((e) => e.id === event.id)).toHaveLength(1);
      const usage = (await transactions(orgId)).filter(
        (e) => e.type === "usage" && e.reference.id === event.id,
      );
      expect(usage).toHaveLength(1);
    });

    it("token buckets of 0 and quantities are compared by value", async () => {
      const { key } = await setup("10");
      const tokens = { id: evtId(), type: "ai_tokens", model: "gpt-4o", tokens: { input: 100 } };
      const first = (await ok(ingest(tokens, key))).data[0];
      for (const retry of [
        { input: 100, cached_input: 0, cache_write: 0, output: 0 },
        { output: 0, input: 100 },
      ]) {
        const again = (await ok(ingest({ ...tokens, tokens: retry }, key))).data[0];
        expect(again).toEqual({ ...first, status: "duplicate" });
      }
      expectError(
        await ingest({ ...tokens, tokens: { input: 100, cached_input: 1 } }, key),
        409,
        "event_conflict",
      );
      // Sent with explicit zeros first, retried without them.
      const zeros = { ...tokens, id: evtId(), tokens: { input: 7, output: 0 } };
      const z1 = (await ok(ingest(zeros, key))).data[0];
      const z2 = (await ok(ingest({ ...zeros, tokens: { input: 7 } }, key))).data[0];
      expect(z2).toEqual({ ...z1, status: "duplicate" });

      const compute = {
        id: evtId(),
        type: "compute",
        meter: "compute.vcpu_seconds",
        quantity: "1",
      };
      const c1 = (await ok(ingest(compute, key))).data[0];
      for (const quantity of ["1.0", "+1", "01.000000"]) {
        const again = (await ok(ingest({ ...compute, quantity }, key))).data[0];
        expect(again).toEqual({ ...c1, status: "duplicate" });
      }
      expectError(await ingest({ ...compute, quantity: "1.000001" }, key), 409, "event_conflict");
    });

    it("an event stored before values were compared (its hash over the raw text) still matches its retry", async () => {
      const { orgId, key } = await setup("10");
      for (const event of [
        { id: evtId(), type: "ai_tokens", model: "gpt-4o", tokens: { input: 9, output: 0 } },
        { id: evtId(), type: "compute", meter: "compute.vcpu_seconds", quantity: "2.50" },
      ]) {
        const first = (await ok(ingest(event, key))).data[0];
        // As an earlier version stored it: SHA-256 of the sorted JSON as submitted.
        const raw = createHash("sha256").update(stableJson(event)).digest("hex");
        await ctx.db
          .updateTable("usage_events")
          .set({ payload_hash: raw })
          .where("org_id", "=", orgId)
          .where("id", "=", event.id)
          .execute();
        const again = (await ok(ingest(event, key))).data[0];
        expect(again).toEqual({ ...first, status: "duplicate" });
      }
    });

    it("a defaulted timestamp is not compared", async () => {
      const { orgId, key } = await setup("10");
      const explicit = tokensEvent({ timestamp: yesterday(5) });
      const first = (await ok(ingest(explicit, key))).data[0];
      const { timestamp: _t, ...withoutTimestamp } = explicit;
      const again = (await ok(ingest(withoutTimestamp, key))).data[0];
      expect(again).toEqual({ ...first, status: "duplicate" });

      // Defaulted first, retried later without a timestamp: still the same event.
      const defaulted = { id: evtId(), type: "ai_tokens", model: "gpt-4o", tokens: { input: 4 } };
      const d1 = (await ok(ingest(defaulted, key))).data[0];
      app.clock.advance(60_000);
      try {
        const d2 = (await ok(ingest(defaulted, key))).data[0];
        expect(d2).toEqual({ ...d1, status: "duplicate" });
        // …and with an explicit timestamp, too: the stored one was defaulted.
        const d3 = (await ok(ingest({ ...defaulted, timestamp: yesterday(1) }, key))).data[0];
        expect(d3.status).toBe("duplicate");
      } finally {
        app.clock.set(new Date(NOW));
      }
      expect(await stored(orgId)).toHaveLength(2);
      // But two explicit timestamps that differ are two different submissions.
      expectError(
        await ingest({ ...explicit, timestamp: yesterday(6) }, key),
        409,
        "event_conflict",
      );
    });

    it("the same id twice in one batch: the second is a duplicate of the first", async () => {
      const { orgId, key } = await setup("10");
      const event = tokensEvent();
      const other = tokensEvent({ tokens: { output: 1 } });
      const res = await ok(ingest({ events: [event, other, { ...event }] }, key));
      expect(res.data.map((r: { status: string }) => r.status)).toEqual([
        "accepted",
        "accepted",
        "duplicate",
      ]);
      expect(res.data[2]).toEqual({ ...res.data[0], status: "duplicate" });
      expect((await stored(orgId)).filter((e) => e.id === event.id)).toHaveLength(1);
      expect(C((await balance(orgId)).balance)).toBe(C("10") - C("0.25") - C("0.001"));
    });

    it("the same id with a different payload → 409 event_conflict and nothing of that request is recorded", async () => {
      const { orgId, key } = await setup("10");
      const event = tokensEvent();
      await ok(ingest(event, key));
      const before = await snapshot(orgId);
      const fresh = tokensEvent();
      const res = await ingest({ events: [fresh, { ...event, tokens: { input: 1001 } }] }, key);
      const details = expectError(res, 409, "event_conflict");
      expect(details).toEqual([
        expect.objectContaining({ field: expect.stringMatching(/events\/1\/id$/) }),
      ]);
      expect(await snapshot(orgId)).toEqual(before);
      expect((await stored(orgId)).map((e) => e.id)).not.toContain(fresh.id);

      // Metadata is part of the submission too.
      expectError(await ingest({ ...event, metadata: { k: "v" } }, key), 409, "event_conflict");
      // Within one batch as well.
      const twin = tokensEvent();
      expectError(
        await ingest({ events: [twin, { ...twin, user_id: "someone-else" }] }, key),
        409,
        "event_conflict",
      );
      expect(await snapshot(orgId)).toEqual(before);
    });

    it("event ids are per organisation", async () => {
      const a = await setup("10");
      const b = await setup("10");
      const id = evtId("shared");
      await ok(ingest(tokensEvent({ id }), a.key));
      const res = await ok(ingest(tokensEvent({ id, tokens: { output: 3 } }), b.key));
      expect(res.data[0].status).toBe("accepted");
      expect((await stored(b.orgId)).map((e) => e.id)).toEqual([id]);
    });

    it("a retry after the event's timestamp has left the window is a duplicate, not a 422", async () => {
      const { orgId, key } = await setup("10");
      const old = tokensEvent({ timestamp: at(NOW - 34 * DAY) });
      const first = (await ok(ingest(old, key))).data[0];
      expect(first.status).toBe("accepted");
      app.clock.advance(2 * DAY);
      try {
        const before = await snapshot(orgId);
        expect((await ok(ingest(old, key))).data).toEqual([{ ...first, status: "duplicate" }]);
        // Alongside new events, which are recorded as usual.
        const fresh = tokensEvent({ timestamp: at(NOW + DAY) });
        const mixed = await ok(ingest({ events: [fresh, old] }, key));
        expect(mixed.data.map((r: Json) => r.status)).toEqual(["accepted", "duplicate"]);
        expect(mixed.data[1]).toEqual({ ...first, status: "duplicate" });
        expect((await snapshot(orgId)).events).toBe(before.events + 1);

        const after = await snapshot(orgId);
        // Not stored with this payload, or not stored at all: still refused, and only these listed.
        const changed = { ...old, tokens: { input: 1001 } };
        const unknown = tokensEvent({ timestamp: old.timestamp });
        const details = expectError(
          await ingest(
            { events: [old, changed, unknown, tokensEvent({ timestamp: at(NOW) })] },
            key,
          ),
          422,
          "timestamp_out_of_range",
        );
        expect(details.map((d) => d.field)).toEqual([
          expect.stringMatching(/events\/1\/timestamp$/),
          expect.stringMatching(/events\/2\/timestamp$/),
        ]);
        // Another problem in the request: refused as before, with every problem listed.
        const invalid = expectError(
          await ingest({ events: [old, tokensEvent({ model: undefined })] }, key),
          400,
          "invalid_request",
        );
        expect(invalid.map((d) => d.code)).toEqual(["timestamp_out_of_range", "invalid_request"]);
        expect(await snapshot(orgId)).toEqual(after);
      } finally {
        app.clock.set(new Date(NOW));
      }
    });

    it("a retry of an event whose price has since been withdrawn is a duplicate, not a 422", async () => {
      const own = await createTestApp();
      const orgId = await own.createOrg();
      await own.call("POST", url(orgId, "adjustments"), { body: { amount: "+10", reason: "g" } });
      const event = tokensEvent({ org_id: orgId, model: "gpt-4o-mini" });
      const first = await own.call("POST", "/v1/usage-events", { body: event });
      expect(first.statusCode, first.body).toBe(200);
      const current = (await own.call("GET", "/v1/prices")).json();
      const put = await own.call("PUT", "/v1/prices", {
        body: {
          effective_from: at(NOW - 30 * DAY),
          models: current.models.filter((m: Json) => m.model !== "gpt-4o-mini"),
          meters: current.meters.map(({ aggregation: _a, ...m }: Json) => m),
        },
      });
      expect(put.statusCode, put.body).toBe(200);
      const again = await own.call("POST", "/v1/usage-events", { body: event });
      expect(again.statusCode, again.body).toBe(200);
      expect(again.json().data).toEqual([{ ...first.json().data[0], status: "duplicate" }]);
      // A new event for that model is refused.
      const res = await own.call("POST", "/v1/usage-events", {
        body: { ...event, id: evtId() },
      });
      expectError(res, 422, "price_not_found");
    });
  });

  describe("validation: any invalid event rejects the whole request", () => {
    it("one bad event among valid ones → 400, no event recorded, balance unchanged", async () => {
      const { orgId, key } = await setup("10");
      const before = await snapshot(orgId);
      const res = await ingest(
        {
          events: [
            tokensEvent(),
            tokensEvent(),
            { id: evtId(), type: "compute", meter: "compute.vcpu_seconds", quantity: "1.5" },
            { id: evtId(), type: "compute", quantity: "1" },
            tokensEvent(),
          ],
        },
        key,
      );
      const details = expectError(res, 400, "invalid_request");
      expect(details).toEqual([
        expect.objectContaining({ field: expect.stringMatching(/events\/3\/meter$/) }),
      ]);
      expect(await snapshot(orgId)).toEqual(before);
    });

    it.each([
      ["a JSON number as quantity", { quantity: 12.5 }, /events\/0\/quantity$/],
      ["a 7-decimal quantity", { quantity: "1.0000001" }, /events\/0\/quantity$/],
      ["a negative quantity", { quantity: "-1" }, /events\/0\/quantity$/],
      ["an exponent", { quantity: "1e3" }, /events\/0\/quantity$/],
      ["an unknown field", { color: "blue" }, /events\/0\/color$/],
      ["an unknown type", { type: "electricity" }, /events\/0\/type$/],
      ["a bad id", { id: "no spaces" }, /events\/0\/id$/],
      ["a bad timestamp", { timestamp: "yesterday" }, /events\/0\/timestamp$/],
    ])("%s → 400 with details", async (_name, change, field) => {
      const { orgId, key } = await setup();
      const event = {
        id: evtId(),
        type: "compute",
        meter: "compute.vcpu_seconds",
        quantity: "1",
        ...change,
      };
      const details = expectError(await ingest({ events: [event] }, key), 400, "invalid_request");
      expect(
        details.some((d) => field.test(d.field ?? "")),
        JSON.stringify(details),
      ).toBe(true);
      expect((await snapshot(orgId)).events).toBe(0);
    });

    it("tokens and provider_usage together, ai_tokens without a model, meters without meter/quantity, storage without resource → 400", async () => {
      const { orgId, key } = await setup();
      const both = tokensEvent({
        provider_usage: {
          provider: "anthropic",
          usage: { input_tokens: 1, output_tokens: 1 },
        },
      });
      const neither = tokensEvent({ tokens: undefined });
      const noModel = tokensEvent({ model: undefined });
      const meterOnTokens = tokensEvent({ meter: "compute.vcpu_seconds" });
      const noMeter = { id: evtId(), type: "bandwidth", quantity: "1" };
      const noQuantity = { id: evtId(), type: "bandwidth", meter: "bandwidth.egress_gb" };
      const storage = { id: evtId(), type: "storage", meter: "storage.gb", quantity: "5" };
      const modelOnMeter = {
        id: evtId(),
        type: "data_ops",
        meter: "data_ops.reads",
        quantity: "5",
        model: "gpt-4o",
      };
      const events = [
        both,
        neither,
        noModel,
        meterOnTokens,
        noMeter,
        noQuantity,
        storage,
        modelOnMeter,
      ];
      const details = expectError(await ingest({ events }, key), 400, "invalid_request");
      const fields = details.map((d) => d.field ?? "");
      for (const expected of [
        /events\/0\/tokens$/,
        /events\/1\/tokens$/,
        /events\/2\/model$/,
        /events\/3\/meter$/,
        /events\/4\/meter$/,
        /events\/5\/quantity$/,
        /events\/6\/resource$/,
        /events\/7\/model$/,
      ]) {
        expect(
          fields.some((f) => expected.test(f)),
          `${expected} in ${fields}`,
        ).toBe(true);
      }
      expect((await snapshot(orgId)).events).toBe(0);
    });

    it("1000 events are accepted; 1001 → 400; an empty batch → 400", async () => {
      const { orgId, key } = await setup("10");
      const make = (count: number) =>
        Array.from({ length: count }, () => ({
          id: evtId("bulk"),
          type: "data_ops",
          meter: "data_ops.reads",
          quantity: "1",
          timestamp: yesterday(12),
        }));
      const details = expectError(
        await ingest({ events: make(1001) }, key),
        400,
        "invalid_request",
      );
      expect(details.some((d) => /events/.test(d.field ?? ""))).toBe(true);
      expectError(await ingest({ events: [] }, key), 400, "invalid_request");
      expect((await snapshot(orgId)).events).toBe(0);

      const events = make(1000);
      const res = await ok(ingest({ events }, key));
      expect(res.data).toHaveLength(1000);
      expect(res.data.every((r: { status: string }) => r.status === "accepted")).toBe(true);
      // 1000 × 0.000004
      expect(C((await balance(orgId)).balance)).toBe(C("10") - C("0.004"));
      expect(await verifyLedger(ctx.db, orgId)).toMatchObject({ ok: true, entries: 1001 });

      // The same 1000 again: all duplicates, nothing charged (the lookup of 1000 stored ids).
      const again = await ok(ingest({ events: [...events].reverse() }, key));
      expect(again.data.map((r: { id: string; status: string }) => [r.id, r.status])).toEqual(
        [...events].reverse().map((e) => [e.id, "duplicate"]),
      );
      expect(again.data[999]).toEqual({ ...res.data[0], status: "duplicate" });
      expect(C((await balance(orgId)).balance)).toBe(C("10") - C("0.004"));
      expect(await verifyLedger(ctx.db, orgId)).toMatchObject({ ok: true, entries: 1001 });
    });

    it("malformed JSON and a non-object body → 400", async () => {
      const { key } = await setup();
      const malformed = await app.call("POST", "/v1/usage-events", { key, rawBody: "{" });
      expectError(malformed, 400, "invalid_request");
      expectError(await ingest([tokensEvent()], key), 400, "invalid_request");
      expectError(await ingest("event", key), 400, "invalid_request");
    });

    it("timestamps: older than TALLY_USAGE_BACKDATE_DAYS or more than 5 minutes ahead → 422", async () => {
      const { orgId, key } = await setup("10");
      const before = await snapshot(orgId);
      const oldest = NOW - 35 * DAY;
      const tooOld = tokensEvent({ timestamp: at(oldest - 1000) });
      const tooNew = tokensEvent({ timestamp: at(NOW + 5 * 60_000 + 1000) });
      const details = expectError(
        await ingest({ events: [tokensEvent(), tooOld, tooNew] }, key),
        422,
        "timestamp_out_of_range",
      );
      expect(details.map((d) => d.field)).toEqual([
        expect.stringMatching(/events\/1\/timestamp$/),
        expect.stringMatching(/events\/2\/timestamp$/),
      ]);
      expect(await snapshot(orgId)).toEqual(before);
      // The edges are inside the window.
      const edges = await ok(
        ingest(
          {
            events: [
              tokensEvent({ timestamp: at(oldest) }),
              tokensEvent({ timestamp: at(NOW + 5 * 60_000) }),
            ],
          },
          key,
        ),
      );
      expect(edges.data.map((r: { status: string }) => r.status)).toEqual(["accepted", "accepted"]);
    });

    it("the backdate window follows TALLY_USAGE_BACKDATE_DAYS", async () => {
      const short = await createTestApp({ env: { TALLY_USAGE_BACKDATE_DAYS: "1" } });
      const orgId = await short.createOrg();
      const res = await short.call("POST", "/v1/usage-events", {
        body: tokensEvent({ org_id: orgId, timestamp: at(NOW - DAY - 1000) }),
      });
      expectError(res, 422, "timestamp_out_of_range");
      const inside = await short.call("POST", "/v1/usage-events", {
        body: tokensEvent({ org_id: orgId, timestamp: at(NOW - DAY + 1000) }),
      });
      expect(inside.statusCode, inside.body).toBe(200);
    });

    it("an unknown model or meter, or a meter of another type → 422 price_not_found", async () => {
      const { orgId, key } = await setup("10");
      const before = await snapshot(orgId);
      const details = expectError(
        await ingest(
          {
            events: [
              tokensEvent(),
              tokensEvent({ model: "gpt-4o-2024-08-06" }),
              { id: evtId(), type: "compute", meter: "compute.gpu_seconds", quantity: "1" },
              { id: evtId(), type: "compute", meter: "storage.gb", quantity: "1" },
            ],
          },
          key,
        ),
        422,
        "price_not_found",
      );
      expect(details.map((d) => d.field)).toEqual([
        expect.stringMatching(/events\/1\/model$/),
        expect.stringMatching(/events\/2\/meter$/),
        expect.stringMatching(/events\/3\/meter$/),
      ]);
      expect(await snapshot(orgId)).toEqual(before);
    });

    it("a schema problem outranks a pricing problem: 400, both listed", async () => {
      const { key } = await setup();
      const details = expectError(
        await ingest(
          {
            events: [
              tokensEvent({ model: "nope" }),
              { id: evtId(), type: "compute", quantity: "1" },
            ],
          },
          key,
        ),
        400,
        "invalid_request",
      );
      expect(details.map((d) => d.code).sort()).toEqual(["invalid_request", "price_not_found"]);
    });
  });

  describe("debt", () => {
    it("usage beyond the balance is accepted; the next credit repays the debt first", async () => {
      const { orgId, key } = await setup("1");
      // 1500 output tokens of gpt-4o = 1.5 credits against a balance of 1.
      const res = await ok(ingest(tokensEvent({ tokens: { output: 1500 } }), key));
      expect(res.data[0]).toMatchObject({ status: "accepted", cost: "1.5", balance_after: "-0.5" });
      expect(await balance(orgId)).toMatchObject({
        balance: "-0.5",
        debt: "0.5",
        available: "-0.5",
      });
      const usage = (await transactions(orgId)).find((e) => e.type === "usage")!;
      expect(usage).toMatchObject({ amount: "-1.5", debt_change: "0.5" });

      // More usage deepens the debt.
      await ok(ingest(tokensEvent({ tokens: { output: 250 } }), key));
      expect(await balance(orgId)).toMatchObject({ balance: "-0.75", debt: "0.75" });

      const credit = await ok(
        app.call("POST", url(orgId, "adjustments"), { body: { amount: "+2", reason: "top up" } }),
        201,
      );
      expect(credit).toMatchObject({ amount: "2", balance_after: "1.25", debt_change: "-0.75" });
      expect(await balance(orgId)).toMatchObject({ balance: "1.25", debt: "0" });
      expect(await verifyLedger(ctx.db, orgId)).toMatchObject({ ok: true, entries: 4 });
    });
  });

  describe("GET usage-events", () => {
    it("filters by type, model, user_id, from and to, newest first", async () => {
      const { orgId, key } = await setup("100");
      const events = [
        tokensEvent({ timestamp: yesterday(1), user_id: "alice" }),
        tokensEvent({ timestamp: yesterday(2), model: "claude-sonnet-4", user_id: "bob" }),
        tokensEvent({ timestamp: yesterday(3), user_id: "bob" }),
        {
          id: evtId(),
          type: "compute",
          meter: "compute.vcpu_seconds",
          quantity: "3",
          timestamp: yesterday(4),
          user_id: "alice",
        },
        {
          id: evtId(),
          type: "bandwidth",
          meter: "bandwidth.egress_gb",
          quantity: "1",
          timestamp: yesterday(5),
        },
      ];
      await ok(ingest({ events }, key));
      const ids = async (query: string) => (await stored(orgId, query)).map((e) => e.id);
      const [e0, e1, e2, e3, e4] = events.map((e) => e.id);

      expect(await ids("")).toEqual([e4, e3, e2, e1, e0]);
      expect(await ids("&type=ai_tokens")).toEqual([e2, e1, e0]);
      expect(await ids("&type=compute")).toEqual([e3]);
      expect(await ids("&model=gpt-4o")).toEqual([e2, e0]);
      expect(await ids("&model=claude-sonnet-4")).toEqual([e1]);
      expect(await ids("&user_id=bob")).toEqual([e2, e1]);
      expect(await ids("&user_id=alice&type=ai_tokens")).toEqual([e0]);
      // from is inclusive, to exclusive.
      expect(await ids(`&from=${yesterday(2)}&to=${yesterday(4)}`)).toEqual([e2, e1]);
      expect(await ids(`&from=${yesterday(5)}`)).toEqual([e4]);
      expect(await ids(`&to=${yesterday(1)}`)).toEqual([]);

      expectError(
        await app.call("GET", url(orgId, "usage-events?type=nope")),
        400,
        "invalid_request",
      );
      expectError(
        await app.call("GET", url(orgId, "usage-events?from=soon")),
        400,
        "invalid_request",
      );
      expectError(
        await app.call("GET", url(orgId, "usage-events?cursor=zzz")),
        400,
        "invalid_request",
      );
    });

    it("cursor paging returns every event once, including events sharing a timestamp", async () => {
      const { orgId, key } = await setup("100");
      const events = Array.from({ length: 7 }, (_, i) =>
        tokensEvent({ timestamp: yesterday(i < 4 ? 1 : 2) }),
      );
      await ok(ingest({ events }, key));
      const seen: string[] = [];
      let cursor: string | null = null;
      let pages = 0;
      do {
        const page: { data: { id: string }[]; has_more: boolean; next_cursor: string | null } =
          await ok(
            app.call("GET", url(orgId, `usage-events?limit=3${cursor ? `&cursor=${cursor}` : ""}`)),
          );
        pages++;
        expect(page.data.length).toBeLessThanOrEqual(3);
        seen.push(...page.data.map((e) => e.id));
        expect(page.has_more).toBe(page.next_cursor !== null);
        cursor = page.next_cursor;
      } while (cursor);
      expect(pages).toBe(3);
      expect(seen).toHaveLength(7);
      expect(new Set(seen)).toEqual(new Set(events.map((e) => e.id)));
      expect(seen).toEqual((await stored(orgId)).map((e) => e.id));
    });

    it("another organisation's key sees 404", async () => {
      const { orgId } = await setup();
      const other = await setup();
      const otherRead = await app.orgKey(other.orgId, "read");
      expectError(
        await app.call("GET", url(orgId, "usage-events"), { key: otherRead }),
        404,
        "not_found",
      );
    });
  });
  // Last: replacing the catalogue changes prices for the tests that would follow.
  describe("price versions", () => {
    it("events are priced with the version in effect at their timestamp; gauges are per meter", async () => {
      const { orgId, key } = await setup("100");
      const current = await ok(app.call("GET", "/v1/prices"));
      expect(current.version).toBe(1);
      const put = await ok(
        app.call("PUT", "/v1/prices", {
          body: {
            effective_from: "2026-11-01T00:00:00Z",
            models: current.models.map((m: Record<string, string>) =>
              m.model === "gpt-4o" ? { ...m, input: "500" } : m,
            ),
            meters: [
              ...current.meters.map(({ aggregation: _a, ...m }: Record<string, string>) => m),
              { meter: "storage.ssd_gb", type: "storage", unit: "GB-hour", rate: "0.0003" },
            ],
          },
        }),
      );
      expect(put.version).toBe(2);

      const october = tokensEvent({ timestamp: "2026-10-31T23:59:59Z" });
      const november = tokensEvent({ timestamp: "2026-11-01T00:00:00Z" });
      const res = await ok(ingest({ events: [october, november] }, key));
      // 1000 input tokens: 250 per 1M before November (version 1), 500 from November 1st.
      expect(res.data.map((r: { cost: string }) => r.cost)).toEqual(["0.25", "0.5"]);
      const byId = new Map((await stored(orgId)).map((e) => [e.id, e]));
      expect(byId.get(october.id)!.price_version).toBe(1);
      expect(byId.get(november.id)!.price_version).toBe(2);
      // A meter that only version 2 has: not priced before November.
      const early = {
        id: evtId(),
        type: "storage",
        meter: "storage.ssd_gb",
        resource: "disk-1",
        quantity: "1",
        timestamp: "2026-10-31T00:00:00Z",
      };
      expectError(await ingest(early, key), 422, "price_not_found");

      // The same resource under two storage meters: two gauges.
      const gauge = (meter: string, hh: number, quantity: string) => ({
        id: evtId("meter-gauge"),
        type: "storage",
        meter,
        resource: "disk-1",
        timestamp: yesterday(hh),
        quantity,
      });
      await ok(
        ingest({ events: [gauge("storage.gb", 0, "10"), gauge("storage.ssd_gb", 0, "20")] }, key),
      );
      const next = await ok(
        ingest({ events: [gauge("storage.ssd_gb", 1, "0"), gauge("storage.gb", 1, "0")] }, key),
      );
      // ssd: 20 GB × 1 h × 0.0003; gb: 10 GB × 1 h × 0.0001
      expect(next.data.map((r: { cost: string }) => r.cost)).toEqual(["0.006", "0.001"]);
    });
  });

  describe("amounts beyond what the ledger stores", () => {
    /** Meters at the highest rate, so that a few events reach the ledger's bounds. */
    async function hugeMeters() {
      const current = await ok(app.call("GET", "/v1/prices"));
      if (current.meters.some((m: { meter: string }) => m.meter === "compute.huge")) return;
      await ok(
        app.call("PUT", "/v1/prices", {
          body: {
            effective_from: "2026-10-01T00:00:00Z",
            models: current.models,
            meters: [
              ...current.meters.map(({ aggregation: _a, ...m }: Record<string, string>) => m),
              { meter: "compute.huge", type: "compute", unit: "x", rate: "999999999999.999999" },
              {
                meter: "storage.huge",
                type: "storage",
                unit: "GB-hour",
                rate: "999999999999.999999",
              },
            ],
          },
        }),
      );
    }

    it("a request whose costs would reach 10^26 is refused with 400 and changes nothing; requests sharing its flush succeed", async () => {
      await hugeMeters();
      const { orgId, key } = await setup("100");
      const before = await snapshot(orgId);
      // Each event costs about 10^24 credits; 150 of them overflow the balance.
      const huge = () => ({
        id: evtId("huge"),
        type: "compute",
        meter: "compute.huge",
        quantity: "999999999999.999999",
      });
      const events = Array.from({ length: 150 }, huge);
      const refused = await ingest({ events }, key);
      expect(expectError(refused, 400, "invalid_request")[0]!.message).toMatch(/10\^26/);
      expect(await snapshot(orgId)).toEqual(before);

      // Concurrent with innocent requests (whether or not they share its flush): only it fails.
      const innocent = await setup("100");
      const results = await Promise.all([
        ingest({ events: Array.from({ length: 150 }, huge) }, key),
        ...Array.from({ length: 5 }, () => ingest(tokensEvent(), innocent.key)),
      ]);
      expectError(results[0]!, 400, "invalid_request");
      for (const r of results.slice(1)) expect(r.statusCode, r.body).toBe(200);
      expect(await snapshot(orgId)).toEqual(before);
      expect((await stored(innocent.orgId)).length).toBe(5);
      expect(await verifyLedger(ctx.db, innocent.orgId)).toMatchObject({ ok: true });

      // A storage gauge whose interval would cost too much: 400, and the gauge keeps working.
      const reading = (quantity: string, ms: number) => ({
        id: evtId("huge-gauge"),
        type: "storage",
        meter: "storage.huge",
        resource: "vol-1",
        quantity,
        timestamp: at(ms),
      });
      // 10^12 GB for 816 hours at 10^12 credits per GB-hour.
      await ok(ingest(reading("999999999999.999999", NOW - 34 * DAY), key));
      expectError(await ingest(reading("1", NOW), key), 400, "invalid_request");
      expect(await snapshot(orgId)).toMatchObject({ balance: before.balance });
      // An earlier reading (out of order) bills nothing and is accepted.
      await ok(ingest(reading("1", NOW - 34 * DAY - HOUR), key));
    });

    it("a retry of huge events already recorded is answered duplicate, not refused as out of range", async () => {
      await hugeMeters();
      const { orgId, key } = await setup("100");
      const events = Array.from({ length: 60 }, () => ({
        id: evtId("huge-retry"),
        type: "compute",
        meter: "compute.huge",
        quantity: "999999999999.999999",
      }));
      await ok(ingest({ events }, key));
      const after = await snapshot(orgId);
      // Another write makes the remembered ledger stale, so the retry takes the locking path,
      // whose first attempt posts the events again before it knows they are stored.
      await ok(
        app.call("POST", url(orgId, "adjustments"), { body: { amount: "+1", reason: "x" } }),
        201,
      );
      const retry = await ok(ingest({ events }, key));
      expect(retry.data.map((d: { status: string }) => d.status)).toEqual(
        events.map(() => "duplicate"),
      );
      expect((await snapshot(orgId)).last_sequence).toBe(after.last_sequence + 1);
      expect(await verifyLedger(ctx.db, orgId)).toMatchObject({ ok: true });
    });

    it("package credits and adjustments are bounded to 15 integer digits", async () => {
      const { orgId } = await setup("0");
      expectError(
        await app.call("POST", url(orgId, "adjustments"), {
          body: { amount: "+1000000000000000", reason: "too much" },
        }),
        400,
        "invalid_request",
      );
      await ok(
        app.call("POST", url(orgId, "adjustments"), {
          body: { amount: "+999999999999999.999999999999", reason: "the most" },
        }),
        201,
      );
      expectError(
        await app.call("POST", "/v1/credit-packages", {
          body: { name: "Galaxy", credits: "1000000000000000", price: "1.00" },
        }),
        400,
        "invalid_request",
      );
    });
  });
});
