/**
 * Pending signals (process-wide and per thread, with their siginfo and in order), itimers and
 * POSIX timers survive checkpoint and restore, and a stopped process comes back stopped. The
 * workload (test/fixtures/workloads/signals.c) checks every detail itself after restore.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, WORKLOADS } from '../helpers/env.js';
import {
  alive, checkpointFreed, cleanup, ferry, own, procState, sleep, startWorkload, verify, waitFor, type Workload,
} from '../helpers/processes.js';

after(cleanup);

const SIGNALS = join(WORKLOADS, 'signals');
const skip = needs('root', 'build') || (!existsSync(SIGNALS) && "needs build/workloads/signals ('npm run build')");

/**
 * What the kernel shows of a process's signals and timers, to compare before and after (not
 * SigQ: it counts the signals queued for the whole user).
 */
function signalState(pid: number): { pending: string[]; timers: string } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const pending = [...status.matchAll(/^(ShdPnd|SigIgn|SigCgt):.*$/gm)].map((m) => m[0]);
  for (const tid of tids(pid)) {
    const s = readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8');
    pending.push(`${tid} ${/^SigPnd:.*$/m.exec(s)![0]} ${/^SigBlk:.*$/m.exec(s)![0]}`);
  }
  return { pending, timers: readFileSync(`/proc/${pid}/timers`, 'utf8') };
}

const tids = (pid: number): number[] => readdirSync(`/proc/${pid}/task`).map(Number).sort((a, b) => a - b);

/** State letter of every thread. */
const threadStates = (pid: number): string[] =>
  tids(pid).map((tid) => readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8').replace(/^.*\) /s, '').charAt(0));

const verdicts = (w: Workload): string[] => w.text().split('\n').filter((l) => l === 'PASS' || l.startsWith('FAIL'));

/** Asks the workload to check itself (SIGUSR1) and returns the verdict lines of this run. */
async function verifyNow(w: Workload): Promise<string> {
  const before = verdicts(w).length;
  process.kill(w.pid, 'SIGUSR1');
  const done = (): boolean => verdicts(w).slice(before).includes('PASS') || !alive(w.pid) || procState(w.pid).state === 'Z';
  await waitFor(`pid ${w.pid} to verify itself`, done, 15000);
  await sleep(50); // the last FAIL lines
  return verdicts(w).slice(before).join('\n') || `no verdict; log:\n${w.text()}`;
}

/** Checkpoints (killing the process), waits until the pid is free, restores. */
async function cycle(w: Workload, image: string, first: boolean): Promise<void> {
  const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image]);
  assert.equal(cp.code, 0, `checkpoint failed: ${cp.stderr}`);
  if (first) await w.exited;
  await waitFor(`pid ${w.pid} to be free`, () => !alive(w.pid), 5000);
  const rs = ferry(['restore', '--image', image]);
  assert.equal(rs.code, 0, `restore failed: ${rs.stderr}`);
  own(w.pid);
}

describe('signals and timers', { skip, timeout: 120_000 }, () => {
  it('pending signals, itimers and POSIX timers survive three cycles', async () => {
    const w = await startWorkload(SIGNALS, []);
    await sleep(150); // let the 100 ms periodic timer fire into its blocked signal
    const before = signalState(w.pid);
    assert.match(before.timers, /notify: signal\/tid\./, 'a thread-directed timer exists');
    const image = join(w.dir, 'signals.tar');
    for (let i = 0; i < 3; i++) {
      await cycle(w, image, i === 0);
      assert.deepEqual(signalState(w.pid), before, `signal masks, queues and timers after cycle ${i + 1}`);
      for (const tid of tids(w.pid)) assert.equal(procState(tid).tracer, 0, `thread ${tid} not traced`);
      await sleep(100);
    }
    assert.equal(await verifyNow(w), 'PASS');
  });

  it('--leave-running keeps every pending signal and timer, and the image restores too', async () => {
    const w = await startWorkload(SIGNALS, []);
    await sleep(150);
    const before = signalState(w.pid);
    const image = join(w.dir, 'signals.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.deepEqual(signalState(w.pid), before, 'peeking and injecting dequeued nothing');
    assert.ok(threadStates(w.pid).every((s) => !'tT'.includes(s)), 'still running');
    assert.equal(await verifyNow(w), 'PASS', 'the original');
    await w.exited;
    await waitFor(`pid ${w.pid} to be free`, () => !alive(w.pid), 5000);
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.deepEqual(signalState(w.pid), before, 'the restored copy');
    assert.equal(await verifyNow(w), 'PASS', 'the restored copy');
  });

  it('a stopped process stays stopped after checkpoint and restore, and goes on with SIGCONT', async () => {
    const w = await startWorkload(SIGNALS, []);
    await sleep(150);
    process.kill(w.pid, 'SIGSTOP');
    await waitFor('every thread to stop', () => threadStates(w.pid).every((s) => s === 'T'));
    const before = signalState(w.pid);
    const image = join(w.dir, 'stopped.tar');

    const lr = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']);
    assert.equal(lr.code, 0, lr.stderr);
    await sleep(200);
    assert.deepEqual(threadStates(w.pid), ['T', 'T'], 'still stopped after --leave-running');
    assert.equal(procState(w.pid).tracer, 0);

    for (let i = 0; i < 2; i++) {
      await cycle(w, image, i === 0);
      await sleep(300);
      assert.deepEqual(threadStates(w.pid), ['T', 'T'], `stopped after restore ${i + 1}`);
      for (const tid of tids(w.pid)) assert.equal(procState(tid).tracer, 0, `thread ${tid} not traced`);
      assert.deepEqual(signalState(w.pid), before, `signal state after restore ${i + 1}`);
    }
    process.kill(w.pid, 'SIGCONT');
    await waitFor('the process to run again', () => threadStates(w.pid).every((s) => s !== 'T'));
    assert.equal(await verifyNow(w), 'PASS');
  });
});

describe('a program that single-steps itself with a SIGTRAP handler', { skip: needs('root', 'build'), timeout: 120_000 }, () => {
  const SINGLESTEP = join(WORKLOADS, 'singlestep');

  it('goes on stepping after checkpoint and restore, three cycles: no trap lost or made up', async () => {
    const w = await startWorkload(SINGLESTEP, []);
    const image = join(w.dir, 'step.tar');
    for (let i = 0; i < 3; i++) {
      await checkpointFreed(i === 0 ? w : { pid: w.pid, exited: Promise.resolve() }, image, `checkpoint ${i + 1}`);
      const rs = ferry(['restore', '--image', image]);
      assert.equal(rs.code, 0, rs.stderr);
      own(w.pid);
    }
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('--leave-running leaves it stepping', async () => {
    const w = await startWorkload(SINGLESTEP, []);
    for (let i = 0; i < 3; i++) {
      const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
      assert.equal(cp.code, 0, cp.stderr);
      assert.equal(procState(w.pid).tracer, 0, 'not traced');
    }
    assert.equal(await verify(w), 'PASS', w.text());
  });
});

// Restore's injected calls are single-stepped, and the kernel resets an ignored SIGTRAP to
// SIG_DFL when it reports a step (restore/ignored-trap.ts): its last calls go otherwise.
describe('a process that ignores SIGTRAP', { skip: needs('root'), timeout: 120_000 }, () => {
  const mask = (pid: number, field: string): bigint => BigInt(`0x${new RegExp(`^${field}:\\s*([0-9a-f]+)$`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]}`);
  const TRAP = 1n << 4n;

  it('still ignores it after checkpoint and restore, two cycles, and after --leave-running; a SIGTRAP then does nothing', async () => {
    // sh keeps SIG_IGN across its exec; two threads' worth of state is not needed here.
    const w = await startWorkload('/bin/sh', ['-c', 'trap "" TRAP; echo "ready pid=$$"; exec sleep 1000']);
    await waitFor('the exec of sleep', () => readFileSync(`/proc/${w.pid}/comm`, 'utf8').trim() === 'sleep');
    assert.equal(mask(w.pid, 'SigIgn') & TRAP, TRAP, 'ignored before');
    const before = signalState(w.pid);
    const image = join(w.dir, 'trap.tar');
    const lr = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']);
    assert.equal(lr.code, 0, lr.stderr);
    assert.deepEqual(signalState(w.pid), before, 'after --leave-running');
    for (let i = 0; i < 2; i++) {
      await cycle(w, image, i === 0);
      assert.deepEqual(signalState(w.pid), before, `dispositions and masks after restore ${i + 1}`);
      assert.equal(procState(w.pid).tracer, 0, 'not traced');
    }
    process.kill(w.pid, 'SIGTRAP');
    await sleep(200);
    assert.ok(alive(w.pid) && procState(w.pid).state !== 'Z', 'a SIGTRAP is ignored, as before');
    process.kill(w.pid, 'SIGKILL');
  });
});
