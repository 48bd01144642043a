/**
 * inotify instances (inotify(7): `anon_inode:inotify`) with every watch: its descriptor, its
 * mask and the inode it watches.
 *
 * /proc/PID/fdinfo lists each watch as `inotify wd:HEX ino:HEX sdev:HEX mask:HEX
 * ignored_mask:0 fhandle-bytes:HEX fhandle-type:HEX f_handle:HEX` (every field hex; the mask
 * includes IN_ONESHOT and IN_EXCL_UNLINK). The inode is found again from its file handle with
 * open_by_handle_at(2), given a mount of the file system `sdev` names (from the process's
 * mountinfo), and its path is what /proc/self/fd says of the result, checked against `ino` and
 * `sdev` with fstat. For a process of a container (another mount namespace), that path is from
 * the root of the container's mount namespace (ferry's root is none of its mounts) and is
 * looked up again there: the record is then the container's (`root: 'task'`), and restore
 * resolves its watches in the restored container's root (FileKind.pathsInTask: in any
 * container's image, whatever the record says, never on the host). A watched inode with no
 * path (a file removed but held open, a memfd) is found among the tree's descriptors by device
 * and inode, and the watch names that file of the image instead; one the tree does not hold
 * (held by a mapping only, or from outside) is refused. Restore adds such a watch through
 * /proc/self/fd/N of the restored file, once that file is open. A watched directory with no
 * path that is a process's working directory (it was removed while the process was in it, and
 * the watch stays while the directory lives) names that process instead (`cwd`): restore makes
 * the removed working directory only for the moment of the process's chdir (restore/cwd.ts),
 * so the watch is added once every process is rebuilt, through /proc/PID/cwd of the restored
 * process (afterRebuild), and the instance's next descriptor is then set back to follow the
 * newest watch's. One that is a process's root directory (chroot(2)), removed, and no process's
 * working directory, names that process so (`root`) and is added the same way, through
 * /proc/PID/root.
 *
 * Restore: inotify_init1 in the controller, then for each watch, oldest first,
 * ioctl(INOTIFY_IOC_SETNEXTWD, wd) right before inotify_add_watch(/proc/self/fd/N, mask), N an
 * O_PATH descriptor of the path resolved inside the root (confined.ts, its last component not
 * followed: the path names the watched inode itself, never a symlink to follow): the kernel hands out
 * the lowest free descriptor at or above the one asked, so every watch gets its own descriptor
 * at once, however large. fdinfo lists watches newest first (each new mark goes to the head of
 * the group's list), so the record keeps them oldest first; adding them in that order leaves
 * the instance's next descriptor right after the newest watch's, as in the original unless the
 * application set it itself since. Adding them in that order also gives the same fdinfo order.
 *
 * Queued events cannot be read without consuming them, and no call puts events back into an
 * instance: an instance with events queued (FIONREAD) is refused, naming the byte count, unless
 * --drop-queued-events leaves them out with a warning (the restored instance starts empty; a
 * copy left running keeps its queue, as nothing read it).
 *
 * The helpers that turn an fdinfo handle into a path are shared with fanotify.ts.
 */
import { fstatSync, readlinkSync, statSync } from 'node:fs';
import { errnoCode, FerryError } from '../errors.js';
import type { FileRecord } from '../image/records.js';
import { native } from '../native/binding.js';
import { O_CLOEXEC, O_DIRECTORY, O_NONBLOCK, O_PATH } from '../proc/fcntl.js';
import { readProcText } from '../proc/read.js';
import { rootOf, statIn, viaFd, type ConfinedRoot } from './confined.js';
import { nsPid } from './procfile.js';
import { NOT_YET, type DumpContext, type FdDesc, type FileKind, type OpenContext } from './types.js';

/** inotify(7) flags of inotify_add_watch's mask. */
const IN_EXCL_UNLINK = 0x04000000, IN_ONESHOT = 0x80000000;
/** IN_ALL_EVENTS: every event bit a watch can ask for. */
const IN_ALL_EVENTS = 0xfff;
const WD_MAX = 0x7fffffff;
const O_RDONLY = 0;
/** Largest number of watches accepted from an image (max_user_watches is far lower in practice). */
const MAX_WATCHES = 1 << 22;
/** Largest pid (PID_MAX_LIMIT). */
const MAX_PID = 4194304;

/** One watch. */
export interface InotifyWatch {
  /** Watch descriptor (inotify_add_watch's result). */
  wd: number;
  /** Event mask with IN_ONESHOT / IN_EXCL_UNLINK. */
  mask: number;
  /** Path of the watched inode at checkpoint. */
  path: string;
  /** The inode: its file system (`major:minor`) and number, as they were at checkpoint. */
  dev: string;
  ino: string;
  /**
   * The file of the image the watched inode is, when no path leads to it (a file removed, or
   * a memfd, that the tree holds open): watched again through that file's restored
   * descriptor; `path` is then only what /proc showed (`/dir/name (deleted)`).
   */
  file?: number;
  /**
   * The process (its pid in the tree) whose working directory the watched inode is, when it is
   * a removed directory no descriptor holds: watched again through that process's restored
   * working directory, once it is in it; `path` is then what /proc showed (`/dir (deleted)`).
   */
  cwd?: number;
  /**
   * The process (its pid in the tree) whose root directory (chroot(2)) the watched inode is,
   * when it is a removed directory no descriptor holds and no process's working directory:
   * watched again through that process's restored root, once it is in it (restore/root-dir.ts
   * makes a removed root); `path` is then what /proc showed. Never with `cwd` or `file`.
   */
  root?: number;
}

export interface InotifyRecord extends FileRecord {
  kind: 'inotify';
  /** Status flags of the open file (O_NONBLOCK is IN_NONBLOCK). */
  flags: number;
  /** Watches, oldest first (the order they were added in). */
  watches: InotifyWatch[];
}

// ---- helpers shared with fanotify.ts ----

/** `key:value key:value …` fields of an fsnotify fdinfo line. */
export function fdinfoFields(line: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const tok of line.trim().split(/\s+/)) {
    const i = tok.indexOf(':');
    if (i > 0) out.set(tok.slice(0, i), tok.slice(i + 1));
  }
  return out;
}

/**
 * The lines of an fsnotify fdinfo that start with `prefix` (`inotify`, `fanotify`), as
 * `key:value key:value …` without the prefix. (parseFdinfo files `inotify wd:1 …` under the
 * key `inotify wd`: the first colon follows the first field's name.)
 */
export function fsnotifyLines(d: FdDesc, prefix: string): string[] {
  const out: string[] = [];
  for (const [key, values] of d.fdinfo.lines) {
    if (!key.startsWith(`${prefix} `)) continue;
    for (const v of values) out.push(`${key.slice(prefix.length + 1)}:${v}`);
  }
  return out;
}

/** A hex field of an fdinfo line, or an error naming it. */
export function hexField(f: Map<string, string>, key: string, what: string): bigint {
  const v = f.get(key);
  if (v === undefined || !/^[0-9a-f]+$/i.test(v)) throw new Error(`${what} has no valid '${key}' field`);
  return BigInt(`0x${v}`);
}

/** The kernel's internal dev_t (MAJOR << 20 | MINOR), as fdinfo's sdev prints it, as `major:minor`. */
export function kernelDev(sdev: bigint): string {
  return `${sdev >> 20n}:${sdev & 0xfffffn}`;
}

/** stat's dev_t (glibc encoding) as `major:minor`. */
export function userDev(dev: bigint): string {
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn);
  const minor = (dev & 0xffn) | ((dev >> 12n) & ~0xffn);
  return `${major}:${minor}`;
}

/** One line of /proc/PID/mountinfo (proc(5)). */
export interface MountInfo {
  id: number;
  dev: string;
  /** Root of the mount within its file system. */
  root: string;
  /** Mount point, relative to the process's root. */
  point: string;
}

const unescape = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

/** The mounts a process sees. */
export function mountsOf(pid: number): MountInfo[] {
  return readProcText(pid, 'mountinfo').split('\n').filter(Boolean).map((l) => {
    const f = l.split(' ');
    return { id: Number(f[0]), dev: f[2] ?? '', root: unescape(f[3] ?? ''), point: unescape(f[4] ?? '') };
  });
}

/**
 * Opens a directory of file system `dev` as the process sees it, for open_by_handle_at: a
 * mount of its whole file system if there is one. (open_by_handle_at refuses an O_PATH
 * mount_fd with EBADF: the directory is opened for reading.) Cached in `cache`,
 * whose descriptors the caller closes.
 */
export function mountFdFor(pid: number, dev: string, cache: Map<string, number>): number | undefined {
  const key = `${pid}:${dev}`;
  const have = cache.get(key);
  if (have !== undefined) return have;
  const mounts = mountsOf(pid).filter((m) => m.dev === dev).sort((a, b) => Number(b.root === '/') - Number(a.root === '/'));
  for (const m of mounts) {
    try {
      const fd = native().openRaw(`/proc/${pid}/root${m.point}`, O_RDONLY | O_DIRECTORY);
      cache.set(key, fd);
      return fd;
    } catch { /* try the next mount */ }
  }
  return undefined;
}

/** Closes the descriptors of a mount cache. */
export function closeMounts(cache: Map<string, number>): void {
  for (const fd of cache.values()) native().closeFd(fd);
  cache.clear();
}

/** Where an fsnotify mark's inode is: its path, or why there is none. */
export type Located = { path: string; dev: string; ino: string } | { why: string };

/**
 * Finds the path of the inode an fsnotify fdinfo line names (`ino`, `sdev`, `fhandle-bytes`,
 * `fhandle-type`, `f_handle`) with open_by_handle_at(2). `nsRoot`: the root of the task's
 * mount namespace when it is not ferry's (a container's, DumpContext.mountNsRoot): the inode
 * is opened through a mount of that namespace, whose paths /proc shows from its root (ferry's
 * root is none of its mounts), so the path is looked up again there, as restore resolves it
 * inside the container's root, and never on the host.
 */
export function locateInode(pid: number, f: Map<string, string>, what: string, cache: Map<string, number>,
  nsRoot?: ConfinedRoot): Located {
  const ino = hexField(f, 'ino', what);
  const dev = kernelDev(hexField(f, 'sdev', what));
  const where = `inode ${ino} on device ${dev}`;
  const bytes = f.get('f_handle');
  if (!f.has('fhandle-bytes') || bytes === undefined || bytes.length === 0 || !/^([0-9a-f]{2})+$/i.test(bytes)) {
    return { why: `the watched ${where} has no file handle: its file system cannot be looked up by handle` };
  }
  const type = Number(hexField(f, 'fhandle-type', what));
  const mfd = mountFdFor(pid, dev, cache);
  if (mfd === undefined) return { why: `the watched ${where} is on a file system no mount of pid ${pid} shows` };
  const n = native();
  let fd: number;
  try {
    fd = n.openByHandle(mfd, type, Buffer.from(bytes, 'hex'), O_PATH);
  } catch (err) {
    if (errnoCode(err) === 'ESTALE') return { why: `the watched ${where} was deleted` };
    throw err;
  }
  try {
    const path = readlinkSync(`/proc/self/fd/${fd}`);
    if (path.endsWith(' (deleted)')) return { why: `the watched file ${path} is deleted` };
    const st = fstatSync(fd, { bigint: true });
    if (st.ino !== ino || userDev(st.dev) !== dev) return { why: `no path leads to the watched ${where}` };
    // The path must lead back to the same inode from the controller (not a disconnected name).
    if (nsRoot !== undefined) {
      // Its last component not followed, as restore resolves it (the watched inode itself).
      let again;
      try {
        again = statIn(nsRoot, path, what, true);
      } catch (err) {
        if (!(err instanceof FerryError)) throw err;
        return { why: `no path inside its container leads to the watched ${where} (${path}: ${err.message})` };
      }
      if (again === undefined) return { why: `no path leads to the watched ${where} (${path} does not exist in its container)` };
      if (again.ino !== ino || again.dev !== st.dev) return { why: `no path leads to the watched ${where} (${path} is another file in its container)` };
      return { path, dev, ino: ino.toString() };
    }
    try {
      const again = n.openRaw(path, O_PATH);
      try {
        const st2 = fstatSync(again, { bigint: true });
        if (st2.ino !== ino || st2.dev !== st.dev) return { why: `no path leads to the watched ${where} (${path} is another file)` };
      } finally {
        n.closeFd(again);
      }
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return { why: `no path leads to the watched ${where} (${path} does not exist)` };
      throw err;
    }
    return { path, dev, ino: ino.toString() };
  } finally {
    n.closeFd(fd);
  }
}

/** Bytes of events queued in an inotify or fanotify instance (FIONREAD), read from a copy. */
export function queuedBytes(d: FdDesc, ctx: DumpContext): number {
  return native().pipeUnread(ctx.grab(d));
}

/**
 * Events queued in an inotify or fanotify instance cannot be read without consuming them (the
 * original, left running, would lose them), nor queued again on restore. They are refused
 * with `refuse`, or with --drop-queued-events left out of the image with a warning naming the
 * descriptor (`held`: why even the flag does not drop them).
 */
export function dropQueued(d: FdDesc, ctx: DumpContext, refuse: (why: string) => FerryError, held?: string): void {
  const queued = queuedBytes(d, ctx);
  if (queued === 0) return;
  const why = `${queued} bytes of events are queued; they cannot be read without consuming them nor queued again on restore`;
  if (held !== undefined) throw refuse(`${why}, and ${held}: let the application read them, then checkpoint again`);
  if (ctx.options.dropQueuedEvents !== true) {
    throw refuse(`${why}: let the application read them, then checkpoint again, or drop them with --drop-queued-events`);
  }
  ctx.warn(`pid ${d.pid} fd ${d.fd} (${d.link}): ${queued} bytes of queued events dropped (--drop-queued-events); the restored instance starts with none`);
}

// ---- inotify ----

const unsupported = (d: FdDesc, why: string): FerryError =>
  new FerryError('EUNSUPPORTED', `unsupported file: pid ${d.pid} fd ${d.fd} -> ${d.link} (${why})`);

function dumpInotify(d: FdDesc, ctx: DumpContext): Omit<InotifyRecord, 'id' | 'kind'> {
  dropQueued(d, ctx, (why) => unsupported(d, why));
  const watches: InotifyWatch[] = [];
  const mounts = new Map<string, number>();
  try {
    for (const line of fsnotifyLines(d, 'inotify')) {
      const f = fdinfoFields(line);
      const what = `fdinfo line 'inotify ${line}'`;
      const wd = Number(hexField(f, 'wd', what));
      const mask = Number(hexField(f, 'mask', what));
      const where = locateInode(d.pid, f, what, mounts, ctx.mountNsRoot(d.pid));
      if ('why' in where) {
        // No path leads to it (deleted, or a memfd): a file the tree holds is watched again
        // through that file's restored descriptor.
        const dev = kernelDev(hexField(f, 'sdev', what)), ino = hexField(f, 'ino', what);
        const held = heldByTree(ctx, dev, ino) ?? dirOfTree(ctx, 'cwd', dev, ino) ?? dirOfTree(ctx, 'root', dev, ino);
        if (!held) throw unsupported(d, `watch ${wd}: ${where.why}, and no process of the tree holds it open, is in it or has it as its root`);
        if (!held.path.startsWith('/')) throw unsupported(d, `watch ${wd} is on ${held.path}, no file of a file system, which cannot be watched again yet; remove the watch or run the process without it`);
        watches.push({ wd, mask, ...held });
        continue;
      }
      watches.push({ wd, mask, ...where });
    }
  } finally {
    closeMounts(mounts);
  }
  watches.reverse();
  return { flags: d.fdinfo.flags & ~O_CLOEXEC, watches };
}

/**
 * Whether every file of the image that watches or marks are made through (their restored
 * descriptors: heldByTree at dump) is open already; restore's order waits for them otherwise
 * (NOT_YET). Refuses one the image does not hold. `what` names the watch or mark.
 */
export function heldFilesOpen(ctx: OpenContext, through: Iterable<{ file?: number | undefined; what: string }>): boolean {
  let ready = true;
  for (const { file, what } of through) {
    if (file === undefined) continue;
    if (ctx.record(file) === undefined) throw new FerryError('EIMAGE', `image: ${what} is made through file ${file}, which the image does not hold`);
    if (ctx.opened(file) === undefined) ready = false;
  }
  return ready;
}

/**
 * The image file of a descriptor of the tree whose inode is `dev`:`ino` (`major:minor` and
 * number), with its path and inode as a watch records them (a path that does not start with
 * "/" is an inode of no mounted file system, a pidfd's, which callers refuse: restore makes
 * a pidfd only once the tree exists, after the watches), or undefined when the tree holds
 * no such descriptor. Every descriptor of the tree is looked at once per checkpoint, only when
 * a watched inode has no path. (fanotify.ts finds its inode marks' files so too.)
 */
export function heldByTree(ctx: DumpContext, dev: string, ino: bigint): Pick<InotifyWatch, 'path' | 'dev' | 'ino' | 'file'> | undefined {
  const held = ctx.scratch<{ file: number; path: string }>('inotify-held');
  if (held.size === 0) {
    held.set('', { file: -1, path: '' }); // read: not again, even when the tree holds nothing
    for (const { pid, fd, stat, link } of ctx.descriptors) {
      const file = ctx.fileIdOf(pid, fd);
      const key = `${userDev(stat.dev)}:${stat.ino}`;
      if (file !== undefined && !held.has(key)) held.set(key, { file, path: link });
    }
  }
  const h = held.get(`${dev}:${ino}`);
  return h && { path: h.path, dev, ino: ino.toString(), file: h.file };
}

/**
 * The watch of a removed directory that is the working directory (`which` 'cwd') or the root
 * directory ('root') of a process of the tree (its pid in the tree, in the field of that name),
 * with its path and inode as a watch records them, or undefined. Every process's working or
 * root directory is looked at once per checkpoint, only when a watched inode has no path and no
 * descriptor of the tree holds it (nor, for a root, is a working directory).
 */
function dirOfTree(ctx: DumpContext, which: 'cwd' | 'root', dev: string, ino: bigint): Pick<InotifyWatch, 'path' | 'dev' | 'ino' | 'cwd' | 'root'> | undefined {
  const dirs = ctx.scratch<{ pid: number; path: string }>(`inotify-${which}`);
  if (dirs.size === 0) {
    dirs.set('', { pid: -1, path: '' }); // read: not again
    for (const pid of ctx.pids) {
      try {
        const path = readlinkSync(`/proc/${pid}/${which}`);
        if (!path.startsWith('/') || !path.endsWith(' (deleted)')) continue; // a path leads to it: not this one
        const st = statSync(`/proc/${pid}/${which}`, { bigint: true });
        const key = `${userDev(st.dev)}:${st.ino}`;
        if (!dirs.has(key)) dirs.set(key, { pid: nsPid(pid), path });
      } catch { /* gone meanwhile: not the tree's (it is stopped) */ }
    }
  }
  const c = dirs.get(`${dev}:${ino}`);
  return c && { path: c.path, dev, ino: ino.toString(), [which]: c.pid };
}

function checkRecord(rec: InotifyRecord): void {
  const bad = (why: string): never => {
    throw new FerryError('EIMAGE', `image: inotify (file ${rec.id}) ${why}`);
  };
  if (!Number.isSafeInteger(rec.flags)) bad('has invalid flags');
  if (!Array.isArray(rec.watches) || rec.watches.length > MAX_WATCHES) bad('has invalid watches');
  const seen = new Set<number>();
  for (const w of rec.watches) {
    if (typeof w !== 'object' || w === null || !Number.isSafeInteger(w.wd) || w.wd < 1 || w.wd > WD_MAX || seen.has(w.wd)
      || !Number.isSafeInteger(w.mask) || (w.mask & ~(IN_ALL_EVENTS | IN_ONESHOT | IN_EXCL_UNLINK)) !== 0
      || typeof w.path !== 'string' || !w.path.startsWith('/') || w.path.includes('\0')) {
      // Shown cut short: the item is the image's, of any size.
      bad(`has an invalid watch ${String(JSON.stringify(w)).slice(0, 120)}`);
    }
    seen.add(w.wd);
    if (w.path.length > 4096) bad(`has a watch on a path longer than 4096 bytes`);
    if (w.cwd !== undefined) {
      // Watched through a restored process's working directory (afterRebuild): no path is used.
      if (!Number.isSafeInteger(w.cwd) || w.cwd < 1 || w.cwd > MAX_PID || w.file !== undefined || w.root !== undefined) {
        bad(`has a watch ${w.wd} on the working directory of an invalid process ${String(w.cwd)}`);
      }
      continue;
    }
    if (w.root !== undefined) {
      // Watched through a restored process's root directory (afterRebuild): no path is used.
      if (!Number.isSafeInteger(w.root) || w.root < 1 || w.root > MAX_PID || w.file !== undefined) bad(`has a watch ${w.wd} on the root directory of an invalid process ${String(w.root)}`);
      continue;
    }
    if (w.file !== undefined) {
      // Watched through another file of the image (its restored descriptor): no path is used.
      if (!Number.isSafeInteger(w.file) || w.file < 0 || w.file === rec.id) bad(`has a watch ${w.wd} on an invalid file ${String(w.file)}`);
      continue;
    }
    // Resolved inside the record's root (the host's, a container's; confined.ts, no magic link), as open() will.
    if (!statIn(rootOf(rec), w.path, `inotify watch ${w.wd} (file ${rec.id} of the image)`, true)) {
      throw new FerryError('ENOENT', `inotify watch ${w.wd} (file ${rec.id} of the image) watched ${w.path}, which no longer exists`);
    }
  }
}

function openInotify(rec: InotifyRecord, ctx: OpenContext): number | typeof NOT_YET {
  const n = native();
  const root = rootOf(rec);
  if (!heldFilesOpen(ctx, rec.watches.map((w) => ({ file: w.file, what: `inotify (file ${rec.id}) watch ${w.wd}` })))) return NOT_YET;
  const fd = n.inotifyInit1(rec.flags & O_NONBLOCK);
  try {
    for (const w of rec.watches) {
      if (w.cwd !== undefined || w.root !== undefined) continue; // once its process is in it (afterRebuild)
      const held = w.file === undefined ? undefined : ctx.opened(w.file);
      let got: number;
      try {
        if (held !== undefined) {
          // /proc/self/fd/N leads to the restored file's inode itself, which has no name.
          n.inotifySetNextWd(fd, w.wd);
          got = n.inotifyAddWatch(fd, `/proc/self/fd/${held}`, w.mask >>> 0);
        } else {
          // The watched path is resolved confined to an O_PATH descriptor of the inode itself
          // (its last component not followed, as IN_DONT_FOLLOW did), and the watch is added
          // through /proc/self/fd/N, which leads to that inode and nowhere else (so without
          // IN_DONT_FOLLOW, which would watch the /proc link itself).
          got = viaFd(root, w.path, `inotify watch ${w.wd} (file ${rec.id} of the image)`, true, (at) => {
            n.inotifySetNextWd(fd, w.wd);
            return n.inotifyAddWatch(fd, at, w.mask >>> 0);
          });
        }
      } catch (err) {
        if (err instanceof FerryError) throw err;
        const why = errnoCode(err) === 'ENOENT' ? 'no longer exists' : `cannot be watched (${(err as Error).message})`;
        throw new FerryError('EOPEN', `cannot restore inotify watch ${w.wd} (file ${rec.id}): ${w.path} ${why}`, { cause: err });
      }
      if (got !== w.wd) {
        throw new FerryError('EOPEN', `cannot restore inotify watch ${w.wd} on ${w.path} (file ${rec.id}): the kernel gave descriptor ${got}`
          + (got < w.wd ? ' (the path is the same inode as another watch)' : ''));
      }
    }
  } catch (err) {
    n.closeFd(fd);
    throw err;
  }
  return fd;
}

/**
 * Adds the watches on removed working and root directories (`cwd`, `root`), once every process
 * is rebuilt, each through /proc/PID/cwd or /proc/PID/root of its restored process, which leads
 * to that directory: it has no name (its chdir was to a name made for the moment and removed at
 * once, restore/cwd.ts; a removed root is made, entered and removed so too, restore/root-dir.ts).
 * Then the instance's next descriptor follows the newest watch's again, as openInotify left it.
 */
function watchRemovedDirs(rec: InotifyRecord, fd: number, hostPid: (pid: number) => number | undefined): void {
  const n = native();
  const late = (w: InotifyWatch): boolean => w.cwd !== undefined || w.root !== undefined;
  if (!rec.watches.some(late)) return;
  for (const w of rec.watches.filter(late)) {
    const which = w.cwd !== undefined ? 'cwd' : 'root';
    const of = w.cwd ?? w.root!;
    const what = `inotify watch ${w.wd} (file ${rec.id}) on the ${which === 'cwd' ? 'working' : 'root'} directory of pid ${of}`;
    const pid = hostPid(of);
    if (pid === undefined) throw new FerryError('EIMAGE', `image: ${what}: the image restores no such process`);
    const at = `/proc/${pid}/${which}`;
    let got: number;
    try {
      // Only a removed directory, as recorded: not any directory a process of the image is in.
      if (!readlinkSync(at).endsWith(' (deleted)') || !statSync(at).isDirectory()) {
        throw new FerryError('EIMAGE', `image: ${what}: it was not removed (${w.path})`);
      }
      n.inotifySetNextWd(fd, w.wd);
      got = n.inotifyAddWatch(fd, at, w.mask >>> 0);
    } catch (err) {
      if (err instanceof FerryError) throw err;
      throw new FerryError('EOPEN', `cannot restore ${what}: ${(err as Error).message}`, { cause: err });
    }
    if (got !== w.wd) throw new FerryError('EOPEN', `cannot restore ${what}: the kernel gave descriptor ${got}`);
  }
  const newest = rec.watches.at(-1)!;
  if (!late(newest)) n.inotifySetNextWd(fd, newest.wd + 1);
}

export const inotify: FileKind<InotifyRecord> = {
  kind: 'inotify',
  pathsInTask: true,

  matches(fd: FdDesc): boolean {
    return fd.link === 'anon_inode:inotify';
  },

  key(): string {
    // Every inotify instance is a file of the one anonymous inode: kcmp tells them apart.
    return 'inotify';
  },

  dump(fd: FdDesc, ctx: DumpContext): Omit<InotifyRecord, 'id' | 'kind'> {
    try {
      return dumpInotify(fd, ctx);
    } catch (err) {
      if (err instanceof FerryError) throw err;
      throw new FerryError('EDUMP', `checkpoint: inotify fd ${fd.fd} of pid ${fd.pid}: ${(err as Error).message}`, { cause: err });
    }
  },

  check: checkRecord,

  open(rec: InotifyRecord, ctx: OpenContext): number | typeof NOT_YET {
    try {
      return openInotify(rec, ctx);
    } catch (err) {
      if (err instanceof FerryError) throw err;
      throw new FerryError('EOPEN', `cannot restore inotify (file ${rec.id}): ${(err as Error).message}`, { cause: err });
    }
  },

  afterRebuild: watchRemovedDirs,
};
