/**
 * No privilege from the image, for the files whose privilege the kernel checks only when they
 * are made or opened (docs/security.md, "Confinement"): restore makes and opens them as root,
 * so an edited image could hand an unprivileged process what only root gets. For an image no
 * trusted key signed, every process holding one must have what the kernel would have asked of
 * it, or the restore is refused before anything is made (EPRIVILEGE), naming the process,
 * descriptor and file:
 * - a fanotify group: fanotify_init(2) needs CAP_SYS_ADMIN, except for the limited
 *   unprivileged group (notification class, reporting file handles, inode marks only, no
 *   unlimited queue or marks, no thread ids, no audit). A privileged group's events carry
 *   descriptors the kernel opens with no permission check, on every file of a marked mount;
 *   a content-class group's permission events hold the host's accessors until answered;
 * - an inotify watch or a fanotify mark: inotify_add_watch(2) and fanotify_mark(2) need read
 *   permission on the inode watched (and search on the directories above), or a watch on
 *   /root/.ssh tells its names;
 * - a timerfd on an alarm clock (CLOCK_REALTIME_ALARM, CLOCK_BOOTTIME_ALARM): timerfd_create(2)
 *   needs CAP_WAKE_ALARM (it wakes a suspended machine);
 * - a character device: only those any process may open for what they are (1:3 null, 1:5
 *   zero, 1:7 full, 1:8 random, 1:9 urandom, 5:0 /dev/tty, 5:2 ptmx, pseudo-terminal slaves),
 *   judged on the record before the device is opened, since a driver acts at open (a watchdog
 *   arms); what else a device gives is its driver's to decide, by opener;
 * - a file on a kernel pseudo file system (procfs, sysfs, debugfs, tracefs, securityfs, bpf,
 *   configfs): what such a file shows is decided when it is opened, by the opener's
 *   credentials (/proc/PID/maps, /proc/kallsyms give root real addresses), so one opened as
 *   root keeps root's view. Judged by the device of the file the path names now, and again of
 *   the file opened (guardPseudoFiles). The tree's own /proc files are procfile records
 *   (files/procfile.ts), opened by their process.
 * Watches and pseudo file systems are judged for a plain restore, as the files held open are
 * (file-access.ts): a container's paths resolve in its root.
 */
import type { BigIntStats } from 'node:fs';
import { readFileSync } from 'node:fs';
import { FerryError } from '../errors.js';
import { big, type FileRecord, type TaskRecord } from '../image/records.js';
import { hostRoot, statIn } from '../files/confined.js';
import { userDev } from '../files/inotify.js';
import type { FileGuard } from '../files/install.js';
import { unreadableAt, type StatOf } from './file-access.js';

type Holder = Pick<TaskRecord, 'pid' | 'comm' | 'creds' | 'fds'>;

const CAP_SYS_ADMIN = 21n, CAP_WAKE_ALARM = 35n, CAP_SYS_PTRACE = 19n;
/**
 * Entries of /proc/PID (below it, `sub`; '' the directory itself) that any user may open for
 * reading, with no ptrace access check at the open (mode 0444 or a directory: what a
 * directory descriptor then opens is checked against the process's own credentials).
 */
const PROC_PUBLIC = new Set(['', '/stat', '/status', '/statm', '/cmdline', '/comm', '/cgroup']);
const O_ACCMODE = 3;
/** timerfd_create(2) clocks that need CAP_WAKE_ALARM. */
const CLOCK_REALTIME_ALARM = 8, CLOCK_BOOTTIME_ALARM = 9;
/**
 * fanotify_init(2) flags an unprivileged caller may pass (fs/notify/fanotify/fanotify_user.c):
 * FAN_REPORT_FID, FAN_REPORT_DIR_FID, FAN_REPORT_NAME, FAN_REPORT_TARGET_FID, at least one of
 * which it must; the class must be FAN_CLASS_NOTIF (0).
 */
const FAN_FID_BITS = 0x200 | 0x400 | 0x800 | 0x1000;
/** Character devices an untrusted image may hold, `major:minor` (pts: majors 136-143, any minor). */
const ALLOWED_DEVICES = new Set(['1:3', '1:5', '1:7', '1:8', '1:9', '5:0', '5:2']);
/** Kernel pseudo file systems whose files show what their opener may see, by mountinfo type. */
const PSEUDO_FS = new Set(['proc', 'sysfs', 'debugfs', 'tracefs', 'securityfs', 'bpf', 'configfs']);

/** Whether the leader of `t` has capability `cap` in its effective set, by its recorded credentials. */
const hasCap = (t: Pick<TaskRecord, 'creds'>, cap: bigint): boolean =>
  ((big(t.creds.threads[0]?.caps.effective ?? '0x0') >> cap) & 1n) === 1n;

const holdersOf = (tasks: readonly Holder[], f: FileRecord): Holder[] => tasks.filter((t) => t.fds.some((d) => d.file === f.id));
const fdOf = (t: Holder, f: FileRecord): number => t.fds.find((d) => d.file === f.id)!.fd;
const shown = (path: unknown): string => JSON.stringify(String(path).slice(0, 256));
const TAIL = 'nothing was restored; sign the image and restore with --trust if it is genuine';

/** The one line of a refusal: `t` would get `what` (file `f`), `why` it may not. */
function refusal(label: string, t: Holder, f: FileRecord, what: string, why: string, path?: string): FerryError {
  return new FerryError('EPRIVILEGE', `image ${label}: pid ${t.pid} (${t.comm}) fd ${fdOf(t, f)} would get ${what}, ${why}: ${TAIL}`,
    { pid: t.pid, fd: fdOf(t, f), ...(path === undefined ? {} : { path }) });
}

/** Whether fanotify_init(2) would give a caller without CAP_SYS_ADMIN this group and its marks. */
export function unprivilegedFanotify(f: FileRecord): boolean {
  const init = Number(f.initFlags);
  const marks = Array.isArray(f.marks) ? f.marks as Array<{ type?: unknown }> : [];
  return (init & ~FAN_FID_BITS) === 0 && (init & FAN_FID_BITS) !== 0 && marks.every((m) => m.type === 'inode');
}

/**
 * Throws EPRIVILEGE for the first fanotify group, alarm timerfd or character device a holder's
 * recorded credentials could not have had (the module comment says which).
 */
export function checkFilePrivilege(label: string, tasks: readonly Holder[], files: readonly FileRecord[]): void {
  // A field of the wrong type is left to the kind's own check (files/), which refuses it in its words.
  const u32 = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0 && (v as number) <= 0xffffffff;
  for (const f of files) {
    const holders = holdersOf(tasks, f);
    if (f.kind === 'fanotify' && u32(f.initFlags) && Array.isArray(f.marks) && !unprivilegedFanotify(f)) {
      const t = holders.find((h) => !hasCap(h, CAP_SYS_ADMIN));
      if (t) {
        throw refusal(label, t, f, `a fanotify group (init flags 0x${f.initFlags.toString(16)}, `
          + `${f.marks.length} marks) that only CAP_SYS_ADMIN may make (its events open files with no permission check)`,
        'and its credentials have no CAP_SYS_ADMIN');
      }
    }
    if (f.kind === 'timerfd' && (f.clock === CLOCK_REALTIME_ALARM || f.clock === CLOCK_BOOTTIME_ALARM)) {
      const t = holders.find((h) => !hasCap(h, CAP_WAKE_ALARM));
      if (t) {
        throw refusal(label, t, f, `a timerfd on ${f.clock === CLOCK_REALTIME_ALARM ? 'CLOCK_REALTIME_ALARM' : 'CLOCK_BOOTTIME_ALARM'}, `
          + 'which needs CAP_WAKE_ALARM when it is made', 'and its credentials have no CAP_WAKE_ALARM');
      }
    }
    // A /proc file of another process of the tree (procfile.ts; a container's own too): restore
    // opens it as root, so a holder must have been able to: the same effective uid as the
    // process it names, or CAP_SYS_PTRACE (ptrace_may_access), else only a public entry read-only.
    if (f.kind === 'procfile' && Number.isInteger(f.target) && typeof f.sub === 'string' && u32(f.flags)) {
      const target = tasks.find((t) => t.pid === f.target);
      const euid = (t: Holder): number | undefined => t.creds.threads[0]?.uids[1];
      const t = holders.find((h) => !hasCap(h, CAP_SYS_PTRACE) && (target === undefined || euid(h) !== euid(target))
        && !(((f.flags as number) & O_ACCMODE) === 0 && PROC_PUBLIC.has(f.sub as string)));
      if (t) {
        throw refusal(label, t, f, `/proc/${f.target as number}${(f.sub as string).slice(0, 256)} ${((f.flags as number) & O_ACCMODE) === 0 ? 'for reading' : 'for writing'}`,
          `a file of a process running as another user that only its own user or CAP_SYS_PTRACE may open so (its credentials have neither)`);
      }
    }
    if (f.kind === 'chr' && u32(f.major) && u32(f.minor) && !allowedDevice(f.major, f.minor) && holders.length > 0) {
      throw refusal(label, holders[0]!, f, `the character device ${shown(f.path)} (${f.major}:${f.minor})`,
        'which an untrusted image may not have opened (its driver acts when restore opens it as root; '
        + 'only null, zero, full, random, urandom, /dev/tty, /dev/ptmx and pseudo-terminals)', typeof f.path === 'string' ? f.path : undefined);
    }
  }
}

/** Whether an untrusted image may hold character device `major`:`minor`. */
export function allowedDevice(major: number, minor: number): boolean {
  return ALLOWED_DEVICES.has(`${major}:${minor}`) || (major >= 136 && major <= 143);
}

/** A host path looked up as a watch is added: in the host's root, the last component not followed. */
function statNoFollow(path: string): ReturnType<StatOf> {
  try {
    return statIn(hostRoot(), path, 'watched file', true);
  } catch {
    return undefined; // the kind's own check says why
  }
}

const S_IFMT = 0o170000, S_IFLNK = 0o120000;

/** The directories above an absolute path, nearest first, `/` excluded. */
function dirsOf(path: string): string[] {
  const out: string[] = [];
  for (let dir = path.slice(0, path.lastIndexOf('/')); dir !== ''; dir = dir.slice(0, dir.lastIndexOf('/'))) out.push(dir);
  return out;
}

/**
 * Throws EPRIVILEGE for the first inotify watch or fanotify mark on an inode a holder's
 * recorded credentials could not read, or reach, or whose path goes through a symbolic link
 * (`statOf` looks paths up in the root restore resolves them in, no last component followed).
 * A watch of a file of the image (`file`) is that file's.
 */
export function checkWatchAccess(label: string, tasks: readonly Holder[], files: readonly FileRecord[], statOf: StatOf = statNoFollow): void {
  for (const f of files) {
    if (f.kind !== 'inotify' && f.kind !== 'fanotify') continue;
    const list = (f.kind === 'inotify' ? f.watches : f.marks) as Array<{ path?: unknown; file?: unknown; type?: unknown; cwd?: unknown; root?: unknown }> | undefined;
    if (!Array.isArray(list)) continue;
    const holders = holdersOf(tasks, f);
    for (const w of list) {
      // A watch on a process's removed working or root directory (`cwd`, `root`) is added through
      // that process's own directory, its path only the text it had: nothing of the host to judge.
      if (typeof w !== 'object' || w === null || w.file !== undefined || w.cwd !== undefined || w.root !== undefined
        || typeof w.path !== 'string' || !w.path.startsWith('/')
        || w.path.includes('\0') || (f.kind === 'fanotify' && typeof w.type !== 'string')) continue; // the kind's check refuses it
      const st = statOf(w.path);
      if (!st) continue; // the kind's own check refuses a missing path
      // The directories are judged by name, so none may be a symlink: the watch's path walk
      // would go where no directory judged is (a link to a directory under /root).
      const link = dirsOf(w.path).find((d) => (Number(statOf(d)?.mode ?? 0) & S_IFMT) === S_IFLNK);
      for (const t of holders) {
        const why = link !== undefined ? `could not be judged on it: its path goes through the symbolic link ${shown(link)}` : unreadableAt(t, w.path, st, statOf);
        if (why === undefined) continue;
        const c = t.creds.threads[0];
        throw refusal(label, t, f, `${f.kind === 'inotify' ? 'an inotify watch' : `a fanotify ${String(w.type)} mark`} on ${shown(w.path)}, which needs read permission on it`,
          `and its credentials (uid ${c?.uids[3] ?? '?'}, gid ${c?.gids[3] ?? '?'}, no CAP_DAC_OVERRIDE or CAP_DAC_READ_SEARCH) ${why}`, w.path);
      }
    }
  }
}

/**
 * The devices (`major:minor`) of the kernel pseudo file systems mounted here, by type, from
 * mountinfo (`text`: /proc/self/mountinfo when not given).
 */
export function pseudoFsDevices(text?: string): Map<string, string> {
  const out = new Map<string, string>();
  let info = text;
  try {
    info ??= readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return out;
  }
  for (const line of info.split('\n')) {
    // id parent maj:min root point options [optional...] - type source super-options
    const fields = line.split(' ');
    const sep = fields.indexOf('-');
    const type = sep > 0 ? fields[sep + 1] : undefined;
    if (type !== undefined && PSEUDO_FS.has(type) && fields[2] !== undefined) out.set(fields[2], type);
  }
  return out;
}

/** The refusal of file `f` (a `reg` or `chr` record) when `dev`, its file's device, is a pseudo file system's, else undefined. */
function pseudoRefusal(label: string, tasks: readonly Holder[], f: FileRecord, dev: bigint, pseudo: ReadonlyMap<string, string>): FerryError | undefined {
  if (f.kind !== 'reg' && f.kind !== 'chr') return undefined;
  const type = pseudo.get(userDev(dev));
  const t = holdersOf(tasks, f)[0];
  if (type === undefined || !t) return undefined;
  return refusal(label, t, f, `${shown(f.path)}, a file of the kernel's ${type} file system`,
    'whose content is decided by the credentials of whoever opens it, and restore opens it as root', typeof f.path === 'string' ? f.path : undefined);
}

/**
 * Throws EPRIVILEGE for the first `reg` or `chr` record whose path names a file on a kernel
 * pseudo file system (`statOf` looks paths up as restore will; `pseudo`: pseudoFsDevices).
 */
export function checkPseudoFiles(label: string, tasks: readonly Holder[], files: readonly FileRecord[],
  statOf: (path: string) => Pick<BigIntStats, 'dev'> | undefined, pseudo: ReadonlyMap<string, string>): void {
  for (const f of files) {
    if ((f.kind !== 'reg' && f.kind !== 'chr') || typeof f.path !== 'string' || !f.path.startsWith('/') || f.removed !== undefined) continue;
    const st = statOf(f.path);
    const err = st && pseudoRefusal(label, tasks, f, st.dev, pseudo);
    if (err) throw err;
  }
}

/**
 * `guard` (openedFileGuard) judging also the file each open gave: one on a kernel pseudo file
 * system is refused however the path led there.
 */
export function guardPseudoFiles(guard: FileGuard, label: string, tasks: readonly Holder[], pseudo: ReadonlyMap<string, string>): FileGuard {
  return {
    ...guard,
    opened: (f, st) => {
      const err = pseudoRefusal(label, tasks, f, st.dev, pseudo);
      if (err) throw err;
      guard.opened(f, st);
    },
  };
}
