/**
 * Open files whose name was removed while the file kept another name, through bin/ferry:
 * build/workloads/linkgone holds two open files (and a child shares one) of DIR/a, linked as
 * DIR/b before DIR/a was removed; it checks after restore that they are still that inode, at
 * their offsets, with "DIR/a (deleted)" links. With "maps" it maps such files too, one only
 * through its maps (shared and private), one through a descriptor it holds, and checks the
 * areas map the same inodes at their offsets, with their protection and own pages.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, WORKLOADS } from '../helpers/env.js';
import { editImage, json } from '../helpers/images.js';
import { alive, checkpointTreeFreed, cleanup, ferry, procState, scratchDir, startWorkload, verify } from '../helpers/processes.js';

const skip = needs('root', 'build');
after(cleanup);

const LINKGONE = join(WORKLOADS, 'linkgone');

describe('a removed name of a file that has another', { skip, timeout: 120_000 }, () => {
  it('comes back as that inode, removed again, with offsets and sharing; nothing is left behind', async () => {
    const w = await startWorkload(LINKGONE, ['DIR']);
    const image = join(w.dir, 'linked.tar');
    await checkpointTreeFreed(w, image);
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    assert.equal(await verify(w), 'PASS');
    assert.deepEqual(readdirSync(w.dir).filter((n) => n.length === 1), ['b'], 'the name made for the restore is gone');
  });

  it('--leave-running leaves the original as it was', async () => {
    const w = await startWorkload(LINKGONE, ['DIR']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS');
  });

  it('its memory maps come back mapping that inode, held by a descriptor or by the maps alone', async () => {
    const w = await startWorkload(LINKGONE, ['DIR', 'maps']);
    const image = join(w.dir, 'maps.tar');
    await checkpointTreeFreed(w, image);
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    assert.equal(await verify(w), 'PASS');
    assert.deepEqual(readdirSync(w.dir).filter((n) => n.length === 1).sort(), ['b', 'd', 'f'], 'the names made for the restore are gone');
  });

  it('--leave-running leaves the original\'s maps as they were', async () => {
    const w = await startWorkload(LINKGONE, ['DIR', 'maps']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS');
    assert.deepEqual(readdirSync(w.dir).filter((n) => n.length === 1).sort(), ['b', 'd', 'f']);
  });

  it('once its last name is gone too, the restore is refused naming it', async () => {
    const w = await startWorkload(LINKGONE, ['DIR']);
    const image = join(w.dir, 'linked.tar');
    await checkpointTreeFreed(w, image);
    rmSync(join(w.dir, 'b'));
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 1);
    assert.match(rs.stderr, new RegExp(`file \\d+ \\(${join(w.dir, 'a')} \\(deleted\\)\\) of the image is gone: its other names were removed too`));
    assert.ok(!alive(w.pid));
  });

  it('on a file system that gives no handles (overlayfs) the checkpoint is refused in one line, the tree left running', async () => {
    // An overlay mount of the test's own (without nfs_export it has no export operations:
    // name_to_handle_at(2) fails EOPNOTSUPP).
    const ov = scratchDir('ferry-overlay-');
    for (const d of ['lower', 'upper', 'work', 'merged']) mkdirSync(join(ov, d));
    const merged = join(ov, 'merged');
    execFileSync('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${ov}/lower,upperdir=${ov}/upper,workdir=${ov}/work`, merged]);
    try {
      const w = await startWorkload(LINKGONE, [merged]);
      try {
        const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'ov.tar'), '--leave-running']);
        assert.equal(cp.code, 1);
        assert.equal(cp.stderr, `ferry checkpoint: unsupported file: pid ${w.pid} fd 3 -> ${merged}/a (deleted): its name was removed while it has `
          + '1 other name(s), and its file system (overlay) gives no handle by which a restore could find it again: close it in that process, '
          + 'or link it back under its old name, before checkpointing\n');
        assert.equal(procState(w.pid).tracer, 0);
        assert.equal(await verify(w), 'PASS');
      } finally {
        try { process.kill(-w.pid, 'SIGKILL'); } catch { /* exited */ }
        await w.exited;
      }
    } finally {
      execFileSync('umount', ['-l', merged]);
    }
  });

  it('an untrusted image may not reach a file by its handle', async () => {
    const w = await startWorkload(LINKGONE, ['DIR']);
    const image = join(w.dir, 'linked.tar');
    await checkpointTreeFreed(w, image);
    const edited = join(w.dir, 'edited.tar');
    await editImage(image, edited, { 'files.json': json(() => undefined) });
    const rs = ferry(['restore', '--image', edited, '--max-creds', 'root']);
    assert.equal(rs.code, 1);
    assert.match(rs.stderr, /is reached by its file system handle, which no path confines: only an image this host signed or one you trust may do that/);
    assert.ok(!alive(w.pid));
  });
});
