/**
 * Process groups led from outside the tree: a child left in its shell's job group when its
 * parent made a group of its own comes back into that group, when the group still exists in
 * the session the restore runs in; elsewhere the restore is refused before anything is made.
 * A group of a session the tree leads whose leader exited (a pipeline whose first process
 * ended) comes back with its id, the leader gone again, also into a v1 pids cgroup the tree
 * fills exactly (the process holding the id for a moment must not count there); one whose
 * leader runs on outside the tree is refused at checkpoint.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { SIGKILL } from '../../src/arch/x86-64.js';
import { defaultStubPath, native } from '../../src/native/binding.js';
import { rmCgroupTree } from '../helpers/cgroups.js';
import { FERRY, needs, WORKLOADS } from '../helpers/env.js';
import { editImage, json } from '../helpers/images.js';
import {
  alive, checkpointTreeFreed, cleanup, ferry, own, ownTree, procState, startWorkload, stubs, verify, waitFor,
} from '../helpers/processes.js';

/** The v1 pids cgroup the orphan test makes (unique name), removed after. */
const PIDS_CG = `/sys/fs/cgroup/pids/ferry-test-groups-${process.pid}-${Date.now().toString(36)}`;

after(async () => {
  cleanup();
  await rmCgroupTree(PIDS_CG).catch(() => {});
});

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

/** The orphangroup workload: its root, the group whose leader exited, and the members left in it. */
async function startOrphans(mode: string[] = []): Promise<{ w: Awaited<ReturnType<typeof startWorkload>>; group: number; members: number[] }> {
  const w = await startWorkload(join(WORKLOADS, 'orphangroup'), mode);
  const m = /ready pid=\d+ group=(\d+) members=([\d,]+)/.exec(w.text());
  assert.ok(m, w.text());
  const group = Number(m[1]);
  const members = m[2]!.split(',').map(Number);
  members.forEach(own);
  for (const p of members) assert.deepEqual(groupOf(p), { pgid: group, sid: w.pid }, `member ${p} is in group ${group} of the root's session`);
  return { w, group, members };
}

describe('a process group whose leader exited, in a session the tree leads', { skip: needs('root', 'build'), timeout: 180_000 }, () => {
  it('comes back with its id and members, the leader as gone as before, through two cycles', async () => {
    const { w, group, members } = await startOrphans();
    assert.ok(!alive(group), 'no process has the group id');
    const image = join(w.dir, 'orphans.tar');
    const before = stubs().length;
    for (let i = 0; i < 2; i++) {
      const pids = await checkpointTreeFreed(i === 0 ? w : { pid: w.pid, exited: Promise.resolve() }, image);
      assert.deepEqual(pids.sort((a, b) => a - b), [w.pid, ...members].sort((a, b) => a - b));
      const rs = ferry(['restore', '--image', image]);
      assert.equal(rs.code, 0, rs.stderr);
      own(w.pid);
      for (const p of members) {
        assert.deepEqual(groupOf(p), { pgid: group, sid: w.pid }, `cycle ${i + 1}: member ${p} is in group ${group} again`);
        assert.equal(procState(p).ppid, w.pid, `cycle ${i + 1}: member ${p} is the root's child`);
      }
      // The process that held the group id exited and was reaped (the members check they have
      // no child left, zombie or not).
      assert.ok(!alive(group), `cycle ${i + 1}: no process has pid ${group}`);
      assert.equal(stubs().length, before, `cycle ${i + 1}: no stub left`);
    }
    assert.equal(await verify(w), 'PASS');
  });

  it('--leave-running leaves it as it was; the image restores it later', async () => {
    const { w, group, members } = await startOrphans();
    const image = join(w.dir, 'orphans.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    for (const p of [w.pid, ...members]) {
      const st = procState(p);
      assert.equal(st.tracer, 0, `pid ${p} not traced`);
      assert.ok(!'tT'.includes(st.state), `pid ${p} not stopped`);
    }
    for (const p of members) assert.deepEqual(groupOf(p), { pgid: group, sid: w.pid });
    // While the tree runs its pids are taken: the restore is refused, nothing made.
    const busy = ferry(['restore', '--image', image]);
    assert.equal(busy.code, 1);
    assert.equal(busy.stderr.trimEnd().split('\n').length, 1, busy.stderr);
    for (const p of [...members, w.pid]) process.kill(p, 'SIGKILL');
    await w.exited;
    await waitFor('the tree to be free', () => ![w.pid, ...members].some(alive), 8000);
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    for (const p of members) assert.deepEqual(groupOf(p), { pgid: group, sid: w.pid });
    assert.ok(!alive(group));
    assert.equal(await verify(w), 'PASS');
  });

  it('in a pids cgroup whose pids.max is the tree\'s size, comes back into it with --manage-cgroups', {
    skip: existsSync('/sys/fs/cgroup/pids/cgroup.procs') ? false : 'needs the v1 pids controller at /sys/fs/cgroup/pids (a hybrid host)',
  }, async () => {
    const { w, group, members } = await startOrphans();
    const tree = [w.pid, ...members];
    mkdirSync(PIDS_CG);
    for (const p of tree) writeFileSync(join(PIDS_CG, 'cgroup.procs'), String(p));
    // Moving in is not limited; forking is: the tree alone fills it, as the group's exited
    // leader left it.
    writeFileSync(join(PIDS_CG, 'pids.max'), String(tree.length));
    const image = join(w.dir, 'orphans.tar');
    await checkpointTreeFreed(w, image);
    // Soft: the cgroup exists, its limit stays; the process holding the group id for a moment
    // must not count in it.
    const rs = ferry(['restore', '--image', image, '--manage-cgroups']);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.equal(readFileSync(join(PIDS_CG, 'pids.max'), 'utf8').trim(), String(tree.length));
    const inside = readFileSync(join(PIDS_CG, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
    assert.deepEqual(inside.sort((a, b) => a - b), [...tree].sort((a, b) => a - b), 'the tree, and only it, is in the cgroup');
    for (const p of members) assert.deepEqual(groupOf(p), { pgid: group, sid: w.pid });
    assert.ok(!alive(group), 'no process has the group id');
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('its id held by another process at restore is refused in one line, before anything is made; a retry restores', async () => {
    const { w, group, members } = await startOrphans();
    const image = join(w.dir, 'orphans.tar');
    await checkpointTreeFreed(w, image);
    const before = stubs().length;
    // A stub with exactly the group's id (clone3 set_tid), this process's traced child.
    const n = native();
    const holder = n.spawnStub(defaultStubPath(), [group]);
    assert.equal(holder, group);
    try {
      const rs = ferry(['restore', '--image', image]);
      assert.equal(rs.code, 1, rs.stderr);
      assert.match(rs.stderr, new RegExp(`^ferry restore: pid ${group} \\(the id of process group ${group}, whose leader had exited\\) is in use by another process`));
      assert.equal(rs.stderr.trimEnd().split('\n').length, 1, 'one line');
      assert.ok(![w.pid, ...members].some(alive), 'nothing was made');
      assert.equal(stubs().length, before + 1, 'no stub left but the holder');
    } finally {
      n.tgkill(holder, holder, SIGKILL);
      n.waitpid(holder);
    }
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.equal(await verify(w), 'PASS');
  });

  it('an edited image with the group in two sessions is refused in one line, before anything is made', async () => {
    const { w, group, members } = await startOrphans();
    const image = join(w.dir, 'orphans.tar');
    await checkpointTreeFreed(w, image);
    const bad = join(w.dir, 'bad.tar');
    // The second member claims a session of its own while staying in the group.
    await editImage(image, bad, { 'tree.json': json<{ processes: Array<{ pid: number; sid: number }> }>((v) => {
      v.processes.find((p) => p.pid === members[1])!.sid = members[1]!;
    }) });
    const before = stubs().length;
    const r = ferry(['restore', '--image', bad]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`pid ${members[1]} is in process group ${group} of session ${members[1]}, another member of it in session ${w.pid}`));
    assert.equal(r.stderr.trimEnd().split('\n').length, 1, 'one line');
    assert.ok(![w.pid, ...members, group].some(alive), 'nothing was made');
    assert.equal(stubs().length, before, 'no stub left');
  });

  it('a group whose leader runs on outside the tree is refused in one line; the tree runs on', async () => {
    const { w, group, members } = await startOrphans(['outside']);
    own(group); // the leader, adopted by init
    assert.ok(alive(group), 'the leader runs');
    assert.notEqual(procState(group).ppid, w.pid, 'outside the tree');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'no.tar')]);
    assert.equal(cp.code, 1, cp.stderr);
    assert.match(cp.stderr, new RegExp(`^ferry checkpoint: pid ${members[0]} is in process group ${group} of session ${w.pid}, which the tree leads, but the group is led from outside the tree \\(by pid ${group}, which exists: running, or a zombie its parent has not reaped\\)`));
    assert.equal(cp.stderr.trimEnd().split('\n').length, 1, 'one line');
    for (const p of [w.pid, ...members]) {
      const st = procState(p);
      assert.equal(st.tracer, 0, `pid ${p} not traced`);
      assert.ok(!'tT'.includes(st.state), `pid ${p} not stopped`);
    }
    for (const p of members) assert.deepEqual(groupOf(p), { pgid: group, sid: w.pid });
    process.kill(group, 'SIGKILL');
  });
});
