/**
 * The regular file record's check (files/regular.ts) on edited records of an O_PATH
 * descriptor's removed FIFO or symlink: only of an O_PATH descriptor, a symlink only as itself
 * (O_NOFOLLOW) with a text symlinkat(2) takes, a FIFO with none, a path that stays in its
 * directory; the inotify record's (files/inotify.ts) on a watch of a removed working or root
 * directory, which names a process of the tree; a removed device node's identity, and the
 * agreement of the records of one removed node (files/removed-node.ts). Nothing is made or
 * opened by a check.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { chrdev, type ChrdevRecord } from '../../src/files/chrdev.js';
import { inotify, type InotifyRecord } from '../../src/files/inotify.js';
import { checkRemovedNodes } from '../../src/files/removed-node.js';
import type { FileRecord } from '../../src/image/records.js';
import { regular, type RegularRecord } from '../../src/files/regular.js';

const O_PATH = 0o10000000, O_NOFOLLOW = 0o400000;

/** A record of a removed node at `path` with `removed` and `flags` as given. */
const record = (removed: unknown, flags = O_PATH | O_NOFOLLOW, path = '/tmp/gone', directory = false): RegularRecord =>
  ({ id: 7, kind: 'reg', path, flags, pos: '0', dev: '1', ino: '2', directory, removed }) as unknown as RegularRecord;

const owner = { mode: 0o777, uid: 1234, gid: 1235 };
const invalid = { code: 'EIMAGE', message: /^image: file 7 \(kind reg\) has an invalid removed (FIFO or symlink|directory)$/ };

describe('a removed FIFO or symlink record of an O_PATH descriptor', () => {
  it('is accepted: a FIFO with or without O_NOFOLLOW, a symlink with its text, in a directory that exists', () => {
    regular.check!(record({ ...owner, type: 'fifo' }, O_PATH));
    regular.check!(record({ ...owner, type: 'fifo' }));
    regular.check!(record({ ...owner, type: 'symlink', target: '../some/where' }));
    regular.check!(record({ ...owner, type: 'symlink', target: 'é'.repeat(2047) }));
  });

  it('is refused without O_PATH, a symlink without O_NOFOLLOW, on a directory record, or of an unknown type', () => {
    assert.throws(() => regular.check!(record({ ...owner, type: 'fifo' }, 0)), invalid);
    assert.throws(() => regular.check!(record({ ...owner, type: 'symlink', target: 'x' }, O_PATH)), invalid);
    assert.throws(() => regular.check!(record({ ...owner, type: 'fifo' }, O_PATH, '/tmp/gone', true)), invalid);
    assert.throws(() => regular.check!(record({ ...owner, type: 'socket' })), invalid);
  });

  it('is refused with a text symlinkat would not take, or a FIFO with a text', () => {
    for (const target of [undefined, '', 'a\0b', 'x'.repeat(4096), 'é'.repeat(2048), 7, null]) {
      assert.throws(() => regular.check!(record({ ...owner, type: 'symlink', target })), invalid);
    }
    assert.throws(() => regular.check!(record({ ...owner, type: 'fifo', target: 'x' })), invalid);
    assert.throws(() => regular.check!(record({ ...owner, target: 'x' }, O_PATH, '/tmp/gone', true)), invalid);
  });

  it('is refused with a mode or owner out of range, or a path that leaves its directory', () => {
    for (const bad of [{ mode: 0o17777, uid: 0, gid: 0 }, { mode: 0o600, uid: 2 ** 32 - 1, gid: 0 }, { mode: 0o600, uid: 0, gid: 1.5 }]) {
      assert.throws(() => regular.check!(record({ ...bad, type: 'fifo' })), { code: 'EIMAGE' });
    }
    for (const path of ['/tmp/../etc/x', '/tmp/x/', '/tmp/x/..']) {
      assert.throws(() => regular.check!(record({ ...owner, type: 'fifo' }, O_PATH, path)), invalid);
    }
  });

  it('is refused when its directory does not exist here', () => {
    assert.throws(() => regular.check!(record({ ...owner, type: 'fifo' }, O_PATH, '/ferry-unit-no-such-dir/gone')),
      { code: 'ENOENT', message: /^the directory of the removed FIFO \/ferry-unit-no-such-dir\/gone \(file 7 of the image\) does not exist here: create it first$/ });
  });
});

describe('an inotify watch record on a removed working directory', () => {
  const rec = (cwd: unknown, more: object = {}): InotifyRecord =>
    ({ id: 9, kind: 'inotify', flags: 0, watches: [{ wd: 1, mask: 4, path: '/tmp/d (deleted)', dev: '8:1', ino: '5', cwd, ...more }] }) as unknown as InotifyRecord;

  it('is accepted naming a process by its pid in the tree; its path need not exist', () => {
    inotify.check!(rec(1));
    inotify.check!(rec(4194304));
  });

  it('is refused naming no valid pid, or with a file too', () => {
    for (const cwd of [0, -1, 4194305, 1.5, '1', null]) {
      assert.throws(() => inotify.check!(rec(cwd)), { code: 'EIMAGE', message: /^image: inotify \(file 9\) has a watch 1 on the working directory of an invalid process/ });
    }
    assert.throws(() => inotify.check!(rec(1, { file: 3 })), { code: 'EIMAGE' });
    assert.throws(() => inotify.check!(rec(1, { root: 1 })), { code: 'EIMAGE' });
  });
});

describe('an inotify watch record on a removed root directory', () => {
  const rec = (root: unknown, more: object = {}): InotifyRecord =>
    ({ id: 9, kind: 'inotify', flags: 0, watches: [{ wd: 1, mask: 4, path: '/tmp/jail (deleted)', dev: '8:1', ino: '5', root, ...more }] }) as unknown as InotifyRecord;

  it('is accepted naming a process by its pid in the tree; its path need not exist', () => {
    inotify.check!(rec(1));
    inotify.check!(rec(4194304));
  });

  it('is refused naming no valid pid, or with a file too', () => {
    for (const root of [0, -1, 4194305, 1.5, '1', null]) {
      assert.throws(() => inotify.check!(rec(root)), { code: 'EIMAGE', message: /^image: inotify \(file 9\) has a watch 1 on the root directory of an invalid process/ });
    }
    assert.throws(() => inotify.check!(rec(1, { file: 3 })), { code: 'EIMAGE' });
  });
});

describe('the records of one removed node (files/removed-node.ts) and a device node record\'s identity', () => {
  const fifo = (id: number, mode = 0o620, ino = '5'): FileRecord =>
    ({ id, kind: 'fifo', path: '/tmp/ff', dev: '8', ino, flags: 0, size: 4096, data: '', removed: { mode, uid: 1, gid: 2 } });
  const opath = (id: number, mode = 0o620, type = 'fifo'): FileRecord =>
    ({ id, kind: 'reg', path: '/tmp/ff', dev: '8', ino: '5', flags: O_PATH, pos: '0', directory: false, removed: { mode, uid: 1, gid: 2, type } });
  const chr = (more: object): ChrdevRecord =>
    ({ id: 3, kind: 'chr', path: '/tmp/null', flags: 2, pos: '0', major: 1, minor: 3, removed: { mode: 0o640, uid: 1, gid: 2 }, ...more }) as unknown as ChrdevRecord;

  it('are accepted saying one node, of one kind or two; other nodes are not compared', () => {
    checkRemovedNodes('img', [fifo(1), fifo(2), opath(3), fifo(4, 0o600, '6')]);
  });

  it('are refused in one line saying different nodes (mode, or a FIFO and a symlink)', () => {
    assert.throws(() => checkRemovedNodes('img', [fifo(1), opath(2, 0o600)]),
      { code: 'EIMAGE', message: 'image img: files 1 and 2 hold one removed node (8:5) but say different ones (FIFO, mode 620 owner 1:2; FIFO, mode 600 owner 1:2): refused, nothing was restored' });
    assert.throws(() => checkRemovedNodes('img', [fifo(1), opath(2, 0o620, 'symlink')]), { code: 'EIMAGE' });
  });

  it('a removed device node record takes an identity of two decimal strings or none, nothing else', () => {
    chrdev.check!(chr({}));
    chrdev.check!(chr({ dev: '2049', ino: '12' }));
    for (const bad of [{ dev: '2049' }, { ino: '12' }, { dev: 2049, ino: '12' }, { dev: '2049', ino: '-1' }, { dev: '2049', ino: '1'.repeat(21) }]) {
      assert.throws(() => chrdev.check!(chr(bad)), { code: 'EIMAGE', message: /^image: character device \(file 3\) has an invalid removed node identity \(dev, ino\)$/ });
    }
  });
});
