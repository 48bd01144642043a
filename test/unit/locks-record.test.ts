/**
 * The locks of a file record (files/locks.ts validateLocks) and the linked record's check
 * (files/linked.ts) on edited records: a lease being broken is a write lease being broken to a
 * read one, or a (read) lease being broken to none, and nothing else; a linked file's device is a number, as its mappings name it by.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { linked, type LinkedRecord } from '../../src/files/linked.js';
import { parseLockLine, validateLocks } from '../../src/files/locks.js';

const lease = (extra: Record<string, unknown>): unknown[] => [{ kind: 'lease', type: 'write', start: '0', len: '0', ...extra }];

describe('the locks of a file record', () => {
  it('accept a write lease being broken to read, and a lease being broken to none (stored as a read one)', () => {
    assert.equal(validateLocks(lease({ breaking: 'read' }), 'file 3 (/tmp/w)').length, 1);
    assert.equal(validateLocks(lease({ type: 'read', breaking: 'none' }), 'file 3 (/tmp/w)').length, 1);
  });

  it('refuse any other break: of a read lease to read, of a write lease to none, of a lock, or to anything else', () => {
    for (const bad of [lease({ breaking: 'none' }), lease({ breaking: 1 }), lease({ type: 'read', breaking: 'read' }),
      lease({ type: 'read', breaking: 'write' }), [{ kind: 'flock', type: 'write', start: '0', len: '0', breaking: 'read' }],
      [{ kind: 'ofd', type: 'read', start: '0', len: '0', breaking: 'none' }]]) {
      assert.throws(() => validateLocks(bad, 'file 3 (/tmp/w)'), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'EIMAGE');
        assert.equal(err.message, 'file 3 (/tmp/w): locks has a break that is not of a write lease to read, nor of a lease to none');
        return true;
      });
    }
  });

  it('read a lease being broken to read from /proc/locks\' format', () => {
    const l = parseLockLine('1: LEASE  BREAKING  READ 15164 fe:00:2163168 0 EOF');
    assert.deepEqual([l?.cls, l?.type, l?.pid, l?.ino, l?.end], ['LEASE', 'READ', 15164, 2163168n, null]);
  });
});

describe('a linked record', () => {
  it('is refused with a device that is not a number, before anything is looked up', () => {
    const rec = {
      id: 4, kind: 'linked', path: '/tmp/ferry-unit-gone/a', flags: 0, pos: '0', dev: '1:2', ino: '12',
      handleType: 1, handle: '00ff',
    } as unknown as LinkedRecord;
    assert.throws(() => linked.check!(rec), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'EIMAGE');
      assert.equal(err.message, 'image: file 4 (kind linked) has an invalid device number');
      return true;
    });
  });
});
