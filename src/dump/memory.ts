/**
 * Memory of a stopped task: which areas exist, which pages must be stored, and a producer that
 * streams those pages into the image.
 *
 * A page is stored when /proc/PID/pagemap says it is present and anonymous (anon memory or a
 * COWed page of a private file map) or swapped out; for shared anonymous memory every present
 * or swapped page. Pages never touched or still backed by the file are not stored: restore
 * maps the same file or fresh zero memory.
 */
import { closeSync, openSync, readFileSync, readSync, readlinkSync, statSync, type BigIntStats } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { PAGE_SIZE, PROT_EXEC, PROT_READ, PROT_WRITE, SYS } from '../arch/x86-64.js';
import { describeCause, FerryError } from '../errors.js';
import { faultPointSync } from '../fault.js';
import { directBuffer, faultInLater } from '../image/direct.js';
import { hex, type VmaRecord } from '../image/records.js';
import type { HeldDigests } from '../image/writer.js';
import { native } from '../native/binding.js';
import type { Vma } from '../proc/maps.js';
import { dumpablePageRuns, guardPageRuns, scanStoredPages, sharedAnonPages, sharedFrames, sharedWithParent } from '../proc/pagemap.js';
import { inheritable, lendableUnmapped, pageSet, runsOf } from '../image/cow.js';
import { isHugetlb, isMemfdPath, type MappedSpecialFile } from '../files/memfd.js';
import { parseChildren } from '../proc/children.js';
import { listFds, listTids, readProcText } from '../proc/read.js';
import { AIO_RING_HEADER, AIO_RING_MAX_PAGES, IO_EVENT_SIZE, MAX_AIO_EVENTS, parseRingHeader, ringHeaderProblem } from '../image/aio-ring.js';
import { injectedError, type Tracee } from '../task/tracee.js';

/**
 * VmFlags (smaps) carried into the image: grows-down, accountable (a private area that was
 * once writable keeps VM_ACCOUNT, which keeps it from merging with its neighbours), locked
 * (mlock: 'lo', and 'lf' with MLOCK_ONFAULT), and the madvise() ones (random, sequential,
 * don't-fork, mergeable, don't-dump, wipe-on-fork, huge pages or not). And may-write ('mw'),
 * for shared mappings of a file only (keptVmflags): a private area always has it.
 */
const KEPT_VMFLAGS = new Set(['gd', 'ac', 'lo', 'lf', 'rr', 'sr', 'dc', 'mg', 'dd', 'wf', 'hg', 'nh']);

/**
 * VM_MAYWRITE ('mw') of a shared (MAP_SHARED) mapping of a file says whether the file was open
 * for writing when it was mapped (mmap(2) clears it otherwise), hence whether mprotect(2) may
 * make the area writable later: an area mapped PROT_READ from a descriptor opened O_RDWR has
 * it, one mapped from an O_RDONLY descriptor has not (EACCES). The protection does not tell
 * the two apart; restore opens the file for writing when the flag is kept (address-space.ts
 * sharedWritable). VM_MAYREAD is always set, and VM_MAYEXEC (cleared on a noexec mount) comes
 * back with the same mount: neither is kept.
 */
function keptVmflags(flags: readonly string[], shared: boolean, kind: VmaRecord['kind']): string[] {
  return flags.filter((f) => KEPT_VMFLAGS.has(f) || (f === 'mw' && shared && kind === 'file'));
}

/** VmFlags of areas we cannot rebuild: raw PFN or I/O mappings of device drivers. */
const UNSUPPORTED_VMFLAGS = new Set(['io', 'pf']);

const SPECIAL_KINDS: Readonly<Record<string, VmaRecord['kind']>> = {
  '[vdso]': 'vdso', '[vvar]': 'vvar', '[vvar_vclock]': 'vvar_vclock', '[vsyscall]': 'vsyscall',
};

/**
 * The System V shared memory segment an area attaches (maps shows it as /SYSV<key>, its inode
 * is the shmid; /proc/sysvipc/shm has the rest). Only a whole attach can be restored (shmat).
 */
function sysvSegment(pid: number, v: Vma, range: string): NonNullable<VmaRecord['sysv']> {
  const line = readFileSync('/proc/sysvipc/shm', 'utf8').split('\n').slice(1)
    .map((l) => l.trim().split(/\s+/)).find((f) => f[1] === v.inode.toString());
  if (!line) {
    throw new FerryError('EUNSUPPORTED', `unsupported memory area of pid ${pid}: ${range}: System V segment ${v.inode} is not in /proc/sysvipc/shm (another IPC namespace?)`);
  }
  const perms = parseInt(line[2]!, 8);
  const size = Number(line[3]);
  const pages = Math.ceil(size / PAGE_SIZE) * PAGE_SIZE;
  if (v.offset !== 0n || Number(v.end - v.start) !== pages) {
    throw new FerryError('EUNSUPPORTED', `unsupported memory area of pid ${pid}: ${range} maps part of System V segment ${v.inode} (only whole attaches can be restored)`);
  }
  return {
    shmid: Number(v.inode), key: Number(line[0]), size, mode: perms & 0o777,
    uid: Number(line[7]), gid: Number(line[8]), removed: (perms & 0o1000) !== 0,
  };
}

/** Whether an area is shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS shows as /dev/zero). */
function isSharedAnon(v: Vma): boolean {
  return v.shared && ((v.path === '/dev/zero' && v.deleted) || v.path.startsWith('[anon_shmem:'));
}

/**
 * Pages of one process the image's reader already holds (pre-copy: migrate/precopy.ts), so
 * the frozen dump names them by digest instead of reading them. Pages are numbered by
 * address / PAGE_SIZE.
 */
export interface HeldSet {
  /**
   * How many pages from `page` on are held (`want` true) or not (false), at most `max`;
   * with `out`, the sha256 of each held one (as the reader holds it) is copied into it from
   * `at`, 32 bytes a page.
   */
  run(page: number, max: number, want?: boolean, out?: Buffer, at?: number): number;
  /**
   * The digest of the chunk of a paged entry made of the `pages` held pages from `page` on, in
   * hex (writer.ts HeldDigests.chunkDigest), if known and still true; else undefined.
   */
  chunkDigest?(page: number, pages: number): string | undefined;
}

/** A process's held pages and where their digests go (writer.ts ImageEntry.produce's `held`). */
export interface HeldRun {
  set: HeldSet;
  sink(digests: HeldDigests): Promise<void>;
}

/** The `count` held pages of `set` from `page` on, as the writer takes them (HeldDigests). */
function heldRun(set: HeldSet, page: number, count: number): HeldDigests {
  return {
    pages: count,
    copy: (from, n, out, at) => {
      if (set.run(page + from, n, true, out, at) !== n) throw new Error(`held pages from page ${page + from} changed while the image was written`);
    },
    ...(set.chunkDigest !== undefined ? { chunkDigest: (from: number, n: number) => set.chunkDigest!(page + from, n) } : {}),
  };
}

/** The pages a stream's reader holds, by process (api.ts CheckpointOptions.heldPages). */
export interface HeldPages {
  /** Of process `pid` (as the image names it); undefined: it holds none. */
  of(pid: number): HeldSet | undefined;
  /** What the last pass of the dump over `pid`'s pages did. */
  counted(pid: number, counts: PageCounts): void;
}

/** What a producer did: pages read from the process, pages named by digest instead. */
export interface PageCounts {
  read: number;
  held: number;
}

/** The memory part of a task's dump. */
export interface MemoryPlan {
  vmas: VmaRecord[];
  /** Bytes of page data (the size of the pages entry). */
  pagesBytes: number;
  /**
   * Streams the stored pages, in VMA order, through `sink`, in chunks of at most `chunkBytes`
   * read into `buffers` (prepared before the freeze) when given.
   */
  produce(sink: (chunk: Buffer) => Promise<void>, chunkBytes: number, buffers?: ChunkBuffers, held?: HeldRun): Promise<PageCounts>;
  /**
   * Deleted files the process maps but holds no descriptor of (a binary or library replaced
   * by an upgrade), as `/proc/PID/map_files/START-END` paths: the checkpoint opens each and
   * makes it a file of the image (a ghost, files/deleted.ts, or, when the file kept another
   * name, a linked file, files/linked.ts), which the areas' `ghost` name.
   */
  unheldGhosts: string[];
  /**
   * The pagemap entries read for the areas whose pages siblings may share (shareAmongSiblings),
   * by the area's start, kept for it (the tree is stopped: they cannot change) up to
   * KEPT_PAGEMAP_BYTES a process; an area not here is read again.
   */
  pagemaps?: Map<string, Buffer>;
}

/**
 * Pagemap entries a plan keeps for shareAmongSiblings (8 bytes a page: 2 MiB for 1 GiB of
 * areas); beyond, the rest are read again there.
 */
const KEPT_PAGEMAP_BYTES = 4 * 1024 * 1024;

/**
 * VmFlags of areas whose stored pages are always found by reading the pagemap, never by
 * PAGEMAP_SCAN (scanStoredPages): mergeable ('mg': KSM may merge a page with another
 * process's at any moment, also while the tree is stopped), mixed maps ('mm': a present page
 * with no folio other than the zero page) and hugetlb ('ht').
 */
const PAGEMAP_ONLY_VMFLAGS = new Set(['mg', 'mm', 'ht']);

/** The parent of a process being planned: its pid and planned areas (it is stopped too). */
export interface PlannedParent {
  pid: number;
  vmas: readonly VmaRecord[];
}

/**
 * Plans the memory dump of a stopped task from its maps, VmFlags and pagemap. With `parent`
 * (its parent, planned before it and stopped as well), the pages of an area that the parent
 * maps too (image/cow.ts `inheritable`) and still shares with it copy-on-write (the same page
 * frame at the same address) are recorded as the area's `cow` runs instead of being stored.
 *
 * `unshared` (smaps.ts, read after the tree was stopped): the areas none of whose pages another
 * process maps. Their stored pages are found with PAGEMAP_SCAN (scanStoredPages), which
 * returns ranges, rather than by reading 8 bytes of pagemap a page, where nothing needs what
 * only the read gives (page frames, the exclusive bit): a shared area (no copy-on-write), or a
 * private one of a process with no `parent` (its pagemap entries are matched with no other
 * process's: shareAmongSiblings and cow-branches.ts read those of children only) whose pages
 * smaps shows mapped once each. Those pages are exclusive in pagemap but for the zero page,
 * which the scan names (PAGE_IS_PFNZERO). While the tree is stopped no page of it becomes
 * shared: only a fork by a process mapping the page shares it, or KSM (areas with 'mg' are
 * read), so what smaps said still holds when the scan runs.
 */
export function planMemory(pid: number, maps: readonly Vma[], vmflags: ReadonlyMap<bigint, string[]>,
  parent?: PlannedParent, unshared?: ReadonlySet<bigint>): MemoryPlan {
  const pagemap = openSync(`/proc/${pid}/pagemap`, 'r');
  const parentAreas = new Map((parent?.vmas ?? []).map((v) => [v.start, v]));
  let parentPagemap = -1;
  /** Stored pages of private areas shared copy-on-write with another process: read in place (sharedAnonPages). */
  const viaMem = new Map<VmaRecord, Uint8Array>();
  const unheldGhosts: string[] = [];
  const vmas: VmaRecord[] = [];
  const pagemaps = new Map<string, Buffer>();
  let keptBytes = 0;
  let pagesBytes = 0;
  /** dev:ino of the deleted files and memfds the process holds open, read when first needed. */
  let held: Set<string> | undefined;
  /** The stat of each file mapped, by the device and inode its areas name. */
  const fileStats = new Map<string, BigIntStats>();
  try {
    for (const v of maps) {
      const flags = vmflags.get(v.start) ?? [];
      const special = SPECIAL_KINDS[v.path];
      const bad = flags.find((f) => UNSUPPORTED_VMFLAGS.has(f));
      const range = `${hex(v.start)}-${hex(v.end)}${v.path ? ` (${v.path})` : ''}`;
      if (bad && !special) {
        throw new FerryError('EUNSUPPORTED', `unsupported memory area of pid ${pid}: ${range} is a device mapping (VmFlags ${bad})`);
      }
      // A socket's own mapping (a packet ring, PACKET_MMAP in packet(7); an AF_XDP ring; a TCP
      // zerocopy receive area) is kernel memory of the socket, not a file: refused, also when
      // the socket itself is closed and only the mapping is left (src/files/packet.ts).
      if (/^socket:\[\d+\]$/.test(v.path)) {
        throw new FerryError('EUNSUPPORTED', `unsupported memory area of pid ${pid}: ${range} is memory of a socket (a packet ring, PACKET_MMAP, or the like), which cannot be checkpointed yet; unmap it or run the process without it`);
      }
      // io_setup(2)'s completion ring: an area of its own kind, no page stored. Its header and
      // the events not reaped yet are read last (readAioRings), and restore makes a new
      // context whose ring it moves here (restore/aio.ts).
      if (v.path === '/[aio]' && v.deleted) {
        if (!v.shared || v.offset !== 0n || v.end - v.start > BigInt(AIO_RING_MAX_PAGES * PAGE_SIZE)) {
          throw new FerryError('EUNSUPPORTED', `unsupported memory area of pid ${pid}: ${range} maps an io_setup(2) completion ring otherwise than io_setup does (private, at an offset, or too big)`);
        }
        vmas.push({
          start: hex(v.start), end: hex(v.end),
          prot: (v.read ? PROT_READ : 0) | (v.write ? PROT_WRITE : 0) | (v.exec ? PROT_EXEC : 0),
          shared: true, kind: 'aio', name: v.path, vmflags: [], runs: [], pagesOffset: pagesBytes,
        });
        continue;
      }
      const sharedAnon = isSharedAnon(v);
      const sysv = v.shared && v.path.startsWith('/SYSV') ? sysvSegment(pid, v, range) : undefined;
      const kind: VmaRecord['kind'] = special ?? (v.inode !== 0n && !sharedAnon && !sysv ? 'file' : 'anon');
      // A memfd (always "deleted") is mapped again from the memfd restored with the files, or
      // made anew from what the areas store; a deleted file from the file of the image that
      // restores it: held open by this process, or opened through map_files for the image
      // (unheldGhosts). Its kind is the file's: a ghost whose contents the image stores when no
      // name is left, a linked file (found again by its handle) when it kept another name.
      const mapFiles = `/proc/${pid}/map_files/${v.start.toString(16)}-${v.end.toString(16)}`;
      const memfd = kind === 'file' && v.deleted && isMemfdPath(v.path);
      const mapped: MappedSpecialFile = {};
      let heldMemfd = false;
      /** For a memfd no descriptor holds: which pages of the area have data in the memfd. */
      let memfdData: Uint8Array | undefined;
      if (memfd) {
        const st = statSync(mapFiles, { bigint: true });
        if (isHugetlb(st.blksize)) throw new FerryError('EUNSUPPORTED', `unsupported memory area of pid ${pid}: ${range} maps a hugetlb memfd`);
        held ??= heldDeleted(pid);
        heldMemfd = held.has(`${st.dev}:${st.ino}`);
        const fd = native().openRaw(mapFiles, 0);
        let seals: number;
        try {
          seals = native().getSeals(fd);
          if (!heldMemfd) memfdData = dataPages(fd, v, Number(st.size));
        } finally { native().closeFd(fd); }
        mapped.memfd = {
          id: `${v.major}:${v.minor}:${v.inode}`, name: v.path.slice('/memfd:'.length),
          size: Number(st.size), mode: Number(st.mode & 0o7777n), seals,
        };
      } else if (kind === 'file' && v.deleted) {
        const st = statSync(mapFiles, { bigint: true });
        held ??= heldDeleted(pid);
        if (!held.has(`${st.dev}:${st.ino}`)) unheldGhosts.push(mapFiles);
        mapped.ghost = `${st.dev}:${st.ino}`;
      }
      if (kind === 'anon' && v.shared && !sharedAnon && !sysv) {
        throw new FerryError('EUNSUPPORTED', `unsupported memory area of pid ${pid}: ${range} is shared memory of an unknown kind`);
      }
      const rec: VmaRecord = {
        start: hex(v.start),
        end: hex(v.end),
        prot: (v.read ? PROT_READ : 0) | (v.write ? PROT_WRITE : 0) | (v.exec ? PROT_EXEC : 0),
        shared: v.shared,
        kind,
        name: sharedAnon ? '' : v.path,
        vmflags: keptVmflags(flags, v.shared, kind),
        runs: [],
        pagesOffset: pagesBytes,
      };
      if (sharedAnon) rec.shmem = { id: `${v.major}:${v.minor}:${v.inode}`, offset: hex(v.offset) };
      if (sysv) {
        rec.sysv = sysv;
        rec.name = '';
      }
      Object.assign(rec, mapped);
      if (kind === 'file') {
        // Through map_files: the file as the process maps it, even when its path is only
        // valid inside its mount namespace (a container's binary). Once per file: a library
        // is mapped four or five times.
        const id = `${v.major}:${v.minor}:${v.inode}`;
        let st = fileStats.get(id);
        if (st === undefined) fileStats.set(id, st = statSync(mapFiles, { bigint: true }));
        rec.file = {
          path: v.path, offset: hex(v.offset), dev: `${v.major}:${v.minor}`, ino: v.inode.toString(),
          size: Number(st.size), mtimeNs: st.mtimeNs.toString(),
        };
      }
      // A memfd mapping stores every present page unless the process holds the memfd open
      // (its file record has the contents): nothing else may have them.
      const storesPages = !special && (mapped.memfd ? !(heldMemfd && v.shared) : !(kind === 'file' && v.shared));
      if (storesPages) {
        const npages = Number((v.end - v.start) / BigInt(PAGE_SIZE));
        const first = Number(v.start / BigInt(PAGE_SIZE));
        const allPresent = (kind === 'anon' && v.shared) || memfdData !== undefined;
        const scannable = unshared !== undefined && (v.shared || (parent === undefined && unshared.has(v.start)))
          && !flags.some((f) => PAGEMAP_ONLY_VMFLAGS.has(f));
        // Private anonymous memory (no file: maps shows no inode, and a name of the kernel's
        // or none) holds anonymous pages and the zero page only.
        const anonymous = kind === 'anon' && !v.shared && v.inode === 0n && (v.path === '' || v.path.startsWith('['));
        const scanned = scannable ? scanStoredPages(pagemap, v.start, v.end, allPresent, anonymous) : undefined;
        let entries: Buffer | undefined;
        let runs: Array<[number, number]>;
        let guards: Array<[number, number]>;
        if (scanned) {
          runs = scanned.runs;
          guards = scanned.guards;
        } else {
          entries = Buffer.allocUnsafe(npages * 8);
          const got = readSync(pagemap, entries, 0, entries.length, first * 8);
          if (got !== entries.length) throw new Error(`short read of /proc/${pid}/pagemap at ${range}`);
          runs = dumpablePageRuns(entries, 0, allPresent);
          guards = guardPageRuns(entries, 0);
        }
        if (guards.length > 0) rec.guards = guards;
        if (memfdData) runs = mergeRuns(runs, memfdData);
        const theirs = parentAreas.get(rec.start);
        // (Never a scanned area: those are shared, or of a process planned with no parent.)
        if (parent && theirs && entries && runs.length > 0 && inheritable(theirs, rec)) {
          if (parentPagemap < 0) parentPagemap = openSync(`/proc/${parent.pid}/pagemap`, 'r');
          const other = Buffer.allocUnsafe(entries.length);
          if (readSync(parentPagemap, other, 0, other.length, first * 8) === other.length) {
            const shared = sharedWithParent(entries, other);
            const stored = pageSet(npages, runs);
            const cow = new Uint8Array(npages);
            for (let i = 0; i < npages; i++) {
              if (stored[i] && shared[i]) {
                stored[i] = 0;
                cow[i] = 1;
              }
            }
            runs = runsOf(stored);
            const inherited = runsOf(cow);
            if (inherited.length > 0) rec.cow = inherited;
          }
        }
        if (!v.shared && runs.length > 0) {
          const sharedPages = entries ? sharedAnonPages(entries) : scanned!.zero.length > 0 ? pageSet(npages, scanned!.zero) : undefined;
          if (sharedPages) viaMem.set(rec, sharedPages);
          // A child's area whose pages its siblings may share: shareAmongSiblings reads these.
          if (entries && parent && (kind === 'anon' || kind === 'file') && keptBytes + entries.length <= KEPT_PAGEMAP_BYTES) {
            pagemaps.set(rec.start, entries);
            keptBytes += entries.length;
          }
        }
        for (const [page, count] of runs) {
          rec.runs.push([page, count]);
          pagesBytes += count * PAGE_SIZE;
        }
      }
      vmas.push(rec);
    }
  } finally {
    closeSync(pagemap);
    if (parentPagemap >= 0) closeSync(parentPagemap);
  }
  return {
    vmas,
    pagesBytes,
    unheldGhosts,
    ...(pagemaps.size > 0 ? { pagemaps } : {}),
    produce: (sink, chunkBytes, buffers, held) => producePages(pid, vmas, sink, chunkBytes, buffers, viaMem, held),
  };
}

/** errno(3) numbers readAioRings tells apart. */
const { EINTR, EINVAL } = osConstants.errno;

/**
 * Reads the io_setup(2) rings among the planned areas `vmas` of the stopped process `t`: each
 * area of kind 'aio' gets its `aio` (image/aio-ring.ts). Called as late as the frozen dump
 * allows, after the other memory work: requests on files opened with O_DIRECT complete within
 * milliseconds, also while the tree is stopped, and their events are then in the ring. A
 * request still in flight (an IOCB_CMD_POLL waiting, a read of a slow device) is counted only
 * inside the kernel's context (reqs_available, per-CPU), which no interface shows: it is not
 * seen, and does not come back (docs/architecture.md); one `warn` line per process says so.
 *
 * The area must be a context's own ring: an injected io_getevents(2) with min_nr and nr 0
 * reads nothing and returns 0 for a context of this process whose ring is at that address,
 * EINVAL otherwise. fork(2) copies the mapping but not the context: a child's copy of its
 * parent's ring (or a part of a ring split by mprotect) is refused, as is a header fs/aio.c
 * would not have written. The events are [head, tail) modulo nr: the kernel writes tail, the
 * process head (libaio reaps by reading the ring and moving head itself), which the kernel
 * takes modulo nr.
 */
export function readAioRings(t: Tracee, vmas: readonly VmaRecord[], warn: (line: string) => void): void {
  const rings = vmas.filter((v) => v.kind === 'aio');
  if (rings.length === 0) return;
  const probe = (v: VmaRecord): readonly [number, ...bigint[]] => [SYS.io_getevents, BigInt(v.start), 0n, 0n, 0n, 0n];
  const probes = t.trySyscalls(rings.map(probe));
  rings.forEach((v, i) => {
    const range = `${v.start}-${v.end} (/[aio])`;
    const refuse = (what: string): never => {
      throw new FerryError('EUNSUPPORTED', `unsupported memory area of pid ${t.pid}: ${range} ${what}`);
    };
    // EINTR: a stop of the seize's own was pending as it ran (nothing was read); asked again.
    for (let tries = 0; probes[i] === -BigInt(EINTR) && tries < 3; tries++) probes[i] = t.trySyscalls([probe(v)])[0]!;
    if (probes[i]! < 0n && probes[i] !== -BigInt(EINVAL)) throw injectedError(SYS.io_getevents, Number(-probes[i]!), t.tid);
    if (probes[i]! !== 0n) {
      refuse('is not the whole completion ring of an io_setup(2) context of this process (a copy of its parent\'s inherited through fork(2), '
        + 'or part of a ring), which cannot be checkpointed: unmap it in that process or run it without it');
    }
    const start = BigInt(v.start);
    const bytes = Number(BigInt(v.end) - start);
    // Reads only: a failure here leaves the ring as it was (the checkpoint lets the tree go).
    const read = (at: bigint, n: number): Buffer => {
      try {
        faultPointSync('aioring'); // tests only: a read failing
        return t.readMem(at, n);
      } catch (err) {
        throw new FerryError('EDUMP', `checkpoint: pid ${t.pid}: cannot read the io_setup(2) completion ring at ${range}: ${describeCause(err)}`, { cause: err });
      }
    };
    const h = parseRingHeader(read(start, AIO_RING_HEADER));
    const problem = ringHeaderProblem(h, bytes);
    if (problem !== undefined) refuse(`is the completion ring of an io_setup(2) context, but ${problem}: refused`);
    const head = h.head % h.nr;
    const count = (h.tail - head + h.nr) % h.nr;
    if (count > MAX_AIO_EVENTS) {
      refuse(`is the completion ring of an io_setup(2) context holding ${count} completed events not reaped yet, more than the ${MAX_AIO_EVENTS} `
        + 'a checkpoint records: let the process reap them (io_getevents(2)) and checkpoint again');
    }
    const at = (slot: number): bigint => start + BigInt(AIO_RING_HEADER + slot * IO_EVENT_SIZE);
    const first = Math.min(count, h.nr - head);
    const events = Buffer.concat([read(at(head), first * IO_EVENT_SIZE), read(at(0), (count - first) * IO_EVENT_SIZE)]);
    v.aio = { nr: h.nr, events: events.toString('base64') };
  });
  // Not refused (most contexts have none in flight at a given moment), but never silent: one
  // line for the process, however many contexts it has.
  const where = rings.length === 1 ? `an io_setup(2) context (its ring at ${rings[0]!.start})`
    : `${rings.length} io_setup(2) contexts (rings at ${rings.slice(0, 4).map((v) => v.start).join(', ')}${rings.length > 4 ? ', …' : ''})`;
  warn(`pid ${t.pid} has ${where}: requests still in flight, if any (an IOCB_CMD_POLL `
    + 'waiting, a read of a slow device), cannot be seen from outside the kernel, so they are not in the image and never complete '
    + 'after restore: checkpoint it when it has none pending');
}

/**
 * Pages of area `v` (a memfd mapping, `fd` the memfd) that hold data in the memfd, by
 * SEEK_DATA/SEEK_HOLE: a memfd nothing holds open has no other copy of its data, even of pages
 * this process never touched (they are read through the mapping, which faults them in).
 */
function dataPages(fd: number, v: Vma, size: number): Uint8Array {
  const npages = Number((v.end - v.start) / BigInt(PAGE_SIZE));
  const out = new Uint8Array(npages);
  const from = Number(v.offset);
  const to = Math.min(from + npages * PAGE_SIZE, size);
  for (let off = from; off < to;) {
    let start: number;
    try {
      start = native().lseek(fd, off, 3 /* SEEK_DATA */);
    } catch {
      break; // ENXIO: only a hole from here
    }
    if (start >= to) break;
    const end = Math.min(native().lseek(fd, start, 4 /* SEEK_HOLE */), to);
    for (let p = Math.floor((start - from) / PAGE_SIZE); p < Math.ceil((end - from) / PAGE_SIZE); p++) out[p] = 1;
    off = end;
  }
  return out;
}

/** Runs of pages in `runs` or marked in `pages`. */
function mergeRuns(runs: ReadonlyArray<[number, number]>, pages: Uint8Array): Array<[number, number]> {
  const all = Uint8Array.from(pages);
  for (const [page, count] of runs) all.fill(1, page, page + count);
  const out: Array<[number, number]> = [];
  for (let i = 0; i < all.length;) {
    if (!all[i]) { i++; continue; }
    let j = i;
    while (j < all.length && all[j]) j++;
    out.push([i, j - i]);
    i = j;
  }
  return out;
}

/** st_dev:st_ino of every deleted file or memfd `pid` holds a descriptor of. */
function heldDeleted(pid: number): Set<string> {
  const out = new Set<string>();
  for (const fd of listFds(pid)) {
    try {
      if (!readlinkSync(`/proc/${pid}/fd/${fd}`).endsWith(' (deleted)')) continue;
      const st = statSync(`/proc/${pid}/fd/${fd}`, { bigint: true });
      out.add(`${st.dev}:${st.ino}`);
    } catch { /* closed meanwhile */ }
  }
  return out;
}

/** Chunk buffers in rotation: some are being hashed and written while the next is read. */
const BUFFERS = 4;
/**
 * The smallest chunk prepared before a freeze (unless the configured chunk is smaller). Each
 * of the BUFFERS is faulted in page by page, and a fresh page costs here (direct.ts): 4 x 1 MiB
 * took 15-19 ms of a small process's checkpoint before the freeze, 4 x 256 KiB 4.5-5.6 ms,
 * for the 27 pages a sleep stores. Only a process that grew past the estimate since, or one the
 * estimate did not look at (a tree of more than its 256 processes), is read in smaller pieces
 * than it could be: more writes and hash updates, the same image (the manifest's chunks are
 * of the configured size whatever the pieces).
 */
const MIN_PREPARED_CHUNK = 256 * 1024;

/** What a tree is expected to store, read before it is stopped: an estimate, it still runs. */
export interface MemoryEstimate {
  /** Bytes of the process expected to store the most. */
  largest: number;
  /** Bytes of every process looked at. */
  total: number;
  /** Processes looked at. */
  processes: number;
  /** False when the walk stopped at its limit (a big tree: expect more). */
  complete: boolean;
}

/** A "Key:   N kB" line of /proc/PID/status, in bytes (0 when absent). */
function statusKb(text: string, key: string): number {
  const m = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text);
  return m ? Number(m[1]) * 1024 : 0;
}

/**
 * Expected page bytes of the tree under `root`, from each process's /proc/PID/status: RssAnon
 * + RssShmem + VmSwap, the present anonymous and shared-memory pages and the swapped ones a dump
 * stores (RssShmem also counts mapped tmpfs files it does not). Walks at most `maxProcesses`
 * processes through /proc/PID/task/TID/children. It only sizes what a checkpoint prepares
 * before the freeze (chunk buffers, the hash pool): a wrong guess costs time, never
 * correctness.
 */
export function estimateTreeMemory(root: number, maxProcesses = 256): MemoryEstimate {
  const out = { largest: 0, total: 0, processes: 0, complete: true };
  const queue = [root];
  for (let seen = 0, pid = queue.shift(); pid !== undefined; pid = queue.shift(), seen++) {
    if (seen === maxProcesses) {
      out.complete = false;
      break;
    }
    try {
      const status = readProcText(pid, 'status');
      const bytes = statusKb(status, 'RssAnon') + statusKb(status, 'RssShmem') + statusKb(status, 'VmSwap');
      out.largest = Math.max(out.largest, bytes);
      out.total += bytes;
      out.processes++;
      for (const tid of listTids(pid)) queue.push(...parseChildren(readProcText(pid, `task/${tid}/children`)));
    } catch { /* gone meanwhile: the freeze will say so if it matters */ }
  }
  return out;
}

/**
 * The page chunk buffers of one checkpoint, shared by all its processes (their pages entries
 * are produced one after another, each waiting for its last chunk to be written). Allocated
 * and faulted in before the freeze (`ready`): a fresh buffer's pages are faulted in on first
 * write, and on this VM a 4 KiB page costs again at its first copy (architecture.md, "Fresh
 * memory"), which was paid inside the frozen window. Faulted in on libuv's pool while the
 * checkpoint makes the rest ready. Aligned, so the image writer writes them to the image file
 * with O_DIRECT (image/direct.ts); its hash pool hashes them where they are, on libuv's threads.
 */
export class ChunkBuffers {
  readonly bufs: Buffer[];
  /** Settles once every buffer is faulted in (never rejects). */
  readonly ready: Promise<void>;
  private busy = false;

  constructor(readonly bytes: number) {
    this.bufs = Array.from({ length: BUFFERS }, () => directBuffer(bytes));
    this.ready = Promise.all(this.bufs.map(faultInLater)).then(() => {});
  }

  /** The buffers for one producer at a time; undefined while another holds them. */
  acquire(): Buffer[] | undefined {
    if (this.busy) return undefined;
    this.busy = true;
    return this.bufs;
  }

  release(): void {
    this.busy = false;
  }
}

/**
 * Chunk buffers for a tree expected to store `estimate`: one chunk holds the largest process
 * with a quarter to spare, at least MIN_PREPARED_CHUNK (processes that grew past the guess
 * then take smaller chunks than configured rather than new buffers), at most `chunkBytes`.
 */
export function prepareChunkBuffers(estimate: MemoryEstimate, chunkBytes: number): ChunkBuffers {
  const want = Math.min(chunkBytes, Math.max(MIN_PREPARED_CHUNK, Math.ceil(estimate.largest * 1.25)));
  return new ChunkBuffers(Math.max(PAGE_SIZE, Math.ceil(want / PAGE_SIZE) * PAGE_SIZE));
}

/**
 * Reads the planned pages in chunks of at most `chunkBytes` and hands each to `sink`. Buffers
 * rotate: earlier chunks are still being hashed and written out while the next is read from
 * the process, which smooths over the disk's latency jitter. They are `prepared`'s when given
 * (nothing is allocated while the tree is stopped), else allocated here.
 */
async function producePages(pid: number, vmas: readonly VmaRecord[], sink: (chunk: Buffer) => Promise<void>,
  chunkBytes: number, prepared?: ChunkBuffers, viaMem?: ReadonlyMap<VmaRecord, Uint8Array>, held?: HeldRun): Promise<PageCounts> {
  const counts: PageCounts = { read: 0, held: 0 };
  const stored = vmas.reduce((sum, v) => sum + v.runs.reduce((k, [, count]) => k + count, 0), 0);
  let chunkPages = Math.max(1, Math.min(Math.floor(chunkBytes / PAGE_SIZE), stored));
  const shared = prepared?.acquire();
  let bufs: Buffer[];
  if (shared) {
    bufs = shared;
    chunkPages = Math.min(chunkPages, Math.floor(prepared!.bytes / PAGE_SIZE));
  } else {
    // No bigger than what this process stores: a tree of small processes must not allocate
    // (and zero) BUFFERS full chunks per process. Aligned, as ChunkBuffers.
    bufs = Array.from({ length: BUFFERS }, () => directBuffer(chunkPages * PAGE_SIZE));
  }
  /** Per buffer, the sink calls of its pages not known to be done. */
  const inflight: Array<Array<Promise<void>>> = bufs.map(() => []);
  let cur = 0;
  let buf = bufs[0]!;
  let ranges: number[] = []; // [addr, len] pairs not read yet; they land at page `rangesAt`
  let rangesAt = 0;
  let filled = 0; // pages in buf
  let sentTo = 0; // of them, pages handed to the sink
  let memFd = -1;
  const readPending = (): void => {
    if (ranges.length > 0) native().readMemory(pid, new Float64Array(ranges), buf, rangesAt * PAGE_SIZE);
    ranges = [];
    rangesAt = filled;
  };
  /**
   * Hands the pages read since the last call to the sink; `rotate`, or a full buffer: goes on
   * with the next buffer once every chunk handed from it is hashed and written out. Before a
   * held run (pre-copy: a few pages read here and there between long held runs), the buffer is
   * not rotated: the next pages go after these in the same buffer, and the producer goes on
   * without waiting for the write of a few pages (one wait per dirty page cost 0.1-0.3 ms).
   */
  const flush = async (rotate = true): Promise<void> => {
    readPending();
    if (filled > sentTo) {
      const sent = sink(buf.subarray(sentTo * PAGE_SIZE, filled * PAGE_SIZE));
      // Awaited when its buffer comes round again (or at the end); a chunk written after it
      // may fail first meanwhile, and then this one is not left unobserved.
      sent.catch(() => {});
      inflight[cur]!.push(sent);
      sentTo = filled;
    }
    if (filled === 0 || (!rotate && filled < chunkPages)) return;
    cur = (cur + 1) % BUFFERS;
    buf = bufs[cur]!;
    await Promise.all(inflight[cur]!); // the next buffer must be hashed and written out before it is refilled
    inflight[cur] = [];
    filled = 0;
    sentTo = 0;
    rangesAt = 0;
  };
  try {
    for (const v of vmas) {
      const start = Number(BigInt(v.start));
      const readable = (v.prot & PROT_READ) !== 0;
      const inPlace = viaMem?.get(v);
      for (const [page, count] of v.runs) {
        let done = 0;
        while (done < count) {
          const addr = start + (page + done) * PAGE_SIZE;
          // A stretch the reader holds: named by its pages' digests, not read.
          if (held) {
            const k = held.set.run(addr / PAGE_SIZE, count - done);
            if (k > 0) {
              await flush(false);
              await held.sink(heldRun(held.set, addr / PAGE_SIZE, k));
              counts.held += k;
              done += k;
              continue;
            }
          }
          let n = Math.min(count - done, chunkPages - filled);
          if (held) n = held.set.run(addr / PAGE_SIZE, n, false);
          counts.read += n;
          // A stretch of pages all shared copy-on-write, or all not: the former read in place.
          const shared = inPlace !== undefined && inPlace[page + done] === 1;
          if (inPlace) for (let k = 1; k < n; k++) if ((inPlace[page + done + k] === 1) !== shared) { n = k; break; }
          if (readable && !shared) {
            ranges.push(addr, n * PAGE_SIZE);
            filled += n;
          } else {
            // process_vm_readv cannot read PROT_NONE/write-only pages; /proc/PID/mem can, and
            // reads shared pages without unsharing them.
            readPending();
            if (memFd < 0) memFd = openSync(`/proc/${pid}/mem`, 'r');
            const got = readSync(memFd, buf, filled * PAGE_SIZE, n * PAGE_SIZE, addr);
            if (got !== n * PAGE_SIZE) throw new Error(`short read of memory of pid ${pid} at ${hex(addr)}`);
            filled += n;
            rangesAt = filled;
          }
          done += n;
          if (filled === chunkPages) await flush();
        }
      }
    }
    await flush();
    await Promise.all(inflight.flat());
    return counts;
  } finally {
    // On a failure the chunks still in flight fail too; their rejections are this one's (and
    // the write as a whole fails: no other producer takes the buffers after).
    for (const p of inflight.flat()) p.catch(() => {});
    if (memFd >= 0) closeSync(memFd);
    if (shared) prepared!.release();
  }
}

/**
 * The areas children map that their parent maps nothing over any more (it unmapped them after
 * forking them), which they may lend pages through a temporary area of the parent's
 * (image/cow.ts `lendableUnmapped`): the first child's (in tree order) area at each address,
 * and none that overlaps another one taken (restore holds them all at once). Also for
 * descendants further down (dump/cow-branches.ts), `children` then all of them in tree order.
 */
export function unmappedAreas(parent: PlannedParent, children: readonly PlannedChild[]): VmaRecord[] {
  const taken = parent.vmas.map((v) => [BigInt(v.start), BigInt(v.end)] as const);
  const sorted = taken.length;
  const overlaps = (s: bigint, e: bigint): boolean => {
    // The parent's areas, in address order and disjoint as maps lists them: a binary search.
    let lo = 0;
    let hi = sorted - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const [a, b] = taken[mid]!;
      if (e <= a) hi = mid - 1;
      else if (s >= b) lo = mid + 1;
      else return true;
    }
    // And the areas taken here so far (few).
    for (let i = sorted; i < taken.length; i++) if (taken[i]![0] < e && s < taken[i]![1]) return true;
    return false;
  };
  const out: VmaRecord[] = [];
  const starts = new Set<string>();
  for (const c of children) {
    for (const v of c.plan.vmas) {
      if (v.runs.length === 0 || starts.has(v.start) || !lendableUnmapped(v)) continue;
      const s = BigInt(v.start);
      const e = BigInt(v.end);
      if (overlaps(s, e)) continue;
      starts.add(v.start);
      taken.push([s, e]);
      out.push(v);
    }
  }
  return out;
}

/** A planned child of a parent, for shareAmongSiblings. */
export interface PlannedChild {
  pid: number;
  plan: Pick<MemoryPlan, 'vmas' | 'pagesBytes' | 'pagemaps'>;
}

/**
 * Pages that only children share (image/cow.ts, `lent`): after fork(2) the parent wrote its
 * copy of a page, so the children, none of which wrote theirs, still share one page frame
 * that the parent no longer maps. For each area that a parent's children (all planned, all
 * stopped) map as the same private mapping as the parent (`inheritable`), a page that two or
 * more of them store with the same frame (and none inherits from the parent, nor the parent
 * from its own) stays stored by the first of them only, marked `lent`; the others record it as
 * inherited (`cow`). Restore writes it into the parent before it forks them and gives the
 * parent its own page back after. Likewise for an area the children map alike that the parent
 * maps nothing over any more (unmappedAreas: it unmapped it after forking them), which restore
 * gives the parent for a moment, as the first of them maps it (restore/cow.ts CowPlan.temporary). One frame per page: the first child (in tree order) that
 * shares its page there with any process picks it; children sharing another frame there keep
 * theirs stored. Linear in children × pages. Updates the children's `pagesOffset` and
 * `pagesBytes`; returns the pids whose plan changed.
 */
export function shareAmongSiblings(parent: PlannedParent, children: readonly PlannedChild[]): number[] {
  if (children.length < 2) return [];
  const changed = new Set<number>();
  const candidates = parent.vmas.filter(lendsThrough);
  const unmapped = unmappedAreas(parent, children);
  for (const theirs of [...candidates, ...unmapped]) {
    const kids = children.flatMap((c) => {
      const v = c.plan.vmas.find((a) => a.start === theirs.start);
      return v && v.runs.length > 0 && inheritable(theirs, v) ? [{ c, v }] : [];
    });
    if (kids.length < 2) continue;
    const npages = Number((BigInt(theirs.end) - BigInt(theirs.start)) / BigInt(PAGE_SIZE));
    const first = Number(BigInt(theirs.start) / BigInt(PAGE_SIZE));
    // Not where the parent inherits from its own parent, nor where a child inherits the
    // parent's page: restore forks every such child while the parent holds the lent page.
    const excluded = pageSet(npages, unmapped.includes(theirs) ? [] : theirs.cow ?? [], ...kids.map((k) => k.v.cow ?? []));
    const { lent, moved } = matchFrames(npages, first, excluded, kids.map(({ c, v }) => ({ pid: c.pid, v, pagemaps: c.plan.pagemaps })));
    kids.forEach(({ c, v }, k) => {
      if (applyMatch(v, npages, lent[k]!, moved[k]!)) changed.add(c.pid);
    });
  }
  for (const c of children) if (changed.has(c.pid)) repack(c.plan);
  return [...changed];
}

/**
 * Whether a process's area `theirs` may hold pages its descendants inherit or lend through it
 * (shareAmongSiblings, cow-branches.ts): a private anonymous or file mapping, no memfd or
 * deleted file, not locked (a locked area's pages cannot be dropped again: madvise(2)
 * MADV_DONTNEED fails on one).
 */
export function lendsThrough(theirs: VmaRecord): boolean {
  if (theirs.kind !== 'anon' && theirs.kind !== 'file') return false;
  const special = theirs as VmaRecord & { memfd?: unknown; ghost?: unknown };
  if (special.memfd !== undefined || special.ghost !== undefined) return false;
  return !theirs.vmflags.includes('lo') && !theirs.vmflags.includes('lf');
}

/** One area of one process whose pages may be matched by frame (matchFrames). */
export interface FrameSharer {
  pid: number;
  v: VmaRecord;
  /** Pagemap entries planMemory kept, by area start (the tree is stopped since). */
  pagemaps?: ReadonlyMap<string, Buffer> | undefined;
}

/**
 * The pagemap entries of a sharer's area (`npages` pages from page number `first`):
 * planMemory's where it kept them, else read now into `buffer` (undefined: a short read).
 */
export function pagemapOf({ pid, v, pagemaps }: FrameSharer, npages: number, first: number, buffer: Buffer): Buffer | undefined {
  const kept = pagemaps?.get(v.start);
  if (kept?.length === npages * 8) return kept;
  const fd = openSync(`/proc/${pid}/pagemap`, 'r');
  try {
    return readSync(fd, buffer, 0, npages * 8, first * 8) === npages * 8 ? buffer.subarray(0, npages * 8) : undefined;
  } finally {
    closeSync(fd);
  }
}

/**
 * Matches the stored pages of one area (`npages` pages from page number `first`) the sharers
 * hold by their page frame (pagemap, root only; a page mapped by one process only has none):
 * one frame per page, picked by the first sharer (in the order given) that shares its page
 * there with any other; the others with that frame give their page up. `excluded` pages take
 * no part. Returns, per sharer, the pages it lends (`lent`) and those it gives up (`moved`).
 * The entries are planMemory's where it kept them, else read now.
 */
export function matchFrames(npages: number, first: number, excluded: Uint8Array, sharers: readonly FrameSharer[]): { lent: Uint8Array[]; moved: Uint8Array[] } {
  const frame = new Float64Array(npages); // the frame picked at each page, 0: none yet
  const lender = new Int32Array(npages).fill(-1);
  const lent = sharers.map(() => new Uint8Array(npages));
  const moved = sharers.map(() => new Uint8Array(npages));
  let buffer: Buffer | undefined;
  sharers.forEach((s, k) => {
    const entries = pagemapOf(s, npages, first, buffer ??= Buffer.allocUnsafe(npages * 8));
    if (!entries) return;
    const frames = sharedFrames(entries);
    const stored = pageSet(npages, s.v.runs);
    for (let i = 0; i < npages; i++) {
      const f = frames[i]!;
      if (f === 0 || !stored[i] || excluded[i]) continue;
      if (lender[i]! < 0) {
        lender[i] = k;
        frame[i] = f;
      } else if (frame[i] === f) {
        lent[lender[i]!]![i] = 1;
        moved[k]![i] = 1;
      }
    }
  });
  return { lent, moved };
}

/**
 * Records in area `v` (of `npages` pages) what matchFrames found for it: the pages it lends
 * (`lent`), and those it gives up, inherited instead (`cow`, no longer stored). Returns
 * whether the area changed.
 */
export function applyMatch(v: VmaRecord, npages: number, lent: Uint8Array, moved: Uint8Array): boolean {
  const gives = runsOf(lent);
  const takes = runsOf(moved);
  if (gives.length === 0 && takes.length === 0) return false;
  if (gives.length > 0) v.lent = gives;
  if (takes.length > 0) {
    const stored = pageSet(npages, v.runs);
    for (let i = 0; i < npages; i++) if (moved[i]) stored[i] = 0;
    v.runs = runsOf(stored);
    v.cow = runsOf(pageSet(npages, v.cow ?? [], takes));
  }
  return true;
}

/** Lays a plan's stored pages back to back in its pages entry again (`pagesOffset`, `pagesBytes`). */
export function repack(plan: Pick<MemoryPlan, 'vmas' | 'pagesBytes'>): void {
  let at = 0;
  for (const v of plan.vmas) {
    v.pagesOffset = at;
    at += v.runs.reduce((k, [, count]) => k + count, 0) * PAGE_SIZE;
  }
  plan.pagesBytes = at;
}
