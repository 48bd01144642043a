/**
 * A TCP connection that lives through a migration between two "nodes" (test/helpers/nodes.ts,
 * with a client namespace linked to both): `ferry migrate --tcp-established` moves a Python
 * echo workload from the source node to the target node while its peer, a Python client in
 * the client namespace, goes on sending numbered bytes and checking each echo. The workload's
 * end of the connection is the service address, which both nodes hold on lo; the client is
 * routed to the source until ferry migrate returns, then to the target, as a virtual address
 * moves with a workload. The connection must carry on in order, without a reset; the network
 * lock kept on the source after the kill must be gone once the workload runs on the target,
 * and no lock may be left on the target.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { NFT } from '../helpers/echo.js';
import { needs, PYTHON } from '../helpers/env.js';
import { makeNodes, netnsOf, nodesMissing, removeNodes, spawnIn, type Node, type Nodes } from '../helpers/nodes.js';
import { exitOf, killFerries, records, startFerry } from '../helpers/precopy-run.js';
import { cleanup, own, procState, scratchDir, startWorkload, verify, waitFor } from '../helpers/processes.js';

const skip = needs('root', 'build') || nodesMissing() || (NFT === undefined ? 'needs nft (apt-get install nftables)' : false);

after(() => {
  killFerries();
  removeNodes();
  cleanup();
});

/** The workload: connects from the service address to the client, echoes what it reads. */
const ECHO = [
  'import os, signal, socket, sys',
  'os.closerange(3, 1 << 16)',
  's = socket.socket()',
  's.bind((sys.argv[1], 0))',
  's.connect((sys.argv[2], int(sys.argv[3])))',
  'def check(*_):',
  '    print("PASS", flush=True)',
  'signal.signal(signal.SIGUSR1, check)',
  'print(f"ready pid={os.getpid()}", flush=True)',
  'while True:',
  '    d = s.recv(65536)',
  '    if not d: break',
  '    s.sendall(d)',
].join('\n');

/**
 * The client: listens on its address, takes the workload's connection, sends numbered bytes
 * (1000 every 5 ms, as much as the socket takes) and checks every echoed byte; prints
 * "sent S received R" every 100 ms and, on the first fault, "error WHAT".
 */
const CLIENT = [
  'import select, socket, sys, time',
  'l = socket.socket()',
  'l.bind((sys.argv[1], 0))',
  'l.listen(1)',
  'print("port", l.getsockname()[1], flush=True)',
  'c, _ = l.accept()',
  'l.close()',
  'c.setblocking(False)',
  'sent = received = 0',
  'err = ""',
  'last = 0',
  'while not err:',
  '    r, w, _ = select.select([c], [c], [], 0.005)',
  '    try:',
  '        if w:',
  '            sent += c.send(bytes((sent + i) % 251 for i in range(1000)))',
  '        if r:',
  '            d = c.recv(65536)',
  '            if not d: err = "the connection closed"',
  '            for b in d:',
  '                if b != received % 251:',
  '                    err = f"byte {received} is {b}, expected {received % 251}"',
  '                    break',
  '                received += 1',
  '    except BlockingIOError:',
  '        pass',
  '    except OSError as e:',
  '        err = str(e)',
  '    if time.monotonic() - last > 0.1:',
  '        print(f"sent {sent} received {received}", flush=True)',
  '        last = time.monotonic()',
  '    time.sleep(0.005)',
  'print(f"error {err}", flush=True)',
].join('\n');

/** The lock tables (ferry-lock-…) in node `n`'s network namespace. */
function locksIn(n: Node): string[] {
  const [cmd, args] = n.exec(NFT!, ['list', 'tables']);
  const out = spawnSync(cmd, args, { encoding: 'utf8', timeout: 10_000 }).stdout ?? '';
  return [...out.matchAll(/^table inet (ferry-lock-\S+)$/gm)].map((m) => m[1]!);
}

describe('a TCP connection through a migration', { skip, timeout: 300_000 }, () => {
  let nodes: Nodes;
  let config = '';
  let key = '';
  before(() => {
    nodes = makeNodes({ client: true });
    const dir = scratchDir('ferry-migrate-tcp-');
    const workDir = join(dir, 'work');
    mkdirSync(workDir, { mode: 0o700 });
    config = join(dir, 'config.toml');
    writeFileSync(config, `[image]\nwork_dir = "${workDir}"\n`);
    key = join(dir, 'migrate.key');
    writeFileSync(key, `${'3a'.repeat(32)}\n`, { mode: 0o600 });
  });

  it('--tcp-established: the connection carries on from the target, in order, without a reset; no lock is left', async () => {
    // The client, in its namespace.
    const client = spawnIn(nodes.client!, PYTHON, ['-c', CLIENT, nodes.client!.addr], { stdio: ['ignore', 'pipe', 'pipe'] });
    let said = '';
    client.stdout!.on('data', (d: Buffer) => { said += d.toString(); });
    client.stderr!.on('data', (d: Buffer) => { said += d.toString(); });
    const status = (): { sent: number; received: number; error?: string } => {
      const error = /^error (.*)$/m.exec(said)?.[1];
      const last = [...said.matchAll(/^sent (\d+) received (\d+)$/gm)].at(-1);
      return { sent: Number(last?.[1] ?? 0), received: Number(last?.[2] ?? 0), ...(error !== undefined ? { error } : {}) };
    };
    await waitFor('the client to listen', () => /^port \d+$/m.test(said), 20_000);
    const port = /^port (\d+)$/m.exec(said)![1]!;

    // The workload, in the source node, connected from the service address.
    const [cmd, args] = nodes.source.exec(PYTHON, ['-c', ECHO, nodes.service!, nodes.client!.addr, port]);
    const w = await startWorkload(cmd, args);
    assert.equal(netnsOf(w.pid), nodes.source.nsLink());
    await waitFor('echoes through the source', () => status().received > 50_000 || status().error !== undefined, 20_000);
    assert.equal(status().error, undefined, said);

    // The receiver takes the flags from the sender's hello.
    const recv = startFerry(['receive', '--listen', `${nodes.target.addr}:0`, '--key', key, '--json', '--once', '--max-creds', 'root',
      '--config', config], undefined, nodes.target);
    await waitFor('the receiver to listen', () => records(recv).some((x) => x['phase'] === 'listen') || recv.child.exitCode !== null);
    const listen = records(recv).find((x) => x['phase'] === 'listen');
    assert.ok(listen, recv.stderr());
    const mig = startFerry(['migrate', '--pid', String(w.pid), '--to', `tcp://${nodes.target.addr}:${String(listen['port'])}`, '--key', key,
      '--tcp-established', '--json', '--config', config], undefined, nodes.source);
    assert.equal(await exitOf(mig, 'ferry migrate'), 0, mig.stderr());
    assert.equal(await exitOf(recv, 'ferry receive --once'), 0, recv.stderr());
    // The address moves with the workload: the client now reaches it on the target.
    nodes.serve!('target');
    await w.exited; // the original, killed and reaped here
    own(w.pid);
    assert.equal(netnsOf(w.pid), nodes.target.nsLink(), 'it runs in the target node');
    assert.equal(procState(w.pid).tracer, 0);

    // The connection carries on: many more bytes echoed, in order, and no error.
    const at = status().received;
    await waitFor('echoes through the target', () => status().received > at + 200_000 || status().error !== undefined, 60_000);
    assert.equal(status().error, undefined, `the client saw: ${status().error ?? ''}`);
    assert.equal(await verify(w), 'PASS');
    assert.deepEqual(locksIn(nodes.source), [], 'the lock kept on the source after the kill is removed');
    assert.deepEqual(locksIn(nodes.target), [], 'no lock is left on the target');
    const done = records(mig).find((x) => x['phase'] === 'done');
    process.stdout.write(`# a TCP connection migrated: downtime ${String(done?.['downtimeMs'])} ms\n`);
    process.kill(w.pid, 'SIGKILL');
    client.kill('SIGKILL');
  });

  it('without --tcp-established, the connection is refused naming the flag, and the workload runs on', async () => {
    const client = spawnIn(nodes.client!, PYTHON, ['-c', CLIENT, nodes.client!.addr], { stdio: ['ignore', 'pipe', 'pipe'] });
    let said = '';
    client.stdout!.on('data', (d: Buffer) => { said += d.toString(); });
    await waitFor('the client to listen', () => /^port \d+$/m.test(said), 20_000);
    nodes.serve!('source');
    const [cmd, args] = nodes.source.exec(PYTHON, ['-c', ECHO, nodes.service!, nodes.client!.addr, /^port (\d+)$/m.exec(said)![1]!]);
    const w = await startWorkload(cmd, args);
    await waitFor('echoes', () => / received [1-9]\d{4,}$/m.test(said), 20_000);
    const recv = startFerry(['receive', '--listen', `${nodes.target.addr}:0`, '--key', key, '--json', '--once', '--max-creds', 'root',
      '--config', config], undefined, nodes.target);
    await waitFor('the receiver to listen', () => records(recv).some((x) => x['phase'] === 'listen') || recv.child.exitCode !== null);
    const port = String(records(recv).find((x) => x['phase'] === 'listen')?.['port']);
    const mig = startFerry(['migrate', '--pid', String(w.pid), '--to', `tcp://${nodes.target.addr}:${port}`, '--key', key, '--config', config],
      undefined, nodes.source);
    assert.equal(await exitOf(mig, 'ferry migrate'), 1);
    assert.match(mig.stderr(), /--tcp-established/);
    assert.equal(mig.stderr().trim().split('\n').length, 1, 'one line');
    await exitOf(recv, 'ferry receive --once');
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(procState(w.pid).ppid, process.pid, 'the original runs on');
    const n = Number(/received (\d+)\n?$/.exec(said.trim())?.[1] ?? 0);
    await waitFor('echoes go on', () => Number(/received (\d+)$/.exec(said.trim())?.[1] ?? 0) > n + 20_000, 20_000);
    assert.doesNotMatch(said, /^error /m);
    assert.equal(await verify(w), 'PASS');
    process.kill(w.pid, 'SIGKILL');
    client.kill('SIGKILL');
  });
});
