/**
 * The engine's records inside an image (docs/image-format.md, "Entries written by the engine").
 *
 * 64-bit values (addresses, masks, register values) are stored as "0x…" hex strings so JSON
 * keeps them exact; `hex()`/`big()` convert. Entry names are built by the functions below and
 * nowhere else.
 */
import type { RegName } from '../arch/x86-64.js';

/** Per-task state entry. */
export const taskEntry = (pid: number): string => `tasks/${pid}/task.json`;
/** Page data of a task: every stored page of every VMA, back to back in VMA order. */
export const pagesEntry = (pid: number): string => `tasks/${pid}/pages.bin`;
/** XSAVE area of one thread, as PTRACE_GETREGSET NT_X86_XSTATE returned it. */
export const xstateEntry = (pid: number, tid: number): string => `tasks/${pid}/xstate-${tid}.bin`;
/** Table of open files shared by all tasks. */
export const FILES_ENTRY = 'files.json';
/** The checkpointing kernel's vDSO, raw (restore/vdso.ts). */
export const VDSO_ENTRY = 'vdso.bin';
/** The process tree: every process with its parent, group and session, zombies included. */
export const TREE_ENTRY = 'tree.json';

export type Hex = string;
export const hex = (v: bigint | number): Hex => `0x${BigInt.asUintN(64, BigInt(v)).toString(16)}`;
export const big = (s: Hex): bigint => BigInt(s);

/** One memory area (a line of /proc/PID/maps) and where its stored pages are. */
export interface VmaRecord {
  start: Hex;
  end: Hex;
  /** PROT_* bits. */
  prot: number;
  /** MAP_SHARED (else private). */
  shared: boolean;
  /**
   * 'anon' (private or shared anonymous), 'file' (mapped file), a kernel special mapping, or
   * 'aio': the completion ring of an io_setup(2) context (`aio`).
   */
  kind: 'anon' | 'file' | 'vdso' | 'vvar' | 'vvar_vclock' | 'vsyscall' | 'aio';
  /** /proc/PID/maps name: a path, [heap], [stack], [anon:…], '' for plain anonymous memory. */
  name: string;
  /**
   * For shared anonymous memory: the shmem object (device:inode, the same in every process
   * sharing it) and this area's offset in it. Restore creates the object once, in the first
   * process holding it, and maps it into the others.
   */
  shmem?: { id: string; offset: Hex };
  /**
   * For a System V shared memory attach: the segment (its id, key, size, mode, owner, and
   * whether it was already removed with IPC_RMID). Restore creates it with the same id in the
   * first process that attaches it and attaches it in every one.
   */
  sysv?: { shmid: number; key: number; size: number; mode: number; uid: number; gid: number; removed: boolean };
  /**
   * For 'aio' (and only there): the ring of an io_setup(2) context of this process, whose id
   * is the area's start (image/aio-ring.ts). `nr` is the ring's event count (what its length
   * holds); `events` the completed events the process had not reaped yet, oldest first, each
   * a struct io_event (data, obj, res, res2: 32 bytes) back to back, base64. Its pages are
   * not stored: restore makes a new context, moves its ring here and puts the events back.
   */
  aio?: { nr: number; events: string };
  /** For 'file': the file, its offset, and the identity it had. */
  file?: { path: string; offset: Hex; dev: string; ino: string; size: number; mtimeNs: string };
  /**
   * VmFlags codes (smaps) that matter on restore: 'gd' grows down, 'ac' accountable, 'lo'
   * locked ('lf' on fault), and the madvise() ones 'rr', 'sr', 'dc', 'mg', 'dd', 'wf', 'hg', 'nh'.
   */
  vmflags: string[];
  /** Stored pages: [first page index within the area, page count], in order. */
  runs: Array<[number, number]>;
  /** Offset of this area's first stored page within the task's pages entry. */
  pagesOffset: number;
  /**
   * Guard pages (madvise MADV_GUARD_INSTALL, Linux 6.13; proc/pagemap.ts guardPageRuns):
   * [first page index within the area, count], in order, none of them stored or inherited.
   * Restore installs them again. Absent when there are none.
   */
  guards?: Array<[number, number]>;
  /**
   * Pages this area shares copy-on-write with the same area of the parent (src/image/cow.ts):
   * [first page index within the area, count], in order, none of them in `runs`. Not stored
   * here: restore forks the process from its parent once the parent's memory is back, so it
   * inherits them. Absent when there are none (and in images before format version 3).
   */
  cow?: Array<[number, number]>;
  /**
   * Pages of `runs` that siblings inherit from this process through the parent (image/cow.ts):
   * the parent wrote its own copy after forking them, so only they share this page. Restore
   * writes these into the parent's same area before forking its children, then gives the
   * parent its own pages back; this process inherits them like its siblings (their `cow`) and
   * does not write them again. Absent when there are none.
   */
  lent?: Array<[number, number]>;
  /**
   * With `lent`: how many generations up the process is that the pages are lent through
   * (image/cow.ts), 2 or more; absent, 1: the parent. Every process between maps nothing over
   * the area and passes it on (restore/cow.ts CowPlan.relayed).
   */
  lentThrough?: number;
}

/** A signal disposition that is not SIG_DFL (rt_sigaction(2), struct kernel_sigaction). */
export interface SigactionRecord {
  signo: number;
  handler: Hex;
  flags: Hex;
  restorer: Hex;
  mask: Hex;
}

/** State of one thread. */
export interface ThreadRecord {
  tid: number;
  /** struct user_regs_struct, by register name. */
  regs: Record<RegName, Hex>;
  /** Entry holding the XSAVE area. */
  xstate: string;
  /** Blocked signals. */
  sigmask: Hex;
  sigaltstack: { sp: Hex; flags: number; size: Hex };
  rseq: { pointer: Hex; size: number; signature: number; flags: number } | null;
  robustList: { head: Hex; len: number };
  /** set_tid_address(2) value (clear_child_tid). */
  tidAddress: Hex;
  comm: string;
  /** Signals queued for this thread only (siginfo_t, 128 bytes, base64), oldest first. */
  pending: PendingSignal[];
  /**
   * The thread has a root, working directory and umask of its own, not its process's (it
   * called unshare(2) with CLONE_FS): never the leader's. Absent: it shares its process's.
   */
  fs?: ThreadFsRecord;
  /**
   * The thread has a descriptor table of its own, not its process's (it called unshare(2)
   * with CLONE_FILES, or was cloned without CLONE_FILES): its descriptors, as TaskRecord.fds,
   * a file it shares with its process's table (or another's) under the same id. Never the
   * leader's. Restore makes the thread unshare(2) CLONE_FILES again and installs these in
   * its new table (restore/restore.ts threadTables). Absent: it shares its process's.
   */
  fds?: FdRecord[];
}

/**
 * A thread's own fs struct (ThreadRecord.fs, dump/task-state.ts readThreadFs): restore makes
 * the thread unshare(2) CLONE_FS again, then chdir, chroot and umask as recorded
 * (restore/task-state.ts). A removed working directory (`cwdDeleted`) is the directory
 * restore/root-dir.ts makes and holds for it, one for every holder of that directory (the
 * process, another thread, an open file). A removed root directory is refused at checkpoint.
 */
export interface ThreadFsRecord {
  /** The working directory, as ferry saw it (an absolute path on the host), like TaskRecord.cwd. */
  cwd: string;
  /**
   * The working directory was removed, as TaskRecord.cwdDeleted (with its identity, always):
   * `cwd` is its path without the " (deleted)" suffix.
   */
  cwdDeleted?: RemovedDirRecord;
  /** The root directory when it is not the tree's own (`/`, or a container's), like TaskRecord.root. */
  root?: string;
  umask: number;
}

/** A queued signal with its whole siginfo (sigqueue payloads included). */
export interface PendingSignal {
  signo: number;
  /** siginfo_t as the kernel holds it, base64. */
  siginfo: string;
}

/** One interval timer of setitimer(2): [seconds, microseconds] pairs. */
export interface ItimerRecord {
  interval: [number, number];
  value: [number, number];
}

/**
 * A POSIX timer (timer_create(2)), as /proc/PID/timers and an injected timer_gettime(2) show
 * it. Times are [seconds, nanoseconds].
 */
export interface PosixTimerRecord {
  /** The timer id the process knows it by (recreated with the same id). */
  id: number;
  /** clockid_t as given to timer_create (CPU clocks of a pid/tid are negative numbers). */
  clock: number;
  /** sigev_notify without SIGEV_THREAD_ID: 'signal', 'none', or 'thread' as the kernel names it. */
  notify: 'signal' | 'none' | 'thread';
  /** Target thread of SIGEV_THREAD_ID, else null. */
  thread: number | null;
  /** sigev_signo. */
  signo: number;
  /** sigev_value (sival_ptr, 64 bits). */
  value: Hex;
  /** it_interval. */
  interval: [number, number];
  /** it_value: time left until the next expiry ([0, 0]: disarmed). */
  remaining: [number, number];
  /** timer_getoverrun(2) at dump time; recorded only, the kernel has no way to set it. */
  overrun: number;
}

/** mm fields restored with prctl(PR_SET_MM, PR_SET_MM_MAP). */
export interface MmRecord {
  startCode: Hex; endCode: Hex; startData: Hex; endData: Hex; startBrk: Hex; brk: Hex;
  startStack: Hex; argStart: Hex; argEnd: Hex; envStart: Hex; envEnd: Hex;
  /** Saved auxiliary vector, [type, value] pairs ending with AT_NULL. */
  auxv: Array<[Hex, Hex]>;
}

/** One descriptor of a task. */
export interface FdRecord {
  fd: number;
  /** Id of the open file in files.json (shared descriptors share an id). */
  file: number;
  cloexec: boolean;
}

/**
 * A directory a process is in (working or root directory) that was removed: its mode and
 * owner, and its device and inode as stat(2) gives them (decimal), which tell whether two
 * records are the same directory (absent in a working directory's record of older images).
 */
export interface RemovedDirRecord {
  mode: number;
  uid: number;
  gid: number;
  dev?: string;
  ino?: string;
}

/**
 * Most names a removed working directory's path may have below a removed root (TaskRecord
 * `cwdBetween` holds one directory fewer): deeper is refused at checkpoint, and in an image.
 */
export const MAX_REMOVED_DEPTH = 64;

/** tasks/<pid>/task.json */
export interface TaskRecord {
  pid: number;
  ppid: number;
  pgid: number;
  sid: number;
  comm: string;
  /** The /proc/PID/exe link as read: `path (deleted)` when the executable was removed. */
  exe: string;
  /**
   * The executable was removed (an upgrade replaced or deleted the binary): its identity
   * (st_dev:st_ino), the `ghost` of the areas that map it. Restore makes the executable the
   * file it restores for those areas (files/deleted.ts or files/linked.ts), never a file found
   * by the path.
   */
  exeGhost?: string;
  cwd: string;
  /**
   * The working directory was removed (its link read `cwd (deleted)`): its mode and owner
   * (and, since removed roots are kept, its device and inode). Restore makes it for the chdir
   * only (restore/cwd.ts), or enters the directory made for a removed root that is the same
   * one (restore/root-dir.ts).
   */
  cwdDeleted?: RemovedDirRecord;
  /**
   * The working directory was removed more than one directory below a removed root (`cwd` is
   * `root`, then a name for each of these and one for the working directory itself): the
   * removed directories between, from the one in the root down, each with its mode, owner,
   * device and inode (their names are those of `cwd`). Restore makes the chain in the root's
   * directory, so that the working directory's `..` leads through them to the root as it did
   * (restore/root-dir.ts).
   */
  cwdBetween?: RemovedDirRecord[];
  /**
   * The root directory the process was chroot'ed into, as ferry saw it (an absolute path on
   * the host): absent when it is `/`. Only in a process tree's image; restore/root-dir.ts.
   */
  root?: string;
  /**
   * The root directory was removed (its link read `root (deleted)`): its mode, owner, device
   * and inode; `root` is its path without the suffix. Restore makes one directory for all
   * tasks whose removed root (or working directory) is this one (restore/root-dir.ts).
   */
  rootDeleted?: RemovedDirRecord;
  umask: number;
  /** prctl PR_SET_THP_DISABLE was set (PR_GET_THP_DISABLE, or /proc/PID/status `THP_enabled: 0`). */
  thpDisabled?: boolean;
  /** With thpDisabled: with PR_THP_DISABLE_EXCEPT_ADVISED (huge pages where madvise(2)d MADV_HUGEPAGE). */
  thpExceptAdvised?: boolean;
  /**
   * mlockall(2) flags in force for future mappings: 2 (MCL_FUTURE) or 6 (MCL_FUTURE |
   * MCL_ONFAULT), found by a probe mapping at dump (dump/task-state.ts); absent: none.
   */
  mlockall?: number;
  /**
   * membarrier(2) registrations of the process (MEMBARRIER_CMD_GET_REGISTRATIONS at dump): the
   * MEMBARRIER_CMD_REGISTER_* commands ORed, each done again on restore; absent: none.
   */
  membarrier?: number;
  mm: MmRecord;
  vmas: VmaRecord[];
  sigactions: SigactionRecord[];
  /** Signals queued for the whole process. */
  sharedPending: PendingSignal[];
  /**
   * ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF, and every POSIX timer of the process, oldest
   * first (the order timer_create made them, so /proc/PID/timers lists them alike again).
   */
  itimers: { real: ItimerRecord; virtual: ItimerRecord; prof: ItimerRecord; posix: PosixTimerRecord[] };
  /** The process was stopped by a signal (SIGSTOP, SIGTSTP…) and stays stopped after restore. */
  stopped: boolean;
  /**
   * The signal that stopped it when not SIGSTOP: SIGTSTP (20), SIGTTIN (21) or SIGTTOU (22).
   * Absent: SIGSTOP (or not stopped). Restore stops it with the same signal where the kernel
   * lets that signal stop it (restore/stop-signal.ts).
   */
  stopSignal?: number;
  threads: ThreadRecord[];
  fds: FdRecord[];
  /** Size of the pages entry. */
  pagesBytes: number;
  /** Credentials, capabilities, limits, scheduling and seccomp filters (src/dump/creds.ts). */
  creds: CredsRecord;
}

/** Process-wide credentials and limits, and each thread's own (restored last, in this order). */
export interface CredsRecord {
  /** getrlimit(2) of resources 0..15 (RLIMIT_CPU … RLIMIT_RTTIME): [soft, hard]; 0xffffffffffffffff is RLIM_INFINITY. */
  rlimits: Array<[Hex, Hex]>;
  /** /proc/PID/oom_score_adj. */
  oomScoreAdj: number;
  /** PR_GET_DUMPABLE: 0, 1, or 2 (suid_dumpable). */
  dumpable: number;
  /** PR_GET_CHILD_SUBREAPER. */
  childSubreaper: boolean;
  /**
   * The audit login uid (/proc/PID/loginuid) when one is set, and the audit session id the
   * kernel gave with it (/proc/PID/sessionid; informational: no interface sets one, a restore
   * that sets the loginuid gets a new session id). Absent: unset (4294967295).
   */
  audit?: { loginuid: number; sessionid: number };
  /** Distinct seccomp filters: classic BPF program (struct sock_filter[], base64) and SECCOMP_FILTER_FLAG_* bits. */
  seccompFilters: Array<{ flags: number; program: string }>;
  /** One per thread, in the order of TaskRecord.threads. */
  threads: ThreadCredsRecord[];
}

/** What the kernel keeps per thread: credentials, capabilities, scheduling, seccomp. */
export interface ThreadCredsRecord {
  tid: number;
  /** [real, effective, saved, filesystem]. */
  uids: [number, number, number, number];
  gids: [number, number, number, number];
  /** Supplementary groups. */
  groups: number[];
  caps: { effective: Hex; permitted: Hex; inheritable: Hex; bounding: Hex; ambient: Hex };
  /** PR_GET_SECUREBITS (SECBIT_* bits, KEEP_CAPS included). */
  securebits: number;
  noNewPrivs: boolean;
  /** personality(2) value (the kernel keeps one per thread). */
  personality: number;
  /** SCHED_* policy, rt priority, nice, and SCHED_RESET_ON_FORK. */
  sched: { policy: number; priority: number; nice: number; resetOnFork: boolean };
  /** CPUs the thread may run on. */
  affinity: number[];
  /** PR_GET_PDEATHSIG (0 = none). */
  pdeathsig: number;
  /** Seccomp filters of the thread, oldest first, as indices into CredsRecord.seccompFilters. */
  seccomp: number[];
  /** The thread is in seccomp strict mode (SECCOMP_MODE_STRICT: read, write, exit, sigreturn only); never with filters. */
  seccompStrict?: boolean;
}

/** One process of tree.json. */
export interface ProcessRecord {
  pid: number;
  /** Parent pid; for the root, its parent outside the image (informational). */
  ppid: number;
  pgid: number;
  sid: number;
  /**
   * An exited process its parent has not reaped yet: its wait status, and its name (`comm`, as
   * /proc/PID/stat shows it; absent in older images); null when alive.
   */
  zombie: { status: number; comm?: string } | null;
  /**
   * The process shares its descriptor table (clone(2) CLONE_FILES) with process `sharesFiles`,
   * the first of this list to hold that table; its parent, or a sibling listed before it, holds
   * it too (image/sharing.ts). Its `fds` are that process's. Absent: a table of its own.
   */
  sharesFiles?: number;
  /**
   * Likewise for its fs struct (CLONE_FS: root, working directory and umask), shared with
   * process `sharesFs`; its cwd and umask are that process's.
   */
  sharesFs?: number;
}

/** tree.json: every process, parents before children, the root first. */
export interface TreeRecord {
  root: number;
  processes: ProcessRecord[];
}

/** files.json: every distinct open file of the dumped tasks. */
export interface FilesRecord {
  files: FileRecord[];
  /**
   * The network lock kept for the tree's TCP connections (files/tcp-lock.ts): the nftables
   * table `inet NAME` that drops their packets until restore deletes it, once the restored
   * tree runs. Absent when the checkpoint kept no lock.
   */
  netLock?: { table: string };
}

/** An open file; `kind` selects the module in src/files/ that dumped it and opens it again. */
export interface FileRecord {
  id: number;
  kind: string;
  /** Kind-specific state (see the module of that kind). */
  [key: string]: unknown;
}
