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
 * Page data flows by reference: a producer's chunk is written on the libuv pool and, when it
 * lives in a SharedArrayBuffer, hashed on a worker thread, while the JS thread reads the next
 * chunk; the sink's promise resolves once that chunk is hashed and on the file descriptor, so
 * the producer may reuse it.
 */
import { createHash, type Hash } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { closeSync, fstatSync, fsyncSync, openSync, unlinkSync, write, writeSync } from 'node:fs';
import tar from 'tar-stream';
import { FerryError, describeCause } from '../errors.js';
import {
  checkEntryName, FORMAT_VERSION, IMAGE_FORMAT, MANIFEST_NAME, type Manifest, type ManifestEntry,
  type ManifestHeader,
} from './manifest.js';

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
}

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

/**
 * sha256 of one entry: chunks backed by a SharedArrayBuffer are hashed on a worker thread
 * (their buffer must then stay untouched until update() resolves), others inline.
 */
class EntryHash {
  private inline: Hash | undefined;
  constructor(private readonly pool: HashPool, private readonly id: number) {}

  update(chunk: Buffer): Promise<void> | undefined {
    if (chunk.buffer instanceof SharedArrayBuffer) {
      return this.pool.request({ op: 'update', id: this.id, sab: chunk.buffer, offset: chunk.byteOffset, length: chunk.length }).then(() => undefined);
    }
    (this.inline ??= createHash('sha256')).update(chunk);
    return undefined;
  }

  async digest(): Promise<string> {
    const remote = (await this.pool.request({ op: 'digest', id: this.id })) as string;
    return this.inline ? this.inline.digest('hex') : remote;
  }
}

/** One hashing worker per image write, started on first use. */
class HashPool {
  private worker: Worker | undefined;
  private seq = 0;
  private waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: unknown) => void }>();

  request(m: { op: 'update'; id: number; sab: SharedArrayBuffer; offset: number; length: number } | { op: 'digest'; id: number }): Promise<unknown> {
    if (!this.worker) {
      // A worker inherits the process's execArgv; --input-type (node -e) is refused there.
      const execArgv = process.execArgv.filter((a) => !a.startsWith('--input-type'));
      this.worker = new Worker(new URL('./hash-worker.js', import.meta.url), { execArgv });
      this.worker.on('message', (r: { seq: number; digest?: string }) => {
        this.waiting.get(r.seq)?.resolve(r.digest);
        this.waiting.delete(r.seq);
      });
      this.worker.on('error', (err) => {
        for (const w of this.waiting.values()) w.reject(err);
        this.waiting.clear();
      });
    }
    const seq = ++this.seq;
    return new Promise((resolve, reject) => {
      this.waiting.set(seq, { resolve, reject });
      this.worker!.postMessage({ ...m, seq });
    });
  }

  async close(): Promise<void> {
    await this.worker?.terminate();
  }
}

/** Writes the image to `path` ('-' = stdout). */
export async function writeImage(path: string, header: ManifestHeader, entries: ImageEntry[],
  options: { onProgress?: (bytesWritten: number, totalBytes: number) => void } = {}): Promise<{ bytes: number; manifest: Manifest }> {
  for (const e of entries) {
    checkEntryName(e.name);
    if (Buffer.byteLength(e.name) >= 100) throw new Error(`image entry name too long for a plain header: ${e.name}`);
  }
  const manifest: Manifest = {
    format: IMAGE_FORMAT,
    formatVersion: FORMAT_VERSION,
    ...header,
    entries: entries.map((e): ManifestEntry => ({ name: e.name, size: e.size, sha256: ZERO_HASH })),
  };
  const placeholder = Buffer.from(JSON.stringify(manifest));
  const total = BLOCK + padded(placeholder.length) + entries.reduce((s, e) => s + BLOCK + padded(e.size), 0) + 2 * BLOCK;

  const toStdout = path === '-';
  let fd: number;
  try {
    fd = toStdout ? 1 : openSync(path, 'w', 0o600);
  } catch (err) {
    throw new FerryError('EIMAGE', `cannot write image ${path}: ${describeCause(err)}`, { cause: err });
  }
  const seekable = !toStdout && fstatSync(fd).isFile();
  const pool = new HashPool();
  try {
    if (!seekable) {
      // Pass 1: hash everything.
      for (const [i, e] of entries.entries()) {
        const h = new EntryHash(pool, i);
        let n = 0;
        await e.produce(async (chunk) => { n += chunk.length; await h.update(chunk); });
        if (n !== e.size) throw new Error(`entry ${e.name} produced ${n} bytes, expected ${e.size}`);
        manifest.entries[i]!.sha256 = await h.digest();
      }
    }
    const bytes = await writeTar(fd, manifest, entries, seekable ? pool : undefined, total, options.onProgress);
    if (seekable) {
      const final = Buffer.from(JSON.stringify(manifest));
      if (final.length !== placeholder.length) throw new Error('manifest length changed while writing');
      writeSync(fd, final, 0, final.length, BLOCK);
      fsyncSync(fd);
    }
    if (!toStdout) closeSync(fd);
    return { bytes, manifest };
  } catch (err) {
    if (!toStdout) {
      try { closeSync(fd); } catch { /* already closed */ }
      try { unlinkSync(path); } catch { /* not a file we can remove */ }
    }
    throw new FerryError('EIMAGE', `cannot write image ${toStdout ? 'to stdout' : path}: ${describeCause(err)}`, { cause: err });
  } finally {
    await pool.close();
  }
}

/** Writes the tar; with `pool`, hashes each entry on the way (else the manifest already has them). */
async function writeTar(fd: number, manifest: Manifest, entries: ImageEntry[], pool: HashPool | undefined, total: number,
  onProgress?: (done: number, total: number) => void): Promise<number> {
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
  const reached = (at: number): Promise<void> => new Promise((resolve, reject) => {
    waiters.push({ at, resolve, reject });
    settle();
  });

  const mtime = new Date(manifest.createdAt);
  const manifestData = Buffer.from(JSON.stringify(manifest));
  pack.entry({ name: MANIFEST_NAME, size: manifestData.length, mtime, mode: 0o600 }, manifestData);
  let pos = BLOCK + padded(manifestData.length);
  for (const [i, e] of entries.entries()) {
    const dataStart = pos + BLOCK;
    const sink = pack.entry({ name: e.name, size: e.size, mtime, mode: 0o600 });
    const h = pool ? new EntryHash(pool, i) : undefined;
    let produced = 0;
    const done = new Promise<void>((resolve, reject) => {
      sink.on('error', reject);
      sink.on('close', resolve);
    });
    await e.produce((chunk) => {
      if (failure !== undefined) return Promise.reject(failure);
      const hashed = h?.update(chunk);
      produced += chunk.length;
      if (produced > e.size) return Promise.reject(new Error(`entry ${e.name} produced more than ${e.size} bytes`));
      sink.write(chunk);
      const written = reached(dataStart + produced);
      return hashed ? Promise.all([hashed, written]).then(() => undefined) : written;
    });
    if (produced !== e.size) throw new Error(`entry ${e.name} produced ${produced} bytes, expected ${e.size}`);
    (sink as unknown as { end(): void }).end();
    await done;
    if (h) manifest.entries[i]!.sha256 = await h.digest();
    pos = dataStart + padded(e.size);
  }
  pack.finalize();
  await pump;
  return written;
}
