/**
 * Just enough ustar for the fuzzer: split an image into its members (header and data) and
 * write members back, headers built field by field, so that any field can be damaged on
 * purpose (docs/image-format.md: ustar headers, pax 'x' size records).
 */
import { createHash } from 'node:crypto';

export const BLOCK = 512;
export const padded = (n: number): number => Math.ceil(n / BLOCK) * BLOCK;

/** A member: its 512-byte header as written, and its data. */
export interface Member {
  name: string;
  header: Buffer;
  body: Buffer;
}

/** Offsets and lengths of the ustar header fields. */
export const FIELDS = {
  name: [0, 100], mode: [100, 8], uid: [108, 8], gid: [116, 8], size: [124, 12], mtime: [136, 12],
  chksum: [148, 8], typeflag: [156, 1], linkname: [157, 100], magic: [257, 6], version: [263, 2],
  uname: [265, 32], gname: [297, 32], devmajor: [329, 8], devminor: [337, 8], prefix: [345, 155],
} as const;
export type Field = keyof typeof FIELDS;

/** Writes the header checksum (sum of the bytes, the field itself counted as spaces). */
export function fixChecksum(h: Buffer): Buffer {
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += h[i]!;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return h;
}

/** A ustar header as ferry's writer makes one. */
export function header(name: string, size: number, type = '0', mtime = 0): Buffer {
  const h = Buffer.alloc(BLOCK);
  h.write(name, 0, 100, 'utf8');
  h.write('0000600\0', 100, 'latin1');
  h.write('0000000\0', 108, 'latin1');
  h.write('0000000\0', 116, 'latin1');
  h.write(`${size.toString(8).padStart(11, '0')}\0`, 124, 'latin1');
  h.write(`${mtime.toString(8).padStart(11, '0')}\0`, 136, 'latin1');
  h.write(type, 156, 'latin1');
  h.write('ustar\0', 257, 'latin1');
  h.write('00', 263, 'latin1');
  return fixChecksum(h);
}

/** Splits a well-formed image (the fuzzer's own bases) into its members. */
export function split(tar: Buffer): Member[] {
  const out: Member[] = [];
  for (let pos = 0; pos + BLOCK <= tar.length;) {
    const h = tar.subarray(pos, pos + BLOCK);
    if (h.every((b) => b === 0)) break;
    const size = parseInt(h.toString('latin1', 124, 136).replace(/\0.*$/, '').trim(), 8);
    const end = h.indexOf(0);
    const name = h.toString('utf8', 0, end < 0 || end > 100 ? 100 : end);
    out.push({ name, header: Buffer.from(h), body: Buffer.from(tar.subarray(pos + BLOCK, pos + BLOCK + size)) });
    pos += BLOCK + padded(size);
  }
  return out;
}

/** Member data followed by zero padding to a block. */
export function pad(body: Buffer): Buffer {
  return body.length % BLOCK === 0 ? body : Buffer.concat([body, Buffer.alloc(BLOCK - (body.length % BLOCK))]);
}

/** A tar of `members` (each header used as it is) and the end-of-archive marker. */
export function join(members: ReadonlyArray<{ header: Buffer; body: Buffer }>, end: Buffer = Buffer.alloc(2 * BLOCK)): Buffer {
  return Buffer.concat([...members.flatMap((m) => [m.header, pad(m.body)]), end]);
}

/** A fresh member named `name` holding `body`. */
export function member(name: string, body: Buffer): Member {
  return { name, header: header(name, body.length), body };
}

/** A pax extended header member ('x') holding `records` (key, value). */
export function pax(records: ReadonlyArray<readonly [string, string]>): Member {
  const text = records.map(([k, v]) => {
    const rest = ` ${k}=${v}\n`;
    let len = Buffer.byteLength(rest) + 1;
    while (String(len).length + Buffer.byteLength(rest) !== len) len++;
    return `${len}${rest}`;
  }).join('');
  const body = Buffer.from(text);
  return { name: 'PaxHeader', header: header('PaxHeader', body.length, 'x'), body };
}

export const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
