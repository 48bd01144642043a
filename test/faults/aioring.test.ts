/**
 * Fault cells of a checkpoint reading a process's io_setup(2) completion rings while the tree is
 * stopped (src/dump/memory.ts readAioRings; build/workloads/aioring, two contexts with events
 * not reaped yet). Ferry is SIGKILLed there (FERRY_TEST_PAUSE_AT=aioring, a synchronous pause:
 * the first ring probed as the process's own, its header not read yet), and a read of the ring
 * fails there (`aioring!`): either way the workload runs on, untraced and not stopped, and its
 * own check passes: each context id still its ring's address, io_getevents(2) returns exactly
 * the events it had not reaped, new requests submit and complete, io_destroy(2) succeeds. No
 * image is left (after SIGKILL a stale temporary file is allowed, as in every checkpoint cell).
 */
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, WORKLOADS } from '../helpers/env.js';
import { cleanup, ferry, startWorkload, verify, waitFor, type Workload } from '../helpers/processes.js';
import { checkLines, hit, shown, status, whilePaused, type Problems } from './helpers.js';

const skip = needs('root', 'build');
after(cleanup);

const AIORING = join(WORKLOADS, 'aioring');

/** The workload runs: alive, untraced, not stopped (given the kernel's detach a moment). */
async function running(w: Workload): Promise<void> {
  const settled = (): boolean => { const st = status(w.pid); return st !== undefined && st.tracer === 0 && !'tTZX'.includes(st.state); };
  await waitFor(`pid ${w.pid} to run untraced`, settled, 3000, () => shown(status(w.pid)));
}

describe('fault cells: a checkpoint hit while it reads the io_setup(2) rings of a stopped tree', { skip, timeout: 120_000 }, () => {
  it('SIGKILL at aioring: the workload runs on untraced, its contexts usable, its unreaped events all there', async () => {
    const w = await startWorkload(AIORING, ['DIR']);
    const images = join(w.dir, 'images');
    mkdirSync(images);
    const p: Problems = [];
    await whilePaused(p, ['checkpoint', '--pid', String(w.pid), '--image', join(images, 'aio.tar')], 'aioring', async (run) => {
      // Paused inside the stopped tree's reading: the workload is ferry's, stopped.
      const st = status(w.pid);
      assert.equal(st?.tracer, run.pid, 'traced by the paused ferry');
      assert.ok(st !== undefined && 't'.includes(st.state), `stopped while its rings are read: ${shown(st)}`);
      const r = await hit(run, 'SIGKILL', p);
      assert.equal(r.signal, 'SIGKILL');
    });
    assert.deepEqual(p, []);
    await running(w);
    assert.ok(!readdirSync(images).includes('aio.tar'), 'no image in place');
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('a ring\'s read failing (injected): one line naming the pid and the ring, the workload runs on with its contexts usable', async () => {
    const w = await startWorkload(AIORING, ['DIR']);
    const images = join(w.dir, 'images');
    mkdirSync(images);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(images, 'aio.tar')], { env: { FERRY_TEST_PAUSE_AT: 'aioring!' } });
    assert.equal(cp.code, 1, cp.stderr);
    const p: Problems = [];
    checkLines(p, cp.stderr, 1);
    assert.deepEqual(p, []);
    assert.match(cp.stderr, new RegExp(`pid ${w.pid}: cannot read the io_setup\\(2\\) completion ring at 0x[0-9a-f]+-0x[0-9a-f]+ \\(/\\[aio\\]\\): `
      + 'ferry-test: failure injected at aioring'));
    await running(w);
    assert.deepEqual(readdirSync(images), [], 'nothing left where the image was to go');
    assert.equal(await verify(w), 'PASS', w.text());
  });
});
