/**
 * Pages a process inherits copy-on-write from its parent (src/image/cow.ts): which processes
 * restore forks from their rebuilt parent, which of their areas they keep from it, and the
 * checks an image's `cow` runs pass before anything is made.
 *
 * A child with `cow` runs is forked from its parent once the parent's memory is back
 * (restore/tree.ts), so fork(2) gives it the parent's pages shared, as the original had them.
 * Its areas with `cow` runs are kept as fork() made them; everything else the parent had is
 * unmapped (address-space.ts, clearStub). In a kept area, the pages the parent has and the
 * child had not (it dropped them, MADV_DONTNEED) are dropped again; the child's own stored
 * pages are written over the inherited ones, which gives it its own copy of those only.
 *
 * Pages descendants lend through a process (image/cow.ts `lent`: its children's, or with
 * `lentThrough` those of processes further down) are written into its same area right before
 * its children are forked. Where it maps nothing at all any more (it unmapped the area after
 * forking them), it holds a temporary area there, the lenders' mapping, only while its
 * children are forked (CowPlan.temporary, lendPages). Each process between it and the ones
 * that inherit the area further down (lent pages, or its own: a grandchild whose parent
 * unmapped the area) maps nothing there: it is forked from its parent too,
 * keeps the area fork() gave it (CowPlan.relayed) only until it has forked its own children,
 * and unmaps it then. Every layout after is exactly the process's own.
 */
import { MADV_GUARD_INSTALL, MADV_GUARD_REMOVE, PAGE_SIZE, SYS } from '../arch/x86-64.js';
import { FerryError } from '../errors.js';
import type { ChunkSource } from '../image/chunks.js';
import { inheritable, lendableUnmapped, MAX_LENT_THROUGH } from '../image/cow.js';
import type { TaskRecord, TreeRecord, VmaRecord } from '../image/records.js';
import { forkedBySiblings } from '../image/sharing.js';
import type { Tracee } from '../task/tracee.js';

const MADV_DONTNEED = 4;

/** Whether an area of a child has pages from its parent's at fork: inherited, or lent to it. */
const fromParent = (v: VmaRecord): boolean => (v.cow?.length ?? 0) > 0 || (v.lent?.length ?? 0) > 0;

/** Whether a task has pages to inherit from its parent (its own lent ones too). */
export function inherits(task: TaskRecord): boolean {
  return task.vmas.some(fromParent);
}

/** The child's areas kept from its parent at fork: those with pages to inherit. */
export function keptAreas(task: TaskRecord): VmaRecord[] {
  return task.vmas.filter(fromParent);
}

/** A lending area: the process and its area, as the image lists them. */
interface Lending {
  task: TaskRecord;
  index: number;
  v: VmaRecord;
}

/**
 * What restore does for pages inherited copy-on-write, planned once from the whole tree by
 * checkInherited (which refused any image it could not give): which processes are forked from
 * their rebuilt parent, what each holds while it forks its children, and how each looks to
 * them at fork.
 */
export interface CowPlan {
  /** Whether the live process `pid` is forked from its parent once the parent's memory is back. */
  late(pid: number): boolean;
  /**
   * The process `pid` as its children find it at fork: its areas with the pages its
   * descendants lend through it counted as its own (`cow`), for what they inherit and drop,
   * the temporary areas it holds for them, and the areas it relays, in address order.
   */
  atFork(pid: number): TaskRecord;
  /**
   * The temporary areas `pid` maps while its children are forked (holdTemporary), by start:
   * one for each area its descendants lend pages through it that it does not map itself,
   * made as the first lender's (tree order) mapping, storing nothing (image/cow.ts).
   */
  temporary(pid: number): VmaRecord[];
  /**
   * The areas `pid` keeps from its parent at fork only to pass them on to its children (it
   * maps nothing there itself: image/cow.ts), unmapped once they are forked.
   */
  relayed(pid: number): VmaRecord[];
  /** The areas lending pages through `pid`, with their processes, in tree order. */
  lentThrough(pid: number): ReadonlyArray<Readonly<Lending>>;
}

/** [start, end) of an area as numbers of bytes. */
const range = (v: VmaRecord): readonly [bigint, bigint] => [BigInt(v.start), BigInt(v.end)];
const byStart = (a: VmaRecord, b: VmaRecord): number => (BigInt(a.start) < BigInt(b.start) ? -1 : BigInt(a.start) > BigInt(b.start) ? 1 : 0);

/**
 * Refuses an image whose `cow` runs name what restore cannot give, and plans the rest
 * (CowPlan). A process inherits an area from its parent's same area, or, where the parent
 * maps nothing over it and nothing is lent through it there, from the nearest ancestor that
 * maps it or holds it for lenders, each process between relaying it (image/cow.ts). Refused:
 * a process whose parent (or an ancestor it reaches so) is not a live process of the image
 * listed before it, a relay forked by or forking a sibling (image/sharing.ts), an area the
 * ancestor has not as the same private mapping (`inheritable`), a page it neither stores nor
 * inherits itself (restore would hand over whatever fork() gave there), pages lent through an
 * ancestor the area does not come from, two lenders of one page, and areas one process would
 * hold at once over one another. One line naming the pid and area; before any process is
 * created.
 */
export function checkInherited(tree: TreeRecord, tasks: readonly TaskRecord[]): CowPlan {
  const ppid = new Map(tree.processes.map((p) => [p.pid, p.ppid]));
  const bySibling = forkedBySiblings(tree.processes);
  const refuse = (pid: number, what: string): never => {
    throw new FerryError('EIMAGE', `image: ${what}: refused (an edited image)`, { pid });
  };
  // Which process each lending area lends through: its parent, or `lentThrough` generations up.
  const lending = new Map<number, Map<string, Lending[]>>();
  for (const task of tasks) {
    for (const [index, v] of task.vmas.entries()) {
      if ((v.lent?.length ?? 0) === 0) continue;
      let holder = ppid.get(task.pid);
      for (let up = v.lentThrough ?? 1; up > 1 && holder !== undefined; up--) holder = ppid.get(holder);
      if (holder === undefined) {
        refuse(task.pid, `pid ${task.pid} vmas[${index}] lends pages (lent) through an ancestor ${v.lentThrough ?? 1} generations up, which tree.json has not`);
      }
      let areas = lending.get(holder!);
      if (!areas) lending.set(holder!, (areas = new Map()));
      const list = areas.get(v.start);
      if (list) list.push({ task, index, v });
      else areas.set(v.start, [{ task, index, v }]);
    }
  }
  // Two processes lending one page through one area: it can hold only one of them.
  for (const [p, areas] of lending) {
    for (const [start, list] of areas) {
      const sorted = list.flatMap((l) => l.v.lent!).sort((a, b) => a[0] - b[0]);
      for (let i = 1; i < sorted.length; i++) {
        if (sorted[i]![0] < sorted[i - 1]![0] + sorted[i - 1]![1]) refuse(p, `two descendants of pid ${p} lend the same pages of its area at ${start} (lent)`);
      }
    }
  }
  const seen = new Map<number, TaskRecord>();
  /** The temporary areas of each holder (CowPlan.temporary), checked once: none over its own or another. */
  const temporaries = new Map<number, Map<string, VmaRecord>>();
  const temporaryOf = (holder: TaskRecord): Map<string, VmaRecord> => {
    let found = temporaries.get(holder.pid);
    if (found) return found;
    found = new Map();
    const own = new Set(holder.vmas.map((v) => v.start));
    for (const [start, list] of lending.get(holder.pid) ?? []) {
      if (own.has(start)) continue;
      for (const { task, index, v } of list) {
        // A plain private anonymous area (lendableUnmapped) over which the holder maps nothing.
        const [s, e] = range(v);
        if (!lendableUnmapped(v) || holder.vmas.some((a) => BigInt(a.start) < e && s < BigInt(a.end))) {
          refuse(task.pid, `pid ${task.pid} vmas[${index}] (${v.start}-${v.end}) lends pages (lent) through an area its ${(v.lentThrough ?? 1) > 1 ? 'ancestor' : 'parent'} `
            + `${holder.pid} does not map, which it cannot hold for it (it maps something over part of it, or the area is no plain private anonymous one)`);
        }
      }
      const { cow: _cow, lent: _lent, lentThrough: _through, ...mapping } = list[0]!.v;
      found.set(start, { ...mapping, runs: [], pagesOffset: 0 });
    }
    const sorted = [...found.values()].sort(byStart);
    for (let i = 1; i < sorted.length; i++) {
      if (BigInt(sorted[i]!.start) < BigInt(sorted[i - 1]!.end)) {
        refuse(holder.pid, `descendants of pid ${holder.pid} lend pages through areas at ${sorted[i - 1]!.start} and ${sorted[i]!.start} `
          + 'that overlap, which it does not map');
      }
    }
    temporaries.set(holder.pid, found);
    return found;
  };
  /** Each process's area starts, and whether an area of it overlaps a range (binary search), made once. */
  const layouts = new Map<number, { starts: Set<string>; over: (r: readonly [bigint, bigint]) => boolean }>();
  const layoutOf = (t: TaskRecord): { starts: Set<string>; over: (r: readonly [bigint, bigint]) => boolean } => {
    let found = layouts.get(t.pid);
    if (found) return found;
    // By start, with the furthest end so far (an edited image's areas may overlap each other):
    // some area overlaps [s, e) when one starting below e ends above s.
    const sorted = t.vmas.map(range).sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    const furthest: bigint[] = [];
    for (const [i, [, end]] of sorted.entries()) furthest.push(i > 0 && furthest[i - 1]! > end ? furthest[i - 1]! : end);
    found = {
      starts: new Set(t.vmas.map((v) => v.start)),
      over: ([s, e]) => {
        let lo = 0;
        let hi = sorted.length; // the first area starting at e or above
        while (lo < hi) {
          const mid = (lo + hi) >> 1;
          if (sorted[mid]![0] < e) lo = mid + 1;
          else hi = mid;
        }
        return lo > 0 && furthest[lo - 1]! > s;
      },
    };
    layouts.set(t.pid, found);
    return found;
  };
  /** The areas each relay passes on, by start: the process its chain starts at (CowPlan.relayed). */
  const relays = new Map<number, Map<string, number>>();
  /** The process each relayed area (`pid:index`) comes from, for the refusals below. */
  const relayedFrom = new Map<string, number>();
  // Where each inheriting or lending area comes from: up from the parent, through every
  // process that maps nothing over it and holds nothing there, to the first that maps it or
  // holds it for lenders. A lender's must be the one it lends through.
  for (const task of tasks) {
    for (const [i, v] of task.vmas.entries()) {
      if (!fromParent(v)) continue;
      const chain: TaskRecord[] = [];
      let top: TaskRecord | undefined;
      for (let p = ppid.get(task.pid); top === undefined;) {
        const at = p === undefined ? undefined : seen.get(p);
        if (!at) {
          refuse(task.pid, chain.length === 0
            ? `pid ${task.pid} ${v.cow?.length ? 'inherits pages (cow)' : 'lends pages (lent)'} from its parent ${p ?? '?'}, which is not a live process of the image listed before it`
            : `pid ${task.pid} vmas[${i}] (${v.start}-${v.end}) ${(v.lent?.length ?? 0) > 0 ? 'lends' : 'inherits'} pages through pid ${chain.at(-1)!.pid}, which maps nothing there, from its parent ${p ?? '?'}, which is not a live process of the image listed before it`);
        }
        if (layoutOf(at!).starts.has(v.start) || lending.get(at!.pid)?.has(v.start) === true) {
          top = at;
          break;
        }
        if (layoutOf(at!).over(range(v))) {
          refuse(task.pid, chain.length === 0 && (v.lent?.length ?? 0) === 0
            ? `pid ${task.pid} vmas[${i}] (${v.start}-${v.end}) inherits pages (cow) from an area its parent ${at!.pid} does not map the same way`
            : `pid ${task.pid} vmas[${i}] (${v.start}-${v.end}) ${(v.lent?.length ?? 0) > 0 ? 'lends' : 'inherits'} pages through pid ${at!.pid}, which maps something else over that area`);
        }
        if (bySibling.has(at!.pid)) {
          refuse(task.pid, `pid ${task.pid} vmas[${i}] (${v.start}-${v.end}) ${(v.lent?.length ?? 0) > 0 ? 'lends' : 'inherits'} pages through pid ${at!.pid}, which maps nothing there and is forked by or forks `
            + 'a sibling to share its tables (tree.json): it cannot pass them on');
        }
        chain.push(at!);
        if (chain.length >= MAX_LENT_THROUGH) {
          refuse(task.pid, `pid ${task.pid} vmas[${i}] (${v.start}-${v.end}) has pages from an ancestor more than ${MAX_LENT_THROUGH} generations up`);
        }
        p = ppid.get(at!.pid);
      }
      if ((v.lent?.length ?? 0) > 0 && chain.length !== (v.lentThrough ?? 1) - 1) {
        refuse(task.pid, `pid ${task.pid} vmas[${i}] (${v.start}-${v.end}) lends pages (lent) through the process ${v.lentThrough ?? 1} generations up, `
          + `but the area comes from pid ${top!.pid}, ${chain.length + 1} up`);
      }
      if (chain.length > 0) relayedFrom.set(`${task.pid}:${i}`, top!.pid);
      for (const r of chain) {
        let mine = relays.get(r.pid);
        if (!mine) relays.set(r.pid, (mine = new Map()));
        mine.set(v.start, top!.pid);
      }
    }
    seen.set(task.pid, task);
  }
  // Every holder's temporary areas checked, whoever reaches them.
  for (const h of lending.keys()) {
    const holder = seen.get(h);
    if (holder) temporaryOf(holder);
  }
  /** Each process as its children find it at fork (CowPlan.atFork), by start; made once. */
  const views = new Map<number, Map<string, VmaRecord>>();
  const viewOf = (p: TaskRecord): Map<string, VmaRecord> => {
    let view = views.get(p.pid);
    if (view) return view;
    const lent = lending.get(p.pid);
    const withLent = (v: VmaRecord): VmaRecord => {
      const more = lent?.get(v.start);
      return more ? { ...v, cow: merged(v.cow ?? [], ...more.map((l) => l.v.lent!)).map(([s, e]): [number, number] => [s, e - s]) } : v;
    };
    const relayed = [...relays.get(p.pid) ?? []].map(([start, top]) => viewOf(seen.get(top)!).get(start)!);
    const held = [...temporaryOf(p).values(), ...relayed].sort(byStart);
    for (let i = 1; i < held.length; i++) {
      if (BigInt(held[i]!.start) < BigInt(held[i - 1]!.end)) {
        refuse(p.pid, `pid ${p.pid} would hold areas at ${held[i - 1]!.start} and ${held[i]!.start} that overlap for its descendants`);
      }
    }
    view = new Map([...p.vmas, ...temporaryOf(p).values()].map((v) => [v.start, withLent(v)]));
    for (const v of relayed) view.set(v.start, v);
    views.set(p.pid, view);
    return view;
  };
  for (const task of tasks) {
    for (const [i, v] of task.vmas.entries()) {
      if (!fromParent(v)) continue;
      const parent = seen.get(ppid.get(task.pid)!)!;
      const from = viewOf(parent).get(v.start);
      if ((v.lent?.length ?? 0) > 0 && (!from || !inheritable(from, v))) {
        refuse(task.pid, `pid ${task.pid} vmas[${i}] (${v.start}-${v.end}) lends pages (lent) through an area its parent `
          + `${parent.pid} does not map the same way, or through no live parent listed before it`);
      }
      // Where the area comes from: the parent, or an ancestor it relays (named so).
      const top = relayedFrom.get(`${task.pid}:${i}`);
      const source = top === undefined ? `its parent ${parent.pid}` : `pid ${top} (through its parent ${parent.pid}, which maps nothing there)`;
      if (!from || !inheritable(from, v)) {
        refuse(task.pid, `pid ${task.pid} vmas[${i}] (${v.start}-${v.end}) inherits pages (cow) from an area `
          + `${source} does not map the same way`);
      }
      const present = merged(from!.runs, from!.cow ?? []);
      for (const [first, count] of v.cow ?? []) {
        if (!covered(present, first, first + count)) {
          refuse(task.pid, `pid ${task.pid} vmas[${i}] inherits pages ${first}-${first + count - 1} (cow) that ${source} has not all in the same area`);
        }
      }
    }
  }
  const none: never[] = [];
  const order = new Map(tasks.map((t, i) => [t, i]));
  return {
    late: (pid) => {
      const t = seen.get(pid);
      return t !== undefined && (inherits(t) || relays.has(pid));
    },
    atFork: (pid) => {
      const p = seen.get(pid)!;
      const view = viewOf(p);
      if (!lending.has(pid) && !relays.has(pid)) return p;
      return { ...p, vmas: [...view.values()].sort(byStart) };
    },
    temporary: (pid) => {
      const p = seen.get(pid);
      return p ? [...temporaryOf(p).values()] : none;
    },
    relayed: (pid) => {
      const p = seen.get(pid);
      return p && relays.has(pid) ? [...relays.get(pid)!.keys()].map((start) => viewOf(p).get(start)!) : none;
    },
    lentThrough: (pid) => [...lending.get(pid)?.values() ?? []].flat().sort((a, b) => order.get(a.task)! - order.get(b.task)!),
  };
}

/** The union of run lists as sorted, disjoint [start, end) page intervals (no page sets: areas may be huge). */
function merged(...lists: ReadonlyArray<ReadonlyArray<readonly [number, number]>>): Array<[number, number]> {
  const all = lists.flat().filter(([, c]) => c > 0).map(([f, c]): [number, number] => [f, f + c]).sort((a, b) => a[0] - b[0]);
  const out: Array<[number, number]> = [];
  for (const [s, e] of all) {
    const last = out.at(-1);
    if (last && s <= last[1]) last[1] = Math.max(last[1], e);
    else out.push([s, e]);
  }
  return out;
}

/** Whether [s, e) lies inside one of the sorted disjoint intervals (binary search). */
function covered(intervals: ReadonlyArray<readonly [number, number]>, s: number, e: number): boolean {
  let lo = 0;
  let hi = intervals.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const [a, b] = intervals[mid]!;
    if (s < a) hi = mid - 1;
    else if (s >= b) lo = mid + 1;
    else return e <= b;
  }
  return false;
}

/**
 * The runs of a kept area `v` to drop in the child (MADV_DONTNEED): the pages its parent's
 * area `from` has (stored or inherited) that the child neither stores nor inherits.
 */
export function pagesToDrop(from: VmaRecord, v: VmaRecord): Array<[number, number]> {
  const theirs = merged(from.runs, from.cow ?? []);
  const mine = merged(v.runs, v.cow ?? []);
  const out: Array<[number, number]> = [];
  let j = 0;
  for (const [s0, e] of theirs) {
    let s = s0;
    while (j < mine.length && mine[j]![1] <= s) j++;
    for (let k = j; k < mine.length && mine[k]![0] < e; k++) {
      const [ms, me] = mine[k]!;
      if (ms > s) out.push([s, ms - s]);
      s = Math.max(s, me);
    }
    if (s < e) out.push([s, e - s]);
  }
  return out;
}

/**
 * The stored pages of area `v` to write, as [first page, count, offset in the pages entry], in
 * entry order: its runs, less the pages it lent (`lent`), or with `lentOnly` those alone.
 */
export function storedParts(v: VmaRecord, lentOnly = false): Array<[number, number, number]> {
  const out: Array<[number, number, number]> = [];
  const lent = v.lent ?? [];
  let at = v.pagesOffset;
  let j = 0;
  for (const [first, count] of v.runs) {
    const end = first + count;
    let p = first;
    while (j < lent.length && lent[j]![0] + lent[j]![1] <= p) j++;
    for (let k = j; p < end;) {
      const l = lent[k];
      const ls = l && l[0] < end ? Math.max(l[0], p) : end; // next lent page in the run, or its end
      if (ls > p && !lentOnly) out.push([p, ls - p, at + (p - first) * PAGE_SIZE]);
      if (ls >= end) break;
      const le = Math.min(l![0] + l![1], end);
      if (lentOnly) out.push([ls, le - ls, at + (ls - first) * PAGE_SIZE]);
      p = le;
      if (le === l![0] + l![1]) k++;
    }
    at += count * PAGE_SIZE;
  }
  return out;
}

/**
 * Gives the rebuilt process `t` (`holder`) the pages its descendants lend through it
 * (image/cow.ts; `plan`, which checkInherited made), read from each lender's pages entry
 * (`pagesOf`, verified as it is read), so that the children forked next inherit them; its own
 * pages there are read first. Returns the bytes of lent pages written (each stored page of a
 * lender is written here only: writePages leaves them out) and what puts the holder's own back
 * once the children are forked (or drops the lent ones where it had none), undefined when
 * none lends through it. The temporary areas (CowPlan.temporary) are the caller's to map
 * before and unmap after (address-space.ts holdTemporary): what is lent there is gone with them.
 */
export function lendPages(t: Tracee, holder: TaskRecord, plan: CowPlan, pagesOf: (pid: number) => ChunkSource): { written: number; giveBack: (() => void) | undefined } {
  // A temporary area (the caller mapped it: holdTemporary) has nothing of the holder's own.
  const temporary = new Map(plan.temporary(holder.pid).map((v) => [v.start, v]));
  const areas = new Map([...holder.vmas, ...temporary.values()].map((v) => [v.start, v]));
  const lenders = new Map<TaskRecord, VmaRecord[]>();
  for (const { task, v } of plan.lentThrough(holder.pid)) {
    const list = lenders.get(task);
    if (list) list.push(v);
    else lenders.set(task, [v]);
  }
  const own: Array<{ at: bigint; data: Buffer }> = [];
  const drop: Array<readonly [number, bigint, bigint, number]> = [];
  // The holder's guard pages where pages are lent (it dropped its copy for a guard after the
  // fork): lifted for the lending (a write to a guard page fails), put back with its own.
  const guard: Array<readonly [number, bigint, bigint, number]> = [];
  let written = 0;
  for (const [c, lending] of lenders) {
    const src = pagesOf(c.pid);
    for (const v of lending) {
      // checkInherited refused any other image; kept here too, as this writes into the parent.
      const from = areas.get(v.start);
      if (!from || !inheritable(from, v)) {
        throw new FerryError('EIMAGE', `image: pid ${c.pid} lends pages through an area at ${v.start} pid ${holder.pid} does not map the same way: refused (an edited image)`, { pid: c.pid });
      }
      const has = merged(from.runs, from.cow ?? []);
      const base = BigInt(v.start);
      const lifted: Array<readonly [number, bigint, bigint, number]> = [];
      for (const [page, count] of storedParts(v, true)) {
        for (const [g, k] of from.guards ?? []) {
          const s = Math.max(g, page), e = Math.min(g + k, page + count);
          if (s < e) lifted.push([SYS.madvise, base + BigInt(s * PAGE_SIZE), BigInt((e - s) * PAGE_SIZE), MADV_GUARD_REMOVE]);
        }
      }
      madviseAll(t, holder, lifted, 'lift the guard pages');
      guard.push(...lifted.map(([nr, at, len]) => [nr, at, len, MADV_GUARD_INSTALL] as const));
      for (const [page, count, offset] of storedParts(v, true)) {
        // What the parent has there is kept to be put back; where it has nothing, dropped after.
        for (let p = page; p < page + count && !temporary.has(v.start);) {
          const inside = has.find(([s, e]) => s <= p && p < e);
          const next = inside ? Math.min(inside[1], page + count) : Math.min(page + count, has.find(([s]) => s > p)?.[0] ?? Infinity);
          const at = base + BigInt(p * PAGE_SIZE);
          const len = (next - p) * PAGE_SIZE;
          if (inside) own.push({ at, data: t.readMem(at, len) });
          else drop.push([SYS.madvise, at, BigInt(len), MADV_DONTNEED]);
          p = next;
        }
        let dst = base + BigInt(page * PAGE_SIZE);
        for (let off = offset, left = count * PAGE_SIZE; left > 0;) {
          const buf = src.view(off, left);
          t.writeMem(dst, buf);
          off += buf.length;
          dst += BigInt(buf.length);
          left -= buf.length;
          written += buf.length;
        }
      }
    }
    src.finish();
  }
  if (own.length === 0 && drop.length === 0) return { written, giveBack: undefined };
  return { written, giveBack: () => {
    for (const o of own) t.writeMem(o.at, o.data);
    madviseAll(t, holder, drop, 'drop the pages lent');
    madviseAll(t, holder, guard, 'put back the guard pages');
  } };
}

/** Runs madvise calls in `holder`'s stub, each failure one line (`what` at the address). */
function madviseAll(t: Tracee, holder: TaskRecord, calls: ReadonlyArray<readonly [number, bigint, bigint, number]>, what: string): void {
  if (calls.length === 0) return;
  t.trySyscalls(calls).forEach((r, i) => {
    if (r < 0n) {
      throw new FerryError('EMAP', `cannot ${what} at 0x${calls[i]![1].toString(16)} of pid ${holder.pid} (madvise): errno ${-r}`, { pid: holder.pid });
    }
  });
}
