/**
 * The receiver's side of pre-copy (src/migrate/precopy.ts, PreCopyReceiver): tagged frames
 * from an authenticated but untrusted peer. Pages go into its store (the latest copy wins),
 * references put held pages into the image in order, and an edited stream can neither make
 * it keep pages outside user memory, nor name pages it never sent, nor send pages once the
 * image has begun: each is a one-line protocol error.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { FerryError } from '../../src/errors.js';
import { FRAME_PAGES, PreCopyReceiver, TAG_PAGES, TAG_RAW, TAG_REF } from '../../src/migrate/precopy.js';

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
    protocolError(() => r.handle(frame(TAG_REF, 1, 0x1000n, 2), w), /page 0x2000 of pid 1, which it never sent/);
    protocolError(() => r.handle(frame(TAG_REF, 2, 0x1000n, 1), w), /page 0x1000 of pid 2, which it never sent/);
    protocolError(() => r.handle(Buffer.concat([frame(TAG_REF, 1, 0x1000n, 1), Buffer.from([0])]), w), /wrong length/);
    r.handle(raw(Buffer.from('x')), w);
    protocolError(() => r.handle(frame(TAG_PAGES, 1, 0x3000n, 1, page(0)), w), /pre-copy pages after the image began/);
    r.close();
  });
});
