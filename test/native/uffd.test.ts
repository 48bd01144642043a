/**
 * Dirty-page tracking (src/dump/dirty.ts over native/uffd.cc and inject.cc's takeFdAt) on a
 * real running process: the userfaultfd made inside it is ferry's alone afterwards, a scan
 * reports exactly the pages written since the one before (writes through /proc/PID/mem
 * here, a kernel write like any), the process is never left traced, and closing ends the
 * registration. Needs root and the dirtier workload (npm run build:native).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readdirSync, readFileSync, readlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import pino from 'pino';
import { DirtyTracker } from '../../src/dump/dirty.js';
import { PACKAGE_ROOT } from '../../src/native/binding.js';
import { parseMaps } from '../../src/proc/maps.js';
import { closeInheritedFds } from '../../src/proc/inherited.js';

closeInheritedFds();

const DIRTIER = join(PACKAGE_ROOT, 'build', 'workloads', 'dirtier');
const skip = process.getuid?.() !== 0 ? 'needs root (ptrace, pidfd_getfd of another process)'
  : existsSync(DIRTIER) ? false : `needs ${DIRTIER} (npm run build:native)`;
const started: number[] = [];
after(() => {
  for (const pid of started) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
  }
});

const pagesOf = (runs: ReadonlyArray<[bigint, number]>): number => runs.reduce((s, [, n]) => s + n, 0);

describe('dirty-page tracking', { skip, timeout: 60_000 }, () => {
  it('reports the pages written since the last scan, leaves no descriptor in the process, and ends with close()', async () => {
    // 16 MiB, nothing rewritten (rate 0): only what this test writes is dirty.
    const child = spawn(DIRTIER, ['16', '0'], { stdio: ['ignore', 'pipe', 'ignore'] });
    const pid = child.pid!;
    started.push(pid);
    await new Promise<void>((resolve) => child.stdout!.on('data', (d: Buffer) => { if (d.toString().includes('ready')) resolve(); }));
    const area = parseMaps(readFileSync(`/proc/${pid}/maps`, 'utf8')).find((v) => v.end - v.start === 16n << 20n);
    assert.ok(area, 'the 16 MiB area');

    const t = DirtyTracker.start([pid], pino({ level: 'silent' }));
    assert.ok(t, 'this kernel tracks writes asynchronously (DESIGN.md §7)');
    try {
      const links = readdirSync(`/proc/${pid}/fd`).map((fd) => readlinkSync(`/proc/${pid}/fd/${fd}`));
      assert.ok(!links.includes('anon_inode:[userfaultfd]'), `no userfaultfd left in the process: ${links.join(', ')}`);
      const mine = readdirSync('/proc/self/fd').map((fd) => { try { return readlinkSync(`/proc/self/fd/${fd}`); } catch { return ''; } });
      assert.ok(mine.includes('anon_inode:[userfaultfd]'), 'ferry holds it');
      assert.match(readFileSync(`/proc/${pid}/status`, 'utf8'), /TracerPid:\s+0\n/);

      const first = t.scan()[0]!;
      assert.ok(first.same);
      assert.ok(pagesOf(first.dirty) >= 4096, `the first scan reports every populated page (${pagesOf(first.dirty)})`);
      const quiet = t.scan()[0]!;
      assert.ok(pagesOf(quiet.dirty) < 32, `little is written between two scans of an idle writer (${pagesOf(quiet.dirty)})`);

      // Ten pages written from outside (a kernel write through /proc/PID/mem).
      const mem = openSync(`/proc/${pid}/mem`, 'r+');
      const written = [3, 4, 5, 100, 1000, 1001, 2047, 3000, 4000, 4095].map((i) => area.start + BigInt(i * 4096));
      for (const a of written) writeSync(mem, Buffer.from('x'), 0, 1, Number(a + 17n));
      closeSync(mem);
      const after1 = t.scan()[0]!;
      const hit = (a: bigint): boolean => after1.dirty.some(([s, n]) => a >= s && a < s + BigInt(n * 4096));
      for (const a of written) assert.ok(hit(a), `page 0x${a.toString(16)} reported written`);
      assert.ok(pagesOf(after1.dirty) < 10 + 32);
      const again = t.scan()[0]!;
      assert.ok(!written.some((a) => again.dirty.some(([s, n]) => a >= s && a < s + BigInt(n * 4096))), 're-armed: not reported twice');
      assert.match(readFileSync(`/proc/${pid}/smaps`, 'utf8'), /^VmFlags:.* uw/m);
    } finally {
      t.close();
    }
    assert.doesNotMatch(readFileSync(`/proc/${pid}/smaps`, 'utf8'), /^VmFlags:.* uw/m, 'closed: nothing registered');
    assert.doesNotMatch(readFileSync(`/proc/${pid}/status`, 'utf8'), /State:\s+[tT]/, 'not stopped');
  });
});
