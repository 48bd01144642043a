/**
 * /proc/PID/smaps: per-area details; we need the VmFlags line of each area, and whether any
 * of its pages is mapped by another process too (Shared_Clean, Shared_Dirty, Shared_Hugetlb).
 */
import { parseMaps, type Vma } from './maps.js';

/** One reading of /proc/PID/smaps. */
export interface Smaps {
  vmas: Vma[];
  /** Area start -> its VmFlags two-letter codes. */
  vmflags: Map<bigint, string[]>;
  /**
   * Starts of the areas none of whose pages is mapped more than once (Shared_Clean,
   * Shared_Dirty and Shared_Hugetlb all 0 kB, each seen): fs/proc/task_mmu.c smaps_account
   * counts a page shared when its mapcount is 2 or more, the count pagemap's exclusive bit
   * (56) is set at 1 for. The zero page is not counted (it has no folio).
   */
  unshared: Set<bigint>;
}

/**
 * The areas (smaps starts each with its /proc/PID/maps line), their VmFlags and which have no
 * page mapped twice, from one reading of /proc/PID/smaps: the same layout as maps and smaps
 * read one after the other, with no chance of a difference between the two readings.
 */
export function parseSmaps(text: string): Smaps {
  const headers = text.split('\n').filter((line) => /^[0-9a-f]+-[0-9a-f]+ /.test(line));
  const unshared = new Set<bigint>();
  return { vmas: parseMaps(headers.join('\n')), vmflags: parseSmapsVmFlags(text, unshared), unshared };
}

/**
 * Area start -> its VmFlags two-letter codes ("rd wr mr mw me gd ac"…); with `unshared`, the
 * starts of the areas whose Shared_Clean and Shared_Dirty (and Shared_Hugetlb if shown) read
 * 0 kB are added to it.
 */
export function parseSmapsVmFlags(text: string, unshared?: Set<bigint>): Map<bigint, string[]> {
  const out = new Map<bigint, string[]>();
  let start: bigint | undefined;
  // Of the current area: Shared_Clean and Shared_Dirty seen at 0 kB, or -1 once one was not.
  let zeros = 0;
  const done = (): void => {
    if (unshared && start !== undefined && zeros === 2) unshared.add(start);
  };
  let pos = 0;
  while (pos < text.length) {
    let nl = text.indexOf('\n', pos);
    if (nl < 0) nl = text.length;
    const line = text.slice(pos, nl);
    pos = nl + 1;
    const c = line.charCodeAt(0);
    // Header lines start with a hex address; field lines with a capitalised key.
    if ((c >= 48 && c <= 57) || (c >= 97 && c <= 102)) {
      const dash = line.indexOf('-');
      if (dash > 0 && line.indexOf(' ') > dash) {
        done();
        start = BigInt(`0x${line.slice(0, dash)}`);
        zeros = 0;
        continue;
      }
    }
    if (line.startsWith('VmFlags:') && start !== undefined) {
      out.set(start, line.slice(8).trim().split(/\s+/).filter(Boolean));
    } else if (unshared && c === 83 /* S */ && line.startsWith('Shared_') && zeros >= 0) {
      const kb = /^Shared_(Clean|Dirty|Hugetlb):\s+(\d+) kB$/.exec(line);
      if (kb === null || kb[2] !== '0') zeros = -1;
      else if (kb[1] !== 'Hugetlb') zeros++;
    }
  }
  done();
  return out;
}
