import type { LookupAddress } from "node:dns";
import { describe, expect, it } from "vitest";
import { checkWebhookUrl, guardedLookup, isPublicAddress } from "./ssrf.js";

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
      reason: expect.stringContaining("hooks.example.com resolves to 10.1.2.3"),
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
    expect(failing).toMatchObject({ ok: false, reason: expect.stringContaining("resolved") });
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
    expect(result.err?.message).toMatch(/localhost resolves to/);
  });
});
