/**
 * memfd (memfd_create(2): the link reads `/memfd:NAME (deleted)`, fdinfo `mnt_id: 0`): name,
 * contents (data extents, stored once per memfd as an image entry, up to
 * `files.deleted_max_bytes`), size, mode, seals (F_GET_SEALS), and per open file the access
 * mode, status flags and offset.
 *
 * One memfd may be open several times (fork, dup, or opened again through /proc/PID/fd) and
 * mapped by processes that no longer hold a descriptor of it. Every record of one memfd
 * carries its identity (`memfd`: `major:minor:inode` at dump, the same string a mapping of it
 * carries in its VMA record). On restore the first record opened creates the memfd:
 * memfd_create with MFD_ALLOW_SEALING, contents, size, mode, then the seals (a memfd made
 * without MFD_ALLOW_SEALING has F_SEAL_SEAL, which is added back like any other seal); the
 * others open it again through /proc/self/fd. Mappings (restore/address-space.ts) map the
 * memfd created here through `restoredMemfd`.
 */
import { imagePos } from '../proc/fdinfo.js';
import { fchmodSync } from 'node:fs';
import { FerryError } from '../errors.js';
import type { FileRecord } from '../image/records.js';
import { native } from '../native/binding.js';
import { O_CLOEXEC, O_LARGEFILE, O_PATH } from '../proc/fcntl.js';
import { checkContents, contentsLimit, dumpContents, Registry, reopen, storedEstimate, tooBig, writeContents, type Contents } from './deleted.js';
import type { DumpContext, FdDesc, FileKind, FileOptions, OpenContext } from './types.js';

const O_RDWR = 2, SEEK_SET = 0;
/** memfd_create(2) flags. */
export const MFD_ALLOW_SEALING = 2;
/** fcntl(2) seals: F_SEAL_SEAL … F_SEAL_EXEC. */
const ALL_SEALS = 0x3f;
/** memfd names are at most 249 bytes (memfd_create(2)). */
const NAME_MAX = 249;
const PREFIX = '/memfd:', SUFFIX = ' (deleted)';
const PAGE = 4096;

export interface MemfdRecord extends FileRecord, Contents {
  kind: 'memfd';
  /** Identity at dump, `major:minor:inode`: the records and mappings of one memfd share it. */
  memfd: string;
  /** The name given to memfd_create (shown as /memfd:NAME). */
  name: string;
  /** open(2) access mode and status flags of this open file. */
  flags: number;
  pos: string;
  mode: number;
  /** F_SEAL_* bits. */
  seals: number;
}

/** Identity string of a memfd from its stat: the format of VmaRecord.shmem ids. */
export function memfdIdentity(dev: bigint, ino: bigint): string {
  const major = Number(((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn));
  const minor = Number((dev & 0xffn) | ((dev >> 12n) & ~0xffn));
  return `${major}:${minor}:${ino}`;
}

/** Whether a maps path or fd link is a memfd's. */
export const isMemfdPath = (p: string): boolean => p.startsWith(PREFIX);

const memfds = new Registry();

/**
 * The controller descriptor of memfd `identity` created by the current restore (held by some
 * descriptor in the image), or undefined when only mappings of it are in the image.
 */
export function restoredMemfd(identity: string): number | undefined {
  return memfds.get(identity);
}

/**
 * Creates a memfd with its stored state in the controller (O_RDWR), contents and seals in
 * place; `fill` writes the data into the new, empty file.
 */
export function createMemfd(name: string, mode: number, seals: number, fill: (fd: number) => void): number {
  const n = native();
  const fd = n.memfdCreate(name, MFD_ALLOW_SEALING);
  try {
    fill(fd);
    fchmodSync(fd, mode);
    if (seals !== 0) n.addSeals(fd, seals);
    return fd;
  } catch (err) {
    n.closeFd(fd);
    throw err;
  }
}

/** A memfd on hugetlbfs (MFD_HUGETLB) has huge pages as its block size. */
export const isHugetlb = (blksize: bigint | number): boolean => Number(blksize) > PAGE;

export const memfd: FileKind<MemfdRecord> = {
  kind: 'memfd',

  matches(fd: FdDesc): boolean {
    return isMemfdPath(fd.link) && fd.link.endsWith(SUFFIX) && fd.fdinfo.mntId === 0 && fd.stat.isFile();
  },

  /** Refuses, before anything is touched, what cannot be stored (hugetlb, over the limit). */
  precheck(fd: FdDesc, options: FileOptions): void {
    if (isHugetlb(fd.stat.blksize)) {
      throw new FerryError('EUNSUPPORTED', `unsupported file: pid ${fd.pid} fd ${fd.fd} -> ${fd.link} (hugetlb memfds cannot be checkpointed yet)`);
    }
    const bytes = storedEstimate(fd.stat);
    const limit = contentsLimit(options);
    if (bytes > limit) throw tooBig(fd, 'the memfd', bytes, limit);
  },

  key(fd: FdDesc): string {
    return `memfd:${fd.stat.dev}:${fd.stat.ino}:${fd.fdinfo.pos}:${fd.fdinfo.flags & ~O_CLOEXEC}`;
  },

  dump(fd: FdDesc, ctx: DumpContext): Omit<MemfdRecord, 'id' | 'kind'> {
    const id = memfdIdentity(fd.stat.dev, fd.stat.ino);
    try {
      const n = native();
      let seals: number;
      if ((fd.fdinfo.flags & O_PATH) !== 0) {
        const rd = n.openRaw(`/proc/self/fd/${ctx.grab(fd)}`, 0);
        try { seals = n.getSeals(rd); } finally { n.closeFd(rd); }
      } else {
        seals = n.getSeals(ctx.grab(fd));
      }
      return {
        memfd: id,
        name: fd.link.slice(PREFIX.length, -SUFFIX.length),
        flags: fd.fdinfo.flags & ~O_CLOEXEC,
        pos: fd.fdinfo.pos.toString(),
        mode: Number(fd.stat.mode & 0o7777n),
        seals,
        ...dumpContents(fd, ctx, `memfd:${id}`, 'the memfd'),
      };
    } catch (err) {
      if (err instanceof FerryError) throw err;
      throw new FerryError('EDUMP', `checkpoint: memfd fd ${fd.fd} of pid ${fd.pid} (${fd.link}): ${(err as Error).message}`, { cause: err });
    }
  },

  check(rec: MemfdRecord): void {
    const bad = (why: string): never => {
      throw new FerryError('EIMAGE', `image: memfd (file ${rec.id}) ${why}`);
    };
    if (typeof rec.memfd !== 'string' || !/^\d+:\d+:\d+$/.test(rec.memfd)) bad('has no valid identity');
    if (typeof rec.name !== 'string' || Buffer.byteLength(rec.name) > NAME_MAX || rec.name.includes('\0')) bad('has an invalid name');
    if (!Number.isSafeInteger(rec.flags) || !Number.isSafeInteger(rec.mode) || rec.mode < 0 || rec.mode > 0o7777 || !Number.isSafeInteger(rec.seals)
      || (rec.seals & ~ALL_SEALS) !== 0 || imagePos(rec.pos) === undefined) bad('has an invalid record');
    checkContents(rec, bad);
  },

  open(rec: MemfdRecord, ctx: OpenContext): number {
    const pos = BigInt(rec.pos);
    try {
      const origin = memfds.get(rec.memfd);
      if (origin !== undefined) return reopen(origin, rec.flags, pos);
      const fd = createMemfd(rec.name, rec.mode, rec.seals, (f) => writeContents(f, rec, ctx));
      let out = fd;
      try {
        if ((rec.flags & ~O_LARGEFILE) !== O_RDWR) out = reopen(fd, rec.flags, pos);
        else if (pos !== 0n) native().lseek(fd, pos, SEEK_SET);
      } finally {
        if (out !== fd) native().closeFd(fd);
      }
      memfds.set(rec.memfd, rec.id, out, ctx);
      return out;
    } catch (err) {
      if (err instanceof FerryError) throw err;
      throw new FerryError('EOPEN', `cannot restore memfd ${rec.name} (file ${rec.id}): ${(err as Error).message}`, { cause: err });
    }
  },
};

/**
 * What a memory area record (VmaRecord, src/dump/memory.ts) carries besides `file` when it
 * maps a memfd or a deleted file; restore/address-space.ts maps it from the file restored
 * here, or creates the memfd when no descriptor of the image holds it.
 */
export interface MappedSpecialFile {
  /** A memfd: identity (as MemfdRecord.memfd), name, size, mode and seals at dump. */
  memfd?: { id: string; name: string; size: number; mode: number; seals: number };
  /**
   * A deleted file (its mapped name removed): its identity st_dev:st_ino at dump, which a file
   * of the image restores: DeletedRecord.ghost (no name left), or LinkedRecord dev:ino (it
   * kept another name), held by a descriptor of the tree or by none (memory.ts unheldGhosts).
   */
  ghost?: string;
}
