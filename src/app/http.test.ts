import type { TypeBoxTypeProvider } from "@fastify/type-provider-typebox";
import { Type } from "@sinclair/typebox";
import Fastify from "fastify";
import { afterAll, describe, expect, it } from "vitest";
import {
  type App,
  decodeCursor,
  encodeCursor,
  installErrorHandling,
  installValidation,
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
  app.get("/boom", async () => {
    throw new Error("secret internals");
  });
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

  it("hides internals of unexpected errors behind 500 internal", async () => {
    const res = await app.inject({ method: "GET", url: "/boom" });
    expect(res.statusCode).toBe(500);
    expect(res.json().error.code).toBe("internal");
    expect(res.body).not.toContain("secret internals");
  });

  it("round-trips cursors and refuses foreign ones", () => {
    expect(decodeCursor(encodeCursor(["org_1", 5]), 2)).toEqual(["org_1", 5]);
    expect(() => decodeCursor(encodeCursor(["org_1"]), 2)).toThrow(/cursor/);
    expect(() => decodeCursor("%%%", 1)).toThrow(/cursor/);
    expect(() => decodeCursor(Buffer.from('[{"a":1}]').toString("base64url"), 1)).toThrow(/cursor/);
  });
});
