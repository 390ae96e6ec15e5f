import { PGlite, types } from "@electric-sql/pglite";

const db = await PGlite.create({
  parsers: { [types.NUMERIC]: (v: string) => v, [types.INT8]: (v: string) => v },
});
const r = await db.query(
  "select 1.50::numeric(38,12) as n, 9007199254740993::int8 as i, now() as t, '{\"a\":1}'::jsonb as j",
);
console.log(r.rows);
