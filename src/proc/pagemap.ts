/**
 * /proc/PID/pagemap (Documentation/admin-guide/mm/pagemap.rst): one u64 per virtual page.
 * Bit 63 present, 62 swapped, 61 file-page or shared-anon, 56 exclusively mapped,
 * 55 soft-dirty, 0-54 PFN (zero without CAP_SYS_ADMIN).
 */
export const PM_PRESENT = 1n << 63n;
export const PM_SWAPPED = 1n << 62n;
export const PM_FILE = 1n << 61n;
export const PM_EXCLUSIVE = 1n << 56n;
export const PM_SOFT_DIRTY = 1n << 55n;

// The same bits within the high 32-bit half of each entry.
const HI_PRESENT = 1 << 31;
const HI_SWAPPED = 1 << 30;
const HI_FILE = 1 << 29;

/**
 * Runs of pages to store, as [first page, count], page numbers counted from
 * `firstPageIndex`. A page is stored when (present && !file) || swapped; for shared
 * anonymous memory (which pagemap reports as file pages) when present || swapped.
 */
export function dumpablePageRuns(entries: Buffer, firstPageIndex: number, anonShared: boolean): Array<[number, number]> {
  const n = entries.length >>> 3;
  const aligned = entries.byteOffset % 4 === 0 ? entries : Buffer.from(entries);
  const words = new Uint32Array(aligned.buffer, aligned.byteOffset, n * 2);
  const runs: Array<[number, number]> = [];
  let runStart = -1;
  for (let i = 0; i < n; i++) {
    const hi = words[i * 2 + 1]!; // little-endian: high half second
    const store = anonShared
      ? (hi & (HI_PRESENT | HI_SWAPPED)) !== 0
      : ((hi & HI_PRESENT) !== 0 && (hi & HI_FILE) === 0) || (hi & HI_SWAPPED) !== 0;
    if (store) {
      if (runStart < 0) runStart = i;
    } else if (runStart >= 0) {
      runs.push([firstPageIndex + runStart, i - runStart]);
      runStart = -1;
    }
  }
  if (runStart >= 0) runs.push([firstPageIndex + runStart, n - runStart]);
  return runs;
}
