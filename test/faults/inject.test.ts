/**
 * Fault cells of a checkpoint killed inside its one-round-trip batch (native/inject-blob.cc,
 * src/dump/task-state.ts): the main thread's calls are run by a program ferry wrote into the
 * process, which then waits in ppoll for ferry to interrupt it. Ferry is SIGKILLed right there
 * (FERRY_TEST_PAUSE_AT=blob, a synchronous pause between the PTRACE_CONT and the interrupt:
 * the calls ran, every signal is still blocked, the registers are the program's). The kernel
 * detaches the process; after its 3 s wait the program puts it back by itself: its registers
 * and flags (build/workloads/blobwait compute: values and a compare's flags live across the
 * stop), its signal mask (exactly SIGUSR2), its SIGTRAP handler (never reset: no trap was
 * forced), a read(2) on an empty pipe that restarts and gets the test's byte, a nanosleep that
 * restarts through restart_syscall and returns 0 after its full time. Ferry's data area is
 * unmapped; the one r-x page of the program stays (docs/safety.md).
 */
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, WORKLOADS } from '../helpers/env.js';
import { cleanup, ferry, startWorkload, verify, waitFor } from '../helpers/processes.js';
import { hit, shown, status, whilePaused, type Problems } from './helpers.js';
import { exitOf, killFerries, startFerry } from '../helpers/precopy-run.js';

const skip = needs('root', 'build');
after(() => { killFerries(); cleanup(); });

const BLOBWAIT = join(WORKLOADS, 'blobwait');
const SIGUSR2_ONLY = 1n << 11n;
const woke = (text: string): string[] => text.split('\n').filter((l) => l.startsWith('woke '));
const mapsOf = (pid: number): string[] => readFileSync(`/proc/${pid}/maps`, 'utf8').trim().split('\n');

/** Asserts that pid's layout is `maps` but for at most the program's one r-x page, which stays. */
function onlyProgramPageAdded(pid: number, maps: readonly string[]): void {
  const added = mapsOf(pid).filter((l) => !maps.includes(l));
  assert.ok(added.length <= 1 && added.every((l) => /^[0-9a-f]+-[0-9a-f]+ r-xp 00000000 00:00 0 *$/.test(l)),
    `only the program's r-x page may stay: ${added.join(' | ')}`);
}

describe('fault cells: a checkpoint killed while its injected program runs in the process', { skip, timeout: 180_000 }, () => {
  for (const mode of ['read', 'nanosleep', 'compute'] as const) {
    it(`SIGKILL at blob (${mode}): the process puts itself back, runs on as it was`, async () => {
      const w = await startWorkload(BLOBWAIT, [mode]);
      const wfd = Number(/wfd=(\d+)/.exec(w.text())?.[1]);
      const images = join(w.dir, 'images');
      mkdirSync(images);
      if (mode === 'nanosleep') await waitFor('a first sleep', () => woke(w.text()).length > 0, 5000);
      const maps = mapsOf(w.pid);
      const p: Problems = [];
      let wokeAtKill = 0;
      await whilePaused(p, ['checkpoint', '--pid', String(w.pid), '--image', join(images, 'b.tar'), '--leave-running'], 'blob', async (run) => {
        const st = status(w.pid);
        assert.equal(st?.tracer, run.pid, 'traced by the paused ferry');
        assert.notEqual(st?.sigblk, SIGUSR2_ONLY, `every signal blocked inside the batch: ${shown(st)}`);
        wokeAtKill = woke(w.text()).length;
        const r = await hit(run, 'SIGKILL', p);
        assert.equal(r.signal, 'SIGKILL');
      });
      assert.deepEqual(p, []);
      // Untraced at once; its own mask back once the program's wait (3 s) ends.
      await waitFor(`pid ${w.pid} to put itself back`, () => {
        const st = status(w.pid);
        return st !== undefined && st.tracer === 0 && st.sigblk === SIGUSR2_ONLY && !'tTZX'.includes(st.state);
      }, 10_000, () => shown(status(w.pid)));
      if (mode === 'read') {
        assert.deepEqual(woke(w.text()).slice(wokeAtKill), [], 'the read did not come back on its own');
        writeFileSync(`/proc/${w.pid}/fd/${wfd}`, 'x');
        await waitFor('the read to return the byte', () => woke(w.text()).length > wokeAtKill, 5000, () => w.text());
        assert.deepEqual(woke(w.text()).slice(wokeAtKill), ['woke ret=1 errno=0 byte=x']);
      }
      if (mode === 'nanosleep') {
        await waitFor('the sleep to end', () => woke(w.text()).length > wokeAtKill, 10_000, () => w.text());
        assert.match(woke(w.text())[wokeAtKill]!, /^woke ret=0 errno=0 ms=\d+$/);
      }
      onlyProgramPageAdded(w.pid, maps);
      assert.ok(!readdirSync(images).includes('b.tar'), 'no image in place');
      assert.equal(await verify(w), 'PASS', w.text());
    });
  }

  it('ferry back only after the program put the process back (blob+4500), a handled signal let through meanwhile: the checkpoint fails, the process runs on, its memory untouched', async () => {
    const w = await startWorkload(BLOBWAIT, ['compute']);
    const images = join(w.dir, 'images');
    mkdirSync(images);
    const maps = mapsOf(w.pid);
    const run = startFerry(['checkpoint', '--pid', String(w.pid), '--image', join(images, 'late.tar'), '--leave-running'], 'blob+4500');
    await waitFor('ferry to pause in the batch', () => /paused at blob/.test(run.stderr()), 30_000, () => run.stderr());
    // Queued, blocked: it runs once the program puts the mask back (3 s), and its handler (2.5 s)
    // is still running when ferry comes back (4.5 s). Ferry must then leave the process's memory
    // alone: the handler returns into the program, which ends putting the process back.
    process.kill(w.pid, 'SIGALRM');
    assert.equal(await exitOf(run, 'ferry checkpoint'), 1, run.stderr());
    const lines = run.stderr().trim().split('\n').filter((l) => !l.startsWith('ferry-test: '));
    assert.equal(lines.length, 1, run.stderr());
    assert.match(lines[0]!, new RegExp(`^ferry checkpoint: .*pid ${w.pid}`));
    await waitFor('the handler to end', () => /^alarm handled$/m.test(w.text()), 10_000, () => w.text());
    const st = status(w.pid);
    assert.ok(st !== undefined && st.tracer === 0 && st.sigblk === SIGUSR2_ONLY, shown(st));
    onlyProgramPageAdded(w.pid, maps);
    assert.ok(!readdirSync(images).includes('late.tar'), 'no image in place');
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('a checkpoint that is not hit: the batch runs through the program, the process runs on as it was', async () => {
    const w = await startWorkload(BLOBWAIT, ['compute']);
    const images = join(w.dir, 'images');
    mkdirSync(images);
    const maps = mapsOf(w.pid);
    for (let i = 0; i < 3; i++) {
      const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(images, `c${i}.tar`), '--leave-running']);
      assert.equal(cp.code, 0, cp.stderr);
    }
    assert.deepEqual(mapsOf(w.pid), maps, 'the layout as it was');
    assert.equal(await verify(w), 'PASS', w.text());
  });
});
