/**
 * Writes an image: a tar stream (produced by tar-stream's pack) whose first entry is the
 * manifest listing every other entry with its size and sha256.
 *
 * The manifest must come first, yet the hashes are only known once the data has been read,
 * and an image may be far larger than memory. All names and sizes are known up front, so the
 * manifest's length is too (a placeholder with 64 zeros per hash has the final length):
 * - to a regular file: write the placeholder, stream every entry once while hashing it, then
 *   rewrite the manifest bytes in place and fsync;
 * - to anything else (stdout, a pipe, a socket): run every producer once to hash, then again
 *   to write. Producers must therefore be repeatable.
 * With a sign key, a second entry follows the manifest, manifest.sig: its Ed25519 signature
 * over the final manifest bytes (sign.ts). Its length is fixed, so it is written as a
 * placeholder and rewritten with the manifest (regular file), or made once the first pass has
 * filled in the hashes (anything else).
 * Page data flows by reference: a producer's chunk is written on the libuv pool and, for an
 * entry above INLINE_HASH_BYTES when the caller passed a running HashPool, hashed on its worker
 * thread, while the JS thread reads the next chunk; the sink's promise resolves once that
 * chunk is hashed and on the file descriptor, so the producer may reuse it. Small entries, and
 * every entry without a running pool, are hashed on the JS thread: writeImage never starts a
 * thread (a checkpoint writes while the tree is stopped).
 */
import { createHash, type Hash, type KeyObject } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { closeSync, existsSync, fsyncSync, openSync, readdirSync, renameSync, rmSync, statSync, write, writeSync, type Stats } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import tar from 'tar-stream';
import { FerryError, describeCause, errnoCode } from '../errors.js';
import type { Session } from '../session.js';
import {
  checkEntryName, chunkCount, FORMAT_VERSION, IMAGE_FORMAT, MANIFEST_NAME, type Manifest, type ManifestEntry,
  type ManifestHeader,
} from './manifest.js';
import { imageSigner, SIGNATURE_NAME } from './sign.js';

/** One entry of the image after the manifest. */
export interface ImageEntry {
  /** Path inside the tar, e.g. 'tasks/1234/pages.bin' (under 100 bytes: plain ustar headers). */
  name: string;
  /** Exact size in bytes, known before any data is produced. */
  size: number;
  /**
   * Produces exactly `size` bytes through `sink`. May be called twice. A chunk may be reused
   * once its sink promise resolved; several sink calls may be outstanding (order is kept).
   */
  produce(sink: (chunk: Buffer) => Promise<void>): Promise<void>;
  /**
   * Listed with a sha256 per CHUNK_BYTES instead of one for the whole (page data): restore
   * verifies each chunk as it reads it, and chunks hash independently.
   */
  chunked?: boolean;
}

/** Chunk size of chunked entries (the manifest says it; readers take it from there). */
export const CHUNK_BYTES = 4 << 20;

const BLOCK = 512;
const ZERO_HASH = '0'.repeat(64);
const padded = (n: number): number => Math.ceil(n / BLOCK) * BLOCK;

/** Writes all of `buf` at the fd's current position (waiting out EAGAIN on non-blocking pipes). */
function writeFully(fd: number, buf: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    let off = 0;
    const step = (): void => {
      if (off >= buf.length) return resolve();
      write(fd, buf, off, buf.length - off, null, (err, n) => {
        if (err) {
          if (err.code === 'EAGAIN') return void setTimeout(step, 1);
          return reject(err);
        }
        off += n;
        step();
      });
    };
    step();
  });
}

/** Writes all of `buf` at offset `pos` of a regular file. */
function writeAt(fd: number, buf: Buffer, pos: number): void {
  for (let off = 0; off < buf.length;) off += writeSync(fd, buf, off, buf.length - off, pos + off);
}

/**
 * Entries up to this size are hashed on the JS thread even when a hash worker runs: sha256
 * takes 0.15 ms for 256 KiB here (1.6 GB/s), about one round trip to the worker.
 */
export const INLINE_HASH_BYTES = 256 * 1024;

/**
 * sha256 of one entry, computed in one place: on the pool's worker thread when the entry was
 * given one, else on the JS thread. A chunk sent to the worker must stay untouched until
 * update() resolves; one that does not live in a SharedArrayBuffer is copied into one first.
 */
class EntryHash {
  private readonly inline: Hash | undefined;
  private readonly id: number;
  constructor(private readonly pool: HashPool | undefined) {
    this.id = pool?.newId() ?? 0;
    if (!pool) this.inline = createHash('sha256');
  }

  update(chunk: Buffer): Promise<void> | undefined {
    if (!this.pool) {
      this.inline!.update(chunk);
      return undefined;
    }
    let data = chunk;
    if (!(chunk.buffer instanceof SharedArrayBuffer)) {
      data = Buffer.from(new SharedArrayBuffer(chunk.length));
      chunk.copy(data);
    }
    const sab = data.buffer as SharedArrayBuffer;
    return this.pool.request({ op: 'update', id: this.id, sab, offset: data.byteOffset, length: data.length }).then(() => undefined);
  }

  async digest(): Promise<string> {
    if (!this.pool) return this.inline!.digest('hex');
    return (await this.pool.request({ op: 'digest', id: this.id })) as string;
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

type AnyHash = { kind: 'whole'; h: EntryHash } | { kind: 'chunked'; h: ChunkedHash };

/** The hash of entry `e`: on `pool`'s worker if it runs and the entry is worth the round trips. */
function hashFor(e: ImageEntry, pool: HashPool | undefined): AnyHash {
  const on = pool?.running && e.size > INLINE_HASH_BYTES ? pool : undefined;
  return e.chunked ? { kind: 'chunked', h: new ChunkedHash(on) } : { kind: 'whole', h: new EntryHash(on) };
}

/** Puts the digest(s) of `h` into the manifest's entry. */
async function record(entry: ManifestEntry, h: AnyHash): Promise<void> {
  if (h.kind === 'chunked' && 'chunks' in entry) entry.chunks = await h.h.digests();
  else if (h.kind === 'whole' && 'sha256' in entry) entry.sha256 = await h.h.digest();
}

/** The manifest's entry for `e`, its digests zeros until they are known. */
function placeholderEntry(e: ImageEntry): ManifestEntry {
  if (!e.chunked) return { name: e.name, size: e.size, sha256: ZERO_HASH };
  return { name: e.name, size: e.size, chunkSize: CHUNK_BYTES, chunks: Array<string>(chunkCount(e.size, CHUNK_BYTES)).fill(ZERO_HASH) };
}

/** One worker thread of a HashPool and the requests it has not answered yet. */
class Lane {
  worker: Worker | undefined;
  up = false;
  readonly waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: unknown) => void }>();
  readonly ready: Promise<void>;

  constructor() {
    this.ready = new Promise<void>((resolve, reject) => {
      // A worker inherits the process's execArgv; --input-type (node -e) is refused there.
      const execArgv = process.execArgv.filter((a) => !a.startsWith('--input-type'));
      const worker = new Worker(new URL('./hash-worker.js', import.meta.url), { execArgv });
      this.worker = worker;
      worker.on('message', (r: { ready?: boolean; seq?: number; digest?: string }) => {
        if (r.ready) {
          this.up = true;
          worker.unref();
          resolve();
          return;
        }
        this.waiting.get(r.seq!)?.resolve(r.digest);
        this.waiting.delete(r.seq!);
        if (this.waiting.size === 0) worker.unref();
      });
      const fail = (err: unknown): void => {
        this.up = false;
        for (const w of this.waiting.values()) w.reject(err);
        this.waiting.clear();
        reject(err);
      };
      worker.on('error', fail);
      worker.on('exit', (code) => fail(new Error(`the hash worker exited (code ${code})`)));
    });
    this.ready.catch(() => {}); // a start nobody waits for fails quietly; its users see it
  }
}

/**
 * Hashing worker threads. Starting a thread costs tens of milliseconds (a new isolate, the
 * module loaded), so the owner starts them before it needs them — a checkpoint does so before
 * it stops the tree, and only when the tree has enough memory to be worth it — and writeImage
 * only uses a pool that already runs: it never starts a thread itself. Each hash id belongs to
 * one thread (ids in turn): the chunks of a chunked entry, each its own hash, are spread over
 * all of them. Idle, the workers do not keep the process alive (unref); the owner closes them.
 */
export class HashPool {
  private lanes: Lane[] = [];
  private ready: Promise<void> | undefined;
  private seq = 0;
  private ids = 0;

  /** `threads`: how many worker threads hash at once. */
  constructor(private readonly threads = 1) {}

  /** Starts the worker threads; resolves once every one is ready for work. */
  start(): Promise<void> {
    if (!this.ready) {
      this.lanes = Array.from({ length: this.threads }, () => new Lane());
      this.ready = Promise.all(this.lanes.map((l) => l.ready)).then(() => undefined);
      this.ready.catch(() => {}); // a start nobody waits for fails quietly; its users see it
    }
    return this.ready;
  }

  /** Whether every worker is up and can take work now. */
  get running(): boolean {
    return this.lanes.length > 0 && this.lanes.every((l) => l.up);
  }

  /** A fresh hash id (ids are never reused, so a hash abandoned by a failed write stays apart). */
  newId(): number {
    return ++this.ids;
  }

  request(m: { op: 'update'; id: number; sab: SharedArrayBuffer; offset: number; length: number } | { op: 'digest'; id: number }): Promise<unknown> {
    const lane = this.lanes[m.id % Math.max(1, this.lanes.length)];
    const worker = lane?.worker;
    if (!lane?.up || !worker) return Promise.reject(new Error('the hash worker is not running'));
    const seq = ++this.seq;
    // Outstanding work keeps the process alive until it is answered.
    if (lane.waiting.size === 0) worker.ref();
    return new Promise((resolve, reject) => {
      lane.waiting.set(seq, { resolve, reject });
      worker.postMessage({ ...m, seq });
    });
  }

  /** Stops the workers (idempotent). */
  async close(): Promise<void> {
    const lanes = this.lanes;
    this.lanes = [];
    await Promise.all(lanes.map(async (l) => {
      const worker = l.worker;
      l.worker = undefined;
      l.up = false;
      await worker?.terminate();
    }));
  }
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
   * A running hash worker for entries above INLINE_HASH_BYTES (its owner starts and closes
   * it); without one, or if it is not running, every entry is hashed on the JS thread.
   */
  hashPool?: HashPool;
}

/**
 * Where an image goes: a regular file (or a new path) is written under a temporary name in
 * the same directory and renamed over `path` only once complete and fsynced, so an existing
 * image survives any failure; stdout and other non-regular files (a FIFO, /dev/null) are
 * written in place.
 */
interface Target {
  fd: number;
  /** The temporary file, '' when writing in place. */
  temp: string;
  seekable: boolean;
}

function openTarget(path: string): Target {
  if (path === '-') return { fd: 1, temp: '', seekable: false };
  let existing: Stats | undefined;
  try {
    existing = statSync(path);
  } catch { /* a new image */ }
  if (existing !== undefined && !existing.isFile()) {
    const fd = openSync(path, 'w');
    return { fd, temp: '', seekable: false };
  }
  // Named after ferry's pid: a leftover of a ferry that was killed (SIGKILL leaves it) is
  // recognisable, and removed here by the next write to the same path.
  removeStaleTemps(path);
  const temp = join(dirname(path), `.${basename(path)}.ferry-${process.pid}.tmp`);
  const fd = openSync(temp, 'wx', 0o600);
  return { fd, temp, seekable: true };
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

/** Writes the image to `path` ('-' = stdout). */
export async function writeImage(path: string, header: ManifestHeader, entries: ImageEntry[],
  options: WriteOptions = {}): Promise<{ bytes: number; manifest: Manifest }> {
  for (const e of entries) {
    checkEntryName(e.name);
    if (e.name === MANIFEST_NAME || e.name === SIGNATURE_NAME) throw new Error(`image entry name ${e.name} is reserved`);
    if (Buffer.byteLength(e.name) >= 100) throw new Error(`image entry name too long for a plain header: ${e.name}`);
  }
  const manifest: Manifest = {
    format: IMAGE_FORMAT,
    formatVersion: FORMAT_VERSION,
    ...header,
    entries: entries.map(placeholderEntry),
  };
  const placeholder = Buffer.from(JSON.stringify(manifest));
  const signer = options.signKey !== undefined ? imageSigner(options.signKey) : undefined;
  const signatureBytes = signer !== undefined ? BLOCK + padded(signer.placeholder.length) : 0;
  const total = BLOCK + padded(placeholder.length) + signatureBytes + entries.reduce((s, e) => s + BLOCK + padded(e.size), 0) + 2 * BLOCK;

  const where = path === '-' ? 'to stdout' : path;
  let target: Target;
  try {
    target = openTarget(path);
  } catch (err) {
    throw new FerryError('EIMAGE', `cannot write image ${where}: ${describeCause(err)} (check the directory exists and is writable)`, { cause: err });
  }
  const { fd, temp, seekable } = target;
  let closed = false;
  const discard = (): void => {
    if (!closed && fd !== 1) {
      closed = true;
      try { closeSync(fd); } catch { /* already closed */ }
    }
    if (temp !== '') rmSync(temp, { force: true });
  };
  const dropUndo = options.session?.onUndo(`remove ${temp || 'nothing'}`, discard);
  const pool = options.hashPool;
  try {
    if (!seekable) {
      // Pass 1: hash everything.
      for (const [i, e] of entries.entries()) {
        const h = hashFor(e, pool);
        let n = 0;
        await e.produce(async (chunk) => { options.signal?.throwIfAborted(); n += chunk.length; await h.h.update(chunk); });
        if (n !== e.size) throw new Error(`entry ${e.name} produced ${n} bytes, expected ${e.size}`);
        await record(manifest.entries[i]!, h);
      }
    }
    // Written now: the placeholders (a regular file), else the final manifest and its signature.
    const head = seekable ? placeholder : Buffer.from(JSON.stringify(manifest));
    const signature = seekable ? signer?.placeholder : signer?.sign(head);
    const bytes = await writeTar(fd, manifest, head, signature, entries, seekable, pool, total, options);
    if (seekable) {
      const final = Buffer.from(JSON.stringify(manifest));
      if (final.length !== placeholder.length) throw new Error('manifest length changed while writing');
      writeAt(fd, final, BLOCK);
      // The signature entry's data starts one header after the manifest's padded data.
      if (signer !== undefined) writeAt(fd, signer.sign(final), BLOCK + padded(final.length) + BLOCK);
      fsyncSync(fd);
    }
    options.signal?.throwIfAborted();
    if (fd !== 1) {
      closed = true;
      closeSync(fd);
    }
    if (temp !== '') {
      renameSync(temp, path);
      syncDir(dirname(path));
    }
    dropUndo?.();
    return { bytes, manifest };
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
 * the big ones on `pool` if it runs.
 */
async function writeTar(fd: number, manifest: Manifest, head: Buffer, signature: Buffer | undefined, entries: ImageEntry[],
  hash: boolean, pool: HashPool | undefined, total: number, options: WriteOptions): Promise<number> {
  const { onProgress, signal } = options;
  const pack = tar.pack();
  let written = 0;
  let failure: unknown;
  const waiters: Array<{ at: number; resolve: () => void; reject: (e: unknown) => void }> = [];
  const settle = (): void => {
    for (let i = waiters.length - 1; i >= 0; i--) {
      const w = waiters[i]!;
      if (failure !== undefined) w.reject(failure);
      else if (written >= w.at) w.resolve();
      else continue;
      waiters.splice(i, 1);
    }
  };
  const pump = (async () => {
    try {
      for await (const chunk of pack as AsyncIterable<Buffer>) {
        await writeFully(fd, chunk);
        written += chunk.length;
        onProgress?.(written, total);
        settle();
      }
    } catch (err) {
      failure = err;
      settle();
      throw err;
    }
  })();
  // Observed below; until then a write error reaches the producers through `failure`.
  pump.catch(() => {});
  const reached = (at: number): Promise<void> => new Promise((resolve, reject) => {
    waiters.push({ at, resolve, reject });
    settle();
  });

  try {
    const mtime = new Date(manifest.createdAt);
    pack.entry({ name: MANIFEST_NAME, size: head.length, mtime, mode: 0o600 }, head);
    let pos = BLOCK + padded(head.length);
    if (signature !== undefined) {
      pack.entry({ name: SIGNATURE_NAME, size: signature.length, mtime, mode: 0o600 }, signature);
      pos += BLOCK + padded(signature.length);
    }
    for (const [i, e] of entries.entries()) {
      const dataStart = pos + BLOCK;
      const sink = pack.entry({ name: e.name, size: e.size, mtime, mode: 0o600 });
      const h = hash ? hashFor(e, pool) : undefined;
      let produced = 0;
      const done = new Promise<void>((resolve, reject) => {
        sink.on('error', reject);
        sink.on('close', resolve);
      });
      done.catch(() => {}); // awaited below unless a producer fails first
      await e.produce((chunk) => {
        if (failure !== undefined) return Promise.reject(failure);
        if (signal?.aborted) return Promise.reject(signal.reason);
        const hashed = h?.h.update(chunk);
        produced += chunk.length;
        if (produced > e.size) return Promise.reject(new Error(`entry ${e.name} produced more than ${e.size} bytes`));
        sink.write(chunk);
        const written = reached(dataStart + produced);
        return hashed ? Promise.all([hashed, written]).then(() => undefined) : written;
      });
      if (produced !== e.size) throw new Error(`entry ${e.name} produced ${produced} bytes, expected ${e.size}`);
      (sink as unknown as { end(): void }).end();
      await done;
      if (h) await record(manifest.entries[i]!, h);
      pos = dataStart + padded(e.size);
    }
    pack.finalize();
    await pump;
    return written;
  } catch (err) {
    // The first failure is the one to report: destroying the pack fails the pump too.
    const first = failure ?? err;
    // No write may still be in flight when the caller closes the descriptor.
    pack.destroy();
    await pump.catch(() => {});
    throw first;
  }
}
