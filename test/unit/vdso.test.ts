/**
 * The vDSO proxy (src/restore/vdso.ts) on this process's own vDSO and variants of it: the
 * image's functions found by name, each entry of the image's copy jumping to the function of
 * the same name in this kernel's vDSO wherever it moved, and every malformed or incomplete
 * image refused with one line. Pure (the vDSO is read from /proc/self/mem).
 */
import assert from 'node:assert/strict';
import { closeSync, openSync, readFileSync, readSync } from 'node:fs';
import { describe, it } from 'node:test';
import { vdsoFunctions, vdsoProxy } from '../../src/restore/vdso.js';

function ownVdso(): Buffer {
  const line = readFileSync('/proc/self/maps', 'utf8').split('\n').find((l) => l.endsWith('[vdso]'))!;
  const [start, end] = line.split(' ')[0]!.split('-').map((h) => parseInt(h, 16)) as [number, number];
  const buf = Buffer.alloc(end - start);
  const fd = openSync('/proc/self/mem', 'r');
  try {
    readSync(fd, buf, 0, buf.length, start);
  } finally {
    closeSync(fd);
  }
  return buf;
}

const fail = (why: string): never => {
  throw new Error(why);
};

/** `elf` with the value of every dynamic symbol at offset `from` set to `to` (a function moved). */
function moved(elf: Buffer, from: number, to: number): Buffer {
  const c = Buffer.from(elf);
  const shoff = Number(c.readBigUInt64LE(40)), shentsize = c.readUInt16LE(58), shnum = c.readUInt16LE(60);
  for (let i = 0; i < shnum; i++) {
    const sh = shoff + i * shentsize;
    if (c.readUInt32LE(sh + 4) !== 11) continue; // SHT_DYNSYM
    const off = Number(c.readBigUInt64LE(sh + 24)), size = Number(c.readBigUInt64LE(sh + 32));
    for (let at = off; at < off + size; at += 24) if (Number(c.readBigUInt64LE(at + 8)) === from) c.writeBigUInt64LE(BigInt(to), at + 8);
  }
  return c;
}

describe('vDSO proxy', () => {
  const mine = ownVdso();
  const fns = vdsoFunctions(mine, fail);

  it('reads the exported functions of this kernel\'s vDSO by name, aliases included', () => {
    for (const name of ['__vdso_clock_gettime', 'clock_gettime', '__vdso_gettimeofday', '__vdso_time', '__vdso_clock_getres', '__vdso_getcpu']) {
      assert.ok(fns.has(name), `${name} in ${[...fns.keys()].join(', ')}`);
    }
    assert.equal(fns.get('clock_gettime'), fns.get('__vdso_clock_gettime'));
  });

  it('an image whose functions sit elsewhere: each entry jumps to the function of its name here', () => {
    // The image's vDSO had time() where this one has getcpu() (and the other way round).
    const time = fns.get('__vdso_time')!, getcpu = fns.get('__vdso_getcpu')!;
    const old = moved(moved(moved(mine, time, 0x7fff0), getcpu, time), 0x7fff0, getcpu);
    const base = 0x7f0000000000n;
    const proxy = vdsoProxy('img', old, mine, base);
    assert.equal(proxy.length, old.length);
    const jumpAt = (at: number): bigint => {
      assert.deepEqual([...proxy.subarray(at, at + 6)], [0xff, 0x25, 0, 0, 0, 0], `a jmp *0(%rip) at ${at}`);
      return proxy.readBigUInt64LE(at + 6);
    };
    assert.equal(jumpAt(getcpu), base + BigInt(time), 'the image\'s time() entry jumps to time() here');
    assert.equal(jumpAt(time), base + BigInt(getcpu), 'and its getcpu() entry to getcpu()');
    assert.equal(jumpAt(fns.get('clock_gettime')!), base + BigInt(fns.get('clock_gettime')!));
    // Outside the entries the image's bytes are kept (the ELF header, for AT_SYSINFO_EHDR).
    assert.deepEqual(proxy.subarray(0, 64), old.subarray(0, 64));
  });

  it('refuses a function this kernel lacks, entries too close for a jump, and what is no vDSO', () => {
    const renamed = Buffer.from(mine);
    renamed.write('__vdso_tima', renamed.indexOf('__vdso_time\0', 0, 'latin1'), 'latin1');
    assert.throws(() => vdsoProxy('img', renamed, mine, 0n), (err: Error & { code?: string }) =>
      err.code === 'EKERNEL' && err.message === 'the image\'s vDSO has __vdso_tima, which this kernel\'s vDSO lacks: restore on a kernel that has it');
    const time = fns.get('__vdso_time')!;
    assert.throws(() => vdsoProxy('img', moved(mine, time, fns.get('__vdso_clock_gettime')! + 4), mine, 0n),
      /image img: vdso\.bin is not a vDSO this ferry can read \(functions at \d+ and \d+ are closer than a jump\)$/);
    assert.throws(() => vdsoProxy('img', moved(mine, time, mine.length - 4), mine, 0n), /function (__vdso_)?time outside it/);
    assert.throws(() => vdsoProxy('img', Buffer.alloc(8192), mine, 0n), /not a 64-bit little-endian ELF/);
    const cut = mine.subarray(0, 200);
    assert.throws(() => vdsoProxy('img', cut, mine, 0n), /image img: vdso\.bin is not a vDSO this ferry can read \(/);
  });
});
