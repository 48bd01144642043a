/**
 * Process trees: every process comes back with its pid, parent, process group and session;
 * zombies come back as zombies their parent can reap, with their exit status.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, WORKLOADS } from '../helpers/env.js';
import { alive, cleanup, ferry, own, procState, startWorkload, verify, waitFor } from '../helpers/processes.js';

after(cleanup);

interface Proc { pid: number; ppid: number; pgid: number; sid: number; state: string; threads: number }

/** Every process under `root` (included), from /proc, sorted by pid. */
function walk(root: number): Proc[] {
  const out: Proc[] = [];
  const visit = (pid: number): void => {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    out.push({ pid, ppid: Number(f[1]), pgid: Number(f[2]), sid: Number(f[3]), state: f[0]!, threads: Number(f[17]) });
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const kids = readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').split(' ').filter(Boolean).map(Number);
      kids.forEach(visit);
    }
  };
  visit(root);
  return out.sort((a, b) => a.pid - b.pid);
}

/** The tree as it must come back: the root's parent is whoever restored it. */
const shape = (ps: Proc[], root: number): Array<Omit<Proc, 'state'> & { zombie: boolean }> =>
  ps.map(({ state, ...p }) => ({ ...p, ppid: p.pid === root ? 0 : p.ppid, zombie: state === 'Z' }));

describe('process trees', { skip: needs('root', 'build'), timeout: 180_000 }, () => {
  it('a tree with sessions, groups, threads and zombies survives three cycles', async () => {
    const w = await startWorkload(join(WORKLOADS, 'tree'), []);
    const before = walk(w.pid);
    assert.equal(before.length, 9, `nine processes: ${JSON.stringify(before)}`);
    assert.equal(before.filter((p) => p.state === 'Z').length, 2, 'two zombies');
    for (const p of before) own(p.pid);
    const image = join(w.dir, 'tree.tar');
    for (let i = 0; i < 3; i++) {
      const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--json']);
      assert.equal(cp.code, 0, cp.stderr);
      assert.deepEqual([...(JSON.parse(cp.stdout.toString()) as { pids: number[] }).pids].sort((a, b) => a - b), before.map((p) => p.pid));
      if (i === 0) await w.exited;
      await waitFor('every pid of the tree to be free', () => before.every((p) => !alive(p.pid)), 8000);
      const rs = ferry(['restore', '--image', image]);
      assert.equal(rs.code, 0, rs.stderr);
      const after = walk(w.pid);
      assert.deepEqual(shape(after, w.pid), shape(before, w.pid), `cycle ${i + 1}: same pids, parents, groups, sessions, threads, zombies`);
      for (const p of after) assert.equal(procState(p.pid).tracer, 0, `pid ${p.pid} not traced`);
    }
    assert.equal(await verify(w), 'PASS');
  });

  it('--leave-running leaves the whole tree running, and the image restores it later', async () => {
    const w = await startWorkload(join(WORKLOADS, 'tree'), []);
    const before = walk(w.pid);
    for (const p of before) own(p.pid);
    const image = join(w.dir, 'tree.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.deepEqual(shape(walk(w.pid), w.pid), shape(before, w.pid), 'nothing changed in the running tree');
    for (const p of before.filter((x) => x.state !== 'Z')) {
      const st = procState(p.pid);
      assert.equal(st.tracer, 0);
      assert.ok(!'tT'.includes(st.state), `pid ${p.pid} not stopped`);
    }
    for (const p of before) {
      try { process.kill(p.pid, 'SIGKILL'); } catch { /* zombie or gone */ }
    }
    await w.exited;
    await waitFor('every pid of the tree to be free', () => before.every((p) => !alive(p.pid)), 8000);
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    assert.deepEqual(shape(walk(w.pid), w.pid), shape(before, w.pid));
    assert.equal(await verify(w), 'PASS');
  });
});

describe('sharing restore cannot rebuild yet', { skip: needs('root', 'build'), timeout: 120_000 }, () => {
  const cases: Array<[string, RegExp]> = [
    ['files', /^ferry checkpoint: pids \d+ and \d+ share one descriptor table \(clone\(2\) with CLONE_FILES\), which restore cannot rebuild yet/],
    ['fs', /^ferry checkpoint: pids \d+ and \d+ share one root, working directory and umask \(clone\(2\) with CLONE_FS\)/],
    ['thread', /^ferry checkpoint: thread \d+ of pid (\d+) has a root, working directory and umask of its own \(unshare\(2\) of CLONE_FS\)/],
  ];
  for (const [mode, message] of cases) {
    it(`${mode}: refused with one line; the tree runs on as it was`, async () => {
      const w = await startWorkload(join(WORKLOADS, 'sharetables'), [mode]);
      const kids = readFileSync(`/proc/${w.pid}/task/${w.pid}/children`, 'utf8').split(' ').filter(Boolean).map(Number);
      for (const k of kids) own(k);
      const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'x.tar')]);
      assert.equal(cp.code, 1, cp.stderr);
      assert.match(cp.stderr, message);
      assert.equal(cp.stderr.trimEnd().split('\n').length, 1, 'one line');
      for (const p of [w.pid, ...kids]) assert.equal(procState(p).tracer, 0, `pid ${p} not traced`);
      assert.equal(await verify(w), 'PASS', w.text());
    });
  }
});
