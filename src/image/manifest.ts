/**
 * manifest.json: the first entry of every image (docs/image-format.md). It names the format
 * and the host the image was made on, and lists every other entry with its size and sha256.
 */
import { FerryError } from '../errors.js';

export const IMAGE_FORMAT = 'ferry-image';
export const FORMAT_VERSION = 1;
export const MANIFEST_NAME = 'manifest.json';
/** Bounds on what a manifest may claim. */
export const MAX_MANIFEST_BYTES = 16 << 20;
export const MAX_ENTRIES = 1_000_000;
export const MAX_NAME = 255;

/** What the image depends on from the host that made it. */
export interface ManifestHost {
  kernelRelease: string;
  kernelVersion: string;
  arch: string;
  /** sha256 of the kernel's vDSO image. */
  vdsoSha256: string;
  /** Sizes of [vvar], [vvar_vclock], [vdso]. */
  vdsoLayout: Array<{ name: string; size: number }>;
  /** XCR0 of the CPU, hex. */
  xfeatures: string;
  /** Size of a thread's XSAVE area. */
  xstateSize: number;
}

export interface ManifestEntry {
  name: string;
  size: number;
  sha256: string;
}

export interface Manifest {
  format: typeof IMAGE_FORMAT;
  formatVersion: typeof FORMAT_VERSION;
  ferryVersion: string;
  createdAt: string;
  host: ManifestHost;
  root: { pid: number };
  /** PIDs of every task in the image, root first. */
  tasks: number[];
  entries: ManifestEntry[];
}

/** The manifest without what the writer fills in. */
export type ManifestHeader = Omit<Manifest, 'format' | 'formatVersion' | 'entries'>;

function bad(field: string, what: string): never {
  throw new FerryError('EIMAGE', `manifest field ${field} ${what}`);
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Checks that an entry name is safe and bounded. */
export function checkEntryName(name: string): void {
  if (name.length === 0 || name.length > MAX_NAME || name.startsWith('/') || name.split('/').includes('..')
    || name.includes('\0')) {
    throw new FerryError('EIMAGE', `image entry name ${JSON.stringify(name.slice(0, 80))} is not allowed`);
  }
}

/** Parses and validates manifest.json. */
export function parseManifest(buf: Buffer): Manifest {
  if (buf.length > MAX_MANIFEST_BYTES) bad('', `is ${buf.length} bytes, over the ${MAX_MANIFEST_BYTES} limit`);
  let m: unknown;
  try {
    m = JSON.parse(buf.toString('utf8'));
  } catch {
    throw new FerryError('EIMAGE', 'manifest.json is not valid JSON');
  }
  if (!isObj(m)) bad('', 'is not an object');
  if (m.format !== IMAGE_FORMAT) bad('format', `is ${JSON.stringify(m.format)}, not "${IMAGE_FORMAT}": not a ferry image`);
  if (m.formatVersion !== FORMAT_VERSION) {
    bad('formatVersion', `is ${String(m.formatVersion)}; this ferry reads version ${FORMAT_VERSION}`);
  }
  for (const k of ['ferryVersion', 'createdAt']) if (typeof m[k] !== 'string') bad(k, 'must be a string');
  const h = m.host;
  if (!isObj(h)) bad('host', 'must be an object');
  for (const k of ['kernelRelease', 'kernelVersion', 'arch', 'vdsoSha256', 'xfeatures']) {
    if (typeof h[k] !== 'string') bad(`host.${k}`, 'must be a string');
  }
  if (!/^0x[0-9a-f]+$/.test(h.xfeatures as string)) bad('host.xfeatures', 'must be a hex string');
  if (!Number.isSafeInteger(h.xstateSize)) bad('host.xstateSize', 'must be an integer');
  if (!Array.isArray(h.vdsoLayout) || h.vdsoLayout.length > 8
    || !h.vdsoLayout.every((l) => isObj(l) && typeof l.name === 'string' && Number.isSafeInteger(l.size))) {
    bad('host.vdsoLayout', 'must be a list of {name, size}');
  }
  if (!isObj(m.root) || !Number.isSafeInteger(m.root.pid) || (m.root.pid as number) <= 0) bad('root.pid', 'must be a positive integer');
  if (!Array.isArray(m.tasks) || m.tasks.length === 0 || m.tasks.length > 1_000_000
    || !m.tasks.every((p) => Number.isSafeInteger(p) && (p as number) > 0)) {
    bad('tasks', 'must be a non-empty list of pids');
  }
  if (!Array.isArray(m.entries) || m.entries.length > MAX_ENTRIES) bad('entries', `must be a list of at most ${MAX_ENTRIES}`);
  const seen = new Set<string>();
  for (const [i, e] of (m.entries as unknown[]).entries()) {
    if (!isObj(e) || typeof e.name !== 'string' || !Number.isSafeInteger(e.size) || (e.size as number) < 0
      || typeof e.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(e.sha256)) {
      bad(`entries[${i}]`, 'must be {name, size, sha256}');
    }
    checkEntryName(e.name);
    if (seen.has(e.name) || e.name === MANIFEST_NAME) bad(`entries[${i}]`, `repeats the name ${e.name}`);
    seen.add(e.name);
  }
  return m as unknown as Manifest;
}

/** Refuses an image this host cannot restore: other kernel build, arch, or missing CPU features. */
export function checkCompatibility(m: Manifest, host: ManifestHost): void {
  const a = m.host;
  if (a.arch !== host.arch) {
    throw new FerryError('EARCH', `image was made on ${a.arch}, this host is ${host.arch}`);
  }
  const sameLayout = JSON.stringify(a.vdsoLayout) === JSON.stringify(host.vdsoLayout);
  if (a.kernelRelease !== host.kernelRelease || a.kernelVersion !== host.kernelVersion
    || a.vdsoSha256 !== host.vdsoSha256 || !sameLayout) {
    throw new FerryError('EKERNEL',
      `image was made on kernel ${a.kernelRelease} (${a.kernelVersion}), this host runs ${host.kernelRelease} (${host.kernelVersion}): `
      + 'restore needs the same kernel build (the vDSO is carried over as is)');
  }
  const missing = BigInt(a.xfeatures) & ~BigInt(host.xfeatures);
  if (missing !== 0n) {
    const bits = [...Array(64).keys()].filter((b) => (missing >> BigInt(b)) & 1n);
    throw new FerryError('ECPU',
      `image needs CPU state components this CPU lacks (XCR0 bits ${bits.join(', ')}; image ${a.xfeatures}, host ${host.xfeatures})`);
  }
}
