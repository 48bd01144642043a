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
