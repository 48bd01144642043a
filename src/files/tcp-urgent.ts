/**
 * TCP urgent data (tcp(7) "Out-of-band data"; RFC 6093) of a connection rebuilt through
 * TCP_REPAIR (tcp.ts).
 *
 * Received. A segment with URG set makes the kernel remember one urgent byte of the stream
 * (tcp_check_urg, tcp_urg in net/ipv4/tcp_input.c): its sequence number (urg_seq, the "mark")
 * and its state in urg_data: valid (the byte, which recv(2) with MSG_OOB returns once), read
 * (MSG_OOB took it: without SO_OOBINLINE the byte stays a hole the stream skips), or not yet
 * (the pointer came, the byte did not). The byte stays in the receive queue; read(2) stops at
 * the mark, SIOCATMARK says whether the next byte is the mark's, POLLPRI is raised while it is
 * valid. Nothing sets this state but a segment: TCP_REPAIR writes bytes to the queue without
 * flags. So:
 * - Dump (in repair mode, the receive queue selected): recv(MSG_OOB | MSG_PEEK) tells valid (the
 *   byte), read (EINVAL) and not yet (EAGAIN) apart without consuming anything; SO_OOBINLINE set
 *   for the moment of the peek makes the peek include the byte, and the peek stops at the mark
 *   when it has copied anything (tcp_recvmsg_locked), which gives the mark's offset; the rest is
 *   peeked from there with SO_PEEK_OFF; a mark at the queue's first byte is what SIOCATMARK
 *   says. SO_OOBINLINE and SO_PEEK_OFF are put back at once (the tree is frozen).
 * - Restore: the bytes before the mark go into the queue in repair mode; the ones from the mark
 *   on are sent to the socket as the peer sent them (tcp-segment.ts, from the peer's address,
 *   the sequence number the socket expects), the first segment with URG and the urgent pointer
 *   on its first byte, so the kernel's own receive path sets urg_seq and urg_data. A byte that
 *   was read is then taken with recv(MSG_OOB), which leaves it "read". The socket has no owner
 *   yet (owners are set after every file is open), so no SIGURG is sent.
 * - Not yet received (the pointer without the byte): nothing is kept; the peer sends URG again
 *   with every segment before its urgent pointer, which sets it again (and sends SIGURG again).
 *
 * Sent. Our own urgent pointer (snd_up) is read by no getsockopt, ioctl or sock_diag answer, so
 * urgent bytes of ours still in the send queue (not acknowledged, or not sent) cannot even be
 * seen: they come back as ordinary bytes, and the peer gets them without URG. Acknowledged
 * urgent bytes are the peer's business and not affected.
 */
import { readFileSync } from 'node:fs';
import { SIOCINQ, SO, SOL_SOCKET } from '../arch/x86-64.js';
import { errnoCode } from '../errors.js';
import { faultPointSync } from '../fault.js';
import { native } from '../native/binding.js';
import type { InetRecord } from './inet.js';
import { IPPROTO_TCP, TCP, u32 } from './inet-common.js';
import { awaitSegment, sendSegment, TH_ACK, TH_PSH, TH_URG } from './tcp-segment.js';

const MSG_OOB = 0x1;
const TCP_NO_QUEUE = 0, TCP_RECV_QUEUE = 1;
const SIOCATMARK = 0x8905;
/** Bytes per segment sent again from the peer's address (well inside loopback's MTU). */
const SEGMENT = 16384;

/** An urgent byte received and not passed yet: the mark's offset in the receive queue, and whether MSG_OOB took it. */
export interface TcpUrgent {
  at: number;
  /** recv(MSG_OOB) read it already (absent: still valid, or in the stream with SO_OOBINLINE). */
  read?: boolean;
}

/** The socket's SO_PEEK_OFF, or null where it has none (a kernel without it for TCP). */
export function peekOffset(g: number): number | null {
  try {
    return native().getSockInt(g, SOL_SOCKET, SO.PEEK_OFF);
  } catch {
    return null; // the queue is then peeked once
  }
}

/**
 * Reads a receive queue in repair mode (TCP_RECV_QUEUE selected): its length, its bytes with
 * the urgent byte, and where its mark is, if any. SIOCINQ counts only up to an urgent mark
 * ahead, unless SO_OOBINLINE (tcp_inq), so it too is asked with SO_OOBINLINE set.
 */
export function readReceiveQueue(g: number): { inq: number; data: Buffer; urgent?: TcpUrgent } {
  const n = native();
  const inline = n.getSockInt(g, SOL_SOCKET, SO.OOBINLINE) !== 0;
  // recv(MSG_OOB) is answered before the repair-mode checks: a valid byte, EINVAL (none, read
  // already, or SO_OOBINLINE), EAGAIN (the pointer without its byte: not kept).
  let valid = false, notYet = false;
  if (!inline) {
    try {
      const got = n.sockPeek(g, 1, MSG_OOB);
      valid = got !== null && got.data.length === 1;
      notYet = !valid;
    } catch (err) {
      if (errnoCode(err) !== 'EINVAL') throw err;
    }
  }
  const peekOff = peekOffset(g);
  if (!inline) n.setSockInt(g, SOL_SOCKET, SO.OOBINLINE, 1);
  // From the queue's start: a program's own SO_PEEK_OFF would shift the peek. It moves with
  // every peek, so the second peek goes on where the first stopped.
  if (peekOff !== null) n.setSockInt(g, SOL_SOCKET, SO.PEEK_OFF, 0);
  let inq = 0, data: Buffer = Buffer.alloc(0), at: number | null = null;
  try {
    faultPointSync('repair'); // in repair mode, both options changed: socket-guard.ts's window
    inq = n.sockIoctlInt(g, SIOCINQ);
    if (inq > 0) data = n.sockPeek(g, inq)?.data ?? Buffer.alloc(0);
    if (data.length < inq && data.length > 0 && peekOff !== null) {
      at = data.length;
      data = Buffer.concat([data, n.sockPeek(g, inq - at)?.data ?? Buffer.alloc(0)]);
    } else if (inq > 0 && data.length === inq && n.sockIoctlInt(g, SIOCATMARK) === 1) {
      at = 0;
    }
  } finally {
    if (!inline) n.setSockInt(g, SOL_SOCKET, SO.OOBINLINE, 0);
    if (peekOff !== null) n.setSockInt(g, SOL_SOCKET, SO.PEEK_OFF, peekOff);
  }
  if (data.length !== inq) throw new Error(`the receive queue holds ${inq} bytes but ${data.length} could be read`);
  if (at === null || notYet) return { inq, data };
  return { inq, data, urgent: { at, ...(!inline && !valid ? { read: true } : {}) } };
}

/**
 * The urgent pointer that marks a segment's first byte: Linux takes it as pointing one past the
 * urgent byte (BSD's reading of RFC 793) unless net.ipv4.tcp_stdurg (tcp(7)), read in ferry's
 * network namespace, the restore's.
 */
function pointerToFirst(): number {
  try {
    return readFileSync('/proc/sys/net/ipv4/tcp_stdurg', 'utf8').trim() === '1' ? 0 : 1;
  } catch {
    return 1;
  }
}

/**
 * Gives a connection rebuilt in repair mode (its queue holding the bytes before the mark, the
 * peer existing) the bytes from the mark on as the peer sent them, the first with URG; then
 * takes a byte MSG_OOB had read. `ack` is the socket's snd_una now; `window` the peer's
 * window field. Waits (up to 2 s) until the kernel queued them.
 */
export function deliverUrgent(fd: number, rec: InetRecord, tail: Buffer, ack: number, window: number): void {
  const n = native();
  const t = rec.tcp!;
  const u = t.urgent!;
  const seq = u32(t.recvSeq + u.at);
  const urgent = pointerToFirst();
  for (let off = 0; off < tail.length; off += SEGMENT) {
    sendSegment({
      from: rec.remote!, to: rec.local!, seq: u32(seq + off), ack, window,
      flags: TH_ACK | TH_PSH | (off === 0 ? TH_URG : 0), urgent: off === 0 ? urgent : 0,
      payload: tail.subarray(off, off + SEGMENT),
    });
  }
  // rcv_nxt (TCP_QUEUE_SEQ of the receive queue, in repair mode) reaches the queue's end once
  // the kernel took them all (SIOCINQ would stop at the mark).
  const end = u32(t.recvSeq + t.recvBytes);
  const rcvNxt = (): number => {
    n.setSockInt(fd, IPPROTO_TCP, TCP.REPAIR_QUEUE, TCP_RECV_QUEUE);
    const v = u32(n.getSockInt(fd, IPPROTO_TCP, TCP.QUEUE_SEQ));
    n.setSockInt(fd, IPPROTO_TCP, TCP.REPAIR_QUEUE, TCP_NO_QUEUE);
    return v;
  };
  awaitSegment('the bytes from the urgent mark on', () => rcvNxt() === end, () => `${u32(rcvNxt() - seq)} of ${tail.length} bytes are queued`);
  if (u.read) n.sockRecv(fd, 1, MSG_OOB);
}

/** Checks an image's urgent state against the receive queue it belongs to. */
export function checkUrgent(u: unknown, recvBytes: number, bad: (why: string) => never): void {
  if (u === undefined) return;
  const x = u as TcpUrgent;
  if (typeof x !== 'object' || x === null || !Number.isInteger(x.at) || x.at < 0 || x.at >= recvBytes
    || (x.read !== undefined && typeof x.read !== 'boolean') || Object.keys(x).some((k) => k !== 'at' && k !== 'read')) {
    bad('has an invalid urgent mark (not inside its receive queue)');
  }
}
