import { Amount, Empty, ErrorState, Loading, Section, TableWrap } from "../components/ui";
import { api, type Page } from "../lib/api";
import { formatDateTime } from "../lib/format";
import { useLoad } from "../lib/hooks";
import { useTitle } from "../lib/router";

interface Catalogue {
  version: number;
  effective_from: string;
  created_at: string;
  models: {
    model: string;
    provider: string;
    input: string;
    cached_input: string;
    cache_write: string;
    output: string;
  }[];
  meters: { meter: string; type: string; unit: string; rate: string; aggregation?: string }[];
}

interface VersionSummary {
  version: number;
  effective_from: string;
  created_at: string;
  models_count: number;
  meters_count: number;
}

export function PricesPage() {
  useTitle("Price catalogue");
  const catalogue = useLoad((signal) => api.get<Catalogue>("/v1/prices", {}, signal), []);
  const versions = useLoad(
    (signal) => api.get<Page<VersionSummary>>("/v1/prices/versions", { limit: 50 }, signal),
    [],
  );
  return (
    <>
      <h1>Price catalogue</h1>
      {catalogue.state === "loading" ? <Loading /> : null}
      {catalogue.state === "error" ? (
        <ErrorState error={catalogue.error} retry={catalogue.reload} />
      ) : null}
      {catalogue.state === "ready" ? (
        <>
          <p className="muted">
            Version {catalogue.data.version}, in effect from{" "}
            {formatDateTime(catalogue.data.effective_from)}. Change it with{" "}
            <code>PUT /v1/prices</code>.
          </p>
          <Section title="AI models (credits per 1M tokens)">
            {catalogue.data.models.length === 0 ? <Empty>No model prices.</Empty> : null}
            {catalogue.data.models.length > 0 ? (
              <TableWrap label="Model prices">
                <table>
                  <thead>
                    <tr>
                      <th scope="col">Model</th>
                      <th scope="col">Provider</th>
                      <th scope="col" className="num-col">
                        Input
                      </th>
                      <th scope="col" className="num-col">
                        Cached input
                      </th>
                      <th scope="col" className="num-col">
                        Cache write
                      </th>
                      <th scope="col" className="num-col">
                        Output
                      </th>
                    </tr>
                  </thead>
                  <tbody>
                    {catalogue.data.models.map((m) => (
                      <tr key={m.model}>
                        <th scope="row" className="mono">
                          {m.model}
                        </th>
                        <td>{m.provider}</td>
                        <td className="num-col">
                          <Amount value={m.input} />
                        </td>
                        <td className="num-col">
                          <Amount value={m.cached_input} />
                        </td>
                        <td className="num-col">
                          <Amount value={m.cache_write} />
                        </td>
                        <td className="num-col">
                          <Amount value={m.output} />
                        </td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              </TableWrap>
            ) : null}
          </Section>
          <Section title="Infrastructure meters (credits per unit)">
            {catalogue.data.meters.length === 0 ? <Empty>No meters.</Empty> : null}
            {catalogue.data.meters.length > 0 ? (
              <TableWrap label="Meter prices">
                <table>
                  <thead>
                    <tr>
                      <th scope="col">Meter</th>
                      <th scope="col">Type</th>
                      <th scope="col">Unit</th>
                      <th scope="col" className="num-col">
                        Rate
                      </th>
                    </tr>
                  </thead>
                  <tbody>
                    {catalogue.data.meters.map((m) => (
                      <tr key={m.meter}>
                        <th scope="row" className="mono">
                          {m.meter}
                        </th>
                        <td>{m.type}</td>
                        <td>
                          {m.unit}
                          {m.aggregation === "time_weighted" ? " (time-weighted)" : ""}
                        </td>
                        <td className="num-col">
                          <Amount value={m.rate} />
                        </td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              </TableWrap>
            ) : null}
          </Section>
        </>
      ) : null}
      <Section title="Versions">
        {versions.state === "loading" ? <Loading /> : null}
        {versions.state === "error" ? (
          <ErrorState error={versions.error} retry={versions.reload} />
        ) : null}
        {versions.state === "ready" ? (
          <TableWrap label="Catalogue versions">
            <table>
              <thead>
                <tr>
                  <th scope="col">Version</th>
                  <th scope="col">Effective from</th>
                  <th scope="col">Created</th>
                  <th scope="col" className="num-col">
                    Models
                  </th>
                  <th scope="col" className="num-col">
                    Meters
                  </th>
                </tr>
              </thead>
              <tbody>
                {versions.data.data.map((v) => (
                  <tr key={v.version}>
                    <th scope="row">{v.version}</th>
                    <td>{formatDateTime(v.effective_from)}</td>
                    <td>{formatDateTime(v.created_at)}</td>
                    <td className="num-col">{v.models_count}</td>
                    <td className="num-col">{v.meters_count}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </TableWrap>
        ) : null}
      </Section>
    </>
  );
}
