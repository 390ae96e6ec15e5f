import type { TypeBoxTypeProvider } from "@fastify/type-provider-typebox";
import { Type } from "@sinclair/typebox";
import Fastify from "fastify";
import { afterAll, describe, expect, it } from "vitest";
import {
  type App,
  decodeCursor,
  encodeCursor,
  filterBound,
  findUnstorableText,
  installErrorHandling,
  installValidation,
  MAX_DETAILS,
  MAX_JSON_DEPTH,
  parseInstant,
  ROUTER_OPTIONS,
} from "./http.js";

/** The HTTP plumbing on a bare Fastify, without a database. */
async function bareApp(): Promise<App> {
  const app = Fastify({
    ...ROUTER_OPTIONS,
  }).withTypeProvider<TypeBoxTypeProvider>() as unknown as App;
  installValidation(app);
  installErrorHandling(app);
  app.get(
    "/things/:id",
    {
      schema: {
        params: Type.Object({ id: Type.String({ maxLength: 160 }) }),
        querystring: Type.Object(
          { limit: Type.Optional(Type.Integer({ minimum: 1 })) },
          { additionalProperties: false },
        ),
      },
    },
    async (request) => ({ id: request.params.id, limit: request.query.limit ?? null }),
  );
  app.post(
    "/things",
    {
      schema: {
        body: Type.Object(
          {
            kind: Type.Union([Type.Literal("a"), Type.Literal("b")]),
            nested: Type.Optional(Type.Object({ n: Type.String() })),
          },
          { additionalProperties: false },
        ),
      },
    },
    async () => ({ ok: true }),
  );
  app.post(
    "/lists",
    {
      schema: {
        body: Type.Object({
          items: Type.Array(
            Type.Object({
              kind: Type.Union([Type.Literal("a"), Type.Literal("b")]),
              nested: Type.Object({ n: Type.String() }),
            }),
            { maxItems: 1000 },
          ),
        }),
      },
    },
    async () => ({}),
  );
  app.get("/boom", async () => {
    throw new Error("secret internals");
  });
  // Database errors a request can meet without being at fault.
  for (const code of ["40P01", "40001", "22003"]) {
    app.get(`/db/${code}`, async () => {
      throw Object.assign(new Error(`database said ${code}`), { code });
    });
  }
  await app.ready();
  afterAll(() => app.close());
  return app;
}

describe("http plumbing", async () => {
  const app = await bareApp();

  it("accepts path parameters of ext: + 128 characters", async () => {
    const id = `ext:${"x".repeat(128)}`;
    const res = await app.inject({ method: "GET", url: `/things/${id}` });
    expect(res.statusCode).toBe(200);
    expect(res.json().id).toBe(id);
  });

  it("answers an over-long path parameter and a bad URL in the envelope", async () => {
    const long = await app.inject({ method: "GET", url: `/things/${"x".repeat(600)}` });
    expect(long.statusCode).toBe(404);
    expect(long.json().error.code).toBe("not_found");
    const bad = await app.inject({ method: "GET", url: "/things/%E0%A4%A" });
    expect(bad.statusCode).toBe(400);
    expect(bad.json().error.code).toBe("invalid_request");
  });

  it("names query problems query.<name> and coerces query scalars", async () => {
    expect((await app.inject({ method: "GET", url: "/things/x?limit=3" })).json().limit).toBe(3);
    const res = await app.inject({ method: "GET", url: "/things/x?limit=0&extra=1" });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.details).toHaveLength(2);
    expect(res.json().error.details).toEqual(
      expect.arrayContaining([
        { field: "query.limit", message: "must be >= 1" },
        { field: "query.extra", message: "unknown field" },
      ]),
    );
  });

  it("takes query integers only as plain decimal integers", async () => {
    for (const limit of ["0x10", "0b11", "1e1", "1.0", "%205", "+5"]) {
      const res = await app.inject({ method: "GET", url: `/things/x?limit=${limit}` });
      expect(res.statusCode, limit).toBe(400);
      expect(res.json().error.details).toEqual([
        { field: "query.limit", message: "must be a decimal integer" },
      ]);
    }
    expect((await app.inject({ method: "GET", url: "/things/x?limit=007" })).json().limit).toBe(7);
  });

  it("lists what is wrong with a body that is not JSON", async () => {
    const res = await app.inject({
      method: "POST",
      url: "/things",
      headers: { "content-type": "application/json" },
      payload: '{"kind":',
    });
    expect(res.statusCode).toBe(400);
    const details = res.json().error.details;
    expect(details).toHaveLength(1);
    expect(details[0].message).toEqual(expect.any(String));
  });

  it("names body problems by JSON pointer, one per union, without coercion", async () => {
    const res = await app.inject({
      method: "POST",
      url: "/things",
      payload: { kind: "c", nested: { n: 5 } },
    });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.details).toEqual([
      { field: "/kind", message: 'must be one of "a", "b"' },
      { field: "/nested/n", message: "must be string" },
    ]);
    const missing = await app.inject({ method: "POST", url: "/things", payload: {} });
    expect(missing.json().error.details).toEqual([{ field: "/kind", message: "is required" }]);
  });

  it("a union's problem goes to the item it is about; thousands of bad items give the first details, fast", async () => {
    const items = (n: number) => ({
      items: Array.from({ length: n }, (_, i) => ({ kind: i === 1 ? "a" : i, nested: { n: 1 } })),
    });
    const few = await app.inject({ method: "POST", url: "/lists", payload: items(3) });
    expect(few.statusCode).toBe(400);
    expect(few.json().error.details).toEqual([
      { field: "/items/0/kind", message: 'must be one of "a", "b"' },
      { field: "/items/0/nested/n", message: "must be string" },
      { field: "/items/1/nested/n", message: "must be string" },
      { field: "/items/2/kind", message: 'must be one of "a", "b"' },
      { field: "/items/2/nested/n", message: "must be string" },
    ]);
    // 10,000 items past maxItems (the validator reports their problems besides), 19,999 of
    // them: was cubic in the problems (minutes of one core, every other request waiting).
    const many = await app.inject({ method: "POST", url: "/lists", payload: items(10_000) });
    expect(many.statusCode).toBe(400);
    const details = many.json().error.details;
    expect(details).toHaveLength(MAX_DETAILS + 1);
    expect(details[0]).toEqual({ field: "/items", message: "must NOT have more than 1000 items" });
    expect(details[1]).toEqual({ field: "/items/0/kind", message: 'must be one of "a", "b"' });
    expect(details.at(-1)).toEqual({ message: `and ${1 + 19_999 - MAX_DETAILS} more problems` });
  });

  it("hides internals of unexpected errors behind 500 internal", async () => {
    const res = await app.inject({ method: "GET", url: "/boom" });
    expect(res.statusCode).toBe(500);
    expect(res.json().error.code).toBe("internal");
    expect(res.body).not.toContain("secret internals");
  });

  it("a deadlock or serialization failure is 503 with Retry-After; an overflow is 400", async () => {
    for (const code of ["40P01", "40001"]) {
      const res = await app.inject({ method: "GET", url: `/db/${code}` });
      expect(res.statusCode).toBe(503);
      expect(res.headers["retry-after"]).toBe("1");
      expect(res.json().error).toMatchObject({
        code: "service_unavailable",
        message: expect.stringMatching(/nothing was written/),
      });
    }
    const overflow = await app.inject({ method: "GET", url: "/db/22003" });
    expect(overflow.statusCode).toBe(400);
    expect(overflow.json().error.code).toBe("invalid_request");
  });

  it("round-trips cursors and refuses foreign ones", () => {
    expect(decodeCursor(encodeCursor(["org_1", 5]), 2)).toEqual(["org_1", 5]);
    expect(() => decodeCursor(encodeCursor(["org_1"]), 2)).toThrow(/cursor/);
    expect(() => decodeCursor("%%%", 1)).toThrow(/cursor/);
    expect(() => decodeCursor(Buffer.from('[{"a":1}]').toString("base64url"), 1)).toThrow(/cursor/);
    // Decoded values reach queries: no NUL, no unpaired surrogate, no unsafe number.
    for (const values of [["a\u0000"], ["\ud800"], [1e308], [1.5]]) {
      expect(() => decodeCursor(encodeCursor(values), 1), JSON.stringify(values)).toThrow(/cursor/);
    }
  });

  it("refuses NUL and unpaired surrogates in path and query before any hook reads them", async () => {
    for (const url of ["/things/a%00b", "/things/%ED%A0%80x?limit=1", "/things/x?limit=%00"]) {
      const res = await app.inject({ method: "GET", url });
      expect(res.statusCode, url).toBe(400);
      expect(res.json().error.code).toBe("invalid_request");
    }
    expect(
      (await app.inject({ method: "GET", url: "/things/a%00b" })).json().error.details,
    ).toEqual([{ field: "path.id", message: "contains a NUL character or an unpaired surrogate" }]);
  });

  it("rounds filter bounds finer than a millisecond up, and leaves the others exact", () => {
    const iso = (text: string) => filterBound(text).toISOString();
    expect(iso("2026-11-24T10:00:00Z")).toBe("2026-11-24T10:00:00.000Z");
    expect(iso("2026-11-24T10:00:00.123Z")).toBe("2026-11-24T10:00:00.123Z");
    expect(iso("2026-11-24T10:00:00.123000Z")).toBe("2026-11-24T10:00:00.123Z");
    expect(iso("2026-11-24T10:00:00.0005Z")).toBe("2026-11-24T10:00:00.001Z");
    expect(iso("2026-11-24T10:00:00.999001+01:00")).toBe("2026-11-24T09:00:01.000Z");
  });

  it("takes only timestamps that name an instant the database can hold", () => {
    expect(parseInstant("2026-11-24T10:00:00Z")?.toISOString()).toBe("2026-11-24T10:00:00.000Z");
    expect(parseInstant("2026-11-24T10:00:00.123456789+01:00")?.toISOString()).toBe(
      "2026-11-24T09:00:00.123Z",
    );
    for (const text of [
      "2026-12-31T23:59:60Z",
      "0000-01-01T00:00:00Z",
      "9999-12-31T23:59:59-23:59",
      "not a date",
    ]) {
      expect(parseInstant(text), text).toBeNull();
    }
  });

  it("names the first unstorable body text (value or key) by its JSON pointer", () => {
    expect(findUnstorableText({ a: ["ok", { b: "x\u0000y" }] })).toEqual({
      pointer: "/a/1/b",
      kind: "unstorable",
    });
    expect(findUnstorableText({ a: { "k\ud800": 1 } })).toEqual({
      pointer: "/a/k\ud800",
      kind: "unstorable",
    });
    expect(findUnstorableText("\udc00")).toEqual({ pointer: "/", kind: "unstorable" });
    expect(findUnstorableText({ a: ["ok", { b: "fine 😀" }], c: 1, d: null })).toBeNull();
    let deep: unknown = "x";
    for (let i = 0; i < MAX_JSON_DEPTH; i++) deep = [deep];
    expect(findUnstorableText(deep)).toBeNull();
    expect(findUnstorableText([deep])).toEqual({
      pointer: `/${Array(MAX_JSON_DEPTH).fill(0).join("/")}`,
      kind: "too_deep",
    });
  });

  it("refuses JSON nested deeper than the limit", async () => {
    const deep = `{"kind":"a","nested":${'{"n":'.repeat(MAX_JSON_DEPTH)}"x"${"}".repeat(MAX_JSON_DEPTH)}}`;
    const res = await app.inject({
      method: "POST",
      url: "/things",
      headers: { "content-type": "application/json" },
      payload: deep,
    });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.message).toBe("The JSON is nested too deeply.");
  });
});
