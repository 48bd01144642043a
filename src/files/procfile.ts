/**
 * Files under /proc/PID/ held open (`/proc/self/stat`, `/proc/<child>/status`, a process's
 * /proc directory itself…), on ferry's own procfs: kind 'procfile'. Such a file names a
 * process; reopened by its path at restore, it would name the process that has that pid then,
 * or none: the files are opened before the first restored process exists.
 *
 * Dump: the link's pid is looked up in the tree. A file of a process of the tree (its main
 * thread's /proc/PID/task/PID/ too) is stored by that process's pid in the tree's pid namespace
 * and the path below it; restore opens it once the tree exists (`openAfterTree`), under the
 * restored process's pid, with the same flags and offset. A file of a process outside the tree
 * (`/proc/1/stat`) is stored by path and opened by path again, as a regular file is; only a
 * trusted image may hold one (it would let an image read any process's /proc files as root).
 *
 * A file of another thread of the tree (/proc/PID/task/TID/…, what /proc/thread-self/…
 * names) is stored with that thread's tid in the tree's pid namespace (`thread`), which
 * restore gives the thread again. Threads are made after the descriptors are installed, so
 * such a file is opened once every thread exists (`openAfterThreads`) and put into each table
 * holding it then (files/install.ts installLate), at its number with its flags and offset.
 * Refused: one in flight (queued in a unix socket) or watched by an epoll (restore fills the
 * queues and adds the items before the threads exist; files/collect.ts), and an edited image
 * with one so, or in a container's image, before anything is made (files/install.ts
 * checkThreadFiles). A /proc of another pid namespace (a container's own) is not this kind's:
 * such a path is the regular module's, resolved in the container.
 */
import { statSync } from 'node:fs';
import { FerryError } from '../errors.js';
import type { FileRecord } from '../image/records.js';
import { native } from '../native/binding.js';
import {
  O_ACCMODE, O_APPEND, O_CLOEXEC, O_DIRECTORY, O_LARGEFILE, O_NOATIME, O_NONBLOCK, O_PATH,
} from '../proc/fcntl.js';
import { readProcText } from '../proc/read.js';
import { parseStatus } from '../proc/status.js';
import { hostRoot, openIn } from './confined.js';
import type { FdDesc, FileKind } from './types.js';

const REOPEN_FLAGS = O_ACCMODE | O_APPEND | O_NONBLOCK | O_LARGEFILE | O_NOATIME | O_DIRECTORY;
const MAX_PID = 4194304;
/** /proc/<pid>[/task/<tid>][/rest]: the rest is plain names, no "." or "..". */
const PROC_PATH = /^\/proc\/(\d+)(?:\/task\/(\d+))?((?:\/[^/]+)*)$/;

export interface ProcfileRecord extends FileRecord {
  kind: 'procfile';
  /** The process, by its pid in the tree's pid namespace; null for a process outside the tree. */
  target: number | null;
  /** The path below /proc/PID ('' for the directory itself, '/stat'…); with `target` null, the whole path. */
  sub: string;
  /** The path was /proc/PID/task/PID/…: the main thread's own directory. */
  task?: boolean;
  /**
   * The path was /proc/PID/task/TID/… of another thread of `target`: that thread's tid in the
   * tree's pid namespace (never with `task`, nor with `target` null).
   */
  thread?: number;
  flags: number;
  pos: string;
}

let procDev: bigint | undefined;
/** Whether `d` is a file of ferry's own procfs. */
function onOwnProc(d: FdDesc): boolean {
  procDev ??= statSync('/proc', { bigint: true }).dev;
  return d.stat.dev === procDev;
}

/** The tree's (innermost) pid of host pid `pid`; with `tid`, of that thread of it. */
function nsPid(pid: number, tid?: number): number {
  return parseStatus(readProcText(pid, tid === undefined ? 'status' : `task/${tid}/status`)).nsPid.at(-1) ?? tid ?? pid;
}

/** Checks the shape of `sub`: names below /proc/PID, none of them "." or "..". */
function validSub(sub: unknown): boolean {
  return typeof sub === 'string' && sub.length <= 4096 && !sub.includes('\0')
    && (sub === '' || (sub.startsWith('/') && sub.slice(1).split('/').every((x) => x !== '' && x !== '.' && x !== '..')));
}

/** Opens `path` (on ferry's procfs) with the record's flags and offset; no magic link is followed. */
function openProc(path: string, rec: ProcfileRecord): number {
  const n = native();
  const at = openIn(hostRoot(), path, O_PATH | (rec.flags & O_DIRECTORY), `file ${rec.id} (${path}) of the image`);
  try {
    const fd = n.openRaw(`/proc/self/fd/${at}`, rec.flags & REOPEN_FLAGS);
    const pos = Number(rec.pos);
    if (pos !== 0) {
      try {
        n.lseek(fd, pos, 0);
      } catch { /* a /proc file that cannot seek was read from its start again */ }
    }
    return fd;
  } finally {
    n.closeFd(at);
  }
}

/** Refuses, for an image not trusted, a /proc file of a process outside its tree. */
export function checkProcfileTrust(label: string, files: readonly FileRecord[]): void {
  const f = files.find((x) => x.kind === 'procfile' && x.target === null);
  if (!f) return;
  throw new FerryError('EPRIVILEGE', `image ${label}: file ${f.id} (${JSON.stringify(String(f.sub).slice(0, 256))}) is a /proc file of a process outside the image's tree, `
    + 'which restore would open as root: only an image this host signed or one you trust may hold one (sign it and restore with --trust if it is genuine)');
}

export const procfile: FileKind<ProcfileRecord> = {
  kind: 'procfile',

  matches(fd: FdDesc): boolean {
    return PROC_PATH.test(fd.link) && (fd.fdinfo.flags & O_PATH) === 0 && onOwnProc(fd);
  },

  key(fd: FdDesc): string {
    return `procfile:${fd.link}:${fd.fdinfo.pos}:${fd.fdinfo.flags & ~O_CLOEXEC}`;
  },

  dump(fd: FdDesc, ctx): Omit<ProcfileRecord, 'id' | 'kind'> {
    const m = PROC_PATH.exec(fd.link)!;
    const pid = Number(m[1]);
    const tid = m[2] === undefined ? undefined : Number(m[2]);
    const rest = m[3] ?? '';
    const flags = fd.fdinfo.flags & REOPEN_FLAGS;
    const pos = fd.fdinfo.pos.toString();
    if (!ctx.pids.has(pid)) return { target: null, sub: fd.link, flags, pos };
    // Another thread's (restore opens it once the threads exist: namesThread).
    if (tid !== undefined && tid !== pid) return { target: nsPid(pid), sub: rest, thread: nsPid(pid, tid), flags, pos };
    return { target: nsPid(pid), sub: rest, ...(tid !== undefined ? { task: true } : {}), flags, pos };
  },

  check(rec: ProcfileRecord): void {
    const bad = (why: string): never => {
      throw new FerryError('EIMAGE', `image: file ${rec.id} (kind procfile) ${why}`);
    };
    if (rec.target !== null && (!Number.isInteger(rec.target) || rec.target < 1 || rec.target > MAX_PID)) bad('has an invalid target');
    if (rec.target === null ? !(typeof rec.sub === 'string' && PROC_PATH.test(rec.sub) && validSub(PROC_PATH.exec(rec.sub)![3] ?? ''))
      : !validSub(rec.sub)) bad('has an invalid path');
    if (rec.task !== undefined && typeof rec.task !== 'boolean') bad('has an invalid task flag');
    if (rec.thread !== undefined && (rec.target === null || rec.task !== undefined || !Number.isInteger(rec.thread)
      || rec.thread < 1 || rec.thread > MAX_PID || rec.thread === rec.target)) bad('has an invalid thread');
    if (!Number.isSafeInteger(rec.flags) || rec.flags < 0 || (rec.flags & ~REOPEN_FLAGS) !== 0) bad('has invalid flags');
    if (typeof rec.pos !== 'string' || !/^\d{1,16}$/.test(rec.pos)) bad('has an invalid position');
  },

  open(rec: ProcfileRecord): never {
    throw new Error(`procfile (file ${rec.id}) is opened after the tree (openAfterTree), not with the other files`);
  },

  namesThread(rec: ProcfileRecord): boolean {
    return rec.thread !== undefined;
  },

  async openAfterThreads(rec: ProcfileRecord, hostTid: (pid: number, tid: number) => number | undefined): Promise<number> {
    const where = `/proc/${String(rec.target)}/task/${String(rec.thread)}${rec.sub}`;
    const pid = rec.target === null ? undefined : hostTid(rec.target, rec.target);
    const tid = rec.target === null || rec.thread === undefined ? undefined : hostTid(rec.target, rec.thread);
    if (pid === undefined || tid === undefined) {
      throw new FerryError('EOPEN', `cannot restore file ${rec.id} (${where}): thread ${String(rec.thread)} of pid ${String(rec.target)} is not a thread restored here (an edited image?)`);
    }
    return openProc(`/proc/${pid}/task/${tid}${rec.sub}`, rec);
  },

  async openAfterTree(rec: ProcfileRecord, hostPid: (pid: number) => number | undefined): Promise<number> {
    if (rec.target === null) return openProc(rec.sub, rec);
    const pid = hostPid(rec.target);
    if (pid === undefined) {
      throw new FerryError('EOPEN', `cannot restore file ${rec.id} (/proc/${rec.target}${rec.sub}): pid ${rec.target} is not a process restored here`);
    }
    return openProc(`/proc/${pid}${rec.task === true ? `/task/${pid}` : ''}${rec.sub}`, rec);
  },
};
