import { type ReactElement, type ReactNode, useId } from "react";
import { ApiError } from "../lib/api";
import { formatDecimal, formatMoney } from "../lib/format";

export function Amount({
  value,
  signed,
  maxFraction,
  unit,
}: {
  value: string;
  signed?: boolean;
  maxFraction?: number;
  unit?: string;
}) {
  const negative = value.trim().startsWith("-") && !/^-0*(\.0*)?$/.test(value.trim());
  return (
    <span className={`num${negative ? " negative" : ""}`} data-value={value}>
      {formatDecimal(value, { signed, maxFraction })}
      {unit ? ` ${unit}` : null}
    </span>
  );
}

export function Money({ amount, currency }: { amount: string; currency: string }) {
  return (
    <span className="num" data-value={amount}>
      {formatMoney(amount, currency)}
    </span>
  );
}

export function Loading({ label = "Loading…" }: { label?: string }) {
  return (
    <p className="loading" role="status" aria-live="polite">
      <span className="spinner" aria-hidden="true" />
      {label}
    </p>
  );
}

export function Empty({ children }: { children: ReactNode }) {
  return <p className="empty">{children}</p>;
}

export function ErrorState({ error, retry }: { error: Error; retry?: () => void }) {
  return (
    <div className="notice error" role="alert">
      <p>
        <strong>Something went wrong.</strong> {describeError(error)}
      </p>
      {retry ? (
        <button type="button" className="secondary" onClick={retry}>
          Try again
        </button>
      ) : null}
    </div>
  );
}

export function describeError(error: Error): string {
  if (error instanceof ApiError) {
    if (error.code === "plan_not_eligible") {
      return "This organisation's plan does not include credits billing.";
    }
    const details = error.details
      .map((d) => (d.field ? `${d.field.replace(/^\//, "")}: ${d.message}` : d.message))
      .filter((d) => d !== error.message);
    return details.length > 0 ? `${error.message} (${details.join("; ")})` : error.message;
  }
  return error.message;
}

export function Notice({
  kind = "info",
  children,
  role,
}: {
  kind?: "info" | "success" | "warning" | "error";
  children: ReactNode;
  role?: "status" | "alert";
}) {
  return (
    <div className={`notice ${kind}`} role={role ?? (kind === "error" ? "alert" : "status")}>
      {children}
    </div>
  );
}

export function Unavailable({ what }: { what: string }) {
  return (
    <p className="unavailable">
      {what} {what.endsWith("s") ? "are" : "is"} not available on this server yet.
    </p>
  );
}

export function Section({
  title,
  actions,
  children,
  id,
}: {
  title: string;
  actions?: ReactNode;
  children: ReactNode;
  id?: string;
}) {
  const headingId = useId();
  return (
    <section className="card" aria-labelledby={headingId} id={id}>
      <div className="card-head">
        <h2 id={headingId}>{title}</h2>
        {actions ? <div className="card-actions">{actions}</div> : null}
      </div>
      {children}
    </section>
  );
}

/** A labelled control: the label, a hint and an error are tied to the input by ids. */
export function Field({
  label,
  hint,
  error,
  children,
}: {
  label: string;
  hint?: string;
  error?: string | null;
  children: (props: {
    id: string;
    "aria-describedby"?: string;
    "aria-invalid"?: boolean;
  }) => ReactElement;
}) {
  const id = useId();
  const hintId = hint ? `${id}-hint` : undefined;
  const errorId = error ? `${id}-error` : undefined;
  const describedBy = [hintId, errorId].filter(Boolean).join(" ") || undefined;
  return (
    <div className="field">
      <label htmlFor={id}>{label}</label>
      {children({ id, "aria-describedby": describedBy, "aria-invalid": error ? true : undefined })}
      {hint ? (
        <small id={hintId} className="hint">
          {hint}
        </small>
      ) : null}
      {error ? (
        <small id={errorId} className="field-error">
          {error}
        </small>
      ) : null}
    </div>
  );
}

export function StatusBadge({ status }: { status: string }) {
  const tone =
    {
      paid: "good",
      active: "good",
      idle: "good",
      enabled: "good",
      succeeded: "good",
      pending: "warn",
      in_flight: "warn",
      pending_payment: "warn",
      partially_refunded: "warn",
      failed: "bad",
      low: "bad",
      "in alert": "bad",
      ok: "good",
      disabled: "bad",
      expired: "muted",
      refunded: "muted",
      depleted: "muted",
      voided: "muted",
      off: "muted",
    }[status] ?? "muted";
  return <span className={`badge ${tone}`}>{status.replace(/_/g, " ")}</span>;
}

/** Tables scroll sideways on a phone rather than squeezing. */
export function TableWrap({ label, children }: { label: string; children: ReactNode }) {
  return (
    // biome-ignore lint/a11y/noNoninteractiveTabindex: a scrollable region must be reachable by keyboard
    <section className="table-wrap" aria-label={label} tabIndex={0}>
      {children}
    </section>
  );
}

export function shortId(id: string): string {
  return id.length > 16 ? `${id.slice(0, 8)}…${id.slice(-6)}` : id;
}
