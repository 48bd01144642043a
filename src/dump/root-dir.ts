/**
 * A process's root directory (chroot(2)): /proc/PID/root, read as ferry sees it. A process of a
 * plain tree whose root is not ferry's own `/` was chroot'ed, and its root is recorded
 * (TaskRecord `root`, restored by restore/root-dir.ts). A container's processes share their
 * init's root, the container's; one chroot'ed inside the container has its root recorded as
 * the path inside the container's root (the link reads so: the container's root is the root
 * of its mount namespace, which ferry's root does not reach), after checking that this path,
 * resolved inside the container's root as restore will resolve it, is that very directory
 * (same device and inode): a root outside the container's, reached through a descriptor
 * from outside, is refused rather than recorded as a path that names another directory.
 *
 * A root that was removed while the process lived in it (chroot(dir), then rmdir(dir): its
 * link reads `/path (deleted)` and the directory has no links left) is recorded by its path
 * without the suffix, with `rootDeleted`: its mode, owner and identity (device and inode, as a
 * removed working directory's: dump/task-state.ts readPaths), by which restore makes one
 * directory for every process of the tree in it, and for a working directory that is the same
 * directory. rmdir(2) removes only an empty directory, and nothing can be made in a removed
 * one: such a root holds nothing, so nothing but the directory itself is recorded. A working
 * directory removed in it (chroot(dir); chdir("/sub"); both removed) is a removed directory
 * whose parent is that root: restore makes it in the root's directory while that still has a
 * name (restore/root-dir.ts). One deeper (chroot(dir); chdir("/a/b"); b, a and dir removed)
 * has the removed directories between recorded too, from the root down (`cwdBetween`: read
 * from the working directory up by "..", readCwdBetween; their names are its path's), and
 * restore makes the chain in the root's directory the same way. A removed root inside a
 * container is recorded by its path inside the container's root (containerRoot), once ".."
 * from it leads to that root where its path says.
 */
import { fstatSync, readlinkSync, statSync, type BigIntStats } from 'node:fs';
import { FerryError } from '../errors.js';
import { ConfinedRoot, statIn } from '../files/confined.js';
import { MAX_REMOVED_DEPTH, type RemovedDirRecord } from '../image/records.js';
import { native } from '../native/binding.js';
import { O_DIRECTORY, O_PATH } from '../proc/fcntl.js';
import { readProcLink } from '../proc/read.js';

const DELETED = ' (deleted)';

/**
 * The root every process of a tree shares unless chroot'ed, as its link reads (`path`): `/`
 * for a plain tree; for a container's (`container`, `init` its init's pid as ferry sees it),
 * the container's root (containerBase).
 */
export interface RootBase {
  path: string;
  container: boolean;
  init?: number;
  /** The container has a mount namespace of its own, whose root is the container's. */
  ownMounts?: boolean;
  /**
   * The container's root, open (openContainerRoot): opened once, for the first process or
   * thread chroot'ed inside it, and closed with closeRootBase once every task is read.
   */
  top?: ConfinedRoot;
}

/** Closes what `base` holds open (RootBase.top); it may be used again after. */
export function closeRootBase(base: RootBase): void {
  base.top?.close();
  delete base.top;
}

/**
 * The root of the container whose init is `init`. In a mount namespace of its own (what a
 * runtime makes, pivot_root(2) into the rootfs), the container's root is that namespace's,
 * and a link of its processes reads as the path from there, `/` for the root itself, however
 * the init is chroot'ed (its own root link may read `/jail`). Otherwise (the container shares
 * ferry's mounts), its root is what its init's root link reads: a chroot of the init itself
 * cannot be told from its container's root there.
 */
export function containerBase(init: number): RootBase {
  const ownMounts = readProcLink(init, 'ns/mnt') !== readlinkSync('/proc/self/ns/mnt');
  return ownMounts ? { path: '/', container: true, init, ownMounts } : { path: readProcLink(init, 'root'), container: true, init };
}

/**
 * The container's root of `base`, open: with a mount namespace of its own, the top of its
 * mounts, reached from its init's root by ".." until it leads nowhere higher (the root of a
 * mount namespace is its own parent); else its init's root.
 */
function openContainerRoot(base: RootBase): ConfinedRoot {
  const n = native();
  let fd = n.openRaw(`/proc/${base.init!}/root`, O_PATH | O_DIRECTORY);
  if (base.ownMounts !== true) return new ConfinedRoot(`/proc/${base.init!}/root`, 'in-root', fd);
  try {
    for (let i = 0; i < 4096; i++) {
      const up = n.openat2(fd, '..', O_PATH | O_DIRECTORY, 0, 0);
      const a = fstatSync(fd, { bigint: true }), b = fstatSync(up, { bigint: true });
      n.closeFd(fd);
      fd = up;
      if (a.dev === b.dev && a.ino === b.ino) return new ConfinedRoot(`the root of container init ${base.init!}`, 'in-root', fd);
    }
  } catch (err) {
    n.closeFd(fd);
    throw err;
  }
  n.closeFd(fd);
  throw new FerryError('EDUMP', `the root of the container of pid ${base.init!} is more than 4096 directories above its init's root`, { pid: base.init! });
}

/**
 * The root directory of `pid` to record, or undefined when it is the tree's own (`base`).
 * With `tid`: that thread's, one with an fs struct of its own (ThreadRecord.fs).
 */
export function readRootDir(pid: number, base: RootBase, tid?: number): { root: string; rootDeleted?: RemovedDirRecord } | undefined {
  const link = tid === undefined ? 'root' : `task/${tid}/root`;
  const root = readProcLink(pid, link);
  if (root === base.path) return undefined;
  if (base.container) return containerRoot(pid, base, link, root, tid);
  if (!root.endsWith(DELETED)) return { root };
  const st = statSync(`/proc/${pid}/${link}`, { bigint: true });
  if (st.nlink !== 0n) return { root }; // a name that ends so
  return { root: root.slice(0, -DELETED.length), rootDeleted: removedDir(st) };
}

/** What a removed directory's record keeps of its stat: mode, owner, device and inode. */
export function removedDir(st: { mode: bigint; uid: bigint; gid: bigint; dev: bigint; ino: bigint }): RemovedDirRecord {
  return { mode: Number(st.mode & 0o7777n), uid: Number(st.uid), gid: Number(st.gid), dev: st.dev.toString(), ino: st.ino.toString() };
}

/**
 * Walks up from the directory `link` (a /proc link of a process) by "..", `n` times at most,
 * through descriptors (one path resolution a step), from ferry's root, which a process's own
 * root does not stop: `each` gets the stat of the directory `up` levels above, and stops the
 * walk by returning false. Errors (a directory gone meanwhile) are thrown.
 */
function walkUp(link: string, n: number, each: (st: BigIntStats, up: number) => boolean | void): void {
  const nat = native();
  let fd = nat.openRaw(link, O_PATH | O_DIRECTORY);
  try {
    for (let up = 1; up <= n; up++) {
      const parent = nat.openat2(fd, '..', O_PATH | O_DIRECTORY, 0, 0);
      nat.closeFd(fd);
      fd = parent;
      if (each(fstatSync(fd, { bigint: true }), up) === false) return;
    }
  } finally {
    nat.closeFd(fd);
  }
}

/**
 * The root `root` (the link `link` of `pid` as read) of a process chroot'ed inside a
 * container, as the path inside the container's root; refused (EUNSUPPORTED, the tree left
 * running) when that path, resolved inside the container's root, is not the directory the
 * process is in. A removed one (its link reads `/path (deleted)`, no links left) has no path
 * to resolve: it is recorded with `rootDeleted`, as on the host, once ".." from it, as many
 * times as its path has names, is the container's root and nothing before is: a directory of
 * the container, not one reached from outside it.
 */
function containerRoot(pid: number, base: RootBase, link: string, root: string, tid: number | undefined): { root: string; rootDeleted?: RemovedDirRecord } {
  const who = tid === undefined ? `pid ${pid}` : `thread ${tid} of pid ${pid}`;
  const refuse = (why: string): never => {
    throw new FerryError('EUNSUPPORTED', `${who} is chroot'ed inside its container into ${root}, ${why}: it cannot be checkpointed; the tree was left running`, { pid });
  };
  const st = statSync(`/proc/${pid}/${link}`, { bigint: true });
  const removed = root.endsWith(DELETED) && st.nlink === 0n;
  const path = removed ? root.slice(0, -DELETED.length) : root;
  const prefix = base.path === '/' ? '' : base.path;
  if (!path.startsWith(`${prefix}/`) || base.init === undefined) refuse(`which is not under its container's root (${base.path})`);
  const inside = path.slice(prefix.length);
  let found;
  try {
    base.top ??= openContainerRoot(base);
    if (removed) {
      // From the directory itself up, walked from ferry's root, which neither the process's
      // nor the container's stops: the container's root where its path says, and not before.
      const top = fstatSync(base.top.fd, { bigint: true });
      const names = inside.split('/').filter((n) => n !== '');
      if (names.length === 0 || names.length > 4096) refuse(`a directory removed since, ${names.length === 0 ? 'its container\'s root itself' : 'more than 4096 directories below its container\'s root'}`);
      walkUp(`/proc/${pid}/${link}`, names.length, (at, up) => {
        const isTop = at.dev === top.dev && at.ino === top.ino;
        if (isTop !== (up === names.length)) refuse(`a directory removed since, which is not where ${inside} inside its container's root would be (a directory reached from outside it)`);
      });
      return { root: inside, rootDeleted: removedDir(st) };
    }
    // Resolved as restore resolves it: inside the container's root, no magic link followed.
    found = statIn(base.top, inside, `the root directory of ${who}`);
  } catch (err) {
    if (err instanceof FerryError && err.code === 'EUNSUPPORTED') throw err;
    found = undefined;
  }
  if (found?.dev !== st.dev || found.ino !== st.ino) refuse(`which is not what ${inside} inside its container's root is (a directory reached from outside it)`);
  return { root: inside };
}

const sameDir = (a: { dev?: string | bigint; ino?: string | bigint }, b: RemovedDirRecord): boolean => String(a.dev) === b.dev && String(a.ino) === b.ino;

/**
 * The removed directories between the removed root `root` of `pid` and its removed working
 * directory `paths` more than one directory below it (TaskRecord `cwdBetween`, from the root
 * down), or undefined when there are none to record: the working directory is not removed, is
 * the root, or is directly in it. They are reached from the working directory by "..", once
 * for each name of its path below the root (/proc/PID/cwd/.., /proc/PID/cwd/../.., walked
 * from ferry's root, which the process's does not stop), and the last ".." must be the root
 * itself: a directory between that still has a name, a chain deeper than
 * MAX_REMOVED_DEPTH, or one that does not end at the root where the path says is refused
 * (EUNSUPPORTED, one line; the process is left running): restore could not rebuild it as it was.
 */
export function readCwdBetween(pid: number, paths: { cwd: string; cwdDeleted?: RemovedDirRecord },
  root: { root: string; rootDeleted?: RemovedDirRecord } | undefined): RemovedDirRecord[] | undefined {
  const cwd = paths.cwdDeleted;
  const dir = root?.rootDeleted;
  if (cwd === undefined || dir === undefined || !paths.cwd.startsWith(`${root!.root}/`) || (cwd.dev === dir.dev && cwd.ino === dir.ino)) return undefined;
  const names = paths.cwd.slice(root!.root.length + 1).split('/');
  const refuse = (why: string): never => {
    throw new FerryError('EUNSUPPORTED', `pid ${pid}: its working directory ${paths.cwd} was removed, and so was its root directory ${root!.root}, `
      + `${why}: restore cannot rebuild that; the process was left running`, { pid });
  };
  if (names.length > MAX_REMOVED_DEPTH) refuse(`more than ${MAX_REMOVED_DEPTH} directories above it`);
  if (names.some((n) => n === '' || n === '.' || n === '..')) refuse('and its path below the root is not a plain one');
  const between: RemovedDirRecord[] = [];
  const step = (st: BigIntStats, up: number): void => {
    // Where the path says the root is, the walk must be at the root, and nowhere before.
    const atRoot = sameDir(st, dir);
    if (up === names.length) {
      if (!atRoot) refuse(`which is not ${names.length === 1 ? 'its parent' : `${names.length} directories above it`}, as its path says`);
      return;
    }
    const at = `${root!.root}/${names.slice(0, names.length - up).join('/')}`;
    if (atRoot) refuse(`which is its directory ${at}, as its path does not say`);
    if (st.nlink !== 0n) refuse(`and ${at} between them was not (it has a name elsewhere)`);
    between.unshift(removedDir(st));
  };
  try {
    walkUp(`/proc/${pid}/cwd`, names.length, step);
  } catch (err) {
    if (err instanceof FerryError) throw err;
    refuse('whose directories between could not be read');
  }
  return between.length > 0 ? between : undefined;
}
