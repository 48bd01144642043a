/**
 * Memory flags through bin/ferry: build/workloads/memflags holds areas locked with mlock and
 * mlock2(MLOCK_ONFAULT), areas with each madvise() flag the kernel shows in VmFlags, a
 * shared mapping of a read-only file partly mprotect()ed to PROT_NONE, a shared PROT_READ
 * mapping of a file opened read-write, and PR_SET_THP_DISABLE (also with
 * PR_THP_DISABLE_EXCEPT_ADVISED, which /proc shows nowhere: THP_enabled reads 1); after restore it compares each
 * area's permissions and VmFlags with what they were, then makes the read-write file's
 * mapping writable and writes the file through it, and sees the read-only one refuse that.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { readFileSync } from 'node:fs';
import { release } from 'node:os';
import type { TaskRecord } from '../../src/image/records.js';
import { needs, WORKLOADS } from '../helpers/env.js';
import { editImage, json } from '../helpers/images.js';
import { checkpointFreed, cleanup, ferry, own, procState, startWorkload, verify } from '../helpers/processes.js';

const skip = needs('root', 'build');
after(cleanup);

const MEMFLAGS = join(WORKLOADS, 'memflags');
const MLOCKFUTURE = join(WORKLOADS, 'mlockfuture');
/** PR_THP_DISABLE_EXCEPT_ADVISED came with Linux 6.18. */
const [major = 0, minor = 0] = release().split('.').map(Number);
const exceptAdvised = major > 6 || (major === 6 && minor >= 18) ? false : 'PR_THP_DISABLE_EXCEPT_ADVISED needs Linux 6.18';

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

describe('an io_setup(2) completion ring', { skip, timeout: 60_000 }, () => {
  it('is refused with one line naming it; the process runs on with its context', async () => {
    const w = await startWorkload(join(WORKLOADS, 'aioring'), []);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'x.tar')]);
    assert.equal(cp.code, 1, cp.stderr);
    assert.match(cp.stderr, new RegExp(`^ferry checkpoint: unsupported memory area of pid ${w.pid}: 0x[0-9a-f]+-0x[0-9a-f]+ \\(/\\[aio\\]\\) is the completion ring of an io_setup\\(2\\) context`));
    assert.equal(cp.stderr.trimEnd().split('\n').length, 1, 'one line');
    assert.equal(procState(w.pid).tracer, 0, 'not traced');
    assert.equal(await verify(w), 'PASS', w.text());
  });
});
