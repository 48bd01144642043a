/**
 * eventfd, signalfd, timerfd, memfd and deleted-but-open files through bin/ferry:
 * build/workloads/anonfd (a parent and its child sharing them, memfds mapped with and without
 * a descriptor) checks them itself after restore, the child's writes through shared objects
 * included.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, WORKLOADS } from '../helpers/env.js';
import { alive, cleanup, ferry, ownTree, procState, sleep, startWorkload, verify, waitFor } from '../helpers/processes.js';

const skip = needs('root', 'build');
after(cleanup);

describe('eventfd, signalfd, timerfd, memfd and deleted files', { skip, timeout: 120_000 }, () => {
  it('come back with their state, shared between parent and child, three cycles in a row', async () => {
    const w = await startWorkload(join(WORKLOADS, 'anonfd'), ['DIR']);
    const pids = ownTree(w);
    assert.equal(pids.length, 2, 'parent and child');
    const image = join(w.dir, 'anonfd.tar');
    for (let i = 0; i < 3; i++) {
      await sleep(100);
      const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image]);
      assert.equal(cp.code, 0, `checkpoint ${i + 1}: ${cp.stderr}`);
      if (i === 0) await w.exited;
      await waitFor(`pids ${pids.join(', ')} to be free`, () => pids.every((p) => !alive(p)), 5000);
      const rs = ferry(['restore', '--image', image]);
      assert.equal(rs.code, 0, `restore ${i + 1}: ${rs.stderr}`);
      assert.ok(pids.every(alive), 'restored processes run');
    }
    await sleep(100);
    assert.equal(await verify(w), 'PASS');
  });

  it('--leave-running changes nothing (timer expirations are put back), and the image restores too', async () => {
    const w = await startWorkload(join(WORKLOADS, 'anonfd'), ['DIR']);
    const pids = ownTree(w);
    const image = join(w.dir, 'anonfd.tar');
    await sleep(50);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.ok(pids.every(alive));
    assert.equal(procState(w.pid).tracer, 0, 'detached');
    assert.equal(await verify(w), 'PASS', 'the original kept its state');
    await w.exited;
    await waitFor('the child to be gone', () => pids.every((p) => !alive(p)), 5000);
    const w2 = { ...w, text: () => readFileSync(w.log, 'utf8').split('PASS\n').slice(1).join('PASS\n') };
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    await sleep(100);
    assert.equal(await verify(w2), 'PASS', 'the restored copy has it too');
  });

  it('refuses a deleted file above files.deleted_max_bytes before touching the tree', async () => {
    const w = await startWorkload(join(WORKLOADS, 'anonfd'), ['DIR', 'big']);
    ownTree(w);
    const image = join(w.dir, 'anonfd.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image]);
    assert.equal(cp.code, 1, cp.stderr);
    assert.match(cp.stderr, new RegExp(`unsupported file: pid ${w.pid} fd \\d+ -> ${w.dir}/big \\(deleted\\) \\(the deleted file holds 68157440 bytes, more than files.deleted_max_bytes = 67108864`));
    assert.ok(alive(w.pid));
    // The limit comes from the configuration.
    const config = join(w.dir, 'ferry.toml');
    writeFileSync(config, '[files]\ndeleted_max_bytes = 4096\n');
    const small = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--config', config]);
    assert.equal(small.code, 1, small.stderr);
    assert.match(small.stderr, /more than files.deleted_max_bytes = 4096/);
    assert.equal(procState(w.pid).tracer, 0, 'never traced');
    assert.equal(await verify(w), 'PASS', 'untouched');
  });
});
