/**
 * The last calls of a process whose image ignores SIGTRAP (docs/architecture.md, "Injected
 * calls and SIGTRAP").
 *
 * Restore's injected calls are single-stepped (native/inject.cc, kStep): the kernel reports
 * each step with a forced SIGTRAP, and a forced signal that the task ignores is reset to
 * SIG_DFL first (force_sig_info_to_task). So the SIG_IGN that restoreTaskState set with the
 * other dispositions would be gone by the next step, and the process would come back killed
 * by the first SIGTRAP it meets (a debugger's breakpoint, a `kill -TRAP`) where it ignored it.
 * A handler survives (the stub never has SIGTRAP blocked while it steps).
 *
 * For such a process the gadget is dropped this way instead, with no step after the
 * disposition: through the process's own `syscall` instruction (restoredSyscall), each call
 * run by syscall-stops (PTRACE_SYSCALL to the syscall-entry stop, again to the exit stop:
 * ptrace notifications, no signal), rt_sigaction(SIGTRAP, SIG_IGN as the image has it), then
 * munmap of the gadget. The let-go needs the task in a signal-delivery-stop (the kernel's
 * restart rules then run on the registers it is given: restore.ts letGo), which a step gave:
 * so ferry sends the thread a SIGTRAP of its own (tgkill, not forced, so its disposition
 * stays; a traced task gets an ignored signal all the same), with every other signal blocked
 * for the moment, and resumes it: it stops in that SIGTRAP's delivery, where the let-go finds
 * it and discards it (detach with no signal). Not before the rt_sigaction: setting SIG_IGN
 * flushes a pending SIGTRAP.
 *
 * If ferry dies meanwhile the stub dies with it (PTRACE_O_EXITKILL), as anywhere in a restore.
 *
 * Not kept: a SIGTRAP pending while ignored (only a blocked one can be): the rt_sigaction
 * flushes it, as it does every pending SIGTRAP of the process. A seccomp filter that forbids
 * the rt_sigaction fails the restore before anything is made (creds.ts).
 */
import { ALL_SIGNALS, decodeRegs, encodeRegs, KSIGACTION_SIZE, SIGTRAP, SIG_IGN, SYS } from '../arch/x86-64.js';
import { errnoName, FerryError } from '../errors.js';
import { faultPointSync } from '../fault.js';
import { big, type TaskRecord } from '../image/records.js';
import { native, type WaitStatus } from '../native/binding.js';
import type { Tracee } from '../task/tracee.js';

/** How long one stop may take to come (the task only has to run a few instructions). */
const STOP_TIMEOUT_MS = 5000;

/** The image's SIGTRAP action when it is SIG_IGN. */
export function ignoredTrap(task: TaskRecord): TaskRecord['sigactions'][number] | undefined {
  const s = task.sigactions.find((a) => a.signo === SIGTRAP);
  return s !== undefined && big(s.handler) === SIG_IGN ? s : undefined;
}

/**
 * Unmaps the gadget area [`gadget`, +`size`) of `t` (the process's main thread, in the
 * signal-delivery-stop of its last step) through the `syscall` at `at`, SIGTRAP ignored again
 * first as the image has it; the action goes into the gadget's scratch pages (`scratch`). Leaves
 * the thread in a SIGTRAP signal-delivery-stop with every signal blocked, as a step does.
 */
export function dropGadgetIgnoringTrap(t: Tracee, task: TaskRecord, at: bigint, gadget: bigint, size: number,
  scratch: { put(data: Buffer): bigint }): void {
  const trap = ignoredTrap(task)!;
  const act = Buffer.alloc(KSIGACTION_SIZE);
  act.writeBigUInt64LE(big(trap.handler), 0);
  act.writeBigUInt64LE(big(trap.flags), 8);
  act.writeBigUInt64LE(big(trap.restorer), 16);
  act.writeBigUInt64LE(big(trap.mask), 24);
  const actAt = scratch.put(act);
  const fail = (what: string): never => {
    throw new FerryError('ESTATE', `cannot ignore SIGTRAP again in pid ${task.pid} (${what}): nothing was left running`, { pid: task.pid });
  };
  const r = byStops(t.tid, at, SYS.rt_sigaction, [BigInt(SIGTRAP), actAt, 0n, 8n], fail);
  if (r < 0n) fail(`rt_sigaction: ${errnoName(r)}`);
  const u = byStops(t.tid, at, SYS.munmap, [gadget, BigInt(size)], fail);
  if (u < 0n) fail(`munmap of the gadget: ${errnoName(u)}`);
  faultPointSync('untrapped'); // in the munmap's syscall-exit stop, no gadget left
  const n = native();
  n.setSigmask(t.tid, ALL_SIGNALS & ~(1n << BigInt(SIGTRAP - 1)));
  n.tgkill(t.pid, t.tid, SIGTRAP);
  n.cont(t.tid, 0);
  const st = stopOf(t.tid, fail);
  if (st.stopSig !== SIGTRAP || st.event !== 0) fail(`stopped by signal ${st.stopSig} (event ${st.event}) instead of ferry's SIGTRAP`);
  n.setSigmask(t.tid, ALL_SIGNALS);
}

/**
 * Runs one call through the `syscall` at `at` by syscall-stops, from a stop where the thread
 * takes no signal (every one blocked): its result (rax at the exit stop).
 */
function byStops(tid: number, at: bigint, nr: number, args: readonly bigint[], fail: (what: string) => never): bigint {
  const n = native();
  const regs = decodeRegs(n.getRegs(tid));
  regs.rip = at;
  regs.rax = BigInt(nr);
  regs.orig_rax = -1n; // no restart rule applies on the way out of the current stop
  [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9] = [0, 1, 2, 3, 4, 5].map((i) => args[i] ?? 0n) as [bigint, bigint, bigint, bigint, bigint, bigint];
  n.setRegs(tid, encodeRegs(regs));
  for (const stop of ['entry', 'exit']) {
    n.syscallResume(tid, 0);
    const st = stopOf(tid, fail);
    // Without PTRACE_O_TRACESYSGOOD a syscall stop reports SIGTRAP; no other signal can come.
    if (st.stopSig !== SIGTRAP || st.event !== 0) fail(`stopped by signal ${st.stopSig} (event ${st.event}) instead of at the call's ${stop}`);
  }
  return BigInt.asIntN(64, decodeRegs(n.getRegs(tid)).rax);
}

function stopOf(tid: number, fail: (what: string) => never): WaitStatus {
  const st = native().waitpid(tid, 0, STOP_TIMEOUT_MS);
  if (!st?.stopped) return fail(st?.signaled ? `killed by signal ${st.termSig}` : 'it exited');
  return st;
}
