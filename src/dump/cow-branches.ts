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
 * Siblings lending through their parent's temporary area (it unmapped the area) lend through
 * the common ancestor instead where a cousin of theirs shares the pages, the parent relaying.
 * Last, inheritThroughRelays: a page a process shares with the process its area comes from
 * further up (a grandparent whose child unmapped the area; siblings lending through it).
 */
import { PAGE_SIZE } from '../arch/x86-64.js';
import { inheritable, lendableUnmapped, MAX_LENT_THROUGH, pageSet } from '../image/cow.js';
import type { VmaRecord } from '../image/records.js';
import { sharedFrames } from '../proc/pagemap.js';
import { applyMatch, lendsThrough, matchFrames, pagemapOf, repack, unmappedAreas, type MemoryPlan } from './memory.js';

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
 * or over which its children lend through another already. A process between may hold the
 * area for its children already (they lend through it, shareAmongSiblings: it unmapped it)
 * where it holds nothing else there and each of those lenders is a sharer: they lend
 * through the ancestor then, and it relays. A page two or more sharers store with one page
 * frame (and none of its children inherits or lends there, nor it inherits itself) is kept
 * by the first (those lending already, then tree order), lent through the ancestor, and
 * inherited by the others; a sharer lending already (through its parent) keeps lending its
 * pages but those it inherits now. Nothing changes over an area where no page more would be
 * inherited, or where two sharers would lend one page. Reads each sharer's pagemap once per
 * area. Updates the plans' `pagesOffset` and `pagesBytes`; returns the pids whose plan
 * changed.
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
      // Where it maps nothing, restore holds the area as a lender maps it: a plain one. A
      // sharer may lend through its parent already (shareAmongSiblings): then it lends through
      // this ancestor instead, or as well where the parent is this one.
      const sharing = (v: VmaRecord): boolean => v.runs.length > 0 && v.lentThrough === undefined && inheritable(theirs, v)
        && (own || lendableUnmapped(v));
      // A process between whose only business over the area is its children lending through
      // it there (siblings, their parent having unmapped it): they lend through this ancestor
      // instead, and it relays the area to them (a cousin's branch never reaches its own).
      const relends = (c: PlannedProcess): boolean => !(relaying.get(c.pid) ?? []).some((x) => overlap(x, r))
        && !(heldHere.get(c.pid) ?? []).some((x) => overlap(x, r))
        && (kids.get(c.pid) ?? []).every((k) => k.plan.vmas.every((v) => (v.lent?.length ?? 0) === 0 || v.lentThrough !== undefined
          || !overlap(rangeOf(v), r) || (!k.ownPages && v.start === theirs.start && sharing(v))));
      const sharers: Sharer[] = [];
      const reach = (p: PlannedProcess, depth: number, between: PlannedProcess[]): void => {
        for (const c of kids.get(p.pid) ?? []) {
          if (c.ownPages) continue;
          const v = at.get(c.pid)!.get(theirs.start);
          if (v) {
            if (sharing(v)) sharers.push({ p: c, v, depth, between });
            continue; // what is under it has the area from it
          }
          if (depth >= MAX_LENT_THROUGH || mapsOver(c.plan.vmas, r) || (busy(c, r) && !relends(c))) continue;
          reach(c, depth + 1, [...between, c]);
        }
      };
      reach(top, 1, []);
      // The first in tree order lends, those lending already first: they keep their pages.
      const lends = (s: Sharer): number => ((s.v.lent?.length ?? 0) > 0 ? 0 : 1);
      sharers.sort((a, b) => lends(a) - lends(b) || order.get(a.p)! - order.get(b.p)!);
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
      if (!moved.some((m) => m.includes(1))) continue; // nothing more shared: every lender stays as it is
      // A sharer lending already keeps lending its pages, but those it inherits now (another
      // lender's, in one frame with its own). One lender a page: else the area stays as it was.
      let clash = false;
      const lender = new Uint8Array(npages);
      sharers.forEach(({ v }, k) => {
        for (const [page, count] of v.lent ?? []) for (let i = page; i < page + count; i++) if (!moved[k]![i]) lent[k]![i] = 1;
        for (let i = 0; i < npages; i++) {
          if (!lent[k]![i]) continue;
          if (lender[i]) clash = true;
          lender[i] = 1;
        }
      });
      if (clash) continue;
      let held = false;
      sharers.forEach(({ p, v, depth, between }, k) => {
        if (!applyMatch(v, npages, lent[k]!, moved[k]!)) return;
        if (!lent[k]!.includes(1)) delete v.lent; // every page it lent it inherits now
        else if (depth > 1) v.lentThrough = depth;
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

/**
 * Pages a process shares with the process its area would come from at restore further up
 * than its parent (image/cow.ts): its parent maps nothing over the area (it unmapped it after
 * forking it), so planMemory compared it with nobody. Restore's walk (restore/cow.ts
 * checkInherited) goes up from the parent through processes that map nothing over the area,
 * hold nothing for lenders there and relay no other area over it, none forked by or forking
 * a sibling (`ownPages`), to the first that maps an area at that start or holds one for
 * lenders: the top. At its children's fork the top holds in that area the pages lent through
 * it (the lender's frame) and, where none is, its own (stored or inherited: its frame). A
 * stored page of the process (not one it lends) with that frame is inherited instead (`cow`),
 * each process on the way relaying the area (restore/cow.ts CowPlan.relayed): a grandparent
 * and its grandchild, or siblings' lent page and their sibling's child, come back one frame.
 * Only where the top's area is the same private mapping (`inheritable`, and `lendsThrough` when
 * it is the top's own). Runs last, on the records the other passes left, in tree order (a
 * relay added here counts for those after). Updates the plans' `pagesOffset` and `pagesBytes`;
 * returns the pids whose plan changed.
 */
export function inheritThroughRelays(tree: readonly PlannedProcess[]): number[] {
  const byPid = new Map(tree.map((p) => [p.pid, p]));
  const at = new Map(tree.map((p) => [p.pid, new Map(p.plan.vmas.map((v) => [v.start, v]))]));
  /** The areas lending through each process, by start, in tree order (their `lentThrough` holder). */
  const lenders = new Map<number, Map<string, Array<{ p: PlannedProcess; v: VmaRecord }>>>();
  for (const p of tree) {
    for (const v of p.plan.vmas) {
      if ((v.lent?.length ?? 0) === 0) continue;
      let h: PlannedProcess | undefined = byPid.get(p.ppid);
      for (let up = v.lentThrough ?? 1; up > 1 && h !== undefined; up--) h = byPid.get(h.ppid);
      if (h === undefined) continue;
      let areas = lenders.get(h.pid);
      if (!areas) lenders.set(h.pid, (areas = new Map()));
      const list = areas.get(v.start);
      if (list) list.push({ p, v });
      else areas.set(v.start, [{ p, v }]);
    }
  }
  /** The areas each process relays, by start. */
  const relays = new Map<number, Map<string, Range>>();
  /** Whether `x` holds a temporary area for lenders, or relays one, over `r` at another start than `start`. */
  const holdsOver = (x: PlannedProcess, start: string, r: Range): boolean => {
    for (const [s, list] of lenders.get(x.pid) ?? []) {
      if (s !== start && !at.get(x.pid)!.has(s) && overlap(rangeOf(list[0]!.v), r)) return true;
    }
    for (const [s, range] of relays.get(x.pid) ?? []) if (s !== start && overlap(range, r)) return true;
    return false;
  };
  /** Restore's walk for `p`'s area `v`: the top and the processes between, or undefined where it would refuse. */
  const walk = (p: PlannedProcess, v: VmaRecord): { top: PlannedProcess; chain: PlannedProcess[] } | undefined => {
    const r = rangeOf(v);
    const chain: PlannedProcess[] = [];
    for (let x = byPid.get(p.ppid); x !== undefined; x = byPid.get(x.ppid)) {
      if (at.get(x.pid)!.has(v.start) || lenders.get(x.pid)?.has(v.start) === true) return { top: x, chain };
      if (mapsOver(x.plan.vmas, r) || x.ownPages || holdsOver(x, v.start, r)) return undefined;
      chain.push(x);
      if (chain.length >= MAX_LENT_THROUGH) return undefined;
    }
    return undefined;
  };
  const relay = (chain: readonly PlannedProcess[], v: VmaRecord): void => {
    for (const x of chain) {
      let mine = relays.get(x.pid);
      if (!mine) relays.set(x.pid, (mine = new Map()));
      mine.set(v.start, rangeOf(v));
    }
  };
  // The relays the other passes made: every area with pages from above whose parent maps nothing there.
  for (const p of tree) {
    for (const v of p.plan.vmas) {
      if ((v.cow?.length ?? 0) + (v.lent?.length ?? 0) === 0 || at.get(p.ppid)?.has(v.start) !== false) continue;
      const found = walk(p, v);
      if (found) relay(found.chain, v);
    }
  }
  /** The frame the top holds at each page of its area at `start` when its children are forked (0: none), made once. */
  const framesAt = new Map<string, Float64Array | undefined>();
  const topFrames = (top: PlannedProcess, area: VmaRecord, npages: number, first: number): Float64Array | undefined => {
    const key = `${top.pid}:${area.start}`;
    if (framesAt.has(key)) return framesAt.get(key);
    let out: Float64Array | undefined;
    const own = at.get(top.pid)!.get(area.start);
    const buffer = Buffer.allocUnsafe(npages * 8);
    if (own) {
      const entries = pagemapOf({ pid: top.pid, v: own, pagemaps: top.plan.pagemaps }, npages, first, buffer);
      if (entries) {
        out = sharedFrames(entries);
        const has = pageSet(npages, own.runs, own.cow ?? []);
        for (let i = 0; i < npages; i++) if (!has[i]) out[i] = 0;
      }
    }
    for (const { p, v } of lenders.get(top.pid)?.get(area.start) ?? []) {
      const entries = pagemapOf({ pid: p.pid, v, pagemaps: p.plan.pagemaps }, npages, first, buffer);
      if (!entries) continue;
      const theirs = sharedFrames(entries);
      out ??= new Float64Array(npages);
      for (const [page, count] of v.lent!) for (let i = page; i < page + count; i++) out[i] = theirs[i]!;
    }
    framesAt.set(key, out);
    return out;
  };
  const changed = new Set<number>();
  for (const p of tree) {
    if (p.ownPages) continue;
    const parentAt = at.get(p.ppid);
    if (!parentAt) continue;
    for (const v of p.plan.vmas) {
      if (v.runs.length === 0 || parentAt.has(v.start) || v.shared || (v.kind !== 'anon' && v.kind !== 'file')) continue;
      const found = walk(p, v);
      if (!found) continue;
      const { top, chain } = found;
      const own = at.get(top.pid)!.get(v.start);
      const from = own ?? lenders.get(top.pid)!.get(v.start)![0]!.v;
      if (!inheritable(from, v) || (own !== undefined && !lendsThrough(own))) continue;
      const npages = Number((BigInt(v.end) - BigInt(v.start)) / BigInt(PAGE_SIZE));
      const first = Number(BigInt(v.start) / BigInt(PAGE_SIZE));
      const theirs = topFrames(top, from, npages, first);
      const entries = theirs && pagemapOf({ pid: p.pid, v, pagemaps: p.plan.pagemaps }, npages, first, Buffer.allocUnsafe(npages * 8));
      if (!theirs || !entries) continue;
      const mine = sharedFrames(entries);
      const stored = pageSet(npages, v.runs);
      for (const [page, count] of v.lent ?? []) stored.fill(0, page, page + count);
      const moved = new Uint8Array(npages);
      for (let i = 0; i < npages; i++) if (stored[i] && mine[i] !== 0 && mine[i] === theirs[i]) moved[i] = 1;
      if (!applyMatch(v, npages, new Uint8Array(npages), moved)) continue;
      relay(chain, v);
      changed.add(p.pid);
    }
  }
  for (const p of tree) if (changed.has(p.pid)) repack(p.plan);
  return [...changed];
}
