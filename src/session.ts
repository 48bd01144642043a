/**
 * The one place failure handling lives (STYLE.md §14): an operation that seizes, freezes,
 * creates or writes registers the undo of each step with its Session at the moment it acts.
 * Every way out — return, throw, rejection, abort, a fatal error caught at the top of the CLI,
 * a second SIGINT/SIGTERM — runs the undos still registered, newest first, exactly once.
 *
 * Undos are synchronous on purpose: the last-resort path (`unwindAll`, called from an
 * 'uncaughtException' handler or a signal handler just before process.exit) cannot wait for
 * promises. And what the kernel undoes for us is preferred: a checkpoint's tracees are let go
 * by the kernel if ferry dies (no PTRACE_O_EXITKILL, native/inject.cc), a frozen cgroup is
 * thawed by a watchdog process (container/cgroup.ts), restore stubs die with ferry
 * (PTRACE_O_EXITKILL). Sessions cover the cases where ferry is still alive to act.
 */
import type { Logger } from 'pino';

interface Undo {
  what: string;
  run: () => void;
}

const open = new Set<Session>();

/** The undo log of one operation. */
export class Session {
  private undos: Undo[] = [];

  constructor(readonly name: string, private readonly log?: Logger) {
    open.add(this);
  }

  /**
   * Registers `run` to undo a step just taken. Returns a function that drops it (the step was
   * finished or undone by its owner on the normal path).
   */
  onUndo(what: string, run: () => void): () => void {
    const undo: Undo = { what, run };
    this.undos.push(undo);
    return () => {
      const i = this.undos.indexOf(undo);
      if (i >= 0) this.undos.splice(i, 1);
    };
  }

  /** Runs every registered undo, newest first; an undo that throws is logged, the rest still run. */
  unwind(): void {
    open.delete(this);
    const undos = this.undos.reverse();
    this.undos = [];
    for (const u of undos) {
      try {
        u.run();
        this.log?.debug({ undo: u.what }, `${this.name}: undone`);
      } catch (err) {
        this.log?.warn({ err, undo: u.what }, `${this.name}: undo failed`);
      }
    }
  }

  /** Ends the operation successfully: nothing is undone any more. */
  close(): void {
    open.delete(this);
    this.undos = [];
  }
}

/** Unwinds every operation in progress (a fatal error or a second signal, just before exit). */
export function unwindAll(): void {
  for (const s of [...open].reverse()) s.unwind();
}

let finishingSteps = 0;

/**
 * Runs `fn`, an operation's final step past its point of no return (the kill and clean-up
 * after a complete image is in place): a second SIGINT/SIGTERM lets it finish instead of
 * cutting it short, since stopping there would leave more behind than finishing.
 */
export async function finishing<T>(fn: () => Promise<T>): Promise<T> {
  finishingSteps++;
  try {
    return await fn();
  } finally {
    finishingSteps--;
  }
}

/** Whether a final step is running (see `finishing`). */
export function isFinishing(): boolean {
  return finishingSteps > 0;
}
