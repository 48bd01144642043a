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
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

let gc: (() => void) | null | undefined;

/** Collects garbage now, fully; does nothing where the runtime gives no way to. */
export function collectGarbage(): void {
  if (gc === undefined) {
    try {
      setFlagsFromString('--expose-gc');
      setFlagsFromString('--heap-growing-percent=300');
      const f: unknown = runInNewContext('gc');
      gc = typeof f === 'function' ? (f as () => void) : null;
    } catch {
      gc = null;
    }
  }
  gc?.();
}
