/**
 * The one line ferry-runtime and ferry's criu print for a failed checkpoint or restore. Its
 * own module: a program's entry module must not be imported by another program's (the
 * bundle would move it into a shared chunk, where it no longer knows it is the entry).
 */
import { FerryError, internalCause, internalName, isNativeError } from '../errors.js';
import { RuntimeUsageError } from './args.js';

/**
 * The one line for an error (after "ferry-runtime VERB: "): ferry's own message; for anything
 * else, a bug in ferry, named by its class or failed syscall, never by the engine's words, with
 * where the details are (the run's `log` in the work path, which has the error logged whole).
 */
export function errorLine(err: unknown, log: string): string {
  const bug = `this is a bug in ferry: details in ${log} of the work path (--work-path), please report it`;
  if (err instanceof FerryError || err instanceof RuntimeUsageError) {
    const line = err.message.replace(/\s*\n\s*/g, ' ').trim();
    return internalCause(err) !== undefined ? `${line}; ${bug}` : line;
  }
  if (isNativeError(err)) {
    return `unexpected failure: ${err.syscall}${typeof err.path === 'string' ? ` ${err.path}` : ''}: ${err.code}; ${bug}`;
  }
  return `internal error (${internalName(err)}); ${bug}`;
}
