/**
 * Fault cell of a container's terminal under runc with ferry's criu (src/files/tty.ts, role
 * console; src/runtime/criu-swrk.ts): ferry's criu is SIGKILLed during `runc restore -d
 * --console-socket` at `rebuilt`, while it holds the new pair's master and has not sent it
 * ("orphan-pts-master"). The kernel closes the master with ferry; runc fails; nothing is left
 * behind (no container in runc's state, no process in its cgroup, no private state), the
 * console socket's holder got no master, and the same restore run again gives it one on which
 * the container's shell counts on with its terminal. The same through ferry-runtime (`restore
 * -d --console-socket`), killed at `letgo` (the tree running, the master not yet sent): its
 * watchdog removes the container, the receiver gets no master, a retry works.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { PRIVATE_STATE_PARENT } from '../../src/runtime/criu-swrk.js';
import { PYTHON, ROOT } from '../helpers/env.js';
import { cleanup, scratchDir, sleep, waitFor } from '../helpers/processes.js';
import {
  cgroupPids, childrenOf, consoleReceiver, makeTerminalBundle, RUNC, RuncCriu, SKIP_RUNC_CRIU, TERMINAL_SCRIPT, TERMINAL_SEEN,
} from '../helpers/runc-criu.js';

/** Whether `pid` holds a pty master (a descriptor of a ptmx). */
function holdsPtmx(pid: number): boolean {
  try {
    return readdirSync(`/proc/${pid}/fd`).some((fd) => {
      try {
        return /ptmx$/.test(readlinkSync(`/proc/${pid}/fd/${fd}`));
      } catch {
        return false;
      }
    });
  } catch {
    return false;
  }
}

describe('fault cell: ferry\'s criu SIGKILLed holding a container\'s new terminal', {
  skip: SKIP_RUNC_CRIU || (existsSync(PYTHON) ? false : `needs ${PYTHON}`), timeout: 300_000,
}, () => {
  let dir = '';
  let rc: RuncCriu;

  before(() => {
    dir = scratchDir('ferry-criu-tty-faults-');
    rc = new RuncCriu(join(dir, 'bin'), join(dir, 'runc-root'));
  });

  after(() => {
    rc?.cleanup();
    cleanup();
  });

  it('RESTORE killed at rebuilt, the master not yet sent: nothing is left behind, and a retry works', async () => {
    const console = await consoleReceiver(dir);
    const id = rc.own(`ferry-swrk-tty-f-${process.pid}`);
    const bundle = makeTerminalBundle(dir, 'bundle', TERMINAL_SCRIPT);
    const run = await rc.detached(['run', '-d', '--console-socket', console.socket, '--bundle', bundle, id], bundle);
    assert.equal(run.code, 0, run.err());
    await waitFor('ticks', () => (console.masters()[0]?.ticks.length ?? 0) >= 3, 20_000);
    const image = join(dir, 'image');
    const cp = rc.run(['checkpoint', '--image-path', image, id]);
    assert.equal(cp.code, 0, cp.err);
    const last = console.masters()[0]!.ticks.at(-1)!.n;

    const rs = rc.start(['restore', '-d', '--console-socket', console.socket, '--image-path', image, id], bundle, { FERRY_TEST_PAUSE_AT: 'rebuilt' });
    // runc gives criu no stderr for a container with a terminal, so the pause line is not
    // seen: criu is found as runc's child, and killed once it holds the new master (from then
    // on it goes to the pause at rebuilt and stays there, the master unsent).
    let criu = 0;
    await waitFor('criu to hold the new master', () => {
      criu = childrenOf(rs.child.pid!, 'swrk')[0] ?? 0;
      return criu !== 0 && holdsPtmx(criu);
    }, 60_000);
    await sleep(500);
    assert.ok(holdsPtmx(criu), 'still held: not sent');
    process.kill(criu, 'SIGKILL');
    assert.notEqual(await rs.exited, 0, 'runc restore fails');
    await waitFor('no container in runc\'s state', () => rc.status(id) === undefined);
    await waitFor('no process in the container\'s cgroup', () => cgroupPids(id).length === 0);
    await waitFor('no private state of that criu', () => !existsSync(PRIVATE_STATE_PARENT)
      || !readdirSync(PRIVATE_STATE_PARENT).some((d) => d.startsWith(`${criu}-`)));
    assert.equal(console.masters().length, 1, 'the receiver got no master from the killed restore');

    const again = await rc.detached(['restore', '-d', '--console-socket', console.socket, '--image-path', image, id], bundle);
    assert.equal(again.code, 0, again.err());
    await waitFor('ticks on the new master', () => (console.masters()[1]?.ticks.length ?? 0) >= 2, 20_000);
    const ticks = console.masters()[1]!.ticks;
    assert.equal(ticks[0]!.n, last + 1, `the image's count goes on: ${ticks.slice(0, 3).map((t) => t.n).join(', ')}`);
    for (const t of ticks) assert.equal(t.line, TERMINAL_SEEN);
    assert.equal(rc.run(['delete', '--force', id]).code, 0);
  });

  it('ferry-runtime restore --console-socket killed at letgo, the master not yet sent: the watchdog removes the container, a retry works', async () => {
    const console = await consoleReceiver(scratchDir('ferry-rt-tty-faults-'));
    const id = rc.own(`ferry-rt-tty-f-${process.pid}`);
    const bundle = makeTerminalBundle(dir, 'bundle-rt', TERMINAL_SCRIPT);
    const run = await rc.detached(['run', '-d', '--console-socket', console.socket, '--bundle', bundle, id], bundle);
    assert.equal(run.code, 0, run.err());
    await waitFor('ticks', () => (console.masters()[0]?.ticks.length ?? 0) >= 3, 20_000);
    const runtime = (args: string[], env: NodeJS.ProcessEnv = {}): { exited: Promise<number>; err: () => string } => {
      const child = spawn(join(ROOT, 'bin', 'ferry-runtime'), ['--root', rc.state, ...args],
        { cwd: bundle, env: { ...rc.env, FERRY_RUNC: RUNC!, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      child.stderr!.setEncoding('utf8').on('data', (x: string) => { err += x; });
      return { exited: new Promise((r) => child.on('exit', (c) => r(c ?? -1))), err: () => err };
    };
    const image = join(dir, 'rt-image');
    const cp = runtime(['checkpoint', '--image-path', image, id]);
    assert.equal(await cp.exited, 0, cp.err());
    const last = console.masters()[0]!.ticks.at(-1)!.n;

    const rs = runtime(['restore', '-d', '--console-socket', console.socket, '--image-path', image, id], { FERRY_TEST_PAUSE_AT: 'letgo' });
    let ferry = 0;
    await waitFor('ferry-runtime to pause at letgo', () => {
      ferry = Number(/ferry-test: paused at letgo \(pid (\d+)\)/.exec(rs.err())?.[1] ?? 0);
      return ferry !== 0;
    }, 60_000);
    assert.ok(holdsPtmx(ferry), 'it holds the new master');
    process.kill(ferry, 'SIGKILL');
    await rs.exited;
    await waitFor('the watchdog to remove the container', () => rc.status(id) === undefined, 30_000);
    await waitFor('no process in the container\'s cgroup', () => cgroupPids(id).length === 0);
    assert.equal(console.masters().length, 1, 'the receiver got no master from the killed restore');

    const again = runtime(['restore', '-d', '--console-socket', console.socket, '--image-path', image, id]);
    assert.equal(await again.exited, 0, again.err());
    await waitFor('ticks on the new master', () => (console.masters()[1]?.ticks.length ?? 0) >= 2, 20_000);
    const ticks = console.masters()[1]!.ticks;
    assert.equal(ticks[0]!.n, last + 1, `the image's count goes on: ${ticks.slice(0, 3).map((t) => t.n).join(', ')}`);
    for (const t of ticks) assert.equal(t.line, TERMINAL_SEEN);
    assert.equal(rc.run(['delete', '--force', id]).code, 0);
  });
});
