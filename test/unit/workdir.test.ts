/**
 * The sweep of migrations' private directories (src/migrate/workdir.ts): a dead sender's
 * directory goes, unless it was marked at the hand-over, when its copy may be the workload's
 * only one: that copy is moved out and named, never removed.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { appendFileSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { FrameLog, TAG_PAGES, TAG_RAW, TAG_REF, writeHead } from '../../src/migrate/precopy.js';
import { copyImage, FRAME_LOG, HANDED_OVER, keptCopyWarning, removeStaleDirs, SENDER_DIR } from '../../src/migrate/workdir.js';

const work = mkdtempSync(join(tmpdir(), 'ferry-workdir-'));
after(() => rmSync(work, { recursive: true, force: true }));

/** A pid that existed and is gone now (a child that exited and was reaped). */
const gone = Number(spawnSync('/bin/sh', ['-c', 'echo $$'], { encoding: 'utf8' }).stdout.trim());

describe('removeStaleDirs', () => {
  it('removes a dead sender\'s directory, keeps a live one\'s', () => {
    const dead = join(work, `${SENDER_DIR}${gone}-aaaaaa`);
    const live = join(work, `${SENDER_DIR}${process.pid}-bbbbbb`);
    for (const d of [dead, live]) {
      mkdirSync(d);
      writeFileSync(join(d, 'image.tar'), 'image');
    }
    const kept: string[] = [];
    removeStaleDirs(work, SENDER_DIR, (image) => kept.push(image));
    assert.ok(!existsSync(dead) && existsSync(live));
    assert.deepEqual(kept, []);
    rmSync(live, { recursive: true });
  });

  it('moves out and names the copy of a sender that died at the hand-over', () => {
    const dir = join(work, `${SENDER_DIR}${gone}-cccccc`);
    mkdirSync(dir);
    writeFileSync(join(dir, 'image.tar'), 'the only copy');
    writeFileSync(join(dir, HANDED_OVER), JSON.stringify({ pid: 4242, to: 'tcp://node2:7070' }));
    const kept: Array<[string, number]> = [];
    removeStaleDirs(work, SENDER_DIR, (image, pid) => kept.push([image, pid]));
    assert.ok(!existsSync(dir));
    assert.equal(kept.length, 1);
    const [image, pid] = kept[0]!;
    assert.equal(pid, 4242);
    assert.equal(readFileSync(image, 'utf8'), 'the only copy');
    assert.deepEqual(readdirSync(work), [`ferry-migrate-4242-unknown-${gone}-cccccc.tar`]);
    assert.equal(keptCopyWarning(image, pid), `a migration of pid 4242 lost its sender at the hand-over, so whether it runs on its target is unknown: `
      + `its image is kept in ${image}; if pid 4242 runs neither here nor there, restore it with: ferry restore --image ${image}`);
    // A later sweep leaves it: it is no private directory.
    removeStaleDirs(work, SENDER_DIR, () => assert.fail('swept twice'));
    assert.ok(existsSync(image));
  });

  it('makes the image from the frames a pre-copy sender kept, then moves it out', async () => {
    const dir = join(work, `${SENDER_DIR}${gone}-dddddd`);
    mkdirSync(dir);
    const log = new FrameLog(work, join(work, 'unused'));
    // The frozen image's frames are written on the pool (the sender defers once the rounds end).
    log.deferWrites();
    const pages = Buffer.alloc(17 + 2 * 4096, 7);
    writeHead(pages, TAG_PAGES, 4242, 0x10000n, 2);
    const ref = Buffer.alloc(17);
    writeHead(ref, TAG_REF, 4242, 0x10000n, 2);
    for (const f of [pages, Buffer.concat([Buffer.from([TAG_RAW]), Buffer.from('head')]), ref, Buffer.concat([Buffer.from([TAG_RAW]), Buffer.from('tail')])]) log.append(f);
    assert.deepEqual(readdirSync(work).filter((n) => n !== `ferry-migrate-4242-unknown-${gone}-cccccc.tar`).sort(), [`${SENDER_DIR}${gone}-dddddd`], 'no name until it is given one');
    log.name(join(dir, FRAME_LOG));
    await log.finish();
    writeFileSync(join(dir, HANDED_OVER), JSON.stringify({ pid: 4243, to: 'tcp://node2:7070' }));
    const kept: string[] = [];
    removeStaleDirs(work, SENDER_DIR, (image) => kept.push(image));
    assert.ok(!existsSync(dir));
    assert.equal(kept.length, 1);
    assert.deepEqual(readFileSync(kept[0]!), Buffer.concat([Buffer.from('head'), Buffer.alloc(2 * 4096, 7), Buffer.from('tail')]));
  });

  it('a rebuild that fails leaves no image and the frames as they were; one killed before does not block the next', async () => {
    const dir = join(work, `${SENDER_DIR}${process.pid}-eeeeee`);
    mkdirSync(dir);
    const frames = join(dir, FRAME_LOG);
    const log = new FrameLog(work, join(work, 'unused2'));
    const pages = Buffer.alloc(17 + 4096, 9);
    writeHead(pages, TAG_PAGES, 4244, 0x10000n, 1);
    const ref = Buffer.alloc(17);
    writeHead(ref, TAG_REF, 4244, 0x10000n, 1);
    for (const f of [pages, Buffer.concat([Buffer.from([TAG_RAW]), Buffer.from('head')]), ref]) log.append(f);
    log.name(frames);
    await log.finish();
    const whole = readFileSync(frames);
    // Cut inside a record: the rebuild fails part-way, after it has written some of the image.
    appendFileSync(frames, Buffer.from([0, 0, 0, 9, TAG_RAW]));
    assert.throws(() => copyImage(dir), /ends inside a record/);
    assert.deepEqual(readdirSync(dir).sort(), [FRAME_LOG], 'neither the image nor its partial nor the store is left');
    assert.deepEqual(readFileSync(frames).subarray(0, whole.length), whole, 'the frames are untouched');
    // What a rebuild killed mid-way leaves (a partial image, the page store) is not taken for
    // the image, nor does it stop the next rebuild.
    writeFileSync(frames, whole);
    copyFileSync(frames, join(dir, 'image.tar.partial'));
    writeFileSync(join(dir, 'precopy.pages'), 'stale');
    assert.deepEqual(readFileSync(copyImage(dir)), Buffer.concat([Buffer.from('head'), Buffer.alloc(4096, 9)]));
    assert.deepEqual(readdirSync(dir).sort(), [FRAME_LOG, 'image.tar']);
    rmSync(dir, { recursive: true });
  });
});

describe('FrameLog, its writes deferred (the frozen image\'s frames)', { skip: process.getuid?.() !== 0 && 'needs root (a tmpfs of its own)' }, () => {
  it('fails finish() in one line when the file system is full (ENOSPC), and closes its descriptor', async () => {
    // A 64 KiB tmpfs of its own: the frames do not fit.
    const small = mkdtempSync(join(tmpdir(), 'ferry-framelog-full-'));
    assert.equal(spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', small]).status, 0);
    try {
      const log = new FrameLog(small, join(small, 'frames'));
      log.deferWrites();
      const frame = Buffer.concat([Buffer.from([TAG_RAW]), Buffer.alloc(256 << 10, 1)]);
      for (let i = 0; i < 8; i++) log.append(frame);
      await assert.rejects(log.finish(), (err: Error & { code?: string }) => err.code === 'ENOSPC'
        && /cannot keep the local copy of the migration's frames in .* \(image.work_dir\): .*ENOSPC.*\(free space there/i.test(err.message) && !err.message.includes('\n'));
      assert.throws(() => log.append(frame), /closed before its last frame/, 'nothing more is taken');
    } finally {
      spawnSync('umount', [small]);
      rmSync(small, { recursive: true, force: true });
    }
  });

  it('a wait it hands out may be dropped (the image filter drops what the log returns): its failure ends nothing', async () => {
    const small = mkdtempSync(join(tmpdir(), 'ferry-framelog-full-'));
    assert.equal(spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', small]).status, 0);
    let unhandled: unknown;
    const seen = (reason: unknown): void => { unhandled = reason; };
    process.on('unhandledRejection', seen);
    try {
      const log = new FrameLog(small, join(small, 'frames'));
      log.deferWrites();
      // More than its backlog (16 MiB) in flight: each append hands out a wait, dropped here.
      const frame = Buffer.concat([Buffer.from([TAG_RAW]), Buffer.alloc(1 << 20, 1)]);
      let waits = 0;
      for (let i = 0; i < 20; i++) {
        log.append(frame);
        if (log.backlog() !== undefined) waits++;
      }
      assert.ok(waits > 0, 'some appends asked to wait');
      await assert.rejects(log.finish(), (err: Error & { code?: string }) => err.code === 'ENOSPC');
      await new Promise((r) => setImmediate(r));
      assert.equal(unhandled, undefined, 'no rejection left unhandled');
    } finally {
      process.off('unhandledRejection', seen);
      spawnSync('umount', [small]);
      rmSync(small, { recursive: true, force: true });
    }
  });
});
