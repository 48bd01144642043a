/**
 * Copy-on-write pages after fork(2), as the image records them (docs/image-format.md, "cow").
 *
 * fork() gives the child every private page of its parent write-protected and shared: one
 * physical page for both until one of them writes it. /proc/PID/pagemap shows such a page
 * with the same PFN (bits 0-54, root only) at the same address in both, and without the
 * "exclusively mapped" bit (56). A child's area that is the same mapping as one of its
 * parent's (same range, protection, backing and flags: `inheritable`) records those pages as
 * `cow` runs instead of storing them; restore forks that child from its parent once the
 * parent's memory is back, so it inherits them as the original did, and writes only the
 * child's own pages. The check and the page sets live here, where both dump/ and restore/
 * reach them.
 *
 * Pages only siblings share (the parent wrote its copy after forking them): the first of them
 * stores the page and marks it `lent`, the others record it as `cow`. Restore writes the lent
 * pages into the parent before it forks its children, so they inherit one page again, then
 * puts the parent's own pages back (or drops them where it had none). The same holds where
 * the parent no longer maps the area at all (it unmapped it after forking them): siblings
 * that map it alike, a plain private anonymous area (`lendableUnmapped`) over which the
 * parent maps nothing, lend its pages through a temporary area restore gives the parent at
 * that address while it forks them, and takes away after.
 *
 * Pages shared further down, by processes in different branches under a common ancestor
 * (cousins; a child of it and a grandchild under another child), none of the processes
 * between mapping anything over the area any more: the first sharer (tree order) stores the
 * page and lends it through that ancestor (`lent`, with `lentThrough` the generations up),
 * the others record it as `cow`. Restore writes the lent pages into the ancestor's area (its
 * own, or a temporary one as above) before it forks its children; each process between,
 * forked from its parent, keeps the area fork() gave it only until it has forked its own
 * children, and unmaps it then (restore/cow.ts CowPlan.relayed). A process whose parent maps
 * nothing over an area (it unmapped it after forking the process) may inherit it the same way
 * from the ancestor restore finds up that walk, with no lender: a page it shares with its
 * grandparent, or with siblings lending through their parent (its own parent's parent), is
 * `cow` (dump/cow-branches.ts inheritThroughRelays). Siblings lending already count as
 * sharers across branches: where they lend through their parent's temporary area and a
 * cousin of theirs shares the page, they lend through the common ancestor instead, their
 * parent relaying the area (dump/cow-branches.ts shareAcrossBranches), and the three come back
 * with one frame; a process may then lend some pages of an area and inherit others, both
 * through that ancestor.
 */
import type { VmaRecord } from './records.js';

/** The most generations up pages may be lent through (`lentThrough`): deeper sharing is stored. */
export const MAX_LENT_THROUGH = 1024;

/**
 * VmFlags codes fork() does not carry into the child as they are: mlock (`lo`, `lf`: a
 * child's areas are never locked; restore locks them again), and don't-fork (`dc`: not
 * inherited at all) and wipe-on-fork (`wf`: inherited empty) which make the area ineligible.
 */
const NOT_INHERITED = new Set(['lo', 'lf']);

/**
 * Whether the child's area `child` is the mapping fork() gave it from the parent's area
 * `parent`: a private area (anonymous, or of a file) with the same range, protection, name,
 * backing file and offset (a memfd or deleted file by its identity) and the same VmFlags but
 * mlock's, and neither don't-fork nor wipe-on-fork. Only such an area can inherit pages.
 */
export function inheritable(parent: VmaRecord, child: VmaRecord): boolean {
  if (child.shared || parent.shared) return false;
  if (child.kind !== 'anon' && child.kind !== 'file') return false;
  if (parent.kind !== child.kind || parent.start !== child.start || parent.end !== child.end) return false;
  if (parent.prot !== child.prot || parent.name !== child.name) return false;
  if (child.shmem || parent.shmem || child.sysv || parent.sysv) return false;
  const flags = (v: VmaRecord): string => v.vmflags.filter((f) => !NOT_INHERITED.has(f)).sort().join(' ');
  if (flags(parent) !== flags(child) || child.vmflags.includes('dc') || child.vmflags.includes('wf')) return false;
  if (parent.vmflags.includes('dc') || parent.vmflags.includes('wf')) return false;
  if ((parent.file === undefined) !== (child.file === undefined)) return false;
  if (parent.file && child.file && (parent.file.path !== child.file.path || parent.file.offset !== child.file.offset
    || parent.file.dev !== child.file.dev || parent.file.ino !== child.file.ino)) return false;
  const special = (v: VmaRecord): string => {
    const m = v as VmaRecord & { memfd?: { id: string }; ghost?: string };
    return `${m.memfd?.id ?? ''}|${m.ghost ?? ''}`;
  };
  return special(parent) === special(child);
}

/**
 * Whether an area a child lends pages through may be held by its parent as a temporary area
 * (it maps nothing over it any more): a plain private anonymous area, with no name
 * (a temporary mapping has none to give), not locked (as areas lent through the parent's
 * own are not: dump/memory.ts shareAmongSiblings), not growing down, and inheritable at all
 * (not don't-fork nor wipe-on-fork).
 */
export function lendableUnmapped(v: VmaRecord): boolean {
  return v.kind === 'anon' && !v.shared && v.name === '' && v.file === undefined && v.shmem === undefined && v.sysv === undefined
    && !v.vmflags.some((f) => f === 'lo' || f === 'lf' || f === 'gd' || f === 'dc' || f === 'wf') && inheritable(v, v);
}

/** The pages of an area of `pages` pages that `runs` name, as one byte per page (1: named). */
export function pageSet(pages: number, ...runs: ReadonlyArray<ReadonlyArray<readonly [number, number]>>): Uint8Array {
  const set = new Uint8Array(pages);
  for (const list of runs) for (const [first, count] of list) set.fill(1, first, first + count);
  return set;
}

/** Runs `[first, count]` of the pages marked in `set`, in order. */
export function runsOf(set: Uint8Array): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let i = 0; i < set.length;) {
    if (!set[i]) { i++; continue; }
    let j = i;
    while (j < set.length && set[j]) j++;
    out.push([i, j - i]);
    i = j;
  }
  return out;
}
