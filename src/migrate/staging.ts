/**
 * Staged memory: the target's copy of the root's memory, placed while the rounds arrive
 * (docs/migration.md, "Staged memory").
 *
 * Without lazy pages, restore wrote every page into the new process while the tree was
 * stopped: at 1 GiB some 0.4-1.3 s of the downtime on this machine, most of it the kernel
 * giving the new process its pages, which no copy avoids. Here a stub of ferry's (native
 * spawnStub, traced with PTRACE_O_EXITKILL: it dies with ferry) maps the root's private
 * anonymous areas where the root has them, as the sender says they are before each round
 * (the `layout` message), and each round's pages of the root are written into it as they are
 * written into the store (/proc/PID/mem, on libuv's pool, in the same job). At restore, the
 * root is forked from that stub (restore/tree.ts forkRoot: clone3 with its pid and
 * CLONE_PARENT), so it inherits those pages copy-on-write (a copy of page tables: some 40 ms a
 * GiB here), the stub is killed at once so they become the root's alone, and the root keeps
 * each staged area that the image maps exactly so (restore/address-space.ts mapAreas with a
 * `StagedRoot`): it writes only the pages the frozen image sent again, drops the staged pages
 * the image does not have, and verifies the others by the digests the store took from the
 * same bytes (image/chunks.ts `placed`), without reading them.
 *
 * Where the root's pid is free when the rounds begin (another node, or a receiver in a pid
 * namespace of its own), the stub is spawned with that pid and becomes the root itself (fork()
 * adopts it): no fork, no copy of page tables, no fault on the first write of each page after
 * the start. On the source's own node and pid namespace the source holds the pid: forked.
 *
 * Nothing here is trusted more than the image: an area is kept only where the image maps a
 * private anonymous area of the same bounds, and a page is taken as in place only where the
 * image names the store's copy of that page of that process (a REF) at that address, and its
 * chunk verifies. A staging write that fails (the stub gone, memory short) only turns staging
 * off: restore writes every page as before.
 */
import { MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_PRIVATE, PAGE_SIZE, PROT_READ, PROT_WRITE, SYS } from '../arch/x86-64.js';
import { errnoCode } from '../errors.js';
import { big, type TaskRecord, type VmaRecord } from '../image/records.js';
import type { Logger } from 'pino';
import { native } from '../native/binding.js';
import { parseMaps } from '../proc/maps.js';
import { parseStat } from '../proc/stat.js';
import { readProcText } from '../proc/read.js';
import type { StagedRoot } from '../restore/address-space.js';
import { forkRoot, killChild, prepareStub } from '../restore/tree.js';
import { Tracee } from '../task/tracee.js';
import { MAX_LAYOUT_AREAS } from './channel.js';

/**
 * The most memory staging maps in all (address space, charged to the receiver's commit, and a
 * byte of bitmap a page: 16 MiB at most), as much as a page store keeps (page-store.ts).
 */
const MAX_STAGED_BYTES = 64 * 2 ** 30;

/** No digests asked (writeAndDigest's `out`). */
const NO_DIGESTS = new Uint8Array(0);

interface StagedArea {
  /** Pages, from address 0. */
  first: number;
  end: number;
  /** 1 for each page of the area written here since it was mapped. */
  staged: Uint8Array;
  /** Pages with their byte set. */
  count: number;
}

/**
 * The areas a sender names in a `layout`: the private anonymous areas of `pid` that are
 * readable and writable and do not grow down (what staging may hold), as [start, end] pairs
 * flat, in address order. Read from /proc/PID/maps; [] when it is gone.
 */
export function stageableAreas(pid: number): number[] {
  let text: string;
  try {
    text = readProcText(pid, 'maps');
  } catch {
    return [];
  }
  const out: number[] = [];
  for (const v of parseMaps(text)) {
    if (!v.read || !v.write || v.exec || v.shared || v.inode !== 0n || (v.path !== '' && v.path !== '[heap]')) continue;
    if (out.length >= 2 * MAX_LAYOUT_AREAS) break;
    out.push(Number(v.start), Number(v.end));
  }
  return out;
}

/** The receiver's staging stub: see above. */
export class StagedMemory implements StagedRoot {
  private readonly t: Tracee;
  /** The stub's own mappings (its code, stack, vDSO): no area is staged over them. */
  private readonly own: Array<[number, number]>;
  /** Staged areas, by first page, in address order. */
  private areas: StagedArea[] = [];
  private stagedBytes = 0;
  /** A staging write, mapping or fork failed: nothing is staged nor used any more. */
  private off = false;
  /** The root was forked from it, or it became the root (once). */
  private forked = false;
  /** It became the root (fork() with its own pid): from then on the restore's, never killed here. */
  private adopted = false;
  private closed = false;
  private reaped = false;
  /** Writes on the pool (write()). */
  private inflight = 0;
  /** The stub has the root's pid (spawned with it): the restore takes it as the root. */
  readonly ownsPid: boolean;

  private constructor(readonly pid: number, stubPid: number, private readonly log: Logger) {
    this.ownsPid = stubPid === pid;
    this.t = new Tracee(stubPid, stubPid);
    this.own = parseMaps(readProcText(stubPid, 'maps')).map((v) => [Number(v.start) / PAGE_SIZE, Number(v.end) / PAGE_SIZE]);
  }

  /**
   * A staging stub for the root `pid` (the image's), or undefined (logged) where none can be
   * made: the migration then restores as before.
   */
  static start(pid: number, stubPath: string, log: Logger): StagedMemory | undefined {
    let stub = -1;
    let s: StagedMemory | undefined;
    try {
      // With the root's pid where it is free, so that the stub can become the root; where it is
      // taken (EEXIST: the source's own node and pid namespace), any pid.
      try {
        stub = native().spawnStub(stubPath, [pid]);
      } catch (err) {
        if (errnoCode(err) !== 'EEXIST') log.debug({ err, pid }, 'the staging stub cannot take the root\'s pid: any pid, the root forked from it');
        stub = native().spawnStub(stubPath, []);
      }
      s = new StagedMemory(pid, stub, log);
      prepareStub(s.t);
      return s;
    } catch (err) {
      log.debug({ err }, 'no staged memory: the root\'s pages are written at restore');
      if (s !== undefined) s.reap();
      else if (stub > 0) killChild(stub);
      return undefined;
    }
  }

  /** The root's pid while the stub holds it (ownsPid, not reaped: kept for the restore). */
  get heldPid(): number | undefined {
    return this.ownsPid && !this.reaped ? this.pid : undefined;
  }

  /** Whether it holds anything a restore may use. */
  get usable(): boolean {
    return !this.idle && this.areas.length > 0;
  }

  /**
   * Whether staging is over: turned off, closed, or the stub became the root (nothing of
   * staging's may touch it again).
   */
  private get idle(): boolean {
    return this.off || this.closed || this.adopted;
  }

  /**
   * Makes the staged areas those of `flat` (start, end pairs, checked by the channel: page
   * aligned, in order, none over another, user addresses, at most MAX_LAYOUT_AREAS): an area of the same
   * bounds stays as it is; the others go (their pages with them: restore writes those from
   * the store) and the new ones are mapped, save those over the stub's own mappings or past
   * the bound. Run in order with the rounds' writes (page-store.ts).
   */
  layout(flat: readonly number[]): void {
    if (this.idle) return;
    const want: Array<[number, number]> = [];
    for (let i = 0; i + 1 < flat.length; i += 2) want.push([flat[i]! / PAGE_SIZE, flat[i + 1]! / PAGE_SIZE]);
    const same = (a: StagedArea, w: [number, number]): boolean => a.first === w[0] && a.end === w[1];
    const keep = this.areas.filter((a) => want.some((w) => same(a, w)));
    const gone = this.areas.filter((a) => !keep.includes(a));
    const fresh = want.filter((w) => !keep.some((a) => same(a, w)) && !this.own.some(([s, e]) => s < w[1] && w[0] < e));
    try {
      if (gone.length > 0) {
        this.t.syscalls(gone.map((a) => [SYS.munmap, BigInt(a.first * PAGE_SIZE), BigInt((a.end - a.first) * PAGE_SIZE)] as const));
        for (const a of gone) this.stagedBytes -= (a.end - a.first) * PAGE_SIZE;
      }
      const added: StagedArea[] = [];
      for (const [first, end] of fresh) {
        const bytes = (end - first) * PAGE_SIZE;
        if (this.stagedBytes + bytes > MAX_STAGED_BYTES) continue;
        const at = BigInt(first * PAGE_SIZE);
        const r = this.t.trySyscall(SYS.mmap, at, BigInt(bytes), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
        if (r !== at) {
          if (r > 0n) this.t.trySyscall(SYS.munmap, r, BigInt(bytes));
          continue; // not staged: restore writes it
        }
        this.stagedBytes += bytes;
        added.push({ first, end, staged: new Uint8Array(end - first), count: 0 });
      }
      this.areas = [...keep, ...added].sort((a, b) => a.first - b.first);
    } catch (err) {
      this.fail(err);
    }
  }

  /**
   * Where a round's `count` pages of `pid` from page `first` go in the stub: [offset in the
   * frame's data, length, address] triples (the /proc/PID/mem positions), each page marked
   * staged; [] when none is in a staged area.
   */
  writes(pid: number, first: number, count: number): number[] {
    if (pid !== this.pid || this.idle) return [];
    const out: number[] = [];
    for (const a of this.overlapping(first, first + count)) {
      const s = Math.max(first, a.first), e = Math.min(first + count, a.end);
      out.push((s - first) * PAGE_SIZE, (e - s) * PAGE_SIZE, s * PAGE_SIZE);
      for (let p = s; p < e; p++) {
        if (a.staged[p - a.first] === 0) {
          a.staged[p - a.first] = 1;
          a.count++;
        }
      }
    }
    return out;
  }

  /**
   * Writes the pieces of `data` that `writes` (from writes()) names into the stub, on libuv's
   * pool; a failure turns staging off. Its descriptor stays open until the last such write
   * is done, even past close() (its number could be another file's by then).
   */
  async write(data: Buffer, writes: readonly number[]): Promise<void> {
    if (writes.length === 0 || this.idle) return;
    this.inflight++;
    try {
      await native().writeAndDigest(this.t.mem(), data, new Float64Array(writes), NO_DIGESTS);
    } catch (err) {
      this.fail(err);
    } finally {
      if (--this.inflight === 0 && this.closed) this.t.close();
    }
  }

  /**
   * Of `count` pages of `pid` from `first`, the runs staged now ([first page, count]), for a
   * REF of the frozen image: those pages are in place where the root will be forked.
   */
  stagedRuns(pid: number, first: number, count: number): Array<[number, number]> {
    if (pid !== this.pid || this.idle) return [];
    const out: Array<[number, number]> = [];
    for (const a of this.overlapping(first, first + count)) {
      const s = Math.max(first, a.first), e = Math.min(first + count, a.end);
      for (let p = s; p < e;) {
        if (a.staged[p - a.first] === 0) { p++; continue; }
        let q = p + 1;
        while (q < e && a.staged[q - a.first] === 1) q++;
        out.push([p, q - p]);
        p = q;
      }
    }
    return out;
  }

  /** Turns staging off for good (a failed write or mapping): restore writes every page. */
  fail(err: unknown): void {
    if (this.off) return;
    this.off = true;
    this.log.debug({ err }, 'staged memory turned off: the root\'s pages are written at restore');
  }

  // StagedRoot (restore/address-space.ts)

  keep(task: TaskRecord): { keep: VmaRecord[]; staged: VmaRecord[] } | undefined {
    if (task.pid !== this.pid || !this.usable) return undefined;
    const keep: VmaRecord[] = [];
    const staged: VmaRecord[] = [];
    for (const v of task.vmas) {
      if (!keepable(v) || big(v.start) % BigInt(PAGE_SIZE) !== 0n || big(v.end) % BigInt(PAGE_SIZE) !== 0n) continue;
      const first = Number(big(v.start) / BigInt(PAGE_SIZE)), end = Number(big(v.end) / BigInt(PAGE_SIZE));
      const a = this.areas.find((x) => x.first === first && x.end === end);
      if (a === undefined || a.count === 0) continue;
      keep.push(v);
      staged.push({ ...v, runs: bitRuns(a.staged), cow: [] });
    }
    return keep.length > 0 ? { keep, staged } : undefined;
  }

  fork(pid: number): Tracee | undefined {
    if (this.forked || this.closed) return undefined;
    this.forked = true;
    if (this.ownsPid) {
      // The stub is the root: it holds the staged pages already, no fork. Only while it is
      // still there, stopped as staging left it (the OOM killer may have taken it).
      const why = pid !== this.pid ? `it holds pid ${this.pid}, not the root's ${pid}` : this.inflight > 0 ? 'a staging write is in flight'
        : !stoppedTracee(this.t.pid) ? 'it is gone' : undefined;
      if (why === undefined) {
        this.adopted = true;
        return this.t;
      }
      this.fail(new Error(`the staging stub ${this.t.pid} cannot become the root: ${why}`));
      this.reap(); // its pid free for the root spawned instead
      return undefined;
    }
    // The stub goes once the root's memory is rebuilt (restore.ts calls close()): the pages
    // are then the root's alone (its writes take them over, no copy). Not at once: its exit
    // would free them while the root unmaps and advises its areas, and both take the same
    // locks (the anon_vma's), which made the rebuild some 20 ms slower at 1 GiB.
    try {
      return forkRoot(this.t, pid);
    } catch (err) {
      // The stub gone (the OOM killer's pick: it holds the root's memory), a fork refused
      // (ENOMEM under strict overcommit: the fork charges the staged areas again): the root is
      // spawned and its pages written, as without staging.
      this.fail(err);
      this.close();
      return undefined;
    }
  }

  /**
   * Kills the stub and closes its memory, without waiting for it to exit (freeing the memory
   * it staged takes some 17 ms a GiB, which a restore does not wait for): idempotent. A stub
   * with the root's pid is reaped too (a root spawned instead needs its pid); one that
   * became the root is the restore's, left as it is.
   */
  close(): void {
    if (this.closed || this.adopted) return;
    if (this.ownsPid) {
      this.reap();
      return;
    }
    this.closed = true;
    if (this.inflight === 0) this.t.close();
    try {
      native().tgkill(this.t.pid, this.t.pid, 9);
    } catch { /* gone already */ }
  }

  /** close(), then waits for the stub to exit and reaps it: once the migration is over. */
  reap(): void {
    if (this.adopted) return;
    if (!this.closed) {
      this.closed = true;
      if (this.inflight === 0) this.t.close();
    }
    if (this.reaped) return;
    this.reaped = true;
    killChild(this.t.pid);
  }

  private overlapping(first: number, end: number): StagedArea[] {
    // Areas are few (a process's private anonymous ones); binary search for the first.
    let lo = 0, hi = this.areas.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.areas[mid]!.end <= first) lo = mid + 1;
      else hi = mid;
    }
    const out: StagedArea[] = [];
    for (let i = lo; i < this.areas.length && this.areas[i]!.first < end; i++) out.push(this.areas[i]!);
    return out;
  }
}

/**
 * Whether restore may keep a staged area for image area `v`: private anonymous memory,
 * readable and writable as staging maps it, not growing down, not locked (mlock2 is its own
 * step), not shared with a parent or children (a tree of one process has none).
 */
function keepable(v: VmaRecord): boolean {
  return v.kind === 'anon' && !v.shared && v.shmem === undefined && v.sysv === undefined && v.aio === undefined
    && (v.name === '' || v.name === '[heap]') && v.prot === (PROT_READ | PROT_WRITE)
    && v.vmflags.includes('ac') && !v.vmflags.some((f) => f === 'gd' || f === 'lo' || f === 'lf')
    && (v.cow?.length ?? 0) === 0 && (v.lent?.length ?? 0) === 0;
}

/** Whether `pid` is a stub of ours stopped under ptrace (state t), as staging leaves it. */
function stoppedTracee(pid: number): boolean {
  try {
    return parseStat(readProcText(pid, 'stat')).state === 't';
  } catch {
    return false;
  }
}

/** Runs of 1s in `bits`, as [first, count]. */
function bitRuns(bits: Uint8Array): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let p = 0; p < bits.length;) {
    const s = bits.indexOf(1, p);
    if (s < 0) break;
    let e = bits.indexOf(0, s);
    if (e < 0) e = bits.length;
    out.push([s, e - s]);
    p = e;
  }
  return out;
}
