import { afterAll, describe, expect, it } from "vitest";
import { testDatabase } from "../../test/support/db.js";
import {
  execute,
  failedGuard,
  GUARD_FAILED,
  ident,
  join,
  q,
  raw,
  render,
  unnestRows,
  writeTogether,
} from "./bulk.js";

/**
 * The hot path's hand-built SQL: fragments render to the text and parameters Kysely would send,
 * and every value survives the trip through an array literal and `unnest` unchanged.
 */
describe("SQL fragments and unnest rows", async () => {
  const database = await testDatabase();
  afterAll(() => database.close());
  const db = database.db;

  it("renders nested fragments with parameters numbered in order", () => {
    const inner = q`b = ${2} and c = ${"x"}`;
    const { text, parameters } = render(
      q`select ${ident('we"ird')} from t where a = ${1} and ${inner} ${raw("limit 1")} and ${join([q`${3}`, q`${4}`], " or ")}`,
    );
    expect(text).toBe(
      'select "we""ird" from t where a = $1 and b = $2 and c = $3 limit 1 and $4 or $5',
    );
    expect(parameters).toEqual([1, 2, "x", 3, 4]);
    expect(render(join([])).text).toBe("");
  });

  it("carries text with quotes, backslashes, commas, braces, blanks and the word NULL exactly", async () => {
    const texts = [
      'say "hi"',
      "back\\slash",
      "\\",
      '"',
      "a,b",
      "{x}",
      " lead and trail ",
      "",
      "NULL",
      "null",
      "é ✓ 😀",
      "line\nbreak\ttab",
    ];
    const rows = await execute<{ t: string | null; i: number }>(
      db,
      q`select t, i from (${unnestRows(
        [
          ["t", "text"],
          ["i", "integer"],
        ],
        [...texts.map((t, i) => [t, i]), [null, texts.length]],
      )}) as v order by i`,
    );
    expect(rows.map((r) => r.t)).toEqual([...texts, null]);
  });

  it("carries numbers, bigints, booleans, instants and JSON exactly", async () => {
    const at = new Date("2026-11-24T12:34:56.789Z");
    const json = JSON.stringify({ quote: '"', backslash: "\\", nested: { list: [1, "two"] } });
    const [row] = await execute<Record<string, unknown>>(
      db,
      q`select n::text as n, b::text as b, f, at, j from (${unnestRows(
        [
          ["n", "numeric"],
          ["b", "bigint"],
          ["f", "boolean"],
          ["at", "timestamptz"],
          ["j", "jsonb"],
        ],
        [["-12.345678901234", 9007199254740993n, false, at, json]],
      )}) as v`,
    );
    expect(row).toEqual({
      n: "-12.345678901234",
      b: "9007199254740993",
      f: false,
      at,
      j: JSON.parse(json),
    });
  });

  it("a failed guard aborts the whole statement: nothing written, SQLSTATE TL001 naming it", async () => {
    await execute(db, q`create table bulk_guarded (id int)`);
    const attempt = writeTogether(
      db,
      [{ name: "w:insert", statement: q`insert into bulk_guarded values (1) returning 1` }],
      [],
      [{ name: "no:way", condition: q`(select count(*) from ${ident("w:insert")}) = 2` }],
    );
    const error = await attempt.catch((e: unknown) => e);
    expect((error as { code?: string }).code).toBe(GUARD_FAILED);
    expect(failedGuard(error)).toBe("no:way");
    expect(await execute(db, q`select * from bulk_guarded`)).toEqual([]);
    const ok = await writeTogether(
      db,
      [{ name: "w:insert", statement: q`insert into bulk_guarded values (1) returning 1` }],
      [],
      [{ name: "fine", condition: q`(select count(*) from ${ident("w:insert")}) = 1` }],
    );
    expect(ok.counts.get("w:insert")).toBe(1);
  });
});
