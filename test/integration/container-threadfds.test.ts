/**
 * A thread with a descriptor table of its own inside a container, with real runc:
 * build/workloads/threadfds-static is the container's init (test/fixtures/workloads/threadfds.c).
 * Inside a container ferry's pid is not visible, so the thread's table is filled through a copy
 * of ferry's pidfd its process keeps (restore/restore.ts rebuild): the restored container's
 * thread has its own table again, the same descriptors as before, and checks itself.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { WORKLOADS } from '../helpers/env.js';
import { cleanup, ferry, waitFor } from '../helpers/processes.js';
import { runcAt, runcScratch, runcState, runcWorkloadSkip, runReady } from '../helpers/runc-criu.js';

const WORKLOAD = join(WORKLOADS, 'threadfds-static');
const skip = runcWorkloadSkip(WORKLOAD);

let dir = '';
let state = '';
let rootfs = '';
const ids = new Set<string>();

const runc = (...args: string[]): { code: number; out: string; err: string } => runcAt(state, ...args);

/** The host pid of container `id`'s init, or 0 when runc does not know it. */
const initPid = (id: string): number => runcState(state, id).pid;

/** Each thread's descriptor numbers with what they name (a pipe's inode left out), leader first. */
function tables(pid: number): string[][] {
  return readdirSync(`/proc/${pid}/task`).map(Number).sort((a, b) => a - b).map((tid) => {
    const d = `/proc/${pid}/task/${tid}/fd`;
    return readdirSync(d).map(Number).sort((a, b) => a - b).map((fd) => `${fd} ${readlinkSync(`${d}/${fd}`).replace(/^(pipe|socket|anon_inode):\[?[^\]]*\]?$/, '$1')}`);
  });
}

describe('a thread with a descriptor table of its own inside a container', { skip, timeout: 180_000 }, () => {
  before(() => {
    ({ dir, state, rootfs } = runcScratch('ferry-ctrfds-', WORKLOAD, 'threadfds'));
  });
  after(() => {
    for (const id of ids) runc('delete', '--force', id);
    cleanup();
  });

  it('comes back with it, and checks itself', async () => {
    const id = `ferry-threadfds-${process.pid}`;
    const log = join(dir, 'threadfds.log');
    ids.add(id);
    await runReady({ state, bundle: join(dir, 'bundle'), rootfs, id, args: ['/bin/threadfds'], log });
    const want = tables(initPid(id));
    assert.equal(want.length, 2, 'two threads');
    const image = join(dir, 'threadfds.tar');
    const cp = ferry(['checkpoint', id, '--root', state, '--image', image]);
    assert.equal(cp.code, 0, cp.stderr);
    const rs = ferry(['restore', id, '--root', state, '--image', image, '--detach']);
    assert.equal(rs.code, 0, rs.stderr);
    const pid = initPid(id);
    assert.deepEqual(tables(pid), want, 'each thread its own table, as before');
    process.kill(pid, 'SIGUSR1');
    await waitFor(`${id} to check itself`, () => /^(PASS|FAIL)/m.test(readFileSync(log, 'utf8')), 10000, () => readFileSync(log, 'utf8'));
    const text = readFileSync(log, 'utf8');
    assert.deepEqual(text.split('\n').filter((l) => l.startsWith('FAIL')), [], text);
    assert.match(text, /^PASS$/m);
  });
});
