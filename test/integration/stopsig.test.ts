/**
 * Job-control stops through bin/ferry (src/restore/stop-signal.ts): build/workloads/stopsig
 * has four children, each in a process group of its own in its session, stopped by SIGTSTP,
 * SIGTTIN, SIGTTOU and SIGSTOP; the root checks that each is stopped and that waitid reports
 * the signal that stopped it. Through checkpoint + restore and --leave-running, and the image
 * records the three job-control signals.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import type { TaskRecord } from '../../src/image/records.js';
import { needs, WORKLOADS } from '../helpers/env.js';
import { editImage, json } from '../helpers/images.js';
import { alive, checkpointFreed, cleanup, ferry, own, procState, startWorkload, verify, waitFor } from '../helpers/processes.js';

const skip = needs('root', 'build');
after(cleanup);

const STOPSIG = join(WORKLOADS, 'stopsig');
const children = (pid: number): number[] =>
  readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').split(' ').filter(Boolean).map(Number);

describe('stop signals', { skip, timeout: 120_000 }, () => {
  it('children stopped by SIGTSTP, SIGTTIN, SIGTTOU and SIGSTOP come back stopped by the same signal', async () => {
    const w = await startWorkload(STOPSIG, []);
    const kids = children(w.pid);
    assert.equal(kids.length, 4);
    for (const k of kids) own(k);
    const image = join(w.dir, 'stopsig.tar');
    await checkpointFreed(w, image);
    await waitFor('the children\'s pids to be free', () => kids.every((k) => !alive(k)), 8000);
    // What the image says: the signal of each job-control stop, nothing for SIGSTOP.
    const seen: Array<number | undefined> = [];
    await editImage(image, join(w.dir, 'copy.tar'), [[/^tasks\/\d+\/task\.json$/, json<TaskRecord>((t) => { if (t.stopped) seen.push(t.stopSignal); })]]);
    assert.deepEqual(seen.sort(), [20, 21, 22, undefined]);
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    for (const k of kids) assert.equal(procState(k).state, 'T', `child ${k} stopped`);
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('--leave-running leaves each stopped by its own signal', async () => {
    const w = await startWorkload(STOPSIG, []);
    for (const k of children(w.pid)) own(k);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('refuses a stop signal other than SIGTSTP, SIGTTIN, SIGTTOU, or on a process that was not stopped', async () => {
    const w = await startWorkload(STOPSIG, []);
    const kids = children(w.pid);
    for (const k of kids) own(k);
    const image = join(w.dir, 'stopsig.tar');
    await checkpointFreed(w, image);
    await waitFor('the children\'s pids to be free', () => kids.every((k) => !alive(k)), 8000);
    const cases: Array<[string, (t: TaskRecord) => void, RegExp]> = [
      ['kill', (t) => { if (t.stopped) t.stopSignal = 9; }, /stopSignal must be an integer from 20 to 22, is 9/],
      ['running', (t) => { if (!t.stopped) t.stopSignal = 20; }, /stopSignal is 20 but the process is not stopped/],
    ];
    for (const [name, edit, message] of cases) {
      const edited = join(w.dir, `${name}.tar`);
      await editImage(image, edited, [[/^tasks\/\d+\/task\.json$/, json<TaskRecord>(edit)]]);
      const rs = ferry(['restore', '--image', edited]);
      assert.equal(rs.code, 1, name);
      assert.match(rs.stderr, message, name);
      assert.equal(rs.stderr.split('\n').length, 2, 'one line');
      assert.ok(!alive(w.pid), 'nothing made');
    }
  });
});
