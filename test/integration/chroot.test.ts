/**
 * Chroot'ed processes (TaskRecord `root`: src/dump/root-dir.ts, src/restore/root-dir.ts)
 * through bin/ferry: build/workloads/chrooted changes its root to a jail of its own and checks
 * on SIGUSR1 that it is still there (the jail's marker, no /proc, its working directory). It
 * comes back chroot'ed, twice in a row, and with --leave-running keeps its root; descriptors of
 * the host's / it opened before the chroot (`rootfd`) come back as the host's /. An image no
 * trusted key signed may not put a process in a root it could not have made itself (an
 * unprivileged process without no_new_privs): refused before anything is made. A jail removed
 * since (with the working directory in it) is a restore failure in one line, with nothing left.
 *
 * A jail removed while the process lived in it (`removed`: chroot, chdir("/"), rmdir, then a
 * child forked) comes back removed: root and working directory of both processes one removed
 * directory of the jail's path, with its mode and owner (0751, 65534's), in which nothing can
 * be made; nothing is left at the path. With --leave-running both keep it. An edited image
 * whose two processes give their one removed root two paths is refused in one line, nothing made.
 * A removed working directory in the removed jail, directly (/sub) or deeper (/a/b/sub, with
 * the removed /a and /a/b between: task.json cwdBetween), comes back there, its chain of ".."
 * as it was, twice in a row and with --leave-running; edited chains (a ".." name, one directory
 * between missing, two modes for one directory, a directory its own parent) are refused in one
 * line with nothing made; one more than 64 directories deep is refused at checkpoint.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readlinkSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, WORKLOADS } from '../helpers/env.js';
import type { TaskRecord } from '../../src/image/records.js';
import { editImage, json } from '../helpers/images.js';
import {
  alive, askVerdict, checkpointFreed, checkpointTreeFreed, cleanup, cycleThrough, ferry, own, ownTree, procState, startWorkload, verify, waitFor, type Workload,
} from '../helpers/processes.js';

const skip = needs('root', 'build');
after(cleanup);

const start = (...args: string[]) => startWorkload(join(WORKLOADS, 'chrooted'), ['DIR', ...args]);

/**
 * Starts chrooted in a jail it removes (`removedsub`: in /sub of it, removed too), with its
 * child; returns both pids (owned) and the workload.
 */
async function inRemovedRoot(mode: 'removed' | 'removedsub' | 'removeddeep' = 'removed', ...more: Array<'held'>): Promise<{ w: Workload; pids: number[] }> {
  const w = await start(mode, ...more);
  const pids = ownTree(w);
  assert.deepEqual(pids, [w.pid, Number(/child=(\d+)/.exec(w.text())?.[1])], w.text());
  return { w, pids };
}

/**
 * Asserts that every one of `pids` has the removed jail of `w` as its root and working
 * directory, one directory for all (the same device and inode), and that nothing is at its path.
 */
function inOneRemovedJail(w: Workload, pids: readonly number[], label: string): void {
  const jail = join(w.dir, 'jail');
  const ids = new Set<string>();
  for (const pid of pids) {
    for (const link of ['root', 'cwd']) {
      assert.equal(readlinkSync(`/proc/${pid}/${link}`), `${jail} (deleted)`, `${label}: pid ${pid} ${link}`);
      const st = statSync(`/proc/${pid}/${link}`);
      assert.equal(st.nlink, 0, `${label}: pid ${pid} ${link} has no links`);
      assert.deepEqual([st.mode & 0o7777, st.uid, st.gid], [0o751, 65534, 65534], `${label}: pid ${pid} ${link} has the jail's mode and owner`);
      ids.add(`${st.dev}:${st.ino}`);
    }
  }
  assert.equal(ids.size, 1, `${label}: the roots and working directories of ${pids.join(', ')} are one directory`);
  assert.ok(!existsSync(jail), `${label}: nothing at ${jail}`);
  assert.deepEqual(readdirSync(w.dir).filter((n) => n.startsWith('jail')), [], `${label}: nothing made beside it`);
}

/**
 * Asserts that every one of `pids` has the removed jail of `w` as its root and its removed /sub
 * as its working directory, one directory each for all, and that nothing is at their paths.
 */
function inRemovedSub(w: Workload, pids: readonly number[], label: string): void {
  const jail = join(w.dir, 'jail');
  const ids = { root: new Set<string>(), cwd: new Set<string>() };
  for (const pid of pids) {
    for (const [link, path, mode] of [['root', jail, 0o751], ['cwd', join(jail, 'sub'), 0o710]] as const) {
      assert.equal(readlinkSync(`/proc/${pid}/${link}`), `${path} (deleted)`, `${label}: pid ${pid} ${link}`);
      const st = statSync(`/proc/${pid}/${link}`);
      assert.equal(st.nlink, 0, `${label}: pid ${pid} ${link} has no links`);
      assert.deepEqual([st.mode & 0o7777, st.uid, st.gid], [mode, 65534, 65534], `${label}: pid ${pid} ${link} has its mode and owner`);
      ids[link].add(`${st.dev}:${st.ino}`);
    }
    // Walked from here, not stopped by the process's root: the working directory's parent.
    const up = statSync(`/proc/${pid}/cwd/..`);
    assert.ok(ids.root.has(`${up.dev}:${up.ino}`), `${label}: pid ${pid}: the parent of its working directory is its root`);
  }
  assert.equal(ids.root.size, 1, `${label}: one root for ${pids.join(', ')}`);
  assert.equal(ids.cwd.size, 1, `${label}: one working directory for ${pids.join(', ')}`);
  assert.ok(![...ids.cwd].some((id) => ids.root.has(id)), `${label}: the working directory is not the root`);
  assert.deepEqual(readdirSync(w.dir).filter((n) => n.startsWith('jail')), [], `${label}: nothing at the jail's path or beside it`);
}

/**
 * Asserts that every one of `pids` has the removed jail of `w` as its root and its removed
 * /a/b/sub as its working directory, with the removed /a/b and /a between (as the host sees
 * them, walking ".." from the working directory): each with its mode and owner, one directory
 * each for all, the working directory's fourth ".." the root; nothing at their paths.
 */
function inRemovedChain(w: Workload, pids: readonly number[], label: string): void {
  const jail = join(w.dir, 'jail');
  const ids = new Map<string, Set<string>>();
  for (const pid of pids) {
    assert.equal(readlinkSync(`/proc/${pid}/root`), `${jail} (deleted)`, `${label}: pid ${pid} root`);
    assert.equal(readlinkSync(`/proc/${pid}/cwd`), `${jail}/a/b/sub (deleted)`, `${label}: pid ${pid} cwd`);
    for (const [at, mode, uid, gid] of [['root', 0o751, 65534, 65534], ['cwd', 0o710, 65534, 65534], ['cwd/..', 0o750, 65534, 0],
      ['cwd/../..', 0o755, 0, 0], ['cwd/../../..', 0o751, 65534, 65534]] as const) {
      const st = statSync(`/proc/${pid}/${at}`);
      assert.equal(st.nlink, 0, `${label}: pid ${pid} ${at} has no links`);
      assert.deepEqual([st.mode & 0o7777, st.uid, st.gid], [mode, uid, gid], `${label}: pid ${pid} ${at} has its mode and owner`);
      if (!ids.has(at)) ids.set(at, new Set());
      ids.get(at)!.add(`${st.dev}:${st.ino}`);
    }
  }
  for (const [at, set] of ids) assert.equal(set.size, 1, `${label}: one ${at} for ${pids.join(', ')}`);
  const one = (at: string): string => [...ids.get(at)!][0]!;
  assert.equal(one('cwd/../../..'), one('root'), `${label}: the working directory's chain of ".." ends at the root`);
  assert.equal(new Set(['root', 'cwd', 'cwd/..', 'cwd/../..'].map(one)).size, 4, `${label}: four directories`);
  assert.deepEqual(readdirSync(w.dir).filter((n) => n.startsWith('jail')), [], `${label}: nothing at the jail's path or beside it`);
}

/**
 * Asserts that the open files of `held` (chrooted ... held) in each of `pids` are the very
 * directories its working directory, root and (`deep`) the working directory's parent are.
 */
function heldAreTheirs(pids: readonly number[], deep: boolean, label: string): void {
  const id = (p: string): string => { const st = statSync(p); return `${st.dev}:${st.ino}`; };
  for (const pid of pids) {
    for (const [fd, at] of [[12, 'cwd'], [13, 'root'], ...(deep ? [[14, 'cwd/..'] as const] : [])] as const) {
      assert.equal(id(`/proc/${pid}/fd/${fd}`), id(`/proc/${pid}/${at}`), `${label}: pid ${pid} fd ${fd} is its ${at}`);
    }
  }
}

describe('a chroot\'ed process', { skip, timeout: 120_000 }, () => {
  it('comes back in its root, twice in a row', async () => {
    const w = await start();
    const jail = join(w.dir, 'jail');
    assert.equal(readlinkSync(`/proc/${w.pid}/root`), jail);
    assert.equal(await verify(w), 'PASS', w.text());
    for (let i = 0; i < 2; i++) {
      await cycleThrough(w, join(w.dir, 'chroot.tar'), i);
      assert.equal(readlinkSync(`/proc/${w.pid}/root`), jail, `cycle ${i + 1}`);
      assert.equal(readlinkSync(`/proc/${w.pid}/cwd`), join(jail, 'sub'), `cycle ${i + 1}`);
      assert.equal(await askVerdict(w.pid, w.text), 'PASS', w.text());
    }
  });

  it('--leave-running leaves it in its root', async () => {
    const w = await start();
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(readlinkSync(`/proc/${w.pid}/root`), join(w.dir, 'jail'));
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('a descriptor of the host\'s / held from before the chroot comes back as the host\'s /, twice in a row; --leave-running keeps it', async () => {
    const w = await start('rootfd');
    const host = statSync('/');
    /** Descriptors 10 and 11 of the process are the host's / (from the host: device and inode, and the path). */
    const outside = (label: string): void => {
      for (const fd of [10, 11]) {
        const st = statSync(`/proc/${w.pid}/fd/${fd}`);
        assert.deepEqual([st.dev, st.ino], [host.dev, host.ino], `${label}: fd ${fd} is the host's /`);
        assert.equal(readlinkSync(`/proc/${w.pid}/fd/${fd}`), '/', `${label}: fd ${fd}`);
      }
    };
    outside('before');
    assert.equal(await verify(w), 'PASS', w.text());
    const lr = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'rootfd-lr.tar'), '--leave-running']);
    assert.equal(lr.code, 0, lr.stderr);
    outside('left running');
    assert.equal(await askVerdict(w.pid, w.text), 'PASS', w.text());
    for (let i = 0; i < 2; i++) {
      await cycleThrough(w, join(w.dir, 'rootfd.tar'), i);
      assert.equal(readlinkSync(`/proc/${w.pid}/root`), join(w.dir, 'jail'), `cycle ${i + 1}`);
      outside(`cycle ${i + 1}`);
      assert.equal(await askVerdict(w.pid, w.text), 'PASS', w.text());
    }
  });

  it('a removed root comes back removed, one directory for root and working directory of the tree, twice in a row', async () => {
    const { w, pids } = await inRemovedRoot();
    inOneRemovedJail(w, pids, 'before');
    assert.equal(await askVerdict(w.pid, w.text), 'PASS', w.text());
    for (let i = 0; i < 2; i++) {
      await cycleThrough(w, join(w.dir, 'removed.tar'), i, [], { tree: pids.slice(1) });
      for (const pid of pids.slice(1)) own(pid);
      inOneRemovedJail(w, pids, `cycle ${i + 1}`);
      assert.equal(await askVerdict(w.pid, w.text), 'PASS', w.text());
    }
  });

  it('--leave-running leaves a removed root as it was', async () => {
    const { w, pids } = await inRemovedRoot();
    const before = statSync(`/proc/${w.pid}/root`).ino;
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    for (const pid of pids) assert.equal(procState(pid).tracer, 0, `pid ${pid} untraced`);
    inOneRemovedJail(w, pids, 'after');
    assert.equal(statSync(`/proc/${w.pid}/root`).ino, before, 'the very directory it had');
    // A ferry that does not know removed roots refuses the image rather than chroot into
    // whatever has the path (image/features.ts).
    const ins = ferry(['inspect', '--image', join(w.dir, 'lr.tar'), '--json']);
    assert.equal(ins.code, 0, ins.stderr);
    const { manifest } = JSON.parse(ins.stdout.toString()) as { manifest: { formatVersion: number; requires?: string[] } };
    assert.equal(manifest.formatVersion, 7);
    assert.ok(manifest.requires?.includes('removed-root'), JSON.stringify(manifest.requires));
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('a removed working directory in a removed root comes back in it, one for the tree, twice in a row', async () => {
    const { w, pids } = await inRemovedRoot('removedsub');
    inRemovedSub(w, pids, 'before');
    assert.equal(await askVerdict(w.pid, w.text), 'PASS', w.text());
    for (let i = 0; i < 2; i++) {
      await cycleThrough(w, join(w.dir, 'sub.tar'), i, [], { tree: pids.slice(1) });
      for (const pid of pids.slice(1)) own(pid);
      inRemovedSub(w, pids, `cycle ${i + 1}`);
      assert.equal(await askVerdict(w.pid, w.text), 'PASS', w.text());
    }
  });

  it('--leave-running leaves a removed working directory in a removed root as it was; one deeper in an edited image is refused', async () => {
    const { w, pids } = await inRemovedRoot('removedsub');
    const image = join(w.dir, 'lr.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    for (const pid of pids) assert.equal(procState(pid).tracer, 0, `pid ${pid} untraced`);
    inRemovedSub(w, pids, 'after');
    assert.equal(await askVerdict(w.pid, w.text), 'PASS', w.text());
    for (const pid of pids) process.kill(pid, 'SIGKILL');
    await w.exited;
    await waitFor('the tree to be free', () => !pids.some(alive), 8000);
    // Its working directory claimed a directory deeper, with none recorded between: one made at
    // that path would not be where it was.
    const deeper = join(w.dir, 'deeper.tar');
    await editImage(image, deeper, { [`tasks/${w.pid}/task.json`]: json<TaskRecord>((t) => { t.cwd = `${t.root!}/a/sub`; }) });
    const rs = ferry(['restore', '--image', deeper, '--max-creds', 'root']);
    assert.equal(rs.code, 1);
    assert.match(rs.stderr, new RegExp(`^ferry restore: image ${deeper}: the removed working directory "${w.dir}/jail/a/sub" of pid ${w.pid} is 2 names below `
      + `its removed root directory "${w.dir}/jail", and the image records 0 directories between \\(task.json cwdBetween\\), not one for each name but its own: `
      + 'refused \\(an edited image\\); nothing was restored\n$'));
    for (const pid of pids) assert.ok(!alive(pid), `pid ${pid}: nothing made`);
    assert.deepEqual(readdirSync(w.dir).filter((n) => n.startsWith('jail')), [], 'no directory made');
  });

  it('a removed working directory deeper in a removed root comes back with the removed directories between, one chain for the tree, twice in a row', async () => {
    const { w, pids } = await inRemovedRoot('removeddeep');
    inRemovedChain(w, pids, 'before');
    assert.equal(await askVerdict(w.pid, w.text), 'PASS', w.text());
    const image = join(w.dir, 'deep.tar');
    for (let i = 0; i < 2; i++) {
      await cycleThrough(w, image, i, [], { tree: pids.slice(1) });
      for (const pid of pids.slice(1)) own(pid);
      inRemovedChain(w, pids, `cycle ${i + 1}`);
      assert.equal(await askVerdict(w.pid, w.text), 'PASS', w.text());
    }
    // The directories between are recorded from the root down: /a, then /a/b.
    const task = JSON.parse(spawnSync('tar', ['-xOf', image, `tasks/${w.pid}/task.json`], { encoding: 'utf8' }).stdout) as TaskRecord;
    assert.deepEqual(task.cwdBetween?.map((d) => [d.mode, d.uid, d.gid]), [[0o755, 0, 0], [0o750, 65534, 0]]);
  });

  // Each file's directory was once made apart from the processes' (at its path, outside the
  // restored root): another inode, whose ".." led out of the jail.
  for (const mode of ['removedsub', 'removeddeep'] as const) {
    it(`${mode}: the removed working directory, root and directory between that open files hold too come back as the processes' own, nested as they were, twice in a row`, async () => {
      const { w, pids } = await inRemovedRoot(mode, 'held');
      const check = (label: string): void => {
        if (mode === 'removedsub') inRemovedSub(w, pids, label);
        else inRemovedChain(w, pids, label);
        heldAreTheirs(pids, mode === 'removeddeep', label);
      };
      check('before');
      assert.equal(await askVerdict(w.pid, w.text), 'PASS', w.text());
      for (let i = 0; i < 2; i++) {
        await cycleThrough(w, join(w.dir, 'held.tar'), i, [], { tree: pids.slice(1) });
        for (const pid of pids.slice(1)) own(pid);
        check(`cycle ${i + 1}`);
        assert.equal(await askVerdict(w.pid, w.text), 'PASS', w.text());
      }
      if (mode !== 'removeddeep') return;
      // The open files of the directories below the root must say their place, mode and owner:
      // one moved elsewhere would have the chain made where no write check judged it.
      const image = join(w.dir, 'held-edit.tar');
      const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image]);
      assert.equal(cp.code, 0, cp.stderr);
      await waitFor('the tree to be free', () => !pids.some(alive), 8000);
      type Files = { files: Array<{ path: string; directory?: boolean; removed?: { mode: number } }> };
      const jail = join(w.dir, 'jail');
      const refused = async (name: string, edit: (v: Files) => void, why: RegExp): Promise<void> => {
        const edited = join(w.dir, name);
        await editImage(image, edited, { 'files.json': json<Files>(edit) });
        const rs = ferry(['restore', '--image', edited, '--max-creds', 'root']);
        assert.equal(rs.code, 1, rs.stderr);
        assert.equal(rs.stderr.split('\n').length, 2, rs.stderr);
        assert.match(rs.stderr, why);
        for (const pid of pids) assert.ok(!alive(pid), `${name}: pid ${pid}: nothing made`);
        assert.deepEqual(readdirSync(w.dir).filter((n) => n.startsWith('jail')), [], `${name}: no directory made`);
      };
      const of = (v: Files, path: string) => v.files.find((f) => f.directory === true && f.removed !== undefined && f.path === path)!;
      await refused('between-place.tar', (v) => { of(v, `${jail}/a/b`).path = `${jail}/a/elsewhere`; },
        new RegExp(`: file \\d+ holds the removed directory below the removed root directory of pid \\d+ \\(device \\d+, inode \\d+\\) at another place \\("${jail}/a/elsewhere", "${jail}/a/b"\\): refused \\(an edited image\\); nothing was restored\n$`));
      await refused('cwd-mode.tar', (v) => { of(v, `${jail}/a/b/sub`).removed!.mode = 0o700; },
        new RegExp(`: file \\d+ holds the removed directory below the removed root directory "${jail}/a/b/sub" of pid \\d+ \\(device \\d+, inode \\d+\\) with another mode or owner \\(700 65534:65534, 710 65534:65534\\): refused`));
      const ok = ferry(['restore', '--image', image]);
      assert.equal(ok.code, 0, ok.stderr);
      pids.forEach(own);
      check('restored');
      assert.equal(await askVerdict(w.pid, w.text), 'PASS', w.text());
    });
  }

  it('--leave-running leaves a deeper removed working directory as it was; edited chains are refused in one line, with nothing made', async () => {
    const { w, pids } = await inRemovedRoot('removeddeep');
    const image = join(w.dir, 'deep-lr.tar');
    const before = statSync(`/proc/${w.pid}/cwd/..`).ino;
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    for (const pid of pids) {
      const st = procState(pid);
      assert.equal(st.tracer, 0, `pid ${pid} untraced`);
      assert.ok(!'tT'.includes(st.state), `pid ${pid} not stopped`);
    }
    inRemovedChain(w, pids, 'after');
    assert.equal(statSync(`/proc/${w.pid}/cwd/..`).ino, before, 'the very directories it had');
    assert.equal(await askVerdict(w.pid, w.text), 'PASS', w.text());
    for (const pid of pids) process.kill(pid, 'SIGKILL');
    await w.exited;
    await waitFor('the tree to be free', () => !pids.some(alive), 8000);
    const refused = async (name: string, edits: Parameters<typeof editImage>[2], why: RegExp): Promise<void> => {
      const edited = join(w.dir, name);
      await editImage(image, edited, edits);
      // Unsigned, so untrusted: --max-creds root lets its root processes reach the checks.
      const rs = ferry(['restore', '--image', edited, '--max-creds', 'root']);
      assert.equal(rs.code, 1, rs.stderr);
      assert.equal(rs.stderr.split('\n').length, 2, rs.stderr);
      assert.match(rs.stderr, why);
      for (const pid of pids) assert.ok(!alive(pid), `${name}: pid ${pid}: nothing made`);
      assert.deepEqual(readdirSync(w.dir).filter((n) => n.startsWith('jail')), [], `${name}: no directory made`);
    };
    // A name of the path that is no directory's name: it would climb out of the chain.
    await refused('dots.tar', { [`tasks/${w.pid}/task.json`]: json<TaskRecord>((t) => { t.cwd = `${t.root!}/a/../sub`; }) },
      new RegExp(`^ferry restore: image entry tasks/${w.pid}/task.json is invalid: cwd ".*" has "\\.\\." as a name below root, which is not one directory's name`));
    // One directory between fewer than the path has names.
    await refused('short.tar', { [`tasks/${w.pid}/task.json`]: json<TaskRecord>((t) => { t.cwdBetween = t.cwdBetween!.slice(1); }) },
      new RegExp(`^ferry restore: image entry tasks/${w.pid}/task.json is invalid: cwd ".*" has 3 names below root, where cwdBetween \\(1 directories\\) wants 2`));
    // The two processes give the one directory /a/b two modes.
    await refused('modes.tar', { [`tasks/${pids[1]}/task.json`]: json<TaskRecord>((t) => { t.cwdBetween![1]!.mode = 0o777; }) },
      new RegExp(`^ferry restore: image ${w.dir}/modes.tar: pids ${pids[0]} and ${pids[1]} have the same removed directory \\(device \\d+, inode \\d+\\) below their removed root `
        + 'with another path, mode or owner .*: refused \\(an edited image\\); nothing was restored\n$'));
    // /a/b given /a's identity: a directory that would be its own parent.
    await refused('loop.tar', Object.fromEntries(pids.map((pid) => [`tasks/${pid}/task.json`, json<TaskRecord>((t) => {
      t.cwdBetween![1] = { ...t.cwdBetween![1]!, dev: t.cwdBetween![0]!.dev!, ino: t.cwdBetween![0]!.ino! };
    })])), /: pids \d+ and \d+ have the same removed directory .* below their removed root with another path, mode or owner .*: refused \(an edited image\); nothing was restored\n$/);
    // The image as checkpointed still comes back.
    const ok = ferry(['restore', '--image', image]);
    assert.equal(ok.code, 0, ok.stderr);
    pids.forEach(own);
    inRemovedChain(w, pids, 'restored');
    assert.equal(await askVerdict(w.pid, w.text), 'PASS', w.text());
  });

  it('a removed working directory more than 64 directories below a removed root is refused at checkpoint in one line; the tree runs on', async () => {
    const w = await start('removedtoodeep');
    const pids = ownTree(w);
    assert.equal(await askVerdict(w.pid, w.text), 'PASS', w.text());
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'no.tar')]);
    assert.equal(cp.code, 1);
    assert.equal(cp.stderr, `ferry checkpoint: pid ${w.pid}: its working directory ${w.dir}/jail${'/d'.repeat(65)} was removed, and so was its root directory ${w.dir}/jail, `
      + 'more than 64 directories above it: restore cannot rebuild that; the process was left running\n');
    for (const pid of pids) {
      const st = procState(pid);
      assert.equal(st.tracer, 0, `pid ${pid} untraced`);
      assert.ok(!'tT'.includes(st.state), `pid ${pid} not stopped`);
    }
    assert.ok(!existsSync(join(w.dir, 'no.tar')), 'no image left');
    assert.equal(await askVerdict(w.pid, w.text), 'PASS', w.text());
  });

  it('an edited image giving one removed root two paths is refused in one line, with nothing made', async () => {
    const { w, pids } = await inRemovedRoot();
    const image = join(w.dir, 'removed.tar');
    await checkpointTreeFreed(w, image);
    const edited = join(w.dir, 'edited.tar');
    await editImage(image, edited, { [`tasks/${pids[1]}/task.json`]: json<TaskRecord>((t) => { t.root = `${t.root!}2`; }) });
    // Unsigned, so untrusted: --max-creds root lets its root processes reach the check.
    const rs = ferry(['restore', '--image', edited, '--max-creds', 'root']);
    assert.equal(rs.code, 1);
    assert.match(rs.stderr, new RegExp(`^ferry restore: image ${edited}: pids ${pids[0]} and ${pids[1]} have the same removed root directory \\(device \\d+, inode \\d+\\) `
      + 'with another path, mode or owner .*: refused \\(an edited image\\); nothing was restored\\n$'));
    for (const pid of pids) assert.ok(!alive(pid), `pid ${pid}: nothing made`);
    assert.deepEqual(readdirSync(w.dir).filter((n) => n.startsWith('jail')), [], 'no directory made');
    // The image as checkpointed still comes back.
    const ok = ferry(['restore', '--image', image]);
    assert.equal(ok.code, 0, ok.stderr);
    pids.forEach(own);
    inOneRemovedJail(w, pids, 'restored');
    assert.equal(await askVerdict(w.pid, w.text), 'PASS', w.text());
  });

  it('an unsigned image may not chroot a process that could not do it itself; a removed root fails the restore in one line', async () => {
    const w = await start('nobody');
    const image = join(w.dir, 'nobody.tar');
    await checkpointFreed(w, image);
    const unsigned = join(w.dir, 'unsigned.tar');
    await editImage(image, unsigned, []);
    const no = ferry(['restore', '--image', unsigned]);
    assert.equal(no.code, 1);
    assert.match(no.stderr, new RegExp(`^ferry restore: image ${unsigned}: pid ${w.pid} \\(chrooted\\) would be restored chroot'ed into ${join(w.dir, 'jail')}, `
      + 'which its thread \\d+ could not do itself \\(no CAP_SYS_CHROOT, no no_new_privs\\), and only an image a trusted key signed may give: '
      + 'sign it and restore with --trust; nothing was restored\\n$'));
    assert.ok(!alive(w.pid), 'nothing made');
    // This machine's own image is trusted: it comes back, as nobody, in its root.
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.equal(readlinkSync(`/proc/${w.pid}/root`), join(w.dir, 'jail'));
    assert.equal(await askVerdict(w.pid, w.text), 'PASS', w.text());
    // Its root (and working directory in it) removed meanwhile: one line, and nothing left.
    const again = join(w.dir, 'again.tar');
    await checkpointFreed(w, again);
    rmSync(join(w.dir, 'jail'), { recursive: true, force: true });
    const gone = ferry(['restore', '--image', again]);
    assert.equal(gone.code, 1);
    assert.match(gone.stderr, new RegExp(`^ferry restore: .*pid ${w.pid}\\b.*\\n$`));
    assert.equal(gone.stderr.split('\n').length, 2, gone.stderr);
    assert.ok(!alive(w.pid), 'nothing left');
  });
});
