/**
 * What every command needs before it calls the library: the configuration, the logger, the
 * root check, and the handling of SIGINT/SIGTERM while an operation runs.
 */
import type { Logger } from 'pino';
import { loadConfig, type Config, type LogLevel } from '../config/config.js';
import { FerryError } from '../errors.js';
import { createLogger } from '../log.js';
import { unwindAll } from '../session.js';
import { setPauseAt } from '../fault.js';
import type { GlobalCliOptions } from './args.js';
import { printLine } from './output.js';

/** Configuration and logger of one run. */
export interface RunContext {
  /** The validated configuration (file or defaults). */
  readonly config: Config;
  /** The run's root logger (silent unless a log file or --log-level says otherwise). */
  readonly logger: Logger;
  /** The log file in use, "" when none: the error line points there. */
  readonly logFile: string;
}

/**
 * Loads the configuration and creates the logger for `command`.
 *
 * With a log file (--log-file, else log.file of the config) records go there at --log-level,
 * else log.level of the config. Without one, records go to stderr only when --log-level was
 * given on the command line; otherwise nothing is logged, and the user sees just the one
 * line the CLI prints.
 */
export function createContext(command: string, g: GlobalCliOptions): RunContext {
  setPauseAt(process.env['FERRY_TEST_PAUSE_AT']); // test-only fault points (fault.ts)
  const config = loadConfig(g.config !== undefined ? { path: g.config } : {});
  const logFile = g.logFile ?? config.log.file;
  const level: LogLevel = logFile !== '' ? g.logLevel ?? config.log.level : g.logLevel ?? 'silent';
  const logger = createLogger({ level, file: logFile }).child({ command });
  logger.debug({ argv: process.argv.slice(2), config }, 'start');
  return { config, logger, logFile };
}

/** The one message for a non-root user, whatever the command. */
export const ROOT_MESSAGE = 'must run as root (ptrace and clone3 with a chosen PID need it)';

/** Throws FerryError('EPERM') unless the effective user is root. */
export function requireRoot(): void {
  if (process.geteuid?.() !== 0) throw new FerryError('EPERM', ROOT_MESSAGE);
}

/** Signal numbers of the signals handled, for exit status 128 + n. */
const SIGNAL_NUMBERS = { SIGINT: 2, SIGTERM: 15 } as const;

/** A handled signal. */
export type HandledSignal = keyof typeof SIGNAL_NUMBERS;

/** The abort reason of a guarded operation: which signal stopped it. */
export class Interrupted extends FerryError {
  constructor(readonly signalName: HandledSignal) {
    super('EINTR', `interrupted by ${signalName}`);
  }
}

/** Catches SIGINT/SIGTERM while an operation runs. */
export interface SignalGuard {
  /** The first signal received, if any. */
  readonly received: HandledSignal | undefined;
  /** Exit status for the signal received (128 + its number), or undefined. */
  readonly exitStatus: number | undefined;
  /** Aborted by the first signal; the operation's `signal` option. */
  readonly signal: AbortSignal;
  /** Stops catching the signals. */
  dispose(): void;
}

/**
 * SIGINT (Ctrl-C) and SIGTERM stop an operation the way a user expects, without harming the
 * workload. The first one aborts it: a checkpoint lets the tree go as it was and removes its
 * partial image (unless only the final kill was left, which then completes), a restore removes
 * everything it made (unless the tree already runs); the CLI exits with 128 + n once the
 * operation has settled. A second one does not wait: every undo still registered runs at once
 * (synchronously, between two system calls ferry makes, never inside one) and ferry exits.
 *
 * While the guard is up, an uncaught exception or unhandled rejection (a bug) also runs the
 * undos before ferry exits with one line, instead of a stack trace and a workload left seized.
 */
export function guardSignals(command: string): SignalGuard {
  let received: HandledSignal | undefined;
  const controller = new AbortController();
  const handler = (signal: HandledSignal): void => {
    if (received !== undefined) {
      printLine(2, `ferry ${command}: ${signal} again: undoing what was started and exiting now`);
      unwindAll();
      process.exit(128 + SIGNAL_NUMBERS[signal]);
    }
    received = signal;
    controller.abort(new Interrupted(signal));
  };
  const fatal = (err: unknown): void => {
    unwindAll();
    const what = err instanceof Error ? err.name : typeof err;
    printLine(2, `ferry ${command}: internal error (${what}); everything it had started was undone: please report it with the log (--log-file)`);
    process.exit(70);
  };
  const names = Object.keys(SIGNAL_NUMBERS) as HandledSignal[];
  for (const s of names) process.on(s, handler);
  process.on('uncaughtException', fatal);
  process.on('unhandledRejection', fatal);
  return {
    get received() { return received; },
    get exitStatus() { return received === undefined ? undefined : 128 + SIGNAL_NUMBERS[received]; },
    signal: controller.signal,
    dispose() {
      for (const s of names) process.off(s, handler);
      process.off('uncaughtException', fatal);
      process.off('unhandledRejection', fatal);
    },
  };
}
