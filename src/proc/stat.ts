/** /proc/PID/stat (proc(5)): one line of space-separated fields. */

/** The fields of /proc/PID/stat that Ferry uses (1-based field numbers in comments). */
export interface ProcStat {
  /** (2) without the parentheses; may contain spaces and ')'. */
  comm: string;
  /** (3) R S D T t Z X … */
  state: string;
  ppid: number; pgrp: number; session: number; ttyNr: number; tpgid: number;
  /** (9) PF_* flags. */
  flags: number;
  numThreads: number;
  startTime: bigint;
  startCode: bigint; endCode: bigint; startStack: bigint;
  startData: bigint; endData: bigint; startBrk: bigint;
  argStart: bigint; argEnd: bigint; envStart: bigint; envEnd: bigint;
  exitCode: number;
}

/** PF_KTHREAD (include/linux/sched.h). */
const PF_KTHREAD = 0x00200000;

/** Parses /proc/PID/stat. comm ends at the LAST ')' of the line. */
export function parseStat(text: string): ProcStat {
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  if (open < 0 || close < open) throw new Error(`stat: cannot find comm in: ${text.slice(0, 80)}`);
  // f[0] is field 3 (state).
  const f = text.slice(close + 2).trim().split(' ');
  if (f.length < 50) throw new Error(`stat: expected 52 fields, got ${f.length + 2}`);
  const n = (i: number): number => Number(f[i - 3]);
  const b = (i: number): bigint => BigInt(f[i - 3]!);
  return {
    comm: text.slice(open + 1, close),
    state: f[0]!,
    ppid: n(4), pgrp: n(5), session: n(6), ttyNr: n(7), tpgid: n(8), flags: n(9),
    numThreads: n(20), startTime: b(22),
    startCode: b(26), endCode: b(27), startStack: b(28),
    startData: b(45), endData: b(46), startBrk: b(47),
    argStart: b(48), argEnd: b(49), envStart: b(50), envEnd: b(51), exitCode: n(52),
  };
}

/** Kernel threads have PF_KTHREAD set. */
export function isKernelThread(stat: ProcStat): boolean {
  return (stat.flags & PF_KTHREAD) !== 0;
}
