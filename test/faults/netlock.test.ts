/**
 * The network lock's cells of the fault matrix: ferry checkpointing a tree with a TCP
 * connection (--tcp-established) is hit while it holds the lock (src/files/tcp-lock.ts). Every
 * cell: no table of that ferry is left (the kernel deleted the owned table when its nft went),
 * the workload runs on untraced, and its connection still works both ways: the peer outside
 * the tree, which kept sending all along, gets every byte echoed back, in order, and never a
 * reset. A retry of the checkpoint then takes and keeps the lock, and the restore removes it.
 * The `repair` cell hits ferry while the socket is in repair mode with two options changed to
 * read its queue: the sockets watchdog (src/files/socket-guard.ts) puts it back, and the
 * workload's check (SIGUSR1) finds the options it never changed. Its workload sleeps between
 * reads: one blocked in recv(2) on that socket would get EPERM at once, since the kernel lets
 * the tracee go before the watchdog can learn that ferry died (docs/safety.md).
 * Restore cells: a restore hit after the connection is rebuilt leaves the kept lock and no
 * orphan socket on the 4-tuple (the rebuilt socket closes abortively until the let-go), so
 * the retry works.
 */
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs } from '../helpers/env.js';
import { allEchoed, closeServers, echoPair, locksOf, NFT, tableExists } from '../helpers/echo.js';
import { alive, cleanup, ferry, own, procState, sleep, verify, waitFor } from '../helpers/processes.js';
import { expectOk, hit, Matrix, startFerry, waitPaused, type Fault, type Problems } from './helpers.js';

const skip = needs('root', 'python') || (NFT === undefined ? 'needs nft(8) (apt-get install nftables)' : false);
const matrix = new Matrix('Fault matrix: the network lock (rows: operation, fault; columns: phase)');
after(() => {
  console.log(`\n${matrix.render()}\n`);
  closeServers();
  cleanup();
});

/**
 * Phases where the lock is held (taken after the tree is frozen, before its sockets are read):
 * `repair` is inside the reading of the socket.
 */
const PHASES = ['repair', 'dumped', 'writing', 'written'] as const;

async function lockCell(p: Problems, phase: string, fault: Fault): Promise<void> {
  const { w, peer } = await echoPair('127.0.0.1', phase === 'repair');
  try {
    await sleep(200);
    const run = startFerry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'echo.tar'), '--tcp-established'], phase);
    try {
      const notPaused = await waitPaused(run, phase);
      if (notPaused) {
        p.push(notPaused);
        return;
      }
      if (locksOf(run.pid).length !== 1) p.push(`paused at ${phase}, ferry holds ${locksOf(run.pid).length} lock tables, expected 1`);
      await sleep(300); // the peer sends into the lock meanwhile
      await hit(run, fault, p);
    } finally {
      if (!run.exited) run.child.kill('SIGKILL');
      await run.exit;
    }
    try {
      await waitFor('the lock to go', () => locksOf(run.pid).length === 0, 3000);
    } catch {
      p.push(`left behind: table inet ${locksOf(run.pid).join(', ')}`);
    }
    if (!alive(w.pid)) {
      p.push('the workload is gone');
      return;
    }
    try {
      await waitFor('the workload to be let go', () => procState(w.pid).tracer === 0 && !'tT'.includes(procState(w.pid).state), 3000);
    } catch {
      p.push(`the workload is ${JSON.stringify(procState(w.pid))}`);
    }
    try {
      await allEchoed(peer, 15000);
    } catch (err) {
      p.push(`the connection after the fault: ${(err as Error).message.split('\n')[0]}`);
    }
    const v = await verify(w);
    if (v !== 'PASS') p.push(`workload check: ${v}`);
    if (p.length) return;
    // And the retry: the lock is taken and kept, the restore removes it.
    const retry = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'retry.tar'), '--tcp-established', '--json']);
    if (retry.code !== 0) {
      p.push(`the retry failed: ${retry.stderr.trim()}`);
      return;
    }
    const table = (JSON.parse(retry.stdout.toString()) as { netLock?: string }).netLock ?? '';
    await w.exited;
    if (!tableExists(table)) p.push(`the retry kept no lock (${table || 'none named'})`);
    const rs = ferry(['restore', '--image', join(w.dir, 'retry.tar'), '--tcp-established']);
    if (rs.code !== 0) {
      p.push(`the restore failed: ${rs.stderr.trim()}`);
      return;
    }
    own(w.pid);
    if (tableExists(table)) p.push(`the restore left table inet ${table}`);
    try {
      await allEchoed(peer, 15000);
    } catch (err) {
      p.push(`the connection after the restore: ${(err as Error).message.split('\n')[0]}`);
    }
  } finally {
    peer.stop();
  }
}

/**
 * A restore of a tree with a connection, hit at `phase`: the kept lock stays (the peer, still
 * sending, sees no reset), nothing of the restore holds the connection's 4-tuple, and a retry
 * restores it, removes the lock, and the connection works both ways.
 */
async function restoreCell(p: Problems, phase: string, fault: Fault): Promise<void> {
  const { w, peer } = await echoPair();
  try {
    await sleep(200);
    const image = join(w.dir, 'echo.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--tcp-established', '--json']);
    if (cp.code !== 0) {
      p.push(`the checkpoint failed: ${cp.stderr.trim()}`);
      return;
    }
    const table = (JSON.parse(cp.stdout.toString()) as { netLock?: string }).netLock ?? '';
    await w.exited;
    const run = startFerry(['restore', '--image', image, '--tcp-established'], phase);
    try {
      const notPaused = await waitPaused(run, phase);
      if (notPaused) {
        p.push(notPaused);
        return;
      }
      await hit(run, fault, p);
    } finally {
      if (!run.exited) run.child.kill('SIGKILL');
      await run.exit;
    }
    if (!tableExists(table)) p.push(`the restore hit at ${phase} removed the lock`);
    try {
      await waitFor(`pid ${w.pid} to be free`, () => !alive(w.pid), 5000);
    } catch {
      p.push(`pid ${w.pid} still held after the restore was hit`);
      return;
    }
    await sleep(300);
    if (peer.errors.length) p.push(`the peer saw: ${peer.errors.join('; ')}`);
    const rs = ferry(['restore', '--image', image, '--tcp-established']);
    if (rs.code !== 0) {
      p.push(`the retry failed: ${rs.stderr.trim()}`);
      return;
    }
    own(w.pid);
    if (tableExists(table)) p.push(`the retry left table inet ${table}`);
    try {
      await allEchoed(peer, 15000);
    } catch (err) {
      p.push(`the connection after the retry: ${(err as Error).message.split('\n')[0]}`);
    }
    const v = await verify(w);
    if (v !== 'PASS') p.push(`workload check: ${v}`);
  } finally {
    peer.stop();
  }
}

describe('the network lock under faults', { skip, timeout: 240_000 }, () => {
  for (const phase of PHASES) {
    it(`SIGKILL at ${phase}: no rule left, the connection works both ways`, async () => {
      const p: Problems = [];
      await lockCell(p, phase, 'SIGKILL');
      matrix.record('checkpoint, SIGKILL', phase, p);
      expectOk(p);
    });
  }
  for (const phase of ['created', 'rebuilt'] as const) {
    it(`restore, SIGKILL at ${phase}: the lock stays, the retry restores the connection and removes it`, async () => {
      const p: Problems = [];
      await restoreCell(p, phase, 'SIGKILL');
      matrix.record('restore, SIGKILL', phase, p);
      expectOk(p);
    });
  }
  it('SIGTERM at dumped: the lock is let go with the tree', async () => {
    const p: Problems = [];
    await lockCell(p, 'dumped', 'SIGTERM');
    matrix.record('checkpoint, SIGTERM', 'dumped', p);
    expectOk(p);
  });
});
