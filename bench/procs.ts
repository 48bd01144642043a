/** The benchmarks' processes: waiting for a time or a condition (bounded), and killing what they started. */
import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { native } from '../src/native/binding.js';

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Whether a pid exists. */
export const alive = (pid: number): boolean => existsSync(`/proc/${pid}`);

/** Waits until `cond()` holds (polling every 10 ms), or throws naming `what` after `ms`. */
export async function waitFor(what: string, cond: () => boolean, ms = 60_000): Promise<void> {
  for (const end = Date.now() + ms; Date.now() < end; await sleep(10)) if (cond()) return;
  throw new Error(`timed out waiting for ${what}`);
}

/** Kills every pid of `tracked` (and reaps it, when it is a child of this process), and lets `children` go. */
export function killAll(tracked: Set<number>, children: readonly ChildProcess[]): void {
  for (const p of tracked) {
    try { process.kill(p, 'SIGKILL'); } catch { /* gone */ }
    try { native().waitpid(p); } catch { /* not ours */ }
  }
  tracked.clear();
  for (const c of children) c.unref();
}
