/**
 * Logging with pino.
 *
 * CLI and hook runs are short-lived and may end with process.exit, so records are written
 * with a synchronous destination: nothing buffered can be lost. The user's view of a run is
 * the CLI's one error line; the details (stacks, cause chains, native errno codes, phases)
 * go to the log. Never log a key named `pid`: pino's base bindings already carry the pid of
 * ferry itself. Name the process being worked on `targetPid` (and a thread `tid`).
 */
import { mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import pino, { type Logger } from 'pino';
import type { LogLevel } from './config/config.js';
import { FerryError } from './errors.js';
import { silentLogger } from './log-silent.js';

/** Where and what to log. */
export interface LogOptions {
  /** Level of records kept; 'silent' keeps none. */
  level: LogLevel;
  /**
   * Append JSON lines to this file (its directory is created if missing); "" writes the
   * records to stderr instead, which only makes sense when the user asked for a level
   * explicitly (the CLI passes 'silent' otherwise).
   */
  file: string;
}

/**
 * Creates the root logger of one run. Errors are serialized with their `cause` chain as
 * nested objects, so a native error's `code`, `errno` and `syscall` stay visible.
 * Throws FerryError('ELOG') when the log file cannot be opened.
 */
export function createLogger(o: LogOptions): Logger {
  const options: pino.LoggerOptions = {
    name: 'ferry',
    level: o.level,
    timestamp: pino.stdTimeFunctions.isoTime,
    serializers: { err: pino.stdSerializers.errWithCause },
  };
  if (o.level === 'silent') return silentLogger;
  if (o.file === '') return pino(options, pino.destination({ dest: 2, sync: true }));
  let fd: number;
  try {
    mkdirSync(dirname(o.file), { recursive: true });
    fd = openSync(o.file, 'a', 0o640);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? String(err);
    throw new FerryError('ELOG', `cannot open log file ${o.file}: ${code}`, { cause: err });
  }
  return pino(options, pino.destination({ dest: fd, sync: true }));
}
