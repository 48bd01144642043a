/**
 * The network lock of a container in a network namespace of its own (src/files/tcp-lock.ts):
 * real runc, a busybox container whose ticks go through a TCP connection inside it (a
 * `busybox nc` echo server and client on its loopback) to the log. While ferry checkpoints it
 * with --tcp-established the whole namespace is locked (a table of that ferry in the
 * container's namespace, none in the host's); with --leave-running the lock goes and the ticks
 * go on; checkpointed and restored (a new namespace), the ticks go on through the connection.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { FERRY, needs } from '../helpers/env.js';
import { locksOf, NFT } from '../helpers/echo.js';
import { cleanup, ferry, scratchDir, waitFor } from '../helpers/processes.js';
import { BUSYBOX, busyboxRootfs } from '../helpers/runc-criu.js';

const RUNC = ['/usr/sbin/runc', '/usr/bin/runc'].find((p) => existsSync(p));
const skip = needs('root', 'build') || (RUNC === undefined ? 'needs runc (apt-get install runc)' : false)
  || (existsSync(BUSYBOX) ? false : `needs ${BUSYBOX} (apt-get install busybox-static)`)
  || (NFT === undefined ? 'needs nft(8) (apt-get install nftables)' : false);

let dir = '';
let state = '';
const ID = `ferry-nl-${process.pid}`;

function runc(...args: string[]): { code: number; out: string; err: string } {
  const r = spawnSync(RUNC!, ['--root', state, ...args], { encoding: 'utf8', timeout: 60000 });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

const ticks = (log: string): number[] => [...readFileSync(log, 'utf8').matchAll(/^tick (\d+)$/gm)].map((m) => Number(m[1]));

/** The ticks so far are 1..N once each, and more keep coming. */
async function countsOn(log: string): Promise<void> {
  const n = ticks(log).length;
  await waitFor('more ticks', () => ticks(log).length >= n + 3, 20000);
  const all = ticks(log);
  assert.deepEqual(all, all.map((_, i) => i + 1), 'every tick once, in order');
}

/** Ticks through an echo server on the container's loopback: they reach the log only through the connection. */
const THROUGH_TCP = '/bin/busybox nc -ll -p 7777 -e /bin/cat & sleep 0.5; '
  + '( i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 0.05; done ) | /bin/busybox nc 127.0.0.1 7777';

/** Tables in the network namespace of `pid` made by ferry `ferryPid`. */
function locksIn(pid: number, ferryPid: number): string[] {
  const out = spawnSync('nsenter', [`--net=/proc/${pid}/ns/net`, NFT!, 'list', 'tables'], { encoding: 'utf8' }).stdout;
  return [...out.matchAll(new RegExp(`^table inet (ferry-lock-${ferryPid}-[0-9a-f]+)$`, 'gm'))].map((m) => m[1]!);
}

describe('the network lock of a container', { skip, timeout: 120_000 }, () => {
  before(() => {
    dir = scratchDir('ferry-nlc-');
    state = join(dir, 'state');
    const rootfs = join(dir, 'rootfs');
    busyboxRootfs(rootfs);
  });
  after(() => {
    runc('delete', '--force', ID);
    cleanup();
  });

  it('locks the container\'s namespace while it is checkpointed, never the host\'s; the connection goes on', async () => {
    const b = join(dir, 'bundle');
    mkdirSync(b);
    assert.equal(spawnSync(RUNC!, ['spec', '--bundle', b]).status, 0);
    const config = JSON.parse(readFileSync(join(b, 'config.json'), 'utf8')) as Record<string, any>;
    assert.ok((config.linux.namespaces as Array<{ type: string }>).some((n) => n.type === 'network'), 'runc spec gives a network namespace');
    config.root = { path: join(dir, 'rootfs'), readonly: false };
    config.process.terminal = false;
    config.process.args = ['sh', '-c', THROUGH_TCP];
    writeFileSync(join(b, 'config.json'), JSON.stringify(config, null, 1));
    const log = join(dir, 'ctr.log');
    const fd = openSync(log, 'a');
    const r = spawnSync(RUNC!, ['--root', state, 'run', '-d', '--bundle', b, ID], { stdio: ['ignore', fd, fd], timeout: 60000 });
    closeSync(fd);
    assert.equal(r.status, 0, 'runc run');
    await waitFor('ticks', () => ticks(log).length >= 3);
    const init = (JSON.parse(runc('state', ID).out) as { pid: number }).pid;

    // Paused once the tree is dumped: the lock is in the container's namespace, not the host's.
    const child = spawn(FERRY, ['checkpoint', ID, '--root', state, '--image', join(dir, 'x.tar'), '--tcp-established', '--leave-running'],
      { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, FERRY_TEST_PAUSE_AT: 'dumped' } });
    let err = '';
    child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    const exit = new Promise<number | null>((res) => child.on('close', (code) => res(code)));
    await waitFor('ferry to pause at dumped', () => /paused at dumped/.test(err) || child.exitCode !== null, 30000);
    assert.match(err, /paused at dumped/);
    assert.equal(locksIn(init, child.pid!).length, 1, 'one lock table in the container\'s namespace');
    assert.deepEqual(locksOf(child.pid!), [], 'none in the host\'s');
    child.kill('SIGKILL');
    await exit;
    await waitFor('the lock to go', () => locksIn(init, child.pid!).length === 0, 3000);
    await countsOn(log);

    const cp = ferry(['checkpoint', ID, '--root', state, '--image', join(dir, 'x.tar'), '--tcp-established', '--json']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal((JSON.parse(cp.stdout.toString()) as { netLock?: string }).netLock, undefined, 'nothing kept: the namespace went with the container');
    const rs = ferry(['restore', ID, '--root', state, '--image', join(dir, 'x.tar'), '--tcp-established', '--detach']);
    assert.equal(rs.code, 0, rs.stderr);
    await countsOn(log);
  });
});
