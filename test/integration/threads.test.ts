/**
 * Multi-threaded processes: every thread comes back with its TID, registers, mask, altstack,
 * name and TLS, and threads parked in futex, nanosleep and poll waits go on; a thread with a
 * root, working directory and umask of its own (unshare(2) of CLONE_FS) comes back with them
 * (a removed working directory as a removed directory, one with its other holders),
 * and one with a descriptor table of its own (unshare(2) of CLONE_FILES) with it.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, WORKLOADS } from '../helpers/env.js';
import { cleanup, cycleThrough, ferry, own, procState, refuseEdited, startWorkload, verify } from '../helpers/processes.js';
import type { TaskRecord, ThreadFsRecord } from '../../src/image/records.js';

after(cleanup);

const tids = (pid: number): number[] => readdirSync(`/proc/${pid}/task`).map(Number).sort((a, b) => a - b);

describe('threads', { skip: needs('root', 'build'), timeout: 180_000 }, () => {
  it('a process with 64 threads survives two cycles with every TID', async () => {
    const w = await startWorkload(join(WORKLOADS, 'threads'), ['64']);
    const before = tids(w.pid);
    assert.equal(before.length, 65);
    const image = join(w.dir, 'threads.tar');
    for (let i = 0; i < 2; i++) {
      await cycleThrough(w, image, i);
      assert.deepEqual(tids(w.pid), before, 'same thread ids');
      for (const tid of before) assert.equal(procState(tid).tracer, 0, `thread ${tid} not traced`);
    }
    assert.equal(await verify(w), 'PASS');
  });

  it('--leave-running on a threaded process leaves every thread running', async () => {
    const w = await startWorkload(join(WORKLOADS, 'threads'), ['16']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 't.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    for (const tid of tids(w.pid)) {
      const st = procState(tid);
      assert.equal(st.tracer, 0);
      assert.ok(!'tT'.includes(st.state), `thread ${tid} not stopped`);
    }
    assert.equal(await verify(w), 'PASS');
  });
});

/** The working directory, root and umask of thread `tid` of `pid`, as /proc shows them. */
function fsOf(pid: number, tid: number): { cwd: string; root: string; umask: string } {
  const umask = /^Umask:\s*(\d+)$/m.exec(readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8'))?.[1] ?? '?';
  return { cwd: readlinkSync(`/proc/${pid}/task/${tid}/cwd`), root: readlinkSync(`/proc/${pid}/task/${tid}/root`), umask };
}

/** Device and inode of what /proc/PID/`link` leads to, and its link count. */
function dirOf(pid: number, link: string): string {
  const st = statSync(`/proc/${pid}/${link}`);
  return `${st.dev}:${st.ino} nlink ${st.nlink}`;
}

describe('a thread with a root, working directory and umask of its own', { skip: needs('root', 'build'), timeout: 180_000 }, () => {
  // leader: the main thread unshare(2)d, the other one kept the fs struct they shared.
  // removed: the thread's working directory was removed; -fd: the process holds it open too,
  // -cwd: it is the process's working directory too (one directory for both after restore).
  for (const mode of ['cwd', 'chroot', 'leader', 'removed', 'removed-fd', 'removed-cwd']) {
    it(`${mode}: survives two cycles with them, its process with its own`, async () => {
      const w = await startWorkload(join(WORKLOADS, 'threadfs'), mode === 'cwd' ? [] : [mode]);
      const [leader, thread] = tids(w.pid);
      const want = { leader: fsOf(w.pid, leader!), thread: fsOf(w.pid, thread!) };
      const b = join(w.dir, 'b') + (mode.startsWith('removed') ? ' (deleted)' : '');
      assert.deepEqual(want.leader, { cwd: mode === 'removed-cwd' ? b : join(w.dir, 'a'), root: '/', umask: '0022' });
      assert.deepEqual(want.thread, { cwd: b, root: mode === 'chroot' ? join(w.dir, 'b') : '/', umask: '0077' });
      // The other holder of the thread's removed working directory, if any.
      const other = mode === 'removed-fd' ? 'fd/10' : mode === 'removed-cwd' ? 'cwd' : undefined;
      const image = join(w.dir, 'threadfs.tar');
      for (let i = 0; i < 2; i++) {
        await cycleThrough(w, image, i);
        assert.deepEqual(tids(w.pid), [leader, thread], 'same thread ids');
        assert.deepEqual({ leader: fsOf(w.pid, leader!), thread: fsOf(w.pid, thread!) }, want, `cycle ${i + 1}: each its own`);
        if (mode.startsWith('removed')) {
          const here = dirOf(w.pid, `task/${thread!}/cwd`);
          assert.match(here, / nlink 0$/, `cycle ${i + 1}: a removed directory`);
          if (other !== undefined) assert.equal(dirOf(w.pid, other), here, `cycle ${i + 1}: one directory with the process's ${other}`);
        }
      }
      assert.equal(await verify(w), 'PASS', w.text());
    });
  }

  for (const mode of ['chroot', 'removed-fd']) {
    it(`${mode}: --leave-running leaves it running with them`, async () => {
      const w = await startWorkload(join(WORKLOADS, 'threadfs'), [mode]);
      const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
      assert.equal(cp.code, 0, cp.stderr);
      for (const tid of tids(w.pid)) assert.equal(procState(tid).tracer, 0, `thread ${tid} not traced`);
      assert.equal(await verify(w), 'PASS', w.text());
    });
  }

  it('an image giving the leader an fs of its own, or an unsigned one a thread a root it could not make, is refused with one line, nothing made', async () => {
    const w = await startWorkload(join(WORKLOADS, 'threadfs'), ['chroot']);
    const image = join(w.dir, 'lr.tar');
    assert.equal(ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']).code, 0);
    const entry = `tasks/${w.pid}/task.json`;
    const cases: Array<[string, (t: TaskRecord) => void, RegExp]> = [
      ['leader.tar', (t) => { t.threads[0]!.fs = { cwd: '/', umask: 0o22 }; }, /image entry tasks\/\d+\/task\.json is invalid: threads\[0\]\.fs is there/],
      ['root.tar', (t) => { t.creds.threads[1]!.caps.effective = '0x0'; },
        new RegExp(`would be restored with its thread \\d+ chroot'ed into ${join(w.dir, 'b')}, which that thread could not do itself`)],
    ];
    await refuseEdited(w, image, entry, cases);
  });

  it('an image whose thread\'s removed working directory disagrees with its other holders, or is out of bounds, is refused with one line, nothing made', async () => {
    for (const mode of ['removed-fd', 'removed-cwd']) {
      const w = await startWorkload(join(WORKLOADS, 'threadfs'), [mode]);
      const image = join(w.dir, 'lr.tar');
      assert.equal(ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']).code, 0);
      const entry = `tasks/${w.pid}/task.json`;
      const fs = (t: TaskRecord): ThreadFsRecord => t.threads[1]!.fs!;
      const cases: Array<[string, (t: TaskRecord) => void, RegExp]> = mode === 'removed-fd' ? [
        ['mode.tar', (t) => { fs(t).cwdDeleted!.mode = 0o700; }, /file \d+ holds the removed working directory \S+ of pid \d+ \(device \d+, inode \d+\) with another mode or owner/],
        ['path.tar', (t) => { fs(t).cwd = join(w.dir, 'elsewhere'); }, /file \d+ holds the removed working directory of pid \d+ \(device \d+, inode \d+\) at another place/],
        ['ino.tar', (t) => { (fs(t).cwdDeleted as unknown as { ino: unknown }).ino = 'x'; },
          /image entry tasks\/\d+\/task\.json is invalid: threads\[1\]\.fs\.cwdDeleted\.ino must be a string of at most 20 decimal digits/],
        ['uid.tar', (t) => { fs(t).cwdDeleted!.uid = 2 ** 32; }, /image entry tasks\/\d+\/task\.json is invalid: threads\[1\]\.fs\.cwdDeleted\.uid must be/],
      ] : [
        ['path.tar', (t) => { fs(t).cwd = join(w.dir, 'elsewhere'); },
          /pid \d+ and thread \d+ of pid \d+ have the same removed working directory \(device \d+, inode \d+\) with another path, mode or owner/],
        ['owner.tar', (t) => { fs(t).cwdDeleted!.gid = 4242; },
          /pid \d+ and thread \d+ of pid \d+ have the same removed working directory \(device \d+, inode \d+\) with another path, mode or owner/],
      ];
      await refuseEdited(w, image, entry, cases);
    }
  });

  const refused: Array<[string, RegExp]> = [
    ['removed-root', /^ferry checkpoint: thread \d+ of pid \d+ has a root, working directory and umask of its own \(unshare\(2\) of CLONE_FS\) and its root directory \S+ was removed, which restore cannot rebuild yet for a thread/],
    ['shared', /^ferry checkpoint: thread \d+ of pid \d+ has a root, working directory and umask of its own \(unshare\(2\) of CLONE_FS\) that thread \d+ of pid \d+ shares, which restore cannot rebuild yet/],
    ['child', /^ferry checkpoint: thread \d+ of pid \d+ has a root, working directory and umask of its own \(unshare\(2\) of CLONE_FS\) that pid \d+ shares, which restore cannot rebuild yet/],
  ];
  for (const [mode, message] of refused) {
    it(`${mode}: refused with one line; the process runs on as it was`, async () => {
      const w = await startWorkload(join(WORKLOADS, 'threadfs'), [mode]);
      // The child mode's child, a child of the thread: killed by cleanup() if the test fails.
      const kids = tids(w.pid).flatMap((tid) => readFileSync(`/proc/${w.pid}/task/${tid}/children`, 'utf8').split(/\s+/).filter(Boolean).map(Number));
      kids.forEach(own);
      assert.equal(kids.length, mode === 'child' ? 1 : 0);
      const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'x.tar')]);
      assert.equal(cp.code, 1, cp.stderr);
      assert.match(cp.stderr, message);
      assert.equal(cp.stderr.trimEnd().split('\n').length, 1, 'one line');
      for (const tid of [...tids(w.pid), ...kids]) assert.equal(procState(tid).tracer, 0, `task ${tid} not traced`);
      assert.equal(await verify(w), 'PASS', w.text());
    });
  }
});

/** Descriptor numbers of thread `tid` of `pid` with what each names (a pipe's or anon inode's number left out). */
function fdsOf(pid: number, tid: number): string[] {
  const dir = `/proc/${pid}/task/${tid}/fd`;
  return readdirSync(dir).map(Number).sort((a, b) => a - b)
    .map((fd) => `${fd} ${readlinkSync(`${dir}/${fd}`).replace(/^(pipe|socket):\[\d+\]$/, '$1')}`);
}

describe('a thread with a descriptor table of its own', { skip: needs('root', 'build'), timeout: 180_000 }, () => {
  it('survives two cycles with it, its process with its own', async () => {
    const w = await startWorkload(join(WORKLOADS, 'threadfds'), []);
    const [leader, thread] = tids(w.pid);
    const want = { leader: fdsOf(w.pid, leader!), thread: fdsOf(w.pid, thread!) };
    // Opened only in one table each: not in the other.
    assert.ok(want.leader.includes(`30 ${join(w.dir, 'leader-only.txt')}`) && !want.thread.some((l) => l.startsWith('30 ')), JSON.stringify(want));
    assert.ok(want.thread.includes(`20 ${join(w.dir, 'thread.txt')}`) && !want.leader.some((l) => l.startsWith('20 ')), JSON.stringify(want));
    const image = join(w.dir, 'threadfds.tar');
    for (let i = 0; i < 2; i++) {
      await cycleThrough(w, image, i);
      assert.deepEqual(tids(w.pid), [leader, thread], 'same thread ids');
      assert.deepEqual({ leader: fdsOf(w.pid, leader!), thread: fdsOf(w.pid, thread!) }, want, `cycle ${i + 1}: each its own table`);
    }
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('--leave-running leaves it running with it', async () => {
    const w = await startWorkload(join(WORKLOADS, 'threadfds'), []);
    const [leader, thread] = tids(w.pid);
    const want = { leader: fdsOf(w.pid, leader!), thread: fdsOf(w.pid, thread!) };
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    for (const tid of tids(w.pid)) assert.equal(procState(tid).tracer, 0, `thread ${tid} not traced`);
    assert.deepEqual({ leader: fdsOf(w.pid, leader!), thread: fdsOf(w.pid, thread!) }, want, 'nothing taken into ferry is left in either table');
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('an image giving the leader a table of its own, or a thread a file files.json lacks, is refused with one line, nothing made', async () => {
    const w = await startWorkload(join(WORKLOADS, 'threadfds'), []);
    const image = join(w.dir, 'lr.tar');
    assert.equal(ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']).code, 0);
    const entry = `tasks/${w.pid}/task.json`;
    const cases: Array<[string, (t: TaskRecord) => void, RegExp]> = [
      ['leader.tar', (t) => { t.threads[0]!.fds = []; }, /image entry tasks\/\d+\/task\.json is invalid: threads\[0\]\.fds is there/],
      ['twice.tar', (t) => { t.threads[1]!.fds!.push({ ...t.threads[1]!.fds![0]! }); }, /threads\[1\]\.fds\[\d+\]: descriptor \d+ is listed twice/],
      ['nofile.tar', (t) => { t.threads[1]!.fds![0]!.file = 999_999; },
        new RegExp(`fd \\d+ of thread ${t1(w.pid)} of pid ${w.pid} names file 999999, which files.json does not list`)],
    ];
    await refuseEdited(w, image, entry, cases);
  });

  const refused: Array<[string, string[], RegExp]> = [
    ['epoll', [], /^ferry checkpoint: unsupported file: fd 25 of thread \d+ of pid \d+ -> anon_inode:\[eventpoll\] is an epoll, in a descriptor table of the thread's own \(unshare\(2\) of CLONE_FILES\)/],
    // A POSIX lock belongs to the table it was taken through: the thread's, not its process's.
    ['lock', ['--file-locks'], /^ferry checkpoint: unsupported file: fd 13 of thread \d+ of pid \d+ -> \S+shared\.txt is a file locked through it \(\d+: POSIX .*\), in a descriptor table of the thread's own/],
  ];
  for (const [mode, flags, message] of refused) {
    it(`${mode} in its table: refused with one line; the process runs on as it was`, async () => {
      const w = await startWorkload(join(WORKLOADS, 'threadfds'), [mode]);
      const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'x.tar'), ...flags]);
      assert.equal(cp.code, 1, cp.stderr);
      assert.match(cp.stderr, message);
      assert.equal(cp.stderr.trimEnd().split('\n').length, 1, 'one line');
      for (const tid of tids(w.pid)) assert.equal(procState(tid).tracer, 0, `thread ${tid} not traced`);
      assert.equal(await verify(w), 'PASS', w.text());
    });
  }
});

/** The second thread of `pid`. */
function t1(pid: number): number {
  return tids(pid)[1]!;
}
