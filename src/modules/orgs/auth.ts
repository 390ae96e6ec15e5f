import type { FastifyRequest } from "fastify";
import type { AppContext } from "../../app/context.js";
import { AppError } from "../../app/errors.js";
import type { Access, App, Role } from "../../app/http.js";
import { presentedKeyHash } from "./keys.js";
import * as repo from "./orgs.repo.js";
import { isCreditsEligible, type Organization } from "./orgs.service.js";

export interface Actor {
  type: "api_key" | "user" | "system";
  id: string;
}

/** Who is calling, with what effective role, and on whose behalf. */
export interface Principal {
  kind: "api_key" | "portal_user" | "operator";
  /** The api key id, or the browser session id. */
  id: string;
  role: Role;
  /** The organisation a key or portal session is bound to; null for platform access. */
  orgId: string | null;
  /** The actor recorded on ledger entries. */
  actor: Actor;
  /** The platform user acting (portal user, or `On-Behalf-Of`), recorded as `user_id`. */
  userId: string | null;
  /**
   * A platform key's `On-Behalf-Of` on a route whose organisations are in the body (usage
   * events): not checked here; the route checks it against each organisation it writes to.
   */
  onBehalfOf?: string;
}

declare module "fastify" {
  interface FastifyRequest {
    principal: Principal | null;
    /** The organisation named by `{org_id}` in the path, resolved and access-checked. */
    org: Organization | null;
  }
}

/** A hook that authenticates browser sessions (cookies), installed by the web module. */
export type SessionAuthenticator = (request: FastifyRequest) => Promise<Principal | null>;

const LAST_USED_RESOLUTION_MS = 60_000;

export function installAuth(
  app: App,
  ctx: AppContext,
  sessions: SessionAuthenticator = async () => null,
): void {
  app.decorateRequest("principal", null);
  app.decorateRequest("org", null);

  app.addHook("onRoute", (route) => {
    const url = route.url ?? "";
    if (url.startsWith("/v1/") && !route.config?.access) {
      throw new Error(`Route ${route.method} ${url} does not declare its access`);
    }
  });

  app.addHook("onRequest", async (request) => {
    const access = request.routeOptions.config?.access;
    if (!access || access.public) return;

    const principal = (await authenticateKey(ctx, request)) ?? (await sessions(request));
    if (!principal) throw new AppError("unauthenticated");
    request.principal = principal;
    await authorize(ctx, request, principal, access);
  });
}

async function authenticateKey(
  ctx: AppContext,
  request: FastifyRequest,
): Promise<Principal | null> {
  if (!request.headers.authorization) return null;
  const hash = presentedKeyHash(request);
  if (!hash) throw new AppError("unauthenticated", "Authorization must be `Bearer <api key>`.");
  const key = await ctx.lookups.apiKey(hash);
  if (!key) throw new AppError("unauthenticated", "The API key is unknown or revoked.");
  const now = ctx.clock.now();
  if (!key.last_used_at || now.getTime() - key.last_used_at.getTime() > LAST_USED_RESOLUTION_MS) {
    // Bookkeeping, not part of the request: never fail or slow the request for it.
    ctx.lookups.touched(hash, now);
    repo.touchApiKey(ctx.db, key.id, now).catch((err) => request.log.warn({ err }, "last_used_at"));
  }
  return {
    kind: "api_key",
    id: key.id,
    role: key.role as Role,
    orgId: key.org_id,
    actor: { type: "api_key", id: key.id },
    userId: null,
  };
}

async function authorize(
  ctx: AppContext,
  request: FastifyRequest,
  principal: Principal,
  access: Exclude<Access, { public: true }>,
): Promise<void> {
  if (access.org) {
    const ref = (request.params as { org_id?: string }).org_id ?? "";
    const org = await ctx.lookups.organization(ref);
    // Another organisation's ids are answered exactly like unknown ones.
    if (!org || (principal.orgId !== null && principal.orgId !== org.id)) {
      throw new AppError("not_found", "Organisation not found.");
    }
    request.org = org;
  }
  if (principal.role !== "platform" && !access.roles.includes(principal.role)) {
    throw new AppError("forbidden");
  }
  if (access.portal === false && principal.kind === "portal_user") {
    throw new AppError("forbidden", "This is not available in the customer portal.");
  }
  if (access.credits && request.org && !isCreditsEligible(ctx, request.org)) {
    throw new AppError("plan_not_eligible");
  }

  const onBehalfOf = request.headers["on-behalf-of"];
  if (typeof onBehalfOf === "string" && principal.kind === "api_key") {
    const orgId = request.org?.id ?? principal.orgId;
    if (!orgId) {
      principal.onBehalfOf = onBehalfOf;
      return;
    }
    const user = await repo.findUser(ctx.db, orgId, onBehalfOf);
    if (!user) {
      throw new AppError("invalid_request", "On-Behalf-Of must name a user of the organisation.", [
        { field: "header.on-behalf-of", message: "unknown user" },
      ]);
    }
    principal.userId = user.id;
  }
}

/** The organisation of an org-scoped request (set by the auth hook for `access.org` routes). */
export function requestOrg(request: FastifyRequest): Organization {
  if (!request.org) throw new Error("route did not declare access.org");
  return request.org;
}

export function requestPrincipal(request: FastifyRequest): Principal {
  if (!request.principal) throw new Error("route is public");
  return request.principal;
}
