import { type Static, Type } from "@sinclair/typebox";
import type { AppContext } from "../../app/context.js";
import { AppError } from "../../app/errors.js";
import { type App, OrgParams, ROLES, Timestamp } from "../../app/http.js";
import { type Credits, formatCredits, parseCredits } from "../ledger/credits.js";
import { requestOrg } from "../orgs/auth.js";
import * as service from "./alerts.service.js";

const Threshold = Type.String({
  pattern: "^\\+?\\d{1,26}(\\.\\d{1,12})?$",
  description: "A balance in credits (≥ 0, decimal string).",
  examples: ["100"],
});
const Email = Type.String({ format: "email", maxLength: 254, examples: ["ops@example.com"] });

const AlertSettingsBody = Type.Object(
  {
    thresholds: Type.Array(Threshold, {
      maxItems: 10,
      description:
        "Up to 10 distinct thresholds. `balance.low` fires when a write takes the balance from " +
        "≥ T to < T (one notice per write, for the lowest threshold it crossed); the threshold " +
        "re-arms once the balance is back ≥ T. Replaces the previous list.",
      examples: [["500", "100"]],
    }),
    emails: Type.Optional(
      Type.Array(Email, {
        maxItems: 10,
        description:
          "Addresses for low-balance, depleted and auto-topup emails (up to 10; needs " +
          "TALLY_SMTP_URL). Replaces the previous list; absent = none.",
      }),
    ),
  },
  { additionalProperties: false },
);

export const AlertSettingsSchema = Type.Object(
  {
    org_id: Type.String(),
    thresholds: Type.Array(Type.String(), {
      description: "Highest first.",
      examples: [["500", "100"]],
    }),
    emails: Type.Array(Type.String()),
    state: Type.Array(
      Type.Object({
        threshold: Type.String({ examples: ["100"] }),
        in_alert: Type.Boolean({
          description: "true while the balance is below the threshold (a notice was sent).",
        }),
        changed_at: Timestamp("When in_alert last changed (or the threshold was added)."),
      }),
      { description: "Read-only: the state of each threshold, highest first." },
    ),
    updated_at: Type.Union([Timestamp(), Type.Null()]),
  },
  { title: "AlertSettings" },
);
export type AlertSettingsDto = Static<typeof AlertSettingsSchema>;

function dto(orgId: string, v: service.AlertSettingsView): AlertSettingsDto {
  return {
    org_id: orgId,
    thresholds: v.thresholds.map(formatCredits),
    emails: v.emails,
    state: v.state.map((s) => ({
      threshold: formatCredits(s.threshold),
      in_alert: s.inAlert,
      changed_at: s.changedAt.toISOString(),
    })),
    updated_at: v.updatedAt?.toISOString() ?? null,
  };
}

export function registerAlertRoutes(app: App, ctx: AppContext): void {
  const tags = ["alerts"];
  const path = "/v1/organizations/:org_id/alerts";

  app.get(
    path,
    {
      schema: {
        tags,
        summary: "Low-balance alert thresholds and their state",
        params: OrgParams,
        response: { 200: AlertSettingsSchema },
      },
      config: { access: { roles: ROLES.read, org: true, credits: true } },
    },
    async (request) => {
      const org = requestOrg(request);
      return dto(org.id, await service.getAlertSettings(ctx, org.id));
    },
  );

  app.put(
    path,
    {
      schema: {
        tags,
        summary: "Set low-balance alert thresholds and addresses",
        description:
          "Thresholds already above the current balance start in alert without an event; " +
          "the first `balance.low` for them follows the next downward crossing.",
        params: OrgParams,
        body: AlertSettingsBody,
        response: { 200: AlertSettingsSchema },
      },
      config: { access: { roles: ROLES.billing, org: true, credits: true } },
    },
    async (request) => {
      const org = requestOrg(request);
      const thresholds: Credits[] = [];
      request.body.thresholds.forEach((raw, i) => {
        const value = parseCredits(raw);
        if (thresholds.includes(value)) {
          throw new AppError("invalid_request", "Thresholds must be distinct.", [
            { field: `/thresholds/${i}`, message: `duplicate threshold ${raw}` },
          ]);
        }
        thresholds.push(value);
      });
      const view = await service.putAlertSettings(ctx, org.id, {
        thresholds,
        emails: request.body.emails ?? [],
      });
      return dto(org.id, view);
    },
  );
}
