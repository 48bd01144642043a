/**
 * The receiver's side of pre-copy (precopy.ts): the store of the rounds' pages and the tagged
 * frames (frames.ts) read into the spooled image; and the sender's copy of what it sent
 * (FrameLog), made into the image the same way when it is needed.
 */
import { closeSync, constants, fstatSync, fsyncSync, openSync, readSync, renameSync, rmSync, statfsSync, write, writeSync } from 'node:fs';
import { join } from 'node:path';
import { PAGE_SIZE } from '../arch/x86-64.js';
import { FerryError, describeCause } from '../errors.js';
import { chunkDigestsOf, pageDigests, type ImagePiece } from '../image/chunks.js';
import type { ImageOverlay } from '../image/reader.js';
import { native } from '../native/binding.js';
import { PAGED_CHUNK_PAGES } from '../image/writer.js';
import { MAX_DATA_BYTES } from './channel.js';
import type { StagedMemory } from './staging.js';
import { FRAME_PAGES, HEAD, MAX_REF_PAGES, TAG_PAGES, TAG_RAW, TAG_REF, USER_END } from './frames.js';

/** The page store's file in its directory. */
const STORE_FILE = 'precopy.pages';

/** open(2)'s O_TMPFILE (with O_DIRECTORY, as the kernel defines it) and linkat(2)'s AT_FDCWD. */
const O_TMPFILE = 0o20000000 | constants.O_DIRECTORY;
const AT_FDCWD = -100;

/** Highest pid a frame may name. */
const MAX_PID = 1 << 22;
/** Processes whose pages the store may hold. */
const MAX_PIDS = 4096;
/** The store's bound whatever the disk: 64 GiB. */
const MAX_STORE_BYTES = 64 * 2 ** 30;

/** Pages of one block of a SlotIndex: 256 KiB of memory, 256 bytes of index (and 4 of its mark). */
const INDEX_BLOCK = 64;
/** Where a SlotIndex block keeps its mark: 1 while its pages are in slots that follow each other. */
const LINEAR = INDEX_BLOCK;
/**
 * The most blocks the store's index keeps (about 300 MB: a block costs V8 about 600 bytes with
 * its Map entry): what a sender's pages may cost this node in memory, whatever their spread
 * (one page per block at worst, 2 GiB of pages spread over 32 GiB of memory).
 */
const MAX_INDEX_BLOCKS = 1 << 19;

/** Slots of one block of the store's page digests: 1 MiB of digests, 128 MiB of pages. */
const DIGEST_BLOCK = 1 << 15;

/**
 * Bytes of the rounds' pages a receiver that defers its writes (deferWrites) may hold before it
 * asks the channel to wait (backlog): 16 frames.
 */
const BACKLOG_BYTES = 16 << 20;

/** Chunks whose digests takeChunkDigests takes in one call of the addon (4 MiB of page digests). */
const PREPARE_BATCH = 512;

/**
 * Where the store holds each page of one process: its slot by page number, in blocks of
 * INDEX_BLOCK (a Map per page cost 0.3-0.6 µs a lookup: 170 ms of the downtime at 1 GiB, to
 * follow the frozen image's references to 262,144 held pages).
 *
 * A block whose pages are all held in slots that follow each other (a round's new pages take
 * slots in order, and a page sent again keeps its slot: nearly every block) is marked so
 * (LINEAR), and run() steps over it whole: following 262,144 references page by page took
 * 5-6 ms of a 1 GiB lazy migration's downtime. The marks are made by mark(), while the tree
 * still runs on the source. A mark stays true: a page keeps its slot, no page leaves the
 * index, and set() is only ever given a page the index does not have (none in a marked
 * block, whose every page is held).
 */
class SlotIndex {
  /** Slot + 1 of each page of a block (0: none), then its LINEAR mark. */
  private readonly blocks = new Map<number, Int32Array>();

  /** `charge` is called for every block made (it throws past the bound). */
  constructor(private readonly charge: () => void) {}

  /** The slot of `page`, or -1. */
  get(page: number): number {
    const k = Math.floor(page / INDEX_BLOCK);
    const b = this.blocks.get(k);
    return b === undefined ? -1 : b[page - k * INDEX_BLOCK]! - 1;
  }

  set(page: number, slot: number): void {
    const k = Math.floor(page / INDEX_BLOCK);
    let b = this.blocks.get(k);
    if (b === undefined) {
      this.charge();
      this.blocks.set(k, (b = new Int32Array(INDEX_BLOCK + 1)));
    }
    b[page - k * INDEX_BLOCK] = slot + 1;
  }

  /** How many pages from `page` on (at most `max`) are held in the slots that follow get(page)'s; 0 if it has none. */
  run(page: number, max: number): number {
    const first = this.get(page);
    if (first < 0) return 0;
    let n = 1;
    while (n < max) {
      const k = Math.floor((page + n) / INDEX_BLOCK);
      const b = this.blocks.get(k);
      if (b === undefined) break;
      let i = page + n - k * INDEX_BLOCK;
      if (i === 0 && b[LINEAR] === 1 && max - n >= INDEX_BLOCK && b[0] === first + n + 1) {
        n += INDEX_BLOCK;
        continue;
      }
      while (n < max && i < INDEX_BLOCK && b[i] === first + n + 1) {
        n++;
        i++;
      }
      if (i < INDEX_BLOCK) break; // another slot, or `max` reached
    }
    return n;
  }

  /** Marks each block whose pages are in slots that follow each other (LINEAR); returns how many it marked now. */
  mark(): number {
    let marked = 0;
    for (const b of this.blocks.values()) {
      if (b[LINEAR] === 1 || b[0] === 0) continue;
      let i = 1;
      while (i < INDEX_BLOCK && b[i] === b[0]! + i) i++;
      if (i === INDEX_BLOCK) {
        b[LINEAR] = 1;
        marked++;
      }
    }
    return marked;
  }
}

/**
 * The receiver's side: the store of pre-copied pages (a file in the spool directory, removed
 * with it) and the reading of tagged frames into the spooled image.
 */
export class PreCopyReceiver {
  private fd: number;
  private readonly path: string;
  private readonly index = new Map<number, SlotIndex>();
  /** Blocks of all the indexes (SlotIndex), against MAX_INDEX_BLOCKS. */
  private indexBlocks = 0;
  private slots = 0;
  private readonly maxSlots: number;
  private imageStarted = false;
  /**
   * First pages of the chunks whose digests were taken and then dropped by pages written anew
   * (dropChunks): taken again whenever the rounds' writes settle, and at the image's start
   * (retakeDropped).
   */
  private readonly dropped = new Set<number>();
  /** Chunk digests taken again after they were dropped (`--json`: the receiver's `transfer` record). */
  lateChunks = 0;
  /** Bytes of the image so far (RAW and REF). */
  private imageAt = 0;
  /** With `skip`: where REFs left the image's pages in the store, in image order. */
  private readonly runs: Array<{ at: number; slot: number; count: number }> = [];
  /** An image took the store over (overlay()): it closes the descriptor. */
  private adopted = false;
  /** The root's staged memory (staging.ts), written with the store; undefined: none. */
  private staging: StagedMemory | undefined;
  /** Of the image's REF runs, those staged there: [image position, address, pages], in image order. */
  private readonly placed: Array<[number, number, number]> = [];
  /**
   * Where the sender expects the frozen image's chunks of the staged root's pages to fall
   * (expectChunks): their first pages, in order, each PAGED_CHUNK_PAGES pages.
   */
  private chunkStarts: number[] = [];
  /**
   * Of those, the digests taken (takeChunkDigests) and still true, by first page: each the
   * sha256 of its pages' digests (image/chunks.ts chunkDigest), from this store's own digests
   * of the bytes staged. A page of the chunk written again drops it.
   */
  private readonly chunkSums = new Map<number, Buffer>();
  /**
   * The sha256 of each slot's page (32 bytes a slot, in blocks of DIGEST_BLOCK slots), taken
   * from the bytes written into it as they arrived (never the sender's word), and replaced
   * with them: a `pageDigests` chunk's check at restore takes them instead of hashing those
   * pages again (ImagePiece.digests), while the store is `intact`. Undefined: not kept
   * (rebuildImage, whose image is verified whole later).
   */
  private readonly digests: Buffer[] | undefined;
  /**
   * The store's ctime (ns) after this store's own last change to it (a write of a round, the
   * unlink in close()); undefined once it was seen changed by anything else: its digests
   * are then no longer used, the pages are hashed at restore as they are read.
   */
  private ctime: bigint | undefined;
  /** Pages received in rounds, and bytes of the image REFs filled in. */
  pages = 0;
  refBytes = 0;
  /**
   * Once deferWrites() was called: each round's frame is written, and its pages' digests
   * taken, on libuv's pool (native writeAndDigest), one frame at a time in the order they came
   * (a later round's page goes to the slot an earlier one's write may still be filling), while
   * the JS thread takes the next frames off the connection. `writing`: the chain of those
   * writes; `queued`: the frames in it and their bytes; `failure`: the first write that failed.
   */
  private deferred = false;
  private writing: Promise<void> = Promise.resolve();
  private queuedFrames = 0;
  private queuedBytes = 0;
  private failure: FerryError | undefined;
  /** Waiting for the queue to shrink below BACKLOG_BYTES (backlog), or to empty (settled). */
  private readonly belowBacklog: Array<() => void> = [];
  private readonly emptied: Array<() => void> = [];
  /** close() came while writes were in flight: the last of them closes the descriptor. */
  private closeWhenSettled = false;
  private closing = false;

  /** `keepDigests`: take each page's digest as it arrives (for restore's checks; not for a rebuild). */
  constructor(dir: string, private readonly peer: string, keepDigests = true) {
    this.path = join(dir, STORE_FILE);
    this.fd = openSync(this.path, 'wx+', 0o600);
    this.digests = keepDigests ? [] : undefined;
    this.ctime = this.ctimeNow();
    let free = MAX_STORE_BYTES;
    try {
      const st = statfsSync(dir);
      free = Math.min(free, Math.floor(Number(st.bavail) * Number(st.bsize) * 0.9));
    } catch { /* the fixed bound */ }
    this.maxSlots = Math.max(0, Math.floor(free / PAGE_SIZE));
  }

  /**
   * Removes the store, and closes it unless an image took it over (overlay): idempotent. With
   * writes in flight (a failed migration), the last of them closes it: closed now, its number
   * could be another file's by the time they write.
   */
  close(): void {
    if (this.queuedFrames > 0) {
      rmSync(this.path, { force: true });
      this.closing = true; // the writes not begun are dropped
      this.closeWhenSettled = !this.adopted;
      return;
    }
    // The unlink changes the store's ctime: its own change, which `intact` must not take for another's.
    this.own(() => rmSync(this.path, { force: true }));
    if (this.fd < 0 || this.adopted) return;
    closeSync(this.fd);
    this.fd = -1;
  }

  /**
   * Writes the rounds' pages of `staging`'s process into it too (staging.ts), and applies the
   * sender's layouts there (layout()); the image's REFs of pages staged are then in place
   * (overlay().inPlace). Only with deferWrites.
   */
  stage(staging: StagedMemory): void {
    this.staging = staging;
  }

  /**
   * A `layout` from the sender: applied to the staged memory in order with the rounds' writes
   * queued before it (settled() waits for it as for them).
   */
  layout(pid: number, areas: readonly number[]): void {
    const staging = this.staging;
    if (staging === undefined || pid !== staging.pid) return;
    if (!this.deferred) return staging.fail(new Error('a layout without deferred writes'));
    // Counted as bytes in flight (8 a number), as a frame's are: a sender cannot pile them up
    // behind a slow write beyond the backlog.
    this.enqueue(areas.length * 8 + 64, async () => staging.layout(areas));
    this.chunkSums.clear(); // what is staged where changes: taken again at the next catch-up
  }

  /**
   * The sender's word on where the frozen image's chunks of `pid`'s pages entry will fall
   * (`chunks`, precopy.ts chunkStarts): first pages, in order, after those said before. A hint
   * only: a chunk expected wrongly is verified at restore as any other (ChunkSource.loadSparse).
   * Kept for the staged process alone, at most one a chunk of the pages this store may hold.
   */
  expectChunks(pid: number, starts: readonly number[]): void {
    if (this.staging === undefined || pid !== this.staging.pid) return;
    const last = this.chunkStarts.at(-1);
    if (last !== undefined && starts.length > 0 && starts[0]! < last + PAGED_CHUNK_PAGES) this.bad('chunk starts out of order');
    for (let i = 1; i < starts.length; i++) if (starts[i]! < starts[i - 1]! + PAGED_CHUNK_PAGES) this.bad('chunk starts that overlap');
    // More than it could hold: the rest are not kept (their chunks are verified as any other).
    const room = Math.ceil(this.maxSlots / PAGED_CHUNK_PAGES) - this.chunkStarts.length;
    for (let i = 0; i < Math.min(room, starts.length); i++) this.chunkStarts.push(starts[i]!);
  }

  /**
   * Marks the blocks of every process's index whose pages are in slots that follow each other
   * (SlotIndex.mark), so that the frozen image's references to them are followed a block at a
   * time: run once the rounds' writes have settled (a catch-up, while the tree runs on the source).
   * Returns how many blocks it marked now.
   */
  markRuns(): number {
    let marked = 0;
    for (const idx of this.index.values()) marked += idx.mark();
    return marked;
  }

  /**
   * Takes the digests of the expected chunks (expectChunks) not known yet whose pages are all
   * held, in consecutive slots, with their digests: PREPARE_BATCH a call of the addon. Run once
   * the rounds' writes have settled (a catch-up, while the tree runs on the source), so the
   * frozen image's chunks in place are checked at restore by one comparison each
   * (stagedChunks) instead of a hash of their 256 pages' digests. `starts`: only those of the
   * expected chunks (in order; retakeDropped). Returns how many it took.
   */
  takeChunkDigests(starts: readonly number[] = this.chunkStarts): number {
    const idx = this.staging !== undefined ? this.index.get(this.staging.pid) : undefined;
    if (idx === undefined || this.queuedFrames > 0) return 0;
    // Dropped or not, a chunk left out now waits for a catch-up or a page written into it.
    this.dropped.clear();
    return chunkDigestsOf(starts, PAGED_CHUNK_PAGES, PREPARE_BATCH, (page, out, at) => {
      if (this.chunkSums.has(page) || idx.run(page, PAGED_CHUNK_PAGES) !== PAGED_CHUNK_PAGES) return false;
      const d = this.digestsOf(idx.get(page), PAGED_CHUNK_PAGES);
      if (d === undefined) return 'stop'; // digests no longer kept: none
      out.set(d, at);
      return true;
    }, (page, sum) => this.chunkSums.set(page, sum));
  }

  /**
   * Takes again the digests of the chunks that pages written after they were taken dropped:
   * the sender's last look (precopy.ts lastLook) sends pages after the last catch-up, while
   * the source makes ready to freeze and dumps. Run when the rounds' writes settle (enqueue)
   * and at the frozen image's first frame (startImage), each a hash of the chunk's pages'
   * digests; restore would otherwise check each of those chunks page by page in the downtime
   * (chunks.ts loadSparse: 40 µs a chunk on a quiet machine, up to 200 on a loaded one). A
   * hint, as the digests taken at a catch-up are: a failure leaves them to be checked so.
   */
  private retakeDropped(): void {
    if (this.dropped.size === 0 || this.failure !== undefined) return;
    try {
      this.lateChunks += this.takeChunkDigests([...this.dropped].sort((a, b) => a - b));
    } catch { /* checked page by page at restore */ }
  }

  /** The frozen image's first frame: every round's page is written here (ready). */
  private startImage(): void {
    if (this.imageStarted) return;
    this.imageStarted = true;
    this.retakeDropped();
  }

  /** Drops the chunk digests taken of `pid`'s chunks that pages [first, first + count) fall in. */
  private dropChunks(pid: number, first: number, count: number): void {
    if (this.chunkSums.size === 0 || pid !== this.staging?.pid) return;
    const starts = this.chunkStarts;
    // The first chunk that may hold `first`: the last start at or before it.
    let lo = 0, hi = starts.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (starts[mid]! <= first) lo = mid + 1;
      else hi = mid;
    }
    for (let i = Math.max(0, lo - 1); i < starts.length && starts[i]! < first + count; i++) {
      if (starts[i]! + PAGED_CHUNK_PAGES > first && this.chunkSums.delete(starts[i]!)) this.dropped.add(starts[i]!);
    }
  }

  /**
   * Of the chunks of `chunkSize` bytes of the image from `pos` (`size` bytes in all), those
   * that lie wholly in one run staged in place, with the digest taken of them before the
   * freeze (takeChunkDigests) when none of their pages was written since and the store's
   * digests are still kept: [chunk index, address, digest], in order (ImageOverlay.stagedChunks).
   * One walk of the staged runs: a restore asks it once, not a chunk at a time (4,096 chunks at
   * 4 GiB, some 6 µs each that way).
   */
  private stagedChunks(pos: number, size: number, chunkSize: number): Array<[number, number, Buffer]> {
    const out: Array<[number, number, Buffer]> = [];
    if (chunkSize !== PAGED_CHUNK_PAGES * PAGE_SIZE || this.chunkSums.size === 0 || this.digests === undefined || this.ctime === undefined) return out;
    const end = pos + size;
    for (const [at, addr, n] of this.placed) {
      const runEnd = Math.min(at + n * PAGE_SIZE, end);
      if (runEnd <= pos) continue;
      if (at >= end) break;
      // The chunks that start in the run and end within it.
      for (let c = Math.max(0, Math.ceil((at - pos) / chunkSize)); pos + (c + 1) * chunkSize <= runEnd; c++) {
        const a = addr + (pos + c * chunkSize - at);
        const sum = this.chunkSums.get(a / PAGE_SIZE);
        if (sum !== undefined) out.push([c, a, sum]);
      }
    }
    return out;
  }

  /**
   * From now on, the rounds' frames are written on libuv's pool, their digests taken there
   * (a frame's hashing and writing cost the JS thread of `ferry receive` about 2 s a GiB, while
   * it also decrypts the connection). The caller waits for settled() before any frame that is
   * not a round's (RAW or REF: the image, which reads the store), and for backlog() when it
   * says so.
   */
  deferWrites(): void {
    this.deferred = true;
  }

  /**
   * Resolves once every round's frame is written (at once when none is in flight); rejects
   * with the first write that failed.
   */
  settled(): Promise<void> {
    if (this.queuedFrames === 0) return this.failure !== undefined ? handled(Promise.reject(this.failure)) : Promise.resolve();
    return handled(new Promise<void>((resolve, reject) => this.emptied.push(() => (this.failure !== undefined ? reject(this.failure) : resolve()))));
  }

  /**
   * A promise while more than BACKLOG_BYTES of the rounds' frames wait for their writes (the
   * channel stops reading until it settles), else undefined; rejects with a failed write.
   */
  backlog(): Promise<void> | undefined {
    if (this.failure !== undefined) return handled(Promise.reject(this.failure));
    if (this.queuedBytes <= BACKLOG_BYTES) return undefined;
    return handled(new Promise<void>((resolve, reject) => this.belowBacklog.push(() => (this.failure !== undefined ? reject(this.failure) : resolve()))));
  }

  /** Whether `frame` may be handled now: a round's, or none is being written (settled()). */
  ready(frame: Buffer): boolean {
    return this.queuedFrames === 0 || frame[0] === TAG_PAGES;
  }

  /**
   * The image's REF pages as read from the store (reader.ts ImageOverlay), for an image
   * spooled with `skip`: its holes are read from where the store holds those pages. Nothing
   * is checked here: restore verifies every chunk as it reads it (the manifest's digests),
   * on the JS thread (read) or on the loader's lanes (pieces).
   */
  overlay(): ImageOverlay {
    return {
      read: (fd, buf, off, len, pos) => this.readImage(fd, buf, off, len, pos),
      pieces: (fd, pos, len, digests) => this.pieces(fd, pos, len, digests),
      intact: () => this.intact(),
      ...(this.staging !== undefined ? {
        inPlace: (pos: number, len: number) => this.inPlace(pos, len),
        stagedChunks: (pos: number, size: number, chunkSize: number) => this.stagedChunks(pos, size, chunkSize),
      } : {}),
      adopt: () => { this.adopted = true; },
      close: () => {
        if (this.fd < 0) return;
        closeSync(this.fd);
        this.fd = -1;
      },
    };
  }

  /**
   * Where `len` bytes at `pos` of the spooled image `fd` are: in the spool, or (a REF's run)
   * in the store, in order. A run is whole pages (at least one), so `len` bytes lie in at
   * most 2 * ceil(len / PAGE_SIZE) + 3 pieces (ImageOverlay.pieces). The store's carry their
   * pages' digests while it is intact, unless `withDigests` is false.
   */
  private pieces(fd: number, pos: number, len: number, withDigests = true): ImagePiece[] {
    const out: ImagePiece[] = [];
    // The last run at or before `pos` (binary search: runs are in image order).
    let lo = 0, hi = this.runs.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.runs[mid]!.at <= pos) lo = mid + 1;
      else hi = mid;
    }
    // Always the last run that starts at or before `at` (-1: none does).
    let i = lo - 1;
    for (let at = pos, end = pos + len; at < end;) {
      const r = this.runs[i];
      let n: number;
      if (r !== undefined && at < r.at + r.count * PAGE_SIZE) {
        n = Math.min(end - at, r.at + r.count * PAGE_SIZE - at);
        const slot = r.slot + (at - r.at) / PAGE_SIZE;
        const digests = withDigests && Number.isInteger(slot) && n % PAGE_SIZE === 0 ? this.digestsOf(slot, n / PAGE_SIZE) : undefined;
        out.push({ fd: this.fd, at: r.slot * PAGE_SIZE + (at - r.at), len: n, ...(digests !== undefined ? { digests } : {}) });
      } else {
        const next = this.runs[i + 1];
        n = Math.min(end - at, next !== undefined ? next.at - at : Infinity);
        out.push({ fd, at, len: n });
      }
      at += n;
      if (this.runs[i + 1]?.at === at) i++;
    }
    return out;
  }

  /**
   * The image's bytes from `pos` (`len`) that are pages in the staged memory: [image position,
   * length, address], in order (ImageOverlay.inPlace).
   */
  private inPlace(pos: number, len: number): Array<[number, number, bigint]> {
    const out: Array<[number, number, bigint]> = [];
    let lo = 0, hi = this.placed.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const [at, , n] = this.placed[mid]!;
      if (at + n * PAGE_SIZE <= pos) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < this.placed.length; i++) {
      const [at, addr, n] = this.placed[i]!;
      if (at >= pos + len) break;
      const s = Math.max(at, pos), e = Math.min(at + n * PAGE_SIZE, pos + len);
      out.push([s, e - s, BigInt(addr + (s - at))]);
    }
    return out;
  }

  /**
   * The digests of `count` slots from `slot` (a view when they lie in one block), or
   * undefined when they are not kept or the store is no longer intact.
   */
  private digestsOf(slot: number, count: number): Uint8Array | undefined {
    if (this.digests === undefined || this.ctime === undefined) return undefined;
    const b = Math.floor(slot / DIGEST_BLOCK);
    const at = (slot - b * DIGEST_BLOCK) * 32;
    if (at + count * 32 <= DIGEST_BLOCK * 32) return this.digests[b]?.subarray(at, at + count * 32);
    // Across blocks: one copy from each.
    const out = Buffer.allocUnsafe(count * 32);
    for (let k = 0; k < count;) {
      const s = slot + k;
      const n = Math.min(count - k, DIGEST_BLOCK - (s % DIGEST_BLOCK));
      this.digests[Math.floor(s / DIGEST_BLOCK)]!.copy(out, k * 32, (s % DIGEST_BLOCK) * 32, (s % DIGEST_BLOCK + n) * 32);
      k += n;
    }
    return out;
  }

  /**
   * Queues the write of a round's pages `data` into `slots` (one per page) on libuv's pool,
   * after the writes before it, with their digests taken from the very bytes written (kept as
   * keepDigestsOf keeps them, replacing the slots' earlier ones). Each write is the store's own
   * change to its file as in own(): intact before it, its ctime taken after. A failure is kept
   * for settled(), backlog() and the next frame.
   */
  private writeLater(data: Buffer, slots: readonly number[], pid: number, first: number): void {
    if (this.failure !== undefined) throw this.failure;
    if (this.fd < 0 || this.closeWhenSettled) throw new FerryError('EIO', 'the pre-copy store was closed before the last round\'s pages');
    const writes = slotRuns(slots).flatMap(([p, k]) => [p * PAGE_SIZE, k * PAGE_SIZE, slots[p]! * PAGE_SIZE]);
    const fd = this.fd;
    this.enqueue(data.length, async () => {
      // The store's own change (own()), one frame at a time: none of ferry's writes is in
      // flight between two.
      const was = this.intact();
      const want = this.digests !== undefined && this.ctime !== undefined;
      const out = Buffer.allocUnsafe(want ? slots.length * 32 : 0);
      const taken = await native().writeAndDigest(fd, data, new Float64Array(writes), out);
      if (was && this.fd >= 0) this.ctime = this.ctimeNow();
      if (want) this.keepDigestsOf(data, slots, taken ? out : undefined);
      // The same bytes into the staged memory, where the root's areas are staged (the pages
      // marked staged now; a write that fails turns staging off, nothing else).
      const staging = this.staging;
      if (staging !== undefined) await staging.write(data, staging.writes(pid, first, slots.length));
    });
  }

  /**
   * Queues `job` (a round's frame of `bytes`, or a layout) after the writes before it, on the
   * chain settled() and backlog() follow; a failure is kept for them and the next frame.
   */
  private enqueue(bytes: number, job: () => Promise<void>): void {
    this.queuedFrames++;
    this.queuedBytes += bytes;
    this.writing = this.writing.then(async () => {
      if (this.failure !== undefined || this.closing) return;
      await job();
    }).catch((err: unknown) => {
      const full = (err as NodeJS.ErrnoException).code === 'ENOSPC';
      this.failure ??= new FerryError(full ? 'ENOSPC' : 'EIO', `cannot write the pre-copy store ${this.path}: ${describeCause(err)}`
        + (full ? ' (free space in image.work_dir, or migrate with --no-pre-copy)' : ''), { cause: err });
    }).finally(() => {
      this.queuedFrames--;
      this.queuedBytes -= bytes;
      if (this.queuedBytes <= BACKLOG_BYTES || this.failure !== undefined) for (const go of this.belowBacklog.splice(0)) go();
      if (this.queuedFrames > 0) return;
      if (!this.imageStarted) this.retakeDropped();
      if (this.closeWhenSettled) {
        this.closeWhenSettled = false;
        closeSync(this.fd);
        this.fd = -1;
      }
      for (const done of this.emptied.splice(0)) done();
    });
  }

  /**
   * Keeps the digests of the pages of `data`, written into `slots` (one per page; each block
   * made as the slots reach it: the store's own bound, maxSlots, bounds them too): from `sums`
   * (32 bytes a page, taken on the pool) or, without them, hashed here.
   */
  private keepDigestsOf(data: Buffer, slots: readonly number[], sums: Buffer | undefined): void {
    const d = this.digests;
    if (d === undefined || this.ctime === undefined) return;
    const all = sums ?? pageDigests(data);
    slots.forEach((s, p) => {
      const b = Math.floor(s / DIGEST_BLOCK);
      while (d.length <= b) d.push(Buffer.allocUnsafe(DIGEST_BLOCK * 32));
      all.copy(d[b]!, (s - b * DIGEST_BLOCK) * 32, p * 32, p * 32 + 32);
    });
  }

  private ctimeNow(): bigint | undefined {
    try {
      return fstatSync(this.fd, { bigint: true }).ctimeNs;
    } catch {
      return undefined; // not known: its digests are not used
    }
  }

  /**
   * Whether the store is as this store's own last change left it: its ctime unchanged. Every
   * write to the file, through any descriptor or mapping, moves it (and this kernel's
   * multigrain timestamps make a change after a stat(2) always show), so a page altered by
   * anything but ferry after its round fails this, asked after the page was read, and its
   * chunk is then hashed whole at restore. Once false, false for good.
   */
  intact(): boolean {
    if (this.ctime === undefined || this.fd < 0) return false;
    if (this.ctimeNow() === this.ctime) return true;
    this.ctime = undefined;
    return false;
  }

  /**
   * Runs `change`, the store's own change to its file, and takes the ctime it left, if the
   * store was intact before it (a change by another since then must not be taken for ours).
   */
  private own(change: () => void): void {
    const was = this.fd >= 0 && this.intact();
    change();
    if (was) this.ctime = this.ctimeNow();
  }

  private readImage(fd: number, buf: Buffer, off: number, len: number, pos: number): number {
    let done = 0;
    for (const p of this.pieces(fd, pos, len, false)) { // read, not checked: no digests
      for (let got = 0; got < p.len;) {
        const n = readSync(p.fd, buf, off + done, p.len - got, p.at + got);
        if (n <= 0) return done;
        got += n;
        done += n;
      }
    }
    return done;
  }

  private bad(why: string): never {
    throw new FerryError('EPROTO', `${this.peer} sent ${why}: a protocol error`);
  }

  /**
   * One data frame: pages into the store, or image bytes (RAW as they are, REF from the store)
   * into `write`. Returns the image bytes written. With `skip`, a REF's pages are not copied:
   * `skip` is told their length (a hole in the spool) and overlay() reads them from the store.
   */
  handle(frame: Buffer, write: (b: Buffer) => void, skip?: (n: number) => void): number {
    if (frame.length < 1) this.bad('an empty data frame');
    const tag = frame[0]!;
    if (tag === TAG_RAW) {
      if (!this.ready(frame)) throw new Error('an image frame came before the rounds\' writes settled');
      this.startImage();
      const b = frame.subarray(1);
      write(b);
      this.imageAt += b.length;
      return b.length;
    }
    if (tag !== TAG_PAGES && tag !== TAG_REF) this.bad(`a data frame of unknown tag ${tag}`);
    if (frame.length < HEAD) this.bad('a short page frame');
    const pid = frame.readUInt32BE(1);
    const addr = frame.readBigUInt64BE(5);
    const count = frame.readUInt32BE(13);
    if (pid < 1 || pid > MAX_PID) this.bad(`pages of pid ${pid}`);
    if (count < 1 || count > MAX_REF_PAGES || addr % BigInt(PAGE_SIZE) !== 0n || addr + BigInt(count * PAGE_SIZE) > USER_END) {
      this.bad(`pages at 0x${addr.toString(16)} x ${count}, not user memory`);
    }
    const first = Number(addr / BigInt(PAGE_SIZE));
    if (tag === TAG_PAGES) {
      if (this.imageStarted) this.bad('pre-copy pages after the image began');
      if (count > FRAME_PAGES || frame.length !== HEAD + count * PAGE_SIZE) this.bad('a page frame of the wrong length');
      let idx = this.index.get(pid);
      if (!idx) {
        if (this.index.size >= MAX_PIDS) this.bad(`pages of more than ${MAX_PIDS} processes`);
        this.index.set(pid, (idx = new SlotIndex(() => {
          if (++this.indexBlocks > MAX_INDEX_BLOCKS) this.bad(`pre-copy pages spread over more than ${MAX_INDEX_BLOCKS} blocks of ${INDEX_BLOCK} pages`);
        })));
      }
      const slots: number[] = [];
      for (let p = 0; p < count; p++) {
        let slot = idx.get(first + p);
        if (slot < 0) {
          if (this.slots >= this.maxSlots) {
            throw new FerryError('ENOSPC', `${this.peer} sent more pre-copy pages than this node keeps (${this.maxSlots * PAGE_SIZE} bytes, image.work_dir's free space): migrate with --no-pre-copy or free space`);
          }
          slot = this.slots++;
          idx.set(first + p, slot);
        }
        slots.push(slot);
      }
      this.dropChunks(pid, first, count);
      if (this.deferred) {
        this.writeLater(frame.subarray(HEAD), slots, pid, first);
        this.pages += count;
        return 0;
      }
      // Each slot's digest is taken from the very bytes written there, replacing the one before.
      const data = frame.subarray(HEAD);
      this.staging?.fail(new Error('pages written without deferred writes')); // staged pages would go stale
      this.own(() => {
        for (const [p, k] of slotRuns(slots)) writeAll(this.fd, data.subarray(p * PAGE_SIZE, (p + k) * PAGE_SIZE), slots[p]! * PAGE_SIZE);
        this.keepDigestsOf(data, slots, undefined);
      });
      this.pages += count;
      return 0;
    }
    if (!this.ready(frame)) throw new Error('an image frame came before the rounds\' writes settled');
    // REF: the held pages, in order, into the image. An image names each page it holds once,
    // so it can name no more than were sent (which bounds the runs kept for the overlay too).
    if (frame.length !== HEAD) this.bad('a page reference of the wrong length');
    if (this.refBytes + count * PAGE_SIZE > this.slots * PAGE_SIZE) this.bad(`references to more pages than it sent (${this.slots})`);
    this.startImage();
    const idx = this.index.get(pid);
    const buf = skip ? undefined : Buffer.allocUnsafe(Math.min(count, 256) * PAGE_SIZE);
    for (let p = 0; p < count;) {
      // A run of consecutive slots is one read (of at most 256 pages, the buffer's).
      const slot = idx?.get(first + p) ?? -1;
      if (slot < 0) this.bad(`a reference to page 0x${((BigInt(first + p)) * BigInt(PAGE_SIZE)).toString(16)} of pid ${pid}, which it never sent`);
      const k = idx!.run(first + p, skip ? count - p : Math.min(256, count - p));
      if (skip) {
        // One run where the last one goes on, in the image and in the store.
        const last = this.runs.at(-1);
        const at = this.imageAt + p * PAGE_SIZE;
        if (last !== undefined && last.at + last.count * PAGE_SIZE === at && last.slot + last.count === slot) last.count += k;
        else this.runs.push({ at, slot, count: k });
        // Those of them in the staged memory: in place at their address for restore.
        for (const [page, n] of this.staging?.stagedRuns(pid, first + p, k) ?? []) {
          const pos = at + (page - first - p) * PAGE_SIZE;
          const prev = this.placed.at(-1);
          if (prev !== undefined && prev[0] + prev[2] * PAGE_SIZE === pos && prev[1] + prev[2] * PAGE_SIZE === page * PAGE_SIZE) prev[2] += n;
          else this.placed.push([pos, page * PAGE_SIZE, n]);
        }
      } else {
        const got = readSync(this.fd, buf!, 0, k * PAGE_SIZE, slot * PAGE_SIZE);
        if (got !== k * PAGE_SIZE) throw new FerryError('EIO', `short read of the pre-copy store (${got} of ${k * PAGE_SIZE} bytes)`);
        write(buf!.subarray(0, k * PAGE_SIZE));
      }
      p += k;
    }
    skip?.(count * PAGE_SIZE);
    this.imageAt += count * PAGE_SIZE;
    this.refBytes += count * PAGE_SIZE;
    return count * PAGE_SIZE;
  }
}

/**
 * The runs of a frame's pages whose slots follow each other (new pages always do), each one
 * write: [first page, pages].
 */
function slotRuns(slots: readonly number[]): Array<[number, number]> {
  const runs: Array<[number, number]> = [];
  for (let p = 0; p < slots.length;) {
    let k = 1;
    while (p + k < slots.length && slots[p + k] === slots[p]! + k) k++;
    runs.push([p, k]);
    p += k;
  }
  return runs;
}

/** Writes all of `b` at `pos` (-1: at the file's end, appending). */
function writeAll(fd: number, b: Buffer, pos: number): void {
  for (let off = 0; off < b.length;) {
    const n = writeSync(fd, b, off, b.length - off, pos < 0 ? null : pos + off);
    if (n <= 0) throw new FerryError('EIO', `cannot write the pre-copy store: ${describeCause(new Error('short write'))}`);
    off += n;
  }
}

/**
 * The sender's copy of the image under pre-copy: every frame it sent (the rounds' PAGES, then
 * the frozen image's RAW and REF frames), each as u32 length + frame, appended in order. The
 * frozen image leaves held pages out, so this is what holds them; rebuildImage makes the tar
 * from it when it is needed (restored here, or kept). It lives in the sender's private
 * directory (mode 0700, root's), and is read back with the receiver's own checks.
 */
/** A FrameLog writes small frames this many bytes at a time, */
const LOG_BATCH_BYTES = 1 << 20;
/** and one of this many bytes or more (a round's pages) on its own. */
const DIRECT_FRAME_BYTES = 64 << 10;

export class FrameLog {
  private fd: number;
  /** Its name; '' while it has none (an O_TMPFILE file: the kernel removes it with ferry). */
  private path: string;
  /** Frames appended and not written yet (append). */
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  /** Bytes written or being written: where the next batch goes. */
  private size = 0;
  /**
   * Once deferWrites() was called: batches are written on libuv's pool, the JS thread going on
   * meanwhile (PoolWriter); finish() waits for them. And the first write that failed.
   */
  private out: PoolWriter | undefined;
  private failure: unknown;

  /**
   * A new log in `workDir` without a name (open(2) O_TMPFILE), so that a sender killed during
   * the rounds leaves nothing; where the file system cannot, one named `temp` (which the next
   * run's sweep removes: workdir.ts removeStaleDirs).
   */
  constructor(private readonly dir: string, temp: string) {
    const workDir = dir;
    try {
      this.fd = openSync(workDir, O_TMPFILE | constants.O_RDWR, 0o600);
      this.path = '';
    } catch {
      this.fd = openSync(temp, 'wx', 0o600);
      this.path = temp;
    }
  }

  /** Gives it the name `path` (before the tree is killed: a sweep finds it there). */
  name(path: string): void {
    if (this.path === '') native().linkFd(this.fd, AT_FDCWD, path);
    else renameSync(this.path, path);
    this.path = path;
  }

  /**
   * From now on, frames are written on libuv's pool (finish() waits for them; backlog() says
   * when too many wait): the rounds' (0.5 s of the sender's JS thread a GiB, which also reads,
   * hashes and encrypts them) and the frozen image's, whose synchronous writes took 10-20 ms of
   * the JS thread's frozen time at 1 GiB.
   */
  deferWrites(): void {
    if (this.out !== undefined || this.fd < 0) return;
    this.out = new PoolWriter(this.fd, (err) => {
      this.failure ??= copyFailure(`the local copy of the migration's frames in ${this.dir}`, err);
    });
  }

  /** Closes and removes it (a failure before it was named). */
  discard(): void {
    this.pending = [];
    this.pendingBytes = 0;
    this.closeFd();
    if (this.path !== '') rmSync(this.path, { force: true });
  }

  /**
   * Appends one frame (throws on a failed write: the migration fails, the tree runs on). Small
   * frames are gathered and written LOG_BATCH_BYTES at a time (or by close()): the frozen
   * image's frames are hundreds of REFs and RAW pieces of a few pages, two writes each cost
   * milliseconds of the frozen time. A frame of DIRECT_FRAME_BYTES or more (a round's pages)
   * is written as it is, after its length: gathered, its copy cost the JS thread 0.6 s a GiB.
   * `frame` must not change after (no caller reuses one).
   */
  append(frame: Buffer): void {
    if (this.fd < 0) throw new FerryError('EIO', 'the local copy of the migration\'s frames was closed before its last frame');
    if (this.failure !== undefined) throw this.failure;
    const len = Buffer.allocUnsafe(4);
    len.writeUInt32BE(frame.length, 0);
    if (frame.length >= DIRECT_FRAME_BYTES) {
      this.flush();
      this.writeAt(len, this.size);
      this.writeAt(frame, this.size + 4);
      this.size += 4 + frame.length;
      return;
    }
    this.pending.push(len, frame);
    this.pendingBytes += len.length + frame.length;
    if (this.pendingBytes >= LOG_BATCH_BYTES) this.flush();
  }

  /** The write that failed, once one did (what append(), backlog() and finish() throw). */
  get failed(): unknown {
    return this.failure;
  }

  /**
   * A promise while more than BACKLOG_BYTES of frames wait for their writes on the pool (the
   * rounds wait for it before they read more pages), else undefined; rejects with a failed write.
   */
  backlog(): Promise<void> | undefined {
    if (this.failure !== undefined) return handled(Promise.reject(this.failure as Error));
    if (this.out === undefined || this.out.behind <= BACKLOG_BYTES) return undefined;
    return handled(this.out.below(BACKLOG_BYTES).then(() => { if (this.failure !== undefined) throw this.failure; }));
  }

  /** Writes the frames gathered. */
  private flush(): void {
    if (this.pending.length === 0) return;
    const data = this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending, this.pendingBytes);
    this.pending = [];
    this.pendingBytes = 0;
    this.writeAt(data, this.size);
    this.size += data.length;
  }

  /** Writes `data` at `at`: at once, or on the pool once deferred. */
  private writeAt(data: Buffer, at: number): void {
    if (this.out !== undefined) this.out.write(data, at);
    else writeAll(this.fd, data, at);
  }

  /**
   * Writes what is gathered, waits for the writes in flight, and closes it (idempotent); rejects
   * if a write failed (before the kill: the tree runs on).
   */
  async finish(): Promise<void> {
    if (this.fd < 0) return;
    try {
      this.flush();
      await this.out?.below(0);
      if (this.failure !== undefined) throw this.failure;
    } finally {
      this.closeFd();
    }
  }

  /** Closes the descriptor: now, or (writes on the pool) after the last write in flight, whose number could be another file's by then. */
  private closeFd(): void {
    if (this.fd < 0) return;
    if (this.out !== undefined) this.out.close();
    else closeSync(this.fd);
    this.fd = -1;
  }
}

/**
 * `p`, marked handled: a caller may drop it (the image filter drops what a log returns), and a
 * rejection nobody awaits would end the process; whoever awaits it still gets the rejection.
 */
function handled(p: Promise<void>): Promise<void> {
  p.catch(() => {});
  return p;
}

/**
 * The one line of a copy of the migration (`what`, naming where) whose write failed: ENOSPC
 * (and the hint) for a full file system, else EIO.
 */
export function copyFailure(what: string, err: unknown): FerryError {
  const full = (err as NodeJS.ErrnoException | undefined)?.code === 'ENOSPC';
  return new FerryError(full ? 'ENOSPC' : 'EIO', `cannot keep ${what} (image.work_dir): ${describeCause(err)}`
    + (full ? ' (free space there, or set image.work_dir to a file system with room for the image)' : ''), { cause: err });
}

/**
 * Positional writes of one file on libuv's pool, as they come (the sender's copy of the image,
 * sender.ts Pump; the target's spool, receiver.ts Spool): how many bytes wait for their writes
 * (`behind`, below()), the first failure to `onFail`, and a close that waits for the last
 * write (closed now, the number could be another file's by the time a late one runs). Each
 * chunk is kept until written: its memory must not be used again meanwhile.
 */
export class PoolWriter {
  behind = 0;
  private waiters: Array<() => void> = [];
  private closed = false;

  constructor(readonly fd: number, private readonly onFail: (err: unknown) => void) {}

  write(chunk: Buffer, at: number): void {
    if (this.closed) throw new Error('a write after the close');
    this.behind += chunk.length;
    writeAllAsync(this.fd, chunk, at).catch(this.onFail).finally(() => {
      this.behind -= chunk.length;
      for (const go of this.waiters.splice(0)) go();
    });
  }

  /** Resolves once at most `bytes` wait for their writes (0: every write done). */
  below(bytes: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const check = (): void => {
        if (this.behind <= bytes) resolve();
        else this.waiters.push(check);
      };
      check();
    });
  }

  /** Closes the descriptor: now, or after the last write in flight. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    const close = (): void => { try { closeSync(this.fd); } catch { /* nothing to lose */ } };
    if (this.behind === 0) close();
    else void this.below(0).then(close);
  }
}

/** writeAll on libuv's pool. */
export async function writeAllAsync(fd: number, b: Buffer, pos: number): Promise<void> {
  for (let off = 0; off < b.length;) {
    const { bytesWritten } = await new Promise<{ bytesWritten: number }>((resolve, reject) => {
      write(fd, b, off, b.length - off, pos + off, (err, n) => (err ? reject(err) : resolve({ bytesWritten: n })));
    });
    if (bytesWritten <= 0) throw new Error('short write');
    off += bytesWritten;
  }
}

/**
 * Makes the image (a tar at `out`) from a FrameLog at `log`, through a page store in `dir`
 * (removed after): byte for byte the image the checkpoint took, which restore verifies. It is
 * written as `out`.partial, synced and renamed: `out` exists only whole (workdir.ts copyImage
 * takes an existing one for done). What a rebuild killed before left in `dir` goes first.
 */
export function rebuildImage(log: string, dir: string, out: string): void {
  const partial = `${out}.partial`;
  rmSync(partial, { force: true });
  rmSync(join(dir, STORE_FILE), { force: true });
  const store = new PreCopyReceiver(dir, `the copy ${log}`, false);
  let ifd = -1, ofd = -1;
  let done = false;
  try {
    ifd = openSync(log, 'r');
    ofd = openSync(partial, 'wx', 0o600);
    const len = Buffer.alloc(4);
    for (let pos = 0; ;) {
      const n = readSync(ifd, len, 0, 4, pos);
      if (n === 0) break;
      const size = n === 4 ? len.readUInt32BE(0) : -1;
      if (size < 1 || size > MAX_DATA_BYTES) throw new FerryError('EIMAGE', `the copy ${log} has a record of ${size} bytes at offset ${pos}`);
      const frame = Buffer.allocUnsafe(size);
      if (readSync(ifd, frame, 0, size, pos + 4) !== size) throw new FerryError('EIMAGE', `the copy ${log} ends inside a record at offset ${pos}`);
      pos += 4 + size;
      store.handle(frame, (b) => writeAll(ofd, b, -1));
    }
    fsyncSync(ofd);
    renameSync(partial, out);
    done = true;
  } finally {
    if (ifd >= 0) closeSync(ifd);
    if (ofd >= 0) closeSync(ofd);
    if (!done) rmSync(partial, { force: true });
    store.close();
  }
}
