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
 * Pages children lend through their parent (image/cow.ts `lent`) are written into the parent's
 * same area right before those children are forked. Where the parent maps nothing at all any
 * more (it unmapped the area after forking them), the parent holds a temporary area there,
 * the lenders' mapping, only while those children are forked (`temporaryAreas`, lendPages):
 * its layout after is exactly its own.
 */
import { PAGE_SIZE, SYS } from '../arch/x86-64.js';
import { FerryError } from '../errors.js';
import type { ChunkSource } from '../image/chunks.js';
import { inheritable, lendableUnmapped } from '../image/cow.js';
import type { TaskRecord, TreeRecord, VmaRecord } from '../image/records.js';
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

/** The pages children lend through their parent, by parent pid and area start (image/cow.ts). */
type Lent = Map<number, Map<string, Array<[number, number]>>>;

/** Every child's lent pages, gathered by parent and area. */
function lentByParent(tasks: readonly TaskRecord[], parentOf: (pid: number) => number | undefined): Lent {
  const out: Lent = new Map();
  for (const t of tasks) {
    for (const v of t.vmas) {
      if (!v.lent || v.lent.length === 0) continue;
      const p = parentOf(t.pid) ?? 0;
      let areas = out.get(p);
      if (!areas) out.set(p, (areas = new Map()));
      const list = areas.get(v.start);
      if (list) list.push(...v.lent);
      else areas.set(v.start, [...v.lent]);
    }
  }
  return out;
}

/**
 * The temporary areas the parent `parent` holds while its children are forked, by start: one
 * for each area its children lend pages through that it does not map itself, made as the
 * first lender's (tree order) mapping, storing nothing (image/cow.ts). checkInherited refused
 * any such area the parent maps something over, or that is no lendableUnmapped one.
 */
export function temporaryAreas(parent: TaskRecord, children: readonly TaskRecord[]): Map<string, VmaRecord> {
  const own = new Set(parent.vmas.map((v) => v.start));
  const out = new Map<string, VmaRecord>();
  for (const c of children) {
    for (const v of c.vmas) {
      if ((v.lent?.length ?? 0) === 0 || own.has(v.start) || out.has(v.start)) continue;
      const { cow: _cow, lent: _lent, ...mapping } = v;
      out.set(v.start, { ...mapping, runs: [], pagesOffset: 0 });
    }
  }
  return out;
}

/**
 * The parent as its children find it at fork: its areas with the pages its children lend
 * through it (image/cow.ts) counted as its own (`cow`), for what they inherit and drop, and
 * the temporary areas it holds for them (temporaryAreas), in address order.
 */
export function atFork(parent: TaskRecord, children: readonly TaskRecord[]): TaskRecord {
  const lent = lentByParent(children, () => parent.pid).get(parent.pid);
  if (!lent) return parent;
  const withLent = (v: VmaRecord): VmaRecord => {
    const more = lent.get(v.start);
    return more ? { ...v, cow: merged(v.cow ?? [], more).map(([s, e]): [number, number] => [s, e - s]) } : v;
  };
  const temporary = [...temporaryAreas(parent, children).values()];
  const vmas = [...parent.vmas, ...temporary].map(withLent);
  if (temporary.length > 0) vmas.sort((a, b) => (BigInt(a.start) < BigInt(b.start) ? -1 : BigInt(a.start) > BigInt(b.start) ? 1 : 0));
  return { ...parent, vmas };
}

/**
 * Refuses an image whose `cow` runs name what restore cannot give: a child whose parent is
 * not a live process of the image listed before it, an area its parent has not as the same
 * private mapping (`inheritable`), or a page the parent's area neither stores nor inherits
 * itself (restore would hand the child whatever fork() gave it there). One line naming the
 * pid and area; before any process is created.
 */
export function checkInherited(tree: TreeRecord, tasks: readonly TaskRecord[]): void {
  const ppid = new Map(tree.processes.map((p) => [p.pid, p.ppid]));
  const seen = new Map<number, TaskRecord>();
  const lent = lentByParent(tasks, (pid) => ppid.get(pid));
  // Two children lending one page of their parent's: the parent can hold only one of them.
  for (const [p, areas] of lent) {
    for (const [start, runs] of areas) {
      const sorted = [...runs].sort((a, b) => a[0] - b[0]);
      for (let i = 1; i < sorted.length; i++) {
        if (sorted[i]![0] < sorted[i - 1]![0] + sorted[i - 1]![1]) {
          throw new FerryError('EIMAGE', `image: two children of pid ${p} lend the same pages of its area at ${start} (lent): refused (an edited image)`, { pid: p });
        }
      }
    }
  }
  const kids = new Map<number, TaskRecord[]>();
  for (const t of tasks) {
    const p = ppid.get(t.pid);
    if (p === undefined) continue;
    const list = kids.get(p);
    if (list) list.push(t);
    else kids.set(p, [t]);
  }
  /** The temporary areas of each parent (temporaryAreas), checked once: none over another. */
  const temporaries = new Map<number, Map<string, VmaRecord>>();
  const temporaryOf = (parent: TaskRecord): Map<string, VmaRecord> => {
    let found = temporaries.get(parent.pid);
    if (found) return found;
    found = temporaryAreas(parent, kids.get(parent.pid) ?? []);
    const sorted = [...found.values()].sort((a, b) => (BigInt(a.start) < BigInt(b.start) ? -1 : 1));
    for (let i = 1; i < sorted.length; i++) {
      if (BigInt(sorted[i]!.start) < BigInt(sorted[i - 1]!.end)) {
        throw new FerryError('EIMAGE', `image: children of pid ${parent.pid} lend pages through areas at ${sorted[i - 1]!.start} and ${sorted[i]!.start} `
          + 'that overlap, which it does not map: refused (an edited image)', { pid: parent.pid });
      }
    }
    temporaries.set(parent.pid, found);
    return found;
  };
  for (const task of tasks) {
    // A lending child's areas are written into its parent's (lendPages): the same private
    // mapping there, or nothing is written. Where the parent maps nothing over the area, it
    // holds a temporary one while its children are forked: a plain private anonymous area
    // (lendableUnmapped), as the first child lending through it maps it.
    for (const [i, v] of task.vmas.entries()) {
      if ((v.lent?.length ?? 0) === 0) continue;
      const parentPid = ppid.get(task.pid);
      const parent = parentPid === undefined ? undefined : seen.get(parentPid);
      let from = parent?.vmas.find((a) => a.start === v.start);
      if (parent && !from) {
        const s = BigInt(v.start);
        const e = BigInt(v.end);
        if (!lendableUnmapped(v) || parent.vmas.some((a) => BigInt(a.start) < e && s < BigInt(a.end))) {
          throw new FerryError('EIMAGE', `image: pid ${task.pid} vmas[${i}] (${v.start}-${v.end}) lends pages (lent) through an area its parent `
            + `${parent.pid} does not map, which it cannot hold for it (it maps something over part of it, or the area is no plain private anonymous one): `
            + 'refused (an edited image)', { pid: task.pid });
        }
        from = temporaryOf(parent).get(v.start);
      }
      if (!from || !inheritable(from, v)) {
        throw new FerryError('EIMAGE', `image: pid ${task.pid} vmas[${i}] (${v.start}-${v.end}) lends pages (lent) through an area its parent `
          + `${parentPid ?? '?'} does not map the same way, or through no live parent listed before it: refused (an edited image)`, { pid: task.pid });
      }
    }
    if (inherits(task)) {
      const parentPid = ppid.get(task.pid);
      const parent = parentPid === undefined ? undefined : seen.get(parentPid);
      if (!parent) {
        throw new FerryError('EIMAGE', `image: pid ${task.pid} inherits pages (cow) from its parent ${parentPid ?? '?'}, `
          + 'which is not a live process of the image listed before it: refused (an edited image)', { pid: task.pid });
      }
      const areas = new Map([...parent.vmas, ...temporaryOf(parent).values()].map((v) => [v.start, v]));
      const lentHere = lent.get(parent.pid);
      for (const [i, v] of task.vmas.entries()) {
        if (!fromParent(v)) continue;
        const from = areas.get(v.start);
        if (!from || !inheritable(from, v)) {
          throw new FerryError('EIMAGE', `image: pid ${task.pid} vmas[${i}] (${v.start}-${v.end}) inherits pages (cow) from an area `
            + `its parent ${parent.pid} does not map the same way: refused (an edited image)`, { pid: task.pid });
        }
        const present = merged(from.runs, from.cow ?? [], lentHere?.get(v.start) ?? []);
        for (const [first, count] of v.cow ?? []) {
          if (!covered(present, first, first + count)) {
            throw new FerryError('EIMAGE', `image: pid ${task.pid} vmas[${i}] inherits pages ${first}-${first + count - 1} (cow) that its parent `
              + `${parent.pid} has not all in the same area: refused (an edited image)`, { pid: task.pid });
          }
        }
      }
    }
    seen.set(task.pid, task);
  }
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
 * Gives the rebuilt parent `t` the pages its children lend through it (image/cow.ts), read
 * from each lending child's pages entry (`pagesOf`, verified as it is read), so that the
 * children forked next inherit them; its own pages there are read first. Returns what puts
 * them back once the children are forked (or drops the lent ones where it had none), or
 * undefined when no child lends. The children checkInherited passed. The temporary areas
 * (temporaryAreas) are the caller's to map before and unmap after (address-space.ts
 * holdTemporary): what is lent there is gone with them.
 */
export function lendPages(t: Tracee, parent: TaskRecord, children: readonly TaskRecord[],
  pagesOf: (pid: number) => ChunkSource): (() => void) | undefined {
  // A temporary area (the caller mapped it: holdTemporary) has nothing of the parent's own.
  const temporary = temporaryAreas(parent, children);
  const areas = new Map([...parent.vmas, ...temporary.values()].map((v) => [v.start, v]));
  const own: Array<{ at: bigint; data: Buffer }> = [];
  const drop: Array<readonly [number, bigint, bigint, number]> = [];
  for (const c of children) {
    const lending = c.vmas.filter((v) => (v.lent?.length ?? 0) > 0);
    if (lending.length === 0) continue;
    const src = pagesOf(c.pid);
    for (const v of lending) {
      // checkInherited refused any other image; kept here too, as this writes into the parent.
      const from = areas.get(v.start);
      if (!from || !inheritable(from, v)) {
        throw new FerryError('EIMAGE', `image: pid ${c.pid} lends pages through an area at ${v.start} its parent ${parent.pid} does not map the same way: refused (an edited image)`, { pid: c.pid });
      }
      const has = merged(from.runs, from.cow ?? []);
      const base = BigInt(v.start);
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
        }
      }
    }
    src.finish();
  }
  if (own.length === 0 && drop.length === 0) return undefined;
  return () => {
    for (const o of own) t.writeMem(o.at, o.data);
    if (drop.length === 0) return;
    t.trySyscalls(drop).forEach((r, i) => {
      if (r < 0n) {
        throw new FerryError('EMAP', `cannot drop the pages lent at 0x${drop[i]![1].toString(16)} of pid ${parent.pid} (madvise): errno ${-r}`,
          { pid: parent.pid });
      }
    });
  };
}
