/**
 * The CRIU image files the container engines read or look for next to a checkpoint, written
 * by the runtime wrapper in CRIU's exact binary layout (docs/runtime.md):
 *
 * - `stats-dump` and `stats-restore` (in the work path): podman `--print-stats` and CRI-O read
 *   them. Layout: little-endian u32 IMG_SERVICE_MAGIC 0x55105940, u32 STATS_MAGIC 0x57093306,
 *   u32 size of the entry, then a protobuf stats_entry { dump_stats_entry dump = 1;
 *   restore_stats_entry restore = 2 }. dump_stats_entry: freezing_time 1, frozen_time 2,
 *   memdump_time 3, memwrite_time 4 (uint32, microseconds), pages_scanned 5,
 *   pages_skipped_parent 6, pages_written 7 (uint64), irmap_resolve 8, pages_lazy 9.
 *   restore_stats_entry: pages_compared 1, pages_skipped_cow 2 (uint64), forking_time 3,
 *   restore_time 4 (uint32, microseconds), pages_restored 5. The fields proto2 declares
 *   `required` are always written (a strict decoder refuses a message without them).
 * - `inventory.img` (in the image path): podman refuses to restore a checkpoint without it. An
 *   inventory has one magic only (u32 INVENTORY_MAGIC 0x58313116), then u32 size and a
 *   protobuf inventory_entry; ferry's holds img_version = 2 (CRIU's image version 1.1) and
 *   nothing else: it marks the directory as a complete checkpoint, the processes themselves
 *   are in ferry's image next to it.
 */
import { decodeMessage, ProtoWriter, uintField } from './protobuf.js';

export const IMG_SERVICE_MAGIC = 0x55105940;
export const STATS_MAGIC = 0x57093306;
export const INVENTORY_MAGIC = 0x58313116;
/** CRIU's CRTOOLS_IMAGES_V1_1. */
export const INVENTORY_IMG_VERSION = 2;

/** dump_stats_entry; times in microseconds. */
export interface DumpStats {
  freezingTime: number;
  frozenTime: number;
  memdumpTime: number;
  memwriteTime: number;
  pagesScanned: number;
  pagesSkippedParent: number;
  pagesWritten: number;
  pagesLazy: number;
}

/** restore_stats_entry; times in microseconds. */
export interface RestoreStats {
  pagesCompared: number;
  pagesSkippedCow: number;
  forkingTime: number;
  restoreTime: number;
  pagesRestored: number;
}

/** A uint32 microseconds field from milliseconds, clamped. */
export function micros(ms: number): number {
  return Math.min(0xffffffff, Math.max(0, Math.round(ms * 1000)));
}

function frame(magics: number[], entry: Buffer): Buffer {
  const head = Buffer.alloc(4 * (magics.length + 1));
  magics.forEach((m, i) => head.writeUInt32LE(m, 4 * i));
  head.writeUInt32LE(entry.length, 4 * magics.length);
  return Buffer.concat([head, entry]);
}

/** The stats-dump / stats-restore file holding `s`. */
export function encodeStats(s: { dump?: DumpStats; restore?: RestoreStats }): Buffer {
  const w = new ProtoWriter();
  if (s.dump) {
    const d = s.dump;
    w.bytes(1, new ProtoWriter()
      .uint(1, d.freezingTime).uint(2, d.frozenTime).uint(3, d.memdumpTime).uint(4, d.memwriteTime)
      .uint(5, d.pagesScanned).uint(6, d.pagesSkippedParent).uint(7, d.pagesWritten).uint(9, d.pagesLazy));
  }
  if (s.restore) {
    const r = s.restore;
    w.bytes(2, new ProtoWriter()
      .uint(1, r.pagesCompared).uint(2, r.pagesSkippedCow).uint(3, r.forkingTime).uint(4, r.restoreTime)
      .uint(5, r.pagesRestored));
  }
  return frame([IMG_SERVICE_MAGIC, STATS_MAGIC], w.finish());
}

/** Decodes a stats file (tests; a check of what was written). Throws on a wrong layout. */
export function decodeStats(buf: Buffer): { dump?: DumpStats; restore?: RestoreStats } {
  if (buf.length < 12) throw new Error(`stats file of ${buf.length} bytes: too short`);
  if (buf.readUInt32LE(0) !== IMG_SERVICE_MAGIC || buf.readUInt32LE(4) !== STATS_MAGIC) {
    throw new Error(`stats file magics ${buf.readUInt32LE(0).toString(16)} ${buf.readUInt32LE(4).toString(16)} are not CRIU's`);
  }
  const size = buf.readUInt32LE(8);
  if (size !== buf.length - 12) throw new Error(`stats file says ${size} bytes of entry, holds ${buf.length - 12}`);
  const f = decodeMessage(buf.subarray(12));
  const n = (m: ReturnType<typeof decodeMessage>, k: number): number => {
    const v = uintField(m, k);
    if (v === undefined) throw new Error(`stats entry lacks field ${k}`);
    return Number(v);
  };
  const out: { dump?: DumpStats; restore?: RestoreStats } = {};
  const d = f.get(1)?.at(-1);
  if (Buffer.isBuffer(d)) {
    const m = decodeMessage(d);
    out.dump = {
      freezingTime: n(m, 1), frozenTime: n(m, 2), memdumpTime: n(m, 3), memwriteTime: n(m, 4),
      pagesScanned: n(m, 5), pagesSkippedParent: n(m, 6), pagesWritten: n(m, 7), pagesLazy: n(m, 9),
    };
  }
  const r = f.get(2)?.at(-1);
  if (Buffer.isBuffer(r)) {
    const m = decodeMessage(r);
    out.restore = {
      pagesCompared: n(m, 1), pagesSkippedCow: n(m, 2), forkingTime: n(m, 3), restoreTime: n(m, 4), pagesRestored: n(m, 5),
    };
  }
  return out;
}

/** The inventory.img ferry writes: img_version 2 only. */
export function encodeInventory(): Buffer {
  return frame([INVENTORY_MAGIC], new ProtoWriter().uint(1, INVENTORY_IMG_VERSION).finish());
}

/** img_version of an inventory.img; throws on a wrong layout. */
export function decodeInventory(buf: Buffer): { imgVersion: number } {
  if (buf.length < 8 || buf.readUInt32LE(0) !== INVENTORY_MAGIC) throw new Error('not an inventory image (magic)');
  const size = buf.readUInt32LE(4);
  if (size !== buf.length - 8) throw new Error(`inventory says ${size} bytes of entry, holds ${buf.length - 8}`);
  const v = uintField(decodeMessage(buf.subarray(8)), 1);
  if (v === undefined) throw new Error('inventory entry lacks img_version');
  return { imgVersion: Number(v) };
}
