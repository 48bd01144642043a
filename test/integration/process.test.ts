/**
 * Checkpoint and restore of real processes through bin/ferry: each workload sets its state
 * up, is checkpointed and restored, then checks itself (PASS/FAIL).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, PYTHON, WORKLOADS } from '../helpers/env.js';
import { editImage, json } from '../helpers/images.js';
import {
  alive, checkPipedRestore, cleanup, ferry, own, procState, shell, sleep, startWorkload, verify, waitFor, type Workload,
} from '../helpers/processes.js';

const skip = needs('root', 'build');
after(cleanup);

/** Checkpoints (killing), waits until the pid is free, restores; returns the restore output. */
async function cycle(w: Workload, image: string): Promise<void> {
  const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image]);
  assert.equal(cp.code, 0, `checkpoint failed: ${cp.stderr}`);
  assert.match(cp.stdout.toString(), new RegExp(`checkpointed pid ${w.pid}`));
  await w.exited; // we are its first parent: reaped by us
  await waitFor(`pid ${w.pid} to be free`, () => !alive(w.pid));
  const rs = ferry(['restore', '--image', image]);
  assert.equal(rs.code, 0, `restore failed: ${rs.stderr}`);
  own(w.pid);
  assert.ok(alive(w.pid), 'restored process runs');
}

describe('checkpoint and restore of one process', { skip, timeout: 180_000 }, () => {
  it('a counter continues from where it stopped, with the same PID, as an orphan', async () => {
    const w = await startWorkload(join(WORKLOADS, 'counter'), ['50']);
    await waitFor('a few ticks', () => w.ticks().length >= 5);
    const image = join(w.dir, 'counter.tar');
    const pidFile = join(w.dir, 'pid');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--json']);
    assert.equal(cp.code, 0, cp.stderr);
    const result = JSON.parse(cp.stdout.toString()) as { pids: number[]; imageBytes: number; frozenMs: number; totalMs: number; reapWaitMs?: number };
    assert.deepEqual(result.pids, [w.pid]);
    assert.ok(result.imageBytes > 0);
    // The wait for the reaping (the counter's parent is the test runner, which reaps it) is
    // said apart, part of the total and not of the frozen window.
    assert.equal(typeof result.reapWaitMs, 'number', cp.stdout.toString());
    assert.ok(result.reapWaitMs! >= 0 && result.frozenMs + result.reapWaitMs! <= result.totalMs, cp.stdout.toString());
    await w.exited;
    const before = w.ticks();
    await sleep(300);
    assert.deepEqual(w.ticks(), before, 'nothing ticks while checkpointed');
    const rs = ferry(['restore', '--image', image, '--pid-file', pidFile]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.equal(readFileSync(pidFile, 'utf8').trim(), String(w.pid));
    await waitFor('ticks after restore', () => w.ticks().length >= before.length + 5);
    const all = w.ticks();
    assert.deepEqual(all, all.map((_, i) => i + 1), 'ticks continue without a gap or a restart');
    const st = procState(w.pid);
    assert.equal(st.tracer, 0, 'not traced after restore');
    assert.notEqual(st.ppid, process.pid, 'not a child of the test runner');
    assert.equal(await verify(w), 'PASS');
  });

  it('a process full of state survives three cycles in a row', async () => {
    const w = await startWorkload(join(WORKLOADS, 'state'), ['DIR']);
    const image = join(w.dir, 'state.tar');
    await cycle(w, image);
    for (let i = 0; i < 2; i++) {
      await sleep(200);
      const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image]);
      assert.equal(cp.code, 0, cp.stderr);
      await waitFor(`pid ${w.pid} to be free`, () => !alive(w.pid), 5000);
      const rs = ferry(['restore', '--image', image]);
      assert.equal(rs.code, 0, rs.stderr);
    }
    await sleep(200);
    assert.equal(await verify(w), 'PASS');
  });

  it('--leave-running keeps the process running, and the image restores later', async () => {
    const w = await startWorkload(join(WORKLOADS, 'state'), ['DIR']);
    const image = join(w.dir, 'state.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.ok(alive(w.pid));
    const st = procState(w.pid);
    assert.equal(st.tracer, 0, 'detached');
    assert.notEqual(st.state, 't', 'not left stopped');
    await sleep(200);
    assert.equal(await verify(w), 'PASS', 'the original is unharmed');
    await w.exited;
    // The image still holds the state as it was: restore it and verify again.
    const w2 = { ...w, text: () => readFileSync(w.log, 'utf8').split('PASS\n').slice(1).join('PASS\n') };
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    await sleep(200);
    assert.equal(await verify(w2), 'PASS');
  });

  it('streams the image through a pipe: checkpoint --image - | restore --image -', async () => {
    const w = await startWorkload(join(WORKLOADS, 'counter'), ['50']);
    await waitFor('ticks', () => w.ticks().length >= 3);
    const r = await shell(`'${process.cwd()}/bin/ferry' checkpoint --pid ${w.pid} --image - | '${process.cwd()}/bin/ferry' restore --image -`);
    await checkPipedRestore(w, r);
  });

  it('a python3 loop continues and verifies itself', { skip: needs('python') }, async () => {
    const w = await startWorkload(PYTHON, [join(process.cwd(), 'test', 'fixtures', 'workloads', 'loop.py'), 'DIR']);
    await waitFor('ticks', () => w.ticks().length >= 5);
    await cycle(w, join(w.dir, 'py.tar'));
    const n = w.ticks().length;
    await waitFor('ticks after restore', () => w.ticks().length >= n + 5);
    assert.equal(await verify(w), 'PASS');
  });

  it('inspect --json shows the task, its memory areas and its descriptors', async () => {
    const w = await startWorkload(join(WORKLOADS, 'state'), ['DIR']);
    const image = join(w.dir, 'state.tar');
    assert.equal(ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']).code, 0);
    const r = ferry(['inspect', '--image', image, '--json']);
    assert.equal(r.code, 0, r.stderr);
    const rep = JSON.parse(r.stdout.toString()) as {
      manifest: { root: { pid: number }; formatVersion: number };
      tasks: Array<{ pid: number; comm: string; vmas: Array<{ start: string; kind: string; name: string; storedBytes: number }>; fds: Array<{ fd: number; kind: string; target: string; sharedWith: string[] }> }>;
    };
    assert.equal(rep.manifest.root.pid, w.pid);
    const t = rep.tasks[0]!;
    assert.equal(t.comm, 'ferry-state');
    assert.ok(t.vmas.some((v) => v.kind === 'vdso'));
    assert.ok(t.vmas.some((v) => v.name === '[heap]' && v.storedBytes > 0));
    const fd100 = t.fds.find((f) => f.fd === 100);
    assert.equal(fd100?.target, '/dev/null');
    assert.ok(t.fds.some((f) => f.target.endsWith('/shared.txt') && f.sharedWith.length === 1), 'dup pair shows as shared');
    const human = ferry(['inspect', '--image', image]);
    assert.equal(human.code, 0);
    const text = human.stdout.toString();
    assert.match(text, /task \d+ \(ferry-state\)/);
    // Memory summed up by kind; --verbose lists every area.
    const anon = t.vmas.filter((v) => v.kind === 'anon');
    assert.match(text, new RegExp(`^ {4}anon +${anon.length} areas? `, 'm'));
    assert.doesNotMatch(text, /\[heap\]/);
    const verbose = ferry(['inspect', '--image', image, '--verbose']).stdout.toString();
    for (const v of t.vmas) assert.ok(verbose.includes(`${v.start.padStart(14)}-`), `area ${v.start} listed with --verbose`);
  });

  it('a table of 850 descriptors comes back number by number: holes, close-on-exec runs, far numbers, shared offsets', async () => {
    // More than one SCM_RIGHTS message of descriptors (files/install.ts receiveTable), holes
    // filled and closed again, and descriptors 1200 and 15000 placed one by one.
    const w = await startWorkload(join(WORKLOADS, 'fdtable'), ['DIR']);
    await cycle(w, join(w.dir, 'fdtable.tar'));
    assert.equal(await verify(w), 'PASS');
  });

  it('a directory read part of the way stands where it stood and reads on: its position is a 63-bit hash cookie on ext4', async () => {
    // The scratch directory is on the root file system (ext4 here), whose directory positions
    // are hashes beyond 2^53: such an image was refused at restore as an invalid record.
    const w = await startWorkload(join(WORKLOADS, 'dirpos'), ['DIR']);
    const image = join(w.dir, 'dirpos.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image]);
    assert.equal(cp.code, 0, cp.stderr);
    await w.exited;
    await waitFor(`pid ${w.pid} to be free`, () => !alive(w.pid));
    // Another directory at its path (an edited inode stands for it): its position would mean
    // nothing there, so the restore is refused in one line, nothing made.
    const other = join(w.dir, 'other.tar');
    await editImage(image, other, { 'files.json': json<{ files: Array<{ directory?: boolean; path: string; ino: string }> }>((v) => {
      const d = v.files.find((f) => f.directory === true && f.path.endsWith('/d'))!;
      d.ino = String(BigInt(d.ino) + 1n);
    }) });
    const refused = ferry(['restore', '--image', other, '--max-creds', 'root']);
    assert.equal(refused.code, 1, refused.stderr);
    assert.match(refused.stderr, /^ferry restore: directory .*\/d \(file \d+ of the image\) is not the one checkpointed \(inode \d+ then\), and the position it was read to means nothing in another: .*--allow-changed-files/);
    assert.equal(refused.stderr.trimEnd().split('\n').length, 1, 'one line');
    assert.ok(!alive(w.pid), 'nothing made');
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.equal(await verify(w), 'PASS', w.text());
  });
});
