/**
 * The procfile record's check (files/procfile.ts) on edited records of a thread's /proc file
 * (`thread`): a tid in range, only beside a process of the tree, never with `task` nor the
 * process's own pid; and which records the engine opens once every thread exists
 * (namesThread). Nothing is opened by a check.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { procfile, type ProcfileRecord } from '../../src/files/procfile.js';

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
