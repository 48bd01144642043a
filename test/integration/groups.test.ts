/**
 * Process groups led from outside the tree: a child left in its shell's job group when its
 * parent made a group of its own comes back into that group, when the group still exists in
 * the session the restore runs in; elsewhere the restore is refused before anything is made.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { FERRY, needs, WORKLOADS } from '../helpers/env.js';
import {
  alive, checkpointTreeFreed, cleanup, ferry, own, ownTree, procState, startWorkload, stubs, verify, waitFor,
} from '../helpers/processes.js';

after(cleanup);

/** Group and session of a process, from /proc/PID/stat. */
function groupOf(pid: number | 'self'): { pgid: number; sid: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { pgid: Number(f[2]), sid: Number(f[3]) };
}

const mine = groupOf('self');

/** The jobgroup workload, attached to this process's group: the root, its kid and its zombie. */
async function start(): Promise<{ w: Awaited<ReturnType<typeof startWorkload>>; kid: number; zombie: number }> {
  const w = await startWorkload(join(WORKLOADS, 'jobgroup'), [], { attached: true });
  const [, kid, zombie] = ownTree(w);
  assert.ok(kid && zombie, 'the kid and the zombie exist');
  assert.deepEqual(groupOf(kid), mine, 'the kid is in our group');
  assert.deepEqual(groupOf(zombie), mine, 'the zombie too');
  assert.deepEqual(groupOf(w.pid), { pgid: w.pid, sid: mine.sid }, 'the root leads a group of its own');
  return { w, kid, zombie };
}

describe('a process group led from outside the tree', { skip: needs('root', 'build'), timeout: 180_000 }, () => {
  it('comes back joined (a zombie too), through two cycles', async () => {
    const { w, kid, zombie } = await start();
    const image = join(w.dir, 'job.tar');
    for (let i = 0; i < 2; i++) {
      const pids = await checkpointTreeFreed(i === 0 ? w : { pid: w.pid, exited: Promise.resolve() }, image);
      assert.deepEqual(pids.sort((a, b) => a - b), [w.pid, kid, zombie].sort((a, b) => a - b));
      const rs = ferry(['restore', '--image', image]);
      assert.equal(rs.code, 0, rs.stderr);
      own(w.pid);
      own(kid);
      assert.deepEqual(groupOf(kid), mine, `cycle ${i + 1}: the kid is in our group again`);
      assert.deepEqual(groupOf(zombie), mine, `cycle ${i + 1}: the zombie too`);
      assert.deepEqual(groupOf(w.pid), { pgid: w.pid, sid: mine.sid }, `cycle ${i + 1}: the root leads its own`);
    }
    assert.equal(await verify(w), 'PASS');
  });

  it('--leave-running leaves them as they were; the image restores them joined later', async () => {
    const { w, kid, zombie } = await start();
    const image = join(w.dir, 'job.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    for (const p of [w.pid, kid]) {
      const st = procState(p);
      assert.equal(st.tracer, 0, `pid ${p} not traced`);
      assert.ok(!'tT'.includes(st.state), `pid ${p} not stopped`);
    }
    assert.deepEqual(groupOf(kid), mine);
    assert.equal(procState(zombie).state, 'Z', 'the zombie left unreaped');
    for (const p of [kid, w.pid]) process.kill(p, 'SIGKILL');
    await w.exited;
    await waitFor('the tree to be free', () => ![w.pid, kid, zombie].some(alive), 8000);
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    assert.deepEqual(groupOf(kid), mine);
    assert.equal(await verify(w), 'PASS');
  });

  it('a restore from another session is refused in one line, before anything is made', async () => {
    const { w, kid, zombie } = await start();
    const image = join(w.dir, 'job.tar');
    await checkpointTreeFreed(w, image);
    const before = stubs().length;
    // setsid(1): ferry in a session of its own, where our group is not.
    const r = spawnSync('setsid', ['--wait', FERRY, 'restore', '--image', image], { timeout: 60_000, encoding: 'utf8' });
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`^ferry restore: pid ${kid} was in process group ${mine.pgid}, led from outside the tree, and that group is now in session ${mine.sid}, not in ferry's \\d+: run the restore from a process of the session`));
    assert.equal(r.stderr.trimEnd().split('\n').length, 1, 'one line');
    assert.ok(![w.pid, kid, zombie].some(alive), 'nothing was made');
    assert.equal(stubs().length, before, 'no stub left');
    // From our session it restores.
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    own(kid);
    assert.equal(await verify(w), 'PASS');
  });
});
