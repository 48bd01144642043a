/**
 * Pipes and FIFOs through bin/ferry: build/workloads/pipes holds pipes in every state (both
 * ends, one end, dup'd, non-blocking, raised capacity, packets, FIFOs with data) and checks
 * them itself after restore.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, WORKLOADS } from '../helpers/env.js';
import { alive, cleanup, cycleThrough, ferry, own, procState, sleep, startWorkload, verify } from '../helpers/processes.js';

const skip = needs('root', 'build');
after(cleanup);

interface Inspected {
  tasks: Array<{ fds: Array<{ fd: number; kind: string; target: string; sharedWith: string[] }> }>;
}

describe('pipes and FIFOs', { skip, timeout: 120_000 }, () => {
  it('come back with their data, capacity and flags, three cycles in a row', async () => {
    const w = await startWorkload(join(WORKLOADS, 'pipes'), ['DIR']);
    const image = join(w.dir, 'pipes.tar');
    for (let i = 0; i < 3; i++) {
      await sleep(100);
      await cycleThrough(w, image, i);
      assert.ok(alive(w.pid), 'restored process runs');
    }
    await sleep(100);
    assert.equal(await verify(w), 'PASS');
  });

  it('--leave-running consumes nothing: the original still has its data, and so does the image', async () => {
    const w = await startWorkload(join(WORKLOADS, 'pipes'), ['DIR']);
    const image = join(w.dir, 'pipes.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.ok(alive(w.pid));
    assert.equal(procState(w.pid).tracer, 0, 'detached');
    assert.equal(await verify(w), 'PASS', 'the original kept every byte');
    await w.exited;
    const w2 = { ...w, text: () => readFileSync(w.log, 'utf8').split('PASS\n').slice(1).join('PASS\n') };
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    await sleep(100);
    assert.equal(await verify(w2), 'PASS', 'the restored copy has them too');
  });

  it('inspect shows one open file per end, the dup as shared', async () => {
    const w = await startWorkload(join(WORKLOADS, 'pipes'), ['DIR']);
    const image = join(w.dir, 'pipes.tar');
    assert.equal(ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']).code, 0);
    const r = ferry(['inspect', '--image', image, '--json']);
    assert.equal(r.code, 0, r.stderr);
    const fds = (JSON.parse(r.stdout.toString()) as Inspected).tasks[0]!.fds;
    const pipes = fds.filter((f) => f.kind === 'pipe');
    const fifos = fds.filter((f) => f.kind === 'fifo');
    // A (3 fds), B, C, D, E, P, H (3), I, T: 17 pipe descriptors; F (2) and G: 3 FIFO descriptors.
    assert.equal(pipes.length, 17, JSON.stringify(fds));
    assert.equal(fifos.length, 3, JSON.stringify(fds));
    assert.equal(pipes.filter((f) => f.sharedWith.length === 1).length, 2, 'the dup pair of pipe A');
    assert.ok(fifos.every((f) => f.target.startsWith(w.dir)));
  });
});
