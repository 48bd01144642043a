/**
 * The controller's handle on one ptrace-stopped task: injected syscalls, a scratch area in the
 * task's memory for their arguments, and /proc/PID/mem access.
 */
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { SYS } from '../arch/x86-64.js';
import type { NativeError } from '../errors.js';
import { INJECT_SEIZED, INJECT_STEP, native, type InjectOptions } from '../native/binding.js';

const ERRNO_NAMES = new Map<number, string>(
  Object.entries(osConstants.errno).map(([name, no]) => [no, name]),
);
const SYSCALL_NAMES = new Map<number, string>(Object.entries(SYS).map(([n, nr]) => [nr, n]));

/** Builds an fs-style error for a failed injected syscall. */
export function injectedError(nr: number, errno: number, tid: number): NativeError {
  const code = ERRNO_NAMES.get(errno) ?? `E${errno}`;
  const name = SYSCALL_NAMES.get(nr) ?? `syscall ${nr}`;
  const err = new Error(`${code}: ${name} (injected into tid ${tid})`) as NativeError;
  err.code = code;
  err.errno = errno;
  err.syscall = name;
  return err;
}

/** Bytes of the r-x code area of a one-round-trip batch (native/inject-blob.cc: the program and its slots). */
export const BLOB_CODE_LEN = 4096;

/** Writable bytes a one-round-trip batch of `count` calls needs in the task: state word, timespec, stack slot, results, table. */
export function blobWorkLen(count: number): number {
  return 64 + count * 8 + count * 7 * 8;
}

/** A bump allocator over a region of the tracee's memory used to pass syscall arguments. */
export class Scratch {
  private used = 0;
  constructor(readonly tracee: Tracee, readonly addr: bigint, readonly size: number) {}

  /** Copies `data` into the tracee (8-byte aligned) and returns its address there. */
  put(data: Buffer): bigint {
    const at = this.alloc(data.length);
    this.tracee.writeMem(at, data);
    return at;
  }

  /** Copies a NUL-terminated string into the tracee and returns its address. */
  putString(s: string): bigint {
    return this.put(Buffer.from(`${s}\0`));
  }

  /** Reserves `len` bytes and returns their address (contents undefined). */
  alloc(len: number): bigint {
    const off = (this.used + 7) & ~7;
    if (off + len > this.size) throw new Error(`scratch area of tid ${this.tracee.tid} is full`);
    this.used = off + len;
    return this.addr + BigInt(off);
  }

  /** Forgets every allocation. */
  reset(): void {
    this.used = 0;
  }
}

/** A task stopped under ptrace by this thread. */
export class Tracee {
  private memFd = -1;
  /** Address of a `syscall` instruction in the task, used to inject syscalls. */
  gadget = 0n;

  /**
   * `seized`: a live task being checkpointed (PTRACE_SEIZE, no exit-kill): every injection
   * blocks its signals only while it runs and leaves it back in a PTRACE_EVENT_STOP, so ferry
   * dying between two injections lets it go intact (native/inject.cc). Otherwise a restore
   * stub, injected into by single-stepping.
   */
  constructor(readonly pid: number, readonly tid: number, readonly seized = false) {}

  private get mode(): 0 | 1 {
    return this.seized ? INJECT_SEIZED : INJECT_STEP;
  }

  /** Runs a syscall in the task; throws an fs-style error on -errno. */
  syscall(nr: number, ...args: Array<bigint | number>): bigint {
    const r = this.trySyscall(nr, ...args);
    if (r < 0n && r >= -4095n) throw injectedError(nr, Number(-r), this.tid);
    return r;
  }

  /** Runs a syscall in the task and returns the raw result (-errno on failure). */
  trySyscall(nr: number, ...args: Array<bigint | number>): bigint {
    if (this.gadget === 0n) throw new Error(`no syscall gadget set for tid ${this.tid}`);
    return native().injectSyscall(this.tid, this.gadget, this.mode, nr, ...args);
  }

  /** Runs several syscalls with one register save/restore; throws on the first failure. */
  syscalls(calls: ReadonlyArray<readonly [number, ...Array<bigint | number>]>): bigint[] {
    const results = this.trySyscalls(calls);
    const out: bigint[] = [];
    results.forEach((r, i) => {
      if (r < 0n && r >= -4095n) throw injectedError(calls[i]![0], Number(-r), this.tid);
      out.push(r);
    });
    return out;
  }

  /**
   * Runs several syscalls as one batch (native/inject.cc: one register save/restore and, for a
   * seized task, one signal block and one return to its stop) and returns each raw result
   * (-errno on failure; -ECANCELED for a call not run because one of the first
   * `options.guard` failed). `options` can also read the task's memory within the batch.
   */
  trySyscalls(calls: ReadonlyArray<readonly [number, ...Array<bigint | number>]>, options?: InjectOptions): BigInt64Array {
    if (this.gadget === 0n) throw new Error(`no syscall gadget set for tid ${this.tid}`);
    const flat = new BigUint64Array(calls.length * 7);
    calls.forEach((c, i) => {
      c.forEach((v, j) => { flat[i * 7 + j] = BigInt.asUintN(64, BigInt(v)); });
    });
    return native().injectSyscalls(this.tid, this.gadget, flat, this.mode, options);
  }

  /** Its /proc/PID/mem, opened once (read and write), closed by close(). */
  mem(): number {
    if (this.memFd < 0) this.memFd = openSync(`/proc/${this.pid}/mem`, 'r+');
    return this.memFd;
  }

  /** Writes through /proc/PID/mem (FOLL_FORCE: read-only and PROT_NONE pages too). */
  writeMem(addr: bigint, data: Buffer, offset = 0, length = data.length - offset): void {
    const fd = this.mem();
    let done = 0;
    while (done < length) {
      const n = writeSync(fd, data, offset + done, length - done, Number(addr) + done);
      if (n <= 0) throw new Error(`short write to memory of pid ${this.pid} at 0x${(addr + BigInt(done)).toString(16)}`);
      done += n;
    }
  }

  /** Reads through /proc/PID/mem. */
  readMem(addr: bigint, length: number): Buffer {
    const buf = Buffer.alloc(length);
    const n = readSync(this.mem(), buf, 0, length, Number(addr));
    if (n !== length) throw new Error(`short read of memory of pid ${this.pid} at 0x${addr.toString(16)}`);
    return buf;
  }

  /** Closes /proc/PID/mem. */
  close(): void {
    if (this.memFd >= 0) closeSync(this.memFd);
    this.memFd = -1;
  }
}
