/**
 * timerfd (timerfd_create(2): `anon_inode:[timerfd]`): clock, O_NONBLOCK, the time left and
 * the period, the TFD_TIMER_ABSTIME / TFD_TIMER_CANCEL_ON_SET flags it was set with, and the
 * expirations not read yet.
 *
 * fdinfo's `ticks` is stale for a periodic timer: the kernel counts the periods missed only
 * when the timer is read (it then re-arms it at the next period). So the dump reads the timer
 * from a pidfd_getfd copy (the same open file) after a zero-timeout poll, and puts the count
 * straight back with TFD_IOC_SET_TICKS; then timerfd_gettime gives the true time left.
 * Not a timer set with TFD_TIMER_CANCEL_ON_SET: once the real-time clock is set (settimeofday,
 * an NTP step, a virtual machine's clock corrected after a pause), its next read fails with
 * ECANCELED and clears that mark, which nothing can put back: the process would never learn
 * that the clock changed (a CI run on a virtual machine met it). Its count is fdinfo's, which
 * a one-shot timer keeps exact; for a periodic one it misses the periods not read yet since
 * the first, and a cancel the process had not read yet is not carried into the image.
 *
 * On restore a relative timer counts its time left again from the restore, like the POSIX
 * timers. An absolute timer on a real-time clock keeps its absolute expiry (wall-clock time
 * does not stop while the image waits); on a monotonic or boot-time clock, whose zero is the
 * boot of the checkpointing machine, it gets now + time left, still as an absolute timer.
 */
import { FerryError } from '../errors.js';
import type { FileRecord } from '../image/records.js';
import { native } from '../native/binding.js';
import { O_ACCMODE, O_CLOEXEC, O_NONBLOCK } from '../proc/fcntl.js';
import type { DumpContext, FdDesc, FileKind } from './types.js';

/** timerfd_settime(2) flags. */
const TFD_TIMER_ABSTIME = 1, TFD_TIMER_CANCEL_ON_SET = 2;
/** Clocks timerfd_create(2) accepts; the real-time ones keep absolute expiries. */
const CLOCK_REALTIME = 0, CLOCK_REALTIME_ALARM = 8;
const CLOCKS = new Set([CLOCK_REALTIME, 1, 7, CLOCK_REALTIME_ALARM, 9]);
const NS = 1_000_000_000;

type Time = [number, number];

export interface TimerfdRecord extends FileRecord {
  kind: 'timerfd';
  /** clockid_t. */
  clock: number;
  /** Status flags of the open file (O_NONBLOCK). */
  flags: number;
  /** TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, as last set. */
  settime: number;
  /** Time left until the next expiration, [s, ns]; [0, 0] when disarmed. */
  value: Time;
  /** Period, [s, ns]; [0, 0] for a one-shot timer. */
  interval: Time;
  /** Absolute expiry on the timer's clock for an absolute timer on a real-time clock, else null. */
  absolute: Time | null;
  /** Expirations not read yet, "0x…" hex. */
  ticks: string;
}

const toNs = (t: Time): bigint => BigInt(t[0]) * BigInt(NS) + BigInt(t[1]);
const fromNs = (n: bigint): Time => [Number(n / BigInt(NS)), Number(n % BigInt(NS))];
const isTime = (t: unknown): t is Time => Array.isArray(t) && t.length === 2
  && Number.isSafeInteger(t[0]) && t[0] >= 0 && Number.isSafeInteger(t[1]) && t[1] >= 0 && t[1] < NS;

function field(fd: FdDesc, key: string): string | undefined {
  return fd.fdinfo.lines.get(key)?.[0];
}

export const timerfd: FileKind<TimerfdRecord> = {
  kind: 'timerfd',

  matches(fd: FdDesc): boolean {
    return fd.link === 'anon_inode:[timerfd]';
  },

  key(fd: FdDesc): string {
    return `timerfd:${field(fd, 'clockid') ?? ''}:${field(fd, 'it_interval') ?? ''}:${fd.fdinfo.flags & ~O_CLOEXEC}`;
  },

  dump(fd: FdDesc, ctx: DumpContext): Omit<TimerfdRecord, 'id' | 'kind'> {
    const what = `checkpoint: timerfd fd ${fd.fd} of pid ${fd.pid}`;
    const clock = Number(field(fd, 'clockid'));
    if (!CLOCKS.has(clock)) throw new FerryError('EDUMP', `${what}: fdinfo has no known clockid`);
    // "settime flags" is printed in octal.
    const settime = parseInt(field(fd, 'settime flags') ?? '0', 8) & (TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET);
    const n = native();
    try {
      const copy = ctx.grab(fd);
      let ticks: bigint;
      if ((settime & TFD_TIMER_CANCEL_ON_SET) !== 0) {
        ticks = BigInt(field(fd, 'ticks') ?? '0');
      } else {
        ticks = n.timerfdTakeTicks(copy);
        if (ticks > 0n) n.timerfdSetTicks(copy, ticks);
      }
      const t = n.timerfdGettime(copy, clock);
      const armed = t.value[0] !== 0 || t.value[1] !== 0;
      const realtime = clock === CLOCK_REALTIME || clock === CLOCK_REALTIME_ALARM;
      return {
        clock,
        flags: fd.fdinfo.flags & ~O_CLOEXEC & ~O_ACCMODE,
        settime,
        value: t.value,
        interval: t.interval,
        absolute: armed && realtime && (settime & TFD_TIMER_ABSTIME) !== 0 ? fromNs(toNs(t.now) + toNs(t.value)) : null,
        ticks: `0x${ticks.toString(16)}`,
      };
    } catch (err) {
      if (err instanceof FerryError) throw err;
      throw new FerryError('EDUMP', `${what}: ${(err as Error).message}`, { cause: err });
    }
  },

  check(rec: TimerfdRecord): void {
    const ok = CLOCKS.has(rec.clock) && Number.isSafeInteger(rec.flags) && Number.isSafeInteger(rec.settime)
      && isTime(rec.value) && isTime(rec.interval) && (rec.absolute === null || isTime(rec.absolute))
      && typeof rec.ticks === 'string' && /^0x[0-9a-f]{1,16}$/.test(rec.ticks);
    if (!ok) throw new FerryError('EIMAGE', `image: timerfd (file ${rec.id}) has an invalid record`);
  },

  open(rec: TimerfdRecord): number {
    const n = native();
    let fd = -1;
    try {
      fd = n.timerfdCreate(rec.clock, rec.flags & O_NONBLOCK);
      const armed = rec.value[0] !== 0 || rec.value[1] !== 0;
      if (armed) {
        let value = rec.value;
        if ((rec.settime & TFD_TIMER_ABSTIME) !== 0) {
          value = rec.absolute ?? fromNs(toNs(n.timerfdGettime(fd, rec.clock).now) + toNs(rec.value));
        }
        n.timerfdSettime(fd, rec.settime, value[0], value[1], rec.interval[0], rec.interval[1]);
      }
      const ticks = BigInt(rec.ticks);
      if (ticks > 0n) n.timerfdSetTicks(fd, ticks);
      return fd;
    } catch (err) {
      if (fd >= 0) n.closeFd(fd);
      throw new FerryError('EOPEN', `cannot restore timerfd (file ${rec.id}, clock ${rec.clock}): ${(err as Error).message}`, { cause: err });
    }
  },
};
