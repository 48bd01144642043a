/**
 * Leak detection (DESIGN.md §4): an open file of the checkpointed tree that a process outside
 * the tree holds too. Restore would recreate it for the tree alone and split it in two — an
 * offset no longer shared, a pipe whose other end nobody writes any more — so checkpoint
 * refuses it, naming both holders, before the tree is read.
 *
 * Outside holders are found by the link text of their descriptors (a path, "pipe:[ino]",
 * "socket:[ino]"), confirmed with kcmp(KCMP_FILE) where a path alone does not make one file:
 * two processes may well open one file separately. Every end of a pipe is the same pipe.
 * Descriptors 0, 1 and 2 are exempt: a tree's standard streams usually come from outside (a
 * shell, a supervisor, a container runtime that substitutes them on restore); they are logged.
 *
 * Reading every descriptor of every process on the host costs about 25 µs a descriptor, so
 * checkpoint reads them once before it stops the tree (snapshotHostFds) and checks against
 * that after the freeze (findLeaks). The check must hold at freeze time, and a pre-freeze
 * reading can be stale; what can have changed since, and how each is caught:
 * - A process created since (forked by the tree, then gone out of it; or anything new): its
 *   pid was allocated after the reading began. The pid namespace's last allocated pid
 *   (/proc/loadavg) is read before and after; a pid allocated in between, or one the reading
 *   did not see, is read in full after the freeze. (Reusing a pid the reading saw would take
 *   a whole cycle of pid_max allocations in between.)
 * - A holder seen by the reading: its descriptor is read again after the freeze and confirmed
 *   (kcmp, or the same pipe). If it no longer holds the file, it may have passed it on (a
 *   fork, SCM_RIGHTS) before letting go, so every process is read in full after all, as is
 *   done when a holder seen then has exited.
 * - A process that existed before and had no file of the tree then, and received one since:
 *   over SCM_RIGHTS, through pidfd_getfd(2) or /proc/PID/fd/N, or by sharing a descriptor
 *   table (CLONE_FILES) with a process of the tree. The tree can hand out nothing once it is
 *   stopped, so from the tree this needs it to send a descriptor out in the few milliseconds
 *   between the reading and the freeze; this is not caught. Nor was it before: a descriptor
 *   sent out just before the freeze and still queued on the receiving socket is invisible to
 *   any reading of /proc, and one taken with pidfd_getfd after the check is too; a
 *   process-by-process reading was never a snapshot of the host either.
 * Without a pre-freeze reading (a tree of one process holding no file worth looking for when
 * it was checked), every process is read in full after the freeze, as before.
 */
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { FerryError } from '../errors.js';
import { native } from '../native/binding.js';
import type { FdDesc } from './types.js';

const KCMP_FILE = 0;

/** One descriptor outside the tree that holds a file of the tree. */
export interface Leak {
  inside: FdDesc;
  pid: number;
  fd: number;
  comm: string;
}

/** The host's descriptors as read before the freeze (snapshotHostFds). */
export interface HostFds {
  /** The pid namespace's last allocated pid when the reading began. */
  lastPid: number;
  /** Watched descriptors by pid, [fd, link]; a process whose table could not be read is absent. */
  byPid: Map<number, Array<[number, string]>>;
}

/** The last pid allocated in ferry's pid namespace: /proc/loadavg's fifth field (proc(5)). */
function lastPid(): number {
  const last = readFileSync('/proc/loadavg', 'utf8').trim().split(/\s+/)[4];
  const n = Number(last);
  if (!Number.isInteger(n)) throw new Error(`cannot parse /proc/loadavg: ${last}`);
  return n;
}

/** Pids of /proc, ferry's own left out. */
function hostPids(): number[] {
  const out: number[] = [];
  for (const entry of readdirSync('/proc')) {
    const pid = Number(entry);
    if (Number.isInteger(pid) && pid !== process.pid) out.push(pid);
  }
  return out;
}

/** [fd, link] of every watched descriptor of `pid`; undefined when its table cannot be read. */
function watchedFds(pid: number): Array<[number, string]> | undefined {
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return undefined; // exited, or a kernel thread
  }
  const out: Array<[number, string]> = [];
  for (const f of fds) {
    try {
      const link = readlinkSync(`/proc/${pid}/fd/${f}`);
      if (watched(link)) out.push([Number(f), link]);
    } catch { /* closed meanwhile */ }
  }
  return out;
}

/** Whether any of `descs` is of a kind a process outside could share (worth a host reading). */
export function anyWatched(descs: readonly FdDesc[]): boolean {
  return descs.some((d) => watched(d.link));
}

/**
 * Reads the watched descriptors of every process but ferry, before the freeze (see the top of
 * this file for what findLeaks does about what changes afterwards).
 */
export function snapshotHostFds(): HostFds {
  const last = lastPid(); // first: a process created during the reading counts as new
  const byPid = new Map<number, Array<[number, string]>>();
  for (const pid of hostPids()) {
    const fds = watchedFds(pid);
    if (fds) byPid.set(pid, fds);
  }
  return { lastPid: last, byPid };
}

/** Whether `pid` was allocated after `before`, given the last pid allocated now (pids go up and wrap). */
function allocatedSince(pid: number, before: number, now: number): boolean {
  if (now === before) return false;
  return now > before ? pid > before && pid <= now : pid > before || pid <= now;
}

/**
 * Every outside holder of the tree's files; standard streams included. With `before` (a
 * reading taken before the freeze), only what can have changed since is read again.
 */
export function findLeaks(descsByPid: ReadonlyMap<number, readonly FdDesc[]>, before?: HostFds): Leak[] {
  const byLink = new Map<string, FdDesc[]>();
  for (const descs of descsByPid.values()) {
    for (const d of descs) {
      if (!watched(d.link)) continue;
      const list = byLink.get(d.link);
      if (list) list.push(d);
      else byLink.set(d.link, [d]);
    }
  }
  if (byLink.size === 0) return [];
  const leaks: Leak[] = [];
  /** Adds the leak of outside descriptor `fd` of `pid` showing `link`, if it is one. */
  const check = (pid: number, fd: number, link: string): void => {
    const inside = byLink.get(link);
    if (!inside) return;
    // A pipe is one object for all its ends; a path or socket only if the open file is one.
    const hit = link.startsWith('pipe:') ? inside[0] : inside.find((d) => same(pid, fd, d));
    if (hit) leaks.push({ inside: hit, pid, fd, comm: comm(pid) });
  };
  const readAll = (pid: number): void => {
    for (const [fd, link] of watchedFds(pid) ?? []) check(pid, fd, link);
  };
  const outside = hostPids().filter((pid) => !descsByPid.has(pid));
  if (before === undefined) {
    for (const pid of outside) readAll(pid);
    return leaks;
  }
  const now = lastPid();
  const fresh = (pid: number): boolean => !before.byPid.has(pid) || allocatedSince(pid, before.lastPid, now);
  const alive = new Set(outside);
  let moved = false;
  for (const [pid, fds] of before.byPid) {
    if (descsByPid.has(pid)) continue;
    for (const [fd, link] of fds) {
      if (!byLink.has(link)) continue;
      let linkNow: string | undefined;
      try {
        if (alive.has(pid) && !fresh(pid)) linkNow = readlinkSync(`/proc/${pid}/fd/${fd}`);
      } catch { /* closed since */ }
      if (linkNow !== link) moved = true; // let go of (or exited with) a file of the tree
      else check(pid, fd, link);
    }
  }
  if (moved) {
    // It may have passed the file on before letting go: read everything, as without a reading.
    leaks.length = 0;
    for (const pid of outside) readAll(pid);
    return leaks;
  }
  for (const pid of outside) if (fresh(pid)) readAll(pid);
  return leaks;
}

/**
 * Refuses a leak outside the standard streams, unless its link is one of `external` (the
 * caller says it will hand that file in at restore: `--external`); returns the leaks allowed.
 */
export function refuseLeaks(descsByPid: ReadonlyMap<number, readonly FdDesc[]>, before?: HostFds,
  external: ReadonlySet<string> = new Set()): Leak[] {
  const leaks = findLeaks(descsByPid, before);
  const bad = leaks.find((l) => l.inside.fd > 2 && !external.has(l.inside.link));
  if (bad) {
    const d = bad.inside;
    throw new FerryError('ELEAK', `pid ${d.pid} fd ${d.fd} -> ${d.link} is also held outside the checkpointed tree, by pid ${bad.pid} (${bad.comm}) fd ${bad.fd}: `
      + `restoring would split it in two; checkpoint a tree that holds every end, close it outside, or mark it --external ${d.link} `
      + `(then restore with --inherit-fd fd[N]:${d.link}, N your descriptor of it)`,
    { pid: d.pid, fd: d.fd, ...(d.link.startsWith('/') ? { path: d.link } : {}) });
  }
  return leaks;
}

/** Links worth looking for outside: files by path, pipes and sockets. */
function watched(link: string): boolean {
  return (link.startsWith('/') && !link.startsWith('/dev/')) || link.startsWith('pipe:[') || link.startsWith('socket:[');
}

function same(pid: number, fd: number, d: FdDesc): boolean {
  try {
    return native().kcmp(pid, d.pid, KCMP_FILE, fd, d.fd) === 0;
  } catch {
    return false; // gone meanwhile, or not comparable
  }
}

function comm(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '?';
  }
}
