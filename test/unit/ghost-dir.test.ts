/**
 * A deleted file's record whose directory was removed too (files/deleted.ts): its check takes
 * a directory that is not there (restore makes it for the moment of the create) and refuses a
 * path whose directory is no directory, or whose name is a dangling symlink; ghostInHeldRemovedDir finds a deleted file in or
 * below a removed directory the tree also holds, which checkpoint and restore refuse. Nothing is made or opened by a check.
 * And a deleted file made again at its name: journalled, or where rename(2) takes no flags, as before.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, fstatSync, mkdirSync, mkdtempSync, readdirSync, readlinkSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deleted, ghostInHeldDirMessage, ghostInHeldRemovedDir, type DeletedRecord } from '../../src/files/deleted.js';
import type { FileRecord, TaskRecord } from '../../src/image/records.js';
import { TRANSIENT_DIR } from '../../src/files/transient.js';
import { DEFAULT_FILE_OPTIONS, type OpenContext } from '../../src/files/types.js';
import { native } from '../../src/native/binding.js';

const ghost = (path: string, id = 3): DeletedRecord =>
  ({ id, kind: 'ghost', path, flags: 2, pos: '0', mode: 0o640, uid: 0, gid: 0, ghost: '1:2', size: 0, extents: [], data: '' }) as unknown as DeletedRecord;

type Holder = Pick<TaskRecord, 'pid' | 'cwd' | 'cwdDeleted' | 'root' | 'rootDeleted' | 'threads' | 'fds'> & Partial<Pick<TaskRecord, 'vmas'>>;
const task = (over: Partial<Holder>): Holder => ({ pid: 10, cwd: '/', threads: [], fds: [{ fd: 3, file: 3 }], ...over }) as Holder;
const removed = { mode: 0o755, uid: 0, gid: 0, dev: '1', ino: '9' };

describe('a deleted file whose directory was removed', () => {
  it('passes the check: its directory is made for the moment', () => {
    deleted.check!(ghost('/ferry-unit-no-such-dir/logs/app.log'));
  });

  it('is refused when its directory is a file here', () => {
    assert.throws(() => deleted.check!(ghost('/etc/hostname/app.log')), { code: 'ENOTDIR', message: /^\/etc\/hostname, on the way to the directory of the deleted file \/etc\/hostname\/app\.log \(file 3 of the image\), is no directory here/ });
    assert.throws(() => deleted.check!(ghost('/etc/hostname/logs/app.log')), { code: 'ENOTDIR', message: /^\/etc\/hostname, on the way/ });
  });

  it('is refused with a path the kernel would not show (not absolute and normal): the directory made would not be the one checked', () => {
    for (const path of ['/', 'x/app.log', '/gone/../etc/app.log', '/gone/./app.log', '/gone//app.log', '/gone/app.log/', '/tmp/.']) {
      assert.throws(() => deleted.check!(ghost(path)), { code: 'EIMAGE', message: /has no valid path/ }, path);
    }
  });

  it('is refused when its directory\'s name is a symlink that leads nowhere (it was no symlink: the name is not the removed directory\'s)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ferry-ghostdir-'));
    try {
      symlinkSync(join(dir, 'nowhere'), join(dir, 'logs'));
      assert.throws(() => deleted.check!(ghost(join(dir, 'logs', 'app.log'))), { code: 'ENOTDIR', message: /logs, on the way to the directory .* is a symlink that leads nowhere here/ });
      assert.throws(() => deleted.check!(ghost(join(dir, 'logs', 'sub', 'app.log'))), { code: 'ENOTDIR' });
      deleted.check!(ghost(join(dir, 'gone', 'sub', 'app.log')));
      // A symlink to a directory on the part that exists: followed where the directory is
      // there (a file made in it, as before), refused where restore would make one below it.
      mkdirSync(join(dir, 'real'));
      symlinkSync(join(dir, 'real'), join(dir, 'alias'));
      deleted.check!(ghost(join(dir, 'alias', 'app.log')));
      assert.throws(() => deleted.check!(ghost(join(dir, 'alias', 'gone', 'app.log'))), { code: 'ENOTDIR', message: /alias, on the way .* is a symlink, not followed to make the removed directory below it, here/ });
      assert.deepEqual(readdirSync(dir).sort(), ['alias', 'logs', 'real'], 'nothing made');
      assert.deepEqual(readdirSync(join(dir, 'real')), []);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('ghostInHeldRemovedDir', () => {
  it('finds none where no removed directory is held, or another one is', () => {
    assert.equal(ghostInHeldRemovedDir([task({})], [ghost('/x/logs/app.log')]), undefined);
    assert.equal(ghostInHeldRemovedDir([task({ cwd: '/x/log', cwdDeleted: removed })], [ghost('/x/logs/app.log')]), undefined);
    assert.equal(ghostInHeldRemovedDir([task({ cwd: '/x/logs/sub', cwdDeleted: removed })], [ghost('/x/logs/app.log')]), undefined);
  });

  it('finds one in or below a held removed directory: a working directory, a thread\'s, a root, an open one, or only mapped', () => {
    const direct = ghostInHeldRemovedDir([task({ cwd: '/x/logs', cwdDeleted: removed })], [ghost('/x/logs/app.log')]);
    assert.deepEqual(direct, { pid: 10, fd: 3, path: '/x/logs/app.log', dir: '/x/logs', heldAs: 'as the working directory of pid 10' });
    const below = ghostInHeldRemovedDir([task({ threads: [{ tid: 11, fs: { cwd: '/x', cwdDeleted: removed, umask: 0 } }] as TaskRecord['threads'] })], [ghost('/x/logs/app.log')]);
    assert.deepEqual(below, { pid: 10, fd: 3, path: '/x/logs/app.log', dir: '/x', heldAs: 'as the working directory of thread 11 of pid 10' });
    assert.equal(ghostInHeldDirMessage(below!), 'pid 10 fd 3 holds the deleted file "/x/logs/app.log" in the removed directory "/x", which the tree also holds '
      + 'as the working directory of thread 11 of pid 10: restore cannot make a file in a removed directory it holds');
    const dirRec = { id: 4, kind: 'reg', path: '/x/logs', directory: true, removed, flags: 0, pos: '0', dev: '1', ino: '9' } as unknown as FileRecord;
    assert.equal(ghostInHeldRemovedDir([task({ fds: [{ fd: 3, file: 3 }, { fd: 5, file: 4 }] } as Partial<Holder>)], [ghost('/x/logs/app.log'), dirRec])?.heldAs, 'open as fd 5 of pid 10');
    assert.equal(ghostInHeldRemovedDir([task({ root: '/x', rootDeleted: removed })], [ghost('/x/logs/app.log')])?.heldAs, 'as the root directory of pid 10');
    const mapped = ghostInHeldRemovedDir([task({ cwd: '/x/logs', cwdDeleted: removed, fds: [] })], [ghost('/x/logs/lib.so')]);
    assert.match(ghostInHeldDirMessage(mapped!), /^a mapping of the tree holds the deleted file "\/x\/logs\/lib\.so"/);
    // The process mapping it, when the records say (VmaRecord.ghost, the file's identity).
    const byMap = ghostInHeldRemovedDir([task({ cwd: '/x/logs', cwdDeleted: removed, fds: [], vmas: [{ ghost: '1:2' }] as unknown as TaskRecord['vmas'] })], [ghost('/x/logs/lib.so')]);
    assert.match(ghostInHeldDirMessage(byMap!), /^a mapping of pid 10 holds the deleted file "\/x\/logs\/lib\.so"/);
  });
});

describe('a deleted file made again at its name', { skip: process.geteuid?.() !== 0 ? 'needs root (the journal of names made for a moment is root\'s)' : false }, () => {
  /** What deleted.open needs of a restore for a file with no contents. */
  const ctx = (): OpenContext => ({
    options: DEFAULT_FILE_OPTIONS, opened: () => undefined, record: () => undefined, records: () => [], inherited: () => false,
    blob: () => Buffer.alloc(0), scratch: () => new Map(), hold: () => {}, release: () => {},
  });
  const made = (dir: string, rec: DeletedRecord): string => {
    const opened = deleted.open(rec, ctx());
    assert.equal(typeof opened, 'number');
    const fd = opened as number;
    try {
      assert.equal(fstatSync(fd).nlink, 0);
      return readlinkSync(`/proc/self/fd/${fd}`);
    } finally {
      closeSync(fd);
    }
  };

  it('reads "path (deleted)", and nothing is left beside it nor in the journal', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ferry-ghostname-'));
    try {
      assert.equal(made(dir, ghost(join(dir, 'app.log'), 31)), `${join(dir, 'app.log')} (deleted)`);
      assert.deepEqual(readdirSync(dir), []);
      assert.deepEqual(readdirSync(TRANSIENT_DIR).filter((f) => f.startsWith(`${process.pid}-`)), []);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('on a file system whose rename takes no flags (EINVAL), is made at its name directly, as before', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ferry-ghostname-'));
    const n = native();
    const renameat2 = n.renameat2;
    let refused = 0;
    try {
      n.renameat2 = (...args: Parameters<typeof renameat2>): void => {
        if (args[4] !== 0) {
          refused++;
          throw Object.assign(new Error('renameat2: Invalid argument'), { code: 'EINVAL' });
        }
        renameat2.apply(n, args);
      };
      assert.equal(made(dir, ghost(join(dir, 'app.log'), 32)), `${join(dir, 'app.log')} (deleted)`);
      assert.equal(refused, 1, 'the journalled way was tried first');
      assert.deepEqual(readdirSync(dir), [], 'its temporary name is gone too');
      assert.deepEqual(readdirSync(TRANSIENT_DIR).filter((f) => f.startsWith(`${process.pid}-`)), []);
    } finally {
      n.renameat2 = renameat2;
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
