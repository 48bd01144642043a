/**
 * A working directory that was removed while the process ran (its /proc link reads
 * `/path (deleted)`): the process keeps a directory no name leads to. chdir(2) needs a name,
 * so restore makes the directory for the moment of the chdir and removes it at once, leaving
 * the restored process in a removed directory of the same path (files/confined.ts
 * withRemovedDir):
 * - the missing part of the path is made, component by component, in the nearest directory
 *   that still exists (mode 0700, root's), inside the task's root (files/confined.ts);
 * - when the path exists again (a new directory took the name since), the last component is
 *   made under a new name beside it (`NAME.ferry-removed-N`): the process must not land in
 *   the new directory, and its cwd then shows that name;
 * - everything made is removed again right after the chdir, also when the chdir fails;
 * - the process's (now removed) directory then gets its mode and owner back through
 *   /proc/PID/cwd: no name leads to it any more, so nobody can use it meanwhile.
 * One that several processes have, or an open file or a thread's own working directory too
 * (a thread's own removed one always), is made once for all instead
 * (restore/root-dir.ts RemovedRoots). An untrusted image may only have this done where its process could write
 * (restore/file-access.ts checkRemovedDirs).
 */
import { chmodSync, chownSync } from 'node:fs';
import { FerryError } from '../errors.js';
import type { TaskRecord } from '../image/records.js';
import { withRemovedDir, type ConfinedRoot } from '../files/confined.js';

/**
 * Runs `fn` with the path the task should chdir to: its recorded cwd, or, when that directory
 * was removed, a directory made for the call and removed once `fn` returns or throws.
 */
export function withCwd<T>(root: ConfinedRoot, task: Pick<TaskRecord, 'pid' | 'cwd' | 'cwdDeleted'>, fn: (cwd: string) => T): T {
  if (!task.cwdDeleted) return fn(task.cwd);
  return withRemovedDir(root, task.cwd, `the removed working directory ${task.cwd} of pid ${task.pid}`, fn);
}

/** Gives the removed working directory of `hostPid` (restored) the recorded mode and owner. */
export function finishRemovedCwd(hostPid: number, task: Pick<TaskRecord, 'pid' | 'cwd' | 'cwdDeleted'>): void {
  const d = task.cwdDeleted;
  if (!d) return;
  try {
    chownSync(`/proc/${hostPid}/cwd`, d.uid, d.gid);
    chmodSync(`/proc/${hostPid}/cwd`, d.mode);
  } catch (err) {
    throw new FerryError('ESTATE', `cannot give the removed working directory ${task.cwd} of pid ${task.pid} its owner ${d.uid}:${d.gid} and mode ${d.mode.toString(8)}: ${(err as Error).message}`, { cause: err });
  }
}
