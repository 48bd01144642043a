/**
 * Pre-copy (docs/migration.md, "Pre-copy"): the tree's memory crosses in rounds while it
 * runs, each round only the pages written since the one before (dump/dirty.ts tracks them),
 * and the final image, taken frozen, then names the pages the target already holds instead
 * of carrying them.
 *
 * On the wire, once the hello said `precopy`, every data frame starts with a tag:
 *   0 RAW    image bytes, in order (the image exactly as the checkpoint wrote it, less the
 *            pages REF frames stand for);
 *   1 PAGES  u32 pid, u64 address, u32 count, then count pages: a round's copy of them;
 *   2 REF    u32 pid, u64 address, u32 count: "here come these pages, as you hold them".
 * The receiver keeps PAGES in a store in its spool directory (the latest copy of a page wins)
 * and, for each REF, writes the held pages into the image at that point. The image it
 * spools is therefore byte for byte the one the checkpoint wrote, and restore verifies it as
 * any other (manifest sha256 per chunk, signature): a REF to a page that was sent stale, or to
 * the wrong place, fails that check and nothing is restored. An edited stream cannot make it
 * write anywhere but its own spool, in order, nor keep more pages than its bound.
 *
 * Which pages the target holds, correctly: a page is held once a round sent it (read after
 * the scan that re-armed it) and stops being held when a later scan reports it written, when
 * its range is registered anew (a new area in an old one's place), or when its process is no
 * longer the one tracked. The final scan runs with the tree frozen, at the first byte of the
 * image. The final image decides which pages exist: a REF is only ever made for a page the
 * frozen dump stores, so earlier pages are used only where the final areas still have them.
 */
import { closeSync, openSync, readSync, rmSync, statfsSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { PAGE_SIZE } from '../arch/x86-64.js';
import { DirtyTracker, type ProcessScan } from '../dump/dirty.js';
import { FerryError, describeCause } from '../errors.js';
import { faultPoint } from '../fault.js';
import { parseChildren } from '../proc/children.js';
import { listTids, readProcText } from '../proc/read.js';
import { MAX_DATA_BYTES, type Channel } from './channel.js';

export const TAG_RAW = 0, TAG_PAGES = 1, TAG_REF = 2;
/** tag, pid, address, count. */
export const HEAD = 1 + 4 + 8 + 4;
/** Pages in one PAGES frame (its payload within the channel's frame bound). */
export const FRAME_PAGES = Math.floor((MAX_DATA_BYTES - HEAD) / PAGE_SIZE);
/** Pages one REF may name. */
const MAX_REF_PAGES = 1 << 20;
/** Rounds end once a round's dirty set is at most this... */
const SMALL_BYTES = 1 << 20;
/** ...or shrank by less than this fraction since the round before. */
const MIN_SHRINK = 0.1;
/** Highest user address on x86-64 (47 bits). */
const USER_END = 0x800000000000n;
/** Default bound of rounds (`--max-rounds`). */
export const DEFAULT_MAX_ROUNDS = 8;

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
}

/**
 * The sender's side: tracking, the rounds, and the image filter that turns the frozen
 * image's held pages into REFs. close() ends the tracking (the userfaultfds close, which
 * unregisters everything: the tree is as it was).
 */
export class PreCopySender {
  /** pid -> page numbers (address / PAGE_SIZE) whose copy the receiver holds and that are unchanged since. */
  private readonly held = new Map<number, Set<number>>();
  private tracker: DirtyTracker | undefined;
  private finalized = false;
  private readonly filter: ImageFilter;
  /** Bytes put on the wire in rounds (page data and headers). */
  roundBytes = 0;
  readonly rounds: RoundRecord[] = [];

  constructor(private readonly ch: Channel, private readonly root: number, private readonly o: PreCopyOptions) {
    this.filter = new ImageFilter((frame) => this.ch.sendData(frame), (pid, page) => this.held.get(pid)?.has(page) ?? false);
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
    let lastScan = performance.now();
    for (let round = 1; round <= this.o.maxRounds; round++) {
      this.o.signal?.throwIfAborted();
      const t0 = performance.now();
      const scans = tracker.scan();
      const since = (t0 - lastScan) / 1000;
      lastScan = t0;
      const { pages, bytes } = await this.sendRound(scans);
      const ms = performance.now() - t0;
      const rec: RoundRecord = {
        round, pages, bytes, dirtyRate: round === 1 ? 0 : Math.round(bytes / Math.max(since, 1e-3)), ms: Math.round(ms * 10) / 10,
      };
      this.rounds.push(rec);
      this.o.onRound?.(rec);
      this.o.logger.debug(rec, 'pre-copy round');
      if (round === 1) await faultPoint('precopy', this.o.signal);
      if (round > 1 && (bytes <= SMALL_BYTES || bytes > previous * (1 - MIN_SHRINK))) break;
      previous = bytes;
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
    for (const s of scans) {
      const held = this.forget(s);
      if (held === undefined) continue;
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
            writeHead(frame, TAG_PAGES, s.pid, at, k);
            try {
              if (readSync(mem, frame, HEAD, k * PAGE_SIZE, at) !== k * PAGE_SIZE) continue;
            } catch {
              continue; // unmapped since the scan: not held, the frozen image has what is there
            }
            const first = Number(at / BigInt(PAGE_SIZE));
            for (let p = 0; p < k; p++) held.add(first + p);
            pages += k;
            this.roundBytes += frame.length;
            if (!this.ch.sendData(frame)) await this.drained();
          }
        }
      } finally {
        closeSync(mem);
      }
    }
    await this.drained();
    return { pages, bytes: pages * PAGE_SIZE };
  }

  /** Applies a scan to the held set (forgetScan). */
  private forget(s: ProcessScan): Set<number> | undefined {
    return forgetScan(this.held, s);
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
      for (const s of this.tracker.scan()) this.forget(s);
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
    return this.filter.push(chunk);
  }

  /** Ends the tracking (idempotent). */
  close(): void {
    this.tracker?.close();
    this.tracker = undefined;
  }
}

/**
 * Applies a scan to a held set (pid -> page numbers): written, re-registered or untracked
 * pages are no longer held; a process that is not the one tracked any more is forgotten
 * whole. Returns the process's set (made empty if new), or undefined when it was forgotten.
 */
export function forgetScan(heldByPid: Map<number, Set<number>>, s: ProcessScan, key: number = s.pid): Set<number> | undefined {
  if (!s.same) {
    heldByPid.delete(key);
    return undefined;
  }
  let held = heldByPid.get(key);
  if (!held) heldByPid.set(key, (held = new Set()));
  const page = (a: bigint): number => Number(a / BigInt(PAGE_SIZE));
  for (const [addr, count] of s.dirty) for (let p = 0, f = page(addr); p < count; p++) held.delete(f + p);
  for (const [start, end] of [...s.fresh, ...s.untracked]) {
    if (held.size < Number((end - start) / BigInt(PAGE_SIZE))) {
      for (const p of [...held]) if (p >= page(start) && p < page(end)) held.delete(p);
    } else {
      for (let p = page(start); p < page(end); p++) held.delete(p);
    }
  }
  return held;
}

/** Writes a frame's head: tag, pid, address, page count (big-endian). */
export function writeHead(b: Buffer, tag: number, pid: number, addr: bigint, count: number): void {
  b.writeUInt8(tag, 0);
  b.writeUInt32BE(pid, 1);
  b.writeBigUInt64BE(addr, 5);
  b.writeUInt32BE(count, 13);
}

/** Where the stored pages of a task's pages entry live: runs of [entry page, address, count]. */
type Segments = Array<{ entryPage: number; addr: bigint; count: number }>;

const TASK_RE = /^tasks\/(\d+)\/task\.json$/;
const PAGES_RE = /^tasks\/(\d+)\/pages\.bin$/;
const BLOCK = 512;
/** A task record is read to map its pages entry only up to this size. */
const MAX_TASK_JSON = 64 << 20;

/**
 * Reads the image's tar stream as it passes (ustar headers as tar-stream writes them, pax
 * size records included), learns each task's areas from its task.json, and in its
 * pages.bin replaces each page `isHeld` says the receiver has by a REF. Anything it does
 * not understand switches it to passing every byte as RAW: the receiver then gets the whole
 * image, which is only slower.
 */
export class ImageFilter {
  private head = Buffer.alloc(0);
  private entry: { name: string; size: number; pos: number; pad: number; task?: Buffer[]; pages?: { pid: number; segs: Segments; seg: number } } | undefined;
  private paxSize: number | undefined;
  private passthrough = false;
  private readonly segments = new Map<number, Segments>();
  private raw: Buffer[] = [];
  private rawBytes = 0;
  private ref: { pid: number; addr: bigint; count: number } | undefined;
  private ok = true;
  refPages = 0;

  constructor(private readonly send: (frame: Buffer) => boolean, private readonly isHeld: (pid: number, page: number) => boolean) {}

  /** Passes one chunk of the image; false on backpressure. */
  push(chunk: Buffer): boolean {
    this.ok = true;
    let off = 0;
    while (off < chunk.length) {
      if (this.passthrough) {
        this.emitRaw(chunk.subarray(off));
        break;
      }
      if (this.entry === undefined) {
        const need = BLOCK - this.head.length;
        const take = chunk.subarray(off, off + need);
        this.head = this.head.length === 0 ? Buffer.from(take) : Buffer.concat([this.head, take]);
        off += take.length;
        this.emitRaw(take);
        if (this.head.length === BLOCK) this.header(this.head);
        continue;
      }
      const e = this.entry;
      const dataLeft = e.size - e.pos;
      if (dataLeft > 0) {
        const part = chunk.subarray(off, off + dataLeft);
        off += part.length;
        this.data(e, part);
        e.pos += part.length;
        continue;
      }
      const padPart = chunk.subarray(off, off + e.pad);
      off += padPart.length;
      e.pad -= padPart.length;
      this.emitRaw(padPart);
      if (e.pad === 0) this.entry = undefined;
    }
    this.flushRaw();
    return this.ok;
  }

  private header(h: Buffer): void {
    this.head = Buffer.alloc(0);
    if (h.every((b) => b === 0)) {
      this.passthrough = true; // the end of the archive
      return;
    }
    const name = h.subarray(0, 100).toString('utf8').replace(/\0.*$/s, '');
    const type = String.fromCharCode(h[156]!);
    let size: number;
    if ((h[124]! & 0x80) !== 0) {
      size = Number(h.readBigUInt64BE(128)); // base-256
    } else {
      size = parseInt(h.subarray(124, 136).toString('ascii').replace(/\0.*$/s, '').trim() || '0', 8);
    }
    if (this.paxSize !== undefined && type !== 'x') {
      size = this.paxSize;
      this.paxSize = undefined;
    }
    if (!Number.isSafeInteger(size) || size < 0) {
      this.passthrough = true;
      return;
    }
    const pad = (BLOCK - (size % BLOCK)) % BLOCK;
    this.entry = { name, size, pos: 0, pad };
    if (type === 'x') this.entry.task = []; // pax records: read for their size=
    else if (TASK_RE.test(name) && size <= MAX_TASK_JSON) this.entry.task = [];
    else {
      const m = PAGES_RE.exec(name);
      const segs = m ? this.segments.get(Number(m[1])) : undefined;
      if (m && segs) this.entry.pages = { pid: Number(m[1]), segs, seg: 0 };
    }
    this.entry.name = type === 'x' ? '\0pax' : name;
    if (size === 0 && pad === 0) this.endData(this.entry);
  }

  private data(e: NonNullable<ImageFilter['entry']>, part: Buffer): void {
    if (e.pages) this.pagesData(e, e.pages, part);
    else {
      this.emitRaw(part);
      if (e.task) e.task.push(Buffer.from(part));
    }
    if (e.pos + part.length === e.size) this.endData(e);
  }

  /** The end of an entry's data: a task record read, pax records applied. */
  private endData(e: NonNullable<ImageFilter['entry']>): void {
    if (!e.task) return;
    const text = Buffer.concat(e.task).toString('utf8');
    delete e.task;
    if (e.name === '\0pax') {
      const m = /(?:^|\n)\d+ size=(\d+)\n/.exec(text);
      if (m) this.paxSize = Number(m[1]);
      return;
    }
    const m = TASK_RE.exec(e.name);
    try {
      const task = JSON.parse(text) as { vmas: Array<{ start: string; runs: Array<[number, number]>; pagesOffset: number }> };
      const segs: Segments = [];
      for (const v of task.vmas) {
        let entryPage = v.pagesOffset / PAGE_SIZE;
        for (const [page, count] of v.runs) {
          segs.push({ entryPage, addr: BigInt(v.start) + BigInt(page * PAGE_SIZE), count });
          entryPage += count;
        }
      }
      this.segments.set(Number(m![1]), segs);
    } catch {
      // Not what we expect: its pages go as RAW.
    }
  }

  /** Bytes of a pages entry: held pages become REFs, the rest goes as RAW. */
  private pagesData(e: NonNullable<ImageFilter['entry']>, p: NonNullable<NonNullable<ImageFilter['entry']>['pages']>, part: Buffer): void {
    let pos = e.pos;
    let off = 0;
    while (off < part.length) {
      const page = Math.floor(pos / PAGE_SIZE);
      const pageEnd = (page + 1) * PAGE_SIZE;
      const n = Math.min(part.length - off, pageEnd - pos);
      while (p.seg < p.segs.length && p.segs[p.seg]!.entryPage + p.segs[p.seg]!.count <= page) p.seg++;
      const s = p.segs[p.seg];
      const addr = s && s.entryPage <= page ? s.addr + BigInt((page - s.entryPage) * PAGE_SIZE) : undefined;
      if (addr !== undefined && this.isHeld(p.pid, Number(addr / BigInt(PAGE_SIZE)))) {
        // Its bytes are dropped; the REF is made once the page's last byte has passed.
        if (pos + n === pageEnd) this.refPage(p.pid, addr);
      } else {
        this.emitRaw(part.subarray(off, off + n));
      }
      off += n;
      pos += n;
    }
  }

  private refPage(pid: number, addr: bigint): void {
    const r = this.ref;
    if (r && r.pid === pid && r.addr + BigInt(r.count * PAGE_SIZE) === addr && r.count < MAX_REF_PAGES) {
      r.count++;
    } else {
      this.flushRef();
      this.flushRaw();
      this.ref = { pid, addr, count: 1 };
    }
    this.refPages++;
  }

  private emitRaw(b: Buffer): void {
    if (b.length === 0) return;
    this.flushRef();
    this.raw.push(Buffer.from(b));
    this.rawBytes += b.length;
    if (this.rawBytes >= MAX_DATA_BYTES - 1) this.flushRaw();
  }

  private flushRef(): void {
    const r = this.ref;
    if (!r) return;
    this.ref = undefined;
    const f = Buffer.allocUnsafe(HEAD);
    writeHead(f, TAG_REF, r.pid, r.addr, r.count);
    if (!this.send(f)) this.ok = false;
  }

  private flushRaw(): void {
    if (this.rawBytes === 0) return;
    const data = this.raw.length === 1 ? this.raw[0]! : Buffer.concat(this.raw);
    this.raw = [];
    this.rawBytes = 0;
    for (let off = 0; off < data.length; off += MAX_DATA_BYTES - 1) {
      const part = data.subarray(off, Math.min(data.length, off + MAX_DATA_BYTES - 1));
      if (!this.send(Buffer.concat([TAG_RAW_BYTE, part]))) this.ok = false;
    }
  }
}

const TAG_RAW_BYTE = Buffer.from([TAG_RAW]);

/** Highest pid a frame may name. */
const MAX_PID = 1 << 22;
/** Processes whose pages the store may hold. */
const MAX_PIDS = 4096;
/** The store's bound whatever the disk: 64 GiB. */
const MAX_STORE_BYTES = 64 * 2 ** 30;

/**
 * The receiver's side: the store of pre-copied pages (a file in the spool directory, removed
 * with it) and the reading of tagged frames into the spooled image.
 */
export class PreCopyReceiver {
  private fd: number;
  private readonly path: string;
  private readonly index = new Map<number, Map<number, number>>();
  private slots = 0;
  private readonly maxSlots: number;
  private imageStarted = false;
  /** Pages received in rounds, and bytes of the image REFs filled in. */
  pages = 0;
  refBytes = 0;

  constructor(dir: string, private readonly peer: string) {
    this.path = join(dir, 'precopy.pages');
    this.fd = openSync(this.path, 'wx+', 0o600);
    let free = MAX_STORE_BYTES;
    try {
      const st = statfsSync(dir);
      free = Math.min(free, Math.floor(Number(st.bavail) * Number(st.bsize) * 0.9));
    } catch { /* the fixed bound */ }
    this.maxSlots = Math.max(0, Math.floor(free / PAGE_SIZE));
  }

  /** Closes and removes the store (idempotent): the image holds what it was for. */
  close(): void {
    if (this.fd < 0) return;
    closeSync(this.fd);
    this.fd = -1;
    rmSync(this.path, { force: true });
  }

  private bad(why: string): never {
    throw new FerryError('EPROTO', `${this.peer} sent ${why}: a protocol error`);
  }

  /**
   * One data frame: pages into the store, or image bytes (RAW as they are, REF from the store)
   * into `write`. Returns the image bytes written.
   */
  handle(frame: Buffer, write: (b: Buffer) => void): number {
    if (frame.length < 1) this.bad('an empty data frame');
    const tag = frame[0]!;
    if (tag === TAG_RAW) {
      this.imageStarted = true;
      const b = frame.subarray(1);
      write(b);
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
        this.index.set(pid, (idx = new Map()));
      }
      const slots: number[] = [];
      for (let p = 0; p < count; p++) {
        let slot = idx.get(first + p);
        if (slot === undefined) {
          if (this.slots >= this.maxSlots) {
            throw new FerryError('ENOSPC', `${this.peer} sent more pre-copy pages than this node keeps (${this.maxSlots * PAGE_SIZE} bytes, image.work_dir's free space): migrate with --no-pre-copy or free space`);
          }
          slot = this.slots++;
          idx.set(first + p, slot);
        }
        slots.push(slot);
      }
      // Pages whose slots follow each other (new pages always do) are one write.
      for (let p = 0; p < count;) {
        let k = 1;
        while (p + k < count && slots[p + k] === slots[p]! + k) k++;
        writeAll(this.fd, frame.subarray(HEAD + p * PAGE_SIZE, HEAD + (p + k) * PAGE_SIZE), slots[p]! * PAGE_SIZE);
        p += k;
      }
      this.pages += count;
      return 0;
    }
    // REF: the held pages, in order, into the image.
    if (frame.length !== HEAD) this.bad('a page reference of the wrong length');
    this.imageStarted = true;
    const idx = this.index.get(pid);
    const buf = Buffer.allocUnsafe(Math.min(count, 256) * PAGE_SIZE);
    for (let p = 0; p < count;) {
      // A run of consecutive slots is one read.
      const slot = idx?.get(first + p);
      if (slot === undefined) this.bad(`a reference to page 0x${((BigInt(first + p)) * BigInt(PAGE_SIZE)).toString(16)} of pid ${pid}, which it never sent`);
      let k = 1;
      while (p + k < count && k < 256 && idx!.get(first + p + k) === slot + k) k++;
      const got = readSync(this.fd, buf, 0, k * PAGE_SIZE, slot * PAGE_SIZE);
      if (got !== k * PAGE_SIZE) throw new FerryError('EIO', `short read of the pre-copy store (${got} of ${k * PAGE_SIZE} bytes)`);
      write(buf.subarray(0, k * PAGE_SIZE));
      p += k;
    }
    this.refBytes += count * PAGE_SIZE;
    return count * PAGE_SIZE;
  }
}

function writeAll(fd: number, b: Buffer, pos: number): void {
  for (let off = 0; off < b.length;) {
    const n = writeSync(fd, b, off, b.length - off, pos + off);
    if (n <= 0) throw new FerryError('EIO', `cannot write the pre-copy store: ${describeCause(new Error('short write'))}`);
    off += n;
  }
}
