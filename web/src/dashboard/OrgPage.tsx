import { type FormEvent, useState } from "react";
import {
  Amount,
  describeError,
  Empty,
  ErrorState,
  Field,
  Loading,
  Money,
  Notice,
  Section,
  StatusBadge,
  shortId,
  TableWrap,
  Unavailable,
} from "../components/ui";
import {
  api,
  type Balance,
  type CreditBlock,
  FEATURES,
  type LedgerEntry,
  type Organization,
  orgPath,
  type Page,
  type Purchase,
} from "../lib/api";
import { formatDateTime, formatDecimal } from "../lib/format";
import { useLoad } from "../lib/hooks";
import { Link, useTitle } from "../lib/router";
import { useCurrentSession, useFeature } from "../lib/session";
import { BalanceFigures, LowBalanceBanner } from "../shared/Balance";
import { AlertSettings, AutoTopupSettings } from "../shared/Settings";
import { Transactions } from "../shared/Transactions";
import { UsageSection } from "../shared/Usage";
import { Webhooks } from "./Webhooks";

const TABS = [
  ["overview", "Overview"],
  ["transactions", "Transactions"],
  ["usage", "Usage"],
  ["purchases", "Purchases"],
  ["settings", "Auto-topup & alerts"],
  ["webhooks", "Webhooks"],
] as const;

export function OrgPage({ orgId, tab }: { orgId: string; tab: string }) {
  const session = useCurrentSession();
  const [refreshKey, setRefreshKey] = useState(0);
  const org = useLoad((signal) => api.get<Organization>(orgPath(orgId), {}, signal), [orgId]);
  useTitle(org.state === "ready" ? org.data.name : "Organisation");
  const base = `/dashboard/orgs/${encodeURIComponent(orgId)}`;
  const changed = () => setRefreshKey((k) => k + 1);

  if (org.state === "loading") return <Loading label="Loading organisation…" />;
  if (org.state === "error") return <ErrorState error={org.error} retry={org.reload} />;
  const o = org.data;
  return (
    <>
      <p className="crumbs">
        <Link href="/dashboard">Organisations</Link> /
      </p>
      <h1>{o.name}</h1>
      <p className="muted">
        <span className="mono">{o.id}</span>
        {o.external_id ? <> · external id {o.external_id}</> : null} · plan {o.plan}
      </p>
      <nav className="tabs" aria-label="Organisation">
        {TABS.map(([id, label]) => (
          <Link
            key={id}
            href={id === "overview" ? base : `${base}/${id}`}
            aria-current={tab === id ? "page" : undefined}
          >
            {label}
          </Link>
        ))}
      </nav>
      {tab === "overview" ? (
        <>
          <BalanceSection orgId={orgId} refreshKey={refreshKey} />
          <AdjustmentForm orgId={orgId} onDone={changed} />
          <Blocks orgId={orgId} refreshKey={refreshKey} />
        </>
      ) : null}
      {tab === "transactions" ? <Transactions orgId={orgId} refreshKey={refreshKey} /> : null}
      {tab === "usage" ? (
        <UsageSection orgId={orgId} today={session.server_time.slice(0, 10)} />
      ) : null}
      {tab === "purchases" ? <Purchases orgId={orgId} /> : null}
      {tab === "settings" ? (
        <div className="two-col">
          <AutoTopupSettings orgId={orgId} canEdit />
          <AlertSettings orgId={orgId} canEdit />
        </div>
      ) : null}
      {tab === "webhooks" ? <Webhooks orgId={orgId} /> : null}
      {!TABS.some(([id]) => id === tab) ? <Notice kind="warning">No such tab.</Notice> : null}
    </>
  );
}

function BalanceSection({ orgId, refreshKey }: { orgId: string; refreshKey: number }) {
  const balance = useLoad(
    (signal) => api.get<Balance>(orgPath(orgId, "/balance"), {}, signal),
    [orgId, refreshKey],
  );
  return (
    <Section title="Balance">
      {balance.state === "loading" ? <Loading /> : null}
      {balance.state === "error" ? (
        <ErrorState error={balance.error} retry={balance.reload} />
      ) : null}
      {balance.state === "ready" ? (
        <>
          <LowBalanceBanner balance={balance.data} />
          <BalanceFigures balance={balance.data} />
        </>
      ) : null}
    </Section>
  );
}

const SIGNED = /^[+-]\d{1,26}(\.\d{1,12})?$/;

function AdjustmentForm({ orgId, onDone }: { orgId: string; onDone: () => void }) {
  const [amount, setAmount] = useState("");
  const [reason, setReason] = useState("");
  const [category, setCategory] = useState<"correction" | "promotional">("correction");
  const [expires, setExpires] = useState("");
  const [busy, setBusy] = useState(false);
  const [errors, setErrors] = useState<{ amount?: string; reason?: string }>({});
  const [result, setResult] = useState<{ ok: boolean; text: string } | null>(null);

  async function submit(e: FormEvent) {
    e.preventDefault();
    setResult(null);
    const signed = /^\d/.test(amount.trim()) ? `+${amount.trim()}` : amount.trim();
    const problems: typeof errors = {};
    if (!SIGNED.test(signed) || /^[+-]0*(\.0*)?$/.test(signed)) {
      problems.amount = "Enter a non-zero amount such as +100 or -20.";
    }
    if (reason.trim() === "") problems.reason = "A reason is required.";
    setErrors(problems);
    if (Object.keys(problems).length > 0) return;
    setBusy(true);
    try {
      const entry = await api.post<LedgerEntry>(orgPath(orgId, "/adjustments"), {
        amount: signed,
        reason: reason.trim(),
        category,
        ...(expires && signed.startsWith("+") ? { expires_at: `${expires}T00:00:00Z` } : {}),
      });
      setResult({
        ok: true,
        text: `Adjusted by ${formatDecimal(entry.amount, { signed: true })} credits; balance now ${formatDecimal(entry.balance_after)}.`,
      });
      setAmount("");
      setReason("");
      setExpires("");
      onDone();
    } catch (err) {
      setResult({ ok: false, text: describeError(err as Error) });
    } finally {
      setBusy(false);
    }
  }

  return (
    <Section title="Adjust credits">
      <form
        className="settings-form inline"
        onSubmit={submit}
        aria-label="Adjust credits"
        noValidate
      >
        <Field label="Amount" hint="+100 adds credits, -20 removes them." error={errors.amount}>
          {(p) => (
            <input
              {...p}
              inputMode="decimal"
              required
              value={amount}
              onChange={(e) => setAmount(e.target.value)}
            />
          )}
        </Field>
        <Field label="Reason (required)" error={errors.reason}>
          {(p) => (
            <input
              {...p}
              required
              maxLength={500}
              value={reason}
              onChange={(e) => setReason(e.target.value)}
            />
          )}
        </Field>
        <Field label="Category">
          {(p) => (
            <select
              {...p}
              value={category}
              onChange={(e) => setCategory(e.target.value as "correction" | "promotional")}
            >
              <option value="correction">Correction</option>
              <option value="promotional">Promotional</option>
            </select>
          )}
        </Field>
        <Field label="Expires (optional, added credits)">
          {(p) => (
            <input
              {...p}
              type="date"
              value={expires}
              onChange={(e) => setExpires(e.target.value)}
            />
          )}
        </Field>
        <div className="filter-actions">
          <button type="submit" disabled={busy}>
            {busy ? "Applying…" : "Apply adjustment"}
          </button>
        </div>
      </form>
      {result ? <Notice kind={result.ok ? "success" : "error"}>{result.text}</Notice> : null}
    </Section>
  );
}

function Blocks({ orgId, refreshKey }: { orgId: string; refreshKey: number }) {
  const [status, setStatus] = useState("active");
  const blocks = useLoad(
    (signal) =>
      api.get<Page<CreditBlock>>(
        orgPath(orgId, "/credit-blocks"),
        { status: status || undefined, limit: 100 },
        signal,
      ),
    [orgId, status, refreshKey],
  );
  return (
    <Section
      title="Credit blocks"
      actions={
        <Field label="Status">
          {(p) => (
            <select {...p} value={status} onChange={(e) => setStatus(e.target.value)}>
              <option value="">All</option>
              <option value="active">Active</option>
              <option value="pending_payment">Pending payment</option>
              <option value="depleted">Depleted</option>
              <option value="expired">Expired</option>
              <option value="voided">Voided</option>
            </select>
          )}
        </Field>
      }
    >
      {blocks.state === "loading" ? <Loading /> : null}
      {blocks.state === "error" ? <ErrorState error={blocks.error} retry={blocks.reload} /> : null}
      {blocks.state === "ready" && blocks.data.data.length === 0 ? (
        <Empty>No {status ? status.replace("_", " ") : ""} credit blocks.</Empty>
      ) : null}
      {blocks.state === "ready" && blocks.data.data.length > 0 ? (
        <TableWrap label="Credit blocks">
          <table>
            <thead>
              <tr>
                <th scope="col">Source</th>
                <th scope="col" className="num-col">
                  Remaining
                </th>
                <th scope="col" className="num-col">
                  Original
                </th>
                <th scope="col" className="num-col">
                  Unit cost
                </th>
                <th scope="col">Priority</th>
                <th scope="col">Expires</th>
                <th scope="col">Status</th>
              </tr>
            </thead>
            <tbody>
              {blocks.data.data.map((b) => (
                <tr key={b.id}>
                  <th scope="row">
                    {b.source}
                    <div className="muted small mono">{shortId(b.id)}</div>
                  </th>
                  <td className="num-col">
                    <Amount value={b.remaining} />
                  </td>
                  <td className="num-col">
                    <Amount value={b.original} />
                  </td>
                  <td className="num-col">
                    <Amount value={b.unit_cost} />
                  </td>
                  <td>{b.priority}</td>
                  <td>{b.expires_at ? formatDateTime(b.expires_at) : "never"}</td>
                  <td>
                    <StatusBadge status={b.status} />
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </TableWrap>
      ) : null}
    </Section>
  );
}

function Purchases({ orgId }: { orgId: string }) {
  const canRefund = useFeature(FEATURES.refund);
  const purchases = useLoad(
    (signal) => api.get<Page<Purchase>>(orgPath(orgId, "/purchases"), { limit: 100 }, signal),
    [orgId],
  );
  const [busy, setBusy] = useState<string | null>(null);
  const [result, setResult] = useState<{ ok: boolean; text: string } | null>(null);

  async function refund(p: Purchase) {
    const reason = window.prompt(
      `Refund the unused credits of purchase ${p.id}? Give a reason (optional).`,
      "",
    );
    if (reason === null) return;
    setBusy(p.id);
    setResult(null);
    try {
      const r = await api.post<{ refund_id: string; amount: string; credits_removed: string }>(
        orgPath(orgId, `/purchases/${encodeURIComponent(p.id)}/refund`),
        reason.trim() ? { reason: reason.trim() } : {},
      );
      setResult({
        ok: true,
        text: `Refunded ${r.amount} ${p.currency}; ${formatDecimal(r.credits_removed)} credits removed.`,
      });
      purchases.reload();
    } catch (err) {
      setResult({ ok: false, text: describeError(err as Error) });
    } finally {
      setBusy(null);
    }
  }

  return (
    <Section title="Purchases">
      {!canRefund ? <Unavailable what="Refunds" /> : null}
      {result ? <Notice kind={result.ok ? "success" : "error"}>{result.text}</Notice> : null}
      {purchases.state === "loading" ? <Loading /> : null}
      {purchases.state === "error" ? (
        <ErrorState error={purchases.error} retry={purchases.reload} />
      ) : null}
      {purchases.state === "ready" && purchases.data.data.length === 0 ? (
        <Empty>No purchases yet.</Empty>
      ) : null}
      {purchases.state === "ready" && purchases.data.data.length > 0 ? (
        <TableWrap label="Purchases">
          <table>
            <thead>
              <tr>
                <th scope="col">Date (UTC)</th>
                <th scope="col">Package</th>
                <th scope="col" className="num-col">
                  Credits
                </th>
                <th scope="col" className="num-col">
                  Bonus
                </th>
                <th scope="col" className="num-col">
                  Amount
                </th>
                <th scope="col">Status</th>
                <th scope="col">By</th>
                <th scope="col">
                  <span className="visually-hidden">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {purchases.data.data.map((p) => (
                <tr key={p.id}>
                  <td>{formatDateTime(p.created_at)}</td>
                  <td>
                    {p.package_name ?? p.package_id}
                    {p.source === "auto_topup" ? (
                      <span className="muted"> (auto-topup)</span>
                    ) : null}
                  </td>
                  <td className="num-col">
                    <Amount value={p.credits} />
                  </td>
                  <td className="num-col">
                    <Amount value={p.bonus_credits} />
                  </td>
                  <td className="num-col">
                    <Money amount={p.amount} currency={p.currency} />
                  </td>
                  <td>
                    <StatusBadge status={p.status} />
                  </td>
                  <td>{p.user_id ?? "—"}</td>
                  <td>
                    {canRefund && p.status === "paid" ? (
                      <button
                        type="button"
                        className="secondary small"
                        disabled={busy !== null}
                        onClick={() => void refund(p)}
                        aria-label={`Refund purchase of ${p.package_name ?? p.package_id} on ${formatDateTime(p.created_at)}`}
                      >
                        {busy === p.id ? "Refunding…" : "Refund"}
                      </button>
                    ) : null}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </TableWrap>
      ) : null}
    </Section>
  );
}
