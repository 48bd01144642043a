/**
 * Pages processes in different branches of the tree still share copy-on-write (image/cow.ts):
 * two cousins, or a child of a process and a grandchild of it under another child, every
 * process between them and their common ancestor having unmapped the area since (or mapping
 * nothing over it any more). Each stores the page today; one of them keeps it, lent through
 * the ancestor (`lent`, `lentThrough`), the others inherit it (`cow`), and restore passes the
 * area down through the processes between (restore/cow.ts CowPlan.relayed).
 *
 * Runs after shareAmongSiblings (dump/memory.ts), on what it left stored: a page siblings
 * share is theirs already, and an area that lends through one process lends through no other.
 */
import { PAGE_SIZE } from '../arch/x86-64.js';
import { inheritable, lendableUnmapped, MAX_LENT_THROUGH, pageSet } from '../image/cow.js';
import type { VmaRecord } from '../image/records.js';
import { applyMatch, lendsThrough, matchFrames, repack, unmappedAreas, type MemoryPlan } from './memory.js';

/** A planned live process of the tree, for shareAcrossBranches (all stopped). */
export interface PlannedProcess {
  pid: number;
  ppid: number;
  plan: Pick<MemoryPlan, 'vmas' | 'pagesBytes' | 'pagemaps'>;
  /**
   * Forked from a stub by restore (image/sharing.ts forkedBySiblings): it inherits nothing,
   * so it neither shares pages here nor passes an area on.
   */
  ownPages: boolean;
}

/** [start, end) of an area. */
type Range = readonly [bigint, bigint];
const rangeOf = (v: VmaRecord): Range => [BigInt(v.start), BigInt(v.end)];
const overlap = (a: Range, b: Range): boolean => a[0] < b[1] && b[0] < a[1];

/** Whether an area of `vmas` (in address order, as maps lists them) overlaps `r`: a binary search. */
function mapsOver(vmas: readonly VmaRecord[], r: Range): boolean {
  let lo = 0;
  let hi = vmas.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const [s, e] = rangeOf(vmas[mid]!);
    if (r[1] <= s) hi = mid - 1;
    else if (r[0] >= e) lo = mid + 1;
    else return true;
  }
  return false;
}

/** A process sharing an area, found under an ancestor: its area and how many generations down. */
interface Sharer {
  p: PlannedProcess;
  v: VmaRecord;
  depth: number;
  /** The processes between the ancestor and it, top down. */
  between: PlannedProcess[];
}

/**
 * Stores once the pages processes in different branches under a common ancestor share (this
 * module's comment). For each process in tree order (parents first) and each area it maps
 * (a candidate as for siblings: anonymous or file, no memfd or deleted file, not locked) or
 * that processes under it map alike and it maps nothing over (dump/memory.ts unmappedAreas),
 * the sharers are the processes under it that map the same private mapping (`inheritable`)
 * with stored pages, reached through processes that map nothing over it, hold nothing there
 * for their children and pass no other area over it on, none forked from a stub (`ownPages`),
 * at least one of them two or more generations down; not an area over which it relays another,
 * or over which its children lend through another already. A page two or more sharers store with
 * one page frame (and none of its children inherits or lends there, nor it inherits itself) is
 * kept by the first (tree order), lent through the ancestor, and inherited by the others. A
 * sharer that lends already (through its parent) takes no part. Reads each sharer's pagemap
 * once per area. Updates the plans' `pagesOffset` and `pagesBytes`; returns the pids whose
 * plan changed.
 */
export function shareAcrossBranches(tree: readonly PlannedProcess[]): number[] {
  const kids = new Map<number, PlannedProcess[]>();
  for (const p of tree) {
    const list = kids.get(p.ppid);
    if (list) list.push(p);
    else kids.set(p.ppid, [p]);
  }
  const at = new Map(tree.map((p) => [p.pid, new Map(p.plan.vmas.map((v) => [v.start, v]))]));
  /** The areas each process passes on (relays) so far, and those lent through it here. */
  const relaying = new Map<number, Range[]>();
  const heldHere = new Map<number, Range[]>();
  /** Whether `p` holds an area over `r` for its children (lent through it) or relays one. */
  const busy = (p: PlannedProcess, r: Range): boolean => (relaying.get(p.pid) ?? []).some((x) => overlap(x, r))
    || (heldHere.get(p.pid) ?? []).some((x) => overlap(x, r))
    || (kids.get(p.pid) ?? []).some((c) => c.plan.vmas.some((v) => (v.lent?.length ?? 0) > 0 && v.lentThrough === undefined && overlap(rangeOf(v), r)));
  const changed = new Set<number>();
  const order = new Map(tree.map((p, i) => [p, i]));
  for (const top of tree) {
    const under: PlannedProcess[] = [];
    const walk = (p: PlannedProcess, depth: number): void => {
      if (depth > MAX_LENT_THROUGH) return;
      for (const c of kids.get(p.pid) ?? []) {
        if (c.ownPages) continue;
        under.push(c);
        walk(c, depth + 1);
      }
    };
    walk(top, 1);
    // Only areas at an address some process two or more generations down maps.
    const deep = new Set(under.filter((p) => p.ppid !== top.pid).flatMap((p) => p.plan.vmas.filter((v) => v.runs.length > 0).map((v) => v.start)));
    if (deep.size === 0) continue;
    const candidates = top.plan.vmas.filter((theirs) => deep.has(theirs.start) && lendsThrough(theirs));
    const unmapped = unmappedAreas({ pid: top.pid, vmas: top.plan.vmas }, under.map((p) => ({ pid: p.pid, plan: p.plan })))
      .filter((v) => deep.has(v.start));
    for (const theirs of [...candidates, ...unmapped]) {
      const own = !unmapped.includes(theirs);
      const r = rangeOf(theirs);
      // It passes another area over this one on: its children find that one there.
      if ((relaying.get(top.pid) ?? []).some((x) => overlap(x, r))) continue;
      // Its children lend through an area over this one already (shareAmongSiblings): restore
      // holds one area there, which must be this one's mapping.
      const lentHere = (kids.get(top.pid) ?? []).flatMap((c) => c.plan.vmas.filter((v) => (v.lent?.length ?? 0) > 0 && v.lentThrough === undefined && overlap(rangeOf(v), r)));
      if (lentHere.some((v) => v.start !== theirs.start || !inheritable(theirs, v))) continue;
      const sharers: Sharer[] = [];
      const reach = (p: PlannedProcess, depth: number, between: PlannedProcess[]): void => {
        for (const c of kids.get(p.pid) ?? []) {
          if (c.ownPages) continue;
          const v = at.get(c.pid)!.get(theirs.start);
          if (v) {
            // Where it maps nothing, restore holds the area as a lender maps it: a plain one.
            if (v.runs.length > 0 && (v.lent?.length ?? 0) === 0 && inheritable(theirs, v) && (own || lendableUnmapped(v))) {
              sharers.push({ p: c, v, depth, between });
            }
            continue; // what is under it has the area from it
          }
          if (depth >= MAX_LENT_THROUGH || mapsOver(c.plan.vmas, r) || busy(c, r)) continue;
          reach(c, depth + 1, [...between, c]);
        }
      };
      reach(top, 1, []);
      sharers.sort((a, b) => order.get(a.p)! - order.get(b.p)!); // the first in tree order lends
      if (sharers.length < 2 || sharers.every((s) => s.depth === 1)) continue;
      const npages = Number((r[1] - r[0]) / BigInt(PAGE_SIZE));
      const first = Number(r[0] / BigInt(PAGE_SIZE));
      // Not where it inherits from its own parent, nor where a child of it inherits its page
      // or lends one through it already (shareAmongSiblings): it holds one page there at fork.
      const direct = (kids.get(top.pid) ?? []).flatMap((c) => {
        const v = at.get(c.pid)!.get(theirs.start);
        return v ? [v.cow ?? [], v.lent ?? []] : [];
      });
      const excluded = pageSet(npages, own ? theirs.cow ?? [] : [], ...direct);
      const { lent, moved } = matchFrames(npages, first, excluded, sharers.map(({ p, v }) => ({ pid: p.pid, v, pagemaps: p.plan.pagemaps })));
      let held = false;
      sharers.forEach(({ p, v, depth, between }, k) => {
        if (!applyMatch(v, npages, lent[k]!, moved[k]!)) return;
        if (v.lent !== undefined && depth > 1) v.lentThrough = depth;
        // Each process between passes the area on (restore/cow.ts CowPlan.relayed).
        for (const b of between) {
          const list = relaying.get(b.pid);
          if (list) list.push(r);
          else relaying.set(b.pid, [r]);
        }
        held = true;
        changed.add(p.pid);
      });
      if (held) {
        const list = heldHere.get(top.pid);
        if (list) list.push(r);
        else heldHere.set(top.pid, [r]);
      }
    }
  }
  // The areas' stored pages stay back to back in the pages entry.
  for (const p of tree) if (changed.has(p.pid)) repack(p.plan);
  return [...changed];
}
