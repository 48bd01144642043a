/** /proc/PID/auxv: native-endian (type, value) u64 pairs ending with AT_NULL. */

/** Parses the auxiliary vector; the AT_NULL pair is included. */
export function parseAuxv(buf: Buffer): Array<[bigint, bigint]> {
  const out: Array<[bigint, bigint]> = [];
  for (let off = 0; off + 16 <= buf.length; off += 16) {
    const type = buf.readBigUInt64LE(off);
    out.push([type, buf.readBigUInt64LE(off + 8)]);
    if (type === 0n) break;
  }
  return out;
}

/** Serialises pairs back into the kernel's layout. */
export function auxvToBuffer(pairs: ReadonlyArray<readonly [bigint, bigint]>): Buffer {
  const buf = Buffer.alloc(pairs.length * 16);
  pairs.forEach(([k, v], i) => {
    buf.writeBigUInt64LE(k, i * 16);
    buf.writeBigUInt64LE(v, i * 16 + 8);
  });
  return buf;
}
