/**
 * What the inet modules share (inet.ts: the file kind, UDP; tcp.ts: TCP connections through
 * TCP_REPAIR; sockopt.ts: socket options): constants, addresses as stored, a new socket of a
 * record's kind, its status flags.
 */
import { native, type SockAddr } from '../native/binding.js';
import { O_NONBLOCK } from '../proc/fcntl.js';
import type { InetRecord } from './inet.js';

export const AF_INET = 2, AF_INET6 = 10;
export const SOCK_STREAM = 1, SOCK_DGRAM = 2;
export const IPPROTO_IP = 0, IPPROTO_TCP = 6, IPPROTO_UDP = 17, IPPROTO_IPV6 = 41;

/** tcp(7) options (<linux/tcp.h>). */
export const TCP = {
  NODELAY: 1, MAXSEG: 2, CORK: 3, KEEPIDLE: 4, KEEPINTVL: 5, KEEPCNT: 6, SYNCNT: 7, LINGER2: 8,
  DEFER_ACCEPT: 9, INFO: 11, CONGESTION: 13, USER_TIMEOUT: 18, REPAIR: 19, REPAIR_QUEUE: 20,
  QUEUE_SEQ: 21, REPAIR_OPTIONS: 22, FASTOPEN: 23, TIMESTAMP: 24, NOTSENT_LOWAT: 25, REPAIR_WINDOW: 29,
} as const;

/** Status flags kept (O_CLOEXEC is per descriptor). */
export const KEPT_FLAGS = O_NONBLOCK;

export type Proto = 'tcp' | 'udp';
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

export function newSocket(rec: InetRecord): number {
  const n = native();
  return n.socket(rec.family === 'ipv6' ? AF_INET6 : AF_INET, rec.proto === 'tcp' ? SOCK_STREAM : SOCK_DGRAM,
    rec.proto === 'tcp' ? IPPROTO_TCP : IPPROTO_UDP);
}

/** Sets the kept status flags once the socket is built. */
export function finishFlags(fd: number, rec: InetRecord): void {
  native().setFl(fd, rec.flags & KEPT_FLAGS);
}
