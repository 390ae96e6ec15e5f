import fc from "fast-check";
import type { LightMyRequestResponse } from "fastify";
import { sql } from "kysely";
import { afterAll, describe, expect, it } from "vitest";
import { ERRORS } from "../../src/app/errors.js";
import { parseCredits } from "../../src/modules/ledger/credits.js";
import { adjustCredits } from "../../src/modules/ledger/ledger.service.js";
import { createTestApp } from "../support/app.js";

/**
 * Hostile input against every operation of the live OpenAPI document, with a platform key and
 * an organisation admin key. Each request is built from the operation's own schemas — a valid
 * body, query and path, then broken: wrong types, missing and extra fields, `__proto__` keys,
 * numbers where decimal strings belong (`-0`, `1e3`), NaN/Infinity strings, NUL, lone
 * surrogates, RTL and combining marks, SQL and HTML metacharacters, long strings, deep nesting,
 * bodies over the limit, wrong content types. Checked on every answer:
 *   - never 5xx, and only a status the operation documents;
 *   - an error is the common envelope with a catalogue code of that status;
 *   - a refused request changes nothing (a hash of every table, before and after).
 * A request that is valid after all (hostile text is often legitimate text) may succeed.
 * Before the random runs, every path and query parameter gets each hostile value of its kind
 * (timestamps, decimals, ids, cursors, enums) once, deterministically.
 *
 * fast-check prints the seed and path of a failure. To search harder locally:
 *   FUZZ_RUNS=100 FUZZ_STATS=1 npx vitest run test/fuzz/routes.fuzz.test.ts
 * (FUZZ_STATS prints the statuses each operation answered, to see how deep requests get.)
 */

// biome-ignore lint/suspicious/noExplicitAny: OpenAPI and response documents are plain JSON.
type Json = any;

const NOW = Date.parse("2026-11-24T10:00:00.000Z");
/** Random requests per operation are twice this; the file stays within seconds per database. */
const RUNS = Number(process.env.FUZZ_RUNS ?? 12);

// ---- JSON text with what JSON.stringify cannot write ----------------------------------------

/** Verbatim JSON text: `-0`, `1e400`, deep nesting, malformed text, megabytes. */
class Raw {
  constructor(readonly text: string) {}
  [fc.toStringMethod](): string {
    const t = this.text;
    return t.length > 120
      ? `Raw(${JSON.stringify(t.slice(0, 60))}… ${t.length} chars)`
      : `Raw(${JSON.stringify(t)})`;
  }
}
/** An object as a list of entries: `__proto__` is an ordinary key, and keys may repeat. */
class Obj {
  constructor(readonly entries: [string, J][]) {}
  [fc.toStringMethod](): string {
    return `{${this.entries.map(([k, v]) => `${JSON.stringify(k)}: ${fc.stringify(v)}`).join(", ")}}`;
  }
}
type J = null | boolean | number | string | Raw | Obj | J[];

function toJ(value: unknown): J {
  if (Array.isArray(value)) return value.map(toJ);
  if (value && typeof value === "object") {
    return new Obj(Object.entries(value).map(([k, v]) => [k, toJ(v)]));
  }
  return value as J;
}

function toJson(value: J): string {
  if (value instanceof Raw) return value.text;
  if (value instanceof Obj) {
    return `{${value.entries.map(([k, v]) => `${JSON.stringify(k)}:${toJson(v)}`).join(",")}}`;
  }
  if (Array.isArray(value)) return `[${value.map(toJson).join(",")}]`;
  return JSON.stringify(value) ?? "null";
}

// ---- hostile values -------------------------------------------------------------------------

const SPECIAL_STRINGS = [
  "",
  " ",
  "0",
  "-0",
  "-0.0",
  "+0",
  "00012",
  "1e3",
  "1E-7",
  "-1e3",
  "1.",
  ".5",
  "1,5",
  "0x1F",
  "١٢٣",
  "１２３",
  "NaN",
  "Infinity",
  "-Infinity",
  "9".repeat(40),
  "0.0000000000001",
  "-100",
  "null",
  "true",
  "undefined",
  "[]",
  "{}",
  "__proto__",
  "constructor",
  "prototype",
  "toString",
  "' OR '1'='1",
  "'; DROP TABLE organizations; --",
  '"',
  "\\",
  "%",
  "_",
  "%00",
  "<script>alert(1)</script>",
  "<img src=x onerror=alert(1)>",
  "&lt;&amp;",
  // biome-ignore lint/suspicious/noTemplateCurlyInString: a template-injection probe, on purpose.
  "${7*7}{{7*7}}",
  "../../etc/passwd",
  "\u0000",
  "a\u0000b",
  "\ud800",
  "x\udc00",
  "\u202eevil\u202c",
  "\u200f\u05e9\u05dc\u05d5\u05dd",
  "e\u0301\u0301\u0301",
  "\ufeff",
  "\u2028\u2029",
  "🙂👩‍👩‍👧",
  "\r\n",
  "\t",
  "ext:",
  "ext:__proto__",
  "ext:%00",
  "org_",
  "org_00000000000000000000000000",
  "1970-01-01T00:00:00Z",
  "9999-12-31T23:59:59Z",
  "2026-11-24T10:00:00+14:00",
  "2026-02-30T00:00:00Z",
  "2026-12-31T23:59:60Z",
  "0000-01-01T00:00:00Z",
  "9999-12-31T23:59:59-23:59",
  "2026-11-24t10:00:00z",
  "2026-11-24T10:00:00.123456789Z",
  "+99999999999999999999999999.999999999999",
  "-99999999999999999999999999",
  "0.000000000001",
  "-001000-01-01T00:00:00Z",
  "javascript:alert(1)",
  "http://169.254.169.254/latest",
  "http://127.0.0.1:1/x",
  "https://example.com/\u0000",
];

/** Strings of hostile lengths, written as raw JSON so a failure report stays readable. */
const longString: fc.Arbitrary<J> = fc
  .tuple(
    fc.constantFrom(129, 201, 256, 501, 4_000, 70_000, 1_500_000),
    fc.constantFrom("x", "é", "\u0301", "9", "🙂"),
  )
  .map(([n, unit]) => new Raw(JSON.stringify(unit.repeat(n))));

const anyCodeUnit = fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c));

const hostileString: fc.Arbitrary<string> = fc.oneof(
  { arbitrary: fc.constantFrom(...SPECIAL_STRINGS), weight: 4 },
  { arbitrary: fc.string({ unit: "binary", maxLength: 30 }), weight: 1 },
  { arbitrary: fc.string({ unit: anyCodeUnit, maxLength: 12 }), weight: 1 },
  { arbitrary: fc.string({ maxLength: 20 }), weight: 1 },
);

const RAW_NUMBERS = [
  "-0",
  "-0.0",
  "0e0",
  "1e3",
  "1E+3",
  "1e400",
  "-1e400",
  "1e-400",
  "1.0",
  "123456789012345678901234567890",
  "0.1234567890123456789",
  "9007199254740993",
  "-9007199254740993",
];

const hostileScalar: fc.Arbitrary<J> = fc.oneof(
  { arbitrary: hostileString, weight: 6 },
  { arbitrary: fc.constantFrom(...RAW_NUMBERS).map((t) => new Raw(t)), weight: 2 },
  {
    arbitrary: fc.constantFrom<J>(null, true, false, 0, -1, 1.5, 2 ** 31, 2 ** 53 + 2, 1e21),
    weight: 2,
  },
  { arbitrary: fc.double(), weight: 1 },
  { arbitrary: longString, weight: 1 },
);

const HOSTILE_KEYS = [
  "__proto__",
  "constructor",
  "prototype",
  "",
  "\u0000",
  "\ud800",
  "toString",
  "hasOwnProperty",
  "$where",
  "a".repeat(129),
  "id",
  "org_id",
  "events",
  "amount",
];
const hostileKey = fc.oneof(fc.constantFrom(...HOSTILE_KEYS), hostileString);

/** Nesting far beyond any schema: parsers and walkers that recurse must not fall over. */
const deepNesting: fc.Arbitrary<J> = fc
  .tuple(fc.constantFrom(64, 2_000, 50_000, 400_000), fc.boolean())
  .map(([depth, objects]) =>
    objects
      ? new Raw(`${'{"a":'.repeat(depth)}1${"}".repeat(depth)}`)
      : new Raw(`${"[".repeat(depth)}${"]".repeat(depth)}`),
  );

const hostileValue: fc.Arbitrary<J> = fc.letrec<{ value: J }>((tie) => ({
  value: fc.oneof(
    { arbitrary: hostileScalar, weight: 8 },
    { arbitrary: fc.array(tie("value"), { maxLength: 3 }), weight: 1 },
    {
      arbitrary: fc
        .array(fc.tuple(hostileKey, tie("value")), { maxLength: 3 })
        .map((entries) => new Obj(entries)),
      weight: 1,
    },
    { arbitrary: deepNesting, weight: 1 },
  ),
})).value;

/** Whole bodies that are not JSON, or are JSON nobody should send. */
const MALFORMED_BODIES = [
  "",
  "{",
  "}",
  "{'a':1}",
  '{"a":1,}',
  "[1,]",
  '{"a":1}{"b":2}',
  '{"a":1} trailing',
  "\ufeff{}",
  "NaN",
  "undefined",
  "nul",
  '"\\ud800"',
  '"\\u0000"',
  '{"__proto__":{"polluted":true}}',
  '{"constructor":{"prototype":{"polluted":true}}}',
  "\u0000",
];

/** Over the 4 MiB body limit. */
const oversized = fc
  .constantFrom(4 * 1024 * 1024 + 1, 6 * 1024 * 1024)
  .map((n) => new Raw(`{"name":"${"x".repeat(n)}"}`));

// ---- hostile values of the same kind as a valid one ---------------------------------------

const TIMESTAMP_NASTIES = [
  "2026-12-31T23:59:60Z",
  "2016-12-31T23:59:60+00:00",
  "0000-01-01T00:00:00Z",
  "0001-01-01T00:00:00Z",
  "9999-12-31T23:59:59Z",
  "9999-12-31T23:59:59-23:59",
  "2026-11-24t10:00:00z",
  "2026-11-24T10:00:00.123456789Z",
  "2026-11-24T10:00:00",
  "2026-11-24",
  "2026-02-30T00:00:00Z",
  "2026-11-24T24:00:00Z",
  "2026-11-24T10:00:00+14:00",
  "2026-11-24T10:00:00-00:00",
  "1970-01-01T00:00:00Z",
  "+275760-09-13T00:00:00Z",
  "2026-11-24T10:00:00Z ",
];
const DECIMAL_NASTIES = [
  "-0",
  "+0",
  "-0.0",
  "0e0",
  "1e3",
  "1E-7",
  "NaN",
  "Infinity",
  "99999999999999999999999999.999999999999",
  "+99999999999999999999999999",
  "-99999999999999999999999999",
  "999999999999999999999999999",
  "0.000000000001",
  "0.0000000000001",
  "0.0000001",
  "1.",
  ".5",
  "00001",
  "1_000",
  "١",
  " 1",
  "+-1",
  "0x10",
  "",
];
const ID_NASTIES = [
  "",
  "ext:",
  "ext:__proto__",
  "x".repeat(129),
  "a b",
  "a/b",
  "..",
  "ÄÖ",
  "a\u0000",
  "\ud800",
  "%00",
  "id' OR '1'='1",
  "__proto__",
  "constructor",
];
const URL_NASTIES = [
  "http://127.0.0.1/",
  "http://[::1]/",
  "http://169.254.169.254/latest/meta-data",
  "http://0x7f000001/",
  "http://2130706433/",
  "http://localhost/",
  "http://[::ffff:127.0.0.1]/",
  "http://[fe80::1%25eth0]/",
  "javascript:alert(1)",
  "file:///etc/passwd",
  "https://",
  "http://a b/",
  "http://93.184.215.14:99999/",
  "http://user:pass@93.184.215.14/",
  `https://93.184.215.14/${"x".repeat(3000)}`,
  "ftp://93.184.215.14/",
];
const EMAIL_NASTIES = [
  "a@",
  "@b",
  "a@b",
  "a@@example.com",
  '"a b"@example.com',
  "a@[127.0.0.1]",
  `${"x".repeat(300)}@example.com`,
  "a@example.com\n",
  "<a@example.com>",
];
const NUMBER_NASTIES: J[] = [
  -1,
  0,
  1.5,
  2 ** 31,
  2 ** 53 + 2,
  1e21,
  "5",
  true,
  null,
  ...RAW_NUMBERS.map((t) => new Raw(t)),
];

/** Hostile strings of the kind `valid` is (a timestamp, a decimal, an id, a URL, an email…). */
function nastiesLike(valid: string): readonly string[] {
  if (/^\d{4}-\d\d-\d\dT/.test(valid)) return TIMESTAMP_NASTIES;
  if (/^[+-]?\d+(\.\d+)?$/.test(valid)) return DECIMAL_NASTIES;
  if (/^https?:/.test(valid)) return URL_NASTIES;
  if (/@/.test(valid)) return EMAIL_NASTIES;
  if (/^[A-Za-z0-9._:-]+$/.test(valid)) return [...ID_NASTIES, ...DECIMAL_NASTIES.slice(0, 6)];
  return SPECIAL_STRINGS;
}

// ---- valid values from the operation's schemas ---------------------------------------------

/** Values that satisfy `schema` (near enough: the breaking is done afterwards). */
function validArb(schema: Json, depth = 0): fc.Arbitrary<unknown> {
  if (!schema || typeof schema !== "object" || depth > 6) return fc.constant(null);
  if (schema.nullable) {
    return fc.oneof(
      { arbitrary: validArb({ ...schema, nullable: false }, depth), weight: 4 },
      { arbitrary: fc.constant(null), weight: 1 },
    );
  }
  if (Array.isArray(schema.enum)) return fc.constantFrom(...schema.enum);
  if ("const" in schema) return fc.constant(schema.const);
  const union = schema.anyOf ?? schema.oneOf;
  if (Array.isArray(union)) return fc.oneof(...union.map((s: Json) => validArb(s, depth + 1)));
  if (Array.isArray(schema.allOf)) {
    const merged = schema.allOf.reduce(
      (acc: Json, s: Json) => ({
        type: "object",
        properties: { ...acc.properties, ...s.properties },
        required: [...(acc.required ?? []), ...(s.required ?? [])],
      }),
      { properties: {}, required: [] },
    );
    return validArb(merged, depth + 1);
  }
  const type = Array.isArray(schema.type) ? schema.type[0] : schema.type;
  switch (type) {
    case "object": {
      const properties: Record<string, Json> = schema.properties ?? {};
      const names = Object.keys(properties);
      if (names.length === 0 && schema.additionalProperties) {
        const value =
          schema.additionalProperties === true
            ? fc.jsonValue({ maxDepth: 1 })
            : validArb(schema.additionalProperties, depth + 1);
        return fc.dictionary(fc.string({ minLength: 1, maxLength: 12 }), value, { maxKeys: 3 });
      }
      const arbs: Record<string, fc.Arbitrary<unknown>> = {};
      for (const name of names) arbs[name] = validArb(properties[name], depth + 1);
      return fc.record(arbs, { requiredKeys: schema.required ?? [] });
    }
    case "array": {
      const min = schema.minItems ?? 0;
      const max = Math.min(schema.maxItems ?? min + 3, min + 3);
      return fc.array(validArb(schema.items, depth + 1), { minLength: min, maxLength: max });
    }
    case "string":
      return validString(schema);
    case "integer": {
      const min = Math.max(schema.minimum ?? -1_000_000, -1_000_000_000);
      const max = Math.min(schema.maximum ?? 1_000_000, 1_000_000_000);
      return fc.integer({ min, max: Math.max(min, max) });
    }
    case "number":
      return fc.double({ min: schema.minimum ?? -1e6, max: schema.maximum ?? 1e6, noNaN: true });
    case "boolean":
      return fc.boolean();
    case "null":
      return fc.constant(null);
    default:
      return fc.jsonValue({ maxDepth: 2 });
  }
}

function validString(schema: Json): fc.Arbitrary<string> {
  const min = schema.minLength ?? 0;
  const max = Math.min(schema.maxLength ?? 40, 40);
  const fits = (s: string) =>
    s.length >= min && s.length <= (schema.maxLength ?? Number.POSITIVE_INFINITY);
  const examples: string[] = [...(schema.examples ?? []), schema.example].filter(
    (e: unknown) => typeof e === "string" && fits(e),
  );
  const choices: fc.Arbitrary<string>[] = [];
  if (schema.format === "date-time") {
    // Within the usage backdate window and up to a few minutes ahead.
    choices.push(
      fc
        .integer({ min: -40 * 86_400, max: 600 })
        .map((s) => new Date(NOW + s * 1000).toISOString()),
    );
  } else if (schema.format === "email") {
    choices.push(fc.constantFrom("ops@example.com", "a.b+c@example.org"));
  } else if (schema.format === "uri" || schema.format === "url") {
    // Public address literals: nothing to resolve.
    choices.push(fc.constantFrom("https://93.184.215.14/return?x=1", "http://93.184.215.14/hooks"));
  } else if (typeof schema.pattern === "string") {
    choices.push(fc.stringMatching(new RegExp(schema.pattern)).filter(fits));
  } else {
    choices.push(fc.string({ minLength: min, maxLength: Math.max(min, max) }));
    // Legitimate text that is hostile to storage and rendering.
    choices.push(hostileString.filter((s) => fits(s)));
    choices.push(
      fc.string({ unit: "grapheme", minLength: min, maxLength: Math.max(min, max) }).filter(fits),
    );
  }
  if (examples.length > 0) choices.push(fc.constantFrom(...examples));
  return fc.oneof(...choices);
}

// ---- breaking a valid value -----------------------------------------------------------------

/** Every place in a value that can be replaced: [] is the value itself. */
function slots(value: J, path: (string | number)[] = [], out: (string | number)[][] = []) {
  out.push(path);
  if (value instanceof Obj) {
    value.entries.forEach(([, v], i) => {
      slots(v, [...path, i], out);
    });
  } else if (Array.isArray(value)) {
    value.forEach((v, i) => {
      slots(v, [...path, i], out);
    });
  }
  return out;
}

function edit(value: J, path: (string | number)[], change: (at: J) => J | undefined): J {
  if (path.length === 0) return change(value) ?? null;
  const [head, ...rest] = path as [number, ...number[]];
  if (value instanceof Obj) {
    const entries = [...value.entries];
    const [k, v] = entries[head]!;
    const replaced = rest.length === 0 ? change(v) : edit(v, rest, change);
    if (replaced === undefined) entries.splice(head, 1);
    else entries[head] = [k, replaced];
    return new Obj(entries);
  }
  if (Array.isArray(value)) {
    const items = [...value];
    const replaced = rest.length === 0 ? change(items[head]!) : edit(items[head]!, rest, change);
    if (replaced === undefined) items.splice(head, 1);
    else items[head] = replaced;
    return items;
  }
  return value;
}

type Mutation =
  | { kind: "replace"; at: number; value: J }
  | { kind: "delete"; at: number }
  | { kind: "extra"; at: number; key: string; value: J }
  | { kind: "number"; at: number; raw: string }
  | { kind: "wrap"; at: number }
  | { kind: "like"; at: number; pick: number };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  {
    arbitrary: fc.record({
      kind: fc.constant("replace" as const),
      at: fc.nat(),
      value: hostileValue,
    }),
    weight: 5,
  },
  { arbitrary: fc.record({ kind: fc.constant("delete" as const), at: fc.nat() }), weight: 2 },
  {
    arbitrary: fc.record({
      kind: fc.constant("extra" as const),
      at: fc.nat(),
      key: hostileKey,
      value: hostileValue,
    }),
    weight: 2,
  },
  {
    arbitrary: fc.record({
      kind: fc.constant("number" as const),
      at: fc.nat(),
      raw: fc.constantFrom(...RAW_NUMBERS, "12.5", "0", "100"),
    }),
    weight: 2,
  },
  { arbitrary: fc.record({ kind: fc.constant("wrap" as const), at: fc.nat() }), weight: 1 },
  {
    arbitrary: fc.record({ kind: fc.constant("like" as const), at: fc.nat(), pick: fc.nat() }),
    weight: 6,
  },
);

/** A hostile value of the same kind as the scalar `at` (a leap second for a timestamp…). */
function likeNasty(at: J, pick: number): J {
  const pool: readonly J[] =
    typeof at === "string"
      ? nastiesLike(at)
      : typeof at === "number"
        ? NUMBER_NASTIES
        : typeof at === "boolean"
          ? ["true", 1, 0, null, "false"]
          : SPECIAL_STRINGS;
  return pool[pick % pool.length]!;
}

function valueAt(value: J, path: (string | number)[]): J {
  let at = value;
  for (const i of path)
    at = at instanceof Obj ? at.entries[i as number]![1] : (at as J[])[i as number]!;
  return at;
}

function mutate(value: J, m: Mutation): J {
  const places = slots(value);
  const path = places[m.at % places.length]!;
  switch (m.kind) {
    case "replace":
      return edit(value, path, () => m.value);
    case "delete":
      return path.length === 0 ? value : edit(value, path, () => undefined);
    case "number":
      // A number where (most often) a decimal string or an id belongs.
      return edit(value, path, () => new Raw(m.raw));
    case "wrap":
      return edit(value, path, (at) => [at]);
    case "like": {
      const leaves = places.filter((p) => {
        const at = valueAt(value, p);
        return !(at instanceof Obj) && !Array.isArray(at);
      });
      if (leaves.length === 0) return value;
      return edit(value, leaves[m.at % leaves.length]!, (at) => likeNasty(at, m.pick));
    }
    case "extra": {
      const objects = places.filter((p) => valueAt(value, p) instanceof Obj);
      if (objects.length === 0) return new Obj([[m.key, m.value]]);
      const target = objects[m.at % objects.length]!;
      return edit(value, target, (at) => new Obj([...(at as Obj).entries, [m.key, m.value]]));
    }
  }
}

// ---- URLs and headers ----------------------------------------------------------------------

/** Percent-encoding of any string, lone surrogates included (as their WTF-8 bytes). */
function encode(s: string): string {
  let out = "";
  for (const ch of s) {
    const code = ch.codePointAt(0)!;
    if (code >= 0xd800 && code <= 0xdfff) {
      out += [0xe0 | (code >> 12), 0x80 | ((code >> 6) & 0x3f), 0x80 | (code & 0x3f)]
        .map((b) => `%${b.toString(16).toUpperCase()}`)
        .join("");
    } else out += encodeURIComponent(ch);
  }
  return out;
}

/** Escapes written straight into a URL: broken, overlong and NUL percent-encodings. */
const RAW_URL_PIECES = [
  "%",
  "%zz",
  "%00",
  "%C0%80",
  "%C0%AF",
  "%FF",
  "%ED%A0%80",
  "%E2%80%AE",
  "..",
  ".",
  "%2e%2e",
  "%2F",
  "a%2Fb",
  "%20",
  "+",
  "%0A",
];

/** Cursors that decode, carrying values no list ever wrote into one. */
const craftedCursor: fc.Arbitrary<string> = fc
  .array(
    fc.oneof(
      hostileString,
      fc.constantFrom<unknown>(
        1e308,
        -1,
        1.5,
        2 ** 63,
        null,
        "99999999999999999999999",
        "2026-11-24T10:00:00Z",
      ),
    ),
    { minLength: 1, maxLength: 3 },
  )
  .map((values) => Buffer.from(JSON.stringify(values)).toString("base64url"));

const hostileUrlText: fc.Arbitrary<string> = fc.oneof(
  { arbitrary: hostileString.map(encode), weight: 4 },
  { arbitrary: fc.constantFrom(...RAW_URL_PIECES), weight: 2 },
  { arbitrary: fc.constantFrom(...RAW_NUMBERS), weight: 1 },
  { arbitrary: fc.constantFrom(129, 600, 5_000).map((n) => "9".repeat(n)), weight: 1 },
);

/** Cursors that decode, with values no list writes: NUL, huge numbers, non-dates, nulls. */
const CURSOR_NASTIES = [
  ["a\u0000"],
  ["\ud800"],
  [1e308],
  [-1],
  [1.5],
  [null],
  ["99999999999999999999999"],
  ["0000-01-01T00:00:00Z", "x"],
  ["2026-12-31T23:59:60Z", "x"],
  ["2026-11-24T10:00:00Z", "\u0000"],
  ["not a date", "txn_x"],
  ["x", "y", "z"],
].map((values) => Buffer.from(JSON.stringify(values)).toString("base64url"));

/** Hostile text for one path or query parameter, by what its schema expects (URL-encoded). */
function nastiesFor(schema: Json, name: string): string[] {
  const typed: string[] = [];
  if (name === "cursor") typed.push(...CURSOR_NASTIES);
  if (schema?.format === "date-time") typed.push(...TIMESTAMP_NASTIES.map(encode));
  if (schema?.type === "integer" || schema?.type === "number") {
    typed.push(
      ...[...DECIMAL_NASTIES, ...RAW_NUMBERS, "1,2", "2147483648", "-2147483649"].map(encode),
    );
  }
  const choices = [...(schema?.anyOf ?? []), schema].flatMap((s: Json) => s?.enum ?? []);
  for (const c of choices.map(String)) {
    typed.push(...[c.toUpperCase(), `${c} `, `${c}\u0000`, `${c},${c}`].map(encode));
  }
  if (typed.length === 0) typed.push(...[...ID_NASTIES, ...DECIMAL_NASTIES].map(encode));
  return [...new Set([...typed, ...RAW_URL_PIECES])];
}

function nastyFor(schema: Json, name: string): fc.Arbitrary<string> {
  return fc.oneof(
    { arbitrary: fc.constantFrom(...nastiesFor(schema, name)), weight: 3 },
    { arbitrary: name === "cursor" ? craftedCursor : hostileUrlText, weight: 1 },
  );
}

const CONTENT_TYPES = [
  "text/plain",
  "application/x-www-form-urlencoded",
  "multipart/form-data; boundary=x",
  "application/JSON",
  "application/json; charset=latin1",
  "application/json; charset=utf-16",
  "application/octet-stream",
  "application/jsonx",
];

/** Printable ASCII only: what a client can put in a header at all. */
const headerText = fc.oneof(
  fc.string({ unit: "grapheme-ascii", minLength: 0, maxLength: 20 }),
  fc.constantFrom("", " ", "a".repeat(256), "a".repeat(5000), "' OR 1=1 --", "<b>", "__proto__"),
);

// ---- the operations ------------------------------------------------------------------------

interface Operation {
  name: string;
  method: "GET" | "POST" | "PUT" | "PATCH" | "DELETE";
  path: string;
  parameters: { in: string; name: string; schema: Json }[];
  body: Json | null;
  documented: Set<number>;
}

/** The world the requests name: ids that exist, so that requests get past the lookups. */
interface Fixtures {
  own: string;
  foreign: string;
  user: string;
  victimKey: string;
  txn: string;
  reservation: string;
  pkg: string;
  purchase: string;
  endpoint: string;
  version: string;
}

function pathValues(f: Fixtures, path: string): Record<string, string[]> {
  const id = path.includes("/purchases/")
    ? [f.purchase]
    : path.includes("/credit-packages/")
      ? [f.pkg]
      : path.includes("/webhook-endpoints/")
        ? [f.endpoint]
        : [f.pkg, f.purchase, f.endpoint];
  return {
    // Mostly the key's own organisation: a foreign one is a 404 for the admin key.
    org_id: [f.own, f.own, "ext:fuzz-own", f.foreign],
    user_id: [f.user],
    key_id: [f.victimKey],
    txn_id: [f.txn],
    reservation_id: [f.reservation],
    id,
    version: [f.version],
  };
}

/**
 * Valid bodies to break, for the operations whose schema alone rarely yields one that passes
 * the business rules (a usage event's fields depend on its type, and so on).
 */
function seeds(f: Fixtures): Record<string, fc.Arbitrary<unknown>> {
  const at = (s: number) => new Date(NOW + s * 1000).toISOString();
  const n = fc.nat({ max: 1_000_000 });
  const event = (i: number) =>
    fc.constantFrom<Record<string, unknown>>(
      {
        id: `fz-ai-${i}`,
        type: "ai_tokens",
        model: "gpt-4o",
        user_id: f.user,
        operation: "chat.completion",
        timestamp: at(-60),
        tokens: { input: 1200, cached_input: 300, cache_write: 0, output: 350 },
        metadata: { request_id: "r-1" },
      },
      {
        id: `fz-oa-${i}`,
        type: "ai_tokens",
        model: "gpt-4o",
        provider_usage: {
          provider: "openai",
          usage: {
            prompt_tokens: 100,
            completion_tokens: 20,
            prompt_tokens_details: { cached_tokens: 10 },
          },
        },
      },
      {
        id: `fz-an-${i}`,
        type: "ai_tokens",
        model: "claude-sonnet-4",
        provider_usage: {
          provider: "anthropic",
          usage: {
            input_tokens: 100,
            output_tokens: 20,
            cache_read_input_tokens: 5,
            cache_creation_input_tokens: 7,
          },
        },
      },
      {
        id: `fz-cp-${i}`,
        org_id: f.own,
        type: "compute",
        meter: "compute.vcpu_seconds",
        quantity: "2.5",
        resource: "vm-1",
      },
      {
        id: `fz-st-${i}`,
        type: "storage",
        meter: "storage.gb",
        quantity: "10",
        resource: "bucket-1",
      },
      { id: `fz-bw-${i}`, type: "bandwidth", meter: "bandwidth.egress_gb", quantity: "0.000001" },
      { id: `fz-do-${i}`, type: "data_ops", meter: "data_ops.reads", quantity: "1000" },
    );
  const events = n.chain((i) => fc.array(event(i), { minLength: 1, maxLength: 3 }));
  return {
    "POST /v1/organizations": n.map((i) => ({
      name: "Fuzz Co",
      external_id: `fz-${i}`,
      plan: "enterprise",
      overdraft_limit: "10",
      metadata: { tier: "gold" },
    })),
    "PATCH /v1/organizations/{org_id}": fc.constant({ name: "Renamed", metadata: { k: "v" } }),
    "POST /v1/organizations/{org_id}/users": n.map((i) => ({
      id: `fz-user-${i}`,
      email: `u${i}@example.com`,
      name: "New",
      role: "viewer",
    })),
    "PATCH /v1/organizations/{org_id}/users/{user_id}": fc.constant({
      name: "Patched",
      role: "billing",
    }),
    "POST /v1/organizations/{org_id}/portal-sessions": fc.constant({
      user_id: f.user,
      return_url: "https://93.184.215.14/app",
    }),
    "POST /v1/organizations/{org_id}/adjustments": fc.constant({
      amount: "+5.5",
      reason: "fuzz",
      category: "promotional",
      priority: 3,
      expires_at: at(86_400),
    }),
    "PUT /v1/organizations/{org_id}/alerts": fc.constant({
      thresholds: ["500", "100"],
      emails: ["ops@example.com"],
    }),
    "PUT /v1/organizations/{org_id}/auto-topup": fc.constant({
      enabled: false,
      threshold: "100",
      package_id: f.pkg,
      monthly_limit: "500.00",
      max_failures: 2,
    }),
    "POST /v1/webhook-endpoints": fc.constant({
      url: "http://93.184.215.14/hooks",
      events: ["balance.low"],
      org_id: f.own,
    }),
    "PUT /v1/prices": fc.constant({
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
      ],
    }),
    "POST /v1/credit-packages": fc.constant({
      name: "Pack",
      credits: "100",
      bonus_credits: "10",
      price: "9.99",
      currency: "USD",
      bonus_expires_in_days: 30,
      active: true,
    }),
    "PATCH /v1/credit-packages/{id}": fc.constant({ name: "Pack 2", active: true }),
    "POST /v1/organizations/{org_id}/purchases": fc.constant({
      package_id: f.pkg,
      success_url: "https://93.184.215.14/ok",
      cancel_url: "https://93.184.215.14/no",
      save_payment_method: true,
    }),
    "POST /v1/organizations/{org_id}/purchases/{id}/refund": fc.constant({ reason: "fuzz" }),
    "POST /v1/usage-events": fc.oneof(
      events.map((e) => ({ events: e })),
      event(0).chain((e) => n.map((i) => ({ ...e, id: `fz-one-${i}` }))),
    ),
    "POST /v1/organizations/{org_id}/reservations": fc.constant({
      amount: "5",
      expires_in_seconds: 300,
    }),
    "POST /v1/organizations/{org_id}/reservations/{reservation_id}/settle": events.map((e) => ({
      events: e,
    })),
    "POST /web/login": fc.constant({ api_key: "tally_0000000000000000000000000000000000000000" }),
    "POST /v1/webhooks/stripe": fc.constant({
      id: "evt_1",
      type: "checkout.session.completed",
      data: {
        object: { id: "cs_1", payment_status: "paid", metadata: { purchase_id: f.purchase } },
      },
    }),
  };
}

/** Which part of the request is hostile; the others are valid. */
type Focus = "body" | "query" | "path" | "headers" | "none";

interface HostileRequest {
  key: "platform" | "admin";
  focus: Focus;
  path: Record<string, string>;
  query: [string, string][];
  body: { kind: "none" } | { kind: "json"; value: J } | { kind: "text"; text: string };
  headers: Record<string, string>;
}

function requestArb(op: Operation, fixtures: Fixtures): fc.Arbitrary<HostileRequest> {
  const known = pathValues(fixtures, op.path);
  const pathParams = op.parameters.filter((p) => p.in === "path");
  const queryParams = op.parameters.filter((p) => p.in === "query");
  const hasBody = op.body !== null;

  const validPath = fc.record(
    Object.fromEntries(
      pathParams.map((p) => [
        p.name,
        known[p.name]
          ? fc.constantFrom(...known[p.name]!.map(encode))
          : validString(p.schema ?? {}).map(encode),
      ]),
    ),
  );
  const hostilePath = validPath.chain((valid) =>
    fc
      .constantFrom(...pathParams)
      .chain((p) => nastyFor(p.schema, p.name).map((value) => ({ ...valid, [p.name]: value }))),
  );

  const validQuery = fc
    .tuple(
      ...queryParams.map((p) =>
        fc.option(
          validArb(p.schema ?? {}).map(
            (v) =>
              [p.name, encode(typeof v === "string" ? v : JSON.stringify(v))] as [string, string],
          ),
          { freq: 2 },
        ),
      ),
    )
    .map((pairs) => pairs.filter((q): q is [string, string] => q !== null));
  const oneHostileParam: fc.Arbitrary<[string, string]> =
    queryParams.length > 0
      ? fc
          .constantFrom(...queryParams)
          .chain((p) => nastyFor(p.schema, p.name).map((v) => [p.name, v] as [string, string]))
      : fc.constant(["x", "1"]);
  const extraParam = fc.tuple(
    fc.constantFrom("__proto__", "constructor[prototype][x]", "limit[]", "a[b]", "", "x"),
    hostileUrlText,
  );
  const hostileQuery = fc
    .tuple(
      validQuery,
      fc.array(
        fc.oneof({ arbitrary: oneHostileParam, weight: 4 }, { arbitrary: extraParam, weight: 1 }),
        { minLength: 1, maxLength: 2 },
      ),
    )
    // The hostile value replaces a valid one of the same name (a repeated name is an array).
    .map(([valid, hostile]) => [
      ...valid.filter(([name]) => !hostile.some(([h]) => h === name)),
      ...hostile,
    ]);

  const seed = seeds(fixtures)[op.name];
  const validBody: fc.Arbitrary<J> = (
    seed && op.body
      ? fc.oneof({ arbitrary: seed, weight: 3 }, { arbitrary: validArb(op.body), weight: 1 })
      : validArb(op.body)
  ).map(toJ);
  const noBody = fc.constant({ kind: "none" as const });
  const json = (value: J) => ({ kind: "json" as const, value });
  const hostileBody: fc.Arbitrary<HostileRequest["body"]> = fc.oneof(
    {
      arbitrary: fc
        .tuple(
          hasBody ? validBody : fc.constant<J>(new Obj([])),
          fc.array(mutation, { minLength: 1, maxLength: 3 }),
        )
        .map(([value, ms]) => json(ms.reduce(mutate, value))),
      weight: 8,
    },
    { arbitrary: hostileValue.map(json), weight: 2 },
    {
      arbitrary: fc
        .constantFrom(...MALFORMED_BODIES)
        .map((text) => ({ kind: "text" as const, text })),
      weight: 1,
    },
    { arbitrary: oversized.map(json), weight: 1 },
  );
  const json201: Record<string, string> = { "content-type": "application/json" };
  const hostileHeaders = fc.record(
    {
      "content-type": fc.constantFrom(...CONTENT_TYPES),
      "idempotency-key": headerText,
      "on-behalf-of": fc.oneof(fc.constant(fixtures.user), headerText),
    },
    { requiredKeys: [] },
  );

  const focuses: { arbitrary: fc.Arbitrary<Focus>; weight: number }[] = [
    { arbitrary: fc.constant("body"), weight: hasBody ? 8 : 1 },
    { arbitrary: fc.constant("headers"), weight: 1 },
    { arbitrary: fc.constant("none"), weight: 2 },
  ];
  if (queryParams.length > 0) focuses.push({ arbitrary: fc.constant("query"), weight: 3 });
  if (pathParams.length > 0) focuses.push({ arbitrary: fc.constant("path"), weight: 3 });

  return fc.oneof(...focuses).chain((focus) =>
    fc.record({
      key: fc.constantFrom("platform" as const, "admin" as const),
      focus: fc.constant(focus),
      path: focus === "path" ? hostilePath : validPath,
      query: focus === "query" ? hostileQuery : validQuery,
      body: focus === "body" ? hostileBody : hasBody ? validBody.map(json) : noBody,
      headers:
        focus === "headers"
          ? hostileHeaders.map((h) => ({ ...json201, ...h }))
          : fc.constant(json201),
    }),
  );
}

// ---- the test --------------------------------------------------------------------------------

describe("hostile input on every route", async () => {
  const app = await createTestApp();
  const db = app.runtime.ctx.db;

  async function ok(status: number, method: Operation["method"], url: string, body?: unknown) {
    const res = await app.call(method, url, { body });
    if (res.statusCode !== status)
      throw new Error(`${method} ${url}: ${res.statusCode} ${res.body}`);
    return res.json();
  }

  const own = await app.createOrg({ external_id: "fuzz-own", metadata: { tier: "gold" } });
  const foreign = await app.createOrg({ external_id: "fuzz-foreign" });
  const adminKey = await app.orgKey(own, "admin");
  const keys = { platform: app.platformKey, admin: adminKey };
  const catalogue = await ok(200, "GET", "/v1/prices");
  const pkg = await ok(201, "POST", "/v1/credit-packages", {
    name: "Fuzz pack",
    credits: "1000",
    price: "10.00",
  });
  const grant = await ok(201, "POST", `/v1/organizations/${own}/adjustments`, {
    amount: "+1000",
    reason: "fuzz credits",
  });
  await ok(200, "POST", "/v1/usage-events", {
    id: "fuzz-evt-1",
    org_id: own,
    type: "compute",
    meter: "compute.vcpu_seconds",
    quantity: "2",
  });
  const purchase = await ok(201, "POST", `/v1/organizations/${own}/purchases`, {
    package_id: pkg.id,
  });
  const fixtures: Fixtures = {
    own,
    foreign,
    user: "",
    victimKey: "",
    txn: grant.id,
    reservation: "",
    pkg: pkg.id,
    purchase: purchase.id,
    endpoint: "",
    version: String(catalogue.version),
  };
  let serial = 0;

  /**
   * Puts back what valid requests of the previous operation used up or changed (a deleted user,
   * a revoked key, a settled reservation, a plan without credits, a replaced price catalogue),
   * so that every operation is fuzzed against a world its requests can get into.
   */
  async function refresh(): Promise<void> {
    const orgUrl = `/v1/organizations/${own}`;
    await ok(200, "PATCH", orgUrl, { plan: "professional", overdraft_limit: "0" });
    await ok(200, "PATCH", `/v1/credit-packages/${pkg.id}`, { active: true });
    if (
      fixtures.user === "" ||
      (await app.call("GET", `${orgUrl}/users/${fixtures.user}`)).statusCode !== 200
    ) {
      fixtures.user = `fuzz-user-${++serial}`;
      await ok(201, "POST", `${orgUrl}/users`, {
        id: fixtures.user,
        email: "fuzz@example.com",
        role: "admin",
      });
    }
    const listed = await ok(200, "GET", `${orgUrl}/api-keys?limit=1000`);
    if (!listed.data.some((k: Json) => k.id === fixtures.victimKey && k.revoked_at === null)) {
      fixtures.victimKey = (
        await ok(201, "POST", `${orgUrl}/api-keys`, { name: "victim", role: "read" })
      ).id;
    }
    const { available } = await ok(200, "GET", `${orgUrl}/balance`);
    if (Number(available) < 500) {
      // Usage can leave a debt larger than one adjustment may add (15 digits): the service
      // takes any amount, so 1000 credits on top of the debt is one entry.
      const topUp = await adjustCredits(app.runtime.ctx, {
        orgId: own,
        amount: parseCredits("1000") - parseCredits(available),
        reason: "fuzz top-up",
        category: "correction",
        expiresAt: null,
        priority: null,
        actor: { type: "system", id: "fuzz" },
        userId: null,
      });
      if (!topUp.ok) throw new Error(`fuzz top-up: ${topUp.message}`);
    }
    const held =
      fixtures.reservation !== "" &&
      (await ok(200, "GET", `${orgUrl}/reservations/${fixtures.reservation}`)).status === "held";
    if (!held) {
      fixtures.reservation = (await ok(201, "POST", `${orgUrl}/reservations`, { amount: "10" })).id;
    }
    if (
      fixtures.endpoint === "" ||
      (await app.call("GET", `/v1/webhook-endpoints/${fixtures.endpoint}`)).statusCode !== 200
    ) {
      fixtures.endpoint = (
        await ok(201, "POST", "/v1/webhook-endpoints", {
          url: "http://93.184.215.14/hooks",
          org_id: own,
        })
      ).id;
    }
    if ((await ok(200, "GET", "/v1/prices")).version !== catalogue.version) {
      const { models, meters } = catalogue;
      fixtures.version = String(
        (
          await ok(200, "PUT", "/v1/prices", {
            effective_from: "1970-01-01T00:00:00Z",
            models,
            meters,
          })
        ).version,
      );
      catalogue.version = Number(fixtures.version);
    }
  }

  const doc = (await app.call("GET", "/openapi.json", { key: null })).json();
  const operations: Operation[] = [];
  for (const [path, item] of Object.entries<Json>(doc.paths)) {
    for (const [method, op] of Object.entries<Json>(item)) {
      operations.push({
        name: `${method.toUpperCase()} ${path}`,
        method: method.toUpperCase() as Operation["method"],
        path,
        parameters: op.parameters ?? [],
        body: op.requestBody?.content?.["application/json"]?.schema ?? null,
        documented: new Set(Object.keys(op.responses ?? {}).map(Number)),
      });
    }
  }

  /**
   * A hash of every row of every table, per table. Left out: bookkeeping (idempotency records,
   * `last_used_at`) and a balance row that is still all zero — one is created on first use,
   * even by a request that is then refused, and is the same as none.
   */
  const UNTOUCHED: Record<string, ReturnType<typeof sql.raw>> = {
    org_balances: sql.raw("last_sequence = 0 and balance = 0 and reserved = 0 and debt = 0"),
  };
  async function snapshot(): Promise<Record<string, string[]>> {
    const tables = await sql<{ name: string }>`
      select table_name as name from information_schema.tables
      where table_schema = current_schema() and table_type = 'BASE TABLE'
        and table_name not in ('idempotency_keys', 'kysely_migration', 'kysely_migration_lock')
      order by table_name`.execute(db);
    const parts = tables.rows.map((t) => {
      const untouched = UNTOUCHED[t.name] ?? sql.raw("false");
      return sql`select ${t.name} as name, coalesce(array_agg(md5(r) order by r), '{}') as rows
        from (select (to_jsonb(x) - 'last_used_at')::text as r
              from ${sql.table(t.name)} x where not (${untouched})) s`;
    });
    const result = await sql<{
      name: string;
      rows: string[];
    }>`${sql.join(parts, sql` union all `)}`.execute(db);
    return Object.fromEntries(result.rows.map((r) => [r.name, r.rows]));
  }

  /** What changed between two snapshots, with the new rows in full (for the failure report). */
  async function describeChange(
    before: Record<string, string[]>,
    after: Record<string, string[]>,
  ): Promise<string | null> {
    const lines: string[] = [];
    for (const table of Object.keys(after)) {
      const old = new Set(before[table]);
      const now = new Set(after[table]);
      const added = [...now].filter((h) => !old.has(h));
      const removed = [...old].filter((h) => !now.has(h));
      if (added.length === 0 && removed.length === 0) continue;
      const rows =
        added.length === 0
          ? []
          : (
              await sql<{
                r: string;
              }>`select r from (select (to_jsonb(x) - 'last_used_at')::text as r
                from ${sql.table(table)} x) s where md5(r) in (${sql.join(added.slice(0, 3))})`.execute(
                db,
              )
            ).rows.map((row) => row.r.slice(0, 400));
      lines.push(`${table}: +${added.length} −${removed.length} ${rows.join(" | ")}`);
    }
    return lines.length > 0 ? lines.join("\n") : null;
  }

  function urlOf(op: Operation, r: HostileRequest): string {
    const path = op.path.replace(/\{(\w+)\}/g, (_m, name: string) => r.path[name] ?? "x");
    const query = r.query.map(([k, v]) => `${encode(k)}=${v}`).join("&");
    return query ? `${path}?${query}` : path;
  }

  function checkAnswer(op: Operation, r: HostileRequest, url: string, res: LightMyRequestResponse) {
    const what = () =>
      `${op.method} ${url.slice(0, 300)} (${r.key} key, hostile ${r.focus}) → ${res.statusCode} ${res.body.slice(0, 500)}`;
    if (res.statusCode >= 500) throw new Error(`server error: ${what()}`);
    if (!op.documented.has(res.statusCode)) throw new Error(`undocumented status: ${what()}`);
    if (res.statusCode < 400) return;
    let body: Json;
    try {
      body = res.json();
    } catch {
      throw new Error(`error answer is not JSON: ${what()}`);
    }
    const error = body?.error;
    const envelope =
      body &&
      Object.keys(body).join() === "error" &&
      typeof error?.code === "string" &&
      typeof error.message === "string" &&
      typeof error.request_id === "string" &&
      error.request_id.length > 0 &&
      Array.isArray(error.details) &&
      error.details.every(
        (d: Json) => d && typeof d === "object" && typeof d.message === "string",
      ) &&
      Object.keys(error).every((k) => ["code", "message", "request_id", "details"].includes(k));
    if (!envelope) throw new Error(`not the error envelope: ${what()}`);
    const entry = (ERRORS as Record<string, { status: number }>)[error.code];
    if (!entry || entry.status !== res.statusCode) {
      throw new Error(`code ${error.code} does not go with status ${res.statusCode}: ${what()}`);
    }
  }

  async function send(op: Operation, r: HostileRequest) {
    const url = urlOf(op, r);
    const headers: Record<string, string> = {
      ...r.headers,
      authorization: `Bearer ${keys[r.key]}`,
    };
    let payload: string | undefined;
    if (r.body.kind === "json") payload = toJson(r.body.value);
    else if (r.body.kind === "text") payload = r.body.text;
    else delete headers["content-type"];
    const res = await app.runtime.app.inject({ method: op.method, url, headers, payload });
    return { url, res };
  }

  it("covers the whole route table", () => {
    expect(operations.length).toBeGreaterThan(50);
    const prefixes = new Set(operations.map((o) => o.path.split("/")[1]));
    expect([...prefixes]).toEqual(expect.arrayContaining(["v1", "web", "healthz"]));
  });

  const stats: Record<string, Record<number, number>> = {};
  afterAll(() => {
    if (process.env.FUZZ_STATS) console.log(JSON.stringify(stats).replaceAll("},", "},\n"));
  });

  /**
   * Every hostile value of its kind in every path and query parameter, one at a time, the rest
   * of the request valid: the random runs below may miss one of a few dozen edge cases.
   */
  async function sweepParameters(op: Operation): Promise<void> {
    const sample = <T>(arb: fc.Arbitrary<T>) => fc.sample(arb, { numRuns: 1, seed: 1 })[0]!;
    const valid = sample(requestArb(op, fixtures).filter((r) => r.focus === "none"));
    const before = await snapshot();
    let succeeded = false;
    for (const p of op.parameters.filter((q) => q.in === "path" || q.in === "query")) {
      for (const value of nastiesFor(p.schema, p.name)) {
        const r: HostileRequest = {
          ...valid,
          key: "platform",
          focus: p.in === "path" ? "path" : "query",
          path: p.in === "path" ? { ...valid.path, [p.name]: value } : valid.path,
          query:
            p.in === "query"
              ? [...valid.query.filter(([name]) => name !== p.name), [p.name, value]]
              : valid.query,
        };
        const { url, res } = await send(op, r);
        checkAnswer(op, r, url, res);
        if (res.statusCode < 400) succeeded = true;
      }
    }
    if (!succeeded || op.method === "GET") {
      const change = await describeChange(before, await snapshot());
      if (change)
        throw new Error(`hostile parameters of ${op.name} changed the database:\n${change}`);
    }
  }

  it.each(operations.map((op) => [op.name, op] as const))(
    "%s",
    { timeout: 120_000 },
    async (name, op) => {
      await refresh();
      await sweepParameters(op);
      const counts: Record<number, number> = {};
      stats[name] = counts;
      let before = await snapshot();
      const readOnly = op.method === "GET";
      await fc.assert(
        fc.asyncProperty(requestArb(op, fixtures), async (r) => {
          const { url, res } = await send(op, r);
          counts[res.statusCode] = (counts[res.statusCode] ?? 0) + 1;
          checkAnswer(op, r, url, res);
          if (readOnly) return;
          const after = await snapshot();
          if (res.statusCode >= 400) {
            const change = await describeChange(before, after);
            if (change) {
              throw new Error(
                `refused with ${res.statusCode} but changed the database: ${op.method} ${url.slice(0, 300)} → ${res.body.slice(0, 300)}\n${change}`,
              );
            }
          }
          before = after;
        }),
        { numRuns: RUNS * 2 },
      );
      if (readOnly) expect(await snapshot()).toEqual(before);
    },
  );
});
