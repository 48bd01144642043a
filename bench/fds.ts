/**
 * How checkpoint and restore scale with the number of descriptors: one process
 * (bench/fixtures/manyfds.c) holding 1,000, 5,000 and 10,000 descriptors of mixed kinds
 * (pipes, regular files, /dev/null, eventfds when this ferry has the eventfd kind) with one
 * epoll of n/10 items and one inotify instance of n/10 watches. Each case runs in a fresh node
 * process, three times (five times for the small ones); the median of each figure is printed
 * in ms with its min and max, and in µs per descriptor. A base case, the same process with a dozen descriptors, gives the
 * fixed cost of a process; the cost per descriptor above it is printed for each size, then how
 * flat it is (its value at the largest size over its value at the smallest: 1.00 is flat). A
 * last pair of cases compares one inotify watch with descriptor 1 against one with descriptor
 * 0x34d71d6: the same cost means the descriptor is set directly (INOTIFY_IOC_SETNEXTWD), not
 * reached by a loop.
 *
 * The image goes to a fresh directory under /dev/shm (tmpfs). Every restored copy checks
 * itself (SIGUSR1: PASS) before it is killed; every pid the bench started or restored is
 * killed if anything fails.
 *
 * Usage: node dist/bench/fds.js (npm run bench:fds). Needs root and a built tree (npm run build).
 * FERRY_BENCH_PROFILE=DIR writes a V8 CPU profile of each case process into DIR.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { checkpoint, restore } from '../src/index.js';
import { loadConfig } from '../src/config/config.js';
import { native, PACKAGE_ROOT } from '../src/native/binding.js';
import { kindByName } from '../src/files/registry.js';
import { closeInheritedFds } from '../src/proc/inherited.js';
import { alive, killAll, waitFor } from './procs.js';

// The workloads start with descriptors 0-2 only, whatever the shell leaked to us (src/proc/inherited.ts).
closeInheritedFds();

const RUNS = 3;
/** Runs of the small cases (the base and the watch-descriptor comparison), whose figures are a few ms. */
const SMALL_RUNS = 5;
const SIZES = [1000, 5000, 10000];
const BIG_WD = 0x34d71d6;

/** `--case DIR RUNS NFDS EPOLL WATCHES EVENTFDS FIRST_WD`: one case, run in a fresh node process. */
const caseArgs = process.argv[2] === '--case' ? process.argv.slice(3).map((a, i) => (i === 0 ? a : Number(a))) : undefined;
const dir = (caseArgs?.[0] as string | undefined) ?? mkdtempSync('/dev/shm/ferry-fds-');
const config = loadConfig({});
const logger = pino({ level: 'silent' });
const fixture = join(PACKAGE_ROOT, 'build', 'bench', 'manyfds');

const tracked = new Set<number>();
const children: ChildProcess[] = [];
interface Figures { fds: number; frozenMs: number; checkpointMs: number; restoreMs: number }

/** One checkpoint + restore cycle of a fresh fixture; the restored copy checks itself and is killed. */
async function cycle(run: string, nfds: number, epoll: number, watches: number, eventfds: number, firstWd: number): Promise<Figures> {
  const work = join(dir, run);
  const log = join(dir, `${run}.log`);
  rmSync(work, { recursive: true, force: true });
  spawnSync('mkdir', ['-p', work]);
  const fd = openSync(log, 'w');
  const child = spawn(fixture, [work, String(nfds), String(epoll), String(watches), String(eventfds), String(firstWd)],
    { stdio: ['ignore', fd, fd], detached: true });
  closeSync(fd);
  children.push(child);
  const pid = child.pid!;
  tracked.add(pid);
  let fds = 0;
  await waitFor('the fixture to get ready', () => {
    const m = /ready pid=\d+ fds=(\d+)/.exec(readFileSync(log, 'utf8'));
    if (m) fds = Number(m[1]);
    if (child.exitCode !== null) throw new Error(`manyfds exited early: ${readFileSync(log, 'utf8').trim()}`);
    return m !== null;
  });
  const image = join(dir, 'fds.tar');
  const cp = await checkpoint({ pid, image, leaveRunning: false, config, logger });
  await waitFor(`pid ${pid} to be free`, () => !alive(pid));
  const rs = await restore({ image, config, logger });
  if (rs.pid !== pid) throw new Error(`restored pid ${rs.pid}, expected ${pid}`);
  process.kill(pid, 'SIGUSR1');
  try {
    await waitFor('the restored copy to check itself', () => /^(PASS|FAIL.*)$/m.test(readFileSync(log, 'utf8')), 10_000);
  } catch (err) {
    const st = readFileSync(`/proc/${pid}/status`, 'utf8');
    console.error(st.split('\n').filter((l) => /^(State|Sig|TracerPid|PPid)/.test(l)).join('\n'), readFileSync(`/proc/${pid}/wchan`, 'utf8'), readFileSync(`/proc/${pid}/syscall`, 'utf8'));
    throw err;
  }
  const verdict = /^(PASS|FAIL.*)$/m.exec(readFileSync(log, 'utf8'))![1];
  // It exits after checking; it is this process's child (restore created it): reap it.
  try { native().waitpid(pid); } catch { /* reaped */ }
  tracked.delete(pid);
  if (verdict !== 'PASS') throw new Error(`restored copy: ${verdict}`);
  rmSync(image, { force: true });
  return { fds, frozenMs: cp.frozenMs, checkpointMs: cp.totalMs, restoreMs: rs.restoreMs };
}

async function runCaseHere(args: number[]): Promise<void> {
  const [runs, nfds, epoll, watches, eventfds, firstWd] = args as [number, number, number, number, number, number];
  const all: Figures[] = [];
  try {
    for (let i = 0; i < runs; i++) all.push(await cycle(`run${i}`, nfds, epoll, watches, eventfds, firstWd));
  } finally {
    killAll(tracked, children);
  }
  console.log(JSON.stringify(all));
}

type K = 'frozenMs' | 'checkpointMs' | 'restoreMs';
/** A case's median figures, with the min and max of each over its runs. */
interface Row extends Figures { label: string; min: Figures; max: Figures }

function summary(label: string, all: Figures[]): Row {
  const pick = (k: K, at: (sorted: number[]) => number): number => at(all.map((f) => f[k]).sort((a, b) => a - b));
  const of = (at: (sorted: number[]) => number): Figures => ({
    fds: all[0]!.fds,
    frozenMs: pick('frozenMs', at), checkpointMs: pick('checkpointMs', at), restoreMs: pick('restoreMs', at),
  });
  return { label, ...of((v) => v[(v.length - 1) >> 1]!), min: of((v) => v[0]!), max: of((v) => v.at(-1)!) };
}

function runCase(label: string, runs: number, nfds: number, epoll: number, watches: number, eventfds: number, firstWd: number): Row {
  const prof = process.env.FERRY_BENCH_PROFILE;
  const flags = prof ? ['--cpu-prof', '--cpu-prof-dir', prof, '--cpu-prof-name', `${label.replace(/[^\w]+/g, '-')}.cpuprofile`] : [];
  const r = spawnSync(process.execPath, [...flags, fileURLToPath(import.meta.url), '--case', dir, String(runs),
    String(nfds), String(epoll), String(watches), String(eventfds), String(firstWd)],
  { stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' });
  const last = r.stdout.trim().split('\n').pop() ?? '';
  if (r.status !== 0 || !last.startsWith('[')) throw new Error(`case ${label} failed (${r.signal ?? `exit status ${r.status}`})`);
  const row = summary(label, JSON.parse(last) as Figures[]);
  printRow(row);
  return row;
}

const ms = (v: number): string => v.toFixed(1).padStart(11);
const us = (v: number, n: number): string => (v * 1000 / n).toFixed(1).padStart(10);

const range = (r: Row, k: K): string => `${r.min[k].toFixed(0)}-${r.max[k].toFixed(0)}`.padStart(11);

function printRow(r: Row): void {
  console.log(`${r.label.padEnd(34)}${String(r.fds).padStart(6)}${ms(r.frozenMs)}${ms(r.checkpointMs)}${ms(r.restoreMs)}   `
    + `${us(r.frozenMs, r.fds)}${us(r.checkpointMs, r.fds)}${us(r.restoreMs, r.fds).padStart(11)}   `
    + `${range(r, 'frozenMs')}${range(r, 'checkpointMs')}${range(r, 'restoreMs')}`);
}

async function main(): Promise<void> {
  if (caseArgs) {
    await runCaseHere(caseArgs.slice(1) as number[]);
    return;
  }
  let hasEventfd = true;
  try { kindByName('eventfd'); } catch { hasEventfd = false; }
  try {
    console.log(`ferry bench:fds: checkpoint and restore per descriptor, median of ${RUNS} runs (min-max at the right), image in ${dir} (tmpfs)`);
    console.log(`kinds: 30% pipe ends, 30% regular files, ${hasEventfd ? '20% eventfds, ' : ''}the rest /dev/null; one epoll with n/10 items, one inotify with n/10 watches`);
    console.log(`${'case'.padEnd(34)}${'fds'.padStart(6)}${'frozen ms'.padStart(11)}${'ckpt ms'.padStart(11)}${'restore ms'.padStart(11)}   `
      + `${'frozen µs'.padStart(10)}${'ckpt µs'.padStart(10)}${'restore µs'.padStart(11)}   `
      + `${'frozen ms'.padStart(11)}${'ckpt ms'.padStart(11)}${'restore ms'.padStart(11)}  (µs: per fd; then min-max)`);
    // The base: the same process with a dozen descriptors; what the sizes cost above it is
    // what their descriptors cost.
    const base = runCase('base: 13 fds', SMALL_RUNS, 10, 0, 0, 0, 1);
    const rows: Row[] = [];
    for (const n of SIZES) {
      rows.push(runCase(`${n} fds, ${n / 10} epoll, ${n / 10} inotify`, RUNS, n, n / 10, n / 10, hasEventfd ? n / 5 : 0, 1));
    }
    const above = (r: Row, k: K): number => (r[k] - base[k]) * 1000 / (r.fds - base.fds);
    for (const r of rows) {
      console.log(`per fd above the base at ${String(r.fds).padStart(5)} fds: frozen ${above(r, 'frozenMs').toFixed(1)} µs, `
        + `checkpoint ${above(r, 'checkpointMs').toFixed(1)} µs, restore ${above(r, 'restoreMs').toFixed(1)} µs`);
    }
    const a = rows[0]!, z = rows[rows.length - 1]!;
    const ratio = (k: K): string => (above(z, k) / above(a, k)).toFixed(2);
    console.log(`per-fd cost at ${z.fds} / at ${a.fds} fds: frozen ${ratio('frozenMs')}, checkpoint ${ratio('checkpointMs')}, restore ${ratio('restoreMs')} (1.00 = flat)`);
    const low = runCase('1 inotify watch, wd 1', SMALL_RUNS, 10, 0, 1, 0, 1);
    const high = runCase(`1 inotify watch, wd 0x${BIG_WD.toString(16)}`, SMALL_RUNS, 10, 0, 1, 0, BIG_WD);
    const diff = (k: K): string => `${(high[k] - low[k]).toFixed(1)} ms`;
    console.log(`wd 0x${BIG_WD.toString(16)} - wd 1: checkpoint ${diff('checkpointMs')}, restore ${diff('restoreMs')} (0 = the same cost; a few ms is noise here)`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
