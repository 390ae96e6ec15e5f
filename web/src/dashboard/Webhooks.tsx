import { type FormEvent, useState } from "react";
import {
  describeError,
  Empty,
  ErrorState,
  Field,
  Loading,
  Notice,
  Section,
  StatusBadge,
  TableWrap,
} from "../components/ui";
import { api, type Page, type WebhookDelivery, type WebhookEndpoint } from "../lib/api";
import { formatDateTime } from "../lib/format";
import { useLoad } from "../lib/hooks";

const EVENT_TYPES = [
  "balance.low",
  "balance.depleted",
  "balance.recovered",
  "purchase.completed",
  "purchase.failed",
  "purchase.refunded",
  "auto_topup.succeeded",
  "auto_topup.failed",
  "auto_topup.action_required",
];

export function Webhooks({ orgId }: { orgId: string }) {
  const endpoints = useLoad(
    (signal) =>
      api.get<Page<WebhookEndpoint>>(
        "/v1/webhook-endpoints",
        { org_id: orgId, limit: 100 },
        signal,
      ),
    [orgId],
  );
  const [open, setOpen] = useState<string | null>(null);
  const [secret, setSecret] = useState<{ id: string; secret: string } | null>(null);
  const [error, setError] = useState<string | null>(null);

  async function remove(e: WebhookEndpoint) {
    if (!window.confirm(`Delete the webhook endpoint ${e.url}?`)) return;
    try {
      await api.delete(`/v1/webhook-endpoints/${encodeURIComponent(e.id)}`);
      endpoints.reload();
    } catch (err) {
      setError(describeError(err as Error));
    }
  }

  return (
    <>
      <CreateEndpoint
        orgId={orgId}
        onCreated={(created) => {
          setSecret(created);
          endpoints.reload();
        }}
      />
      {secret ? (
        <Notice kind="success">
          Endpoint created. Its signing secret is shown only now:{" "}
          <code className="secret">{secret.secret}</code>
        </Notice>
      ) : null}
      <Section title="Webhook endpoints">
        {error ? <Notice kind="error">{error}</Notice> : null}
        {endpoints.state === "loading" ? <Loading /> : null}
        {endpoints.state === "error" ? (
          <ErrorState error={endpoints.error} retry={endpoints.reload} />
        ) : null}
        {endpoints.state === "ready" && endpoints.data.data.length === 0 ? (
          <Empty>No webhook endpoints for this organisation.</Empty>
        ) : null}
        {endpoints.state === "ready" && endpoints.data.data.length > 0 ? (
          <ul className="endpoints">
            {endpoints.data.data.map((e) => (
              <li key={e.id} className="endpoint">
                <div className="endpoint-head">
                  <div>
                    <strong className="mono break">{e.url}</strong>
                    <div className="muted small">
                      {e.events.length === 0 ? "all events" : e.events.join(", ")} · created{" "}
                      {formatDateTime(e.created_at)}
                    </div>
                  </div>
                  <div className="row-actions">
                    {e.status ? <StatusBadge status={e.status} /> : null}
                    <button
                      type="button"
                      className="secondary small"
                      aria-expanded={open === e.id}
                      onClick={() => setOpen(open === e.id ? null : e.id)}
                    >
                      {open === e.id ? "Hide deliveries" : "Deliveries"}
                    </button>
                    <button type="button" className="danger small" onClick={() => void remove(e)}>
                      Delete
                    </button>
                  </div>
                </div>
                {e.disabled_reason ? <p className="muted">{e.disabled_reason}</p> : null}
                {open === e.id ? <Deliveries endpointId={e.id} /> : null}
              </li>
            ))}
          </ul>
        ) : null}
      </Section>
    </>
  );
}

function CreateEndpoint({
  orgId,
  onCreated,
}: {
  orgId: string;
  onCreated: (e: { id: string; secret: string }) => void;
}) {
  const [url, setUrl] = useState("");
  const [events, setEvents] = useState<string[]>([]);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);

  async function submit(e: FormEvent) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const created = await api.post<WebhookEndpoint & { secret: string }>(
        "/v1/webhook-endpoints",
        { url: url.trim(), events, org_id: orgId },
      );
      setUrl("");
      setEvents([]);
      onCreated({ id: created.id, secret: created.secret });
    } catch (err) {
      setError(describeError(err as Error));
    } finally {
      setBusy(false);
    }
  }

  return (
    <Section title="Add a webhook endpoint">
      <form className="settings-form" onSubmit={submit} aria-label="Add a webhook endpoint">
        <Field label="URL" error={error}>
          {(p) => (
            <input
              {...p}
              type="url"
              required
              placeholder="https://example.com/hooks/tally"
              value={url}
              onChange={(e) => setUrl(e.target.value)}
            />
          )}
        </Field>
        <fieldset className="events">
          <legend>Events (none checked: every event)</legend>
          {EVENT_TYPES.map((t) => (
            <label key={t} className="check">
              <input
                type="checkbox"
                checked={events.includes(t)}
                onChange={(e) =>
                  setEvents(e.target.checked ? [...events, t] : events.filter((x) => x !== t))
                }
              />
              {t}
            </label>
          ))}
        </fieldset>
        <button type="submit" disabled={busy}>
          {busy ? "Adding…" : "Add endpoint"}
        </button>
      </form>
    </Section>
  );
}

function Deliveries({ endpointId }: { endpointId: string }) {
  const deliveries = useLoad(
    (signal) =>
      api.get<Page<WebhookDelivery>>(
        `/v1/webhook-endpoints/${encodeURIComponent(endpointId)}/deliveries`,
        { limit: 50 },
        signal,
      ),
    [endpointId],
  );
  if (deliveries.state === "loading") return <Loading label="Loading deliveries…" />;
  if (deliveries.state === "error") {
    return <ErrorState error={deliveries.error} retry={deliveries.reload} />;
  }
  if (deliveries.data.data.length === 0) return <Empty>No deliveries yet.</Empty>;
  return (
    <TableWrap label="Deliveries">
      <table>
        <thead>
          <tr>
            <th scope="col">Time (UTC)</th>
            <th scope="col">Event</th>
            <th scope="col">Attempt</th>
            <th scope="col">Result</th>
            <th scope="col" className="num-col">
              Duration
            </th>
          </tr>
        </thead>
        <tbody>
          {deliveries.data.data.map((d) => (
            <tr key={d.id}>
              <td>{formatDateTime(d.created_at)}</td>
              <td>
                {d.event_type}
                <div className="muted small mono">{d.event_id}</div>
              </td>
              <td>{d.attempt}</td>
              <td>
                <StatusBadge status={d.succeeded ? "succeeded" : "failed"} /> {d.status_code ?? ""}{" "}
                {d.error ? <span className="muted">{d.error}</span> : null}
              </td>
              <td className="num-col">{d.duration_ms} ms</td>
            </tr>
          ))}
        </tbody>
      </table>
    </TableWrap>
  );
}
