import { createCipheriv, createDecipheriv, createHash, randomBytes } from "node:crypto";
import { fastifyCookie } from "@fastify/cookie";
import type { FastifyReply, FastifyRequest } from "fastify";
import { CompiledQuery, type DatabaseConnection } from "kysely";
import { withCommitHook } from "../db/commit-hooks.js";
import type { Db } from "../db/index.js";
import { bearerSecret } from "../modules/orgs/keys.js";
import { sessionCookieName } from "../modules/web/web.routes.js";
import type { AppContext } from "./context.js";
import { AppError } from "./errors.js";
import type { App } from "./http.js";
import { stableJson } from "./stable-json.js";

/**
 * `Idempotency-Key` for every POST: the first response (status and body) is stored for 24 h and
 * replayed for the same key and body; the same key with another body is a conflict, and so is a
 * retry while the first request is still running.
 *
 * The key is claimed by an insert on the primary key (scope, key), so of any number of concurrent
 * requests exactly one runs, and at most once. The answer is stored after the handler's effects
 * committed, so the claim also records, inside every transaction the handler commits (a commit
 * hook, `src/db/commit-hooks.ts`), that something of the request is durable: `effect_committed`.
 * - A claim whose request died without answering (process killed, database connection lost) is
 *   taken over after `LOCK_MS` only if nothing of it committed; otherwise retries get
 *   `409 idempotency_in_progress` ("applied, answer lost") until the key expires.
 * - Each claim carries a random token, and the commit hook marks the key only under its own
 *   token: a request that was merely slow (or whose instance's clock is behind) and has been
 *   taken over cannot commit anything afterwards, so the key still has exactly one effect.
 * - A 5xx answer releases the key if nothing committed, so the client can retry; if something did,
 *   the 5xx answer is stored and replayed like any other.
 *
 * Some answers carry secrets shown only once (a new API key, a webhook signing secret, a portal
 * link), which are otherwise stored only as hashes. So a stored answer is encrypted with a key
 * derived from the caller's own credential (the API key or browser session token, which Tally
 * does not store) and the Idempotency-Key: the database alone cannot reveal it.
 */
export const RETENTION_MS = 24 * 60 * 60 * 1000;
const LOCK_MS = 60_000;
const MAX_KEY_LENGTH = 255;

export interface Claim {
  scope: string;
  key: string;
  /** This claim's token; the key's row holds it for as long as the claim is current. */
  token: string;
  replayed: boolean;
  /** AES-256-GCM key for the stored answer. */
  sealKey: Buffer;
}

/** The secret the request authenticated with: its API key, else its browser session token. */
function callerSecret(request: FastifyRequest, cookieName: string): string | null {
  const bearer = bearerSecret(request.headers.authorization);
  if (bearer) return bearer;
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

  // Every transaction a claimed request's handler commits marks the claim, in that transaction.
  app.addHook("onRoute", (route) => {
    const methods = [route.method].flat();
    if (!methods.includes("POST")) return;
    const handler = route.handler;
    route.handler = function (this: unknown, request, reply) {
      const c = request.idempotency;
      if (!c || c.replayed) return handler.call(this as never, request, reply);
      return withCommitHook(
        (connection) => markEffect(connection, c),
        () => handler.call(this as never, request, reply),
      );
    };
  });

  // Synchronous for requests without a key (most of them; the usage hot path): no promise.
  app.addHook("preHandler", (request, reply, done) => {
    if (request.method !== "POST" || request.headers["idempotency-key"] === undefined) {
      done();
      return;
    }
    // A replay answers here (no `done`: the handler must not run).
    claimOrReplay(request, reply).then((answered) => {
      if (!answered) done();
    }, done);
  });

  /** Claims the key for this request, or answers with the stored reply (then true). */
  async function claimOrReplay(request: FastifyRequest, reply: FastifyReply): Promise<boolean> {
    const key = request.headers["idempotency-key"];
    // Node joins repeated headers with ", ": two keys would silently become a third one.
    if (repeatedHeader(request.raw.rawHeaders, "idempotency-key")) {
      throw new AppError("invalid_request", "Send one Idempotency-Key header.", [
        { field: "header.idempotency-key", message: "given more than once" },
      ]);
    }
    if (typeof key !== "string" || key.length === 0 || key.length > MAX_KEY_LENGTH) {
      throw new AppError("invalid_request", "Idempotency-Key must be 1–255 characters.", [
        { field: "header.idempotency-key", message: "1–255 characters" },
      ]);
    }
    // Unauthenticated public POSTs (payment webhooks, forms) have their own de-duplication.
    if (!request.principal) return false;
    const secret = callerSecret(request, cookieName);
    if (!secret) return false;
    const sealKey = sealKeyFor(secret, key);
    const scope = request.principal.id;
    // The same body is the same JSON value: key order and whitespace do not matter. The user a
    // platform acts for is part of the request (it is recorded on what the request writes).
    const onBehalfOf = request.headers["on-behalf-of"];
    const acting = typeof onBehalfOf === "string" ? `on-behalf-of: ${onBehalfOf}\n` : "";
    const fingerprint = (json: string) =>
      createHash("sha256")
        .update(`${request.method} ${request.url}\n${acting}${json}`)
        .digest("hex");
    const requestHash = fingerprint(stableJson(request.body ?? null));
    // Keys claimed before fingerprints sorted the keys (kept 24 h) are compared as they were:
    // worked out only when a stored fingerprint differs.
    const legacyHash = () => fingerprint(JSON.stringify(request.body ?? null));

    const outcome = await claimKey(ctx.db, ctx.clock.now(), scope, key, requestHash, legacyHash);
    switch (outcome.kind) {
      case "claimed":
        request.idempotency = { scope, key, token: outcome.token, replayed: false, sealKey };
        return false;
      case "conflict":
        throw new AppError("idempotency_conflict");
      case "in_progress":
        throw new AppError(
          "idempotency_in_progress",
          outcome.lost
            ? "The first request with this key was applied, but its answer was lost (the service restarted or lost its database connection). Check the resource; this key will not run again."
            : undefined,
        );
      case "replay": {
        const body = openAnswer(sealKey, outcome.body);
        if (body === null) {
          throw new AppError("idempotency_conflict", "The stored answer cannot be replayed.");
        }
        request.idempotency = { scope, key, token: "", replayed: true, sealKey };
        reply.header("idempotent-replayed", "true");
        reply.code(outcome.status).type(outcome.type);
        reply.send(body);
        return true;
      }
    }
  }

  app.addHook("onSend", (request, reply, payload, done) => {
    const c = request.idempotency;
    if (!c || c.replayed) {
      done(null, payload);
      return;
    }
    storeAnswer(request, reply, payload, c).then(
      () => done(null, payload),
      (error) => done(error),
    );
  });

  /** Keeps (or releases) the claim with this answer; never fails the response. */
  async function storeAnswer(
    request: FastifyRequest,
    reply: FastifyReply,
    payload: unknown,
    c: Claim,
  ): Promise<void> {
    // Only while the claim is still this request's (not taken over).
    const where = (db: Db) =>
      db
        .updateTable("idempotency_keys")
        .where("scope", "=", c.scope)
        .where("key", "=", c.key)
        .where("claim_token", "=", c.token);
    try {
      let store = reply.statusCode < 500;
      if (reply.statusCode >= 500 && request.outcomeUnknown) {
        // The database is unreachable: leave the claim; its `effect_committed` decides later.
      } else if (reply.statusCode >= 500) {
        // Nothing committed: release the key for a retry. Something did: keep this answer —
        // unless the handler marked the request resumable (it committed a step and answered
        // "retry"): the retry must run, to finish it.
        let release = ctx.db
          .deleteFrom("idempotency_keys")
          .where("scope", "=", c.scope)
          .where("key", "=", c.key)
          .where("claim_token", "=", c.token);
        if (!request.resumable) release = release.where("effect_committed", "=", false);
        const released = await release.executeTakeFirst();
        store = Number(released.numDeletedRows) === 0;
      }
      if (store) {
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
  }
}

/** Whether a header came more than once (`rawHeaders`: name, value, name, value, …). */
function repeatedHeader(rawHeaders: readonly string[], name: string): boolean {
  let seen = 0;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if (rawHeaders[i]!.toLowerCase() === name && ++seen > 1) return true;
  }
  return false;
}

/**
 * The commit hook of a claimed request: marks the key as applied, in the committing transaction.
 * Refuses (and so rolls the transaction back) when the claim was taken over meanwhile.
 */
export async function markEffect(connection: DatabaseConnection, c: Claim): Promise<void> {
  const result = await connection.executeQuery(
    CompiledQuery.raw(
      "update idempotency_keys set effect_committed = true where scope = $1 and key = $2 and claim_token = $3",
      [c.scope, c.key, c.token],
    ),
  );
  if (result.numAffectedRows === 0n) {
    throw new AppError(
      "idempotency_in_progress",
      "This request ran so long that a retry with the same Idempotency-Key took it over; nothing of it was applied.",
    );
  }
}

type ClaimOutcome =
  | { kind: "claimed"; token: string }
  | { kind: "conflict" }
  | { kind: "in_progress"; lost: boolean }
  | { kind: "replay"; status: number; type: string; body: string };

/** Claims `key` for a request (exported for tests that play two requests by hand). */
export async function claimKey(
  db: Db,
  now: Date,
  scope: string,
  key: string,
  requestHash: string,
  /** The fingerprint an earlier version gave the same request. */
  legacyHash: () => string,
): Promise<ClaimOutcome> {
  const token = randomBytes(16).toString("base64url");
  const row = {
    scope,
    key,
    claim_token: token,
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
  if (Number(inserted.numInsertedOrUpdatedRows ?? 0n) === 1) return { kind: "claimed", token };

  // Someone holds the key: take it over once it expired, or when its request died (no answer
  // within LOCK_MS) without committing anything.
  const taken = await db
    .updateTable("idempotency_keys")
    .set({ ...row, effect_committed: false })
    .where("scope", "=", scope)
    .where("key", "=", key)
    .where((eb) =>
      eb.or([
        eb("expires_at", "<=", now),
        eb.and([
          eb("status", "=", "in_progress"),
          eb("locked_until", "<=", now),
          eb("request_hash", "=", requestHash),
          eb("effect_committed", "=", false),
        ]),
      ]),
    )
    .executeTakeFirst();
  if (Number(taken.numUpdatedRows) === 1) return { kind: "claimed", token };

  const existing = await db
    .selectFrom("idempotency_keys")
    .selectAll()
    .where("scope", "=", scope)
    .where("key", "=", key)
    .executeTakeFirst();
  if (!existing) return claimKey(db, now, scope, key, requestHash, legacyHash);
  if (existing.request_hash !== requestHash && existing.request_hash !== legacyHash()) {
    return { kind: "conflict" };
  }
  if (existing.status === "in_progress") {
    return { kind: "in_progress", lost: existing.effect_committed && existing.locked_until <= now };
  }
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
