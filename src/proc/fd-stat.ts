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

  constructor(f: BigInt64Array) {
    [this.dev, this.ino, this.mode, this.nlink, this.uid, this.gid, this.rdev, this.size, this.blksize, this.blocks,
      this.atimeNs, this.mtimeNs, this.ctimeNs] = f as unknown as bigint[] as [bigint, bigint, bigint, bigint, bigint,
      bigint, bigint, bigint, bigint, bigint, bigint, bigint, bigint];
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
