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
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, openSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { FERRY, WORKLOADS } from '../helpers/env.js';
import { scratchDir, sleep, waitFor } from '../helpers/processes.js';

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
export const RESTORE_PHASES = ['verified', 'created', 'rebuilt'] as const;
/** Columns of the table: every phase, then the faults that are not tied to one. */
export const COLUMNS = ['frozen', 'seized', 'dumped', 'writing', 'written', 'verified', 'created', 'rebuilt', 'once'] as const;

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

const VERDICT = /^(PASS|FAIL.*)$/gm;

/**
 * Sends SIGUSR1 to `pid` and returns the next verdict line of `text`, or a description of why
 * none came (with the SigBlk the kernel shows, the usual reason).
 */
export async function askVerdict(pid: number, text: () => string, timeoutMs = 10000): Promise<string> {
  const before = [...text().matchAll(VERDICT)].length;
  try {
    process.kill(pid, 'SIGUSR1');
  } catch (err) {
    return `FAIL cannot signal pid ${pid}: ${(err as Error).message}`;
  }
  try {
    await waitFor(`a verdict from ${pid}`, () => [...text().matchAll(VERDICT)].length > before, timeoutMs);
  } catch {
    const st = status(pid);
    return `FAIL no verdict within ${timeoutMs / 1000} s (${st ? `state ${st.state}, tracer ${st.tracer}, SigBlk ${st.sigblk.toString(16)}` : 'gone'})`;
  }
  return [...text().matchAll(VERDICT)][before]![1]!;
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
 * scratch directory; the tree's pids are read from its log.
 */
export async function startMemcheck(mib: number, mode: 'one' | 'tree' | 'forker'): Promise<Memcheck> {
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
  const pids = [pid, ...(mode === 'tree' && kids ? kids.slice(1).map(Number) : [])];
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
