/**
 * The OCI hook (hooks/ferry-hook, docs/hooks.md): the precreate rewrite and stage detection as
 * pure logic; then with real podman (--hooks-dir pointing at this checkout's hook) a busybox
 * container annotated io.ferry.restore-from=<image of another podman container> comes up
 * counting on from where that one stopped, with the stub's mount gone; a container created and
 * removed without a start, and one whose image is missing, leave nothing behind (poststop).
 * Last, plain runc with the hook in config.json, the config rewritten by the hook itself.
 *
 * The podman containers are given --ulimit values within this machine's hard limits: ferry's
 * host lacks CAP_SYS_RESOURCE in its bounding set, so podman's defaults (nofile 1048576)
 * cannot be set here. The checkpointed container runs with seccomp=unconfined, which keeps
 * this test about the hook (podman's default filter is the podman test's business).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { hookRestoreConfig, restoreImageOf, stageOf, STUB_IN_CONTAINER } from '../../src/hook/spec.js';
import { ROOT, needs } from '../helpers/env.js';
import { cleanup, ferry, scratchDir, waitFor } from '../helpers/processes.js';
import { BUSYBOX, busyboxRootfs } from '../helpers/runc-criu.js';

const PODMAN = ['/usr/bin/podman', '/usr/local/bin/podman'].find((p) => existsSync(p));
const RUNC = ['/usr/sbin/runc', '/usr/bin/runc'].find((p) => existsSync(p));
const HOOK = join(ROOT, 'hooks', 'ferry-hook');
const RUN_DIR = '/run/ferry/hooks';
const COUNTER = 'i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 0.05; done';

describe('hook: stage and config rewrite', { timeout: 60_000 }, () => {
  const config = {
    ociVersion: '1.0.2-dev',
    root: { path: '/var/lib/containers/x/merged' },
    process: { args: ['sh', '-c', 'x'], terminal: false, user: { uid: 1000, gid: 1000 }, noNewPrivileges: true },
    mounts: [{ destination: '/proc', type: 'proc', source: 'proc' }, { destination: '/dev', type: 'tmpfs', source: 'tmpfs' }],
    linux: { seccomp: { defaultAction: 'SCMP_ACT_ERRNO' }, namespaces: [{ type: 'pid' }] },
    annotations: { 'io.ferry.restore-from': '/images/x.tar' },
  };

  it('tells the stage from stdin, or takes it from the argument', () => {
    assert.equal(stageOf(config), 'precreate');
    assert.equal(stageOf({ ociVersion: '1', id: 'c', status: 'created', pid: 5, bundle: '/b' }), 'poststart');
    assert.equal(stageOf({ ociVersion: '1', id: 'c', status: 'stopped', bundle: '/b' }), 'poststop');
    assert.equal(stageOf({ id: 'c', status: 'stopped' }, 'poststart'), 'poststart');
    assert.throws(() => stageOf({}), /neither a container config/);
    assert.throws(() => stageOf({}, 'prestart'), /unknown hook stage prestart/);
  });

  it('reads the annotation; a relative image path is refused', () => {
    assert.equal(restoreImageOf(config.annotations), '/images/x.tar');
    assert.equal(restoreImageOf({}), undefined);
    assert.equal(restoreImageOf(undefined), undefined);
    assert.throws(() => restoreImageOf({ 'io.ferry.restore-from': 'x.tar' }), /absolute path/);
  });

  it('runs the stub bound read-only under /dev, as root, unfiltered, root and terminal kept', () => {
    const c = hookRestoreConfig(config, '/opt/ferry/ferry-stub');
    assert.deepEqual(c.process?.args, [STUB_IN_CONTAINER]);
    assert.deepEqual(c.process?.user, { uid: 0, gid: 0 });
    assert.equal(c.process?.noNewPrivileges, false);
    assert.equal(c.process?.terminal, false);
    assert.ok(c.process?.capabilities?.bounding?.includes('CAP_SYS_PTRACE'));
    assert.equal(c.linux?.seccomp, undefined);
    assert.deepEqual(c.root, config.root);
    const mounts = c.mounts as Array<Record<string, unknown>>;
    assert.deepEqual(mounts.at(-1), { destination: STUB_IN_CONTAINER, type: 'bind', source: '/opt/ferry/ferry-stub', options: ['bind', 'ro', 'nosuid', 'nodev'] });
    assert.equal(mounts.length, 3);
    assert.throws(() => hookRestoreConfig({ ...config, mounts: [] }, '/s'), /no tmpfs on \/dev/);
  });
});

const skip = needs('root', 'build')
  || (PODMAN ? false : 'needs podman (apt-get install podman)')
  || (RUNC ? false : 'needs runc (apt-get install runc)')
  || (existsSync(BUSYBOX) ? false : `needs ${BUSYBOX} (apt-get install busybox-static)`);

describe('hook: podman and runc', { skip, timeout: 300_000 }, () => {
  let dir = '';
  let hooksDir = '';
  const tag = `ferry-hook-${process.pid}`;
  const image = `localhost/${tag}`;
  const names = new Set<string>();
  const ids = new Set<string>();
  let runcState = '';
  const runcIds = new Set<string>();

  const podman = (...args: string[]): { code: number; out: string; err: string } => {
    // runc explicitly: with crun installed podman would pick it, and Debian's crun cannot run
    // containers on this host's hybrid cgroups.
    const r = spawnSync(PODMAN!, ['--runtime', RUNC!, '--cgroup-manager', 'cgroupfs', '--events-backend', 'file', '--hooks-dir', hooksDir, ...args],
      { encoding: 'utf8', timeout: 120000 });
    return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
  };
  const runc = (...args: string[]): { code: number; out: string; err: string } => {
    const r = spawnSync(RUNC!, ['--root', runcState, ...args], { encoding: 'utf8', timeout: 60000 });
    return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
  };
  /** `podman run -d` of the counter under `name`; returns the container's full id. */
  const run = (name: string, ...extra: string[]): string => {
    names.add(name);
    const r = podman('run', '-d', '--name', name, '--network', 'none', '--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=4096:4096',
      ...extra, image, 'sh', '-c', COUNTER);
    assert.equal(r.code, 0, r.err);
    const id = r.out.trim();
    ids.add(id);
    return id;
  };
  const ticks = (name: string): number[] => [...podman('logs', name).out.matchAll(/^tick (\d+)$/gm)].map((m) => Number(m[1]));
  const status = (name: string): string => podman('inspect', '--format', '{{.State.Status}}', name).out.trim();

  before(() => {
    dir = scratchDir('ferry-hook-');
    const rootfs = join(dir, 'rootfs');
    busyboxRootfs(rootfs, undefined, ['proc', 'sys', 'dev', 'tmp', 'etc']);
    assert.equal(spawnSync('tar', ['-C', rootfs, '-cf', join(dir, 'rootfs.tar'), '.']).status, 0);
    hooksDir = join(dir, 'hooks.d');
    mkdirSync(hooksDir);
    const entry = JSON.parse(readFileSync(join(ROOT, 'hooks', 'ferry-restore.json'), 'utf8')) as { hook: { path: string } };
    entry.hook.path = HOOK;
    writeFileSync(join(hooksDir, 'ferry-restore.json'), JSON.stringify(entry));
    const imp = podman('import', join(dir, 'rootfs.tar'), image);
    assert.equal(imp.code, 0, imp.err);
    runcState = join(dir, 'runc');
  });
  after(() => {
    for (const n of names) podman('rm', '-f', n);
    podman('rmi', '-f', image);
    for (const id of runcIds) runc('delete', '--force', id);
    for (const id of [...ids, ...runcIds]) spawnSync('rm', ['-rf', join(RUN_DIR, id)]);
    cleanup();
  });

  it('a podman container comes up restored from another one\'s image, counting on; poststop cleans up', async () => {
    const a = `${tag}-a`;
    const aid = run(a, '--security-opt', 'seccomp=unconfined');
    await waitFor('ticks of the first container', () => ticks(a).length >= 5);
    const img = join(dir, 'a.tar');
    const cp = ferry(['checkpoint', aid, '--root', '/run/runc', '--image', img]);
    assert.equal(cp.code, 0, cp.stderr);
    await waitFor('the first container to exit', () => status(a) === 'exited');
    const last = ticks(a).at(-1)!;

    const b = `${tag}-b`;
    // Created as the first one was (unconfined): the restored processes get no more than
    // the new container's config allows, and a config with seccomp refuses filterless ones.
    const bid = run(b, '--security-opt', 'seccomp=unconfined', '--annotation', `io.ferry.restore-from=${img}`);
    await waitFor('ticks of the restored container', () => ticks(b).length >= 5, 30000);
    const got = ticks(b);
    assert.equal(got[0], last + 1, `the restored container goes on from tick ${last}: ${got.slice(0, 3).join(', ')}…`);
    assert.deepEqual(got, got.map((_, i) => last + 1 + i), 'every tick once, in order');
    const top = podman('top', b, 'pid', 'args');
    assert.match(top.out, /^\s*1\s+sh -c i=0/m, 'the restored sh is the container\'s pid 1');
    // Its clocks go on from the checkpoint: a time namespace set back by the downtime.
    const offsets = podman('exec', b, 'cat', '/proc/1/timens_offsets');
    assert.match(offsets.out, /^monotonic\s+-\d+\s+\d+$/m, `the restored pid 1's time namespace: ${offsets.out}${offsets.err}`);
    const mounts = podman('exec', b, 'cat', '/proc/mounts');
    assert.equal(mounts.code, 0, mounts.err);
    assert.doesNotMatch(mounts.out, /ferry/, 'the stub\'s bind mount is gone');
    assert.equal(podman('exec', b, 'sh', '-c', 'test -e /dev/.ferry').code, 1, 'and its mount point too');
    assert.ok(existsSync(join(RUN_DIR, bid)), 'the hook keeps its run directory while the container lives');

    assert.equal(podman('kill', b).code, 0);
    await waitFor('poststop to remove the run directory', () => !existsSync(join(RUN_DIR, bid)), 30000);
  });

  it('a container whose config.json asks for seccomp refuses an image of processes without a filter', async () => {
    const img = join(dir, 'a.tar');
    assert.ok(existsSync(img), 'the first test made the image');
    const e = `${tag}-e`;
    const eid = run(e, '--annotation', `io.ferry.restore-from=${img}`); // podman's default seccomp profile
    await waitFor('the container to stop', () => status(e) === 'exited', 30000);
    const line = /^ferry-hook: container \w+: restore from \S+a\.tar failed: image \S+: pid 1 \(sh\) would run without a seccomp filter, which the config\.json of container \w+ \(as the hook's precreate found it\) requires \(linux\.seccomp\)/m;
    const logs = (): string => { const l = podman('logs', e); return l.out + l.err; };
    await waitFor('the one-line refusal in its log', () => line.test(logs()), 10000);
    assert.deepEqual(ticks(e), [], 'nothing of the image ran');
    await waitFor('poststop to remove the run directory', () => !existsSync(join(RUN_DIR, eid)), 30000);
  });

  it('a missing image stops the container with one line in its log; created and removed unstarted leaves nothing', async () => {
    const c = `${tag}-c`;
    const cid = run(c, '--annotation', `io.ferry.restore-from=${join(dir, 'nosuch.tar')}`);
    await waitFor('the container to stop', () => status(c) === 'exited', 30000);
    // conmon may write the last log line a moment after the container is seen exited.
    const line = /^ferry-hook: container \w+: restore from \S+nosuch\.tar failed: cannot read image \S+: no such file$/m;
    const logs = (): string => { const l = podman('logs', c); return l.out + l.err; };
    await waitFor('the one-line error in its log', () => line.test(logs()), 10000);
    assert.deepEqual(ticks(c), [], 'it never ran the fresh program');
    await waitFor('poststop to remove the run directory', () => !existsSync(join(RUN_DIR, cid)), 30000);

    const d = `${tag}-d`;
    names.add(d);
    const cr = podman('create', '--name', d, '--network', 'none', '--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=4096:4096',
      '--annotation', `io.ferry.restore-from=${join(dir, 'a.tar')}`, image, 'sh', '-c', COUNTER);
    assert.equal(cr.code, 0, cr.err);
    const did = cr.out.trim();
    ids.add(did);
    assert.equal(podman('init', d).code, 0);
    const worker = Number(readFileSync(join(RUN_DIR, did, 'restorer.pid'), 'utf8'));
    assert.ok(existsSync(`/proc/${worker}`), 'a restorer waits for the start');
    assert.equal(podman('rm', '-f', d).code, 0);
    await waitFor('the waiting restorer to be stopped', () => !existsSync(`/proc/${worker}`) || readFileSync(`/proc/${worker}/stat`, 'utf8').includes(') Z'));
    assert.ok(!existsSync(join(RUN_DIR, did)), 'run directory removed');
  });

  it('plain runc: a config rewritten by the hook (precreate) with poststart/poststop hooks in it', async () => {
    const bundle = (name: string): { b: string; config: Record<string, any> } => {
      const b = join(dir, name);
      mkdirSync(b);
      assert.equal(spawnSync(RUNC!, ['spec', '--bundle', b]).status, 0);
      const config = JSON.parse(readFileSync(join(b, 'config.json'), 'utf8')) as Record<string, any>;
      config.root = { path: join(dir, 'rootfs'), readonly: false };
      config.process.terminal = false;
      config.process.args = ['sh', '-c', COUNTER];
      return { b, config };
    };
    const log = join(dir, 'runc.log');
    const lines = (): number[] => [...readFileSync(log, 'utf8').matchAll(/^tick (\d+)$/gm)].map((m) => Number(m[1]));
    const first = bundle('plain');
    writeFileSync(join(first.b, 'config.json'), JSON.stringify(first.config));
    runcIds.add(`${tag}-r1`);
    assert.equal(spawnSync('sh', ['-c', `exec "${RUNC}" --root "${runcState}" run -d --bundle "${first.b}" ${tag}-r1 >>"${log}" 2>&1 </dev/null`]).status, 0);
    await waitFor('ticks', () => lines().length >= 5);
    const img = join(dir, 'r.tar');
    const cp = ferry(['checkpoint', `${tag}-r1`, '--root', runcState, '--image', img]);
    assert.equal(cp.code, 0, cp.stderr);
    const last = lines().at(-1)!;

    const second = bundle('hooked');
    second.config.annotations = { 'io.ferry.restore-from': img };
    const pre = spawnSync(HOOK, ['precreate'], { input: JSON.stringify(second.config), encoding: 'utf8' });
    assert.equal(pre.status, 0, pre.stderr);
    const rewritten = JSON.parse(pre.stdout) as Record<string, any>;
    rewritten.hooks = {
      poststart: [{ path: HOOK, args: ['ferry-hook', 'poststart'] }],
      poststop: [{ path: HOOK, args: ['ferry-hook', 'poststop'] }],
    };
    writeFileSync(join(second.b, 'config.json'), JSON.stringify(rewritten));
    const id = `${tag}-r2`;
    runcIds.add(id);
    assert.equal(spawnSync('sh', ['-c', `exec "${RUNC}" --root "${runcState}" run -d --bundle "${second.b}" ${id} >>"${log}" 2>&1 </dev/null`]).status, 0);
    await waitFor('ticks of the restored container', () => lines().length >= last + 5, 30000);
    const all = lines();
    assert.deepEqual(all, all.map((_, i) => i + 1), 'every tick once, in order: it went on from where it stopped');
    assert.equal(runc('delete', '--force', id).code, 0);
    assert.ok(!existsSync(join(RUN_DIR, id)), 'poststop removed the run directory');
  });
});
