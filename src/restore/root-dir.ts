/**
 * A chroot'ed process's root directory (TaskRecord `root`, dump/root-dir.ts): the restored
 * process calls chroot(2) itself, injected while its stub still runs as root, after the last
 * injected call that names a host path (its working directory, /proc/self/loginuid) and
 * before its credentials. Its working directory stays where it was put, as chroot leaves it.
 * A process sharing its fs struct with one restored before it (CLONE_FS, image/sharing.ts)
 * has that root already.
 *
 * A root that was removed (`rootDeleted`) is a directory no name leads to, and chroot(2)
 * needs a name. So restore makes it, once for every process whose removed root it is (the
 * same device and inode at checkpoint: a tree forked after the chroot shares it), as a removed
 * working directory is made (files/confined.ts withRemovedDir: the missing part of the path,
 * inside the host's root, mode 0700, a new name beside it when the path was taken meanwhile),
 * opens it O_PATH and removes the name at once; it then gives the held directory its recorded
 * mode and owner, and each process chroots into it through /proc/<ferry>/fd/N, which the
 * kernel follows to that directory itself (no name anyone could take or replace). A working
 * directory that is that same directory (the usual chroot(dir); chdir("/"); then dir removed)
 * is entered the same way: cwd and root come back as one directory, as they were. A removed
 * working directory directly in a removed root (chroot(dir); chdir("/sub"); both removed: its
 * path is the root's and one name more) is made in the root's directory while that still has
 * its name (nothing can be made in a removed directory), held and removed the same way, given
 * its mode and owner, and entered through /proc/<ferry>/fd/N: its `..` is the root again, not a
 * directory of the host (one made for it alone at its path would lead out of the root). One
 * deeper (chroot(dir); chdir("/a/b"); b, a and dir removed) has the removed directories between
 * recorded (`cwdBetween`: mode, owner, identity; their names are the working directory's path's):
 * each is made in the one made before it, from the root down, while that still has its name,
 * held, and its name removed before its parent's, so that the working directory's ".." is the
 * removed a again and a's the root. Processes whose chains pass through one directory (the same
 * device and inode) get one. A removed working directory outside a removed root that several
 * processes have (sharing no fs struct), or that an open file of the tree holds too, is one
 * directory for them all the same way, as is a thread's own removed working directory
 * (ThreadRecord.fs, alone or with other holders; the thread chdirs to it in createThreads):
 * made once, held, and entered through /proc/<ferry>/fd/N by each. All of these are made
 * before the tree's files are opened, and an open file of one of them (a removed root, a
 * directory below one, such a working directory) opens the directory made here through
 * ferry's descriptor of it (files/regular.ts, RemovedRoots.dirOf): one directory for the
 * processes and the file, in its place in the chain. Being
 * removed, it is empty (rmdir(2) removes only an empty directory, and nothing can be made in
 * a removed one), so there is nothing in it to restore; files the process had open from it
 * were removed with it and come back as deleted files.
 *
 * A process chroot'ed inside a container has its root recorded as the path inside the
 * container's root (dump/root-dir.ts). The restored task, made by the runtime inside that
 * root, resolves it itself, confined there whatever the image says: it opens its own '/'
 * (the container's root, as nothing is chroot'ed yet), then the path with openat2(2)
 * RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS from there (".." stops at the container's root,
 * an absolute symlink starts from it, no /proc magic link leads out), and chroots into what
 * it opened: fchdir(2) to it, chroot("."), fchdir(2) back to the working directory it was put
 * in (held open meanwhile), the descriptors closed again. A removed root inside a container
 * is made as on the host, in the container's root (the tasks' root: ferry's ConfinedRoot of
 * /proc/<init>/root, whose descriptors are on the container's own mount of its rootfs, where
 * ".." stops, not on ferry's view of the rootfs); the task cannot see /proc/<ferry>/fd/N
 * there, so it takes ferry's descriptor of it, while it still holds ferry's pidfd (before
 * installFds closes it), with pidfd_getfd(2), above every number of the image
 * (RemovedRoots.takeInto), and enters it with fchdir(2) and chroot("."), then goes back to its
 * working directory; a removed working directory ferry holds is entered the same way, at once.
 *
 * A chroot is no privilege in itself, but one the process could not have made itself is a way
 * to one: a setuid program run inside a root whose files its caller chose. So an image no
 * trusted key signed may give a process a root only if each of its threads could chroot(2)
 * itself (CAP_SYS_CHROOT effective) or can gain nothing by exec (no_new_privs). A removed root
 * is made only where the process could write (restore/file-access.ts checkRemovedDirs).
 */
import { chmodSync, chownSync } from 'node:fs';
import { SYS } from '../arch/x86-64.js';
import { errnoName, FerryError } from '../errors.js';
import {
  OPEN_HOW_SIZE, openHow, RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, withRemovedDir, type ConfinedRoot, type RemovedDir,
} from '../files/confined.js';
import { big, type FileRecord, type RemovedDirRecord, type TaskRecord, type ThreadCredsRecord } from '../image/records.js';
import { removedDirIdentity } from '../files/removed-node.js';
import { native } from '../native/binding.js';
import { AT_FDCWD, O_CLOEXEC, O_DIRECTORY, O_PATH } from '../proc/fcntl.js';
import type { Tracee } from '../task/tracee.js';
import type { AddressSpace } from './address-space.js';

const CAP_SYS_CHROOT = 18n;
const F_DUPFD_CLOEXEC = 1030;

/** Refuses (EPRIVILEGE, one line) an untrusted image giving a process a root it could not make. */
export function checkRootTrust(image: string, tasks: readonly TaskRecord[], trusted: boolean): void {
  if (trusted) return;
  const unable = (th: ThreadCredsRecord): boolean => !th.noNewPrivs && ((big(th.caps.effective) >> CAP_SYS_CHROOT) & 1n) === 0n;
  for (const task of tasks) {
    // The process's root is every thread's but those with an fs of their own; theirs is theirs.
    const chroots = task.threads.map((th, i) => ({ own: th.fs !== undefined, root: th.fs !== undefined ? th.fs.root : task.root, creds: task.creds.threads[i]! }));
    const bad = chroots.find((c) => c.root !== undefined && unable(c.creds));
    if (bad === undefined) continue;
    const what = bad.own ? `with its thread ${bad.creds.tid} chroot'ed into ${bad.root!}, which that thread` : `chroot'ed into ${bad.root!}, which its thread ${bad.creds.tid}`;
    throw new FerryError('EPRIVILEGE', `image ${image}: pid ${task.pid} (${task.comm}) would be restored ${what} `
      + 'could not do itself (no CAP_SYS_CHROOT, no no_new_privs), and only an image a trusted key signed may give: sign it and restore with --trust; nothing was restored', { pid: task.pid });
  }
}

/** The identity of a removed directory (device:inode), or undefined when its record has none. */
function identity(d: RemovedDirRecord | undefined): string | undefined {
  return d?.dev !== undefined && d.ino !== undefined ? `${d.dev}:${d.ino}` : undefined;
}

/**
 * A removed directory below a removed root (a working directory, or one between the root and a
 * working directory): its name in the directory it is in (`parent`, by identity; undefined: the
 * root), its recorded path and record, the processes below it, and what it is, for messages.
 */
export interface RemovedBelow {
  name: string;
  parent: string | undefined;
  path: string;
  dir: RemovedDirRecord;
  pids: number[];
  what: string;
}

/**
 * One removed root directory of an image (or a removed working directory held more than once,
 * `cwd`): where it was, as recorded, and the processes in it.
 */
export interface RemovedRoot {
  path: string;
  /** Not a root: a removed working directory of several processes, or of one and an open file of it, or a thread's own. */
  cwd?: boolean;
  dir: RemovedDirRecord;
  pids: number[];
  /**
   * Removed directories below it, by identity: the working directories of the processes in it
   * and the directories between (TaskRecord cwdBetween), each made in its parent.
   */
  below: Map<string, RemovedBelow>;
}

/** A process or a thread (with a working directory of its own) and its removed working directory, if any. */
interface CwdHolder {
  pid: number;
  /** `pid N`, or `thread T of pid N`. */
  who: string;
  cwd: string;
  dir: RemovedDirRecord | undefined;
  thread?: true;
}

/**
 * The removed root directories of `tasks`, one per directory (device and inode), checked
 * before anything is made: the processes sharing one agree on its path, mode and owner, and a
 * removed working directory that is the same directory has its path; a removed working
 * directory below it has one recorded directory between for each name of its path between
 * (cwdBetween), and the processes whose chains share a directory agree on where it is (its
 * name and parent), its mode and owner; a removed working directory outside a removed root
 * held more than once (by processes sharing no fs struct, or by an open file of `files` too)
 * is planned as one too, its processes agreeing on its path, mode and owner and a file of it
 * on its mode and owner; a thread's own removed working directory (ThreadRecord.fs) is planned
 * always, with its other holders, or is the removed root or directory below one it names
 * (the same path, mode and owner); otherwise EIMAGE (an edited image), in one line naming both
 * holders. `container`: a thread's own removed working directory is refused (EUNSUPPORTED).
 */
export function planRemovedRoots(image: string, tasks: readonly TaskRecord[], files: readonly FileRecord[] = [], container = false): Map<string, RemovedRoot> {
  const plan = new Map<string, RemovedRoot>();
  for (const t of tasks) {
    const key = identity(t.rootDeleted);
    if (key === undefined || t.root === undefined) continue;
    if (t.root.split('/').every((x) => x === '')) {
      throw new FerryError('EIMAGE', `image ${image}: pid ${t.pid} has '/' as a removed root directory, which it cannot be: refused (an edited image); nothing was restored`, { pid: t.pid });
    }
    const seen = plan.get(key);
    if (seen === undefined) {
      plan.set(key, { path: t.root, dir: t.rootDeleted!, pids: [t.pid], below: new Map() });
      continue;
    }
    const d = t.rootDeleted!;
    if (seen.path !== t.root || seen.dir.mode !== d.mode || seen.dir.uid !== d.uid || seen.dir.gid !== d.gid) {
      throw new FerryError('EIMAGE', `image ${image}: pids ${seen.pids[0]} and ${t.pid} have the same removed root directory (device ${d.dev}, inode ${d.ino}) `
        + `with another path, mode or owner (${JSON.stringify(seen.path.slice(0, 256))}, ${JSON.stringify(t.root.slice(0, 256))}): refused (an edited image); nothing was restored`, { pid: t.pid });
    }
    seen.pids.push(t.pid);
  }
  const rootOfBelow = new Map<string, RemovedRoot>(); // each directory below one root only
  for (const t of tasks) {
    // A removed working directory in the process's removed root, by its path: made in it, and
    // the directories between made too, each in the one before.
    const own = plan.get(identity(t.rootDeleted) ?? '');
    const key = identity(t.cwdDeleted);
    if (own === undefined || key === undefined || plan.has(key) || !t.cwd.startsWith(`${own.path}/`)) continue;
    const names = t.cwd.slice(own.path.length + 1).split('/');
    const between = t.cwdBetween ?? [];
    if (names.length !== between.length + 1 || names.some((n) => n === '' || n === '.' || n === '..')) {
      throw new FerryError('EIMAGE', `image ${image}: the removed working directory ${JSON.stringify(t.cwd.slice(0, 256))} of pid ${t.pid} is ${names.length} names `
        + `below its removed root directory ${JSON.stringify(own.path.slice(0, 256))}, and the image records ${between.length} directories between (task.json cwdBetween), `
        + 'not one for each name but its own: refused (an edited image); nothing was restored', { pid: t.pid });
    }
    let parent: string | undefined;
    for (const [i, d] of [...between, t.cwdDeleted!].entries()) {
      const k = identity(d) ?? '';
      const path = `${own.path}/${names.slice(0, i + 1).join('/')}`;
      const other = rootOfBelow.get(k);
      if (plan.has(k) || (other !== undefined && other !== own)) {
        throw new FerryError('EIMAGE', `image ${image}: the removed directory ${JSON.stringify(path.slice(0, 256))} on the way to the working directory of pid ${t.pid} `
          + `(device ${d.dev}, inode ${d.ino}) is also a removed root directory, or below another one: refused (an edited image); nothing was restored`, { pid: t.pid });
      }
      rootOfBelow.set(k, own);
      const seen = own.below.get(k);
      if (seen === undefined) {
        const what = i === between.length ? `the removed working directory ${path} of pid ${t.pid}` : `the removed directory ${path} above the working directory of pid ${t.pid}`;
        own.below.set(k, { name: names[i]!, parent, path, dir: d, pids: [t.pid], what });
      } else {
        if (seen.name !== names[i] || seen.parent !== parent || seen.dir.mode !== d.mode || seen.dir.uid !== d.uid || seen.dir.gid !== d.gid) {
          throw new FerryError('EIMAGE', `image ${image}: pids ${seen.pids[0]} and ${t.pid} have the same removed directory (device ${d.dev}, inode ${d.ino}) below their removed root `
            + `with another path, mode or owner (${JSON.stringify(seen.path.slice(0, 256))}, ${JSON.stringify(path.slice(0, 256))}): refused (an edited image); nothing was restored`, { pid: t.pid });
        }
        seen.pids.push(t.pid);
      }
      parent = k;
    }
  }
  for (const t of tasks) {
    const root = plan.get(identity(t.cwdDeleted) ?? '');
    if (root === undefined || root.path === t.cwd) continue;
    throw new FerryError('EIMAGE', `image ${image}: the removed working directory ${JSON.stringify(t.cwd.slice(0, 256))} of pid ${t.pid} is the removed root directory `
      + `${JSON.stringify(root.path.slice(0, 256))} of pid ${root.pids[0]} (the same device and inode) under another path: refused (an edited image); nothing was restored`, { pid: t.pid });
  }
  // Removed working directories held more than once (by processes that share no fs struct, or
  // by a process and an open file of it): one directory for them all, as a root is.
  const dirFiles = new Map<string, FileRecord>();
  for (const f of files) {
    const k = removedDirIdentity(f);
    if (k !== undefined && !dirFiles.has(k)) dirFiles.set(k, f);
  }
  // A thread's own removed working directory (ThreadRecord.fs.cwdDeleted) is always a
  // directory ferry makes and holds (restore/task-state.ts restoreThreadFs enters it), alone or
  // with the other holders of it: the process, other threads, an open file, a removed root.
  const holders: CwdHolder[] = tasks.map((t) => ({ pid: t.pid, who: `pid ${t.pid}`, cwd: t.cwd, dir: t.cwdDeleted }));
  for (const t of tasks) {
    for (const th of t.threads?.slice(1) ?? []) { // (a test's bare record may have none)
      const fs = th.fs;
      if (fs?.cwdDeleted === undefined) continue;
      const who = `thread ${th.tid} of pid ${t.pid}`;
      if (container) {
        throw new FerryError('EUNSUPPORTED', `image ${image}: ${who} has a working directory of its own that was removed (${JSON.stringify(fs.cwd.slice(0, 256))}), `
          + 'which restore cannot rebuild inside a container; nothing was restored', { pid: t.pid });
      }
      holders.push({ pid: t.pid, who, cwd: fs.cwd, dir: fs.cwdDeleted, thread: true });
    }
  }
  for (const h of holders.filter((x) => x.thread === true)) {
    // The same directory as a removed root, or one below it: entered there, so at its path.
    const k = identity(h.dir)!;
    const at: { path: string; dir: RemovedDirRecord; pids: number[] } | undefined = plan.get(k) ?? rootOfBelow.get(k)?.below.get(k);
    const d = h.dir!;
    if (at !== undefined && (at.path !== h.cwd || at.dir.mode !== d.mode || at.dir.uid !== d.uid || at.dir.gid !== d.gid)) {
      throw new FerryError('EIMAGE', `image ${image}: the removed working directory ${JSON.stringify(h.cwd.slice(0, 256))} of ${h.who} is the removed directory `
        + `${JSON.stringify(at.path.slice(0, 256))} of pid ${at.pids[0]} (device ${d.dev}, inode ${d.ino}) with another path, mode or owner: refused (an edited image); nothing was restored`, { pid: h.pid });
    }
  }
  const cwds = new Map<string, CwdHolder[]>();
  for (const h of holders) {
    const k = identity(h.dir);
    if (k === undefined || plan.has(k) || rootOfBelow.has(k)) continue;
    cwds.set(k, [...cwds.get(k) ?? [], h]);
  }
  for (const [k, hs] of cwds) {
    if (hs.length < 2 && !dirFiles.has(k) && hs[0]!.thread !== true) continue;
    const first = hs[0]!, d = first.dir!;
    for (const h of hs.slice(1)) {
      const e = h.dir!;
      if (h.cwd !== first.cwd || e.mode !== d.mode || e.uid !== d.uid || e.gid !== d.gid) {
        const both = first.thread !== true && h.thread !== true ? `pids ${first.pid} and ${h.pid}` : `${first.who} and ${h.who}`;
        throw new FerryError('EIMAGE', `image ${image}: ${both} have the same removed working directory (device ${d.dev}, inode ${d.ino}) `
          + `with another path, mode or owner (${JSON.stringify(first.cwd.slice(0, 256))}, ${JSON.stringify(h.cwd.slice(0, 256))}): refused (an edited image); nothing was restored`, { pid: h.pid });
      }
    }
    plan.set(k, { path: first.cwd, cwd: true, dir: d, pids: [...new Set(hs.map((h) => h.pid))], below: new Map() });
  }
  // A removed root, a directory below one or a working directory that an open file holds too
  // is made by RemovedRoots.make, and the file's records open it (files/regular.ts): they must
  // say one place (the same path, and in a container's image a file of the container's, not
  // of the host's: the processes' write checks judged that place), one mode and one owner.
  const held = [...plan].flatMap(([k, r]) => [
    { k, path: r.path, dir: r.dir, pid: r.pids[0]!, what: r.cwd ? 'working directory' : 'root directory' },
    ...[...r.below].map(([bk, b]) => ({ k: bk, path: b.path, dir: b.dir, pid: b.pids[0]!, what: 'directory below the removed root directory' })),
  ]);
  for (const { k, path, dir, pid, what } of held) {
    const f = dirFiles.get(k);
    const fd = f?.removed as RemovedDirRecord | undefined;
    if (fd === undefined) continue;
    const fileRoot = (f as FileRecord & { root?: unknown }).root;
    if (f!.path !== path || (container && fileRoot !== 'task')) {
      throw new FerryError('EIMAGE', `image ${image}: file ${f!.id} holds the removed ${what} of pid ${pid} `
        + `(device ${dir.dev}, inode ${dir.ino}) at another place (${JSON.stringify(String(f!.path).slice(0, 256))}${container && fileRoot !== 'task' ? ' on the host' : ''}, `
        + `${JSON.stringify(path.slice(0, 256))}): refused (an edited image); nothing was restored`, { pid });
    }
    if (fd.mode !== dir.mode || fd.uid !== dir.uid || fd.gid !== dir.gid) {
      // Not checked by its kind yet (restore.ts checks the files after this plan): shown bounded.
      const oct = (v: unknown): string => (typeof v === 'number' ? v.toString(8) : String(v).slice(0, 32));
      throw new FerryError('EIMAGE', `image ${image}: file ${f!.id} holds the removed ${what} ${JSON.stringify(path.slice(0, 256))} of pid ${pid} `
        + `(device ${dir.dev}, inode ${dir.ino}) with another mode or owner (${oct(fd.mode)} ${String(fd.uid)}:${String(fd.gid)}, ${oct(dir.mode)} ${dir.uid}:${dir.gid}): `
        + 'refused (an edited image); nothing was restored', { pid });
    }
  }
  return plan;
}

/**
 * The directories made for the removed roots of an image (planRemovedRoots), each held open
 * (O_PATH) by ferry, its name already removed, until every process has entered it; close()
 * them then (and on failure: the caller registers that undo).
 */
export class RemovedRoots {
  private readonly held = new Map<string, number>();

  private constructor() {}

  /**
   * Makes each directory of `plan` in `root` (the tasks' root), opens it, removes its name
   * again and gives it its recorded mode and owner. Made before the tree's files are opened:
   * an open file of one of them opens the directory made here (dirOf), so that a directory
   * below a removed root that a file holds too is one directory, in its root. Whatever it holds
   * is closed if it throws.
   */
  static make(plan: ReadonlyMap<string, RemovedRoot>, root: ConfinedRoot): RemovedRoots {
    const made = new RemovedRoots();
    try {
      for (const [key, r] of plan) {
        const what = `the removed ${r.cwd ? 'working' : 'root'} directory ${r.path} of pid ${r.pids[0]}`;
        const dirs: Array<{ fd: number; what: string; dir: RemovedDirRecord; pid: number }> = [];
        // Ferry's own descriptor of the directory made, reopened to keep (never its path again).
        const hold = (d: RemovedDir): number => native().openRaw(`/proc/self/fd/${d.fd}`, O_PATH | O_DIRECTORY);
        // The directories below it by the one they are in (undefined: the root itself).
        const children = new Map<string | undefined, Array<[string, RemovedBelow]>>();
        for (const [k, b] of r.below) children.set(b.parent, [...children.get(b.parent) ?? [], [k, b]]);
        // Each is made in the one made for its parent while that still has a name (nothing can
        // be made in a removed directory), held, and its name removed before its parent's: the
        // chain of ".." from a working directory leads through them to the root, as it did.
        // Each is made in its parent's through ferry's descriptor of that (withRemovedDir's `under`).
        const makeBelow = (parent: string | undefined, at: RemovedDir): void => {
          for (const [k, b] of children.get(parent) ?? []) {
            withRemovedDir(root, `${at.path}/${b.name}`, b.what, (d) => {
              const sub = hold(d);
              made.held.set(k, sub);
              dirs.push({ fd: sub, what: b.what, dir: b.dir, pid: b.pids[0]! });
              makeBelow(k, d);
            }, { under: at });
          }
        };
        withRemovedDir(root, r.path, what, (d) => {
          const fd = hold(d);
          made.held.set(key, fd);
          dirs.push({ fd, what, dir: r.dir, pid: r.pids[0]! });
          makeBelow(undefined, d);
        });
        for (const d of dirs) {
          // Its name is removed (withRemovedDir refuses a level it could not remove).
          try {
            chownSync(`/proc/self/fd/${d.fd}`, d.dir.uid, d.dir.gid);
            chmodSync(`/proc/self/fd/${d.fd}`, d.dir.mode); // after chown, which may clear set-id bits
          } catch (err) {
            throw new FerryError('ESTATE', `cannot give ${d.what} its owner ${d.dir.uid}:${d.dir.gid} and mode ${d.dir.mode.toString(8)}: ${(err as Error).message}; nothing was restored`, { cause: err, pid: d.pid });
          }
        }
      }
    } catch (err) {
      made.close();
      throw err;
    }
    return made;
  }

  /**
   * Inside a container, where ferry's /proc/<ferry>/fd/N is not visible: the descriptor of the
   * removed root each task took from ferry while it still held ferry's pidfd (takeInto), by
   * the task's pid in the image, until enterRootDir has chrooted into it and closed it.
   */
  private readonly taken = new Map<number, number>();

  /**
   * Ferry's O_PATH descriptor of the removed directory with identity `key` ("dev:ino": a root,
   * a directory below one, a working directory held more than once), if it made one: the
   * records of an open file of it open that (files/regular.ts, FileOptions.removedDir).
   */
  dirOf(key: string): number | undefined {
    return this.held.get(key);
  }

  /** Ferry's descriptor of the removed directory `d` (a root, or a directory below one), if it holds one. */
  private fdOf(d: RemovedDirRecord | undefined): number | undefined {
    return this.held.get(identity(d) ?? '');
  }

  /**
   * Inside a container: gives the task `t` (`task` of the image) the removed directories ferry
   * holds for it, through `pidfd` (ferry's pidfd in the task, from installFds' hand until it
   * closes it): its removed working directory, which it enters at once (fchdir(2); the path
   * restoreTaskState then changes to is "."), and its removed root, kept above every number of
   * the image (`above`) until enterRootDir. Returns the working directory to pass on ("."), or
   * undefined when ferry holds none for it. A failure throws ESTATE naming the task.
   */
  takeInto(t: Tracee, task: Pick<TaskRecord, 'pid' | 'cwd' | 'cwdDeleted' | 'root' | 'rootDeleted'>, pidfd: number, above: number): string | undefined {
    const fail = (what: string, r: bigint): never => {
      throw new FerryError('ESTATE', `cannot put pid ${task.pid} back into its removed ${what} inside its container: ${errnoName(r)}; nothing was restored`, { pid: task.pid });
    };
    const root = this.fdOf(task.rootDeleted);
    if (root !== undefined) {
      const got = t.trySyscall(SYS.pidfd_getfd, pidfd, root, 0);
      if (got < 0n) fail(`root directory ${task.root ?? ''} (pidfd_getfd)`, got);
      const kept = t.trySyscall(SYS.fcntl, got, F_DUPFD_CLOEXEC, above);
      t.trySyscall(SYS.close, got);
      if (kept < 0n) fail(`root directory ${task.root ?? ''} (fcntl)`, kept);
      this.taken.set(task.pid, Number(kept));
    }
    const cwd = this.fdOf(task.cwdDeleted);
    if (cwd === undefined) return undefined;
    const got = t.trySyscall(SYS.pidfd_getfd, pidfd, cwd, 0);
    if (got < 0n) fail(`working directory ${task.cwd} (pidfd_getfd)`, got);
    const r = t.trySyscall(SYS.fchdir, got);
    t.trySyscall(SYS.close, got);
    if (r < 0n) fail(`working directory ${task.cwd} (fchdir)`, r);
    return '.';
  }

  /** The descriptor of its removed root a task of a container took (takeInto), forgotten once asked. */
  takenBy(pid: number): number | undefined {
    const fd = this.taken.get(pid);
    this.taken.delete(pid);
    return fd;
  }

  /** The path the restored task chroots into when its root was removed: the held directory. */
  rootOf(task: Pick<TaskRecord, 'rootDeleted'>): string | undefined {
    return this.pathOf(task.rootDeleted);
  }

  /**
   * The path the restored task chdirs into when its removed working directory is a removed
   * root or below one, or held more than once (the held directory), else undefined (restore/cwd.ts makes it as a
   * directory of its own).
   */
  cwdOf(task: Pick<TaskRecord, 'cwdDeleted'>): string | undefined {
    return this.pathOf(task.cwdDeleted);
  }

  private pathOf(d: RemovedDirRecord | undefined): string | undefined {
    const fd = this.held.get(identity(d) ?? '');
    return fd === undefined ? undefined : `/proc/${process.pid}/fd/${fd}`;
  }

  /** Closes every held directory (again: nothing). */
  close(): void {
    for (const fd of this.held.values()) native().closeFd(fd);
    this.held.clear();
  }
}

/**
 * Puts each thread of a rebuilt process that has a root directory of its own (ThreadRecord.fs,
 * unshared in createThreads) into it: as the process's, after the last host path, before the
 * credentials. `threads`: the process's other threads, in the image's order.
 */
export function enterThreadRootDirs(threads: readonly Tracee[], as: AddressSpace, task: TaskRecord, container = false): void {
  task.threads.slice(1).forEach((th, i) => {
    if (th.fs?.root === undefined) return;
    as.scratch.reset();
    const r = container ? chrootInside(threads[i]!, as, th.fs.root) : { call: 'chroot', r: threads[i]!.trySyscall(SYS.chroot, as.scratch.putString(th.fs.root)) };
    if (r.r < 0n) {
      throw new FerryError('ESTATE', `cannot put thread ${th.tid} of pid ${task.pid} back into its own root directory ${th.fs.root}${container ? ' inside its container' : ''}: `
        + `${r.call} failed with ${errnoName(r.r)}; make that directory exist as it was`, { pid: task.pid });
    }
  });
}

/**
 * Chroots `t` (a task of a container, not chroot'ed yet: its root is the container's) into
 * `path` resolved inside its own root, confined there (the module comment); its working
 * directory stays. Returns the first call that failed and its result, or `r` 0.
 */
function chrootInside(t: Tracee, as: AddressSpace, path: string): { call: string; r: bigint } {
  const s = as.scratch;
  const how = openHow(O_PATH | O_DIRECTORY | O_CLOEXEC, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS);
  const slash = s.putString('/'), dot = s.putString('.'), name = s.putString(path), howAt = s.put(how);
  const top = t.trySyscall(SYS.openat, AT_FDCWD, slash, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (top < 0n) return { call: 'open of its root', r: top };
  const dir = t.trySyscall(SYS.openat2, top, name, howAt, OPEN_HOW_SIZE);
  t.trySyscall(SYS.close, top);
  if (dir < 0n) return { call: 'openat2', r: dir };
  const cwd = t.trySyscall(SYS.openat, AT_FDCWD, dot, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (cwd < 0n) {
    t.trySyscall(SYS.close, dir);
    return { call: 'open of its working directory', r: cwd };
  }
  return chrootAt(t, dot, dir, cwd);
}

/**
 * fchdir(2) of `t` to its descriptor `dir`, chroot(".") (`dot` its address), then fchdir(2)
 * back to `cwd`, its working directory held open, chroot'ed or not; both closed. Returns the
 * first call that failed and its result, or `r` 0.
 */
function chrootAt(t: Tracee, dot: bigint, dir: bigint | number, cwd: bigint): { call: string; r: bigint } {
  let out = { call: 'fchdir', r: t.trySyscall(SYS.fchdir, dir) };
  if (out.r === 0n) out = { call: 'chroot', r: t.trySyscall(SYS.chroot, dot) };
  const back = t.trySyscall(SYS.fchdir, cwd);
  t.trySyscall(SYS.close, dir);
  t.trySyscall(SYS.close, cwd);
  if (out.r === 0n && back < 0n) out = { call: 'fchdir back to its working directory', r: back };
  return out;
}

/**
 * Chroots `t` into the directory its descriptor `fd` is (a removed root ferry made inside its
 * container and handed it: RemovedRoots.takeInto): fchdir(2) to it, chroot("."), fchdir(2)
 * back to its working directory (held open meanwhile); `fd` and that one closed. Returns the
 * first call that failed and its result, or `r` 0.
 */
function chrootTaken(t: Tracee, as: AddressSpace, fd: number): { call: string; r: bigint } {
  const dot = as.scratch.putString('.');
  const cwd = t.trySyscall(SYS.openat, AT_FDCWD, dot, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (cwd < 0n) {
    t.trySyscall(SYS.close, fd);
    return { call: 'open of its working directory', r: cwd };
  }
  return chrootAt(t, dot, fd, cwd);
}

/**
 * Puts the rebuilt process `t` into its recorded root directory (`sharesFs`: it has it
 * already); a removed one is the directory `removed` holds for it.
 */
export function enterRootDir(t: Tracee, as: AddressSpace, task: TaskRecord, sharesFs: boolean, removed: RemovedRoots, container = false): void {
  // A removed root taken into a container's task (RemovedRoots.takeInto): entered, then closed.
  const taken = container ? removed.takenBy(task.pid) : undefined;
  if (task.root === undefined || sharesFs) {
    if (taken !== undefined) t.trySyscall(SYS.close, taken);
    return;
  }
  as.scratch.reset();
  if (taken !== undefined) {
    const r = chrootTaken(t, as, taken);
    if (r.r < 0n) {
      throw new FerryError('ESTATE', `cannot put pid ${task.pid} back into its removed root directory ${task.root} inside its container: ${r.call} failed with ${errnoName(r.r)}`, { pid: task.pid });
    }
    return;
  }
  if (container) {
    const r = chrootInside(t, as, task.root);
    if (r.r < 0n) {
      throw new FerryError('ESTATE', `cannot put pid ${task.pid} back into its root directory ${task.root} inside its container: ${r.call} failed with ${errnoName(r.r)}; `
        + 'make that directory exist in the container\'s root as it was', { pid: task.pid });
    }
    return;
  }
  const held = removed.rootOf(task);
  const r = t.trySyscall(SYS.chroot, as.scratch.putString(held ?? task.root));
  if (r < 0n) {
    const name = errnoName(r);
    throw new FerryError('ESTATE', held !== undefined
      ? `cannot put pid ${task.pid} back into its removed root directory ${task.root} (held by ferry as ${held}): chroot failed with ${name}`
      : `cannot put pid ${task.pid} back into its root directory ${task.root}: chroot failed with ${name}; make that directory exist as it was`, { pid: task.pid });
  }
}
