/**
 * pidfds of a real python3 tree through bin/ferry: a pidfd of a live child, of a zombie child,
 * of a child already reaped, and of the process itself (non-blocking) come back naming the
 * restored processes, and work: waitid(P_PIDFD) collects the zombie's status, a signal sent
 * through one kills the child, the reaped one signals nothing. A pidfd of a process outside
 * the tree is refused before anything changes, naming the pid, fd and process. An epoll
 * watching the four comes back reporting the same ones ready (the zombie's, the reaped one's),
 * then the live child's when it dies; --leave-running leaves them all working.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, needsKernel, PYTHON, ROOT, WORKLOADS } from '../helpers/env.js';
import { alive, checkpointFreed, cleanup, ferry, own, procState, verify, startWorkload, waitFor } from '../helpers/processes.js';

const skip = needs('root', 'build', 'python');
after(cleanup);

const SCRIPT = join(ROOT, 'test', 'fixtures', 'workloads', 'pidfds.py');

describe('pidfds', { skip, timeout: 300_000 }, () => {
  it('of a live child, a zombie child, a reaped child and itself: restored, and they work', async () => {
    const w = await startWorkload(PYTHON, [SCRIPT]);
    const [, child, zombie] = /alive=(\d+) zombie=(\d+)/.exec(w.text())!.map(Number);
    own(child!);
    await waitFor('ticks', () => w.ticks().length >= 3);
    const image = join(w.dir, 'pidfds.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image]);
    assert.equal(cp.code, 0, cp.stderr);
    await w.exited;
    await waitFor('the tree to be gone', () => !alive(w.pid) && !alive(child!) && !alive(zombie!));

    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    const n = w.ticks().length;
    await waitFor('ticks after restore', () => w.ticks().length >= n + 3);
    assert.equal(procState(zombie!).state, 'Z', 'the zombie is back, unreaped');
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('--leave-running leaves them as they were, and the epoll watching them, working', async () => {
    const w = await startWorkload(PYTHON, [SCRIPT]);
    const [, child, zombie] = /alive=(\d+) zombie=(\d+)/.exec(w.text())!.map(Number);
    own(child!);
    await waitFor('ticks', () => w.ticks().length >= 3);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0, 'not traced');
    assert.equal(procState(zombie!).state, 'Z', 'the zombie is left unreaped');
    const n = w.ticks().length;
    await waitFor('ticks after the checkpoint', () => w.ticks().length >= n + 3);
    assert.equal(await verify(w), 'PASS');
  });

  it('a pidfd of a process outside the tree is refused, and the tree runs on untouched', async () => {
    const outsider = spawn('/bin/sleep', ['600'], { stdio: 'ignore' });
    own(outsider.pid!);
    try {
      const w = await startWorkload(PYTHON, ['-c', [
        'import os, sys, time',
        'os.closerange(3, 4096)',
        `fd = os.pidfd_open(${outsider.pid})`,
        'print(f"ready pid={os.getpid()} fd={fd}", flush=True)',
        'while True:',
        '    print("tick", flush=True); time.sleep(0.05)',
      ].join('\n')]);
      const fd = Number(/fd=(\d+)/.exec(w.text())![1]);
      const r = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'never.tar')]);
      assert.equal(r.code, 1);
      assert.equal(r.stderr, `ferry checkpoint: unsupported file: pid ${w.pid} fd ${fd} -> anon_inode:[pidfd] (a pidfd of pid ${outsider.pid}, which is `
        + 'outside the checkpointed tree: restored, it would name another process; checkpoint the tree that holds that process, or close the descriptor)\n');
      assert.ok(alive(w.pid) && procState(w.pid).tracer === 0 && procState(w.pid).state !== 'T', 'runs on, untraced');
      const lines = w.text().length;
      await waitFor('it goes on', () => w.text().length > lines + 10);
    } finally {
      outsider.kill('SIGKILL');
    }
  });
});

describe('a pidfd from clone3(CLONE_PIDFD), used with pidfd_getfd', { skip: needs('root', 'build'), timeout: 120_000 }, () => {
  const CLONEPIDFD = join(WORKLOADS, 'clonepidfd');
  const childOf = (pid: number): number[] => readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').split(' ').filter(Boolean).map(Number);

  it('comes back naming the restored child: pidfd_getfd, pidfd_send_signal and waitid(P_PIDFD) work', async () => {
    const w = await startWorkload(CLONEPIDFD, []);
    const kids = childOf(w.pid);
    for (const k of kids) own(k);
    const image = join(w.dir, 'clonepidfd.tar');
    await checkpointFreed(w, image);
    await waitFor('the child to be gone', () => kids.every((k) => !alive(k)));
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.deepEqual(childOf(w.pid), kids, 'the same child');
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('--leave-running leaves them working', async () => {
    const w = await startWorkload(CLONEPIDFD, []);
    for (const k of childOf(w.pid)) own(k);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS', w.text());
  });
});

describe('pidfds of single threads (PIDFD_THREAD)', { skip: needs('root', 'build'), timeout: 120_000 }, () => {
  const THREADPIDFD = join(WORKLOADS, 'threadpidfd');
  /** PIDFD_THREAD came with Linux 6.9. */
  const skip = needsKernel(6, 9, 'PIDFD_THREAD');

  it('come back naming the same threads: flags, fdinfo, a signal through each runs in its thread, poll sees the thread exit', { skip }, async () => {
    const w = await startWorkload(THREADPIDFD, []);
    const image = join(w.dir, 'threadpidfd.tar');
    await checkpointFreed(w, image);
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('--leave-running leaves them working', { skip }, async () => {
    const w = await startWorkload(THREADPIDFD, []);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS', w.text());
  });
});
