/**
 * Chroot'ed processes (TaskRecord `root`: src/dump/root-dir.ts, src/restore/root-dir.ts)
 * through bin/ferry: build/workloads/chrooted changes its root to a jail of its own and checks
 * on SIGUSR1 that it is still there (the jail's marker, no /proc, its working directory). It
 * comes back chroot'ed, twice in a row, and with --leave-running keeps its root. An image no
 * trusted key signed may not put a process in a root it could not have made itself (an
 * unprivileged process without no_new_privs): refused before anything is made. A jail removed
 * since (with the working directory in it) is a restore failure in one line, with nothing left.
 */
import assert from 'node:assert/strict';
import { readlinkSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, WORKLOADS } from '../helpers/env.js';
import { editImage } from '../helpers/images.js';
import { alive, askVerdict, checkpointFreed, cleanup, cycleThrough, ferry, own, startWorkload, verify } from '../helpers/processes.js';

const skip = needs('root', 'build');
after(cleanup);

const start = (...args: string[]) => startWorkload(join(WORKLOADS, 'chrooted'), ['DIR', ...args]);

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
