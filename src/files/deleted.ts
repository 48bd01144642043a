/**
 * Deleted-but-open regular files ("ghost" files: the link reads `/dir/name (deleted)` and the
 * file has no name left). Nothing outside the process can reach the contents any more, so
 * they are stored in the image (an entry of their own, only the data extents: holes stay
 * holes) up to `files.deleted_max_bytes`; a bigger file is refused before the tree is
 * touched, naming pid, fd, path and size.
 *
 * On restore the file is created again in the same directory with the same contents, size,
 * mode and owner, and unlinked at once: under its old name when that name is free (so
 * /proc/PID/fd shows the same `path (deleted)`), else through a detached clone of a directory
 * made beside it, which shows that path too (createShadowed), else as an O_TMPFILE file. Every open file of
 * one ghost (the same inode opened twice) shares the one new inode: the first record opened
 * creates it, the others open it again through /proc/self/fd. The helpers that read and write
 * contents are also used by memfd.ts.
 */
import { imagePos } from '../proc/fdinfo.js';
import { fchmodSync, fchownSync, fstatSync, ftruncateSync, readSync, writeSync } from 'node:fs';
import { basename, dirname, posix } from 'node:path';
import { DEFAULTS } from '../config/config.js';
import { describeCause, errnoCode, FerryError } from '../errors.js';
import type { FileRecord, TaskRecord } from '../image/records.js';
import { native } from '../native/binding.js';
import { O_ACCMODE, O_APPEND, O_CLOEXEC, O_DIRECT, O_DIRECTORY, O_LARGEFILE, O_NOATIME, O_NONBLOCK, O_PATH } from '../proc/fcntl.js';
import { NAME_RESOLVE, Parent, placeOf, statIn, withParent, withRemovedDir, type ConfinedRoot } from './confined.js';
import type { DumpContext, FdDesc, FileKind, FileOptions, OpenContext } from './types.js';
import { makeTransient, transientMade, type TransientMade } from './transient.js';

const O_RDONLY = 0, O_RDWR = 2, O_CREAT = 0o100, O_EXCL = 0o200, O_NOFOLLOW = 0o400000;
const O_TMPFILE = 0o20000000 | O_DIRECTORY;
const SEEK_SET = 0, SEEK_DATA = 3, SEEK_HOLE = 4;
/** Flags the file is reopened with are kept; these are per-creation only. */
const SETFL_FLAGS = O_APPEND | O_NONBLOCK | O_DIRECT | O_NOATIME;
const CHUNK = 1 << 20;
/** S_ISUID | S_ISGID. */
const SETID_BITS = 0o6000;

// ---- contents: data extents, stored as one image entry ----

/** Where a file's data is: `[offset, length]` extents, in order, and the entry holding them back to back. */
export interface Contents {
  /** Size of the file (st_size). */
  size: number;
  extents: Array<[number, number]>;
  /** Image entry with the bytes of every extent, back to back; '' when there are none. */
  data: string;
}

/**
 * The size limit of stored contents. Until the engine hands the configuration to modules,
 * `DumpContext.options` may carry `deletedMaxBytes`; otherwise the default of
 * `files.deleted_max_bytes` applies.
 */
export function contentsLimit(options?: object): number {
  const v = (options as { deletedMaxBytes?: unknown } | undefined)?.deletedMaxBytes;
  return typeof v === 'number' && v >= 0 ? v : DEFAULTS.files.deletedMaxBytes;
}

/** Bytes a file's contents would take in the image, at most: its size, or its blocks if fewer. */
export function storedEstimate(st: { size: bigint; blocks: bigint }): number {
  const blocks = st.blocks * 512n;
  return Number(blocks < st.size ? blocks : st.size);
}

/** The refusal for contents bigger than the limit. */
export function tooBig(d: FdDesc, what: string, bytes: number, limit: number): FerryError {
  return new FerryError('EUNSUPPORTED', `unsupported file: pid ${d.pid} fd ${d.fd} -> ${d.link} (${what} holds ${bytes} bytes, `
    + `more than files.deleted_max_bytes = ${limit}; raise it in the config file to checkpoint it)`);
}

/**
 * Per checkpoint: contents already stored, by file identity, so open files of one inode store
 * it once. Keyed by the checkpoint's options object, the one thing every DumpContext of one
 * checkpoint shares.
 */
const storedByRun = new WeakMap<object, Map<string, Contents>>();

/**
 * Reads the data extents of the file behind `d` (SEEK_DATA/SEEK_HOLE through an open file of
 * its own, so the process's offset does not move) and stores them as one image entry, once
 * per `identity` per checkpoint.
 */
export function dumpContents(d: FdDesc, ctx: DumpContext, identity: string, what: string): Contents {
  let stored = storedByRun.get(ctx.options);
  if (!stored) storedByRun.set(ctx.options, (stored = new Map()));
  const have = stored.get(identity);
  if (have) return have;
  const n = native();
  const fd = n.openRaw(`/proc/self/fd/${ctx.grab(d)}`, O_RDONLY);
  try {
    const size = Number(fstatSync(fd, { bigint: true }).size);
    const extents: Array<[number, number]> = [];
    let total = 0;
    for (let off = 0; off < size;) {
      let start: number;
      try {
        start = n.lseek(fd, off, SEEK_DATA);
      } catch (err) {
        if (errnoCode(err) === 'ENXIO') break; // only a hole up to the end
        throw err;
      }
      if (start >= size) break;
      const end = Math.min(n.lseek(fd, start, SEEK_HOLE), size);
      extents.push([start, end - start]);
      total += end - start;
      off = end;
    }
    const limit = contentsLimit(ctx.options);
    if (total > limit) throw tooBig(d, what, total, limit);
    const buf = Buffer.allocUnsafe(total);
    let at = 0;
    for (const [start, len] of extents) {
      for (let done = 0; done < len;) {
        const k = readSync(fd, buf, at, Math.min(CHUNK, len - done), start + done);
        if (k <= 0) throw new Error(`${what} shrank while being read (at byte ${start + done})`);
        done += k;
        at += k;
      }
    }
    const c: Contents = { size, extents, data: total > 0 ? ctx.blob('contents', buf) : '' };
    stored.set(identity, c);
    return c;
  } finally {
    n.closeFd(fd);
  }
}

/** Writes stored contents into `fd` (a new, empty file open for writing) and sets its size. */
export function writeContents(fd: number, c: Contents, ctx: OpenContext): void {
  const data = c.data === '' ? Buffer.alloc(0) : ctx.blob(c.data);
  // The entry holds the extents' bytes back to back: exactly that many (the image is input).
  const stored = c.extents.reduce((sum, [, len]) => sum + len, 0);
  if (data.length !== stored) {
    throw new FerryError('EIMAGE', `image entry ${c.data} holds ${data.length} bytes, but its record's extents need ${stored}: refused (an edited image)`);
  }
  let at = 0;
  for (const [start, len] of c.extents) {
    for (let done = 0; done < len;) {
      const k = writeSync(fd, data, at, Math.min(CHUNK, len - done), start + done);
      done += k;
      at += k;
    }
  }
  ftruncateSync(fd, c.size);
}

/** Shape checks of stored contents (the image is input). */
export function checkContents(c: Contents, bad: (why: string) => never): void {
  if (!Number.isSafeInteger(c.size) || c.size < 0) bad('has an invalid size');
  if (!Array.isArray(c.extents) || typeof c.data !== 'string') bad('has invalid contents');
  let end = 0;
  for (const e of c.extents) {
    if (!Array.isArray(e) || e.length !== 2 || !Number.isSafeInteger(e[0]) || !Number.isSafeInteger(e[1])
      || e[0] < end || e[1] <= 0 || e[0] + e[1] > c.size) bad('has invalid extents');
    end = e[0] + e[1];
  }
  if ((c.extents.length > 0) !== (c.data !== '')) bad('has invalid contents');
}

// ---- restore registry: the new inode of each ghost, per restore ----

/** A file this restore created: the record that created it and its controller descriptor. */
interface Made {
  creator: number;
  fd: number;
  ino: bigint;
  ctx: OpenContext;
}

/**
 * Files created by a restore, by identity. An entry is current only while the scheduler still
 * holds its creator's descriptor and that is still the same inode; anything else is left over
 * from an earlier restore in this process.
 */
export class Registry {
  private readonly made = new Map<string, Made>();

  /** The controller descriptor of `key` created by the current restore, if any. */
  get(key: string): number | undefined {
    const m = this.made.get(key);
    if (m && m.ctx.opened(m.creator) === m.fd) {
      try {
        if (fstatSync(m.fd, { bigint: true }).ino === m.ino) return m.fd;
      } catch { /* closed: stale */ }
    }
    this.made.delete(key);
    return undefined;
  }

  set(key: string, creator: number, fd: number, ctx: OpenContext): void {
    this.made.set(key, { creator, fd, ino: fstatSync(fd, { bigint: true }).ino, ctx });
  }
}

/**
 * Opens `origin` (a controller descriptor of the new inode) again as a new open file with the
 * record's access mode and flags, at offset `pos`.
 */
export function reopen(origin: number, flags: number, pos: bigint): number {
  const n = native();
  const fd = n.openRaw(`/proc/self/fd/${origin}`, flags & (O_ACCMODE | SETFL_FLAGS | O_PATH));
  try {
    if (pos !== 0n && (flags & O_PATH) === 0) n.lseek(fd, pos, SEEK_SET);
  } catch (err) {
    n.closeFd(fd);
    throw err;
  }
  return fd;
}

/** Registry of ghosts restored by address-space.ts too (a mapped ghost). */
export const ghosts = new Registry();

/** The controller descriptor of the ghost `dev:ino` opened by the current restore, if any. */
export function restoredGhost(identity: string): number | undefined {
  return ghosts.get(identity);
}

// ---- the kind ----

export interface DeletedRecord extends FileRecord, Contents {
  kind: 'ghost';
  /** The path it had (without " (deleted)"): the new file is created in its directory. */
  path: string;
  /** open(2) access mode and status flags. */
  flags: number;
  pos: string;
  mode: number;
  uid: number;
  gid: number;
  /** Identity at dump (st_dev:st_ino): the records of one inode share it. */
  ghost: string;
}

const SUFFIX = ' (deleted)';

const isMemfdLink = (d: FdDesc): boolean => d.link.startsWith('/memfd:') && d.fdinfo.mntId === 0;

export const deleted: FileKind<DeletedRecord> = {
  kind: 'ghost',

  matches(fd: FdDesc): boolean {
    // A removed name of a file that has other names is linked.ts's. An O_PATH descriptor is one
    // too: its contents are read through a new open of it (/proc/self/fd, as any other's), and
    // it is opened O_PATH again from the file made (reopen).
    return fd.link.startsWith('/') && fd.link.endsWith(SUFFIX) && fd.stat.isFile() && fd.stat.nlink === 0n && !isMemfdLink(fd);
  },

  /** Refuses, before anything is touched, a ghost bigger than the limit. */
  precheck(fd: FdDesc, options: FileOptions): void {
    const limit = contentsLimit(options);
    if (storedEstimate(fd.stat) > limit) throw tooBig(fd, 'the deleted file', Number(fd.stat.size), limit);
  },

  key(fd: FdDesc): string {
    return `ghost:${fd.stat.dev}:${fd.stat.ino}:${fd.fdinfo.pos}:${fd.fdinfo.flags & ~O_CLOEXEC}`;
  },

  dump(fd: FdDesc, ctx: DumpContext): Omit<DeletedRecord, 'id' | 'kind'> {
    const ghost = `${fd.stat.dev}:${fd.stat.ino}`;
    try {
      return {
        path: fd.link.slice(0, -SUFFIX.length),
        flags: fd.fdinfo.flags & ~O_CLOEXEC,
        pos: fd.fdinfo.pos.toString(),
        mode: Number(fd.stat.mode & 0o7777n),
        uid: Number(fd.stat.uid),
        gid: Number(fd.stat.gid),
        ghost,
        ...dumpContents(fd, ctx, `ghost:${ghost}`, 'the deleted file'),
      };
    } catch (err) {
      if (err instanceof FerryError) throw err;
      throw new FerryError('EDUMP', `checkpoint: deleted file fd ${fd.fd} of pid ${fd.pid} (${fd.link}): ${(err as Error).message}`, { cause: err });
    }
  },

  check(rec: DeletedRecord): void {
    const bad = (why: string): never => {
      throw new FerryError('EIMAGE', `image: deleted file (file ${rec.id}) ${why}`);
    };
    // As the kernel shows paths: absolute and normal (no '.', '..', '//' or '/' at the end),
    // so that the directory made for it (create) is the one checked here.
    if (typeof rec.path !== 'string' || !rec.path.startsWith('/') || rec.path === '/' || rec.path !== posix.normalize(rec.path)
      || rec.path.endsWith('/')) bad('has no valid path');
    // mode, uid and gid go to fchmod(2) and fchown(2): permission bits and 32-bit ids (not -1, "unchanged").
    const id = (v: unknown): boolean => Number.isSafeInteger(v) && (v as number) >= 0 && (v as number) < 2 ** 32 - 1;
    if (typeof rec.ghost !== 'string' || !Number.isSafeInteger(rec.flags) || !Number.isSafeInteger(rec.mode) || rec.mode < 0 || rec.mode > 0o7777
      || !id(rec.uid) || !id(rec.gid) || imagePos(rec.pos) === undefined) bad('has an invalid record');
    checkContents(rec, bad);
    // Resolved inside the process's recorded root (confined.ts), as open() will. A directory
    // that is not there was removed with the file: it is made for the moment of the create.
    const { root, path } = placeOf(rec);
    dirState(root, dirname(path), rec);
  },

  open(rec: DeletedRecord, ctx: OpenContext): number {
    const n = native();
    const pos = BigInt(rec.pos);
    try {
      const origin = ghosts.get(rec.ghost);
      if (origin !== undefined) return reopen(origin, rec.flags, pos);
      const fd = create(rec, ctx);
      let out = fd;
      try {
        fchownSync(fd, rec.uid, rec.gid);
        // Without set-user-ID and set-group-ID: the contents are the image's, written by root
        // (CAP_FSETID keeps the bits), and a holder could execute the file through its
        // descriptor (execveat(2)), as its owner.
        fchmodSync(fd, rec.mode & ~SETID_BITS);
        writeContents(fd, rec, ctx);
        if ((rec.flags & ~O_LARGEFILE) !== O_RDWR) out = reopen(fd, rec.flags, pos);
        else if (pos !== 0n) n.lseek(fd, pos, SEEK_SET);
      } finally {
        if (out !== fd) n.closeFd(fd);
      }
      ghosts.set(rec.ghost, rec.id, out, ctx);
      return out;
    } catch (err) {
      if (err instanceof FerryError) throw err;
      throw new FerryError('EOPEN', `cannot restore the deleted file ${rec.path} (file ${rec.id}): ${(err as Error).message}`, { cause: err });
    }
  },
};

/**
 * A new, unlinked regular file in the directory of `rec.path`, open O_RDWR. The directory is
 * resolved inside the process's recorded root (confined.ts) and held by a descriptor; the
 * name is created there exclusively (O_CREAT|O_EXCL: never through a symlink, never an
 * existing file) and unlinked at once through the same descriptor, so the link reads
 * "path (deleted)". When the name is taken: an O_TMPFILE file in that directory.
 *
 * A directory that is not there was removed after the file (`rm -rf logs`): it is made for the
 * moment of the create, written down first (confined.ts withRemovedDir, files/transient.ts),
 * the file created in it through ferry's descriptor of it, and removed again once the file's
 * name is, so the file is left in a directory with no name, as it was: the kernel builds its
 * link from the names its dentries kept, "path (deleted)".
 */
function create(rec: DeletedRecord, ctx: OpenContext): number {
  const { root, path } = placeOf(rec);
  const what = `deleted file ${rec.id} of the image`;
  const parent = dirname(path);
  // The walk again, not one lookup: open() must refuse on its own what check() refuses (a
  // name kept by a dangling symlink), whether or not check() ran, and whatever changed since.
  if (parent === '/' || dirState(root, parent, rec) === 'there') return createIn(root, path, what, ctx.options.ghostPaths === true);
  const dirWhat = `the removed directory ${dirname(rec.path)} of the ${what}`;
  // In the directory ferry made and holds, never by its path again (a directory above it may
  // be someone else's, who could have put a symlink in place of ferry's meanwhile). Its name is
  // removed once the file's is; a level that could not be (something was put in it meanwhile:
  // the file would be in a directory with a name) refuses the restore there.
  return withRemovedDir(root, parent, dirWhat, (made) => createAt(Parent.in(root, made.fd, basename(path), `${made.path}/${basename(path)}`, what)),
    { dispose: (fd) => native().closeFd(fd) });
}

/**
 * Whether the directory `dir` (inside `root`) of a deleted file is there, or was removed: the
 * first component of it that does not resolve must have no entry at all. A name kept by
 * something else, a file or a symlink that leads nowhere inside the root (one to a host path,
 * resolved in the container), is refused: the kernel never shows a symlink in a file's path,
 * so that name is not the removed directory's, and nothing is made behind it.
 */
function dirState(root: ConfinedRoot, dir: string, rec: DeletedRecord): 'there' | 'removed' {
  const what = `deleted file ${rec.id} of the image`;
  const notDir = (at: string, why: string): never => {
    throw new FerryError('ENOTDIR', `${at}, on the way to the directory of the deleted file ${rec.path} (file ${rec.id} of the image), ${why} here: `
      + 'restore where it is a directory, or where it does not exist', { path: rec.path });
  };
  const parts = dir.split('/').filter((x) => x !== '' && x !== '.');
  const look = (at: string, noFollow: boolean): ReturnType<typeof statIn> => {
    try {
      return statIn(root, at, what, noFollow);
    } catch (err) {
      if (err instanceof FerryError) throw err; // leads outside the root
      throw new FerryError('EOPEN', `${at}, on the way to the directory of the deleted file ${rec.path} (file ${rec.id} of the image), cannot be looked up here `
        + `(${errnoCode(err) ?? describeCause(err)}): restore where it can`, { path: rec.path, cause: err });
    }
  };
  let symlink: string | undefined; // the first component on the way that is a symlink
  for (let i = 1; i <= parts.length; i++) {
    const at = `/${parts.slice(0, i).join('/')}`;
    const st = look(at, false);
    if (st === undefined) {
      if (look(at, true) !== undefined) notDir(at, 'is a symlink that leads nowhere');
      // The part that is there is walked without following symlinks when the rest is made
      // (confined.ts withRemovedDir): refused here already, before anything is made.
      if (symlink !== undefined) notDir(symlink, 'is a symlink, not followed to make the removed directory below it,');
      return 'removed';
    }
    if (!st.isDirectory()) notDir(at, 'is no directory');
    if (symlink === undefined && look(at, true)?.isSymbolicLink() === true) symlink = at;
  }
  return 'there';
}

function createIn(root: ConfinedRoot, path: string, what: string, shadow: boolean): number {
  return withParent(root, path, what, (dir) => createAt(dir, shadow));
}

/**
 * The file's name created exclusively in directory `dir` (never through a symlink, never an
 * existing file) and unlinked at once through it; when the name is taken, made where its link
 * still reads its path where `shadow` allows (createShadowed), else an O_TMPFILE file in that
 * directory.
 */
function createAt(dir: Parent, shadow = false): number {
  return createNamed(dir) ?? (shadow ? createShadowed(dir) : undefined) ?? native().openat2(dir.dir, '.', O_TMPFILE | O_RDWR, 0o600, 0);
}

/**
 * The file's name created exclusively in `dir` and unlinked at once; undefined when the name
 * is taken. It is made under a name of ferry's own, written down (files/transient.ts: a ferry
 * killed before the unlink leaves it to the next restore's sweep) and renamed to its name
 * without replacing anything: as exclusive as O_CREAT|O_EXCL at the name.
 */
function createNamed(dir: Parent): number | undefined {
  const n = native();
  let fd = -1;
  let made: TransientMade | undefined;
  try {
    made = makeTransient('file', dir.root.path, dir.path, dir.dir, undefined, (at, temp) => {
      fd = n.openat2(at, temp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600, NAME_RESOLVE);
    });
    if (made === undefined) {
      n.closeFd(fd);
      return undefined;
    }
    transientMade();
    dir.unlink(); // a name already gone is fine: it is gone either way
    // Its name must be gone, not someone else's at it: a file of ferry's with a name left
    // (renamed away meanwhile) would be the process's file in a directory anyone may read.
    if (fstatSync(fd).nlink !== 0) {
      throw new FerryError('ECHANGED', `cannot restore the deleted file ${dir.path}: the file made for it was moved before its name was removed; `
        + 'it is left where it was moved to (written down for the next restore\'s sweep): nothing was restored', { path: dir.path });
    }
    made();
  } catch (err) {
    if (fd >= 0) n.closeFd(fd);
    // A file system whose rename(2) takes no flags (NFS, some FUSE: EINVAL, the temporary
    // name removed again): the name itself, exclusively, unjournalled.
    if (made === undefined && errnoCode(err) === 'EINVAL') return createAtName(dir);
    throw err;
  }
  return fd;
}

/** The name created exclusively at once (O_CREAT|O_EXCL) and unlinked; undefined when taken. */
function createAtName(dir: Parent): number | undefined {
  let fd: number;
  try {
    fd = dir.open(O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
  } catch (err) {
    if (errnoCode(err) === 'EEXIST') return undefined;
    throw err;
  }
  try {
    dir.unlink();
  } catch (err) {
    native().closeFd(fd);
    throw err;
  }
  return fd;
}

/**
 * A deleted file whose name was taken since (a binary or a configuration file replaced by a
 * rename, as package managers and editors do), made so that its link still reads
 * `path (deleted)` — an O_TMPFILE file's reads `/dir/#INODE (deleted)`, which tools that look
 * for upgraded binaries (/proc/PID/exe, maps) do not know. The kernel names an open file by its
 * dentries up to the root of the mount it was opened through, and a clone of a directory
 * attached nowhere (open_tree(2) OPEN_TREE_CLONE) is a mount with its own root. So a directory
 * of ferry's is made in `dir` beside the taken name (withRemovedDir, in the held directory:
 * journalled, removed again), the levels of the file's path made in it, the directory cloned,
 * and the file created through the clone at that path and unlinked: it is on the same file
 * system as before (the same device in /proc/PID/maps), in no directory anyone can reach, and
 * the clone lives as long as the file is open. Nothing at the taken name is touched.
 * The path is the whole path from the host's root: only for processes that have it as theirs
 * (FileOptions.ghostPaths: not a chrooted process, which sees paths from its own root, nor a
 * container's, whose mounts are another namespace's, which open_tree does not clone: EINVAL).
 * Undefined (the caller makes an O_TMPFILE file, as before) where it cannot be made: no
 * open_tree(2) (before Linux 5.2: ENOSYS), no CAP_SYS_ADMIN over this mount namespace (EPERM),
 * a mount of another namespace or an unbindable one (EINVAL), or a directory where nothing
 * more can be made (a read-only or full file system). Someone who moved ferry's directory or
 * put something in it meanwhile refuses the restore (ECHANGED), as withRemovedDir does.
 */
function createShadowed(dir: Parent): number | undefined {
  const n = native();
  const levels = dirname(dir.path).split('/').filter((x) => x !== '');
  const what = `a directory of ferry's beside ${dir.path} (a deleted file whose name was taken)`;
  const close = (fd: number | undefined): void => {
    if (fd !== undefined) n.closeFd(fd);
  };
  const held = { path: dirname(dir.path), fd: dir.dir }; // made in the very directory held, no walk again
  try {
    return withRemovedDir(dir.root, posix.join(held.path, `.ferry-ghost-${process.pid}`), what, (outer) => {
      const mnt = n.openTreeClone(outer.fd);
      try {
        const create = (inDir: number, inClone: string): number | undefined => {
          // The directory made, through the clone (ferry's own, 0700, inside ferry's own: no
          // one else can have put anything on the way), so that the file's mount is the clone.
          const at = inClone === '' ? n.openRaw(`/proc/self/fd/${mnt}`, O_PATH | O_DIRECTORY)
            : n.openat2(mnt, inClone, O_PATH | O_DIRECTORY | O_NOFOLLOW, 0, NAME_RESOLVE);
          try {
            const a = fstatSync(at, { bigint: true }), b = fstatSync(inDir, { bigint: true });
            if (a.dev !== b.dev || a.ino !== b.ino) throw new FerryError('ECHANGED', `${what}: the directory made is not the one reached through its clone`);
            return createNamed(Parent.in(dir.root, at, dir.name, posix.join(outer.path, ...levels, dir.name), what));
          } finally {
            n.closeFd(at);
          }
        };
        if (levels.length === 0) return create(outer.fd, '');
        return withRemovedDir(dir.root, posix.join(outer.path, ...levels), what, (inner) => create(inner.fd, levels.join('/')),
          { under: outer, dispose: close });
      } finally {
        n.closeFd(mnt); // the file keeps the clone
      }
    }, { under: held, dispose: close });
  } catch (err) {
    // Someone moved ferry's directory or put something in it meanwhile: refused, as for a
    // removed directory. What the kernel or the file system does not give: made as before.
    // Anything else is a fault of ferry's own, not to be hidden.
    if (err instanceof FerryError ? err.code === 'ECHANGED' : errnoCode(err) === undefined) throw err;
    return undefined;
  }
}

/** The first of `tasks` mapping the deleted file `f` (an area whose `ghost` is the file's identity), if any. */
export function ghostMapper<T extends Partial<Pick<TaskRecord, 'vmas'>>>(tasks: readonly T[], f: FileRecord): T | undefined {
  return tasks.find((t) => (t.vmas ?? []).some((v) => (v as { ghost?: unknown }).ghost === f['ghost']));
}

/** A deleted file of the tree whose directory the tree also holds, removed. */
export interface GhostInHeldDir {
  /** The process and descriptor holding it; for a file only mapped (dump/memory.ts unheldGhosts), the process mapping it, no fd. */
  pid?: number;
  fd?: number;
  /** The deleted file's path (without " (deleted)"). */
  path: string;
  /** The removed directory held, and by what ("as its working directory of pid 12"). */
  dir: string;
  heldAs: string;
}

/**
 * The first deleted file (a ghost) in or below a removed directory the tree also holds (a
 * process's or thread's working or root directory, an open descriptor), or undefined. Restore
 * makes such a directory once, for its holders, and removes its name before the files are
 * opened (restore/root-dir.ts RemovedRoots); a file made for the moment in a directory of
 * that path (create) would be in another one, and nothing can be created in a removed
 * directory. Matched by path, all a deleted file's record says of its directory.
 */
export function ghostInHeldRemovedDir(
  tasks: ReadonlyArray<Pick<TaskRecord, 'pid' | 'cwd' | 'cwdDeleted' | 'root' | 'rootDeleted' | 'threads' | 'fds'> & Partial<Pick<TaskRecord, 'vmas'>>>,
  files: readonly FileRecord[],
): GhostInHeldDir | undefined {
  const holders = new Map<number, { pid: number; fd: number }>();
  for (const t of tasks) {
    for (const table of [t.fds, ...(t.threads ?? []).map((th) => th.fds ?? [])]) {
      for (const d of table ?? []) if (!holders.has(d.file)) holders.set(d.file, { pid: t.pid, fd: d.fd });
    }
  }
  const held: Array<{ path: string; as: string }> = [];
  for (const t of tasks) {
    if (t.cwdDeleted !== undefined && typeof t.cwd === 'string') held.push({ path: t.cwd, as: `as the working directory of pid ${t.pid}` });
    if (t.rootDeleted !== undefined && typeof t.root === 'string') held.push({ path: t.root, as: `as the root directory of pid ${t.pid}` });
    for (const th of t.threads ?? []) {
      if (th.fs?.cwdDeleted !== undefined && typeof th.fs.cwd === 'string') {
        held.push({ path: th.fs.cwd, as: `as the working directory of thread ${th.tid} of pid ${t.pid}` });
      }
    }
  }
  for (const f of files) {
    if (f.kind !== 'reg' || f.directory !== true || typeof f.removed !== 'object' || f.removed === null || typeof f.path !== 'string') continue;
    const h = holders.get(f.id);
    if (h) held.push({ path: f.path, as: `open as fd ${h.fd} of pid ${h.pid}` });
  }
  if (held.length === 0) return undefined;
  for (const f of files) {
    if (f.kind !== 'ghost' || typeof f.path !== 'string') continue;
    const dir = dirname(f.path);
    const bad = held.find((x) => x.path !== '/' && (dir === x.path || dir.startsWith(`${x.path}/`)));
    if (!bad) continue;
    // Held by a descriptor, else only mapped: the first process mapping it is named.
    const mapper = ghostMapper(tasks, f);
    return { ...(holders.get(f.id) ?? (mapper ? { pid: mapper.pid } : {})), path: f.path, dir: bad.path, heldAs: bad.as };
  }
  return undefined;
}

/** The one line refusing `g` (ghostInHeldRemovedDir): which file, which directory, what to do. */
export function ghostInHeldDirMessage(g: GhostInHeldDir): string {
  const who = g.pid === undefined ? 'a mapping of the tree' : g.fd === undefined ? `a mapping of pid ${g.pid}` : `pid ${g.pid} fd ${g.fd}`;
  return `${who} holds the deleted file ${JSON.stringify(g.path.slice(0, 256))} in the removed directory ${JSON.stringify(g.dir.slice(0, 256))}, `
    + `which the tree also holds ${g.heldAs}: restore cannot make a file in a removed directory it holds`;
}
