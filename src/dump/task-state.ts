/**
 * Collects a stopped task's state from outside: /proc, ptrace, and the few syscalls only the
 * task can answer (injected: brk(0), PR_GET_TID_ADDRESS, sigaltstack, rt_sigaction, getitimer,
 * timer_gettime).
 */
import {
  decodeRegs, KSIGACTION_SIZE, MAP_ANONYMOUS, MAP_PRIVATE, NSIG, PAGE_SIZE, PR_GET_TID_ADDRESS,
  PROT_READ, PROT_WRITE, REG_NAMES, SIGKILL, SIGSTOP, SIG_DFL, STACK_T_SIZE, SYS, SYSCALL_INSN, ITIMERVAL_SIZE,
} from '../arch/x86-64.js';
import {
  hex, type Hex, type ItimerRecord, type MmRecord, type PendingSignal, type SigactionRecord, type TaskRecord,
  type ThreadRecord, xstateEntry,
} from '../image/records.js';
import { native } from '../native/binding.js';
import { parseAuxv } from '../proc/auxv.js';
import type { Vma } from '../proc/maps.js';
import { readProcLink, readProcText } from '../proc/read.js';
import type { ProcStat } from '../proc/stat.js';
import { readFileSync } from 'node:fs';
import { Scratch, type Tracee } from '../task/tracee.js';
import { readPosixTimers } from './timers.js';
import type { RegName } from '../arch/x86-64.js';

/** Finds a `syscall` instruction in the task's [vdso] to inject syscalls through. */
export function vdsoGadget(pid: number, vmas: readonly Vma[]): bigint {
  const vdso = vmas.find((v) => v.path === '[vdso]');
  if (!vdso) throw new Error(`pid ${pid} has no [vdso] mapping to inject syscalls through`);
  const len = Number(vdso.end - vdso.start);
  const buf = Buffer.alloc(len);
  native().readMemory(pid, new Float64Array([Number(vdso.start), len]), buf);
  const off = buf.indexOf(SYSCALL_INSN);
  if (off < 0) throw new Error(`no syscall instruction in the [vdso] of pid ${pid}`);
  return vdso.start + BigInt(off);
}

/** Per-thread state only the thread itself can tell. */
export interface ThreadInjected {
  sigaltstack: ThreadRecord['sigaltstack'];
  tidAddress: Hex;
}

/** State only the task itself can tell, read through injected syscalls. */
export interface InjectedState {
  brk: bigint;
  sigactions: SigactionRecord[];
  itimers: TaskRecord['itimers'];
  /** By tid. */
  threads: Map<number, ThreadInjected>;
}

/**
 * Reads injected state: process-wide through the main thread (brk, every disposition, itimers,
 * POSIX timers), and sigaltstack and clear_child_tid through each thread itself. One scratch
 * page is mapped by the main thread for all of them (they share the address space) and
 * unmapped again.
 *
 * Every disposition is asked for, in one batch with the main thread's other calls: about 2 ms
 * of the 2.5 ms this takes for a small process (62 calls at ~32 µs, two ptrace stops each).
 * /proc/PID/status's SigCgt and SigIgn name the signals with a handler and the ignored ones,
 * but not sa_flags, sa_mask or the restorer, which a SIG_DFL or SIG_IGN disposition keeps
 * from the sigaction(2) call that set it (execve clears them; glibc's signal() and sigaction()
 * set SA_RESTORER and a restorer even for SIG_IGN). They are not all inert: with SIG_DFL,
 * SIGCHLD's SA_NOCLDWAIT still makes the kernel reap the children (do_notify_parent()), and
 * SA_NOCLDSTOP still decides whether a stopped child queues SIGCHLD for a parent that blocks
 * it and reads it with sigwaitinfo(2) or a signalfd; and any of them is what the program reads
 * back from sigaction(2) (to save and later reinstall a disposition). So they are read, and a
 * SIG_DFL disposition is recorded when one of them is set.
 */
export function readInjectedState(main: Tracee, others: readonly Tracee[]): InjectedState {
  const scratchAddr = main.syscall(SYS.mmap, 0, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  try {
    const scratch = new Scratch(main, scratchAddr, PAGE_SIZE);
    const actsAt = scratch.alloc(KSIGACTION_SIZE * NSIG);
    const ssAt = scratch.alloc(STACK_T_SIZE);
    const tidAt = scratch.alloc(8);
    const itimersAt = scratch.alloc(3 * ITIMERVAL_SIZE);
    const calls: Array<[number, ...Array<bigint | number>]> = [[SYS.brk, 0], ...threadCalls(ssAt, tidAt)];
    for (let which = 0; which < 3; which++) calls.push([SYS.getitimer, which, itimersAt + BigInt(which * ITIMERVAL_SIZE)]);
    const signals: number[] = [];
    for (let sig = 1; sig <= NSIG; sig++) {
      if (sig === SIGKILL || sig === SIGSTOP) continue;
      signals.push(sig);
      calls.push([SYS.rt_sigaction, sig, 0, actsAt + BigInt((sig - 1) * KSIGACTION_SIZE), 8]);
    }
    const results = main.syscalls(calls);
    const mem = main.readMem(scratchAddr, PAGE_SIZE);
    const sigactions: SigactionRecord[] = [];
    for (const sig of signals) {
      const o = (sig - 1) * KSIGACTION_SIZE;
      const handler = mem.readBigUInt64LE(o);
      const flags = mem.readBigUInt64LE(o + 8);
      const restorer = mem.readBigUInt64LE(o + 16);
      const mask = mem.readBigUInt64LE(o + 24);
      // What execve leaves (and a new task has): no record.
      if (handler === SIG_DFL && flags === 0n && restorer === 0n && mask === 0n) continue;
      sigactions.push({ signo: sig, handler: hex(handler), flags: hex(flags), restorer: hex(restorer), mask: hex(mask) });
    }
    const threads = new Map<number, ThreadInjected>();
    /** The sigaltstack and clear_child_tid a thread's calls left in `m` (a copy of [ssAt, tidAt + 8)). */
    const threadState = (m: Buffer): ThreadInjected => ({
      sigaltstack: { sp: hex(m.readBigUInt64LE(0)), flags: m.readInt32LE(8), size: hex(m.readBigUInt64LE(16)) },
      tidAddress: hex(m.readBigUInt64LE(Number(tidAt - ssAt))),
    });
    const ssOff = Number(ssAt - scratchAddr);
    threads.set(main.tid, threadState(mem.subarray(ssOff, ssOff + Number(tidAt - ssAt) + 8)));
    for (const t of others) {
      t.syscalls(threadCalls(ssAt, tidAt));
      threads.set(t.tid, threadState(main.readMem(ssAt, Number(tidAt - ssAt) + 8)));
    }
    const it = (which: number): ItimerRecord => {
      const o = Number(itimersAt - scratchAddr) + which * ITIMERVAL_SIZE;
      const f = (k: number): number => Number(mem.readBigInt64LE(o + k * 8));
      return { interval: [f(0), f(1)], value: [f(2), f(3)] };
    };
    const itimers = { real: it(0), virtual: it(1), prof: it(2), posix: readPosixTimers(main, scratch) };
    return { brk: results[0]!, sigactions, itimers, threads };
  } finally {
    main.syscall(SYS.munmap, scratchAddr, PAGE_SIZE);
  }
}

/** A thread's own calls: sigaltstack into `ssAt`, PR_GET_TID_ADDRESS into `tidAt`. */
function threadCalls(ssAt: bigint, tidAt: bigint): Array<[number, ...Array<bigint | number>]> {
  return [[SYS.sigaltstack, 0, ssAt], [SYS.prctl, PR_GET_TID_ADDRESS, tidAt, 0, 0, 0]];
}

/** Registers, XSAVE area, mask, rseq and robust list of one stopped thread. */
export function readThread(pid: number, tid: number, realSigmask: bigint, injected: ThreadInjected):
  { record: ThreadRecord; xstate: Buffer } {
  const n = native();
  const regs = decodeRegs(n.getRegs(tid));
  const regsHex = {} as Record<RegName, Hex>;
  for (const name of REG_NAMES) regsHex[name] = hex(regs[name]);
  const rseq = n.getRseq(tid);
  const robust = n.getRobustList(tid);
  return {
    record: {
      tid,
      regs: regsHex,
      xstate: xstateEntry(pid, tid),
      sigmask: hex(realSigmask),
      sigaltstack: injected.sigaltstack,
      rseq: rseq && { pointer: hex(rseq.pointer), size: rseq.size, signature: rseq.signature, flags: rseq.flags },
      robustList: { head: hex(robust.head), len: robust.len },
      tidAddress: injected.tidAddress,
      comm: readProcText(pid, `task/${tid}/comm`).replace(/\n$/, ''),
      pending: pendingSignals(tid, false),
    },
    xstate: n.getXstate(tid),
  };
}

/** Signals queued for a thread (or, with `shared`, for its process), read without dequeuing. */
export function pendingSignals(tid: number, shared: boolean): PendingSignal[] {
  return native().peekSiginfo(tid, shared).map((si) => ({ signo: si.readInt32LE(0), siginfo: si.toString('base64') }));
}

/** mm fields for PR_SET_MM_MAP: from /proc/PID/stat, the auxv and the injected brk(0). */
export function readMm(pid: number, stat: ProcStat, brk: bigint): MmRecord {
  const auxv = parseAuxv(readFileSync(`/proc/${pid}/auxv`));
  return {
    startCode: hex(stat.startCode), endCode: hex(stat.endCode),
    startData: hex(stat.startData), endData: hex(stat.endData),
    startBrk: hex(stat.startBrk), brk: hex(brk), startStack: hex(stat.startStack),
    argStart: hex(stat.argStart), argEnd: hex(stat.argEnd),
    envStart: hex(stat.envStart), envEnd: hex(stat.envEnd),
    auxv: auxv.map(([k, v]) => [hex(k), hex(v)]),
  };
}

/** Where the task's executable and cwd are. */
export function readPaths(pid: number): { exe: string; cwd: string } {
  return { exe: readProcLink(pid, 'exe'), cwd: readProcLink(pid, 'cwd') };
}
