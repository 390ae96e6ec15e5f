import { type FormEvent, useEffect, useState } from "react";
import {
  Amount,
  describeError,
  ErrorState,
  Field,
  Loading,
  Notice,
  Section,
  StatusBadge,
  Unavailable,
} from "../components/ui";
import {
  type Alerts,
  type AutoTopup,
  api,
  type CreditPackage,
  FEATURES,
  orgPath,
  type Page,
} from "../lib/api";
import { formatDateTime, isDecimal } from "../lib/format";
import { useLoad } from "../lib/hooks";
import { useFeature } from "../lib/session";

const CREDITS = /^\d{1,26}(\.\d{1,12})?$/;
const MONEY = /^\d{1,15}(\.\d{1,4})?$/;

export function AutoTopupSettings({
  orgId,
  canEdit,
  onSaved,
}: {
  orgId: string;
  canEdit: boolean;
  /** After a save (the balance view shows the auto-topup status). */
  onSaved?: () => void;
}) {
  const available = useFeature(FEATURES.autoTopup);
  const settings = useLoad(
    async (signal) => {
      if (!available) return null;
      const [current, packages] = await Promise.all([
        api.get<AutoTopup>(orgPath(orgId, "/auto-topup"), {}, signal),
        api.get<Page<CreditPackage>>("/v1/credit-packages", { active: true, limit: 100 }, signal),
      ]);
      return { current, packages: packages.data };
    },
    [orgId, available],
  );
  const [form, setForm] = useState({
    enabled: false,
    threshold: "",
    package_id: "",
    monthly_limit: "",
    max_failures: "1",
  });
  const [saving, setSaving] = useState(false);
  const [result, setResult] = useState<{ ok: boolean; text: string } | null>(null);

  useEffect(() => {
    if (settings.state !== "ready" || !settings.data) return;
    const c = settings.data.current;
    setForm({
      enabled: c.enabled,
      threshold: c.threshold ?? "",
      package_id: c.package_id ?? settings.data.packages[0]?.id ?? "",
      monthly_limit: c.monthly_limit ?? "",
      max_failures: String(c.max_failures ?? 1),
    });
  }, [settings.state, settings.data]);

  if (!available) {
    return (
      <Section title="Auto-topup">
        <Unavailable what="Auto-topup" />
      </Section>
    );
  }

  async function save(e: FormEvent) {
    e.preventDefault();
    setResult(null);
    if ((form.enabled || form.threshold !== "") && !CREDITS.test(form.threshold)) {
      setResult({ ok: false, text: "The threshold must be a non-negative number of credits." });
      return;
    }
    if (form.monthly_limit && !MONEY.test(form.monthly_limit)) {
      setResult({ ok: false, text: "The monthly limit must be an amount of money, like 500.00." });
      return;
    }
    setSaving(true);
    try {
      await api.put(orgPath(orgId, "/auto-topup"), {
        enabled: form.enabled,
        ...(form.threshold ? { threshold: form.threshold } : {}),
        ...(form.package_id ? { package_id: form.package_id } : {}),
        monthly_limit: form.monthly_limit || null,
        max_failures: Number.parseInt(form.max_failures, 10) || 1,
      });
      setResult({ ok: true, text: "Auto-topup settings saved." });
      settings.reload();
      onSaved?.();
    } catch (error) {
      setResult({ ok: false, text: describeError(error as Error) });
    } finally {
      setSaving(false);
    }
  }

  return (
    <Section title="Auto-topup">
      {settings.state === "loading" ? <Loading /> : null}
      {settings.state === "error" ? (
        <ErrorState error={settings.error} retry={settings.reload} />
      ) : null}
      {settings.state === "ready" && settings.data ? (
        <>
          <dl className="facts">
            <div>
              <dt>Status</dt>
              <dd>
                <StatusBadge
                  status={settings.data.current.enabled ? settings.data.current.status : "off"}
                />
                {settings.data.current.disabled_reason ? (
                  <span className="muted"> {settings.data.current.disabled_reason}</span>
                ) : null}
              </dd>
            </div>
            <div>
              <dt>Payment method</dt>
              <dd>
                {settings.data.current.payment_method
                  ? `${settings.data.current.payment_method.brand} ···· ${settings.data.current.payment_method.last4}`
                  : "None saved — buy a package once to save a card."}
              </dd>
            </div>
            {settings.data.current.spent_this_month !== undefined ? (
              <div>
                <dt>Spent this month</dt>
                <dd>
                  {isDecimal(settings.data.current.spent_this_month) ? (
                    <Amount value={settings.data.current.spent_this_month} />
                  ) : (
                    settings.data.current.spent_this_month
                  )}
                </dd>
              </div>
            ) : null}
          </dl>
          {canEdit ? (
            <form className="settings-form" onSubmit={save} aria-label="Auto-topup settings">
              <div className="check">
                <input
                  id={`topup-enabled-${orgId}`}
                  type="checkbox"
                  checked={form.enabled}
                  onChange={(e) => setForm({ ...form, enabled: e.target.checked })}
                />
                <label htmlFor={`topup-enabled-${orgId}`}>Top up automatically</label>
              </div>
              <Field label="When the balance falls to (credits)">
                {(p) => (
                  <input
                    {...p}
                    inputMode="decimal"
                    value={form.threshold}
                    onChange={(e) => setForm({ ...form, threshold: e.target.value })}
                  />
                )}
              </Field>
              <Field label="Buy this package">
                {(p) => (
                  <select
                    {...p}
                    value={form.package_id}
                    onChange={(e) => setForm({ ...form, package_id: e.target.value })}
                  >
                    {settings.data!.packages.map((pkg) => (
                      <option key={pkg.id} value={pkg.id}>
                        {pkg.name} — {pkg.total_credits} credits for {pkg.price} {pkg.currency}
                      </option>
                    ))}
                  </select>
                )}
              </Field>
              <Field label="Monthly spending limit (optional)" hint="Money per calendar month.">
                {(p) => (
                  <input
                    {...p}
                    inputMode="decimal"
                    value={form.monthly_limit}
                    onChange={(e) => setForm({ ...form, monthly_limit: e.target.value })}
                  />
                )}
              </Field>
              <Field label="Disable after this many failed charges">
                {(p) => (
                  <input
                    {...p}
                    type="number"
                    min={1}
                    max={10}
                    value={form.max_failures}
                    onChange={(e) => setForm({ ...form, max_failures: e.target.value })}
                  />
                )}
              </Field>
              <button type="submit" disabled={saving}>
                {saving ? "Saving…" : "Save auto-topup"}
              </button>
              {result ? (
                <Notice kind={result.ok ? "success" : "error"}>{result.text}</Notice>
              ) : null}
            </form>
          ) : (
            <p className="muted">
              {settings.data.current.enabled ? (
                <>
                  Buys a package when the balance falls to{" "}
                  <Amount value={settings.data.current.threshold} /> credits.
                </>
              ) : (
                "Auto-topup is off."
              )}
            </p>
          )}
        </>
      ) : null}
    </Section>
  );
}

export function AlertSettings({ orgId, canEdit }: { orgId: string; canEdit: boolean }) {
  const available = useFeature(FEATURES.alerts);
  const alerts = useLoad(
    (signal) =>
      available ? api.get<Alerts>(orgPath(orgId, "/alerts"), {}, signal) : Promise.resolve(null),
    [orgId, available],
  );
  const [thresholds, setThresholds] = useState("");
  const [emails, setEmails] = useState("");
  const [saving, setSaving] = useState(false);
  const [result, setResult] = useState<{ ok: boolean; text: string } | null>(null);

  useEffect(() => {
    if (alerts.state !== "ready" || !alerts.data) return;
    setThresholds(alerts.data.thresholds.join(", "));
    setEmails((alerts.data.emails ?? []).join(", "));
  }, [alerts.state, alerts.data]);

  if (!available) {
    return (
      <Section title="Low-balance alerts">
        <Unavailable what="Alerts" />
      </Section>
    );
  }

  async function save(e: FormEvent) {
    e.preventDefault();
    setResult(null);
    const list = thresholds
      .split(/[,\s]+/)
      .map((t) => t.trim())
      .filter(Boolean);
    if (list.some((t) => !CREDITS.test(t))) {
      setResult({ ok: false, text: "Thresholds are credit amounts separated by commas." });
      return;
    }
    const mails = emails
      .split(/[,\s]+/)
      .map((m) => m.trim())
      .filter(Boolean);
    setSaving(true);
    try {
      await api.put(orgPath(orgId, "/alerts"), { thresholds: list, emails: mails });
      setResult({ ok: true, text: "Alert settings saved." });
      alerts.reload();
    } catch (error) {
      setResult({ ok: false, text: describeError(error as Error) });
    } finally {
      setSaving(false);
    }
  }

  return (
    <Section title="Low-balance alerts">
      {alerts.state === "loading" ? <Loading /> : null}
      {alerts.state === "error" ? <ErrorState error={alerts.error} retry={alerts.reload} /> : null}
      {alerts.state === "ready" && alerts.data ? (
        <>
          {alerts.data.state && alerts.data.state.length > 0 ? (
            <ul className="alert-states">
              {alerts.data.state.map((s) => (
                <li key={s.threshold}>
                  Below <Amount value={s.threshold} /> credits:{" "}
                  <StatusBadge status={s.in_alert ? "in alert" : "ok"} />
                  {s.changed_at ? (
                    <span className="muted"> since {formatDateTime(s.changed_at)}</span>
                  ) : null}
                </li>
              ))}
            </ul>
          ) : null}
          {canEdit ? (
            <form className="settings-form" onSubmit={save} aria-label="Alert settings">
              <Field
                label="Thresholds (credits)"
                hint="Alert when the balance falls below each, e.g. 500, 100."
              >
                {(p) => (
                  <input
                    {...p}
                    value={thresholds}
                    onChange={(e) => setThresholds(e.target.value)}
                  />
                )}
              </Field>
              <Field label="Email alerts to" hint="Addresses separated by commas (optional).">
                {(p) => (
                  <input
                    {...p}
                    type="text"
                    inputMode="email"
                    value={emails}
                    onChange={(e) => setEmails(e.target.value)}
                  />
                )}
              </Field>
              <button type="submit" disabled={saving}>
                {saving ? "Saving…" : "Save alerts"}
              </button>
              {result ? (
                <Notice kind={result.ok ? "success" : "error"}>{result.text}</Notice>
              ) : null}
            </form>
          ) : (
            <p className="muted">
              {alerts.data.thresholds.length > 0
                ? `Alerts below ${alerts.data.thresholds.join(", ")} credits.`
                : "No alert thresholds set."}
            </p>
          )}
        </>
      ) : null}
    </Section>
  );
}
