import { createHash, randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import Stripe from "stripe";

/**
 * A small local Stripe: the endpoints Tally uses, Stripe's form encoding, its error format and its
 * Idempotency-Key semantics, plus controls for tests. The real `stripe` SDK talks to it through
 * `STRIPE_API_BASE`.
 */

type Json = Record<string, unknown>;

export type CardBehaviour = "success" | "decline" | "requires_action";

export interface RecordedRequest {
  method: string;
  path: string;
  query: Json;
  body: Json;
  headers: Record<string, string | string[] | undefined>;
  idempotencyKey: string | null;
  /** True when answered from the idempotency cache. */
  replayed: boolean;
  /** True when answered by an injected failure or left hanging (`failNext`, `hangNext`). */
  injected: boolean;
}

export interface FakeStripe {
  url: string;
  secretKey: string;
  webhookSecret: string;
  /** The configuration that points Tally's Stripe provider at this fake. */
  env: Record<string, string>;
  requests: RecordedRequest[];
  sessions: Map<string, Json>;
  paymentIntents: Map<string, Json>;
  customers: Map<string, Json>;
  refunds: Map<string, Json>;
  paymentMethods: Map<string, Json & { behaviour: CardBehaviour }>;
  /** Requests one endpoint handled, e.g. `calls("POST", "/v1/refunds")` (no replays or injected failures). */
  calls(method: string, path: string): RecordedRequest[];
  /**
   * The customer finishes the checkout: a PaymentIntent and a card are created. `paid` (default)
   * → payment_status paid; `pending` → an asynchronous method: complete but unpaid.
   */
  completeSession(
    sessionId: string,
    options?: {
      payment?: "paid" | "pending";
      last4?: string;
      brand?: string;
      behaviour?: CardBehaviour;
    },
  ): Json;
  expireSession(sessionId: string): Json;
  /** A saved card for off-session charges (attached to `customer`). */
  createPaymentMethod(options: {
    customer: string;
    behaviour?: CardBehaviour;
    last4?: string;
  }): string;
  setCardBehaviour(paymentMethodId: string, behaviour: CardBehaviour): void;
  /** The next request (any endpoint) answers `status` with an api_error. */
  failNext(status?: number, times?: number): void;
  /** The next request gets no answer (the client times out). */
  hangNext(times?: number): void;
  /**
   * The next request is carried out (and cached for its Idempotency-Key) but its answer is lost:
   * the connection is closed instead — Stripe did it, the client does not know.
   */
  loseAnswerNext(times?: number): void;
  /** Closes the connections of requests left hanging by `hangNext` (the client sees a reset). */
  dropHanging(): void;
  /** Forgets injected faults not used yet (`failNext`, `hangNext`, `loseAnswerNext`). */
  clearFaults(): void;
  /** An Event object as Stripe sends it. */
  event(type: string, object: Json, id?: string): Json;
  /** A signed webhook delivery: the raw body and its `Stripe-Signature` header. */
  signedWebhook(
    event: Json,
    options?: { secret?: string; timestamp?: number },
  ): {
    payload: string;
    signature: string;
  };
  close(): Promise<void>;
}

const stripeForSigning = new Stripe("sk_test_signing_only");

export async function startFakeStripe(
  options: { secretKey?: string; webhookSecret?: string } = {},
): Promise<FakeStripe> {
  const secretKey = options.secretKey ?? "sk_test_fake_0123456789";
  const webhookSecret = options.webhookSecret ?? "whsec_fake_0123456789abcdef";
  const requests: RecordedRequest[] = [];
  const sessions = new Map<string, Json>();
  const paymentIntents = new Map<string, Json>();
  const customers = new Map<string, Json>();
  const refunds = new Map<string, Json>();
  const paymentMethods = new Map<string, Json & { behaviour: CardBehaviour }>();
  const idempotency = new Map<string, { fingerprint: string; status: number; body: Json }>();
  const sockets = new Set<Socket>();
  const hanging = new Set<ServerResponse>();
  let failures: number[] = [];
  let hangs = 0;
  let lostAnswers = 0;
  let baseUrl = "";

  const newId = (prefix: string) => `${prefix}_test_${randomBytes(12).toString("hex")}`;
  const now = () => Math.floor(Date.now() / 1000);

  function error(status: number, type: string, message: string, extra: Json = {}) {
    return { status, body: { error: { type, message, ...extra } } };
  }

  function makePaymentMethod(
    customer: string | null,
    behaviour: CardBehaviour,
    last4: string,
    brand = "visa",
  ) {
    const pm = {
      id: newId("pm"),
      object: "payment_method",
      type: "card",
      customer,
      card: { brand, last4, exp_month: 12, exp_year: 2034 },
      behaviour,
    };
    paymentMethods.set(pm.id, pm);
    return pm;
  }

  function publicPaymentMethod(pm: Json) {
    const { behaviour: _b, ...rest } = pm;
    return rest;
  }

  function expandIntent(pi: Json, expand: string[]): Json {
    const out = { ...pi };
    if (expand.includes("payment_intent.payment_method") || expand.includes("payment_method")) {
      const pm =
        typeof pi.payment_method === "string" ? paymentMethods.get(pi.payment_method) : null;
      if (pm) out.payment_method = publicPaymentMethod(pm);
    }
    return out;
  }

  function sessionView(session: Json, expand: string[]): Json {
    const out = { ...session };
    delete out._internal;
    if (
      typeof session.payment_intent === "string" &&
      expand.some((e) => e === "payment_intent" || e.startsWith("payment_intent."))
    ) {
      const pi = paymentIntents.get(session.payment_intent);
      if (pi) out.payment_intent = expandIntent(pi, expand);
    }
    return out;
  }

  const routes: {
    method: string;
    pattern: RegExp;
    handle: (m: RegExpExecArray, body: Json, query: Json) => { status: number; body: Json };
  }[] = [
    {
      method: "POST",
      pattern: /^\/v1\/customers$/,
      handle: (_m, body) => {
        const customer = {
          id: newId("cus"),
          object: "customer",
          name: body.name ?? null,
          email: body.email ?? null,
          metadata: body.metadata ?? {},
          created: now(),
        };
        customers.set(customer.id, customer);
        return { status: 200, body: customer };
      },
    },
    {
      method: "POST",
      pattern: /^\/v1\/checkout\/sessions$/,
      handle: (_m, body) => {
        if (body.mode !== "payment") {
          return error(400, "invalid_request_error", "Only payment mode is faked.", {
            param: "mode",
          });
        }
        const items = (body.line_items as Json[] | undefined) ?? [];
        if (items.length === 0) {
          return error(400, "invalid_request_error", "Missing required param: line_items.", {
            param: "line_items",
          });
        }
        if (!body.success_url) {
          return error(400, "invalid_request_error", "Missing required param: success_url.");
        }
        if (body.customer && !customers.has(String(body.customer))) {
          return error(400, "invalid_request_error", `No such customer: '${body.customer}'`, {
            code: "resource_missing",
            param: "customer",
          });
        }
        let total = 0;
        let currency: string | null = null;
        for (const item of items) {
          const price = item.price_data as Json | undefined;
          if (!price?.currency || price.unit_amount === undefined) {
            return error(400, "invalid_request_error", "line_items[].price_data is required.");
          }
          currency = String(price.currency);
          total += Number(price.unit_amount) * Number(item.quantity ?? 1);
        }
        const id = newId("cs");
        const session: Json = {
          id,
          object: "checkout.session",
          mode: "payment",
          status: "open",
          payment_status: "unpaid",
          url: `${baseUrl}/c/pay/${id}`,
          client_reference_id: body.client_reference_id ?? null,
          customer: body.customer ?? null,
          metadata: body.metadata ?? {},
          amount_total: total,
          currency,
          success_url: body.success_url,
          cancel_url: body.cancel_url ?? null,
          payment_intent: null,
          expires_at: now() + 24 * 3600,
          created: now(),
          _internal: { line_items: items, payment_intent_data: body.payment_intent_data ?? {} },
        };
        sessions.set(id, session);
        return { status: 200, body: sessionView(session, []) };
      },
    },
    {
      method: "GET",
      pattern: /^\/v1\/checkout\/sessions\/([^/]+)$/,
      handle: (m, _body, query) => {
        const session = sessions.get(m[1]!);
        if (!session) {
          return error(404, "invalid_request_error", `No such checkout.session: '${m[1]}'`, {
            code: "resource_missing",
            param: "session",
          });
        }
        return { status: 200, body: sessionView(session, (query.expand as string[]) ?? []) };
      },
    },
    {
      method: "POST",
      pattern: /^\/v1\/payment_intents$/,
      handle: (_m, body) => {
        const amount = Number(body.amount);
        if (!Number.isInteger(amount) || amount <= 0) {
          return error(400, "invalid_request_error", "Invalid amount.", { param: "amount" });
        }
        const pm = paymentMethods.get(String(body.payment_method));
        if (!pm) {
          return error(
            400,
            "invalid_request_error",
            `No such PaymentMethod: '${body.payment_method}'`,
            {
              code: "resource_missing",
              param: "payment_method",
            },
          );
        }
        if (body.customer !== undefined && body.customer !== pm.customer) {
          return error(
            400,
            "invalid_request_error",
            "The payment method does not belong to this customer.",
          );
        }
        const pi: Json = {
          id: newId("pi"),
          object: "payment_intent",
          amount,
          currency: body.currency,
          customer: body.customer ?? null,
          payment_method: pm.id,
          metadata: body.metadata ?? {},
          status: "succeeded",
          last_payment_error: null,
          next_action: null,
          created: now(),
        };
        const offSession = body.off_session === "true";
        if (pm.behaviour === "decline") {
          pi.status = "requires_payment_method";
          pi.last_payment_error = {
            type: "card_error",
            code: "card_declined",
            message: "Your card was declined.",
          };
          paymentIntents.set(pi.id as string, pi);
          return error(402, "card_error", "Your card was declined.", {
            code: "card_declined",
            decline_code: "generic_decline",
            payment_intent: pi,
          });
        }
        if (pm.behaviour === "requires_action") {
          if (offSession) {
            pi.status = "requires_payment_method";
            paymentIntents.set(pi.id as string, pi);
            return error(402, "card_error", "This payment requires authentication.", {
              code: "authentication_required",
              decline_code: "authentication_required",
              payment_intent: pi,
            });
          }
          pi.status = "requires_action";
          pi.next_action = {
            type: "redirect_to_url",
            redirect_to_url: { url: `${baseUrl}/3ds/${pi.id}` },
          };
        }
        paymentIntents.set(pi.id as string, pi);
        return { status: 200, body: pi };
      },
    },
    {
      method: "POST",
      pattern: /^\/v1\/payment_intents\/([^/]+)\/cancel$/,
      handle: (m, body) => {
        const pi = paymentIntents.get(m[1]!);
        if (!pi) {
          return error(404, "invalid_request_error", `No such payment_intent: '${m[1]}'`, {
            code: "resource_missing",
          });
        }
        const cancellable = [
          "requires_payment_method",
          "requires_confirmation",
          "requires_action",
          "requires_capture",
        ];
        if (!cancellable.includes(String(pi.status))) {
          return error(
            400,
            "invalid_request_error",
            `You cannot cancel this PaymentIntent because it has a status of ${pi.status}.`,
            { code: "payment_intent_unexpected_state", payment_intent: pi },
          );
        }
        pi.status = "canceled";
        pi.cancellation_reason = body.cancellation_reason ?? null;
        return { status: 200, body: pi };
      },
    },
    {
      method: "POST",
      pattern: /^\/v1\/refunds$/,
      handle: (_m, body) => {
        const pi = paymentIntents.get(String(body.payment_intent));
        if (!pi) {
          return error(
            400,
            "invalid_request_error",
            `No such payment_intent: '${body.payment_intent}'`,
            {
              code: "resource_missing",
              param: "payment_intent",
            },
          );
        }
        if (pi.status !== "succeeded") {
          return error(400, "invalid_request_error", "This PaymentIntent has not succeeded.");
        }
        const refunded = [...refunds.values()]
          .filter((r) => r.payment_intent === pi.id)
          .reduce((sum, r) => sum + Number(r.amount), 0);
        const amount =
          body.amount === undefined ? Number(pi.amount) - refunded : Number(body.amount);
        if (refunded >= Number(pi.amount)) {
          return error(
            400,
            "invalid_request_error",
            `Charge ch_for_${pi.id} has already been refunded.`,
            { code: "charge_already_refunded" },
          );
        }
        if (amount <= 0 || refunded + amount > Number(pi.amount)) {
          return error(
            400,
            "invalid_request_error",
            "Refund amount is greater than unrefunded amount.",
            {
              code: "amount_too_large",
              param: "amount",
            },
          );
        }
        const refund = {
          id: newId("re"),
          object: "refund",
          amount,
          currency: pi.currency,
          payment_intent: pi.id,
          status: "succeeded",
          metadata: body.metadata ?? {},
          created: now(),
        };
        refunds.set(refund.id, refund);
        return { status: 200, body: refund };
      },
    },
  ];

  async function handle(req: IncomingMessage, res: ServerResponse) {
    const url = new URL(req.url ?? "/", "http://fake");
    const raw = await readBody(req);
    const body = parseForm(raw);
    const query = parseForm(url.search.slice(1));
    const key = header(req, "idempotency-key");
    const record: RecordedRequest = {
      method: req.method ?? "GET",
      path: url.pathname,
      query,
      body,
      headers: req.headers,
      idempotencyKey: key,
      replayed: false,
      injected: false,
    };
    requests.push(record);

    const send = (status: number, payload: Json, extra: Record<string, string> = {}) => {
      if (lostAnswers > 0 && !record.injected) {
        lostAnswers--;
        res.destroy();
        return;
      }
      res.writeHead(status, {
        "content-type": "application/json",
        "request-id": `req_${randomBytes(6).toString("hex")}`,
        ...(key ? { "idempotency-key": key } : {}),
        ...extra,
      });
      res.end(JSON.stringify(payload));
    };

    if (hangs > 0) {
      hangs--;
      record.injected = true;
      hanging.add(res);
      return;
    }
    const failure = failures.shift();
    if (failure !== undefined) {
      record.injected = true;
      return send(failure, { error: { type: "api_error", message: "Injected failure." } });
    }
    if (header(req, "authorization") !== `Bearer ${secretKey}`) {
      return send(401, {
        error: { type: "invalid_request_error", message: "Invalid API Key provided." },
      });
    }

    const route = routes.find((r) => r.method === req.method && r.pattern.test(url.pathname));
    if (!route) {
      return send(404, {
        error: {
          type: "invalid_request_error",
          message: `Unrecognized request URL (${req.method}: ${url.pathname}).`,
        },
      });
    }

    if (req.method === "POST" && key) {
      const fingerprint = createHash("sha256").update(`${url.pathname}\n${raw}`).digest("hex");
      const cacheKey = `${url.pathname} ${key}`;
      const cached = idempotency.get(cacheKey);
      if (cached) {
        record.replayed = true;
        if (cached.fingerprint !== fingerprint) {
          return send(400, {
            error: {
              type: "idempotency_error",
              message: `Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '${key}' if you meant to execute a different request.`,
            },
          });
        }
        return send(cached.status, cached.body, { "idempotent-replayed": "true" });
      }
      const result = route.handle(route.pattern.exec(url.pathname)!, body, query);
      idempotency.set(cacheKey, { fingerprint, status: result.status, body: result.body });
      return send(result.status, result.body);
    }
    const result = route.handle(route.pattern.exec(url.pathname)!, body, query);
    return send(result.status, result.body);
  }

  const server = createServer((req, res) => {
    handle(req, res).catch((err) => {
      res.writeHead(500, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: { type: "api_error", message: String(err) } }));
    });
  });
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  const fake: FakeStripe = {
    url: baseUrl,
    secretKey,
    webhookSecret,
    env: {
      TALLY_PAYMENT_PROVIDER: "stripe",
      STRIPE_SECRET_KEY: secretKey,
      STRIPE_WEBHOOK_SECRET: webhookSecret,
      STRIPE_API_BASE: baseUrl,
    },
    requests,
    sessions,
    paymentIntents,
    customers,
    refunds,
    paymentMethods,
    calls: (method, path) =>
      requests.filter((r) => r.method === method && r.path === path && !r.replayed && !r.injected),
    completeSession(sessionId, opts = {}) {
      const session = sessions.get(sessionId);
      if (!session) throw new Error(`no session ${sessionId}`);
      const internal = session._internal as { payment_intent_data: Json };
      const customer = (session.customer as string | null) ?? null;
      const pm = makePaymentMethod(
        internal.payment_intent_data.setup_future_usage ? customer : null,
        opts.behaviour ?? "success",
        opts.last4 ?? "4242",
        opts.brand,
      );
      const paid = (opts.payment ?? "paid") === "paid";
      const pi: Json = {
        id: newId("pi"),
        object: "payment_intent",
        amount: session.amount_total,
        currency: session.currency,
        customer,
        payment_method: pm.id,
        metadata: internal.payment_intent_data.metadata ?? {},
        setup_future_usage: internal.payment_intent_data.setup_future_usage ?? null,
        status: paid ? "succeeded" : "processing",
        last_payment_error: null,
        next_action: null,
        created: now(),
      };
      paymentIntents.set(pi.id as string, pi);
      session.status = "complete";
      session.payment_status = paid ? "paid" : "unpaid";
      session.payment_intent = pi.id;
      return sessionView(session, []);
    },
    expireSession(sessionId) {
      const session = sessions.get(sessionId);
      if (!session) throw new Error(`no session ${sessionId}`);
      session.status = "expired";
      session.url = null;
      return sessionView(session, []);
    },
    createPaymentMethod({ customer, behaviour = "success", last4 = "4242" }) {
      if (!customers.has(customer)) {
        customers.set(customer, { id: customer, object: "customer", metadata: {} });
      }
      return makePaymentMethod(customer, behaviour, last4).id;
    },
    setCardBehaviour(id, behaviour) {
      const pm = paymentMethods.get(id);
      if (!pm) throw new Error(`no payment method ${id}`);
      pm.behaviour = behaviour;
    },
    failNext(status = 500, times = 1) {
      failures = [...failures, ...Array.from({ length: times }, () => status)];
    },
    hangNext(times = 1) {
      hangs += times;
    },
    loseAnswerNext(times = 1) {
      lostAnswers += times;
    },
    dropHanging() {
      for (const res of hanging) res.destroy();
      hanging.clear();
    },
    clearFaults() {
      failures = [];
      hangs = 0;
      lostAnswers = 0;
    },
    event(type, object, id) {
      return {
        id: id ?? newId("evt"),
        object: "event",
        api_version: "2026-10-28.endive",
        created: now(),
        livemode: false,
        pending_webhooks: 1,
        type,
        data: { object },
      };
    },
    signedWebhook(event, opts = {}) {
      const payload = JSON.stringify(event, null, 2);
      const signature = stripeForSigning.webhooks.generateTestHeaderString({
        payload,
        secret: opts.secret ?? webhookSecret,
        ...(opts.timestamp !== undefined ? { timestamp: opts.timestamp } : {}),
      });
      return { payload, signature };
    },
    async close() {
      for (const res of hanging) res.destroy();
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  return fake;
}

function header(req: IncomingMessage, name: string): string | null {
  const v = req.headers[name];
  return typeof v === "string" ? v : Array.isArray(v) ? (v[0] ?? null) : null;
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

/**
 * Stripe's form encoding: `a[b][0][c]=1` nests objects; keys that are all numeric indexes (or
 * empty, `expand[]=x`) become arrays. Values stay strings, as on the wire.
 */
export function parseForm(raw: string): Json {
  const root: Json = {};
  if (!raw) return root;
  for (const pair of raw.split("&")) {
    if (!pair) continue;
    const eq = pair.indexOf("=");
    const rawKey = decodeURIComponent((eq < 0 ? pair : pair.slice(0, eq)).replace(/\+/g, " "));
    const value = eq < 0 ? "" : decodeURIComponent(pair.slice(eq + 1).replace(/\+/g, " "));
    const match = /^([^[]+)((?:\[[^\]]*\])*)$/.exec(rawKey);
    if (!match) continue;
    const path = [match[1]!, ...[...match[2]!.matchAll(/\[([^\]]*)\]/g)].map((m) => m[1]!)];
    let node: Json = root;
    for (let i = 0; i < path.length; i++) {
      let part = path[i]!;
      const last = i === path.length - 1;
      if (part === "") part = String(Object.keys(node).length);
      if (last) node[part] = value;
      else {
        node[part] ??= {};
        node = node[part] as Json;
      }
    }
  }
  return arrayify(root) as Json;
}

function arrayify(value: unknown): unknown {
  if (typeof value !== "object" || value === null) return value;
  const obj = value as Json;
  const keys = Object.keys(obj);
  for (const k of keys) obj[k] = arrayify(obj[k]);
  if (keys.length > 0 && keys.every((k, i) => k === String(i))) return keys.map((k) => obj[k]);
  return obj;
}
