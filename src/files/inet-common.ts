/**
 * What the inet modules share (inet.ts: the file kind, UDP, UDP-Lite, raw and ping sockets;
 * tcp.ts: TCP connections through TCP_REPAIR; sockopt.ts: socket options; inet-filter.ts:
 * classic BPF filters; inet-multicast.ts: group memberships): constants, addresses as stored,
 * a new socket of a record's kind, its status flags.
 */
import { native, type SockAddr } from '../native/binding.js';
import { O_NONBLOCK } from '../proc/fcntl.js';
import type { InetRecord } from './inet.js';

export const AF_INET = 2, AF_INET6 = 10;
export const SOCK_STREAM = 1, SOCK_DGRAM = 2;
export const SOCK_RAW = 3;
export const IPPROTO_IP = 0, IPPROTO_ICMP = 1, IPPROTO_TCP = 6, IPPROTO_UDP = 17, IPPROTO_IPV6 = 41,
  IPPROTO_ICMPV6 = 58, IPPROTO_UDPLITE = 136;

/** tcp(7) options (<linux/tcp.h>). */
export const TCP = {
  NODELAY: 1, MAXSEG: 2, CORK: 3, KEEPIDLE: 4, KEEPINTVL: 5, KEEPCNT: 6, SYNCNT: 7, LINGER2: 8,
  DEFER_ACCEPT: 9, INFO: 11, CONGESTION: 13, USER_TIMEOUT: 18, REPAIR: 19, REPAIR_QUEUE: 20,
  QUEUE_SEQ: 21, REPAIR_OPTIONS: 22, FASTOPEN: 23, TIMESTAMP: 24, NOTSENT_LOWAT: 25, REPAIR_WINDOW: 29,
} as const;

/** Status flags kept (O_CLOEXEC is per descriptor). */
export const KEPT_FLAGS = O_NONBLOCK;

/**
 * The socket's protocol as sockfs names it: TCP, UDP, UDP-Lite (udplite(7)), RAW (raw(7):
 * SOCK_RAW with an IP protocol number, `InetRecord.protocol`), PING (icmp "ping" sockets:
 * SOCK_DGRAM with IPPROTO_ICMP or IPPROTO_ICMPV6).
 */
export type Proto = 'tcp' | 'udp' | 'udplite' | 'raw' | 'ping';
export const PROTOS: readonly Proto[] = ['tcp', 'udp', 'udplite', 'raw', 'ping'];
/** Datagram-style kinds: bound and connected like UDP, queued packets peeked. */
export const isDatagram = (p: Proto): boolean => p !== 'tcp';
export type Family = 'ipv4' | 'ipv6';

/** An address as stored: inet_ntop text, port, and for IPv6 flow label and scope. */
export interface Endpoint {
  address: string;
  port: number;
  flowinfo?: number;
  scopeId?: number;
}


export const u32 = (v: number): number => v >>> 0;
export const i32 = (v: number): number => v | 0;

export const toEndpoint = (a: SockAddr | null): Endpoint | null => {
  if (!a) return null;
  const e: Endpoint = { address: a.address, port: a.port };
  if (a.family === AF_INET6 && a.flowinfo) e.flowinfo = a.flowinfo;
  if (a.family === AF_INET6 && a.scopeId) e.scopeId = a.scopeId;
  return e;
};
export const toSockAddr = (e: Endpoint, family: Family): SockAddr => ({
  family: family === 'ipv6' ? AF_INET6 : AF_INET, address: e.address, port: e.port,
  flowinfo: e.flowinfo ?? 0, scopeId: e.scopeId ?? 0,
});
export const show = (e: Endpoint | null): string => (e ? (e.address.includes(':') ? `[${e.address}]:${e.port}` : `${e.address}:${e.port}`) : '(none)');

/** 16 bytes of an address in text (IPv4 as IPv4-mapped IPv6), for comparing. */
export function ipKey(text: string): string {
  if (!text.includes(':')) return `::ffff:${text}`;
  const lower = text.toLowerCase();
  const v4 = /^(.*:)(\d+\.\d+\.\d+\.\d+)$/.exec(lower);
  let s = lower;
  if (v4) {
    const b = v4[2]!.split('.').map(Number);
    s = `${v4[1]}${((b[0]! << 8) | b[1]!).toString(16)}:${((b[2]! << 8) | b[3]!).toString(16)}`;
  }
  const [head, tail] = s.includes('::') ? s.split('::') as [string, string] : [s, undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  const words = groups.map((g) => parseInt(g, 16));
  if (words.length === 8 && words.slice(0, 5).every((w) => w === 0) && words[5] === 0xffff) {
    return `::ffff:${words[6]! >> 8}.${words[6]! & 255}.${words[7]! >> 8}.${words[7]! & 255}`;
  }
  return words.map((w) => w.toString(16)).join(':');
}
export const isAny = (text: string): boolean => ipKey(text) === ipKey('::') || ipKey(text) === ipKey('0.0.0.0');

/** "0100007F:1F90": the address as 32-bit words in host (little-endian) order, the port in hex. */
export function parseProcAddr(s: string, v6: boolean): Endpoint {
  const [hexAddr, hexPort] = s.split(':') as [string, string];
  const bytes = Buffer.alloc(hexAddr.length / 2);
  for (let w = 0; w < hexAddr.length / 8; w++) {
    bytes.writeUInt32LE(parseInt(hexAddr.slice(w * 8, w * 8 + 8), 16) >>> 0, w * 4);
  }
  const address = v6
    ? Array.from({ length: 8 }, (_, i) => bytes.readUInt16BE(i * 2).toString(16)).join(':')
    : Array.from(bytes).join('.');
  return { address, port: parseInt(hexPort, 16) };
}

export const sameEndpoint = (a: Endpoint, b: Endpoint): boolean => a.port === b.port && ipKey(a.address) === ipKey(b.address);

/** socket(2) type and protocol of a record's kind. */
export function socketArgs(rec: Pick<InetRecord, 'family' | 'proto' | 'protocol'>): [number, number] {
  switch (rec.proto) {
    case 'tcp': return [SOCK_STREAM, IPPROTO_TCP];
    case 'udp': return [SOCK_DGRAM, IPPROTO_UDP];
    case 'udplite': return [SOCK_DGRAM, IPPROTO_UDPLITE];
    case 'ping': return [SOCK_DGRAM, rec.family === 'ipv6' ? IPPROTO_ICMPV6 : IPPROTO_ICMP];
    case 'raw': return [SOCK_RAW, rec.protocol ?? 0];
  }
}

export function newSocket(rec: InetRecord): number {
  return native().socket(rec.family === 'ipv6' ? AF_INET6 : AF_INET, ...socketArgs(rec));
}

/** Sets the kept status flags once the socket is built. */
export function finishFlags(fd: number, rec: InetRecord): void {
  native().setFl(fd, rec.flags & KEPT_FLAGS);
}
