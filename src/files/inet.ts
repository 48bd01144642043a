/**
 * IPv4 and IPv6 sockets, TCP and UDP (ip(7), ipv6(7), tcp(7), udp(7)): kind 'inet'.
 *
 * The socket is taken into the controller with pidfd_getfd(2) (the same socket: reading its
 * options changes nothing, setting them changes the original) and read with getsockname(2),
 * getpeername(2), getsockopt(2) and TCP_INFO (state; for a listener the backlog and the number
 * of connections waiting in the accept queue).
 *
 * - TCP: see tcp.ts (every state; established and half-closed connections through TCP_REPAIR).
 * - UDP: bound and connected addresses, options, and the datagrams waiting to be read, each
 *   with its sender (SO_PEEK_OFF walks the queue with MSG_PEEK; it is put back after). On
 *   restore each datagram is sent again from its sender's address: from a socket of the image
 *   bound there if one is already open, else from a temporary socket bound to that address;
 *   when the address is taken by a socket outside the image the datagram is lost, as UDP may.
 *
 * Sockets are identified by their inode: descriptors of one socket (dup, fork) share a record.
 * Options are read from a table and set on restore only where they differ from a new socket's.
 */
import { SO, SOL_SOCKET } from '../arch/x86-64.js';
import { errnoCode, FerryError } from '../errors.js';
import type { FileRecord } from '../image/records.js';
import { native, type SockAddr } from '../native/binding.js';
import { O_CLOEXEC } from '../proc/fcntl.js';
import {
  finishFlags, isAny, ipKey, KEPT_FLAGS, newSocket, show, toEndpoint, toSockAddr, type Endpoint, type Family, type Proto,
} from './inet-common.js';
import { applyBuffers, applyOptions, changedOptions, OPTIONS } from './sockopt.js';
import { checkTcp, dumpTcp, openEstablished, openSynSent, reclaimTimeWait, type TcpRepairState } from './tcp.js';
import { NOT_YET, type DumpContext, type FdDesc, type FileKind, type OpenContext } from './types.js';

export type { Endpoint, TcpRepairState };

/** Largest UDP payload, and a bound on the datagrams read from one queue. */
const MAX_DATAGRAM = 65536, MAX_DATAGRAMS = 100000;

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
  /**
   * TCP: 'closed', 'listen', 'established' (any synchronized state, see tcp.ts), 'syn-sent'
   * (connect(2) in progress); UDP: 'closed' (maybe bound) or 'connected'.
   */
  state: 'closed' | 'listen' | 'established' | 'syn-sent' | 'connected';
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
// ---- dump ----

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
    return dumpTcp(d, g, base, ctx);
  } catch (err) {
    if (err instanceof FerryError) throw err;
    throw new FerryError('EDUMP', `${where(d, local, remote, proto)}: ${(err as Error).message}`, { cause: err });
  }
}

// ---- restore ----


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
  if (rec.state === 'syn-sent') return openSynSent(rec, ctx);
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
  if (!['closed', 'listen', 'established', 'syn-sent', 'connected'].includes(rec.state)) bad('has an invalid state');
  if (!Number.isSafeInteger(rec.flags)) bad('has invalid flags');
  endpoint(rec.local, 'local');
  endpoint(rec.remote, 'remote');
  if (typeof rec.opts !== 'object' || rec.opts === null) bad('has no options');
  for (const [k, v] of Object.entries(rec.opts)) {
    if (!Object.hasOwn(OPTIONS, k) && k !== 'sndbuf' && k !== 'rcvbuf') bad(`has an unknown option ${JSON.stringify(k.slice(0, 40))}`);
  }
  if (rec.state === 'established' || rec.state === 'syn-sent') checkTcp(rec, bad);
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
