/**
 * How checkpoint and restore scale with the number of tasks: trees of 1, 10, 100 and 1000
 * single-threaded processes, and one process with 1, 4, 16, 64 and 256 threads
 * (bench/fixtures/forker.c). Each case runs RUNS times (each cycle a fresh tree; the first
 * checkpoint of a case is a cold one, as a CLI's always is); every figure is printed as
 * min/median/max in ms, the median also in µs per task, then how flat the per-task cost is:
 * its median at the largest size over that at the second size (10 processes, 4 threads). Flat
 * is about 1; much more than 1 means something grows faster than the number of tasks. Each
 * case runs in a fresh node process (`--case DIR PROCS THREADS`), so one case's leftovers in
 * the heap cannot slow the next.
 *
 * The image goes to a fresh directory under /dev/shm (tmpfs), so disk speed plays no part.
 * The tree runs under the forker process, a child subreaper that reaps every process of the
 * tree killed by the checkpoint at once (PID 1 here may take seconds, and checkpoint waits
 * for the pids to be free); the bench also waits until every pid of the tree is gone before
 * restoring, outside the figures. The restored tree is killed at the end of each case, and
 * every pid the bench started or restored is killed if anything fails.
 *
 * Usage: node dist/bench/tree.js [--runs N] [--only CASES]   (npm run bench:tree). Needs root
 * and a built tree (npm run build). --only takes PROCSxTHREADS cases separated by commas
 * (`--only 1x1,10x1,1x16`); the flatness lines need the cases they compare. --help says so.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { checkpoint, restore } from '../src/index.js';
import { loadConfig } from '../src/config/config.js';
import { native, PACKAGE_ROOT } from '../src/native/binding.js';
import { closeInheritedFds } from '../src/proc/inherited.js';
import { alive, sleep } from './procs.js';
import { spread, type Spread } from './spread.js';

// The workloads start with descriptors 0-2 only, whatever the shell leaked to us (src/proc/inherited.ts).
closeInheritedFds();

const USAGE = `usage: node dist/bench/tree.js [--runs N] [--only PROCSxTHREADS,...] [--leave-running]
  checkpoint and restore of trees of 1, 10, 100, 1000 processes and of one process with 1, 4,
  16, 64, 256 threads; min/median/max of N runs (default 3) per case, each case in a fresh node.
  --only 1x1,10x1,1x16   only these cases (processes x threads per process)
  --leave-running        checkpoint as --leave-running does (the tree is killed after it)`;

const TREES = [1, 10, 100, 1000];
const THREADS = [1, 4, 16, 64, 256];

/** `--case DIR PROCS THREADS RUNS LEAVE`: one case, run in a fresh node process (see main). */
const caseArgs = process.argv[2] === '--case' ? process.argv.slice(3) : undefined;
/** The options of a main run. */
const opts = ((): { runs: number; only: Set<string> | undefined; leaveRunning: boolean } => {
  if (caseArgs) return { runs: Number(caseArgs[3] ?? 3), only: undefined, leaveRunning: caseArgs[4] === 'leave' };
  const out = { runs: 3, only: undefined as Set<string> | undefined, leaveRunning: false };
  const args = process.argv.slice(2);
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--help' || a === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else if (a === '--runs' && /^[1-9]\d*$/.test(args[i + 1] ?? '')) {
      out.runs = Number(args[++i]);
    } else if (a === '--leave-running') {
      out.leaveRunning = true;
    } else if (a === '--only' && /^\d+x\d+(,\d+x\d+)*$/.test(args[i + 1] ?? '')) {
      out.only = new Set(args[++i]!.split(','));
    } else {
      console.error(`bench:tree: unknown or incomplete argument ${a}\n${USAGE}`);
      process.exit(2);
    }
  }
  return out;
})();
const RUNS = opts.runs;
const dir = caseArgs?.[0] ?? mkdtempSync('/dev/shm/ferry-tree-');
const config = loadConfig({});
const logger = pino({ level: 'silent' });
const forker = join(PACKAGE_ROOT, 'build', 'bench', 'forker');

/** Every pid the bench started or restored and has not seen gone yet. */
/** Pids the bench made (or restored), each with its start time: a pid taken again by another process is not ours. */
const tracked = new Map<number, string>();
/** The start time of `pid` (field 22 of /proc/PID/stat), or '' when it is gone. */
function startOf(pid: number): string {
  try {
    const t = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return t.slice(t.lastIndexOf(')') + 2).split(' ')[19] ?? '';
  } catch {
    return '';
  }
}
/** Whether `pid` is still the process that had start time `start` (zombies included). */
const ours = (pid: number, start: string): boolean => start !== '' && startOf(pid) === start;
const track = (pid: number): void => { tracked.set(pid, startOf(pid)); };
/** Roots that are the bench's own children and must be reaped with waitpid. */
const ownRoots = new Set<number>();
const children: ChildProcess[] = [];


/** Pids of the live tree under `root` (root included), from /proc/PID/task/TID/children. */
function treePids(root: number): number[] {
  const out: number[] = [];
  for (let queue = [root], next = queue.shift(); next !== undefined; next = queue.shift()) {
    out.push(next);
    try {
      for (const tid of readdirSync(`/proc/${next}/task`)) {
        const list = readFileSync(`/proc/${next}/task/${tid}/children`, 'utf8').trim();
        if (list) queue.push(...list.split(' ').map(Number));
      }
    } catch { /* exited meanwhile */ }
  }
  return out;
}

/** Threads of all `pids` together. */
function countTasks(pids: readonly number[]): number {
  return pids.reduce((s, p) => s + readdirSync(`/proc/${p}/task`).length, 0);
}

/** A started tree: the forker process that reaps it, and the root of the tree. */
interface Started { reaper: number; root: number }

/** Starts `forker procs threads` with stdout/stderr to a log file and waits for "ready pid=ROOT". */
async function startTree(procs: number, threads: number): Promise<Started> {
  const log = join(dir, `forker-${procs}-${threads}-${Date.now()}.log`);
  const fd = openSync(log, 'w');
  const child = spawn(forker, [String(procs), String(threads)], { stdio: ['ignore', fd, fd], detached: true });
  closeSync(fd);
  children.push(child);
  const reaper = child.pid!;
  track(reaper);
  for (const end = Date.now() + 60_000; Date.now() < end; await sleep(20)) {
    const text = readFileSync(log, 'utf8');
    const ready = /ready pid=(\d+)/.exec(text);
    if (ready) {
      const root = Number(ready[1]);
      for (const p of treePids(root)) track(p);
      return { reaper, root };
    }
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`forker ${procs} ${threads} exited early: ${text.trim()}`);
  }
  throw new Error(`forker ${procs} ${threads} did not get ready within 60 s`);
}

/** Waits until none of `pids` exists any more (zombies included), then forgets them. */
async function waitGone(pids: readonly number[], what: string): Promise<void> {
  for (const end = Date.now() + 120_000; ; await sleep(10)) {
    const left = pids.filter((p) => alive(p) && ours(p, tracked.get(p) ?? ''));
    if (left.length === 0) break;
    if (Date.now() > end) throw new Error(`${what}: ${left.length} pids still exist after 120 s (first ${left[0]})`);
  }
  for (const p of pids) tracked.delete(p);
}

/** SIGKILLs every tracked pid, reaps the roots that are the bench's children, waits for the rest. */
async function killAll(): Promise<void> {
  const pids = [...tracked.keys()];
  for (const p of pids) {
    if (!ours(p, tracked.get(p)!)) continue; // gone, or another process's pid now
    try { process.kill(p, 'SIGKILL'); } catch { /* gone */ }
  }
  for (const r of ownRoots) {
    try { native().waitpid(r); } catch { /* not ours or already reaped */ }
    ownRoots.delete(r);
  }
  await waitGone(pids, 'cleanup');
}

interface Figures { frozenMs: number; checkpointMs: number; restoreMs: number }

/** One checkpoint + restore cycle of a fresh tree; the restored tree is killed afterwards. */
async function cycle(procs: number, threads: number, tasks: number): Promise<Figures> {
  const { reaper, root } = await startTree(procs, threads);
  const image = join(dir, 'tree.tar');
  const cp = await checkpoint({ pid: root, image, leaveRunning: opts.leaveRunning, config, logger });
  if (cp.pids.length !== procs) throw new Error(`checkpoint saw ${cp.pids.length} processes, expected ${procs}`);
  if (opts.leaveRunning) {
    for (const p of cp.pids) {
      try { process.kill(p, 'SIGKILL'); } catch { /* gone */ }
    }
  }
  // The forker reaps the killed tree and then exits; make sure every pid is free before restoring.
  await waitGone([...cp.pids, reaper], 'after checkpoint');
  const rs = await restore({ image, config, logger });
  for (const p of rs.pids) track(p);
  ownRoots.add(rs.pid);
  const restoredTasks = countTasks(rs.pids);
  if (rs.pids.length !== procs || restoredTasks !== tasks) {
    throw new Error(`restore made ${rs.pids.length} processes with ${restoredTasks} threads, expected ${procs} with ${tasks}`);
  }
  await killAll();
  rmSync(image, { force: true });
  return { frozenMs: cp.frozenMs, checkpointMs: cp.totalMs, restoreMs: rs.restoreMs };
}

type Stats = Record<keyof Figures, Spread>;
interface Row extends Stats { label: string; tasks: number }

/** In a case process: RUNS cycles, then min/median/max of each figure as one JSON line on stdout. */
async function runCaseHere(procs: number, threads: number): Promise<void> {
  const tasks = procs + threads;
  const runs: Figures[] = [];
  try {
    for (let i = 0; i < RUNS; i++) runs.push(await cycle(procs, threads, tasks));
  } finally {
    await killAll();
    for (const c of children) c.unref();
  }
  const stats: Stats = {
    frozenMs: spread(runs.map((f) => f.frozenMs)),
    checkpointMs: spread(runs.map((f) => f.checkpointMs)),
    restoreMs: spread(runs.map((f) => f.restoreMs)),
  };
  console.log(JSON.stringify(stats));
}

/**
 * Runs one case in a fresh node process, so what one case leaves in the heap (a large one
 * leaves a lot) does not slow the next; the case process kills what it started, even on failure.
 */
function runCase(label: string, procs: number, threads: number, tasks: number): Row {
  const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url), '--case', dir, String(procs), String(threads), String(RUNS),
    opts.leaveRunning ? 'leave' : 'kill'],
    { stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' });
  const last = r.stdout.trim().split('\n').pop() ?? '';
  if (r.status !== 0 || !last.startsWith('{')) {
    throw new Error(`case ${label} failed (${r.signal ?? `exit status ${r.status}`})`);
  }
  const row = { label, tasks, ...(JSON.parse(last) as Stats) };
  printRow(row);
  return row;
}

const ms = (s: Spread): string => `${s.min.toFixed(1)}/${s.median.toFixed(1)}/${s.max.toFixed(1)}`.padStart(22);
const us = (v: number, tasks: number): string => (v * 1000 / tasks).toFixed(0).padStart(10);

function printRow(r: Row): void {
  console.log(`${r.label.padEnd(27)}${String(r.tasks).padStart(6)}${ms(r.frozenMs)}${ms(r.checkpointMs)}${ms(r.restoreMs)}   `
    + `${us(r.frozenMs.median, r.tasks)}${us(r.checkpointMs.median, r.tasks)}${us(r.restoreMs.median, r.tasks).padStart(11)}`);
}

/** Per-task cost (median) at the largest size over that at `ref` tasks, per figure. */
function flatness(rows: readonly Row[], ref: number): string {
  const a = rows.find((r) => r.tasks === ref)!;
  const z = rows[rows.length - 1]!;
  const ratio = (k: keyof Figures): string => ((z[k].median / z.tasks) / (a[k].median / a.tasks)).toFixed(2);
  return `per-task cost at ${z.tasks} / at ${ref}: frozen ${ratio('frozenMs')}, checkpoint ${ratio('checkpointMs')}, restore ${ratio('restoreMs')} (1.00 = flat)`;
}

async function main(): Promise<void> {
  if (caseArgs) {
    await runCaseHere(Number(caseArgs[1]), Number(caseArgs[2]));
    return;
  }
  try {
    console.log(`ferry bench:tree: checkpoint${opts.leaveRunning ? ' --leave-running' : ''} and restore per task, min/median/max of ${RUNS} runs, image in ${dir} (tmpfs)`);
    console.log(`${'case'.padEnd(27)}${'tasks'.padStart(6)}${'frozen ms'.padStart(22)}${'ckpt ms'.padStart(22)}${'restore ms'.padStart(22)}   `
      + `${'frozen µs'.padStart(10)}${'ckpt µs'.padStart(10)}${'restore µs'.padStart(11)}  (µs: per task, median)`);
    const wanted = (procs: number, threads: number): boolean => opts.only?.has(`${procs}x${threads}`) ?? true;
    const trees: Row[] = [];
    for (const procs of TREES.filter((p) => wanted(p, 1))) trees.push(runCase(`${procs} process${procs > 1 ? 'es' : ''} × 1 thread`, procs, 0, procs));
    const threads: Row[] = [];
    for (const n of THREADS.filter((t) => wanted(1, t))) threads.push(runCase(`1 process × ${n} thread${n > 1 ? 's' : ''}`, 1, n - 1, n));
    if (trees.some((r) => r.tasks === 10) && trees.length > 1) console.log(`processes: ${flatness(trees, 10)}`);
    if (threads.some((r) => r.tasks === 4) && threads.length > 1) console.log(`threads:   ${flatness(threads, 4)}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
