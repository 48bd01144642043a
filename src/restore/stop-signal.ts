/**
 * Which signal stops a restored process that was stopped at the checkpoint (TaskRecord
 * `stopped`, `stopSignal`). The let-go queues it process-directed before the detach, so the
 * process stops before it runs an instruction (restore.ts letGo), and its parent sees the stop
 * signal the original had (waitpid WSTOPSIG, SIGCHLD si_status, a shell's "Stopped (tty
 * input)").
 *
 * SIGSTOP always stops. SIGTSTP, SIGTTIN and SIGTTOU stop only by their default action, so
 * get_signal() (kernel/signal.c) drops or diverts them when: the process has a handler or
 * ignores the signal (its disposition came back with it); every thread blocks it (it would
 * stay pending and the process would run); or its process group is orphaned
 * (is_current_pgrp_orphaned(): no live member has a parent in another group of the same
 * session), where POSIX has job-control stops discarded. A process stopped by one of them at
 * the checkpoint met none of these then, but a restore can change the last: the root's parent
 * is ferry now. So the recorded signal is used when the image shows that it will stop the
 * process (a member of its group, other than the root, has its parent in the tree, in another
 * group of the same session), and SIGSTOP otherwise, which stops it all the same: it never runs
 * where it was stopped, only the reported signal differs (said in the log).
 */
import { SIGSTOP } from '../arch/x86-64.js';
import type { TaskRecord, TreeRecord } from '../image/records.js';

const NAMES: Readonly<Record<number, string>> = { 19: 'SIGSTOP', 20: 'SIGTSTP', 21: 'SIGTTIN', 22: 'SIGTTOU' };

/** The signal to stop `task` with at the let-go, and why it is SIGSTOP instead of the recorded one. */
export function stopSignalOf(task: TaskRecord, tree: TreeRecord): { signal: number; instead?: string } {
  const sig = task.stopSignal;
  if (sig === undefined || sig === SIGSTOP) return { signal: SIGSTOP };
  const name = NAMES[sig] ?? `signal ${sig}`;
  const fallback = (why: string): { signal: number; instead: string } => ({
    signal: SIGSTOP, instead: `pid ${task.pid} was stopped by ${name}; ${why}, so it is stopped by SIGSTOP instead`,
  });
  const action = task.sigactions.find((a) => a.signo === sig);
  if (action !== undefined && BigInt(action.handler) !== 0n) return fallback(`it has a handler for ${name} or ignores it now`);
  const bit = 1n << BigInt(sig - 1);
  if (task.threads.every((th) => (BigInt(th.sigmask) & bit) !== 0n)) return fallback(`every thread blocks ${name}`);
  const byPid = new Map(tree.processes.map((p) => [p.pid, p]));
  const linked = tree.processes.some((p) => {
    if (p.pgid !== task.pgid || p.zombie !== null || p.pid === tree.root) return false;
    const parent = byPid.get(p.ppid);
    return parent !== undefined && parent.pgid !== p.pgid && parent.sid === p.sid;
  });
  if (!linked) return fallback(`its process group ${task.pgid} has no parent in the tree in its session (orphaned after restore), where the kernel discards ${name}`);
  return { signal: sig };
}
