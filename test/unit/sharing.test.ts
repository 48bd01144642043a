/**
 * Records of processes sharing a descriptor table or fs struct (tree.json sharesFiles,
 * sharesFs), as an edited image could forge them: only the shapes restore forks (each sharer's
 * parent holds the table, its first holder listed before it) pass, and a sharer must hold the
 * same descriptors, working directory and umask as the process it shares with.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { FileRecord, ProcessRecord, TaskRecord, TreeRecord } from '../../src/image/records.js';
import { forkedBySiblings, Forkers } from '../../src/image/sharing.js';
import { threadTableHolders, validateSharing, validateTree } from '../../src/restore/validate.js';

const proc = (pid: number, ppid: number, extra: Partial<ProcessRecord> = {}): ProcessRecord => (
  { pid, ppid, pgid: 100, sid: 100, zombie: null, ...extra });

/** 100 -> 101 -> 102, and 100 -> 103. */
const tree = (edit: (ps: ProcessRecord[]) => void): TreeRecord => {
  const processes = [proc(100, 1), proc(101, 100), proc(102, 101), proc(103, 100)];
  edit(processes);
  return { root: 100, processes };
};
const check = (t: TreeRecord): TreeRecord => validateTree(t, 100, t.processes.filter((p) => p.zombie === null).map((p) => p.pid));

describe('tree.json sharing records', () => {
  it('accepts a chain sharing from its first holder, siblings sharing their parent\'s, and siblings sharing their own', () => {
    check(tree((ps) => { ps[1]!.sharesFiles = 100; ps[2]!.sharesFiles = 100; ps[3]!.sharesFs = 100; }));
    check(tree((ps) => { ps[2]!.sharesFs = 101; }));
    const t = check(tree((ps) => { ps[3]!.sharesFiles = 101; }));
    assert.deepEqual([...forkedBySiblings(t.processes)], [103, 101], '103 is forked by its sibling 101');
    const forkers = new Forkers();
    assert.deepEqual(t.processes.map((p) => forkers.add(p)?.pid), [undefined, 100, 101, 101]);
    // A sibling leading a session of its own forks one that stays in their parent's (before its setsid).
    const led = check(tree((ps) => { ps[1]!.sid = 101; ps[1]!.pgid = 101; ps[2]!.sid = 101; ps[2]!.pgid = 101; ps[3]!.sharesFiles = 101; }));
    const again = new Forkers();
    assert.deepEqual(led.processes.map((p) => again.add(p)?.pid), [undefined, 100, 101, 101]);
    // A sibling holding only one of the two tables it shares cannot fork it.
    assert.throws(() => check(tree((ps) => { ps[3]!.sharesFiles = 101; ps[3]!.sharesFs = 100; })), /sharesFiles/);
  });

  const refused: Array<[string, (ps: ProcessRecord[]) => void]> = [
    ['the root (nothing restore forks it from)', (ps) => { ps[0]!.sharesFiles = 101; }],
    ['a holder listed after it', (ps) => { ps[1]!.sharesFiles = 102; }],
    ['a holder its parent does not share', (ps) => { ps[2]!.sharesFiles = 100; }],
    ['a sibling, in a session neither it nor their parent is in', (ps) => {
      ps[1]!.sid = 101; ps[2]!.sid = 102; ps[2]!.pgid = 102; ps[3]!.sid = 102; ps[3]!.pgid = 102; ps[3]!.sharesFiles = 101;
    }],
    ['a sibling listed after it', (ps) => { ps[1]!.sharesFiles = 103; }],
    ['a holder that itself shares another\'s', (ps) => { ps[1]!.sharesFs = 100; ps[2]!.sharesFs = 101; }],
    ['itself', (ps) => { ps[1]!.sharesFiles = 101; }],
    ['a process not in the tree', (ps) => { ps[1]!.sharesFiles = 999; }],
    ['a zombie', (ps) => { ps[3]!.zombie = { status: 0 }; ps[3]!.sharesFiles = 100; }],
  ];
  for (const [what, edit] of refused) {
    it(`refuses a process sharing with ${what}, in one line naming the field`, () => {
      assert.throws(() => check(tree(edit)), (err: Error) => /^image entry tree\.json is invalid: processes\[\d\]\.shares(Files|Fs) .*must name a live process listed before it/.test(err.message)
        && !err.message.includes('\n'));
    });
  }
});

describe('tree.json order of a session leader forking sharers before its setsid', () => {
  // 100 -> 101 (leads session 101), 102 (sharing 101's table, in 101's session), 103 (sharing
  // 101's table, in 100's: 101 forks it before its setsid), 104 (101's child, in its session).
  const procs = (): Record<number, ProcessRecord> => ({
    100: proc(100, 1), 101: proc(101, 100, { sid: 101, pgid: 101 }), 102: proc(102, 100, { sid: 101, pgid: 101, sharesFiles: 101 }),
    103: proc(103, 100, { sharesFiles: 101 }), 104: proc(104, 101, { sid: 101, pgid: 101 }),
  });
  const listed = (...pids: number[]): TreeRecord => ({ root: 100, processes: pids.map((p) => procs()[p]!) });

  it('accepts the sharer in the old session before one in the new, and a child of the leader listed before it (depth first)', () => {
    check(listed(100, 101, 103, 102, 104));
    check(listed(100, 101, 104, 103, 102));
  });

  it('refuses, in one line and before anything is made, a process of the new session listed before that sharer', () => {
    assert.throws(() => check(listed(100, 101, 102, 103, 104)), (err: Error) => err.message.startsWith(
      'image entry tree.json is invalid: pid 101 would fork 102 (of session 101) before its own setsid, which waits until it has forked 103')
      && !err.message.includes('\n'));
  });
});

describe('tasks sharing a table hold the same', () => {
  const task = (pid: number, extra: Partial<TaskRecord> = {}): TaskRecord => ({
    pid, cwd: '/tmp', umask: 0o22, vmas: [], fds: [{ fd: 0, file: 1, cloexec: false }, { fd: 5, file: 2, cloexec: true }], ...extra,
  }) as TaskRecord;
  const shared = tree((ps) => { ps[1]!.sharesFiles = 100; ps[1]!.sharesFs = 100; });
  const others = [task(102), task(103)];

  it('passes the same descriptors in another order, cwd and umask', () => {
    validateSharing(shared, [task(100), task(101, { fds: [...task(101).fds].reverse() }), ...others]);
  });
  const differ: Array<[string, Partial<TaskRecord>, RegExp]> = [
    ['a descriptor more', { fds: [...task(101).fds, { fd: 9, file: 3, cloexec: false }] }, /descriptors differ/],
    ['another file at a number', { fds: [{ fd: 0, file: 2, cloexec: false }, { fd: 5, file: 2, cloexec: true }] }, /descriptors differ/],
    ['another close-on-exec', { fds: [{ fd: 0, file: 1, cloexec: true }, { fd: 5, file: 2, cloexec: true }] }, /descriptors differ/],
    ['another working directory', { cwd: '/' }, /working directory and umask differ/],
    ['another umask', { umask: 0o77 }, /working directory and umask differ/],
  ];
  it('refuses a process forked by a sibling that inherits pages copy-on-write', () => {
    const siblings = tree((ps) => { ps[3]!.sharesFiles = 101; });
    const cow = [{ start: '0x1000', end: '0x2000', cow: [[0, 1]] }] as unknown as TaskRecord['vmas'];
    validateSharing(siblings, [task(100), task(101, { vmas: [] }), task(102, { vmas: cow }), task(103, { vmas: [] })]);
    assert.throws(() => validateSharing(siblings, [task(100), task(101, { vmas: [] }), task(102), task(103, { vmas: cow })]),
      /pid 103 inherits pages from its parent \(cow\), but is forked by or forks a sibling/);
  });
  for (const [what, edit, message] of differ) {
    it(`refuses ${what}, naming both pids`, () => {
      assert.throws(() => validateSharing(shared, [task(100), task(101, edit), ...others]),
        (err: Error) => message.test(err.message) && /pid 101 shares the (descriptor table|fs struct) of pid 100/.test(err.message));
    });
  }
});

describe('threads with a descriptor table of their own (threads[].fds)', () => {
  const task = (pid: number, threadFds?: TaskRecord['fds']): TaskRecord => ({
    pid, fds: [{ fd: 0, file: 1, cloexec: false }],
    threads: [{ tid: pid }, { tid: pid + 1000, ...(threadFds !== undefined ? { fds: threadFds } : {}) }],
  }) as unknown as TaskRecord;
  const files = [{ id: 1, kind: 'chr' }, { id: 2, kind: 'pipe' }, { id: 3, kind: 'eventpoll' }, { id: 4, kind: 'unix' },
    { id: 5, kind: 'reg', locks: [{ kind: 'flock', type: 'write', start: '0', len: '0' }] }] as unknown as FileRecord[];
  const t = tree((ps) => { ps[1]!.sharesFiles = 100; });

  it('count as their process\'s for the checks of what it holds', () => {
    const [plain, own] = threadTableHolders('x.tar', t, [task(100), task(103, [{ fd: 0, file: 1, cloexec: false }, { fd: 7, file: 2, cloexec: true }])], files, false);
    assert.deepEqual(plain!.fds.map((f) => f.file), [1], 'a task with no thread table as it is');
    assert.deepEqual(own!.fds.map((f) => [f.fd, f.file]), [[0, 1], [0, 1], [7, 2]]);
  });

  it('refuse a file files.json lacks, and a thread table in a container\'s process sharing its table, with one line', () => {
    assert.throws(() => threadTableHolders('x.tar', t, [task(103, [{ fd: 4, file: 9, cloexec: false }])], files, false),
      /^FerryError: image x\.tar: fd 4 of thread 1103 of pid 103 names file 9, which files\.json does not list/);
    const shared = [task(101, [{ fd: 4, file: 2, cloexec: false }])];
    threadTableHolders('x.tar', t, shared, files, false);
    assert.throws(() => threadTableHolders('x.tar', t, shared, files, true), /pid 101 shares a descriptor table with another process and has a thread with a table of its own/);
  });

  it('refuse what a checkpoint never puts in such a table (an epoll, a kind or a locked file only it holds), with one line', () => {
    const one = (file: number, held = false): TaskRecord => {
      const tk = task(103, [{ fd: 5, file, cloexec: false }]);
      if (held) tk.fds.push({ fd: 9, file, cloexec: false });
      return tk;
    };
    for (const [file, why] of [[3, 'an epoll'], [4, 'a file of kind unix no process holds'], [5, 'a locked file no process holds']] as const) {
      assert.throws(() => threadTableHolders('x.tar', t, [one(file)], files, false), (err: Error) => err.message.includes(`fd 5 of thread 1103 of pid 103 is ${why}`) && !err.message.includes('\n'));
    }
    assert.throws(() => threadTableHolders('x.tar', t, [one(3, true)], files, false), /is an epoll/, 'an epoll even where its process holds it too');
    // The same kinds are fine where a process's table holds them too (installed through it).
    threadTableHolders('x.tar', t, [one(4, true)], files, false);
    threadTableHolders('x.tar', t, [one(5, true)], files, false);
  });
});
