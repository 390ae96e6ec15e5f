import { type Static, Type } from "@sinclair/typebox";
import type { AppContext } from "../../app/context.js";
import { csvStream } from "../../app/csv.js";
import { AppError, ErrorEnvelopeSchema, unwrap } from "../../app/errors.js";
import {
  type App,
  Credits,
  CsvResponse,
  decodeCursor,
  encodeCursor,
  filterBound,
  ListQuery,
  OrgParams,
  Page,
  pageOf,
  ROLES,
  Timestamp,
} from "../../app/http.js";
import { requestOrg, requestPrincipal } from "../orgs/auth.js";
import type { Organization } from "../orgs/orgs.service.js";
import { usageEntryOfEvent } from "../usage/usage.service.js";
import { creditsFromDb, formatCredits, parseCredits } from "./credits.js";
import * as repo from "./ledger.repo.js";
import * as service from "./ledger.service.js";
import type { LedgerEntry } from "./posting.js";

const access = (
  roles: readonly ("admin" | "billing" | "ingest" | "read")[],
  options: { portal?: false } = {},
) => ({
  access: { roles, org: true, credits: true, ...options },
});

export const BalanceSchema = Type.Object(
  {
    org_id: Type.String(),
    balance: Credits("Σ of all ledger entries; negative means debt from usage."),
    reserved: Credits("Σ of open reservations."),
    available: Credits("balance − reserved."),
    overdraft_limit: Credits(),
    debt: Credits("Usage not covered by credits, repaid first by the next credit."),
    low_balance: Type.Boolean({ description: "An alert threshold is crossed (or available ≤ 0)." }),
    auto_topup: Type.Union([
      Type.Literal("off"),
      Type.Literal("idle"),
      Type.Literal("in_flight"),
      Type.Literal("disabled"),
    ]),
    updated_at: Timestamp(
      "When the balance last changed (before the organisation's first entry: its creation).",
    ),
    last_sequence: Type.Integer({ description: "Sequence of the newest ledger entry." }),
  },
  { title: "Balance" },
);
export type BalanceDto = Static<typeof BalanceSchema>;

const BlockStatus = Type.Union([
  Type.Literal("active"),
  Type.Literal("pending_payment"),
  Type.Literal("depleted"),
  Type.Literal("expired"),
  Type.Literal("voided"),
]);

export const CreditBlockSchema = Type.Object(
  {
    id: Type.String(),
    source: Type.String({ examples: ["purchase", "bonus", "adjustment", "promotional"] }),
    original: Credits(),
    remaining: Credits(),
    unit_cost: Type.String({ description: "Money paid per credit (0 for free credits)." }),
    priority: Type.Integer(),
    effective_at: Timestamp(),
    expires_at: Type.Union([Timestamp(), Type.Null()]),
    status: BlockStatus,
    purchase_id: Type.Union([Type.String(), Type.Null()]),
    created_at: Timestamp(),
  },
  { title: "CreditBlock" },
);

const EntryTypeSchema = Type.Union([
  Type.Literal("purchase"),
  Type.Literal("bonus"),
  Type.Literal("usage"),
  Type.Literal("refund"),
  Type.Literal("adjustment"),
  Type.Literal("expiry"),
]);

export const LedgerEntrySchema = Type.Object(
  {
    id: Type.String({ examples: ["txn_01JD3M6Q8Z4X2N7V5B9C1K3H0T"] }),
    org_id: Type.String(),
    sequence: Type.Integer({ description: "Per-organisation, gapless, from 1." }),
    type: EntryTypeSchema,
    amount: Credits("Signed: credits added (+) or removed (−)."),
    balance_after: Credits(),
    debt_change: Credits("Debt incurred (+) or repaid (−) by this entry."),
    allocations: Type.Array(Type.Object({ block_id: Type.String(), amount: Credits() }), {
      description: "Blocks this entry added to or drew from; Σ allocations − debt_change = amount.",
    }),
    actor: Type.Object({
      type: Type.Union([Type.Literal("api_key"), Type.Literal("user"), Type.Literal("system")]),
      id: Type.String(),
    }),
    user_id: Type.Union([Type.String(), Type.Null()]),
    reason: Type.Union([Type.String(), Type.Null()]),
    description: Type.Union([Type.String(), Type.Null()]),
    reference: Type.Union([Type.Object({ type: Type.String(), id: Type.String() }), Type.Null()]),
    created_at: Timestamp(),
    hash: Type.String({ description: "hex SHA-256(prev_hash ‖ canonical entry)" }),
    prev_hash: Type.String(),
  },
  { title: "LedgerEntry" },
);
export type LedgerEntryDto = Static<typeof LedgerEntrySchema>;

export function entryDto(e: LedgerEntry): LedgerEntryDto {
  return {
    id: e.id,
    org_id: e.org_id,
    sequence: Number(e.sequence),
    type: e.type,
    amount: formatCredits(e.amount),
    balance_after: formatCredits(e.balance_after),
    debt_change: formatCredits(e.debt_change),
    allocations: e.allocations.map((a) => ({
      block_id: a.block_id,
      amount: formatCredits(a.amount),
    })),
    actor: { type: e.actor_type as "system", id: e.actor_id },
    user_id: e.user_id,
    reason: e.reason,
    description: e.description,
    reference:
      e.reference_type && e.reference_id ? { type: e.reference_type, id: e.reference_id } : null,
    created_at: e.created_at.toISOString(),
    hash: e.hash,
    prev_hash: e.prev_hash,
  };
}

const TransactionFilters = {
  type: Type.Optional(EntryTypeSchema),
  user_id: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
  from: Type.Optional(Timestamp("Entries created at or after.")),
  to: Type.Optional(Timestamp("Entries created before.")),
  reference_id: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
};

/** An organisation's balance as `GET …/balance` answers it (and the CLI prints it). */
export async function balanceDto(
  ctx: AppContext,
  org: Organization,
  flags: service.BalanceFlags,
): Promise<BalanceDto> {
  const {
    view: b,
    inAlert,
    autoTopup,
  } = await service.readBalance(ctx, org.id, flags, ctx.clock.now());
  return {
    org_id: org.id,
    balance: formatCredits(b.balance),
    reserved: formatCredits(b.reserved),
    available: formatCredits(b.available),
    overdraft_limit: formatCredits(creditsFromDb(org.overdraft_limit)),
    debt: formatCredits(b.debt),
    low_balance: b.available <= 0n || inAlert,
    auto_topup: autoTopup,
    updated_at: (b.updated_at ?? org.created_at).toISOString(),
    last_sequence: Number(b.last_sequence),
  };
}

export function registerLedgerRoutes(
  app: App,
  ctx: AppContext,
  flags: service.BalanceFlags = service.defaultBalanceFlags,
): void {
  const tags = ["ledger"];

  app.get(
    "/v1/organizations/:org_id/balance",
    {
      schema: {
        tags,
        summary: "Current balance",
        params: OrgParams,
        response: { 200: BalanceSchema },
      },
      config: access(ROLES.readBalance),
    },
    async (request) => balanceDto(ctx, requestOrg(request), flags),
  );

  app.get(
    "/v1/organizations/:org_id/credit-blocks",
    {
      schema: {
        tags,
        summary: "Credit blocks (newest first)",
        params: OrgParams,
        querystring: Type.Object(
          { ...ListQuery, status: Type.Optional(BlockStatus) },
          { additionalProperties: false },
        ),
        response: { 200: Page(CreditBlockSchema) },
      },
      config: access(ROLES.read),
    },
    async (request) => {
      const limit = request.query.limit ?? 50;
      const before = request.query.cursor
        ? String(decodeCursor(request.query.cursor, 1)[0])
        : undefined;
      const rows = await repo.listBlocks(ctx.db, requestOrg(request).id, {
        status: request.query.status,
        limit,
        before,
      });
      return pageOf(
        rows,
        limit,
        (b) => ({
          id: b.id,
          source: b.source,
          original: formatCredits(creditsFromDb(b.original)),
          remaining: formatCredits(creditsFromDb(b.remaining)),
          unit_cost: formatCredits(creditsFromDb(b.unit_cost)),
          priority: b.priority,
          effective_at: b.effective_at.toISOString(),
          expires_at: b.expires_at?.toISOString() ?? null,
          status: b.status,
          purchase_id: b.purchase_id,
          created_at: b.created_at.toISOString(),
        }),
        (b) => encodeCursor([b.id]),
      );
    },
  );

  app.post(
    "/v1/organizations/:org_id/adjustments",
    {
      schema: {
        tags,
        summary: "Adjust credits manually (a reason is required)",
        params: OrgParams,
        body: Type.Object(
          {
            amount: Type.String({
              pattern: "^[+-]\\d{1,15}(\\.\\d{1,12})?$",
              description: "Signed credits: `+100` adds a block, `-20` draws in burn order.",
              examples: ["+100", "-20"],
            }),
            reason: Type.String({ minLength: 1, maxLength: 500 }),
            expires_at: Type.Optional(Timestamp("Expiry of the added credits (positive only).")),
            priority: Type.Optional(
              Type.Integer({ minimum: -1000, maximum: 1000, description: "Lower burns first." }),
            ),
            category: Type.Optional(
              Type.Union([Type.Literal("promotional"), Type.Literal("correction")], {
                default: "correction",
              }),
            ),
          },
          { additionalProperties: false },
        ),
        response: {
          201: LedgerEntrySchema,
          402: {
            ...ErrorEnvelopeSchema,
            description: "A debit larger than the credits held (`insufficient_credits`).",
          },
        },
      },
      // Free credits are the platform's to give (and its org admin keys'), not a customer's.
      config: access(ROLES.admin, { portal: false }),
    },
    async (request, reply) => {
      const b = request.body;
      const amount = parseCredits(b.amount);
      if (amount === 0n) throw invalidField("body/amount", "must not be zero");
      if (amount < 0n && (b.expires_at !== undefined || b.priority !== undefined)) {
        throw invalidField("body/amount", "expires_at and priority apply to added credits only");
      }
      const expiresAt = b.expires_at ? new Date(b.expires_at) : null;
      if (expiresAt && expiresAt <= ctx.clock.now()) {
        throw invalidField("body/expires_at", "must be in the future");
      }
      if (b.reason.trim() === "") throw invalidField("body/reason", "must not be blank");
      const principal = requestPrincipal(request);
      const entry = unwrap(
        await service.adjustCredits(ctx, {
          orgId: requestOrg(request).id,
          amount,
          reason: b.reason,
          category: b.category ?? "correction",
          expiresAt,
          priority: b.priority ?? null,
          actor: principal.actor,
          userId: principal.userId,
        }),
      );
      return reply.code(201).send(entryDto(entry));
    },
  );

  app.get(
    "/v1/organizations/:org_id/transactions",
    {
      schema: {
        tags,
        summary: "Ledger entries, newest first",
        params: OrgParams,
        querystring: Type.Object(
          { ...ListQuery, ...TransactionFilters },
          { additionalProperties: false },
        ),
        response: { 200: Page(LedgerEntrySchema) },
      },
      config: access(ROLES.read),
    },
    async (request) => {
      const { limit = 50, cursor, ...filters } = request.query;
      const beforeSequence = cursor ? String(decodeCursor(cursor, 1)[0]) : undefined;
      // A bigint: more digits were a 500 ("out of range for type bigint").
      if (beforeSequence !== undefined && !/^\d{1,18}$/.test(beforeSequence)) {
        throw invalidField("query.cursor", "not a cursor of this list");
      }
      const orgId = requestOrg(request).id;
      const rows = await repo.listEntries(ctx.db, orgId, await toFilters(ctx, orgId, filters), {
        limit,
        beforeSequence,
      });
      return pageOf(
        rows,
        limit,
        (r) => entryDto(service.entryFromRow(r)),
        (r) => encodeCursor([r.sequence]),
      );
    },
  );

  app.get(
    "/v1/organizations/:org_id/transactions.csv",
    {
      schema: {
        tags,
        summary: "Ledger entries as CSV (streamed, same filters)",
        params: OrgParams,
        querystring: Type.Object(TransactionFilters, { additionalProperties: false }),
        response: { 200: CsvResponse("CSV with a header row.") },
      },
      config: access(ROLES.read),
    },
    async (request, reply) => {
      const org = requestOrg(request);
      const filters = await toFilters(ctx, org.id, request.query);
      reply
        .type("text/csv; charset=utf-8")
        .header("content-disposition", `attachment; filename="${org.id}-transactions.csv"`);
      return reply.send(
        csvStream(
          TRANSACTION_CSV_COLUMNS,
          async function* () {
            let before: string | undefined;
            for (;;) {
              const rows = await repo.listEntries(ctx.db, org.id, filters, {
                limit: 999,
                beforeSequence: before,
              });
              if (rows.length === 0) return;
              yield rows.slice(0, 999);
              if (rows.length <= 999) return;
              before = rows[998]!.sequence;
            }
          },
          (r) => {
            const e = service.entryFromRow(r);
            return [
              e.id,
              e.sequence,
              e.created_at.toISOString(),
              e.type,
              formatCredits(e.amount),
              formatCredits(e.balance_after),
              formatCredits(e.debt_change),
              e.actor_type,
              e.actor_id,
              e.user_id,
              e.reason,
              e.description,
              e.reference_type,
              e.reference_id,
              e.allocations.map((a) => `${a.block_id}:${formatCredits(a.amount)}`).join(" "),
              e.prev_hash,
              e.hash,
            ];
          },
        ),
      );
    },
  );

  app.get(
    "/v1/organizations/:org_id/transactions/:txn_id",
    {
      schema: {
        tags,
        summary: "One ledger entry",
        params: Type.Object({
          org_id: OrgParams.properties.org_id,
          txn_id: Type.String({ maxLength: 64 }),
        }),
        response: { 200: LedgerEntrySchema },
      },
      config: access(ROLES.read),
    },
    async (request) => {
      const row = await repo.findEntry(ctx.db, requestOrg(request).id, request.params.txn_id);
      if (!row) throw new AppError("not_found", "Transaction not found.");
      return entryDto(service.entryFromRow(row));
    },
  );

  app.get(
    "/v1/organizations/:org_id/ledger/verify",
    {
      schema: {
        tags,
        summary: "Recompute the hash chain and check the balance against entries and blocks",
        params: OrgParams,
        response: {
          200: Type.Object(
            {
              ok: Type.Boolean(),
              entries: Type.Integer(),
              head_hash: Type.String(),
              first_bad_sequence: Type.Union([Type.Integer(), Type.Null()]),
              problems: Type.Array(Type.String()),
            },
            { title: "LedgerVerification" },
          ),
        },
      },
      config: access(ROLES.read),
    },
    async (request) => service.verifyLedger(ctx.db, requestOrg(request).id),
  );
}

export const TRANSACTION_CSV_COLUMNS = [
  "id",
  "sequence",
  "created_at",
  "type",
  "amount",
  "balance_after",
  "debt_change",
  "actor_type",
  "actor_id",
  "user_id",
  "reason",
  "description",
  "reference_type",
  "reference_id",
  "allocations",
  "prev_hash",
  "hash",
] as const;

async function toFilters(
  ctx: AppContext,
  orgId: string,
  q: {
    type?: repo.EntryFilters["type"];
    user_id?: string;
    from?: string;
    to?: string;
    reference_id?: string;
  },
): Promise<repo.EntryFilters> {
  return {
    type: q.type,
    user_id: q.user_id,
    from: q.from ? filterBound(q.from) : undefined,
    to: q.to ? filterBound(q.to) : undefined,
    reference:
      q.reference_id === undefined
        ? undefined
        : {
            id: q.reference_id,
            usageEntryId: await usageEntryOfEvent(ctx.db, orgId, q.reference_id),
          },
  };
}

/** `body/amount` → detail field `/amount` (a JSON pointer, like schema errors); `query.x` as is. */
function invalidField(field: string, message: string): AppError {
  return new AppError("invalid_request", `${field.replace(/^body\//, "")} ${message}.`, [
    { field: field.replace(/^body\//, "/"), message },
  ]);
}
