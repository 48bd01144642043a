/**
 * Unix sockets through bin/ferry, the cases beyond unix.test.ts; build/workloads/unixflight
 * checks itself after a --leave-running checkpoint (the original) and after restore (the copy):
 * - descriptors in flight: messages carrying pipes, regular files, eventfds, pidfds and unix
 *   sockets (nested, and a socket that sent itself) on stream, datagram and seqpacket sockets,
 *   with its own and its child's credentials, received again with working descriptors and the
 *   same credentials; an epoll only in flight is refused, the workload untouched;
 * - names whose files are elsewhere (unlinked with their directory, the path reused by another
 *   socket, a relative name whose file is in no working directory of the tree, or in another
 *   process's), and an unnamed datagram socket with messages whose peer was closed;
 * - a failed restore leaves nothing of its own bound that the next one in the same process
 *   would find in its way.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, WORKLOADS } from '../helpers/env.js';
import { closeFiles, openFiles } from '../../src/files/install.js';
import type { FileRecord } from '../../src/image/records.js';
import { alive, checkpointFreed, cleanup, cycleThrough, ferry, own, procState, scratchDir, startWorkload, verify, waitFor, type Workload } from '../helpers/processes.js';

const skip = needs('root', 'build');
after(cleanup);

/** The log after the first PASS (what a process restored after a verified original writes). */
const afterFirstPass = (w: Workload): Workload => ({
  ...w, text: () => readFileSync(w.log, 'utf8').split('PASS\n').slice(1).join('PASS\n'),
});

/** The workload's child (it holds the sending ends and sends with its own pid). */
function childOf(pid: number): number {
  const kids = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').split(' ').filter(Boolean).map(Number);
  assert.equal(kids.length, 1, 'one child');
  return kids[0]!;
}

/**
 * unixflight `args` (with its child) checkpointed with --leave-running: the original, left
 * running and detached, passes its check (`original` says what that means), exits; then the
 * image is restored, and the copy passes its check too.
 */
async function leaveRunningThenRestore(args: string[], original: string): Promise<void> {
  const w = await startWorkload(join(WORKLOADS, 'unixflight'), args);
  const kid = childOf(w.pid);
  own(kid);
  const image = join(w.dir, 'flight.tar');
  const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']);
  assert.equal(cp.code, 0, cp.stderr);
  assert.ok(alive(w.pid) && procState(w.pid).tracer === 0, 'left running, detached');
  assert.equal(await verify(w), 'PASS', original);
  await w.exited;
  await waitFor('the tree to be gone', () => !alive(w.pid) && !alive(kid), 8000);
  const rs = ferry(['restore', '--image', image]);
  assert.equal(rs.code, 0, rs.stderr);
  own(w.pid);
  own(kid);
  assert.equal(await verify(afterFirstPass(w)), 'PASS');
}

describe('unix sockets: descriptors in flight', { skip, timeout: 60_000 }, () => {
  it('--leave-running leaves every message and descriptor queued; the restored copy receives them too', async () => {
    await leaveRunningThenRestore(['DIR'], 'the original reads the same messages, descriptors and credentials');
  });

  it('an epoll in flight, held by no process, is refused naming where it is; the workload runs on untouched', async () => {
    const w = await startWorkload(join(WORKLOADS, 'unixflight'), ['DIR', 'epoll']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'e.tar')]);
    assert.equal(cp.code, 1);
    assert.match(cp.stderr, new RegExp(`unsupported file: anon_inode:\\[eventpoll\\], in flight in a message queued on pid ${w.pid} fd \\d+ \\(socket:\\[\\d+\\]\\) and held by no process of the tree`), cp.stderr);
    assert.ok(alive(w.pid) && procState(w.pid).tracer === 0, 'left running, detached');
    assert.equal(await verify(w), 'PASS', 'the message and its epoll are still queued');
  });

  it('come back in flight through two checkpoint/restore cycles', async () => {
    const w = await startWorkload(join(WORKLOADS, 'unixflight'), ['DIR']);
    const kid = childOf(w.pid);
    own(kid);
    const image = join(w.dir, 'flight.tar');
    await checkpointFreed(w, image);
    await waitFor('the child to be gone', () => !alive(kid), 8000);
    for (let i = 0; i < 2; i++) {
      const rs = ferry(['restore', '--image', image]);
      assert.equal(rs.code, 0, `restore ${i + 1}: ${rs.stderr}`);
      own(w.pid);
      own(kid);
      assert.equal(childOf(w.pid), kid, 'the same child');
      if (i === 1) break;
      const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image]);
      assert.equal(cp.code, 0, `checkpoint 2: ${cp.stderr}`);
      await waitFor('the tree to be free', () => !alive(w.pid) && !alive(kid), 8000);
    }
    assert.equal(await verify(w), 'PASS');
  });
});

describe('epoll items whose file only a queued message holds', { skip, timeout: 60_000 }, () => {
  it('come back registered under their numbers, their files in flight; twice in a row', async () => {
    const w = await startWorkload(join(WORKLOADS, 'epollflight'), ['DIR']);
    const image = join(w.dir, 'epflight.tar');
    // The second checkpoint finds the items the first restore added.
    for (let i = 0; i < 2; i++) await cycleThrough(w, image, i);
    assert.equal(await verify(w), 'PASS');
  });

  it('--leave-running leaves them and the message as they were; the image restores them', async () => {
    const w = await startWorkload(join(WORKLOADS, 'epollflight'), ['DIR']);
    const image = join(w.dir, 'epflight-lr.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.ok(alive(w.pid) && procState(w.pid).tracer === 0, 'left running, detached');
    assert.equal(await verify(w), 'PASS', 'the original receives the message and finds its items');
    await w.exited;
    await waitFor(`pid ${w.pid} to be free`, () => !alive(w.pid), 5000);
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.equal(await verify(afterFirstPass(w)), 'PASS');
  });

  it('an item whose file only a process outside the tree holds is still refused; the workload runs on untouched', async () => {
    const w = await startWorkload(join(WORKLOADS, 'epollflight'), ['DIR', 'outside']);
    const keeper = Number(/^outside pid=(\d+)$/m.exec(w.text())?.[1]);
    assert.ok(keeper > 0, 'the workload printed its outside process');
    own(keeper);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'outside.tar')]);
    assert.equal(cp.code, 1);
    assert.match(cp.stderr, new RegExp(`unsupported file: pid ${w.pid} fd \\d+ -> anon_inode:\\[eventpoll\\] \\(its target fd \\d+ .*neither a process of the tree holds that file under another number nor a message queued on a unix socket of the tree carries it`), cp.stderr);
    assert.ok(alive(w.pid) && procState(w.pid).tracer === 0, 'left running, detached');
    assert.equal(await verify(w), 'PASS');
  });
});

describe('unix sockets: names whose files are elsewhere, unnamed datagrams with no peer', { skip, timeout: 60_000 }, () => {
  it('come back with the same names, no path made again, after --leave-running and after a restore', async () => {
    await leaveRunningThenRestore(['DIR', 'names'], 'the original is as it was');
  });

  it('twice in a row: checkpoint, restore, checkpoint, restore', async () => {
    const w = await startWorkload(join(WORKLOADS, 'unixflight'), ['DIR', 'names']);
    const kid = childOf(w.pid);
    own(kid);
    const image = join(w.dir, 'names.tar');
    await checkpointFreed(w, image);
    await waitFor('the child to be gone', () => !alive(kid), 8000);
    let rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    own(kid);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image]);
    assert.equal(cp.code, 0, cp.stderr);
    await waitFor('the tree to be free', () => !alive(w.pid) && !alive(kid), 8000);
    rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    assert.equal(await verify(w), 'PASS');
  });
});

describe('unix sockets: a restore never collides with its own descriptors', { skip, timeout: 30_000 }, () => {
  it('a failed restore leaves no socket of its own bound: the same records restore next in the same process', () => {
    const path = join(scratchDir(), 'pair.sock');
    const base = {
      kind: 'unix', ino: '0', flags: 0, shutdown: 0, listener: null, queue: null,
      opts: { passcred: 0, passsec: 0, passpidfd: 0, rcvbuf: 8192, sndbuf: 8192, peekOff: -1, rcvlowat: 1 },
    };
    // A datagram pair whose second end is bound to `path`: the first end's open makes both and
    // keeps the second for its record; then a socket that cannot be restored fails the restore.
    const a: FileRecord = { ...base, id: 1, type: 'dgram', role: 'pair', name: null, peer: 2 };
    const b: FileRecord = { ...base, id: 2, type: 'dgram', role: 'pair', name: { path, file: { mode: 0o755, uid: 0, gid: 0 } }, peer: 1 };
    const bad: FileRecord = { ...base, id: 3, type: 'stream', role: 'external', name: null, peer: null, external: { abstract: 'eA==' } };
    assert.throws(() => openFiles([a, bad, b]), /--ext-unix-sk/);
    const files = openFiles([a, b]);
    try {
      assert.equal(files.opened.size, 2);
    } finally {
      closeFiles(files.opened);
    }
  });
});
