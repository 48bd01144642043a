/**
 * checkDirsReachable (restore/file-access.ts): an untrusted image puts a process or a thread
 * only in directories its recorded credentials could reach (restore chdirs and chroots as
 * root, before the credentials).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { checkDirsReachable, type StatOf } from '../../src/restore/file-access.js';

type Task = Parameters<typeof checkDirsReachable>[1][number];

/** Thread credentials: fs ids `uid`, effective capabilities `eff`. */
const creds = (tid: number, uid: number, eff = '0x0') => ({
  tid, uids: [uid, uid, uid, uid], gids: [uid, uid, uid, uid], groups: [],
  caps: { effective: eff, permitted: eff, inheritable: '0x0', bounding: '0x1ffffffffff', ambient: '0x0' },
});

/** Process 7 as `uid` in `cwd`; `extra` adds fields (root, threads, …). */
const task = (uid: number, cwd: string, extra: Record<string, unknown> = {}, threadCreds = [creds(7, uid)]): Task =>
  ({ pid: 7, comm: 'x', cwd, threads: [{ tid: 7 }], creds: { threads: threadCreds }, ...extra }) as unknown as Task;

/** Directories: root's, 0755, except `/root` (0700) and `/srv/private` (0700, uid 1000's). */
const dirs: StatOf = (path) => {
  if (path === '/root') return { uid: 0n, gid: 0n, mode: 0o40700n } as never;
  if (path === '/srv/private') return { uid: 1000n, gid: 1000n, mode: 0o40700n } as never;
  if (path === '/gone') return undefined;
  return { uid: 0n, gid: 0n, mode: 0o40755n } as never;
};

describe('checkDirsReachable', () => {
  it('refuses a working directory below one the credentials cannot search, naming pid, path and the directory', () => {
    assert.throws(() => checkDirsReachable('img', [task(1000, '/root/work')], dirs), (err: Error & { code?: string; pid?: number; path?: string }) => {
      assert.equal(err.code, 'EPRIVILEGE');
      assert.equal(err.message, 'image img: pid 7 (x) has "/root/work" as its working directory, which its credentials (uid 1000, gid 1000, no CAP_DAC_OVERRIDE '
        + 'or CAP_DAC_READ_SEARCH) could not reach: "/root" is not searchable by them (owner 0:0, mode 700): nothing was restored; '
        + 'sign the image and restore with --trust if it is genuine');
      assert.deepEqual([err.pid, err.path], [7, '/root/work']);
      return true;
    });
    // The directory itself must be searchable too.
    assert.throws(() => checkDirsReachable('img', [task(65534, '/srv/private')], dirs), /"\/srv\/private" is not searchable by them \(owner 1000:1000, mode 700\)/);
  });

  it('refuses a root directory, and a thread\'s own working directory by that thread\'s credentials', () => {
    assert.throws(() => checkDirsReachable('img', [task(1000, '/', { root: '/root/jail' })], dirs), /as its root directory/);
    const threads = { threads: [{ tid: 7 }, { tid: 8, fs: { cwd: '/srv/private', umask: 0o22 } }] };
    // The leader (uid 1000) could reach it; the thread runs as 65534 and could not.
    assert.throws(() => checkDirsReachable('img', [task(1000, '/', threads, [creds(7, 1000), creds(8, 65534)])], dirs),
      /as the working directory of its thread 8, which its credentials \(uid 65534,/);
    checkDirsReachable('img', [task(1000, '/', threads, [creds(7, 65534), creds(8, 1000)])], dirs);
  });

  it('allows what the credentials reach, CAP_DAC_READ_SEARCH, removed directories (checked elsewhere) and paths not there', () => {
    checkDirsReachable('img', [task(1000, '/srv/private/x')], dirs);
    checkDirsReachable('img', [task(0, '/root/work')], dirs);
    checkDirsReachable('img', [task(65534, '/root/work', {}, [creds(7, 65534, '0x4')])], dirs); // CAP_DAC_READ_SEARCH
    checkDirsReachable('img', [task(65534, '/root/work', { cwdDeleted: { mode: 0o755, uid: 0, gid: 0 } })], dirs);
    checkDirsReachable('img', [task(65534, '/gone')], dirs);
  });
});
