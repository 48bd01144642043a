/**
 * Files under /proc/PID/ held open, through bin/ferry: build/workloads/procfds holds its own
 * /proc/self/stat (past its start), its child's status and maps, its main thread's comm, its
 * /proc directory and /proc/1/stat, and its child its own /proc/self/stat; after restore each
 * checks they name the same (restored) process (the maps its restored address space).
 */
import assert from 'node:assert/strict';

import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, WORKLOADS } from '../helpers/env.js';
import { editImage, json } from '../helpers/images.js';
import { alive, checkpointTreeFreed, cleanup, ferry, own, procState, startWorkload, verify } from '../helpers/processes.js';

const skip = needs('root', 'build');
after(cleanup);

const PROCFDS = join(WORKLOADS, 'procfds');

describe('/proc files of the tree', { skip, timeout: 120_000 }, () => {
  it('come back naming the restored processes, with their offsets', async () => {
    const w = await startWorkload(PROCFDS, ['DIR']);
    const image = join(w.dir, 'proc.tar');
    await checkpointTreeFreed(w, image);
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    assert.equal(await verify(w), 'PASS');
  });

  it('--leave-running leaves the original as it was', async () => {
    const w = await startWorkload(PROCFDS, ['DIR']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS');
  });

  it('an untrusted image may not open a /proc file of a process outside its tree', async () => {
    const w = await startWorkload(PROCFDS, ['DIR']);
    const image = join(w.dir, 'proc.tar');
    await checkpointTreeFreed(w, image);
    const edited = join(w.dir, 'edited.tar');
    await editImage(image, edited, { 'files.json': json(() => undefined) });
    const rs = ferry(['restore', '--image', edited, '--max-creds', 'root']);
    assert.equal(rs.code, 1);
    assert.match(rs.stderr, /file \d+ \("\/proc\/1\/stat"\) is a \/proc file of a process outside the image's tree, which restore would open as root/);
    assert.ok(!alive(w.pid));
  });
});
