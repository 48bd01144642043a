/**
 * The completion ring of an io_setup(2) aio context, as fs/aio.c lays it out and as the image
 * records it (docs/image-format.md, "aio"): what dump/ reads, validate.ts bounds and
 * restore/aio.ts makes again, kept here where all three reach it.
 *
 * The context id a process holds (aio_context_t) is the user address of its ring, a shared
 * mapping of an anonymous aio file that /proc/PID/maps shows as "/[aio] (deleted)". The ring
 * is `struct aio_ring` (id, nr, head, tail, magic, compat_features, incompat_features,
 * header_length: eight u32, 32 bytes) followed by `nr` struct io_event (u64 data, obj; s64
 * res, res2: 32 bytes each); the events not reaped yet are [head, tail) modulo nr. Its size is
 * a whole number of pages, and nr is what fits in them: io_setup(n) makes room for
 * 2 * max(n, 4 * possible CPUs) + 2 events (doubled because up to half the slots may sit in
 * other CPUs' caches, two more for the head/tail overlap) and rounds up to pages.
 */
import { PAGE_SIZE } from '../arch/x86-64.js';

/** sizeof(struct aio_ring): the header before the events. */
export const AIO_RING_HEADER = 32;
/** sizeof(struct io_event). */
export const IO_EVENT_SIZE = 32;
/** AIO_RING_MAGIC, AIO_RING_COMPAT_FEATURES, AIO_RING_INCOMPAT_FEATURES (fs/aio.c). */
export const AIO_RING_MAGIC = 0xa10a10a1, AIO_RING_COMPAT = 1, AIO_RING_INCOMPAT = 0;
/** io_setup's bound on the doubled event count: 0x10000000 / sizeof(struct io_event) (EINVAL above). */
const MAX_DOUBLED_EVENTS = 0x10000000 / IO_EVENT_SIZE;
/** Pages of the largest ring io_setup(2) makes (its header and MAX_DOUBLED_EVENTS + 2 events): 65,537. */
export const AIO_RING_MAX_PAGES = Math.ceil((AIO_RING_HEADER + IO_EVENT_SIZE * (MAX_DOUBLED_EVENTS + 2)) / PAGE_SIZE);
/**
 * The most unreaped events the image records of one ring (2 MiB of task.json in base64 at
 * most): a process reaps its completions as they come; one that left more is refused.
 */
export const MAX_AIO_EVENTS = 65536;

/** The ring's `nr` for a ring of `pages` pages: the events that fit after the header. */
export const ringEvents = (pages: number): number => (pages * PAGE_SIZE - AIO_RING_HEADER) / IO_EVENT_SIZE;

/** Pages of the ring io_setup(`n`) makes on a machine with `cpus` possible CPUs (aio_setup_ring). */
export function setupPages(n: number, cpus: number): number {
  const events = Math.max(n, 4 * cpus) * 2 + 2;
  return Math.ceil((AIO_RING_HEADER + IO_EVENT_SIZE * events) / PAGE_SIZE);
}

/**
 * The least nr_events for io_setup(2) that makes a ring of exactly `pages` pages on a machine
 * with `cpus` possible CPUs (the least: it counts against /proc/sys/fs/aio-max-nr), or
 * undefined when none does: the smallest ring this machine makes is bigger (more possible
 * CPUs than where it was checkpointed), or the ring is bigger than io_setup makes.
 */
export function setupEventsFor(pages: number, cpus: number): number | undefined {
  if (!Number.isSafeInteger(pages) || pages < 1 || pages > AIO_RING_MAX_PAGES) return undefined;
  // 2n + 2 events must need more than pages - 1 pages: 2n + 2 > 128 (pages - 1) - 1.
  const n = Math.max(1, 64 * pages - 65);
  if (Math.max(n, 4 * cpus) * 2 > MAX_DOUBLED_EVENTS) return undefined;
  return setupPages(n, cpus) === pages ? n : undefined;
}

/** struct aio_ring's header as the ring's first 32 bytes hold it. */
export interface RingHeader {
  id: number;
  nr: number;
  head: number;
  tail: number;
  magic: number;
  compat: number;
  incompat: number;
  headerLength: number;
}

/** Parses the first 32 bytes of a ring. */
export function parseRingHeader(b: Buffer): RingHeader {
  const u = (i: number): number => b.readUInt32LE(i * 4);
  return { id: u(0), nr: u(1), head: u(2), tail: u(3), magic: u(4), compat: u(5), incompat: u(6), headerLength: u(7) };
}

/**
 * What is wrong with the header of a ring of `bytes` bytes for fs/aio.c, or undefined: its
 * magic, features and header length as aio_setup_ring writes them, nr the events that fit in
 * exactly those bytes, tail below nr (the kernel writes it; head is the process's, which the
 * kernel takes modulo nr).
 */
export function ringHeaderProblem(h: RingHeader, bytes: number): string | undefined {
  if (h.magic !== AIO_RING_MAGIC || h.compat !== AIO_RING_COMPAT || h.incompat !== AIO_RING_INCOMPAT || h.headerLength !== AIO_RING_HEADER) {
    return `its header is not an aio ring's (magic 0x${h.magic.toString(16)}, features ${h.compat}/${h.incompat}, header length ${h.headerLength})`;
  }
  if (bytes % PAGE_SIZE !== 0 || h.nr !== ringEvents(bytes / PAGE_SIZE)) {
    return `its header says ${h.nr} events, which do not fill its ${bytes} bytes (only part of the ring is mapped there?)`;
  }
  if (h.tail >= h.nr) return `its tail ${h.tail} is not below its ${h.nr} events`;
  return undefined;
}
