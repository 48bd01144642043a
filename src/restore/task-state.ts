/**
 * Per-task and per-thread state put back into a rebuilt task (DESIGN.md §3, steps 7 and 10):
 * name, cwd, umask, every signal disposition, sigaltstack, robust list, clear_child_tid, rseq,
 * session; then registers, XSAVE area and signal mask, set right before the task is let go.
 */
import { readdirSync } from 'node:fs';
import {
  decodeRegs, encodeRegs, RESTORE_TRACE_OPTIONS, KSIGACTION_SIZE, NSIG, PR_SET_NAME, REG_NAMES, rewindInterruptedSyscall,
  SIGKILL, SIGSTOP, STACK_T_SIZE, SYS, type Regs,
} from '../arch/x86-64.js';
import { describeCause, FerryError } from '../errors.js';
import { big, type PendingSignal, type TaskRecord, type ThreadRecord } from '../image/records.js';
import { native } from '../native/binding.js';
import { readProcText } from '../proc/read.js';
import { parseStatus } from '../proc/status.js';
import { Tracee } from '../task/tracee.js';
import type { AddressSpace } from './address-space.js';
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

/** Sets registers (rewinding an interrupted syscall), XSAVE area and signal mask. */
export function setThreadRegisters(tid: number, th: ThreadRecord, xstate: Buffer): void {
  const regs = {} as Regs;
  for (const name of REG_NAMES) regs[name] = big(th.regs[name]);
  const n = native();
  n.setRegs(tid, encodeRegs(rewindInterruptedSyscall(regs)));
  n.setXstate(tid, xstate);
  n.setSigmask(tid, big(th.sigmask));
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
 * Returns a Tracee per new thread, in the image's order.
 */
export function createThreads(main: Tracee, as: AddressSpace, task: TaskRecord): Tracee[] {
  const n = native();
  const out: Tracee[] = [];
  const known = new Set(readdirSync(`/proc/${main.pid}/task`).map(Number));
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
      n.interrupt(tid);
      const st = n.waitpid(tid);
      if (!st?.stopped) throw new FerryError('ESPAWN', `thread ${tid} of pid ${task.pid} died while being created`);
      const t = new Tracee(main.pid, tid);
      t.gadget = main.gadget;
      out.push(t);
      as.scratch.reset();
      t.syscalls([[SYS.prctl, PR_SET_NAME, as.scratch.putString(th.comm), 0, 0, 0], ...threadCalls(as, th)]);
    }
  } catch (err) {
    for (const t of out) t.close();
    throw err;
  }
  return out;
}

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
