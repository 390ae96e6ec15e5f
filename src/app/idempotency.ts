import { createCipheriv, createDecipheriv, createHash, randomBytes } from "node:crypto";
import { fastifyCookie } from "@fastify/cookie";
import type { FastifyRequest } from "fastify";
import type { Db } from "../db/index.js";
import { sessionCookieName } from "../modules/web/web.routes.js";
import type { AppContext } from "./context.js";
import { AppError } from "./errors.js";
import type { App } from "./http.js";

/**
 * `Idempotency-Key` for every POST: the first response (status and body) is stored for 24 h and
 * replayed for the same key and body; the same key with another body is a conflict, and so is a
 * retry while the first request is still running.
 *
 * The key is claimed by an insert on the primary key (scope, key), so of any number of concurrent
 * requests exactly one runs, and at most once: the answer is stored after the handler's effects
 * committed, so a claim whose answer never came — the process died, or the database connection
 * was lost (possibly after COMMIT) — may have had its effect, and it is never run again. Retries
 * get `409 idempotency_in_progress` until the key expires; the client checks the resource and, if
 * nothing happened, uses a new key. A 5xx answered by a live process with the database reachable
 * (nothing committed, or a failure it recorded) releases the key so the client can retry.
 *
 * Some answers carry secrets shown only once (a new API key, a webhook signing secret, a portal
 * link), which are otherwise stored only as hashes. So a stored answer is encrypted with a key
 * derived from the caller's own credential (the API key or browser session token, which Tally
 * does not store) and the Idempotency-Key: the database alone cannot reveal it.
 */
export const RETENTION_MS = 24 * 60 * 60 * 1000;
const MAX_KEY_LENGTH = 255;

interface Claim {
  scope: string;
  key: string;
  replayed: boolean;
  /** AES-256-GCM key for the stored answer. */
  sealKey: Buffer;
}

const BEARER = /^Bearer\s+(\S+)\s*$/i;

/** The secret the request authenticated with: its API key, else its browser session token. */
function callerSecret(request: FastifyRequest, cookieName: string): string | null {
  const bearer = BEARER.exec(request.headers.authorization ?? "");
  if (bearer) return bearer[1]!;
  const cookie = request.headers.cookie;
  return (cookie && fastifyCookie.parse(cookie)[cookieName]) || null;
}

function sealKeyFor(secret: string, key: string): Buffer {
  return createHash("sha256")
    .update("tally idempotent answer\0")
    .update(secret)
    .update("\0")
    .update(key)
    .digest();
}

const SEALED = "sealed1:";

export function sealAnswer(sealKey: Buffer, body: string): string {
  const iv = randomBytes(12);
  const cipher = createCipheriv("aes-256-gcm", sealKey, iv);
  const data = Buffer.concat([cipher.update(body, "utf8"), cipher.final()]);
  return SEALED + Buffer.concat([iv, cipher.getAuthTag(), data]).toString("base64");
}

/** The stored answer in clear; null when it cannot be opened with this key. */
export function openAnswer(sealKey: Buffer, stored: string): string | null {
  // Answers stored before sealing was introduced (kept for at most 24 h).
  if (!stored.startsWith(SEALED)) return stored;
  try {
    const raw = Buffer.from(stored.slice(SEALED.length), "base64");
    const decipher = createDecipheriv("aes-256-gcm", sealKey, raw.subarray(0, 12));
    decipher.setAuthTag(raw.subarray(12, 28));
    return Buffer.concat([decipher.update(raw.subarray(28)), decipher.final()]).toString("utf8");
  } catch {
    return null;
  }
}

declare module "fastify" {
  interface FastifyRequest {
    idempotency: Claim | null;
  }
}

export function installIdempotency(app: App, ctx: AppContext): void {
  app.decorateRequest("idempotency", null);
  const cookieName = sessionCookieName(ctx);

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
    const secret = callerSecret(request, cookieName);
    if (!secret) return;
    const sealKey = sealKeyFor(secret, key);
    const scope = request.principal.id;
    const requestHash = createHash("sha256")
      .update(`${request.method} ${request.url}\n${JSON.stringify(request.body ?? null)}`)
      .digest("hex");

    const outcome = await claim(ctx.db, ctx.clock.now(), scope, key, requestHash);
    switch (outcome.kind) {
      case "claimed":
        request.idempotency = { scope, key, replayed: false, sealKey };
        return;
      case "conflict":
        throw new AppError("idempotency_conflict");
      case "in_progress":
        throw new AppError("idempotency_in_progress");
      case "replay": {
        const body = openAnswer(sealKey, outcome.body);
        if (body === null) {
          throw new AppError("idempotency_conflict", "The stored answer cannot be replayed.");
        }
        request.idempotency = { scope, key, replayed: true, sealKey };
        reply.header("idempotent-replayed", "true");
        reply.code(outcome.status).type(outcome.type);
        return reply.send(body);
      }
    }
  });

  app.addHook("onSend", async (request, reply, payload) => {
    const c = request.idempotency;
    if (!c || c.replayed) return payload;
    const where = (db: Db) =>
      db.updateTable("idempotency_keys").where("scope", "=", c.scope).where("key", "=", c.key);
    try {
      if (reply.statusCode >= 500 && request.outcomeUnknown) {
        // Leave the claim in progress: the effect may have committed.
      } else if (reply.statusCode >= 500) {
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
            response_body: sealAnswer(
              c.sealKey,
              typeof payload === "string" ? payload : payload == null ? "" : String(payload),
            ),
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
    locked_until: new Date(now.getTime() + RETENTION_MS),
    expires_at: new Date(now.getTime() + RETENTION_MS),
  };
  const inserted = await db
    .insertInto("idempotency_keys")
    .values(row)
    .onConflict((oc) => oc.columns(["scope", "key"]).doNothing())
    .executeTakeFirst();
  if (Number(inserted.numInsertedOrUpdatedRows ?? 0n) === 1) return { kind: "claimed" };

  // Someone holds the key: take it over only once it expired. An unfinished claim is never
  // taken over — its request may have committed before it died.
  const taken = await db
    .updateTable("idempotency_keys")
    .set(row)
    .where("scope", "=", scope)
    .where("key", "=", key)
    .where("expires_at", "<=", now)
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
