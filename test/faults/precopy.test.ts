/**
 * Fault cells of pre-copy migration (src/migrate/precopy.ts, src/dump/dirty.ts): `ferry
 * migrate` hit after its first round (FERRY_TEST_PAUSE_AT=precopy), while the source runs
 * with its writes tracked through ferry's userfaultfd, in the top-up round right before the
 * freeze (`topup`) and in the last look after the top-ups (`lastlook`; SIGKILL, and the
 * source's work_dir full right after either), while it waits for the target to take the
 * rounds' pages (`ferry receive` holding its word at `catchup`), and inside the hold that
 * keeps the source's threads stopped while its areas are registered (`holding`). Whatever
 * hits it, the source must run
 * on as it was: not stopped, untraced, its areas no longer write-tracked (a SIGKILLed ferry's
 * userfaultfd is released by the kernel, which unregisters them), every page right; and the
 * target holds nothing (no spool, no page store, no stub: none of restore's, nor the one its
 * rounds staged the root's memory in, migrate/staging.ts, which dies with it).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, WORKLOADS } from '../helpers/env.js';
import { alive, askVerdict, cleanup, disown, own, procState, scratchDir, startWorkload, stubs, verify, waitFor, type Workload } from '../helpers/processes.js';
import {
  exitOf, killFerries, leftovers, migrationDir, pidFromNs, records, startDirtier, startFerry, startReceiver, startReceiverInPidns, writeTracked,
} from '../helpers/precopy-run.js';

const skip = needs('root', 'build');
after(() => { killFerries(); cleanup(); });

/** The tree rooted at `root`: its total PSS (/proc/PID/smaps_rollup), kB. */
function treePss(root: number): number {
  const kids = readFileSync(`/proc/${root}/task/${root}/children`, 'utf8').split(' ').filter(Boolean).map(Number);
  return [root, ...kids].reduce((sum, pid) => sum + Number(/^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))![1]), 0);
}

describe('fault cells: ferry migrate hit during pre-copy', { skip, timeout: 300_000 }, () => {
  const { workDir, config, key } = skip ? { workDir: '', config: '', key: '' } : migrationDir('ferry-precopy-faults-');

  /**
   * Runs `f` with an image.work_dir on a tmpfs of `size` (the test's own, mounted for it) and a
   * config naming it; after it, whatever happened, the ferries still running are killed (one
   * holding a file there would keep the tmpfs busy) and the tmpfs unmounted (detached if it is
   * still busy) and removed, without hiding the test's own failure.
   */
  async function withFullWorkDir(prefix: string, size: string, f: (full: string, cfg: string) => Promise<void>): Promise<void> {
    const dir = scratchDir(prefix);
    const full = join(dir, 'work');
    mkdirSync(full, { mode: 0o700 });
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0700`, 'ferry-test-full', full]);
    try {
      const cfg = join(dir, 'config.toml');
      writeFileSync(cfg, `[image]\nwork_dir = "${full}"\n`);
      await f(full, cfg);
    } finally {
      killFerries();
      try {
        execFileSync('umount', [full], { stdio: 'ignore' });
      } catch {
        try { execFileSync('umount', ['-l', full], { stdio: 'ignore' }); } catch { /* left for the machine's clean-up */ }
      }
      rmSync(dir, { recursive: true, force: true });
    }
  }

  /**
   * After a hit ferry: the source is the original process, untraced, not stopped, no longer
   * write-tracked, writing on with every page right; nothing is left on either side. Then it
   * is killed.
   */
  async function runsOnUnharmed(w: Workload): Promise<void> {
    const st = procState(w.pid);
    assert.equal(st.tracer, 0, 'untraced');
    assert.ok(st.state !== 'T' && st.state !== 't', `not stopped (${st.state})`);
    assert.equal(st.ppid, process.pid, 'the original process');
    await waitFor('the tracking to be gone', () => !writeTracked(w.pid), 5000);
    const m = w.ticks().length;
    await waitFor('the source to write on', () => w.ticks().length >= m + 2);
    assert.equal(await verify(w), 'PASS');
    assert.deepEqual(leftovers(workDir), [], 'nothing left on the target (spool, page store) or the source');
    assert.deepEqual(stubs(), []);
    process.kill(w.pid, 'SIGKILL');
  }

  for (const [fault, status] of [['SIGKILL', 137], ['SIGTERM', 143]] as const) {
    it(`${fault} after the first round: the source runs on untraced and untracked, the target holds nothing`, async () => {
      const w = await startDirtier(32, 10);
      const { r: recv, port } = await startReceiver(key, config);
      const mig = startFerry(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--config', config], 'precopy');
      await waitFor('ferry migrate to pause after its first round', () => /paused at precopy/.test(mig.stderr()), 60_000);
      // Meanwhile the source runs, tracked, not seized.
      const st = procState(w.pid);
      assert.equal(st.tracer, 0, 'not traced during the rounds');
      assert.notEqual(st.state, 'T');
      assert.equal(writeTracked(w.pid), true, 'its areas are write-tracked during the rounds');
      const n = w.ticks().length;
      await waitFor('the source to write on during the rounds', () => w.ticks().length >= n + 1);

      mig.child.kill(fault);
      const code = await exitOf(mig, 'ferry migrate');
      if (fault === 'SIGKILL') assert.equal(code, status);
      else assert.ok(code === status || code === 1, `exit ${code} after SIGTERM: ${mig.stderr()}`);
      if (fault === 'SIGTERM') {
        assert.match(mig.stderr(), new RegExp(`^ferry migrate: pre-copy of pid ${w.pid} interrupted by SIGTERM: it runs on here as it was \\(its memory no longer tracked\\)$`, 'm'));
        await waitFor('the receiver to report why', () => /reports: pre-copy of pid \d+ interrupted by SIGTERM/.test(recv.stderr()));
      }
      assert.equal(await exitOf(recv, 'ferry receive --once'), 1, recv.stderr());
      await runsOnUnharmed(w);
    });
  }

  // The first top-up round, and the last look after the target caught up with the top-ups
  // (its pages sent, not waited for): the last rounds before the freeze.
  for (const [cell, when] of [['topup', 'its first top-up round'], ['lastlook', 'its last look, the round after the top-ups']] as const) {
    it(`SIGKILL in ${when} right before the freeze: the source runs on untraced and untracked, the target holds nothing`, async () => {
      const w = await startDirtier(32, 10);
      const { r: recv, port } = await startReceiver(key, config);
      const mig = startFerry(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--config', config], cell);
      await waitFor(`ferry migrate to pause after ${when}`, () => new RegExp(`paused at ${cell}`).test(mig.stderr()), 60_000);
      // The checkpoint has begun (its frozen window made ready), yet the source runs, not seized.
      const st = procState(w.pid);
      assert.equal(st.tracer, 0, 'not traced before the freeze');
      assert.notEqual(st.state, 'T');
      assert.equal(writeTracked(w.pid), true, `its areas are write-tracked during ${when}`);
      mig.child.kill('SIGKILL');
      assert.equal(await exitOf(mig, 'ferry migrate'), 137);
      assert.equal(await exitOf(recv, 'ferry receive --once'), 1, recv.stderr());
      assert.deepEqual(leftovers(workDir).filter((n) => n.startsWith('.ferry-receive-')), [], 'the receiver removed its spool and page store');
      // The killed sender's private directory (made for its copy before the checkpoint began) is
      // removed by the next sender or receiver on the node, as after a kill while the image streams.
      const next = await startReceiver(key, config);
      next.r.child.kill('SIGTERM');
      await exitOf(next.r, 'ferry receive --once');
      await runsOnUnharmed(w);
    });
  }

  it('a target slow to take the rounds\' pages (its word held 3 s): the source runs, unfrozen, until it has; the downtime holds none of it', async () => {
    const w = await startDirtier(32, 10);
    const { r: recv, port } = await startReceiver(key, config, 'catchup+3000');
    const mig = startFerry(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--json', '--config', config]);
    own(w.pid);
    await waitFor('the receiver to hold its word', () => /paused at catchup/.test(recv.stderr()), 60_000);
    const n = w.ticks().length;
    await waitFor('the source to write on while the target is behind', () => w.ticks().length >= n + 1, 2500);
    assert.doesNotMatch(recv.stderr(), /going on after catchup/, 'still within the 3 s');
    const st = procState(w.pid);
    assert.equal(st.tracer, 0, 'not frozen before the target has caught up');
    assert.notEqual(st.state, 't');
    assert.equal(st.ppid, process.pid, 'the original process');
    assert.equal(await exitOf(mig, 'ferry migrate'), 0, mig.stderr());
    assert.equal(await exitOf(recv, 'ferry receive --once'), 0, recv.stderr());
    await w.exited; // the source was killed and reaped here
    const done = records(mig).at(-1)!;
    assert.ok((done['downtimeMs'] as number) < 2000, `the downtime ${String(done['downtimeMs'])} ms holds the target's 3 s: ${JSON.stringify(done)}`);
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS');
    assert.deepEqual(leftovers(workDir), [], 'nothing left in image.work_dir');
    process.kill(w.pid, 'SIGKILL');
  });

  it('the target failing to take the rounds\' pages (its store write fails: catchup!): the sender does not wait forever; one line, the source runs on, nothing left', async () => {
    const w = await startDirtier(32, 10);
    const { r: recv, port } = await startReceiver(key, config, 'catchup!');
    const mig = startFerry(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--config', config]);
    assert.equal(await exitOf(mig, 'ferry migrate', 60_000), 1, mig.stderr());
    const lines = mig.stderr().trim().split('\n');
    assert.equal(lines.length, 1, mig.stderr());
    // The target says why and ends the connection: the sender stops waiting at once, with its reason.
    assert.match(lines[0]!, new RegExp(`^ferry migrate: tcp://127\\.0\\.0\\.1:${port} failed: ferry-test: failure injected at catchup; so pid ${w.pid} was let go as it was: it runs on here$`));
    assert.equal(await exitOf(recv, 'ferry receive --once'), 1, recv.stderr());
    assert.match(recv.stderr(), /failure injected at catchup/);
    await runsOnUnharmed(w);
  });

  for (const who of ['ferry receive', 'ferry migrate'] as const) {
    it(`SIGKILL of ${who} while the sender waits for the target to take the rounds' pages: the source runs on untraced and untracked, nothing left`, async () => {
      const w = await startDirtier(32, 10);
      const { r: recv, port } = await startReceiver(key, config, 'catchup');
      const mig = startFerry(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--config', config]);
      await waitFor('the receiver to hold its word', () => /paused at catchup/.test(recv.stderr()), 60_000);
      const st = procState(w.pid);
      assert.equal(st.tracer, 0, 'not seized while the sender waits');
      assert.notEqual(st.state, 't');
      assert.equal(writeTracked(w.pid), true, 'its areas are write-tracked meanwhile');
      // The target's staging stub holds the root's pages (migrate/staging.ts): it goes too.
      assert.equal(stubs().length, 1, 'the target stages the root\'s memory meanwhile');
      const [hit, other, otherName] = who === 'ferry receive' ? [recv, mig, 'ferry migrate'] : [mig, recv, 'ferry receive --once'];
      hit.child.kill('SIGKILL');
      assert.equal(await exitOf(hit, who), 137);
      assert.equal(await exitOf(other, otherName), 1, other.stderr());
      if (who === 'ferry receive') {
        const lines = mig.stderr().trim().split('\n');
        assert.equal(lines.length, 1, mig.stderr());
        assert.match(lines[0]!, new RegExp(`^ferry migrate: .*pid ${w.pid}.* runs on here`));
      }
      // What the killed side made is removed by the next ferry on the node (as after any kill).
      const next = await startReceiver(key, config);
      next.r.child.kill('SIGTERM');
      await exitOf(next.r, 'ferry receive --once');
      await runsOnUnharmed(w);
    });
  }

  it('SIGKILL of ferry receive right after it forked the root from the memory it staged: nothing of it is left; the kept copy restores', async () => {
    const w = await startDirtier(32, 10);
    // The root is forked from the staging stub (restore/tree.ts forkRoot), not seized yet.
    const { r: recv, port } = await startReceiver(key, config, 'forked');
    const mig = startFerry(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--config', config]);
    await waitFor('the receiver to pause after forking the root', () => /paused at forked/.test(recv.stderr()), 60_000,
      () => `ferry migrate: ${mig.stderr()}; ferry receive: ${recv.stderr()}`);
    // The staging stub and the root forked from it, which waits untraced in the stub's loop.
    assert.equal(stubs().length, 2, 'the staging stub and the root forked from it');
    recv.child.kill('SIGKILL');
    assert.equal(await exitOf(recv, 'ferry receive --once'), 137);
    assert.equal(await exitOf(mig, 'ferry migrate'), 1, mig.stderr());
    await w.exited;
    // The source was handed over: whether the target restored it is the sender's to say it
    // cannot know, and it keeps its copy.
    const kept = new RegExp(`^ferry migrate: tcp://127\\.0\\.0\\.1:${port} closed the connection while restoring the tree after pid ${w.pid} was handed over: .* restore it here: ferry restore --image (\\S+)\n$`).exec(mig.stderr());
    assert.ok(kept, mig.stderr());
    // Both died with the receiver: the stub (PTRACE_O_EXITKILL), the root (its parent-death signal).
    await waitFor('the target\'s processes to die with it', () => stubs().length === 0, 5000);
    await waitFor('the pid to be free (init reaps the dead root)', () => !alive(w.pid), 60_000);
    const rs = startFerry(['restore', '--image', kept[1]!, '--config', config]);
    assert.equal(await exitOf(rs, 'ferry restore'), 0, rs.stderr());
    const n = w.ticks().length;
    await waitFor('ticks after the restore of the kept copy', () => w.ticks().length >= n + 2);
    assert.equal(await verify(w), 'PASS');
    rmSync(kept[1]!, { force: true });
    const next = await startReceiver(key, config); // sweeps what the killed receiver left
    next.r.child.kill('SIGTERM');
    await exitOf(next.r, 'ferry receive --once');
    assert.deepEqual(leftovers(workDir), []);
    assert.deepEqual(stubs(), []);
    process.kill(w.pid, 'SIGKILL');
  });

  // The sender waits for the socket while the target has stopped reading (paused as the image
  // begins): SIGTERM then ends the wait at once, the source let go, instead of when the
  // connection times out (30 s of silence) with the tree stopped all along.
  it('SIGTERM to the sender waiting for a target that stopped reading (stop and copy, 32 MiB): the source is let go at once', async () => {
    const w = await startDirtier(32, 10);
    const { r: recv, port } = await startReceiver(key, config, 'streaming+60000');
    const mig = startFerry(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--config', config, '--no-pre-copy']);
    await waitFor('the receiver to pause as the image begins', () => /paused at streaming/.test(recv.stderr()), 60_000,
      () => `ferry migrate: ${mig.stderr()}; ferry receive: ${recv.stderr()}`);
    // The socket fills (the target's kernel takes a few MiB, then nothing): the checkpoint waits.
    await new Promise((r) => setTimeout(r, 1500));
    assert.notEqual(procState(w.pid).tracer, 0, 'the sender holds the source while it waits');
    const t0 = Date.now();
    mig.child.kill('SIGTERM');
    assert.equal(await exitOf(mig, 'ferry migrate'), 143, mig.stderr());
    const ms = Date.now() - t0;
    assert.ok(ms < 5000, `the sender took ${ms} ms to stop`);
    assert.match(mig.stderr(), new RegExp(`^ferry migrate: checkpoint of pid ${w.pid} interrupted by SIGTERM: the process was let go as it was and no image was written$`, 'm'));
    recv.child.kill('SIGTERM'); // its pause ends with it, and it removes its spool
    await exitOf(recv, 'ferry receive --once');
    await runsOnUnharmed(w);
  });

  it('the target\'s staging stub killed after the rounds (the OOM killer\'s pick): the root is spawned and written instead, every page right', async () => {
    const w = await startDirtier(32, 10);
    const { r: recv, port } = await startReceiver(key, config, 'streaming+3000');
    const mig = startFerry(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--json', '--config', config]);
    await waitFor('the receiver to pause as the image begins', () => /paused at streaming/.test(recv.stderr()), 60_000,
      () => `ferry migrate: ${mig.stderr()}; ferry receive: ${recv.stderr()}`);
    const staging = stubs();
    assert.equal(staging.length, 1, 'the staging stub holds the root\'s pages');
    process.kill(staging[0]!, 'SIGKILL');
    assert.equal(await exitOf(mig, 'ferry migrate'), 0, mig.stderr());
    assert.equal(await exitOf(recv, 'ferry receive --once'), 0, recv.stderr());
    await w.exited;
    const restored = records(recv).find((x) => x['phase'] === 'restore')!;
    assert.equal(restored['stagedPages'], 0, `nothing was taken from the dead stub: ${JSON.stringify(restored)}`);
    assert.equal(procState(w.pid).tracer, 0);
    const n = w.ticks().length;
    await waitFor('ticks after the migration', () => w.ticks().length >= n + 2);
    assert.equal(await verify(w), 'PASS');
    assert.deepEqual(stubs(), []);
    assert.deepEqual(leftovers(workDir), []);
    process.kill(w.pid, 'SIGKILL');
  });

  // On another node the staging stub holds the root's pid, to become the root (migrate/staging.ts):
  // dead, it must give the pid back for the root spawned instead. A receiver in a pid namespace
  // of its own is such a node here.
  it('the staging stub that holds the root\'s pid (a receiver in its own pid namespace) killed after the rounds: the root is spawned with that pid instead', async () => {
    const w = await startDirtier(32, 10);
    const { r: recv, port } = await startReceiverInPidns(key, config, 'streaming+3000');
    try {
      const mig = startFerry(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--json', '--config', config]);
      own(w.pid);
      await waitFor('the receiver to pause as the image begins', () => /paused at streaming/.test(recv.stderr()), 60_000,
        () => `ferry migrate: ${mig.stderr()}; ferry receive: ${recv.stderr()}`);
      const staging = stubs();
      assert.equal(staging.length, 1, 'the staging stub holds the root\'s pages');
      assert.equal(pidFromNs(recv.init(), w.pid), staging[0], 'with the root\'s pid there');
      process.kill(staging[0]!, 'SIGKILL');
      assert.equal(await exitOf(mig, 'ferry migrate'), 0, mig.stderr());
      await waitFor('the receiver to exit', () => recv.ferryExit() !== undefined, 60_000);
      assert.equal(recv.ferryExit(), 0, recv.stderr());
      await w.exited;
      disown(w.pid); // reaped: the process runs on as another pid here
      const restored = records(recv).find((x) => x['phase'] === 'restore')!;
      assert.equal(restored['stagedPages'], 0, `nothing was taken from the dead stub: ${JSON.stringify(restored)}`);
      assert.equal(restored['stagedRoot'], undefined, JSON.stringify(restored));
      const there = pidFromNs(recv.init(), w.pid);
      assert.ok(there !== undefined && there !== staging[0], `pid ${w.pid} runs again there, a new process`);
      assert.equal(procState(there).tracer, 0);
      const n = w.ticks().length;
      await waitFor('ticks after the migration', () => w.ticks().length >= n + 2);
      assert.equal(await askVerdict(there, w.text), 'PASS');
      assert.deepEqual(stubs(), []);
      assert.deepEqual(leftovers(workDir), []);
    } finally {
      recv.child.kill('SIGKILL'); // its namespace goes, with the restored process
    }
  });

  // The stub that became the root is the restore's: a restore failing after that kills and
  // reaps it like any root it made (restore/tree.ts destroyTree), nothing of staging's does.
  it('a restore that fails after the staging stub became the root (a receiver in its own pid namespace): nothing is left there; the source\'s copy is restored', async () => {
    const w = await startDirtier(32, 10);
    const { r: recv, port } = await startReceiverInPidns(key, config, 'rebuilt!');
    try {
      const mig = startFerry(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--json', '--config', config]);
      own(w.pid);
      assert.equal(await exitOf(mig, 'ferry migrate'), 1, mig.stderr());
      await waitFor('the receiver to exit', () => recv.ferryExit() !== undefined, 60_000);
      assert.equal(recv.ferryExit(), 1, recv.stderr());
      assert.match(recv.stderr(), /rebuilt/, recv.stderr());
      // Nothing holds the pid there: the root it became was killed and reaped.
      assert.equal(pidFromNs(recv.init(), w.pid), undefined, 'no process has the pid in the receiver\'s namespace');
      assert.deepEqual(stubs(), []);
      // The source restored here from its copy, as after any failed restore on the target.
      assert.ok(alive(w.pid), `pid ${w.pid} runs again here: ${mig.stderr()}`);
      assert.equal(procState(w.pid).tracer, 0);
      const n = w.ticks().length;
      await waitFor('ticks after the local restore', () => w.ticks().length >= n + 2);
      assert.equal(await verify(w), 'PASS');
      assert.deepEqual(leftovers(workDir), []);
      process.kill(w.pid, 'SIGKILL');
    } finally {
      recv.child.kill('SIGKILL');
    }
  });

  it('SIGKILL while the tracking holds the source stopped to register its areas: it runs on untraced and untracked', async () => {
    const w = await startDirtier(32, 10);
    const { r: recv, port } = await startReceiver(key, config);
    const mig = startFerry(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--config', config], 'holding');
    await waitFor('ferry migrate to pause inside its hold', () => /paused at holding/.test(mig.stderr()), 60_000);
    // The hold is real: the source is stopped, traced by ferry.
    const held = procState(w.pid);
    assert.equal(held.tracer, mig.child.pid, 'held by ferry migrate');
    assert.equal(held.state, 't', 'stopped by its tracer');

    mig.child.kill('SIGKILL');
    assert.equal(await exitOf(mig, 'ferry migrate'), 137);
    assert.equal(await exitOf(recv, 'ferry receive --once'), 1, recv.stderr());
    await waitFor('the kernel to let the source go', () => procState(w.pid).tracer === 0, 5000);
    await runsOnUnharmed(w);
  });

  // The source's copy of the image (pre-copy: every frame sent, FrameLog; stop and copy: the
  // tar, Pump) is written on libuv's pool while the stream goes on: a write that fails there
  // must fail the migration in one line before the kill, the source running on.
  for (const mode of ['pre-copy', 'stop and copy'] as const) {
    it(`the source's copy cannot be written (its image.work_dir fills), ${mode}: one line, the source runs on, nothing left`, () => withFullWorkDir('ferry-precopy-full-', '8m', async (full, cfg) => {
      const w = await startDirtier(32, 10);
      const { r: recv, port } = await startReceiver(key, config);
      const mig = startFerry(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--config', cfg,
        ...(mode === 'stop and copy' ? ['--no-pre-copy'] : [])]);
      assert.equal(await exitOf(mig, 'ferry migrate'), 1, mig.stderr());
      const lines = mig.stderr().trim().split('\n');
      assert.equal(lines.length, 1, mig.stderr());
      assert.match(lines[0]!, new RegExp(`^ferry migrate: cannot keep the (local )?copy of the (image|migration's frames) in ${full}(/\\S*)? \\(image\\.work_dir\\): .*ENOSPC.*[;,] so .*pid ${w.pid} .*runs on here`));
      assert.equal(await exitOf(recv, 'ferry receive --once'), 1, recv.stderr());
      assert.deepEqual(readdirSync(full), [], 'nothing left in the full work_dir');
      await runsOnUnharmed(w);
    }));
  }

  // The target's spool (stop and copy: every byte of the image) is written on libuv's pool as
  // the image arrives: a write that fails there fails the migration before the kill.
  it('the target\'s spool cannot be written (its image.work_dir fills), stop and copy: the source runs on, nothing left', () => withFullWorkDir('ferry-precopy-full-target-', '8m', async (full, cfg) => {
    const w = await startDirtier(32, 10);
    const { r: recv, port } = await startReceiver(key, cfg);
    const mig = startFerry(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--config', config, '--no-pre-copy', '--json']);
    assert.equal(await exitOf(mig, 'ferry migrate'), 1, mig.stderr());
    const lines = mig.stderr().trim().split('\n');
    assert.equal(lines.length, 1, mig.stderr());
    // The target's reason, told before it hung up (not "the connection failed: EPIPE").
    assert.match(lines[0]!, new RegExp(`^ferry migrate: tcp://127\\.0\\.0\\.1:${port} failed: cannot spool the image into ${full}/\\S+ \\(image\\.work_dir\\): .*ENOSPC.*; so pid ${w.pid} was let go as it was: it runs on here$`));
    // At once: the target hung up at its failed write, while the image was still streaming
    // (a failure found only at the image's end would come after the checkpoint's record).
    assert.deepEqual(records(mig).filter((x) => x['phase'] === 'checkpoint'), [], 'failed before the image was whole');
    assert.equal(await exitOf(recv, 'ferry receive --once'), 1, recv.stderr());
    assert.match(recv.stderr(), new RegExp(`^ferry receive: .*cannot spool the image into ${full}/\\S+ \\(image\\.work_dir\\): .*ENOSPC`, 'm'));
    assert.deepEqual(readdirSync(full), [], 'nothing left in the full work_dir');
    await runsOnUnharmed(w);
  }));

  // Paused for 3 s after the first top-up round, or after the last look; the file system
  // fills meanwhile, so what the copy takes next (a second top-up or the last look, or the
  // frozen image's frames, written while the tree is stopped) cannot be written.
  for (const [cell, when] of [['topup', 'during the top-up'], ['lastlook', 'after the last look (its next writes the frozen image\'s frames)']] as const) {
    it(`the source's image.work_dir fills ${when} right before the freeze: one line naming the pid, the source runs on, nothing left`, () => withFullWorkDir('ferry-precopy-full-', '48m', async (full, cfg) => {
      const w = await startDirtier(32, 10);
      const { r: recv, port } = await startReceiver(key, config);
      const mig = startFerry(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--config', cfg], `${cell}+3000`);
      await waitFor(`ferry migrate to pause at ${cell}`, () => new RegExp(`paused at ${cell}`).test(mig.stderr()), 60_000);
      try { writeFileSync(join(full, 'fill'), Buffer.alloc(48 << 20)); } catch { /* full: what it is for */ }
      assert.equal(await exitOf(mig, 'ferry migrate'), 1, mig.stderr());
      const lines = mig.stderr().trim().split('\n').filter((l) => !l.startsWith('ferry-test: '));
      assert.equal(lines.length, 1, mig.stderr());
      assert.match(lines[0]!, new RegExp(`^ferry migrate: cannot keep the local copy of the migration's frames in ${full} \\(image\\.work_dir\\): .*ENOSPC.*[;,] so .*pid ${w.pid} .*runs on here`));
      assert.equal(await exitOf(recv, 'ferry receive --once'), 1, recv.stderr());
      rmSync(join(full, 'fill'), { force: true });
      assert.deepEqual(readdirSync(full), [], 'nothing left in the full work_dir');
      await runsOnUnharmed(w);
    }));
  }

  it('a forked tree\'s shared memory stays shared through a round (read in place, not pinned), and SIGTERM lets it go', async () => {
    const w = await startWorkload(join(WORKLOADS, 'cow'), ['DIR', '32']);
    // Its children are not the test's own: they go with the root, or here if it fails (each
    // only while it is the same process: its start time unchanged, so a reused pid is spared).
    const started = (pid: number): string | undefined => {
      try {
        return readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /s, '').split(' ')[19];
      } catch {
        return undefined;
      }
    };
    const kids = readFileSync(`/proc/${w.pid}/task/${w.pid}/children`, 'utf8').split(' ').filter(Boolean).map(Number)
      .map((pid) => ({ pid, at: started(pid) }));
    try {
      const before = treePss(w.pid);
      const { r: recv, port } = await startReceiver(key, config);
      const mig = startFerry(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--config', config], 'precopy');
      await waitFor('ferry migrate to pause after its first round', () => /paused at precopy/.test(mig.stderr()), 60_000);
      const during = treePss(w.pid);
      // A pin of each shared page would have given each of the five processes a copy: ~5x.
      assert.ok(during < before * 1.25, `the tree's PSS went from ${before} kB to ${during} kB in the first round`);
      mig.child.kill('SIGTERM');
      await exitOf(mig, 'ferry migrate');
      await exitOf(recv, 'ferry receive --once');
      assert.equal(procState(w.pid).tracer, 0);
      assert.equal(await verify(w), 'PASS');
    } finally {
      for (const k of kids) {
        if (k.at === undefined || started(k.pid) !== k.at) continue; // gone: it exited after its check
        try { process.kill(k.pid, 'SIGKILL'); } catch { /* exited meanwhile */ }
      }
    }
  });
});
