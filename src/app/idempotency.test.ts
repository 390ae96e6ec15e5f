import { createHash } from "node:crypto";
import { type AddressInfo, connect } from "node:net";
import { sql } from "kysely";
import { describe, expect, it, vi } from "vitest";
import { createTestApp, waitFor } from "../../test/support/app.js";
import { onPostgres } from "../../test/support/db.js";
import { hashSecret } from "../modules/orgs/keys.js";
import { IngestEngine } from "../modules/usage/engine.js";
import { purgeExpiredIdempotencyKeys, RETENTION_MS } from "./idempotency.js";

/** As the idempotency layer hashes a POST: method, URL and JSON body. */
const requestHash = (url: string, body: unknown) =>
  createHash("sha256")
    .update(`POST ${url}\n${JSON.stringify(body)}`)
    .digest("hex");

describe("Idempotency-Key", async () => {
  const app = await createTestApp();
  const db = app.runtime.ctx.db;
  let n = 0;
  const unique = (label: string) => `${label} ${++n}`;

  const createOrg = (
    name: string,
    key: string,
    options: { apiKey?: string; extra?: object } = {},
  ) =>
    app.call("POST", "/v1/organizations", {
      key: options.apiKey,
      body: { name, ...options.extra },
      headers: { "idempotency-key": key },
    });

  /** Whether the key's request committed something (`effect_committed`). */
  const effect = async (key: string) =>
    (
      await db
        .selectFrom("idempotency_keys")
        .select("effect_committed")
        .where("key", "=", key)
        .executeTakeFirstOrThrow()
    ).effect_committed;

  /** A new organisation with 100 credits, 5 of them held for an hour; the hold's settle path. */
  async function heldOrg() {
    const org = await app.createOrg();
    await app.call("POST", `/v1/organizations/${org}/adjustments`, {
      body: { amount: "+100", reason: "funds" },
    });
    const hold = await app.call("POST", `/v1/organizations/${org}/reservations`, {
      body: { amount: "5", expires_in_seconds: 3600 },
    });
    expect(hold.statusCode).toBe(201);
    return { org, settleUrl: `/v1/organizations/${org}/reservations/${hold.json().id}/settle` };
  }

  async function orgsNamed(name: string): Promise<number> {
    const rows = await db
      .selectFrom("organizations")
      .select("id")
      .where("name", "=", name)
      .execute();
    return rows.length;
  }

  it("replays the first response for the same key and body", async () => {
    const name = unique("Replay");
    const first = await createOrg(name, "k-replay");
    expect(first.statusCode).toBe(201);
    expect(first.headers["idempotent-replayed"]).toBeUndefined();

    const second = await createOrg(name, "k-replay");
    expect(second.statusCode).toBe(201);
    expect(second.headers["idempotent-replayed"]).toBe("true");
    expect(second.headers["content-type"]).toMatch(/^application\/json/);
    expect(second.json()).toEqual(first.json());
    expect(await orgsNamed(name)).toBe(1);
  });

  it("the same body with its keys in another order is the same body", async () => {
    const name = unique("Reordered");
    const first = await app.call("POST", "/v1/organizations", {
      rawBody: JSON.stringify({ name, metadata: { a: "1", b: "2" } }),
      headers: { "idempotency-key": "k-reordered" },
    });
    expect(first.statusCode).toBe(201);
    const second = await app.call("POST", "/v1/organizations", {
      rawBody: JSON.stringify({ metadata: { b: "2", a: "1" }, name }),
      headers: { "idempotency-key": "k-reordered" },
    });
    expect(second.headers["idempotent-replayed"]).toBe("true");
    expect(second.json()).toEqual(first.json());
    expect(await orgsNamed(name)).toBe(1);
  });

  it("an answer stored under the former fingerprint (body text in its own key order) is replayed", async () => {
    const name = unique("Former");
    const body = { name, metadata: { z: "1", a: "2" } };
    await db
      .insertInto("idempotency_keys")
      .values({
        scope: (await app.runtime.ctx.lookups.apiKey(hashSecret(app.platformKey)))!.id,
        key: "k-former",
        request_hash: requestHash("/v1/organizations", body),
        status: "done",
        response_status: 201,
        response_body: JSON.stringify({ stored: "answer" }),
        response_type: "application/json; charset=utf-8",
        created_at: app.clock.now(),
        locked_until: app.clock.now(),
        expires_at: new Date(app.clock.now().getTime() + RETENTION_MS),
      })
      .execute();
    const replay = await app.call("POST", "/v1/organizations", {
      rawBody: JSON.stringify(body),
      headers: { "idempotency-key": "k-former" },
    });
    expect(replay.statusCode).toBe(201);
    expect(replay.json()).toEqual({ stored: "answer" });
    expect(await orgsNamed(name)).toBe(0);
  });

  it("without a key, each POST runs", async () => {
    const name = unique("NoKey");
    await app.call("POST", "/v1/organizations", { body: { name } });
    await app.call("POST", "/v1/organizations", { body: { name } });
    expect(await orgsNamed(name)).toBe(2);
  });

  it("the same key with another body or another path is 409 idempotency_conflict", async () => {
    const name = unique("Conflict");
    expect((await createOrg(name, "k-conflict")).statusCode).toBe(201);
    const other = await createOrg(`${name} changed`, "k-conflict");
    expect(other.statusCode).toBe(409);
    expect(other.json().error.code).toBe("idempotency_conflict");
    const otherPath = await app.call("POST", "/v1/platform-keys", {
      body: { name },
      headers: { "idempotency-key": "k-conflict" },
    });
    expect(otherPath.statusCode).toBe(409);
    expect(otherPath.json().error.code).toBe("idempotency_conflict");
    expect(await orgsNamed(`${name} changed`)).toBe(0);
  });

  it("a key longer than 255 characters is 400; 255 is fine", async () => {
    const long = await createOrg(unique("Long"), "k".repeat(256));
    expect(long.statusCode).toBe(400);
    expect(long.json().error).toMatchObject({
      code: "invalid_request",
      details: [expect.objectContaining({ field: "header.idempotency-key" })],
    });
    expect((await createOrg(unique("Long"), "k".repeat(255))).statusCode).toBe(201);
  });

  it("keys are scoped per API key", async () => {
    const other = (await app.call("POST", "/v1/platform-keys", { body: { name: "second" } })).json()
      .key;
    const name = unique("Scoped");
    const a = await createOrg(name, "k-scoped");
    const b = await createOrg(name, "k-scoped", { apiKey: other });
    expect(a.statusCode).toBe(201);
    expect(b.statusCode).toBe(201);
    expect(b.headers["idempotent-replayed"]).toBeUndefined();
    expect(b.json().id).not.toBe(a.json().id);
    expect(await orgsNamed(name)).toBe(2);
    // The other key's record replays only for that key.
    const again = await createOrg(name, "k-scoped", { apiKey: other });
    expect(again.json().id).toBe(b.json().id);
  });

  it("concurrent requests with one key run once", async () => {
    const name = unique("Concurrent");
    const responses = await Promise.all(
      Array.from({ length: 10 }, () => createOrg(name, "k-concurrent")),
    );
    const fresh = responses.filter(
      (r) => r.statusCode === 201 && r.headers["idempotent-replayed"] === undefined,
    );
    expect(fresh).toHaveLength(1);
    for (const r of responses) {
      if (r === fresh[0]) continue;
      if (r.statusCode === 201) {
        expect(r.headers["idempotent-replayed"]).toBe("true");
        expect(r.json()).toEqual(fresh[0]!.json());
      } else {
        expect(r.statusCode).toBe(409);
        expect(r.json().error.code).toBe("idempotency_in_progress");
      }
    }
    expect(await orgsNamed(name)).toBe(1);
  });

  it("a request still running is 409 idempotency_in_progress; a dead claim is re-run only if nothing of it committed", async () => {
    const name = unique("Running");
    expect((await createOrg(name, "k-running")).statusCode).toBe(201);
    // As if the first request had died after its effect committed, before answering.
    await db
      .updateTable("idempotency_keys")
      .set({ status: "in_progress", locked_until: new Date(app.clock.now().getTime() + 60_000) })
      .where("key", "=", "k-running")
      .execute();
    const busy = await createOrg(name, "k-running");
    expect(busy.statusCode).toBe(409);
    expect(busy.json().error.code).toBe("idempotency_in_progress");
    // Another body is still a conflict, not "in progress".
    expect((await createOrg(`${name}!`, "k-running")).json().error.code).toBe(
      "idempotency_conflict",
    );

    // Its effect committed (the organisation exists): never re-run, however long ago it started.
    app.clock.advance(60 * 60_000);
    const lost = await createOrg(name, "k-running");
    expect(lost.json().error.code).toBe("idempotency_in_progress");
    expect(lost.json().error.message).toMatch(/applied/);
    expect(await orgsNamed(name)).toBe(1);

    // Once the key expires (24 h) it is free again.
    app.clock.advance(24 * 60 * 60_000);
    const retried = await createOrg(name, "k-running");
    expect(retried.statusCode).toBe(201);
    expect(retried.headers["idempotent-replayed"]).toBeUndefined();
    expect(await orgsNamed(name)).toBe(2);
  });

  it("a claim whose request died before committing anything is taken over after a minute", async () => {
    const name = unique("Died early");
    // The claim of a request that died before any write: nothing of it is durable.
    await db
      .insertInto("idempotency_keys")
      .values({
        scope: (await app.runtime.ctx.lookups.apiKey(hashSecret(app.platformKey)))!.id,
        key: "k-died",
        request_hash: requestHash("/v1/organizations", { name }),
        status: "in_progress",
        response_status: null,
        response_body: null,
        response_type: null,
        created_at: app.clock.now(),
        locked_until: new Date(app.clock.now().getTime() + 60_000),
        expires_at: new Date(app.clock.now().getTime() + RETENTION_MS),
      })
      .execute();
    expect((await createOrg(name, "k-died")).json().error.code).toBe("idempotency_in_progress");
    app.clock.advance(61_000);
    const rerun = await createOrg(name, "k-died");
    expect(rerun.statusCode).toBe(201);
    expect(await orgsNamed(name)).toBe(1);
  });

  it("marks the claim in the transaction of each write the request commits, and only then", async () => {
    const org = await app.createOrg();
    // A ledger adjustment: an explicit transaction.
    const adjusted = await app.call("POST", `/v1/organizations/${org}/adjustments`, {
      body: { amount: "+5", reason: "marked" },
      headers: { "idempotency-key": "k-tx" },
    });
    expect(adjusted.statusCode).toBe(201);
    expect(await effect("k-tx")).toBe(true);
    // An organisation: one autocommit insert, wrapped in a transaction with the mark.
    expect((await createOrg(unique("Marked"), "k-autocommit")).statusCode).toBe(201);
    expect(await effect("k-autocommit")).toBe(true);
    // Refused by the handler (an unknown user): nothing written, nothing marked.
    const refused = await app.call("POST", `/v1/organizations/${org}/portal-sessions`, {
      body: { user_id: "nobody" },
      headers: { "idempotency-key": "k-refused" },
    });
    expect(refused.statusCode).toBeGreaterThanOrEqual(400);
    expect(await effect("k-refused")).toBe(false);
  });

  it("usage and settles, written by a flush shared with other requests, mark their claims too", async () => {
    const { org, settleUrl } = await heldOrg();
    const event = (id: string) => ({
      id,
      org_id: org,
      type: "compute",
      meter: "compute.vcpu_seconds",
      quantity: "1",
    });
    // Both in one flush, with a request without a key beside them.
    const [usage, settle, plain] = await Promise.all([
      app.call("POST", "/v1/usage-events", {
        body: event("k-e1"),
        headers: { "idempotency-key": "k-usage" },
      }),
      app.call("POST", settleUrl, {
        body: { events: [event("k-e2")] },
        headers: { "idempotency-key": "k-settle" },
      }),
      app.call("POST", "/v1/usage-events", { body: event("k-e3") }),
    ]);
    expect([usage.statusCode, settle.statusCode, plain.statusCode]).toEqual([200, 200, 200]);
    expect(await effect("k-usage")).toBe(true);
    expect(await effect("k-settle")).toBe(true);
    // As if both had died after committing, before storing their answers: a retry is told the
    // request was applied (it ran again before: a settle then answered 409 invalid_state, kept
    // for 24 h, and usage events `duplicate`).
    await db
      .updateTable("idempotency_keys")
      .set({ status: "in_progress", locked_until: app.clock.now() })
      .where("key", "in", ["k-usage", "k-settle"])
      .execute();
    app.clock.advance(1000);
    for (const [url, body, key] of [
      ["/v1/usage-events", event("k-e1"), "k-usage"],
      [settleUrl, { events: [event("k-e2")] }, "k-settle"],
    ] as const) {
      const retry = await app.call("POST", url, { body, headers: { "idempotency-key": key } });
      expect(retry.statusCode, key).toBe(409);
      expect(retry.json().error.code).toBe("idempotency_in_progress");
      expect(retry.json().error.message).toMatch(/applied/);
    }
    // A request the engine refuses (a conflicting event) commits nothing and marks nothing.
    const conflict = await app.call("POST", "/v1/usage-events", {
      body: { ...event("k-e1"), quantity: "2" },
      headers: { "idempotency-key": "k-conflict" },
    });
    expect(conflict.statusCode).toBe(409);
    expect(await effect("k-conflict")).toBe(false);
  });

  it("a settle taken over by its retry while waiting for its flush applies nothing; the retry does", async () => {
    const { settleUrl } = await heldOrg();
    const body = {
      events: [{ id: "tk-1", type: "compute", meter: "compute.vcpu_seconds", quantity: "1000" }],
    };
    // Each request waits at the engine until the test lets it through.
    const submit = IngestEngine.prototype.submit;
    const gates: (() => void)[] = [];
    const spy = vi.spyOn(IngestEngine.prototype, "submit").mockImplementation(function (
      this: IngestEngine,
      request,
    ) {
      return new Promise<void>((open) => gates.push(open)).then(() => submit.call(this, request));
    });
    try {
      const headers = { "idempotency-key": "k-takeover" };
      const first = app.call("POST", settleUrl, { body, headers });
      await waitFor(async () => gates.length === 1);
      app.clock.advance(61_000); // slow, nothing committed: a retry may take the key over
      const retry = app.call("POST", settleUrl, { body, headers });
      await waitFor(async () => gates.length === 2);
      gates[0]!(); // the slow request's flush comes first
      const r1 = await first;
      expect(r1.statusCode).toBe(409);
      expect(r1.json().error.code).toBe("idempotency_in_progress");
      gates[1]!();
      const r2 = await retry;
      expect(r2.statusCode).toBe(200);
      expect(r2.json().data[0]).toMatchObject({ id: "tk-1", status: "accepted" });
      const replay = await app.call("POST", settleUrl, { body, headers });
      expect(replay.headers["idempotent-replayed"]).toBe("true");
      expect(replay.json()).toEqual(r2.json());
    } finally {
      spy.mockRestore();
    }
  });

  it("4xx responses of the handler are replayed too", async () => {
    const org = await app.createOrg();
    const url = `/v1/organizations/${org}/portal-sessions`;
    const headers = { "idempotency-key": "k-4xx" };
    const first = await app.call("POST", url, { body: { user_id: "later" }, headers });
    expect(first.statusCode).toBe(400);
    // The request would now succeed, but the recorded answer stands.
    await app.call("POST", `/v1/organizations/${org}/users`, {
      body: { id: "later", email: "l@example.com", role: "viewer" },
    });
    const replay = await app.call("POST", url, { body: { user_id: "later" }, headers });
    expect(replay.statusCode).toBe(400);
    expect(replay.headers["idempotent-replayed"]).toBe("true");
    expect(replay.json()).toEqual(first.json());
    const fresh = await app.call("POST", url, {
      body: { user_id: "later" },
      headers: { "idempotency-key": "k-4xx-2" },
    });
    expect(fresh.statusCode).toBe(201);
  });

  it("requests refused before they run (validation, authentication) do not use up the key", async () => {
    const invalid = await app.call("POST", "/v1/organizations", {
      body: { name: "" },
      headers: { "idempotency-key": "k-invalid" },
    });
    expect(invalid.statusCode).toBe(400);
    const unauthenticated = await app.call("POST", "/v1/organizations", {
      key: "tally_nope",
      body: { name: "x" },
      headers: { "idempotency-key": "k-invalid" },
    });
    expect(unauthenticated.statusCode).toBe(401);
    const name = unique("AfterInvalid");
    const ok = await createOrg(name, "k-invalid");
    expect(ok.statusCode).toBe(201);
    expect(ok.headers["idempotent-replayed"]).toBeUndefined();
  });

  it("an invalid usage body does not use up the key (validated before the claim, as schemas are)", async () => {
    const org = await app.createOrg();
    const event = { id: "e-1", org_id: org, type: "compute", meter: "compute.vcpu_seconds" };
    const headers = { "idempotency-key": "k-usage-typo" };
    const bad = await app.call("POST", "/v1/usage-events", {
      body: { ...event, quantity: 1 },
      headers,
    });
    expect(bad.statusCode).toBe(400);
    const fixed = await app.call("POST", "/v1/usage-events", {
      body: { ...event, quantity: "1" },
      headers,
    });
    expect(fixed.statusCode).toBe(200);
    expect(fixed.headers["idempotent-replayed"]).toBeUndefined();
    expect(fixed.json().data[0]).toMatchObject({ id: "e-1", status: "accepted" });
  });

  it("the user a platform acts for (On-Behalf-Of) is part of the request: another user is a conflict", async () => {
    const org = await app.createOrg();
    for (const id of ["alice", "bob"]) {
      await app.call("POST", `/v1/organizations/${org}/users`, {
        body: { id, email: `${id}@example.com`, role: "admin" },
      });
    }
    const adjust = (user: string) =>
      app.call("POST", `/v1/organizations/${org}/adjustments`, {
        body: { amount: "+1", reason: "gift" },
        headers: { "idempotency-key": "k-obo", "on-behalf-of": user },
      });
    const alice = await adjust("alice");
    expect(alice.statusCode, alice.body).toBe(201);
    expect(alice.json().user_id).toBe("alice");
    expect((await adjust("alice")).headers["idempotent-replayed"]).toBe("true");
    const bob = await adjust("bob");
    expect(bob.statusCode).toBe(409);
    expect(bob.json().error.code).toBe("idempotency_conflict");
  });

  it("a repeated Idempotency-Key header is 400 (Node would join the values into another key)", async () => {
    await app.runtime.app.listen({ port: 0, host: "127.0.0.1" });
    const { port } = app.runtime.app.server.address() as AddressInfo;
    const name = unique("DupHeader");
    const send = (keys: string[]) =>
      new Promise<string>((resolve, reject) => {
        const body = JSON.stringify({ name });
        const socket = connect(port, "127.0.0.1", () => {
          socket.write(
            [
              "POST /v1/organizations HTTP/1.1",
              "host: tally",
              `authorization: Bearer ${app.platformKey}`,
              ...keys.map((k) => `idempotency-key: ${k}`),
              "content-type: application/json",
              `content-length: ${Buffer.byteLength(body)}`,
              "connection: close",
              "",
              body,
            ].join("\r\n"),
          );
        });
        let answer = "";
        socket.on("data", (d) => {
          answer += d;
        });
        socket.on("end", () => resolve(answer));
        socket.on("error", reject);
      });
    const twice = await send(["k-dup", "k-dup"]);
    expect(twice.split("\r\n")[0]).toBe("HTTP/1.1 400 Bad Request");
    expect(twice).toContain("given more than once");
    expect(await orgsNamed(name)).toBe(0);
    const once = await send(["k-dup"]);
    expect(once.split("\r\n")[0]).toBe("HTTP/1.1 201 Created");
    expect(await orgsNamed(name)).toBe(1);
  });

  it("records expire after 24 h: the key can be used again and the purge deletes them", async () => {
    const name = unique("Expiring");
    const first = await createOrg(name, "k-expiring");
    expect(first.statusCode).toBe(201);
    app.clock.advance(RETENTION_MS - 1000);
    const stillStored = await createOrg(name, "k-expiring");
    expect(stillStored.headers["idempotent-replayed"]).toBe("true");
    const young = await createOrg(unique("Young"), "k-young");
    expect(young.statusCode).toBe(201);

    app.clock.advance(1000 + 1000);
    const reused = await createOrg(name, "k-expiring");
    expect(reused.statusCode).toBe(201);
    expect(reused.headers["idempotent-replayed"]).toBeUndefined();
    expect(reused.json().id).not.toBe(first.json().id);
    expect(await orgsNamed(name)).toBe(2);

    const before = await db.selectFrom("idempotency_keys").select("key").execute();
    const expired = before.length - 2; // all but k-young and the reused k-expiring
    expect(expired).toBeGreaterThan(0);
    expect(await purgeExpiredIdempotencyKeys(db, app.clock.now())).toBe(expired);
    const left = await db.selectFrom("idempotency_keys").select("key").orderBy("key").execute();
    expect(left.map((r) => r.key)).toEqual(["k-expiring", "k-young"]);
    // The purge runs as a background task too.
    app.clock.advance(RETENTION_MS);
    await app.runtime.workers.runAllOnce();
    expect(await db.selectFrom("idempotency_keys").select("key").execute()).toEqual([]);
  });
});

describe.runIf(onPostgres)("Idempotency-Key: a request that outlived its claim", async () => {
  const app = await createTestApp();
  const db = app.runtime.ctx.db;

  it("cannot commit once a retry took its key over: the key has one effect", async () => {
    const orgId = await app.createOrg();
    // A first posting creates the organisation's balance row.
    const opened = await app.call("POST", `/v1/organizations/${orgId}/adjustments`, {
      body: { amount: "+1", reason: "open" },
    });
    expect(opened.statusCode).toBe(201);
    const adjust = () =>
      app.call("POST", `/v1/organizations/${orgId}/adjustments`, {
        body: { amount: "+10", reason: "slow" },
        headers: { "idempotency-key": "k-outlived" },
      });
    const waitingOnLocks = async () => {
      const { rows } = await sql<{ n: string }>`
        select count(*) as n from pg_stat_activity
        where datname = current_database() and wait_event_type = 'Lock'`.execute(db);
      return Number(rows[0]!.n);
    };
    // Another transaction holds the organisation's balance row, so the first request stalls
    // after its claim, before any commit — like a request stuck for over a minute.
    let unlock!: () => void;
    const held = new Promise<void>((r) => {
      unlock = r;
    });
    const holder = db.transaction().execute(async (trx) => {
      await sql`select 1 from org_balances where org_id = ${orgId} for update`.execute(trx);
      await held;
    });
    const claimToken = async () =>
      (
        await db
          .selectFrom("idempotency_keys")
          .select("claim_token")
          .where("key", "=", "k-outlived")
          .executeTakeFirst()
      )?.claim_token;
    try {
      const first = adjust();
      await waitFor(async () => (await waitingOnLocks()) >= 1);
      const firstToken = await claimToken();
      expect(firstToken).toEqual(expect.any(String));
      // A minute later the client retries; nothing of the first request committed, so the retry
      // takes the key over — and stalls on the same lock.
      app.clock.advance(61_000);
      const retry = adjust();
      await waitFor(async () => (await waitingOnLocks()) >= 2);
      expect(await claimToken()).not.toBe(firstToken);
      unlock();
      await holder;
      const answers = await Promise.all([first, retry]);
      expect(answers.map((r) => r.statusCode)).toEqual([409, 201]);
      expect(answers[0]!.json().error.code).toBe("idempotency_in_progress");
    } finally {
      unlock();
      await holder.catch(() => {});
    }
    const balance = await app.call("GET", `/v1/organizations/${orgId}/balance`);
    expect(balance.json().balance).toBe("11");
    // The stored answer is the retry's, and it replays.
    const replay = await adjust();
    expect(replay.statusCode).toBe(201);
    expect(replay.headers["idempotent-replayed"]).toBe("true");
  });
});
