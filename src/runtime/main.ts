/**
 * `ferry-runtime` (run through bin/ferry-runtime): an OCI runtime with runc's command line
 * that container engines (podman, CRI-O) can be pointed at. `checkpoint` and `restore` are
 * done by ferry (operations.ts); every other verb — and anything this does not understand —
 * is run by the real runc with the very same argv and exit status. bin/ferry-runtime execs
 * runc itself for those, so they do not even start Node; the pass-through here serves a
 * direct `node main.js`.
 *
 * Exit status: 0 success; 1 failure (one line on stderr "ferry-runtime VERB: ...", also
 * appended to runc's --log file in its --log-format; details in W/dump.log or W/restore.log);
 * 2 usage error; a passed-through verb exits as runc did.
 */
import { guardSignals } from '../signals.js';
import { unwindAll } from '../session.js';
import { spawn } from 'node:child_process';
import { appendFileSync } from 'node:fs';
import { constants } from 'node:os';
import { loadConfig } from '../config/config.js';
import { setPauseAt } from '../fault.js';
import { FerryError } from '../errors.js';
import { errorLine } from './error-line.js';
import {
  CHECKPOINT_USAGE, parseCheckpoint, parseRestore, RESTORE_USAGE, RuntimeUsageError, splitArgs, type RuntimeGlobals,
} from './args.js';
// operations.ts (the whole engine) is imported when a checkpoint or restore runs, not for
// --help or a refusal (docs/architecture.md, "Start-up").
import { findRunc } from './runc.js';
import { isEntryPoint } from '../entry.js';

/** Signals forwarded to a passed-through runc (a foreground `runc run` or `exec`). */
const FORWARDED: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2', 'SIGWINCH'];

/** Runs runc with `argv` unchanged; resolves with its exit status (128 + n if killed by signal n). */
export function passThrough(runc: string, argv: readonly string[]): Promise<number> {
  return new Promise((resolvePromise) => {
    const child = spawn(runc, [...argv], { stdio: 'inherit' });
    const forward = (s: NodeJS.Signals): void => { child.kill(s); };
    for (const s of FORWARDED) process.on(s, forward);
    const done = (status: number): void => {
      for (const s of FORWARDED) process.off(s, forward);
      resolvePromise(status);
    };
    child.on('error', (err) => {
      process.stderr.write(`ferry-runtime: cannot run ${runc}: ${err.message}\n`);
      done(127);
    });
    child.on('exit', (code, signal) => {
      done(code ?? 128 + (signal ? constants.signals[signal] : 0));
    });
  });
}


/** Appends the error line to runc's --log file in its format, as runc would log it. */
function logError(g: RuntimeGlobals, message: string): void {
  if (g.log === undefined) return;
  const time = new Date().toISOString();
  const line = g.logFormat === 'json'
    ? JSON.stringify({ level: 'error', msg: message, time })
    : `time="${time}" level=error msg=${JSON.stringify(message)}`;
  try {
    appendFileSync(g.log, `${line}\n`);
  } catch { /* the log is best effort; stderr has the line */ }
}

/** Runs the wrapper on `argv` (without node and script); returns the exit status. */
export async function main(argv: readonly string[], env: NodeJS.ProcessEnv = process.env, self?: string): Promise<number> {
  let runc: string;
  try {
    runc = findRunc(env, self);
  } catch (err) {
    process.stderr.write(`ferry-runtime: ${(err as Error).message}\n`);
    return 127;
  }
  let split;
  try {
    split = splitArgs(argv);
  } catch (err) {
    if (err instanceof RuntimeUsageError) return passThrough(runc, argv); // runc says what is wrong
    throw err;
  }
  const { globals, verb, rest } = split;
  if (verb !== 'checkpoint' && verb !== 'restore') return passThrough(runc, argv);
  setPauseAt(env.FERRY_TEST_PAUSE_AT); // test-only fault points (src/fault.ts)
  // SIGINT/SIGTERM abort the operation as they do `ferry checkpoint/restore` (src/signals.ts).
  const guard = guardSignals(`ferry-runtime ${verb}`);
  try {
    if (verb === 'checkpoint') {
      const a = parseCheckpoint(rest);
      if (a.help) {
        process.stdout.write(CHECKPOINT_USAGE);
        return 0;
      }
      requireRoot();
      const { runtimeCheckpoint } = await import('./operations.js');
      await runtimeCheckpoint(a, { runc, globals, cwd: process.cwd(), config: loadConfig({}), signal: guard.signal });
    } else {
      const a = parseRestore(rest);
      if (a.help) {
        process.stdout.write(RESTORE_USAGE);
        return 0;
      }
      requireRoot();
      const { runtimeRestore } = await import('./operations.js');
      await runtimeRestore(a, { runc, globals, cwd: process.cwd(), config: loadConfig({}), signal: guard.signal });
    }
    return guard.exitStatus ?? 0;
  } catch (err) {
    const message = errorLine(err, verb === 'checkpoint' ? 'dump.log' : 'restore.log');
    process.stderr.write(`ferry-runtime ${verb}: ${message}\n`);
    logError(globals, `ferry-runtime ${verb}: ${message}`);
    return guard.exitStatus ?? (err instanceof RuntimeUsageError ? 2 : 1);
  } finally {
    guard.dispose();
  }
}

function requireRoot(): void {
  if (process.geteuid?.() !== 0) throw new FerryError('EPERM', 'must run as root (ptrace and clone3 with a chosen PID need it)');
}


/** For the build's code cache (cli/start.cts): compiles the engine's functions (warm-up.ts). */
export { warmUpEngine as warmUp } from '../warm-up.js';

/**
 * Runs the wrapper as the program: `main` on the process's arguments, then exits with its
 * status. Called below when this module is the one node was started with, and by the
 * code-cached start (cli/start.cts) of bin/ferry-runtime.
 */
export function entryPoint(): void {
  // Whatever escapes main() (a bug) is still one line, never a stack.
  const fatal = (err: unknown): never => {
    unwindAll(); // let go of whatever a checkpoint or restore holds (src/session.ts)
    process.stderr.write(`ferry-runtime: ${errorLine(err, 'dump.log or restore.log')}\n`);
    process.exit(1);
  };
  process.on('uncaughtException', fatal);
  process.on('unhandledRejection', fatal);
  // FERRY_RUNTIME_SELF: the launcher's own path, so a wrapper installed as `runc` is not
  // mistaken for the real one.
  main(process.argv.slice(2), process.env, process.env.FERRY_RUNTIME_SELF).then((status) => process.exit(status), fatal);
}

if (isEntryPoint(import.meta.url)) entryPoint();
