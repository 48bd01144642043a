/**
 * A container with a terminal (`"terminal": true`) under an unmodified runc with ferry's criu
 * first in PATH, and through ferry-runtime. The test's own console-socket receiver
 * (test/fixtures/scripts/console_receiver.py) takes the pty master runc sends
 * (`run -d --console-socket`) and logs what the container writes to it. The container's
 * shell (TERMINAL_SCRIPT) sets its terminal (37 rows, 101 columns, echo off) and prints, every
 * 100 ms, a tick with what it sees of its terminal: the size, the echo flag, its name, and
 * whether /dev/tty opens (its controlling terminal); a line of input is answered "got LINE".
 * - runc: `checkpoint --leave-running` leaves it on the same master; `checkpoint` and
 *   `restore -d --console-socket` (runc sends orphan_pts_master; ferry makes a new pair in the
 *   container's devpts and sends the master in the "orphan-pts-master" notification, which
 *   runc passes on to the socket) give the receiver a second master on which the ticks count
 *   on with the same terminal, and input written to it reaches the shell.
 * - ferry-runtime: `checkpoint` and `restore -d --console-socket` do the same; without
 *   --console-socket the restore is refused with one line, nothing made.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { PYTHON, ROOT } from '../helpers/env.js';
import { cleanup, scratchDir, waitFor } from '../helpers/processes.js';
import {
  cgroupPids, consoleReceiver, makeTerminalBundle, RUNC, RuncCriu, SKIP_RUNC_CRIU, TERMINAL_SCRIPT, TERMINAL_SEEN,
} from '../helpers/runc-criu.js';

const FERRY_RUNTIME = join(ROOT, 'bin', 'ferry-runtime');

describe('a container with a terminal: ferry\'s criu under runc, ferry-runtime', {
  skip: SKIP_RUNC_CRIU || (existsSync(PYTHON) ? false : `needs ${PYTHON}`), timeout: 300_000,
}, () => {
  let dir = '';
  let rc: RuncCriu;
  let console: Awaited<ReturnType<typeof consoleReceiver>>;

  before(async () => {
    dir = scratchDir('ferry-criu-tty-');
    rc = new RuncCriu(join(dir, 'bin'), join(dir, 'runc-root'));
    console = await consoleReceiver(dir);
  });

  after(() => {
    rc?.cleanup();
    cleanup();
  });

  /** Waits for three ticks on master `k` (0: the first) and checks the terminal they saw. */
  const ticksOn = async (k: number, from?: number): Promise<number> => {
    await waitFor(`ticks on master ${k + 1}`, () => (console.masters()[k]?.ticks.length ?? 0) >= 3, 20_000);
    const ticks = console.masters()[k]!.ticks;
    if (from !== undefined) {
      assert.equal(ticks[0]!.n, from + 1, `counting on from tick ${from}: ${ticks.slice(0, 3).map((t) => t.n).join(', ')}`);
      ticks.forEach((t, i) => assert.equal(t.n, from + 1 + i));
    }
    for (const t of ticks) assert.equal(t.line, TERMINAL_SEEN, `tick ${t.n}: the shell's terminal`);
    return ticks.at(-1)!.n;
  };

  it('runc: checkpoint --leave-running, checkpoint, restore -d --console-socket: the shell keeps its terminal on a new master', async () => {
    const id = rc.own(`ferry-swrk-tty-${process.pid}`);
    const bundle = makeTerminalBundle(dir, 'bundle-tty', TERMINAL_SCRIPT);
    const first = console.masters().length;
    const run = await rc.detached(['run', '-d', '--console-socket', console.socket, '--bundle', bundle, id], bundle);
    assert.equal(run.code, 0, run.err());
    const at = await ticksOn(first);

    const lr = rc.run(['checkpoint', '--image-path', join(dir, 'keep'), '--leave-running', id]);
    assert.equal(lr.code, 0, lr.err);
    await waitFor('ticks after --leave-running', () => console.masters()[first]!.ticks.at(-1)!.n >= at + 3);
    assert.equal(console.masters().length, first + 1, 'the same master');

    const image = join(dir, 'image');
    const cp = rc.run(['checkpoint', '--image-path', image, id]);
    assert.equal(cp.code, 0, cp.err);
    assert.equal(rc.status(id), undefined, 'gone from runc');
    const last = console.masters()[first]!.ticks.at(-1)!.n;

    const rs = await rc.detached(['restore', '-d', '--console-socket', console.socket, '--image-path', image, id], bundle);
    assert.equal(rs.code, 0, rs.err());
    assert.equal(rc.status(id)?.status, 'running');
    await ticksOn(first + 1, last);

    // Input written to the new master reaches the shell (echo is off: only its answer comes).
    console.input('ping\n');
    await waitFor('the answer to the input', () => /^got ping\r?$/m.test(console.masters()[first + 1]!.text));
    assert.doesNotMatch(console.masters()[first + 1]!.text, /^ping\r?$/m, 'not echoed');

    assert.equal(rc.run(['kill', id, 'KILL']).code, 0);
    await waitFor('the container to stop', () => rc.status(id)?.status !== 'running');
    assert.equal(rc.run(['delete', id]).code, 0);
  });

  it('ferry-runtime: checkpoint, restore -d --console-socket; without the socket the restore is refused', async () => {
    const id = rc.own(`ferry-rt-tty-${process.pid}`);
    const bundle = makeTerminalBundle(dir, 'bundle-rt', TERMINAL_SCRIPT);
    const first = console.masters().length;
    const run = await rc.detached(['run', '-d', '--console-socket', console.socket, '--bundle', bundle, id], bundle);
    assert.equal(run.code, 0, run.err());
    await ticksOn(first);
    const runtime = (...args: string[]): { code: number; err: string } => {
      const r = spawnSync(FERRY_RUNTIME, ['--root', rc.state, ...args], { cwd: bundle, env: { ...rc.env, FERRY_RUNC: RUNC! }, encoding: 'utf8', timeout: 120_000 });
      return { code: r.status ?? -1, err: r.stderr };
    };
    const image = join(dir, 'rt-image');
    const cp = runtime('checkpoint', '--image-path', image, id);
    assert.equal(cp.code, 0, cp.err);
    const last = console.masters()[first]!.ticks.at(-1)!.n;

    const no = runtime('restore', '-d', '--image-path', image, id);
    assert.equal(no.code, 1);
    assert.match(no.err, /^ferry-runtime restore: file \d+ of the image is the container's terminal \/dev\/pts\/0, .*--console-socket/m);
    assert.equal(no.err.trim().split('\n').length, 1, 'one line');
    assert.equal(rc.status(id), undefined, 'nothing made');
    assert.deepEqual(cgroupPids(id), []);

    const rs = runtime('restore', '-d', '--console-socket', console.socket, '--image-path', image, id);
    assert.equal(rs.code, 0, rs.err);
    assert.equal(rc.status(id)?.status, 'running');
    await ticksOn(first + 1, last);
    assert.equal(rc.run(['delete', '--force', id]).code, 0);
  });
});
