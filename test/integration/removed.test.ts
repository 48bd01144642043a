/**
 * A FIFO (with queued bytes, both ends open) and a directory held open after their names were
 * removed, through bin/ferry: build/workloads/removed checks after restore that both are
 * still removed, with their links, data, mode and owner, and that no name came back.
 */
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, WORKLOADS } from '../helpers/env.js';
import { checkpointFreed, cleanup, ferry, own, procState, startWorkload, verify } from '../helpers/processes.js';

const skip = needs('root', 'build');
after(cleanup);

const REMOVED = join(WORKLOADS, 'removed');

describe('removed FIFOs and directories held open', { skip, timeout: 120_000 }, () => {
  it('come back removed, with their data, mode and owner; no name is left', async () => {
    const w = await startWorkload(REMOVED, ['DIR']);
    const image = join(w.dir, 'removed.tar');
    await checkpointFreed(w, image);
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.equal(await verify(w), 'PASS');
    assert.deepEqual(readdirSync(w.dir).filter((n) => n.startsWith('ff') || n.startsWith('d')), []);
  });

  it('--leave-running leaves the original as it was', async () => {
    const w = await startWorkload(REMOVED, ['DIR']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS');
  });
});
