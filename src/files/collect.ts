/**
 * Dump side of the file engine: describe every descriptor of the tasks, find which share one
 * open file (cheap key, confirmed with kcmp(KCMP_FILE)), and dump each open file once.
 */
import { fstatSync, readFileSync, statfsSync } from 'node:fs';
import { describeCause, errnoCode, FerryError } from '../errors.js';
import { FdStat } from '../proc/fd-stat.js';
import type { FdRecord, FileRecord } from '../image/records.js';
import { THREAD_ALONE_KINDS } from '../image/sharing.js';
import { native } from '../native/binding.js';
import { parseFdinfo } from '../proc/fdinfo.js';
import { fdCloexec } from '../proc/fdinfo.js';
import { O_DIRECTORY, O_PATH } from '../proc/fcntl.js';
import { inOwnMountNs, listFds, readProcLink, readProcText } from '../proc/read.js';
import { ConfinedRoot, statIn } from './confined.js';
import { dumpOwner, ownerMatters } from './owner.js';
import { kindOf } from './registry.js';
import { DEFAULT_FILE_OPTIONS, type DumpContext, type FdDesc, type FileKind, type FileOptions } from './types.js';

/** kcmp(2) type comparing two descriptors' open file descriptions. */
const KCMP_FILE = 0;
/** O_CLOEXEC as fdinfo shows it (octal flags). */
const O_CLOEXEC = 0o2000000;

/**
 * Reads link, stat and fdinfo of every descriptor of `pid` (a descriptor closed meanwhile is
 * skipped), or of those in `only`: in one native call (procFds), the part of a checkpoint
 * that grows with the descriptors, once before the freeze (the root) and once inside it.
 */
export function describeFds(pid: number, only?: readonly number[]): FdDesc[] {
  const fds = only ?? listFds(pid);
  const out: FdDesc[] = [];
  native().procFds(pid, fds).forEach((r, i) => {
    if (r === null) return;
    const fdinfo = parseFdinfo(r.fdinfo);
    const async = (fdinfo.flags & O_ASYNC) !== 0;
    fdinfo.flags &= ~O_ASYNC;
    out.push({ pid, fd: fds[i]!, link: r.link, stat: new FdStat(r.stat), fdinfo, ...(async ? { async } : {}) });
  });
  return out;
}

/**
 * Throws the 'unsupported file' error for the first descriptor no module handles, or that
 * its module refuses with these options.
 */
export function checkSupported(descs: readonly FdDesc[], options: FileOptions = DEFAULT_FILE_OPTIONS): void {
  for (const d of descs) kindOf(d).precheck?.(d, options);
}

/** Open files of the dumped tasks and each task's descriptor table. */
export interface CollectedFiles {
  files: FileRecord[];
  /** Each process's table by pid, and each thread's own table (ThreadRecord.fds) by tid. */
  fds: Map<number, FdRecord[]>;
  /** Image entries the modules stored with `DumpContext.blob`, by name. */
  blobs: Map<string, Buffer>;
  /** Runs the modules' `onFinish` callbacks and closes grabbed files (idempotent). */
  finish(leftRunning: boolean): void;
  /** What the modules reported with `DumpContext.warn`, in order. */
  warnings: string[];
}

/**
 * Groups descriptors into open files, then dumps each open file once. Grouping comes first
 * for the whole tree, so a module can name other files by id (an epoll's targets, a socket's
 * peer). On failure, whatever the modules changed is undone before the error propagates.
 * `adopted`: controller descriptors of files no process holds that the image needs anyway (a
 * deleted file only mapped), made files of the image as `DumpContext.adopt` does; owned from
 * now on. `threads`: the descriptors of the threads with a table of their own (unshare(2) of
 * CLONE_FILES), by tid (their `pid` is the tid: /proc/TID shows the thread's table, and
 * kcmp(2) and pidfd_getfd(2) take it), grouped with the processes' (refuseInThreadTable).
 */
export function collectFiles(descsByPid: ReadonlyMap<number, readonly FdDesc[]>,
  options: FileOptions = DEFAULT_FILE_OPTIONS, adopted: ReadonlyArray<{ fd: number; via: string }> = [],
  threads: ReadonlyMap<number, { pid: number; descs: readonly FdDesc[] }> = new Map()): CollectedFiles {
  const fds = new Map<number, FdRecord[]>();
  /** Representatives per cheap key: one descriptor per distinct open file seen so far. */
  const groups = new Map<string, Array<{ desc: FdDesc; id: number }>>();
  const firsts: Array<{ desc: FdDesc; kind: FileKind; via?: string }> = [];
  const idOf = new Map<string, number>();
  /** The file id of `d` (a new one when no file seen so far is the same open file). */
  const place = (d: FdDesc, kind: FileKind, via?: string): number => {
    const key = kind.key(d);
    let reps = groups.get(key);
    if (!reps) groups.set(key, (reps = []));
    // Representatives stay sorted in kcmp's order, so each descriptor costs O(log n) kcmp
    // calls even when thousands of distinct files share a key (separately opened /dev/null).
    let lo = 0;
    let hi = reps.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const order = compareFiles(reps[mid]!.desc, d);
      if (order === 0) return reps[mid]!.id;
      if (order < 0) lo = mid + 1;
      else hi = mid;
    }
    const id = firsts.length + 1;
    firsts.push({ desc: d, kind, ...(via !== undefined ? { via } : {}) });
    reps.splice(lo, 0, { desc: d, id });
    return id;
  };
  /** The tree's processes' descriptors in the order collected (DumpContext.descriptors), and their holders by file id. */
  const descriptors: FdDesc[] = [];
  const holdersById = new Map<number, Array<{ pid: number; fd: number }>>();
  for (const [pid, descs] of descsByPid) {
    const table: FdRecord[] = [];
    for (const d of descs) {
      const id = place(d, kindOf(d));
      idOf.set(`${pid}:${d.fd}`, id);
      table.push({ fd: d.fd, file: id, cloexec: fdCloexec(d.fdinfo) });
      descriptors.push(d);
      let h = holdersById.get(id);
      if (!h) holdersById.set(id, (h = []));
      h.push({ pid, fd: d.fd });
    }
    fds.set(pid, table);
  }
  const treePids: ReadonlySet<number> = new Set(descsByPid.keys());
  // The processes' tables first: a file a thread's own table shares with one is dumped from
  // the process's descriptor, and the ids a thread's table adds are files it alone holds.
  const processFiles = firsts.length;
  for (const [tid, { pid, descs }] of threads) {
    const table: FdRecord[] = [];
    for (const d of descs) {
      const kind = kindOf(d);
      const id = place(d, kind);
      refuseInThreadTable(d, pid, kind, id > processFiles);
      table.push({ fd: d.fd, file: id, cloexec: fdCloexec(d.fdinfo) });
    }
    fds.set(tid, table);
  }

  const blobs = new Map<string, Buffer>();
  const finishers: Array<(leftRunning: boolean) => void> = [];
  const grabbed = new Map<string, number>();
  const scratches = new Map<string, Map<string, unknown>>();
  let finished = false;
  const finish = (leftRunning: boolean): void => {
    if (finished) return;
    finished = true;
    for (const fn of finishers.reverse()) fn(leftRunning);
    for (const fd of grabbed.values()) native().closeFd(fd);
  };
  const files: FileRecord[] = [];
  const warnings: string[] = [];
  const mounts = new TaskMounts();
  finishers.push(() => mounts.close());
  /** Files found in flight (adopt), by id, with where the first was found. */
  const inFlightIds = new Map<number, string>();
  /** A controller descriptor of each file found in flight (DumpContext.inFlight). */
  const inFlightFds: Array<{ fd: number; id: number }> = [];
  /** What the modules left for once every file is dumped (DumpContext.afterDump). */
  const afterDumps: Array<() => void> = [];
  /**
   * A controller descriptor (a file in flight, installed by a MSG_PEEK) made a file of the
   * image: owned from now on (closed with the grabbed ones), grouped like the tree's.
   */
  const adopt = (fd: number, via: string): number => {
    grabbed.set(`adopted:${fd}`, fd);
    let d: FdDesc | undefined;
    for (const x of describeFds(process.pid, [fd])) d = x;
    if (!d) throw new FerryError('EDUMP', `checkpoint: a file in flight ${via} vanished from ferry's descriptor ${fd}`);
    // An in-flight file has no descriptor flags: the peek's close-on-exec is ferry's.
    d.fdinfo.flags &= ~O_CLOEXEC;
    let kind: FileKind;
    try {
      kind = kindOf(d);
      kind.precheck?.(d, options);
    } catch (err) {
      throw inFlight(err, via);
    }
    const id = place(d, kind, via);
    idOf.set(`${process.pid}:${fd}`, id);
    if (!inFlightIds.has(id)) {
      inFlightIds.set(id, via);
      inFlightFds.push({ fd, id });
    }
    const holders = firsts[id - 1]!;
    if (kind.needsHolder && holders.via !== undefined) {
      throw new FerryError('EUNSUPPORTED', `unsupported file: ${d.link}, in flight ${via} and held by no process of the tree: a file of kind ${kind.kind} is restored through a process holding it; let the receiver read the message first`);
    }
    return id;
  };
  try {
    for (const a of adopted) adopt(a.fd, a.via);
    // Files found in flight while dumping are appended: the loop reads the length each time.
    for (let i = 0; i < firsts.length; i++) {
      const { desc, kind, via } = firsts[i]!;
      const id = i + 1;
      const ctx: DumpContext = {
        options,
        pids: treePids,
        fileIdOf: (pid, fd) => idOf.get(`${pid}:${fd}`),
        descriptors,
        holders: (pid, fd) => {
          const id = idOf.get(`${pid}:${fd}`);
          return (id === undefined ? undefined : holdersById.get(id)) ?? [];
        },
        grab: (d) => grab(d, grabbed),
        adopt,
        inFlight: () => inFlightFds,
        afterDump: (fn) => { afterDumps.push(fn); },
        blob: (suffix, data) => {
          const name = `files/${id}-${suffix}`;
          blobs.set(name, data);
          return name;
        },
        onFinish: (fn) => { finishers.push(fn); },
        warn: (message) => { warnings.push(message); },
        scratch: <T>(key: string): Map<string, T> => {
          let m = scratches.get(key);
          if (!m) scratches.set(key, (m = new Map()));
          return m as Map<string, T>;
        },
        mountNsRoot: (pid) => (mounts.of(pid) === null ? undefined : mounts.root(pid)),
      };
      // `link`: what readlink showed at dump, the key a restore can substitute an open file
      // of its own for (runc's descriptors.json: the container's stdio pipes).
      refuseReapedProcFile(desc, mounts);
      let dumped: Omit<FileRecord, 'id' | 'kind'>;
      try {
        dumped = kind.dump(desc, ctx);
      } catch (err) {
        throw via === undefined ? err : inFlight(err, via);
      }
      const rec = { ...dumped, id, kind: kind.kind, link: desc.link } as FileRecord;
      if (typeof rec.path === 'string' ? rootedInTask(desc, rec.path, mounts) : namesPathInTask(rec, kind, desc, mounts)) rec.root = 'task';
      if (ownerMatters(desc)) {
        const owner = dumpOwner(desc, grab(desc, grabbed), ctx.pids);
        if (owner) rec[desc.async ? 'async' : 'owner'] = owner;
      }
      files.push(rec);
    }
    for (const fn of afterDumps) fn();
    // A file that names a thread is opened on restore only once every thread exists, after
    // the queues that carry files are filled and the epoll items added: one in flight (held
    // by a process too, or not) could not be put back in its message, nor one an epoll
    // watches in its interest list.
    const byId = new Map(files.map((r) => [r.id, r]));
    const namesThread = (id: number): FileRecord | undefined => {
      const rec = byId.get(id);
      return rec !== undefined && firsts[id - 1]!.kind.namesThread?.(rec) === true ? rec : undefined;
    };
    for (const [id, via] of inFlightIds) {
      const rec = namesThread(id);
      if (rec === undefined) continue;
      throw new FerryError('EUNSUPPORTED', `unsupported file: ${String(rec.link)}, in flight ${via}: a /proc file of a thread, which restore opens only after the queued messages are put back; let the receiver read the message first`);
    }
    for (const ep of files.filter((r) => r.kind === 'eventpoll')) {
      for (const t of (ep.targets ?? []) as Array<{ fd: number; file: number }>) {
        const rec = namesThread(t.file);
        if (rec === undefined) continue;
        throw new FerryError('EUNSUPPORTED', `unsupported file: ${String(rec.link)}, watched by an epoll (item fd ${t.fd}): a /proc file of a thread, which restore opens only after the epoll items are added; remove it from the epoll first`);
      }
    }
  } catch (err) {
    finish(true);
    throw err;
  }
  return { files, fds, blobs, finish, warnings };
}

/**
 * The mounts of the tasks' namespaces, as `rootedInTask` needs them: each task's mount ids
 * as its mountinfo lists them (null: ferry's namespace), ferry's own, and, opened when first
 * needed, the root of a task's mount namespace. Closed with `close`.
 */
class TaskMounts {
  private readonly byPid = new Map<number, ReadonlySet<number> | null>();
  private readonly roots = new Map<string, ConfinedRoot>();
  /** The same, by pid, so that a pid asked again costs no readlink of its namespace. */
  private readonly rootOfPid = new Map<number, ConfinedRoot>();
  private own: ReadonlySet<number> | undefined;

  /** The mount ids of `pid`'s mountinfo, or null when it is in ferry's mount namespace. */
  of(pid: number): ReadonlySet<number> | null {
    let ids = this.byPid.get(pid);
    if (ids === undefined) {
      ids = inOwnMountNs(pid) ? null : mountIds(readProcText(pid, 'mountinfo'));
      this.byPid.set(pid, ids);
    }
    return ids;
  }

  /** The mount ids of ferry's namespace (ferry's root is its root: the list is whole). */
  ferry(): ReadonlySet<number> {
    return (this.own ??= mountIds(readFileSync('/proc/self/mountinfo', 'utf8')));
  }

  /**
   * The root of `pid`'s mount namespace (its container's root), whatever the task's own root:
   * from there by ".." until it leads nowhere higher (the root of a mount namespace is its own
   * parent; ".." from ferry stops at ferry's root only, which this namespace's does not hold).
   */
  root(pid: number): ConfinedRoot {
    const known = this.rootOfPid.get(pid);
    if (known) return known;
    const ns = readProcLink(pid, 'ns/mnt');
    let root = this.roots.get(ns);
    if (!root) {
      const n = native();
      let fd = n.openRaw(`/proc/${pid}/root`, O_PATH | O_DIRECTORY);
      try {
        let here = fstatSync(fd, { bigint: true });
        for (let i = 0; ; i++) {
          if (i >= 4096) throw new FerryError('EDUMP', `the root of the mount namespace of pid ${pid} is more than 4096 directories above its root`, { pid });
          const up = n.openat2(fd, '..', O_PATH | O_DIRECTORY, 0, 0);
          let above;
          try {
            above = fstatSync(up, { bigint: true });
          } catch (err) {
            n.closeFd(up);
            throw err;
          }
          n.closeFd(fd);
          fd = up;
          if (above.dev === here.dev && above.ino === here.ino) break;
          here = above;
        }
      } catch (err) {
        n.closeFd(fd);
        throw err;
      }
      root = new ConfinedRoot(`the root of the mount namespace of pid ${pid}`, 'in-root', fd);
      this.roots.set(ns, root);
    }
    this.rootOfPid.set(pid, root);
    return root;
  }

  close(): void {
    for (const r of this.roots.values()) r.close();
    this.roots.clear();
    this.rootOfPid.clear();
  }
}

/** The mount ids (first field) of a mountinfo text. */
function mountIds(text: string): ReadonlySet<number> {
  return new Set(text.split('\n').filter(Boolean).map((l) => Number(l.split(' ')[0])));
}

/**
 * Whether the path of `d` (`path`, what its record keeps) is relative to its task's root
 * rather than ferry's: the task lives in another mount namespace (a container) and the file
 * is on a mount of that namespace, its link the path from that namespace's root; a file
 * inherited from outside, such as a log the runtime opened, is on a mount of ferry's and its
 * path is ferry's.
 *
 * A task's mountinfo lists only the mounts its own root reaches: one chroot'ed inside its
 * container (chroot("/jail")) does not see its container's root mount, nor /proc or /dev,
 * and a file it holds from before the chroot (its container's "/", opened O_PATH) is on one
 * of them. Such a file is its namespace's all the same, never ferry's, whose mounts ferry's
 * own mountinfo lists whole: it is the task's when its path, resolved inside the root of the
 * task's mount namespace as restore resolves it, is that very file (device and inode). One
 * that is not (on a mount of a third namespace, or unmounted since) is refused: restore would
 * find another file there, and resolved on the host it would give the container a file of the
 * host's (docs/security.md).
 */
function rootedInTask(d: FdDesc, path: string, mounts: TaskMounts): boolean {
  const ids = mounts.of(d.pid);
  if (ids === null) return false;
  if (ids.has(d.fdinfo.mntId)) return true;
  if (mounts.ferry().has(d.fdinfo.mntId)) return false;
  // A removed file comes back from the image's copy, by its identity, not by this path.
  if (d.link.endsWith(' (deleted)')) return true;
  let st;
  try {
    st = statIn(mounts.root(d.pid), path, `fd ${d.fd} of pid ${d.pid}`, !d.stat.isDirectory() && (d.fdinfo.flags & O_PATH) !== 0);
  } catch {
    st = undefined;
  }
  if (st?.dev !== d.stat.dev || st.ino !== d.stat.ino) {
    throw new FerryError('EUNSUPPORTED', `unsupported file: pid ${d.pid} fd ${d.fd} -> ${d.link} is on a mount that the root of its mount namespace `
      + '(its container\'s) does not lead to (a mount of another namespace, or one unmounted since): restore could not find that file again by its path; '
      + 'close it in the process before the checkpoint; the tree was left running', { pid: d.pid });
  }
  return true;
}

/**
 * Whether a record without a `path` names paths of its task's file system, held by a task of
 * another mount namespace (a container): a unix socket's path name (its own, or the outside
 * peer's it connects to again) was bound there, inside the task's root; the paths of a kind
 * that finds them through the task's mounts (FileKind.pathsInTask: a watched file's, which
 * its module looked up from the root of the task's mount namespace) are from there.
 */
function namesPathInTask(rec: FileRecord, kind: FileKind, d: FdDesc, mounts: TaskMounts): boolean {
  if (kind.pathsInTask === true) return mounts.of(d.pid) !== null;
  if (rec.kind !== 'unix') return false;
  const named = (n: unknown): boolean => typeof (n as { path?: unknown } | null | undefined)?.path === 'string';
  return (named(rec.name) || named(rec.external)) && mounts.of(d.pid) !== null;
}


/** statfs(2) f_type of a procfs. */
const PROC_SUPER_MAGIC = 0x9fa0;
/** The link of a file under /proc/<pid>/ (or the directory itself), maybe of a reaped process's. */
const PROC_PID_LINK = /^\/proc\/(\d+)(?:\/[^\0]*)?(?: \(deleted\))?$/;

/**
 * Refuses a file under /proc/<pid>/ of a container's own procfs (its pid namespace's: such a
 * file of a live process of the tree is procfile.ts's, by the container's pid, opened once the
 * restored container's processes exist) whose process had exited and been reaped (a child's
 * /proc/<pid>/status kept after waitpid). Its path, looked up again from the root of the
 * task's mount namespace, finds no file or another inode (procfile.ts tells a live one's file
 * so on ferry's own procfs): restore would find no file there, or the file of whatever process
 * has that pid in the restored container. Ferry's procfs files of reaped processes
 * (procfile.ts `gone`) are made again through a process of ferry's, which a container's pid
 * namespace does not hold.
 */
function refuseReapedProcFile(d: FdDesc, mounts: TaskMounts): void {
  const m = PROC_PID_LINK.exec(d.link);
  if (!m || mounts.of(d.pid) === null) return;
  try {
    if (statfsSync(`/proc/${d.pid}/fd/${d.fd}`).type !== PROC_SUPER_MAGIC) return;
  } catch {
    return; // closed meanwhile: the module says so
  }
  const deleted = d.link.endsWith(' (deleted)');
  let st;
  if (!deleted) {
    try {
      st = statIn(mounts.root(d.pid), d.link, `fd ${d.fd} of pid ${d.pid}`, !d.stat.isDirectory() && (d.fdinfo.flags & O_PATH) !== 0);
    } catch (err) {
      // Not "gone": the path could not be looked up (a magic link, a permission): said as such.
      throw new FerryError('EUNSUPPORTED', `unsupported file: pid ${d.pid} fd ${d.fd} -> ${d.link}, a /proc file in its container, could not be looked up `
        + `again inside the container (${describeCause(err)}), which restore does to open it; close it in the process before the checkpoint; `
        + 'the tree was left running', { pid: d.pid, cause: err });
    }
  }
  if (st !== undefined && st.dev === d.stat.dev && st.ino === d.stat.ino) return;
  const task = /^\/proc\/\d+\/task\/(\d+)\//.exec(d.link)?.[1];
  throw new FerryError('EUNSUPPORTED', `unsupported file: pid ${d.pid} fd ${d.fd} -> ${d.link} is a /proc file of ${task !== undefined && task !== m[1] ? `thread ${task} of ` : ''}process ${m[1]} of its container, `
    + `which had exited${task !== undefined && task !== m[1] ? '' : ' and been reaped'}: restore opens a container's /proc files by path, which would find no file there or another process's; `
    + 'close it in the process before the checkpoint; the tree was left running', { pid: d.pid });
}

/**
 * Refuses a descriptor of a thread's own table (`tid` is `d.pid`, of process `pid`) restore
 * could not put back there: an epoll (its items are keyed by the numbers of the table they
 * were added through, and added again through a process's), a file only such a table holds
 * (`alone`) of a kind not in THREAD_ALONE_KINDS or with a lock (restore takes locks back
 * through a process's table), and a POSIX lock held through it (fdinfo shows the locks of
 * the table it is read through: such a lock belongs to the thread's table, not its process's).
 * A flock, OFD lock or lease of a file its process holds too belongs to the open file, and
 * comes back through the process.
 */
function refuseInThreadTable(d: FdDesc, pid: number, kind: FileKind, alone: boolean): void {
  const locks = (d.fdinfo.lines.get('lock') ?? []).filter((l) => alone || /^\d+:\s+(->\s+)?POSIX\s/.test(l.trim()));
  const why = kind.kind === 'eventpoll' ? 'an epoll'
    : alone && !THREAD_ALONE_KINDS.has(kind.kind) ? `a file of kind ${kind.kind} that no process of the tree holds`
      : locks.length > 0 ? `a file locked through it (${locks[0]!.trim()})` : undefined;
  if (why === undefined) return;
  throw new FerryError('EUNSUPPORTED', `unsupported file: fd ${d.fd} of thread ${d.pid} of pid ${pid} -> ${d.link} is ${why}, in a descriptor table `
    + 'of the thread\'s own (unshare(2) of CLONE_FILES), which restore cannot put back there yet; the tree was left running', { pid });
}

/** O_ASYNC: the open file signals its owner (owner.ts). */
const O_ASYNC = 0o20000;

/** An error about a file found in flight, saying where (its pid and fd are ferry's). */
function inFlight(err: unknown, via: string): Error {
  if (!(err instanceof Error)) return new Error(String(err));
  const message = `${err.message.replace(/^unsupported file: pid \d+ fd \d+ -> /, 'unsupported file: ')} (found in flight ${via})`;
  return err instanceof FerryError ? new FerryError(err.code, message, { cause: err }) : new Error(message, { cause: err });
}

/**
 * pidfd_getfd of `d` into the controller, once per descriptor; the pidfd of each process is
 * opened once and kept in `grabbed` too (under `pidfd:PID`), closed with the copies.
 */
function grab(d: Pick<FdDesc, 'pid' | 'fd' | 'link'>, grabbed: Map<string, number>): number {
  const key = `${d.pid}:${d.fd}`;
  const have = grabbed.get(key);
  if (have !== undefined) return have;
  const n = native();
  try {
    let pidfd = grabbed.get(`pidfd:${d.pid}`);
    if (pidfd === undefined) grabbed.set(`pidfd:${d.pid}`, (pidfd = taskPidfd(d.pid)));
    const fd = n.pidfdGetfd(pidfd, d.fd);
    grabbed.set(key, fd);
    return fd;
  } catch (err) {
    throw new FerryError('EGRAB', `cannot take a copy of fd ${d.fd} of pid ${d.pid} (${d.link}): ${(err as Error).message}`, { cause: err });
  }
}

/** PIDFD_THREAD (O_EXCL): pidfd_open(2) of a thread that leads no process (Linux 6.9). */
const PIDFD_THREAD = 0o200;

/**
 * A pidfd of `pid`, or of a thread with a descriptor table of its own (`pid` is its tid):
 * pidfd_open(2) refuses a thread that leads no process (EINVAL, ENOENT on newer kernels)
 * unless asked for a thread's pidfd, and pidfd_getfd(2) through that takes from the thread's
 * table. A kernel before 6.9 refuses PIDFD_THREAD too: such a thread's files are not taken.
 */
function taskPidfd(pid: number): number {
  const n = native();
  try {
    return n.pidfdOpen(pid);
  } catch (err) {
    const code = errnoCode(err);
    if (code !== 'EINVAL' && code !== 'ENOENT') throw err;
    return n.pidfdOpen(pid, PIDFD_THREAD);
  }
}

/** kcmp(KCMP_FILE) of a against b: 0 the same open file, <0 a orders first, >0 after. */
function compareFiles(a: FdDesc, b: FdDesc): number {
  try {
    const r = native().kcmp(a.pid, b.pid, KCMP_FILE, a.fd, b.fd);
    return r === 0 ? 0 : r === 1 ? -1 : 1; // kcmp: 1 means a < b, 2 means a > b
  } catch (err) {
    throw new FerryError('EKCMP', `cannot compare fd ${a.fd} of pid ${a.pid} with fd ${b.fd} of pid ${b.pid}: ${(err as Error).message}`, { cause: err });
  }
}
