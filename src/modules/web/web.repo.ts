import type { Db } from "../../db/index.js";
import type { WebSessionsTable } from "./web.tables.js";

export type WebSessionRow = WebSessionsTable;

export async function insertSession(db: Db, row: WebSessionRow): Promise<void> {
  await db.insertInto("web_sessions").values(row).execute();
}

/** The live session with this token hash: not revoked, not expired. */
export function findLiveSession(db: Db, tokenHash: string, now: Date) {
  return db
    .selectFrom("web_sessions")
    .selectAll()
    .where("token_hash", "=", tokenHash)
    .where("revoked_at", "is", null)
    .where("expires_at", ">", now)
    .executeTakeFirst();
}

export async function revokeSession(db: Db, tokenHash: string, now: Date): Promise<void> {
  await db
    .updateTable("web_sessions")
    .set({ revoked_at: now })
    .where("token_hash", "=", tokenHash)
    .where("revoked_at", "is", null)
    .execute();
}

/** Housekeeping: sessions that ended more than a day ago serve no purpose. */
export async function deleteEndedSessions(db: Db, before: Date): Promise<void> {
  await db.deleteFrom("web_sessions").where("expires_at", "<", before).execute();
}
