/**
 * A full garbage collection at a moment of ferry's choosing: a migration's sender takes one
 * right before it stops its tree (migrate/sender.ts).
 *
 * V8 collects when it finds it due, not when it suits the workload. The pre-copy rounds
 * stream memory through Buffers, which count as external memory, and V8 answers each 64 MiB
 * or so of it with a full collection (5–25 ms here: a 1 GiB migration's sender takes one
 * every 100 ms of its rounds); one that falls inside the frozen window is downtime. Taken
 * just before the freeze, it costs the workload nothing and leaves the frozen part, a few MiB
 * of image, far from the next. The old generation is also let grow to four times what
 * survives a collection (V8 would take as little as a tenth more with a heap of a few MiB),
 * so that what the frozen checkpoint allocates does not call for one either.
 *
 * Node gives `gc()` only under `--expose-gc`, a flag that cannot be on its command line:
 * worker threads inherit that and refuse V8's flags. Set at run time, it exposes `gc` in the
 * contexts made after, such as the one `vm` makes here. Where that fails (another engine),
 * nothing is collected: this only moves a cost, it never is one.
 *
 * V8's flags are part of what its code cache is checked against: a cache made by a process
 * whose flags were changed this way is refused by every ferry started with the defaults. The
 * build's migration warm-up (warm-up.ts), run in the process that then writes the caches
 * (cli/start.cts makeCodeCache), sets them back with `restoreDefaultFlags`.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

let gc: (() => void) | null | undefined;

/** The flags collectGarbage sets, and their values by default (V8's). */
const FLAGS = [['--expose-gc', '--no-expose-gc'], ['--heap-growing-percent=300', '--heap-growing-percent=0']] as const;

/** Collects garbage now, fully; does nothing where the runtime gives no way to. */
export function collectGarbage(): void {
  if (gc === undefined) {
    try {
      for (const [set] of FLAGS) setFlagsFromString(set);
      const f: unknown = runInNewContext('gc');
      gc = typeof f === 'function' ? (f as () => void) : null;
    } catch {
      gc = null;
    }
  }
  gc?.();
}

/**
 * Sets the flags collectGarbage changed back to V8's defaults (the collections it takes stay
 * possible: `gc` was taken once exposed), so that a code cache made after is one a ferry
 * started with the defaults accepts.
 */
export function restoreDefaultFlags(): void {
  if (gc === undefined) return;
  try {
    for (const [, unset] of FLAGS) setFlagsFromString(unset);
  } catch { /* another engine: nothing was set */ }
}
