/**
 * The receive queue of a unix socket (unix(7)): its messages, the descriptors they carry
 * (SCM_RIGHTS) and their senders' credentials (SCM_CREDENTIALS), read at dump without
 * consuming anything and sent again on restore. unix.ts decides which socket sends to which;
 * this module reads and writes the messages.
 */
import { FerryError } from '../errors.js';
import { native, type UnixCreds, type UnixDiag } from '../native/binding.js';
import { readProcText } from '../proc/read.js';
import { parseStatus } from '../proc/status.js';
import type { DumpContext, OpenContext } from './types.js';
import type { UnixRecord } from './unix.js';

// socket(7), unix(7)
const SOL_SOCKET = 1;
const SO_PASSCRED = 16, SO_SNDBUFFORCE = 32, SO_PEEK_OFF = 42;
const MSG_CTRUNC = 0x8, MSG_TRUNC = 0x20;
/** sk_shutdown bit (UNIX_DIAG_SHUTDOWN). */
const RCV_SHUTDOWN = 1;

/** Largest message (and read chunk) peeked at dump. */
const PEEK_MAX = 1 << 20;
/** Largest queue accepted from an image for one socket. */
const MAX_QUEUE = 256 << 20;
/** Most messages (or stream runs) queued on one socket, at dump and in an image. */
const MAX_MESSAGES = 1 << 20;
/** SCM_MAX_FD: most descriptors one SCM_RIGHTS message carries (include/net/scm.h). */
const SCM_MAX_FD = 253;
/** Most descriptors in flight on one socket accepted from an image. */
const MAX_IN_FLIGHT = 1 << 16;
/** PID_MAX_LIMIT (include/linux/threads.h): pids are below it. */
const PID_MAX_LIMIT = 1 << 22;

/** The credentials a queued message carries. */
export interface UnixMessageCreds {
  pid: number | null;
  uid: number;
  gid: number;
}

/** A receive queue as peeked at dump. */
export interface Queue {
  data: Buffer;
  messages: number[];
  fds: number[][];
  creds: Array<UnixMessageCreds | null>;
  /** SO_PEEK_OFF and SO_PASSCRED as the socket had them (peeking changes both until the checkpoint ends). */
  peekOff: number;
  passcred: number;
}

/** An image pid -> the restored process's pid as ferry sees it (FileKind.afterTree). */
export type HostPid = (pid: number) => number | undefined;

/**
 * Reads the receive queue of `g` (a copy of the socket in the controller) without consuming
 * it: MSG_PEEK at a peek offset (SO_PEEK_OFF set to 0), with SO_PASSCRED set so that every
 * message shows its sender's credentials; both are put back when the checkpoint ends. The
 * files a message carries are installed in the controller by the peek and handed to `adopt`.
 *
 * A stream peek glues consecutive writes with the same credentials and stops after a write
 * carrying descriptors (unix_stream_read_generic), and where in such a run the write with the
 * descriptors began cannot be seen (a peek of any size at any offset of the run goes on to it,
 * MSG_PEEK copying nothing more but taking its descriptors): each run is kept as one write
 * carrying them.
 */
export function peekQueue(g: number, d: UnixDiag, type: UnixRecord['type'], ctx: DumpContext, where: string,
  adopt: (fd: number) => number): Queue {
  const n = native();
  const peekOff = n.unixGetOpt(g, SOL_SOCKET, SO_PEEK_OFF);
  const passcred = n.unixGetOpt(g, SOL_SOCKET, SO_PASSCRED);
  n.unixSetOpt(g, SOL_SOCKET, SO_PEEK_OFF, 0);
  ctx.onFinish(() => { n.unixSetOpt(g, SOL_SOCKET, SO_PEEK_OFF, peekOff); });
  if (!passcred) {
    n.unixSetOpt(g, SOL_SOCKET, SO_PASSCRED, 1);
    ctx.onFinish(() => { n.unixSetOpt(g, SOL_SOCKET, SO_PASSCRED, 0); });
  }
  const q: Queue = { data: Buffer.alloc(0), messages: [], fds: [], creds: [], peekOff, passcred };
  const chunks: Buffer[] = [];
  let total = 0;
  const closeAll = (fds: readonly number[]): void => { for (const f of fds) n.closeFd(f); };
  const credsOf = (c: UnixCreds | null): UnixMessageCreds | null => (c ? { pid: treePid(c.pid, ctx), uid: c.uid, gid: c.gid } : null);
  const push = (data: Buffer, fds: number[], c: UnixCreds | null): void => {
    chunks.push(data);
    q.messages.push(data.length);
    const ids: number[] = [];
    try {
      for (const f of fds) ids.push(adopt(f));
    } catch (err) {
      closeAll(fds.slice(ids.length + 1)); // the one refused is the engine's already
      throw err;
    }
    q.fds.push(ids);
    q.creds.push(credsOf(c));
    total += data.length;
    if (total > MAX_QUEUE) throw new Error(`more than ${MAX_QUEUE} bytes queued on ${where}`);
    if (q.messages.length > MAX_MESSAGES) throw new Error(`more than ${MAX_MESSAGES} messages queued on ${where}`);
  };
  for (;;) {
    let m = n.unixPeek(g, PEEK_MAX);
    if (m === null) break;
    if ((m.flags & MSG_CTRUNC) !== 0) {
      closeAll(m.fds);
      throw new Error(`a message queued on ${where} carries more control data than a peek can take`);
    }
    if (type === 'stream' && m.fds.length > 0 && m.data.length === PEEK_MAX) {
      // The run may be cut inside the write carrying the files: read it whole.
      closeAll(m.fds);
      n.unixSetOpt(g, SOL_SOCKET, SO_PEEK_OFF, total);
      m = n.unixPeek(g, Math.max(PEEK_MAX, Math.min(d.rqueue - total, MAX_QUEUE + 1)))!;
      if ((m.flags & MSG_CTRUNC) !== 0) closeAll(m.fds);
      if ((m.flags & MSG_CTRUNC) !== 0 || m.data.length > MAX_QUEUE) throw new Error(`more than ${MAX_QUEUE} bytes queued on ${where}`);
    }
    if ((m.flags & MSG_TRUNC) !== 0) {
      closeAll(m.fds);
      throw new Error(`a message queued on ${where} is larger than ${PEEK_MAX} bytes`);
    }
    if (m.data.length === 0 && m.fds.length === 0) {
      // Stream: end of file. Datagram/seqpacket: an empty message, or end of file once the
      // receive side is shut down and every byte was seen.
      if (type === 'stream') break;
      if ((d.shutdown & RCV_SHUTDOWN) !== 0 && (type === 'dgram' || total >= d.rqueue)) break;
    }
    push(m.data, m.fds, m.creds);
  }
  q.data = Buffer.concat(chunks);
  return q;
}

/**
 * The tree's pid of a sender seen from ferry as `pid`, or null when the sender is not a
 * process of the tree (or is gone: the kernel shows 0).
 */
function treePid(pid: number, ctx: DumpContext): number | null {
  if (pid <= 0 || !ctx.pids.has(pid)) return null;
  try {
    return parseStatus(readProcText(pid, 'status')).nsPid.at(-1) ?? pid;
  } catch {
    return null;
  }
}

/**
 * Writes `rec`'s queued data into its socket by sending it from `from` (to `to`, a name, when
 * given), message by message, each with the files it carried (SCM_RIGHTS: the controller's
 * descriptors of those files) and its sender's credentials (SCM_CREDENTIALS: the restored
 * sender's pid, as ferry sees it, when it was a process of the tree, else ferry's own).
 */
export function fill(rec: UnixRecord, from: number, ctx: OpenContext, hostPid: HostPid, to?: Buffer): void {
  if (!rec.queue) return;
  const n = native();
  const data = ctx.blob(rec.queue);
  const units = rec.messages ?? [data.length];
  if (units.reduce((a, b) => a + b, 0) !== data.length) {
    throw new FerryError('EIMAGE', `image: unix socket (file ${rec.id}) lists messages of ${units.reduce((a, b) => a + b, 0)} bytes for a queue of ${data.length}`);
  }
  // The data is charged to the sender until read: make room for all of it.
  n.unixSetOpt(from, SOL_SOCKET, SO_SNDBUFFORCE, Math.min(2 ** 30, data.length * 2 + (units.length + 16) * 4096));
  let off = 0;
  units.forEach((len, i) => {
    const msg = data.subarray(off, off + len);
    const fds = (rec.fds?.[i] ?? []).map((id) => {
      const fd = ctx.opened(id);
      if (fd === undefined) throw new FerryError('EIMAGE', `image: unix socket (file ${rec.id}) has a message carrying file ${id}, which was not opened`);
      return fd;
    });
    const c = rec.creds?.[i];
    const creds = c ? { pid: (c.pid !== null ? hostPid(c.pid) : undefined) ?? process.pid, uid: c.uid, gid: c.gid } : null;
    if (rec.type === 'stream') {
      // The files go with the first write of the run (its first byte brings them).
      for (let done = 0; done < len;) {
        const k = n.unixSend(from, msg.subarray(done), null, done === 0 ? fds : [], creds);
        if (k <= 0) throw new Error(`short write of queued data: ${done} of ${len} bytes`);
        done += k;
      }
    } else {
      const k = n.unixSend(from, msg, to ?? null, fds, creds);
      if (k !== len) throw new Error(`short write of a queued message: ${k} of ${len} bytes`);
    }
    off += len;
  });
}

/** Checks, before `rec`'s socket is made, that every file its messages carry is a file of the image. */
export function checkCarried(rec: UnixRecord, ctx: OpenContext): void {
  for (const id of (rec.fds ?? []).flat()) {
    if (!ctx.record(id)) throw new FerryError('EIMAGE', `image: unix socket (file ${rec.id}) has a message carrying file ${id}, which is not in the image`);
  }
}

/**
 * Shape checks of the queue's per-message fields (the image is input): message lengths, the
 * file ids each message carries (SCM_MAX_FD each, MAX_IN_FLIGHT in all), the credentials.
 */
export function checkMessages(rec: UnixRecord, bad: (why: string) => never): void {
  const id = (v: unknown): boolean => Number.isSafeInteger(v) && (v as number) >= 0 && (v as number) < 2 ** 32;
  if (rec.messages !== undefined && (!Array.isArray(rec.messages) || rec.messages.length > MAX_MESSAGES
    || !rec.messages.every((v) => Number.isSafeInteger(v) && v >= 0 && v <= MAX_QUEUE))) bad('has invalid messages');
  const count = rec.messages?.length ?? 0;
  if (rec.fds !== undefined) {
    if (!Array.isArray(rec.fds) || rec.fds.length !== count
      || !rec.fds.every((f) => Array.isArray(f) && f.length <= SCM_MAX_FD && f.every((v) => Number.isSafeInteger(v) && v > 0))) {
      bad(`has invalid descriptors in flight (at most ${SCM_MAX_FD} file ids per message, one list per message)`);
    }
    if (rec.fds.reduce((a, f) => a + f.length, 0) > MAX_IN_FLIGHT) bad(`has more than ${MAX_IN_FLIGHT} descriptors in flight`);
  }
  // A pid of the tree's namespace; uid and gid below (uid_t)-1, which the kernel refuses.
  const okCreds = (c: unknown): boolean => {
    if (c === null) return true;
    if (typeof c !== 'object') return false;
    const { pid, uid, gid } = c as UnixMessageCreds;
    return (pid === null || (Number.isSafeInteger(pid) && pid > 0 && pid < PID_MAX_LIMIT))
      && id(uid) && id(gid) && uid !== 2 ** 32 - 1 && gid !== 2 ** 32 - 1;
  };
  if (rec.creds !== undefined && (!Array.isArray(rec.creds) || rec.creds.length !== count || !rec.creds.every(okCreds))) bad('has invalid credentials of queued messages');
}
