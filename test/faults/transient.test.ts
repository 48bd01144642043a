/**
 * Fault cells of the names restore makes for a moment (src/files/transient.ts): a removed FIFO
 * or directory held open (build/workloads/removed), a removed name of a file that has
 * another (build/workloads/linkgone), removed device nodes (build/workloads/devgone) and a
 * removed root directory (build/workloads/chrooted removed). Restore is SIGKILLed right after
 * it made such a name (FERRY_TEST_PAUSE_AT=transient): the name is there, written down in
 * ferry's journal; the next restore sweeps it before it starts, restores the workload, which
 * passes its check, and no name is left beside the workload's own, nor any journal entry.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { TRANSIENT_DIR } from '../../src/files/transient.js';
import { needs, WORKLOADS } from '../helpers/env.js';
import { checkpointTreeFreed, cleanup, ferry, own, startWorkload, verify } from '../helpers/processes.js';
import { hit, pidsFree, whilePaused, type Problems } from './helpers.js';

const skip = needs('root', 'build');
after(cleanup);

/** The journal's entries of the ferry with pid `pid`. */
const entriesOf = (pid: number): string[] => (existsSync(TRANSIENT_DIR) ? readdirSync(TRANSIENT_DIR).filter((f) => f.startsWith(`${pid}-`)) : []);

describe('fault cells: restore killed while it holds a name it made for a moment', { skip, timeout: 180_000 }, () => {
  for (const [workload, args, made] of [['removed', [], /^(ff|d)$/], ['linkgone', [], /^a$/], ['devgone', [], /^(null|sub)$/], ['chrooted', ['removed'], /^jail$/]] as const) {
    it(`${[workload, ...args].join(' ')}: SIGKILL at transient; the next restore sweeps the name and restores`, async () => {
      const w = await startWorkload(join(WORKLOADS, workload), ['DIR', ...args]);
      const image = join(w.dir, `${workload}.tar`);
      const pids = await checkpointTreeFreed(w, image);
      const before = readdirSync(w.dir).filter((n) => made.test(n));
      assert.deepEqual(before, [], 'the names are removed before the restore');

      const p: Problems = [];
      let killed = 0; // the killed ferry's pid: its journal entries are named after it
      await whilePaused(p, ['restore', '--image', image], 'transient', async (run) => {
        killed = run.child.pid!;
        const left = readdirSync(w.dir).filter((n) => made.test(n) || n.includes('.ferry-removed-'));
        assert.equal(left.length, 1, `one name made for the moment: ${readdirSync(w.dir).join(', ')}`);
        assert.ok(entriesOf(killed).length >= 1, 'written down in the journal first');
        await hit(run, 'SIGKILL', p);
      });
      assert.deepEqual(p, []);
      assert.deepEqual(await pidsFree(pids), [], 'nothing of the killed restore holds the pids');

      // The retry sweeps the name, then restores.
      const rs = ferry(['restore', '--image', image]);
      assert.equal(rs.code, 0, rs.stderr);
      pids.forEach(own);
      assert.equal(await verify(w), 'PASS');
      assert.deepEqual(readdirSync(w.dir).filter((n) => made.test(n) || n.includes('.ferry-removed-')), [], 'no name is left');
      assert.deepEqual(entriesOf(killed), [], 'no journal entry of the killed ferry is left');
    });
  }
});
