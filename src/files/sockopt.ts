/**
 * Socket options of inet sockets (socket(7), ip(7), ipv6(7), tcp(7), udp(7)): read from a
 * table at checkpoint, stored only where they differ from a new socket's of the same kind, set
 * again on restore (those marked `early` before bind(2) and TCP_REPAIR).
 */
import { SO, SOL_SOCKET } from '../arch/x86-64.js';
import { errnoCode } from '../errors.js';
import { native } from '../native/binding.js';
import type { InetRecord } from './inet.js';
import {
  AF_INET, AF_INET6, IPPROTO_IP, IPPROTO_IPV6, IPPROTO_TCP, SOCK_DGRAM, SOCK_STREAM, TCP, type Family, type Proto,
} from './inet-common.js';

/** ip(7), ipv6(7) options. */
const IP = { TOS: 1, TTL: 2, PKTINFO: 8, MTU_DISCOVER: 10, RECVERR: 11, RECVTOS: 13, FREEBIND: 15, TRANSPARENT: 19, MULTICAST_TTL: 33, MULTICAST_LOOP: 34 } as const;
const IPV6 = { UNICAST_HOPS: 16, MULTICAST_HOPS: 18, MULTICAST_LOOP: 19, RECVERR: 25, V6ONLY: 26, RECVPKTINFO: 49, RECVTCLASS: 66, TCLASS: 67, TRANSPARENT: 75, FREEBIND: 78 } as const;

interface OptionSpec {
  level: number;
  opt: number;
  /** 'int', or a struct/string of at most `len` bytes. */
  type: 'int' | 'bytes';
  len?: number;
  /** Set before bind(2) (and before TCP_REPAIR, which overrides SO_REUSEADDR), else once built. */
  early?: boolean;
  /** Read for these sockets only. */
  only?: { proto?: Proto; family?: Family; listen?: boolean };
}

/** Options carried over. Buffer sizes are handled apart (SO_*BUFFORCE, the kernel doubles them). */
export const OPTIONS: Readonly<Record<string, OptionSpec>> = {
  reuseaddr: { level: SOL_SOCKET, opt: SO.REUSEADDR, type: 'int', early: true },
  reuseport: { level: SOL_SOCKET, opt: SO.REUSEPORT, type: 'int', early: true },
  bindtodevice: { level: SOL_SOCKET, opt: SO.BINDTODEVICE, type: 'bytes', len: 16, early: true },
  keepalive: { level: SOL_SOCKET, opt: SO.KEEPALIVE, type: 'int' },
  broadcast: { level: SOL_SOCKET, opt: SO.BROADCAST, type: 'int', only: { proto: 'udp' } },
  oobinline: { level: SOL_SOCKET, opt: SO.OOBINLINE, type: 'int' },
  priority: { level: SOL_SOCKET, opt: SO.PRIORITY, type: 'int' },
  rcvlowat: { level: SOL_SOCKET, opt: SO.RCVLOWAT, type: 'int' },
  linger: { level: SOL_SOCKET, opt: SO.LINGER, type: 'bytes', len: 8 },
  rcvtimeo: { level: SOL_SOCKET, opt: SO.RCVTIMEO, type: 'bytes', len: 16 },
  sndtimeo: { level: SOL_SOCKET, opt: SO.SNDTIMEO, type: 'bytes', len: 16 },
  timestamp: { level: SOL_SOCKET, opt: SO.TIMESTAMP, type: 'int' },
  mark: { level: SOL_SOCKET, opt: SO.MARK, type: 'int' },
  ip_tos: { level: IPPROTO_IP, opt: IP.TOS, type: 'int', only: { family: 'ipv4' } },
  ip_ttl: { level: IPPROTO_IP, opt: IP.TTL, type: 'int', only: { family: 'ipv4' } },
  ip_pktinfo: { level: IPPROTO_IP, opt: IP.PKTINFO, type: 'int', only: { family: 'ipv4', proto: 'udp' } },
  ip_mtu_discover: { level: IPPROTO_IP, opt: IP.MTU_DISCOVER, type: 'int', only: { family: 'ipv4' } },
  ip_recverr: { level: IPPROTO_IP, opt: IP.RECVERR, type: 'int', only: { family: 'ipv4' } },
  ip_recvtos: { level: IPPROTO_IP, opt: IP.RECVTOS, type: 'int', only: { family: 'ipv4' } },
  ip_freebind: { level: IPPROTO_IP, opt: IP.FREEBIND, type: 'int', early: true, only: { family: 'ipv4' } },
  ip_transparent: { level: IPPROTO_IP, opt: IP.TRANSPARENT, type: 'int', early: true, only: { family: 'ipv4' } },
  ip_multicast_ttl: { level: IPPROTO_IP, opt: IP.MULTICAST_TTL, type: 'int', only: { family: 'ipv4', proto: 'udp' } },
  ip_multicast_loop: { level: IPPROTO_IP, opt: IP.MULTICAST_LOOP, type: 'int', only: { family: 'ipv4', proto: 'udp' } },
  ipv6_v6only: { level: IPPROTO_IPV6, opt: IPV6.V6ONLY, type: 'int', early: true, only: { family: 'ipv6' } },
  ipv6_tclass: { level: IPPROTO_IPV6, opt: IPV6.TCLASS, type: 'int', only: { family: 'ipv6' } },
  ipv6_unicast_hops: { level: IPPROTO_IPV6, opt: IPV6.UNICAST_HOPS, type: 'int', only: { family: 'ipv6' } },
  ipv6_recverr: { level: IPPROTO_IPV6, opt: IPV6.RECVERR, type: 'int', only: { family: 'ipv6' } },
  ipv6_recvpktinfo: { level: IPPROTO_IPV6, opt: IPV6.RECVPKTINFO, type: 'int', only: { family: 'ipv6', proto: 'udp' } },
  ipv6_recvtclass: { level: IPPROTO_IPV6, opt: IPV6.RECVTCLASS, type: 'int', only: { family: 'ipv6' } },
  ipv6_freebind: { level: IPPROTO_IPV6, opt: IPV6.FREEBIND, type: 'int', early: true, only: { family: 'ipv6' } },
  ipv6_transparent: { level: IPPROTO_IPV6, opt: IPV6.TRANSPARENT, type: 'int', early: true, only: { family: 'ipv6' } },
  ipv6_multicast_hops: { level: IPPROTO_IPV6, opt: IPV6.MULTICAST_HOPS, type: 'int', only: { family: 'ipv6', proto: 'udp' } },
  ipv6_multicast_loop: { level: IPPROTO_IPV6, opt: IPV6.MULTICAST_LOOP, type: 'int', only: { family: 'ipv6', proto: 'udp' } },
  tcp_nodelay: { level: IPPROTO_TCP, opt: TCP.NODELAY, type: 'int', only: { proto: 'tcp' } },
  tcp_cork: { level: IPPROTO_TCP, opt: TCP.CORK, type: 'int', only: { proto: 'tcp' } },
  tcp_keepidle: { level: IPPROTO_TCP, opt: TCP.KEEPIDLE, type: 'int', only: { proto: 'tcp' } },
  tcp_keepintvl: { level: IPPROTO_TCP, opt: TCP.KEEPINTVL, type: 'int', only: { proto: 'tcp' } },
  tcp_keepcnt: { level: IPPROTO_TCP, opt: TCP.KEEPCNT, type: 'int', only: { proto: 'tcp' } },
  tcp_syncnt: { level: IPPROTO_TCP, opt: TCP.SYNCNT, type: 'int', only: { proto: 'tcp' } },
  tcp_linger2: { level: IPPROTO_TCP, opt: TCP.LINGER2, type: 'int', only: { proto: 'tcp' } },
  tcp_user_timeout: { level: IPPROTO_TCP, opt: TCP.USER_TIMEOUT, type: 'int', only: { proto: 'tcp' } },
  tcp_notsent_lowat: { level: IPPROTO_TCP, opt: TCP.NOTSENT_LOWAT, type: 'int', only: { proto: 'tcp' } },
  tcp_congestion: { level: IPPROTO_TCP, opt: TCP.CONGESTION, type: 'bytes', len: 16, only: { proto: 'tcp' } },
  tcp_defer_accept: { level: IPPROTO_TCP, opt: TCP.DEFER_ACCEPT, type: 'int', only: { proto: 'tcp', listen: true } },
  tcp_fastopen: { level: IPPROTO_TCP, opt: TCP.FASTOPEN, type: 'int', only: { proto: 'tcp', listen: true } },
};

const applies = (s: OptionSpec, family: Family, proto: Proto, listen: boolean): boolean =>
  (!s.only?.family || s.only.family === family) && (!s.only?.proto || s.only.proto === proto)
  && (s.only?.listen === undefined || s.only.listen === listen);

function readOption(fd: number, s: OptionSpec): number | string {
  const n = native();
  if (s.type === 'int') return n.getSockInt(fd, s.level, s.opt);
  return n.getSockOpt(fd, s.level, s.opt, s.len!).toString('base64');
}

/** Every option of the table that applies and that the kernel answers. */
function readOptions(fd: number, family: Family, proto: Proto, listen: boolean): Record<string, number | string> {
  const out: Record<string, number | string> = {};
  for (const [name, s] of Object.entries(OPTIONS)) {
    if (!applies(s, family, proto, listen)) continue;
    try {
      out[name] = readOption(fd, s);
    } catch (err) {
      if (errnoCode(err) !== 'ENOPROTOOPT' && errnoCode(err) !== 'EOPNOTSUPP') throw err;
    }
  }
  out.sndbuf = native().getSockInt(fd, SOL_SOCKET, SO.SNDBUF);
  out.rcvbuf = native().getSockInt(fd, SOL_SOCKET, SO.RCVBUF);
  return out;
}

/** Options of a new socket of this kind, to store only what differs (one socket per kind, per run). */
const fresh = new Map<string, Record<string, number | string>>();
export function changedOptions(fd: number, family: Family, proto: Proto, listen: boolean): Record<string, number | string> {
  const key = `${family}/${proto}/${listen}`;
  let base = fresh.get(key);
  if (!base) {
    const n = native();
    const s = n.socket(family === 'ipv6' ? AF_INET6 : AF_INET, proto === 'tcp' ? SOCK_STREAM : SOCK_DGRAM);
    try {
      base = readOptions(s, family, proto, listen);
    } finally {
      n.closeFd(s);
    }
    fresh.set(key, base);
  }
  const all = readOptions(fd, family, proto, listen);
  return Object.fromEntries(Object.entries(all).filter(([k, v]) => base[k] !== v));
}

/** Sets the record's options of one phase where they differ from what `fd` has now. */
export function applyOptions(fd: number, rec: InetRecord, early: boolean): void {
  const n = native();
  for (const [name, value] of Object.entries(rec.opts)) {
    const s = OPTIONS[name];
    if (!s || (s.early ?? false) !== early) continue;
    if (readOption(fd, s) === value) continue;
    try {
      if (typeof value === 'number') n.setSockInt(fd, s.level, s.opt, value);
      else n.setSockOpt(fd, s.level, s.opt, Buffer.from(value, 'base64'));
    } catch (err) {
      throw new Error(`cannot set socket option ${name} to ${String(value)}: ${(err as Error).message}`, { cause: err });
    }
  }
}

/** Buffer sizes: the kernel stores twice what is asked (socket(7)); FORCE passes net.core.*mem_max. */
export function applyBuffers(fd: number, rec: InetRecord): void {
  const n = native();
  for (const [name, get, force] of [['sndbuf', SO.SNDBUF, SO.SNDBUFFORCE], ['rcvbuf', SO.RCVBUF, SO.RCVBUFFORCE]] as const) {
    const want = rec.opts[name];
    if (typeof want !== 'number' || n.getSockInt(fd, SOL_SOCKET, get) === want) continue;
    n.setSockInt(fd, SOL_SOCKET, force, Math.floor(want / 2));
  }
}
