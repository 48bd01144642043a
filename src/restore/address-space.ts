/**
 * Rebuilds a task's address space inside a freshly exec'd stub (DESIGN.md §3, steps 3–6, 9).
 *
 * 1. A gadget area (a `syscall` instruction + scratch pages) is mapped where neither the stub
 *    nor the dumped layout has anything; injection moves there.
 * 2. Everything of the stub is unmapped except the gadget and the kernel's [vvar],
 *    [vvar_vclock] and [vdso], which are mremap()ed (whole, one at a time, via a free
 *    staging area so no move lands on another piece) to their dumped addresses.
 * 3. Every dumped area is mapped with MAP_FIXED and its final protection; stored pages are
 *    written through /proc/PID/mem, which also writes read-only pages.
 * 4. prctl(PR_SET_MM_MAP) sets code/data/brk/stack/arg/env/auxv and the exe file — possible
 *    only now that the stub's own executable is unmapped (EBUSY otherwise).
 * At the very end `dropGadget` unmaps the gadget through a `syscall` inside the restored vDSO
 * (or the process's own code, for a process that had unmapped its vDSO: this kernel's special
 * mappings the image lacks are unmapped in step 2).
 */
import { constants as osConstants } from 'node:os';
import {
  MADVISE_BY_VMFLAG, MLOCK_ONFAULT, MAP_ANONYMOUS, MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_GROWSDOWN, MAP_PRIVATE,
  MAP_SHARED, MREMAP_FIXED, MREMAP_MAYMOVE, PAGE_SIZE, PR_SET_MM, PR_SET_MM_MAP, PRCTL_MM_MAP_SIZE,
  MADV_GUARD_INSTALL, MADV_GUARD_REMOVE, PROT_EXEC, PROT_READ, PROT_WRITE, SYS, SYSCALL_INSN,
} from '../arch/x86-64.js';
import { describeCause, errnoName, FerryError } from '../errors.js';
import type { ChunkSource } from '../image/chunks.js';
import { big, VDSO_ENTRY, type TaskRecord, type VmaRecord } from '../image/records.js';
import { parseMaps, type Vma } from '../proc/maps.js';
import { dropGadgetIgnoringTrap, ignoredTrap } from './ignored-trap.js';
import { AT_FDCWD } from '../proc/fcntl.js';
import { listFds, readProcText } from '../proc/read.js';
import { parseSmaps } from '../proc/smaps.js';
import { OPEN_HOW_SIZE, openHow, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS } from '../files/confined.js';
import { restoredGhost } from '../files/deleted.js';
import { restoredLinked } from '../files/linked.js';
import { createMemfd, restoredMemfd, type MappedSpecialFile } from '../files/memfd.js';
import { closeSync, ftruncateSync, openSync, readlinkSync, statSync, writeSync, type BigIntStats } from 'node:fs';
import { injectedError, Scratch, type Tracee } from '../task/tracee.js';
import { vdsoProxy } from './vdso.js';
import { pagesToDrop, storedParts } from './cow.js';

const MADV_DONTNEED = 4;
/** clock_getres(2) clock id. */
const CLOCK_MONOTONIC = 1;

/**
 * Code of the gadget page: `syscall` (every injection runs it), followed by a pause() loop
 * where a thread created by an injected clone3 starts (it resumes after the `syscall`) and
 * waits, touching no memory, until it is seized:
 *   G+0 syscall; G+2 mov $34,%eax; G+7 syscall; G+9 jmp G+2
 * and, at G+16 (FORK_GADGET), the `syscall` a process is forked through (restore/tree.ts, a
 * child that inherits its rebuilt parent's pages): the child (the one return of 0) asks for
 * SIGKILL when its parent dies, then waits in the loop if its parent is still the one in r12,
 * else exits, as the restore stub's own child does (native/helpers/stub.c):
 *   G+16 syscall; G+18 test %rax,%rax; G+21 jnz G+2; G+23 prctl(PR_SET_PDEATHSIG, SIGKILL);
 *   G+40 getppid(); G+47 cmp %r12,%rax; G+50 je G+2; G+52 exit_group(0); G+61 jmp G+2
 */
export const GADGET_CODE = Buffer.from([
  0x0f, 0x05, 0xb8, 0x22, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xeb, 0xf7, 0x90, 0x90, 0x90, 0x90, 0x90,
  0x0f, 0x05, 0x48, 0x85, 0xc0, 0x75, 0xeb,
  0xb8, 0x9d, 0x00, 0x00, 0x00, 0xbf, 0x01, 0x00, 0x00, 0x00, 0xbe, 0x09, 0x00, 0x00, 0x00, 0x0f, 0x05,
  0xb8, 0x6e, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x4c, 0x39, 0xe0, 0x74, 0xce,
  0xb8, 0xe7, 0x00, 0x00, 0x00, 0x31, 0xff, 0x0f, 0x05, 0xeb, 0xc3,
]);
/** Offset of the fork `syscall` in GADGET_CODE. */
export const FORK_GADGET = 16;

/** Gadget area: one code page (`syscall`) and scratch pages for syscall arguments. */
const GADGET_PAGES = 8;
const GADGET_SIZE = GADGET_PAGES * PAGE_SIZE;
const O_RDONLY = 0, O_RDWR = 2;
const SPECIAL = new Set(['vdso', 'vvar', 'vvar_vclock']);

type Range = readonly [bigint, bigint];
/** Above every user address (57-bit addresses included): the end of the last gap. */
const GAPS_END = 1n << 57n;

/** Lowest page-aligned range of `size` bytes at or above `from` that overlaps none of `taken`. */
export function findFree(taken: readonly Range[], size: bigint, from: bigint): bigint {
  const sorted = [...taken].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  let at = from;
  for (const [s, e] of sorted) {
    if (e <= at) continue;
    if (s >= at + size) break;
    at = e;
  }
  return at;
}

/** Finds the stub's own `syscall` instruction (its only code) and points injection at it. */
export function useStubGadget(t: Tracee, stub: readonly Vma[]): void {
  for (const v of stub.filter((m) => m.exec && !m.path.startsWith('['))) {
    const code = t.readMem(v.start, Number(v.end - v.start));
    const off = code.indexOf(SYSCALL_INSN);
    if (off >= 0) {
      t.gadget = v.start + BigInt(off);
      return;
    }
  }
  throw new Error(`restore stub of pid ${t.pid} has no syscall instruction`);
}

/** State kept between the steps of one task's rebuild. */
export interface AddressSpace {
  scratch: Scratch;
  gadgetArea: bigint;
}

/**
 * Steps 1–2: gadget in place, stub gone, vDSO moved to the dumped addresses. The task is a
 * fresh stub, or (a child that inherits pages copy-on-write, restore/cow.ts) a fork of its
 * rebuilt parent: then `keep` lists its areas fork() already made as they must be, left in
 * place, and everything else the parent had goes. Injection runs through `t.gadget`, a
 * `syscall` instruction in the current layout (the stub's own, or the parent's gadget).
 * `imageVdso`: the image's vDSO (vdso.bin); when this kernel's differs, this kernel's stays
 * out of the image's way and the image's is proxied (vdso.ts). `avoid`: areas the task will
 * hold for a moment (holdTemporary), which the gadget and staging areas stay out of too.
 */
export function clearStub(t: Tracee, task: TaskRecord, keep: readonly VmaRecord[] = [], imageVdso?: { label: string; bytes: Buffer },
  avoid: readonly VmaRecord[] = []): AddressSpace {
  const stub = parseMaps(readProcText(t.pid, 'maps'));
  if (t.gadget === 0n) useStubGadget(t, stub);
  const dumped: Range[] = [...task.vmas, ...avoid].map((v) => [big(v.start), big(v.end)]);
  const current: Range[] = stub.map((v) => [v.start, v.end]);
  const gadgetArea = findFree([...dumped, ...current], BigInt(GADGET_SIZE), 0x10000n);
  t.syscall(SYS.mmap, gadgetArea, GADGET_SIZE, PROT_READ | PROT_WRITE | PROT_EXEC,
    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  t.writeMem(gadgetArea, GADGET_CODE);
  t.gadget = gadgetArea;
  const scratch = new Scratch(t, gadgetArea + BigInt(PAGE_SIZE), GADGET_SIZE - PAGE_SIZE);

  const specials = stub.filter((v) => v.path === '[vdso]' || v.path === '[vvar]' || v.path === '[vvar_vclock]');
  // Another kernel's vDSO in the image: this one's stays where it lands below (vdso.ts).
  const ownVdso = specials.find((v) => v.path === '[vdso]');
  const imageArea = task.vmas.find((d) => d.kind === 'vdso');
  const proxied = imageVdso !== undefined && ownVdso !== undefined && imageArea !== undefined
    && !t.readMem(ownVdso.start, Number(ownVdso.end - ownVdso.start)).equals(imageVdso.bytes);
  const others = stub.filter((v) => !specials.includes(v) && v.path !== '[vsyscall]');
  if (keep.length === 0) {
    t.syscalls(others.map((v) => [SYS.munmap, v.start, v.end - v.start] as const));
  } else {
    // Everything between the ranges kept (gadget, special mappings, inherited areas) that
    // holds an area goes, holes and all: one munmap(2) per gap, however many areas it holds.
    const kept: Range[] = [[gadgetArea, gadgetArea + BigInt(GADGET_SIZE)] as Range, ...specials.map((v): Range => [v.start, v.end]),
      ...keep.map((v): Range => [big(v.start), big(v.end)])].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    const calls: Array<readonly [number, bigint, bigint]> = [];
    let from = 0n;
    for (const [s, e] of [...kept, [GAPS_END, GAPS_END] as Range]) {
      const inGap = others.filter((v) => v.end > from && v.start < s);
      if (inGap.length > 0) {
        const lo = inGap.reduce((m, v) => (v.start < m ? v.start : m), s);
        const hi = inGap.reduce((m, v) => (v.end > m ? v.end : m), from);
        const a = lo > from ? lo : from;
        const b = hi < s ? hi : s;
        // None between two kept ranges that touch: an area spanning both (a staged one the
        // kernel merged from two adjacent ones, migrate/staging.ts) is no area of the gap.
        if (b > a) calls.push([SYS.munmap, a, b - a]);
      }
      if (e > from) from = e;
    }
    t.syscalls(calls);
  }
  const inPlace = (v: Vma): boolean => task.vmas.some((d) => d.kind === v.path.slice(1, -1) && big(d.start) === v.start && big(d.end) === v.end);
  if (keep.length > 0 && !proxied && specials.every(inPlace)) {
    checkSpecials(task, specials);
    return { scratch, gadgetArea };
  }

  // Move each special mapping to a staging area first, then to its dumped address.
  const total = specials.reduce((sum, v) => sum + (v.end - v.start), 0n);
  const staging = findFree([...dumped, ...current, [gadgetArea, gadgetArea + BigInt(GADGET_SIZE)]], total, 0x100000000n);
  const moves: Array<readonly [number, ...bigint[]]> = [];
  const finals: Array<readonly [number, ...bigint[]]> = [];
  // A process that unmapped its vDSO has none in the image: this kernel's special mappings
  // the image lacks go too, once moved out of the way.
  const dropped: Array<readonly [number, ...bigint[]]> = [];
  let at = staging;
  let ownVdsoAt = 0n;
  for (const v of specials) {
    const name = v.path.slice(1, -1);
    const target = task.vmas.find((d) => d.kind === name);
    const size = v.end - v.start;
    if (v === ownVdso) ownVdsoAt = at;
    moves.push([SYS.mremap, v.start, size, size, BigInt(MREMAP_MAYMOVE | MREMAP_FIXED), at]);
    at += size;
    if (proxied) continue; // they stay together in the staging area, free of the image's areas
    if (!target && imageArea === undefined) {
      dropped.push([SYS.munmap, at - size, size]);
      continue;
    }
    if (!target) throw new FerryError('EKERNEL', `the image has no ${v.path} mapping but this kernel maps one: restore needs the same kernel build`);
    if (big(target.end) - big(target.start) !== size) {
      throw new FerryError('EKERNEL', `${v.path} is ${size} bytes here but ${big(target.end) - big(target.start)} in the image: restore needs the same kernel build`);
    }
    finals.push([SYS.mremap, at - size, size, size, BigInt(MREMAP_MAYMOVE | MREMAP_FIXED), big(target.start)]);
  }
  if (!proxied) checkSpecials(task, specials);
  t.syscalls([...moves, ...finals, ...dropped]);
  if (proxied) mapVdsoProxy(t, task, imageArea!, imageVdso!, ownVdsoAt, Number(ownVdso!.end - ownVdso!.start));
  return { scratch, gadgetArea };
}

/** Refuses an image without one of the special mappings this kernel makes, or with one more. */
function checkSpecials(task: TaskRecord, specials: readonly Vma[]): void {
  const missing = task.vmas.filter((d) => SPECIAL.has(d.kind) && !specials.some((v) => v.path === `[${d.kind}]`));
  if (missing.length > 0) {
    throw new FerryError('EKERNEL', `the image has a [${missing[0]!.kind}] mapping this kernel does not make: restore needs the same kernel build`);
  }
}

/**
 * Maps the proxy of the image's vDSO (vdso.ts) where the image had its [vdso]: a private
 * copy of the image's bytes with a jump at each function into this kernel's vDSO, now at
 * `ownAt` (`ownSize` bytes). No thread may have been stopped inside the old vDSO's code.
 */
function mapVdsoProxy(t: Tracee, task: TaskRecord, area: VmaRecord, image: { label: string; bytes: Buffer }, ownAt: bigint, ownSize: number): void {
  const start = big(area.start), end = big(area.end);
  if (BigInt(image.bytes.length) !== end - start) {
    throw new FerryError('EIMAGE', `image ${image.label}: ${VDSO_ENTRY} is ${image.bytes.length} bytes but pid ${task.pid}'s [vdso] area is ${end - start}`);
  }
  for (const th of task.threads) {
    const ip = big(th.regs.rip);
    if (ip >= start && ip < end) {
      throw new FerryError('EKERNEL', `thread ${th.tid} of pid ${task.pid} was stopped inside the vDSO of the checkpointing kernel, which differs from this one's: `
        + 'checkpoint it again (it is rarely there) or restore on the same kernel build');
    }
  }
  const proxy = vdsoProxy(image.label, image.bytes, t.readMem(ownAt, ownSize), ownAt);
  t.syscall(SYS.mmap, start, end - start, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  t.writeMem(start, proxy);
  t.syscall(SYS.mprotect, start, end - start, PROT_READ | PROT_EXEC);
}

/**
 * The calls that map area `v` at its address with mmap(2) `flags` (from `fd` at `offset` for a
 * file), its protection and its VmFlags' madvise(2) advice.
 */
function areaCalls(v: VmaRecord, flags: number, fd: number, offset: bigint): Array<readonly [number, ...Array<bigint | number>]> {
  const start = big(v.start);
  const len = big(v.end) - start;
  // A private area that was once writable carries VM_ACCOUNT ('ac'); mapping it writable
  // first gives it the same flag, so it does not merge with neighbours it was apart from.
  const reprotect = !v.shared && v.vmflags.includes('ac') && (v.prot & PROT_WRITE) === 0;
  const calls: Array<readonly [number, ...Array<bigint | number>]> = [[SYS.mmap, start, len, reprotect ? v.prot | PROT_WRITE : v.prot, flags, fd, offset]];
  if (reprotect && v.kind === 'anon') {
    // mprotect(2) takes VM_ACCOUNT back from an anonymous area that never had a page (no
    // anon_vma): one written (clock_getres stores its answer there, a kernel write) and
    // dropped again gives the new area one, as the old had, whose pages were all zero and so
    // not stored (a locked area made PROT_NONE, a guard page of a touched stack). Dropped over
    // the whole area, which is new: with transparent huge pages on, that write may have
    // faulted in a whole huge page.
    calls.push([SYS.clock_getres, CLOCK_MONOTONIC, start], [SYS.madvise, start, len, MADV_DONTNEED]);
  }
  if (reprotect) calls.push([SYS.mprotect, start, len, v.prot]);
  calls.push(...adviceCalls(v));
  return calls;
}

/** The madvise(2) calls that give area `v` the advice its VmFlags record. */
function adviceCalls(v: VmaRecord): Array<readonly [number, bigint, bigint, number]> {
  const start = big(v.start), len = big(v.end) - start;
  return v.vmflags.flatMap((f) => {
    const advice = MADVISE_BY_VMFLAG[f];
    return advice === undefined ? [] : [[SYS.madvise, start, len, advice] as const];
  });
}

/**
 * Maps in the rebuilt parent `t` the temporary areas its children lend pages through
 * (restore/cow.ts CowPlan.temporary: private anonymous areas it does not map itself), each at
 * its address as the lender maps it, so that the children forked next inherit them with the
 * lent pages; returns what unmaps them again once they are forked, leaving the parent's layout
 * exactly its own. MAP_FIXED_NOREPLACE: the range is free by construction (the parent's image
 * maps nothing over it, checkInherited; its gadget and staging areas are kept out of it,
 * clearStub's `avoid`), and nothing of the parent is ever replaced.
 */
export function holdTemporary(t: Tracee, pid: number, areas: readonly VmaRecord[]): (() => void) | undefined {
  if (areas.length === 0) return undefined;
  const each = areas.map((v) => areaCalls(v, (mmapFlags(v) & ~MAP_FIXED) | MAP_FIXED_NOREPLACE, -1, 0n));
  const unmap = (upTo: number): Array<readonly [number, bigint, bigint]> =>
    areas.slice(0, upTo).map((v) => [SYS.munmap, big(v.start), big(v.end) - big(v.start)] as const);
  // The mmaps first, as a guarded batch: after one that failed nothing runs, and only those
  // before it are unmapped again (what holds its range is not ours to touch).
  const mapped = t.trySyscalls(each.map((c) => c[0]!), { guard: each.length });
  const unheld = mapped.findIndex((r, i) => r !== big(areas[i]!.start));
  let failure = unheld < 0 ? undefined
    : `${areas[unheld]!.start} (mmap: ${mapped[unheld]! < 0n ? errnoName(mapped[unheld]!) : `landed at 0x${mapped[unheld]!.toString(16)}`})`;
  if (failure === undefined) {
    const rest = each.flatMap((c, i) => c.slice(1).map((call) => [i, call] as const));
    const results = rest.length > 0 ? t.trySyscalls(rest.map(([, c]) => c)) : new BigInt64Array(0);
    const failed = results.findIndex((r) => r < 0n);
    if (failed >= 0) {
      const [i, call] = rest[failed]!;
      const name = call[0] === SYS.madvise ? 'madvise' : call[0] === SYS.clock_getres ? 'clock_getres' : 'mprotect';
      failure = `${areas[i]!.start} (${name}: ${errnoName(results[failed]!)})`;
    }
  }
  if (failure !== undefined) {
    t.trySyscalls(unmap(unheld < 0 ? areas.length : unheld));
    throw new FerryError('EMAP', `cannot hold the pages its children lend at ${failure} in pid ${pid}: nothing was restored; retry, and report it if it persists`, { pid });
  }
  return releaseAreas(t, pid, areas);
}

/**
 * What unmaps the areas `areas` of `t` (`pid`) that it holds only while its children are
 * forked: the temporary ones (holdTemporary) and those it relays, kept from its parent at
 * fork (restore/cow.ts CowPlan.relayed); undefined when there are none.
 */
export function releaseAreas(t: Tracee, pid: number, areas: readonly VmaRecord[]): (() => void) | undefined {
  if (areas.length === 0) return undefined;
  const all = areas.map((v) => [SYS.munmap, big(v.start), big(v.end) - big(v.start)] as const);
  return () => {
    t.trySyscalls(all).forEach((r, i) => {
      if (r < 0n) throw new FerryError('EMAP', `cannot unmap the pages lent at 0x${all[i]![1].toString(16)} in pid ${pid} (munmap): ${errnoName(r)}`, { pid });
    });
  };
}

function mmapFlags(v: VmaRecord): number {
  let flags = MAP_FIXED | (v.shared ? MAP_SHARED : MAP_PRIVATE);
  if (v.kind === 'anon') flags |= MAP_ANONYMOUS;
  if (v.vmflags.includes('gd')) flags |= MAP_GROWSDOWN;
  return flags;
}

/**
 * Shared anonymous memory objects already restored, by shmem id: the first area that holds
 * each (in the first process that maps it), which the others map through
 * /proc/PID/map_files. One per restore, shared by every process's rebuild.
 */
export type SharedObjects = Map<string, SharedObject>;

/**
 * A restored shared object: the first area that maps it (in process `pid`), that area's
 * offset in the original object, and `base`/`size`: which original offset is offset 0 of the
 * restored object, and its size (absent: the area's own offset and length, the object made by
 * that area's anonymous mmap).
 */
export interface SharedObject {
  pid: number;
  start: bigint;
  end: bigint;
  offset: bigint;
  base?: bigint;
  size?: bigint;
}

/**
 * The extent of each shared anonymous object over every area of the image that maps it, by
 * shmem id: [lowest offset, highest end] in the original object. An object mapped through
 * several windows (an area split by munmap, or mapped differently by two processes) is made
 * that big, so that every window finds its pages in it.
 */
export function sharedExtents(tasks: readonly TaskRecord[]): Map<string, readonly [bigint, bigint]> {
  const out = new Map<string, readonly [bigint, bigint]>();
  for (const task of tasks) {
    for (const v of task.vmas) {
      if (!v.shmem) continue;
      // Only shared anonymous memory is one (dump/memory.ts): an object whose first area maps
      // a file would have its other windows open that file through /proc/PID/map_files for
      // writing, as root (joinShared), whatever file-access.ts was shown.
      if (v.kind !== 'anon' || !v.shared || v.file !== undefined || v.sysv !== undefined || isSpecialFile(v)) {
        throw new FerryError('EIMAGE', `image: pid ${task.pid} area ${v.start}-${v.end} names shared memory ${v.shmem.id.slice(0, 64)} but is not a shared `
          + 'anonymous mapping: refused (an edited image: a checkpoint gives the id to shared anonymous memory only)', { pid: task.pid });
      }
      const lo = big(v.shmem.offset);
      const hi = lo + big(v.end) - big(v.start);
      const was = out.get(v.shmem.id);
      const extent = was ? [lo < was[0] ? lo : was[0], hi > was[1] ? hi : was[1]] as const : [lo, hi] as const;
      // No bigger than an address space: an edited image asks for no more (before anything exists).
      if (extent[1] - extent[0] > MAX_SHARED_OBJECT) {
        throw new FerryError('EIMAGE', `image: pid ${task.pid} maps shared memory ${v.shmem.id} at offset ${v.shmem.offset}, which makes it `
          + `${extent[1] - extent[0]} bytes with its other windows: refused (an edited image)`, { pid: task.pid });
      }
      out.set(v.shmem.id, extent);
    }
  }
  return out;
}

/**
 * Whether area `v` maps its file shared and writable, or could be made so (VmFlags 'mw',
 * kept for shared file mappings only: dump/memory.ts): the file is then opened for writing
 * to map it, as the original was (mmap(2) leaves VM_MAYWRITE off a shared mapping of a file
 * opened read-only, and mprotect(PROT_WRITE) then fails with EACCES). For an image no
 * trusted key signed, such a file must be one the process's credentials could open for
 * writing (restore/file-access.ts checkMappedAccess).
 */
export function sharedWritable(v: Pick<VmaRecord, 'shared' | 'prot' | 'vmflags'>): boolean {
  return v.shared && ((v.prot & PROT_WRITE) !== 0 || v.vmflags.includes('mw'));
}

/** The largest shared anonymous object restore makes: a 47-bit address space. */
const MAX_SHARED_OBJECT = 1n << 47n;

/**
 * Refuses an image that stores pages for a shared mapping of a file (MAP_SHARED, kind
 * 'file'), one line naming the pid and the area. Restore writes stored pages through
 * /proc/PID/mem into the mapping, and in a shared file mapping that writes the file itself:
 * an edited image could make restore write its bytes into any file of the node. A checkpoint
 * never stores them (the data is in the file). A memfd's are the exception: they go into the
 * memfd restore creates (mapSpecialFile), never into a file of the node. To be called with
 * the other checks, before any process is created; mapAreas checks again.
 */
export function checkSharedFilePages(task: TaskRecord): void {
  for (const v of task.vmas) {
    if (v.kind !== 'file' || !v.shared || v.runs.length === 0 || (v as MappedSpecialFile).memfd !== undefined) continue;
    throw new FerryError('EIMAGE', `image: pid ${task.pid} area ${v.start}-${v.end} is a shared mapping of ${v.file?.path ?? 'a file'} `
      + 'with pages stored, which restore would write into the file: refused (an edited image: a checkpoint never stores them)',
    { pid: task.pid, ...(typeof v.file?.path === 'string' ? { path: v.file.path } : {}) });
  }
}

/**
 * Refuses a task whose stored pages would be read from beyond its pages entry (`size` bytes,
 * the entry's size in the manifest): they would come from whatever follows it in the image.
 * validateTask holds every area's runs within the area and its pages within the task's
 * `pagesBytes`; this holds `pagesBytes` to the entry, and the areas to consecutive ranges of
 * it in their order, as a checkpoint writes them: the entry is then read front to back, each
 * chunk read and verified once (image/chunks.ts), and no area reads another's pages. Before
 * anything of the task is mapped.
 */
export function checkPagesEntry(task: TaskRecord, size: number): void {
  if (task.pagesBytes !== size) {
    throw new FerryError('EIMAGE', `image: pid ${task.pid} records ${task.pagesBytes} bytes of stored pages, but its entry `
      + `tasks/${task.pid}/pages.bin has ${size}: refused (an edited image)`, { pid: task.pid });
  }
  let at = 0;
  task.vmas.forEach((v, i) => {
    if (v.runs.length === 0) return;
    if (v.pagesOffset !== at) {
      throw new FerryError('EIMAGE', `image: pid ${task.pid} vmas[${i}] has its pages at ${v.pagesOffset} in tasks/${task.pid}/pages.bin, `
        + `but the areas before it end at ${at}: refused (an edited image; a checkpoint stores them back to back)`, { pid: task.pid });
    }
    at += v.runs.reduce((k, [, count]) => k + count, 0) * PAGE_SIZE;
  });
  if (at !== size) {
    throw new FerryError('EIMAGE', `image: pid ${task.pid} stores ${at} bytes of pages in its areas, but records ${size}: refused (an edited image)`,
      { pid: task.pid });
  }
}

/**
 * Step 3: map every dumped area and write its stored pages from the image, each chunk of
 * `pages` verified against the manifest (image.pages()): all of them once the last is
 * written, before anything else of the task is restored. The areas in `lazy` are mapped but
 * not written (restore/lazy.ts serves them). `opened`, for an untrusted image: the files it
 * maps are judged as opened (OpenedCheck), those for writing opened with no symlink followed.
 */
export function mapAreas(t: Tracee, as: AddressSpace, task: TaskRecord,
  pages: ChunkSource, chunkBytes: number, shared: SharedObjects, controllerPidfd?: number, inherited?: Inherited,
  extents?: ReadonlyMap<string, readonly [bigint, bigint]>, lazy?: ReadonlySet<VmaRecord>, opened?: OpenedCheck): number {
  checkSharedFilePages(task);
  checkPagesEntry(task, pages.size);
  const kept = new Set(inherited?.keep ?? []);
  // Areas kept from the parent (clearStub) are in place with the parent's pages, and its guard
  // pages (fork copies them): those go first (a write to a guard page fails), then the pages
  // the child had not are dropped again before its own are written over the others.
  if (inherited && kept.size > 0) unguardKept(t, task, inherited);
  if (inherited && kept.size > 0) dropPages(t, task, inherited);
  // Staged areas were mapped read-write with no advice: the recorded advice (keepable areas
  // are read-write, accountable, neither locked nor growing down: staging.ts).
  if (inherited?.staged === true) adviseKept(t, task, inherited.keep);
  const all = task.vmas.filter((v) => !SPECIAL.has(v.kind) && v.kind !== 'vsyscall' && v.kind !== 'aio' && !kept.has(v));
  // Areas of a shared object another area already created are mapped after the others.
  const firsts = new Set<string>();
  const joins = all.filter((v) => {
    if (!v.shmem) return false;
    if (shared.has(v.shmem.id) || firsts.has(v.shmem.id)) return true;
    firsts.add(v.shmem.id);
    return false;
  });
  // Memfds and deleted files are mapped one by one afterwards, from the restored file.
  const specials = all.filter((v) => isSpecialFile(v));
  // The first window of a shared object that other windows of it lie beyond: made with
  // the whole object (makeShared), one by one afterwards.
  const wide = all.filter((v) => {
    if (!v.shmem || joins.includes(v)) return false;
    const e = extents?.get(v.shmem.id);
    return e !== undefined && (e[0] !== big(v.shmem.offset) || e[1] - e[0] !== big(v.end) - big(v.start));
  });
  // System V segments are attached (shmat) one by one afterwards.
  const areas = all.filter((v) => !joins.includes(v) && !specials.includes(v) && !v.sysv && !wide.includes(v));
  // Open each mapped file once (in the task: mmap needs a descriptor of its own).
  const fileFds = new Map<string, number>();
  for (const v of areas) {
    if (v.kind !== 'file' || !v.file) continue;
    const mode = sharedWritable(v) ? O_RDWR : O_RDONLY;
    const key = `${mode}:${v.file.path}`;
    if (fileFds.has(key)) continue;
    as.scratch.reset();
    // For an untrusted image, a file opened for writing is reached through real directories
    // only (the directories checkMappedAccess judged by name) and judged again as opened. The
    // read-only ones may cross a symlink (a genuine path may cross one of this machine's own:
    // a merged /usr's /lib, an image from a machine without one), but no /proc magic link,
    // and are judged as opened, with the directories of the path the file was found at.
    const writes = mode === O_RDWR;
    const path = as.scratch.putString(v.file.path);
    const r = opened !== undefined
      ? t.trySyscall(SYS.openat2, AT_FDCWD, path, as.scratch.put(openHow(mode, (writes ? RESOLVE_NO_SYMLINKS : 0) | RESOLVE_NO_MAGICLINKS)), OPEN_HOW_SIZE)
      : t.trySyscall(SYS.openat, AT_FDCWD, path, mode, 0);
    if (r < 0n) {
      const how = mode === O_RDONLY ? 'mapped' : (v.prot & PROT_WRITE) !== 0 ? 'for writing, mapped shared and writable'
        : 'for writing, mapped shared from a descriptor open for writing (mprotect may make it writable)';
      const why = opened !== undefined && writes && r === -BigInt(osConstants.errno.ELOOP)
        ? 'its path goes through a symbolic link, which a file an untrusted image maps for writing may not (sign the image and restore with --trust if it is genuine)'
        : errnoName(r);
      throw new FerryError('EOPEN', `cannot open ${v.file.path} ${how} by pid ${task.pid} at ${v.start}: ${why}`,
        { pid: task.pid, path: v.file.path });
    }
    fileFds.set(key, Number(r));
    if (opened !== undefined) {
      try {
        opened(v, statSync(`/proc/${t.pid}/fd/${r}`, { bigint: true }), readlinkSync(`/proc/${t.pid}/fd/${r}`));
      } catch (err) {
        // The task is killed with the tree; its descriptors go first all the same, so the
        // refused file is never held open by anything of the restore.
        t.trySyscalls([...fileFds.values()].map((fd) => [SYS.close, fd] as const));
        if (err instanceof FerryError) throw err;
        throw new FerryError('EOPEN', `cannot check ${v.file.path}, opened ${writes ? 'for writing to map it shared' : 'to map it'} by pid ${task.pid} at ${v.start}: ${describeCause(err)}`,
          { cause: err, pid: task.pid, path: v.file.path });
      }
    }
  }
  const calls: Array<readonly [number, ...Array<bigint | number>]> = [];
  for (const v of areas) {
    let fd = -1;
    let offset = 0n;
    if (v.kind === 'file' && v.file) {
      const mode = sharedWritable(v) ? O_RDWR : O_RDONLY;
      fd = fileFds.get(`${mode}:${v.file.path}`)!;
      offset = big(v.file.offset);
    }
    calls.push(...areaCalls(v, mmapFlags(v), fd, offset));
  }
  // An io_setup(2) ring's range is held by a placeholder until its context is made again and
  // its ring moved over it (restore/aio.ts), so that nothing lands there meanwhile.
  for (const v of task.vmas) {
    if (v.kind === 'aio') calls.push([SYS.mmap, big(v.start), big(v.end) - big(v.start), 0, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0]);
  }
  for (const fd of fileFds.values()) calls.push([SYS.close, fd]);
  const results = t.syscalls(calls);
  calls.forEach((c, i) => {
    const want = c[1] as bigint;
    if (c[0] === SYS.mmap && results[i] !== want) {
      throw new FerryError('EMAP', `mmap of 0x${want.toString(16)} in pid ${task.pid} landed at 0x${results[i]!.toString(16)}`);
    }
  });
  for (const v of areas) {
    if (v.shmem) shared.set(v.shmem.id, { pid: task.pid, start: big(v.start), end: big(v.end), offset: big(v.shmem.offset) });
  }
  for (const v of wide) makeShared(t, as, task, v, extents!.get(v.shmem!.id)!, shared);
  for (const v of joins) joinShared(t, as, task, v, shared.get(v.shmem!.id)!);
  for (const v of all) if (v.sysv) attachSysv(t, as, task, v, shared, controllerPidfd);
  let written = 0;
  for (const v of specials) written += mapSpecialFile(t, as, task, v, pages, shared);
  // Every area's own stored pages, those of joined objects too: each process stored what it
  // had mapped, and the same object pages hold the same bytes. A shared memfd area's pages
  // went into the memfd itself (mapSpecialFile).
  // Kept areas in image order with the others: the entry is read front to back.
  const own = new Set(all.filter((v) => !(isSpecialFile(v) && v.shared)));
  // Areas left to lazy pages (restore/lazy.ts) are served after the let-go instead.
  written += writePages(t, task.vmas.filter((v) => (kept.has(v) || own.has(v)) && !(lazy?.has(v) ?? false)), pages, chunkBytes);
  pages.finish();
  guardAreas(t, task, [...all, ...kept]);
  lockAreas(t, task, [...all, ...kept]);
  return written;
}

/**
 * MADV_GUARD_REMOVE over each area kept from the parent (or staged memory) where the parent
 * had guard pages: fork(2) copies them, the child's own come back with guardAreas. It leaves
 * pages alone.
 */
function unguardKept(t: Tracee, task: TaskRecord, inherited: Inherited): void {
  const theirs = new Map(inherited.parent.vmas.map((v) => [v.start, v]));
  guardCalls(t, task, inherited.keep.filter((v) => (theirs.get(v.start)?.guards?.length ?? 0) > 0)
    .map((v) => [SYS.madvise, big(v.start), big(v.end) - big(v.start), MADV_GUARD_REMOVE] as const));
}

/**
 * Installs the guard pages of `areas` (VmaRecord.guards; madvise MADV_GUARD_INSTALL) once
 * their pages are written (a write to a guard page fails), before they are locked.
 */
function guardAreas(t: Tracee, task: TaskRecord, areas: readonly VmaRecord[]): void {
  guardCalls(t, task, areas.flatMap((v) => (v.guards ?? []).map(([first, count]) =>
    [SYS.madvise, big(v.start) + BigInt(first * PAGE_SIZE), BigInt(count * PAGE_SIZE), MADV_GUARD_INSTALL] as const)));
}

/** Runs madvise calls of guard pages, each failure one line. */
function guardCalls(t: Tracee, task: TaskRecord, calls: ReadonlyArray<readonly [number, bigint, bigint, number]>): void {
  if (calls.length === 0) return;
  t.trySyscalls(calls).forEach((r, i) => {
    if (r >= 0n) return;
    const why = r === -BigInt(osConstants.errno.EINVAL) ? ': this kernel may have no guard pages (Linux 6.13 and later have them)' : '';
    throw new FerryError('EMAP', `cannot ${calls[i]![3] === MADV_GUARD_REMOVE ? 'remove the' : 'install the'} guard pages at 0x${calls[i]![1].toString(16)} `
      + `of pid ${task.pid} (madvise): ${errnoName(r)}${why}`, { pid: task.pid });
  });
}

/**
 * For an untrusted image: judges the file a task opened to map area `v` (`st`: the fstat of
 * the task's descriptor; `at`: where the kernel says it is, its /proc/PID/fd link), throwing
 * to refuse it (restore/file-access.ts checkOpenedMapping, checkOpenedReadMapping). Given,
 * mapAreas opens the files it maps for writing with no symlink followed, the others with no
 * /proc magic link.
 */
export type OpenedCheck = (v: VmaRecord, st: BigIntStats, at: string) => void;

/**
 * A child forked from its rebuilt parent (restore/cow.ts): the parent's areas and the areas
 * kept from it; or a root forked from a migration's staged memory (StagedRoot): the staged
 * areas (`runs`: the pages staged) and the areas kept, `staged` set.
 */
export interface Inherited {
  parent: Pick<TaskRecord, 'vmas'>;
  keep: readonly VmaRecord[];
  staged?: boolean;
}

/**
 * The root's memory staged while a migration's rounds arrived (migrate/staging.ts): the root
 * is forked from the stub that holds it, or is that stub (with the root's pid), and keeps the
 * staged areas the image maps alike.
 */
export interface StagedRoot {
  /** The image's pid of the root it holds memory for. */
  readonly pid: number;
  /** Its stub has that pid (free when staging began): fork() makes it the root. */
  readonly ownsPid: boolean;
  /**
   * Of `task`'s areas, those kept from the staged memory (private anonymous, read-write, the
   * same bounds), and the staged areas they are kept from (`runs`: the pages staged there);
   * undefined when none is.
   */
  keep(task: TaskRecord): { keep: VmaRecord[]; staged: VmaRecord[] } | undefined;
  /**
   * Forks the root `pid` from the stub (restore/tree.ts forkRoot), or, where the stub has that
   * pid, gives the stub itself; close() once its memory is rebuilt. Undefined when it cannot
   * (the stub gone, the fork refused): nothing was made, the pid is free, the root is spawned
   * and written as without staging.
   */
  fork(pid: number): Tracee | undefined;
  /**
   * Kills the stub (not waiting for its exit, unless it has the root's pid), if not yet and
   * it did not become the root: idempotent.
   */
  close(): void;
}

/** madvise(2) of each area kept from staged memory, as its VmFlags say. */
function adviseKept(t: Tracee, task: TaskRecord, keep: readonly VmaRecord[]): void {
  const calls = keep.flatMap(adviceCalls);
  if (calls.length === 0) return;
  t.trySyscalls(calls).forEach((r, i) => {
    if (r < 0n) throw new FerryError('EMAP', `cannot advise the area at 0x${calls[i]![1].toString(16)} of pid ${task.pid} (madvise): ${errnoName(r)}`);
  });
}

/** MADV_DONTNEED over the pages of each kept area that the parent has and the child had not. */
function dropPages(t: Tracee, task: TaskRecord, inherited: Inherited): void {
  const theirs = new Map(inherited.parent.vmas.map((v) => [v.start, v]));
  const calls: Array<readonly [number, bigint, bigint, number]> = [];
  for (const v of inherited.keep) {
    const from = theirs.get(v.start)!; // checkInherited found it
    for (const [first, count] of pagesToDrop(from, v)) {
      calls.push([SYS.madvise, big(v.start) + BigInt(first * PAGE_SIZE), BigInt(count * PAGE_SIZE), MADV_DONTNEED]);
    }
  }
  if (calls.length === 0) return;
  t.trySyscalls(calls).forEach((r, i) => {
    if (r < 0n) throw new FerryError('EMAP', `cannot drop the pages at 0x${calls[i]![1].toString(16)} of pid ${task.pid} (madvise): ${errnoName(r)}`);
  });
}

/**
 * mlock(2)ed areas ('lo'; 'lf': MLOCK_ONFAULT) are locked again once their pages are in (the
 * stub is still root, so RLIMIT_MEMLOCK does not stand in the way; the lock stays when its
 * credentials drop, as the original's did after it had locked them).
 *
 * mlock2 sets VM_LOCKED on the whole range first and only then faults its pages in
 * (do_mlock: apply_vma_lock_flags, then __mm_populate), and that fails on an area with no
 * access: populate_vma_page_range cannot fault a PROT_NONE page, and the EFAULT comes back as
 * ENOMEM with the area locked all the same. The original got its lock that way, or through
 * mlockall(MCL_CURRENT), which ignores the failure (a thread stack's guard page), or by
 * mprotect(PROT_NONE) of a locked area, which keeps the lock. So an ENOMEM is taken for done
 * on an area with no access when smaps then shows the area locked as it was, over its whole
 * range.
 */
function lockAreas(t: Tracee, task: TaskRecord, areas: readonly VmaRecord[]): void {
  const locked = areas.filter((v) => v.vmflags.includes('lo') || v.vmflags.includes('lf'));
  const calls = locked.map((v) =>
    [SYS.mlock2, big(v.start), big(v.end) - big(v.start), v.vmflags.includes('lf') ? MLOCK_ONFAULT : 0] as const);
  if (calls.length === 0) return;
  const results = t.trySyscalls(calls);
  const fail = (i: number, why: string): never => {
    throw new FerryError('EMAP', `cannot lock the area at 0x${calls[i]![1].toString(16)} of pid ${task.pid} again (mlock2): ${why}`);
  };
  const populateFailed: number[] = [];
  results.forEach((r, i) => {
    // Only an area with no access: elsewhere an ENOMEM is a page-in that really failed.
    // Likewise an area with guard pages (which cannot be faulted in): mlockall(MCL_CURRENT)
    // locked it all the same.
    if (r === -BigInt(osConstants.errno.ENOMEM) && (locked[i]!.prot === 0 || (locked[i]!.guards?.length ?? 0) > 0)) populateFailed.push(i);
    else if (r < 0n) fail(i, errnoName(r));
  });
  if (populateFailed.length === 0) return;
  const now = parseSmaps(readProcText(t.pid, 'smaps'));
  for (const i of populateFailed) {
    const v = locked[i]!;
    const at = now.vmas.find((a) => a.start <= big(v.start) && a.end >= big(v.end));
    const flags = at === undefined ? [] : now.vmflags.get(at.start) ?? [];
    if (!flags.includes('lo') || flags.includes('lf') !== v.vmflags.includes('lf')) {
      fail(i, `${errnoName(results[i]!)}, and smaps shows the area not locked as it was`);
    }
  }
}

const IPC_PRIVATE = 0, IPC_CREAT = 0o1000, IPC_EXCL = 0o2000, IPC_RMID = 0, IPC_SET = 1;
const SHM_RDONLY = 0o10000, SHM_EXEC = 0o100000;
/** struct shmid64_ds (x86-64): ipc64_perm {key, uid, gid, cuid, cgid, mode, …} first. */
const SHMID_DS_SIZE = 112;

/**
 * Attaches the System V segment of area `v` at its address, creating it first with its
 * original id if this restore has not yet: /proc/sys/kernel/shm_next_id makes shmget(2) take
 * that id. The value is per IPC namespace of the writer, so the task writes it itself, through
 * a descriptor ferry opened (a container's /proc/sys is read-only) and the task pulls.
 */
function attachSysv(t: Tracee, as: AddressSpace, task: TaskRecord, v: VmaRecord, shared: SharedObjects,
  controllerPidfd?: number): void {
  const seg = v.sysv!;
  const name = `sysv:${seg.shmid}`;
  const where = `System V segment ${seg.shmid} of pid ${task.pid} at ${v.start}`;
  let created = false;
  if (!shared.has(name)) {
    const ctl = openSync('/proc/sys/kernel/shm_next_id', 'w');
    try {
      as.scratch.reset();
      const pidfd = controllerPidfd ?? Number(t.syscall(SYS.pidfd_open, process.pid, 0));
      const fd = Number(t.syscall(SYS.pidfd_getfd, pidfd, ctl, 0));
      const text = Buffer.from(String(seg.shmid));
      t.syscalls([[SYS.write, fd, as.scratch.put(text), text.length], [SYS.close, fd]]);
      if (controllerPidfd === undefined) t.syscall(SYS.close, pidfd);
    } finally {
      closeSync(ctl);
    }
    const id = t.trySyscall(SYS.shmget, seg.removed ? IPC_PRIVATE : seg.key, seg.size, IPC_CREAT | IPC_EXCL | seg.mode);
    if (id !== BigInt(seg.shmid)) {
      if (id >= 0n) t.trySyscall(SYS.shmctl, id, IPC_RMID, 0);
      throw new FerryError('ESHM', `cannot create ${where} again: ${id < 0n ? `shmget failed with ${errnoName(id)} (key or id in use?)` : `it got id ${id}`}`);
    }
    created = true;
  }
  // A segment made here and not attached yet outlives the processes (nothing holds it): removed
  // again when the attach fails, so a refused restore leaves none behind.
  try {
    if (created) {
      const ds = Buffer.alloc(SHMID_DS_SIZE);
      ds.writeUInt32LE(seg.uid, 4);
      ds.writeUInt32LE(seg.gid, 8);
      ds.writeUInt32LE(seg.mode, 20);
      as.scratch.reset();
      t.syscall(SYS.shmctl, seg.shmid, IPC_SET, as.scratch.put(ds));
    }
    const flags = ((v.prot & PROT_WRITE) ? 0 : SHM_RDONLY) | ((v.prot & PROT_EXEC) ? SHM_EXEC : 0);
    const at = t.trySyscall(SYS.shmat, seg.shmid, big(v.start), flags);
    if (at !== big(v.start)) throw new FerryError('ESHM', `cannot attach ${where}: ${at < 0n ? errnoName(at) : `landed at 0x${at.toString(16)}`}`);
  } catch (err) {
    if (created) t.trySyscall(SYS.shmctl, seg.shmid, IPC_RMID, 0);
    throw err;
  }
  if (created) shared.set(name, { pid: task.pid, start: big(v.start), end: big(v.end), offset: 0n });
  // A segment removed while attached stays attachable (Linux) until its last detach.
  if (seg.removed) t.trySyscall(SYS.shmctl, seg.shmid, IPC_RMID, 0);
}

const isSpecialFile = (v: VmaRecord): v is VmaRecord & MappedSpecialFile =>
  (v as MappedSpecialFile).memfd !== undefined || (v as MappedSpecialFile).ghost !== undefined;

/** F_SEAL_WRITE | F_SEAL_FUTURE_WRITE: the memfd's data can no longer be written. */
const WRITE_SEALS = 0x8 | 0x10;

/**
 * Maps an area of a memfd or deleted file. The file is the one the file engine restored when
 * a file of the image is it (opened by the task through /proc/<ferry>/fd/N): a memfd, a ghost
 * or, for a deleted name of a file that kept another, a linked file (files/linked.ts); a memfd
 * only mapped is created here by its first area, from that area's stored pages (written into
 * the memfd, not the mapping: a sealed or read-only shared mapping cannot be written through),
 * and later areas open it through /proc/<first>/map_files, at any offset. Returns the bytes of
 * pages written into the memfd.
 */
function mapSpecialFile(t: Tracee, as: AddressSpace, task: TaskRecord, v: VmaRecord & MappedSpecialFile,
  pages: ChunkSource, shared: SharedObjects): number {
  const start = big(v.start);
  const len = big(v.end) - start;
  const offset = big(v.file!.offset);
  const key = v.memfd ? `memfd:${v.memfd.id}` : '';
  let path: string;
  let created = -1;
  let written = 0;
  // A deleted file is a ghost (no name left) or a linked file (another name kept), by the
  // same identity: whichever kind the image restores it as.
  const held = v.memfd ? restoredMemfd(v.memfd.id) : restoredGhost(v.ghost!) ?? restoredLinked(v.ghost!);
  const first = v.memfd ? shared.get(key) : undefined;
  if (held !== undefined) {
    path = `/proc/${process.pid}/fd/${held}`;
  } else if (v.ghost !== undefined) {
    throw new FerryError('EIMAGE', `pid ${task.pid} maps the deleted file ${v.file!.path} at ${v.start}, which no file of the image restores`);
  } else if (first) {
    path = `/proc/${first.pid}/map_files/${first.start.toString(16)}-${first.end.toString(16)}`;
    if (v.shared && v.runs.length > 0 && (v.memfd!.seals & WRITE_SEALS) === 0) {
      const fd = openSync(path, 'r+');
      try { written = copyPages(fd, v, pages); } finally { closeSync(fd); }
    }
  } else {
    const m = v.memfd!;
    created = createMemfd(m.name, m.mode, m.seals, (fd) => {
      ftruncateSync(fd, m.size);
      if (v.shared) written = copyPages(fd, v, pages);
    });
    path = `/proc/${process.pid}/fd/${created}`;
  }
  try {
    as.scratch.reset();
    const mode = sharedWritable(v) ? O_RDWR : O_RDONLY;
    const fd = t.trySyscall(SYS.openat, AT_FDCWD, as.scratch.putString(path), mode, 0);
    if (fd < 0n) throw new FerryError('EOPEN', `cannot open ${v.file!.path} (${path}), mapped by pid ${task.pid} at ${v.start}: ${errnoName(fd)}`);
    const reprotect = !v.shared && v.vmflags.includes('ac') && (v.prot & PROT_WRITE) === 0;
    const calls: Array<readonly [number, ...Array<bigint | number>]> = [
      [SYS.mmap, start, len, reprotect ? v.prot | PROT_WRITE : v.prot, mmapFlags(v), fd, offset]];
    if (reprotect) calls.push([SYS.mprotect, start, len, v.prot]);
    for (const f of v.vmflags) {
      const advice = MADVISE_BY_VMFLAG[f];
      if (advice !== undefined) calls.push([SYS.madvise, start, len, advice]);
    }
    calls.push([SYS.close, fd]);
    const [at] = t.syscalls(calls);
    if (at !== start) throw new FerryError('EMAP', `mmap of ${v.start} (${v.file!.path}) in pid ${task.pid} landed at 0x${at!.toString(16)}`);
  } finally {
    if (created >= 0) closeSync(created);
  }
  if (created >= 0) shared.set(key, { pid: task.pid, start, end: big(v.end), offset });
  return written;
}

/** Writes the stored pages of a shared file area into the file `fd` at their file offsets. */
function copyPages(fd: number, v: VmaRecord, pages: ChunkSource): number {
  const base = Number(big(v.file!.offset));
  let src = v.pagesOffset;
  let written = 0;
  for (const [page, count] of v.runs) {
    for (let done = 0; done < count * PAGE_SIZE;) {
      const buf = pages.view(src, count * PAGE_SIZE - done);
      writeSync(fd, buf, 0, buf.length, base + page * PAGE_SIZE + done);
      src += buf.length;
      written += buf.length;
      done += buf.length;
    }
  }
  return written;
}

/**
 * Makes the shared anonymous object of area `v` whole, `extent` ([lowest offset, highest end]
 * of its windows in the image) big, and maps `v` as its window: a temporary anonymous shared
 * mapping of that size, where neither layout has anything, creates the object; `v` maps it
 * through /proc/PID/map_files at its offset, and the temporary mapping goes. The later
 * windows join it at theirs (joinShared).
 */
function makeShared(t: Tracee, as: AddressSpace, task: TaskRecord, v: VmaRecord, extent: readonly [bigint, bigint],
  shared: SharedObjects): void {
  const size = extent[1] - extent[0];
  const taken: Range[] = [...task.vmas.map((d): Range => [big(d.start), big(d.end)]),
    ...parseMaps(readProcText(t.pid, 'maps')).map((m): Range => [m.start, m.end])];
  const tmp = findFree(taken, size, 0x100000000n);
  const at = t.trySyscall(SYS.mmap, tmp, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  if (at !== tmp) throw new FerryError('EMAP', `cannot make the shared memory of pid ${task.pid} at ${v.start} (${size} bytes): ${at < 0n ? errnoName(at) : 'mmap moved'}`);
  try {
    const object: SharedObject = { pid: task.pid, start: tmp, end: tmp + size, offset: extent[0] };
    joinShared(t, as, task, v, object);
  } finally {
    t.syscall(SYS.munmap, tmp, size);
  }
  shared.set(v.shmem!.id, { pid: task.pid, start: big(v.start), end: big(v.end), offset: big(v.shmem!.offset), base: extent[0], size });
}

/** Maps the area `v` of an already restored shared object through /proc/PID/map_files. */
function joinShared(t: Tracee, as: AddressSpace, task: TaskRecord, v: VmaRecord, first: SharedObject): void {
  const start = big(v.start);
  const len = big(v.end) - start;
  const offset = big(v.shmem!.offset) - (first.base ?? first.offset);
  if (offset < 0n || offset + len > (first.size ?? first.end - first.start)) {
    throw new FerryError('EIMAGE', `shared memory at ${v.start} of pid ${task.pid} lies outside the object made for it at 0x${first.start.toString(16)} `
      + `of pid ${first.pid}: refused (an edited image)`);
  }
  as.scratch.reset();
  const path = `/proc/${first.pid}/map_files/${first.start.toString(16)}-${first.end.toString(16)}`;
  const fd = t.trySyscall(SYS.openat, AT_FDCWD, as.scratch.putString(path), O_RDWR, 0);
  if (fd < 0n) throw new FerryError('EOPEN', `cannot open the shared memory of pid ${first.pid} (${path}) for pid ${task.pid}: ${errnoName(fd)}`);
  const [at] = t.syscalls([[SYS.mmap, start, len, v.prot, mmapFlags(v) & ~MAP_ANONYMOUS, fd, offset], [SYS.close, fd]]);
  if (at !== start) throw new FerryError('EMAP', `mmap of ${v.start} in pid ${task.pid} landed at 0x${at!.toString(16)}`);
}

/**
 * Copies stored pages from the image into the task, run by run, in pieces of at most
 * `chunkBytes` that never cross a chunk of the entry (each is one verified buffer).
 */
function writePages(t: Tracee, areas: readonly VmaRecord[], pages: ChunkSource, chunkBytes: number): number {
  const most = Math.max(PAGE_SIZE, chunkBytes - (chunkBytes % PAGE_SIZE));
  let written = 0;
  for (const v of areas) {
    const start = big(v.start);
    // Pages it lent its siblings through the parent (restore/cow.ts lendPages) are inherited
    // already: written again, they would be its own copy.
    for (const [page, count, at] of storedParts(v)) {
      let src = at;
      let left = count * PAGE_SIZE;
      let dst = start + BigInt(page * PAGE_SIZE);
      while (left > 0) {
        // Pages in place already (a root forked from staged memory, ChunkSource.keepInPlace),
        // verified by their digests: left as they are (many chunks at once, where whole).
        const n = pages.placed(src, dst, left);
        if (n > 0) {
          src += n;
          dst += BigInt(n);
          left -= n;
          continue;
        }
        const buf = pages.view(src, Math.min(left, most, -n));
        t.writeMem(dst, buf, 0, buf.length);
        src += buf.length;
        dst += BigInt(buf.length);
        left -= buf.length;
        written += buf.length;
      }
    }
  }
  return written;
}

/**
 * The path the task opens its executable by: the recorded one, or, for a removed executable
 * (`exeGhost`), the file restored for its areas (mapSpecialFile's), so that /proc/PID/exe and
 * map_files of its text are one inode again, never a file that took the name since (an
 * upgrade renames the new binary over the old).
 */
function exePath(task: TaskRecord): string {
  if (task.exeGhost === undefined) return task.exe;
  const held = restoredGhost(task.exeGhost) ?? restoredLinked(task.exeGhost);
  if (held === undefined) throw new FerryError('EIMAGE', `the removed executable ${task.exe} of pid ${task.pid} is no file the image restores`);
  return `/proc/${process.pid}/fd/${held}`;
}

/**
 * Step 4: prctl(PR_SET_MM, PR_SET_MM_MAP) with the dumped mm fields, auxv and exe, in one
 * injected batch with the open and the close of the exe: the struct names the descriptor
 * before the open has run, so it names the one open(2) gives, the lowest free number of the
 * stub's table as /proc lists it (nothing else changes that table meanwhile: the stubs are
 * all stopped, and only ferry runs calls in them). The batch stops if the open fails, and a
 * descriptor other than the one named fails the restore, closed again first.
 */
export function setMm(t: Tracee, as: AddressSpace, task: TaskRecord): void {
  as.scratch.reset();
  const used = new Set(listFds(t.pid));
  let exeFd = 0;
  while (used.has(exeFd)) exeFd++;
  const exe = exePath(task);
  const pathAt = as.scratch.putString(exe);
  const auxv = Buffer.alloc(task.mm.auxv.length * 16);
  task.mm.auxv.forEach(([k, v], i) => {
    auxv.writeBigUInt64LE(big(k), i * 16);
    auxv.writeBigUInt64LE(big(v), i * 16 + 8);
  });
  const auxvAt = as.scratch.put(auxv);
  const m = task.mm;
  const map = Buffer.alloc(PRCTL_MM_MAP_SIZE);
  [m.startCode, m.endCode, m.startData, m.endData, m.startBrk, m.brk, m.startStack, m.argStart,
    m.argEnd, m.envStart, m.envEnd].forEach((v, i) => map.writeBigUInt64LE(big(v), i * 8));
  map.writeBigUInt64LE(auxvAt, 88);
  map.writeUInt32LE(auxv.length, 96);
  map.writeUInt32LE(exeFd, 100);
  const mapAt = as.scratch.put(map);
  const [opened, r, closed] = t.trySyscalls([
    [SYS.openat, AT_FDCWD, pathAt, O_RDONLY, 0],
    [SYS.prctl, PR_SET_MM, PR_SET_MM_MAP, mapAt, PRCTL_MM_MAP_SIZE, 0],
    [SYS.close, exeFd],
  ], { guard: 1 });
  if (opened! < 0n) throw new FerryError('EOPEN', `cannot open the executable ${task.exe} of pid ${task.pid}${exe !== task.exe ? ` (${exe})` : ''}: ${errnoName(opened!)}`);
  if (opened !== BigInt(exeFd)) {
    t.trySyscall(SYS.close, opened!);
    throw new Error(`the executable of pid ${task.pid} was opened as descriptor ${opened}, not as ${exeFd}, the lowest free one`);
  }
  if (r! < 0n) throw new FerryError('EMM', `prctl(PR_SET_MM_MAP) failed for pid ${task.pid}: ${errnoName(r!)}`);
  if (closed! < 0n) throw injectedError(SYS.close, Number(-closed!), t.tid);
}

/**
 * A `syscall` instruction of the restored process, outside ferry's gadget: in its [vdso], or,
 * for a process that unmapped its vDSO, in its executable areas (as at checkpoint:
 * dump/task-state.ts syscallGadget); 0n when it has none.
 */
export function restoredSyscall(t: Tracee, task: TaskRecord): bigint {
  const vdso = task.vmas.filter((v) => v.kind === 'vdso');
  for (const v of vdso.length > 0 ? vdso : task.vmas.filter((a) => (a.prot & PROT_EXEC) !== 0 && a.kind !== 'vsyscall')) {
    const off = t.readMem(big(v.start), Number(big(v.end) - big(v.start))).indexOf(SYSCALL_INSN);
    if (off >= 0) return big(v.start) + BigInt(off);
  }
  return 0n;
}

/** Step 9: unmap the gadget area through a `syscall` of the restored process (restoredSyscall). */
export function dropGadget(t: Tracee, as: AddressSpace, task: TaskRecord): void {
  const at = restoredSyscall(t, task);
  if (at === 0n) throw new FerryError('EKERNEL', `pid ${task.pid} has no syscall instruction left to unmap ferry's gadget through (no [vdso], none in its code)`);
  t.gadget = at;
  // SIGTRAP ignored: no step may follow its disposition (ignored-trap.ts).
  as.scratch.reset();
  if (ignoredTrap(task) !== undefined) dropGadgetIgnoringTrap(t, task, at, as.gadgetArea, GADGET_SIZE, as.scratch);
  else t.syscall(SYS.munmap, as.gadgetArea, GADGET_SIZE);
}
