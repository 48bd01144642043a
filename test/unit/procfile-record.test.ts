/**
 * The procfile record's check (files/procfile.ts) on edited records of a thread's /proc file
 * (`thread`): a tid in range, only beside a process of the tree, never with `task` nor the
 * process's own pid; and which records the engine opens once every thread exists
 * (namesThread). Nothing is opened by a check. Before anything is made, restore refuses such a
 * record in a container's image, and one an epoll watches or a unix socket's queued message
 * carries (files/install.ts checkThreadFiles): neither is ever recorded so.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { checkThreadFiles } from '../../src/files/install.js';
import { checkProcfileTrust, procfile, type ProcfileRecord } from '../../src/files/procfile.js';
import type { FileRecord } from '../../src/image/records.js';

/** A record of /proc/`target`/task/`thread``sub`, with `extra` fields as given. */
const record = (target: unknown, thread: unknown, extra: Record<string, unknown> = {}): ProcfileRecord =>
  ({ id: 7, kind: 'procfile', target, sub: '/stat', ...(thread !== undefined ? { thread } : {}), flags: 0, pos: '5', ...extra }) as unknown as ProcfileRecord;

describe('a procfile record of a thread', () => {
  it('is accepted with a tid of the tree, and opened once the threads exist', () => {
    procfile.check!(record(100, 101));
    procfile.check!(record(100, 101, { sub: '' }));
    assert.equal(procfile.namesThread!(record(100, 101)), true);
    assert.equal(procfile.namesThread!(record(100, undefined)), false);
    assert.equal(procfile.namesThread!(record(100, undefined, { task: true })), false);
  });

  it('is refused with a tid out of range, the process\'s own pid, `task`, or no process of the tree', () => {
    for (const bad of [record(100, 0), record(100, -1), record(100, 4194305), record(100, 1.5), record(100, '101'), record(100, 100),
      record(100, 101, { task: true }), record(null, 101, { sub: '/proc/1/task/2/stat' })]) {
      assert.throws(() => procfile.check!(bad), { code: 'EIMAGE', message: /^image: file 7 \(kind procfile\) has an invalid thread$/ });
    }
  });
});

describe('an image holding a thread\'s /proc file', () => {
  const thread = record(100, 101);
  const plain = record(100, undefined, { id: 8 });
  const epoll = (file: unknown): FileRecord => ({ id: 9, kind: 'eventpoll', flags: 0, targets: [{ fd: 4, file, events: 1, data: '0x0' }] });
  const unix = (fds: unknown): FileRecord => ({ id: 10, kind: 'unix', fds });

  it('is restored as a tree\'s, the file watched or carried being another', () => {
    checkThreadFiles('img', [thread, plain, epoll(8), unix([[8], []])], false);
    // Malformed lists are `check`'s to refuse, not this check's to trip on.
    checkThreadFiles('img', [thread, { id: 9, kind: 'eventpoll', targets: 'x' }, { id: 10, kind: 'unix', fds: [null, 'x', [null]] }], false);
  });

  it('is refused as a container\'s', () => {
    assert.throws(() => checkThreadFiles('img', [plain, thread], true), {
      code: 'EIMAGE', message: /^image img: file 7 is a \/proc file of a thread in a container's image, which a checkpoint never records: refused \(an edited image\); nothing was restored$/,
    });
    checkThreadFiles('img', [plain, epoll(8)], true);
  });

  it('is refused when an epoll watches it or a queued message carries it', () => {
    assert.throws(() => checkThreadFiles('img', [thread, epoll(7)], false), {
      code: 'EIMAGE', message: /^image img: file 9 \(eventpoll\) names file 7, a \/proc file of a thread, as an epoll item or a file in flight .*nothing was restored$/,
    });
    assert.throws(() => checkThreadFiles('img', [thread, unix([[], [8, 7]])], false), {
      code: 'EIMAGE', message: /^image img: file 10 \(unix\) names file 7, a \/proc file of a thread/,
    });
  });
});

describe('a procfile record of a process already reaped (gone)', () => {
  const gone = (extra: Record<string, unknown> = {}): ProcfileRecord =>
    ({ id: 7, kind: 'procfile', target: null, gone: 1234, sub: '/stat', flags: 0, pos: '0', ...extra }) as unknown as ProcfileRecord;

  it('is accepted with a pid in range and a path below it', () => {
    procfile.check!(gone());
    procfile.check!(gone({ sub: '' }));
    procfile.check!(gone({ task: true }));
    assert.equal(procfile.namesThread!(gone()), false);
  });

  it('needs trust: restore would make a process of its own, root, at the pid the image names', () => {
    assert.throws(() => checkProcfileTrust('img', [gone()]), {
      code: 'EPRIVILEGE',
      message: /^image img: file 7 \(\/proc\/1234\/stat\) is a \/proc file of a process already reaped, which restore opens through a process of its own made at that pid: only an image this host signed or one you trust may ask for a process at a pid it chooses/,
    });
    // An invalid one is said to be invalid first.
    assert.throws(() => checkProcfileTrust('img', [gone({ gone: 0 })]), { code: 'EIMAGE', message: /has an invalid reaped process \(gone\)/ });
    // Another process's /proc file is named before it.
    assert.throws(() => checkProcfileTrust('img', [gone(), gone({ id: 8, gone: undefined, sub: '/proc/1/stat' })]), {
      code: 'EPRIVILEGE', message: /^image img: file 8 \("\/proc\/1\/stat"\) is a \/proc file of a process outside the image's tree/,
    });
  });

  it('is refused with a pid out of range, a process of the tree, a thread, or a path that leaves it', () => {
    for (const bad of [gone({ gone: 0 }), gone({ gone: 4194305 }), gone({ gone: 1.5 }), gone({ gone: '1234' }), gone({ target: 1234 }),
      gone({ thread: 5 })]) {
      assert.throws(() => procfile.check!(bad), { code: 'EIMAGE', message: /^image: file 7 \(kind procfile\) has an invalid reaped process \(gone\)$/ });
    }
    for (const sub of ['stat', '/../1/stat', '/./stat', '/a//b']) {
      assert.throws(() => procfile.check!(gone({ sub })), { code: 'EIMAGE', message: /^image: file 7 \(kind procfile\) has an invalid path$/ });
    }
  });
});

describe('a procfile record of a container\'s own /proc (root: task)', () => {
  it('is accepted by a process of the tree, its main thread\'s directory too', () => {
    procfile.check!(record(7, undefined, { root: 'task' }));
    procfile.check!(record(7, undefined, { root: 'task', task: true, sub: '' }));
  });

  it('is refused with another root, with no process of the tree, of another thread, or reaped', () => {
    for (const bad of [record(7, undefined, { root: 'host' }), record(7, undefined, { root: true }),
      record(null, undefined, { root: 'task', sub: '/proc/1/stat' }), record(7, 8, { root: 'task' }),
      record(null, undefined, { root: 'task', gone: 9 })]) {
      assert.throws(() => procfile.check!(bad), { code: 'EIMAGE', message: /^image: file 7 \(kind procfile\) has an invalid root$/ });
    }
  });
});
