/**
 * TCP connections past ESTABLISHED through bin/ferry (issue 9): build/workloads/tcpstates holds
 * both ends of connections in CLOSE_WAIT, FIN_WAIT1, FIN_WAIT2, LAST_ACK and CLOSING over
 * IPv4, IPv6 and IPv4-mapped IPv6 on loopback, and checks after restore that every state came
 * back and every conversation goes on as before (queued bytes then EOF, EPIPE after shutdown,
 * the FIN of a close). A connect(2) in progress (SYN_SENT) toward listeners outside the tree
 * whose accept queues are full (the kernel drops SYNs then) comes back connecting from the same
 * port and completes once they accept. A connection whose peer is outside the tree, in a
 * network namespace the test makes (veth pair, 10.x addresses, deleted after), comes back with
 * both queues full: part of its send queue sent and unacknowledged (the test drops those
 * segments in the peer's namespace with nftables), the rest unsent behind its FIN, and its
 * receive queue full of the peer's bytes.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createConnection, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, PYTHON, WORKLOADS } from '../helpers/env.js';
import { editImage, json } from '../helpers/images.js';
import {
  alive, cleanup, cycleThrough, ferry, own, procState, startWorkload, verify, waitFor, type Workload,
} from '../helpers/processes.js';

const skip = needs('root', 'build');
after(cleanup);

const STATES = 'CLOSE_WAIT,FIN_WAIT2,FIN_WAIT1,ESTABLISHED,LAST_ACK,FIN_WAIT2,CLOSING,FIN_WAIT2';

describe('TCP connections in every FIN state', { skip, timeout: 300_000 }, () => {
  it('are refused without --tcp-established, naming the state; nothing changes', async () => {
    const w = await startWorkload(join(WORKLOADS, 'tcpstates'), []);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'x.tar')]);
    assert.equal(cp.code, 1);
    assert.match(cp.stderr, new RegExp(`pid ${w.pid} fd \\d+: TCP connection in (CLOSE_WAIT|FIN_WAIT1|FIN_WAIT2|LAST_ACK|CLOSING) \\S+ -> \\S+; checkpoint it with --tcp-established`));
    assert.equal(cp.stderr.trim().split('\n').length, 1, 'one line');
    assert.equal(procState(w.pid).tracer, 0, 'detached');
    assert.equal(await verify(w, 120_000), 'PASS');
  });

  it('come back in the same states with their queues, twice in a row', async () => {
    const w = await startWorkload(join(WORKLOADS, 'tcpstates'), []);
    assert.match(w.text(), new RegExp(`states=${[STATES, STATES, STATES].join(',')}`), 'the workload set its states up');
    const listen = /listen=(\d+),(\d+),(\d+)/.exec(w.text())!.slice(1).map(Number);
    const image = join(w.dir, 'tcp.tar');
    for (let i = 0; i < 2; i++) {
      // TIME_WAIT (06) on every listener's port: the restore binds them again all the same.
      if (i === 0) assert.deepEqual(listen.filter((p) => portsIn(w.pid, '06').includes(p)), listen, 'TIME_WAIT on the listeners\' ports');
      await cycleThrough(w, image, i, ['--tcp-established']);
    }
    assert.equal(await verify(w, 120_000), 'PASS');
  });

  it('--leave-running: the original goes on in the same states with every byte', async () => {
    const w = await startWorkload(join(WORKLOADS, 'tcpstates'), []);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'tcp.tar'), '--tcp-established', '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0, 'detached');
    assert.equal(await verify(w, 120_000), 'PASS');
  });
});

/** Local ports of the pid's TCP sockets in `state` (hex code of /proc/net/tcp{,6}). */
function portsIn(pid: number, state: string): number[] {
  const out: number[] = [];
  for (const f of ['tcp', 'tcp6']) {
    for (const line of readFileSync(`/proc/${pid}/net/${f}`, 'utf8').split('\n').slice(1)) {
      const c = line.trim().split(/\s+/);
      if (c[3] === state) out.push(parseInt(c[1]!.split(':')[1]!, 16));
    }
  }
  return out;
}

/**
 * Listeners on 127.0.0.1 and ::1 with full accept queues (backlog 0 and one connection
 * waiting), in a python process outside the tree; a line on stdin makes them accept and echo.
 */
async function fullListeners(): Promise<{ ports: [number, number]; drain: () => void; pid: number }> {
  const script = [
    'import os, socket, sys, threading',
    'os.closerange(3, 1 << 16)',
    'ls = []',
    'for fam, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):',
    '    l = socket.socket(fam); l.bind((addr, 0)); l.listen(0)',
    '    f = socket.socket(fam); f.connect(l.getsockname())',
    '    ls.append((l, f))',
    'print("ports", ls[0][0].getsockname()[1], ls[1][0].getsockname()[1], flush=True)',
    'def echo(c):',
    '    while (d := c.recv(100)): c.sendall(d)',
    'def serve(l):',
    '    while True: threading.Thread(target=echo, args=(l.accept()[0],), daemon=True).start()',
    'sys.stdin.readline()',
    'for l, f in ls: f.close(); threading.Thread(target=serve, args=(l,), daemon=True).start()',
    'threading.Event().wait()',
  ].join('\n');
  const c = spawn(PYTHON, ['-c', script], { stdio: ['pipe', 'pipe', 'inherit'], detached: true });
  own(c.pid!);
  let out = '';
  c.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  await waitFor('the listeners', () => /ports \d+ \d+/.test(out));
  const m = /ports (\d+) (\d+)/.exec(out)!;
  return { ports: [Number(m[1]), Number(m[2])], drain: () => c.stdin.write('go\n'), pid: c.pid! };
}

describe('TCP connect in progress (SYN_SENT)', { skip: skip || needs('python'), timeout: 60_000 }, () => {
  it('comes back connecting from the same port (a blocking connect too) and completes when the peer accepts', async () => {
    const srv = await fullListeners();
    const w = await startWorkload(join(WORKLOADS, 'tcpstates'), ['syn', String(srv.ports[0]), String(srv.ports[1])]);
    assert.match(w.text(), /states=SYN_SENT,SYN_SENT,SYN_SENT/);
    const local = /ports=(\d+),(\d+),(\d+)/.exec(w.text())!.slice(1).map(Number);
    const image = join(w.dir, 'syn.tar');
    await cycleThrough(w, image, 0);
    assert.deepEqual(portsIn(w.pid, '02').sort(), [...local].sort(), 'all three connecting again from their ports');
    srv.drain();
    assert.equal(await verify(w, 120_000), 'PASS');
  });

  it('--leave-running leaves the connects alone', async () => {
    const srv = await fullListeners();
    const w = await startWorkload(join(WORKLOADS, 'tcpstates'), ['syn', String(srv.ports[0]), String(srv.ports[1])]);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'syn.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    srv.drain();
    assert.equal(await verify(w, 120_000), 'PASS');
  });
});

/** A client connection from this test process, resolved once connected; errors are kept. */
function client(port: number): Promise<{ sock: Socket; error: () => string | undefined }> {
  return new Promise((resolve, reject) => {
    let error: string | undefined;
    const sock = createConnection({ host: '127.0.0.1', port });
    sock.on('error', (e: NodeJS.ErrnoException) => { error = e.code ?? e.message; });
    sock.once('connect', () => resolve({ sock, error: () => error }));
    setTimeout(() => reject(new Error('no connection')), 5000).unref();
  });
}

describe('a connection that ended with bytes unread', { skip: skip || needs('python'), timeout: 30_000 }, () => {
  it('is refused (it would come back empty), naming the bytes; nothing changes', async () => {
    const script = [
      'import os, signal, socket, time',
      'os.closerange(3, 1 << 16)',
      'l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(4)',
      'c = socket.create_connection(l.getsockname()); s, _ = l.accept()',
      // c half-closes, s answers and closes: c goes FIN_WAIT2 -> TIME_WAIT, its socket CLOSE.
      'c.shutdown(socket.SHUT_WR); s.send(b"response"); s.close(); time.sleep(0.1)',
      'print(f"ready pid={os.getpid()}", flush=True)',
      'signal.signal(signal.SIGUSR1, lambda *a: print("PASS" if c.recv(100) == b"response" and c.recv(100) == b"" else "FAIL", flush=True))',
      'signal.pause()',
    ].join('\n');
    const w = await startWorkload(PYTHON, ['-c', script]);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'x.tar'), '--tcp-established']);
    assert.equal(cp.code, 1);
    assert.match(cp.stderr, new RegExp(`pid ${w.pid} fd \\d+: TCP socket 127\\.0\\.0\\.1:\\d+ is closed \\(its connection ended\\) with 8 byte\\(s\\) not read yet`));
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w, 120_000), 'PASS');
  });
});

describe('connections not accepted yet (--skip-in-flight)', { skip: skip || needs('python'), timeout: 60_000 }, () => {
  const script = [
    'import os, signal, socket',
    'os.closerange(3, 1 << 16)',
    'l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(4)',
    'print(f"ready pid={os.getpid()} port={l.getsockname()[1]}", flush=True)',
    'signal.pause()',
  ].join('\n');

  it('are refused naming the flag; with it they are left out with a warning and the listener comes back', async () => {
    const w = await startWorkload(PYTHON, ['-c', script]);
    const port = Number(/port=(\d+)/.exec(w.text())![1]);
    const early = await client(port);
    const image = join(w.dir, 'l.tar');
    const no = ferry(['checkpoint', '--pid', String(w.pid), '--image', image]);
    assert.equal(no.code, 1);
    assert.match(no.stderr, new RegExp(`pid ${w.pid} fd \\d+: listening TCP socket 127\\.0\\.0\\.1:${port} has 1 connection\\(s\\) not accepted yet, .* --skip-in-flight`));
    assert.equal(procState(w.pid).tracer, 0);

    const lr = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--skip-in-flight', '--leave-running']);
    assert.equal(lr.code, 0, lr.stderr);
    assert.match(lr.stderr, /^warning: .*1 connection\(s\) not accepted yet left out \(--skip-in-flight\)/m);
    assert.equal(early.error(), undefined, '--leave-running keeps the waiting connection');

    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--skip-in-flight', '--json']);
    assert.equal(cp.code, 0, cp.stderr);
    const result = JSON.parse(cp.stdout.toString()) as { warnings?: string[] };
    assert.equal(result.warnings?.length, 1, cp.stdout.toString());
    assert.match(result.warnings[0]!, new RegExp(`pid ${w.pid} fd \\d+: listening TCP socket 127\\.0\\.0\\.1:${port}: 1 connection`));
    await w.exited;
    await waitFor('the left-out client to be reset', () => early.error() !== undefined || early.sock.destroyed, 5000);
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.ok(portsIn(w.pid, '0A').includes(port), 'listening again');
    const late = await client(port);
    assert.equal(late.error(), undefined);
    late.sock.destroy();
  });
});

/** Runs a command of the test's own setup (ip, nft), failing the test with its stderr. */
function run(cmd: string, args: string[], input?: string): void {
  const r = spawnSync(cmd, args, { input: input ?? '', timeout: 10_000 });
  assert.equal(r.status, 0, `${cmd} ${args.join(' ')}: ${r.stderr?.toString()}`);
}

/**
 * A network namespace of this test with a veth pair: `host` (10.a.b.1) here, `peer`
 * (10.a.b.2) inside it. `drop` adds nftables rules in it: segments with data from the host
 * (with `all`, every segment) are dropped on the way in (never acknowledged); with `lock`,
 * everything from the peer to the host too (the network lock a real migration needs while
 * the tree is gone). `open` removes them.
 */
function makeNetns(): { ns: string; host: string; peer: string; host6: string; peer6: string; drop: (o?: { all?: boolean; lock?: boolean }) => void; open: () => void; remove: () => void } {
  const tag = randomBytes(3).toString('hex');
  const ns = `ferry-t-${tag}`;
  const [a, b] = [200 + (parseInt(tag.slice(0, 2), 16) % 50), parseInt(tag.slice(2, 4), 16)];
  const host = `10.${a}.${b}.1`, peer = `10.${a}.${b}.2`;
  const host6 = `fd00:${a.toString(16)}:${b.toString(16)}::1`, peer6 = `fd00:${a.toString(16)}:${b.toString(16)}::2`;
  const vh = `fth${tag}a`, vp = `fth${tag}b`;
  run('ip', ['netns', 'add', ns]);
  const remove = (): void => {
    spawnSync('ip', ['link', 'del', vh], { timeout: 10_000 });
    spawnSync('ip', ['netns', 'del', ns], { timeout: 10_000 });
  };
  try {
    run('ip', ['link', 'add', vh, 'type', 'veth', 'peer', 'name', vp, 'netns', ns]);
    run('ip', ['addr', 'add', `${host}/30`, 'dev', vh]);
    run('ip', ['-6', 'addr', 'add', `${host6}/64`, 'dev', vh, 'nodad']);
    run('ip', ['link', 'set', vh, 'up']);
    run('ip', ['-n', ns, 'addr', 'add', `${peer}/30`, 'dev', vp]);
    run('ip', ['-n', ns, '-6', 'addr', 'add', `${peer6}/64`, 'dev', vp, 'nodad']);
    run('ip', ['-n', ns, 'link', 'set', vp, 'up']);
    run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
  } catch (err) {
    remove();
    throw err;
  }
  const nft = (script: string): void => run('ip', ['netns', 'exec', ns, 'nft', '-f', '-'], script);
  return {
    ns, host, peer, host6, peer6, remove,
    // TCP only: neighbour discovery and ARP go on. The table is replaced in one transaction
    // (made if missing, deleted, made again), so no segment passes between two sets of rules.
    drop: ({ all = false, lock = false } = {}) => nft([
      'table inet ferrytest',
      'delete table inet ferrytest',
      'table inet ferrytest {',
      '  chain in { type filter hook input priority 0; policy accept;',
      `    ip saddr ${host} meta l4proto tcp ${all ? '' : 'ip length > 100 '}drop;`,
      `    ip6 saddr ${host6} meta l4proto tcp ${all ? '' : 'ip6 length > 80 '}drop; }`,
      ...(lock ? [
        '  chain out { type filter hook output priority 0; policy accept;',
        `    ip daddr ${host} meta l4proto tcp drop; ip6 daddr ${host6} meta l4proto tcp drop; }`,
      ] : []),
      '}',
    ].join('\n')),
    open: () => nft('delete table inet ferrytest'),
  };
}

describe('a connection whose peer is outside the tree, in another network namespace', { skip, timeout: 300_000 }, () => {
  const TCPSTATES = join(WORKLOADS, 'tcpstates');
  let net: ReturnType<typeof makeNetns> | undefined;
  const peers: number[] = [];
  after(() => {
    for (const p of peers) { try { process.kill(p, 'SIGKILL'); } catch { /* gone */ } }
    net?.remove();
  });

  /** The peer in the namespace and the tree's end, both queues full, FIN_WAIT1 with data in flight. */
  async function brim(): Promise<{ w: Workload; peer: Workload; lport: number }> {
    net ??= makeNetns();
    net.drop();
    const peer = await startWorkload('ip', ['netns', 'exec', net.ns, TCPSTATES, 'peer', net.peer], { readyTimeoutMs: 60_000 });
    peers.push(peer.pid);
    const port = /port=(\d+)/.exec(peer.text())![1]!;
    const w = await startWorkload(TCPSTATES, ['brim', net.peer, port], { readyTimeoutMs: 60_000 });
    const m = /state=(\S+) unacked=(\d+) unsent=(\d+) inq=(\d+)/.exec(w.text())!;
    assert.equal(m[1], 'FIN_WAIT1', w.text());
    assert.ok(Number(m[2]) > 0 && Number(m[3]) > 0 && Number(m[4]) > 0, `sent-unacknowledged, unsent and received bytes queued: ${m[0]}`);
    await waitFor('the peer\'s flood', () => /sent=\d+/.test(peer.text()));
    return { w, peer, lport: Number(/lport=(\d+)/.exec(w.text())![1]) };
  }

  /** Both ends read the rest of the conversation: every byte each sent, then EOF. */
  async function conversation(w: Workload, peer: Workload): Promise<void> {
    const [a, b] = await Promise.all([verify(w), verify(peer)]);
    assert.equal(a, 'PASS', w.text());
    assert.equal(b, 'PASS', peer.text());
    const num = (t: string, k: string): number => Number(new RegExp(`${k}=(\\d+)`).exec(t)![1]);
    assert.equal(num(peer.text(), 'got'), num(w.text(), 'sent'), 'the peer got every byte the tree sent');
    assert.equal(num(w.text(), 'got'), num(peer.text(), 'sent'), 'the tree got every byte the peer sent');
  }

  it('checkpoint and restore: every byte both ways, then both FINs', async () => {
    const { w, peer, lport } = await brim();
    net!.drop({ lock: true }); // still dropping the tree's data, and now everything the peer sends
    const image = join(w.dir, 'brim.tar');
    await cycleThrough(w, image, 0, ['--tcp-established']);
    assert.deepEqual(statesOf(w.pid, [lport]), ['04'], 'FIN_WAIT1 after restore');
    net!.open();
    await conversation(w, peer);
  });

  /** TCP states (hex, as /proc/net/tcp{,6} has them) of the pid's sockets on these local ports. */
  function statesOf(pid: number, ports: number[], v6 = false): string[] {
    const by = new Map<number, string>();
    for (const line of readFileSync(`/proc/${pid}/net/tcp${v6 ? '6' : ''}`, 'utf8').split('\n').slice(1)) {
      const c = line.trim().split(/\s+/);
      // Not listeners, nor TIME_WAIT entries (no descriptor: an earlier connection that had the
      // same local port, which would hide the tree's socket).
      if (c.length > 3 && c[3] !== '0A' && c[3] !== '06') by.set(parseInt(c[1]!.split(':')[1]!, 16), c[3]!);
    }
    return ports.map((p) => by.get(p) ?? 'none');
  }
  // FIN_WAIT1, CLOSE_WAIT, LAST_ACK, CLOSING
  const FINS = ['04', '08', '09', '0B'];

  /**
   * Four connections to a peer in the namespace whose every segment from the tree is dropped:
   * FINs of the tree sent and never acknowledged (FIN_WAIT1, LAST_ACK, CLOSING), the peer's
   * FINs received (CLOSE_WAIT, LAST_ACK, CLOSING).
   */
  async function fins(v6 = false): Promise<{ w: Workload; peer: Workload; ports: number[] }> {
    net ??= makeNetns();
    const to = v6 ? net.peer6 : net.peer;
    const peer = await startWorkload('ip', ['netns', 'exec', net.ns, TCPSTATES, 'finpeer', to], { readyTimeoutMs: 60_000 });
    peers.push(peer.pid);
    const port = /port=(\d+)/.exec(peer.text())![1]!;
    const w = await startWorkload(TCPSTATES, ['fins', to, port], { readyTimeoutMs: 60_000 });
    await waitFor('the peer to accept', () => peer.text().includes('accepted'));
    net.drop({ all: true });
    process.kill(w.pid, 'SIGUSR2');
    await waitFor('step 1 of the tree', () => w.text().includes('step1'));
    process.kill(peer.pid, 'SIGUSR2');
    await waitFor('step 1 of the peer', () => peer.text().includes('step1'));
    process.kill(w.pid, 'SIGUSR2');
    await waitFor('the states', () => /states=/.test(w.text()));
    assert.match(w.text(), /states=FIN_WAIT1,CLOSE_WAIT,LAST_ACK,CLOSING /);
    const ports = /ports=(\d+),(\d+),(\d+),(\d+)/.exec(w.text())!.slice(1).map(Number);
    return { w, peer, ports };
  }

  /** Both ends go on: the tree's FINs are retransmitted and acknowledged, the peer's answer arrives. */
  async function finish(w: Workload, peer: Workload): Promise<void> {
    const [a, b] = await Promise.all([verify(w), verify(peer)]);
    assert.equal(a, 'PASS', w.text());
    assert.equal(b, 'PASS', peer.text());
  }

  for (const v6 of [false, true]) {
    it(`FINs sent and not acknowledged, FINs received from outside (${v6 ? 'IPv6' : 'IPv4'}): checkpoint and restore`, async () => {
    const { w, peer, ports } = await fins(v6);
    net!.drop({ all: true, lock: true });
    const image = join(w.dir, 'fins.tar');
    await cycleThrough(w, image, 0, ['--tcp-established']);
    assert.deepEqual(statesOf(w.pid, ports, v6), FINS, 'the same states after restore');
    net!.open();
    await finish(w, peer);
    });
  }

  it('FINs sent and not acknowledged: --leave-running', async () => {
    const { w, peer, ports } = await fins();
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'fins.tar'), '--tcp-established', '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.deepEqual(statesOf(w.pid, ports), FINS, 'the same states');
    net!.open();
    await finish(w, peer);
  });

  it('an image whose connection claims an address not of this host gets no forged segment', async () => {
    const w = await startWorkload(TCPSTATES, [], { readyTimeoutMs: 60_000 });
    const image = join(w.dir, 'tcp.tar'), edited = join(w.dir, 'edited.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--tcp-established']);
    assert.equal(cp.code, 0, cp.stderr);
    await w.exited;
    // The CLOSE_WAIT end says it is an address of the test's namespace's subnet that is nobody's,
    // connected to the namespace's peer address (so anything sent stays in the test's veth),
    // and may bind and send there (IP_FREEBIND, IP_TRANSPARENT).
    net ??= makeNetns();
    const fake = net.peer.replace(/\.2$/, '.6');
    await editImage(image, edited, { 'files.json': json<{ files: Array<Record<string, any>> }>((f) => { // eslint-disable-line @typescript-eslint/no-explicit-any
      const r = f.files.find((x) => x.kind === 'inet' && x.family === 'ipv4' && x.tcp?.state === 'CLOSE_WAIT')!;
      r.local.address = fake;
      r.remote.address = net!.peer;
      r.opts.ip_freebind = 1;
      r.opts.ip_transparent = 1; // lets it route from an address not its own (FLOWI_FLAG_ANYSRC)
    }) });
    await waitFor(`pid ${w.pid} to be free`, () => !alive(w.pid), 5000);
    const bad = ferry(['restore', '--image', edited, '--tcp-established', '--max-creds', 'root']);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, new RegExp(`the connection's own address ${fake.replaceAll('.', '\\.')} is not an address of this host`));
    assert.ok(!alive(w.pid), 'nothing left half restored');
    const rs = ferry(['restore', '--image', image, '--tcp-established']);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.equal(await verify(w, 120_000), 'PASS');
  });

  it('--leave-running: the original runs on with every byte', async () => {
    const { w, peer, lport } = await brim();
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'brim.tar'), '--tcp-established', '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    // FIN_WAIT1, or CLOSING: the tree still runs, and the peer's last bytes and FIN may have
    // come in meanwhile (once seen in CI).
    assert.ok(['04', '0B'].includes(statesOf(w.pid, [lport])[0]!), `FIN_WAIT1 or CLOSING after the checkpoint: ${statesOf(w.pid, [lport]).join()}`);
    net!.open();
    await conversation(w, peer);
  });
});
