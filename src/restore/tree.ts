/**
 * Creating a process tree for restore (DESIGN.md §3, step 2): every process of the image as a
 * restore stub with its original pid, under its original parent, in its session and process
 * group, before any address space is rebuilt.
 *
 * The root stub is spawned by ferry (clone3 with set_tid, then execve of the stub). Every
 * other process is forked by its parent's stub: an injected clone3(set_tid = [pid]) — the
 * child is a copy of the tiny stub, resumes after the `syscall` in the stub's pause() loop,
 * and is seized there. Parents come before children in tree.json, so a parent always exists
 * first. Sessions: a session leader calls setsid() right after it is created, before it forks
 * children, which inherit the session. Groups: once every process exists, group leaders call
 * setpgid(0, 0), then members join their group; a group whose leader had exited is made around a
 * short-lived process with its id, forked by the session's leader as soon as that exists, which
 * exits once the members joined (leaderlessGroups, holdGroup). A process that shared a
 * descriptor table or fs struct (clone(2) CLONE_FILES, CLONE_FS) is forked with the same flags
 * by its parent holding them, or by a sibling holding them with CLONE_PARENT too
 * (image/sharing.ts), so they share them again; the table is filled once, by the first process holding it. Zombies are created
 * like the others and then made to exit with their status: their parent reaps them after
 * restore.
 */
import { readdirSync } from 'node:fs';
import {
  ALL_SIGNALS, decodeRegs, encodeRegs, PR_SET_NAME, RESTORE_TRACE_OPTIONS, SIGKILL, SIGSTOP, SYS, KSIGACTION_SIZE,
} from '../arch/x86-64.js';
import { FerryError, describeCause, errnoCode } from '../errors.js';
import { faultPointSync } from '../fault.js';
import type { ProcessRecord, TreeRecord } from '../image/records.js';
import { setsidPlan } from '../image/sharing.js';
import { native } from '../native/binding.js';
import { parseMaps } from '../proc/maps.js';
import { readProcText } from '../proc/read.js';
import { parseChildren } from '../proc/children.js';
import { parseStat } from '../proc/stat.js';
import { parseStatus } from '../proc/status.js';
import { Tracee } from '../task/tracee.js';
import type { RestoreFiles } from '../files/install.js';
import { emptyForegrounds, setEmptyForeground, takeControllingTerminal } from '../files/tty.js';
import { FORK_GADGET, GADGET_CODE, useStubGadget } from './address-space.js';

const SIGCHLD = 17;
/**
 * clone(2) flags: share the fs struct (root, working directory, umask); share the descriptor
 * table; give the child the caller's parent.
 */
const CLONE_FS = 0x200, CLONE_FILES = 0x400, CLONE_PARENT = 0x8000;
const CLONE_ARGS_SIZE = 88;
/** wait4(2) options: do not block; children of any exit signal (a helper has none). */
const WNOHANG = 1, WALL = 0x40000000;
const RLIMIT_CORE = 4;
const PR_SET_PDEATHSIG = 1;

/** The created tree: a stopped, traced stub per live process. */
export interface CreatedTree {
  /** Live processes by pid (the leader's Tracee), root first, parents before children. */
  stubs: Map<number, Tracee>;
  /** Threads created later during rebuild, by pid (registered by the caller). */
  threads: Map<number, Tracee[]>;
  /** Kills and reaps everything created so far (idempotent). */
  destroy(): void;
}

/**
 * What restore does to each live process while the tree is being created (restore.ts):
 * its memory is rebuilt before its children that inherit pages from it are forked.
 */
export interface TreeBuilder {
  /** Whether `rec` is forked from its parent after the parent's memory is rebuilt (restore/cow.ts). */
  late(rec: ProcessRecord): boolean;
  /**
   * Rebuilds the memory of the live process `rec` (created, in its session, its early
   * children forked); returns where syscall arguments go in it from then on (a page of
   * scratch: its stub's stack is gone). Its children forked after have the same page.
   */
  memory(rec: ProcessRecord, t: Tracee): bigint;
  /**
   * Gives the live process `rec`, its memory rebuilt, the pages its children inherit from it
   * at fork only (restore/cow.ts lendPages, and the areas it relays); returns what takes them
   * back once they are forked.
   */
  lend?(rec: ProcessRecord, t: Tracee): (() => void) | undefined;
  /**
   * Keeps a process the restore makes for a moment, none of the image's (`hostPid`, holding a
   * process group's id: holdGroup), out of the cgroups the tree is put into: it must not count
   * against their limits (pids.max), as the group's exited leader did not.
   */
  aside?(hostPid: number): void;
  /**
   * Called for each process as soon as its stub exists (in its session, before it forks any
   * child), with the process that forked it (undefined: ferry) and where syscall arguments go
   * in it: what children inherit at fork is set here (the audit session, restore/audit.ts).
   */
  born?(rec: ProcessRecord, t: Tracee, forker: ProcessRecord | undefined, put: (data: Buffer) => bigint): void;
  /**
   * The root, made by the caller instead of spawned: forked (forkRoot) from a stub of ferry's
   * that holds its memory already (a migration's staged memory, migrate/staging.ts), or that
   * stub itself, spawned and prepared as a root is (prepareStub) with the root's pid; undefined
   * (none, or that fork failed): spawned as usual.
   */
  root?(pid: number): Tracee | undefined;
}

/**
 * Creates every process of `tree` as a stub; on failure nothing is left. `adopted`: the root
 * already exists as a stub, seized and stopped by this thread (a container's init that the
 * runtime started); it is not ferry's child. With `builder`, each live process in tree order:
 * its children that inherit nothing are forked from it as a stub, then its memory is rebuilt
 * (`builder.memory`), then its children that inherit pages copy-on-write are forked from it.
 * `outside`: the groups led from outside the tree to join again, as outsideGroups found them
 * (the caller's check before anything was made: the search may read all of /proc); else
 * looked for here.
 */
export function createTree(tree: TreeRecord, stubPath: string, adopted?: number,
  files?: RestoreFiles, controllerPidfd?: number, builder?: TreeBuilder, outside?: ReadonlySet<number>): CreatedTree {
  const n = native();
  const created: CreatedTree = {
    stubs: new Map(), threads: new Map(),
    destroy: () => destroyTree(created, tree.root, adopted !== undefined),
  };
  const [rootRec, ...rest] = tree.processes;
  if (!rootRec || rootRec.pid !== tree.root) throw new FerryError('EIMAGE', 'image entry tree.json is invalid: the root must come first');
  try {
    let pid: number;
    const made = adopted === undefined ? builder?.root?.(rootRec.pid) : undefined;
    if (adopted !== undefined) {
      pid = adopted;
    } else if (made !== undefined) {
      pid = made.pid;
    } else {
      try {
        pid = n.spawnStub(stubPath, [rootRec.pid]);
      } catch (err) {
        throw spawnError(err, rootRec.pid);
      }
    }
    const root = made ?? new Tracee(pid, pid);
    created.stubs.set(rootRec.pid, root);
    if (made === undefined) prepareStub(root);
    // A session leader takes its controlling terminal before it forks: members only get one
    // by inheriting it.
    const lead = (t: Tracee, rec: ProcessRecord): void => {
      if (files) takeControllingTerminal(t, rec.pid, files, controllerPidfd);
    };
    if (rootRec.sid === rootRec.pid) {
      if (groupOf(root).sid !== rootRec.pid) root.syscall(SYS.setsid);
      lead(root, rootRec);
    }

    /** Where syscall arguments go in a process whose memory is rebuilt (its stub stack is gone). */
    const argsAt = new Map<number, bigint>();
    const put = (pid: number, t: Tracee) => (data: Buffer): bigint => {
      const at = argsAt.get(pid);
      if (at === undefined) return belowStack(t, data);
      t.writeMem(at, data);
      return at;
    };
    builder?.born?.(rootRec, root, undefined, put(rootRec.pid, root));
    // Groups whose leader had exited: each one's id holder is forked by its forker as soon as
    // that exists (groupHolders, holdGroup), the root included.
    const holders = groupHolders(tree);
    // And the foreground group no process is in of a terminal no process holds: its id holder
    // is forked by the session's leader, which makes it the foreground group (setGroups).
    const foregrounds = files ? emptyForegrounds(files, new Set(tree.processes.map((p) => p.pgid))) : [];
    for (const e of foregrounds) {
      const list = holders.get(e.leader);
      if (list) list.push(e.pgid);
      else holders.set(e.leader, [e.pgid]);
    }
    const held: HeldGroup[] = [];
    const hold = (rec: ProcessRecord, t: Tracee): void => {
      for (const pgid of holders.get(rec.pid) ?? []) held.push(holdGroup(created, rec, t, pgid, put(rec.pid, t), adopted === undefined, builder));
    };
    hold(rootRec, root);
    // Who forks each process: its parent, or a sibling holding a table it shares (below).
    // A session leader that forks, as a sibling, sharers of its tables in their parent's
    // session (image/sharing.ts setsidPlan) forks them before its own setsid(2), which waits
    // for the last of them: the sharers it still has to fork, by its pid. validateTree
    // refused a tree in whose order a forker would fork anything else before (checkSetsidOrder).
    const { forkers, beforeSetsid } = setsidPlan(tree.processes);
    const byPid = new Map(tree.processes.map((p) => [p.pid, p]));
    /** What a process does once it exists and has forked its sharers in the old session. */
    const settle = (rec: ProcessRecord, t: Tracee): void => {
      if (rec.sid === rec.pid) {
        t.syscall(SYS.setsid);
        lead(t, rec);
      }
      hold(rec, t);
    };
    const make = (rec: ProcessRecord): void => {
      const parent = created.stubs.get(rec.ppid);
      const via = forkers.get(rec.pid)!;
      const forker = created.stubs.get(via);
      if (!parent || !forker) throw new FerryError('EIMAGE', `image entry tree.json is invalid: the parent ${rec.ppid} of pid ${rec.pid} is not a live process listed before it`);
      // A forker that has not left for its own session yet forks only what must stay in the old one.
      const unsettled = beforeSetsid.get(via);
      if (unsettled !== undefined && !unsettled.has(rec.pid) && rec.sid !== rec.pid) {
        throw new FerryError('EIMAGE', `image entry tree.json is invalid: pid ${via} would fork ${rec.pid} before its own setsid, which must wait until it has forked ${[...unsettled].join(', ')} (processes that share its tables in its parent's session); restore an image as ferry wrote it, in the order it listed the processes`);
      }
      // One sharing a descriptor table or fs struct is forked sharing them (validate.ts checked
      // that the forker holds the tables the image names): by its parent, or by a sibling
      // (image/sharing.ts) with CLONE_PARENT, which makes it the sibling's parent's child.
      const flags = (rec.sharesFiles !== undefined ? CLONE_FILES : 0) | (rec.sharesFs !== undefined ? CLONE_FS : 0)
        | (via !== rec.ppid ? CLONE_PARENT : 0);
      const child = fork(forker, rec.pid, rec.ppid, put(via, forker), adopted === undefined, flags, parent);
      created.stubs.set(rec.pid, child);
      // A fork of a rebuilt process has its gadget area as its scratch, until its own.
      const inherited = argsAt.get(via);
      if (inherited) argsAt.set(rec.pid, inherited);
      builder?.born?.(rec, child, byPid.get(via), put(rec.pid, child));
      if (!beforeSetsid.has(rec.pid)) settle(rec, child);
      const waiting = beforeSetsid.get(via);
      if (waiting?.delete(rec.pid) === true && waiting.size === 0) {
        beforeSetsid.delete(via);
        settle(byPid.get(via)!, forker);
      }
    };
    if (!builder) {
      for (const rec of rest) make(rec);
    } else {
      const kids = new Map<number, ProcessRecord[]>();
      for (const rec of rest) {
        const list = kids.get(rec.ppid);
        if (list) list.push(rec);
        else kids.set(rec.ppid, [rec]);
      }
      for (const rec of tree.processes) {
        const t = created.stubs.get(rec.pid);
        if (!t) throw new FerryError('EIMAGE', `image entry tree.json is invalid: the parent ${rec.ppid} of pid ${rec.pid} is not a live process listed before it`);
        const mine = kids.get(rec.pid) ?? [];
        for (const k of mine) if (!builder.late(k)) make(k);
        if (rec.zombie === null) argsAt.set(rec.pid, builder.memory(rec, t));
        const giveBack = rec.zombie === null && mine.some((k) => builder.late(k)) ? builder.lend?.(rec, t) : undefined;
        if (giveBack) faultPointSync('lent');
        for (const k of mine) if (builder.late(k)) make(k);
        giveBack?.();
      }
    }
    if (beforeSetsid.size > 0) {
      throw new FerryError('EIMAGE', `image entry tree.json is invalid: pids ${[...beforeSetsid.keys()].join(', ')} never forked the processes sharing their tables that they fork before their setsid; restore an image as ferry wrote it`);
    }
    setGroups(created, tree, adopted !== undefined ? new Set() : outside ?? outsideGroups(tree), held, () => {
      for (const e of foregrounds) {
        const t = created.stubs.get(e.leader)!;
        setEmptyForeground(t, e, files!, put(e.leader, t), controllerPidfd);
      }
    });
    finishZombies(created, tree.processes.filter((p) => p.zombie !== null), put);
  } catch (err) {
    created.destroy();
    throw err;
  }
  return created;
}

/**
 * Makes a stub spawned by ferry (native spawnStub) ready to be a root, or to have one forked
 * from it (forkRoot): traced for restore, every signal blocked (children and threads inherit
 * the mask), SIGCHLD at its default (ignored dispositions survive execve: its zombie children
 * would be reaped at once), injection through its own `syscall`.
 */
export function prepareStub(t: Tracee): void {
  const n = native();
  n.setOptions(t.pid, RESTORE_TRACE_OPTIONS);
  n.setSigmask(t.pid, ALL_SIGNALS);
  useStubGadget(t, parseMaps(readProcText(t.pid, 'maps')));
  t.syscall(SYS.rt_sigaction, SIGCHLD, belowStack(t, Buffer.alloc(KSIGACTION_SIZE)), 0, 8);
}

/**
 * Forks the root of a restore, `pid`, from `from`, a stub of ferry's made ready by prepareStub
 * (a migration's staged memory): with CLONE_PARENT, so that it is ferry's child as a spawned
 * root is, and it inherits `from`'s memory copy-on-write. Seized and stopped, as fork() leaves
 * a child; dies with ferry (its parent-death signal, then PTRACE_O_EXITKILL).
 */
export function forkRoot(from: Tracee, pid: number): Tracee {
  try {
    const child = fork(from, pid, process.pid, (data) => belowStack(from, data), true, CLONE_PARENT);
    // Its parent-death signal (its stub code's, until it was seized) goes, as a spawned root
    // has none: ferry, its parent, exits right after the restore (restore/creds.ts isRoot).
    // Traced now with PTRACE_O_EXITKILL, it dies with ferry all the same until the let-go.
    child.syscall(SYS.prctl, PR_SET_PDEATHSIG, 0, 0, 0, 0);
    return child;
  } catch (err) {
    // A child made before the failure is no process of the tree yet: it goes now (it is
    // ferry's, which a receiver serving more migrations outlives), so that its pid is free.
    try {
      if (parseStat(readProcText(pid, 'stat')).ppid === process.pid) killChild(pid);
    } catch { /* none was made */ }
    throw spawnError(err, pid);
  }
}

/** SIGKILLs a stub that is ferry's child (a spawned one: traced, no other stop follows) and reaps it. */
export function killChild(pid: number): void {
  const n = native();
  try { n.tgkill(pid, pid, SIGKILL); } catch { /* gone */ }
  try { n.waitpid(pid); } catch { /* already collected */ }
}

function spawnError(err: unknown, pid: number): FerryError {
  if (err instanceof FerryError) return err;
  if (errnoCode(err) === 'EEXIST') {
    return new FerryError('EPIDINUSE', `pid ${pid} was taken by another process meanwhile: stop it, or restore elsewhere`, { cause: err });
  }
  return new FerryError('ESPAWN', `cannot create a process with pid ${pid}: ${describeCause(err)}`, { cause: err });
}

/**
 * Writes syscall arguments into a stub's stack, a page below its stack pointer (the stub
 * never uses its stack; the kernel reads the arguments during the call), and returns where.
 */
function belowStack(t: Tracee, data: Buffer): bigint {
  const at = (decodeRegs(native().getRegs(t.tid)).rsp - 4096n) & ~15n;
  t.writeMem(at, data);
  return at;
}

/**
 * The parent stub (`ppid`, as the image and the child's pid namespace number it: restore keeps
 * the pids) forks a child stub with `pid` and clone(2) `flags` (CLONE_FILES, CLONE_FS); the
 * child is seized, stopped and returned. With CLONE_PARENT, `parent` is a sibling of the
 * child, and `home` its parent, whose child it becomes. `hostIds`: the tree is in ferry's own
 * pid namespace, so clone3's answer is ferry's id of the child too.
 */
function fork(parent: Tracee, pid: number, ppid: number, put: (data: Buffer) => bigint, hostIds: boolean, flags = 0, home = parent,
  exitSignal = SIGCHLD): Tracee {
  const n = native();
  // clone_args with the set_tid array right behind it.
  const args = Buffer.alloc(CLONE_ARGS_SIZE + 8);
  args.writeBigUInt64LE(BigInt(flags), 0);
  // exit_signal; with CLONE_PARENT clone3 takes none (EINVAL): the child gets its forker's,
  // SIGCHLD, as its sibling's own.
  args.writeBigUInt64LE((flags & CLONE_PARENT) !== 0 ? 0n : BigInt(exitSignal), 32);
  args.writeBigUInt64LE(1n, 72); // set_tid_size
  args.writeBigUInt64LE(BigInt(pid), CLONE_ARGS_SIZE);
  const argsAt = put(args);
  args.writeBigUInt64LE(argsAt + BigInt(CLONE_ARGS_SIZE), 64); // set_tid
  parent.writeMem(argsAt, args);
  const before = hostIds ? undefined : new Set(children(home));
  // The child runs on its own until it is seized: it asks to die with its parent, and checks
  // that its parent is the one in r12, its pid as the child's namespace shows it (stub.c).
  const regs = decodeRegs(n.getRegs(parent.tid));
  regs.r12 = BigInt(ppid);
  n.setRegs(parent.tid, encodeRegs(regs));
  // Through the `syscall` whose child path does that: the stub's own, or the gadget page's
  // fork entry in a rebuilt parent (address-space.ts GADGET_CODE).
  const gadget = parent.gadget;
  if (parent.readMem(gadget, GADGET_CODE.length).equals(GADGET_CODE)) parent.gadget = gadget + BigInt(FORK_GADGET);
  let r: bigint;
  try {
    r = parent.trySyscall(SYS.clone3, argsAt, CLONE_ARGS_SIZE);
  } finally {
    parent.gadget = gadget;
  }
  if (r < 0n) {
    throw new FerryError(r === -17n ? 'EPIDINUSE' : 'ESPAWN', r === -17n
      ? `pid ${pid} is in use by another process: stop it, or restore elsewhere`
      : `cannot create pid ${pid} (child of ${parent.pid}): clone3 failed with errno ${-r}`
        + (r === -11n ? ' (EAGAIN: a pids.max of its cgroups, or the host\'s threads-max, is reached: raise it, or restore elsewhere)' : ''));
  }
  // clone3 returned `pid` as the parent's namespace sees it; ptrace needs ferry's id of it,
  // which in another pid namespace (a container's) is the one new child of `home`.
  const fresh = before ? children(home).filter((c) => !before.has(c)) : [Number(r)];
  if (fresh.length !== 1) throw new FerryError('ESPAWN', `pid ${pid} (child of ${parent.pid}) cannot be found after its creation`);
  const host = fresh[0]!;
  // Until it is seized the child runs the stub's pause() loop with every signal blocked, set
  // to die with its parent (which dies with ferry).
  faultPointSync('forked');
  n.seize(host, 0);
  n.interrupt(host);
  const st = n.waitpid(host);
  if (!st?.stopped) throw new FerryError('ESPAWN', `pid ${pid} (child of ${parent.pid}) died while being created`);
  n.setOptions(host, RESTORE_TRACE_OPTIONS);
  const child = new Tracee(host, host);
  child.gadget = parent.gadget;
  // Traced with PTRACE_O_EXITKILL now. Its parent-death signal (SIGKILL, with its parent
  // stub) stays until its credentials are restored, which set the image's in the same batch
  // (restore/creds.ts), none included: it can only fire when the parent stub dies, which is
  // then being killed with the whole unfinished tree.
  return child;
}

/** Children of a stub, by ferry's ids. */
function children(t: Tracee): number[] {
  return parseChildren(readProcText(t.pid, `task/${t.tid}/children`));
}

/** Group and session of a created process, as its own namespace sees them. */
function groupOf(t: Tracee): { pgid: number; sid: number } {
  const st = parseStatus(readProcText(t.pid, 'status'));
  return { pgid: st.nsPgid.at(-1) ?? 0, sid: st.nsSid.at(-1) ?? 0 };
}

/**
 * The session a process group of this host is in (any member's; a zombie still is one), or
 * undefined when no process is in it.
 */
function sessionOfGroup(pgid: number): number | undefined {
  const of = (pid: number): number | undefined => {
    try {
      const st = parseStat(readProcText(pid, 'stat'));
      return st.pgrp === pgid ? st.session : undefined;
    } catch {
      return undefined; // gone meanwhile
    }
  };
  const leader = of(pgid); // usually its leader is alive: one read
  if (leader !== undefined) return leader;
  for (const d of readdirSync('/proc')) {
    const found = /^\d+$/.test(d) ? of(Number(d)) : undefined;
    if (found !== undefined) return found;
  }
  return undefined;
}

/**
 * Process groups of the tree led from outside it (setpgid(2): a member left in a shell's job
 * when its parent made a group of its own; the root's own job), which the restore joins again:
 * the groups that exist in ferry's session, the one the restored root inherits (the image's
 * ids are the host's: not for a container's tree, whose root ferry does not make, where such
 * a group is recorded as 0). Any other such group, but the root's own, makes the restore fail
 * here, before anything is made; the root's own falls back to ferry's caller's group (the
 * restored root stays in the group it was made in), as a shell job comes back in the shell
 * that restores it.
 */
export function outsideGroups(tree: TreeRecord): Set<number> {
  const inTree = new Set(tree.processes.map((p) => p.pid));
  const rootRec = tree.processes[0]!;
  const mine = parseStat(readProcText(process.pid, 'stat')).session;
  const joined = new Set<number>();
  const checked = new Set(leaderlessGroups(tree).keys()); // made again, not joined
  for (const p of tree.processes) {
    if (p.pgid === 0 || inTree.has(p.pgid) || checked.has(p.pgid)) continue;
    checked.add(p.pgid);
    const session = sessionOfGroup(p.pgid);
    if (session === mine) {
      joined.add(p.pgid);
    } else if (p.pgid !== rootRec.pgid) {
      throw new FerryError('EGROUP', `pid ${p.pid} was in process group ${p.pgid}, led from outside the tree, and `
        + (session === undefined ? 'no process is in that group now' : `that group is now in session ${session}, not in ferry's ${mine}`)
        + `: run the restore from a process of the session the group is in (the shell that started the job)`, { pid: p.pid });
    }
  }
  return joined;
}

/**
 * Process groups of a session the tree leads whose leader is not in the tree, by group id,
 * each with a member of it (the first listed: a live one if any), which makes it again when the
 * session's leader is not a live process (groupHolders). The leader
 * had exited (dump/tree.ts checkGroups refuses one alive outside the tree): the group lived
 * on in its members, its id a pid no process had and none could take. Such a session is made
 * anew by the restore, so the group is made anew in it too (setGroups).
 */
export function leaderlessGroups(tree: TreeRecord): Map<number, ProcessRecord> {
  const inTree = new Set(tree.processes.map((p) => p.pid));
  const out = new Map<number, ProcessRecord>();
  for (const p of tree.processes) {
    if (p.pgid === 0 || inTree.has(p.pgid) || !inTree.has(p.sid)) continue;
    const first = out.get(p.pgid);
    if (first === undefined || (first.zombie !== null && p.zombie === null)) out.set(p.pgid, p);
  }
  return out;
}

/** A process holding the id of a group whose leader had exited (holdGroup), until setGroups ends it. */
interface HeldGroup {
  pgid: number;
  /** Its parent, which reaps it: the group's session leader, or a member. */
  by: ProcessRecord;
  t: Tracee;
}

/**
 * Who forks the process holding the id of each group whose leader had exited (leaderlessGroups),
 * by that forker's pid: the group's session leader when it is a live process, else the member
 * leaderlessGroups chose. The leader comes before every process of its session in tree order,
 * so its holder exists before any member does: in a cgroup whose pids.max is the tree's size
 * (the leader had exited) a member is never the one that finds it full.
 */
function groupHolders(tree: TreeRecord): Map<number, number[]> {
  const listed = new Map(tree.processes.map((p) => [p.pid, p]));
  const out = new Map<number, number[]>();
  for (const [pgid, member] of leaderlessGroups(tree)) {
    const leader = listed.get(member.sid);
    const by = leader !== undefined && leader.zombie === null ? leader.pid : member.pid;
    const list = out.get(by);
    if (list) list.push(pgid);
    else out.set(by, [pgid]);
  }
  return out;
}

/**
 * Makes process group `pgid`, whose leader had exited, around a process with its id: `rec`
 * (its stub `parent`, just made, in the group's session) forks it (clone3 set_tid, no exit
 * signal, in `rec`'s session and so the group's) and it calls setpgid(0, 0) (setpgid(2) makes
 * only the caller's own group, and members join only an existing one). Forked before `rec` is
 * put into its cgroups and its memory rebuilt, and set aside from the tree's cgroups
 * (`builder.aside`) in case `rec` was forked into one already: it is none of the image's
 * processes. Until setGroups ends it, it is one of `created`'s stubs (keyed by its id, which no
 * process of the tree has), so a failure kills and collects it with the tree.
 */
function holdGroup(created: CreatedTree, rec: ProcessRecord, parent: Tracee, pgid: number, put: (data: Buffer) => bigint,
  hostIds: boolean, builder: TreeBuilder | undefined): HeldGroup {
  const t = fork(parent, pgid, rec.pid, put, hostIds, 0, parent, 0);
  created.stubs.set(pgid, t);
  builder?.aside?.(t.pid);
  try {
    t.syscall(SYS.setpgid, 0, 0);
  } catch (err) {
    throw new FerryError('ESTATE', `cannot make process group ${pgid} (whose leader had exited) again: ${describeCause(err)}`, { cause: err, pid: rec.pid });
  }
  return { pgid, by: rec, t };
}

/**
 * Group leaders first, then members, so every group exists when it is joined; `outside`: the
 * groups led from outside the tree to join again (outsideGroups), else the root's group.
 *
 * A group whose leader had exited (leaderlessGroups) needs a process with its id to exist
 * when it is made and joined: `held` (holdGroup made them as the tree was made). Once the
 * members joined, each exits and its parent reaps it (wait4, __WALL), leaving the group to its
 * members as the original leader did. `beforeEnd` runs before they exit: a group no member is
 * in, a terminal's foreground group (files/tty.ts emptyForegrounds), is set then, and stays
 * the terminal's when it empties, as it was.
 */
function setGroups(created: CreatedTree, tree: TreeRecord, outside: ReadonlySet<number>, held: readonly HeldGroup[], beforeEnd?: () => void): void {
  const n = native();
  const inTree = new Set(tree.processes.map((p) => p.pid));
  const root = created.stubs.get(tree.root)!;
  const rootGroup = groupOf(root).pgid;
  const orphans = new Set(held.map((h) => h.pgid));
  const target = (p: ProcessRecord): number => (inTree.has(p.pgid) || outside.has(p.pgid) || orphans.has(p.pgid) ? p.pgid : rootGroup);
  const leaders = tree.processes.filter((p) => p.pgid === p.pid && p.sid !== p.pid);
  const members = tree.processes.filter((p) => p.pgid !== p.pid);
  const join = (t: Tracee, pid: number, pgid: number): void => {
    try {
      t.syscall(SYS.setpgid, 0, pgid);
    } catch (err) {
      throw new FerryError('ESTATE', `cannot put pid ${pid} into process group ${pgid || pid}: ${describeCause(err)}`, { cause: err, pid });
    }
  };
  for (const p of leaders) if (groupOf(created.stubs.get(p.pid)!).pgid !== p.pid) join(created.stubs.get(p.pid)!, p.pid, 0);
  for (const p of members) {
    const t = created.stubs.get(p.pid)!;
    const want = target(p);
    if (groupOf(t).pgid !== want) join(t, p.pid, want);
  }
  if (held.length > 0) faultPointSync('grouped');
  beforeEnd?.();
  for (const { pgid, by, t } of held) {
    // exit_group(0) at the gadget, untraced (a traced child's exit goes to its tracer first).
    const regs = decodeRegs(n.getRegs(t.tid));
    regs.rip = t.gadget;
    regs.rax = BigInt(SYS.exit_group);
    regs.orig_rax = -1n;
    regs.rdi = 0n;
    n.setRegs(t.tid, encodeRegs(regs));
    created.stubs.delete(pgid);
    n.detach(t.tid, 0);
    t.close();
    waitZombie(t.pid, `the process holding id ${pgid} for process group ${pgid}`);
    const r = created.stubs.get(by.pid)!.trySyscall(SYS.wait4, pgid, 0, WNOHANG | WALL, 0);
    if (r !== BigInt(pgid)) {
      throw new FerryError('ESPAWN', `the process holding id ${pgid} for process group ${pgid} was not reaped by pid ${by.pid} (wait4: ${r}): `
        + 'nothing was restored; retry, and report it if it persists', { pid: by.pid });
    }
  }
}

/**
 * Makes every zombie stub exit with its recorded wait status, then takes the SIGCHLD it sent
 * back out of its parent's queue (the parent had it delivered before the checkpoint).
 */
function finishZombies(created: CreatedTree, zombies: readonly ProcessRecord[],
  put: (pid: number, t: Tracee) => (data: Buffer) => bigint): void {
  const n = native();
  for (const z of zombies) {
    const t = created.stubs.get(z.pid)!;
    const status = z.zombie!.status;
    // Its name, which it keeps as a zombie (the stub's is ferry-stub's).
    const comm = z.zombie!.comm;
    if (comm !== undefined) t.syscall(SYS.prctl, PR_SET_NAME, put(z.pid, t)(Buffer.from(`${comm}\0`)), 0, 0, 0);
    const sig = status & 0x7f;
    if (sig === 0) {
      // Exited: resume it at the gadget as exit_group(code).
      const regs = decodeRegs(n.getRegs(t.tid));
      regs.rip = t.gadget;
      regs.rax = BigInt(SYS.exit_group);
      regs.orig_rax = -1n;
      regs.rdi = BigInt((status >> 8) & 0xff);
      n.setRegs(t.tid, encodeRegs(regs));
      created.stubs.delete(z.pid);
      n.detach(t.tid, 0);
    } else {
      // Killed: default action for the signal, no core file, unblocked, then sent.
      const at = put(z.pid, t)(Buffer.alloc(KSIGACTION_SIZE + 16)); // SIG_DFL, then rlimit {0, 0}
      if (sig !== SIGKILL && sig !== SIGSTOP) t.syscall(SYS.rt_sigaction, sig, at, 0, 8);
      t.syscall(SYS.prlimit64, 0, RLIMIT_CORE, at + BigInt(KSIGACTION_SIZE), 0);
      n.setSigmask(t.tid, 0n);
      created.stubs.delete(z.pid);
      n.detach(t.tid, 0);
      n.tgkill(t.pid, t.pid, sig);
    }
    t.close();
    waitZombie(t.pid);
  }
  const parents = new Set(zombies.map((z) => z.ppid));
  for (const ppid of parents) {
    const p = created.stubs.get(ppid)!;
    const args = Buffer.alloc(24); // the mask, then a zero timespec
    args.writeBigUInt64LE(1n << BigInt(SIGCHLD - 1));
    const at = put(ppid, p)(args);
    p.trySyscall(SYS.rt_sigtimedwait, at, 0, at + 8n, 8); // -EAGAIN when nothing was queued
  }
}

/** Waits (bounded) until `pid` is a zombie; `what` it is, for the error. */
function waitZombie(pid: number, what = `zombie ${pid}`): void {
  for (const end = Date.now() + 2000; Date.now() < end;) {
    if (parseStat(readProcText(pid, 'stat')).state === 'Z') return;
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
  }
  throw new FerryError('ESPAWN', `${what} did not exit within 2 s: nothing was restored; retry, and report it if it persists`, { pid });
}

/**
 * Kills every created process and collects them; the root is ferry's child (unless adopted:
 * then ferry is only its tracer), the rest its.
 */
function destroyTree(created: CreatedTree, root: number, adopted: boolean): void {
  const n = native();
  const stubs = [...created.stubs.values()];
  for (const t of stubs) {
    t.close();
    try { n.tgkill(t.pid, t.pid, SIGKILL); } catch { /* gone */ }
  }
  // Children first: a pid namespace's init, dying, waits until every other process of its
  // namespace is reaped, and those ferry traces are reaped only when it collects them.
  for (const [key, t] of [...created.stubs.entries()].reverse()) {
    // Each wait on its own: one thread already gone must not leave the others (and so the
    // leader, reported only once its threads are collected) uncollected.
    for (const th of created.threads.get(key) ?? []) {
      th.close();
      try { n.waitExit(th.tid); } catch { /* already collected */ }
    }
    try {
      if (t === created.stubs.get(root) && !adopted) n.waitpid(t.pid);
      else n.waitExit(t.pid);
    } catch { /* already collected */ }
  }
  created.stubs.clear();
  created.threads.clear();
}
