/**
 * Terminal output: lines written synchronously to stdout/stderr, sizes and durations for
 * people, and the progress line.
 *
 * Lines go out with fs.writeSync on the descriptor, never through process.stdout: with
 * `--image -` the image writer owns descriptor 1, and creating the process.stdout stream
 * would put a pipe into non-blocking mode under it. Synchronous writes also mean nothing is
 * lost when the process exits right after.
 */
import { fstatSync, writeSync } from 'node:fs';
import { tty } from '../builtins.js';
import type { Progress } from '../api.js';
import type { ErrorContext } from '../errors.js';

/** Standard output or standard error. */
export type Stream = 1 | 2;

/** Short pause while a non-blocking descriptor is full. */
const pause = new Int32Array(new SharedArrayBuffer(4));

/**
 * Writes all of `text` to `fd`. EAGAIN (a non-blocking pipe that is full) is waited out;
 * EPIPE (the reader went away, e.g. `| head`) drops the text: there is no one to tell.
 */
export function writeAll(fd: Stream, text: string): void {
  const buf = Buffer.from(text);
  for (let off = 0; off < buf.length;) {
    try {
      off += writeSync(fd, buf, off, buf.length - off);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EAGAIN') {
        Atomics.wait(pause, 0, 0, 5);
        continue;
      }
      if (code === 'EPIPE') return;
      throw err;
    }
  }
}

/** Writes `text` and a newline (unless it already ends with one) to `fd`. */
export function printLine(fd: Stream, text: string): void {
  writeAll(fd, text.endsWith('\n') ? text : `${text}\n`);
}

/** The JSON form of an error (`--json`; docs/cli.md, "Errors"). */
export interface ErrorObject {
  error: {
    /** FerryError code ('ENOPROC', 'EIMAGE', …), 'EUSAGE' or 'EINTERNAL'. */
    code: string;
    /** The error's line, without the "ferry COMMAND: " in front. */
    message: string;
    /** The process, descriptor and file the error is about, when it is about one. */
    pid?: number;
    fd?: number;
    path?: string;
  };
}

/** `{"error": {"code", "message", "pid"?, "fd"?, "path"?}}`, the fields in that order. */
export function errorObject(code: string, message: string, context: ErrorContext = {}): ErrorObject {
  const error: ErrorObject['error'] = { code, message };
  if (context.pid !== undefined) error.pid = context.pid;
  if (context.fd !== undefined) error.fd = context.fd;
  if (context.path !== undefined) error.path = context.path;
  return { error };
}

/** A byte count for people: "512 bytes", "3.5 KiB", "12.3 MiB", "1.2 GiB". */
export function formatBytes(n: number): string {
  if (n < 1024) return `${n} bytes`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 * 1024 * 1024) return `${(n / (1024 * 1024)).toFixed(1)} MiB`;
  return `${(n / (1024 * 1024 * 1024)).toFixed(2)} GiB`;
}

/** A duration for people, in whole milliseconds: "8 ms". */
/**
 * A result as one line of JSON, its durations (the fields named …Ms) rounded to a tenth of a
 * millisecond: what a clock on this machine can say, without float noise.
 */
export function resultJson(result: object): string {
  return JSON.stringify(result, (key, v: unknown) => (key.endsWith('Ms') && typeof v === 'number' ? Math.round(v * 10) / 10 : v));
}

export function formatMs(n: number): string {
  return `${Math.round(n)} ms`;
}

/** The single updating progress line on stderr. */
export interface ProgressLine {
  /** Progress callback for the library; undefined when stderr is not a terminal. */
  readonly onProgress: ((p: Progress) => void) | undefined;
  /** Erases the line if anything was shown. Safe to call more than once. */
  clear(): void;
}

/**
 * Whether descriptor `fd` is a terminal (isatty(3)), asked without creating process.stderr's
 * stream or loading node:tty (src/builtins.ts) unless `fd` is a character device: a pipe, a
 * file or a socket is no terminal.
 */
export function isTerminal(fd: number): boolean {
  try {
    if (!fstatSync(fd).isCharacterDevice()) return false;
  } catch {
    return false; // not open
  }
  return tty().isatty(fd);
}

/**
 * A progress line for one operation: redrawn in place (`\r`, erase to end of line) at most
 * ten times a second, only when stderr is a terminal; never anything when it is not (logs,
 * pipes, CI).
 */
export function progressLine(isTty: boolean = isTerminal(2)): ProgressLine {
  if (!isTty) return { onProgress: undefined, clear() { /* nothing shown */ } };
  let last = 0;
  let shown = false;
  return {
    onProgress(p: Progress): void {
      const now = Date.now();
      const finished = p.total !== undefined && p.done >= p.total;
      if (now - last < 100 && !finished) return;
      last = now;
      let line = formatProgress(p);
      const width = process.stderr.columns || 80;
      if (line.length >= width) line = line.slice(0, Math.max(0, width - 1));
      writeAll(2, `\r\x1b[K${line}`);
      shown = true;
    },
    clear(): void {
      if (shown) writeAll(2, '\r\x1b[K');
      shown = false;
    },
  };
}

/** The text of a progress line: "write: 45% 12.3 MiB of 27.0 MiB". */
export function formatProgress(p: Progress): string {
  if (p.text !== undefined) return p.text;
  const pct = p.total ? `${Math.min(100, Math.floor((p.done / p.total) * 100))}% ` : '';
  return `${p.phase}: ${pct}${formatBytes(p.done)}${p.total !== undefined ? ` of ${formatBytes(p.total)}` : ''}`;
}
