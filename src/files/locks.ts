/**
 * File locks held through the tree's open files (--file-locks), found from the "lock:" lines of
 * /proc/PID/fdinfo/FD (proc(5), proc_locks(5)): the same format as /proc/locks,
 * `N: CLASS ADVISORY TYPE PID MAJ:MIN:INO START END`, with END inclusive or "EOF".
 *
 * The kernel lists in a descriptor's fdinfo only the locks whose owner is that descriptor's open
 * file or whose owner is the process reading through it and that were set through that open file:
 * - flock(2) locks (FLOCK) and OFD locks (OFDLCK, fcntl(2) F_OFD_SETLK) belong to the open file
 *   description: every descriptor of it, in any process, shows them, and they live as long as it.
 * - POSIX record locks (POSIX, fcntl(2) F_SETLK) belong to a process (its descriptor table): they
 *   show only in that process's fdinfo of the open file they were set through, are not inherited
 *   by fork(2), and are all dropped when the process closes any descriptor of the file.
 * A process blocked waiting for a lock (F_SETLKW, flock without LOCK_NB) holds nothing: it shows
 * in no fdinfo, and it needs nothing here: the checkpoint interrupts its call, which restore
 * restarts (ERESTARTSYS), so it waits again for the lock restored in its holder.
 *
 * A lease (fcntl(2) F_SETLEASE, class LEASE) belongs to the open file too and shows in every
 * descriptor's fdinfo of it. One being broken (BREAKING: another open is waiting for the
 * holder to give it up or downgrade it) shows the type it is being broken to. Broken to read
 * (READ: an open for reading waits on a write lease) it cannot come back as a read lease: the
 * kernel refuses one on a file open for writing, the holder's own descriptor included, which is
 * why the holder could not downgrade it either (its choices are giving it up or letting the
 * kernel downgrade it when the break time runs out). Broken to none (UNLCK: an open for writing
 * waits) it is no lease any more for the holder (F_GETLEASE gives F_UNLCK) but still one for
 * every other open until the holder gives it up or the break time runs out. Either comes back
 * as what it was (`breaking`): taken again, then broken as before, by an open of ferry's own
 * with O_NONBLOCK (for reading, or for writing to break it to none), which marks the break
 * pending and returns at once (EWOULDBLOCK); the breakers of the tree, whose opens the
 * checkpoint interrupted, wait again. /proc/locks does not say what a lease broken to none
 * was: it comes back as a read lease where the holder's descriptor allows one, else as a write
 * lease, which only /proc/locks of an active one could tell apart. The kernel would signal the
 * break to the file's owner, the holder, who had that signal at the original break: the owner
 * is cleared first (F_SETOWN 0: no target, no signal) and set again from the record afterwards
 * (owner.ts), as for every leased file. The break time starts again at the restore
 * (/proc/sys/fs/lease-break-time, 45 s by default). Delegations (DELEG, NFS server) are
 * refused.
 *
 * Restore takes every lock back without waiting (LOCK_NB, F_SETLK, F_OFD_SETLK) through the
 * task's own descriptor, once all its descriptors are installed: a POSIX lock by its owner
 * (anything closing a descriptor of the file in that process before would drop it), flock and
 * OFD locks by any holder of the open file (taking a lock the open file already holds again
 * changes nothing), a lease by the holder, before the file's owner is set again (F_SETLEASE
 * makes the caller the owner: owner.ts). A lease needs the file open nowhere else for writing
 * (a read lease) or at all (a write lease), as when it was taken.
 */
import { readFileSync } from 'node:fs';
import { errnoCode, FerryError } from '../errors.js';
import { native } from '../native/binding.js';
import { O_CLOEXEC, O_NONBLOCK, O_RDONLY, O_WRONLY } from '../proc/fcntl.js';
import { parseMaps, type Vma } from '../proc/maps.js';
import { readProcText } from '../proc/read.js';
import { parseStatus } from '../proc/status.js';
import { SYS } from '../arch/x86-64.js';
import { memfdIdentity } from './memfd.js';
import type { DumpContext, FdDesc, FileOptions, TaskContext } from './types.js';

/** One lock of an open file, as stored in its record. */
export interface LockRecord {
  /**
   * 'flock': flock(2); 'ofd': fcntl F_OFD_SETLK; 'posix': fcntl F_SETLK, owned by `owner`;
   * 'lease': fcntl F_SETLEASE (start and len '0': a lease covers the file).
   */
  kind: 'flock' | 'ofd' | 'posix' | 'lease';
  /** 'read' (flock: LOCK_SH) or 'write' (flock: LOCK_EX). */
  type: 'read' | 'write';
  /** First byte (decimal string: off_t is 64-bit). */
  start: string;
  /** Length in bytes, '0' = up to the end of the file and beyond (struct flock's l_len 0). */
  len: string;
  /** POSIX locks: the owning process, as the tree's pid namespace names it. */
  owner?: number;
  /**
   * A lease being broken: 'read', a write lease to a read lease (/proc/locks: BREAKING READ);
   * 'none', a lease to none (BREAKING UNLCK; `type` is then 'read', what it was is not shown).
   */
  breaking?: 'read' | 'none';
}

/** A parsed "lock:" line (pid as /proc shows it: ferry's namespace). */
export interface LockLine {
  cls: string;
  type: string;
  pid: number;
  ino: bigint;
  start: bigint;
  /** Inclusive last byte, or null for EOF. */
  end: bigint | null;
  text: string;
}

const MAX_LOCKS = 4096;
const OFF_MAX = (1n << 63n) - 1n;

/** Parses one "lock:" value ("1: POSIX  ADVISORY  WRITE 7974 fe:00:2146501 5 14"). */
export function parseLockLine(text: string): LockLine | undefined {
  const m = /^\d+:\s+(?:->\s+)?(\S+)\s+(\S+)\s+(\S+)\s+(-?\d+)\s+[0-9a-f]+:[0-9a-f]+:(\d+)\s+(\d+)\s+(\d+|EOF)\s*$/.exec(text.trim());
  if (!m) return undefined;
  return {
    cls: m[1]!, type: m[3]!, pid: Number(m[4]), ino: BigInt(m[5]!), start: BigInt(m[6]!),
    end: m[7] === 'EOF' ? null : BigInt(m[7]!), text: text.trim(),
  };
}

/** The locks an fdinfo shows (parsed; an unparsable line is kept with cls '?'). */
function fdinfoLocks(d: FdDesc): LockLine[] {
  return (d.fdinfo.lines.get('lock') ?? []).map((t) => parseLockLine(t)
    ?? { cls: '?', type: '?', pid: 0, ino: 0n, start: 0n, end: null, text: t });
}

/** "a POSIX write lock on bytes 5-14", "a flock exclusive lock". */
function describe(l: LockLine): string {
  const range = l.end === null ? (l.start === 0n ? 'the whole file' : `bytes ${l.start}-EOF`) : `bytes ${l.start}-${l.end}`;
  switch (l.cls) {
    case 'FLOCK': return `a flock ${l.type === 'WRITE' ? 'exclusive' : 'shared'} lock`;
    case 'OFDLCK': return `an OFD ${l.type.toLowerCase()} lock on ${range}`;
    case 'POSIX': return `a POSIX ${l.type.toLowerCase()} lock of pid ${l.pid} on ${range}`;
    case 'LEASE': return `a ${l.type === 'WRITE' ? 'write' : 'read'} lease`;
    default: return `a lock '${l.text}'`;
  }
}

const unsupported = (d: FdDesc, why: string): FerryError =>
  new FerryError('EUNSUPPORTED', `unsupported file: pid ${d.pid} fd ${d.fd} -> ${d.link} (${why})`);

/**
 * Refuses, before the tree is touched, a descriptor whose open file holds a lock, unless
 * --file-locks; with it, refuses what cannot be taken back (mandatory locks, delegations).
 */
export function precheckLocks(d: FdDesc, options: FileOptions): void {
  const locks = fdinfoLocks(d);
  if (locks.length === 0) return;
  const first = locks[0]!;
  if (!options.fileLocks) {
    throw unsupported(d, `holds ${describe(first)}: checkpoint with --file-locks to keep file locks`);
  }
  for (const l of locks) {
    if (isLease(l)) continue;
    if (!['FLOCK', 'OFDLCK', 'POSIX'].includes(l.cls) || !/^(READ|WRITE)$/.test(l.type) || !l.text.includes('ADVISORY')) {
      throw unsupported(d, `holds ${describe(l)}, which ferry cannot restore (only flock, POSIX and OFD advisory locks, and leases)`);
    }
  }
  if (locks.length > MAX_LOCKS) throw unsupported(d, `holds ${locks.length} locks, more than ${MAX_LOCKS}`);
}

/** A lease line ferry takes back: active or being broken, to a read, write or no lease. */
const isLease = (l: LockLine): boolean =>
  l.cls === 'LEASE' && /^(READ|WRITE|UNLCK)$/.test(l.type) && /\bLEASE\s+(ACTIVE|BREAKING)\s/.test(l.text);

/** A parsed line as a record; POSIX owners translated into the tree's pid namespace. */
function toRecord(l: LockLine, owner?: number): LockRecord {
  if (l.cls === 'LEASE') {
    // Only a write lease is broken by an open for reading.
    if (l.type === 'READ' && /\bLEASE\s+BREAKING\s/.test(l.text)) return { kind: 'lease', type: 'write', start: '0', len: '0', breaking: 'read' };
    if (l.type === 'UNLCK') return { kind: 'lease', type: 'read', start: '0', len: '0', breaking: 'none' };
    return { kind: 'lease', type: l.type === 'WRITE' ? 'write' : 'read', start: '0', len: '0' };
  }
  const len = l.end === null ? 0n : l.end - l.start + 1n;
  const rec: LockRecord = {
    kind: l.cls === 'FLOCK' ? 'flock' : l.cls === 'OFDLCK' ? 'ofd' : 'posix',
    type: l.type === 'WRITE' ? 'write' : 'read',
    start: l.start.toString(),
    len: len.toString(),
  };
  if (owner !== undefined) rec.owner = owner;
  return rec;
}

/** The id of host pid `pid` in its innermost pid namespace (the tree's). */
function nsPid(pid: number): number {
  return parseStatus(readProcText(pid, 'status')).nsPid.at(-1) ?? pid;
}

/**
 * Every lock the open file behind `d` holds: its flock and OFD locks, and the POSIX locks each
 * process of the tree holding it set through it (read from that process's own fdinfo).
 */
export function dumpLocks(d: FdDesc, ctx: DumpContext): LockRecord[] {
  if (!ctx.options.fileLocks) return [];
  const out: LockRecord[] = [];
  const own = fdinfoLocks(d);
  for (const l of own) {
    if (l.cls === 'FLOCK' || l.cls === 'OFDLCK' || isLease(l)) out.push(toRecord(l));
    else if (l.cls === 'POSIX' && l.pid === d.pid) out.push(toRecord(l, nsPid(d.pid)));
  }
  if (out.some((l) => l.kind === 'lease' && l.type === 'write')) refuseMappedWriteLease(d, ctx);
  // Other processes holding this open file may own POSIX locks set through it: each shows them
  // in its own fdinfo only. Processes without a descriptor of the file are skipped cheaply.
  if (ctx.pids.size < 2 || !mayHavePosixLocks(d)) return out;
  const seen = new Set([d.pid]);
  for (const { pid, fd } of ctx.holders(d.pid, d.fd)) {
    if (seen.has(pid)) continue; // its first descriptor of the file shows them all
    seen.add(pid);
    const lines = (readProcText(pid, `fdinfo/${fd}`).match(/^lock:.*$/gm) ?? []).map((s) => parseLockLine(s.slice(5)));
    for (const l of lines) if (l && l.cls === 'POSIX' && l.pid === pid) out.push(toRecord(l, nsPid(pid)));
  }
  if (out.length > MAX_LOCKS) throw unsupported(d, `holds ${out.length} locks, more than ${MAX_LOCKS}`);
  return out;
}

/**
 * Refuses a write lease on a file the tree maps. The kernel counts every open file of the
 * inode, a mapping's included, and grants a write lease only to the one open file there is: the
 * original's mappings are of the holder's own open file (another open would have broken the
 * lease), but restore maps a file through an open file of its own (restore/address-space.ts),
 * after which the lease could not be taken back. Refused here, where the tree runs on. Each
 * process's maps are read once for all the leased files of the checkpoint (the tree is frozen).
 */
function refuseMappedWriteLease(d: FdDesc, ctx: DumpContext): void {
  const id = memfdIdentity(d.stat.dev, d.stat.ino);
  const read = ctx.scratch<Vma[] | null>('lease-maps');
  for (const pid of ctx.pids) {
    let maps = read.get(String(pid));
    if (maps === undefined) {
      try {
        maps = parseMaps(readProcText(pid, 'maps'));
      } catch {
        maps = null; // gone: the freeze says so if it matters
      }
      read.set(String(pid), maps);
    }
    if (maps === null) continue;
    const v = maps.find((m) => `${m.major}:${m.minor}:${m.inode}` === id);
    if (v === undefined) continue;
    throw unsupported(d, `holds a write lease, and pid ${pid} maps the file at 0x${v.start.toString(16)}: a restore maps it through an open file of its own, `
      + 'which would keep the lease from being taken back; release the lease or unmap the file first');
  }
}

/** /proc/locks (proc_locks(5)), or undefined when it cannot be read. */
function procLocks(): string | undefined {
  try {
    return readFileSync('/proc/locks', 'utf8');
  } catch {
    return undefined;
  }
}

/** Whether /proc/locks lists any POSIX lock on the inode of `d` (one read instead of a scan of every process). */
function mayHavePosixLocks(d: FdDesc): boolean {
  const text = procLocks();
  if (text === undefined) return true;
  return text.split('\n').some((s) => {
    const l = parseLockLine(s);
    return l !== undefined && l.cls === 'POSIX' && l.ino === d.stat.ino;
  });
}

/** Checks the shape of a record's locks (the image is untrusted input); throws naming the file. */
export function validateLocks(locks: unknown, where: string): LockRecord[] {
  if (locks === undefined) return [];
  const bad = (why: string): never => { throw new FerryError('EIMAGE', `${where}: locks ${why}`); };
  if (!Array.isArray(locks) || locks.length > MAX_LOCKS) bad(`must be an array of at most ${MAX_LOCKS}`);
  for (const l of locks as unknown[]) {
    if (typeof l !== 'object' || l === null) bad('must hold objects');
    const r = l as Record<string, unknown>;
    if (!['flock', 'ofd', 'posix', 'lease'].includes(r.kind as string) || !['read', 'write'].includes(r.type as string)) bad('has an unknown kind or type');
    for (const k of ['start', 'len']) {
      if (typeof r[k] !== 'string' || !/^\d{1,19}$/.test(r[k]) || BigInt(r[k]) > OFF_MAX) bad(`has a bad ${k}`);
    }
    if (r.kind === 'posix' && !(Number.isSafeInteger(r.owner) && (r.owner as number) > 0)) bad('has a POSIX lock without owner');
    if (r.breaking !== undefined && !(r.kind === 'lease' && ((r.breaking === 'read' && r.type === 'write') || (r.breaking === 'none' && r.type === 'read')))) {
      bad('has a break that is not of a write lease to read, nor of a lease to none');
    }
  }
  return locks as LockRecord[];
}

const LOCK_SH = 1, LOCK_EX = 2, LOCK_NB = 4;
const F_SETLK = 6, F_SETOWN = 8, F_OFD_SETLK = 37, F_SETLEASE = 1024, F_GETLEASE = 1025, F_RDLCK = 0, F_WRLCK = 1, SEEK_SET = 0;
const EAGAIN = 11, EACCES = 13;
/** flock(2)'s number on x86-64 (not in the shared table). */
const SYS_flock = 73;

/** struct flock on x86-64: l_type, l_whence (short), l_start, l_len (off_t), l_pid (pid_t, 0 for OFD). */
function structFlock(l: LockRecord): Buffer {
  const b = Buffer.alloc(32);
  b.writeInt16LE(l.type === 'write' ? F_WRLCK : F_RDLCK, 0);
  b.writeInt16LE(SEEK_SET, 2);
  b.writeBigInt64LE(BigInt(l.start), 8);
  b.writeBigInt64LE(BigInt(l.len), 16);
  return b;
}

/** Describes a record for messages: "POSIX write lock on bytes 5-14". */
export function describeRecord(l: LockRecord): string {
  const start = BigInt(l.start);
  const len = BigInt(l.len);
  const range = len === 0n ? (start === 0n ? 'the whole file' : `bytes ${start}-EOF`) : `bytes ${start}-${start + len - 1n}`;
  if (l.kind === 'flock') return `flock ${l.type === 'write' ? 'exclusive' : 'shared'} lock`;
  if (l.kind === 'lease') {
    return l.breaking === 'read' ? 'write lease being broken to a read lease' : l.breaking === 'none' ? 'lease being broken to none' : `${l.type} lease`;
  }
  return `${l.kind === 'ofd' ? 'OFD' : 'POSIX'} ${l.type} lock on ${range}`;
}

/** Who holds a lock on inode `ino` now, from /proc/locks, for the message of a conflict. */
function holders(ino: bigint | undefined): string {
  if (ino === undefined) return '';
  const text = procLocks() ?? '';
  const pids = new Set<string>();
  for (const s of text.split('\n')) {
    const l = parseLockLine(s);
    if (l && l.ino === ino && !s.includes('->')) pids.add(l.pid === -1 ? 'an OFD lock' : `pid ${l.pid}`);
  }
  return pids.size > 0 ? ` (held now by ${[...pids].join(', ')})` : '';
}

/**
 * Breaks the lease the task just took at `task.fd` as an open did before the checkpoint: to a
 * read lease (a write lease, by an open for reading) or to none (by an open for writing).
 * Ferry's own open, O_NONBLOCK, marks the break pending and fails at once with EWOULDBLOCK.
 * The owner (the task, since F_SETLEASE) is cleared first, so the break signals no one; the
 * task sets its recorded owner again after its hooks (owner.ts). Returns what F_SETOWN
 * returned (a negative errno when it failed).
 */
function breakLease(path: string, task: TaskContext, to: 'read' | 'none'): bigint {
  const where = `${path} (fd ${task.fd} of pid ${task.pid})`;
  const what = to === 'read' ? 'the write lease' : 'the lease';
  const r = task.tracee.trySyscall(SYS.fcntl, task.fd, F_SETOWN, 0);
  if (r < 0n) return r;
  const n = native();
  let fd: number;
  try {
    fd = n.openRaw(`/proc/${task.tracee.tid}/fd/${task.fd}`, (to === 'read' ? O_RDONLY : O_WRONLY) | O_NONBLOCK | O_CLOEXEC);
  } catch (err) {
    if (errnoCode(err) === 'EAGAIN') return r; // the break is pending, as it was
    throw new FerryError('ELOCK', `cannot break ${what} of ${where} to ${to === 'read' ? 'a read lease' : 'none'} again: ${(err as Error).message}`, { cause: err });
  }
  n.closeFd(fd);
  throw new FerryError('ELOCK', `cannot break ${what} of ${where} again: an open for ${to === 'read' ? 'reading' : 'writing'} went through, the lease is gone`);
}

/**
 * Whether the open file at the task's `task.fd` holds a lease being broken to none (its
 * fdinfo's "lock:" lines, which name that open file's own locks only: BREAKING UNLCK).
 */
function breakingToNone(task: TaskContext): boolean {
  const text = readFileSync(`/proc/${task.tracee.tid}/fdinfo/${task.fd}`, 'utf8');
  return text.split('\n').some((line) => {
    const l = line.startsWith('lock:') ? parseLockLine(line.slice(5)) : undefined;
    return l !== undefined && l.cls === 'LEASE' && l.type === 'UNLCK' && /\bLEASE\s+BREAKING\s/.test(l.text);
  });
}

/**
 * Takes back, in the task, the locks of a record installed at `task.fd`: flock and OFD locks
 * always (per open file), POSIX locks only those the task owns. Throws naming the file and lock.
 */
export function restoreLocks(locks: readonly LockRecord[], path: string, task: TaskContext, ino?: bigint): void {
  for (const l of locks) {
    if (l.kind === 'posix' && l.owner !== task.pid) continue;
    task.scratch.reset();
    let r: bigint;
    if (l.kind === 'flock') {
      r = task.tracee.trySyscall(SYS_flock, task.fd, (l.type === 'write' ? LOCK_EX : LOCK_SH) | LOCK_NB);
    } else if (l.kind === 'lease' && l.breaking === 'read') {
      // Another process of the tree holding the open file took it and broke it already: taking
      // it again would end the break (the kernel clears a pending break on a change).
      r = task.tracee.trySyscall(SYS.fcntl, task.fd, F_GETLEASE);
      if (r === BigInt(F_RDLCK)) continue;
      if (r >= 0n) r = task.tracee.trySyscall(SYS.fcntl, task.fd, F_SETLEASE, F_WRLCK);
      if (r >= 0n) r = breakLease(path, task, 'read');
    } else if (l.kind === 'lease' && l.breaking === 'none') {
      // Likewise (F_GETLEASE gives F_UNLCK for such a lease: the open file's fdinfo says).
      if (breakingToNone(task)) continue;
      // A read lease where the descriptor allows one (open read-only), else a write lease.
      r = task.tracee.trySyscall(SYS.fcntl, task.fd, F_SETLEASE, F_RDLCK);
      if (r === -BigInt(EAGAIN)) r = task.tracee.trySyscall(SYS.fcntl, task.fd, F_SETLEASE, F_WRLCK);
      if (r >= 0n) r = breakLease(path, task, 'none');
    } else if (l.kind === 'lease') {
      r = task.tracee.trySyscall(SYS.fcntl, task.fd, F_SETLEASE, l.type === 'write' ? F_WRLCK : F_RDLCK);
    } else {
      const arg = task.scratch.put(structFlock(l));
      r = task.tracee.trySyscall(SYS.fcntl, task.fd, l.kind === 'ofd' ? F_OFD_SETLK : F_SETLK, arg);
    }
    if (r < 0n) {
      const errno = Number(-r);
      const why = l.kind === 'lease' && errno === EAGAIN
        ? `the file is open ${l.type === 'write' ? '' : 'for writing '}elsewhere${holders(ino)}: close it there and restore again`
        : errno === EAGAIN || errno === EACCES
        ? `another process holds a conflicting lock${holders(ino)}: release it and restore again`
        : `errno ${errno}`;
      throw new FerryError('ELOCK', `cannot take back the ${describeRecord(l)} of ${path} (fd ${task.fd} of pid ${task.pid}): ${why}`);
    }
  }
}
