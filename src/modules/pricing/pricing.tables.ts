import type { ColumnType } from "kysely";

/** `bigint` columns read back as strings (see src/db/index.ts); written as numbers. */
type VersionColumn = ColumnType<string, number, never>;
/** `numeric(38,6)` rates: decimal strings both ways, never JS numbers. */
type RateColumn = ColumnType<string, string, never>;

export interface PriceVersionsTable {
  version: VersionColumn;
  effective_from: ColumnType<Date, Date, never>;
  created_at: ColumnType<Date, Date, never>;
  /** `api_key:key_…`, `user:…` or `system:…`. */
  created_by: ColumnType<string, string, never>;
}

export interface ModelPricesTable {
  version: VersionColumn;
  model: ColumnType<string, string, never>;
  provider: ColumnType<string, string, never>;
  input: RateColumn;
  cached_input: RateColumn;
  cache_write: RateColumn;
  output: RateColumn;
}

export interface MeterPricesTable {
  version: VersionColumn;
  meter: ColumnType<string, string, never>;
  type: ColumnType<string, string, never>;
  unit: ColumnType<string, string, never>;
  rate: RateColumn;
  aggregation: ColumnType<string, string, never>;
}

export interface PricingTables {
  price_versions: PriceVersionsTable;
  model_prices: ModelPricesTable;
  meter_prices: MeterPricesTable;
}
