/**
 * Pipes (pipe(2): `pipe:[INO]`) and FIFOs (named pipes: a path whose stat is S_ISFIFO), with
 * their capacity and buffered data (pipe(7), fifo(7)).
 *
 * The two ends of a pipe are two different open files joined by one pipe object; every open
 * file is its own record, and the records of one pipe share its identity (`pipe`: the pipefs
 * inode number at dump; for a FIFO its device and inode). On restore the first record of a
 * pipe to be opened creates it (pipe2(2), capacity, data) and the others open the same pipe
 * again: an anonymous pipe through /proc/self/fd/N of the first one's descriptor (opening a
 * pipefs inode never blocks), a FIFO by its path. A FIFO whose name was removed (a pipe no
 * name reaches any more, the link reading `path (deleted)`) is made again under that name for
 * the moment of its first open (mkfifoat, opened O_RDWR, name removed at once; a free name
 * beside it when the path was taken), then given its mode and owner; its other records open
 * it through the first one's descriptor, an O_PATH descriptor of it (files/regular.ts) the
 * same node (files/removed-node.ts). No per-process assumption: ends held by
 * different processes are found the same way.
 *
 * Buffered data is copied without consuming it: the pipe is taken into the controller with
 * pidfd_getfd(2), tee(2)d into a controller pipe of the same capacity (tee duplicates buffer
 * references; equal capacity means equal slots, so one call copies everything), and read from
 * there. The data is stored base64 in the record of every open file that can read it, and in
 * every record of a FIFO (a FIFO's data can also be read later by whoever opens its path); the
 * data of an anonymous pipe's write-only end is not stored (no reader in the image can read
 * it). On restore it is written once per pipe, whichever record opens first. Packet-mode data
 * (writes through an O_DIRECT end, pipe(2)) keeps its packet boundaries.
 */
import { fstatSync, readSync, writeSync, type BigIntStats } from 'node:fs';
import { FerryError } from '../errors.js';
import { shown } from '../image/manifest.js';
import type { FileRecord } from '../image/records.js';
import { native } from '../native/binding.js';
import { O_ACCMODE, O_APPEND, O_CLOEXEC, O_DIRECT, O_NOATIME, O_NONBLOCK, O_PATH } from '../proc/fcntl.js';
import { openRemovedNode, placeOf, reopenIn, shownIn, statIn, type ConfinedRoot } from './confined.js';
import { openRemovedNodeOf } from './removed-node.js';
import type { DumpContext, FdDesc, FileKind, OpenContext } from './types.js';

const O_RDONLY = 0, O_WRONLY = 1, O_RDWR = 2;
const REMOVED = ' (deleted)';
/** Status flags F_SETFL can change (fcntl(2)); the access mode comes from how the file is opened. */
const SETFL_FLAGS = O_APPEND | O_NONBLOCK | O_DIRECT | O_NOATIME;
/** splice.h */
const SPLICE_F_NONBLOCK = 2;
const PAGE = 4096;
/** Largest capacity accepted from an image (the kernel's own limit is 2^31 bytes). */
const MAX_SIZE = 2 ** 31;

/** What the records of both kinds carry about the pipe object. */
interface PipeState {
  /** open(2) access mode and status flags of this open file (O_CLOEXEC is per descriptor). */
  flags: number;
  /** Capacity in bytes (F_GETPIPE_SZ). */
  size: number;
  /** Buffered bytes, base64; '' when empty or not stored for this open file. */
  data: string;
  /** Packet lengths when the data is packets (O_DIRECT writes), in order; absent otherwise. */
  packets?: number[];
}

export interface PipeRecord extends FileRecord, PipeState {
  kind: 'pipe';
  /** Identity of the pipe at dump (pipefs inode number): the ends of one pipe share it. */
  pipe: string;
}

export interface FifoRecord extends FileRecord, PipeState {
  kind: 'fifo';
  /** Its path; for a removed FIFO, the path it had (without " (deleted)"). */
  path: string;
  /** Identity of the FIFO node at dump. */
  dev: string;
  ino: string;
  /** The FIFO's name was removed (its link read `path (deleted)`): its mode and owner. */
  removed?: { mode: number; uid: number; gid: number };
}

// ---- dump ----

/** Reads capacity and buffered data of the pipe behind `d` without consuming anything. */
function dumpState(d: FdDesc, ctx: DumpContext, storeData: boolean): PipeState {
  const what = `${d.link.startsWith('/') ? 'fifo' : 'pipe'} fd ${d.fd} of pid ${d.pid} (${d.link})`;
  const flags = d.fdinfo.flags & ~O_CLOEXEC;
  const n = native();
  // The capacity is the pipe's: an end whose data is not stored needs no copy of its own
  // once the other end was read (the tree is frozen).
  const sizes = ctx.scratch<number>('pipe-size');
  const key = `${d.stat.dev}:${d.stat.ino}`;
  const known = sizes.get(key);
  if (!storeData && known !== undefined) return { flags, size: known, data: '' };
  try {
    // The engine's copy of the open file (it closes it after the checkpoint).
    const stolen = ctx.grab(d);
    const size = known ?? n.pipeSize(stolen);
    sizes.set(key, size);
    if (!storeData) return { flags, size, data: '' };
    // tee(2) reads from a read end: a write-only end is opened again for reading (anonymous
    // pipe: never blocks; FIFO: O_NONBLOCK never blocks a reader).
    const src = (flags & O_ACCMODE) === O_WRONLY ? n.openRaw(`/proc/self/fd/${stolen}`, O_RDONLY | O_NONBLOCK) : stolen;
    try {
      return { flags, size, ...peek(src, size) };
    } finally {
      if (src !== stolen) n.closeFd(src);
    }
  } catch (err) {
    if (err instanceof FerryError) throw err;
    throw new FerryError('EDUMP', `${what}: ${(err as Error).message}`, { cause: err });
  }
}

/** Copies the buffered bytes of pipe `src` (a read end) with tee(2); `src` keeps them. */
function peek(src: number, size: number): Pick<PipeState, 'data' | 'packets'> {
  const n = native();
  const avail = n.pipeUnread(src);
  if (avail === 0) return { data: '' };
  const [r, w] = n.pipe2(O_NONBLOCK);
  try {
    if (n.pipeSize(w) < size) n.setPipeSize(w, size);
    const got = n.tee(src, w, avail, SPLICE_F_NONBLOCK);
    if (got !== avail) throw new Error(`tee copied ${got} of ${avail} buffered bytes`);
    // A read stops after a packet buffer and reads across every other buffer: more than one
    // read for the whole data means packets.
    const chunks: Buffer[] = [];
    for (let left = got; left > 0;) {
      const b = Buffer.alloc(left);
      const k = readSync(r, b, 0, left, null);
      if (k <= 0) throw new Error(`pipe copy ended ${left} bytes early`);
      chunks.push(b.subarray(0, k));
      left -= k;
    }
    const data = Buffer.concat(chunks).toString('base64');
    return chunks.length > 1 ? { data, packets: chunks.map((c) => c.length) } : { data };
  } finally {
    n.closeFd(r);
    n.closeFd(w);
  }
}

// ---- restore ----

/** A pipe this restore created: the record that created it and its controller descriptor. */
interface Made {
  creator: number;
  fd: number;
  ino: bigint;
  /** The buffered data was written. */
  filled: boolean;
}

/**
 * Pipes created by the current restore, by identity. An entry belongs to the current restore
 * only while the scheduler still holds its creator's descriptor (ctx.opened) and that is still
 * the same inode; anything else is left over from an earlier restore in this process.
 */
const made = new Map<string, Made>();

function current(key: string, ctx: OpenContext): Made | undefined {
  const m = made.get(key);
  if (m && ctx.opened(m.creator) === m.fd) {
    try {
      if (fstatSync(m.fd, { bigint: true }).ino === m.ino) return m;
    } catch { /* closed: stale */ }
  }
  made.delete(key);
  return undefined;
}

/** Writes the record's data into the pipe through `writer` (non-blocking), once per pipe. */
function fill(m: Made, rec: PipeState, writer: number): void {
  if (m.filled || rec.data === '') return;
  const n = native();
  const data = Buffer.from(rec.data, 'base64');
  const units = rec.packets ?? [data.length];
  const saved = n.getFl(writer);
  // Packets are written through an O_DIRECT (packet-mode) writer, one write each.
  n.setFl(writer, (saved & SETFL_FLAGS) | O_NONBLOCK | (rec.packets ? O_DIRECT : 0));
  let off = 0;
  for (const len of units) {
    const k = writeSync(writer, data, off, len);
    if (k !== len) throw new Error(`short write of buffered data: ${k} of ${len} bytes`);
    off += len;
  }
  n.setFl(writer, saved & SETFL_FLAGS);
  m.filled = true;
}

/** Sets capacity `size` on a new pipe. */
function setSize(fd: number, size: number): void {
  const n = native();
  if (n.pipeSize(fd) !== size) n.setPipeSize(fd, size);
}

function openPipe(rec: PipeRecord, ctx: OpenContext): number {
  const n = native();
  const key = `pipe:${rec.pipe}`;
  const mode = rec.flags & O_ACCMODE;
  let m = current(key, ctx);
  let fd: number;
  if (!m) {
    const [r, w] = n.pipe2(O_NONBLOCK);
    fd = -1;
    try {
      setSize(w, rec.size);
      fd = mode === O_RDONLY ? r : mode === O_WRONLY ? w : n.openRaw(`/proc/self/fd/${r}`, O_RDWR | O_NONBLOCK);
      m = { creator: rec.id, fd, ino: fstatSync(fd, { bigint: true }).ino, filled: false };
      fill(m, rec, w);
      n.setFl(fd, rec.flags & SETFL_FLAGS);
    } catch (err) {
      if (fd !== r && fd !== w && fd >= 0) n.closeFd(fd);
      fd = -1;
      throw err;
    } finally {
      for (const e of [r, w]) if (e !== fd) n.closeFd(e);
    }
  } else {
    // Opening a pipefs inode again gives a new open file of the same pipe, without blocking.
    fd = n.openRaw(`/proc/self/fd/${m.fd}`, mode | O_NONBLOCK);
    try {
      if (!m.filled && rec.data !== '') {
        const w = n.openRaw(`/proc/self/fd/${m.fd}`, O_WRONLY | O_NONBLOCK);
        try { fill(m, rec, w); } finally { n.closeFd(w); }
      }
      n.setFl(fd, rec.flags & SETFL_FLAGS);
    } catch (err) {
      n.closeFd(fd);
      throw err;
    }
  }
  made.set(key, m);
  return fd;
}

function openFifo(rec: FifoRecord, ctx: OpenContext): number {
  const n = native();
  const key = `fifo:${rec.dev}:${rec.ino}`;
  // Opened O_RDWR the FIFO has a reader and a writer (Linux, fifo(7)): neither the open below
  // blocks nor does O_WRONLY|O_NONBLOCK fail with ENXIO; it is also the writer for the data.
  // The path is resolved inside the process's recorded root (confined.ts) to an O_PATH
  // descriptor, which opens nothing; only a FIFO is then opened, through that descriptor.
  const { root, path } = placeOf(rec);
  const what = `FIFO (file ${rec.id} of the image)`;
  const notFifo = (st: BigIntStats): string | undefined => (st.isFIFO() ? undefined : 'is no longer a FIFO');
  let m = current(key, ctx);
  const helper = !rec.removed ? reopenIn(root, path, O_RDWR | O_NONBLOCK, what, notFifo)
    : m ? n.openRaw(`/proc/self/fd/${m.fd}`, O_RDWR | O_NONBLOCK) : makeRemovedFifo(rec, ctx, root, path, what);
  try {
    const st = fstatSync(helper, { bigint: true });
    const fd = n.openRaw(`/proc/self/fd/${helper}`, (rec.flags & O_ACCMODE) | O_NONBLOCK);
    try {
      if (!m) {
        setSize(helper, rec.size);
        m = { creator: rec.id, fd, ino: st.ino, filled: false };
      }
      fill(m, rec, helper);
      n.setFl(fd, rec.flags & SETFL_FLAGS);
    } catch (err) {
      n.closeFd(fd);
      throw err;
    }
    made.set(key, m);
    return fd;
  } finally {
    n.closeFd(helper);
  }
}

/**
 * A FIFO for a record whose FIFO was removed, opened O_RDWR (which never blocks): made once for
 * every record of it, an O_PATH one's too (files/removed-node.ts), under its old name (or a
 * free one beside it) in its directory, inside the root, the name removed at once, then given
 * the recorded mode and owner.
 */
function makeRemovedFifo(rec: FifoRecord, ctx: OpenContext, root: ConfinedRoot, path: string, what: string): number {
  return openRemovedNodeOf(rec, ctx, O_RDWR | O_NONBLOCK, { ...rec.removed!, symlink: false }, (also) => openRemovedNode(root, path, what, 'fifo',
    undefined, (dir, name) => native().mkfifoat(dir, name, 0o600), (made) => (fstatSync(made, { bigint: true }).isFIFO() ? undefined : 'it is no FIFO'), also));
}

/** Shape checks of what both kinds store (the image is input: every length is bounded). */
function checkState(rec: PipeState & FileRecord, what: string): void {
  const bad = (why: string): never => {
    throw new FerryError('EIMAGE', `image: ${what} (file ${rec.id}) ${why}`);
  };
  if (!Number.isSafeInteger(rec.flags) || (rec.flags & O_ACCMODE) === 3) bad('has invalid flags');
  if (!Number.isSafeInteger(rec.size) || rec.size < PAGE || rec.size > MAX_SIZE || rec.size % PAGE !== 0) bad(`has invalid capacity ${shown(rec.size)}`);
  if (typeof rec.data !== 'string' || rec.data.length > Math.ceil(rec.size / 3) * 4) bad('has invalid data');
  const len = Buffer.byteLength(rec.data, 'base64');
  if (len > rec.size) bad(`holds ${len} bytes, more than its capacity ${rec.size}`);
  if (rec.packets !== undefined) {
    if (!Array.isArray(rec.packets) || rec.packets.length > len
      || !rec.packets.every((p) => Number.isSafeInteger(p) && p > 0 && p <= rec.size)
      || rec.packets.reduce((a, b) => a + b, 0) !== len) bad('has invalid packets');
  }
}

function wrapOpen<R extends FileRecord>(what: (r: R) => string, open: (r: R, ctx: OpenContext) => number) {
  return (rec: R, ctx: OpenContext): number => {
    try {
      return open(rec, ctx);
    } catch (err) {
      if (err instanceof FerryError) throw err;
      throw new FerryError('EOPEN', `cannot restore ${what(rec)} (file ${rec.id}): ${(err as Error).message}`, { cause: err });
    }
  };
}

// ---- the two kinds ----

export const pipe: FileKind<PipeRecord> = {
  kind: 'pipe',

  matches(fd: FdDesc): boolean {
    return fd.link.startsWith('pipe:[') && fd.stat.isFIFO();
  },

  key(fd: FdDesc): string {
    return `pipe:${fd.stat.ino}:${fd.fdinfo.flags & ~O_CLOEXEC}`;
  },

  dump(fd: FdDesc, ctx: DumpContext): Omit<PipeRecord, 'id' | 'kind'> {
    return { pipe: fd.stat.ino.toString(), ...dumpState(fd, ctx, (fd.fdinfo.flags & O_ACCMODE) !== O_WRONLY) };
  },

  check(rec: PipeRecord): void {
    if (typeof rec.pipe !== 'string' || !/^\d{1,20}$/.test(rec.pipe)) {
      throw new FerryError('EIMAGE', `image: pipe (file ${rec.id}) has no valid pipe identity`);
    }
    checkState(rec, `pipe:[${rec.pipe}]`);
  },

  open: wrapOpen((r: PipeRecord) => `pipe:[${r.pipe}]`, openPipe),
};

export const fifo: FileKind<FifoRecord> = {
  kind: 'fifo',

  matches(fd: FdDesc): boolean {
    return fd.link.startsWith('/') && fd.stat.isFIFO() && (fd.fdinfo.flags & O_PATH) === 0;
  },

  key(fd: FdDesc): string {
    return `fifo:${fd.stat.dev}:${fd.stat.ino}:${fd.fdinfo.flags & ~O_CLOEXEC}`;
  },

  dump(fd: FdDesc, ctx: DumpContext): Omit<FifoRecord, 'id' | 'kind'> {
    const identity = { dev: fd.stat.dev.toString(), ino: fd.stat.ino.toString() };
    if (fd.link.endsWith(REMOVED) && fd.stat.nlink === 0n) {
      const removed = { mode: Number(fd.stat.mode & 0o7777n), uid: Number(fd.stat.uid), gid: Number(fd.stat.gid) };
      return { path: fd.link.slice(0, -REMOVED.length), ...identity, removed, ...dumpState(fd, ctx, true) };
    }
    if (fd.link.endsWith(REMOVED)) {
      throw new FerryError('EUNSUPPORTED',
        `unsupported file: pid ${fd.pid} fd ${fd.fd} -> ${fd.link} (a removed name of a FIFO that still has ${fd.stat.nlink} other name(s), which cannot be found)`);
    }
    return { path: fd.link, ...identity, ...dumpState(fd, ctx, true) };
  },

  check(rec: FifoRecord): void {
    if (typeof rec.path !== 'string' || !rec.path.startsWith('/')) {
      throw new FerryError('EIMAGE', `image: fifo (file ${rec.id}) has no valid path`);
    }
    checkState(rec, `FIFO ${rec.path}`);
    if (rec.path.includes('\0') || rec.path.length > 4096) throw new FerryError('EIMAGE', `image: fifo (file ${rec.id}) has no valid path`);
    // Resolved inside the process's recorded root (confined.ts), as open() will.
    const { root, path } = placeOf(rec);
    if (rec.removed !== undefined) {
      const r = rec.removed as unknown as Record<string, unknown>;
      const id = (v: unknown): boolean => Number.isSafeInteger(v) && (v as number) >= 0 && (v as number) < 2 ** 32 - 1;
      if (typeof r !== 'object' || r === null || !Number.isSafeInteger(r.mode) || (r.mode as number) < 0 || (r.mode as number) > 0o7777
        || !id(r.uid) || !id(r.gid)) throw new FerryError('EIMAGE', `image: fifo (file ${rec.id}) has an invalid removed mode or owner`);
      const dir = path.slice(0, path.lastIndexOf('/')) || '/';
      if (!(statIn(root, dir, `FIFO (file ${rec.id} of the image)`)?.isDirectory() ?? false)) {
        throw new FerryError('ENOENT', `the directory of the removed FIFO ${rec.path} (file ${rec.id} of the image) does not exist here: create it first`);
      }
      return;
    }
    const st = statIn(root, path, `FIFO (file ${rec.id} of the image)`);
    if (!st?.isFIFO()) {
      throw new FerryError('ENOENT', `FIFO ${shownIn(root, path)} (file ${rec.id} of the image) ${st ? 'is no longer a FIFO: refused, nothing was opened' : 'no longer exists: create it first (mkfifo)'}`, { path: rec.path });
    }
  },

  open: wrapOpen((r: FifoRecord) => `FIFO ${r.path}`, openFifo),
};
