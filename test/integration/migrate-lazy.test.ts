/**
 * Lazy pages (docs/migration.md, "Lazy pages"; src/restore/lazy.ts) end to end over loopback
 * TCP: the target lets the tree run before its anonymous memory is written and serves it
 * through userfaultfd from the image it holds (the pages pre-copy put there and the frozen
 * image's; with --no-pre-copy, the whole image, sent while the tree was stopped). The dirtier
 * workload (test/fixtures/workloads/dirtier.c) checks every page against a generation kept
 * elsewhere: a page served twice (an old copy over a newer write), lost or zero fails its check.
 */
import assert from 'node:assert/strict';
import { openSync, closeSync, fstatSync, readdirSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, WORKLOADS } from '../helpers/env.js';
import { alive, cleanup, own, procState, startWorkload, stubs, verify, waitFor } from '../helpers/processes.js';
import { exitOf, killFerries, leftovers, migrationDir, records, startDirtier, startFerry, startReceiver } from '../helpers/precopy-run.js';

const skip = needs('root', 'build');
after(() => { killFerries(); cleanup(); });

/** Whether any area of `pid` is registered with a userfaultfd for missing pages (VmFlags um). */
function missingRegistered(pid: number): boolean {
  return /^VmFlags:.* um( |$)/m.test(readFileSync(`/proc/${pid}/smaps`, 'utf8'));
}

describe('ferry migrate --lazy', { skip, timeout: 300_000 }, () => {
  const { workDir, config, key } = skip ? { workDir: '', config: '', key: '' } : migrationDir('ferry-lazy-');

  it('runs a process writing 10 MiB/s of its 64 MiB on the target before its memory is in: every page right, same PID', async () => {
    const w = await startDirtier(64, 10);
    const { r: recv, port } = await startReceiver(key, config);
    const mig = startFerry(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--lazy', '--json', '--config', config]);
    own(w.pid);
    assert.equal(await exitOf(mig, 'ferry migrate'), 0, mig.stderr());
    assert.equal(await exitOf(recv, 'ferry receive --once'), 0, recv.stderr());
    await w.exited;

    const recs = records(mig);
    assert.deepEqual(recs.filter((x) => x['phase'] !== 'round').map((x) => x['phase']), ['checkpoint', 'transfer', 'restore', 'filled', 'done']);
    const filled = recs.find((x) => x['phase'] === 'filled')!;
    assert.ok((filled['pages'] as number) >= (60 << 20) / 4096, `most of the 64 MiB served after the start: ${JSON.stringify(filled)}`);
    const done = recs.at(-1)!;
    const phases = done['phases'] as Record<string, unknown>;
    for (const k of ['checkpointMs', 'verifyMs', 'killMs', 'restoreMs']) assert.equal(typeof phases[k], 'number', k);
    const target = phases['target'] as Record<string, number>;
    for (const k of ['verifyMs', 'goToRunningMs', 'memoryMs', 'rebuildMs', 'letGoMs', 'runningForMs']) assert.equal(typeof target[k], 'number', `target ${k}`);
    // The downtime ends at the let-go there: the target's watch after it (20 ms) is not in it.
    assert.ok(target['runningForMs']! >= 20, `the target ran the tree ${target['runningForMs']} ms before it said so`);
    const parts = (['checkpointMs', 'verifyMs', 'killMs', 'restoreMs'] as const).reduce((s, k) => s + (phases[k] as number), 0);
    assert.ok(Math.abs(parts - (done['downtimeMs'] as number)) < 1, `the phases make the downtime: ${parts} against ${String(done['downtimeMs'])}`);
    const got = records(recv);
    assert.deepEqual(got.map((x) => x['phase']), ['listen', 'transfer', 'restore', 'filled', 'done']);
    process.stdout.write(`# lazy 64 MiB at 10 MiB/s: downtime ${String(done['downtimeMs'])} ms (${JSON.stringify(phases)}), total ${String(done['totalMs'])} ms, `
      + `${String(filled['pages'])} pages served, ${String(filled['faults'])} on touch, in ${String(filled['fillMs'])} ms\n`);

    assert.ok(alive(w.pid), 'the same PID runs on the target');
    const st = procState(w.pid);
    assert.equal(st.tracer, 0);
    assert.equal(missingRegistered(w.pid), false, 'no area is left registered once every page is in');
    const n = w.ticks().length;
    await waitFor('ticks after the migration', () => w.ticks().length >= n + 2);
    assert.equal(await verify(w), 'PASS');
    assert.deepEqual(leftovers(workDir), [], 'nothing left in image.work_dir');
    process.kill(w.pid, 'SIGKILL');
  });

  it('--lazy --no-pre-copy: the whole image crosses while the tree is stopped, then it runs before its memory is written', async () => {
    const w = await startDirtier(64, 10);
    const { r: recv, port } = await startReceiver(key, config);
    const mig = startFerry(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--lazy', '--no-pre-copy', '--json', '--config', config]);
    own(w.pid);
    assert.equal(await exitOf(mig, 'ferry migrate'), 0, mig.stderr());
    assert.equal(await exitOf(recv, 'ferry receive --once'), 0, recv.stderr());
    await w.exited;
    const recs = records(mig);
    assert.deepEqual(recs.map((x) => x['phase']), ['checkpoint', 'transfer', 'restore', 'filled', 'done'], 'no pre-copy round');
    assert.ok((recs[0]!['imageBytes'] as number) >= 64 << 20, 'every page crossed in the frozen image');
    const filled = recs.find((x) => x['phase'] === 'filled')!;
    assert.ok((filled['pages'] as number) >= (60 << 20) / 4096, `most of the 64 MiB served after the start: ${JSON.stringify(filled)}`);
    const done = recs.at(-1)!;
    assert.equal(done['rounds'], 0);
    const target = (done['phases'] as Record<string, unknown>)['target'] as Record<string, number>;
    process.stdout.write(`# lazy --no-pre-copy 64 MiB: downtime ${String(done['downtimeMs'])} ms (target memory ${String(target['memoryMs'])} ms), `
      + `${String(filled['pages'])} pages served, ${String(filled['faults'])} on touch, in ${String(filled['fillMs'])} ms\n`);
    assert.ok(alive(w.pid), 'the same PID runs on the target');
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(missingRegistered(w.pid), false, 'no area is left registered once every page is in');
    const n = w.ticks().length;
    await waitFor('ticks after the migration', () => w.ticks().length >= n + 2);
    assert.equal(await verify(w), 'PASS');
    assert.deepEqual(leftovers(workDir), []);
    process.kill(w.pid, 'SIGKILL');
  });

  /** Migrates `pids` (root first; a child it is forking may come along) with --lazy, the background fill held back `holdMs`; returns the 'filled' record. */
  async function lazyMigrate(w: { pid: number; exited: Promise<unknown> }, pids: number[], holdMs: number): Promise<Record<string, unknown>> {
    const recv = startFerry(['receive', '--listen', '127.0.0.1:0', '--key', key, '--json', '--once', '--max-creds', 'root', '--config', config], `lazy+${holdMs}`);
    await waitFor('the receiver to listen', () => records(recv).some((x) => x['phase'] === 'listen') || recv.child.exitCode !== null);
    const port = records(recv).find((x) => x['phase'] === 'listen')!['port'] as number;
    const mig = startFerry(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--lazy', '--json', '--config', config]);
    for (const pid of pids) own(pid);
    assert.equal(await exitOf(mig, 'ferry migrate'), 0, mig.stderr());
    assert.equal(await exitOf(recv, 'ferry receive --once'), 0, recv.stderr());
    await w.exited;
    const restored = records(mig).find((x) => x['phase'] === 'restore')!['pids'] as number[];
    for (const pid of pids) assert.ok(restored.includes(pid), `pid ${pid} restored: ${JSON.stringify(restored)}`);
    for (const pid of pids) assert.equal(missingRegistered(pid), false, `pid ${pid}: no area left registered`);
    return records(mig).find((x) => x['phase'] === 'filled')!;
  }

  it('serves the pages a running process touches while the background fill is held back', async () => {
    const w = await startDirtier(32, 20);
    const filled = await lazyMigrate(w, [w.pid], 1500);
    assert.ok((filled['faults'] as number) > 0, `faults were served: ${JSON.stringify(filled)}`);
    const n = w.ticks().length;
    await waitFor('ticks after the migration', () => w.ticks().length >= n + 2);
    assert.equal(await verify(w), 'PASS');
    assert.deepEqual(leftovers(workDir), []);
    process.kill(w.pid, 'SIGKILL');
  });

  for (const [mode, title] of [
    ['churn', 'follows a process that maps, moves (mremap) and unmaps its areas while pages are missing'],
    ['discard', 'a page dropped (MADV_DONTNEED) after its round is served as zeros, not as the copy the rounds sent'],
  ] as const) {
    it(title, async () => {
      const w = await startDirtier(mode === 'churn' ? 16 : 32, 10, mode);
      await lazyMigrate(w, [w.pid], 1500);
      const n = w.ticks().length;
      await waitFor('ticks after the migration', () => w.ticks().length >= n + 2);
      assert.equal(await verify(w), 'PASS');
      assert.deepEqual(leftovers(workDir), []);
      process.kill(w.pid, 'SIGKILL');
    });
  }

  it('gives a child the process forks while pages are missing every page too', async () => {
    // It writes nothing itself: its pages stay missing until the fill, held back 1.5 s, while
    // the children it forks (on SIGUSR2, every 100 ms from the moment it runs there) read
    // every one of them.
    const w = await startDirtier(16, 0, 'fork');
    const migrated = lazyMigrate(w, [w.pid], 1500);
    let over = false;
    void migrated.finally(() => { over = true; });
    await w.exited; // killed on the source: the restore is about to let it go on the target
    let forks = 0;
    while (!over) {
      if (isDirtier(w.pid)) { // restored there (not another process that took the free PID meanwhile)
        process.kill(w.pid, 'SIGUSR2');
        forks++;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    const filled = await migrated;
    assert.ok((filled['fillMs'] as number) >= 1000 && forks >= 5, `it forked (${forks}) while pages were missing: ${JSON.stringify(filled)}`);
    assert.equal(await verify(w), 'PASS');
    assert.deepEqual(leftovers(workDir), []);
    process.kill(w.pid, 'SIGKILL');
  });

  it('moves a tree of four processes whose memory is shared (memcheck tree): written before the start, nothing left to serve', async () => {
    const w = await startWorkload(join(WORKLOADS, 'memcheck'), ['16', 'tree']);
    const kids = (/^children (\d+) (\d+) (\d+)$/m.exec(w.text()) ?? []).slice(1).map(Number);
    assert.equal(kids.length, 3, w.text());
    await lazyMigrate(w, [w.pid, ...kids], 1000);
    assert.equal(await verify(w), 'PASS');
    assert.deepEqual(leftovers(workDir), []);
    for (const pid of [w.pid, ...kids]) process.kill(pid, 'SIGKILL');
  });

  it('refuses a page corrupted in the target\'s store: the tree there is killed, and runs here again', async () => {
    const w = await startDirtier(32, 10);
    const recv = startFerry(['receive', '--listen', '127.0.0.1:0', '--key', key, '--json', '--once', '--max-creds', 'root', '--config', config], 'verified+3000');
    await waitFor('the receiver to listen', () => records(recv).some((x) => x['phase'] === 'listen') || recv.child.exitCode !== null);
    const port = records(recv).find((x) => x['phase'] === 'listen')!['port'] as number;
    const mig = startFerry(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--lazy', '--json', '--config', config]);
    own(w.pid);
    await waitFor('the target to hold the image', () => /paused at verified/.test(recv.stderr()), 90_000);
    // 8 bytes of every page of the store, as a disk or a bug in the store would have it: the
    // spooled image leaves the pages the rounds sent as holes, read from the store (precopy.ts).
    const spool = readdirSync(workDir).find((n) => n.startsWith('.ferry-receive-'))!;
    corruptPages(join(workDir, spool, 'precopy.pages'));
    assert.equal(await exitOf(mig, 'ferry migrate'), 1, mig.stderr());
    assert.equal(await exitOf(recv, 'ferry receive --once'), 1, recv.stderr());
    assert.match(mig.stderr(), /is corrupt: entry tasks\/\d+\/pages\S* chunk \d+ has sha256/);
    assert.match(mig.stderr(), /restored here instead/);
    assert.ok(alive(w.pid), 'the same PID runs here again');
    const n = w.ticks().length;
    await waitFor('ticks after the migration', () => w.ticks().length >= n + 2);
    assert.equal(await verify(w), 'PASS');
    assert.deepEqual(leftovers(workDir), []);
    assert.deepEqual(stubs(), []);
    process.kill(w.pid, 'SIGKILL');
  });
});

/** Whether `pid` is the dirtier workload (its PID is free for a moment between the kill and the restore). */
function isDirtier(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'dirtier';
  } catch {
    return false;
  }
}

/** Writes 8 wrong bytes into every page of the file `path`. */
function corruptPages(path: string): void {
  const fd = openSync(path, 'r+');
  try {
    const bad = Buffer.alloc(8, 0xa5);
    for (let at = 0; at < fstatSync(fd).size; at += 4096) writeSync(fd, bad, 0, 8, at + 64);
  } finally {
    closeSync(fd);
  }
}

