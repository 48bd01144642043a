/**
 * Named fault points, for the fault-matrix tests (test/faults/) and nothing else.
 *
 * The library never reads the environment; the CLI programs do, once: FERRY_TEST_PAUSE_AT
 * names one phase. When an operation reaches that phase it writes
 *   ferry-test: paused at PHASE (pid N)
 * on stderr and waits there, with everything it holds still held, until it is killed or its
 * abort signal fires (SIGINT/SIGTERM in the CLI), so a test can hit ferry at exactly that
 * point. `PHASE+MS` (`streaming+3000`) pauses there for MS milliseconds only and then goes on,
 * for a test that changes the world meanwhile (cuts the network) and watches what ferry does
 * next. `PHASE!` (`ttydrain!`) throws there instead, the first time (an Error whose message
 * says so), for a test of a failure no test can cause from outside (a read error, a kernel
 * refusing a byte). Unset (always, outside tests), a fault point costs one comparison.
 *
 * The phases, in the order an operation passes them:
 * - checkpoint: `frozen` (a container's cgroup is frozen, before its threads are seized),
 *   `seized` (every thread stopped, nothing read), `dumped` (every task read, nothing
 *   written), `writing` (the first memory chunk is in the image), `released` (only with
 *   --leave-running of a tree storing over 8 MiB: every page is read and written and the
 *   tree let go, running; the image not yet synced nor in place), `written` (the image is
 *   complete and in place, the tree not yet let go or killed);
 * - restore: `verified` (image checked, nothing created), `created` (every process exists as
 *   a stub), `rebuilt` (memory and state written, not yet let go), `letgo` (the first process
 *   let go and running, the others still traced);
 * - migration (src/migrate/): `streaming` (the first chunk of the image has crossed the
 *   connection: sent by `ferry migrate`, the tree stopped; spooled by `ferry receive`); `ended`
 *   (`ferry receive` has the whole image, its `end` read, nothing of it checked yet: the sender
 *   waits for its `ready`, the tree stopped, its local copy of the frames finishing);
 *   `precopy` (`ferry migrate` has sent the first pre-copy round: the tree runs, its writes
 *   tracked through ferry's userfaultfd, nothing of it seized; also a pre-dump of ferry's
 *   criu or ferry-runtime once its scan is done, before it copies pages and hands the
 *   tracking to its holder); `topup` (`ferry migrate`'s first top-up round right before the
 *   freeze is sent, precopy.ts topUp: the checkpoint has made its frozen window ready, the
 *   tree runs, tracked, nothing of it seized); `lastlook` (its last round, after the target
 *   caught up with the top-ups, precopy.ts lastLook: sent, not waited for; the tree runs,
 *   tracked, nothing of it seized); `catchup` (`ferry receive` has been asked to
 *   say when it has taken the rounds' pages (before the top-up rounds, and again after them)
 *   and has not answered: `ferry migrate` waits for it, the tree running, tracked); `holding` (the dirty tracking
 *   holds a source process's threads stopped while it registers its areas, the first time it
 *   does: a synchronous pause, ended only by its time or by SIGKILL); `transient` (restore has
 *   made a name it removes again at once: a removed directory, FIFO or further name of a file,
 *   files/transient.ts; synchronous too); `configswap` (a container restore has the bundle's
 *   config.json swapped for the restore's, for `runc create`; synchronous); `forked` (a
 *   restore's parent stub has forked a child stub, not seized yet: the first time; synchronous);
 *   `lent` (a restore's rebuilt parent holds the pages its children lend through it,
 *   restore/cow.ts, before they are forked: the first time; synchronous); `relayed` (a
 *   restore's rebuilt process holds an area it kept from its parent only to pass it on to its
 *   children, restore/cow.ts CowPlan.relayed, before they are forked: the first time;
 *   synchronous); `untrapped` (a restored process that ignores SIGTRAP has it ignored again
 *   and its gadget unmapped by syscall-stops, stopped at the munmap's exit, before the SIGTRAP
 *   of ferry's own that brings it to the let-go's stop: restore/ignored-trap.ts; synchronous);
 *   `lazy` (a lazy restore let the tree go: faults are served, the background fill has not
 *   begun — paused, pages stay missing until touched); `repair` (a checkpoint with
 *   --tcp-established has the first TCP socket it reads in repair mode, with SO_OOBINLINE and
 *   SO_PEEK_OFF changed to read its receive queue, files/tcp-urgent.ts; synchronous); `grouped`
 *   (a restore's helper holds the id of a process group whose leader had exited, the members
 *   joined, before it exits, restore/tree.ts setGroups: the first time; synchronous);
 * - terminals (files/tty.ts), checkpoint and restore: `ttydrain` (bytes queued on a pty have
 *   been read, before the rest: the first time; synchronous); `ttyinsert` (input of a
 *   canonical-mode slave is being inserted again, right after a quoting VLNEXT: the first
 *   time; synchronous);
 * - what a checkpoint reads and a restore makes for a moment: `aioring` (checkpoint: the tree
 *   stopped, the first io_setup(2) ring probed as its process's own, before its header and
 *   events are read, dump/memory.ts readAioRings: the first time; synchronous); `standin`
 *   (restore: the short-lived process standing at a reaped process's pid exists, stopped after
 *   its exec, before its /proc file is opened, files/procfile.ts openGone: the first time;
 *   synchronous); `threadpidfd` (restore: every thread exists, the first pidfd of a thread
 *   (PIDFD_THREAD) is about to be opened, files/pidfd.ts openAfterThreads: the first time;
 *   synchronous); `blob` (checkpoint: the injected program of a process's main-thread batch
 *   has run its calls and waits for ferry, inside native/inject.cc, before ferry interrupts
 *   it: the first time; synchronous).
 */
import { writeSync } from 'node:fs';

/** Every fault point an operation passes. */
export const FAULT_PHASES = [
  'frozen', 'seized', 'dumped', 'writing', 'released', 'written', 'verified', 'created', 'rebuilt', 'letgo', 'streaming',
  'precopy', 'topup', 'holding', 'transient', 'configswap', 'forked', 'lent', 'lazy', 'repair', 'grouped', 'ttydrain', 'ttyinsert',
  'aioring', 'standin', 'threadpidfd', 'relayed', 'catchup', 'blob', 'untrapped', 'lastlook', 'ended',
] as const;
export type FaultPhase = (typeof FAULT_PHASES)[number];

let pauseAt: FaultPhase | undefined;
/** How long to pause, milliseconds; undefined: until killed or aborted. */
let pauseMs: number | undefined;
/** Whether a synchronous fault point has paused already (it pauses once). */
let pausedSync = false;
/** `PHASE!`: the fault point throws instead of pausing. */
let throwAt = false;

/** Sets the phase to pause at (the CLI programs call this with FERRY_TEST_PAUSE_AT). */
export function setPauseAt(spec: string | undefined): void {
  if (spec === undefined || spec === '') return;
  const m = /^([a-z]+)(?:\+(\d{1,7})|(!))?$/.exec(spec);
  const phase = m?.[1] ?? spec;
  if (!(FAULT_PHASES as readonly string[]).includes(phase)) {
    throw new Error(`FERRY_TEST_PAUSE_AT=${spec} is not a phase (${FAULT_PHASES.join(', ')}), optionally +MS or !`);
  }
  pauseAt = phase as FaultPhase;
  pauseMs = m?.[2] !== undefined ? Number(m[2]) : undefined;
  throwAt = m?.[3] !== undefined;
}

/** An injected failure (`PHASE!`), thrown once. */
function injected(phase: FaultPhase): Error {
  pausedSync = true;
  pauseAt = undefined;
  return new Error(`ferry-test: failure injected at ${phase}`);
}

/**
 * Passes fault point `phase`: returns at once unless it is the one to pause at; then waits
 * until `signal` aborts (and throws its reason), for the time set, or forever.
 */
export async function faultPoint(phase: FaultPhase, signal?: AbortSignal): Promise<void> {
  signal?.throwIfAborted();
  if (pauseAt !== phase) return;
  if (throwAt) throw injected(phase);
  writeSync(2, `ferry-test: paused at ${phase} (pid ${process.pid})\n`);
  await new Promise<void>((resolve, reject) => {
    const keepAlive = setInterval(() => {}, 1 << 30);
    const timer = pauseMs !== undefined ? setTimeout(() => {
      clearInterval(keepAlive);
      writeSync(2, `ferry-test: going on after ${phase} (pid ${process.pid})\n`);
      resolve();
    }, pauseMs) : undefined;
    signal?.addEventListener('abort', () => {
      clearInterval(keepAlive);
      clearTimeout(timer);
      reject(signal.reason);
    }, { once: true });
  });
}

/** Whether a synchronous fault point `phase` would pause or throw (so a caller may skip preparing one). */
export function faultArmed(phase: FaultPhase): boolean {
  return pauseAt === phase && !pausedSync;
}

/**
 * Passes fault point `phase` where ferry cannot wait asynchronously (inside a synchronous
 * hold): blocks the thread, the first time only, for the time set or until ferry is killed.
 * Signal handlers do not run meanwhile, so only SIGKILL (or the time) ends it.
 */
export function faultPointSync(phase: FaultPhase): void {
  if (pauseAt !== phase || pausedSync) return;
  if (throwAt) throw injected(phase);
  pausedSync = true;
  writeSync(2, `ferry-test: paused at ${phase} (pid ${process.pid})\n`);
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, pauseMs ?? Infinity);
  writeSync(2, `ferry-test: going on after ${phase} (pid ${process.pid})\n`);
}
