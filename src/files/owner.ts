/**
 * The owner of an open file (fcntl(2) F_SETOWN / F_SETOWN_EX) and its signal (F_SETSIG): who
 * the kernel signals for it, and with what.
 * - With O_ASYNC the owner gets SIGIO (or the F_SETSIG signal) when I/O becomes possible.
 * - A socket's owner gets SIGURG when out-of-band data arrives, O_ASYNC or not.
 * - A lease's holder is the owner (F_SETLEASE makes the caller the owner) and gets SIGIO (or
 *   the F_SETSIG signal) when another open breaks the lease.
 * The owner is a thread (F_OWNER_TID), a process (F_OWNER_PID) or a process group
 * (F_OWNER_PGRP). It is read from a pidfd_getfd(2) copy of the descriptor (the same open file)
 * for the files where it matters (O_ASYNC, sockets, leases), in ferry's pid namespace, and
 * stored as the tree's pid namespace names it.
 *
 * Only owners inside the tree are kept: a signal target outside it means nothing after a
 * restore (the number may name another process by then, on another host), so such a file is
 * refused at checkpoint, naming the owner. An image is untrusted input: on restore the owner
 * must name a thread, process or process group of the image, and the signal must be a signal,
 * or the restore is refused before anything is made. The task sets its owner itself, after its
 * `installed` hooks (F_SETLEASE would reset it to the task).
 */
import { readFileSync } from 'node:fs';
import { SYS } from '../arch/x86-64.js';
import { FerryError } from '../errors.js';
import type { FileRecord, ProcessRecord, TaskRecord } from '../image/records.js';
import { native } from '../native/binding.js';
import { readProcText } from '../proc/read.js';
import { parseStat } from '../proc/stat.js';
import { parseStatus } from '../proc/status.js';
import type { Scratch, Tracee } from '../task/tracee.js';
import type { FdDesc } from './types.js';

/** f_owner_ex types (fcntl(2)). */
const F_OWNER_TID = 0, F_OWNER_PID = 1, F_OWNER_PGRP = 2;
const F_GETFL = 3, F_SETFL = 4, F_SETSIG = 10, F_SETOWN_EX = 15, O_ASYNC = 0o20000;
/** Highest signal number (_NSIG - 1 on x86-64). */
const SIG_MAX = 64;
const TYPE_NAMES = ['thread', 'process', 'process group'] as const;

/**
 * A file's owner and signal as a record stores them (`async` when the file has O_ASYNC,
 * `owner` otherwise); `pid` is a tid, pid or pgid of the tree's pid namespace, 0 for none.
 */
export interface OwnerRecord {
  type: number;
  pid: number;
  sig: number;
}

/** Whether the owner of `d`'s open file matters and must be read. */
export function ownerMatters(d: FdDesc): boolean {
  return d.async === true || d.link.startsWith('socket:')
    || (d.fdinfo.lines.get('lock') ?? []).some((l) => /\bLEASE\b/.test(l));
}

/** The pid namespace id (innermost) of a host thread/process id, from its status. */
function innermost(hostId: number): number | undefined {
  try {
    return parseStatus(readProcText(hostId, 'status')).nsPid.at(-1);
  } catch {
    return undefined;
  }
}

/** The thread group of a host thread id, or undefined when it is gone. */
function tgidOf(tid: number): number | undefined {
  try {
    const m = /^Tgid:\s*(\d+)/m.exec(readFileSync(`/proc/${tid}/status`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Reads the owner and signal of the open file behind `fd` (a controller copy of `d`), or
 * undefined when it has none and the default signal. Refuses an owner outside the tree
 * (`pids`: the tree's live processes, host ids).
 */
export function dumpOwner(d: FdDesc, fd: number, pids: ReadonlySet<number>): OwnerRecord | undefined {
  const o = native().asyncOwner(fd);
  if (o.pid === 0 && o.sig === 0 && !d.async) return undefined;
  if (o.pid === 0) return { type: o.type, pid: 0, sig: o.sig };
  const outside = (why: string): FerryError => new FerryError('EUNSUPPORTED',
    `unsupported file: pid ${d.pid} fd ${d.fd} -> ${d.link} (its owner, the ${TYPE_NAMES[o.type] ?? 'target'} ${o.pid} that fcntl F_SETOWN names for ${d.async ? 'SIGIO' : 'its signals'}, ${why}: checkpoint the owner too, or have the program set an owner in the tree)`);
  let ns: number | undefined;
  if (o.type === F_OWNER_PGRP) {
    // A group of the tree: some process of the tree is in it.
    for (const p of pids) {
      try {
        if (parseStat(readProcText(p, 'stat')).pgrp !== o.pid) continue;
        ns = parseStatus(readProcText(p, 'status')).nsPgid.at(-1);
        break;
      } catch {
        continue;
      }
    }
  } else {
    const tgid = o.type === F_OWNER_TID ? tgidOf(o.pid) : o.pid;
    if (tgid !== undefined && pids.has(tgid)) ns = innermost(o.pid);
  }
  if (ns === undefined) throw outside('is outside the checkpointed tree');
  return { type: o.type, pid: ns, sig: o.sig };
}

/**
 * Checks every record's owner against the image's tree (the image is untrusted input): a
 * known type, a signal number, and a target that is one of the image's threads, processes or
 * process groups. Throws EIMAGE naming the file.
 */
export function checkOwners(files: readonly FileRecord[], processes: readonly ProcessRecord[],
  tasks: readonly TaskRecord[]): void {
  const pids = new Set(processes.map((p) => p.pid));
  const pgids = new Set(processes.map((p) => p.pgid));
  const tids = new Set(tasks.flatMap((t) => [t.pid, ...t.threads.map((th) => th.tid)]));
  for (const f of files) {
    for (const field of ['async', 'owner'] as const) {
      const o = f[field];
      if (o === undefined) continue;
      const bad = (why: string): never => {
        throw new FerryError('EIMAGE', `image: file ${f.id} (${f.kind}) has ${field === 'async' ? 'a SIGIO' : 'an'} owner that ${why}`);
      };
      if (typeof o !== 'object' || o === null) bad('is not an object');
      const { type, pid, sig } = o as Record<string, unknown>;
      if (type !== F_OWNER_TID && type !== F_OWNER_PID && type !== F_OWNER_PGRP) bad('has an unknown type');
      if (!Number.isInteger(sig) || (sig as number) < 0 || (sig as number) > SIG_MAX) bad('has an invalid signal');
      if (!Number.isInteger(pid) || (pid as number) < 0) bad('has an invalid id');
      if (pid === 0) continue;
      const within = type === F_OWNER_PGRP ? pgids : type === F_OWNER_PID ? pids : tids;
      if (!within.has(pid as number)) bad(`names ${TYPE_NAMES[type as number]} ${String(pid)}, which is not in the image's tree`);
    }
  }
}

/** "process 12", "thread 14", "process group 12", with the signal when not the default. */
export function describeOwner(o: OwnerRecord): string {
  return `${TYPE_NAMES[o.type] ?? 'target'} ${o.pid}${o.sig !== 0 ? ` (signal ${o.sig})` : ''}`;
}

/**
 * Sets the owner and signal again through the task's own descriptor `fd` (ids are in the
 * task's pid namespace), and O_ASYNC when `async`.
 */
export function restoreOwner(t: Tracee, scratch: Scratch, fd: number, o: OwnerRecord, async: boolean): void {
  scratch.reset();
  const owner = Buffer.alloc(8); // struct f_owner_ex { int type; pid_t pid; }
  owner.writeInt32LE(o.type, 0);
  owner.writeInt32LE(o.pid, 4);
  const ownerAt = scratch.put(owner);
  const [flags] = t.syscalls([[SYS.fcntl, fd, F_GETFL], [SYS.fcntl, fd, F_SETOWN_EX, ownerAt], [SYS.fcntl, fd, F_SETSIG, o.sig]]);
  if (async) t.syscall(SYS.fcntl, fd, F_SETFL, Number(flags!) | O_ASYNC);
}
