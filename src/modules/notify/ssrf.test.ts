import dns, { type LookupAddress } from "node:dns";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it, vi } from "vitest";
import { checkWebhookUrl, guardedLookup, isPublicAddress } from "./ssrf.js";
import { startReceiver } from "./test-receiver.js";
import { postWebhook } from "./webhooks.delivery.js";

describe("SSRF guard", () => {
  it("classifies addresses", () => {
    const refused = [
      "127.0.0.1",
      "127.255.255.254",
      "10.0.0.1",
      "172.16.0.1",
      "172.31.255.255",
      "192.168.0.1",
      "169.254.169.254",
      "100.64.0.1",
      "0.0.0.0",
      "224.0.0.251",
      "255.255.255.255",
      "::",
      "::1",
      "fc00::1",
      "fd12:3456::1",
      "fe80::1",
      "ff02::1",
      "::ffff:127.0.0.1",
      "::ffff:7f00:1",
      "::ffff:10.0.0.1",
      "::ffff:169.254.169.254",
      "64:ff9b::a9fe:a9fe",
      "2002:7f00:1::",
      "[::1]",
      "fe80::1%lo0",
      "not an ip",
    ];
    const allowed = [
      "93.184.215.14",
      "8.8.8.8",
      "172.32.0.1",
      "100.128.0.1",
      "2606:4700::1111",
      "::ffff:8.8.8.8",
    ];
    for (const a of refused) expect(isPublicAddress(a), a).toBe(false);
    for (const a of allowed) expect(isPublicAddress(a), a).toBe(true);
  });

  it("checks every address a name resolves to", async () => {
    const lookup = (addresses: LookupAddress[]) => (async () => addresses) as never;
    const mixed = lookup([
      { address: "93.184.215.14", family: 4 },
      { address: "10.1.2.3", family: 4 },
    ]);
    const check = await checkWebhookUrl("https://hooks.example.com/x", {
      allowPrivate: false,
      lookup: mixed,
    });
    expect(check).toEqual({
      ok: false,
      reason: "hooks.example.com does not resolve to public addresses only",
    });
    const good = await checkWebhookUrl("https://hooks.example.com/x", {
      allowPrivate: false,
      lookup: lookup([{ address: "93.184.215.14", family: 4 }]),
    });
    expect(good.ok).toBe(true);
    const failing = await checkWebhookUrl("https://nowhere.invalid/x", {
      allowPrivate: false,
      lookup: (async () => {
        throw new Error("ENOTFOUND");
      }) as never,
    });
    // Not resolving at all reads the same: the answer tells nothing of what the resolver knows.
    expect(failing).toEqual({
      ok: false,
      reason: "nowhere.invalid does not resolve to public addresses only",
    });
  });

  it("refuses what the delivery could not send: port 0, malformed percent-encoding in the user part", async () => {
    for (const url of [
      "http://93.184.216.34:0/",
      "http://%ff@93.184.216.34/",
      "http://u:%zz@host/",
    ]) {
      const check = await checkWebhookUrl(url, { allowPrivate: true });
      expect(check.ok, url).toBe(false);
    }
    // A URL stored before these checks fails its delivery cleanly (it threw, unrecorded).
    const result = await postWebhook("http://%ff@127.0.0.1:9/", {}, "{}", { allowPrivate: true });
    expect(result).toMatchObject({
      statusCode: null,
      error: expect.stringMatching(/^invalid URL/),
    });
    expect((await checkWebhookUrl("http://u:p%20w@127.0.0.1:1/x", { allowPrivate: true })).ok).toBe(
      true,
    );
  });

  it("allows anything http(s) with allowPrivate, never other schemes", async () => {
    expect((await checkWebhookUrl("http://127.0.0.1:1/x", { allowPrivate: true })).ok).toBe(true);
    expect((await checkWebhookUrl("file:///etc/passwd", { allowPrivate: true })).ok).toBe(false);
    expect((await checkWebhookUrl("gopher://x", { allowPrivate: true })).ok).toBe(false);
  });

  it("the socket lookup refuses names that resolve to private addresses", async () => {
    const result = await new Promise<{ err: NodeJS.ErrnoException | null; address: unknown }>(
      (resolve) =>
        guardedLookup("localhost", { all: true }, (err, address) => resolve({ err, address })),
    );
    expect(result.err?.code).toBe("EFORBIDDENADDRESS");
    expect(result.err?.message).toBe("localhost does not resolve to public addresses only");
  });
});

describe("SSRF guard: DNS rebinding and URL tricks", () => {
  afterEach(() => {
    vi.restoreAllMocks();
  });

  /** Makes the system resolver answer `addresses` for `host` (other names resolve as usual). */
  function resolveAs(host: string, addresses: LookupAddress[]) {
    const real = dns.lookup;
    const calls: string[] = [];
    vi.spyOn(dns, "lookup").mockImplementation(((
      hostname: string,
      options: dns.LookupOptions,
      callback: (e: Error | null, a: LookupAddress[] | string, f?: number) => void,
    ) => {
      if (hostname !== host)
        return (real as (...args: unknown[]) => void)(hostname, options, callback);
      calls.push(hostname);
      queueMicrotask(() =>
        options.all ? callback(null, addresses) : callback(null, addresses[0]!.address, 4),
      );
    }) as never);
    return calls;
  }

  it("refuses the many spellings of private addresses at creation", async () => {
    const refused = [
      "http://2130706433/",
      "http://0x7f000001/",
      "http://0177.0.0.1/",
      "http://127.0.0.1.:80/",
      "http://[0:0:0:0:0:ffff:127.0.0.1]/",
      "http://[::ffff:a9fe:a9fe]/",
      "http://[64:ff9b::7f00:1]/",
      "http://0x0a.0.0.1/",
      "http://LOCALHOST/",
      "http://localhost./",
      "http://user:pass@127.0.0.1/",
    ];
    for (const url of refused) {
      const check = await checkWebhookUrl(url, { allowPrivate: false });
      expect(check.ok, url).toBe(false);
    }
  });

  it("a name that resolved publicly at creation and to loopback at delivery is refused then", async () => {
    const receiver = await startReceiver();
    const url = `http://rebind.example:${receiver.port}/hooks`;
    const created = await checkWebhookUrl(url, {
      allowPrivate: false,
      lookup: (async () => [{ address: "93.184.215.14", family: 4 }]) as never,
    });
    expect(created.ok).toBe(true);

    const calls = resolveAs("rebind.example", [{ address: "127.0.0.1", family: 4 }]);
    const result = await postWebhook(url, {}, "{}", { allowPrivate: false, timeoutMs: 5000 });
    expect(result.statusCode).toBeNull();
    expect(result.error).toBe("refused: rebind.example does not resolve to public addresses only");
    // The socket's own lookup decided: there is no second lookup to race.
    expect(calls).toEqual(["rebind.example"]);
    expect(receiver.requests).toHaveLength(0);
  });

  it("one private address among public ones is enough to refuse (round-robin rebinding)", async () => {
    const receiver = await startReceiver();
    resolveAs("mixed.example", [
      { address: "93.184.215.14", family: 4 },
      { address: "::ffff:127.0.0.1", family: 6 },
      { address: "127.0.0.1", family: 4 },
    ]);
    const result = await postWebhook(`http://mixed.example:${receiver.port}/x`, {}, "{}", {
      allowPrivate: false,
      timeoutMs: 5000,
    });
    expect(result.error).toBe("refused: mixed.example does not resolve to public addresses only");
    expect(receiver.requests).toHaveLength(0);
    const socketLevel = await new Promise<NodeJS.ErrnoException | null>((resolve) =>
      guardedLookup("mixed.example", { all: false }, (err) => resolve(err)),
    );
    expect(socketLevel?.code).toBe("EFORBIDDENADDRESS");
  });

  it("IP literals are checked before connecting (they never reach a lookup)", async () => {
    const receiver = await startReceiver();
    const lookup = vi.spyOn(dns, "lookup");
    for (const host of ["127.0.0.1", "[::ffff:127.0.0.1]", "2130706433"]) {
      const result = await postWebhook(`http://${host}:${receiver.port}/x`, {}, "{}", {
        allowPrivate: false,
      });
      expect(result.error, host).toMatch(/^refused: /);
    }
    expect(lookup).not.toHaveBeenCalled();
    expect(receiver.requests).toHaveLength(0);
  });

  it("redirects are not followed: a 3xx is a failed delivery", async () => {
    const target = await startReceiver();
    const bouncer = http.createServer((_req, res) => {
      res.writeHead(307, { location: target.url }).end();
    });
    await new Promise<void>((resolve) => bouncer.listen(0, "127.0.0.1", resolve));
    try {
      const port = (bouncer.address() as AddressInfo).port;
      const result = await postWebhook(`http://127.0.0.1:${port}/hooks`, {}, "{}", {
        allowPrivate: true,
      });
      expect(result.statusCode).toBe(307);
      expect(target.requests).toHaveLength(0);
    } finally {
      bouncer.closeAllConnections();
      await new Promise((resolve) => bouncer.close(resolve));
    }
  });
});
