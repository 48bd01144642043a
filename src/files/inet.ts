/**
 * IPv4 and IPv6 sockets, TCP and UDP (ip(7), ipv6(7), tcp(7), udp(7)): kind 'inet'.
 *
 * The socket is taken into the controller with pidfd_getfd(2) (the same socket: reading its
 * options changes nothing, setting them changes the original) and read with getsockname(2),
 * getpeername(2), getsockopt(2) and TCP_INFO (state; for a listener the backlog and the number
 * of connections waiting in the accept queue).
 *
 * - TCP, closed (maybe bound) or listening: address, port, backlog and options come back.
 *   A listener with connections not accepted yet is refused (they would be lost).
 * - TCP, established: only with --tcp-established, through TCP_REPAIR (tcp(7)). In repair mode
 *   the socket sends nothing; TCP_REPAIR_QUEUE selects the send or the receive queue, whose
 *   sequence number TCP_QUEUE_SEQ reads or sets and whose bytes recv(MSG_PEEK) copies without
 *   consuming them. The send queue holds bytes sent but not acknowledged and bytes not sent
 *   yet (SIOCOUTQ, SIOCOUTQNSD); the receive queue the bytes the program has not read
 *   (SIOCINQ). TCP_REPAIR_WINDOW reads the window, TCP_INFO the negotiated options, TCP_MAXSEG
 *   in repair mode the peer's MSS, TCP_TIMESTAMP the timestamp clock. The original stays in
 *   repair mode until the checkpoint ends: when the tree is killed it closes in repair mode
 *   and sends neither FIN nor RST (tcp_close -> tcp_disconnect is silent in repair mode); when
 *   it runs on, repair mode is left without a window probe (TCP_REPAIR_OFF_NO_WP).
 *   Restore: a new socket in repair mode, both sequence numbers set, bind and connect (in
 *   repair mode connect(2) makes it established without a handshake), TCP_REPAIR_OPTIONS (MSS,
 *   window scaling, SACK, timestamps) and TCP_TIMESTAMP, the receive queue and the
 *   already-sent part of the send queue written into their queues, the window set, repair
 *   mode left (a window probe tells the peer we are back), then the unsent part sent for real.
 *   Leaving repair mode resets SO_REUSEADDR, so it is set again afterwards.
 *   Both ends of a connection inside the tree are rebuilt in repair mode before either leaves
 *   it, so neither sends to a socket that does not exist yet (which would answer RST).
 *   An accepted connection shares its port with the listener that accepted it: the listener
 *   is opened first (a bind after the connection's would conflict), the connection then binds
 *   the port in repair mode, which allows it.
 *   Other states (SYN_SENT, FIN_WAIT, CLOSE_WAIT, TIME_WAIT…) are refused, naming the state.
 * - UDP: bound and connected addresses, options, and the datagrams waiting to be read, each
 *   with its sender (SO_PEEK_OFF walks the queue with MSG_PEEK; it is put back after). On
 *   restore each datagram is sent again from its sender's address: from a socket of the image
 *   bound there if one is already open, else from a temporary socket bound to that address;
 *   when the address is taken by a socket outside the image the datagram is lost, as UDP may.
 *
 * Sockets are identified by their inode: descriptors of one socket (dup, fork) share a record.
 * Options are read from a table and set on restore only where they differ from a new socket's.
 */
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { SIOCINQ, SIOCOUTQ, SIOCOUTQNSD, SO, SOL_SOCKET } from '../arch/x86-64.js';
import { errnoCode, FerryError } from '../errors.js';
import type { FileRecord } from '../image/records.js';
import { native, type SockAddr } from '../native/binding.js';
import { O_CLOEXEC, O_NONBLOCK } from '../proc/fcntl.js';
import { NOT_YET, type DumpContext, type FdDesc, type FileKind, type OpenContext } from './types.js';

const AF_INET = 2, AF_INET6 = 10;
const SOCK_STREAM = 1, SOCK_DGRAM = 2;
const IPPROTO_IP = 0, IPPROTO_TCP = 6, IPPROTO_UDP = 17, IPPROTO_IPV6 = 41;

/** tcp(7) options (<linux/tcp.h>). */
const TCP = {
  NODELAY: 1, MAXSEG: 2, CORK: 3, KEEPIDLE: 4, KEEPINTVL: 5, KEEPCNT: 6, SYNCNT: 7, LINGER2: 8,
  DEFER_ACCEPT: 9, INFO: 11, CONGESTION: 13, USER_TIMEOUT: 18, REPAIR: 19, REPAIR_QUEUE: 20,
  QUEUE_SEQ: 21, REPAIR_OPTIONS: 22, FASTOPEN: 23, TIMESTAMP: 24, NOTSENT_LOWAT: 25, REPAIR_WINDOW: 29,
} as const;
const TCP_REPAIR_ON = 1, TCP_REPAIR_OFF = 0, TCP_REPAIR_OFF_NO_WP = -1;
const TCP_NO_QUEUE = 0, TCP_RECV_QUEUE = 1, TCP_SEND_QUEUE = 2;
/** struct tcp_repair_opt codes (TCPOPT_*). */
const TCPOPT_MSS = 2, TCPOPT_WINDOW = 3, TCPOPT_SACK_PERM = 4, TCPOPT_TIMESTAMP = 8;
/** tcp_info.tcpi_options bits. */
const TCPI_OPT_TIMESTAMPS = 1, TCPI_OPT_SACK = 2, TCPI_OPT_WSCALE = 4;
/** struct tcp_info is 104 bytes up to tcpi_total_retrans; more is fine. */
const TCP_INFO_LEN = 104;
/** struct tcp_repair_window: snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup (u32 each). */
const TCP_REPAIR_WINDOW_LEN = 20;
/** TCP states (include/net/tcp_states.h). */
const TCP_STATES = ['?', 'ESTABLISHED', 'SYN_SENT', 'SYN_RECV', 'FIN_WAIT1', 'FIN_WAIT2', 'TIME_WAIT',
  'CLOSE', 'CLOSE_WAIT', 'LAST_ACK', 'LISTEN', 'CLOSING', 'NEW_SYN_RECV'] as const;
const TCP_ESTABLISHED = 1, TCP_CLOSE = 7, TCP_LISTEN = 10;
/** ip(7), ipv6(7) options. */
const IP = { TOS: 1, TTL: 2, PKTINFO: 8, MTU_DISCOVER: 10, RECVERR: 11, RECVTOS: 13, FREEBIND: 15, TRANSPARENT: 19, MULTICAST_TTL: 33, MULTICAST_LOOP: 34 } as const;
const IPV6 = { UNICAST_HOPS: 16, MULTICAST_HOPS: 18, MULTICAST_LOOP: 19, RECVERR: 25, V6ONLY: 26, RECVPKTINFO: 49, RECVTCLASS: 66, TCLASS: 67, TRANSPARENT: 75, FREEBIND: 78 } as const;
/** Bytes written per send in repair mode (one skb per call for the receive queue). */
const REPAIR_CHUNK = 32768;
/** Largest UDP payload, and a bound on the datagrams read from one queue. */
const MAX_DATAGRAM = 65536, MAX_DATAGRAMS = 100000;
/** Status flags kept (O_CLOEXEC is per descriptor). */
const KEPT_FLAGS = O_NONBLOCK;

type Proto = 'tcp' | 'udp';
type Family = 'ipv4' | 'ipv6';

/** An address as stored: inet_ntop text, port, and for IPv6 flow label and scope. */
export interface Endpoint {
  address: string;
  port: number;
  flowinfo?: number;
  scopeId?: number;
}

/** What TCP_REPAIR needs to rebuild an established connection. Sequence numbers are u32. */
export interface TcpRepairState {
  /** Sequence number of the first byte of the send queue (the oldest unacknowledged byte). */
  sendSeq: number;
  /** Sequence number of the first byte of the receive queue (the next byte the program reads). */
  recvSeq: number;
  /** Image entry with the send queue ('' when empty), its length, and how much of it was never sent. */
  sendQueue: string;
  sendBytes: number;
  unsentBytes: number;
  /** Image entry with the receive queue ('' when empty) and its length. */
  recvQueue: string;
  recvBytes: number;
  /** The peer's MSS (mss_clamp), window scales, SACK and timestamps as negotiated. */
  mss: number;
  sndWscale: number | null;
  rcvWscale: number | null;
  sack: boolean;
  timestamps: boolean;
  /** TCP_TIMESTAMP: the connection's timestamp clock at dump. */
  tsval: number;
  /** TCP_REPAIR_WINDOW: snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup. */
  window: [number, number, number, number, number] | null;
}

/** A UDP datagram waiting to be read: its sender and its bytes (base64). */
export interface Datagram {
  from: Endpoint | null;
  data: string;
}

export interface InetRecord extends FileRecord {
  kind: 'inet';
  family: Family;
  proto: Proto;
  /** Socket inode at dump (identity; informational). */
  ino: string;
  /** O_NONBLOCK of the open file. */
  flags: number;
  /** TCP: 'closed', 'listen', 'established'; UDP: 'closed' (maybe bound) or 'connected'. */
  state: 'closed' | 'listen' | 'established' | 'connected';
  /** Bound address, or null when the socket has no port. */
  local: Endpoint | null;
  /** Peer address of a connected socket. */
  remote: Endpoint | null;
  /** listen(2) backlog. */
  backlog?: number;
  /** Socket options that differ from a new socket's, by name (numbers, or base64 for structs and strings): see OPTIONS. */
  opts: Record<string, number | string>;
  tcp?: TcpRepairState;
  /** File id of the other end of this connection when it is in the image too. */
  peer?: number | null;
  /** File ids to open before this one (the listener whose port an accepted connection shares). */
  after?: number[];
  datagrams?: Datagram[];
}

// ---- options ----

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
const OPTIONS: Readonly<Record<string, OptionSpec>> = {
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
function changedOptions(fd: number, family: Family, proto: Proto, listen: boolean): Record<string, number | string> {
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
function applyOptions(fd: number, rec: InetRecord, early: boolean): void {
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
function applyBuffers(fd: number, rec: InetRecord): void {
  const n = native();
  for (const [name, get, force] of [['sndbuf', SO.SNDBUF, SO.SNDBUFFORCE], ['rcvbuf', SO.RCVBUF, SO.RCVBUFFORCE]] as const) {
    const want = rec.opts[name];
    if (typeof want !== 'number' || n.getSockInt(fd, SOL_SOCKET, get) === want) continue;
    n.setSockInt(fd, SOL_SOCKET, force, Math.floor(want / 2));
  }
}

// ---- addresses ----

const toEndpoint = (a: SockAddr | null): Endpoint | null => {
  if (!a) return null;
  const e: Endpoint = { address: a.address, port: a.port };
  if (a.family === AF_INET6 && a.flowinfo) e.flowinfo = a.flowinfo;
  if (a.family === AF_INET6 && a.scopeId) e.scopeId = a.scopeId;
  return e;
};
const toSockAddr = (e: Endpoint, family: Family): SockAddr => ({
  family: family === 'ipv6' ? AF_INET6 : AF_INET, address: e.address, port: e.port,
  flowinfo: e.flowinfo ?? 0, scopeId: e.scopeId ?? 0,
});
const show = (e: Endpoint | null): string => (e ? (e.address.includes(':') ? `[${e.address}]:${e.port}` : `${e.address}:${e.port}`) : '(none)');

/** 16 bytes of an address in text (IPv4 as IPv4-mapped IPv6), for comparing. */
function ipKey(text: string): string {
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
const isAny = (text: string): boolean => ipKey(text) === ipKey('::') || ipKey(text) === ipKey('0.0.0.0');

// ---- finding the other sockets of a connection (dump) ----

interface NetEntry { local: Endpoint; remote: Endpoint; state: number; ino: string }

/** /proc/PID/net/tcp and tcp6 (proc(5)): every TCP socket of the task's network namespace. */
function procNetTcp(pid: number): NetEntry[] {
  const out: NetEntry[] = [];
  for (const [file, v6] of [['tcp', false], ['tcp6', true]] as const) {
    let text: string;
    try {
      text = readFileSync(`/proc/${pid}/net/${file}`, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10) continue;
      out.push({ local: parseProcAddr(f[1]!, v6), remote: parseProcAddr(f[2]!, v6), state: parseInt(f[3]!, 16), ino: f[9]! });
    }
  }
  return out;
}

/** "0100007F:1F90": the address as 32-bit words in host (little-endian) order, the port in hex. */
function parseProcAddr(s: string, v6: boolean): Endpoint {
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

const sameEndpoint = (a: Endpoint, b: Endpoint): boolean => a.port === b.port && ipKey(a.address) === ipKey(b.address);

/** File ids (in this image) of the sockets with the given inodes, by looking through the tree's descriptors. */
function fileIdsOf(inodes: Set<string>, ctx: DumpContext): Map<string, number> {
  const out = new Map<string, number>();
  if (inodes.size === 0) return out;
  for (const pid of ctx.pids) {
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      let link: string;
      try {
        link = readlinkSync(`/proc/${pid}/fd/${fd}`);
      } catch {
        continue;
      }
      const m = /^socket:\[(\d+)\]$/.exec(link);
      if (!m || !inodes.has(m[1]!) || out.has(m[1]!)) continue;
      const id = ctx.fileIdOf(pid, Number(fd));
      if (id !== undefined) out.set(m[1]!, id);
    }
  }
  return out;
}

/**
 * For an established connection: the file id of its other end if the tree holds it, and the
 * listeners of the tree on its local port (to be rebuilt before it).
 */
function relatives(d: FdDesc, local: Endpoint, remote: Endpoint, ctx: DumpContext): { peer: number | null; after: number[] } {
  const entries = procNetTcp(d.pid);
  const peerIno = entries.find((e) => e.state === TCP_ESTABLISHED && sameEndpoint(e.local, remote) && sameEndpoint(e.remote, local))?.ino;
  const listeners = entries.filter((e) => e.state === TCP_LISTEN && e.local.port === local.port
    && (isAny(e.local.address) || ipKey(e.local.address) === ipKey(local.address))).map((e) => e.ino);
  const ids = fileIdsOf(new Set([...(peerIno ? [peerIno] : []), ...listeners]), ctx);
  return {
    peer: peerIno !== undefined ? ids.get(peerIno) ?? null : null,
    after: listeners.map((i) => ids.get(i)).filter((i): i is number => i !== undefined),
  };
}

// ---- dump ----

const u32 = (v: number): number => v >>> 0;
const i32 = (v: number): number => v | 0;

function protoOf(d: FdDesc): { family: Family; proto: Proto } | null {
  if (!d.link.startsWith('socket:[')) return null;
  let name: string;
  try {
    name = native().sockProtoName(`/proc/${d.pid}/fd/${d.fd}`);
  } catch {
    return null;
  }
  switch (name) {
    case 'TCP': return { family: 'ipv4', proto: 'tcp' };
    case 'TCPv6': return { family: 'ipv6', proto: 'tcp' };
    case 'UDP': return { family: 'ipv4', proto: 'udp' };
    case 'UDPv6': return { family: 'ipv6', proto: 'udp' };
    default: return null;
  }
}

function where(d: FdDesc, local: Endpoint | null, remote: Endpoint | null, proto: Proto): string {
  return `${proto.toUpperCase()} socket fd ${d.fd} of pid ${d.pid} (${show(local)}${remote ? ` -> ${show(remote)}` : ''})`;
}

/** Peeks `len` bytes of the queue selected with TCP_REPAIR_QUEUE. */
function peekQueue(fd: number, len: number, what: string): Buffer {
  if (len === 0) return Buffer.alloc(0);
  const got = native().sockPeek(fd, len)?.data ?? Buffer.alloc(0);
  if (got.length !== len) throw new Error(`the ${what} queue holds ${len} bytes but ${got.length} could be read`);
  return got;
}

function dumpEstablished(g: number, d: FdDesc, ctx: DumpContext): TcpRepairState {
  const n = native();
  const reuse = n.getSockInt(g, SOL_SOCKET, SO.REUSEADDR);
  n.setSockInt(g, IPPROTO_TCP, TCP.REPAIR, TCP_REPAIR_ON);
  // Killed: stay in repair mode so closing sends nothing. Running on: leave it quietly; leaving
  // repair mode resets SO_REUSEADDR, which is put back.
  ctx.onFinish((leftRunning) => {
    if (!leftRunning) return;
    n.setSockInt(g, IPPROTO_TCP, TCP.REPAIR, TCP_REPAIR_OFF_NO_WP);
    if (reuse) n.setSockInt(g, SOL_SOCKET, SO.REUSEADDR, reuse);
  });
  const info = n.getSockOpt(g, IPPROTO_TCP, TCP.INFO, TCP_INFO_LEN);
  const options = info.readUInt8(5);
  const wscale = info.readUInt8(6);

  n.setSockInt(g, IPPROTO_TCP, TCP.REPAIR_QUEUE, TCP_SEND_QUEUE);
  const sendEnd = u32(n.getSockInt(g, IPPROTO_TCP, TCP.QUEUE_SEQ));
  const outq = n.sockIoctlInt(g, SIOCOUTQ);
  const unsent = n.sockIoctlInt(g, SIOCOUTQNSD);
  const sendData = peekQueue(g, outq, 'send');
  n.setSockInt(g, IPPROTO_TCP, TCP.REPAIR_QUEUE, TCP_RECV_QUEUE);
  const recvEnd = u32(n.getSockInt(g, IPPROTO_TCP, TCP.QUEUE_SEQ));
  const inq = n.sockIoctlInt(g, SIOCINQ);
  const recvData = peekQueue(g, inq, 'receive');
  n.setSockInt(g, IPPROTO_TCP, TCP.REPAIR_QUEUE, TCP_NO_QUEUE);

  const win = n.getSockOpt(g, IPPROTO_TCP, TCP.REPAIR_WINDOW, TCP_REPAIR_WINDOW_LEN);
  const timestamps = (options & TCPI_OPT_TIMESTAMPS) !== 0;
  return {
    sendSeq: u32(sendEnd - outq),
    recvSeq: u32(recvEnd - inq),
    sendQueue: outq > 0 ? ctx.blob('sendq', sendData) : '',
    sendBytes: outq,
    unsentBytes: Math.min(unsent, outq),
    recvQueue: inq > 0 ? ctx.blob('recvq', recvData) : '',
    recvBytes: inq,
    // In repair mode TCP_MAXSEG answers the MSS the peer announced (mss_clamp).
    mss: n.getSockInt(g, IPPROTO_TCP, TCP.MAXSEG),
    sndWscale: (options & TCPI_OPT_WSCALE) !== 0 ? wscale & 15 : null,
    rcvWscale: (options & TCPI_OPT_WSCALE) !== 0 ? wscale >> 4 : null,
    sack: (options & TCPI_OPT_SACK) !== 0,
    timestamps,
    tsval: timestamps ? u32(n.getSockInt(g, IPPROTO_TCP, TCP.TIMESTAMP)) : 0,
    window: win.length >= TCP_REPAIR_WINDOW_LEN
      ? [0, 1, 2, 3, 4].map((i) => win.readUInt32LE(i * 4)) as [number, number, number, number, number] : null,
  };
}

/** Every datagram of a UDP receive queue with its sender, read with MSG_PEEK at SO_PEEK_OFF. */
function peekDatagrams(g: number): Datagram[] {
  const n = native();
  const out: Datagram[] = [];
  let saved: number;
  try {
    saved = n.getSockInt(g, SOL_SOCKET, SO.PEEK_OFF);
    n.setSockInt(g, SOL_SOCKET, SO.PEEK_OFF, 0);
  } catch {
    // No SO_PEEK_OFF: only the first datagram can be seen.
    const one = n.sockPeek(g, MAX_DATAGRAM);
    return one ? [{ from: toEndpoint(one.from), data: one.data.toString('base64') }] : [];
  }
  try {
    for (let i = 0; i < MAX_DATAGRAMS; i++) {
      const got = n.sockPeek(g, MAX_DATAGRAM);
      if (!got) break;
      out.push({ from: toEndpoint(got.from), data: got.data.toString('base64') });
    }
  } finally {
    n.setSockInt(g, SOL_SOCKET, SO.PEEK_OFF, saved);
  }
  return out;
}

function dumpInet(d: FdDesc, ctx: DumpContext): Omit<InetRecord, 'id' | 'kind'> {
  const p = protoOf(d);
  if (!p) throw new FerryError('EUNSUPPORTED', `unsupported file: pid ${d.pid} fd ${d.fd} -> ${d.link} (not a TCP or UDP socket)`);
  const { family, proto } = p;
  const n = native();
  const g = ctx.grab(d);
  let local: Endpoint | null = null, remote: Endpoint | null = null;
  try {
    local = toEndpoint(n.sockName(g));
    remote = toEndpoint(n.sockName(g, true));
    if (local && local.port === 0) local = null;
    const base = { family, proto, ino: d.stat.ino.toString(), flags: d.fdinfo.flags & KEPT_FLAGS & ~O_CLOEXEC, local, remote };
    if (proto === 'udp') {
      const datagrams = peekDatagrams(g);
      return { ...base, state: remote ? 'connected' : 'closed', opts: changedOptions(g, family, proto, false), datagrams };
    }
    const info = n.getSockOpt(g, IPPROTO_TCP, TCP.INFO, TCP_INFO_LEN);
    const state = info.readUInt8(0);
    if (state === TCP_CLOSE) return { ...base, state: 'closed', remote: null, opts: changedOptions(g, family, proto, false) };
    if (state === TCP_LISTEN) {
      // For a listener tcpi_unacked is the accept queue's length and tcpi_sacked the backlog.
      const waiting = info.readUInt32LE(24);
      if (waiting > 0) {
        throw new FerryError('EUNSUPPORTED',
          `pid ${d.pid} fd ${d.fd}: listening TCP socket ${show(local)} has ${waiting} connection(s) not accepted yet, which cannot be checkpointed; try again once the program has accepted them`);
      }
      return { ...base, state: 'listen', remote: null, backlog: info.readUInt32LE(28), opts: changedOptions(g, family, proto, true) };
    }
    if (state === TCP_ESTABLISHED && local && remote) {
      if (!ctx.options.tcpEstablished) {
        throw new FerryError('EUNSUPPORTED',
          `pid ${d.pid} fd ${d.fd}: established TCP connection ${show(local)} -> ${show(remote)}; checkpoint it with --tcp-established (TCP_REPAIR) or close it first`);
      }
      const opts = changedOptions(g, family, proto, false);
      const rel = relatives(d, local, remote, ctx);
      const tcp = dumpEstablished(g, d, ctx);
      return { ...base, state: 'established', opts, tcp, peer: rel.peer, after: rel.after };
    }
    throw new FerryError('EUNSUPPORTED',
      `pid ${d.pid} fd ${d.fd}: TCP socket ${show(local)}${remote ? ` -> ${show(remote)}` : ''} is in state ${TCP_STATES[state] ?? state}, which cannot be checkpointed (only closed, listening and established sockets can)`);
  } catch (err) {
    if (err instanceof FerryError) throw err;
    throw new FerryError('EDUMP', `${where(d, local, remote, proto)}: ${(err as Error).message}`, { cause: err });
  }
}

// ---- restore ----

/** An established socket rebuilt in repair mode whose other end is not open yet. */
interface Waiting { fd: number; rec: InetRecord; unsent: Buffer }

function newSocket(rec: InetRecord): number {
  const n = native();
  return n.socket(rec.family === 'ipv6' ? AF_INET6 : AF_INET, rec.proto === 'tcp' ? SOCK_STREAM : SOCK_DGRAM,
    rec.proto === 'tcp' ? IPPROTO_TCP : IPPROTO_UDP);
}

/** Writes `data` into the queue selected in repair mode, or for real (MSG_DONTWAIT). */
function sendAll(fd: number, data: Buffer, what: string): void {
  const n = native();
  const MSG_DONTWAIT = 0x40;
  for (let off = 0; off < data.length;) {
    const k = n.sockSend(fd, data.subarray(off, Math.min(data.length, off + REPAIR_CHUNK)), MSG_DONTWAIT);
    if (k <= 0) throw new Error(`the ${what} took ${off} of ${data.length} bytes`);
    off += k;
  }
}

function queueBytes(ctx: OpenContext, name: string, len: number): Buffer {
  if (len === 0) return Buffer.alloc(0);
  const b = ctx.blob(name);
  if (b.length !== len) throw new FerryError('EIMAGE', `image entry ${name} holds ${b.length} bytes, the record says ${len}`);
  return b;
}

/** Rebuilds an established connection in repair mode; returns its unsent bytes (sent once out of repair). */
function buildEstablished(fd: number, rec: InetRecord, ctx: OpenContext): Buffer {
  const n = native();
  const t = rec.tcp!;
  const sendData = queueBytes(ctx, t.sendQueue, t.sendBytes);
  const recvData = queueBytes(ctx, t.recvQueue, t.recvBytes);
  const sent = t.sendBytes - t.unsentBytes;
  applyOptions(fd, rec, true);
  n.setSockInt(fd, IPPROTO_TCP, TCP.REPAIR, TCP_REPAIR_ON);
  applyBuffers(fd, rec);
  n.setSockInt(fd, IPPROTO_TCP, TCP.REPAIR_QUEUE, TCP_SEND_QUEUE);
  n.setSockInt(fd, IPPROTO_TCP, TCP.QUEUE_SEQ, i32(t.sendSeq));
  n.setSockInt(fd, IPPROTO_TCP, TCP.REPAIR_QUEUE, TCP_RECV_QUEUE);
  n.setSockInt(fd, IPPROTO_TCP, TCP.QUEUE_SEQ, i32(t.recvSeq));
  n.sockBind(fd, toSockAddr(rec.local!, rec.family));
  n.sockConnect(fd, toSockAddr(rec.remote!, rec.family));
  // struct tcp_repair_opt { u32 opt_code; u32 opt_val; }[]
  const opts: Array<[number, number]> = [[TCPOPT_MSS, t.mss]];
  if (t.sndWscale !== null && t.rcvWscale !== null) opts.push([TCPOPT_WINDOW, t.sndWscale | (t.rcvWscale << 16)]);
  if (t.sack) opts.push([TCPOPT_SACK_PERM, 0]);
  if (t.timestamps) opts.push([TCPOPT_TIMESTAMP, 0]);
  const buf = Buffer.alloc(opts.length * 8);
  opts.forEach(([c, v], i) => { buf.writeUInt32LE(c, i * 8); buf.writeUInt32LE(u32(v), i * 8 + 4); });
  n.setSockOpt(fd, IPPROTO_TCP, TCP.REPAIR_OPTIONS, buf);
  if (t.timestamps) n.setSockInt(fd, IPPROTO_TCP, TCP.TIMESTAMP, i32(t.tsval));
  n.setSockInt(fd, IPPROTO_TCP, TCP.REPAIR_QUEUE, TCP_RECV_QUEUE);
  sendAll(fd, recvData, 'receive queue');
  n.setSockInt(fd, IPPROTO_TCP, TCP.REPAIR_QUEUE, TCP_SEND_QUEUE);
  sendAll(fd, sendData.subarray(0, sent), 'send queue');
  n.setSockInt(fd, IPPROTO_TCP, TCP.REPAIR_QUEUE, TCP_NO_QUEUE);
  if (t.window) {
    const w = Buffer.alloc(TCP_REPAIR_WINDOW_LEN);
    t.window.forEach((v, i) => w.writeUInt32LE(u32(v), i * 4));
    n.setSockOpt(fd, IPPROTO_TCP, TCP.REPAIR_WINDOW, w);
  }
  return sendData.subarray(sent);
}

/** Takes a rebuilt connection out of repair mode (a window probe goes to the peer). */
function leaveRepair(fd: number, rec: InetRecord): void {
  const n = native();
  n.setSockInt(fd, IPPROTO_TCP, TCP.REPAIR, TCP_REPAIR_OFF);
  const reuse = rec.opts.reuseaddr;
  if (typeof reuse === 'number' && reuse !== 0) n.setSockInt(fd, SOL_SOCKET, SO.REUSEADDR, reuse);
  applyOptions(fd, rec, false);
}

function finishFlags(fd: number, rec: InetRecord): void {
  native().setFl(fd, rec.flags & KEPT_FLAGS);
}

function openEstablished(rec: InetRecord, ctx: OpenContext): number | typeof NOT_YET {
  if (!ctx.options.tcpEstablished) {
    throw new FerryError('EUNSUPPORTED',
      `restore: the image holds an established TCP connection ${show(rec.local)} -> ${show(rec.remote)} (file ${rec.id}); restore it with --tcp-established`);
  }
  if ((rec.after ?? []).some((id) => ctx.opened(id) === undefined)) return NOT_YET;
  const waiting = ctx.scratch<Waiting>('inet');
  const fd = newSocket(rec);
  try {
    const unsent = buildEstablished(fd, rec, ctx);
    const peer = rec.peer ?? null;
    if (peer !== null && ctx.opened(peer) === undefined) {
      // The other end is rebuilt later; both leave repair mode then.
      waiting.set(String(rec.id), { fd, rec, unsent });
      finishFlags(fd, rec);
      return fd;
    }
    const other = peer !== null ? waiting.get(String(peer)) : undefined;
    if (other) waiting.delete(String(peer));
    if (other) leaveRepair(other.fd, other.rec);
    leaveRepair(fd, rec);
    if (other) sendAll(other.fd, other.unsent, 'unsent data');
    sendAll(fd, unsent, 'unsent data');
    finishFlags(fd, rec);
    return fd;
  } catch (err) {
    native().closeFd(fd);
    throw err;
  }
}

/** Sends a datagram again to `to` from `from`: a socket of the image bound there, or a temporary one. */
function replayDatagram(to: SockAddr, d: Datagram, rec: InetRecord, ctx: OpenContext): boolean {
  const n = native();
  const data = Buffer.from(d.data, 'base64');
  if (!d.from) return false;
  const bound = ctx.scratch<number>('inet-udp-bound').get(`${ipKey(d.from.address)}:${d.from.port}`);
  if (bound !== undefined) {
    try {
      n.sockSend(bound, data, 0x40, to);
      return true;
    } catch { /* closed since, or another family: try a temporary socket */ }
  }
  const tmp = newSocket(rec);
  try {
    n.setSockInt(tmp, SOL_SOCKET, SO.REUSEADDR, 1);
    n.sockBind(tmp, toSockAddr(d.from, rec.family));
    n.sockSend(tmp, data, 0x40, to);
    return true;
  } catch {
    return false;
  } finally {
    n.closeFd(tmp);
  }
}

function openInet(rec: InetRecord, ctx: OpenContext): number | typeof NOT_YET {
  if (rec.state === 'established') return openEstablished(rec, ctx);
  const n = native();
  const fd = newSocket(rec);
  try {
    applyOptions(fd, rec, true);
    applyBuffers(fd, rec);
    // A TCP port may still be held by connections of the original in TIME_WAIT, which only a
    // socket with SO_REUSEADDR may share (socket(7)); the original had the port already, so the
    // flag is set for bind and listen and put back after (a listener keeps what it has).
    const reuse = rec.proto === 'tcp' && rec.local !== null && n.getSockInt(fd, SOL_SOCKET, SO.REUSEADDR) === 0;
    if (reuse) n.setSockInt(fd, SOL_SOCKET, SO.REUSEADDR, 1);
    if (rec.local) {
      try {
        n.sockBind(fd, toSockAddr(rec.local, rec.family));
      } catch (err) {
        if (errnoCode(err) !== 'EADDRINUSE') throw err;
        throw new FerryError('EADDRINUSE',
          `cannot restore ${rec.proto.toUpperCase()} socket ${show(rec.local)} (file ${rec.id}, ${rec.state}): the port is in use, by another socket or by connections of the original still in TIME_WAIT (they free it within a minute; ss -tan shows them)`, { cause: err });
      }
    }
    if (rec.state === 'listen') {
      applyOptions(fd, rec, false);
      n.sockListen(fd, rec.backlog ?? 128);
      if (reuse) n.setSockInt(fd, SOL_SOCKET, SO.REUSEADDR, 0);
    } else {
      if (reuse) n.setSockInt(fd, SOL_SOCKET, SO.REUSEADDR, 0);
      if (rec.state === 'connected' && rec.remote) n.sockConnect(fd, toSockAddr(rec.remote, rec.family));
      applyOptions(fd, rec, false);
    }
    if (rec.proto === 'udp') {
      const me = n.sockName(fd);
      if (me && me.port !== 0) ctx.scratch<number>('inet-udp-bound').set(`${ipKey(me.address)}:${me.port}`, fd);
      // Sent to the address the socket has now (a wildcard bind answers on loopback too).
      const to: SockAddr | null = me && me.port !== 0
        ? { ...me, address: isAny(me.address) ? (rec.family === 'ipv6' ? '::1' : '127.0.0.1') : me.address } : null;
      if (to) for (const d of rec.datagrams ?? []) replayDatagram(to, d, rec, ctx);
    }
    finishFlags(fd, rec);
    return fd;
  } catch (err) {
    n.closeFd(fd);
    throw err;
  }
}

// ---- shape checks ----

function checkRecord(rec: InetRecord): void {
  const bad = (why: string): never => {
    throw new FerryError('EIMAGE', `image: inet socket (file ${rec.id}) ${why}`);
  };
  const endpoint = (e: unknown, what: string): void => {
    if (e === null) return;
    const x = e as Endpoint;
    if (typeof x !== 'object' || typeof x.address !== 'string' || x.address.length > 64
      || !Number.isInteger(x.port) || x.port < 0 || x.port > 65535) bad(`has an invalid ${what} address`);
  };
  if (rec.family !== 'ipv4' && rec.family !== 'ipv6') bad('has an invalid family');
  if (rec.proto !== 'tcp' && rec.proto !== 'udp') bad('has an invalid protocol');
  if (!['closed', 'listen', 'established', 'connected'].includes(rec.state)) bad('has an invalid state');
  if (!Number.isSafeInteger(rec.flags)) bad('has invalid flags');
  endpoint(rec.local, 'local');
  endpoint(rec.remote, 'remote');
  if (typeof rec.opts !== 'object' || rec.opts === null) bad('has no options');
  for (const [k, v] of Object.entries(rec.opts)) {
    if (!Object.hasOwn(OPTIONS, k) && k !== 'sndbuf' && k !== 'rcvbuf') bad(`has an unknown option ${JSON.stringify(k.slice(0, 40))}`);
    if (typeof v !== 'number' && (typeof v !== 'string' || v.length > 64)) bad(`has an invalid value for option ${k}`);
  }
  if ((rec.state === 'established' || rec.state === 'connected') && (!rec.local || !rec.remote)) bad('is connected without addresses');
  if (rec.state === 'listen' && (!Number.isInteger(rec.backlog) || rec.backlog! < 0)) bad('has an invalid backlog');
  if (rec.state === 'established') {
    const t = rec.tcp;
    if (!t || typeof t !== 'object') return bad('has no repair state');
    for (const k of ['sendSeq', 'recvSeq', 'sendBytes', 'unsentBytes', 'recvBytes', 'mss', 'tsval'] as const) {
      if (!Number.isInteger(t[k]) || t[k] < 0 || t[k] > 0xffffffff) bad(`has an invalid ${k}`);
    }
    if (t.unsentBytes > t.sendBytes) bad('has more unsent bytes than queued');
    if (t.window !== null && (!Array.isArray(t.window) || t.window.length !== 5)) bad('has an invalid window');
  }
  if (rec.datagrams !== undefined && (!Array.isArray(rec.datagrams) || rec.datagrams.length > MAX_DATAGRAMS
    || !rec.datagrams.every((x) => typeof x === 'object' && x !== null && typeof x.data === 'string'
      && x.data.length <= Math.ceil(MAX_DATAGRAM / 3) * 4))) bad('has invalid datagrams');
}

export const inet: FileKind<InetRecord> = {
  kind: 'inet',

  matches(fd: FdDesc): boolean {
    return protoOf(fd) !== null;
  },

  key(fd: FdDesc): string {
    return `inet:${fd.stat.ino}`;
  },

  dump: dumpInet,

  check: checkRecord,

  open(rec: InetRecord, ctx: OpenContext): number | typeof NOT_YET {
    try {
      return openInet(rec, ctx);
    } catch (err) {
      if (err instanceof FerryError) throw err;
      throw new FerryError('EOPEN', `cannot restore ${rec.proto.toUpperCase()} socket ${show(rec.local)}${rec.remote ? ` -> ${show(rec.remote)}` : ''} (file ${rec.id}, ${rec.state}): ${(err as Error).message}`, { cause: err });
    }
  },
};
