/**
 * manifest.json: the first entry of every image (docs/image-format.md). It names the format
 * and the host the image was made on, and lists every other entry with its size and sha256.
 */
import { FerryError } from '../errors.js';
import type { HostFacts } from '../host.js';
import { KNOWN_FEATURES, REQUIRES_FORMAT_VERSION } from './features.js';
import { SIGNATURE_NAME } from './sign.js';
import { VDSO_ENTRY } from './records.js';

export const IMAGE_FORMAT = 'ferry-image';
/**
 * The version this ferry writes, and the oldest it reads. 2: a TCP record's `tcp.state` names
 * a half-closed state (CLOSE_WAIT, FIN_WAIT1…) of a connection stored as 'established', which
 * a reader of version 1 would rebuild as ESTABLISHED without its FINs; version 1 images hold
 * nothing a version 2 reader takes otherwise. 3: an area's `cow` runs name pages it inherits
 * from its parent instead of storing them (image/cow.ts), which a reader of version 2 would
 * restore as zeros; older images hold none and are read as before. 4: a TCP record's
 * `tcp.urgent` marks an urgent byte in its receive queue (files/tcp-urgent.ts), which a reader
 * of version 3 would queue as an ordinary byte (one MSG_OOB had read would reappear in the
 * stream); and a thread may be in seccomp strict mode (`seccompStrict`), which a reader of
 * version 3 would restore without it (a sandboxed thread let out; it refused such threads at
 * checkpoint). Older images hold neither. 5: a process of tree.json may share its descriptor
 * table or fs struct with others (`sharesFiles`, `sharesFs`), which a reader of version 4
 * would give each its own (what one opens or where one moves no longer seen by the other; it
 * refused such trees at checkpoint); and a private area may lend pages (`lent`) that its
 * siblings inherit through their parent (image/cow.ts), which a reader of version 4 would
 * ignore, giving those siblings the parent's own page there instead. Older images hold none.
 * 6: a chunked entry may be `pageDigests` (an image taken under pre-copy), its chunk digests
 * made from per-page digests, which a reader of version 5 would take for plain sha256 of the
 * chunk and refuse as corrupt; an image without such an entry is still written as version 5
 * (PAGED_FORMAT_VERSION - 1), so readers of version 5 take it. 7: the manifest may list the
 * features the image requires (`requires`, image/features.ts): record fields a reader that does
 * not know them would pass over, restoring something else; a reader refuses any name it does
 * not know. Later such fields register as features, not as versions; an image that requires
 * none is written as version 5 or 6, as before.
 */
export const FORMAT_VERSION = 7;
/** The first version with `pageDigests` entries; images without one are written as the one before. */
export const PAGED_FORMAT_VERSION = 6;
export const OLDEST_FORMAT_VERSION = 1;
export const MANIFEST_NAME = 'manifest.json';
/** Bounds on what a manifest may claim. */
export const MAX_MANIFEST_BYTES = 16 << 20;
export const MAX_ENTRIES = 1_000_000;
export const MAX_NAME = 255;

/** What the image depends on from the host that made it: its facts (host.ts), and the XSAVE size. */
export interface ManifestHost extends HostFacts {
  /** Size of a thread's XSAVE area. */
  xstateSize: number;
}

/** An entry verified whole: its sha256, checked by openImage before the image is used. */
export interface WholeEntry {
  name: string;
  size: number;
  sha256: string;
}

/**
 * An entry verified chunk by chunk (page data): the sha256 of each `chunkSize` bytes (the
 * last chunk may be shorter), so each chunk is checked as it is read, independently of the
 * others, and they can be hashed in parallel.
 */
export interface ChunkedEntry {
  name: string;
  size: number;
  chunkSize: number;
  chunks: string[];
  /**
   * Each chunk's digest is sha256 of the concatenated sha256 of its pages (4 KiB each, the
   * last one possibly shorter) instead of sha256 of its bytes (image/chunks.ts chunkDigest):
   * a pre-copy checkpoint takes the digests of the pages the target holds from the rounds
   * instead of reading them while the tree is frozen (docs/image-format.md). Version 6 on.
   */
  pageDigests?: true;
}

export type ManifestEntry = WholeEntry | ChunkedEntry;

/** Whether an entry carries per-chunk digests. */
export const isChunked = (e: ManifestEntry): e is ChunkedEntry => 'chunks' in e;

/**
 * Bounds on a chunked entry's chunk size: whole pages, at most 16 MiB (a reader holds a few
 * chunks in memory at once).
 */
export const MIN_CHUNK_BYTES = 4096;
export const MAX_CHUNK_BYTES = 16 << 20;

/** How many digests a chunked entry of `size` bytes in chunks of `chunkSize` has. */
export const chunkCount = (size: number, chunkSize: number): number => Math.ceil(size / chunkSize);

export interface Manifest {
  format: typeof IMAGE_FORMAT;
  formatVersion: number;
  ferryVersion: string;
  createdAt: string;
  host: ManifestHost;
  root: { pid: number };
  /** PIDs of every task in the image, root first. */
  tasks: number[];
  /**
   * The features the image requires a reader to know (image/features.ts), by name; absent when
   * none. Version 7 on.
   */
  requires?: string[];
  entries: ManifestEntry[];
}

/** The manifest without what the writer fills in. */
export type ManifestHeader = Omit<Manifest, 'format' | 'formatVersion' | 'entries'>;

/** The largest PID Linux can hand out on 64-bit (PID_MAX_LIMIT). */
const PID_MAX = 4 * 1024 * 1024;
/** Largest XSAVE area a thread may have (restore reads it with this bound). */
const MAX_XSTATE = 1 << 16;

function bad(field: string, what: string): never {
  throw new FerryError('EIMAGE', `manifest field ${field} ${what}`);
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * A value of an image, shown in a message: short, on one line, and safe for any value (a
 * nested list is never stringified: it could be deeper than the stack).
 */
export function shown(v: unknown): string {
  if (v === undefined) return 'missing';
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'an object';
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v);
  return String(v);
}

/** Checks that an entry name is safe and bounded. */
export function checkEntryName(name: string): void {
  // Control characters (NUL, newline…) are in no name ferry writes, and would break a message's one line.
  if (name.length === 0 || name.length > MAX_NAME || name.startsWith('/') || name.split('/').includes('..')
    || /[\x00-\x1f\x7f]/.test(name)) {
    throw new FerryError('EIMAGE', `image entry name ${JSON.stringify(name.slice(0, 80))} is not allowed`);
  }
}

const str = (o: Record<string, unknown>, k: string, at: string): string => {
  const v = o[k];
  if (typeof v !== 'string' || v.length > 4096) bad(`${at}${k}`, `is ${shown(v)}, must be a string`);
  return v;
};

const HEX64 = /^[0-9a-f]{64}$/;

const pidOf = (v: unknown): boolean => Number.isSafeInteger(v) && (v as number) > 0 && (v as number) <= PID_MAX;

/**
 * Parses and validates manifest.json: FerryError 'EFORMAT' when it is not a ferry image or
 * one of another format version, 'EIMAGE' for anything else wrong. Returns a new object holding only the fields below, so
 * nothing else the file may hold (an unknown field, a value nested a million levels deep)
 * travels further.
 */
export function parseManifest(buf: Buffer): Manifest {
  if (buf.length > MAX_MANIFEST_BYTES) bad('', `is ${buf.length} bytes, over the ${MAX_MANIFEST_BYTES} limit`);
  let m: unknown;
  try {
    m = JSON.parse(buf.toString('utf8'));
  } catch {
    throw new FerryError('EIMAGE', 'manifest.json is not valid JSON');
  }
  if (!isObj(m)) throw new FerryError('EIMAGE', `manifest.json is ${shown(m)}, not an object`);
  if (m.format !== IMAGE_FORMAT) {
    throw new FerryError('EFORMAT', `manifest field format is ${shown(m.format)}, not "${IMAGE_FORMAT}": not a ferry image`);
  }
  if (!Number.isInteger(m.formatVersion) || (m.formatVersion as number) < OLDEST_FORMAT_VERSION || (m.formatVersion as number) > FORMAT_VERSION) {
    const other = typeof m.ferryVersion === 'string' ? ` (written by ferry ${shown(m.ferryVersion)})` : '';
    throw new FerryError('EFORMAT', `manifest field formatVersion is ${shown(m.formatVersion)}${other}; this ferry reads `
      + `versions ${OLDEST_FORMAT_VERSION} to ${FORMAT_VERSION}: use the ferry version that wrote the image`);
  }
  const ferryVersion = str(m, 'ferryVersion', '');
  const requires = requiredOf(m, ferryVersion);
  const createdAt = str(m, 'createdAt', '');
  const h = m.host;
  if (!isObj(h)) bad('host', `is ${shown(h)}, must be an object`);
  const [kernelRelease, kernelVersion, arch, vdsoSha256, xfeatures] = (['kernelRelease', 'kernelVersion', 'arch', 'vdsoSha256', 'xfeatures'] as const)
    .map((k) => str(h, k, 'host.')) as [string, string, string, string, string];
  if (!/^0x[0-9a-f]{1,16}$/.test(xfeatures)) bad('host.xfeatures', `is ${shown(xfeatures)}, must be a 64-bit hex string`);
  const xstateSize = h.xstateSize;
  if (!Number.isSafeInteger(xstateSize) || (xstateSize as number) < 0 || (xstateSize as number) > MAX_XSTATE) {
    bad('host.xstateSize', `is ${shown(xstateSize)}, must be an integer from 0 to ${MAX_XSTATE}`);
  }
  if (!Array.isArray(h.vdsoLayout) || h.vdsoLayout.length > 8
    || !h.vdsoLayout.every((l) => isObj(l) && typeof l.name === 'string' && l.name.length <= 64 && Number.isSafeInteger(l.size))) {
    bad('host.vdsoLayout', 'must be a list of at most 8 {name, size}');
  }
  const vdsoLayout = (h.vdsoLayout as Array<{ name: string; size: number }>).map((l) => ({ name: l.name, size: l.size }));
  const root = m.root;
  if (!isObj(root) || !pidOf(root.pid)) bad('root.pid', `must be a pid (1 to ${PID_MAX})`);
  const rootPid = root.pid as number;
  if (!Array.isArray(m.tasks) || m.tasks.length === 0 || m.tasks.length > PID_MAX || !m.tasks.every(pidOf)) {
    bad('tasks', 'must be a non-empty list of pids');
  }
  const tasks = [...m.tasks as number[]];
  if (tasks[0] !== rootPid) bad('tasks', `must start with the root pid ${rootPid}, starts with ${tasks[0]!}`);
  if (new Set(tasks).size !== tasks.length) bad('tasks', 'lists a pid twice');
  if (!Array.isArray(m.entries) || m.entries.length > MAX_ENTRIES) bad('entries', `must be a list of at most ${MAX_ENTRIES}`);
  const seen = new Set<string>();
  const entries: ManifestEntry[] = [];
  for (const [i, e] of (m.entries as unknown[]).entries()) {
    if (!isObj(e) || typeof e.name !== 'string' || !Number.isSafeInteger(e.size) || (e.size as number) < 0) {
      bad(`entries[${i}]`, 'must be {name, size, sha256} or {name, size, chunkSize, chunks}');
    }
    checkEntryName(e.name);
    if (e.name === MANIFEST_NAME || e.name === SIGNATURE_NAME) bad(`entries[${i}]`, `uses the reserved name ${e.name}`);
    if (seen.has(e.name)) bad(`entries[${i}]`, `repeats the name ${e.name}`);
    seen.add(e.name);
    const size = e.size as number;
    if (e.chunks === undefined && e.chunkSize === undefined) {
      if (typeof e.sha256 !== 'string' || !HEX64.test(e.sha256)) bad(`entries[${i}]`, 'must be {name, size, sha256} or {name, size, chunkSize, chunks}');
      entries.push({ name: e.name, size, sha256: e.sha256 });
      continue;
    }
    if (e.sha256 !== undefined) bad(`entries[${i}]`, 'has both sha256 and chunks');
    const chunkSize = e.chunkSize;
    if (!Number.isSafeInteger(chunkSize) || (chunkSize as number) < MIN_CHUNK_BYTES || (chunkSize as number) > MAX_CHUNK_BYTES
      || (chunkSize as number) % MIN_CHUNK_BYTES !== 0) {
      bad(`entries[${i}].chunkSize`, `is ${shown(chunkSize)}, must be a multiple of ${MIN_CHUNK_BYTES} from ${MIN_CHUNK_BYTES} to ${MAX_CHUNK_BYTES}`);
    }
    // The length is held to the entry's size before anything is made from the list.
    const want = chunkCount(size, chunkSize as number);
    if (!Array.isArray(e.chunks) || e.chunks.length !== want) {
      bad(`entries[${i}].chunks`, `must be a list of ${want} sha256 (${size} bytes in chunks of ${chunkSize as number}), `
        + `is ${Array.isArray(e.chunks) ? `a list of ${e.chunks.length}` : shown(e.chunks)}`);
    }
    const chunks = e.chunks as unknown[];
    for (let c = 0; c < chunks.length; c++) {
      const d = chunks[c];
      if (typeof d !== 'string' || !HEX64.test(d)) bad(`entries[${i}].chunks[${c}]`, `is ${shown(d)}, must be a sha256 (64 lowercase hex digits)`);
    }
    if (e.pageDigests !== undefined && (e.pageDigests !== true || (m.formatVersion as number) < PAGED_FORMAT_VERSION)) {
      bad(`entries[${i}].pageDigests`, `is ${shown(e.pageDigests)}, may only be true, in an image of version ${PAGED_FORMAT_VERSION} or later`);
    }
    entries.push({ name: e.name, size, chunkSize: chunkSize as number, chunks: [...chunks as string[]], ...(e.pageDigests === true ? { pageDigests: true as const } : {}) });
  }
  return {
    format: IMAGE_FORMAT, formatVersion: m.formatVersion as number, ferryVersion, createdAt,
    host: { kernelRelease, kernelVersion, arch, vdsoSha256, vdsoLayout, xfeatures, xstateSize: xstateSize as number },
    root: { pid: rootPid }, tasks, ...(requires !== undefined ? { requires } : {}), entries,
  };
}

/** Bounds on `requires`: names, and how long each may be. */
const MAX_REQUIRES = 256;
const FEATURE_NAME = /^[a-z0-9]+(?:-[a-z0-9]+)*$/;
const MAX_FEATURE_NAME = 64;

/**
 * The manifest's `requires` (a list of 1 to 256 unique feature names, version 7 on), refused
 * with 'EFORMAT' when it names one this ferry does not know: it would restore something else.
 */
function requiredOf(m: Record<string, unknown>, ferryVersion: string): string[] | undefined {
  const r = m.requires;
  if (r === undefined) return undefined;
  if ((m.formatVersion as number) < REQUIRES_FORMAT_VERSION) bad('requires', `may only be in an image of version ${REQUIRES_FORMAT_VERSION} or later`);
  if (!Array.isArray(r) || r.length === 0 || r.length > MAX_REQUIRES) bad('requires', `must be a list of 1 to ${MAX_REQUIRES} feature names`);
  for (const [i, name] of r.entries()) {
    if (typeof name !== 'string' || name.length > MAX_FEATURE_NAME || !FEATURE_NAME.test(name)) {
      bad(`requires[${i}]`, `is ${shown(name)}, must be a feature name (lowercase words joined by "-", at most ${MAX_FEATURE_NAME} characters)`);
    }
  }
  const names = r as string[];
  if (new Set(names).size !== names.length) bad('requires', 'lists a feature twice');
  const unknown = names.filter((n) => !KNOWN_FEATURES.has(n));
  if (unknown.length > 0) {
    const other = ferryVersion !== '' ? ` (written by ferry ${shown(ferryVersion)})` : '';
    throw new FerryError('EFORMAT', `manifest field requires names ${unknown.map((n) => `"${n}"`).join(', ')}${other}, `
      + `${unknown.length > 1 ? 'features' : 'a feature'} this ferry does not know and would restore as something else: `
      + 'restore the image with the ferry version that wrote it, or a newer one');
  }
  return [...names];
}

/** Refuses an image this host cannot restore: other kernel build, arch, or missing CPU features. */
export function checkCompatibility(m: Manifest, host: ManifestHost): void {
  const a = m.host;
  if (a.arch !== host.arch) {
    throw new FerryError('EARCH', `image was made on ${a.arch}, this host is ${host.arch}`);
  }
  const sameLayout = JSON.stringify(a.vdsoLayout) === JSON.stringify(host.vdsoLayout);
  // An image that carries its kernel's vDSO restores on another kernel build: restore proxies
  // that vDSO (restore/vdso.ts). Older images need the same build.
  const carried = m.entries.some((e) => e.name === VDSO_ENTRY);
  if (!carried && (a.kernelRelease !== host.kernelRelease || a.kernelVersion !== host.kernelVersion
    || a.vdsoSha256 !== host.vdsoSha256 || !sameLayout)) {
    throw new FerryError('EKERNEL',
      `image was made on kernel ${a.kernelRelease} (${a.kernelVersion}), this host runs ${host.kernelRelease} (${host.kernelVersion}): `
      + 'an image without its kernel\'s vDSO (vdso.bin: older ferry versions did not write it) needs the same kernel build');
  }
  const missing = BigInt(a.xfeatures) & ~BigInt(host.xfeatures);
  if (missing !== 0n) {
    const bits = [...Array(64).keys()].filter((b) => (missing >> BigInt(b)) & 1n);
    throw new FerryError('ECPU',
      `image needs CPU state components this CPU lacks (XCR0 bits ${bits.join(', ')}; image ${a.xfeatures}, host ${host.xfeatures})`);
  }
}
