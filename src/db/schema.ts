import type { OrgTables } from "../modules/orgs/orgs.tables.js";

/** The database as Kysely sees it: each module declares its own tables. */
export interface DB extends OrgTables {}
