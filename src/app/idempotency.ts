import { createHash } from "node:crypto";
import type { Db } from "../db/index.js";
import type { AppContext } from "./context.js";
import { AppError } from "./errors.js";
import type { App } from "./http.js";

/**
 * `Idempotency-Key` for every POST: the first response (status and body) is stored for 24 h and
 * replayed for the same key and body; the same key with another body is a conflict, and so is a
 * retry while the first request is still running.
 *
 * The key is claimed by an insert on the primary key (scope, key), so of any number of concurrent
 * requests exactly one runs. A claim whose request died without answering (process crash) is
 * taken over after `LOCK_MS`; 5xx answers release the key so the client can retry.
 */
export const RETENTION_MS = 24 * 60 * 60 * 1000;
const LOCK_MS = 60_000;
const MAX_KEY_LENGTH = 255;

interface Claim {
  scope: string;
  key: string;
  replayed: boolean;
}

declare module "fastify" {
  interface FastifyRequest {
    idempotency: Claim | null;
  }
}

export function installIdempotency(app: App, ctx: AppContext): void {
  app.decorateRequest("idempotency", null);

  app.addHook("preHandler", async (request, reply) => {
    if (request.method !== "POST") return;
    const key = request.headers["idempotency-key"];
    if (key === undefined) return;
    if (typeof key !== "string" || key.length === 0 || key.length > MAX_KEY_LENGTH) {
      throw new AppError("invalid_request", "Idempotency-Key must be 1–255 characters.", [
        { field: "header.idempotency-key", message: "1–255 characters" },
      ]);
    }
    // Unauthenticated public POSTs (payment webhooks, forms) have their own de-duplication.
    if (!request.principal) return;
    const scope = request.principal.id;
    const requestHash = createHash("sha256")
      .update(`${request.method} ${request.url}\n${JSON.stringify(request.body ?? null)}`)
      .digest("hex");

    const outcome = await claim(ctx.db, ctx.clock.now(), scope, key, requestHash);
    switch (outcome.kind) {
      case "claimed":
        request.idempotency = { scope, key, replayed: false };
        return;
      case "conflict":
        throw new AppError("idempotency_conflict");
      case "in_progress":
        throw new AppError("idempotency_in_progress");
      case "replay":
        request.idempotency = { scope, key, replayed: true };
        reply.header("idempotent-replayed", "true");
        reply.code(outcome.status).type(outcome.type);
        return reply.send(outcome.body);
    }
  });

  app.addHook("onSend", async (request, reply, payload) => {
    const c = request.idempotency;
    if (!c || c.replayed) return payload;
    const where = (db: Db) =>
      db.updateTable("idempotency_keys").where("scope", "=", c.scope).where("key", "=", c.key);
    try {
      if (reply.statusCode >= 500) {
        await ctx.db
          .deleteFrom("idempotency_keys")
          .where("scope", "=", c.scope)
          .where("key", "=", c.key)
          .execute();
      } else {
        await where(ctx.db)
          .set({
            status: "done",
            response_status: reply.statusCode,
            response_body:
              typeof payload === "string" ? payload : payload == null ? "" : String(payload),
            response_type: String(reply.getHeader("content-type") ?? "application/json"),
          })
          .execute();
      }
    } catch (err) {
      request.log.error({ err }, "could not store the idempotent response");
    }
    return payload;
  });
}

type ClaimOutcome =
  | { kind: "claimed" }
  | { kind: "conflict" }
  | { kind: "in_progress" }
  | { kind: "replay"; status: number; type: string; body: string };

async function claim(
  db: Db,
  now: Date,
  scope: string,
  key: string,
  requestHash: string,
): Promise<ClaimOutcome> {
  const row = {
    scope,
    key,
    request_hash: requestHash,
    status: "in_progress" as const,
    response_status: null,
    response_body: null,
    response_type: null,
    created_at: now,
    locked_until: new Date(now.getTime() + LOCK_MS),
    expires_at: new Date(now.getTime() + RETENTION_MS),
  };
  const inserted = await db
    .insertInto("idempotency_keys")
    .values(row)
    .onConflict((oc) => oc.columns(["scope", "key"]).doNothing())
    .executeTakeFirst();
  if (Number(inserted.numInsertedOrUpdatedRows ?? 0n) === 1) return { kind: "claimed" };

  // Someone holds the key: take it over only if it expired or its request died.
  const taken = await db
    .updateTable("idempotency_keys")
    .set(row)
    .where("scope", "=", scope)
    .where("key", "=", key)
    .where((eb) =>
      eb.or([
        eb("expires_at", "<=", now),
        eb.and([
          eb("status", "=", "in_progress"),
          eb("locked_until", "<=", now),
          eb("request_hash", "=", requestHash),
        ]),
      ]),
    )
    .executeTakeFirst();
  if (Number(taken.numUpdatedRows) === 1) return { kind: "claimed" };

  const existing = await db
    .selectFrom("idempotency_keys")
    .selectAll()
    .where("scope", "=", scope)
    .where("key", "=", key)
    .executeTakeFirst();
  if (!existing) return claim(db, now, scope, key, requestHash);
  if (existing.request_hash !== requestHash) return { kind: "conflict" };
  if (existing.status === "in_progress") return { kind: "in_progress" };
  return {
    kind: "replay",
    status: existing.response_status ?? 200,
    type: existing.response_type ?? "application/json",
    body: existing.response_body ?? "",
  };
}

/** Deletes records past their 24 h retention; run periodically by the maintenance worker. */
export async function purgeExpiredIdempotencyKeys(db: Db, now: Date): Promise<number> {
  const r = await db
    .deleteFrom("idempotency_keys")
    .where("expires_at", "<=", now)
    .executeTakeFirst();
  return Number(r.numDeletedRows);
}
