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

/**
 * The task's name (comm) from its status text, as /proc/PID/task/TID/comm has it without the
 * newline, so that a dump which read the status anyway reads no comm file. The status escapes
 * just two characters of it (proc_task_name: seq_escape_str with ESCAPE_SPACE |
 * ESCAPE_SPECIAL limited to "\n\\"): a newline as \n and a backslash as \\; nothing is
 * trimmed. undefined when the text has no Name line or another escape (a kernel that escapes
 * otherwise): the caller reads the comm file then.
 */
export function statusComm(text: string): string | undefined {
  const at = text.startsWith('Name:\t') ? 0 : text.indexOf('\nName:\t') + 1;
  if (at === 0 && !text.startsWith('Name:\t')) return undefined;
  const from = at + 'Name:\t'.length;
  const end = text.indexOf('\n', from);
  const escaped = text.slice(from, end < 0 ? text.length : end);
  let out = '';
  for (let i = 0; i < escaped.length; i++) {
    const c = escaped[i]!;
    if (c !== '\\') {
      out += c;
      continue;
    }
    const next = escaped[++i];
    if (next === 'n') out += '\n';
    else if (next === '\\') out += '\\';
    else return undefined;
  }
  return out;
}
