/**
 * Fault cell of lazy pages (src/restore/lazy.ts): `ferry receive` SIGKILLed after the let-go
 * of a lazy restore, before its background fill (FERRY_TEST_PAUSE_AT=lazy), while most of the
 * tree's memory is still missing. Its userfaultfds close with it; were they the only ones, the
 * faulting threads would go on with zero pages. The watchdog holds copies: the tree must be
 * killed, not left running on zeros, and nothing is left on the target (no process, stub or
 * spool). The source was killed at the hand-over: ferry migrate keeps its copy and says so.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { after, describe, it } from 'node:test';
import { needs } from '../helpers/env.js';
import { cleanup, own, stubs, waitFor } from '../helpers/processes.js';
import { exitOf, killFerries, leftovers, migrationDir, records, startDirtier, startFerry } from '../helpers/precopy-run.js';

const skip = needs('root', 'build');
after(() => { killFerries(); cleanup(); });

/** Whether `pid` runs (exists and is not a zombie). */
function running(pid: number): boolean {
  try {
    return !/^\S+ \(.*\) [ZX]/s.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

describe('fault cell: ferry receive hit while lazy pages are missing', { skip, timeout: 300_000 }, () => {
  const { workDir, config, key } = skip ? { workDir: '', config: '', key: '' } : migrationDir('ferry-lazy-faults-');

  it('SIGKILL before the background fill: the restored tree is killed, the target holds nothing', async () => {
    const w = await startDirtier(64, 10);
    const recv = startFerry(['receive', '--listen', '127.0.0.1:0', '--key', key, '--json', '--once', '--max-creds', 'root', '--config', config], 'lazy');
    await waitFor('the receiver to listen', () => records(recv).some((x) => x['phase'] === 'listen') || recv.child.exitCode !== null);
    const port = records(recv).find((x) => x['phase'] === 'listen')!['port'] as number;
    const mig = startFerry(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--lazy', '--json', '--config', config]);
    own(w.pid);
    await waitFor('the target to run the tree with its pages missing', () => /paused at lazy/.test(recv.stderr())
      && records(recv).some((x) => x['phase'] === 'restore'), 90_000);
    await w.exited; // the source was killed at the hand-over and reaped here
    assert.ok(running(w.pid), 'the tree runs on the target');
    assert.match(readFileSync(`/proc/${w.pid}/smaps`, 'utf8'), /^VmFlags:.* um( |$)/m, 'areas registered for missing pages');

    // The watchdog holds the userfaultfds, so that ferry's death does not release them.
    assert.ok(readdirSync('/proc').filter((d) => /^\d+$/.test(d)).some((d) => {
      try {
        return readFileSync(`/proc/${d}/comm`, 'utf8').startsWith('ferry-watchdog')
          && readdirSync(`/proc/${d}/fd`).some((fd) => readlinkSync(`/proc/${d}/fd/${fd}`) === 'anon_inode:[userfaultfd]');
      } catch {
        return false;
      }
    }), 'a watchdog holds the userfaultfds');
    recv.child.kill('SIGKILL');
    assert.equal(await exitOf(recv, 'ferry receive'), 137);
    await waitFor('the restored tree to be killed', () => !running(w.pid), 15_000);
    assert.doesNotMatch(w.text(), /^FAIL/m, 'it never ran on a zero page');

    assert.equal(await exitOf(mig, 'ferry migrate'), 1, mig.stderr());
    assert.match(mig.stderr(), /whether it runs on tcp:\/\/127\.0\.0\.1:\d+ is unknown/);
    // The target holds nothing; the source keeps its copy of the image (and nothing else).
    assert.deepEqual(leftovers(workDir).filter((n) => !/^ferry-migrate-\d+-.*\.tar$/.test(n)), []);
    assert.equal(leftovers(workDir).length, 1, 'the source kept its copy');
    assert.deepEqual(stubs(), []);
  });
});
