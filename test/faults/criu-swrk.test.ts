/**
 * Fault cells of ferry's criu under runc (src/runtime/criu-swrk.ts): ferry's criu is SIGKILLed
 * while `runc checkpoint` or `runc restore` waits on it, at a fault point
 * (FERRY_TEST_PAUSE_AT, which runc passes on in criu's environment).
 *
 * - DUMP at `seized` (every thread of the container stopped under criu's ptrace): the
 *   container is left running, thawed, untraced, counting on; runc still has it.
 * - RESTORE at `created`, `rebuilt` and `letgo` (the sandbox made by the second runc, the
 *   processes made, the first one let go): runc fails, nothing is left behind (no container
 *   in runc's state or in the private one, no process in the container's cgroup, no private
 *   state directory), and the same restore run again works.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { PRIVATE_STATE_PARENT } from '../../src/runtime/criu-swrk.js';
import { cleanup, scratchDir, sleep, waitFor } from '../helpers/processes.js';
import { makeBundle, RuncCriu, SKIP_RUNC_CRIU, TICKS } from '../helpers/runc-criu.js';

/** Every pid in /proc whose parent is `ppid` and whose command line holds `word`. */
function childrenOf(ppid: number, word: string): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) !== ppid) continue;
      if (readFileSync(`/proc/${d}/cmdline`, 'utf8').includes(word)) out.push(Number(d));
    } catch { /* gone */ }
  }
  return out;
}

function tracerOf(tid: number): number {
  const m = /^TracerPid:\s+(\d+)$/m.exec(readFileSync(`/proc/${tid}/status`, 'utf8'));
  return Number(m?.[1] ?? -1);
}

/** Pids in the container's freezer cgroup (runc's default cgroupsPath: /ID), [] when it is gone. */
function cgroupPids(id: string): number[] {
  const f = `/sys/fs/cgroup/freezer/${id}/cgroup.procs`;
  if (!existsSync(f)) return [];
  try {
    return readFileSync(f, 'utf8').split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

describe('fault cells: ferry\'s criu SIGKILLed under runc', { skip: SKIP_RUNC_CRIU, timeout: 300_000 }, () => {
  let dir = '';
  let rc: RuncCriu;
  let bundle = '';
  const id = `ferry-swrk-f-${process.pid}`;

  before(() => {
    dir = scratchDir('ferry-criu-faults-');
    rc = new RuncCriu(join(dir, 'bin'), join(dir, 'runc-root'));
    rc.own(id);
    bundle = makeBundle(dir, 'bundle', TICKS);
  });

  after(() => {
    rc?.cleanup();
    cleanup();
  });

  let image = '';
  let lastTick = 0;

  it('DUMP killed at seized: the container runs on, thawed and untraced', async () => {
    const run = await rc.detached(['run', '-d', '--bundle', bundle, id], bundle);
    assert.equal(run.code, 0, run.err());
    await waitFor('ticks', () => (run.ticks.last ?? 0) >= 3);
    const init = rc.status(id)!.pid;
    const cp = rc.start(['checkpoint', '--image-path', join(dir, 'killed'), id], dir, { FERRY_TEST_PAUSE_AT: 'seized' });
    let criu = 0;
    await waitFor('criu to hold the container\'s threads', () => {
      criu = childrenOf(cp.child.pid!, 'swrk').find((p) => tracerOf(init) === p) ?? 0;
      return criu !== 0;
    }, 30_000);
    await sleep(100); // at the pause: every thread seized
    process.kill(criu, 'SIGKILL');
    const code = await cp.exited;
    assert.notEqual(code, 0, 'runc checkpoint fails');
    assert.equal(rc.status(id)?.status, 'running');
    await waitFor('the cgroup thawed', () => readFileSync(`/sys/fs/cgroup/freezer/${id}/freezer.state`, 'utf8').trim() === 'THAWED');
    for (const pid of cgroupPids(id)) assert.equal(tracerOf(pid), 0, `pid ${pid} untraced`);
    const at = run.ticks.last!;
    await waitFor('ticks after the fault', () => run.ticks.last! >= at + 3);

    image = join(dir, 'image');
    const ok = rc.run(['checkpoint', '--image-path', image, id]);
    assert.equal(ok.code, 0, ok.err);
    await waitFor('the old pipe to close', () => run.ticks.ended);
    lastTick = run.ticks.last!;
  });

  for (const phase of ['created', 'rebuilt', 'letgo']) {
    it(`RESTORE killed at ${phase}: nothing is left behind, and a retry works`, async () => {
      assert.ok(image !== '', 'the DUMP cell made the image');
      const rs = rc.start(['restore', '-d', '--image-path', image, id], bundle, { FERRY_TEST_PAUSE_AT: phase });
      let criu = 0;
      await waitFor(`criu to pause at ${phase}`, () => {
        const m = /ferry-test: paused at \w+ \(pid (\d+)\)/.exec(rs.err());
        criu = Number(m?.[1] ?? 0);
        return criu !== 0;
      }, 60_000);
      process.kill(criu, 'SIGKILL');
      const code = await rs.exited;
      assert.notEqual(code, 0, 'runc restore fails');
      await waitFor('no container in runc\'s state', () => rc.status(id) === undefined);
      await waitFor('no process in the container\'s cgroup', () => cgroupPids(id).length === 0);
      await waitFor('no private state of that criu', () => !existsSync(PRIVATE_STATE_PARENT)
        || !readdirSync(PRIVATE_STATE_PARENT).some((d) => d.startsWith(`${criu}-`)));

      const again = await rc.detached(['restore', '-d', '--image-path', image, id], bundle);
      assert.equal(again.code, 0, again.err());
      await waitFor('ticks after the retry', () => again.ticks.seen.length >= 2);
      assert.equal(again.ticks.seen[0], lastTick + 1, `the image's count goes on: ${again.ticks.seen.slice(0, 3).join(', ')}`);
      assert.equal(rc.run(['delete', '--force', id]).code, 0);
      await waitFor('the retry\'s container gone', () => rc.status(id) === undefined && cgroupPids(id).length === 0);
    });
  }
});
