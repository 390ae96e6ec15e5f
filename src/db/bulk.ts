import { type Expression, type RawBuilder, sql } from "kysely";
import type { Db } from "./index.js";

/**
 * Set-based writes for the hot path. Rows travel as one array parameter per column and come
 * back out of `unnest` — a statement's size and parse cost no longer grow with its rows, and
 * several such statements run as ONE round trip (`writeTogether`).
 */

/** A column of an `unnest` row source: its name and PostgreSQL type (an identifier we write). */
export type Column = readonly [name: string, type: string];

type Cell = string | number | boolean | bigint | Date | null;

/**
 * `select * from unnest($1::t1[], $2::t2[], …) as v(c1, c2, …)`: a row source of `rows`, each
 * a tuple in `columns` order. Dates are sent as ISO instants, bigints as their decimal text.
 */
export function unnestRows(
  columns: readonly Column[],
  rows: readonly (readonly Cell[])[],
): RawBuilder<unknown> {
  const arrays = columns.map((_c, i) =>
    rows.map((row) => {
      const v = row[i] ?? null;
      if (v instanceof Date) return v.toISOString();
      if (typeof v === "bigint") return v.toString();
      return v;
    }),
  );
  const params = columns.map(([, type], i) => sql`${arrays[i]}::${sql.raw(checkType(type))}[]`);
  const names = columns.map(([name]) => sql.id(name));
  return sql`select * from unnest(${sql.join(params)}) as v(${sql.join(names)})`;
}

/** A data-modifying statement ending in `returning 1`, so that its rows can be counted. */
export interface WriteStep {
  name: string;
  statement: RawBuilder<unknown>;
}

/** A query read in the same statement (as of its snapshot, before the steps' writes). */
export interface ReadStep {
  name: string;
  /** Its rows come back through JSON: select text, not numbers that need to stay exact. */
  query: Expression<unknown>;
}

export interface Written {
  /** Rows each step wrote. */
  counts: Map<string, number>;
  /** Rows each read returned. */
  reads: Map<string, unknown[]>;
}

/**
 * Runs every step — and the reads — in one statement (data-modifying CTEs: one snapshot, no
 * step sees another's rows, so no two steps may touch the same row).
 */
export async function writeTogether(
  tx: Db,
  steps: readonly WriteStep[],
  reads: readonly ReadStep[] = [],
): Promise<Written> {
  const written: Written = { counts: new Map(), reads: new Map() };
  if (steps.length === 0 && reads.length === 0) return written;
  const ctes = steps.map((s, i) => sql`${sql.id(`w${i}`)} as (${s.statement})`);
  const columns = [
    ...steps.map(
      (_s, i) => sql`(select count(*) from ${sql.id(`w${i}`)})::int as ${sql.id(`c${i}`)}`,
    ),
    ...reads.map(
      (r, i) =>
        sql`(select coalesce(json_agg(r), '[]'::json) from (${r.query}) as r) as ${sql.id(`r${i}`)}`,
    ),
  ];
  const result = await sql<Record<string, unknown>>`
    ${ctes.length > 0 ? sql`with ${sql.join(ctes)}` : sql``} select ${sql.join(columns)}`.execute(
    tx,
  );
  const row = result.rows[0]!;
  for (const [i, s] of steps.entries()) written.counts.set(s.name, Number(row[`c${i}`]));
  for (const [i, r] of reads.entries()) written.reads.set(r.name, row[`r${i}`] as unknown[]);
  return written;
}

function checkType(type: string): string {
  if (!/^[a-z][a-z0-9_ ]*(\(\d+(,\d+)?\))?$/.test(type)) throw new Error(`bad column type ${type}`);
  return type;
}
