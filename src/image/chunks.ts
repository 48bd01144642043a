/**
 * Reading a chunked entry (page data) with each chunk verified against its sha256 before any
 * byte of it is handed out, so restore reads every byte of the image once (docs/image-format.md,
 * "Chunked entries").
 *
 * Restore writes pages into the new process from the JS thread, synchronously (the tracee's
 * thread affinity, and /proc/PID/mem writes are plain pwrite(2)s). To keep both cores busy and
 * the disk reading meanwhile, the chunks are read and hashed by worker threads ("lanes") that
 * the JS thread drives through shared memory and Atomics, not messages: it never returns to
 * the event loop in the middle of a process's rebuild. The JS thread asks for the chunks it
 * will need next, each into one of a few shared buffers ("slots"); a lane reads the chunk into
 * its slot (pread(2), with O_DIRECT when the entry is not in the page cache: see below) and
 * hashes it there; the JS thread takes a slot once its digest matches, writes it into the
 * process while the lanes read and hash the next ones, and only then hands the slot back. The
 * bytes handed out are the very bytes hashed: no lane touches a slot between its digest and
 * its next request.
 * Why O_DIRECT: a checkpoint writes its image with O_DIRECT (direct.ts), so right after it (or
 * a reboot, or a copy) the image is not in the page cache, and a read through the page cache
 * fills fresh pages of it, which on this VM cost 1.8 s of CPU per GiB (the hypervisor backs
 * each on first touch: direct.ts) where a direct read costs 0.1 s and no copy. An entry that
 * is in the page cache (reader.ts asks cachestat(2)) is read through it: a copy from there is
 * 5-10 times as fast as the disk.
 * An image read partly from elsewhere (a migration target's spool, whose held pages are in its
 * page store: reader.ts ImageOverlay) is read by the lanes all the same, each chunk from the
 * pieces it lies in, one after the other into its slot, and hashed there.
 * A lane that has not answered within WAIT_MS may still be reading into its slot (a file
 * system that hangs): the JS thread gives up on that chunk, and on every slot of the ring.
 * Without lanes (a small image: starting one costs tens of milliseconds; or before they run)
 * each chunk is read and hashed on the JS thread before a byte of it is handed out.
 */
import { createHash } from 'node:crypto';
import { readSync } from 'node:fs';
import { constants } from 'node:os';
import type { Worker } from 'node:worker_threads';
import { workerThreads } from '../builtins.js';
import { FerryError, type ErrorContext } from '../errors.js';
import { native } from '../native/binding.js';
import { directBuffer, DIRECT_ALIGN, faultInLater, takeWarm } from './direct.js';

/** Control words of the ring (Int32Array indices): requests made (-1: closed). */
const HEAD = 0;
/** How many lanes serve the ring. */
const READY = 1;
/** Requests a lane has taken (each lane takes the next one when it is free). */
const TAKEN = 2;
/** Per slot: the number of the last request served (1-based). */
const DONE = 3;
/** Most slots a ring may have. */
const MAX_SLOTS = 8;
/** Per slot: 0, or the errno of the read that failed (a positive number), or -1: short read. */
const STATUS = DONE + MAX_SLOTS;
const CTL_WORDS = STATUS + MAX_SLOTS;
/**
 * Requests (Float64Array): slot, bytes to hash, fd, file offset, bytes to read, buffered fd,
 * 1 for a `pageDigests` entry (chunkDigest), the number of pieces the chunk is read from
 * (0: the one range the request names), and 1 when the slot's row of known page digests
 * holds some for this request (a page store's: ImagePiece.digests).
 */
const REQ_WORDS = 9;
/**
 * Pieces (Float64Array, the slot's own rows): O_DIRECT fd or -1, buffered fd, file offset and
 * length of each piece of the chunk, read one after the other into the slot (ImagePiece).
 */
const PIECE_WORDS = 4;
/** How long the JS thread waits for one chunk before it gives up on the lanes. */
const WAIT_MS = 60_000;

/** What hash-worker.ts is started with to serve a ChunkLoader as one of its lanes. */
export interface RingData {
  ring: {
    ctl: SharedArrayBuffer; req: SharedArrayBuffer; out: SharedArrayBuffer;
    /** Each slot's memory: `bytes` at `at` of `memory` (slots may share one: a slab). */
    slots: Array<{ memory: SharedArrayBuffer; at: number; bytes: number }>;
    /** Each slot's rows of pieces (`perSlot` of them), for requests read in pieces. */
    pieces: SharedArrayBuffer; perSlot: number;
    /**
     * Each slot's row of known page digests: `pagesPerSlot` flags (1: known), then as many
     * sha256 (KnownDigests).
     */
    known: SharedArrayBuffer; pagesPerSlot: number;
  };
}

/**
 * Worker threads ("lanes") reading chunks of the image into a few shared, aligned buffers
 * ("slots") and hashing them there, on request: submit() asks for a chunk into a slot, take()
 * blocks (Atomics.wait) until it is read and hashed. A free lane takes the next request, so
 * two lanes read and hash two chunks at once (one waits for the disk while the other hashes).
 * A slot is submitted again only after it was taken, so the ring never holds more requests
 * than slots. Nothing waits for the lanes to start: until one serves the ring (`ready`),
 * callers read and hash on their own thread; a lane that comes up later takes its share.
 */
export class ChunkLoader {
  readonly slots: Buffer[];
  private readonly ctl: Int32Array;
  private readonly req: Float64Array;
  private readonly out: Uint8Array;
  private readonly pieceRows: Float64Array;
  /** Each slot's row of known page digests (RingData's `known`). */
  private readonly knownRows: Uint8Array;
  private readonly pagesPerSlot: number;
  /** Most pieces one request may be read from (submit). */
  readonly maxPieces: number;
  private readonly workers: Worker[] = [];
  /** Lanes not started yet (`deferred`: start()). */
  private unstarted: { lanes: number; workerData: RingData } | undefined;
  /** The request number each slot waits for. */
  private readonly want: number[];
  private seq = 0;
  private closed = false;
  /**
   * A chunk was not read in time: its lane may still be writing into its slot (a read stuck
   * on a file system), so no slot of this ring is used again (`broken`).
   */
  private lost = false;
  /** How long take() waits for a chunk. */
  private readonly waitMs: number;

  /**
   * Starts `lanes` workers with `count` slots of at least `bytes` each (rounded up to
   * DIRECT_ALIGN), whose requests may be read from up to `pieces` pieces each (0: one range);
   * take() waits `waitMs` for a chunk (WAIT_MS; a test shortens it). They do not keep the
   * process alive; the owner closes them. `deferred`: the lanes start at start() only (until
   * then, as before they are up, callers read and hash on their own thread).
   */
  constructor(count: number, bytes: number, lanes = 1,
    { pieces = 0, waitMs = WAIT_MS, deferred = false }: { pieces?: number; waitMs?: number; deferred?: boolean } = {}) {
    if (count < 1 || count > MAX_SLOTS) throw new RangeError(`a chunk ring has 1 to ${MAX_SLOTS} slots`);
    const ctl = new SharedArrayBuffer(CTL_WORDS * 4);
    const req = new SharedArrayBuffer(MAX_SLOTS * REQ_WORDS * 8);
    const out = new SharedArrayBuffer(count * 32);
    const rows = new SharedArrayBuffer(Math.max(1, count * pieces * PIECE_WORDS) * 8);
    const slotBytes = Math.ceil(bytes / DIRECT_ALIGN) * DIRECT_ALIGN;
    // Rows of known digests only for requests read in pieces (the only ones that carry any).
    this.pagesPerSlot = pieces > 0 ? Math.ceil(slotBytes / DIGEST_PAGE) : 0;
    const known = new SharedArrayBuffer(Math.max(1, count * this.pagesPerSlot * 33));
    this.knownRows = new Uint8Array(known);
    // Warm buffers first (a migration target's, faulted in at the hello); the others cut
    // from one slab of fresh memory, so that huge pages can back it, faulted in on libuv's
    // pool while the restore goes on (a lane may read into a slot meanwhile).
    const bufs: Buffer[] = [];
    for (let b; bufs.length < count && (b = takeWarm(slotBytes)) !== undefined;) bufs.push(b);
    if (bufs.length < count) {
      const slab = directBuffer((count - bufs.length) * slotBytes);
      void faultInLater(slab);
      for (let at = 0; at < slab.length; at += slotBytes) bufs.push(slab.subarray(at, at + slotBytes));
    }
    this.slots = bufs;
    this.ctl = new Int32Array(ctl);
    this.req = new Float64Array(req);
    this.out = new Uint8Array(out);
    this.pieceRows = new Float64Array(rows);
    this.maxPieces = pieces;
    this.waitMs = waitMs;
    this.want = this.slots.map(() => 0);
    const slots = this.slots.map((s) => ({ memory: s.buffer as SharedArrayBuffer, at: s.byteOffset, bytes: s.length }));
    this.unstarted = { lanes, workerData: { ring: { ctl, req, out, slots, pieces: rows, perSlot: pieces, known, pagesPerSlot: this.pagesPerSlot } } };
    if (!deferred) this.start();
  }

  /** Starts the lanes (once; not after close()). */
  start(): void {
    const todo = this.unstarted;
    this.unstarted = undefined;
    if (todo === undefined || this.closed) return;
    // A worker inherits the process's execArgv; --input-type (node -e) is refused there.
    const execArgv = process.execArgv.filter((a) => !a.startsWith('--input-type'));
    for (let i = 0; i < todo.lanes; i++) {
      const worker = new (workerThreads().Worker)(new URL('./hash-worker.js', import.meta.url), { execArgv, workerData: todo.workerData });
      // A lane that fails to start never says it is ready: the JS thread does all the work.
      worker.on('error', () => {});
      worker.unref();
      this.workers.push(worker);
    }
  }

  /** Whether a lane serves the ring now (else the caller reads and hashes on its own thread). */
  get ready(): boolean {
    return !this.closed && !this.lost && Atomics.load(this.ctl, READY) > 0;
  }

  /** A chunk was not read in time: no slot may be used again (a lane may write it yet). */
  get broken(): boolean {
    return this.lost;
  }

  /**
   * Asks for `length` bytes at `offset` of `fd` in slot `slot`, hashed (only when ready). With
   * `direct` (an O_DIRECT descriptor of the same file, or -1), the read goes through it, padded
   * to DIRECT_ALIGN; it falls back to `fd` if the file refuses it. `paged`: the entry's digests
   * are of page digests (chunkDigest). With `pieces` (which add up to `length`), the chunk is
   * read from those instead, each the same way; false, and nothing asked, when there are more
   * than maxPieces. A paged chunk's pieces that carry their pages' digests (a page store's)
   * are not hashed again (knownDigests) when `usedKnown` is given: true in its [0] when some
   * were taken (the caller checks, after the read, that their file is intact).
   */
  submit(slot: number, fd: number, offset: number, length: number, direct: number, paged = false, pieces?: readonly ImagePiece[], usedKnown?: boolean[]): boolean {
    if (this.lost) throw new Error('the chunk reader stopped answering');
    if (pieces !== undefined && pieces.length > this.maxPieces) return false;
    if (pieces !== undefined && pieces.reduce((n, p) => n + p.len, 0) !== length) throw new RangeError('the pieces of a chunk add up to its length');
    const at = (this.seq % MAX_SLOTS) * REQ_WORDS;
    const aligned = direct >= 0 && offset % DIRECT_ALIGN === 0;
    const row = slot * this.pagesPerSlot * 33;
    const known = usedKnown !== undefined && paged && pieces !== undefined && length <= this.pagesPerSlot * DIGEST_PAGE
      && knownDigests(pieces, this.knownRows.subarray(row, row + this.pagesPerSlot), this.knownRows.subarray(row + this.pagesPerSlot, row + this.pagesPerSlot * 33));
    if (usedKnown !== undefined) usedKnown[0] = known;
    this.req.set([slot, length, aligned ? direct : fd, offset, aligned ? Math.ceil(length / DIRECT_ALIGN) * DIRECT_ALIGN : length, fd, paged ? 1 : 0,
      pieces?.length ?? 0, known ? 1 : 0], at);
    if (pieces !== undefined) {
      pieces.forEach((p, i) => this.pieceRows.set([p.direct ?? -1, p.fd, p.at, p.len], (slot * this.maxPieces + i) * PIECE_WORDS));
    }
    this.seq++;
    this.want[slot] = this.seq;
    Atomics.store(this.ctl, HEAD, this.seq);
    Atomics.notify(this.ctl, HEAD);
    return true;
  }

  /**
   * The sha256 (hex) of what was last submitted in `slot`, once read and hashed; blocks until
   * then. Throws what the read met: an errno error, or a short read ('truncated'); and, once
   * a chunk was not read in time, at once for every slot (`broken`).
   */
  take(slot: number): string {
    if (this.lost) throw new Error('the chunk reader stopped answering');
    const want = this.want[slot]!;
    for (const end = Date.now() + this.waitMs; ;) {
      const done = Atomics.load(this.ctl, DONE + slot);
      if (done === want) break;
      if (Date.now() > end) {
        // Its lane may still write into the slot, and hash what another request reads there:
        // the slot is never handed out or asked for again, nor any other of this ring.
        this.lost = true;
        throw new Error(`the chunk reader did not answer within ${this.waitMs / 1000} s`);
      }
      Atomics.wait(this.ctl, DONE + slot, done, Math.min(1000, this.waitMs));
    }
    const status = Atomics.load(this.ctl, STATUS + slot);
    if (status === -1) throw new ShortRead();
    if (status !== 0) {
      const code = Object.entries(constants.errno).find(([, n]) => n === status)?.[0] ?? `errno ${status}`;
      throw Object.assign(new Error(`pread: ${code}`), { code, errno: -status, syscall: 'pread' });
    }
    return Buffer.from(this.out.subarray(slot * 32, slot * 32 + 32)).toString('hex');
  }

  /**
   * Stops the lanes (idempotent). After a lane timed out, it may be blocked in a read(2)
   * that terminate() cannot interrupt (a hung file system): it is asked to stop and left to
   * end on its own, not waited for, so that what closes the image (a failed restore) goes on
   * to say why; it keeps nothing alive (unref).
   */
  async close(): Promise<void> {
    this.closed = true;
    Atomics.store(this.ctl, HEAD, -1);
    Atomics.notify(this.ctl, HEAD);
    const stopping = Promise.all(this.workers.map((w) => w.terminate()));
    if (!this.lost) {
      await stopping;
      return;
    }
    stopping.catch(() => {});
    for (const w of this.workers) w.unref();
  }
}

/** The image file ended before the chunk did. */
class ShortRead extends Error {
  constructor() {
    super('short read');
  }
}

/**
 * Reads `length` bytes at `offset` of `fd` into `buf` (with `read`, or pread(2)); the bytes it
 * got (fewer only at the end of the file).
 */
function readFully(fd: number, buf: Uint8Array, length: number, offset: number, read: ImageRead = readSync): number {
  let got = 0;
  while (got < length) {
    const n = read(fd, buf as Buffer, got, length - got, offset + got);
    if (n <= 0) break;
    got += n;
  }
  return got;
}

/**
 * Reads `length` bytes at `offset` of `fd` into `buf` from `at`, asking for `readLength` (an
 * O_DIRECT descriptor's length, padded to DIRECT_ALIGN): through `buffered` when the file
 * refuses the direct read. The bytes it got.
 */
function readRange(buf: Uint8Array, at: number, fd: number, buffered: number, offset: number, length: number, readLength: number): number {
  try {
    return readFully(fd, buf.subarray(at), readLength, offset);
  } catch (err) {
    // A file system that takes O_DIRECT opens but not this read: through the page cache.
    if (fd === buffered || (err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
    return readFully(buffered, buf.subarray(at), length, offset);
  }
}

/**
 * One lane of a ChunkLoader (hash-worker.ts runs it when started with RingData): says it is
 * ready, then takes the next request no other lane took and serves it, until the head turns
 * negative.
 */
export function serveRing({ ring }: RingData): void {
  const ctl = new Int32Array(ring.ctl);
  const req = new Float64Array(ring.req);
  const out = new Uint8Array(ring.out);
  const rows = new Float64Array(ring.pieces);
  const knownRows = new Uint8Array(ring.known);
  Atomics.add(ctl, READY, 1);
  for (;;) {
    const head = Atomics.load(ctl, HEAD);
    if (head < 0) return;
    const taken = Atomics.load(ctl, TAKEN);
    if (taken >= head) {
      Atomics.wait(ctl, HEAD, head); // returns at once if a request came meanwhile
      continue;
    }
    if (Atomics.compareExchange(ctl, TAKEN, taken, taken + 1) !== taken) continue; // another lane took it
    const next = taken + 1;
    const at = ((next - 1) % MAX_SLOTS) * REQ_WORDS;
    const slot = req[at]!;
    const length = req[at + 1]!;
    const fd = req[at + 2]!;
    const offset = req[at + 3]!;
    const readLength = req[at + 4]!;
    const buffered = req[at + 5]!;
    const paged = req[at + 6] === 1;
    const pieces = req[at + 7]!;
    const known = req[at + 8] === 1;
    const mem = ring.slots[slot]!;
    const buf = new Uint8Array(mem.memory, mem.at, mem.bytes);
    let status = 0;
    try {
      let got = 0;
      if (pieces === 0) got = readRange(buf, 0, fd, buffered, offset, length, readLength);
      // Each piece after the one before (a direct read's padding past its piece is overwritten
      // by the next piece), until one comes short.
      for (let i = 0, row = slot * ring.perSlot * PIECE_WORDS; i < pieces; i++, row += PIECE_WORDS) {
        const direct = rows[row]!, plain = rows[row + 1]!, pos = rows[row + 2]!, len = rows[row + 3]!;
        const aligned = direct >= 0 && pos % DIRECT_ALIGN === 0 && got % DIRECT_ALIGN === 0;
        if (readRange(buf, got, aligned ? direct : plain, plain, pos, len, aligned ? Math.ceil(len / DIRECT_ALIGN) * DIRECT_ALIGN : len) < len) break;
        got += len;
      }
      if (got < length) status = -1;
      else if (known) {
        const row = slot * ring.pagesPerSlot * 33;
        out.set(chunkDigestKnown(buf.subarray(0, length), knownRows.subarray(row, row + ring.pagesPerSlot),
          knownRows.subarray(row + ring.pagesPerSlot, row + ring.pagesPerSlot * 33)), slot * 32);
      } else out.set(chunkDigest(buf.subarray(0, length), paged), slot * 32);
    } catch (err) {
      status = Math.abs((err as NodeJS.ErrnoException).errno ?? 5 /* EIO */);
    }
    Atomics.store(ctl, STATUS + slot, status);
    Atomics.store(ctl, DONE + slot, next);
    Atomics.notify(ctl, DONE + slot);
  }
}

/** The unit of a `pageDigests` entry's digests (docs/image-format.md). */
export const DIGEST_PAGE = 4096;

/** Whether the addon hashes pages (native pageDigests): until it says it cannot. */
let nativeDigests = true;

/**
 * The sha256 of each `unit` bytes of `data` (DIGEST_PAGE: its pages; the last piece may be
 * shorter), 32 bytes each, into `out` from `at` (made when not given). In the addon, one call
 * for all: about the speed of one hash over the whole. Else one createHash per piece: 0.75 GB/s
 * here for pages, against 1.4 GB/s for one hash over the whole (measured on the 2-core machine,
 * 64 MiB), which made a paged entry (pre-copy's) take twice the CPU of another to verify.
 */
export function pageDigests(data: Uint8Array, out?: Buffer, at = 0, unit = DIGEST_PAGE): Buffer {
  const n = Math.ceil(data.length / unit);
  const o = out ?? Buffer.allocUnsafe(n * 32);
  if (nativeDigests) {
    try {
      if (native().pageDigests(data, o, at, unit)) return o;
    } catch { /* no addon here: in JavaScript */ }
    nativeDigests = false;
  }
  for (let p = 0; p < n; p++) {
    createHash('sha256').update(data.subarray(p * unit, Math.min(data.length, (p + 1) * unit))).digest().copy(o, at + p * 32);
  }
  return o;
}

/**
 * Chunk digests of a `pageDigests` entry (chunkDigest: the sha256 of its pages' digests) made
 * from page digests kept elsewhere (a pre-copy's held pages, a page store's slots), `batch`
 * chunks of `pages` pages a call of the addon. For each of `starts`, in order, `gather(start,
 * out, at)` puts that chunk's page digests (pages × 32 bytes) into `out` at `at` and says
 * whether it did (false: the chunk is skipped; 'stop': none from it on, nor the ones gathered
 * since the last call, is taken). `taken(start, digest)` gets each digest made (a view of a
 * buffer of its batch's). Returns how many were taken. One scratch buffer for all the batches:
 * fresh memory costs a page fault per 4 KiB (on this VM 1.8 s of CPU per GiB, image/direct.ts).
 */
export function chunkDigestsOf(starts: readonly number[], pages: number, batch: number,
  gather: (start: number, out: Buffer, at: number) => boolean | 'stop', taken: (start: number, digest: Buffer) => void): number {
  const unit = pages * 32;
  const sums = Buffer.allocUnsafe(batch * unit);
  const chosen: number[] = [];
  let count = 0;
  for (let i = 0; i < starts.length;) {
    chosen.length = 0;
    for (; i < starts.length && chosen.length < batch; i++) {
      const got = gather(starts[i]!, sums, chosen.length * unit);
      if (got === 'stop') return count;
      if (got) chosen.push(starts[i]!);
    }
    if (chosen.length === 0) continue;
    const out = pageDigests(sums.subarray(0, chosen.length * unit), undefined, 0, unit);
    for (let j = 0; j < chosen.length; j++) taken(chosen[j]!, out.subarray(j * 32, j * 32 + 32));
    count += chosen.length;
  }
  return count;
}

/**
 * pageDigests of 4 KiB pages on a thread of libuv's pool (native writeAndDigest, writing
 * nothing), into `out` (32 bytes a page); on this thread where the addon has no SHA-256.
 * Neither may change until it settles.
 */
export async function pageDigestsOnPool(data: Uint8Array, out: Buffer): Promise<void> {
  if (nativeDigests) {
    try {
      if (await native().writeAndDigest(-1, data, NO_WRITES, out)) return;
    } catch { /* no addon here: in JavaScript */ }
    nativeDigests = false;
  }
  pageDigests(data, out);
}
const NO_WRITES = new Float64Array(0);

/**
 * The digest of one chunk of a chunked entry: sha256 of its bytes, or for a `pageDigests`
 * entry sha256 of its pages' sha256 concatenated (so a writer that knows a page's digest need
 * not read the page).
 */
export function chunkDigest(data: Uint8Array, paged: boolean): Buffer {
  return createHash('sha256').update(paged ? pageDigests(data) : data).digest();
}

/**
 * Fills `flags` (one a page of a chunk: 1 where known, else 0) and `digests` (32 bytes a page)
 * from the digests the chunk's `pieces` carry (ImagePiece.digests); true if any is known. A
 * piece's digests are taken only when it starts on a page of the chunk and holds whole pages
 * (a page store's runs do), and their length matches: else its pages are hashed.
 */
export function knownDigests(pieces: readonly ImagePiece[], flags: Uint8Array, digests: Uint8Array): boolean {
  flags.fill(0);
  let any = false;
  for (let off = 0, i = 0; i < pieces.length; off += pieces[i]!.len, i++) {
    const p = pieces[i]!;
    const n = p.len / DIGEST_PAGE;
    if (p.digests === undefined || off % DIGEST_PAGE !== 0 || !Number.isInteger(n) || p.digests.length !== n * 32
      || off / DIGEST_PAGE + n > flags.length) continue;
    flags.fill(1, off / DIGEST_PAGE, off / DIGEST_PAGE + n);
    digests.set(p.digests, (off / DIGEST_PAGE) * 32);
    any = true;
  }
  return any;
}

/**
 * chunkDigest of a `pageDigests` chunk some of whose pages' digests are known (`flags`,
 * `digests`: knownDigests): only the others are hashed.
 */
export function chunkDigestKnown(data: Uint8Array, flags: Uint8Array, digests: Uint8Array): Buffer {
  const n = Math.ceil(data.length / DIGEST_PAGE);
  // Every one known (a chunk in place, ChunkSource.keepInPlace): hashed as they are.
  const unknown = flags.indexOf(0);
  if (unknown < 0 || unknown >= n) return pageDigests(digests.subarray(0, n * 32), Buffer.allocUnsafe(32), 0, n * 32);
  // The known ones in one copy (they sit where they go), then the others hashed over them.
  const all = Buffer.allocUnsafe(n * 32);
  all.set(digests.subarray(0, n * 32));
  for (let p = 0; p < n;) {
    if (flags[p] === 1) {
      const q = flags.indexOf(0, p);
      p = q < 0 ? n : q;
      continue;
    }
    let q = p + 1;
    while (q < n && flags[q] !== 1) q++;
    pageDigests(data.subarray(p * DIGEST_PAGE, Math.min(data.length, q * DIGEST_PAGE)), all, p * 32);
    p = q;
  }
  return pageDigests(all, Buffer.allocUnsafe(32), 0, all.length); // one sha256 of them all, as chunkDigest's
}

/** pread(2) of an image: `len` bytes at `pos` of the image `fd` into `buf` at `off`; the bytes read. */
export type ImageRead = (fd: number, buf: Buffer, off: number, len: number, pos: number) => number;

/**
 * Where some bytes of an image lie: `len` bytes at `at` of `fd` (ImageOverlay.pieces), and
 * for a loader's lanes the O_DIRECT descriptor of the same file to read them with, or -1.
 */
export interface ImagePiece {
  fd: number;
  at: number;
  len: number;
  direct?: number;
  /**
   * The sha256 of each page of the piece (32 bytes a page), when its owner took them from the
   * bytes it stored there (a migration's page store, as each page arrived): a `pageDigests`
   * chunk's check takes them instead of hashing those pages again, as long as the location's
   * `intact` says, after the read, that the file is as it was then.
   */
  digests?: Uint8Array;
}

/** Where a chunked entry is and what its chunks must hash to. */
export interface ChunkedLocation {
  fd: number;
  /**
   * An O_DIRECT descriptor of the same file for the lanes to read the entry with (it is not
   * in the page cache), or -1: through `fd`.
   */
  directFd?: number;
  /** Offset of the entry's first byte in the image file. */
  offset: number;
  size: number;
  chunkSize: number;
  /** The manifest's digests; undefined when the entry was verified whole already (openImage). */
  digests: readonly string[] | undefined;
  /** The digests are of page digests (the manifest entry's `pageDigests`). */
  paged?: boolean;
  /**
   * How to read the image, when not plain pread(2) of `fd` (ImageOverlay: a migration target's
   * spool with the held pages in its page store). Read on the JS thread: no loader then,
   * unless `pieces` says where the loader's lanes find the same bytes.
   */
  read?: ImageRead | undefined;
  /**
   * Where `len` bytes at `pos` of the image file are (with `read`: the pieces it reads);
   * `lanes`: asked for the loader's lanes, which read them through ImagePiece.direct.
   */
  pieces?: ((pos: number, len: number, lanes?: boolean) => ImagePiece[]) | undefined;
  /**
   * Whether the files whose pieces carry digests are unchanged since those digests were taken
   * (ImageOverlay.intact); asked after each chunk that used them is read, and when false that
   * chunk is hashed whole. Without it, no piece's digests are used.
   */
  intact?: (() => boolean) | undefined;
  /**
   * Ranges of `len` bytes at `pos` of the image file whose pages are in place already where
   * the caller writes them (a migration's staged memory, migrate/staging.ts): [position,
   * length, address of the first byte], in order. Used once keepInPlace() names the areas.
   */
  inPlace?: ((pos: number, len: number) => Array<[number, number, bigint]>) | undefined;
  /**
   * Of the chunks of `chunkSize` bytes of the image file from `pos` (`size` bytes), those wholly
   * in place, with the digest taken of them before, if known: [chunk index, address, digest]
   * (ImageOverlay.stagedChunks).
   */
  stagedChunks?: ((pos: number, size: number, chunkSize: number) => Array<[number, number, Buffer]>) | undefined;
}

/**
 * Verified random access to one entry, chunk by chunk. Reads are expected in increasing order
 * (restore holds each process's areas to consecutive ranges of its pages entry before it
 * reads any: checkPagesEntry), so with a loader the chunks after the one asked for are read
 * and hashed ahead, in every slot but the one handed out; a chunk asked for out of that order
 * (again, or past a gap) waits for what was read ahead, which is dropped. One source at a time
 * may use a loader: finish() ends its use.
 */
export class ChunkSource {
  private cur = -1;
  private curSlot = -1;
  /**
   * Chunks asked of the loader and not taken yet, in the order asked: [chunk, slot], and the
   * chunk's digest (or what its read threw) when the JS thread read it itself (ask).
   */
  private ahead: Array<[number, number, (string | Error)?]> = [];
  private bufs: Buffer[];
  private readonly chunkSize: number;
  private readonly count: number;
  /** Per slot: its last request took some pages' digests from its pieces (ImagePiece.digests). */
  private readonly usedKnown: boolean[] = [];
  /** Bytes placed() said were in place. */
  placedBytes = 0;
  /** Chunks wholly in place checked by the digest taken of them before (ChunkedLocation.stagedChunks), and not read after all. */
  private readonly byTakenDigest = new Set<number>();
  /**
   * From keepInPlace on: the chunks wholly in place in a kept area whose digest taken before
   * is the manifest's, by index -> their address. Left as they are, unread and unhashed.
   */
  private whole = new Map<number, number>();
  /** The areas whose pages may be in place (keepInPlace): [start, end). None: every chunk is read whole. */
  private inPlaceAreas: ReadonlyArray<readonly [number, number]> = [];
  /** Of the chunk handed out, the ranges left unread, in place: [entry position, length, address], in order. */
  private skipped: Array<[number, number, number]> = [];
  /** Where loadSparse puts a chunk's known pages (knownDigests), from keepInPlace on. */
  private sparse: { flags: Uint8Array; digests: Uint8Array } | undefined;

  constructor(private readonly at: ChunkedLocation, private loader: ChunkLoader | undefined,
    private readonly label: string, private readonly name: string, private readonly where: ErrorContext) {
    // An entry verified whole is read in chunks of the same bound.
    this.chunkSize = at.chunkSize;
    this.count = Math.ceil(at.size / at.chunkSize);
    const useRing = loader !== undefined && !loader.broken && at.digests !== undefined && (at.read === undefined || at.pieces !== undefined)
      && loader.slots[0]!.length >= at.chunkSize;
    this.bufs = useRing ? loader.slots : [this.ownBuffer()];
    if (!useRing) this.loader = undefined;
  }

  private ownBuffer(): Buffer {
    const bytes = Math.min(this.at.chunkSize, Math.max(this.at.size, 1));
    return takeWarm(bytes) ?? Buffer.allocUnsafe(bytes);
  }

  get size(): number {
    return this.at.size;
  }

  /** How many chunks were left in place on the digest taken of them before (ChunkedLocation.stagedChunks). */
  get placedChunks(): number {
    return this.byTakenDigest.size;
  }

  /**
   * Verified bytes of the entry from `pos`: at most `max`, never past the end of pos's chunk
   * (the caller asks again for the rest). Valid until the next call.
   */
  view(pos: number, max: number): Buffer {
    if (!Number.isSafeInteger(pos) || pos < 0 || pos >= this.at.size) {
      throw new FerryError('EIMAGE', `image ${this.label}: entry ${this.name} has ${this.at.size} bytes, a read at ${pos} is past its end`, this.where);
    }
    const c = Math.floor(pos / this.chunkSize);
    if (c !== this.cur) this.load(c);
    const start = c * this.chunkSize;
    const len = Math.min(this.chunkSize, this.at.size - start);
    const off = pos - start;
    const n = Math.min(max, len - off);
    // Never bytes left unread: a caller that asks for them gets the chunk read whole.
    if (this.skipped.some(([s, l]) => s < pos + n && pos < s + l)) this.loadWhole(c);
    return this.bufs[this.curSlot]!.subarray(off, off + n);
  }

  /**
   * From now on, pages that the location says are in place (ChunkedLocation.inPlace) at an
   * address within one of `areas` ([start, end)) are not read when their digests are known
   * (a page store's, intact after the read): their chunk is verified with those digests, and
   * placed() tells the caller to leave them be. Chunks are read on this thread then, only the
   * bytes not in place. Without what that needs in the location, nothing changes (false).
   */
  keepInPlace(areas: ReadonlyArray<readonly [bigint, bigint]>): boolean {
    const a = this.at;
    if (areas.length === 0 || a.inPlace === undefined || a.paged !== true || a.pieces === undefined || a.intact === undefined || a.digests === undefined) return false;
    this.drain();
    this.loader = undefined;
    this.bufs = [this.ownBuffer()];
    this.cur = -1;
    this.curSlot = -1;
    this.inPlaceAreas = areas.map(([s, e]) => [Number(s), Number(e)] as const);
    const pages = Math.ceil(this.chunkSize / DIGEST_PAGE);
    this.sparse = { flags: new Uint8Array(pages), digests: new Uint8Array(pages * 32) };
    // The chunks wholly in place whose digest taken before the image came (a migration's
    // chunks, page-store.ts takeChunkDigests) is the manifest's, all found at once: a chunk at
    // a time, the same questions cost some 6 µs each here, 25 ms in the downtime at 4 GiB.
    this.whole = new Map();
    const size = this.chunkSize;
    const kept = (addr: number): boolean => {
      for (const [ks, ke] of this.inPlaceAreas) if (addr >= ks && addr + size <= ke) return true;
      return false;
    };
    for (const [c, addr, sum] of a.stagedChunks?.(a.offset, a.size, size) ?? []) {
      if (c < this.count && this.length(c) === size && kept(addr) && sum.toString('hex') === a.digests[c]) this.whole.set(c, addr);
    }
    return true;
  }

  /**
   * Of the bytes of the entry from `pos` (at most `max`), which the caller would write at
   * `addr`: how many are in place there and verified (> 0: leave them), or minus how many from
   * `pos` are not (< 0: view() them; never past the end of pos's chunk). What is in place runs
   * over the chunks after pos's while they are wholly in place on their digests taken before,
   * one after the other where the caller writes them; else it too ends with pos's chunk.
   * Without keepInPlace, -max.
   */
  placed(pos: number, addr: bigint, max: number): number {
    if (this.inPlaceAreas.length === 0) return -max;
    const c = Math.floor(pos / this.chunkSize);
    if (pos === c * this.chunkSize && this.whole.size > 0) {
      const want = Number(addr);
      let n = 0;
      for (let k = c; k < this.count && n + this.chunkSize <= max && this.whole.get(k) === want + n; k++) {
        this.byTakenDigest.add(k);
        n += this.chunkSize;
      }
      if (n > 0) {
        this.placedBytes += n;
        return n;
      }
    }
    if (c !== this.cur) this.load(c);
    let limit = Math.min(max, Math.min((c + 1) * this.chunkSize, this.at.size) - pos);
    const want = Number(addr);
    for (const [s, l, a] of this.skipped) {
      if (pos >= s && pos < s + l) {
        if (a + (pos - s) === want) {
          const n = Math.min(limit, s + l - pos);
          this.placedBytes += n;
          return n;
        }
        // In place elsewhere than the caller writes it (an image that names another page's
        // copy): read whole after all, and written.
        this.loadWhole(c);
        return -limit;
      }
      if (s > pos) {
        limit = Math.min(limit, s - pos);
        break;
      }
    }
    return -limit;
  }

  /** Ends this source's use of the loader: waits out the chunks read ahead (they are dropped). */
  finish(): void {
    this.drain();
    this.cur = -1;
    this.curSlot = -1;
  }

  private load(c: number): void {
    this.cur = -1; // until chunk c is verified, nothing is handed out
    this.skipped = [];
    if (this.inPlaceAreas.length > 0) return this.loadSparse(c);
    if (this.loader?.ready) return this.loadAhead(c);
    this.drain();
    if (this.loader?.broken) {
      // A lane may still write into any of its slots: read on this thread, into a buffer of
      // this source's own, from now on.
      this.loader = undefined;
      this.bufs = [this.ownBuffer()];
    }
    const slot = 0;
    const buf = this.bufs[slot]!;
    const len = this.length(c);
    if (this.at.digests !== undefined) this.check(c, this.readHere(buf, c));
    else if (readFully(this.at.fd, buf, len, this.at.offset + c * this.chunkSize, this.at.read) < len) throw this.truncated();
    this.cur = c;
    this.curSlot = slot;
  }

  /**
   * Chunk `c` on this thread, less its pages in place (keepInPlace) whose digests its pieces
   * carry: those are not read, and its digest takes theirs; if the store they lie in was
   * changed meanwhile (`intact` false after the read), the chunk is read whole.
   */
  private loadSparse(c: number): void {
    const buf = this.bufs[0]!;
    const len = this.length(c);
    const base = c * this.chunkSize;
    const pos = this.at.offset + base;
    // Wholly in place, in a kept area, on its digest taken before (keepInPlace): left as it is, unread.
    const whole = this.whole.get(c);
    if (whole !== undefined) {
      this.skipped.push([base, len, whole]);
      this.byTakenDigest.add(c);
      this.cur = c;
      this.curSlot = 0;
      return;
    }
    // The parts in place, [image position, length, address], in order.
    const places = this.at.inPlace!(pos, len);
    const pieces = this.at.pieces!(pos, len);
    const n = Math.ceil(len / DIGEST_PAGE);
    // One pair for every chunk (keepInPlace): a staged root of 1 GiB has 1,024 chunks.
    const flags = this.sparse!.flags.subarray(0, n);
    const digests = this.sparse!.digests.subarray(0, n * 32);
    knownDigests(pieces, flags, digests);
    // The first place that may overlap the piece at hand moves on with it (both in order).
    let first = 0;
    let readKnown = false;
    let at = 0;
    for (const piece of pieces) {
      const end = at + piece.len;
      // Whole pages with their digests known (knownDigests takes a piece's all or none): the
      // parts of them in place at an address of a kept area are not read.
      const known = at % DIGEST_PAGE === 0 && flags[at / DIGEST_PAGE] === 1;
      let from = at;
      if (known) {
        while (first < places.length && places[first]![0] - pos + places[first]![1] <= at) first++;
        for (let k = first; k < places.length; k++) {
          const [ps, l, addr] = places[k]!;
          const s = ps - pos; // chunk offset (user addresses are below 2^47, exact as numbers)
          if (s >= end) break;
          const a = Number(addr);
          let x = Math.max(at, s);
          const y = Math.min(end, s + l);
          while (x < y) {
            const ax = a + (x - s);
            const area = this.inPlaceAreas.find(([ks, ke]) => ax >= ks && ax < ke);
            if (area === undefined) {
              x += DIGEST_PAGE; // not kept: read with the rest
              continue;
            }
            const z = Math.min(y, x + (area[1] - ax));
            if (x > from) this.readPart(piece, at, from, x, buf);
            readKnown ||= x > from;
            const last = this.skipped.at(-1);
            if (last !== undefined && last[0] + last[1] === base + x && last[2] + last[1] === ax) last[1] += z - x;
            else this.skipped.push([base + x, z - x, ax]);
            from = z;
            x = z;
          }
        }
      }
      if (end > from) this.readPart(piece, at, from, end, buf);
      readKnown ||= known && end > from;
      at = end;
    }
    if (at !== len) throw this.truncated();
    // Pages read from where their digests were taken: that file must be as it was then. (The
    // pages in place are not read: their digests are of the bytes staged, whatever the file.)
    if (readKnown && !this.at.intact!()) return this.loadWhole(c);
    try {
      this.check(c, chunkDigestKnown(buf.subarray(0, len), flags, digests).toString('hex'));
    } catch (err) {
      this.skipped = [];
      throw err;
    }
    this.cur = c;
    this.curSlot = 0;
  }

  /** Reads bytes [from, to) of the chunk, which lie in `piece` (at chunk offset `at`), into `buf`. */
  private readPart(piece: ImagePiece, at: number, from: number, to: number, buf: Buffer): void {
    if (readFully(piece.fd, buf.subarray(from, to), to - from, piece.at + (from - at)) < to - from) throw this.truncated();
  }

  /** Chunk `c` read whole on this thread (nothing left unread), verified. */
  private loadWhole(c: number): void {
    this.cur = -1;
    this.skipped = [];
    this.byTakenDigest.delete(c);
    this.check(c, this.readHere(this.bufs[0]!, c));
    this.cur = c;
    this.curSlot = 0;
  }

  /** Chunk `c` from the loader, and the chunks after it asked for in the slots left. */
  private loadAhead(c: number): void {
    if (this.ahead[0]?.[0] !== c) this.drain();
    if (this.ahead.length === 0) this.ask(c, this.curSlot >= 0 ? this.curSlot : 0);
    const [, slot, here] = this.ahead.shift()!;
    // The slot handed out before is free again: the caller is done with what view() gave it.
    const busy = new Set([slot, ...this.ahead.map(([, s]) => s)]);
    const last = this.ahead.at(-1)?.[0] ?? c;
    for (let k = last + 1, s = 0; k < this.count && s < this.bufs.length; s++) {
      if (!busy.has(s)) this.ask(k++, s);
    }
    if (here instanceof Error) throw here;
    this.check(c, here ?? this.stillIntact(slot, c, this.taken(slot)));
    this.cur = c;
    this.curSlot = slot;
  }

  /** Asks the loader for chunk `c` in the free `slot`. */
  private ask(c: number, slot: number): void {
    const pos = this.at.offset + c * this.chunkSize;
    const len = this.length(c);
    const pieces = this.at.pieces?.(pos, len, true);
    const used = [false];
    if (this.loader!.submit(slot, this.at.fd, pos, len, this.at.directFd ?? -1, this.at.paged === true, pieces,
      this.at.intact !== undefined ? used : undefined)) {
      this.usedKnown[slot] = used[0]!;
      this.ahead.push([c, slot]);
      return;
    }
    // In more pieces than a request holds (none that an ImageOverlay makes): read and hashed
    // here, into the slot no lane was asked to write.
    let here: string | Error;
    try {
      here = this.readHere(this.bufs[slot]!, c);
    } catch (err) {
      here = err as Error;
    }
    this.ahead.push([c, slot, here]);
  }

  /**
   * Reads chunk `c` into `buf` on this thread; its digest (not checked yet), taking the digests
   * of its pages that its pieces carry while the files they lie in are intact (after the read).
   */
  private readHere(buf: Buffer, c: number): string {
    const len = this.length(c);
    const pos = this.at.offset + c * this.chunkSize;
    if (readFully(this.at.fd, buf, len, pos, this.at.read) < len) throw this.truncated();
    const data = buf.subarray(0, len);
    if (this.at.paged === true && this.at.pieces !== undefined && this.at.intact !== undefined) {
      const n = Math.ceil(len / DIGEST_PAGE);
      const flags = new Uint8Array(n);
      const digests = new Uint8Array(n * 32);
      if (knownDigests(this.at.pieces(pos, len), flags, digests) && this.at.intact()) {
        return chunkDigestKnown(data, flags, digests).toString('hex');
      }
    }
    return chunkDigest(data, this.at.paged === true).toString('hex');
  }

  /**
   * `sum`, the digest a lane made of chunk `c` in `slot`; if it took pages' digests from the
   * pieces (a page store's) and their file changed since they were taken, the chunk's digest
   * from its bytes instead (asked after the read: a write before it moved the file's ctime).
   */
  private stillIntact(slot: number, c: number, sum: string): string {
    if (this.usedKnown[slot] !== true || this.at.intact?.() === true) return sum;
    return chunkDigest(this.bufs[slot]!.subarray(0, this.length(c)), true).toString('hex');
  }

  /** The digest of the chunk in `slot`, once read; a read that failed is the image's error. */
  private taken(slot: number): string {
    try {
      return this.loader!.take(slot);
    } catch (err) {
      if (err instanceof ShortRead) throw this.truncated();
      throw new FerryError('EIMAGE', `cannot read image ${this.label}: entry ${this.name}: ${(err as Error).message} (check the file system it is on)`, { cause: err, ...this.where });
    }
  }

  /** Waits out every chunk read ahead (a slot is not reused while a lane may write it). */
  private drain(): void {
    const ahead = this.ahead;
    this.ahead = [];
    for (const [, slot, here] of ahead) {
      if (here !== undefined) continue; // read here: no lane has it
      try { this.loader!.take(slot); } catch { /* dropped unread: never handed out */ }
    }
  }

  private length(c: number): number {
    return Math.min(this.chunkSize, this.at.size - c * this.chunkSize);
  }

  private truncated(): FerryError {
    return new FerryError('EIMAGE', `image ${this.label} is truncated inside entry ${this.name}`, this.where);
  }

  private check(c: number, sum: string): void {
    const want = this.at.digests![c]!;
    if (sum !== want) {
      throw new FerryError('EIMAGE', `image ${this.label} is corrupt: entry ${this.name} chunk ${c} has sha256 ${sum.slice(0, 12)}… `
        + `but the manifest says ${want.slice(0, 12)}…`, this.where);
    }
  }
}
