/**
 * A process's root directory (chroot(2)): /proc/PID/root, read as ferry sees it. A process of a
 * plain tree whose root is not ferry's own `/` was chroot'ed, and its root is recorded
 * (TaskRecord `root`, restored by restore/root-dir.ts). A container's processes share their
 * init's root, the container's; one chroot'ed inside the container is refused.
 *
 * A root that was removed while the process lived in it (chroot(dir), then rmdir(dir): its
 * link reads `/path (deleted)` and the directory has no links left) is recorded by its path
 * without the suffix, with `rootDeleted`: its mode, owner and identity (device and inode, as a
 * removed working directory's: dump/task-state.ts readPaths), by which restore makes one
 * directory for every process of the tree in it, and for a working directory that is the same
 * directory. rmdir(2) removes only an empty directory, and nothing can be made in a removed
 * one: such a root holds nothing, so nothing but the directory itself is recorded.
 */
import { statSync } from 'node:fs';
import { FerryError } from '../errors.js';
import type { RemovedDirRecord } from '../image/records.js';
import { readProcLink } from '../proc/read.js';

const DELETED = ' (deleted)';

/**
 * The root directory of `pid` to record, or undefined when it is the tree's own (`base`: `/`
 * for a plain tree, the container's root for a container's). With `tid`: that thread's, one
 * with an fs struct of its own (ThreadRecord.fs).
 */
export function readRootDir(pid: number, base: string, container: boolean, tid?: number): { root: string; rootDeleted?: RemovedDirRecord } | undefined {
  const link = tid === undefined ? 'root' : `task/${tid}/root`;
  const root = readProcLink(pid, link);
  if (root === base) return undefined;
  if (container) {
    throw new FerryError('EUNSUPPORTED', `${tid === undefined ? 'pid' : `thread ${tid} of pid`} ${pid}: its root directory ${root} is not its container's (${base}): a process chroot'ed inside a container cannot be checkpointed yet`, { pid });
  }
  if (!root.endsWith(DELETED)) return { root };
  const st = statSync(`/proc/${pid}/${link}`, { bigint: true });
  if (st.nlink !== 0n) return { root }; // a name that ends so
  return { root: root.slice(0, -DELETED.length), rootDeleted: removedDir(st) };
}

/** What a removed directory's record keeps of its stat: mode, owner, device and inode. */
export function removedDir(st: { mode: bigint; uid: bigint; gid: bigint; dev: bigint; ino: bigint }): RemovedDirRecord {
  return { mode: Number(st.mode & 0o7777n), uid: Number(st.uid), gid: Number(st.gid), dev: st.dev.toString(), ino: st.ino.toString() };
}
