/**
 * Node's built-in modules that a restore of a small process does not need, loaded when first
 * called instead of with the engine's modules: node:child_process (which loads node:dgram with
 * it; nft for the network lock, a stand-in for a reaped process's pidfd), node:worker_threads
 * (the lanes of a big image) and node:tty (a terminal to draw the progress on). Loaded up
 * front they cost about 3 ms of every start here (node:crypto, which restore needs, loads
 * node:stream in any case). docs/architecture.md, "Start-up".
 */
import { createRequire } from 'node:module';

const load = createRequire(import.meta.url);

/** node:child_process, loaded at the first call. */
export function childProcess(): typeof import('node:child_process') {
  return load('node:child_process') as typeof import('node:child_process');
}

/** node:worker_threads, loaded at the first call. */
export function workerThreads(): typeof import('node:worker_threads') {
  return load('node:worker_threads') as typeof import('node:worker_threads');
}

/** node:tty, loaded at the first call. */
export function tty(): typeof import('node:tty') {
  return load('node:tty') as typeof import('node:tty');
}
