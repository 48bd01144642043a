/**
 * Containers with real runc: a busybox container checkpointed and restored under the same id
 * and a new one, --leave-running, a tree with pipes inside, and the refusals (no such
 * container, paused, not started, a bundle that does not match, no runtime).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { needs } from '../helpers/env.js';
import { cleanup, ferry, scratchDir, sleep, waitFor } from '../helpers/processes.js';
import { BUSYBOX, busyboxRootfs, countsOn, ticks } from '../helpers/runc-criu.js';

const RUNC = ['/usr/sbin/runc', '/usr/bin/runc'].find((p) => existsSync(p));
const skip = needs('root', 'build') || (RUNC ? (existsSync(BUSYBOX) ? false : `needs ${BUSYBOX} (apt-get install busybox-static)`) : 'needs runc (apt-get install runc)');

let dir = '';
let state = '';
const ids = new Set<string>();
const mounts = new Set<string>();

function runc(...args: string[]): { code: number; out: string; err: string } {
  const r = spawnSync(RUNC!, ['--root', state, ...args], { encoding: 'utf8', timeout: 60000 });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

function status(id: string): string {
  const r = runc('state', id);
  return r.code === 0 ? (JSON.parse(r.out) as { status: string }).status : 'absent';
}

/** A bundle running `script` under busybox sh, with the rootfs shared by every bundle. */
function bundle(name: string, script: string): string {
  const b = join(dir, name);
  mkdirSync(b);
  const spec = spawnSync(RUNC!, ['spec', '--bundle', b], { encoding: 'utf8' });
  assert.equal(spec.status, 0, spec.stderr);
  const config = JSON.parse(readFileSync(join(b, 'config.json'), 'utf8')) as Record<string, any>;
  config.root = { path: join(dir, 'rootfs'), readonly: false };
  config.process.terminal = false;
  config.process.args = ['sh', '-c', script];
  writeFileSync(join(b, 'config.json'), JSON.stringify(config, null, 1));
  return b;
}

/** Starts container `id` from `b` with stdout/stderr on `log`. */
function run(id: string, b: string, log: string): void {
  const fd = openSync(log, 'a');
  const r = spawnSync(RUNC!, ['--root', state, 'run', '-d', '--bundle', b, id], { stdio: ['ignore', fd, fd], timeout: 60000 });
  closeSync(fd);
  assert.equal(r.status, 0, `runc run ${id} failed`);
  ids.add(id);
}

const COUNTER = 'i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 0.05; done';
/** Counts only in /dev/shm (its own tmpfs): a restore without it would start again at 1. */
const SHM_COUNTER = 'while true; do n=$(( $(cat /dev/shm/n 2>/dev/null || echo 0) + 1 )); echo $n > /dev/shm/n; echo "tick $n"; sleep 0.05; done';
const PIPELINE = '( i=0; while true; do i=$((i+1)); echo $i; sleep 0.05; done ) | cat | while read n; do echo "tick $n"; done';

describe('containers', { skip, timeout: 300_000 }, () => {
  before(() => {
    dir = scratchDir('ferry-ctr-');
    state = join(dir, 'state');
    const rootfs = join(dir, 'rootfs');
    busyboxRootfs(rootfs);
  });
  after(() => {
    for (const id of ids) runc('delete', '--force', id);
    for (const m of mounts) spawnSync('umount', ['-l', m]);
    cleanup();
  });

  it('a counting container survives three cycles under its id, then moves to a new id', async () => {
    const b = bundle('counter', COUNTER);
    const log = join(dir, 'counter.log');
    run('ferry-t1', b, log);
    await waitFor('ticks', () => ticks(log).length >= 3);
    const image = join(dir, 'counter.tar');
    for (let i = 0; i < 3; i++) {
      const cp = ferry(['checkpoint', 'ferry-t1', '--root', state, '--image', image]);
      assert.equal(cp.code, 0, cp.stderr);
      assert.equal(status('ferry-t1'), 'absent', 'checkpoint deletes the container');
      const rs = ferry(['restore', 'ferry-t1', '--root', state, '--image', image, '--detach']);
      assert.equal(rs.code, 0, rs.stderr);
      assert.equal(status('ferry-t1'), 'running');
      await countsOn(log);
    }
    const ps = runc('ps', 'ferry-t1');
    assert.equal(ps.code, 0, ps.err);
    assert.match(ps.out, /sh -c/);
    // The same image again, under a new id, once the first is gone.
    assert.equal(runc('delete', '--force', 'ferry-t1').code, 0);
    const rs = ferry(['restore', 'ferry-t2', '--root', state, '--image', image, '--bundle', b, '--detach', '--json']);
    assert.equal(rs.code, 0, rs.stderr);
    ids.add('ferry-t2');
    assert.equal(status('ferry-t2'), 'running');
    // --json tells the processes' PIDs as they see them (the init is 1) from the host's.
    const result = JSON.parse(rs.stdout.toString()) as { pid: number; pids: number[]; hostPids: Record<string, number>; totalMs: number };
    const init = (JSON.parse(runc('state', 'ferry-t2').out) as { pid: number }).pid;
    assert.equal(result.pids[0], 1);
    assert.equal(result.pid, init);
    assert.equal(result.hostPids['1'], init);
    assert.deepEqual(Object.keys(result.hostPids).map(Number).sort((x, y) => x - y), [...result.pids].sort((x, y) => x - y));
    assert.equal(result.totalMs, Math.round(result.totalMs * 10) / 10, 'durations to a tenth of a millisecond');
    const n = ticks(log).length;
    await waitFor('more ticks', () => ticks(log).length >= n + 3);
    assert.equal(runc('kill', 'ferry-t2', 'KILL').code, 0, 'runc kill works on a restored container');
  });

  it('its clocks go on from the checkpoint: a time namespace hides the downtime, twice in a row', async () => {
    // /proc/uptime shows CLOCK_BOOTTIME as the container's time namespace does.
    const b = bundle('clocks', 'while true; do read up idle < /proc/uptime; echo "up $up"; sleep 0.05; done');
    const log = join(dir, 'clocks.log');
    run('ferry-t9', b, log);
    const ups = (): number[] => [...readFileSync(log, 'utf8').matchAll(/^up (\d+\.\d+)$/gm)].map((m) => Number(m[1]));
    await waitFor('uptime lines', () => ups().length >= 3);
    const image = join(dir, 'clocks.tar');
    for (let i = 0; i < 2; i++) {
      const cp = ferry(['checkpoint', 'ferry-t9', '--root', state, '--image', image]);
      assert.equal(cp.code, 0, cp.stderr);
      const before = ups();
      await sleep(3000); // the downtime its clocks must not show
      const rs = ferry(['restore', 'ferry-t9', '--root', state, '--image', image, '--detach']);
      assert.equal(rs.code, 0, rs.stderr);
      await waitFor('uptime after the restore', () => ups().length >= before.length + 3);
      const last = before.at(-1)!, next = ups()[before.length]!;
      assert.ok(next >= last && next - last < 1.5, `uptime went on from ${last} s to ${next} s across 3 s of downtime`);
      const init = (JSON.parse(runc('state', 'ferry-t9').out) as { pid: number }).pid;
      assert.notEqual(readlinkSync(`/proc/${init}/ns/time`), readlinkSync('/proc/self/ns/time'), 'the restored container has a time namespace of its own');
      assert.match(readFileSync(`/proc/${init}/timens_offsets`, 'utf8'), /^monotonic\s+-\d+\s+\d+$/m, 'its monotonic clock set back by the downtime');
    }
    assert.equal(runc('delete', '--force', 'ferry-t9').code, 0);
  });

  it('a container keeps the contents of its /dev/shm', async () => {
    const b = bundle('shm', SHM_COUNTER);
    const log = join(dir, 'shm.log');
    run('ferry-t7', b, log);
    await waitFor('ticks', () => ticks(log).length >= 3);
    const image = join(dir, 'shm.tar');
    for (let i = 0; i < 2; i++) {
      const cp = ferry(['checkpoint', 'ferry-t7', '--root', state, '--image', image]);
      assert.equal(cp.code, 0, cp.stderr);
      const rs = ferry(['restore', 'ferry-t7', '--root', state, '--image', image, '--detach']);
      assert.equal(rs.code, 0, rs.stderr);
      await countsOn(log);
    }
  });

  it('the changes to an overlay rootfs travel in the image: a restore onto a fresh upper layer gets them back', async () => {
    const lower = join(dir, 'rootfs');
    const layer = (n: number): { upper: string; work: string } => {
      const upper = join(dir, `upper${n}`);
      const work = join(dir, `work${n}`);
      mkdirSync(upper);
      mkdirSync(work);
      return { upper, work };
    };
    const merged = join(dir, 'merged');
    mkdirSync(merged);
    const mount = (l: { upper: string; work: string }): void => {
      const r = spawnSync('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${lower},upperdir=${l.upper},workdir=${l.work}`, merged], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      mounts.add(merged);
    };
    mount(layer(1));
    const b = bundle('overlay', 'echo hello > /data.txt; mkdir /newdir; rm /bin/cat; ' + COUNTER);
    const config = JSON.parse(readFileSync(join(b, 'config.json'), 'utf8')) as { root: { path: string } };
    config.root.path = merged;
    writeFileSync(join(b, 'config.json'), JSON.stringify(config));
    const log = join(dir, 'overlay.log');
    run('ferry-t8', b, log);
    await waitFor('ticks', () => ticks(log).length >= 3);
    const image = join(dir, 'overlay.tar');
    const cp = ferry(['checkpoint', 'ferry-t8', '--root', state, '--image', image]);
    assert.equal(cp.code, 0, cp.stderr);
    // "Another node": the same bundle over the same lower layer, with an empty upper layer.
    assert.equal(spawnSync('umount', [merged]).status, 0);
    mount(layer(2));
    assert.ok(!existsSync(join(merged, 'data.txt')) && existsSync(join(merged, 'bin', 'cat')), 'a fresh rootfs');
    const rs = ferry(['restore', 'ferry-t8', '--root', state, '--image', image, '--detach']);
    assert.equal(rs.code, 0, rs.stderr);
    assert.equal(readFileSync(join(merged, 'data.txt'), 'utf8'), 'hello\n', 'an added file');
    assert.ok(existsSync(join(merged, 'newdir')), 'an added directory');
    assert.ok(!existsSync(join(merged, 'bin', 'cat')), 'a deleted file stays deleted');
    await countsOn(log);
    assert.equal(runc('delete', '--force', 'ferry-t8').code, 0);
  });

  it('a listening socket comes back in the container\'s own network namespace', async () => {
    const b = bundle('listener', `/bin/busybox nc -ll -p 7777 -e /bin/busybox echo hi & ${COUNTER}`);
    const log = join(dir, 'listener.log');
    run('ferry-t9', b, log);
    await waitFor('ticks', () => ticks(log).length >= 3);
    const initPid = (): number => (JSON.parse(runc('state', 'ferry-t9').out) as { pid: number }).pid;
    /** Whether the network namespace of `pid` has a TCP listener on port 7777 (0x1E61; busybox nc uses IPv6). */
    const listens = (pid: number | 'self'): boolean => ['tcp', 'tcp6'].some((f) =>
      /^\s*\d+: [0-9A-F]+:1E61 0+:0000 0A /m.test(readFileSync(`/proc/${pid}/net/${f}`, 'utf8')));
    await waitFor('the listener', () => listens(initPid()));
    const image = join(dir, 'listener.tar');
    const cp = ferry(['checkpoint', 'ferry-t9', '--root', state, '--image', image]);
    assert.equal(cp.code, 0, cp.stderr);
    const rs = ferry(['restore', 'ferry-t9', '--root', state, '--image', image, '--detach']);
    assert.equal(rs.code, 0, rs.stderr);
    assert.ok(listens(initPid()), 'listening in the container\'s namespace');
    assert.ok(!listens('self'), 'not in ferry\'s');
    await countsOn(log);
    assert.equal(runc('delete', '--force', 'ferry-t9').code, 0);
  });

  it('a pipeline container keeps its pipes; --leave-running leaves it running', async () => {
    const b = bundle('pipeline', PIPELINE);
    const log = join(dir, 'pipeline.log');
    run('ferry-t3', b, log);
    await waitFor('ticks', () => ticks(log).length >= 3);
    const image = join(dir, 'pipeline.tar');
    const cp = ferry(['checkpoint', 'ferry-t3', '--root', state, '--image', image, '--leave-running', '--json']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.ok((JSON.parse(cp.stdout.toString()) as { pids: number[] }).pids.length >= 4, 'the whole tree');
    assert.equal(status('ferry-t3'), 'running');
    await countsOn(log);
    for (let i = 0; i < 2; i++) {
      const c = ferry(['checkpoint', 'ferry-t3', '--root', state, '--image', image]);
      assert.equal(c.code, 0, c.stderr);
      const rs = ferry(['restore', 'ferry-t3', '--root', state, '--image', image, '--detach']);
      assert.equal(rs.code, 0, rs.stderr);
      await countsOn(log);
    }
  });

  it('refuses what it cannot do, with one line, and leaves everything as it was', async () => {
    const line = (s: string): string => { assert.equal(s.trim().split('\n').length, 1, `one line: ${s}`); return s; };
    let r = ferry(['checkpoint', 'ferry-nosuch', '--root', state, '--image', join(dir, 'x.tar')]);
    assert.equal(r.code, 1);
    assert.match(line(r.stderr), /no container ferry-nosuch in runc/);
    r = ferry(['checkpoint', 'ferry-nosuch', '--runtime', '/nonexistent/runc', '--image', join(dir, 'x.tar')]);
    assert.equal(r.code, 1);
    assert.match(line(r.stderr), /container runtime \/nonexistent\/runc is not an executable file/);

    const b = bundle('paused', COUNTER);
    const log = join(dir, 'paused.log');
    run('ferry-t4', b, log);
    await waitFor('ticks', () => ticks(log).length >= 2);
    assert.equal(runc('pause', 'ferry-t4').code, 0);
    r = ferry(['checkpoint', 'ferry-t4', '--root', state, '--image', join(dir, 'p.tar')]);
    assert.equal(r.code, 1);
    assert.match(line(r.stderr), /container ferry-t4 is paused: resume it first/);
    assert.equal(status('ferry-t4'), 'paused', 'left as it was');
    assert.equal(runc('resume', 'ferry-t4').code, 0);
    await countsOn(log);

    // An image whose container ran something else than this bundle does.
    const image = join(dir, 't4.tar');
    assert.equal(ferry(['checkpoint', 'ferry-t4', '--root', state, '--image', image, '--leave-running']).code, 0);
    const other = bundle('other', 'sleep 1000');
    r = ferry(['restore', 'ferry-t5', '--root', state, '--image', image, '--bundle', other, '--detach']);
    assert.equal(r.code, 1);
    assert.match(line(r.stderr), /bundle .*other does not match the image/);
    assert.equal(status('ferry-t5'), 'absent', 'nothing created');
    r = ferry(['restore', 'ferry-t4', '--root', state, '--image', image, '--detach']);
    assert.equal(r.code, 1);
    assert.match(line(r.stderr), /container ferry-t4 already exists/);

    // A container that was created but never started.
    const fd = openSync('/dev/null', 'r+');
    const c = spawnSync(RUNC!, ['--root', state, 'create', '--bundle', other, 'ferry-t6'], { stdio: ['ignore', fd, fd] });
    closeSync(fd);
    assert.equal(c.status, 0);
    ids.add('ferry-t6');
    r = ferry(['checkpoint', 'ferry-t6', '--root', state, '--image', join(dir, 'c.tar')]);
    assert.equal(r.code, 1);
    assert.match(line(r.stderr), /container ferry-t6 is created, not running/);
    assert.equal(status('ferry-t6'), 'created');
  });
});
