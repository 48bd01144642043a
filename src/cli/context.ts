/**
 * What every command needs before it calls the library: the configuration, the logger, the
 * root check, and the handling of SIGINT/SIGTERM while an operation runs.
 */
import type { Logger } from 'pino';
import { loadConfig, type Config, type LogLevel } from '../config/config.js';
import { FerryError } from '../errors.js';
import { createLogger } from '../log.js';
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

/** Catches SIGINT/SIGTERM while an operation runs. */
export interface SignalGuard {
  /** The first signal received, if any. */
  readonly received: HandledSignal | undefined;
  /** Exit status for the signal received (128 + its number), or undefined. */
  readonly exitStatus: number | undefined;
  /** Stops catching the signals. */
  dispose(): void;
}

/**
 * Lets an operation finish instead of dying halfway when SIGINT (Ctrl-C) or SIGTERM arrives:
 * a process being checkpointed is still seized with its signals blocked, a process being
 * restored is half-built, and the library puts both right only if it reaches its own error
 * path or its end. The first signal is noted and reported (the CLI then exits with 128 + n
 * once the operation has settled); a second one exits at once.
 */
export function guardSignals(command: string): SignalGuard {
  let received: HandledSignal | undefined;
  const handler = (signal: HandledSignal): void => {
    if (received !== undefined) {
      printLine(2, `ferry ${command}: ${signal} again: exiting at once`);
      process.exit(128 + SIGNAL_NUMBERS[signal]);
    }
    received = signal;
    printLine(2, `ferry ${command}: ${signal} received: finishing the current operation so nothing is left half-done (send it again to exit at once)`);
  };
  const names = Object.keys(SIGNAL_NUMBERS) as HandledSignal[];
  for (const s of names) process.on(s, handler);
  return {
    get received() { return received; },
    get exitStatus() { return received === undefined ? undefined : 128 + SIGNAL_NUMBERS[received]; },
    dispose() { for (const s of names) process.off(s, handler); },
  };
}
