/** stat(2) of a descriptor as native procFds reads it, shaped like Node's BigIntStats. */
import { constants, type BigIntStats } from 'node:fs';

/** The part of fs.BigIntStats the file engine reads (FdDesc.stat). */
export type FileStat = Pick<BigIntStats, 'dev' | 'ino' | 'mode' | 'nlink' | 'uid' | 'gid' | 'rdev' | 'size' | 'blksize'
  | 'blocks' | 'atimeNs' | 'mtimeNs' | 'ctimeNs' | 'isFile' | 'isDirectory' | 'isCharacterDevice' | 'isBlockDevice'
  | 'isFIFO' | 'isSocket' | 'isSymbolicLink'>;

/** A FileStat over the fields procFds returns (src/native/binding.ts: st_dev … ctime ns). */
export class FdStat implements FileStat {
  readonly dev: bigint;
  readonly ino: bigint;
  readonly mode: bigint;
  readonly nlink: bigint;
  readonly uid: bigint;
  readonly gid: bigint;
  readonly rdev: bigint;
  readonly size: bigint;
  readonly blksize: bigint;
  readonly blocks: bigint;
  readonly atimeNs: bigint;
  readonly mtimeNs: bigint;
  readonly ctimeNs: bigint;

  /** `f`: the fields from `at` on (one array may hold many descriptors' fields). */
  constructor(f: BigInt64Array, at = 0) {
    // Indexed, not destructured: an array destructuring runs the typed array's iterator, some
    // 2 µs a descriptor (a checkpoint reads every descriptor's twice).
    this.dev = f[at]!;
    this.ino = f[at + 1]!;
    this.mode = f[at + 2]!;
    this.nlink = f[at + 3]!;
    this.uid = f[at + 4]!;
    this.gid = f[at + 5]!;
    this.rdev = f[at + 6]!;
    this.size = f[at + 7]!;
    this.blksize = f[at + 8]!;
    this.blocks = f[at + 9]!;
    this.atimeNs = f[at + 10]!;
    this.mtimeNs = f[at + 11]!;
    this.ctimeNs = f[at + 12]!;
  }

  private is(type: number): boolean {
    return (Number(this.mode) & constants.S_IFMT) === type;
  }

  isFile(): boolean { return this.is(constants.S_IFREG); }
  isDirectory(): boolean { return this.is(constants.S_IFDIR); }
  isCharacterDevice(): boolean { return this.is(constants.S_IFCHR); }
  isBlockDevice(): boolean { return this.is(constants.S_IFBLK); }
  isFIFO(): boolean { return this.is(constants.S_IFIFO); }
  isSocket(): boolean { return this.is(constants.S_IFSOCK); }
  isSymbolicLink(): boolean { return this.is(constants.S_IFLNK); }
}
