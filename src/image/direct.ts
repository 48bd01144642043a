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
  const pages = Math.max(1, Math.ceil(bytes / WASM_PAGE));
  const mem = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
  direct.add(mem.buffer);
  return Buffer.from(mem.buffer, 0, bytes);
}

/** Whether `chunk` may be written with O_DIRECT as it is: aligned memory and length. */
export function directReady(chunk: Buffer): boolean {
  return direct.has(chunk.buffer) && chunk.byteOffset % DIRECT_ALIGN === 0 && chunk.length % DIRECT_ALIGN === 0;
}
