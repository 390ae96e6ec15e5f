import { useMemo, useState } from "react";
import { type ChartSeries, StackedBarChart } from "../components/Chart";
import {
  Amount,
  Empty,
  ErrorState,
  Field,
  Loading,
  Section,
  TableWrap,
  Unavailable,
} from "../components/ui";
import { api, type DailyUsage, FEATURES, orgPath, type UsageSummary } from "../lib/api";
import { formatDecimal, formatMonth, sumDecimals } from "../lib/format";
import { useLoad } from "../lib/hooks";
import { useFeature } from "../lib/session";

const TYPE_ORDER = ["ai_tokens", "compute", "storage", "bandwidth", "data_ops"];

function byTypeOrder(a: string, b: string): number {
  const ia = TYPE_ORDER.indexOf(a);
  const ib = TYPE_ORDER.indexOf(b);
  return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
}

function daysEnding(today: string, count: number): string[] {
  const end = Date.parse(`${today}T00:00:00Z`);
  return Array.from({ length: count }, (_, i) =>
    new Date(end - (count - 1 - i) * 86_400_000).toISOString().slice(0, 10),
  );
}

/** Daily cost by usage type for the last 60 days (UTC), from the reports API. */
export function DailyUsageChart({ orgId, today }: { orgId: string; today: string }) {
  const available = useFeature(FEATURES.usageDaily);
  const days = useMemo(() => daysEnding(today, 60), [today]);
  const daily = useLoad(
    (signal) =>
      available
        ? api.get<{ data: DailyUsage[] }>(
            orgPath(orgId, "/usage-daily"),
            { from: days[0], to: days[days.length - 1] },
            signal,
          )
        : Promise.resolve({ data: [] }),
    [orgId, available, days],
  );
  const series = useMemo<ChartSeries[]>(() => {
    if (daily.state !== "ready") return [];
    const types = [...new Set(daily.data.data.map((r) => r.type))].sort(byTypeOrder);
    return types.map((type) => {
      const costs = new Map<string, string[]>();
      for (const r of daily.data.data) {
        if (r.type !== type) continue;
        costs.set(r.day, [...(costs.get(r.day) ?? []), r.cost]);
      }
      return {
        label: type,
        values: days.map((d) => (costs.has(d) ? sumDecimals(costs.get(d)!) : null)),
      };
    });
  }, [daily, days]);

  if (!available) return <Unavailable what="Daily usage" />;
  if (daily.state === "loading") return <Loading label="Loading daily usage…" />;
  if (daily.state === "error") return <ErrorState error={daily.error} retry={daily.reload} />;
  if (series.length === 0) return <Empty>No usage in the last 60 days.</Empty>;
  return (
    <StackedBarChart
      title="Daily cost by type, last 60 days"
      x={days}
      xKind="day"
      series={series}
    />
  );
}

/** Months (last 12) by type as a chart, and one month broken down by type, model and user. */
export function MonthlyUsage({ orgId, showUsers = true }: { orgId: string; showUsers?: boolean }) {
  const available = useFeature(FEATURES.usageSummaries);
  const summaries = useLoad(
    (signal) =>
      available
        ? api.get<{ data: UsageSummary[] }>(orgPath(orgId, "/usage-summaries"), {}, signal)
        : Promise.resolve({ data: [] }),
    [orgId, available],
  );
  const months = useMemo(
    () =>
      summaries.state === "ready"
        ? [...summaries.data.data].sort((a, b) => a.period.localeCompare(b.period))
        : [],
    [summaries],
  );
  const [selected, setSelected] = useState<string | null>(null);
  const current =
    months.find((m) => m.period === selected) ??
    [...months].reverse().find((m) => m.events > 0) ??
    months[months.length - 1];

  const x = useMemo(() => months.map((m) => m.period), [months]);
  const series = useMemo<ChartSeries[]>(() => {
    const types = [...new Set(months.flatMap((m) => m.by_type.map((t) => t.type)))].sort(
      byTypeOrder,
    );
    return types.map((type) => ({
      label: type,
      values: months.map((m) => {
        const rows = m.by_type.filter((t) => t.type === type);
        return rows.length > 0 ? sumDecimals(rows.map((r) => r.cost)) : null;
      }),
    }));
  }, [months]);

  if (!available) return <Unavailable what="Monthly usage summaries" />;
  if (summaries.state === "loading") return <Loading label="Loading monthly usage…" />;
  if (summaries.state === "error") {
    return <ErrorState error={summaries.error} retry={summaries.reload} />;
  }
  if (!current || months.every((m) => m.events === 0)) {
    return <Empty>No usage recorded in the last 12 months.</Empty>;
  }

  return (
    <div className="monthly">
      <StackedBarChart title="Monthly cost by type" x={x} xKind="month" series={series} />
      <div className="month-pick">
        <Field label="Month">
          {(p) => (
            <select {...p} value={current.period} onChange={(e) => setSelected(e.target.value)}>
              {[...months].reverse().map((m) => (
                <option key={m.period} value={m.period}>
                  {formatMonth(m.period)}
                </option>
              ))}
            </select>
          )}
        </Field>
        <p className="month-total">
          Total <Amount value={current.total_cost} maxFraction={6} /> credits ·{" "}
          {formatDecimal(String(current.events))} events
        </p>
      </div>
      <div className="breakdowns">
        <TableWrap label="Usage by type">
          <table>
            <caption>By type</caption>
            <thead>
              <tr>
                <th scope="col">Type</th>
                <th scope="col" className="num-col">
                  Quantity
                </th>
                <th scope="col" className="num-col">
                  Events
                </th>
                <th scope="col" className="num-col">
                  Cost
                </th>
              </tr>
            </thead>
            <tbody>
              {current.by_type.length === 0 ? (
                <tr>
                  <td colSpan={4}>No usage this month.</td>
                </tr>
              ) : (
                current.by_type.map((t) => (
                  <tr key={`${t.type}-${t.unit}`}>
                    <th scope="row">{t.type}</th>
                    <td className="num-col">
                      <Amount value={t.quantity} maxFraction={6} unit={t.unit} />
                    </td>
                    <td className="num-col">{formatDecimal(String(t.events))}</td>
                    <td className="num-col">
                      <Amount value={t.cost} maxFraction={6} />
                    </td>
                  </tr>
                ))
              )}
            </tbody>
          </table>
        </TableWrap>
        {current.by_model.length > 0 ? (
          <TableWrap label="Usage by model">
            <table>
              <caption>By model</caption>
              <thead>
                <tr>
                  <th scope="col">Model</th>
                  <th scope="col" className="num-col">
                    Input
                  </th>
                  <th scope="col" className="num-col">
                    Cached input
                  </th>
                  <th scope="col" className="num-col">
                    Output
                  </th>
                  <th scope="col" className="num-col">
                    Cost
                  </th>
                </tr>
              </thead>
              <tbody>
                {current.by_model.map((m) => (
                  <tr key={m.model}>
                    <th scope="row">{m.model}</th>
                    <td className="num-col">{formatDecimal(String(m.input_tokens))}</td>
                    <td className="num-col">{formatDecimal(String(m.cached_input_tokens))}</td>
                    <td className="num-col">{formatDecimal(String(m.output_tokens))}</td>
                    <td className="num-col">
                      <Amount value={m.cost} maxFraction={6} />
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </TableWrap>
        ) : null}
        {showUsers && current.by_user.length > 0 ? (
          <TableWrap label="Usage by user">
            <table>
              <caption>By user</caption>
              <thead>
                <tr>
                  <th scope="col">User</th>
                  <th scope="col" className="num-col">
                    Events
                  </th>
                  <th scope="col" className="num-col">
                    Cost
                  </th>
                </tr>
              </thead>
              <tbody>
                {current.by_user.map((u) => (
                  <tr key={u.user_id ?? "-"}>
                    <th scope="row">{u.user_id ?? "(no user)"}</th>
                    <td className="num-col">{formatDecimal(String(u.events))}</td>
                    <td className="num-col">
                      <Amount value={u.cost} maxFraction={6} />
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </TableWrap>
        ) : null}
      </div>
    </div>
  );
}

export function UsageSection({
  orgId,
  today,
  showUsers,
}: {
  orgId: string;
  today: string;
  showUsers?: boolean;
}) {
  return (
    <Section title="Usage">
      <DailyUsageChart orgId={orgId} today={today} />
      <MonthlyUsage orgId={orgId} showUsers={showUsers} />
    </Section>
  );
}
