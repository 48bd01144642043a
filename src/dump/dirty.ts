/**
 * Which pages of a running process tree were written since the last look: the dirty-page
 * tracking of pre-copy migration (docs/migration.md, "Pre-copy"), without soft-dirty.
 *
 * Mechanism (DESIGN.md §7): asynchronous userfaultfd write-protection. For each process a
 * userfaultfd is created inside it by one injected batch while one of its threads is briefly
 * seized: `userfaultfd(O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY)`, then pidfd_getfd(2)
 * copies it into ferry and the batch's next call closes it in the process again
 * (native/inject.cc, takeFdAt): the process never holds it outside that one batch, and the
 * thread is let go at once. From outside, on ferry's copy: UFFDIO_API with
 * UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED, then UFFDIO_REGISTER (mode WP) of each
 * area whose pages a dump stores. A scan is the PAGEMAP_SCAN ioctl on /proc/PID/pagemap with
 * PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC over each registered area, category
 * PAGE_IS_WRITTEN: it returns the pages written since the previous scan (the first: every
 * populated page) and write-protects them again in the same walk.
 *
 * Never harming the workload. With WP_ASYNC a write to a protected page is resolved inside
 * the kernel (the protection dropped, the page marked written): no reader, no blocking, no
 * signal, whatever ferry does. The userfaultfd lives only in ferry; when ferry closes it, or
 * dies, its release unregisters every area and clears the protection bits
 * (userfaultfd_release()), and a bit that were left behind on an area no longer registered
 * is ignored by the fault path. A process with a userfaultfd of its own (a descriptor, or
 * areas registered by one) is refused before it is touched: its own registrations would
 * conflict with ours (EBUSY) and its readers would see faults they did not ask for.
 *
 * What a scan cannot see, and how the caller stays right: an area that appears (mmap, or
 * mremap, which moves an area out of its registration) is not registered yet, so its pages
 * are not reported; each scan first registers the storable areas that are not registered and
 * names them `fresh`, so the caller forgets whatever it held in that range (a new area in
 * the place of an old one) and the scan reports all their populated pages. A page dropped
 * inside a tracked area (MADV_DONTNEED) leaves an empty entry, which the kernel counts as not
 * protected: the next scan reports it written, neither present nor swapped, and protects it
 * again by leaving a marker there (WP_UNPOPULATED). Such pages come out `dropped`: the caller
 * forgets what it held of them (a read since shows zeros, and one after the marker maps the
 * zero page still protected, which no later scan reports written). The final dump's plan
 * skips the markers (pagemap.ts, `markers`): they are no page.
 *
 * Soft-dirty (clear_refs 4, pagemap bit 55) would be the other mechanism; this kernel has
 * neither it nor a way to test it, so it is not used: a kernel without WP_ASYNC and
 * PAGEMAP_SCAN gets `undefined` from startTracking and the caller copies everything each round.
 */
import { closeSync, openSync, readdirSync, readlinkSync } from 'node:fs';
import { DUMP_TRACE_OPTIONS, PAGE_SIZE, SYS } from '../arch/x86-64.js';
import { FerryError, describeCause, errnoCode } from '../errors.js';
import { faultPointSync } from '../fault.js';
import type { Logger } from 'pino';
import { native } from '../native/binding.js';
import { parseMaps, type Vma } from '../proc/maps.js';
import { listTids, ProcessGoneError, readProcText } from '../proc/read.js';
import { parseStat } from '../proc/stat.js';
import { parseSmaps } from '../proc/smaps.js';
import { Session } from '../session.js';
import { injectedError, Tracee } from '../task/tracee.js';
import { syscallGadget } from './task-state.js';

import { nextScanStart, PAGE_IS_FILE, PAGE_IS_PRESENT, PAGE_IS_SWAPPED, PAGE_IS_WRITTEN } from '../proc/pagemap.js';

/** PAGEMAP_SCAN categories (include/uapi/linux/fs.h), defined with the pagemap's bits. */
export { PAGE_IS_FILE, PAGE_IS_PRESENT, PAGE_IS_SWAPPED, PAGE_IS_WPALLOWED, PAGE_IS_WRITTEN } from '../proc/pagemap.js';
const PM_SCAN_WP_MATCHING = 1, PM_SCAN_CHECK_WPASYNC = 2;
const UFFD_FEATURE_WP_UNPOPULATED = 1n << 13n, UFFD_FEATURE_WP_ASYNC = 1n << 15n;
const UFFDIO_REGISTER_MODE_WP = 2;
const UFFD_USER_MODE_ONLY = 1, O_NONBLOCK = 0o4000, O_CLOEXEC = 0o2000000;
/** Regions per PAGEMAP_SCAN call (24 bytes each). */
const SCAN_REGIONS = 4096;
/** VmFlags of an area registered with some userfaultfd: missing, write-protect, minor. */
const UFFD_VMFLAGS = ['um', 'uw', 'ui'];
const SPECIAL = new Set(['[vdso]', '[vvar]', '[vvar_vclock]', '[vsyscall]']);

/** A run of dirty pages: its first address and page count. */
export type PageRun = [addr: bigint, pages: number];

/** One process's answer to a scan. */
export interface ProcessScan {
  pid: number;
  /** Pages written since the previous scan (the first scan: every populated page), storable ones only. */
  dirty: PageRun[];
  /**
   * Pages written since the previous scan that are no longer there (MADV_DONTNEED,
   * MADV_FREE reclaimed, a hole punched): read as zeros now, so anything held of them is stale.
   */
  dropped: PageRun[];
  /** Ranges registered by this scan (new areas): anything held there before is stale. */
  fresh: Array<[start: bigint, end: bigint]>;
  /** Ranges that are storable but cannot be tracked (registration refused): never held. */
  untracked: Array<[start: bigint, end: bigint]>;
  /** False when the process is gone or is no longer the one tracked (exec, pid reuse): forget it whole. */
  same: boolean;
}

/**
 * Whether to track an area: a private one, whose pages a dump stores (memory.ts). Not shared
 * memory: each process's page tables are tracked on their own, so a write through one
 * process's mapping of a shared page leaves another's mapping of it looking unwritten, and
 * restore writes every holder's copy; shared pages therefore always go with the frozen image.
 * Not PROT_NONE areas (reservations, guards): their pages, if any, go with the frozen image too.
 */
function storable(v: Vma, flags: readonly string[]): boolean {
  if (SPECIAL.has(v.path) || flags.includes('io') || flags.includes('pf')) return false;
  if (!v.read && !v.write && !v.exec) return false;
  return !v.shared;
}

/**
 * Whether `v` (a storable area: private) is anonymous memory, no file behind it (maps shows no
 * inode, and a name of the kernel's or none), as memory.ts plans it: none of its pages is a
 * file's, so a scan need not ask PAGE_IS_FILE (scanArea).
 */
function anonymousArea(v: Vma): boolean {
  return !v.shared && v.inode === 0n && (v.path === '' || v.path.startsWith('['));
}

/** Whether a tracked page is one a dump stores (memory.ts: present and anonymous, or swapped). */
function keepRegion(categories: number): boolean {
  if ((categories & PAGE_IS_SWAPPED) !== 0) return true;
  return (categories & PAGE_IS_PRESENT) !== 0 && (categories & PAGE_IS_FILE) === 0;
}

/** start time (field 22 of /proc/PID/stat): with the pid, it names one process for good. */
export function startTime(pid: number): bigint | undefined {
  try {
    const text = readProcText(pid, 'stat');
    const s = parseStat(text);
    return s.state === 'Z' || s.state === 'X' ? undefined : BigInt(text.slice(text.lastIndexOf(')') + 2).split(' ')[19]!);
  } catch {
    return undefined;
  }
}

/**
 * Refuses a process that uses userfaultfd itself, before it is touched: a descriptor of one
 * (anon_inode:[userfaultfd]) or an area registered with one (VmFlags um, uw, ui).
 */
export function refuseOwnUserfaultfd(pid: number, smaps: string): void {
  let fds: string[] = [];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch { /* gone: the caller's next step says so */ }
  for (const fd of fds) {
    let link = '';
    try {
      link = readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch { continue; }
    if (link === 'anon_inode:[userfaultfd]') {
      throw new FerryError('EUNSUPPORTED', `pid ${pid} uses userfaultfd itself (fd ${fd}), which pre-copy's dirty tracking would `
        + 'conflict with: migrate it with --no-pre-copy', { pid, fd: Number(fd) });
    }
  }
  const { vmas, vmflags } = parseSmaps(smaps);
  for (const v of vmas) {
    const f = vmflags.get(v.start) ?? [];
    if (f.some((x) => UFFD_VMFLAGS.includes(x))) {
      throw new FerryError('EUNSUPPORTED', `pid ${pid} has memory registered with a userfaultfd (0x${v.start.toString(16)}-0x${v.end.toString(16)}`
        + `${v.path ? ` ${v.path}` : ''}), which pre-copy's dirty tracking would conflict with: migrate it with --no-pre-copy`, { pid });
    }
  }
}

/** A thread of `pid` that is not a zombie (the leader when it lives). */
function liveThread(pid: number): number | undefined {
  let tids: number[];
  try {
    tids = listTids(pid);
  } catch {
    return undefined;
  }
  for (const tid of [pid, ...tids.filter((t) => t !== pid)]) {
    try {
      const st = parseStat(readProcText(pid, `task/${tid}/stat`)).state;
      if (st !== 'Z' && st !== 'X') return tid;
    } catch { /* gone */ }
  }
  return undefined;
}

/** One tracked process: ferry's copy of its userfaultfd and its pagemap. */
class TrackedProcess {
  /** Registered ranges, as registered (areas may have been split or moved since). */
  constructor(readonly pid: number, readonly start: bigint, readonly uffd: number, readonly pagemap: number) {}

  close(): void {
    for (const fd of [this.pagemap, this.uffd]) {
      try { closeSync(fd); } catch { /* closed */ }
    }
  }

  /**
   * Registers the storable areas not registered yet, then scans every registered one. The
   * first scan of an area reports every populated page it has.
   *
   * `frozen` (the last scan, the process stopped for good, the tracking ended after it): the
   * layout from maps, not smaps, whose reading walks every page of every area (17 ms for
   * 1 GiB here); nothing is registered and nothing protected again. An area whose pages are
   * not all tracked (new since the last scan, or replaced) fails the scan's check
   * (PM_SCAN_CHECK_WPASYNC: EPERM) and comes out `untracked`, which is what `fresh` would
   * have made of it: nothing is held there. Device areas (VmFlags io, pf: not in maps) are
   * never registered, so they come out untracked too.
   */
  scan(frozen = false): ProcessScan {
    const out: ProcessScan = { pid: this.pid, dirty: [], dropped: [], fresh: [], untracked: [], same: startTime(this.pid) === this.start };
    if (!out.same) return out;
    let areas: Array<{ v: Vma; flags: string[] }>;
    try {
      if (frozen) {
        areas = parseMaps(readProcText(this.pid, 'maps')).map((v) => ({ v, flags: [] })).filter(({ v, flags }) => storable(v, flags));
      } else {
        areas = trackable(readProcText(this.pid, 'smaps'));
        if (areas.some((a) => !a.flags.includes('uw'))) areas = this.register(false, out);
      }
    } catch (err) {
      if (err instanceof FerryError) throw err;
      out.same = false; // gone meanwhile
      return out;
    }
    for (const { v } of areas) {
      if (out.untracked.some(([s]) => s === v.start)) continue;
      try {
        scanArea(this.pagemap, v.start, v.end, out.dirty, out.dropped, frozen, anonymousArea(v));
      } catch (err) {
        // ESRCH: the process exited meanwhile (a short-lived child of the tree): it is gone.
        if (errnoCode(err) === 'ESRCH') {
          out.same = false;
          out.dirty.length = 0;
          out.dropped.length = 0;
          return out;
        }
        // EPERM: part of the area is no longer registered (moved, replaced) since smaps was read.
        if (errnoCode(err) !== 'EPERM' && errnoCode(err) !== 'EINVAL') throw err;
        out.untracked.push([v.start, v.end]);
      }
    }
    return out;
  }

  /**
   * Registers every trackable area not registered yet, with every thread of the process held
   * stopped meanwhile (holdStopped): a running process could grow or move an area between the
   * reading of its layout and the registration, and a registration of part of an area splits
   * it, which the process would see (an mremap(2) of the whole would fail). `strict` (the
   * start): an area the kernel refuses is refused; later, it is only untracked. Returns the
   * areas, as read while it was stopped.
   */
  register(strict: boolean, out?: ProcessScan): Array<{ v: Vma; flags: string[] }> {
    const n = native();
    return holdStopped(this.pid, () => {
      faultPointSync('holding');
      const areas = trackable(readProcText(this.pid, 'smaps'));
      for (const { v, flags } of areas) {
        if (flags.includes('uw')) continue;
        try {
          n.uffdRegister(this.uffd, v.start, v.end - v.start, UFFDIO_REGISTER_MODE_WP);
          out?.fresh.push([v.start, v.end]);
        } catch (err) {
          if (strict) {
            throw new FerryError('EUNSUPPORTED', `pid ${this.pid}'s memory area 0x${v.start.toString(16)}-0x${v.end.toString(16)}`
              + `${v.path ? ` (${v.path})` : ''} cannot be write-tracked (${describeCause(err)}): migrate it with --no-pre-copy`, { cause: err, pid: this.pid });
          }
          out?.untracked.push([v.start, v.end]);
        }
      }
      return areas;
    });
  }
}

/** The areas to track of a layout (smaps text), with their VmFlags. */
function trackable(smaps: string): Array<{ v: Vma; flags: string[] }> {
  const { vmas, vmflags } = parseSmaps(smaps);
  return vmas.map((v) => ({ v, flags: vmflags.get(v.start) ?? [] })).filter(({ v, flags }) => storable(v, flags));
}

/**
 * Runs `fn` with every thread of `pid` stopped: seized (PTRACE_SEIZE + PTRACE_INTERRUPT) and
 * let go afterwards on every path; threads this ferry already holds (a checkpoint's frozen
 * tree) are left as they are. If ferry dies meanwhile, the kernel detaches them: they run on.
 */
function holdStopped<T>(pid: number, fn: () => T): T {
  const n = native();
  const seized: number[] = [];
  const known = new Set<number>();
  try {
    for (let round = 0; round < 100; round++) {
      const fresh = listTids(pid).filter((t) => !known.has(t));
      if (fresh.length === 0) break;
      for (const tid of fresh) {
        known.add(tid);
        let tracer = 0;
        try {
          tracer = Number(/^TracerPid:\s+(\d+)/m.exec(readProcText(pid, `task/${tid}/status`))?.[1] ?? 0);
        } catch { continue; } // exited
        if (tracer === process.pid) continue; // held already
        try {
          n.seize(tid, DUMP_TRACE_OPTIONS);
        } catch (err) {
          if (errnoCode(err) === 'ESRCH' || errnoCode(err) === 'EPERM') continue; // exited, or a zombie thread
          throw err;
        }
        seized.push(tid);
        n.interrupt(tid);
        n.waitpid(tid, 0, 5000);
      }
    }
    return fn();
  } finally {
    for (const tid of seized) {
      try { n.detach(tid, 0); } catch { /* exited */ }
    }
  }
}

/**
 * PAGEMAP_SCAN of one registered area: the written pages into `into` and those written since
 * and dropped (neither present nor swapped) into `dropped`, all write-protected again (`last`:
 * not protected again, the tracking ends). In an `anonymous` area no page is a file's, so
 * PAGE_IS_FILE is not asked: the kernel then does not look up each present page's folio
 * (vm_normal_page): the last scan of a stopped 1 GiB process, with the tree frozen, took
 * 7.7-14.8 ms asking it and 1.1-1.3 without (docs/migration.md, "Downtime"). Not asking it
 * could only report more pages written, never fewer (keepRegion drops only a file's pages).
 */
function scanArea(pagemap: number, start: bigint, end: bigint, into: PageRun[], dropped: PageRun[], last = false, anonymous = false): void {
  const n = native();
  const want = PAGE_IS_WRITTEN | PAGE_IS_PRESENT | PAGE_IS_SWAPPED | (anonymous ? 0 : PAGE_IS_FILE);
  for (let at = start; at < end;) {
    const r = n.pagemapScan(pagemap, at, end, (last ? 0 : PM_SCAN_WP_MATCHING) | PM_SCAN_CHECK_WPASYNC, PAGE_IS_WRITTEN,
      want, SCAN_REGIONS);
    for (let i = 0; i < r.regions.length; i += 3) {
      const c = Number(r.regions[i + 2]!);
      const to = keepRegion(c) ? into : (c & (PAGE_IS_PRESENT | PAGE_IS_SWAPPED)) === 0 ? dropped : undefined;
      if (to === undefined) continue; // a file's page (a private mapping's, not written): the file has it
      const s = r.regions[i]!, e = r.regions[i + 1]!;
      const tail = to[to.length - 1];
      const pages = Number((e - s) / BigInt(PAGE_SIZE));
      if (tail && tail[0] + BigInt(tail[1] * PAGE_SIZE) === s) tail[1] += pages;
      else to.push([s, pages]);
    }
    const next = nextScanStart(r, at, end, SCAN_REGIONS);
    if (next <= at) break; // no progress: nothing more to learn here
    at = next;
  }
}

/** Dirty tracking of a set of processes; close() (or ferry's death) ends it. */
export class DirtyTracker {
  private constructor(private readonly procs: TrackedProcess[]) {}

  /** The processes tracked. */
  get pids(): number[] {
    return this.procs.map((p) => p.pid);
  }

  /** Scans every process (see TrackedProcess.scan; `frozen`: the last scan, of a stopped tree). */
  scan(frozen = false): ProcessScan[] {
    return this.procs.map((p) => p.scan(frozen));
  }

  /**
   * The tracked processes, each with its start time and ferry's userfaultfd of it: for a
   * holder that keeps the tracking between two runs (src/runtime/criu-track.ts). The
   * descriptors stay this tracker's: close() still closes them.
   */
  get descriptors(): Array<{ pid: number; start: bigint; uffd: number }> {
    return this.procs.map((p) => ({ pid: p.pid, start: p.start, uffd: p.uffd }));
  }

  /**
   * Takes over tracking that another run started (`descriptors`, the userfaultfds taken back
   * from their holder): every descriptor becomes this tracker's. A process that is gone or no
   * longer the one tracked (start time) is dropped, its descriptor closed: the caller holds
   * nothing of it (its scans never name it).
   */
  static adopt(held: ReadonlyArray<{ pid: number; start: bigint; uffd: number }>): DirtyTracker {
    const procs: TrackedProcess[] = [];
    for (const h of held) {
      let pagemap = -1;
      try {
        if (startTime(h.pid) === h.start) pagemap = openSync(`/proc/${h.pid}/pagemap`, 'r');
      } catch { /* gone */ }
      if (pagemap < 0) {
        try { closeSync(h.uffd); } catch { /* closed */ }
        continue;
      }
      procs.push(new TrackedProcess(h.pid, h.start, h.uffd, pagemap));
    }
    return new DirtyTracker(procs);
  }

  /**
   * Starts tracking the processes of `pids` not tracked yet (forked since the start), as
   * start() does; throws as start() does for one that cannot be tracked.
   */
  add(pids: readonly number[], log: Logger): void {
    const known = new Set(this.procs.map((p) => p.pid));
    for (const pid of pids) {
      if (known.has(pid)) continue;
      const p = trackProcess(pid, log);
      if (p) this.procs.push(p);
    }
  }

  /** Ends tracking: ferry's userfaultfds are closed, which unregisters every area. */
  close(): void {
    for (const p of this.procs) p.close();
    this.procs.length = 0;
  }

  /**
   * Starts tracking `pids` (a running tree; processes that exit meanwhile are skipped).
   * Undefined when this kernel cannot track writes asynchronously (no userfaultfd, no
   * WP_ASYNC or no PAGEMAP_SCAN): the caller copies everything instead. Throws (one line) for
   * a process that uses userfaultfd itself, is traced, or has a storable area that cannot be
   * registered; nothing is left behind then.
   */
  static start(pids: readonly number[], log: Logger): DirtyTracker | undefined {
    const procs: TrackedProcess[] = [];
    try {
      for (const pid of pids) {
        const p = trackProcess(pid, log);
        if (p === null) return closeAll(procs);
        if (p !== undefined) procs.push(p);
      }
    } catch (err) {
      closeAll(procs);
      throw err;
    }
    return new DirtyTracker(procs);
  }
}

function closeAll(procs: TrackedProcess[]): undefined {
  for (const p of procs) p.close();
  return undefined;
}

/**
 * Starts tracking one process: its userfaultfd made inside it and taken out (one brief seize
 * of one thread), armed, its storable areas registered. Undefined when it is gone; null when
 * the kernel cannot do asynchronous write-protection.
 */
function trackProcess(pid: number, log: Logger): TrackedProcess | undefined | null {
  const n = native();
  const start = startTime(pid);
  if (start === undefined) return undefined;
  let smaps: string;
  try {
    smaps = readProcText(pid, 'smaps');
  } catch (err) {
    if (err instanceof ProcessGoneError) return undefined; // exited meanwhile, as below
    throw err;
  }
  refuseOwnUserfaultfd(pid, smaps);
  const { vmas } = parseSmaps(smaps);
  const session = new Session('dirty-tracking', log);
  let uffd = -1;
  try {
    const pidfd = n.pidfdOpen(pid); // ESRCH when it exited: the catch below
    session.onUndo('close the pidfd', () => closeSync(pidfd));
    // One thread is enough to run a syscall for the whole mm; the others run on meanwhile. Not
    // a leader that exited before its threads (a zombie thread never stops).
    const tid = liveThread(pid);
    if (tid === undefined) return undefined;
    try {
      n.seize(tid, DUMP_TRACE_OPTIONS);
    } catch (err) {
      if (errnoCode(err) === 'ESRCH') return undefined;
      throw new FerryError('ESEIZE', `cannot attach to pid ${pid} to track its memory: ${describeCause(err)} (is it traced by a debugger?)`, { cause: err, pid });
    }
    // The kernel detaches a tracee whose tracer dies; this undo does it on every other way out.
    session.onUndo('let the thread go', () => { try { n.detach(tid, 0); } catch { /* exited */ } });
    n.interrupt(tid);
    const st = n.waitpid(tid, 0, 5000);
    if (!st || !st.stopped) return undefined;
    const t = new Tracee(pid, tid, true);
    t.gadget = syscallGadget(pid, vmas);
    const opts: { takeFdAt: number; takeFdPidfd: number; takenFd?: number } = { takeFdAt: 1, takeFdPidfd: pidfd };
    const results = t.trySyscalls([
      [SYS.userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY],
      [SYS.close, 0], // its argument: the descriptor the call before returned (takeFdAt)
    ], opts);
    if (opts.takenFd !== undefined && opts.takenFd >= 0) uffd = opts.takenFd;
    n.detach(tid, 0);
    const made = results[0]!;
    if (made < 0n) {
      const code = injectedError(SYS.userfaultfd, Number(-made), pid);
      if (code.code === 'ENOSYS' || code.code === 'EPERM' || code.code === 'EINVAL') {
        log.warn({ targetPid: pid, err: code }, 'no userfaultfd for dirty tracking');
        return null;
      }
      throw code;
    }
    if (uffd < 0) throw new Error(`pidfd_getfd of pid ${pid}'s userfaultfd failed (${opts.takenFd ?? '?'})`);
    if (results[1]! !== 0n) log.warn({ targetPid: pid, result: Number(results[1]!) }, 'closing the userfaultfd in the process failed');
    const want = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
    try {
      const got = n.uffdApi(uffd, want);
      if ((got & want) !== want) return null;
    } catch (err) {
      if (errnoCode(err) === 'EINVAL') return null; // features this kernel does not know
      throw err;
    }
    const pagemap = openSync(`/proc/${pid}/pagemap`, 'r');
    try {
      // A kernel before 6.7 has no PAGEMAP_SCAN (ENOTTY): nothing to scan with.
      n.pagemapScan(pagemap, 0n, BigInt(PAGE_SIZE), 0, PAGE_IS_WRITTEN, PAGE_IS_WRITTEN, 1);
    } catch (err) {
      closeSync(pagemap);
      if (errnoCode(err) === 'ENOTTY' || errnoCode(err) === 'EINVAL') return null;
      throw err;
    }
    const p = new TrackedProcess(pid, start, uffd, pagemap);
    uffd = -1; // p owns it now
    session.onUndo('close the tracking', () => p.close());
    // Register every trackable area now: one that cannot be is refused (pre-copy would be blind to it).
    p.register(true);
    session.close(); // the pidfd stays open only through here
    closeSync(pidfd);
    return p;
  } catch (err) {
    // Whatever failed (its pagemap gone, ESRCH from a call on it), a process that exited
    // meanwhile is skipped, as start() says: the tree runs on while tracking starts, and a
    // short-lived child (a shell loop's sleep) comes and goes (CI runs met two such calls).
    if (startTime(pid) !== start) return undefined;
    throw err;
  } finally {
    if (uffd >= 0) closeSync(uffd);
    session.unwind();
  }
}
