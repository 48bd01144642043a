/**
 * A disposition is more than its handler (src/dump/task-state.ts, readInjectedState): SIGCHLD
 * left at SIG_DFL with SA_NOCLDWAIT makes the kernel reap the process's exited children, so a
 * restore that brought back SIG_DFL alone would leave every child it forks afterwards a zombie.
 * The workload (test/fixtures/workloads/nocldwait.c) forks a child on SIGUSR1 and says whether
 * the kernel reaped it, before the checkpoint and after the restore; `plain` (SIG_DFL without
 * the flag) is the control: its children stay zombies before and after alike.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { needs, ROOT, WORKLOADS } from '../helpers/env.js';
import { alive, askVerdict, checkpointFreed, cleanup, ferry, own, procState, scratchDir, startWorkload, type Workload } from '../helpers/processes.js';

const CC = ['/usr/bin/cc', '/usr/bin/gcc'].find((p) => existsSync(p));
const SOURCE = join(ROOT, 'test', 'fixtures', 'workloads', 'nocldwait.c');
/** What the native build makes of it (a build older than the workload has none). */
const BUILT = join(WORKLOADS, 'nocldwait');
const skip = needs('root', 'build') || (existsSync(BUILT) || CC ? false : `needs ${BUILT} ('npm run build') or a C compiler to build it`);
after(cleanup);

/** The children a workload said it forked, in order. */
const children = (w: Workload): number[] => [...w.text().matchAll(/^child (\d+)$/gm)].map((m) => Number(m[1]));

describe('SIGCHLD at SIG_DFL with SA_NOCLDWAIT', { skip, timeout: 120_000 }, () => {
  let bin = BUILT;
  before(() => {
    if (existsSync(BUILT)) return;
    bin = join(scratchDir('ferry-nocldwait-'), 'nocldwait');
    const cc = spawnSync(CC!, ['-O2', '-o', bin, SOURCE], { encoding: 'utf8', timeout: 60000 });
    assert.equal(cc.status, 0, `cc nocldwait.c: ${cc.stderr}`);
  });

  for (const mode of ['nocldwait', 'plain'] as const) {
    const what = mode === 'nocldwait' ? 'keeps SA_NOCLDWAIT: a child that exits after the restore is reaped by the kernel, no zombie'
      : 'without the flag (control): a child that exits after the restore stays a zombie until waited for';
    it(what, async () => {
      const w = await startWorkload(bin, mode === 'plain' ? ['plain'] : []);
      assert.equal(await askVerdict(w.pid, w.text), 'PASS', 'the workload behaves as its mode says before the checkpoint');
      const first = children(w);
      assert.equal(first.length, 1);
      if (mode === 'nocldwait') assert.ok(!alive(first[0]!), `child ${first[0]} was reaped by the kernel`);

      const image = join(w.dir, 'nocldwait.tar');
      await checkpointFreed(w, image);
      const rs = ferry(['restore', '--image', image]);
      assert.equal(rs.code, 0, rs.stderr);
      own(w.pid);
      assert.equal(procState(w.pid).tracer, 0, 'not traced after restore');

      // The restored process reads its SIGCHLD action back and watches a new child end.
      assert.equal(await askVerdict(w.pid, w.text), 'PASS', 'the restored workload behaves as its mode says');
      const forked = children(w);
      assert.equal(forked.length, 2);
      const child = forked[1]!;
      if (mode === 'nocldwait') {
        assert.ok(!alive(child), `child ${child} of the restored process was reaped by the kernel`);
        assert.deepEqual(readChildren(w.pid), [], 'the restored process has no child, zombie or not');
      }
    });
  }
});

/** The children of `pid` as the kernel lists them (zombies included), from /proc. */
function readChildren(pid: number): number[] {
  return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
}
