/**
 * Writes an image: a tar whose first entry is the manifest listing every other entry with its
 * size and sha256 (or a sha256 per chunk, for page data).
 *
 * The manifest must come first, yet the hashes are only known once the data has been read,
 * and an image may be far larger than memory. All names and sizes are known up front, so the
 * manifest's length is too (a placeholder with 64 zeros per hash has the final length), and
 * so is where every byte of the tar goes:
 * - to a regular file: write the placeholder, stream every entry once while hashing it, each
 *   chunk written at its own offset as soon as it is read (several at once), then rewrite
 *   the manifest bytes in place and fsync;
 * - to anything else (stdout, a pipe, a socket): run every producer once to hash, then again
 *   to write, in order. Producers must therefore be repeatable.
 * With a sign key, a second entry follows the manifest, manifest.sig: its Ed25519 signature
 * over the final manifest bytes (sign.ts). Its length is fixed, so it is written as a
 * placeholder and rewritten with the manifest (regular file), or made once the first pass has
 * filled in the hashes (anything else).
 * Page data flows by reference: a producer's chunk is written on the libuv pool and, for an
 * entry above INLINE_HASH_BYTES when the caller passed a running HashPool, hashed on the same
 * pool's other threads at the same time (each CHUNK_BYTES of a chunked entry a hash of its
 * own, so the chunks hash side by side), while the JS thread reads the next chunk; the sink's
 * promise resolves once that chunk is hashed and on the file descriptor, so the producer may
 * reuse it. Small entries, and every entry without a running pool, are hashed on the JS
 * thread. The tar headers are made here (tarHeader), in the ustar form tar-stream writes.
 */
import { createHash, type Hash, type KeyObject } from 'node:crypto';
import { availableParallelism } from 'node:os';
import {
  closeSync, constants, existsSync, fsyncSync, openSync, readdirSync, renameSync, rmSync, statSync, writeSync, type Stats,
} from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { FerryError, describeCause, errnoCode } from '../errors.js';
import type { Session } from '../session.js';
import {
  checkEntryName, chunkCount, IMAGE_FORMAT, MANIFEST_NAME, PAGED_FORMAT_VERSION, type Manifest, type ManifestEntry,
  type ManifestHeader,
} from './manifest.js';
import { DIGEST_PAGE, pageDigests } from './chunks.js';
import { REQUIRES_FORMAT_VERSION } from './features.js';
import { directBuffer, DIRECT_ALIGN } from './direct.js';
import { O_DIRECT, O_TMPFILE } from '../proc/fcntl.js';
import { imageSigner, SIGNATURE_NAME, type ImageSigner } from './sign.js';
import { BLOCK, EntryOut, entryPads, padded, padHeader, rewrite, tarHeader, TarOut, type TarSink } from './tar-out.js';
import { native } from '../native/binding.js';

/** One entry of the image after the manifest. */
export interface ImageEntry {
  /** Path inside the tar, e.g. 'tasks/1234/pages.bin' (under 100 bytes: plain ustar headers). */
  name: string;
  /** Exact size in bytes, known before any data is produced. */
  size: number;
  /**
   * Produces exactly `size` bytes through `sink`. May be called twice (a stream: once to hash,
   * once to write; a `paged` entry given `held` once only, unless it produced more than the
   * first pass keeps: KeptOutput). A chunk may be reused once its sink promise resolved;
   * several sink calls may be outstanding (order is kept).
   * `held`, given only for a `paged` entry of an image whose reader already holds some pages
   * (WriteOptions.omitHeld): the next pages are not produced but named by their sha256 (32
   * bytes each, or HeldDigests), which the stream then leaves out; they count toward `size`
   * as if produced. The digests may be reused once that promise resolved, as a chunk may.
   */
  produce(sink: (chunk: Buffer) => Promise<void>, held?: (digests: Buffer | HeldDigests) => Promise<void>): Promise<void>;
  /**
   * Listed with a sha256 per CHUNK_BYTES instead of one for the whole (page data): restore
   * verifies each chunk as it reads it, and chunks hash independently.
   */
  chunked?: boolean;
  /**
   * With `chunked`: each chunk's digest is made of its pages' digests (manifest `pageDigests`,
   * chunks.ts chunkDigest), so pages the reader holds can be named by digest (`held`).
   */
  paged?: boolean;
}

/** Chunk size of chunked entries (the manifest says it; readers take it from there). */
export const CHUNK_BYTES = 4 << 20;
/**
 * Chunk size of `paged` entries (a migration's frozen image under pre-copy), smaller: a chunk
 * is verified whole, its pages read and each hashed, before any page of it is used, and a
 * lazy restore uses a few pages of some chunks before its let-go (the areas it writes at once
 * share chunks with the big ones it leaves to the fill: 4 MiB cost 10-20 ms each there) and
 * serves each fault after it by its whole chunk.
 */
export const PAGED_CHUNK_BYTES = 1 << 20;
/** Pages of one chunk of a `paged` entry. */
export const PAGED_CHUNK_PAGES = PAGED_CHUNK_BYTES / DIGEST_PAGE;

/**
 * Pages a `paged` entry's producer names by digest (ImageEntry.produce's `held`), read from
 * where they are kept (a pre-copy's held set) as the hash takes them: not copied into a buffer
 * of the producer's first.
 */
export interface HeldDigests {
  /** How many pages, the next ones of the entry. */
  readonly pages: number;
  /** Copies the sha256 of pages [from, from + n) of these, 32 bytes a page, into `out` at `at`. */
  copy(from: number, n: number, out: Buffer, at: number): void;
  /**
   * The digest of a chunk (chunks.ts chunkDigest: the sha256 of its pages' sha256), in hex,
   * made of exactly pages [from, from + n) of these, when it is known already (taken before
   * the freeze, its pages unchanged since); else undefined, and the hash takes it from `copy`.
   */
  chunkDigest?(from: number, n: number): string | undefined;
}

/** `held` as HeldDigests: a Buffer of page digests as it is. */
function heldDigests(held: Buffer | HeldDigests): HeldDigests {
  if (!Buffer.isBuffer(held)) return held;
  return { pages: held.length / 32, copy: (from, n, out, at) => { held.copy(out, at, from * 32, (from + n) * 32); } };
}

const ZERO_HASH = '0'.repeat(64);


/**
 * Entries up to this size are hashed on the JS thread even when a hash worker runs: sha256
 * takes 0.15 ms for 256 KiB here (1.6 GB/s), about one round trip to the worker.
 */
export const INLINE_HASH_BYTES = 256 * 1024;

/**
 * sha256 of one entry, computed in one place: on the pool (libuv's threads) when the entry was
 * given one, else on the JS thread. A chunk handed to the pool must stay untouched until
 * update() resolves; the updates of one hash go to the pool one after another.
 */
class EntryHash {
  private readonly inline: Hash | undefined;
  private readonly state: Uint8Array | undefined;
  /** The last update of this hash: the next one starts once it is done. */
  private tail: Promise<void> = Promise.resolve();
  constructor(private readonly pool: HashPool | undefined) {
    if (pool) this.state = pool.newState();
    else this.inline = createHash('sha256');
  }

  update(chunk: Buffer): Promise<void> | undefined {
    if (!this.pool) {
      this.inline!.update(chunk);
      return undefined;
    }
    const pool = this.pool;
    const state = this.state!;
    // A failed update fails every later one and the digest: the caller sees the first.
    return (this.tail = this.tail.then(() => pool.update(state, chunk)));
  }

  async digest(): Promise<string> {
    if (!this.pool) return this.inline!.digest('hex');
    await this.tail;
    return this.pool.final(this.state!);
  }
}

/**
 * The sha256 of every CHUNK_BYTES of a chunked entry, each its own EntryHash: the producer's
 * chunks are cut at chunk boundaries, so they need not line up with them.
 */
class ChunkedHash {
  private cur: EntryHash | undefined;
  private filled = 0;
  private readonly sums: Array<Promise<string>> = [];
  constructor(private readonly pool: HashPool | undefined) {}

  update(chunk: Buffer): Promise<void> | undefined {
    const waits: Array<Promise<void>> = [];
    for (let off = 0; off < chunk.length;) {
      this.cur ??= new EntryHash(this.pool);
      const n = Math.min(chunk.length - off, CHUNK_BYTES - this.filled);
      const p = this.cur.update(chunk.subarray(off, off + n));
      if (p) waits.push(p);
      off += n;
      this.filled += n;
      if (this.filled === CHUNK_BYTES) this.close();
    }
    return waits.length > 0 ? Promise.all(waits).then(() => undefined) : undefined;
  }

  private close(): void {
    const sum = this.cur!.digest();
    sum.catch(() => {}); // observed by digests(), unless the write failed first
    this.sums.push(sum);
    this.cur = undefined;
    this.filled = 0;
  }

  async digests(): Promise<string[]> {
    if (this.cur) this.close();
    return Promise.all(this.sums);
  }
}

/** The bytes of page digests one chunk of a paged entry has (32 a page). */
const PAGED_CHUNK_SUMS = (PAGED_CHUNK_BYTES / DIGEST_PAGE) * 32;
/** Chunks of a paged entry whose digests are taken in one call (8 KiB of page digests each). */
const PAGED_BATCH = 128;

/**
 * The digests of a `paged` entry's chunks (chunks.ts chunkDigest): each page's sha256, hashed
 * here on the JS thread, or given (`held`: pages the reader holds, never read), and each
 * chunk's digest the sha256 of its pages' digests. An image is paged only under pre-copy,
 * whose frozen image reads few pages and is given the digests of all the others: the chunk
 * digests, one per MiB of the tree's memory, are then most of its hashing, done in the frozen
 * window. They are taken PAGED_BATCH chunks at a time in one call of the addon (pageDigests
 * with a chunk's page digests as its unit): a createHash per chunk took twice as long (1 GiB:
 * 14-23 ms against 8, on the 2-core machine under load). A whole chunk of held pages whose
 * digest the held set knows already (HeldDigests.chunkDigest: pre-copy takes them before the
 * freeze) is taken as it is: neither its page digests copied nor hashed again.
 */
class PagedHash {
  private readonly pageSums = Buffer.allocUnsafe(PAGED_BATCH * PAGED_CHUNK_SUMS);
  /** Bytes of page digests in pageSums: whole chunks', then the one being filled. */
  private filled = 0;
  private readonly sums: string[] = [];

  update(chunk: Buffer): undefined {
    if (chunk.length % DIGEST_PAGE !== 0) throw new Error(`a chunk of a paged entry is not whole pages (${chunk.length} bytes)`);
    for (let off = 0; off < chunk.length;) {
      const n = Math.min(chunk.length - off, (this.room() / 32) * DIGEST_PAGE);
      pageDigests(chunk.subarray(off, off + n), this.pageSums, this.filled);
      off += n;
      this.advance((n / DIGEST_PAGE) * 32);
    }
    return undefined;
  }

  /**
   * Pages given by their digests: a whole chunk's known digest taken as it is, else the pages'
   * digests copied in, to the end of the chunk at a time.
   */
  held(given: HeldDigests): Promise<void> {
    for (let from = 0; from < given.pages;) {
      const left = given.pages - from;
      const into = this.filled % PAGED_CHUNK_SUMS; // bytes of the current chunk's page digests
      if (into === 0 && left >= PAGED_CHUNK_PAGES) {
        const known = given.chunkDigest?.(from, PAGED_CHUNK_PAGES);
        if (known !== undefined) {
          this.flush(); // the chunks before it, in order
          this.sums.push(known);
          from += PAGED_CHUNK_PAGES;
          continue;
        }
      }
      // The batch holds whole chunks: its room is at least the rest of this one.
      const n = Math.min(left, (PAGED_CHUNK_SUMS - into) / 32);
      given.copy(from, n, this.pageSums, this.filled);
      from += n;
      this.advance(n * 32);
    }
    return Promise.resolve();
  }

  /** Bytes of page digests the batch takes before it is full. */
  private room(): number {
    return this.pageSums.length - this.filled;
  }

  private advance(n: number): void {
    this.filled += n;
    if (this.filled === this.pageSums.length) this.flush();
  }

  /** The digests of the chunks in the batch, the last one whole or not; the batch emptied. */
  private flush(): void {
    if (this.filled === 0) return;
    const n = Math.ceil(this.filled / PAGED_CHUNK_SUMS);
    const out = pageDigests(this.pageSums.subarray(0, this.filled), undefined, 0, PAGED_CHUNK_SUMS);
    for (let c = 0; c < n; c++) this.sums.push(out.toString('hex', c * 32, c * 32 + 32));
    this.filled = 0;
  }

  digests(): Promise<string[]> {
    this.flush();
    return Promise.resolve(this.sums);
  }
}

/**
 * Bytes a stream's first pass may keep of its `paged` entries, all together (KeptOutput): 32
 * MiB, eight thousand pages read from a frozen tree whose reader holds the rest; an entry
 * that would take more keeps nothing, and the second pass produces it again.
 */
const KEPT_MAX_BYTES = 32 << 20;

/**
 * What the first pass of a stream got from a `paged` entry whose held pages it omits (a
 * pre-copy's frozen image): the few pages read, copied (the producer reuses its buffers), and
 * the counts of held pages between them, in order. The second pass writes exactly these
 * instead of running the producer again: the pages it streams are the very bytes the first
 * pass hashed into the manifest, and the frozen tree is not walked and read twice (the
 * producer's run lookups, a process_vm_readv(2) per stretch of pages read). `items` is
 * undefined once the pass would keep more than KEPT_MAX_BYTES (the producer then runs again).
 */
class KeptOutput {
  items: Array<Buffer | number> | undefined = [];
  private bytes = 0;

  /** `kept`: the bytes every entry of the pass keeps, this one's included. */
  constructor(private readonly kept: { bytes: number }) {}

  chunk(chunk: Buffer): void {
    if (this.items === undefined) return;
    if (this.kept.bytes + chunk.length > KEPT_MAX_BYTES) {
      this.kept.bytes -= this.bytes;
      this.items = undefined;
      return;
    }
    this.bytes += chunk.length;
    this.kept.bytes += chunk.length;
    const copy = Buffer.allocUnsafe(chunk.length);
    chunk.copy(copy);
    this.items.push(copy);
  }

  held(pages: number): void {
    if (this.items === undefined) return;
    const last = this.items.length - 1;
    const prev = this.items[last];
    if (typeof prev === 'number') this.items[last] = prev + pages;
    else this.items.push(pages);
  }
}

type AnyHash = { kind: 'whole'; h: EntryHash } | { kind: 'chunked'; h: ChunkedHash } | { kind: 'paged'; h: PagedHash };

/** The hash of entry `e`: on `pool`'s worker if it runs and the entry is worth the round trips. */
function hashFor(e: ImageEntry, pool: HashPool | undefined): AnyHash {
  if (e.chunked && e.paged) return { kind: 'paged', h: new PagedHash() };
  const on = pool?.running && e.size > INLINE_HASH_BYTES ? pool : undefined;
  return e.chunked ? { kind: 'chunked', h: new ChunkedHash(on) } : { kind: 'whole', h: new EntryHash(on) };
}

/** Puts the digest(s) of `h` into the manifest's entry. */
async function record(entry: ManifestEntry, h: AnyHash): Promise<void> {
  if (h.kind === 'chunked' && 'chunks' in entry) entry.chunks = await h.h.digests();
  else if (h.kind === 'paged' && 'chunks' in entry) entry.chunks = await h.h.digests();
  else if (h.kind === 'whole' && 'sha256' in entry) entry.sha256 = await h.h.digest();
}

/** The manifest's entry for `e`, its digests zeros until they are known. */
function placeholderEntry(e: ImageEntry): ManifestEntry {
  if (!e.chunked) return { name: e.name, size: e.size, sha256: ZERO_HASH };
  const chunkSize = e.paged === true ? PAGED_CHUNK_BYTES : CHUNK_BYTES;
  return { name: e.name, size: e.size, chunkSize, chunks: Array<string>(chunkCount(e.size, chunkSize)).fill(ZERO_HASH),
    ...(e.paged === true ? { pageDigests: true as const } : {}) };
}

/**
 * Hashing on libuv's thread pool, through the addon (native sha256Update: OpenSSL's SHA-256,
 * as Node's own hashes are): at most `threads` chunks at once, each on a thread of the pool,
 * while the JS thread reads the next chunk and the pool's other threads write the previous
 * ones. It replaced worker threads, each a Node isolate of its own: starting one took 40-90 ms
 * of the checkpoint's time before the freeze (a 64 MiB checkpoint waited a third of its time
 * for it), so a small tree hashed on one thread while frozen, and every chunk cost two
 * messages. The pool's threads start with its first task, in microseconds. A Node that does
 * not export SHA-256 to addons (start() rejects) leaves the writer hashing on the JS thread.
 * Nothing runs once the last update settled: close() only refuses later use.
 */
export class HashPool {
  private started: Promise<void> | undefined;
  private up = false;
  /** Updates on the pool now, and those waiting for a turn. */
  private active = 0;
  private readonly waiting: Array<() => void> = [];

  /** `threads`: how many chunks hash at once (hashThreads()). */
  constructor(readonly threads = hashThreads()) {}

  /** Makes the pool ready; rejects if this Node gives the addon no SHA-256. */
  start(): Promise<void> {
    this.started ??= (async () => {
      if (!native().sha256Init(new Uint8Array(HASH_STATE_BYTES))) throw new Error('this Node exports no SHA-256 to addons');
      this.up = true;
    })();
    return this.started;
  }

  /** Whether it can take work now. */
  get running(): boolean {
    return this.up;
  }

  /** A new hash's state (256 bytes of its own: aligned as the addon wants). */
  newState(): Uint8Array {
    const state = new Uint8Array(HASH_STATE_BYTES);
    if (!native().sha256Init(state)) throw new Error('sha256Init failed');
    return state;
  }

  /** Adds `data` to the hash `state` on the pool, once fewer than `threads` are at it. */
  async update(state: Uint8Array, data: Uint8Array): Promise<void> {
    if (!this.up) throw new Error('the hash pool is not running');
    if (this.active >= this.threads) await new Promise<void>((resolve) => this.waiting.push(resolve));
    else this.active++;
    try {
      await native().sha256Update(state, data);
    } finally {
      // The turn goes to the next waiting update as it is (active stays), else it is given back.
      const next = this.waiting.shift();
      if (next) next();
      else this.active--;
    }
  }

  /** The hex digest of `state` (spent then). */
  final(state: Uint8Array): string {
    const out = Buffer.allocUnsafe(32);
    native().sha256Final(state, out);
    return out.toString('hex');
  }

  /** Refuses later work (idempotent); updates on the pool finish on their own. */
  async close(): Promise<void> {
    this.up = false;
  }
}

/** The bytes of a sha256 state for the addon (native sha256Init). */
const HASH_STATE_BYTES = 256;

/**
 * How many chunks hash at once: one per core, leaving at least one of libuv's threads
 * (UV_THREADPOOL_SIZE, 4 by default) to the writes, which take turns with the hashes there.
 */
export function hashThreads(): number {
  return Math.max(1, Math.min(availableParallelism(), libuvThreads() - 1));
}

/** The threads of libuv's pool (UV_THREADPOOL_SIZE, else 4: libuv's default). */
function libuvThreads(): number {
  const n = Number(process.env['UV_THREADPOOL_SIZE']);
  return Number.isInteger(n) && n > 0 ? Math.min(n, 1024) : 4;
}

/** How writeImage may be stopped and cleaned up after. */
export interface WriteOptions {
  onProgress?: (bytesWritten: number, totalBytes: number) => void;
  /** Aborts the write between two chunks; the temporary file is removed. */
  signal?: AbortSignal;
  /** Registers the removal of the temporary file, so a fatal exit removes it too. */
  session?: Session;
  /** Signs the manifest with this Ed25519 private key (sign.ts signingKey()): adds manifest.sig. */
  signKey?: KeyObject;
  /**
   * Signs the manifest with this signer (sign.ts imageSigner()) instead of one made from
   * `signKey` here: a checkpoint makes it before the freeze.
   */
  signer?: ImageSigner;
  /**
   * A running hash worker for entries above INLINE_HASH_BYTES (its owner starts and closes
   * it); without one, or if it is not running, every entry is hashed on the JS thread.
   */
  hashPool?: HashPool;
  /**
   * Called once every entry's producer has returned in the pass that writes (no producer runs
   * again after it); the writes may still be in flight and nothing is synced yet.
   */
  onProduced?: () => Promise<void> | void;
  /** Where to write, opened ahead (openImageTarget; its path is `path`); else opened here. */
  target?: ImageTarget;
  /**
   * The stream's reader already holds some pages (pre-copy: precopy.ts ImageFilter puts them
   * back): `paged` entries' producers get `held`, and the pages it names are left out of the
   * stream. Only for a stream (a regular file gets every byte); the result is not a tar until
   * its reader has put them back.
   */
  omitHeld?: boolean;
}

/**
 * Where an image goes: a regular file (or a new path) is written under a temporary name in
 * the same directory and renamed over `path` only once complete and fsynced, so an existing
 * image survives any failure; stdout and other non-regular files (a FIFO, /dev/null) are
 * written in place.
 */
export class ImageTarget {
  private closed = false;

  constructor(
    /** As given ('-' = stdout). */
    readonly path: string,
    readonly fd: number,
    /** The temporary file, '' when writing in place. */
    readonly temp: string,
    readonly seekable: boolean,
    /** Opened with O_DIRECT: every write aligned (direct.ts). */
    readonly direct: boolean,
    /** A reader in this process takes the stream instead (`fd` is -1). */
    readonly sink?: TarSink,
  ) {}

  /** Closes the descriptor (stdout stays open); idempotent. */
  close(): void {
    if (!this.closed && this.fd !== 1 && this.fd >= 0) {
      this.closed = true;
      try { closeSync(this.fd); } catch { /* already closed */ }
    }
  }

  /** Closes it and removes the temporary file: nothing of an unfinished image stays. */
  discard(): void {
    this.close();
    if (this.temp !== '') rmSync(this.temp, { force: true });
  }
}

/**
 * Opens where an image goes, ahead of writeImage (options.target), so that a checkpoint does
 * it before it stops the tree; the caller discards it if it never gets to writeImage, which
 * otherwise takes it over. Throws EIMAGE. With `sink`, nothing is opened: the stream goes to
 * it, and `path` only names it.
 */
export function openImageTarget(path: string, sink?: TarSink): ImageTarget {
  if (sink !== undefined) return new ImageTarget(path, -1, '', false, false, sink);
  try {
    return openTarget(path);
  } catch (err) {
    const where = path === '-' ? 'to stdout' : path;
    throw new FerryError('EIMAGE', `cannot write image ${where}: ${describeCause(err)} (check the directory exists and is writable)`, { cause: err });
  }
}

function openTarget(path: string): ImageTarget {
  if (path === '-') return new ImageTarget(path, 1, '', false, false);
  let existing: Stats | undefined;
  try {
    existing = statSync(path);
  } catch { /* a new image */ }
  if (existing !== undefined && !existing.isFile()) {
    const fd = openSync(path, 'w');
    return new ImageTarget(path, fd, '', false, false);
  }
  // Named after ferry's pid: a leftover of a ferry that was killed (SIGKILL leaves it) is
  // recognisable, and removed here by the next write to the same path.
  removeStaleTemps(path);
  const temp = join(dirname(path), `.${basename(path)}.ferry-${process.pid}.tmp`);
  const fd = openSync(temp, 'wx', 0o600);
  const dfd = directFd(temp, fd);
  return new ImageTarget(path, dfd, temp, true, dfd !== fd);
}

/**
 * An O_DIRECT descriptor of the new file `temp` (open as `fd`), in place of `fd`, if its file
 * system takes an aligned 512-byte write through it (a device with bigger blocks, or a file
 * system without O_DIRECT, refuses with EINVAL); else `fd` itself.
 */
function directFd(temp: string, fd: number): number {
  let dfd = -1;
  try {
    dfd = openSync(temp, constants.O_WRONLY | constants.O_DIRECT);
    writeSync(dfd, directBuffer(DIRECT_ALIGN), 0, DIRECT_ALIGN, 0);
  } catch {
    if (dfd >= 0) closeSync(dfd);
    return fd;
  }
  closeSync(fd);
  return dfd;
}

/** Removes the temporary files of `path` left by ferry processes that no longer exist. */
function removeStaleTemps(path: string): void {
  const prefix = `.${basename(path)}.ferry-`;
  let names: string[];
  try {
    names = readdirSync(dirname(path));
  } catch {
    return; // the open that follows says what is wrong
  }
  for (const name of names) {
    if (!name.startsWith(prefix) || !name.endsWith('.tmp')) continue;
    const pid = Number(name.slice(prefix.length, -'.tmp'.length));
    if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && !existsSync(`/proc/${pid}`)) {
      rmSync(join(dirname(path), name), { force: true });
    }
  }
}

/**
 * Writes a small throw-away image the way writeImage writes a small process's (a JSON entry,
 * a chunked one from aligned memory, signed if `signer` is given, O_DIRECT if `target` is)
 * and `extra` entries, into an unnamed file (O_TMPFILE) in `target`'s directory, which is
 * gone when it is closed, at once. A command is a fresh Node process, and V8 compiles each function on its first
 * call: the writer's first image paid 2-3 ms more than the next, measured here, which a
 * checkpoint that kills its tree pays while the tree is stopped; a checkpoint calls this
 * before the freeze. Best effort: where no such file can be made (a stream, a file system
 * without O_TMPFILE) or anything fails, the first real image pays the compiling instead.
 */
export async function warmUpWriter(target: ImageTarget, header: ManifestHeader, signer?: ImageSigner, extra: readonly ImageEntry[] = []): Promise<void> {
  if (!target.seekable) return;
  let fd: number;
  try {
    fd = openSync(dirname(target.path), O_TMPFILE | constants.O_WRONLY | (target.direct ? O_DIRECT : 0), 0o600);
  } catch {
    return;
  }
  const data = directBuffer(4 * DIRECT_ALIGN);
  const json = Buffer.from(JSON.stringify(header));
  const entries: ImageEntry[] = [
    { name: 'warm-up.json', size: json.length, produce: async (sink) => { await sink(json); } },
    { name: 'warm-up.bin', size: data.length, chunked: true, produce: async (sink) => { await sink(data); } },
    ...extra,
  ];
  try {
    // No temporary name: nothing to rename; writeImage closes the descriptor.
    await writeImage('(warm-up)', header, entries, { target: new ImageTarget('(warm-up)', fd, '', true, target.direct), ...(signer ? { signer } : {}) });
  } catch { /* the real image meets whatever it was */ }
}

/** What writeImage did. */
export interface WriteResult {
  /** Bytes of the tar. */
  bytes: number;
  manifest: Manifest;
  /** Milliseconds from the first byte to the last (every entry read, hashed and written). */
  dataMs: number;
  /** Milliseconds of the final fsync, the rename and its directory's fsync (0 for a stream). */
  syncMs: number;
}

/** Writes the image to `path` ('-' = stdout). */
export async function writeImage(path: string, header: ManifestHeader, entries: ImageEntry[],
  options: WriteOptions = {}): Promise<WriteResult> {
  for (const e of entries) {
    checkEntryName(e.name);
    if (e.name === MANIFEST_NAME || e.name === SIGNATURE_NAME) throw new Error(`image entry name ${e.name} is reserved`);
    if (Buffer.byteLength(e.name) >= 100) throw new Error(`image entry name too long for a plain header: ${e.name}`);
  }
  const { requires, ...rest } = header;
  const required = requires !== undefined && requires.length > 0;
  const manifest: Manifest = {
    format: IMAGE_FORMAT,
    // The oldest version that holds what the image uses, so older readers still take every
    // other image: 7 with required features, 6 with a pageDigests entry, else 5.
    formatVersion: required ? REQUIRES_FORMAT_VERSION
      : entries.some((e) => e.chunked === true && e.paged === true) ? PAGED_FORMAT_VERSION : PAGED_FORMAT_VERSION - 1,
    ...rest,
    ...(required ? { requires: [...requires] } : {}),
    entries: entries.map(placeholderEntry),
  };
  const signer = options.signer ?? (options.signKey !== undefined ? imageSigner(options.signKey) : undefined);
  const signatureBytes = signer !== undefined ? BLOCK + padded(signer.placeholder.length) : 0;

  const where = path === '-' ? 'to stdout' : path;
  const target = options.target ?? openImageTarget(path);
  const { fd, temp, seekable } = target;
  // The tar's layout, from the manifest's length: where a file is written, that of the
  // placeholders (the final manifest has the same); a stream writes the final one first, and
  // its layout waits for it (a pre-copy's frozen image: the manifest of 4 GiB holds 4,096
  // chunk digests, and a placeholder made and encoded in the frozen window cost some 3 ms).
  // A big entry's data starts on a 4 KiB boundary (tar-out.ts DATA_ALIGN).
  const layout = (manifestBytes: number): { pads: number[]; total: number } => {
    const pads = entryPads(BLOCK + padded(manifestBytes) + signatureBytes, entries.map((e) => e.size));
    return {
      pads,
      total: BLOCK + padded(manifestBytes) + signatureBytes + entries.reduce((s, e, i) => s + pads[i]! + BLOCK + padded(e.size), 0) + 2 * BLOCK,
    };
  };
  const placeholder = seekable ? Buffer.from(JSON.stringify(manifest)) : undefined;
  const discard = (): void => target.discard();
  const dropUndo = options.session?.onUndo(`remove ${temp || 'nothing'}`, discard);
  const pool = options.hashPool;
  /** What the first pass of a stream kept of its `paged` entries, written as it is by the second (KeptOutput). */
  const replays = new Map<ImageEntry, ReadonlyArray<Buffer | number>>();
  let tData: number | undefined;
  const t0 = performance.now();
  try {
    if (!seekable) {
      // Pass 1: hash everything.
      const kept = { bytes: 0 };
      for (const [i, e] of entries.entries()) {
        const h = hashFor(e, pool);
        let n = 0;
        const out = h.kind === 'paged' && options.omitHeld === true ? new KeptOutput(kept) : undefined;
        const held = out !== undefined && h.kind === 'paged'
          ? (digests: Buffer | HeldDigests): Promise<void> => {
            const given = heldDigests(digests);
            n += given.pages * DIGEST_PAGE;
            out.held(given.pages);
            return h.h.held(given);
          } : undefined;
        await e.produce(async (chunk) => {
          options.signal?.throwIfAborted();
          n += chunk.length;
          out?.chunk(chunk);
          await h.h.update(chunk);
        }, held);
        if (n !== e.size) throw new Error(`entry ${e.name} produced ${n} bytes, expected ${e.size}`);
        await record(manifest.entries[i]!, h);
        if (out?.items !== undefined) replays.set(e, out.items);
      }
    }
    // Written now: the placeholders (a regular file), else the final manifest and its signature.
    const head = placeholder ?? Buffer.from(JSON.stringify(manifest));
    const signature = seekable ? signer?.placeholder : signer?.sign(head);
    const { pads, total } = layout(head.length);
    // The pool's threads the hashes do not take are the writes' (TarOut).
    const writeSlots = pool?.running === true ? Math.max(1, libuvThreads() - pool.threads) : Infinity;
    const out = new TarOut(fd, seekable, target.direct, total, options.onProgress, writeSlots, target.sink);
    const bytes = await writeTar(out, manifest, head, signature, entries, pads, seekable, pool, total, options, replays);
    if (seekable) {
      const final = Buffer.from(JSON.stringify(manifest));
      if (final.length !== head.length) throw new Error('manifest length changed while writing');
      rewrite(out, fd, final, BLOCK);
      // The signature entry's data starts one header after the manifest's padded data.
      if (signer !== undefined) rewrite(out, fd, signer.sign(final), BLOCK + padded(final.length) + BLOCK);
      out.writeGathered(); // a small tar on a direct descriptor goes out in one write (tar-out.ts)
      tData = performance.now();
      fsyncSync(fd);
    }
    // Every write through it is done: the next image of this process (the real one after a
    // warm-up) takes it instead of making its own (tar-out.ts spareStaging).
    out.releaseStaging();
    options.signal?.throwIfAborted();
    target.close();
    if (temp !== '') {
      renameSync(temp, path);
      syncDir(dirname(path));
    }
    dropUndo?.();
    return { bytes, manifest, dataMs: (tData ?? performance.now()) - t0, syncMs: tData !== undefined ? performance.now() - tData : 0 };
  } catch (err) {
    dropUndo?.();
    discard();
    if (err instanceof FerryError || (options.signal?.aborted && err === options.signal.reason)) throw err;
    throw new FerryError('EIMAGE', `cannot write image ${where}: ${describeCause(err)}${hintFor(err)}`, { cause: err });
  }
}

/** What to do about a failed write, by errno. */
function hintFor(err: unknown): string {
  switch (errnoCode(err)) {
    case 'ENOSPC': return ' (the file system is full: free space or choose another --image path; the process was left running)';
    case 'EDQUOT': return ' (over the disk quota; the process was left running)';
    case 'EPIPE': return ' (the reader of the image went away; the process was left running)';
    default: return ' (the process was left running)';
  }
}

/** fsync(2) of a directory, so a rename in it survives a crash. */
function syncDir(dir: string): void {
  let dfd = -1;
  try {
    dfd = openSync(dir, 'r');
    fsyncSync(dfd);
  } catch { /* a directory that cannot be opened or synced: the rename itself happened */ } finally {
    if (dfd >= 0) closeSync(dfd);
  }
}

/**
 * Writes the tar: `head` as manifest.json, then `signature` (if any) as manifest.sig, then the
 * entries; with `hash`, hashes each entry on the way into `manifest` (else it has them already),
 * the big ones on `pool` if it runs. A chunk is hashed and written at once (hashing on the
 * pool's workers, the write on the libuv pool), while its producer reads the next one.
 * `onProduced` is called once every producer has returned.
 */
async function writeTar(out: TarOut, manifest: Manifest, head: Buffer, signature: Buffer | undefined, entries: ImageEntry[],
  pads: readonly number[], hash: boolean, pool: HashPool | undefined, total: number, options: WriteOptions,
  replays: ReadonlyMap<ImageEntry, ReadonlyArray<Buffer | number>> = new Map()): Promise<number> {
  const { signal } = options;
  const mtime = new Date(manifest.createdAt);
  // Every header (and pax padding before it: entryPads) in aligned memory, so that a direct
  // descriptor takes it as it is.
  const names = [MANIFEST_NAME, ...(signature !== undefined ? [SIGNATURE_NAME] : []), ...entries.map((e) => e.name)];
  const headerBytes = names.length * BLOCK + pads.reduce((s, p) => s + p, 0);
  const headers = out.direct ? directBuffer(headerBytes) : Buffer.alloc(headerBytes);
  let pos = 0;
  let at = 0;
  const writes: Array<Promise<void>> = [];
  /** Starts the entry `name` of `size` bytes at the current position, behind `pad` bytes of pax padding. */
  const begin = (name: string, size: number, pad = 0): { w: EntryOut; dataStart: number } => {
    const h = headers.subarray(at, at += pad + BLOCK);
    if (pad > 0) padHeader(h, pad, mtime);
    tarHeader(name, size, mtime).copy(h, pad);
    const w = new EntryOut(out, pos, h);
    const dataStart = pos + pad + BLOCK;
    pos = dataStart + padded(size);
    return { w, dataStart };
  };
  /** The end of an entry: its padding (written only to a stream: a file has holes there). */
  const finish = (w: EntryOut, size: number): Promise<void> => {
    const tail = padded(size) - size;
    return !out.seekable && tail > 0 ? w.put(Buffer.alloc(tail)).then(() => w.end()) : w.end();
  };
  const whole = (name: string, data: Buffer): void => {
    const { w } = begin(name, data.length);
    writes.push(w.put(data), finish(w, data.length));
  };
  try {
    whole(MANIFEST_NAME, head);
    if (signature !== undefined) whole(SIGNATURE_NAME, signature);
    for (const [i, e] of entries.entries()) {
      const { w } = begin(e.name, e.size, pads[i]);
      const h = hash ? hashFor(e, pool) : undefined;
      let produced = 0;
      // Held pages leave no bytes in a stream (writeImage hashed them in its first pass).
      const omit = !out.seekable && options.omitHeld === true && e.chunked === true && e.paged === true;
      const skip = (pages: number): Promise<void> => {
        const n = pages * DIGEST_PAGE;
        if (produced + n > e.size) return Promise.reject(new Error(`entry ${e.name} produced more than ${e.size} bytes`));
        w.skip(n);
        produced += n;
        return Promise.resolve();
      };
      const sink = (chunk: Buffer): Promise<void> => {
        if (out.failure !== undefined) return Promise.reject(out.failure);
        if (signal?.aborted) return Promise.reject(signal.reason);
        if (produced + chunk.length > e.size) return Promise.reject(new Error(`entry ${e.name} produced more than ${e.size} bytes`));
        const hashed = h?.h.update(chunk);
        const written = w.put(chunk);
        produced += chunk.length;
        return hashed ? Promise.all([hashed, written]).then(() => undefined) : written;
      };
      const kept = omit ? replays.get(e) : undefined;
      if (kept !== undefined) {
        // The first pass's own bytes, in its order: the producer is not run (nor its pages read)
        // again. All handed over at once (they are in memory already, and TarOut keeps their
        // order): waiting for each write before the next cost a round trip through the pipe each.
        const sent: Array<Promise<void>> = [];
        for (const item of kept) {
          const p = typeof item === 'number' ? skip(item) : sink(item);
          p.catch(() => {}); // awaited below; a later one may fail first
          sent.push(p);
        }
        await Promise.all(sent);
      } else {
        await e.produce(sink, omit ? (digests) => skip(heldDigests(digests).pages) : undefined);
      }
      if (produced !== e.size) throw new Error(`entry ${e.name} produced ${produced} bytes, expected ${e.size}`);
      writes.push(finish(w, e.size));
      if (h) await record(manifest.entries[i]!, h);
    }
    await options.onProduced?.();
    if (!out.seekable) writes.push(out.write(Buffer.alloc(2 * BLOCK), pos));
    await Promise.all(writes);
    await out.settled();
    if (out.failure !== undefined) throw out.failure;
    return total;
  } catch (err) {
    // The first failure is the one to report; no write may still be in flight when the
    // caller closes the descriptor.
    const first = out.failure ?? err;
    for (const p of writes) p.catch(() => {});
    await out.settled();
    throw first;
  }
}
