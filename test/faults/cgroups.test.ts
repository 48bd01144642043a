/**
 * Fault cells of `restore --manage-cgroups` (src/cgroups/restore.ts): the cgroups a restore
 * made for the tree are removed when it is interrupted or killed before the tree runs —
 * by ferry's undo (SIGTERM) or, when ferry is SIGKILLed, by the watchdog once the stubs that
 * died with ferry have left them — and the image restores again after.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { rmCgroupTree } from '../helpers/cgroups.js';
import { needs, WORKLOADS } from '../helpers/env.js';
import { alive, checkpointFreed, cleanup, ferry, own, startWorkload, verify, waitFor } from '../helpers/processes.js';
import { hit, pidsFree, whilePaused, type Fault, type Problems } from './helpers.js';

const CG = '/sys/fs/cgroup';
const skip = needs('root', 'build') || (!existsSync(join(CG, 'pids', 'cgroup.procs')) ? 'needs the v1 pids controller at /sys/fs/cgroup/pids' : false);
const NAME = `ferry-fault-cg-${process.pid}-${Date.now().toString(36)}`;
const TOP = join(CG, 'pids', NAME);

after(async () => {
  cleanup();
  await rmCgroupTree(TOP).catch(() => {});
});

describe('fault cells: restore --manage-cgroups', { skip, timeout: 180_000 }, () => {
  it('killed or interrupted at created and rebuilt: the cgroups it made are gone, and a retry restores', async () => {
    mkdirSync(join(TOP, 'a'), { recursive: true });
    writeFileSync(join(TOP, 'a', 'pids.max'), '64');
    const w = await startWorkload(join(WORKLOADS, 'cgroups'), [join(TOP, 'a', 'cgroup.procs')]);
    const image = join(w.dir, 'cg.tar');
    await checkpointFreed(w, image);
    await rmCgroupTree(TOP);
    const p: Problems = [];
    const cells: Array<[string, Fault]> = [['created', 'SIGKILL'], ['created', 'SIGTERM'], ['rebuilt', 'SIGKILL'], ['rebuilt', 'SIGTERM']];
    for (const [phase, fault] of cells) {
      await whilePaused(p, ['restore', '--image', image, '--manage-cgroups'], phase, async (run) => {
        if (!existsSync(join(TOP, 'a'))) p.push(`${fault} @ ${phase}: the cgroup was not made before the pause`);
        await hit(run, fault, p);
        for (const left of await pidsFree([w.pid])) p.push(`${fault} @ ${phase}: ${left}`);
        await waitFor(`${fault} @ ${phase}: the cgroups made to be removed`, () => !existsSync(TOP), 10_000)
          .catch(() => p.push(`${fault} @ ${phase}: ${TOP} is still there`));
      }, `${fault} @ ${phase}: `);
    }
    assert.deepEqual(p, []);
    const rs = ferry(['restore', '--image', image, '--manage-cgroups']);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.ok(alive(w.pid));
    assert.equal(await verify(w), 'PASS', w.text());
  });
});
