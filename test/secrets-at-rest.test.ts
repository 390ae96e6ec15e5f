import { sql } from "kysely";
import { describe, expect, it } from "vitest";
import { createTestApp } from "./support/app.js";

/**
 * Secrets handed out once — API keys, portal links, browser sessions — are stored only as
 * SHA-256 hashes, wherever they pass: idempotent replays included. Webhook signing secrets must
 * stay usable for signing, so they are kept only in `webhook_endpoints.secret`.
 */
describe("secrets at rest", async () => {
  const app = await createTestApp();
  const db = app.runtime.ctx.db;

  /** The tables (and columns) of the database whose content contains `needle`. */
  async function whereStored(needle: string): Promise<string[]> {
    const tables = await sql<{ table_name: string }>`
      select table_name from information_schema.tables
      where table_schema = current_schema() and table_type = 'BASE TABLE'`.execute(db);
    const found: string[] = [];
    for (const { table_name } of tables.rows) {
      const rows = await sql<{
        row: string;
      }>`select t::text as row from ${sql.table(table_name)} t`.execute(db);
      if (rows.rows.some((r) => r.row.includes(needle))) found.push(table_name);
    }
    return found;
  }

  const org = await app.createOrg();
  const user = await app.call("POST", `/v1/organizations/${org}/users`, {
    body: { id: "ada", email: "ada@example.com", role: "admin" },
  });
  expect(user.statusCode).toBe(201);

  /** The same request twice with one Idempotency-Key: the second answer is a replay. */
  async function twice(url: string, body: unknown) {
    const headers = { "idempotency-key": `secret-${url}` };
    const first = await app.call("POST", url, { body, headers });
    const again = await app.call("POST", url, { body, headers });
    expect(first.statusCode, first.body).toBe(201);
    expect(again.headers["idempotent-replayed"]).toBe("true");
    expect(again.body).toBe(first.body);
    return first.json();
  }

  it("an organisation key is stored only as its hash, replayed or not", async () => {
    const created = await twice(`/v1/organizations/${org}/api-keys`, { name: "k", role: "read" });
    expect(created.key).toMatch(/^tally_/);
    expect(await whereStored(created.key)).toEqual([]);
    expect(await whereStored(created.key.slice(12))).toEqual([]);
    expect(
      (await app.call("GET", `/v1/organizations/${org}`, { key: created.key })).statusCode,
    ).toBe(200);
  });

  it("a platform key is stored only as its hash", async () => {
    const created = await twice("/v1/platform-keys", { name: "p" });
    expect(await whereStored(created.key)).toEqual([]);
  });

  it("a portal link's token is stored only as its hash", async () => {
    const link = await twice(`/v1/organizations/${org}/portal-sessions`, { user_id: "ada" });
    const token = new URL(link.url).searchParams.get("token")!;
    expect(token).toMatch(/^tps_/);
    expect(await whereStored(token)).toEqual([]);
  });

  it("a webhook secret is kept only where deliveries are signed", async () => {
    const created = await twice("/v1/webhook-endpoints", { url: "http://93.184.215.14/x" });
    expect(created.secret).toMatch(/^whsec_/);
    expect(await whereStored(created.secret)).toEqual(["webhook_endpoints"]);
    // Never shown again.
    const read = await app.call("GET", `/v1/webhook-endpoints/${created.id}`);
    expect(read.body).not.toContain(created.secret);
    const list = await app.call("GET", "/v1/webhook-endpoints");
    expect(list.body).not.toContain(created.secret);
  });

  it("a replay is only for the caller that made the request", async () => {
    const other = await app.call("POST", "/v1/platform-keys", { body: { name: "other" } });
    const headers = { "idempotency-key": "mine-only" };
    const url = `/v1/organizations/${org}/api-keys`;
    const body = { name: "mine", role: "read" };
    const first = await app.call("POST", url, { body, headers });
    const theirs = await app.call("POST", url, { body, headers, key: other.json().key });
    expect(theirs.statusCode).toBe(201);
    expect(theirs.headers["idempotent-replayed"]).toBeUndefined();
    expect(theirs.json().key).not.toBe(first.json().key);
  });

  it("a stored answer that was tampered with is not replayed", async () => {
    const headers = { "idempotency-key": "tampered" };
    const url = `/v1/organizations/${org}/api-keys`;
    const body = { name: "t", role: "read" };
    expect((await app.call("POST", url, { body, headers })).statusCode).toBe(201);
    const row = await db
      .selectFrom("idempotency_keys")
      .select(["scope", "response_body"])
      .where("key", "=", "tampered")
      .executeTakeFirstOrThrow();
    const stored = row.response_body!;
    const flipped =
      stored.slice(0, -4) + (stored.slice(-4, -3) === "A" ? "B" : "A") + stored.slice(-3);
    await db
      .updateTable("idempotency_keys")
      .set({ response_body: flipped })
      .where("key", "=", "tampered")
      .execute();
    const again = await app.call("POST", url, { body, headers });
    expect(again.statusCode).toBe(409);
    expect(again.json().error.code).toBe("idempotency_conflict");
  });
});
