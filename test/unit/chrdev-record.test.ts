/**
 * The character device record's check (files/chrdev.ts) on edited records of removed nodes:
 * only the memory devices are made again, with a mode and owner in range and a path that stays
 * in its directory. Nothing is made or opened by a check.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { chrdev, type ChrdevRecord } from '../../src/files/chrdev.js';

/** A record of a removed node `major:minor` at `path`, with `removed` as given. */
const record = (major: number, minor: number, removed: unknown = { mode: 0o666, uid: 0, gid: 0 }, path = '/tmp/ferry-unit-gone/null'): ChrdevRecord =>
  ({ id: 7, kind: 'chr', path, flags: 2, pos: '0', major, minor, removed }) as unknown as ChrdevRecord;

describe('a removed character device record', () => {
  it('is accepted for null, zero, full, random and urandom, whose node need not exist', () => {
    for (const minor of [3, 5, 7, 8, 9]) chrdev.check!(record(1, minor));
  });

  it('is refused for any other device: /dev/mem, /dev/kmsg, a disk, a terminal', () => {
    for (const [major, minor] of [[1, 1], [1, 11], [8, 0], [4, 1], [136, 0]] as const) {
      assert.throws(() => chrdev.check!(record(major, minor)), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'EIMAGE');
        assert.match(err.message, new RegExp(`^image: character device \\(file 7\\) is a removed node of ${major}:${minor}, which restore does not make \\(only 1:3, 1:5, 1:7, 1:8, 1:9\\)$`));
        return true;
      });
    }
  });

  it('is refused with a mode or owner out of range, or a path that leaves its directory', () => {
    for (const removed of [{ mode: 0o17777, uid: 0, gid: 0 }, { mode: -1, uid: 0, gid: 0 }, { mode: 0o600, uid: 2 ** 32 - 1, gid: 0 },
      { mode: 0o600, uid: 0, gid: 1.5 }, { mode: '600', uid: 0, gid: 0 }, null, 'x']) {
      assert.throws(() => chrdev.check!(record(1, 3, removed)), { code: 'EIMAGE', message: /^image: character device \(file 7\) has an invalid removed mode or owner$/ });
    }
    for (const path of ['/tmp/../etc/null', '/tmp/x/', '/tmp/x/..']) {
      assert.throws(() => chrdev.check!(record(1, 3, undefined, path)), { code: 'EIMAGE', message: /^image: character device \(file 7\) has no valid path$/ });
    }
  });
});
