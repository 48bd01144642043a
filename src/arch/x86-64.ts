/**
 * x86-64 facts: register layout, syscall numbers and the kernel ABI structs we build by hand.
 * Everything architecture-specific lives here so another arch is one more file.
 */

/** Field order of struct user_regs_struct (<sys/user.h>): 27 x u64, 216 bytes. */
export const REG_NAMES = [
  'r15', 'r14', 'r13', 'r12', 'rbp', 'rbx', 'r11', 'r10', 'r9', 'r8', 'rax', 'rcx', 'rdx',
  'rsi', 'rdi', 'orig_rax', 'rip', 'cs', 'eflags', 'rsp', 'ss', 'fs_base', 'gs_base', 'ds',
  'es', 'fs', 'gs',
] as const;
export type RegName = (typeof REG_NAMES)[number];
export type Regs = Record<RegName, bigint>;
export const REGS_SIZE = REG_NAMES.length * 8;

/** Decodes PTRACE_GETREGS output. */
export function decodeRegs(buf: Buffer): Regs {
  const regs = {} as Regs;
  REG_NAMES.forEach((name, i) => { regs[name] = buf.readBigUInt64LE(i * 8); });
  return regs;
}

/** Encodes registers for PTRACE_SETREGS. */
export function encodeRegs(regs: Regs): Buffer {
  const buf = Buffer.alloc(REGS_SIZE);
  REG_NAMES.forEach((name, i) => { buf.writeBigUInt64LE(BigInt.asUintN(64, regs[name]), i * 8); });
  return buf;
}

/** Syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl). */
export const SYS = {
  read: 0, write: 1, close: 3, lseek: 8, mmap: 9, mprotect: 10, munmap: 11, brk: 12,
  rt_sigaction: 13, rt_sigprocmask: 14, ioctl: 16, mremap: 25, madvise: 28, dup2: 33, recvmsg: 47,
  pause: 34, getitimer: 36, setitimer: 38, getpid: 39, rt_sigqueueinfo: 129, fcntl: 72, chdir: 80, fchdir: 81, umask: 95, chroot: 161,
  setpgid: 109, setsid: 112, getsid: 124, sigaltstack: 131, prctl: 157, arch_prctl: 158, gettid: 186,
  set_tid_address: 218, exit_group: 231, tgkill: 234, wait4: 61, openat: 257, set_robust_list: 273, dup3: 292, rt_tgsigqueueinfo: 297,
  rt_sigtimedwait: 128, prlimit64: 302, shmget: 29, shmat: 30, shmctl: 31,
  setgroups: 116, setresuid: 117, setresgid: 119, setfsuid: 122, setfsgid: 123, capset: 126, personality: 135,
  setpriority: 141, sched_setscheduler: 144, sched_getscheduler: 145, sched_setaffinity: 203, seccomp: 317,
  rseq: 334, pidfd_open: 434, clone3: 435, close_range: 436, openat2: 437, pidfd_getfd: 438,
  epoll_ctl: 233, epoll_wait: 232, mlock2: 325, membarrier: 324, unshare: 272, setns: 308, mincore: 27, mlockall: 151, userfaultfd: 323,
  io_setup: 206, io_destroy: 207, io_getevents: 208, io_submit: 209, memfd_create: 319,
  timer_create: 222, timer_settime: 223, timer_gettime: 224, timer_getoverrun: 225, clock_getres: 229,
} as const;

/** The two bytes of the `syscall` instruction. */
export const SYSCALL_INSN = Buffer.from([0x0f, 0x05]);

export const PAGE_SIZE = 4096;

/** mmap(2)/mprotect(2)/mremap(2) constants. */
export const PROT_READ = 1, PROT_WRITE = 2, PROT_EXEC = 4;
export const MAP_SHARED = 0x01, MAP_PRIVATE = 0x02, MAP_FIXED = 0x10, MAP_ANONYMOUS = 0x20,
  MAP_GROWSDOWN = 0x100, MAP_NORESERVE = 0x4000, MAP_FIXED_NOREPLACE = 0x100000;
export const MREMAP_MAYMOVE = 1, MREMAP_FIXED = 2;
/** madvise(2) MADV_DONTNEED; mlockall(2) flags. */
export const MADV_DONTNEED = 4, MCL_FUTURE = 2, MCL_ONFAULT = 4;
/** madvise(2) guard pages (Linux 6.13). */
export const MADV_GUARD_INSTALL = 102, MADV_GUARD_REMOVE = 103;

/** SOL_SOCKET options (<asm-generic/socket.h>; alpha, mips, parisc and sparc number them differently), socket(7). */
export const SOL_SOCKET = 1;
export const SO = {
  REUSEADDR: 2, TYPE: 3, BROADCAST: 6, SNDBUF: 7, RCVBUF: 8, KEEPALIVE: 9, OOBINLINE: 10,
  PRIORITY: 12, LINGER: 13, REUSEPORT: 15, RCVLOWAT: 18, RCVTIMEO: 20, SNDTIMEO: 21,
  BINDTODEVICE: 25, TIMESTAMP: 29, ACCEPTCONN: 30, SNDBUFFORCE: 32, RCVBUFFORCE: 33,
  MARK: 36, PROTOCOL: 38, DOMAIN: 39, PEEK_OFF: 42,
} as const;
/** Socket ioctls: bytes unread (FIONREAD), not yet acknowledged (TIOCOUTQ), not yet sent. */
export const SIOCINQ = 0x541b, SIOCOUTQ = 0x5411, SIOCOUTQNSD = 0x894b;

/** madvise(2) advice for VmFlags we carry over (smaps two-letter code -> advice). */
export const MADVISE_BY_VMFLAG: Readonly<Record<string, number>> = {
  rr: 1, // MADV_RANDOM
  sr: 2, // MADV_SEQUENTIAL
  dc: 10, // MADV_DONTFORK
  mg: 12, // MADV_MERGEABLE (KSM)
  dd: 16, // MADV_DONTDUMP
  wf: 18, // MADV_WIPEONFORK
  hg: 14, // MADV_HUGEPAGE
  nh: 15, // MADV_NOHUGEPAGE
};

/** mlock2(2) flag: lock pages as they are faulted in (VmFlags 'lf'). */
export const MLOCK_ONFAULT = 1;
/**
 * membarrier(2): MEMBARRIER_CMD_GET_REGISTRATIONS (Linux 6.3) answers with the
 * MEMBARRIER_CMD_REGISTER_* commands the process's mm has done: GLOBAL_EXPEDITED (1 << 2),
 * PRIVATE_EXPEDITED (1 << 4), PRIVATE_EXPEDITED_SYNC_CORE (1 << 6), PRIVATE_EXPEDITED_RSEQ
 * (1 << 8); each is done again with its own value.
 */
export const MEMBARRIER_CMD_GET_REGISTRATIONS = 1 << 9, MEMBARRIER_REGISTRATIONS = (1 << 2) | (1 << 4) | (1 << 6) | (1 << 8);
/** prctl(2) PR_SET_THP_DISABLE, PR_GET_THP_DISABLE. */
export const PR_SET_THP_DISABLE = 41, PR_GET_THP_DISABLE = 42;
/**
 * PR_SET_THP_DISABLE's flag (Linux 6.18): huge pages stay off except in areas madvise(2)d
 * MADV_HUGEPAGE. PR_GET_THP_DISABLE answers it as bit 1, beside bit 0 (disabled).
 */
export const PR_THP_DISABLE_EXCEPT_ADVISED = 1 << 1;

/** struct itimerval: two struct timeval (tv_sec, tv_usec as i64). */
export const ITIMERVAL_SIZE = 32;
/** siginfo_t size. */
export const SIGINFO_SIZE = 128;
/** siginfo_t si_code of a POSIX timer's signal; its si_timerid is the int at this offset. */
export const SI_TIMER = -2, SIGINFO_TIMERID_OFFSET = 16;
/** struct itimerspec: two struct timespec (tv_sec, tv_nsec as i64). */
export const ITIMERSPEC_SIZE = 32;
/** struct sigevent: sigev_value (8), sigev_signo (4), sigev_notify (4), then the thread id; 64 bytes. */
export const SIGEVENT_SIZE = 64;
/** sigev_notify values (<asm-generic/siginfo.h>); SIGEV_THREAD_ID is ORed with SIGEV_SIGNAL. */
export const SIGEV_SIGNAL = 0, SIGEV_NONE = 1, SIGEV_THREAD = 2, SIGEV_THREAD_ID = 4;

/** prctl(2) options. */
export const PR_SET_NAME = 15, PR_SET_MM = 35, PR_SET_MM_MAP = 14, PR_GET_TID_ADDRESS = 40;
/** prctl(PR_TIMER_CREATE_RESTORE_IDS, ON): timer_create(2) takes the id from *timerid (uapi prctl.h). */
export const PR_TIMER_CREATE_RESTORE_IDS = 77, PR_TIMER_CREATE_RESTORE_IDS_OFF = 0, PR_TIMER_CREATE_RESTORE_IDS_ON = 1;

/**
 * Kernel-internal restart codes a task stopped inside a syscall may show in rax
 * (include/linux/errno.h), and EINTR. See planSyscallRestart for what the kernel does with each.
 */
export const ERESTARTSYS = 512, ERESTARTNOINTR = 513, ERESTARTNOHAND = 514,
  ERESTART_RESTARTBLOCK = 516, EINTR = 4;

/** ptrace(2) constants. */
export const PTRACE_O_TRACESYSGOOD = 1, PTRACE_O_EXITKILL = 0x100000, PTRACE_O_SUSPEND_SECCOMP = 0x200000,
  PTRACE_EVENT_STOP = 128;
/**
 * Options of every live task a checkpoint seizes: never PTRACE_O_EXITKILL (if ferry dies the
 * kernel lets the task go); syscall-stops marked with 0x80, which is what makes them harmless
 * if ferry dies in one (native/inject.cc); its seccomp filters do not see injected syscalls.
 */
export const DUMP_TRACE_OPTIONS = PTRACE_O_TRACESYSGOOD | PTRACE_O_SUSPEND_SECCOMP;
/**
 * Options of every task ferry rebuilds: it dies if ferry dies, and its seccomp filters (once
 * installed) do not see the syscalls ferry injects.
 */
export const RESTORE_TRACE_OPTIONS = PTRACE_O_EXITKILL | PTRACE_O_SUSPEND_SECCOMP;

/** Signals: 1..64; SIGKILL and SIGSTOP cannot be caught. A mask with every signal: */
export const ALL_SIGNALS = (1n << 64n) - 1n;
export const NSIG = 64, SIGKILL = 9, SIGSTOP = 19, SIGTRAP = 5, SIGCONT = 18;
export const SIG_DFL = 0n, SIG_IGN = 1n;

/** struct kernel_sigaction { handler, flags, restorer, mask } as rt_sigaction(2) takes it. */
export const KSIGACTION_SIZE = 32;
/** stack_t { ss_sp, ss_flags (int + pad), ss_size }. */
export const STACK_T_SIZE = 24;
/** struct prctl_mm_map: 11 x u64, auxv pointer, u32 auxv_size, u32 exe_fd. */
export const PRCTL_MM_MAP_SIZE = 104;

/** ioctl_tty(2) requests injected into a restored task: take a controlling terminal, set its foreground group. */
export const TIOCSCTTY = 0x540e, TIOCSPGRP = 0x5410;

/**
 * Syscalls that leave ERESTART_RESTARTBLOCK when interrupted (their restart block holds what
 * the restart needs), and restart_syscall(2), which the kernel runs to use that block.
 */
export const RESTARTBLOCK_SYS = {
  poll: 7, nanosleep: 35, futex: 202, restart_syscall: 219, clock_nanosleep: 230,
} as const;
/** clock_nanosleep(2) flag; futex(2) commands (the op without FUTEX_PRIVATE_FLAG and FUTEX_CLOCK_REALTIME). */
export const TIMER_ABSTIME = 1, FUTEX_WAIT_BITSET = 9, FUTEX_CMD_MASK = ~(128 | 256);

/**
 * What restore does with a thread's interrupted syscall (planSyscallRestart):
 * `as-dumped`: every register exactly as dumped, the kernel does the rest;
 * `rax`: as dumped but rax, so the kernel's own logic gives the same result another way;
 * `sleep`: re-run `call` (nr and arguments) inside the thread and interrupt it, so the kernel
 * builds the restart block again (src/restore/task-state.ts, rebuildRestartBlock); then hand
 * back the registers as dumped. `rem` is the caller's buffer holding the time left.
 */
export type SyscallRestart =
  | { kind: 'as-dumped' }
  | { kind: 'rax'; rax: bigint }
  | { kind: 'sleep'; call: [number, ...bigint[]]; rem: bigint };

/**
 * Whether a thread with these registers, handed back to the kernel, is still inside a syscall
 * the kernel restarts when it goes on (rax one of the -ERESTARTxxx codes): the registers as
 * they are finally set, after planSyscallRestart, not as dumped.
 */
export function inRestartableSyscall(regs: Regs): boolean {
  const rax = -BigInt.asIntN(64, regs.rax);
  return BigInt.asIntN(64, regs.orig_rax) >= 0n && (rax === BigInt(ERESTARTSYS) || rax === BigInt(ERESTARTNOINTR)
    || rax === BigInt(ERESTARTNOHAND) || rax === BigInt(ERESTART_RESTARTBLOCK));
}

/**
 * Decides how a thread stopped in a syscall is handed back to the kernel
 * (docs/architecture.md, "Interrupted system calls").
 *
 * A task interrupted inside a syscall stops with rax = -ERESTARTxxx, orig_rax = the syscall
 * number and rip just after the `syscall` instruction. Every stop ferry leaves a restored
 * thread in (a signal-delivery-stop or a PTRACE_EVENT_STOP) is inside get_signal(), and on
 * the way out of it arch_do_signal_or_restart() (arch/x86/kernel/signal.c) decides: if a signal
 * with a handler is delivered, handle_signal() makes ERESTARTNOHAND and ERESTART_RESTARTBLOCK
 * -EINTR, ERESTARTSYS -EINTR unless the handler has SA_RESTART (then a restart), and
 * ERESTARTNOINTR a restart; with no handler it restarts all of them: rip -= 2, rax = orig_rax
 * (rax = __NR_restart_syscall for ERESTART_RESTARTBLOCK). Handing back the registers exactly as
 * dumped therefore gives a signal that arrives at any moment after restore the very effect it
 * would have had on the original: the decision is the kernel's, taken when the signal is there.
 * (Rewinding rip ourselves instead loses a wakeup: a handler run before the task reaches the
 * `syscall` again returns into a fresh pause() that sleeps for ever.)
 *
 * ERESTART_RESTARTBLOCK needs the thread's restart block, which lives in the kernel and is
 * not carried over: in a new task restart_syscall(2) would run whatever block the thread has.
 * Where the image knows enough, the block is built again or the call is re-issued as is:
 * - nanosleep(req, rem) and relative clock_nanosleep(clock, 0, req, rem) with rem != NULL: the
 *   kernel wrote the time left into *rem when it interrupted the call, so the thread re-runs
 *   the call as (rem, rem) and is interrupted at once (`sleep`): the kernel then holds a
 *   restart block with the same expiry, clock and rem pointer, and every register and the
 *   caller's req (a const input that may be read-only or still needed) stay untouched. The
 *   time left runs from that moment (a few milliseconds before the restored tree is let go).
 * - poll with no timeout (rdx < 0) and futex FUTEX_WAIT_BITSET (an absolute timeout, as
 *   glibc's timed waits use it): the restart block holds nothing the registers and the
 *   caller's memory do not, so rax = -ERESTARTNOHAND makes the kernel re-issue the call as is
 *   (a handler still gets EINTR, as with ERESTART_RESTARTBLOCK).
 * - Everything else (poll or futex FUTEX_WAIT with a relative timeout, nanosleep without rem,
 *   a restart_syscall already under way): the time left is unknown, rax = -EINTR, the result
 *   the original gets too when a handler interrupts it, which its callers must handle.
 * A call that already has its result (-EINTR from epoll_wait, a count...) is not a restart.
 */
export function planSyscallRestart(regs: Regs): SyscallRestart {
  const nr = BigInt.asIntN(64, regs.orig_rax);
  if (nr < 0n || BigInt.asIntN(64, regs.rax) !== BigInt(-ERESTART_RESTARTBLOCK)) return { kind: 'as-dumped' };
  const S = RESTARTBLOCK_SYS;
  const eintr: SyscallRestart = { kind: 'rax', rax: BigInt(-EINTR) };
  const reissue: SyscallRestart = { kind: 'rax', rax: BigInt(-ERESTARTNOHAND) };
  switch (Number(nr)) {
    case S.nanosleep: // (req, rem)
      return regs.rsi !== 0n ? { kind: 'sleep', call: [S.nanosleep, regs.rsi, regs.rsi], rem: regs.rsi } : eintr;
    case S.clock_nanosleep: // (clock, flags, req, rem); TIMER_ABSTIME stops with ERESTARTNOHAND instead
      return regs.r10 !== 0n && (regs.rsi & BigInt(TIMER_ABSTIME)) === 0n
        ? { kind: 'sleep', call: [S.clock_nanosleep, regs.rdi, regs.rsi, regs.r10, regs.r10], rem: regs.r10 }
        : eintr;
    case S.poll: // (fds, nfds, timeout ms)
      return BigInt.asIntN(32, regs.rdx) < 0n ? reissue : eintr;
    case S.futex: // (uaddr, op, val, timeout, uaddr2, val3)
      return (Number(regs.rsi & 0xffffffffn) & FUTEX_CMD_MASK) === FUTEX_WAIT_BITSET ? reissue : eintr;
    default: // restart_syscall itself (a restart already under way at checkpoint), anything new
      return eintr;
  }
}
