/**
 * File locks and changed files through bin/ferry: build/workloads/locks holds flock, POSIX and
 * OFD locks (read and write, byte ranges, a child's own POSIX lock through its parent's open
 * file) and has two processes blocked waiting for locks; it checks every lock itself after
 * restore and that the waiters get theirs once released.
 */
import assert from 'node:assert/strict';
import { appendFileSync, readFileSync, statSync, utimesSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, WORKLOADS } from '../helpers/env.js';
import { alive, cleanup, ferry, own, ownTree, procState, sleep, startWorkload, verify, waitFor, type Workload } from '../helpers/processes.js';

const skip = needs('root', 'build');
after(cleanup);

/** Restores `image` with `extra` flags; owns every restored pid; returns the run. */
function restore(image: string, extra: string[] = []): ReturnType<typeof ferry> {
  const rs = ferry(['restore', '--image', image, '--json', ...extra]);
  if (rs.code === 0) for (const p of (JSON.parse(rs.stdout.toString()) as { pids: number[] }).pids) own(p);
  return rs;
}

/** Checkpoints with --file-locks and waits until every pid of the tree is free. */
async function checkpoint(w: Workload, image: string, pids: number[]): Promise<void> {
  const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--file-locks']);
  assert.equal(cp.code, 0, cp.stderr);
  await waitFor('the tree to be gone', () => pids.every((p) => !alive(p)), 5000);
}

describe('file locks', { skip, timeout: 120_000 }, () => {
  it('flock, POSIX and OFD locks and blocked waiters come back, three cycles in a row', async () => {
    const w = await startWorkload(join(WORKLOADS, 'locks'), ['DIR']);
    const pids = ownTree(w);
    assert.equal(pids.length, 4);
    const image = join(w.dir, 'locks.tar');
    for (let i = 0; i < 3; i++) {
      await sleep(100);
      await checkpoint(w, image, pids);
      const rs = restore(image, ['--file-locks']);
      assert.equal(rs.code, 0, `restore ${i + 1}: ${rs.stderr}`);
      assert.deepEqual((JSON.parse(rs.stdout.toString()) as { pids: number[] }).pids.sort(), [...pids].sort());
    }
    await sleep(100);
    assert.equal(await verify(w), 'PASS');
  });

  it('without --file-locks a held lock is refused before the tree is touched', async () => {
    const w = await startWorkload(join(WORKLOADS, 'locks'), ['DIR']);
    ownTree(w);
    const image = join(w.dir, 'locks.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image]);
    assert.equal(cp.code, 1);
    const line = cp.stderr.trim();
    assert.ok(!line.includes('\n'), `one line: ${line}`);
    assert.match(line, new RegExp(`pid ${w.pid} fd \\d+ -> ${w.dir}/\\S+ \\(holds a .*lock.*--file-locks`));
    assert.ok(alive(w.pid));
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS', 'the locks and the waiters were left alone');
  });

  it('--leave-running keeps the original\'s locks; the image has them too', async () => {
    const w = await startWorkload(join(WORKLOADS, 'locks'), ['DIR']);
    const pids = ownTree(w);
    const image = join(w.dir, 'locks.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--file-locks', '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.ok(pids.every((p) => alive(p) && procState(p).tracer === 0));
    assert.equal(await verify(w), 'PASS', 'the original kept every lock, and its waiters still wait');
    await w.exited;
    await waitFor('the tree to be gone', () => pids.every((p) => !alive(p)), 5000);
    const rs = restore(image);
    assert.equal(rs.code, 0, rs.stderr);
    await sleep(100);
    const w2 = { ...w, text: () => readFileSync(w.log, 'utf8').split('PASS\n').slice(1).join('PASS\n') };
    assert.equal(await verify(w2), 'PASS', 'the restored copy has them too');
  });
});

describe('changed files', { skip, timeout: 60_000 }, () => {
  it('a file whose size or mtime changed is refused naming it, and allowed with --allow-changed-files', async () => {
    const w = await startWorkload(join(WORKLOADS, 'locks'), ['DIR']);
    const pids = ownTree(w);
    const image = join(w.dir, 'locks.tar');
    await checkpoint(w, image, pids);
    const data = join(w.dir, 'data');

    const before = statSync(data);
    utimesSync(data, before.atime, new Date(before.mtimeMs + 5000));
    let rs = restore(image);
    assert.equal(rs.code, 1);
    assert.match(rs.stderr.trim(), new RegExp(`^ferry restore: file ${data} changed since the checkpoint \\(mtime \\S+ → \\S+\\).*--allow-changed-files`));
    assert.ok(!rs.stderr.trim().includes('\n'), rs.stderr);

    appendFileSync(data, 'x');
    rs = restore(image);
    assert.equal(rs.code, 1);
    assert.match(rs.stderr, new RegExp(`file ${data} changed since the checkpoint \\(size 100 → 101 bytes, mtime `));
    assert.ok(pids.every((p) => !alive(p)), 'nothing was created');

    rs = restore(image, ['--allow-changed-files']);
    assert.equal(rs.code, 0, rs.stderr);
    assert.match(rs.stderr, /file \S+data changed since the checkpoint \(size 100 → 101 bytes/);
    await sleep(100);
    assert.equal(await verify(w), 'PASS');
  });
});
