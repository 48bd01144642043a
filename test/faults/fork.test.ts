/**
 * Fault cells of a restore's forks (src/restore/tree.ts `fork`): a parent stub has forked a
 * child stub, which runs on its own until ferry seizes it. Restore is SIGKILLed right there
 * (FERRY_TEST_PAUSE_AT=forked, a synchronous pause): the traced parent dies with ferry
 * (PTRACE_O_EXITKILL) and the child, which asked for SIGKILL on its parent's death
 * (native/helpers/stub.c, the gadget page's fork entry for a rebuilt parent), dies too, so
 * every pid of the image is free again at once, and a retry restores the tree. Both ways a
 * child is forked: from its parent's stub (memcheck tree) and from its rebuilt parent, whose
 * pages it inherits (memcheck cow), and with CLONE_FILES | CLONE_FS from a parent whose
 * descriptor table and fs struct it shares (sharetables both); and (FERRY_TEST_PAUSE_AT=lent)
 * the rebuilt parent holding the pages its children lend through it, before they are forked
 * (through its own area, memcheck cow, or a temporary one where it unmapped theirs, cowshare);
 * (FERRY_TEST_PAUSE_AT=relayed) a rebuilt child holding the area it passes on from the root to
 * its own child, cousins sharing pages lent through the root (cowshare cousins, sibcousin) or
 * the root's own pages its grandchild inherits (cowshare grandchild);
 * (FERRY_TEST_PAUSE_AT=grouped) the helper the session leader forked with the id of a group whose
 * leader had exited, holding the group for the members that joined it: it dies with its traced
 * parent too, and the group id is free again with the tree's pids.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import type { FaultPhase } from '../../src/fault.js';
import { needs, WORKLOADS } from '../helpers/env.js';
import { cleanup, own, startWorkload, verify, waitFor, type Workload } from '../helpers/processes.js';
import {
  checkRestored, hit, killAll, pidsFree, runFerry, startMemcheck, whilePaused, type Problems,
} from './helpers.js';

const skip = needs('root', 'build');
after(() => { killAll(); cleanup(); });

describe('fault cells: restore killed between a fork and the seize of the child, or while a parent holds lent or relayed pages', { skip, timeout: 180_000 }, () => {
  /**
   * Checkpoints `w` (its tree of `pids` killed), SIGKILLs a restore of it paused at `phase`:
   * every pid of `pids` and `also` is free again at once; then a retry restores it whole.
   */
  const killedThenRetried = async (w: Workload, pids: number[], phase: FaultPhase, also: number[] = []): Promise<void> => {
    const image = join(w.dir, 'image.tar');
    const cp = await runFerry(['checkpoint', '--pid', String(w.pid), '--image', image]);
    assert.equal(cp.code, 0, cp.stderr);
    await w.exited;
    assert.deepEqual(await pidsFree(pids), []);

    const p: Problems = [];
    await whilePaused(p, ['restore', '--image', image], phase, (run) => hit(run, 'SIGKILL', p).then(() => undefined));
    assert.deepEqual(p, []);
    assert.deepEqual(await pidsFree([...pids, ...also], 5000), [], 'nothing of the killed restore holds the pids');

    const rs = await runFerry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    assert.equal(await verify(w), 'PASS', w.text());
  };

  // `lent`: the rebuilt root holds the pages its children lend through it (restore/cow.ts:
  // memcheck cow's children share pages of the C library's data the root wrote after forking).
  for (const [mode, at] of [['tree', 'forked'], ['cow', 'forked'], ['cow', 'lent']] as const) {
    it(`memcheck ${mode}: SIGKILL at ${at}; no stub is left, every pid is free, a retry restores`, async () => {
      const t = await startMemcheck(8, mode);
      assert.ok(t.pids.length > 1, 'a tree');
      const image = join(t.dir, 'tree.tar');
      const cp = await runFerry(['checkpoint', '--pid', String(t.pids[0]), '--image', image]);
      assert.equal(cp.code, 0, cp.stderr);
      await t.exited;
      assert.deepEqual(await pidsFree(t.pids), []);

      const p: Problems = [];
      await whilePaused(p, ['restore', '--image', image], at, (run) => hit(run, 'SIGKILL', p).then(() => undefined));
      assert.deepEqual(p, []);
      // At once: the kernel kills the stubs (no wait for a reaper beyond the usual).
      assert.deepEqual(await pidsFree(t.pids, 5000), [], 'nothing of the killed restore holds the pids');

      const rs = await runFerry(['restore', '--image', image]);
      assert.equal(rs.code, 0, rs.stderr);
      const q: Problems = [];
      await checkRestored(q, t);
      assert.deepEqual(q, []);
      killAll();
    });
  }

  // restore/ignored-trap.ts: the last calls of a process that ignores SIGTRAP go by
  // syscall-stops; killed there, with no gadget left, the stub dies with ferry (EXITKILL).
  it('a process ignoring SIGTRAP: SIGKILL at untrapped; nothing is left, a retry restores it still ignoring SIGTRAP', async () => {
    const w = await startWorkload('/bin/sh', ['-c', 'trap "" TRAP; echo "ready pid=$$"; exec sleep 1000']);
    await waitFor('the exec of sleep', () => readFileSync(`/proc/${w.pid}/comm`, 'utf8').trim() === 'sleep');
    const ignored = (): string => /^SigIgn:.*$/m.exec(readFileSync(`/proc/${w.pid}/status`, 'utf8'))![0];
    const before = ignored();
    const image = join(w.dir, 'trap.tar');
    const cp = await runFerry(['checkpoint', '--pid', String(w.pid), '--image', image]);
    assert.equal(cp.code, 0, cp.stderr);
    await w.exited;
    assert.deepEqual(await pidsFree([w.pid]), []);
    const p: Problems = [];
    await whilePaused(p, ['restore', '--image', image], 'untrapped', (run) => hit(run, 'SIGKILL', p).then(() => undefined));
    assert.deepEqual(p, []);
    assert.deepEqual(await pidsFree([w.pid], 5000), [], 'nothing of the killed restore holds the pid');
    const rs = await runFerry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.equal(ignored(), before, 'SIGTRAP still ignored');
    process.kill(w.pid, 'SIGKILL');
  });

  it('sharetables both: SIGKILL at forked of a child sharing its parent\'s table; nothing is left, a retry restores', async () => {
    const w = await startWorkload(join(WORKLOADS, 'sharetables'), ['both']);
    const pids = [w.pid, ...readFileSync(`/proc/${w.pid}/task/${w.pid}/children`, 'utf8').split(' ').filter(Boolean).map(Number)];
    for (const pid of pids) own(pid);
    assert.equal(pids.length, 2, 'parent and child');
    await killedThenRetried(w, pids, 'forked');
  });

  it('cowshare siblings: SIGKILL at lent, the root holding a temporary area for its children; nothing is left, a retry restores', async () => {
    // The root unmapped the area its two children share: restore maps one in it for them
    // (restore/cow.ts CowPlan.temporary, address-space.ts holdTemporary), held at `lent`.
    const w = await startWorkload(join(WORKLOADS, 'cowshare'), ['siblings', '8']);
    const m = /ready pid=\d+ pids=([\d,]+) /.exec(w.text());
    assert.ok(m, w.text());
    const pids = m[1]!.split(',').map(Number);
    for (const pid of pids) own(pid);
    await killedThenRetried(w, pids, 'lent');
  });

  // cousins: the grandchildren share pages lent through the root; grandchild: the root's own
  // pages its grandchild inherits; sibcousin: two grandchildren under one child and one under
  // the other share pages lent through the root. Each child between keeps the area it
  // inherits from the root only while it forks its grandchildren (restore/cow.ts
  // CowPlan.relayed), held at `relayed`.
  for (const mode of ['cousins', 'grandchild', 'sibcousin'] as const) {
    it(`cowshare ${mode}: SIGKILL at relayed, a child holding the area it passes on to its grandchild; nothing is left, a retry restores`, async () => {
      const w = await startWorkload(join(WORKLOADS, 'cowshare'), [mode, '8']);
      const m = /ready pid=\d+ pids=([\d,]+) /.exec(w.text());
      assert.ok(m, w.text());
      const pids = m[1]!.split(',').map(Number);
      for (const pid of pids) own(pid);
      await killedThenRetried(w, pids, 'relayed');
    });
  }

  it('orphangroup: SIGKILL at grouped, a helper holding a group id; nothing is left, a retry restores', async () => {
    const w = await startWorkload(join(WORKLOADS, 'orphangroup'), []);
    const m = /ready pid=\d+ group=(\d+) members=([\d,]+)/.exec(w.text());
    assert.ok(m, w.text());
    const group = Number(m[1]);
    const pids = [w.pid, ...m[2]!.split(',').map(Number)];
    for (const pid of pids) own(pid);
    await killedThenRetried(w, pids, 'grouped', [group]);
  });
});
