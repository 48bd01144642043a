/**
 * Character devices reopened by path: /dev/null, /dev/zero, /dev/urandom and friends. The
 * path is resolved inside the process's recorded root (confined.ts) to an O_PATH descriptor,
 * which opens nothing; it must be a character device with the recorded number (and not a
 * terminal) before that very file is opened, with the record's access mode and status flags
 * only (never O_CREAT, O_TRUNC…: a record that says "chr" never opens a regular file for
 * writing). Terminals are not handled here (they have sessions, termios and peers): tty.ts
 * takes them. A node whose name was removed is refused at checkpoint (nothing could open it
 * again, and restore does not make device nodes).
 */
import type { BigIntStats } from 'node:fs';
import { FerryError } from '../errors.js';
import type { FileRecord } from '../image/records.js';
import { native } from '../native/binding.js';
import { O_ACCMODE, O_APPEND, O_CLOEXEC, O_DIRECT, O_LARGEFILE, O_NOATIME, O_NONBLOCK, O_SYNC } from '../proc/fcntl.js';
import { placeOf, reopenIn, shownIn, statIn } from './confined.js';
import { isTerminal } from './tty.js';
import type { FdDesc, FileKind } from './types.js';

const major = (rdev: bigint): number => Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn));
const minor = (rdev: bigint): number => Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn));

const O_NOCTTY = 0o400;
/** What a device is opened again with: access mode and status flags (O_NOCTTY added), nothing that creates. */
const REOPEN_FLAGS = O_ACCMODE | O_APPEND | O_NONBLOCK | O_SYNC | O_DIRECT | O_LARGEFILE | O_NOATIME;

/** Why `st` is not the recorded device, or undefined. */
function notTheDevice(rec: ChrdevRecord, st: BigIntStats): string | undefined {
  if (!st.isCharacterDevice()) return `is not a character device (the image says ${rec.major}:${rec.minor})`;
  if (major(st.rdev) !== rec.major || minor(st.rdev) !== rec.minor) {
    return `is character device ${major(st.rdev)}:${minor(st.rdev)}, not ${rec.major}:${rec.minor}`;
  }
  if (isTerminal(st.rdev)) return 'is a terminal, which a device record does not reopen';
  return undefined;
}

export interface ChrdevRecord extends FileRecord {
  kind: 'chr';
  path: string;
  flags: number;
  pos: string;
  major: number;
  minor: number;
}

export const chrdev: FileKind<ChrdevRecord> = {
  kind: 'chr',

  matches(fd: FdDesc): boolean {
    return fd.link.startsWith('/') && fd.stat.isCharacterDevice() && !isTerminal(fd.stat.rdev);
  },

  precheck(fd: FdDesc): void {
    // A node whose name was removed has no path to open again, and making one (mknod) from
    // an image would hand it any device: refused, before the tree is touched.
    if (fd.link.endsWith(' (deleted)')) {
      throw new FerryError('EUNSUPPORTED', `unsupported file: pid ${fd.pid} fd ${fd.fd} -> ${fd.link} (a character device node `
        + `${major(fd.stat.rdev)}:${minor(fd.stat.rdev)} whose name was removed cannot be checkpointed yet; open the device by a name that stays)`);
    }
  },

  key(fd: FdDesc): string {
    return `chr:${fd.stat.rdev}:${fd.stat.ino}:${fd.fdinfo.flags & ~O_CLOEXEC}`;
  },

  dump(fd: FdDesc): Omit<ChrdevRecord, 'id' | 'kind'> {
    return {
      path: fd.link,
      flags: fd.fdinfo.flags & ~O_CLOEXEC,
      pos: fd.fdinfo.pos.toString(),
      major: major(fd.stat.rdev),
      minor: minor(fd.stat.rdev),
    };
  },

  check(rec: ChrdevRecord): void {
    // The image is input: every field this module uses must be there, of its type.
    const num = (v: unknown): boolean => Number.isSafeInteger(v) && (v as number) >= 0 && (v as number) < 2 ** 32;
    if (typeof rec.path !== 'string' || !rec.path.startsWith('/') || rec.path.includes('\0') || rec.path.length > 4096
      || !num(rec.major) || !num(rec.minor) || !num(rec.flags)
      || typeof rec.pos !== 'string' || !/^\d{1,16}$/.test(rec.pos) || !Number.isSafeInteger(Number(rec.pos))) {
      throw new FerryError('EIMAGE', `image: character device (file ${rec.id}) needs an absolute path, flags, pos, major and minor`);
    }
    // Resolved inside the process's recorded root (confined.ts), as open() will.
    const { root, path } = placeOf(rec);
    const what = `character device (file ${rec.id} of the image)`;
    const st = statIn(root, path, what);
    if (!st) throw new FerryError('ENOENT', `${what}: ${shownIn(root, path)} (${rec.major}:${rec.minor}) does not exist here`, { path: rec.path });
    const why = notTheDevice(rec, st);
    if (why !== undefined) throw new FerryError('ECHANGED', `${what}: ${shownIn(root, path)} ${why}: refused, nothing was opened`, { path: rec.path });
  },

  open(rec: ChrdevRecord): number {
    const { root, path } = placeOf(rec);
    const what = `character device (file ${rec.id} of the image)`;
    let fd: number;
    try {
      fd = reopenIn(root, path, (rec.flags & REOPEN_FLAGS) | O_NOCTTY, what, (st) => notTheDevice(rec, st));
    } catch (err) {
      if (err instanceof FerryError) throw err;
      throw new FerryError('EOPEN', `${what}: cannot open ${shownIn(root, path)}: ${(err as Error).message}`, { cause: err, path: rec.path });
    }
    const pos = Number(rec.pos);
    if (pos !== 0) native().lseek(fd, pos, 0);
    return fd;
  },
};
