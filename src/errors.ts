/**
 * Errors that reach the user.
 *
 * A FerryError's message is the one line the CLI prints: what failed, where (pid, fd, file,
 * image entry) and, when there is one, what to do. Lower-level causes (native errors carrying
 * `code`/`errno`/`syscall`, like Node's fs errors) hang off `cause` and go to the log.
 */
export class FerryError extends Error {
  /** Stable machine-readable identifier, e.g. 'ENOPROC', 'EIMAGE', 'EKERNEL', 'EUNSUPPORTED'. */
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'FerryError';
    this.code = code;
  }
}

/** An error thrown by the native addon: shaped like Node's fs errors. */
export interface NativeError extends Error {
  code: string;
  errno: number;
  syscall: string;
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

/** Short text of a cause for a one-line message: "ptrace(PTRACE_SEIZE): EPERM". */
export function describeCause(err: unknown): string {
  if (isNativeError(err)) return `${err.syscall}: ${err.code}`;
  if (err instanceof Error) return err.message;
  return String(err);
}
