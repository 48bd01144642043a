/**
 * Pre-copy migration (docs/migration.md, "Pre-copy") end to end over loopback TCP, on the
 * dirtier workload (test/fixtures/workloads/dirtier.c), which rewrites its memory all the time
 * and checks every page against a generation kept elsewhere: a page sent in an early round and
 * changed after, and not sent again, fails its check.
 */
import assert from 'node:assert/strict';
import { closeSync, fstatSync, openSync, readdirSync, readFileSync, readlinkSync, writeSync } from 'node:fs';
import { after, describe, it } from 'node:test';
import { join } from 'node:path';
import { needs, WORKLOADS } from '../helpers/env.js';
import { alive, askVerdict, cleanup, disown, own, ownTree, procState, startWorkload, stubs, verify, waitFor, type Workload } from '../helpers/processes.js';
import {
  exitOf, killFerries, leftovers, migrationDir, pidFromNs, records, startDirtier, startFerry, startReceiver, startReceiverInPidns, writeTracked,
} from '../helpers/precopy-run.js';

const skip = needs('root', 'build');
after(() => { killFerries(); cleanup(); });

/** Writes 8 bytes of `byte` at `at` into every page of the receiver's page store `store`. */
function corruptStore(store: string, byte: number, at: number): void {
  const fd = openSync(store, 'r+');
  try {
    const bad = Buffer.alloc(8, byte);
    for (let page = 0; page < fstatSync(fd).size; page += 4096) writeSync(fd, bad, 0, 8, page + at);
  } finally {
    closeSync(fd);
  }
}

describe('ferry migrate with pre-copy', { skip, timeout: 300_000 }, () => {
  const { workDir, config, key } = skip ? { workDir: '', config: '', key: '' } : migrationDir('ferry-precopy-');

  /**
   * Migrates workload `w` (and `also`, its children) over loopback with `extra` options;
   * asserts that both sides exit 0 and waits for the original to be reaped here. Returns the
   * sender's and the receiver's records.
   */
  async function migrated(w: Workload, extra: string[] = [], also: number[] = []): Promise<{ recs: Array<Record<string, unknown>>; got: Array<Record<string, unknown>> }> {
    const { r: recv, port } = await startReceiver(key, config);
    const mig = startFerry(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--json', ...extra, '--config', config]);
    for (const pid of [w.pid, ...also]) own(pid);
    assert.equal(await exitOf(mig, 'ferry migrate'), 0, mig.stderr());
    assert.equal(await exitOf(recv, 'ferry receive --once'), 0, recv.stderr());
    await w.exited; // the source was killed and reaped here
    return { recs: records(mig), got: records(recv) };
  }

  it('moves a process that writes 10 MiB/s of its 64 MiB: rounds shrink, every page comes back right, same PID', async () => {
    const w = await startDirtier(64, 10);
    const { recs, got } = await migrated(w);

    const rounds = recs.filter((x) => x['phase'] === 'round');
    assert.deepEqual(recs.filter((x) => x['phase'] !== 'round').map((x) => x['phase']), ['checkpoint', 'transfer', 'restore', 'done']);
    assert.ok(rounds.length >= 2, `at least two rounds: ${JSON.stringify(rounds)}`);
    rounds.forEach((r, i) => {
      assert.equal(r['round'], i + 1);
      for (const k of ['pages', 'bytes', 'dirtyRate', 'ms']) assert.equal(typeof r[k], 'number', k);
      assert.equal(r['bytes'], (r['pages'] as number) * 4096);
    });
    const first = rounds[0]!['bytes'] as number;
    assert.ok(first >= 64 << 20, `the first round sends all the touched memory (${first})`);
    for (const r of rounds.slice(1)) assert.ok((r['bytes'] as number) < first / 4, `a later round is smaller: ${JSON.stringify(r)}`);
    const done = recs.at(-1)!;
    assert.equal(done['rounds'], rounds.length);
    const image = recs[rounds.length]!['imageBytes'] as number;
    // The frozen image named most of its pages instead of sending them again.
    assert.ok((done['refBytes'] as number) > image / 2, `refBytes ${String(done['refBytes'])} of an image of ${image}`);
    assert.equal(got.find((x) => x['phase'] === 'transfer')!['refBytes'], done['refBytes']);
    // While frozen, the checkpoint read only the pages the target did not hold: the others it
    // named by the digests the rounds took (the target verified them as it wrote them).
    const cp = recs.find((x) => x['phase'] === 'checkpoint')!;
    const read = cp['pagesRead'] as number;
    const held = cp['pagesHeld'] as number;
    assert.equal(held * 4096, done['refBytes'], `every page named by reference was left unread: ${JSON.stringify(cp)}`);
    assert.ok(held >= (48 << 20) / 4096 && read < held / 4, `few pages read while frozen: ${JSON.stringify(cp)}`);
    // The target placed the root's held pages as the rounds came (staged memory) and restore
    // left them in place: verified by the digests the store took, not written again.
    const restored = got.find((x) => x['phase'] === 'restore')!;
    assert.ok((restored['stagedPages'] as number) >= (48 << 20) / 4096, `most pages were in place at restore: ${JSON.stringify(restored)}`);
    process.stdout.write(`# pre-copy 64 MiB at 10 MiB/s: rounds ${rounds.map((r) => r['bytes']).join(', ')} bytes; downtime ${String(done['downtimeMs'])} ms, total ${String(done['totalMs'])} ms\n`);

    assert.ok(alive(w.pid), 'the same PID runs on the target');
    const st = procState(w.pid);
    assert.equal(st.tracer, 0);
    assert.notEqual(st.ppid, process.pid, 'a restored process, not the original');
    assert.equal(writeTracked(w.pid), false, 'no area of the restored process is write-tracked');
    const n = w.ticks().length;
    await waitFor('ticks after the migration', () => w.ticks().length >= n + 2);
    assert.equal(await verify(w), 'PASS');
    assert.deepEqual(leftovers(workDir), [], 'nothing left in image.work_dir');
    process.kill(w.pid, 'SIGKILL');
  });

  it('moves a process that writes 50 MiB/s of its 64 MiB: the rounds end when they stop shrinking; every page right', async () => {
    const w = await startDirtier(64, 50);
    const { recs } = await migrated(w);
    const rounds = recs.filter((x) => x['phase'] === 'round');
    assert.ok(rounds.length >= 2 && rounds.length <= 8, `between two rounds and the limit: ${rounds.length}`);
    const last = rounds.at(-1)!['bytes'] as number;
    // Rounds end at 1 MiB, at a round that shrinks less than a tenth, or at the limit.
    const prev = rounds.at(-2)!['bytes'] as number;
    assert.ok(last <= 1 << 20 || last > prev * 0.9 || rounds.length === 8, `why the rounds ended: ${JSON.stringify(rounds)}`);
    const done = recs.at(-1)!;
    process.stdout.write(`# pre-copy 64 MiB at 50 MiB/s: ${rounds.length} rounds (${rounds.map((r) => r['bytes']).join(', ')} bytes); `
      + `downtime ${String(done['downtimeMs'])} ms, total ${String(done['totalMs'])} ms\n`);
    assert.ok(alive(w.pid), 'the same PID runs on the target');
    assert.equal(procState(w.pid).tracer, 0);
    const n = w.ticks().length;
    await waitFor('ticks after the migration', () => w.ticks().length >= n + 2);
    assert.equal(await verify(w), 'PASS');
    assert.deepEqual(leftovers(workDir), []);
    process.kill(w.pid, 'SIGKILL');
  });

  // The sender's last look (pages sent after the last catch-up, not waited for) drops the
  // digests of the staged chunks its pages fall in; the target takes them again before the
  // image (lateChunks), so only chunks holding a page the frozen image read are checked page
  // by page: each such page spoils one chunk at most.
  it('takes again, before the image, the chunk digests the pages of the last look dropped', async () => {
    const w = await startDirtier(128, 10);
    const { recs, got } = await migrated(w);
    const transfer = got.find((x) => x['phase'] === 'transfer')!;
    const restored = got.find((x) => x['phase'] === 'restore')!;
    const read = recs.find((x) => x['phase'] === 'checkpoint')!['pagesRead'] as number;
    assert.ok((transfer['lateChunks'] as number) > 0, `the last look's pages dropped chunk digests, taken again: ${JSON.stringify(transfer)}`);
    assert.ok((restored['stagedChunks'] as number) + read >= 128, `of the 128 chunks of the area, only those of the ${read} pages read frozen are checked page by page: ${JSON.stringify(restored)}`);
    process.stdout.write(`# pre-copy 128 MiB at 10 MiB/s: ${String(transfer['lateChunks'])} chunk digests taken again, ${String(restored['stagedChunks'])} chunks checked by them, ${read} pages read frozen\n`);
    assert.equal(await verify(w), 'PASS');
    assert.deepEqual(leftovers(workDir), []);
    process.kill(w.pid, 'SIGKILL');
  });

  it('moves a process that maps, moves and unmaps areas all through pre-copy', async () => {
    const w = await startDirtier(16, 10, 'churn');
    const { recs } = await migrated(w, ['--max-rounds', '12']);
    assert.ok(recs.filter((x) => x['phase'] === 'round').length >= 2);
    assert.ok(alive(w.pid));
    const n = w.ticks().length;
    await waitFor('ticks after the migration', () => w.ticks().length >= n + 2);
    assert.equal(await verify(w), 'PASS');
    assert.deepEqual(leftovers(workDir), []);
    process.kill(w.pid, 'SIGKILL');
  });

  // The target takes the digests of the chunks it expects (the sender's `chunks`) at the last
  // catch-up; a chunk wholly in place and unchanged since is checked by that digest alone.
  it('checks the chunks of a slow writer that stayed in place by the digests the target took before the freeze', async () => {
    const w = await startDirtier(32, 0.5);
    const { recs, got } = await migrated(w);
    const restored = got.find((x) => x['phase'] === 'restore')!;
    assert.ok((restored['stagedPages'] as number) >= (24 << 20) / 4096, `most pages were in place at restore: ${JSON.stringify(restored)}`);
    // 32 chunks of 1 MiB; the writer's 128 pages a second between the last catch-up and the
    // freeze change a few.
    assert.ok((restored['stagedChunks'] as number) > 0 && (restored['stagedChunks'] as number) <= 32, `chunks checked by their digest taken before: ${JSON.stringify(restored)}`);
    process.stdout.write(`# pre-copy 32 MiB at 0.5 MiB/s: ${String(restored['stagedChunks'])} of 32 chunks checked by the digest taken before the freeze; downtime ${String(recs.at(-1)!['downtimeMs'])} ms\n`);
    assert.equal(await verify(w), 'PASS');
    assert.deepEqual(leftovers(workDir), []);
    process.kill(w.pid, 'SIGKILL');
  });

  it('moves a process whose memory is two adjacent areas the kernel keeps apart (staged: one area at the target)', async () => {
    const w = await startDirtier(32, 10, 'adjacent');
    const at = (pid: number): number => readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter((l) => / rw-p 00000000 00:00 0 +$/.test(l)).length;
    const before = at(w.pid);
    const { got } = await migrated(w);
    const restored = got.find((x) => x['phase'] === 'restore')!;
    assert.ok((restored['stagedPages'] as number) >= (24 << 20) / 4096, `most pages were in place at restore: ${JSON.stringify(restored)}`);
    assert.ok(at(w.pid) <= before, 'no more anonymous areas than before');
    assert.equal(await verify(w), 'PASS');
    process.kill(w.pid, 'SIGKILL');
  });

  /**
   * Migrates `w` (and `also`, its children) to a --once receiver in a pid namespace of its own
   * (another node, as far as pids go: the same pid there is another pid here); asserts that
   * both sides exit 0. Returns the receiver's records and `pidThere`, this namespace's pid of
   * a pid of the image there. Ends that namespace, with what runs in it, when `body` is done.
   */
  async function intoPidns(w: Workload, also: number[], body: (got: Array<Record<string, unknown>>, pidThere: (pid: number) => number) => Promise<void>): Promise<void> {
    const { r: recv, port } = await startReceiverInPidns(key, config);
    try {
      const mig = startFerry(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--json', '--config', config]);
      for (const pid of [w.pid, ...also]) own(pid);
      assert.equal(await exitOf(mig, 'ferry migrate'), 0, mig.stderr());
      await waitFor('the receiver to exit', () => recv.ferryExit() !== undefined, 60_000);
      assert.equal(recv.ferryExit(), 0, recv.stderr());
      await w.exited;
      disown(w.pid); // reaped: the process runs on as another pid here
      for (const pid of also) {
        await waitFor(`the source's pid ${pid} to be reaped here`, () => !alive(pid), 60_000);
        disown(pid);
      }
      const done = records(mig).at(-1)!;
      process.stdout.write(`# pre-copy into a pid namespace: downtime ${String(done['downtimeMs'])} ms, ${JSON.stringify(done['phases'])}\n`);
      // The target restores the PIDs in a namespace where the source holds none (its welcome
      // names it): the kill did not wait for the source's processes to be reaped.
      assert.equal((done['phases'] as Record<string, unknown>)['reapWaitMs'], undefined, JSON.stringify(done['phases']));
      await body(records(recv), (pid) => {
        const there = pidFromNs(recv.init(), pid);
        assert.ok(there !== undefined, `pid ${pid} runs in the receiver's pid namespace`);
        assert.equal(procState(there).tracer, 0);
        return there;
      });
      assert.deepEqual(leftovers(workDir), []);
    } finally {
      recv.child.kill('SIGKILL'); // its namespace goes, with the restored processes
    }
  }

  // On another node the root's pid is free while the rounds come: the staging stub takes it and
  // becomes the root itself (migrate/staging.ts), no fork.
  it('moves a process to a receiver in a pid namespace of its own: the staging stub becomes the root, every page right', async () => {
    const w = await startDirtier(64, 10);
    await intoPidns(w, [], async (got, pidThere) => {
      const restored = got.find((x) => x['phase'] === 'restore')!;
      assert.equal(restored['stagedRoot'], 'stub', `the stub became the root: ${JSON.stringify(restored)}`);
      assert.ok((restored['stagedPages'] as number) >= (48 << 20) / 4096, `most pages were in place at restore: ${JSON.stringify(restored)}`);
      const pid = pidThere(w.pid);
      assert.equal(writeTracked(pid), false);
      const n = w.ticks().length;
      await waitFor('ticks after the migration', () => w.ticks().length >= n + 2);
      assert.equal(await askVerdict(pid, w.text), 'PASS');
    });
  });

  // A tree is not staged: the stub that took the root's pid gives it back for the root spawned.
  it('moves a tree of four processes to a receiver in a pid namespace of its own (nothing staged: the stub gives the pid back)', async () => {
    const w = await startWorkload(join(WORKLOADS, 'memcheck'), ['16', 'tree']);
    const kids = ownTree(w).slice(1);
    assert.equal(kids.length, 3, w.text());
    await intoPidns(w, kids, async (got, pidThere) => {
      const restored = got.find((x) => x['phase'] === 'restore')!;
      assert.equal(restored['stagedRoot'], undefined, JSON.stringify(restored));
      assert.deepEqual((restored['pids'] as number[]).sort(), [w.pid, ...kids].sort());
      for (const pid of kids) pidThere(pid);
      assert.equal(await askVerdict(pidThere(w.pid), w.text), 'PASS');
    });
  });

  // A page sent in a round and dropped since reads as zeros: its held copy must not be named
  // (dump/dirty.ts `dropped`, and the markers the tracking leaves, which are no page).
  it('moves a process that drops pages as it writes (MADV_DONTNEED): a page dropped after its round comes back zero', async () => {
    const w = await startDirtier(32, 10, 'discard');
    await migrated(w);
    assert.equal(await verify(w), 'PASS');
    process.kill(w.pid, 'SIGKILL');
  });

  it('moves a process whose memory is in transparent huge pages', async () => {
    const w = await startDirtier(32, 10, 'thp');
    const huge = Number(/^AnonHugePages:\s+(\d+) kB/m.exec(readFileSync(`/proc/${w.pid}/smaps_rollup`, 'utf8'))?.[1] ?? 0);
    if (huge === 0) process.stdout.write('# no transparent huge pages were given (THP off?): the case runs on small pages\n');
    const { recs } = await migrated(w);
    assert.ok(recs.filter((x) => x['phase'] === 'round').length >= 2);
    const n = w.ticks().length;
    await waitFor('ticks after the migration', () => w.ticks().length >= n + 2);
    assert.equal(await verify(w), 'PASS');
    process.kill(w.pid, 'SIGKILL');
  });

  // Guard pages are markers the first tracking scan reports written: a round must pass them
  // over (a read of one fails with EIO) and the frozen image must record them.
  it('moves a parent and two children with guard pages (MADV_GUARD_INSTALL): each comes back with its own', async () => {
    const w = await startWorkload(join(WORKLOADS, 'guards'), []);
    const kids = readFileSync(`/proc/${w.pid}/task/${w.pid}/children`, 'utf8').split(/\s+/).filter(Boolean).map(Number);
    for (const pid of kids) own(pid); // killed by cleanup, should the test fail
    assert.equal(kids.length, 2, w.text());
    const { recs } = await migrated(w, [], kids);
    assert.ok(recs.filter((x) => x['phase'] === 'round').length >= 1);
    assert.equal(await verify(w), 'PASS'); // and both exit
  });

  it('moves a tree of four processes that share memory and keep rewriting theirs (memcheck tree)', async () => {
    const w = await startWorkload(join(WORKLOADS, 'memcheck'), ['16', 'tree']);
    const kids = (/^children (\d+) (\d+) (\d+)$/m.exec(w.text()) ?? []).slice(1).map(Number);
    assert.equal(kids.length, 3, w.text());
    const { recs } = await migrated(w, [], kids);
    assert.ok(recs.filter((x) => x['phase'] === 'round').length >= 1);
    assert.deepEqual((recs.find((x) => x['phase'] === 'restore')!['pids'] as number[]).sort(), [w.pid, ...kids].sort());
    assert.ok((recs.at(-1)!['refBytes'] as number) > 0, 'the frozen image named pages the rounds had sent');
    assert.equal(await verify(w), 'PASS');
    assert.deepEqual(leftovers(workDir), []);
    for (const pid of [w.pid, ...kids]) process.kill(pid, 'SIGKILL');
  });

  it('a held page corrupted in the store of the target fails its restore: the source runs on (restored from its copy)', async () => {
    const w = await startDirtier(64, 1);
    const { r: recv, port } = await startReceiver(key, config);
    const mig = startFerry(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--json', '--config', config], 'precopy+4000');
    own(w.pid);
    await waitFor('the sender to pause after round 1', () => mig.stderr().includes('ferry-test: paused at precopy'));
    // Every page the target holds gets 8 wrong bytes: those not sent again are named by
    // reference in the frozen image and come from this store.
    const spool = readdirSync(workDir).find((n) => n.startsWith('.ferry-receive-'));
    assert.ok(spool !== undefined, `the receiver's spool in ${workDir}`);
    const store = join(workDir, spool, 'precopy.pages');
    corruptStore(store, 0xa5, 64);
    assert.equal(await exitOf(mig, 'ferry migrate'), 1, mig.stderr());
    assert.equal(await exitOf(recv, 'ferry receive --once'), 1, recv.stderr());
    assert.match(mig.stderr(), /is corrupt: entry tasks\/\d+\/pages\.bin chunk \d+ has sha256/, mig.stderr());
    // Refused before the kill (the original runs on), or after it (restored here from the copy).
    assert.ok(alive(w.pid), 'pid runs on here');
    assert.equal(procState(w.pid).tracer, 0);
    const n = w.ticks().length;
    await waitFor('the source to write on', () => w.ticks().length >= n + 2);
    assert.equal(await verify(w), 'PASS');
    assert.deepEqual(leftovers(workDir), []);
    assert.deepEqual(stubs(), []);
    process.stdout.write(`# corrupted store: ${mig.stderr().trim()}\n`);
    process.kill(w.pid, 'SIGKILL');
  });

  // The target takes each page's digest as it arrives and restore uses it instead of hashing
  // the page again, as long as the store's ctime says nothing else wrote it since: a page
  // altered after the last round (nothing of ferry's writes the store after it) is caught all
  // the same, as the restore writes memory, or as a lazy restore serves it.
  for (const lazy of [false, true]) {
    it(`a held page corrupted in the store after the last round fails its restore${lazy ? ' (--lazy: as it is served)' : ''}: the source's copy is restored`, async () => {
      const w = await startDirtier(64, 1);
      // The target pauses once the image is verified (no page read yet), or once the tree runs
      // with its memory still to serve.
      const { r: recv, port } = await startReceiver(key, config, lazy ? 'lazy+4000' : 'verified+4000');
      const mig = startFerry(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--json', ...(lazy ? ['--lazy'] : []), '--config', config]);
      own(w.pid);
      await waitFor('the receiver to pause', () => recv.stderr().includes('ferry-test: paused at'), 60_000);
      const spool = readdirSync(workDir).find((n) => n.startsWith('.ferry-receive-'));
      // A lazy restore's spool is gone from the directory (it reads the open files): the store
      // through the receiver's descriptor.
      const pid = /paused at \w+ \(pid (\d+)\)/.exec(recv.stderr())![1]!;
      const store = spool !== undefined ? join(workDir, spool, 'precopy.pages')
        : readdirSync(`/proc/${pid}/fd`).map((f) => `/proc/${pid}/fd/${f}`).find((f) => { try { return readlinkSync(f).includes('precopy.pages'); } catch { return false; } });
      assert.ok(store !== undefined, `the receiver's page store: ${recv.stderr()}`);
      corruptStore(store, 0x5a, 128);
      assert.equal(await exitOf(mig, 'ferry migrate'), 1, mig.stderr());
      assert.equal(await exitOf(recv, 'ferry receive --once'), 1, recv.stderr());
      assert.match(mig.stderr(), /is corrupt: entry tasks\/\d+\/pages\.bin chunk \d+ has sha256/, mig.stderr());
      assert.ok(alive(w.pid), 'pid runs again here, restored from the copy');
      assert.equal(procState(w.pid).tracer, 0);
      const n = w.ticks().length;
      await waitFor('the source to write on', () => w.ticks().length >= n + 2);
      assert.equal(await verify(w), 'PASS');
      assert.deepEqual(leftovers(workDir), []);
      assert.deepEqual(stubs(), []);
      process.stdout.write(`# store corrupted after the rounds${lazy ? ' (--lazy)' : ''}: ${mig.stderr().trim()}\n`);
      process.kill(w.pid, 'SIGKILL');
    });
  }

  it('refuses a process that uses userfaultfd itself, which runs on unharmed (its own userfaultfd too)', async () => {
    const w = await startDirtier(8, 5, 'uffd');
    const { r: recv, port } = await startReceiver(key, config);
    const mig = startFerry(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--config', config]);
    assert.equal(await exitOf(mig, 'ferry migrate'), 1);
    assert.match(mig.stderr(), new RegExp(`^ferry migrate: pid ${w.pid} uses userfaultfd itself \\(fd \\d+\\), which pre-copy's dirty tracking would conflict with: migrate it with --no-pre-copy\n$`));
    assert.equal(await exitOf(recv, 'ferry receive --once'), 1);
    const st = procState(w.pid);
    assert.equal(st.tracer, 0);
    assert.equal(st.ppid, process.pid, 'the original process');
    const n = w.ticks().length;
    await waitFor('the source to write on', () => w.ticks().length >= n + 2);
    assert.equal(await verify(w), 'PASS');
    assert.deepEqual(leftovers(workDir), []);
    assert.deepEqual(stubs(), []);
  });

  it('--no-pre-copy: stop and copy, no rounds', async () => {
    const w = await startDirtier(8, 5);
    const { recs } = await migrated(w, ['--no-pre-copy']);
    assert.deepEqual(recs.map((x) => x['phase']), ['checkpoint', 'transfer', 'restore', 'done']);
    assert.equal(recs[3]!['rounds'], 0);
    assert.equal(await verify(w), 'PASS');
    process.kill(w.pid, 'SIGKILL');
  });
});
