/**
 * A container's clocks across a checkpoint (time_namespaces(7)). CLOCK_MONOTONIC and
 * CLOCK_BOOTTIME count from the host's boot, so a container restored later, or on a host that
 * booted at another time, would see them jump (forward by the downtime, or anywhere on another
 * host): timeouts fire at once, rate limiters and watchdogs misjudge. A time namespace shifts
 * both clocks for the processes in it by fixed offsets, so the restored container gets one whose
 * offsets make its clocks go on from where they stood when it was frozen.
 *
 * - Checkpoint (`readContainerClocks`, the container frozen): both clocks as the container
 *   sees them: the host's now, plus the offsets of the init's time namespace
 *   (/proc/PID/timens_offsets, zero outside one). They go into container.json `clocks`.
 * - Restore (`enterTimeNamespace`, the init still the bare restore stub, before any process of
 *   the image exists): the stub makes a time namespace for its children (unshare(2)
 *   CLONE_NEWTIME); ferry writes its offsets, recorded minus the host's now, into
 *   /proc/STUB/timens_offsets (allowed until a process enters it); the stub enters it itself
 *   (setns(2) on the namespace's descriptor, pulled from ferry with pidfd_getfd(2): a time
 *   namespace can be entered only by a single-threaded process, which the stub is). Every
 *   process of the image descends from the stub, so all live in it. The offsets are frozen
 *   from then on; the namespace goes with the container.
 *
 * Timers need nothing: they are restored by the time they had left (files/timerfd.ts,
 * restore/timers.ts). Processes outside containers keep the host's clocks: they share the
 * host's time namespace with whatever else runs there (docs/cli.md).
 */
import { closeSync, openSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { SYS } from '../arch/x86-64.js';
import { FerryError, describeCause } from '../errors.js';
import { native } from '../native/binding.js';
import type { Tracee } from '../task/tracee.js';

/** CLOCK_MONOTONIC and CLOCK_BOOTTIME (linux/time.h). */
const CLOCK_MONOTONIC = 1, CLOCK_BOOTTIME = 7;
const CLONE_NEWTIME = 0x80;
const NS = 1_000_000_000n;
/** The largest clock value an image may give: 100 years of uptime, in ns (bounds an edited image). */
const MAX_CLOCK_NS = 100n * 366n * 86_400n * NS;

/** container.json `clocks`: the container's clocks when it was frozen, decimal nanoseconds. */
export interface ContainerClocks {
  monotonic: string;
  boottime: string;
}

/** Offsets of a time namespace, nanoseconds (timens_offsets: "monotonic S NS", "boottime S NS"). */
function parseOffsets(text: string): { monotonic: bigint; boottime: bigint } {
  const out = { monotonic: 0n, boottime: 0n };
  for (const line of text.split('\n')) {
    const m = /^(monotonic|boottime)\s+(-?\d+)\s+(\d+)\s*$/.exec(line.trim());
    if (m) out[m[1] as 'monotonic' | 'boottime'] = BigInt(m[2]!) * NS + BigInt(m[3]!);
  }
  return out;
}

/**
 * The clocks of the container whose init is `pid`, as it sees them now, or undefined when the
 * kernel has no time namespaces (nothing to restore them with either) or the init has made one
 * for its children that it is not in (its own offsets cannot be read then).
 */
export function readContainerClocks(pid: number): ContainerClocks | undefined {
  let offsets = { monotonic: 0n, boottime: 0n };
  try {
    if (readlinkSync(`/proc/${pid}/ns/time`) !== readlinkSync(`/proc/${pid}/ns/time_for_children`)) return undefined;
    offsets = parseOffsets(readFileSync(`/proc/${pid}/timens_offsets`, 'utf8'));
  } catch {
    return undefined; // no CONFIG_TIME_NS
  }
  const n = native();
  return {
    monotonic: (n.clockGettime(CLOCK_MONOTONIC) + offsets.monotonic).toString(),
    boottime: (n.clockGettime(CLOCK_BOOTTIME) + offsets.boottime).toString(),
  };
}

/** container.json `clocks` as an image gives it: two decimal ns counts within 100 years, or EIMAGE. */
export function validateClocks(v: unknown): ContainerClocks {
  const ok = (x: unknown): x is string => typeof x === 'string' && /^\d{1,19}$/.test(x) && BigInt(x) <= MAX_CLOCK_NS;
  const c = v as Partial<ContainerClocks> | null;
  if (typeof c !== 'object' || c === null || !ok(c.monotonic) || !ok(c.boottime) || Object.keys(c).length !== 2) {
    throw new FerryError('EIMAGE', 'image: container.json clocks must be {monotonic, boottime}, each a decimal count of nanoseconds of at most 100 years');
  }
  return { monotonic: c.monotonic, boottime: c.boottime };
}

/** "clock S NS" with NS in 0..999999999 (S negative for a clock set back). */
function offsetLine(name: string, ns: bigint): string {
  const sec = ns >= 0n ? ns / NS : -((-ns + NS - 1n) / NS);
  return `${name} ${sec} ${ns - sec * NS}\n`;
}

/**
 * Puts the restore stub `stub` (pid `pid`, ferry's pidfd as its descriptor `ferryPidfd`) into
 * a new time namespace whose clocks read `clocks` now. `id` names the container in errors.
 */
export function enterTimeNamespace(stub: Tracee, pid: number, ferryPidfd: number, clocks: ContainerClocks, id: string): void {
  const n = native();
  stub.syscall(SYS.unshare, CLONE_NEWTIME);
  const text = offsetLine('monotonic', BigInt(clocks.monotonic) - n.clockGettime(CLOCK_MONOTONIC))
    + offsetLine('boottime', BigInt(clocks.boottime) - n.clockGettime(CLOCK_BOOTTIME));
  try {
    writeFileSync(`/proc/${pid}/timens_offsets`, text);
  } catch (err) {
    throw new FerryError('ERESTORE', `container ${id}: cannot set its clocks to where they stood at the checkpoint (${text.trim().replace('\n', ', ')}): ${describeCause(err)}`, { cause: err });
  }
  const ns = openSync(`/proc/${pid}/ns/time_for_children`, 'r');
  try {
    const fd = stub.syscall(SYS.pidfd_getfd, ferryPidfd, ns, 0);
    try {
      stub.syscall(SYS.setns, fd, CLONE_NEWTIME);
    } finally {
      stub.trySyscall(SYS.close, fd);
    }
  } finally {
    closeSync(ns);
  }
}
