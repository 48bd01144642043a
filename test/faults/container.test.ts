/**
 * The fault matrix of runc containers (issue 8): a container running a static memcheck is
 * checkpointed and restored with ferry hit at every phase, and into a disk that fills up.
 * After any fault of a checkpoint the container must still be running, thawed, untraced, with
 * its memory and signal mask intact; after any fault of a restore nothing may be left: no runc
 * container with that id, no process in its cgroup; and a retry must work.
 *
 * memcheck runs as the container's init, static (the rootfs holds nothing else), at its host
 * path inside the rootfs (the dump resolves a mapped file's path on the host, see
 * bench/container.ts). It is build/workloads/memcheck-static when the build makes one, else
 * compiled here with `cc -static`.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, copyFileSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { needs, ROOT, WORKLOADS } from '../helpers/env.js';
import { askVerdict, cleanup, scratchDir, sleep, startWorkload, waitFor } from '../helpers/processes.js';
import {
  cell, CHECKPOINT_FAULTS, checkIntact, checkpointHit, checkpointIntoClosedPipe, checkpointIntoFullDisk, CONTAINER_CHECKPOINT_PHASES,
  expectOk, Matrix, RESTORE_FAULTS, RESTORE_PHASES, restoreHit, runFerry, stderrLines, type Fault, type Problems, type Tree, type WrittenTarget,
} from './helpers.js';

const RUNC = ['/usr/sbin/runc', '/usr/bin/runc'].find((p) => existsSync(p));
const CC = ['/usr/bin/cc', '/usr/bin/gcc'].find((p) => existsSync(p));
const SOURCE = join(ROOT, 'test', 'fixtures', 'workloads', 'memcheck.c');
const BUILT = join(WORKLOADS, 'memcheck-static');
const skip = needs('root', 'build') || (RUNC ? false : 'needs runc (apt-get install runc)')
  || (existsSync(BUILT) || CC ? false : `needs ${BUILT} or a C compiler with a static libc to build it`);

const matrix = new Matrix('Fault matrix: runc containers (rows: operation, fault; columns: phase)');
const MIB = 16;
const CELL = { timeout: 180000 };

let dir = '';
let state = '';
let bundle = '';
/** The bundle's config.json as the test wrote it. */
let bundleConfig = '';
/** The static memcheck's path, on the host and inside the rootfs alike. */
let memcheck = '';
let olderImage = '';
const ids = new Set<string>();
let seq = 0;

function runc(...args: string[]): { code: number; out: string; err: string } {
  const r = spawnSync(RUNC!, ['--root', state, ...args], { encoding: 'utf8', timeout: 60000 });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

function ctrState(id: string): { status: string; pid: number } {
  const r = runc('state', id);
  if (r.code !== 0) return { status: 'absent', pid: 0 };
  return JSON.parse(r.out) as { status: string; pid: number };
}

/** Deletes container `id` (by id, forced) and waits until runc no longer lists it. */
async function remove(id: string): Promise<void> {
  if (ctrState(id).status === 'absent') return;
  runc('delete', '--force', id);
  await waitFor(`container ${id} to be deleted`, () => ctrState(id).status === 'absent', 10000).catch(() => {});
}

/** The freezer state file of the cgroup `pid` is in (cgroup v1 freezer, else v2), if any. */
function freezerOf(pid: number): { dir: string; frozen: () => boolean } | undefined {
  const lines = readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n');
  const v1 = lines.map((l) => l.split(':')).find((f) => f[1]?.split(',').includes('freezer'));
  if (v1 && existsSync(join('/sys/fs/cgroup/freezer', v1[2] ?? '/', 'freezer.state'))) {
    const d = join('/sys/fs/cgroup/freezer', v1[2] ?? '/');
    return { dir: d, frozen: () => readFileSync(join(d, 'freezer.state'), 'utf8').trim() !== 'THAWED' };
  }
  const v2 = lines.map((l) => l.split(':')).find((f) => f[0] === '0');
  const d = join('/sys/fs/cgroup/unified', v2?.[2] ?? '/');
  if (v2 && existsSync(join(d, 'cgroup.freeze'))) {
    return { dir: d, frozen: () => /^frozen 1$/m.test(readFileSync(join(d, 'cgroup.events'), 'utf8')) };
  }
  return undefined;
}

/** Pids in a cgroup directory and its children (none when it is gone). */
function cgroupPids(d: string): number[] {
  if (!existsSync(d)) return [];
  const out: number[] = [];
  const walk = (x: string): void => {
    for (const f of ['tasks', 'cgroup.procs']) {
      try {
        out.push(...readFileSync(join(x, f), 'utf8').split('\n').filter(Boolean).map(Number));
        break;
      } catch { /* next */ }
    }
    try {
      for (const e of readdirSync(x, { withFileTypes: true })) if (e.isDirectory()) walk(join(x, e.name));
    } catch { /* removed meanwhile */ }
  };
  walk(d);
  return [...new Set(out)];
}

/** A running container as a Tree (its init's host pid), plus its id and cgroup. */
interface Ctr extends Tree {
  id: string;
  cgroup: string;
}

/** The container `id` runs (under ferry's restore or runc's run): its tree, its log. */
async function attach(id: string, log: string): Promise<Ctr> {
  const s = ctrState(id);
  if (s.status !== 'running') throw new Error(`container ${id} is ${s.status}`);
  const text = (): string => readFileSync(log, 'utf8');
  const f = freezerOf(s.pid);
  return { id, what: `container ${id}`, pids: [s.pid], log, text, cgroup: f?.dir ?? '', verdict: () => askVerdict(s.pid, text) };
}

/** Runs a fresh container `id` from the bundle, its output on its own log, until it is ready. */
async function startContainer(id: string): Promise<Ctr> {
  const log = join(dir, `${id}.log`);
  const fd = openSync(log, 'a');
  const r = spawnSync(RUNC!, ['--root', state, 'run', '-d', '--bundle', bundle, id], { stdio: ['ignore', fd, fd], timeout: 60000 });
  closeSync(fd);
  ids.add(id);
  if (r.status !== 0) throw new Error(`runc run ${id} failed: ${readFileSync(log, 'utf8').trim().split('\n').at(-1)}`);
  await waitFor(`container ${id} to get ready`, () => readFileSync(log, 'utf8').includes('ready pid=1'));
  return attach(id, log);
}

/** The container is running, thawed, and its init intact (checkIntact). */
async function checkRunning(p: Problems, c: Ctr): Promise<void> {
  const s = ctrState(c.id);
  if (s.status !== 'running') p.push(`container ${c.id} is ${s.status}, not running`);
  if (s.status === 'absent') return;
  if (s.pid !== c.pids[0]) p.push(`container ${c.id} has init ${s.pid}, was ${c.pids[0]}`);
  const f = freezerOf(c.pids[0]!);
  if (f?.frozen()) p.push(`container ${c.id} left frozen`);
  await checkIntact(p, c);
}

/** Restores `image` as container `id` (detached) and checks it; deletes it afterwards. */
async function restoreAndCheck(p: Problems, id: string, image: string, log: string, what: string): Promise<void> {
  const r = await runFerry(['restore', id, '--root', state, '--image', image, '--bundle', bundle, '--detach'], p);
  ids.add(id);
  if (r.code !== 0) {
    p.push(`${what}: restore failed (${r.code}): ${stderrLines(r.stderr)[0] ?? ''}`);
  } else {
    const c = await attach(id, log);
    const v = await c.verdict();
    if (v !== 'PASS') p.push(`${what}: restored container check: ${v}`);
  }
  await remove(id);
}

function nextId(): string {
  return `ff${process.pid}-${++seq}`;
}

/** A running container as the target of checkpoint cells. */
function ctrTarget(c: Ctr): WrittenTarget {
  return {
    args: [c.id, '--root', state],
    intact: (p) => checkRunning(p, c),
    goneOrIntact: async (p) => {
      const s = ctrState(c.id);
      // Either the checkpoint finished (the container is gone) or it was let go whole.
      if (s.status === 'running') await checkRunning(p, c);
      else if (s.status !== 'absent') p.push(`container left ${s.status}`);
    },
    restoreWritten: async (p, image) => {
      await remove(c.id);
      await restoreAndCheck(p, c.id, image, c.log, 'the image written');
    },
  };
}

/** One checkpoint cell: a fresh container, the older image at the target path, ferry paused and hit. */
async function checkpointCell(p: Problems, phase: string, fault: Fault): Promise<void> {
  const id = nextId();
  try {
    const c = await startContainer(id);
    const images = join(dir, `${id}.images`);
    mkdirSync(images);
    await checkpointHit(p, ctrTarget(c), images, olderImage, phase, fault);
  } finally {
    await remove(id);
  }
}

/** The image the restore cells restore (of a container that was checkpointed and deleted). */
let restoreImage = '';
let restoreLog = '';
let restoreCgroup = '';
const RESTORE_ID = `ff${process.pid}-r`;

/** One restore cell: ferry restores the image as RESTORE_ID, paused at `phase`, and is hit. */
async function restoreCell(p: Problems, phase: string, fault: Fault): Promise<void> {
  const command = (copy: string): string[] => ['restore', RESTORE_ID, '--root', state, '--image', copy, '--bundle', bundle, '--detach'];
  /** Nothing of the restore that was hit is left (no container, no process in its cgroup); then the copy restores. */
  const noneLeftThenRetry = async (q: Problems, copy: string): Promise<void> => {
    await waitFor('the container to be gone', () => ctrState(RESTORE_ID).status === 'absent', 10000).catch(() => {
      q.push(`runc still lists container ${RESTORE_ID} (${ctrState(RESTORE_ID).status})`);
    });
    // The bundle's config.json is its own again (a killed ferry's watchdog puts it back), and
    // nothing of ferry's is left beside it.
    const beside = (): string[] => readdirSync(bundle).filter((n) => n !== 'config.json');
    await waitFor('the bundle\'s own config.json', () => readFileSync(join(bundle, 'config.json'), 'utf8') === bundleConfig && beside().length === 0, 10000)
      .catch(() => q.push(`the bundle's config.json is ${readFileSync(join(bundle, 'config.json'), 'utf8') === bundleConfig ? '' : 'not '}its own; beside it: ${beside().join(', ')}`));
    if (restoreCgroup !== '') {
      await waitFor('its cgroup to be empty', () => cgroupPids(restoreCgroup).length === 0, 10000).catch(() => {
        q.push(`processes left in its cgroup: ${cgroupPids(restoreCgroup).join(' ')}`);
      });
    }
    await remove(RESTORE_ID);
    await restoreAndCheck(q, RESTORE_ID, copy, restoreLog, 'retry');
  };
  ids.add(RESTORE_ID);
  try {
    await restoreHit(p, restoreImage, command, phase, fault, noneLeftThenRetry);
  } finally {
    await remove(RESTORE_ID);
  }
}

/** ENOSPC: a container bigger than the 8 MiB tmpfs its image goes to. */
async function enospcCell(p: Problems): Promise<void> {
  const id = nextId();
  try {
    await checkpointIntoFullDisk(p, ctrTarget(await startContainer(id)), join(dir, `${id}.small`), olderImage);
  } finally {
    await remove(id);
  }
}

/** EPIPE: the reader of --image - goes away after 100000 bytes. */
async function epipeCell(p: Problems): Promise<void> {
  const id = nextId();
  try {
    await checkpointIntoClosedPipe(p, ctrTarget(await startContainer(id)), join(dir, id));
  } finally {
    await remove(id);
  }
}

describe('fault matrix: containers', { skip }, () => {
  before(async () => {
    dir = scratchDir('ferry-fault-ctr-');
    state = join(dir, 'state');
    if (existsSync(BUILT)) {
      memcheck = BUILT;
    } else {
      memcheck = join(dir, 'memcheck-static');
      const cc = spawnSync(CC!, ['-O2', '-static', '-o', memcheck, SOURCE], { encoding: 'utf8' });
      assert.equal(cc.status, 0, `cc -static memcheck.c: ${cc.stderr}`);
    }
    const rootfs = join(dir, 'rootfs');
    for (const d of ['proc', 'sys', 'dev', 'tmp']) mkdirSync(join(rootfs, d), { recursive: true });
    mkdirSync(join(rootfs, dirname(memcheck)), { recursive: true });
    copyFileSync(memcheck, join(rootfs, memcheck));
    spawnSync('chmod', ['755', join(rootfs, memcheck)]);
    bundle = join(dir, 'bundle');
    mkdirSync(bundle);
    const spec = spawnSync(RUNC!, ['spec', '--bundle', bundle], { encoding: 'utf8' });
    assert.equal(spec.status, 0, spec.stderr);
    const config = JSON.parse(readFileSync(join(bundle, 'config.json'), 'utf8')) as Record<string, any>;
    config.root = { path: rootfs, readonly: false };
    config.process.terminal = false;
    config.process.args = [memcheck, String(MIB)];
    bundleConfig = JSON.stringify(config, null, 1);
    writeFileSync(join(bundle, 'config.json'), bundleConfig);

    // The older image every checkpoint cell finds at its target path: a small real one.
    const w = await startWorkload(join(WORKLOADS, 'counter'), ['50']);
    olderImage = join(dir, 'older.tar');
    const o = await runFerry(['checkpoint', '--pid', String(w.pid), '--image', olderImage, '--leave-running']);
    process.kill(w.pid, 'SIGKILL');
    assert.equal(o.code, 0, `the older image: ${o.stderr}`);
  });

  after(async () => {
    console.log(`\n${matrix.render()}\n`);
    for (const id of ids) await remove(id);
    cleanup();
  });

  describe('checkpoint', () => {
    for (const fault of CHECKPOINT_FAULTS) {
      for (const phase of CONTAINER_CHECKPOINT_PHASES) {
        const row = `container checkpoint ${fault}`;
        it(`${row} @ ${phase}`, CELL, async () => expectOk(await cell(matrix, row, phase, (p) => checkpointCell(p, phase, fault))));
      }
    }
    it('container checkpoint ENOSPC', CELL, async () => expectOk(await cell(matrix, 'container checkpoint ENOSPC', 'once', enospcCell)));
    it('container checkpoint EPIPE', CELL, async () => expectOk(await cell(matrix, 'container checkpoint EPIPE', 'once', epipeCell)));
  });

  describe('restore', () => {
    before(async () => {
      const c = await startContainer(RESTORE_ID);
      restoreLog = c.log;
      restoreCgroup = c.cgroup;
      restoreImage = join(dir, 'restore.tar');
      const r = await runFerry(['checkpoint', RESTORE_ID, '--root', state, '--image', restoreImage]);
      assert.equal(r.code, 0, `checkpoint of the container for the restore cells: ${r.stderr}`);
      await remove(RESTORE_ID);
      await sleep(100);
    });
    for (const fault of RESTORE_FAULTS) {
      for (const phase of RESTORE_PHASES) {
        const row = `container restore ${fault}`;
        it(`${row} @ ${phase}`, CELL, async () => expectOk(await cell(matrix, row, phase, (p) => restoreCell(p, phase, fault))));
      }
    }
    // While the bundle's config.json is swapped for runc create's (a synchronous pause: SIGKILL only).
    it('container restore SIGKILL @ configswap', CELL, async () => expectOk(await cell(matrix, 'container restore SIGKILL', 'configswap',
      (p) => restoreCell(p, 'configswap', 'SIGKILL'))));
  });
});
