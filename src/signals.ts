/**
 * SIGINT/SIGTERM and fatal errors while an operation runs, for every program (the ferry CLI,
 * ferry-runtime, the hook's restorer): the first signal aborts the operation through an
 * AbortSignal, a second one and any uncaught error unwind every Session (src/session.ts) and
 * exit. See docs/safety.md.
 */
import { FerryError } from './errors.js';
import { printLine } from './cli/output.js';
import { isFinishing, unwindAll } from './session.js';

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
 * An uncaught exception or unhandled rejection (a bug) is each program's top-level handler's
 * business: it calls unwindAll() before it prints its one line and exits.
 */
export function guardSignals(prefix: string): SignalGuard {
  let received: HandledSignal | undefined;
  const controller = new AbortController();
  const handler = (signal: HandledSignal): void => {
    if (received !== undefined && isFinishing()) {
      printLine(2, `${prefix}: ${signal} again: only the last step is left, finishing it`);
      return;
    }
    if (received !== undefined) {
      printLine(2, `${prefix}: ${signal} again: undoing what was started and exiting now`);
      unwindAll();
      process.exit(128 + SIGNAL_NUMBERS[signal]);
    }
    received = signal;
    controller.abort(new Interrupted(signal));
  };
  const names = Object.keys(SIGNAL_NUMBERS) as HandledSignal[];
  for (const s of names) process.on(s, handler);
  return {
    get received() { return received; },
    get exitStatus() { return received === undefined ? undefined : 128 + SIGNAL_NUMBERS[received]; },
    signal: controller.signal,
    dispose() {
      for (const s of names) process.off(s, handler);
    },
  };
}
