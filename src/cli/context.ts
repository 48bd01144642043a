/**
 * What every command needs before it calls the library: the configuration, the logger, the
 * root check, and the handling of SIGINT/SIGTERM while an operation runs (src/signals.ts).
 */
import type { Logger } from 'pino';
import { loadConfig, type Config, type LogLevel } from '../config/config.js';
import { FerryError } from '../errors.js';
import { silentLogger } from '../log-silent.js';
import { setPauseAt } from '../fault.js';
import type { GlobalCliOptions } from './args.js';

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
 * line the CLI prints, and pino is not even loaded (log-silent.ts).
 */
export async function createContext(command: string, g: GlobalCliOptions): Promise<RunContext> {
  setPauseAt(process.env['FERRY_TEST_PAUSE_AT']); // test-only fault points (fault.ts)
  const config = loadConfig(g.config !== undefined ? { path: g.config } : {});
  const logFile = g.logFile ?? config.log.file;
  const level: LogLevel = logFile !== '' ? g.logLevel ?? config.log.level : g.logLevel ?? 'silent';
  const logger = level === 'silent' ? silentLogger : (await import('../log.js')).createLogger({ level, file: logFile }).child({ command });
  logger.debug({ argv: process.argv.slice(2), config }, 'start');
  return { config, logger, logFile };
}

/** The one message for a non-root user, whatever the command. */
export const ROOT_MESSAGE = 'must run as root (ptrace and clone3 with a chosen PID need it)';

/** Throws FerryError('EPERM') unless the effective user is root. */
export function requireRoot(): void {
  if (process.geteuid?.() !== 0) throw new FerryError('EPERM', ROOT_MESSAGE);
}

export { guardSignals, Interrupted, type HandledSignal, type SignalGuard } from '../signals.js';
