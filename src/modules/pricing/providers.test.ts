import { describe, expect, it } from "vitest";
import { normaliseProviderUsage } from "./providers.js";

const buckets = (input: number, cached_input: number, cache_write: number, output: number) => ({
  input: BigInt(input),
  cached_input: BigInt(cached_input),
  cache_write: BigInt(cache_write),
  output: BigInt(output),
});

function problems(result: ReturnType<typeof normaliseProviderUsage>) {
  expect(result.ok).toBe(false);
  if (result.ok) throw new Error("unreachable");
  expect(result.code).toBe("invalid_request");
  expect(result.message).toEqual(expect.any(String));
  return result.details ?? [];
}

describe("normaliseProviderUsage — OpenAI Chat Completions", () => {
  it("takes cached tokens out of prompt_tokens and keeps reasoning inside completion_tokens", () => {
    const result = normaliseProviderUsage("openai", {
      prompt_tokens: 1500,
      completion_tokens: 500,
      total_tokens: 2000,
      prompt_tokens_details: { cached_tokens: 1024, audio_tokens: 0 },
      completion_tokens_details: {
        reasoning_tokens: 320,
        audio_tokens: 0,
        accepted_prediction_tokens: 0,
        rejected_prediction_tokens: 0,
      },
    });
    expect(result).toEqual({ ok: true, value: buckets(476, 1024, 0, 500) });
  });

  it("accepts missing or null details (older models, other SDKs)", () => {
    expect(
      normaliseProviderUsage("openai", {
        prompt_tokens: 12,
        completion_tokens: 3,
        total_tokens: 15,
      }),
    ).toEqual({ ok: true, value: buckets(12, 0, 0, 3) });
    expect(
      normaliseProviderUsage("openai", {
        prompt_tokens: 12,
        completion_tokens: 3,
        prompt_tokens_details: null,
        completion_tokens_details: { reasoning_tokens: null },
      }),
    ).toEqual({ ok: true, value: buckets(12, 0, 0, 3) });
  });

  it("ignores fields it does not know", () => {
    expect(
      normaliseProviderUsage("openai", {
        prompt_tokens: 10,
        completion_tokens: 1,
        prompt_tokens_details: { cached_tokens: 4, image_tokens: 7 },
        cost_estimate: "n/a",
      }),
    ).toEqual({ ok: true, value: buckets(6, 4, 0, 1) });
  });

  it("refuses cached_tokens larger than prompt_tokens", () => {
    const details = problems(
      normaliseProviderUsage(
        "openai",
        { prompt_tokens: 100, completion_tokens: 1, prompt_tokens_details: { cached_tokens: 101 } },
        "/events/0/provider_usage/usage",
      ),
    );
    expect(details).toEqual([
      {
        field: "/events/0/provider_usage/usage/prompt_tokens_details/cached_tokens",
        message: "(101) exceeds prompt_tokens (100)",
      },
    ]);
  });

  it("refuses reasoning_tokens larger than completion_tokens", () => {
    const details = problems(
      normaliseProviderUsage("openai", {
        prompt_tokens: 1,
        completion_tokens: 10,
        completion_tokens_details: { reasoning_tokens: 11 },
      }),
    );
    expect(details[0]?.field).toBe("/completion_tokens_details/reasoning_tokens");
  });

  it("lists every bad count: negative, fractional, string, absurd, missing", () => {
    const details = problems(
      normaliseProviderUsage("openai", {
        prompt_tokens: -1,
        completion_tokens: 1.5,
        total_tokens: "2",
        prompt_tokens_details: { cached_tokens: 1e13 },
      }),
    );
    expect(details).toEqual([
      { field: "/prompt_tokens", message: "must not be negative" },
      { field: "/completion_tokens", message: "must be an integer token count" },
      { field: "/total_tokens", message: "must be an integer token count" },
      { field: "/prompt_tokens_details/cached_tokens", message: "must be at most 1000000000000" },
    ]);
    expect(
      problems(normaliseProviderUsage("openai", { prompt_tokens: 5, completion_tokens: null })),
    ).toEqual([{ field: "/completion_tokens", message: "is required" }]);
    // Embeddings: no completion_tokens, and the total says there was no output.
    expect(normaliseProviderUsage("openai", { prompt_tokens: 8, total_tokens: 8 })).toEqual({
      ok: true,
      value: { input: 8n, cached_input: 0n, cache_write: 0n, output: 0n },
    });
    // A total above the prompt means output was left out: still required.
    expect(
      problems(normaliseProviderUsage("openai", { prompt_tokens: 8, total_tokens: 20 })),
    ).toEqual([{ field: "/completion_tokens", message: "is required" }]);
    expect(
      problems(
        normaliseProviderUsage("openai", {
          prompt_tokens: 5,
          completion_tokens: 1,
          prompt_tokens_details: [1],
        }),
      ),
    ).toEqual([{ field: "/prompt_tokens_details", message: "must be an object" }]);
  });

  it("refuses values that are not usage objects", () => {
    for (const bad of [null, 42, "usage", [1, 2], {}]) {
      expect(normaliseProviderUsage("openai", bad).ok).toBe(false);
    }
    const details = problems(
      normaliseProviderUsage("openai", { prompt_tokens: 1, output_tokens: 1 }),
    );
    expect(details[0]?.message).toMatch(/mixes Chat Completions .* and Responses/);
  });
});

describe("normaliseProviderUsage — OpenAI Responses", () => {
  it("reads input_tokens/output_tokens and their details", () => {
    const result = normaliseProviderUsage("openai", {
      input_tokens: 2048,
      input_tokens_details: { cached_tokens: 2000 },
      output_tokens: 900,
      output_tokens_details: { reasoning_tokens: 800 },
      total_tokens: 2948,
    });
    expect(result).toEqual({ ok: true, value: buckets(48, 2000, 0, 900) });
  });

  it("refuses cached_tokens larger than input_tokens", () => {
    const details = problems(
      normaliseProviderUsage("openai", {
        input_tokens: 5,
        input_tokens_details: { cached_tokens: 6 },
        output_tokens: 0,
      }),
    );
    expect(details).toEqual([
      {
        field: "/input_tokens_details/cached_tokens",
        message: "(6) exceeds input_tokens (5)",
      },
    ]);
  });

  it("requires output_tokens", () => {
    expect(problems(normaliseProviderUsage("openai", { input_tokens: 5 }))).toEqual([
      { field: "/output_tokens", message: "is required" },
    ]);
  });

  it("reads the Realtime API's input_token_details / output_token_details", () => {
    const result = normaliseProviderUsage("openai", {
      total_tokens: 1300,
      input_tokens: 1000,
      output_tokens: 300,
      input_token_details: { cached_tokens: 800, text_tokens: 600, audio_tokens: 400 },
      output_token_details: { text_tokens: 100, audio_tokens: 200 },
    });
    expect(result).toEqual({ ok: true, value: buckets(200, 800, 0, 300) });
    expect(
      problems(
        normaliseProviderUsage("openai", {
          input_tokens: 1000,
          output_tokens: 0,
          input_tokens_details: { cached_tokens: 800 },
          input_token_details: { cached_tokens: 800 },
        }),
      ),
    ).toEqual([
      {
        field: "/input_token_details",
        message: "must not be given together with input_tokens_details",
      },
    ]);
  });

  it("takes a total_tokens up to both counts at their largest", () => {
    const max = 1_000_000_000_000;
    const total = { input_tokens: max, output_tokens: max, total_tokens: 2 * max };
    expect(normaliseProviderUsage("openai", total)).toEqual({
      ok: true,
      value: buckets(max, 0, 0, max),
    });
    expect(
      problems(normaliseProviderUsage("openai", { ...total, total_tokens: 2 * max + 1 })),
    ).toEqual([{ field: "/total_tokens", message: `must be at most ${2 * max}` }]);
  });
});

describe("normaliseProviderUsage — Anthropic", () => {
  it("adds cache reads and writes to input_tokens as separate buckets", () => {
    const result = normaliseProviderUsage("anthropic", {
      input_tokens: 50,
      cache_creation_input_tokens: 2000,
      cache_read_input_tokens: 10_000,
      output_tokens: 503,
      cache_creation: { ephemeral_5m_input_tokens: 2000, ephemeral_1h_input_tokens: 0 },
      service_tier: "standard",
    });
    expect(result).toEqual({ ok: true, value: buckets(50, 10_000, 2000, 503) });
  });

  it("treats absent or null cache counts as zero", () => {
    expect(
      normaliseProviderUsage("anthropic", {
        input_tokens: 7,
        output_tokens: 9,
        cache_creation_input_tokens: null,
      }),
    ).toEqual({ ok: true, value: buckets(7, 0, 0, 9) });
  });

  it("refuses bad counts and an OpenAI-shaped object", () => {
    expect(
      problems(
        normaliseProviderUsage("anthropic", {
          input_tokens: 1,
          output_tokens: 1,
          cache_read_input_tokens: -3,
        }),
      ),
    ).toEqual([{ field: "/cache_read_input_tokens", message: "must not be negative" }]);
    expect(
      problems(normaliseProviderUsage("anthropic", { prompt_tokens: 1, completion_tokens: 1 })),
    ).toEqual([
      { field: "/input_tokens", message: "is required" },
      { field: "/output_tokens", message: "is required" },
    ]);
  });

  it("accepts the largest counts exactly", () => {
    expect(
      normaliseProviderUsage("anthropic", {
        input_tokens: 1e12,
        output_tokens: 999_999_999_999,
        cache_read_input_tokens: 1e12,
        cache_creation_input_tokens: 1e12,
      }),
    ).toEqual({
      ok: true,
      value: {
        input: 10n ** 12n,
        cached_input: 10n ** 12n,
        cache_write: 10n ** 12n,
        output: 999_999_999_999n,
      },
    });
  });
});

describe("normaliseProviderUsage — provider", () => {
  it("refuses an unknown provider", () => {
    expect(normaliseProviderUsage("mistral" as never, { input_tokens: 1 }).ok).toBe(false);
  });
});
