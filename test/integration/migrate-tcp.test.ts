/**
 * A TCP connection that lives through a migration between two "nodes" (test/helpers/nodes.ts,
 * with a client namespace linked to both): `ferry migrate --tcp-established` moves a Python
 * echo workload (test/helpers/echo.ts ECHO) from the source node to the target node while its
 * peer, a Python client in the client namespace, goes on sending numbered bytes and checking
 * each echo. The workload's
 * end of the connection is the service address, which both nodes hold on lo; the client is
 * routed to the source until ferry migrate returns, then to the target, as a virtual address
 * moves with a workload. The connection must carry on in order, without a reset; the network
 * lock kept on the source after the kill must be gone once the workload runs on the target,
 * and no lock may be left on the target. The same for a runc container that joins a pod's
 * network namespace by path (as a CNI plugin sets one up, the address on the pod's side of a
 * veth to its node): it is made again on the target in that node's pod, with the same address.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readlinkSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ECHO, NFT } from '../helpers/echo.js';
import { needs, PYTHON } from '../helpers/env.js';
import { makeNodes, makePod, netnsOf, nodesMissing, removeNodes, spawnIn, type Node, type Nodes } from '../helpers/nodes.js';
import { exitOf, killFerries, records, startFerry, type Running } from '../helpers/precopy-run.js';
import { cleanup, own, procState, scratchDir, startWorkload, verify, waitFor } from '../helpers/processes.js';

const skip = needs('root', 'build') || nodesMissing() || (NFT === undefined ? 'needs nft (apt-get install nftables)' : false);
const RUNC = ['/usr/sbin/runc', '/usr/bin/runc'].find((p) => existsSync(p));
const runcSkip = skip || (RUNC === undefined ? 'needs runc (apt-get install runc)' : false);

after(() => {
  killFerries();
  removeNodes();
  cleanup();
});


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

/** The lock tables (ferry-lock-…) in the network namespace at `netns` (/run/netns/NAME). */
function locksIn(netns: string): string[] {
  const out = spawnSync('nsenter', [`--net=${netns}`, '--', NFT!, 'list', 'tables'], { encoding: 'utf8', timeout: 10_000 }).stdout ?? '';
  return [...out.matchAll(/^table inet (ferry-lock-\S+)$/gm)].map((m) => m[1]!);
}
const nsPath = (n: Node): string => `/run/netns/${n.netns}`;

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

  /** The client, in its namespace: its port and what it says. */
  async function startClient(): Promise<{ port: string; status(): { sent: number; received: number; error?: string }; said(): string; kill(): void }> {
    const client = spawnIn(nodes.client!, PYTHON, ['-c', CLIENT, nodes.client!.addr], { stdio: ['ignore', 'pipe', 'pipe'] });
    let said = '';
    client.stdout!.on('data', (d: Buffer) => { said += d.toString(); });
    client.stderr!.on('data', (d: Buffer) => { said += d.toString(); });
    await waitFor('the client to listen', () => /^port \d+$/m.test(said), 20_000);
    return {
      port: /^port (\d+)$/m.exec(said)![1]!,
      said: () => said,
      status: () => {
        const error = /^error (.*)$/m.exec(said)?.[1];
        const last = [...said.matchAll(/^sent (\d+) received (\d+)$/gm)].at(-1);
        return { sent: Number(last?.[1] ?? 0), received: Number(last?.[2] ?? 0), ...(error !== undefined ? { error } : {}) };
      },
      kill: () => client.kill('SIGKILL'),
    };
  }

  /** A --once receiver in the target node; its port. */
  async function receiver(): Promise<{ recv: Running; port: string }> {
    const recv = startFerry(['receive', '--listen', `${nodes.target.addr}:0`, '--key', key, '--json', '--once', '--max-creds', 'root',
      '--config', config], undefined, nodes.target);
    await waitFor('the receiver to listen', () => records(recv).some((x) => x['phase'] === 'listen') || recv.child.exitCode !== null);
    const listen = records(recv).find((x) => x['phase'] === 'listen');
    assert.ok(listen, recv.stderr());
    return { recv, port: String(listen['port']) };
  }

  it('--tcp-established: the connection carries on from the target, in order, without a reset; no lock is left', async () => {
    const client = await startClient();
    const { status } = client;
    nodes.serve!('source');

    // The workload, in the source node, connected from the service address.
    const [cmd, args] = nodes.source.exec(PYTHON, ['-c', ECHO, client.port, nodes.client!.addr, nodes.service!]);
    const w = await startWorkload(cmd, args);
    assert.equal(netnsOf(w.pid), nodes.source.nsLink());
    await waitFor('echoes through the source', () => status().received > 50_000 || status().error !== undefined, 20_000);
    assert.equal(status().error, undefined, client.said());

    // The receiver takes the flags from the sender's hello.
    const { recv, port } = await receiver();
    // The address moves while the tree does: ferry migrate removes the source's lock once
    // the tree runs on the target, and a packet that reached the source after that would be
    // answered by a reset (docs/migration.md).
    nodes.serve!('none');
    const mig = startFerry(['migrate', '--pid', String(w.pid), '--to', `tcp://${nodes.target.addr}:${port}`, '--key', key,
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
    assert.deepEqual(locksIn(nsPath(nodes.source)), [], 'the lock kept on the source after the kill is removed');
    assert.deepEqual(locksIn(nsPath(nodes.target)), [], 'no lock is left on the target');
    const done = records(mig).find((x) => x['phase'] === 'done');
    process.stdout.write(`# a TCP connection migrated: downtime ${String(done?.['downtimeMs'])} ms\n`);
    process.kill(w.pid, 'SIGKILL');
    client.kill();
  });

  it('a runc container in a pod\'s namespace keeps its connection on the target, in the target\'s pod; no lock is left', { skip: runcSkip }, async () => {
    // A pod on each node (a namespace the container joins by path), with the same address.
    const x = (process.pid % 250) + 1;
    const podAddr = `10.205.${x}.1`;
    const pods = { source: makePod(nodes.source, 'ps', podAddr), target: makePod(nodes.target, 'pt', podAddr) };
    nodes.serve!('source', podAddr);
    const client = await startClient();

    // A rootfs with the host's /usr (python3) bind-mounted, read-only.
    const dir = scratchDir('ferry-migrate-tcp-ctr-');
    const rootfs = join(dir, 'rootfs');
    for (const d of ['usr', 'proc', 'dev', 'sys', 'tmp', 'etc']) mkdirSync(join(rootfs, d), { recursive: true });
    for (const l of ['bin', 'lib', 'lib64', 'sbin']) symlinkSync(`usr/${l}`, join(rootfs, l));
    /** A bundle in node `n`'s bundle directory, joining pod namespace `pod`. */
    const bundle = (n: Node, name: string, pod: string): string => {
      const b = join(n.bundles, name);
      mkdirSync(b, { mode: 0o755 });
      const spec = spawnSync(RUNC!, ['spec', '--bundle', b], { encoding: 'utf8' });
      assert.equal(spec.status, 0, spec.stderr);
      const c = JSON.parse(readFileSync(join(b, 'config.json'), 'utf8')) as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
      c.root = { path: rootfs, readonly: true };
      c.process.terminal = false;
      c.process.args = ['/usr/bin/python3', '-c', ECHO, client.port, nodes.client!.addr, podAddr];
      c.mounts.push({ destination: '/usr', type: 'bind', source: '/usr', options: ['rbind', 'ro'] });
      c.linux.namespaces = (c.linux.namespaces as Array<{ type: string }>).map((ns) => (ns.type === 'network' ? { type: 'network', path: pod } : ns));
      writeFileSync(join(b, 'config.json'), JSON.stringify(c, null, 1), { mode: 0o644 });
      return b;
    };
    const id = `ferry-tcp-${process.pid}`;
    const log = join(dir, 'ctr.log');
    const fd = openSync(log, 'a');
    const [cmd, args] = nodes.source.exec(RUNC!, ['--root', nodes.source.runcRoot, 'run', '-d', '--bundle', bundle(nodes.source, id, pods.source), id]);
    const run = spawnSync(cmd, args, { stdio: ['ignore', fd, fd], timeout: 60_000 });
    closeSync(fd);
    assert.equal(run.status, 0, `runc run failed: ${readFileSync(log, 'utf8')}`);
    await waitFor('echoes through the source pod', () => client.status().received > 50_000 || client.status().error !== undefined, 20_000);
    assert.equal(client.status().error, undefined, client.said());

    const tb = bundle(nodes.target, `${id}-t`, pods.target);
    const { recv, port } = await receiver();
    nodes.serve!('none', podAddr); // the address in transit, as above
    const mig = startFerry(['migrate', id, '--root', nodes.source.runcRoot, '--to', `tcp://${nodes.target.addr}:${port}`, '--key', key,
      '--target-bundle', tb, '--target-root', nodes.target.runcRoot, '--tcp-established', '--json', '--config', config], undefined, nodes.source);
    assert.equal(await exitOf(mig, 'ferry migrate'), 0, mig.stderr());
    assert.equal(await exitOf(recv, 'ferry receive --once'), 0, recv.stderr());
    nodes.serve!('target', podAddr);
    const state = spawnSync(RUNC!, ['--root', nodes.target.runcRoot, 'state', id], { encoding: 'utf8' });
    assert.equal(state.status, 0, state.stderr);
    const init = (JSON.parse(state.stdout) as { pid: number; status: string }).pid;
    assert.equal(readlinkSync(`/proc/${init}/ns/net`), spawnSync('nsenter', [`--net=${pods.target}`, '--', 'readlink', '/proc/self/ns/net'],
      { encoding: 'utf8' }).stdout.trim(), 'it runs in the target pod');

    const at = client.status().received;
    await waitFor('echoes through the target pod', () => client.status().received > at + 200_000 || client.status().error !== undefined, 60_000);
    assert.equal(client.status().error, undefined, `the client saw: ${client.status().error ?? ''}`);
    assert.deepEqual(locksIn(pods.source), [], 'the lock kept in the source pod after the kill is removed');
    assert.deepEqual(locksIn(pods.target), [], 'no lock is left in the target pod');
    const done = records(mig).find((x) => x['phase'] === 'done');
    process.stdout.write(`# a container's TCP connection migrated: downtime ${String(done?.['downtimeMs'])} ms\n`);
    spawnSync(RUNC!, ['--root', nodes.target.runcRoot, 'delete', '--force', id], { timeout: 30_000 });
    client.kill();
  });

  it('without --tcp-established, the connection is refused naming the flag, and the workload runs on', async () => {
    const client = await startClient();
    nodes.serve!('source');
    const [cmd, args] = nodes.source.exec(PYTHON, ['-c', ECHO, client.port, nodes.client!.addr, nodes.service!]);
    const w = await startWorkload(cmd, args);
    await waitFor('echoes', () => client.status().received > 20_000, 20_000);
    const { recv, port } = await receiver();
    const mig = startFerry(['migrate', '--pid', String(w.pid), '--to', `tcp://${nodes.target.addr}:${port}`, '--key', key, '--config', config],
      undefined, nodes.source);
    assert.equal(await exitOf(mig, 'ferry migrate'), 1);
    assert.match(mig.stderr(), /--tcp-established/);
    assert.equal(mig.stderr().trim().split('\n').length, 1, 'one line');
    await exitOf(recv, 'ferry receive --once');
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(procState(w.pid).ppid, process.pid, 'the original runs on');
    const n = client.status().received;
    await waitFor('echoes go on', () => client.status().received > n + 20_000, 20_000);
    assert.equal(client.status().error, undefined);
    assert.equal(await verify(w), 'PASS');
    process.kill(w.pid, 'SIGKILL');
    client.kill();
  });
});
