import { createHash, timingSafeEqual } from "node:crypto";
import type { AppContext } from "../../app/context.js";
import { fail, ok, type Result } from "../../app/errors.js";
import type { Role } from "../../app/http.js";
import type { Principal } from "../orgs/auth.js";
import { generateSecret, hashSecret } from "../orgs/keys.js";
import * as orgs from "../orgs/orgs.service.js";
import * as repo from "./web.repo.js";

export type WebSession = repo.WebSessionRow;

/** An operator signs in with a platform key once a working day. */
export const OPERATOR_SESSION_TTL_MS = 12 * 60 * 60 * 1000;
/** A portal visit, entered through a one-time link, lasts at most this long. */
export const PORTAL_VISIT_TTL_MS = 2 * 60 * 60 * 1000;
const ENDED_SESSION_RETENTION_MS = 24 * 60 * 60 * 1000;

/** The role a portal user acts with on the API. */
const PORTAL_ROLES: Record<orgs.UserRole, Role> = {
  admin: "admin",
  billing: "billing",
  viewer: "read",
};

export interface StartedSession {
  /** The cookie value (never stored: only its hash is). */
  token: string;
  row: WebSession;
}

/**
 * The CSRF token is derived from the session token, so it needs no storage of its own beyond a
 * hash to check against; a page learns it from `GET /web/session` (same-origin only), a forged
 * cross-site request cannot.
 */
export function csrfTokenFor(sessionToken: string): string {
  return createHash("sha256").update(`csrf:${sessionToken}`).digest("base64url");
}

export function csrfMatches(session: WebSession, header: unknown): boolean {
  if (typeof header !== "string" || header.length === 0 || header.length > 200) return false;
  const expected = Buffer.from(session.csrf_token_hash, "hex");
  const given = Buffer.from(hashSecret(header), "hex");
  return expected.length === given.length && timingSafeEqual(expected, given);
}

async function startSession(
  ctx: AppContext,
  fields: Pick<WebSession, "kind" | "org_id" | "user_id" | "role" | "api_key_id" | "return_url">,
  ttlMs: number,
): Promise<StartedSession> {
  const token = generateSecret("session");
  const now = ctx.clock.now();
  const row: WebSession = {
    id: ctx.ids.newId("ses"),
    token_hash: hashSecret(token),
    csrf_token_hash: hashSecret(csrfTokenFor(token)),
    ...fields,
    created_at: now,
    expires_at: new Date(now.getTime() + ttlMs),
    revoked_at: null,
  };
  await repo.deleteEndedSessions(ctx.db, new Date(now.getTime() - ENDED_SESSION_RETENTION_MS));
  await repo.insertSession(ctx.db, row);
  return { token, row };
}

/** Console sign-in: a platform key is exchanged for a session; the key itself is not kept. */
export async function signInOperator(
  ctx: AppContext,
  apiKey: string,
): Promise<Result<StartedSession, "unauthenticated" | "forbidden">> {
  const key = await orgs.findActiveKeyBySecret(ctx, apiKey.trim());
  if (!key) return fail("unauthenticated", "The API key is unknown or revoked.");
  if (key.role !== "platform" || key.org_id !== null) {
    return fail("forbidden", "Only platform keys can sign in to the operator console.");
  }
  return ok(
    await startSession(
      ctx,
      {
        kind: "operator",
        org_id: null,
        user_id: null,
        role: "platform",
        api_key_id: key.id,
        return_url: null,
      },
      OPERATOR_SESSION_TTL_MS,
    ),
  );
}

/** Redeems a one-time portal link for a portal session of that organisation's user. */
export async function enterPortal(
  ctx: AppContext,
  linkToken: string,
): Promise<Result<StartedSession, "not_found">> {
  const link = await orgs.redeemPortalLink(ctx, linkToken);
  const user = link ? await orgs.findUser(ctx, link.orgId, link.userId) : undefined;
  if (!link || !user) {
    return fail("not_found", "This portal link is unknown, expired or already used.");
  }
  return ok(
    await startSession(
      ctx,
      {
        kind: "portal",
        org_id: link.orgId,
        user_id: user.id,
        role: user.role,
        api_key_id: null,
        return_url: link.returnUrl,
      },
      PORTAL_VISIT_TTL_MS,
    ),
  );
}

export interface AuthenticatedSession {
  session: WebSession;
  principal: Principal;
  /** Portal: the user's current role (`admin`, `billing`, `viewer`). */
  userRole: orgs.UserRole | null;
}

/**
 * A live session and who it acts as. The key or user behind it is checked on every request: a
 * revoked key or a removed user ends the session at once, and a portal user's role is the
 * user's current one.
 */
export async function authenticateSession(
  ctx: AppContext,
  token: string,
): Promise<AuthenticatedSession | null> {
  const session = await repo.findLiveSession(ctx.db, hashSecret(token), ctx.clock.now());
  if (!session) return null;
  if (session.kind === "operator") {
    const key = session.api_key_id ? await orgs.findActiveKeyById(ctx, session.api_key_id) : null;
    if (key?.role !== "platform") return null;
    return {
      session,
      userRole: null,
      principal: {
        kind: "operator",
        id: session.id,
        role: "platform",
        orgId: null,
        actor: { type: "api_key", id: key.id },
        userId: null,
      },
    };
  }
  const user = await orgs.findUser(ctx, session.org_id!, session.user_id!);
  // A user removed and added again under the same id is someone the session was not made for.
  if (!user || user.created_at > session.created_at) return null;
  const userRole = user.role as orgs.UserRole;
  const role = PORTAL_ROLES[userRole];
  if (!role) return null;
  return {
    session,
    userRole,
    principal: {
      kind: "portal_user",
      id: session.id,
      role,
      orgId: session.org_id,
      actor: { type: "user", id: user.id },
      userId: user.id,
    },
  };
}

export async function signOut(ctx: AppContext, token: string): Promise<void> {
  await repo.revokeSession(ctx.db, hashSecret(token), ctx.clock.now());
}
