/**
 * The `ferry` command line (run through bin/ferry): argv -> typed options -> library call ->
 * output and exit status.
 *
 * Exit status: 0 success; 1 the operation failed (exactly one line on stderr, details in the
 * log); 2 usage error (one line naming the option, then a hint); 70 a bug (EINTERNAL, one line
 * too); 128 + n when signal n (SIGINT, SIGTERM) arrived during an operation, reported once the
 * operation has settled.
 * With `--json` an error is also one JSON object, `{"error": {"code", "message", "pid"?,
 * "fd"?, "path"?}}`, on stdout (stderr for `checkpoint --image -`), with the same status.
 *
 * Every error becomes its line here, in report(): a FerryError says what failed, where and
 * what to do; anything else is a bug in ferry and is named as one (internal error, by class),
 * never by the engine's own words (`x is not a function`), with the details in the log.
 */
import { warmUpEngine, warmUpMigration } from '../warm-up.js';
import {
  FerryError, INTERNAL_CODE, internalCause, internalName, isNativeError, type ErrorContext,
} from '../errors.js';
import {
  jsonErrorStream, parseCheckArgs, parseCheckpointArgs, parseDemoArgs, parseInspectArgs, parseKeygenArgs,
  parseMigrateArgs, parseReceiveArgs, parseRestoreArgs, UsageError, type Command,
} from './args.js';
// The commands that do work are imported in dispatch(), when one of them runs: `--version`,
// `help` and a usage error (light.ts) load none of them, nor what they pull in (pino,
// tar-stream, the whole engine); see docs/architecture.md, "Start-up".
import type { RunContext, SignalGuard } from './context.js';
import { light, oneLine, reportUsage, type HeavyCommand } from './light.js';
import { errorObject, printLine, type Stream } from './output.js';
import { isEntryPoint } from '../entry.js';
import { unwindAll } from '../session.js';

/** Exit status of a bug (an 'EINTERNAL' error): EX_SOFTWARE of sysexits.h. */
export const INTERNAL_STATUS = 70;

/** What a run has set up so far: the error report needs the logger, the exit status the guard. */
interface RunState {
  ctx?: RunContext;
  guard?: SignalGuard;
  /** Where an error goes as JSON (--json), from jsonErrorStream; undefined: only the line. */
  json?: Stream;
  /** What the command was doing, for the line of an internal error: "checkpointing pid 4242". */
  doing?: string;
  /** The image file of the command (not '-'): what an image error is about, for --json. */
  image?: string;
}

/** Codes of errors about the image itself (its file, records, format or origin). */
const IMAGE_CODES: ReadonlySet<string> = new Set(['EIMAGE', 'EFORMAT', 'EKERNEL', 'EARCH', 'ECPU']);

/** The command running and its state, for an error thrown outside it (entryPoint's handlers). */
let active: { command: Command | ''; state: RunState } = { command: '', state: {} };

/**
 * Runs the CLI on `argv` (without node and the script) and returns the exit status. What
 * needs no engine (help, version, usage errors) is answered by light.ts, as the launchers'
 * start answers it without this module; the rest runs here.
 */
export async function main(argv: readonly string[]): Promise<number> {
  const top: RunState = {};
  const json = jsonErrorStream('', argv);
  if (json !== undefined) top.json = json;
  active = { command: '', state: top };
  const answer = light(argv);
  if (typeof answer === 'number') return answer;
  if ('error' in answer) {
    const state: RunState = {};
    const stream = jsonErrorStream(answer.command, answer.argv);
    if (stream !== undefined) state.json = stream;
    return report(answer.command, answer.error, state);
  }
  return run(answer.command, answer.argv);
}

/** Runs one command whose line parsed (light.ts); every error becomes its one line and exit status. */
async function run(command: HeavyCommand, argv: readonly string[]): Promise<number> {
  const state: RunState = {};
  const json = jsonErrorStream(command, argv);
  if (json !== undefined) state.json = json;
  active = { command, state };
  try {
    const status = await dispatch(command, argv, state);
    return state.guard?.exitStatus ?? status ?? 0;
  } catch (err) {
    const status = report(command, err, state);
    return state.guard?.exitStatus ?? status;
  } finally {
    state.guard?.dispose();
  }
}

/** Runs the command; a status it returns (check's 1 for a host that cannot work) is the exit status. */
async function dispatch(command: HeavyCommand, argv: readonly string[], state: RunState): Promise<number | void> {
  switch (command) {
    case 'checkpoint': {
      const o = parseCheckpointArgs(argv);
      state.doing = o.container ? `checkpointing container ${o.container.id}` : `checkpointing pid ${o.pid}`;
      if (o.image !== '-') state.image = o.image;
      const { createContext, guardSignals, requireRoot } = await import('./context.js');
      requireRoot();
      state.ctx = await createContext(command, o);
      state.guard = guardSignals(`ferry ${command}`);
      const { runCheckpoint } = await import('./checkpoint.js');
      return runCheckpoint(o, state.ctx, state.guard.signal);
    }
    case 'restore': {
      const o = parseRestoreArgs(argv);
      const from = o.image === '-' ? 'the image on stdin' : o.image;
      state.doing = o.container ? `restoring container ${o.container.id} from ${from}` : `restoring ${from}`;
      if (o.image !== '-') state.image = o.image;
      const { createContext, guardSignals, requireRoot } = await import('./context.js');
      requireRoot();
      state.ctx = await createContext(command, o);
      state.guard = guardSignals(`ferry ${command}`);
      const { runRestore } = await import('./restore.js');
      return runRestore(o, state.ctx, state.guard.signal);
    }
    case 'migrate': {
      const o = parseMigrateArgs(argv);
      state.doing = o.container !== undefined ? `migrating container ${o.container.id}` : `migrating pid ${o.pid}`;
      const { createContext, guardSignals, requireRoot } = await import('./context.js');
      requireRoot();
      state.ctx = await createContext(command, o);
      state.guard = guardSignals(`ferry ${command}`);
      const { runMigrate } = await import('./migrate.js');
      return runMigrate(o, state.ctx, state.guard.signal);
    }
    case 'receive': {
      const o = parseReceiveArgs(argv);
      state.doing = 'receiving migrations';
      const { createContext, guardSignals, requireRoot } = await import('./context.js');
      requireRoot();
      state.ctx = await createContext(command, o);
      state.guard = guardSignals(`ferry ${command}`);
      const { runReceive } = await import('./receive.js');
      return runReceive(o, state.ctx, state.guard.signal);
    }
    case 'inspect': {
      const o = parseInspectArgs(argv);
      state.doing = `inspecting ${o.image === '-' ? 'the image on stdin' : o.image}`;
      if (o.image !== '-') state.image = o.image;
      const { createContext } = await import('./context.js');
      state.ctx = await createContext(command, o);
      const { runInspect } = await import('./inspect.js');
      return runInspect(o, state.ctx);
    }
    case 'keygen': {
      const o = parseKeygenArgs(argv);
      state.doing = `making a key pair at ${o.out}`;
      const { createContext } = await import('./context.js');
      state.ctx = await createContext(command, o);
      const { runKeygen } = await import('./keygen.js');
      return runKeygen(o, state.ctx);
    }
    case 'check': {
      const o = parseCheckArgs(argv);
      state.doing = 'checking this host';
      const { createContext } = await import('./context.js');
      state.ctx = await createContext(command, o);
      const { runCheck } = await import('./check.js');
      return runCheck(o, state.ctx);
    }
    case 'demo': {
      const o = parseDemoArgs(argv);
      state.doing = 'running the demo';
      const { createContext, guardSignals, requireRoot } = await import('./context.js');
      requireRoot();
      state.ctx = await createContext(command, o);
      const guard = guardSignals(`ferry ${command}`);
      state.guard = guard;
      const { runDemo } = await import('./demo.js');
      return runDemo(o, state.ctx, () => guard.received);
    }
  }
}

/** What report() prints for an error: its status, line and JSON fields. */
interface Outcome {
  status: number;
  code: string;
  /** The line after "ferry COMMAND: ". */
  message: string;
  context: ErrorContext;
}

/** Where the details of a bug are, or how to get them: the end of an internal error's line. */
function detailsHint(state: RunState): string {
  const ctx = state.ctx;
  const logged = ctx !== undefined && ctx.logFile !== '' && ctx.logger.isLevelEnabled('error');
  return logged ? `details are in ${ctx.logFile}` : 'run it again with --log-file FILE for the details, and report it';
}

/** The status, line and JSON fields for `err` (never the engine's own words for a bug). */
export function outcome(err: unknown, state: Pick<RunState, 'ctx' | 'doing' | 'image'>): Outcome {
  if (err instanceof UsageError) return { status: 2, code: err.code, message: oneLine(err.message), context: {} };
  const doing = state.doing !== undefined ? ` while ${state.doing}` : '';
  if (err instanceof FerryError) {
    const context: ErrorContext = {};
    if (err.pid !== undefined) context.pid = err.pid;
    if (err.fd !== undefined) context.fd = err.fd;
    if (err.path !== undefined) context.path = err.path;
    // An image error that does not name its file (a record's check) is about the command's image.
    else if (IMAGE_CODES.has(err.code) && state.image !== undefined) context.path = state.image;
    const bug = internalCause(err) !== undefined ? `; this is a bug in ferry: ${detailsHint(state)}` : '';
    return { status: 1, code: err.code, message: oneLine(`${err.message}${bug}`), context };
  }
  if (isNativeError(err)) {
    // A failed syscall ferry did not turn into its own error: which one, on what, and errno.
    const context: ErrorContext = typeof err.path === 'string' ? { path: err.path } : {};
    const on = context.path !== undefined ? ` ${context.path}` : '';
    return {
      status: INTERNAL_STATUS, code: INTERNAL_CODE, context,
      message: oneLine(`unexpected failure${doing}: ${err.syscall}${on}: ${err.code}; this is a bug in ferry `
        + `(it should say what this means and what to do): ${detailsHint(state)}`),
    };
  }
  return {
    status: INTERNAL_STATUS, code: INTERNAL_CODE, context: {},
    message: oneLine(`internal error (${internalName(err)})${doing}; this is a bug in ferry: ${detailsHint(state)}`),
  };
}

/**
 * Prints the one line for `err` (and, with --json, its JSON object) and returns the exit
 * status. The details (stack, cause chain, native errno codes) go to the logger, when there
 * is one yet.
 */
function report(command: Command | '', err: unknown, state: RunState): number {
  if (err instanceof UsageError) return reportUsage(command, err, state.json);
  try {
    state.ctx?.logger.error({ err }, `${command} failed`);
  } catch { /* the line below is what matters */ }
  const o = outcome(err, state);
  printLine(2, `${command === '' ? 'ferry' : `ferry ${command}`}: ${o.message}`);
  if (state.json !== undefined) printLine(state.json, JSON.stringify(errorObject(o.code, o.message, o.context)));
  return o.status;
}

/**
 * An error no one caught (an 'error' event without a listener, a rejection nothing awaited):
 * a bug. Every undo still registered runs first (a seized workload is let go, half-built
 * processes are killed), then the error is reported like any other, and ferry exits.
 */
function crashed(err: unknown): void {
  const { command, state } = active;
  let status = INTERNAL_STATUS;
  try {
    unwindAll();
    status = report(command, err, state);
  } finally {
    process.exit(state.guard?.exitStatus ?? status);
  }
}

/**
 * For the build's code cache (cli/start.cts): compiles the engine's functions (warm-up.ts),
 * the migration's too (this program's own commands).
 */
export async function warmUp(): Promise<void> {
  await warmUpEngine();
  try {
    await warmUpMigration();
  } catch (err) {
    throw new Error(`the migration's warm-up failed (the demo's ran): ${String(err)}`, { cause: err });
  }
}

/**
 * Runs ferry as the program: `main` on the process's arguments, then exits with its status.
 * Called below when this module is the one node was started with, and by the code-cached
 * start (cli/start.cts), which runs the whole command line from one CommonJS bundle.
 */
export function entryPoint(): void {
  process.on('uncaughtException', crashed);
  process.on('unhandledRejection', crashed);
  // Every line was written synchronously, so exiting now loses nothing, and a stray handle
  // (an unfinished stdin stream, a timer) cannot keep a finished command alive.
  void main(process.argv.slice(2)).then((status) => process.exit(status), crashed);
}

if (isEntryPoint(import.meta.url)) entryPoint();
