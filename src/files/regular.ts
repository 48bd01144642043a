/**
 * Regular files, directories and O_PATH descriptors: reopened by path with the same flags,
 * positioned at the same offset. The file must still be there on restore, with the same
 * device and inode when restoring on the same node.
 */
import { constants, existsSync, statSync } from 'node:fs';
import { FerryError } from '../errors.js';
import type { FileRecord } from '../image/records.js';
import { native } from '../native/binding.js';
import { O_CLOEXEC, O_PATH } from '../proc/fcntl.js';
import type { FdDesc, FileKind } from './types.js';

/** Flags that only matter when a file is created or are per-descriptor, not per open file. */
const OPEN_ONLY_FLAGS = constants.O_CREAT | constants.O_EXCL | constants.O_TRUNC | constants.O_NOCTTY | O_CLOEXEC;

export interface RegularRecord extends FileRecord {
  kind: 'reg';
  path: string;
  /** open(2) flags of the open file (access mode, O_APPEND, O_NONBLOCK, O_DIRECTORY, O_PATH…). */
  flags: number;
  /** File offset. */
  pos: string;
  /** Identity at dump time, to tell the user when the file changed. */
  dev: string;
  ino: string;
  directory: boolean;
}

export const regular: FileKind<RegularRecord> = {
  kind: 'reg',

  matches(fd: FdDesc): boolean {
    return fd.link.startsWith('/') && (fd.stat.isFile() || fd.stat.isDirectory()
      || (fd.fdinfo.flags & O_PATH) !== 0);
  },

  key(fd: FdDesc): string {
    return `reg:${fd.stat.dev}:${fd.stat.ino}:${fd.fdinfo.pos}:${fd.fdinfo.flags & ~O_CLOEXEC}`;
  },

  dump(fd: FdDesc): Omit<RegularRecord, 'id' | 'kind'> {
    if (fd.link.endsWith(' (deleted)')) {
      throw new FerryError('EUNSUPPORTED',
        `unsupported file: pid ${fd.pid} fd ${fd.fd} -> ${fd.link} (deleted files cannot be checkpointed yet)`);
    }
    return {
      path: fd.link,
      flags: fd.fdinfo.flags & ~OPEN_ONLY_FLAGS,
      pos: fd.fdinfo.pos.toString(),
      dev: fd.stat.dev.toString(),
      ino: fd.stat.ino.toString(),
      directory: fd.stat.isDirectory(),
    };
  },

  check(rec: RegularRecord): void {
    if (!existsSync(rec.path)) {
      throw new FerryError('ENOENT', `file ${rec.path} (file ${rec.id} of the image) no longer exists: restore it first`);
    }
    const st = statSync(rec.path, { bigint: true });
    if (st.isDirectory() !== rec.directory) {
      throw new FerryError('ECHANGED', `file ${rec.path} is no longer a ${rec.directory ? 'directory' : 'regular file'}`);
    }
  },

  open(rec: RegularRecord): number {
    let fd: number;
    try {
      fd = native().openRaw(rec.path, rec.flags);
    } catch (err) {
      throw new FerryError('EOPEN', `cannot open ${rec.path}: ${(err as Error).message}`, { cause: err });
    }
    const pos = Number(rec.pos);
    if (pos !== 0 && (rec.flags & O_PATH) === 0) native().lseek(fd, pos, 0);
    return fd;
  },
};
