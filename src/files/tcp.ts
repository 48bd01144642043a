/**
 * TCP sockets of the inet kind (tcp(7)), state by state.
 *
 * - Closed (maybe bound) or listening: address, port, backlog and options come back. A
 *   listener with connections not accepted yet is refused: only accept(2) would give them a
 *   descriptor, and what our copy accepts is gone from the original's queue for good (a
 *   checkpoint that fails or leaves the tree running could not put it back). With
 *   --skip-in-flight they are left out with a warning instead; their clients are reset when
 *   the original listener closes.
 * - SYN_SENT (connect(2) in progress): the destination comes from /proc/PID/net/tcp (getpeername
 *   answers ENOTCONN before the handshake); restore binds the same address and port and
 *   connects again without blocking (openSynSent). Needs no flag: nothing was agreed yet. A
 *   SYN that carried TCP Fast Open data is refused (refuseSynData): a new connect would not.
 * - SYN_RECV: only a socket accepted through TCP Fast Open before its handshake ended; refused.
 * - Synchronized (ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING): only with
 *   --tcp-established, through TCP_REPAIR. In repair mode the socket sends no data;
 *   TCP_REPAIR_QUEUE selects the send or the receive queue, whose sequence number
 *   TCP_QUEUE_SEQ reads or sets and whose bytes recv(MSG_PEEK) copies without consuming them.
 *   The send queue holds bytes sent but not acknowledged and bytes not sent yet (SIOCOUTQ,
 *   SIOCOUTQNSD); the receive queue the bytes the program has not read (SIOCINQ).
 *   TCP_REPAIR_WINDOW reads the window, TCP_INFO the negotiated options, TCP_MAXSEG in repair
 *   mode the peer's MSS, TCP_TIMESTAMP the timestamp clock. The original leaves repair mode
 *   right after it is read, without a window probe (TCP_REPAIR_OFF_NO_WP), under the network
 *   lock (tcp-lock.ts), which keeps what was read true; when the tree is killed it goes back
 *   into repair mode just before, and closes sending neither FIN nor RST (tcp_close ->
 *   tcp_disconnect is silent in repair mode).
 *   Restore: a new socket in repair mode, both sequence numbers set, bind and connect (in
 *   repair mode connect(2) makes it established without a handshake), TCP_REPAIR_OPTIONS (MSS,
 *   window scaling, SACK, timestamps) and TCP_TIMESTAMP, the receive queue and the
 *   already-sent part of the send queue written into their queues (buildEstablished); then,
 *   once the peer exists too, the FINs, the window, repair mode left (a window probe tells an
 *   ESTABLISHED peer we are back), and the unsent part sent for real (finishRepair). Leaving
 *   repair mode resets SO_REUSEADDR, so it is set again afterwards. Until the tree is let go
 *   the socket closes abortively (SO_LINGER {1, 0}; its own is set back in inet's
 *   beforeLetGo), so that a failed or killed restore leaves no orphan on the 4-tuple.
 * - With --tcp-close a connection in any state keeps only its addresses, and comes back closed
 *   (tcp-close.ts).
 *   Both ends of a connection inside the tree are rebuilt in repair mode before either leaves
 *   it, so neither sends to a socket that does not exist yet (which would answer RST).
 *   An accepted connection shares its port with the listener that accepted it: the listener
 *   is opened first (a bind after the connection's would conflict), the connection then binds
 *   the port in repair mode, which allows it.
 *
 * FINs. A FIN takes one sequence number. TCP_QUEUE_SEQ counts our FIN once queued (write_seq)
 * and the peer's once received (rcv_nxt); SIOCOUTQ counts ours until acknowledged, SIOCOUTQNSD
 * until sent, SIOCINQ never the peer's; the peeked queues hold bytes only. The record keeps
 * bytes and the sequence numbers of bytes, with the state, and whether our FIN was never sent
 * (it waits behind unsent bytes or a closed window: finUnsent). Restore brings each FIN back
 * the way the kernel made it:
 * - Our FIN: shutdown(SHUT_WR) in repair mode with TCP_SEND_QUEUE selected moves ESTABLISHED to
 *   FIN_WAIT1 (CLOSE_WAIT to LAST_ACK) and queues the FIN as sent without transmitting it
 *   (tcp_write_xmit skips transmission in repair mode), so it is retransmitted on timeout like
 *   any unacknowledged byte. A FIN never sent is queued by a real shutdown after the unsent
 *   bytes, once out of repair mode, as the original would have sent it.
 * - Acknowledged (FIN_WAIT2): the send queue starts one sequence number early, the FIN is
 *   queued there, and the peer's ACK of it is delivered again (below).
 * - The peer's FIN: no socket option marks a FIN as received (RCV_SHUTDOWN, SOCK_DONE, rcv_nxt
 *   past it and the CLOSE_WAIT/CLOSING/LAST_ACK transition all happen in tcp_fin()), so the
 *   segment the peer sent is sent to the socket once more (tcp-segment.ts): from a raw socket,
 *   with the peer's address as source, the exact sequence number the socket expects, an ACK
 *   of snd_una and no options. That goes through the kernel's own receive path and gives
 *   exactly the state the original had; a program reading gets the queued bytes, then 0. The
 *   alternatives were worse: shutdown(SHUT_RD) makes reads return 0 but leaves the state
 *   ESTABLISHED and rcv_nxt short of the FIN (a later FIN of ours would not acknowledge the
 *   peer's), and replaying the peer's FIN from a rebuilt peer works only for peers in the tree.
 *   Order follows the state: LAST_ACK took theirs, then sent ours; CLOSING sent ours, then took
 *   theirs. The socket acknowledges what it is given even in repair mode, so this happens
 *   only once the peer exists (an end in the tree is built first; one outside always exists).
 * FIN_WAIT2 and TIME_WAIT sockets without a descriptor (orphans) are not part of the tree.
 *
 * Urgent data (MSG_OOB) received and not passed yet comes back with its mark: tcp-urgent.ts.
 *
 * Ports held by TIME_WAIT entries: see reclaimTimeWait.
 */
import { readFileSync, statSync } from 'node:fs';
import { SIOCINQ, SIOCOUTQ, SIOCOUTQNSD, SO, SOL_SOCKET } from '../arch/x86-64.js';
import { errnoCode, FerryError } from '../errors.js';
import { O_NONBLOCK } from '../proc/fcntl.js';
import { native } from '../native/binding.js';
import type { InetRecord } from './inet.js';
import {
  finishFlags, i32, IPPROTO_TCP, isAny, ipKey, newSocket, parseProcAddr, show, TCP, toSockAddr, u32,
  type Endpoint,
} from './inet-common.js';
import { applyBuffers, applyOptions, changedOptions } from './sockopt.js';
import { awaitSegment, sendSegment, TH_ACK, TH_FIN } from './tcp-segment.js';
import { checkUrgent, deliverUrgent, peekOffset, readReceiveQueue, type TcpUrgent } from './tcp-urgent.js';
import { openClosedConnection } from './tcp-close.js';
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
const TCP_SYN_SENT = 2, TCP_SYN_RECV = 3, TCP_TIME_WAIT = 6, TCP_CLOSE = 7, TCP_LISTEN = 10;
/**
 * The states of a synchronized connection rebuilt through repair mode: both sides agreed on
 * sequence numbers, and a FIN of either side may have been sent, received or acknowledged.
 */
export const SYNC_STATES = ['ESTABLISHED', 'FIN_WAIT1', 'FIN_WAIT2', 'CLOSE_WAIT', 'LAST_ACK', 'CLOSING'] as const;
export type SyncState = typeof SYNC_STATES[number];
/** Our FIN is queued (shutdown(SHUT_WR) or close with the descriptor still open elsewhere). */
const FIN_QUEUED: ReadonlySet<SyncState> = new Set(['FIN_WAIT1', 'FIN_WAIT2', 'LAST_ACK', 'CLOSING']);
/** The peer's FIN arrived (rcv_nxt counts it). */
const FIN_RECEIVED: ReadonlySet<SyncState> = new Set(['CLOSE_WAIT', 'LAST_ACK', 'CLOSING']);
/** Our FIN was acknowledged (snd_una counts it, the send queue is empty). */
const FIN_ACKED: ReadonlySet<SyncState> = new Set(['FIN_WAIT2']);
const SHUT_WR = 1;
/** The numbers of SYNC_STATES (a peer in the tree is in one of them). */
const SYNC_CODES: ReadonlySet<number> = new Set(SYNC_STATES.map((x) => TCP_STATES.indexOf(x)));
/** Bytes written per send in repair mode (one skb per call for the receive queue). */
const REPAIR_CHUNK = 32768;

export interface TcpRepairState {
  /**
   * The TCP state at dump (absent in older images: ESTABLISHED). Which FINs exist follows
   * from it: ours is queued in FIN_WAIT1/2, LAST_ACK, CLOSING (acknowledged in FIN_WAIT2), the
   * peer's was received in CLOSE_WAIT, LAST_ACK, CLOSING.
   */
  state?: SyncState;
  /**
   * Our FIN is queued but was never sent (it waits behind unsent bytes or a closed window):
   * restore sends it for real after the unsent bytes. Absent: false.
   */
  finUnsent?: boolean;
  /**
   * Sequence number of the first byte of the send queue (snd_una, the oldest unacknowledged
   * byte; past our FIN once the FIN is acknowledged).
   */
  sendSeq: number;
  /**
   * Sequence number of the first byte of the receive queue (the next byte the program reads).
   * A FIN received follows the queued bytes: it takes the sequence number recvSeq + recvBytes.
   */
  recvSeq: number;
  /**
   * Image entry with the send queue's bytes ('' when empty), their number, and how many of
   * them were never sent. Counts bytes only, never a FIN.
   */
  sendQueue: string;
  sendBytes: number;
  unsentBytes: number;
  /** Image entry with the receive queue ('' when empty) and its length. */
  recvQueue: string;
  recvBytes: number;
  /** An urgent byte received in the receive queue, where its mark is (tcp-urgent.ts). */
  urgent?: TcpUrgent;
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

interface NetEntry { local: Endpoint; remote: Endpoint; state: number; ino: string; v6: boolean }

/** /proc/PID/net/tcp and tcp6 (proc(5)): every TCP socket of the task's network namespace. */
function procNetTcp(pid: number | 'thread-self'): NetEntry[] {
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
      out.push({ local: parseProcAddr(f[1]!, v6), remote: parseProcAddr(f[2]!, v6), state: parseInt(f[3]!, 16), ino: f[9]!, v6 });
    }
  }
  return out;
}


/** File ids (in this image) of the sockets with the given inodes, by looking through the tree's descriptors. */
function fileIdsOf(inodes: Set<string>, ctx: DumpContext): Map<string, number> {
  const out = new Map<string, number>();
  if (inodes.size === 0) return out;
  for (const { pid, fd, link } of ctx.descriptors) {
    const m = /^socket:\[(\d+)\]$/.exec(link);
    if (!m || !inodes.has(m[1]!) || out.has(m[1]!)) continue;
    const id = ctx.fileIdOf(pid, fd);
    if (id !== undefined) out.set(m[1]!, id);
  }
  return out;
}

/**
 * For an established connection: the file id of its other end if the tree holds it, and the
 * listeners of the tree on its local port (to be rebuilt before it).
 */
function relatives(d: FdDesc, local: Endpoint, remote: Endpoint, ctx: DumpContext): { peer: number | null; after: number[] } {
  const { listening, byTuple, ids } = relativesCache(d.pid, ctx);
  const peerIno = byTuple.get(`${ipKey(remote.address)} ${remote.port} ${ipKey(local.address)} ${local.port}`);
  const listeners = listening.filter((e) => e.local.port === local.port
    && (isAny(e.local.address) || ipKey(e.local.address) === ipKey(local.address))).map((e) => e.ino);
  return {
    peer: peerIno !== undefined ? ids.get(peerIno) ?? null : null,
    after: listeners.map((i) => ids.get(i)).filter((i): i is number => i !== undefined),
  };
}

/**
 * What relatives() looks in, read once per checkpoint and network namespace (the tree is
 * frozen; its sockets do not change): the namespace's listeners, its established sockets by
 * 4-tuple, and the file id of every socket of the tree by inode. Read per connection, the two
 * made a checkpoint of N connections O(N^2) (each read lists every socket and descriptor).
 */
interface RelativesCache { listening: NetEntry[]; byTuple: Map<string, string>; ids: Map<string, number> }
function relativesCache(pid: number, ctx: DumpContext): RelativesCache {
  const netns = String(statSync(`/proc/${pid}/ns/net`).ino);
  let c = ctx.scratch<RelativesCache>('tcp-relatives').get(netns);
  if (c) return c;
  const entries = procNetTcp(pid);
  const byTuple = new Map<string, string>();
  for (const e of entries) {
    if (SYNC_CODES.has(e.state)) byTuple.set(`${ipKey(e.local.address)} ${e.local.port} ${ipKey(e.remote.address)} ${e.remote.port}`, e.ino);
  }
  c = { listening: entries.filter((e) => e.state === TCP_LISTEN), byTuple, ids: fileIdsOf(new Set(entries.map((e) => e.ino)), ctx) };
  ctx.scratch<RelativesCache>('tcp-relatives').set(netns, c);
  return c;
}

// ---- dump ----

/** Peeks `len` bytes of the queue selected with TCP_REPAIR_QUEUE. */
function peekQueue(fd: number, len: number, what: string): Buffer {
  if (len === 0) return Buffer.alloc(0);
  const got = native().sockPeek(fd, len)?.data ?? Buffer.alloc(0);
  if (got.length !== len) throw new Error(`the ${what} queue holds ${len} bytes but ${got.length} could be read`);
  return got;
}

function dumpEstablished(d: FdDesc, g: number, ctx: DumpContext, state: SyncState): TcpRepairState {
  const n = native();
  const reuse = n.getSockInt(g, SOL_SOCKET, SO.REUSEADDR);
  // The watchdog learns what to put back before anything changes (files/socket-guard.ts).
  ctx.options.guardSocket?.(d, { reuseAddr: reuse, oobInline: n.getSockInt(g, SOL_SOCKET, SO.OOBINLINE), peekOff: peekOffset(g) });
  n.setSockInt(g, IPPROTO_TCP, TCP.REPAIR, TCP_REPAIR_ON);
  // Repair mode is left as soon as the socket is read (quietly: TCP_REPAIR_OFF_NO_WP; leaving
  // it resets SO_REUSEADDR, which is put back), so that a ferry killed meanwhile leaves a
  // working socket behind. The network lock (tcp-lock.ts), taken before, keeps what was read
  // true: no segment comes in or goes out until the checkpoint ends. Killed, the socket is put
  // back into repair mode just before the kill, so that closing it sends nothing.
  const leave = (): void => {
    n.setSockInt(g, IPPROTO_TCP, TCP.REPAIR, TCP_REPAIR_OFF_NO_WP);
    if (reuse) n.setSockInt(g, SOL_SOCKET, SO.REUSEADDR, reuse);
  };
  ctx.onFinish((leftRunning) => {
    if (!leftRunning) n.setSockInt(g, IPPROTO_TCP, TCP.REPAIR, TCP_REPAIR_ON);
  });
  try {
    return readRepairState(g, ctx, state);
  } finally {
    leave();
  }
}

/** Reads the repair state of `g`, in repair mode. */
function readRepairState(g: number, ctx: DumpContext, state: SyncState): TcpRepairState {
  const n = native();
  const info = n.getSockOpt(g, IPPROTO_TCP, TCP.INFO, TCP_INFO_LEN);
  const options = info.readUInt8(5);
  const wscale = info.readUInt8(6);

  // A FIN takes one sequence number. The send queue's sequence (write_seq) and SIOCOUTQ
  // (write_seq - snd_una) count our FIN once it is queued, SIOCOUTQNSD (write_seq - snd_nxt)
  // while it is not sent; the receive queue's (rcv_nxt) counts the peer's FIN once received,
  // SIOCINQ never does (tcp_inq). MSG_PEEK of either queue copies bytes only.
  const finInQueue = FIN_QUEUED.has(state) && !FIN_ACKED.has(state) ? 1 : 0;
  n.setSockInt(g, IPPROTO_TCP, TCP.REPAIR_QUEUE, TCP_SEND_QUEUE);
  const sendEnd = u32(n.getSockInt(g, IPPROTO_TCP, TCP.QUEUE_SEQ));
  const outq = n.sockIoctlInt(g, SIOCOUTQ);
  const unsentSeq = n.sockIoctlInt(g, SIOCOUTQNSD);
  const finUnsent = finInQueue === 1 && unsentSeq > 0;
  const sendBytes = Math.max(0, outq - finInQueue);
  const unsent = Math.max(0, unsentSeq - (finUnsent ? 1 : 0));
  const sendData = peekQueue(g, sendBytes, 'send');
  n.setSockInt(g, IPPROTO_TCP, TCP.REPAIR_QUEUE, TCP_RECV_QUEUE);
  const recvEnd = u32(n.getSockInt(g, IPPROTO_TCP, TCP.QUEUE_SEQ));
  const { inq, data: recvData, urgent } = readReceiveQueue(g);
  n.setSockInt(g, IPPROTO_TCP, TCP.REPAIR_QUEUE, TCP_NO_QUEUE);

  const win = n.getSockOpt(g, IPPROTO_TCP, TCP.REPAIR_WINDOW, TCP_REPAIR_WINDOW_LEN);
  const timestamps = (options & TCPI_OPT_TIMESTAMPS) !== 0;
  return {
    ...(state !== 'ESTABLISHED' ? { state } : {}),
    ...(finUnsent ? { finUnsent } : {}),
    sendSeq: u32(sendEnd - outq),
    recvSeq: u32(recvEnd - inq - (FIN_RECEIVED.has(state) ? 1 : 0)),
    sendQueue: sendBytes > 0 ? ctx.blob('sendq', sendData) : '',
    sendBytes,
    unsentBytes: Math.min(unsent, sendBytes),
    recvQueue: inq > 0 ? ctx.blob('recvq', recvData) : '',
    recvBytes: inq,
    ...(urgent ? { urgent } : {}),
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
  if (state === TCP_CLOSE) {
    // A connection that ended (reset, or both FINs with TIME_WAIT taken over by an entry of
    // its own) leaves a CLOSE socket that may still hold bytes the program has not read: a
    // closed socket would come back without them.
    const unread = n.sockIoctlInt(g, SIOCINQ);
    if (unread > 0) {
      throw new FerryError('EUNSUPPORTED',
        `pid ${d.pid} fd ${d.fd}: TCP socket ${show(local)} is closed (its connection ended) with ${unread} byte(s) not read yet, which cannot be checkpointed yet; try again once the program has read them`);
    }
    return { ...base, state: 'closed', remote: null, opts: changedOptions(g, family, proto, false) };
  }
  if (state === TCP_LISTEN) {
    // For a listener tcpi_unacked is the accept queue's length and tcpi_sacked the backlog.
    const waiting = info.readUInt32LE(24);
    // Only accept(2) gives a descriptor for them, and what the copy accepts is gone from the
    // original's queue for good: a checkpoint that fails or leaves the tree running could not
    // put them back. So they are refused, or left out with --skip-in-flight.
    if (waiting > 0 && !ctx.options.skipInFlight) {
      throw new FerryError('EUNSUPPORTED',
        `pid ${d.pid} fd ${d.fd}: listening TCP socket ${show(local)} has ${waiting} connection(s) not accepted yet, which cannot be checkpointed; try again once the program has accepted them, or leave them out with --skip-in-flight`);
    }
    if (waiting > 0) {
      ctx.warn(`pid ${d.pid} fd ${d.fd}: listening TCP socket ${show(local)}: ${waiting} connection(s) not accepted yet left out (--skip-in-flight); their clients see a reset once the original is gone`);
    }
    return { ...base, state: 'listen', remote: null, backlog: info.readUInt32LE(28), opts: changedOptions(g, family, proto, true) };
  }
  if (ctx.options.tcpClose && state !== TCP_CLOSE && state !== TCP_LISTEN && local && remote) {
    // --tcp-close: the connection is not kept, only what it was; restore makes it a closed socket (tcp-close.ts).
    return { ...base, state: 'established', opts: changedOptions(g, family, proto, false) };
  }
  if (state === TCP_SYN_SENT && local) {
    // getpeername(2) answers ENOTCONN until the handshake ends: the address connect(2) was
    // given is the remote one of the socket's line in /proc/PID/net/tcp{,6}.
    const entries = procNetTcp(d.pid);
    const to = entries.find((e) => e.ino === base.ino)?.remote;
    if (!to || to.port === 0) throw new Error('its destination is not in /proc/net/tcp');
    refuseSynData(d, g, local, to);
    // A listener of the tree it connects to comes back first (a SYN to no listener is refused).
    const listeners = entries.filter((e) => e.state === TCP_LISTEN && e.local.port === to.port
      && (isAny(e.local.address) || ipKey(e.local.address) === ipKey(to.address))).map((e) => e.ino);
    const ids = fileIdsOf(new Set(listeners), ctx);
    const after = listeners.map((i) => ids.get(i)).filter((i): i is number => i !== undefined);
    return { ...base, state: 'syn-sent', remote: to, opts: changedOptions(g, family, proto, false), after };
  }
  const name = TCP_STATES[state];
  const sync = SYNC_STATES.find((x) => x === name);
  if (sync && local && remote) {
    if (!ctx.options.tcpEstablished) {
      const what = sync === 'ESTABLISHED' ? 'established TCP connection' : `TCP connection in ${sync}`;
      throw new FerryError('EUNSUPPORTED',
        `pid ${d.pid} fd ${d.fd}: ${what} ${show(local)} -> ${show(remote)}; checkpoint it with --tcp-established (TCP_REPAIR) or close it first`);
    }
    const opts = changedOptions(g, family, proto, false);
    const rel = relatives(d, local, remote, ctx);
    const tcp = dumpEstablished(d, g, ctx, sync);
    return { ...base, state: 'established', opts, tcp, peer: rel.peer, after: rel.after };
  }
  if (state === TCP_SYN_RECV) {
    // Only TCP Fast Open gives a program a socket before the handshake ends (accept(2) returns
    // the child as soon as the SYN with data arrives). TCP_REPAIR's connect makes a socket
    // ESTABLISHED, never SYN_RECV: the client, still in SYN_SENT, would meet a socket that no
    // longer answers its SYN with a SYN-ACK (RFC 7413), and reset.
    throw new FerryError('EUNSUPPORTED',
      `pid ${d.pid} fd ${d.fd}: TCP connection ${show(local)}${remote ? ` -> ${show(remote)}` : ''} was accepted through TCP Fast Open before its handshake ended (SYN_RECV), which TCP_REPAIR cannot rebuild; checkpoint it once the client's ACK has come (a moment, unless the network drops it)`);
  }
  throw new FerryError('EUNSUPPORTED',
    `pid ${d.pid} fd ${d.fd}: TCP socket ${show(local)}${remote ? ` -> ${show(remote)}` : ''} is in state ${TCP_STATES[state] ?? state}, which cannot be checkpointed (only closed, listening and established sockets can)`);
}

/** struct tcp_info up to tcpi_bytes_sent (u64 at 200); tcpi_data_segs_out is the u32 at 156. */
const TCP_INFO_SENT_LEN = 208, TCPI_DATA_SEGS_OUT = 156, TCPI_BYTES_SENT = 200;

/**
 * A connect in progress whose SYN carried data (TCP Fast Open: sendto(2) with MSG_FASTOPEN, or
 * a write after TCP_FASTOPEN_CONNECT): the data waits unacknowledged behind the SYN, and the
 * connect restore makes again would not carry it, so it would be lost. SIOCOUTQ answers 0
 * in SYN_SENT; TCP_INFO's tcpi_data_segs_out counts segments that carried data (a plain SYN
 * does not), tcpi_bytes_sent their bytes. Refused, naming them.
 */
function refuseSynData(d: FdDesc, g: number, local: Endpoint, to: Endpoint): void {
  const info = native().getSockOpt(g, IPPROTO_TCP, TCP.INFO, TCP_INFO_SENT_LEN);
  if (info.length < TCP_INFO_SENT_LEN || info.readUInt32LE(TCPI_DATA_SEGS_OUT) === 0) return;
  throw new FerryError('EUNSUPPORTED',
    `pid ${d.pid} fd ${d.fd}: TCP connection ${show(local)} -> ${show(to)} is being made (SYN_SENT) with ${info.readBigUInt64LE(TCPI_BYTES_SENT)} bytes of TCP Fast Open data in its SYN, which a new connect would not send; checkpoint it once the handshake has ended`);
}

/** The fields of a record every inet socket has, as dumpInet has them. */
export type TcpBase = Pick<InetRecord, 'family' | 'proto' | 'ino' | 'flags' | 'local' | 'remote'>;

// ---- restore ----

/** An established socket rebuilt in repair mode whose other end is not open yet. */
interface Waiting { fd: number; rec: InetRecord; rest: Rest }

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

/** What a connection built in repair mode still needs once its peer exists (finishRepair). */
interface Rest {
  /** Bytes never sent: sent for real out of repair mode. */
  unsent: Buffer;
  /** The receive queue from its urgent mark on: given as the peer's segments (tcp-urgent.ts). */
  urgentTail: Buffer;
}

/**
 * Rebuilds a connection in repair mode as ESTABLISHED with both queues (the receive queue up to
 * its urgent mark, if any); returns what finishRepair needs. Its FINs, urgent data and window
 * are set by finishRepair, once the peer exists too.
 */
function buildEstablished(fd: number, rec: InetRecord, ctx: OpenContext): Rest {
  const n = native();
  const t = rec.tcp!;
  const sendData = queueBytes(ctx, t.sendQueue, t.sendBytes);
  const recvData = queueBytes(ctx, t.recvQueue, t.recvBytes);
  const sent = t.sendBytes - t.unsentBytes;
  const state = t.state ?? 'ESTABLISHED';
  // An acknowledged FIN of ours took the sequence number before snd_una: the queue starts
  // there, and shutdown(2) in repair mode queues the FIN at it (finishRepair).
  const writeSeq = FIN_ACKED.has(state) ? u32(t.sendSeq - 1) : t.sendSeq;
  applyOptions(fd, rec, true);
  n.setSockInt(fd, IPPROTO_TCP, TCP.REPAIR, TCP_REPAIR_ON);
  applyBuffers(fd, rec);
  n.setSockInt(fd, IPPROTO_TCP, TCP.REPAIR_QUEUE, TCP_SEND_QUEUE);
  n.setSockInt(fd, IPPROTO_TCP, TCP.QUEUE_SEQ, i32(writeSeq));
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
  const mark = t.urgent?.at ?? recvData.length;
  sendAll(fd, recvData.subarray(0, mark), 'receive queue');
  n.setSockInt(fd, IPPROTO_TCP, TCP.REPAIR_QUEUE, TCP_SEND_QUEUE);
  sendAll(fd, sendData.subarray(0, sent), 'send queue');
  n.setSockInt(fd, IPPROTO_TCP, TCP.REPAIR_QUEUE, TCP_NO_QUEUE);
  return { unsent: sendData.subarray(sent), urgentTail: recvData.subarray(mark) };
}

/** `a` comes after `b` in sequence space (RFC 793 arithmetic modulo 2^32). */
const seqAfter = (a: number, b: number): boolean => ((a - b) | 0) > 0;

/** The window field of the peer's segments: its window as the socket knows it, scaled down. */
function peerWindow(rec: InetRecord): number {
  const t = rec.tcp!;
  return t.window ? t.window[1] >>> (t.sndWscale ?? 0) : 0xffff;
}

/** A segment from the connection's peer to `rec`'s socket (tcp-segment.ts). */
function fromPeer(rec: InetRecord, seq: number, ack: number, flags: number): void {
  sendSegment({ from: rec.remote!, to: rec.local!, seq, ack, flags, window: peerWindow(rec) });
}

/**
 * TCP_REPAIR_WINDOW with the image's window, where rcv_nxt is `rcvNxt` now: the kernel refuses
 * an rcv_wup past rcv_nxt (bytes or a FIN still to come are not counted yet), so it is moved
 * back to rcv_nxt and rcv_wnd grown by as much, which keeps the window's right edge.
 */
function setWindow(fd: number, window: readonly number[], rcvNxt: number): void {
  const w = [...window];
  if (seqAfter(w[4]!, rcvNxt)) {
    w[3] = u32(w[3]! + (w[4]! - rcvNxt));
    w[4] = rcvNxt;
  }
  const b = Buffer.alloc(TCP_REPAIR_WINDOW_LEN);
  w.forEach((v, i) => b.writeUInt32LE(u32(v), i * 4));
  native().setSockOpt(fd, IPPROTO_TCP, TCP.REPAIR_WINDOW, b);
}

/** Waits until a socket given a segment (fromPeer) is in state `want` (awaitSegment). */
function reached(fd: number, want: SyncState, what: string): void {
  const state = (): number => native().getSockOpt(fd, IPPROTO_TCP, TCP.INFO, TCP_INFO_LEN).readUInt8(0);
  awaitSegment(what, () => TCP_STATES[state()] === want, () => `the socket is in ${TCP_STATES[state()] ?? state()}, not ${want}`);
}

/** Our FIN, as shutdown(2) queues it, in repair mode (as sent: tcp_write_xmit sends nothing then) or for real. */
function shutdownWrite(fd: number, inRepair: boolean): void {
  const n = native();
  if (inRepair) n.setSockInt(fd, IPPROTO_TCP, TCP.REPAIR_QUEUE, TCP_SEND_QUEUE);
  n.unixShutdown(fd, SHUT_WR); // shutdown(2) of any socket
  if (inRepair) n.setSockInt(fd, IPPROTO_TCP, TCP.REPAIR_QUEUE, TCP_NO_QUEUE);
}

/**
 * Brings a connection built in repair mode to its state and out of repair mode: the FINs in
 * the order they happened (LAST_ACK: theirs, then ours; CLOSING: ours, then theirs), the
 * acknowledgement of ours (FIN_WAIT2), the window; then leaves repair mode (a window probe
 * tells the peer of an ESTABLISHED connection we are back), sends the unsent bytes for real
 * and, when our FIN was never sent, shuts down for real after them. Both ends must exist:
 * the socket acknowledges the segments it is given.
 */
function finishRepair(fd: number, rec: InetRecord, rest: Rest): void {
  const n = native();
  const t = rec.tcp!;
  const state = t.state ?? 'ESTABLISHED';
  if (t.urgent) {
    // Before any FIN (which follows these bytes), with a window that takes them.
    if (t.window) setWindow(fd, t.window, u32(t.recvSeq + t.urgent.at));
    deliverUrgent(fd, rec, rest.urgentTail, FIN_ACKED.has(state) ? u32(t.sendSeq - 1) : t.sendSeq, peerWindow(rec));
  }
  const finUnsent = t.finUnsent === true;
  const rcvNxt = u32(t.recvSeq + t.recvBytes); // where the peer's FIN is, if any
  const finNow = FIN_QUEUED.has(state) && !finUnsent;
  const peerFin = (want: SyncState): void => {
    fromPeer(rec, rcvNxt, t.sendSeq, TH_FIN | TH_ACK);
    reached(fd, want, 'the peer\'s FIN');
  };
  if (state === 'CLOSE_WAIT' || state === 'LAST_ACK') peerFin('CLOSE_WAIT');
  if (finNow) shutdownWrite(fd, true);
  if (state === 'FIN_WAIT2') {
    fromPeer(rec, rcvNxt, t.sendSeq, TH_ACK);
    reached(fd, 'FIN_WAIT2', 'the peer\'s acknowledgement of our FIN');
  }
  if (state === 'CLOSING' && finNow) peerFin('CLOSING');
  // In CLOSING with our FIN unsent the peer's FIN is still to come: rcv_nxt is short of it.
  if (t.window) setWindow(fd, t.window, state === 'CLOSING' && !finNow ? rcvNxt : u32(rcvNxt + (FIN_RECEIVED.has(state) ? 1 : 0)));
  n.setSockInt(fd, IPPROTO_TCP, TCP.REPAIR, TCP_REPAIR_OFF);
  const reuse = rec.opts.reuseaddr;
  if (typeof reuse === 'number' && reuse !== 0) n.setSockInt(fd, SOL_SOCKET, SO.REUSEADDR, reuse);
  applyOptions(fd, rec, false);
  sendAll(fd, rest.unsent, 'unsent data');
  if (finUnsent) {
    shutdownWrite(fd, false);
    if (state === 'CLOSING') peerFin('CLOSING');
  }
}

export function openEstablished(rec: InetRecord, ctx: OpenContext): number | typeof NOT_YET {
  if (ctx.options.tcpClose) return openClosedConnection(rec);
  if (rec.tcp === undefined) {
    throw new FerryError('EUNSUPPORTED',
      `restore: the image holds TCP connection ${show(rec.local)} -> ${show(rec.remote)} (file ${rec.id}) without its state (checkpointed with --tcp-close); restore with --tcp-close, which gives the program a closed socket in its place`);
  }
  if (!ctx.options.tcpEstablished) {
    throw new FerryError('EUNSUPPORTED',
      `restore: the image holds an established TCP connection ${show(rec.local)} -> ${show(rec.remote)} (file ${rec.id}); restore it with --tcp-established`);
  }
  if ((rec.after ?? []).some((id) => ctx.opened(id) === undefined)) return NOT_YET;
  const waiting = ctx.scratch<Waiting>('inet');
  const fd = newSocket(rec);
  try {
    const rest = buildEstablished(fd, rec, ctx);
    const peer = rec.peer ?? null;
    if (peer !== null && ctx.opened(peer) === undefined) {
      // The other end is rebuilt later; both leave repair mode then.
      waiting.set(String(rec.id), { fd, rec, rest });
      finishFlags(fd, rec);
      return fd;
    }
    const other = peer !== null ? waiting.get(String(peer)) : undefined;
    if (other) waiting.delete(String(peer));
    if (other) finishRepair(other.fd, other.rec, other.rest);
    finishRepair(fd, rec, rest);
    if (other) closeAbortively(other.fd);
    closeAbortively(fd);
    finishFlags(fd, rec);
    return fd;
  } catch (err) {
    native().closeFd(fd);
    throw err;
  }
}

/** SO_LINGER {l_onoff 1, l_linger 0}: close(2) resets the connection and frees it at once. */
const LINGER_ABORT = Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]);

/**
 * Until the tree is let go, a rebuilt connection closes abortively: if the restore fails, or
 * ferry and its stubs are killed, the socket is freed at once (its RST is dropped by the
 * network lock) instead of lingering as an orphan in FIN_WAIT whose 4-tuple would make the
 * retry's connect(2) fail with EADDRNOTAVAIL.
 */
function closeAbortively(fd: number): void {
  native().setSockOpt(fd, SOL_SOCKET, SO.LINGER, LINGER_ABORT);
}

/** Gives a rebuilt connection its own SO_LINGER back, just before the tree is let go (inet's beforeLetGo). */
export function releaseEstablished(fd: number, rec: InetRecord): void {
  const linger = rec.opts.linger;
  native().setSockOpt(fd, SOL_SOCKET, SO.LINGER, typeof linger === 'string' ? Buffer.from(linger, 'base64') : Buffer.alloc(8));
}

/**
 * Frees a restored socket's port from the TIME_WAIT entries on it (of the original's closed
 * connections, or anyone's): returns how many were removed. A TIME_WAIT entry takes part in
 * bind(2)'s conflict check with the SO_REUSEADDR of the socket it was (an accepted connection
 * has its listener's): one without it keeps every bind and listen(2) off the port for up to a
 * minute, SO_REUSEADDR on the new socket or not; only repair mode's forced reuse passes, and
 * a listener cannot leave repair mode, nor could its connections send in it. So the entries
 * are removed with SOCK_DESTROY (tcp_abort deschedules a TIME_WAIT entry), each by its
 * 4-tuple as /proc/thread-self/net/tcp{,6} lists it in the namespace the socket is made in;
 * a live socket on the port is never touched and still makes the bind fail. What is lost is
 * what TIME_WAIT is for: a late duplicate of an old connection is no longer recognised, and
 * a lost last ACK of one is answered with RST instead of again. Errors are ignored (the bind
 * then fails as before).
 */
export function reclaimTimeWait(rec: InetRecord): number {
  const local = rec.local;
  if (rec.proto !== 'tcp' || !local) return 0;
  const onPort = procNetTcp('thread-self').filter((e) => e.local.port === local.port
    && (isAny(local.address) || isAny(e.local.address) || ipKey(e.local.address) === ipKey(local.address)));
  // A live socket holds the port (the original, left running): nothing to win, nothing touched.
  if (onPort.some((e) => e.state !== TCP_TIME_WAIT)) return 0;
  let freed = 0;
  for (const e of onPort) {
    const family = e.v6 ? 'ipv6' : 'ipv4';
    try {
      native().tcpDestroy(toSockAddr(e.local, family), toSockAddr(e.remote, family));
      freed++;
    } catch { /* gone meanwhile, or no SOCK_DESTROY here */ }
  }
  return freed;
}

/** Binds a restored socket to its address again (SO_REUSEADDR for that moment: see openInet). */
function bindBack(fd: number, rec: InetRecord): void {
  const n = native();
  const reuse = n.getSockInt(fd, SOL_SOCKET, SO.REUSEADDR) === 0;
  if (reuse) n.setSockInt(fd, SOL_SOCKET, SO.REUSEADDR, 1);
  try {
    try {
      n.sockBind(fd, toSockAddr(rec.local!, rec.family));
    } catch (err) {
      if (errnoCode(err) !== 'EADDRINUSE' || reclaimTimeWait(rec) === 0) throw err;
      n.sockBind(fd, toSockAddr(rec.local!, rec.family));
    }
  } catch (err) {
    if (errnoCode(err) !== 'EADDRINUSE') throw err;
    throw new FerryError('EADDRINUSE',
      `cannot restore TCP socket ${show(rec.local)} -> ${show(rec.remote)} (file ${rec.id}, ${rec.state}): the port is in use by another socket (ss -tan shows it)`, { cause: err });
  }
  if (reuse) n.setSockInt(fd, SOL_SOCKET, SO.REUSEADDR, 0);
}

/**
 * A connection in progress (SYN_SENT: our SYN unanswered): a new socket bound to the same
 * address and port connects again without blocking (a new SYN, a new initial sequence number:
 * the peer never answered the old one). A program blocked in connect(2) restarts it and waits
 * on, one that polls sees it complete (or fail) as before. The original, closed in SYN_SENT,
 * sent nothing; should the peer answer its old SYN now, this host answers RST and the peer
 * forgets it.
 */
export function openSynSent(rec: InetRecord, ctx: OpenContext): number | typeof NOT_YET {
  if ((rec.after ?? []).some((id) => ctx.opened(id) === undefined)) return NOT_YET;
  const n = native();
  const fd = newSocket(rec);
  try {
    applyOptions(fd, rec, true);
    applyBuffers(fd, rec);
    bindBack(fd, rec);
    applyOptions(fd, rec, false);
    n.setFl(fd, O_NONBLOCK);
    try {
      n.sockConnect(fd, toSockAddr(rec.remote!, rec.family));
    } catch (err) {
      if (errnoCode(err) !== 'EINPROGRESS') throw err;
    }
    finishFlags(fd, rec);
    return fd;
  } catch (err) {
    n.closeFd(fd);
    throw err;
  }
}

/** Checks the repair state of an established record (every field bounded before anything is made). */
export function checkTcp(rec: InetRecord, bad: (why: string) => never): void {
  if (rec.proto !== 'tcp' || !rec.local || !rec.remote) bad(`is a TCP connection (${rec.state}) without both addresses`);
  const fileId = (v: unknown): boolean => Number.isInteger(v) && (v as number) >= 1 && (v as number) <= 2 ** 24;
  if (rec.after !== undefined && (!Array.isArray(rec.after) || rec.after.length > 64 || !rec.after.every(fileId))) bad('has invalid listeners to open first (after)');
  if (rec.peer !== undefined && rec.peer !== null && !fileId(rec.peer)) bad('has an invalid peer');
  if (rec.state === 'syn-sent') return;
  const t = rec.tcp;
  if (t === undefined) return; // checkpointed with --tcp-close: restored closed (tcp-close.ts)
  if (!t || typeof t !== 'object') return bad('has no repair state');
  for (const k of ['sendSeq', 'recvSeq', 'sendBytes', 'unsentBytes', 'recvBytes', 'mss', 'tsval'] as const) {
    if (!Number.isInteger(t[k]) || t[k] < 0 || t[k] > 0xffffffff) bad(`has an invalid ${k}`);
  }
  if (t.unsentBytes > t.sendBytes) bad('has more unsent bytes than queued');
  if (typeof t.sendQueue !== 'string' || typeof t.recvQueue !== 'string') bad('has invalid queue entries');
  for (const k of ['sndWscale', 'rcvWscale'] as const) {
    if (t[k] !== null && (!Number.isInteger(t[k]) || t[k] < 0 || t[k] > 14)) bad(`has an invalid ${k}`);
  }
  if (t.window !== null && (!Array.isArray(t.window) || t.window.length !== 5
    || !t.window.every((v) => Number.isInteger(v) && v >= 0 && v <= 0xffffffff))) bad('has an invalid window');
  if (t.state !== undefined && !SYNC_STATES.includes(t.state)) bad(`has an invalid TCP state ${JSON.stringify(String(t.state).slice(0, 20))}`);
  if (t.finUnsent !== undefined && typeof t.finUnsent !== 'boolean') bad('has an invalid finUnsent');
  const state = t.state ?? 'ESTABLISHED';
  if (t.finUnsent && (!FIN_QUEUED.has(state) || FIN_ACKED.has(state))) bad(`has an unsent FIN in ${state}`);
  if (FIN_ACKED.has(state) && t.sendBytes !== 0) bad(`has bytes queued after its acknowledged FIN (${state})`);
  checkUrgent(t.urgent, t.recvBytes, bad);
}
