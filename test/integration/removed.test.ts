/**
 * A FIFO (with queued bytes, both ends open) and a directory held open after their names were
 * removed, through bin/ferry: build/workloads/removed checks after restore that both are
 * still removed, with their links, data, mode and owner, and that no name came back. Likewise
 * removed device nodes (build/workloads/devgone: /dev/null's and, under a removed directory,
 * /dev/zero's), which only a trusted image may have made again. And removed nodes each held by
 * several open files opened separately, in two processes (build/workloads/gonetwice: a device
 * node, a FIFO opened for reading, writing and O_PATH, a symlink held O_PATH twice), which come
 * back as one inode each, and by two processes in different root directories
 * (build/workloads/chrootgone).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, readdirSync, readFileSync, readlinkSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, WORKLOADS } from '../helpers/env.js';
import type { TaskRecord } from '../../src/image/records.js';
import { editImage, json } from '../helpers/images.js';
import { alive, checkpointFreed, checkpointTreeFreed, cleanup, cycleThrough, ferry, own, ownTree, procState, refuseEdited, scratchDir, startWorkload, verify } from '../helpers/processes.js';

const skip = needs('root', 'build');
after(cleanup);

const REMOVED = join(WORKLOADS, 'removed');

describe('removed FIFOs and directories held open', { skip, timeout: 120_000 }, () => {
  it('come back removed, with their data, mode and owner; no name is left', async () => {
    const w = await startWorkload(REMOVED, ['DIR']);
    const image = join(w.dir, 'removed.tar');
    await checkpointFreed(w, image);
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.equal(await verify(w), 'PASS');
    assert.deepEqual(readdirSync(w.dir).filter((n) => n.startsWith('ff') || n.startsWith('d')), []);
  });

  it('--leave-running leaves the original as it was', async () => {
    const w = await startWorkload(REMOVED, ['DIR']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS');
  });
});

describe('O_PATH descriptors of a symlink (O_NOFOLLOW), a file, a directory, and a removed file, FIFO and symlink', { skip, timeout: 120_000 }, () => {
  const OPATH = join(WORKLOADS, 'opath');

  it('come back as the symlink itself, the file, the directory, the removed file (made again from its stored contents) and the removed FIFO and symlink (made again, owner, mode, text), still O_PATH; no name is left', async () => {
    const w = await startWorkload(OPATH, ['DIR']);
    const image = join(w.dir, 'opath.tar');
    await checkpointFreed(w, image);
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.deepEqual(readdirSync(w.dir).filter((n) => /^(fifo|gonelink|ghost|gonedir)|ferry/.test(n)), [], 'the names made for the restore are gone');
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('come back from an unsigned image too, whose files are opened with no symlink followed: the symlink itself is the link', async () => {
    const w = await startWorkload(OPATH, ['DIR']);
    const image = join(w.dir, 'opath.tar');
    await checkpointFreed(w, image);
    const unsigned = join(w.dir, 'unsigned.tar');
    await editImage(image, unsigned, { 'files.json': json(() => undefined) });
    const rs = ferry(['restore', '--image', unsigned, '--max-creds', 'root']);
    if (alive(w.pid)) own(w.pid);
    assert.equal(rs.code, 0, rs.stderr);
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('one of a removed name whose file has another comes back as that file, still O_PATH; --leave-running too', async () => {
    const w = await startWorkload(OPATH, ['DIR', 'linked']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0);
    const image = join(w.dir, 'linked.tar');
    await checkpointFreed(w, image);
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('--leave-running leaves them as they were', async () => {
    const w = await startWorkload(OPATH, ['DIR']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS', w.text());
  });
});

describe('deleted files whose directory was removed too (rm -rf logs)', { skip, timeout: 120_000 }, () => {
  const GHOSTDIR = join(WORKLOADS, 'ghostdir');

  it('come back with their links, contents, offsets and no name, in directories made for the moment; no name is left', async () => {
    const w = await startWorkload(GHOSTDIR, ['DIR']);
    const image = join(w.dir, 'ghostdir.tar');
    await checkpointFreed(w, image);
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.deepEqual(readdirSync(w.dir).filter((n) => /^logs|ferry/.test(n)), [], 'the directories made for the restore are gone');
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('--leave-running leaves the original as it was', async () => {
    const w = await startWorkload(GHOSTDIR, ['DIR']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('an untrusted image has the directory made only where the process could have made it', async () => {
    const w = await startWorkload(GHOSTDIR, ['DIR']);
    const image = join(w.dir, 'ghostdir.tar');
    await checkpointFreed(w, image);
    const edited = join(w.dir, 'edited.tar');
    // An edit (which drops the signature) making the process nobody without capabilities, who
    // may not write in DIR (root's).
    await editImage(image, edited, [[/^tasks\/\d+\/task\.json$/, json<{ creds: { threads: Array<Record<string, any>> } }>((t) => { // eslint-disable-line @typescript-eslint/no-explicit-any
      for (const th of t.creds.threads) {
        th.uids = [65534, 65534, 65534, 65534];
        th.gids = [65534, 65534, 65534, 65534];
        th.groups = [];
        for (const k of ['effective', 'permitted', 'inheritable', 'ambient']) th.caps[k] = '0x0';
      }
    })]]);
    const rs = ferry(['restore', '--image', edited]);
    assert.equal(rs.code, 1, rs.stderr);
    assert.match(rs.stderr, new RegExp(`^ferry restore: image ${edited}: pid ${w.pid} \\(ghostdir\\) had the removed directory "${w.dir}/logs(/old)?" as the directory of its deleted file `
      + `"${w.dir}/logs/(app|old/rot).log" \\(fd \\d+\\); restore would make it again in "${w.dir}", which its credentials \\(uid 65534, gid 65534`));
    assert.equal(rs.stderr.trimEnd().split('\n').length, 1, 'one line');
    assert.deepEqual(readdirSync(w.dir).filter((n) => /^logs|ferry/.test(n)), [], 'no directory made');
  });

  for (const mode of ['held', 'below']) {
    it(`in (${mode === 'held' ? 'directly' : 'below'}) a removed directory the tree also holds: refused at checkpoint in one line, the process runs on`, async () => {
      const w = await startWorkload(GHOSTDIR, ['DIR', mode]);
      const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'x.tar')]);
      assert.equal(cp.code, 1, cp.stderr);
      const file = mode === 'held' ? 'app\\.log' : '(app\\.log|sub/rot\\.log)';
      assert.match(cp.stderr, new RegExp(`^ferry checkpoint: unsupported: pid ${w.pid} fd \\d+ holds the deleted file "${w.dir}/logs/${file}" in the removed directory "${w.dir}/logs", `
        + `which the tree also holds (as the working directory of pid ${w.pid}|open as fd \\d+ of pid ${w.pid}): restore cannot make a file in a removed directory it holds; `));
      assert.equal(cp.stderr.trimEnd().split('\n').length, 1, 'one line');
      assert.equal(procState(w.pid).tracer, 0);
      assert.equal(await verify(w), 'PASS', w.text());
    });
  }
});

describe('character device nodes whose names were removed', { skip, timeout: 120_000 }, () => {
  const DEVGONE = join(WORKLOADS, 'devgone');

  it('come back as the same devices, removed, with mode, owner and links; a removed directory above one too; no name is left', async () => {
    const w = await startWorkload(DEVGONE, ['DIR']);
    const image = join(w.dir, 'devgone.tar');
    await checkpointFreed(w, image);
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.deepEqual(readdirSync(w.dir).filter((n) => /^(null|sub)/.test(n)), [], 'the names made for the restore are gone');
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('--leave-running leaves the original as it was', async () => {
    const w = await startWorkload(DEVGONE, ['DIR']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('an untrusted image may not have device nodes made: one line naming pid, fd and node, nothing made', async () => {
    const w = await startWorkload(DEVGONE, ['DIR']);
    const image = join(w.dir, 'devgone.tar');
    await checkpointFreed(w, image);
    const edited = join(w.dir, 'edited.tar');
    await editImage(image, edited, { 'files.json': json(() => undefined) });
    const rs = ferry(['restore', '--image', edited, '--max-creds', 'root']);
    assert.equal(rs.code, 1, rs.stderr);
    assert.match(rs.stderr, new RegExp(`^ferry restore: image ${edited}: pid ${w.pid} fd \\d+ holds "${w.dir}/(null|sub/zero)", a device node whose name was removed, `
      + 'which restore would make again \\(mknod\\): only an image this host signed or one you trust may have device nodes made'));
    assert.equal(rs.stderr.trimEnd().split('\n').length, 1, 'one line');
    assert.ok(!alive(w.pid));
    assert.deepEqual(readdirSync(w.dir).filter((n) => /^(null|sub)/.test(n)), [], 'no node was made');
  });

  it('a removed node of another device is refused with one line before the tree is touched; the process runs on with it', async () => {
    const w = await startWorkload(DEVGONE, ['DIR', 'kmsg']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'x.tar')]);
    assert.equal(cp.code, 1, cp.stderr);
    assert.match(cp.stderr, new RegExp(`^ferry checkpoint: unsupported file: pid ${w.pid} fd \\d+ -> .*/kmsg \\(deleted\\) \\(a character device node 1:11 whose name was removed cannot be checkpointed: only removed nodes of null, zero, full, random, urandom`));
    assert.equal(cp.stderr.trimEnd().split('\n').length, 1, 'one line');
    assert.equal(procState(w.pid).tracer, 0, 'not traced');
    assert.equal(await verify(w), 'PASS', w.text());
  });
});

describe('removed nodes each held by several open files, in two processes', { skip, timeout: 180_000 }, () => {
  const GONETWICE = join(WORKLOADS, 'gonetwice');

  it('come back as one inode each, opened as often as it was: a device node, a FIFO (its ends joined, its bytes queued once, O_PATH too) and a symlink; twice; no name is left', async () => {
    const w = await startWorkload(GONETWICE, ['DIR']);
    const image = join(w.dir, 'gonetwice.tar');
    const tree = ownTree(w);
    for (let i = 0; i < 2; i++) {
      await cycleThrough(w, image, i, [], { tree });
      assert.deepEqual(readdirSync(w.dir).filter((n) => /^(null|ff|sym)|ferry/.test(n)), [], 'the names made for the restore are gone');
    }
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('an image whose records of one node say different nodes is refused in one line before anything is made', async () => {
    const w = await startWorkload(GONETWICE, ['DIR']);
    const image = join(w.dir, 'gonetwice.tar');
    const pids = await checkpointTreeFreed(w, image);
    const edited = join(w.dir, 'edited.tar');
    await editImage(image, edited, { 'files.json': json<{ files: Array<{ id: number; kind: string; removed?: { mode: number } }> }>((v) => {
      v.files.find((f) => f.kind === 'fifo' && f.removed !== undefined)!.removed!.mode = 0o666;
    }) });
    const rs = ferry(['restore', '--image', edited, '--max-creds', 'root']);
    assert.equal(rs.code, 1, rs.stderr);
    assert.match(rs.stderr, new RegExp(`^ferry restore: image ${edited}: files \\d+ and \\d+ hold one removed node \\(\\d+:\\d+\\) but say different ones `
      + '\\(FIFO, mode (620|666) owner 56:78; FIFO, mode (620|666) owner 56:78\\): refused, nothing was restored\n$'));
    assert.ok(pids.every((p) => !alive(p)), 'no process made');
    assert.deepEqual(readdirSync(w.dir).filter((n) => /^(null|ff|sym)|ferry/.test(n)), [], 'no node made');
  });

  it('--leave-running leaves them as they were', async () => {
    const w = await startWorkload(GONETWICE, ['DIR']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS', w.text());
  });
});

/**
 * Removed nodes held by two processes in different root directories (build/workloads/chrootgone:
 * a directory and a FIFO, each opened by both, then removed, then each process chroot'ed into
 * a jail of its own). The records of one node say one path whatever the holder's root (ferry
 * reads each /proc/PID/fd link from its own root: the kernel's d_path is relative to the
 * reader's root, not the holder's), so the node is made once for both.
 */
describe('removed nodes held by processes in different root directories', { skip, timeout: 180_000 }, () => {
  it('come back as one inode each for both, each process in its own root; twice; no name is left', async () => {
    const w = await startWorkload(join(WORKLOADS, 'chrootgone'), ['DIR']);
    const image = join(w.dir, 'chrootgone.tar');
    const tree = ownTree(w);
    for (let i = 0; i < 2; i++) {
      await cycleThrough(w, image, i, [], { tree });
      assert.deepEqual(readdirSync(w.dir).filter((n) => /^(gone|ff)|ferry/.test(n)), [], 'the names made for the restore are gone');
    }
    const { files } = JSON.parse(spawnSync('tar', ['-xOf', image, 'files.json'], { encoding: 'utf8' }).stdout) as { files: Array<{ path?: string; removed?: unknown }> };
    assert.deepEqual(files.filter((f) => f.removed !== undefined).map((f) => f.path).sort(),
      [join(w.dir, 'ff'), join(w.dir, 'ff'), join(w.dir, 'gone'), join(w.dir, 'gone')], 'two records of each node, with one path');
    assert.equal(await verify(w), 'PASS', w.text());
  });
});

describe('removed directories each held more than once, by processes that share no fs struct', { skip, timeout: 180_000 }, () => {
  const DIRTWICE = join(WORKLOADS, 'dirtwice');

  it('come back as one directory each: working directories of two processes, and one held open twice besides; twice; no name is left', async () => {
    const w = await startWorkload(DIRTWICE, ['DIR']);
    const image = join(w.dir, 'dirtwice.tar');
    const tree = ownTree(w);
    for (let i = 0; i < 2; i++) {
      await cycleThrough(w, image, i, [], { tree });
      assert.deepEqual(readdirSync(w.dir).filter((n) => /^(gone|two)|ferry/.test(n)), [], 'the names made for the restore are gone');
    }
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('an image whose holders of one removed directory say different ones is refused in one line before anything is made', async () => {
    const w = await startWorkload(DIRTWICE, ['DIR']);
    const image = join(w.dir, 'dirtwice.tar');
    const pids = await checkpointTreeFreed(w, image);
    const refused = async (name: string, edits: Parameters<typeof editImage>[2], want: RegExp): Promise<void> => {
      const edited = join(w.dir, name);
      await editImage(image, edited, { 'files.json': json(() => undefined), ...edits });
      const rs = ferry(['restore', '--image', edited, '--max-creds', 'root']);
      assert.equal(rs.code, 1, rs.stderr);
      assert.match(rs.stderr, new RegExp(`^ferry restore: image ${edited}: ${want.source}`));
      assert.equal(rs.stderr.trimEnd().split('\n').length, 1, 'one line');
      assert.ok(pids.every((p) => !alive(p)), 'no process made');
      assert.deepEqual(readdirSync(w.dir).filter((n) => /^(gone|two)|ferry/.test(n)), [], 'no directory made');
    };
    // Two open files of DIR/gone, one with another mode.
    await refused('files.tar', { 'files.json': json<{ files: Array<{ directory?: boolean; removed?: { mode: number } }> }>((v) => {
      v.files.find((f) => f.directory === true && f.removed !== undefined)!.removed!.mode = 0o700;
    }) }, /files \d+ and \d+ hold one removed node \(\d+:\d+\) but say different ones \(directory ".*\/gone", mode (750|700) owner 12:34; directory ".*\/gone", mode (750|700) owner 12:34\): refused/);
    // The parent's working directory, with another owner than its open files of it and the first child's working directory.
    await refused('cwd.tar', { [`tasks/${w.pid}/task.json`]: json<TaskRecord>((t) => { t.cwdDeleted!.uid = 0; }) },
      /pids \d+ and \d+ have the same removed working directory \(device \d+, inode \d+\) with another path, mode or owner/);
    // Its open files, all moved elsewhere: the working directories would be made where no write check judged them.
    await refused('place.tar', { 'files.json': json<{ files: Array<{ path: string; directory?: boolean; removed?: unknown }> }>((v) => {
      for (const f of v.files) if (f.directory === true && f.removed !== undefined && f.path.endsWith('/gone')) f.path = `${f.path.slice(0, -4)}elsewhere`;
    }) }, /file \d+ holds the removed working directory of pid \d+ \(device \d+, inode \d+\) at another place \(".*\/elsewhere", ".*\/gone"\): refused/);
  });

  it('--leave-running leaves them as they were', async () => {
    const w = await startWorkload(DIRTWICE, ['DIR']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS', w.text());
  });
});

describe('a deleted file only mapped (no descriptor holds it)', { skip, timeout: 120_000 }, () => {
  const MAPGONE = join(WORKLOADS, 'mapgone');

  it('comes back as one removed file under its path, mapped as it was, twice', async () => {
    const w = await startWorkload(MAPGONE, ['DIR']);
    const image = join(w.dir, 'mapgone.tar');
    for (let i = 0; i < 2; i++) {
      await checkpointFreed(i === 0 ? w : { pid: w.pid, exited: Promise.resolve() }, image, `checkpoint ${i + 1}`);
      const rs = ferry(['restore', '--image', image]);
      assert.equal(rs.code, 0, rs.stderr);
      own(w.pid);
      assert.deepEqual(readdirSync(w.dir).filter((n) => n.startsWith('lib')), [], 'no name is left');
    }
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('--leave-running leaves it as it was', async () => {
    const w = await startWorkload(MAPGONE, ['DIR']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS', w.text());
  });
});

describe('a process whose executable was removed (an upgrade replaced or deleted its binary)', { skip, timeout: 120_000 }, () => {
  /** Starts build/workloads/exegone from a copy of its own, which it removes (`mode`: rm, replace). */
  const start = (mode: 'rm' | 'replace') => {
    const bin = join(scratchDir(), 'exegone-bin');
    copyFileSync(join(WORKLOADS, 'exegone'), bin);
    chmodSync(bin, 0o755);
    return startWorkload(bin, [mode]);
  };
  /** /proc/PID/exe reads "... (deleted)" and is the inode its executable text maps (map_files). */
  const exeIsText = (pid: number): void => {
    assert.match(readlinkSync(`/proc/${pid}/exe`), / \(deleted\)$/);
    const exe = statSync(`/proc/${pid}/exe`, { bigint: true });
    const text = readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').find((l) => / r-xp .* \(deleted\)$/.test(l));
    assert.ok(text, 'an executable area of the removed file');
    const st = statSync(`/proc/${pid}/map_files/${text.split(' ')[0]}`, { bigint: true });
    assert.deepEqual([st.dev, st.ino], [exe.dev, exe.ino], 'the executable is the file its text maps');
    assert.equal(exe.nlink, 0n);
  };

  it('comes back as the removed file its text maps, under its path, twice', async () => {
    const w = await start('rm');
    const image = join(w.dir, 'exegone.tar');
    for (let i = 0; i < 2; i++) {
      await checkpointFreed(i === 0 ? w : { pid: w.pid, exited: Promise.resolve() }, image, `checkpoint ${i + 1}`);
      const rs = ferry(['restore', '--image', image]);
      assert.equal(rs.code, 0, rs.stderr);
      own(w.pid);
      exeIsText(w.pid);
    }
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('renamed over by a new binary: comes back as the removed file under its path, never the new one at it, twice', async () => {
    const w = await start('replace');
    const image = join(w.dir, 'exegone.tar');
    const bin = readlinkSync(`/proc/${w.pid}/exe`).replace(/ \(deleted\)$/, '');
    const listed = (): string[] => readdirSync(dirname(bin)).filter((n) => n.includes('ferry')).sort();
    const before = listed();
    const mapped = (): string[] => readFileSync(`/proc/${w.pid}/maps`, 'utf8').split('\n').filter((l) => l.endsWith(' (deleted)'))
      .map((l) => l.replace(/^\S+ \S+ \S+ \S+ \d+\s+/, ''));
    const names = mapped();
    assert.ok(names.length > 0 && names.every((m) => m === `${bin} (deleted)`), names.join(', '));
    for (let i = 0; i < 2; i++) {
      await checkpointFreed(i === 0 ? w : { pid: w.pid, exited: Promise.resolve() }, image, `checkpoint ${i + 1}`);
      const rs = ferry(['restore', '--image', image]);
      assert.equal(rs.code, 0, rs.stderr);
      own(w.pid);
      exeIsText(w.pid);
      // Its executable and every area of it read as they did (the workload checks the link).
      assert.equal(readlinkSync(`/proc/${w.pid}/exe`), `${bin} (deleted)`);
      assert.deepEqual(mapped(), names);
      assert.deepEqual(listed(), before, 'nothing of ferry\'s is left beside the name');
    }
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('--leave-running leaves it as it was; an edited image naming another file as its executable is refused', async () => {
    const w = await start('rm');
    const image = join(w.dir, 'lr.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0);
    exeIsText(w.pid);
    await refuseEdited(w, image, /^tasks\/\d+\/task\.json$/, [
      ['other.tar', (t) => { t.exeGhost = '0:1'; }, /exeGhost 0:1 names no deleted file the process maps/],
    ]);
  });

  it('one bigger than files.deleted_max_bytes is refused at checkpoint, the process left running', async () => {
    const w = await start('rm');
    const config = join(w.dir, 'ferry.toml');
    writeFileSync(config, '[files]\ndeleted_max_bytes = 4096\n');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'big.tar'), '--config', config]);
    assert.equal(cp.code, 1, cp.stderr);
    assert.match(cp.stderr, /exegone-bin \(deleted\).*more than files.deleted_max_bytes = 4096/);
    assert.equal(cp.stderr.trimEnd().split('\n').length, 1, 'one line');
    assert.ok(alive(w.pid));
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS', w.text());
  });
});
