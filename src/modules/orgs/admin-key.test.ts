import { describe, expect, it } from "vitest";
import { createTestApp } from "../../../test/support/app.js";
import { revokeApiKeyById } from "./orgs.repo.js";
import { bootstrapPlatformKey } from "./orgs.service.js";

const FIRST = "first-admin-key-0123456789abcdef";
const SECOND = "second-admin-key-0123456789abcdef";

describe("TALLY_ADMIN_KEY", async () => {
  const app = await createTestApp({ env: { TALLY_ADMIN_KEY: FIRST } });
  const ctx = app.runtime.ctx;
  const status = async (key: string) =>
    (await app.call("GET", "/v1/organizations", { key })).statusCode;
  /** A start with TALLY_ADMIN_KEY set to `adminKey`. */
  const startWith = (adminKey: string) =>
    bootstrapPlatformKey({ ...ctx, config: { ...ctx.config, adminKey } });

  it("is accepted as a platform key, stored only as its hash", async () => {
    expect(await status(FIRST)).toBe(200);
    const rows = JSON.stringify(await ctx.db.selectFrom("api_keys").selectAll().execute());
    expect(rows).not.toContain(FIRST);
  });

  it("its listed prefix shows at most a quarter of it, also for a key listed before with more", async () => {
    // What `tally keys list` shows.
    const listed = async () =>
      (
        await ctx.db
          .selectFrom("api_keys")
          .select("key_prefix")
          .where("name", "=", "TALLY_ADMIN_KEY")
          .where("revoked_at", "is", null)
          .executeTakeFirstOrThrow()
      ).key_prefix;
    expect(await listed()).toBe(FIRST.slice(0, 8));
    await ctx.db
      .updateTable("api_keys")
      .set({ key_prefix: FIRST.slice(0, 12) })
      .where("name", "=", "TALLY_ADMIN_KEY")
      .execute();
    await startWith(FIRST);
    expect(await listed()).toBe(FIRST.slice(0, 8));
  });

  it("changing it rotates the key: the earlier value stops working", async () => {
    const other = await app.call("POST", "/v1/platform-keys", { body: { name: "ops" } });
    expect(other.statusCode).toBe(201);
    // Its name is reserved: a key created under it would be revoked by the next start.
    const named = await app.call("POST", "/v1/platform-keys", {
      body: { name: "TALLY_ADMIN_KEY" },
    });
    expect(named.statusCode).toBe(400);
    expect(named.json().error.details).toEqual([
      { field: "/name", message: expect.stringMatching(/reserved/) },
    ]);
    await startWith(SECOND);
    expect(await status(SECOND)).toBe(200);
    expect(await status(FIRST)).toBe(401);
    // Keys created through the API are not touched.
    expect(await status(other.json().key)).toBe(200);
    expect(await status(app.platformKey)).toBe(200);
    // A rotated-out value never comes back: an instance started with it refuses to start, and
    // the current value keeps working.
    await expect(startWith(FIRST)).rejects.toThrow(/TALLY_ADMIN_KEY: this key .* was revoked/);
    expect(await status(FIRST)).toBe(401);
    expect(await status(SECOND)).toBe(200);
  });

  it("a value revoked by hand stays revoked when an instance starts with it", async () => {
    const THIRD = "third-admin-key-0123456789abcdef";
    await startWith(THIRD);
    const key = await ctx.db
      .selectFrom("api_keys")
      .select("id")
      .where("name", "=", "TALLY_ADMIN_KEY")
      .where("revoked_at", "is", null)
      .executeTakeFirstOrThrow();
    // What `tally keys revoke` does.
    await revokeApiKeyById(ctx.db, key.id, app.clock.now());
    ctx.lookups.invalidate();
    expect(await status(THIRD)).toBe(401);
    await expect(startWith(THIRD)).rejects.toThrow(/was revoked/);
    expect(await status(THIRD)).toBe(401);
  });

  it("starting again with the same value changes nothing", async () => {
    const keys = () =>
      ctx.db.selectFrom("api_keys").select(["id", "revoked_at"]).orderBy("id").execute();
    const FOURTH = "fourth-admin-key-0123456789abcdef";
    await startWith(FOURTH);
    const before = await keys();
    await startWith(FOURTH);
    await startWith(FOURTH);
    expect(await keys()).toEqual(before);
    expect(await status(FOURTH)).toBe(200);
  });
});
