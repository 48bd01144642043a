/**
 * ICMP "ping" sockets through bin/ferry. Who may make one is net.ipv4.ping_group_range, a
 * sysctl of each network namespace (root is no exception): the test makes a namespace of its
 * own (deleted after), sets it there, and runs build/workloads/pingsk and ferry inside it; the
 * host's sysctl is never touched. pingsk holds IPv4 and IPv6 ping sockets bound to an ICMP id
 * and connected, each with an echo reply queued at the checkpoint, an autobound one and an
 * unused one; it checks itself after restore and after --leave-running.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, WORKLOADS } from '../helpers/env.js';
import { ferryIn, inNetns, removeNetns, sysctlIn, testNetns } from '../helpers/netns.js';
import { alive, cleanup, own, procState, startWorkload, verify, waitFor, type Workload } from '../helpers/processes.js';

const skip = needs('root', 'build');
after(() => {
  cleanup();
  removeNetns();
});

/** A namespace where group 0 may make ping sockets, and pingsk running in it. */
async function pingsk(): Promise<{ ns: string; w: Workload }> {
  const ns = testNetns({ lo: true });
  sysctlIn(ns, 'net.ipv4.ping_group_range', '0 0');
  const w = await startWorkload(...inNetns(ns, join(WORKLOADS, 'pingsk'), ['DIR']));
  return { ns, w };
}

/** Tells pingsk whether the echo replies queued at the checkpoint must be there, and asks for its verdict. */
function verdict(w: Workload, queued: 'kept' | 'dropped'): Promise<string> {
  writeFileSync(join(w.dir, 'expect'), queued);
  return verify(w);
}

describe('ping sockets', { skip, timeout: 120_000 }, () => {
  it('come back bound to their ICMP ids and connected, and answer echoes; queued replies dropped with a warning', async () => {
    const { ns, w } = await pingsk();
    const image = join(w.dir, 'ping.tar');
    const log = join(w.dir, 'cp.log');
    const cp = ferryIn(ns, ['checkpoint', '--pid', String(w.pid), '--image', image, '--log-file', log, '--log-level', 'info']);
    assert.equal(cp.code, 0, cp.stderr);
    await w.exited;
    const text = readFileSync(log, 'utf8');
    for (const [fd, addr] of [[3, '127\\.0\\.0\\.1:4660'], [4, '\\[::1\\]:9029']] as const) {
      assert.match(text, new RegExp(`pid ${w.pid} fd ${fd}: ping socket ${addr} -> .*?: \\d+ bytes of queued packets are not kept`), `fd ${fd}'s queued reply is said to be dropped`);
    }
    await waitFor(`pid ${w.pid} to be free`, () => !alive(w.pid), 5000);
    const rs = ferryIn(ns, ['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.equal(await verdict(w, 'dropped'), 'PASS');
  });

  it('--leave-running: the original keeps its sockets and its queued replies', async () => {
    const { ns, w } = await pingsk();
    const cp = ferryIn(ns, ['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'ping.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0, 'detached');
    assert.equal(await verdict(w, 'kept'), 'PASS');
  });

  it('a namespace whose ping_group_range leaves ferry out fails the restore in one line before any process exists', async () => {
    const { ns, w } = await pingsk();
    const image = join(w.dir, 'ping.tar');
    const cp = ferryIn(ns, ['checkpoint', '--pid', String(w.pid), '--image', image]);
    assert.equal(cp.code, 0, cp.stderr);
    await w.exited;
    await waitFor(`pid ${w.pid} to be free`, () => !alive(w.pid), 5000);
    sysctlIn(ns, 'net.ipv4.ping_group_range', '1 0');
    const refused = ferryIn(ns, ['restore', '--image', image]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /cannot restore ping socket .* \(file \d+\): net\.ipv4\.ping_group_range \(1 0\) does not include ferry's group 0, so no ping socket can be made here; widen it \(sysctl\) to restore this image/);
    assert.equal(refused.stderr.trim().split('\n').length, 1, 'one line');
    assert.ok(!alive(w.pid), 'nothing restored');
    sysctlIn(ns, 'net.ipv4.ping_group_range', '0 0');
    const rs = ferryIn(ns, ['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.equal(await verdict(w, 'dropped'), 'PASS');
  });
});
