/** /proc/PID/status (proc(5)): "Key:\tvalue" lines. */

export interface ProcStatus {
  name: string;
  /** File creation mask (parsed from octal). */
  umask: number;
  state: string;
  tgid: number; pid: number; ppid: number; tracerPid: number;
  /** [real, effective, saved, filesystem]. */
  uid: number[]; gid: number[];
  groups: number[];
  nsTgid: number[]; nsPid: number[]; nsPgid: number[]; nsSid: number[];
  threads: number;
  sigPnd: bigint; shdPnd: bigint; sigBlk: bigint; sigIgn: bigint; sigCgt: bigint;
  capInh: bigint; capPrm: bigint; capEff: bigint; capBnd: bigint; capAmb: bigint;
  noNewPrivs: boolean;
  seccomp: number;
  /** The Kthread: line (6.x kernels); undefined when absent. */
  kthread: boolean | undefined;
  /** Cpus_allowed_list, ascending. */
  cpus: number[];
  /** THP_enabled: false once prctl(PR_SET_THP_DISABLE) was set; undefined when absent. */
  thpEnabled: boolean | undefined;
}

/** Parses a kernel CPU list ("0-3,8,10-11", proc(5) Cpus_allowed_list), ascending. */
export function parseCpuList(text: string): number[] {
  const cpus: number[] = [];
  for (const part of text.trim().split(',').filter(Boolean)) {
    const [a, b] = part.split('-').map(Number);
    if (a === undefined || !Number.isSafeInteger(a)) throw new Error(`cpu list: cannot parse "${text}"`);
    for (let c = a; c <= (b ?? a); c++) cpus.push(c);
  }
  return cpus;
}

/** Parses /proc/PID/status. */
export function parseStatus(text: string): ProcStatus {
  const kv = new Map<string, string>();
  for (const line of text.split('\n')) {
    const i = line.indexOf(':');
    if (i > 0) kv.set(line.slice(0, i), line.slice(i + 1).trim());
  }
  const s = (k: string): string => kv.get(k) ?? '';
  const nums = (k: string): number[] => s(k).split(/\s+/).filter(Boolean).map(Number);
  const hexv = (k: string): bigint => (kv.has(k) ? BigInt(`0x${s(k)}`) : 0n);
  return {
    name: s('Name'),
    umask: kv.has('Umask') ? parseInt(s('Umask'), 8) : 0o22,
    state: s('State').charAt(0),
    tgid: Number(s('Tgid')), pid: Number(s('Pid')), ppid: Number(s('PPid')), tracerPid: Number(s('TracerPid')),
    uid: nums('Uid'), gid: nums('Gid'), groups: nums('Groups'),
    nsTgid: nums('NStgid'), nsPid: nums('NSpid'), nsPgid: nums('NSpgid'), nsSid: nums('NSsid'),
    threads: Number(s('Threads')),
    sigPnd: hexv('SigPnd'), shdPnd: hexv('ShdPnd'), sigBlk: hexv('SigBlk'), sigIgn: hexv('SigIgn'), sigCgt: hexv('SigCgt'),
    capInh: hexv('CapInh'), capPrm: hexv('CapPrm'), capEff: hexv('CapEff'), capBnd: hexv('CapBnd'), capAmb: hexv('CapAmb'),
    noNewPrivs: s('NoNewPrivs') === '1',
    seccomp: Number(s('Seccomp') || 0),
    kthread: kv.has('Kthread') ? s('Kthread') === '1' : undefined,
    cpus: parseCpuList(s('Cpus_allowed_list')),
    thpEnabled: kv.has('THP_enabled') ? s('THP_enabled') === '1' : undefined,
  };
}
