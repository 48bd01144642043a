/**
 * The migration channel's framing (src/migrate/channel.ts Channel): frames cut anywhere by the
 * transport come out whole and in order, image chunks and control messages alike, also while
 * an image chunk's promise holds the channel. Run on a transport of the test's own (what a TLS
 * socket or ssh's pipes hand over, as 'data' events), cut at random but the same every run.
 */
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { describe, it } from 'node:test';
import { Channel, type Transport } from '../../src/migrate/channel.js';

/** A transport whose incoming bytes the test hands over, in pieces of its choosing. */
class Wire extends EventEmitter implements Transport {
  destroyed = false;
  writableNeedDrain = false;
  readonly sent: Buffer[] = [];
  setTimeout(): this { return this; }
  write(data: Buffer): boolean { this.sent.push(data); return true; }
  end(done?: () => void): this { done?.(); return this; }
  destroy(): this { this.destroyed = true; return this; }
  pause(): this { return this; }
  resume(): this { return this; }
}

const frame = (kind: 1 | 2, payload: Buffer): Buffer => {
  const h = Buffer.alloc(5);
  h.writeUInt8(kind, 0);
  h.writeUInt32BE(payload.length, 1);
  return Buffer.concat([h, payload]);
};
const data = (payload: Buffer): Buffer => frame(2, payload);
const control = (m: object): Buffer => frame(1, Buffer.from(JSON.stringify(m)));

/** A small deterministic generator (the test must be the same on every run). */
function prng(seed: number): (n: number) => number {
  let x = seed;
  return (n) => {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    return (x >>> 8) % n;
  };
}

describe('migration channel: framing', { timeout: 60_000 }, () => {
  it('frames cut anywhere come out whole and in order, with a chunk\'s promise holding the rest', async () => {
    const rnd = prng(7);
    const payloads: Buffer[] = [];
    for (let i = 0; i < 300; i++) {
      const size = [1, 17, 4096, 4097, 70_000, 1 << 20][rnd(6)]!;
      const b = Buffer.alloc(size);
      for (let j = 0; j < size; j += 997) b[j] = (i + j) & 0xff;
      b[size - 1] = i & 0xff;
      payloads.push(b);
    }
    const bytes = payloads.reduce((s, b) => s + b.length, 0);
    const stream = Buffer.concat([...payloads.map(data), control({ type: 'end', bytes })]);
    const wire = new Wire();
    const ch = new Channel(wire, 'the test peer');
    const got: Buffer[] = [];
    let busy = false;
    let early = 0;
    ch.onData = (chunk) => {
      if (busy) early++;
      got.push(Buffer.from(chunk));
      // Every fifth chunk is handled later: the channel must wait, and go on with what came meanwhile.
      if (got.length % 5 !== 0) return undefined;
      busy = true;
      return new Promise((resolve) => setImmediate(() => { busy = false; resolve(); }));
    };
    const end = ch.next('receiving the image', 'end');
    for (let off = 0; off < stream.length;) {
      const n = Math.min(stream.length - off, 1 + rnd(rnd(2) === 0 ? 8 : 40_000));
      wire.emit('data', stream.subarray(off, off + n));
      off += n;
      if (rnd(8) === 0) await new Promise((resolve) => setImmediate(resolve));
    }
    assert.deepEqual(await end, { type: 'end', bytes });
    assert.equal(early, 0, 'chunks handed over while the one before was still being handled');
    assert.equal(got.length, payloads.length);
    for (let i = 0; i < payloads.length; i++) assert.ok(got[i]!.equals(payloads[i]!), `frame ${i}`);
    ch.destroy();
  });
});
