/**
 * Unix sockets through bin/ferry: build/workloads/unixsk (a parent and a child) holds unix
 * sockets in every state the unix module keeps and checks them itself after restore; a
 * refusal (a peer outside the tree) leaves the process running as it was; a descriptor in
 * flight comes back in flight (test/integration/unix-flight.test.ts has every combination).
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, WORKLOADS } from '../helpers/env.js';
import { alive, cleanup, cycleThrough, ferry, own, procState, scratchDir, sleep, startWorkload, verify, waitFor, type Workload } from '../helpers/processes.js';

const skip = needs('root', 'build');
after(cleanup);

/** Pids of the workload's processes: the parent and its children. */
function treeOf(pid: number): number[] {
  const kids = readdirSync(`/proc/${pid}/task`).flatMap((t) =>
    readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').split(' ').filter(Boolean).map(Number));
  return [pid, ...kids];
}

/** The log after the first PASS (what a process restored after a verified original writes). */
const afterFirstPass = (w: Workload): Workload => ({
  ...w, text: () => readFileSync(w.log, 'utf8').split('PASS\n').slice(1).join('PASS\n'),
});

/** A unix stream listener outside the tree, answering "ok\n" to every "hello\n". */
async function outsideListener(path: string): Promise<{ server: Server; connections: () => number; close: () => Promise<void> }> {
  let count = 0;
  const socks: Socket[] = [];
  const server = createServer((s) => {
    count++;
    socks.push(s);
    s.on('data', (d) => { if (d.toString().includes('hello')) s.write('ok\n'); });
    s.on('error', () => { /* the checkpointed end went away */ });
  });
  await new Promise<void>((r) => server.listen(path, r));
  return {
    server,
    connections: () => count,
    close: () => new Promise<void>((r) => { for (const s of socks) s.destroy(); server.close(() => r()); }),
  };
}

describe('unix sockets', { skip, timeout: 120_000 }, () => {
  it('come back connected, named, listening, with their queues and options, three cycles in a row', async () => {
    const w = await startWorkload(join(WORKLOADS, 'unixsk'), ['DIR']);
    const pids = treeOf(w.pid);
    assert.equal(pids.length, 2, 'parent and child');
    for (const p of pids) own(p);
    const image = join(w.dir, 'unixsk.tar');
    for (let i = 0; i < 3; i++) {
      await sleep(100);
      await cycleThrough(w, image, i, [], { tree: pids });
      assert.deepEqual(treeOf(w.pid), pids, `cycle ${i + 1}: same processes`);
    }
    const ticks = w.ticks().length;
    await waitFor('the counter to move on through the restored socketpair', () => w.ticks().length > ticks, 20000);
    assert.equal(await verify(w), 'PASS');
  });

  it('--leave-running consumes nothing: the original reads every queued byte, and so does the restored copy', async () => {
    const w = await startWorkload(join(WORKLOADS, 'unixsk'), ['DIR']);
    const pids = treeOf(w.pid);
    for (const p of pids) own(p);
    const image = join(w.dir, 'unixsk.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    for (const p of pids) assert.equal(procState(p).tracer, 0, `pid ${p} detached`);
    assert.equal(await verify(w), 'PASS', 'the original kept its queues, peek offset and connections');
    await w.exited;
    await waitFor('every pid of the tree to be free', () => pids.every((p) => !alive(p)), 8000);
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    assert.equal(await verify(afterFirstPass(w)), 'PASS', 'the restored copy has them too');
  });

  it('a peer outside the tree is refused, naming pid, fd and socket; with --ext-unix-sk the socket reconnects to its path', async () => {
    const path = join(scratchDir(), 'outside.sock');
    const ext = await outsideListener(path);
    try {
      const w = await startWorkload(join(WORKLOADS, 'unixsk'), ['DIR', 'connect', path]);
      const image = join(w.dir, 'ext.tar');
      const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image]);
      assert.equal(cp.code, 1);
      assert.match(cp.stderr, new RegExp(`pid ${w.pid} fd 3 -> socket:\\[\\d+\\].*outside the checkpointed tree.*--ext-unix-sk`), cp.stderr);
      assert.match(cp.stderr, new RegExp(`pid ${process.pid} \\(node\\)`), 'names who holds the peer');
      assert.ok(alive(w.pid) && procState(w.pid).tracer === 0, 'left running, detached');

      const cp2 = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--ext-unix-sk']);
      assert.equal(cp2.code, 0, cp2.stderr);
      await w.exited;
      await waitFor(`pid ${w.pid} to be free`, () => !alive(w.pid), 5000);
      const rs = ferry(['restore', '--image', image]);
      assert.equal(rs.code, 1, 'restore without the flag is refused');
      assert.match(rs.stderr, /--ext-unix-sk/);
      assert.ok(!alive(w.pid), 'nothing left behind');
      const before = ext.connections();
      const rs2 = ferry(['restore', '--image', image, '--ext-unix-sk']);
      assert.equal(rs2.code, 0, rs2.stderr);
      own(w.pid);
      await waitFor('the restored socket to connect again', () => ext.connections() > before, 5000);
      assert.equal(await verify(w), 'PASS');
    } finally {
      await ext.close();
    }
  });

  it('descriptors in flight (SCM_RIGHTS) stay in flight: --leave-running leaves them queued, the restored copy receives them', async () => {
    const w = await startWorkload(join(WORKLOADS, 'unixsk'), ['DIR', 'rights']);
    const image = join(w.dir, 'r.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.ok(alive(w.pid) && procState(w.pid).tracer === 0, 'left running, detached');
    assert.equal(await verify(w), 'PASS', 'the message and its descriptor are still queued');
    await w.exited;
    await waitFor(`pid ${w.pid} to be free`, () => !alive(w.pid), 5000);
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.equal(await verify(afterFirstPass(w)), 'PASS', 'the restored copy receives the message with a working pipe end');
  });
});
