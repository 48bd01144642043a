/**
 * Real podman 4.3 with `--runtime <bin/ferry-runtime>` and ferry's criu stand-in first in
 * PATH: a busybox container counting "tick N" is checkpointed and restored by
 * `podman container checkpoint/restore` (with --print-stats, which reads stats-dump and
 * stats-restore), exported and imported through a tar, and pre-checkpointed
 * (`--pre-checkpoint`, then `--with-previous`, both exported; restored with
 * `--import-previous`); each time it counts on in `podman logs` and its init is a child of
 * conmon. A container run with `-t` keeps its terminal (conmon gets the new master through
 * `restore --console-socket`).
 *
 * Isolation: a private --root/--runroot/--tmpdir and the vfs storage driver, the cgroupfs
 * manager, the file events backend, --network none (no systemd, no CNI here). The container
 * gets --ulimit values within this host's hard limits (ferry's host lacks CAP_SYS_RESOURCE,
 * so podman's default nofile 1048576 cannot be set). The container keeps podman's default
 * seccomp profile: restore installs it again while the task still has CAP_SYS_ADMIN.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ROOT } from '../helpers/env.js';
import { cleanup, waitFor } from '../helpers/processes.js';
import { podmanHarness, podmanTerminalRoundTrip, SKIP_PODMAN } from '../helpers/runc-criu.js';

const RUNTIME = join(ROOT, 'bin', 'ferry-runtime');

describe('podman with --runtime ferry-runtime', { skip: SKIP_PODMAN, timeout: 300_000 }, () => {
  const image = `localhost/ferry-runtime-test-${process.pid}`;
  const name = `ferry-podman-${process.pid}`;
  const pm = podmanHarness({ prefix: 'ferry-podman-', image, name, flags: ['--runtime', RUNTIME], env: (dir) => ({ FERRY_CRIU_LOG: join(dir, 'criu.log') }) });
  const { podman, ok, ticks, status, countsOn } = pm;

  before(() => pm.setUp());
  after(() => {
    pm.tearDown();
    cleanup();
  });

  let last = 0;

  it('checkpoint and restore (with --print-stats): the container counts on under conmon', async () => {
    pm.runCounter();
    await waitFor('first ticks', () => ticks().length >= 3, 20000);
    const cp = JSON.parse(ok('container', 'checkpoint', '--print-stats', name)) as {
      container_statistics: Array<{ criu_statistics: Record<string, number> }>;
    };
    const dumpStats = cp.container_statistics[0]!.criu_statistics;
    assert.ok(dumpStats.frozen_time! > 0 && dumpStats.pages_written! > 0, JSON.stringify(dumpStats));
    assert.equal(status(), 'exited');
    last = ticks().at(-1)!;
    const rs = JSON.parse(ok('container', 'restore', '--print-stats', name)) as {
      container_statistics: Array<{ criu_statistics: Record<string, number> }>;
    };
    assert.ok(rs.container_statistics[0]!.criu_statistics.pages_restored! > 0, JSON.stringify(rs));
    last = await countsOn(last);
    const asked = readFileSync(join(pm.dir, 'criu.log'), 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as { request: string }).request);
    assert.ok(asked.length >= 2 && asked.every((r) => r === 'VERSION'), `podman asked the criu stand-in: ${asked.join(', ')}`);
  });

  it('--export to a tar and --import from it: the container counts on', async () => {
    const tar = join(pm.dir, 'export.tar');
    ok('container', 'checkpoint', '--export', tar, '--compress', 'none', name);
    const list = spawnSync('tar', ['-tf', tar], { encoding: 'utf8' }).stdout.split('\n');
    for (const f of ['checkpoint/ferry-image.tar', 'checkpoint/inventory.img', 'checkpoint/descriptors.json', 'stats-dump', 'config.dump', 'spec.dump']) {
      assert.ok(list.includes(f), `${f} in the export: ${list.join(' ')}`);
    }
    last = ticks().at(-1)!;
    ok('rm', '-f', '-t', '0', name);
    ok('container', 'restore', '--import', tar);
    // Whether or not the export carried the old log along, the ticks after `last` count on.
    last = await countsOn(last);
  });

  it('a container run with -t keeps its terminal: conmon gets the new master through restore --console-socket', async () => {
    await podmanTerminalRoundTrip(podman, image, `${name}-tty`);
  });

  it('--pre-checkpoint, then --with-previous, exported and imported: the container counts on', async () => {
    const pre = join(pm.dir, 'pre.tar');
    const full = join(pm.dir, 'full.tar');
    ok('container', 'checkpoint', '--pre-checkpoint', '--export', pre, '--compress', 'none', name);
    assert.equal(status(), 'running', 'a pre-checkpoint leaves the container running');
    const log = readFileSync(join(pm.dir, 'criu.log'), 'utf8');
    assert.match(log, /"request":"FEATURE_CHECK".*"memTrack":true.*"reply":\{[^}]*"features":\{"memTrack":true\}/);
    ok('container', 'checkpoint', '--with-previous', '--export', full, '--compress', 'none', name);
    const list = spawnSync('tar', ['-tf', full], { encoding: 'utf8' }).stdout.split('\n');
    assert.ok(list.includes('checkpoint/ferry-image.delta'), `a delta of the pre-checkpoint: ${list.join(' ')}`);
    const preList = spawnSync('tar', ['-tf', pre], { encoding: 'utf8' }).stdout.split('\n');
    assert.ok(preList.some((f) => f.endsWith('ferry-pages.bin')), `the pre-checkpoint's pages: ${preList.join(' ')}`);
    last = ticks().at(-1)!;
    ok('rm', '-f', '-t', '0', name);
    ok('container', 'restore', '--import', full, '--import-previous', pre);
    last = await countsOn(last);
  });
});
