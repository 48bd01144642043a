/**
 * Interrupted system calls come back from restore as the kernel would bring them back
 * (docs/architecture.md, "Interrupted system calls"): a signal that arrives at any moment
 * after restore has the effect it would have had on the original (EINTR, or a restart under
 * SA_RESTART where the call allows it), a call left alone goes on blocking, and a relative
 * sleep sleeps only the time it had left. The workload (test/fixtures/workloads/restart.c)
 * blocks in one call and logs how each return came back.
 *
 * Checkpoint and restore run in this process through the library, so 1,000 restore-then-signal
 * trials fit in well under a minute: a process of 50 threads in pause() is restored 20 times
 * and every thread is signalled in a tight loop the moment restore lets it go. Sent any later
 * (after restore's own settling time), the signals would miss the window in which the old
 * restore, which rewound rip itself, lost them; sent this way they caught it within a dozen
 * restores.
 */
import assert from 'node:assert/strict';
import { closeSync, existsSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { connect } from 'node:net';
import { constants as osConstants, tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import pino from 'pino';
import { loadConfig } from '../../src/config/config.js';
import { checkpoint, restore } from '../../src/index.js';
import { native } from '../../src/native/binding.js';
import { needs, WORKLOADS } from '../helpers/env.js';
import { alive, cleanup, own, sleep, startWorkload, waitFor, type Workload } from '../helpers/processes.js';

const RESTART = join(WORKLOADS, 'restart');
const skip = needs('root', 'build') || (!existsSync(RESTART) && "needs build/workloads/restart ('npm run build')");

// Images on tmpfs when there is one: each image is fsynced, and the tests write over 40 of them.
const imageDir = mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'ferry-restart-'));
after(() => {
  cleanup();
  rmSync(imageDir, { recursive: true, force: true });
});

const config = loadConfig({});
const SIGUSR2 = osConstants.signals.SIGUSR2, SYS_PAUSE = 34;
const logger = pino({ level: 'silent' });

/** One "woke" line of the workload. */
interface Woke {
  pid: number;
  tid: number;
  n: number;
  call: string;
  ret: number;
  errno: string;
  usr2: number;
  usr1: number;
  remMs?: number;
  maskOk?: number;
}

const WOKE = /^woke pid=(\d+) tid=(\d+) n=(\d+) call=(\S+) ret=(-?\d+) errno=(\S+) usr2=(\d+) usr1=(\d+)(?: rem_ms=(-?\d+))?(?: mask_ok=(\d))?$/gm;

function wokeLines(w: Workload): Woke[] {
  return [...w.text().matchAll(WOKE)].map((m) => ({
    pid: Number(m[1]), tid: Number(m[2]), n: Number(m[3]), call: m[4]!, ret: Number(m[5]), errno: m[6]!,
    usr2: Number(m[7]), usr1: Number(m[8]),
    ...(m[9] === undefined ? {} : { remMs: Number(m[9]) }),
    ...(m[10] === undefined ? {} : { maskOk: Number(m[10]) }),
  }));
}

/** The first n "woke" lines, waited for (a lost wakeup times out here instead of hanging). */
async function nextWoke(w: Workload & { mode?: string }, count = 1, timeoutMs = 5000): Promise<Woke[]> {
  await waitFor(`pid ${w.pid} (${w.mode ?? '?'}, ${readStatus(w.pid)}) to return from its call (log:\n${w.text()})`, () => wokeLines(w).length >= count, timeoutMs);
  return wokeLines(w).slice(0, count);
}

/**
 * Whether every thread of `pid` sleeps inside a syscall (/proc/TID/syscall shows its number;
 * "running" while it runs), and in syscall `nr` when given.
 */
function blocked(pid: number, nr?: number): boolean {
  try {
    const dir = `/proc/${pid}/task`;
    const all = readdirSync(dir);
    return all.length > 0 && all.every((tid) => {
      const at = readFileSync(`${dir}/${tid}/syscall`, 'utf8').split(' ')[0]!;
      return nr === undefined ? /^\d+$/.test(at) : at === String(nr);
    });
  } catch {
    return false;
  }
}

/** Whether `pid` exists, is not a zombie and has no tracer: restore has let it go. */
function letGo(pid: number): boolean {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    return /^TracerPid:\s+0$/m.test(status) && !/^State:\s+Z/m.test(status);
  } catch {
    return false;
  }
}

/**
 * Checkpoints the tree of `pid` (killing it) and restores it. `onLetGo` runs the moment restore
 * lets the tree go: the event loop is polled while restore runs, and restore yields between
 * letting go and resolving (it watches the tree for a moment), so it runs within microseconds
 * of the last detach rather than after that watch; at the latest when restore resolves.
 * A restored root is this process's child: its zombie is ours to reap (`ourChild`); the one
 * startWorkload spawned is reaped by Node.
 */
async function cycle(pid: number, image: string, ourChild: boolean, onLetGo?: () => void): Promise<void> {
  await checkpoint({ pid, image, leaveRunning: false, config, logger });
  if (ourChild) native().waitpid(pid);
  await waitFor(`pid ${pid} to be free`, () => !alive(pid), 5000);
  let fired = !onLetGo;
  const fire = (): void => {
    if (fired) return;
    fired = true;
    onLetGo!();
  };
  let polling = true;
  const poll = (): void => {
    if (!polling || fired) return;
    if (letGo(pid)) fire();
    else setImmediate(poll);
  };
  setImmediate(poll);
  try {
    const rs = await restore({ image, config, logger });
    for (const p of rs.pids) own(p);
  } finally {
    polling = false;
  }
  fire();
}

/** State, signal masks and pending sets of `pid` (for a failure message). */
function readStatus(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').filter((l) => /^(State|TracerPid|SigPnd|ShdPnd|SigBlk|SigCgt)/.test(l)).join(' ').replace(/\s+/g, ' ');
  } catch {
    return 'gone';
  }
}

/** Starts the workload and waits until it blocks in its call. */
async function start(args: string[]): Promise<Workload & { mode?: string }> {
  const w: Workload & { mode?: string } = await startWorkload(RESTART, args);
  w.mode = args.join(' ');
  await waitFor(`pid ${w.pid} to block in its call`, () => blocked(w.pid));
  return w;
}

/** Checkpoints and restores a workload started by start(), once. */
const checkpointRestore = (w: Workload, name: string): Promise<void> => cycle(w.pid, join(imageDir, `${name}.tar`), false);

const ready = (w: Workload, key: string): number => Number(new RegExp(`^ready .*\\b${key}=(\\d+)`, 'm').exec(w.text())![1]);

/** What a call interrupted by a handler (no SA_RESTART, or a call SA_RESTART does not restart) returns. */
const eintr = { ret: -1, errno: 'EINTR', usr2: 1, usr1: 0 };
const pick = (x: Woke): Partial<Woke> => ({ ret: x.ret, errno: x.errno, usr2: x.usr2, usr1: x.usr1 });

/** Modes whose call stays blocked until a signal or its event, restored as they were. */
const RESTARTED = ['pause', 'sigsuspend', 'nanosleep', 'clock_nanosleep', 'clock_nanosleep_abs', 'poll_inf', 'select',
  'futex', 'futex_abs', 'read', 'accept'];
/**
 * Modes that come back with EINTR and no signal: epoll_wait fails with EINTR when the checkpoint
 * stops it (the kernel's own behaviour, on the original too); poll and FUTEX_WAIT with a relative
 * timeout lose their time left (their restart block is not carried), so they fail with EINTR.
 */
const FAIL_EINTR = ['epoll_wait', 'poll', 'futex_rel'];

describe('interrupted system calls', { skip }, () => {
  it('a signal sent the moment restore lets go interrupts each call as it would the original', { timeout: 120000 }, async () => {
    for (const mode of [...RESTARTED, ...FAIL_EINTR]) {
      const w = await start([mode]);
      await cycle(w.pid, join(imageDir, `${mode}.tar`), false, () => process.kill(w.pid, 'SIGUSR2'));
      if (FAIL_EINTR.includes(mode)) {
        // EINTR at once, whether the handler ran before that return or runs after it.
        const [first] = await nextWoke(w);
        assert.deepEqual([first!.ret, first!.errno], [-1, 'EINTR'], `${mode}: ${w.text()}`);
        continue;
      }
      const [first] = await nextWoke(w);
      assert.deepEqual(pick(first!), eintr, `${mode}: ${w.text()}`);
      if (mode === 'sigsuspend') assert.equal(first!.maskOk, 1, 'sigsuspend put the mask back (SIGUSR2 blocked again)');
      if (mode === 'nanosleep' || mode === 'clock_nanosleep') {
        assert.ok(first!.remMs! > 3_500_000 && first!.remMs! < 3_600_000, `${mode}: the time left in rem: ${first!.remMs}`);
      }
    }
  });

  it('with SA_RESTART, read, accept and futex restart after the handler; pause and sigsuspend still fail', { timeout: 60000 }, async () => {
    for (const mode of ['read', 'accept', 'futex', 'pause', 'sigsuspend']) {
      const w = await start([mode, 'restart']);
      await cycle(w.pid, join(imageDir, `${mode}-restart.tar`), false, () => process.kill(w.pid, 'SIGUSR2'));
      if (mode === 'pause' || mode === 'sigsuspend') { // ERESTARTNOHAND: EINTR whatever SA_RESTART says
        assert.deepEqual(pick((await nextWoke(w))[0]!), eintr, `${mode}: ${w.text()}`);
        continue;
      }
      // The handler runs and the call goes on: no return until its event comes.
      await sleep(200);
      assert.deepEqual(wokeLines(w), [], `${mode} restarted`);
      if (mode === 'read') {
        const fd = openSync(`/proc/${w.pid}/fd/${ready(w, 'wfd')}`, 'w');
        writeSync(fd, 'x');
        closeSync(fd);
      } else if (mode === 'accept') {
        const sk = connect(ready(w, 'port'), '127.0.0.1');
        await new Promise<void>((resolve, reject) => sk.once('connect', resolve).once('error', reject));
        sk.destroy();
      } else {
        process.kill(w.pid, 'SIGUSR1'); // no SA_RESTART on SIGUSR1
      }
      const [woke] = await nextWoke(w);
      if (mode === 'read') assert.deepEqual(pick(woke!), { ret: 1, errno: '0', usr2: 1, usr1: 0 }, w.text());
      if (mode === 'accept') assert.deepEqual([woke!.ret >= 0, woke!.errno, woke!.usr2], [true, '0', 1], w.text());
      if (mode === 'futex') assert.deepEqual(pick(woke!), { ret: -1, errno: 'EINTR', usr2: 1, usr1: 1 }, w.text());
    }
  });

  it('without a signal each call goes on blocking, except those documented to fail with EINTR', { timeout: 120000 }, async () => {
    for (const mode of [...RESTARTED, ...FAIL_EINTR]) {
      const w = await start([mode]);
      await checkpointRestore(w, `${mode}-quiet`);
      if (FAIL_EINTR.includes(mode)) {
        assert.deepEqual(pick((await nextWoke(w))[0]!), { ret: -1, errno: 'EINTR', usr2: 0, usr1: 0 }, `${mode}: ${w.text()}`);
        continue;
      }
      await sleep(300);
      assert.deepEqual(wokeLines(w), [], `${mode} still blocked`);
      assert.ok(blocked(w.pid), `${mode} sleeps in a syscall`);
      // The kernel restarted it: a signal now interrupts the restarted call.
      process.kill(w.pid, 'SIGUSR2');
      assert.deepEqual(pick((await nextWoke(w))[0]!), eintr, `${mode} after the restart: ${w.text()}`);
    }
  });

  it('a 3 s sleep checkpointed after 1 s sleeps only the time left after restore, in every thread', { timeout: 60000 }, async () => {
    for (const mode of ['nanosleep', 'clock_nanosleep']) {
      const w = await start([mode, 'ms=3000', 'threads=2']);
      const began = performance.now(); // within a few ms of the calls
      await sleep(1000 - (performance.now() - began));
      const left = 3000 - (performance.now() - began);
      await checkpointRestore(w, `${mode}-left`);
      const restored = performance.now();
      const woke = await nextWoke(w, 2, 6000);
      const slept = performance.now() - restored;
      for (const x of woke) assert.deepEqual([x.ret, x.errno, x.usr2], [0, '0', 0], `${mode}: ${w.text()}`);
      assert.equal(new Set(woke.map((x) => x.tid)).size, 2, 'both threads');
      // The sleep resumes during restore (a few ms before it returns); 20 ms polling. Restarted
      // from the start, it would sleep 3 s.
      assert.ok(slept > left - 400 && slept < left + 500, `${mode}: slept ${slept.toFixed(0)} ms after restore, ${left.toFixed(0)} ms were left`);
    }
  });

  it('1,000 restored threads, each signalled the moment restore lets go, lose no wakeup', { timeout: 300000 }, async () => {
    // One process of 50 threads in pause(), restored 20 times, each thread woken with its own
    // tgkill, the last ones let go first (restore detaches the threads in order, then the
    // leader). Threads rather than processes: killing a tree hands its children to init, which
    // may take seconds to reap them; a thread goes through the same let-go as a process.
    const THREADS = 50, CYCLES = 20;
    const w = await startWorkload(RESTART, ['pause', `threads=${THREADS}`]);
    const tids = (): number[] => readdirSync(`/proc/${w.pid}/task`).map(Number).sort((a, b) => a - b);
    const before = tids();
    assert.equal(before.length, THREADS);
    const image = join(imageDir, 'threads.tar');
    const t0 = performance.now();
    let trials = 0;
    for (let c = 1; c <= CYCLES; c++) {
      // Every thread back in pause() first: a signal before it calls pause() is lost by the
      // workload itself, on any kernel.
      await waitFor('every thread to block in pause()', () => blocked(w.pid, SYS_PAUSE));
      let now: number[] = [];
      await cycle(w.pid, image, c > 1, () => {
        now = tids();
        for (const tid of [now[0]!, ...now.slice(1).reverse()]) native().tgkill(w.pid, tid, SIGUSR2);
      });
      trials += now.length;
      assert.deepEqual(now, before, 'the restored threads');
      const woke = (tid: number): Woke | undefined => wokeLines(w).find((x) => x.tid === tid && x.n === c);
      try {
        await waitFor(`cycle ${c}: every thread to wake`, () => now.every((tid) => woke(tid) !== undefined), 5000);
      } catch {
        const lost = now.filter((tid) => !woke(tid));
        assert.fail(`cycle ${c}: ${lost.length} lost wakeups (tids ${lost.join(',')}) after ${trials - now.length} good trials`);
      }
      for (const tid of now) assert.deepEqual(pick(woke(tid)!), eintr, `tid ${tid}, cycle ${c}`);
    }
    assert.equal(trials, 1000);
    const seconds = (performance.now() - t0) / 1000;
    process.stderr.write(`# ${trials} restore-then-signal trials in ${seconds.toFixed(1)} s\n`);
  });
});
