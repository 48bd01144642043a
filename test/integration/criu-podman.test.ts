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
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { cleanup, waitFor } from '../helpers/processes.js';
import { podmanHarness, podmanTerminalRoundTrip, RUNC, SKIP_PODMAN } from '../helpers/runc-criu.js';

const skip = SKIP_PODMAN || (RUNC ? false : 'needs runc (apt-get install runc)');

describe('podman with its default runtime (runc) and ferry\'s criu', { skip, timeout: 300_000 }, () => {
  const image = `localhost/ferry-criu-test-${process.pid}`;
  const name = `ferry-criu-podman-${process.pid}`;
  const pm = podmanHarness({ prefix: 'ferry-criu-podman-', image, name });
  const { podman, ok, ticks, status, countsOn } = pm;

  before(() => pm.setUp());
  after(() => {
    pm.tearDown();
    cleanup();
  });

  let last = 0;

  it('checkpoint and restore with --print-stats, no --runtime: ferry\'s image, counting on under conmon', async () => {
    pm.runCounter();
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
    const tar = join(pm.dir, 'export.tar');
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
    const pre = join(pm.dir, 'pre.tar');
    const full = join(pm.dir, 'full.tar');
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
