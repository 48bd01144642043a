/**
 * The receiver's side of pre-copy (src/migrate/precopy.ts, PreCopyReceiver): tagged frames
 * from an authenticated but untrusted peer. Pages go into its store (the latest copy wins),
 * references put held pages into the image in order, and an edited stream can neither make
 * it keep pages outside user memory, nor name pages it never sent, nor send pages once the
 * image has begun: each is a one-line protocol error.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { FerryError } from '../../src/errors.js';
import { chunkStarts, FRAME_PAGES, HeldPagesOf, ImageFilter, PreCopyReceiver, TAG_PAGES, TAG_RAW, TAG_REF } from '../../src/migrate/precopy.js';
import type { VmaRecord } from '../../src/image/records.js';
import { tarHeader } from '../../src/image/tar-out.js';

const dirs: string[] = [];
after(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });

function receiver(): PreCopyReceiver {
  const d = mkdtempSync(join(tmpdir(), 'ferry-precopy-unit-'));
  dirs.push(d);
  return new PreCopyReceiver(d, 'the sender 10.0.0.1:5000');
}

function frame(tag: number, pid: number, addr: bigint, count: number, data?: Buffer): Buffer {
  const h = Buffer.alloc(17);
  h.writeUInt8(tag, 0);
  h.writeUInt32BE(pid, 1);
  h.writeBigUInt64BE(addr, 5);
  h.writeUInt32BE(count, 13);
  return data ? Buffer.concat([h, data]) : h;
}

/** A spool of its own, written as the receiver writes its image: in order, REF holes skipped. */
function spool(): { fd: number; write: (b: Buffer) => void; skip: (n: number) => void } {
  const d = mkdtempSync(join(tmpdir(), 'ferry-precopy-unit-'));
  dirs.push(d);
  const fd = openSync(join(d, 'image.tar'), 'w+');
  let at = 0;
  return { fd, write: (b) => { writeSync(fd, b, 0, b.length, at); at += b.length; }, skip: (n) => { at += n; } };
}

const page = (byte: number, n = 1): Buffer => Buffer.alloc(4096 * n, byte);
const raw = (b: Buffer): Buffer => Buffer.concat([Buffer.from([TAG_RAW]), b]);

function protocolError(fn: () => unknown, message: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof FerryError);
    assert.equal(err.code, 'EPROTO');
    assert.ok(!err.message.includes('\n'));
    assert.match(err.message, message);
    return true;
  });
}

describe('pre-copy frames on the receiver', { timeout: 30_000 }, () => {
  it('rebuilds the image: RAW as is, REF from the latest copy of each page', () => {
    const r = receiver();
    const out: Buffer[] = [];
    const write = (b: Buffer): void => { out.push(Buffer.from(b)); };
    assert.equal(r.handle(frame(TAG_PAGES, 42, 0x10000n, 3, Buffer.concat([page(1), page(2), page(3)])), write), 0);
    assert.equal(r.handle(frame(TAG_PAGES, 42, 0x11000n, 1, page(9)), write), 0); // a later round: the latest wins
    assert.equal(r.handle(raw(Buffer.from('head')), write), 4);
    assert.equal(r.handle(frame(TAG_REF, 42, 0x10000n, 3), write), 3 * 4096);
    assert.equal(r.handle(raw(Buffer.from('tail')), write), 4);
    const all = Buffer.concat(out);
    assert.equal(all.length, 8 + 3 * 4096);
    assert.equal(all.subarray(0, 4).toString(), 'head');
    assert.deepEqual(all.subarray(4, 4 + 3 * 4096), Buffer.concat([page(1), page(9), page(3)]));
    assert.equal(all.subarray(4 + 3 * 4096).toString(), 'tail');
    assert.equal(r.pages, 4);
    assert.equal(r.refBytes, 3 * 4096);
    r.close();
    r.close(); // idempotent
  });

  it('with skip, leaves REF pages as holes and reads them back from the store (the overlay)', () => {
    const r = receiver();
    const { fd, write, skip } = spool();
    r.handle(frame(TAG_PAGES, 42, 0x10000n, 2, Buffer.concat([page(1), page(2)])), write, skip);
    r.handle(frame(TAG_PAGES, 42, 0x20000n, 1, page(5)), write, skip);
    assert.equal(r.handle(raw(Buffer.from('head')), write, skip), 4);
    assert.equal(r.handle(frame(TAG_REF, 42, 0x10000n, 2), write, skip), 2 * 4096);
    r.handle(raw(Buffer.from('mid')), write, skip);
    r.handle(frame(TAG_REF, 42, 0x20000n, 1), write, skip);
    r.handle(raw(Buffer.from('tail')), write, skip);
    const o = r.overlay();
    o.adopt();
    r.close(); // the store's path goes; the image reads through the adopted descriptor
    const whole = Buffer.concat([Buffer.from('head'), page(1), page(2), Buffer.from('mid'), page(5), Buffer.from('tail')]);
    const got = Buffer.alloc(whole.length);
    assert.equal(o.read(fd, got, 0, got.length, 0), whole.length);
    assert.deepEqual(got, whole);
    // Reads that start and end inside runs and gaps.
    for (const [pos, len] of [[2, 10], [4096, 4096], [4 + 4000, 200], [4 + 8192, 3 + 100], [whole.length - 5, 5]] as const) {
      const part = Buffer.alloc(len);
      assert.equal(o.read(fd, part, 0, len, pos), len);
      assert.deepEqual(part, whole.subarray(pos, pos + len), `at ${pos}, ${len}`);
    }
    // The same bytes in pieces (what the loader's lanes read): none empty, the store's in
    // whole runs where they can be, no more than the bound says.
    for (const [pos, len] of [[0, whole.length], [2, 10], [4096, 4096], [4 + 4000, 200], [4 + 8192, 3 + 100], [whole.length - 5, 5]] as const) {
      const pieces = o.pieces!(fd, pos, len);
      assert.ok(pieces.every((p) => p.len > 0) && pieces.length <= 2 * Math.ceil(len / 4096) + 3, `at ${pos}, ${len}`);
      const part = Buffer.concat(pieces.map((p) => {
        const b = Buffer.alloc(p.len);
        assert.equal(readSync(p.fd, b, 0, p.len, p.at), p.len);
        return b;
      }));
      assert.deepEqual(part, whole.subarray(pos, pos + len), `at ${pos}, ${len}`);
    }
    assert.deepEqual(o.pieces!(fd, 0, whole.length).map((p) => [p.fd === fd, p.len]), [[true, 4], [false, 8192], [true, 3], [false, 4096], [true, 4]]);
    o.close();
    closeSync(fd);
  });

  it('references across the store index\'s blocks: one run per stretch of slots that follow each other', () => {
    const r = receiver();
    const { fd, write, skip } = spool();
    // 200 pages from page 60 (blocks of 64 pages: the run crosses four), each its own byte;
    // then a later round: page 100 again (its slot kept), and page 10 (a new slot, out of order).
    const base = 60n * 4096n;
    const pages = Array.from({ length: 200 }, (_, i) => page(i & 0xff));
    r.handle(frame(TAG_PAGES, 7, base, 200, Buffer.concat(pages)), write, skip);
    r.handle(frame(TAG_PAGES, 7, base + 40n * 4096n, 1, page(0xee)), write, skip);
    r.handle(frame(TAG_PAGES, 7, 10n * 4096n, 1, page(0xdd)), write, skip);
    r.handle(raw(Buffer.from('h')), write, skip);
    // A page never sent, inside a block the index has and in one it has not (nothing is kept).
    protocolError(() => r.handle(frame(TAG_REF, 7, 59n * 4096n, 1), write, skip), /page 0x3b000 of pid 7, which it never sent/);
    protocolError(() => r.handle(frame(TAG_REF, 7, 5000n * 4096n, 1), write, skip), /page 0x1388000 of pid 7, which it never sent/);
    assert.equal(r.handle(frame(TAG_REF, 7, base, 200), write, skip), 200 * 4096);
    assert.equal(r.handle(frame(TAG_REF, 7, 10n * 4096n, 1), write, skip), 4096);
    const o = r.overlay();
    o.adopt();
    r.close();
    pages[40] = page(0xee);
    const whole = Buffer.concat([Buffer.from('h'), ...pages, page(0xdd)]);
    const got = Buffer.alloc(whole.length);
    assert.equal(o.read(fd, got, 0, got.length, 0), whole.length);
    assert.ok(got.equals(whole), 'every page from its slot, the latest copy of page 100 too');
    // The 200 pages are one run of the store (slots 0-199), page 10 another (slot 200).
    assert.deepEqual(o.pieces!(fd, 0, whole.length).map((p) => [p.fd === fd, p.len]), [[true, 1], [false, 201 * 4096]]);
    o.close();
    closeSync(fd);
  });

  it('references over blocks marked whole runs (markRuns): stepped over a block at a time, the same runs as page by page', () => {
    for (const marked of [false, true]) {
      const r = receiver();
      const { fd, write, skip } = spool();
      // Blocks of 64 pages. Pages 0-127 take slots 0-127, pages 256-383 slots 128-255, pages
      // 128-255 slots 256-383: three stretches of slots, each of whole blocks in order.
      const bytes = new Map<number, number>();
      const send = (first: number, n: number): void => {
        const data = Buffer.concat(Array.from({ length: n }, (_, i) => page((first + i) % 251)));
        for (let i = 0; i < n; i++) bytes.set(first + i, (first + i) % 251);
        r.handle(frame(TAG_PAGES, 7, BigInt(first) * 4096n, n, data), write, skip);
      };
      send(0, 128);
      send(256, 128);
      send(128, 128);
      send(70, 1); // sent again: its slot kept, its block still one stretch
      bytes.set(70, 70 % 251);
      send(450, 1); // a block of one page: no stretch
      send(512, 64); // a whole block, not referenced below
      if (marked) {
        assert.equal(r.markRuns(), 7, 'blocks 0-5 and 8 marked, not 7');
        assert.equal(r.markRuns(), 0, 'marked once');
      }
      r.handle(raw(Buffer.from('h')), write, skip);
      // From page 10, into the middle of the last block: 118 + 128 + 124 pages.
      assert.equal(r.handle(frame(TAG_REF, 7, 10n * 4096n, 370), write, skip), 370 * 4096);
      const o = r.overlay();
      o.adopt();
      r.close();
      const whole = Buffer.concat([Buffer.from('h'), ...Array.from({ length: 370 }, (_, i) => page(bytes.get(10 + i)!))]);
      const got = Buffer.alloc(whole.length);
      assert.equal(o.read(fd, got, 0, got.length, 0), whole.length);
      assert.ok(got.equals(whole), `every page from its slot (${marked ? 'marked' : 'not marked'})`);
      assert.deepEqual(o.pieces!(fd, 0, whole.length).map((p) => [p.fd === fd, p.len]),
        [[true, 1], [false, 118 * 4096], [false, 128 * 4096], [false, 124 * 4096]], marked ? 'marked' : 'not marked');
      o.close();
      closeSync(fd);
    }
  });

  it('held pages with their digests: runs of held and not held pages, across blocks', () => {
    const h = new HeldPagesOf();
    const sums = Buffer.alloc(32 * 1024);
    for (let i = 0; i < 1024; i++) sums.writeUInt32BE(i, i * 32);
    for (let p = 500; p < 1500; p++) h.set(p, sums, (p - 500) * 32);
    h.delete(1000);
    assert.equal(h.size, 999);
    assert.equal(h.run(400, 1000, false), 100);
    assert.equal(h.run(500, 10_000), 500);
    const out = Buffer.alloc(500 * 32);
    assert.equal(h.run(500, 500, true, out), 500);
    assert.deepEqual(out, sums.subarray(0, 500 * 32));
    assert.equal(h.run(1000, 5), 0);
    assert.equal(h.run(1000, 5, false), 1);
    assert.equal(h.run(1001, 10_000), 499);
    assert.deepEqual([...h.keys()].length, 999);
  });

  it('deferred writes (ferry receive): on the pool in order, the latest copy wins, digests of what was written; image frames wait for them', async () => {
    const r = receiver();
    r.deferWrites();
    const { fd, write, skip } = spool();
    assert.equal(r.handle(frame(TAG_PAGES, 42, 0x10000n, 3, Buffer.concat([page(1), page(2), page(3)])), write, skip), 0);
    // A later round's copy of the second page, queued behind the write of the first.
    assert.equal(r.handle(frame(TAG_PAGES, 42, 0x11000n, 1, page(9)), write, skip), 0);
    const head = raw(Buffer.from('head'));
    assert.equal(r.ready(head), false);
    assert.equal(r.ready(frame(TAG_PAGES, 42, 0x20000n, 1, page(4))), true);
    assert.throws(() => r.handle(head, write, skip), /before the rounds' writes settled/);
    await r.settled();
    assert.equal(r.ready(head), true);
    assert.equal(r.backlog(), undefined);
    r.handle(head, write, skip);
    assert.equal(r.handle(frame(TAG_REF, 42, 0x10000n, 3), write, skip), 3 * 4096);
    const o = r.overlay();
    const want = [page(1), page(9), page(3)];
    const got = Buffer.alloc(3 * 4096);
    assert.equal(o.read(fd, got, 0, got.length, 4), got.length);
    assert.deepEqual(got, Buffer.concat(want));
    const [piece, ...more] = o.pieces!(fd, 4, 3 * 4096);
    assert.equal(more.length, 0);
    assert.ok(piece!.digests !== undefined, 'the store\'s pieces carry their digests');
    assert.deepEqual(Buffer.from(piece!.digests!), Buffer.concat(want.map((b) => createHash('sha256').update(b).digest())));
    assert.equal(o.intact!(), true);
    r.close();
    closeSync(fd);
  });

  it('deferred writes of one page run after run: the last round\'s bytes and digests are what the store holds', async () => {
    const r = receiver();
    r.deferWrites();
    const { fd, write, skip } = spool();
    // Rounds of whole 1 MiB frames over the same pages, each its own byte, queued together: a
    // write overtaking an earlier one (the pool has several threads) would leave an older byte.
    const rounds = 12;
    for (let g = 1; g <= rounds; g++) r.handle(frame(TAG_PAGES, 7, 0x400000n, FRAME_PAGES, page(g, FRAME_PAGES)), write, skip);
    await r.settled();
    r.handle(raw(Buffer.from('h')), write, skip);
    r.handle(frame(TAG_REF, 7, 0x400000n, FRAME_PAGES), write, skip);
    const o = r.overlay();
    const got = Buffer.alloc(FRAME_PAGES * 4096);
    assert.equal(o.read(fd, got, 0, got.length, 1), got.length);
    assert.ok(got.equals(page(rounds, FRAME_PAGES)), 'every page holds the last round\'s byte');
    const sum = createHash('sha256').update(page(rounds)).digest();
    const digests = o.pieces!(fd, 1, got.length).map((p) => Buffer.from(p.digests!));
    assert.ok(Buffer.concat(digests).equals(Buffer.concat(Array.from({ length: FRAME_PAGES }, () => sum))), 'the digests are of those bytes');
    r.close();
    closeSync(fd);
  });

  it('a deferred write that fails: one line, from settled(), backlog() and the next frame; the store closes after it', async (t) => {
    if (process.getuid?.() !== 0) return t.skip('needs root (a tmpfs of its own)');
    const d = mkdtempSync(join(tmpdir(), 'ferry-precopy-unit-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'ferry-unit', d]);
    try {
      const r = new PreCopyReceiver(d, 'the sender 10.0.0.1:5000');
      r.deferWrites();
      // The file system fills after the store sized itself: the write, not the bound, fails.
      try { writeFileSync(join(d, 'fill'), Buffer.alloc(64 << 10)); } catch { /* full: what it is for */ }
      r.handle(frame(TAG_PAGES, 42, 0x10000n, 4, page(1, 4)), () => {});
      const failed = (err: unknown): boolean => {
        assert.ok(err instanceof FerryError);
        assert.equal(err.code, 'ENOSPC');
        assert.ok(!err.message.includes('\n'));
        assert.match(err.message, /^cannot write the pre-copy store \/\S+\/precopy\.pages: .*ENOSPC.*\(free space in image\.work_dir, or migrate with --no-pre-copy\)$/);
        return true;
      };
      await assert.rejects(r.settled(), failed);
      await assert.rejects(r.backlog()!, failed);
      assert.throws(() => r.handle(frame(TAG_PAGES, 42, 0x20000n, 1, page(2)), () => {}), failed);
      r.close();
    } finally {
      execFileSync('umount', [d]);
      rmSync(d, { recursive: true, force: true });
    }
  });

  it('chunk digests taken before the freeze: only of chunks all held, each dropped once a page of it changes', () => {
    const h = new HeldPagesOf();
    const sum = (p: number, gen = 0): Buffer => createHash('sha256').update(`page ${p} ${gen}`).digest();
    // Pages 1000-2023 held but page 1700; chunks of 256 pages from 1000 on (they span blocks).
    for (let p = 1000; p < 2024; p++) if (p !== 1700) h.set(p, sum(p), 0);
    const starts = [1000, 1256, 1512, 1768, 2000];
    h.prepareChunks(starts, 256);
    const want = (from: number, gen = new Map<number, number>()): string => createHash('sha256')
      .update(Buffer.concat(Array.from({ length: 256 }, (_, i) => sum(from + i, gen.get(from + i) ?? 0)))).digest('hex');
    assert.deepEqual(h.chunkDigest(1000, 256), want(1000));
    assert.deepEqual(h.chunkDigest(1256, 256), want(1256));
    assert.equal(h.chunkDigest(1512, 256), undefined, 'page 1700 is not held');
    assert.deepEqual(h.chunkDigest(1768, 256), want(1768));
    assert.equal(h.chunkDigest(2000, 256), undefined, 'pages from 2024 on are not held');
    assert.equal(h.chunkDigest(1000, 255), undefined, 'another chunk than the one taken');
    assert.equal(h.chunkDigest(1001, 256), undefined);
    // Held anew (a round sent it again), or let go (a scan found it written): its chunk only.
    h.set(1300, sum(1300, 1), 0);
    assert.equal(h.chunkDigest(1256, 256), undefined);
    assert.deepEqual(h.chunkDigest(1000, 256), want(1000));
    h.delete(2023);
    assert.equal(h.chunkDigest(1768, 256), undefined);
    assert.deepEqual(h.chunkDigest(1000, 256), want(1000));
    h.delete(1000);
    assert.equal(h.chunkDigest(1000, 256), undefined);
    // Taken again: the held digests as they are now.
    h.set(1000, sum(1000, 2), 0);
    h.prepareChunks([1000, 1256], 256);
    assert.deepEqual(h.chunkDigest(1000, 256), want(1000, new Map([[1000, 2]])));
    assert.deepEqual(h.chunkDigest(1256, 256), want(1256, new Map([[1300, 1]])));
    assert.equal(h.chunkDigest(1768, 256), undefined, 'a new set forgets the old');
    // Overlapping chunks are not taken twice (a change must find the one it is in).
    h.prepareChunks([1000, 1100], 256);
    assert.equal(h.chunkDigest(1100, 256), undefined);
  });

  it('chunk digests taken again after the top-ups: only those dropped since, whose pages are all held now', () => {
    const h = new HeldPagesOf();
    const sum = (p: number, gen = 0): Buffer => createHash('sha256').update(`page ${p} ${gen}`).digest();
    const want = (from: number, gen = new Map<number, number>()): string => createHash('sha256')
      .update(Buffer.concat(Array.from({ length: 256 }, (_, i) => sum(from + i, gen.get(from + i) ?? 0)))).digest('hex');
    for (let p = 1000; p < 2024; p++) h.set(p, sum(p), 0);
    assert.equal(h.refreshChunks(), 0, 'nothing asked for yet');
    h.prepareChunks([1000, 1256, 1512, 1768], 256);
    assert.equal(h.refreshChunks(), 0, 'every chunk still true');
    // A top-up sends page 1300 again (held anew), a scan finds page 1600 written (let go).
    h.set(1300, sum(1300, 1), 0);
    h.delete(1600);
    assert.equal(h.chunkDigest(1256, 256), undefined);
    assert.equal(h.chunkDigest(1512, 256), undefined);
    assert.equal(h.refreshChunks(), 1, 'the chunk of page 1300 only: page 1600 is not held');
    assert.deepEqual(h.chunkDigest(1256, 256), want(1256, new Map([[1300, 1]])));
    assert.equal(h.chunkDigest(1512, 256), undefined);
    assert.deepEqual(h.chunkDigest(1000, 256), want(1000), 'kept as it was');
    // Taken again, it is dropped again by a change, as one prepareChunks took.
    h.set(1400, sum(1400, 1), 0);
    assert.equal(h.chunkDigest(1256, 256), undefined);
    h.set(1600, sum(1600, 1), 0);
    assert.equal(h.refreshChunks(), 2);
    assert.deepEqual(h.chunkDigest(1256, 256), want(1256, new Map([[1300, 1], [1400, 1]])));
    assert.deepEqual(h.chunkDigest(1512, 256), want(1512, new Map([[1600, 1]])));
    assert.deepEqual(h.chunkDigest(1768, 256), want(1768));
  });

  it('where the chunks of a pages entry fall: the whole ones within one run of stored pages', () => {
    const vma = (start: number, runs: Array<[number, number]>): VmaRecord => ({ start: `0x${(start * 4096).toString(16)}`, runs } as unknown as VmaRecord);
    // 300 pages from page 0x100 (one chunk, then 44 pages of the next), 10 more at 0x400 (the
    // entry's chunk 1 spans three runs: not named), then 600 in a second area: the entry's
    // chunk 2 starts 202 pages into that run; its chunk 3 (pages 768-909 of 910) is short.
    const starts = chunkStarts([vma(0x100, [[0, 300], [0x300, 10]]), vma(0x10000, [[5, 600]])]);
    assert.deepEqual(starts, [0x100, 0x10000 + 5 + 202]);
    assert.deepEqual(chunkStarts([]), []);
  });

  it('refuses what an edited stream could try', () => {
    const r = receiver();
    const w = (): void => {};
    protocolError(() => r.handle(Buffer.alloc(0), w), /an empty data frame/);
    protocolError(() => r.handle(Buffer.from([7, 0, 0]), w), /unknown tag 7/);
    protocolError(() => r.handle(Buffer.from([TAG_PAGES, 0, 0]), w), /a short page frame/);
    protocolError(() => r.handle(frame(TAG_PAGES, 0, 0x1000n, 1, page(0)), w), /pages of pid 0/);
    protocolError(() => r.handle(frame(TAG_PAGES, 1, 0x1001n, 1, page(0)), w), /not user memory/);
    protocolError(() => r.handle(frame(TAG_PAGES, 1, 0x7ffffffff000n, 2, page(0, 2)), w), /not user memory/);
    protocolError(() => r.handle(frame(TAG_PAGES, 1, 0xffffffffff600000n, 1, page(0)), w), /not user memory/);
    protocolError(() => r.handle(frame(TAG_PAGES, 1, 0x1000n, 0), w), /not user memory/);
    protocolError(() => r.handle(frame(TAG_PAGES, 1, 0x1000n, 2, page(0)), w), /wrong length/);
    protocolError(() => r.handle(frame(TAG_PAGES, 1, 0x1000n, FRAME_PAGES + 1, page(0, FRAME_PAGES + 1)), w), /wrong length/);
    r.handle(frame(TAG_PAGES, 1, 0x1000n, 1, page(5)), w);
    protocolError(() => r.handle(frame(TAG_REF, 1, 0x1000n, 2), w), /references to more pages than it sent \(1\)/);
    protocolError(() => r.handle(frame(TAG_REF, 1, 0x2000n, 1), w), /page 0x2000 of pid 1, which it never sent/);
    protocolError(() => r.handle(frame(TAG_REF, 2, 0x1000n, 1), w), /page 0x1000 of pid 2, which it never sent/);
    protocolError(() => r.handle(Buffer.concat([frame(TAG_REF, 1, 0x1000n, 1), Buffer.from([0])]), w), /wrong length/);
    r.handle(raw(Buffer.from('x')), w);
    protocolError(() => r.handle(frame(TAG_PAGES, 1, 0x3000n, 1, page(0)), w), /pre-copy pages after the image began/);
    r.close();
  });

  it('the filter of an image that leaves held pages out: a REF where they stood, whatever the chunks; refuses what it cannot follow', () => {
    const pad = (b: Buffer): Buffer => Buffer.concat([b, Buffer.alloc((512 - (b.length % 512)) % 512)]);
    const entry = (name: string, size: number, data: Buffer): Buffer => Buffer.concat([tarHeader(name, size, new Date(0)), pad(data)]);
    const task = Buffer.from(JSON.stringify({ vmas: [{ start: '0x10000', runs: [[0, 4]], pagesOffset: 0 }] }));
    // Pages 1 and 2 of the area (0x11000, 0x12000) are held: the stream carries pages 0 and 3.
    const stream = Buffer.concat([entry('tasks/7/task.json', task.length, task), entry('tasks/7/pages.bin', 4 * 4096, Buffer.concat([page(1), page(4)])), Buffer.alloc(1024)]);
    const held = new Set([0x11, 0x12]);
    for (const step of [stream.length, 1000, 4096, 7]) {
      const frames: Buffer[] = [];
      const f = new ImageFilter((fr) => { frames.push(Buffer.from(fr)); return true; }, (pid, p) => pid === 7 && held.has(p), true);
      for (let off = 0; off < stream.length; off += step) f.push(stream.subarray(off, off + step));
      const refs = frames.filter((fr) => fr[0] === TAG_REF);
      assert.equal(refs.length, 1, `step ${step}`);
      assert.deepEqual([refs[0]!.readUInt32BE(1), refs[0]!.readBigUInt64BE(5), refs[0]!.readUInt32BE(13)], [7, 0x11000n, 2]);
      // The image rebuilt: the RAW bytes with the two held pages where the REF stands.
      const at = frames.indexOf(refs[0]!);
      const raw = (fs: Buffer[]): Buffer => Buffer.concat(fs.map((fr) => fr.subarray(1)));
      const before = raw(frames.slice(0, at)), after = raw(frames.slice(at + 1));
      assert.equal(before.length, 512 + 512 + 512 + 4096, `step ${step}`); // headers, task.json padded, page 0
      assert.deepEqual(after, Buffer.concat([page(4), Buffer.alloc(1024)]));
      assert.equal(f.refPages, 2);
    }
    const noTask = Buffer.concat([entry('tasks/7/pages.bin', 4 * 4096, Buffer.concat([page(1), page(4)])), Buffer.alloc(1024)]);
    const f = new ImageFilter(() => true, () => true, true);
    assert.throws(() => f.push(noTask), /the pre-copy filter cannot follow the image \(tasks\/7\/pages\.bin without its task\.json\)/);
  });
});
