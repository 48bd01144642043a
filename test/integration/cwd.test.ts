/**
 * A working directory removed while the process runs, through bin/ferry: build/workloads/cwdgone
 * sits in DIR/gone, which the test removes; after restore it checks it is still in a removed
 * directory of that path, with its mode and owner.
 */
import assert from 'node:assert/strict';
import { chmodSync, chownSync, existsSync, mkdirSync, readdirSync, readlinkSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, WORKLOADS } from '../helpers/env.js';
import { editImage, json } from '../helpers/images.js';
import { alive, checkpointFreed, cleanup, ferry, own, procState, startWorkload, verify, type Workload } from '../helpers/processes.js';

const skip = needs('root', 'build');
after(cleanup);

const NOBODY = 65534;

/** Starts cwdgone in DIR/gone (mode 0751, owned by `uid`), then removes DIR/gone. */
async function inRemovedDir(uid = 0): Promise<Workload> {
  const setpriv = uid === 0 ? [] : ['--reuid', String(uid), '--regid', String(uid), '--clear-groups'];
  // The scratch dir is made by startWorkload: make gone inside it from a launcher shell.
  const w = await startWorkload('/bin/sh', ['-c',
    `mkdir -m 0751 "$1/gone" && chown ${uid}:${uid} "$1/gone" && chmod 0711 "$1" && exec ${uid === 0 ? '' : `setpriv ${setpriv.join(' ')} `}"$2" "$1"`,
    'sh', 'DIR', join(WORKLOADS, 'cwdgone')]);
  rmdirSync(join(w.dir, 'gone'));
  return w;
}


describe('a removed working directory', { skip, timeout: 120_000 }, () => {
  it('comes back removed, with its path, mode and owner; nothing is left behind', async () => {
    const w = await inRemovedDir();
    const image = join(w.dir, 'cwd.tar');
    await checkpointFreed(w, image);
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.equal(await verify(w), 'PASS');
    assert.ok(!existsSync(join(w.dir, 'gone')), 'the directory made for the chdir is gone');
  });

  it('when the name was taken again meanwhile, the process does not land in the new directory', async () => {
    const w = await inRemovedDir();
    const image = join(w.dir, 'cwd.tar');
    await checkpointFreed(w, image);
    mkdirSync(join(w.dir, 'gone'));
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.equal(readlinkSync(`/proc/${w.pid}/cwd`), `${join(w.dir, 'gone')}.ferry-removed-1 (deleted)`);
    assert.deepEqual(readdirSync(w.dir).filter((n) => n.startsWith('gone')).sort(), ['gone'], 'the new directory stays, nothing else is left');
  });

  it('--leave-running leaves the original in its removed directory', async () => {
    const w = await inRemovedDir();
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS');
  });

  it('an untrusted image may not have it made where its process could not write', async () => {
    const w = await inRemovedDir(NOBODY);
    const image = join(w.dir, 'cwd.tar');
    await checkpointFreed(w, image);
    // Any edit drops the signature: the image is then untrusted.
    const edited = join(w.dir, 'edited.tar');
    await editImage(image, edited, { 'files.json': json(() => undefined) });
    chmodSync(w.dir, 0o755);
    chownSync(w.dir, 0, 0);
    const rs = ferry(['restore', '--image', edited]);
    assert.equal(rs.code, 1);
    assert.match(rs.stderr, new RegExp(`pid ${w.pid} \\(cwdgone\\) had the removed directory "${join(w.dir, 'gone')}" as its working directory; restore would make it again in "${w.dir}", which its credentials \\(uid 65534, gid 65534, no CAP_DAC_OVERRIDE\\) could not write in`));
    assert.ok(!alive(w.pid), 'nothing was made');
    assert.ok(!existsSync(join(w.dir, 'gone')));
  });
});
