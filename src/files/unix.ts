/**
 * Unix domain sockets (unix(7)): stream, datagram and seqpacket; unbound, bound to a path or
 * an abstract name, listening (with the connections not yet accepted), connected; with their
 * queued data (message boundaries kept), the descriptors and credentials its messages carry,
 * options, O_NONBLOCK and shutdown state.
 *
 * Dump. Everything comes from the kernel's own description of the socket, sock_diag(7)
 * (NETLINK_SOCK_DIAG, linux/unix_diag.h): type, state, name, the inode of the file a path name
 * created, the peer's inode, the clients queued on a listener, queue sizes, shutdown bits.
 * One socket is one open file (a socket cannot be opened again through /proc), so a socket
 * inode names one file id of the image: peers are found by inode among the tree's
 * descriptors. Before any socket is dumped, every queue of the tree's sockets is read from a
 * pidfd_getfd(2) copy with MSG_PEEK at a peek offset (SO_PEEK_OFF set to 0) and SO_PASSCRED
 * set, both put back when the checkpoint ends: nothing is consumed, each datagram or seqpacket
 * message is read whole, with its sender's pid, uid and gid (SCM_CREDENTIALS).
 *
 * Descriptors in flight. A peek of a message carrying SCM_RIGHTS installs duplicates of its
 * files in ferry (the same open file descriptions): DumpContext.adopt makes each a file of the
 * image, grouped with the tree's descriptors (a pipe end held by a task and in flight is one
 * file) and dumped by its own module; a unix socket among them is surveyed like the tree's (its
 * queue, its peer), to any depth, so a socket whose peer is only in flight, a socket carrying
 * itself or its peer, nested queues all come back. The record keeps per message the file ids
 * it carried. A stream peek glues the writes of one sender and stops after a write carrying
 * descriptors, and where in that run the write began cannot be seen (a peek of any size goes on
 * to it, copying nothing more but taking its descriptors): the run is kept as one write.
 *
 * Restore. Every socket is created and bound in `open`, so no socket waits for another. A
 * connected pair is rebuilt as one object: socketpair(2) when both ends are in the image (the
 * first end opened makes both; the other is handed over through the per-restore scratch map);
 * a connection accepted from a listener of the image is rebuilt through that listener (a
 * controller-made client connects, the listener accepts), so the accepted end has the
 * listener's name again; connections queued on a listener and not yet accepted are rebuilt by
 * connecting the client end (held by a process of the tree) to the restored listener, in the
 * same order. The rest waits for `afterTree`, once every file is open and every process
 * exists: queued data is written back by the other end of the pair (a datagram socket that has
 * no such peer gets its messages from a throwaway socket, through its name, before a socket
 * connected to it connects), message by message, with the controller's descriptors of the
 * files it carried (SCM_RIGHTS: any file of the image, this socket and its peer included) and
 * its sender's credentials (SCM_CREDENTIALS: the restored sender's pid as ferry sees it, which
 * the kernel lets root name while that process exists); then shutdown(2) is replayed and the
 * options set.
 *
 * Names. A path name whose file was the socket's at dump is bound there again (a stale socket
 * file nobody uses is replaced). One whose path led elsewhere (unlinked, replaced by another
 * file, its directory removed, or a relative name whose file is in no working directory of the
 * tree) is bound in a private directory that is removed at once (`bindGhost`): the same name
 * for getsockname(2), the path not made again, nothing of ferry's in the way of another socket
 * of the image bound to that path since. An unnamed datagram socket whose peer was closed, with
 * messages queued, is one end of a pair whose other end sends them and is closed.
 *
 * Refused, before anything is written, naming pid, fd and the socket: a peer outside the tree
 * (unless --ext-unix-sk, see `external`), a queued connection whose client is not in the tree
 * or that already holds data, sockets in another network namespace (not found by sock_diag:
 * 'unsupported file'), a file in flight of a kind restored through its holder (epoll, tty)
 * that no process of the tree holds. Sockets are recreated in ferry's network namespace.
 *
 * Not kept: the pid of a sender outside the tree (or gone; ferry's pid is sent, with the
 * recorded uid and gid), SCM_SECURITY labels, which write of a stream run carried its
 * descriptors (above), the sender address of datagrams not sent by the socket's connected
 * peer, out-of-band data, the name of a connected stream socket whose listener is not in the
 * image (it comes back unnamed), and the path of a relative name whose file is in no working
 * directory of the tree (the name is kept, the file is not reachable by that path).
 */
import { fstatSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, type BigIntStats } from 'node:fs';
import { tmpdir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { errnoCode, FerryError } from '../errors.js';
import { shown } from '../image/manifest.js';
import type { FileRecord } from '../image/records.js';
import { native, type UnixDiag } from '../native/binding.js';
import { O_CLOEXEC, O_DIRECTORY, O_NONBLOCK, O_PATH } from '../proc/fcntl.js';
import { inOwnMountNs } from '../proc/read.js';
import { openIn, rootOf, shownIn, viaFd, withParent, type ConfinedRoot, type Parent } from './confined.js';
import { checkCarried, checkMessages, fill, peekQueue, type HostPid, type Queue, type UnixMessageCreds } from './unix-queue.js';
import { NOT_YET, type DumpContext, type FdDesc, type FileKind, type FileOptions, type OpenContext } from './types.js';

// socket(7), unix(7), tcp_states.h
const SOCK_STREAM = 1, SOCK_DGRAM = 2, SOCK_SEQPACKET = 5;
const TCP_ESTABLISHED = 1, TCP_LISTEN = 10;
const SOL_SOCKET = 1;
const SO_SNDBUF = 7, SO_RCVBUF = 8, SO_PASSCRED = 16, SO_RCVLOWAT = 18, SO_SNDBUFFORCE = 32,
  SO_RCVBUFFORCE = 33, SO_PASSSEC = 34, SO_PEEK_OFF = 42, SO_PASSPIDFD = 76;
/** sk_shutdown bits (UNIX_DIAG_SHUTDOWN) and shutdown(2) `how`. */
const RCV_SHUTDOWN = 1, SEND_SHUTDOWN = 2;
const SHUT_RD = 0, SHUT_WR = 1, SHUT_RDWR = 2;
const S_IFMT = 0o170000, S_IFSOCK = 0o140000;
/** open(2): do not follow a last component that is a symbolic link. */
const O_NOFOLLOW = 0o400000;

type SockType = 'stream' | 'dgram' | 'seqpacket';
const TYPES: Readonly<Record<SockType, number>> = { stream: SOCK_STREAM, dgram: SOCK_DGRAM, seqpacket: SOCK_SEQPACKET };

/** A bound name. */
export interface UnixName {
  /** A path name as it was bound (getsockname(2) returns it so); may be relative. */
  path?: string;
  /** The directory a relative `path` is resolved in (the holder's cwd where the file was found). */
  dir?: string;
  /** An abstract name: the bytes after the leading NUL, base64. */
  abstract?: string;
  /**
   * The socket file of a path name: mode and owner; null when the path did not lead to the
   * socket's own file (restore binds the name without making the path: bindGhost).
   */
  file?: { mode: number; uid: number; gid: number } | null;
}

/**
 * How the socket is rebuilt:
 * - `unconnected`: created and bound (if named); a listening socket is `listener`.
 * - `pair`: connected to `peer`, both in the image, rebuilt together with socketpair(2).
 * - `to`: a datagram socket connected to the named socket `peer`, which does not send back.
 * - `accepted`: the server end of a connection accepted from `listener` (peer: the client end,
 *   null when it was closed); `client`: the client end of such a connection; both are rebuilt
 *   by the listener.
 * - `embryo`: the client end of a connection queued on `listener`, not yet accepted.
 * - `orphan`: an end whose peer was closed: stream/seqpacket (end of file after its data), or
 *   an unnamed datagram socket with messages queued (its next send fails: ECONNREFUSED).
 * - `external`: connected outside the tree; with --ext-unix-sk it is connected again to
 *   `external`, the peer's name, on restore.
 */
export type UnixRole = 'unconnected' | 'listener' | 'pair' | 'to' | 'accepted' | 'client' | 'embryo' | 'orphan' | 'external';

/** What a unix record holds besides id and kind. */
export interface UnixFields {
  /** Socket inode at dump (informational: its identity is the file id). */
  ino: string;
  type: SockType;
  /** Status flags of the open file (O_NONBLOCK). */
  flags: number;
  role: UnixRole;
  /** Its own name; null when unbound (an accepted end has its listener's name). */
  name: UnixName | null;
  /** The name is not given back: the socket is a connected end whose listener is not in the image. */
  nameLost?: boolean;
  /** File id of the peer (pair, to, accepted, client); null when none. */
  peer: number | null;
  /** File id of the listener that rebuilds it (accepted, client, embryo). */
  listener: number | null;
  /** Listener: backlog, ids of its accepted ends (server side) and of its queued clients, oldest first. */
  backlog?: number;
  accepted?: number[];
  embryos?: number[];
  /** `external`: the address to connect to. */
  external?: UnixName;
  /** sk_shutdown bits: RCV_SHUTDOWN 1, SEND_SHUTDOWN 2. */
  shutdown: number;
  opts: { passcred: number; passsec: number; passpidfd: number; rcvbuf: number; sndbuf: number; peekOff: number; rcvlowat: number };
  /** Image entry holding the receive queue, null when empty. */
  queue: string | null;
  /**
   * Length of each queued message, oldest first (datagram/seqpacket); for a stream, of each
   * run of bytes sent with the same credentials and descriptors (a run carrying descriptors
   * is one write, its descriptors arriving with its first byte).
   */
  messages?: number[];
  /** Per message: the file ids its SCM_RIGHTS carried, in order ([] for none); absent when none did. */
  fds?: number[][];
  /**
   * Per message: the sender's credentials (SCM_CREDENTIALS): `pid` in the tree's pid
   * namespace, or null when the sender is not a process of the tree (then ferry's pid is sent).
   */
  creds?: Array<UnixMessageCreds | null>;
}

export type { UnixMessageCreds } from './unix-queue.js';

export interface UnixRecord extends FileRecord, UnixFields {
  kind: 'unix';
}

// ---- helpers shared by dump and restore ----

const typeName = (t: number): SockType | undefined =>
  t === SOCK_STREAM ? 'stream' : t === SOCK_DGRAM ? 'dgram' : t === SOCK_SEQPACKET ? 'seqpacket' : undefined;

/** sun_path bytes of a recorded name, for bind(2) (as bound) or connect(2) (absolute). */
function addrOf(n: UnixName, forConnect: boolean): Buffer {
  if (n.abstract !== undefined) return Buffer.concat([Buffer.from([0]), Buffer.from(n.abstract, 'base64')]);
  const p = n.path!;
  return Buffer.from(forConnect && n.dir !== undefined && !isAbsolute(p) ? join(n.dir, p) : p);
}

/** The file system path a path name refers to. */
const fsPath = (n: UnixName): string => (n.dir !== undefined && !isAbsolute(n.path!) ? join(n.dir, n.path!) : n.path!);

/** Human form of a name: the path, or @name for an abstract one. */
function showName(n: UnixName | null | undefined): string {
  if (!n) return 'unnamed';
  if (n.abstract !== undefined) return `@${Buffer.from(n.abstract, 'base64').toString().replace(/\0/g, '@')}`;
  return n.path!;
}

/** Raw sock_diag name -> path bytes up to the first NUL, or the abstract bytes. */
function rawName(d: UnixDiag): { path?: string; abstract?: Buffer } | null {
  if (!d.name || d.name.length === 0) return null;
  if (d.name[0] === 0) return { abstract: d.name.subarray(1) };
  const end = d.name.indexOf(0);
  return { path: d.name.subarray(0, end < 0 ? d.name.length : end).toString() };
}

/** Whether two sockets carry the same name (a listener and the ends it accepted). */
function sameName(a: UnixDiag, b: UnixDiag): boolean {
  if (!a.name || !b.name || a.name.length === 0) return false;
  if (a.vfs && b.vfs) return a.vfs.ino === b.vfs.ino && a.vfs.major === b.vfs.major && a.vfs.minor === b.vfs.minor;
  return a.vfs === null && b.vfs === null && a.name.equals(b.name);
}

/** Who outside the tree holds socket `ino` ("pid 12 (comm) fd 4"), for error messages. */
function holdersOf(ino: number): string {
  const want = `socket:[${ino}]`;
  const found: string[] = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p) || found.length >= 3) continue;
    let fds: string[];
    try { fds = readdirSync(`/proc/${p}/fd`); } catch { continue; }
    for (const f of fds) {
      try {
        if (readlinkSync(`/proc/${p}/fd/${f}`) === want) {
          let comm = '?';
          try { comm = readFileSync(`/proc/${p}/comm`, 'utf8').trim(); } catch { /* gone */ }
          found.push(`pid ${p} (${comm}) fd ${f}`);
          break;
        }
      } catch { /* closed meanwhile */ }
    }
  }
  return found.length > 0 ? `held by ${found.join(', ')}` : 'held by no process (a connection not yet accepted?)';
}

// ---- dump ----

/** What one checkpoint knows about unix sockets: every socket of the namespace, the tree's holders. */
interface Survey {
  table: Map<number, UnixDiag>;
  /**
   * socket inode -> the first (pid, fd) of the tree holding it, or, for a socket found only
   * in flight, ferry's pid and the descriptor the peek installed.
   */
  holders: Map<number, { pid: number; fd: number }>;
  /** socket inode -> its receive queue (the sockets that have one). */
  queues: Map<number, Queue>;
}

/** One survey per checkpoint (its options object is created once per checkpoint). */
const surveys = new WeakMap<FileOptions, Survey>();

function survey(ctx: DumpContext, ino: number): Survey {
  let s = surveys.get(ctx.options);
  if (s && s.table.has(ino)) return s;
  const table = new Map<number, UnixDiag>();
  for (const d of native().unixDiagAll()) table.set(d.ino, d);
  const holders = new Map<number, { pid: number; fd: number }>();
  // The first holder by pid, then fd.
  for (const { pid, fd, link } of [...ctx.descriptors].sort((a, b) => a.pid - b.pid || a.fd - b.fd)) {
    const m = /^socket:\[(\d+)\]$/.exec(link);
    if (m && !holders.has(Number(m[1]))) holders.set(Number(m[1]), { pid, fd });
  }
  // Surveyed again (a socket it did not know): the queues peeked already and the sockets found
  // in flight stay (peeking again would read the peek offset and SO_PASSCRED it set).
  for (const [ino, h] of s?.holders ?? []) if (h.pid === process.pid && !holders.has(ino)) holders.set(ino, h);
  s = { table, holders, queues: s?.queues ?? new Map() };
  surveys.set(ctx.options, s);
  peekAll(s, ctx);
  return s;
}

/**
 * Peeks every receive queue of the tree's sockets before any socket is dumped: the files its
 * messages carry become files of the image (DumpContext.adopt), and a unix socket among them
 * is surveyed in turn (its own queue, its peer), so that a socket whose peer is only in flight
 * finds it.
 */
function peekAll(s: Survey, ctx: DumpContext): void {
  const work = [...s.holders.entries()];
  for (let i = 0; i < work.length; i++) {
    const [ino, h] = work[i]!;
    const d = s.table.get(ino);
    const type = d && typeName(d.type);
    // An unconnected stream/seqpacket socket or a listener has no queue (recvmsg(2) is EINVAL).
    if (!d || !type || s.queues.has(ino) || d.state === TCP_LISTEN || (type !== 'dgram' && d.state !== TCP_ESTABLISHED)) continue;
    const link = `socket:[${ino}]`;
    const where = h.pid === process.pid ? `${link}, itself in flight` : `pid ${h.pid} fd ${h.fd} (${link})`;
    const g = h.pid === process.pid ? h.fd : ctx.grab({ pid: h.pid, fd: h.fd, link });
    s.queues.set(ino, peekQueue(g, d, type, ctx, where, (fd) => {
      const id = ctx.adopt(fd, `in a message queued on ${where}`);
      const st = fstatSync(fd, { bigint: true });
      const carried = Number(st.ino);
      if (st.isSocket() && s.table.has(carried) && !s.holders.has(carried)) {
        const at = { pid: process.pid, fd };
        s.holders.set(carried, at);
        work.push([carried, at]);
      }
      return id;
    }));
  }
}

/** The file id of socket `ino` if a process of the tree holds it. */
function idOf(s: Survey, ctx: DumpContext, ino: number): number | undefined {
  const h = s.holders.get(ino);
  return h ? ctx.fileIdOf(h.pid, h.fd) : undefined;
}

/** A listener of the tree carrying `d`'s name (the listener `d` was accepted from). */
function treeListenerNamed(s: Survey, d: UnixDiag): UnixDiag | undefined {
  for (const l of s.table.values()) {
    if (l.state === TCP_LISTEN && l.ino !== d.ino && s.holders.has(l.ino) && sameName(l, d)) return l;
  }
  return undefined;
}

/**
 * Records the name of a socket, finding its file for a path name: it must be the socket's own
 * (same inode), else the name is kept without a file (`file: null`: unlinked, replaced by
 * another file, its directory removed) and restore binds it without making the path again.
 * A relative name is looked for in the working directory of the holder, then of every other
 * process of the tree (the binder's cwd at bind time is not known).
 */
function dumpName(d: UnixDiag, desc: FdDesc, pids: ReadonlySet<number> = new Set()): UnixName | null {
  const raw = rawName(d);
  if (!raw) return null;
  if (raw.abstract) return { abstract: raw.abstract.toString('base64') };
  const path = raw.path!;
  const name: UnixName = { path, file: null };
  if (!d.vfs) return name;
  const vfs = d.vfs;
  // The socket file at `at` (relative to the task's root: a container's socket was bound
  // inside it), or null.
  const fileAt = (pid: number, at: string): { mode: number; uid: number; gid: number } | null => {
    const root = inOwnMountNs(pid) ? '' : `/proc/${pid}/root`;
    try {
      const st = lstatSync(`${root}${at}`);
      return st.ino === vfs.ino && (st.mode & S_IFMT) === S_IFSOCK ? { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid } : null;
    } catch (err) {
      if (errnoCode(err) !== 'ENOENT' && errnoCode(err) !== 'ENOTDIR') throw err;
      return null;
    }
  };
  if (isAbsolute(path)) {
    name.file = fileAt(desc.pid, path);
    return name;
  }
  for (const pid of [desc.pid, ...[...pids].filter((p) => p !== desc.pid).sort((x, y) => x - y)]) {
    let cwd: string;
    try { cwd = readlinkSync(`/proc/${pid}/cwd`); } catch { continue; }
    const file = fileAt(pid, join(cwd, path));
    if (file) return { ...name, dir: cwd, file };
  }
  return name;
}

function dumpUnix(desc: FdDesc, ctx: DumpContext): UnixFields {
  const ino = Number(desc.stat.ino);
  const s = survey(ctx, ino);
  const d = s.table.get(ino);
  const refuse = (why: string): never => {
    throw new FerryError('EUNSUPPORTED', `unsupported file: pid ${desc.pid} fd ${desc.fd} -> ${desc.link} (${why})`);
  };
  if (!d) return refuse('a unix socket sock_diag does not know: another network namespace?');
  const type = typeName(d.type) ?? refuse(`unix socket of type ${d.type}`);
  const n = native();
  const g = desc.pid === process.pid ? desc.fd : ctx.grab(desc);
  const opt = (o: number): number => n.unixGetOpt(g, SOL_SOCKET, o);
  const optOr0 = (o: number): number => {
    try { return opt(o); } catch { return 0; }
  };
  // Peeking changed these two until the checkpoint ends: the socket's own values were kept.
  const q = s.queues.get(ino);
  const rec: UnixFields = {
    ino: String(ino), type, flags: desc.fdinfo.flags & ~O_CLOEXEC & O_NONBLOCK, role: 'unconnected',
    name: dumpName(d, desc, ctx.pids), peer: null, listener: null, shutdown: d.shutdown,
    opts: {
      passcred: q?.passcred ?? opt(SO_PASSCRED), passsec: optOr0(SO_PASSSEC), passpidfd: optOr0(SO_PASSPIDFD),
      rcvbuf: opt(SO_RCVBUF), sndbuf: opt(SO_SNDBUF), peekOff: q?.peekOff ?? opt(SO_PEEK_OFF), rcvlowat: opt(SO_RCVLOWAT),
    },
    queue: null,
  };
  const outside = (peerIno: number, what: string): string =>
    `its peer socket:[${peerIno}]${what} is ${holdersOf(peerIno)}, outside the checkpointed tree`;
  const connectedStream = type !== 'dgram' && d.state === TCP_ESTABLISHED;

  if (d.state === TCP_LISTEN) {
    rec.role = 'listener';
    rec.backlog = d.wqueue;
    rec.embryos = d.icons.map((c) => {
      const id = c === 0 ? undefined : idOf(s, ctx, c);
      if (id === undefined) {
        refuse(`listening unix socket ${showName(rec.name)} has a connection not yet accepted whose client ${c === 0 ? 'was closed' : `socket:[${c}] is ${holdersOf(c)}, outside the checkpointed tree`}: accept it first`);
      }
      return id!;
    });
    rec.accepted = [];
    for (const o of s.table.values()) {
      if (o.state === TCP_ESTABLISHED && o.type === d.type && s.holders.has(o.ino) && sameName(o, d)) rec.accepted.push(idOf(s, ctx, o.ino)!);
    }
    rec.accepted.sort((a, b) => a - b);
  } else if (connectedStream || (type === 'dgram' && d.peer !== 0)) {
    const p = d.peer !== 0 ? s.table.get(d.peer) : undefined;
    const peerId = p ? idOf(s, ctx, p.ino) : undefined;
    if (p && peerId !== undefined) {
      if (type === 'dgram') {
        if (p.peer === ino) rec.role = 'pair';
        else if (p.name && p.name.length > 0) rec.role = 'to';
        else refuse(`datagram socket connected to socket:[${p.ino}], which is unnamed and connected elsewhere`);
        rec.peer = peerId;
      } else {
        const mine = treeListenerNamed(s, d);
        const theirs = mine ? undefined : treeListenerNamed(s, p);
        rec.peer = peerId;
        if (mine) {
          rec.role = 'accepted';
          rec.listener = idOf(s, ctx, mine.ino)!;
        } else if (theirs) {
          rec.role = 'client';
          rec.listener = idOf(s, ctx, theirs.ino)!;
        } else {
          rec.role = 'pair';
        }
      }
    } else if (p) {
      // Connected outside the tree.
      const peerName = rawName(p);
      if (!ctx.options.extUnixSk) {
        refuse(`${outside(p.ino, peerName ? ` (${peerName.path ?? '@' + peerName.abstract!.toString()})` : '')}: checkpoint the peer's process too, or pass --ext-unix-sk`);
      }
      if (!peerName || (p.vfs === null && peerName.path !== undefined)) {
        refuse(`${outside(p.ino, '')}, and it has no name to connect to again on restore, even with --ext-unix-sk`);
      }
      if (type !== 'dgram' && d.rqueue > 0) {
        refuse(`${outside(p.ino, '')}; ${d.rqueue} bytes it sent are still queued and would be lost: a restored connection is a new one, even with --ext-unix-sk`);
      }
      rec.role = 'external';
      rec.external = peerName!.abstract ? { abstract: peerName!.abstract.toString('base64') } : { path: peerName!.path! };
      if (peerName!.path !== undefined && !isAbsolute(peerName!.path)) {
        refuse(`${outside(p.ino, '')}, bound to the relative path '${peerName!.path}': cannot connect to it again`);
      }
    } else if (type !== 'dgram') {
      // No live peer: a connection queued on a listener (the embryo has no inode yet), or
      // the peer was closed.
      const l = [...s.table.values()].find((x) => x.state === TCP_LISTEN && x.icons.includes(ino));
      if (l) {
        const lid = idOf(s, ctx, l.ino);
        if (lid === undefined) {
          const ln = rawName(l);
          if (!ctx.options.extUnixSk) {
            refuse(`connected to socket:[${l.ino}] ${ln?.path ?? (ln?.abstract ? '@' + ln.abstract.toString() : '')}, a listener ${holdersOf(l.ino)}, outside the checkpointed tree, that has not accepted it yet: checkpoint the listener's process too, or pass --ext-unix-sk`);
          }
          if (d.wqueue > 0 || !ln || (ln.path !== undefined && !isAbsolute(ln.path))) {
            refuse(`its connection to the outside listener socket:[${l.ino}] is not accepted yet${d.wqueue > 0 ? ' and holds data it sent' : ''}: it cannot be made again on restore, even with --ext-unix-sk`);
          }
          rec.role = 'external';
          rec.external = ln!.abstract ? { abstract: ln!.abstract.toString('base64') } : { path: ln!.path! };
        } else {
          if (d.wqueue > 0) {
            refuse(`connection not yet accepted by listener socket:[${l.ino}] (${showName(dumpName(l, desc))}) already holds data this end sent, which only accept(2) can reach: let the server accept it first`);
          }
          rec.role = 'embryo';
          rec.listener = lid;
        }
      } else {
        const mine = treeListenerNamed(s, d);
        rec.role = mine ? 'accepted' : 'orphan';
        if (mine) rec.listener = idOf(s, ctx, mine.ino)!;
      }
    }
    // A datagram socket whose peer is gone comes back unconnected (its next send would have
    // failed with ECONNREFUSED and disconnected it).
  }

  if (rec.name && (rec.role === 'accepted' || ((rec.role === 'pair' || rec.role === 'client' || rec.role === 'orphan') && type !== 'dgram'))) {
    // A connected stream end carries a name when it was accepted (its listener's) or bound
    // before connect(2); only an accepted end whose listener is in the image gets it back.
    if (rec.role !== 'accepted') rec.nameLost = true;
  }

  // The queue was peeked with every other (survey): an unconnected stream/seqpacket socket or
  // a listener has none.
  if (q && q.messages.length > 0 && rec.role !== 'listener' && rec.role !== 'embryo') {
    // An unnamed datagram socket with messages and no live peer: its peer was closed (it still
    // points at it; its next send fails with ECONNREFUSED). Rebuilt so: one end of a pair
    // whose other end sends the messages and is closed.
    if (type === 'dgram' && rec.role === 'unconnected' && !rec.name) rec.role = 'orphan';
    rec.queue = ctx.blob('queue', q.data);
    rec.messages = q.messages;
    if (q.fds.some((f) => f.length > 0)) rec.fds = q.fds;
    rec.creds = q.creds;
  }
  return rec;
}

// ---- restore ----

/** Per-restore state, in ctx.scratch('unix'). */
interface Made {
  /** Sockets made for a record by another record's open (the other end of a pair…). */
  ready: Map<number, number>;
  /** `to` sockets created and bound, waiting for their peer to be bound. */
  pending: Map<number, number>;
  /** Names bound without their path (bindGhost): record id -> O_PATH descriptor of the socket file, closed in afterTree. */
  ghosts: Map<number, number>;
  /**
   * What waits until every file and process exists (afterTree), in the order the sockets were
   * made: first every `fill` (queued data, which may carry any file of the image and the
   * sender's pid; the connect(2) of a socket whose queue is filled through its name), then
   * every `finish` (options, shutdown: a socket shut down for reading takes no more data).
   */
  late: Array<{ rec: UnixRecord; fill?: (hostPid: HostPid) => void; finish?: () => void }>;
}

function made(ctx: OpenContext): Made {
  const m = ctx.scratch<Made>('unix');
  let s = m.get('state');
  if (!s) m.set('state', (s = { ready: new Map(), pending: new Map(), ghosts: new Map(), late: [] }));
  return s;
}

/**
 * Keeps `fd`, made for record `id` by another record's open, until the scheduler opens `id`
 * (open returns it); held by the engine meanwhile (OpenContext.hold: closed if the restore fails).
 */
function hand(ctx: OpenContext, id: number, fd: number): void {
  made(ctx).ready.set(id, fd);
  ctx.hold(fd);
}

/** Every live unix socket here, for "is this name in use" checks. */
function liveNames(): UnixDiag[] {
  return native().unixDiagAll();
}

/** How a record names itself in errors. */
const whatOf = (rec: UnixRecord, name: UnixName | null | undefined): string => `unix socket ${showName(name)} (file ${rec.id} of the image)`;

/**
 * Runs `fn` with the parent directory of a path name, resolved inside the record's root
 * (confined.ts: no escape by "..", symlink or /proc magic link): everything restore does to
 * the socket file (look, unlink a stale one, bind, chmod, chown) acts on the
 * last component through that directory's descriptor. A failure that is not already one
 * line becomes one, naming the record and the path.
 */
function atName<T>(rec: UnixRecord, name: UnixName, fn: (p: Parent, root: ConfinedRoot, path: string) => T): T {
  const root = rootOf(rec);
  const path = fsPath(name);
  const what = whatOf(rec, name);
  try {
    return withParent(root, path, what, (p) => fn(p, root, path));
  } catch (err) {
    if (err instanceof FerryError) throw err;
    const why = errnoCode(err) === 'ENOENT' || errnoCode(err) === 'ENOTDIR' ? 'its directory does not exist here' : (err as Error).message;
    throw new FerryError('EOPEN', `${what}: cannot reach ${shownIn(root, path)}: ${why}`, { cause: err, path });
  }
}

/** Throws when the socket file `st` (at `path`) cannot be bound again: it is not a socket, or a live socket holds it. */
function checkStale(what: string, at: string, st: BigIntStats, live: UnixDiag[]): void {
  if (!st.isSocket()) {
    throw new FerryError('EEXIST', `${what}: ${at} exists and is not a socket: refused (only a stale socket file is replaced); move it away first`);
  }
  const holder = live.find((d) => BigInt(d.vfs?.ino ?? -1) === st.ino && (d.type === SOCK_DGRAM || d.state !== TCP_ESTABLISHED));
  if (holder) {
    throw new FerryError('EADDRINUSE', `${what}: ${at} is in use by socket:[${holder.ino}] ${holdersOf(holder.ino)}: stop it first`);
  }
}

/** Throws when `name` cannot be bound here: the path holds something else, or a live socket holds it. */
function checkFree(rec: UnixRecord, name: UnixName, live: UnixDiag[]): void {
  const what = whatOf(rec, name);
  if (name.abstract !== undefined) {
    const want = addrOf(name, false);
    const holder = live.find((d) => d.name?.equals(want));
    if (holder) {
      throw new FerryError('EADDRINUSE', `${what}: the abstract name is in use by socket:[${holder.ino}] ${holdersOf(holder.ino)}: stop it first`);
    }
    return;
  }
  atName(rec, name, (p, root, path) => {
    const st = p.lstat();
    if (st) checkStale(what, shownIn(root, path), st, live);
  });
}

/**
 * Runs `fn` with the address that reaches `name` (to connect(2) or send to it): an abstract
 * name as it is; a path name through /proc/self/fd/N of an O_PATH descriptor of its file,
 * resolved inside the record's root, which must be a socket: the kernel follows that link to
 * the socket file and nowhere else. `rec` is the record whose root the path is in. A name
 * bound without making its path (bindGhost) is reached through the descriptor kept of its file.
 */
function reach<T>(rec: UnixRecord, name: UnixName, ctx: OpenContext, fn: (addr: Buffer) => T): T {
  if (name.abstract !== undefined) return fn(addrOf(name, true));
  // A name bound without its path (bindGhost): through the descriptor of its socket file.
  const ghost = name === rec.name ? made(ctx).ghosts.get(rec.id) : undefined;
  if (ghost !== undefined) return fn(Buffer.from(`/proc/self/fd/${ghost}`));
  const root = rootOf(rec);
  const path = fsPath(name);
  const what = whatOf(rec, name);
  return viaFd(root, path, what, false, (at, st) => {
    if (!st.isSocket()) throw new FerryError('ECHANGED', `${what}: ${shownIn(root, path)} is not a socket: refused, nothing was connected`, { path });
    return fn(Buffer.from(at));
  });
}

/**
 * connect(2) of `fd` to `name` (see `reach`), never waiting: O_NONBLOCK is set first (finish()
 * sets the record's flags afterwards), so a listener whose backlog is full (an edited image
 * can queue any number of connections on it) is an error at once, not a connect that blocks
 * until someone accepts, which no one will.
 */
function connectTo(fd: number, rec: UnixRecord, name: UnixName, ctx: OpenContext, kept?: Kept): void {
  const n = native();
  n.setFl(fd, O_NONBLOCK);
  const go = (addr: Buffer): void => {
    try {
      n.unixConnect(fd, addr);
    } catch (err) {
      if (errnoCode(err) !== 'EAGAIN') throw err;
      throw new FerryError('EIMAGE', `${whatOf(rec, rec.name)}: cannot connect to ${showName(name)}: its listener's backlog is full `
        + '(the image queues more connections on it than it can hold): refused', { cause: err });
    }
  };
  if (kept) go(kept.addr);
  else reach(rec, name, ctx, go);
}

/** An address kept for afterTree (`keep`); `drop` lets its descriptor go. */
interface Kept {
  addr: Buffer;
  drop(): void;
}

/**
 * The address that reaches `name` (see `reach`), taken now and kept for afterTree, when the
 * roots the paths resolve in are closed again: a path name through an O_PATH descriptor of
 * its socket file, opened now through the confined one and held by the engine until `drop`.
 */
function keep(rec: UnixRecord, name: UnixName, ctx: OpenContext): Kept {
  const ghost = name === rec.name ? made(ctx).ghosts.get(rec.id) : undefined;
  if (name.abstract !== undefined || ghost !== undefined) {
    return { addr: reach(rec, name, ctx, (a) => a), drop: () => {} };
  }
  const n = native();
  const fd = reach(rec, name, ctx, (at) => n.openRaw(at.toString(), O_PATH | O_CLOEXEC));
  ctx.hold(fd);
  return { addr: Buffer.from(`/proc/self/fd/${fd}`), drop: () => { ctx.release(fd); n.closeFd(fd); } };
}

/**
 * A new socket for `rec`: its receive buffer (queued data must fit) and its own name (a stale
 * socket file is removed first).
 */
function bindOwn(fd: number, rec: UnixRecord, ctx: OpenContext): void {
  native().unixSetOpt(fd, SOL_SOCKET, SO_RCVBUFFORCE, Math.floor(rec.opts.rcvbuf / 2));
  const name = rec.name;
  if (!name || rec.nameLost || rec.role === 'accepted') return;
  const n = native();
  if (name.path === undefined) {
    n.unixBind(fd, addrOf(name, false));
    return;
  }
  if (name.file === null) {
    bindGhost(fd, rec, name, ctx);
    return;
  }
  const what = whatOf(rec, name);
  atName(rec, name, (p, root, path) => {
    const at = shownIn(root, path);
    // A stale socket file is removed (the name itself, through its directory); anything else
    // at the name is refused: restore never deletes what is not a socket.
    const stale = p.lstat();
    if (stale) {
      checkStale(what, at, stale, liveNames());
      p.unlink();
    }
    // bind(2) takes a path, not a directory descriptor, and the name must stay as recorded
    // (getsockname(2) returns it): it is bound in a thread whose root is the record's root
    // (chroot(2)) and, for a relative name, whose working directory is its directory,
    // resolved confined; then the file it made must be the one under the directory checked
    // above (a rename racing with the bind could have moved it: refused).
    const cwd = name.dir !== undefined && !isAbsolute(name.path!) ? openIn(root, name.dir, O_PATH | O_DIRECTORY, what) : -1;
    try {
      n.unixBindIn(fd, addrOf(name, false), root.fd, cwd);
    } finally {
      if (cwd >= 0) n.closeFd(cwd);
    }
    const bound = n.unixDiag(Number(fstatSync(fd, { bigint: true }).ino))?.vfs;
    const st = p.lstat();
    if (!bound || !st?.isSocket() || st.ino !== BigInt(bound.ino)) {
      throw new FerryError('ECONFINE', `${what}: the socket file bind(2) made is not ${at} (a directory on the way was renamed meanwhile): refused`, { path });
    }
    if (name.file) {
      p.chmod(name.file.mode);
      p.chown(name.file.uid, name.file.gid);
    }
  });
}

/**
 * Binds `name`, a path name whose file was not the socket's at dump (unlinked, replaced by
 * another file, its directory removed, or a relative name found in no working directory of
 * the tree), without touching the path: in a thread whose root is a new private directory
 * (chroot(2), and for a relative name a working directory inside it), so that getsockname(2)
 * returns the name as it was bound and the socket file is made in that directory. An O_PATH
 * descriptor of the file is kept (Made.ghosts) for the sockets that connect or send to it
 * during the restore (connect(2) through /proc/self/fd/N finds the socket by its inode, linked
 * or not), and the directory is removed at once.
 */
function bindGhost(fd: number, rec: UnixRecord, name: UnixName, ctx: OpenContext): void {
  const n = native();
  // Where the name leads inside the new root: ".." stops at its top, as it would in a chroot.
  const parts: string[] = isAbsolute(name.path!) ? [] : ['cwd'];
  for (const c of name.path!.split('/')) {
    if (c === '' || c === '.') continue;
    if (c === '..') parts.pop();
    else parts.push(c);
  }
  const top = mkdtempSync(join(tmpdir(), 'ferry-unix-'));
  try {
    mkdirSync(join(top, ...parts.slice(0, -1)), { recursive: true, mode: 0o700 });
    if (!isAbsolute(name.path!)) mkdirSync(join(top, 'cwd'), { recursive: true, mode: 0o700 });
    const root = n.openRaw(top, O_PATH | O_DIRECTORY | O_CLOEXEC);
    let cwd = -1;
    try {
      if (!isAbsolute(name.path!)) cwd = n.openRaw(join(top, 'cwd'), O_PATH | O_DIRECTORY | O_CLOEXEC);
      n.unixBindIn(fd, addrOf(name, false), root, cwd);
    } finally {
      n.closeFd(root);
      if (cwd >= 0) n.closeFd(cwd);
    }
    const file = n.openRaw(join(top, ...parts), O_PATH | O_NOFOLLOW | O_CLOEXEC);
    ctx.hold(file);
    made(ctx).ghosts.set(rec.id, file);
  } finally {
    rmSync(top, { recursive: true, force: true });
  }
}

/**
 * Fills a named datagram socket's queue from `tmp`, a throwaway socket, through its own name
 * (`at`, kept when it was opened), then lets both go. `tmp` was made then too, in the network
 * namespace the restore makes sockets in: an abstract name is found in the sender's namespace.
 */
function fillByName(rec: UnixRecord, ctx: OpenContext, hostPid: HostPid, tmp: number, at: Kept): void {
  try {
    fill(rec, tmp, ctx, hostPid, at.addr);
  } finally {
    ctx.release(tmp);
    native().closeFd(tmp);
    at.drop();
  }
}

/** Options, shutdown and status flags, last (after the data was written through it). */
function finish(fd: number, rec: UnixRecord): void {
  const n = native();
  const o = rec.opts;
  n.unixSetOpt(fd, SOL_SOCKET, SO_SNDBUFFORCE, Math.floor(o.sndbuf / 2));
  n.unixSetOpt(fd, SOL_SOCKET, SO_RCVBUFFORCE, Math.floor(o.rcvbuf / 2));
  if (o.passcred) n.unixSetOpt(fd, SOL_SOCKET, SO_PASSCRED, 1);
  if (o.passsec) n.unixSetOpt(fd, SOL_SOCKET, SO_PASSSEC, 1);
  if (o.passpidfd) n.unixSetOpt(fd, SOL_SOCKET, SO_PASSPIDFD, 1);
  if (o.rcvlowat !== 1) n.unixSetOpt(fd, SOL_SOCKET, SO_RCVLOWAT, o.rcvlowat);
  if (o.peekOff !== -1) n.unixSetOpt(fd, SOL_SOCKET, SO_PEEK_OFF, o.peekOff);
  if (rec.role !== 'listener' && rec.role !== 'orphan') {
    const sh = rec.shutdown & (RCV_SHUTDOWN | SEND_SHUTDOWN);
    if (sh !== 0) n.unixShutdown(fd, sh === (RCV_SHUTDOWN | SEND_SHUTDOWN) ? SHUT_RDWR : sh === RCV_SHUTDOWN ? SHUT_RD : SHUT_WR);
  }
  n.setFl(fd, rec.flags & O_NONBLOCK);
}

/**
 * Both ends of a connection exist: data both ways, then options and shutdown, once every
 * file and process exists (afterTree). `b` is closed after its data was sent when `rb` is
 * null (the peer was closed).
 */
function setupPair(a: number, ra: UnixRecord, b: number, rb: UnixRecord | null, ctx: OpenContext): void {
  made(ctx).late.push({
    rec: ra,
    fill: (hostPid) => {
      fill(ra, b, ctx, hostPid);
      if (rb) fill(rb, a, ctx, hostPid);
    },
    finish: () => {
      finish(a, ra);
      if (rb) finish(b, rb);
      else {
        ctx.release(b);
        native().closeFd(b); // end of file after the data
      }
    },
  });
}

/** Another record of this restore, which must be a unix socket. */
function other(id: number | null, ctx: OpenContext, of: UnixRecord): UnixRecord {
  const r = id === null ? undefined : ctx.record(id);
  if (!r || r.kind !== 'unix') throw new FerryError('EIMAGE', `image: unix socket (file ${of.id}) names file ${String(id)}, which is not a unix socket of the image`);
  return r as UnixRecord;
}

/** A connection the listener `of` rebuilds: a unix record of `role` that names `of` as its listener. */
function member(id: number, role: 'accepted' | 'embryo', ctx: OpenContext, of: UnixRecord): UnixRecord {
  const r = other(id, ctx, of);
  if (r.role !== role || r.listener !== of.id) {
    throw new FerryError('EIMAGE', `image: unix listener (file ${of.id}) lists file ${id} as ${role === 'accepted' ? 'an accepted' : 'a queued'} connection, `
      + `which is ${r.role === role ? `the connection of listener ${String(r.listener)}` : `a ${r.role} socket`}`);
  }
  return r;
}

function openListener(rec: UnixRecord, ctx: OpenContext): number {
  const n = native();
  const st = made(ctx);
  const type = TYPES[rec.type];
  const fd = n.unixSocket(type);
  const closeOnError: number[] = [fd];
  try {
    bindOwn(fd, rec, ctx);
    n.unixListen(fd, rec.backlog ?? 0);
    // Nothing below waits: the listener and the clients are non-blocking until finish() (a
    // connect to a full backlog fails, an accept with nothing queued fails).
    n.setFl(fd, O_NONBLOCK);
    // Accepted connections first (accept(2) takes the oldest queued one), then the queued ones.
    for (const sid of rec.accepted ?? []) {
      const s = member(sid, 'accepted', ctx, rec);
      const c = s.peer === null ? null : other(s.peer, ctx, s);
      if (c && (c.role !== 'client' || c.listener !== rec.id || c.peer !== s.id)) {
        throw new FerryError('EIMAGE', `image: unix socket (file ${s.id}) accepted from listener file ${rec.id} names file ${c.id} as its client, which is not that listener's client`);
      }
      const cfd = n.unixSocket(type);
      closeOnError.push(cfd);
      if (c) bindOwn(cfd, c, ctx);
      connectTo(cfd, rec, rec.name!, ctx);
      const sfd = n.unixAccept(fd);
      closeOnError.push(sfd);
      bindOwn(sfd, s, ctx);
      checkCarried(s, ctx);
      if (c) checkCarried(c, ctx);
      setupPair(sfd, s, cfd, c, ctx);
      hand(ctx, s.id, sfd);
      if (c) hand(ctx, c.id, cfd);
      else ctx.hold(cfd); // closed by setupPair's finish
    }
    for (const eid of rec.embryos ?? []) {
      const e = member(eid, 'embryo', ctx, rec);
      const cfd = n.unixSocket(type);
      closeOnError.push(cfd);
      bindOwn(cfd, e, ctx);
      connectTo(cfd, rec, rec.name!, ctx);
      st.late.push({ rec: e, finish: () => finish(cfd, e) });
      hand(ctx, e.id, cfd);
    }
    st.late.push({ rec, finish: () => finish(fd, rec) });
    return fd;
  } catch (err) {
    for (const f of closeOnError) {
      ctx.release(f);
      try { n.closeFd(f); } catch { /* already */ }
    }
    throw err;
  }
}

function openUnix(rec: UnixRecord, ctx: OpenContext): number | typeof NOT_YET {
  const n = native();
  const st = made(ctx);
  const ready = st.ready.get(rec.id);
  if (ready !== undefined) {
    st.ready.delete(rec.id);
    return ready;
  }
  const type = TYPES[rec.type];
  switch (rec.role) {
    case 'listener':
      return openListener(rec, ctx);
    case 'accepted': case 'client': case 'embryo':
      // Made by the listener's open, which has not run yet.
      if (rec.listener === null || ctx.opened(rec.listener) === undefined) return NOT_YET;
      throw new FerryError('EIMAGE', `image: unix socket (file ${rec.id}) was not rebuilt by its listener (file ${rec.listener})`);
    case 'pair': case 'orphan': {
      const peer = rec.role === 'pair' ? other(rec.peer, ctx, rec) : null;
      checkCarried(rec, ctx);
      if (peer) checkCarried(peer, ctx);
      const [a, b] = n.unixSocketpair(type);
      try {
        bindOwn(a, rec, ctx);
        if (peer) bindOwn(b, peer, ctx);
      } catch (err) {
        n.closeFd(a);
        n.closeFd(b);
        throw err;
      }
      setupPair(a, rec, b, peer, ctx);
      if (peer) hand(ctx, peer.id, b);
      else ctx.hold(b); // closed by setupPair's finish
      return a;
    }
    case 'to': case 'external': case 'unconnected': {
      if (rec.role === 'external' && !ctx.options.extUnixSk) {
        throw new FerryError('EUNSUPPORTED', `unix socket (file ${rec.id}) was connected outside the tree to ${showName(rec.external)}: restore with --ext-unix-sk to connect it there again`);
      }
      checkCarried(rec, ctx);
      // Created and bound at the first call; a `to` socket then waits (NOT_YET) until its
      // peer is bound too: every end binds itself first, so even a ring of sockets connected
      // to each other has no dependency cycle.
      let fd = st.pending.get(rec.id);
      if (fd === undefined) {
        fd = n.unixSocket(type);
        try {
          bindOwn(fd, rec, ctx);
        } catch (err) {
          n.closeFd(fd);
          throw err;
        }
        st.pending.set(rec.id, fd);
        ctx.hold(fd);
      }
      const peer = rec.role === 'to' ? other(rec.peer, ctx, rec) : null;
      if (peer && ctx.opened(peer.id) === undefined && !st.pending.has(peer.id) && !st.ready.has(peer.id)) return NOT_YET;
      if (peer && !peer.name) throw new FerryError('EIMAGE', `image: unix socket (file ${rec.id}) is connected to file ${peer.id}, which has no name`);
      st.pending.delete(rec.id);
      const sock = fd;
      // What the late work reaches is found now, while the paths' roots are open: the peer's
      // name, and its own for a queue filled through it before connect(2) (a connected
      // datagram socket takes data from its peer only) by a throwaway socket made now.
      let target: Kept | undefined;
      try {
        target = peer ? keep(peer, peer.name!, ctx) : rec.role === 'external' ? keepExternal(rec, ctx) : undefined;
      } catch (err) {
        ctx.release(sock);
        n.closeFd(sock);
        throw err;
      }
      const own = rec.queue !== null && rec.name !== null && (rec.type === 'dgram' || rec.role !== 'unconnected') ? keep(rec, rec.name, ctx) : undefined;
      const tmp = own ? n.unixSocket(SOCK_DGRAM) : -1;
      if (tmp >= 0) ctx.hold(tmp);
      st.late.push({
        rec,
        fill: (hostPid) => {
          if (own) fillByName(rec, ctx, hostPid, tmp, own);
          if (!target) return;
          try {
            connectTo(sock, peer ?? rec, peer ? peer.name! : rec.external!, ctx, target);
          } catch (err) {
            if (err instanceof FerryError || rec.role !== 'external') throw err;
            throw new FerryError('ECONNECT', `unix socket (file ${rec.id}) cannot connect again to ${showName(rec.external)} outside the tree: ${(err as Error).message}: start its peer first`, { cause: err });
          } finally {
            target.drop();
          }
        },
        finish: () => finish(sock, rec),
      });
      return sock;
    }
  }
}

/** The name outside the tree an `external` socket connects to again, kept (see `keep`). */
function keepExternal(rec: UnixRecord, ctx: OpenContext): Kept {
  try {
    return keep(rec, rec.external!, ctx);
  } catch (err) {
    if (err instanceof FerryError) throw err;
    throw new FerryError('ECONNECT', `unix socket (file ${rec.id}) cannot connect again to ${showName(rec.external)} outside the tree: ${(err as Error).message}: start its peer first`, { cause: err });
  }
}

/** The late work of every socket (Made.late): fills, then finishes; then the ghosts' descriptors go. */
function afterTree(ctx: OpenContext, hostPid: HostPid): void {
  const st = made(ctx);
  const late = st.late.splice(0);
  const run = (rec: UnixRecord, fn: () => void): void => {
    try {
      fn();
    } catch (err) {
      if (err instanceof FerryError) throw err;
      throw new FerryError('EOPEN', `cannot restore unix socket ${showName(rec.name)} (file ${rec.id}, ${rec.type}, ${rec.role}): ${(err as Error).message}`, { cause: err });
    }
  };
  for (const l of late) if (l.fill) run(l.rec, () => l.fill!(hostPid));
  for (const l of late) if (l.finish) run(l.rec, l.finish);
  // Every socket that had to reach a name bound without its path is connected now.
  for (const fd of st.ghosts.values()) {
    ctx.release(fd);
    native().closeFd(fd);
  }
  st.ghosts.clear();
}

/** Shape checks (the image is input). */
function checkRecord(rec: UnixRecord): void {
  const bad = (why: string): never => {
    throw new FerryError('EIMAGE', `image: unix socket (file ${rec.id}) ${why}`);
  };
  if (typeof rec.type !== 'string' || !Object.hasOwn(TYPES, rec.type)) bad(`has unknown type ${shown(rec.type)}`);
  const roles: UnixRole[] = ['unconnected', 'listener', 'pair', 'to', 'accepted', 'client', 'embryo', 'orphan', 'external'];
  if (!roles.includes(rec.role)) bad(`has unknown role ${shown(rec.role)}`);
  if (!Number.isSafeInteger(rec.flags) || !Number.isSafeInteger(rec.shutdown)) bad('has invalid flags');
  const int32 = (v: unknown): boolean => Number.isSafeInteger(v) && (v as number) >= -(2 ** 31) && (v as number) < 2 ** 31;
  const id = (v: unknown): boolean => Number.isSafeInteger(v) && (v as number) >= 0 && (v as number) < 2 ** 32;
  // The socket file's mode and owner (chmod, lchown) and the directory of a relative name, when there.
  const okFile = (f: UnixName['file']): boolean => f === undefined || f === null
    || (typeof f === 'object' && Number.isSafeInteger(f.mode) && f.mode >= 0 && f.mode <= 0o7777 && id(f.uid) && id(f.gid));
  const okName = (nm: UnixName | null | undefined): boolean => nm === null || nm === undefined
    || (typeof nm === 'object' && ((typeof nm.path === 'string' && nm.path.length > 0 && nm.path.length < 108 && !nm.path.includes('\0'))
      || (typeof nm.abstract === 'string' && Buffer.byteLength(nm.abstract, 'base64') < 108))
      && okFile(nm.file) && (nm.dir === undefined || (typeof nm.dir === 'string' && nm.dir.length <= 4096 && !nm.dir.includes('\0'))));
  if (!okName(rec.name) || !okName(rec.external)) bad('has an invalid name');
  // Every option is set with setsockopt(2), an int each.
  const opts = ['passcred', 'passsec', 'passpidfd', 'rcvbuf', 'sndbuf', 'peekOff', 'rcvlowat'] as const;
  if (typeof rec.opts !== 'object' || rec.opts === null || !opts.every((k) => int32(rec.opts[k]))) bad('has invalid options');
  if (rec.queue !== null && typeof rec.queue !== 'string') bad('has an invalid queue');
  checkMessages(rec, bad);
  // A listener's lists of file ids: lists (a connection each, as many as its backlog can hold at most).
  for (const list of [rec.accepted, rec.embryos]) if (list !== undefined && (!Array.isArray(list) || list.length > 1 << 20)) bad('names invalid files');
  const ids = [rec.peer, rec.listener, ...(rec.accepted ?? []), ...(rec.embryos ?? [])];
  if (!ids.every((v) => v === null || Number.isSafeInteger(v))) bad('names invalid files');
  // Each connection a listener rebuilds is one socket, rebuilt once.
  const conns = [...(rec.accepted ?? []), ...(rec.embryos ?? [])];
  if (new Set(conns).size !== conns.length || conns.includes(rec.id)) bad('lists a connection twice (or itself)');
  if (rec.role === 'listener' && (!rec.name || !Number.isSafeInteger(rec.backlog))) bad('is a listener without a name or backlog');
  if (rec.role === 'external' && !rec.external) bad('is connected outside without an address');
  if ((rec.role === 'pair' || rec.role === 'to') && rec.peer === null) bad('has no peer');
}

export const unix: FileKind<UnixRecord> = {
  kind: 'unix',

  matches(fd: FdDesc): boolean {
    if (!fd.link.startsWith('socket:[') || !fd.stat.isSocket()) return false;
    // The protocol's name first (one getxattr): an inet or netlink socket costs no sock_diag.
    try {
      if (!native().sockProtoName(`/proc/${fd.pid}/fd/${fd.fd}`).startsWith('UNIX')) return false; // UNIX, UNIX-STREAM
    } catch {
      return false;
    }
    return native().unixDiag(Number(fd.stat.ino)) !== null;
  },

  key(fd: FdDesc): string {
    return `unix:${fd.stat.ino}`;
  },

  dump(fd: FdDesc, ctx: DumpContext): Omit<UnixRecord, 'id' | 'kind'> {
    try {
      return { ...dumpUnix(fd, ctx) };
    } catch (err) {
      if (err instanceof FerryError) throw err;
      throw new FerryError('EDUMP', `checkpoint: unix socket fd ${fd.fd} of pid ${fd.pid} (${fd.link}): ${(err as Error).message}`, { cause: err });
    }
  },

  check(rec: UnixRecord): void {
    checkRecord(rec);
    // A name bound without its path (file null) does not touch the path.
    if (rec.name && !rec.nameLost && rec.role !== 'accepted' && rec.name.file !== null) checkFree(rec, rec.name, liveNames());
  },

  // The files its queued messages carry: sent with them (afterTree), before the threads exist.
  filesBeforeThreads(rec: UnixRecord): readonly number[] {
    return Array.isArray(rec.fds) ? rec.fds.flatMap((m: unknown) => (Array.isArray(m) ? m.filter((id): id is number => typeof id === 'number') : [])) : [];
  },

  open(rec: UnixRecord, ctx: OpenContext): number | typeof NOT_YET {
    try {
      return openUnix(rec, ctx);
    } catch (err) {
      if (err instanceof FerryError) throw err;
      throw new FerryError('EOPEN', `cannot restore unix socket ${showName(rec.name)} (file ${rec.id}, ${rec.type}, ${rec.role}): ${(err as Error).message}`, { cause: err });
    }
  },

  afterTree,
};
