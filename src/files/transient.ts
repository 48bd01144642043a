/**
 * Names that restore makes for a moment. A few things a process held can only be opened again
 * through a name that no longer exists: a removed working or held-open directory (made, entered
 * or opened, removed: files/confined.ts withRemovedDir), a removed FIFO (mkfifo, open, unlink:
 * files/pipe.ts), a removed name of a file that has another (a hard link made, opened,
 * unlinked: files/linked.ts), a removed device node (mknod, open, unlink: files/chrdev.ts), the
 * removed FIFO or symlink of an O_PATH descriptor (mkfifo or symlink, open O_PATH, unlink:
 * files/regular.ts), a deleted file made again (create, unlink: files/deleted.ts).
 * Each name exists for the span of a syscall or two and is removed on every way out that ferry
 * lives through; but if ferry is SIGKILLed in that span, no kernel mechanism removes a name
 * for it.
 *
 * So each such name is written down first, in a journal of ferry's own
 * (/run/ferry/transient, root's, 0700): one file per name, made before the name and removed
 * after it. Between the making and the removal the restore passes the fault point `transient`
 * (transientMade), where the fault cells kill it. `sweepTransientNames` (at the start of every
 * restore, and by `ferry check`) takes each entry whose ferry is gone (its pid and start time no
 * longer match) and removes the name if it is still the very node ferry made: in the very
 * directory it was made in (device and inode recorded, the directory opened once and the name
 * looked at and removed relative to it, never resolved again), the inode the entry records,
 * and the shape ferry gave it: an empty directory of root's with mode 0700, a FIFO of root's
 * with mode 0600, a character device node of root's with mode 0600 and the device number the
 * entry records, a symlink of root's, an empty regular file of root's with mode 0600 and one
 * link, or a further name of the file's inode (which still has
 * another). Anything else at that name is someone else's by now and is left alone; the entry
 * goes either way.
 *
 * A node ferry makes (a directory, FIFO, device node or symlink: makeTransient) has no inode
 * to write down before it exists, and a node of the same shape that someone else makes at
 * that name after a ferry died must not go. So it is made under a name of ferry's own
 * (`.ferry-transient-PID-START-N` beside it, the entry naming it), its inode written into the
 * entry (a new entry file renamed over the old: whole or not at all), and only then renamed to
 * its name (RENAME_NOREPLACE). A ferry killed before the inode is written leaves the node under
 * its own name alone, which the sweep removes by its shape; after, the inode decides, under
 * either name. A linked name's inode is the file's, known before.
 */
import { closeSync, fstatSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, writeSync, type BigIntStats } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { errnoCode } from '../errors.js';
import { faultPointSync } from '../fault.js';
import { native } from '../native/binding.js';
import { O_DIRECTORY, O_PATH } from '../proc/fcntl.js';
import { startTimeOf } from '../proc/read.js';

const O_NOFOLLOW = 0o400000, AT_REMOVEDIR = 0x200, RENAME_NOREPLACE = 1;
/** openat2(2) resolve: the name itself, in the directory, no link followed. */
const RESOLVE_BENEATH = 0x08, RESOLVE_NO_SYMLINKS = 0x04, RESOLVE_NO_MAGICLINKS = 0x02;
const NAME_ONLY = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
/** The names ferry makes its nodes under before they get theirs (makeTransient). */
const OWN_NAME = /^\.ferry-transient-\d+-\d+-\d+$/;

/** Where the entries live. */
export const TRANSIENT_DIR = '/run/ferry/transient';

/** What a transient name is. */
export type TransientKind = 'dir' | 'fifo' | 'link' | 'chr' | 'symlink' | 'file';

interface Entry {
  pid: number;
  start: string;
  kind: TransientKind;
  /** The name, as the host sees it (the root's path joined with the path inside it). */
  path: string;
  /**
   * The inode the name leads to: a `link`'s from the start, a made node's once it exists
   * (absent until then, and in an older ferry's entries: such a name is left).
   */
  ino?: string;
  /** A made node's own name beside `path`, which it has until it is renamed to `path`. */
  temp?: string;
  /** `chr`: the device number of the node, `major:minor`. */
  rdev?: string;
  /**
   * The directory the name is made in, `dev:ino`, as it was then: the sweep acts only in that
   * very directory (a root under /proc/PID/root may be another process's by then).
   */
  parent?: string;
}

let counter = 0;
let ownStart: string | undefined;


/**
 * Writes down that name `path` (inside the root at `rootPath`) of a file's inode `ino` is
 * about to be linked, before it is; returns the function that forgets it, to call once the
 * name is removed again (or was never made).
 */
export function noteTransient(kind: 'link', rootPath: string, path: string, ino: string): () => void {
  const at = hostPath(rootPath, path);
  const parent = identity(dirname(at));
  return writeEntry({ kind, path: at, ino, ...(parent !== undefined ? { parent } : {}) }).forget;
}

/**
 * What makeTransient made: the function that forgets its entry (to call once the node is
 * removed again, and only then), and the node's device and inode as made, for the caller to
 * tell its own node from one put at the name after it (confined.ts withRemovedDir).
 */
export type TransientMade = (() => void) & { readonly dev: bigint; readonly ino: bigint };

/**
 * Makes node `path` (inside the root at `rootPath`; its directory open as `dirfd`) of kind
 * `kind` for a moment, written down so that the sweep can tell the very node (see above):
 * `make(dirfd, name)` makes it under a name of ferry's own, which is then renamed to its own.
 * Returns the function that forgets it (with the node's dev and ino), to call once it is
 * removed again; undefined when the name is taken (nothing made is left). `rdev`: a `chr`'s
 * `major:minor`. Errors are the syscalls' own (the caller says what was being made).
 */
export function makeTransient(kind: 'dir' | 'fifo' | 'chr' | 'symlink' | 'file', rootPath: string, path: string, dirfd: number, rdev: string | undefined,
  make: (dirfd: number, name: string) => void): TransientMade | undefined {
  const n = native();
  const dir = fstatSync(dirfd, { bigint: true });
  const name = basename(path);
  ownStart ??= startTimeOf(process.pid) ?? '0';
  const temp = `.ferry-transient-${process.pid}-${ownStart}-${++counter}`;
  const entry: Omit<Entry, 'pid' | 'start'> = {
    kind, path: hostPath(rootPath, path), temp, parent: `${dir.dev}:${dir.ino}`, ...(rdev !== undefined ? { rdev } : {}),
  };
  const journal = writeEntry(entry);
  try {
    make(dirfd, temp);
  } catch (err) {
    journal.forget();
    throw err;
  }
  let st: BigIntStats | undefined;
  try {
    st = statAt(dirfd, temp);
    if (st === undefined) throw Object.assign(new Error(`${temp} vanished once made`), { code: 'ENOENT' });
    journal.rewrite({ ...entry, ino: String(st.ino) });
    n.renameat2(dirfd, temp, dirfd, name, RENAME_NOREPLACE);
  } catch (err) {
    try {
      n.unlinkat(dirfd, temp, kind === 'dir' ? AT_REMOVEDIR : 0);
      journal.forget();
    } catch { /* left in the journal: the sweep removes it */ }
    if (errnoCode(err) === 'EEXIST') return undefined;
    throw err;
  }
  return Object.assign(() => journal.forget(), { dev: st.dev, ino: st.ino });
}

/** Writes `e` as a new entry of this ferry; `rewrite` replaces it whole, `forget` removes it. */
function writeEntry(e: Omit<Entry, 'pid' | 'start'>): { rewrite(e: Omit<Entry, 'pid' | 'start'>): void; forget(): void } {
  mkdirSync(TRANSIENT_DIR, { recursive: true, mode: 0o700 });
  ownStart ??= startTimeOf(process.pid) ?? '0';
  const file = join(TRANSIENT_DIR, `${process.pid}-${String(++counter).padStart(8, '0')}.json`);
  const write = (to: string, what: Omit<Entry, 'pid' | 'start'>): void => {
    const fd = openSync(to, 'wx', 0o600);
    try {
      writeSync(fd, JSON.stringify({ pid: process.pid, start: ownStart, ...what }));
    } finally {
      closeSync(fd);
    }
  };
  write(file, e);
  return {
    // A new file renamed over the old one: a sweep reads the one or the other whole. (Killed
    // between the two, both are left; each is swept, and the name is the inode's either way.)
    rewrite: (what) => {
      rmSync(`${file}.new`, { force: true });
      write(`${file}.new`, what);
      renameSync(`${file}.new`, file);
    },
    forget: () => rmSync(file, { force: true }),
  };
}

/** The fault point between a transient name's making and its removal. */
export function transientMade(): void {
  faultPointSync('transient');
}

/** `dev:ino` of directory `path`, or undefined. */
function identity(path: string): string | undefined {
  try {
    const st = lstatSync(path, { bigint: true });
    return st.isDirectory() ? `${st.dev}:${st.ino}` : undefined;
  } catch {
    return undefined;
  }
}

function hostPath(rootPath: string, path: string): string {
  return rootPath === '/' ? path : `${rootPath.replace(/\/$/, '')}/${path.replace(/^\//, '')}`;
}

/**
 * Removes the names that ferries which died left (see above). Returns how many it removed.
 * Never throws: a journal it cannot read is left for the next sweep.
 */
export function sweepTransientNames(log?: { warn(o: object, m: string): void }): number {
  let files: string[];
  try {
    files = readdirSync(TRANSIENT_DIR);
  } catch {
    return 0; // no journal: nothing was ever left
  }
  let removed = 0;
  // The latest first: a directory made inside another made one goes before it.
  for (const f of files.sort().reverse()) {
    const file = join(TRANSIENT_DIR, f);
    let e: Entry;
    try {
      e = JSON.parse(readFileSync(file, 'utf8')) as Entry;
    } catch {
      continue; // being written by a live ferry, or not ours
    }
    if (!Number.isInteger(e.pid) || startTimeOf(e.pid) === e.start) continue; // its ferry lives
    try {
      if (removeIfOurs(e)) removed++;
    } catch (err) {
      log?.warn({ err, path: e.path }, 'a name a killed restore made could not be removed');
    }
    rmSync(file, { force: true });
  }
  return removed;
}

/**
 * Removes `e`'s name if it is still the node ferry made (see above); whether it did. Its
 * directory is opened once and everything else is done relative to it.
 */
function removeIfOurs(e: Entry): boolean {
  if (typeof e.path !== 'string' || !e.path.startsWith('/') || typeof e.parent !== 'string') return false;
  let dir: number;
  try {
    dir = openSync(dirname(e.path), O_PATH | O_DIRECTORY | O_NOFOLLOW);
  } catch {
    return false; // gone
  }
  try {
    // Only in the directory it was made in (another one may have its path by now).
    const st = fstatSync(dir, { bigint: true });
    if (`${st.dev}:${st.ino}` !== e.parent) return false;
    const temp = typeof e.temp === 'string' && OWN_NAME.test(e.temp) && removeAt(dir, e.temp, e, true);
    return removeAt(dir, basename(e.path), e, false) || temp;
  } finally {
    closeSync(dir);
  }
}

/**
 * Removes `name` in directory `dir` if it is `e`'s node: the recorded inode, on the directory's
 * filesystem, and the shape ferry gave it; with no inode recorded (a ferry killed between the
 * making and the writing down) only under a name of ferry's own (`own`), by its shape.
 */
function removeAt(dir: number, name: string, e: Entry, own: boolean): boolean {
  const st = statAt(dir, name);
  if (st === undefined) return false;
  if (e.ino !== undefined ? st.ino.toString() !== e.ino || `${st.dev}` !== e.parent!.split(':')[0] : !own) return false;
  const mode = Number(st.mode & 0o7777n);
  switch (e.kind) {
    case 'dir':
      if (!st.isDirectory() || st.uid !== 0n || mode !== 0o700) return false;
      break;
    case 'fifo':
      if (!st.isFIFO() || st.uid !== 0n || mode !== 0o600) return false;
      break;
    case 'chr': {
      const rdev = `${Number(((st.rdev >> 8n) & 0xfffn) | ((st.rdev >> 32n) & ~0xfffn))}:${Number((st.rdev & 0xffn) | ((st.rdev >> 12n) & ~0xffn))}`;
      if (!st.isCharacterDevice() || st.uid !== 0n || mode !== 0o600 || rdev !== e.rdev) return false;
      break;
    }
    case 'symlink':
      if (!st.isSymbolicLink() || st.uid !== 0n) return false; // its mode is always 0777
      break;
    case 'file':
      // A deleted file made again, before its contents and owner (files/deleted.ts): empty.
      if (!st.isFile() || st.uid !== 0n || mode !== 0o600 || st.nlink !== 1n || st.size !== 0n) return false;
      break;
    case 'link':
      // The recorded inode, and another name besides.
      if (!st.isFile() || e.ino === undefined || st.nlink < 2n) return false;
      break;
    default:
      return false;
  }
  try {
    native().unlinkat(dir, name, e.kind === 'dir' ? AT_REMOVEDIR : 0); // a directory only if empty
  } catch {
    return false;
  }
  return true;
}

/** lstat of `name` in directory `dir`, resolving nothing else; undefined when it is not there. */
function statAt(dir: number, name: string): BigIntStats | undefined {
  let fd: number;
  try {
    fd = native().openat2(dir, name, O_PATH | O_NOFOLLOW, 0, NAME_ONLY);
  } catch {
    return undefined;
  }
  try {
    return fstatSync(fd, { bigint: true });
  } finally {
    native().closeFd(fd);
  }
}
