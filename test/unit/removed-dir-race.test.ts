/**
 * withRemovedDir (files/confined.ts) against someone who may write the directory its first
 * level is made in, and swaps that level for a symlink to a directory of another's while ferry
 * works: at the moment the next level is made, and while the caller uses the directory made.
 * Nothing may be made or removed through the symlink; ferry's own directory, moved away, is
 * left in the journal (not forgotten), named, and the call refused (what the callback made
 * given to `dispose`). No timing: the swap is made from
 * inside ferry's own calls (the addon's mkdirat, wrapped; the callback).
 * Needs root (the journal is /run/ferry/transient, root's).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { chownSync, existsSync, fstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FerryError } from '../../src/errors.js';
import { hostRoot, withRemovedDir, type RemovedDir } from '../../src/files/confined.js';
import { TRANSIENT_DIR } from '../../src/files/transient.js';
import { native } from '../../src/native/binding.js';

const skip = process.geteuid?.() !== 0 ? 'needs root (the journal of names made for a moment is root\'s)' : false;

/** This process's journal entries for names under `dir`, by path. */
function journalled(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  let files: string[] = [];
  try {
    files = readdirSync(TRANSIENT_DIR);
  } catch { /* no journal */ }
  for (const f of files) {
    try {
      const e = JSON.parse(readFileSync(join(TRANSIENT_DIR, f), 'utf8')) as { pid: number; path: string };
      if (e.pid === process.pid && typeof e.path === 'string' && e.path.startsWith(`${dir}/`)) out.set(e.path, join(TRANSIENT_DIR, f));
    } catch { /* another's, being written */ }
  }
  return out;
}

/**
 * A tree for one case: `home` (the directory the attacker may write), `etc` holding `b`, an
 * empty directory of someone else's (uid 1234): what a path through the symlink would reach.
 */
function setUp(): { top: string; home: string; etc: string; done(): void } {
  const top = mkdtempSync(join(tmpdir(), 'ferry-removed-race-'));
  const home = join(top, 'home'), etc = join(top, 'etc');
  mkdirSync(home);
  mkdirSync(join(etc, 'b'), { recursive: true });
  chownSync(join(etc, 'b'), 1234, 1234);
  return {
    top, home, etc,
    done: () => {
      for (const file of journalled(top).values()) rmSync(file, { force: true });
      rmSync(top, { recursive: true, force: true });
    },
  };
}

/** What `fn` threw (failing if it threw nothing). */
function catching(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  return assert.fail('not refused');
}

/** Whether `err` is withRemovedDir's one-line refusal naming exactly `left` as the levels left, in that order. */
function leftOnly(err: unknown, left: string[]): boolean {
  if (!(err instanceof FerryError) || err.code !== 'ECHANGED' || err.message.includes('\n')) return false;
  const m = / and was left at (.*); nothing was restored/.exec(err.message);
  return m !== null && m[1] === left.join(', ');
}

/** Puts a symlink to `etc` in place of `home/a`, which goes to `home/moved`. */
function swap(home: string, etc: string): void {
  renameSync(join(home, 'a'), join(home, 'moved'));
  symlinkSync(etc, join(home, 'a'));
}

describe('withRemovedDir, its first level swapped for a symlink', { skip }, () => {
  it('makes the next level in the directory it made, not through the symlink', () => {
    const t = setUp();
    const n = native();
    const mkdirat = n.mkdirat;
    let calls = 0;
    let refusal: unknown;
    const disposed: string[] = [];
    try {
      // The second mkdirat is the next level's: the swap is made just before it.
      n.mkdirat = (dirfd: number, name: string, mode: number): void => {
        if (++calls === 2) swap(t.home, t.etc);
        mkdirat.call(n, dirfd, name, mode);
      };
      try {
        withRemovedDir(hostRoot(), join(t.home, 'a', 'b'), 'the test directory', (made: RemovedDir) => {
          assert.equal(made.path, join(t.home, 'a', 'b'));
          const st = fstatSync(made.fd);
          const inMoved = statSync(join(t.home, 'moved', 'b'));
          assert.equal(`${st.dev}:${st.ino}`, `${inMoved.dev}:${inMoved.ino}`, 'the level made is in ferry\'s own directory, moved away');
          assert.deepEqual(journalled(t.top).size, 2, 'both levels written down');
          return 'made';
        }, { dispose: (got) => disposed.push(got) });
      } catch (err) {
        refusal = err;
      }
    } finally {
      n.mkdirat = mkdirat;
    }
    try {
      assert.equal(calls, 2);
      assert.deepEqual(readdirSync(t.etc), ['b'], 'nothing made through the symlink');
      assert.equal(statSync(join(t.etc, 'b')).uid, 1234, 'the other\'s directory is left alone');
      assert.deepEqual(readdirSync(join(t.home, 'moved')), [], 'the inner level is removed through ferry\'s descriptor');
      assert.ok(leftOnly(refusal, [join(t.home, 'a')]), `refused naming the moved level alone: ${String(refusal)}`);
      assert.deepEqual(disposed, ['made'], 'what the callback made is disposed of');
      assert.deepEqual([...journalled(t.top).keys()], [join(t.home, 'a')], 'and stays in the journal for the sweep; the inner one is forgotten');
    } finally {
      t.done();
    }
  });

  it('removes nothing through the symlink once the caller is done, and forgets nothing it did not remove', () => {
    const t = setUp();
    try {
      const refusal = catching(() => withRemovedDir(hostRoot(), join(t.home, 'a', 'b'), 'the test directory', (made) => {
        swap(t.home, t.etc);
        // The path now leads to the other's directory; ferry's descriptor still to its own.
        assert.notEqual(fstatSync(made.fd).ino, statSync(made.path).ino);
      }));
      assert.equal(statSync(join(t.etc, 'b')).uid, 1234, 'the other\'s empty directory is not removed');
      assert.deepEqual(readdirSync(t.etc), ['b']);
      assert.deepEqual(readdirSync(join(t.home, 'moved')), [], 'ferry\'s inner level is removed');
      assert.ok(leftOnly(refusal, [join(t.home, 'a')]), String(refusal));
      assert.deepEqual([...journalled(t.top).keys()], [join(t.home, 'a')], 'the level left is still journalled');
    } finally {
      t.done();
    }
  });

  it('leaves, and keeps in the journal, every level that could not be removed (something was put in it)', () => {
    const t = setUp();
    try {
      const refusal = catching(() => withRemovedDir(hostRoot(), join(t.home, 'a', 'b'), 'the test directory', (made) => {
        writeFileSync(`/proc/self/fd/${made.fd}/x`, ''); // someone (root) puts a file in it
      }));
      assert.ok(existsSync(join(t.home, 'a', 'b', 'x')));
      assert.ok(leftOnly(refusal, [join(t.home, 'a', 'b'), join(t.home, 'a')]), String(refusal));
      assert.equal(journalled(t.top).size, 2);
    } finally {
      t.done();
    }
  });

  it('refuses a symlink planted before the restore on the part of the path that exists, making nothing where it leads', () => {
    const t = setUp();
    try {
      symlinkSync(t.etc, join(t.home, 'a')); // /home/alice/a -> /etc, before ferry runs
      assert.throws(() => withRemovedDir(hostRoot(), join(t.home, 'a', 'b', 'c'), 'the test directory', () => assert.fail('not called')),
        (err: unknown) => err instanceof FerryError && err.code === 'ECHANGED' && !err.message.includes('\n') && /is a symlink now, where there was a directory/.test(err.message));
      assert.deepEqual(readdirSync(join(t.etc, 'b')), [], 'nothing made through the symlink');
      assert.equal(journalled(t.top).size, 0, 'nothing made at all');
    } finally {
      t.done();
    }
  });

  it('refuses, as a FerryError, a first level replaced between its making and its opening', () => {
    const t = setUp();
    const n = native();
    const renameat2 = n.renameat2;
    try {
      // makeTransient renames ferry's directory to its name: the swap is made right after.
      n.renameat2 = (...args: Parameters<typeof renameat2>): void => {
        renameat2.apply(n, args);
        if (args[3] === 'a') swap(t.home, t.etc);
      };
      assert.throws(() => withRemovedDir(hostRoot(), join(t.home, 'a', 'b'), 'the test directory', () => assert.fail('not called')),
        (err: unknown) => err instanceof FerryError && err.code === 'ECHANGED' && !err.message.includes('\n') && /moved away or replaced/.test(err.message));
    } finally {
      n.renameat2 = renameat2;
    }
    try {
      assert.deepEqual(readdirSync(t.etc), ['b'], 'nothing made through the symlink');
      assert.deepEqual(readdirSync(join(t.home, 'moved')), [], 'nothing made in ferry\'s either');
      assert.deepEqual([...journalled(t.top).keys()], [join(t.home, 'a')], 'ferry\'s, moved away, is still journalled');
    } finally {
      t.done();
    }
  });

  it('names the open\'s own error, not a swap, when a level made cannot be opened for another reason (EMFILE)', () => {
    const t = setUp();
    const n = native();
    const openat2 = n.openat2;
    try {
      // The open of the level just made (O_DIRECTORY, where the walk before it has none) fails
      // as it would with every descriptor in use.
      n.openat2 = (...args: Parameters<typeof openat2>): number => {
        if (args[1] === 'a' && (args[2] & 0o200000) !== 0) throw Object.assign(new Error('openat2: Too many open files'), { code: 'EMFILE' });
        return openat2.apply(n, args);
      };
      assert.throws(() => withRemovedDir(hostRoot(), join(t.home, 'a', 'b'), 'the test directory', () => assert.fail('not called')),
        (err: unknown) => err instanceof FerryError && err.code === 'EOPEN' && !err.message.includes('\n')
          && /cannot be opened \(openat2: Too many open files\).*left for the next restore's sweep/.test(err.message) && !/moved away/.test(err.message));
    } finally {
      n.openat2 = openat2;
    }
    try {
      assert.deepEqual(readdirSync(join(t.home, 'a')), [], 'nothing made in it');
      assert.deepEqual([...journalled(t.top).keys()], [join(t.home, 'a')], 'it stays in the journal for the sweep');
    } finally {
      t.done();
    }
  });

  it('leaves, and refuses, its own level when someone swaps theirs in between the check and the rmdir', () => {
    const t = setUp();
    const n = native();
    const unlinkat = n.unlinkat;
    let refusal: unknown;
    try {
      // The cleanup has just checked that `a` is ferry's: the swap comes before its rmdir.
      n.unlinkat = (dirfd: number, name: string, flags: number): void => {
        if (name === 'a' && !existsSync(join(t.home, 'moved'))) {
          renameSync(join(t.home, 'a'), join(t.home, 'moved'));
          mkdirSync(join(t.home, 'a'), { mode: 0o700 }); // someone's own empty directory
        }
        unlinkat.call(n, dirfd, name, flags);
      };
      try {
        withRemovedDir(hostRoot(), join(t.home, 'a'), 'the test directory', () => 'made');
      } catch (err) {
        refusal = err;
      }
    } finally {
      n.unlinkat = unlinkat;
    }
    try {
      assert.ok(leftOnly(refusal, [join(t.home, 'a')]), `refused, naming the level left: ${String(refusal)}`);
      assert.deepEqual(readdirSync(t.home).sort(), ['moved'], 'the swapped-in directory went, ferry\'s is left');
      assert.deepEqual([...journalled(t.top).keys()], [join(t.home, 'a')], 'and stays in the journal');
    } finally {
      t.done();
    }
  });
});
