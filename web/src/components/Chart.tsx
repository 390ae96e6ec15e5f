import { useEffect, useId, useRef } from "react";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { chartNumber, formatDate, formatDecimal, formatMonth } from "../lib/format";

export interface ChartSeries {
  label: string;
  /** Exact decimal strings (null: no value); converted to numbers for drawing only. */
  values: (string | null)[];
}

const PALETTE: Record<string, string> = {
  ai_tokens: "#2563eb",
  compute: "#d97706",
  storage: "#059669",
  bandwidth: "#7c3aed",
  data_ops: "#db2777",
};
const FALLBACK = ["#0891b2", "#65a30d", "#dc2626", "#4b5563", "#9333ea"];

export function seriesColor(label: string, index: number): string {
  return PALETTE[label] ?? FALLBACK[index % FALLBACK.length]!;
}

function isoOf(kind: "day" | "month", seconds: number): string {
  return new Date(seconds * 1000).toISOString().slice(0, kind === "day" ? 10 : 7);
}

function labelOf(kind: "day" | "month", v: string): string {
  return kind === "day" ? formatDate(v) : formatMonth(v);
}

/**
 * Stacked bars over days or months, drawn with uPlot. The figure carries a text summary for
 * screen readers and the exact figures in a table beneath.
 */
export function StackedBarChart({
  title,
  x,
  xKind,
  series,
  unit = "credits",
}: {
  title: string;
  /** Day ("2026-11-24") or month ("2026-11") labels, in order. */
  x: string[];
  xKind: "day" | "month";
  series: ChartSeries[];
  unit?: string;
}) {
  const el = useRef<HTMLDivElement>(null);
  const captionId = useId();
  const points = series.reduce((n, s) => n + s.values.filter((v) => v !== null).length, 0);
  const label = (v: string) => labelOf(xKind, v);

  useEffect(() => {
    const host = el.current;
    if (!host || x.length === 0 || series.length === 0) return;
    const xs = x.map(
      (v) => Date.parse(xKind === "day" ? `${v}T00:00:00Z` : `${v}-01T00:00:00Z`) / 1000,
    );
    const raw = series.map((s) => s.values.map((v) => (v === null ? 0 : chartNumber(v))));
    // Stack: series i is drawn at the sum of series 0..i; the tallest is drawn first so each
    // lower stack paints over it.
    const stacked = raw.map((_, i) =>
      xs.map((__, j) => {
        const top = raw.slice(0, i + 1).reduce((a, r) => a + (r[j] ?? 0), 0);
        // Nothing to stack: no bar rather than a hairline at zero.
        return top === 0 ? null : top;
      }),
    );
    const order = series.map((_, i) => i).reverse();
    const numberFormat = new Intl.NumberFormat(undefined, {
      notation: "compact",
      maximumFractionDigits: 2,
    });
    const width = () => Math.max(280, host.clientWidth);
    const opts: uPlot.Options = {
      width: width(),
      height: 260,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
      scales: {
        // Half a bar's step on each side so that the first and last bars are whole.
        x: {
          time: true,
          range: (_u, min, max) => {
            const half = (xKind === "day" ? 86_400 : 31 * 86_400) / 2;
            return [min - half, max + half];
          },
        },
        // Bars start at zero.
        y: { range: (_u, _min, max) => [0, max > 0 ? max * 1.08 : 1] },
      },
      legend: { live: true },
      cursor: { points: { show: false }, drag: { x: false, y: false } },
      axes: [
        {
          values: (_u, splits) => splits.map((s) => labelOf(xKind, isoOf(xKind, s))),
          space: xKind === "day" ? 80 : 60,
        },
        { values: (_u, splits) => splits.map((v) => numberFormat.format(v)), size: 56 },
      ],
      series: [
        {
          label: xKind === "day" ? "Day" : "Month",
          value: (_u, v) => (v == null ? "—" : labelOf(xKind, isoOf(xKind, v))),
        },
        ...order.map((i) => {
          const color = seriesColor(series[i]!.label, i);
          return {
            label: series[i]!.label,
            stroke: color,
            fill: `${color}cc`,
            width: 1,
            points: { show: false },
            paths: uPlot.paths.bars!({ size: [0.7, 48], gap: 1 }),
            value: (_u: uPlot, _v: number | null, _si: number, idx: number | null) => {
              const exact = idx == null ? null : series[i]!.values[idx];
              return exact == null ? "—" : formatDecimal(exact, { maxFraction: 6 });
            },
          } satisfies uPlot.Series;
        }),
      ],
    };
    const data: uPlot.AlignedData = [xs, ...order.map((i) => stacked[i]!)];
    const plot = new uPlot(opts, data, host);
    const resize = new ResizeObserver(() => plot.setSize({ width: width(), height: 260 }));
    resize.observe(host);
    return () => {
      resize.disconnect();
      plot.destroy();
    };
  }, [x, xKind, series]);

  const hasData = x.map((_, j) => series.some((s) => s.values[j] !== null));
  const summary =
    points === 0
      ? `${title}: no data.`
      : `${title}: ${series.length} series over ${x.length} ${xKind === "day" ? "days" : "months"}; the exact figures are in the table below.`;

  return (
    <figure
      className="chart"
      aria-describedby={captionId}
      data-points={points}
      data-series={series.length}
    >
      <figcaption id={captionId}>{title}</figcaption>
      <div ref={el} className="chart-canvas" role="img" aria-label={summary} />
      <details className="chart-data">
        <summary>Show the figures</summary>
        <div className="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">{xKind === "day" ? "Day" : "Month"}</th>
                {series.map((s) => (
                  <th scope="col" key={s.label} className="num-col">
                    {s.label} ({unit})
                  </th>
                ))}
              </tr>
            </thead>
            <tbody>
              {x.map((v, j) =>
                !hasData[j] ? null : (
                  <tr key={v}>
                    <th scope="row">{label(v)}</th>
                    {series.map((s) => (
                      <td key={s.label} className="num-col">
                        {s.values[j] ? formatDecimal(s.values[j]!) : "—"}
                      </td>
                    ))}
                  </tr>
                ),
              )}
            </tbody>
          </table>
        </div>
      </details>
    </figure>
  );
}
