/**
 * The lazy pages' bookkeeping (restore/lazy.ts LazyProcess): segments split at chunk
 * boundaries, and cut by the workload's own events (madvise DONTNEED, munmap: REMOVE, UNMAP;
 * mremap: REMAP) into pieces that stay the chunk's to serve.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { ChunkSource } from '../../src/image/chunks.js';
import type { VmaRecord } from '../../src/image/records.js';
import { LazyProcess } from '../../src/restore/lazy.js';

const PAGE = 4096n;
const START = 0x7f0000000000n;

/** A process with one anonymous area of 512 stored pages: two chunks of 1 MiB (256 pages). */
function process512(): LazyProcess {
  const v = { start: `0x${START.toString(16)}`, end: `0x${(START + 512n * PAGE).toString(16)}`, runs: [[0, 512]], pagesOffset: 0 } as unknown as VmaRecord;
  return new LazyProcess(1, 1, -1, [v], undefined as unknown as ChunkSource, 1 << 20);
}

describe('lazy pages: segments', () => {
  it('splits the stored pages at chunk boundaries', () => {
    const p = process512();
    assert.deepEqual(p.segments.map((s) => [s.chunk, s.pages]), [[0, 256], [1, 256]]);
    assert.equal(p.left, 512);
  });

  it('cuts a segment whose chunk was served while it waited for a retry: its pieces are the chunk\'s again', () => {
    const p = process512();
    // Chunk 0 served, its one segment left to a retry (UFFDIO_COPY said EAGAIN): the chunk's
    // list is gone (serveChunk), the segment not done.
    p.byChunk.delete(0);
    // The workload dropped pages 100-109 (REMOVE): they are cut out and forgotten.
    const inside = p.cut(START + 100n * PAGE, START + 110n * PAGE);
    assert.deepEqual(inside.map((s) => [s.addr, s.pages]), [[START + 100n * PAGE, 10]]);
    const pieces = p.byChunk.get(0)!;
    assert.deepEqual(pieces.map((s) => [s.addr - START, s.pages]), [[0n, 100], [100n * PAGE, 10], [110n * PAGE, 146]]);
    // The segment itself is replaced (a retry of it does nothing); the pieces around the cut
    // are found by a fault and served with their chunk.
    assert.equal(p.segments.filter((s) => !s.done && s.chunk === 0).length, 3);
    assert.equal(p.find(START + 5n * PAGE)?.pages, 100);
    assert.equal(p.find(START + 200n * PAGE)?.pages, 146);
  });
});
