/**
 * Normalises the `usage` object an AI provider returns into Tally's disjoint token buckets.
 *
 * - OpenAI Chat Completions: `{prompt_tokens, completion_tokens, total_tokens,
 *   prompt_tokens_details: {cached_tokens, audio_tokens}, completion_tokens_details:
 *   {reasoning_tokens, …}}`. `cached_tokens` are part of `prompt_tokens`, so
 *   input = prompt − cached; reasoning (and audio) tokens are part of `completion_tokens`, so
 *   output = completion_tokens. Audio input tokens are priced as input.
 * - OpenAI Responses: `{input_tokens, input_tokens_details: {cached_tokens}, output_tokens,
 *   output_tokens_details: {reasoning_tokens}, total_tokens}` — same inclusions. The Realtime
 *   API answers the same counts with `input_token_details` / `output_token_details` (singular
 *   "token"); either spelling is read, both at once is refused.
 * - Anthropic Messages: `{input_tokens, output_tokens, cache_creation_input_tokens,
 *   cache_read_input_tokens}`; the cache counts come in addition to `input_tokens`, so
 *   cached_input = cache_read, cache_write = cache_creation. (The 5-minute / 1-hour split in
 *   `cache_creation` is not distinguished: both are priced at the model's `cache_write` rate.)
 *
 * OpenAI charges nothing extra for cache writes, so its `cache_write` is always 0. Unknown fields
 * are ignored (providers add fields); optional counts may be absent or null (= 0). Counts must be
 * integers in 0..10^12; `total_tokens` (input and output together: up to 2 × 10^12) is checked
 * as a count but not against the sum.
 */
import { type ErrorDetail, fail, ok, type Result } from "../../app/errors.js";
import type { TokenCounts } from "./rating.js";

export type Provider = "openai" | "anthropic";
export const PROVIDERS: readonly Provider[] = ["openai", "anthropic"];

/** The largest token count accepted in any bucket or provider field. */
export const MAX_TOKEN_COUNT = 1_000_000_000_000;

/**
 * `usage` as the provider returned it → token buckets, or `invalid_request` with one detail per
 * problem. `pointer` is the JSON pointer of `usage` in the request body, e.g.
 * `/events/3/provider_usage/usage`; each detail's `field` is a pointer below it.
 */
export function normaliseProviderUsage(
  provider: Provider,
  usage: unknown,
  pointer = "",
): Result<TokenCounts, "invalid_request"> {
  const reader = new UsageReader(pointer);
  if (!isObject(usage)) {
    return fail("invalid_request", "provider usage must be a JSON object.", [
      pointer ? { field: pointer, message: "must be an object" } : { message: "must be an object" },
    ]);
  }
  let tokens: TokenCounts | null;
  switch (provider) {
    case "openai":
      tokens = openai(reader, usage);
      break;
    case "anthropic":
      tokens = anthropic(reader, usage);
      break;
    default:
      return fail("invalid_request", `Unknown provider ${JSON.stringify(provider)}.`, [
        { message: `provider must be one of ${PROVIDERS.join(", ")}` },
      ]);
  }
  if (reader.problems.length > 0 || !tokens) {
    return fail(
      "invalid_request",
      `The ${provider} usage object is invalid: ${reader.problems.map((p) => (p.field ? `${p.field} ${p.message}` : p.message)).join("; ")}.`,
      reader.problems,
    );
  }
  return ok(tokens);
}

function openai(r: UsageReader, u: Record<string, unknown>): TokenCounts | null {
  const chat = "prompt_tokens" in u || "completion_tokens" in u;
  const responses = "input_tokens" in u || "output_tokens" in u;
  if (chat && responses) {
    r.problem(
      "",
      "the usage object mixes Chat Completions (prompt_tokens/completion_tokens) and Responses (input_tokens/output_tokens) fields",
    );
    return null;
  }
  if (!chat && !responses) {
    r.problem(
      "",
      "not an OpenAI usage object: expected prompt_tokens and completion_tokens (Chat Completions) or input_tokens and output_tokens (Responses)",
    );
    return null;
  }
  const [inName, outName] = chat
    ? (["prompt_tokens", "completion_tokens"] as const)
    : (["input_tokens", "output_tokens"] as const);
  const inDetails = chat ? "prompt_tokens_details" : detailsName(r, u, "input");
  const outDetails = chat ? "completion_tokens_details" : detailsName(r, u, "output");

  const prompt = r.required(u, inName);
  // Embeddings answer `{prompt_tokens, total_tokens}` alone: no output, as the total shows.
  const embeddings =
    chat &&
    u[outName] === undefined &&
    u.total_tokens !== undefined &&
    u.total_tokens === u[inName];
  const completion = embeddings ? 0n : r.required(u, outName);
  r.optional(u, "total_tokens", undefined, 2 * MAX_TOKEN_COUNT);
  const inD = r.details(u, inDetails);
  const outD = r.details(u, outDetails);
  const cached = inD ? r.optional(inD, "cached_tokens", inDetails) : 0n;
  if (inD) r.optional(inD, "audio_tokens", inDetails);
  const reasoning = outD ? r.optional(outD, "reasoning_tokens", outDetails) : 0n;

  if (prompt !== null && cached !== null && cached > prompt) {
    r.problem(`${inDetails}/cached_tokens`, `(${cached}) exceeds ${inName} (${prompt})`);
  }
  if (completion !== null && reasoning !== null && reasoning > completion) {
    r.problem(
      `${outDetails}/reasoning_tokens`,
      `(${reasoning}) exceeds ${outName} (${completion})`,
    );
  }
  if (prompt === null || completion === null || cached === null) return null;
  return { input: prompt - cached, cached_input: cached, cache_write: 0n, output: completion };
}

/** Responses: `input_tokens_details`; Realtime: `input_token_details` (likewise for output). */
function detailsName(r: UsageReader, u: Record<string, unknown>, side: "input" | "output"): string {
  const plural = `${side}_tokens_details`;
  const singular = `${side}_token_details`;
  if (u[singular] === undefined || u[singular] === null) return plural;
  if (u[plural] !== undefined && u[plural] !== null) {
    r.problem(singular, `must not be given together with ${plural}`);
  }
  return singular;
}

function anthropic(r: UsageReader, u: Record<string, unknown>): TokenCounts | null {
  const input = r.required(u, "input_tokens");
  const output = r.required(u, "output_tokens");
  const cacheWrite = r.optional(u, "cache_creation_input_tokens");
  const cacheRead = r.optional(u, "cache_read_input_tokens");
  if (input === null || output === null || cacheWrite === null || cacheRead === null) return null;
  return { input, cached_input: cacheRead, cache_write: cacheWrite, output };
}

/** Reads counts, collecting every problem rather than stopping at the first. */
class UsageReader {
  readonly problems: ErrorDetail[] = [];
  constructor(private readonly pointer: string) {}

  problem(path: string, message: string): void {
    const field = path ? `${this.pointer}/${path}` : this.pointer;
    this.problems.push(field ? { field, message } : { message });
  }

  required(obj: Record<string, unknown>, name: string, parent?: string): bigint | null {
    const value = obj[name];
    if (value === undefined || value === null) {
      this.problem(join(parent, name), "is required");
      return null;
    }
    return this.count(value, join(parent, name));
  }

  /** Absent or null → 0. */
  optional(
    obj: Record<string, unknown>,
    name: string,
    parent?: string,
    max = MAX_TOKEN_COUNT,
  ): bigint | null {
    const value = obj[name];
    if (value === undefined || value === null) return 0n;
    return this.count(value, join(parent, name), max);
  }

  details(obj: Record<string, unknown>, name: string): Record<string, unknown> | null {
    const value = obj[name];
    if (value === undefined || value === null) return null;
    if (!isObject(value)) {
      this.problem(name, "must be an object");
      return null;
    }
    return value;
  }

  private count(value: unknown, path: string, max = MAX_TOKEN_COUNT): bigint | null {
    if (typeof value !== "number" || !Number.isInteger(value)) {
      this.problem(path, "must be an integer token count");
      return null;
    }
    if (value < 0) {
      this.problem(path, "must not be negative");
      return null;
    }
    if (value > max) {
      this.problem(path, `must be at most ${max}`);
      return null;
    }
    return BigInt(value);
  }
}

function join(parent: string | undefined, name: string): string {
  return parent ? `${parent}/${name}` : name;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
