/**
 * Character devices reopened by path: /dev/null, /dev/zero, /dev/urandom and friends. The
 * path is resolved inside the process's recorded root (confined.ts) to an O_PATH descriptor,
 * which opens nothing; it must be a character device with the recorded number (and not a
 * terminal) before that very file is opened, with the record's access mode and status flags
 * only (never O_CREAT, O_TRUNC…: a record that says "chr" never opens a regular file for
 * writing). Terminals are not handled here (they have sessions, termios and peers): tty.ts
 * takes them.
 *
 * A node whose name was removed (its link reads `path (deleted)`) has no name to open again:
 * restore makes one for the moment of the open (mknodat(2) of the recorded number, mode 0600,
 * in the recorded directory inside the root, or a free name beside it; a directory removed
 * too is made for the moment as well: confined.ts withRemovedDir), takes it O_PATH, removes
 * the name at once (written down first: transient.ts), gives the node its mode and owner and
 * opens it with the record's flags; once for every open file of the node, which all open that
 * one node (files/removed-node.ts). Only for the memory devices (mem(4): null, zero, full,
 * random, urandom), which hold no state of their own and which every container has, so that
 * the node made is no device a path would not give; any other is refused at checkpoint. And
 * only for an image this host signed or one the caller trusts (checkRemovedNodeTrust): an
 * image anyone could write must not have restore make device nodes.
 */
import { imagePos } from '../proc/fdinfo.js';
import { fstatSync, type BigIntStats } from 'node:fs';
import { FerryError } from '../errors.js';
import type { FileRecord, TaskRecord } from '../image/records.js';
import { native } from '../native/binding.js';
import { O_ACCMODE, O_APPEND, O_CLOEXEC, O_DIRECT, O_LARGEFILE, O_NOATIME, O_NONBLOCK, O_SYNC } from '../proc/fcntl.js';
import { openRemovedNode, placeOf, reopenIn, shownIn, statIn, withRemovedDir, type ConfinedRoot, type RemovedDir, type RemovedNodeMade } from './confined.js';
import { openRemovedNodeOf } from './removed-node.js';
import { isTerminal } from './tty.js';
import type { FdDesc, FileKind, OpenContext } from './types.js';

const major = (rdev: bigint): number => Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn));
const minor = (rdev: bigint): number => Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn));

const O_NOCTTY = 0o400;
const REMOVED = ' (deleted)';
/**
 * The devices whose removed nodes are made again: mem(4)'s null, zero, full, random and
 * urandom (major 1), by minor.
 */
const REMAKEABLE: ReadonlyMap<number, string> = new Map([[3, 'null'], [5, 'zero'], [7, 'full'], [8, 'random'], [9, 'urandom']]);
const remakeable = (maj: number, min: number): boolean => maj === 1 && REMAKEABLE.has(min);
/** The node's name was removed: no link left (a name of its own may end in " (deleted)" too). */
const isRemoved = (fd: FdDesc): boolean => fd.stat.nlink === 0n && fd.link.endsWith(REMOVED);
/** What a device is opened again with: access mode and status flags (O_NOCTTY added), nothing that creates. */
const REOPEN_FLAGS = O_ACCMODE | O_APPEND | O_NONBLOCK | O_SYNC | O_DIRECT | O_LARGEFILE | O_NOATIME;

/** Why `st` is not the recorded device, or undefined. */
function notTheDevice(rec: ChrdevRecord, st: BigIntStats): string | undefined {
  if (!st.isCharacterDevice()) return `is not a character device (the image says ${rec.major}:${rec.minor})`;
  if (major(st.rdev) !== rec.major || minor(st.rdev) !== rec.minor) {
    return `is character device ${major(st.rdev)}:${minor(st.rdev)}, not ${rec.major}:${rec.minor}`;
  }
  if (isTerminal(st.rdev)) return 'is a terminal, which a device record does not reopen';
  return undefined;
}

export interface ChrdevRecord extends FileRecord {
  kind: 'chr';
  path: string;
  flags: number;
  pos: string;
  major: number;
  minor: number;
  /** The node's name was removed (`path` is the name it had): its mode and owner. */
  removed?: { mode: number; uid: number; gid: number };
  /**
   * A removed node's identity at dump (st_dev, st_ino): the records of one node share it and
   * restore makes it once for them all (files/removed-node.ts). Absent in an older ferry's
   * image: each record's node is then made on its own.
   */
  dev?: string;
  ino?: string;
}

/**
 * Refuses, for an image not trusted, a device node whose name was removed: restore would make
 * one (mknod) for it. One line naming the first process and descriptor holding it.
 */
export function checkRemovedNodeTrust(label: string, tasks: readonly Pick<TaskRecord, 'pid' | 'fds'>[], files: readonly FileRecord[]): void {
  const f = files.find((x) => x.kind === 'chr' && x.removed !== undefined);
  if (!f) return;
  const t = tasks.find((x) => x.fds.some((d) => d.file === f.id));
  const held = t ? `pid ${t.pid} fd ${t.fds.find((d) => d.file === f.id)!.fd}` : `file ${f.id}`;
  throw new FerryError('EPRIVILEGE', `image ${label}: ${held} holds ${JSON.stringify(String(f.path).slice(0, 256))}, a device node whose name was removed, `
    + 'which restore would make again (mknod): only an image this host signed or one you trust may have device nodes made (sign it and restore with --trust if it is genuine)',
  { ...(t ? { pid: t.pid, fd: t.fds.find((d) => d.file === f.id)!.fd } : {}), ...(typeof f.path === 'string' ? { path: f.path } : {}) });
}

/**
 * Opens a device node made for a record whose node was removed (files/removed-node.ts: made
 * once for every record of it): under its old name (or a free one beside it) in its directory
 * inside the root, mode 0600 and root's until it is taken and its name removed again, then
 * given the recorded mode and owner.
 */
function openRemoved(rec: ChrdevRecord, ctx: OpenContext, root: ConfinedRoot, path: string, what: string): number {
  const n = native();
  const make = (at: string, also: readonly number[], inDir?: RemovedDir): RemovedNodeMade => openRemovedNode(root, at, what, 'chr', `${rec.major}:${rec.minor}`,
    (dir, name) => n.mknodChr(dir, name, 0o600, rec.major, rec.minor), (made) => {
      const why = notTheDevice(rec, fstatSync(made, { bigint: true }));
      return why !== undefined ? `it ${why}` : undefined;
    }, also, inDir);
  const cut = path.lastIndexOf('/');
  const dirPath = path.slice(0, cut) || '/';
  return openRemovedNodeOf(rec, ctx, (rec.flags & REOPEN_FLAGS) | O_NOCTTY, { ...rec.removed!, symlink: false }, (also) => {
    if (statIn(root, dirPath, what)?.isDirectory() ?? false) return make(path, also);
    // Its directory was removed too: made for the moment, and removed again with the node's name.
    // The node is made through ferry's descriptor of that directory, not its path again.
    return withRemovedDir(root, dirPath, what, (made) => make(`${made.path}/${path.slice(cut + 1)}`, also, made),
      { dispose: (got) => [got.held, ...got.also].forEach((fd) => n.closeFd(fd)) });
  });
}

export const chrdev: FileKind<ChrdevRecord> = {
  kind: 'chr',

  matches(fd: FdDesc): boolean {
    return fd.link.startsWith('/') && fd.stat.isCharacterDevice() && !isTerminal(fd.stat.rdev);
  },

  precheck(fd: FdDesc): void {
    // A node whose name was removed is made again at restore, which only the memory devices
    // may be (see above): any other is refused, before the tree is touched.
    if (isRemoved(fd) && !remakeable(major(fd.stat.rdev), minor(fd.stat.rdev))) {
      throw new FerryError('EUNSUPPORTED', `unsupported file: pid ${fd.pid} fd ${fd.fd} -> ${fd.link} (a character device node `
        + `${major(fd.stat.rdev)}:${minor(fd.stat.rdev)} whose name was removed cannot be checkpointed: only removed nodes of `
        + `${[...REMAKEABLE.values()].join(', ')} (1:${[...REMAKEABLE.keys()].join(', 1:')}) can be made again; open the device by a name that stays)`);
    }
  },

  key(fd: FdDesc): string {
    return `chr:${fd.stat.rdev}:${fd.stat.ino}:${fd.fdinfo.flags & ~O_CLOEXEC}`;
  },

  dump(fd: FdDesc): Omit<ChrdevRecord, 'id' | 'kind'> {
    const removed = isRemoved(fd);
    return {
      path: removed ? fd.link.slice(0, -REMOVED.length) : fd.link,
      flags: fd.fdinfo.flags & ~O_CLOEXEC,
      pos: fd.fdinfo.pos.toString(),
      major: major(fd.stat.rdev),
      minor: minor(fd.stat.rdev),
      ...(removed ? {
        removed: { mode: Number(fd.stat.mode & 0o7777n), uid: Number(fd.stat.uid), gid: Number(fd.stat.gid) },
        dev: fd.stat.dev.toString(),
        ino: fd.stat.ino.toString(),
      } : {}),
    };
  },

  check(rec: ChrdevRecord): void {
    // The image is input: every field this module uses must be there, of its type.
    const num = (v: unknown): boolean => Number.isSafeInteger(v) && (v as number) >= 0 && (v as number) < 2 ** 32;
    if (typeof rec.path !== 'string' || !rec.path.startsWith('/') || rec.path.includes('\0') || rec.path.length > 4096
      || !num(rec.major) || !num(rec.minor) || !num(rec.flags)
      || imagePos(rec.pos) === undefined) {
      throw new FerryError('EIMAGE', `image: character device (file ${rec.id}) needs an absolute path, flags, pos, major and minor`);
    }
    // Resolved inside the process's recorded root (confined.ts), as open() will.
    const { root, path } = placeOf(rec);
    const what = `character device (file ${rec.id} of the image)`;
    if (rec.removed !== undefined) {
      const r = rec.removed as unknown as Record<string, unknown>;
      const id = (v: unknown): boolean => Number.isSafeInteger(v) && (v as number) >= 0 && (v as number) < 2 ** 32 - 1;
      if (typeof r !== 'object' || r === null || !Number.isSafeInteger(r.mode) || (r.mode as number) < 0 || (r.mode as number) > 0o7777
        || !id(r.uid) || !id(r.gid)) throw new FerryError('EIMAGE', `image: character device (file ${rec.id}) has an invalid removed mode or owner`);
      if (!remakeable(rec.major, rec.minor)) {
        throw new FerryError('EIMAGE', `image: character device (file ${rec.id}) is a removed node of ${rec.major}:${rec.minor}, which restore does not make (only 1:${[...REMAKEABLE.keys()].join(', 1:')})`);
      }
      if (path.split('/').some((c) => c === '..') || path.endsWith('/')) throw new FerryError('EIMAGE', `image: character device (file ${rec.id}) has no valid path`);
      const ident = (v: unknown): boolean => typeof v === 'string' && /^\d{1,20}$/.test(v);
      if ((rec.dev !== undefined || rec.ino !== undefined) && !(ident(rec.dev) && ident(rec.ino))) {
        throw new FerryError('EIMAGE', `image: character device (file ${rec.id}) has an invalid removed node identity (dev, ino)`);
      }
      return; // made at open, in its directory or one made for it
    }
    const st = statIn(root, path, what);
    if (!st) throw new FerryError('ENOENT', `${what}: ${shownIn(root, path)} (${rec.major}:${rec.minor}) does not exist here`, { path: rec.path });
    const why = notTheDevice(rec, st);
    if (why !== undefined) throw new FerryError('ECHANGED', `${what}: ${shownIn(root, path)} ${why}: refused, nothing was opened`, { path: rec.path });
  },

  open(rec: ChrdevRecord, ctx: OpenContext): number {
    const { root, path } = placeOf(rec);
    const what = `character device (file ${rec.id} of the image)`;
    let fd: number;
    try {
      fd = rec.removed !== undefined ? openRemoved(rec, ctx, root, path, what)
        : reopenIn(root, path, (rec.flags & REOPEN_FLAGS) | O_NOCTTY, what, (st) => notTheDevice(rec, st));
    } catch (err) {
      if (err instanceof FerryError) throw err;
      const how = rec.removed !== undefined ? 'cannot make the removed node again (mknod, open) as' : 'cannot open';
      throw new FerryError('EOPEN', `${what}: ${how} ${shownIn(root, path)}: ${(err as Error).message}`, { cause: err, path: rec.path });
    }
    const pos = BigInt(rec.pos);
    if (pos !== 0n) native().lseek(fd, pos, 0);
    return fd;
  },
};
