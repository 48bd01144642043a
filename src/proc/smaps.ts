/** /proc/PID/smaps: per-area details; we only need the VmFlags line of each area. */
import { parseMaps, type Vma } from './maps.js';

/**
 * The areas (smaps starts each with its /proc/PID/maps line) and their VmFlags, from one
 * reading of /proc/PID/smaps: the same layout as maps and smaps read one after the other, with
 * no chance of a difference between the two readings.
 */
export function parseSmaps(text: string): { vmas: Vma[]; vmflags: Map<bigint, string[]> } {
  const headers = text.split('\n').filter((line) => /^[0-9a-f]+-[0-9a-f]+ /.test(line));
  return { vmas: parseMaps(headers.join('\n')), vmflags: parseSmapsVmFlags(text) };
}

/** Area start -> its VmFlags two-letter codes ("rd wr mr mw me gd ac"…). */
export function parseSmapsVmFlags(text: string): Map<bigint, string[]> {
  const out = new Map<bigint, string[]>();
  let start: bigint | undefined;
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
        start = BigInt(`0x${line.slice(0, dash)}`);
        continue;
      }
    }
    if (line.startsWith('VmFlags:') && start !== undefined) {
      out.set(start, line.slice(8).trim().split(/\s+/).filter(Boolean));
    }
  }
  return out;
}
