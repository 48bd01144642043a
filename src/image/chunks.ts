/**
 * Reading a chunked entry (page data) with each chunk verified against its sha256 as it is
 * read, so restore reads every byte of the image once (docs/image-format.md, "Chunked entries").
 *
 * Restore writes pages into the new process from the JS thread, synchronously (the tracee's
 * thread affinity, and /proc/PID/mem writes are plain pwrite(2)s). To keep the second core
 * busy, the chunks are hashed on a worker thread driven through shared memory and Atomics,
 * not messages: the JS thread never returns to the event loop in the middle of a process's
 * rebuild. A chunk is read into one of a few shared buffers, handed to the worker, and written
 * into the process while the worker hashes it; its digest is checked before its buffer is
 * reused and, for all of them, by finish(), which the caller runs before the process goes on
 * to its next step. So bytes of a chunk may be in the stopped, traced new process a few
 * milliseconds before their digest is confirmed, but no process runs before every digest is,
 * and a mismatch fails the restore, which kills every process it made.
 * Without a worker (a small image: starting one costs tens of milliseconds) each chunk is
 * hashed on the JS thread before a byte of it is handed out.
 */
import { createHash } from 'node:crypto';
import { readSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { FerryError, type ErrorContext } from '../errors.js';

/** Control words of the ring (Int32Array indices). */
const HEAD = 0;
/** 1 once the worker serves the ring. */
const READY = 1;
/** Per slot: the number of the last request served (1-based). */
const DONE = 2;
/** Most slots a ring may have. */
const MAX_SLOTS = 8;
/** Requests: [slot, length] pairs, MAX_SLOTS of them. */
const REQ = DONE + MAX_SLOTS;
const CTL_WORDS = REQ + 2 * MAX_SLOTS;
/** How long the JS thread waits for one chunk's digest before it gives up on the worker. */
const WAIT_MS = 60_000;

/** What hash-worker.ts is started with to serve a SyncHasher. */
export interface RingData {
  ring: { ctl: SharedArrayBuffer; out: SharedArrayBuffer; slots: SharedArrayBuffer[] };
}

/**
 * A worker thread hashing chunks of a few shared buffers ("slots") on request, driven
 * synchronously: submit() hands it a slot, digest() blocks (Atomics.wait) until that slot's
 * sha256 is ready. A slot is submitted again only after its digest was taken, so the ring
 * never holds more requests than slots. Nothing waits for the thread to start: until it
 * serves the ring (`ready`), chunks are hashed on the JS thread.
 */
export class SyncHasher {
  readonly slots: Buffer[];
  private readonly ctl: Int32Array;
  private readonly out: Uint8Array;
  private readonly worker: Worker;
  /** The request number each slot waits for. */
  private readonly want: number[];
  private seq = 0;
  private closed = false;

  /** Starts the worker with `count` slots of `bytes` each. It does not keep the process alive; the owner closes it. */
  constructor(count: number, bytes: number) {
    if (count < 1 || count > MAX_SLOTS) throw new RangeError(`a hash ring has 1 to ${MAX_SLOTS} slots`);
    const ctl = new SharedArrayBuffer(CTL_WORDS * 4);
    const out = new SharedArrayBuffer(count * 32);
    this.slots = Array.from({ length: count }, () => Buffer.from(new SharedArrayBuffer(bytes)));
    this.ctl = new Int32Array(ctl);
    this.out = new Uint8Array(out);
    this.want = this.slots.map(() => 0);
    // A worker inherits the process's execArgv; --input-type (node -e) is refused there.
    const execArgv = process.execArgv.filter((a) => !a.startsWith('--input-type'));
    const workerData: RingData = { ring: { ctl, out, slots: this.slots.map((s) => s.buffer as SharedArrayBuffer) } };
    this.worker = new Worker(new URL('./hash-worker.js', import.meta.url), { execArgv, workerData });
    // A worker that fails to start never says it is ready: the JS thread hashes everything.
    this.worker.on('error', () => {});
    this.worker.unref();
  }

  /** Whether the worker serves the ring now (else the caller hashes on its own thread). */
  get ready(): boolean {
    return !this.closed && Atomics.load(this.ctl, READY) === 1;
  }

  /** Asks for the sha256 of the first `length` bytes of slot `slot` (only when ready). */
  submit(slot: number, length: number): void {
    const at = REQ + (this.seq % MAX_SLOTS) * 2;
    this.ctl[at] = slot;
    this.ctl[at + 1] = length;
    this.seq++;
    this.want[slot] = this.seq;
    Atomics.store(this.ctl, HEAD, this.seq);
    Atomics.notify(this.ctl, HEAD);
  }

  /** The sha256 (hex) of what was last submitted in `slot`; blocks until it is ready. */
  digest(slot: number): string {
    const want = this.want[slot]!;
    for (const end = Date.now() + WAIT_MS; ;) {
      const done = Atomics.load(this.ctl, DONE + slot);
      if (done === want) break;
      if (Date.now() > end) throw new Error('the hash worker did not answer within 60 s');
      Atomics.wait(this.ctl, DONE + slot, done, 1000);
    }
    return Buffer.from(this.out.subarray(slot * 32, slot * 32 + 32)).toString('hex');
  }

  /** Stops the worker (idempotent). */
  async close(): Promise<void> {
    this.closed = true;
    Atomics.store(this.ctl, HEAD, -1);
    Atomics.notify(this.ctl, HEAD);
    await this.worker.terminate();
  }
}

/**
 * The worker's side of SyncHasher (hash-worker.ts runs it when started with RingData): says
 * it is ready, then serves requests in order until the head turns negative.
 */
export function serveRing({ ring }: RingData): void {
  const ctl = new Int32Array(ring.ctl);
  const out = new Uint8Array(ring.out);
  Atomics.store(ctl, READY, 1);
  for (let served = 0; ;) {
    let head = Atomics.load(ctl, HEAD);
    while (head === served) {
      Atomics.wait(ctl, HEAD, served);
      head = Atomics.load(ctl, HEAD);
    }
    if (head < 0) return;
    const at = REQ + (served % MAX_SLOTS) * 2;
    const slot = ctl[at]!;
    const length = ctl[at + 1]!;
    out.set(createHash('sha256').update(new Uint8Array(ring.slots[slot]!, 0, length)).digest(), slot * 32);
    served++;
    Atomics.store(ctl, DONE + slot, served);
    Atomics.notify(ctl, DONE + slot);
  }
}

/** Where a chunked entry is and what its chunks must hash to. */
export interface ChunkedLocation {
  fd: number;
  /** Offset of the entry's first byte in the image file. */
  offset: number;
  size: number;
  chunkSize: number;
  /** The manifest's digests; undefined when the entry was verified whole already (openImage). */
  digests: readonly string[] | undefined;
}

/**
 * Verified random access to one entry, chunk by chunk. Reads are expected in increasing order
 * (restore holds each process's areas to consecutive ranges of its pages entry before it
 * reads any: checkPagesEntry), so each chunk is read and hashed once; a chunk asked for
 * again is read and hashed again. One source at a time may use a hasher: finish() ends its use.
 */
export class ChunkSource {
  private cur = -1;
  private curSlot = -1;
  private next = 0;
  /** Chunk whose digest each slot still has to confirm; -1: none. */
  private readonly pending: number[];
  private readonly bufs: Buffer[];
  private readonly chunkSize: number;

  constructor(private readonly at: ChunkedLocation, private readonly hasher: SyncHasher | undefined,
    private readonly label: string, private readonly name: string, private readonly where: ErrorContext) {
    // An entry verified whole is read in chunks of the same bound.
    this.chunkSize = at.chunkSize;
    const useRing = hasher !== undefined && at.digests !== undefined && hasher.slots[0]!.length >= at.chunkSize;
    this.bufs = useRing ? hasher.slots : [Buffer.allocUnsafe(Math.min(at.chunkSize, Math.max(at.size, 1)))];
    if (!useRing) this.hasher = undefined;
    this.pending = this.bufs.map(() => -1);
  }

  get size(): number {
    return this.at.size;
  }

  /**
   * Verified bytes of the entry from `pos`: at most `max`, never past the end of pos's chunk
   * (the caller asks again for the rest). Valid until the next call.
   */
  view(pos: number, max: number): Buffer {
    if (!Number.isSafeInteger(pos) || pos < 0 || pos >= this.at.size) {
      throw new FerryError('EIMAGE', `image ${this.label}: entry ${this.name} has ${this.at.size} bytes, a read at ${pos} is past its end`, this.where);
    }
    const c = Math.floor(pos / this.chunkSize);
    if (c !== this.cur) this.load(c);
    const start = c * this.chunkSize;
    const len = Math.min(this.chunkSize, this.at.size - start);
    const off = pos - start;
    return this.bufs[this.curSlot]!.subarray(off, off + Math.min(max, len - off));
  }

  /** Confirms every chunk handed out so far; throws the first mismatch. */
  finish(): void {
    for (let s = 0; s < this.bufs.length; s++) this.confirm(s);
  }

  private load(c: number): void {
    const slot = this.next;
    this.next = (this.next + 1) % this.bufs.length;
    this.confirm(slot);
    const buf = this.bufs[slot]!;
    const start = c * this.chunkSize;
    const len = Math.min(this.chunkSize, this.at.size - start);
    for (let got = 0; got < len;) {
      const n = readSync(this.at.fd, buf, got, len - got, this.at.offset + start + got);
      if (n <= 0) throw new FerryError('EIMAGE', `image ${this.label} is truncated inside entry ${this.name}`, this.where);
      got += n;
    }
    this.cur = c;
    this.curSlot = slot;
    const digests = this.at.digests;
    if (digests === undefined) return;
    if (this.hasher?.ready) {
      this.hasher.submit(slot, len);
      this.pending[slot] = c;
    } else {
      this.check(c, createHash('sha256').update(buf.subarray(0, len)).digest('hex'));
    }
  }

  private confirm(slot: number): void {
    const c = this.pending[slot]!;
    if (c < 0) return;
    this.pending[slot] = -1;
    this.check(c, this.hasher!.digest(slot));
  }

  private check(c: number, sum: string): void {
    const want = this.at.digests![c]!;
    if (sum !== want) {
      this.cur = -1; // never handed out again
      throw new FerryError('EIMAGE', `image ${this.label} is corrupt: entry ${this.name} chunk ${c} has sha256 ${sum.slice(0, 12)}… `
        + `but the manifest says ${want.slice(0, 12)}…`, this.where);
    }
  }
}
