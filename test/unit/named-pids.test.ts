/**
 * The image-wide bounds of the files that name a pid for restore to act on (restore/validate.ts
 * checkNamedPids), on edited records: a reaped process's /proc file (procfile `gone`) and pidfd
 * (`target` 0) each cost a short-lived process, at most MAX_STAND_INS of them; a reaped
 * process's pid is never one of the image's own processes or threads (outside a container); a
 * file naming a thread (`thread`) names a thread of the image, at most MAX_THREAD_FILES of them.
 * Every refusal is one line naming the file, before anything is made.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { FileRecord, TaskRecord, TreeRecord } from '../../src/image/records.js';
import { checkNamedPids, MAX_STAND_INS, MAX_THREAD_FILES } from '../../src/restore/validate.js';

const PIDFD_THREAD = 0o200;
/** 100 (threads 100, 105) -> 101 (thread 101), and zombie 102. */
const tree: TreeRecord = {
  root: 100,
  processes: [
    { pid: 100, ppid: 1, pgid: 100, sid: 100, zombie: null },
    { pid: 101, ppid: 100, pgid: 100, sid: 100, zombie: null },
    { pid: 102, ppid: 100, pgid: 100, sid: 100, zombie: { status: 0 } },
  ],
};
const tasks = [
  { pid: 100, threads: [{ tid: 100 }, { tid: 105 }] },
  { pid: 101, threads: [{ tid: 101 }] },
] as unknown as TaskRecord[];

const gone = (id: number, pid: number): FileRecord => ({ id, kind: 'procfile', target: null, gone: pid, sub: '/stat', flags: 0, pos: '0' });
const gonePidfd = (id: number): FileRecord => ({ id, kind: 'pidfd', target: 0, flags: 0 });
const threadProc = (id: number, target: number, thread: number): FileRecord => ({ id, kind: 'procfile', target, thread, sub: '/stat', flags: 0, pos: '0' });
const threadPidfd = (id: number, target: number, thread: number): FileRecord => ({ id, kind: 'pidfd', target, thread, flags: PIDFD_THREAD });
const check = (files: FileRecord[], container = false): void => checkNamedPids('img', tree, tasks, files, container);
const oneLine = (re: RegExp) => (err: Error): boolean => (err as { code?: string }).code === 'EIMAGE' && re.test(err.message) && !err.message.includes('\n');

describe('files naming a pid for restore to act on', () => {
  it('accepts reaped processes\' files up to the bound, and files naming threads of the image', () => {
    const files = [
      ...Array.from({ length: MAX_STAND_INS / 2 }, (_, i) => gone(i + 1, 4000 + i)),
      ...Array.from({ length: MAX_STAND_INS / 2 }, (_, i) => gonePidfd(1000 + i)),
      threadProc(2000, 100, 105), threadPidfd(2001, 100, 100), threadPidfd(2002, 100, 105), threadPidfd(2003, 101, 101),
    ];
    check(files);
    // A container's reaped pids are ferry's, its processes' its own namespace's: no clash to judge.
    check([gone(1, 101)], true);
  });

  it('refuses one reaped process\'s file more than the bound (each is a process made), in one line', () => {
    const files = Array.from({ length: MAX_STAND_INS + 1 }, (_, i) => (i % 2 === 0 ? gone(i + 1, 4000 + i) : gonePidfd(i + 1)));
    assert.throws(() => check(files), oneLine(new RegExp(`^image img: file ${MAX_STAND_INS + 1} \\((procfile|pidfd)\\) is the ${MAX_STAND_INS + 1}th file of a process already reaped, `
      + `which restore opens through a process it makes for each, more than the ${MAX_STAND_INS} an image may have: refused \\(an edited image\\); nothing was restored$`)));
  });

  for (const [what, pid] of [['a process', 101], ['a thread', 105], ['a zombie', 102]] as const) {
    it(`refuses a reaped process's pid that is ${what} of the image's own`, () => {
      assert.throws(() => check([gone(9, pid)]),
        oneLine(new RegExp(`^image img: file 9 \\(procfile\\) is a /proc file of pid ${pid}, reaped, yet ${pid} is a pid of the image's own processes or threads`)));
    });
  }

  for (const [what, file] of [
    ['a /proc file of a thread another process has', threadProc(9, 101, 105)],
    ['a /proc file of a thread no process has', threadProc(9, 100, 106)],
    ['a /proc file of a thread of a process not in the image', threadProc(9, 103, 105)],
    ['a pidfd of a thread another process has', threadPidfd(9, 101, 100)],
    ['a pidfd of a thread of a zombie', threadPidfd(9, 102, 102)],
    ['a pidfd of a thread of pid 0', threadPidfd(9, 0, 105)],
  ] as const) {
    it(`refuses ${what}`, () => {
      assert.throws(() => check([file]), oneLine(/^image img: file 9 \((procfile|pidfd)\) names thread \d+ of pid \d+, which is not a thread of the image: refused/));
    });
  }

  it('leaves a record of the wrong shape to its kind\'s check(), which says what is wrong with it', () => {
    check([{ ...gone(9, 4000), thread: 5 }, { ...threadPidfd(10, 100, 105), thread: '105' }, { ...gone(11, 4001), gone: '101' }]);
  });

  it('refuses one file naming a thread more than the bound', () => {
    const files = Array.from({ length: MAX_THREAD_FILES + 1 }, (_, i) => threadPidfd(i + 1, 100, 105));
    assert.throws(() => check(files), oneLine(new RegExp(`^image img: file ${MAX_THREAD_FILES + 1} \\(pidfd\\) is the ${MAX_THREAD_FILES + 1}th file naming a thread`)));
  });
});
