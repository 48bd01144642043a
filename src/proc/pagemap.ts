/**
 * /proc/PID/pagemap (Documentation/admin-guide/mm/pagemap.rst): one u64 per virtual page.
 * Bit 63 present, 62 swapped, 61 file-page or shared-anon, 56 exclusively mapped,
 * 55 soft-dirty, 0-54 PFN (zero without CAP_SYS_ADMIN).
 */
import { readSync } from 'node:fs';
import { PAGE_SIZE } from '../arch/x86-64.js';
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
 * anonymous memory (which pagemap reports as file pages) when present || swapped; never a
 * marker (swapped, of swap type 31: native/memory.cc, Marker), which holds no page. Sorted
 * natively: a frozen dump sorts every page of its areas, 262144 for 1 GiB.
 */
export function dumpablePageRuns(entries: Buffer, firstPageIndex: number, anonShared: boolean): Array<[number, number]> {
  const flat = native().pagemapRuns(entries, anonShared);
  const runs: Array<[number, number]> = [];
  for (let i = 0; i < flat.length; i += 2) runs.push([firstPageIndex + flat[i]!, flat[i + 1]!]);
  return runs;
}

/**
 * Runs [first page, count] of guard pages (madvise MADV_GUARD_INSTALL, Linux 6.13: a marker,
 * swap type 31, of kind PTE_MARKER_GUARD), page numbers counted from `firstPageIndex`. Never
 * stored (reading one fails with EIO): restore installs them again.
 */
export function guardPageRuns(entries: Buffer, firstPageIndex: number): Array<[number, number]> {
  const flat = native().pagemapGuardRuns(entries);
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

/** PAGEMAP_SCAN categories (include/uapi/linux/fs.h). */
export const PAGE_IS_WPALLOWED = 1, PAGE_IS_WRITTEN = 2, PAGE_IS_FILE = 4, PAGE_IS_PRESENT = 8, PAGE_IS_SWAPPED = 16,
  PAGE_IS_PFNZERO = 32, PAGE_IS_HUGE = 64;

/** Regions one PAGEMAP_SCAN call of scanStoredPages returns at most (24 bytes each). */
const SCAN_REGIONS = 4096;

/** What scanStoredPages found in an area, pages counted from its start. */
export interface ScannedPages {
  /** Runs [first page, count] of the pages to store, as dumpablePageRuns gives them. */
  runs: Array<[number, number]>;
  /** Runs of those that map the zero page (present, anonymous and never exclusive). */
  zero: Array<[number, number]>;
  /** Runs of guard pages (guardPageRuns). */
  guards: Array<[number, number]>;
}

/**
 * Where a walk of PAGEMAP_SCAN calls over [at, end) goes on after the call `r` from `at` that
 * asked for at most `max` regions: `end` when it is done. With fewer regions than `max` the
 * kernel walked to `end`, whatever its walk_end says: do_pagemap_scan (Linux 6.18 here) keeps
 * the walk_end of an earlier pass of the same call that filled its own buffer (512 regions),
 * and reported 908 pages into an area of 1,024 whose 625 regions had all come back. With the
 * regions full it stopped at walk_end, never before the last region's end. Not past `at`:
 * no progress (the caller stops).
 */
export function nextScanStart(r: { regions: BigUint64Array; walkEnd: bigint }, at: bigint, end: bigint, max: number): bigint {
  if (r.regions.length < max * 3) return end;
  const last = r.regions.length > 0 ? r.regions[r.regions.length - 2]! : at;
  return r.walkEnd > last ? r.walkEnd : last;
}

/** Pagemap entries read at once by unmarkedRuns (512 KiB). */
const ENTRIES_AT_ONCE = 65536;

/**
 * Of `count` pages from page number `firstPage` (address / PAGE_SIZE) that PAGEMAP_SCAN
 * reports swapped, the runs [page from firstPage, count] that are not markers, from their
 * pagemap entries (`fd`, pagemapRuns). Markers are common where pre-copy tracked memory
 * (dump/dirty.ts: every untouched page of a tracked area holds one), so a dump must not
 * store them as pages, and whatever a migration's target holds of a page now a marker is stale.
 * Also the runs of guard pages among them (guardPageRuns).
 */
function unmarkedRuns(fd: number, firstPage: bigint, count: number, anonShared: boolean): { runs: Array<[number, number]>; guards: Array<[number, number]> } | undefined {
  const out: Array<[number, number]> = [];
  const guards: Array<[number, number]> = [];
  const buf = Buffer.allocUnsafe(Math.min(count, ENTRIES_AT_ONCE) * 8);
  for (let done = 0; done < count;) {
    const want = Math.min(count - done, ENTRIES_AT_ONCE) * 8;
    let got: number;
    try {
      got = readSync(fd, buf, 0, want, Number((firstPage + BigInt(done)) * 8n));
    } catch {
      return undefined;
    }
    if (got !== want) return undefined;
    for (const [f, k] of dumpablePageRuns(buf.subarray(0, want), done, anonShared)) pushRun(out, f, k);
    for (const [f, k] of guardPageRuns(buf.subarray(0, want), done)) pushRun(guards, f, k);
    done += want / 8;
  }
  return { runs: out, guards };
}

/** Appends [page, count] to `runs`, extending the last run when it ends at `page`. */
function pushRun(runs: Array<[number, number]>, page: number, count: number): void {
  const last = runs.at(-1);
  if (last !== undefined && last[0] + last[1] === page) last[1] += count;
  else runs.push([page, count]);
}

/**
 * The pages of [start, end) (one whole area) a dump stores, found with PAGEMAP_SCAN (an ioctl
 * on the pagemap descriptor `fd`, Documentation/admin-guide/mm/pagemap.rst) instead of
 * reading one pagemap entry a page: the kernel returns ranges, one for a whole area of
 * touched memory, where the read returns 8 bytes a page (2 MiB for 1 GiB) to sort.
 *
 * The same answer as dumpablePageRuns, category for bit (fs/proc/task_mmu.c, both walks call
 * the same tests on each entry): PAGE_IS_PRESENT is pte_present (bit 63), PAGE_IS_SWAPPED is
 * is_swap_pte (bit 62: also migration entries and markers), PAGE_IS_FILE is a mapped folio
 * that is not anonymous (bit 61; not set for the zero page, which has no folio, nor in
 * pagemap). Markers (a swap entry of type 31, pagemapRuns) are swapped for PAGEMAP_SCAN: such
 * regions' entries are read to leave them out (unmarkedRuns). One exception: a huge zero page
 * (a read of untouched memory where transparent huge pages are on) is PAGE_IS_FILE for one
 * walk and not the other depending on the kernel's version: undefined then, and the caller reads the pagemap (an `anonymous` scan, which does
 * not ask PAGE_IS_FILE, scans again asking it when it meets a huge page); also when the kernel has no
 * PAGEMAP_SCAN (before Linux 6.7) or the scan fails. The zero pages are also returned
 * (PAGE_IS_PFNZERO): pagemap shows them not exclusively mapped, which sharedAnonPages counts.
 * What the scan cannot tell, the exclusive bit and the page frames, the caller must not need.
 *
 * `anonymous`: the area is anonymous memory (no file behind it), where no page is a file's:
 * PAGE_IS_FILE is then not asked for, which spares the kernel a look at each page's folio
 * (vm_normal_page): 1.4 ms instead of 7-12 ms for 1 GiB of small pages here. Nor with
 * `anonShared`, where present pages are stored whatever they are.
 */
export function scanStoredPages(fd: number, start: bigint, end: bigint, anonShared: boolean, anonymous = false): ScannedPages | undefined {
  const n = native();
  const runs: Array<[number, number]> = [];
  const zero: Array<[number, number]> = [];
  const guards: Array<[number, number]> = [];
  const want = PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_PFNZERO | PAGE_IS_HUGE | (anonShared || anonymous ? 0 : PAGE_IS_FILE);
  const page = BigInt(PAGE_SIZE);
  for (let at = start; at < end;) {
    // Only pages present or swapped (category_anyof_mask): never-touched ones are no region.
    let r: ReturnType<typeof n.pagemapScan>;
    try {
      r = n.pagemapScan(fd, at, end, 0, 0, want, SCAN_REGIONS, PAGE_IS_PRESENT | PAGE_IS_SWAPPED);
    } catch {
      return undefined; // ENOTTY before 6.7: the read gives the answer (and any real error) instead
    }
    const g = r.regions;
    for (let i = 0; i < g.length; i += 3) {
      const c = Number(g[i + 2]!);
      if ((c & (PAGE_IS_HUGE | PAGE_IS_PFNZERO)) === (PAGE_IS_HUGE | PAGE_IS_PFNZERO)) return undefined;
      // A kernel that does not flag the huge zero page PFNZERO (6.7 on: its pagemap calls it a
      // file's page) would have it stored here, with PAGE_IS_FILE not asked: the area is
      // scanned again asking it (one folio a 2 MiB page: cheap for huge pages).
      if (anonymous && (c & (PAGE_IS_HUGE | PAGE_IS_PRESENT)) === (PAGE_IS_HUGE | PAGE_IS_PRESENT)) return scanStoredPages(fd, start, end, anonShared, false);
      // Every region is present or swapped: stored unless a present page of a file.
      if (!anonShared && (c & PAGE_IS_SWAPPED) === 0 && (c & PAGE_IS_FILE) !== 0) continue;
      const first = Number((g[i]! - start) / page);
      const count = Number((g[i + 1]! - g[i]!) / page);
      if ((c & PAGE_IS_PRESENT) === 0) {
        // Swapped, or a marker, which PAGEMAP_SCAN calls swapped too (pagemapRuns): the entries say.
        const unmarked = unmarkedRuns(fd, g[i]! / page, count, anonShared);
        if (unmarked === undefined) return undefined; // the read gives the answer (or the error)
        for (const [f, k] of unmarked.runs) pushRun(runs, first + f, k);
        for (const [f, k] of unmarked.guards) pushRun(guards, first + f, k);
        continue;
      }
      pushRun(runs, first, count);
      if ((c & (PAGE_IS_PFNZERO | PAGE_IS_PRESENT)) === (PAGE_IS_PFNZERO | PAGE_IS_PRESENT)) pushRun(zero, first, count);
    }
    const next = nextScanStart(r, at, end, SCAN_REGIONS);
    if (next <= at) return undefined;
    at = next;
  }
  return { runs, zero, guards };
}
