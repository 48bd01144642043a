/**
 * io_setup(2) rings (src/image/aio-ring.ts): the io_setup argument that makes a ring of a given
 * size, the header checks of the dump, and the bounds an image's ring is held to before
 * anything is made (restore/validate.ts).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { AIO_RING_MAX_PAGES, parseRingHeader, ringEvents, ringHeaderProblem, setupEventsFor, setupPages } from '../../src/image/aio-ring.js';
import { FerryError } from '../../src/errors.js';
import { REG_NAMES } from '../../src/arch/x86-64.js';
import { validateTask } from '../../src/restore/validate.js';
import type { TaskRecord, VmaRecord } from '../../src/image/records.js';

describe('the size of an io_setup(2) ring', () => {
  it('follows fs/aio.c: 2 * max(n, 4 * CPUs) + 2 events and the header, in whole pages', () => {
    // What this kernel made on a machine of 2 possible CPUs (1, 128 and 1000 events).
    assert.equal(setupPages(1, 2), 1);
    assert.equal(setupPages(128, 2), 3);
    assert.equal(setupPages(1000, 2), 16);
    assert.deepEqual([1, 3, 16].map(ringEvents), [127, 383, 2047]);
  });

  it('is made again by the least argument giving the same pages, where this machine can', () => {
    for (const cpus of [1, 2, 8, 64]) {
      for (const pages of [1, 2, 3, 16, 100, 4096, AIO_RING_MAX_PAGES]) {
        const n = setupEventsFor(pages, cpus);
        if (n === undefined) {
          assert.ok(setupPages(1, cpus) > pages, `${pages} pages with ${cpus} CPUs`);
          continue;
        }
        assert.equal(setupPages(n, cpus), pages, `${pages} pages with ${cpus} CPUs`);
        if (n > 1) assert.ok(setupPages(n - 1, cpus) < pages, `${n} is the least for ${pages} pages`);
      }
    }
    // 64 possible CPUs: at least 512 events, doubled, so 5 pages; a smaller ring cannot be made.
    assert.equal(setupEventsFor(1, 64), undefined);
    assert.equal(setupEventsFor(AIO_RING_MAX_PAGES + 1, 2), undefined);
    assert.equal(setupEventsFor(0, 2), undefined);
  });

  it('a header is checked against what aio_setup_ring writes', () => {
    const header = (nr: number, tail = 0, magic = 0xa10a10a1): Buffer => {
      const b = Buffer.alloc(32);
      [0, nr, 0, tail, magic, 1, 0, 32].forEach((v, i) => b.writeUInt32LE(v, i * 4));
      return b;
    };
    assert.equal(ringHeaderProblem(parseRingHeader(header(127, 5)), 4096), undefined);
    assert.match(ringHeaderProblem(parseRingHeader(header(127, 0, 0)), 4096)!, /not an aio ring's/);
    assert.match(ringHeaderProblem(parseRingHeader(header(383)), 4096)!, /383 events, which do not fill its 4096 bytes/);
    assert.match(ringHeaderProblem(parseRingHeader(header(127, 127)), 4096)!, /tail 127 is not below/);
  });
});

/** A valid task with one ring of `pages` pages at 0x10000 holding `events` events, and a stack above it. */
function task(pages = 1, events = 1): TaskRecord {
  const ring: VmaRecord = {
    start: '0x10000', end: `0x${(0x10000 + pages * 4096).toString(16)}`, prot: 3, shared: true, kind: 'aio', name: '/[aio]',
    vmflags: [], runs: [], pagesOffset: 0, aio: { nr: ringEvents(pages), events: Buffer.alloc(events * 32, 7).toString('base64') },
  };
  return {
    pid: 100, ppid: 1, pgid: 100, sid: 100, comm: 'w', exe: '/bin/w', cwd: '/', umask: 18,
    mm: {
      ...Object.fromEntries(['startCode', 'endCode', 'startData', 'endData', 'startBrk', 'brk', 'startStack', 'argStart',
        'argEnd', 'envStart', 'envEnd'].map((k) => [k, '0x1000'])) as unknown as TaskRecord['mm'],
      auxv: [['0x0', '0x0']],
    },
    vmas: [ring, { start: '0x7f0000000000', end: '0x7f0000001000', prot: 3, shared: false, kind: 'anon', name: '[stack]', vmflags: ['gd'], runs: [], pagesOffset: 0 }],
    sigactions: [], sharedPending: [],
    itimers: { real: { interval: [0, 0], value: [0, 0] }, virtual: { interval: [0, 0], value: [0, 0] }, prof: { interval: [0, 0], value: [0, 0] }, posix: [] },
    stopped: false,
    threads: [{
      tid: 100, regs: Object.fromEntries(REG_NAMES.map((r) => [r, '0x0'])) as TaskRecord['threads'][number]['regs'], xstate: 'tasks/100/xstate-100.bin', sigmask: '0x0',
      sigaltstack: { sp: '0x0', flags: 2, size: '0x0' }, rseq: null, robustList: { head: '0x0', len: 24 }, tidAddress: '0x0', comm: 'w', pending: [],
    }],
    fds: [],
    pagesBytes: 0,
    creds: {
      rlimits: Array.from({ length: 16 }, (): [string, string] => ['0x0', '0xffffffffffffffff']), oomScoreAdj: 0, dumpable: 1, childSubreaper: false,
      seccompFilters: [],
      threads: [{
        tid: 100, uids: [0, 0, 0, 0], gids: [0, 0, 0, 0], groups: [], caps: { effective: '0x0', permitted: '0x0', inheritable: '0x0', bounding: '0x0', ambient: '0x0' },
        securebits: 0, noNewPrivs: false, personality: 0, sched: { policy: 0, priority: 0, nice: 0, resetOnFork: false }, affinity: [0], pdeathsig: 0, seccomp: [],
      }],
    },
  };
}

/** validateTask's one line for `t`, or undefined when it passes. */
function refusal(t: TaskRecord): string | undefined {
  try {
    validateTask(JSON.parse(JSON.stringify(t)), 100);
    return undefined;
  } catch (err) {
    assert.ok(err instanceof FerryError && err.code === 'EIMAGE', String(err));
    assert.doesNotMatch(err.message, /\n/);
    return err.message;
  }
}

describe('an image\'s io_setup(2) ring', () => {
  const ring = (t: TaskRecord): VmaRecord => t.vmas[0]!;

  it('of any size io_setup makes, with up to nr - 1 events, is taken', () => {
    assert.equal(refusal(task()), undefined);
    assert.equal(refusal(task(16, 2046)), undefined);
    assert.equal(refusal(task(3, 0)), undefined);
  });

  it('is refused in one line when its numbers disagree or it overlaps another area', () => {
    const cases: Array<[string, (t: TaskRecord) => void, RegExp]> = [
      ['nr', (t) => { ring(t).aio!.nr = 128; }, /has nr 128, but its 1 pages hold 127 events/],
      ['as many events as nr', (t) => { ring(t).aio!.events = Buffer.alloc(127 * 32).toString('base64'); }, /fewer than its nr 127/],
      ['part of an event', (t) => { ring(t).aio!.events = Buffer.alloc(33).toString('base64'); }, /must hold whole events/],
      ['not base64', (t) => { ring(t).aio!.events = '*'; }, /must be base64 text/],
      ['unaligned', (t) => { ring(t).start = '0x10010'; ring(t).end = '0x11010'; }, /must be page-aligned in user space/],
      ['beyond user space', (t) => { ring(t).start = '0x100000000000000'; ring(t).end = '0x100000000001000'; }, /must be page-aligned in user space/],
      ['too big', (t) => { ring(t).end = `0x${(0x10000 + (AIO_RING_MAX_PAGES + 1) * 4096).toString(16)}`; },
        /is 65538 pages, more than the 65537 of the largest ring/],
      ['pages stored', (t) => { ring(t).runs = [[0, 1]]; t.pagesBytes = 4096; }, /must be a shared area with no pages/],
      ['private', (t) => { ring(t).shared = false; }, /must be a shared area/],
      ['without aio', (t) => { delete ring(t).aio; }, /is an io_setup\(2\) ring without aio/],
      ['aio on another kind', (t) => { ring(t).kind = 'anon'; }, /has aio but is not of kind aio/],
      ['over the stack', (t) => { ring(t).start = '0x7effffffe000'; ring(t).end = '0x7efffffff000'; t.vmas[1]!.start = '0x7effffffe000'; }, /overlaps vmas\[\d\]/],
      ['an area over it', (t) => { t.vmas.push({ start: '0x8000', end: '0x20000', prot: 0, shared: false, kind: 'anon', name: '', vmflags: [], runs: [], pagesOffset: 0 }); }, /vmas\[0\] .* overlaps vmas\[2\]/],
    ];
    for (const [what, edit, message] of cases) {
      const t = task();
      edit(t);
      const line = refusal(t);
      assert.ok(line !== undefined, `${what}: refused`);
      assert.match(line, message, what);
    }
  });
});
