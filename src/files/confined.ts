/**
 * Confined file operations: every path an image names is resolved by the kernel inside a root
 * directory, never by string checks, so that a symlink, a "..", or a /proc magic link on the
 * way cannot lead to a file outside it (docs/security.md, "Confinement"). An image is input:
 * whoever can edit it (and recompute its hashes) chooses every path in it.
 *
 * A `ConfinedRoot` holds an O_PATH descriptor of the root; every lookup is openat2(2) relative
 * to it with one of three confinements:
 *   'in-root'  RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS: the root acts as "/" for the lookup,
 *              as it does for the process that lives in it (chroot semantics): absolute paths,
 *              absolute symlinks and ".." stay inside. For the files a process had open: its
 *              recorded root ('/' on the host, which confines nothing but still refuses
 *              magic links; a container's /proc/<init>/root).
 *   'in-root-no-symlinks'  'in-root' and RESOLVE_NO_SYMLINKS: the same, walking real
 *              directories only. For the files an untrusted image's processes had open by
 *              path (restore/file-access.ts): the directories judged by name are then the
 *              ones the open walks through. A path read from /proc/PID/fd has no symlink in it.
 *   'beneath'  RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS: nothing but real
 *              directories under the root may be walked. For trees an image writes (a
 *              container's rootfs changes, its /dev/shm): a symlink the image itself made is
 *              created as a symlink and never followed while applying.
 * Operations on a name (create, mkdir, unlink, symlink, rename, chown) resolve its parent
 * directory that way, then act on the last component through the parent's descriptor with the
 * *at() calls, which never follow it. A path that would leave the root is refused with a
 * FerryError 'ECONFINE' naming the image record or entry and the path.
 */
import { chmodSync, closeSync, fchmodSync, fchownSync, fstatSync, readdirSync, writeSync, type BigIntStats } from 'node:fs';
import { FerryError, errnoCode } from '../errors.js';
import type { FileRecord } from '../image/records.js';
import { native } from '../native/binding.js';
import { O_DIRECTORY, O_PATH } from '../proc/fcntl.js';
import { makeTransient, transientMade, type TransientMade } from './transient.js';

/** openat2(2) resolve flags (linux/openat2.h). */
export const RESOLVE_NO_XDEV = 0x01, RESOLVE_NO_MAGICLINKS = 0x02, RESOLVE_NO_SYMLINKS = 0x04,
  RESOLVE_BENEATH = 0x08, RESOLVE_IN_ROOT = 0x10;

/** sizeof(struct open_how): { u64 flags; u64 mode; u64 resolve }. */
export const OPEN_HOW_SIZE = 24;

/**
 * struct open_how for an openat2(2) a task makes itself (injected, restore/address-space.ts,
 * root-dir.ts): `flags`, no mode (nothing is created), `resolve`.
 */
export function openHow(flags: number, resolve: number): Buffer {
  const how = Buffer.alloc(OPEN_HOW_SIZE);
  how.writeBigUInt64LE(BigInt(flags), 0);
  how.writeBigUInt64LE(BigInt(resolve), 16);
  return how;
}

const O_RDONLY = 0, O_WRONLY = 1, O_CREAT = 0o100, O_EXCL = 0o200, O_NOFOLLOW = 0o400000;
const AT_REMOVEDIR = 0x200, AT_SYMLINK_NOFOLLOW = 0x100, RENAME_NOREPLACE = 1;
/** How often a lookup the kernel gave up on (EAGAIN: a ".." raced with a rename) is retried. */
const EAGAIN_TRIES = 16;
/** Deepest directory tree `removeIn` walks. */
const MAX_DEPTH = 512;

/** How a root confines the paths resolved under it (see the module comment). */
export type Confinement = 'in-root' | 'in-root-no-symlinks' | 'beneath';

const RESOLVE: Readonly<Record<Confinement, number>> = {
  'in-root': RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
  'in-root-no-symlinks': RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
  beneath: RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
};

/** The flags a single name is acted on with under its parent: nothing but the name itself. */
export const NAME_RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;

/** A directory every image path of one kind is resolved in, held open as an O_PATH descriptor. */
export class ConfinedRoot {
  private handle: number;

  /**
   * Opens `path` (a path ferry chose: '/', /proc/<pid>/root, a bundle's rootfs; followed as
   * given, magic links included) as a root. `path` names it in messages.
   */
  constructor(readonly path: string, readonly confinement: Confinement, fd?: number) {
    this.handle = fd ?? native().openRaw(path, O_PATH | O_DIRECTORY);
  }

  /** The root's O_PATH descriptor; throws once closed. */
  get fd(): number {
    if (this.handle < 0) throw new Error(`confined root ${this.path} used after close`);
    return this.handle;
  }

  /** The openat2 resolve flags of this root's confinement. */
  get resolve(): number {
    return RESOLVE[this.confinement];
  }

  /** A directory under this root (resolved with its confinement) as a root of its own. */
  within(path: string, confinement: Confinement, what: string): ConfinedRoot {
    const fd = openIn(this, path, O_PATH | O_DIRECTORY, what);
    return new ConfinedRoot(`${this.path.replace(/\/$/, '')}/${path.replace(/^\//, '')}`, confinement, fd);
  }

  /** Whether the descriptor is still open. */
  get open(): boolean {
    return this.handle >= 0;
  }

  /** Closes the descriptor (again: nothing). */
  close(): void {
    if (this.handle < 0) return;
    native().closeFd(this.handle);
    this.handle = -1;
  }
}

let host: ConfinedRoot | undefined;

/** The host's '/', 'in-root': confines nothing, refuses magic links. Opened once per process. */
export function hostRoot(): ConfinedRoot {
  if (!host?.open) host = new ConfinedRoot('/', 'in-root');
  return host;
}

/** `path` as messages show it: inside its root. */
function shown(root: ConfinedRoot, path: string): string {
  const inside = path.startsWith('/') ? path : `/${path}`;
  return root.path === '/' ? inside : `${inside} (in ${root.path})`;
}

/**
 * The error for a failed lookup: an escape (EXDEV), a refused link (ELOOP) or a lookup the
 * kernel could not make safe (EAGAIN) becomes ECONFINE naming `what` and the path; anything
 * else (ENOENT, EACCES…) is the native error, for the caller to put in its own words.
 * `noSymlinks`: the lookup refused every symlink (so ELOOP means one was met).
 */
function confinedError(err: unknown, root: ConfinedRoot, path: string, what: string,
  noSymlinks = root.confinement !== 'in-root'): unknown {
  const at = shown(root, path);
  const opts = { cause: err, path };
  switch (errnoCode(err)) {
    case 'EXDEV':
      return new FerryError('ECONFINE', `${what}: ${at} leads outside ${root.path} (through "..", an absolute path or symlink, `
        + 'or a mount point): refused, nothing outside was touched', opts);
    case 'ELOOP':
      return new FerryError('ECONFINE', noSymlinks
        ? `${what}: ${at} is or goes through a symbolic link, which is not followed here: refused`
        : `${what}: ${at} goes through a /proc magic link (or a loop of symbolic links): refused`, opts);
    case 'EAGAIN':
      return new FerryError('ECONFINE', `${what}: ${at} could not be resolved safely inside ${root.path} `
        + '(renames kept racing with the lookup): try again', opts);
    default:
      return err;
  }
}

/** Refuses a path the kernel cannot be handed as it is. */
function checkPath(root: ConfinedRoot, path: string, what: string): void {
  if (typeof path !== 'string' || path.includes('\0')) {
    throw new FerryError('ECONFINE', `${what}: ${JSON.stringify(String(path).slice(0, 80))} is not a path (NUL byte)`);
  }
  if (root.confinement === 'beneath' && path.startsWith('/')) {
    throw new FerryError('ECONFINE', `${what}: ${path} is absolute, where a path inside ${root.path} is expected: refused`, { path });
  }
}

/** openat2 with EAGAIN retried. */
function at2(dirfd: number, path: string, flags: number, mode: number, resolve: number): number {
  for (let i = 1; ; i++) {
    try {
      return native().openat2(dirfd, path, flags, mode, resolve);
    } catch (err) {
      if (errnoCode(err) !== 'EAGAIN' || i >= EAGAIN_TRIES) throw err;
    }
  }
}

/**
 * Opens `path` inside `root` with open(2) `flags` (O_CLOEXEC added; `mode` with O_CREAT).
 * Symlinks on the way resolve as the root's confinement says; `what` names the image record
 * or entry in errors.
 */
export function openIn(root: ConfinedRoot, path: string, flags: number, what: string, mode = 0): number {
  checkPath(root, path, what);
  try {
    return at2(root.fd, path === '' ? '.' : path, flags, mode, root.resolve);
  } catch (err) {
    throw confinedError(err, root, path, what);
  }
}

/** stat of `path` inside `root` (the final symlink followed unless `noFollow`), or undefined when absent. */
export function statIn(root: ConfinedRoot, path: string, what: string, noFollow = false): BigIntStats | undefined {
  let fd: number;
  try {
    fd = openIn(root, path, O_PATH | (noFollow ? O_NOFOLLOW : 0), what);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT' || errnoCode(err) === 'ENOTDIR') return undefined;
    throw err;
  }
  try {
    return fstatSync(fd, { bigint: true });
  } finally {
    native().closeFd(fd);
  }
}

/**
 * The parent directory of a path inside a root, open, and the path's last component: the
 * operations below act on that one name through the parent's descriptor and never follow it.
 */
export class Parent {
  private constructor(readonly root: ConfinedRoot, readonly path: string, readonly dir: number,
    readonly name: string, private readonly what: string, private readonly owned = true) {}

  /**
   * `name` in a directory the caller holds open as `dirfd` (withRemovedDir's), never looked
   * up by path again; `path` (inside `root`) names it in errors. close() leaves `dirfd` open.
   */
  static in(root: ConfinedRoot, dirfd: number, name: string, path: string, what: string): Parent {
    checkPath(root, name, what);
    if (name === '' || name === '.' || name === '..' || name.includes('/')) {
      throw new FerryError('ECONFINE', `${what}: ${shown(root, path)} does not name an entry of its directory: refused`, { path });
    }
    return new Parent(root, path, dirfd, name, what, false);
  }

  /** Opens the parent of `path` in `root`; close() it. A path that names no entry ('', '.', '..') is refused. */
  static of(root: ConfinedRoot, path: string, what: string): Parent {
    checkPath(root, path, what);
    const parts = path.split('/').filter((p) => p !== '' && p !== '.');
    const name = parts.pop();
    if (name === undefined || name === '..') {
      throw new FerryError('ECONFINE', `${what}: ${shown(root, path)} does not name an entry of ${root.path}: refused`, { path });
    }
    const dir = openIn(root, (path.startsWith('/') ? '/' : '') + parts.join('/'), O_PATH | O_DIRECTORY, what);
    return new Parent(root, path, dir, name, what);
  }

  private fail(err: unknown): unknown {
    return confinedError(err, this.root, this.path, this.what, true);
  }

  /** Opens the name itself (a symlink is refused with ECONFINE, except with O_PATH|O_NOFOLLOW). */
  open(flags: number, mode = 0): number {
    try {
      return at2(this.dir, this.name, flags, mode, NAME_RESOLVE);
    } catch (err) {
      throw this.fail(err);
    }
  }

  /** lstat of the name, or undefined when there is none. */
  lstat(): BigIntStats | undefined {
    let fd: number;
    try {
      fd = this.open(O_PATH | O_NOFOLLOW);
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return undefined;
      throw err;
    }
    try {
      return fstatSync(fd, { bigint: true });
    } finally {
      native().closeFd(fd);
    }
  }

  /**
   * mkdirat(2); an existing directory is fine when `existingOk`, an existing symlink is
   * refused with ECONFINE (it would be followed by whatever is made under it).
   */
  mkdir(mode: number, existingOk = false): void {
    try {
      native().mkdirat(this.dir, this.name, mode);
    } catch (err) {
      if (!existingOk || errnoCode(err) !== 'EEXIST') throw this.fail(err);
      const st = this.lstat();
      if (st?.isDirectory()) return;
      if (st?.isSymbolicLink()) throw this.fail(Object.assign(new Error('a symbolic link'), { code: 'ELOOP' }));
      throw err;
    }
  }

  /** unlinkat(2) of the name (AT_REMOVEDIR for an empty directory); absent is fine. */
  unlink(dir = false): void {
    try {
      native().unlinkat(this.dir, this.name, dir ? AT_REMOVEDIR : 0);
    } catch (err) {
      if (errnoCode(err) !== 'ENOENT') throw this.fail(err);
    }
  }

  /** Removes the name and, for a directory, everything under it; nothing is ever followed, no mount crossed. */
  remove(): void {
    removeAt(this.dir, this.name, 0, (err) => this.fail(err), `${this.what}: ${shown(this.root, this.path)}`);
  }

  /** symlinkat(2): a symlink holding the text `target`, never resolved here. */
  symlink(target: string): void {
    if (target.includes('\0')) throw new FerryError('ECONFINE', `${this.what}: the target of ${shown(this.root, this.path)} holds a NUL byte`);
    try {
      native().symlinkat(target, this.dir, this.name);
    } catch (err) {
      throw this.fail(err);
    }
  }

  /** fchownat(2) with AT_SYMLINK_NOFOLLOW: the name itself, a symlink included. */
  chown(uid: number, gid: number): void {
    try {
      native().fchownat(this.dir, this.name, uid, gid, AT_SYMLINK_NOFOLLOW);
    } catch (err) {
      throw this.fail(err);
    }
  }

  /** chmod of the name itself (through an O_PATH descriptor of it); a symlink has no mode and is left alone. */
  chmod(mode: number): void {
    const fd = this.open(O_PATH | O_NOFOLLOW);
    try {
      if (!fstatSync(fd).isSymbolicLink()) chmodSync(`/proc/self/fd/${fd}`, mode);
    } finally {
      native().closeFd(fd);
    }
  }

  /**
   * Puts a regular file with `data`, `mode` and owner at the name: written under a temporary
   * name, then renamed over it, so an existing file (or a hard link to one) is replaced, never
   * written into. A directory at the name must be removed first.
   */
  writeFile(data: Buffer, mode: number, owner?: { uid: number; gid: number }): void {
    const tmp = `.ferry-${process.pid}-${(seq = (seq + 1) % 1e9)}`;
    let fd: number;
    try {
      fd = at2(this.dir, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600, NAME_RESOLVE);
    } catch (err) {
      throw this.fail(err);
    }
    try {
      for (let at = 0; at < data.length;) at += writeSync(fd, data, at, data.length - at);
      if (owner) fchownSync(fd, owner.uid, owner.gid);
      fchmodSync(fd, mode); // after chown, which clears set-id bits
      closeSync(fd);
      fd = -1;
      native().renameat2(this.dir, tmp, this.dir, this.name, 0);
    } catch (err) {
      if (fd >= 0) closeSync(fd);
      try { native().unlinkat(this.dir, tmp, 0); } catch { /* renamed, or never made */ }
      throw this.fail(err);
    }
  }

  close(): void {
    if (this.owned) native().closeFd(this.dir);
  }
}
let seq = 0;

/** Runs `fn` with the parent of `path` in `root`, closed afterwards. */
export function withParent<T>(root: ConfinedRoot, path: string, what: string, fn: (p: Parent) => T): T {
  const p = Parent.of(root, path, what);
  try {
    return fn(p);
  } finally {
    p.close();
  }
}

/** A node openRemovedNode made: its O_PATH descriptor, and those it took as asked (`also`). */
export interface RemovedNodeMade {
  /** O_PATH | O_NOFOLLOW: the node itself, opening nothing. */
  held: number;
  /** One descriptor for each flags of `also`, in order, each its own open file. */
  also: number[];
}

/**
 * Makes a node for the moment, for records whose node was removed: `make` makes it (mode
 * 0600, root's) under `path`'s own name in its directory inside `root`, or a free name beside
 * it, written down first (transient.ts: a killed ferry's node goes with the next sweep); it is
 * taken (O_PATH | O_NOFOLLOW, opening nothing: a FIFO put in its place would block an open for
 * reading, a device's open is its driver's), taken again by name once for each flags of
 * `also` (O_PATH, O_NOFOLLOW or not: an O_PATH descriptor of a symlink itself can only be had
 * by a name, never through /proc/self/fd, whose magic link O_NOFOLLOW would give), and its
 * name removed at once. Then it must be ferry's with no name left (a node swapped in between
 * the make and the open is someone else's, or has a name of its own elsewhere, and must not be
 * given the image's owner by a root chown), each descriptor of `also` that same inode, and
 * `check` must find nothing wrong with it (ECHANGED otherwise). The caller opens it for I/O
 * through /proc/self/fd of `held`, and gives it its mode and owner. `inDir`: the directory
 * withRemovedDir made for `path`'s, in which the node is made through ferry's descriptor.
 */
export function openRemovedNode(root: ConfinedRoot, path: string, what: string, kind: 'fifo' | 'chr' | 'symlink', id: string | undefined,
  make: (dir: number, name: string) => void, check: (fd: number) => string | undefined, also: readonly number[] = [],
  inDir?: RemovedDir): RemovedNodeMade {
  const n = native();
  // In a directory withRemovedDir made: through ferry's descriptor of it, never by its path
  // again (someone who may write a directory above could have swapped a symlink in).
  const at = <U>(fn: (dir: { dir: number; name: string }) => U): U =>
    inDir !== undefined ? fn({ dir: inDir.fd, name: path.slice(path.lastIndexOf('/') + 1) }) : withParent(root, path, what, fn);
  return at((dir) => {
    for (let i = 0; i <= 100; i++) {
      const name = i === 0 ? dir.name : `${dir.name}.ferry-removed-${i}`;
      const forget = makeTransient(kind, root.path, `${path.slice(0, path.lastIndexOf('/'))}/${name}`, dir.dir, id, make);
      if (forget === undefined) continue; // taken
      transientMade();
      // NAME_RESOLVE refuses a symlink (ELOOP) unless O_PATH | O_NOFOLLOW asks for the link itself.
      const taken: number[] = [];
      let kept = false;
      try {
        try {
          taken.push(n.openat2(dir.dir, name, O_PATH | O_NOFOLLOW, 0, NAME_RESOLVE));
          for (const flags of also) taken.push(n.openat2(dir.dir, name, flags & (O_PATH | O_NOFOLLOW), 0, NAME_RESOLVE));
        } catch (err) {
          try {
            n.unlinkat(dir.dir, name, 0);
            forget();
          } catch { /* left in the journal: the next sweep removes it if it is still ours */ }
          throw err;
        }
        n.unlinkat(dir.dir, name, 0); // if this fails, the journal keeps the name for the sweep
        forget();
        // The node made is ferry's and had that one name: one swapped in between the make and
        // the open (someone who may write the directory) is another's, or has a name of its
        // own elsewhere, and must not be given the image's owner by a root chown.
        const held = taken[0]!;
        const st = fstatSync(held, { bigint: true });
        if (st.nlink !== 0n || st.uid !== BigInt(process.geteuid?.() ?? 0)) {
          throw new FerryError('ECHANGED', `${what}: the node made for it was replaced before it was opened (${st.nlink !== 0n ? 'it has another name' : `owner ${st.uid}`})`);
        }
        for (const fd of taken.slice(1)) {
          const other = fstatSync(fd, { bigint: true });
          if (other.dev !== st.dev || other.ino !== st.ino) throw new FerryError('ECHANGED', `${what}: the node made for it was replaced while it was opened`);
        }
        const why = check(held);
        if (why !== undefined) throw new FerryError('ECHANGED', `${what}: the node made for it was replaced before it was opened (${why})`);
        kept = true;
        return { held, also: taken.slice(1) };
      } finally {
        if (!kept) for (const fd of taken) n.closeFd(fd);
      }
    }
    throw new FerryError('EEXIST', `${what}: its name ${path} and 100 others beside it are taken`);
  });
}

/** Removes `name` under directory `dirfd`, a directory with all it holds. */
function removeAt(dirfd: number, name: string, depth: number, fail: (err: unknown) => unknown, what: string): void {
  const n = native();
  try {
    n.unlinkat(dirfd, name, 0);
    return;
  } catch (err) {
    const code = errnoCode(err);
    if (code === 'ENOENT') return;
    if (code !== 'EISDIR') throw fail(err);
  }
  if (depth >= MAX_DEPTH) throw new FerryError('ECONFINE', `${what} holds directories more than ${MAX_DEPTH} deep: not removed`);
  let sub: number;
  try {
    sub = at2(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, 0, NAME_RESOLVE | RESOLVE_NO_XDEV);
  } catch (err) {
    throw fail(err);
  }
  try {
    for (const child of readdirSync(`/proc/self/fd/${sub}`)) removeAt(sub, child, depth + 1, fail, what);
  } finally {
    n.closeFd(sub);
  }
  try {
    n.unlinkat(dirfd, name, AT_REMOVEDIR);
  } catch (err) {
    if (errnoCode(err) !== 'ENOENT') throw fail(err);
  }
}

/** mkdir of `path` in `root` (the parent must exist); an existing directory is fine when `existingOk`. */
export function mkdirIn(root: ConfinedRoot, path: string, mode: number, what: string, existingOk = false): void {
  withParent(root, path, what, (p) => p.mkdir(mode, existingOk));
}

/** Creates every missing directory of `path` in `root`, component by component, with `mode`. */
export function mkdirsIn(root: ConfinedRoot, path: string, mode: number, what: string): void {
  const parts = path.split('/').filter((x) => x !== '' && x !== '.');
  for (let i = 1; i <= parts.length; i++) mkdirIn(root, parts.slice(0, i).join('/'), mode, what, true);
}

/** Unlinks `path` in `root` (an empty directory with `dir`); the name itself, never a symlink's target. */
export function unlinkIn(root: ConfinedRoot, path: string, what: string, dir = false): void {
  withParent(root, path, what, (p) => p.unlink(dir));
}

/** Removes `path` in `root` and everything under it, following nothing. */
export function removeIn(root: ConfinedRoot, path: string, what: string): void {
  withParent(root, path, what, (p) => p.remove());
}

/** Creates the symlink `path` -> `target` in `root` (the target is text, not resolved). */
export function symlinkIn(root: ConfinedRoot, target: string, path: string, what: string): void {
  withParent(root, path, what, (p) => p.symlink(target));
}

/** Renames `from` to `to`, both in `root` (`noReplace`: EEXIST rather than replacing). */
export function renameIn(root: ConfinedRoot, from: string, to: string, what: string, noReplace = false): void {
  withParent(root, from, what, (a) => withParent(root, to, what, (b) => {
    try {
      native().renameat2(a.dir, a.name, b.dir, b.name, noReplace ? RENAME_NOREPLACE : 0);
    } catch (err) {
      throw confinedError(err, root, to, what);
    }
  }));
}

/** chmod of `path` in `root` (the name itself). */
export function chmodIn(root: ConfinedRoot, path: string, mode: number, what: string): void {
  withParent(root, path, what, (p) => p.chmod(mode));
}

/** chown of `path` in `root` (the name itself, a symlink included). */
export function chownIn(root: ConfinedRoot, path: string, uid: number, gid: number, what: string): void {
  withParent(root, path, what, (p) => p.chown(uid, gid));
}

/** Puts a regular file at `path` in `root` (see Parent.writeFile: replaced, never written into). */
export function writeFileIn(root: ConfinedRoot, path: string, data: Buffer, mode: number, what: string,
  owner?: { uid: number; gid: number }): void {
  withParent(root, path, what, (p) => p.writeFile(data, mode, owner));
}

// ---- where a file record's path resolves (install.ts tells the modules) ----

/** A record's path as its module must resolve it: `path` inside `root`. */
export interface Place {
  root: ConfinedRoot;
  path: string;
}

const places = new WeakMap<object, Place>();

/** Says where `rec`'s path resolves (the restore scheduler, for each record it hands a module). */
export function placeRecord(rec: FileRecord, place: Place): void {
  places.set(rec, place);
}

/** Where `rec.path` resolves: the place the scheduler gave, else `rec.path` on the host ('/', in-root). */
export function placeOf(rec: FileRecord & { path: string }): Place {
  return places.get(rec) ?? { root: hostRoot(), path: rec.path };
}

/**
 * The root a record's other paths resolve in (a socket's name, a watched file: paths that are
 * not `rec.path`): the root the scheduler placed the record in, else the host's '/'.
 */
export function rootOf(rec: FileRecord): ConfinedRoot {
  return places.get(rec)?.root ?? hostRoot();
}

/**
 * Opens `path` in `root` for a record that says what kind of file it is: first as an O_PATH
 * descriptor, which opens nothing (no device driver's open runs, no FIFO open waits), whose
 * fstat `kindError` judges (a reason it is not the recorded kind, or undefined); only then is
 * that very file opened with `flags`, through the descriptor (/proc/self/fd/N: what is opened
 * is what was checked). A wrong kind is refused with ECHANGED naming `what` and the path.
 * `flags` must not create or truncate: the caller passes what it keeps of the record's.
 */
export function reopenIn(root: ConfinedRoot, path: string, flags: number, what: string,
  kindError: (st: BigIntStats) => string | undefined): number {
  const at = openIn(root, path, O_PATH, what);
  try {
    const why = kindError(fstatSync(at, { bigint: true }));
    if (why !== undefined) {
      throw new FerryError('ECHANGED', `${what}: ${shown(root, path)} ${why}: refused, nothing was opened`, { path });
    }
    return native().openRaw(`/proc/self/fd/${at}`, flags);
  } finally {
    native().closeFd(at);
  }
}

/**
 * Runs `fn` with `/proc/self/fd/N` of an O_PATH descriptor of `path` in `root`: a path for
 * system calls that take nothing but a path (inotify_add_watch, fanotify_mark, connect,
 * sendto), which the kernel follows to that very file and nowhere else. The final component
 * is not followed when `noFollow` (the magic link then leads to a symlink itself). `fn` gets
 * the descriptor's fstat too, to refuse (throw) what is not the kind it needs before using it.
 */
export function viaFd<T>(root: ConfinedRoot, path: string, what: string, noFollow: boolean,
  fn: (procPath: string, st: BigIntStats) => T): T {
  const at = openIn(root, path, O_PATH | (noFollow ? O_NOFOLLOW : 0), what);
  try {
    return fn(`/proc/self/fd/${at}`, fstatSync(at, { bigint: true }));
  } finally {
    native().closeFd(at);
  }
}

/** `path` as messages show it, inside its root (for the modules' own errors). */
export function shownIn(root: ConfinedRoot, path: string): string {
  return shown(root, path);
}


/** A directory withRemovedDir made, as its callback gets it. */
export interface RemovedDir {
  /**
   * Its path inside the root (the last component `NAME.ferry-removed-N` when the name was
   * taken): for a kernel call that needs a name and that ferry does not make itself (a chdir
   * inside the restored process), and for messages. Whatever ferry opens or makes in it goes
   * through `fd`: the path is looked up again, and a directory on the way may have changed.
   */
  readonly path: string;
  /** Ferry's O_PATH descriptor of it, closed once the callback returns (reopen it through /proc/self/fd to keep it). */
  readonly fd: number;
}

/**
 * One directory withRemovedDir made: in `parent` (held) under `name`, the inode `made` says;
 * or one it found made by someone else on the way (`parent` -1: only its descriptor held).
 */
interface MadeLevel {
  parent: number;
  name: string;
  path: string;
  fd: number;
  made: TransientMade;
}

/**
 * Runs `fn` with a directory made for it in place of `dirPath`, a directory that was removed
 * (for a chdir or an open that needs a name, the result staying a removed directory): the
 * missing part of the path is made, level by level from the nearest directory that still
 * exists (mode 0700), the last one under a new name beside it (`NAME.ferry-removed-N`) when
 * `dirPath` exists again; all of it is removed again once `fn` returns or throws (a directory
 * no longer empty, or moved away, is left: someone else's by then) — and then the call is
 * refused (ECHANGED), `dispose` given what `fn` returned (its descriptors to close).
 * `under`: a directory made by an enclosing call, in which `dirPath` (below its path) is made.
 *
 * Everything is done through descriptors, never by the path again: the nearest existing
 * directory is opened once, each level is made in the one above it (held) and opened there by
 * its name alone (no symlink followed), and must then be the very directory made (its dev:ino,
 * ferry's, empty). Whoever may write the directory the first level is made in (alice's home,
 * for /home/alice/a/b with `a` gone) can rename ferry's `a` away and put a symlink `a -> /etc`
 * in its place at any moment: a lookup of the path would then make `b` as root in /etc, and
 * the cleanup would remove whatever empty directory the path then leads to.
 */
export function withRemovedDir<T>(root: ConfinedRoot, dirPath: string, what: string, fn: (made: RemovedDir) => T,
  opts: { under?: RemovedDir; dispose?: (got: T) => void } = {}): T {
  const { under, dispose } = opts;
  const n = native();
  const parts = dirPath.split('/').filter((x) => x !== '');
  if (parts.length === 0) throw new FerryError('EIMAGE', `${what}: '/' cannot have been removed`);
  if (parts.some((x) => x === '.' || x === '..')) {
    throw new FerryError('ECONFINE', `${what}: ${shown(root, dirPath)} has a "." or ".." in it, which no removed directory's path has: refused`, { path: dirPath });
  }
  const euid = BigInt(process.geteuid?.() ?? 0);
  const left: string[] = [];
  const levels: MadeLevel[] = [];
  let got!: T;
  let base = -1; // the nearest directory that exists, held
  let have: number; // components of dirPath it stands for
  try {
    if (under !== undefined) {
      const above = under.path.split('/').filter((x) => x !== '');
      if (parts.length <= above.length || above.some((x, i) => parts[i] !== x)) {
        throw new Error(`withRemovedDir: ${dirPath} is not below ${under.path}`);
      }
      base = n.openRaw(`/proc/self/fd/${under.fd}`, O_PATH | O_DIRECTORY);
      have = above.length;
    } else {
      base = openIn(root, '', O_PATH | O_DIRECTORY, what);
      for (have = 0; have < parts.length - 1; have++) {
        const at = `/${parts.slice(0, have + 1).join('/')}`;
        let fd: number;
        try {
          // One name at a time in the one above, no symlink followed: the kernel shows none in
          // the path of a directory a process had, so a symlink there now was put in the place
          // of a directory since, and what is made as root must not be made where it leads
          // (whoever may write /home/alice can plant `a -> /etc` before the restore).
          fd = at2(base, parts[have]!, O_PATH | O_NOFOLLOW, 0, NAME_RESOLVE);
        } catch (err) {
          if (errnoCode(err) === 'ENOENT') break;
          throw confinedError(err, root, at, what, true);
        }
        n.closeFd(base);
        base = fd; // closed on the way out, a directory or not
        const st = fstatSync(fd);
        if (st.isSymbolicLink()) {
          throw new FerryError('ECHANGED', `cannot restore ${what}: ${shown(root, at)} is a symlink now, where there was a directory: nothing is made `
            + 'through it; put the directory back, or restore where the path has none', { path: dirPath });
        }
        if (!st.isDirectory()) throw new FerryError('ECHANGED', `cannot restore ${what}: ${shown(root, at)} is no longer a directory`, { path: dirPath });
      }
    }
    // Each directory made is written down as it is made (files/transient.ts): a ferry killed
    // before it removes them again leaves them to the next restore's sweep.
    let parent = base;
    const mk = (name: string, path: string, last: boolean): boolean => {
      let made: TransientMade | undefined;
      try {
        made = makeTransient('dir', root.path, path, parent, undefined, (dir, temp) => n.mkdirat(dir, temp, 0o700));
      } catch (err) {
        throw confinedError(err, root, path, what, true);
      }
      if (made === undefined && last) return false; // taken: the last one goes under another name
      let fd: number;
      try {
        fd = at2(parent, name, O_PATH | O_DIRECTORY | O_NOFOLLOW, 0, NAME_RESOLVE);
      } catch (err) {
        if (made === undefined) throw confinedError(err, root, path, what, true);
        left.push(path); // the journal keeps it for the sweep, which checks its inode
        // No such name, or not a directory, or a symlink: it was moved away or replaced. Any
        // other error (EMFILE, EACCES on a root-squashed file system) is the open's own.
        if (['ENOENT', 'ENOTDIR', 'ELOOP', 'EXDEV'].includes(errnoCode(err) ?? '')) throw swapped(path, (err as Error).message);
        throw new FerryError('EOPEN', `cannot restore ${what}: the directory ferry made at ${shown(root, path)} cannot be opened (${(err as Error).message}): `
          + 'nothing was made through it; it is left for the next restore\'s sweep', { cause: err, path });
      }
      if (made === undefined) {
        // A directory someone made at that name meanwhile, on the way: gone through as one
        // that existed (as if the walk had found it), never removed.
        levels.push({ parent: -1, name, path, fd, made: Object.assign(() => {}, { dev: -1n, ino: -1n }) });
        parent = fd;
        return true;
      }
      let st: BigIntStats;
      try {
        st = fstatSync(fd, { bigint: true });
      } catch (err) {
        n.closeFd(fd);
        throw err;
      }
      // The very directory made, ferry's, with nothing in it (nlink 1 where a filesystem does
      // not count subdirectories): a swapped one is someone else's and nothing is made in it.
      if (st.dev !== made.dev || st.ino !== made.ino || !st.isDirectory() || st.uid !== euid || st.nlink > 2n) {
        n.closeFd(fd);
        left.push(path);
        throw swapped(path, 'another directory is at its name');
      }
      levels.push({ parent, name, path, fd, made });
      parent = fd;
      return true;
    };
    const swapped = (path: string, why: string): FerryError => new FerryError('ECHANGED', `cannot restore ${what}: the directory ferry made at ${shown(root, path)} `
      + `was moved away or replaced before it was opened (${why}): nothing was made through it; if it is left, remove it and restore again`, { path });
    for (let i = have + 1; i < parts.length; i++) mk(parts[i - 1]!, `/${parts.slice(0, i).join('/')}`, false);
    const last = parts[parts.length - 1]!;
    let name = last;
    for (let k = 1; !mk(name, `/${[...parts.slice(0, -1), name].join('/')}`, true); k++) {
      if (k > 100) throw new FerryError('EEXIST', `cannot restore ${what}: its name and 100 others beside it are taken`);
      name = `${last}.ferry-removed-${k}`;
    }
    transientMade();
    const innermost = levels[levels.length - 1]!;
    got = fn({ path: innermost.path, fd: innermost.fd });
  } finally {
    cleanUp(levels, left, base);
  }
  // A level left with a name (something put in it, or moved elsewhere, meanwhile) would leave
  // what the callback made in a directory someone can reach, or under a name the process never
  // had: nothing is restored so (the journal keeps the level for the sweep).
  if (left.length > 0) {
    try {
      dispose?.(got);
    } catch { /* the refusal below is what matters */ }
    throw new FerryError('ECHANGED', `cannot restore ${what}: the directory made for it could not be removed again (something was put in it, `
      + `or it was moved, meanwhile) and was left at ${left.map((p) => shown(root, p)).join(', ')}; nothing was restored: `
      + 'remove it if it is not someone else\'s and restore again', { path: dirPath });
  }
  return got;
}

/**
 * Removes the directories withRemovedDir made, the innermost first, each through its held
 * parent and only while its name still leads to the very directory made (its dev:ino); one
 * that does not, or is not empty, is left and stays in the journal (transient.ts: the sweep
 * checks the inode again). Every descriptor is closed. Nothing is thrown: it runs in a
 * `finally`, where an error would mask the callback's own, or lose what it returned (a
 * descriptor, then never closed); an entry that cannot be forgotten once its directory is
 * removed stays in the journal, and the sweep drops it, finding no such inode at its path.
 *
 * Between the check and the rmdir, whoever may write the first level's directory could still
 * swap in an empty directory of theirs, which would then go: a directory moved there must be
 * writable by them (rename(2) of a directory to another parent needs it), so nothing they
 * could not have removed themselves; ferry's, which then still has a name (nlink), is left.
 */
function cleanUp(levels: MadeLevel[], left: string[], base: number): void {
  const n = native();
  for (const l of [...levels].reverse()) {
    if (l.parent < 0) continue; // not ferry's
    let removed = false;
    try {
      const fd = at2(l.parent, l.name, O_PATH | O_NOFOLLOW, 0, NAME_RESOLVE);
      let st: BigIntStats;
      try {
        st = fstatSync(fd, { bigint: true });
      } finally {
        n.closeFd(fd);
      }
      if (st.dev === l.made.dev && st.ino === l.made.ino) {
        n.unlinkat(l.parent, l.name, AT_REMOVEDIR);
        // What went must have been ferry's: one swapped in between the check and the rmdir
        // (by whoever may write the parent) went instead, and ferry's still has a name.
        removed = fstatSync(l.fd).nlink === 0;
      }
    } catch { /* gone from its name, or not empty: someone else's now */ }
    if (!removed) {
      left.push(l.path);
      continue;
    }
    try {
      l.made();
    } catch { /* left in the journal: the sweep drops an entry whose directory is gone */ }
  }
  for (const l of levels) n.closeFd(l.fd);
  if (base >= 0) n.closeFd(base);
}
