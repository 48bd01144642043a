/**
 * TCP sockets of the inet kind (tcp(7)): closed, listening and established ones.
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
 */
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { SIOCINQ, SIOCOUTQ, SIOCOUTQNSD, SO, SOL_SOCKET } from '../arch/x86-64.js';
import { FerryError } from '../errors.js';
import { native } from '../native/binding.js';
import type { InetRecord } from './inet.js';
import {
  finishFlags, i32, IPPROTO_TCP, isAny, ipKey, newSocket, parseProcAddr, sameEndpoint, show, TCP, toSockAddr, u32,
  type Endpoint,
} from './inet-common.js';
import { applyBuffers, applyOptions, changedOptions } from './sockopt.js';
import { NOT_YET, type DumpContext, type FdDesc, type OpenContext } from './types.js';

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
/** Bytes written per send in repair mode (one skb per call for the receive queue). */
const REPAIR_CHUNK = 32768;

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

/** Peeks `len` bytes of the queue selected with TCP_REPAIR_QUEUE. */
function peekQueue(fd: number, len: number, what: string): Buffer {
  if (len === 0) return Buffer.alloc(0);
  const got = native().sockPeek(fd, len)?.data ?? Buffer.alloc(0);
  if (got.length !== len) throw new Error(`the ${what} queue holds ${len} bytes but ${got.length} could be read`);
  return got;
}

function dumpEstablished(g: number, ctx: DumpContext): TcpRepairState {
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


/** The TCP part of a record: by state, or a refusal naming the state. */
export function dumpTcp(d: FdDesc, g: number, base: TcpBase, ctx: DumpContext): Omit<InetRecord, 'id' | 'kind'> {
  const n = native();
  const { family, proto, local, remote } = base;
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
    const tcp = dumpEstablished(g, ctx);
    return { ...base, state: 'established', opts, tcp, peer: rel.peer, after: rel.after };
  }
  throw new FerryError('EUNSUPPORTED',
    `pid ${d.pid} fd ${d.fd}: TCP socket ${show(local)}${remote ? ` -> ${show(remote)}` : ''} is in state ${TCP_STATES[state] ?? state}, which cannot be checkpointed (only closed, listening and established sockets can)`);
}

/** The fields of a record every inet socket has, as dumpInet has them. */
export type TcpBase = Pick<InetRecord, 'family' | 'proto' | 'ino' | 'flags' | 'local' | 'remote'>;

// ---- restore ----

/** An established socket rebuilt in repair mode whose other end is not open yet. */
interface Waiting { fd: number; rec: InetRecord; unsent: Buffer }

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



export function openEstablished(rec: InetRecord, ctx: OpenContext): number | typeof NOT_YET {
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

/** Checks the repair state of an established record. */
export function checkTcp(rec: InetRecord, bad: (why: string) => never): void {
  const t = rec.tcp;
  if (!t || typeof t !== 'object') return bad('has no repair state');
  for (const k of ['sendSeq', 'recvSeq', 'sendBytes', 'unsentBytes', 'recvBytes', 'mss', 'tsval'] as const) {
    if (!Number.isInteger(t[k]) || t[k] < 0 || t[k] > 0xffffffff) bad(`has an invalid ${k}`);
  }
  if (t.unsentBytes > t.sendBytes) bad('has more unsent bytes than queued');
  if (t.window !== null && (!Array.isArray(t.window) || t.window.length !== 5)) bad('has an invalid window');
}
