/**
 * Live migration with pre-copy against stop and copy (issue 11, deliverable 7; docs/migration.md):
 * a process with N MiB of touched memory and a writer rewriting 10 MiB/s of it (the dirtier
 * workload, test/fixtures/workloads/dirtier.c) is migrated over loopback TCP by `ferry
 * migrate` to a `ferry receive --once`, RUNS times each with pre-copy, with pre-copy and
 * --lazy (lazy pages, src/restore/lazy.ts) and with --no-pre-copy, for each size. Printed per
 * size and mode: total time (for --lazy, until the target holds every page), downtime (from
 * the freeze to the word that the process runs on the target), where the downtime went (the
 * source's checkpoint to its last byte, and of it to its first: the tree read and hashed; the
 * target's verification, the kill, the restore, and of it the memory written), the pages the
 * frozen checkpoint read and those the top-up rounds sent just before the freeze, bytes that crossed (rounds and the image less what it named by
 * reference) against the memory size, rounds, each as min/median/max; then the ratios
 * pre-copy / stop-and-copy and lazy / stop-and-copy of the same run (downtime, total).
 * Every restored process checks every page (SIGUSR1: PASS) before it is killed; a FAIL stops
 * the bench.
 *
 * Usage: node dist/bench/migrate.js (npm run bench:migrate). Needs root and a built tree
 * (npm run build). FERRY_BENCH_MIGRATE_MIB: the sizes in MiB, comma-separated (default
 * 256,1024); FERRY_BENCH_MIGRATE_RATE: MiB/s the writer rewrites (default 10);
 * FERRY_BENCH_MIGRATE_RUNS (default 3); FERRY_BENCH_MIGRATE_MODES: which of pre, lazy, stop to
 * run (default all three; the ratios are printed only with all three);
 * FERRY_BENCH_MIGRATE_PIDNS=1: the receiver runs in a pid namespace (and mount namespace, its
 * own /proc) of its own, as on another node, where the process's pid is free while the rounds
 * come (the staging stub takes it and becomes the root: docs/migration.md, "Staged memory");
 * by default it runs beside the source, which holds that pid until the freeze.
 *
 * The workload's start is one function (startWorkload) so that a container variant can be
 * added beside the process one.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../src/native/binding.js';
import { closeInheritedFds } from '../src/proc/inherited.js';
import { showSpread, spread } from './spread.js';

// The workloads start with descriptors 0-2 only, whatever the shell leaked to us.
closeInheritedFds();

const SIZES = (process.env['FERRY_BENCH_MIGRATE_MIB'] ?? '256,1024').split(',').map(Number).filter((n) => n > 0);
const RATE = Number(process.env['FERRY_BENCH_MIGRATE_RATE'] ?? '10');
const RUNS = Number(process.env['FERRY_BENCH_MIGRATE_RUNS'] ?? '3');
const MODES = (process.env['FERRY_BENCH_MIGRATE_MODES'] ?? 'pre,lazy,stop').split(',')
  .filter((m): m is Mode => m === 'pre' || m === 'lazy' || m === 'stop');
const FERRY = join(PACKAGE_ROOT, 'bin', 'ferry');
const PIDNS = process.env['FERRY_BENCH_MIGRATE_PIDNS'] === '1';
const DIRTIER = join(PACKAGE_ROOT, 'build', 'workloads', 'dirtier');

const dir = mkdtempSync('/var/tmp/ferry-bench-migrate-');
const workDir = join(dir, 'work');
const config = join(dir, 'config.toml');
const key = join(dir, 'migrate.key');
const killed = new Set<number>();
const children = new Set<ChildProcess>();
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function waitFor(what: string, cond: () => boolean, ms = 120_000): Promise<void> {
  for (const end = Date.now() + ms; Date.now() < end; await sleep(20)) if (cond()) return;
  throw new Error(`timed out waiting for ${what}`);
}

/** A running workload: its pid and how to read what it printed. */
interface Workload {
  pid: number;
  text(): string;
  /** Asks it (as `pid` in this pid namespace: the target's may be another) to check itself; resolves with its verdict line. */
  verify(pid?: number): Promise<string>;
}

/**
 * Starts the workload to migrate: `mib` MiB touched, `rate` MiB/s rewritten. The one place a
 * container variant (ferry migrate CONTAINER) plugs in.
 */
async function startWorkload(kind: 'process', mib: number, rate: number, run: string): Promise<Workload> {
  if (kind !== 'process') throw new Error(`no ${String(kind)} workload yet`);
  const log = join(dir, `${run}.log`);
  const fd = openSync(log, 'a');
  const child = spawn(DIRTIER, [String(mib), String(rate)], { stdio: ['ignore', fd, fd], detached: true });
  closeSync(fd);
  const pid = child.pid!;
  killed.add(pid);
  child.unref();
  const text = (): string => readFileSync(log, 'utf8');
  await waitFor(`${run} to be ready`, () => text().includes(`ready pid=${pid}`));
  await waitFor(`${run} to write`, () => (text().match(/^tick /gm) ?? []).length >= 2);
  return {
    pid, text,
    async verify(at = pid): Promise<string> {
      const before = (text().match(/^(PASS|FAIL.*)$/gm) ?? []).length;
      process.kill(at, 'SIGUSR1');
      await waitFor(`a verdict from ${pid}`, () => (text().match(/^(PASS|FAIL.*)$/gm) ?? []).length > before, 60_000);
      return (text().match(/^(PASS|FAIL.*)$/gm) ?? [])[before]!;
    },
  };
}

/**
 * Runs bin/ferry `args`; resolves with its exit status and output. `pidns`: in a pid and mount
 * namespace of its own, whose pid 1, a shell, prints ferry's status and then waits (what ferry
 * restored there outlives it) until the child, unshare, is killed or this process ends (its
 * stdin's end): it resolves at that line.
 */
function ferry(args: string[], pidns = false): { child: ChildProcess; done: Promise<{ code: number; stdout: string; stderr: string }> } {
  const child = pidns
    ? spawn('unshare', ['--pid', '--fork', '--mount-proc', '--kill-child', 'sh', '-c', '"$@" </dev/null; echo "ferry-exit=$?"; read x', 'sh', FERRY, ...args, '--config', config],
      { stdio: ['pipe', 'pipe', 'pipe'] })
    : spawn(FERRY, [...args, '--config', config], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let stdout = '', stderr = '';
  child.stdout!.on('data', (d: Buffer) => { stdout += d.toString(); });
  child.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
  const done = new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
    child.on('close', (code) => {
      children.delete(child);
      resolve({ code: code ?? 1, stdout, stderr });
    });
    if (pidns) {
      child.stdout!.on('data', () => {
        const m = /^ferry-exit=(\d+)$/m.exec(stdout);
        if (m) resolve({ code: Number(m[1]), stdout, stderr });
      });
    }
  });
  return { child, done };
}

const json = (s: string): Array<Record<string, number>> => s.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, number>);

interface Figures {
  totalMs: number; downtimeMs: number; sentBytes: number; rounds: number;
  /** Of the downtime: checkpoint to its last byte, target's verification, kill, restore, memory written in it. */
  checkpointMs: number; firstByteMs: number; verifyMs: number; killMs: number; restoreMs: number; memoryMs: number;
  /** Pages the frozen checkpoint read from the tree (pre-copy: those the target did not hold), and the top-up rounds' pages. */
  pagesRead: number; topUpPages: number;
}
type Mode = 'pre' | 'lazy' | 'stop';

/** One migration of a fresh workload; the restored one checks itself and is killed. */
async function migrateOnce(mib: number, mode: Mode, run: string): Promise<Figures> {
  const w = await startWorkload('process', mib, RATE, run);
  const recv = ferry(['receive', '--listen', '127.0.0.1:0', '--key', key, '--once', '--max-creds', 'root', '--json'], PIDNS);
  let port = 0;
  let out = '';
  recv.child.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  await waitFor('the receiver to listen', () => { port = json(out).find((r) => r['port'] !== undefined)?.['port'] ?? 0; return port > 0; });
  const mig = ferry(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--json',
    ...(mode === 'stop' ? ['--no-pre-copy'] : mode === 'lazy' ? ['--lazy'] : [])]);
  const m = await mig.done;
  const r = await recv.done;
  if (m.code !== 0 || r.code !== 0) throw new Error(`${run}: ferry migrate ${m.code}: ${m.stderr} / ferry receive ${r.code}: ${r.stderr}`);
  // Into a pid namespace, the source's pid here is given up (its number may be another's soon).
  if (PIDNS) killed.delete(w.pid);
  // The source was killed (its zombie is init's: it was detached from us); the PID is back,
  // here or in the receiver's pid namespace.
  let there = w.pid;
  if (PIDNS) {
    await waitFor(`${run} to run on the target`, () => (there = pidInNsOf(recv.child.pid!, w.pid) ?? 0) > 0);
  } else {
    await waitFor(`${run} to run on the target`, () => existsSync(`/proc/${w.pid}`));
  }
  const verdict = await w.verify(there);
  if (verdict !== 'PASS') throw new Error(`${run}: the migrated process says ${verdict}`);
  if (PIDNS) recv.child.kill('SIGKILL'); // the namespace, with the process in it
  else process.kill(w.pid, 'SIGKILL');
  killed.delete(w.pid);
  const recs = json(m.stdout);
  const done = recs.find((x) => x['downtimeMs'] !== undefined && x['totalMs'] !== undefined)!;
  const cp = recs.find((x) => x['imageBytes'] !== undefined)!;
  const image = cp['imageBytes']!;
  const phases = done['phases'] as unknown as Record<string, number> & { target?: Record<string, number> };
  if (process.env['FERRY_BENCH_MIGRATE_RAW'] === '1') {
    // One line per run, for comparing trees run by run: the downtime's phases, the pages the
    // frozen checkpoint read and the top-ups sent, the rounds' times, the target's memory
    // phase and, with --lazy, the fill.
    const filled = json(out).find((x) => x['fillMs'] !== undefined);
    console.log(`# run ${JSON.stringify({ run, downtimeMs: done['downtimeMs'], checkpointMs: phases['checkpointMs'], firstByteMs: phases['firstByteMs'],
      verifyMs: phases['verifyMs'], killMs: phases['killMs'], pagesRead: cp['pagesRead'], topUpPages: cp['topUpPages'], restoreMs: phases['restoreMs'], memoryMs: phases.target?.['memoryMs'],
      roundsMs: recs.filter((x) => x['round'] !== undefined).map((x) => x['ms']), fillMs: filled?.['fillMs'], faults: filled?.['faults'], pages: filled?.['pages'] })}`);
  }
  return {
    totalMs: done['totalMs']!, downtimeMs: done['downtimeMs']!, rounds: done['rounds']!,
    sentBytes: done['roundBytes']! + image - done['refBytes']!,
    checkpointMs: phases['checkpointMs']!, firstByteMs: phases['firstByteMs']!, verifyMs: phases['verifyMs']!, killMs: phases['killMs']!, restoreMs: phases['restoreMs']!,
    memoryMs: phases.target?.['memoryMs'] ?? 0,
    pagesRead: cp['pagesRead'] ?? NaN, topUpPages: cp['topUpPages'] ?? NaN, // none without pre-copy
  };
}

/** This namespace's pid of `pid` of the pid namespace whose init is unshare `unshare`'s child, or undefined. */
function pidInNsOf(unshare: number, pid: number): number | undefined {
  try {
    const init = readFileSync(`/proc/${unshare}/task/${unshare}/children`, 'utf8').trim().split(/\s+/)[0];
    const ns = readlinkSync(`/proc/${init}/ns/pid`);
    for (const d of readdirSync('/proc')) {
      if (!/^\d+$/.test(d)) continue;
      try {
        if (readlinkSync(`/proc/${d}/ns/pid`) !== ns) continue;
        if (/^NSpid:\s+(.*)$/m.exec(readFileSync(`/proc/${d}/status`, 'utf8'))?.[1]?.trim().split(/\s+/).map(Number).at(-1) === pid) return Number(d);
      } catch { /* gone meanwhile */ }
    }
  } catch { /* not there yet */ }
  return undefined;
}

const ms = (n: number): string => `${Math.round(n)}`;

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('needs root');
  if (!existsSync(DIRTIER)) throw new Error(`needs ${DIRTIER} (npm run build:native)`);
  mkdirSync(workDir, { mode: 0o700 });
  writeFileSync(config, `[image]\nwork_dir = "${workDir}"\n`);
  writeFileSync(key, `${'a7'.repeat(32)}\n`, { mode: 0o600 });
  console.log(`ferry migrate over loopback TCP, a process rewriting ${RATE} MiB/s of its memory; ${RUNS} runs each; min / median / max`
    + (PIDNS ? '; the receiver in a pid namespace of its own (as on another node)' : ''));
  for (const mib of SIZES) {
    const res: Record<Mode, Figures[]> = { pre: [], lazy: [], stop: [] };
    for (let i = 0; i < RUNS; i++) {
      // Alternated, so that a busy moment of the machine does not fall on one mode only.
      for (const mode of MODES) res[mode].push(await migrateOnce(mib, mode, `${mode}-${mib}-${i}`));
    }
    console.log(`\n${mib} MiB                 pre-copy                 pre-copy --lazy          stop and copy`);
    const row = (name: string, f: (x: Figures) => number, show: (n: number) => string): void => {
      const col = (m: Mode): string => (res[m].length > 0 ? showSpread(res[m].map(f), show) : '-');
      console.log(`  ${name.padEnd(18)} ${col('pre').padEnd(24)} ${col('lazy').padEnd(24)} ${col('stop')}`);
    };
    row('total ms', (x) => x.totalMs, ms);
    row('downtime ms', (x) => x.downtimeMs, ms);
    row('  checkpoint ms', (x) => x.checkpointMs, ms);
    row('    1st byte ms', (x) => x.firstByteMs, ms);
    row('  verify ms', (x) => x.verifyMs, ms);
    row('  kill ms', (x) => x.killMs, ms);
    row('  restore ms', (x) => x.restoreMs, ms);
    row('    memory ms', (x) => x.memoryMs, ms);
    const count = (n: number): string => (Number.isNaN(n) ? '-' : String(n));
    row('pages read frozen', (x) => x.pagesRead, count);
    row('top-up pages', (x) => x.topUpPages, count);
    row('sent / memory', (x) => x.sentBytes / (mib * 1024 * 1024), (n) => n.toFixed(2));
    row('rounds', (x) => x.rounds, (n) => String(n));
    const med = (k: Mode, f: (x: Figures) => number): number => spread(res[k].map(f)).median;
    const ratio = (k: Mode, f: (x: Figures) => number): string => (med(k, f) / med('stop', f)).toFixed(2);
    if (res.stop.length === 0 || res.pre.length === 0 || res.lazy.length === 0) continue;
    console.log(`  against stop and copy: downtime pre-copy ${ratio('pre', (x) => x.downtimeMs)}, lazy ${ratio('lazy', (x) => x.downtimeMs)}`
      + `; total pre-copy ${ratio('pre', (x) => x.totalMs)}, lazy ${ratio('lazy', (x) => x.totalMs)} (medians of this run)`);
  }
}

try {
  await main();
} finally {
  for (const c of children) c.kill('SIGKILL');
  for (const pid of killed) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
  }
  rmSync(dir, { recursive: true, force: true });
}
