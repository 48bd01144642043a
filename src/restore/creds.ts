/**
 * Puts a rebuilt task's credentials and limits back (DESIGN.md §3 step 7, "creds/caps and the
 * seccomp filter last"). Called at the end of a task's rebuild, after everything that needs
 * ferry's root (clone3 with set_tid, PR_SET_MM_MAP, descriptors) and before the gadget is
 * dropped and the registers are set. Every step is a syscall the task runs itself.
 *
 * Order, and why:
 * 1. Process-wide, still as root: rlimits (prlimit64: a hard limit can be lowered, never
 *    raised above ferry's own without CAP_SYS_RESOURCE, which is checked first),
 *    oom_score_adj (written to /proc/PID/oom_score_adj by ferry), child subreaper.
 * 2. Per thread, still as root: personality, scheduling policy, priority and nice
 *    (CAP_SYS_NICE may be needed), CPU affinity.
 * 3. Per thread, credentials: setgroups, setresgid + setfsgid, then securebits
 *    KEEP_CAPS|NO_SETUID_FIXUP so the uid change touches no capability (capabilities(7),
 *    "Effect of user ID changes on capabilities"), setresuid + setfsuid, capset with the
 *    dumped inheritable set (while CAP_SETPCAP still allows any), bounding-set drops,
 *    ambient set, the dumped securebits (needs CAP_SETPCAP: before the final capset), and the
 *    final capset of effective, permitted and inheritable.
 * 4. dumpable (the mm's, process-wide) and each thread's parent-death signal: the kernel
 *    resets both when credentials change (commit_creds), so they come after every thread's.
 * 5. Per thread: no_new_privs, then the seccomp filters in their original order (those all
 *    threads have in common from the oldest on once, with TSYNC, so they are shared). Filters see
 *    every later syscall, injected ones too, so before anything is touched each thread's
 *    filters are run here on the install calls and on the main thread's final munmap of the
 *    gadget (and rt_sigaction of SIGTRAP, for a process that ignores it: ignored-trap.ts); a
 *    filter that would refuse one of them fails the restore with a clear error.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { SIGTRAP, SYS } from '../arch/x86-64.js';
import { FerryError } from '../errors.js';
import { big, type CredsRecord, type TaskRecord, type ThreadCredsRecord } from '../image/records.js';
import { readProcText } from '../proc/read.js';
import { parseStatus } from '../proc/status.js';
import { injectedError, type Tracee } from '../task/tracee.js';
import { parseLimits, parseSchedStat, RLIMIT_NAMES, SCHED_RESET_ON_FORK } from '../dump/creds.js';
import { restoredSyscall, type AddressSpace } from './address-space.js';
import { ignoredTrap } from './ignored-trap.js';

const PR_SET_PDEATHSIG = 1, PR_SET_DUMPABLE = 4, PR_SET_SECCOMP = 22, PR_CAPBSET_DROP = 24,
  PR_SET_SECUREBITS = 28, PR_SET_CHILD_SUBREAPER = 36, PR_SET_NO_NEW_PRIVS = 38, PR_CAP_AMBIENT = 47;
const PR_CAP_AMBIENT_RAISE = 2, PR_CAP_AMBIENT_CLEAR_ALL = 4;
const SECBIT_NO_SETUID_FIXUP = 1 << 2, SECBIT_KEEP_CAPS = 1 << 4;
const SECCOMP_SET_MODE_FILTER = 1, SECCOMP_MODE_STRICT = 1, SECCOMP_MODE_FILTER = 2;
/** seccomp(2) SECCOMP_SET_MODE_FILTER flags: every thread gets the caller's filters; a listener (excludes TSYNC without TSYNC_ESRCH). */
const SECCOMP_FILTER_FLAG_TSYNC = 1, SECCOMP_FILTER_FLAG_NEW_LISTENER = 8;
const LINUX_CAPABILITY_VERSION_3 = 0x20080522;
const PRIO_PROCESS = 0;
const AUDIT_ARCH_X86_64 = 0xc000003e;
const SECCOMP_RET_ACTION_FULL = 0xffff0000, SECCOMP_RET_ALLOW = 0x7fff0000, SECCOMP_RET_LOG = 0x7ffc0000;

type Call = [number, ...Array<bigint | number>];

/** A classic BPF program run the way seccomp runs it (seccomp_check_filter's instruction set). */
export function runSeccompFilter(program: Buffer, nr: number, ip: bigint, args: readonly bigint[]): number {
  const data = Buffer.alloc(64); // struct seccomp_data
  data.writeInt32LE(nr, 0);
  data.writeUInt32LE(AUDIT_ARCH_X86_64, 4);
  data.writeBigUInt64LE(BigInt.asUintN(64, ip), 8);
  args.slice(0, 6).forEach((a, i) => data.writeBigUInt64LE(BigInt.asUintN(64, a), 16 + i * 8));
  const len = program.length / 8;
  const mem = new Uint32Array(16);
  let a = 0, x = 0;
  for (let pc = 0; pc < len; pc++) {
    const code = program.readUInt16LE(pc * 8), jt = program[pc * 8 + 2]!, jf = program[pc * 8 + 3]!;
    const k = program.readUInt32LE(pc * 8 + 4);
    const cls = code & 0x07;
    switch (cls) {
      case 0x00: case 0x01: { // LD, LDX (32-bit only)
        const mode = code & 0xe0;
        let v: number;
        if (mode === 0x00) v = k; // IMM
        else if (mode === 0x20 && cls === 0 && k % 4 === 0 && k < 64) v = data.readUInt32LE(k); // ABS
        else if (mode === 0x60 && k < 16) v = mem[k]!; // MEM
        else if (mode === 0x80) v = 64; // LEN
        else throw new Error(`seccomp filter: unsupported load 0x${code.toString(16)} at ${pc}`);
        if (cls === 0) a = v; else x = v;
        break;
      }
      case 0x02: case 0x03: // ST, STX
        if (k >= 16) throw new Error(`seccomp filter: bad store at ${pc}`);
        mem[k] = cls === 2 ? a : x;
        break;
      case 0x04: { // ALU
        const src = code & 0x08 ? x : k;
        switch (code & 0xf0) {
          case 0x00: a = (a + src) >>> 0; break;
          case 0x10: a = (a - src) >>> 0; break;
          case 0x20: a = Math.imul(a, src) >>> 0; break;
          case 0x30: if (src === 0) return 0; a = Math.floor(a / src) >>> 0; break;
          case 0x40: a = (a | src) >>> 0; break;
          case 0x50: a = (a & src) >>> 0; break;
          case 0x60: a = src >= 32 ? 0 : (a << src) >>> 0; break;
          case 0x70: a = src >= 32 ? 0 : a >>> src; break;
          case 0x80: a = (-a) >>> 0; break;
          case 0x90: if (src === 0) return 0; a = (a % src) >>> 0; break;
          case 0xa0: a = (a ^ src) >>> 0; break;
          default: throw new Error(`seccomp filter: unsupported alu 0x${code.toString(16)} at ${pc}`);
        }
        break;
      }
      case 0x05: { // JMP
        const op = code & 0xf0;
        if (op === 0x00) { pc += k; break; }
        const src = code & 0x08 ? x : k;
        const yes = op === 0x10 ? a === src : op === 0x20 ? a > src : op === 0x30 ? a >= src : op === 0x40 ? (a & src) !== 0 : undefined;
        if (yes === undefined) throw new Error(`seccomp filter: unsupported jump 0x${code.toString(16)} at ${pc}`);
        pc += yes ? jt : jf;
        break;
      }
      case 0x06: return ((code & 0x18) === 0x10 ? a : k) >>> 0; // RET
      case 0x07: if ((code & 0xf8) === 0x80) a = x; else x = a; break; // TXA, TAX
    }
  }
  return 0; // falling off the end is rejected by the kernel; treat as kill
}

const allows = (ret: number): boolean => {
  const action = (ret & SECCOMP_RET_ACTION_FULL) >>> 0;
  return action === SECCOMP_RET_ALLOW || action === SECCOMP_RET_LOG;
};

/** True when every filter of `programs` lets syscall `nr` through. */
function allAllow(programs: readonly Buffer[], nr: number, ip: bigint, args: readonly bigint[]): boolean {
  return programs.every((p) => allows(runSeccompFilter(p, nr, ip, args)));
}

const capsOf = (tid: number, pid: number): ReturnType<typeof parseStatus> => parseStatus(readProcText(pid, `task/${tid}/status`));

/**
 * Restores credentials and limits of `task` into its rebuilt threads (main first, then
 * `others`). The root of the tree (`isRoot`) gets no parent-death signal back: its parent is
 * now ferry, which exits right after the restore, so the signal would fire at once. Every
 * other process's main thread gets its own set here, none included (its stub's SIGKILL
 * goes: restore/tree.ts fork).
 */
export function restoreCreds(main: Tracee, others: readonly Tracee[], as: AddressSpace, task: TaskRecord, isRoot = false): void {
  const { pid } = task;
  const creds: CredsRecord = task.creds;
  const tracees = [main, ...others];
  const fail = (what: string, cause?: unknown): never => {
    throw new FerryError('ECREDS', `cannot restore the credentials of pid ${pid}: ${what}`, cause === undefined ? {} : { cause });
  };
  if (creds.threads.length !== tracees.length) fail(`the image has credentials for ${creds.threads.length} threads, the task ${tracees.length}`);
  // Ids as the task knows them (its pid namespace's); tracees carry ferry's.
  creds.threads.forEach((c, i) => { if (c.tid !== task.threads[i]?.tid) fail(`credentials of thread ${c.tid} are out of order`); });

  // --- Checks, before any change ---------------------------------------------------------
  const ours = parseLimits(readProcText(main.pid, 'limits'));
  creds.rlimits.forEach(([, hard], r) => {
    const have = ours[r]![1];
    if (big(hard) > have) {
      const fmt = (v: bigint): string => (v === (1n << 64n) - 1n ? 'unlimited' : String(v));
      fail(`its ${RLIMIT_NAMES[r]} hard limit is ${fmt(big(hard))} but ferry's own is ${fmt(have)}, and raising it needs CAP_SYS_RESOURCE (run ferry with a hard limit at least as high)`);
    }
  });
  const stub = capsOf(main.tid, main.pid);
  const capLast = Number(readFileSync('/proc/sys/kernel/cap_last_cap', 'utf8').trim());
  for (const c of creds.threads) {
    const wanted = big(c.caps.permitted) | big(c.caps.effective) | big(c.caps.ambient) | big(c.caps.bounding);
    const missing = wanted & ~stub.capBnd;
    if (missing !== 0n) fail(`thread ${c.tid} has capabilities 0x${missing.toString(16)} that ferry's own bounding set lacks`);
    if (big(c.caps.inheritable) & ~(stub.capBnd | stub.capInh)) fail(`thread ${c.tid} has inheritable capabilities ferry cannot grant`);
  }
  const programs = creds.seccompFilters.map((f) => Buffer.from(f.program, 'base64'));
  const gadgetSize = as.scratch.addr + BigInt(as.scratch.size) - as.gadgetArea;
  /** Per thread: how each filter gets installed (seccomp(2) or prctl(2)), checked against the filters before it. */
  const viaPrctl = creds.threads.map((c, i) => c.seccomp.map((idx, k) => {
    const prog = programs[idx];
    if (!prog) return fail(`thread ${c.tid} names seccomp filter ${idx}, which the image does not hold`);
    if (prog.length + 64 > as.scratch.size) fail(`seccomp filter ${idx} (${prog.length / 8} instructions) does not fit ferry's scratch area`);
    const before = c.seccomp.slice(0, k).map((j) => programs[j]!);
    const ip = tracees[i]!.gadget + 2n;
    const flags = creds.seccompFilters[idx]!.flags;
    if (allAllow(before, SYS.seccomp, ip, [BigInt(SECCOMP_SET_MODE_FILTER), BigInt(flags), as.scratch.addr])) return false;
    if (flags === 0 && allAllow(before, SYS.prctl, ip, [BigInt(PR_SET_SECCOMP), BigInt(SECCOMP_MODE_FILTER), as.scratch.addr, 0n, 0n])) return true;
    return fail(`seccomp filter ${k + 1} of thread ${c.tid} could not be installed: the filters before it forbid seccomp(2) and prctl(PR_SET_SECCOMP)`);
  }));
  // The filters every thread has, from the oldest on, are installed once, by the main thread
  // with SECCOMP_FILTER_FLAG_TSYNC: the threads share them as they did (a filter installed
  // with TSYNC, or inherited at clone(2), is one filter of every thread; a copy per thread
  // would make the program's next TSYNC fail naming a thread). The kernel does not show
  // whether equal filters are one, so equal ones are made one. Each thread adds the rest.
  const shared = tracees.length < 2 ? 0 : creds.threads[0]!.seccomp.findIndex((idx, k) => {
    const flags = creds.seccompFilters[idx]!.flags | SECCOMP_FILTER_FLAG_TSYNC;
    const before = creds.threads[0]!.seccomp.slice(0, k).map((j) => programs[j]!);
    return !creds.threads.every((c) => c.seccomp[k] === idx) || (flags & SECCOMP_FILTER_FLAG_NEW_LISTENER) !== 0
      || !allAllow(before, SYS.seccomp, main.gadget + 2n, [BigInt(SECCOMP_SET_MODE_FILTER), BigInt(flags), as.scratch.addr]);
  });
  const synced = shared < 0 ? creds.threads[0]!.seccomp.length : shared;
  const mainFilters = creds.threads[0]!.seccomp.map((j) => programs[j]!);
  if (mainFilters.length > 0 && !allAllow(mainFilters, SYS.munmap, restoredSyscall(main, task) + 2n, [as.gadgetArea, gadgetSize])) {
    fail('its seccomp filters forbid munmap(2), which ferry needs once more after installing them');
  }
  // A process ignoring SIGTRAP gets that disposition once more after them (ignored-trap.ts).
  if (mainFilters.length > 0 && ignoredTrap(task) !== undefined
    && !allAllow(mainFilters, SYS.rt_sigaction, restoredSyscall(main, task) + 2n, [BigInt(SIGTRAP), as.scratch.addr, 0n, 8n])) {
    fail('its seccomp filters forbid rt_sigaction(2) of SIGTRAP, which ferry needs once more after installing them (the process ignores SIGTRAP)');
  }

  /** Runs one labelled step in `t`; a failure names the pid, thread and step. */
  const run = (t: Tracee, what: string, call: Call): bigint => {
    const r = t.trySyscall(...call);
    if (r < 0n && r >= -4095n) fail(`thread ${t.tid}: ${what}`, injectedError(call[0], Number(-r), t.tid));
    return r;
  };
  /**
   * Runs labelled steps in `t` as one injected batch; the first that failed is reported (the
   * ones after it ran too, in a task that is killed with the failed restore anyway).
   */
  const runAll = (t: Tracee, steps: readonly Step[]): void => {
    if (steps.length === 0) return;
    const results = t.trySyscalls(steps.map((x) => x.call));
    steps.forEach((x, i) => {
      const r = results[i]!;
      if (r < 0n && r >= -4095n) fail(`thread ${t.tid}: ${x.what}`, injectedError(x.call[0], Number(-r), t.tid));
    });
  };
  const s = as.scratch;

  // --- 1. Process-wide limits and flags, as root -----------------------------------------
  // /proc by ferry's id of the task (main.pid); `pid` is the task's own (its namespace's).
  if (Number(readProcText(main.pid, 'oom_score_adj').trim()) !== creds.oomScoreAdj) {
    try {
      writeFileSync(`/proc/${main.pid}/oom_score_adj`, `${creds.oomScoreAdj}\n`);
    } catch (err) {
      fail(`oom_score_adj ${creds.oomScoreAdj} (${(err as NodeJS.ErrnoException).code ?? err}; going below ferry's own minimum needs CAP_SYS_RESOURCE)`, err);
    }
  }
  s.reset();
  const processSteps: Step[] = [];
  creds.rlimits.forEach(([soft, hard], r) => {
    // The stub has ferry's limits (`ours`): only those that differ are set.
    if (big(soft) === ours[r]![0] && big(hard) === ours[r]![1]) return;
    const lim = Buffer.alloc(16);
    lim.writeBigUInt64LE(big(soft), 0);
    lim.writeBigUInt64LE(big(hard), 8);
    processSteps.push({ what: `setting ${RLIMIT_NAMES[r]}`, call: [SYS.prlimit64, 0, r, s.put(lim), 0] });
  });
  if (creds.childSubreaper) processSteps.push({ what: 'PR_SET_CHILD_SUBREAPER', call: [SYS.prctl, PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0] });
  // A single-threaded process without seccomp filters does steps 1 to 5 in one batch.
  const merge = tracees.length === 1 && creds.threads.every((c) => c.seccomp.length === 0 && c.seccompStrict !== true);
  if (!merge) runAll(main, processSteps);

  // --- Seccomp filters, in their original order, while the task still has CAP_SYS_ADMIN (no
  // no_new_privs needed). Every tracee runs with PTRACE_O_SUSPEND_SECCOMP, so the filters do
  // not see the syscalls ferry still injects; they apply from the moment it detaches.
  const install = (t: Tracee, i: number, from: number, to: number, tsync: boolean): void => {
    const c = creds.threads[i]!;
    c.seccomp.slice(from, to).forEach((idx, j) => {
      const k = from + j;
      s.reset();
      const prog = programs[idx]!;
      const progAt = s.put(prog);
      const fprog = Buffer.alloc(16); // struct sock_fprog { u16 len; struct sock_filter *filter; }
      fprog.writeUInt16LE(prog.length / 8, 0);
      fprog.writeBigUInt64LE(progAt, 8);
      const fprogAt = s.put(fprog);
      const flags = creds.seccompFilters[idx]!.flags;
      const what = `installing seccomp filter ${k + 1} of ${c.seccomp.length}${tsync ? ' for every thread (TSYNC)' : ''}`;
      const r = run(t, what, tsync ? [SYS.seccomp, SECCOMP_SET_MODE_FILTER, flags | SECCOMP_FILTER_FLAG_TSYNC, fprogAt]
        : viaPrctl[i]![k] ? [SYS.prctl, PR_SET_SECCOMP, SECCOMP_MODE_FILTER, fprogAt, 0, 0]
          : [SYS.seccomp, SECCOMP_SET_MODE_FILTER, flags, fprogAt]);
      // TSYNC answers with the id of a thread it could not synchronise.
      if (tsync && r !== 0n) fail(`thread ${t.tid}: ${what}: thread ${r} could not be synchronised`);
    });
  };
  install(main, 0, 0, synced, true);
  tracees.forEach((t, i) => install(t, i, synced, creds.threads[i]!.seccomp.length, false));
  // Strict mode (read, write, exit and sigreturn only), per thread; it applies, as filters do,
  // once ferry detaches.
  tracees.forEach((t, i) => {
    if (creds.threads[i]!.seccompStrict === true) run(t, 'entering seccomp strict mode', [SYS.prctl, PR_SET_SECCOMP, SECCOMP_MODE_STRICT, 0, 0, 0]);
  });

  // --- 2 and 3. Per thread: scheduling, affinity, then credentials; what the stub already
  // has (read from /proc: it inherited ferry's) is not set again.
  const last = (t: Tracee, i: number): Step[] => {
    // --- 4 and 5: what credential changes reset: dumpable (process-wide, after every
    // thread's credentials) and each thread's parent-death signal; then no_new_privs.
    const c = creds.threads[i]!;
    const out: Step[] = [];
    if (t === main && (creds.dumpable === 0 || creds.dumpable === 1)) {
      out.push({ what: `PR_SET_DUMPABLE ${creds.dumpable}`, call: [SYS.prctl, PR_SET_DUMPABLE, creds.dumpable, 0, 0, 0] });
    }
    // 2 (suid_dumpable) cannot be set by prctl; the kernel set fs.suid_dumpable with the uid change.
    // A forked stub's main thread still has the SIGKILL its stub code set to die with its
    // parent stub until seized (restore/tree.ts fork): it gets the image's, none included.
    // Other threads start with none (copy_process()).
    if (!isRoot && (c.pdeathsig !== 0 || t === main)) out.push({ what: `PR_SET_PDEATHSIG ${c.pdeathsig}`, call: [SYS.prctl, PR_SET_PDEATHSIG, c.pdeathsig, 0, 0, 0] });
    if (c.noNewPrivs) out.push({ what: 'PR_SET_NO_NEW_PRIVS', call: [SYS.prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0] });
    return out;
  };
  const single = tracees.length === 1;
  tracees.forEach((t, i) => {
    const c = creds.threads[i]!;
    if (!merge) s.reset();
    const now = capsOf(t.tid, t.pid);
    const steps: Step[] = merge ? processSteps : [];
    const personality = parseInt(readProcText(t.pid, `task/${t.tid}/personality`).trim(), 16);
    if (personality !== c.personality) steps.push({ what: `personality 0x${c.personality.toString(16)}`, call: [SYS.personality, c.personality] });
    steps.push(...schedSteps(c, parseSchedStat(readProcText(t.pid, `task/${t.tid}/stat`)), s));
    if (c.affinity.length > 0 && !sameCpus(c.affinity, now.cpus)) {
      const words = Math.floor(Math.max(...c.affinity) / 64) + 1;
      const mask = Buffer.alloc(words * 8);
      for (const cpu of c.affinity) mask.writeUInt8(mask.readUInt8(cpu >> 3) | (1 << (cpu & 7)), cpu >> 3);
      steps.push({ what: `CPU affinity ${c.affinity.join(',')} (does this machine have those CPUs?)`, call: [SYS.sched_setaffinity, 0, mask.length, s.put(mask)] });
    }
    steps.push(...idSteps(c, now, capLast, s));
    if (single) steps.push(...last(t, i));
    runAll(t, steps);
  });
  if (!single) tracees.forEach((t, i) => runAll(t, last(t, i)));
}

/** One labelled injected call of the credentials' restore. */
interface Step { what: string; call: Call }

/** Same CPU set (`now` from the stub's Cpus_allowed_list)? */
function sameCpus(want: readonly number[], now: readonly number[]): boolean {
  return want.length === now.length && [...want].sort((a, b) => a - b).every((c, i) => c === now[i]);
}

/**
 * Policy, rt priority, reset-on-fork and nice of one thread (sched_setscheduler(2),
 * setpriority(2)), unless the stub thread has them already (`now`, from its stat: a fresh
 * thread never has SCHED_RESET_ON_FORK, fork clears it).
 */
function schedSteps(c: ThreadCredsRecord, now: { nice: number; priority: number; policy: number }, s: AddressSpace['scratch']): Step[] {
  const steps: Step[] = [];
  if (c.sched.policy !== now.policy || c.sched.priority !== now.priority || c.sched.resetOnFork) {
    const param = Buffer.alloc(4);
    param.writeInt32LE(c.sched.priority, 0);
    const policy = c.sched.policy | (c.sched.resetOnFork ? SCHED_RESET_ON_FORK : 0);
    steps.push({ what: `scheduling policy ${c.sched.policy} priority ${c.sched.priority}`, call: [SYS.sched_setscheduler, 0, policy, s.put(param)] });
  }
  if (c.sched.nice !== now.nice) steps.push({ what: `nice ${c.sched.nice}`, call: [SYS.setpriority, PRIO_PROCESS, 0, c.sched.nice] });
  return steps;
}

/**
 * groups, gids, securebits, uids and capabilities of one thread, in the order the kernel
 * allows; what the stub thread already has (`now`, its /proc status) is left out, except the
 * final securebits (not shown in /proc).
 */
function idSteps(c: ThreadCredsRecord, now: ReturnType<typeof parseStatus>, capLast: number, s: AddressSpace['scratch']): Step[] {
  const steps: Step[] = [];
  const run = (what: string, call: Call): void => { steps.push({ what, call }); };
  const same = (a: readonly number[], b: readonly number[]): boolean => a.length === b.length && a.every((v, i) => v === b[i]);
  const [rgid, egid, sgid, fsgid] = c.gids;
  const [ruid, euid, suid, fsuid] = c.uids;
  if (!same([...c.groups].sort((a, b) => a - b), [...now.groups].sort((a, b) => a - b))) {
    const groups = Buffer.alloc(Math.max(4, c.groups.length * 4));
    c.groups.forEach((g, i) => groups.writeUInt32LE(g, i * 4));
    run(`setgroups ${c.groups.join(',') || '(none)'}`, [SYS.setgroups, c.groups.length, s.put(groups)]);
  }
  if (!same(c.gids, now.gid)) {
    run(`setresgid ${rgid} ${egid} ${sgid}`, [SYS.setresgid, rgid, egid, sgid]);
    run(`setfsgid ${fsgid}`, [SYS.setfsgid, fsgid]);
  }
  if (!same(c.uids, now.uid)) {
    // Keep every capability through the uid change: no fixups at all.
    run('PR_SET_SECUREBITS (KEEP_CAPS, NO_SETUID_FIXUP)', [SYS.prctl, PR_SET_SECUREBITS, SECBIT_KEEP_CAPS | SECBIT_NO_SETUID_FIXUP, 0, 0, 0]);
    run(`setresuid ${ruid} ${euid} ${suid}`, [SYS.setresuid, ruid, euid, suid]);
    run(`setfsuid ${fsuid}`, [SYS.setfsuid, fsuid]);
  }
  const capset = (what: string, eff: bigint, perm: bigint, inh: bigint): void => {
    const b = Buffer.alloc(8 + 24); // cap_user_header_t, then two cap_user_data_t (low, high 32 bits)
    b.writeUInt32LE(LINUX_CAPABILITY_VERSION_3, 0);
    b.writeInt32LE(0, 4);
    [eff, perm, inh].forEach((v, j) => {
      b.writeUInt32LE(Number(v & 0xffffffffn), 8 + j * 4);
      b.writeUInt32LE(Number((v >> 32n) & 0xffffffffn), 20 + j * 4);
    });
    const at = s.put(b);
    run(what, [SYS.capset, at, at + 8n]);
  };
  const inh = big(c.caps.inheritable);
  if (inh !== now.capInh) capset('capset of the inheritable set', now.capEff, now.capPrm, inh);
  const bounding = big(c.caps.bounding);
  for (let cap = 0; cap <= capLast; cap++) {
    const bit = 1n << BigInt(cap);
    if ((now.capBnd & bit) !== 0n && (bounding & bit) === 0n) run(`PR_CAPBSET_DROP ${cap}`, [SYS.prctl, PR_CAPBSET_DROP, cap, 0, 0, 0]);
  }
  const ambient = big(c.caps.ambient);
  if (now.capAmb !== 0n) run('PR_CAP_AMBIENT_CLEAR_ALL', [SYS.prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0]);
  for (let cap = 0; cap <= capLast; cap++) {
    if ((ambient >> BigInt(cap)) & 1n) run(`PR_CAP_AMBIENT_RAISE ${cap}`, [SYS.prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0]);
  }
  run(`PR_SET_SECUREBITS 0x${c.securebits.toString(16)}`, [SYS.prctl, PR_SET_SECUREBITS, c.securebits, 0, 0, 0]);
  // The uid change kept every capability (NO_SETUID_FIXUP) and the inheritable set is set:
  // the final capset only when the effective or permitted set differs.
  if (big(c.caps.effective) !== now.capEff || big(c.caps.permitted) !== now.capPrm) {
    capset('capset', big(c.caps.effective), big(c.caps.permitted), inh);
  }
  return steps;
}
