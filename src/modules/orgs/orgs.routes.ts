import { type Static, Type } from "@sinclair/typebox";
import type { AppContext } from "../../app/context.js";
import { AppError, unwrap } from "../../app/errors.js";
import {
  type App,
  ClientId,
  Credits,
  decodeCursor,
  encodeCursor,
  ListQuery,
  Metadata,
  Name,
  OrgParams,
  Page,
  pageOf,
  ROLES,
  Timestamp,
} from "../../app/http.js";
import { PLAN_NAME_PATTERN } from "../../app/ids.js";
import { creditsFromDb, formatCredits, parseCredits } from "../ledger/credits.js";
import { requestOrg, requestPrincipal } from "./auth.js";
import * as repo from "./orgs.repo.js";
import * as service from "./orgs.service.js";

const PlanName = Type.String({
  minLength: 1,
  maxLength: 64,
  pattern: PLAN_NAME_PATTERN,
  description: "Plan of the organisation; only plans in TALLY_CREDIT_PLANS get credits billing.",
  examples: ["professional", "enterprise"],
});

const NonNegativeCredits = Type.String({
  pattern: "^\\+?\\d{1,26}(\\.\\d{1,12})?$",
  description: "Non-negative credits (decimal string).",
  examples: ["0"],
});

export const OrganizationSchema = Type.Object(
  {
    id: Type.String({ examples: ["org_01JD3M6Q8Z4X2N7V5B9C1K3H0T"] }),
    name: Type.String(),
    external_id: Type.Union([Type.String(), Type.Null()]),
    plan: Type.String(),
    overdraft_limit: Credits("Credits the balance may go below zero when admitting work."),
    credits_enabled: Type.Boolean({ description: "Whether the plan includes credits billing." }),
    metadata: Type.Record(Type.String(), Type.String()),
    created_at: Timestamp(),
    updated_at: Timestamp(),
  },
  { title: "Organization" },
);
export type OrganizationDto = Static<typeof OrganizationSchema>;

const CreateOrganizationBody = Type.Object(
  {
    name: Name(),
    external_id: Type.Optional(ClientId("Your own id for the organisation (unique).")),
    plan: Type.Optional(PlanName),
    overdraft_limit: Type.Optional(NonNegativeCredits),
    metadata: Type.Optional(Metadata),
  },
  { additionalProperties: false },
);

const UpdateOrganizationBody = Type.Object(
  {
    name: Type.Optional(Name()),
    plan: Type.Optional(PlanName),
    overdraft_limit: Type.Optional(NonNegativeCredits),
    metadata: Type.Optional(Metadata),
  },
  { additionalProperties: false, minProperties: 1 },
);

const UserRole = Type.Union([
  Type.Literal("admin"),
  Type.Literal("billing"),
  Type.Literal("viewer"),
]);
const Email = Type.String({ format: "email", maxLength: 254, examples: ["ada@example.com"] });

export const UserSchema = Type.Object(
  {
    id: Type.String(),
    email: Type.String(),
    name: Type.Union([Type.String(), Type.Null()]),
    role: UserRole,
    created_at: Timestamp(),
    updated_at: Timestamp(),
  },
  { title: "User" },
);

const CreateUserBody = Type.Object(
  {
    id: ClientId("Your id for the user."),
    email: Email,
    name: Type.Optional(Name()),
    role: UserRole,
  },
  { additionalProperties: false },
);
const UpdateUserBody = Type.Object(
  {
    email: Type.Optional(Email),
    name: Type.Optional(Type.Union([Name(), Type.Null()])),
    role: Type.Optional(UserRole),
  },
  { additionalProperties: false, minProperties: 1 },
);

const OrgKeyRole = Type.Union([
  Type.Literal("admin"),
  Type.Literal("billing"),
  Type.Literal("ingest"),
  Type.Literal("read"),
]);

export const ApiKeySchema = Type.Object(
  {
    id: Type.String(),
    name: Type.String(),
    role: Type.String(),
    org_id: Type.Union([Type.String(), Type.Null()]),
    key_prefix: Type.String(),
    created_at: Timestamp(),
    last_used_at: Type.Union([Timestamp(), Type.Null()]),
    revoked_at: Type.Union([Timestamp(), Type.Null()]),
  },
  { title: "ApiKey" },
);
const CreatedApiKeySchema = Type.Composite(
  [
    ApiKeySchema,
    Type.Object({ key: Type.String({ description: "The secret; shown only once." }) }),
  ],
  { title: "CreatedApiKey" },
);

const UserParams = Type.Object({
  org_id: OrgParams.properties.org_id,
  user_id: Type.String({ maxLength: 128 }),
});
const KeyParams = Type.Object({
  org_id: OrgParams.properties.org_id,
  key_id: Type.String({ maxLength: 64 }),
});

export function organizationDto(ctx: AppContext, org: service.Organization): OrganizationDto {
  return {
    id: org.id,
    name: org.name,
    external_id: org.external_id,
    plan: org.plan,
    overdraft_limit: formatCredits(creditsFromDb(org.overdraft_limit)),
    credits_enabled: service.isCreditsEligible(ctx, org),
    metadata: (typeof org.metadata === "string" ? JSON.parse(org.metadata) : org.metadata) ?? {},
    created_at: org.created_at.toISOString(),
    updated_at: org.updated_at.toISOString(),
  };
}

function userDto(u: repo.UserRow) {
  return {
    id: u.id,
    email: u.email,
    name: u.name,
    role: u.role as "admin" | "billing" | "viewer",
    created_at: u.created_at.toISOString(),
    updated_at: u.updated_at.toISOString(),
  };
}

export function registerOrgRoutes(app: App, ctx: AppContext): void {
  const tags = ["organizations"];

  app.post(
    "/v1/organizations",
    {
      schema: {
        tags,
        summary: "Create an organisation",
        body: CreateOrganizationBody,
        response: { 201: OrganizationSchema },
      },
      config: { access: { roles: ROLES.platform } },
    },
    async (request, reply) => {
      const b = request.body;
      const org = unwrap(
        await service.createOrganization(ctx, {
          name: b.name,
          external_id: b.external_id,
          plan: b.plan,
          overdraft_limit:
            b.overdraft_limit === undefined ? undefined : parseCredits(b.overdraft_limit),
          metadata: b.metadata,
        }),
      );
      return reply.code(201).send(organizationDto(ctx, org));
    },
  );

  app.get(
    "/v1/organizations",
    {
      schema: {
        tags,
        summary: "List organisations",
        querystring: Type.Object(
          {
            ...ListQuery,
            search: Type.Optional(
              Type.String({ maxLength: 200, description: "Name, external id or id." }),
            ),
          },
          { additionalProperties: false },
        ),
        response: { 200: Page(OrganizationSchema) },
      },
      config: { access: { roles: ROLES.platform } },
    },
    async (request) => {
      const limit = request.query.limit ?? 50;
      const before = request.query.cursor
        ? String(decodeCursor(request.query.cursor, 1)[0])
        : undefined;
      const rows = await repo.listOrgs(ctx.db, { limit, before, search: request.query.search });
      return pageOf(
        rows,
        limit,
        (o) => organizationDto(ctx, o),
        (o) => encodeCursor([o.id]),
      );
    },
  );

  app.get(
    "/v1/organizations/:org_id",
    {
      schema: {
        tags,
        summary: "Get an organisation",
        params: OrgParams,
        response: { 200: OrganizationSchema },
      },
      config: { access: { roles: ROLES.read, org: true } },
    },
    async (request) => organizationDto(ctx, requestOrg(request)),
  );

  app.patch(
    "/v1/organizations/:org_id",
    {
      schema: {
        tags,
        summary: "Update an organisation",
        params: OrgParams,
        body: UpdateOrganizationBody,
        response: { 200: OrganizationSchema },
      },
      // An organisation's admin key may rename it and edit its metadata (not from the portal:
      // the metadata is the platform's); its plan and overdraft limit are commercial terms that
      // only the platform sets.
      config: { access: { roles: ROLES.admin, org: true, portal: false } },
    },
    async (request) => {
      const b = request.body;
      if (requestPrincipal(request).orgId !== null) {
        const terms = (["plan", "overdraft_limit"] as const).filter((f) => b[f] !== undefined);
        if (terms.length > 0) {
          throw new AppError(
            "forbidden",
            "Only a platform key may change an organisation's plan or overdraft limit.",
            terms.map((f) => ({ field: `/${f}`, message: "platform keys only" })),
          );
        }
      }
      const updated = await repo.updateOrg(ctx.db, requestOrg(request).id, {
        name: b.name,
        plan: b.plan,
        overdraft_limit:
          b.overdraft_limit === undefined ? undefined : creditsToDbString(b.overdraft_limit),
        metadata: b.metadata,
        updated_at: ctx.clock.now(),
      });
      // Other instances hear of it through the `tally_cache` notification; this one at once.
      ctx.lookups.invalidate();
      return organizationDto(ctx, updated!);
    },
  );

  // ---- users --------------------------------------------------------------------------------

  app.post(
    "/v1/organizations/:org_id/users",
    {
      schema: {
        tags: ["users"],
        summary: "Add a user to an organisation",
        params: OrgParams,
        body: CreateUserBody,
        response: { 201: UserSchema },
      },
      config: { access: { roles: ROLES.admin, org: true, portal: false } },
    },
    async (request, reply) => {
      const org = requestOrg(request);
      const now = ctx.clock.now();
      const row = {
        org_id: org.id,
        id: request.body.id,
        email: request.body.email,
        name: request.body.name ?? null,
        role: request.body.role,
        created_at: now,
        updated_at: now,
      };
      if (!(await repo.insertUser(ctx.db, row))) {
        throw new AppError(
          "invalid_state",
          `User "${row.id}" already exists in this organisation.`,
        );
      }
      return reply.code(201).send(userDto(row));
    },
  );

  app.get(
    "/v1/organizations/:org_id/users",
    {
      schema: {
        tags: ["users"],
        summary: "List the users of an organisation",
        params: OrgParams,
        querystring: Type.Object(ListQuery, { additionalProperties: false }),
        response: { 200: Page(UserSchema) },
      },
      config: { access: { roles: ROLES.read, org: true } },
    },
    async (request) => {
      const limit = request.query.limit ?? 50;
      const after = request.query.cursor
        ? String(decodeCursor(request.query.cursor, 1)[0])
        : undefined;
      const rows = await repo.listUsers(ctx.db, requestOrg(request).id, limit, after);
      return pageOf(rows, limit, userDto, (u) => encodeCursor([u.id]));
    },
  );

  app.get(
    "/v1/organizations/:org_id/users/:user_id",
    {
      schema: {
        tags: ["users"],
        summary: "Get a user",
        params: UserParams,
        response: { 200: UserSchema },
      },
      config: { access: { roles: ROLES.read, org: true } },
    },
    async (request) => {
      const user = await repo.findUser(ctx.db, requestOrg(request).id, request.params.user_id);
      if (!user) throw new AppError("not_found", "User not found.");
      return userDto(user);
    },
  );

  app.patch(
    "/v1/organizations/:org_id/users/:user_id",
    {
      schema: {
        tags: ["users"],
        summary: "Update a user",
        params: UserParams,
        body: UpdateUserBody,
        response: { 200: UserSchema },
      },
      config: { access: { roles: ROLES.admin, org: true, portal: false } },
    },
    async (request) => {
      const user = await repo.updateUser(ctx.db, requestOrg(request).id, request.params.user_id, {
        ...request.body,
        updated_at: ctx.clock.now(),
      });
      if (!user) throw new AppError("not_found", "User not found.");
      return userDto(user);
    },
  );

  app.delete(
    "/v1/organizations/:org_id/users/:user_id",
    {
      schema: {
        tags: ["users"],
        summary: "Remove a user",
        params: UserParams,
        response: { 204: Type.Null() },
      },
      config: { access: { roles: ROLES.admin, org: true, portal: false } },
    },
    async (request, reply) => {
      if (!(await repo.deleteUser(ctx.db, requestOrg(request).id, request.params.user_id))) {
        throw new AppError("not_found", "User not found.");
      }
      return reply.code(204).send(null);
    },
  );

  // ---- API keys -----------------------------------------------------------------------------

  app.post(
    "/v1/organizations/:org_id/api-keys",
    {
      schema: {
        tags: ["api keys"],
        summary: "Create an organisation API key",
        description: "The secret `key` is returned only in this response.",
        params: OrgParams,
        body: Type.Object({ name: Name(), role: OrgKeyRole }, { additionalProperties: false }),
        response: { 201: CreatedApiKeySchema },
      },
      config: { access: { roles: ROLES.admin, org: true, portal: false } },
    },
    async (request, reply) => {
      const created = await service.createApiKey(ctx, {
        orgId: requestOrg(request).id,
        name: request.body.name,
        role: request.body.role,
      });
      return reply.code(201).send({ ...service.apiKeyView(created.row), key: created.secret });
    },
  );

  app.get(
    "/v1/organizations/:org_id/api-keys",
    {
      schema: {
        tags: ["api keys"],
        summary: "List an organisation's API keys (no secrets)",
        params: OrgParams,
        querystring: Type.Object(ListQuery, { additionalProperties: false }),
        response: { 200: Page(ApiKeySchema) },
      },
      config: { access: { roles: ROLES.read, org: true } },
    },
    async (request) => {
      const limit = request.query.limit ?? 50;
      const before = request.query.cursor
        ? String(decodeCursor(request.query.cursor, 1)[0])
        : undefined;
      const rows = await repo.listApiKeys(ctx.db, requestOrg(request).id, limit, before);
      return pageOf(rows, limit, service.apiKeyView, (k) => encodeCursor([k.id]));
    },
  );

  app.delete(
    "/v1/organizations/:org_id/api-keys/:key_id",
    {
      schema: {
        tags: ["api keys"],
        summary: "Revoke an API key at once",
        params: KeyParams,
        response: { 204: Type.Null() },
      },
      config: { access: { roles: ROLES.admin, org: true, portal: false } },
    },
    async (request, reply) => {
      const revoked = await repo.revokeApiKey(
        ctx.db,
        requestOrg(request).id,
        request.params.key_id,
        ctx.clock.now(),
      );
      if (!revoked) throw new AppError("not_found", "API key not found.");
      ctx.lookups.invalidate(); // other instances: through the `tally_cache` notification
      return reply.code(204).send(null);
    },
  );

  app.post(
    "/v1/platform-keys",
    {
      schema: {
        tags: ["api keys"],
        summary: "Create a platform key (all organisations)",
        body: Type.Object({ name: Name() }, { additionalProperties: false }),
        response: { 201: CreatedApiKeySchema },
      },
      config: { access: { roles: ROLES.platform } },
    },
    async (request, reply) => {
      // The name marks the key TALLY_ADMIN_KEY configures: a start with another value revokes
      // every platform key of that name.
      if (request.body.name === service.ADMIN_KEY_NAME) {
        throw new AppError("invalid_request", `The name ${service.ADMIN_KEY_NAME} is reserved.`, [
          { field: "/name", message: "reserved for the key TALLY_ADMIN_KEY configures" },
        ]);
      }
      const created = await service.createApiKey(ctx, {
        orgId: null,
        name: request.body.name,
        role: "platform",
      });
      return reply.code(201).send({ ...service.apiKeyView(created.row), key: created.secret });
    },
  );

  // ---- portal sessions ----------------------------------------------------------------------

  app.post(
    "/v1/organizations/:org_id/portal-sessions",
    {
      schema: {
        tags: ["portal"],
        summary: "Create a one-time customer portal link for a user",
        params: OrgParams,
        body: Type.Object(
          {
            user_id: ClientId("The user the portal session is for."),
            return_url: Type.Optional(
              Type.String({ format: "uri", maxLength: 2000, pattern: "^https?://" }),
            ),
          },
          { additionalProperties: false },
        ),
        response: {
          201: Type.Object(
            { url: Type.String(), expires_at: Timestamp() },
            { title: "PortalSession" },
          ),
        },
      },
      config: { access: { roles: ROLES.admin, org: true, portal: false } },
    },
    async (request, reply) => {
      requestPrincipal(request);
      const session = unwrap(
        await service.createPortalSession(ctx, {
          orgId: requestOrg(request).id,
          userId: request.body.user_id,
          returnUrl: request.body.return_url ?? null,
        }),
      );
      return reply
        .code(201)
        .send({ url: session.url, expires_at: session.expires_at.toISOString() });
    },
  );
}

function creditsToDbString(value: string): string {
  return formatCredits(parseCredits(value));
}
