/**
 * Pre-dump through ferry's criu under an unmodified runc 1.1.5 (src/runtime/criu-track.ts):
 * `runc checkpoint --pre-dump`, a second one with `--parent-path`, then `runc checkpoint
 * --parent-path` and `runc restore`. The container is a busybox counter ("tick N" every
 * 100 ms, N in the shell's memory) with ctrmem beside it, which holds 32 MiB of a pattern it
 * checks on SIGUSR1: the first pre-dump copies all of it, the second and the final dump only
 * what changed (the final image far smaller than the first pre-dump), and after the restore
 * the counter counts on and ctrmem says PASS. While tracked the container runs (it ticks on;
 * its areas show `uw`); a holder killed between pre-dump and dump drops the tracking (no `uw`
 * any more), the container runs on, and the dump is a full one with a warning. The holder
 * holds nothing but one userfaultfd per process (and its pidfd of the init), is ended by a
 * checkpoint without --parent-path, exits with the container's init and after its lifetime,
 * and removes its state file only if it names it. The parent is untrusted
 * input: a link outside the images dir's directory, a parent of another id, an oversized
 * record are refused; a forged page fails the restore's verification and nothing is made.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import {
  chmodSync, closeSync, copyFileSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, readlinkSync, readSync, rmSync, statSync,
  symlinkSync, writeFileSync, writeSync,
} from 'node:fs';
import pino from 'pino';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { watchdogPath } from '../../src/native/binding.js';
import { decodeStats } from '../../src/runtime/criu-files.js';
import { assemble, DELTA_FILE, INDEX_FILE, PAGES_FILE, TRACK_DIR } from '../../src/runtime/criu-track.js';
import { cleanup, scratchDir, waitFor } from '../helpers/processes.js';
import { makeBundle, RuncCriu, SKIP_RUNC_CRIU, TICKS } from '../helpers/runc-criu.js';
import { ROOT } from '../helpers/env.js';

const CTRMEM = join(ROOT, 'build', 'bench', 'ctrmem');
const logger = pino({ level: 'silent' });
const skip = SKIP_RUNC_CRIU || (existsSync(CTRMEM) ? false : `needs ${CTRMEM} (npm run build)`);

/** Host pids of the container's processes: its init and the init's children. */
function treeOf(init: number): number[] {
  const kids = readFileSync(`/proc/${init}/task/${init}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  return [init, ...kids];
}

/** Whether any area of `pid` is registered for write-protection (VmFlags uw). */
function tracked(pid: number): boolean {
  return /^VmFlags:.*\buw\b/m.test(readFileSync(`/proc/${pid}/smaps`, 'utf8'));
}

/** The ctrmem process of the container (the init's child that is not a sleep). */
function ctrmemOf(init: number): number {
  const pid = treeOf(init).slice(1).find((p) => readFileSync(`/proc/${p}/comm`, 'utf8').trim() === 'ctrmem');
  assert.ok(pid !== undefined, 'ctrmem runs in the container');
  return pid;
}

/** Whether `pid` exists and is not a zombie. */
function alive(pid: number): boolean {
  try {
    return !/^\S+ \(.*\) Z /s.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

/** The holder named by the state file of container init `init`, if any. */
function holderOf(init: number): number | undefined {
  if (!existsSync(TRACK_DIR)) return undefined;
  const f = readdirSync(TRACK_DIR).find((n) => n.startsWith(`${init}-`) && !n.includes('.'));
  if (f === undefined) return undefined;
  return Number(/^holder (\d+)/.exec(readFileSync(join(TRACK_DIR, f), 'utf8'))?.[1]);
}

describe('pre-dump through ferry\'s criu under an unmodified runc', { skip, timeout: 300_000 }, () => {
  let dir = '';
  let rc: RuncCriu;
  let bundle = '';
  /** The first test's images dirs, for the parent-as-untrusted-input test. */
  const chain = { pre1: '', pre2: '', image: '', id: '' };

  before(() => {
    dir = scratchDir('ferry-criu-predump-');
    rc = new RuncCriu(join(dir, 'bin'), join(dir, 'runc-root'));
    bundle = makeBundle(dir, 'bundle', `ctrmem 32 & ${TICKS}`);
    copyFileSync(CTRMEM, join(bundle, 'rootfs', 'bin', 'ctrmem'));
    chmodSync(join(bundle, 'rootfs', 'bin', 'ctrmem'), 0o755);
  });

  after(() => {
    rc?.cleanup();
    cleanup();
  });

  /** Starts the container `id`; resolves once it ticks and ctrmem is ready. */
  const start = async (id: string): Promise<{ run: Awaited<ReturnType<RuncCriu['detached']>>; init: number }> => {
    const run = await rc.detached(['run', '-d', '--bundle', bundle, rc.own(id)], bundle);
    assert.equal(run.code, 0, run.err());
    await waitFor('ticks and ctrmem ready', () => (run.ticks.last ?? 0) >= 3 && run.ticks.other.some((l) => l.startsWith('ready')), 20000);
    return { run, init: rc.status(id)!.pid };
  };

  it('pre-dump, pre-dump with a parent, dump with a parent, restore: it counts on, its memory checks out', async (t) => {
    const id = `ferry-predump-${process.pid}`;
    const { run, init } = await start(id);
    const pre1 = join(dir, 'pre1');
    const p1 = rc.run(['checkpoint', '--pre-dump', '--image-path', pre1, id]);
    assert.equal(p1.code, 0, p1.err);
    assert.equal(p1.out + p1.err, '', 'quiet on success');
    assert.equal(rc.status(id)?.status, 'running', 'a pre-dump leaves the container running');
    const at = run.ticks.last!;
    await waitFor('ticks after the pre-dump', () => run.ticks.last! >= at + 3);
    assert.ok(tracked(init) && tracked(ctrmemOf(init)), 'the shell and ctrmem are tracked after the pre-dump');
    const holder = holderOf(init);
    assert.ok(holder !== undefined && existsSync(`/proc/${holder}`), 'a holder keeps the tracking');
    const pre1Bytes = statSync(join(pre1, PAGES_FILE)).size;
    assert.ok(pre1Bytes >= 32 << 20, `the first pre-dump copies all memory (${pre1Bytes} bytes)`);

    const pre2 = join(dir, 'pre2');
    const p2 = rc.run(['checkpoint', '--pre-dump', '--parent-path', '../pre1', '--image-path', pre2, id]);
    assert.equal(p2.code, 0, p2.err);
    assert.equal(p2.err, '', 'no warning: the tracking was taken over');
    const pre2Bytes = statSync(join(pre2, PAGES_FILE)).size;
    assert.ok(pre2Bytes < pre1Bytes / 8, `the second pre-dump copies only what changed (${pre2Bytes} of ${pre1Bytes} bytes)`);
    await waitFor('the first holder to be gone', () => !alive(holder!), 5000);

    const image = join(dir, 'image');
    const cp = rc.run(['checkpoint', '--parent-path', '../pre2', '--image-path', image, id]);
    assert.equal(cp.code, 0, cp.err);
    assert.equal(cp.err, '', 'no warning: the tracking was taken over');
    assert.equal(rc.status(id), undefined, 'gone from runc');
    await waitFor('the old stdout pipe to close', () => run.ticks.ended);
    const last = run.ticks.last!;
    assert.ok(!existsSync(join(image, 'ferry-image.tar')), 'no full image');
    const deltaBytes = statSync(join(image, DELTA_FILE)).size;
    assert.ok(deltaBytes < pre1Bytes / 8, `the final image carries only what changed (${deltaBytes} bytes, the first pre-dump ${pre1Bytes})`);
    assert.equal(holderOf(init), undefined, 'no holder left');
    const stats = decodeStats(readFileSync(join(image, 'stats-dump'))).dump!;
    assert.ok(stats.pagesSkippedParent >= 8192 && stats.pagesWritten === stats.pagesScanned - stats.pagesSkippedParent, JSON.stringify(stats));
    assert.ok(decodeStats(readFileSync(join(pre1, 'stats-dump'))).dump!.pagesWritten >= 8192, 'the pre-dump\'s stats count its pages');
    t.diagnostic(`pre-dump 1: ${pre1Bytes} bytes of pages; pre-dump 2: ${pre2Bytes}; final delta image: ${deltaBytes}`);

    const rs = await rc.detached(['restore', '-d', '--image-path', image, id], bundle);
    assert.equal(rs.code, 0, rs.err());
    const st = rc.status(id);
    assert.equal(st?.status, 'running');
    await waitFor('ticks on the new pipe', () => rs.ticks.seen.length >= 3);
    assert.equal(rs.ticks.seen[0], last + 1, `counting on from tick ${last}: ${rs.ticks.seen.slice(0, 5).join(', ')}`);
    process.kill(ctrmemOf(st!.pid), 'SIGUSR1');
    await waitFor('ctrmem\'s verdict', () => rs.ticks.other.some((l) => /^(PASS|FAIL)/.test(l)), 20000);
    assert.ok(rs.ticks.other.includes('PASS'), `ctrmem's memory after the restore: ${rs.ticks.other.join(' | ')}`);
    assert.equal(readdirSync(image).filter((f) => f.startsWith('.ferry-assemble')).length, 0, 'the assembled image is removed');
    for (const d of [pre1, pre2]) assert.ok(existsSync(join(d, INDEX_FILE)));
    Object.assign(chain, { pre1, pre2, image, id });
  });

  it('the parent is untrusted: confined, its ids checked, its records bounded, its pages verified', async () => {
    assert.ok(chain.image !== '', 'the first test made the chain');
    const { pre1, pre2, image } = chain;
    const work = join(dir, 'assemble-work');
    mkdirSync(work);
    const noneLeft = (): void => assert.deepEqual(readdirSync(work), [], 'nothing left in the work dir');
    const link = join(image, 'parent');
    const relink = (to: string): void => { rmSync(link); symlinkSync(to, link); };
    const good = assemble(image, work, logger);
    assert.ok(statSync(good.image).size > 32 << 20, 'the intact chain rebuilds the whole image');
    rmSync(good.dir, { recursive: true });

    relink('/etc');
    assert.throws(() => assemble(image, work, logger), /parent image \/etc resolves to \/etc, which is not a directory beside/);
    relink('../pre1');
    assert.throws(() => assemble(image, work, logger), /is not the pre-dump .* was taken against \(another id\)/);
    relink('../pre2');
    noneLeft();

    const pages = join(pre2, PAGES_FILE);
    const saved = readFileSync(pages);
    writeFileSync(pages, Buffer.concat([Buffer.from([0xff, 0xff, 0xff, 0xff]), saved]));
    assert.throws(() => assemble(image, work, logger), /has a record of 4294967295 bytes at offset 0/);
    writeFileSync(pages, saved);
    noneLeft();

    // A forged page in the first pre-dump: the image is rebuilt, and its restore refuses it.
    const p1 = join(pre1, PAGES_FILE);
    const fd = openSync(p1, 'r+');
    const b = Buffer.alloc(1);
    readSync(fd, b, 0, 1, 4 + 17 + 100);
    b[0]! ^= 0xff;
    writeSync(fd, b, 0, 1, 4 + 17 + 100);
    closeSync(fd);
    const id = rc.own(`${chain.id}-forged`);
    const rs = await rc.detached(['restore', '-d', '--image-path', image, id], bundle);
    assert.notEqual(rs.code, 0);
    assert.match(rs.err(), /is corrupt: entry tasks\/\d+\/pages\.bin chunk \d+ has sha256/);
    assert.equal(rc.status(id), undefined, 'nothing restored');
    assert.deepEqual(readdirSync(image).filter((f) => f.startsWith('.ferry-assemble')), [], 'the rebuilt image is removed');
  });

  it('a holder killed between pre-dump and dump: tracking dropped, the container runs on, the dump is a full one', async () => {
    const id = `ferry-predump-k-${process.pid}`;
    const { run, init } = await start(id);
    const pre = join(dir, 'k-pre');
    const p = rc.run(['checkpoint', '--pre-dump', '--image-path', pre, id]);
    assert.equal(p.code, 0, p.err);
    const holder = holderOf(init);
    assert.ok(holder !== undefined);
    process.kill(holder, 'SIGKILL');
    await waitFor('the tracking to be dropped', () => !tracked(init) && !tracked(ctrmemOf(init)), 10000);
    const at = run.ticks.last!;
    await waitFor('ticks after the holder died', () => run.ticks.last! >= at + 3);

    const image = join(dir, 'k-image');
    const cp = rc.run(['checkpoint', '--parent-path', '../k-pre', '--image-path', image, id]);
    assert.equal(cp.code, 0, cp.err);
    assert.match(cp.err, /warning: .*tracking is gone.*full one/, 'the dump says it is a full one');
    assert.ok(existsSync(join(image, 'ferry-image.tar')) && !existsSync(join(image, DELTA_FILE)), 'a full image');
    await waitFor('the old stdout pipe to close', () => run.ticks.ended);
    const last = run.ticks.last!;
    const rs = await rc.detached(['restore', '-d', '--image-path', image, id], bundle);
    assert.equal(rs.code, 0, rs.err());
    await waitFor('ticks on the new pipe', () => rs.ticks.seen.length >= 3);
    assert.equal(rs.ticks.seen[0], last + 1);
    process.kill(ctrmemOf(rc.status(id)!.pid), 'SIGUSR1');
    await waitFor('ctrmem\'s verdict', () => rs.ticks.other.some((l) => /^(PASS|FAIL)/.test(l)), 20000);
    assert.ok(rs.ticks.other.includes('PASS'), rs.ticks.other.join(' | '));
  });

  it('the holder keeps only the tracking, is ended by a full checkpoint, and goes with the container\'s init', async () => {
    const id = `ferry-predump-h-${process.pid}`;
    const { init } = await start(id);
    const p = rc.run(['checkpoint', '--pre-dump', '--image-path', join(dir, 'h-pre'), id]);
    assert.equal(p.code, 0, p.err);
    const holder = holderOf(init)!;
    const fds = readdirSync(`/proc/${holder}/fd`).map(Number).sort((a, b) => a - b);
    const links = fds.map((fd) => readlinkSync(`/proc/${holder}/fd/${fd}`));
    assert.deepEqual(links.slice(0, 3), ['/dev/null', '/dev/null', '/dev/null']);
    // 3 on: one userfaultfd per process tracked, then the holder's pidfd of the init.
    assert.ok(links.length >= 6 && links.slice(3, -1).every((l) => l === 'anon_inode:[userfaultfd]') && links.at(-1) === 'anon_inode:[pidfd]',
      `one userfaultfd per process, nothing else: ${links.join(' ')}`);
    // A checkpoint without --parent-path ends the tracking: nothing is left tracked.
    const lr = rc.run(['checkpoint', '--leave-running', '--image-path', join(dir, 'h-full'), id]);
    assert.equal(lr.code, 0, lr.err);
    assert.ok(existsSync(join(dir, 'h-full', 'ferry-image.tar')));
    await waitFor('the holder to be ended', () => !alive(holder), 5000);
    assert.equal(holderOf(init), undefined);
    await waitFor('the tracking dropped', () => !tracked(init) && !tracked(ctrmemOf(init)), 10_000);

    const again = rc.run(['checkpoint', '--pre-dump', '--image-path', join(dir, 'h-pre2'), id]);
    assert.equal(again.code, 0, again.err);
    const second = holderOf(init)!;
    assert.ok(alive(second));
    assert.equal(rc.run(['delete', '--force', id]).code, 0);
    await waitFor('the holder to exit with the container', () => !alive(second), 10_000);
    assert.equal(holderOf(init), undefined, 'its state file removed');
  });

  it('a holder exits after its lifetime, removing only a state file that names it', async () => {
    const sleeper = spawn('sleep', ['60'], { stdio: 'ignore' });
    try {
      const start = readFileSync(`/proc/${sleeper.pid}/stat`, 'utf8').replace(/^.*\) /s, '').split(' ')[19]!;
      const bad = spawnSync(watchdogPath(), ['hold', String(sleeper.pid), '1', '2', join(dir, 'x'), '0'], { encoding: 'utf8' });
      assert.equal(bad.status, 2, 'a pid that is not the process started then is refused');
      const hold = (state: string): ReturnType<typeof spawn> => spawn(watchdogPath(), ['hold', String(sleeper.pid), start, '2', state, '0'],
        { stdio: 'ignore', detached: true });
      const mine = join(dir, 'state-mine');
      const other = join(dir, 'state-other');
      const a = hold(mine);
      const b = hold(other);
      writeFileSync(mine, `holder ${a.pid}\n{}\n`);
      writeFileSync(other, 'holder 1\n{}\n');
      const t0 = Date.now();
      await Promise.all([a, b].map((c) => new Promise((r) => c.on('exit', r))));
      assert.ok(Date.now() - t0 < 10_000);
      assert.ok(!existsSync(mine), 'its own state file is removed');
      assert.ok(existsSync(other), 'another holder\'s is left');
      assert.ok(alive(sleeper.pid!), 'the process held for is left alone');
    } finally {
      sleeper.kill('SIGKILL');
    }
  });
});
