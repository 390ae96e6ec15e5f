import type { Migration } from "kysely/migration";
import * as m0001 from "./0001_foundation.js";

/** Every migration, in order. Never edit one that has shipped: add the next. */
export const migrations: Record<string, Migration> = {
  "0001_foundation": m0001,
};
