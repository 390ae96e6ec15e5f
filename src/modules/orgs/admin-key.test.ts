import { describe, expect, it } from "vitest";
import { createTestApp } from "../../../test/support/app.js";
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

  it("changing it rotates the key: the earlier value stops working", async () => {
    const other = await app.call("POST", "/v1/platform-keys", { body: { name: "ops" } });
    expect(other.statusCode).toBe(201);
    await startWith(SECOND);
    expect(await status(SECOND)).toBe(200);
    expect(await status(FIRST)).toBe(401);
    // Keys created through the API are not touched.
    expect(await status(other.json().key)).toBe(200);
    expect(await status(app.platformKey)).toBe(200);
    // Going back works too, and the second value stops.
    await startWith(FIRST);
    expect(await status(FIRST)).toBe(200);
    expect(await status(SECOND)).toBe(401);
  });

  it("starting again with the same value changes nothing", async () => {
    const keys = () =>
      ctx.db.selectFrom("api_keys").select(["id", "revoked_at"]).orderBy("id").execute();
    const before = await keys();
    await startWith(FIRST);
    await startWith(FIRST);
    expect(await keys()).toEqual(before);
    expect(await status(FIRST)).toBe(200);
  });
});
