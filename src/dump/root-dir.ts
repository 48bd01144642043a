/**
 * A process's root directory (chroot(2)): /proc/PID/root, read as ferry sees it. A process of a
 * plain tree whose root is not ferry's own `/` was chroot'ed, and its root is recorded
 * (TaskRecord `root`, restored by restore/root-dir.ts). A container's processes share their
 * init's root, the container's; one chroot'ed inside the container is refused, as is a root
 * that was removed.
 */
import { FerryError } from '../errors.js';
import { readProcLink } from '../proc/read.js';

/**
 * The root directory of `pid` to record, or undefined when it is the tree's own (`base`: `/`
 * for a plain tree, the container's root for a container's).
 */
export function readRootDir(pid: number, base: string, container: boolean): string | undefined {
  const root = readProcLink(pid, 'root');
  if (root === base) return undefined;
  if (root.endsWith(' (deleted)')) {
    throw new FerryError('EUNSUPPORTED', `pid ${pid}: its root directory (chroot) ${root.slice(0, -10)} was removed, which cannot be restored; let it leave that root first`, { pid });
  }
  if (container) {
    throw new FerryError('EUNSUPPORTED', `pid ${pid}: its root directory ${root} is not its container's (${base}): a process chroot'ed inside a container cannot be checkpointed yet`, { pid });
  }
  return root;
}
