/**
 * Page data is verified chunk by chunk as restore writes it into the new processes (one pass
 * over the image, docs/image-format.md "Chunked entries"): a damaged chunk of any process
 * fails the restore with one line naming the entry and the chunk, after other processes of the
 * tree were already rebuilt from good chunks, and nothing of the tree is left: no process at
 * any pid of the image, no restore stub. The good image then restores on the same pids.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { isChunked } from '../../src/image/manifest.js';
import { openImage } from '../../src/image/reader.js';
import { needs, ROOT, WORKLOADS } from '../helpers/env.js';
import { cleanup, ferry, own, startWorkload, verify, waitFor } from '../helpers/processes.js';

const skip = needs('root', 'build');
after(cleanup);

/** Whether `pid` is a live process (a zombie waiting for init runs nothing). */
function live(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.charAt(stat.lastIndexOf(')') + 2) !== 'Z';
  } catch { return false; }
}

/** Pids of live ferry-stub processes. */
function stubs(): number[] {
  return readdirSync('/proc').filter((d) => /^\d+$/.test(d)).filter((d) => {
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      // This tree's stubs only: other checkouts on the machine may be restoring meanwhile.
      return stat.includes(' (ferry-stub) ') && stat.charAt(stat.lastIndexOf(')') + 2) !== 'Z'
        && readlinkSync(`/proc/${d}/exe`).startsWith(`${ROOT}/`);
    } catch { return false; }
  }).map(Number);
}

describe('page data verified as it is restored', { skip, timeout: 300_000 }, () => {
  it('a flipped byte in the middle of the last process\'s pages: refused, nothing of the tree left, and the image still restores', async () => {
    // Four processes of 24 MiB each: more than 8 MiB of pages, so chunks are hashed on the worker.
    const w = await startWorkload(join(WORKLOADS, 'memcheck'), ['24', 'tree']);
    const kids = /^children (\d+) (\d+) (\d+)$/m.exec(w.text())!.slice(1).map(Number);
    kids.forEach(own);
    const image = join(w.dir, 'tree.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image]);
    assert.equal(cp.code, 0, cp.stderr);
    await w.exited;
    await waitFor('the checkpointed tree to be gone', () => ![w.pid, ...kids].some(live));

    const img = await openImage(image, { workDir: w.dir });
    const tasks = img.manifest.tasks;
    const last = tasks.at(-1)!;
    const name = `tasks/${last}/pages.bin`;
    const entry = img.manifest.entries.find((e) => e.name === name)!;
    const { offset, size } = img.locate(name);
    await img.close();
    assert.equal(tasks.length, 4);
    assert.ok(isChunked(entry), 'page data is listed chunk by chunk');
    assert.ok(entry.chunks.length >= 5, `${entry.chunks.length} chunks`);
    const at = Math.floor(size / 2);
    const data = readFileSync(image);
    data[offset + at] = data[offset + at]! ^ 0x01;
    const bad = join(w.dir, 'bad.tar');
    writeFileSync(bad, data);

    const before = stubs();
    const r = ferry(['restore', '--image', bad]);
    assert.equal(r.code, 1, r.stderr);
    const lines = r.stderr.trimEnd().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0]!, new RegExp(`image .*bad.tar is corrupt: entry tasks/${last}/pages.bin chunk ${Math.floor(at / entry.chunkSize)} `
      + 'has sha256 [0-9a-f]{12}… but the manifest says [0-9a-f]{12}…$'));
    for (const p of tasks) assert.ok(!live(p), `no process with pid ${p} of the image`);
    assert.deepEqual(stubs().filter((p) => !before.includes(p)), [], 'no restore stub left');

    // Nothing was left in the way: the good image restores on the same pids and checks itself.
    const ok = ferry(['restore', '--image', image]);
    tasks.forEach(own);
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(await verify(w), 'PASS');
  });
});
