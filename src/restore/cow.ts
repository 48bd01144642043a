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
 */
import { FerryError } from '../errors.js';
import { inheritable } from '../image/cow.js';
import type { TaskRecord, TreeRecord, VmaRecord } from '../image/records.js';

/** Whether a task has pages to inherit from its parent. */
export function inherits(task: TaskRecord): boolean {
  return task.vmas.some((v) => (v.cow?.length ?? 0) > 0);
}

/** The child's areas kept from its parent at fork: those with pages to inherit. */
export function keptAreas(task: TaskRecord): VmaRecord[] {
  return task.vmas.filter((v) => (v.cow?.length ?? 0) > 0);
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
  for (const task of tasks) {
    if (inherits(task)) {
      const parentPid = ppid.get(task.pid);
      const parent = parentPid === undefined ? undefined : seen.get(parentPid);
      if (!parent) {
        throw new FerryError('EIMAGE', `image: pid ${task.pid} inherits pages (cow) from its parent ${parentPid ?? '?'}, `
          + 'which is not a live process of the image listed before it: refused (an edited image)', { pid: task.pid });
      }
      const areas = new Map(parent.vmas.map((v) => [v.start, v]));
      for (const [i, v] of task.vmas.entries()) {
        if (!v.cow || v.cow.length === 0) continue;
        const from = areas.get(v.start);
        if (!from || !inheritable(from, v)) {
          throw new FerryError('EIMAGE', `image: pid ${task.pid} vmas[${i}] (${v.start}-${v.end}) inherits pages (cow) from an area `
            + `its parent ${parent.pid} does not map the same way: refused (an edited image)`, { pid: task.pid });
        }
        const present = merged(from.runs, from.cow ?? []);
        for (const [first, count] of v.cow) {
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
