/**
 * Fault cells of the files a restore opens once the tree exists, through processes it makes or
 * names for it:
 * - a reaped process's /proc file (src/files/procfile.ts openGone; build/workloads/procfds holds
 *   the stat and directory of a child it reaped): a short-lived process of ferry's stands at
 *   that pid, stopped after its exec, while the file is opened. Ferry is SIGKILLed there
 *   (FERRY_TEST_PAUSE_AT=standin, synchronous) and the open fails there (`standin!`): the
 *   stand-in dies with ferry (its parent-death signal and PTRACE_O_EXITKILL; without them the
 *   kernel resumed it and it ran Node untraced at that pid) or is killed and reaped by it, and
 *   so do the tree's stubs: nothing holds the tree's pids nor the stand-in's, no stub is left,
 *   and a retry restores the workload, which passes its check;
 * - a thread's pidfd (PIDFD_THREAD, src/files/pidfd.ts openAfterThreads;
 *   build/workloads/threadpidfd), opened once every thread exists: SIGKILL there
 *   (`threadpidfd`) and the open failing (`threadpidfd!`) leave nothing of the tree.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { release } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, WORKLOADS } from '../helpers/env.js';
import { checkpointTreeFreed, cleanup, ferry, own, sleep, startWorkload, stubs, verify } from '../helpers/processes.js';
import { checkLines, hit, pidsFree, runFerry, shown, status, whilePaused, type FerryRun, type Problems } from './helpers.js';

const skip = needs('root', 'build');
after(cleanup);

/** The file records of `image`. */
const imageFiles = (image: string): Array<Record<string, unknown>> =>
  (JSON.parse(spawnSync('tar', ['-xOf', image, 'files.json'], { encoding: 'utf8' }).stdout) as { files: Array<Record<string, unknown>> }).files;

/** The children of a running ferry (every thread's). */
function childrenOf(pid: number): number[] {
  return readdirSync(`/proc/${pid}/task`).flatMap((tid) => readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').split(' ').filter(Boolean).map(Number));
}

/**
 * The wait status of `pid` once it is a zombie (/proc/PID/stat's exit_code, field 52), or
 * undefined when it was reaped before it could be read; waits up to 5 s.
 */
async function exitOf(pid: number): Promise<number | undefined> {
  for (const end = Date.now() + 5000; Date.now() < end; await sleep(2)) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    } catch {
      return undefined;
    }
    const fields = stat.slice(stat.lastIndexOf(')') + 2).trim().split(' '); // fields 3..52
    if (fields[0] === 'Z' || fields[0] === 'X') return Number(fields[49]);
  }
  throw new Error(`pid ${pid} still runs 5 s after ferry was killed`);
}

/** Hits a paused restore with SIGKILL and checks that it died of it. */
async function kill(run: FerryRun, p: Problems): Promise<void> {
  const r = await hit(run, 'SIGKILL', p);
  if (r.signal !== 'SIGKILL') p.push(`ferry exited ${r.code ?? r.signal}, not killed`);
}

/** A restore that failed on its own: exit 1, one line matching `line`. */
function failedOnce(r: { code: number; stderr: string }, line: RegExp): void {
  assert.equal(r.code, 1, r.stderr);
  const p: Problems = [];
  checkLines(p, r.stderr, 1);
  assert.deepEqual(p, []);
  assert.match(r.stderr, line);
}

describe('fault cells: a restore hit while a process of its own stands at a reaped process\'s pid', { skip, timeout: 120_000 }, () => {
  it('procfds: SIGKILL at standin; the stand-in and the stubs die with ferry, every pid is free, a retry restores', async () => {
    const w = await startWorkload(join(WORKLOADS, 'procfds'), ['DIR']);
    const image = join(w.dir, 'proc.tar');
    const pids = await checkpointTreeFreed(w, image);
    const gone = [...new Set(imageFiles(image).filter((f) => f.kind === 'procfile' && typeof f.gone === 'number').map((f) => f.gone as number))];
    assert.equal(gone.length, 1, 'the reaped child\'s files name one pid');
    const before = stubs();

    const p: Problems = [];
    let standIn = 0;
    await whilePaused(p, ['restore', '--image', image], 'standin', async (run) => {
      // Ferry's children it traces now: the tree's root stub and the stand-in, stopped after its
      // exec (its let-go watchdog is a child too, untraced).
      const kids = childrenOf(run.pid).filter((k) => status(k)?.tracer === run.pid && status(k)?.name !== 'ferry-stub');
      assert.equal(kids.length, 1, `one stand-in: ${childrenOf(run.pid).map((k) => shown(status(k))).join(', ')}`);
      standIn = kids[0]!;
      const st = status(standIn)!;
      assert.equal(standIn, gone[0], 'made at the reaped child\'s pid, which is free');
      assert.equal(st.tracer, run.pid, 'traced by ferry');
      assert.equal(st.state, 't', 'stopped after its exec, never run');
      await kill(run, p);
    });
    assert.deepEqual(p, []);
    // Killed by the kernel, not let go: its zombie (until init reaps it) says SIGKILL.
    const ended = await exitOf(standIn);
    assert.ok(ended === undefined || ended === 9, `the stand-in ended with status ${ended}, not killed (it ran once ferry was gone?)`);
    assert.deepEqual(await pidsFree([...pids, standIn], 5000), [], 'nothing holds the tree\'s pids nor the stand-in\'s');
    assert.deepEqual(stubs().filter((s) => !before.includes(s)), [], 'no stub is left');

    const rs = await runFerry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    pids.forEach(own);
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('procfds: the open through the stand-in failing (injected): one line, the stand-in killed and reaped, nothing left', async () => {
    const w = await startWorkload(join(WORKLOADS, 'procfds'), ['DIR']);
    const image = join(w.dir, 'proc.tar');
    const pids = await checkpointTreeFreed(w, image);
    const gone = imageFiles(image).find((f) => f.kind === 'procfile' && typeof f.gone === 'number')!.gone as number;
    const before = stubs();
    const rs = ferry(['restore', '--image', image], { env: { FERRY_TEST_PAUSE_AT: 'standin!' } });
    failedOnce(rs, new RegExp(`cannot restore file \\d+ \\(/proc/${gone}(/stat)?, of a process already reaped\\) through process ${gone} made for it: `
      + 'ferry-test: failure injected at standin'));
    assert.deepEqual(await pidsFree([...pids, gone], 5000), [], 'nothing holds the tree\'s pids nor the stand-in\'s');
    assert.deepEqual(stubs().filter((s) => !before.includes(s)), [], 'no stub is left');
  });
});

describe('fault cells: a restore hit as it opens a thread\'s pidfd', { skip, timeout: 120_000 }, () => {
  /** PIDFD_THREAD came with Linux 6.9. */
  const [major = 0, minor = 0] = release().split('.').map(Number);
  const old = major > 6 || (major === 6 && minor >= 9) ? false : 'PIDFD_THREAD needs Linux 6.9';

  /** threadpidfd checkpointed (killed): its image and every pid and tid it had. */
  async function imaged(): Promise<{ w: Awaited<ReturnType<typeof startWorkload>>; image: string; ids: number[] }> {
    const w = await startWorkload(join(WORKLOADS, 'threadpidfd'), []);
    const ids = readdirSync(`/proc/${w.pid}/task`).map(Number);
    assert.ok(ids.length > 1, 'threads');
    const image = join(w.dir, 'threadpidfd.tar');
    await checkpointTreeFreed(w, image);
    assert.ok(imageFiles(image).some((f) => f.kind === 'pidfd' && typeof f.thread === 'number'), 'a thread\'s pidfd is recorded');
    return { w, image, ids };
  }

  it('SIGKILL at threadpidfd, every thread made; nothing is left, a retry restores', { skip: old }, async () => {
    const { w, image, ids } = await imaged();
    const before = stubs();
    const p: Problems = [];
    await whilePaused(p, ['restore', '--image', image], 'threadpidfd', async (run) => {
      const st = status(w.pid);
      assert.equal(st?.tracer, run.pid, 'the restored process is ferry\'s, traced');
      assert.deepEqual(readdirSync(`/proc/${w.pid}/task`).map(Number).sort(), [...ids].sort(), 'every thread exists, at its tid');
      await kill(run, p);
    });
    assert.deepEqual(p, []);
    assert.deepEqual(await pidsFree(ids, 5000), [], 'nothing holds the pid or the tids');
    assert.deepEqual(stubs().filter((s) => !before.includes(s)), [], 'no stub is left');

    const rs = await runFerry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('the open failing (injected): one line naming the pidfd, nothing is left', { skip: old }, async () => {
    const { w, image, ids } = await imaged();
    const before = stubs();
    const rs = ferry(['restore', '--image', image], { env: { FERRY_TEST_PAUSE_AT: 'threadpidfd!' } });
    failedOnce(rs, new RegExp(`cannot restore pidfd \\(file \\d+\\) of thread \\d+ of pid ${w.pid}: ferry-test: failure injected at threadpidfd`));
    assert.deepEqual(await pidsFree(ids, 5000), [], 'nothing holds the pid or the tids');
    assert.deepEqual(stubs().filter((s) => !before.includes(s)), [], 'no stub is left');
  });
});
