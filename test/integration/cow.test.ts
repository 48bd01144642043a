/**
 * Copy-on-write after fork (issue 10, item 7; src/image/cow.ts, src/restore/cow.ts):
 * build/workloads/cow maps 64 MiB of private anonymous memory and a private mapping of a
 * 4 MiB file whose every page it wrote, then forks 4 children that each write a few pages and
 * drop one of each kind. Before the change a restore gave each of the five its own copy of
 * every page (about 350 MiB of PSS for the tree); the pages they still share must come back
 * shared: the tree's total PSS (/proc/PID/smaps_rollup) about what it was, each child's
 * private pages only its own few (the pages the root rewrote or dropped after the forks, which
 * only the children share, are one page for the four, not one each: lent through the root), and the
 * image storing the shared pages once. The tree checks every page after restore. An image
 * edited to make a process inherit from a parent, an area or pages that are not there, or
 * lend pages it does not store, is refused before anything is made.
 */
import assert from 'node:assert/strict';
import { closeSync, openSync, readFileSync, readSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { inheritable } from '../../src/image/cow.js';
import { openImage } from '../../src/image/reader.js';
import type { TaskRecord, TreeRecord, VmaRecord } from '../../src/image/records.js';
import { needs, WORKLOADS } from '../helpers/env.js';
import { editImage, json } from '../helpers/images.js';
import { alive, askVerdict, checkpointFreed, cleanup, ferry, own, startWorkload, stubs, verify, waitFor, type Workload } from '../helpers/processes.js';

const skip = needs('root', 'build');
after(cleanup);
/** POSIX shm objects of the windows workloads, removed even when a test fails half way. */
const shmObjects: string[] = [];
after(() => { for (const f of shmObjects) rmSync(f, { force: true }); });

const COW = join(WORKLOADS, 'cow');
const MIB = 1024;

/** The children of `pid`. */
const childrenOf = (pid: number): number[] =>
  readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').split(' ').filter(Boolean).map(Number);

/** A "Key: N kB" field of /proc/PID/smaps_rollup, in kB. */
const rollup = (pid: number, key: string): number =>
  Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))![1]);

/** Fields (kB) of the area of `pid` that `pick` chooses from its /proc/PID/smaps header line and Size. */
function area(pid: number, pick: (header: string, sizeKb: number) => boolean): Record<string, number> {
  for (const block of readFileSync(`/proc/${pid}/smaps`, 'utf8').split(/\n(?=[0-9a-f]+-[0-9a-f]+ )/)) {
    const fields = Object.fromEntries([...block.matchAll(/^(\w+):\s+(\d+) kB$/gm)].map((m) => [m[1]!, Number(m[2])]));
    if (pick(block.split('\n')[0]!, fields.Size ?? 0)) return fields;
  }
  throw new Error(`pid ${pid} has no such area`);
}

/**
 * How the tree's memory is held: total PSS, and per child the private dirty kB of the
 * anonymous area (64 MiB) and of the file mapping (cow.data).
 */
function memory(root: number): { pss: number; kids: Array<{ anon: number; file: number }> } {
  const kids = childrenOf(root);
  assert.equal(kids.length, 4, 'the four children');
  return {
    pss: [root, ...kids].reduce((s, p) => s + rollup(p, 'Pss'), 0),
    kids: kids.map((k) => ({
      anon: area(k, (_, size) => size === 64 * MIB).Private_Dirty!,
      file: area(k, (h) => h.endsWith('/cow.data')).Private_Dirty!,
    })),
  };
}

/** Asserts the tree shares its memory as the original did (`before`: the original's figures). */
function assertShared(root: number, before: ReturnType<typeof memory>, what: string): void {
  const now = memory(root);
  // 64 + 4 MiB shared, plus each child's few pages: about 70 MiB, not 5 × 68.
  assert.ok(now.pss <= before.pss + 4 * MIB, `${what}: the tree's PSS is ${now.pss} kB, was ${before.pss} kB`);
  for (const [i, k] of now.kids.entries()) {
    // 16 pages of its own; the 8 the root rewrote and the 2 it dropped after the fork are
    // shared by the children only, not one copy each (restore/cow.ts lendPages).
    const was = before.kids[i]!.anon;
    assert.ok(k.anon <= was + 8, `${what}: child ${i + 1} has ${k.anon} kB of private anonymous memory, had ${was} kB`);
    assert.ok(k.file <= 16, `${what}: child ${i + 1} has ${k.file} kB of its file mapping private`);
  }
}

async function started(): Promise<{ w: Workload; before: ReturnType<typeof memory> }> {
  const w = await startWorkload(COW, ['DIR']);
  const kids = childrenOf(w.pid);
  kids.forEach(own);
  const before = memory(w.pid);
  assert.ok(before.pss < 80 * MIB, `the original tree's PSS is ${before.pss} kB`);
  return { w, before };
}

/**
 * Restores `image` (`dir`: a work directory) with --json, asserting it succeeds and that the
 * memory it reports writing is every page the image stores, once: those lent through a parent
 * (restore/cow.ts lendPages) too, which it once left out (300 KiB instead of 32 MiB).
 */
async function restoredWhole(image: string, dir: string, args: string[] = []): Promise<void> {
  const rs = ferry(['restore', '--image', image, '--json', ...args]);
  assert.equal(rs.code, 0, rs.stderr);
  const img = await openImage(image, { workDir: dir });
  let stored = 0;
  try {
    const tree = await img.readJson('tree.json') as TreeRecord;
    for (const p of tree.processes) {
      if (p.zombie === null) stored += (await img.readJson(`tasks/${p.pid}/task.json`) as TaskRecord).pagesBytes;
    }
  } finally {
    await img.close();
  }
  const { pagesBytes } = JSON.parse(rs.stdout.toString()) as { pagesBytes: number };
  assert.equal(pagesBytes, stored, 'the restore wrote every stored page once');
}

/** The image's size, which stores the shared pages once: less than twice the tree's memory. */
function assertStoredOnce(image: string): void {
  const size = statSync(image).size;
  assert.ok(size < 2 * 70 * MIB * 1024, `the image is ${size} bytes`);
}

describe('copy-on-write after fork', { skip, timeout: 300_000 }, () => {
  it('pages a parent and its children share come back shared, through two cycles', async () => {
    const { w, before } = await started();
    const pids = [w.pid, ...childrenOf(w.pid)];
    let exited = w.exited;
    for (let cycle = 1; cycle <= 2; cycle++) {
      const image = join(w.dir, `cow${cycle}.tar`);
      await checkpointFreed({ pid: w.pid, exited }, image, `checkpoint ${cycle}`);
      await waitFor('every pid of the tree to be free', () => !pids.some(alive));
      assertStoredOnce(image);
      await restoredWhole(image, w.dir);
      pids.forEach(own);
      assertShared(w.pid, before, `after restore ${cycle}`);
      exited = waitFor(`restored pid ${w.pid} to exit`, () => !alive(w.pid), 60_000);
    }
    assert.equal(await verify(w), 'PASS');
  });

  it('--leave-running: the tree runs on as it was, and the image restores it shared', async () => {
    const { w, before } = await started();
    const pids = [w.pid, ...childrenOf(w.pid)];
    const image = join(w.dir, 'lr.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assertStoredOnce(image);
    assertShared(w.pid, before, 'left running');
    assert.equal(await verify(w), 'PASS');
    await w.exited;
    await waitFor('every pid of the tree to be free', () => !pids.some(alive));
    // Its log got the verdict since: the restored tree appends to it as it is.
    const rs = ferry(['restore', '--image', image, '--allow-changed-files']);
    assert.equal(rs.code, 0, rs.stderr);
    pids.forEach(own);
    assertShared(w.pid, before, 'restored');
    assert.equal(await askVerdict(w.pid, w.text), 'PASS'); // its second verdict
  });

  it('an image edited to inherit from no parent, another area or pages the parent has not, or to lend what it has not or through another area: refused, nothing made', async () => {
    const { w } = await started();
    const kids = childrenOf(w.pid);
    const image = join(w.dir, 'cow.tar');
    await checkpointFreed(w, image);
    await waitFor('every pid of the tree to be free', () => ![w.pid, ...kids].some(alive));
    const img = await openImage(image, { workDir: w.dir });
    const child = kids[0]!;
    const root = await img.readJson(`tasks/${w.pid}/task.json`) as TaskRecord;
    const kid = await img.readJson(`tasks/${child}/task.json`) as TaskRecord;
    // The child that lends pages through the root (the first of those that share them).
    let lender: number | undefined;
    for (const k of kids) {
      const t = await img.readJson(`tasks/${k}/task.json`) as TaskRecord;
      if (lender === undefined && t.vmas.some((v) => (v.lent?.length ?? 0) > 0)) lender = k;
    }
    assert.ok(lender !== undefined, 'a child lends pages through the root');
    await img.close();
    /** A page of `v` that neither `v` nor `also` stores or inherits. */
    const gap = (v: VmaRecord, also?: VmaRecord): number | undefined => {
      const pages = Number((BigInt(v.end) - BigInt(v.start)) / 4096n);
      const has = (a: VmaRecord | undefined, p: number): boolean =>
        [...(a?.runs ?? []), ...(a?.cow ?? [])].some(([f, c]) => p >= f && p < f + c);
      for (let p = 0; p < pages; p++) if (!has(v, p) && !has(also, p)) return p;
      return undefined;
    };
    // The root: a private area with a page it does not store, now said to be inherited.
    const rootArea = root.vmas.findIndex((v) => !v.shared && (v.kind === 'anon' || v.kind === 'file') && gap(v) !== undefined);
    assert.ok(rootArea >= 0, 'the root has a private area with a page not stored');
    // The child: an area it maps as its parent does, with a page neither has.
    const kidArea = kid.vmas.findIndex((v) => {
      const p = root.vmas.find((a) => a.start === v.start);
      return p !== undefined && inheritable(p, v) && gap(v, p) !== undefined;
    });
    assert.ok(kidArea >= 0, 'the child has an area as its parent maps it with a page neither has');
    const addCow = (v: VmaRecord, page: number): void => { v.cow = [...(v.cow ?? []), [page, 1] as [number, number]].sort((a, b) => a[0] - b[0]); };
    const cases: Array<[string, string, (t: TaskRecord) => void, RegExp]> = [
      ['the root inherits', `tasks/${w.pid}/task.json`, (t) => { addCow(t.vmas[rootArea]!, gap(t.vmas[rootArea]!)!); },
        new RegExp(`pid ${w.pid} inherits pages \\(cow\\) from its parent \\d+, which is not a live process of the image listed before it`)],
      ['another area', `tasks/${child}/task.json`, (t) => { t.vmas.find((v) => (v.cow?.length ?? 0) > 0)!.prot ^= 2; /* PROT_WRITE flipped */ },
        new RegExp(`pid ${child} vmas\\[\\d+\\] \\(0x[0-9a-f]+-0x[0-9a-f]+\\) inherits pages \\(cow\\) from an area its parent ${w.pid} does not map the same way`)],
      ['pages the parent has not', `tasks/${child}/task.json`, (t) => {
        const v = t.vmas[kidArea]!;
        addCow(v, gap(v, root.vmas.find((a) => a.start === v.start))!);
      }, new RegExp(`pid ${child} vmas\\[${kidArea}\\] inherits pages (\\d+)-\\1 \\(cow\\) that its parent ${w.pid} has not all in the same area`)],
      ['lends a page it does not store', `tasks/${child}/task.json`, (t) => {
        const v = t.vmas[kidArea]!;
        v.lent = [[gap(v)!, 1]];
      }, new RegExp(`vmas\\[${kidArea}\\]\\.lent\\[0\\] names pages that are not in one run of its stored pages`)],
      // Its pages would be written into whatever the parent maps there (a shared file, say).
      ['lends through an area its parent maps otherwise', `tasks/${lender}/task.json`, (t) => { t.vmas.find((v) => (v.lent?.length ?? 0) > 0)!.prot ^= 2; },
        new RegExp(`pid ${lender} vmas\\[\\d+\\] \\(0x[0-9a-f]+-0x[0-9a-f]+\\) lends pages \\(lent\\) through an area its parent ${w.pid} does not map the same way`)],
    ];
    for (const [what, entry, change, message] of cases) {
      const edited = join(w.dir, `edited-${what.replace(/\W+/g, '-')}.tar`);
      await editImage(image, edited, [[entry, json<TaskRecord>(change)]]);
      const before = stubs({ zombies: true });
      const rs = ferry(['restore', '--image', edited]);
      assert.equal(rs.code, 1, `${what}: ${rs.stderr}`);
      assert.equal(rs.stderr.trimEnd().split('\n').length, 1, `${what}: one line`);
      assert.match(rs.stderr, message, what);
      assert.ok(![w.pid, ...kids].some(alive), `${what}: no process made`);
      assert.deepEqual(stubs({ zombies: true }), before, `${what}: no stub left`);
    }
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    [w.pid, ...kids].forEach(own);
    assert.equal(await verify(w), 'PASS');
  });
});

/**
 * Windows onto one shared memory object (issue 10, item 7): build/workloads/windows maps a
 * memfd it holds twice at overlapping offsets, a memfd it closed twice, a POSIX shm object
 * at two offsets, and a MAP_SHARED anonymous area split in two by munmap (offsets 0 and 5
 * pages) that a forked child shares. After restore each pair must still be one object: a
 * write through one window is read through the other, the child's writes reach the parent.
 */
describe('windows onto one shared memory object', { skip, timeout: 120_000 }, () => {
  const WINDOWS = join(WORKLOADS, 'windows');
  const shm = (pid: number): string => `/dev/shm/ferry-windows-${pid}`;

  it('memfd, POSIX shm and split shared anonymous windows come back as windows onto one object', async () => {
    const w = await startWorkload(WINDOWS, ['DIR']);
    shmObjects.push(shm(w.pid));
    const kids = childrenOf(w.pid);
    kids.forEach(own);
    const offsets = (pid: number): string[] => readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')
      .filter((l) => /\/dev\/zero|memfd:|ferry-windows/.test(l)).map((l) => l.split(/\s+/).slice(2, 3).concat(l.split(/\s+/).slice(5)).join(' '));
    const before = offsets(w.pid);
    const image = join(w.dir, 'windows.tar');
    await checkpointFreed(w, image);
    await waitFor('the child to be gone', () => !kids.some(alive));
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.deepEqual(offsets(w.pid), before, 'each window at its offset of its object');
    assert.equal(await verify(w), 'PASS');
  });

  it('--leave-running leaves them as they were', async () => {
    const w = await startWorkload(WINDOWS, ['DIR']);
    shmObjects.push(shm(w.pid));
    childrenOf(w.pid).forEach(own);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(await verify(w), 'PASS');
  });
});

/**
 * Pages only some descendants of a process share, their common ancestor having unmapped them
 * (issue 10, item 7; src/image/cow.ts, restore/cow.ts CowPlan): build/workloads/cowshare
 * maps 32 MiB of private anonymous memory, forks, and unmaps it once the sharers are set up.
 * "siblings": the root's two children share it; restore lends the pages through a temporary
 * area of the root, held only while they are forked, so they come back sharing one page frame
 * per page again (pagemap PFNs, root only) instead of a copy each (PSS 33 → 65 MiB before), and
 * the root's layout is exactly its own (every process's areas and their VmFlags in
 * /proc/PID/smaps as before: no area left behind). "cousins": two grandchildren under
 * different children share it; the first lends the pages through the root (`lentThrough`),
 * which holds a temporary area while it forks the children, each child keeping the area it
 * inherits only while it forks its grandchild (restore/cow.ts CowPlan.relayed): the
 * grandchildren share one frame per page again, and no ancestor maps anything there after.
 * "nephew": the root's first child and its second child's child share it, the second child
 * relaying the area the first lends through the root. "grandchild": the root keeps the area
 * and its grandchild inherits it through the child between, which unmapped it (relays);
 * "trio": the pages two siblings share (lent through the root) and their sibling's child
 * shares too, inherited through its parent: one frame for the three (the image stored them
 * twice before, and the PSS was 32 + 16 MiB instead of about 11 each). "sibcousin": two
 * grandchildren under the first child and the second child's child share it; the siblings lend
 * the pages through the root (not through their parent, whose area the cousin's branch never
 * passes through), both children relaying the area: one frame for the three (before, the
 * siblings shared one and the cousin stored its own: the image stored them twice).
 */
describe('copy-on-write pages the common ancestor unmapped', { skip, timeout: 300_000 }, () => {
  const COWSHARE = join(WORKLOADS, 'cowshare');
  const AREA_PAGES = 32 * 256;

  interface Shape {
    w: Workload;
    pids: number[];
    /** The processes that keep the area, two or three. */
    sharers: number[];
    area: bigint;
  }

  type Mode = 'siblings' | 'cousins' | 'nephew' | 'grandchild' | 'trio' | 'sibcousin';

  async function startShare(mode: Mode): Promise<Shape> {
    const w = await startWorkload(COWSHARE, [mode]);
    const m = /ready pid=\d+ pids=([\d,]+) sharers=([\d,]+) area=([0-9a-f]+)/.exec(w.text());
    assert.ok(m, w.text());
    const pids = m[1]!.split(',').map(Number);
    pids.forEach(own);
    return { w, pids, sharers: m[2]!.split(',').map(Number), area: BigInt(`0x${m[3]}`) };
  }

  /** Each area's maps line and VmFlags (/proc/PID/smaps). */
  const layout = (pid: number): string => readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')
    .filter((l) => /^[0-9a-f]+-[0-9a-f]+ /.test(l) || l.startsWith('VmFlags:')).join('\n');
  /** Every process's layout, by pid. */
  const layouts = (pids: readonly number[]): Map<number, string> => new Map(pids.map((p) => [p, layout(p)]));

  /** The page frame of each page of the area in `pid` (0: not present), from /proc/PID/pagemap (root: PFNs shown). */
  function frames(pid: number, area: bigint): bigint[] {
    const buf = Buffer.alloc(AREA_PAGES * 8);
    const fd = openSync(`/proc/${pid}/pagemap`, 'r');
    try {
      assert.equal(readSync(fd, buf, 0, buf.length, Number((area / 4096n) * 8n)), buf.length);
    } finally {
      closeSync(fd);
    }
    return Array.from({ length: AREA_PAGES }, (_, i) => {
      const e = buf.readBigUInt64LE(i * 8);
      return (e >> 63n) & 1n ? e & ((1n << 55n) - 1n) : 0n;
    });
  }

  /** How many pages of the area all the sharers have in one page frame. */
  function sharedPages(s: Shape): number {
    const [a, ...others] = s.sharers.map((p) => frames(p, s.area)) as [bigint[], ...bigint[][]];
    return a.filter((f, i) => f !== 0n && others.every((b) => f === b[i])).length;
  }

  /** The sharers' PSS, kB. */
  const sharersPss = (s: Shape): number => s.sharers.reduce((k, p) => k + rollup(p, 'Pss'), 0);

  /**
   * Asserts the tree is laid out as `before` says (every process's areas and their VmFlags) and
   * that the sharers share every page but their own few (8 written, 1 dropped each).
   */
  function assertAsBefore(s: Shape, before: Map<number, string>, what: string): void {
    for (const [pid, maps] of before) assert.equal(layout(pid), maps, `${what}: the layout of pid ${pid}`);
    const n = sharedPages(s);
    assert.ok(n >= AREA_PAGES - 9 * s.sharers.length, `${what}: the sharers have ${n} of ${AREA_PAGES} pages in one frame`);
    // 32 MiB shared by two (or three): about 16 (11) MiB each, not 32.
    assert.ok(sharersPss(s) < 40 * MIB, `${what}: the sharers' PSS is ${sharersPss(s)} kB`);
  }

  it('siblings: the pages come back shared through two cycles, every layout exact, the image storing them once', async () => {
    const s = await startShare('siblings');
    const was = layouts(s.pids);
    assertAsBefore(s, was, 'the original');
    let exited = s.w.exited;
    for (let cycle = 1; cycle <= 2; cycle++) {
      const image = join(s.w.dir, `share${cycle}.tar`);
      await checkpointFreed({ pid: s.w.pid, exited }, image, `checkpoint ${cycle}`);
      await waitFor('every pid of the tree to be free', () => !s.pids.some(alive));
      const size = statSync(image).size;
      assert.ok(size < 40 * MIB * 1024, `the image is ${size} bytes: the shared pages stored once`);
      await restoredWhole(image, s.w.dir);
      s.pids.forEach(own);
      assertAsBefore(s, was, `after restore ${cycle}`);
      exited = waitFor(`restored pid ${s.w.pid} to exit`, () => !alive(s.w.pid), 60_000);
    }
    assert.equal(await verify(s.w), 'PASS');
  });

  /** An edit giving a process an area of one page inside the shared area (one page after its start). */
  const mapsOneMorePage = (s: Shape) => (t: TaskRecord): void => {
    const start = s.area + 0x1000n;
    t.vmas.push({ start: `0x${start.toString(16)}`, end: `0x${(start + 0x1000n).toString(16)}`, prot: 3, shared: false, kind: 'anon', name: '', vmflags: ['ac'], runs: [], pagesOffset: 0 });
    t.vmas.sort((a, b) => (BigInt(a.start) < BigInt(b.start) ? -1 : 1));
  };

  /**
   * Restores `image` with each case's edit of one process's task.json: each refused in one line
   * matching its message, no process made, no stub left.
   */
  async function refusedEach(s: Shape, image: string, cases: ReadonlyArray<[string, number, (t: TaskRecord) => void, RegExp]>): Promise<void> {
    for (const [what, pid, change, message] of cases) {
      const edited = join(s.w.dir, `edited-${what.replace(/\W+/g, '-')}.tar`);
      await editImage(image, edited, [[`tasks/${pid}/task.json`, json<TaskRecord>(change)]]);
      const before = stubs({ zombies: true });
      const rs = ferry(['restore', '--image', edited]);
      assert.equal(rs.code, 1, `${what}: ${rs.stderr}`);
      assert.equal(rs.stderr.trimEnd().split('\n').length, 1, `${what}: one line`);
      assert.match(rs.stderr, message, what);
      assert.ok(!s.pids.some(alive), `${what}: no process made`);
      assert.deepEqual(stubs({ zombies: true }), before, `${what}: no stub left`);
    }
  }

  /**
   * `image` (cousins, nephew, sibcousin) edited so that the pages are lent through the lender's parent, or
   * through the root's parent, or a process between maps something over the area: each restore
   * refused in one line before anything is made (restore/cow.ts checkInherited).
   */
  async function refusedEdits(s: Shape, image: string): Promise<void> {
    const img = await openImage(image, { workDir: s.w.dir });
    const tasks = await Promise.all(s.pids.map(async (p) => await img.readJson(`tasks/${p}/task.json`) as TaskRecord));
    await img.close();
    const lender = tasks.find((t) => t.vmas.some((v) => v.start === `0x${s.area.toString(16)}` && (v.lent?.length ?? 0) > 0))!;
    assert.ok(lender !== undefined && s.sharers.includes(lender.pid), 'a sharer lends the pages');
    const borrower = s.sharers.find((p) => p !== lender.pid)!;
    const area = `0x${s.area.toString(16)}`;
    const at = (t: TaskRecord): VmaRecord => t.vmas.find((v) => v.start === area)!;
    // The borrower's parent, which maps nothing there: a process between.
    const between = tasks.find((t) => t.pid === tasks.find((u) => u.pid === borrower)!.ppid)!;
    assert.ok(between !== undefined && at(between) === undefined, 'the borrower\'s parent maps nothing there');
    const upOf = (t: TaskRecord): number => at(t).lentThrough ?? 1;
    const cases: Array<[string, number, (t: TaskRecord) => void, RegExp]> = [
      ['lent one generation less far up', lender.pid, (t) => {
        const v = at(t);
        if (upOf(t) > 2) v.lentThrough = upOf(t) - 1;
        else if (upOf(t) === 2) delete v.lentThrough;
        else v.lentThrough = 2;
      }, /pid \d+ vmas\[\d+\] \(0x[0-9a-f]+-0x[0-9a-f]+\) (inherits|lends) pages (\(lent\) )?through /],
      ['lent through the root\'s parent', lender.pid, (t) => { at(t).lentThrough = upOf(t) + 1; },
        // (sibcousin: another sibling lends through the root too, so the lender's area comes from it.)
        new RegExp(`pid ${lender.pid} vmas\\[\\d+\\] \\(${area}-0x[0-9a-f]+\\) lends pages (through pid ${s.w.pid}, which maps nothing there, from its parent \\d+, which is not a live process of the image listed before it`
          + `|\\(lent\\) through the process ${upOf(lender) + 1} generations up, but the area comes from pid ${s.w.pid}, ${upOf(lender)} up)`)],
      ['a process between maps something there', between.pid, mapsOneMorePage(s), /pid \d+ vmas\[\d+\] \(0x[0-9a-f]+-0x[0-9a-f]+\) (inherits pages \(cow\) from an area its parent \d+ does not map the same way|(lends|inherits) pages through pid \d+, which maps something else over that area)/],
    ];
    await refusedEach(s, image, cases);
  }

  /**
   * `image` (grandchild, trio) edited so that the process between the sharer further down and
   * the root maps something over the area, or (grandchild) the root maps its area otherwise:
   * each restore refused in one line before anything is made (restore/cow.ts checkInherited).
   */
  async function refusedRelayed(s: Shape, image: string): Promise<void> {
    const img = await openImage(image, { workDir: s.w.dir });
    const tasks = await Promise.all(s.pids.map(async (p) => await img.readJson(`tasks/${p}/task.json`) as TaskRecord));
    await img.close();
    const area = `0x${s.area.toString(16)}`;
    const at = (t: TaskRecord): VmaRecord | undefined => t.vmas.find((v) => v.start === area);
    // The sharer whose parent is not the root: it inherits through that parent, which relays.
    const deep = tasks.find((t) => s.sharers.includes(t.pid) && t.pid !== s.w.pid && t.ppid !== s.w.pid)!;
    assert.ok(deep !== undefined && (at(deep)!.cow?.length ?? 0) > 0 && at(deep)!.lentThrough === undefined, 'the sharer further down inherits the pages');
    const between = tasks.find((t) => t.pid === deep.ppid)!;
    assert.ok(at(between) === undefined, 'its parent maps nothing there');
    const cases: Array<[string, number, (t: TaskRecord) => void, RegExp]> = [
      ['a process between maps something there', between.pid, mapsOneMorePage(s), new RegExp(`pid ${deep.pid} vmas\\[\\d+\\] \\(${area}-0x[0-9a-f]+\\) inherits pages \\(cow\\) from an area its parent ${between.pid} does not map the same way`)],
    ];
    if (at(tasks[0]!)) {
      cases.push(['the root maps the area otherwise', s.w.pid, (t) => { at(t)!.prot ^= 2; },
        new RegExp(`pid ${deep.pid} vmas\\[\\d+\\] \\(${area}-0x[0-9a-f]+\\) inherits pages \\(cow\\) from an area pid ${s.w.pid} \\(through its parent ${between.pid}, which maps nothing there\\) does not map the same way`)]);
    }
    await refusedEach(s, image, cases);
  }

  /**
   * The pages of the shared area `image` stores, summed over every process: each page once
   * (the sharers' common ones by one of them) plus each sharer's 8 own.
   */
  async function assertAreaStoredOnce(s: Shape, image: string): Promise<void> {
    const img = await openImage(image, { workDir: s.w.dir });
    const tasks = await Promise.all(s.pids.map(async (p) => await img.readJson(`tasks/${p}/task.json`) as TaskRecord));
    await img.close();
    const area = `0x${s.area.toString(16)}`;
    const stored = tasks.flatMap((t) => t.vmas.filter((v) => v.start === area)).reduce((k, v) => k + v.runs.reduce((n, [, c]) => n + c, 0), 0);
    assert.ok(stored <= AREA_PAGES + 8 * s.sharers.length, `the image stores ${stored} pages of the area, at most ${AREA_PAGES + 8 * s.sharers.length} (each once)`);
  }

  /**
   * Checkpoints `mode`'s tree with --leave-running (it runs on as it was, sharing as before)
   * into an image that stores the shared pages once, lets it end, restores the image: the
   * same layouts, the sharers sharing the pages again.
   */
  const leftThenRestored = async (mode: Mode): Promise<void> => {
    const s = await startShare(mode);
    const was = layouts(s.pids);
    const image = join(s.w.dir, `${mode}.tar`);
    const cp = ferry(['checkpoint', '--pid', String(s.w.pid), '--image', image, '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    // 32 MiB shared by the two sharers, stored once (not twice).
    const size = statSync(image).size;
    assert.ok(size < 40 * MIB * 1024, `the image is ${size} bytes: the shared pages stored once`);
    await assertAreaStoredOnce(s, image);
    assertAsBefore(s, was, 'left running');
    assert.equal(await verify(s.w), 'PASS');
    await s.w.exited;
    await waitFor('every pid of the tree to be free', () => !s.pids.some(alive));
    if (mode === 'cousins' || mode === 'nephew' || mode === 'sibcousin') await refusedEdits(s, image);
    if (mode === 'grandchild' || mode === 'trio') await refusedRelayed(s, image);
    await restoredWhole(image, s.w.dir);
    s.pids.forEach(own);
    assertAsBefore(s, was, 'restored');
    assert.equal(await askVerdict(s.w.pid, s.w.text), 'PASS'); // its second verdict
  };

  it('siblings --leave-running: the tree runs on sharing them, and the image restores them shared', () => leftThenRestored('siblings'));

  it('cousins: left running and restored, the grandchildren share the pages again, no ancestor maps the area', () => leftThenRestored('cousins'));

  it('nephew: left running and restored, a child and its sibling\'s child share the pages again, neither process above them maps the area', () => leftThenRestored('nephew'));

  it('grandchild: left running and restored, the root and its grandchild share the pages again, the child between relaying them', () => leftThenRestored('grandchild'));

  it('trio: left running and restored, two siblings and their sibling\'s child share the pages again in one frame', () => leftThenRestored('trio'));

  it('sibcousin: left running and restored, two siblings and their cousin share the pages again in one frame, lent through the root', () => leftThenRestored('sibcousin'));
});
