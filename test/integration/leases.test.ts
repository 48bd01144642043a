/**
 * File leases and file owners through bin/ferry: build/workloads/leases holds a read and a
 * write lease (the read one with its own break signal), a socket whose owner is the process,
 * one whose owner is a thread, and an O_ASYNC pipe whose owner is the process group with
 * F_SETSIG; it checks each after restore, that the two leased files kept their times to the
 * nanosecond, and that the SIGIO and the lease break still reach it. With "breaking" and
 * "breaking-read" leases are being broken when the checkpoint comes (to none; to read), and
 * come back being broken.
 */
import assert from 'node:assert/strict';

import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, WORKLOADS } from '../helpers/env.js';
import { editImage, json } from '../helpers/images.js';
import { alive, checkpointTreeFreed, cleanup, ferry, own, procState, startWorkload, verify, waitFor } from '../helpers/processes.js';

const skip = needs('root', 'build');
after(cleanup);

const LEASES = join(WORKLOADS, 'leases');

/** Restores `image` with `extra` flags; owns every restored pid. */
function restore(image: string, extra: string[] = []): ReturnType<typeof ferry> {
  const rs = ferry(['restore', '--image', image, '--json', ...extra]);
  if (rs.code === 0) for (const p of (JSON.parse(rs.stdout.toString()) as { pids: number[] }).pids) own(p);
  return rs;
}

describe('leases and file owners', { skip, timeout: 120_000 }, () => {
  it('a lease is refused without --file-locks, naming it and the flag; nothing changes', async () => {
    const w = await startWorkload(LEASES, ['DIR']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'x.tar')]);
    assert.equal(cp.code, 1);
    assert.match(cp.stderr, new RegExp(`pid ${w.pid} fd \\d+ -> .*/(rd|wr) \\(holds a (read|write) lease: checkpoint with --file-locks`));
    assert.equal(cp.stderr.trim().split('\n').length, 1, 'one line');
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS');
  });

  it('leases, owners and break signals come back, the files\' times untouched', async () => {
    const w = await startWorkload(LEASES, ['DIR']);
    const image = join(w.dir, 'leases.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--file-locks']);
    assert.equal(cp.code, 0, cp.stderr);
    await w.exited;
    await waitFor(`pid ${w.pid} to be free`, () => !alive(w.pid), 5000);
    const rs = restore(image, ['--file-locks']);
    assert.equal(rs.code, 0, rs.stderr);
    assert.equal(await verify(w), 'PASS');
  });

  it('a read lease being broken to none comes back being broken, its breaker still waiting, no second signal', async () => {
    const w = await startWorkload(LEASES, ['DIR', 'breaking'], { readyTimeoutMs: 30_000 });
    const image = join(w.dir, 'breaking.tar');
    await checkpointTreeFreed(w, image, ['--file-locks']);
    const rs = restore(image, ['--file-locks']);
    assert.equal(rs.code, 0, rs.stderr);
    assert.equal(await verify(w), 'PASS');
  });

  it('a write lease being broken to read comes back being broken, its breakers still waiting, no second signal', async () => {
    const w = await startWorkload(LEASES, ['DIR', 'breaking-read'], { readyTimeoutMs: 30_000 });
    const image = join(w.dir, 'breaking-read.tar');
    await checkpointTreeFreed(w, image, ['--file-locks']);
    const rs = restore(image, ['--file-locks']);
    assert.equal(rs.code, 0, rs.stderr);
    assert.equal(await verify(w), 'PASS');
  });

  for (const mode of ['breaking-read', 'breaking']) {
    it(`--leave-running leaves leases being broken (${mode === 'breaking' ? 'to none' : 'to read'}) as they were`, async () => {
      const w = await startWorkload(LEASES, ['DIR', mode], { readyTimeoutMs: 30_000 });
      const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--file-locks', '--leave-running']);
      assert.equal(cp.code, 0, cp.stderr);
      assert.equal(procState(w.pid).tracer, 0);
      assert.equal(await verify(w), 'PASS');
    });
  }

  it('--leave-running keeps the original\'s leases, owners and times', async () => {
    const w = await startWorkload(LEASES, ['DIR']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--file-locks', '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS');
  });

  it('a write lease on a file the tree maps is refused at checkpoint, naming both; it runs on with them', async () => {
    const w = await startWorkload(LEASES, ['DIR', 'mapped']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'x.tar'), '--file-locks']);
    assert.equal(cp.code, 1);
    assert.match(cp.stderr, new RegExp(`pid ${w.pid} fd \\d+ -> .*/wr \\(holds a write lease, and pid ${w.pid} maps the file at 0x[0-9a-f]+: a restore maps it through an open file of its own`));
    assert.equal(cp.stderr.trim().split('\n').length, 1, 'one line');
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS');
  });

  it('an owner outside the tree is refused at checkpoint, naming it', async () => {
    const w = await startWorkload(LEASES, ['DIR', 'outside']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'x.tar'), '--file-locks']);
    assert.equal(cp.code, 1);
    assert.match(cp.stderr, new RegExp(`pid ${w.pid} fd \\d+ -> pipe:\\[\\d+\\] \\(its owner, the process \\d+ that fcntl F_SETOWN names for SIGIO, is outside the checkpointed tree`));
    assert.equal(procState(w.pid).tracer, 0);
    assert.ok(alive(w.pid));
  });

  it('an image whose owner names a process outside its tree is refused before anything is made', async () => {
    const w = await startWorkload(LEASES, ['DIR']);
    const image = join(w.dir, 'leases.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--file-locks', '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    const edited = join(w.dir, 'edited.tar');
    // SIGKILL for pid 1 whenever the pipe is written: what an owner from the image could do.
    await editImage(image, edited, {
      'files.json': json<{ files: Array<Record<string, unknown>> }>((v) => {
        const f = v.files.find((x) => x.kind === 'pipe' && x.async !== undefined)!;
        f.async = { type: 1, pid: 1, sig: 9 };
      }),
    });
    const rs = ferry(['restore', '--image', edited, '--file-locks', '--max-creds', 'root']);
    assert.equal(rs.code, 1);
    assert.match(rs.stderr, /image: file \d+ \(pipe\) has a SIGIO owner that names process 1, which is not in the image's tree/);
    assert.equal(await verify(w), 'PASS', 'the original runs on');
  });
});
