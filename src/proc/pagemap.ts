/**
 * /proc/PID/pagemap (Documentation/admin-guide/mm/pagemap.rst): one u64 per virtual page.
 * Bit 63 present, 62 swapped, 61 file-page or shared-anon, 56 exclusively mapped,
 * 55 soft-dirty, 0-54 PFN (zero without CAP_SYS_ADMIN).
 */
import { native } from '../native/binding.js';

export const PM_PRESENT = 1n << 63n;
export const PM_SWAPPED = 1n << 62n;
export const PM_FILE = 1n << 61n;
export const PM_EXCLUSIVE = 1n << 56n;
export const PM_SOFT_DIRTY = 1n << 55n;

// The same bits within the high 32-bit half of each entry.
const HI_PRESENT = 1 << 31;
const HI_FILE = 1 << 29;

/**
 * Runs of pages to store, as [first page, count], page numbers counted from
 * `firstPageIndex`. A page is stored when (present && !file) || swapped; for shared
 * anonymous memory (which pagemap reports as file pages) when present || swapped. Sorted
 * natively: a frozen dump sorts every page of its areas, 262144 for 1 GiB.
 */
export function dumpablePageRuns(entries: Buffer, firstPageIndex: number, anonShared: boolean): Array<[number, number]> {
  const flat = native().pagemapRuns(entries, anonShared);
  const runs: Array<[number, number]> = [];
  for (let i = 0; i < flat.length; i += 2) runs.push([firstPageIndex + flat[i]!, flat[i + 1]!]);
  return runs;
}

/** Bits 32-54 of the PFN, in the high 32-bit half of an entry. */
const HI_PFN = (1 << 23) - 1;
const HI_EXCLUSIVE = 1 << 24;

/**
 * Pages of an area that a process shares copy-on-write with its parent: `mine` and `theirs`
 * are the two processes' pagemap entries for the same range (one u64 per page). A page is
 * shared when it is present and anonymous in this process, not exclusively mapped, and the
 * parent maps the same page frame there (PFN equal and not zero: without CAP_SYS_ADMIN the
 * kernel reports 0, and nothing is found shared). One byte per page, 1: shared.
 */
export function sharedWithParent(mine: Buffer, theirs: Buffer): Uint8Array {
  const n = Math.min(mine.length, theirs.length) >>> 3;
  const a = mine.byteOffset % 4 === 0 ? mine : Buffer.from(mine);
  const b = theirs.byteOffset % 4 === 0 ? theirs : Buffer.from(theirs);
  const w = new Uint32Array(a.buffer, a.byteOffset, n * 2);
  const x = new Uint32Array(b.buffer, b.byteOffset, n * 2);
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    const hi = w[i * 2 + 1]!;
    if ((hi & HI_PRESENT) === 0 || (hi & (HI_FILE | HI_EXCLUSIVE)) !== 0) continue;
    const lo = w[i * 2]!;
    if (lo === 0 && (hi & HI_PFN) === 0) continue;
    const theirHi = x[i * 2 + 1]!;
    if ((theirHi & HI_PRESENT) === 0 || (theirHi & HI_FILE) !== 0) continue;
    if (x[i * 2] === lo && (theirHi & HI_PFN) === (hi & HI_PFN)) out[i] = 1;
  }
  return out;
}

/**
 * Pages of a private area that are present, anonymous and not exclusively mapped: shared
 * copy-on-write with another process (a parent, a child, a sibling). Reading one with
 * process_vm_readv(2) would unshare it: the kernel pins the pages it reads (FOLL_PIN), and a
 * pin of a shared anonymous page copies it first (mm/gup.c, gup_must_unshare), so a tree left
 * running would come out of a checkpoint with its shared memory copied. /proc/PID/mem
 * (FOLL_GET) reads them in place. One byte per page, 1: shared; undefined when none is.
 */
export function sharedAnonPages(entries: Buffer): Uint8Array | undefined {
  return native().pagemapSharedAnon(entries);
}

/**
 * The page frame of each page that sharedAnonPages counts shared (present, anonymous, not
 * exclusively mapped), else 0 (also when the kernel hides frames: without CAP_SYS_ADMIN it
 * reports 0). Frames below 2^53 are exact in a double: far beyond any machine's memory.
 */
export function sharedFrames(entries: Buffer): Float64Array {
  const n = entries.length >>> 3;
  const aligned = entries.byteOffset % 4 === 0 ? entries : Buffer.from(entries);
  const w = new Uint32Array(aligned.buffer, aligned.byteOffset, n * 2);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const hi = w[i * 2 + 1]!;
    if ((hi & HI_PRESENT) !== 0 && (hi & (HI_FILE | HI_EXCLUSIVE)) === 0) out[i] = (hi & HI_PFN) * 2 ** 32 + w[i * 2]!;
  }
  return out;
}
