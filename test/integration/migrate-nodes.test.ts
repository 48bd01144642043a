/**
 * Migration between two "nodes" on this machine (test/helpers/nodes.ts): two network
 * namespaces joined by a veth pair, each with its own runc --root and bundles. `ferry receive`
 * runs in the target's namespace, `ferry migrate` and the workload in the source's.
 *
 * - a counter over tcp:// (the same PID counts on in the target's namespace once the source is
 *   gone), and over ssh:// through an sshd of the test's own (its config, host key and
 *   authorized_keys in a temporary directory, on a port in the target's namespace);
 * - a runc container moved to a new id, its bundle and runc root on the target;
 * - the failures: a peer with another key (tcp://) and an ssh key the target does not know,
 *   both refused before one byte of image; a target bundle others can write and a target id
 *   in use, refused as early; the receiver SIGKILLed, the sender SIGKILLed (tcp://, ssh://,
 *   a container), the network cut (veth down) while the image streams; a container's restore
 *   failing on the target after the kill (restored on the source); the sender SIGKILLed after
 *   a container's kill (it runs on the target; the watchdog deletes the killed source). In
 *   every failure before the kill the source runs on
 *   unharmed (not stopped, not traced, counting, passing its check; a container still running
 *   under its id) and the target holds nothing (no restored process or stub, no container, no
 *   spool directory once a receiver has run there again).
 */
import assert from 'node:assert/strict';
import { spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, closeSync, copyFileSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { FERRY, needs, WORKLOADS } from '../helpers/env.js';
import { containersIn, makeNodes, netnsOf, nodesMissing, removeNodes, spawnIn, type Node, type Nodes } from '../helpers/nodes.js';
import { exitOf, records, startFerry, type Running } from '../helpers/precopy-run.js';
import {
  alive, cleanup, own, procState, scratchDir, startWorkload, stubs, verify, waitFor, type Workload,
} from '../helpers/processes.js';
import { countsOn, ticks } from '../helpers/runc-criu.js';

/** In this run's container ids: another run on the machine has other cgroups (runc names them by id). */
const RUN = process.pid;

const RUNC = ['/usr/sbin/runc', '/usr/bin/runc'].find((p) => existsSync(p));
const SSHD = ['/usr/sbin/sshd'].find((p) => existsSync(p));
const BUSYBOX = '/bin/busybox';
const skip = needs('root', 'build') || nodesMissing();
const sshSkip = skip || (SSHD === undefined ? 'needs sshd (apt-get install openssh-server; .ci/setup does)' : false);
const runcSkip = skip || (RUNC === undefined ? 'needs runc (apt-get install runc)' : !existsSync(BUSYBOX) ? `needs ${BUSYBOX} (apt-get install busybox-static)` : false);

after(() => {
  removeNodes();
  cleanup();
});

/** Starts bin/ferry `args` in node `n` (FERRY_TEST_PAUSE_AT from `pause`). */
const start = (n: Node, args: string[], pause?: string): Running => startFerry(args, pause, n);

/** Kills `pid` if it still runs (a counter exits by itself after its check). */
function stop(pid: number): void {
  try { process.kill(pid, 'SIGKILL'); } catch { /* exited */ }
}

/** Asserts that `pid` is alive, running (not stopped) and untraced. */
function unharmed(pid: number): void {
  assert.ok(alive(pid), `pid ${pid} is alive`);
  const st = procState(pid);
  assert.equal(st.tracer, 0, `pid ${pid} is untraced`);
  assert.ok(!['T', 't'].includes(st.state), `pid ${pid} is not stopped (state ${st.state})`);
}

describe('migration between two nodes', { skip, timeout: 600_000 }, () => {
  let nodes: Nodes;
  let dir = '';
  let workDir = '';
  let config = '';
  let key = '';
  let otherKey = '';
  before(() => {
    nodes = makeNodes();
    dir = scratchDir('ferry-nodes-test-');
    workDir = join(dir, 'work');
    mkdirSync(workDir, { mode: 0o700 });
    config = join(dir, 'config.toml');
    writeFileSync(config, `[image]\nwork_dir = "${workDir}"\n`);
    key = join(dir, 'migrate.key');
    otherKey = join(dir, 'other.key');
    writeFileSync(key, `${'7c'.repeat(32)}\n`, { mode: 0o600 });
    writeFileSync(otherKey, `${'e1'.repeat(32)}\n`, { mode: 0o600 });
  });

  /** The spool and copy directories ferry made. */
  const leftovers = (): string[] => readdirSync(workDir).filter((n) => n.startsWith('.ferry-'));

  /** A receiver in the target node on its address, with a port the kernel picked. */
  async function receiver(extra: string[], pause?: string): Promise<{ r: Running; port: number }> {
    const r = start(nodes.target, ['receive', '--listen', `${nodes.target.addr}:0`, '--key', key, '--json', '--config', config, ...extra], pause);
    await waitFor('the receiver to listen', () => records(r).some((x) => x['phase'] === 'listen') || r.child.exitCode !== null);
    const listen = records(r).find((x) => x['phase'] === 'listen');
    assert.ok(listen, `the receiver did not start: ${r.stderr()}`);
    return { r, port: listen['port'] as number };
  }

  /** A counter in the source node that has ticked a few times. */
  async function counter(): Promise<Workload> {
    const [cmd, args] = nodes.source.exec(join(WORKLOADS, 'counter'), ['50']);
    const w = await startWorkload(cmd, args);
    await waitFor('a few ticks', () => w.ticks().length >= 3);
    assert.equal(netnsOf(w.pid), nodes.source.nsLink(), 'the counter runs in the source node');
    return w;
  }

  /** `w`'s original runs on in the source node as it was, counting and passing its check. */
  async function runsOn(w: Workload): Promise<void> {
    unharmed(w.pid);
    assert.equal(procState(w.pid).ppid, process.pid, 'the original process, not a restored one');
    assert.equal(netnsOf(w.pid), nodes.source.nsLink());
    const n = w.ticks().length;
    await waitFor('the source to count on', () => w.ticks().length >= n + 3);
    assert.equal(await verify(w), 'PASS');
  }

  /** `w` was moved: the same PID counts on in the target node, untraced. */
  async function movedTo(w: Workload, before: number): Promise<void> {
    await w.exited; // the original was killed and reaped here
    own(w.pid);
    unharmed(w.pid);
    assert.notEqual(procState(w.pid).ppid, process.pid, 'a restored process, not the original');
    assert.equal(netnsOf(w.pid), nodes.target.nsLink(), 'it runs in the target node');
    await waitFor('ticks after the migration', () => w.ticks().length >= before + 6);
    assert.equal(await verify(w), 'PASS');
  }

  it('moves a counter over tcp:// to the other node: the same PID counts on there', async () => {
    const w = await counter();
    const { r: recv, port } = await receiver(['--once', '--max-creds', 'root']);
    const before = w.ticks().length;
    const to = `tcp://${nodes.target.addr}:${port}`;
    const mig = start(nodes.source, ['migrate', '--pid', String(w.pid), '--to', to, '--key', key, '--json', '--config', config]);
    assert.equal(await exitOf(mig, 'ferry migrate'), 0, mig.stderr());
    assert.equal(await exitOf(recv, 'ferry receive --once'), 0, recv.stderr());
    // A process tree goes with pre-copy rounds first (precopy.test.ts looks at them closely).
    assert.ok(records(mig).some((x) => x['phase'] === 'round'), 'pre-copy rounds between the nodes');
    const phases = records(mig).filter((x) => x['phase'] !== 'round');
    assert.deepEqual(phases.map((x) => x['phase']), ['checkpoint', 'transfer', 'restore', 'done']);
    assert.equal(records(recv).at(-1)!['peer'], `${nodes.source.addr}:${String(records(recv).at(-1)!['peer']).split(':')[1]}`, 'the sender came from the source node');
    process.stdout.write(`# tcp:// between nodes: downtime ${String(phases[3]!['downtimeMs'])} ms, total ${String(phases[3]!['totalMs'])} ms\n`);
    await movedTo(w, before);
    assert.deepEqual(leftovers(), []);
    stop(w.pid);
  });

  it('refuses a peer with another key before one byte of image: the source runs on, the target holds nothing', async () => {
    const w = await counter();
    const { r: recv, port } = await receiver(['--once', '--max-creds', 'root']);
    const to = `tcp://${nodes.target.addr}:${port}`;
    const mig = start(nodes.source, ['migrate', '--pid', String(w.pid), '--to', to, '--key', otherKey, '--config', config]);
    assert.equal(await exitOf(mig, 'ferry migrate with another key'), 1);
    assert.match(mig.stderr(), new RegExp(`^ferry migrate: ${to.replace(/[.]/g, '\\.')} refused the key .*other\\.key, or is not ferry receive: both sides need the same key file \\(TLS: [^)]+\\)\n$`));
    await waitFor('the receiver to report the refusal', () => /refused 10\.200\.\d+\.1:\d+/.test(recv.stderr()));
    assert.equal(recv.child.exitCode, null, 'a refused peer does not end a --once receiver');
    assert.deepEqual(leftovers(), [], 'no spool: nothing was taken');
    await runsOn(w);
    recv.child.kill('SIGTERM');
    assert.equal(await exitOf(recv, 'ferry receive'), 143);
    stop(w.pid);
  });

  it('the network cut while the image streams: the source runs on, the target holds nothing', async () => {
    const w = await counter();
    const { r: recv, port } = await receiver(['--once', '--max-creds', 'root']);
    const to = `tcp://${nodes.target.addr}:${port}`;
    // The sender stops 3 s after the first chunk crossed; the link goes down meanwhile.
    const mig = start(nodes.source, ['migrate', '--pid', String(w.pid), '--to', to, '--key', key, '--config', config], 'streaming+3000');
    await waitFor('the sender to pause while streaming', () => /paused at streaming/.test(mig.stderr()), 30_000,
      () => `ferry migrate: ${mig.stderr()}; ferry receive: ${recv.stderr()}`);
    assert.notEqual(procState(w.pid).tracer, 0, 'the sender holds the source while it streams');
    nodes.link(false);
    const t0 = Date.now();
    const gaveUp = (r: Running, what: string, ms: number): Promise<{ code: number; ms: number }> => exitOf(r, what, ms).then((code) => ({ code, ms: Date.now() - t0 }));
    // The sender, writing, finds the cut by its unacknowledged bytes (15 s, channel.ts
    // UNACKED_MS), not TCP's retransmissions (a minute or more, the tree stopped all along).
    const [sender, target] = [gaveUp(mig, 'ferry migrate', 45_000), gaveUp(recv, 'ferry receive --once', 90_000)];
    try {
      const s = await sender;
      const t = await target;
      process.stdout.write(`# network cut: the receiver gave up after ${t.ms} ms, the sender after ${s.ms} ms\n`);
      assert.equal(s.code, 1);
      assert.match(mig.stderr().split('\n').filter((l) => !l.startsWith('ferry-test:')).join('\n'),
        new RegExp(`^ferry migrate: .*, so pid ${w.pid} was let go as it was: it runs on here\n$`));
      await runsOn(w);
      assert.equal(t.code, 1);
      // The receiver's TCP keepalive (5 s idle, then probes) or its idle limit (30 s) tells.
      assert.match(recv.stderr(), /^ferry receive: (the sender 10\.200\.\d+\.1:\d+ sent nothing for 30 s|the connection to the sender 10\.200\.\d+\.1:\d+ failed: read: ETIMEDOUT) while receiving the image\n$/);
      assert.deepEqual(leftovers(), [], 'the receiver removed its spool');
      assert.deepEqual(stubs(), []);
    } finally {
      nodes.link(true);
    }
    stop(w.pid);
  });

  it('the sender SIGKILLed while the image streams: the source runs on, the target holds nothing', async () => {
    const w = await counter();
    const { r: recv, port } = await receiver(['--once', '--max-creds', 'root']);
    const mig = start(nodes.source, ['migrate', '--pid', String(w.pid), '--to', `tcp://${nodes.target.addr}:${port}`, '--key', key, '--config', config], 'streaming');
    await waitFor('the sender to pause while streaming', () => /paused at streaming/.test(mig.stderr()), 30_000,
      () => `ferry migrate: ${mig.stderr()}; ferry receive: ${recv.stderr()}`);
    mig.child.kill('SIGKILL');
    assert.equal(await exitOf(recv, 'ferry receive --once'), 1);
    assert.match(recv.stderr(), /^ferry receive: the sender 10\.200\.\d+\.1:\d+ closed the connection while receiving the image\n$/);
    assert.deepEqual(leftovers().filter((n) => n.startsWith('.ferry-receive-')), [], 'the receiver removed its spool');
    assert.deepEqual(stubs(), []);
    await runsOn(w);
    stop(w.pid);
  });

  describe('over ssh://', { skip: sshSkip }, () => {
    let sshDir = '';
    let sshConfig = '';
    let badConfig = '';
    let fullConfig = '';
    /** The image.work_dir of the target's other receiver: a tmpfs of 64 KiB, too small for a counter's image. */
    let fullDir = '';
    let sshd: ChildProcess | undefined;
    const sshPort = 20000 + (process.pid % 20000);

    before(async () => {
      sshDir = scratchDir('ferry-sshd-');
      const keygen = (name: string): string => {
        const r = spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', name, '-f', join(sshDir, name)], { encoding: 'utf8' });
        assert.equal(r.status, 0, r.stderr);
        return readFileSync(join(sshDir, `${name}.pub`), 'utf8').trim();
      };
      const hostPub = keygen('host');
      const clientPub = keygen('client');
      keygen('stranger');
      const fullPub = keygen('full');
      fullDir = join(sshDir, 'full-work');
      mkdirSync(fullDir, { mode: 0o700 });
      const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k,mode=0700', 'ferry-test-full', fullDir], { encoding: 'utf8' });
      assert.equal(mounted.status, 0, mounted.stderr);
      const fullToml = join(sshDir, 'full.toml');
      writeFileSync(fullToml, `[image]\nwork_dir = "${fullDir}"\n`);
      // Each key may only run ferry receive --stdio, with this test's configuration (the
      // second: a work_dir too small to spool an image into).
      const only = 'no-pty,no-port-forwarding,no-agent-forwarding,no-X11-forwarding';
      writeFileSync(join(sshDir, 'authorized_keys'),
        `command="${FERRY} receive --stdio --max-creds root --json --config ${config}",${only} ${clientPub}\n`
        + `command="${FERRY} receive --stdio --max-creds root --json --config ${fullToml}",${only} ${fullPub}\n`, { mode: 0o600 });
      writeFileSync(join(sshDir, 'sshd_config'), [
        `Port ${sshPort}`, `ListenAddress ${nodes.target.addr}`, `HostKey ${join(sshDir, 'host')}`,
        `AuthorizedKeysFile ${join(sshDir, 'authorized_keys')}`, 'StrictModes no', 'UsePAM no',
        'PermitRootLogin prohibit-password', 'PasswordAuthentication no', 'KbdInteractiveAuthentication no',
        `PidFile ${join(sshDir, 'sshd.pid')}`, 'LogLevel ERROR', '',
      ].join('\n'));
      writeFileSync(join(sshDir, 'known_hosts'), `[${nodes.target.addr}]:${sshPort} ${hostPub}\n`);
      const client = (identity: string): string => [
        'Host *', `  IdentityFile ${join(sshDir, identity)}`, '  IdentitiesOnly yes', '  IdentityAgent none',
        `  UserKnownHostsFile ${join(sshDir, 'known_hosts')}`, '  GlobalKnownHostsFile /dev/null', '  StrictHostKeyChecking yes',
        '  LogLevel ERROR', '',
      ].join('\n');
      sshConfig = join(sshDir, 'ssh_config');
      writeFileSync(sshConfig, client('client'));
      badConfig = join(sshDir, 'ssh_config_stranger');
      writeFileSync(badConfig, client('stranger'));
      fullConfig = join(sshDir, 'ssh_config_full');
      writeFileSync(fullConfig, client('full'));
      // sshd's privilege separation directory (Debian's package makes it at boot only).
      mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });
      const test = spawnSync(SSHD!, ['-t', '-f', join(sshDir, 'sshd_config')], { encoding: 'utf8' });
      assert.equal(test.status, 0, test.stderr);
      sshd = spawnIn(nodes.target, SSHD!, ['-D', '-e', '-f', join(sshDir, 'sshd_config')], { stdio: ['ignore', 'ignore', 'pipe'] });
      let said = '';
      sshd.stderr!.on('data', (d: Buffer) => { said += d.toString(); });
      await waitFor('sshd to listen', () => readFileSync(`/proc/${sshd!.pid}/net/tcp`, 'utf8').includes(`:${sshPort.toString(16).toUpperCase().padStart(4, '0')} 00000000:0000 0A`) || sshd!.exitCode !== null);
      assert.equal(sshd.exitCode, null, `sshd did not start: ${said}`);
    });
    after(() => {
      sshd?.kill('SIGKILL');
      if (fullDir !== '' && spawnSync('umount', [fullDir]).status !== 0) spawnSync('umount', ['-l', fullDir]);
    });

    it('moves a counter over ssh:// (ssh authenticates; no --key): the same PID counts on there', async () => {
      const w = await counter();
      const before = w.ticks().length;
      const to = `ssh://root@${nodes.target.addr}:${sshPort}`;
      const mig = start(nodes.source, ['migrate', '--pid', String(w.pid), '--to', to, '--ssh-config', sshConfig, '--config', config]);
      assert.equal(await exitOf(mig, 'ferry migrate'), 0, mig.stderr());
      process.stdout.write(`# ssh:// between nodes: ${mig.stdout().trim()}\n`);
      assert.match(mig.stdout(), new RegExp(`^migrated pid ${w.pid} to ${to.replace(/[.]/g, '\\.')}: .+, downtime \\d+ ms, total \\d+ ms\n$`));
      await movedTo(w, before);
      assert.deepEqual(leftovers(), []);
      stop(w.pid);
    });

    it('the sender SIGKILLed while the image streams over ssh: the source runs on, the target holds nothing', async () => {
      const w = await counter();
      const to = `ssh://root@${nodes.target.addr}:${sshPort}`;
      const mig = start(nodes.source, ['migrate', '--pid', String(w.pid), '--to', to, '--ssh-config', sshConfig, '--config', config], 'streaming');
      await waitFor('the sender to pause while streaming', () => /paused at streaming/.test(mig.stderr()), 30_000,
        () => `ferry migrate: ${mig.stderr()}`);
      await waitFor('the target to spool', () => leftovers().some((n) => n.startsWith('.ferry-receive-')));
      mig.child.kill('SIGKILL');
      // ssh's stdin ends with its parent; the remote receiver reads EOF and removes its spool.
      await waitFor('the target to remove its spool', () => !leftovers().some((n) => n.startsWith('.ferry-receive-')), 30_000);
      assert.deepEqual(stubs(), []);
      await runsOn(w);
      stop(w.pid);
    });

    it('the target cannot spool the image (its image.work_dir full): it says why over ssh, the source\'s line gives it, the source runs on', async () => {
      const w = await counter();
      const to = `ssh://root@${nodes.target.addr}:${sshPort}`;
      const mig = start(nodes.source, ['migrate', '--pid', String(w.pid), '--to', to, '--ssh-config', fullConfig, '--config', config, '--no-pre-copy']);
      assert.equal(await exitOf(mig, 'ferry migrate'), 1, mig.stderr());
      // "failed" while the image streams, "refused it" once it was all sent (a small image may be).
      assert.match(mig.stderr(), new RegExp(`^ferry migrate: ${to.replace(/[.]/g, '\\.')} (failed|refused it): cannot spool the image into ${fullDir}/\\S+ `
        + `\\(image\\.work_dir\\): .*ENOSPC.*; so pid ${w.pid} was let go as it was: it runs on here\n$`));
      await waitFor('the target to remove its spool', () => readdirSync(fullDir).length === 0, 10_000, () => readdirSync(fullDir).join(' '));
      assert.deepEqual(stubs(), []);
      await runsOn(w);
      stop(w.pid);
    });

    it('an ssh key the target does not know is refused before one byte of image: the source runs on', async () => {
      const w = await counter();
      const to = `ssh://root@${nodes.target.addr}:${sshPort}`;
      const mig = start(nodes.source, ['migrate', '--pid', String(w.pid), '--to', to, '--ssh-config', badConfig, '--config', config]);
      assert.equal(await exitOf(mig, 'ferry migrate'), 1);
      assert.match(mig.stderr(), new RegExp(`^ferry migrate: ssh to ${to.replace(/[.]/g, '\\.')} failed \\(exit status 255: .*Permission denied.*\\) while waiting for the target to take the migration\n$`));
      assert.deepEqual(leftovers(), []);
      await runsOn(w);
      stop(w.pid);
    });
  });

  describe('runc containers', { skip: runcSkip }, () => {
    let rootfs = '';
    const COUNTER = 'i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 0.05; done';

    before(() => {
      rootfs = join(dir, 'rootfs');
      for (const d of ['bin', 'proc', 'sys', 'dev', 'tmp']) mkdirSync(join(rootfs, d), { recursive: true });
      copyFileSync(BUSYBOX, join(rootfs, 'bin', 'busybox'));
      spawnSync('chmod', ['755', join(rootfs, 'bin', 'busybox')]);
      for (const a of ['sh', 'sleep', 'echo']) symlinkSync('busybox', join(rootfs, 'bin', a));
    });
    // Every container a test made goes, after a failed test too: one that failed before its
    // own delete left its container running, and its cgroup (named by its id) then held a
    // stray process for the next run's container of that id.
    after(() => {
      for (const n of [nodes.source, nodes.target]) {
        for (const id of runc(n.runcRoot, 'list', '-q').out.split('\n').filter(Boolean)) runc(n.runcRoot, 'delete', '--force', id);
      }
    });

    const runc = (root: string, ...args: string[]): { code: number; out: string; err: string } => {
      const r = spawnSync(RUNC!, ['--root', root, ...args], { encoding: 'utf8', timeout: 60_000 });
      return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
    };
    const status = (n: Node, id: string): string => {
      const r = runc(n.runcRoot, 'state', id);
      return r.code === 0 ? (JSON.parse(r.out) as { status: string; pid: number }).status : 'absent';
    };

    /** A bundle in node `n` running the counter (the rootfs shared: the same files on both nodes). */
    function bundle(n: Node, name: string): string {
      const b = join(n.bundles, name);
      mkdirSync(b, { mode: 0o755 });
      const spec = spawnSync(RUNC!, ['spec', '--bundle', b], { encoding: 'utf8' });
      assert.equal(spec.status, 0, spec.stderr);
      const c = JSON.parse(readFileSync(join(b, 'config.json'), 'utf8')) as Record<string, any>;
      c.root = { path: rootfs, readonly: false };
      c.process.terminal = false;
      c.process.args = ['sh', '-c', COUNTER];
      writeFileSync(join(b, 'config.json'), JSON.stringify(c, null, 1), { mode: 0o644 });
      return b;
    }

    /** Runs container `id` in the source node, stdout on `log`. */
    async function runCounter(id: string, log: string): Promise<void> {
      const b = bundle(nodes.source, id);
      const fd = openSync(log, 'a');
      const [cmd, args] = nodes.source.exec(RUNC!, ['--root', nodes.source.runcRoot, 'run', '-d', '--bundle', b, id]);
      const r = spawnSync(cmd, args, { stdio: ['ignore', fd, fd], timeout: 60_000 });
      closeSync(fd);
      assert.equal(r.status, 0, `runc run ${id} failed`);
      await waitFor('ticks', () => ticks(log).length >= 3);
    }
    /** The source container runs on unharmed: running in runc, its init untraced and not stopped. */
    async function containerRunsOn(id: string, log: string): Promise<void> {
      assert.equal(status(nodes.source, id), 'running');
      const init = (JSON.parse(runc(nodes.source.runcRoot, 'state', id).out) as { pid: number }).pid;
      unharmed(init);
      await countsOn(log);
    }

    it('moves a runc container to a new id, its bundle and runc root on the target node', async () => {
      const log = join(dir, 'm1.log');
      await runCounter(`ferry-m1-${RUN}`, log);
      const tb = bundle(nodes.target, `ferry-m2-${RUN}`);
      const { r: recv, port } = await receiver(['--once', '--max-creds', 'root']);
      const mig = start(nodes.source, ['migrate', `ferry-m1-${RUN}`, '--root', nodes.source.runcRoot, '--to', `tcp://${nodes.target.addr}:${port}`,
        '--key', key, '--target-id', `ferry-m2-${RUN}`, '--target-bundle', tb, '--target-root', nodes.target.runcRoot, '--config', config]);
      assert.equal(await exitOf(mig, 'ferry migrate'), 0, mig.stderr());
      process.stdout.write(`# container between nodes: ${mig.stdout().trim()}\n`);
      // A container goes by pre-copy too, by default.
      assert.match(mig.stdout(), new RegExp(`^migrated container ferry-m1-${RUN} as ferry-m2-${RUN}(?: \\(\\d+ processes\\))? to tcp://10\\.200\\.\\d+\\.2:\\d+: .+, \\d+ pre-copy rounds? \\(.+\\), downtime \\d+ ms, total \\d+ ms\n$`));
      assert.equal(await exitOf(recv, 'ferry receive --once'), 0, recv.stderr());
      assert.equal(status(nodes.source, `ferry-m1-${RUN}`), 'absent', 'the source container is deleted');
      assert.equal(status(nodes.target, `ferry-m2-${RUN}`), 'running');
      const st = JSON.parse(runc(nodes.target.runcRoot, 'state', `ferry-m2-${RUN}`).out) as { bundle: string; pid: number };
      assert.equal(st.bundle, tb);
      unharmed(st.pid);
      await countsOn(log);
      assert.equal(runc(nodes.target.runcRoot, 'delete', '--force', `ferry-m2-${RUN}`).code, 0);
      assert.deepEqual(leftovers(), []);
    });

    it('the receiver SIGKILLed while a container\'s image streams: it runs on here, the target holds nothing', async () => {
      const log = join(dir, 'm3.log');
      await runCounter(`ferry-m3-${RUN}`, log);
      const tb = bundle(nodes.target, `ferry-m4-${RUN}`);
      const { r: recv, port } = await receiver(['--once', '--max-creds', 'root'], 'streaming');
      const mig = start(nodes.source, ['migrate', `ferry-m3-${RUN}`, '--root', nodes.source.runcRoot, '--to', `tcp://${nodes.target.addr}:${port}`,
        '--key', key, '--target-id', `ferry-m4-${RUN}`, '--target-bundle', tb, '--target-root', nodes.target.runcRoot, '--config', config]);
      await waitFor('the receiver to pause while streaming', () => /paused at streaming/.test(recv.stderr()), 30_000,
        () => `ferry migrate: ${mig.stderr()}; ferry receive: ${recv.stderr()}`);
      recv.child.kill('SIGKILL');
      assert.equal(await exitOf(mig, 'ferry migrate'), 1);
      assert.match(mig.stderr(), /^ferry migrate: .*, so pid \d+ was let go as it was: it runs on here\n$/);
      await containerRunsOn(`ferry-m3-${RUN}`, log);
      assert.deepEqual(containersIn(nodes.target.runcRoot), [], 'no container on the target');
      assert.deepEqual(stubs(), []);
      // The killed receiver's spool goes with the next receiver on that node.
      const next = await receiver(['--max-creds', 'root']);
      assert.deepEqual(leftovers(), []);
      next.r.child.kill('SIGTERM');
      await exitOf(next.r, 'ferry receive');
      assert.equal(runc(nodes.source.runcRoot, 'delete', '--force', `ferry-m3-${RUN}`).code, 0);
    });

    it('the target refuses a bundle others can write, and an id in use, before one byte of image: the container runs on', async () => {
      const log = join(dir, 'm9.log');
      await runCounter(`ferry-m9-${RUN}`, log);
      const open = bundle(nodes.target, `ferry-m10-${RUN}`);
      chmodSync(open, 0o777);
      const migrate = (extra: string[], port: number): Running => start(nodes.source, ['migrate', `ferry-m9-${RUN}`, '--root', nodes.source.runcRoot,
        '--to', `tcp://${nodes.target.addr}:${port}`, '--key', key, '--target-root', nodes.target.runcRoot, '--config', config, ...extra]);
      let { r: recv, port } = await receiver(['--once', '--max-creds', 'root']);
      let mig = migrate(['--target-id', `ferry-m10-${RUN}`, '--target-bundle', open], port);
      assert.equal(await exitOf(mig, 'ferry migrate'), 1);
      assert.match(mig.stderr(), new RegExp(`^ferry migrate: .*reports: the sender names bundle "${open}": ${open} is writable by group or others: not used; migrate with --target-bundle naming a bundle of root's\n$`));
      assert.equal(await exitOf(recv, 'ferry receive --once'), 1);
      await containerRunsOn(`ferry-m9-${RUN}`, log);
      // An id that exists on the target already.
      const other = bundle(nodes.target, `ferry-m11-${RUN}`);
      const [cmd, args] = nodes.target.exec(RUNC!, ['--root', nodes.target.runcRoot, 'create', '--bundle', other, `ferry-m11-${RUN}`]);
      const fd = openSync('/dev/null', 'r+');
      assert.equal(spawnSync(cmd, args, { stdio: ['ignore', fd, fd], timeout: 60_000 }).status, 0);
      closeSync(fd);
      ({ r: recv, port } = await receiver(['--once', '--max-creds', 'root']));
      mig = migrate(['--target-id', `ferry-m11-${RUN}`, '--target-bundle', other], port);
      assert.equal(await exitOf(mig, 'ferry migrate'), 1);
      assert.match(mig.stderr(), new RegExp(`reports: container ferry-m11-${RUN} already exists in runc on the target \\(--root \\S+\\): delete it there first, or migrate with --target-id\n$`));
      assert.equal(await exitOf(recv, 'ferry receive --once'), 1);
      await containerRunsOn(`ferry-m9-${RUN}`, log);
      assert.deepEqual(containersIn(nodes.target.runcRoot), [`ferry-m11-${RUN}`], 'the target has only what it had');
      assert.equal(status(nodes.target, `ferry-m11-${RUN}`), 'created');
      assert.deepEqual(leftovers(), []);
      assert.equal(runc(nodes.target.runcRoot, 'delete', '--force', `ferry-m11-${RUN}`).code, 0);
      assert.equal(runc(nodes.source.runcRoot, 'delete', '--force', `ferry-m9-${RUN}`).code, 0);
    });

    it('a container whose restore fails on the target after the kill is restored here under its id', async () => {
      const log = join(dir, 'm7.log');
      await runCounter(`ferry-m7-${RUN}`, log);
      const tb = bundle(nodes.target, `ferry-m8-${RUN}`);
      // The target stops once its processes exist, then is told to stop: it removes all it made.
      const { r: recv, port } = await receiver(['--once', '--max-creds', 'root'], 'created');
      const mig = start(nodes.source, ['migrate', `ferry-m7-${RUN}`, '--root', nodes.source.runcRoot, '--to', `tcp://${nodes.target.addr}:${port}`,
        '--key', key, '--target-id', `ferry-m8-${RUN}`, '--target-bundle', tb, '--target-root', nodes.target.runcRoot, '--json', '--config', config]);
      await waitFor('the receiver to pause after creating the container', () => /paused at created/.test(recv.stderr()), 30_000,
        () => `ferry migrate: ${mig.stderr()}; ferry receive: ${recv.stderr()}`);
      assert.equal(status(nodes.source, `ferry-m7-${RUN}`), 'stopped', 'killed, but kept in runc until the target says it runs');
      recv.child.kill('SIGTERM');
      assert.equal(await exitOf(recv, 'ferry receive'), 143);
      assert.equal(await exitOf(mig, 'ferry migrate'), 1);
      assert.match(mig.stderr(), /^ferry migrate: tcp:\/\/10\.200\.\d+\.2:\d+ could not restore pid \d+: .*interrupted by SIGTERM.*; it was restored here instead \(pid \d+ runs on this node again, down \d+ ms\)\n$/);
      assert.equal(records(mig).find((x) => x['phase'] === 'restore')?.['local'], true);
      assert.deepEqual(containersIn(nodes.target.runcRoot), [], 'no container on the target');
      assert.equal(status(nodes.source, `ferry-m7-${RUN}`), 'running', 'the same id runs here again');
      const st = JSON.parse(runc(nodes.source.runcRoot, 'state', `ferry-m7-${RUN}`).out) as { pid: number };
      unharmed(st.pid);
      await countsOn(log);
      assert.deepEqual(leftovers(), []);
      assert.equal(runc(nodes.source.runcRoot, 'delete', '--force', `ferry-m7-${RUN}`).code, 0);
    });

    it('the sender SIGKILLed after the kill: the container runs on the target, the killed source is deleted', async () => {
      const log = join(dir, 'm12.log');
      await runCounter(`ferry-m12-${RUN}`, log);
      const tb = bundle(nodes.target, `ferry-m13-${RUN}`);
      // The target pauses 3 s once the processes are rebuilt (after "go": the source is killed).
      const { r: recv, port } = await receiver(['--once', '--max-creds', 'root'], 'rebuilt+3000');
      const mig = start(nodes.source, ['migrate', `ferry-m12-${RUN}`, '--root', nodes.source.runcRoot, '--to', `tcp://${nodes.target.addr}:${port}`,
        '--key', key, '--target-id', `ferry-m13-${RUN}`, '--target-bundle', tb, '--target-root', nodes.target.runcRoot, '--config', config]);
      await waitFor('the receiver to pause after rebuilding', () => /paused at rebuilt/.test(recv.stderr()), 30_000,
        () => `ferry migrate said: ${mig.stderr()} (exit ${String(mig.child.exitCode)}); ferry receive said: ${recv.stdout()}${recv.stderr()}`);
      assert.equal(status(nodes.source, `ferry-m12-${RUN}`), 'stopped', 'killed, kept until the target says it runs');
      mig.child.kill('SIGKILL');
      // Its copy may be the workload's only one now: marked, so that no sweep throws it away.
      assert.ok(leftovers().some((n) => n.startsWith(`.ferry-migrate-${mig.child.pid}-`) && existsSync(join(workDir, n, 'handed-over'))),
        `the sender's copy is marked as handed over: ${leftovers().join(', ')}`);
      await waitFor('the watchdog to delete the killed source', () => status(nodes.source, `ferry-m12-${RUN}`) === 'absent', 10_000);
      assert.equal(await exitOf(recv, 'ferry receive --once'), 0, recv.stderr());
      assert.equal(status(nodes.target, `ferry-m13-${RUN}`), 'running');
      unharmed((JSON.parse(runc(nodes.target.runcRoot, 'state', `ferry-m13-${RUN}`).out) as { pid: number }).pid);
      await countsOn(log);
      assert.equal(runc(nodes.target.runcRoot, 'delete', '--force', `ferry-m13-${RUN}`).code, 0);
      assert.deepEqual(leftovers().filter((n) => n.startsWith('.ferry-receive-')), []);
    });

    it('the sender SIGKILLed while a container\'s image streams: it runs on here, the target holds nothing', async () => {
      const log = join(dir, 'm5.log');
      await runCounter(`ferry-m5-${RUN}`, log);
      const tb = bundle(nodes.target, `ferry-m6-${RUN}`);
      const { r: recv, port } = await receiver(['--once', '--max-creds', 'root']);
      const mig = start(nodes.source, ['migrate', `ferry-m5-${RUN}`, '--root', nodes.source.runcRoot, '--to', `tcp://${nodes.target.addr}:${port}`,
        '--key', key, '--target-id', `ferry-m6-${RUN}`, '--target-bundle', tb, '--target-root', nodes.target.runcRoot, '--config', config], 'streaming');
      await waitFor('the sender to pause while streaming', () => /paused at streaming/.test(mig.stderr()), 30_000,
        () => `ferry migrate: ${mig.stderr()}; ferry receive: ${recv.stderr()}`);
      mig.child.kill('SIGKILL');
      assert.equal(await exitOf(recv, 'ferry receive --once'), 1);
      assert.match(recv.stderr(), /^ferry receive: the sender 10\.200\.\d+\.1:\d+ closed the connection while receiving the image\n$/);
      await containerRunsOn(`ferry-m5-${RUN}`, log);
      assert.deepEqual(containersIn(nodes.target.runcRoot), []);
      assert.deepEqual(leftovers().filter((n) => n.startsWith('.ferry-receive-')), []);
      assert.deepEqual(stubs(), []);
      assert.equal(runc(nodes.source.runcRoot, 'delete', '--force', `ferry-m5-${RUN}`).code, 0);
    });
  });
});
