/**
 * IPv4 and IPv6 sockets (ip(7), ipv6(7)): TCP, UDP, UDP-Lite, raw and ICMP "ping" sockets,
 * kind 'inet'.
 *
 * The socket is taken into the controller with pidfd_getfd(2) (the same socket: reading its
 * options changes nothing, setting them changes the original) and read with getsockname(2),
 * getpeername(2), getsockopt(2) and TCP_INFO (state; for a listener the backlog and the number
 * of connections waiting in the accept queue).
 *
 * - TCP: see tcp.ts (every state; established and half-closed connections through TCP_REPAIR).
 * - UDP and UDP-Lite (udp(7), udplite(7)): bound and connected addresses, options, shutdown
 *   bits (sock_diag INET_DIAG_SHUTDOWN; shutdown(2) on a UDP socket only marks it), and the
 *   datagrams waiting to be read, each with its sender (SO_PEEK_OFF walks the queue with
 *   MSG_PEEK; it is put back after). On restore each datagram is sent again from its sender's
 *   address: from a socket of the image bound there if one is already open, else from a
 *   temporary socket bound to that address; when the address is taken by a socket outside the
 *   image the datagram is lost, as UDP may. A corked socket (UDP_CORK) holding data not sent
 *   yet is refused: the pending datagram cannot be read.
 * - Raw sockets (raw(7), SOCK_RAW with an IP protocol) and ping sockets (icmp(7), SOCK_DGRAM
 *   with IPPROTO_ICMP/ICMPV6; net.ipv4.ping_group_range decides who may make them, at restore
 *   too): protocol, bound and connected addresses (a ping socket's port is its ICMP id),
 *   options (IP_HDRINCL, ICMP_FILTER, ICMPV6_FILTER, IPV6_CHECKSUM…). Their queued packets are
 *   not carried: only the first can be read without consuming it (raw_recvmsg and
 *   ping_recvmsg ignore SO_PEEK_OFF), and the original must be left as it was; they are
 *   dropped, as a network may, with a warning naming the bytes.
 * - Every kind: classic BPF filters (inet-filter.ts); datagram kinds: multicast memberships
 *   (inet-multicast.ts). SO_REUSEPORT groups come back as groups: every member is bound again
 *   with SO_REUSEPORT set before bind.
 *
 * Sockets are identified by their inode: descriptors of one socket (dup, fork) share a record.
 * Options are read from a table and set on restore only where they differ from a new socket's.
 */
import { readFileSync } from 'node:fs';
import { SIOCOUTQ, SO, SOL_SOCKET } from '../arch/x86-64.js';
import { errnoCode, FerryError } from '../errors.js';
import type { FileRecord } from '../image/records.js';
import { native, type SockAddr } from '../native/binding.js';
import { O_CLOEXEC } from '../proc/fcntl.js';
import {
  AF_INET, AF_INET6, finishFlags, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDPLITE, isAny, isDatagram, ipKey, KEPT_FLAGS, newSocket,
  parseProcAddr, PROTOS, show, toEndpoint, toSockAddr, type Endpoint, type Family, type Proto,
} from './inet-common.js';
import { applyFilter, checkFilter, dumpFilter, type SockFilter } from './inet-filter.js';
import { applyMemberships, checkMemberships, dumpMemberships, type Membership } from './inet-multicast.js';
import { applyBuffers, applyOptions, changedOptions, checkOptions } from './sockopt.js';
import { checkTcp, dumpTcp, openEstablished, openSynSent, reclaimTimeWait, releaseEstablished, type TcpRepairState } from './tcp.js';
import { NOT_YET, type DumpContext, type FdDesc, type FileKind, type OpenContext, type TaskContext } from './types.js';

export type { Endpoint, TcpRepairState };

/** Largest UDP payload, and a bound on the datagrams read from one queue. */
const MAX_DATAGRAM = 65536, MAX_DATAGRAMS = 100000;
/** sk_shutdown bits (INET_DIAG_SHUTDOWN) and shutdown(2) `how`. */
const RCV_SHUTDOWN = 1, SEND_SHUTDOWN = 2, SHUT_RD = 0, SHUT_WR = 1;
const TCP_ESTABLISHED = 1, TCP_ULP = 31;
/** socket(7): drops the program of the socket's SO_REUSEPORT group. */
const SO_DETACH_REUSEPORT_BPF = 68;

/** A UDP datagram waiting to be read: its sender and its bytes (base64). */
export interface Datagram {
  from: Endpoint | null;
  data: string;
}

export interface InetRecord extends FileRecord {
  kind: 'inet';
  family: Family;
  /** 'tcp', 'udp'; since issue 9 also 'udplite', 'raw', 'ping'. */
  proto: Proto;
  /** Raw sockets: the IP protocol number given to socket(2) (0..255). */
  protocol?: number;
  /** Socket inode at dump (identity; informational). */
  ino: string;
  /** O_NONBLOCK of the open file. */
  flags: number;
  /**
   * TCP: 'closed', 'listen', 'established' (any synchronized state, see tcp.ts), 'syn-sent'
   * (connect(2) in progress); datagram kinds: 'closed' (maybe bound) or 'connected'.
   */
  state: 'closed' | 'listen' | 'established' | 'syn-sent' | 'connected';
  /** Bound address (port 0 when bound without one: IP_BIND_ADDRESS_NO_PORT, raw), or null when unbound. */
  local: Endpoint | null;
  /** Peer address of a connected socket. */
  remote: Endpoint | null;
  /** listen(2) backlog. */
  backlog?: number;
  /** Socket options that differ from a new socket's, by name (numbers, or base64 for structs and strings): see sockopt.ts. */
  opts: Record<string, number | string>;
  tcp?: TcpRepairState;
  /** File id of the other end of this connection when it is in the image too. */
  peer?: number | null;
  /** File ids to open before this one (the listener whose port an accepted connection shares). */
  after?: number[];
  datagrams?: Datagram[];
  /** Datagram kinds: shutdown(2) bits (1 receive, 2 send), when any. */
  shutdown?: number;
  /** A classic BPF filter (inet-filter.ts). */
  filter?: SockFilter;
  /** Datagram kinds: multicast groups joined (inet-multicast.ts). */
  memberships?: Membership[];
}
// ---- dump ----

/** sockfs's names (system.sockprotoname) of the sockets this kind handles. */
const PROTO_NAMES: Readonly<Record<string, { family: Family; proto: Proto }>> = {
  TCP: { family: 'ipv4', proto: 'tcp' }, TCPv6: { family: 'ipv6', proto: 'tcp' },
  UDP: { family: 'ipv4', proto: 'udp' }, UDPv6: { family: 'ipv6', proto: 'udp' },
  'UDP-Lite': { family: 'ipv4', proto: 'udplite' }, UDPLITEv6: { family: 'ipv6', proto: 'udplite' },
  RAW: { family: 'ipv4', proto: 'raw' }, RAWv6: { family: 'ipv6', proto: 'raw' },
  PING: { family: 'ipv4', proto: 'ping' }, PINGv6: { family: 'ipv6', proto: 'ping' },
};

function protoOf(d: FdDesc): { family: Family; proto: Proto } | null {
  if (!d.link.startsWith('socket:[')) return null;
  let name: string;
  try {
    name = native().sockProtoName(`/proc/${d.pid}/fd/${d.fd}`);
  } catch {
    return null;
  }
  return Object.hasOwn(PROTO_NAMES, name) ? PROTO_NAMES[name]! : null;
}

const NAMES: Readonly<Record<Proto, string>> = { tcp: 'TCP', udp: 'UDP', udplite: 'UDP-Lite', raw: 'raw', ping: 'ping' };

function what(proto: Proto, family: Family, local: Endpoint | null, remote: Endpoint | null, protocol?: number): string {
  const p = proto === 'raw' ? `raw ${family === 'ipv6' ? 'IPv6' : 'IPv4'} (protocol ${protocol ?? '?'})` : NAMES[proto];
  return `${p} socket ${show(local)}${remote ? ` -> ${show(remote)}` : ''}`;
}

function where(d: FdDesc, local: Endpoint | null, remote: Endpoint | null, proto: Proto, family: Family, protocol?: number): string {
  return `${what(proto, family, local, remote, protocol)} fd ${d.fd} of pid ${d.pid}`;
}

/**
 * A raw or ping socket's line in /proc/PID/net/raw, raw6, icmp or icmp6 (proc(5)), by inode:
 * its fields split on blanks, or null.
 */
function portlessLine(pid: number, ino: string, family: Family, proto: 'raw' | 'ping'): string[] | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/net/${proto === 'raw' ? 'raw' : 'icmp'}${family === 'ipv6' ? '6' : ''}`, 'utf8');
  } catch {
    return null;
  }
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length >= 10 && f[9] === ino) return f;
  }
  return null;
}

/**
 * A raw or ping socket's peer: connect(2) gives it a destination but no port, and getpeername
 * answers ENOTCONN without a port; its /proc line (portlessLine) has it, with the state
 * (TCP_ESTABLISHED once connected).
 */
function portlessPeer(pid: number, ino: string, family: Family, proto: 'raw' | 'ping'): Endpoint | null {
  const f = portlessLine(pid, ino, family, proto);
  if (!f || parseInt(f[3]!, 16) !== TCP_ESTABLISHED) return null;
  return { ...parseProcAddr(f[2]!, family === 'ipv6'), port: 0 };
}

/** The bytes (sk_rmem_alloc, the "rx_queue" of its /proc line) queued on a raw or ping socket. */
function portlessQueued(pid: number, ino: string, family: Family, proto: 'raw' | 'ping'): number {
  const rx = portlessLine(pid, ino, family, proto)?.[4]?.split(':')[1];
  return rx !== undefined ? parseInt(rx, 16) || 0 : 0;
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

/** The datagram-kind part of a record: state, options, shutdown, queue, memberships. */
/**
 * What sock_diag says of the namespace's sockets of one family and protocol that getsockopt
 * does not: shutdown bits (UDP, UDP-Lite) and TCP_MD5SIG keys (TCP), by inode, for the sockets
 * that have either. One dump per family and protocol per checkpoint (the tree is frozen).
 */
const diags = new WeakMap<DumpContext, Map<string, Map<number, { shutdown: number; md5: boolean }>>>();
function diagOf(ctx: DumpContext, family: Family, protocol: number): Map<number, { shutdown: number; md5: boolean }> {
  let byKind = diags.get(ctx);
  if (!byKind) diags.set(ctx, byKind = new Map());
  let m = byKind.get(`${family}/${protocol}`);
  if (!m) {
    m = new Map();
    for (const s of native().inetDiag(family === 'ipv6' ? AF_INET6 : AF_INET, protocol)) {
      if (s.shutdown !== 0 || s.md5) m.set(s.ino, { shutdown: s.shutdown, md5: s.md5 });
    }
    byKind.set(`${family}/${protocol}`, m);
  }
  return m;
}

/** The fields every inet record has, as dumpInet reads them. */
type Base = Pick<InetRecord, 'family' | 'proto' | 'protocol' | 'ino' | 'flags' | 'local' | 'remote'>;

function dumpDatagram(d: FdDesc, g: number, base: Base, here: string, ctx: DumpContext): Omit<InetRecord, 'id' | 'kind'> {
  const n = native();
  const { family, proto } = base;
  const opts = changedOptions(g, family, proto, false);
  if (typeof opts.udp_cork === 'number' && opts.udp_cork !== 0) {
    const pending = n.sockIoctlInt(g, SIOCOUTQ);
    if (pending > 0) {
      throw new FerryError('EUNSUPPORTED',
        `${here} is corked (UDP_CORK) with ${pending} bytes not sent yet, which cannot be read back; checkpoint it once the program has uncorked it`);
    }
  }
  const rec: Omit<InetRecord, 'id' | 'kind'> = { ...base, state: base.remote ? 'connected' : 'closed', opts };
  if (proto === 'udp' || proto === 'udplite') {
    const bits = diagOf(ctx, family, proto === 'udp' ? IPPROTO_UDP : IPPROTO_UDPLITE).get(Number(d.stat.ino))?.shutdown ?? 0;
    if (bits !== 0) rec.shutdown = bits & (RCV_SHUTDOWN | SEND_SHUTDOWN);
    rec.datagrams = peekDatagrams(g);
  }
  if (proto === 'raw' || proto === 'ping') {
    const queued = portlessQueued(d.pid, base.ino, family, proto);
    if (queued > 0) ctx.warn(`pid ${d.pid} fd ${d.fd}: ${what(proto, family, base.local, base.remote, base.protocol)}: ${queued} bytes of queued packets are not kept (network traffic, dropped)`);
  }
  const memberships = dumpMemberships(d.pid, g, family);
  if (memberships.length > 0) rec.memberships = memberships;
  return rec;
}

/**
 * An upper layer protocol on a TCP connection (TCP_ULP, tcp(7): "tls" for kernel TLS, "espintcp")
 * keeps keys and record state no getsockopt gives back whole: refused, naming it.
 */
function refuseUlp(g: number, here: string): void {
  let ulp: string;
  try {
    ulp = native().getSockOpt(g, IPPROTO_TCP, TCP_ULP, 16).toString('latin1').replace(/\0.*$/s, '');
  } catch {
    return;
  }
  if (ulp !== '') {
    throw new FerryError('EUNSUPPORTED',
      `${here} runs the upper layer protocol ${JSON.stringify(ulp)} (TCP_ULP), whose state cannot be checkpointed; close the connection or checkpoint without it`);
  }
}

function dumpInet(d: FdDesc, ctx: DumpContext): Omit<InetRecord, 'id' | 'kind'> {
  const p = protoOf(d);
  if (!p) throw new FerryError('EUNSUPPORTED', `unsupported file: pid ${d.pid} fd ${d.fd} -> ${d.link} (not an IPv4 or IPv6 socket ferry knows)`);
  const { family, proto } = p;
  const n = native();
  const g = ctx.grab(d);
  let local: Endpoint | null = null, remote: Endpoint | null = null;
  let protocol: number | undefined;
  try {
    if (proto === 'raw') protocol = n.getSockInt(g, SOL_SOCKET, SO.PROTOCOL);
    local = toEndpoint(n.sockName(g));
    remote = toEndpoint(n.sockName(g, true));
    // A raw socket's "port" is its protocol; bound means an address.
    if (local && proto === 'raw') local = { ...local, port: 0 };
    if (local && local.port === 0 && isAny(local.address)) local = null;
    if ((proto === 'raw' || proto === 'ping') && !remote) remote = portlessPeer(d.pid, d.stat.ino.toString(), family, proto);
    else if (proto === 'raw' && remote) remote = { ...remote, port: 0 };
    const base: Base = {
      family, proto, ...(protocol !== undefined ? { protocol } : {}),
      ino: d.stat.ino.toString(), flags: d.fdinfo.flags & KEPT_FLAGS & ~O_CLOEXEC, local, remote,
    };
    const here = where(d, local, remote, proto, family, protocol);
    if (proto === 'tcp') {
      refuseUlp(g, here);
      if (diagOf(ctx, family, IPPROTO_TCP).get(Number(d.stat.ino))?.md5) {
        throw new FerryError('EUNSUPPORTED',
          `${here} holds TCP_MD5SIG keys (RFC 2385), which the kernel does not give back, so a restored socket would lack them; checkpoint it once they are removed`);
      }
    }
    const rec = proto === 'tcp' ? dumpTcp(d, g, base, ctx) : dumpDatagram(d, g, base, here, ctx);
    const filter = dumpFilter(g, here);
    return filter ? { ...rec, filter } : rec;
  } catch (err) {
    if (err instanceof FerryError) throw err;
    throw new FerryError('EDUMP', `${where(d, local, remote, proto, family, protocol)}: ${(err as Error).message}`, { cause: err });
  }
}

// ---- restore ----

/** A socket of the image bound to an address datagrams were sent from, and what its record set. */
interface Sender { fd: number; rec: InetRecord }

/**
 * Sends one datagram as it was sent: the sender's UDP_CORK would hold it back, its UDP_SEGMENT
 * split it, and its UDP_NO_CHECK6_TX send it without the checksum IPv6 receivers require
 * (udp(7)), so these are off for the send and set again after.
 */
function sendPlain(s: Sender, data: Buffer, to: SockAddr): void {
  const n = native();
  const SOL_UDP = 17, UDP_CORK = 1, UDP_NO_CHECK6_TX = 101, UDP_SEGMENT = 103;
  const held: Array<[number, number]> = [];
  for (const [opt, v] of [[UDP_CORK, s.rec.opts.udp_cork], [UDP_SEGMENT, s.rec.opts.udp_segment],
    [UDP_NO_CHECK6_TX, s.rec.opts.udp_no_check6_tx]] as const) {
    if (typeof v === 'number' && v !== 0) held.push([opt, v]);
  }
  for (const [opt] of held) n.setSockInt(s.fd, SOL_UDP, opt, 0);
  try {
    n.sockSend(s.fd, data, 0x40, to);
  } finally {
    for (const [opt, v] of held) n.setSockInt(s.fd, SOL_UDP, opt, v);
  }
}

/** Sends a datagram again to `to` from `from`: a socket of the image bound there, or a temporary one. */
function replayDatagram(to: SockAddr, d: Datagram, rec: InetRecord, ctx: OpenContext): boolean {
  const n = native();
  const data = Buffer.from(d.data, 'base64');
  if (!d.from) return false;
  const bound = ctx.scratch<Sender>('inet-udp-bound').get(`${rec.proto}:${ipKey(d.from.address)}:${d.from.port}`);
  if (bound !== undefined) {
    try {
      sendPlain(bound, data, to);
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

/**
 * A member of a SO_REUSEPORT group gets its datagrams back only if the group hands them to it:
 * the kernel picks a member by a hash of the addresses, unless a program attached to the group
 * (SO_ATTACH_REUSEPORT_CBPF) answers the member's index. Members join in the order they bind,
 * and the image's members are bound in the order they are opened: this socket's index is the
 * number of the group's sockets opened before it. While its datagrams are sent again a
 * program "ret #index" steers them to it; it is detached after (SO_DETACH_REUSEPORT_BPF).
 * Counted for every member; steered only when earlier members exist and datagrams wait. A
 * member bound by a process outside the image would shift the index (the hash decides then).
 */
function steerToSelf(fd: number, rec: InetRecord, me: SockAddr, ctx: OpenContext): boolean {
  if (typeof rec.opts.reuseport !== 'number' || rec.opts.reuseport === 0) return false;
  const members = ctx.scratch<number>('inet-reuseport');
  const key = `${rec.family}:${rec.proto}:${ipKey(me.address)}:${me.port}`;
  const index = members.get(key) ?? 0;
  members.set(key, index + 1);
  if (index === 0 || !rec.datagrams?.length) return false;
  // struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; }: BPF_RET | BPF_K (0x06), k = index.
  const ret = Buffer.alloc(8);
  ret.writeUInt16LE(0x06, 0);
  ret.writeUInt32LE(index, 4);
  native().attachSockFilter(fd, ret, true);
  return true;
}

/** What is set once the socket is bound and connected: options, memberships, the filter. */
function applyLate(fd: number, rec: InetRecord): void {
  applyOptions(fd, rec, false);
  if (rec.memberships) applyMemberships(fd, rec.family, rec.memberships);
  if (rec.filter) applyFilter(fd, rec.filter);
}

/** A new socket of the record's kind; a ping socket ferry may not make is refused with the reason. */
function makeSocket(rec: InetRecord): number {
  try {
    return newSocket(rec);
  } catch (err) {
    if (rec.proto !== 'ping' || errnoCode(err) !== 'EACCES') throw err;
    let range = '?';
    try {
      range = readFileSync('/proc/sys/net/ipv4/ping_group_range', 'utf8').trim().replace(/\s+/, ' ');
    } catch { /* left as ? */ }
    throw new FerryError('EOPEN',
      `cannot restore ${what(rec.proto, rec.family, rec.local, rec.remote)} (file ${rec.id}): net.ipv4.ping_group_range (${range}) does not include ferry's group ${process.getegid?.() ?? '?'}, so no ping socket can be made here; widen it (sysctl) to restore this image`, { cause: err });
  }
}

function openInet(rec: InetRecord, ctx: OpenContext): number | typeof NOT_YET {
  if (rec.state === 'established') {
    const fd = openEstablished(rec, ctx);
    if (fd !== NOT_YET && rec.filter) applyFilter(fd, rec.filter);
    return fd;
  }
  if (rec.state === 'syn-sent') return openSynSent(rec, ctx);
  const n = native();
  const fd = makeSocket(rec);
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
        try {
          n.sockBind(fd, toSockAddr(rec.local, rec.family));
        } catch (err) {
          // TIME_WAIT entries made without SO_REUSEADDR hold the port whatever we set (tcp.ts).
          if (errnoCode(err) !== 'EADDRINUSE' || reclaimTimeWait(rec) === 0) throw err;
          n.sockBind(fd, toSockAddr(rec.local, rec.family));
        }
      } catch (err) {
        if (errnoCode(err) !== 'EADDRINUSE') throw err;
        throw new FerryError('EADDRINUSE',
          `cannot restore ${what(rec.proto, rec.family, rec.local, null, rec.protocol)} (file ${rec.id}, ${rec.state}): the port is in use, by another socket or by connections of the original still in TIME_WAIT (they free it within a minute; ss -tuan shows them)`, { cause: err });
      }
    }
    if (rec.state === 'listen') {
      applyLate(fd, rec);
      n.sockListen(fd, rec.backlog ?? 128);
      if (reuse) n.setSockInt(fd, SOL_SOCKET, SO.REUSEADDR, 0);
    } else {
      if (reuse) n.setSockInt(fd, SOL_SOCKET, SO.REUSEADDR, 0);
      if (rec.state === 'connected' && rec.remote) n.sockConnect(fd, toSockAddr(rec.remote, rec.family));
      applyLate(fd, rec);
    }
    if (rec.proto === 'udp' || rec.proto === 'udplite') {
      const me = n.sockName(fd);
      if (me && me.port !== 0) ctx.scratch<Sender>('inet-udp-bound').set(`${rec.proto}:${ipKey(me.address)}:${me.port}`, { fd, rec });
      // Sent to the address the socket has now (a wildcard bind answers on loopback too).
      const to: SockAddr | null = me && me.port !== 0
        ? { ...me, address: isAny(me.address) ? (rec.family === 'ipv6' ? '::1' : '127.0.0.1') : me.address } : null;
      const steered = me && me.port !== 0 ? steerToSelf(fd, rec, me, ctx) : false;
      try {
        if (to) for (const d of rec.datagrams ?? []) replayDatagram(to, d, rec, ctx);
      } finally {
        if (steered) n.setSockInt(fd, SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0);
      }
    }
    finishFlags(fd, rec);
    return fd;
  } catch (err) {
    n.closeFd(fd);
    throw err;
  }
}

/**
 * Shutdown bits, once every file is open (the datagrams of other sockets of the image may be
 * sent again from this one until then): shutdown(2) on the controller's copy of the socket.
 */
function installedInet(rec: InetRecord, task: TaskContext): void {
  if (!rec.shutdown) return;
  const fd = task.open.opened(rec.id);
  if (fd === undefined) return;
  // On a socket that is not connected (TCP_CLOSE) inet_shutdown sets the bits and answers
  // ENOTCONN; setting them twice (one call per task holding the socket) changes nothing.
  for (const [bit, how] of [[RCV_SHUTDOWN, SHUT_RD], [SEND_SHUTDOWN, SHUT_WR]] as const) {
    if (!(rec.shutdown & bit)) continue;
    try {
      native().unixShutdown(fd, how);
    } catch (err) {
      if (errnoCode(err) !== 'ENOTCONN') throw err;
    }
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
  if (!PROTOS.includes(rec.proto)) bad('has an invalid protocol');
  if (rec.proto === 'raw' ? !Number.isInteger(rec.protocol) || rec.protocol! < 0 || rec.protocol! > 255 : rec.protocol !== undefined) {
    bad('has an invalid IP protocol number');
  }
  if (!['closed', 'listen', 'established', 'syn-sent', 'connected'].includes(rec.state)) bad('has an invalid state');
  if (isDatagram(rec.proto) ? rec.state !== 'closed' && rec.state !== 'connected' : rec.state === 'connected') bad(`has state ${rec.state} for a ${rec.proto} socket`);
  if (!Number.isSafeInteger(rec.flags)) bad('has invalid flags');
  endpoint(rec.local, 'local');
  endpoint(rec.remote, 'remote');
  checkOptions(rec.opts, bad);
  if (rec.state === 'established' || rec.state === 'syn-sent') checkTcp(rec, bad);
  if (rec.datagrams !== undefined && (!Array.isArray(rec.datagrams) || rec.datagrams.length > MAX_DATAGRAMS
    || !rec.datagrams.every((x) => typeof x === 'object' && x !== null && typeof x.data === 'string'
      && x.data.length <= Math.ceil(MAX_DATAGRAM / 3) * 4))) bad('has invalid datagrams');
  if (rec.shutdown !== undefined && (!Number.isInteger(rec.shutdown) || rec.shutdown < 0 || rec.shutdown > 3)) bad('has invalid shutdown bits');
  checkFilter(rec.filter, bad);
  if (rec.memberships !== undefined && !isDatagram(rec.proto)) bad('has multicast memberships on a TCP socket');
  checkMemberships(rec.memberships, rec.family, bad);
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

  beforeLetGo(rec: InetRecord, fd: number): void {
    if (rec.state === 'established' && rec.tcp !== undefined) releaseEstablished(fd, rec);
  },

  open(rec: InetRecord, ctx: OpenContext): number | typeof NOT_YET {
    try {
      return openInet(rec, ctx);
    } catch (err) {
      if (err instanceof FerryError) throw err;
      throw new FerryError('EOPEN', `cannot restore ${what(rec.proto, rec.family, rec.local, rec.remote, rec.protocol)} (file ${rec.id}, ${rec.state}): ${(err as Error).message}`, { cause: err });
    }
  },

  installed(rec: InetRecord, task: TaskContext): void {
    try {
      installedInet(rec, task);
    } catch (err) {
      throw new FerryError('EOPEN', `cannot restore the shutdown state of ${what(rec.proto, rec.family, rec.local, rec.remote, rec.protocol)} (file ${rec.id}): ${(err as Error).message}`, { cause: err });
    }
  },
};
