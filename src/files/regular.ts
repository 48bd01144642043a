/**
 * Regular files, directories and O_PATH descriptors: reopened by path, resolved inside the
 * process's recorded root (confined.ts), with the same access mode and status flags (never
 * O_TRUNC or O_CREAT: the image is input), positioned at the same offset, with their file
 * locks (--file-locks, locks.ts). The file must
 * still be there on restore; a regular file whose size or modification time differs from the
 * checkpoint's is refused unless --allow-changed-files (then a warning is logged): the process
 * remembers offsets, lengths and contents that no longer hold.
 */
import { imagePos } from '../proc/fdinfo.js';
import { constants, fstatSync, statSync } from 'node:fs';
import { FerryError, describeCause, errnoCode } from '../errors.js';
import type { FileRecord, TaskRecord } from '../image/records.js';
import { native } from '../native/binding.js';
import {
  O_ACCMODE, O_APPEND, O_CLOEXEC, O_DIRECT, O_DIRECTORY, O_LARGEFILE, O_NOATIME, O_NONBLOCK, O_PATH, O_SYNC,
} from '../proc/fcntl.js';
import { ConfinedRoot, hostRoot, openIn, openRemovedNode, placeOf, statIn, withRemovedDir } from './confined.js';
import { openRemovedNodeOf, removedDirIdentity } from './removed-node.js';
import { dumpLocks, precheckLocks, restoreLocks, validateLocks, type LockRecord } from './locks.js';
import type { DumpContext, FdDesc, FileKind, FileOptions, OpenContext, TaskContext } from './types.js';

/** Flags that only matter when a file is created or are per-descriptor, not per open file. */
const OPEN_ONLY_FLAGS = constants.O_CREAT | constants.O_EXCL | constants.O_TRUNC | constants.O_NOCTTY | O_CLOEXEC;

/**
 * What an open file is opened again with on restore: its access mode and status flags only.
 * Never what creates or truncates (O_CREAT, O_EXCL, O_TRUNC, O_TMPFILE: the kernel keeps none
 * of them in an open file's flags, so only an edited image has them; truncation happened
 * before the checkpoint). Not O_NOFOLLOW: the file is reopened through the /proc/self/fd link
 * of its O_PATH descriptor, which O_NOFOLLOW would refuse, and it means nothing once open.
 */
const REOPEN_FLAGS = O_ACCMODE | O_APPEND | O_NONBLOCK | O_SYNC | O_DIRECT | O_LARGEFILE | O_DIRECTORY | O_NOATIME;

/** The longest symlink text the kernel stores (PATH_MAX, its NUL included). */
const MAX_TARGET = 4095;

export interface RegularRecord extends FileRecord {
  kind: 'reg';
  path: string;
  /** open(2) flags of the open file (access mode, O_APPEND, O_NONBLOCK, O_DIRECTORY, O_PATH…). */
  flags: number;
  /** File offset. */
  pos: string;
  /** Identity at dump time, to tell the user when the file changed. */
  dev: string;
  ino: string;
  directory: boolean;
  /** Regular files: size and modification time (ns since the epoch) at dump, to report a change. */
  size?: string;
  mtimeNs?: string;
  /** Locks held through this open file (only with --file-locks; absent when none). */
  locks?: LockRecord[];
  /**
   * A directory that was removed (its link read `path (deleted)`): its mode and owner. It is
   * made again for the moment of the open (confined.ts withRemovedDir) and removed. An O_PATH
   * descriptor of a removed FIFO or symlink says which in `type` (absent: a directory), and a
   * symlink's text is `target`; the node is made again the same way (openRemovedNode).
   */
  removed?: RemovedNode;
}

/** What a removed directory, FIFO or symlink held by a descriptor of this kind was. */
export interface RemovedNode {
  mode: number;
  uid: number;
  gid: number;
  /** An O_PATH descriptor's removed FIFO or symlink; absent for a directory. */
  type?: 'fifo' | 'symlink';
  /** A symlink's text (readlinkat(2)), UTF-8. */
  target?: string;
}

/** What a file looked like at checkpoint. */
export interface FileIdentity {
  path: string;
  size: string | number;
  mtimeNs: string;
}

/** "2024-05-01T10:20:30.123456789Z" from nanoseconds since the epoch. */
function isoNs(ns: bigint): string {
  const ms = ns / 1_000_000n;
  const iso = new Date(Number(ms)).toISOString();
  return `${iso.slice(0, 19)}.${(((ns % 1_000_000_000n) + 1_000_000_000n) % 1_000_000_000n).toString().padStart(9, '0')}Z`;
}

/**
 * Compares a file with its size and mtime at checkpoint (`stat` of `at`, the path as ferry
 * reaches it; `what` names it for the user). A change throws one line naming the file, what
 * changed and the override, unless `options.allowChangedFiles`: then `warn` gets that line
 * and the restore goes on. A file that is gone is left to the caller's own error.
 */
export function checkUnchanged(file: FileIdentity, at: string, what: string,
  options: Pick<FileOptions, 'allowChangedFiles'>, warn: (message: string) => void): void {
  let st;
  try {
    st = statSync(at, { bigint: true });
  } catch {
    return;
  }
  if (!st.isFile()) return;
  const changes: string[] = [];
  if (st.size !== BigInt(file.size)) changes.push(`size ${file.size} → ${st.size} bytes`);
  if (st.mtimeNs !== BigInt(file.mtimeNs)) changes.push(`mtime ${isoNs(BigInt(file.mtimeNs))} → ${isoNs(st.mtimeNs)}`);
  if (changes.length === 0) return;
  changedFile(`${what} changed since the checkpoint (${changes.join(', ')})`, 'to go on with it as it is', 'restoring anyway', options, warn);
}

/**
 * A file the image needs that is not as it was (`line`): refused (ECHANGED), or with
 * --allow-changed-files a warning, `instead` saying what restore does then.
 */
function changedFile(line: string, allowed: string, instead: string, options: Pick<FileOptions, 'allowChangedFiles'>,
  warn: (message: string) => void, path?: string): void {
  if (!options.allowChangedFiles) {
    throw new FerryError('ECHANGED', `${line}: put the file back as it was, or restore with --allow-changed-files ${allowed}`, path !== undefined ? { path } : {});
  }
  warn(`${line}; ${instead} (--allow-changed-files)`);
}

/**
 * Where a warning goes when the engine passes no `warn`: one line on stderr, written at once
 * (the CLI may exit right after; process.stderr is synchronous for files, pipes and terminals
 * on Linux).
 */
function defaultWarn(message: string): void {
  process.stderr.write(`ferry: warning: ${message}\n`);
}

/**
 * Checks every file mapped by the tasks (areas of kind 'file'), each path once: it must still
 * be there (a FerryError 'ENOENT' naming the file, the pid and the address otherwise, instead
 * of a failed mmap deep in the restore), and, where dump/memory.ts recorded its size and
 * mtime, be unchanged as `checkUnchanged` says. `root` prefixes the paths (a container's
 * /proc/<init>/root). To be called with the other checks, before any process is created.
 */
export function checkMappedFiles(tasks: readonly TaskRecord[], options: Pick<FileOptions, 'allowChangedFiles'>,
  warn: (message: string) => void = defaultWarn, root = ''): void {
  // Looked at inside the root, as the task will open them (confined.ts: a /proc magic link or
  // an escape from a container's root is refused here already).
  const inRoot = root === '' ? hostRoot() : new ConfinedRoot(root, 'in-root');
  try {
    checkMapped(tasks, options, warn, inRoot);
  } finally {
    if (inRoot !== hostRoot()) inRoot.close();
  }
}

function checkMapped(tasks: readonly TaskRecord[], options: Pick<FileOptions, 'allowChangedFiles'>,
  warn: (message: string) => void, root: ConfinedRoot): void {
  const seen = new Set<string>();
  for (const task of tasks) {
    for (const v of task.vmas) {
      const f = v.file;
      if (v.kind !== 'file' || !f || typeof f.path !== 'string' || seen.has(f.path)) continue;
      // A memfd or a deleted file comes back from the image, not from its (gone) path.
      const special = v as { memfd?: unknown; ghost?: unknown };
      if (special.memfd !== undefined || special.ghost !== undefined) continue;
      if (f.path.endsWith(' (deleted)') || f.path.startsWith('/memfd:')) continue;
      seen.add(f.path);
      const what = `file ${f.path} (mapped by pid ${task.pid} at ${v.start})`;
      let at: number;
      try {
        at = openIn(root, f.path, O_PATH, what);
      } catch (err) {
        if (err instanceof FerryError) throw err;
        const code = errnoCode(err);
        if (code === 'ENOENT' || code === 'ENOTDIR') {
          throw new FerryError('ENOENT', `${what} no longer exists: put it back where it was (the process has its code `
            + 'or data mapped from it), then restore again', { cause: err, pid: task.pid, path: f.path });
        }
        throw new FerryError('EOPEN', `cannot reach ${what}: ${describeCause(err)}`, { cause: err, pid: task.pid, path: f.path });
      }
      try {
        if (typeof f.mtimeNs === 'string') checkUnchanged(f, `/proc/self/fd/${at}`, what, options, warn);
      } finally {
        native().closeFd(at);
      }
    }
  }
}

/**
 * A directory that was removed: made once for every record of it (files/removed-node.ts), for
 * the moment of the open (withRemovedDir), taken O_PATH, its name removed (it must be empty
 * then: one someone put something in meanwhile is theirs), or, a removed root or working
 * directory of the tree or a directory below a removed root, the one restore made for the
 * processes (FileOptions.removedDir); given its mode and owner; each record opens it through
 * /proc/self/fd with its flags and gets its offset.
 */
function openRemovedDir(rec: RegularRecord, ctx: OpenContext, root: ConfinedRoot, path: string): number {
  const what = `the removed directory ${rec.path} (file ${rec.id} of the image)`;
  const n = native();
  try {
    const oPath = (rec.flags & O_PATH) !== 0;
    const identity = removedDirIdentity(rec);
    const premade = identity !== undefined ? ctx.options.removedDir?.(identity) : undefined;
    const fd = openRemovedNodeOf(rec, ctx, oPath ? O_PATH : (rec.flags & REOPEN_FLAGS) | O_DIRECTORY, { ...rec.removed!, symlink: false }, (also) => {
      // A removed root, a directory below one, or a working directory made already (restore/
      // root-dir.ts): that one, through ferry's descriptor of it (no name is left to follow).
      // Otherwise made here, and kept through ferry's descriptor of it (never by its path again).
      const held = premade !== undefined ? n.openRaw(`/proc/self/fd/${premade}`, O_PATH | O_DIRECTORY)
        : withRemovedDir(root, path, what, (made) => n.openRaw(`/proc/self/fd/${made.fd}`, O_PATH | O_DIRECTORY), { dispose: (fd) => n.closeFd(fd) });
      const taken: number[] = [];
      try {
        // The O_PATH records' descriptors: through the held one (no name is left to follow).
        for (let i = 0; i < also.length; i++) taken.push(n.openRaw(`/proc/self/fd/${held}`, O_PATH | O_DIRECTORY));
      } catch (err) {
        for (const t of [held, ...taken]) n.closeFd(t);
        throw err;
      }
      return { held, also: taken };
    });
    const pos = BigInt(rec.pos);
    if (pos !== 0n && !oPath) {
      try {
        n.lseek(fd, pos, 0);
      } catch { /* a position this file system does not take back: read from the start */ }
    }
    return fd;
  } catch (err) {
    if (err instanceof FerryError) throw err;
    throw new FerryError('EOPEN', `cannot restore ${what}: ${(err as Error).message}`, { cause: err, path: rec.path });
  }
}

/**
 * The FIFO or symlink of an O_PATH descriptor whose name was removed: made once for every record
 * of it (files/removed-node.ts) under its old name (or a free one beside it) in its directory
 * inside the root (mkfifoat with mode 0600, or symlinkat with the recorded text; root's), taken
 * O_PATH by name with the record's O_NOFOLLOW (the symlink itself), the name removed at once
 * (confined.ts openRemovedNode), then given its owner and (a FIFO) its mode. A symlink's mode
 * is always 0777: no call changes it.
 */
function openRemovedPathNode(rec: RegularRecord, ctx: OpenContext, root: ConfinedRoot, path: string): number {
  const r = rec.removed!;
  const symlink = r.type === 'symlink';
  const what = `the removed ${symlink ? 'symlink' : 'FIFO'} ${rec.path} (file ${rec.id} of the image)`;
  const n = native();
  try {
    const target = Buffer.from(r.target ?? '', 'utf8');
    return openRemovedNodeOf(rec, ctx, rec.flags & (O_PATH | constants.O_NOFOLLOW), { ...r, symlink }, (also) => openRemovedNode(root, path, what,
      symlink ? 'symlink' : 'fifo', undefined, symlink ? (dir, name) => n.symlinkat(r.target!, dir, name) : (dir, name) => n.mkfifoat(dir, name, 0o600),
      (made) => {
        const st = fstatSync(made);
        if (!symlink) return st.isFIFO() ? undefined : 'it is no FIFO';
        return st.isSymbolicLink() && n.readlinkat(made, '').equals(target) ? undefined : 'it is not the symlink made';
      }, also));
  } catch (err) {
    if (err instanceof FerryError) throw err;
    throw new FerryError('EOPEN', `cannot restore ${what}: ${(err as Error).message}`, { cause: err, path: rec.path });
  }
}

/**
 * The type of a removed node an O_PATH descriptor may hold that openRemovedPathNode makes
 * again, or undefined. Only one with no name left: a removed name of a FIFO or symlink that
 * has others could not be told from a new node.
 */
function removedPathNode(fd: FdDesc): 'fifo' | 'symlink' | undefined {
  if ((fd.fdinfo.flags & O_PATH) === 0 || fd.stat.nlink !== 0n) return undefined;
  if (fd.stat.isFIFO()) return 'fifo';
  // Only the symlink itself (O_NOFOLLOW); without it the descriptor is of what the link led to.
  if (fd.stat.isSymbolicLink() && (fd.fdinfo.flags & constants.O_NOFOLLOW) !== 0) return 'symlink';
  return undefined;
}

/** The text of the removed symlink an O_PATH descriptor holds: UTF-8, or it is refused. */
function symlinkText(fd: FdDesc, ctx: DumpContext): string {
  const bytes = native().readlinkat(ctx.grab(fd), '');
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new FerryError('EUNSUPPORTED', `unsupported file: pid ${fd.pid} fd ${fd.fd} -> ${fd.link} (an O_PATH descriptor of a removed `
      + 'symlink whose text is not UTF-8 cannot be checkpointed yet)');
  }
}

export const regular: FileKind<RegularRecord> = {
  kind: 'reg',

  matches(fd: FdDesc): boolean {
    return fd.link.startsWith('/') && (fd.stat.isFile() || fd.stat.isDirectory()
      || (fd.fdinfo.flags & O_PATH) !== 0);
  },

  precheck(fd: FdDesc, options: FileOptions): void {
    precheckLocks(fd, options);
  },

  key(fd: FdDesc): string {
    return `reg:${fd.stat.dev}:${fd.stat.ino}:${fd.fdinfo.pos}:${fd.fdinfo.flags & ~O_CLOEXEC}`;
  },

  dump(fd: FdDesc, ctx: DumpContext): Omit<RegularRecord, 'id' | 'kind'> {
    const removed = fd.link.endsWith(' (deleted)');
    const node = removed ? removedPathNode(fd) : undefined;
    if (removed && node === undefined && !(fd.stat.isDirectory() && fd.stat.nlink === 0n)) {
      throw new FerryError('EUNSUPPORTED',
        `unsupported file: pid ${fd.pid} fd ${fd.fd} -> ${fd.link} (${(fd.fdinfo.flags & O_PATH) !== 0 ? 'an O_PATH descriptor of ' : ''}a removed file of this kind cannot be checkpointed yet)`);
    }
    const rec: Omit<RegularRecord, 'id' | 'kind'> = {
      path: removed ? fd.link.slice(0, -' (deleted)'.length) : fd.link,
      flags: fd.fdinfo.flags & ~OPEN_ONLY_FLAGS,
      pos: fd.fdinfo.pos.toString(),
      dev: fd.stat.dev.toString(),
      ino: fd.stat.ino.toString(),
      directory: fd.stat.isDirectory(),
    };
    if (fd.stat.isFile()) {
      rec.size = fd.stat.size.toString();
      rec.mtimeNs = fd.stat.mtimeNs.toString();
    }
    if (removed) {
      const r: RemovedNode = { mode: Number(fd.stat.mode & 0o7777n), uid: Number(fd.stat.uid), gid: Number(fd.stat.gid) };
      if (node !== undefined) r.type = node;
      if (node === 'symlink') r.target = symlinkText(fd, ctx);
      rec.removed = r;
    }
    const locks = dumpLocks(fd, ctx);
    if (locks.length > 0) rec.locks = locks;
    return rec;
  },

  check(rec: RegularRecord): void {
    // The image is input: every field this module uses must be there, of its type.
    if (typeof rec.path !== 'string' || rec.path === '' || rec.path.includes('\0') || rec.path.length > 4096
      || !Number.isSafeInteger(rec.flags) || rec.flags < 0 || typeof rec.directory !== 'boolean'
      || imagePos(rec.pos) === undefined
      || typeof rec.ino !== 'string' || !/^\d{1,20}$/.test(rec.ino)) {
      throw new FerryError('EIMAGE', `image: file ${rec.id} (kind reg) needs a path, flags, pos, ino and directory`);
    }
    validateLocks(rec.locks, `file ${rec.id} (${rec.path})`);
    if ((rec.size !== undefined && (typeof rec.size !== 'string' || !/^\d{1,20}$/.test(rec.size)))
      || (rec.mtimeNs !== undefined && (typeof rec.mtimeNs !== 'string' || !/^-?\d{1,25}$/.test(rec.mtimeNs)))) {
      throw new FerryError('EIMAGE', `file ${rec.id} (${rec.path}): bad size or mtimeNs`);
    }
    if (rec.removed !== undefined) {
      const r = rec.removed as unknown as Record<string, unknown>;
      const id = (v: unknown): boolean => Number.isSafeInteger(v) && (v as number) >= 0 && (v as number) < 2 ** 32 - 1;
      if (typeof r !== 'object' || r === null || !Number.isSafeInteger(r.mode) || (r.mode as number) < 0
        || (r.mode as number) > 0o7777 || !id(r.uid) || !id(r.gid)) {
        throw new FerryError('EIMAGE', `image: file ${rec.id} (kind reg) has an invalid removed directory`);
      }
      if (r.type === undefined) {
        if (!rec.directory || r.target !== undefined) throw new FerryError('EIMAGE', `image: file ${rec.id} (kind reg) has an invalid removed directory`);
        return; // made again when opened
      }
      // A removed FIFO or symlink: only ever of an O_PATH descriptor (a FIFO opened for I/O is
      // pipe.ts's), a symlink only as itself (O_NOFOLLOW), its text what symlinkat(2) takes.
      const oPath = (rec.flags & O_PATH) !== 0, noFollow = (rec.flags & constants.O_NOFOLLOW) !== 0;
      const text = r.target;
      const node = r.type === 'fifo' ? text === undefined
        : r.type === 'symlink' && noFollow && typeof text === 'string' && text !== '' && !text.includes('\0')
          && Buffer.byteLength(text, 'utf8') <= MAX_TARGET;
      const { root, path } = placeOf(rec);
      if (!node || !oPath || rec.directory || path.split('/').some((c) => c === '..') || path.endsWith('/')) {
        throw new FerryError('EIMAGE', `image: file ${rec.id} (kind reg) has an invalid removed FIFO or symlink`);
      }
      const dir = path.slice(0, path.lastIndexOf('/')) || '/';
      if (!(statIn(root, dir, `file ${rec.id} of the image`)?.isDirectory() ?? false)) {
        throw new FerryError('ENOENT', `the directory of the removed ${r.type === 'fifo' ? 'FIFO' : 'symlink'} ${rec.path} (file ${rec.id} of the image) `
          + 'does not exist here: create it first');
      }
      return; // made again when opened
    }
    // Resolved inside the process's recorded root (confined.ts), as open() will: an O_PATH
    // descriptor of a symlink itself (O_NOFOLLOW) is the link, not what it leads to.
    const { root, path } = placeOf(rec);
    const st = statIn(root, path, `file ${rec.id} of the image`, (rec.flags & O_PATH) !== 0 && (rec.flags & constants.O_NOFOLLOW) !== 0);
    if (!st) {
      throw new FerryError('ENOENT', `file ${rec.path} (file ${rec.id} of the image) no longer exists: restore it first`);
    }
    if (st.isDirectory() !== rec.directory) {
      throw new FerryError('ECHANGED', `file ${rec.path} is no longer a ${rec.directory ? 'directory' : 'regular file'}`);
    }
  },

  open(rec: RegularRecord, ctx: OpenContext): number {
    const cannot = (err: unknown): FerryError => (err instanceof FerryError ? err
      : new FerryError('EOPEN', `cannot open ${rec.path}: ${(err as Error).message}`, { cause: err, path: rec.path }));
    // The path is resolved inside the process's recorded root (its symlinks as the process
    // would follow them, no /proc magic link) into an O_PATH descriptor, which opens nothing
    // (no FIFO waits, no device wakes up); only what that descriptor shows to be the recorded
    // kind of file is then opened for I/O, through the descriptor itself: what is opened is
    // what was checked.
    const { root, path } = placeOf(rec);
    if (rec.removed) return rec.removed.type !== undefined ? openRemovedPathNode(rec, ctx, root, path) : openRemovedDir(rec, ctx, root, path);
    let at: number;
    try {
      at = openIn(root, path, O_PATH | (rec.flags & (O_DIRECTORY | constants.O_NOFOLLOW)), `file ${rec.id} of the image`);
    } catch (err) {
      throw cannot(err);
    }
    if ((rec.flags & O_PATH) !== 0) return at;
    // A directory's position may be a hash cookie of up to 63 bits (ext4): a BigInt.
    let pos = BigInt(rec.pos);
    let fd: number;
    try {
      const st = fstatSync(at);
      if (rec.directory ? !st.isDirectory() : !st.isFile()) {
        throw new FerryError('ECHANGED', `file ${rec.path} is no longer a ${rec.directory ? 'directory' : 'regular file'}`, { path: rec.path });
      }
      // A file only appended to (a log) may grow meanwhile without misleading the process: it
      // never reads it and each write goes to the end whatever the size.
      const appendOnly = (rec.flags & O_ACCMODE) === constants.O_WRONLY && (rec.flags & O_APPEND) !== 0;
      if (rec.size !== undefined && rec.mtimeNs !== undefined && !appendOnly) {
        checkUnchanged({ path: rec.path, size: rec.size, mtimeNs: rec.mtimeNs }, `/proc/self/fd/${at}`, `file ${rec.path}`,
          ctx.options, ctx.warn ?? defaultWarn);
      }
      if (pos !== 0n && rec.directory && fstatSync(at, { bigint: true }).ino !== BigInt(rec.ino)) {
        // A directory's position is a cookie of that directory (a hash of a name on ext4, an
        // index on tmpfs): in another one it would skip or repeat entries, silently.
        changedFile(`directory ${rec.path} (file ${rec.id} of the image) is not the one checkpointed (inode ${rec.ino} then), and the position it was read to means nothing in another`,
          'to have it read from its start', 'it reads from its start', ctx.options, ctx.warn ?? defaultWarn, rec.path);
        pos = 0n;
      }
      fd = native().openRaw(`/proc/self/fd/${at}`, rec.flags & REOPEN_FLAGS);
    } catch (err) {
      throw cannot(err);
    } finally {
      native().closeFd(at);
    }
    if (pos !== 0n) native().lseek(fd, pos, 0);
    return fd;
  },

  installed(rec: RegularRecord, task: TaskContext): void {
    if (!rec.locks || rec.locks.length === 0) return;
    restoreLocks(validateLocks(rec.locks, `file ${rec.id} (${rec.path})`), rec.path, task, BigInt(rec.ino));
  },
};
