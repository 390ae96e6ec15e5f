import dns, { type LookupAddress } from "node:dns";
import { BlockList, isIP, type LookupFunction } from "node:net";

/**
 * SSRF guard for outbound webhooks. A webhook URL is chosen by a customer, so without a guard
 * Tally could be made to POST to its own loopback services, the private network, or a cloud
 * metadata endpoint (169.254.169.254). Every address a host resolves to must be public; the
 * check runs when an endpoint is created and again at each delivery, where `guardedLookup`
 * is the lookup the socket itself uses, so the address checked is the address connected to
 * (no DNS-rebinding window between the two).
 */

const blocked = new BlockList();
const V4: [string, number][] = [
  ["0.0.0.0", 8], // "this network", unspecified
  ["10.0.0.0", 8],
  ["100.64.0.0", 10], // carrier-grade NAT
  ["127.0.0.0", 8],
  ["169.254.0.0", 16], // link-local, cloud metadata
  ["172.16.0.0", 12],
  ["192.0.0.0", 24], // IETF protocol assignments
  ["192.0.2.0", 24], // documentation
  ["192.88.99.0", 24], // 6to4 relay anycast
  ["192.168.0.0", 16],
  ["198.18.0.0", 15], // benchmarking
  ["198.51.100.0", 24],
  ["203.0.113.0", 24],
  ["224.0.0.0", 4], // multicast
  ["240.0.0.0", 4], // reserved, broadcast
];
const V6: [string, number][] = [
  ["::", 96], // unspecified, loopback, IPv4-compatible
  ["64:ff9b:1::", 48], // local-use NAT64
  ["100::", 64], // discard
  ["2001:db8::", 32], // documentation
  ["fc00::", 7], // unique local
  ["fe80::", 10], // link-local
  ["fec0::", 10], // site-local (deprecated)
  ["ff00::", 8], // multicast
];
for (const [net, prefix] of V4) blocked.addSubnet(net, prefix, "ipv4");
for (const [net, prefix] of V6) blocked.addSubnet(net, prefix, "ipv6");

/** The 8 groups of an IPv6 address (any textual form Node accepts). */
function ipv6Groups(address: string): number[] {
  // The URL parser canonicalises: embedded dotted quads become hex, zones are refused.
  const canonical = new URL(`http://[${address}]/`).hostname.slice(1, -1);
  const [head = "", tail] = canonical.split("::");
  const h = head ? head.split(":") : [];
  const t = tail ? tail.split(":") : [];
  const groups = [...h, ...Array(8 - h.length - t.length).fill("0"), ...t];
  return groups.map((g) => Number.parseInt(g, 16));
}

/** IPv4 carried inside an IPv6 address (mapped, NAT64, 6to4), else null. */
function embeddedIPv4(address: string): string | null {
  let g: number[];
  try {
    g = ipv6Groups(address);
  } catch {
    return null;
  }
  const quad = (hi: number, lo: number) => `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
  const zeros = (from: number, to: number) => g.slice(from, to).every((x) => x === 0);
  if (zeros(0, 5) && g[5] === 0xffff) return quad(g[6]!, g[7]!); // ::ffff:a.b.c.d
  if (g[0] === 0x64 && g[1] === 0xff9b && zeros(2, 6)) return quad(g[6]!, g[7]!); // 64:ff9b::/96
  if (g[0] === 0x2002) return quad(g[1]!, g[2]!); // 6to4
  return null;
}

/** True when `address` (an IP literal) is a public unicast address a webhook may reach. */
export function isPublicAddress(address: string): boolean {
  const ip = address.startsWith("[") && address.endsWith("]") ? address.slice(1, -1) : address;
  const family = isIP(ip);
  if (family === 4) return !blocked.check(ip, "ipv4");
  if (family === 6) {
    if (ip.includes("%")) return false; // zone index: link-local by definition
    if (blocked.check(ip, "ipv6")) return false;
    const v4 = embeddedIPv4(ip);
    return v4 === null || !blocked.check(v4, "ipv4");
  }
  return false;
}

export class ForbiddenAddressError extends Error {
  readonly code = "EFORBIDDENADDRESS";
}

/**
 * Why a host is refused. For a name, the same words whether it resolves to a private address,
 * to none, or not at all: the answer must not tell a customer what Tally's resolver knows of
 * internal names (`db.internal` resolves to 10.0.0.5).
 */
function refusal(host: string, address: string | null): string {
  return host === address
    ? `${address} is a loopback, private, link-local or otherwise non-public address`
    : `${host} does not resolve to public addresses only`;
}

/**
 * A `lookup` for sockets (http.request / http.Agent): resolves like dns.lookup and fails with
 * ForbiddenAddressError when any address of the host is not public.
 */
export const guardedLookup: LookupFunction = (hostname, options, callback) => {
  dns.lookup(hostname, { ...options, all: true }, (error, addresses) => {
    const list = error ? [] : (addresses as LookupAddress[]);
    const bad = list.find((a) => !isPublicAddress(a.address));
    if (bad || list.length === 0) {
      const err = new ForbiddenAddressError(refusal(hostname, null));
      callback(err as NodeJS.ErrnoException, "", 4);
      return;
    }
    if (options.all) (callback as unknown as (e: null, a: LookupAddress[]) => void)(null, list);
    else callback(null, list[0]!.address, list[0]!.family);
  });
};

/**
 * Why a URL whose host is an IP literal may not be called, or null. Sockets skip `lookup` for
 * IP literals, so these are checked before connecting.
 */
export function literalHostRefusal(url: URL): string | null {
  const host = urlHost(url);
  return isIP(host) && !isPublicAddress(host) ? refusal(host, host) : null;
}

export type UrlCheck = { ok: true; url: URL } | { ok: false; reason: string };

/** The host of a URL without IPv6 brackets. */
export function urlHost(url: URL): string {
  return url.hostname.startsWith("[") ? url.hostname.slice(1, -1) : url.hostname;
}

/**
 * Validates a webhook URL: http(s), and — unless private addresses are allowed — a host whose
 * every address is public (IP literals checked as they are, names resolved now).
 */
export async function checkWebhookUrl(
  raw: string,
  options: { allowPrivate: boolean; lookup?: typeof dns.promises.lookup },
): Promise<UrlCheck> {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return { ok: false, reason: "must be an absolute http or https URL" };
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    return { ok: false, reason: "must use http or https" };
  }
  if (!url.hostname) return { ok: false, reason: "must name a host" };
  if (url.port === "0") return { ok: false, reason: "must name a port from 1 to 65535" };
  // Node's http.request decodes them, and throws on malformed percent-encoding.
  try {
    decodeURIComponent(url.username);
    decodeURIComponent(url.password);
  } catch {
    return { ok: false, reason: "has malformed percent-encoding in its user name or password" };
  }
  if (options.allowPrivate) return { ok: true, url };

  const host = urlHost(url);
  if (isIP(host)) {
    const reason = literalHostRefusal(url);
    return reason ? { ok: false, reason } : { ok: true, url };
  }
  let addresses: LookupAddress[];
  try {
    addresses = await (options.lookup ?? dns.promises.lookup)(host, { all: true });
  } catch {
    addresses = [];
  }
  const bad = addresses.find((a) => !isPublicAddress(a.address));
  if (bad || addresses.length === 0) return { ok: false, reason: refusal(host, null) };
  return { ok: true, url };
}
