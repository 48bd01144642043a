/**
 * io_setup(2) contexts of a restored process (image/aio-ring.ts; the dump is
 * dump/memory.ts readAioRings).
 *
 * The process knows a context by its ring's address. mapAreas holds each ring's range with a
 * PROT_NONE placeholder, so that nothing else lands there; once the address space is in place
 * (rebuild, before the let-go), each context is made again, injected:
 * 1. io_setup(2) with the nr_events that makes a ring of the same pages, hence the same nr;
 * 2. mremap(2) of the new ring over the placeholder (MREMAP_MAYMOVE | MREMAP_FIXED): the
 *    kernel moves the context's id with its ring (aio_ring_mremap), so the id the process
 *    holds names it again;
 * 3. the k events it had not reaped: k zero-byte IOCB_CMD_PREADs of a memfd made for the
 *    purpose, which complete inside io_submit(2) (shmem reads synchronously), so the kernel's
 *    own tail is k and each of the k slots is accounted as a completed, unreaped event; the
 *    ring then says head 0, tail k, and its first k events are overwritten with the recorded
 *    ones, oldest first. The memfd is closed again at once.
 * A failure fails the restore in one line naming the pid and the ring; the restore kills its
 * processes, and the contexts go with them.
 *
 * What no interface shows is not made again: the requests that were still in flight at the
 * checkpoint (docs/architecture.md).
 */
import { readFileSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { MREMAP_FIXED, MREMAP_MAYMOVE, PAGE_SIZE, PROT_READ, PROT_WRITE, SYS } from '../arch/x86-64.js';
import { errnoName, FerryError } from '../errors.js';
import { AIO_RING_HEADER, IO_EVENT_SIZE, parseRingHeader, setupEventsFor, setupPages } from '../image/aio-ring.js';
import { big, type TaskRecord, type VmaRecord } from '../image/records.js';
import { parseCpuList, parseStatus } from '../proc/status.js';
import { readProcText } from '../proc/read.js';
import type { Tracee } from '../task/tracee.js';
import type { AddressSpace } from './address-space.js';

const MFD_CLOEXEC = 1;
/** sizeof(struct iocb); IOCB_CMD_PREAD. */
const IOCB_SIZE = 64, IOCB_CMD_PREAD = 0;
/** iocb pointers passed to one io_submit(2) (16 KiB of the scratch area). */
const SUBMIT_BATCH = 2048;

/** Possible CPUs of this machine (num_possible_cpus(): the minimum ring io_setup makes depends on them). */
function possibleCpus(): number {
  return parseCpuList(readFileSync('/sys/devices/system/cpu/possible', 'utf8')).length;
}

/** A task's io_setup(2) rings, with their pages. */
function ringsOf(task: TaskRecord): Array<{ v: VmaRecord; pages: number }> {
  return task.vmas.filter((v) => v.kind === 'aio' && v.aio !== undefined)
    .map((v) => ({ v, pages: Number((big(v.end) - big(v.start)) / BigInt(PAGE_SIZE)) }));
}

/**
 * Refuses, before anything is made, a ring this machine cannot make again at its size: the
 * least ring io_setup(2) makes grows with the possible CPUs (4 events per CPU, doubled), so an
 * image of a machine with fewer may hold a smaller one. One line naming the pid and the ring.
 */
export function checkAioRings(label: string, tasks: readonly TaskRecord[]): void {
  let cpus: number | undefined;
  for (const task of tasks) {
    for (const { v, pages } of ringsOf(task)) {
      cpus ??= possibleCpus();
      if (setupEventsFor(pages, cpus) === undefined) {
        throw new FerryError('EKERNEL', `image ${label}: pid ${task.pid} has an io_setup(2) context whose ring at ${v.start} is ${pages} page(s), `
          + `which io_setup cannot make on this machine (its least ring is ${setupPages(1, cpus)} page(s) with ${cpus} possible CPUs): `
          + 'restore it on a machine with no more possible CPUs than the checkpointing one; nothing was restored', { pid: task.pid });
      }
    }
  }
}

/** Makes every io_setup(2) context of `task` again in its rebuilt address space (see above). */
export function restoreAioRings(t: Tracee, as: AddressSpace, task: TaskRecord): void {
  const rings = ringsOf(task);
  if (rings.length === 0) return;
  const cpus = possibleCpus();
  for (const { v, pages } of rings) {
    const at = big(v.start);
    const len = big(v.end) - at;
    const fail = (what: string): never => {
      throw new FerryError('EMAP', `cannot restore the io_setup(2) context of pid ${task.pid} at ${v.start}: ${what}`, { pid: task.pid });
    };
    const n = setupEventsFor(pages, cpus) ?? fail(`io_setup cannot make a ring of ${pages} page(s) on this machine`);
    as.scratch.reset();
    const ctxAt = as.scratch.put(Buffer.alloc(8));
    const r = t.trySyscall(SYS.io_setup, n, ctxAt);
    if (r === -BigInt(osConstants.errno.EAGAIN)) {
      const limit = readFileSync('/proc/sys/fs/aio-max-nr', 'utf8').trim(), used = readFileSync('/proc/sys/fs/aio-nr', 'utf8').trim();
      fail(`io_setup(${n}) failed with EAGAIN: the machine's aio events (/proc/sys/fs/aio-nr, ${used} in use) would pass /proc/sys/fs/aio-max-nr (${limit}); raise it`);
    }
    if (r < 0n) fail(`io_setup(${n}) failed with ${errnoName(r)}`);
    const made = t.readMem(ctxAt, 8).readBigUInt64LE();
    if (made !== at) {
      const moved = t.trySyscall(SYS.mremap, made, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, at);
      if (moved !== at) fail(`mremap of its new ring from 0x${made.toString(16)} ${moved < 0n ? `failed with ${errnoName(moved)}` : `landed at 0x${moved.toString(16)}`}`);
    }
    const events = Buffer.from(v.aio!.events, 'base64');
    const k = events.length / IO_EVENT_SIZE;
    if (k > 0) putEvents(t, as, at, k, fail);
    const h = parseRingHeader(t.readMem(at, AIO_RING_HEADER));
    if (h.nr !== v.aio!.nr || h.head !== 0 || h.tail !== k) {
      fail(`its new ring has nr ${h.nr}, head ${h.head} and tail ${h.tail}, not nr ${v.aio!.nr}, head 0 and tail ${k} (did the requests ferry submitted not complete at once?)`);
    }
    if (k > 0) t.writeMem(at + BigInt(AIO_RING_HEADER), events);
    // Last: a ring made read-only cannot be written through /proc/PID/mem (a shared mapping).
    if (v.prot !== (PROT_READ | PROT_WRITE)) {
      const p = t.trySyscall(SYS.mprotect, at, len, v.prot);
      if (p < 0n) fail(`mprotect to ${v.prot} failed with ${errnoName(p)}`);
    }
  }
}

/**
 * Submits `k` zero-byte reads of a fresh memfd to the context at `ctx`, each completing inside
 * io_submit(2). The task is held on one CPU meanwhile: io_submit takes request slots from a
 * per-CPU cache refilled from the context's count in batches, and slots left in another CPU's
 * cache would make a nearly full ring's last submissions fail with EAGAIN. Its CPUs are put
 * back after (restoreCreds sets the image's later).
 */
function putEvents(t: Tracee, as: AddressSpace, ctx: bigint, k: number, fail: (what: string) => never): void {
  const cpus = parseStatus(readProcText(t.pid, `task/${t.tid}/status`)).cpus;
  const maskOf = (list: readonly number[]): Buffer => {
    const mask = Buffer.alloc((Math.floor(Math.max(0, ...list) / 64) + 1) * 8);
    for (const cpu of list) mask[cpu >> 3] = mask[cpu >> 3]! | (1 << (cpu & 7));
    return mask;
  };
  const own = maskOf(cpus), one = maskOf(cpus.slice(0, 1));
  const ownAt = as.scratch.put(own), oneAt = as.scratch.put(one);
  const nameAt = as.scratch.putString('ferry-aio');
  const iocbAt = as.scratch.alloc(IOCB_SIZE);
  const batch = Math.min(k, SUBMIT_BATCH);
  const listAt = as.scratch.alloc(batch * 8);
  const [pinned, fd] = t.trySyscalls([[SYS.sched_setaffinity, 0, one.length, oneAt], [SYS.memfd_create, nameAt, MFD_CLOEXEC]]);
  try {
    if (pinned! < 0n) fail(`sched_setaffinity failed with ${errnoName(pinned!)}`);
    if (fd! < 0n) fail(`memfd_create failed with ${errnoName(fd!)}`);
    const iocb = Buffer.alloc(IOCB_SIZE);
    iocb.writeUInt16LE(IOCB_CMD_PREAD, 16); // aio_lio_opcode
    iocb.writeUInt32LE(Number(fd), 20); // aio_fildes
    iocb.writeBigUInt64LE(iocbAt, 24); // aio_buf: any address, nothing is read into it
    t.writeMem(iocbAt, iocb);
    const list = Buffer.alloc(batch * 8);
    for (let i = 0; i < batch; i++) list.writeBigUInt64LE(iocbAt, i * 8);
    t.writeMem(listAt, list);
    const calls: Array<readonly [number, bigint, number, bigint]> = [];
    for (let done = 0; done < k; done += batch) calls.push([SYS.io_submit, ctx, Math.min(batch, k - done), listAt]);
    const results = t.trySyscalls(calls);
    results.forEach((r, i) => {
      if (r !== BigInt(calls[i]![2])) fail(`io_submit of ${calls[i]![2]} requests to put its ${k} unreaped events back ${r < 0n ? `failed with ${errnoName(r)}` : `took ${r}`}`);
    });
  } finally {
    const undo: Array<readonly [number, ...Array<bigint | number>]> = [[SYS.sched_setaffinity, 0, own.length, ownAt]];
    if (fd! >= 0n) undo.push([SYS.close, fd!]);
    t.trySyscalls(undo);
  }
}
