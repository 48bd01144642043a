/**
 * Fault cells of the names restore makes for a moment (src/files/transient.ts): a removed FIFO
 * or directory held open (build/workloads/removed), a removed name of a file that has
 * another (build/workloads/linkgone), removed device nodes (build/workloads/devgone), removed
 * nodes each held by several open files (build/workloads/gonetwice: taken again by name for the
 * O_PATH ones while the name exists), a removed root directory (build/workloads/chrooted
 * removed) and a thread's own removed working directory held open by its process too
 * (build/workloads/threadfs removed-fd), and the removed directory of a deleted file, made for
 * the file's create (build/workloads/ghostdir), and the directory of ferry's made beside the
 * taken name of a deleted executable (build/workloads/exegone replace), and a deleted file made
 * again at its name before it is unlinked (build/workloads/mapgone: a library only mapped). Restore is SIGKILLed right after it made such a name (FERRY_TEST_PAUSE_AT=transient): the name is there, written down in
 * ferry's journal; the next restore sweeps it before it starts, restores the workload, which
 * passes its check, and no name is left beside the workload's own, nor any journal entry.
 *
 * And the sweep itself, against processes that make such a node through ferry's own code
 * (files/transient.ts makeTransient) and SIGKILL themselves: with the node under ferry's own
 * name before its inode is written down, or at its name after; the sweep removes what they
 * made and leaves a node of the very same shape (root's, the same mode) that someone else made
 * at the name afterwards, and the made node itself once it has another name.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readdirSync, renameSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, describe, it } from 'node:test';
import { sweepTransientNames, TRANSIENT_DIR } from '../../src/files/transient.js';
import { needs, WORKLOADS } from '../helpers/env.js';
import { checkpointTreeFreed, cleanup, ferry, own, scratchDir, startWorkload, verify } from '../helpers/processes.js';
import { hit, pidsFree, whilePaused, type Problems } from './helpers.js';

const skip = needs('root', 'build');
after(cleanup);

/** The journal's entries of the ferry with pid `pid`. */
const entriesOf = (pid: number): string[] => (existsSync(TRANSIENT_DIR) ? readdirSync(TRANSIENT_DIR).filter((f) => f.startsWith(`${pid}-`)) : []);

describe('fault cells: restore killed while it holds a name it made for a moment', { skip, timeout: 180_000 }, () => {
  // threadfs removed-fd: a thread's own removed working directory, which the process holds open too.
  for (const [workload, args, made] of [['removed', ['DIR'], /^(ff|d)$/], ['linkgone', ['DIR'], /^a$/], ['devgone', ['DIR'], /^(null|sub)$/],
    ['gonetwice', ['DIR'], /^(null|ff|sym)$/], ['chrooted', ['DIR', 'removed'], /^jail$/], ['threadfs', ['removed-fd'], /^b$/],
    ['ghostdir', ['DIR'], /^logs$/], ['mapgone', ['DIR'], /^lib/]] as const) {
    it(`${[workload, ...args.filter((a) => a !== 'DIR')].join(' ')}: SIGKILL at transient; the next restore sweeps the name and restores`, async () => {
      const w = await startWorkload(join(WORKLOADS, workload), [...args]);
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

describe('fault cell: restore killed while it makes a deleted file whose name was taken', { skip, timeout: 180_000 }, () => {
  // exegone replace: its executable renamed over by a new binary; restore makes the removed one
  // through a directory of its own beside the name (deleted.ts createShadowed).
  it('exegone replace: SIGKILL at transient; the next restore sweeps ferry\'s directory and restores', async () => {
    const bin = join(scratchDir(), 'exegone-bin');
    copyFileSync(join(WORKLOADS, 'exegone'), bin);
    chmodSync(bin, 0o755);
    const w = await startWorkload(bin, ['replace']);
    const image = join(w.dir, 'exegone.tar');
    const pids = await checkpointTreeFreed(w, image);
    const ours = (): string[] => readdirSync(dirname(bin)).filter((n) => n.includes('ferry'));
    const p: Problems = [];
    let killed = 0;
    await whilePaused(p, ['restore', '--image', image], 'transient', async (run) => {
      killed = run.child.pid!;
      assert.deepEqual(ours(), [`.ferry-ghost-${killed}`], 'ferry\'s directory beside the name');
      assert.ok(entriesOf(killed).length >= 1, 'written down in the journal first');
      await hit(run, 'SIGKILL', p);
    });
    assert.deepEqual(p, []);
    assert.deepEqual(await pidsFree(pids), [], 'nothing of the killed restore holds the pids');
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    pids.forEach(own);
    assert.equal(await verify(w), 'PASS');
    assert.deepEqual(ours(), [], 'no directory of ferry\'s is left');
    assert.deepEqual(entriesOf(killed), [], 'no journal entry of the killed ferry is left');
  });
});

/**
 * Runs a process that makes node `name` of `kind` in `dir` as a restore does (makeTransient)
 * and SIGKILLs itself: `made` inside the making, the node under ferry's own name and its inode
 * not yet written down; `named` once it has its name. Returns its pid.
 */
function killedMaking(kind: 'fifo' | 'dir', dir: string, name: string, when: 'made' | 'named'): number {
  const script = `
    import { openSync } from 'node:fs';
    import { makeTransient } from ${JSON.stringify(new URL('../../src/files/transient.js', import.meta.url).href)};
    import { native } from ${JSON.stringify(new URL('../../src/native/binding.js', import.meta.url).href)};
    const [kind, dir, name, when] = process.argv.slice(1);
    const dirfd = openSync(dir, 0o10000000 | 0o200000); // O_PATH | O_DIRECTORY
    const forget = makeTransient(kind, '/', dir + '/' + name, dirfd, undefined, (d, n) => {
      if (kind === 'dir') native().mkdirat(d, n, 0o700);
      else native().mkfifoat(d, n, 0o600);
      if (when === 'made') process.kill(process.pid, 'SIGKILL');
    });
    if (forget === undefined) process.exit(3);
    process.kill(process.pid, 'SIGKILL');
  `;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script, kind, dir, name, when],
    { stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.signal, 'SIGKILL', r.stderr);
  return r.pid!;
}

/** A node like the one ferry makes (root's, the same mode), made by someone else. */
function foreign(kind: 'fifo' | 'dir', path: string): void {
  if (kind === 'dir') mkdirSync(path, 0o700);
  else assert.equal(spawnSync('mkfifo', ['-m', '600', path]).status, 0);
  const st = statSync(path);
  assert.equal(st.mode & 0o7777, kind === 'dir' ? 0o700 : 0o600, 'the shape ferry gives its node');
  assert.equal(st.uid, 0);
}

describe('the sweep of the names a killed ferry made', { skip, timeout: 60_000 }, () => {
  for (const kind of ['fifo', 'dir'] as const) {
    it(`${kind}: what it made goes, under ferry's own name or its own; a same-shaped node someone else made there stays`, () => {
      const dir = scratchDir('ferry-sweep-');
      // Killed before the inode was written down: its node is under ferry's own name only;
      // someone then made the name itself, with the same shape.
      const a = killedMaking(kind, dir, 'a', 'made');
      assert.deepEqual(readdirSync(dir).map((n) => n.replace(/\d+/g, 'N')), ['.ferry-transient-N-N-N'], 'made under ferry\'s own name');
      foreign(kind, join(dir, 'a'));
      // Killed at its name, its inode written down; someone then moved it away and made the
      // name again with the same shape.
      const b = killedMaking(kind, dir, 'b', 'named');
      renameSync(join(dir, 'b'), join(dir, 'b.moved'));
      foreign(kind, join(dir, 'b'));
      // Killed at its name, nothing touched since.
      const c = killedMaking(kind, dir, 'c', 'named');
      assert.deepEqual(readdirSync(dir).filter((n) => !n.startsWith('.')).sort(), ['a', 'b', 'b.moved', 'c']);

      sweepTransientNames();
      assert.deepEqual(readdirSync(dir).sort(), ['a', 'b', 'b.moved'], 'ferry\'s own name and c went; the others stay');
      for (const pid of [a, b, c]) assert.deepEqual(entriesOf(pid), [], `no journal entry of ${pid} is left`);
    });
  }
});
