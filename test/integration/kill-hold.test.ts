/**
 * The quick kill (src/dump/memory-hold.ts, native/mm-hold.cc): a checkpoint that kills the
 * tree holds each big address space from a thread of its own across the kill, so the killed
 * process is reaped (its PID free) before its memory is freed, and the memory is freed once the
 * caller lets go (`teardownAfter`: a migration, once the tree runs on the target).
 *
 * Seen from outside through a memory cgroup (v1) the workload was started in: its pages stay
 * charged there after the process is gone, while held, and leave once let go; the image
 * restores the workload whole. Nothing about time is asserted (bench:migrate shows the kill).
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import pino from 'pino';
import { loadConfig } from '../../src/config/config.js';
import { checkpoint, restore } from '../../src/index.js';
import { rmCgroupTree } from '../helpers/cgroups.js';
import { needs, WORKLOADS } from '../helpers/env.js';
import { alive, cleanup, own, sleep, startWorkload, verify, waitFor } from '../helpers/processes.js';

const MEMCHECK = join(WORKLOADS, 'memcheck');
const DIRTIER = join(WORKLOADS, 'dirtier');
const MEMORY = '/sys/fs/cgroup/memory';
const skip = needs('root', 'build') || (!existsSync(MEMCHECK) && "needs build/workloads/memcheck ('npm run build')")
  || (!existsSync('/usr/bin/flock') && 'needs /usr/bin/flock (util-linux)')
  || (!existsSync(join(MEMORY, 'memory.usage_in_bytes')) && `needs the cgroup v1 memory controller at ${MEMORY}`);

const imageDir = mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'ferry-kill-hold-'));
const cgroup = join(MEMORY, `ferry-test-kill-hold-${process.pid}`);
after(async () => {
  cleanup();
  await rmCgroupTree(cgroup);
  rmSync(imageDir, { recursive: true, force: true });
});

const config = loadConfig({});
const logger = pino({ level: 'silent' });
const MIB = 1 << 20;
const charged = (): number => Number(readFileSync(join(cgroup, 'memory.usage_in_bytes'), 'utf8'));

describe('the kill of a checkpoint', { skip, timeout: 120_000 }, () => {
  it('reaps a big process before its memory is freed, which the caller lets go later; the image restores it whole', async () => {
    mkdirSync(cgroup);
    // The workload joins the cgroup before it exists as memcheck: every page it touches is charged there.
    const w = await startWorkload('/bin/sh', ['-c', `echo $$ > ${cgroup}/cgroup.procs && exec ${MEMCHECK} 64`]);
    assert.ok(charged() >= 64 * MIB, `the workload's 64 MiB are charged to its cgroup (${charged()} bytes)`);
    const image = join(imageDir, 'img.tar');
    let letGo = (): void => {};
    const teardownAfter = new Promise<void>((resolve) => { letGo = resolve; });
    try {
      const r = await checkpoint({ pid: w.pid, image, leaveRunning: false, config, logger, teardownAfter });
      assert.deepEqual(r.pids, [w.pid]);
      // This process is its parent: Node reaps it once the checkpoint has killed it (the
      // checkpoint waits for the reaping of every other process only). Gone, its memory is
      // still held by ferry.
      await waitFor(`pid ${w.pid} to be reaped`, () => !alive(w.pid), 10_000);
      await sleep(200);
      assert.ok(charged() >= 60 * MIB, `its memory is still held after it was reaped (${Math.round(charged() / MIB)} MiB charged)`);
    } finally {
      letGo();
    }
    await waitFor('the held memory to be freed', () => charged() < 8 * MIB, 10_000, () => `${Math.round(charged() / MIB)} MiB still charged`);

    const back = await restore({ image, config, logger });
    own(back.pid);
    assert.equal(back.pid, w.pid);
    assert.equal(await verify(w), 'PASS');
    process.kill(w.pid, 'SIGKILL');
  });

  it('holds nothing for a tree holding a flock: the memory and the lock go with the kill; the image restores it with its lock', async () => {
    mkdirSync(cgroup, { recursive: true });
    // The shell opens the file, flock(1) locks that open file, and the dirtier keeps it (fd 9;
    // memcheck closes what it inherits).
    const lockFile = join(imageDir, 'held.lock');
    const w = await startWorkload('/bin/sh', ['-c', `echo $$ > ${cgroup}/cgroup.procs && exec 9>${lockFile} && /usr/bin/flock 9 && exec ${DIRTIER} 32 1`]);
    const ino = statSync(lockFile).ino;
    const locked = (): boolean => new RegExp(`FLOCK\\s+ADVISORY\\s+WRITE\\s+\\d+\\s+[0-9a-f]+:[0-9a-f]+:${ino} `).test(readFileSync('/proc/locks', 'utf8'));
    assert.ok(locked(), 'the workload holds the lock');
    const image = join(imageDir, 'img3.tar');
    let letGo = (): void => {};
    const teardownAfter = new Promise<void>((resolve) => { letGo = resolve; });
    try {
      const r = await checkpoint({ pid: w.pid, image, leaveRunning: false, config, logger, teardownAfter, files: { fileLocks: true } });
      assert.deepEqual(r.pids, [w.pid]);
      await waitFor(`pid ${w.pid} to be reaped`, () => !alive(w.pid), 10_000);
      // Nothing held although teardownAfter is pending: the lock would live on in a held mapping.
      await waitFor('the memory to be freed', () => charged() < 8 * MIB, 10_000, () => `${Math.round(charged() / MIB)} MiB still charged`);
      assert.ok(!locked(), 'the lock went with the kill');
    } finally {
      letGo();
    }
    const back = await restore({ image, config, logger, files: { fileLocks: true } });
    own(back.pid);
    assert.equal(back.pid, w.pid);
    assert.ok(locked(), 'the lock is held again');
    assert.equal(await verify(w), 'PASS');
    process.kill(w.pid, 'SIGKILL');
  });

  it('frees the memory itself, without teardownAfter, before it returns', async () => {
    mkdirSync(cgroup, { recursive: true });
    const w = await startWorkload('/bin/sh', ['-c', `echo $$ > ${cgroup}/cgroup.procs && exec ${MEMCHECK} 32`]);
    const image = join(imageDir, 'img2.tar');
    await checkpoint({ pid: w.pid, image, leaveRunning: false, config, logger });
    await waitFor(`pid ${w.pid} to be reaped`, () => !alive(w.pid), 10_000);
    // Freed on the holding thread: let go before the checkpoint returned, done soon after.
    await waitFor('the memory to be freed', () => charged() < 8 * MIB, 10_000, () => `${Math.round(charged() / MIB)} MiB still charged`);
  });
});
