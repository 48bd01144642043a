/**
 * The sender's filter of a frozen image under pre-copy (precopy.ts): the image's tar stream
 * in, RAW and REF frames (frames.ts) out.
 */
import { PAGE_SIZE } from '../arch/x86-64.js';
import { FerryError } from '../errors.js';
import { MAX_DATA_BYTES } from './channel.js';
import { HEAD, MAX_REF_PAGES, TAG_RAW, TAG_REF, writeHead } from './frames.js';

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
 *
 * `omitted`: the stream does not carry the held pages at all (a checkpoint given them as
 * heldPages leaves them out: writer.ts omitHeld), so their REFs are made where they would
 * have stood; the checkpoint and this filter take the same held set. Should this filter
 * misread such a stream, the receiver's image fails verification: nothing is restored.
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

  constructor(private readonly send: (frame: Buffer) => boolean, private readonly isHeld: (pid: number, page: number) => boolean,
    private readonly omitted = false,
    /** How many pages from `page` on are held, at most `max` (isHeld page by page if not given). */
    private readonly heldRun: (pid: number, page: number, max: number) => number = (pid, page, max) => {
      let n = 0;
      while (n < max && isHeld(pid, page + n)) n++;
      return n;
    }) {}

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
        // Held pages are not in an `omitted` stream: take one page at a time, then pass them.
        const part = chunk.subarray(off, off + (this.omitted && e.pages ? Math.min(dataLeft, PAGE_SIZE - (e.pos % PAGE_SIZE)) : dataLeft));
        off += part.length;
        this.data(e, part);
        e.pos += part.length;
        if (this.omitted && e.pages) this.skipHeld(e, e.pages);
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
      if (this.omitted) this.lost(`a tar header of size ${size}`);
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
      // Its held pages are not in the stream: without the areas they cannot be put back.
      else if (m && this.omitted) this.lost(`${name} without its task.json`);
    }
    this.entry.name = type === 'x' ? '\0pax' : name;
    if (this.omitted && this.entry.pages) this.skipHeld(this.entry, this.entry.pages);
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
      const addr = this.addressOf(p, page);
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

  /**
   * An `omitted` stream this filter cannot follow: the image would come out wrong on both
   * sides, so the migration fails here, before the kill (the checkpoint's next write fails).
   */
  private lost(what: string): never {
    throw new FerryError('EIMAGE', `the pre-copy filter cannot follow the image (${what}), whose pages the target holds are left out of it: migrate with --no-pre-copy`);
  }

  /** The address of page `page` of a pages entry, or undefined when no area stores it. */
  private addressOf(p: NonNullable<NonNullable<ImageFilter['entry']>['pages']>, page: number): bigint | undefined {
    while (p.seg < p.segs.length && p.segs[p.seg]!.entryPage + p.segs[p.seg]!.count <= page) p.seg++;
    const s = p.segs[p.seg];
    return s && s.entryPage <= page ? s.addr + BigInt((page - s.entryPage) * PAGE_SIZE) : undefined;
  }

  /** At a page boundary of an `omitted` stream: the held pages from here on, as REFs, a run at a time. */
  private skipHeld(e: NonNullable<ImageFilter['entry']>, p: NonNullable<NonNullable<ImageFilter['entry']>['pages']>): void {
    while (e.pos < e.size && e.pos % PAGE_SIZE === 0) {
      const page = e.pos / PAGE_SIZE;
      const addr = this.addressOf(p, page);
      if (addr === undefined) return;
      const s = p.segs[p.seg]!;
      const k = this.heldRun(p.pid, Number(addr / BigInt(PAGE_SIZE)), Math.min(s.entryPage + s.count - page, (e.size - e.pos) / PAGE_SIZE));
      if (k === 0) return;
      this.refRun(p.pid, addr, k);
      e.pos += k * PAGE_SIZE;
    }
  }

  /** REFs for `count` held pages from `addr` (runs of at most MAX_REF_PAGES). */
  private refRun(pid: number, addr: bigint, count: number): void {
    const r = this.ref;
    if (r && r.pid === pid && r.addr + BigInt(r.count * PAGE_SIZE) === addr && r.count + count <= MAX_REF_PAGES) {
      r.count += count;
      this.refPages += count;
      return;
    }
    if (count > MAX_REF_PAGES) {
      this.refRun(pid, addr, MAX_REF_PAGES);
      this.refRun(pid, addr + BigInt(MAX_REF_PAGES * PAGE_SIZE), count - MAX_REF_PAGES);
      return;
    }
    this.flushRef();
    this.flushRaw();
    this.ref = { pid, addr, count };
    this.refPages += count;
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
    // The pieces go into their frames as they are (each frame made once, its tag first): a
    // frozen image's RAW pieces are hundreds, and every copy of them costs page faults.
    const pieces = this.raw;
    let left = this.rawBytes;
    this.raw = [];
    this.rawBytes = 0;
    let i = 0, from = 0; // the next byte: of piece i, at `from`
    while (left > 0) {
      const n = Math.min(left, MAX_DATA_BYTES - 1);
      const frame = Buffer.allocUnsafe(1 + n);
      frame[0] = TAG_RAW;
      for (let at = 1; at < frame.length;) {
        const p = pieces[i]!;
        const k = Math.min(p.length - from, frame.length - at);
        p.copy(frame, at, from, from + k);
        at += k;
        from += k;
        if (from === p.length) {
          i++;
          from = 0;
        }
      }
      left -= n;
      if (!this.send(frame)) this.ok = false;
    }
  }
}

