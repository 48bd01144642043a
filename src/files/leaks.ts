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

/** Every outside holder of the tree's files; standard streams included. */
export function findLeaks(descsByPid: ReadonlyMap<number, readonly FdDesc[]>): Leak[] {
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
  for (const entry of readdirSync('/proc')) {
    const pid = Number(entry);
    if (!Number.isInteger(pid) || descsByPid.has(pid) || pid === process.pid) continue;
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue; // exited, or a kernel thread
    }
    for (const f of fds) {
      let link: string;
      try {
        link = readlinkSync(`/proc/${pid}/fd/${f}`);
      } catch {
        continue;
      }
      const inside = byLink.get(link);
      if (!inside) continue;
      const fd = Number(f);
      // A pipe is one object for all its ends; a path or socket only if the open file is one.
      const hit = link.startsWith('pipe:') ? inside[0] : inside.find((d) => same(pid, fd, d));
      if (hit) leaks.push({ inside: hit, pid, fd, comm: comm(pid) });
    }
  }
  return leaks;
}

/** Refuses a leak outside the standard streams; returns those of the standard streams. */
export function refuseLeaks(descsByPid: ReadonlyMap<number, readonly FdDesc[]>): Leak[] {
  const leaks = findLeaks(descsByPid);
  const bad = leaks.find((l) => l.inside.fd > 2);
  if (bad) {
    const d = bad.inside;
    throw new FerryError('ELEAK', `pid ${d.pid} fd ${d.fd} -> ${d.link} is also held outside the checkpointed tree, by pid ${bad.pid} (${bad.comm}) fd ${bad.fd}: `
      + 'restoring would split it in two; checkpoint a tree that holds every end, or close it outside');
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
