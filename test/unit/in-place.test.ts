/**
 * ChunkSource.keepInPlace/placed (src/image/chunks.ts): the pages a migration staged in the
 * root's memory are verified by the digests taken from the bytes staged, not read, and only
 * where the image names them at the address the caller writes them to.
 */
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { chunkDigest, ChunkSource, pageDigests, type ChunkedLocation, type ImagePiece } from '../../src/image/chunks.js';

const PAGE = 4096;
const CHUNK_PAGES = 16;
const CHUNKS = 3;
const PAGES = CHUNK_PAGES * CHUNKS;
/** Where the entry's pages go (an area of the caller's). */
const AREA = 0x7f0000000000;

const dir = mkdtempSync(join(tmpdir(), 'ferry-in-place-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/**
 * An entry of PAGES pages, in a file as a page store holds them, its chunks' digests of its
 * bytes, but for the pages in `tampered`, changed in the file since. Each page is a piece;
 * those in `known` carry their digests (taken before any change); `inPlace` names the pages
 * in `staged` at `at(page)`.
 */
function entry(staged: ReadonlySet<number>, known: ReadonlySet<number>, at: (p: number) => number = (p) => AREA + p * PAGE,
  tampered: ReadonlySet<number> = new Set()): {
  loc: ChunkedLocation; body: Buffer; close: () => void;
} {
  const body = Buffer.alloc(PAGES * PAGE);
  for (let i = 0; i < body.length; i += 8) body.writeUInt32LE((i * 2654435761) >>> 0, i);
  const onDisk = Buffer.from(body);
  for (const p of tampered) onDisk.fill(0xee, p * PAGE, (p + 1) * PAGE);
  const path = join(dir, `e-${Math.random().toString(36).slice(2)}`);
  const fd = openSync(path, 'w+');
  writeSync(fd, onDisk, 0, onDisk.length, 0);
  const sums = pageDigests(body);
  const digests = Array.from({ length: CHUNKS }, (_, c) => chunkDigest(body.subarray(c * CHUNK_PAGES * PAGE, (c + 1) * CHUNK_PAGES * PAGE), true).toString('hex'));
  const pieces = (pos: number, len: number): ImagePiece[] => {
    const out: ImagePiece[] = [];
    for (let off = pos; off < pos + len; off += PAGE) {
      const p = off / PAGE;
      out.push({ fd, at: off, len: PAGE, ...(known.has(p) ? { digests: sums.subarray(p * 32, p * 32 + 32) } : {}) });
    }
    return out;
  };
  // As a page store names them: pages side by side in the image and in memory as one range.
  const inPlace = (pos: number, len: number): Array<[number, number, bigint]> => {
    const out: Array<[number, number, bigint]> = [];
    for (const p of [...staged].sort((a, b) => a - b).filter((q) => q * PAGE >= pos && q * PAGE < pos + len)) {
      const last = out.at(-1);
      if (last !== undefined && last[0] + last[1] === p * PAGE && last[2] + BigInt(last[1]) === BigInt(at(p))) last[1] += PAGE;
      else out.push([p * PAGE, PAGE, BigInt(at(p))]);
    }
    return out;
  };
  const loc: ChunkedLocation = {
    fd, offset: 0, size: body.length, chunkSize: CHUNK_PAGES * PAGE, digests, paged: true, pieces, intact: () => true, inPlace,
  };
  return { loc, body, close: () => { closeSync(fd); rmSync(path, { force: true }); } };
}

/**
 * A location's stagedChunks as a page store answers it, from its `inPlace` and the digest
 * `taken` of the chunk in place at an address (or none): each chunk wholly in one of its
 * ranges.
 */
function stagedFrom(loc: ChunkedLocation, taken: (addr: number, len: number) => Buffer | undefined): NonNullable<ChunkedLocation['stagedChunks']> {
  return (pos, size, chunkSize) => {
    const out: Array<[number, number, Buffer]> = [];
    for (let c = 0; (c + 1) * chunkSize <= size; c++) {
      const places = loc.inPlace!(pos + c * chunkSize, chunkSize);
      if (places.length !== 1 || places[0]![0] !== pos + c * chunkSize || places[0]![1] !== chunkSize) continue;
      const sum = taken(Number(places[0]![2]), chunkSize);
      if (sum !== undefined) out.push([c, Number(places[0]![2]), sum]);
    }
    return out;
  };
}

/** Walks the entry as restore's writePages does: pages left in place, the others viewed. */
function walk(src: ChunkSource, body: Buffer): { placed: number[]; viewed: number; calls: number } {
  const placed: number[] = [];
  let viewed = 0;
  let calls = 0;
  for (let pos = 0; pos < body.length;) {
    const n = src.placed(pos, BigInt(AREA + pos), body.length - pos);
    calls++;
    if (n > 0) {
      for (let k = 0; k < n; k += PAGE) placed.push((pos + k) / PAGE);
      pos += n;
      continue;
    }
    const v = src.view(pos, -n);
    assert.ok(v.equals(body.subarray(pos, pos + v.length)), `the bytes at ${pos} as the image has them`);
    viewed += v.length;
    pos += v.length;
  }
  return { placed, viewed, calls };
}

describe('pages in place (a migration\'s staged memory)', () => {
  it('leaves unread the staged pages whose digests are known, verifying their chunks with those digests', () => {
    const staged = new Set([0, 1, 2, 5, 16, 17, 30, 31, 32]);
    const known = new Set([...staged, 3, 40]);
    const e = entry(staged, known);
    try {
      const src = new ChunkSource(e.loc, undefined, 'x.tar', 'pages', {});
      src.keepInPlace([[BigInt(AREA), BigInt(AREA + PAGES * PAGE)]]);
      const { placed, viewed } = walk(src, e.body);
      assert.deepEqual(placed, [...staged].sort((a, b) => a - b));
      assert.equal(viewed, (PAGES - staged.size) * PAGE);
      assert.equal(src.placedBytes, staged.size * PAGE);
    } finally {
      e.close();
    }
  });

  it('reads a staged page named at another address, one whose digest is not known, or one outside the kept areas', () => {
    const all: Array<readonly [bigint, bigint]> = [[BigInt(AREA), BigInt(AREA + PAGES * PAGE)]];
    const cases: Array<[string, ReturnType<typeof entry>, Array<readonly [bigint, bigint]>]> = [
      // The image names the copy of another page there: what it names is read and written,
      // and its chunk is read whole (page 5 with it).
      ['another address', entry(new Set([4, 5]), new Set([4, 5]), (p) => AREA + (p === 4 ? 9 : p) * PAGE), all],
      ['no digest', entry(new Set([4, 5]), new Set([5])), all],
      ['outside', entry(new Set([4, 5]), new Set([4, 5])), [[BigInt(AREA + 5 * PAGE), BigInt(AREA + PAGES * PAGE)]]],
      ['not asked', entry(new Set([4, 5]), new Set([4, 5])), []],
    ];
    for (const [what, e, areas] of cases) {
      try {
        const src = new ChunkSource(e.loc, undefined, 'x.tar', 'pages', {});
        src.keepInPlace(areas);
        const { placed } = walk(src, e.body);
        assert.deepEqual(placed, what === 'not asked' || what === 'another address' ? [] : [5], what);
      } finally {
        e.close();
      }
    }
  });

  it('takes a chunk wholly in place whose digest taken before is the manifest\'s by that alone; any other is verified from its pages', () => {
    const whole = [[BigInt(AREA), BigInt(AREA + PAGES * PAGE)]] as const;
    // Chunk 0 wholly staged, chunk 1 but for page 20, chunk 2 wholly staged too.
    const staged = new Set([...Array(PAGES).keys()].filter((p) => p !== 20));
    const e = entry(staged, staged);
    try {
      const truth = (addr: number, len: number): Buffer => chunkDigest(e.body.subarray(addr - AREA, addr - AREA + len), true);
      // Chunk 2's taken digest is of other bytes (staged since, say): it is verified from its
      // pages' digests instead, and its pages, which are right, are left in place still.
      const taken = (addr: number, len: number): Buffer | undefined => (addr === AREA + 2 * CHUNK_PAGES * PAGE ? Buffer.alloc(32, 7) : truth(addr, len));
      const asked: number[] = [];
      const src = new ChunkSource({ ...e.loc, stagedChunks: stagedFrom(e.loc, taken), pieces: (pos, len) => { asked.push(pos / (CHUNK_PAGES * PAGE)); return e.loc.pieces!(pos, len); } },
        undefined, 'x.tar', 'pages', {});
      src.keepInPlace(whole);
      const { placed, viewed } = walk(src, e.body);
      assert.deepEqual(placed, [...staged]);
      assert.equal(viewed, PAGE);
      assert.equal(src.placedChunks, 1, 'chunk 0 alone by its digest taken before');
      assert.deepEqual(asked, [1, 2], 'the pieces of chunk 0 were never looked at');
    } finally {
      e.close();
    }
    // Staged elsewhere than the caller writes the pages (the image names another address): its
    // digest taken matches, yet each chunk is read and written after all, and not counted.
    const SHIFT = 1 << 30;
    const g = entry(staged, staged, (p) => AREA + SHIFT + p * PAGE);
    try {
      const src = new ChunkSource({ ...g.loc, stagedChunks: stagedFrom(g.loc, (addr, len) => chunkDigest(g.body.subarray(addr - AREA - SHIFT, addr - AREA - SHIFT + len), true)) },
        undefined, 'x.tar', 'pages', {});
      src.keepInPlace([[BigInt(AREA), BigInt(AREA + SHIFT + PAGES * PAGE)]]);
      assert.deepEqual(walk(src, g.body).placed, []);
      assert.equal(src.placedChunks, 0);
    } finally {
      g.close();
    }
    // Kept areas that leave out a page of chunk 0: the digest taken is not enough there.
    const f = entry(staged, staged);
    try {
      const src = new ChunkSource({ ...f.loc, stagedChunks: stagedFrom(f.loc, (addr, len) => chunkDigest(f.body.subarray(addr - AREA, addr - AREA + len), true)) }, undefined, 'x.tar', 'pages', {});
      src.keepInPlace([[BigInt(AREA), BigInt(AREA + 3 * PAGE)], [BigInt(AREA + 4 * PAGE), BigInt(AREA + PAGES * PAGE)]]);
      const { placed } = walk(src, f.body);
      assert.deepEqual(placed, [...staged].filter((p) => p !== 3));
      assert.equal(src.placedChunks, 1, 'chunk 2 alone');
    } finally {
      f.close();
    }
  });

  it('leaves chunks wholly in place one after the other in one answer, up to the first that is not, and reads one asked for after all', () => {
    const whole = [[BigInt(AREA), BigInt(AREA + PAGES * PAGE)]] as const;
    const all = new Set([...Array(PAGES).keys()]);
    const e = entry(all, all);
    try {
      const taken = (addr: number, len: number): Buffer => chunkDigest(e.body.subarray(addr - AREA, addr - AREA + len), true);
      let read = 0;
      const src = new ChunkSource({ ...e.loc, stagedChunks: stagedFrom(e.loc, taken), pieces: (pos, len) => { read++; return e.loc.pieces!(pos, len); } },
        undefined, 'x.tar', 'pages', {});
      src.keepInPlace(whole);
      const { placed, viewed, calls } = walk(src, e.body);
      assert.deepEqual(placed, [...all]);
      assert.equal(viewed, 0);
      assert.equal(read, 0, 'no chunk read');
      assert.equal(calls, 1, 'the three chunks in one answer');
      assert.equal(src.placedChunks, CHUNKS);
      // No further than asked, nor than where the caller writes them.
      assert.equal(src.placed(0, BigInt(AREA), 2 * CHUNK_PAGES * PAGE - 1), CHUNK_PAGES * PAGE);
      assert.ok(src.placed(CHUNK_PAGES * PAGE, BigInt(AREA), CHUNK_PAGES * PAGE) < 0, 'chunk 1 is not in place at chunk 0\'s address: read after all');
      assert.equal(src.placedChunks, CHUNKS - 1);
    } finally {
      e.close();
    }
    // Chunk 1 with a page not staged: chunk 0 is one answer, chunk 2 another; a chunk asked
    // for after it was left in place is read and verified from its pages after all.
    const staged = new Set([...all].filter((p) => p !== CHUNK_PAGES + 3));
    const g = entry(staged, staged);
    try {
      const taken = (addr: number, len: number): Buffer => chunkDigest(g.body.subarray(addr - AREA, addr - AREA + len), true);
      const src = new ChunkSource({ ...g.loc, stagedChunks: stagedFrom(g.loc, taken) }, undefined, 'x.tar', 'pages', {});
      src.keepInPlace(whole);
      const { placed, viewed } = walk(src, g.body);
      assert.deepEqual(placed, [...staged]);
      assert.equal(viewed, PAGE);
      assert.equal(src.placedChunks, 2);
      assert.ok(src.view(2 * CHUNK_PAGES * PAGE, PAGE).equals(g.body.subarray(2 * CHUNK_PAGES * PAGE, (2 * CHUNK_PAGES + 1) * PAGE)));
      assert.equal(src.placedChunks, 1, 'chunk 2 read after all: no longer counted');
    } finally {
      g.close();
    }
  });

  it('reads the whole chunk when the file a read page\'s digest came from changed since (intact false): staged pages too, and a changed page is refused', () => {
    const whole = [[BigInt(AREA), BigInt(AREA + PAGES * PAGE)]] as const;
    // Page 2's digest is known and it is read: the file must be as it was, else the chunk is
    // read and hashed whole, page 1 with it (not left in place).
    const same = entry(new Set([1]), new Set([1, 2]));
    try {
      const src = new ChunkSource({ ...same.loc, intact: () => false }, undefined, 'x.tar', 'pages', {});
      src.keepInPlace(whole);
      assert.deepEqual(walk(src, same.body).placed, []);
    } finally {
      same.close();
    }
    const changed = entry(new Set([1]), new Set([1, 2]), undefined, new Set([2]));
    try {
      const src = new ChunkSource({ ...changed.loc, intact: () => false }, undefined, 'x.tar', 'pages', {});
      src.keepInPlace(whole);
      assert.throws(() => walk(src, changed.body), /is corrupt: entry pages chunk 0 has sha256/);
    } finally {
      changed.close();
    }
  });
});
