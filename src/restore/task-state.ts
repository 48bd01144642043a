/**
 * Per-task and per-thread state put back into a rebuilt task (DESIGN.md §3, steps 7 and 10):
 * name, cwd, umask, every signal disposition, sigaltstack, robust list, clear_child_tid, rseq,
 * session, the restart block of an interrupted sleep; then registers, XSAVE area and signal
 * mask, set right before the task is let go.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import {
  decodeRegs, encodeRegs, EINTR, ERESTART_RESTARTBLOCK, RESTORE_TRACE_OPTIONS, KSIGACTION_SIZE, MEMBARRIER_REGISTRATIONS, NSIG, PR_SET_NAME, PR_SET_THP_DISABLE, PR_THP_DISABLE_EXCEPT_ADVISED,
  inRestartableSyscall, planSyscallRestart, REG_NAMES, SIGKILL, SIGSTOP, STACK_T_SIZE, SYS, type Regs,
} from '../arch/x86-64.js';
import { describeCause, FerryError } from '../errors.js';
import { big, type PendingSignal, type TaskRecord, type ThreadFsRecord, type ThreadRecord } from '../image/records.js';
import { native } from '../native/binding.js';
import { readProcText } from '../proc/read.js';
import { parseStatus } from '../proc/status.js';
import { Tracee } from '../task/tracee.js';
import { GADGET_CODE, type AddressSpace } from './address-space.js';
import { itimerCalls, restorePosixTimers, timerOfSignal } from './timers.js';

const SS_DISABLE = 2, SS_ONSTACK = 1;

/** Restores the task-wide state and the main thread's kernel-side state (all injected). */
export function restoreTaskState(t: Tracee, as: AddressSpace, task: TaskRecord): void {
  const thread = task.threads[0]!;
  as.scratch.reset();
  const calls: Array<[number, ...Array<bigint | number>]> = [
    [SYS.prctl, PR_SET_NAME, as.scratch.putString(thread.comm), 0, 0, 0],
    [SYS.chdir, as.scratch.putString(task.cwd)],
    [SYS.umask, task.umask],
  ];
  if (task.thpDisabled === true) calls.push([SYS.prctl, PR_SET_THP_DISABLE, 1, task.thpExceptAdvised === true ? PR_THP_DISABLE_EXCEPT_ADVISED : 0, 0, 0]);
  // Every area is mapped and locked as it was (address-space.ts); from here on new mappings
  // are locked as the process asked. MCL_FUTURE alone locks nothing that exists.
  if (task.mlockall !== undefined) calls.push([SYS.mlockall, task.mlockall]);
  // membarrier(2) registrations, each command again (the stub, freshly exec'd, has none).
  for (let cmd = 1; cmd <= MEMBARRIER_REGISTRATIONS; cmd <<= 1) {
    if ((cmd & MEMBARRIER_REGISTRATIONS & (task.membarrier ?? 0)) !== 0) calls.push([SYS.membarrier, cmd, 0, 0]);
  }
  // Every disposition: handlers from the image, and SIG_DFL where the stub inherited SIG_IGN
  // from ferry (ignored signals survive execve).
  const stubIgnored = parseStatus(readProcText(t.pid, 'status')).sigIgn;
  const act = Buffer.alloc(KSIGACTION_SIZE);
  const dumped = new Set(task.sigactions.map((s) => s.signo));
  for (const s of task.sigactions) {
    act.writeBigUInt64LE(big(s.handler), 0);
    act.writeBigUInt64LE(big(s.flags), 8);
    act.writeBigUInt64LE(big(s.restorer), 16);
    act.writeBigUInt64LE(big(s.mask), 24);
    calls.push([SYS.rt_sigaction, s.signo, as.scratch.put(act), 0, 8]);
  }
  const dfl = as.scratch.put(Buffer.alloc(KSIGACTION_SIZE));
  for (let sig = 1; sig <= NSIG; sig++) {
    if (sig === SIGKILL || sig === SIGSTOP || dumped.has(sig)) continue;
    if ((stubIgnored >> BigInt(sig - 1)) & 1n) calls.push([SYS.rt_sigaction, sig, dfl, 0, 8]);
  }
  calls.push(...threadCalls(as, thread));
  calls.push(...itimerCalls(t, as, task));
  try {
    t.syscalls(calls);
    rebuildRestartBlock(t, thread);
  } catch (err) {
    throw new FerryError('ESTATE', `cannot restore the state of pid ${task.pid}: ${(err as Error).message}`, { cause: err });
  }
}

/** Injected calls restoring one thread's kernel-side state (the thread runs them itself). */
export function threadCalls(as: AddressSpace, th: ThreadRecord): Array<[number, ...Array<bigint | number>]> {
  const calls: Array<[number, ...Array<bigint | number>]> = [];
  if ((th.sigaltstack.flags & SS_DISABLE) === 0) {
    const ss = Buffer.alloc(STACK_T_SIZE);
    ss.writeBigUInt64LE(big(th.sigaltstack.sp), 0);
    ss.writeInt32LE(th.sigaltstack.flags & ~SS_ONSTACK, 8);
    ss.writeBigUInt64LE(big(th.sigaltstack.size), 16);
    calls.push([SYS.sigaltstack, as.scratch.put(ss), 0]);
  }
  if (big(th.robustList.head) !== 0n) calls.push([SYS.set_robust_list, big(th.robustList.head), th.robustList.len]);
  calls.push([SYS.set_tid_address, big(th.tidAddress)]);
  if (th.rseq) calls.push([SYS.rseq, big(th.rseq.pointer), th.rseq.size, 0, th.rseq.signature]);
  return calls;
}

/** The registers of a thread as dumped. */
function dumpedRegs(th: ThreadRecord): Regs {
  const regs = {} as Regs;
  for (const name of REG_NAMES) regs[name] = big(th.regs[name]);
  return regs;
}

/**
 * Sets registers, XSAVE area and signal mask: the last thing done to a thread before it is let
 * go (nothing is injected after it). The registers are the dumped ones, also those of a
 * syscall the checkpoint interrupted (rax -ERESTARTxxx, orig_rax its number, rip after the
 * `syscall`): the kernel restarts it, or fails it with EINTR for a signal handler, on its way
 * out of the stop the thread is in (planSyscallRestart in src/arch/x86-64.ts). For
 * ERESTART_RESTARTBLOCK rax may differ: the result of rebuildRestartBlock, or the plan's.
 * Returns whether the thread is handed back inside a restartable syscall (so the let-go
 * detaches it only once it is back in the kernel: restore.ts, detachInSyscall).
 */
export function setThreadRegisters(tid: number, th: ThreadRecord, xstate: Buffer): boolean {
  const regs = dumpedRegs(th);
  const plan = planSyscallRestart(regs);
  if (plan.kind === 'rax') regs.rax = plan.rax;
  if (plan.kind === 'sleep') regs.rax = rebuiltSleeps.get(th) ?? BigInt(-EINTR);
  const n = native();
  n.setRegs(tid, encodeRegs(regs));
  n.setXstate(tid, xstate);
  n.setSigmask(tid, big(th.sigmask));
  return inRestartableSyscall(regs);
}

/**
 * rax to hand back for a thread whose interrupted sleep rebuildRestartBlock re-ran, by the
 * image's record of the thread (so one restore's result never reaches another's).
 */
const rebuiltSleeps = new WeakMap<ThreadRecord, bigint>();

/** How long a re-run sleep may take to block (it only has to enter the kernel). */
const SLEEP_ENTRY_TIMEOUT_MS = 5000;

/**
 * Builds again the kernel's restart block of a relative sleep the checkpoint interrupted
 * (planSyscallRestart, kind `sleep`): the thread runs the sleep from the gadget (PTRACE_CONT)
 * for the time the kernel left in the caller's rem buffer, with rem as its own rem, and is
 * interrupted by a thread-directed SIGSTOP once it blocks; the call stops with
 * ERESTART_RESTARTBLOCK and the restart block (absolute expiry, clock, rem pointer) that the
 * original had, and the SIGSTOP is swallowed (never passed on when the thread is resumed, so
 * no group stop). SIGSTOP because signals are blocked in the stub and PTRACE_INTERRUPT works on
 * seized tasks only (the root stub uses PTRACE_TRACEME). It must run before pending signals
 * are queued again: a stop signal discards a pending SIGCONT.
 *
 * If the sleep ended before the SIGSTOP (little time was left), the call completed: rax 0 is
 * handed back and the original's call returns 0, as its restart would have. Registers are put
 * back afterwards; nothing the thread can see changes except *rem, which the kernel rewrites
 * with (nearly) the same time left.
 */
function rebuildRestartBlock(t: Tracee, th: ThreadRecord): void {
  const plan = planSyscallRestart(dumpedRegs(th));
  if (plan.kind !== 'sleep') return;
  const [nr, ...args] = plan.call;
  const n = native();
  const gadget = t.gadget;
  // The gadget's code after its `syscall` is a pause() loop: a call that completes waits there.
  if (!t.readMem(gadget, GADGET_CODE.length).equals(GADGET_CODE)) throw new Error(`tid ${t.tid}: no restore gadget at 0x${gadget.toString(16)}`);
  // The time left, as the kernel wrote it into rem; the original's restart cannot fail, so a
  // rem that is no longer a valid time (changed since by another thread) is not re-run.
  let left: Buffer;
  try {
    left = t.readMem(plan.rem, 16);
  } catch {
    rebuiltSleeps.set(th, BigInt(-EINTR));
    return;
  }
  const sec = left.readBigInt64LE(0), nsec = left.readBigInt64LE(8);
  if (sec < 0n || nsec < 0n || nsec >= 1_000_000_000n) {
    rebuiltSleeps.set(th, BigInt(-EINTR));
    return;
  }
  const saved = n.getRegs(t.tid);
  const regs = decodeRegs(saved);
  regs.rip = gadget;
  regs.rax = BigInt(nr);
  regs.orig_rax = -1n; // no restart logic on the way out of the current stop
  [regs.rdi, regs.rsi, regs.rdx, regs.r10] = [args[0] ?? 0n, args[1] ?? 0n, args[2] ?? 0n, args[3] ?? 0n];
  n.setRegs(t.tid, encodeRegs(regs));
  n.cont(t.tid, 0);
  // Blocked in the sleep, or already in the pause() after it. /proc/TID/syscall shows the
  // number only while the task sleeps in a syscall ("running" otherwise).
  const syscallFile = `/proc/${t.pid}/task/${t.tid}/syscall`;
  for (const end = Date.now() + SLEEP_ENTRY_TIMEOUT_MS; ;) {
    const at = readFileSync(syscallFile, 'utf8').split(' ')[0];
    if (at === String(nr) || at === String(SYS.pause)) break;
    if (Date.now() > end) throw new Error(`tid ${t.tid} did not enter the re-run syscall ${nr} (${at})`);
  }
  n.tgkill(t.pid, t.tid, SIGSTOP);
  const st = n.waitpid(t.tid);
  if (!st?.stopped || st.stopSig !== SIGSTOP || st.event !== 0) {
    throw new Error(`tid ${t.tid}: unexpected wait status 0x${(st?.status ?? 0).toString(16)} after re-running syscall ${nr}`);
  }
  const after = decodeRegs(n.getRegs(t.tid));
  n.setRegs(t.tid, saved);
  const rax = BigInt.asIntN(64, after.rax);
  const ranIt = after.orig_rax === BigInt(nr) && after.rip === gadget + 2n;
  if (ranIt && rax === BigInt(-ERESTART_RESTARTBLOCK)) rebuiltSleeps.set(th, rax);
  else if ((ranIt && rax === 0n) || after.orig_rax === BigInt(SYS.pause)) rebuiltSleeps.set(th, 0n);
  else rebuiltSleeps.set(th, BigInt(-EINTR)); // it failed (cannot happen to the original's restart): EINTR is nearest
}

export { decodeRegs };

/** clone3(2) flags of a thread as pthread_create makes it (TLS is set with the registers). */
const CLONE_THREAD_FLAGS = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000; // VM FS FILES SIGHAND THREAD SYSVSEM
const CLONE_ARGS_SIZE = 88;

/**
 * Creates the task's other threads with their original TIDs: the main thread runs an
 * injected clone3(CLONE_THREAD, set_tid = [tid]); the new thread starts right after the
 * gadget's `syscall`, in the gadget's pause() loop, where it is seized and stopped. Then it
 * restores its own kernel-side state (name, sigaltstack, robust list, clear_child_tid, rseq).
 * Returns a Tracee per new thread, in the image's order. `heldCwd`: the path a thread whose
 * own working directory was removed (ThreadFsRecord.cwdDeleted) chdirs into, the directory
 * ferry holds for it (restore/root-dir.ts RemovedRoots.cwdOf).
 */
export function createThreads(main: Tracee, as: AddressSpace, task: TaskRecord,
  heldCwd: (fs: ThreadFsRecord) => string | undefined = () => undefined): Tracee[] {
  const n = native();
  const out: Tracee[] = [];
  const known = new Set(readdirSync(`/proc/${main.pid}/task`).map(Number));
  const seized: number[] = []; // every thread ferry traces, collected here if this fails
  try {
    for (const th of task.threads.slice(1)) {
      as.scratch.reset();
      const tidAt = as.scratch.put(Buffer.from(new BigUint64Array([BigInt(th.tid)]).buffer));
      const args = Buffer.alloc(CLONE_ARGS_SIZE);
      args.writeBigUInt64LE(BigInt(CLONE_THREAD_FLAGS), 0);
      args.writeBigUInt64LE(tidAt, 64); // set_tid
      args.writeBigUInt64LE(1n, 72); // set_tid_size
      const argsAt = as.scratch.put(args);
      const r = main.trySyscall(SYS.clone3, argsAt, CLONE_ARGS_SIZE);
      if (r < 0n) {
        throw new FerryError(r === -17n ? 'EPIDINUSE' : 'ESPAWN',
          `cannot create thread ${th.tid} of pid ${task.pid}: ${r === -17n ? 'the tid is in use by another process' : `clone3 failed with errno ${-r}`}`);
      }
      // clone3 returns the id in the task's namespace; ptrace needs ferry's.
      const tid = newEntry(`/proc/${main.pid}/task`, known);
      known.add(tid);
      n.seize(tid, RESTORE_TRACE_OPTIONS);
      seized.push(tid);
      n.interrupt(tid);
      const st = n.waitpid(tid);
      if (!st?.stopped) throw new FerryError('ESPAWN', `thread ${tid} of pid ${task.pid} died while being created`);
      const t = new Tracee(main.pid, tid);
      t.gadget = main.gadget;
      out.push(t);
      as.scratch.reset();
      t.syscalls([[SYS.prctl, PR_SET_NAME, as.scratch.putString(th.comm), 0, 0, 0], ...threadCalls(as, th)]);
      if (th.fs) restoreThreadFs(t, as, task, th, th.fs, heldCwd(th.fs));
      rebuildRestartBlock(t, th);
    }
  } catch (err) {
    for (const t of out) t.close();
    // The caller registers the threads only once they all exist: kill and collect the ones
    // made so far here, as their tracer, or the leader could never be reaped (its exit is
    // reported only once every thread is gone) and would hold its pid as a zombie.
    for (const tid of seized) {
      try { n.tgkill(main.pid, tid, SIGKILL); } catch { /* gone */ }
    }
    for (const tid of seized) {
      try { n.waitExit(tid); } catch { /* collected already */ }
    }
    throw err;
  }
  return out;
}

/**
 * Gives a new thread the root, working directory and umask of its own it had (ThreadRecord.fs):
 * made with CLONE_FS, it shares its process's fs struct, whose working directory and umask
 * are back already (restoreTaskState); unshare(2) of CLONE_FS gives it a copy, then it
 * chdirs, as its process did, to the host path recorded (its process is not chroot'ed yet:
 * enterRootDir, and the thread's own root, enterThreadRootDirs, come after the last host path)
 * and sets its umask. The process's later chroot moves only the fs struct it keeps. A removed
 * working directory (`fs.cwdDeleted`) is entered at `held`, /proc/<ferry>/fd/N of the
 * directory ferry made for it and its other holders, its mode and owner set already
 * (restore/root-dir.ts RemovedRoots): the kernel follows that link to the directory itself.
 */
function restoreThreadFs(t: Tracee, as: AddressSpace, task: TaskRecord, th: ThreadRecord, fs: ThreadFsRecord, held: string | undefined): void {
  if (fs.cwdDeleted !== undefined && held === undefined) {
    throw new FerryError('ESTATE', `cannot put thread ${th.tid} of pid ${task.pid} back into its own removed working directory ${fs.cwd}: no directory was made for it`, { pid: task.pid });
  }
  as.scratch.reset();
  const calls: Array<[number, ...Array<bigint | number>]> = [[SYS.unshare, CLONE_FS], [SYS.chdir, as.scratch.putString(held ?? fs.cwd)], [SYS.umask, fs.umask]];
  // Guarded: a chdir after a failed unshare would move the whole process.
  const r = t.trySyscalls(calls, { guard: 2 });
  const failed = [...r].findIndex((x, i) => i < 2 && x < 0n);
  if (failed >= 0) {
    const name = Object.entries(osConstants.errno).find(([, v]) => v === Number(-r[failed]!))?.[0] ?? `errno ${-r[failed]!}`;
    throw new FerryError('ESTATE', failed === 0
      ? `cannot give thread ${th.tid} of pid ${task.pid} its own root, working directory and umask again: unshare(CLONE_FS) failed with ${name}`
      : held !== undefined ? `cannot put thread ${th.tid} of pid ${task.pid} back into its own removed working directory ${fs.cwd} (held by ferry as ${held}): chdir failed with ${name}`
        : `cannot put thread ${th.tid} of pid ${task.pid} back into its own working directory ${fs.cwd}: chdir failed with ${name}; make that directory exist as it was`, { pid: task.pid });
  }
}

const CLONE_FS = 0x200;

/**
 * The one entry of directory `dir` (/proc/PID/task, or a children list) that `known` lacks:
 * the id, in ferry's pid namespace, of a task just created inside another namespace.
 */
export function newEntry(dir: string, known: ReadonlySet<number>): number {
  const fresh = readdirSync(dir).map(Number).filter((id) => !known.has(id));
  if (fresh.length !== 1) throw new Error(`expected one new task in ${dir}, found ${fresh.length}`);
  return fresh[0]!;
}

/**
 * Queues the image's pending signals again, process-wide and per thread, in their order, once
 * every thread exists; then recreates the POSIX timers (src/restore/timers.ts), after the
 * signals so a timer expiring now cannot get ahead of older signals of its number.
 *
 * Each queue is refilled by the thread the kernel lets do it: rt_sigqueueinfo(2) and
 * rt_tgsigqueueinfo(2) accept a siginfo claiming to come from a user (si_code >= 0, such as
 * SI_USER from kill) or from tkill (SI_TKILL) only when the caller targets itself, i.e. the
 * leader for the process-wide queue (pid == its own tid) and each thread for its own queue.
 * The siginfo goes in whole, so si_pid, si_uid and sigqueue payloads are the dumped ones; a
 * standard signal was pending at most once per queue, so it is queued at most once again.
 * Every signal stays blocked until the masks are set at the very end, so none is delivered early.
 */
export function queuePendingSignals(main: Tracee, others: readonly Tracee[], as: AddressSpace, task: TaskRecord): void {
  const timers = task.itimers.posix;
  const firing = new Set<number>();
  /** False for a timer's own pending signal: that timer is made to expire at once instead. */
  const requeue = (p: PendingSignal): boolean => {
    const timer = timerOfSignal(p, timers);
    if (timer) firing.add(timer.id);
    return !timer;
  };
  // tid: as the task knows it (the syscall arguments); t: the thread, by its ptrace id.
  const queues: Array<{ tid: number; t: Tracee; shared: boolean; signals: PendingSignal[] }> = [
    { tid: task.pid, t: main, shared: true, signals: task.sharedPending.filter(requeue) },
    ...task.threads.map((th, i) => ({ tid: th.tid, t: i === 0 ? main : others[i - 1]!, shared: false, signals: th.pending.filter(requeue) })),
  ];
  for (const q of queues) {
    if (q.signals.length === 0) continue;
    const { t } = q;
    try {
      for (let i = 0; i < q.signals.length; i += 100) {
        as.scratch.reset();
        t.syscalls(q.signals.slice(i, i + 100).map((p): [number, ...Array<bigint | number>] => {
          const info = as.scratch.put(Buffer.from(p.siginfo, 'base64'));
          return q.shared ? [SYS.rt_sigqueueinfo, task.pid, p.signo, info] : [SYS.rt_tgsigqueueinfo, task.pid, q.tid, p.signo, info];
        }));
      }
    } catch (err) {
      const where = q.shared ? 'process-wide' : `of thread ${q.tid}`;
      throw new FerryError('ESTATE', `cannot queue the pending signals ${where} of pid ${task.pid} again: ${describeCause(err)}`, { cause: err });
    }
  }
  restorePosixTimers(main, as, task, firing);
}
