import { type Kysely, sql } from "kysely";

/**
 * A meter's unit may change from one price version to the next (vCPU-seconds to vCPU-hours):
 * its monthly rollup then holds one row per unit, so quantities of different units are never
 * added up.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`alter table usage_rollups drop constraint usage_rollups_pkey`.execute(db);
  await sql`alter table usage_rollups add primary key (org_id, period, type, model, operation, user_id, resource, meter, unit)`.execute(
    db,
  );
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql`alter table usage_rollups drop constraint usage_rollups_pkey`.execute(db);
  await sql`alter table usage_rollups add primary key (org_id, period, type, model, operation, user_id, resource, meter)`.execute(
    db,
  );
}
