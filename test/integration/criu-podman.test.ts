/**
 * Real podman 4.3 with its default runtime (runc, no --runtime) and ferry's criu first in
 * PATH: `podman container checkpoint/restore` run `runc checkpoint/restore`, which send DUMP
 * and RESTORE to ferry's criu. A busybox container counting "tick N" is checkpointed and
 * restored with --print-stats (podman reads the stats-dump and stats-restore ferry's criu
 * writes), then exported and imported through a tar; each time it counts on in `podman logs`,
 * its init a child of conmon, and the checkpoint is ferry's image. A container run with `-t`
 * (runc's console socket, conmon holding the master) keeps its terminal across checkpoint and
 * restore: its shell sees the same size, echo flag and controlling terminal, and its output
 * reaches conmon's new master (`podman logs` counts on).
 *
 * Isolation as in podman.test.ts: a private --root/--runroot/--tmpdir, the vfs storage driver,
 * the cgroupfs manager, the file events backend, --network none, --ulimit values within this
 * host's hard limits.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { needs, ROOT } from '../helpers/env.js';
import { cleanup, scratchDir, waitFor } from '../helpers/processes.js';
import { podmanTerminalRoundTrip } from '../helpers/runc-criu.js';

const CRIU = join(ROOT, 'bin', 'criu');
const BUSYBOX = '/bin/busybox';
const PODMAN = ['/usr/bin/podman', '/usr/local/bin/podman'].find((p) => existsSync(p));
const CONMON = ['/usr/bin/conmon', '/usr/libexec/podman/conmon', '/usr/local/bin/conmon'].find((p) => existsSync(p));
const RUNC = ['/usr/sbin/runc', '/usr/bin/runc'].find((p) => existsSync(p));

const skip = needs('root', 'build')
  || (PODMAN ? false : 'needs podman (apt-get install podman)')
  || (CONMON ? false : 'needs conmon (apt-get install conmon)')
  || (RUNC ? false : 'needs runc (apt-get install runc)')
  || (existsSync(BUSYBOX) ? false : `needs ${BUSYBOX} (apt-get install busybox-static)`);

describe('podman with its default runtime (runc) and ferry\'s criu', { skip, timeout: 300_000 }, () => {
  let dir = '';
  let global: string[] = [];
  let env: NodeJS.ProcessEnv = {};
  const image = `localhost/ferry-criu-test-${process.pid}`;
  const name = `ferry-criu-podman-${process.pid}`;

  const podman = (...args: string[]): { code: number; out: string; err: string } => {
    const r = spawnSync(PODMAN!, [...global, ...args], { encoding: 'utf8', env, timeout: 180000 });
    return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
  };
  const ok = (...args: string[]): string => {
    const r = podman(...args);
    assert.equal(r.code, 0, `podman ${args.join(' ')}: ${r.err}`);
    return r.out;
  };
  const ticks = (): number[] => [...podman('logs', name).out.matchAll(/^tick (\d+)$/gm)].map((m) => Number(m[1]));
  const status = (): string => podman('inspect', '--format', '{{.State.Status}}', name).out.trim();
  /** Checks the container runs, its init's parent is conmon, and it counts on after `last`. */
  const countsOn = async (last: number): Promise<number> => {
    assert.equal(status(), 'running');
    const pid = Number(ok('inspect', '--format', '{{.State.Pid}}', name).trim());
    const ppid = Number(readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /s, '').split(' ')[1]);
    assert.equal(readFileSync(`/proc/${ppid}/comm`, 'utf8').trim(), 'conmon', 'the restored init is a child of conmon');
    await waitFor(`ticks after ${last}`, () => (ticks().at(-1) ?? 0) > last + 2, 20000);
    const t = ticks();
    const after = t.slice(t.indexOf(last) + 1);
    after.forEach((n, i) => assert.equal(n, last + 1 + i, `counting on from ${last}: ${after.slice(0, 5).join(', ')}`));
    return t.at(-1)!;
  };

  before(() => {
    dir = scratchDir('ferry-criu-podman-');
    const bin = join(dir, 'bin');
    mkdirSync(bin);
    symlinkSync(CRIU, join(bin, 'criu')); // podman and runc run `criu swrk` from PATH
    env = { PATH: `${bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin` };
    global = ['--root', join(dir, 'storage'), '--runroot', join(dir, 'run'), '--tmpdir', join(dir, 'tmp'),
      '--storage-driver', 'vfs', '--cgroup-manager', 'cgroupfs', '--events-backend', 'file'];
    const rootfs = join(dir, 'rootfs');
    mkdirSync(join(rootfs, 'bin'), { recursive: true });
    copyFileSync(BUSYBOX, join(rootfs, 'bin', 'busybox'));
    chmodSync(join(rootfs, 'bin', 'busybox'), 0o755);
    for (const a of ['sh', 'sleep', 'echo', 'stty', 'tty']) symlinkSync('busybox', join(rootfs, 'bin', a));
    const tar = spawnSync('tar', ['-C', rootfs, '-cf', join(dir, 'rootfs.tar'), '.']);
    assert.equal(tar.status, 0);
    ok('import', join(dir, 'rootfs.tar'), image);
  });

  after(() => {
    if (global.length > 0) {
      podman('rm', '-f', '-t', '0', name);
      podman('rmi', '-f', image);
      podman('system', 'reset', '-f');
    }
    cleanup();
  });

  let last = 0;

  it('checkpoint and restore with --print-stats, no --runtime: ferry\'s image, counting on under conmon', async () => {
    ok('run', '-d', '--name', name, '--network', 'none',
      '--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=4096:4096',
      image, 'sh', '-c', 'i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done');
    assert.equal(ok('inspect', '--format', '{{.OCIRuntime}}', name).trim(), 'runc');
    await waitFor('first ticks', () => ticks().length >= 3, 20000);
    const cp = JSON.parse(ok('container', 'checkpoint', '--print-stats', name)) as {
      container_statistics: Array<{ criu_statistics: Record<string, number> }>;
    };
    const dumpStats = cp.container_statistics[0]!.criu_statistics;
    assert.ok(dumpStats.frozen_time! > 0 && dumpStats.pages_written! > 0, JSON.stringify(dumpStats));
    assert.equal(status(), 'exited');
    const userdata = ok('inspect', '--format', '{{.StaticDir}}', name).trim();
    assert.ok(existsSync(join(userdata, 'checkpoint', 'ferry-image.tar')), 'runc\'s criu was ferry\'s: its image is there');
    last = ticks().at(-1)!;
    const rs = JSON.parse(ok('container', 'restore', '--print-stats', name)) as {
      container_statistics: Array<{ criu_statistics: Record<string, number> }>;
    };
    assert.ok(rs.container_statistics[0]!.criu_statistics.pages_restored! > 0, JSON.stringify(rs));
    last = await countsOn(last);
  });

  it('--export to a tar and --import from it: the container counts on', async () => {
    const tar = join(dir, 'export.tar');
    ok('container', 'checkpoint', '--export', tar, '--compress', 'none', name);
    const list = spawnSync('tar', ['-tf', tar], { encoding: 'utf8' }).stdout.split('\n');
    for (const f of ['checkpoint/ferry-image.tar', 'checkpoint/inventory.img', 'checkpoint/descriptors.json', 'stats-dump']) {
      assert.ok(list.includes(f), `${f} in the export: ${list.join(' ')}`);
    }
    last = ticks().at(-1)!;
    ok('rm', '-f', '-t', '0', name);
    ok('container', 'restore', '--import', tar);
    last = await countsOn(last);
  });

  it('--pre-checkpoint, then --with-previous, exported; restored with --import-previous: the container counts on', async () => {
    const pre = join(dir, 'pre.tar');
    const full = join(dir, 'full.tar');
    ok('container', 'checkpoint', '--pre-checkpoint', '--export', pre, '--compress', 'none', name);
    assert.equal(status(), 'running', 'a pre-checkpoint leaves the container running');
    ok('container', 'checkpoint', '--with-previous', '--export', full, '--compress', 'none', name);
    const list = spawnSync('tar', ['-tf', full], { encoding: 'utf8' }).stdout.split('\n');
    assert.ok(list.includes('checkpoint/ferry-image.delta') && !list.includes('checkpoint/ferry-image.tar'),
      `a delta of the pre-checkpoint, not a full image: ${list.join(' ')}`);
    last = ticks().at(-1)!;
    ok('rm', '-f', '-t', '0', name);
    ok('container', 'restore', '--import', full, '--import-previous', pre);
    last = await countsOn(last);
  });

  it('a container run with -t keeps its terminal across checkpoint and restore', async () => {
    await podmanTerminalRoundTrip(podman, image, `${name}-tty`);
  });
});
