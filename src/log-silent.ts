/**
 * The logger of a run that logs nothing, without pino.
 *
 * A CLI run without a log file and without --log-level (the default) keeps no record; loading
 * pino for it cost 16 ms of every command's start here (pino, sonic-boom and the Node.js
 * modules they load: assert, worker_threads, diagnostics_channel, and assert's look at the
 * terminal, which opens process.stderr), more than ferry's whole frozen window of a small
 * process. This object stands in for pino's disabled logger: every level method does
 * nothing, a child is the logger itself, and no level is enabled.
 */
import type { Logger } from 'pino';

const nothing = (): void => {};

/** What of pino's Logger ferry's code calls; the rest is never reached on a silent logger. */
const silent = {
  level: 'silent',
  fatal: nothing,
  error: nothing,
  warn: nothing,
  info: nothing,
  debug: nothing,
  trace: nothing,
  silent: nothing,
  child(): Logger {
    return silentLogger;
  },
  isLevelEnabled(): boolean {
    return false;
  },
};

/** One shared silent logger: it holds no state, so every run and child can be this one. */
export const silentLogger: Logger = silent as unknown as Logger;
