/** /proc/PID/fdinfo/FD (proc(5)): pos, flags (octal, includes O_CLOEXEC), mnt_id, ino, then kind-specific lines. */
import { O_CLOEXEC } from './fcntl.js';

export interface Fdinfo {
  pos: bigint;
  /** open(2) flags; the kernel prints them in octal and adds O_CLOEXEC for close-on-exec fds. */
  flags: number;
  mntId: number;
  ino: bigint;
  /** Every other "key: value" line, repeated keys in order (epoll tfd:, inotify wd: …). */
  lines: Map<string, string[]>;
}

/** The highest file position (off_t's). */
const MAX_POS = 0x7fffffffffffffffn;

/**
 * A file position an image gives (the fdinfo `pos` it recorded, in decimal), as a BigInt: up
 * to 2^63-1, not only below 2^53: a directory's on ext4 and other file systems that hash their
 * entries is a cookie of up to 63 bits, and a sparse file's may be as far. Undefined: invalid.
 */
export function imagePos(value: unknown): bigint | undefined {
  // A number, as a few kinds once took, only where it is exact.
  if (typeof value === 'number') return Number.isSafeInteger(value) && value >= 0 ? BigInt(value) : undefined;
  if (typeof value !== 'string' || !/^\d{1,19}$/.test(value)) return undefined;
  const pos = BigInt(value);
  return pos <= MAX_POS ? pos : undefined;
}

/** Parses /proc/PID/fdinfo/FD. */
export function parseFdinfo(text: string): Fdinfo {
  const info: Fdinfo = { pos: 0n, flags: 0, mntId: 0, ino: 0n, lines: new Map() };
  for (const line of text.split('\n')) {
    const i = line.indexOf(':');
    if (i <= 0) continue;
    const key = line.slice(0, i);
    const value = line.slice(i + 1).trim();
    switch (key) {
      case 'pos': info.pos = BigInt(value); break;
      case 'flags': info.flags = parseInt(value, 8); break;
      case 'mnt_id': info.mntId = Number(value); break;
      case 'ino': info.ino = BigInt(value); break;
      default: {
        const list = info.lines.get(key);
        if (list) list.push(value);
        else info.lines.set(key, [value]);
      }
    }
  }
  return info;
}

/** Whether the descriptor has FD_CLOEXEC. */
export function fdCloexec(info: Fdinfo): boolean {
  return (info.flags & O_CLOEXEC) !== 0;
}
