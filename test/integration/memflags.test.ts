/**
 * Memory flags through bin/ferry: build/workloads/memflags holds areas locked with mlock and
 * mlock2(MLOCK_ONFAULT), areas with each madvise() flag the kernel shows in VmFlags, a
 * shared mapping of a read-only file partly mprotect()ed to PROT_NONE, a shared PROT_READ
 * mapping of a file opened read-write, and PR_SET_THP_DISABLE (also with
 * PR_THP_DISABLE_EXCEPT_ADVISED, which /proc shows nowhere: THP_enabled reads 1); after restore it compares each
 * area's permissions and VmFlags with what they were, then makes the read-write file's
 * mapping writable and writes the file through it, and sees the read-only one refuse that.
 * Locked PROT_NONE areas (build/workloads/mlockfuture current|guarded: a thread stack's guard
 * page under mlockall(MCL_CURRENT); a locked page made PROT_NONE) come back locked.
 * And io_setup(2) contexts (build/workloads/aioring): their rings back at their addresses
 * with the events the process had not reaped.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { readFileSync } from 'node:fs';
import type { TaskRecord, VmaRecord } from '../../src/image/records.js';
import { needs, needsKernel, WORKLOADS } from '../helpers/env.js';
import { editImage, json } from '../helpers/images.js';
import { exitOf, killFerries, migrationDir, records, startFerry, startReceiver } from '../helpers/precopy-run.js';
import { checkpointFreed, checkpointTreeFreed, cleanup, cycleThrough, ferry, own, ownTree, procState, refuseEdited, startWorkload, verify } from '../helpers/processes.js';

const skip = needs('root', 'build');
after(() => { killFerries(); cleanup(); });

const MEMFLAGS = join(WORKLOADS, 'memflags');
const MLOCKFUTURE = join(WORKLOADS, 'mlockfuture');
/** PR_THP_DISABLE_EXCEPT_ADVISED came with Linux 6.18. */
const exceptAdvised = needsKernel(6, 18, 'PR_THP_DISABLE_EXCEPT_ADVISED');

describe('memory flags', { skip, timeout: 120_000 }, () => {
  it('locks, madvise flags, protections, may-write of shared file mappings and THP_DISABLE come back as they were', async () => {
    const w = await startWorkload(MEMFLAGS, ['DIR']);
    const image = join(w.dir, 'memflags.tar');
    await checkpointFreed(w, image);
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.equal(await verify(w), 'PASS');
  });

  it('--leave-running leaves them as they were', async () => {
    const w = await startWorkload(MEMFLAGS, ['DIR']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS');
  });

  it('THP_DISABLE with PR_THP_DISABLE_EXCEPT_ADVISED comes back with its flag, also left running; an edited image is refused', { skip: exceptAdvised }, async () => {
    const w = await startWorkload(MEMFLAGS, ['DIR', 'except-advised']);
    assert.match(readFileSync(`/proc/${w.pid}/status`, 'utf8'), /^THP_enabled:\s+1$/m, '/proc shows huge pages on: only prctl tells');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    const image = join(w.dir, 'ea.tar');
    await checkpointFreed(w, image);
    const seen: unknown[] = [];
    const edited = join(w.dir, 'edited.tar');
    await editImage(image, edited, { [`tasks/${w.pid}/task.json`]: json<TaskRecord>((t) => {
      seen.push(t.thpDisabled, t.thpExceptAdvised);
      delete t.thpDisabled;
    }) });
    assert.deepEqual(seen, [true, true]);
    const bad = ferry(['restore', '--image', edited]);
    assert.equal(bad.code, 1, bad.stderr);
    assert.match(bad.stderr, /thpExceptAdvised is there but thpDisabled is not/);
    assert.equal(bad.stderr.trimEnd().split('\n').length, 1, 'one line');
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.equal(await verify(w), 'PASS');
  });
});

describe('mlockall(MCL_FUTURE) and grows-down areas', { skip, timeout: 120_000 }, () => {
  for (const mode of ['', 'onfault']) {
    const what = mode === '' ? 'MCL_FUTURE' : 'MCL_FUTURE | MCL_ONFAULT';
    it(`${what}: new mappings are locked after restore; a MAP_GROWSDOWN area keeps its flag, guard gap and growth`, async () => {
      const w = await startWorkload(MLOCKFUTURE, mode === '' ? [] : [mode]);
      const image = join(w.dir, 'mlock.tar');
      await checkpointFreed(w, image);
      const rs = ferry(['restore', '--image', image]);
      assert.equal(rs.code, 0, rs.stderr);
      own(w.pid);
      assert.equal(await verify(w), 'PASS', w.text());
    });

    it(`${what}: --leave-running leaves them as they were`, async () => {
      const w = await startWorkload(MLOCKFUTURE, mode === '' ? [] : [mode]);
      const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
      assert.equal(cp.code, 0, cp.stderr);
      assert.equal(procState(w.pid).tracer, 0);
      assert.equal(await verify(w), 'PASS', w.text());
    });
  }

  it('a process without mlockall gets none, and its probe leaves no area behind', async () => {
    const w = await startWorkload(join(WORKLOADS, 'counter'), []);
    const before = readFileSync(`/proc/${w.pid}/maps`, 'utf8');
    const image = join(w.dir, 'plain.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(readFileSync(`/proc/${w.pid}/maps`, 'utf8'), before, 'the layout is as it was');
    const seen: unknown[] = [];
    await editImage(image, join(w.dir, 'copy.tar'), [[/^tasks\/\d+\/task\.json$/, json<TaskRecord>((t) => { seen.push(t.mlockall); })]]);
    assert.deepEqual(seen, [undefined]);
  });
});

describe('locked PROT_NONE areas', { skip, timeout: 120_000 }, () => {
  // mlock2 at restore locks such an area but fails to fault its pages in (ENOMEM): it was
  // refused after the checkpoint had killed the tree.
  const cases = [['current', 'mlockall(MCL_CURRENT) with a second thread (its stack\'s guard page)'],
    ['guarded', 'mlock and mlock2(MLOCK_ONFAULT) of three pages, the middle one then PROT_NONE']] as const;
  for (const [mode, what] of cases) {
    it(`${what}: every locked area comes back locked on the same range with the same protection, VmLck too`, async () => {
      const w = await startWorkload(MLOCKFUTURE, [mode]);
      const image = join(w.dir, 'none.tar');
      await checkpointFreed(w, image);
      const rs = ferry(['restore', '--image', image]);
      assert.equal(rs.code, 0, rs.stderr);
      own(w.pid);
      assert.equal(await verify(w), 'PASS', w.text());
    });

    it(`${what}: --leave-running leaves them as they were`, async () => {
      const w = await startWorkload(MLOCKFUTURE, [mode]);
      const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
      assert.equal(cp.code, 0, cp.stderr);
      assert.equal(procState(w.pid).tracer, 0);
      assert.equal(await verify(w), 'PASS', w.text());
    });
  }
});

describe('membarrier(2) registrations', { skip, timeout: 120_000 }, () => {
  const MEMBARRIER = join(WORKLOADS, 'membarrier');

  it('come back: the same MEMBARRIER_CMD_GET_REGISTRATIONS, and every private expedited barrier works', async () => {
    const w = await startWorkload(MEMBARRIER, []);
    const image = join(w.dir, 'membarrier.tar');
    await checkpointFreed(w, image);
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('--leave-running leaves them as they were; a process with none records none', async () => {
    const w = await startWorkload(MEMBARRIER, []);
    const image = join(w.dir, 'lr.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS', w.text());
    const seen: unknown[] = [];
    await editImage(image, join(w.dir, 'copy.tar'), [[/^tasks\/\d+\/task\.json$/, json<TaskRecord>((t) => { seen.push(t.membarrier); })]]);
    assert.deepEqual(seen, [(1 << 2) | (1 << 4) | (1 << 6) | (1 << 8)]);
    const plain = await startWorkload(join(WORKLOADS, 'counter'), []);
    const pi = join(plain.dir, 'plain.tar');
    assert.equal(ferry(['checkpoint', '--pid', String(plain.pid), '--image', pi, '--leave-running']).code, 0);
    const none: unknown[] = [];
    await editImage(pi, join(plain.dir, 'copy.tar'), [[/^tasks\/\d+\/task\.json$/, json<TaskRecord>((t) => { none.push(t.membarrier); })]]);
    assert.deepEqual(none, [undefined]);
  });

  it('an image edited to a command that is no registration is refused with one line, nothing made', async () => {
    const w = await startWorkload(MEMBARRIER, []);
    const image = join(w.dir, 'lr.tar');
    assert.equal(ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']).code, 0);
    const edited = join(w.dir, 'edited.tar');
    await editImage(image, edited, [[/^tasks\/\d+\/task\.json$/, json<TaskRecord>((t) => { t.membarrier = 1; })]]);
    const rs = ferry(['restore', '--image', edited]);
    assert.equal(rs.code, 1, rs.stderr);
    assert.match(rs.stderr, /membarrier must hold only MEMBARRIER_CMD_REGISTER_\* commands/);
    assert.equal(rs.stderr.trimEnd().split('\n').length, 1, 'one line');
  });
});

describe('io_setup(2) contexts', { skip, timeout: 120_000 }, () => {
  const AIORING = join(WORKLOADS, 'aioring');

  it('come back at their rings\' addresses with the events not reaped, in order, twice, and take new requests', async () => {
    const w = await startWorkload(AIORING, ['DIR']);
    const image = join(w.dir, 'aio.tar');
    await checkpointFreed(w, image);
    // Two rings, no pages stored for them, their unreaped events recorded (8 and 4).
    const rings: Array<{ pages: number; nr: number; events: number }> = [];
    await editImage(image, join(w.dir, 'copy.tar'), [[/^tasks\/\d+\/task\.json$/, json<TaskRecord>((t) => {
      for (const v of t.vmas.filter((a) => a.kind === 'aio')) {
        assert.deepEqual(v.runs, []);
        rings.push({ pages: Number((BigInt(v.end) - BigInt(v.start)) / 4096n), nr: v.aio!.nr, events: Buffer.from(v.aio!.events, 'base64').length / 32 });
      }
    })]]);
    assert.deepEqual(rings.map((r) => r.events).sort(), [4, 8]);
    for (const r of rings) assert.equal(r.nr, r.pages * 128 - 1);
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    // Once more: the restored contexts (their rings moved where they were) checkpoint as the first did.
    await cycleThrough(w, join(w.dir, 'aio2.tar'), 1);
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('--leave-running leaves them as they were; one warning for the process says requests in flight are lost', async () => {
    const w = await startWorkload(AIORING, ['DIR']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    // No interface shows a context's requests in flight (an IOCB_CMD_POLL waiting): the
    // checkpoint cannot refuse them, so it says so, once for the process and naming its
    // rings, rather than lose them silently.
    const rings = readFileSync(`/proc/${w.pid}/maps`, 'utf8').split('\n').filter((l) => l.endsWith('/[aio] (deleted)')).map((l) => `0x${l.split('-')[0]}`);
    assert.equal(rings.length, 2);
    assert.deepEqual(cp.stderr.split('\n').filter((l) => l.startsWith('warning: ')), [
      `warning: pid ${w.pid} has 2 io_setup(2) contexts (rings at ${rings.join(', ')}): requests still in flight, if any (an IOCB_CMD_POLL `
      + 'waiting, a read of a slow device), cannot be seen from outside the kernel, so they are not in the image and never complete '
      + 'after restore: checkpoint it when it has none pending']);
    assert.equal(procState(w.pid).tracer, 0, 'not traced');
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('ferry migrate --lazy, after pre-copy rounds, brings them over: the ring is neither write-tracked nor served lazily', async () => {
    const { config, key } = migrationDir('ferry-aio-');
    const w = await startWorkload(AIORING, ['DIR']);
    const { r: recv, port } = await startReceiver(key, config);
    const mig = startFerry(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--lazy', '--json', '--config', config]);
    own(w.pid);
    assert.equal(await exitOf(mig, 'ferry migrate'), 0, mig.stderr());
    assert.equal(await exitOf(recv, 'ferry receive --once'), 0, recv.stderr());
    assert.ok(records(mig).some((x) => x['phase'] === 'round'), 'pre-copy rounds ran');
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('a child\'s copy of its parent\'s ring (fork(2) copies the mapping, not the context) is refused with one line; both run on', async () => {
    const w = await startWorkload(AIORING, ['DIR', 'fork']);
    const child = Number(/^child pid=(\d+)$/m.exec(w.text())![1]);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'x.tar')]);
    assert.equal(cp.code, 1, cp.stderr);
    assert.match(cp.stderr, new RegExp(`^ferry checkpoint: unsupported memory area of pid ${child}: 0x[0-9a-f]+-0x[0-9a-f]+ \\(/\\[aio\\]\\) `
      + 'is not the whole completion ring of an io_setup\\(2\\) context of this process'));
    assert.equal(cp.stderr.trimEnd().split('\n').length, 1, 'one line');
    assert.equal(procState(w.pid).tracer, 0, 'the parent is not traced');
    assert.equal(procState(child).tracer, 0, 'the child is not traced');
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('an edited ring is refused with one line before anything is made', async () => {
    const w = await startWorkload(AIORING, ['DIR']);
    const image = join(w.dir, 'lr.tar');
    assert.equal(ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']).code, 0);
    const ring = (t: TaskRecord): VmaRecord => t.vmas.find((v) => v.kind === 'aio' && Buffer.from(v.aio!.events, 'base64').length === 8 * 32)!;
    const cases: Array<[string, (t: TaskRecord) => void, RegExp]> = [
      ['nr.tar', (t) => { ring(t).aio!.nr += 1; }, /an io_setup\(2\) ring at 0x[0-9a-f]+\) has nr \d+, but its \d+ pages hold \d+ events/],
      ['full.tar', (t) => { const v = ring(t); v.aio!.events = Buffer.alloc(v.aio!.nr * 32).toString('base64'); }, /must hold whole events \(32 bytes each\), fewer than its nr/],
      ['overlap.tar', (t) => {
        const v = ring(t);
        const other = t.vmas.find((a) => a.kind === 'anon' && a.name === '[stack]')!;
        const len = BigInt(v.end) - BigInt(v.start);
        v.start = other.start;
        v.end = `0x${(BigInt(other.start) + len).toString(16)}`;
      }, /overlaps vmas\[\d+\]/],
      ['kind.tar', (t) => { ring(t).kind = 'anon'; }, /has aio but is not of kind aio/],
    ];
    await refuseEdited(w, image, /^tasks\/\d+\/task\.json$/, cases);
  });
});

describe('guard pages (MADV_GUARD_INSTALL)', { skip: skip || needsKernel(6, 13, 'MADV_GUARD_INSTALL'), timeout: 120_000 }, () => {
  const GUARDS = join(WORKLOADS, 'guards');
  const guardsOf = (t: TaskRecord): Array<[number, number]> => t.vmas.flatMap((v) => v.guards ?? []);

  it('come back where they were: a parent, a child that changed its own and wrote where one was, a page lent over one, twice', async () => {
    const w = await startWorkload(GUARDS, []);
    const image = join(w.dir, 'guards.tar');
    const pids = await checkpointTreeFreed(w, image);
    const seen: Array<Array<[number, number]>> = [];
    const lent: Array<[number, number]> = [];
    await editImage(image, join(w.dir, 'copy.tar'), [[/^tasks\/\d+\/task\.json$/, json<TaskRecord>((t) => {
      seen.push(guardsOf(t));
      for (const v of t.vmas) if ((v.guards?.length ?? 0) > 0) lent.push(...(v.lent ?? []));
    })]]);
    assert.ok(lent.some(([first, count]) => first <= 2 && 2 < first + count), `page 2 is lent through the parent, over its guard: ${JSON.stringify(lent)}`);
    assert.deepEqual(seen.map((g) => JSON.stringify(g)).sort(), [[[2, 1], [4, 4], [12, 1]], [[4, 4], [12, 1]], [[4, 4], [14, 1]]].map((g) => JSON.stringify(g)).sort(),
      'the image names each process\'s guards');
    for (let i = 0; i < 2; i++) {
      if (i > 0) await checkpointTreeFreed({ pid: w.pid, exited: Promise.resolve() }, image);
      const rs = ferry(['restore', '--image', image]);
      assert.equal(rs.code, 0, rs.stderr);
      for (const p of pids) own(p);
    }
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('an area with guard pages that mlockall locked comes back locked', async () => {
    const w = await startWorkload(GUARDS, ['locked']);
    const image = join(w.dir, 'locked.tar');
    const pids = await checkpointTreeFreed(w, image);
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    for (const p of pids) own(p);
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('--leave-running leaves them as they were', async () => {
    const w = await startWorkload(GUARDS, []);
    ownTree(w); // the children too, should the test fail
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('an image whose guards overlap a stored page, or go past the area, is refused before anything is made', async () => {
    const w = await startWorkload(GUARDS, []);
    ownTree(w);
    const image = join(w.dir, 'edit.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    const guarded = (t: TaskRecord): VmaRecord => t.vmas.find((v) => (v.guards?.length ?? 0) > 0)!;
    await refuseEdited(w, image, new RegExp(`^tasks/${w.pid}/task\\.json$`), [
      ['onpage.tar', (t) => { const v = guarded(t); v.guards = [[0, 1]]; }, /guards has a page at 0 that the area stores or inherits/],
      ['past.tar', (t) => {
        const v = guarded(t);
        v.guards = [[Number((BigInt(v.end) - BigInt(v.start)) / 4096n) - 1, 2]];
      }, /guards\[0\] is empty or goes past the end of the area/],
      ['order.tar', (t) => { const v = guarded(t); v.guards = [[12, 1], [4, 4]]; }, /guards\[1\] is out of order/],
    ]);
  });
});
