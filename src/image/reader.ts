/**
 * Opens an image and verifies all of it before anyone may use it: the tar structure, the
 * manifest first, its signature (sign.ts) when the image has one or the caller trusts keys,
 * exactly the manifest's entries in its order with its sizes, and every sha256. A chunked
 * entry (page data) is verified here chunk by chunk too, unless the caller asks to verify it
 * as it reads it (`lazyChunks`: restore, which then reads each byte of the image once; every
 * read of such an entry through the Image verifies what it reads, see chunks.ts).
 *
 * The reader indexes the tar itself (ustar headers, pax 'x' size records, GNU base-256 sizes
 * for entries over 8 GiB) because restore needs each entry's offset to read page data
 * directly from the file. An image on stdin is first spooled into an unlinked temporary file
 * in the work directory, hashed on the way, so it can be read at random afterwards.
 */
import { createHash } from 'node:crypto';
import { closeSync, constants, existsSync, fstatSync, openSync, read, readSync, unlinkSync, writeSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { FerryError, describeCause, type ErrorContext } from '../errors.js';
import { native } from '../native/binding.js';
import { DIRECT_ALIGN, warmBuffers } from './direct.js';
import { ChunkLoader, ChunkSource, chunkDigest, DIGEST_PAGE, type ChunkedLocation, type ImagePiece, type ImageRead } from './chunks.js';
import { chunkCount, isChunked, MANIFEST_NAME, MAX_ENTRIES, MAX_MANIFEST_BYTES, MAX_NAME, parseManifest, type ChunkedEntry, type Manifest } from './manifest.js';
import { checkSignature, MAX_SIGNATURE_BYTES, SIGNATURE_NAME, type KeyId, type TrustedKeys } from './sign.js';

/** Deepest nesting of a JSON entry: ferry's own records are a few levels deep. */
export const MAX_JSON_DEPTH = 32;
/**
 * Most bytes of one entry read into memory at once (whatever limit a caller gives): a deleted
 * file's or memfd's contents are read whole; page data is streamed, never read this way.
 */
export const MAX_READ = 1 << 30;

const BLOCK = 512;
const padded = (n: number): number => Math.ceil(n / BLOCK) * BLOCK;

/** A verified image. */
export interface Image {
  readonly manifest: Manifest;
  /** Fingerprint of the key whose valid signature the image carries; null when unsigned. */
  readonly signer: KeyId | null;
  /** Whether an entry exists. */
  has(name: string): boolean;
  /** Reads a whole small entry; refuses one larger than `limit` (default 64 MiB; never more than MAX_READ). */
  read(name: string, limit?: number): Promise<Buffer>;
  /** read() + JSON.parse, with an error naming the entry. */
  readJson(name: string, limit?: number): Promise<unknown>;
  /**
   * Where an entry's bytes lie in the image file. Reading them there reads them unverified
   * when the image was opened with `lazyChunks`: page data is read through pages().
   */
  locate(name: string): Pick<ChunkedLocation, 'fd' | 'offset' | 'size' | 'read' | 'pieces' | 'intact'>;
  /**
   * Verified random access to an entry, chunk by chunk: a chunked entry's chunks are checked
   * against their digests as they are read (read ahead and hashed by the loader's threads,
   * when the image has them); any other entry was verified whole already. One at a time:
   * finish() ends one.
   */
  pages(name: string): ChunkSource;
  /** Streams an entry in chunks (verified as read when it is chunked and lazily verified). */
  stream(name: string, onChunk: (chunk: Buffer, offset: number) => void | Promise<void>, chunkSize?: number): Promise<void>;
  /** Starts the loader's lanes, if they were left for later (OpenOptions.lanesLater). */
  startLanes(): void;
  close(): Promise<void>;
}

interface Located {
  name: string;
  offset: number;
  size: number;
}

/**
 * Reads small pieces (records, the vDSO, a task's xstate) at once, on the JS thread: through
 * the libuv pool a read waits for a turn of the event loop, 5-25 ms each while the machine is
 * busy (a migration's target verifying with its sender and the chunk lanes starting beside
 * it). Big ones (a deleted file's contents) go through the pool, so that the loop still runs
 * (heartbeats, signals) while they are read.
 */
const SYNC_READ_MAX = 256 << 10;

function readAt(fd: number, buf: Buffer, pos: number): Promise<number> {
  if (buf.length <= SYNC_READ_MAX) {
    try {
      return Promise.resolve(readSync(fd, buf, 0, buf.length, pos));
    } catch (err) {
      return Promise.reject(err);
    }
  }
  return new Promise((resolve, reject) => {
    read(fd, buf, 0, buf.length, pos, (err, n) => (err ? reject(err) : resolve(n)));
  });
}

/** Parses the octal or base-256 size field of a ustar header. */
function headerSize(h: Buffer): number {
  if (h[124]! & 0x80) {
    let v = 0;
    for (let i = 125; i < 136; i++) v = v * 256 + h[i]!;
    return v;
  }
  return parseInt(h.toString('latin1', 124, 136).replace(/\0.*$/, '').trim() || '0', 8);
}

function headerChecksumOk(h: Buffer): boolean {
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 32 : h[i]!;
  const stored = parseInt(h.toString('latin1', 148, 156).replace(/\0.*$/, '').trim(), 8);
  return sum === stored;
}

/**
 * A member name as messages show it: as it is when it is plain (printable ASCII, no space,
 * not too long), else quoted and cut short, so a hostile name never makes a message long or
 * spread it over lines.
 */
function nameOf(name: string): string {
  // ferry's own names all have a '.' or a '/' ("tree.json", "files/3-contents"): anything else is quoted too.
  return /^[\x21-\x7e]{1,120}$/.test(name) && /[./]/.test(name) ? name : JSON.stringify(name.length > 80 ? `${name.slice(0, 80)}…` : name);
}

function cstr(h: Buffer, start: number, len: number): string {
  const end = h.indexOf(0, start);
  return h.toString('utf8', start, end < 0 || end > start + len ? start + len : end);
}

/** Indexes the entries of the tar in `fd` (file of `fileSize` bytes). */
function indexTar(fd: number, fileSize: number, label: string, where: ErrorContext): Located[] {
  const out: Located[] = [];
  const h = Buffer.alloc(BLOCK);
  let pos = 0;
  let paxSize: number | undefined;
  let paxPath: string | undefined;
  if (fileSize === 0) throw new FerryError('EIMAGE', `image ${label} is empty (0 bytes): not a ferry image`, where);
  for (;;) {
    if (pos + BLOCK > fileSize) {
      throw new FerryError('EIMAGE', `image ${label} is truncated: it ends at byte ${fileSize} inside the tar headers (entry ${out.length + 1})`, where);
    }
    readSync(fd, h, 0, BLOCK, pos);
    if (h.every((b) => b === 0)) break; // end of archive
    if (!headerChecksumOk(h)) throw new FerryError('EIMAGE', `image ${label} is corrupt: bad tar header checksum at byte ${pos}`, where);
    const type = String.fromCharCode(h[156]! || 48);
    let size = headerSize(h);
    if (!Number.isSafeInteger(size) || size < 0) throw new FerryError('EIMAGE', `image ${label} is corrupt: bad tar size field at byte ${pos}`, where);
    const dataAt = pos + BLOCK;
    if (type === 'x') {
      if (size > 1 << 20) throw new FerryError('EIMAGE', `image ${label} has an oversized pax header at byte ${pos}`, where);
      const pax = Buffer.alloc(size);
      readSync(fd, pax, 0, size, dataAt);
      for (const rec of pax.toString('utf8').split('\n')) {
        const m = /^\d+ ([^=]+)=(.*)$/.exec(rec);
        if (m?.[1] === 'size') paxSize = Number(m[2]);
        if (m?.[1] === 'path') paxPath = m[2];
      }
      pos = dataAt + padded(size);
      continue;
    }
    if (type !== '0' && type !== '7') {
      const shownType = /^[\x21-\x7e]$/.test(type) ? `'${type}'` : `byte 0x${h[156]!.toString(16)}`;
      throw new FerryError('EIMAGE', `image ${label} holds a tar member of type ${shownType} at byte ${pos}; only files are allowed`, where);
    }
    const prefix = h.toString('latin1', 257, 262) === 'ustar' ? cstr(h, 345, 155) : '';
    const base = cstr(h, 0, 100);
    const name = paxPath ?? (prefix ? `${prefix}/${base}` : base);
    if (paxSize !== undefined) size = paxSize;
    paxSize = paxPath = undefined;
    // No name the manifest may list is longer (manifest.ts, MAX_NAME): refused here, before it is kept.
    if (Buffer.byteLength(name) > MAX_NAME) {
      throw new FerryError('EIMAGE', `image ${label} is corrupt: the name of the member at byte ${pos} is ${Buffer.byteLength(name)} bytes long, over the ${MAX_NAME} allowed`, where);
    }
    if (!Number.isSafeInteger(size) || size < 0) throw new FerryError('EIMAGE', `image ${label} is corrupt: bad size of entry ${nameOf(name)} at byte ${pos}`, where);
    if (dataAt + size > fileSize) {
      throw new FerryError('EIMAGE', `image ${label} is truncated: entry ${nameOf(name)} ends at byte ${dataAt + size}, the file has ${fileSize}`, where);
    }
    out.push({ name, offset: dataAt, size });
    if (out.length > MAX_ENTRIES + 2) throw new FerryError('EIMAGE', `image ${label} has more than ${MAX_ENTRIES} entries`, where);
    pos = dataAt + padded(size);
  }
  return out;
}

/** Spools stdin into an unlinked temporary file; returns its fd. */
async function spoolStdin(workDir: string): Promise<number> {
  if (!existsSync(workDir)) throw new FerryError('EIMAGE', `work directory ${workDir} (image.work_dir) does not exist: create it, or set image.work_dir in the configuration`, { path: workDir });
  const path = join(workDir, `.ferry-spool-${process.pid}-${Date.now()}`);
  const fd = openSync(path, 'w+', 0o600);
  unlinkSync(path);
  try {
    for await (const chunk of process.stdin as AsyncIterable<Buffer>) {
      let off = 0;
      while (off < chunk.length) off += writeSync(fd, chunk, off, chunk.length - off);
    }
  } catch (err) {
    closeSync(fd);
    throw new FerryError('EIMAGE', `cannot spool the image from stdin into ${workDir}: ${describeCause(err)}`, { cause: err, path: workDir });
  }
  return fd;
}

/** How openImage reads and what it accepts. */
export interface OpenOptions {
  /** Where an image from stdin is spooled (image.work_dir). */
  workDir: string;
  onProgress?: (done: number, total: number) => void;
  /**
   * Accept only an image signed by one of these keys, checked before anything but the
   * manifest's bytes is read. Without it any image is accepted; a signature present is
   * verified all the same.
   */
  trust?: TrustedKeys;
  /**
   * Leave the chunks of chunked entries (page data) to be verified as they are read, through
   * read(), stream() and pages(), instead of reading them all here first. Restore does; a
   * reader that does not read every chunk (inspect) must not.
   */
  lazyChunks?: boolean;
  /**
   * Bytes of page data that live outside the image file (a migration's page store, whose
   * pages the spooled image leaves as holes: migrate/precopy.ts). Needs lazyChunks (those
   * bytes are verified as they are read). The image takes it over (adopt) once opened and
   * closes it with itself.
   */
  overlay?: ImageOverlay;
  /**
   * The chunk loader's lanes (worker threads) start only at startLanes(): a lazy restore
   * reads no page data before its let-go, and lanes starting beside its checks take the CPU
   * they need (tens of ms each, on a machine of 2 cores); a root restored from staged memory
   * reads its few pages not in place on the JS thread (ChunkSource.keepInPlace). Until they
   * start, chunks are read and hashed on the JS thread.
   */
  lanesLater?: boolean;
}

/** Ranges of an image file read from elsewhere (OpenOptions.overlay). */
export interface ImageOverlay {
  read: ImageRead;
  /**
   * Where `len` bytes at `pos` of the image file `fd` are, in order (what `read` reads): at most
   * 2 * ceil(len / 4096) + 3 pieces. With it the loader's lanes read and hash those bytes as
   * they do an image's own; without it they are read on the JS thread. `digests` false: only
   * where they are, without the pages' digests (ImagePiece.digests) the overlay may hold.
   * New pieces in a new array each call: the caller may set their `direct`.
   */
  pieces?(fd: number, pos: number, len: number, digests?: boolean): ImagePiece[];
  /**
   * Whether the files its pieces' digests (ImagePiece.digests) were taken from are unchanged
   * since: asked after a chunk that used them was read (ChunkedLocation.intact).
   */
  intact?(): boolean;
  /**
   * Ranges of `len` bytes at `pos` of the image file whose pages are in place already where
   * restore writes them (ChunkedLocation.inPlace: a migration's staged memory).
   */
  inPlace?(pos: number, len: number): Array<[number, number, bigint]>;
  /**
   * Of the chunks of `chunkSize` bytes of the image file from `pos` (`size` bytes in all), those
   * wholly in place in one range of inPlace's, with the digest (image/chunks.ts chunkDigest, of
   * page digests) taken of the bytes in place before the image came, true still, if the
   * overlay has it: [chunk index, address, digest], in order. A chunk whose manifest digest is
   * this one is not hashed (ChunkSource.keepInPlace).
   */
  stagedChunks?(pos: number, size: number, chunkSize: number): Array<[number, number, Buffer]>;
  /** The image owns it from now on: its close() closes the overlay. */
  adopt(): void;
  close(): void;
}

/**
 * Chunked entries of more than this in all get a chunk loader with lazyChunks (its lanes
 * started while the rest is verified); below it, starting a thread costs more than reading and
 * hashing on the JS thread.
 */
const LOADER_MIN_BYTES = 8 << 20;
/**
 * Chunked entries of more than this in all get two lanes (on a machine of three cores or
 * more): one reads a chunk while the other hashes the one before, as the JS thread writes an
 * earlier one into the process (one lane does its read and its hash one after the other).
 */
const TWO_LANES_MIN_BYTES = 32 << 20;
/**
 * The same on a machine of two cores, where a lane's start (a Node worker: an isolate of its
 * own, some 30 ms of a core) competes with the JS thread's rebuild of the tree (each injected
 * syscall a round trip that waits for a core): there the second lane pays for itself only
 * past about 192 MiB. Restore of one process, in process, the image not in the page cache,
 * two lanes against one (2-core test machine, 4-12 runs a side, ms, medians): 64 MiB 200 ->
 * 140 (its rebuild 16-53 -> 10-23), 128 MiB 226 -> 204, 256 MiB 288 -> 306, 1 GiB 727 -> 985.
 */
const TWO_LANES_MIN_BYTES_TWO_CORES = 192 << 20;

/** How many lanes a chunk loader gets for `bytes` of chunked entries. */
function chunkLanes(bytes: number): number {
  const cores = availableParallelism();
  if (cores < 2) return 1;
  return bytes > (cores > 2 ? TWO_LANES_MIN_BYTES : TWO_LANES_MIN_BYTES_TWO_CORES) ? 2 : 1;
}
/** Shared buffers of the loader: one handed out, the others read and hashed ahead. */
const LOADER_SLOTS = 6;

/**
 * Faults in, ahead of a restore, the buffers its chunks of `chunkBytes` will be read into (the
 * loader's slots and a chunk source's own buffer: direct.ts warmBuffers), so that the restore
 * does not touch fresh memory for them. dropWarm() lets go of those it did not take.
 */
export function warmChunkBuffers(chunkBytes: number): void {
  warmBuffers(LOADER_SLOTS + 1, Math.ceil(chunkBytes / DIRECT_ALIGN) * DIRECT_ALIGN);
}
/**
 * An entry at least this much of which is in the page cache is read through it; any other
 * with O_DIRECT (chunks.ts says why).
 */
const CACHED_ENOUGH = 0.9;

/** Opens and fully verifies an image ('-' = stdin). */
export async function openImage(path: string, options: OpenOptions): Promise<Image> {
  const label = path === '-' ? '(stdin)' : path;
  const where: ErrorContext = path === '-' ? {} : { path };
  let fd: number;
  if (path === '-') {
    fd = await spoolStdin(options.workDir);
  } else {
    try {
      fd = openSync(path, 'r');
    } catch (err) {
      const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : describeCause(err);
      throw new FerryError('EIMAGE', `cannot read image ${path}: ${why}`, { cause: err, path });
    }
  }
  let loader: ChunkLoader | undefined;
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new FerryError('EIMAGE', `image ${label} is not a regular file`, where);
    const located = indexTar(fd, st.size, label, where);
    const first = located[0];
    if (!first || first.name !== MANIFEST_NAME) {
      throw new FerryError('EIMAGE', `image ${label} is not a ferry image: its first entry is ${first ? nameOf(first.name) : 'missing'}, not ${MANIFEST_NAME}`, where);
    }
    if (first.size > MAX_MANIFEST_BYTES) throw new FerryError('EIMAGE', `image ${label}: manifest.json is ${first.size} bytes, over the limit`, where);
    const mbuf = Buffer.alloc(first.size);
    readSync(fd, mbuf, 0, first.size, first.offset);
    // The signature, before the manifest is even parsed: with trusted keys, nothing an
    // untrusted party wrote is looked at beyond the tar headers and these bytes.
    const sigAt = located[1]?.name === SIGNATURE_NAME ? located[1] : undefined;
    let sig: Buffer | undefined;
    if (sigAt !== undefined) {
      if (sigAt.size > MAX_SIGNATURE_BYTES) throw new FerryError('EIMAGE', `image ${label} is corrupt: ${SIGNATURE_NAME} is ${sigAt.size} bytes, over the ${MAX_SIGNATURE_BYTES} limit`, where);
      sig = Buffer.alloc(sigAt.size);
      readSync(fd, sig, 0, sigAt.size, sigAt.offset);
    }
    let signer: KeyId | null;
    try {
      signer = checkSignature(mbuf, sig, options.trust, label, where);
    } catch (err) {
      if (err instanceof FerryError) throw err;
      // The signature entry is the image's: a field of a hostile type can make its parsing fail
      // (String() of an object with a bad toString). Corrupt, whatever the engine said.
      throw new FerryError('EIMAGE', `image ${label} is corrupt: its ${SIGNATURE_NAME} holds a field of the wrong type`, where);
    }
    let manifest: Manifest;
    try {
      manifest = parseManifest(mbuf);
    } catch (err) {
      if (!(err instanceof FerryError)) throw err;
      // Another format is not damage: say which, not "corrupt".
      const what = err.code === 'EFORMAT' ? ':' : ' is corrupt:';
      throw new FerryError(err.code, `image ${label}${what} ${err.message}`, { cause: err, ...where });
    }
    const rest = located.slice(sigAt !== undefined ? 2 : 1);
    const byName = new Map(rest.map((l) => [l.name, l]));
    manifest.entries.forEach((e, i) => {
      const got = rest[i];
      if (!got) throw new FerryError('EIMAGE', `image ${label} is truncated: entry ${e.name} is missing`, where);
      if (got.name !== e.name) throw new FerryError('EIMAGE', `image ${label} is corrupt: entry ${i + 1} is ${nameOf(got.name)}, the manifest says ${nameOf(e.name)}`, where);
      if (got.size !== e.size) throw new FerryError('EIMAGE', `image ${label} is corrupt: entry ${e.name} has ${got.size} bytes, the manifest says ${e.size}`, where);
    });
    if (rest.length > manifest.entries.length) {
      throw new FerryError('EIMAGE', `image ${label} is corrupt: entry ${nameOf(rest[manifest.entries.length]!.name)} is not in the manifest`, where);
    }
    // Hash every entry (a chunked one chunk by chunk), but chunked ones left to their reader.
    const lazy = options.lazyChunks === true;
    const chunked = manifest.entries.filter(isChunked);
    const lazyBytes = lazy ? chunked.reduce((s, e) => s + e.size, 0) : 0;
    // Started now and never waited for: until it runs, chunks are hashed on the JS thread.
    const slotBytes = chunked.reduce((m, e) => Math.max(m, Math.min(e.chunkSize, e.size)), 1);
    // No more slots than the image has chunks: each slot is faulted in whole when made
    // (chunks.ts), and six of the largest chunks (16 MiB) for an image of a few would be
    // memory made resident for nothing.
    const chunks = chunked.reduce((n, e) => n + chunkCount(e.size, e.chunkSize), 0);
    loader = lazyBytes > LOADER_MIN_BYTES
      ? new ChunkLoader(Math.min(LOADER_SLOTS, chunks), slotBytes, chunkLanes(lazyBytes),
        { pieces: options.overlay?.pieces !== undefined ? 2 * Math.ceil(slotBytes / DIGEST_PAGE) + 3 : 0, deferred: options.lanesLater === true })
      : undefined;
    const total = manifest.entries.reduce((s, e) => s + (lazy && isChunked(e) ? 0 : e.size), 0);
    let done = 0;
    // Room for the largest chunk (at most MAX_CHUNK_BYTES) when chunks are verified here, and
    // for up to 8 MiB of another entry at a time: no more than the entries hashed here need (a
    // small image's are a few KiB; 8 MiB were mapped for them each time).
    const chunk = Buffer.allocUnsafe(manifest.entries.reduce((m, e) => (lazy && isChunked(e) ? m
      : Math.max(m, isChunked(e) ? Math.min(e.chunkSize, e.size) : Math.min(e.size, 8 << 20))), 1));
    for (const e of manifest.entries) {
      if (lazy && isChunked(e)) continue;
      const loc = byName.get(e.name)!;
      const step = isChunked(e) ? e.chunkSize : chunk.length; // never more than chunk.length
      let h = createHash('sha256');
      for (let off = 0; off < loc.size;) {
        const want = Math.min(step, loc.size - off);
        const n = await readAt(fd, want === chunk.length ? chunk : chunk.subarray(0, want), loc.offset + off);
        if (n !== want) throw new FerryError('EIMAGE', `image ${label} is truncated inside entry ${e.name}`, where);
        if (!isChunked(e) || e.pageDigests !== true) h.update(want === chunk.length ? chunk : chunk.subarray(0, want));
        if (isChunked(e)) {
          const c = off / e.chunkSize;
          const sum = e.pageDigests === true ? chunkDigest(chunk.subarray(0, want), true).toString('hex') : h.digest('hex');
          if (sum !== e.chunks[c]) {
            throw new FerryError('EIMAGE', `image ${label} is corrupt: entry ${e.name} chunk ${c} has sha256 ${sum.slice(0, 12)}… `
              + `but the manifest says ${e.chunks[c]!.slice(0, 12)}…`, where);
          }
          h = createHash('sha256');
        }
        off += n;
        done += n;
        options.onProgress?.(done, total);
      }
      if (isChunked(e)) continue;
      const sum = h.digest('hex');
      if (sum !== e.sha256) {
        throw new FerryError('EIMAGE', `image ${label} is corrupt: entry ${e.name} has sha256 ${sum.slice(0, 12)}… but the manifest says ${e.sha256.slice(0, 12)}…`, where);
      }
    }
    if (options.overlay !== undefined && !lazy) throw new Error('an image overlay needs lazyChunks');
    options.overlay?.adopt();
    return makeImage(fd, manifest, signer, byName, label, where, lazy, loader, options.overlay);
  } catch (err) {
    closeSync(fd);
    await loader?.close();
    throw err;
  }
}

/**
 * Where `value` nests deeper than `limit` levels ("files[1].path[0][0]…", cut short), or
 * undefined. Iterative: a value nested a million levels deep is JSON.parse's to build but
 * would overflow the stack of anything that walks it recursively (JSON.stringify, a logger).
 */
export function tooDeep(value: unknown, limit: number): string | undefined {
  // Depths only first: naming every value's place as the walk goes made a string per value
  // (a task record has thousands), for a message almost never written.
  const stack: object[] = [];
  const depths: number[] = [];
  if (typeof value === 'object' && value !== null) {
    stack.push(value);
    depths.push(0);
  }
  for (let v = stack.pop(); v !== undefined; v = stack.pop()) {
    const depth = depths.pop()!;
    if (depth >= limit) return whereTooDeep(value, limit);
    for (const x of Array.isArray(v) ? v as unknown[] : Object.values(v)) {
      if (typeof x !== 'object' || x === null) continue;
      stack.push(x);
      depths.push(depth + 1);
    }
  }
  return undefined;
}

/** tooDeep's answer for a value that nests too deep: the walk again, naming each place. */
function whereTooDeep(value: unknown, limit: number): string | undefined {
  const stack: Array<{ v: unknown; depth: number; at: string }> = [{ v: value, depth: 0, at: '' }];
  for (let top = stack.pop(); top !== undefined; top = stack.pop()) {
    const { v, depth, at } = top;
    if (typeof v !== 'object' || v === null) continue;
    if (depth >= limit) return at.length > 80 ? `${at.slice(0, 80)}…` : at || '(the top)';
    if (Array.isArray(v)) v.forEach((x, i) => stack.push({ v: x, depth: depth + 1, at: `${at}[${i}]` }));
    else for (const [k, x] of Object.entries(v)) stack.push({ v: x, depth: depth + 1, at: at === '' ? k : `${at}.${k}` });
  }
  return undefined;
}

function makeImage(fd: number, manifest: Manifest, signer: KeyId | null, byName: Map<string, Located>, label: string, where: ErrorContext,
  lazy: boolean, loader: ChunkLoader | undefined, overlay?: ImageOverlay): Image {
  let closed = false;
  /**
   * O_DIRECT descriptors for the loader, of the image and of the files an overlay reads, each
   * opened when first needed (-1: that file has none).
   */
  const twins = new Map<number, number>();
  /**
   * The O_DIRECT descriptor the loader reads `ranges` of the file `f` through (`bytes` in
   * all), unless they are few or in the page cache: -1, through `f`.
   */
  const directFor = (f: number, ranges: ReadonlyArray<readonly [number, number]>, bytes: number): number => {
    if (loader === undefined || bytes < LOADER_MIN_BYTES) return -1;
    let pages = 0, cached = -1;
    try {
      // Many scattered ranges (an overlay's runs) are asked as the one range they span: its
      // holes count as not cached, so it is read directly when in doubt.
      const asked = ranges.length > 256 ? [[ranges[0]![0], ranges.at(-1)![0] + ranges.at(-1)![1] - ranges[0]![0]] as const] : ranges;
      cached = 0;
      for (const [at, len] of asked) {
        pages += Math.ceil(len / 4096);
        cached += native().cachedPages(f, at, len);
      }
    } catch { cached = -1; /* not known: read it directly */ }
    if (cached >= pages * CACHED_ENOUGH) return -1;
    let d = twins.get(f);
    if (d === undefined) {
      // The very file this descriptor reads (an image spooled from stdin has no name).
      try {
        d = openSync(`/proc/self/fd/${f}`, constants.O_RDONLY | constants.O_DIRECT);
      } catch {
        d = -1; // a file system without O_DIRECT: through the page cache
      }
      twins.set(f, d);
    }
    return d;
  };
  /**
   * Where the loader reads the chunks of `l` when an overlay reads parts of it elsewhere (a
   * migration's page store): its pieces, each file's through O_DIRECT or not as directFor says
   * of that file's pieces of the whole entry, asked when the lanes first ask (3-5 ms for a
   * staged root of 4 GiB, which reads its few pages not in place on the JS thread instead).
   */
  const piecesOf = (l: Located, pieces: NonNullable<ImageOverlay['pieces']>): ChunkedLocation['pieces'] => {
    let direct: Map<number, number> | undefined;
    const directs = (): Map<number, number> => {
      const byFile = new Map<number, { ranges: Array<[number, number]>; bytes: number }>();
      for (const p of pieces(fd, l.offset, l.size, false)) { // where, for directFor: no digests of a whole entry
        let f = byFile.get(p.fd);
        if (f === undefined) byFile.set(p.fd, (f = { ranges: [], bytes: 0 }));
        f.ranges.push([p.at, p.len]);
        f.bytes += p.len;
      }
      return new Map([...byFile].map(([f, { ranges, bytes }]) => [f, directFor(f, ranges.sort((a, b) => a[0] - b[0]), bytes)]));
    };
    return (pos, len, lanes) => {
      const out = pieces(fd, pos, len); // made for this call: each told its file's O_DIRECT twin in place
      if (lanes === true) {
        direct ??= directs();
        for (const p of out) p.direct = direct.get(p.fd) ?? -1;
      }
      return out;
    };
  };
  const entries = new Map(manifest.entries.map((e) => [e.name, e]));
  /** The entry, when its chunks are still to be verified as they are read. */
  const unverified = (name: string): ChunkedEntry | undefined => {
    const e = entries.get(name);
    return lazy && e !== undefined && isChunked(e) ? e : undefined;
  };
  const source = (name: string, withLoader: boolean): ChunkSource => {
    const l = get(name);
    const e = unverified(name);
    // Ranges an overlay reads (a migration's page store) are read by the lanes when it says
    // where they are (pieces), else on the JS thread: no loader.
    const ahead = withLoader && loader !== undefined && e !== undefined && (overlay === undefined || overlay.pieces !== undefined);
    // Read on the JS thread, the pieces still say which pages' digests the overlay holds.
    const over = overlay?.pieces?.bind(overlay);
    const pieces = over === undefined ? undefined
      : ahead ? piecesOf(l, over)
        : e?.pageDigests === true ? (pos: number, len: number) => over(fd, pos, len) : undefined;
    return new ChunkSource({
      fd, offset: l.offset, size: l.size, chunkSize: e?.chunkSize ?? 4 << 20, digests: e?.chunks,
      directFd: ahead && pieces === undefined ? directFor(fd, [[l.offset, l.size]], l.size) : -1,
      paged: e?.pageDigests === true, read: overlay?.read, pieces, intact: overlay?.intact?.bind(overlay),
      inPlace: overlay?.inPlace?.bind(overlay),
      stagedChunks: overlay?.stagedChunks?.bind(overlay),
    }, ahead ? loader : undefined, label, nameOf(name), where);
  };
  const get = (name: string): Located => {
    const l = byName.get(name);
    // The name comes from a record: quoted, as any value of the image a message shows.
    if (!l) throw new FerryError('EIMAGE', `image ${label} has no entry ${JSON.stringify(name.length > 80 ? `${name.slice(0, 80)}…` : name)}`, where);
    return l;
  };
  const image: Image = {
    manifest,
    signer,
    has: (name) => byName.has(name),
    async read(name, limit = 64 << 20) {
      const l = get(name);
      const max = Math.min(limit, MAX_READ);
      if (l.size > max) throw new FerryError('EIMAGE', `image ${label}: entry ${name} is ${l.size} bytes, more than the ${max} allowed`, where);
      const buf = Buffer.alloc(l.size);
      if (unverified(name)) {
        const src = source(name, false);
        for (let off = 0; off < l.size;) {
          const v = src.view(off, l.size - off);
          v.copy(buf, off);
          off += v.length;
        }
        return buf;
      }
      if (l.size > 0 && readSync(fd, buf, 0, l.size, l.offset) !== l.size) throw new FerryError('EIMAGE', `image ${label}: short read of ${name}`, where);
      return buf;
    },
    async readJson(name, limit) {
      const buf = await image.read(name, limit);
      let value: unknown;
      try {
        value = JSON.parse(buf.toString('utf8')) as unknown;
      } catch {
        throw new FerryError('EIMAGE', `image ${label}: entry ${name} is not valid JSON`, where);
      }
      const deep = tooDeep(value, MAX_JSON_DEPTH);
      if (deep !== undefined) {
        throw new FerryError('EIMAGE', `image ${label}: entry ${name} nests values more than ${MAX_JSON_DEPTH} levels deep `
          + `(at ${deep}); ferry writes nothing like it`, where);
      }
      return value;
    },
    locate(name) {
      const l = get(name);
      return {
        fd, offset: l.offset, size: l.size, ...(overlay !== undefined ? { read: overlay.read } : {}),
        ...(overlay?.pieces !== undefined ? { pieces: (pos: number, len: number) => overlay.pieces!(fd, pos, len) } : {}),
        ...(overlay?.intact !== undefined ? { intact: overlay.intact.bind(overlay) } : {}),
      };
    },
    pages(name) {
      return source(name, true);
    },
    async stream(name, onChunk, chunkSize = 8 << 20) {
      const l = get(name);
      if (unverified(name)) {
        const src = source(name, false);
        for (let off = 0; off < l.size;) {
          const v = src.view(off, Math.min(chunkSize, l.size - off));
          await onChunk(v, off);
          off += v.length;
        }
        return;
      }
      const buf = Buffer.allocUnsafe(chunkSize);
      for (let off = 0; off < l.size;) {
        const n = Math.min(chunkSize, l.size - off);
        if (await readAt(fd, buf.subarray(0, n), l.offset + off) !== n) throw new FerryError('EIMAGE', `image ${label}: short read of ${name}`, where);
        await onChunk(buf.subarray(0, n), off);
        off += n;
      }
    },
    startLanes() {
      loader?.start();
    },
    async close() {
      await loader?.close(); // first: no lane reads the image any more
      if (!closed) {
        closeSync(fd);
        for (const d of twins.values()) if (d >= 0) closeSync(d);
        overlay?.close();
      }
      closed = true;
    },
  };
  return image;
}
