/**
 * Freezing a process tree for checkpoint (DESIGN.md §2): every thread of every process under
 * the root is seized and stopped before anything is read, so no task changes state while
 * another is dumped.
 *
 * The walk is top-down. A process is seized (all its threads, re-listed until a round finds
 * no new one) before its children are listed: a stopped process cannot fork, and a fork in
 * progress completes before the stop, so the list read afterwards is complete. Zombies
 * (exited, unreaped children) cannot be seized; they are recorded with their exit status.
 *
 * What restore cannot rebuild yet is refused here, before the tree is touched or while it is
 * being seized (and then released): another pid or user namespace, a tracer, a session
 * whose leader is outside the tree and is not the root's, a group of a session the tree leads
 * whose leader runs outside the tree, a descriptor table or fs struct shared in a way restore
 * cannot fork, a thread's own descriptor table or fs struct that another task shares
 * (checkSharing).
 */
import { readdirSync, readlinkSync } from 'node:fs';
import { DUMP_TRACE_OPTIONS, PTRACE_EVENT_STOP } from '../arch/x86-64.js';
import { FerryError, describeCause, errnoCode } from '../errors.js';
import type { ProcessRecord } from '../image/records.js';
import { Forkers } from '../image/sharing.js';
import { native } from '../native/binding.js';
import { parseChildren } from '../proc/children.js';
import { listTids, readProcText } from '../proc/read.js';
import { isKernelThread, parseStat, type ProcStat } from '../proc/stat.js';
import { parseStatus } from '../proc/status.js';

/** One process of the frozen tree. */
export interface FrozenProcess {
  pid: number;
  /** Threads, the leader first; empty for a zombie. */
  tids: number[];
  stat: ProcStat;
  /** Stopped by a signal (state T) before ferry came. */
  stoppedBefore: boolean;
  /**
   * When stoppedBefore: the signal of its group stop (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU), as
   * the seize reported it; else 0. PTRACE_SEIZE of a task in a group stop makes it trap at once
   * (ptrace_attach sets JOBCTL_TRAP_STOP), and do_jobctl_trap reports the stop signal the task
   * keeps in its jobctl (JOBCTL_STOP_SIGMASK) while SIGNAL_STOP_STOPPED holds, whether or not
   * its parent already collected the stop (which clears only signal->group_exit_code).
   */
  stopSignal: number;
  record: ProcessRecord;
  /** Threads with a root, working directory and umask of their own (unshare(2) of CLONE_FS; checkSharing). */
  ownFs?: number[];
  /** Threads with a descriptor table of their own (unshare(2) of CLONE_FILES; checkSharing). */
  ownFiles?: number[];
}

/** The frozen tree: parents before children, the root first. */
export interface FrozenTree {
  processes: FrozenProcess[];
  /** Lets every seized thread go (idempotent). `keep` sigmasks are restored by the caller first. */
  release(): void;
}

const nsOf = (pid: number, ns: string): string => {
  try {
    return readlinkSync(`/proc/${pid}/ns/${ns}`);
  } catch {
    return '';
  }
};

/**
 * Ferry's own pid and user namespaces, read once per ferry process (precheckRoot reads them
 * before the freeze): neither can change under a running process (setns(2) of a pid namespace
 * moves only its children, and a multithreaded process cannot join another user namespace),
 * and every link read in the frozen window lengthens it. A failed reading is not kept.
 */
let ownNs: { pid: string; user: string } | undefined;
function ferryNs(): { pid: string; user: string } {
  if (ownNs !== undefined) return ownNs;
  const ns = { pid: nsOf(process.pid, 'pid'), user: nsOf(process.pid, 'user') };
  if (ns.pid !== '' && ns.user !== '') ownNs = ns;
  return ns;
}

/** How to freeze: for a container, its pid namespace and the threads its cgroup freeze seized. */
export interface FreezeOptions {
  /** The pid namespace the tree lives in (readlink of /proc/PID/ns/pid); default: ferry's. */
  pidNs?: string;
  /** Threads already seized and stopped (by a cgroup freeze); every one must be in the tree. */
  preseized?: ReadonlySet<number>;
  /**
   * The caller ran precheckRoot on the root already, before the freeze began: it is not run
   * again in the frozen window (what it refuses cannot change meanwhile: the root's pid, ferry
   * and its ancestors; access is checked again for every process as it is met).
   */
  prechecked?: boolean;
}

/** Why the kernel may refuse ferry a process although ferry runs as root; what to do. */
const DENIED = 'it may hold capabilities ferry lacks, be non-dumpable (a setuid program), or be guarded by a security '
  + 'module (Yama ptrace_scope, an LSM): run ferry with at least its privileges, or checkpoint another process';

/** Pids of this ferry and its ancestors, up to (not including) 0. */
function ferryAndAncestors(): Set<number> {
  const out = new Set<number>();
  for (let p = process.pid; p > 0 && !out.has(p) && out.size < 4096;) {
    out.add(p);
    try {
      p = parseStat(readProcText(p, 'stat')).ppid;
    } catch {
      break;
    }
  }
  return out;
}

/**
 * Refuses, before anything is touched, a root whose tree ferry cannot stop: init (pid 1, the
 * ancestor of everything), ferry itself or one of its ancestors (its tree holds ferry, which
 * cannot stop itself: seizing it fails with EPERM), or a process the kernel does not let ferry
 * inspect. A root that does not exist is left to the caller's own error.
 */
export function precheckRoot(root: number): void {
  ferryNs(); // read now, not in the frozen window
  let stat: ProcStat;
  try {
    stat = parseStat(readProcText(root, 'stat'));
  } catch {
    return;
  }
  if (root === process.pid) {
    throw new FerryError('ESELF', `pid ${root} is this ferry itself: give the pid of the process to checkpoint`, { pid: root });
  }
  if (root === 1) {
    throw new FerryError('EINIT', `pid 1 (${stat.comm}) is the init process, the ancestor of every process, ferry included: `
      + 'it cannot be checkpointed; give the pid of the program to checkpoint (ps -ef --forest shows the tree)', { pid: root });
  }
  if (ferryAndAncestors().has(root)) {
    throw new FerryError('ESELF', `pid ${root} (${stat.comm}) is an ancestor of this ferry (pid ${process.pid}), so its tree `
      + 'holds ferry itself, which cannot stop itself: run ferry from outside that tree (another terminal or session)', { pid: root });
  }
  checkAccess(root, `pid ${root} (${stat.comm})`);
}

/**
 * Refuses a process the kernel does not let ferry inspect (PTRACE_MODE_READ, the check that
 * guards /proc/PID/exe, fd/, maps and ptrace(2) alike), naming it and what to do, before the
 * first read of its descriptors fails with a bare EACCES.
 */
function checkAccess(pid: number, what: string): void {
  try {
    readlinkSync(`/proc/${pid}/exe`);
  } catch (err) {
    const code = errnoCode(err);
    if (code !== 'EACCES' && code !== 'EPERM') return; // gone, or a kernel thread: the caller's checks say so
    throw new FerryError('EPERM', `the kernel does not let ferry inspect ${what} (reading /proc/${pid}/exe: ${code}): ${DENIED}`,
      { cause: err, pid });
  }
}

/** Cheap checks on one process before it is seized; `pidNs`, `userNs`: the namespaces it must be in. */
function precheck(pid: number, stat: ProcStat, root: number, pidNs: string, userNs: string): void {
  const what = pid === root ? `pid ${pid}` : `pid ${pid} (in the tree of ${root})`;
  if (pid === process.pid) {
    throw new FerryError('ESELF', `${what} is this ferry itself, which cannot stop itself: run ferry from outside the tree `
      + `of ${root} (another terminal or session)`, { pid });
  }
  if (isKernelThread(stat)) {
    throw new FerryError('EKTHREAD', `${what} (${stat.comm}) is a kernel thread: only user processes can be checkpointed`, { pid });
  }
  const status = parseStatus(readProcText(pid, 'status'));
  if (status.tgid !== pid) {
    throw new FerryError('EINVAL', `pid ${pid} is a thread of process ${status.tgid}: checkpoint the process`, { pid });
  }
  if (status.tracerPid !== 0 && status.tracerPid !== process.pid) {
    throw new FerryError('ETRACED', `${what} is already traced by pid ${status.tracerPid} (a debugger?): detach it first`, { pid });
  }
  checkAccess(pid, `${what} (${stat.comm})`);
  // A task waiting in fanotify_get_response (a FAN_*_PERM event its open/read/exec raised, not
  // answered yet) sleeps TASK_KILLABLE: PTRACE_INTERRUPT does not wake it, so it would not stop
  // until the listener answers, which may be a process of this very tree, stopped first.
  // Every thread: one that is seized and never stops cannot be detached again (below).
  let tids: number[] = [pid];
  try { tids = readdirSync(`/proc/${pid}/task`).map(Number); } catch { /* gone: found so below */ }
  for (const tid of tids) {
    let state = tid === pid ? stat.state : '';
    if (tid !== pid) try { state = parseStat(readProcText(pid, `task/${tid}/stat`)).state; } catch { continue; /* gone */ }
    if (state !== 'D') continue;
    const chan = wchanOf(pid, tid);
    if (chan.startsWith('fanotify_')) {
      throw new FerryError('EBUSY', `${what} (${stat.comm})${tid === pid ? '' : `, its thread ${tid},`} is blocked in state D (wchan ${chan}) until a fanotify listener answers the `
        + 'permission event its file access raised, and cannot be stopped before: have the listener answer it (FAN_ALLOW or FAN_DENY), '
        + 'then checkpoint again', { pid });
    }
  }
  for (const [ns, want] of [['pid', pidNs], ['user', userNs]] as const) {
    if (nsOf(pid, ns) !== want) {
      throw new FerryError('EUNSUPPORTED', `${what} (${stat.comm}) runs in another ${ns} namespace: not supported yet (checkpoint it as a container)`, { pid });
    }
  }
}

/**
 * Seizes and stops every thread of `pid`, re-listing /proc/PID/task until a round finds no
 * new thread. Returns the tids, the leader first, or null when the process exited (or became
 * a zombie) before it could be stopped.
 *
 * The threads of one listing are seized and interrupted one after the other, then their stops
 * collected: the round trips (a thread woken to trap into its PTRACE_EVENT_STOP, ferry woken
 * by the stop) overlap instead of following each other, one per thread. A thread seized but
 * not yet stopped runs on as it did before the seize; the leader is stopped before the first
 * listing, so that its stop signal is read before anything else.
 */
function seizeThreads(pid: number, seized: number[], preseized: ReadonlySet<number>, stop = { signal: 0 }): number[] | null {
  const n = native();
  const mine: number[] = [];
  const known = new Set<number>(); // every tid tried, so a re-listing costs O(threads)
  /** Seizes and interrupts `tid`; false when it exited meanwhile; true for a pre-seized one. */
  const attach = (tid: number): boolean => {
    known.add(tid);
    if (preseized.has(tid)) return true;
    try {
      // Its seccomp filters must not see the syscalls ferry injects.
      n.seize(tid, DUMP_TRACE_OPTIONS);
    } catch (err) {
      const code = errnoCode(err);
      if (code === 'ESRCH' || (code === 'EPERM' && isZombie(tid))) return false; // exited meanwhile
      const why = code === 'EPERM' ? `: the kernel does not let ferry trace it; ${DENIED}` : '';
      throw new FerryError('ESEIZE', `cannot attach to ${tid === pid ? 'pid' : `thread ${tid} of pid`} ${pid}: ${describeCause(err)}${why}`,
        { cause: err, pid });
    }
    seized.push(tid);
    n.interrupt(tid);
    return true;
  };
  /** Collects the stop of an attached `tid`; false when it died instead. */
  const stopped = (tid: number): boolean => {
    if (!preseized.has(tid)) {
      let st;
      try {
        st = n.waitpid(tid);
      } catch (err) {
        if (errnoCode(err) !== 'ETIMEDOUT') throw err;
        const who = tid === pid ? `pid ${pid}` : `thread ${tid} of pid ${pid}`;
        let state = '?';
        try { state = parseStat(readProcText(pid, `task/${tid}/stat`)).state; } catch { /* gone */ }
        throw new FerryError('ETIMEDOUT', `${who} did not stop within 30 s: it is in state ${state} (wchan ${wchanOf(pid, tid)}), `
          + 'blocked in the kernel where ptrace cannot stop it; the rest of the tree is let go as it was, and that thread as soon as ferry exits '
          + '(ptrace can detach only a stopped thread): checkpoint again once it is no longer blocked',
        { cause: err, pid });
      }
      if (!st || !st.stopped) return false;
      if (tid === pid && st.event === PTRACE_EVENT_STOP) stop.signal = st.stopSig;
    }
    mine.push(tid);
    return true;
  };
  if (!attach(pid) || !stopped(pid)) return null;
  for (let round = 0; ; round++) {
    const fresh = listTids(pid).filter((t) => !known.has(t));
    if (fresh.length === 0) break;
    if (round > 1000) throw new FerryError('EBUSY', `pid ${pid} keeps creating threads faster than they can be stopped`);
    const attached = fresh.filter(attach);
    for (const tid of attached) stopped(tid);
  }
  return mine;
}

/** /proc/PID/task/TID/wchan: the kernel function a sleeping task waits in ('0' when running, '?' unreadable). */
function wchanOf(pid: number, tid: number): string {
  try {
    return readProcText(pid, `task/${tid}/wchan`).trim() || '0';
  } catch {
    return '?';
  }
}

function isZombie(pid: number): boolean {
  try {
    return parseStat(readProcText(pid, 'stat')).state === 'Z';
  } catch {
    return false;
  }
}

/** Freezes the tree rooted at `root`. On failure everything seized so far is let go. */
export function freezeTree(root: number, opts: FreezeOptions = {}): FrozenTree {
  const n = native();
  const preseized = opts.preseized ?? new Set<number>();
  const pidNs = opts.pidNs ?? ferryNs().pid;
  const userNs = ferryNs().user; // read once, not once per process
  // Pre-seized threads are let go by release() too, whether the walk reaches them or not.
  const seized: number[] = [...preseized];
  let released = false;
  const release = (): void => {
    if (released) return;
    released = true;
    for (const tid of seized) {
      try { n.detach(tid, 0); } catch { /* exited */ }
    }
  };
  const processes: FrozenProcess[] = [];
  try {
    if (opts.prechecked !== true) precheckRoot(root);
    const queue: Array<{ pid: number; ppid: number }> = [{ pid: root, ppid: 0 }];
    for (let next = queue.shift(); next; next = queue.shift()) {
      const { pid } = next;
      let stat: ProcStat;
      try {
        stat = parseStat(readProcText(pid, 'stat'));
      } catch (err) {
        if (pid === root) throw new FerryError('ENOPROC', `no process with pid ${pid} (check the pid; it may have exited)`, { cause: err });
        continue; // exited and reaped meanwhile
      }
      if (stat.state === 'Z' || stat.state === 'X') {
        if (pid === root) throw new FerryError('EZOMBIE', `pid ${pid} is a zombie: nothing to checkpoint`);
        processes.push(zombie(pid, stat));
        continue;
      }
      precheck(pid, stat, root, pidNs, userNs);
      const stoppedBefore = stat.state === 'T';
      const stop = { signal: 0 };
      const tids = seizeThreads(pid, seized, preseized, stop);
      if (!tids) {
        if (pid === root) throw new FerryError('ENOPROC', `pid ${pid} exited before it could be stopped`);
        const now = isZombie(pid) ? parseStat(readProcText(pid, 'stat')) : undefined;
        if (now) processes.push(zombie(pid, now));
        continue;
      }
      // Stopped now: the ids cannot change any more.
      stat = parseStat(readProcText(pid, 'stat'));
      processes.push({
        pid, tids, stat, stoppedBefore, stopSignal: stoppedBefore ? stop.signal : 0,
        record: { pid, ppid: pid === root ? stat.ppid : next.ppid, pgid: stat.pgrp, sid: stat.session, zombie: null },
      });
      for (const tid of tids) {
        for (const child of parseChildren(readProcText(pid, `task/${tid}/children`))) {
          queue.push({ pid: child, ppid: pid });
        }
      }
    }
    checkGroups(processes.map((p) => p.record), root);
    const own = checkSharing(processes.filter((p) => p.tids.length > 0));
    for (const p of processes) {
      const fs = own.fs.get(p.pid);
      if (fs !== undefined) p.ownFs = fs;
      const files = own.files.get(p.pid);
      if (files !== undefined) p.ownFiles = files;
    }
    const walked = new Set(processes.flatMap((p) => p.tids));
    const stray = [...preseized].find((tid) => !walked.has(tid));
    if (stray !== undefined) {
      throw new FerryError('EUNSUPPORTED', `pid ${stray} is in the container's cgroup but not under its init ${root} (a process started with 'exec'?): not supported yet`);
    }
  } catch (err) {
    release();
    throw err;
  }
  return { processes, release };
}

function zombie(pid: number, stat: ProcStat): FrozenProcess {
  return {
    pid, tids: [], stat, stoppedBefore: false, stopSignal: 0,
    record: { pid, ppid: stat.ppid, pgid: stat.pgrp, sid: stat.session, zombie: { status: stat.exitCode, comm: stat.comm } },
  };
}

/** Whether a process with `pid` exists (a zombie too) in ferry's pid namespace. */
function pidExists(pid: number): boolean {
  try {
    readProcText(pid, 'stat');
    return true;
  } catch {
    return false;
  }
}

/**
 * Refuses sessions and process groups restore cannot rebuild: restore gives each process the
 * session of its parent unless it leads its own (setsid), so a process in a session other
 * than its parent's must lead it, and a session led from outside the tree must be the root's
 * (the restored root takes ferry's caller's: a session can be inherited or made, never
 * joined). A process group led from outside the tree is kept when it is in that session: the
 * restore joins it again if it still exists in the restored root's session (restore/tree.ts
 * outsideGroups); the root's own falls back to ferry's caller's group.
 *
 * In a session the tree leads, a group whose leader is not in the tree is kept when that
 * leader has exited (a shell's pipeline whose first process ended: `exists` says no process
 * has its pid; the group id keeps the pid from being reused while members live): restore makes
 * it again around a short-lived process with that pid (restore/tree.ts leaderlessGroups). A
 * leader alive outside the tree (a process of the session its parent left behind) is refused:
 * its pid is taken, and the group would come back without it.
 */
export function checkGroups(recs: readonly ProcessRecord[], root: number, exists: (pid: number) => boolean = pidExists): void {
  const byPid = new Map(recs.map((r) => [r.pid, r]));
  const rootRec = byPid.get(root)!;
  for (const r of recs) {
    if (r.pid === root) continue;
    const parent = byPid.get(r.ppid);
    if (r.sid !== r.pid && parent && r.sid !== parent.sid) {
      throw new FerryError('EUNSUPPORTED',
        `pid ${r.pid} is in session ${r.sid} but its parent ${r.ppid} is in session ${parent.sid}: such a tree cannot be restored yet`);
    }
    if (!byPid.has(r.sid) && r.sid !== rootRec.sid) {
      throw new FerryError('EUNSUPPORTED', `pid ${r.pid} is in session ${r.sid}, led from outside the tree and not the root's: `
        + 'a session can only be inherited or made (setsid(2)), so restore cannot put it back there');
    }
    // The session the tree leads is made anew by the restore: a group of it whose leader is
    // alive outside the tree cannot come back whole.
    if (!byPid.has(r.pgid) && r.pgid !== rootRec.pgid && byPid.has(r.sid) && exists(r.pgid)) {
      throw new FerryError('EUNSUPPORTED', `pid ${r.pid} is in process group ${r.pgid} of session ${r.sid}, which the tree leads, `
        + `but the group is led from outside the tree (by pid ${r.pgid}, which exists: running, or a zombie its parent has not reaped): restore cannot make that group again; `
        + 'checkpoint the tree of a process that holds its leader too', { pid: r.pid });
    }
  }
}

/** kcmp(2) types: the descriptor table; the fs struct (root, working directory, umask). */
const KCMP_FILES = 2, KCMP_FS = 3;

/** Threads with a table or struct of their own (threadsWithOwn), by process. */
export interface OwnTables {
  /** Threads with a descriptor table of their own (ThreadRecord.fds). */
  files: Map<number, number[]>;
  /** Threads with a root, working directory and umask of their own (ThreadRecord.fs). */
  fs: Map<number, number[]>;
}

/**
 * Finds processes of the tree sharing one descriptor table (clone(2) CLONE_FILES) or one fs
 * struct (CLONE_FS: root, working directory, umask) and records it in their records
 * (ProcessRecord.sharesFiles, sharesFs: the first process of the tree holding the table), so
 * that restore forks them sharing one again (restore/tree.ts). kcmp(2) orders the tables, so
 * one sort finds the processes that hold the same one.
 *
 * Restore forks a sharer from its parent, or from a sibling, holding what it shares
 * (image/sharing.ts Forkers). What it could not fork is refused: processes sharing a table
 * that neither the parent of one of them nor a sibling of it in its session holds (the
 * parent exited and left them to a reaper). A thread with a descriptor table or an fs struct
 * of its own is returned (threadsWithOwn), by process: its descriptors (ThreadRecord.fds) and
 * its fs (ThreadRecord.fs) are recorded with it.
 */
export function checkSharing(procs: readonly Pick<FrozenProcess, 'pid' | 'tids' | 'record'>[]): OwnTables {
  const own: OwnTables = { files: threadsWithOwn(procs, KCMP_FILES), fs: threadsWithOwn(procs, KCMP_FS) };
  if (procs.length < 2) return own;
  const kinds = [
    [KCMP_FILES, 'descriptor table', 'CLONE_FILES', 'sharesFiles'],
    [KCMP_FS, 'root, working directory and umask', 'CLONE_FS', 'sharesFs'],
  ] as const;
  const rank = new Map(procs.map((p, i) => [p.pid, i]));
  for (const [type, , , field] of kinds) {
    const order = kcmpOrder(type);
    const sorted = procs.map((p) => p.pid).sort(order);
    for (let start = 0; start < sorted.length;) {
      let end = start + 1;
      while (end < sorted.length && order(sorted[start]!, sorted[end]!) === 0) end++;
      // One table: its holders in tree order (parents before children), the first one owns it.
      const group = sorted.slice(start, end).sort((a, b) => rank.get(a)! - rank.get(b)!);
      start = end;
      for (const pid of group.slice(1)) procs[rank.get(pid)!]!.record[field] = group[0]!;
    }
  }
  const forkers = new Forkers();
  for (const { record: r } of procs) {
    const shared = kinds.find(([, , , field]) => r[field] !== undefined);
    if (forkers.add(r) === undefined && shared) {
      const [, what, flag, field] = shared;
      throw new FerryError('EUNSUPPORTED', `pids ${r[field]} and ${r.pid} share one ${what} (clone(2) with ${flag}) that neither the `
        + `parent ${r.ppid} of ${r.pid} nor a sibling in its session shares with it, which restore cannot rebuild yet; the tree was left running`, { pid: r.pid });
    }
  }
  return own;
}

/** Sorts tasks by the kernel object of kcmp(2) type `type` they hold: the same one compares equal. */
const kcmpOrder = (type: number) => (a: number, b: number): number => {
  const r = native().kcmp(a, b, type, 0, 0);
  return r === 0 ? 0 : r === 1 ? -1 : 1; // kcmp: 1 means a orders first, 2 after
};

/**
 * The threads holding a descriptor table (`type` KCMP_FILES) or an fs struct (root, working
 * directory, umask: KCMP_FS) other than their leader's, by process: each unshare(2)d
 * CLONE_FILES or CLONE_FS (or its leader did, and it is the one thread left on the old one).
 * Restore makes each unshare its own again, so one it shares with another task is refused: a
 * thread it made with CLONE_FILES or CLONE_FS, or a process cloned from it so, would come back
 * with a copy, no longer moving with it. One sort of the leaders and those threads by their
 * table (kcmp(2)) finds them, a neighbour each.
 */
function threadsWithOwn(procs: readonly Pick<FrozenProcess, 'pid' | 'tids'>[], type: typeof KCMP_FILES | typeof KCMP_FS): Map<number, number[]> {
  const n = native();
  const out = new Map<number, number[]>();
  const processOf = new Map<number, number>();
  for (const p of procs) {
    const own = p.tids.slice(1).filter((tid) => n.kcmp(p.pid, tid, type, 0, 0) !== 0);
    if (own.length === 0) continue;
    out.set(p.pid, own);
    for (const tid of own) processOf.set(tid, p.pid);
  }
  if (out.size === 0) return out;
  const order = kcmpOrder(type);
  const sorted = [...procs.map((p) => p.pid), ...processOf.keys()].sort(order);
  const [what, flag] = type === KCMP_FILES ? ['a descriptor table', 'CLONE_FILES'] : ['a root, working directory and umask', 'CLONE_FS'];
  for (let i = 0; i + 1 < sorted.length; i++) {
    const [a, b] = [sorted[i]!, sorted[i + 1]!];
    if (order(a, b) !== 0) continue;
    const tid = processOf.has(a) ? a : processOf.has(b) ? b : undefined;
    if (tid === undefined) continue; // two processes sharing one: checkSharing's
    const other = tid === a ? b : a;
    const who = processOf.has(other) ? `thread ${other} of pid ${processOf.get(other)!}` : `pid ${other}`;
    throw new FerryError('EUNSUPPORTED', `thread ${tid} of pid ${processOf.get(tid)!} has ${what} of its own `
      + `(unshare(2) of ${flag}) that ${who} shares, which restore cannot rebuild yet; the tree was left running`, { pid: processOf.get(tid)! });
  }
  return out;
}
