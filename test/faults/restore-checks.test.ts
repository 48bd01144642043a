/**
 * Restore's checks before and right after work (issue 8): a thread ID of the image that
 * another process holds is refused before anything is made, and a process that a changed
 * binary kills at once fails the restore instead of being reported as restored.
 */
import assert from 'node:assert/strict';
import { copyFileSync, readdirSync, readFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { SIGKILL } from '../../src/arch/x86-64.js';
import { defaultStubPath, native } from '../../src/native/binding.js';
import { needs, WORKLOADS } from '../helpers/env.js';
import { editImage, json } from '../helpers/images.js';
import { alive, checkpointFreed, cleanup, ferry, own, startWorkload, verify, waitFor } from '../helpers/processes.js';

const skip = needs('root', 'build');
after(cleanup);

/** Whether `pid` is gone or a zombie (not running any more). */
function notRunning(pid: number): boolean {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return text.charAt(text.lastIndexOf(')') + 2) === 'Z';
  } catch {
    return true;
  }
}

describe('restore checks', { skip, timeout: 180000 }, () => {
  it('a thread id held by another process is refused before anything is made; a retry succeeds', async () => {
    const w = await startWorkload(join(WORKLOADS, 'threads'), ['4']);
    const tids = readdirSync(`/proc/${w.pid}/task`).map(Number).filter((t) => t !== w.pid);
    assert.ok(tids.length >= 4, 'the workload has its threads');
    const image = join(w.dir, 'threads.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image]);
    assert.equal(cp.code, 0, cp.stderr);
    await w.exited;
    const taken = tids[tids.length - 1]!;
    await waitFor(`thread id ${taken} to be free`, () => !alive(taken));
    // A stub with exactly that id (clone3 set_tid), traced by this process.
    const n = native();
    const holder = n.spawnStub(defaultStubPath(), [taken]);
    assert.equal(holder, taken);
    try {
      const rs = ferry(['restore', '--image', image]);
      assert.equal(rs.code, 1, rs.stderr);
      assert.match(rs.stderr, new RegExp(`thread id ${taken} \\(of pid ${w.pid}\\) is in use`));
      assert.equal(rs.stderr.trim().split('\n').length, 1, 'one line');
      assert.ok(!alive(w.pid), 'nothing was made: the pid is still free');
    } finally {
      n.tgkill(holder, holder, SIGKILL);
      n.waitpid(holder);
    }
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.equal(await verify(w), 'PASS');
  });

  it('a process killed at once by a changed binary fails the restore, and nothing runs on', async () => {
    const w0 = await startWorkload(join(WORKLOADS, 'counter'), ['1000']);
    // Run a private copy of the counter, so the test can change "its" binary.
    process.kill(w0.pid, 'SIGKILL');
    await w0.exited;
    const bin = join(w0.dir, 'counter');
    copyFileSync(join(WORKLOADS, 'counter'), bin);
    const w = await startWorkload(bin, ['50']);
    await waitFor('a few ticks', () => w.ticks().length >= 2);
    const image = join(w.dir, 'counter.tar');
    await checkpointFreed(w, image);
    // Another program at the same path: the restored code pages are not the counter's.
    copyFileSync(join(WORKLOADS, 'state'), `${bin}.new`);
    renameSync(`${bin}.new`, bin);
    const refused = ferry(['restore', '--image', image]);
    assert.equal(refused.code, 1, 'without --allow-changed-files the change is refused');
    assert.match(refused.stderr, /changed since the checkpoint|--allow-changed-files/);
    const rs = ferry(['restore', '--image', image, '--allow-changed-files']);
    own(w.pid);
    assert.equal(rs.code, 1, `restore must fail: ${rs.stdout.toString()}${rs.stderr}`);
    assert.match(rs.stderr, new RegExp(`restored pid ${w.pid} .*was killed by SIG(SEGV|ILL|BUS|TRAP|FPE)`));
    await waitFor(`pid ${w.pid} to stop running`, () => notRunning(w.pid), 5000);
  });

  it('a thread whose rseq the kernel refuses fails the restore at once, with nothing left running', async () => {
    const w = await startWorkload(join(WORKLOADS, 'threads'), ['4']);
    const image = join(w.dir, 'threads.tar');
    await checkpointFreed(w, image);
    const bad = join(w.dir, 'bad-rseq.tar');
    await editImage(image, bad, { [`tasks/${w.pid}/task.json`]: json((t) => { t.threads[1].rseq.pointer = '0x10'; }) });
    const t0 = Date.now();
    const rs = ferry(['restore', '--image', bad], { timeoutMs: 60000 });
    own(w.pid);
    assert.equal(rs.code, 1, rs.stderr);
    assert.ok(Date.now() - t0 < 30000, 'no hang');
    assert.equal(rs.stderr.trim().split('\n').length, 1, `one line: ${rs.stderr}`);
    assert.match(rs.stderr, /rseq/);
    await waitFor(`pid ${w.pid} to stop running`, () => notRunning(w.pid), 5000);
  });
});
