/**
 * rseq(2) critical sections (src/dump/task-state.ts abortRseqSection): a thread a checkpoint
 * stops inside one goes on through the section's abort handler, as after any preemption, and
 * never commits a section that was stopped. The workload (test/fixtures/workloads/rseqcs.c)
 * spends its time inside a section of about 100 ms and fails on a commit slower than 1 s; the
 * checkpoint holds the tree 1.5 s (FERRY_TEST_PAUSE_AT=dumped+1500), so that a section the
 * stop fell in and that still committed is seen. (Before the fix ferry's first injection moved
 * rip out of the section, the kernel then cleared rseq_cs, and the section ran on to its
 * commit when the thread was let go or restored.)
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, WORKLOADS } from '../helpers/env.js';
import { alive, cleanup, ferry, own, procState, sleep, startWorkload, verify, waitFor } from '../helpers/processes.js';
import { exitOf, killFerries, startFerry } from '../helpers/precopy-run.js';

const RSEQCS = join(WORKLOADS, 'rseqcs');
const skip = needs('root', 'build') || (!existsSync(RSEQCS) && "needs build/workloads/rseqcs ('npm run build')");
after(() => { killFerries(); cleanup(); });

const HOLD = { FERRY_TEST_PAUSE_AT: 'dumped+1500' };
/** The workload's tries so far, each "commit ms=N" or "abort ms=N". */
const tries = (text: string): string[] => text.match(/^(commit|abort) ms=\d+$/gm) ?? [];

describe('rseq critical sections', { skip, timeout: 120_000 }, () => {
  it('a thread stopped inside a section goes on through its abort handler (--leave-running, the tree held 1.5 s)', async () => {
    const w = await startWorkload(RSEQCS, []);
    for (let i = 0; i < 2; i++) {
      const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, `image${i}`), '--leave-running'], { env: HOLD });
      assert.equal(cp.code, 0, cp.stderr);
      const n = tries(w.text()).length;
      await waitFor('the thread to try again', () => tries(w.text()).length >= n + 2);
    }
    // The tries the stops fell in: aborted after the 1.5 s.
    const held = tries(w.text()).filter((t) => Number(t.split('=')[1]) >= 1500);
    assert.ok(held.length >= 1 && held.every((t) => t.startsWith('abort')), `the sections the stops fell in: ${held.join(', ')}`);
    assert.equal(await verify(w), 'PASS', w.text().slice(-600));
  });

  it('ferry SIGKILLed after the abort (held 1.5 s at dumped): the thread runs on from its abort handler, untraced', async () => {
    const w = await startWorkload(RSEQCS, []);
    const run = startFerry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'killed'), '--leave-running'], 'dumped');
    await waitFor('ferry to pause with every task read', () => /paused at dumped/.test(run.stderr()), 30_000, () => run.stderr());
    await sleep(1500);
    const n = tries(w.text()).length;
    run.child.kill('SIGKILL');
    assert.equal(await exitOf(run, 'ferry checkpoint'), 137);
    await waitFor('the thread to try again', () => tries(w.text()).length >= n + 2);
    assert.match(tries(w.text())[n]!, /^abort ms=\d+$/, tries(w.text()).slice(n).join(', '));
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS', w.text().slice(-600));
  });

  it('a thread checkpointed inside a section is restored at its abort handler', async () => {
    const w = await startWorkload(RSEQCS, []);
    const image = join(w.dir, 'image');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image], { env: HOLD });
    assert.equal(cp.code, 0, cp.stderr);
    await w.exited;
    await waitFor(`pid ${w.pid} to be free`, () => !alive(w.pid));
    const n = tries(w.text()).length;
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    await waitFor('the restored thread to try again', () => tries(w.text()).length >= n + 2);
    // Its first try, the one the checkpoint stopped, ends in the abort handler.
    assert.match(tries(w.text())[n]!, /^abort ms=\d+$/, tries(w.text()).slice(n).join(', '));
    assert.equal(await verify(w), 'PASS', w.text().slice(-600));
  });
});
