/**
 * A quick kill (native/mm-hold.cc): a killed process frees its memory before its PID is free
 * (50-100 ms per GiB here), and a migration on one kernel waits for that PID. Across the kill,
 * a thread of ferry's holds each big address space of the tree, so the processes exit at once
 * and their memory is freed by those threads afterwards, when the caller lets go.
 *
 * Nothing of the tree changes: the hold is a read of one page the dump found present. A hold
 * that cannot be had only makes the kill as slow as before; ferry dying drops every hold.
 */
import { PAGE_SIZE, PROT_READ } from '../arch/x86-64.js';
import type { VmaRecord } from '../image/records.js';
import { native } from '../native/binding.js';

/** Address spaces storing less than this are freed fast enough by their own exit. */
const HOLD_MIN_BYTES = 16 << 20;
/** At most this many holds (a thread each), the biggest first. */
const MAX_HOLDS = 16;
/** How long the holds may take to be seen, all of them, before the kill goes on without the rest. */
const HOLD_TIMEOUT_MS = 50;

/** A process's memory plan, as far as a hold needs it. */
export interface HeldSpace {
  pid: number;
  pagesBytes: number;
  vmas: readonly VmaRecord[];
}

/**
 * Holds the address spaces of the biggest of `spaces` (each process about to be killed);
 * returns what lets them all go (idempotent). Called with the tree stopped.
 */
export function holdAddressSpaces(spaces: readonly HeldSpace[]): () => void {
  const ids: number[] = [];
  const big = spaces.filter((s) => s.pagesBytes >= HOLD_MIN_BYTES).sort((a, b) => b.pagesBytes - a.pagesBytes).slice(0, MAX_HOLDS);
  const deadline = performance.now() + HOLD_TIMEOUT_MS;
  for (const s of big) {
    const at = presentPage(s.vmas);
    if (at === undefined) continue;
    try {
      // One budget for all (the tree is stopped meanwhile): a hold not seen in what is left of
      // it is still released later, its thread never waiting on anything of ours.
      const id = native().mmHold(s.pid, at, Math.max(0, Math.ceil(deadline - performance.now())));
      if (id !== 0) ids.push(id);
    } catch { /* no userfaultfd for ferry: the kill frees the memory itself */ }
  }
  return () => {
    for (const id of ids.splice(0)) native().mmRelease(id);
  };
}

/** The first page the dump stores of a readable area (present when the tree was stopped). */
function presentPage(vmas: readonly VmaRecord[]): bigint | undefined {
  for (const v of vmas) {
    if ((v.prot & PROT_READ) === 0 || v.runs.length === 0) continue;
    return BigInt(v.start) + BigInt(v.runs[0]![0] * PAGE_SIZE);
  }
  return undefined;
}
