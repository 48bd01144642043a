/**
 * A small seeded PRNG for the fuzzer (sfc32, seeded through splitmix32): the same seed gives
 * the same variants, so a failure is replayed with FERRY_FUZZ_SEED (and FERRY_FUZZ_ONLY for
 * one variant). Each variant gets its own generator from (seed, index), so replaying one does
 * not need the ones before it.
 */

/** splitmix32: spreads a 32-bit value (used to derive seeds). */
function splitmix32(x: number): number {
  let z = (x + 0x9e3779b9) | 0;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

/** The seed of variant `index` of a run seeded `seed`. */
export function variantSeed(seed: number, index: number): number {
  return splitmix32(splitmix32(seed) ^ Math.imul(index + 1, 0x27d4eb2d));
}

/** A seeded generator with the helpers the mutators use. */
export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number) {
    this.a = splitmix32(seed);
    this.b = splitmix32(this.a);
    this.c = splitmix32(this.b);
    this.d = splitmix32(this.c);
    for (let i = 0; i < 12; i++) this.next();
  }

  /** A uniform 32-bit unsigned integer (sfc32). */
  next(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }

  /** An integer in [0, n). */
  int(n: number): number {
    if (n <= 0) return 0;
    return n <= 2 ** 32 ? Math.floor((this.next() / 2 ** 32) * n) : Math.floor((this.next() * 2 ** 21 + (this.next() >>> 11)) / 2 ** 53 * n);
  }

  /** An integer in [lo, hi]. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }

  /** True with probability p. */
  chance(p: number): boolean {
    return this.next() / 2 ** 32 < p;
  }

  /** One item of a non-empty list. */
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }

  /** One item by weight: [[weight, item], …]. */
  weighted<T>(items: ReadonlyArray<readonly [number, T]>): T {
    const total = items.reduce((s, [w]) => s + w, 0);
    let at = this.next() / 2 ** 32 * total;
    for (const [w, item] of items) {
      if (at < w) return item;
      at -= w;
    }
    return items[items.length - 1]![1];
  }

  /** A shuffled copy. */
  shuffle<T>(items: readonly T[]): T[] {
    const out = [...items];
    for (let i = out.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      [out[i], out[j]] = [out[j]!, out[i]!];
    }
    return out;
  }

  /** `n` random bytes. */
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.next() & 0xff;
    return b;
  }
}
