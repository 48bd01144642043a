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
 * - on the host, the chdir goes through ferry's descriptor of the directory made
 *   (/proc/<ferry>/fd/N), never the path: a directory on the way may be writable by someone
 *   who swaps it; in a container, by the path, and the process must then be in the very
 *   directory made;
 * - everything made is removed again right after the chdir, also when the chdir fails;
 * - the process's (now removed) directory then gets its mode and owner back through
 *   /proc/PID/cwd: no name leads to it any more, so nobody can use it meanwhile.
 * One that several processes have, or an open file or a thread's own working directory too
 * (a thread's own removed one always), is made once for all instead
 * (restore/root-dir.ts RemovedRoots). An untrusted image may only have this done where its process could write
 * (restore/file-access.ts checkRemovedDirs).
 */
import { chmodSync, chownSync, fstatSync, statSync, type BigIntStats } from 'node:fs';
import { FerryError } from '../errors.js';
import type { TaskRecord } from '../image/records.js';
import { withRemovedDir, type ConfinedRoot } from '../files/confined.js';

/**
 * Runs `fn` with the path the task should chdir to: its recorded cwd, or, when that directory
 * was removed, a directory made for the call and removed once `fn` returns or throws. On the
 * host, that path is ferry's descriptor of the directory made (/proc/<ferry>/fd/N: the very
 * directory, whatever happens to the names above it meanwhile); in a container, where that is
 * not the task's to see, the path made, and then the task `hostPid` (when given) must be in
 * the very directory made once `fn` returns (ECHANGED otherwise: a directory on the way was
 * swapped by someone who may write it).
 */
export function withCwd<T>(root: ConfinedRoot, task: Pick<TaskRecord, 'pid' | 'cwd' | 'cwdDeleted'>, fn: (cwd: string) => T, hostPid?: number): T {
  if (!task.cwdDeleted) return fn(task.cwd);
  const what = `the removed working directory ${task.cwd} of pid ${task.pid}`;
  return withRemovedDir(root, task.cwd, what, (made) => {
    const onHost = root.path === '/' && root.confinement === 'in-root';
    const out = fn(onHost ? `/proc/${process.pid}/fd/${made.fd}` : made.path);
    if (hostPid !== undefined) {
      const want = fstatSync(made.fd, { bigint: true });
      let got: BigIntStats;
      try {
        got = statSync(`/proc/${hostPid}/cwd`, { bigint: true });
      } catch (err) {
        throw new FerryError('ESTATE', `cannot restore ${what}: its working directory cannot be checked (${(err as Error).message})`, { cause: err });
      }
      if (got.dev !== want.dev || got.ino !== want.ino) {
        throw new FerryError('ECHANGED', `cannot restore ${what}: a directory on the way to ${made.path} was replaced while the process entered it `
          + '(someone who may write it swapped it): nothing was restored', { path: task.cwd });
      }
    }
    return out;
  });
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
