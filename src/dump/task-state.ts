/**
 * Collects a stopped task's state from outside: /proc, ptrace, and the few syscalls only the
 * task can answer (injected, one batch per thread: brk(0), PR_GET_TID_ADDRESS, sigaltstack,
 * rt_sigaction, getitimer, timer_gettime, and the securebits, parent-death signal, scheduling
 * policy, dumpable and subreaper flags creds.ts records).
 */
import {
  decodeRegs, encodeRegs, ITIMERSPEC_SIZE, ITIMERVAL_SIZE, KSIGACTION_SIZE, MADV_DONTNEED, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_PRIVATE,
  MCL_FUTURE, MCL_ONFAULT, MEMBARRIER_CMD_GET_REGISTRATIONS, MEMBARRIER_REGISTRATIONS, NSIG,
  PAGE_SIZE, PR_GET_THP_DISABLE, PR_GET_TID_ADDRESS, PR_THP_DISABLE_EXCEPT_ADVISED, PROT_EXEC, PROT_READ, PROT_WRITE, REG_NAMES, SIGKILL, SIGSTOP, SIG_DFL, STACK_T_SIZE, SYS,
  SYSCALL_INSN,
} from '../arch/x86-64.js';
import {
  hex, type Hex, type ItimerRecord, type MmRecord, type PendingSignal, type RemovedDirRecord, type SigactionRecord,
  type TaskRecord, type ThreadFsRecord, type ThreadRecord, type VmaRecord, xstateEntry,
} from '../image/records.js';
import { FerryError } from '../errors.js';
import { native, type InjectBlob } from '../native/binding.js';
import { parseAuxv } from '../proc/auxv.js';
import { freeRange, type Vma } from '../proc/maps.js';
import { readProcLink, readProcText } from '../proc/read.js';
import type { ProcStat } from '../proc/stat.js';
import { parseStatus, statusComm } from '../proc/status.js';
import { readFileSync, statSync } from 'node:fs';
import { BLOB_CODE_LEN, blobWorkLen, injectedError, type Tracee } from '../task/tracee.js';
import { faultArmed, faultPointSync } from '../fault.js';
import { readRootDir, removedDir, type RootBase } from './root-dir.js';
import { posixTimerCalls, posixTimerRecords, type ProcTimer } from './timers.js';
import type { RegName } from '../arch/x86-64.js';

/**
 * Finds a `syscall` instruction to inject syscalls through: in the task's [vdso], or, for a
 * process that unmapped its vDSO, in its other readable executable areas (any two bytes 0f 05
 * do: the thread executes one instruction from there). The areas are read, never written.
 */
export function syscallGadget(pid: number, vmas: readonly Vma[]): bigint {
  const vdso = vmas.filter((v) => v.path === '[vdso]');
  const code = vdso.length > 0 ? vdso : vmas.filter((v) => v.exec && v.read && v.path !== '[vsyscall]');
  for (const v of code) {
    const len = Number(v.end - v.start);
    const buf = Buffer.alloc(len);
    try {
      native().readMemory(pid, new Float64Array([Number(v.start), len]), buf);
    } catch {
      continue; // not backed here (a truncated file): another area may do
    }
    const off = buf.indexOf(SYSCALL_INSN);
    if (off >= 0) return v.start + BigInt(off);
  }
  throw new FerryError('EUNSUPPORTED', `pid ${pid} has no syscall instruction ferry can inject syscalls through `
    + `(${vdso.length > 0 ? 'none in its [vdso]' : 'no [vdso], and none in its executable areas'}); the process was left running`);
}

const PR_GET_PDEATHSIG = 2, PR_GET_DUMPABLE = 3, PR_GET_SECUREBITS = 27, PR_GET_CHILD_SUBREAPER = 37;

/** Per-thread state only the thread itself can tell. */
export interface ThreadInjected {
  sigaltstack: ThreadRecord['sigaltstack'];
  tidAddress: Hex;
  /** prctl(PR_GET_SECUREBITS). */
  securebits: number;
  /** prctl(PR_GET_PDEATHSIG). */
  pdeathsig: number;
  /** sched_getscheduler(0): the policy, with SCHED_RESET_ON_FORK ORed in. */
  schedPolicy: number;
}

/** State only the task itself can tell, read through injected syscalls. */
export interface InjectedState {
  brk: bigint;
  sigactions: SigactionRecord[];
  itimers: TaskRecord['itimers'];
  /** prctl(PR_GET_DUMPABLE), process-wide (the mm's). */
  dumpable: number;
  /** prctl(PR_GET_CHILD_SUBREAPER). */
  childSubreaper: boolean;
  /** mlockall(2) flags in force for future mappings (MCL_FUTURE, with MCL_ONFAULT or not); absent: none. */
  mlockall?: number;
  /** membarrier(2) MEMBARRIER_CMD_REGISTER_* commands the process did (ORed); absent: none, or a kernel that cannot tell. */
  membarrier?: number;
  /** prctl(PR_GET_THP_DISABLE): 0, 1 (huge pages off), or 1 | PR_THP_DISABLE_EXCEPT_ADVISED. */
  thpDisable: number;
  /** By tid. */
  threads: Map<number, ThreadInjected>;
}

type Call = [number, ...Array<bigint | number>];

/** Bytes of one thread's slot in the scratch area: stack_t, clear_child_tid, pdeathsig. */
const THREAD_SLOT = STACK_T_SIZE + 8 + 8;

/** A thread's own calls, results into its slot at `at`; their results 2 and 4 are securebits and policy. */
function threadCalls(at: bigint): Call[] {
  return [
    [SYS.sigaltstack, 0, at],
    [SYS.prctl, PR_GET_TID_ADDRESS, at + BigInt(STACK_T_SIZE), 0, 0, 0],
    [SYS.prctl, PR_GET_SECUREBITS, 0, 0, 0, 0],
    [SYS.prctl, PR_GET_PDEATHSIG, at + BigInt(STACK_T_SIZE + 8), 0, 0, 0],
    [SYS.sched_getscheduler, 0],
  ];
}

/** What threadCalls left: `slot` the thread's slot, `results` its five results. */
function threadState(slot: Buffer, results: ArrayLike<bigint>): ThreadInjected {
  return {
    sigaltstack: { sp: hex(slot.readBigUInt64LE(0)), flags: slot.readInt32LE(8), size: hex(slot.readBigUInt64LE(16)) },
    tidAddress: hex(slot.readBigUInt64LE(STACK_T_SIZE)),
    securebits: Number(results[2]!),
    pdeathsig: slot.readInt32LE(STACK_T_SIZE + 8),
    schedPolicy: Number(results[4]!),
  };
}

/** Throws the first failed call of `calls` (results -4095..-1) as an injected-syscall error; `from` on may fail. */
function checkResults(t: Tracee, calls: readonly Call[], results: ArrayLike<bigint>, from = calls.length): void {
  calls.forEach((c, i) => {
    const r = results[i]!;
    if (i >= from) return;
    if (r < 0n && r >= -4095n) throw injectedError(c[0], Number(-r), t.tid);
  });
}

/**
 * Reads injected state, one batch per thread (native/inject.cc: the signal block, the register
 * save and the return to the stop are paid once per batch, so nothing is split that need not
 * be). Process-wide through the main thread: brk, every disposition, itimers, POSIX timers
 * (`timers`, listed from /proc before), dumpable and child subreaper; through each thread
 * itself: sigaltstack, clear_child_tid, securebits, parent-death signal, scheduling policy.
 *
 * Results land in one scratch area mapped for the purpose at an address the layout `vmas`
 * leaves free with a free page on each side (proc/maps.ts freeRange), with
 * MAP_FIXED_NOREPLACE, as the first call of the first batch; the batch stops there if that
 * fails, so nothing is written anywhere else. The main thread's batch reads the area back
 * and unmaps it as its last call, which leaves the layout as it was: the caller may keep the
 * maps it read before. Threads other than the main one run first, so that a single-threaded
 * process needs exactly one batch.
 *
 * Every disposition is asked for: /proc/PID/status's SigCgt and SigIgn name the signals with
 * a handler and the ignored ones, but not sa_flags, sa_mask or the restorer, which a SIG_DFL
 * or SIG_IGN disposition keeps from the sigaction(2) call that set it (execve clears them;
 * glibc's signal() and sigaction() set SA_RESTORER and a restorer even for SIG_IGN). They are
 * not all inert: with SIG_DFL, SIGCHLD's SA_NOCLDWAIT still makes the kernel reap the children
 * (do_notify_parent()), and SA_NOCLDSTOP still decides whether a stopped child queues SIGCHLD
 * for a parent that blocks it and reads it with sigwaitinfo(2) or a signalfd; and any of them
 * is what the program reads back from sigaction(2) (to save and later reinstall a
 * disposition). So they are read, and a SIG_DFL disposition is recorded when one is set.
 */
export function readInjectedState(main: Tracee, others: readonly Tracee[], vmas: readonly Vma[],
  vmflags: ReadonlyMap<bigint, readonly string[]>, timers: readonly ProcTimer[], seccomp: number): InjectedState {
  const threads = [main, ...others];
  const layout = {
    acts: 0,
    itimers: KSIGACTION_SIZE * NSIG,
    subreaper: KSIGACTION_SIZE * NSIG + 3 * ITIMERVAL_SIZE,
    timers: KSIGACTION_SIZE * NSIG + 3 * ITIMERVAL_SIZE + 8,
    threads: KSIGACTION_SIZE * NSIG + 3 * ITIMERVAL_SIZE + 8 + timers.length * ITIMERSPEC_SIZE,
    work: KSIGACTION_SIZE * NSIG + 3 * ITIMERVAL_SIZE + 8 + timers.length * ITIMERSPEC_SIZE + threads.length * THREAD_SLOT,
  };
  // The main thread's calls (numbers of timers known: they only need the area's address).
  const mainCalls = (at: (off: number) => bigint, probe: bigint, slot0: bigint): { calls: Call[]; signals: number[]; timersFrom: number;
    dumpableAt: number; probeAt: number; membarrierAt: number; thpAt: number; } => {
    const calls: Call[] = [...threadCalls(slot0), [SYS.brk, 0]];
    for (let which = 0; which < 3; which++) calls.push([SYS.getitimer, which, at(layout.itimers + which * ITIMERVAL_SIZE)]);
    const signals: number[] = [];
    for (let sig = 1; sig <= NSIG; sig++) {
      if (sig === SIGKILL || sig === SIGSTOP) continue;
      signals.push(sig);
      calls.push([SYS.rt_sigaction, sig, 0, at(layout.acts + (sig - 1) * KSIGACTION_SIZE), 8]);
    }
    const timersFrom = calls.length;
    calls.push(...posixTimerCalls(timers, at(layout.timers)));
    const dumpableAt = calls.length;
    calls.push([SYS.prctl, PR_GET_DUMPABLE, 0, 0, 0, 0], [SYS.prctl, PR_GET_CHILD_SUBREAPER, at(layout.subreaper), 0, 0, 0]);
    // mlockall(MCL_FUTURE) lives in the mm's def_flags, which /proc does not show; the scratch
    // area, mapped by ferry after it, has VM_LOCKED if it is in force. MADV_DONTNEED refuses a
    // VM_LOCKED area with EINVAL (madvise_dontneed_free_valid_vma), and mincore(2) tells
    // whether mmap populated the probe page (MCL_FUTURE alone does; with MCL_ONFAULT it is
    // left to fault in). The probe page is the area's last, which no call writes; madvise
    // comes last so that the mincore answer is of the page as mmap left it.
    const probeAt = calls.length;
    calls.push([SYS.mincore, probe, PAGE_SIZE, at(layout.subreaper + 4)], [SYS.madvise, probe, PAGE_SIZE, MADV_DONTNEED]);
    // membarrier(2) registrations live in the mm (membarrier_state), which /proc does not
    // show either; a kernel before 6.3 answers EINVAL (or ENOSYS without membarrier): none known.
    const membarrierAt = calls.length;
    calls.push([SYS.membarrier, MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0]);
    // prctl(PR_SET_THP_DISABLE) lives in the mm's flags; /proc/PID/status shows THP_enabled,
    // which reads 1 under PR_THP_DISABLE_EXCEPT_ADVISED (huge pages where advised): only
    // PR_GET_THP_DISABLE tells it.
    const thpAt = calls.length;
    calls.push([SYS.prctl, PR_GET_THP_DISABLE, 0, 0, 0, 0]);
    return { calls, signals, timersFrom, dumpableAt, probeAt, membarrierAt, thpAt };
  };
  const count = mainCalls(() => 0n, 0n, 0n).calls.length;
  // The main thread's calls run in one round trip through a program ferry writes into an r-x
  // area of its own (native/inject-blob.cc), unless the thread has seccomp filters: the
  // program must put the task back by itself if ferry dies, and its syscalls then go through
  // them (PTRACE_O_SUSPEND_SECCOMP ends with the trace). `seccomp`: the main thread's
  // Seccomp field of /proc status (0 none), from the status the caller read.
  const blob = main.seized && seccomp === 0;
  const workLen = blob ? blobWorkLen(count) : 0;
  // One page more than the results need: the probe of mlockall(MCL_FUTURE) below, never written.
  const size = Math.ceil((layout.work + workLen) / PAGE_SIZE) * PAGE_SIZE + PAGE_SIZE;
  const codeLen = blob ? BLOB_CODE_LEN : 0;
  const total = size + codeLen;
  const addr = freeRange(vmas, total, vmflags);
  if (addr === undefined) throw new Error(`pid ${main.pid} has no free ${total} bytes in its address space for ferry's scratch area`);
  const at = (off: number): bigint => addr + BigInt(off);
  const probe = addr + BigInt(size - PAGE_SIZE);
  const code = addr + BigInt(size);
  const slotOf = (i: number): number => layout.threads + i * THREAD_SLOT;
  const mmap: Call = [SYS.mmap, addr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0];
  // The program's r-x page right after it (so one munmap takes both); a refusal (SELinux
  // execmem, RLIMIT_AS) only means the calls run one by one.
  const mmapCode: Call = [SYS.mmap, code, codeLen, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0];
  const munmap: Call = [SYS.munmap, addr, total];
  // `tried`: a batch with the mmap was run; if it failed without saying what the mmap gave, the
  // area may be mapped at `addr` all the same (the range was free and the tree is stopped, so
  // an munmap there can only take ferry's own area away).
  let mapped = false, unmapped = false, tried = false, codeMapped = false, loose = false;
  /** Runs `calls` in `t`, the scratch area's mmap first if it is not mapped yet; the main's (`last`) through the program if it can. */
  const batch = (t: Tracee, calls: Call[], last: boolean, mayFailFrom = calls.length): { results: BigInt64Array; mem?: Buffer } => {
    const first = !mapped;
    if (first) tried = true;
    const prefix = first ? (blob ? [mmap, mmapCode] : [mmap]) : [];
    const all = [...prefix, ...calls, ...(last ? [munmap] : [])];
    const mem = last ? Buffer.alloc(size) : undefined;
    const useBlob = blob && last && (first || codeMapped);
    const program: InjectBlob | undefined = useBlob ? {
      at: prefix.length, count: calls.length, ...(first ? { mappedAt: 1 } : {}), code, codeLen,
      work: at(layout.work), workLen, unmap: addr, unmapLen: size, waitS: BLOB_WAIT_S,
      ...(faultArmed('blob') ? { onWait: () => faultPointSync('blob') } : {}),
    } : undefined;
    let results: BigInt64Array;
    try {
      results = t.trySyscalls(all, {
        guard: first ? 1 : 0,
        ...(mem ? { readAt: all.length - 1, readAddr: addr, readInto: mem } : {}),
        ...(program ? { blob: program } : {}),
      });
    } catch (err) {
      // The task may be inside the program still, or running its own code after the program
      // put it back (a handler of a signal it let through may return into the program; it may
      // have mapped something where the program unmapped ferry's area): its memory is left
      // alone, the program's page with it.
      if (program?.loose === true) loose = true;
      throw err;
    }
    if (first) {
      const r = results[0]!;
      if (r !== addr) {
        if (r >= 0n) unmapTry(t, r, size); // a kernel that took MAP_FIXED_NOREPLACE for a hint
        throw r < 0n && r >= -4095n ? injectedError(SYS.mmap, Number(-r), t.tid)
          : new Error(`the scratch area of pid ${t.pid} was mapped at 0x${r.toString(16)}, not at 0x${addr.toString(16)}`);
      }
      mapped = true;
      if (blob) {
        const c = results[1]!;
        codeMapped = c === code;
        if (!codeMapped && c >= 0n) unmapTry(t, c, codeLen); // a hint taken: not ours to use
      }
    }
    if (last) unmapped = results[results.length - 1]! === 0n;
    const own = results.subarray(prefix.length, prefix.length + calls.length);
    checkResults(t, calls, own, mayFailFrom);
    return { results: own, ...(mem ? { mem } : {}) };
  };
  try {
    // The other threads first, each its own calls into its own slot (read back with the main's).
    const otherResults = others.map((t, k) => batch(t, threadCalls(at(slotOf(k + 1))), false).results);
    // Then the main thread: its own calls, then the process-wide ones, read back, unmapped.
    const { calls, signals, timersFrom, dumpableAt, probeAt, membarrierAt, thpAt } = mainCalls(at, probe, at(slotOf(0)));
    const { results, mem } = batch(main, calls, true, probeAt + 1);
    const m = mem!;
    const slot = (i: number): Buffer => m.subarray(slotOf(i), slotOf(i) + THREAD_SLOT);
    const states = new Map<number, ThreadInjected>([[main.tid, threadState(slot(0), results.subarray(0, 5))]]);
    others.forEach((t, k) => states.set(t.tid, threadState(slot(k + 1), otherResults[k]!)));
    const sigactions: SigactionRecord[] = [];
    for (const sig of signals) {
      const o = layout.acts + (sig - 1) * KSIGACTION_SIZE;
      const handler = m.readBigUInt64LE(o);
      const flags = m.readBigUInt64LE(o + 8);
      const restorer = m.readBigUInt64LE(o + 16);
      const mask = m.readBigUInt64LE(o + 24);
      // What execve leaves (and a new task has): no record.
      if (handler === SIG_DFL && flags === 0n && restorer === 0n && mask === 0n) continue;
      sigactions.push({ signo: sig, handler: hex(handler), flags: hex(flags), restorer: hex(restorer), mask: hex(mask) });
    }
    const it = (which: number): ItimerRecord => {
      const o = layout.itimers + which * ITIMERVAL_SIZE;
      const f = (k: number): number => Number(m.readBigInt64LE(o + k * 8));
      return { interval: [f(0), f(1)], value: [f(2), f(3)] };
    };
    const posix = posixTimerRecords(timers, m.subarray(layout.timers, layout.timers + timers.length * ITIMERSPEC_SIZE),
      results.subarray(timersFrom, dumpableAt));
    return {
      brk: results[5]!,
      sigactions,
      itimers: { real: it(0), virtual: it(1), prof: it(2), posix },
      dumpable: Number(results[dumpableAt]!),
      childSubreaper: m.readInt32LE(layout.subreaper) !== 0,
      ...(results[probeAt + 1] === -22n ? { mlockall: MCL_FUTURE | ((m[layout.subreaper + 4]! & 1) !== 0 ? 0 : MCL_ONFAULT) } : {}),
      ...membarrierOf(results[membarrierAt]!, main.pid),
      thpDisable: thpDisableOf(results[thpAt]!, main.pid),
      threads: states,
    };
  } finally {
    // A batch that failed after the area was mapped, or with it maybe mapped (or a thread's,
    // before the main's ran).
    if ((mapped || tried) && !unmapped && !loose) unmapTry(main, addr, total);
  }
}

/** Seconds the program of a batch waits for ferry before it puts the task back itself (native/inject-blob.cc). */
const BLOB_WAIT_S = 3;


/** The registrations MEMBARRIER_CMD_GET_REGISTRATIONS answered (an error, or none: nothing to record). */
function membarrierOf(r: bigint, pid: number): { membarrier?: number } {
  if (r <= 0n) return {};
  if ((r & ~BigInt(MEMBARRIER_REGISTRATIONS)) !== 0n) {
    throw new FerryError('EUNSUPPORTED', `pid ${pid} holds membarrier registrations 0x${r.toString(16)}, some of which this ferry does not know `
      + '(a newer kernel\'s): it cannot restore them; the process was left running', { pid });
  }
  return { membarrier: Number(r) };
}

/** What PR_GET_THP_DISABLE answered; a bit this ferry does not know (a newer kernel's) is refused. */
function thpDisableOf(r: bigint, pid: number): number {
  if (r <= 0n) return 0;
  if ((r & ~BigInt(1 | PR_THP_DISABLE_EXCEPT_ADVISED)) !== 0n || (r & 1n) === 0n) {
    throw new FerryError('EUNSUPPORTED', `pid ${pid} has prctl(PR_SET_THP_DISABLE) flags 0x${r.toString(16)}, some of which this ferry does not know `
      + '(a newer kernel\'s): it cannot restore them; the process was left running', { pid });
  }
  return Number(r);
}

/** munmap in `t`, for clean-up on a failure path: errors (the task died) are left to the caller's own. */
function unmapTry(t: Tracee, addr: bigint, size: number): void {
  try {
    t.trySyscall(SYS.munmap, addr, size);
  } catch { /* the task is gone or cannot run it: the first error is the one reported */ }
}

/** -ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND, -ERESTART_RESTARTBLOCK: rax of a stop inside an interrupted syscall. */
const RESTART_CODES = new Set([-512n, -513n, -514n, -516n].map((v) => BigInt.asUintN(64, v)));
/** The end of a process's address space on x86-64 (TASK_SIZE_MAX, 4-level paging). */
const USER_END = 0x7ffffffff000n;

/**
 * Sends thread `tid`, stopped inside an rseq(2) critical section, to the section's abort
 * handler, as the kernel does on the thread's way back to user mode after any preemption
 * (kernel/rseq.c rseq_ip_fixup): rip = the section's abort_ip, its registration's rseq_cs
 * cleared. It must happen before ferry's first injection: that moves rip out of the section,
 * on which the kernel clears rseq_cs and forgets the abort, so the section would run on to its
 * commit after the thread was stopped (moved to another CPU, or another machine). Left to the
 * kernel, as it would find it: a section the kernel would refuse (its descriptor out of range
 * or of an unknown version, flags in it or in the registration, abort_ip inside it, the 4
 * bytes before abort_ip not the registration's signature: it kills such a thread), and a stop inside a syscall made in the
 * section (an interrupted one, whose restart comes first). Returns whether it moved the thread.
 * Nothing to undo: an abort is always a section's possible outcome, so a checkpoint that fails
 * later lets the thread go from its abort handler.
 */
export function abortRseqSection(t: Tracee): boolean {
  const n = native();
  const { pid, tid } = t;
  const conf = n.getRseq(tid);
  if (conf === null) return false;
  const read = (addr: bigint, len: number): Buffer | undefined => {
    const buf = Buffer.alloc(len);
    try {
      return n.readMemory(pid, new Float64Array([Number(addr), len]), buf) === len ? buf : undefined;
    } catch {
      return undefined; // not mapped: the kernel would kill the thread for it, not ferry
    }
  };
  // struct rseq: cpu_id_start, cpu_id, rseq_cs (u64), flags (u32): flags the kernel refuses.
  const area = read(conf.pointer + 8n, 12);
  const csPtr = area?.readBigUInt64LE(0) ?? 0n;
  if (csPtr === 0n || csPtr >= USER_END || area!.readUInt32LE(8) !== 0) return false;
  const cs = read(csPtr, 32); // struct rseq_cs: version, flags, start_ip, post_commit_offset, abort_ip
  if (cs === undefined || cs.readUInt32LE(0) !== 0 || cs.readUInt32LE(4) !== 0) return false;
  const start = cs.readBigUInt64LE(8), length = cs.readBigUInt64LE(16), abort = cs.readBigUInt64LE(24);
  if (start >= USER_END || start + length >= USER_END || abort >= USER_END || abort < 4n || BigInt.asUintN(64, abort - start) < length) return false;
  const regs = decodeRegs(n.getRegs(tid));
  if (BigInt.asUintN(64, regs.rip - start) >= length) return false;
  if (BigInt.asIntN(64, regs.orig_rax) >= 0n && RESTART_CODES.has(regs.rax)) return false;
  if (read(abort - 4n, 4)?.readUInt32LE(0) !== conf.signature) return false;
  // The registers first: if clearing rseq_cs fails after them, the thread is at its handler
  // with the section still named, which the kernel then leaves (rip is outside it).
  n.setRegs(tid, encodeRegs({ ...regs, rip: abort }));
  t.writeMem(conf.pointer + 8n, Buffer.alloc(8));
  return true;
}

/**
 * Registers, XSAVE area, mask, rseq and robust list of one stopped thread. `status`: its
 * /proc status text, read already, which names it (statusComm); else its comm file is read.
 */
export function readThread(pid: number, tid: number, realSigmask: bigint, injected: ThreadInjected, status?: string):
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
      comm: (status !== undefined ? statusComm(status) : undefined) ?? readProcText(pid, `task/${tid}/comm`).replace(/\n$/, ''),
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

/**
 * Where the task's executable and cwd are. A removed working directory reads
 * `/path (deleted)` and has no links left: its path comes without the suffix, and
 * `cwdDeleted` with the directory's mode, owner and identity (the same directory as a removed
 * root: dump/root-dir.ts).
 */
export function readPaths(pid: number): { exe: string; cwd: string; cwdDeleted?: RemovedDirRecord } {
  const cwd = readProcLink(pid, 'cwd');
  const exe = readProcLink(pid, 'exe');
  if (!cwd.endsWith(DELETED)) return { exe, cwd };
  const st = statSync(`/proc/${pid}/cwd`, { bigint: true });
  if (st.nlink !== 0n) return { exe, cwd }; // a name that ends so
  return { exe, cwd: cwd.slice(0, -DELETED.length), cwdDeleted: removedDir(st) };
}

const DELETED = ' (deleted)';

/**
 * The identity (st_dev:st_ino) of the process's executable when it was removed (its link
 * reads `path (deleted)`: an upgrade renamed a new binary over it, or deleted it), for
 * TaskRecord `exeGhost`; undefined when it was not. The image holds a removed file only as
 * one the process maps (memory.ts: a ghost or linked file its areas name), its text as a
 * rule; an executable it does not map any more is refused here, before anything changes,
 * rather than found missing at restore.
 */
export function removedExe(pid: number, exe: string, vmas: readonly VmaRecord[]): string | undefined {
  if (!exe.endsWith(DELETED)) return undefined;
  if (exe.startsWith('/memfd:')) {
    // fexecve(2) of a memfd (a program re-executing itself from memory): its areas are the
    // memfd's, which restore makes anew, and nothing sets the executable to that one yet.
    throw new FerryError('EUNSUPPORTED', `pid ${pid} runs from a memfd (${exe.slice(0, -DELETED.length)}, fexecve): restore cannot make that `
      + 'its executable yet; the process was left running', { pid });
  }
  const st = statSync(`/proc/${pid}/exe`, { bigint: true });
  const id = `${st.dev}:${st.ino}`;
  if (vmas.some((v) => (v as { ghost?: string }).ghost === id)) return id;
  // A name that really ends so: restore opens it by that name.
  if (st.nlink !== 0n) {
    try {
      const there = statSync(exe, { bigint: true });
      if (there.dev === st.dev && there.ino === st.ino) return undefined;
    } catch { /* no such name */ }
  }
  throw new FerryError('EUNSUPPORTED', `pid ${pid} runs the removed executable ${exe.slice(0, -DELETED.length)} and maps no part of it, `
    + 'so the image cannot hold it: restart the process from the installed binary, then checkpoint it');
}

/**
 * The root, working directory and umask of thread `tid` of `pid`, which holds an fs struct of
 * its own (dump/tree.ts threadsWithOwnFs): its /proc/PID/task/TID links, and the Umask of its
 * own status (the kernel shows each thread's fs there). `base`: the tree's root directory, as
 * for the process (root-dir.ts). A removed working directory is recorded as the process's is
 * (`cwdDeleted`: readPaths); restore makes it once for all its holders (restore/root-dir.ts).
 * A removed root directory of such a thread, or a removed working directory of one inside a
 * container, is refused (EUNSUPPORTED, one line; the process is left running).
 */
export function readThreadFs(pid: number, tid: number, base: RootBase): ThreadFsRecord {
  const link = readProcLink(pid, `task/${tid}/cwd`);
  const root = readRootDir(pid, base, tid);
  const st = link.endsWith(DELETED) ? statSync(`/proc/${pid}/task/${tid}/cwd`, { bigint: true }) : undefined;
  const cwdDeleted = st !== undefined && st.nlink === 0n ? removedDir(st) : undefined;
  const cwd = cwdDeleted !== undefined ? link.slice(0, -DELETED.length) : link;
  const refuse = (what: string): never => {
    throw new FerryError('EUNSUPPORTED', `thread ${tid} of pid ${pid} has a root, working directory and umask of its own (unshare(2) of CLONE_FS) `
      + `and its ${what}, which restore cannot rebuild yet for a thread; the process was left running`, { pid });
  };
  if (root?.rootDeleted !== undefined) refuse(`root directory ${root.root} was removed`);
  if (cwdDeleted !== undefined && base.container) refuse(`working directory ${cwd} inside its container was removed`);
  const umask = parseStatus(readProcText(pid, `task/${tid}/status`)).umask;
  return { cwd, ...(cwdDeleted !== undefined ? { cwdDeleted } : {}), ...(root !== undefined ? { root: root.root } : {}), umask };
}
