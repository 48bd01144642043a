/**
 * Copy-on-write pages after fork, the pure logic (src/image/cow.ts, src/proc/pagemap.ts,
 * src/restore/cow.ts, src/restore/validate.ts): which areas a child can inherit, which pages
 * pagemap shows shared, what a kept area drops, which pages siblings lend through their parent,
 * which pages cousins lend through their common ancestor and who relays them, which pages a
 * process inherits from an ancestor through a parent that unmapped them, and the refusals of edited `cow` and `lent` runs, each one line naming the pid and area. The real thing runs in test/integration/cow.test.ts.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { FerryError } from '../../src/errors.js';
import { inheritable, pageSet, runsOf } from '../../src/image/cow.js';
import type { TaskRecord, TreeRecord, VmaRecord } from '../../src/image/records.js';
import { sharedAnonPages, sharedFrames, sharedWithParent } from '../../src/proc/pagemap.js';
import { checkInherited, pagesToDrop, storedParts } from '../../src/restore/cow.js';
import { checkCowPlan } from '../../src/dump/checkpoint.js';
import { inheritThroughRelays, shareAcrossBranches, type PlannedProcess } from '../../src/dump/cow-branches.js';

const area = (over: Partial<VmaRecord> = {}): VmaRecord => ({
  start: '0x10000', end: '0x20000', prot: 3, shared: false, kind: 'anon', name: '', vmflags: ['ac'], runs: [], pagesOffset: 0, ...over,
});

/** pagemap entries: [present, file, exclusive, pfn] per page. */
function pagemap(pages: Array<[boolean, boolean, boolean, bigint]>): Buffer {
  const b = Buffer.alloc(pages.length * 8);
  pages.forEach(([present, file, exclusive, pfn], i) => {
    b.writeBigUInt64LE((present ? 1n << 63n : 0n) | (file ? 1n << 61n : 0n) | (exclusive ? 1n << 56n : 0n) | pfn, i * 8);
  });
  return b;
}

const task = (pid: number, vmas: VmaRecord[]): TaskRecord => ({ pid, vmas } as unknown as TaskRecord);


/** checkInherited refuses `tasks` of `tree` as an edited image: EIMAGE, one line, `message`. */
function refusedInherited(tree: TreeRecord, tasks: TaskRecord[], message: RegExp): void {
  assert.throws(() => checkInherited(tree, tasks), (err: FerryError) => {
    assert.equal(err.code, 'EIMAGE');
    assert.equal(err.message.split('\n').length, 1);
    assert.match(err.message, message);
    return true;
  });
}
describe('copy-on-write after fork: pure logic', () => {
  it('an area is inheritable only as the same private mapping, mlock aside', () => {
    assert.ok(inheritable(area(), area()));
    assert.ok(inheritable(area({ vmflags: ['ac', 'lo'] }), area({ vmflags: ['ac'] })), 'mlock is not inherited');
    assert.ok(!inheritable(area(), area({ prot: 1 })));
    assert.ok(!inheritable(area(), area({ end: '0x21000' })));
    assert.ok(!inheritable(area(), area({ shared: true })));
    assert.ok(!inheritable(area({ vmflags: ['ac', 'wf'] }), area({ vmflags: ['ac', 'wf'] })), 'wipe-on-fork');
    assert.ok(!inheritable(area({ vmflags: ['ac', 'dc'] }), area({ vmflags: ['ac', 'dc'] })), 'don\'t-fork');
    const file = { path: '/f', offset: '0x0', dev: '8:1', ino: '3', size: 4096, mtimeNs: '1' };
    assert.ok(inheritable(area({ kind: 'file', file }), area({ kind: 'file', file: { ...file, size: 8192 } })));
    assert.ok(!inheritable(area({ kind: 'file', file }), area({ kind: 'file', file: { ...file, ino: '4' } })));
    assert.ok(!inheritable(area({ kind: 'vdso' }), area({ kind: 'vdso' })));
  });

  it('pagemap: a page is shared with the parent only present, anonymous, not exclusive and at the same frame', () => {
    const mine = pagemap([[true, false, false, 5n], [true, false, true, 6n], [true, true, false, 7n], [true, false, false, 8n], [true, false, false, 0n], [false, false, false, 0n]]);
    const theirs = pagemap([[true, false, false, 5n], [true, false, false, 6n], [true, true, false, 7n], [true, false, false, 9n], [true, false, false, 0n], [true, false, false, 0n]]);
    assert.deepEqual([...sharedWithParent(mine, theirs)], [1, 0, 0, 0, 0, 0]);
    // A frame number above 32 bits compares whole.
    assert.deepEqual([...sharedWithParent(pagemap([[true, false, false, (1n << 40n) | 3n]]), pagemap([[true, false, false, 3n]]))], [0]);
    assert.deepEqual([...sharedAnonPages(mine)!], [1, 0, 0, 1, 1, 0]);
    assert.equal(sharedAnonPages(pagemap([[true, false, true, 1n]])), undefined);
  });

  it('pagemap: the frames of shared pages, 0 elsewhere', () => {
    const f = sharedFrames(pagemap([[true, false, false, 5n], [true, false, true, 6n], [true, true, false, 7n], [false, false, false, 0n], [true, false, false, (1n << 40n) | 3n]]));
    assert.deepEqual([...f], [5, 0, 0, 0, 2 ** 40 + 3]);
  });

  it('lent pages: the stored parts written (less the lent ones) and the lent ones, with their offsets in the entry', () => {
    const v = area({ runs: [[0, 4], [10, 3]], pagesOffset: 8192, lent: [[1, 2], [11, 2]] });
    assert.deepEqual(storedParts(v), [[0, 1, 8192], [3, 1, 8192 + 3 * 4096], [10, 1, 8192 + 4 * 4096]]);
    assert.deepEqual(storedParts(v, true), [[1, 2, 8192 + 4096], [11, 2, 8192 + 5 * 4096]]);
    assert.deepEqual(storedParts(area({ runs: [[2, 3]] })), [[2, 3, 0]]);
    assert.deepEqual(storedParts(area({ runs: [[2, 3]], lent: [[2, 3]] })), []);
  });

  it('the parent at fork counts its children\'s lent pages as its own', () => {
    const tree: TreeRecord = { root: 10, processes: [{ pid: 10, ppid: 1, pgid: 10, sid: 10, zombie: null }, { pid: 11, ppid: 10, pgid: 10, sid: 10, zombie: null }] };
    const parent = task(10, [area({ runs: [[0, 2]] }), area({ start: '0x30000', end: '0x40000' })]);
    const kid = task(11, [area({ runs: [[4, 2]], lent: [[4, 2]] })]);
    const plan = checkInherited(tree, [parent, kid]);
    const at = plan.atFork(10);
    assert.deepEqual(at.vmas[0]!.cow, [[4, 2]]);
    assert.equal(at.vmas[1], parent.vmas[1]);
    assert.deepEqual(pagesToDrop(at.vmas[0]!, area({ cow: [[4, 1]] })), [[0, 2], [5, 1]]);
    assert.ok(plan.late(11) && !plan.late(10));
    assert.equal(checkInherited(tree, [parent]).atFork(10), parent);
  });

  it('page sets and runs', () => {
    assert.deepEqual(runsOf(pageSet(10, [[1, 2]], [[3, 1], [7, 2]])), [[1, 3], [7, 2]]);
  });

  it('a kept area drops what the parent has and the child neither stores nor inherits', () => {
    const parent = area({ runs: [[0, 4], [10, 2]], cow: [[6, 2]] });
    assert.deepEqual(pagesToDrop(parent, area({ runs: [[1, 1]], cow: [[0, 1], [3, 1], [6, 1]] })), [[2, 1], [7, 1], [10, 2]]);
    assert.deepEqual(pagesToDrop(parent, area({ cow: [[0, 12]] })), []);
  });

  describe('an edited image is refused before anything is made', () => {
    const tree: TreeRecord = { root: 10, processes: [{ pid: 10, ppid: 1, pgid: 10, sid: 10, zombie: null }, { pid: 11, ppid: 10, pgid: 10, sid: 10, zombie: null },
      { pid: 12, ppid: 10, pgid: 10, sid: 10, zombie: null }] };
    const refused = (tasks: TaskRecord[], message: RegExp): void => refusedInherited(tree, tasks, message);
    const parent = task(10, [area({ runs: [[0, 8]] })]);

    it('a child inheriting what its parent has passes', () => {
      checkInherited(tree, [parent, task(11, [area({ runs: [[0, 1]], cow: [[1, 7]] })])]);
    });
    it('a checkpoint whose own plan restore would refuse stops before anything is written (a bug, not the image\'s)', () => {
      checkCowPlan(4242, tree, [parent, task(11, [area({ runs: [[0, 1]], cow: [[1, 7]] })])]);
      assert.throws(() => checkCowPlan(4242, tree, [task(10, [area({ cow: [[0, 1]] })])]), (err: FerryError) => {
        assert.equal(err.code, 'EINTERNAL');
        assert.equal(err.message.split('\n').length, 1);
        assert.match(err.message, /^checkpoint of pid 4242: the pages its processes share copy-on-write were planned so that restore would refuse them \(pid 10 inherits pages \(cow\) from its parent 1, which is not a live process of the image listed before it\): a bug of ferry \(please report it with this line\); the process was left running$/);
        return true;
      });
    });
    it('no parent of the image (the root)', () => {
      refused([task(10, [area({ cow: [[0, 1]] })])], /pid 10 inherits pages \(cow\) from its parent 1, which is not a live process of the image listed before it/);
    });
    it('a parent listed after it', () => {
      refused([task(11, [area({ cow: [[0, 1]] })]), parent], /pid 11 inherits pages \(cow\) from its parent 10, which is not a live process/);
    });
    it('an area the parent has not', () => {
      refused([parent, task(11, [area({ start: '0x11000', cow: [[0, 1]] })])], /pid 11 vmas\[0\] \(0x11000-0x20000\) inherits pages \(cow\) from an area its parent 10 does not map the same way/);
      refused([parent, task(11, [area({ prot: 1, cow: [[0, 1]] })])], /does not map the same way/);
    });
    it('pages the parent has not', () => {
      refused([parent, task(11, [area({ cow: [[6, 4]] })])], /pid 11 vmas\[0\] inherits pages 6-9 \(cow\) that its parent 10 has not all in the same area/);
    });
    it('pages a sibling lends count as the parent\'s; two lending one page are refused', () => {
      const lender = task(11, [area({ runs: [[8, 2]], lent: [[8, 2]] })]);
      checkInherited(tree, [parent, lender, task(12, [area({ cow: [[0, 10]] })])]);
      refused([parent, lender, task(12, [area({ cow: [[0, 11]] })])], /pid 12 vmas\[0\] inherits pages 0-10 \(cow\) that its parent 10 has not all/);
      refused([parent, lender, task(12, [area({ runs: [[9, 1]], lent: [[9, 1]] })])], /two descendants of pid 10 lend the same pages of its area at 0x10000 \(lent\)/);
      refused([parent, task(11, [area({ runs: [[0, 1]], lent: [[0, 1]], prot: 1 })])], /pid 11 vmas\[0\] \(0x10000-0x20000\) lends pages \(lent\) through an area its parent 10 does not map the same way/);
      // Its pages would be written into the parent's area it overlaps.
      refused([parent, task(11, [area({ start: '0x11000', runs: [[0, 1]], lent: [[0, 1]] })])],
        /pid 11 vmas\[0\] \(0x11000-0x20000\) lends pages \(lent\) through an area its parent 10 does not map, which it cannot hold for it/);
    });
    it('pages siblings lend through an area their parent unmapped: held for a moment as the first lender maps it', () => {
      const away = { start: '0x40000', end: '0x48000' };
      const lender = task(11, [area({ ...away, runs: [[0, 8]], lent: [[2, 4]] })]);
      checkInherited(tree, [parent, lender, task(12, [area({ ...away, runs: [[0, 1]], cow: [[2, 3]] })])]);
      refused([parent, lender, task(12, [area({ ...away, cow: [[1, 2]] })])], /pid 12 vmas\[0\] inherits pages 1-2 \(cow\) that its parent 10 has not all in the same area/);
      refused([parent, lender, task(12, [area({ ...away, prot: 1, cow: [[2, 1]] })])], /pid 12 vmas\[0\] \(0x40000-0x48000\) inherits pages \(cow\) from an area its parent 10 does not map the same way/);
      // No plain private anonymous area: a temporary one would not be the same mapping.
      refused([parent, task(11, [area({ ...away, name: '[heap]', runs: [[0, 1]], lent: [[0, 1]] })])], /lends pages \(lent\) through an area its parent 10 does not map, which it cannot hold/);
      refused([parent, task(11, [area({ ...away, vmflags: ['ac', 'lo'], runs: [[0, 1]], lent: [[0, 1]] })])], /which it cannot hold/);
      // Two temporary areas over one another cannot be held at once.
      refused([parent, lender, task(12, [area({ start: '0x44000', end: '0x50000', runs: [[0, 1]], lent: [[0, 1]] })])],
        /descendants of pid 10 lend pages through areas at 0x40000 and 0x44000 that overlap, which it does not map/);
      // As the children find it at fork: its own areas, and the temporary one in address order.
      const plan = checkInherited(tree, [parent, lender]);
      const at = plan.atFork(10);
      assert.deepEqual(at.vmas.map((v) => [v.start, v.runs, v.cow]), [['0x10000', [[0, 8]], undefined], ['0x40000', [], [[2, 4]]]]);
      assert.deepEqual(plan.temporary(10).map((v) => v.start), ['0x40000']);
      assert.equal(plan.temporary(10)[0]!.lent, undefined);
      assert.deepEqual(plan.relayed(11), []);
      assert.deepEqual(pagesToDrop(at.vmas[1]!, area({ ...away, runs: [[0, 1]], cow: [[2, 3]] })), [[5, 1]]);
    });
  });

  describe('pages lent across branches: relayed by every process between', () => {
    // 10 forks 11 and 12, each forks one (13, 14); none of 10, 11, 12 maps 0x40000 any more.
    const proc = (pid: number, ppid: number): TreeRecord['processes'][number] => ({ pid, ppid, pgid: 10, sid: 10, zombie: null });
    const tree: TreeRecord = { root: 10, processes: [proc(10, 1), proc(11, 10), proc(12, 10), proc(13, 11), proc(14, 12), proc(15, 11)] };
    const away = { start: '0x40000', end: '0x48000' };
    const root = task(10, [area({ runs: [[0, 8]] })]);
    const mid = (pid: number, vmas: VmaRecord[] = []): TaskRecord => task(pid, vmas);
    const lender = task(13, [area({ ...away, runs: [[0, 8]], lent: [[1, 6]], lentThrough: 2 })]);
    const borrower = task(14, [area({ ...away, runs: [[0, 1]], cow: [[1, 6]] })]);
    const refused = (tasks: TaskRecord[], message: RegExp): void => refusedInherited(tree, tasks, message);

    it('cousins: the ancestor holds a temporary area, each child between relays it, the grandchildren inherit', () => {
      const plan = checkInherited(tree, [root, mid(11), mid(12), lender, borrower]);
      assert.deepEqual(plan.temporary(10).map((v) => [v.start, v.end]), [['0x40000', '0x48000']]);
      assert.deepEqual(plan.temporary(11), []);
      for (const pid of [11, 12]) {
        assert.ok(plan.late(pid), `${pid} is forked from its parent`);
        assert.deepEqual(plan.relayed(pid).map((v) => [v.start, v.cow]), [['0x40000', [[1, 6]]]], `${pid} relays the area`);
        assert.deepEqual(plan.atFork(pid).vmas.map((v) => v.start), ['0x40000']);
      }
      assert.deepEqual(plan.relayed(13), []);
      assert.deepEqual(plan.lentThrough(10).map((l) => l.task.pid), [13]);
      assert.deepEqual(plan.lentThrough(11), []);
      // The grandchild drops what the relayed area has that it has not.
      assert.deepEqual(pagesToDrop(plan.atFork(12).vmas[0]!, borrower.vmas[0]!), []);
      assert.deepEqual(pagesToDrop(plan.atFork(12).vmas[0]!, area({ ...away, cow: [[1, 2]] })), [[3, 4]]);
    });
    it('a child and a grandchild under another child: the child lends through its parent, the grandchild\'s parent relays', () => {
      const child = task(11, [area({ ...away, runs: [[0, 8]], lent: [[1, 6]] })]);
      const plan = checkInherited(tree, [root, child, mid(12), mid(13), borrower]);
      assert.ok(!plan.late(13) && plan.late(12) && plan.late(11));
      assert.deepEqual(plan.relayed(12).map((v) => v.start), ['0x40000']);
      assert.deepEqual(plan.relayed(11), []);
    });
    it('a grandchild inheriting from the root through its parent, which maps nothing there: the parent relays', () => {
      const plan = checkInherited(tree, [root, mid(11), mid(12), mid(13), task(14, [area({ start: '0x10000', end: '0x20000', runs: [[0, 1]], cow: [[1, 7]] })])]);
      assert.ok(plan.late(14) && plan.late(12) && !plan.late(11));
      assert.deepEqual(plan.relayed(12).map((v) => [v.start, v.runs]), [['0x10000', [[0, 8]]]]);
      refused([root, mid(11), mid(12), mid(13), task(14, [area({ start: '0x10000', end: '0x20000', cow: [[1, 8]] })])],
        /pid 14 vmas\[0\] inherits pages 1-8 \(cow\) that pid 10 \(through its parent 12, which maps nothing there\) has not all in the same area/);
    });
    it('refused: lent further up than the tree goes, through a process mapping the area, or over a relay\'s own area', () => {
      refused([root, mid(11), mid(12), task(13, [area({ ...away, runs: [[0, 8]], lent: [[1, 6]], lentThrough: 4 })])],
        /pid 13 vmas\[0\] lends pages \(lent\) through an ancestor 4 generations up, which tree.json has not/);
      refused([root, mid(11), mid(12), task(13, [area({ ...away, runs: [[0, 8]], lent: [[1, 6]], lentThrough: 3 })])],
        /pid 13 vmas\[0\] \(0x40000-0x48000\) lends pages through pid 10, which maps nothing there, from its parent 1, which is not a live process/);
      refused([root, mid(11, [area({ ...away, runs: [[0, 8]] })]), mid(12), lender, borrower],
        /pid 13 vmas\[0\] \(0x40000-0x48000\) lends pages \(lent\) through the process 2 generations up, but the area comes from pid 11, 1 up/);
      refused([root, mid(11), mid(12, [area({ start: '0x44000', end: '0x45000' })]), lender, borrower],
        /pid 14 vmas\[0\] \(0x40000-0x48000\) inherits pages \(cow\) from an area its parent 12 does not map the same way/);
      refused([root, mid(11, [area({ start: '0x44000', end: '0x45000' })]), mid(12), lender, borrower],
        /pid 13 vmas\[0\] \(0x40000-0x48000\) lends pages through pid 11, which maps something else over that area/);
      // Pages the ancestor's area has not, through the relay.
      refused([root, mid(11), mid(12), lender, task(14, [area({ ...away, cow: [[0, 2]] })])],
        /pid 14 vmas\[0\] inherits pages 0-1 \(cow\) that pid 10 \(through its parent 12, which maps nothing there\) has not all in the same area/);
      // A relay holding another area over this one for its own children.
      const other = task(15, [area({ start: '0x44000', end: '0x50000', runs: [[0, 2]], lent: [[0, 1]] })]);
      refused([root, mid(11), mid(12), lender, borrower, other], /pid 11 would hold areas at 0x40000 and 0x44000 that overlap for its descendants/);
    });
  });

  describe('pages a process shares with an ancestor further up than its parent (dump/cow-branches.ts inheritThroughRelays)', () => {
    const away = { start: '0x40000', end: '0x48000' };
    /** A planned process whose area `v` has these page frames (pagemap, 0n: not present). */
    const planned = (pid: number, ppid: number, vmas: VmaRecord[], frames: bigint[] = [], ownPages = false): PlannedProcess => ({
      pid, ppid, ownPages,
      plan: {
        vmas, pagesBytes: vmas.reduce((n, v) => n + v.runs.reduce((k, [, c]) => k + c * 4096, 0), 0),
        pagemaps: new Map(vmas.filter((v) => v.start === away.start).map((v) => [v.start, pagemap(frames.map((f): [boolean, boolean, boolean, bigint] => [f !== 0n, false, false, f]))])),
      },
    });
    const frames = (...f: number[]): bigint[] => f.map(BigInt);

    it('a grandchild inherits the pages it shares with its grandparent, its parent having unmapped them', () => {
      const top = planned(10, 1, [area({ ...away, runs: [[0, 8]] })], frames(100, 101, 102, 103, 104, 105, 106, 107));
      const grandchild = planned(12, 11, [area({ start: '0x10000', runs: [[0, 1]] }), area({ ...away, runs: [[0, 8]], pagesOffset: 4096 })], frames(100, 101, 102, 999, 104, 105, 106, 107));
      assert.deepEqual(inheritThroughRelays([top, planned(11, 10, []), grandchild]), [12]);
      const v = grandchild.plan.vmas[1]!;
      assert.deepEqual([v.runs, v.cow, v.lent], [[[3, 1]], [[0, 3], [4, 4]], undefined]);
      assert.equal(grandchild.plan.pagesBytes, 2 * 4096, 'repacked');
      // The walk restore would refuse: a parent forked by a sibling, or mapping something over the area.
      for (const between of [planned(11, 10, [], [], true), planned(11, 10, [area({ start: '0x44000', end: '0x45000' })])]) {
        const again = planned(12, 11, [area({ ...away, runs: [[0, 8]] })], frames(100, 101, 102, 999, 104, 105, 106, 107));
        assert.deepEqual(inheritThroughRelays([top, between, again]), []);
      }
    });

    it('siblings\' lent pages and their sibling\'s child: it inherits them through the root\'s temporary area', () => {
      const lender = planned(11, 10, [area({ ...away, runs: [[0, 8]], lent: [[0, 8]] })], frames(200, 201, 202, 203, 204, 205, 206, 207));
      const borrower = planned(12, 10, [area({ ...away, cow: [[0, 8]] })]);
      const nephew = planned(14, 13, [area({ ...away, runs: [[0, 8]] })], frames(200, 201, 202, 203, 300, 0, 206, 207));
      assert.deepEqual(inheritThroughRelays([planned(10, 1, []), lender, borrower, planned(13, 10, []), nephew]), [14]);
      assert.deepEqual([nephew.plan.vmas[0]!.runs, nephew.plan.vmas[0]!.cow], [[[4, 2]], [[0, 4], [6, 2]]]);
    });

    it('trio: the lending sibling lends as well what it shares with its sibling\'s child only, which inherits every page', () => {
      const lender = planned(11, 10, [area({ ...away, runs: [[0, 8]], lent: [[0, 6]] })], frames(200, 201, 202, 203, 204, 205, 206, 207));
      const borrower = planned(12, 10, [area({ ...away, runs: [[6, 2]], cow: [[0, 6]] })], frames(200, 201, 202, 203, 204, 205, 806, 807));
      const nephew = planned(14, 13, [area({ ...away, runs: [[0, 8]] })], frames(200, 201, 202, 203, 204, 205, 206, 207));
      const tree = [planned(10, 1, []), lender, borrower, planned(13, 10, []), nephew];
      assert.deepEqual([...shareAcrossBranches(tree), ...inheritThroughRelays(tree)], [11, 14, 14]);
      assert.deepEqual([lender.plan.vmas[0]!.lent, lender.plan.vmas[0]!.lentThrough], [[[0, 8]], undefined]);
      assert.deepEqual([nephew.plan.vmas[0]!.runs, nephew.plan.vmas[0]!.cow], [[], [[0, 8]]]);
    });

    // 10 forks 11 and 12 and unmaps the area; 11 forks 13 and 15, 12 forks 14, each child unmapping it.
    const sibcousin = (cousin: bigint[]): PlannedProcess[] => [
      planned(10, 1, []), planned(11, 10, []),
      planned(13, 11, [area({ ...away, runs: [[0, 8]], lent: [[0, 6]] })], frames(100, 101, 102, 103, 104, 105, 0, 0)), // 6-7 its own (exclusive)
      planned(15, 11, [area({ ...away, runs: [[6, 2]], cow: [[0, 6]] })], frames(100, 101, 102, 103, 104, 105, 106, 107)),
      planned(12, 10, []), planned(14, 12, [area({ ...away, runs: [[0, 8]] })], cousin),
    ];
    const proc = (pid: number, ppid: number): TreeRecord['processes'][number] => ({ pid, ppid, pgid: 10, sid: 10, zombie: null });
    const sibcousinTree: TreeRecord = { root: 10, processes: [proc(10, 1), proc(11, 10), proc(13, 11), proc(15, 11), proc(12, 10), proc(14, 12)] };

    it('sibcousin: siblings lending through their parent lend through the root instead when their cousin shares the pages, both children relaying', () => {
      const tree = sibcousin(frames(100, 101, 102, 103, 104, 999, 106, 107));
      assert.deepEqual(shareAcrossBranches(tree), [13, 15, 14]);
      const [, , a1, a2, , b1] = tree.map((p) => p.plan.vmas[0]);
      assert.deepEqual([a1!.runs, a1!.lent, a1!.lentThrough], [[[0, 8]], [[0, 6]], 2]);
      assert.deepEqual([a2!.runs, a2!.cow, a2!.lent, a2!.lentThrough], [[[6, 2]], [[0, 6]], [[6, 2]], 2]);
      assert.deepEqual([b1!.runs, b1!.cow], [[[5, 1]], [[0, 5], [6, 2]]]);
      // What restore makes of it: the root holds the area, both children relay it.
      const plan = checkInherited(sibcousinTree, tree.map((p) => task(p.pid, p.plan.vmas)));
      assert.deepEqual(plan.temporary(10).map((v) => v.start), [away.start]);
      assert.deepEqual(plan.temporary(11), []);
      for (const pid of [11, 12]) assert.deepEqual(plan.relayed(pid).map((v) => [v.start, v.cow]), [[away.start, [[0, 8]]]], `${pid} relays the area`);
      assert.deepEqual(plan.lentThrough(10).map((l) => l.task.pid), [13, 15]);
    });

    it('sibcousin: left as it is where the cousin shares nothing with them, or where two lenders would lend one page', () => {
      const apart = sibcousin(frames(300, 301, 302, 303, 304, 305, 306, 307));
      assert.deepEqual(shareAcrossBranches(apart), []);
      assert.equal(apart[2]!.plan.vmas[0]!.lentThrough, undefined);
      // 12 forks 14 and 16, which lend among themselves at other frames than 13's but on pages 0-1.
      const two = [...sibcousin([]).slice(0, 5),
        planned(14, 12, [area({ ...away, runs: [[0, 8]], lent: [[0, 4]] })], frames(100, 101, 402, 403, 404, 405, 406, 407)),
        planned(16, 12, [area({ ...away, runs: [[4, 4]], cow: [[0, 4]] })], frames(100, 101, 402, 403, 504, 505, 506, 507))];
      assert.deepEqual(shareAcrossBranches(two), []);
      assert.deepEqual(two.map((p) => p.plan.vmas[0]?.lentThrough), [undefined, undefined, undefined, undefined, undefined, undefined, undefined]);
    });
  });
});
