import { CompiledQuery } from "kysely";
import { type Db, PREPARED } from "./index.js";
import { isoString } from "./instant.js";

/**
 * Set-based writes for the hot path. Rows travel as one array parameter per column and come
 * back out of `unnest` — a statement's text no longer grows with its rows (so it is prepared
 * once per connection), and several such statements run as ONE round trip (`writeTogether`).
 *
 * The statement is composed from `Sql` fragments rather than Kysely's builder: a flush writes
 * one statement of a dozen CTEs, and building and compiling Kysely's frozen node trees for it
 * cost more CPU than the events themselves (bench/results/profile-*.md).
 */

/** SQL text with its parameters in place, made by the `q` tag. */
export class Sql {
  constructor(
    readonly strings: readonly string[],
    readonly values: readonly unknown[],
  ) {}
}

/** Text put into a statement as is: only for what Tally itself writes (see `ident`, `raw`). */
class Raw {
  constructor(readonly text: string) {}
}

/**
 * `q\`… ${value} …\``: a value is a parameter, unless it is a nested `Sql` fragment (inlined,
 * its parameters renumbered) or made by `ident`/`raw`.
 */
export function q(strings: TemplateStringsArray, ...values: unknown[]): Sql {
  return new Sql(strings, values);
}

/** A quoted identifier (a table, column or CTE name). */
export function ident(name: string): Raw {
  return new Raw(`"${name.replaceAll('"', '""')}"`);
}

/** Literal SQL text; never for anything that came from a request. */
export function raw(text: string): Raw {
  return new Raw(text);
}

/** The parts one after another, `separator` between them. */
export function join(parts: readonly (Sql | Raw)[], separator = ", "): Sql {
  const strings = parts.length === 0 ? [""] : ["", ...parts.slice(1).map(() => separator), ""];
  return new Sql(strings, parts);
}

/** The statement's text (`$1`, `$2`… for its parameters) and parameters, in order. */
export function render(fragment: Sql): { text: string; parameters: unknown[] } {
  const parameters: unknown[] = [];
  let text = "";
  const walk = (s: Sql) => {
    for (let i = 0; i < s.strings.length; i++) {
      text += s.strings[i];
      if (i >= s.values.length) continue;
      const v = s.values[i];
      if (v instanceof Sql) walk(v);
      else if (v instanceof Raw) text += v.text;
      else {
        parameters.push(v);
        text += `$${parameters.length}`;
      }
    }
  };
  walk(fragment);
  return { text, parameters };
}

/** Runs a fragment in `db` (a transaction or the database: then it commits by itself). */
export async function execute<R>(db: Db, fragment: Sql): Promise<R[]> {
  const { text, parameters } = render(fragment);
  return (await db.executeQuery<R>(CompiledQuery.raw(text, parameters))).rows;
}

/** A column of an `unnest` row source: its name and PostgreSQL type (an identifier we write). */
export type Column = readonly [name: string, type: string];

type Cell = string | number | boolean | bigint | Date | null;

/**
 * `select * from unnest($1::t1[], $2::t2[], …) as v(c1, c2, …)`: a row source of `rows`, each
 * a tuple in `columns` order. Each column travels as one array literal.
 */
export function unnestRows(columns: readonly Column[], rows: readonly (readonly Cell[])[]): Sql {
  const params = columns.map(
    ([, type], i) => q`${arrayLiteral(rows, i)}::${raw(checkType(type))}[]`,
  );
  return q`select * from unnest(${join(params)}) as v(${join(columns.map(([name]) => ident(name)))})`;
}

const NEEDS_ESCAPE = /["\\]/;

/**
 * A PostgreSQL array literal of column `i` of `rows`: text quoted (and `"`/`\` escaped), numbers
 * and booleans bare, instants as ISO text, nulls as NULL. Written here, not by the driver, which
 * escapes every element through two regular expressions.
 */
function arrayLiteral(rows: readonly (readonly Cell[])[], i: number): string {
  let out = "{";
  for (let r = 0; r < rows.length; r++) {
    if (r > 0) out += ",";
    const v = rows[r]![i] ?? null;
    if (v === null) out += "NULL";
    else if (typeof v === "string") {
      out += NEEDS_ESCAPE.test(v) ? `"${v.replace(/[\\"]/g, "\\$&")}"` : `"${v}"`;
    } else if (v instanceof Date) out += isoString(v);
    else out += String(v); // bigint, number, boolean (true/false)
  }
  return `${out}}`;
}

/** A statement ending in `returning 1` (or a `select`), so that its rows can be counted. It is a
 * CTE named `name`: a guard or another step may refer to it as `ident(name)`. */
export interface WriteStep {
  name: string;
  statement: Sql;
}

/** A query read in the same statement (as of its snapshot, before the steps' writes). */
export interface ReadStep {
  name: string;
  /** Its rows come back through JSON: select text, not numbers that need to stay exact. */
  query: Sql;
}

/**
 * A condition the statement must meet: if it is not true, the statement fails with SQLSTATE
 * `TL001` (`GUARD_FAILED`, message `name`) and nothing it wrote is kept. Guards come first in
 * the statement's select list, in order: one that refers to no step is checked before any step
 * writes (a step is written when something first reads it, or at the end).
 */
export interface Guard {
  name: string;
  condition: Sql;
}

/** SQLSTATE of a failed `Guard` (raised by `tally_guard`, migration 0013). */
export const GUARD_FAILED = "TL001";

/** The guard a failed statement names, or null if it failed for another reason. */
export function failedGuard(error: unknown): string | null {
  const e = error as { code?: unknown; message?: unknown } | null;
  return e?.code === GUARD_FAILED && typeof e.message === "string" ? e.message : null;
}

export interface Written {
  /** Rows each step wrote. */
  counts: Map<string, number>;
  /** Rows each read returned. */
  reads: Map<string, unknown[]>;
}

/**
 * Runs every step — and the reads and guards — in one prepared statement (data-modifying CTEs:
 * one snapshot, no step sees another's rows, so no two steps may touch the same row).
 */
export async function writeTogether(
  db: Db,
  steps: readonly WriteStep[],
  reads: readonly ReadStep[] = [],
  guards: readonly Guard[] = [],
): Promise<Written> {
  const written: Written = { counts: new Map(), reads: new Map() };
  if (steps.length === 0 && reads.length === 0) return written;
  const ctes = steps.map((s) => q`${ident(s.name)} as (${s.statement})`);
  const columns = [
    ...guards.map((g) => q`tally_guard(${g.condition}, ${raw(literal(g.name))})`),
    ...steps.map((s, i) => q`(select count(*) from ${ident(s.name)})::int as ${raw(`c${i}`)}`),
    ...reads.map(
      (r, i) =>
        q`(select coalesce(json_agg(r), '[]'::json) from (${r.query}) as r) as ${raw(`r${i}`)}`,
    ),
  ];
  const [row] = await execute<Record<string, unknown>>(
    db,
    q`${ctes.length > 0 ? q`with ${join(ctes)}` : raw("")} select ${join(columns)} ${raw(PREPARED)}`,
  );
  for (const [i, s] of steps.entries()) written.counts.set(s.name, Number(row![`c${i}`]));
  for (const [i, r] of reads.entries()) written.reads.set(r.name, row![`r${i}`] as unknown[]);
  return written;
}

function literal(text: string): string {
  if (!/^[a-z_:]+$/.test(text)) throw new Error(`bad guard name ${text}`);
  return `'${text}'`;
}

function checkType(type: string): string {
  if (!/^[a-z][a-z0-9_ ]*(\(\d+(,\d+)?\))?$/.test(type)) throw new Error(`bad column type ${type}`);
  return type;
}
