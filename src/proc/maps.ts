/** /proc/PID/maps (proc(5)): one memory area per line. */

/** One line of /proc/PID/maps. */
export interface Vma {
  start: bigint;
  end: bigint;
  read: boolean;
  write: boolean;
  exec: boolean;
  /** 's' (MAP_SHARED) rather than 'p'. */
  shared: boolean;
  offset: bigint;
  major: number;
  minor: number;
  inode: bigint;
  /** Path or special name ([heap], [stack], [vdso]…), without " (deleted)"; '' for anonymous. */
  path: string;
  /** The mapped file was unlinked. */
  deleted: boolean;
}

/** The kernel escapes '\n' in paths as "\012" (seq_file_path with "\n"). */
function unescapePath(p: string): string {
  return p.includes('\\012') ? p.replaceAll('\\012', '\n') : p;
}

/** Parses /proc/PID/maps. */
export function parseMaps(text: string): Vma[] {
  const out: Vma[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    // start-end perms offset dev inode [path]; the path starts after the inode's padding.
    const m = /^([0-9a-f]+)-([0-9a-f]+) ([r-])([w-])([x-])([ps]) ([0-9a-f]+) ([0-9a-f]+):([0-9a-f]+) (\d+)\s*(.*)$/.exec(line);
    if (!m) throw new Error(`maps: cannot parse line: ${line}`);
    let path = unescapePath(m[11]!);
    const deleted = path.endsWith(' (deleted)');
    if (deleted) path = path.slice(0, -' (deleted)'.length);
    out.push({
      start: BigInt(`0x${m[1]}`), end: BigInt(`0x${m[2]}`),
      read: m[3] === 'r', write: m[4] === 'w', exec: m[5] === 'x', shared: m[6] === 's',
      offset: BigInt(`0x${m[7]}`), major: parseInt(m[8]!, 16), minor: parseInt(m[9]!, 16),
      inode: BigInt(m[10]!), path, deleted,
    });
  }
  return out;
}

/** Lowest and highest address a scratch area may take: mmap_min_addr's usual 64 KiB, the 47-bit user space. */
const USER_MIN = 0x10000n, USER_MAX = 0x7ffffffff000n;
/** Room kept below a stack that grows down (the kernel's stack_guard_gap, 256 pages). */
const STACK_GUARD_GAP = 256n * 4096n;

/**
 * A page-aligned address where `size` bytes can be mapped in a layout of `vmas` (sorted, as
 * maps lists them) without touching any area: a free page is kept on each side, so the new
 * area cannot merge with a neighbour (and unmapping it leaves the layout exactly as it was),
 * and the stack guard gap below a `[stack]` or growsdown area (`vmflags` code `gd`) is left
 * alone. The highest such place is taken, where the kernel's own top-down search would look.
 * Undefined when nothing fits.
 */
export function freeRange(vmas: readonly Vma[], size: number, vmflags?: ReadonlyMap<bigint, readonly string[]>): bigint | undefined {
  const len = (BigInt(size) + 4095n) & ~4095n;
  const sorted = [...vmas].sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  // Gaps from the top down: [end of the area below, start of the area above).
  for (let i = sorted.length; i >= 0; i--) {
    const below = sorted[i - 1];
    const above = sorted[i];
    const low = (below ? below.end : USER_MIN) + 4096n;
    let high = above ? above.start : USER_MAX;
    if (above && (above.path === '[stack]' || (vmflags?.get(above.start)?.includes('gd') ?? false))) high -= STACK_GUARD_GAP;
    high = (high > USER_MAX ? USER_MAX : high) - 4096n;
    if (high - low >= len && high - len >= USER_MIN) return high - len;
  }
  return undefined;
}
