/**
 * Files under /proc/PID/ held open, through bin/ferry: build/workloads/procfds holds its own
 * /proc/self/stat (past its start), its child's status and maps, its main thread's comm, its
 * /proc directory and /proc/1/stat, and its child its own /proc/self/stat; after restore each
 * checks they name the same (restored) process (the maps its restored address space). It
 * also holds the stat and directory of a child it reaped (they come back naming that pid, a
 * dead task: ESRCH), and an epoll watching its /proc/self/mountinfo (it reports a mount
 * after restore); an edited image with an invalid reaped process's file is refused before
 * anything is made.
 * build/workloads/threadproc holds /proc files of a thread other than its main one (the
 * thread's own /proc/thread-self/stat and directory, its status held by the main thread, its
 * stat held by a child): after restore they read the restored thread, renamed since, at their
 * offsets and with their flags; --leave-running leaves them as they were. One in flight
 * (SCM_RIGHTS queued on a unix socket) or watched by an epoll is refused with the tree left
 * running, and so is the file of a thread that has exited; an edited image
 * naming a thread the tree does not have fails the restore with nothing left, and one with an
 * epoll watching such a file or a queued message carrying one is refused before anything is
 * made.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, WORKLOADS } from '../helpers/env.js';
import { editImage, json } from '../helpers/images.js';
import { alive, checkpointTreeFreed, cleanup, ferry, procState, startWorkload, stubs, verify } from '../helpers/processes.js';

const skip = needs('root', 'build');
after(cleanup);

const PROCFDS = join(WORKLOADS, 'procfds');

/** The file records of `image`. */
const imageFiles = (image: string): Array<Record<string, unknown>> =>
  (JSON.parse(spawnSync('tar', ['-xOf', image, 'files.json'], { encoding: 'utf8' }).stdout) as { files: Array<Record<string, unknown>> }).files;
const THREADPROC = join(WORKLOADS, 'threadproc');

describe('/proc files of the tree', { skip, timeout: 120_000 }, () => {
  it('come back naming the restored processes, with their offsets', async () => {
    const w = await startWorkload(PROCFDS, ['DIR']);
    const image = join(w.dir, 'proc.tar');
    await checkpointTreeFreed(w, image);
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    assert.equal(await verify(w), 'PASS');
  });

  it('--leave-running leaves the original as it was', async () => {
    const w = await startWorkload(PROCFDS, ['DIR']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS');
  });

  it('a thread\'s /proc files come back naming the restored thread, twice in a row', async () => {
    const w = await startWorkload(THREADPROC, []);
    for (let i = 0; i < 2; i++) {
      const image = join(w.dir, `thread${i}.tar`);
      await checkpointTreeFreed(w, image);
      const threads = imageFiles(image).filter((f) => f.kind === 'procfile' && typeof f.thread === 'number');
      assert.equal(threads.length, 4, `the four files of the worker thread are recorded by its tid: ${JSON.stringify(threads)}`);
      const rs = ferry(['restore', '--image', image]);
      assert.equal(rs.code, 0, rs.stderr);
    }
    assert.equal(await verify(w), 'PASS');
  });

  it('--leave-running leaves a thread\'s /proc files as they were', async () => {
    const w = await startWorkload(THREADPROC, []);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS');
  });

  it('a thread\'s /proc file in flight is refused in one line, the tree left running as it was', async () => {
    const w = await startWorkload(THREADPROC, ['inflight']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'flight.tar')]);
    assert.equal(cp.code, 1, cp.stderr);
    assert.equal(cp.stderr.trim().split('\n').length, 1, cp.stderr);
    assert.match(cp.stderr, /unsupported file: \/proc\/\d+\/task\/\d+\/stat, in flight .*a \/proc file of a thread, which restore opens only after the queued messages are put back/);
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS');
  });

  it('a thread\'s /proc file an epoll watches is refused in one line, the tree left running as it was', async () => {
    const w = await startWorkload(THREADPROC, ['epoll']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'epoll.tar')]);
    assert.equal(cp.code, 1, cp.stderr);
    assert.equal(cp.stderr.trim().split('\n').length, 1, cp.stderr);
    assert.match(cp.stderr, /unsupported file: \/proc\/\d+\/task\/\d+\/mounts, watched by an epoll \(item fd \d+\): a \/proc file of a thread/);
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS');
  });

  it('the /proc file of a thread that has exited is refused in one line, the tree left running as it was', async () => {
    const w = await startWorkload(THREADPROC, ['exited']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'exited.tar')]);
    assert.equal(cp.code, 1, cp.stderr);
    assert.equal(cp.stderr.trim().split('\n').length, 1, cp.stderr);
    assert.match(cp.stderr, new RegExp(`unsupported file: pid ${w.pid} fd \\d+ -> /proc/${w.pid}/task/(\\d+)/stat \\(a /proc file of thread \\1 of pid ${w.pid}, `
      + 'which has exited: restore has no thread to open it through; close the descriptor\\)'));
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS');
  });

  it('an edited image naming a thread not in the tree is refused in one line, before anything is made', async () => {
    const w = await startWorkload(THREADPROC, []);
    const image = join(w.dir, 'thread.tar');
    const pids = await checkpointTreeFreed(w, image);
    const edited = join(w.dir, 'edited.tar');
    await editImage(image, edited, {
      'files.json': json<{ files: Array<Record<string, unknown>> }>((v) => {
        for (const f of v.files) if (f.kind === 'procfile' && typeof f.thread === 'number') f.thread = 4194000;
      }),
    });
    const before = stubs();
    const rs = ferry(['restore', '--image', edited, '--max-creds', 'root']);
    assert.equal(rs.code, 1, rs.stderr);
    assert.match(rs.stderr, new RegExp(`image ${edited}: file \\d+ \\(procfile\\) names thread 4194000 of pid ${w.pid}, which is not a thread of the image: `
      + 'refused \\(an edited image\\); nothing was restored'));
    assert.equal(rs.stderr.trim().split('\n').length, 1, rs.stderr);
    assert.deepEqual(stubs().filter((p) => !before.includes(p)), [], 'no restore stub was made');
    assert.ok(pids.every((p) => !alive(p)), 'no process of the tree was made');
  });

  it('an edited image with an epoll watching a thread\'s /proc file, or a message carrying one, is refused before anything is made', async () => {
    const w = await startWorkload(THREADPROC, []);
    const image = join(w.dir, 'thread.tar');
    const pids = await checkpointTreeFreed(w, image);
    const before = stubs();
    for (const [name, add] of [
      ['epoll', (thread: number, id: number) => ({ id, kind: 'eventpoll', flags: 0, targets: [{ fd: 900, file: thread, events: 1, data: '0x0' }] })],
      ['unix', (thread: number, id: number) => ({ id, kind: 'unix', fds: [[thread]] })],
    ] as const) {
      const edited = join(w.dir, `${name}.tar`);
      let names = '';
      await editImage(image, edited, {
        'files.json': json<{ files: Array<Record<string, unknown>> }>((v) => {
          const thread = v.files.find((f) => f.kind === 'procfile' && typeof f.thread === 'number')!.id as number;
          const id = Math.max(...v.files.map((f) => f.id as number)) + 1;
          names = `file ${id} \\(${add(thread, id).kind}\\) names file ${thread}`;
          v.files.push(add(thread, id));
        }),
      });
      const rs = ferry(['restore', '--image', edited, '--max-creds', 'root']);
      assert.equal(rs.code, 1, rs.stderr);
      assert.equal(rs.stderr.trim().split('\n').length, 1, rs.stderr);
      assert.match(rs.stderr, new RegExp(`${names}, a /proc file of a thread, as an epoll item or a file in flight .*refused \\(an edited image\\); nothing was restored`));
      assert.deepEqual(stubs().filter((p) => !before.includes(p)), [], 'no restore stub was made');
      assert.ok(pids.every((p) => !alive(p)), 'no process of the tree was made');
    }
  });

  it('an edited image with an invalid reaped process\'s file is refused in one line, before anything is made', async () => {
    const w = await startWorkload(PROCFDS, ['DIR']);
    const image = join(w.dir, 'proc.tar');
    await checkpointTreeFreed(w, image);
    const gone = imageFiles(image).filter((f) => f.kind === 'procfile' && typeof f.gone === 'number');
    assert.equal(gone.length, 2, `the reaped child's stat and directory are recorded by its pid: ${JSON.stringify(gone)}`);
    const before = stubs();
    for (const [name, edit] of [
      ['thread', (f: Record<string, unknown>) => { f.thread = 5; }],
      ['pid', (f: Record<string, unknown>) => { f.gone = 4194305; }],
      ['target', (f: Record<string, unknown>) => { f.target = f.gone; }],
      ['path', (f: Record<string, unknown>) => { f.sub = '/../1/stat'; }],
    ] as const) {
      const edited = join(w.dir, `${name}.tar`);
      await editImage(image, edited, {
        'files.json': json<{ files: Array<Record<string, unknown>> }>((v) => {
          for (const f of v.files) {
            if (f.kind === 'procfile' && typeof f.gone === 'number') edit(f);
            // /proc/1/stat made the process's own: an unsigned image may not hold the outsider's.
            else if (f.kind === 'procfile' && f.target === null) Object.assign(f, { target: w.pid, sub: '/stat' });
          }
        }),
      });
      const rs = ferry(['restore', '--image', edited, '--max-creds', 'root']);
      assert.equal(rs.code, 1, rs.stderr);
      assert.equal(rs.stderr.trim().split('\n').length, 1, rs.stderr);
      assert.match(rs.stderr, /image: file \d+ \(kind procfile\) has an invalid (reaped process \(gone\)|path)/);
      assert.deepEqual(stubs().filter((p) => !before.includes(p)), [], 'no restore stub was made');
      assert.ok(!alive(w.pid), 'the tree was not made');
    }
  });

  it('an untrusted image may not open a /proc file of a process outside its tree', async () => {
    const w = await startWorkload(PROCFDS, ['DIR']);
    const image = join(w.dir, 'proc.tar');
    await checkpointTreeFreed(w, image);
    const edited = join(w.dir, 'edited.tar');
    await editImage(image, edited, { 'files.json': json(() => undefined) });
    const before = stubs();
    const rs = ferry(['restore', '--image', edited, '--max-creds', 'root']);
    assert.equal(rs.code, 1);
    assert.match(rs.stderr, /file \d+ \("\/proc\/1\/stat"\) is a \/proc file of a process outside the image's tree, which restore would open as root/);
    assert.ok(!alive(w.pid));
    assert.deepEqual(stubs(), before, 'no stub left');
  });

  it('an untrusted image may not have restore make a process at a reaped process\'s pid', async () => {
    const w = await startWorkload(PROCFDS, ['DIR']);
    const image = join(w.dir, 'proc.tar');
    await checkpointTreeFreed(w, image);
    const edited = join(w.dir, 'edited.tar');
    await editImage(image, edited, {
      'files.json': json<{ files: Array<Record<string, unknown>> }>((v) => {
        // /proc/1/stat made the process's own: the reaped child's files are what is left to refuse.
        for (const f of v.files) if (f.kind === 'procfile' && f.target === null && f.gone === undefined) Object.assign(f, { target: w.pid, sub: '/stat' });
      }),
    });
    const before = stubs();
    const rs = ferry(['restore', '--image', edited, '--max-creds', 'root']);
    assert.equal(rs.code, 1, rs.stderr);
    assert.equal(rs.stderr.trim().split('\n').length, 1, rs.stderr);
    assert.match(rs.stderr, /file \d+ \(\/proc\/\d+(\/stat)?\) is a \/proc file of a process already reaped, which restore opens through a process of its own made at that pid: only an image this host signed or one you trust/);
    assert.ok(!alive(w.pid));
    assert.deepEqual(stubs(), before, 'no stub left');
  });
});
