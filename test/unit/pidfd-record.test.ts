/**
 * The pidfd record's check (files/pidfd.ts) on edited records: PIDFD_THREAD (O_EXCL) only with
 * the thread named (`thread`, a tid in range) for a process of the tree, or with none for one
 * already gone; `thread` never without the flag; and which records the engine opens once every
 * thread exists (namesThread). Nothing is opened by a check. A thread's pidfd in a container's
 * image is refused before anything is made (a checkpoint never records one there).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { checkThreadFiles } from '../../src/files/install.js';
import { pidfd, type PidfdRecord } from '../../src/files/pidfd.js';

const PIDFD_THREAD = 0o200, O_NONBLOCK = 0o4000;
const record = (target: unknown, flags: unknown, thread?: unknown): PidfdRecord =>
  ({ id: 3, kind: 'pidfd', target, flags, ...(thread !== undefined ? { thread } : {}) }) as unknown as PidfdRecord;

describe('a pidfd record', () => {
  it('is accepted for a process, a gone one, a thread and a gone thread; only a thread\'s is opened once threads exist', () => {
    for (const ok of [record(100, 0), record(100, O_NONBLOCK), record(0, 0), record(100, PIDFD_THREAD, 101), record(100, PIDFD_THREAD | O_NONBLOCK, 100),
      record(0, PIDFD_THREAD)]) pidfd.check!(ok);
    assert.equal(pidfd.namesThread!(record(100, PIDFD_THREAD, 101)), true);
    assert.equal(pidfd.namesThread!(record(100, 0)), false);
    assert.equal(pidfd.namesThread!(record(0, PIDFD_THREAD)), false);
  });

  it('is refused with a thread but no PIDFD_THREAD, PIDFD_THREAD of a live process without its thread, a tid out of range, or other flags', () => {
    for (const bad of [record(100, 0, 101), record(100, PIDFD_THREAD), record(0, PIDFD_THREAD, 101), record(100, PIDFD_THREAD, 0),
      record(100, PIDFD_THREAD, 4194305), record(100, PIDFD_THREAD, 1.5), record(100, PIDFD_THREAD, '101'), record(100, 0o2)]) {
      assert.throws(() => pidfd.check!(bad), /^FerryError: image: pidfd \(file 3\) has an invalid record$|image: pidfd \(file 3\) has an invalid record/, JSON.stringify(bad));
    }
  });

  it('of a thread is refused in a container\'s image, named as a thread\'s pidfd', () => {
    assert.throws(() => checkThreadFiles('img', [record(100, PIDFD_THREAD, 101)], true), (err: Error & { code?: string }) => err.code === 'EIMAGE'
      && /^image img: file 3 is a pidfd of a thread in a container's image, which a checkpoint never records: refused \(an edited image\); nothing was restored$/.test(err.message));
    checkThreadFiles('img', [record(100, PIDFD_THREAD, 101)], false);
  });
});
