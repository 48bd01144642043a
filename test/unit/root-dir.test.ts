/**
 * Removed root directories of an image (src/restore/root-dir.ts planRemovedRoots): one
 * directory per device and inode for every process in it, and an edited image whose processes
 * disagree about one refused before anything is made; a removed working directory directly in
 * a removed root made in it, one deeper made with the directories between (cwdBetween) in
 * each other, an edited chain refused; which roots an untrusted image may give
 * (checkRootTrust), a thread's own too, and a container's. Pure.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { TaskRecord } from '../../src/image/records.js';
import { checkRootTrust, planRemovedRoots } from '../../src/restore/root-dir.js';

/** A task chroot'ed into the removed `root` (device 8, inode `ino`), its working directory `cwd`. */
function task(pid: number, root: string, ino: string, cwd = root, mode = 0o751): TaskRecord {
  const dir = { mode, uid: 65534, gid: 65534, dev: '8', ino };
  return { pid, cwd, cwdDeleted: dir, root, rootDeleted: dir } as unknown as TaskRecord;
}

describe('planRemovedRoots', () => {
  it('makes one directory for the processes sharing a removed root, one per directory', () => {
    const plan = planRemovedRoots('img', [task(10, '/srv/jail', '5'), task(11, '/srv/jail', '5'), task(12, '/srv/other', '6'),
      { pid: 13, cwd: '/' } as unknown as TaskRecord]);
    assert.deepEqual([...plan.entries()].map(([k, r]) => [k, r.path, r.pids]), [['8:5', '/srv/jail', [10, 11]], ['8:6', '/srv/other', [12]]]);
  });

  it('refuses processes that give one removed root other paths or modes, a working directory of it elsewhere, and /', () => {
    assert.throws(() => planRemovedRoots('img', [task(10, '/srv/jail', '5'), task(11, '/srv/jail', '5', '/srv/jail', 0o777)]), (err: Error & { code?: string; pid?: number }) => {
      assert.equal(err.code, 'EIMAGE');
      assert.equal(err.pid, 11);
      assert.match(err.message, /^image img: pids 10 and 11 have the same removed root directory \(device 8, inode 5\) with another path, mode or owner/);
      return true;
    });
    assert.throws(() => planRemovedRoots('img', [task(10, '/srv/jail', '5'), task(11, '/srv/else', '5')]), /pids 10 and 11 have the same removed root directory/);
    assert.throws(() => planRemovedRoots('img', [task(10, '/srv/jail', '5', '/tmp/x')]),
      /image img: the removed working directory "\/tmp\/x" of pid 10 is the removed root directory "\/srv\/jail" of pid 10 \(the same device and inode\) under another path/);
    assert.throws(() => planRemovedRoots('img', [task(10, '/', '5')]), /pid 10 has '\/' as a removed root directory/);
  });
});

describe('planRemovedRoots: a removed working directory in a removed root', () => {
  /** Pid `pid` in the removed root /srv/jail (inode 5), its working directory `cwd` removed too (inode `ino`). */
  const inSub = (pid: number, cwd: string, ino: string, mode = 0o710): TaskRecord => ({
    ...task(pid, '/srv/jail', '5'), cwd, cwdDeleted: { mode, uid: 65534, gid: 65534, dev: '8', ino },
  }) as unknown as TaskRecord;

  it('is made in the root, once for the processes sharing it', () => {
    const plan = planRemovedRoots('img', [inSub(10, '/srv/jail/sub', '7'), inSub(11, '/srv/jail/sub', '7'), task(12, '/srv/jail', '5')]);
    const root = plan.get('8:5')!;
    assert.deepEqual(root.pids, [10, 11, 12]);
    assert.deepEqual([...root.below.entries()].map(([k, b]) => [k, b.name, b.pids]), [['8:7', 'sub', [10, 11]]]);
    // One outside the root's path is made at its own path, as before.
    assert.equal(planRemovedRoots('img', [inSub(10, '/srv/other/sub', '7')]).get('8:5')!.below.size, 0);
  });

  it('refuses processes that give one another name or mode', () => {
    assert.throws(() => planRemovedRoots('img', [inSub(10, '/srv/jail/sub', '7'), inSub(11, '/srv/jail/sub', '7', 0o777)]),
      /pids 10 and 11 have the same removed directory \(device 8, inode 7\) below their removed root with another path, mode or owner/);
    assert.throws(() => planRemovedRoots('img', [inSub(10, '/srv/jail/sub', '7'), inSub(11, '/srv/jail/bus', '7')]), /same removed directory/);
  });
});

describe('planRemovedRoots: a removed working directory deeper in a removed root', () => {
  /** A removed directory of device 8, inode `ino`. */
  const dir = (ino: string, mode = 0o755) => ({ mode, uid: 0, gid: 0, dev: '8', ino });
  /** Pid `pid` in the removed root /srv/jail (inode 5), in the removed `cwd` (inode `ino`), with `between` recorded. */
  const deep = (pid: number, cwd: string, ino: string, between: ReturnType<typeof dir>[] | undefined): TaskRecord => ({
    ...task(pid, '/srv/jail', '5'), cwd, cwdDeleted: dir(ino, 0o710), ...(between !== undefined ? { cwdBetween: between } : {}),
  }) as unknown as TaskRecord;

  it('makes each directory between once, in the one above it, for the processes whose chains pass through it', () => {
    const plan = planRemovedRoots('img', [deep(10, '/srv/jail/a/b/sub', '9', [dir('6'), dir('7', 0o750)]),
      deep(11, '/srv/jail/a/c', '8', [dir('6')]), deep(12, '/srv/jail/a/b/sub', '9', [dir('6'), dir('7', 0o750)])]);
    const below = [...plan.get('8:5')!.below.entries()].map(([k, b]) => [k, b.name, b.parent ?? null, b.path, b.pids]);
    assert.deepEqual(below, [
      ['8:6', 'a', null, '/srv/jail/a', [10, 11, 12]], ['8:7', 'b', '8:6', '/srv/jail/a/b', [10, 12]],
      ['8:9', 'sub', '8:7', '/srv/jail/a/b/sub', [10, 12]], ['8:8', 'c', '8:6', '/srv/jail/a/c', [11]],
    ]);
  });

  it('refuses a chain that does not match its path, or that gives one directory two places or modes, or a root\'s identity', () => {
    assert.throws(() => planRemovedRoots('img', [deep(10, '/srv/jail/a/sub', '7', undefined)]), (err: Error & { code?: string; pid?: number }) => {
      assert.equal(err.code, 'EIMAGE');
      assert.equal(err.pid, 10);
      assert.equal(err.message, 'image img: the removed working directory "/srv/jail/a/sub" of pid 10 is 2 names below its removed root directory "/srv/jail", '
        + 'and the image records 0 directories between (task.json cwdBetween), not one for each name but its own: refused (an edited image); nothing was restored');
      return true;
    });
    assert.throws(() => planRemovedRoots('img', [deep(10, '/srv/jail/a/../sub', '7', [dir('6'), dir('8')])]), /is 3 names below its removed root directory/);
    // /a of one is /b of the other; /a given two modes; a directory its own parent; the root's identity between.
    assert.throws(() => planRemovedRoots('img', [deep(10, '/srv/jail/a/sub', '9', [dir('6')]), deep(11, '/srv/jail/b/sub', '9', [dir('6')])]),
      /^FerryError: image img: pids 10 and 11 have the same removed directory \(device 8, inode 6\) below their removed root with another path/);
    assert.throws(() => planRemovedRoots('img', [deep(10, '/srv/jail/a/sub', '9', [dir('6')]), deep(11, '/srv/jail/a/sub', '9', [dir('6', 0o777)])]),
      /pids 10 and 11 have the same removed directory \(device 8, inode 6\)/);
    assert.throws(() => planRemovedRoots('img', [deep(10, '/srv/jail/a/a/sub', '9', [dir('6'), dir('6')])]), /pids 10 and 10 have the same removed directory/);
    assert.throws(() => planRemovedRoots('img', [deep(10, '/srv/jail/a/sub', '9', [dir('5')])]),
      /the removed directory "\/srv\/jail\/a" on the way to the working directory of pid 10 \(device 8, inode 5\) is also a removed root directory/);
    // Below two roots: one chain cannot lead to both.
    const other = { ...deep(11, '/srv/two/a/sub', '10', [dir('6')]), root: '/srv/two', rootDeleted: dir('4') } as unknown as TaskRecord;
    assert.throws(() => planRemovedRoots('img', [deep(10, '/srv/jail/a/sub', '9', [dir('6')]), other]), /is also a removed root directory, or below another one/);
  });
});

describe('planRemovedRoots: a thread\'s own removed working directory', () => {
  /** Pid `pid` (working directory `cwd`, removed when `ino`) with thread `pid + 1` in the removed `tcwd` (inode `tino`). */
  const withThread = (pid: number, tcwd: string, tino: string, mode = 0o751, cwd = '/srv', ino?: string): TaskRecord => ({
    pid, cwd, ...(ino !== undefined ? { cwdDeleted: { mode: 0o751, uid: 65534, gid: 65534, dev: '8', ino } } : {}),
    threads: [{ tid: pid }, { tid: pid + 1, fs: { cwd: tcwd, umask: 18, cwdDeleted: { mode, uid: 65534, gid: 65534, dev: '8', ino: tino } } }],
  }) as unknown as TaskRecord;

  it('is always made and held, once with the process and threads that have it', () => {
    assert.deepEqual([...planRemovedRoots('img', [withThread(10, '/srv/b', '7')]).entries()].map(([k, r]) => [k, r.path, r.cwd, r.pids]), [['8:7', '/srv/b', true, [10]]]);
    const shared = planRemovedRoots('img', [withThread(10, '/srv/b', '7', 0o751, '/srv/b', '7'), withThread(20, '/srv/b', '7')]);
    assert.deepEqual([...shared.entries()].map(([k, r]) => [k, r.path, r.pids]), [['8:7', '/srv/b', [10, 20]]]);
    // The same directory as a removed root: entered there.
    assert.equal(planRemovedRoots('img', [task(30, '/srv/jail', '5'), withThread(10, '/srv/jail', '5')]).get('8:5')!.cwd, undefined);
  });

  it('refuses holders that disagree about it, and one inside a container', () => {
    assert.throws(() => planRemovedRoots('img', [withThread(10, '/srv/b', '7', 0o751, '/srv/c', '7')]), (err: Error & { code?: string; pid?: number }) => {
      assert.equal(err.code, 'EIMAGE');
      assert.match(err.message, /^image img: pid 10 and thread 11 of pid 10 have the same removed working directory \(device 8, inode 7\) with another path, mode or owner/);
      return true;
    });
    assert.throws(() => planRemovedRoots('img', [withThread(10, '/srv/b', '7'), withThread(20, '/srv/b', '7', 0o700)]), /thread 11 of pid 10 and thread 21 of pid 20 have the same removed working directory/);
    assert.throws(() => planRemovedRoots('img', [task(30, '/srv/jail', '5'), withThread(10, '/srv/else', '5')]),
      /the removed working directory "\/srv\/else" of thread 11 of pid 10 is the removed directory "\/srv\/jail" of pid 30 \(device 8, inode 5\) with another path, mode or owner/);
    assert.throws(() => planRemovedRoots('img', [withThread(10, '/srv/b', '7')], [], true), (err: Error & { code?: string }) => err.code === 'EUNSUPPORTED'
      && /thread 11 of pid 10 has a working directory of its own that was removed \("\/srv\/b"\), which restore cannot rebuild inside a container/.test(err.message));
  });
});

describe('checkRootTrust', () => {
  /** Pid 10 with threads 10 and 11 (11 with an fs of its own, `own`), whose effective capabilities are `caps`. */
  const threaded = (root: string | undefined, own: { cwd: string; root?: string; umask: number } | undefined, caps: [string, string]): TaskRecord => ({
    pid: 10, comm: 'w', cwd: '/', ...(root !== undefined ? { root } : {}),
    threads: [{ tid: 10 }, { tid: 11, ...(own ? { fs: own } : {}) }],
    creds: { threads: caps.map((effective, i) => ({ tid: 10 + i, noNewPrivs: false, caps: { effective } })) },
  }) as unknown as TaskRecord;
  const CHROOT = '0x40000', NONE = '0x0';

  it('a thread\'s own root is checked against that thread\'s capabilities only; a process root against every thread\'s but those with their own', () => {
    checkRootTrust('img', [threaded(undefined, { cwd: '/srv', root: '/srv', umask: 0o77 }, [NONE, CHROOT])], false);
    assert.throws(() => checkRootTrust('img', [threaded(undefined, { cwd: '/srv', root: '/srv', umask: 0o77 }, [CHROOT, NONE])], false),
      /image img: pid 10 \(w\) would be restored with its thread 11 chroot'ed into \/srv, which that thread could not do itself/);
    // Thread 11 keeps / (its own fs has no root): the process's root is thread 10's only.
    checkRootTrust('img', [threaded('/jail', { cwd: '/', umask: 0o22 }, [CHROOT, NONE])], false);
    assert.throws(() => checkRootTrust('img', [threaded('/jail', undefined, [CHROOT, NONE])], false),
      /would be restored chroot'ed into \/jail, which its thread 11 could not do itself/);
    checkRootTrust('img', [threaded('/jail', undefined, [NONE, NONE])], true); // trusted
  });

  it('judges a removed root by the same rule (a container\'s too: made inside it at restore)', () => {
    const removed = (caps: [string, string]): TaskRecord => ({ ...threaded('/jail', undefined, caps), rootDeleted: { mode: 0o751, uid: 0, gid: 0, dev: '8', ino: '5' } }) as TaskRecord;
    checkRootTrust('img', [removed([CHROOT, CHROOT])], false);
    assert.throws(() => checkRootTrust('img', [removed([CHROOT, NONE])], false), /would be restored chroot'ed into \/jail, which its thread 11 could not do itself/);
  });
});
