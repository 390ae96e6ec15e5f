import type { AppContext } from "../../app/context.js";
import { fail, ok, type Result } from "../../app/errors.js";
import { type Credits, creditsFromDb, creditsToDb } from "../ledger/credits.js";
import * as repo from "./billing.repo.js";
import {
  highestPricePerCredit,
  type PackageAmounts,
  type PackageFigures,
  packageFigures,
  type Ratio,
} from "./package-figures.js";

export type CreditPackage = repo.PackageRow;

export interface PackageInput {
  name: string;
  description: string | null;
  credits: Credits;
  bonusCredits: Credits;
  priceMinor: bigint;
  currency: string;
  bonusExpiresInDays: number | null;
  active: boolean;
}

export type PackagePatch = Partial<Omit<PackageInput, "currency">>;

export function packageAmounts(p: CreditPackage): PackageAmounts {
  return {
    credits: creditsFromDb(p.credits),
    bonusCredits: creditsFromDb(p.bonus_credits),
    priceMinor: BigInt(p.price_minor),
    currency: p.currency,
  };
}

export async function createPackage(ctx: AppContext, input: PackageInput): Promise<CreditPackage> {
  const now = ctx.clock.now();
  const row: CreditPackage = {
    id: ctx.ids.newId("pkg"),
    name: input.name,
    description: input.description,
    credits: creditsToDb(input.credits),
    bonus_credits: creditsToDb(input.bonusCredits),
    price_minor: input.priceMinor.toString(),
    currency: input.currency,
    bonus_expires_in_days: input.bonusExpiresInDays,
    active: input.active,
    created_at: now,
    updated_at: now,
  };
  await repo.insertPackage(ctx.db, row);
  return (await repo.findPackage(ctx.db, row.id))!;
}

/** `activeOnly`: organisation keys see the active catalogue only; inactive ids are not found. */
export async function getPackage(
  ctx: AppContext,
  id: string,
  opts: { activeOnly: boolean },
): Promise<Result<CreditPackage, "not_found">> {
  const row = await repo.findPackage(ctx.db, id);
  if (!row || (opts.activeOnly && !row.active)) return fail("not_found", "Package not found.");
  return ok(row);
}

export function listPackages(
  ctx: AppContext,
  opts: { limit: number; after?: string; active?: boolean },
) {
  return repo.listPackages(ctx.db, opts);
}

export async function updatePackage(
  ctx: AppContext,
  id: string,
  patch: PackagePatch,
): Promise<Result<CreditPackage, "not_found">> {
  const values: Parameters<typeof repo.updatePackage>[2] = { updated_at: ctx.clock.now() };
  if (patch.name !== undefined) values.name = patch.name;
  if (patch.description !== undefined) values.description = patch.description;
  if (patch.credits !== undefined) values.credits = creditsToDb(patch.credits);
  if (patch.bonusCredits !== undefined) values.bonus_credits = creditsToDb(patch.bonusCredits);
  if (patch.priceMinor !== undefined) values.price_minor = patch.priceMinor.toString();
  if (patch.bonusExpiresInDays !== undefined) {
    values.bonus_expires_in_days = patch.bonusExpiresInDays;
  }
  if (patch.active !== undefined) values.active = patch.active;
  const row = await repo.updatePackage(ctx.db, id, values);
  return row ? ok(row) : fail("not_found", "Package not found.");
}

/**
 * Computed figures for `rows`. Savings compare with the highest price per credit among the
 * ACTIVE packages of the same currency (whatever page `rows` is), so they do not depend on paging
 * or on filters.
 */
export async function withFigures(
  ctx: AppContext,
  rows: CreditPackage[],
): Promise<{ row: CreditPackage; figures: PackageFigures }[]> {
  const currencies = [...new Set(rows.map((r) => r.currency))];
  const active = await repo.activePackagesIn(ctx.db, currencies);
  const references = new Map<string, Ratio | null>();
  for (const currency of currencies) {
    references.set(
      currency,
      highestPricePerCredit(active.filter((p) => p.currency === currency).map(packageAmounts)),
    );
  }
  return rows.map((row) => ({
    row,
    figures: packageFigures(packageAmounts(row), references.get(row.currency) ?? null),
  }));
}
