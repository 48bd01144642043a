/**
 * Unix domain sockets (unix(7)): stream, datagram and seqpacket; unbound, bound to a path or
 * an abstract name, listening (with the connections not yet accepted), connected; with their
 * queued data (message boundaries kept), options, O_NONBLOCK and shutdown state.
 *
 * Dump. Everything comes from the kernel's own description of the socket, sock_diag(7)
 * (NETLINK_SOCK_DIAG, linux/unix_diag.h): type, state, name, the inode of the file a path name
 * created, the peer's inode, the clients queued on a listener, queue sizes, shutdown bits.
 * One socket is one open file (a socket cannot be opened again through /proc), so a socket
 * inode names one file id of the image: peers are found by inode among the tree's
 * descriptors. Queued data is read from a pidfd_getfd(2) copy with MSG_PEEK at a peek offset
 * (SO_PEEK_OFF set to 0, then put back when the checkpoint ends): nothing is consumed, each
 * datagram or seqpacket message is read whole and its length kept.
 *
 * Restore. A connected pair is rebuilt as one object: socketpair(2) when both ends are in the
 * image (the first end opened makes both; the other is handed over through the per-restore
 * scratch map); a connection accepted from a listener of the image is rebuilt through that
 * listener (a controller-made client connects, the listener accepts), so the accepted end has
 * the listener's name again; connections queued on a listener and not yet accepted are
 * rebuilt by connecting the client end (held by a process of the tree) to the restored
 * listener, in the same order. Queued data is written back by the other end of the pair (a
 * datagram socket that has no such peer gets its messages from a throwaway socket, through
 * its name), before shutdown(2) is replayed and the options set. A socket connected to a
 * named datagram socket waits (NOT_YET) until that one is bound; every end first creates and
 * binds itself, so even a ring of sockets connected to each other has no dependency cycle.
 *
 * Refused, before anything is written, naming pid, fd and the socket: descriptors in flight
 * (SCM_RIGHTS in a queued message), a peer outside the tree (unless --ext-unix-sk, see
 * `external`), a queued connection whose client is not in the tree or that already holds
 * data, sockets in another network namespace (not found by sock_diag: 'unsupported file').
 * Sockets are recreated in ferry's network namespace.
 *
 * Not kept: the credentials (SCM_CREDENTIALS) attached to queued messages (they carry
 * ferry's), the sender address of datagrams not sent by the socket's connected peer,
 * out-of-band data, and the name of a connected stream socket whose listener is not in the
 * image (it comes back unnamed).
 */
import { fstatSync, lstatSync, readdirSync, readFileSync, readlinkSync, type BigIntStats } from 'node:fs';
import { isAbsolute, join } from 'node:path';
import { errnoCode, FerryError } from '../errors.js';
import { shown } from '../image/manifest.js';
import type { FileRecord } from '../image/records.js';
import { native, type UnixDiag } from '../native/binding.js';
import { O_CLOEXEC, O_DIRECTORY, O_NONBLOCK, O_PATH } from '../proc/fcntl.js';
import { inOwnMountNs } from '../proc/read.js';
import { openIn, rootOf, shownIn, viaFd, withParent, type ConfinedRoot, type Parent } from './confined.js';
import { NOT_YET, type DumpContext, type FdDesc, type FileKind, type FileOptions, type OpenContext, type TaskContext } from './types.js';

// socket(7), unix(7), tcp_states.h
const SOCK_STREAM = 1, SOCK_DGRAM = 2, SOCK_SEQPACKET = 5;
const TCP_ESTABLISHED = 1, TCP_LISTEN = 10;
const SOL_SOCKET = 1;
const SO_SNDBUF = 7, SO_RCVBUF = 8, SO_PASSCRED = 16, SO_RCVLOWAT = 18, SO_SNDBUFFORCE = 32,
  SO_RCVBUFFORCE = 33, SO_PASSSEC = 34, SO_PEEK_OFF = 42, SO_PASSPIDFD = 76;
const MSG_CTRUNC = 0x8, MSG_TRUNC = 0x20;
/** sk_shutdown bits (UNIX_DIAG_SHUTDOWN) and shutdown(2) `how`. */
const RCV_SHUTDOWN = 1, SEND_SHUTDOWN = 2;
const SHUT_RD = 0, SHUT_WR = 1, SHUT_RDWR = 2;
/** Largest message (and read chunk) peeked at dump. */
const PEEK_MAX = 1 << 20;
/** Largest queue accepted from an image for one socket. */
const MAX_QUEUE = 256 << 20;
const S_IFMT = 0o170000, S_IFSOCK = 0o140000;

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
  /** The socket file of a path name: mode and owner; null when it was unlinked (restore binds, then unlinks). */
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
 * - `orphan`: a stream/seqpacket end whose peer was closed (end of file after its data).
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
  /** Datagram/seqpacket: length of each queued message, oldest first. */
  messages?: number[];
}

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
  /** socket inode -> the first (pid, fd) of the tree holding it. */
  holders: Map<number, { pid: number; fd: number }>;
}

/** One survey per checkpoint (its options object is created once per checkpoint). */
const surveys = new WeakMap<FileOptions, Survey>();

function survey(ctx: DumpContext, ino: number): Survey {
  let s = surveys.get(ctx.options);
  if (s && s.table.has(ino)) return s;
  const table = new Map<number, UnixDiag>();
  for (const d of native().unixDiagAll()) table.set(d.ino, d);
  const holders = new Map<number, { pid: number; fd: number }>();
  for (const pid of [...ctx.pids].sort((a, b) => a - b)) {
    let fds: string[];
    try { fds = readdirSync(`/proc/${pid}/fd`); } catch { continue; }
    for (const f of fds.map(Number).sort((a, b) => a - b)) {
      let link: string;
      try { link = readlinkSync(`/proc/${pid}/fd/${f}`); } catch { continue; }
      const m = /^socket:\[(\d+)\]$/.exec(link);
      if (m && !holders.has(Number(m[1]))) holders.set(Number(m[1]), { pid, fd: f });
    }
  }
  s = { table, holders };
  surveys.set(ctx.options, s);
  return s;
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

/** Records the name of a socket, finding its file for a path name. */
function dumpName(d: UnixDiag, desc: FdDesc): UnixName | null {
  const raw = rawName(d);
  if (!raw) return null;
  if (raw.abstract) return { abstract: raw.abstract.toString('base64') };
  const path = raw.path!;
  const name: UnixName = { path };
  if (!isAbsolute(path)) {
    // The binder's cwd at bind time is unknown; the holder's cwd now is the best guess, kept
    // only when the file found there is the socket's.
    try { name.dir = readlinkSync(`/proc/${desc.pid}/cwd`); } catch { /* gone */ }
  }
  name.file = null;
  if (d.vfs && (isAbsolute(path) || name.dir !== undefined)) {
    // A socket of another mount namespace (a container) was bound inside its task's root.
    const root = inOwnMountNs(desc.pid) ? '' : `/proc/${desc.pid}/root`;
    try {
      const st = lstatSync(`${root}${fsPath(name)}`);
      if (st.ino === d.vfs.ino && (st.mode & S_IFMT) === S_IFSOCK) name.file = { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid };
    } catch (err) {
      if (errnoCode(err) !== 'ENOENT' && errnoCode(err) !== 'ENOTDIR') throw err;
    }
  }
  return name;
}

/** Reads the receive queue through the grabbed copy without consuming it. */
function peekQueue(desc: FdDesc, d: UnixDiag, type: SockType, ctx: DumpContext): { data: Buffer; messages: number[] } {
  const n = native();
  const g = ctx.grab(desc);
  const saved = n.unixGetOpt(g, SOL_SOCKET, SO_PEEK_OFF);
  n.unixSetOpt(g, SOL_SOCKET, SO_PEEK_OFF, 0);
  ctx.onFinish(() => { n.unixSetOpt(g, SOL_SOCKET, SO_PEEK_OFF, saved); });
  const chunks: Buffer[] = [];
  const messages: number[] = [];
  let total = 0;
  for (let i = 0; ; i++) {
    if (i > 1_000_000) throw new Error('the receive queue does not end');
    const m = n.unixPeek(g, PEEK_MAX);
    if (m === null) break;
    if (m.fds > 0 || (m.flags & MSG_CTRUNC) !== 0) {
      throw new FerryError('EUNSUPPORTED',
        `unsupported file: pid ${desc.pid} fd ${desc.fd} -> ${desc.link} (a message queued on this unix socket carries descriptors (SCM_RIGHTS): descriptors in flight cannot be checkpointed; let the receiver read it first)`);
    }
    if ((m.flags & MSG_TRUNC) !== 0) throw new Error(`a queued message is larger than ${PEEK_MAX} bytes`);
    if (m.data.length === 0) {
      // Stream: end of file. Datagram/seqpacket: an empty message, or end of file once the
      // receive side is shut down and every byte was seen.
      if (type === 'stream') break;
      if ((d.shutdown & RCV_SHUTDOWN) !== 0 && (type === 'dgram' || total >= d.rqueue)) break;
    }
    chunks.push(m.data);
    messages.push(m.data.length);
    total += m.data.length;
    if (total > MAX_QUEUE) throw new Error(`more than ${MAX_QUEUE} bytes queued`);
  }
  return { data: Buffer.concat(chunks), messages };
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
  const g = ctx.grab(desc);
  const opt = (o: number): number => n.unixGetOpt(g, SOL_SOCKET, o);
  const optOr0 = (o: number): number => {
    try { return opt(o); } catch { return 0; }
  };
  const rec: UnixFields = {
    ino: String(ino), type, flags: desc.fdinfo.flags & ~O_CLOEXEC & O_NONBLOCK, role: 'unconnected',
    name: dumpName(d, desc), peer: null, listener: null, shutdown: d.shutdown,
    opts: {
      passcred: opt(SO_PASSCRED), passsec: optOr0(SO_PASSSEC), passpidfd: optOr0(SO_PASSPIDFD),
      rcvbuf: opt(SO_RCVBUF), sndbuf: opt(SO_SNDBUF), peekOff: opt(SO_PEEK_OFF), rcvlowat: opt(SO_RCVLOWAT),
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
  if (rec.name?.path !== undefined && rec.name.file === null && !isAbsolute(rec.name.path) && rec.role !== 'accepted' && !rec.nameLost) {
    refuse(`unix socket bound to the relative path '${rec.name.path}', whose file is not in the process's working directory: bind it to an absolute path`);
  }

  // An unconnected stream/seqpacket socket has no queue (recvmsg(2) on it is EINVAL).
  if (rec.role !== 'listener' && rec.role !== 'embryo' && (type === 'dgram' || connectedStream)) {
    const q = peekQueue(desc, d, type, ctx);
    if (q.messages.length > 0) {
      if (type === 'dgram' && rec.role !== 'pair' && !rec.name) {
        refuse('unnamed datagram socket with queued messages but no connected peer to send them again');
      }
      rec.queue = ctx.blob('queue', q.data);
      if (type !== 'stream') rec.messages = q.messages;
    }
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
  /** Path sockets whose file must go once every file is open: record id -> inode of the file made. */
  unlink: Map<number, bigint>;
}

function made(ctx: OpenContext): Made {
  const m = ctx.scratch<Made>('unix');
  let s = m.get('state');
  if (!s) m.set('state', (s = { ready: new Map(), pending: new Map(), unlink: new Map() }));
  return s;
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
 * the socket file (look, unlink a stale one, bind, chmod, chown, unlink again) acts on the
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
 * the socket file and nowhere else. `rec` is the record whose root the path is in.
 */
function reach<T>(rec: UnixRecord, name: UnixName, fn: (addr: Buffer) => T): T {
  if (name.abstract !== undefined) return fn(addrOf(name, true));
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
function connectTo(fd: number, rec: UnixRecord, name: UnixName): void {
  const n = native();
  n.setFl(fd, O_NONBLOCK);
  reach(rec, name, (addr) => {
    try {
      n.unixConnect(fd, addr);
    } catch (err) {
      if (errnoCode(err) !== 'EAGAIN') throw err;
      throw new FerryError('EIMAGE', `${whatOf(rec, rec.name)}: cannot connect to ${showName(name)}: its listener's backlog is full `
        + '(the image queues more connections on it than it can hold): refused', { cause: err });
    }
  });
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
    } else {
      made(ctx).unlink.set(rec.id, st.ino);
    }
  });
}

/** Writes `rec`'s queued data into its socket by sending it from `from`. */
function fill(rec: UnixRecord, from: number, ctx: OpenContext, to?: Buffer): void {
  if (!rec.queue) return;
  const n = native();
  const data = ctx.blob(rec.queue);
  const units = rec.messages ?? [data.length];
  // The data is charged to the sender until read: make room for all of it.
  n.unixSetOpt(from, SOL_SOCKET, SO_SNDBUFFORCE, Math.min(2 ** 30, data.length * 2 + (units.length + 16) * 4096));
  let off = 0;
  for (const len of units) {
    const msg = data.subarray(off, off + len);
    if (rec.type === 'stream') {
      for (let done = 0; done < len;) {
        const k = n.unixSend(from, msg.subarray(done));
        if (k <= 0) throw new Error(`short write of queued data: ${done} of ${len} bytes`);
        done += k;
      }
    } else {
      const k = to ? n.unixSend(from, msg, to) : n.unixSend(from, msg);
      if (k !== len) throw new Error(`short write of a queued message: ${k} of ${len} bytes`);
    }
    off += len;
  }
}

/** Fills a named datagram socket's queue from a throwaway socket, through its name. */
function fillByName(fd: number, rec: UnixRecord, ctx: OpenContext): void {
  if (!rec.queue || !rec.name) return;
  const n = native();
  const tmp = n.unixSocket(SOCK_DGRAM);
  try {
    reach(rec, rec.name, (addr) => fill(rec, tmp, ctx, addr));
  } finally {
    n.closeFd(tmp);
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

/** Both ends of a connection exist: names, data both ways, then options and shutdown. */
function setupPair(a: number, ra: UnixRecord, b: number, rb: UnixRecord | null, ctx: OpenContext): void {
  fill(ra, b, ctx);
  if (rb) fill(rb, a, ctx);
  finish(a, ra);
  if (rb) finish(b, rb);
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
      connectTo(cfd, rec, rec.name!);
      const sfd = n.unixAccept(fd);
      closeOnError.push(sfd);
      bindOwn(sfd, s, ctx);
      setupPair(sfd, s, cfd, c, ctx);
      st.ready.set(s.id, sfd);
      if (c) st.ready.set(c.id, cfd);
      else n.closeFd(cfd);
    }
    for (const eid of rec.embryos ?? []) {
      const e = member(eid, 'embryo', ctx, rec);
      const cfd = n.unixSocket(type);
      closeOnError.push(cfd);
      bindOwn(cfd, e, ctx);
      connectTo(cfd, rec, rec.name!);
      finish(cfd, e);
      st.ready.set(e.id, cfd);
    }
    finish(fd, rec);
    return fd;
  } catch (err) {
    for (const f of closeOnError) { try { n.closeFd(f); } catch { /* already */ } }
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
      const [a, b] = n.unixSocketpair(type);
      try {
        bindOwn(a, rec, ctx);
        if (peer) bindOwn(b, peer, ctx);
        setupPair(a, rec, b, peer, ctx);
      } catch (err) {
        n.closeFd(a);
        n.closeFd(b);
        throw err;
      }
      if (peer) st.ready.set(peer.id, b);
      else n.closeFd(b); // the peer was closed: end of file after the data
      return a;
    }
    case 'to': {
      let fd = st.pending.get(rec.id);
      if (fd === undefined) {
        fd = n.unixSocket(type);
        try {
          bindOwn(fd, rec, ctx);
          fillByName(fd, rec, ctx); // before connect(2): a connected socket takes data from its peer only
        } catch (err) {
          n.closeFd(fd);
          throw err;
        }
        st.pending.set(rec.id, fd);
      }
      const peer = other(rec.peer, ctx, rec);
      if (ctx.opened(peer.id) === undefined && !st.pending.has(peer.id) && !st.ready.has(peer.id)) return NOT_YET;
      if (!peer.name) throw new FerryError('EIMAGE', `image: unix socket (file ${rec.id}) is connected to file ${peer.id}, which has no name`);
      connectTo(fd, peer, peer.name);
      st.pending.delete(rec.id);
      finish(fd, rec);
      return fd;
    }
    case 'external': {
      if (!ctx.options.extUnixSk) {
        throw new FerryError('EUNSUPPORTED', `unix socket (file ${rec.id}) was connected outside the tree to ${showName(rec.external)}: restore with --ext-unix-sk to connect it there again`);
      }
      const fd = n.unixSocket(type);
      try {
        bindOwn(fd, rec, ctx);
        fillByName(fd, rec, ctx);
        try {
          connectTo(fd, rec, rec.external!);
        } catch (err) {
          if (err instanceof FerryError) throw err;
          throw new FerryError('ECONNECT', `unix socket (file ${rec.id}) cannot connect again to ${showName(rec.external)} outside the tree: ${(err as Error).message}: start its peer first`, { cause: err });
        }
        finish(fd, rec);
      } catch (err) {
        n.closeFd(fd);
        throw err;
      }
      return fd;
    }
    case 'unconnected': {
      const fd = n.unixSocket(type);
      try {
        bindOwn(fd, rec, ctx);
        if (rec.type === 'dgram') fillByName(fd, rec, ctx);
        finish(fd, rec);
      } catch (err) {
        n.closeFd(fd);
        throw err;
      }
      return fd;
    }
  }
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
  if (rec.messages !== undefined && (!Array.isArray(rec.messages) || !rec.messages.every((v) => Number.isSafeInteger(v) && v >= 0 && v <= MAX_QUEUE))) bad('has invalid messages');
}

export const unix: FileKind<UnixRecord> = {
  kind: 'unix',

  matches(fd: FdDesc): boolean {
    if (!fd.link.startsWith('socket:[') || !fd.stat.isSocket()) return false;
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
    if (rec.name && !rec.nameLost && rec.role !== 'accepted') checkFree(rec, rec.name, liveNames());
  },

  open(rec: UnixRecord, ctx: OpenContext): number | typeof NOT_YET {
    try {
      return openUnix(rec, ctx);
    } catch (err) {
      if (err instanceof FerryError) throw err;
      throw new FerryError('EOPEN', `cannot restore unix socket ${showName(rec.name)} (file ${rec.id}, ${rec.type}, ${rec.role}): ${(err as Error).message}`, { cause: err });
    }
  },

  installed(rec: UnixRecord, task: TaskContext): void {
    // A path socket whose file was unlinked before the checkpoint: every socket that had to
    // find it by path is connected now, so the file goes again.
    const st = made(task.open);
    const ino = st.unlink.get(rec.id);
    if (ino === undefined || !rec.name?.path) return;
    st.unlink.delete(rec.id);
    // The name itself, through its directory resolved confined, and only the socket file made.
    atName(rec, rec.name, (p) => {
      const st = p.lstat();
      if (st?.isSocket() && st.ino === ino) p.unlink();
    });
  },
};
