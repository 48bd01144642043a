/**
 * eventfd (eventfd(2): `anon_inode:[eventfd]`): the 64-bit counter, semaphore mode and
 * O_NONBLOCK. The counter comes from fdinfo (`eventfd-count`, hex), read while the tree is
 * frozen, so nothing is consumed; `eventfd-semaphore` says EFD_SEMAPHORE. On restore a new
 * eventfd is created with the same mode and the counter written into it.
 */
import { FerryError } from '../errors.js';
import type { FileRecord } from '../image/records.js';
import { native } from '../native/binding.js';
import { O_ACCMODE, O_CLOEXEC, O_NONBLOCK } from '../proc/fcntl.js';
import type { FdDesc, FileKind } from './types.js';

/** eventfd(2) EFD_SEMAPHORE (EFD_NONBLOCK is O_NONBLOCK). */
const EFD_SEMAPHORE = 1;
/** Largest counter value (eventfd(2): a write that would pass it blocks). */
const MAX_COUNT = 0xfffffffffffffffen;

export interface EventfdRecord extends FileRecord {
  kind: 'eventfd';
  /** The counter, "0x…" hex. */
  count: string;
  /** EFD_SEMAPHORE: each read takes 1. */
  semaphore: boolean;
  /** Status flags of the open file (O_NONBLOCK); the access mode is always O_RDWR. */
  flags: number;
}

function field(fd: FdDesc, key: string): string | undefined {
  return fd.fdinfo.lines.get(key)?.[0];
}

export const eventfd: FileKind<EventfdRecord> = {
  kind: 'eventfd',

  matches(fd: FdDesc): boolean {
    return fd.link === 'anon_inode:[eventfd]';
  },

  key(fd: FdDesc): string {
    // eventfd-id (Linux 5.?) is unique per eventfd; without it, the counter narrows the group.
    return `eventfd:${field(fd, 'eventfd-id') ?? `count-${field(fd, 'eventfd-count') ?? ''}`}`;
  },

  dump(fd: FdDesc): Omit<EventfdRecord, 'id' | 'kind'> {
    const count = field(fd, 'eventfd-count');
    if (count === undefined || !/^[0-9a-f]{1,16}$/i.test(count)) {
      throw new FerryError('EDUMP', `checkpoint: eventfd fd ${fd.fd} of pid ${fd.pid}: fdinfo has no eventfd-count`);
    }
    return {
      count: `0x${BigInt(`0x${count}`).toString(16)}`,
      semaphore: field(fd, 'eventfd-semaphore') === '1',
      flags: fd.fdinfo.flags & ~O_CLOEXEC & ~O_ACCMODE,
    };
  },

  check(rec: EventfdRecord): void {
    const ok = typeof rec.count === 'string' && /^0x[0-9a-f]{1,16}$/.test(rec.count) && BigInt(rec.count) <= MAX_COUNT
      && typeof rec.semaphore === 'boolean' && Number.isSafeInteger(rec.flags);
    if (!ok) throw new FerryError('EIMAGE', `image: eventfd (file ${rec.id}) has an invalid record`);
  },

  open(rec: EventfdRecord): number {
    try {
      return native().eventfdCreate(BigInt(rec.count), (rec.flags & O_NONBLOCK) | (rec.semaphore ? EFD_SEMAPHORE : 0));
    } catch (err) {
      throw new FerryError('EOPEN', `cannot restore eventfd (file ${rec.id}): ${(err as Error).message}`, { cause: err });
    }
  },
};
