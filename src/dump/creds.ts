/**
 * Credentials and limits of a stopped task (the `creds` field of task.json).
 *
 * Read from outside: /proc/PID/task/TID/status (uids, gids, groups, the five capability sets,
 * NoNewPrivs, Seccomp, Cpus_allowed_list), /proc/PID/task/TID/stat (nice, rt priority,
 * policy), /proc/PID/limits, /proc/PID/task/TID/personality, /proc/PID/oom_score_adj, and the seccomp
 * filters with PTRACE_SECCOMP_GET_FILTER (ptrace(2)). Injected, because only the task can tell,
 * within the task's one batch per thread (task-state.ts readInjectedState): PR_GET_SECUREBITS,
 * PR_GET_PDEATHSIG and sched_getscheduler(0) (for SCHED_RESET_ON_FORK) in each thread,
 * PR_GET_DUMPABLE and PR_GET_CHILD_SUBREAPER in the main thread (prctl(2)).
 *
 * Refused (restore could not bring it back): SCHED_DEADLINE. Seccomp filters need neither
 * no_new_privs nor CAP_SYS_ADMIN of the task: restore installs them while the task still has
 * every capability (restore/creds.ts). Seccomp strict mode (status `Seccomp: 1`) is recorded
 * per thread: ferry's own syscalls into such a thread get past it (PTRACE_O_SUSPEND_SECCOMP).
 */
import { FerryError } from '../errors.js';
import { hex, type CredsRecord, type ThreadCredsRecord } from '../image/records.js';
import { native } from '../native/binding.js';
import { readProcText } from '../proc/read.js';
import { parseCpuList, parseStatus } from '../proc/status.js';
import type { InjectedState } from './task-state.js';

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
export { parseCpuList };

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
 * Reads the credentials and limits of process `pid` and of each of its threads (`tids`, in
 * TaskRecord.threads order) from outside, and takes what only the task can tell from the
 * injected batch of task-state.ts (`injected`). `statuses`: each thread's status by tid, as
 * the caller already read it while the task was stopped (/proc/PID/status for the main
 * thread, its own status), so that none is read twice; a thread missing there is read here.
 * Every thread must be in a ptrace stop.
 */
export function readCreds(pid: number, tids: readonly number[], injected: InjectedState, statuses?: ReadonlyMap<number, string>): CredsRecord {
  const filters: Array<{ flags: number; program: string }> = [];
  const filterIndex = (f: { flags: number; program: Buffer }): number => {
    const program = f.program.toString('base64');
    let i = filters.findIndex((x) => x.program === program && x.flags === f.flags);
    if (i < 0) i = filters.push({ flags: f.flags, program }) - 1;
    return i;
  };

  const threads = tids.map((tid, i): ThreadCredsRecord => {
    const text = statuses?.get(tid) ?? readProcText(pid, `task/${tid}/status`);
    const st = parseStatus(text);
    const sched = parseSchedStat(readProcText(pid, `task/${tid}/stat`));
    if (sched.policy === SCHED_DEADLINE) {
      throw new FerryError('EUNSUPPORTED', `pid ${pid}: thread ${tid} runs under SCHED_DEADLINE, which ferry cannot restore (the process was left running)`);
    }
    const quad = (v: number[], what: string): [number, number, number, number] => {
      if (v.length !== 4) throw new Error(`pid ${pid} thread ${tid}: ${what} line of status has ${v.length} values`);
      return [v[0]!, v[1]!, v[2]!, v[3]!];
    };
    const seccomp = st.seccomp === 2 ? readFilters(tid) : [];
    const inj = injected.threads.get(tid);
    if (!inj) throw new Error(`pid ${pid}: no injected state for thread ${tid}`);
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
      sched: { policy: sched.policy, priority: sched.priority, nice: sched.nice, resetOnFork: (inj.schedPolicy & SCHED_RESET_ON_FORK) !== 0 },
      affinity: st.cpus,
      seccomp: seccomp.map(filterIndex),
      ...(st.seccomp === 1 ? { seccompStrict: true } : {}),
      securebits: inj.securebits,
      pdeathsig: inj.pdeathsig,
    };
  });

  // audit(7): the login uid of the process (its leader's; threads inherit it) if one is set.
  const loginuid = readAuditId(pid, 'loginuid');
  return {
    ...(loginuid !== undefined && loginuid !== AUDIT_UID_UNSET ? { audit: { loginuid, sessionid: readAuditId(pid, 'sessionid') ?? AUDIT_UID_UNSET } } : {}),
    rlimits: parseLimits(readProcText(pid, 'limits')).map(([s, h]) => [hex(s), hex(h)]),
    oomScoreAdj: Number(readProcText(pid, 'oom_score_adj').trim()),
    dumpable: injected.dumpable,
    childSubreaper: injected.childSubreaper,
    seccompFilters: filters,
    threads,
  };
}

/** "Not set" for an audit login uid or session id. */
const AUDIT_UID_UNSET = 4294967295;

/** /proc/PID/loginuid or sessionid, or undefined where the kernel has no audit support. */
function readAuditId(pid: number, file: 'loginuid' | 'sessionid'): number | undefined {
  try {
    return Number(readProcText(pid, file).trim());
  } catch {
    return undefined;
  }
}

/**
 * Runs readCreds's parsers on the main thread of a running process, without ptrace, so they
 * are compiled before the freeze (checkpoint.ts warmUp); the results are thrown away.
 */
export function warmUpCreds(pid: number, statusText: string): void {
  parseStatus(statusText);
  parseSchedStat(readProcText(pid, `task/${pid}/stat`));
  parseInt(readProcText(pid, `task/${pid}/personality`).trim(), 16);
  parseLimits(readProcText(pid, 'limits'));
  Number(readProcText(pid, 'oom_score_adj').trim());
}
