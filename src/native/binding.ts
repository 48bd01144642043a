/**
 * The typed interface of the native addon (native/*.cc) and its loader.
 *
 * Every export wraps one syscall or one tight sequence and throws errors shaped like Node's fs
 * errors (`code`, `errno`, `syscall`). ptrace-related calls must run on the JS thread that
 * attached (the kernel accepts requests only from the tracer thread).
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** How syscalls are injected: 0 single-step (restore stubs), 1 seized (live tasks). */
export type InjectMode = 0 | 1;
export const INJECT_STEP: InjectMode = 0, INJECT_SEIZED: InjectMode = 1;

/** What an injected batch does besides its calls (native/inject.cc, BatchOptions). */
export interface InjectOptions {
  /** The first `guard` calls must succeed; at the first that fails no later call runs. */
  guard?: number;
  /** Index of the call before which the task's memory is read (n: after the last call). */
  readAt?: number;
  /** Address in the task to read from. */
  readAddr?: bigint;
  /** Filled with the task's memory at readAddr (its length is the length read). */
  readInto?: Buffer;
  /**
   * Index of the call (1..n) before which pidfd_getfd(2) copies into ferry the descriptor the
   * call before it returned, through `takeFdPidfd`; the copy (or -errno) is put in `takenFd`.
   */
  takeFdAt?: number;
  /** A pidfd of the task, for takeFdAt. */
  takeFdPidfd?: number;
  /** Set by the batch with takeFdAt: the copy (ferry's to close), or -errno. */
  takenFd?: number;
  /**
   * Seized mode: run calls [at, at + count) in one round trip, through a program written into
   * the r-x area `code` (codeLen bytes) that call `mappedAt` mapped (native/inject-blob.cc);
   * one by one if that call did not return `code`, or the task single-steps itself.
   */
  blob?: InjectBlob;
}

/** The one-round-trip part of a seized batch (InjectOptions.blob; native/inject-blob.cc). */
export interface InjectBlob {
  /** First call the program runs, and how many. */
  at: number;
  count: number;
  /** Index (< at) of the call that maps the code area; it must have returned `code`. Absent: mapped already. */
  mappedAt?: number;
  /** The r-x code area (one page: BLOB_CODE_LEN) and its length. */
  code: bigint;
  codeLen: number;
  /** Writable bytes of the task the program uses (blobWorkLen(count) at least): results and the table. */
  work: bigint;
  workLen: number;
  /** What the program unmaps if it has to put the task back itself (ferry died). */
  unmap: bigint;
  unmapLen: number;
  /** Seconds the program waits for ferry after its calls before it puts the task back itself. */
  waitS: number;
  /** Called (synchronously) once the calls ran, before ferry interrupts the task: a fault point. */
  onWait?: () => void;
  /**
   * Set by the batch: it failed with the task perhaps still inside the program, or running its
   * own code after the program put it back (ferry too late): nothing of its memory may be
   * touched, not even ferry's scratch and code areas.
   */
  loose?: boolean;
}

/** One PAGEMAP_SCAN answer (native/uffd.cc). */
export interface PagemapScanResult {
  /** [start, end, categories] per region. */
  regions: BigUint64Array;
  /** Where the walk stopped (end when it covered the whole range). */
  walkEnd: bigint;
}

/** Result of waitpid(2) on one pid. */
export interface WaitStatus {
  /** Raw wait status. */
  status: number;
  exited: boolean;
  exitCode: number;
  signaled: boolean;
  termSig: number;
  stopped: boolean;
  stopSig: number;
  /** PTRACE_EVENT_* of a ptrace event stop (status >> 16), else 0. */
  event: number;
}

/** An IPv4 or IPv6 socket address (family AF_INET 2 or AF_INET6 10; address in inet_ntop text). */
export interface SockAddr {
  family: number;
  address: string;
  port: number;
  flowinfo?: number;
  scopeId?: number;
}

/** struct ucred of SCM_CREDENTIALS (unix(7)). */
export interface UnixCreds {
  pid: number;
  uid: number;
  gid: number;
}

/** One unix socket as sock_diag(7) describes it (linux/unix_diag.h). */
export interface UnixDiag {
  ino: number;
  /** SOCK_STREAM 1, SOCK_DGRAM 2, SOCK_SEQPACKET 5. */
  type: number;
  /** TCP_ESTABLISHED 1 (connected), TCP_CLOSE 7, TCP_LISTEN 10. */
  state: number;
  /** UNIX_DIAG_NAME: sun_path bytes (leading NUL: abstract), null when unbound. */
  name: Buffer | null;
  /** UNIX_DIAG_VFS: the file a path name created (dev split as the kernel stores it). */
  vfs: { ino: number; major: number; minor: number } | null;
  /** UNIX_DIAG_PEER: the peer's inode, 0 when none (or its peer has no inode any more). */
  peer: number;
  /** UNIX_DIAG_ICONS: a listener's queued connections, oldest first: each client's inode. */
  icons: number[];
  /** UNIX_DIAG_RQLEN: listener: pending connections; else bytes unread (datagram: the first message). */
  rqueue: number;
  /** UNIX_DIAG_RQLEN: listener: backlog; else bytes sent and not yet read by the peer. */
  wqueue: number;
  /** UNIX_DIAG_SHUTDOWN: RCV_SHUTDOWN 1 | SEND_SHUTDOWN 2. */
  shutdown: number;
}

/** PTRACE_GET_RSEQ_CONFIGURATION result. */
export interface RseqConfig {
  pointer: bigint;
  size: number;
  signature: number;
  flags: number;
}

export interface NativeBinding {
  /** ptrace(PTRACE_SEIZE, tid, 0, options) — ptrace(2). */
  seize(tid: number, options?: number): void;
  /** ptrace(PTRACE_INTERRUPT) — the tracee reports PTRACE_EVENT_STOP. */
  interrupt(tid: number): void;
  /** ptrace(PTRACE_DETACH, tid, 0, signal). */
  detach(tid: number, signal?: number): void;
  /** ptrace(PTRACE_CONT, tid, 0, signal). */
  cont(tid: number, signal?: number): void;
  /** ptrace(PTRACE_SYSCALL, tid, 0, signal): run to the next syscall-entry or -exit stop. */
  syscallResume(tid: number, signal?: number): void;
  /** ptrace(PTRACE_SETOPTIONS). */
  setOptions(tid: number, options: number): void;
  /**
   * waitpid(2) on one pid with __WALL (| flags); null when WNOHANG found nothing. Bounded:
   * throws ESRCH when the task died but can never be collected (a leader whose threads are
   * unreaped zombies) and ETIMEDOUT after `timeoutMs` (default 30 s).
   */
  waitpid(tid: number, flags?: number, timeoutMs?: number): WaitStatus | null;
  /**
   * waitid(P_PID, pid, WEXITED|__WALL[|WNOWAIT]): waits for death; with noWait the zombie is
   * left for its real parent. Bounded (ETIMEDOUT after 30 s). Returns siginfo's si_code (CLD_EXITED 1, CLD_KILLED 2…) and si_status.
   */
  waitExit(pid: number, noWait?: boolean): { code: number; status: number };
  /** PTRACE_GETREGS: struct user_regs_struct (216 bytes). */
  getRegs(tid: number): Buffer;
  /** PTRACE_SETREGS. */
  setRegs(tid: number, regs: Buffer): void;
  /** PTRACE_GETREGSET NT_X86_XSTATE: the XSAVE area. */
  getXstate(tid: number): Buffer;
  /** PTRACE_SETREGSET NT_X86_XSTATE. */
  setXstate(tid: number, xstate: Buffer): void;
  /** PTRACE_GETSIGMASK. */
  getSigmask(tid: number): bigint;
  /** PTRACE_SETSIGMASK. */
  setSigmask(tid: number, mask: bigint): void;
  /** PTRACE_GET_RSEQ_CONFIGURATION; null when no rseq area is registered. */
  getRseq(tid: number): RseqConfig | null;
  /** get_robust_list(2). */
  getRobustList(tid: number): { head: bigint; len: number };
  /**
   * PTRACE_PEEKSIGINFO: every queued siginfo_t (128 bytes each) of the thread's own queue, or
   * of the process-wide queue with `shared`; the signals stay queued.
   */
  peekSiginfo(tid: number, shared?: boolean): Buffer[];
  /** tgkill(2). */
  tgkill(tgid: number, tid: number, signal: number): void;
  /**
   * Runs one syscall inside a ptrace-stopped task through the `syscall` instruction at
   * `gadget`; registers are restored afterwards. `mode` 0 (INJECT_STEP): PTRACE_SINGLESTEP,
   * for restore stubs; 1 (INJECT_SEIZED): PTRACE_SYSCALL with every signal blocked meanwhile
   * and the task put back into a PTRACE_EVENT_STOP, for a live task being checkpointed (a
   * tracer that dies between two calls leaves nothing behind; native/inject.cc). Returns the
   * raw result (-errno on failure).
   */
  injectSyscall(tid: number, gadget: bigint, mode: InjectMode, nr: number, ...args: Array<bigint | number>): bigint;
  /**
   * Runs a batch of injected syscalls ([nr, a0..a5] x n) with one register save/restore and,
   * in seized mode, one signal-mask block and one return to the PTRACE_EVENT_STOP for the
   * whole batch (the calls are chained from each syscall-exit-stop to the next call). A failing
   * call does not stop the batch, except one of the first `options.guard` calls: then no later
   * call runs (its result is -ECANCELED). With `options.readInto`, process_vm_readv(2) copies
   * the task's memory at `readAddr` into it right before call `readAt` (n: after the last).
   */
  injectSyscalls(tid: number, gadget: bigint, calls: BigUint64Array, mode?: InjectMode, options?: InjectOptions): BigInt64Array;
  /**
   * clone3(2) with set_tid = tids (innermost pid namespace first; [] = any PID); the child
   * calls PTRACE_TRACEME, closes every fd and execve(2)s `path`. Returns once the child is
   * stopped with SIGTRAP after the exec, traced by the calling thread with PTRACE_O_EXITKILL
   * (it dies with ferry). `dieWithParent`: the child also asks for SIGKILL on ferry's death
   * before its exec (prctl(2) PR_SET_PDEATHSIG, which it keeps): only for a child killed
   * before it ever runs.
   */
  spawnStub(path: string, tids: number[], dieWithParent?: boolean): number;
  /**
   * Starts `path` with `args` and ferry's environment in a session of its own (setsid(2)), as
   * posix_spawn(3) does (clone3 CLONE_VM|CLONE_VFORK: Node's memory is not copied). Its stdin
   * is a pipe whose write end is `stdin`, its stdout and stderr one pipe whose read end is
   * `stdout` (O_NONBLOCK; both O_CLOEXEC here); `hold` (at most 64) become its descriptors 3, 4, ... and it
   * has no other. Node does not know the child: the caller reaps it (waitpid).
   */
  spawnDetached(path: string, args: readonly string[], hold: readonly number[]): { pid: number; stdin: number; stdout: number };
  /** process_vm_readv(2): reads [addr, len] pairs back to back into dst at dstOffset. */
  readMemory(pid: number, ranges: Float64Array, dst: Buffer, dstOffset?: number): number;
  /**
   * Faults every page of `buf` in, writable, in one madvise(MADV_POPULATE_WRITE) (with
   * `huge`, MADV_HUGEPAGE first); false where the kernel refuses it (the caller touches each page).
   */
  populate(buf: Buffer, huge?: boolean): boolean;
  /** populate on a thread of libuv's pool; `buf` may be used meanwhile (its bytes never change). */
  populateLater(buf: Buffer, huge?: boolean): Promise<boolean>;
  /**
   * Runs of pages a dump stores among pagemap entries (proc/pagemap.ts dumpablePageRuns):
   * [first, count, ...], counted from the first entry.
   */
  pagemapRuns(entries: Buffer, anonShared: boolean): Float64Array;
  /** Runs [first, count, …] of guard pages (MADV_GUARD_INSTALL markers) among pagemap entries. */
  pagemapGuardRuns(entries: Buffer): Float64Array;
  /** One byte per pagemap entry, 1: present, anonymous, not exclusively mapped; undefined when none is. */
  pagemapSharedAnon(entries: Buffer): Uint8Array | undefined;
  /** kcmp(2): 0 equal, 1 less, 2 greater, 3 not equal (unordered). */
  kcmp(pid1: number, pid2: number, type: number, idx1: number, idx2: number): number;
  /**
   * For each of `fds` of process `pid`: readlink(2) and stat(2) of /proc/PID/fd/FD and the
   * text of /proc/PID/fdinfo/FD (proc(5)), or null when it is gone (ENOENT). `stat` holds
   * st_dev, st_ino, st_mode, st_nlink, st_uid, st_gid, st_rdev, st_size, st_blksize,
   * st_blocks, then atime, mtime and ctime in ns.
   */
  procFds(pid: number, fds: readonly number[]): Array<{ link: string; stat: BigInt64Array; fdinfo: string } | null>;
  /** pidfd_open(2). */
  pidfdOpen(pid: number, flags?: number): number;
  /** pidfd_send_signal(2): false when the process is gone (ESRCH). */
  pidfdSendSignal(pidfd: number, sig: number): boolean;
  /** pidfd_getfd(2): duplicates another process's fd into this one (O_CLOEXEC). */
  pidfdGetfd(pidfd: number, fd: number): number;
  /** close(2). */
  closeFd(fd: number): void;
  /**
   * lseek(2); returns the new offset. A BigInt offset (a directory's hash cookie, up to 63 bits)
   * gives a BigInt back.
   */
  lseek(fd: number, offset: number, whence: number): number;
  lseek(fd: number, offset: bigint, whence: number): bigint;
  /**
   * cachestat(2): pages of the file range [offset, offset + length) in the page cache (dirty
   * ones included); -1 when the kernel (before 6.5) or the file system does not tell.
   */
  cachedPages(fd: number, offset: number, length: number): number;
  /** open(2) with raw flags (O_CLOEXEC always added); returns the fd. */
  openRaw(path: string, flags: number, mode?: number): number;
  /**
   * openat2(2): opens `path` relative to directory descriptor `dirfd` with struct open_how
   * {flags (O_CLOEXEC always added), mode (used only with O_CREAT or O_TMPFILE), resolve
   * (RESOLVE_BENEATH 0x08, RESOLVE_IN_ROOT 0x10, RESOLVE_NO_MAGICLINKS 0x02, RESOLVE_NO_SYMLINKS
   * 0x04, RESOLVE_NO_XDEV 0x01)}. An escape fails with EXDEV, a refused (magic) link with ELOOP,
   * a ".." the kernel could not prove safe with EAGAIN (retry). src/files/confined.ts is the policy.
   */
  openat2(dirfd: number, path: string, flags: number, mode: number, resolve: number): number;
  /** mkdirat(2): EEXIST on any existing name, a symlink included (never followed). */
  mkdirat(dirfd: number, path: string, mode: number): void;
  /**
   * open_tree(2) OPEN_TREE_CLONE | AT_EMPTY_PATH of directory `fd`: a mount of it attached
   * nowhere, as a descriptor (close-on-exec); files opened through it are named from its root.
   */
  openTreeClone(fd: number): number;
  /** mkfifoat(3) (mknodat(2) S_IFIFO): EEXIST on any existing name, a symlink included (never followed). */
  mkfifoat(dirfd: number, path: string, mode: number): void;
  /**
   * mknodat(2) of a character device `major`:`minor` with the permission bits of `mode`, and
   * nothing else (S_IFCHR always): EEXIST on any existing name, a symlink included.
   */
  mknodChr(dirfd: number, path: string, mode: number, major: number, minor: number): void;
  /** unlinkat(2): removes the name itself; flags AT_REMOVEDIR (0x200) for an empty directory. */
  unlinkat(dirfd: number, path: string, flags: number): void;
  /** symlinkat(2): a symlink `path` under `dirfd` holding the text `target` (not resolved). */
  symlinkat(target: string, dirfd: number, path: string): void;
  /** renameat2(2): flags RENAME_NOREPLACE 1, RENAME_EXCHANGE 2; names are moved, never followed. */
  renameat2(olddirfd: number, oldpath: string, newdirfd: number, newpath: string, flags: number): void;
  /**
   * fchownat(2): flags AT_SYMLINK_NOFOLLOW (0x100) for a symlink itself, AT_EMPTY_PATH (0x1000)
   * with path '' for the file `dirfd` refers to (also an O_PATH descriptor); -1 keeps an id.
   */
  fchownat(dirfd: number, path: string, uid: number, gid: number, flags: number): void;
  /**
   * readlinkat(2): the text of symlink `path` under `dirfd`, as bytes (not resolved; it need
   * not be UTF-8); with path '' the text of the symlink an O_PATH | O_NOFOLLOW descriptor
   * `dirfd` refers to (named or not).
   */
  readlinkat(dirfd: number, path: string): Buffer;
  /** fcntl F_GETOWN_EX and F_GETSIG of an O_ASYNC file: owner type (F_OWNER_TID 0, PID 1, PGRP 2), id, signal (0 = SIGIO). */
  asyncOwner(fd: number): { type: number; pid: number; sig: number };
  /** lgetxattr(2): the attribute's value, or null when the file has none. */
  getXattr(path: string, name: string): Buffer | null;
  /** setns(2) of the calling (JS) thread into the namespace `fd` refers to. */
  setNs(fd: number, nstype: number): void;
  /**
   * ioctl(NS_GET_PARENT) of a pid namespace's descriptor: a new descriptor of its parent;
   * throws (EPERM) where none is within reach (the initial namespace, or above the caller's).
   */
  nsParent(fd: number): number;
  /** xgetbv(0): XCR0, the XSAVE features the OS enabled. */
  xgetbv(): bigint;
  /** pipe2(2) (O_CLOEXEC always added): [read end, write end]. */
  pipe2(flags?: number): [number, number];
  /**
   * tee(2): duplicates up to `len` buffered bytes of pipe `fdIn` into pipe `fdOut` without
   * consuming them; returns the bytes duplicated (EAGAIN with SPLICE_F_NONBLOCK when it would block).
   */
  tee(fdIn: number, fdOut: number, len: number, flags: number): number;
  /** fcntl(2) F_GETPIPE_SZ: capacity of a pipe in bytes. */
  pipeSize(fd: number): number;
  /** fcntl(2) F_SETPIPE_SZ: sets the capacity; returns the one the kernel chose (rounded up). */
  setPipeSize(fd: number, bytes: number): number;
  /** fcntl(2) F_GETFL: access mode and status flags of the open file. */
  getFl(fd: number): number;
  /** fcntl(2) F_SETFL: sets the changeable status flags (O_APPEND, O_NONBLOCK, O_NOATIME…). */
  setFl(fd: number, flags: number): void;
  /** ioctl(2) FIONREAD on a pipe: bytes buffered in it. */
  pipeUnread(fd: number): number;
  /**
   * NETLINK_SOCK_DIAG, AF_UNIX (sock_diag(7)): the unix socket with inode `ino` in ferry's
   * network namespace, or null when there is none (not a unix socket, or another namespace).
   */
  unixDiag(ino: number): UnixDiag | null;
  /** NETLINK_SOCK_DIAG dump: every unix socket of ferry's network namespace. */
  unixDiagAll(): UnixDiag[];
  /** socket(AF_UNIX, type | SOCK_CLOEXEC, 0) — unix(7). */
  unixSocket(type: number): number;
  /** socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0). */
  unixSocketpair(type: number): [number, number];
  /**
   * bind(2) to sun_path bytes `name` (a leading NUL: abstract). With `dir`, a relative name
   * is resolved there (in a thread with its own cwd: unshare(CLONE_FS)) and kept as given.
   */
  unixBind(fd: number, name: Buffer, dir?: string): void;
  /**
   * bind(2) to sun_path bytes `name` in a thread of its own (unshare(CLONE_FS)) whose root is
   * directory descriptor `root` (fchdir + chroot(2); -1: ferry's) and whose working directory
   * is `cwd` (fchdir(2); -1: ferry's): the name resolves as for a process living there and is
   * kept as given (what getsockname(2) returns).
   */
  unixBindIn(fd: number, name: Buffer, root: number, cwd: number): void;
  /** connect(2) to sun_path bytes `name`. */
  unixConnect(fd: number, name: Buffer): void;
  /** listen(2). */
  unixListen(fd: number, backlog: number): void;
  /** accept4(2) with SOCK_CLOEXEC. */
  unixAccept(fd: number): number;
  /** shutdown(2): 0 SHUT_RD, 1 SHUT_WR, 2 SHUT_RDWR. */
  unixShutdown(fd: number, how: number): void;
  /** getsockopt(2) of an int option. */
  unixGetOpt(fd: number, level: number, name: number): number;
  /** setsockopt(2) of an int option. */
  unixSetOpt(fd: number, level: number, name: number, value: number): void;
  /**
   * recvmsg(2) with MSG_PEEK | MSG_DONTWAIT | MSG_CMSG_CLOEXEC into a buffer of `max` bytes: the
   * next message at the socket's peek offset (SO_PEEK_OFF) without consuming it, or null when
   * none is queued. `flags` is msg_flags (MSG_TRUNC 0x20, MSG_CTRUNC 0x8). `fds`: the files an
   * SCM_RIGHTS message carries, installed in the caller by the peek (the same open files,
   * close-on-exec): the caller owns and closes them (an SCM_PIDFD is closed at once).
   * `creds`: SCM_CREDENTIALS (sender's pid in the caller's pid namespace, uid, gid), present
   * when the socket has SO_PASSCRED, else null. unix(7), cmsg(3).
   */
  unixPeek(fd: number, max: number): { data: Buffer; flags: number; fds: number[]; creds: UnixCreds | null } | null;
  /**
   * sendmsg(2) with MSG_DONTWAIT | MSG_NOSIGNAL, to sun_path bytes `name` if given (null: the
   * connected peer), with `fds` attached (SCM_RIGHTS, at most 253) and `creds` (SCM_CREDENTIALS:
   * the pid must exist in ferry's pid namespace; others' ids need CAP_SYS_ADMIN, CAP_SETUID,
   * CAP_SETGID); -> bytes sent. unix(7).
   */
  unixSend(fd: number, data: Buffer, name?: Buffer | null, fds?: readonly number[], creds?: UnixCreds | null): number;
  /** eventfd2(2) with counter `count` (written after creation: initval is only 32 bits); EFD_CLOEXEC added. */
  eventfdCreate(count: bigint, flags: number): number;
  /** signalfd4(2) of a new signalfd for `mask` (bit n-1 = signal n); SFD_CLOEXEC added. */
  signalfdCreate(mask: bigint, flags: number): number;
  /** timerfd_create(2); TFD_CLOEXEC added. */
  timerfdCreate(clock: number, flags: number): number;
  /** timerfd_settime(2) with flags (TFD_TIMER_ABSTIME, TFD_TIMER_CANCEL_ON_SET). */
  timerfdSettime(fd: number, flags: number, valueSec: number, valueNsec: number, intervalSec: number, intervalNsec: number): void;
  /** timerfd_gettime(2) (time left, period) and clock_gettime(2) of `clock` right after, as [s, ns]. */
  timerfdGettime(fd: number, clock: number): { value: [number, number]; interval: [number, number]; now: [number, number] };
  /** clock_gettime(2) of `clock` in nanoseconds, as ferry's time namespace shows it. */
  clockGettime(clock: number): bigint;
  /** poll(2) + read(2) of a timerfd: the expirations not read yet (0n when none), consumed (timerfd_create(2)). */
  timerfdTakeTicks(fd: number): bigint;
  /** ioctl(2) TFD_IOC_SET_TICKS: sets a timerfd's expiration count. */
  timerfdSetTicks(fd: number, ticks: bigint): void;
  /** memfd_create(2) (MFD_CLOEXEC added). */
  memfdCreate(name: string, flags: number): number;
  /** fcntl(2) F_GET_SEALS. */
  getSeals(fd: number): number;
  /** fcntl(2) F_ADD_SEALS. */
  addSeals(fd: number, seals: number): void;
  /** ioctl(2) TCGETS2 (ioctl_tty(2)): struct termios2 as raw bytes; on a pty master, the slave's. */
  ttyGetTermios(fd: number): Buffer;
  /** ioctl(2) TCSETS2: sets struct termios2 at once (no drain, no flush). */
  ttySetTermios(fd: number, termios: Buffer): void;
  /** ioctl(2) TIOCGWINSZ; on a pty master, the slave's window size. */
  ttyGetWinsize(fd: number): { row: number; col: number; xpixel: number; ypixel: number };
  /** ioctl(2) TIOCSWINSZ. */
  ttySetWinsize(fd: number, row: number, col: number, xpixel: number, ypixel: number): void;
  /** ioctl(2) TIOCGDEV: device number of the tty behind `fd` (also behind /dev/tty). */
  ttyDevice(fd: number): { major: number; minor: number };
  /** ioctl(2) FIONREAD on a tty: bytes readable (canonical mode: complete lines only). */
  ttyInq(fd: number): number;
  /** ioctl(2) TIOCOUTQ: bytes not yet sent by the driver. */
  ttyOutq(fd: number): number;
  /** ioctl(2) TIOCGEXCL: 1 when the tty behind `fd` (a master's own, or the slave) is in exclusive mode. */
  ttyExclusive(fd: number): number;
  /** ioctl(2) TIOCEXCL (1) or TIOCNXCL (0): exclusive mode of the tty behind `fd`; only CAP_SYS_ADMIN opens it again. */
  ttySetExclusive(fd: number, on: number): void;
  /** poll(2) of `fd` for `events` with timeout 0: the revents (0 when none now). On a pty master in packet mode POLLPRI is a pending status byte. */
  ttyPoll(fd: number, events: number): number;
  /**
   * ioctl(2) TIOCSTI for each byte of `data`, in order: the line discipline takes each as
   * received input at once (no flip buffer, no worker). Needs CAP_SYS_ADMIN.
   */
  ttyInsertInput(fd: number, data: Buffer): void;
  /** ioctl(2) TIOCSTI with a null byte pointer: whether TIOCSTI is allowed on `fd` (EFAULT), inserting nothing. */
  ttyMayInsertInput(fd: number): boolean;
  /** ioctl(2) TIOCGPTN on a pty master (pty(7)): the index N of /dev/pts/N. */
  ptyIndex(fd: number): number;
  /** ioctl(2) TIOCGPTLCK on a pty master: 1 while the slave is locked (before unlockpt(3)). */
  ptyLocked(fd: number): number;
  /** ioctl(2) TIOCSPTLCK on a pty master: 0 unlocks the slave, 1 locks it. */
  ptySetLocked(fd: number, locked: number): void;
  /** ioctl(2) TIOCGPKT on a pty master: 1 in packet mode. */
  ptyPacket(fd: number): number;
  /** ioctl(2) TIOCPKT on a pty master: packet mode on (1) or off (0). */
  ptySetPacket(fd: number, on: number): void;
  /** ioctl(2) TIOCGPTPEER on a pty master: opens its slave with `flags` (O_CLOEXEC added). */
  ptyPeer(fd: number, flags: number): number;
  /**
   * ptrace(PTRACE_SECCOMP_GET_FILTER): the classic BPF program (struct sock_filter[]) of the
   * thread's seccomp filter `index` (0 = the oldest, in install order); null past the newest one.
   */
  getSeccompFilter(tid: number, index: number): Buffer | null;
  /** ptrace(PTRACE_SECCOMP_GET_METADATA): SECCOMP_FILTER_FLAG_* bits of filter `index`. */
  getSeccompFlags(tid: number, index: number): number;
  /** getxattr(2) "system.sockprotoname" of a socket (path /proc/PID/fd/N): "TCP", "TCPv6", "UDP", "UDPv6", "UNIX-STREAM"… */
  sockProtoName(path: string): string;
  /** socket(2) (SOCK_CLOEXEC always added). */
  socket(family: number, type: number, protocol?: number): number;
  /**
   * getsockopt(2): the option's bytes (at most maxLen). `input` is copied into the option
   * buffer first, for options that read a request there (MCAST_MSFILTER: group, interface).
   */
  getSockOpt(fd: number, level: number, name: number, maxLen: number, input?: Buffer): Buffer;
  /** setsockopt(2) with raw bytes. */
  setSockOpt(fd: number, level: number, name: number, value: Buffer): void;
  /** getsockopt(2) of an int option. */
  getSockInt(fd: number, level: number, name: number): number;
  /** setsockopt(2) of an int option. */
  setSockInt(fd: number, level: number, name: number, value: number): void;
  /** getsockname(2), or getpeername(2) with `peer` (null when not connected). */
  sockName(fd: number, peer?: boolean): SockAddr | null;
  /** bind(2). */
  sockBind(fd: number, addr: SockAddr): void;
  /** connect(2) (in TCP repair mode: established at once, nothing sent; tcp(7)). */
  sockConnect(fd: number, addr: SockAddr): void;
  /** listen(2). */
  sockListen(fd: number, backlog: number): void;
  /**
   * recvfrom(2) with MSG_PEEK | MSG_DONTWAIT (| flags): nothing is consumed; null when nothing
   * is queued. In TCP repair mode it peeks the queue chosen with TCP_REPAIR_QUEUE.
   */
  sockPeek(fd: number, maxLen: number, flags?: number): { data: Buffer; from: SockAddr | null } | null;
  /**
   * getsockopt(SO_GET_FILTER) (socket(7)): the classic BPF filter attached to the socket as
   * struct sock_filter[] (8 bytes each), empty when there is none. EACCES: an eBPF program
   * (SO_ATTACH_BPF), which has no classic form.
   */
  getSockFilter(fd: number): Buffer;
  /**
   * setsockopt(SO_ATTACH_FILTER) (socket(7)) with the struct sock_filter[] in `insns`; with
   * `reuseport`, SO_ATTACH_REUSEPORT_CBPF: a program for the socket's whole SO_REUSEPORT group
   * that answers the index of the member to receive each packet.
   */
  attachSockFilter(fd: number, insns: Buffer, reuseport?: boolean): void;
  /**
   * NETLINK_SOCK_DIAG dump, AF_INET/AF_INET6 (sock_diag(7), linux/inet_diag.h): every socket of
   * this family and protocol in the calling thread's network namespace, with its TCP-style state,
   * shutdown bits (INET_DIAG_SHUTDOWN: RCV 1, SEND 2) and, for TCP, whether it holds
   * TCP_MD5SIG keys (INET_DIAG_MD5SIG, which the kernel sends to a CAP_NET_ADMIN caller only).
   */
  inetDiag(family: number, protocol: number): Array<{ ino: number; state: number; shutdown: number; md5: boolean }>;
  /**
   * recv(2) with MSG_DONTWAIT | flags, consuming what it reads (MSG_OOB: a TCP socket's urgent
   * byte, tcp(7)); null when nothing is there (EAGAIN).
   */
  sockRecv(fd: number, maxLen: number, flags: number): Buffer | null;
  /** sendto(2) (MSG_NOSIGNAL added); returns the bytes sent. */
  sockSend(fd: number, data: Buffer, flags: number, to?: SockAddr | null): number;
  /** ioctl(2) with an int result: SIOCINQ, SIOCOUTQ, SIOCOUTQNSD. */
  sockIoctlInt(fd: number, request: number): number;
  /**
   * NETLINK_SOCK_DIAG SOCK_DESTROY (sock_diag(7), linux/inet_diag.h) of the TCP socket with
   * exactly this local and remote address in the caller's network namespace: tcp_abort()
   * deschedules a TIME_WAIT entry (resets anything else). Errors: ENOENT (none), EOPNOTSUPP
   * (kernel without CONFIG_INET_DIAG_DESTROY), EPERM (no CAP_NET_ADMIN).
   */
  tcpDestroy(local: SockAddr, remote: SockAddr): void;
  /**
   * kcmp(2) KCMP_EPOLL_TFD: compares file `fd1` of `pid1` with the target registered in epoll
   * `efd` of `pid2` under descriptor number `tfd` (the `toff`-th item with that number): 0 when
   * they are the same file. EBADF: fd1 is not open; ENOENT: no such item.
   */
  kcmpEpollTfd(pid1: number, pid2: number, fd1: number, efd: number, tfd: number, toff: number): number;
  /** epoll_create1(2) (EPOLL_CLOEXEC always added). */
  epollCreate1(flags?: number): number;
  /** inotify_init1(2) (IN_CLOEXEC always added); IN_NONBLOCK is O_NONBLOCK. */
  inotifyInit1(flags?: number): number;
  /** ioctl(2) INOTIFY_IOC_SETNEXTWD: the next watch of this instance gets the lowest free wd >= `wd` (inotify(7)). */
  inotifySetNextWd(fd: number, wd: number): void;
  /** inotify_add_watch(2): returns the watch descriptor. */
  inotifyAddWatch(fd: number, path: string, mask: number): number;
  /**
   * name_to_handle_at(2) of the file `fd` refers to (AT_EMPTY_PATH): its file system handle,
   * for open_by_handle_at(2) on the same file system while the inode lives.
   */
  nameToHandle(fd: number): { type: number; handle: Buffer };
  /** linkat(2) with AT_EMPTY_PATH: a new name `path` under `dirfd` for the file `fd` refers to (EEXIST if taken). */
  linkFd(fd: number, dirfd: number, path: string): void;
  /** open_by_handle_at(2) (O_CLOEXEC added): `handle` is f_handle, `type` handle_type, `mountFd` any file of the file system. */
  openByHandle(mountFd: number, type: number, handle: Buffer, flags: number): number;
  /** fanotify_init(2) (FAN_CLOEXEC always added). */
  fanotifyInit(flags: number, eventFFlags: number): number;
  /** fanotify_mark(2). */
  fanotifyMark(fd: number, flags: number, mask: bigint | number, dirfd: number, path: string): void;
  /**
   * NETLINK_SOCK_DIAG dump (sock_diag(7)) with a family's request struct as bytes (struct
   * netlink_diag_req, packet_diag_req: linux/netlink_diag.h, linux/packet_diag.h): each
   * answer's payload (the family's *_diag_msg and its attributes), one per socket of the
   * calling thread's network namespace. src/files/sockdiag.ts reads them.
   */
  sockDiagDump(request: Buffer): Buffer[];
  /**
   * getsockname(2) of a netlink socket (netlink(7)): bound port id (0: not bound) and the
   * first 32 groups as a mask; with `peer`, getpeername(2): dst_portid and dst_group mask.
   */
  netlinkName(fd: number, peer?: boolean): { portid: number; groups: number };
  /** bind(2) of a netlink socket to sockaddr_nl {nl_pid: portid (0: the kernel picks), nl_groups}. */
  netlinkBind(fd: number, portid: number, groups: number): void;
  /** connect(2) of a netlink socket to sockaddr_nl {nl_pid: portid, nl_groups: group mask}. */
  netlinkConnect(fd: number, portid: number, groups: number): void;
  /**
   * bind(2) of a packet socket (packet(7)): sockaddr_ll {sll_protocol: htons(protocol),
   * sll_ifindex}; with `device`, a SOCK_PACKET socket's sockaddr_pkt naming the interface
   * (the protocol is then the one socket(2) gave).
   */
  packetBind(fd: number, protocol: number, ifindex: number, device?: string): void;
  /** ioctl(2) SIOCGIFNAME (netdevice(7)) in the thread's network namespace: null when no such index. */
  ifName(index: number): string | null;
  /** ioctl(2) SIOCGIFINDEX (netdevice(7)) in the thread's network namespace: 0 when no such name. */
  ifIndex(name: string): number;
  /** ioctl(2) UFFDIO_API asking for `features` (ioctl_userfaultfd(2)): the features the kernel offers. */
  uffdApi(fd: number, features: bigint): bigint;
  /** ioctl(2) UFFDIO_REGISTER of [start, start+len) with `mode` (MISSING 1, WP 2, MINOR 4): the ioctls it supports. */
  uffdRegister(fd: number, start: bigint, len: bigint, mode: number): bigint;
  /** ioctl(2) UFFDIO_UNREGISTER of [start, start+len). */
  uffdUnregister(fd: number, start: bigint, len: bigint): void;
  /**
   * ioctl(2) PAGEMAP_SCAN on a /proc/PID/pagemap descriptor (Documentation/admin-guide/mm/
   * pagemap.rst): the regions of [start, end) whose pages have every category of
   * `categoryMask`, with their `returnMask` categories; flags PM_SCAN_WP_MATCHING 1 (write-
   * protect what matched), PM_SCAN_CHECK_WPASYNC 2. At most `maxRegions`: walkEnd says where it stopped.
   * With `anyofMask` (not 0), only pages that also have one of its categories at least.
   */
  pagemapScan(fd: number, start: bigint, end: bigint, flags: number, categoryMask: number, returnMask: number, maxRegions: number, anyofMask?: number): PagemapScanResult;
  /**
   * read(2) of a non-blocking userfaultfd (userfaultfd(2), "Reading from the userfaultfd
   * structure"): [event, a, b, c] per message (UFFD_EVENT_PAGEFAULT 0x12 [flags, address],
   * FORK 0x13 [new fd], REMAP 0x14 [from, to, len], REMOVE 0x15 / UNMAP 0x16 [start, end]); empty when none is queued.
   */
  uffdReadEvents(fd: number): BigUint64Array;
  /**
   * ioctl(2) UFFDIO_COPY of `buf` to `dst` (whole pages): bytes copied, and whether it stopped
   * at a page already there (EEXIST) or because the mm is changing (EAGAIN: read the events,
   * then try again).
   */
  uffdCopy(fd: number, dst: bigint, buf: Buffer): { copied: number; exists: boolean; again: boolean };
  /** ioctl(2) UFFDIO_ZEROPAGE of [dst, dst+len): 1 done, 0 a page of it was there already (EEXIST), -1 the mm is changing (EAGAIN). */
  uffdZeropage(fd: number, dst: bigint, len: bigint): 1 | 0 | -1;
  /** uv_poll_start(UV_READABLE) on the JS thread's loop: `callback` runs whenever `fd` is readable, until uffdUnwatch. */
  uffdWatch(fd: number, callback: (status: number) => void): UffdWatchHandle;
  /** Stops a uffdWatch (uv_poll_stop, uv_close). */
  uffdUnwatch(handle: UffdWatchHandle): void;
  /**
   * The sha256 of each `pageSize` bytes of `data` (the last piece may be shorter), 32 bytes
   * each, into `out` from `at`, with OpenSSL's SHA256_Init(3) family as Node exports it;
   * false when this Node does not (the caller hashes in JavaScript).
   */
  pageDigests(data: Uint8Array, out: Uint8Array, at: number, pageSize: number): boolean;
  /**
   * Holds a reference to the address space of `pid` (mm_users) from a thread of ferry's: a
   * process_vm_readv(2) of the present page at `address`, kept waiting on a page of ours
   * (native/mm-hold.cc), so that the process, killed, exits without freeing its memory. An
   * id: > 0 held; < 0 not known to be (nothing seen within `timeoutMs`), release it all the
   * same; 0 none.
   */
  mmHold(pid: number, address: bigint, timeoutMs: number): number;
  /** Lets a hold go: the memory of a process gone meanwhile is freed on the holding thread. */
  mmRelease(id: number): void;
  /**
   * Starts a sha256 in `state` (a Uint8Array of its own, 256 bytes: 16-byte aligned); false
   * when this Node does not export OpenSSL's SHA256_Init(3) family (hash in JavaScript then).
   */
  sha256Init(state: Uint8Array): boolean;
  /**
   * Adds `data` to the sha256 in `state` on a thread of libuv's pool. Neither may be changed,
   * nor `state` given to another call, until the promise settles.
   */
  sha256Update(state: Uint8Array, data: Uint8Array): Promise<void>;
  /** The digest of the sha256 in `state` (spent then) into `out` (32 bytes). */
  sha256Final(state: Uint8Array, out: Uint8Array): void;
  /**
   * On a thread of libuv's pool: writes the pieces of `data` that `writes` names
   * ([offset in data, length, file position] triples) into `fd` with pwrite(2), each until
   * whole, then, when `out` has room for them, the sha256 of each 4 KiB page of `data` into
   * `out` (32 bytes each). Resolves true once the digests are taken (false: `out` empty, or no
   * SHA-256 in this Node); rejects with the errno error of a failed write (EIO: one that wrote
   * nothing). None of the three may change until it settles.
   */
  writeAndDigest(fd: number, data: Uint8Array, writes: Float64Array, out: Uint8Array): Promise<boolean>;
  }

/** An opaque handle of native uffdWatch. */
export type UffdWatchHandle = { readonly __uffdWatch: unique symbol };

/** Names every NativeBinding member; a test checks this against the addon's exports. */
export const NATIVE_EXPORTS: ReadonlyArray<keyof NativeBinding> = [
  'seize', 'interrupt', 'detach', 'cont', 'syscallResume', 'setOptions', 'waitpid', 'waitExit', 'getRegs', 'setRegs',
  'getXstate', 'setXstate', 'getSigmask', 'setSigmask', 'getRseq', 'getRobustList', 'tgkill', 'peekSiginfo',
  'injectSyscall', 'injectSyscalls', 'spawnStub', 'spawnDetached', 'readMemory', 'populate', 'populateLater', 'pagemapRuns', 'pagemapGuardRuns', 'pagemapSharedAnon', 'kcmp', 'procFds', 'pidfdOpen', 'pidfdSendSignal',
  'pidfdGetfd', 'closeFd', 'lseek', 'cachedPages', 'openRaw', 'openat2', 'mkdirat', 'openTreeClone', 'mkfifoat', 'mknodChr', 'unlinkat', 'symlinkat', 'renameat2', 'fchownat', 'readlinkat',
  'asyncOwner', 'getXattr', 'setNs', 'nsParent', 'xgetbv',
  'pipe2', 'tee', 'pipeSize', 'setPipeSize', 'getFl', 'setFl', 'pipeUnread',
  'unixDiag', 'unixDiagAll', 'unixSocket', 'unixSocketpair', 'unixBind', 'unixBindIn', 'unixConnect', 'unixListen',
  'unixAccept', 'unixShutdown', 'unixGetOpt', 'unixSetOpt', 'unixPeek', 'unixSend',
  'eventfdCreate', 'signalfdCreate', 'timerfdCreate', 'timerfdSettime', 'timerfdGettime', 'clockGettime', 'timerfdTakeTicks',
  'timerfdSetTicks', 'memfdCreate', 'getSeals', 'addSeals',
  'getSeccompFilter', 'getSeccompFlags',
  'ttyGetTermios', 'ttySetTermios', 'ttyGetWinsize', 'ttySetWinsize', 'ttyDevice', 'ttyInq', 'ttyOutq', 'ttyExclusive', 'ttySetExclusive', 'ttyPoll',
  'ttyInsertInput', 'ttyMayInsertInput',
  'ptyIndex', 'ptyLocked', 'ptySetLocked', 'ptyPacket', 'ptySetPacket', 'ptyPeer',
  'sockProtoName', 'socket', 'getSockOpt', 'setSockOpt', 'getSockInt', 'setSockInt', 'sockName', 'sockBind',
  'sockConnect', 'sockListen', 'sockPeek', 'sockRecv', 'sockSend', 'sockIoctlInt', 'tcpDestroy', 'getSockFilter', 'attachSockFilter', 'inetDiag',
  'kcmpEpollTfd', 'epollCreate1', 'inotifyInit1', 'inotifySetNextWd', 'inotifyAddWatch', 'openByHandle', 'nameToHandle', 'linkFd',
  'fanotifyInit', 'fanotifyMark',
  'sockDiagDump', 'netlinkName', 'netlinkBind', 'netlinkConnect', 'packetBind', 'ifName', 'ifIndex',
  'uffdApi', 'uffdRegister', 'uffdUnregister', 'pagemapScan', 'uffdReadEvents', 'uffdCopy', 'uffdZeropage', 'uffdWatch', 'uffdUnwatch',
  'pageDigests', 'sha256Init', 'sha256Update', 'sha256Final', 'writeAndDigest', 'mmHold', 'mmRelease',
];

/** The repository (package) root: dist/src/native/ -> ../../.. */
export const PACKAGE_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

let cached: NativeBinding | undefined;

/** Loads build/Release/ferry_native.node; the error lists every path tried. */
export function native(): NativeBinding {
  if (cached) return cached;
  const require = createRequire(import.meta.url);
  const candidates = [
    join(PACKAGE_ROOT, 'build', 'Release', 'ferry_native.node'),
    join(PACKAGE_ROOT, 'build', 'Debug', 'ferry_native.node'),
  ];
  const errors: string[] = [];
  for (const path of candidates) {
    if (!existsSync(path)) {
      errors.push(`${path}: not found`);
      continue;
    }
    try {
      cached = require(path) as NativeBinding;
      return cached;
    } catch (err) {
      errors.push(`${path}: ${(err as Error).message}`);
    }
  }
  throw new Error(`cannot load the native addon (run 'npm run build'); tried:\n  ${errors.join('\n  ')}`);
}

/** Path of the restore stub built next to the addon. */
export function defaultStubPath(): string {
  return join(PACKAGE_ROOT, 'build', 'Release', 'ferry-stub');
}

/** Path of the watchdog (native/helpers/watchdog.c). */
export function watchdogPath(): string {
  return join(PACKAGE_ROOT, 'build', 'Release', 'ferry-watchdog');
}
