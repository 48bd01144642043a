/**
 * The `ferry` command line (run through bin/ferry): argv -> typed options -> library call ->
 * output and exit status.
 *
 * Exit status: 0 success; 1 the operation failed (exactly one line on stderr, details in the
 * log); 2 usage error (one line naming the option, then a hint); 128 + n when signal n
 * (SIGINT, SIGTERM) arrived during an operation, reported once the operation has settled.
 */
import { FerryError } from '../errors.js';
import { FERRY_VERSION } from '../version.js';
import {
  COMMANDS, parseCheckpointArgs, parseDemoArgs, parseHelpArgs, parseInspectArgs, parseRestoreArgs,
  parseVersionArgs, UsageError, wantsHelp, type Command,
} from './args.js';
import { runCheckpoint } from './checkpoint.js';
import { createContext, guardSignals, requireRoot, type RunContext, type SignalGuard } from './context.js';
import { runDemo } from './demo.js';
import { helpPage } from './help.js';
import { runInspect } from './inspect.js';
import { printLine } from './output.js';
import { runRestore } from './restore.js';
import { isEntryPoint } from '../entry.js';

/** What a run has set up so far: the error report needs the logger, the exit status the guard. */
interface RunState {
  ctx?: RunContext;
  guard?: SignalGuard;
}

/** Runs the CLI on `argv` (without node and the script) and returns the exit status. */
export async function main(argv: readonly string[]): Promise<number> {
  const [word, ...rest] = argv;
  if (word === undefined) {
    return report('', new UsageError('', `a command is needed: ${COMMANDS.join(', ')}`), {});
  }
  if (word === '--help' || word === '-h') return run('help', rest);
  if (word === '--version') return run('version', rest);
  if (word.startsWith('-')) {
    return report('', new UsageError('', `unknown option ${word} (options go after the command: ferry COMMAND [OPTIONS])`), {});
  }
  if (!(COMMANDS as readonly string[]).includes(word)) {
    return report('', new UsageError('', `unknown command "${word}"; the commands are ${COMMANDS.join(', ')}`), {});
  }
  return run(word as Command, rest);
}

/** Runs one command; every error becomes its one line and exit status. */
async function run(command: Command, argv: readonly string[]): Promise<number> {
  const state: RunState = {};
  try {
    if (command !== 'help' && wantsHelp(command, argv)) {
      printLine(1, helpPage(command));
      return 0;
    }
    await dispatch(command, argv, state);
    return state.guard?.exitStatus ?? 0;
  } catch (err) {
    const status = report(command, err, state);
    return state.guard?.exitStatus ?? status;
  } finally {
    state.guard?.dispose();
  }
}

async function dispatch(command: Command, argv: readonly string[], state: RunState): Promise<void> {
  switch (command) {
    case 'checkpoint': {
      const o = parseCheckpointArgs(argv);
      requireRoot();
      state.ctx = createContext(command, o);
      state.guard = guardSignals(`ferry ${command}`);
      return runCheckpoint(o, state.ctx, state.guard.signal);
    }
    case 'restore': {
      const o = parseRestoreArgs(argv);
      requireRoot();
      state.ctx = createContext(command, o);
      state.guard = guardSignals(`ferry ${command}`);
      return runRestore(o, state.ctx, state.guard.signal);
    }
    case 'inspect': {
      const o = parseInspectArgs(argv);
      state.ctx = createContext(command, o);
      return runInspect(o, state.ctx);
    }
    case 'demo': {
      const o = parseDemoArgs(argv);
      requireRoot();
      state.ctx = createContext(command, o);
      const guard = guardSignals(`ferry ${command}`);
      state.guard = guard;
      return runDemo(o, state.ctx, () => guard.received);
    }
    case 'version': {
      const o = parseVersionArgs(argv);
      printLine(1, o.json ? JSON.stringify({ version: FERRY_VERSION }) : `ferry ${FERRY_VERSION}`);
      return;
    }
    case 'help': {
      const o = parseHelpArgs(argv);
      printLine(1, helpPage(o.topic));
      return;
    }
  }
}

/**
 * Prints the one line for `err` and returns the exit status. The details (stack, cause
 * chain, native errno codes) go to the logger, when there is one yet.
 */
function report(command: Command | '', err: unknown, state: RunState): number {
  const where = command === '' ? 'ferry' : `ferry ${command}`;
  if (err instanceof UsageError) {
    printLine(2, `${where}: ${err.message}`);
    printLine(2, `Try 'ferry ${err.command === '' ? '' : `${err.command} `}--help'.`);
    return 2;
  }
  state.ctx?.logger.error({ err }, `${command} failed`);
  if (err instanceof FerryError) {
    printLine(2, `${where}: ${err.message}`);
    return 1;
  }
  const message = (err instanceof Error ? err.message : String(err)).split('\n')[0] || String(err);
  const hint = state.ctx !== undefined && state.ctx.logFile !== '' ? ' (see the log for details)' : '';
  printLine(2, `${where}: ${message}${hint}`);
  return 1;
}


if (isEntryPoint(import.meta.url)) {
  // Every line was written synchronously, so exiting now loses nothing, and a stray handle
  // (an unfinished stdin stream, a timer) cannot keep a finished command alive.
  process.exit(await main(process.argv.slice(2)));
}
