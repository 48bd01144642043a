/**
 * Memory for O_DIRECT writes of an image (open(2), "O_DIRECT"): the buffer's address, the
 * file offset and the length must be multiples of the device's logical block size (512 bytes
 * here, /sys/block/vda/queue/logical_block_size; a device that wants more fails the writer's
 * first write, and the image is then written through the page cache: writer.ts).
 *
 * Why direct: on this VM a page of the page cache that was freed and is used again is new
 * memory to the hypervisor, and its first touch costs 13-33 µs; writing 1 GiB through the
 * page cache took 0.3-1.8 s of CPU (copy_folio_from_iter_atomic was 45% of a checkpoint's
 * samples) and the fsync after it 350-400 ms more, where a direct write of the same 1 GiB
 * took 55-85 ms of CPU and left nothing for the fsync (bench/dump-restore.ts measures both).
 *
 * A shared WebAssembly.Memory is a SharedArrayBuffer (the hash workers read it without a
 * copy) whose memory V8 maps page-aligned; Buffers cut from it at multiples of 512 bytes are
 * aligned. The writer writes a chunk directly only if it lies in such memory (directReady);
 * any other chunk is copied into an aligned staging buffer first.
 */
import { native } from '../native/binding.js';

/** The alignment O_DIRECT needs of address, offset and length. */
export const DIRECT_ALIGN = 512;

/** WebAssembly memory pages are 64 KiB. */
const WASM_PAGE = 65536;

// Node has WebAssembly; the project's lib settings do not declare it (no DOM lib).
declare const WebAssembly: {
  Memory: new (d: { initial: number; maximum: number; shared: boolean }) => { buffer: SharedArrayBuffer };
};

const direct = new WeakSet<ArrayBufferLike>();

/** `bytes` of zeroed, page-aligned shared memory (a SharedArrayBuffer), usable for O_DIRECT. */
export function directBuffer(bytes: number): Buffer {
  return takeWarm(bytes) ?? freshBuffer(bytes);
}

function freshBuffer(bytes: number): Buffer {
  const pages = Math.max(1, Math.ceil(bytes / WASM_PAGE));
  const mem = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
  direct.add(mem.buffer);
  return Buffer.from(mem.buffer, 0, bytes);
}

/**
 * Buffers made and faulted in ahead of need (warmBuffers), smallest first: on this VM the
 * first touch of a fresh page costs 10-15 µs, so a restore that reads its first chunks into
 * fresh buffers pays 3-8 ms a MiB, inside a migration's downtime (the lazy restore's pages
 * written before its let-go: 5.3 ms for 64 KiB from one 1 MiB chunk). Views of slabs: one
 * slab for each warmBuffers call, so that huge pages can back buffers too small for one each.
 */
const warm: Buffer[] = [];

/**
 * Makes `count` buffers of `bytes` and faults every page of them in now, for the next
 * directBuffer or takeWarm calls to take (a migration target warms them at the sender's
 * hello, while the tree still runs there). dropWarm() lets go of those not taken.
 */
export function warmBuffers(count: number, bytes: number): void {
  const each = Math.ceil(bytes / DIRECT_ALIGN) * DIRECT_ALIGN; // each view aligned for O_DIRECT
  const slab = faultedIn(freshBuffer(count * each));
  for (let i = 0; i < count; i++) warm.push(slab.subarray(i * each, i * each + bytes));
  warm.sort((a, b) => a.length - b.length);
}

/**
 * The smallest warm buffer that holds `bytes` (cut to them, zeroed), taken; undefined if none
 * does. A view of a slab that may hold others: its memory is `byteOffset` into `buffer`.
 */
export function takeWarm(bytes: number): Buffer | undefined {
  const i = warm.findIndex((b) => b.length >= bytes);
  if (i < 0) return undefined;
  const [b] = warm.splice(i, 1);
  return b!.subarray(0, bytes);
}

/** Buffers this big or bigger are advised to take huge pages (native populate). */
const HUGE_PAGE = 2 * 1024 * 1024;

/**
 * `buf`, a new buffer (all zeros), with every page of it faulted in now, so that its first use
 * does not pay for it: in one madvise(2) (native populate: 32 MiB in 6-8 ms here, 2-60 with
 * huge pages advised, where writing a zero to each page took 85-95; architecture.md, "Fresh
 * memory"), else by writing a zero to each page.
 */
export function faultedIn(buf: Buffer): Buffer {
  if (native().populate(buf, buf.length >= HUGE_PAGE)) return buf;
  for (let off = 0; off < buf.length; off += 4096) buf[off] = 0;
  return buf;
}

/**
 * faultedIn's madvise(2) on a thread of libuv's pool (native populateLater): `buf` may be used
 * at once, and is faulted in once this settles (it never rejects). Where the kernel refuses,
 * nothing is done (a zero written to each page could land on bytes written meanwhile).
 */
export async function faultInLater(buf: Buffer): Promise<void> {
  try {
    await native().populateLater(buf, buf.length >= HUGE_PAGE);
  } catch { /* the first use pays for the faults */ }
}

/** Lets go of the warm buffers not taken. */
export function dropWarm(): void {
  warm.length = 0;
}

/** Whether `chunk` may be written with O_DIRECT as it is: aligned memory and length. */
export function directReady(chunk: Buffer): boolean {
  return direct.has(chunk.buffer) && chunk.byteOffset % DIRECT_ALIGN === 0 && chunk.length % DIRECT_ALIGN === 0;
}
