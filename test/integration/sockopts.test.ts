/**
 * Socket options, classic BPF filters, multicast memberships, UDP shutdown and corking,
 * SO_REUSEPORT groups and IP_FREEBIND through bin/ferry: build/workloads/sockopts sets every
 * option it can on sockets of each kind, snapshots them all, and after restore reads them back
 * and checks that multicast and both members of each reuseport group (one in a forked child)
 * still receive; an established connection among them makes every checkpoint here one with
 * --tcp-established. Loopback only, ports the kernel picks free.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, PYTHON, WORKLOADS } from '../helpers/env.js';
import { editImage, json } from '../helpers/images.js';
import { alive, cleanup, cycleThrough, ferry, own, procState, startWorkload, verify, waitFor, type Workload } from '../helpers/processes.js';

const skip = needs('root', 'build');
after(cleanup);

/** Ping sockets need the caller's group inside net.ipv4.ping_group_range (root is no exception). */
function pingSkip(): string | false {
  const [lo, hi] = readFileSync('/proc/sys/net/ipv4/ping_group_range', 'utf8').trim().split(/\s+/).map(Number);
  return lo! <= 0 && 0 <= hi! ? false : `net.ipv4.ping_group_range (${lo} ${hi}) does not include gid 0: this host lets no one here make ping sockets`;
}

/** The sockopts workload and its child (which holds a reuseport listener), both ours to kill. */
async function startSockopts(): Promise<{ w: Workload; child: number }> {
  const w = await startWorkload(join(WORKLOADS, 'sockopts'), ['DIR']);
  const child = Number(/child=(\d+)/.exec(w.text())![1]);
  own(child);
  return { w, child };
}

interface Inspected {
  tasks: Array<{ pid: number; fds: Array<{ fd: number; kind: string }> }>;
}

/**
 * Runs python `script` (it prints "ready pid=N fd=M", M its socket) and checks that checkpoint
 * refuses it with one line matching `reason(pid, fd)`, leaving it running, untraced.
 */
async function refusedPython(script: string, reason: (pid: number, fd: string) => string): Promise<void> {
  const w = await startWorkload(PYTHON, ['-c', script]);
  const fd = /fd=(\d+)/.exec(w.text())![1]!;
  const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'x.tar')]);
  assert.equal(cp.code, 1);
  assert.match(cp.stderr, new RegExp(reason(w.pid, fd)));
  assert.equal(cp.stderr.trim().split('\n').length, 1, 'one line');
  assert.ok(alive(w.pid));
  assert.equal(procState(w.pid).tracer, 0);
}

describe('socket options, filters, memberships, reuseport groups', { skip, timeout: 120_000 }, () => {
  it('come back as they were after checkpoint and restore, twice', async () => {
    const { w, child } = await startSockopts();
    const image = join(w.dir, 'sockopts.tar');
    for (let i = 0; i < 2; i++) await cycleThrough(w, image, i, ['--tcp-established'], { tree: [child] });
    assert.equal(await verify(w), 'PASS');
  });

  it('--leave-running: the original keeps every option and membership and runs on', async () => {
    const { w } = await startSockopts();
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'x.tar'), '--leave-running', '--tcp-established']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0, 'detached');
    const r = ferry(['inspect', '--image', join(w.dir, 'x.tar'), '--json']);
    assert.equal(r.code, 0, r.stderr);
    const tasks = (JSON.parse(r.stdout.toString()) as Inspected).tasks;
    assert.equal(tasks.find((t) => t.pid === w.pid)!.fds.filter((f) => f.kind === 'inet').length, w.text().includes('ping=1') ? 25 : 23);
    assert.equal(await verify(w), 'PASS');
  });

  it('an eBPF socket filter is refused, naming pid, fd and socket; nothing changes', { skip: needs('python') }, async () => {
    // BPF_PROG_LOAD of "r0 = 0xffff; exit" as a socket filter, attached with SO_ATTACH_BPF.
    const script = [
      'import ctypes, os, signal, socket, struct',
      'os.closerange(3, 1 << 16)',
      'libc = ctypes.CDLL(None, use_errno=True)',
      'insns = struct.pack("<BBhi", 0xb7, 0, 0, 0xffff) + struct.pack("<BBhi", 0x95, 0, 0, 0)',
      'ibuf = ctypes.create_string_buffer(insns); lic = ctypes.create_string_buffer(b"GPL")',
      'attr = struct.pack("<IIQQIIQ", 1, 2, ctypes.addressof(ibuf), ctypes.addressof(lic), 0, 0, 0) + bytes(80)',
      'abuf = ctypes.create_string_buffer(attr)',
      'pfd = libc.syscall(321, 5, abuf, len(attr))',
      'assert pfd >= 0, os.strerror(ctypes.get_errno())',
      's = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))',
      's.setsockopt(socket.SOL_SOCKET, 50, pfd); os.close(pfd)',
      'print(f"ready pid={os.getpid()} fd={s.fileno()}", flush=True)',
      'signal.pause()',
    ].join('\n');
    await refusedPython(script, (pid, fd) => `UDP socket 127\\.0\\.0\\.1:\\d+ fd ${fd} of pid ${pid} has an eBPF socket filter \\(SO_ATTACH_BPF\\)`);
  });

  it('a TCP listener holding TCP_MD5SIG keys is refused (the kernel does not give them back)', { skip: needs('python') }, async () => {
    const script = [
      'import os, signal, socket, struct',
      'os.closerange(3, 1 << 16)',
      'l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(4)',
      // struct tcp_md5sig: the peer's sockaddr_storage, flags, prefixlen, keylen, ifindex, key[80].
      'peer = struct.pack("<HH4s", 2, 0, socket.inet_aton("127.0.0.2")) + bytes(120)',
      'l.setsockopt(socket.IPPROTO_TCP, 14, peer + struct.pack("<BBHi", 0, 0, 6, 0) + b"secret" + bytes(74))',
      'print(f"ready pid={os.getpid()} fd={l.fileno()}", flush=True)',
      'signal.pause()',
    ].join('\n');
    await refusedPython(script, (pid, fd) => `TCP socket 127\\.0\\.0\\.1:\\d+ fd ${fd} of pid ${pid} holds TCP_MD5SIG keys`);
  });

  it('a corked UDP socket holding unsent data is refused', { skip: needs('python') }, async () => {
    const script = [
      'import os, signal, socket',
      'os.closerange(3, 1 << 16)',
      's = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))',
      's.setsockopt(socket.IPPROTO_UDP, 1, 1)',
      's.sendto(b"pending", ("127.0.0.1", 9))',
      'print(f"ready pid={os.getpid()} fd={s.fileno()}", flush=True)',
      'signal.pause()',
    ].join('\n');
    await refusedPython(script, (pid, fd) => `UDP socket 127\\.0\\.0\\.1:\\d+ fd ${fd} of pid ${pid} is corked \\(UDP_CORK\\) with \\d+ bytes not sent yet`);
  });

  it('an image with a bad option, filter, membership, protocol or shutdown is refused before anything is made', async (t) => {
    const { w, child } = await startSockopts();
    const image = join(w.dir, 'sockopts.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--tcp-established']);
    assert.equal(cp.code, 0, cp.stderr);
    await w.exited;
    await waitFor('the tree to be free', () => !alive(w.pid) && !alive(child), 5000);
    type Rec = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
    const inet = (v: Rec, pick: (f: Rec) => boolean): Rec => {
      const f = (v.files as Rec[]).find((x) => x.kind === 'inet' && pick(x));
      assert.ok(f, 'the record to edit');
      return f;
    };
    const withFilter = (f: Rec): boolean => f.filter !== undefined && f.proto === 'udp';
    const withGroups = (f: Rec): boolean => Array.isArray(f.memberships);
    const cases: Array<[string, (v: Rec) => void, RegExp]> = [
      ['an unknown option', (v) => { inet(v, withFilter).opts.so_evil = 1; }, /has an unknown option "so_evil"/],
      ['an option out of int range', (v) => { inet(v, withFilter).opts.priority = 2 ** 40; }, /invalid value for option "priority"/],
      ['a string where an int goes', (v) => { inet(v, withFilter).opts.mark = 'x'; }, /invalid value for option "mark"/],
      ['an option longer than its struct', (v) => { inet(v, withFilter).opts.bindtodevice = Buffer.alloc(64, 65).toString('base64'); }, /invalid value for option "bindtodevice"/],
      ['a filter of 4097 instructions', (v) => { inet(v, withFilter).filter.insns = Buffer.alloc(4097 * 8).toString('base64'); }, /invalid socket filter/],
      ['a filter of 7 bytes', (v) => { inet(v, withFilter).filter.insns = Buffer.alloc(7).toString('base64'); }, /invalid socket filter/],
      ['a membership in a group that is no address', (v) => { inet(v, withGroups).memberships[0].group = '/etc/passwd'; }, /invalid multicast membership/],
      ['a membership with 100,000 sources', (v) => { inet(v, withGroups).memberships[0].sources = Array(100000).fill('127.0.0.1'); }, /invalid multicast membership/],
      ['an IPv6 group on an IPv4 socket', (v) => { const m = inet(v, (f) => withGroups(f) && f.family === 'ipv4').memberships[0]; m.family = 'ipv6'; m.group = 'ff15::1'; }, /invalid multicast membership/],
      ['a device name with a slash', (v) => { inet(v, withGroups).memberships[0].device = '../lo'; }, /invalid multicast membership/],
      ['a raw socket of protocol 300', (v) => { inet(v, (f) => f.proto === 'raw').protocol = 300; }, /invalid IP protocol number/],
      ['an SCTP socket', (v) => { inet(v, withFilter).proto = 'sctp'; }, /invalid protocol/],
      ['shutdown bits 7', (v) => { inet(v, (f) => f.shutdown === 3).shutdown = 7; }, /invalid shutdown bits/],
      ['a listening UDP socket', (v) => { inet(v, withFilter).state = 'listen'; }, /has state listen for a udp socket/],
    ];
    for (const [what, edit, text] of cases) {
      const bad = join(w.dir, 'bad.tar');
      await editImage(image, bad, { 'files.json': json(edit) });
      const r = ferry(['restore', '--image', bad, '--max-creds', 'root', '--tcp-established'], { timeoutMs: 30_000 });
      if (alive(w.pid)) own(w.pid);
      t.diagnostic(`${what}: ${r.stderr.trim()}`);
      assert.equal(r.code, 1, `${what}: refused`);
      assert.equal(r.stderr.trimEnd().split('\n').length, 1, `${what}: one line: ${r.stderr}`);
      assert.match(r.stderr, /image: inet socket \(file \d+\) /, what);
      assert.match(r.stderr, text, what);
      assert.ok(!alive(w.pid), `${what}: nothing restored`);
    }
    // A membership on a device this host does not have: the restore fails, naming group and device.
    {
      const bad = join(w.dir, 'dev.tar');
      await editImage(image, bad, { 'files.json': json((v: Rec) => { inet(v, withGroups).memberships[0].device = 'ferrynodev0'; }) });
      const r = ferry(['restore', '--image', bad, '--max-creds', 'root', '--tcp-established'], { timeoutMs: 30_000 });
      if (alive(w.pid)) own(w.pid);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /cannot restore UDP socket 0\.0\.0\.0:\d+ \(file \d+, closed\): multicast group [\d.]+ was joined on device ferrynodev0, which this network namespace does not have/);
      assert.equal(r.stderr.trimEnd().split('\n').length, 1, r.stderr);
      await waitFor('nothing left of the refused restore', () => !alive(w.pid) && !alive(child), 8000);
    }
    // Bound to a device this host does not have: the option and the device are named.
    {
      const bad = join(w.dir, 'bind.tar');
      await editImage(image, bad, { 'files.json': json((v: Rec) => { inet(v, withFilter).opts.bindtodevice = Buffer.from('ferrynodev0\0').toString('base64'); }) });
      const r = ferry(['restore', '--image', bad, '--max-creds', 'root', '--tcp-established'], { timeoutMs: 30_000 });
      if (alive(w.pid)) own(w.pid);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /cannot restore UDP socket 127\.0\.0\.1:\d+ \(file \d+, closed\): cannot set socket option bindtodevice to "ferrynodev0": .*ENODEV/);
      assert.equal(r.stderr.trimEnd().split('\n').length, 1, r.stderr);
      await waitFor('nothing left of the refused restore', () => !alive(w.pid) && !alive(child), 8000);
    }
    // A ping socket where ping_group_range leaves ferry out (this host's default): the reason.
    if (pingSkip() !== false) {
      const bad = join(w.dir, 'ping.tar');
      await editImage(image, bad, { 'files.json': json((v: Rec) => { const f = inet(v, (x) => x.proto === 'udp' && x.filter !== undefined); f.proto = 'ping'; delete f.datagrams; }) });
      const r = ferry(['restore', '--image', bad, '--max-creds', 'root', '--tcp-established'], { timeoutMs: 30_000 });
      if (alive(w.pid)) own(w.pid);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /cannot restore ping socket 127\.0\.0\.1:\d+ \(file \d+\): net\.ipv4\.ping_group_range \(\d+ \d+\) does not include ferry's group 0, so no ping socket can be made here/);
      assert.equal(r.stderr.trimEnd().split('\n').length, 1, r.stderr);
      await waitFor('nothing left of the refused restore', () => !alive(w.pid) && !alive(child), 8000);
    }
    // The image itself still restores.
    const ok = ferry(['restore', '--image', image, '--tcp-established']);
    assert.equal(ok.code, 0, ok.stderr);
    own(w.pid);
    assert.equal(await verify(w), 'PASS');
  });
});
