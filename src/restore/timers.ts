/**
 * Timers put back into a rebuilt process: the itimers (setitimer(2)) and the POSIX timers
 * (timer_create(2), timer_settime(2), prctl(2) PR_TIMER_CREATE_RESTORE_IDS), and the rule for
 * timer signals that were pending at dump time.
 *
 * A process knows its timers by id, so each comes back with its own: while the process runs
 * prctl(PR_TIMER_CREATE_RESTORE_IDS, ON), timer_create takes the id to use from *timerid (any
 * free id in 0..INT_MAX, EBUSY if taken) instead of choosing one; the mode is switched off again
 * right after, whatever happened. Every thread exists by then, since a SIGEV_THREAD_ID timer
 * must name a live thread of the process.
 */
import {
  ITIMERSPEC_SIZE, ITIMERVAL_SIZE, PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_OFF, PR_TIMER_CREATE_RESTORE_IDS_ON,
  SI_TIMER, SIGEV_NONE, SIGEV_SIGNAL, SIGEV_THREAD, SIGEV_THREAD_ID, SIGEVENT_SIZE, SIGINFO_TIMERID_OFFSET, SYS,
} from '../arch/x86-64.js';
import { describeCause, FerryError } from '../errors.js';
import { big, type ItimerRecord, type PendingSignal, type PosixTimerRecord, type TaskRecord } from '../image/records.js';
import { injectedError, type Tracee } from '../task/tracee.js';
import type { AddressSpace } from './address-space.js';

/** clockid_t whose resolution clock_getres(2) reports as one tick (KTIME_LOW_RES = TICK_NSEC). */
const CLOCK_REALTIME_COARSE = 5;
const TIMESPEC_SIZE = 16;

/**
 * setitimer(2) calls putting ITIMER_REAL, ITIMER_VIRTUAL and ITIMER_PROF back with the time
 * they had left and their interval (armed ones only).
 *
 * For the two CPU-time itimers the kernel adds one tick to a new value (kernel/time/itimer.c,
 * set_cpu_itimer), while getitimer reported the true time left; so one tick, learnt from
 * clock_getres(CLOCK_REALTIME_COARSE) in the task, is taken off first (rounded up to the
 * microsecond, never below 1 us). Otherwise every checkpoint would push them a tick later.
 */
export function itimerCalls(t: Tracee, as: AddressSpace, task: TaskRecord): Array<[number, ...Array<bigint | number>]> {
  const { real, virtual, prof } = task.itimers;
  const armed = (it: ItimerRecord): boolean => it.value[0] !== 0 || it.value[1] !== 0;
  let tickNs = 0n;
  if (armed(virtual) || armed(prof)) {
    const at = as.scratch.alloc(TIMESPEC_SIZE);
    t.syscall(SYS.clock_getres, CLOCK_REALTIME_COARSE, at);
    const res = t.readMem(at, TIMESPEC_SIZE);
    tickNs = res.readBigInt64LE(0) * 1_000_000_000n + res.readBigInt64LE(8);
  }
  const calls: Array<[number, ...Array<bigint | number>]> = [];
  for (const [which, it] of [real, virtual, prof].entries()) {
    if (!armed(it)) continue;
    let value: [bigint, bigint] = [BigInt(it.value[0]), BigInt(it.value[1])];
    if (which !== 0) {
      const ns = value[0] * 1_000_000_000n + value[1] * 1000n - tickNs;
      const us = ns <= 1000n ? 1n : (ns + 999n) / 1000n;
      value = [us / 1_000_000n, us % 1_000_000n];
    }
    const v = Buffer.alloc(ITIMERVAL_SIZE);
    [BigInt(it.interval[0]), BigInt(it.interval[1]), ...value].forEach((x, i) => v.writeBigInt64LE(x, i * 8));
    calls.push([SYS.setitimer, which, as.scratch.put(v), 0]);
  }
  return calls;
}

const NOTIFY = { signal: SIGEV_SIGNAL, none: SIGEV_NONE, thread: SIGEV_THREAD } as const;
const EINVAL = 22, EBUSY = 16;

/**
 * The timer whose expiry queued `p`, if `p` is the signal of one of `timers` (si_code SI_TIMER,
 * si_timerid naming a timer of that signal), else undefined.
 *
 * Such a signal is not queued again as it is: in the kernel it is the timer's own preallocated
 * siginfo, and an interval timer is re-armed only when that signal is delivered (counting the
 * expiries missed meanwhile as overruns). A copy queued by rt_sigqueueinfo would be delivered
 * once more next to the restored timer's own signals. Instead the timer is made to expire at
 * once (restorePosixTimers, `firing`), which queues its real signal again.
 */
export function timerOfSignal(p: PendingSignal, timers: readonly PosixTimerRecord[]): PosixTimerRecord | undefined {
  const si = Buffer.from(p.siginfo, 'base64');
  if (si.length < SIGINFO_TIMERID_OFFSET + 4 || si.readInt32LE(8) !== SI_TIMER) return undefined;
  const id = si.readInt32LE(SIGINFO_TIMERID_OFFSET);
  return timers.find((t) => t.id === id && t.signo === p.signo && t.notify !== 'none');
}

/**
 * Recreates every POSIX timer with its id, clock, notification (signal, sigev_value, target
 * thread) and interval, armed with the time it had left; a timer whose signal was pending at
 * dump time (its id in `firing`) expires at once instead, so that signal is pending again.
 * `main` is the leader, stopped with every signal blocked; all threads exist.
 */
export function restorePosixTimers(main: Tracee, as: AddressSpace, task: TaskRecord, firing: ReadonlySet<number>): void {
  const timers = task.itimers.posix;
  if (timers.length === 0) return;
  const tids = new Set(task.threads.map((th) => th.tid));
  const on = main.trySyscall(SYS.prctl, PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_ON, 0, 0, 0);
  if (on < 0n) {
    throw new FerryError('EKERNEL', `cannot recreate the ${timers.length} POSIX timer(s) of pid ${task.pid} with their ids: `
      + `this kernel lacks prctl(PR_TIMER_CREATE_RESTORE_IDS) (Linux 6.15 or later has it)`, { cause: injectedError(SYS.prctl, Number(-on), main.tid) });
  }
  try {
    for (const t of timers) {
      as.scratch.reset();
      const ev = Buffer.alloc(SIGEVENT_SIZE);
      ev.writeBigUInt64LE(big(t.value), 0);
      ev.writeInt32LE(t.signo, 8);
      // A target thread that had exited could never be notified: keep the timer (its id and
      // time) without a notification, the only form the kernel accepts for it.
      const aimed = t.thread !== null && tids.has(t.thread);
      const notify = t.thread !== null && !aimed ? SIGEV_NONE : NOTIFY[t.notify] | (aimed ? SIGEV_THREAD_ID : 0);
      ev.writeInt32LE(notify, 12);
      if (aimed) ev.writeInt32LE(t.thread!, 16);
      const evAt = as.scratch.put(ev);
      const idBuf = Buffer.alloc(8);
      idBuf.writeInt32LE(t.id, 0);
      const idAt = as.scratch.put(idBuf);
      const r = main.trySyscall(SYS.timer_create, t.clock, evAt, idAt);
      if (r < 0n) {
        const cause = injectedError(SYS.timer_create, Number(-r), main.tid);
        const why = r === -BigInt(EBUSY) ? 'the id is taken'
          : r === -BigInt(EINVAL) ? `clock ${t.clock}, signal ${t.signo} or thread ${t.thread ?? '-'} is not valid here` : describeCause(cause);
        throw new FerryError('ESTATE', `cannot recreate POSIX timer ${t.id} of pid ${task.pid}: ${why}`, { cause });
      }
      const value: [number, number] = firing.has(t.id) ? [0, 1] : t.remaining;
      if (value[0] === 0 && value[1] === 0) continue; // disarmed
      const its = Buffer.alloc(ITIMERSPEC_SIZE);
      [t.interval[0], t.interval[1], value[0], value[1]].forEach((x, i) => its.writeBigInt64LE(BigInt(x), i * 8));
      const s = main.trySyscall(SYS.timer_settime, t.id, 0, as.scratch.put(its), 0);
      if (s < 0n) {
        const cause = injectedError(SYS.timer_settime, Number(-s), main.tid);
        throw new FerryError('ESTATE', `cannot arm POSIX timer ${t.id} of pid ${task.pid}: ${describeCause(cause)}`, { cause });
      }
    }
  } finally {
    main.syscall(SYS.prctl, PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_OFF, 0, 0, 0);
  }
}
