/**
 * Restore side of the file engine: a scheduler that opens every file in the controller (a
 * module may answer NOT_YET and is retried once others are open; no progress in a full round
 * means a dependency cycle), then installs the open files into each task at their descriptor
 * numbers: the controller sends them to the task in SCM_RIGHTS messages, each one injected
 * recvmsg(2) (receiveTable); a few far above the rest the task pulls one by one with
 * pidfd_getfd(2) and moves with dup3(2). Either way the task holds the same open file
 * description, so offsets stay shared between all holders.
 */
import { closeSync, fstatSync, openSync, type BigIntStats } from 'node:fs';
import { errnoCode, FerryError } from '../errors.js';
import type { FdRecord, FileRecord } from '../image/records.js';
import { native } from '../native/binding.js';
import { SYS } from '../arch/x86-64.js';
import { injectedError, type Scratch, type Tracee } from '../task/tracee.js';
import { ConfinedRoot, placeRecord } from './confined.js';
import { describeOwner, restoreOwner, type OwnerRecord } from './owner.js';
import { kindByName } from './registry.js';
import { DEFAULT_FILE_OPTIONS, NOT_YET, type FileOptions, type OpenContext } from './types.js';

const F_DUPFD_CLOEXEC = 1030, F_GETFD = 1, F_SETFD = 2, O_CLOEXEC = 0o2000000;

/**
 * The roots the paths of the records resolve in while the scheduler checks or opens them
 * (confined.ts): the host's '/' (the default), and for a record with `root: 'task'` (a file
 * inside a container) the task's root, `taskRoot` (/proc/<the restored container's init>/root),
 * opened when first needed and closed by `close`. With `confineAll` (a container restored
 * from an image no trusted key signed) every record resolves in the task's root: nothing of
 * such an image reaches the host's file system (checkContainerHostFiles refused those that
 * name a host path; a socket's name, a watched file are resolved in the container). A watched
 * file of any container's image is resolved in the task's root (FileKind.pathsInTask).
 */
class Roots {
  private task: ConfinedRoot | undefined;
  private real: ConfinedRoot | undefined;

  constructor(private readonly taskRoot: string | undefined, private readonly guard?: FileGuard,
    private readonly confineAll = false) {}

  /**
   * A record as its module must see it: a path inside a container is made reachable from
   * ferry through `taskRoot` (for the modules that open paths themselves), and its place, the
   * path inside the task's root, is given to the modules that resolve it confined there.
   */
  rebased(r: FileRecord): FileRecord {
    // A kind whose paths are always its task's (a watched file's: FileKind.pathsInTask) has
    // them resolved in the container's root whatever the record says: a record without
    // `root: 'task'` (from an older ferry, or edited before a trusted key signed it) would
    // otherwise have the host's /etc/shadow watched for the container.
    const inTask = r.root === 'task' || (this.taskRoot !== undefined && (this.confineAll || kindByName(r.kind).pathsInTask === true));
    if (!inTask) {
      if (!this.guard?.covers(r)) return r;
      // A copy: the place lives as long as the record, the root only as long as these Roots.
      this.real ??= new ConfinedRoot('/', 'in-root-no-symlinks');
      const out = { ...r };
      placeRecord(out, { root: this.real, path: r.path as string });
      return out;
    }
    if (this.taskRoot === undefined) throw new FerryError('EIMAGE', `file ${r.id} (${String(r.path ?? r.kind)}) is inside a container: restore it as a container`);
    this.task ??= new ConfinedRoot(this.taskRoot, 'in-root');
    // A record whose paths are elsewhere (a socket's name) gets its root only (confined.ts rootOf).
    const out = typeof r.path === 'string' ? { ...r, path: `${this.taskRoot}${r.path}` } : { ...r };
    placeRecord(out, { root: this.task, path: typeof r.path === 'string' ? r.path : '' });
    return out;
  }

  close(): void {
    this.task?.close();
    this.real?.close();
  }
}

/**
 * For an untrusted image (restore/file-access.ts openedFileGuard): the host files its
 * processes hold open by path are resolved with no symlink followed ('in-root-no-symlinks'),
 * and what each open gave is judged before any process gets it.
 */
export interface FileGuard {
  /** Whether `rec`'s path is resolved with no symlink followed (a host path, by its kind). */
  covers(rec: FileRecord): boolean;
  /** Throws to refuse the file `rec`'s module opened (`st`: its fstat); covered records only. */
  opened(rec: FileRecord, st: BigIntStats): void;
  /** The error for a covered record whose path goes through a symlink (`cause`: confined.ts's ECONFINE). */
  throughSymlink(rec: FileRecord, cause: FerryError): FerryError;
}

/** `err` as the guard words it when it is a covered record's path going through a symlink. */
function guarded(err: unknown, r: FileRecord, guard: FileGuard | undefined): unknown {
  if (guard?.covers(r) && err instanceof FerryError && err.code === 'ECONFINE' && errnoCode(err.cause) === 'ELOOP') {
    return guard.throughSymlink(r, err);
  }
  return err;
}

/** Checks that every file can be opened here, before any process is created. */
export function checkFiles(records: readonly FileRecord[], taskRoot?: string, inherit?: ReadonlyMap<string, number>, guard?: FileGuard,
  confineAll = false): void {
  const roots = new Roots(taskRoot, guard, confineAll);
  try {
    for (const r of records) {
      if (typeof r.link === 'string' && inherit?.has(r.link)) continue;
      try {
        kindByName(r.kind).check?.(roots.rebased(r));
      } catch (err) {
        throw guarded(err, r, guard);
      }
    }
  } finally {
    roots.close();
  }
}

/**
 * Refuses (EPRIVILEGE, one line), before anything is made, a file of a container's image no
 * trusted key signed (`files`: those the caller does not hand in) that names a path on the
 * host: a record without `root: 'task'`. A checkpoint records so what a container's process
 * held from outside its container (its stdout, a log its runtime opened), and the restore
 * opens it by that path on the host; an edited image would name any file of the host there
 * (/etc/shadow, opened for writing) and give it to the container. Such a file comes back only
 * from an image this host or a trusted key signed, or handed in by the caller (--inherit-fd).
 */
export function checkContainerHostFiles(label: string, files: readonly FileRecord[]): void {
  const r = files.find((f) => f.root !== 'task' && typeof f.path === 'string');
  if (r === undefined) return;
  const shown = (v: unknown): string => String(v).slice(0, 256).replace(/[\0-\x1f]/g, '?'); // the image's words: bounded, one line
  throw new FerryError('EPRIVILEGE', `image ${label}: file ${r.id} (${r.kind} ${shown(r.path)}) of the container's processes is a file of the host, `
    + 'outside the container, which only an image signed by a trusted key may name: refused, nothing was restored; '
    + `hand it in with --inherit-fd fd[N]:${shown(r.link ?? r.path)}, or restore an image signed by a key of image.trust`, { path: shown(r.path) });
}

/**
 * Refuses (EIMAGE, one line), before anything is made, a file that names a thread
 * (FileKind.namesThread) where restore could not put it: in a container's image
 * (`container`: installLate pulls it through ferry's pid, which the container's pid namespace
 * does not show; a container's /proc is its own, so its image never holds one), or one that
 * another file puts in place before the threads exist (FileKind.filesBeforeThreads: an epoll's
 * item, a file a unix socket's queued message carries), which a checkpoint refuses
 * (collect.ts). Either is an edited image. `label` names the image.
 */
export function checkThreadFiles(label: string, records: readonly FileRecord[], container: boolean): void {
  const late = new Map<number, FileRecord>();
  for (const r of records) if (kindByName(r.kind).namesThread?.(r) === true) late.set(r.id, r);
  if (late.size === 0) return;
  const refuse = (why: string): never => {
    throw new FerryError('EIMAGE', `image ${label}: ${why}, which a checkpoint never records: refused (an edited image); nothing was restored`);
  };
  const what = (r: FileRecord): string => (r.kind === 'pidfd' ? 'a pidfd of a thread' : 'a /proc file of a thread');
  if (container) {
    const first = late.values().next().value!;
    refuse(`file ${first.id} is ${what(first)} in a container's image`);
  }
  for (const r of records) {
    const id = kindByName(r.kind).filesBeforeThreads?.(r).find((x) => late.has(x));
    if (id !== undefined) {
      refuse(`file ${r.id} (${r.kind}) names file ${id}, ${what(late.get(id)!)}, as an epoll item or a file in flight (restore opens such a file only once every thread exists)`);
    }
  }
}

/** Everything the scheduler knows during one restore. */
export interface RestoreFiles {
  /** file id -> controller descriptor (negative keys: descriptors the modules hold, OpenContext.hold). */
  opened: Map<number, number>;
  /** The context the modules got (and `installed` hooks get again). */
  ctx: OpenContext;
  /**
   * Files that name a thread (FileKind.namesThread), by id: opened once every thread exists
   * (openAfterThreads) and installed then (installLate), left out of installFds.
   */
  late: ReadonlySet<number>;
}

/**
 * Opens every file in the controller. A module may answer NOT_YET; it is retried once others
 * are open, and a round without progress is a dependency cycle.
 */
export function openFiles(records: readonly FileRecord[], options: FileOptions = DEFAULT_FILE_OPTIONS,
  blobs: ReadonlyMap<string, Buffer> = new Map(), taskRoot?: string, inherit?: ReadonlyMap<string, number>, guard?: FileGuard,
  confineAll = false): RestoreFiles {
  const opened = new Map<number, number>();
  // Every path is opened by now (modules open in `open`, never later): the roots close at the end.
  const roots = new Roots(taskRoot, guard, confineAll);
  try {
    records = records.map((r) => roots.rebased(r));
    return openAll(records, opened, options, blobs, inherit, guard);
  } finally {
    roots.close();
  }
}

/** The scheduler itself: `openFiles` with the records rebased. */
function openAll(records: readonly FileRecord[], opened: Map<number, number>, options: FileOptions,
  blobs: ReadonlyMap<string, Buffer>, inherit: ReadonlyMap<string, number> | undefined, guard: FileGuard | undefined): RestoreFiles {
  // Files the caller hands in instead (by the link text they had at dump): used as they are.
  const inherited = records.filter((r) => typeof r.link === 'string' && inherit?.has(r.link));
  if (inherited.length > 0) {
    const n = native();
    const self = n.pidfdOpen(process.pid);
    try {
      for (const r of inherited) opened.set(r.id, n.pidfdGetfd(self, inherit!.get(r.link as string)!));
    } finally {
      n.closeFd(self);
    }
  }
  const byId = new Map(records.map((r) => [r.id, r]));
  const scratches = new Map<string, Map<string, unknown>>();
  // Descriptors the modules hold (OpenContext.hold) live in `opened` under negative keys, no
  // file's id: closeFiles closes them with the files, on success and on failure alike.
  const held = new Map<number, number>();
  let nextHeld = 0;
  const release = (fd: number): void => {
    const key = held.get(fd);
    if (key === undefined) return;
    held.delete(fd);
    opened.delete(key);
  };
  const ctx: OpenContext = {
    options,
    opened: (id) => opened.get(id),
    record: (id) => byId.get(id),
    records: () => records,
    inherited: (id) => inherited.some((r) => r.id === id),
    blob: (name) => {
      const b = blobs.get(name);
      if (!b) throw new FerryError('EIMAGE', `image entry ${name} is missing`);
      return b;
    },
    scratch: <T>(key: string): Map<string, T> => {
      let m = scratches.get(key);
      if (!m) scratches.set(key, (m = new Map()));
      return m as Map<string, T>;
    },
    hold: (fd) => {
      if (held.has(fd)) return;
      held.set(fd, --nextHeld);
      opened.set(nextHeld, fd);
    },
    release,
  };
  // A kind that names restored processes is opened once the tree exists (openAfterTree), a
  // record that names a thread once every thread does (openAfterThreads).
  const late = new Set(records.filter((r) => !opened.has(r.id) && kindByName(r.kind).namesThread?.(r) === true).map((r) => r.id));
  let pending = records.filter((r) => !opened.has(r.id) && !kindByName(r.kind).openAfterTree);
  try {
    while (pending.length > 0) {
      const waiting: FileRecord[] = [];
      for (const r of pending) {
        let fd: number | typeof NOT_YET;
        try {
          fd = kindByName(r.kind).open(r, ctx);
        } catch (err) {
          throw guarded(err, r, guard);
        }
        if (fd === NOT_YET) waiting.push(r);
        else {
          release(fd); // a held descriptor returned becomes that file's
          opened.set(r.id, fd);
          // Judged as opened (after `opened` has it: a refusal closes it with the rest), not
          // as the path named it when checked: a rename may have raced in between.
          if (guard?.covers(r)) guard.opened(r, fstatSync(fd, { bigint: true }));
        }
      }
      if (waiting.length === pending.length) {
        throw new FerryError('EDEPEND', `cannot restore files ${waiting.map((r) => `${r.id} (${r.kind})`).join(', ')}: they wait for each other`);
      }
      pending = waiting;
    }
  } catch (err) {
    closeFiles(opened);
    throw err;
  }
  return { opened, ctx, late };
}

/**
 * Opens, once every process of the tree exists, the files of the kinds that name restored
 * processes (FileKind.openAfterTree), into `files`, then runs the kinds' `afterTree`;
 * `hostPid` maps an image pid to ferry's; a record with `root: 'task'` (a container's /proc
 * file) is placed in `taskRoot`, the restored container's root.
 */
export async function openAfterTree(files: RestoreFiles, records: readonly FileRecord[],
  hostPid: (pid: number) => number | undefined, taskRoot?: string): Promise<void> {
  const roots = new Roots(taskRoot);
  try {
    for (const r of records) {
      const late = kindByName(r.kind).openAfterTree;
      if (late && !files.late.has(r.id) && !files.opened.has(r.id)) files.opened.set(r.id, await late(roots.rebased(r), hostPid));
    }
  } finally {
    roots.close();
  }
  // Then each kind's work that needs every file and process (FileKind.afterTree), once.
  for (const kind of new Set(records.map((r) => r.kind))) kindByName(kind).afterTree?.(files.ctx, hostPid);
}

/**
 * Opens, once every thread of the tree exists, the files that name a thread
 * (FileKind.namesThread: RestoreFiles.late), into `files`; `hostTid` maps a thread of the
 * image (its process's pid and its tid) to ferry's id of it.
 */
export async function openAfterThreads(files: RestoreFiles, records: readonly FileRecord[],
  hostTid: (pid: number, tid: number) => number | undefined): Promise<void> {
  for (const r of records) {
    if (!files.late.has(r.id) || files.opened.has(r.id)) continue;
    const open = kindByName(r.kind).openAfterThreads;
    if (!open) throw new Error(`file ${r.id} (${r.kind}) names a thread, yet its kind has no openAfterThreads`);
    files.opened.set(r.id, await open(r, hostTid));
  }
}

/** Runs the `afterRebuild` hook of each opened file's kind (FileKind.afterRebuild). */
export function afterRebuild(files: RestoreFiles, records: readonly FileRecord[], hostPid: (pid: number) => number | undefined): void {
  for (const r of records) {
    const hook = kindByName(r.kind).afterRebuild;
    const fd = files.opened.get(r.id);
    if (hook && fd !== undefined) hook(r, fd, hostPid);
  }
}

/** Runs the `beforeLetGo` hook of each opened file's kind (FileKind.beforeLetGo). */
export function beforeLetGo(files: RestoreFiles, records: readonly FileRecord[]): void {
  for (const r of records) {
    const hook = kindByName(r.kind).beforeLetGo;
    const fd = files.opened.get(r.id);
    if (hook && fd !== undefined) hook(r, fd);
  }
}

/** Closes the controller's descriptors once every task holds its copies. */
export function closeFiles(opened: Map<number, number>): void {
  for (const fd of opened.values()) native().closeFd(fd);
  opened.clear();
}

/**
 * Installs a task's descriptor table (the task must have no descriptors yet), then runs the
 * `installed` hook of each file kind that has one, once per file, with the task's numbers
 * (unless `hooks` is false: a thread's own table, installThreadTable).
 */
export function installFds(t: Tracee, scratch: Scratch, pid: number, table: readonly FdRecord[], files: RestoreFiles,
  controllerPidfd?: number, hooks = true): void {
  // A file that names a thread comes later (installLate): its number stays free until then.
  if (files.late.size > 0) table = table.filter((rec) => !files.late.has(rec.file));
  const sorted = [...table].sort((a, b) => a.fd - b.fd);
  const top = (sorted.at(-1)?.fd ?? -1) + 1;
  // A pidfd of the controller above every descriptor the task will have: opened here, or
  // (inside a container, where ferry's pid is not visible) handed in when the task was made.
  let pidfd = controllerPidfd ?? -1;
  if (pidfd < 0) {
    if (table.length === 0) return;
    pidfd = controllerPidfdIn(t, top);
  }
  const controllerFd = (rec: FdRecord): number => openedFd(files, rec);
  const dense = densePrefix(sorted);
  const received = dense.length >= BATCH_MIN ? receiveTable(t, scratch, pidfd, top, dense, controllerFd) : 0;
  // The rest one by one.
  pullEach(t, pidfd, sorted.slice(received), controllerFd);
  // The hooks may pull a file no process holds through the pidfd (TaskContext.pull); a task
  // left holding it after a failure is being removed with it.
  if (hooks) runHooks(t, scratch, pid, sorted, files, pidfd);
  t.syscall(SYS.close, pidfd);
}

/** Runs the kinds' `installed` hooks for a table just installed (installFds). */
function runHooks(t: Tracee, scratch: Scratch, pid: number, sorted: readonly FdRecord[], files: RestoreFiles, pidfd: number): void {
  const pull = (id: number): number => {
    const cfd = files.opened.get(id);
    if (cfd === undefined) throw new Error(`file ${id} was not opened`);
    return Number(t.syscall(SYS.pidfd_getfd, pidfd, cfd, 0)); // O_CLOEXEC set
  };
  const lowest = new Map<number, number>();
  for (const rec of sorted) if (!lowest.has(rec.file)) lowest.set(rec.file, rec.fd);
  for (const first of [true, false]) {
    for (const [fileId, fd] of lowest) {
      const record = files.ctx.record(fileId);
      const kind = record && kindByName(record.kind);
      if (!record || !kind?.installed || (kind.installFirst === true) !== first) continue;
      scratch.reset();
      kind.installed(record, { tracee: t, scratch, pid, fd, fdOf: (id) => lowest.get(id), pull, open: files.ctx });
    }
  }
}

/**
 * Gives thread `t` (`tid` in the image) of process `pid` the descriptor table of its own it
 * had (ThreadRecord.fds, `table`): made with CLONE_FILES, it shares its process's, installed
 * already; unshare(2) of CLONE_FILES gives it a copy of that, which it empties with
 * close_range(2) (but for `keep`, a pidfd of the controller above every number of the image,
 * inside a container where ferry's pid is not visible), then its own descriptors are
 * installed there as a process's are, the same open file descriptions where its process's
 * table (or another's) holds them too, so offsets and flags stay shared. Closing the copies drops nothing of the process's: POSIX
 * locks belong to the table they were taken through. The kinds' `installed` hooks do not run
 * again: what a thread's table holds alone needs none (files/collect.ts THREAD_ALONE_KINDS),
 * and a file it shares had them run through a process's table.
 */
export function installThreadTable(t: Tracee, tid: number, scratch: Scratch, pid: number, table: readonly FdRecord[], files: RestoreFiles,
  keep?: number): void {
  // Checked before the close: a close_range after a failed unshare would empty the process's table.
  const r = t.trySyscall(SYS.unshare, CLONE_FILES);
  if (r < 0n) throw new FerryError('ESTATE', `cannot give thread ${tid} of pid ${pid} its own descriptor table again: unshare(CLONE_FILES) failed with ${injectedError(SYS.unshare, Number(-r), t.tid).code}`, { pid });
  t.syscalls(keep === undefined ? [[SYS.close_range, 0, CLOSE_ALL]]
    : [[SYS.close_range, 0, keep - 1], [SYS.close_range, keep + 1, CLOSE_ALL]]);
  installFds(t, scratch, pid, table, files, keep, false);
}

/** unshare(2) flag: a descriptor table of one's own. */
const CLONE_FILES = 0x400;
/** close_range(2)'s last descriptor meaning all of them (~0U). */
const CLOSE_ALL = 0xffffffff;

/** The controller's descriptor of the file `rec` installs (opened by now). */
function openedFd(files: RestoreFiles, rec: FdRecord): number {
  const cfd = files.opened.get(rec.file);
  if (cfd === undefined) throw new Error(`file ${rec.file} of fd ${rec.fd} was not opened`);
  return cfd;
}

/** A pidfd of the controller (ferry) opened in `t`, at `top` or above (close-on-exec). */
function controllerPidfdIn(t: Tracee, top: number): number {
  const first = Number(t.syscall(SYS.pidfd_open, process.pid, 0));
  return Number(t.syscalls([[SYS.fcntl, first, F_DUPFD_CLOEXEC, top], [SYS.close, first]])[0]);
}

/**
 * Installs `recs` in `t` one by one: each pulled with pidfd_getfd(2) through `pidfd` (the
 * copy takes the lowest free number, O_CLOEXEC set), then moved to its number with dup3(2)
 * and its close-on-exec flag. `free`: the task may hold descriptors already, and each number
 * must still be free (F_GETFD fails with EBADF), so that nothing of its own is replaced
 * (`pid` names the task then).
 */
function pullEach(t: Tracee, pidfd: number, recs: readonly FdRecord[], controllerFd: (rec: FdRecord) => number, free?: { pid: number }): void {
  for (const rec of recs) {
    const cfd = controllerFd(rec);
    if (free !== undefined) {
      const r = t.trySyscall(SYS.fcntl, rec.fd, F_GETFD);
      if (r !== -9n) throw new FerryError('EINTERNAL', `installing fd ${rec.fd} of pid ${free.pid} (file ${rec.file}): the number is taken already (fcntl: ${r})`, { pid: free.pid });
    }
    const got = Number(t.syscall(SYS.pidfd_getfd, pidfd, cfd, 0)); // O_CLOEXEC set
    if (got === rec.fd) {
      if (!rec.cloexec) t.syscall(SYS.fcntl, got, F_SETFD, 0);
    } else {
      t.syscalls([[SYS.dup3, got, rec.fd, rec.cloexec ? O_CLOEXEC : 0], [SYS.close, got]]);
    }
  }
}

/**
 * Installs the descriptors of a task's table that installFds left out (files that name a
 * thread: RestoreFiles.late), once they are open, each at its number with its close-on-exec
 * flag, by pullEach through a pidfd of the controller (the same open file description, so
 * flags and offset are the ones openAfterThreads gave it and shared between holders), each
 * number checked free: nothing of the task's own is ever replaced. Runs before anything else
 * takes a descriptor in the task and before its credentials are restored (the pull needs the
 * stub's privilege over ferry). `container`: the task is in a pid namespace where ferry's
 * pid names another process or none, and its pidfd of ferry was closed with installFds;
 * checkThreadFiles refused such a file before anything was made, and this refuses it again.
 */
export function installLate(t: Tracee, pid: number, table: readonly FdRecord[], files: RestoreFiles, container: boolean): void {
  const sorted = [...table].sort((a, b) => a.fd - b.fd);
  const todo = sorted.filter((rec) => files.late.has(rec.file));
  if (todo.length === 0) return;
  if (container) {
    throw new FerryError('EIMAGE', `fd ${todo[0]!.fd} of pid ${pid} (file ${todo[0]!.file}) is a file of the host's /proc naming a thread, which a container's image never holds: refused (an edited image); nothing was restored`, { pid });
  }
  const pidfd = controllerPidfdIn(t, sorted.at(-1)!.fd + 1);
  pullEach(t, pidfd, todo, (rec) => openedFd(files, rec), { pid });
  // A task left holding it after a failure is being removed with it.
  t.syscall(SYS.close, pidfd);
}

/** Fewest descriptors worth passing in messages (below it the fixed calls cost more than they save). */
const BATCH_MIN = 8;
/** Numbers a dense prefix may leave unused beyond one per descriptor (each is filled, then closed). */
const HOLE_SLACK = 64;
/** SCM_MAX_FD: most descriptors one SCM_RIGHTS message carries (include/net/scm.h). */
const SCM_MAX_FD = 253;
const MSG_DONTWAIT = 0x40, MSG_CTRUNC = 0x8, MSG_CMSG_CLOEXEC = 0x40000000, SOL_SOCKET = 1, SCM_RIGHTS = 1;
const SOCK_DGRAM = 2;
/** struct msghdr, struct iovec, one byte of data, struct cmsghdr: offsets in the scratch area. */
const IOV_AT = 56, DATA_AT = 72, CMSG_AT = 80, CMSG_HDR = 16;

/**
 * The longest prefix of `sorted` whose numbers leave at most as many unused below them as it
 * holds descriptors, plus HOLE_SLACK: those are passed in messages (receiveTable), the few far
 * above them one by one.
 */
function densePrefix(sorted: readonly FdRecord[]): readonly FdRecord[] {
  let k = 0;
  sorted.forEach((rec, i) => { if (rec.fd + 1 - (i + 1) <= i + 1 + HOLE_SLACK) k = i + 1; });
  return sorted.slice(0, k);
}

/**
 * Installs `dense` (ascending, the task's table empty below `top`) by passing the controller's
 * descriptors (`controllerFd`) to the task in SCM_RIGHTS messages of up to 253, each received
 * by one injected recvmsg(2): the kernel gives received descriptors the lowest free numbers in the order they
 * were sent, so sending every number from 0 in order, a filler (/dev/null) where the table
 * has none, puts each where it belongs; the fillers are closed after (close_range(2)). One
 * message holds descriptors of one close-on-exec flag (MSG_CMSG_CLOEXEC sets it for all). The
 * same open file description arrives as with pidfd_getfd (offsets stay shared). A message the
 * kernel refuses to carry (a file that cannot travel: sendmsg ETOOMANYREFS, EINVAL) is
 * installed one by one with pidfd_getfd instead, which also takes the lowest free number.
 * Every received number is checked against the one expected. Returns dense.length.
 */
function receiveTable(t: Tracee, scratch: Scratch, pidfd: number, top: number, dense: readonly FdRecord[],
  controllerFd: (rec: FdRecord) => number): number {
  const n = native();
  const end = dense.at(-1)!.fd + 1;
  const slots: Array<{ cfd: number; cloexec?: boolean }> = [];
  const holes: Array<[number, number]> = [];
  let filler = -1;
  for (const rec of dense) {
    if (rec.fd > slots.length) {
      if (filler < 0) filler = openSync('/dev/null', 'r'); // close-on-exec (libuv)
      holes.push([slots.length, rec.fd - 1]);
      while (slots.length < rec.fd) slots.push({ cfd: filler });
    }
    slots.push({ cfd: controllerFd(rec), cloexec: rec.cloexec });
  }
  const [mine, theirs] = n.unixSocketpair(SOCK_DGRAM);
  try {
    // The task's end of the pair, above every number of its table.
    const got = Number(t.syscall(SYS.pidfd_getfd, pidfd, theirs, 0));
    const sock = Number(t.syscalls([[SYS.fcntl, got, F_DUPFD_CLOEXEC, top], [SYS.close, got]])[0]);
    scratch.reset();
    const msg = scratch.alloc(CMSG_AT + CMSG_HDR + SCM_MAX_FD * 4);
    for (let at = 0; at < end;) {
      // One message: up to SCM_MAX_FD numbers of one close-on-exec flag (a filler's is either).
      let flag: boolean | undefined;
      let to = at;
      while (to < end && to - at < SCM_MAX_FD) {
        const c = slots[to]!.cloexec;
        if (c !== undefined && flag !== undefined && c !== flag) break;
        flag ??= c;
        to++;
      }
      const fds = slots.slice(at, to).map((s) => s.cfd);
      let sent = true;
      try {
        n.unixSend(mine, Buffer.from([0]), null, fds);
      } catch {
        sent = false;
      }
      if (sent) receiveOne(t, msg, sock, at, fds.length, flag === true);
      else {
        for (let fd = at; fd < to; fd++) {
          const got1 = Number(t.syscall(SYS.pidfd_getfd, pidfd, slots[fd]!.cfd, 0)); // O_CLOEXEC set
          if (got1 !== fd) throw new FerryError('EINTERNAL', `installing fd ${fd} of pid ${t.pid}: it came as fd ${got1}`);
          if (slots[fd]!.cloexec === false) t.syscall(SYS.fcntl, fd, F_SETFD, 0);
        }
      }
      at = to;
    }
    if (holes.length > 0) t.syscalls(holes.map(([a, b]) => [SYS.close_range, a, b, 0] as const));
    t.syscall(SYS.close, sock);
  } finally {
    // A task left holding its end (a failure) is being removed with it.
    n.closeFd(mine);
    n.closeFd(theirs);
    if (filler >= 0) closeSync(filler);
  }
  return dense.length;
}

/** One injected recvmsg(2) of a message of `count` descriptors, which must land at `first`, `first + 1`, … */
function receiveOne(t: Tracee, msg: bigint, sock: number, first: number, count: number, cloexec: boolean): void {
  const controlLen = CMSG_HDR + Math.ceil((count * 4) / 8) * 8;
  const head = Buffer.alloc(CMSG_AT);
  head.writeBigUInt64LE(msg + BigInt(IOV_AT), 16); // msg_iov
  head.writeBigUInt64LE(1n, 24); // msg_iovlen
  head.writeBigUInt64LE(msg + BigInt(CMSG_AT), 32); // msg_control
  head.writeBigUInt64LE(BigInt(controlLen), 40); // msg_controllen
  head.writeBigUInt64LE(msg + BigInt(DATA_AT), IOV_AT); // iov_base
  head.writeBigUInt64LE(1n, IOV_AT + 8); // iov_len
  t.writeMem(msg, head);
  const r = t.trySyscall(SYS.recvmsg, sock, msg, MSG_DONTWAIT | (cloexec ? MSG_CMSG_CLOEXEC : 0));
  if (r < 0n) throw injectedError(SYS.recvmsg, Number(-r), t.tid);
  const back = t.readMem(msg, CMSG_AT + controlLen);
  const flags = back.readInt32LE(48);
  const len = Number(back.readBigUInt64LE(CMSG_AT));
  const got: number[] = [];
  if (back.readInt32LE(CMSG_AT + 8) === SOL_SOCKET && back.readInt32LE(CMSG_AT + 12) === SCM_RIGHTS) {
    for (let i = 0; i < Math.min((len - CMSG_HDR) / 4, count); i++) got.push(back.readInt32LE(CMSG_AT + CMSG_HDR + i * 4));
  }
  if ((flags & MSG_CTRUNC) !== 0 || got.length !== count || got.some((fd, i) => fd !== first + i)) {
    const came = got.length > 0 ? `${got.length} descriptors from ${got[0]}` : 'nothing';
    throw new FerryError('EINTERNAL', `installing fds ${first}-${first + count - 1} of pid ${t.pid}: ${came} came${(flags & MSG_CTRUNC) !== 0 ? ' (truncated: its open file limit is lower than its descriptors)' : ''}`);
  }
}

/**
 * Sets again the owner and signal of the task's files (owner.ts), once every process and
 * thread of the tree exists (an owner may be any of them) and after the `installed` hooks (a
 * lease taken back there made the task the owner).
 */
export function restoreOwners(t: Tracee, scratch: Scratch, pid: number, table: readonly FdRecord[], files: RestoreFiles): void {
  const lowest = new Map<number, number>();
  for (const rec of [...table].sort((a, b) => a.fd - b.fd)) if (!lowest.has(rec.file)) lowest.set(rec.file, rec.fd);
  for (const [fileId, fd] of lowest) {
    const record = files.ctx.record(fileId);
    const owner = (record?.async ?? record?.owner) as OwnerRecord | undefined;
    if (!owner) continue;
    try {
      restoreOwner(t, scratch, fd, owner, record?.async !== undefined);
    } catch (err) {
      throw new FerryError('EOPEN', `cannot set the owner of fd ${fd} of pid ${pid} (file ${fileId}, ${String(record!.kind)}) to ${describeOwner(owner)}: ${(err as Error).message}`, { cause: err });
    }
  }
}

