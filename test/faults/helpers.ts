/**
 * The fault matrix's machinery: run bin/ferry paused at a named phase (src/fault.ts), hit it
 * with a fault, and check that the workload did not notice; record every cell of the matrix
 * and print it as a table at the end.
 *
 * A cell collects problems instead of stopping at the first failed assertion, so the table says
 * everything that went wrong in it; a cell with no problem is "ok". What a cell checks is the
 * intended behaviour (the brief of issue 8):
 * - checkpoint, SIGKILL at any phase: the tree runs on untraced, not stopped, with its signal
 *   mask, and passes its own check; the older image at the target path is untouched (a stale
 *   temporary file next to it is allowed);
 * - checkpoint, SIGTERM/SIGINT before `written`: exit 143/130, one line, tree intact, the older
 *   image untouched and nothing else left in its directory; twice: never worse than once;
 * - checkpoint, a signal at `written`: the image in place is complete (a restore of it works)
 *   and the tree is either gone (the checkpoint finished) or intact (it was let go), never half;
 * - restore, any fault: nothing holds the image's pids afterwards, and a retry succeeds.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, copyFileSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { FERRY, WORKLOADS } from '../helpers/env.js';
import { askVerdict, scratchDir, shell, sleep, waitFor } from '../helpers/processes.js';

/** The self-checking workload (test/fixtures/workloads/memcheck.c). */
export const MEMCHECK = join(WORKLOADS, 'memcheck');

/** How a cell hits ferry. */
export type Fault = 'SIGKILL' | 'SIGTERM' | 'SIGINT' | 'SIGTERM twice';
/** The faults a checkpoint is hit with at each of its phases. */
export const CHECKPOINT_FAULTS: readonly Fault[] = ['SIGKILL', 'SIGTERM', 'SIGINT', 'SIGTERM twice'];
/** The faults a restore is hit with at each of its phases. */
export const RESTORE_FAULTS: readonly Fault[] = ['SIGKILL', 'SIGTERM', 'SIGTERM twice'];
/** Checkpoint phases of a process tree (`frozen` exists for containers only). */
export const PROCESS_CHECKPOINT_PHASES = ['seized', 'dumped', 'writing', 'written'] as const;
/** Checkpoint phases of a container: its cgroup is frozen first. */
export const CONTAINER_CHECKPOINT_PHASES = ['frozen', 'seized', 'dumped', 'writing', 'written'] as const;
/** Restore phases (src/fault.ts). */
export const RESTORE_PHASES = ['verified', 'created', 'rebuilt', 'letgo'] as const;
/** Columns of the table: every phase, then the faults that are not tied to one. */
export const COLUMNS = ['frozen', 'seized', 'dumped', 'writing', 'written', 'verified', 'configswap', 'created', 'rebuilt', 'letgo', 'once'] as const;

/** The exit status the CLI gives for a handled signal. */
export const SIGNAL_STATUS = { SIGTERM: 143, SIGINT: 130 } as const;
/** SIGBLK of a memcheck process: SIGUSR2 (12) only. */
export const MEMCHECK_SIGBLK = 1n << 11n;

/** How long ferry gets to reach a pause point, and to exit after it was hit. */
const PAUSE_TIMEOUT_MS = 20000;
const EXIT_TIMEOUT_MS = 60000;

/* ------------------------------------------------------------------------------------------ */
/* The matrix                                                                                 */

/** The problems of one cell (empty: ok). */
export type Problems = string[];

/** Every cell run so far, by row and column, printed as a table by render(). */
export class Matrix {
  private readonly rows = new Map<string, Map<string, Problems>>();

  constructor(private readonly title: string) {}

  /** Records cell (row, col); a later record of the same cell replaces it. */
  record(row: string, col: string, problems: Problems): void {
    if (!this.rows.has(row)) this.rows.set(row, new Map());
    this.rows.get(row)!.set(col, [...problems]);
  }

  /**
   * The table, then every failed cell with all its reasons. A cell says "ok", "not wired" (ferry
   * never reached the pause point: the fault was not tried, nothing is known about harm) or
   * "FAIL [k] <first reason, cut>", k numbering the list below the table (node:test escapes "#"
   * in what a test file prints).
   */
  render(): string {
    const cols = COLUMNS.filter((c) => [...this.rows.values()].some((r) => r.has(c)));
    const failures: string[] = [];
    let ok = 0;
    let unwired = 0;
    const texts = new Map<string, Map<string, string>>();
    for (const [row, cells] of this.rows) {
      const t = new Map<string, string>();
      for (const c of cols) {
        const p = cells.get(c);
        if (p === undefined) t.set(c, '');
        else if (p.length === 0) {
          ok++;
          t.set(c, 'ok');
        } else {
          failures.push(`[${failures.length + 1}] ${row} @ ${c}: ${p.join(' | ')}`);
          if (p.length === 1 && NOT_WIRED.test(p[0]!)) {
            unwired++;
            t.set(c, `not wired [${failures.length}]`);
          } else {
            const first = `FAIL [${failures.length}] ${p[0]}`;
            t.set(c, first.length > 30 ? `${first.slice(0, 29)}…` : first);
          }
        }
      }
      texts.set(row, t);
    }
    const rowWidth = Math.max(...[...this.rows.keys()].map((r) => r.length));
    const widths = cols.map((c) => Math.max(c.length, ...[...texts.values()].map((t) => t.get(c)!.length)));
    const line = (first: string, cells: string[]): string => `| ${first.padEnd(rowWidth)} | ${cells.map((x, i) => x.padEnd(widths[i]!)).join(' | ')} |`;
    const out = [this.title, line('', [...cols]), line('-'.repeat(rowWidth), widths.map((w) => '-'.repeat(w)))];
    for (const [row, t] of texts) out.push(line(row, cols.map((c) => t.get(c)!)));
    out.push(`${ok} ok, ${failures.length - unwired} failed, ${unwired} not tried (pause point not reached)`);
    if (failures.length) out.push(...failures);
    return out.join('\n');
  }
}

/** The problem waitPaused reports when ferry ended without reaching the pause point. */
const NOT_WIRED = /^(first restore: )?no pause at \w+: ferry exited 0 first/;

/**
 * Runs one cell: `body` pushes problems; an exception is a problem too. Records the cell and
 * returns its problems (the caller asserts, so node:test reports the cell).
 */
export async function cell(m: Matrix, row: string, col: string, body: (p: Problems) => Promise<void>): Promise<Problems> {
  const problems: Problems = [];
  try {
    await body(problems);
  } catch (err) {
    problems.push(`error: ${(err instanceof Error ? err.message : String(err)).split('\n')[0]}`);
  }
  m.record(row, col, problems);
  return problems;
}

/* ------------------------------------------------------------------------------------------ */
/* ferry, paused and hit                                                                      */

/** A bin/ferry run started asynchronously (this process is its parent and reaps it). */
export interface FerryRun {
  child: ChildProcess;
  pid: number;
  stdout(): string;
  stderr(): string;
  /** Settles when ferry has exited. */
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  exited: boolean;
}

/** Starts `ferry args`, paused at `pauseAt` when given. */
export function startFerry(args: string[], pauseAt?: string): FerryRun {
  const env = { ...process.env };
  delete env.FERRY_TEST_PAUSE_AT;
  if (pauseAt !== undefined) env.FERRY_TEST_PAUSE_AT = pauseAt;
  const child = spawn(FERRY, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout!.on('data', (d: Buffer) => out.push(d));
  child.stderr!.on('data', (d: Buffer) => err.push(d));
  const run: FerryRun = {
    child,
    pid: child.pid!,
    stdout: () => Buffer.concat(out).toString(),
    stderr: () => Buffer.concat(err).toString(),
    exited: false,
    exit: new Promise((resolve) => child.on('close', (code, signal) => {
      run.exited = true;
      resolve({ code, signal });
    })),
  };
  return run;
}

const PAUSE_LINE = /^ferry-test: paused at (\w+) \(pid (\d+)\)$/m;

/**
 * Waits until `run` says it paused at `phase`. Returns undefined when it did, else the problem:
 * it exited first (the pause point is not wired, or ferry failed before it), it paused
 * elsewhere, or it said nothing in time (then it is killed).
 */
export async function waitPaused(run: FerryRun, phase: string): Promise<string | undefined> {
  const end = Date.now() + PAUSE_TIMEOUT_MS;
  while (Date.now() < end) {
    const m = PAUSE_LINE.exec(run.stderr());
    if (m) {
      if (m[1] !== phase) return `paused at ${m[1]} instead of ${phase}`;
      if (Number(m[2]) !== run.pid) return `pause line names pid ${m[2]}, ferry is ${run.pid}`;
      return undefined;
    }
    if (run.exited) {
      const r = await run.exit;
      const said = firstLine(run.stderr()) || firstLine(run.stdout());
      const why = r.code === 0 ? 'pause point not wired?' : 'it failed before reaching it';
      return `no pause at ${phase}: ferry exited ${r.code ?? r.signal} first (${why})${said ? `: ${said}` : ''}`;
    }
    await sleep(10);
  }
  run.child.kill('SIGKILL');
  await run.exit;
  return `no pause line for ${phase} within ${PAUSE_TIMEOUT_MS / 1000} s (killed it)`;
}

/**
 * Runs `ferry args` paused at `phase`, then `then(run)`; a ferry that never paused there is the
 * cell's problem (after `label`). However `then` ends, ferry is killed if it still runs, and
 * reaped, before this returns.
 */
export async function whilePaused(p: Problems, args: string[], phase: string, then: (run: FerryRun) => Promise<void>, label = ''): Promise<void> {
  const run = startFerry(args, phase);
  try {
    const notPaused = await waitPaused(run, phase);
    if (notPaused) {
      p.push(`${label}${notPaused}`);
      return;
    }
    await then(run);
  } finally {
    if (!run.exited) run.child.kill('SIGKILL');
    await run.exit;
  }
}

/** Hits a paused ferry with `fault` and waits (bounded) for it to exit. */
export async function hit(run: FerryRun, fault: Fault, problems: Problems): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (fault === 'SIGTERM twice') {
    run.child.kill('SIGTERM');
    // The second one lands while the first is being handled (the undo path): it must not cut it short.
    await sleep(30);
    if (!run.exited) run.child.kill('SIGTERM');
  } else {
    run.child.kill(fault);
  }
  return settle(run, `after ${fault}`, problems);
}

/** Waits for ferry to exit; past the bound it is a problem and ferry is killed. */
export async function settle(run: FerryRun, what: string, problems: Problems): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  const timer = new Promise<'timeout'>((r) => { const t = setTimeout(() => r('timeout'), EXIT_TIMEOUT_MS); t.unref(); });
  const r = await Promise.race([run.exit, timer]);
  if (r !== 'timeout') return r;
  problems.push(`ferry still running ${EXIT_TIMEOUT_MS / 1000} s ${what} (hangs; killed it)`);
  run.child.kill('SIGKILL');
  return run.exit;
}

/** Lines ferry wrote on stderr, without the pause line and blank lines. */
export function stderrLines(s: string): string[] {
  return s.split('\n').filter((l) => l.trim() !== '' && !PAUSE_LINE.test(l));
}

function firstLine(s: string): string {
  return stderrLines(s)[0] ?? '';
}

/** stderr holds at most `max` lines and nothing that looks like a stack trace. */
export function checkLines(problems: Problems, stderr: string, max: number, min = 1): void {
  const lines = stderrLines(stderr);
  if (lines.some((l) => /^\s+at\s/.test(l) || /node:internal|\.js:\d+:\d+/.test(l))) problems.push(`stack trace on stderr: ${lines.slice(0, 3).join(' / ')}`);
  else if (lines.length > max) problems.push(`${lines.length} lines on stderr, expected ${max}: ${lines.join(' / ')}`);
  else if (lines.length < min) problems.push('nothing on stderr');
}

/** The exit of a ferry hit by `fault` before `written`. */
export function checkAbortExit(problems: Problems, fault: Fault, r: { code: number | null; signal: NodeJS.Signals | null }, stderr: string): void {
  if (fault === 'SIGKILL') {
    if (r.signal !== 'SIGKILL') problems.push(`ferry survived SIGKILL? exit ${r.code ?? r.signal}`);
    return;
  }
  const want = fault === 'SIGINT' ? SIGNAL_STATUS.SIGINT : SIGNAL_STATUS.SIGTERM;
  // A second SIGTERM that lands after the cleanup, as ferry exits, may end it by the signal's
  // default action: a shell sees 143 all the same.
  const sameToAShell = fault === 'SIGTERM twice' && r.signal === 'SIGTERM';
  if (r.code !== want && !sameToAShell) problems.push(`exit ${r.code ?? r.signal}, expected ${want}${firstLine(stderr) ? ` (${firstLine(stderr)})` : ''}`);
  checkLines(problems, stderr, fault === 'SIGTERM twice' ? 2 : 1);
}

/**
 * The exit of a ferry hit by `fault` at `written`, where only the kill was left: it finished
 * (0) or reported the signal once settled (128 + n), with at most one line per signal.
 */
export function checkWrittenExit(problems: Problems, fault: Fault, r: { code: number | null; signal: NodeJS.Signals | null }, stderr: string): void {
  if (fault === 'SIGKILL') {
    if (r.signal !== 'SIGKILL') problems.push(`ferry survived SIGKILL? exit ${r.code}`);
    return;
  }
  const n = fault === 'SIGINT' ? SIGNAL_STATUS.SIGINT : SIGNAL_STATUS.SIGTERM;
  const sameToAShell = fault === 'SIGTERM twice' && r.signal === 'SIGTERM';
  if (r.code !== 0 && r.code !== n && !sameToAShell) problems.push(`exit ${r.code ?? r.signal}, expected 0 or ${n}`);
  checkLines(problems, stderr, fault === 'SIGTERM twice' ? 2 : 1, 0);
}

/* ------------------------------------------------------------------------------------------ */
/* Images                                                                                     */

/** sha256 of a file's contents, hex. */
export function sha256(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/** Files in `dir` other than `keep`. */
export function others(dir: string, ...keep: string[]): string[] {
  return readdirSync(dir).filter((f) => !keep.includes(f));
}

/* ------------------------------------------------------------------------------------------ */
/* Processes                                                                                  */

/** Fields of /proc/PID/status, or undefined when the pid is gone. */
export function status(pid: number): { state: string; tracer: number; ppid: number; sigblk: bigint; name: string } | undefined {
  let s: string;
  try {
    s = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return undefined;
  }
  const f = (k: string): string => new RegExp(`^${k}:\\s+(.*)$`, 'm').exec(s)?.[1]?.trim() ?? '';
  return { state: f('State').slice(0, 1), tracer: Number(f('TracerPid')), ppid: Number(f('PPid')), sigblk: BigInt(`0x${f('SigBlk') || '0'}`), name: f('Name') };
}

/** A status() for a message: name, state, tracer, parent. */
export function shown(st: ReturnType<typeof status>): string {
  return st === undefined ? 'gone' : `${st.name} state ${st.state} tracer ${st.tracer} parent ${st.ppid}`;
}

/** Whether `pid` is one of ours: a memcheck or a restore stub (before it is killed or signalled). */
export function ours(pid: number): boolean {
  const st = status(pid);
  return st !== undefined && (st.name === 'memcheck' || st.name === 'ferry-stub');
}

/** Kills each pid that is still one of ours. */
export function killOurs(pids: readonly number[]): void {
  for (const p of pids) if (ours(p)) try { process.kill(p, 'SIGKILL'); } catch { /* gone */ }
}

/**
 * Waits until none of `pids` exists (zombies included: a pid is free only once reaped; this
 * sandbox's init reaps orphans within about 2 s). Returns the pids still held, described.
 */
export async function pidsFree(pids: readonly number[], timeoutMs = 10000): Promise<string[]> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const held = pids.filter((p) => status(p) !== undefined);
    if (held.length === 0) return [];
    if (Date.now() > end) {
      return held.map((p) => {
        const st = status(p);
        return st ? `pid ${p} still held by ${st.name} (state ${st.state}, parent ${st.ppid})` : `pid ${p}`;
      });
    }
    await sleep(50);
  }
}

/** A workload tree under test: its processes, its log, and how to ask it for a verdict. */
export interface Tree {
  /** What it is, for messages. */
  what: string;
  /** Root first (host pids). */
  pids: number[];
  log: string;
  text(): string;
  /** Asks the root to check itself (SIGUSR1) and returns its next verdict line. */
  verdict(): Promise<string>;
}

/** A memcheck started by startMemcheck: also its scratch directory and its own exit. */
export interface Memcheck extends Tree {
  dir: string;
  /** Settles once the root we started has exited and was reaped (we are its parent). */
  exited: Promise<void>;
}

/** Every pid of every memcheck tree started (restores bring back the same pids). */
const started = new Set<number>();

/** Kills whatever is left of every tree started (only pids that still are a memcheck or a stub). */
export function killAll(): void {
  killOurs([...started]);
}
process.on('exit', killAll);

/**
 * Starts `memcheck MIB MODE` as our child, detached, its output on a log file in a fresh
 * scratch directory; the tree's pids are read from its log. `mib` may be a string such as
 * '256k' (KiB, a multiple of 64).
 */
export async function startMemcheck(mib: number | string, mode: 'one' | 'tree' | 'cow' | 'forker'): Promise<Memcheck> {
  const dir = scratchDir('ferry-fault-');
  const log = join(dir, 'workload.log');
  // O_APPEND: a process restored from an image appends instead of overwriting.
  const fd = openSync(log, 'a');
  const child = spawn(MEMCHECK, [String(mib), mode], { stdio: ['ignore', fd, fd], detached: true, cwd: dir });
  closeSync(fd);
  const pid = child.pid!;
  started.add(pid);
  const exited = new Promise<void>((r) => child.on('exit', () => r()));
  const text = (): string => readFileSync(log, 'utf8');
  try {
    await waitFor(`memcheck ${mode} to get ready`, () => text().includes(`ready pid=${pid}`));
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  const kids = /^children (\d+) (\d+) (\d+)$/m.exec(text());
  const pids = [pid, ...((mode === 'tree' || mode === 'cow') && kids ? kids.slice(1).map(Number) : [])];
  for (const p of pids) started.add(p);
  return { what: `memcheck ${mode}`, pids, log, text, dir, exited, verdict: () => askVerdict(pid, text) };
}

/** Runs `ferry args` to its end (asynchronously: this process keeps reaping its children meanwhile). */
export async function runFerry(args: string[], problems: Problems = []): Promise<{ code: number; stdout: string; stderr: string }> {
  const run = startFerry(args);
  const r = await settle(run, `running ferry ${args[0]}`, problems);
  return { code: r.code ?? -1, stdout: run.stdout(), stderr: run.stderr() };
}

/**
 * The tree runs on as if nothing happened: every process alive (not a zombie), untraced and
 * not stopped (given a moment for the kernel's detach), its signal mask exactly as the workload
 * set it, and the root's own check passes.
 */
export async function checkIntact(problems: Problems, t: Tree): Promise<void> {
  const before = problems.length;
  const settled = (p: number): boolean => {
    const st = status(p);
    return st !== undefined && st.tracer === 0 && !'tTZX'.includes(st.state);
  };
  try {
    await waitFor('the tree to settle', () => t.pids.every(settled), 3000);
  } catch { /* described below */ }
  for (const p of t.pids) {
    const st = status(p);
    if (st === undefined || 'ZX'.includes(st.state)) problems.push(`${t.what}: pid ${p} is gone`);
    else {
      if (st.tracer !== 0) problems.push(`pid ${p} still traced by ${st.tracer}`);
      if ('tT'.includes(st.state)) problems.push(`pid ${p} left stopped (${st.state})`);
      if (st.sigblk !== MEMCHECK_SIGBLK) problems.push(`pid ${p} signal mask ${st.sigblk.toString(16)}, was ${MEMCHECK_SIGBLK.toString(16)}`);
    }
  }
  if (problems.length > before) return; // a verdict would only time out
  const v = await t.verdict();
  if (v !== 'PASS') problems.push(`workload check: ${v}`);
}

/** After a restore: the restored tree runs and passes its check. */
export async function checkRestored(problems: Problems, t: Tree): Promise<void> {
  for (const p of t.pids) if (!ours(p)) problems.push(`restored pid ${p} is not running`);
  if (problems.length) return;
  const v = await t.verdict();
  if (v !== 'PASS') problems.push(`restored workload check: ${v}`);
}

/* ------------------------------------------------------------------------------------------ */
/* Cells: what every target (a tree of processes, a container) goes through                   */

/** A target of checkpoint cells: how ferry names it and what is checked of it. */
export interface Target {
  /** The arguments of `ferry checkpoint` that name it (`--pid N`, or `ID --root STATE`). */
  args: string[];
  /** It runs on as if nothing happened (checkIntact, and more for a container). */
  intact(p: Problems): Promise<void>;
}

/** A target of the paused checkpoint cells, which also see the image written at `written`. */
export interface WrittenTarget extends Target {
  /** After a signal at `written`: the checkpoint finished (it is gone) or let it go whole, never half. */
  goneOrIntact(p: Problems): Promise<void>;
  /** The original is put away (killed or deleted) and `image` restores and passes its check. */
  restoreWritten(p: Problems, image: string): Promise<void>;
}

/**
 * One checkpoint cell: `dir` (a fresh directory) holds the older image at image.tar; ferry
 * checkpoints `t` there, paused at `phase`, and is hit by `fault`. Before `written` ferry
 * aborts: its exit is checkAbortExit's, `t` is intact, the older image untouched and nothing
 * else left in `dir` (but after SIGKILL: a stale temporary file is allowed). At `written` the
 * exit is checkWrittenExit's, `t` is intact (SIGKILL) or gone or intact (the others, which leave
 * nothing else in `dir`), and the new image is in place and restores.
 */
export async function checkpointHit(p: Problems, t: WrittenTarget, dir: string, olderImage: string, phase: string, fault: Fault): Promise<void> {
  const target = join(dir, 'image.tar');
  copyFileSync(olderImage, target);
  const older = sha256(target);
  await whilePaused(p, ['checkpoint', ...t.args, '--image', target], phase, async (run) => {
    const r = await hit(run, fault, p);
    if (phase !== 'written') {
      checkAbortExit(p, fault, r, run.stderr());
      await t.intact(p);
      if (!existsSync(target)) p.push('the older image at the target path is gone');
      else if (sha256(target) !== older) p.push('the older image at the target path was overwritten');
      const left = others(dir, 'image.tar');
      if (fault !== 'SIGKILL' && left.length) p.push(`left in the image directory: ${left.join(', ')}`);
      return;
    }
    // At `written` the image is complete and in place: only the final kill was left.
    checkWrittenExit(p, fault, r, run.stderr());
    if (fault === 'SIGKILL') {
      await t.intact(p);
    } else {
      await t.goneOrIntact(p);
      const left = others(dir, 'image.tar');
      if (left.length) p.push(`left in the image directory: ${left.join(', ')}`);
    }
    if (!existsSync(target)) {
      p.push('no image at the target path');
      return;
    }
    if (sha256(target) === older) {
      p.push('the target path still holds the older image');
      return;
    }
    await t.restoreWritten(p, target);
  });
}

/**
 * One restore cell: ferry restores a copy of `image` (`command(copy)`: its arguments), paused at
 * `phase`, and is hit by `fault`; its exit is checkAbortExit's, then `after(p, copy)` checks that
 * nothing of it is left and that the copy restores again.
 */
export async function restoreHit(
  p: Problems, image: string, command: (image: string) => string[], phase: string, fault: Fault,
  after: (p: Problems, copy: string) => Promise<void>,
): Promise<void> {
  const copy = join(scratchDir('ferry-fault-img-'), 'image.tar');
  copyFileSync(image, copy);
  await whilePaused(p, command(copy), phase, async (run) => {
    await abort(p, run, fault);
    await after(p, copy);
  });
}

/** Hits a paused ferry with `fault` before `written`, and checks its exit (checkAbortExit). */
export async function abort(p: Problems, run: FerryRun, fault: Fault): Promise<void> {
  const r = await hit(run, fault, p);
  checkAbortExit(p, fault, r, run.stderr());
}

/**
 * ENOSPC: `small` (made here) is a tmpfs of `size` (8 MiB) holding the older image, too small
 * for `t`'s image: ferry exits 1 with one line saying the disk is full, `t` is intact, the
 * older image untouched, and no partial file is left. The tmpfs is unmounted before this returns.
 */
export async function checkpointIntoFullDisk(p: Problems, t: Target, small: string, olderImage: string, size = '8m'): Promise<void> {
  mkdirSync(small);
  const m = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', small], { encoding: 'utf8' });
  if (m.status !== 0) {
    p.push(`cannot mount a tmpfs: ${m.stderr.trim()}`);
    return;
  }
  try {
    const target = join(small, 'image.tar');
    copyFileSync(olderImage, target);
    const older = sha256(target);
    const r = await runFerry(['checkpoint', ...t.args, '--image', target], p);
    if (r.code !== 1) p.push(`exit ${r.code}, expected 1${r.code === 0 ? ` (the image cannot fit in ${size})` : ''}`);
    checkLines(p, r.stderr, 1);
    if (r.code === 1 && !/ENOSPC|no space/i.test(r.stderr)) p.push(`the line does not say the disk is full: ${stderrLines(r.stderr)[0]}`);
    await t.intact(p);
    if (!existsSync(target)) p.push('the older image is gone');
    else if (sha256(target) !== older) p.push('the older image was overwritten');
    const left = others(small, 'image.tar');
    if (left.length) p.push(`partial files left: ${left.join(', ')}`);
  } finally {
    if (spawnSync('umount', [small]).status !== 0) spawnSync('umount', ['-l', small]);
  }
}

/**
 * EPIPE: the reader of `ferry checkpoint ... --image -` goes away after 100000 bytes: ferry
 * exits 1 with one line, and `t` is intact. Its stderr and status go to `out`.err and `out`.code.
 */
export async function checkpointIntoClosedPipe(p: Problems, t: Target, out: string): Promise<void> {
  const err = `${out}.err`;
  const code = `${out}.code`;
  const args = t.args.map((a) => `'${a}'`).join(' ');
  await shell(`{ '${FERRY}' checkpoint ${args} --image - 2>'${err}'; echo $? >'${code}'; } | head -c 100000 >/dev/null`);
  await waitFor('ferry to finish', () => existsSync(code) && readFileSync(code, 'utf8').endsWith('\n'), 60000);
  const status = Number(readFileSync(code, 'utf8'));
  if (status !== 1) p.push(`exit ${status}, expected 1`);
  checkLines(p, readFileSync(err, 'utf8'), 1);
  await t.intact(p);
}

/** A cell's test: it passes when the cell has no problem, and fails with all of them. */
export function expectOk(problems: Problems): void {
  assert.ok(problems.length === 0, problems.join('\n'));
}
