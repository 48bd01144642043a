/**
 * The freezer's failure path: a cgroup that never reports frozen is thawed again and named in
 * one line. (A real cgroup that refuses to freeze cannot be made on demand; its state file is
 * stood in for by /dev/null, which takes the writes and never says FROZEN.)
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { freezerAt } from '../../src/container/cgroup.js';

const dir = mkdtempSync(join(tmpdir(), 'ferry-cgroup-test-'));
after(() => rmSync(dir, { recursive: true, force: true }));

describe('cgroup freezer', { timeout: 60_000 }, () => {
  it('a v1 cgroup that cannot be frozen is thawed and reported', async () => {
    symlinkSync('/dev/null', join(dir, 'freezer.state'));
    writeFileSync(join(dir, 'tasks'), '');
    const f = freezerAt('v1', dir, 'c1');
    await assert.rejects(f.freeze(), /cannot freeze container c1 \(.*freezer.state stays \): it was thawed and keeps running/);
  });

  it('a v2 cgroup reports its threads and thaws', async () => {
    const d = mkdtempSync(join(dir, 'v2-'));
    writeFileSync(join(d, 'cgroup.freeze'), '0');
    writeFileSync(join(d, 'cgroup.events'), 'populated 1\nfrozen 0\n');
    writeFileSync(join(d, 'cgroup.threads'), '10\n11\n');
    const f = freezerAt('v2', d, 'c2');
    assert.deepEqual(f.tids(), [10, 11]);
    await assert.rejects(f.freeze(), /cannot freeze container c2 .*never says frozen/);
    assert.equal(readFileSync(join(d, 'cgroup.freeze'), 'utf8'), '0', 'thawed again');
  });
});
