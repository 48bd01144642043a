/**
 * Errors that reach the user.
 *
 * A FerryError's message is the one line the CLI prints: what failed, where (pid, fd, file,
 * image entry) and, when there is one, what to do. Lower-level causes (native errors carrying
 * `code`/`errno`/`syscall`, like Node's fs errors) hang off `cause` and go to the log. The
 * process, descriptor and file the error is about can also be given as data (`pid`, `fd`,
 * `path`): `--json` reports them next to the code and the message (docs/cli.md, "Errors").
 *
 * Any other error that reaches the user is a bug in ferry (a TypeError, a RangeError…): its
 * own message means nothing to the user, so it is reported as an internal error, by name,
 * with its details in the log.
 */
import { constants as osConstants } from 'node:os';

/** What an error is about, as data: the process, its descriptor, the file or image. */
export interface ErrorContext {
  /** The process the error is about (as ferry sees it, or as the image records it). */
  pid?: number;
  /** The descriptor (of `pid`) the error is about. */
  fd?: number;
  /** The file the error is about: an image, a file a process has open or maps, a log… */
  path?: string;
}

/** Options of a FerryError: the error it wraps, and what it is about. */
export interface FerryErrorOptions extends ErrorContext {
  /** The lower-level error (native, fs, another FerryError); goes to the log. */
  cause?: unknown;
}

/** Code of an error that is not one of ferry's own: a bug (docs/cli.md). */
export const INTERNAL_CODE = 'EINTERNAL';

export class FerryError extends Error {
  /** Stable machine-readable identifier, e.g. 'ENOPROC', 'EIMAGE', 'EKERNEL', 'EUNSUPPORTED'. */
  readonly code: string;
  // `declare`: no own property at all unless given (a class field would be one, undefined).
  /** The process the error is about, when it is about one. */
  declare readonly pid?: number;
  /** The descriptor of `pid` the error is about, when it is about one. */
  declare readonly fd?: number;
  /** The file the error is about, when it is about one. */
  declare readonly path?: string;

  constructor(code: string, message: string, options?: FerryErrorOptions) {
    super(message, options !== undefined && 'cause' in options ? { cause: options.cause } : undefined);
    this.name = 'FerryError';
    this.code = code;
    const self = this as { pid?: number; fd?: number; path?: string };
    if (options?.pid !== undefined) self.pid = options.pid;
    if (options?.fd !== undefined) self.fd = options.fd;
    if (options?.path !== undefined) self.path = options.path;
  }
}

/** An error thrown by the native addon: shaped like Node's fs errors. */
export interface NativeError extends Error {
  code: string;
  errno: number;
  syscall: string;
  /** Node's fs errors name the file too. */
  path?: string;
}

/** True when `err` came from the native addon (or Node's fs) with an errno code. */
export function isNativeError(err: unknown): err is NativeError {
  return err instanceof Error && typeof (err as Partial<NativeError>).code === 'string'
    && typeof (err as Partial<NativeError>).syscall === 'string';
}

/** `ESRCH`-style code of an error, or undefined. */
export function errnoCode(err: unknown): string | undefined {
  return err instanceof Error ? (err as Partial<NativeError>).code : undefined;
}

/** The error classes of the JavaScript engine itself: one of these reaching the user is a bug. */
const ENGINE_ERRORS: ReadonlyArray<new (...args: never[]) => Error> = [
  TypeError, RangeError, ReferenceError, SyntaxError, EvalError, URIError,
];

/**
 * True when `err` is an error of the JavaScript engine (`x is not a function`, `Maximum call
 * stack size exceeded`, …), or anything thrown that is not an Error at all: a bug in ferry,
 * never a message for the user.
 */
export function isInternalError(err: unknown): boolean {
  if (!(err instanceof Error)) return true;
  if (isJsonSyntaxError(err)) return false; // bad input, not a bug
  return ENGINE_ERRORS.some((E) => err instanceof E);
}

/** JSON.parse's error: about its input (a file, stdin), not a bug. */
function isJsonSyntaxError(err: unknown): boolean {
  return err instanceof SyntaxError && /JSON/.test(err.message);
}

/** The first internal error (isInternalError) along the `cause` chain of `err`, if any. */
export function internalCause(err: unknown): unknown {
  const seen = new Set<unknown>();
  for (let e: unknown = err; e !== undefined && e !== null && !seen.has(e); e = (e as { cause?: unknown }).cause) {
    seen.add(e);
    if (isInternalError(e) && !(e instanceof FerryError)) return e;
    if (!(e instanceof Error)) break;
  }
  return undefined;
}

/** "TypeError", or what was thrown when it is not an Error ("a string"). */
export function internalName(err: unknown): string {
  if (err instanceof Error) return err.name || err.constructor.name || 'Error';
  return err === null ? 'null' : `a ${typeof err}`;
}

/**
 * Short text of a cause for a one-line message: "ptrace(PTRACE_SEIZE): EPERM" for a native or
 * fs error, the message of a FerryError or of ferry's own errors (first line), "not valid
 * JSON" for JSON.parse's error, and "internal error (TypeError)" for any other error of the
 * engine, whose message would mean nothing to the user (the log has it).
 */
export function describeCause(err: unknown): string {
  if (isNativeError(err)) return `${err.syscall}: ${err.code}`;
  // JSON.parse's SyntaxError is about the input, not a bug; its words are the engine's.
  if (isJsonSyntaxError(err)) return 'not valid JSON';
  if (isInternalError(err)) return `internal error (${internalName(err)})`;
  const message = (err as Error).message.split('\n')[0]!.trim();
  return message !== '' ? message : (err as Error).name;
}

/** "EACCES" for a negative injected result -13 (errno(3) name; the number if unknown). */
export function errnoName(r: bigint): string {
  const no = Number(-r);
  return Object.entries(osConstants.errno).find(([, v]) => v === no)?.[0] ?? `errno ${no}`;
}
