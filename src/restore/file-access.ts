/**
 * No access from the image beyond its own (docs/security.md, "Confinement"): restore opens
 * every file as root, so an edited image could hand a process a descriptor on any file of the
 * host: open for writing (/etc/shadow, a root-owned binary, /dev/mem) or for reading (a private
 * key under /root) that its own credentials could never open so. For an image no trusted key
 * signed, every file a process of a plain restore holds open by path (a regular file or
 * directory, a character device, a FIFO, a terminal) must be one that a holder of it could
 * open the same way as its recorded credentials:
 * - every directory above it searchable: its filesystem uid owns the directory and the owner
 *   may search, or its filesystem gid or a supplementary group is the directory's group and
 *   the group may, or others may; or it holds CAP_DAC_READ_SEARCH or CAP_DAC_OVERRIDE;
 * - the file itself readable (unless the descriptor is O_PATH or write-only) and writable
 *   (when it is open for writing) by the same rule, CAP_DAC_OVERRIDE passing both and
 *   CAP_DAC_READ_SEARCH passing reads.
 * POSIX ACLs are not read: a file reachable only through an ACL entry is refused.
 * checkFileAccess judges the recorded path before anything exists; the restore then opens it
 * with no symbolic link followed (openedFileGuard: files/install.ts resolves it in the
 * 'in-root-no-symlinks' confinement), so the directories judged by name are the ones the open
 * walks through, and checkOpenedFile judges the file each open gave, by its descriptor: a
 * symlink to a file under a directory the process could not search, or a directory renamed
 * between the check and the open, hands it nothing.
 *
 * The same holds for a file a process maps shared and writable, or may make writable (a
 * MAP_SHARED mapping of a file it had open for writing: VmFlags 'mw'), which the task opens
 * for writing, as root, to map it (restore/address-space.ts sharedWritable): its writes go to
 * the file. checkMappedAccess judges the recorded path before anything exists; the task then
 * opens it with no symbolic link followed (openat2 RESOLVE_NO_SYMLINKS), so the directories
 * checked by name are the ones the open walks through, and checkOpenedMapping judges again the
 * file the task got, by its descriptor: a directory swapped for a symlink between the two, or
 * a symlink the image's path goes through, cannot lead the open to a file the check never saw.
 * A file it maps privately or read-only, which the task opens for reading, must be readable
 * (its executable and interpreter: or executable, as execve(2) maps a mode 711 binary), by path first and
 * again as opened (checkOpenedReadMapping). That open may cross this machine's own symlinks (a
 * merged /usr), so the directories judged as opened are those of where the file was found.
 *
 * The same holds for the directories a restore makes for a directory that was removed (a
 * working directory, restore/cwd.ts, a root directory, restore/root-dir.ts, or one held
 * open): they are made in the nearest directory that still exists, which the process must be
 * able to write in.
 *
 * A trusted image is exempt: a daemon that opened its log as root and then dropped to
 * `nobody` holds it for writing legitimately, and its image says so truthfully.
 */
import type { BigIntStats } from 'node:fs';
import { dirname } from 'node:path';
import { PROT_WRITE } from '../arch/x86-64.js';
import { FerryError } from '../errors.js';
import { big, type FileRecord, type TaskRecord, type VmaRecord } from '../image/records.js';
import type { FileGuard } from '../files/install.js';
import { ghostMapper } from '../files/deleted.js';
import { O_ACCMODE, O_PATH } from '../proc/fcntl.js';
import { sharedWritable } from './address-space.js';

const O_RDONLY = 0, O_WRONLY = 1, O_RDWR = 2; // O_ACCMODE values
const CAP_DAC_OVERRIDE = 1n, CAP_DAC_READ_SEARCH = 2n;
/** The kinds restore opens by a path the image gives (src/files/). */
const BY_PATH = new Set(['reg', 'chr', 'fifo', 'tty']);
/** Permission bits of the owner's triple: read, write, search/execute. */
const R = 4, W = 2, X = 1;

/** What of a file the check needs, or undefined when it is not there. */
export type StatOf = (path: string) => Pick<BigIntStats, 'uid' | 'gid' | 'mode'> | undefined;

type Holder = Pick<TaskRecord, 'creds'>;

/**
 * Whether the leader of `task` may access a file with `st` as `want` (R, W or X, one bit) by
 * its recorded credentials, as the kernel's permission check would (without ACLs).
 */
function may(task: Holder, st: Pick<BigIntStats, 'uid' | 'gid' | 'mode'>, want: number): boolean {
  const c = task.creds.threads[0];
  if (!c) return false;
  const eff = big(c.caps.effective);
  if ((eff >> CAP_DAC_OVERRIDE) & 1n) return true;
  if (want !== W && (eff >> CAP_DAC_READ_SEARCH) & 1n) return true;
  const fsuid = c.uids[3], fsgid = c.gids[3];
  const mode = Number(st.mode);
  if (BigInt(fsuid ?? -1) === BigInt(st.uid)) return ((mode >> 6) & want) !== 0;
  if (BigInt(fsgid ?? -1) === BigInt(st.gid) || c.groups.some((g) => BigInt(g) === BigInt(st.gid))) return ((mode >> 3) & want) !== 0;
  return (mode & want) !== 0;
}

/**
 * Whether the leader of `task` could open a file with `st` for reading and writing by its
 * recorded credentials (the file itself: the directories above it are the caller's).
 */
export function mayReadWrite(task: Holder, st: Pick<BigIntStats, 'uid' | 'gid' | 'mode'>): boolean {
  return may(task, st, W) && may(task, st, R);
}

/** Whether the leader of `task` could write in (or write) a file with `st`. */
function mayWrite(task: Holder, st: Pick<BigIntStats, 'uid' | 'gid' | 'mode'>): boolean {
  return may(task, st, W);
}

/** The directories above an absolute path, nearest first, `/` last. */
function parents(path: string): string[] {
  const out: string[] = [];
  for (let dir = path; dir !== '/';) {
    dir = dir.slice(0, Math.max(dir.lastIndexOf('/'), 0)) || '/';
    out.push(dir);
  }
  return out;
}

/**
 * Throws EPRIVILEGE, naming the first process, descriptor and file, when a file the image
 * opens by path could not be opened so by any of its holders' recorded credentials: a
 * directory above it not searchable, or the file not readable or writable as its descriptor
 * is (`statOf` looks paths up as restore will open them). `label` names the image.
 */
export function checkFileAccess(label: string, tasks: readonly Pick<TaskRecord, 'pid' | 'comm' | 'creds' | 'fds'>[],
  files: readonly FileRecord[], statOf: StatOf): void {
  const seen = new Map<string, ReturnType<StatOf>>();
  const stat = (path: string): ReturnType<StatOf> => {
    if (!seen.has(path)) seen.set(path, statOf(path));
    return seen.get(path);
  };
  for (const f of files) {
    if (!BY_PATH.has(f.kind) || typeof f.path !== 'string' || typeof f.flags !== 'number' || !f.path.startsWith('/')) continue;
    const st = stat(f.path);
    if (!st) continue; // restore's own check refuses a missing file
    const holders = tasks.filter((t) => t.fds.some((d) => d.file === f.id));
    if (holders.length === 0) continue;
    const access = f.flags & O_ACCMODE;
    const reads = (f.flags & O_PATH) === 0 && (access === O_RDONLY || access === O_RDWR);
    const writes = (f.flags & O_PATH) === 0 && (access === O_WRONLY || access === O_RDWR);
    const dirs = parents(f.path).map((d) => ({ d, st: stat(d) }));
    /** Why `t` could not open the file so, or undefined when it could. */
    const lacks = (t: Holder): string | undefined => {
      const mode = (s: NonNullable<ReturnType<StatOf>>): string => `owner ${s.uid}:${s.gid}, mode ${(Number(s.mode) & 0o7777).toString(8)}`;
      for (const { d, st: ds } of dirs) if (ds && !may(t, ds, X)) return `could not reach: the directory ${JSON.stringify(d.slice(0, 256))} is not searchable by them (${mode(ds)})`;
      if (writes && !may(t, st, W)) return `could not open so (${mode(st)})`;
      if (reads && !may(t, st, R)) return `could not open so (${mode(st)})`;
      return undefined;
    };
    const denied = holders.map((t) => ({ t, why: lacks(t) }));
    if (denied.some((x) => x.why === undefined)) continue;
    throw fileAccessError(label, denied[0]!.t, f, f.path, st, reads, writes, denied[0]!.why!);
  }
}

/** The one line of a refused file: `why` the credentials of `t`, its first holder, could not open it so. */
function fileAccessError(label: string, t: Pick<TaskRecord, 'pid' | 'comm' | 'creds' | 'fds'>, f: FileRecord, path: string,
  st: Pick<BigIntStats, 'uid' | 'gid' | 'mode'>, reads: boolean, writes: boolean, why: string): FerryError {
  const fd = t.fds.find((d) => d.file === f.id)!.fd;
  const c = t.creds.threads[0]!;
  const how = writes && !may(t, st, W) ? 'open for writing' : reads ? 'open for reading' : writes ? 'open for writing' : 'open (O_PATH)';
  return new FerryError('EPRIVILEGE', `image ${label}: pid ${t.pid} (${t.comm}) fd ${fd} would get ${JSON.stringify(path.slice(0, 256))} ${how}, which its `
    + `credentials (uid ${c.uids[3]}, gid ${c.gids[3]}, no CAP_DAC_OVERRIDE) ${why}: nothing was restored; sign the image and restore with --trust if it is genuine`,
  { pid: t.pid, fd, path });
}

/** Whether a record of `kind` opened by path: what checkFileAccess judges and openedFileGuard guards. */
function byPath(f: FileRecord): f is FileRecord & { path: string; flags: number } {
  return BY_PATH.has(f.kind) && typeof f.path === 'string' && typeof f.flags === 'number' && f.path.startsWith('/') && f.root !== 'task';
}

/**
 * Throws EPRIVILEGE, in checkFileAccess's words, when the file the restore opened for record
 * `f` (`st`: the fstat of that descriptor) is one none of its holders' recorded credentials
 * could open as the record's flags say: the file itself, as opened, not what its path named
 * when checkFileAccess judged it (a symlink or a rename between the two). The directories
 * above it are checkFileAccess's, sound since the open followed no symlink. A node made by
 * the restore for a removed one, and a terminal made with its pair, are the image's own.
 */
export function checkOpenedFile(label: string, tasks: readonly Pick<TaskRecord, 'pid' | 'comm' | 'creds' | 'fds'>[],
  f: FileRecord, st: Pick<BigIntStats, 'uid' | 'gid' | 'mode'>): void {
  if (!byPath(f) || f.removed !== undefined) return;
  if (f.kind === 'tty' && f.role !== 'device' && f.role !== 'external') return;
  const holders = tasks.filter((t) => t.fds.some((d) => d.file === f.id));
  if (holders.length === 0) return;
  const access = f.flags & O_ACCMODE;
  const reads = (f.flags & O_PATH) === 0 && (access === O_RDONLY || access === O_RDWR);
  const writes = (f.flags & O_PATH) === 0 && (access === O_WRONLY || access === O_RDWR);
  const lacks = (t: Holder): boolean => (writes && !may(t, st, W)) || (reads && !may(t, st, R));
  if (holders.some((t) => !lacks(t))) return;
  throw fileAccessError(label, holders[0]!, f, f.path, st, reads, writes, `could not open so (the file opened there: ${modeOf(st)})`);
}

/**
 * What openFiles needs for an untrusted image (files/install.ts FileGuard): host paths of the
 * kinds opened by path resolved with no symlink followed, each file judged as opened
 * (checkOpenedFile), a path through a symlink refused in one line naming a holder.
 */
export function openedFileGuard(label: string, tasks: readonly Pick<TaskRecord, 'pid' | 'comm' | 'creds' | 'fds'>[]): FileGuard {
  return {
    covers: byPath,
    opened: (f, st) => checkOpenedFile(label, tasks, f, st),
    throughSymlink: (f, cause) => {
      const t = tasks.find((x) => x.fds.some((d) => d.file === f.id));
      const fd = t?.fds.find((d) => d.file === f.id)?.fd ?? -1;
      const who = t ? `pid ${t.pid} (${t.comm}) fd ${fd}` : `file ${f.id}`;
      return new FerryError('EPRIVILEGE', `image ${label}: ${who} would get ${JSON.stringify(String(f.path).slice(0, 256))} through a symbolic link, `
        + 'which a file an untrusted image holds open may not go through (its credentials were judged on the directories the path names, not on those a link leads through): '
        + 'nothing was restored; sign the image and restore with --trust if it is genuine', { cause, ...(t ? { pid: t.pid, fd } : {}), path: String(f.path) });
    },
  };
}

/**
 * Throws EPRIVILEGE, naming the process, the area and the file, when a file a process maps is
 * one its recorded credentials could not have mapped so: shared and writable (or may make
 * writable: sharedWritable), which restore opens for writing to map it, a file they could
 * neither reach nor open for reading and writing; any other (private or read-only), which
 * restore opens for reading, one they could neither reach nor read (`unreadable`: its own
 * executable and ELF interpreter may be executable only). A memfd or a
 * deleted file mapped is the image's own (made by restore), not looked at; `statOf` looks
 * paths up as restore will open them.
 */
export function checkMappedAccess(label: string, tasks: readonly (Pick<TaskRecord, 'pid' | 'comm' | 'creds'> & Execed)[], lookUp: StatOf): void {
  // Each path looked up once: every process maps the same libraries, from the same directories.
  const seen = new Map<string, ReturnType<StatOf>>();
  const statOf: StatOf = (path) => {
    if (!seen.has(path)) seen.set(path, lookUp(path));
    return seen.get(path);
  };
  for (const t of tasks) {
    const execed = execedPaths(t);
    for (const v of t.vmas) {
      const special = v as { memfd?: unknown; ghost?: unknown };
      const path = v.file?.path;
      if (v.kind !== 'file' || typeof path !== 'string' || !path.startsWith('/') || special.memfd !== undefined
        || special.ghost !== undefined) continue;
      const st = statOf(path);
      if (!st) continue; // checkMappedFiles says why
      const writes = sharedWritable(v);
      // By name: for a file mapped for writing sound because the task's open follows no
      // symlink (mapAreas), so every directory it searches is one of these prefixes ("." and
      // ".." included: each resolves to a directory some prefix names, which is checked).
      // The others may be reached through a symlink: judged again on the path the file was
      // found at (checkOpenedReadMapping).
      const why = unreachable(t, path, statOf)
        ?? (writes ? (!mayReadWrite(t, st) ? `could not open so (${modeOf(st)})` : undefined) : unreadable(t, execed, v, st));
      if (why === undefined) continue;
      throw writes ? mappedAccessError(label, t, v, path, why) : readMappedError(label, t, v, path, undefined, why);
    }
  }
}

/**
 * Why the leader of `t` could not read the file `st` at `path` by its recorded credentials (a
 * directory above it not searchable, or the file not readable), or undefined: what
 * inotify_add_watch(2) and fanotify_mark(2) ask of the inode they watch (MAY_READ).
 */
export function unreadableAt(t: Holder, path: string, st: Pick<BigIntStats, 'uid' | 'gid' | 'mode'>, statOf: StatOf): string | undefined {
  return unreachable(t, path, statOf) ?? (may(t, st, R) ? undefined : `could not read (${modeOf(st)})`);
}

/** Why `t` could not reach `path` (a directory above it not searchable), or undefined. */
function unreachable(t: Holder, path: string, statOf: StatOf): string | undefined {
  for (const d of parents(path)) {
    const ds = statOf(d);
    if (ds && !may(t, ds, X)) return `could not reach: the directory ${JSON.stringify(d.slice(0, 256))} is not searchable by them (${modeOf(ds)})`;
  }
  return undefined;
}

/** AT_BASE (elf.h): where execve(2) loaded the ELF interpreter. */
const AT_BASE = 7n;

/** What of a task says which files it maps as execve(2) did: its executable and its auxiliary vector. */
type Execed = Pick<TaskRecord, 'exe' | 'vmas'> & { mm?: Pick<TaskRecord['mm'], 'auxv'> };

/**
 * The files `t` may map executable only, as execve(2) maps them whatever their read
 * permission: its executable and its ELF interpreter, the file whose start is mapped at
 * AT_BASE. Both are the image's word: the most it buys is a mapping of a file the
 * credentials could have executed, as an execve of it would give.
 */
function execedPaths(t: Execed): Set<string> {
  const out = new Set([t.exe]);
  const base = t.mm?.auxv?.find(([type]) => big(type) === AT_BASE)?.[1];
  if (base === undefined || big(base) === 0n) return out;
  const interp = t.vmas.find((v) => v.kind === 'file' && v.file !== undefined && big(v.start) === big(base) && big(v.file.offset) === 0n);
  if (interp?.file) out.add(interp.file.path);
  return out;
}

/**
 * Why `t` could not map the file `st` that area `v` maps for reading, or undefined: it must
 * be readable, but its own executable and ELF interpreter (`execed`) may be executable only
 * instead (execve(2) maps a mode 711 binary that its user may not read).
 */
function unreadable(t: Holder, execed: ReadonlySet<string>, v: { file?: { path: string } }, st: Pick<BigIntStats, 'uid' | 'gid' | 'mode'>): string | undefined {
  if (may(t, st, R)) return undefined;
  const exe = v.file !== undefined && execed.has(v.file.path);
  if (exe && may(t, st, X)) return undefined;
  return `could ${exe ? 'neither read nor execute' : 'not read'} (${modeOf(st)})`;
}

/**
 * Throws EPRIVILEGE, in checkMappedAccess's words, when the file a task got for area `v`
 * (`st`: the fstat of its descriptor, opened for reading to map it privately or read-only;
 * `at`: where the kernel says the file is, its /proc/PID/fd link) is one the recorded
 * credentials of `t` could not map so: not readable (its executable or interpreter: nor executable), or
 * a directory above where it was found not searchable. That open may cross a symlink (a
 * merged /usr's), so the directories judged are those of `at`, the path it led to, not the
 * recorded one's: a symlink to a file under a directory they could not search gets nothing.
 * `statOf` looks the directories up.
 */
export function checkOpenedReadMapping(label: string, t: Pick<TaskRecord, 'pid' | 'comm' | 'creds'> & Execed,
  v: Pick<VmaRecord, 'start' | 'shared'> & { file?: { path: string } }, st: Pick<BigIntStats, 'uid' | 'gid' | 'mode'>, at: string, statOf: StatOf): void {
  const path = v.file?.path ?? '';
  const why = (at.startsWith('/') ? unreachable(t, at, statOf) : `could not be checked on the file it led to (${JSON.stringify(at.slice(0, 256))}, no path)`)
    ?? unreadable(t, execedPaths(t), v, st);
  if (why !== undefined) throw readMappedError(label, t, v, path, at === path ? undefined : at, why);
}

/** The one line of a refused private or read-only mapping: `why` the credentials could not map it; `at`: where the path led. */
function readMappedError(label: string, t: Pick<TaskRecord, 'pid' | 'comm' | 'creds'>, v: Pick<VmaRecord, 'start' | 'shared'>,
  path: string, at: string | undefined, why: string): FerryError {
  const c = t.creds.threads[0]!;
  return new FerryError('EPRIVILEGE', `image ${label}: pid ${t.pid} (${t.comm}) maps ${JSON.stringify(path.slice(0, 256))}${at === undefined ? '' : ` (which leads to ${JSON.stringify(at.slice(0, 256))})`} `
    + `${v.shared ? 'shared, read-only,' : 'privately'} at ${v.start}, so restore would open it for reading, which its credentials `
    + `(uid ${c.uids[3]}, gid ${c.gids[3]}, no CAP_DAC_OVERRIDE or CAP_DAC_READ_SEARCH) ${why}: nothing was restored; sign the image and restore with --trust if it is genuine`,
  { pid: t.pid, path });
}

/**
 * Throws EPRIVILEGE, in checkMappedAccess's words, when the file a task got for area `v`
 * (`st`: the fstat of its descriptor, opened for writing to map it shared) is one the recorded
 * credentials of `t` could not open for reading and writing: what was opened, not what the
 * path named when it was checked (a rename may have raced in between).
 */
export function checkOpenedMapping(label: string, t: Pick<TaskRecord, 'pid' | 'comm' | 'creds'>,
  v: Pick<VmaRecord, 'start' | 'prot'> & { file?: { path: string } }, st: Pick<BigIntStats, 'uid' | 'gid' | 'mode'>): void {
  if (!mayReadWrite(t, st)) throw mappedAccessError(label, t, v, v.file?.path ?? '', `could not open so (${modeOf(st)})`);
}

const modeOf = (s: Pick<BigIntStats, 'uid' | 'gid' | 'mode'>): string => `owner ${s.uid}:${s.gid}, mode ${(Number(s.mode) & 0o7777).toString(8)}`;

/** The one line of a refused shared writable mapping: `why` the credentials could not open it. */
function mappedAccessError(label: string, t: Pick<TaskRecord, 'pid' | 'comm' | 'creds'>, v: Pick<VmaRecord, 'start' | 'prot'>,
  path: string, why: string): FerryError {
  const c = t.creds.threads[0]!;
  return new FerryError('EPRIVILEGE', `image ${label}: pid ${t.pid} (${t.comm}) maps ${JSON.stringify(path.slice(0, 256))} shared at ${v.start} `
    + `${(v.prot & PROT_WRITE) !== 0 ? 'and writable' : 'from a descriptor open for writing'}, so restore would open it for writing, which its credentials `
    + `(uid ${c.uids[3]}, gid ${c.gids[3]}, no CAP_DAC_OVERRIDE) ${why}: nothing was restored; sign the image and restore with --trust if it is genuine`,
  { pid: t.pid, path });
}

/**
 * Throws EPRIVILEGE when a directory that was removed would be made again (for a chdir or an
 * open, removed at once: files/confined.ts withRemovedDir) in a directory the recorded
 * credentials of the process needing it could not create anything in: a removed working
 * directory, a removed root directory, a removed directory held open, or the removed FIFO or
 * symlink of an O_PATH descriptor, made the same way, or the removed directory of a deleted
 * file held open (`statOf` looks paths up as restore will). A root shared by several processes is checked for each. A removed
 * working directory below a removed root, and each removed directory between (cwdBetween), is
 * made in the removed directory above it (restore/root-dir.ts), judged by that one's recorded
 * mode and owner. A thread's own removed working directory (ThreadRecord.fs) is judged by
 * that thread's credentials.
 */
export function checkRemovedDirs(label: string,
  tasks: ReadonlyArray<Pick<TaskRecord, 'pid' | 'comm' | 'creds' | 'cwd' | 'cwdDeleted' | 'cwdBetween' | 'root' | 'rootDeleted' | 'fds' | 'threads'> & Partial<Pick<TaskRecord, 'vmas'>>>,
  files: readonly FileRecord[], statOf: StatOf): void {
  const refuse = (t: (typeof tasks)[number], path: string, as: string, dir: string, st: Pick<BigIntStats, 'uid' | 'gid' | 'mode'>,
    node = 'directory'): never => {
    const c = t.creds.threads[0]!;
    throw new FerryError('EPRIVILEGE', `image ${label}: pid ${t.pid} (${t.comm}) had the removed ${node} ${JSON.stringify(path.slice(0, 256))} ${as}; restore would make it again in ${JSON.stringify(dir.slice(0, 256))}, which its `
      + `credentials (uid ${c.uids[3]}, gid ${c.gids[3]}, no CAP_DAC_OVERRIDE) could not write in (owner ${st.uid}:${st.gid}, mode `
      + `${(Number(st.mode) & 0o7777).toString(8)}): nothing was restored; sign the image and restore with --trust if it is genuine`);
  };
  const wanted: Array<{ t: (typeof tasks)[number]; path: string; as: string; node?: string }> = [];
  for (const t of tasks) {
    if (!t.cwdDeleted) continue;
    const root = t.rootDeleted !== undefined && t.root !== undefined && t.cwd.startsWith(`${t.root}/`) ? t.root : undefined;
    if (root === undefined) {
      wanted.push({ t, path: t.cwd, as: 'as its working directory' });
      continue;
    }
    // Made in its removed root, or in the removed directory between above it, as recorded.
    const names = t.cwd.slice(root.length + 1).split('/');
    const above = [t.rootDeleted!, ...(t.cwdBetween ?? [])].map((d) => ({ uid: BigInt(d.uid), gid: BigInt(d.gid), mode: BigInt(d.mode) }));
    for (const [i, parent] of above.slice(0, names.length).entries()) {
      if (mayWrite(t, parent)) continue;
      const path = `${root}/${names.slice(0, i + 1).join('/')}`;
      refuse(t, path, i === names.length - 1 ? 'as its working directory' : 'on the way to its working directory', path.slice(0, path.lastIndexOf('/')), parent);
    }
  }
  for (const t of tasks) if (t.rootDeleted && t.root !== undefined) wanted.push({ t, path: t.root, as: 'as its root directory' });
  // A thread's own removed working directory (ThreadRecord.fs), judged by that thread's credentials.
  for (const t of tasks) {
    for (const th of t.threads ?? []) {
      if (th.fs?.cwdDeleted === undefined) continue;
      const c = t.creds.threads.find((x) => x.tid === th.tid);
      // No credentials of its own (an edited image): refused, not judged by the other threads'.
      if (c === undefined) throw new FerryError('EIMAGE', `image ${label}: thread ${th.tid} of pid ${t.pid} has a removed working directory of its own but no credentials (creds.threads): refused (an edited image); nothing was restored`, { pid: t.pid });
      wanted.push({ t: { ...t, creds: { ...t.creds, threads: [c] } }, path: th.fs.cwd, as: `as the working directory of its thread ${th.tid}` });
    }
  }
  for (const f of files) {
    if (f.kind !== 'reg' || f.removed === undefined || typeof f.path !== 'string') continue;
    const t = tasks.find((x) => x.fds.some((d) => d.file === f.id));
    // An O_PATH descriptor's removed FIFO or symlink (files/regular.ts) is made there too.
    const type = (f.removed as { type?: unknown } | null)?.type;
    const node = type === 'fifo' ? 'FIFO' : type === 'symlink' ? 'symlink' : undefined;
    if (t) wanted.push({ t, path: f.path, as: `open (fd ${t.fds.find((d) => d.file === f.id)!.fd})`, ...(node !== undefined ? { node } : {}) });
  }
  // A deleted file whose directory is not there: that directory was removed too, and is made
  // for the moment of the file's create (files/deleted.ts).
  // Judged by the process holding it, else by one mapping it (a deleted file only mapped is a
  // file of the image nobody holds: dump/memory.ts). One neither holds nor maps (in flight in a
  // unix socket's queue, or an edited image's) is judged by no one's credentials: refused.
  for (const f of files) {
    if (f.kind !== 'ghost' || typeof f.path !== 'string' || !f.path.startsWith('/')) continue;
    const dir = dirname(f.path);
    if (dir === '/' || statOf(dir)) continue;
    const what = `as the directory of its deleted file ${JSON.stringify(f.path.slice(0, 256))}`;
    const t = tasks.find((x) => x.fds.some((d) => d.file === f.id));
    if (t) {
      wanted.push({ t, path: dir, as: `${what} (fd ${t.fds.find((d) => d.file === f.id)!.fd})` });
      continue;
    }
    const mapper = ghostMapper(tasks, f);
    if (mapper) {
      wanted.push({ t: mapper, path: dir, as: `${what} (mapped)` });
      continue;
    }
    throw new FerryError('EPRIVILEGE', `image ${label}: the deleted file ${JSON.stringify(f.path.slice(0, 256))} (file ${f.id}) is in the removed directory `
      + `${JSON.stringify(dir.slice(0, 256))}, which restore would make again, and no process of the image holds or maps it to judge whether it could have: `
      + 'nothing was restored; sign the image and restore with --trust if it is genuine');
  }
  for (const { t, path, as, node } of wanted) {
    let dir = path;
    let st: ReturnType<StatOf>;
    do {
      dir = dir.slice(0, Math.max(dir.lastIndexOf('/'), 0)) || '/';
      st = statOf(dir);
    } while (!st && dir !== '/');
    if (!st || mayWrite(t, st)) continue;
    refuse(t, path, as, dir, st, node);
  }
}

/**
 * Throws EPRIVILEGE when a directory a process or thread is put in by path (its working
 * directory, its root, a thread's own: restore chdirs and chroots as root, before the
 * credentials) could not be reached by the recorded credentials of whoever is put there: the
 * directory or one above it not searchable. Once there, it could open whatever lies below by
 * a relative name, as a descriptor of that directory would let it, and a descriptor of one is
 * held to this rule (checkFileAccess). Removed directories are checkRemovedDirs' (`statOf`
 * looks paths up as restore will; one not there is for the restore to refuse).
 */
export function checkDirsReachable(label: string,
  tasks: readonly Pick<TaskRecord, 'pid' | 'comm' | 'creds' | 'cwd' | 'cwdDeleted' | 'root' | 'rootDeleted' | 'threads'>[], statOf: StatOf): void {
  for (const t of tasks) {
    const wanted: Array<{ path: string; as: string; who: Holder; tid?: number }> = [];
    if (!t.cwdDeleted && typeof t.cwd === 'string') wanted.push({ path: t.cwd, as: 'its working directory', who: t });
    if (!t.rootDeleted && typeof t.root === 'string') wanted.push({ path: t.root, as: 'its root directory', who: t });
    for (const th of t.threads ?? []) {
      if (th.fs === undefined) continue;
      const c = t.creds.threads.find((x) => x.tid === th.tid);
      const who: Holder = { creds: { ...t.creds, threads: c ? [c] : [] } };
      if (typeof th.fs.cwd === 'string' && !th.fs.cwdDeleted) wanted.push({ path: th.fs.cwd, as: `the working directory of its thread ${th.tid}`, who, tid: th.tid });
      if (typeof th.fs.root === 'string') wanted.push({ path: th.fs.root, as: `the root directory of its thread ${th.tid}`, who, tid: th.tid });
    }
    for (const { path, as, who } of wanted) {
      if (!path.startsWith('/')) continue; // validate.ts refuses it
      for (const d of [path, ...parents(path)]) {
        const st = statOf(d);
        if (!st || may(who, st, X)) continue;
        const c = who.creds.threads[0];
        throw new FerryError('EPRIVILEGE', `image ${label}: pid ${t.pid} (${t.comm}) has ${JSON.stringify(path.slice(0, 256))} as ${as}, which its credentials `
          + `(uid ${c?.uids[3] ?? '?'}, gid ${c?.gids[3] ?? '?'}, no CAP_DAC_OVERRIDE or CAP_DAC_READ_SEARCH) could not reach: ${JSON.stringify(d.slice(0, 256))} `
          + `is not searchable by them (owner ${st.uid}:${st.gid}, mode ${(Number(st.mode) & 0o7777).toString(8)}): nothing was restored; `
          + 'sign the image and restore with --trust if it is genuine', { pid: t.pid, path });
      }
    }
  }
}
