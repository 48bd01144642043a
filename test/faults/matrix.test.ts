/**
 * The fault matrix of processes (issue 8): ferry is hit at every phase of a checkpoint and a
 * restore of one process and of a tree, and by the faults of the world (a full disk, a closed
 * pipe, a target that dies or forks meanwhile, a pid already in use), and must never harm the
 * workload. The workload is memcheck (test/fixtures/workloads/memcheck.c): it knows every byte
 * of its memory and its signal mask and checks them on SIGUSR1.
 *
 * Every cell is one test; the whole matrix is also printed as a table at the end. A cell whose
 * pause point ferry never reached says so ("no pause at PHASE ... pause point not wired?"),
 * which is not the same as ferry harming the workload.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { needs, WORKLOADS } from '../helpers/env.js';
import { cleanup, sleep, startWorkload } from '../helpers/processes.js';
import {
  abort, cell, CHECKPOINT_FAULTS, checkIntact, checkLines, checkpointHit, checkpointIntoClosedPipe, checkpointIntoFullDisk, checkRestored,
  expectOk, killAll, killOurs, Matrix, MEMCHECK, others, pidsFree, PROCESS_CHECKPOINT_PHASES, RESTORE_FAULTS, RESTORE_PHASES, restoreHit,
  runFerry, settle, startFerry, startMemcheck, status, stderrLines, whilePaused, type Fault, type Memcheck, type Problems, type Tree,
  type WrittenTarget,
} from './helpers.js';

const skip = needs('root', 'build') || (existsSync(MEMCHECK) ? false : `needs ${MEMCHECK} ('npm run build')`);
const matrix = new Matrix('Fault matrix: processes (rows: target, operation, fault; columns: phase)');
after(() => {
  console.log(`\n${matrix.render()}\n`);
  killAll();
  cleanup();
});

type Mode = 'one' | 'tree' | 'cow';
/** MiB per process: small, the pause points make size irrelevant (tree: 4 processes). */
const MIB: Record<Mode, number> = { one: 16, tree: 8, cow: 16 };
const CELL = { timeout: 180000 };

/** A small good image of another process: the "older image" every checkpoint cell starts with. */
let olderImage = '';

/** Restores `image` (no pause) and checks the restored tree; `t` names its pids and log. */
async function restoreAndCheck(p: Problems, image: string, t: Tree, what: string): Promise<void> {
  const held = await pidsFree(t.pids);
  if (held.length) {
    p.push(`${what}: pids not free: ${held.join(', ')}`);
    return;
  }
  const r = await runFerry(['restore', '--image', image], p);
  if (r.code !== 0) p.push(`${what}: restore failed (${r.code}): ${stderrLines(r.stderr)[0] ?? ''}`);
  else await checkRestored(p, t);
  killOurs(t.pids);
}

/** A memcheck tree as the target of checkpoint cells. */
function memcheckTarget(t: Memcheck): WrittenTarget {
  return {
    args: ['--pid', String(t.pids[0])],
    intact: (p) => checkIntact(p, t),
    goneOrIntact: async (p) => {
      const alive = t.pids.filter((pid) => { const st = status(pid); return st !== undefined && !'ZX'.includes(st.state); });
      if (alive.length === t.pids.length) await checkIntact(p, t); // let go: it must be whole
      else if (alive.length > 0) p.push(`tree half killed: ${alive.join(' ')} alive, the rest gone`);
    },
    restoreWritten: async (p, image) => {
      killOurs(t.pids);
      await t.exited;
      await restoreAndCheck(p, image, t, 'the image written');
    },
  };
}

/**
 * One checkpoint cell: a fresh tree, the older image at the target path, ferry paused at
 * `phase` and hit by `fault`.
 */
async function checkpointCell(p: Problems, mode: Mode, phase: string, fault: Fault): Promise<void> {
  const t = await startMemcheck(MIB[mode], mode);
  try {
    const dir = join(t.dir, 'images');
    mkdirSync(dir);
    await checkpointHit(p, memcheckTarget(t), dir, olderImage, phase, fault);
  } finally {
    killOurs(t.pids);
  }
}

/** The image of each mode, made once: the original was checkpointed (and killed). */
const images = new Map<Mode, { image: string; tree: Tree }>();

async function makeImage(mode: Mode): Promise<void> {
  const t = await startMemcheck(MIB[mode], mode);
  const image = join(t.dir, `${mode}.tar`);
  const r = await runFerry(['checkpoint', '--pid', String(t.pids[0]), '--image', image, '--json']);
  assert.equal(r.code, 0, `checkpoint of memcheck ${mode} for the restore cells: ${r.stderr}`);
  const pids = (JSON.parse(r.stdout) as { pids: number[] }).pids;
  assert.deepEqual([...pids].sort(), [...t.pids].sort(), 'the image holds the whole tree');
  await t.exited;
  assert.deepEqual(await pidsFree(t.pids), [], 'the original tree is gone');
  images.set(mode, { image, tree: t });
}

/** After a restore was hit: nothing holds the tree's pids, and the image restores again. */
async function noneLeftThenRetry(p: Problems, image: string, tree: Tree): Promise<void> {
  const left = await pidsFree(tree.pids);
  if (left.length) p.push(`left behind: ${left.join(', ')}`);
  killOurs(tree.pids);
  await restoreAndCheck(p, image, tree, 'retry');
}

/** One restore cell: a copy of the mode's image, restored with ferry paused at `phase` and hit. */
async function restoreCell(p: Problems, mode: Mode, phase: string, fault: Fault): Promise<void> {
  const { image, tree } = images.get(mode)!;
  const held = await pidsFree(tree.pids);
  if (held.length) {
    p.push(`before the cell: ${held.join(', ')}`);
    return;
  }
  try {
    await restoreHit(p, image, (copy) => ['restore', '--image', copy], phase, fault, (q, copy) => noneLeftThenRetry(q, copy, tree));
  } finally {
    killOurs(tree.pids);
    await pidsFree(tree.pids);
  }
}

/** ENOSPC: the image goes to a tmpfs smaller than the tree; the older image there survives. */
async function enospcCell(p: Problems, mode: Mode): Promise<void> {
  const t = await startMemcheck(mode === 'one' ? 32 : 16, mode);
  try {
    await checkpointIntoFullDisk(p, memcheckTarget(t), join(t.dir, 'small'), olderImage);
  } finally {
    killOurs(t.pids);
  }
}

/**
 * ENOSPC after the first periodic fdatasync (image/tar-out.ts SYNC_EVERY, 64 MiB: O_DIRECT
 * files too): a process of 96 MiB into a tmpfs of 72 MiB, so the disk fills while a sync may
 * still be in flight; the write's failure must wait for it, and the tree come out intact.
 */
async function enospcLateCell(p: Problems): Promise<void> {
  const t = await startMemcheck(96, 'one');
  try {
    await checkpointIntoFullDisk(p, memcheckTarget(t), join(t.dir, 'small'), olderImage, '72m');
  } finally {
    killOurs(t.pids);
  }
}

/**
 * ENOSPC of a small image, which goes out in one write (image/tar-out.ts, a gathered tar: at
 * most 1 MiB on an O_DIRECT file, as tmpfs is here): a process of 256 KiB, its image (about
 * 300 KiB, checked to be under 1 MiB first) into a tmpfs of 128 KiB holding a 16 KiB older one.
 */
async function enospcSmallCell(p: Problems): Promise<void> {
  const t = await startMemcheck('256k', 'one');
  try {
    const probe = join(t.dir, 'probe.tar');
    const r = await runFerry(['checkpoint', '--pid', String(t.pids[0]), '--image', probe, '--leave-running', '--json']);
    const bytes = r.code === 0 ? (JSON.parse(r.stdout) as { imageBytes: number }).imageBytes : undefined;
    if (bytes === undefined) p.push(`the probe checkpoint failed: ${r.stderr}`);
    else if (bytes > 1 << 20 || bytes <= 128 << 10) p.push(`the image is ${bytes} bytes: not one written in one write into a 128 KiB tmpfs`);
    else {
      const older = join(t.dir, 'older.bin');
      writeFileSync(older, randomBytes(16 << 10));
      await checkpointIntoFullDisk(p, memcheckTarget(t), join(t.dir, 'small'), older, '128k');
    }
  } finally {
    killOurs(t.pids);
  }
}

/** EPIPE: the reader of --image - goes away after 100000 bytes. */
async function epipeCell(p: Problems, mode: Mode): Promise<void> {
  const t = await startMemcheck(MIB[mode], mode);
  try {
    await checkpointIntoClosedPipe(p, memcheckTarget(t), join(t.dir, 'ferry'));
  } finally {
    killOurs(t.pids);
  }
}

/** The target dies at a random moment of its checkpoint, ten times: a clean end, never a hang. */
async function targetExitsCell(p: Problems): Promise<void> {
  for (let i = 0; i < 10; i++) {
    const t = await startMemcheck(128, 'one');
    const dir = join(t.dir, 'images');
    mkdirSync(dir);
    const target = join(dir, 'image.tar');
    // Spread over the run: node's start takes ~200 ms, then the seize, the dump and the write.
    const delay = i * 60 + Math.floor(Math.random() * 60);
    const run = startFerry(['checkpoint', '--pid', String(t.pids[0]), '--image', target, '--leave-running']);
    try {
      await sleep(delay);
      killOurs(t.pids);
      const mine: Problems = [];
      const r = await settle(run, 'after its target died', mine);
      if (r.code !== 0 && r.code !== 1) mine.push(`exit ${r.code ?? r.signal}`);
      checkLines(mine, run.stderr(), 1, r.code === 1 ? 1 : 0);
      const files = others(dir);
      if (r.code === 0 && !files.includes('image.tar')) mine.push('exit 0 without an image');
      if (r.code !== 0 && files.length) mine.push(`left in the image directory: ${files.join(', ')}`);
      p.push(...mine.map((m) => `run ${i + 1} (kill at ${delay} ms): ${m}`));
    } finally {
      if (!run.exited) run.child.kill('SIGKILL');
      await run.exit;
      killOurs(t.pids);
    }
  }
}

/** A tree that forks all the time, checkpointed with --leave-running three times. */
async function forkerCell(p: Problems): Promise<void> {
  const t = await startMemcheck(16, 'forker');
  try {
    await sleep(100);
    for (let i = 0; i < 3; i++) {
      const target = join(t.dir, `image${i}.tar`);
      const r = await runFerry(['checkpoint', '--pid', String(t.pids[0]), '--image', target, '--leave-running'], p);
      if (r.code !== 0 && r.code !== 1) p.push(`run ${i + 1}: exit ${r.code}`);
      checkLines(p, r.stderr, 1, r.code === 1 ? 1 : 0);
      if (r.code !== 0 && existsSync(target)) p.push(`run ${i + 1}: failed and left ${target}`);
      await checkIntact(p, t);
      if (p.length) return;
    }
  } finally {
    killOurs(t.pids);
  }
}

/** The image's pid is held by its original (left running): one line naming it; then a retry works. */
async function pidHeldCell(p: Problems): Promise<void> {
  const t = await startMemcheck(MIB.one, 'one');
  try {
    const image = join(t.dir, 'image.tar');
    const cp = await runFerry(['checkpoint', '--pid', String(t.pids[0]), '--image', image, '--leave-running'], p);
    if (cp.code !== 0) {
      p.push(`checkpoint --leave-running failed: ${stderrLines(cp.stderr)[0]}`);
      return;
    }
    const r = await runFerry(['restore', '--image', image], p);
    if (r.code !== 1) p.push(`restore while the pid is in use: exit ${r.code}, expected 1`);
    checkLines(p, r.stderr, 1);
    if (!r.stderr.includes(`pid ${t.pids[0]}`)) p.push(`the line does not name pid ${t.pids[0]}: ${stderrLines(r.stderr)[0]}`);
    await checkIntact(p, t);
    killOurs(t.pids);
    await t.exited;
    await restoreAndCheck(p, image, t, 'retry once the pid is free');
  } finally {
    killOurs(t.pids);
  }
}

/** Two restores of one image: the second finds the pids taken by the first (paused at `created`). */
async function concurrentRestoreCell(p: Problems): Promise<void> {
  const { image, tree } = images.get('one')!;
  if ((await pidsFree(tree.pids)).length) {
    p.push('image pids not free before the cell');
    return;
  }
  try {
    await whilePaused(p, ['restore', '--image', image], 'created', async (a) => {
      const b = await runFerry(['restore', '--image', image], p);
      if (b.code !== 1) p.push(`second restore: exit ${b.code}, expected 1`);
      checkLines(p, b.stderr, 1);
      if (!b.stderr.includes(`pid ${tree.pids[0]}`)) p.push(`the line does not name pid ${tree.pids[0]}: ${stderrLines(b.stderr)[0]}`);
      await abort(p, a, 'SIGTERM');
      await noneLeftThenRetry(p, image, tree);
    }, 'first restore: ');
  } finally {
    killOurs(tree.pids);
    await pidsFree(tree.pids);
  }
}

describe('fault matrix: processes', { skip }, () => {
  before(async () => {
    const c = await startWorkload(join(WORKLOADS, 'counter'), ['50']);
    olderImage = join(c.dir, 'older.tar');
    const r = await runFerry(['checkpoint', '--pid', String(c.pid), '--image', olderImage, '--leave-running']);
    process.kill(c.pid, 'SIGKILL');
    assert.equal(r.code, 0, `the older image: ${r.stderr}`);
  });

  for (const mode of ['one', 'tree'] as const) {
    describe(`${mode}: checkpoint`, () => {
      for (const fault of CHECKPOINT_FAULTS) {
        for (const phase of PROCESS_CHECKPOINT_PHASES) {
          const row = `${mode} checkpoint ${fault}`;
          it(`${row} @ ${phase}`, CELL, async () => expectOk(await cell(matrix, row, phase, (p) => checkpointCell(p, mode, phase, fault))));
        }
      }
      it(`${mode} checkpoint ENOSPC`, CELL, async () => expectOk(await cell(matrix, `${mode} checkpoint ENOSPC`, 'once', (p) => enospcCell(p, mode))));
      if (mode === 'one') it('one checkpoint ENOSPC, a small image in one write', CELL, async () => expectOk(await cell(matrix, 'one checkpoint ENOSPC small', 'once', enospcSmallCell)));
      if (mode === 'one') it('one checkpoint ENOSPC past the first periodic fdatasync', CELL, async () => expectOk(await cell(matrix, 'one checkpoint ENOSPC late', 'once', enospcLateCell)));
      it(`${mode} checkpoint EPIPE`, CELL, async () => expectOk(await cell(matrix, `${mode} checkpoint EPIPE`, 'once', (p) => epipeCell(p, mode))));
    });
  }

  // --leave-running of a tree storing at most 8 MiB lets it go before its image is written
  // (src/dump/checkpoint.ts, EARLY_RELEASE_MAX_BYTES): the faults while that image is written.
  describe('small, left running: let go before the write', () => {
    const small = async (p: Problems, body: (t: WrittenTarget, dir: string) => Promise<void>): Promise<void> => {
      const t = await startMemcheck(2, 'one');
      try {
        const target = memcheckTarget(t);
        const dir = join(t.dir, 'images');
        mkdirSync(dir);
        await body({ ...target, args: [...target.args, '--leave-running'] }, dir);
      } finally {
        killOurs(t.pids);
      }
    };
    for (const fault of ['SIGKILL', 'SIGTERM'] as const) {
      const row = `small --leave-running checkpoint ${fault}`;
      it(`${row} @ writing`, CELL, async () => expectOk(await cell(matrix, row, 'writing',
        (p) => small(p, (t, dir) => checkpointHit(p, t, dir, olderImage, 'writing', fault)))));
    }
    it('small --leave-running checkpoint EPIPE', CELL, async () => expectOk(await cell(matrix, 'small --leave-running checkpoint EPIPE', 'once',
      (p) => small(p, (t, dir) => checkpointIntoClosedPipe(p, t, join(dir, 'ferry'))))));
  });

  // --leave-running of a bigger tree lets it go once every page is read and written, before
  // the image's fsync and rename (src/dump/checkpoint.ts, onProduced): the faults there.
  describe('big, left running: let go before the fsync and rename', () => {
    for (const fault of ['SIGKILL', 'SIGTERM'] as const) {
      const row = `big --leave-running checkpoint ${fault}`;
      it(`${row} @ released`, CELL, async () => expectOk(await cell(matrix, row, 'released', async (p) => {
        const t = await startMemcheck(MIB.one, 'one');
        try {
          const target = memcheckTarget(t);
          const dir = join(t.dir, 'images');
          mkdirSync(dir);
          await checkpointHit(p, { ...target, args: [...target.args, '--leave-running'] }, dir, olderImage, 'released', fault);
        } finally {
          killOurs(t.pids);
        }
      })));
    }
  });

  describe('checkpoint: the tree changes meanwhile', () => {
    it('one checkpoint: target killed mid-dump, 10 times', CELL, async () =>
      expectOk(await cell(matrix, 'one checkpoint target dies x10', 'once', targetExitsCell)));
    it('forker checkpoint --leave-running, 3 times', CELL, async () =>
      expectOk(await cell(matrix, 'forker checkpoint --leave-running', 'once', forkerCell)));
  });

  for (const mode of ['one', 'tree'] as const) {
    describe(`${mode}: restore`, () => {
      before(() => makeImage(mode));
      for (const fault of RESTORE_FAULTS) {
        for (const phase of RESTORE_PHASES) {
          const row = `${mode} restore ${fault}`;
          it(`${row} @ ${phase}`, CELL, async () => expectOk(await cell(matrix, row, phase, (p) => restoreCell(p, mode, phase, fault))));
        }
      }
      if (mode === 'one') {
        it('one restore: pid held by the original', CELL, async () =>
          expectOk(await cell(matrix, 'one restore pid in use (original)', 'once', pidHeldCell)));
        it('one restore: pids held by a concurrent restore', CELL, async () =>
          expectOk(await cell(matrix, 'one restore pid in use (2nd restore)', 'once', concurrentRestoreCell)));
      }
    });
  }
  // Children that inherit the root's pages copy-on-write are forked from the rebuilt root
  // (src/restore/cow.ts): ferry dies with them made, half rebuilt, or half let go.
  describe('cow: restore', () => {
    before(() => makeImage('cow'));
    for (const phase of RESTORE_PHASES) {
      it(`cow restore SIGKILL @ ${phase}`, CELL, async () => expectOk(await cell(matrix, 'cow restore SIGKILL', phase, (p) => restoreCell(p, 'cow', phase, 'SIGKILL'))));
    }
  });
});
