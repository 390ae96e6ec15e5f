import { describe, expect, it } from "vitest";
import { createTestApp } from "../../../test/support/app.js";
import { creditsFromDb, parseCredits } from "./credits.js";
import { expireDueBlocks, verifyLedger } from "./ledger.service.js";
import { postEntries } from "./posting.js";

const HOUR = 3_600_000;
const TXN_ID = /^txn_[0-9A-HJKMNP-TV-Z]{26}$/;
const BLK_ID = /^blk_[0-9A-HJKMNP-TV-Z]{26}$/;
const HEX64 = /^[0-9a-f]{64}$/;

/** RFC 4180: quoted fields, doubled quotes, CRLF line ends. */
function parseCsv(text: string): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let cell = "";
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        cell += '"';
        i++;
      } else if (c === '"') quoted = false;
      else cell += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") {
      row.push(cell);
      cell = "";
    } else if (c === "\r" && text[i + 1] === "\n") {
      row.push(cell);
      rows.push(row);
      row = [];
      cell = "";
      i++;
    } else cell += c;
  }
  if (cell !== "" || row.length > 0) throw new Error("CSV does not end with CRLF");
  return rows;
}

describe("ledger routes", async () => {
  const app = await createTestApp();
  const ctx = app.runtime.ctx;

  type Res = Awaited<ReturnType<typeof app.call>>;

  function expectError(res: Res, status: number, code: string) {
    expect(res.statusCode, res.body).toBe(status);
    const body = res.json();
    expect(body.error).toMatchObject({ code, message: expect.any(String) });
    expect(body.error.request_id).toMatch(/^req_/);
    return body.error.details as { field?: string; message: string }[];
  }

  const url = (orgId: string, path: string) => `/v1/organizations/${orgId}/${path}`;

  function adjust(
    orgId: string,
    body: unknown,
    options: { key?: string; headers?: Record<string, string> } = {},
  ) {
    return app.call("POST", url(orgId, "adjustments"), { body, ...options });
  }

  async function ok(res: Promise<Res> | Res, status = 200) {
    const r = await res;
    expect(r.statusCode, r.body).toBe(status);
    return r.json();
  }

  const balance = (orgId: string) => ok(app.call("GET", url(orgId, "balance")));
  const blocks = async (orgId: string, query = "") =>
    (await ok(app.call("GET", url(orgId, `credit-blocks?limit=1000${query}`)))).data;
  const transactions = async (orgId: string, query = "") =>
    (await ok(app.call("GET", url(orgId, `transactions?limit=1000${query}`)))).data;
  const verify = (orgId: string) => ok(app.call("GET", url(orgId, "ledger/verify")));

  /** The observable state that a refused request must leave untouched. */
  async function snapshot(orgId: string) {
    const b = await balance(orgId);
    return {
      balance: b.balance,
      reserved: b.reserved,
      last_sequence: b.last_sequence,
      blocks: await blocks(orgId),
      transactions: (await transactions(orgId)).length,
    };
  }

  async function grant(orgId: string, amount: string, extra: Record<string, unknown> = {}) {
    return ok(adjust(orgId, { amount, reason: "grant", ...extra }), 201);
  }

  describe("balance", () => {
    it("is zero for a new organisation", async () => {
      const orgId = await app.createOrg();
      expect(await balance(orgId)).toEqual({
        org_id: orgId,
        balance: "0",
        reserved: "0",
        available: "0",
        overdraft_limit: "0",
        debt: "0",
        low_balance: true,
        auto_topup: "off",
        updated_at: app.clock.now().toISOString(),
        last_sequence: 0,
      });
      expect(await transactions(orgId)).toEqual([]);
      expect(await blocks(orgId)).toEqual([]);
      expect(await verify(orgId)).toMatchObject({ ok: true, entries: 0, first_bad_sequence: null });
    });

    it("reflects adjustments exactly", async () => {
      const orgId = await app.createOrg({ overdraft_limit: "5" });
      await grant(orgId, "+100");
      await grant(orgId, "+0.000000000001");
      await ok(adjust(orgId, { amount: "-20.5", reason: "correction" }), 201);
      expect(await balance(orgId)).toMatchObject({
        org_id: orgId,
        balance: "79.500000000001",
        reserved: "0",
        available: "79.500000000001",
        overdraft_limit: "5",
        debt: "0",
        low_balance: false,
        updated_at: app.clock.now().toISOString(),
        last_sequence: 3,
      });
    });

    it("credits past their expiry are not shown: they are expired when the balance is read", async () => {
      const orgId = await app.createOrg();
      const expiresAt = new Date(app.clock.now().getTime() + HOUR).toISOString();
      await grant(orgId, "+100", { expires_at: expiresAt, category: "promotional" });
      await grant(orgId, "+5");
      expect((await balance(orgId)).balance).toBe("105");
      app.clock.advance(HOUR);
      // The expiry worker has not run: the read writes the expiry, so balance = Σ entries.
      expect(await balance(orgId)).toMatchObject({
        balance: "5",
        available: "5",
        last_sequence: 3,
      });
      const [expiry] = await transactions(orgId);
      expect(expiry).toMatchObject({ type: "expiry", amount: "-100", balance_after: "5" });
      expect((await balance(orgId)).last_sequence).toBe(3); // once
      expect(await verify(orgId)).toMatchObject({ ok: true, entries: 3 });
    });

    it("accepts ext:<external_id> in the path", async () => {
      const orgId = await app.createOrg({ external_id: "acme:eu-1" });
      await ok(adjust("ext:acme:eu-1", { amount: "+7", reason: "via external id" }), 201);
      expect((await balance("ext:acme:eu-1")).org_id).toBe(orgId);
      expect((await balance(orgId)).balance).toBe("7");
    });
  });

  describe("adjustments", () => {
    it("+100 creates an adjustment block and entry", async () => {
      const orgId = await app.createOrg();
      const res = await adjust(orgId, { amount: "+100", reason: "Welcome credits" });
      expect(res.statusCode, res.body).toBe(201);
      const entry = res.json();
      const [block] = await blocks(orgId);
      expect(entry).toEqual({
        id: expect.stringMatching(TXN_ID),
        org_id: orgId,
        sequence: 1,
        type: "adjustment",
        amount: "100",
        balance_after: "100",
        debt_change: "0",
        allocations: [{ block_id: block.id, amount: "100" }],
        actor: { type: "api_key", id: expect.stringMatching(/^key_/) },
        user_id: null,
        reason: "Welcome credits",
        description: null,
        reference: null,
        created_at: app.clock.now().toISOString(),
        hash: expect.stringMatching(HEX64),
        prev_hash: "0".repeat(64),
      });
      expect(block).toEqual({
        id: expect.stringMatching(BLK_ID),
        source: "adjustment",
        original: "100",
        remaining: "100",
        unit_cost: "0",
        priority: 0,
        effective_at: app.clock.now().toISOString(),
        expires_at: null,
        status: "active",
        purchase_id: null,
        created_at: app.clock.now().toISOString(),
      });
    });

    it("category promotional → promotional block; expires_at and priority are stored", async () => {
      const orgId = await app.createOrg();
      const expiresAt = new Date(app.clock.now().getTime() + 30 * 24 * HOUR).toISOString();
      const first = await grant(orgId, "+25", {
        category: "promotional",
        expires_at: expiresAt,
        priority: -3,
      });
      const second = await grant(orgId, "+1", { category: "correction" });
      expect(second.prev_hash).toBe(first.hash);
      const list = await blocks(orgId);
      const promo = list.find((b: { id: string }) => b.id === first.allocations[0].block_id);
      expect(promo).toMatchObject({
        source: "promotional",
        original: "25",
        remaining: "25",
        priority: -3,
        expires_at: expiresAt,
        status: "active",
      });
      expect(
        list.find((b: { id: string }) => b.id === second.allocations[0].block_id),
      ).toMatchObject({
        source: "adjustment",
        priority: 0,
        expires_at: null,
      });
    });

    it("a negative adjustment draws from blocks in burn order", async () => {
      const orgId = await app.createOrg();
      const inDays = (d: number) =>
        new Date(app.clock.now().getTime() + d * 24 * HOUR).toISOString();
      const x = await grant(orgId, "+10", { priority: 5 });
      const y = await grant(orgId, "+15", { expires_at: inDays(2) });
      const z = await grant(orgId, "+100");
      const w = await grant(orgId, "+8", { expires_at: inDays(1) });
      const id = (e: { allocations: { block_id: string }[] }) => e.allocations[0]!.block_id;

      const debit = await ok(adjust(orgId, { amount: "-20", reason: "overgranted" }), 201);
      expect(debit).toMatchObject({
        type: "adjustment",
        amount: "-20",
        balance_after: "113",
        debt_change: "0",
        sequence: 5,
        prev_hash: w.hash,
      });
      // priority first, then the earliest expiry; never-expiring after expiring; priority 5 last
      expect(debit.allocations).toEqual([
        { block_id: id(w), amount: "-8" },
        { block_id: id(y), amount: "-12" },
      ]);
      const byId = new Map((await blocks(orgId)).map((b: { id: string }) => [b.id, b]));
      expect(byId.get(id(w))).toMatchObject({ remaining: "0", status: "depleted" });
      expect(byId.get(id(y))).toMatchObject({ remaining: "3", status: "active" });
      expect(byId.get(id(z))).toMatchObject({ remaining: "100", status: "active" });
      expect(byId.get(id(x))).toMatchObject({ remaining: "10", status: "active" });

      // Taking everything that is left empties every block in order, the priority-5 block last.
      const all = await ok(adjust(orgId, { amount: "-113", reason: "close account" }), 201);
      expect(all.allocations).toEqual([
        { block_id: id(y), amount: "-3" },
        { block_id: id(z), amount: "-100" },
        { block_id: id(x), amount: "-10" },
      ]);
      expect(await blocks(orgId, "&status=active")).toEqual([]);
      expect((await balance(orgId)).balance).toBe("0");
      expect(await verify(orgId)).toMatchObject({ ok: true, entries: 6 });
    });

    it("removing more than is held is 402 insufficient_credits and writes nothing", async () => {
      const orgId = await app.createOrg();
      await grant(orgId, "+30");
      await grant(orgId, "+0.5");
      const before = await snapshot(orgId);
      expectError(
        await adjust(orgId, { amount: "-30.500000000001", reason: "too much" }),
        402,
        "insufficient_credits",
      );
      expect(await snapshot(orgId)).toEqual(before);
      // An organisation that never held credits.
      const empty = await app.createOrg();
      expectError(
        await adjust(empty, { amount: "-1", reason: "nothing there" }),
        402,
        "insufficient_credits",
      );
      expect(await balance(empty)).toMatchObject({ balance: "0", last_sequence: 0 });
      expect(await verify(orgId)).toMatchObject({ ok: true });
    });

    it("credits that an open reservation holds cannot be removed", async () => {
      const orgId = await app.createOrg();
      await grant(orgId, "+100");
      await ok(app.call("POST", url(orgId, "reservations"), { body: { amount: "60" } }), 201);
      const before = await snapshot(orgId);
      expectError(
        await adjust(orgId, { amount: "-40.000000000001", reason: "into the hold" }),
        402,
        "insufficient_credits",
      );
      expect(await snapshot(orgId)).toEqual(before);
      await ok(adjust(orgId, { amount: "-40", reason: "all that is free" }), 201);
      expect(await balance(orgId)).toMatchObject({ balance: "60", reserved: "60", available: "0" });
    });

    const future = "2030-01-01T00:00:00Z";
    it.each([
      ["zero", { amount: "+0", reason: "r" }, "/amount"],
      ["negative zero", { amount: "-0.000", reason: "r" }, "/amount"],
      ["13 fractional digits", { amount: "+1.0000000000001", reason: "r" }, "/amount"],
      ["a JSON number", { amount: 100, reason: "r" }, "/amount"],
      ["an unsigned amount", { amount: "100", reason: "r" }, "/amount"],
      ["an exponent", { amount: "+1e3", reason: "r" }, "/amount"],
      ["a blank amount", { amount: "", reason: "r" }, "/amount"],
      ["27 integer digits", { amount: `+${"9".repeat(27)}`, reason: "r" }, "/amount"],
      ["a balance beyond NUMERIC(38,12)", { amount: `+${"9".repeat(26)}`, reason: "r" }, "/amount"],
      ["a missing amount", { reason: "r" }, "/amount"],
      ["a missing reason", { amount: "+1" }, "/reason"],
      ["an empty reason", { amount: "+1", reason: "" }, "/reason"],
      ["a blank reason", { amount: "+1", reason: "   " }, "/reason"],
      ["a reason of 501 characters", { amount: "+1", reason: "x".repeat(501) }, "/reason"],
      ["a reason with a NUL character", { amount: "+1", reason: "a\u0000b" }, "/reason"],
      ["a reason with a lone surrogate", { amount: "+1", reason: "a\ud800b" }, "/reason"],
      [
        "expires_at in the past",
        { amount: "+1", reason: "r", expires_at: "2026-11-24T09:59:59Z" },
        "/expires_at",
      ],
      [
        "expires_at now",
        { amount: "+1", reason: "r", expires_at: "2026-11-24T10:00:00Z" },
        "/expires_at",
      ],
      [
        "expires_at not a timestamp",
        { amount: "+1", reason: "r", expires_at: "tomorrow" },
        "/expires_at",
      ],
      [
        "expires_at on a negative amount",
        { amount: "-1", reason: "r", expires_at: future },
        "/amount",
      ],
      ["priority on a negative amount", { amount: "-1", reason: "r", priority: 1 }, "/amount"],
      ["a fractional priority", { amount: "+1", reason: "r", priority: 1.5 }, "/priority"],
      ["an unknown category", { amount: "+1", reason: "r", category: "gift" }, "/category"],
      ["an unknown field", { amount: "+1", reason: "r", note: "x" }, "/note"],
      ["a non-object body", ["+1"], undefined],
    ])("%s → 400 and nothing changes", async (_name, body, field) => {
      const orgId = await app.createOrg();
      await grant(orgId, "+10");
      const before = await snapshot(orgId);
      const details = expectError(await adjust(orgId, body), 400, "invalid_request");
      expect(details.length).toBeGreaterThan(0);
      expect(details.map((d) => d.field)).toContain(field);
      expect(await snapshot(orgId)).toEqual(before);
      expect(await verify(orgId)).toMatchObject({ ok: true, entries: 1 });
    });

    it("malformed JSON → 400 and nothing changes", async () => {
      const orgId = await app.createOrg();
      const before = await snapshot(orgId);
      const res = await app.call("POST", url(orgId, "adjustments"), {
        rawBody: '{"amount": "+1",',
      });
      expectError(res, 400, "invalid_request");
      expect(await snapshot(orgId)).toEqual(before);
    });

    it("a reason of exactly 500 characters is accepted", async () => {
      const orgId = await app.createOrg();
      const entry = await grant(orgId, "+1", { reason: "é".repeat(500) });
      expect(entry.reason).toBe("é".repeat(500));
      expect(await verify(orgId)).toMatchObject({ ok: true });
    });

    it("records the acting user (On-Behalf-Of) and the api key as actor", async () => {
      const orgId = await app.createOrg();
      await ok(
        app.call("POST", url(orgId, "users"), {
          body: { id: "u-17", email: "ada@example.com", role: "admin" },
        }),
        201,
      );
      const key = await ok(
        app.call("POST", url(orgId, "api-keys"), { body: { name: "ops", role: "admin" } }),
        201,
      );
      const entry = await ok(
        adjust(
          orgId,
          { amount: "+5", reason: "support" },
          { key: key.key, headers: { "on-behalf-of": "u-17" } },
        ),
        201,
      );
      expect(entry.user_id).toBe("u-17");
      expect(entry.actor).toEqual({ type: "api_key", id: key.id });
      const stored = await ok(app.call("GET", url(orgId, `transactions/${entry.id}`)));
      expect(stored).toEqual(entry);

      // Without On-Behalf-Of no user is recorded; a platform key is its own actor.
      const platform = await grant(orgId, "+1");
      expect(platform.user_id).toBeNull();
      expect(platform.actor.type).toBe("api_key");
      expect(platform.actor.id).not.toBe(key.id);

      // An unknown user is refused and changes nothing.
      const before = await snapshot(orgId);
      expectError(
        await adjust(
          orgId,
          { amount: "+5", reason: "x" },
          { key: key.key, headers: { "on-behalf-of": "u-404" } },
        ),
        400,
        "invalid_request",
      );
      expect(await snapshot(orgId)).toEqual(before);
      expect(await verify(orgId)).toMatchObject({ ok: true });
    });

    it("a replayed Idempotency-Key adjusts once", async () => {
      const orgId = await app.createOrg();
      const body = { amount: "+12", reason: "once" };
      const headers = { "idempotency-key": "adj-1" };
      const first = await ok(adjust(orgId, body, { headers }), 201);
      const second = await ok(adjust(orgId, body, { headers }), 201);
      expect(second).toEqual(first);
      expect(await balance(orgId)).toMatchObject({ balance: "12", last_sequence: 1 });
    });
  });

  describe("credit blocks", () => {
    it("filters by status and pages newest first", async () => {
      const orgId = await app.createOrg();
      const granted: string[] = [];
      for (let i = 1; i <= 7; i++)
        granted.push((await grant(orgId, `+${i}`)).allocations[0].block_id);
      // Burn order among equal blocks is creation order: -3 empties the +1 and +2 blocks.
      await ok(adjust(orgId, { amount: "-3", reason: "use" }), 201);

      const depleted = await blocks(orgId, "&status=depleted");
      expect(depleted.map((b: { id: string }) => b.id)).toEqual([granted[1], granted[0]]);
      const active = await blocks(orgId, "&status=active");
      expect(active.map((b: { id: string }) => b.id)).toEqual(granted.slice(2).reverse());
      expect(await blocks(orgId, "&status=expired")).toEqual([]);
      expectError(
        await app.call("GET", url(orgId, "credit-blocks?status=gone")),
        400,
        "invalid_request",
      );

      const seen: string[] = [];
      let cursor: string | null = null;
      let pages = 0;
      do {
        const page: { data: { id: string }[]; has_more: boolean; next_cursor: string | null } =
          await ok(
            app.call(
              "GET",
              url(orgId, `credit-blocks?limit=3${cursor ? `&cursor=${cursor}` : ""}`),
            ),
          );
        expect(page.data.length).toBeLessThanOrEqual(3);
        expect(page.has_more).toBe(page.next_cursor !== null);
        seen.push(...page.data.map((b) => b.id));
        cursor = page.next_cursor;
        pages++;
      } while (cursor);
      expect(pages).toBe(3);
      expect(seen).toEqual([...granted].reverse());
      expectError(
        await app.call("GET", url(orgId, "credit-blocks?cursor=%%%")),
        400,
        "invalid_request",
      );
      expectError(
        await app.call("GET", url(orgId, "credit-blocks?limit=0")),
        400,
        "invalid_request",
      );
      expectError(
        await app.call("GET", url(orgId, "credit-blocks?limit=1001")),
        400,
        "invalid_request",
      );
    });
  });

  describe("transactions", () => {
    /** An organisation with entries of several types, users, references and times. */
    async function richOrg() {
      const orgId = await app.createOrg();
      await ok(
        app.call("POST", url(orgId, "users"), {
          body: { id: "u-1", email: "u1@example.com", role: "admin" },
        }),
        201,
      );
      const start = app.clock.now();
      const entries: { id: string; sequence: number }[] = [];
      entries.push(await grant(orgId, "+100"));
      app.clock.advance(HOUR);
      entries.push(
        await ok(
          adjust(
            orgId,
            { amount: "+5", reason: "by user" },
            { headers: { "on-behalf-of": "u-1" } },
          ),
          201,
        ),
      );
      app.clock.advance(HOUR);
      // A usage entry as the ingest engine writes it: its reference is the stored event's id.
      await ok(
        app.call("POST", "/v1/usage-events", {
          body: {
            id: "evt-1",
            org_id: orgId,
            user_id: "u-1",
            type: "compute",
            meter: "compute.vcpu_seconds",
            quantity: "0.0625",
          },
        }),
        200,
      );
      const posted = await ctx.db.transaction().execute((tx) =>
        postEntries(tx, ctx, orgId, [
          {
            kind: "credit",
            type: "purchase",
            amount: parseCredits("50"),
            block: { source: "purchase", unitCost: "0.1", purchaseId: "pur_1" },
            actor: { type: "system", id: "tally" },
            reference: { type: "purchase", id: "pur_1" },
          },
        ]),
      );
      if (!posted.ok) throw new Error("posting refused");
      app.clock.advance(HOUR);
      entries.push(await ok(adjust(orgId, { amount: "-1", reason: "fix" }), 201));
      return { orgId, start, entries };
    }

    it("lists newest first and filters by type, user_id, from, to and reference_id", async () => {
      const { orgId, start } = await richOrg();
      const all = await transactions(orgId);
      expect(all.map((e: { sequence: number }) => e.sequence)).toEqual([5, 4, 3, 2, 1]);
      expect(all.map((e: { type: string }) => e.type)).toEqual([
        "adjustment",
        "purchase",
        "usage",
        "adjustment",
        "adjustment",
      ]);
      expect(all[2]).toMatchObject({
        amount: "-0.000125",
        user_id: "u-1",
        reference: { type: "usage_event", id: "evt-1" },
        actor: { type: "api_key" },
      });
      expect(all[1]).toMatchObject({ actor: { type: "system", id: "tally" } });
      for (let i = 0; i < all.length - 1; i++) expect(all[i].prev_hash).toBe(all[i + 1].hash);

      const seqs = async (q: string) =>
        (await transactions(orgId, q)).map((e: { sequence: number }) => e.sequence);
      expect(await seqs("&type=adjustment")).toEqual([5, 2, 1]);
      expect(await seqs("&type=usage")).toEqual([3]);
      expect(await seqs("&type=expiry")).toEqual([]);
      expect(await seqs("&user_id=u-1")).toEqual([3, 2]);
      expect(await seqs("&reference_id=evt-1")).toEqual([3]);
      expect(await seqs("&reference_id=pur_1")).toEqual([4]);
      expect(await seqs("&reference_id=evt-1&type=usage&user_id=u-1")).toEqual([3]);
      expect(await seqs("&reference_id=evt-1&type=purchase")).toEqual([]);
      expect(await seqs("&reference_id=pur_1&type=usage")).toEqual([]);
      expect(await seqs("&reference_id=evt-2")).toEqual([]);
      // Bounds finer than the millisecond select what the exact bound would.
      const entry2 = all[3].created_at as string; // "…T11:00:00.000Z"
      const past = (iso: string) => `${iso.slice(0, -1)}0005Z`;
      expect(await seqs(`&to=${encodeURIComponent(past(entry2))}`)).toEqual([2, 1]);
      expect(await seqs(`&from=${encodeURIComponent(past(entry2))}`)).toEqual([5, 4, 3]);
      for (const empty of ["user_id=", "reference_id="]) {
        expectError(
          await app.call("GET", url(orgId, `transactions?${empty}`)),
          400,
          "invalid_request",
        );
      }
      const at = (h: number) =>
        encodeURIComponent(new Date(start.getTime() + h * HOUR).toISOString());
      expect(await seqs(`&from=${at(1)}`)).toEqual([5, 4, 3, 2]);
      expect(await seqs(`&to=${at(1)}`)).toEqual([1]);
      expect(await seqs(`&from=${at(1)}&to=${at(3)}`)).toEqual([4, 3, 2]);
      expect(await seqs(`&from=${at(1)}&to=${at(3)}&type=adjustment`)).toEqual([2]);

      expectError(
        await app.call("GET", url(orgId, "transactions?type=gift")),
        400,
        "invalid_request",
      );
      expectError(
        await app.call("GET", url(orgId, "transactions?from=yesterday")),
        400,
        "invalid_request",
      );
      expectError(
        await app.call("GET", url(orgId, "transactions?colour=red")),
        400,
        "invalid_request",
      );
      expect(await verify(orgId)).toMatchObject({ ok: true, entries: 5 });
    });

    it("cursor paging returns every entry exactly once", async () => {
      const orgId = await app.createOrg();
      for (let i = 0; i < 23; i++) await grant(orgId, `+${i + 1}`);
      const expected = (await transactions(orgId)).map((e: { id: string }) => e.id);
      expect(expected).toHaveLength(23);
      for (const limit of [1, 5, 23, 50]) {
        const seen: string[] = [];
        let cursor: string | null = null;
        do {
          const page: { data: { id: string }[]; has_more: boolean; next_cursor: string | null } =
            await ok(
              app.call(
                "GET",
                url(orgId, `transactions?limit=${limit}${cursor ? `&cursor=${cursor}` : ""}`),
              ),
            );
          expect(page.has_more).toBe(page.next_cursor !== null);
          seen.push(...page.data.map((e) => e.id));
          cursor = page.next_cursor;
        } while (cursor);
        expect(seen).toEqual(expected);
      }
      // Paging with a filter keeps the filter.
      const page = await ok(app.call("GET", url(orgId, "transactions?limit=2&type=adjustment")));
      const next = await ok(
        app.call(
          "GET",
          url(orgId, `transactions?limit=2&type=adjustment&cursor=${page.next_cursor}`),
        ),
      );
      expect(next.data.map((e: { sequence: number }) => e.sequence)).toEqual([21, 20]);
    });

    it("a bad cursor is 400", async () => {
      const orgId = await app.createOrg();
      await grant(orgId, "+1");
      const cursorOf = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");
      for (const cursor of [
        "not-a-cursor",
        cursorOf(["x"]),
        cursorOf([1, 2]),
        cursorOf({}),
        cursorOf(["-1"]),
      ]) {
        expectError(
          await app.call("GET", url(orgId, `transactions?cursor=${encodeURIComponent(cursor)}`)),
          400,
          "invalid_request",
        );
      }
    });

    it("GET transactions/{id} returns one entry; unknown and foreign ids are 404", async () => {
      const { orgId, entries } = await richOrg();
      const other = await app.createOrg();
      const foreign = await grant(other, "+1");
      const entry = await ok(app.call("GET", url(orgId, `transactions/${entries[1]!.id}`)));
      expect(entry).toEqual(entries[1]);
      expectError(
        await app.call("GET", url(orgId, `transactions/${foreign.id}`)),
        404,
        "not_found",
      );
      expectError(
        await app.call("GET", url(orgId, "transactions/txn_00000000000000000000000000")),
        404,
        "not_found",
      );
      expectError(
        await app.call("GET", url(orgId, `transactions/${"x".repeat(65)}`)),
        400,
        "invalid_request",
      );
    });

    it("transactions.csv has a header and one row per entry, equal to the JSON list", async () => {
      const { orgId } = await richOrg();
      await grant(orgId, "+1", { reason: 'He said "hi", then\r\nleft; =SUM(A1)' });
      await grant(orgId, "+2", { reason: '=HYPERLINK("http://evil.example","x")' });
      const res = await app.call("GET", url(orgId, "transactions.csv"));
      expect(res.statusCode, res.body).toBe(200);
      expect(res.headers["content-type"]).toMatch(/^text\/csv/);
      const [header, ...rows] = parseCsv(res.body);
      expect(header).toEqual([
        "id",
        "sequence",
        "created_at",
        "type",
        "amount",
        "balance_after",
        "debt_change",
        "actor_type",
        "actor_id",
        "user_id",
        "reason",
        "description",
        "reference_type",
        "reference_id",
        "allocations",
        "prev_hash",
        "hash",
      ]);
      const json = await transactions(orgId);
      expect(rows).toHaveLength(json.length);
      const col = (name: string) => header!.indexOf(name);
      rows.forEach((row, i) => {
        const e = json[i];
        expect(row).toHaveLength(header!.length);
        expect(row[col("id")]).toBe(e.id);
        expect(row[col("sequence")]).toBe(String(e.sequence));
        expect(row[col("type")]).toBe(e.type);
        expect(row[col("amount")]).toBe(e.amount);
        expect(creditsFromDb(row[col("amount")]!)).toBe(parseCredits(e.amount));
        expect(row[col("balance_after")]).toBe(e.balance_after);
        expect(row[col("created_at")]).toBe(e.created_at);
        expect(row[col("user_id")]).toBe(e.user_id ?? "");
        expect(row[col("hash")]).toBe(e.hash);
        expect(row[col("prev_hash")]).toBe(e.prev_hash);
        expect(row[col("allocations")]).toBe(
          e.allocations
            .map((a: { block_id: string; amount: string }) => `${a.block_id}:${a.amount}`)
            .join(" "),
        );
      });
      // The reason survives quoting; a text a spreadsheet would run as a formula is prefixed
      // with a quote, while negative amounts stay numbers.
      expect(rows[1]![col("reason")]).toBe('He said "hi", then\r\nleft; =SUM(A1)');
      expect(rows[0]![col("reason")]).toBe(`'=HYPERLINK("http://evil.example","x")`);
      expect(rows.some((r) => r[col("amount")]!.startsWith("-"))).toBe(true);

      const filtered = parseCsv(
        (await app.call("GET", url(orgId, "transactions.csv?type=usage"))).body,
      );
      expect(filtered).toHaveLength(2);
      expect(filtered[1]![col("type")]).toBe("usage");
      expectError(
        await app.call("GET", url(orgId, "transactions.csv?type=gift")),
        400,
        "invalid_request",
      );
    });

    it("transactions.csv streams more than one page", async () => {
      const orgId = await app.createOrg();
      const postings = Array.from({ length: 1200 }, (_, i) => ({
        kind: "credit" as const,
        type: "bonus" as const,
        amount: BigInt(i + 1),
        block: { source: "bonus" as const },
        actor: { type: "system" as const, id: "tally" },
      }));
      const posted = await ctx.db
        .transaction()
        .execute((tx) => postEntries(tx, ctx, orgId, postings));
      expect(posted.ok).toBe(true);
      const rows = parseCsv((await app.call("GET", url(orgId, "transactions.csv"))).body).slice(1);
      expect(rows.map((r) => Number(r[1]))).toEqual(
        Array.from({ length: 1200 }, (_, i) => 1200 - i),
      );
      expect(await verify(orgId)).toMatchObject({ ok: true, entries: 1200 });
    });

    it("ledger/verify is ok on a clean ledger and names the head", async () => {
      const { orgId } = await richOrg();
      const [head] = await transactions(orgId);
      expect(await verify(orgId)).toEqual({
        ok: true,
        entries: 5,
        head_hash: head.hash,
        first_bad_sequence: null,
        problems: [],
      });
    });
  });

  describe("verification under traffic, and tampering it must see", () => {
    it("writes committing while it runs never look like a fault", async () => {
      const orgId = await app.createOrg();
      await grant(orgId, "+100");
      for (let i = 0; i < 40; i++) {
        const [report, direct] = await Promise.all([
          verify(orgId),
          verifyLedger(app.runtime.ctx.db, orgId),
          grant(orgId, "+1"),
          grant(orgId, "+1"),
        ]);
        expect([...report.problems, ...direct.problems]).toEqual([]);
        expect(report.ok && direct.ok).toBe(true);
      }
    });

    it("a debt that disagrees with the entries is reported, even when the totals still balance", async () => {
      const orgId = await app.createOrg();
      await grant(orgId, "+10");
      expect(await verify(orgId)).toMatchObject({ ok: true });
      const db = app.runtime.ctx.db;
      // Debt and a block both raised by 1: balance = Σ blocks − debt still holds.
      await db
        .updateTable("org_balances")
        .set((eb) => ({ debt: eb("debt", "+", "1") }))
        .where("org_id", "=", orgId)
        .execute();
      await db
        .updateTable("credit_blocks")
        .set((eb) => ({ remaining: eb("remaining", "+", "1"), original: eb("original", "+", "1") }))
        .where("org_id", "=", orgId)
        .execute();
      expect(await verify(orgId)).toMatchObject({
        ok: false,
        problems: ["balance row: debt ≠ Σ entry debt changes"],
      });
    });
  });

  it("a text Tally composes (a processor's message cut mid-emoji) is stored as hashed: the chain verifies", async () => {
    const orgId = await app.createOrg();
    const ctx = app.runtime.ctx;
    const cut = `Refund refused: card declined 💳`.slice(0, -1); // a lone high surrogate
    const posted = await ctx.db.transaction().execute((tx) =>
      postEntries(tx, ctx, orgId, [
        {
          kind: "credit",
          type: "adjustment",
          amount: parseCredits("5"),
          block: { source: "adjustment" },
          actor: { type: "system", id: "tally" },
          reason: cut,
          description: "nul\u0000inside",
        },
      ]),
    );
    expect(posted.ok).toBe(true);
    const [entry] = await transactions(orgId);
    expect(entry.reason).toBe(`${cut.slice(0, -1)}\ufffd`);
    expect(entry.description).toBe("nulinside");
    expect(await verify(orgId)).toMatchObject({ ok: true, entries: 1 });
  });

  describe("clocks", () => {
    it("credits are drawable at once, even by a writer whose clock is a little behind", async () => {
      const orgId = await app.createOrg();
      await grant(orgId, "+100");
      app.clock.advance(-20); // another instance, 20 ms behind
      try {
        await ok(adjust(orgId, { amount: "-10", reason: "behind" }), 201);
        expect(await balance(orgId)).toMatchObject({ balance: "90" });
        const [entry] = await transactions(orgId);
        expect(entry).toMatchObject({ amount: "-10", debt_change: "0" });
      } finally {
        app.clock.advance(20);
      }
    });

    it("entries never go back in time along their sequence, whatever a writer's clock says", async () => {
      const orgId = await app.createOrg();
      const start = app.clock.now();
      await grant(orgId, "+100");
      app.clock.advance(-20); // a writer whose clock is 20 ms behind the one before
      try {
        await ok(adjust(orgId, { amount: "+1", reason: "behind" }), 201);
        const [second, first] = await transactions(orgId);
        expect(first.created_at).toBe(start.toISOString());
        expect(second.created_at).toBe(start.toISOString());
      } finally {
        app.clock.advance(20);
      }
      app.clock.advance(1_000);
      await ok(adjust(orgId, { amount: "+1", reason: "later" }), 201);
      const [third] = await transactions(orgId);
      expect(third.created_at).toBe(app.clock.now().toISOString());
      // A clock more than a minute behind is a misconfigured instance: it writes at its own time
      // (and is logged) rather than adopting, and spreading, another instance's far-ahead time.
      app.clock.advance(-120_000);
      try {
        await ok(adjust(orgId, { amount: "+1", reason: "far behind" }), 201);
        const [fourth] = await transactions(orgId);
        expect(fourth.created_at).toBe(app.clock.now().toISOString());
      } finally {
        app.clock.advance(120_000);
      }
      expect(await verify(orgId)).toMatchObject({ ok: true, entries: 4 });
    });
  });

  describe("plan eligibility", () => {
    it("an organisation without credits billing gets 403 plan_not_eligible", async () => {
      const orgId = await app.createOrg({ plan: "starter" });
      const adminKey = await app.orgKey(orgId, "admin");
      for (const key of [app.platformKey, adminKey]) {
        for (const path of [
          "balance",
          "credit-blocks",
          "transactions",
          "transactions.csv",
          "transactions/txn_00000000000000000000000000",
          "ledger/verify",
        ]) {
          expectError(await app.call("GET", url(orgId, path), { key }), 403, "plan_not_eligible");
        }
        expectError(
          await adjust(orgId, { amount: "+1", reason: "r" }, { key }),
          403,
          "plan_not_eligible",
        );
      }
      // Once upgraded, the same routes answer.
      await ok(app.call("PATCH", `/v1/organizations/${orgId}`, { body: { plan: "enterprise" } }));
      await grant(orgId, "+1");
      expect((await balance(orgId)).balance).toBe("1");
    });
  });

  describe("block expiry", () => {
    it("expired credits are never drawn; their expiry is written even when the debit is refused", async () => {
      const orgId = await app.createOrg();
      const granted = await grant(orgId, "+50", {
        expires_at: new Date(app.clock.now().getTime() + HOUR).toISOString(),
      });
      const blockId = granted.allocations[0].block_id;
      const before = await snapshot(orgId);
      app.clock.advance(2 * HOUR);

      expectError(
        await adjust(orgId, { amount: "-10", reason: "late" }),
        402,
        "insufficient_credits",
      );
      // The debit is refused, but the expiry found while loading the blocks is a fact and is
      // kept: the block is expired and the balance no longer counts it.
      expect(before).toMatchObject({ balance: "50", last_sequence: 1 });
      const [expiry] = await transactions(orgId);
      expect(expiry).toMatchObject({
        sequence: 2,
        type: "expiry",
        amount: "-50",
        balance_after: "0",
        debt_change: "0",
        allocations: [{ block_id: blockId, amount: "-50" }],
        actor: { type: "system", id: "tally" },
        reference: { type: "credit_block", id: blockId },
        prev_hash: granted.hash,
      });
      expect((await blocks(orgId)).find((b: { id: string }) => b.id === blockId)).toMatchObject({
        status: "expired",
        remaining: "0",
        original: "50",
      });
      expect(await balance(orgId)).toMatchObject({ balance: "0", last_sequence: 2 });
      expect(await verify(orgId)).toMatchObject({ ok: true, entries: 2 });
      // Running the worker again changes nothing here.
      await expireDueBlocks(ctx);
      expect((await balance(orgId)).last_sequence).toBe(2);
    });

    it("a debit after expiry first expires the due block in the same transaction", async () => {
      const orgId = await app.createOrg();
      await grant(orgId, "+5", {
        expires_at: new Date(app.clock.now().getTime() + HOUR).toISOString(),
      });
      await grant(orgId, "+3");
      app.clock.advance(HOUR);
      // Expiry is inclusive at expires_at: -4 cannot be covered by the remaining 3.
      expectError(await adjust(orgId, { amount: "-4", reason: "x" }), 402, "insufficient_credits");
      const debit = await ok(adjust(orgId, { amount: "-3", reason: "x" }), 201);
      // Loading the blocks for the debit expired the due one first, in the same transaction.
      const list = await transactions(orgId);
      expect(list.map((e: { type: string; amount: string }) => [e.type, e.amount])).toEqual([
        ["adjustment", "-3"],
        ["expiry", "-5"],
        ["adjustment", "3"],
        ["adjustment", "5"],
      ]);
      expect(debit).toMatchObject({ sequence: 4, balance_after: "0" });
      expect(await verify(orgId)).toMatchObject({ ok: true, entries: 4 });
    });
  });
});
