/**
 * Credentials and limits of a stopped task (the `creds` field of task.json).
 *
 * Read from outside: /proc/PID/task/TID/status (uids, gids, groups, the five capability sets,
 * NoNewPrivs, Seccomp, Cpus_allowed_list), /proc/PID/task/TID/stat (nice, rt priority,
 * policy), /proc/PID/limits, /proc/PID/task/TID/personality, /proc/PID/oom_score_adj, and the seccomp
 * filters with PTRACE_SECCOMP_GET_FILTER (ptrace(2)). Injected, because only the task can tell:
 * PR_GET_SECUREBITS, PR_GET_PDEATHSIG and sched_getscheduler(0) (for SCHED_RESET_ON_FORK) in
 * each thread, PR_GET_DUMPABLE and PR_GET_CHILD_SUBREAPER in the main thread (prctl(2)).
 *
 * Refused (restore could not bring them back): seccomp strict mode and SCHED_DEADLINE. Seccomp
 * filters need neither no_new_privs nor CAP_SYS_ADMIN of the task: restore installs them while
 * the task still has every capability (restore/creds.ts).
 */
import { MAP_ANONYMOUS, MAP_PRIVATE, PAGE_SIZE, PROT_READ, PROT_WRITE, SYS } from '../arch/x86-64.js';
import { FerryError } from '../errors.js';
import { hex, type CredsRecord, type ThreadCredsRecord } from '../image/records.js';
import { native } from '../native/binding.js';
import { readProcText } from '../proc/read.js';
import { parseStatus } from '../proc/status.js';
import type { Tracee } from '../task/tracee.js';

const PR_GET_PDEATHSIG = 2, PR_GET_DUMPABLE = 3, PR_GET_SECUREBITS = 27, PR_GET_CHILD_SUBREAPER = 37;
/** sched_getscheduler(2) ORs this into the policy of a thread whose children reset to SCHED_OTHER. */
export const SCHED_RESET_ON_FORK = 0x40000000;
export const SCHED_DEADLINE = 6;
export const CAP_SYS_ADMIN = 21;

/** /proc/PID/limits row names, in resource order (RLIMIT_CPU = 0 … RLIMIT_RTTIME = 15). */
export const RLIMIT_ROWS = [
  'Max cpu time', 'Max file size', 'Max data size', 'Max stack size', 'Max core file size',
  'Max resident set', 'Max processes', 'Max open files', 'Max locked memory', 'Max address space',
  'Max file locks', 'Max pending signals', 'Max msgqueue size', 'Max nice priority',
  'Max realtime priority', 'Max realtime timeout',
] as const;
/** RLIMIT_* names, in resource order, for messages. */
export const RLIMIT_NAMES = [
  'RLIMIT_CPU', 'RLIMIT_FSIZE', 'RLIMIT_DATA', 'RLIMIT_STACK', 'RLIMIT_CORE', 'RLIMIT_RSS',
  'RLIMIT_NPROC', 'RLIMIT_NOFILE', 'RLIMIT_MEMLOCK', 'RLIMIT_AS', 'RLIMIT_LOCKS',
  'RLIMIT_SIGPENDING', 'RLIMIT_MSGQUEUE', 'RLIMIT_NICE', 'RLIMIT_RTPRIO', 'RLIMIT_RTTIME',
] as const;

const RLIM_INFINITY = (1n << 64n) - 1n;

/**
 * Parses /proc/PID/limits (proc(5)): fixed columns "name  soft  hard  units", values in the
 * resource's own unit or "unlimited". Returns [soft, hard] for resources 0..15.
 */
export function parseLimits(text: string): Array<[bigint, bigint]> {
  const out: Array<[bigint, bigint] | undefined> = new Array(RLIMIT_ROWS.length);
  const value = (s: string): bigint => (s === 'unlimited' ? RLIM_INFINITY : BigInt(s));
  for (const line of text.split('\n').slice(1)) {
    const i = RLIMIT_ROWS.findIndex((name) => line.startsWith(`${name} `));
    if (i < 0) continue;
    const [soft, hard] = line.slice(RLIMIT_ROWS[i]!.length).trim().split(/\s+/);
    if (soft === undefined || hard === undefined) throw new Error(`limits: cannot parse "${line}"`);
    out[i] = [value(soft), value(hard)];
  }
  return out.map((v, i) => {
    if (!v) throw new Error(`limits: no "${RLIMIT_ROWS[i]}" row`);
    return v;
  });
}

/** Parses a kernel CPU list ("0-3,8,10-11", proc(5) Cpus_allowed_list). */
export function parseCpuList(text: string): number[] {
  const cpus: number[] = [];
  for (const part of text.trim().split(',').filter(Boolean)) {
    const [a, b] = part.split('-').map(Number);
    if (a === undefined || !Number.isSafeInteger(a)) throw new Error(`cpu list: cannot parse "${text}"`);
    for (let c = a; c <= (b ?? a); c++) cpus.push(c);
  }
  return cpus;
}

/** nice (19), rt_priority (40) and policy (41) of /proc/PID/task/TID/stat. */
export function parseSchedStat(text: string): { nice: number; priority: number; policy: number } {
  const f = text.slice(text.lastIndexOf(')') + 2).trim().split(' ');
  const n = (i: number): number => Number(f[i - 3]);
  return { nice: n(19), priority: n(40), policy: n(41) };
}

/** Seccomp programs of one thread, oldest first (the kernel's index order), with their flags. */
function readFilters(tid: number): Array<{ flags: number; program: Buffer }> {
  const n = native();
  const out: Array<{ flags: number; program: Buffer }> = [];
  for (let i = 0; ; i++) {
    const program = n.getSeccompFilter(tid, i);
    if (!program) break;
    out.push({ flags: n.getSeccompFlags(tid, i), program });
  }
  return out;
}

/**
 * Reads the credentials and limits of the process of `main` and of each of its threads
 * (`others`, in TaskRecord.threads order). Every thread must be in a ptrace stop with its
 * injection gadget set.
 */
export function readCreds(main: Tracee, others: readonly Tracee[]): CredsRecord {
  const pid = main.pid;
  const threads = [main, ...others];
  const filters: Array<{ flags: number; program: string }> = [];
  const filterIndex = (f: { flags: number; program: Buffer }): number => {
    const program = f.program.toString('base64');
    let i = filters.findIndex((x) => x.program === program && x.flags === f.flags);
    if (i < 0) i = filters.push({ flags: f.flags, program }) - 1;
    return i;
  };

  const fromOutside = threads.map((t): Omit<ThreadCredsRecord, 'securebits' | 'pdeathsig'> => {
    const tid = t.tid;
    const st = parseStatus(readProcText(pid, `task/${tid}/status`));
    const cpus = /^Cpus_allowed_list:\s*(.*)$/m.exec(readProcText(pid, `task/${tid}/status`))?.[1] ?? '';
    const sched = parseSchedStat(readProcText(pid, `task/${tid}/stat`));
    if (sched.policy === SCHED_DEADLINE) {
      throw new FerryError('EUNSUPPORTED', `pid ${pid}: thread ${tid} runs under SCHED_DEADLINE, which ferry cannot restore (the process was left running)`);
    }
    if (st.seccomp === 1) {
      throw new FerryError('EUNSUPPORTED', `pid ${pid}: thread ${tid} is in seccomp strict mode, which ferry cannot restore (the process was left running)`);
    }
    const quad = (v: number[], what: string): [number, number, number, number] => {
      if (v.length !== 4) throw new Error(`pid ${pid} thread ${tid}: ${what} line of status has ${v.length} values`);
      return [v[0]!, v[1]!, v[2]!, v[3]!];
    };
    const seccomp = st.seccomp === 2 ? readFilters(tid) : [];
    return {
      tid,
      uids: quad(st.uid, 'Uid'),
      gids: quad(st.gid, 'Gid'),
      groups: st.groups,
      caps: {
        effective: hex(st.capEff), permitted: hex(st.capPrm), inheritable: hex(st.capInh),
        bounding: hex(st.capBnd), ambient: hex(st.capAmb),
      },
      noNewPrivs: st.noNewPrivs,
      personality: parseInt(readProcText(pid, `task/${tid}/personality`).trim(), 16),
      sched: { policy: sched.policy, priority: sched.priority, nice: sched.nice, resetOnFork: false },
      affinity: parseCpuList(cpus),
      seccomp: seccomp.map(filterIndex),
    };
  });

  // What only the task knows. One scratch page (shared address space) for the int results.
  const scratch = main.syscall(SYS.mmap, 0, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  let dumpable: bigint, subreaper: number;
  const injected: Array<{ securebits: number; pdeathsig: number; resetOnFork: boolean }> = [];
  try {
    const [d] = main.syscalls([[SYS.prctl, PR_GET_DUMPABLE, 0, 0, 0, 0], [SYS.prctl, PR_GET_CHILD_SUBREAPER, scratch, 0, 0, 0]]);
    dumpable = d!;
    subreaper = main.readMem(scratch, 4).readInt32LE(0);
    for (const t of threads) {
      const slot = scratch + 8n; // read back before the next thread uses it
      const [bits, , policy] = t.syscalls([
        [SYS.prctl, PR_GET_SECUREBITS, 0, 0, 0, 0],
        [SYS.prctl, PR_GET_PDEATHSIG, slot, 0, 0, 0],
        [SYS.sched_getscheduler, 0],
      ]);
      injected.push({
        securebits: Number(bits),
        pdeathsig: main.readMem(slot, 4).readInt32LE(0),
        resetOnFork: (Number(policy) & SCHED_RESET_ON_FORK) !== 0,
      });
    }
  } finally {
    main.syscall(SYS.munmap, scratch, PAGE_SIZE);
  }

  return {
    rlimits: parseLimits(readProcText(pid, 'limits')).map(([s, h]) => [hex(s), hex(h)]),
    oomScoreAdj: Number(readProcText(pid, 'oom_score_adj').trim()),
    dumpable: Number(dumpable),
    childSubreaper: subreaper !== 0,
    seccompFilters: filters,
    threads: fromOutside.map((o, i) => {
      const inj = injected[i]!;
      return {
        ...o,
        sched: { ...o.sched, resetOnFork: inj.resetOnFork },
        securebits: inj.securebits,
        pdeathsig: inj.pdeathsig,
      };
    }),
  };
}
