import { describe, expect, it } from "vitest";
import { createTestApp } from "../../../test/support/app.js";

/** The body of API.md's example, verbatim. */
const API_EXAMPLE = {
  effective_from: "2026-11-01T00:00:00Z",
  models: [
    {
      model: "gpt-4o",
      provider: "openai",
      input: "250",
      cached_input: "125",
      cache_write: "250",
      output: "1000",
    },
  ],
  meters: [
    { meter: "compute.vcpu_seconds", type: "compute", unit: "vCPU-second", rate: "0.002" },
    {
      meter: "storage.gb",
      type: "storage",
      unit: "GB-hour",
      rate: "0.0001",
      aggregation: "time_weighted",
    },
    { meter: "bandwidth.egress_gb", type: "bandwidth", unit: "GB", rate: "0.9" },
    { meter: "data_ops.reads", type: "data_ops", unit: "operation", rate: "0.000004" },
  ],
};

describe("pricing routes", async () => {
  const app = await createTestApp();

  function expectError(res: Awaited<ReturnType<typeof app.call>>, status: number, code: string) {
    expect(res.statusCode, res.body).toBe(status);
    const body = res.json();
    expect(body.error).toMatchObject({ code, message: expect.any(String) });
    expect(body.error.request_id).toMatch(/^req_/);
    return body.error.details as { field?: string; message: string }[];
  }

  const put = (body: unknown) => app.call("PUT", "/v1/prices", { body });

  it("GET /v1/prices returns the seeded default catalogue on a fresh install", async () => {
    const res = await app.call("GET", "/v1/prices");
    expect(res.statusCode, res.body).toBe(200);
    const body = res.json();
    expect(body).toMatchObject({ version: 1, effective_from: "1970-01-01T00:00:00.000Z" });
    expect(body.models).toContainEqual({
      model: "gpt-4o",
      provider: "openai",
      input: "250",
      cached_input: "125",
      cache_write: "250",
      output: "1000",
    });
    expect(body.models).toContainEqual(
      expect.objectContaining({ model: "gpt-4o-mini", cached_input: "7.5" }),
    );
    expect(body.models.some((m: { provider: string }) => m.provider === "anthropic")).toBe(true);
    expect(body.meters).toContainEqual({
      meter: "storage.gb",
      type: "storage",
      unit: "GB-hour",
      rate: "0.0001",
      aggregation: "time_weighted",
    });
    expect(body.meters).toHaveLength(4);
  });

  it("PUT /v1/prices with API.md's example creates version 2 and GET then returns it", async () => {
    const res = await put(API_EXAMPLE);
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json()).toEqual({
      version: 2,
      effective_from: "2026-11-01T00:00:00.000Z",
      created_at: "2026-11-24T10:00:00.000Z",
      models: API_EXAMPLE.models,
      meters: [
        {
          meter: "bandwidth.egress_gb",
          type: "bandwidth",
          unit: "GB",
          rate: "0.9",
          aggregation: "sum",
        },
        {
          meter: "compute.vcpu_seconds",
          type: "compute",
          unit: "vCPU-second",
          rate: "0.002",
          aggregation: "sum",
        },
        {
          meter: "data_ops.reads",
          type: "data_ops",
          unit: "operation",
          rate: "0.000004",
          aggregation: "sum",
        },
        {
          meter: "storage.gb",
          type: "storage",
          unit: "GB-hour",
          rate: "0.0001",
          aggregation: "time_weighted",
        },
      ],
    });
    const current = await app.call("GET", "/v1/prices");
    expect(current.json().version).toBe(2);
    expect(current.json().models).toHaveLength(1);
  });

  it("PUT defaults effective_from to now, cache rates to the input rate, and canonicalises", async () => {
    const res = await put({
      models: [{ model: "m-1", provider: "acme", input: "0250.500000", output: "1.000001" }],
      meters: [{ meter: "s", type: "storage", unit: "GB-hour", rate: "0.10" }],
    });
    expect(res.statusCode, res.body).toBe(200);
    const body = res.json();
    expect(body.effective_from).toBe("2026-11-24T10:00:00.000Z");
    expect(body.models).toEqual([
      {
        model: "m-1",
        provider: "acme",
        input: "250.5",
        cached_input: "250.5",
        cache_write: "250.5",
        output: "1.000001",
      },
    ]);
    expect(body.meters).toEqual([
      { meter: "s", type: "storage", unit: "GB-hour", rate: "0.1", aggregation: "time_weighted" },
    ]);
    expect((await app.call("GET", "/v1/prices")).json().version).toBe(body.version);
  });

  it("a future version is not in effect yet; GET ?at= and /versions/{n} show it", async () => {
    const res = await put({
      effective_from: "2027-01-01T00:00:00+01:00",
      models: [{ model: "future", provider: "openai", input: "1", output: "2" }],
      meters: [],
    });
    expect(res.statusCode, res.body).toBe(200);
    const future = res.json();
    expect(future.effective_from).toBe("2026-12-31T23:00:00.000Z");
    expect((await app.call("GET", "/v1/prices")).json().version).toBeLessThan(future.version);
    const at = await app.call("GET", "/v1/prices?at=2027-02-01T00:00:00Z");
    expect(at.json()).toEqual(future);
    const byNumber = await app.call("GET", `/v1/prices/versions/${future.version}`);
    expect(byNumber.json()).toEqual(future);
    expect((await app.call("GET", "/v1/prices/versions/1")).json().models.length).toBeGreaterThan(
      4,
    );
    app.clock.set("2027-01-01T00:00:00Z");
    expect((await app.call("GET", "/v1/prices")).json().version).toBe(future.version);
    app.clock.set("2026-11-24T10:00:00Z");
  });

  it("GET /v1/prices?at= before any version → 404; unknown version → 404", async () => {
    expectError(await app.call("GET", "/v1/prices?at=1969-07-20T20:17:00Z"), 404, "not_found");
    expectError(await app.call("GET", "/v1/prices/versions/999999"), 404, "not_found");
    expectError(await app.call("GET", "/v1/prices/versions/abc"), 400, "invalid_request");
    for (const loose of ["0x1", "1e0", "1.0", "%201"]) {
      const res = await app.call("GET", `/v1/prices/versions/${loose}`);
      expectError(res, 400, "invalid_request");
      expect(res.json().error.details, loose).toEqual([
        { field: "path.version", message: "must be a decimal integer" },
      ]);
    }
    expectError(await app.call("GET", "/v1/prices?at=yesterday"), 400, "invalid_request");
  });

  it("GET /v1/prices/versions lists newest first with counts and pages with a cursor", async () => {
    const all = await app.call("GET", "/v1/prices/versions");
    expect(all.statusCode, all.body).toBe(200);
    const data = all.json().data as { version: number }[];
    expect(data.map((v) => v.version)).toEqual(
      [...data.map((v) => v.version)].sort((a, b) => b - a),
    );
    expect(all.json()).toMatchObject({ has_more: false, next_cursor: null });
    expect(data.at(-1)).toEqual({
      version: 1,
      effective_from: "1970-01-01T00:00:00.000Z",
      created_at: expect.any(String),
      models_count: 8,
      meters_count: 4,
    });
    expect(data.find((v) => v.version === 2)).toMatchObject({ models_count: 1, meters_count: 4 });

    const seen: number[] = [];
    let cursor: string | null = null;
    do {
      const url: string = `/v1/prices/versions?limit=2${cursor ? `&cursor=${cursor}` : ""}`;
      const page = await app.call("GET", url);
      expect(page.statusCode, page.body).toBe(200);
      seen.push(...page.json().data.map((v: { version: number }) => v.version));
      cursor = page.json().next_cursor;
    } while (cursor);
    expect(seen).toEqual(data.map((v) => v.version));

    expectError(
      await app.call("GET", "/v1/prices/versions?cursor=not-a-cursor"),
      400,
      "invalid_request",
    );
    expectError(await app.call("GET", "/v1/prices/versions?limit=0"), 400, "invalid_request");
  });

  describe("PUT /v1/prices refuses invalid catalogues (and writes nothing)", () => {
    // biome-ignore lint/suspicious/noExplicitAny: the tests bend the example into invalid shapes.
    const base = () => structuredClone(API_EXAMPLE) as Record<string, any>;

    async function refused(body: unknown, field?: string) {
      const before = (await app.call("GET", "/v1/prices/versions")).json().data.length;
      const details = expectError(await put(body), 400, "invalid_request");
      if (field) expect(details.map((d) => d.field)).toContain(field);
      expect((await app.call("GET", "/v1/prices/versions")).json().data.length).toBe(before);
      return details;
    }

    it("a rate with 7 fractional digits", async () => {
      const body = base();
      body.models[0].input = "0.0000001";
      await refused(body, "/models/0/input");
      const meter = base();
      meter.meters[0].rate = "1.1234567";
      await refused(meter, "/meters/0/rate");
    });

    it("a negative rate", async () => {
      const body = base();
      body.models[0].output = "-1";
      await refused(body, "/models/0/output");
      const meter = base();
      meter.meters[3].rate = "-0.000004";
      await refused(meter, "/meters/3/rate");
    });

    it("a JSON number instead of a decimal string", async () => {
      const body = base();
      body.models[0].input = 250;
      await refused(body, "/models/0/input");
    });

    it("other malformed rates", async () => {
      for (const rate of ["", "1e3", "NaN", "Infinity", "1.", ".5", " 1", "+1", "1234567890123"]) {
        const body = base();
        body.meters[0].rate = rate;
        await refused(body, "/meters/0/rate");
      }
    });

    it("an unknown field, at any level", async () => {
      const top = base();
      top.currency = "USD";
      expect(await refused(top, "/currency")).toContainEqual({
        field: "/currency",
        message: "unknown field",
      });
      const inModel = base();
      inModel.models[0].reasoning = "1";
      await refused(inModel, "/models/0/reasoning");
    });

    it("a duplicate model or meter name", async () => {
      const body = base();
      body.models.push({ ...body.models[0], input: "1" });
      const details = await refused(body, "/models/1/model");
      expect(details[0]?.message).toMatch(/duplicate model "gpt-4o"/);
      const meters = base();
      meters.meters.push({ ...meters.meters[0] });
      await refused(meters, "/meters/4/meter");
    });

    it("a type that is not one of the four", async () => {
      const body = base();
      body.meters[0].type = "gpu";
      await refused(body, "/meters/0/type");
    });

    it("an aggregation that does not match the type", async () => {
      const compute = base();
      compute.meters[0].aggregation = "time_weighted";
      const details = await refused(compute, "/meters/0/aggregation");
      expect(details[0]?.message).toMatch(/only storage meters are time_weighted/);
      const storage = base();
      storage.meters[1].aggregation = "sum";
      await refused(storage, "/meters/1/aggregation");
      const bogus = base();
      bogus.meters[1].aggregation = "max";
      await refused(bogus, "/meters/1/aggregation");
    });

    it("missing fields and bad names or timestamps", async () => {
      await refused({ models: [] }, "/meters");
      const noOutput = base();
      delete noOutput.models[0].output;
      await refused(noOutput, "/models/0/output");
      const noUnit = base();
      delete noUnit.meters[0].unit;
      await refused(noUnit, "/meters/0/unit");
      const badName = base();
      badName.models[0].model = "gpt 4o";
      await refused(badName, "/models/0/model");
      const badTime = base();
      badTime.effective_from = "2026-11-01";
      await refused(badTime, "/effective_from");
    });

    it("malformed JSON", async () => {
      expectError(
        await app.call("PUT", "/v1/prices", { rawBody: '{"models": [' }),
        400,
        "invalid_request",
      );
    });
  });

  it("is described in the OpenAPI document", async () => {
    const doc = (await app.call("GET", "/openapi.json", { key: null })).json();
    expect(Object.keys(doc.paths["/v1/prices"])).toEqual(expect.arrayContaining(["get", "put"]));
    expect(Object.keys(doc.paths["/v1/prices"].put.responses)).toEqual(
      expect.arrayContaining(["200", "400", "401", "403"]),
    );
    expect(doc.paths["/v1/prices/versions"].get).toBeDefined();
  });
});
