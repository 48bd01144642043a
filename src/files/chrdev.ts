/**
 * Character devices reopened by path: /dev/null, /dev/zero, /dev/urandom and friends. The
 * device number must match on restore. Terminals are not handled here (they have sessions,
 * termios and peers): tty.ts takes them.
 */
import { existsSync, statSync } from 'node:fs';
import { FerryError } from '../errors.js';
import type { FileRecord } from '../image/records.js';
import { native } from '../native/binding.js';
import { O_CLOEXEC } from '../proc/fcntl.js';
import { isTerminal } from './tty.js';
import type { FdDesc, FileKind } from './types.js';

const major = (rdev: bigint): number => Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn));
const minor = (rdev: bigint): number => Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn));

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
    if (!existsSync(rec.path)) throw new FerryError('ENOENT', `device ${rec.path} (${rec.major}:${rec.minor}) does not exist here`);
    const st = statSync(rec.path, { bigint: true });
    if (!st.isCharacterDevice() || major(st.rdev) !== rec.major || minor(st.rdev) !== rec.minor) {
      throw new FerryError('ECHANGED', `device ${rec.path} is not character device ${rec.major}:${rec.minor} here`);
    }
  },

  open(rec: ChrdevRecord): number {
    const fd = native().openRaw(rec.path, rec.flags);
    const pos = Number(rec.pos);
    if (pos !== 0) native().lseek(fd, pos, 0);
    return fd;
  },
};
