/**
 * Real trees from real tools: a shell pipeline (sh with subshells, pipes and a `sleep` forked
 * every tick) and python3 with threads and multiprocessing children talking over a pipe.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, PYTHON, ROOT } from '../helpers/env.js';
import { alive, cleanup, ferry, own, startWorkload, verify, waitFor, type Workload } from '../helpers/processes.js';

after(cleanup);
const SCRIPTS = join(ROOT, 'test', 'fixtures', 'scripts');

/** Pids of the tree under `pid`, from /proc (run before the checkpoint, to wait for them after). */
async function treePids(pid: number): Promise<number[]> {
  const { readFileSync, readdirSync } = await import('node:fs');
  const out: number[] = [];
  const visit = (p: number): void => {
    out.push(p);
    for (const tid of readdirSync(`/proc/${p}/task`)) {
      readFileSync(`/proc/${p}/task/${tid}/children`, 'utf8').split(' ').filter(Boolean).map(Number).forEach(visit);
    }
  };
  visit(pid);
  return out;
}

/** Checkpoints the tree of `w` (killing it), waits until its pids are free, restores it. */
async function cycle(w: Workload, image: string, first: boolean): Promise<void> {
  const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--json']);
  assert.equal(cp.code, 0, cp.stderr);
  const pids = (JSON.parse(cp.stdout.toString()) as { pids: number[] }).pids;
  assert.ok(pids.length >= 3, `a tree: ${pids.join(' ')}`);
  pids.forEach(own);
  if (first) await w.exited;
  await waitFor('the pids of the tree to be free', () => pids.every((p) => !alive(p)), 8000);
  const rs = ferry(['restore', '--image', image]);
  assert.equal(rs.code, 0, rs.stderr);
}

/** The ticks so far are 1..N without a gap, and more keep coming. */
async function ticksGoOn(w: Workload): Promise<void> {
  const n = w.ticks().length;
  await waitFor('more ticks', () => w.ticks().length >= n + 3);
  const all = w.ticks();
  assert.deepEqual(all, all.map((_, i) => i + 1), 'every tick once, in order');
}

describe('real trees', { skip: needs('root', 'build'), timeout: 180_000 }, () => {
  it('a shell pipeline with subshells survives three cycles', async () => {
    const w = await startWorkload('/bin/sh', [join(SCRIPTS, 'pipeline.sh')]);
    (await treePids(w.pid)).forEach(own);
    await waitFor('ticks', () => w.ticks().length >= 3);
    for (let i = 0; i < 3; i++) {
      await cycle(w, join(w.dir, 'sh.tar'), i === 0);
      await ticksGoOn(w);
    }
    assert.equal(await verify(w), 'PASS');
  });

  it('a shell pipeline keeps running under --leave-running', async () => {
    const w = await startWorkload('/bin/sh', [join(SCRIPTS, 'pipeline.sh')]);
    (await treePids(w.pid)).forEach(own);
    await waitFor('ticks', () => w.ticks().length >= 3);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'sh.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    await ticksGoOn(w);
    assert.equal(await verify(w), 'PASS');
  });

  it('python3 with threads and multiprocessing children survives three cycles', { skip: needs('python') }, async () => {
    const w = await startWorkload(PYTHON, [join(SCRIPTS, 'threads_procs.py')]);
    (await treePids(w.pid)).forEach(own);
    await waitFor('ticks', () => w.ticks().length >= 3);
    for (let i = 0; i < 3; i++) {
      await cycle(w, join(w.dir, 'py.tar'), i === 0);
      await ticksGoOn(w);
    }
    assert.equal(await verify(w), 'PASS');
  });
});
