/**
 * Names that restore makes for a moment. A few things a process held can only be opened again
 * through a name that no longer exists: a removed working or held-open directory (made, entered
 * or opened, removed: files/confined.ts withRemovedDir), a removed FIFO (mkfifo, open, unlink:
 * files/pipe.ts), a removed name of a file that has another (a hard link made, opened,
 * unlinked: files/linked.ts), a removed device node (mknod, open, unlink: files/chrdev.ts).
 * Each name exists for the span of a syscall or two and is removed on every way out that ferry
 * lives through; but if ferry is SIGKILLed in that span, no kernel mechanism removes a name
 * for it.
 *
 * So each such name is written down first, in a journal of ferry's own
 * (/run/ferry/transient, root's, 0700): one file per name, made before the name and removed
 * after it (noteTransient). Between the making and the removal the restore passes the fault
 * point `transient` (transientMade), where the fault cells kill it. `sweepTransientNames` (at the start of every restore, and by `ferry check`) takes
 * each entry whose ferry is gone (its pid and start time no longer match) and removes the name
 * if it is still what ferry made, in the very directory it was made in (device and inode
 * recorded): an empty directory of root's with mode 0700, a FIFO of root's with mode 0600, a
 * character device node of root's with mode 0600 and the device number the entry records, or
 * a further name of the inode the entry records (which still has another). Anything else at that name is someone else's by now and is left alone; the entry
 * goes either way.
 */
import { closeSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, rmdirSync, rmSync, unlinkSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { faultPointSync } from '../fault.js';
import { startTimeOf } from '../proc/read.js';

/** Where the entries live. */
export const TRANSIENT_DIR = '/run/ferry/transient';

/** What a transient name is. */
export type TransientKind = 'dir' | 'fifo' | 'link' | 'chr';

interface Entry {
  pid: number;
  start: string;
  kind: TransientKind;
  /** The name, as the host sees it (the root's path joined with the path inside it). */
  path: string;
  /** `link`: the inode the name leads to. */
  ino?: string;
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
 * Writes down that name `path` (inside the root at `rootPath`) of kind `kind` is about to be
 * made, before it is; returns the function that forgets it, to call once the name is removed
 * again (or was never made). `id`: the inode a `link` leads to, the `major:minor` of a `chr`.
 */
export function noteTransient(kind: TransientKind, rootPath: string, path: string, id?: string): () => void {
  mkdirSync(TRANSIENT_DIR, { recursive: true, mode: 0o700 });
  ownStart ??= startTimeOf(process.pid) ?? '0';
  const at = hostPath(rootPath, path);
  const parent = identity(dirname(at));
  const entry: Entry = {
    pid: process.pid, start: ownStart, kind, path: at, ...(id !== undefined ? (kind === 'chr' ? { rdev: id } : { ino: id }) : {}),
    ...(parent !== undefined ? { parent } : {}),
  };
  const file = join(TRANSIENT_DIR, `${process.pid}-${String(++counter).padStart(8, '0')}.json`);
  const fd = openSync(file, 'wx', 0o600);
  try {
    writeSync(fd, JSON.stringify(entry));
  } finally {
    closeSync(fd);
  }
  return () => rmSync(file, { force: true });
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

/** Removes `e`'s name if it is still what ferry made; whether it did. */
function removeIfOurs(e: Entry): boolean {
  if (typeof e.path !== 'string' || !e.path.startsWith('/')) return false;
  // Only in the directory it was made in (another one may have its path by now).
  if (e.parent === undefined || identity(dirname(e.path)) !== e.parent) return false;
  let st;
  try {
    st = lstatSync(e.path, { bigint: true });
  } catch {
    return false; // gone
  }
  const mode = Number(st.mode & 0o7777n);
  switch (e.kind) {
    case 'dir':
      if (!st.isDirectory() || st.uid !== 0n || mode !== 0o700) return false;
      try {
        rmdirSync(e.path); // only if empty
      } catch {
        return false;
      }
      return true;
    case 'fifo':
      if (!st.isFIFO() || st.uid !== 0n || mode !== 0o600) return false;
      unlinkSync(e.path);
      return true;
    case 'chr': {
      const rdev = `${Number(((st.rdev >> 8n) & 0xfffn) | ((st.rdev >> 32n) & ~0xfffn))}:${Number((st.rdev & 0xffn) | ((st.rdev >> 12n) & ~0xffn))}`;
      if (!st.isCharacterDevice() || st.uid !== 0n || mode !== 0o600 || rdev !== e.rdev) return false;
      unlinkSync(e.path);
      return true;
    }
    case 'link':
      // The same filesystem as its directory, the recorded inode, and another name besides.
      if (!st.isFile() || st.ino.toString() !== e.ino || `${st.dev}` !== e.parent.split(':')[0] || st.nlink < 2n) return false;
      unlinkSync(e.path);
      return true;
    default:
      return false;
  }
}
