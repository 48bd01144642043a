/**
 * Ferry's criu (bin/criu) first in PATH, driven by an unmodified runc 1.1.5: `runc checkpoint`
 * and `runc restore` send DUMP and RESTORE over `criu swrk` and ferry's engine does them.
 * A busybox container counting "tick N" on a pipe to this test and into a file of a bind
 * mount is checkpointed with --leave-running and runc's other flags (it goes on), checkpointed
 * (gone from runc), restored with -d and a new pipe (runc's inherit_fd: the ticks count on
 * from the last one on the new pipe and in the file; runc knows the container again: kill
 * and delete work). `runc restore` without -d waits and exits with the restored container's
 * status. A container in the host's network namespace running a `busybox nc` echo server with
 * a connection from this test: its checkpoint without --tcp-established fails and leaves it
 * running with the connection working, with ferry's line on runc's stderr; with
 * --tcp-established it is checkpointed and restored and the same connection echoes again. An
 * unsupported option (--page-server) is refused with ferry's line, nothing done. A RESTORE
 * of a directory without ferry's image fails with ferry's line and leaves nothing. crun:
 * skipped on a host that is not pure cgroup v2.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { decodeInventory, decodeStats } from '../../src/runtime/criu-files.js';
import { PRIVATE_STATE_PARENT } from '../../src/runtime/criu-swrk.js';
import { cleanup, scratchDir, waitFor } from '../helpers/processes.js';
import { makeBundle, RuncCriu, SKIP_RUNC_CRIU, TICKS } from '../helpers/runc-criu.js';

describe('ferry\'s criu under an unmodified runc', { skip: SKIP_RUNC_CRIU, timeout: 300_000 }, () => {
  let dir = '';
  let rc: RuncCriu;
  const sockets: Socket[] = [];

  before(() => {
    dir = scratchDir('ferry-criu-swrk-');
    rc = new RuncCriu(join(dir, 'bin'), join(dir, 'runc-root'));
  });

  after(() => {
    for (const s of sockets) s.destroy();
    rc?.cleanup();
    cleanup();
  });

  it('checkpoint --leave-running, checkpoint, restore -d: the counter counts on, runc knows the container', async () => {
    const id = rc.own(`ferry-swrk-${process.pid}`);
    // The ticks also go to a file of a bind mount (an external mount for runc and criu).
    const data = join(dir, 'data');
    mkdirSync(data);
    const bundle = makeBundle(dir, 'bundle-ticks', `exec 3>>/data/log; ${TICKS.replace('echo tick $i;', 'echo tick $i; echo tick $i >&3;')}`, false, data);
    const fileTicks = (): number[] => [...readFileSync(join(data, 'log'), 'utf8').matchAll(/^tick (\d+)$/gm)].map((m) => Number(m[1]));
    const run = await rc.detached(['run', '-d', '--bundle', bundle, id], bundle);
    assert.equal(run.code, 0, run.err());
    await waitFor('ticks from the container', () => (run.ticks.last ?? 0) >= 3);

    // --leave-running: the image is written and the container goes on. runc's other flags
    // reach ferry's criu as options it uses (file locks, unix sockets, shell job) or accepts
    // (cgroups mode: runc makes the cgroups).
    const keep = join(dir, 'keep');
    const lr = rc.run(['checkpoint', '--image-path', keep, '--work-path', join(dir, 'keep-work'), '--leave-running',
      '--file-locks', '--ext-unix-sk', '--shell-job', '--manage-cgroups-mode', 'soft', id]);
    assert.equal(lr.code, 0, lr.err);
    assert.equal(lr.out + lr.err, '', 'quiet on success');
    assert.equal(rc.status(id)?.status, 'running');
    const at = run.ticks.last!;
    await waitFor('ticks after --leave-running', () => run.ticks.last! >= at + 3);
    for (const f of ['ferry-image.tar', 'descriptors.json', 'inventory.img']) assert.ok(existsSync(join(keep, f)), f);
    for (const f of ['dump.log', 'stats-dump']) assert.ok(existsSync(join(dir, 'keep-work', f)), `${f} in the work path (work_dir_fd)`);
    assert.equal(decodeInventory(readFileSync(join(keep, 'inventory.img'))).imgVersion, 2);
    assert.ok(decodeStats(readFileSync(join(dir, 'keep-work', 'stats-dump'))).dump!.frozenTime > 0);

    // A checkpoint without --leave-running: runc deletes the container after ferry's DUMP.
    const image = join(dir, 'image');
    const cp = rc.run(['checkpoint', '--image-path', image, id]);
    assert.equal(cp.code, 0, cp.err);
    assert.equal(rc.status(id), undefined, 'gone from runc');
    await waitFor('the old stdout pipe to close', () => run.ticks.ended);
    const last = run.ticks.last!;
    const descriptors = JSON.parse(readFileSync(join(image, 'descriptors.json'), 'utf8')) as string[];
    assert.match(descriptors[1]!, /^pipe:\[\d+\]$/, 'runc recorded the stdout pipe (restore hands it over as inherit_fd)');

    // Restore with new pipes: runc sends inherit_fd for them; ferry rebuilds the tree.
    const rs = await rc.detached(['restore', '-d', '--image-path', image, id], bundle);
    assert.equal(rs.code, 0, rs.err());
    const st = rc.status(id);
    assert.equal(st?.status, 'running');
    assert.ok(existsSync(`/proc/${st!.pid}`), 'runc\'s pid is the restored init');
    await waitFor('ticks on the new pipe', () => rs.ticks.seen.length >= 3);
    assert.equal(rs.ticks.seen[0], last + 1, `counting on from tick ${last}: ${rs.ticks.seen.slice(0, 5).join(', ')}`);
    rs.ticks.seen.forEach((t, i) => assert.equal(t, last + 1 + i));
    // The file in the bind mount: written before and after, counting on without a gap.
    const inFile = fileTicks();
    inFile.forEach((t, i) => assert.equal(t, i + 1, `the bind mount's file counts on: ${inFile.slice(Math.max(0, i - 2), i + 2).join(', ')}`));
    assert.ok(inFile.at(-1)! > last, 'written after the restore too');
    assert.match(readFileSync(join(image, 'restore.log'), 'utf8'), /"msg":"restored"/);
    assert.ok(decodeStats(readFileSync(join(image, 'stats-restore'))).restore!.pagesRestored > 0);
    const leftovers = existsSync(PRIVATE_STATE_PARENT)
      ? readdirSync(PRIVATE_STATE_PARENT).filter((d) => existsSync(join(PRIVATE_STATE_PARENT, d, 'state', id))) : [];
    assert.deepEqual(leftovers, [], 'the second runc\'s private state is removed');
    assert.ok(!existsSync(PRIVATE_STATE_PARENT) || readdirSync(PRIVATE_STATE_PARENT).length > 0, `no empty ${PRIVATE_STATE_PARENT} is left`);

    // runc drives the restored container like any other.
    assert.equal(rc.run(['kill', id, 'KILL']).code, 0);
    await waitFor('the container to stop', () => rc.status(id)?.status !== 'running');
    const del = rc.run(['delete', id]);
    assert.equal(del.code, 0, del.err);
    assert.equal(rc.status(id), undefined);
  });

  it('a TCP connection from the host: refused without --tcp-established (left running), kept with it', async () => {
    const id = rc.own(`ferry-swrk-net-${process.pid}`);
    const port = 20000 + (process.pid % 20000);
    const bundle = makeBundle(dir, 'bundle-net', `exec /bin/busybox nc -l -p ${port} -e /bin/cat`, true);
    const run = await rc.detached(['run', '-d', '--bundle', bundle, id], bundle);
    assert.equal(run.code, 0, run.err());
    let sock: Socket | undefined;
    for (let i = 0; i < 100 && sock === undefined; i++) {
      sock = await new Promise<Socket | undefined>((r) => {
        const s = connect(port, '127.0.0.1');
        s.once('connect', () => r(s));
        s.once('error', () => { s.destroy(); setTimeout(() => r(undefined), 50); });
      });
    }
    assert.ok(sock, `the echo server in the container listens on ${port}`);
    sockets.push(sock);
    let got = '';
    sock.setEncoding('utf8');
    sock.on('data', (s: string) => { got += s; });
    const echo = async (word: string): Promise<void> => {
      got = '';
      sock.write(`${word}\n`);
      await waitFor(`the echo of ${word}`, () => got === `${word}\n`);
    };
    await echo('one');

    // The connection is refused without --tcp-established: runc prints ferry's line, the
    // container runs on untouched and the connection still works.
    const refused = rc.run(['checkpoint', '--image-path', join(dir, 'net-refused'), id]);
    assert.notEqual(refused.code, 0);
    assert.match(refused.err, /^criu \(ferry\) checkpoint: .*--tcp-established.*$/m, refused.err);
    // runc names the request it sent last (NOTIFY, the answer to "pre-dump").
    assert.match(refused.err, /criu failed: type (DUMP|NOTIFY) errno/);
    assert.equal(rc.status(id)?.status, 'running');
    await echo('two');

    const image = join(dir, 'net-image');
    const cp = rc.run(['checkpoint', '--tcp-established', '--image-path', image, id]);
    assert.equal(cp.code, 0, cp.err);
    assert.equal(rc.status(id), undefined);
    const rs = await rc.detached(['restore', '-d', '--tcp-established', '--image-path', image, id], bundle);
    assert.equal(rs.code, 0, rs.err());
    assert.equal(rc.status(id)?.status, 'running');
    await echo('three');
  });

  it('restore without -d: runc waits for the restored container and exits with its status', async () => {
    const id = rc.own(`ferry-swrk-fg-${process.pid}`);
    const bundle = makeBundle(dir, 'bundle-fg', 'i=0; while [ $i -lt 25 ]; do i=$((i+1)); echo tick $i; sleep 0.1; done; exit 7');
    const run = await rc.detached(['run', '-d', '--bundle', bundle, id], bundle);
    assert.equal(run.code, 0, run.err());
    await waitFor('ticks', () => (run.ticks.last ?? 0) >= 3);
    const image = join(dir, 'fg-image');
    const cp = rc.run(['checkpoint', '--image-path', image, id]);
    assert.equal(cp.code, 0, cp.err);
    await waitFor('the old pipe to close', () => run.ticks.ended);
    const last = run.ticks.last!;
    const rs = await rc.detached(['restore', '--image-path', image, id], bundle);
    assert.equal(rs.code, 7, `runc restore exits with the container's status: ${rs.err()}`);
    assert.deepEqual(rs.ticks.seen, Array.from({ length: 25 - last }, (_, i) => last + 1 + i), 'it counted on to its end');
    rc.run(['delete', id]);
  });

  it('an unsupported option is refused with ferry\'s line, the container untouched', async () => {
    const id = rc.own(`ferry-swrk-ps-${process.pid}`);
    const bundle = join(dir, 'bundle-ticks');
    const run = await rc.detached(['run', '-d', '--bundle', bundle, id], bundle);
    assert.equal(run.code, 0, run.err());
    await waitFor('ticks', () => (run.ticks.last ?? 0) >= 2);
    const r = rc.run(['checkpoint', '--image-path', join(dir, 'ps'), '--page-server', '127.0.0.1:9', id]);
    assert.notEqual(r.code, 0);
    assert.match(r.err, /^criu \(ferry\) checkpoint: a page server \(--page-server\) is not supported by ferry; nothing was done$/m, r.err);
    assert.equal(rc.status(id)?.status, 'running');
    assert.ok(!existsSync(join(dir, 'ps', 'ferry-image.tar')), 'no image');
    const at = run.ticks.last!;
    await waitFor('ticks after the refusal', () => run.ticks.last! >= at + 2);
  });
});

describe('ferry\'s criu: a failed RESTORE', { skip: SKIP_RUNC_CRIU, timeout: 120_000 }, () => {
  let dir = '';
  let rc: RuncCriu;

  before(() => {
    dir = scratchDir('ferry-criu-swrk-rst-');
    rc = new RuncCriu(join(dir, 'bin'), join(dir, 'runc-root'));
  });

  after(() => {
    rc?.cleanup();
    cleanup();
  });

  it('a directory without ferry\'s image: ferry\'s line on runc\'s stderr, nothing left behind', async () => {
    const id = rc.own(`ferry-swrk-none-${process.pid}`);
    const bundle = makeBundle(dir, 'bundle', TICKS);
    const empty = join(dir, 'not-ferry');
    mkdirSync(empty);
    writeFileSync(join(empty, 'descriptors.json'), '["/dev/null","/dev/null","/dev/null"]'); // runc reads it first
    const r = await rc.detached(['restore', '-d', '--image-path', empty, id], bundle);
    assert.notEqual(r.code, 0);
    assert.match(r.err(), /^criu \(ferry\) restore: .*holds no ferry checkpoint \(ferry-image\.tar is missing\).*$/m, r.err());
    assert.match(r.err(), /criu failed: type RESTORE errno/);
    assert.equal(rc.status(id), undefined, 'runc removed its container');
    assert.ok(!existsSync(`/sys/fs/cgroup/freezer/${id}`) || readFileSync(`/sys/fs/cgroup/freezer/${id}/cgroup.procs`, 'utf8') === '',
      'no process in the container\'s cgroup');
    const mine = existsSync(PRIVATE_STATE_PARENT)
      ? readdirSync(PRIVATE_STATE_PARENT).filter((d) => existsSync(join(PRIVATE_STATE_PARENT, d, 'state', id))) : [];
    assert.deepEqual(mine, []);
  });
});

describe('ferry\'s criu under crun', () => {
  it('checkpoints and restores through crun', (t) => {
    // crun needs a pure cgroup v2 host (no v1 controllers mounted): here it refuses to run.
    const crun = ['/usr/bin/crun', '/usr/local/bin/crun'].some((p) => existsSync(p)) ? '' : '; crun is not installed either';
    if (!existsSync('/sys/fs/cgroup/cgroup.controllers')) {
      t.skip(`crun refuses this hybrid-cgroup host (cgroup v1 controllers with v2 at /sys/fs/cgroup/unified): needs a pure cgroup v2 host${crun}`);
      return;
    }
    t.skip('not written: no pure cgroup v2 host was at hand to write and run it on');
  });
});
