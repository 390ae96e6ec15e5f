/**
 * The HTTP ceiling: a bare Fastify route taking the same request body as
 * `POST /v1/usage-events` (JSON parsed by Fastify) and answering a response of the same shape,
 * with no validation, authentication, pricing or database. Started by `bench/run.ts`.
 */
import Fastify from "fastify";
import { serve } from "./serve.js";

const app = Fastify({ logger: false, bodyLimit: 4 * 1024 * 1024 });

interface Event {
  id: string;
}

app.get("/healthz", async () => ({ status: "ok" }));

app.post("/v1/usage-events", async (request) => {
  const body = request.body as Event | { events: Event[] };
  const events = "events" in body ? body.events : [body];
  return {
    data: events.map((e) => ({
      id: e.id,
      status: "accepted",
      cost: "0.04125",
      transaction_id: "txn_0000000000000000000000000",
      balance_after: "999999999.95875",
    })),
  };
});

await serve(app, 8090);
