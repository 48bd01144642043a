/**
 * Socket options of inet sockets (socket(7), ip(7), ipv6(7), tcp(7), udp(7), raw(7), icmp(7)):
 * read from a table at checkpoint, stored only where they differ from a new socket's of the
 * same kind, set again on restore (those marked `early` before bind(2) and TCP_REPAIR, the
 * others once the socket is bound or connected, in the table's order).
 *
 * Not in the table, because the kernel cannot say what was set (getsockopt answers nothing,
 * or something else):
 * - IP_MULTICAST_IF set by interface index (struct ip_mreqn): getsockopt answers only the
 *   address (mc_addr), so an index set without an address comes back as "any".
 * - IPV6_HOPOPTS, IPV6_RTHDR, IPV6_DSTOPTS, IPV6_PKTINFO (sticky ancillary data), IPV6_MTU,
 *   TCP_AO_*, SO_ATTACH_REUSEPORT_CBPF/EBPF, SO_CNX_ADVICE, XFRM/IPsec policies and states:
 *   not read back, not carried (TCP_MD5SIG keys and a TCP_ULP are refused by inet.ts).
 * - SO_SNDLOWAT: Linux does not let it be changed; SO_PASSCRED, SO_PASSSEC, SO_PASSPIDFD: Linux
 *   refuses them on inet sockets (EOPNOTSUPP).
 * Multicast memberships and classic BPF filters are kept apart (inet-multicast.ts,
 * sockfilter.ts); SO_LOCK_FILTER is set by the latter, after the filter.
 */
import { SO, SOL_SOCKET } from '../arch/x86-64.js';
import { errnoCode } from '../errors.js';
import { native } from '../native/binding.js';
import type { InetRecord } from './inet.js';
import { IPPROTO_IP, IPPROTO_IPV6, IPPROTO_TCP, TCP, type Family, type Proto } from './inet-common.js';

/** socket(7) options past the ones in arch/x86-64.ts (asm-generic/socket.h). */
const S = {
  DONTROUTE: 5, NO_CHECK: 11, TIMESTAMPNS: 35, TIMESTAMPING: 37,
  RXQ_OVFL: 40, WIFI_STATUS: 41, NOFCS: 43, SELECT_ERR_QUEUE: 45, BUSY_POLL: 46, MAX_PACING_RATE: 47,
  INCOMING_CPU: 49, ZEROCOPY: 60, TXTIME: 61, TIMESTAMP_NEW: 63, TIMESTAMPNS_NEW: 64, TIMESTAMPING_NEW: 65,
  PREFER_BUSY_POLL: 69, BUSY_POLL_BUDGET: 70, BUF_LOCK: 72, RESERVE_MEM: 73, TXREHASH: 74, RCVMARK: 75,
  RCVPRIORITY: 82,
} as const;
/** ip(7) options. */
const IP = {
  TOS: 1, TTL: 2, HDRINCL: 3, OPTIONS: 4, ROUTER_ALERT: 5, RECVOPTS: 6, RETOPTS: 7, PKTINFO: 8,
  MTU_DISCOVER: 10, RECVERR: 11, RECVTTL: 12, RECVTOS: 13, FREEBIND: 15, PASSSEC: 18, TRANSPARENT: 19,
  RECVORIGDSTADDR: 20, MINTTL: 21, NODEFRAG: 22, CHECKSUM: 23, BIND_ADDRESS_NO_PORT: 24, RECVFRAGSIZE: 25,
  RECVERR_RFC4884: 26, MULTICAST_IF: 32, MULTICAST_TTL: 33, MULTICAST_LOOP: 34, MULTICAST_ALL: 49,
  UNICAST_IF: 50, LOCAL_PORT_RANGE: 51,
} as const;
/** ipv6(7) options. */
const IPV6 = {
  '2292PKTINFO': 2, '2292HOPOPTS': 3, '2292DSTOPTS': 4, '2292RTHDR': 5, CHECKSUM: 7, '2292HOPLIMIT': 8,
  FLOWINFO: 11, UNICAST_HOPS: 16, MULTICAST_IF: 17, MULTICAST_HOPS: 18, MULTICAST_LOOP: 19,
  ROUTER_ALERT: 22, MTU_DISCOVER: 23, RECVERR: 25, V6ONLY: 26, MULTICAST_ALL: 29,
  ROUTER_ALERT_ISOLATE: 30, RECVERR_RFC4884: 31, FLOWINFO_SEND: 33, HDRINCL: 36, RECVPKTINFO: 49,
  RECVHOPLIMIT: 51, RECVHOPOPTS: 53, RECVRTHDR: 56, RECVDSTOPTS: 58, RECVPATHMTU: 60, DONTFRAG: 62,
  RECVTCLASS: 66, TCLASS: 67, AUTOFLOWLABEL: 70, ADDR_PREFERENCES: 72, MINHOPCOUNT: 73,
  RECVORIGDSTADDR: 74, TRANSPARENT: 75, UNICAST_IF: 76, RECVFRAGSIZE: 77, FREEBIND: 78,
} as const;
/** tcp(7) options past inet-common's. */
const TCPX = {
  WINDOW_CLAMP: 10, QUICKACK: 12, THIN_LINEAR_TIMEOUTS: 16, SAVE_SYN: 27, FASTOPEN_CONNECT: 30,
  FASTOPEN_NO_COOKIE: 34, INQ: 36, TX_DELAY: 37,
} as const;
/** udp(7) options (SOL_UDP is IPPROTO_UDP; UDP-Lite answers them at SOL_UDP too). */
const SOL_UDP = 17;
const UDP = { CORK: 1, ENCAP: 100, NO_CHECK6_TX: 101, NO_CHECK6_RX: 102, SEGMENT: 103, GRO: 104 } as const;
const SOL_UDPLITE = 136, UDPLITE_SEND_CSCOV = 10, UDPLITE_RECV_CSCOV = 11;
/** raw(7) ICMP_FILTER at SOL_RAW; icmp6 ICMPV6_FILTER at IPPROTO_ICMPV6. */
const SOL_RAW = 255, ICMP_FILTER = 1, IPPROTO_ICMPV6 = 58, ICMPV6_FILTER = 1;

interface OptionSpec {
  level: number;
  opt: number;
  /** 'int', or a struct/string of at most `len` bytes. */
  type: 'int' | 'bytes';
  len?: number;
  /** Set before bind(2) (and before TCP_REPAIR, which overrides SO_REUSEADDR), else once built. */
  early?: boolean;
  /** Read for these sockets only (`unconnected`: not for a socket with a peer). */
  only?: { proto?: readonly Proto[]; family?: Family; listen?: boolean; unconnected?: boolean };
}

const DGRAM: readonly Proto[] = ['udp', 'udplite', 'raw', 'ping'];
const UDPS: readonly Proto[] = ['udp', 'udplite'];
const V4 = 'ipv4', V6 = 'ipv6';
const int = (level: number, opt: number, extra: Partial<OptionSpec> = {}): OptionSpec => ({ level, opt, type: 'int', ...extra });
const bytes = (level: number, opt: number, len: number, extra: Partial<OptionSpec> = {}): OptionSpec => ({ level, opt, type: 'bytes', len, ...extra });

/**
 * Options carried over, in the order they are set. Buffer sizes are handled apart
 * (SO_*BUFFORCE, the kernel doubles them); `buf_lock` (SO_BUF_LOCK, the user locks that setting
 * SO_SNDBUF/SO_RCVBUF leaves) is kept whenever a size is and set after them.
 * The timestamp flags share state (SOCK_RCVTSTAMP, SOCK_RCVTSTAMPNS, SOCK_TSTAMP_NEW and the
 * SO_TIMESTAMPING flags): each _OLD and _NEW spelling reads that state its own way, so all six
 * are read and set in this order, each only when it does not read back as stored yet.
 */
export const OPTIONS: Readonly<Record<string, OptionSpec>> = {
  reuseaddr: int(SOL_SOCKET, SO.REUSEADDR, { early: true }),
  reuseport: int(SOL_SOCKET, SO.REUSEPORT, { early: true }),
  bindtodevice: bytes(SOL_SOCKET, SO.BINDTODEVICE, 16, { early: true }),
  mark: int(SOL_SOCKET, SO.MARK, { early: true }),
  dontroute: int(SOL_SOCKET, S.DONTROUTE),
  keepalive: int(SOL_SOCKET, SO.KEEPALIVE),
  broadcast: int(SOL_SOCKET, SO.BROADCAST),
  oobinline: int(SOL_SOCKET, SO.OOBINLINE),
  no_check: int(SOL_SOCKET, S.NO_CHECK),
  rcvlowat: int(SOL_SOCKET, SO.RCVLOWAT),
  linger: bytes(SOL_SOCKET, SO.LINGER, 8),
  rcvtimeo: bytes(SOL_SOCKET, SO.RCVTIMEO, 16),
  sndtimeo: bytes(SOL_SOCKET, SO.SNDTIMEO, 16),
  timestamping: bytes(SOL_SOCKET, S.TIMESTAMPING, 8),
  timestamping_new: bytes(SOL_SOCKET, S.TIMESTAMPING_NEW, 8),
  timestamp: int(SOL_SOCKET, SO.TIMESTAMP),
  timestampns: int(SOL_SOCKET, S.TIMESTAMPNS),
  timestamp_new: int(SOL_SOCKET, S.TIMESTAMP_NEW),
  timestampns_new: int(SOL_SOCKET, S.TIMESTAMPNS_NEW),
  rxq_ovfl: int(SOL_SOCKET, S.RXQ_OVFL),
  wifi_status: int(SOL_SOCKET, S.WIFI_STATUS),
  nofcs: int(SOL_SOCKET, S.NOFCS),
  select_err_queue: int(SOL_SOCKET, S.SELECT_ERR_QUEUE),
  busy_poll: int(SOL_SOCKET, S.BUSY_POLL),
  prefer_busy_poll: int(SOL_SOCKET, S.PREFER_BUSY_POLL),
  busy_poll_budget: int(SOL_SOCKET, S.BUSY_POLL_BUDGET),
  max_pacing_rate: int(SOL_SOCKET, S.MAX_PACING_RATE),
  incoming_cpu: int(SOL_SOCKET, S.INCOMING_CPU),
  zerocopy: int(SOL_SOCKET, S.ZEROCOPY, { only: { proto: ['tcp', 'udp'] } }),
  txtime: bytes(SOL_SOCKET, S.TXTIME, 8),
  reserve_mem: int(SOL_SOCKET, S.RESERVE_MEM),
  txrehash: int(SOL_SOCKET, S.TXREHASH),
  rcvmark: int(SOL_SOCKET, S.RCVMARK),
  rcvpriority: int(SOL_SOCKET, S.RCVPRIORITY),
  peek_off: int(SOL_SOCKET, SO.PEEK_OFF, { only: { proto: DGRAM } }),
  buf_lock: int(SOL_SOCKET, S.BUF_LOCK),

  ip_freebind: int(IPPROTO_IP, IP.FREEBIND, { early: true, only: { family: V4 } }),
  ip_transparent: int(IPPROTO_IP, IP.TRANSPARENT, { early: true, only: { family: V4 } }),
  ip_bind_address_no_port: int(IPPROTO_IP, IP.BIND_ADDRESS_NO_PORT, { early: true, only: { family: V4 } }),
  ip_local_port_range: int(IPPROTO_IP, IP.LOCAL_PORT_RANGE, { early: true, only: { family: V4 } }),
  ip_unicast_if: int(IPPROTO_IP, IP.UNICAST_IF, { early: true, only: { family: V4 } }),
  ip_tos: int(IPPROTO_IP, IP.TOS, { only: { family: V4 } }),
  ip_ttl: int(IPPROTO_IP, IP.TTL, { only: { family: V4 } }),
  ip_hdrincl: int(IPPROTO_IP, IP.HDRINCL, { only: { family: V4, proto: ['raw'] } }),
  ip_options: bytes(IPPROTO_IP, IP.OPTIONS, 40, { only: { family: V4 } }),
  ip_router_alert: int(IPPROTO_IP, IP.ROUTER_ALERT, { only: { family: V4, proto: ['raw'] } }),
  ip_recvopts: int(IPPROTO_IP, IP.RECVOPTS, { only: { family: V4 } }),
  ip_retopts: int(IPPROTO_IP, IP.RETOPTS, { only: { family: V4 } }),
  ip_pktinfo: int(IPPROTO_IP, IP.PKTINFO, { only: { family: V4 } }),
  ip_mtu_discover: int(IPPROTO_IP, IP.MTU_DISCOVER, { only: { family: V4 } }),
  ip_recverr: int(IPPROTO_IP, IP.RECVERR, { only: { family: V4 } }),
  ip_recverr_rfc4884: int(IPPROTO_IP, IP.RECVERR_RFC4884, { only: { family: V4 } }),
  ip_recvttl: int(IPPROTO_IP, IP.RECVTTL, { only: { family: V4 } }),
  ip_recvtos: int(IPPROTO_IP, IP.RECVTOS, { only: { family: V4 } }),
  ip_passsec: int(IPPROTO_IP, IP.PASSSEC, { only: { family: V4 } }),
  ip_recvorigdstaddr: int(IPPROTO_IP, IP.RECVORIGDSTADDR, { only: { family: V4 } }),
  ip_minttl: int(IPPROTO_IP, IP.MINTTL, { only: { family: V4 } }),
  ip_nodefrag: int(IPPROTO_IP, IP.NODEFRAG, { only: { family: V4, proto: ['raw'] } }),
  ip_checksum: int(IPPROTO_IP, IP.CHECKSUM, { only: { family: V4 } }),
  ip_recvfragsize: int(IPPROTO_IP, IP.RECVFRAGSIZE, { only: { family: V4, proto: DGRAM } }),
  ip_multicast_if: bytes(IPPROTO_IP, IP.MULTICAST_IF, 4, { only: { family: V4, proto: DGRAM } }),
  ip_multicast_ttl: int(IPPROTO_IP, IP.MULTICAST_TTL, { only: { family: V4, proto: DGRAM } }),
  ip_multicast_loop: int(IPPROTO_IP, IP.MULTICAST_LOOP, { only: { family: V4, proto: DGRAM } }),
  ip_multicast_all: int(IPPROTO_IP, IP.MULTICAST_ALL, { only: { family: V4, proto: DGRAM } }),
  // After IP_TOS, which sets the priority from the TOS bits (ip(7)).
  priority: int(SOL_SOCKET, SO.PRIORITY),

  ipv6_v6only: int(IPPROTO_IPV6, IPV6.V6ONLY, { early: true, only: { family: V6 } }),
  ipv6_freebind: int(IPPROTO_IPV6, IPV6.FREEBIND, { early: true, only: { family: V6 } }),
  ipv6_transparent: int(IPPROTO_IPV6, IPV6.TRANSPARENT, { early: true, only: { family: V6 } }),
  ipv6_unicast_if: int(IPPROTO_IPV6, IPV6.UNICAST_IF, { early: true, only: { family: V6 } }),
  ipv6_addr_preferences: int(IPPROTO_IPV6, IPV6.ADDR_PREFERENCES, { early: true, only: { family: V6 } }),
  ipv6_flowinfo_send: int(IPPROTO_IPV6, IPV6.FLOWINFO_SEND, { early: true, only: { family: V6 } }),
  ipv6_tclass: int(IPPROTO_IPV6, IPV6.TCLASS, { only: { family: V6 } }),
  ipv6_unicast_hops: int(IPPROTO_IPV6, IPV6.UNICAST_HOPS, { only: { family: V6 } }),
  ipv6_hdrincl: int(IPPROTO_IPV6, IPV6.HDRINCL, { only: { family: V6, proto: ['raw'] } }),
  ipv6_checksum: int(IPPROTO_IPV6, IPV6.CHECKSUM, { only: { family: V6, proto: ['raw'] } }),
  ipv6_router_alert: int(IPPROTO_IPV6, IPV6.ROUTER_ALERT, { only: { family: V6, proto: ['raw'] } }),
  ipv6_router_alert_isolate: int(IPPROTO_IPV6, IPV6.ROUTER_ALERT_ISOLATE, { only: { family: V6, proto: ['raw'] } }),
  ipv6_mtu_discover: int(IPPROTO_IPV6, IPV6.MTU_DISCOVER, { only: { family: V6 } }),
  ipv6_recverr: int(IPPROTO_IPV6, IPV6.RECVERR, { only: { family: V6 } }),
  ipv6_recverr_rfc4884: int(IPPROTO_IPV6, IPV6.RECVERR_RFC4884, { only: { family: V6 } }),
  ipv6_recvpktinfo: int(IPPROTO_IPV6, IPV6.RECVPKTINFO, { only: { family: V6 } }),
  ipv6_recvhoplimit: int(IPPROTO_IPV6, IPV6.RECVHOPLIMIT, { only: { family: V6 } }),
  ipv6_recvhopopts: int(IPPROTO_IPV6, IPV6.RECVHOPOPTS, { only: { family: V6 } }),
  ipv6_recvrthdr: int(IPPROTO_IPV6, IPV6.RECVRTHDR, { only: { family: V6 } }),
  ipv6_recvdstopts: int(IPPROTO_IPV6, IPV6.RECVDSTOPTS, { only: { family: V6 } }),
  ipv6_2292pktinfo: int(IPPROTO_IPV6, IPV6['2292PKTINFO'], { only: { family: V6 } }),
  ipv6_2292hopopts: int(IPPROTO_IPV6, IPV6['2292HOPOPTS'], { only: { family: V6 } }),
  ipv6_2292dstopts: int(IPPROTO_IPV6, IPV6['2292DSTOPTS'], { only: { family: V6 } }),
  ipv6_2292rthdr: int(IPPROTO_IPV6, IPV6['2292RTHDR'], { only: { family: V6 } }),
  ipv6_2292hoplimit: int(IPPROTO_IPV6, IPV6['2292HOPLIMIT'], { only: { family: V6 } }),
  ipv6_flowinfo: int(IPPROTO_IPV6, IPV6.FLOWINFO, { only: { family: V6 } }),
  ipv6_recvpathmtu: int(IPPROTO_IPV6, IPV6.RECVPATHMTU, { only: { family: V6 } }),
  ipv6_dontfrag: int(IPPROTO_IPV6, IPV6.DONTFRAG, { only: { family: V6 } }),
  ipv6_recvtclass: int(IPPROTO_IPV6, IPV6.RECVTCLASS, { only: { family: V6 } }),
  ipv6_autoflowlabel: int(IPPROTO_IPV6, IPV6.AUTOFLOWLABEL, { only: { family: V6 } }),
  ipv6_minhopcount: int(IPPROTO_IPV6, IPV6.MINHOPCOUNT, { only: { family: V6 } }),
  ipv6_recvorigdstaddr: int(IPPROTO_IPV6, IPV6.RECVORIGDSTADDR, { only: { family: V6 } }),
  ipv6_recvfragsize: int(IPPROTO_IPV6, IPV6.RECVFRAGSIZE, { only: { family: V6, proto: DGRAM } }),
  ipv6_multicast_if: int(IPPROTO_IPV6, IPV6.MULTICAST_IF, { only: { family: V6, proto: DGRAM } }),
  ipv6_multicast_hops: int(IPPROTO_IPV6, IPV6.MULTICAST_HOPS, { only: { family: V6, proto: DGRAM } }),
  ipv6_multicast_loop: int(IPPROTO_IPV6, IPV6.MULTICAST_LOOP, { only: { family: V6, proto: DGRAM } }),
  ipv6_multicast_all: int(IPPROTO_IPV6, IPV6.MULTICAST_ALL, { only: { family: V6, proto: DGRAM } }),

  tcp_maxseg: int(IPPROTO_TCP, TCP.MAXSEG, { only: { proto: ['tcp'], unconnected: true } }),
  tcp_save_syn: int(IPPROTO_TCP, TCPX.SAVE_SYN, { only: { proto: ['tcp'], unconnected: true } }),
  tcp_fastopen_connect: int(IPPROTO_TCP, TCPX.FASTOPEN_CONNECT, { only: { proto: ['tcp'], unconnected: true } }),
  tcp_nodelay: int(IPPROTO_TCP, TCP.NODELAY, { only: { proto: ['tcp'] } }),
  tcp_cork: int(IPPROTO_TCP, TCP.CORK, { only: { proto: ['tcp'] } }),
  tcp_quickack: int(IPPROTO_TCP, TCPX.QUICKACK, { only: { proto: ['tcp'] } }),
  tcp_keepidle: int(IPPROTO_TCP, TCP.KEEPIDLE, { only: { proto: ['tcp'] } }),
  tcp_keepintvl: int(IPPROTO_TCP, TCP.KEEPINTVL, { only: { proto: ['tcp'] } }),
  tcp_keepcnt: int(IPPROTO_TCP, TCP.KEEPCNT, { only: { proto: ['tcp'] } }),
  tcp_syncnt: int(IPPROTO_TCP, TCP.SYNCNT, { only: { proto: ['tcp'] } }),
  tcp_linger2: int(IPPROTO_TCP, TCP.LINGER2, { only: { proto: ['tcp'] } }),
  tcp_user_timeout: int(IPPROTO_TCP, TCP.USER_TIMEOUT, { only: { proto: ['tcp'] } }),
  tcp_notsent_lowat: int(IPPROTO_TCP, TCP.NOTSENT_LOWAT, { only: { proto: ['tcp'] } }),
  tcp_window_clamp: int(IPPROTO_TCP, TCPX.WINDOW_CLAMP, { only: { proto: ['tcp'] } }),
  tcp_thin_linear_timeouts: int(IPPROTO_TCP, TCPX.THIN_LINEAR_TIMEOUTS, { only: { proto: ['tcp'] } }),
  tcp_fastopen_no_cookie: int(IPPROTO_TCP, TCPX.FASTOPEN_NO_COOKIE, { only: { proto: ['tcp'] } }),
  tcp_inq: int(IPPROTO_TCP, TCPX.INQ, { only: { proto: ['tcp'] } }),
  tcp_tx_delay: int(IPPROTO_TCP, TCPX.TX_DELAY, { only: { proto: ['tcp'] } }),
  tcp_congestion: bytes(IPPROTO_TCP, TCP.CONGESTION, 16, { only: { proto: ['tcp'] } }),
  tcp_defer_accept: int(IPPROTO_TCP, TCP.DEFER_ACCEPT, { only: { proto: ['tcp'], listen: true } }),
  tcp_fastopen: int(IPPROTO_TCP, TCP.FASTOPEN, { only: { proto: ['tcp'], listen: true } }),

  udp_cork: int(SOL_UDP, UDP.CORK, { only: { proto: UDPS } }),
  // ESP-in-UDP and the like (IKE daemons): the type; the keys live in the XFRM states, not here.
  udp_encap: int(SOL_UDP, UDP.ENCAP, { only: { proto: ['udp'] } }),
  udp_no_check6_tx: int(SOL_UDP, UDP.NO_CHECK6_TX, { only: { proto: UDPS, family: V6 } }),
  udp_no_check6_rx: int(SOL_UDP, UDP.NO_CHECK6_RX, { only: { proto: UDPS, family: V6 } }),
  udp_segment: int(SOL_UDP, UDP.SEGMENT, { only: { proto: UDPS } }),
  udp_gro: int(SOL_UDP, UDP.GRO, { only: { proto: UDPS } }),
  udplite_send_cscov: int(SOL_UDPLITE, UDPLITE_SEND_CSCOV, { only: { proto: ['udplite'] } }),
  udplite_recv_cscov: int(SOL_UDPLITE, UDPLITE_RECV_CSCOV, { only: { proto: ['udplite'] } }),

  icmp_filter: bytes(SOL_RAW, ICMP_FILTER, 4, { only: { proto: ['raw'], family: V4 } }),
  icmpv6_filter: bytes(IPPROTO_ICMPV6, ICMPV6_FILTER, 32, { only: { proto: ['raw'], family: V6 } }),
};

/** Keys of `opts` besides the table's: the buffer sizes (SO_SNDBUF, SO_RCVBUF as read). */
export const BUFFER_KEYS = ['sndbuf', 'rcvbuf'] as const;

const applies = (s: OptionSpec, family: Family, proto: Proto, listen: boolean, connected: boolean): boolean =>
  (!s.only?.family || s.only.family === family) && (!s.only?.proto || s.only.proto.includes(proto))
  && (s.only?.listen === undefined || s.only.listen === listen) && !(s.only?.unconnected && connected);

function readOption(fd: number, s: OptionSpec): number | string {
  const n = native();
  if (s.type === 'int') return n.getSockInt(fd, s.level, s.opt);
  return n.getSockOpt(fd, s.level, s.opt, s.len!).toString('base64');
}

/** Every option of the table that applies and that the kernel answers. */
function readOptions(fd: number, family: Family, proto: Proto, listen: boolean, connected: boolean): Record<string, number | string> {
  const out: Record<string, number | string> = {};
  for (const [name, s] of Object.entries(OPTIONS)) {
    if (!applies(s, family, proto, listen, connected)) continue;
    try {
      out[name] = readOption(fd, s);
    } catch (err) {
      // Not this socket's kind of option (or not this kernel's): nothing to carry.
      const code = errnoCode(err);
      if (code !== 'ENOPROTOOPT' && code !== 'EOPNOTSUPP' && code !== 'EINVAL' && code !== 'ENOTCONN') throw err;
    }
  }
  out.sndbuf = native().getSockInt(fd, SOL_SOCKET, SO.SNDBUF);
  out.rcvbuf = native().getSockInt(fd, SOL_SOCKET, SO.RCVBUF);
  return out;
}

/**
 * Options of a new socket of this kind (the same domain, type and protocol, from SO_DOMAIN,
 * SO_TYPE, SO_PROTOCOL), to store only what differs; one per kind, per run. A kind ferry may
 * not create (ping sockets outside net.ipv4.ping_group_range) stores every option.
 */
const fresh = new Map<string, Record<string, number | string>>();
export function changedOptions(fd: number, family: Family, proto: Proto, listen: boolean): Record<string, number | string> {
  const n = native();
  const connected = n.sockName(fd, true) !== null;
  const domain = n.getSockInt(fd, SOL_SOCKET, SO.DOMAIN), type = n.getSockInt(fd, SOL_SOCKET, SO.TYPE);
  const protocol = n.getSockInt(fd, SOL_SOCKET, SO.PROTOCOL);
  const key = `${domain}/${type}/${protocol}/${listen}/${connected}`;
  let base = fresh.get(key);
  if (!base) {
    let s: number | undefined;
    try {
      s = n.socket(domain, type, protocol);
      base = readOptions(s, family, proto, listen, connected);
    } catch {
      base = {};
    } finally {
      if (s !== undefined) n.closeFd(s);
    }
    fresh.set(key, base);
  }
  const all = readOptions(fd, family, proto, listen, connected);
  const out = Object.fromEntries(Object.entries(all).filter(([k, v]) => base[k] !== v));
  // Sizes come back through SO_*BUFFORCE, which locks them: the lock state is set after.
  if ((out.sndbuf !== undefined || out.rcvbuf !== undefined) && all.buf_lock !== undefined) out.buf_lock = all.buf_lock;
  return out;
}

/** An option's value for a message: the number, a name ("lo", "reno") as text, other bytes in hex. */
function showValue(value: number | string): string {
  if (typeof value === 'number') return String(value);
  const b = Buffer.from(value, 'base64');
  const text = b.toString('latin1').replace(/\0+$/, '');
  return /^[\x21-\x7e]{1,16}$/.test(text) ? JSON.stringify(text) : `0x${b.toString('hex')}`;
}

/** Sets the record's options of one phase, in the table's order, where `fd` does not read them back yet. */
export function applyOptions(fd: number, rec: InetRecord, early: boolean): void {
  const n = native();
  for (const [name, s] of Object.entries(OPTIONS)) {
    const value = rec.opts[name];
    if (value === undefined || (s.early ?? false) !== early) continue;
    if (readOption(fd, s) === value) continue;
    try {
      if (typeof value === 'number') n.setSockInt(fd, s.level, s.opt, value);
      else n.setSockOpt(fd, s.level, s.opt, Buffer.from(value, 'base64'));
    } catch (err) {
      throw new Error(`cannot set socket option ${name} to ${showValue(value)}: ${(err as Error).message}`, { cause: err });
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

/**
 * Checks the record's options against the table (untrusted image): known names, an int where
 * the table reads an int, base64 of at most the option's length where it reads bytes.
 */
export function checkOptions(opts: unknown, bad: (why: string) => never): void {
  if (typeof opts !== 'object' || opts === null || Array.isArray(opts)) bad('has no options');
  for (const [k, v] of Object.entries(opts as Record<string, unknown>)) {
    const name = JSON.stringify(k.slice(0, 40));
    const s = Object.hasOwn(OPTIONS, k) ? OPTIONS[k]! : undefined;
    if (!s && !(BUFFER_KEYS as readonly string[]).includes(k)) bad(`has an unknown option ${name}`);
    if (!s || s.type === 'int') {
      if (typeof v !== 'number' || !Number.isInteger(v) || v < -0x80000000 || v > 0x7fffffff) bad(`has an invalid value for option ${name}`);
    } else if (typeof v !== 'string' || v.length > Math.ceil(s.len! / 3) * 4 || !/^[A-Za-z0-9+/]*={0,2}$/.test(v)) {
      bad(`has an invalid value for option ${name}`);
    }
  }
}
