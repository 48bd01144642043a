/**
 * signalfd (signalfd(2): `anon_inode:[signalfd]`): the signal mask (fdinfo `sigmask`, hex,
 * bit n-1 for signal n) and O_NONBLOCK. A signalfd holds no data of its own: the signals it
 * reads are the reading thread's pending signals, which the task state restores.
 */
import { FerryError } from '../errors.js';
import type { FileRecord } from '../image/records.js';
import { native } from '../native/binding.js';
import { O_ACCMODE, O_CLOEXEC, O_NONBLOCK } from '../proc/fcntl.js';
import type { FdDesc, FileKind } from './types.js';

export interface SignalfdRecord extends FileRecord {
  kind: 'signalfd';
  /** Signals the descriptor reads, "0x…" hex (bit n-1 = signal n). */
  mask: string;
  /** Status flags of the open file (O_NONBLOCK). */
  flags: number;
}

const sigmask = (fd: FdDesc): string | undefined => fd.fdinfo.lines.get('sigmask')?.[0];

export const signalfd: FileKind<SignalfdRecord> = {
  kind: 'signalfd',

  matches(fd: FdDesc): boolean {
    return fd.link === 'anon_inode:[signalfd]';
  },

  key(fd: FdDesc): string {
    return `signalfd:${sigmask(fd) ?? ''}:${fd.fdinfo.flags & ~O_CLOEXEC}`;
  },

  dump(fd: FdDesc): Omit<SignalfdRecord, 'id' | 'kind'> {
    const mask = sigmask(fd);
    if (mask === undefined || !/^[0-9a-f]{1,16}$/i.test(mask)) {
      throw new FerryError('EDUMP', `checkpoint: signalfd fd ${fd.fd} of pid ${fd.pid}: fdinfo has no sigmask`);
    }
    return { mask: `0x${BigInt(`0x${mask}`).toString(16)}`, flags: fd.fdinfo.flags & ~O_CLOEXEC & ~O_ACCMODE };
  },

  check(rec: SignalfdRecord): void {
    if (typeof rec.mask !== 'string' || !/^0x[0-9a-f]{1,16}$/.test(rec.mask) || !Number.isSafeInteger(rec.flags)) {
      throw new FerryError('EIMAGE', `image: signalfd (file ${rec.id}) has an invalid record`);
    }
  },

  open(rec: SignalfdRecord): number {
    try {
      return native().signalfdCreate(BigInt(rec.mask), rec.flags & O_NONBLOCK);
    } catch (err) {
      throw new FerryError('EOPEN', `cannot restore signalfd (file ${rec.id}, mask ${rec.mask}): ${(err as Error).message}`, { cause: err });
    }
  },
};
