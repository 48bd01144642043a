/**
 * Multi-threaded processes: every thread comes back with its TID, registers, mask, altstack,
 * name and TLS, and threads parked in futex, nanosleep and poll waits go on.
 */
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, WORKLOADS } from '../helpers/env.js';
import { cleanup, cycleThrough, ferry, procState, startWorkload, verify } from '../helpers/processes.js';

after(cleanup);

const tids = (pid: number): number[] => readdirSync(`/proc/${pid}/task`).map(Number).sort((a, b) => a - b);

describe('threads', { skip: needs('root', 'build'), timeout: 180_000 }, () => {
  it('a process with 64 threads survives two cycles with every TID', async () => {
    const w = await startWorkload(join(WORKLOADS, 'threads'), ['64']);
    const before = tids(w.pid);
    assert.equal(before.length, 65);
    const image = join(w.dir, 'threads.tar');
    for (let i = 0; i < 2; i++) {
      await cycleThrough(w, image, i);
      assert.deepEqual(tids(w.pid), before, 'same thread ids');
      for (const tid of before) assert.equal(procState(tid).tracer, 0, `thread ${tid} not traced`);
    }
    assert.equal(await verify(w), 'PASS');
  });

  it('--leave-running on a threaded process leaves every thread running', async () => {
    const w = await startWorkload(join(WORKLOADS, 'threads'), ['16']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 't.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    for (const tid of tids(w.pid)) {
      const st = procState(tid);
      assert.equal(st.tracer, 0);
      assert.ok(!'tT'.includes(st.state), `thread ${tid} not stopped`);
    }
    assert.equal(await verify(w), 'PASS');
  });
});
