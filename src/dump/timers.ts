/**
 * POSIX timers of a stopped process (timer_create(2)): what /proc/PID/timers tells from outside
 * (id, signal and sigev_value, notification and target thread, clock), and what only the
 * process can ask (timer_gettime(2) and timer_getoverrun(2), injected in the process's one
 * batch of task-state.ts).
 */
import { ITIMERSPEC_SIZE, SYS } from '../arch/x86-64.js';
import { hex, type PosixTimerRecord } from '../image/records.js';
import { readProcText } from '../proc/read.js';

/** One /proc/PID/timers entry. */
export interface ProcTimer {
  id: number;
  signo: number;
  value: bigint;
  notify: PosixTimerRecord['notify'];
  /** SIGEV_THREAD_ID target, else null. */
  thread: number | null;
  clock: number;
}

/**
 * Parses /proc/PID/timers (fs/proc/base.c, show_timer), four lines per timer:
 * `ID: 3`, `signal: 41/000000000000abcd` (signo / sigev_value in hex), `notify: signal/tid.9548`
 * (signal, none or thread; `tid.N` for SIGEV_THREAD_ID, else `pid.N`), `ClockID: 0`.
 * The kernel lists the newest timer first.
 */
export function parseProcTimers(text: string): ProcTimer[] {
  const out: ProcTimer[] = [];
  let cur: Partial<ProcTimer> | null = null;
  const bad = (line: string): never => { throw new Error(`unexpected line in /proc/PID/timers: ${JSON.stringify(line)}`); };
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const [key, rest = ''] = line.split(/:\s*/, 2) as [string, string?];
    if (key === 'ID') {
      cur = { id: Number(rest) };
      out.push(cur as ProcTimer);
      continue;
    }
    if (!cur) bad(line);
    const c = cur!;
    if (key === 'signal') {
      const m = /^(-?\d+)\/([0-9a-f]+)$/.exec(rest) ?? bad(line);
      c.signo = Number(m[1]);
      c.value = BigInt(`0x${m[2]!}`);
    } else if (key === 'notify') {
      const m = /^(signal|none|thread)\/(tid|pid)\.(\d+)$/.exec(rest) ?? bad(line);
      c.notify = m[1] as ProcTimer['notify'];
      c.thread = m[2] === 'tid' ? Number(m[3]) : null;
    } else if (key === 'ClockID') {
      c.clock = Number(rest);
    } else {
      bad(line);
    }
  }
  for (const t of out) {
    if (!Number.isSafeInteger(t.id) || t.signo === undefined || t.notify === undefined || !Number.isSafeInteger(t.clock)) {
      throw new Error(`incomplete entry for timer ${t.id} in /proc/PID/timers`);
    }
  }
  return out;
}

/** One injected call: [nr, a0..a5]. */
type Call = [number, ...Array<bigint | number>];

/**
 * The injected calls that read the timers `listed` (oldest first): timer_gettime into one
 * itimerspec each from `at` on, then timer_getoverrun. All threads must be stopped, so no timer
 * is created or deleted between the /proc listing and these calls.
 */
export function posixTimerCalls(listed: readonly ProcTimer[], at: bigint): Call[] {
  return listed.flatMap((t, j): Call[] => [
    [SYS.timer_gettime, t.id, at + BigInt(j * ITIMERSPEC_SIZE)],
    [SYS.timer_getoverrun, t.id],
  ]);
}

/**
 * The records of the timers `listed`, from what posixTimerCalls left: `specs` the itimerspecs
 * it wrote, `results` its calls' results (two per timer).
 */
export function posixTimerRecords(listed: readonly ProcTimer[], specs: Buffer, results: ArrayLike<bigint>): PosixTimerRecord[] {
  return listed.map((t, j) => {
    const f = (k: number): number => Number(specs.readBigInt64LE(j * ITIMERSPEC_SIZE + k * 8));
    return {
      id: t.id,
      clock: t.clock,
      notify: t.notify,
      thread: t.thread,
      signo: t.signo,
      value: hex(t.value),
      interval: [f(0), f(1)],
      remaining: [f(2), f(3)],
      overrun: Number(results[j * 2 + 1]!),
    };
  });
}

/** The POSIX timers of process `pid` as /proc/PID/timers lists them, oldest first. */
export function listPosixTimers(pid: number): ProcTimer[] {
  return parseProcTimers(readProcText(pid, 'timers')).reverse();
}
