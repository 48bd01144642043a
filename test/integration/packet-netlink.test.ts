/**
 * Netlink and packet sockets through bin/ferry. build/workloads/netlinksk holds rtnetlink,
 * generic netlink, usersock (a connected pair with a locked BPF filter), kobject_uevent,
 * audit (where the kernel allows) and unbound sockets; build/workloads/packetsk holds packet
 * sockets of every type on the loopback interface. Each checks itself after restore (and
 * after --leave-running): port ids, groups, options, requests answered, packets received
 * through filters and fanout; the test reads packet memberships from sock_diag. Refusals
 * (rings, eBPF filters, a dump in progress, a missing interface, a taken port id) leave the
 * process as it was. Link events and the missing interface use network namespaces the test
 * makes (ferry-t-<random>, with veth pairs inside, deleted after); everything else stays on lo.
 */
import assert from 'node:assert/strict';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { FerryError } from '../../src/errors.js';
import { netlink, type NetlinkRecord } from '../../src/files/netlink.js';
import { packet, type PacketRecord } from '../../src/files/packet.js';
import { packetDiag } from '../../src/files/sockdiag.js';
import { native } from '../../src/native/binding.js';
import { needs, WORKLOADS } from '../helpers/env.js';
import { editImage, json } from '../helpers/images.js';
import { ferryIn, ip, removeNetns, testNetns } from '../helpers/netns.js';
import { alive, cleanup, ferry, own, procState, startWorkload, verify, waitFor, type Workload } from '../helpers/processes.js';

const skip = needs('root', 'build');
after(() => {
  cleanup();
  removeNetns();
});

/** A network namespace of this test with an id in ours (so NETLINK_LISTEN_ALL_NSID sockets hear it). */
const netns = (): string => testNetns({ nsid: true });

/**
 * Asks netlinksk to check itself: once it says "listening", the test's namespace makes link
 * events (lo down and up) until the verdict comes.
 */
async function verifyNetlink(w: Workload, ns: string): Promise<string> {
  process.kill(w.pid, 'SIGUSR1');
  await waitFor(`pid ${w.pid} to listen`, () => w.text().includes('listening') || /^FAIL/m.test(w.text()));
  for (let i = 0; i < 40 && !/^(PASS|FAIL.*)$/m.test(w.text()); i++) {
    ip('-n', ns, 'link', 'set', 'lo', i % 2 === 0 ? 'up' : 'down');
    await new Promise((r) => setTimeout(r, 250));
  }
  await waitFor(`pid ${w.pid} to verify itself`, () => /^(PASS|FAIL.*)$/m.test(w.text()), 15_000);
  return w.text().split('\n').filter((l) => l === 'PASS' || l.startsWith('FAIL')).join('\n');
}

describe('netlink sockets', { skip, timeout: 120_000 }, () => {
  it('queued messages are refused in one line naming the flag; the process runs on with them', async () => {
    const ns = netns();
    const w = await startWorkload(join(WORKLOADS, 'netlinksk'), []);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'nl.tar')]);
    assert.equal(cp.code, 1);
    assert.match(cp.stderr, new RegExp(`pid ${w.pid} fd 5: netlink usersock socket \\(port id \\d+\\) holds \\d+ bytes of messages not read yet \\(replies or notifications\\), which cannot be queued again as the kernel's; checkpoint it once the program has read them, or drop them with --skip-in-flight`));
    assert.equal(cp.stderr.trim().split('\n').length, 1, 'one line');
    assert.equal(procState(w.pid).tracer, 0, 'detached');
    assert.equal(await verifyNetlink(w, ns), 'PASS', 'the process runs on');
  });

  it('come back with port ids, groups past 32, destination, options and filter, twice in a row; --skip-in-flight drops queued messages with a warning', async () => {
    const ns = netns();
    const w = await startWorkload(join(WORKLOADS, 'netlinksk'), []);
    const image = join(w.dir, 'nl.tar');
    for (let i = 0; i < 2; i++) {
      const log = join(w.dir, `cp${i}.log`);
      const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--skip-in-flight', '--log-file', log, '--log-level', 'info']);
      assert.equal(cp.code, 0, `checkpoint ${i + 1}: ${cp.stderr}`);
      if (i === 0) {
        await w.exited;
        // U1 held a message from U2: not kept, and the log and stderr say so.
        const said = new RegExp(`pid ${w.pid} fd 5: netlink usersock socket \\(port id \\d+\\): \\d+ bytes of queued messages are not kept \\(--skip-in-flight`);
        assert.match(readFileSync(log, 'utf8'), said);
        assert.match(cp.stderr, said);
      }
      await waitFor(`pid ${w.pid} to be free`, () => !alive(w.pid), 5000);
      const rs = ferry(['restore', '--image', image]);
      assert.equal(rs.code, 0, `restore ${i + 1}: ${rs.stderr}`);
      own(w.pid);
    }
    assert.equal(await verifyNetlink(w, ns), 'PASS');
  });

  it('--leave-running: the original goes on with every socket as it was', async () => {
    const ns = netns();
    const w = await startWorkload(join(WORKLOADS, 'netlinksk'), []);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'nl.tar'), '--leave-running', '--skip-in-flight']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0, 'detached');
    assert.equal(await verifyNetlink(w, ns), 'PASS');
  });

  it('a port id taken meanwhile fails the restore in one line before any process exists; freed, the restore works', async () => {
    const ns = netns();
    const w = await startWorkload(join(WORKLOADS, 'netlinksk'), []);
    const image = join(w.dir, 'nl.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--skip-in-flight']);
    assert.equal(cp.code, 0, cp.stderr);
    await w.exited;
    await waitFor(`pid ${w.pid} to be free`, () => !alive(w.pid), 5000);
    // U1's explicit port id (0x50000000 | pid), taken by a usersock socket of the test.
    const n = native();
    const port = (0x50000000 | w.pid) >>> 0;
    const squatter = n.socket(16, 3, 2);
    try {
      n.netlinkBind(squatter, port, 0);
      const refused = ferry(['restore', '--image', image]);
      assert.equal(refused.code, 1);
      assert.match(refused.stderr, new RegExp(`cannot restore netlink usersock socket \\(port id ${port}\\) \\(file \\d+\\): port id ${port} is taken by another netlink socket`));
      assert.equal(refused.stderr.trim().split('\n').length, 1, 'one line');
      assert.ok(!alive(w.pid), 'nothing restored');
    } finally {
      n.closeFd(squatter);
    }
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.equal(await verifyNetlink(w, ns), 'PASS');
  });

  it('a socket in the middle of a dump is refused in one line; the process reads the rest of it', async () => {
    const w = await startWorkload(join(WORKLOADS, 'netlinksk'), ['dump']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'x.tar')]);
    assert.equal(cp.code, 1);
    assert.match(cp.stderr, new RegExp(`pid ${w.pid} fd 3: netlink generic socket \\(port id \\d+\\) is in the middle of a dump \\(NLM_F_DUMP\\)`));
    assert.equal(cp.stderr.trim().split('\n').length, 1, 'one line');
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS');
  });

  it('check() refuses hostile records before anything is made', () => {
    const good: NetlinkRecord = {
      id: 1, kind: 'netlink', ino: '1', flags: 0, type: 'raw', protocol: 0, portid: 5, groups: [1, 33],
      dst: null, opts: ['extAck'], sndbuf: 4096, rcvbuf: 4096,
    };
    assert.doesNotThrow(() => netlink.check!(good));
    const bads: Array<Partial<Record<keyof NetlinkRecord, unknown>>> = [
      { protocol: 32 }, { protocol: -1 }, { type: 'stream' }, { portid: 2 ** 32 }, { portid: 1.5 },
      { groups: Array(5000).fill(1) }, { groups: [0] }, { groups: [70000] }, { groups: 'all' },
      { dst: { portid: 1, group: 33 } }, { dst: { portid: -1, group: 0 } }, { opts: ['mmap'] }, { opts: {} },
      { rcvbuf: 2 ** 31 }, { sndbuf: -1 }, { filter: 'AAAA' }, { lockFilter: true }, { filter: 'A'.repeat(50000) }, { flags: 'x' },
    ];
    for (const b of bads) {
      assert.throws(() => netlink.check!({ ...good, ...b } as NetlinkRecord),
        (e: unknown) => e instanceof FerryError && e.code === 'EIMAGE' && /^image: netlink socket \(file 1\) /.test(e.message), JSON.stringify(b).slice(0, 80));
    }
  });
});

/** The memberships sock_diag shows for descriptor `fd` of `pid`, as text. */
function memberships(pid: number, fd: number): string[] {
  const d = packetDiag().get(Number(statSync(`/proc/${pid}/fd/${fd}`).ino));
  assert.ok(d, `pid ${pid} fd ${fd} is a packet socket sock_diag knows`);
  return d.mclist.map((m) => `if${m.ifindex} type ${m.type} x${m.count} ${m.addr.toString('hex')}`).sort();
}

describe('packet sockets', { skip, timeout: 120_000 }, () => {
  const LO = 'if1';
  const P1_MEMBERSHIPS = [`${LO} type 0 x1 01005e0000fb`, `${LO} type 1 x2 `];

  it('come back with type, protocol, interface, options, filter, fanout and memberships; queued packets dropped with a warning', async () => {
    const w = await startWorkload(join(WORKLOADS, 'packetsk'), []);
    assert.deepEqual(memberships(w.pid, 5), P1_MEMBERSHIPS);
    const image = join(w.dir, 'pk.tar');
    const log = join(w.dir, 'cp.log');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--log-file', log, '--log-level', 'info']);
    assert.equal(cp.code, 0, cp.stderr);
    await w.exited;
    assert.match(readFileSync(log, 'utf8'), new RegExp(`pid ${w.pid} fd 5: packet socket \\(SOCK_RAW, protocol 0x0003, on lo\\): \\d+ bytes of queued packets are not kept`));
    await waitFor(`pid ${w.pid} to be free`, () => !alive(w.pid), 5000);
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.deepEqual(memberships(w.pid, 5), P1_MEMBERSHIPS, 'each membership as many times as it was added');
    assert.equal(await verify(w), 'PASS');
  });

  it('--leave-running: the original goes on with every socket as it was', async () => {
    const w = await startWorkload(join(WORKLOADS, 'packetsk'), []);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'pk.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0, 'detached');
    assert.deepEqual(memberships(w.pid, 5), P1_MEMBERSHIPS);
    assert.equal(await verify(w), 'PASS');
  });

  it('an untrusted image whose process has no CAP_NET_RAW may not get a packet socket', async () => {
    const w = await startWorkload(join(WORKLOADS, 'packetsk'), []);
    const image = join(w.dir, 'pk.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    // An edit (which drops the signature) making the process nobody without capabilities:
    // within the untrusted default bound, so only the socket check stands in the way.
    const edited = join(w.dir, 'edited.tar');
    await editImage(image, edited, [[/^tasks\/\d+\/task\.json$/, json<{ creds: { threads: Array<Record<string, any>> } }>((t) => { // eslint-disable-line @typescript-eslint/no-explicit-any
      for (const th of t.creds.threads) {
        th.uids = [65534, 65534, 65534, 65534];
        th.gids = [65534, 65534, 65534, 65534];
        th.groups = [];
        for (const k of ['effective', 'permitted', 'inheritable', 'ambient']) th.caps[k] = '0x0';
      }
    })]]);
    const rs = ferry(['restore', '--image', edited]);
    assert.equal(rs.code, 1);
    assert.match(rs.stderr, new RegExp(`pid ${w.pid} \\(packetsk\\) fd \\d+ would get a packet socket, which needs CAP_NET_RAW when it is made, and its credentials have no CAP_NET_RAW`));
    assert.equal(rs.stderr.trim().split('\n').length, 1, 'one line');
    assert.equal(await verify(w), 'PASS', 'the original runs on');
  });

  it('a socket with a mapped ring is refused in one line naming pid, fd and the mapping; the process runs on', async () => {
    const w = await startWorkload(join(WORKLOADS, 'packetsk'), ['ring']);
    const at = /ring=0x([0-9a-f]+)/.exec(w.text())![1]!;
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'x.tar')]);
    assert.equal(cp.code, 1);
    assert.match(cp.stderr, new RegExp(`pid ${w.pid} fd 3: packet socket \\(SOCK_RAW, protocol 0x0003, all interfaces\\) has a PACKET_RX_RING \\(8 frames of 2048 bytes\\) mapped at 0x${at}-0x[0-9a-f]+: packet rings cannot be checkpointed yet`));
    assert.equal(cp.stderr.trim().split('\n').length, 1, 'one line');
    assert.ok(alive(w.pid));
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS');
  });

  it('a ring whose socket is closed (only the mapping left) is refused naming the area; the process runs on', async () => {
    const w = await startWorkload(join(WORKLOADS, 'packetsk'), ['ring-closed']);
    const at = /ring=0x([0-9a-f]+)/.exec(w.text())![1]!;
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'x.tar')]);
    assert.equal(cp.code, 1);
    assert.match(cp.stderr, new RegExp(`unsupported memory area of pid ${w.pid}: 0x${at}-0x[0-9a-f]+ \\(socket:\\[\\d+\\]\\) is memory of a socket \\(a packet ring, PACKET_MMAP`));
    assert.equal(cp.stderr.trim().split('\n').length, 1, 'one line');
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS');
  });

  it('an eBPF filter (SO_ATTACH_BPF) is refused in one line; the process keeps it', async () => {
    const w = await startWorkload(join(WORKLOADS, 'packetsk'), ['ebpf']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'x.tar')]);
    assert.equal(cp.code, 1);
    assert.match(cp.stderr, new RegExp(`pid ${w.pid} fd \\d+: packet socket \\(SOCK_RAW, protocol 0x0000, all interfaces\\) has an eBPF program attached \\(SO_ATTACH_BPF\\)`));
    assert.equal(cp.stderr.trim().split('\n').length, 1, 'one line');
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS');
  });

  it('the interface is found again by name; a missing one fails the restore before any process exists', async () => {
    const ns = netns();
    ip('-n', ns, 'link', 'add', 'ft0', 'type', 'veth', 'peer', 'name', 'ft1');
    ip('-n', ns, 'link', 'set', 'ft0', 'up');
    const w = await startWorkload('nsenter', [`--net=/run/netns/${ns}`, join(WORKLOADS, 'packetsk'), 'dev', 'ft0']);
    const image = join(w.dir, 'dev.tar');
    const cp = ferryIn(ns, ['checkpoint', '--pid', String(w.pid), '--image', image]);
    assert.equal(cp.code, 0, cp.stderr);
    await w.exited;
    await waitFor(`pid ${w.pid} to be free`, () => !alive(w.pid), 5000);
    ip('-n', ns, 'link', 'del', 'ft0');
    const refused = ferryIn(ns, ['restore', '--image', image]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /cannot restore packet socket \(SOCK_DGRAM, protocol 0x0800, on ft0\) \(file \d+\): its interface ft0 does not exist here; create it/);
    assert.equal(refused.stderr.trim().split('\n').length, 1, 'one line');
    assert.ok(!alive(w.pid), 'nothing restored');
    // Made again after another one: a new index, the same name.
    ip('-n', ns, 'link', 'add', 'ft9', 'type', 'veth', 'peer', 'name', 'ft8');
    ip('-n', ns, 'link', 'add', 'ft0', 'type', 'veth', 'peer', 'name', 'ft1');
    const rs = ferryIn(ns, ['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.equal(await verify(w), 'PASS');
  });

  it('check() refuses hostile records before anything is made', () => {
    const good: PacketRecord = {
      id: 2, kind: 'packet', ino: '1', flags: 0, type: 'raw', protocol: 3, running: true, ifname: 'lo',
      opts: { version: 1 }, copyThresh: 0, memberships: [{ ifname: 'lo', type: 1, count: 2, addr: '' }],
      fanout: { id: 7, mode: 0, flags: 0x80 }, sndbuf: 4096, rcvbuf: 4096,
    };
    assert.doesNotThrow(() => packet.check!(good));
    const bads: Array<Partial<Record<keyof PacketRecord, unknown>>> = [
      { type: 'stream' }, { type: 'toString' }, { protocol: 65536 }, { running: 1 }, { ifname: '../../etc' }, { ifname: 'a'.repeat(16) },
      { ifname: '' }, { opts: { ring: 1 } }, { opts: { version: -1 } }, { opts: [] }, { copyThresh: 2 ** 31 },
      { memberships: Array(2000).fill({ ifname: 'lo', type: 1, count: 1, addr: '' }) },
      { memberships: [{ ifname: 'lo', type: 9, count: 1, addr: '' }] }, { memberships: [{ ifname: 'lo', type: 1, count: 1e9, addr: '' }] },
      { memberships: Array(3).fill({ ifname: 'lo', type: 1, count: 30000, addr: '' }) },
      { memberships: [{ ifname: 'lo', type: 0, count: 1, addr: 'zz' }] }, { memberships: [{ ifname: 'lo', type: 0, count: 1, addr: '00'.repeat(33) }] },
      { fanout: { id: 70000, mode: 0, flags: 0 } }, { fanout: { id: 1, mode: 6, flags: 0 } }, { fanout: { id: 1, mode: 7, flags: 0 } },
      { rcvbuf: 2 ** 31 }, { filter: 'AAAA' }, { flags: null },
      { type: 'packet', opts: { version: 1 } }, { lockFilter: true }, { filter: 'AAAAAAAAAAA=', lockFilter: 1 },
    ];
    for (const b of bads) {
      assert.throws(() => packet.check!({ ...good, ...b } as PacketRecord),
        (e: unknown) => e instanceof FerryError && e.code === 'EIMAGE' && /^image: packet socket \(file 2\) /.test(e.message), JSON.stringify(b).slice(0, 80));
    }
  });
});
