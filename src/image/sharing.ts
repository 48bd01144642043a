/**
 * Processes sharing a descriptor table or an fs struct, as the image records them
 * (docs/image-format.md, tree.json `sharesFiles`, `sharesFs`): which process restore forks
 * each one from so that it shares them again. Here, where both dump/ (which refuses what
 * restore could not fork) and restore/ reach it.
 *
 * clone(2) shares the caller's tables with the child (CLONE_FILES, CLONE_FS), and with
 * CLONE_PARENT makes the child the caller's sibling: its parent is the caller's parent. So a
 * process is forked by its parent when the parent holds every table it shares (the usual
 * shape: a child made with CLONE_FILES); otherwise by a sibling listed before it that holds
 * them (two children made with CLONE_FILES, after which their parent unshare(2)d its own
 * table), with CLONE_PARENT. A forked process starts in its forker's session, and setsid(2)
 * is the only way out of it, so the sibling must be in the process's session, or the process
 * must lead its own, or the sibling leads its own while the process is in their parent's:
 * restore then forks the process from the sibling before the sibling's setsid (which it
 * defers until its last such sharer is forked: restore/tree.ts), so the sibling must have been
 * forked by the parent itself. The sibling is looked up, not searched for, so that a forged
 * tree of millions of processes costs no more than a true one.
 */
import type { ProcessRecord } from './records.js';

/**
 * Kinds a thread's own descriptor table may hold alone (no process of the tree holds them):
 * their modules dump one descriptor by itself (its fdinfo, a copy taken with pidfd_getfd(2)),
 * and restore installs them with nothing more to do in the holder (no `installed` hook). The
 * others look for their peers, targets or holders through the processes' tables, or set
 * state through a process holding them.
 */
export const THREAD_ALONE_KINDS: ReadonlySet<string> = new Set(['reg', 'ghost', 'pipe', 'fifo', 'chr', 'eventfd', 'memfd', 'timerfd', 'signalfd']);

/** The fields of a process record naming a table it shares. */
export const SHARED_TABLES = ['sharesFiles', 'sharesFs'] as const;

/** Whether `q` holds the table that `first` holds as its own, in the sense of `field`. */
const holds = (q: ProcessRecord, field: (typeof SHARED_TABLES)[number], first: number): boolean => q.pid === first || q[field] === first;

/**
 * Finds who forks each process of a tree fed in order (parents first), in constant time per
 * process whatever the image claims: its parent when the parent holds every table it shares,
 * else the first sibling listed before it holding the first of those tables, if that one
 * holds them all and lets it keep its session.
 */
export class Forkers {
  private readonly byPid = new Map<number, ProcessRecord>();
  /** Who forks each process added (its pid, or undefined: none could). */
  private readonly via = new Map<number, number | undefined>();
  /** The first process listed with each parent and table: `ppid field table`. */
  private readonly holders = new Map<string, ProcessRecord>();

  /** The process `p` is forked from (undefined: none can fork it so), then `p` joins the listed ones. */
  add(p: ProcessRecord): ProcessRecord | undefined {
    const via = this.forker(p);
    this.byPid.set(p.pid, p);
    this.via.set(p.pid, via?.pid);
    for (const f of SHARED_TABLES) {
      const key = `${p.ppid} ${f} ${p[f] ?? p.pid}`;
      if (p.zombie === null && !this.holders.has(key)) this.holders.set(key, p);
    }
    return via;
  }

  private forker(p: ProcessRecord): ProcessRecord | undefined {
    const parent = this.byPid.get(p.ppid);
    const shared = SHARED_TABLES.filter((f) => p[f] !== undefined);
    const holdsAll = (q: ProcessRecord): boolean => q.zombie === null && shared.every((f) => holds(q, f, p[f]!));
    if (parent === undefined || shared.length === 0 || holdsAll(parent)) return parent;
    const sibling = this.holders.get(`${p.ppid} ${shared[0]!} ${p[shared[0]!]!}`);
    if (sibling === undefined || !holdsAll(sibling)) return undefined;
    return sibling.sid === p.sid || p.sid === p.pid || Forkers.beforeSetsid(sibling, p, parent, this.via.get(sibling.pid)) ? sibling : undefined;
  }

  /**
   * Whether `p` can be forked by `sibling` before the sibling leaves for a session of its own:
   * the sibling leads one, was forked by their parent (so it was in the parent's session until
   * its setsid), and `p` is in the parent's session.
   */
  static beforeSetsid(sibling: ProcessRecord, p: ProcessRecord, parent: ProcessRecord, siblingVia: number | undefined): boolean {
    return sibling.sid === sibling.pid && siblingVia === parent.pid && p.sid === parent.sid && p.sid !== sibling.sid;
  }
}

/**
 * The pids of the processes forked by a sibling (Forkers) and of those siblings, in a tree
 * whose records are in order (parents first): neither may inherit pages copy-on-write from
 * its parent (image/cow.ts), since such a child is forked only once its parent's memory is
 * back, and these are forked from stubs before that.
 */
export function forkedBySiblings(processes: readonly ProcessRecord[]): Set<number> {
  const out = new Set<number>();
  const forkers = new Forkers();
  for (const p of processes) {
    const via = forkers.add(p);
    if (via !== undefined && via.pid !== p.ppid) {
      out.add(p.pid);
      out.add(via.pid);
    }
  }
  return out;
}

/**
 * Who forks each process of a tree whose records are in order (parents first), and what each
 * sibling leading a session of its own forks before its setsid(2): `forkers`, by pid, the pid
 * of the process each one is forked from (Forkers' choice, else its parent); `beforeSetsid`,
 * by the pid of such a sibling, the sharers of its tables in their parent's session it forks
 * first (Forkers.beforeSetsid). Restore defers the sibling's setsid until the last of them
 * (restore/tree.ts); validate.ts refuses a tree in whose order that cannot be.
 */
export function setsidPlan(processes: readonly ProcessRecord[]): { forkers: Map<number, number>; beforeSetsid: Map<number, Set<number>> } {
  const forkers = new Map<number, number>();
  const listed = new Forkers();
  for (const p of processes) forkers.set(p.pid, listed.add(p)?.pid ?? p.ppid);
  const byPid = new Map(processes.map((p) => [p.pid, p]));
  const beforeSetsid = new Map<number, Set<number>>();
  for (const p of processes.slice(1)) {
    const via = forkers.get(p.pid)!;
    const sibling = byPid.get(via);
    const parent = byPid.get(p.ppid);
    if (via === p.ppid || sibling === undefined || parent === undefined || p.sid === p.pid
      || !Forkers.beforeSetsid(sibling, p, parent, forkers.get(sibling.pid))) continue;
    const mine = beforeSetsid.get(via);
    if (mine) mine.add(p.pid);
    else beforeSetsid.set(via, new Set([p.pid]));
  }
  return { forkers, beforeSetsid };
}

/**
 * What stops restore from forking `processes` in their order, or undefined: a sibling that
 * leads a session of its own forks the sharers of its tables that stay in their parent's
 * session before its setsid(2), which waits for the last of them (setsidPlan); until then it
 * can fork nothing that belongs in its new session. Restore forks each process's children in
 * the order listed, parent after parent in tree order (restore/tree.ts createTree), so a tree
 * listing such a process before the last of those sharers cannot be made: restore refuses an
 * image with one before anything is made (restore/validate.ts). A checkpoint never writes one:
 * such a process is in a session its parent is not in, which dump/tree.ts checkGroups refuses
 * (the tree left running). (A child inheriting pages copy-on-write is
 * forked after its siblings, but neither such a sibling nor its sharers may inherit any:
 * validateSharing.)
 */
export function setsidOrderProblem(processes: readonly ProcessRecord[]): string | undefined {
  const { forkers, beforeSetsid } = setsidPlan(processes);
  if (beforeSetsid.size === 0) return undefined;
  const kids = new Map<number, ProcessRecord[]>();
  for (const p of processes.slice(1)) {
    const list = kids.get(p.ppid);
    if (list) list.push(p);
    else kids.set(p.ppid, [p]);
  }
  for (const parent of processes) {
    for (const p of kids.get(parent.pid) ?? []) {
      const via = forkers.get(p.pid)!;
      const waiting = beforeSetsid.get(via);
      if (waiting === undefined || p.sid === p.pid) continue;
      if (waiting.delete(p.pid)) {
        if (waiting.size === 0) beforeSetsid.delete(via); // its setsid: it forks anything from here
        continue;
      }
      return `pid ${via} would fork ${p.pid} (of session ${p.sid}) before its own setsid, which waits until it has forked `
        + `${[...waiting].slice(0, 8).join(', ')} (sharing its tables in their parent's session)`;
    }
  }
  return undefined;
}
