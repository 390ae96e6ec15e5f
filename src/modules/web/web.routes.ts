import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { fastifyCookie } from "@fastify/cookie";
import fastifyStatic from "@fastify/static";
import { Type } from "@sinclair/typebox";
import type { FastifyReply, FastifyRequest } from "fastify";
import type { AppContext } from "../../app/context.js";
import { AppError, ErrorEnvelopeSchema, unwrap } from "../../app/errors.js";
import { type App, Timestamp } from "../../app/http.js";
import type { SessionAuthenticator } from "../orgs/auth.js";
import * as orgs from "../orgs/orgs.service.js";
import * as service from "./web.service.js";

/** The built single-page app (`npm run build:web`). */
export const WEB_DIST = fileURLToPath(new URL("../../../web/dist/", import.meta.url));

/**
 * Over https the cookie gets the `__Host-` prefix: the browser then accepts it only when Secure,
 * for the whole site and without a Domain, so a sibling subdomain cannot plant or shadow it.
 */
export function sessionCookieName(ctx: AppContext): string {
  return ctx.config.publicUrl.startsWith("https:") ? "__Host-tally_session" : "tally_session";
}
const UNSAFE_METHODS = new Set(["POST", "PUT", "PATCH", "DELETE"]);
const publicAccess = { access: { public: true } } as const;

function sessionToken(request: FastifyRequest, cookieName: string): string | null {
  const header = request.headers.cookie;
  if (!header) return null;
  const token = fastifyCookie.parse(header)[cookieName];
  return token && token.length <= 200 ? token : null;
}

/**
 * Turns the browser's session cookie into a principal for the API routes (used only when the
 * request has no `Authorization` header). A cookie alone never changes anything: state-changing
 * requests must also carry the session's `X-CSRF-Token`, which a cross-site page cannot read.
 */
export function createSessionAuthenticator(ctx: AppContext): SessionAuthenticator {
  const cookieName = sessionCookieName(ctx);
  return async (request) => {
    const token = sessionToken(request, cookieName);
    if (!token) return null;
    const authenticated = await service.authenticateSession(ctx, token);
    if (!authenticated) return null;
    if (
      UNSAFE_METHODS.has(request.method) &&
      !service.csrfMatches(authenticated.session, request.headers["x-csrf-token"])
    ) {
      throw new AppError("forbidden", "A missing or wrong X-CSRF-Token header.");
    }
    return authenticated.principal;
  };
}

const SessionSchema = Type.Object(
  {
    kind: Type.Union([Type.Literal("operator"), Type.Literal("portal")]),
    role: Type.String({ description: "The role the session acts with on the API." }),
    user_role: Type.Union([Type.String(), Type.Null()], {
      description: "Portal: the user's role (`admin`, `billing`, `viewer`).",
    }),
    csrf_token: Type.String({ description: "Send as `X-CSRF-Token` on POST, PUT, PATCH, DELETE." }),
    expires_at: Timestamp(),
    server_time: Timestamp(),
    org: Type.Union([Type.Object({ id: Type.String(), name: Type.String() }), Type.Null()]),
    user: Type.Union([
      Type.Object({
        id: Type.String(),
        email: Type.String(),
        name: Type.Union([Type.String(), Type.Null()]),
      }),
      Type.Null(),
    ]),
    return_url: Type.Union([Type.String(), Type.Null()], {
      description: "Portal: the application's page to return to.",
    }),
  },
  { title: "WebSession" },
);

const errors = {
  401: { ...ErrorEnvelopeSchema, description: "No live session, or an unknown key." },
  403: { ...ErrorEnvelopeSchema, description: "Not a platform key, or a bad CSRF token." },
};

/**
 * Browser sessions for the operator console (`/dashboard`, platform keys) and the customer portal
 * (`/portal`, one-time links), and the built web app. (Security headers: `app/security-headers`.)
 */
export function registerWebRoutes(app: App, ctx: AppContext): void {
  const secure = ctx.config.publicUrl.startsWith("https:");
  const cookieName = sessionCookieName(ctx);

  app.register(fastifyCookie);

  function setSessionCookie(reply: FastifyReply, started: service.StartedSession): void {
    const maxAge = Math.floor(
      (started.row.expires_at.getTime() - started.row.created_at.getTime()) / 1000,
    );
    // Lax, not Strict: returning from a processor's checkout (another site) and following a
    // portal link from the platform's application are cross-site navigations that must arrive
    // signed in. Every state change also needs the CSRF header, which Lax cookies do not give.
    reply.setCookie(cookieName, started.token, {
      path: "/",
      httpOnly: true,
      sameSite: "lax",
      secure,
      maxAge,
    });
  }

  function clearSessionCookie(reply: FastifyReply): void {
    reply.clearCookie(cookieName, { path: "/", httpOnly: true, sameSite: "lax", secure });
  }

  async function sessionDto(token: string, authenticated: service.AuthenticatedSession) {
    const { session, principal } = authenticated;
    let org: { id: string; name: string } | null = null;
    let user: { id: string; email: string; name: string | null } | null = null;
    if (session.kind === "portal") {
      const row = await orgs.resolveOrganization(ctx.db, session.org_id!);
      org = row ? { id: row.id, name: row.name } : null;
      const u = await orgs.findUser(ctx, session.org_id!, session.user_id!);
      user = u ? { id: u.id, email: u.email, name: u.name } : null;
    }
    return {
      kind: session.kind,
      role: principal.role,
      user_role: authenticated.userRole,
      csrf_token: service.csrfTokenFor(token),
      expires_at: session.expires_at.toISOString(),
      server_time: ctx.clock.now().toISOString(),
      org,
      user,
      return_url: session.return_url,
    };
  }

  const tags = ["web"];

  app.post(
    "/web/login",
    {
      schema: {
        tags,
        summary: "Sign in to the operator console with a platform key",
        description:
          "Exchanges a platform key for an httpOnly session cookie (12 h). The key is not " +
          "stored in the session or the browser.",
        security: [],
        body: Type.Object(
          { api_key: Type.String({ minLength: 1, maxLength: 500 }) },
          { additionalProperties: false },
        ),
        response: { 200: SessionSchema, ...errors },
      },
      config: publicAccess,
    },
    async (request, reply) => {
      const started = unwrap(await service.signInOperator(ctx, request.body.api_key));
      const previous = sessionToken(request, cookieName);
      if (previous) await service.signOut(ctx, previous);
      setSessionCookie(reply, started);
      reply.header("cache-control", "no-store");
      const authenticated = await service.authenticateSession(ctx, started.token);
      return sessionDto(started.token, authenticated!);
    },
  );

  app.post(
    "/web/logout",
    {
      schema: {
        tags,
        summary: "End the browser session",
        security: [],
        response: { 204: Type.Null(), 403: errors[403] },
      },
      config: publicAccess,
    },
    async (request, reply) => {
      const token = sessionToken(request, cookieName);
      const authenticated = token ? await service.authenticateSession(ctx, token) : null;
      if (token && authenticated) {
        if (!service.csrfMatches(authenticated.session, request.headers["x-csrf-token"])) {
          throw new AppError("forbidden", "A missing or wrong X-CSRF-Token header.");
        }
        await service.signOut(ctx, token);
      }
      clearSessionCookie(reply);
      return reply.code(204).send(null);
    },
  );

  app.get(
    "/web/session",
    {
      schema: {
        tags,
        summary: "The browser session: who, until when, and its CSRF token",
        description:
          "204 when there is none (signed out, expired or revoked): an answer, not an error, " +
          "so that a signed-out page load logs no failed request in the browser's console.",
        security: [],
        response: {
          200: SessionSchema,
          204: Type.Null({ description: "No browser session; sign in." }),
        },
      },
      config: publicAccess,
    },
    async (request, reply) => {
      const token = sessionToken(request, cookieName);
      const authenticated = token ? await service.authenticateSession(ctx, token) : null;
      reply.header("cache-control", "no-store");
      if (!token || !authenticated) {
        if (token) clearSessionCookie(reply);
        return reply.code(204).send(null);
      }
      return sessionDto(token, authenticated);
    },
  );

  app.get(
    "/portal/enter",
    {
      schema: {
        tags,
        summary: "Enter the customer portal through a one-time link",
        description:
          "Redeems the link from `POST …/portal-sessions`, sets the portal session cookie and " +
          "redirects (303) to `/portal`. An unknown, expired or used link redirects to " +
          "`/portal?link=invalid`. A browser signed in to the operator console keeps that " +
          "session: the link is left unused and the answer is `/portal?link=operator`. So does a " +
          "browser signed in to the portal as another user or organisation " +
          "(`/portal?link=signed-in`); a link for the same user renews the session.",
        security: [],
        querystring: Type.Object({ token: Type.Optional(Type.String({ maxLength: 200 })) }),
        response: {
          303: Type.Null({
            description:
              "To `/portal`, `/portal?link=invalid`, `/portal?link=operator` or `/portal?link=signed-in`.",
          }),
        },
      },
      config: publicAccess,
    },
    async (request, reply) => {
      reply.header("cache-control", "no-store");
      const previous = sessionToken(request, cookieName);
      // A link opened (or planted, cross-site) in a browser signed in to the operator console
      // must not sign the operator out: the link stays unused, for another browser.
      const current = previous ? await service.authenticateSession(ctx, previous) : null;
      if (current?.principal.kind === "operator") {
        return reply.redirect("/portal?link=operator", 303);
      }
      const token = request.query.token;
      // Nor may it switch a customer's portal to another account (a login CSRF: the customer
      // would then buy credits for someone else): a link for the same user renews the session,
      // any other stays unused.
      if (current?.principal.kind === "portal_user" && token) {
        const account = await orgs.peekPortalLink(ctx, token);
        if (
          account &&
          (account.orgId !== current.session.org_id || account.userId !== current.session.user_id)
        ) {
          return reply.redirect("/portal?link=signed-in", 303);
        }
      }
      const entered = token ? await service.enterPortal(ctx, token) : null;
      if (!entered?.ok) return reply.redirect("/portal?link=invalid", 303);
      if (previous) await service.signOut(ctx, previous);
      setSessionCookie(reply, entered.value);
      return reply.redirect("/portal", 303);
    },
  );

  // ---- the web app --------------------------------------------------------------------------

  const hidden = { schema: { hide: true }, config: publicAccess };
  app.get("/", hidden, async (_request, reply) => reply.redirect("/dashboard", 302));

  async function sendApp(_request: FastifyRequest, reply: FastifyReply) {
    let html: string;
    try {
      html = await readFile(`${WEB_DIST}index.html`, "utf8");
    } catch {
      return reply
        .code(503)
        .type("text/plain; charset=utf-8")
        .send("The web app is not built. Run `npm run build:web` (npm start does it for you).");
    }
    return reply.type("text/html; charset=utf-8").header("cache-control", "no-cache").send(html);
  }
  for (const url of ["/dashboard", "/dashboard/*", "/portal", "/portal/*"]) {
    app.get(url, hidden, sendApp);
  }

  const assets = `${WEB_DIST}assets`;
  if (existsSync(assets)) {
    app.register(fastifyStatic, {
      root: assets,
      prefix: "/assets/",
      index: false,
      // Built file names carry a content hash.
      immutable: true,
      maxAge: "365d",
      schemaHide: true,
    });
  }
}
