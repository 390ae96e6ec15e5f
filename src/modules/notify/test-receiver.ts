import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll } from "vitest";

/** A webhook receiver on 127.0.0.1 for tests: records requests, answers as told. */
export interface ReceivedRequest {
  headers: http.IncomingHttpHeaders;
  body: string;
}

export interface Receiver {
  url: string;
  port: number;
  requests: ReceivedRequest[];
  /** Decides each response: a status code, or "hang" to never answer. */
  respond: (request: ReceivedRequest, index: number) => number | "hang";
  close(): Promise<void>;
}

export async function startReceiver(): Promise<Receiver> {
  const hanging = new Set<http.ServerResponse>();
  const receiver: Receiver = {
    url: "",
    port: 0,
    requests: [],
    respond: () => 204,
    close: () =>
      new Promise((resolve) => {
        for (const res of hanging) res.destroy();
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const request = { headers: req.headers, body: Buffer.concat(chunks).toString("utf8") };
      const index = receiver.requests.push(request) - 1;
      const answer = receiver.respond(request, index);
      if (answer === "hang") {
        hanging.add(res);
        return;
      }
      res.statusCode = answer;
      res.end(answer >= 300 ? "nope" : "");
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  receiver.port = (server.address() as AddressInfo).port;
  receiver.url = `http://127.0.0.1:${receiver.port}/hooks`;
  afterAll(() => receiver.close());
  return receiver;
}
