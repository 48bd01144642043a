/**
 * TCP and UDP sockets through bin/ferry: build/workloads/tcp holds listeners, established
 * loopback connections with data queued both ways (part of it never sent), UDP sockets with
 * queued datagrams, IPv4 and IPv6, shared with a forked child; it checks them itself after
 * restore. Everything stays on 127.0.0.1 and ::1 with ports the kernel picks free.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, PYTHON, WORKLOADS } from '../helpers/env.js';
import { alive, cleanup, cycleThrough, ferry, own, procState, sleep, startWorkload, verify, waitFor } from '../helpers/processes.js';

const skip = needs('root', 'build');
after(cleanup);

interface Inspected {
  tasks: Array<{ pid: number; fds: Array<{ fd: number; kind: string; sharedWith: string[] }> }>;
}

describe('TCP and UDP sockets', { skip, timeout: 180_000 }, () => {
  it('an established connection is refused without --tcp-established, naming pid, fd, addresses and the flag; nothing changes', async () => {
    const w = await startWorkload(join(WORKLOADS, 'tcp'), ['DIR']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'x.tar')]);
    assert.equal(cp.code, 1);
    assert.match(cp.stderr, new RegExp(`pid ${w.pid} fd \\d+: established TCP connection (127\\.0\\.0\\.1|\\[::1\\]):\\d+ -> (127\\.0\\.0\\.1|\\[::1\\]):\\d+; checkpoint it with --tcp-established`));
    assert.equal(cp.stderr.trim().split('\n').length, 1, 'one line');
    assert.ok(alive(w.pid));
    assert.equal(procState(w.pid).tracer, 0, 'detached');
    assert.equal(await verify(w), 'PASS', 'the workload still has every byte and every connection');
  });

  it('come back with addresses, options, queues and sequence numbers, three cycles in a row', async () => {
    const w = await startWorkload(join(WORKLOADS, 'tcp'), ['DIR']);
    const image = join(w.dir, 'tcp.tar');
    for (let i = 0; i < 3; i++) {
      await cycleThrough(w, image, i, ['--tcp-established']);
      assert.ok(alive(w.pid), 'restored process runs');
    }
    await sleep(100);
    assert.equal(await verify(w), 'PASS');
  });

  it('--leave-running: the original leaves repair mode and goes on with every connection and byte', async () => {
    const w = await startWorkload(join(WORKLOADS, 'tcp'), ['DIR']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'tcp.tar'), '--tcp-established', '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0, 'detached');
    assert.equal(await verify(w), 'PASS');
  });

  it('--leave-running, then the original is killed: the image restores', async () => {
    // Killed with data unread, the original's connections end with RST and leave no TIME_WAIT
    // behind on the listeners' ports (a listener without SO_REUSEADDR could not bind then).
    const w = await startWorkload(join(WORKLOADS, 'tcp'), ['DIR']);
    const image = join(w.dir, 'tcp.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--tcp-established', '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    const child = Number(/child=(\d+)/.exec(w.text())![1]);
    process.kill(child, 'SIGKILL');
    process.kill(w.pid, 'SIGKILL');
    await w.exited;
    await waitFor(`pid ${w.pid} and its child ${child} to be gone`, () => !alive(w.pid) && !alive(child), 5000);
    await sleep(200);
    const rs = ferry(['restore', '--image', image, '--tcp-established']);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.equal(await verify(w), 'PASS');
  });

  it('restore of an image with connections needs --tcp-established too', async () => {
    const w = await startWorkload(join(WORKLOADS, 'tcp'), ['DIR']);
    const image = join(w.dir, 'tcp.tar');
    assert.equal(ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--tcp-established']).code, 0);
    await w.exited;
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 1);
    assert.match(rs.stderr, /established TCP connection .* restore it with --tcp-established/);
    assert.ok(!alive(w.pid), 'nothing half restored');
    const ok = ferry(['restore', '--image', image, '--tcp-established']);
    assert.equal(ok.code, 0, ok.stderr);
    own(w.pid);
    assert.equal(await verify(w), 'PASS');
  });

  it('inspect: one inet file per socket, shared between parent and child', async () => {
    const w = await startWorkload(join(WORKLOADS, 'tcp'), ['DIR']);
    const image = join(w.dir, 'tcp.tar');
    assert.equal(ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--tcp-established', '--leave-running']).code, 0);
    const r = ferry(['inspect', '--image', image, '--json']);
    assert.equal(r.code, 0, r.stderr);
    const tasks = (JSON.parse(r.stdout.toString()) as Inspected).tasks;
    const parent = tasks.find((t) => t.pid === w.pid)!;
    const inet = parent.fds.filter((f) => f.kind === 'inet');
    // L, C, S, L6, C6, S6, U1, U2, U6, X
    assert.equal(inet.length, 10, JSON.stringify(parent.fds));
    assert.ok(inet.every((f) => f.sharedWith.length === 1), 'each socket is the child\'s too');
    assert.equal(await verify(w), 'PASS');
  });

  it('a listener with a connection not accepted yet is refused clearly', { skip: needs('python') }, async () => {
    const script = [
      'import os, signal, socket',
      'os.closerange(3, 1 << 16)',
      'l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(4)',
      'c = socket.create_connection(l.getsockname())',
      'print(f"ready pid={os.getpid()}", flush=True)',
      'signal.pause()',
    ].join('\n');
    const w = await startWorkload(PYTHON, ['-c', script]);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'x.tar'), '--tcp-established']);
    assert.equal(cp.code, 1);
    assert.match(cp.stderr, new RegExp(`pid ${w.pid} fd \\d+: listening TCP socket 127\\.0\\.0\\.1:\\d+ has 1 connection\\(s\\) not accepted yet`));
    assert.ok(alive(w.pid));
    assert.equal(procState(w.pid).tracer, 0);
  });
});
