/**
 * The few pieces of the protobuf wire format the runtime wrapper speaks: CRIU's RPC messages
 * (criu-rpc.ts) and the small CRIU image files podman reads or looks for (criu-files.ts).
 *
 * Wire format (protobuf encoding guide): a message is a sequence of fields, each a varint key
 * `field_number << 3 | wire_type` followed by its value. Wire type 0 is a varint (uint32,
 * uint64, int32, bool, enum: 7 bits a byte, low group first, high bit = more follows; a
 * negative int32 is sign-extended to 64 bits, so ten bytes), 2 is length-delimited (a varint
 * length, then bytes: strings and nested messages), 1 and 5 are fixed 64/32-bit little-endian.
 * Unknown fields are skipped by their wire type, which is what lets either side grow.
 */

/** Wire types. */
const VARINT = 0;
const FIXED64 = 1;
const BYTES = 2;
const FIXED32 = 5;

/** Builds one message, field by field, in the order they are added. */
export class ProtoWriter {
  private readonly parts: Buffer[] = [];

  private key(field: number, wire: number): void {
    this.raw(varint(BigInt(field) << 3n | BigInt(wire)));
  }

  private raw(b: Buffer): void {
    this.parts.push(b);
  }

  /** A varint field: uint32, uint64, int32 (negative ones as ten bytes), bool, enum. */
  uint(field: number, value: number | bigint | boolean): this {
    const v = typeof value === 'boolean' ? (value ? 1n : 0n) : BigInt(value);
    this.key(field, VARINT);
    this.raw(varint(BigInt.asUintN(64, v)));
    return this;
  }

  /** A length-delimited field: a string (UTF-8), bytes, or a nested message. */
  bytes(field: number, value: string | Buffer | ProtoWriter): this {
    const b = value instanceof ProtoWriter ? value.finish() : typeof value === 'string' ? Buffer.from(value, 'utf8') : value;
    this.key(field, BYTES);
    this.raw(varint(BigInt(b.length)));
    this.raw(b);
    return this;
  }

  /** The encoded message. */
  finish(): Buffer {
    return Buffer.concat(this.parts);
  }
}

/** Encodes an unsigned 64-bit value as a varint. */
export function varint(value: bigint): Buffer {
  if (value < 0n || value >= 1n << 64n) throw new RangeError(`varint out of range: ${value}`);
  const out: number[] = [];
  let v = value;
  do {
    let byte = Number(v & 0x7fn);
    v >>= 7n;
    if (v !== 0n) byte |= 0x80;
    out.push(byte);
  } while (v !== 0n);
  return Buffer.from(out);
}

/** A decoded field value: varints and fixed numbers as bigint, length-delimited ones as bytes. */
export type ProtoValue = bigint | Buffer;

/** The fields of one message by number, every occurrence in order (repeated fields). */
export type ProtoFields = Map<number, ProtoValue[]>;

/** A message that does not follow the wire format. */
export class ProtoError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProtoError';
  }
}

/** Decodes one message; every length is checked against the buffer. */
export function decodeMessage(buf: Buffer): ProtoFields {
  const fields: ProtoFields = new Map();
  let at = 0;
  const readVarint = (): bigint => {
    let v = 0n;
    for (let shift = 0n; shift < 70n; shift += 7n) {
      if (at >= buf.length) throw new ProtoError(`truncated varint at byte ${at}`);
      const b = buf[at++]!;
      v |= BigInt(b & 0x7f) << shift;
      if ((b & 0x80) === 0) return BigInt.asUintN(64, v);
    }
    throw new ProtoError(`varint longer than ten bytes at byte ${at}`);
  };
  const take = (n: number): Buffer => {
    if (n > buf.length - at) throw new ProtoError(`field of ${n} bytes at byte ${at} runs past the end (${buf.length} bytes)`);
    const b = buf.subarray(at, at + n);
    at += n;
    return b;
  };
  while (at < buf.length) {
    const key = readVarint();
    const field = Number(key >> 3n);
    const wire = Number(key & 7n);
    if (field === 0) throw new ProtoError(`field number 0 at byte ${at}`);
    let value: ProtoValue;
    switch (wire) {
      case VARINT: value = readVarint(); break;
      case FIXED64: value = take(8).readBigUInt64LE(0); break;
      case BYTES: value = Buffer.from(take(Number(readVarint()))); break;
      case FIXED32: value = BigInt(take(4).readUInt32LE(0)); break;
      default: throw new ProtoError(`wire type ${wire} of field ${field} is not supported`);
    }
    const list = fields.get(field);
    if (list) list.push(value);
    else fields.set(field, [value]);
  }
  return fields;
}

/** The last occurrence of a varint field (protobuf: the last one wins), or undefined. */
export function uintField(f: ProtoFields, field: number): bigint | undefined {
  const v = f.get(field)?.at(-1);
  if (v === undefined) return undefined;
  if (typeof v !== 'bigint') throw new ProtoError(`field ${field} is length-delimited, a number was expected`);
  return v;
}

/** The last occurrence of a length-delimited field, or undefined. */
export function bytesField(f: ProtoFields, field: number): Buffer | undefined {
  const v = f.get(field)?.at(-1);
  if (v === undefined) return undefined;
  if (typeof v === 'bigint') throw new ProtoError(`field ${field} is a number, bytes were expected`);
  return v;
}

/** A signed int32 from its varint (sign-extended to 64 bits on the wire). */
export function int32(v: bigint): number {
  return Number(BigInt.asIntN(32, v));
}
