/**
 * Restoring onto another kernel build (vdso(7)). A process calls the vDSO through addresses it
 * took once (libc keeps &clock_gettime of the vDSO from its start): if this kernel's vDSO is
 * laid out otherwise than the image's, those addresses land in the middle of other code. The
 * checkpoint keeps the bytes of its kernel's vDSO in the image (`vdso.bin`); restore compares:
 * - the same bytes: this kernel's vDSO (with its [vvar] data pages) is moved to where the
 *   image had it, as ever (address-space.ts clearStub);
 * - other bytes: this kernel's vDSO and data pages stay together elsewhere (free of the image's
 *   areas), and the image's vDSO address gets a copy of the image's vDSO whose every exported
 *   function starts with a jump to the function of the same name in this kernel's vDSO (a
 *   "proxy"). Addresses the process kept, and the ELF image at AT_SYSINFO_EHDR that a later
 *   lookup reads, stay valid. Refused, naming it, when a function of the old vDSO is missing
 *   in this one, and when a thread was stopped inside the old vDSO's code (it would run on
 *   in code whose data pages are gone: checkpoint it again).
 *
 * The image's bytes are untrusted: the ELF is read with every offset and count bounded, and
 * the proxy is mapped where the image's own [vdso] area was, never anywhere else.
 */
import { FerryError } from '../errors.js';
import { VDSO_ENTRY } from '../image/records.js';

export { VDSO_ENTRY };
/** Largest vDSO taken from an image (x86-64's is 8 KiB). */
export const MAX_VDSO_BYTES = 64 * 1024;
/** `jmp *0(%rip)` followed by the 8-byte absolute target: the jump written at each entry. */
const JUMP = Buffer.from([0xff, 0x25, 0, 0, 0, 0]);
const JUMP_SIZE = JUMP.length + 8;
const SHT_DYNSYM = 11, STT_FUNC = 2, PT_LOAD = 1;

/**
 * The exported functions of a vDSO image: name -> offset in the image. Throws `fail(why)` on
 * anything malformed (an image's bytes are untrusted).
 */
export function vdsoFunctions(elf: Buffer, fail: (why: string) => never): Map<string, number> {
  const u16 = (at: number): number => (at + 2 <= elf.length ? elf.readUInt16LE(at) : fail(`a read at ${at} past its end`));
  const u32 = (at: number): number => (at + 4 <= elf.length ? elf.readUInt32LE(at) : fail(`a read at ${at} past its end`));
  const u64 = (at: number): number => {
    if (at + 8 > elf.length) fail(`a read at ${at} past its end`);
    const v = elf.readBigUInt64LE(at);
    return v > BigInt(Number.MAX_SAFE_INTEGER) ? fail(`a value ${v} out of range`) : Number(v);
  };
  if (elf.length < 64 || elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 2 || elf[5] !== 1) fail('not a 64-bit little-endian ELF');
  // The load bias: a symbol's value minus the first PT_LOAD's p_vaddr plus its p_offset.
  const phoff = u64(32), phentsize = u16(54), phnum = u16(56);
  if (phnum > 64 || phentsize < 56) fail('a program header table out of bounds');
  let bias: number | undefined;
  for (let i = 0; i < phnum && bias === undefined; i++) {
    const ph = phoff + i * phentsize;
    if (u32(ph) === PT_LOAD) bias = u64(ph + 16) - u64(ph + 8); // p_vaddr - p_offset
  }
  if (bias === undefined) fail('no PT_LOAD segment');
  const shoff = u64(40), shentsize = u16(58), shnum = u16(60);
  if (shnum > 256 || shentsize < 64) fail('a section header table out of bounds');
  const section = (i: number): { type: number; offset: number; size: number; link: number; entsize: number } => {
    const sh = shoff + i * shentsize;
    return { type: u32(sh + 4), offset: u64(sh + 24), size: u64(sh + 32), link: u32(sh + 40), entsize: u64(sh + 56) };
  };
  const out = new Map<string, number>();
  for (let i = 0; i < shnum; i++) {
    const s = section(i);
    if (s.type !== SHT_DYNSYM) continue;
    if (s.link >= shnum || s.entsize < 24 || s.size / s.entsize > 4096) fail('a symbol table out of bounds');
    const str = section(s.link);
    if (str.offset + str.size > elf.length) fail('a string table past its end');
    for (let at = s.offset; at + 24 <= s.offset + s.size; at += s.entsize) {
      const name = u32(at), info = elf[at + 4] ?? fail('a symbol past its end'), shndx = u16(at + 6), value = u64(at + 8);
      if ((info & 0xf) !== STT_FUNC || shndx === 0) continue;
      if (name >= str.size) fail('a symbol name out of bounds');
      const end = elf.indexOf(0, str.offset + name);
      if (end < 0 || end > str.offset + str.size || end - (str.offset + name) > 128) fail('a symbol name not ended');
      const offset = value - bias!;
      if (offset < 0 || offset + JUMP_SIZE > elf.length) fail(`function ${elf.toString('latin1', str.offset + name, end)} outside it`);
      out.set(elf.toString('latin1', str.offset + name, end), offset);
    }
  }
  if (out.size === 0) fail('no exported function');
  return out;
}

/**
 * The proxy for the image's vDSO `old` (of `label`), mapped at its old place, calling this
 * kernel's vDSO `current` at `currentBase`: a copy of `old` with a jump at each function.
 * Refuses a function `current` lacks, and entries too close to hold a jump.
 */
export function vdsoProxy(label: string, old: Buffer, current: Buffer, currentBase: bigint): Buffer {
  const bad = (why: string): never => {
    throw new FerryError('EIMAGE', `image ${label}: ${VDSO_ENTRY} is not a vDSO this ferry can read (${why})`);
  };
  const was = vdsoFunctions(old, bad);
  const now = vdsoFunctions(current, (why) => {
    throw new FerryError('EKERNEL', `this kernel's vDSO cannot be read (${why})`);
  });
  const proxy = Buffer.from(old);
  const entries = [...new Set(was.values())].sort((a, b) => a - b);
  for (let i = 1; i < entries.length; i++) {
    if (entries[i]! - entries[i - 1]! < JUMP_SIZE) bad(`functions at ${entries[i - 1]} and ${entries[i]} are closer than a jump`);
  }
  for (const [name, at] of was) {
    const to = now.get(name);
    if (to === undefined) {
      throw new FerryError('EKERNEL', `the image's vDSO has ${name.slice(0, 64)}, which this kernel's vDSO lacks: restore on a kernel that has it`);
    }
    JUMP.copy(proxy, at);
    proxy.writeBigUInt64LE(currentBase + BigInt(to), at + JUMP.length);
  }
  return proxy;
}
