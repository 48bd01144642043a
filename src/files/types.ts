/**
 * The contract every file kind module implements (one module per kind, dump and open side by
 * side; DESIGN.md §4). The registry (registry.ts) maps descriptors to modules; collect.ts
 * groups descriptors into open files; install.ts is the restore scheduler.
 */
import type { FileRecord } from '../image/records.js';
import type { FileStat } from '../proc/fd-stat.js';
import type { Fdinfo } from '../proc/fdinfo.js';
import type { GuardSocket } from './socket-guard.js';
import type { ConfinedRoot } from './confined.js';

/** What the engine knows about one descriptor of one task before asking a module. */
export interface FdDesc {
  /** Task (thread-group) id. */
  pid: number;
  fd: number;
  /** readlink(/proc/PID/fd/FD): a path, 'pipe:[123]', 'socket:[456]', 'anon_inode:[eventfd]'… */
  link: string;
  /** stat(/proc/PID/fd/FD): the file behind the descriptor. */
  stat: FileStat;
  /** Parsed /proc/PID/fdinfo/FD; O_ASYNC is taken out of its flags (see `async`). */
  fdinfo: Fdinfo;
  /**
   * The open file has O_ASYNC (SIGIO to an owner): the engine keeps the owner and signal for
   * every kind (FileRecord `async`) and sets them again after installing; modules never see it.
   */
  async?: boolean;
}

/** Returned by `open` when the file cannot be created yet (waits for another file). */
export const NOT_YET = Symbol('not-yet');

/**
 * What the user allowed beyond the defaults (runc's flags of the same names). A module that
 * meets something needing one of these refuses it, naming the flag, unless it is set.
 */
export interface FileOptions {
  /** --tcp-established: checkpoint established TCP connections (TCP_REPAIR). */
  tcpEstablished: boolean;
  /**
   * --tcp-close: TCP connections are neither kept nor locked at checkpoint (their addresses
   * only), and come back as closed sockets at restore (read gives 0, write EPIPE; tcp-close.ts).
   */
  tcpClose: boolean;
  /** --ext-unix-sk: allow unix sockets whose peer is outside the tree. */
  extUnixSk: boolean;
  /** --shell-job: the tree's terminal belongs to a shell outside it. */
  shellJob: boolean;
  /** --file-locks: checkpoint and restore file locks. */
  fileLocks: boolean;
  /**
   * A container's own terminal (runc's `terminal: true`: a slave of the container's devpts
   * whose master runc sent to a console socket outside) may be checkpointed (files/tty.ts,
   * role `console`); CRIU's orphan_pts_master, which runc always sends.
   */
  orphanPts?: boolean;
  /**
   * Restore: gets the new master of a container's terminal made again (a descriptor of its
   * own, to close), to hand to whoever held the old one (runc's console socket). Absent: an
   * image with such a terminal is refused.
   */
  onConsoleMaster?: (master: number) => void;
  /**
   * Restore: ferry's O_PATH descriptor of a removed directory the restore made already, by
   * identity ("dev:ino" at dump): a removed root, a directory below one, a removed working
   * directory held more than once (restore/root-dir.ts RemovedRoots). A record of that
   * directory opens it instead of making one of its own (files/regular.ts openRemovedDir).
   */
  removedDir?: (identity: string) => number | undefined;
  /**
   * Restore: a deleted file whose name was taken since may be made through a detached clone of
   * a directory of ferry's, so that its link reads its path as before (files/deleted.ts
   * createShadowed). Only for an image a trusted key signed (what is made, if only for a moment,
   * is where the image says), of a tree whose every process and thread has the host's root (a
   * chrooted one would see the host's path; a container's mounts are another namespace's).
   */
  ghostPaths?: boolean;
  /**
   * Checkpoint: tells the watchdog of the tree's TCP sockets about one before the dump changes
   * it (repair mode and the options read with it: files/socket-guard.ts). Absent: nothing
   * watches them (a ferry killed meanwhile leaves the socket changed).
   */
  guardSocket?: GuardSocket;
  /** files.deleted_max_bytes of the configuration: the most a deleted file's contents may take. */
  deletedMaxBytes: number;
  /**
   * --allow-changed-files (restore): a regular or mapped file whose size or mtime differs
   * from the checkpoint's is used as it is, with a warning, instead of failing the restore.
   */
  allowChangedFiles: boolean;
  /**
   * --external (checkpoint): files, by their link text (`pipe:[123]`, `socket:[456]`, a path),
   * whose other holders are outside the tree: allowed to be shared, and marked in the image so
   * that a restore must be handed a descriptor for each (--inherit-fd).
   */
  external: readonly string[];
  /**
   * --skip-in-flight (checkpoint): what is in flight and cannot be put back is left out of the
   * image (with a warning) instead of refusing the checkpoint: connections a listener has not
   * accepted yet, messages queued on a netlink socket.
   */
  skipInFlight?: boolean;
  /**
   * --drop-queued-events (checkpoint): events queued in an inotify or fanotify instance (which
   * cannot be read without consuming them, nor queued again) are left out of the image with a
   * warning naming the descriptor, instead of refusing the checkpoint.
   */
  dropQueuedEvents?: boolean;
}

export const DEFAULT_FILE_OPTIONS: FileOptions = Object.freeze({
  tcpEstablished: false, tcpClose: false, extUnixSk: false, shellJob: false, fileLocks: false, deletedMaxBytes: 64 * 1024 * 1024,
  allowChangedFiles: false, external: [],
});

/** What a module's `dump` gets from the engine, besides the descriptor. */
export interface DumpContext {
  readonly options: FileOptions;
  /** Pids of every live process being checkpointed. */
  readonly pids: ReadonlySet<number>;
  /**
   * The file id of descriptor `fd` of `pid` in this image (every descriptor of the tree is
   * grouped before any file is dumped), or undefined when it is not a descriptor of the tree.
   */
  fileIdOf(pid: number, fd: number): number | undefined;
  /**
   * Every descriptor of the tree's processes as the engine collected them, in its order (the
   * processes as the tree lists them, parents first; each one's descriptors ascending), not a
   * thread's table of its own, not a file found in flight: what a module looks through
   * instead of listing /proc/PID/fd again (the tree is stopped meanwhile).
   */
  readonly descriptors: readonly FdDesc[];
  /**
   * The descriptors of the tree's processes that hold the same open file as descriptor `fd`
   * of `pid` (that one too), in the order of `descriptors`; none when it is no descriptor of
   * the tree.
   */
  holders(pid: number, fd: number): ReadonlyArray<{ readonly pid: number; readonly fd: number }>;
  /**
   * The open file behind `d`, duplicated into the controller with pidfd_getfd(2): the same
   * open file description (offset, flags, socket state). Closed by the engine after the
   * checkpoint; do not close it.
   */
  grab(d: Pick<FdDesc, 'pid' | 'fd' | 'link'>): number;
  /**
   * Makes `fd`, a descriptor of the controller (ferry itself), a file of the image and returns
   * its id: the files a queued SCM_RIGHTS message carries, which a MSG_PEEK installs in the
   * peeker. The file is grouped with the tree's like any descriptor (kcmp(2): a pipe end both
   * held by a task and in flight is one file) and, when new, dumped by its own module after
   * the files before it. The engine owns `fd` from now on and closes it after the checkpoint.
   * `via` says where the file was found, for errors ("in flight on pid 12 fd 3 (socket:[9])").
   */
  adopt(fd: number, via: string): number;
  /**
   * The files found in flight so far (`adopt`), one controller descriptor each with its file
   * id: complete once every file is dumped (`afterDump`). Owned by the engine.
   */
  inFlight(): ReadonlyArray<{ fd: number; id: number }>;
  /**
   * Runs `fn` once every file is dumped, the ones found in flight meanwhile too, before the
   * image is written: for a record naming a file that may be found only later (an epoll item
   * whose file is in flight in a queue dumped after the epoll). It may complete the record
   * its `dump` returned; what it throws fails the checkpoint as the dump's own errors do.
   */
  afterDump(fn: () => void): void;
  /**
   * Stores `data` in the image as an entry of its own (for data too big or too binary for
   * the JSON record: file contents, socket queues) and returns the entry's name, to keep in
   * the record; on restore `OpenContext.blob(name)` gives the bytes back.
   */
  blob(suffix: string, data: Buffer): string;
  /**
   * Runs `fn` once the image is written (or the checkpoint failed), before the tree is killed
   * or let go: `leftRunning` says whether the originals run on (undo what the dump changed,
   * e.g. a socket put in repair mode) or die.
   */
  onFinish(fn: (leftRunning: boolean) => void): void;
  /**
   * Reports what the checkpoint leaves out and goes on despite (connections left out with
   * --skip-in-flight, queued netlink messages or packets dropped), one line each: logged as a
   * warning and listed in the result's `warnings`.
   */
  warn(message: string): void;
  /**
   * A map that lives for this checkpoint only, one per key (use the kind's name): what a
   * module reads once for every file of its kind (the tree is frozen meanwhile).
   */
  scratch<T>(key: string): Map<string, T>;
  /**
   * The root of `pid`'s mount namespace when it is not ferry's (a container's), else
   * undefined: a path /proc shows of a file found through the task's own mounts (a watched
   * inode's) is from there, and is looked up there, never on the host. Held by the engine.
   */
  mountNsRoot(pid: number): ConfinedRoot | undefined;
}

/** What a module's `open` gets from the restore scheduler. */
export interface OpenContext {
  readonly options: FileOptions;
  /** Controller descriptor of a file already opened by the scheduler, if it is. */
  opened(fileId: number): number | undefined;
  /** Another record of the image, by id. */
  record(fileId: number): FileRecord | undefined;
  /** Every record of the image (those of its other kinds too, unchecked where not opened). */
  records(): readonly FileRecord[];
  /** Whether file `fileId` is one the caller handed in (--inherit-fd, a runtime's stdio): shared with what is outside the tree. */
  inherited(fileId: number): boolean;
  /** The bytes of an entry a module stored with `DumpContext.blob`. */
  blob(name: string): Buffer;
  /**
   * A map that lives for this restore only, one per key (use the kind's name): state shared
   * by the records of one kind, e.g. the pipe created by the first of its ends.
   */
  scratch<T>(key: string): Map<string, T>;
  /**
   * Hands the engine `fd`, a descriptor the module keeps beyond what `open` returned (the
   * other end of a pair until its own record is opened, a file `afterTree` still needs): it is
   * closed with the opened files when the restore ends or fails, so a failed restore leaves
   * nothing of its own bound or open behind. A later `open` may return it (it becomes that
   * file's); a module that closes it itself says so with `release` first.
   */
  hold(fd: number): void;
  release(fd: number): void;
  /**
   * Optional: where a module reports what the restore goes on despite (a changed file with
   * --allow-changed-files), one line each; the engine logs them as warnings when set.
   */
  warn?(message: string): void;
}

/** What `installed` gets: the task whose descriptors were just installed. */
export interface TaskContext {
  /** The task, stopped, with syscalls injectable; `scratch` holds syscall arguments. */
  readonly tracee: import('../task/tracee.js').Tracee;
  readonly scratch: import('../task/tracee.js').Scratch;
  readonly pid: number;
  /** The descriptor number the record was installed at in this task. */
  readonly fd: number;
  /** The task's descriptor number holding file `fileId` (the lowest), if it holds it. */
  fdOf(fileId: number): number | undefined;
  /**
   * Puts in the task a copy of the controller's descriptor of file `fileId` (pidfd_getfd(2):
   * the same open file, at the lowest free number, close-on-exec) and returns its number: for
   * a file the task does not hold (a detached epoll item's file: in flight, or held only by
   * processes not holding the epoll). The hook closes it.
   */
  pull(fileId: number): number;
  readonly open: OpenContext;
}

/** One file kind: `kind` is stored in the image and names the module on restore. */
export interface FileKind<R extends FileRecord = FileRecord> {
  /** Kind name, as the kernel names the object: 'reg', 'dir', 'chr', 'pipe', 'unix', 'eventfd'… */
  readonly kind: string;
  /** Whether this module handles the descriptor. */
  matches(fd: FdDesc): boolean;
  /**
   * Optional: refuses, before the tree is touched, a descriptor this module handles but
   * cannot checkpoint with these options (throws the 'unsupported file' FerryError).
   */
  precheck?(fd: FdDesc, options: FileOptions): void;
  /**
   * A cheap identity key: descriptors with different keys are never the same open file;
   * equal keys are confirmed with kcmp(KCMP_FILE).
   */
  key(fd: FdDesc): string;
  /** Dumps the open file behind `fd` (every descriptor in its group shares it). */
  dump(fd: FdDesc, ctx: DumpContext): Omit<R, 'id' | 'kind'>;
  /**
   * Checks before any process is created that `record` can be opened here (file exists,
   * same device numbers…); throws a FerryError naming the file otherwise.
   */
  check?(record: R): void;
  /**
   * Creates the open file in the controller and returns its descriptor, or NOT_YET when it
   * depends on files not opened yet (the scheduler retries).
   */
  open(record: R, ctx: OpenContext): number | typeof NOT_YET;
  /**
   * Optional, for a file that names restored processes (a pidfd): its kind is opened by this
   * instead of `open`, once every process of the tree exists; `hostPid` gives a process's
   * pid as ferry sees it from its pid in the image (undefined: not known here).
   */
  openAfterTree?(record: R, hostPid: (pid: number) => number | undefined): Promise<number>;
  /**
   * Optional: whether `record` names a thread other than a process's main one (a /proc file
   * of it), which exists only once the tree's threads are made, after the descriptors are
   * installed: such a record is opened by `openAfterThreads` instead of `openAfterTree`, and
   * put into each table holding it then (install.ts installLate), not with the rest.
   */
  namesThread?(record: R): boolean;
  /**
   * Opens a record `namesThread` picked, once every thread of the tree exists; `hostTid`
   * gives ferry's id of thread `tid` of process `pid` (both as the image numbers them;
   * undefined: no such thread of that process is restored here).
   */
  openAfterThreads?(record: R, hostTid: (pid: number, tid: number) => number | undefined): Promise<number>;
  /**
   * Optional: the ids of the other files `record` puts in place before the tree's threads
   * exist (an epoll's items, the files a unix socket's queued messages carry), none of which
   * may be one `namesThread` picks (install.ts checkThreadFiles). Called on a record no
   * `check` has seen yet: what is not a number there is left for `check` to refuse.
   */
  filesBeforeThreads?(record: R): readonly number[];
  /**
   * Optional: runs in each task holding the file, once all of the task's descriptors are
   * installed, for state only the task can set with its own descriptor numbers (epoll_ctl,
   * TIOCSCTTY, POSIX locks owned by the process). Called once per task for its lowest fd.
   */
  installed?(record: R, task: TaskContext): void;
  /**
   * Optional: this kind's `installed` runs before the other kinds' in each task (it moves
   * descriptors for a moment, which must happen before locks are taken back: closing any
   * descriptor of a file drops the process's POSIX locks on it).
   */
  readonly installFirst?: boolean;
  /**
   * Optional: set when the kind cannot be restored without a task holding it (its
   * `installed` hook does the work): such a file found only in flight (DumpContext.adopt)
   * is refused.
   */
  readonly needsHolder?: boolean;
  /**
   * Optional: set when every path the kind's records name (a watched file's) was found
   * through the task's own mounts, so is its task's: in a container's restore such paths
   * resolve inside the container's root even in a record without `root: 'task'` (a trusted
   * image of an older ferry, or one edited before it was signed), never on the host.
   */
  readonly pathsInTask?: boolean;
  /**
   * Optional: runs once per kind present in the image, after every file is open in the
   * controller (openAfterTree ones too) and every process exists, before any descriptor is
   * installed: for work that needs other files or the restored processes (a unix socket's
   * queued messages carrying descriptors and the sender's credentials). `hostPid` as in
   * openAfterTree.
   */
  afterTree?(ctx: OpenContext, hostPid: (pid: number) => number | undefined): void;
  /**
   * Optional: runs on the controller's descriptor of an opened file once every process is
   * rebuilt and finished (in its working and root directory: a removed one exists only as the
   * process's by then; with its credentials), before any is let go: for what is made through a
   * restored process's own state (an inotify watch on its removed working or root directory).
   * `hostPid` gives ferry's pid of a live process of the image (undefined for any other).
   */
  afterRebuild?(record: R, fd: number, hostPid: (pid: number) => number | undefined): void;
  /**
   * Optional: runs on the controller's descriptor of an opened file once every process is
   * rebuilt, just before the tree is let go, to undo what only a restore that fails (or is
   * killed) before then should meet: an established TCP socket closes abortively until then,
   * so that it leaves no orphan holding its 4-tuple against a retry (tcp.ts).
   */
  beforeLetGo?(record: R, fd: number): void;
}
