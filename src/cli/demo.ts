/**
 * `ferry demo`: the main job on a built-in example, for someone trying Ferry for the first time.
 *
 * Starts the counter workload (build/workloads/counter: prints "tick N" every 100 ms, the
 * count kept in its memory), lets it count, checkpoints it into a temporary image (which
 * kills it), waits until it is reaped so its PID is free, restores it with the same PID,
 * and shows that it goes on counting where it stopped, with the timings and the image size.
 * Whatever happens, the process it started or restored is killed and its files are removed.
 * Descriptors the demo inherited without close-on-exec are closed first (src/proc/inherited.ts).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { CheckpointResult, RestoreResult } from '../api.js';
import { FerryError } from '../errors.js';
import { checkpoint, restore } from '../index.js';
import { closeInheritedFds } from '../proc/inherited.js';
import type { DemoCliOptions } from './args.js';
import type { RunContext } from './context.js';
import { formatBytes, formatMs, printLine, resultJson } from './output.js';

/** The package root: this file is <root>/dist/src/cli/demo.js. */
const PACKAGE_ROOT = fileURLToPath(new URL('../../../', import.meta.url));

/** The demo workload and its argument (tick interval in milliseconds). */
const COUNTER = join(PACKAGE_ROOT, 'build', 'workloads', 'counter');
const INTERVAL_MS = 100;

/** Ticks to wait for before the checkpoint, and how long the restored counter is watched. */
const TICKS_BEFORE = 5;
const WATCH_MS = 1000;

/** What the demo found, printed as JSON with --json. */
export interface DemoResult {
  /** PID of the counter, before and after (the same, or the demo fails). */
  pid: number;
  /** Size of the image, bytes. */
  imageBytes: number;
  /** How long the counter was stopped by the checkpoint, ms. */
  frozenMs: number;
  /** The whole checkpoint, ms. */
  checkpointMs: number;
  /** Building the process from the verified image until it runs, ms. */
  restoreMs: number;
  /** Verifying the image before the restore, ms. */
  verifyMs: number;
  /** The last ticks printed before the checkpoint. */
  ticksBefore: number[];
  /** The ticks printed in the second after the restore. */
  ticksAfter: number[];
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** The tick numbers in the counter's output so far. */
function readTicks(log: string): number[] {
  return [...readFileSync(log, 'utf8').matchAll(/^tick (\d+)$/gm)].map((m) => Number(m[1]));
}

/** "tick 3, tick 4, tick 5" (at most `max`, eliding the middle). */
function showTicks(ticks: readonly number[], max = 6): string {
  const shown = ticks.length <= max ? ticks.map((t) => `tick ${t}`)
    : [...ticks.slice(0, max - 2).map((t) => `tick ${t}`), '…', `tick ${ticks.at(-1)}`];
  return shown.join(', ');
}

/** Resolves once the child has started, rejects if it could not be. */
function started(child: ChildProcess): Promise<number> {
  return new Promise((resolve, reject) => {
    child.once('spawn', () => resolve(child.pid!));
    child.once('error', (err) => reject(new FerryError('EDEMO', `cannot start ${COUNTER}: ${(err as NodeJS.ErrnoException).code ?? err.message}`, { cause: err })));
  });
}

/**
 * Runs the demo. `interrupted` says whether SIGINT/SIGTERM arrived; the demo then stops at
 * the next step and cleans up. Throws FerryError on failure.
 */
export async function runDemo(o: DemoCliOptions, ctx: RunContext, interrupted: () => string | undefined): Promise<void> {
  const say = (line: string): void => { if (!o.json) printLine(1, line); };
  /** One line of the narrated run: a label column, then what happened. */
  const row = (label: string, text: string): void => say(`  ${label.padEnd(18)} ${text}`);
  const step = (): void => {
    const signal = interrupted();
    if (signal !== undefined) throw new FerryError('EINTR', `interrupted by ${signal}; the demo process was stopped and its files removed`);
  };
  if (!existsSync(COUNTER)) {
    throw new FerryError('ENODEMO', `the demo program ${COUNTER} is missing: build it with 'npm run build'`);
  }
  // The counter must start with descriptors 0-2 only: one the shell leaked to us without
  // close-on-exec would reach it through spawn, and checkpoint would refuse the counter for
  // sharing that file with the shell. The demo takes no descriptor from its caller.
  closeInheritedFds();
  const dir = mkdtempSync(join(tmpdir(), 'ferry-demo-'));
  const log = join(dir, 'counter.log');
  const image = join(dir, 'counter.tar');
  let child: ChildProcess | undefined;
  let restored: number | undefined;
  try {
    // stdin /dev/null, stdout and stderr one open file (the log), its own session (detached):
    // Ctrl-C in this terminal reaches ferry, not the counter.
    const out = openSync(log, 'w');
    try {
      child = spawn(COUNTER, [String(INTERVAL_MS)], { stdio: ['ignore', out, out], detached: true });
    } finally {
      closeSync(out);
    }
    const exited = new Promise<void>((resolve) => child!.once('exit', () => resolve()));
    const pid = await started(child);
    const name = relative(PACKAGE_ROOT, COUNTER);
    say(`ferry demo: ${name}, a program that prints "tick N" every ${INTERVAL_MS} ms, counting in its memory`);
    row('started', `pid ${pid}`);

    await waitUntil(`${TICKS_BEFORE} ticks of the counter`, () => readTicks(log).length >= TICKS_BEFORE, 5000, step,
      () => child!.exitCode !== null || child!.signalCode !== null);
    const cp: CheckpointResult = await checkpoint({
      pid, image, leaveRunning: false, config: ctx.config, logger: ctx.logger.child({ demo: true }),
    });
    // The checkpoint killed the counter; we are its parent, so Node reaps it. Once reaped,
    // its PID is free for the restore.
    await Promise.race([exited, sleep(5000)]);
    if (existsSync(`/proc/${pid}`)) throw new FerryError('EDEMO', `pid ${pid} is still there 5 s after the checkpoint killed it`);
    const before = readTicks(log);
    row('last ticks', showTicks(before.slice(-3)));
    row('checkpointed', `to ${image}: ${formatBytes(cp.imageBytes)}, frozen ${formatMs(cp.frozenMs)}, `
      + `total ${formatMs(cp.totalMs)}`);
    row('gone', `pid ${pid} was killed by the checkpoint and reaped: the PID is free`);
    step();

    const rs: RestoreResult = await restore({ image, config: ctx.config, logger: ctx.logger.child({ demo: true }) });
    restored = rs.pid;
    row('restored', `pid ${rs.pid} in ${formatMs(rs.restoreMs)} (the image was verified first, in ${formatMs(rs.verifyMs)})`);
    for (const end = Date.now() + WATCH_MS; Date.now() < end;) {
      step();
      await sleep(50);
    }
    const after = readTicks(log).slice(before.length);
    const last = before.at(-1) ?? 0;
    row('one second later', after.length > 0 ? showTicks(after) : 'no tick');

    if (rs.pid !== pid) throw new FerryError('EDEMO', `the counter came back as pid ${rs.pid}, not ${pid}`);
    if (after.length === 0) throw new FerryError('EDEMO', `the restored counter (pid ${rs.pid}) printed no tick in ${WATCH_MS} ms`);
    const contiguous = after.every((t, i) => t === last + 1 + i);
    if (!contiguous) {
      throw new FerryError('EDEMO', `the restored counter did not continue: last tick before ${last}, then ${after.slice(0, 5).join(', ')}`);
    }
    const result: DemoResult = {
      pid,
      imageBytes: cp.imageBytes,
      frozenMs: cp.frozenMs,
      checkpointMs: cp.totalMs,
      restoreMs: rs.restoreMs,
      verifyMs: rs.verifyMs,
      ticksBefore: before.slice(-3),
      ticksAfter: after,
    };
    if (o.json) {
      printLine(1, resultJson(result));
    } else {
      row('result', `same pid ${pid}, counting on from tick ${last} to tick ${last + 1}: it continued where it stopped`);
      row('timings', `frozen ${formatMs(cp.frozenMs)}, checkpoint ${formatMs(cp.totalMs)}, `
        + `restore ${formatMs(rs.restoreMs)}; image ${formatBytes(cp.imageBytes)}`);
    }
  } finally {
    cleanUp(child, restored, ctx);
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Polls `done` every 20 ms until it holds; fails after `timeoutMs`, when `gone` says the
 * process exited, or (through `step`) on a signal.
 */
async function waitUntil(what: string, done: () => boolean, timeoutMs: number, step: () => void, gone: () => boolean): Promise<void> {
  for (const end = Date.now() + timeoutMs; !done(); await sleep(20)) {
    step();
    if (gone()) throw new FerryError('EDEMO', `the demo process exited while waiting for ${what}`);
    if (Date.now() > end) throw new FerryError('EDEMO', `timed out after ${timeoutMs} ms waiting for ${what}`);
  }
}

/**
 * Kills what the demo left running: the restored counter, or the original if the checkpoint
 * did not get to kill it. Only PIDs known to be ours are signalled: a PID freed by the
 * checkpoint and not restored could already belong to an unrelated process.
 */
function cleanUp(child: ChildProcess | undefined, restored: number | undefined, ctx: RunContext): void {
  try {
    if (restored !== undefined) process.kill(restored, 'SIGKILL');
    else if (child !== undefined && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  } catch (err) {
    ctx.logger.warn({ err, targetPid: restored ?? child?.pid }, 'demo: cleanup kill failed');
  }
}
