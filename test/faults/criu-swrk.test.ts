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
 * - PRE_DUMP at `precopy` (the container's memory tracked through criu's userfaultfds, its
 *   pages being copied, nothing of it stopped): the container runs on, untraced, its memory
 *   no longer tracked (no `uw` area: the kernel unregistered it with criu's descriptors), no
 *   holder and no state file are left, and a pre-dump run again works.
 * - DUMP against that pre-dump at `seized` (the holder's tracking taken over and the holder
 *   ended, every thread stopped): the container runs on, thawed, untraced, untracked.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { PRIVATE_STATE_PARENT } from '../../src/runtime/criu-swrk.js';
import { TRACK_DIR } from '../../src/runtime/criu-track.js';
import { cleanup, scratchDir, sleep, waitFor } from '../helpers/processes.js';
import { cgroupPids, childrenOf, makeBundle, RuncCriu, SKIP_RUNC_CRIU, TICKS } from '../helpers/runc-criu.js';

function tracerOf(tid: number): number {
  const m = /^TracerPid:\s+(\d+)$/m.exec(readFileSync(`/proc/${tid}/status`, 'utf8'));
  return Number(m?.[1] ?? -1);
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

/** Whether any area of `pid` is registered for write-protection (VmFlags uw). */
function tracked(pid: number): boolean {
  return /^VmFlags:.*\buw\b/m.test(readFileSync(`/proc/${pid}/smaps`, 'utf8'));
}

/** State files of holders of container init `init`. */
function holderStates(init: number): string[] {
  return existsSync(TRACK_DIR) ? readdirSync(TRACK_DIR).filter((n) => n.startsWith(`${init}-`)) : [];
}

describe('fault cells: ferry\'s criu SIGKILLed during a pre-dump under runc', { skip: SKIP_RUNC_CRIU, timeout: 300_000 }, () => {
  let dir = '';
  let rc: RuncCriu;
  const id = `ferry-swrk-pf-${process.pid}`;

  before(() => {
    dir = scratchDir('ferry-criu-pfaults-');
    rc = new RuncCriu(join(dir, 'bin'), join(dir, 'runc-root'));
    rc.own(id);
  });

  after(() => {
    rc?.cleanup();
    cleanup();
  });

  /**
   * SIGKILLs the criu under `run` (runc gives a dumping criu /dev/null as stderr: it is found
   * as runc's child) once `ready(criu)` holds and it has had time to reach its pause; resolves
   * with runc's exit status.
   */
  const killWhen = async (run: ReturnType<RuncCriu['start']>, ready: (criu: number) => boolean): Promise<number> => {
    let criu = 0;
    await waitFor('criu to reach the fault point', () => {
      criu = childrenOf(run.child.pid!, 'swrk').find(ready) ?? 0;
      return criu !== 0;
    }, 60_000);
    await sleep(300);
    process.kill(criu, 'SIGKILL');
    return run.exited;
  };

  it('PRE_DUMP killed at precopy, then DUMP against a pre-dump killed at seized: the container runs on, untracked', async () => {
    const bundle = makeBundle(dir, 'bundle', TICKS);
    const run = await rc.detached(['run', '-d', '--bundle', bundle, id], bundle);
    assert.equal(run.code, 0, run.err());
    await waitFor('ticks', () => (run.ticks.last ?? 0) >= 3);
    const init = rc.status(id)!.pid;

    const pre = rc.start(['checkpoint', '--pre-dump', '--image-path', join(dir, 'pre-killed'), id], dir, { FERRY_TEST_PAUSE_AT: 'precopy' });
    assert.notEqual(await killWhen(pre, () => tracked(init)), 0, 'runc checkpoint --pre-dump fails');
    assert.equal(rc.status(id)?.status, 'running');
    assert.equal(tracerOf(init), 0, 'untraced');
    await waitFor('the tracking dropped with criu\'s descriptors', () => !tracked(init), 10_000);
    assert.deepEqual(holderStates(init), [], 'no holder');
    let at = run.ticks.last!;
    await waitFor('ticks after the fault', () => run.ticks.last! >= at + 3);

    // A pre-dump that completes leaves a holder; a DUMP against it killed once it has
    // taken the tracking over and stopped the container.
    const ok = rc.run(['checkpoint', '--pre-dump', '--image-path', join(dir, 'pre'), id]);
    assert.equal(ok.code, 0, ok.err);
    assert.equal(holderStates(init).length, 1, 'a holder keeps the tracking');
    assert.ok(tracked(init));
    const cp = rc.start(['checkpoint', '--parent-path', '../pre', '--image-path', join(dir, 'dump-killed'), id], dir, { FERRY_TEST_PAUSE_AT: 'seized' });
    assert.notEqual(await killWhen(cp, (criu) => tracerOf(init) === criu), 0, 'runc checkpoint fails');
    assert.equal(rc.status(id)?.status, 'running');
    await waitFor('the cgroup thawed', () => readFileSync(`/sys/fs/cgroup/freezer/${id}/freezer.state`, 'utf8').trim() === 'THAWED');
    for (const pid of cgroupPids(id)) assert.equal(tracerOf(pid), 0, `pid ${pid} untraced`);
    await waitFor('the tracking dropped', () => !tracked(init), 10_000);
    assert.deepEqual(holderStates(init), [], 'the holder was ended by the dump that took over');
    at = run.ticks.last!;
    await waitFor('ticks after the fault', () => run.ticks.last! >= at + 3);
  });
});
