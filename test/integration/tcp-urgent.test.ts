/**
 * TCP urgent data (MSG_OOB) through bin/ferry --tcp-established. build/workloads/tcpurg holds
 * five connections to a peer outside the tree (the same program, "peer" mode), each with an
 * urgent byte received: unread with its mark ahead, read out of band (a hole in the stream),
 * in the stream (SO_OOBINLINE), at the mark, and unread with 60000 bytes and the peer's FIN
 * after it (CLOSE_WAIT; given back to the restored socket in several segments, then the FIN). After restore (twice in a row) and after
 * --leave-running it checks SIOCATMARK, recv(MSG_OOB) and the bytes, then that each connection
 * still carries data both ways. Loopback, IPv4 and IPv6, ports the kernel picks free.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, WORKLOADS } from '../helpers/env.js';
import { cleanup, cycleThrough, ferry, procState, startWorkload, verify, type Workload } from '../helpers/processes.js';

const skip = needs('root', 'build');
after(cleanup);

const TCPURG = join(WORKLOADS, 'tcpurg');

/** The peer (outside the tree) on `addr`, and tcpurg connected to it. */
async function tcpurg(addr: string): Promise<Workload> {
  const peer = await startWorkload(TCPURG, ['peer', addr]);
  const port = /port=(\d+)/.exec(peer.text())![1]!;
  return startWorkload(TCPURG, [addr, port]);
}

describe('TCP urgent data', { skip, timeout: 180_000 }, () => {
  for (const addr of ['127.0.0.1', '::1']) {
    it(`${addr}: an urgent byte received comes back with its mark, valid, read or inline, twice in a row`, async () => {
      const w = await tcpurg(addr);
      const image = join(w.dir, 'urg.tar');
      for (let i = 0; i < 2; i++) {
        await cycleThrough(w, image, i, ['--tcp-established']);
      }
      assert.equal(await verify(w, 30_000), 'PASS');
    });
  }

  it('--leave-running: the original keeps its marks and urgent bytes', async () => {
    const w = await tcpurg('127.0.0.1');
    const image = join(w.dir, 'urg.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--tcp-established', '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0, 'detached');
    // The marks as the image has them: after "abc" (valid, read, inline), at the queue's start.
    const files = JSON.parse(spawnSync('tar', ['-xOf', image, 'files.json'], { encoding: 'utf8' }).stdout) as
      { files: Array<{ tcp?: { state?: string; recvBytes: number; urgent?: unknown } }> };
    assert.deepEqual(files.files.filter((f) => f.tcp).map((f) => [f.tcp!.state ?? 'ESTABLISHED', f.tcp!.recvBytes, f.tcp!.urgent]), [
      ['ESTABLISHED', 7, { at: 3 }], ['ESTABLISHED', 7, { at: 3, read: true }], ['ESTABLISHED', 7, { at: 3 }],
      ['ESTABLISHED', 4, { at: 0 }], ['CLOSE_WAIT', 60007, { at: 3 }],
    ]);
    assert.equal(await verify(w, 30_000), 'PASS');
  });
});
