/**
 * The frames of pre-copy on the wire (docs/migration.md, "Protocol"): once the hello said
 * `precopy`, every data frame starts with a tag:
 *   0 RAW    image bytes, in order (the image exactly as the checkpoint wrote it, less the
 *            pages REF frames stand for);
 *   1 PAGES  u32 pid, u64 address, u32 count, then count pages: a round's copy of them;
 *   2 REF    u32 pid, u64 address, u32 count: "here come these pages, as you hold them".
 * The sender's side is precopy.ts and image-filter.ts, the receiver's page-store.ts.
 */
import { PAGE_SIZE } from '../arch/x86-64.js';
import { MAX_DATA_BYTES } from './channel.js';

export const TAG_RAW = 0, TAG_PAGES = 1, TAG_REF = 2;
/** tag, pid, address, count. */
export const HEAD = 1 + 4 + 8 + 4;
/** Pages in one PAGES frame (its payload within the channel's frame bound). */
export const FRAME_PAGES = Math.floor((MAX_DATA_BYTES - HEAD) / PAGE_SIZE);
/** Pages one REF may name. */
export const MAX_REF_PAGES = 1 << 20;
/** Highest user address on x86-64 (47 bits). */
export const USER_END = 0x800000000000n;

/** Writes a frame's head: tag, pid, address, page count (big-endian). */
export function writeHead(b: Buffer, tag: number, pid: number, addr: bigint, count: number): void {
  b.writeUInt8(tag, 0);
  b.writeUInt32BE(pid, 1);
  b.writeBigUInt64BE(addr, 5);
  b.writeUInt32BE(count, 13);
}
