/**
 * Pre-copy (docs/migration.md, "Pre-copy"): the tree's memory crosses in rounds while it
 * runs, each round only the pages written since the one before (dump/dirty.ts tracks them),
 * and the final image, taken frozen, then names the pages the target already holds instead
 * of carrying them.
 *
 * This module is the sender's rounds and its held set; the frames are in frames.ts, the filter
 * of the frozen image in image-filter.ts, the receiver's store in page-store.ts.
 *
 * On the wire, once the hello said `precopy`, every data frame starts with a tag:
 *   0 RAW    image bytes, in order (the image exactly as the checkpoint wrote it, less the
 *            pages REF frames stand for);
 *   1 PAGES  u32 pid, u64 address, u32 count, then count pages: a round's copy of them;
 *   2 REF    u32 pid, u64 address, u32 count: "here come these pages, as you hold them".
 * The receiver keeps PAGES in a store in its spool directory (the latest copy of a page wins)
 * and, for each REF, leaves a hole in the spooled image where the pages stand (or, rebuilding
 * a tar: rebuildImage, criu-track.ts, writes them there), which restore reads from the store
 * (overlay). What restore reads is therefore byte for byte the image the checkpoint took, and
 * it verifies it as any other (signature; manifest digest per chunk, as it reads each chunk):
 * a REF to a page that was sent stale, or to the wrong place, fails that check and nothing is
 * restored. An edited stream cannot make it write anywhere but its own spool, in order, nor
 * keep more pages than its bound.
 *
 * The frozen image does not read the held pages at all: each round keeps the sha256 of every
 * page it sends (HeldPagesOf), the checkpoint writes its page data with page digests
 * (manifest `pageDigests`: a chunk's digest is made of its pages' sha256), takes the held
 * pages' digests from here (heldPages) and leaves their bytes out of its stream, and the
 * filter (ImageFilter, `omitted`) puts a REF where they stood. Its chunks' digests (each the
 * sha256 of its pages' sha256) are taken before the freeze too, where the chunks are expected
 * to fall (prepareChunks, run by topUp): the frozen image takes those whose pages were not
 * changed since as they are, and hashes only the others.
 *
 * Which pages the target holds, correctly: a page is held once a round sent it (read after
 * the scan that re-armed it) and stops being held when a later scan reports it written, when
 * its range is registered anew (a new area in an old one's place), or when its process is no
 * longer the one tracked. The final scan runs with the tree frozen, when the checkpoint first
 * asks for the held pages. The final image decides which pages exist: a REF is only ever made
 * for a page the frozen dump stores, so earlier pages are used only where the final areas
 * still have them.
 */
import { readSync, openSync, closeSync } from 'node:fs';
import type { Logger } from 'pino';
import { PAGE_SIZE } from '../arch/x86-64.js';
import { DirtyTracker, type ProcessScan } from '../dump/dirty.js';
import { stageableAreas } from './staging.js';
import { planMemory, type HeldPages, type PageCounts } from '../dump/memory.js';
import { chunkDigestsOf, pageDigestsOnPool } from '../image/chunks.js';
import type { VmaRecord } from '../image/records.js';
import { PAGED_CHUNK_PAGES } from '../image/writer.js';
import { FerryError, describeCause } from '../errors.js';
import { faultPoint } from '../fault.js';
import { parseChildren } from '../proc/children.js';
import { listTids, readProcText } from '../proc/read.js';
import { parseSmaps } from '../proc/smaps.js';
import { parseStatus } from '../proc/status.js';
import { MAX_CHUNK_STARTS, type Channel } from './channel.js';
import { FRAME_PAGES, HEAD, TAG_PAGES, writeHead } from './frames.js';
import { ImageFilter } from './image-filter.js';

export { FRAME_PAGES, HEAD, TAG_PAGES, TAG_RAW, TAG_REF, writeHead } from './frames.js';
export { ImageFilter } from './image-filter.js';
export { FrameLog, PreCopyReceiver, rebuildImage } from './page-store.js';

/** Rounds end once a round's dirty set is at most this... */
const SMALL_BYTES = 1 << 20;
/** ...or shrank by less than this fraction since the round before. */
const MIN_SHRINK = 0.1;
/** Default bound of rounds (`--max-rounds`). */
export const DEFAULT_MAX_ROUNDS = 8;
/** Rounds right before the freeze (topUp), at most... */
const TOP_UPS = 2;
/** ...the second only when the first sent more pages than this (1 MiB: a few ms of the frozen stream). */
const TOP_UP_PAGES = SMALL_BYTES / PAGE_SIZE;
/** Frames of a round whose pages' digests may be taken on the pool at once (their memory held). */
const HASHING_FRAMES = 8;

/** One round's record (`--json`). */
export interface RoundRecord {
  round: number;
  pages: number;
  bytes: number;
  /** Bytes written by the tree per second since the round before (0 for the first). */
  dirtyRate: number;
  ms: number;
}

/** Every process under `root` (root first), from /proc/PID/task/TID/children. */
export function treePids(root: number, max = 4096): number[] {
  const out: number[] = [];
  const queue = [root];
  for (let pid = queue.shift(); pid !== undefined && out.length < max; pid = queue.shift()) {
    out.push(pid);
    try {
      for (const tid of listTids(pid)) queue.push(...parseChildren(readProcText(pid, `task/${tid}/children`)));
    } catch { /* gone meanwhile */ }
  }
  return out;
}

/** Options of the sender's pre-copy. */
export interface PreCopyOptions {
  /** At most this many rounds before the freeze. */
  maxRounds: number;
  logger: Logger;
  signal?: AbortSignal;
  /** Gets each round's record as it completes. */
  onRound?: (r: RoundRecord) => void;
  /** Gets the one line of a warning (no write tracking on this kernel: stop and copy). */
  onWarning?: (line: string) => void;
  /**
   * Gets every frame sent, rounds' and image's, in order: the local copy of the image
   * (rebuildImage makes the tar from them). A round waits for the promise it may return
   * (the copy's writes behind) before it reads more pages.
   */
  log?: (frame: Buffer) => void | Promise<void>;
}

/** Pages of one block of HeldPagesOf: 2 MiB of memory, 16 KiB of digests. */
const BLOCK_PAGES = 512;
/** Chunks whose digests HeldPagesOf.prepareChunks takes in one call of the addon. */
const PREPARE_BATCH = 128;

/**
 * The pages of one process the receiver holds, each with its sha256, by page number (address
 * / PAGE_SIZE), in blocks of BLOCK_PAGES pages: the frozen dump and the filter take whole runs
 * of held pages at once (run), with one Map lookup per block and the digests of a run copied
 * as one piece, so that their cost does not grow with the pages held (a Map per page cost
 * 0.25 µs a lookup, 70 ms of the frozen time at 256 MiB; a loop over the pages of a block,
 * run once, cost 10-20 ms at 1 GiB before V8 optimised it: run() finds a run's end natively).
 */
export class HeldPagesOf {
  private readonly blocks = new Map<number, { held: Uint8Array; sums: Buffer }>();
  /**
   * Digests of chunks of the frozen image's paged entry taken before the freeze (prepareChunks),
   * by first page (a chunk of `pages` held pages from there), each dropped as soon as one of
   * its pages is held anew or let go (changed); and their first pages, in order.
   */
  private readonly chunks = new Map<number, { pages: number; sum: string }>();
  private chunkStarts: number[] = [];
  /** The chunks prepareChunks was last asked for (refreshChunks takes those dropped since again). */
  private prepared: { starts: readonly number[]; pages: number } | undefined;
  size = 0;

  /** Holds `page`, whose sha256 is the 32 bytes of `sums` at `at`. */
  set(page: number, sums: Buffer, at: number): void {
    const k = Math.floor(page / BLOCK_PAGES);
    let b = this.blocks.get(k);
    if (b === undefined) this.blocks.set(k, (b = { held: new Uint8Array(BLOCK_PAGES), sums: Buffer.allocUnsafe(BLOCK_PAGES * 32) }));
    const i = page - k * BLOCK_PAGES;
    if (b.held[i] === 0) this.size++;
    b.held[i] = 1;
    if (this.chunks.size > 0) this.changed(page);
    sums.copy(b.sums, i * 32, at, at + 32);
  }

  has(page: number): boolean {
    const k = Math.floor(page / BLOCK_PAGES);
    return this.blocks.get(k)?.held[page - k * BLOCK_PAGES] === 1;
  }

  delete(page: number): boolean {
    const k = Math.floor(page / BLOCK_PAGES);
    const b = this.blocks.get(k);
    const i = page - k * BLOCK_PAGES;
    if (b === undefined || b.held[i] === 0) return false;
    b.held[i] = 0;
    if (this.chunks.size > 0) this.changed(page);
    this.size--;
    return true;
  }

  /** Drops the digest prepareChunks took of the chunk `page` is in, if any. */
  private changed(page: number): void {
    const starts = this.chunkStarts;
    let lo = 0, hi = starts.length - 1, at = -1; // the last start <= page
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (starts[mid]! <= page) { at = mid; lo = mid + 1; } else hi = mid - 1;
    }
    if (at < 0) return;
    const start = starts[at]!;
    const c = this.chunks.get(start);
    if (c !== undefined && page < start + c.pages) this.chunks.delete(start);
  }

  /**
   * Takes the digests of the chunks of `pages` pages from each of `starts` (where the frozen
   * image's chunks are expected to fall, in order: chunkStarts) whose pages are all held now:
   * each the sha256 of its pages' sha256 (chunks.ts chunkDigest), PREPARE_BATCH chunks a call
   * of the addon; one overlapping a chunk taken before it is not taken. Forgets those taken
   * before. Run while the tree runs (PreCopySender.topUp): the frozen image then takes them
   * as they are (chunkDigest) instead of hashing them.
   */
  prepareChunks(starts: readonly number[], pages: number): void {
    this.chunks.clear();
    this.prepared = { starts, pages };
    this.takeChunks(starts, pages);
  }

  /** How many chunk digests taken before the freeze are still true. */
  get knownChunks(): number {
    return this.chunks.size;
  }

  /**
   * Takes again, while the tree runs, the digests of the chunks prepareChunks was last asked
   * for that were dropped since (a page held anew or let go) and whose pages are all held now,
   * keeping those still true. Run after the top-up rounds (PreCopySender.topUp): their pages
   * fall in most chunks (1,000 pages at random in 1 GiB touch some 600 of its 1,024), whose
   * digests the frozen image would hash again; it then hashes only those of the chunks written
   * since. Returns how many it took.
   */
  refreshChunks(): number {
    return this.prepared === undefined ? 0 : this.takeChunks(this.prepared.starts, this.prepared.pages);
  }

  /**
   * Takes the digests of the chunks of `pages` pages from each of `starts` (in order) not
   * known yet whose pages are all held, but of one overlapping a chunk known or taken before
   * it (which is dropped if it was known: a change must find the one chunk it is in). Returns
   * how many it took.
   */
  private takeChunks(starts: readonly number[], pages: number): number {
    let end = -Infinity; // of the last chunk known or taken: they must not overlap (changed())
    const taken = chunkDigestsOf(starts, pages, PREPARE_BATCH, (page, out, at) => {
      if (page < end) {
        this.chunks.delete(page);
        return false;
      }
      const known = this.chunks.has(page);
      if (!known && this.run(page, pages, true, out, at) !== pages) return false;
      end = page + pages;
      return !known;
    }, (page, sum) => this.chunks.set(page, { pages, sum: sum.toString('hex') }));
    this.chunkStarts = [...this.chunks.keys()].sort((a, b) => a - b);
    return taken;
  }

  /**
   * The digest prepareChunks took of the chunk of `pages` pages from `page` on, in hex (as the
   * manifest has it: made while the tree ran, not one by one in the frozen image's writing,
   * some 0.9 µs a chunk, 4 ms at 4 GiB), if none of its pages was held anew or let go since
   * (so every one is still held, with the same digest); else undefined.
   */
  chunkDigest(page: number, pages: number): string | undefined {
    const c = this.chunks.get(page);
    return c !== undefined && c.pages === pages ? c.sum : undefined;
  }

  *keys(): IterableIterator<number> {
    for (const [k, b] of this.blocks) for (let i = 0; i < BLOCK_PAGES; i++) if (b.held[i] === 1) yield k * BLOCK_PAGES + i;
  }

  /**
   * How many pages from `page` on are held (`want` true) or not (false), at most `max`; with
   * `out`, the held ones' digests are copied into it from `at`.
   */
  run(page: number, max: number, want = true, out?: Buffer, at = 0): number {
    let n = 0;
    while (n < max) {
      const p = page + n;
      const k = Math.floor(p / BLOCK_PAGES);
      const b = this.blocks.get(k);
      const i = p - k * BLOCK_PAGES;
      const room = Math.min(max - n, BLOCK_PAGES - i);
      let j: number;
      if (b === undefined) j = want ? 0 : room;
      else {
        // The first page of the other kind, by TypedArray indexOf (a native scan, not a loop
        // here: run once per frozen image over every held page, a loop is not optimised yet).
        const other = b.held.indexOf(want ? 0 : 1, i);
        j = other < 0 ? room : Math.min(room, other - i);
      }
      if (want && out !== undefined && j > 0) b!.sums.copy(out, at + n * 32, i * 32, (i + j) * 32);
      n += j;
      if (j < room) break;
    }
    return n;
  }
}

/**
 * The sender's side: tracking, the rounds, and the image filter that turns the frozen
 * image's held pages into REFs. close() ends the tracking (the userfaultfds close, which
 * unregisters everything: the tree is as it was).
 */
export class PreCopySender {
  /** pid -> the pages whose copy the receiver holds and that are unchanged since, with their sha256. */
  private readonly held = new Map<number, HeldPagesOf>();
  /** What the frozen dump did, per process (HeldPages.counted). */
  private readonly frozen = new Map<number, PageCounts>();
  private tracker: DirtyTracker | undefined;
  private finalized = false;
  private readonly filter: ImageFilter;
  /**
   * Each tracked process's pid as the image names it (imagePid), from when it was first seen:
   * frames and held pages go by it, so that the frozen dump, the filter and the receiver's
   * store agree for a tree in a pid namespace of its own (a container's) too.
   */
  private readonly imagePids = new Map<number, number>();
  /** Which process holds each image pid; one two processes would share holds nothing (poisoned). */
  private readonly byImagePid = new Map<number, number>();
  private readonly poisoned = new Set<number>();
  /** Bytes put on the wire in rounds (page data and headers), topUp's included. */
  roundBytes = 0;
  /** Pages topUp sent (not in `rounds`). */
  topUpPages = 0;
  /** When the last round's scan ran (performance.now()). */
  private lastScan = 0;
  readonly rounds: RoundRecord[] = [];

  constructor(private readonly ch: Channel, private readonly root: number, private readonly o: PreCopyOptions) {
    this.filter = new ImageFilter((frame) => {
      this.o.log?.(frame);
      return this.ch.sendData(frame);
    }, (pid, page) => this.held.get(pid)?.has(page) ?? false, true,
    (pid, page, max) => this.held.get(pid)?.run(page, max) ?? 0);
  }

  /**
   * The held pages for the checkpoint (api.ts CheckpointOptions.heldPages): asked for first
   * with the tree frozen, which is when the last scan runs; the frozen dump and the filter
   * then agree on every page (neither changes the held set after it).
   */
  heldPages(): HeldPages {
    return {
      of: (pid) => {
        this.finalize();
        const m = this.held.get(pid);
        return m === undefined || m.size === 0 ? undefined : m;
      },
      counted: (pid, counts) => { this.frozen.set(pid, counts); },
    };
  }

  /** Pages the frozen dump read from the tree, and pages it named by digest instead. */
  get frozenPages(): PageCounts {
    const out = { read: 0, held: 0 };
    for (const c of this.frozen.values()) {
      out.read += c.read;
      out.held += c.held;
    }
    return out;
  }

  /** Bytes the final image's REFs stood for (not sent again). */
  get refBytes(): number {
    return this.filter.refPages * PAGE_SIZE;
  }

  /**
   * Starts tracking and runs the rounds. Returns false, with a warning logged, when this
   * kernel cannot track writes: the image then carries every page (stop and copy). Throws a
   * one-line FerryError for a tree that cannot be tracked (its own userfaultfd, an area that
   * cannot be registered); nothing was changed in it then.
   */
  async run(): Promise<boolean> {
    const log = this.o.logger;
    const tracker = DirtyTracker.start(treePids(this.root), log);
    if (tracker === undefined) {
      const line = 'this kernel cannot track writes to memory (userfaultfd with WP_ASYNC and PAGEMAP_SCAN, or soft-dirty): '
        + `no pre-copy, pid ${this.root} is stopped for the whole transfer (stop and copy)`;
      log.warn({ targetPid: this.root }, line);
      this.o.onWarning?.(line);
      return false;
    }
    this.tracker = tracker;
    try {
      await this.runRounds(tracker);
    } catch (err) {
      const reason: unknown = this.o.signal?.reason;
      if (this.o.signal?.aborted && (err === reason || (err instanceof FerryError && err.code === 'EINTR'))) {
        throw new FerryError('EINTR', `pre-copy of pid ${this.root} ${describeCause(reason)}: it runs on here as it was (its memory no longer tracked)`,
          { cause: err, pid: this.root });
      }
      throw err;
    }
    return true;
  }

  /** The rounds, until the dirty set is small, stops shrinking, or `maxRounds`. */
  private async runRounds(tracker: DirtyTracker): Promise<void> {
    let previous = Infinity;
    for (let round = 1; round <= this.o.maxRounds; round++) {
      const { bytes } = await this.round(tracker);
      if (round === 1) await faultPoint('precopy', this.o.signal);
      if (round > 1 && (bytes <= SMALL_BYTES || bytes > previous * (1 - MIN_SHRINK))) break;
      previous = bytes;
    }
  }

  /**
   * One round: scan, send what it reports written; said as a round (`rounds`, onRound) unless
   * it is one of topUp's.
   */
  private async round(tracker: DirtyTracker, topUp = false): Promise<RoundRecord> {
    this.o.signal?.throwIfAborted();
    const t0 = performance.now();
    const scans = tracker.scan();
    const first = this.rounds.length === 0;
    const since = (t0 - this.lastScan) / 1000;
    this.lastScan = t0;
    const { pages, bytes } = await this.sendRound(scans);
    const ms = performance.now() - t0;
    const rec: RoundRecord = {
      round: this.rounds.length + 1, pages, bytes, dirtyRate: first ? 0 : Math.round(bytes / Math.max(since, 1e-3)), ms: Math.round(ms * 10) / 10,
    };
    if (topUp) {
      this.topUpPages += pages;
      this.o.logger.debug(rec, 'pre-copy top-up before the freeze');
      return rec;
    }
    this.rounds.push(rec);
    this.o.onRound?.(rec);
    this.o.logger.debug(rec, 'pre-copy round');
    return rec;
  }

  /**
   * The last rounds, right before the freeze (api.ts CheckpointOptions.beforeFreeze): between
   * the rounds' end and the freeze, the checkpoint makes its frozen window ready (buffers,
   * writer, hash pool: tens to hundreds of milliseconds), and every page the tree wrote
   * meanwhile was read, hashed and streamed while it was stopped: 900-1,700 pages at 1 GiB
   * and 10 MiB/s, most of the frozen stream's cost. A round here sends them while it still
   * runs; a second one, if the first still found more than TOP_UP_PAGES, what the tree wrote
   * during the first. Not counted in `rounds` nor bound by `maxRounds` (those are the rounds
   * that wait for the dirty set to settle); their pages are `topUpPages`. None under stop and
   * copy or after the final scan. The chunk digests taken before them (prepareChunks) that
   * their pages dropped are taken again after them (HeldPagesOf.refreshChunks).
   */
  async topUp(): Promise<void> {
    const tracker = this.tracker;
    if (tracker === undefined || this.finalized) return;
    const t0 = performance.now();
    this.prepareChunks(tracker);
    this.o.logger.debug({ ms: Math.round((performance.now() - t0) * 100) / 100 }, 'chunk digests taken before the freeze');
    for (let i = 0; i < TOP_UPS; i++) {
      const { pages } = await this.round(tracker, true);
      if (i === 0) await faultPoint('topup', this.o.signal);
      if (pages <= TOP_UP_PAGES) break;
    }
    // The top-ups' pages dropped the digests of most chunks: taken again, while the tree runs.
    const t1 = performance.now();
    let chunks = 0;
    for (const held of this.held.values()) chunks += held.refreshChunks();
    this.o.logger.debug({ chunks, ms: Math.round((performance.now() - t1) * 100) / 100 }, 'chunk digests taken again after the top-ups');
  }

  /**
   * One round more after the target caught up with the top-ups (api.ts beforeFreeze: topUp,
   * catch-up, this), as the last step before the freeze: the tree writes on while the target
   * takes the top-ups' pages, a round trip and their writes (tens of ms on a quiet node,
   * hundreds on a busy one), and every page it wrote then was read, hashed and streamed while
   * it was stopped. Its pages are not waited for: the target takes them while the source's
   * frozen dump reads the tree, and the frozen image's frames wait for them there
   * (PreCopyReceiver.ready). Its pages count in `topUpPages`; the chunk digests they dropped
   * are taken again, the tree still running. None under stop and copy or after the final scan.
   */
  async lastLook(): Promise<void> {
    const tracker = this.tracker;
    if (tracker === undefined || this.finalized) return;
    await this.round(tracker, true);
    await faultPoint('lastlook', this.o.signal);
    for (const held of this.held.values()) held.refreshChunks();
  }

  /**
   * Takes, while the tree runs, the digests of the frozen image's chunks whose pages are all
   * held (HeldPagesOf.prepareChunks), where the chunks are expected to fall: the memory plan of
   * each process now (planMemory, as the checkpoint plans a process without its parent: the
   * root's exactly, a child's as if it shared nothing with its parent). The frozen image takes
   * those whose pages are unchanged since (the top-ups and the last scan change a few) as they
   * are, instead of hashing a digest a chunk out of its pages' (8 MiB of page digests at 1 GiB,
   * most of the frozen image's hashing). A chunk expected wrongly (the tree mapped or touched
   * memory before it since) is hashed as before: the image is the same either way.
   */
  private prepareChunks(tracker: DirtyTracker): void {
    for (const pid of tracker.pids) {
      const key = this.keyOf(pid);
      const held = key === undefined ? undefined : this.held.get(key);
      if (held === undefined || held.size === 0) continue;
      try {
        const { vmas, vmflags, unshared } = parseSmaps(readProcText(pid, 'smaps'));
        const starts = chunkStarts(planMemory(pid, vmas, vmflags, undefined, unshared).vmas);
        held.prepareChunks(starts, PAGED_CHUNK_PAGES);
        // The target, where it stages the root's memory (a tree of one: sendLayout), takes the
        // same chunks' digests of the pages it holds, before the freeze (page-store.ts).
        if (tracker.pids.length === 1) {
          for (let i = 0; i < starts.length; i += MAX_CHUNK_STARTS) this.ch.send({ type: 'chunks', pid: key!, starts: starts.slice(i, i + MAX_CHUNK_STARTS) });
        }
      } catch (err) {
        this.o.logger.debug({ err, targetPid: pid }, 'no chunk digests taken before the freeze');
      }
    }
  }

  /**
   * Forgets what a scan says changed; sends the dirty pages (reading them now) and holds them.
   * Pages are read through /proc/PID/mem, which takes a reference (FOLL_GET), not a pin: a pin
   * (process_vm_readv) of a page a forked tree still shares copy-on-write would copy it
   * (proc/pagemap.ts sharedAnonPages), and the running tree's memory would grow.
   */
  private async sendRound(scans: readonly ProcessScan[]): Promise<{ pages: number; bytes: number }> {
    let pages = 0;
    /** The frames' digests being taken on the pool, oldest first (at most HASHING_FRAMES + 1). */
    const hashing: Array<Promise<void>> = [];
    for (const s of scans) {
      const held = this.forget(s);
      if (held === undefined) continue;
      // The root's areas first, when they changed: the target places its pages there as they
      // come (staging.ts), and restore forks the root from them.
      if (s.pid === this.root) this.sendLayout(this.keyOf(s.pid)!);
      let mem: number;
      try {
        mem = openSync(`/proc/${s.pid}/mem`, 'r');
      } catch {
        continue; // gone: the frozen image says what it had
      }
      try {
        for (const [addr, count] of s.dirty) {
          for (let off = 0; off < count; off += FRAME_PAGES) {
            this.o.signal?.throwIfAborted();
            const k = Math.min(FRAME_PAGES, count - off);
            const at = addr + BigInt(off * PAGE_SIZE);
            const frame = Buffer.allocUnsafe(HEAD + k * PAGE_SIZE);
            writeHead(frame, TAG_PAGES, this.keyOf(s.pid)!, at, k);
            try {
              if (readSync(mem, frame, HEAD, k * PAGE_SIZE, at) !== k * PAGE_SIZE) continue;
            } catch {
              continue; // unmapped since the scan: not held, the frozen image has what is there
            }
            // Each page's digest now, while the tree runs: the frozen dump names it by that. On
            // libuv's pool, while this thread sends (1.2 s of it a GiB); held once hashed.
            const sums = Buffer.allocUnsafe(k * 32);
            const first = Number(at / BigInt(PAGE_SIZE));
            hashing.push(pageDigestsOnPool(frame.subarray(HEAD), sums).then(() => {
              for (let p = 0; p < k; p++) held.set(first + p, sums, p * 32);
            }));
            if (hashing.length > HASHING_FRAMES) await hashing.shift();
            pages += k;
            this.roundBytes += frame.length;
            const behind = this.o.log?.(frame);
            if (behind !== undefined) await behind;
            if (!this.ch.sendData(frame)) await this.drained();
          }
        }
      } finally {
        closeSync(mem);
      }
    }
    await Promise.all(hashing);
    await this.drained();
    return { pages, bytes: pages * PAGE_SIZE };
  }

  /** The root's stageable areas as last sent (`layout`), joined. */
  private lastLayout = '';

  /** Sends the root's stageable areas (staging.ts stageableAreas) if they changed since last sent. */
  private sendLayout(key: number): void {
    // Only a tree of one process has its memory staged (restore forks only a root from it):
    // none for a bigger one (which unstages what was, if it grew).
    const areas = this.tracker !== undefined && this.tracker.pids.length === 1 ? stageableAreas(this.root) : [];
    const text = areas.join(',');
    if (text === this.lastLayout) return;
    this.lastLayout = text;
    this.ch.send({ type: 'layout', pid: key, areas });
  }

  /** Applies a scan to the held set (forgetScan). */
  private forget(s: ProcessScan): HeldPagesOf | undefined {
    const key = this.keyOf(s.pid);
    if (key === undefined) return undefined; // gone before it was first seen: nothing held
    return forgetScan(this.held, s, key, () => new HeldPagesOf());
  }

  /**
   * The image pid of tracked process `pid`; undefined when it is gone and was never seen, or
   * when another process has the same one (processes in sibling pid namespaces): the pages of
   * neither are held then, since the frozen dump could not tell whose they are.
   */
  private keyOf(pid: number): number | undefined {
    let key = this.imagePids.get(pid);
    if (key === undefined) {
      try {
        key = imagePid(pid);
      } catch {
        return undefined;
      }
      this.imagePids.set(pid, key);
      const other = this.byImagePid.get(key);
      if (other !== undefined && other !== pid) {
        this.poisoned.add(key);
        this.held.delete(key);
      }
      this.byImagePid.set(key, pid);
    }
    return this.poisoned.has(key) ? undefined : key;
  }

  /** Waits until the socket takes more (or fails). */
  private drained(): Promise<void> {
    if (this.ch.failure !== undefined) return Promise.reject(this.ch.failure);
    if (!this.ch.socket.writableNeedDrain) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const done = (): void => { this.ch.socket.off('close', closed); resolve(); };
      const closed = (): void => { this.ch.socket.off('drain', done); reject(this.ch.failure ?? new FerryError('ECONNRESET', `${this.ch.peer} closed the connection`)); };
      this.ch.socket.once('drain', done);
      this.ch.socket.once('close', closed);
    });
  }

  /**
   * The last scan, with the tree frozen (the checkpoint writes its image only once it is):
   * what it reports written is sent with the image, and only what is still held becomes REFs.
   */
  private finalize(): void {
    if (this.finalized) return;
    this.finalized = true;
    if (this.tracker === undefined) {
      this.held.clear();
      return;
    }
    try {
      const t0 = performance.now();
      const scans = this.tracker.scan(true);
      for (const s of scans) this.forget(s);
      // The tree is frozen: what only a debug record says is counted only for one.
      if (this.o.logger.isLevelEnabled('debug')) {
        let pages = 0;
        for (const s of scans) for (const [, n] of s.dirty) pages += n;
        const known = [...this.held.values()].reduce((sum, h) => sum + h.knownChunks, 0);
        this.o.logger.debug({ ms: Math.round((performance.now() - t0) * 100) / 100, pages, knownChunks: known }, 'the final dirty scan');
      }
    } catch (err) {
      this.o.logger.warn({ err }, 'the final dirty scan failed: every page goes with the image');
      this.held.clear();
    }
    // A process the tracking did not start with (forked meanwhile) has no held pages anyway.
  }

  /**
   * Sends a chunk of the frozen image's bytes (from the checkpoint's pipe), as RAW and REF
   * frames; false when the socket's buffer is full (wait for 'drain').
   */
  send(chunk: Buffer): boolean {
    this.finalize();
    // The frames of one chunk go out in one write (writev): a chunk of the frozen image is
    // mostly REFs and RAW pieces of a few pages, two socket writes each.
    this.ch.socket.cork?.();
    try {
      return this.filter.push(chunk);
    } finally {
      this.ch.socket.uncork?.();
    }
  }

  /** Ends the tracking (idempotent). */
  close(): void {
    this.tracker?.close();
    this.tracker = undefined;
  }
}

/** A held set of page numbers: a Set, or a Map from page number to what is kept of it. */
interface PageSet {
  delete(page: number): boolean;
  readonly size: number;
  keys(): IterableIterator<number>;
}

/**
 * Applies a scan to a held set (pid -> page numbers): written, dropped, re-registered or
 * untracked pages are no longer held; a process that is not the one tracked any more is forgotten
 * whole. Returns the process's set (made empty if new), or undefined when it was forgotten.
 */
export function forgetScan<S extends PageSet = Set<number>>(heldByPid: Map<number, S>, s: ProcessScan, key: number = s.pid,
  make: () => S = () => new Set<number>() as unknown as S): S | undefined {
  if (!s.same) {
    heldByPid.delete(key);
    return undefined;
  }
  let held = heldByPid.get(key);
  if (!held) heldByPid.set(key, (held = make()));
  const page = (a: bigint): number => Number(a / BigInt(PAGE_SIZE));
  for (const [addr, count] of s.dirty) for (let p = 0, f = page(addr); p < count; p++) held.delete(f + p);
  // Dropped runs can be long (the first scan reports every untouched page of an area so).
  if (held.size > 0) for (const [addr, count] of s.dropped) for (let p = 0, f = page(addr); p < count; p++) held.delete(f + p);
  for (const [start, end] of [...s.fresh, ...s.untracked]) {
    if (held.size < Number((end - start) / BigInt(PAGE_SIZE))) {
      for (const p of [...held.keys()]) if (p >= page(start) && p < page(end)) held.delete(p);
    } else {
      for (let p = page(start); p < page(end); p++) held.delete(p);
    }
  }
  return held;
}

/**
 * The first page (address / PAGE_SIZE) of each chunk of a `paged` pages entry
 * (PAGED_CHUNK_PAGES pages; the short last one not) that lies in one run of `vmas`' stored
 * pages: a chunk of the consecutive pages from there.
 */
export function chunkStarts(vmas: readonly VmaRecord[]): number[] {
  const out: number[] = [];
  let at = 0; // pages of the entry before the run
  for (const v of vmas) {
    const base = Number(BigInt(v.start) / BigInt(PAGE_SIZE));
    for (const [page, count] of v.runs) {
      for (let c = Math.ceil(at / PAGED_CHUNK_PAGES) * PAGED_CHUNK_PAGES; c + PAGED_CHUNK_PAGES <= at + count; c += PAGED_CHUNK_PAGES) {
        out.push(base + page + (c - at));
      }
      at += count;
    }
  }
  return out;
}

/**
 * The pid the image names process `pid` by: its pid in its innermost pid namespace, as the
 * checkpoint records it (dump/ns-ids.ts); the same for a tree in ferry's own namespace.
 */
export function imagePid(pid: number): number {
  return parseStatus(readProcText(pid, 'status')).nsPid.at(-1) ?? pid;
}
