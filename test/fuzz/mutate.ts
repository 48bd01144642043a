/**
 * The fuzzer's variants: each one is a real image (a base, checkpointed once at the start)
 * damaged or edited one way, with what restore may do with it.
 *
 * Families (the part of `family` before the dot names the group in the counts):
 * - bytes.*     raw damage, nothing recomputed: bit flips, bytes set, truncation, garbage
 *               appended (the sha256 values and the tar checksums must catch it);
 * - tar.*       tar structure: header fields (checksums fixed or not), sizes (huge, base-256,
 *               negative, pax records), types, member lists (extra, duplicate, missing, out
 *               of order), names (.., /, NUL, very long), the end-of-archive marker;
 * - manifest.*  manifest.json edited as JSON: every field with wrong types, boundary numbers,
 *               huge and nested values, entries lists that disagree with the tar;
 * - entry.*     tree.json, files.json and tasks/N/task.json edited field by field (a sweep
 *               over every field of every record, in a seeded order), their sha256 in the
 *               manifest recomputed (and the manifest signed again for the signed base), so
 *               every edit reaches the record checks; whole entries replaced (not JSON,
 *               deep, huge); binary entries (xstate, pages, contents) cut or grown;
 * - files.*     open file records: kinds swapped, fields removed one by one;
 * - confine.*   paths at the canary directory (absolute, .., symlinks, /proc magic links),
 *               with O_TRUNC/O_CREAT…, as a file, a deleted file, a device, a FIFO, a mapped
 *               file (shared, with pages), an executable, a working directory;
 * - pages.*     page runs beyond their area, offsets beyond the pages entry, pages entries
 *               cut short, areas that overlap or wrap, copy-on-write (`cow`) runs past their
 *               area or over stored pages; chunk lists of pages entries that lie
 *               about their length, chunk size or digests, or list the same bytes another way;
 * - creds.*     credentials raised on the base checkpointed as nobody, restored with the
 *               bound `nobody` (must be refused: EPRIVILEGE);
 * - sign.*      the signed base: signature damaged, another key, moved, removed, manifest
 *               changed after signing (must be refused).
 */
import type { KeyObject } from 'node:crypto';
import { closeSync, openSync, writeSync } from 'node:fs';
import { imageSigner } from '../../src/image/sign.js';
import type { Rng } from './prng.js';
import { BLOCK, FIELDS, fixChecksum, header, join, member, pax, sha256, type Field, type Member } from './tar.js';

type Json = any; // eslint-disable-line @typescript-eslint/no-explicit-any
type Path = Array<string | number>;

/** What a restore of a variant may end in. */
export type Expect =
  /** a clean refusal or a restore, anything but a bug */
  | 'any'
  /** a clean refusal (any known code, or one of `codes`) */
  | 'refused'
  /** nothing that matters changed: restored, it must pass its own check */
  | 'same';

export interface Variant {
  base: string;
  family: string;
  what: string;
  image: Buffer;
  expect: Expect;
  /** With expect 'refused': the codes allowed. */
  codes?: readonly string[];
  /** Writes the image itself (a sparse file), instead of `image`. */
  write?: (path: string) => void;
}

/** A real image the variants are made from. */
export interface Base {
  name: string;
  /** The workload it is (build/workloads/NAME): SIGUSR1 makes each check itself and exit 0 when all is well. */
  workload: string;
  members: Member[];
  manifest: Json;
  /** The root pid. */
  root: number;
  /** Every pid and thread id of the image. */
  pids: number[];
  /** Signed with this key (the restore trusts it). */
  signKey?: KeyObject;
  /**
   * false: its check changes what it checks (events exercises its watched files), so only the
   * first restore can pass it; a later one that changed nothing need only restore.
   */
  repeatable?: boolean;
}

/** Where the confinement variants aim. */
export interface Targets {
  /** The canary directory, and files in it. */
  dir: string;
  file: string;
  sub: string;
  /** A directory holding `esc` -> the canary directory and `abs` -> the canary file. */
  trap: string;
  /** A descriptor of the fuzzer open on the canary file (for /proc/PID/fd/N). */
  fd: number;
  /** stat of the canary file: size and mtime (ns) as a record holds them. */
  size: string;
  mtimeNs: string;
}

export interface Context {
  rng: Rng;
  bases: readonly Base[];
  targets: Targets;
  /** A key nobody trusts. */
  otherKey: KeyObject;
  /** Field classes to sweep, in a seeded order, and where the sweep is. */
  sweep: SweepItem[];
  sweepAt: { i: number };
}

// ---------------------------------------------------------------- helpers

const clone = <T>(v: T): T => JSON.parse(JSON.stringify(v)) as T;
const entryBody = (b: Base, name: string): Buffer | undefined => b.members.find((m) => m.name === name)?.body;
export const parseEntry = (b: Base, name: string): Json => JSON.parse(entryBody(b, name)!.toString());
const taskNames = (b: Base): string[] => (b.manifest.tasks as number[]).map((p) => `tasks/${p}/task.json`);

/** Raw JSON texts put in with a placeholder (JSON.stringify could not make them, or slowly). */
function rawText(rng: Rng): string {
  return rng.pick([
    () => `${'['.repeat(100_000)}1${']'.repeat(100_000)}`,
    () => `${'{"a":'.repeat(5000)}1${'}'.repeat(5000)}`,
    () => `${'['.repeat(33)}0${']'.repeat(33)}`,
    () => '1e400', () => '-1e400', () => '-0', () => '18446744073709551616', () => '123456789012345678901234567890',
    () => '"\\ud800"', () => '"\\u0000"', () => '"\\u2028\\n\\r"',
    () => `[${'0,'.repeat(99_999)}0]`,
    () => `[${'{},'.repeat(49_999)}{}]`,
    () => `[${'"0x1",'.repeat(20_000)}"0x1"]`,
    () => `[${'[0,1],'.repeat(30_000)}[0,1]]`,
    () => `"${'A'.repeat(1 << 20)}"`,
    () => `"${'/..'.repeat(30_000)}"`,
    () => `{${Array.from({ length: 10_000 }, (_, i) => `"k${i}":${i}`).join(',')}}`,
  ])();
}

/** A value of the wrong type, at a boundary, or hostile. */
function nastyValue(rng: Rng, old: unknown): unknown {
  const general: unknown[] = [
    null, true, false, 0, -1, 1, 2, 7, 0.5, -0.5, 255, 4095, 4096, 65535, 65536, 2 ** 31 - 1, 2 ** 31, -(2 ** 31),
    2 ** 32 - 1, 2 ** 32, 2 ** 53 - 1, 2 ** 53, -(2 ** 53), 2 ** 63, 1e21, 1e300, -1e300, 5e-324,
    '', ' ', '0', '-1', '1.5', 'NaN', 'Infinity', '-Infinity', 'null', 'undefined', 'true', '1e300', '0x', '0x0',
    '0xg', '0x-1', '-0x1', '0xffffffffffffffff', '0x10000000000000000', '0x7fffffffffffffff', '0x8000000000000000',
    `0x${'f'.repeat(64)}`, ' 0x1', '0x1 ', '0X1', '00', '1'.repeat(30), '/', '.', '..', '../../../../../../etc/passwd',
    '/etc/shadow', '/proc/self/root/etc/shadow', '/proc/1/root/', '/proc/self/fd/0', '/dev/mem', 'a\0b', '\n',
    'x'.repeat(300), 'x'.repeat(5000), 'x'.repeat(70_000), '__proto__', 'constructor', 'toString',
    [], [[]], [null], [0], [-1], [0, -1], ['x'], [{}], [1, 2, 3], {}, { a: 1 }, { length: 1e9 }, { toString: 1 },
  ];
  const specific: unknown[] = [];
  if (typeof old === 'number') {
    specific.push(old + 1, old - 1, -old, old * 2 ** 32, old + 0.5, -old - 1, old * 4096, String(old));
  } else if (typeof old === 'string') {
    specific.push(`${old}/..`, `../${old}`, old.toUpperCase(), old.slice(1), `${old}\0`, old.repeat(50), `/proc/self/root${old}`);
    if (/^0x[0-9a-f]+$/.test(old)) {
      const v = BigInt(old);
      specific.push(`0x${(v + 1n).toString(16)}`, `0x${(v ^ (1n << 63n)).toString(16)}`, `0x${(v << 12n).toString(16)}`,
        `0x${(v >> 1n).toString(16)}`, Number(v), `${old}0`, old.replace('0x', '0x0000000000000000'));
    }
  } else if (Array.isArray(old)) {
    specific.push([], [...old, ...old], [...old].reverse(), old.slice(1), Array.from({ length: 1000 }, () => old[0] ?? 0),
      old.map(() => null), old.length > 0 ? [old[0], old[0]] : [0]);
  } else if (typeof old === 'boolean') {
    specific.push(!old, old ? 1 : 0, String(old));
  } else if (old !== null && typeof old === 'object') {
    const keys = Object.keys(old);
    specific.push({}, keys.length > 0 ? Object.fromEntries(keys.slice(1).map((k) => [k, (old as Json)[k]])) : { x: 1 });
  }
  return specific.length > 0 && rng.chance(0.5) ? rng.pick(specific) : rng.pick(general);
}

function getAt(root: Json, path: Path): Json {
  let v = root;
  for (const k of path) v = v?.[k];
  return v;
}

/** Every path in `v` (containers and leaves), the root excluded. */
function allPaths(v: Json, at: Path = [], out: Path[] = []): Path[] {
  if (Array.isArray(v)) v.forEach((x, i) => { out.push([...at, i]); allPaths(x, [...at, i], out); });
  else if (v !== null && typeof v === 'object') for (const k of Object.keys(v)) { out.push([...at, k]); allPaths(v[k], [...at, k], out); }
  return out;
}

/** A path's class: array indices as '*' ("vmas.*.runs.*.*"). */
const classOf = (p: Path): string => p.map((k) => (typeof k === 'number' ? '*' : k)).join('.');

/** A field class of an entry of a base: where the sweep edits next. */
export interface SweepItem {
  base: string;
  /** Entry name, with a task's pid as '*' (any task). */
  entry: string;
  cls: string;
}

/** The sweep: every field class of every JSON entry of every base, in a seeded order. */
export function makeSweep(rng: Rng, bases: readonly Base[]): SweepItem[] {
  const items: SweepItem[] = [];
  for (const b of bases) {
    const names = ['tree.json', 'files.json', ...taskNames(b)];
    const seen = new Set<string>();
    for (const name of names) {
      const entry = name.startsWith('tasks/') ? 'tasks/*/task.json' : name;
      for (const p of allPaths(parseEntry(b, name))) {
        const key = `${entry} ${classOf(p)}`;
        if (seen.has(key)) continue;
        seen.add(key);
        items.push({ base: b.name, entry, cls: classOf(p) });
      }
    }
  }
  return rng.shuffle(items);
}

/** Edits of JSON entries, applied to parsed values; raw texts go in through placeholders. */
interface Edits {
  json?: Record<string, (v: Json, raw: (text: string) => string) => void>;
  /** Replace an entry's bytes (or remove it: null). */
  bytes?: Record<string, Buffer | null>;
  /** Change the manifest after its entries list is recomputed. */
  manifest?: (m: Json, raw: (text: string) => string) => void;
  /** Members added after the others (name, body). */
  extra?: Array<{ name: string; body: Buffer }>;
  /** Don't sign again (a signed base). */
  noResign?: boolean;
}

/**
 * The image of `b` with `edits` applied: entries edited, the manifest's list of entries
 * (sizes, sha256) recomputed as an attacker would, and signed again with the base's key.
 */
export function rebuild(b: Base, e: Edits): Buffer {
  const raws: string[] = [];
  const raw = (text: string): string => {
    raws.push(text);
    return `@@RAW${raws.length - 1}@@`;
  };
  const subst = (text: string): string => text.replace(/"@@RAW(\d+)@@"/g, (_, i: string) => raws[Number(i)]!);
  const entries = b.members.slice(1).filter((m) => m.name !== 'manifest.sig').map((m) => ({ name: m.name, body: m.body }));
  for (const [name, edit] of Object.entries(e.json ?? {})) {
    const m = entries.find((x) => x.name === name);
    if (!m) continue;
    const v = JSON.parse(m.body.toString()) as Json;
    edit(v, raw);
    m.body = Buffer.from(subst(JSON.stringify(v)));
  }
  for (const [name, body] of Object.entries(e.bytes ?? {})) {
    const i = entries.findIndex((x) => x.name === name);
    if (i < 0) continue;
    if (body === null) entries.splice(i, 1);
    else entries[i]!.body = body;
  }
  entries.push(...(e.extra ?? []));
  const manifest = clone(b.manifest);
  manifest.entries = entries.map((x) => ({ name: x.name, size: x.body.length, sha256: sha256(x.body) }));
  e.manifest?.(manifest, raw);
  const mbytes = Buffer.from(subst(JSON.stringify(manifest)));
  const members: Member[] = [member('manifest.json', mbytes)];
  if (b.signKey && !e.noResign) members.push(member('manifest.sig', imageSigner(b.signKey).sign(mbytes)));
  for (const x of entries) members.push(member(x.name, x.body));
  return join(members);
}

/** The image of `b` as it is. */
export const original = (b: Base): Buffer => join(b.members);

/**
 * The image of `b` with one more entry of `size` zero bytes (a hole of a sparse file, so it
 * costs no disk), listed in the manifest with its true sha256 (`zerosSha256`): every check
 * passes but the size, which no reader may allocate.
 */
export function hugeEntry(b: Base, size: number, zerosSha256: string): Variant {
  const name = 'files/999999-contents';
  const entries = b.members.slice(1).filter((m) => m.name !== 'manifest.sig');
  const manifest = clone(b.manifest);
  manifest.entries = [...entries.map((x) => ({ name: x.name, size: x.body.length, sha256: sha256(x.body) })), { name, size, sha256: zerosSha256 }];
  const mbytes = Buffer.from(JSON.stringify(manifest));
  const members: Member[] = [member('manifest.json', mbytes)];
  if (b.signKey) members.push(member('manifest.sig', imageSigner(b.signKey).sign(mbytes)));
  members.push(...entries.map((x) => member(x.name, x.body)));
  const head = Buffer.concat([join(members, Buffer.alloc(0)), header(name, size)]);
  return {
    base: b.name, family: 'huge', what: `an entry of ${size} bytes (a hole), its sha256 right`, image: Buffer.alloc(0),
    expect: 'refused', codes: ['EIMAGE'],
    write: (path) => {
      const fd = openSync(path, 'w');
      try {
        writeSync(fd, head, 0, head.length, 0);
        const end = head.length + Math.ceil(size / BLOCK) * BLOCK;
        writeSync(fd, Buffer.alloc(2 * BLOCK), 0, 2 * BLOCK, end);
      } finally {
        closeSync(fd);
      }
    },
  };
}

// ---------------------------------------------------------------- bytes.*

function bytesFlip(c: Context, b: Base): Variant {
  const img = Buffer.from(original(b));
  const n = c.rng.range(1, 8);
  // Half the time near the start (headers, manifest), where most structure is.
  const span = c.rng.chance(0.5) ? Math.min(img.length, 4096) : img.length;
  const at: number[] = [];
  for (let i = 0; i < n; i++) {
    const o = c.rng.int(span);
    img[o] = img[o]! ^ (1 << c.rng.int(8));
    at.push(o);
  }
  return { base: b.name, family: 'bytes.flip', what: `${n} bit(s) flipped at ${at.join(',')}`, image: img, expect: 'any' };
}

function bytesSet(c: Context, b: Base): Variant {
  const img = Buffer.from(original(b));
  const n = c.rng.range(1, 4);
  const at: number[] = [];
  for (let i = 0; i < n; i++) {
    const o = c.rng.int(c.rng.chance(0.5) ? Math.min(img.length, 4096) : img.length);
    img[o] = c.rng.pick([0, 0xff, 0x80, 0x7f, 0x30, 0x37, 0x38, 0x20, 0x2f, 0x2e, 0x22, 0x5c, 0x7b, 0x5b, c.rng.int(256)]);
    at.push(o);
  }
  return { base: b.name, family: 'bytes.set', what: `${n} byte(s) set at ${at.join(',')}`, image: img, expect: 'any' };
}

function bytesTruncate(c: Context, b: Base): Variant {
  const img = original(b);
  const cut = c.rng.weighted<() => number>([
    [3, () => c.rng.int(img.length)],
    [1, () => c.rng.int(Math.ceil(img.length / BLOCK)) * BLOCK],
    [1, () => c.rng.pick([0, 1, 511, 512, 513, 1024, img.length - 1024, img.length - 512, img.length - 1])],
    [1, () => c.rng.int(Math.min(img.length, 8192))],
  ])();
  const at = Math.max(0, Math.min(img.length, cut));
  return { base: b.name, family: 'bytes.truncate', what: `cut at byte ${at} of ${img.length}`, image: img.subarray(0, at), expect: at === img.length ? 'same' : 'any' };
}

function bytesAppend(c: Context, b: Base): Variant {
  const img = original(b);
  const tail = c.rng.weighted<() => Buffer>([
    [1, () => c.rng.bytes(c.rng.range(1, 2000))],
    [1, () => Buffer.alloc(BLOCK * c.rng.range(1, 8))],
    [1, () => join([member('extra.json', Buffer.from('{}'))])],
    [1, () => header('late', 1 << 30)],
  ])();
  return { base: b.name, family: 'bytes.append', what: `${tail.length} bytes appended after the end marker`, image: Buffer.concat([img, tail]), expect: 'any' };
}

// ---------------------------------------------------------------- tar.*

const ZEROS = (n: number): Buffer => Buffer.alloc(n);

/** A header field of a member set to something else. */
function tarHeader(c: Context, b: Base): Variant {
  const members: Member[] = b.members.map((m) => ({ ...m, header: Buffer.from(m.header) }));
  const i = c.rng.int(members.length);
  const m = members[i]!;
  const field = c.rng.pick(Object.keys(FIELDS) as Field[]);
  const [off, len] = FIELDS[field];
  const value = c.rng.weighted<() => Buffer>([
    [3, () => c.rng.bytes(len)],
    [2, () => ZEROS(len)],
    [2, () => Buffer.alloc(len, 0x37)],
    [1, () => Buffer.alloc(len, 0x20)],
    [1, () => Buffer.alloc(len, 0xff)],
    [2, () => Buffer.from(`${c.rng.int(2 ** 30).toString(8)}\0`.padStart(len, '0').slice(-len), 'latin1')],
    [1, () => Buffer.from('../../../etc/passwd\0'.slice(0, len), 'latin1')],
  ])();
  value.copy(m.header, off, 0, len);
  const fixed = c.rng.chance(0.75);
  if (fixed) fixChecksum(m.header);
  const harmless = fixed && ['mode', 'uid', 'gid', 'mtime', 'uname', 'gname', 'devmajor', 'devminor', 'linkname', 'version'].includes(field);
  return {
    base: b.name, family: 'tar.header', what: `member ${i} (${m.name}) field ${field} set${fixed ? ', checksum fixed' : ''}`,
    image: join(members), expect: harmless ? 'same' : 'any',
  };
}

/** The size field of a member: wrong, huge, base-256, negative, garbage, or from a pax record. */
function tarSize(c: Context, b: Base): Variant {
  const members: Member[] = b.members.map((m) => ({ ...m, header: Buffer.from(m.header) }));
  const i = c.rng.int(members.length);
  const m = members[i]!;
  const h = m.header;
  let what: string;
  const kind = c.rng.int(8);
  const octal = (n: number): void => { h.write(`${n.toString(8).padStart(11, '0')}\0`, 124, 'latin1'); };
  if (kind === 0) { const n = Math.max(0, m.body.length + c.rng.range(-600, 600)); octal(n); what = `size ${n} (data ${m.body.length})`; }
  else if (kind === 1) { octal(8 ** 11 - 1); what = 'size 8^11-1 (octal 77777777777)'; }
  else if (kind === 2) {
    // GNU base-256: 0x80, then a big-endian number in 11 bytes.
    h[124] = 0x80;
    const big = c.rng.pick([2n ** 33n, 2n ** 53n, 2n ** 64n, 2n ** 87n, BigInt(m.body.length)]);
    for (let k = 0; k < 11; k++) h[135 - k] = Number((big >> BigInt(8 * k)) & 0xffn);
    what = `base-256 size ${big}`;
  } else if (kind === 3) { h.fill(0xff, 124, 136); what = 'base-256 negative size (-1)'; }
  else if (kind === 4) { h.write(c.rng.pick(['99999999999\0', '-0000000001\0', ' \0\0\0\0\0\0\0\0\0\0\0', 'NaN\0', '0x10\0', '1e9\0']), 124, 'latin1'); what = 'size field not octal'; }
  else {
    const v = c.rng.pick(['-1', 'NaN', '1e300', '9007199254740993', String(2 ** 40), '', '0x10', ' 12', String(m.body.length + 1), String(Math.max(0, m.body.length - 1)), '4294967296']);
    members.splice(i, 0, pax([['size', v]]));
    what = `pax size record ${JSON.stringify(v)} before member ${i}`;
  }
  fixChecksum(h);
  return { base: b.name, family: 'tar.size', what: `member ${i} (${m.name}): ${what}`, image: join(members), expect: 'any' };
}

/** The type of a member, and pax headers with hostile records. */
function tarType(c: Context, b: Base): Variant {
  const members: Member[] = b.members.map((m) => ({ ...m, header: Buffer.from(m.header) }));
  const i = c.rng.int(members.length);
  if (c.rng.chance(0.4)) {
    const records = c.rng.pick<Array<[string, string]>>([
      [['path', '../../etc/passwd']], [['path', '/etc/passwd']], [['path', 'a\u0000b']], [['path', 'x'.repeat(10_000)]],
      [['path', '']], [['path', 'manifest.json']], [['linkpath', '/etc/shadow'], ['path', 'tree.json']],
      [['size', '1'], ['size', '-5']], [['uid', 'x'], ['mtime', 'NaN']], [['path', members[(i + 1) % members.length]!.name]],
      [['comment', 'y'.repeat(200_000)]],
    ]);
    const p = pax(records);
    if (c.rng.chance(0.2)) { p.header.write(c.rng.pick(['g', 'L', 'K']), 156, 'latin1'); fixChecksum(p.header); }
    if (c.rng.chance(0.1)) { p.body.write('99999999 '); }
    members.splice(i, 0, p);
    return { base: b.name, family: 'tar.pax', what: `pax header before member ${i}: ${records.map(([k, v]) => `${k}=${v.slice(0, 20)}`).join(' ')}`, image: join(members), expect: 'any' };
  }
  const t = c.rng.pick(['1', '2', '3', '4', '5', '6', 'g', 'L', 'K', 'x', '\0', 'A', 'D', 'M', 'S', 'V', '7']);
  members[i]!.header.write(t, 156, 'latin1');
  if (t === '2' || t === '1') members[i]!.header.write('/etc/passwd', 157, 'latin1');
  fixChecksum(members[i]!.header);
  return { base: b.name, family: 'tar.type', what: `member ${i} (${members[i]!.name}) of type ${JSON.stringify(t)}`, image: join(members), expect: t === '7' || t === '\0' ? 'same' : 'any' };
}

/** Whole members: extra, duplicated, missing, swapped, renamed; the end marker. */
function tarMembers(c: Context, b: Base): Variant {
  const members: Member[] = b.members.map((m) => ({ ...m, header: Buffer.from(m.header) }));
  const n = members.length;
  let end = Buffer.alloc(2 * BLOCK);
  let what: string;
  const op = c.rng.int(11);
  if (op === 0) { const i = c.rng.int(n); members.splice(c.rng.int(n + 1), 0, members[i]!); what = `member ${i} (${members[i]!.name}) twice`; }
  else if (op === 1) { const i = c.rng.int(n); what = `member ${i} (${members[i]!.name}) missing`; members.splice(i, 1); }
  else if (op === 2) {
    const i = c.rng.int(n), j = c.rng.int(n);
    [members[i], members[j]] = [members[j]!, members[i]!];
    what = `members ${i} and ${j} swapped`;
  } else if (op === 3) {
    const name = c.rng.pick(['../escape', '/etc/passwd', 'tasks/../../x', 'a\u0000b', 'x'.repeat(99), 'manifest.json', 'manifest.sig',
      'files/../../../tmp/x', '', '.', 'tasks', 'tasks/', `${'d/'.repeat(49)}x`, '\u00e9\u0301', 'tree.json']);
    members.splice(c.rng.int(n + 1), 0, member(name, c.rng.pick([Buffer.from('{}'), Buffer.alloc(0), c.rng.bytes(700)])));
    what = `extra member ${JSON.stringify(name)}`;
  } else if (op === 4) {
    // A long name through a pax path record (the reader takes pax paths).
    const name = c.rng.pick(['l'.repeat(300), `tasks/${'../'.repeat(60)}etc/shadow`, `${'x/'.repeat(2000)}y`]);
    const i = c.rng.int(n + 1);
    members.splice(i, 0, pax([['path', name]]), member('placeholder', Buffer.from('{}')));
    what = `extra member with a pax name of ${name.length} characters`;
  } else if (op === 5) {
    const i = c.rng.int(n);
    const name = c.rng.pick(['../tree.json', '/tree.json', './tree.json', 'tree.json\u0000x', 'TREE.JSON', `${members[i]!.name}/`, `${members[i]!.name} `]);
    members[i]!.header.fill(0, 0, 100);
    members[i]!.header.write(name, 0, 100, 'utf8');
    fixChecksum(members[i]!.header);
    what = `member ${i} renamed ${JSON.stringify(name)}`;
  } else if (op === 6) { end = Buffer.alloc(0); what = 'no end-of-archive marker'; }
  else if (op === 7) { end = Buffer.alloc(BLOCK); what = 'one zero block as the end marker'; }
  else if (op === 8) {
    // The prefix field (ustar): name = prefix/name.
    const i = c.rng.int(n);
    members[i]!.header.write(c.rng.pick(['..', '/', 'tasks', 'x'.repeat(155)]), 345, 'utf8');
    fixChecksum(members[i]!.header);
    what = `member ${i} with a prefix field`;
  } else if (op === 9) {
    const i = c.rng.int(n);
    members.splice(i + 1, 0, { name: 'zero', header: Buffer.alloc(BLOCK), body: Buffer.alloc(0) });
    what = `a zero block after member ${i}`;
  } else {
    // The signature entry where it does not belong.
    const sig = member('manifest.sig', Buffer.from('{"format":"ferry-signature"}\n'));
    members.splice(c.rng.range(0, n), 0, sig);
    what = 'a manifest.sig member elsewhere';
  }
  return { base: b.name, family: 'tar.members', what, image: join(members, end), expect: 'any' };
}

// ---------------------------------------------------------------- manifest.*

function manifestField(c: Context, b: Base): Variant {
  const r = c.rng;
  let what = '';
  const edit = (m: Json, raw: (t: string) => string): void => {
    const op = r.int(10);
    if (op <= 4) {
      const paths = allPaths(m);
      const p = r.pick(paths);
      const old = getAt(m, p);
      const v = r.chance(0.1) ? raw(rawText(r)) : nastyValue(r, old);
      getAt(m, p.slice(0, -1))[p.at(-1)!] = v;
      what = `${classOf(p)} = ${short(v)}`;
    } else if (op === 5) {
      const p = r.pick(allPaths(m));
      const parent = getAt(m, p.slice(0, -1));
      if (Array.isArray(parent)) parent.splice(p.at(-1) as number, 1); else delete parent[p.at(-1)!];
      what = `${classOf(p)} removed`;
    } else if (op === 6) {
      const e = r.pick(m.entries as Json[]);
      const k = r.int(6);
      if (k === 0) { e.size += r.pick([1, -1, 512, -512, 2 ** 40]); what = `entries ${e.name} size off`; }
      else if (k === 1) { e.sha256 = e.sha256.toUpperCase(); what = `entries ${e.name} sha256 in capitals`; }
      else if (k === 2) { e.sha256 = r.pick(['0'.repeat(64), `${e.sha256}0`, e.sha256.slice(1)]); what = `entries ${e.name} sha256 changed`; }
      else if (k === 3) { e.name = r.pick(['../x', '/x', `${e.name}/`, 'manifest.json', 'manifest.sig', 'x'.repeat(300), 'a\0b', '']); what = `entries name ${short(e.name)}`; }
      else if (k === 4) { (m.entries as Json[]).push({ ...e }); what = `entries ${e.name} twice`; }
      else { (m.entries as Json[]).reverse(); what = 'entries reversed'; }
    } else if (op === 7) {
      const k = r.int(5);
      if (k === 0) { m.tasks = [...m.tasks, m.tasks[0]]; what = 'tasks lists the root twice'; }
      else if (k === 1) { m.tasks = [m.tasks[0], r.pick([0, -1, 4_194_305, 1.5, 1])]; what = 'tasks with a bad pid'; }
      else if (k === 2) { m.root.pid = r.pick([m.tasks[1] ?? 1, 0, 4_194_304, 1]); what = `root.pid ${m.root.pid}`; }
      else if (k === 3) { m.tasks = raw(`[${Array.from({ length: 200_000 }, (_, i) => i + 2).join(',')}]`); what = 'tasks: 200000 pids'; }
      else { m.tasks = [...m.tasks].reverse(); what = 'tasks reversed'; }
    } else if (op === 8) {
      const k = r.int(4);
      if (k === 0) { m.host.xstateSize = r.pick([0, 1, 65537, 2 ** 31, -1]); what = `host.xstateSize ${m.host.xstateSize}`; }
      else if (k === 1) { m.host.xfeatures = r.pick(['0x0', '0xffffffffffffffff', '0x', 'ff', '0x1ffffffffffffffff']); what = `host.xfeatures ${m.host.xfeatures}`; }
      else if (k === 2) { m.host.vdsoLayout = r.pick([[], [{ name: '[vdso]', size: -1 }], Array(9).fill({ name: 'x', size: 1 })]); what = 'host.vdsoLayout'; }
      else { m.formatVersion = r.pick([0, 5, '1', 1.0000001]); what = `formatVersion ${m.formatVersion}`; }
    } else {
      m[r.pick(['__proto__', 'constructor', 'extra', 'entries2'])] = r.pick([{ entries: [] }, raw(rawText(r)), 1]);
      what = 'an unknown field';
    }
  };
  // The manifest as a whole, now and then.
  if (r.chance(0.08)) {
    const text = r.pick(['', 'null', '[]', '"ferry-image"', '{', '{}', '{"format":"ferry-image"}', `{"format":"ferry-image","formatVersion":1${' '.repeat(1 << 20)}}`,
      '\ufeff{}', rawText(r)]);
    const mbytes = Buffer.from(text);
    const members: Member[] = [member('manifest.json', mbytes)];
    if (b.signKey) members.push(member('manifest.sig', imageSigner(b.signKey).sign(mbytes)));
    members.push(...b.members.slice(1).filter((m) => m.name !== 'manifest.sig'));
    return { base: b.name, family: 'manifest.text', what: `manifest.json is ${short(text)}`, image: join(members), expect: 'refused' };
  }
  const image = rebuild(b, { manifest: edit });
  return { base: b.name, family: 'manifest.field', what, image, expect: 'any' };
}

const short = (v: unknown): string => {
  if (typeof v === 'string') return v.startsWith('@@RAW') ? 'a raw JSON text' : JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…(${v.length})` : v);
  try {
    const s = JSON.stringify(v) ?? String(v);
    return s.length > 60 ? `${s.slice(0, 60)}…` : s;
  } catch { return String(v); }
};

// ---------------------------------------------------------------- entry.*

/** The next field class of the sweep, edited one way. */
function entryField(c: Context): Variant {
  const r = c.rng;
  const item = c.sweep[c.sweepAt.i++ % c.sweep.length]!;
  const b = c.bases.find((x) => x.name === item.base)!;
  const names = item.entry === 'tasks/*/task.json' ? taskNames(b) : [item.entry];
  // A task whose record has this class (the tree's tasks differ).
  const candidates = names.map((n) => ({ n, paths: allPaths(parseEntry(b, n)).filter((p) => classOf(p) === item.cls) }))
    .filter((x) => x.paths.length > 0);
  const { n: name, paths } = r.pick(candidates);
  const p = r.pick(paths);
  let what = '';
  const image = rebuild(b, {
    json: {
      [name]: (v, raw) => {
        const parent = getAt(v, p.slice(0, -1));
        const key = p.at(-1)!;
        const old = parent[key];
        const op = r.weighted<string>([[60, 'set'], [8, 'raw'], [14, 'delete'], [8, 'array'], [5, 'proto'], [5, 'swap']]);
        if (op === 'set' || (op === 'array' && !Array.isArray(old))) {
          parent[key] = nastyValue(r, old);
          what = `= ${short(parent[key])}`;
        } else if (op === 'raw') {
          parent[key] = raw(rawText(r));
          what = '= a raw JSON text (deep, huge or odd number)';
        } else if (op === 'delete') {
          if (Array.isArray(parent)) parent.splice(key as number, 1); else delete parent[key];
          what = 'removed';
        } else if (op === 'array') {
          const k = r.int(4);
          parent[key] = k === 0 ? [] : k === 1 ? [...old, ...old] : k === 2 ? Array.from({ length: r.pick([1000, 70_000]) }, () => old[0] ?? 0) : [...old].reverse();
          what = ['emptied', 'doubled', 'an item repeated', 'reversed'][k]!;
        } else if (op === 'proto') {
          const obj = old !== null && typeof old === 'object' && !Array.isArray(old) ? old : parent;
          if (!Array.isArray(obj)) {
            obj[r.pick(['__proto__', 'constructor', 'toString', 'valueOf', 'hasOwnProperty', 'then'])] = nastyValue(r, {});
            what = 'with a prototype-named key';
          } else {
            obj.push(nastyValue(r, obj[0]));
            what = 'an item added';
          }
        } else {
          const other = r.pick(paths);
          const o = getAt(v, other);
          parent[key] = o === undefined ? null : clone(o);
          what = `swapped with ${other.join('.')}`;
        }
      },
    },
  });
  return { base: b.name, family: 'entry.field', what: `${name} ${p.join('.')} ${what}`, image, expect: 'any' };
}

/** A whole JSON entry replaced, or a binary entry cut, grown or changed. */
function entryWhole(c: Context, b: Base): Variant {
  const r = c.rng;
  const names = b.members.slice(1).map((m) => m.name).filter((n) => n !== 'manifest.sig');
  const name = r.pick(names);
  const old = entryBody(b, name)!;
  let body: Buffer | null;
  let what: string;
  if (name.endsWith('.json')) {
    const k = r.int(8);
    if (k === 0) { body = null; what = 'removed (manifest too)'; }
    else if (k === 1) { body = old.subarray(0, r.int(old.length)); what = 'cut'; }
    else if (k === 2) { body = Buffer.from(r.pick(['', 'null', '0', '"x"', '[]', '{}', 'true', '{"files":null}', '{"processes":[],"root":1}', '\ufeff{}'])); what = `replaced by ${body.toString()}`; }
    else if (k === 3) { body = Buffer.from(rawText(r)); what = 'replaced by a raw JSON text'; }
    else if (k === 4) { body = Buffer.concat([old, Buffer.from(r.pick([' ', '\n', 'x', '{}', '\0']))]); what = 'with trailing bytes'; }
    else if (k === 5) { body = Buffer.from(JSON.stringify(JSON.parse(old.toString()), null, r.pick([1, '\t']))); what = 'reformatted (same values)'; }
    else if (k === 6) { body = r.bytes(old.length); what = 'random bytes'; }
    else { body = Buffer.from(`{"a":${old.toString()},${old.toString().slice(1)}`); what = 'with a duplicate-key wrapper'; }
    return { base: b.name, family: 'entry.text', what: `${name} ${what}`, image: rebuild(b, { bytes: { [name]: body } }), expect: name.endsWith('.json') && what.startsWith('reformatted') ? 'same' : 'any' };
  }
  const k = r.int(6);
  if (k === 0) { body = old.subarray(0, r.int(old.length)); what = `cut to ${body.length}`; }
  else if (k === 1) { body = old.subarray(0, Math.max(0, old.length - 4096)); what = 'a page shorter'; }
  else if (k === 2) { body = Buffer.concat([old, r.bytes(r.pick([1, 4096, 100_000]))]); what = 'grown'; }
  else if (k === 3) { body = Buffer.from(old); for (let i = 0; i < 8; i++) { const j = r.int(Math.max(1, body.length)); body[j] = body[j]! ^ 0xff; } what = 'bytes changed'; }
  else if (k === 4) { body = Buffer.alloc(0); what = 'emptied'; }
  else { body = null; what = 'removed'; }
  return { base: b.name, family: 'entry.binary', what: `${name} ${what}`, image: rebuild(b, { bytes: { [name]: body } }), expect: 'any' };
}

// ---------------------------------------------------------------- files.*

const KINDS = ['reg', 'chr', 'tty', 'pipe', 'fifo', 'unix', 'inet', 'eventfd', 'signalfd', 'timerfd', 'eventpoll', 'inotify',
  'fanotify', 'memfd', 'ghost', 'dir', 'netlink', 'packet', '', 'REG', 'sock', 'toString', '__proto__', 'constructor'];

function filesRecord(c: Context, b: Base): Variant {
  const r = c.rng;
  let what = '';
  const image = rebuild(b, {
    json: {
      'files.json': (v) => {
        const f = r.pick(v.files as Json[]);
        const k = r.int(3);
        if (k === 0) { what = `file ${f.id} (${f.kind}) of kind ${JSON.stringify(f.kind = r.pick(KINDS))}`; }
        else if (k === 1) {
          const key = r.pick(Object.keys(f).filter((x) => x !== 'id' && x !== 'kind'));
          delete f[key];
          what = `file ${f.id} (${f.kind}) without ${key}`;
        } else {
          const kind = r.pick(KINDS.slice(0, 15));
          for (const key of Object.keys(f)) if (key !== 'id') delete f[key];
          f.kind = kind;
          what = `file ${f.id} of kind ${kind} with no fields`;
        }
      },
    },
  });
  return { base: b.name, family: 'files.record', what, image, expect: 'any' };
}

// ---------------------------------------------------------------- confine.*

const O_WRONLY = 0o1, O_CREAT = 0o100, O_EXCL = 0o200, O_TRUNC = 0o1000, O_APPEND = 0o2000, O_NONBLOCK = 0o4000,
  O_DIRECTORY = 0o200000, O_NOFOLLOW = 0o400000, O_NOATIME = 0o1000000, O_PATH = 0o10000000, O_TMPFILE = 0o20200000,
  O_LARGEFILE = 0o100000, O_RDWR = 0o2;

/** Ways to name the canary file (or its directory) from the host's root. */
function canaryPaths(t: Targets, file: boolean): string[] {
  const base = t.dir.split('/').pop()!;
  const leaf = file ? '/canary' : '';
  return [
    `${t.dir}${leaf}`, `${t.dir}/../${base}${leaf}`, `${t.dir}//.${leaf}`, `/../../..${t.dir}${leaf}`,
    `${t.trap}/esc${leaf}`, file ? `${t.trap}/abs` : `${t.trap}/esc/`, `/proc/self/root${t.dir}${leaf}`,
    `/proc/${process.pid}/root${t.dir}${leaf}`, `/proc/thread-self/root${t.dir}${leaf}`, `/proc/${process.pid}/cwd/../../..${t.dir}${leaf}`,
    file ? `/proc/${process.pid}/fd/${t.fd}` : `/proc/${process.pid}/fd/${t.fd}/..`, `${t.dir.slice(1)}${leaf}`,
    `${'../'.repeat(20)}${t.dir.slice(1)}${leaf}`,
  ];
}

/** Any number of dangerous flags on a read-only access mode. */
function hostileFlags(r: Rng): number {
  let f = O_LARGEFILE;
  for (const bit of [O_TRUNC, O_CREAT, O_EXCL, O_APPEND, O_NOFOLLOW, O_NONBLOCK, O_NOATIME, O_TMPFILE, O_PATH, O_DIRECTORY]) if (r.chance(0.3)) f |= bit;
  return f;
}

function confine(c: Context, b: Base): Variant {
  const r = c.rng;
  const t = c.targets;
  const task = `tasks/${b.root}/task.json`;
  let what = '';
  let expect: Expect = 'any';
  const k = r.int(9);
  const json: Record<string, (v: Json) => void> = {};
  if (k <= 2) {
    // The log's record (stdout) re-pointed at the canary, read-only with hostile flags.
    json['files.json'] = (v) => {
      const reg = (v.files as Json[]).find((f) => f.kind === 'reg');
      const dirTarget = r.chance(0.2);
      const path = r.pick(canaryPaths(t, !dirTarget));
      const flags = hostileFlags(r) | (dirTarget ? O_DIRECTORY : 0);
      Object.assign(reg, { path, link: path, flags, directory: dirTarget });
      const st = r.int(3);
      if (st === 0 || dirTarget) { delete reg.size; delete reg.mtimeNs; } else if (st === 1) Object.assign(reg, { size: t.size, mtimeNs: t.mtimeNs });
      what = `file ${reg.id} -> ${path} flags 0o${flags.toString(8)}`;
    };
  } else if (k === 3) {
    // A deleted file to make again in the canary directory, under a canary's name or a new one.
    json['files.json'] = (v) => {
      const reg = (v.files as Json[]).find((f) => f.kind === 'reg');
      const path = r.pick([`${t.dir}/canary`, `${t.dir}/new-file`, `${t.trap}/esc/canary`, `${t.trap}/esc/new`, `/proc/self/root${t.dir}/canary`, `${t.sub}/deep`]);
      for (const key of Object.keys(reg)) if (key !== 'id') delete reg[key];
      Object.assign(reg, { kind: 'ghost', path, flags: r.pick([O_RDWR, O_WRONLY | O_APPEND, O_RDWR | O_TRUNC | O_CREAT]) | O_LARGEFILE, pos: '0', mode: 0o644, uid: 0, gid: 0,
        ghost: `${r.int(300)}:${r.int(1 << 20)}`, size: r.pick([0, 5, 4096]), extents: [], data: '' });
      what = `file ${reg.id} a deleted file at ${path}`;
    };
  } else if (k === 4) {
    // A device or a FIFO record naming the canary.
    json['files.json'] = (v) => {
      const reg = (v.files as Json[]).find((f) => f.kind === 'reg');
      const path = r.pick(canaryPaths(t, true));
      const kind = r.pick(['chr', 'fifo', 'tty', 'unix', 'inotify']);
      for (const key of Object.keys(reg)) if (key !== 'id') delete reg[key];
      // A unix socket named at the canary (a stale socket file would be unlinked to bind there),
      // an inotify watch on it: both must leave it as it is.
      const opts = { passcred: 0, passsec: 0, passpidfd: 0, rcvbuf: 212992, sndbuf: 212992, peekOff: -1, rcvlowat: 1 };
      Object.assign(reg, kind === 'chr' ? { kind, path, flags: r.pick([0, O_WRONLY, O_RDWR | O_TRUNC]), pos: '0', major: 1, minor: 3 }
        : kind === 'fifo' ? { kind, path, dev: '0', ino: '0', flags: O_WRONLY, size: 65536, data: Buffer.from('pwned').toString('base64') }
          : kind === 'unix' ? { kind, ino: '0', type: r.pick(['stream', 'dgram']), flags: 0, role: r.pick(['unconnected', 'listener']), backlog: 5, embryos: [], accepted: [],
            name: { path: path.slice(0, 100), file: r.pick([null, { mode: 0o777, uid: 65534, gid: 65534 }]) }, peer: null, listener: null, shutdown: 0, opts, queue: null }
            : kind === 'inotify' ? { kind, flags: 0, watches: [{ wd: 1, mask: 0x2, path, dev: '0:0', ino: '0' }] }
              : { kind, role: 'external', path, flags: O_RDWR });
      what = `file ${reg.id} a ${kind} record at ${path}`;
    };
  } else if (k <= 6) {
    // An anonymous area with stored pages made a shared writable mapping of the canary: refused.
    json[task] = (v) => {
      const area = (v.vmas as Json[]).find((m) => m.kind === 'anon' && m.runs.length > 0 && !m.shmem && !m.sysv) ?? (v.vmas as Json[]).find((m) => m.runs.length > 0);
      const path = r.pick(canaryPaths(t, true));
      Object.assign(area, { kind: 'file', shared: true, prot: r.pick([3, 1, 7]), name: path, file: { path, offset: r.pick(['0x0', '0x1000']), dev: '0:0', ino: '0', size: Number(t.size) } });
      if (r.chance(0.5)) area.file.mtimeNs = t.mtimeNs;
      if (r.chance(0.2)) area.shmem = { id: '0:1:2', offset: '0x0' };
      what = `area ${area.start} a shared mapping of ${path} with pages`;
    };
    expect = 'refused';
  } else if (k === 7) {
    // The same, but private (pages go to a private copy) or through a memfd marker (a memfd restore creates).
    json[task] = (v) => {
      const area = (v.vmas as Json[]).find((m) => m.kind === 'anon' && m.runs.length > 0 && !m.shmem && !m.sysv) ?? (v.vmas as Json[]).find((m) => m.runs.length > 0);
      const path = r.pick(canaryPaths(t, true));
      const memfd = r.chance(0.5);
      Object.assign(area, { kind: 'file', shared: memfd, prot: 3, name: path, file: { path, offset: '0x0', dev: '0:0', ino: '0', size: Number(t.size), mtimeNs: t.mtimeNs } });
      if (memfd) area.memfd = { id: `0:${r.int(99)}:${r.int(1 << 20)}`, name: r.pick(['x', '../../x', '']), size: r.pick([4096, 0, -1, 2 ** 40, 'x']), mode: 0o600, seals: r.pick([0, 15, -1]) };
      what = `area ${area.start} a ${memfd ? 'memfd-marked shared' : 'private'} mapping of ${path} with pages`;
    };
  } else {
    json[task] = (v) => {
      const which = r.pick(['exe', 'cwd']);
      v[which] = r.pick(which === 'exe' ? [...canaryPaths(t, true), `${t.dir}`, '/proc/self/exe'] : canaryPaths(t, false));
      what = `${which} ${v[which]}`;
    };
  }
  const image = rebuild(b, { json }); // sets `what`
  return { base: b.name, family: `confine.${['file', 'file', 'file', 'ghost', 'special', 'shared-map', 'shared-map', 'map', 'task'][k]}`, what, image, expect };
}

// ---------------------------------------------------------------- pages.*

function pages(c: Context, b: Base): Variant {
  const r = c.rng;
  const pid = r.pick(b.manifest.tasks as number[]);
  const task = `tasks/${pid}/task.json`;
  const pagesName = `tasks/${pid}/pages.bin`;
  const rec = parseEntry(b, task);
  const stored = (rec.vmas as Json[]).map((m, i) => ({ m, i })).filter(({ m }) => m.runs.length > 0);
  const pageCount = (m: Json): number => Number((BigInt(m.end) - BigInt(m.start)) / 4096n);
  let what = '';
  let expect: Expect = 'refused';
  let bytes: Record<string, Buffer | null> | undefined;
  const k = r.int(13);
  if (k === 9 || k === 10) return chunkList(c, b, pagesName, k === 10);
  const json = {
    [task]: (v: Json) => {
      const { i } = r.pick(stored);
      const m = v.vmas[i];
      const n = pageCount(m);
      if (k === 0) { m.runs[m.runs.length - 1] = [n - 1, 2]; what = `vmas[${i}] run [${n - 1}, 2] past its ${n} pages`; }
      else if (k === 1) { m.runs.push([r.pick([n, 2 ** 31, 2 ** 52]), 1]); what = `vmas[${i}] run starting past its end`; }
      else if (k === 2) { m.runs[0] = [0, r.pick([n + 1, 2 ** 31, 2 ** 53 - 1])]; what = `vmas[${i}] run of more pages than it has`; }
      else if (k === 3) { m.runs[0] = r.pick([[-1, 1], [0, -1], [0.5, 1], [0, 1.5], [1, -1]]); what = `vmas[${i}] run ${JSON.stringify(m.runs[0])}`; }
      else if (k === 4) { m.pagesOffset = r.pick([v.pagesBytes, v.pagesBytes + 4096, 2 ** 40, -4096, 1]); what = `vmas[${i}] pagesOffset ${m.pagesOffset}`; expect = m.pagesOffset === 1 ? 'any' : 'refused'; }
      else if (k === 5) {
        // Consistent inside task.json, beyond the pages entry: pagesBytes and the offset moved together.
        const more = 4096 * r.pick([1, 16, 2 ** 20]);
        v.pagesBytes += more;
        m.pagesOffset += more;
        what = `vmas[${i}] pagesOffset and pagesBytes ${more} bytes beyond the pages entry`;
      } else if (k === 6) {
        bytes = { [pagesName]: entryBody(b, pagesName)!.subarray(0, Math.max(0, entryBody(b, pagesName)!.length - 4096 * r.range(1, 4))) };
        what = 'the pages entry cut short (task.json unchanged)';
      } else if (k === 7) {
        const s = BigInt(m.start);
        const pick = r.int(5);
        if (pick === 0) m.end = m.start;
        else if (pick === 1) m.end = `0x${(s - 4096n).toString(16)}`;
        else if (pick === 2) m.start = `0x${(s + 1n).toString(16)}`;
        else if (pick === 3) m.end = '0xffffffffffffffff';
        else m.start = v.vmas[(i + 1) % v.vmas.length].start;
        what = `vmas[${i}] start/end ${m.start}-${m.end}`;
        expect = 'any';
      } else if (k === 11) {
        // Pages inherited copy-on-write (image/cow.ts) past the area's end.
        m.cow = [r.pick([[n, 1], [n - 1, 2], [0, n + 1], [2 ** 31, 1]])];
        what = `vmas[${i}] cow ${JSON.stringify(m.cow)} of ${n} pages`;
      } else if (k === 12) {
        // A stored page said to be inherited as well.
        m.cow = [m.runs[0]];
        what = `vmas[${i}] cow ${JSON.stringify(m.cow)} over a stored run`;
      } else {
        m.runs = [...m.runs, ...m.runs];
        what = `vmas[${i}] runs repeated`;
        expect = 'any';
      }
    },
  };
  const image = rebuild(b, { json, ...(k === 6 ? {} : {}) });
  return { base: b.name, family: 'pages', what: `${task} ${what}`, image: bytes ? rebuild(b, { bytes }) : image, expect };
}

/**
 * The image as it is but for the chunk list of a pages entry in its manifest (signed again):
 * lies about its length, chunk size or digests (refused, or a digest that differs fails the
 * restore when its chunk is written), or, `truthful`, the same bytes listed in other chunks or
 * with one sha256 (restored as it is).
 */
function chunkList(c: Context, b: Base, name: string, truthful: boolean): Variant {
  const r = c.rng;
  const manifest = clone(b.manifest);
  const e = (manifest.entries as Json[]).find((x) => x.name === name);
  const body = entryBody(b, name)!;
  let what = '';
  let expect: Expect = 'refused';
  if (e === undefined || !Array.isArray(e.chunks)) {
    what = 'no chunk list to edit';
    expect = 'same';
  } else if (truthful) {
    const size = r.pick([4096, 8192, 65536, 1 << 20, 16 << 20, 0]);
    if (size === 0) {
      delete e.chunkSize;
      delete e.chunks;
      e.sha256 = sha256(body);
      what = 'one sha256 for the whole entry';
    } else {
      e.chunkSize = size;
      e.chunks = Array.from({ length: Math.ceil(body.length / size) }, (_, i) => sha256(body.subarray(i * size, (i + 1) * size)));
      what = `listed again in chunks of ${size}`;
    }
    expect = 'same';
  } else {
    const chunks = e.chunks as string[];
    const k = r.int(8);
    if (k === 0) { chunks.pop(); what = 'one chunk fewer'; }
    else if (k === 1) { chunks.push(chunks[0] ?? '0'.repeat(64)); what = 'one chunk more'; }
    else if (k === 2) { e.chunkSize = r.pick([e.chunkSize * 2, e.chunkSize / 2, 4096, 16 << 20]); what = `chunkSize ${e.chunkSize}, the list as it was`; expect = 'any'; }
    else if (k === 3) { e.chunkSize = r.pick([0, 1, 4095, 4097, 32 << 20, 2 ** 53, -4096, '4194304', null]); what = `chunkSize ${short(e.chunkSize)}`; }
    else if (k === 4) { e.chunks = r.pick([null, {}, 'x', Array(200_000).fill('0'.repeat(64)), []]); what = `chunks ${Array.isArray(e.chunks) ? `a list of ${e.chunks.length}` : short(e.chunks)}`; }
    else if (k === 5) { const i = r.int(chunks.length); chunks[i] = r.pick(['0'.repeat(64), chunks[i]!.toUpperCase(), chunks[i]!.slice(1), 7]) as string; what = `chunks[${i}] changed`; expect = 'any'; }
    else if (k === 6) { chunks.reverse(); what = 'chunks reversed'; expect = 'any'; }
    else { e.sha256 = sha256(body); what = 'both sha256 and chunks'; }
  }
  const mbytes = Buffer.from(JSON.stringify(manifest));
  const members: Member[] = [member('manifest.json', mbytes)];
  if (b.signKey) members.push(member('manifest.sig', imageSigner(b.signKey).sign(mbytes)));
  members.push(...b.members.slice(1).filter((m) => m.name !== 'manifest.sig'));
  return { base: b.name, family: 'pages.chunks', what: `${name} ${what}`, image: join(members), expect };
}

// ---------------------------------------------------------------- creds.*

const CAP_SYS_ADMIN = 21, CAP_SETUID = 7, CAP_DAC_OVERRIDE = 1, CAP_NET_ADMIN = 12, CAP_SYS_PTRACE = 19;

function creds(c: Context, b: Base): Variant {
  const r = c.rng;
  const task = `tasks/${b.root}/task.json`;
  let what = '';
  const raise = (v: Json): string => {
    const t = v.creds.threads[r.int(v.creds.threads.length)];
    const k = r.int(8);
    const cap = `0x${(1n << BigInt(r.pick([CAP_SYS_ADMIN, CAP_SETUID, CAP_DAC_OVERRIDE, CAP_NET_ADMIN, CAP_SYS_PTRACE]))).toString(16)}`;
    if (k === 0) { const i = r.int(4); t.uids[i] = r.pick([0, 1000]); return `uids[${i}] ${t.uids[i]}`; }
    if (k === 1) { const i = r.int(4); t.gids[i] = r.pick([0, 27, 1000]); return `gids[${i}] ${t.gids[i]}`; }
    if (k === 2) { t.groups = [...t.groups, r.pick([0, 27, 42])]; return `groups ${t.groups}`; }
    if (k === 3) { const set = r.pick(['effective', 'permitted', 'inheritable', 'ambient']); t.caps[set] = r.pick([cap, '0x1ffffffffff', '0xffffffffffffffff']); return `caps.${set} ${t.caps[set]}`; }
    if (k === 4) { v.creds.oomScoreAdj = r.pick([-1, -500, -1000]); return `oomScoreAdj ${v.creds.oomScoreAdj}`; }
    if (k === 5) { t.sched = { ...t.sched, policy: r.pick([1, 2]), priority: r.pick([1, 50, 99]) }; return `sched ${t.sched.policy}/${t.sched.priority}`; }
    if (k === 6) { t.sched = { ...t.sched, nice: r.pick([-1, -10, -20]) }; return `nice ${t.sched.nice}`; }
    t.uids = [0, 0, 0, 0]; t.gids = [0, 0, 0, 0]; t.caps.effective = t.caps.permitted = '0x1ffffffffff';
    return 'root with every capability';
  };
  const image = rebuild(b, {
    json: {
      [task]: (v) => {
        const n = r.range(1, 3);
        what = Array.from({ length: n }, () => raise(v)).join(', ');
      },
    },
  });
  return { base: b.name, family: 'creds.raised', what, image, expect: 'refused', codes: ['EPRIVILEGE'] };
}

// ---------------------------------------------------------------- sign.*

function sign(c: Context, b: Base): Variant {
  const r = c.rng;
  const members: Member[] = b.members.map((m) => ({ ...m, header: Buffer.from(m.header), body: Buffer.from(m.body) }));
  const at = members.findIndex((m) => m.name === 'manifest.sig');
  const sig = members[at]!;
  let what: string;
  let codes: string[] | undefined;
  const k = r.int(8);
  const setSig = (body: Buffer): void => { members[at] = member('manifest.sig', body); };
  if (k === 0) { for (let i = 0; i < r.range(1, 4); i++) { const j = r.int(sig.body.length); sig.body[j] = sig.body[j]! ^ (1 << r.int(8)); } what = 'signature bytes flipped'; }
  else if (k === 1) { setSig(imageSigner(c.otherKey).sign(members[0]!.body)); what = 'signed by an untrusted key'; codes = ['EUNTRUSTED']; }
  else if (k === 2) { members.splice(at, 1); what = 'signature removed'; codes = ['EUNTRUSTED']; }
  else if (k === 3) { const [s] = members.splice(at, 1); members.splice(r.range(2, members.length), 0, s!); what = 'signature moved later'; }
  else if (k === 4) {
    const o = JSON.parse(sig.body.toString()) as Json;
    const key = r.pick(['format', 'version', 'algorithm', 'keyId', 'publicKey', 'signature', 'extra']);
    o[key] = nastyValue(r, o[key]);
    setSig(Buffer.from(`${JSON.stringify(o)}\n`));
    what = `signature field ${key} = ${short(o[key])}`;
    // A field the reader does not know is not looked at (the signature covers the manifest, not this entry).
    if (key === 'extra') return { base: b.name, family: 'sign', what, image: join(members), expect: 'any' };
  } else if (k === 5) { setSig(Buffer.concat([sig.body, Buffer.alloc(r.pick([800, 5000]), 0x20)])); what = 'signature entry oversized'; }
  else if (k === 6) {
    // The manifest changed after signing (an entry's sha256 for one of edited content).
    const m = JSON.parse(members[0]!.body.toString()) as Json;
    m.createdAt = '2000-01-01T00:00:00.000Z';
    members[0] = member('manifest.json', Buffer.from(JSON.stringify(m)));
    what = 'manifest changed after signing';
  } else { members.splice(at, 0, member('manifest.sig', sig.body)); what = 'signature twice'; }
  return { base: b.name, family: 'sign', what, image: join(members), expect: 'refused', ...(codes ? { codes } : {}) };
}

// ---------------------------------------------------------------- the mix

type Maker = (c: Context, b: Base) => Variant;

/** Families by weight, and which bases they apply to ('*': any but nobody, which is the creds base). */
const MIX: ReadonlyArray<readonly [number, string, Maker]> = [
  [9, '*', bytesFlip], [5, '*', bytesSet], [5, '*', bytesTruncate], [2, '*', bytesAppend],
  [6, '*', tarHeader], [5, '*', tarSize], [4, '*', tarType], [6, '*', tarMembers],
  [8, '*', manifestField],
  [30, 'sweep', (c) => entryField(c)], [5, '*', entryWhole], [6, '*', filesRecord],
  [7, 'counter', confine], [5, '*', pages], [4, 'nobody', creds], [3, 'counter-signed', sign],
];

/** Whether a variant whose generator is `rng` is of the sweep (the first draw of makeVariant). */
export function sweeps(rng: Rng): boolean {
  return rng.weighted(MIX.map((m) => [m[0], m] as const))[1] === 'sweep';
}

/** Variant number `i` (its own generator in `c.rng`). */
export function makeVariant(c: Context): Variant {
  const [, on, make] = c.rng.weighted(MIX.map((m) => [m[0], m] as const));
  const pool = on === '*' ? c.bases.filter((b) => b.name !== 'nobody') : c.bases.filter((b) => b.name === on || on === 'sweep');
  const b = c.rng.pick(pool.length > 0 ? pool : c.bases);
  return make(c, b);
}
