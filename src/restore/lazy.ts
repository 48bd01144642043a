/**
 * Lazy pages (docs/migration.md, "Lazy pages"): a restore that lets the tree go before the
 * anonymous private memory of its processes is written, and then serves that memory through
 * userfaultfd(2) — each page on its first touch, the rest in the background — from the
 * image, every chunk verified against the manifest's sha256 before one byte of it is copied in.
 *
 * Mechanism (Documentation/admin-guide/mm/userfaultfd.rst):
 * - Which areas: private anonymous ones with stored pages that are not locked, not
 *   PROT_NONE, not hugetlb, and not inherited copy-on-write across a fork of the restore
 *   (restore/cow.ts: a child forked from a parent whose pages are not there yet would not get
 *   them). Every other area is written as restore always does (mapAreas).
 * - In each process, one injected batch while its stub is still root (a userfaultfd that
 *   handles kernel-mode faults too needs CAP_SYS_PTRACE): `userfaultfd(O_CLOEXEC |
 *   O_NONBLOCK)`, pidfd_getfd(2) into ferry, `close` in the process: the workload never sees
 *   the descriptor. From outside: UFFDIO_API with the non-cooperative events (fork, mremap,
 *   munmap, madvise), and, once restore has written the last byte it writes into the process,
 *   UFFDIO_REGISTER (MISSING) of each lazy area. A page present by then (none is expected) is
 *   written from the image at once.
 * - Serving: ferry's event loop polls each descriptor (native uffdWatch); a fault is served
 *   by the whole verified chunk its page is in (UFFDIO_COPY, which wakes the faulting
 *   threads); a fault on a page the image does not store gets the zero page, as it would
 *   have had. The background fill serves one chunk per turn of the event loop. A page is
 *   served once: the kernel refuses a copy onto a present page (EEXIST), which only skips it.
 * - The workload's own changes: madvise(MADV_DONTNEED)/munmap of a range (REMOVE, UNMAP)
 *   drop its pages from what is still to serve (the workload expects zeros, or nothing,
 *   there now); mremap (REMAP) serves the moved pages at their new place; fork (FORK) gets
 *   the child every page not yet served, copied into its own userfaultfd, which is then
 *   closed. Each such event holds the process until ferry has read it.
 * - Done when every stored page is in: the descriptors are closed, which unregisters every
 *   area (userfaultfd_release()); from then on the memory is ordinary.
 *
 * Never a corrupt workload. A chunk that fails verification, or cannot be read, kills the
 * tree (SIGKILL, waited for) before the descriptors are closed: a descriptor closed while a
 * page is missing would let the faulting thread go on with a zero page. If ferry dies, its
 * descriptors close with it — so a watchdog (native/helpers/watchdog.c, `kill` mode) holds a
 * copy of every one: it keeps the faulting threads waiting, kills the tree, and waits until
 * it is dead before its own copies close.
 *
 * Not covered: a fault on the new place of an area that another thread of the process moved
 * with mremap(2), in the instant before ferry reads the REMAP event (the kernel queues faults
 * ahead of events), is served as a zero page; a child forked during the fill is filled at
 * once, but is not in the watchdog's list if ferry dies during that copy.
 */
import { closeSync, openSync, readdirSync, readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import { PAGE_SIZE, SYS } from '../arch/x86-64.js';
import { FerryError, describeCause, errnoCode } from '../errors.js';
import { faultPoint } from '../fault.js';
import { ChunkSource } from '../image/chunks.js';
import { isChunked } from '../image/manifest.js';
import type { Image } from '../image/reader.js';
import { big, pagesEntry, type TaskRecord, type VmaRecord } from '../image/records.js';
import { isAlive } from '../proc/read.js';
import { nextScanStart, PAGE_IS_PRESENT } from '../proc/pagemap.js';
import { native, type UffdWatchHandle } from '../native/binding.js';
import { injectedError, type Tracee } from '../task/tracee.js';
import type { Watchdog } from '../watchdog.js';

const O_NONBLOCK = 0o4000, O_CLOEXEC = 0o2000000;
const UFFDIO_REGISTER_MODE_MISSING = 1;
/** UFFD_FEATURE_EVENT_FORK, _REMAP, _REMOVE, _UNMAP (include/uapi/linux/userfaultfd.h). */
const UFFD_EVENTS = (1n << 1n) | (1n << 2n) | (1n << 3n) | (1n << 6n);
const EVENT_PAGEFAULT = 0x12n, EVENT_FORK = 0x13n, EVENT_REMAP = 0x14n, EVENT_REMOVE = 0x15n, EVENT_UNMAP = 0x16n;
/** Regions one PAGEMAP_SCAN call of fillPresent returns at most (24 bytes each). */
const PRESENT_REGIONS = 4096;
const PAGE = BigInt(PAGE_SIZE);
/** sigaltstack(2) SS_DISABLE. */
const SS_DISABLE = 2;
/** A stack area this close to a thread's stack pointer is written up front (a frame may reach into it). */
const RED_ZONE = 64n * 1024n;

/** What a lazy restore did, for the records. */
export interface LazyStats {
  /** Pages copied in after the let-go (faults and background). */
  pages: number;
  /** Faults served (a fault brings its whole chunk). */
  faults: number;
  /** From the let-go to every page in, milliseconds. */
  fillMs: number;
}

/** The areas of `task` that a lazy restore leaves unwritten; `eager`: none (it forks children copy-on-write, or is one). */
export function lazyAreas(task: TaskRecord, eager: boolean): VmaRecord[] {
  if (eager) return [];
  // Not the areas of the threads' stacks and alternate signal stacks: the kernel writes a
  // signal frame there as a thread is let go (a fault of the kernel's, which only SIGKILL
  // interrupts, while ferry's event loop may still be in the let-go).
  const stacks: bigint[] = [];
  for (const t of task.threads) {
    stacks.push(big(t.regs.rsp));
    if ((t.sigaltstack.flags & SS_DISABLE) === 0 && big(t.sigaltstack.size) > 0n) {
      stacks.push(big(t.sigaltstack.sp), big(t.sigaltstack.sp) + big(t.sigaltstack.size) - 1n);
    }
  }
  const onStack = (v: VmaRecord): boolean => stacks.some((sp) => sp >= big(v.start) - RED_ZONE && sp < big(v.end) + RED_ZONE);
  return task.vmas.filter((v) => v.kind === 'anon' && !v.shared && v.shmem === undefined && v.sysv === undefined && !onStack(v)
    && v.runs.length > 0 && v.prot !== 0 && (v.cow?.length ?? 0) === 0
    // Not wipe-on-fork (wf) nor don't-copy (dc) areas: a child forked during the fill must get
    // zeros there, or no area at all, not the parent's pages.
    && !v.vmflags.some((f) => f === 'lo' || f === 'lf' || f === 'ht' || f === 'wf' || f === 'dc'));
}

/** Stored pages still to serve: `pages` pages at `addr`, at `src` in the pages entry, inside one chunk. */
interface Segment { addr: bigint; src: number; pages: number; chunk: number; done: boolean }

/** One process served: its userfaultfd (ferry's copy), its verified pages, what is left. (Exported for its unit test.) */
export class LazyProcess {
  /** Sorted by address, split at chunk boundaries. */
  segments: Segment[] = [];
  byChunk = new Map<number, Segment[]>();
  left = 0;
  watch: UffdWatchHandle | undefined;
  gone = false;

  constructor(readonly pid: number, readonly hostPid: number, readonly uffd: number, readonly areas: readonly VmaRecord[],
    readonly source: ChunkSource, chunkSize: number) {
    for (const v of areas) {
      let src = v.pagesOffset;
      for (const [first, count] of v.runs) {
        let addr = big(v.start) + BigInt(first) * PAGE;
        let left = count;
        while (left > 0) {
          const chunk = Math.floor(src / chunkSize);
          const pages = Math.min(left, ((chunk + 1) * chunkSize - src) / PAGE_SIZE);
          const s: Segment = { addr, src, pages, chunk, done: false };
          this.segments.push(s);
          const list = this.byChunk.get(chunk);
          if (list) list.push(s);
          else this.byChunk.set(chunk, [s]);
          this.left += pages;
          addr += BigInt(pages) * PAGE;
          src += pages * PAGE_SIZE;
          left -= pages;
        }
      }
    }
    this.segments.sort((a, b) => (a.addr < b.addr ? -1 : a.addr > b.addr ? 1 : 0));
  }

  /** The segment still to serve that holds `addr`, if any. */
  find(addr: bigint): Segment | undefined {
    let lo = 0, hi = this.segments.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const s = this.segments[mid]!;
      if (addr < s.addr) hi = mid - 1;
      else if (addr >= s.addr + BigInt(s.pages) * PAGE) lo = mid + 1;
      else return s.done ? undefined : s;
    }
    return undefined;
  }

  /** Splits the segments still to serve at `start` and `end` and returns those inside. */
  cut(start: bigint, end: bigint): Segment[] {
    const inside: Segment[] = [];
    const out: Segment[] = [];
    for (const s of this.segments) {
      const sEnd = s.addr + BigInt(s.pages) * PAGE;
      if (s.done || sEnd <= start || s.addr >= end) {
        out.push(s);
        continue;
      }
      const from = s.addr < start ? start : s.addr;
      const to = sEnd > end ? end : sEnd;
      const piece = (a: bigint, b: bigint): Segment => {
        const p: Segment = { addr: a, src: s.src + Number(a - s.addr), pages: Number((b - a) / PAGE), chunk: s.chunk, done: false };
        // Its chunk may have been served already, this segment left to a retry (EAGAIN: the mm
        // was changing, as this event says): its pieces are the chunk's to serve again.
        let list = this.byChunk.get(s.chunk);
        if (list === undefined) this.byChunk.set(s.chunk, (list = []));
        list.push(p);
        return p;
      };
      s.done = true; // replaced by its pieces
      if (s.addr < from) out.push(piece(s.addr, from));
      const mid = piece(from, to);
      out.push(mid);
      inside.push(mid);
      if (to < sEnd) out.push(piece(to, sEnd));
    }
    this.segments = out;
    return inside;
  }
}

/** Options of LazyPages. */
export interface LazyPagesOptions {
  image: Image;
  /** The image as the user named it, for messages. */
  label: string;
  logger: Logger;
}

/**
 * The lazy pages of one restore: planned while the tree is made, armed before the let-go,
 * served after it. Its owner (restore) closes it on every way out before the let-go; after
 * it, `done` settles once every page is in, or with the error that killed the tree.
 */
export class LazyPages {
  private readonly procs: LazyProcess[] = [];
  private readonly planned = new Map<number, readonly VmaRecord[]>();
  private readonly uffds = new Map<number, number>();
  private faults = 0;
  private served = 0;
  /** Copies the kernel refused with EAGAIN (an event to read first), run once events are read. */
  private readonly pending: Array<() => void> = [];
  private startedAt = 0;
  private finished = false;
  private watchdog: Watchdog | undefined;
  private resolveDone: (s: LazyStats) => void = () => {};
  private rejectDone: (e: unknown) => void = () => {};
  /** Settles once every page is in (or the tree was killed: the error says why). */
  readonly done: Promise<LazyStats>;

  constructor(private readonly o: LazyPagesOptions) {
    this.done = new Promise((resolve, reject) => {
      this.resolveDone = resolve;
      this.rejectDone = reject;
    });
    this.done.catch(() => {}); // the owner awaits it; a failure before the let-go is restore's
  }

  /** Records which areas of `task` are left unwritten; mapAreas skips them. */
  plan(task: TaskRecord, eager: boolean): ReadonlySet<VmaRecord> {
    const areas = lazyAreas(task, eager);
    if (areas.length > 0) this.planned.set(task.pid, areas);
    return new Set(areas);
  }

  /** Whether any area of the tree was left unwritten. */
  get any(): boolean {
    return this.planned.size > 0;
  }

  /** Every userfaultfd made (ferry's copies), for the watchdog to hold. */
  get descriptors(): number[] {
    return [...this.uffds.values()];
  }

  /**
   * Makes the process's userfaultfd inside it (its stub, still root) and takes it out; the
   * process closes its own at once. UFFDIO_API asks for the events the server follows.
   */
  makeUffd(t: Tracee, pid: number): void {
    if (!this.planned.has(pid)) return;
    const n = native();
    const pidfd = n.pidfdOpen(t.pid);
    try {
      const opts: { takeFdAt: number; takeFdPidfd: number; takenFd?: number } = { takeFdAt: 1, takeFdPidfd: pidfd };
      const results = t.trySyscalls([[SYS.userfaultfd, O_CLOEXEC | O_NONBLOCK], [SYS.close, 0]], opts);
      const fd = opts.takenFd ?? -1;
      if (fd >= 0) this.uffds.set(pid, fd);
      if (results[0]! < 0n) throw injectedError(SYS.userfaultfd, Number(-results[0]!), pid);
      if (fd < 0) throw new FerryError('ELAZY', `cannot take the userfaultfd of restored pid ${pid} (pidfd_getfd: ${fd})`, { pid });
      const got = n.uffdApi(fd, UFFD_EVENTS);
      if ((got & UFFD_EVENTS) !== UFFD_EVENTS) throw new FerryError('ELAZY', `this kernel's userfaultfd lacks the events lazy pages follow (fork, mremap, munmap, madvise)`, { pid });
    } catch (err) {
      if (err instanceof FerryError) throw err;
      throw new FerryError('ELAZY', `lazy pages: cannot make a userfaultfd in restored pid ${pid}: ${describeCause(err)}`, { cause: err, pid });
    } finally {
      closeSync(pidfd);
    }
  }

  /**
   * Registers every lazy area (MISSING), once restore has written all it writes into the
   * processes; a stored page already present is written from the image now. `tracee(pid)`
   * is the stub of each process, `hostPid(pid)` its pid on the host.
   */
  register(tracee: (pid: number) => Tracee, hostPid: (pid: number) => number): void {
    const n = native();
    const { image } = this.o;
    for (const [pid, areas] of this.planned) {
      const fd = this.uffds.get(pid)!;
      const name = pagesEntry(pid);
      const entry = image.manifest.entries.find((e) => e.name === name);
      const at = image.locate(name);
      const chunkSize = entry !== undefined && isChunked(entry) ? entry.chunkSize : 4 << 20;
      const source = new ChunkSource({ fd: at.fd, offset: at.offset, size: at.size, chunkSize,
        digests: entry !== undefined && isChunked(entry) ? entry.chunks : undefined,
        paged: entry !== undefined && isChunked(entry) && entry.pageDigests === true, read: at.read,
        // A migration's page store holds the digests of its pages: a fault's chunk hashes only the others.
        pieces: at.pieces, intact: at.intact }, undefined, this.o.label, name, { pid });
      const p = new LazyProcess(pid, hostPid(pid), fd, areas, source, chunkSize);
      for (const v of areas) {
        try {
          n.uffdRegister(fd, big(v.start), big(v.end) - big(v.start), UFFDIO_REGISTER_MODE_MISSING);
        } catch (err) {
          throw new FerryError('ELAZY', `lazy pages: cannot register the area ${v.start}-${v.end} of restored pid ${pid} with userfaultfd: ${describeCause(err)}`, { cause: err, pid });
        }
      }
      this.fillPresent(p, tracee(pid));
      this.procs.push(p);
    }
  }

  /** Writes the stored pages of `p` that are present already (populated before the registration). */
  private fillPresent(p: LazyProcess, t: Tracee): void {
    const pagemap = openSync(`/proc/${p.hostPid}/pagemap`, 'r');
    try {
      for (const v of p.areas) {
        for (let at = big(v.start), end = big(v.end); at < end;) {
          const r = native().pagemapScan(pagemap, at, end, 0, PAGE_IS_PRESENT, PAGE_IS_PRESENT, PRESENT_REGIONS);
          for (let i = 0; i < r.regions.length; i += 3) {
            for (const s of p.cut(r.regions[i]!, r.regions[i + 1]!)) {
              const buf = p.source.view(s.src, s.pages * PAGE_SIZE);
              t.writeMem(s.addr, buf, 0, buf.length);
              s.done = true;
              p.left -= s.pages;
            }
          }
          const next = nextScanStart(r, at, end, PRESENT_REGIONS);
          if (next <= at) break;
          at = next;
        }
      }
    } finally {
      closeSync(pagemap);
    }
  }

  /** The tree is being let go: serve its faults, fill the rest in the background. */
  start(): void {
    this.startedAt = performance.now();
    const n = native();
    for (const p of this.procs) p.watch = n.uffdWatch(p.uffd, () => this.guard(() => this.onReadable(p)));
    this.procs.filter((p) => p.left === 0).forEach((p) => this.drop(p));
    // A test pauses here to hit ferry while pages are still missing (fault.ts).
    faultPoint('lazy').then(() => setImmediate(() => this.fillNext()), (err: unknown) => this.fail(err));
  }

  /**
   * The watchdog that holds the userfaultfds, handed over once the let-go is done (it may be
   * the let-go's own, which must stay armed until then): disarmed when every page is in, or
   * at once if that happened already.
   */
  guardedBy(watchdog: Watchdog | undefined): void {
    if (this.finished) watchdog?.disarm();
    else this.watchdog = watchdog;
  }

  /** Runs `f`; a failure kills the tree. */
  private guard(f: () => void): void {
    if (this.finished) return;
    try {
      f();
    } catch (err) {
      this.fail(err);
    }
  }

  private onReadable(p: LazyProcess): void {
    if (p.gone) return;
    const n = native();
    const events = n.uffdReadEvents(p.uffd);
    for (let i = 0; i < events.length; i += 4) {
      const [ev, a, b, c] = [events[i]!, events[i + 1]!, events[i + 2]!, events[i + 3]!];
      // A fork's child has a userfaultfd in ferry's table from the read on: it is filled even
      // when its parent went meanwhile (a daemon forking, then exiting).
      if (ev === EVENT_FORK) this.fillChild(p, Number(a));
      else if (p.gone) continue;
      else if (ev === EVENT_PAGEFAULT) this.fault(p, b & ~(PAGE - 1n));
      else if (ev === EVENT_REMOVE || ev === EVENT_UNMAP) {
        for (const s of p.cut(a, b)) this.forget(p, s);
      } else if (ev === EVENT_REMAP) {
        for (const s of p.cut(a, a + c)) this.copy(p, s, s.addr - a + b, p.uffd);
      }
    }
    // The events are read: what the kernel refused meanwhile (EAGAIN) can go now.
    this.retryPending();
    if (!p.gone && p.left === 0) this.drop(p);
    this.maybeDone();
  }

  /** A fault at page `addr`: its chunk, or the zero page where the image stores nothing. */
  private fault(p: LazyProcess, addr: bigint): void {
    this.faults++;
    const s = p.find(addr);
    if (s !== undefined) return this.serveChunk(p, s.chunk);
    this.zeroPage(p, addr);
  }

  /** The zero page at `addr` (the image stores nothing there); again later if the mm is changing. */
  private zeroPage(p: LazyProcess, addr: bigint): void {
    if (p.gone) return;
    let r;
    try {
      r = native().uffdZeropage(p.uffd, addr, PAGE);
    } catch (err) {
      const code = errnoCode(err);
      if (code === 'ESRCH') return this.processGone(p);
      if (code === 'ENOENT') return; // no longer a registered area (unmapped, moved): its event says so
      throw err;
    }
    if (r === -1) this.pending.push(() => this.zeroPage(p, addr));
  }

  /** Copies every page of chunk `c` of `p` still to serve. */
  private serveChunk(p: LazyProcess, c: number): void {
    const list = p.byChunk.get(c);
    if (!list) return;
    for (const s of list) if (!s.done) this.copy(p, s, s.addr, p.uffd);
    p.byChunk.delete(c);
  }

  /**
   * Copies segment `s` (verified: ChunkSource checks its chunk's sha256) to `dst` through `fd`;
   * when the mm is changing (an event to read first), again after the events are read.
   */
  private copy(p: LazyProcess, s: Segment, dst: bigint, fd: number): void {
    if (p.gone || s.done) return;
    const buf = p.source.view(s.src, s.pages * PAGE_SIZE);
    const r = this.copyPages(fd, dst, buf);
    if (r === 'again') {
      this.pending.push(() => this.copy(p, s, dst, fd));
      return;
    }
    s.done = true;
    p.left -= s.pages;
    if (r === 'gone') return this.processGone(p);
    this.served += s.pages;
  }

  /** Runs what the kernel refused with EAGAIN, now that the events are read. */
  private retryPending(): void {
    for (const again of this.pending.splice(0)) again();
  }

  /**
   * UFFDIO_COPY of `buf` to `dst`, skipping pages already there: 'done'; 'again' when the mm is
   * changing (the pages copied so far are skipped next time, as present); 'gone' when it is.
   * A range no longer inside one registered area (ENOENT: split by mprotect, or part of it
   * unmapped or moved, whose event comes) goes page by page, skipping the pages that are not
   * there any more. Any other error is thrown: the tree is killed, never left on a zero page.
   */
  private copyPages(fd: number, dst: bigint, buf: Buffer): 'done' | 'again' | 'gone' {
    const n = native();
    for (let off = 0; off < buf.length;) {
      let r;
      const whole = buf.length - off > PAGE_SIZE ? buf.subarray(off) : buf.subarray(off, off + PAGE_SIZE);
      try {
        r = n.uffdCopy(fd, dst + BigInt(off), whole);
      } catch (err) {
        const code = errnoCode(err);
        if (code === 'ESRCH') return 'gone';
        if (code !== 'ENOENT') throw err;
        // Page by page from here; a page in no registered area is skipped.
        try {
          r = n.uffdCopy(fd, dst + BigInt(off), buf.subarray(off, off + PAGE_SIZE));
        } catch (err2) {
          const code2 = errnoCode(err2);
          if (code2 === 'ESRCH') return 'gone';
          if (code2 !== 'ENOENT') throw err2;
          off += PAGE_SIZE;
          continue;
        }
      }
      if (r.again) return 'again';
      off += r.copied + (r.exists ? PAGE_SIZE : 0);
    }
    return 'done';
  }

  private forget(p: LazyProcess, s: Segment): void {
    if (s.done) return;
    s.done = true;
    p.left -= s.pages;
  }

  /**
   * A child forked during the fill: every page not yet served, into its own userfaultfd, closed
   * then. Its own events are not followed: if it changes its memory meanwhile (EAGAIN), or a
   * page cannot be served, the child and the tree are killed, and only then is its descriptor
   * closed (by ferry's exit), so that it never runs on a zero page.
   */
  private fillChild(p: LazyProcess, fd: number): void {
    let failure: unknown;
    for (const s of p.segments) {
      if (s.done) continue;
      const buf = p.source.view(s.src, s.pages * PAGE_SIZE);
      let r: 'done' | 'again' | 'gone';
      try {
        r = this.copyPages(fd, s.addr, buf);
      } catch (err) {
        failure = err;
        break;
      }
      if (r === 'gone') break; // the child exited
      if (r === 'again') {
        failure = new FerryError('ELAZY', `a child of restored pid ${p.pid} changed its memory while it was being filled`);
        break;
      }
    }
    if (failure === undefined) {
      closeSync(fd);
      return;
    }
    for (const pid of descendants(p.hostPid)) {
      try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    }
    throw failure; // guard() -> fail(): the tree is killed
  }

  /** The process exited (or was killed: ESRCH): nothing more to serve it. */
  private processGone(p: LazyProcess): void {
    this.o.logger.debug({ targetPid: p.pid }, 'lazy pages: the process is gone');
    p.left = 0;
    this.drop(p);
  }

  /** Stops serving `p` and closes its userfaultfd (its areas become ordinary memory). */
  private drop(p: LazyProcess): void {
    if (p.gone) return;
    p.gone = true;
    if (p.watch !== undefined) native().uffdUnwatch(p.watch);
    p.watch = undefined;
    const fd = this.uffds.get(p.pid);
    this.uffds.delete(p.pid);
    if (fd !== undefined) closeSync(fd);
  }

  /** One chunk of the background fill per turn of the event loop. */
  private fillNext(): void {
    this.guard(() => {
      this.retryPending();
      const p = this.procs.find((x) => !x.gone && x.left > 0);
      if (p === undefined) return this.maybeDone();
      const c = p.byChunk.keys().next().value;
      if (c === undefined) p.left = 0; // nothing listed is left to serve
      else this.serveChunk(p, c);
      if (p.left === 0) this.drop(p);
      setImmediate(() => this.fillNext());
    });
  }

  private maybeDone(): void {
    if (this.finished || this.procs.some((p) => !p.gone)) return;
    this.finished = true;
    this.watchdog?.disarm();
    void this.o.image.close();
    this.resolveDone({ pages: this.served, faults: this.faults, fillMs: performance.now() - this.startedAt });
  }

  /** A page that cannot be had: the tree is killed, and only then are the descriptors closed. */
  private fail(err: unknown): void {
    if (this.finished) return;
    this.finished = true;
    const pids = this.procs.map((p) => p.hostPid);
    for (const pid of pids) {
      try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    }
    void (async () => {
      // The descriptors stay open until every process is dead (a killed process in D state
      // takes a while): closing them earlier would let it run on zero pages.
      for (const end = performance.now() + 60_000; performance.now() < end && pids.some(isAlive);) await new Promise((r) => setTimeout(r, 5));
      if (!pids.some(isAlive)) this.close();
      void this.o.image.close();
      const why = err instanceof FerryError ? err.message : describeCause(err);
      this.rejectDone(new FerryError(err instanceof FerryError ? err.code : 'ELAZY',
        `a page of restored pid ${this.procs[0]?.pid ?? '?'}'s tree could not be served (${why}), so the restored tree was killed`,
        { cause: err, ...(this.procs[0] !== undefined ? { pid: this.procs[0].pid } : {}) }));
    })();
  }

  /** Stops serving and closes every descriptor (idempotent): restore's undo before the let-go, or after a tree that died at once. */
  close(): void {
    this.finished = true;
    for (const p of this.procs) this.drop(p);
    for (const fd of this.uffds.values()) closeSync(fd);
    this.uffds.clear();
    this.watchdog?.disarm(); // last: its copies are all that is left open if this throws
  }
}

/** Every descendant of `pid` (children, theirs, …), from /proc's children lists. */
function descendants(pid: number): number[] {
  const out: number[] = [];
  const walk = (at: number): void => {
    let tids: string[];
    try {
      tids = readdirSync(`/proc/${at}/task`);
    } catch {
      return;
    }
    for (const tid of tids) {
      let kids: number[];
      try {
        kids = readFileSync(`/proc/${at}/task/${tid}/children`, 'utf8').split(' ').filter(Boolean).map(Number);
      } catch {
        continue;
      }
      for (const k of kids) if (!out.includes(k)) { out.push(k); walk(k); }
    }
  };
  walk(pid);
  return out;
}

