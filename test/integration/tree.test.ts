/**
 * Process trees: every process comes back with its pid, parent, process group and session;
 * zombies come back as zombies their parent can reap, with their exit status.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, WORKLOADS } from '../helpers/env.js';
import type { TaskRecord, TreeRecord } from '../../src/image/records.js';
import { editImage, json, type Edits } from '../helpers/images.js';
import { alive, checkpointFreed, cleanup, cycleThrough, ferry, own, procState, startWorkload, stubs, verify, waitFor } from '../helpers/processes.js';

after(cleanup);

interface Proc { pid: number; ppid: number; pgid: number; sid: number; state: string; threads: number; comm: string }

/** Every process under `root` (included), from /proc, sorted by pid. */
function walk(root: number): Proc[] {
  const out: Proc[] = [];
  const visit = (pid: number): void => {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
    out.push({ pid, ppid: Number(f[1]), pgid: Number(f[2]), sid: Number(f[3]), state: f[0]!, threads: Number(f[17]), comm });
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
    assert.deepEqual(before.filter((p) => p.state === 'Z').map((p) => p.comm).sort(), ['z1-exited', 'z2-killed'], 'two zombies, named');
    for (const p of before) own(p.pid);
    const image = join(w.dir, 'tree.tar');
    for (let i = 0; i < 3; i++) {
      const cp = await cycleThrough(w, image, i, [], { tree: before.map((p) => p.pid), checkpointFlags: ['--json'] });
      assert.deepEqual([...(JSON.parse(cp.stdout.toString()) as { pids: number[] }).pids].sort((a, b) => a - b), before.map((p) => p.pid));
      const after = walk(w.pid);
      assert.deepEqual(shape(after, w.pid), shape(before, w.pid), `cycle ${i + 1}: same pids, parents, groups, sessions, threads, names, zombies`);
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

  it('a tree.json edited so a session leader forks a member of its session before its setsid is refused before anything is made', async () => {
    const w = await startWorkload(join(WORKLOADS, 'tree'), []);
    for (const p of walk(w.pid)) own(p.pid);
    const image = join(w.dir, 'tree.tar');
    await checkpointFreed(w, image);
    // The root's first three live children: the first leads a session, the second shares its
    // descriptor table in that session, the third shares it in the root's, so the first must
    // fork the third before its setsid, yet the second, in its new session, is listed first.
    // Each holds the first's descriptors and no process inherits pages copy-on-write (a
    // process forked by a sibling may not), so that only the order is wrong.
    const [a, e, b] = imageEntry<TreeRecord>(image, 'tree.json').processes.filter((p) => p.ppid === w.pid && p.zombie === null).map((p) => p.pid);
    const fds = imageEntry<TaskRecord>(image, `tasks/${a}/task.json`).fds;
    const edited = join(w.dir, 'order.tar');
    await editImage(image, edited, [
      ['tree.json', json<TreeRecord>((t) => {
        for (const p of t.processes) {
          if (p.pid === a || p.pid === e) Object.assign(p, { sid: a, pgid: a });
          if (p.pid === e || p.pid === b) p.sharesFiles = a!;
          if (p.pid === b) Object.assign(p, { sid: t.processes[0]!.sid, pgid: t.processes[0]!.pgid });
        }
      })],
      [/^tasks\/\d+\/task\.json$/, json<TaskRecord>((t) => {
        for (const v of t.vmas) { delete v.cow; delete v.lent; }
        if (t.pid === e || t.pid === b) t.fds = fds;
      })],
    ]);
    // `verified!` fails a restore that gets past its last check before making anything.
    const rs = ferry(['restore', '--image', edited, '--max-creds', 'root'], { env: { FERRY_TEST_PAUSE_AT: 'verified!' } });
    assert.equal(rs.code, 1, rs.stderr);
    assert.match(rs.stderr, new RegExp(`image entry tree\\.json is invalid: pid ${a} would fork ${e} \\(of session ${a}\\) before its own setsid, which waits until it has forked ${b} `));
    assert.equal(rs.stderr.trimEnd().split('\n').length, 1, 'one line');
    assert.ok(!alive(w.pid), 'nothing made');
    assert.deepEqual(stubs(), [], 'nothing left behind');
    // The image as it was restores.
    const ok = ferry(['restore', '--image', image]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(await verify(w), 'PASS', w.text());
  });
});

describe('processes sharing a descriptor table or an fs struct', { skip: needs('root', 'build'), timeout: 240_000 }, () => {
  /** Every process of the tree, owned by the test. */
  const ownAll = (root: number): Proc[] => {
    const ps = walk(root);
    for (const p of ps) own(p.pid);
    return ps;
  };

  // sessions: as siblings, but the first child leads a session of its own, the second stays in
  // its parent's: restore forks the second from the first before the first's setsid.
  for (const mode of ['files', 'fs', 'both', 'siblings', 'sessions']) {
    it(`${mode}: two cycles of checkpoint and restore; they share again`, async () => {
      const w = await startWorkload(join(WORKLOADS, 'sharetables'), [mode]);
      const before = ownAll(w.pid);
      assert.equal(before.length, mode === 'both' || mode === 'fs' ? 2 : 3, JSON.stringify(before));
      const image = join(w.dir, 'share.tar');
      for (let i = 0; i < 2; i++) {
        await cycleThrough(w, image, i, [], {
          tree: before.map((p) => p.pid),
          beforeRestore: () => {
            const tree = imageEntry<TreeRecord>(image, 'tree.json');
            const field = mode === 'fs' ? 'sharesFs' : 'sharesFiles';
            // Siblings share the first child's table, their parent has its own.
            const first = mode === 'siblings' || mode === 'sessions' ? tree.processes[1]!.pid : w.pid;
            assert.deepEqual(tree.processes.map((p) => p[field]), before.map((p) => (p.pid === w.pid || p.pid === first ? undefined : first)),
              `the image says who shares: ${JSON.stringify(tree)}`);
          },
        });
        assert.deepEqual(shape(ownAll(w.pid), w.pid), shape(before, w.pid), `cycle ${i + 1}: the same tree`);
      }
      assert.equal(await verify(w), 'PASS', w.text());
    });
  }

  it('thread: a thread that unshare(2)d its table has one of its own again after a cycle', async () => {
    const w = await startWorkload(join(WORKLOADS, 'sharetables'), ['thread']);
    await cycleThrough(w, join(w.dir, 'thread.tar'), 0);
    assert.equal(await verify(w), 'PASS', w.text());
  });

  // late: the session leader clones a process of its new session as its parent's child,
  // sharing the table, before the parent clones the sharer that stays in its session. Listed
  // breadth first, as made, the order is one restore refuses (validate.ts): the checkpoint must
  // refuse the tree, killing nothing (checkGroups does: the new member's parent is in another
  // session).
  it('late: a tree restore cannot rebuild is refused at checkpoint, the tree left running', async () => {
    const w = await startWorkload(join(WORKLOADS, 'sharetables'), ['late']);
    const before = ownAll(w.pid);
    assert.equal(before.length, 4, JSON.stringify(before));
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'late.tar')]);
    assert.equal(cp.code, 1, cp.stderr);
    assert.match(cp.stderr, /^ferry checkpoint: pid \d+ is in session \d+ but its parent \d+ is in session \d+: such a tree cannot be restored yet/);
    assert.equal(cp.stderr.trim().split('\n').length, 1, cp.stderr);
    for (const p of before) {
      assert.ok(alive(p.pid), `pid ${p.pid} alive`);
      const st = procState(p.pid);
      assert.equal(st.tracer, 0, `pid ${p.pid} not traced`);
      assert.notEqual(st.state, 'T', `pid ${p.pid} not stopped`);
    }
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('--leave-running leaves them running and sharing as they were', async () => {
    const w = await startWorkload(join(WORKLOADS, 'sharetables'), ['both']);
    const before = ownAll(w.pid);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    for (const p of before) assert.equal(procState(p.pid).tracer, 0, `pid ${p.pid} not traced`);
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('an image edited to share what the processes did not hold alike is refused with one line, nothing made', async () => {
    const w = await startWorkload(join(WORKLOADS, 'sharetables'), ['files']);
    const [, child] = ownAll(w.pid);
    const image = join(w.dir, 'lr.tar');
    assert.equal(ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']).code, 0);
    const cases: Array<[string, Edits, RegExp]> = [
      // The child claims the table but lists a descriptor fewer than its holder.
      ['fewer.tar', [[`tasks/${child!.pid}/task.json`, json<TaskRecord>((t) => { t.fds = t.fds.filter((f) => f.fd !== 41); })]],
        new RegExp(`pid ${child!.pid} shares the descriptor table of pid ${w.pid} \\(tree\\.json\\) but its descriptors differ`)],
      // The root claims to share a child's table: nothing restore could fork it from.
      ['root.tar', [['tree.json', json<TreeRecord>((t) => { t.processes[0]!.sharesFiles = child!.pid; })]],
        /image entry tree\.json is invalid: processes\[0\]\.sharesFiles .* must name a live process listed before it/],
    ];
    for (const [name, edits, message] of cases) {
      const edited = join(w.dir, name);
      await editImage(image, edited, edits);
      const rs = ferry(['restore', '--image', edited]);
      assert.equal(rs.code, 1, rs.stderr);
      assert.match(rs.stderr, message);
      assert.equal(rs.stderr.trimEnd().split('\n').length, 1, 'one line');
    }
    assert.deepEqual(stubs(), [], 'nothing left behind');
    assert.equal(await verify(w), 'PASS', w.text());
  });
});

/** The JSON entry `name` of `image` (a tar file). */
function imageEntry<T>(image: string, name: string): T {
  const r = spawnSync('tar', ['-xOf', image, name], { encoding: 'utf8', timeout: 10_000 });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as T;
}
