/**
 * bin/ferry-runtime driven with exactly podman's argv (../shared/INTEGRATION.md) against the
 * real runc, with an empty environment (no PATH), the way conmon may run it: a busybox
 * container counting "tick N" on a pipe to this test is checkpointed (the files runc and CRIU
 * write are there, stats-dump decodes), restored with new pipes under a child subreaper
 * standing in for conmon (the new pipe gets the ticks, counting on from the last one; the
 * init is re-parented to the subreaper; the pid file holds its host pid), and checkpointed
 * and restored again. Also: unsupported flags leave the container untouched, `checkpoint
 * --help` exits 0, other verbs go to runc, and bin/criu answers VERSION/FEATURE_CHECK and
 * refuses PRE_DUMP.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readlinkSync, symlinkSync, writeFileSync, copyFileSync, chmodSync, readSync } from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { native } from '../../src/native/binding.js';
import { CriuReqType, decodeResponse, encodeRequest, REPORTED_VERSION } from '../../src/runtime/criu-rpc.js';
import { decodeInventory, decodeStats, encodeStats } from '../../src/runtime/criu-files.js';
import { needs, PYTHON, ROOT } from '../helpers/env.js';
import { cleanup, scratchDir, sleep, waitFor } from '../helpers/processes.js';
import { BUSYBOX, CRIU, RUNC, Ticks } from '../helpers/runc-criu.js';

const RUNTIME = join(ROOT, 'bin', 'ferry-runtime');

const skip = needs('root', 'build', 'python')
  || (RUNC ? false : 'needs runc (apt-get install runc)')
  || (existsSync(BUSYBOX) ? false : `needs ${BUSYBOX} (apt-get install busybox-static)`);

describe('ferry-runtime with runc, as podman and conmon call it', { skip, timeout: 300_000 }, () => {
  const id = `ferry-rt-${process.pid}`;
  let dir = '';
  let root = '';
  let bundle = '';
  const children: ChildProcess[] = [];

  /** The wrapper with an empty environment (no PATH); synchronous. */
  const rt = (args: string[], cwd?: string): { code: number; out: string; err: string } => {
    const r = spawnSync(RUNTIME, args, { env: {}, encoding: 'utf8', timeout: 120000, ...(cwd ? { cwd } : {}) });
    return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
  };
  const state = (): { status: string; pid: number } | undefined => {
    const r = spawnSync(RUNC!, ['--root', root, 'state', id], { encoding: 'utf8' });
    return r.status === 0 ? JSON.parse(r.stdout) as { status: string; pid: number } : undefined;
  };

  before(() => {
    dir = scratchDir('ferry-runtime-');
    root = join(dir, 'runc-root');
    bundle = join(dir, 'bundle');
    const rootfs = join(bundle, 'rootfs');
    for (const d of ['bin', 'proc', 'dev', 'sys', 'tmp']) mkdirSync(join(rootfs, d), { recursive: true });
    copyFileSync(BUSYBOX, join(rootfs, 'bin', 'busybox'));
    chmodSync(join(rootfs, 'bin', 'busybox'), 0o755);
    for (const a of ['sh', 'sleep', 'echo']) symlinkSync('busybox', join(rootfs, 'bin', a));
    const spec = spawnSync(RUNC!, ['spec'], { cwd: bundle, encoding: 'utf8' });
    assert.equal(spec.status, 0, spec.stderr);
    const config = JSON.parse(readFileSync(join(bundle, 'config.json'), 'utf8')) as { process: Record<string, unknown> };
    config.process.terminal = false;
    config.process.args = ['sh', '-c', 'i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done'];
    writeFileSync(join(bundle, 'config.json'), JSON.stringify(config));
  });

  after(() => {
    spawnSync(RUNC!, ['--root', root, 'delete', '--force', id]);
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
    cleanup();
  });

  /**
   * Runs `argv` (runc or ferry-runtime, with an empty environment) the way conmon does: from
   * a child subreaper that gives it /dev/null as stdin and one new pipe as stdout and
   * stderr, copies the pipe to the test until every writer is gone, then reaps its children.
   * Resolves once `argv` has exited, with its status, the subreaper and the pipe's lines.
   */
  const underSubreaper = async (argv: string[]): Promise<{ code: number; reaper: ChildProcess; ticks: Ticks }> => {
    const script = [
      'import ctypes, os, subprocess, sys',
      'ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)', // PR_SET_CHILD_SUBREAPER
      'r, w = os.pipe()',
      "nul = os.open('/dev/null', os.O_RDWR)",
      'p = subprocess.run(sys.argv[1:], env={}, stdin=nul, stdout=w, stderr=w)',
      'os.close(w)',
      'os.write(3, b"%d" % p.returncode)',
      'os.close(3)',
      'while True:',
      '    b = os.read(r, 65536)',
      '    if not b: break',
      '    os.write(1, b)',
      'while True:',
      '    try: os.wait()',
      '    except ChildProcessError: break',
    ].join('\n');
    const reaper = spawn(PYTHON, ['-c', script, ...argv], { stdio: ['ignore', 'pipe', 'inherit', 'pipe'] });
    children.push(reaper);
    const ticks = new Ticks(reaper.stdout!);
    let report = '';
    const status = reaper.stdio[3] as Readable;
    status.setEncoding('utf8');
    status.on('data', (s: string) => { report += s; });
    await new Promise<void>((r) => status.on('end', () => r()));
    return { code: Number(report), reaper, ticks };
  };

  let first: Ticks | undefined;

  it('other verbs go to runc unchanged, with no PATH; checkpoint --help exits 0', async () => {
    const run = await underSubreaper([RUNC!, '--root', root, 'run', '-d', '--bundle', bundle, id]);
    assert.equal(run.code, 0, run.ticks.other.join('\n'));
    first = run.ticks;
    await waitFor('ticks from the container', () => (first!.last ?? 0) >= 3);
    const st = rt(['--root', root, 'state', id]);
    assert.equal(st.code, 0, st.err);
    assert.equal((JSON.parse(st.out) as { status: string }).status, 'running');
    const help = rt(['checkpoint', '--help']);
    assert.equal(help.code, 0, help.err);
    assert.match(help.out, /--image-path/);
    const missing = rt(['--root', root, 'state', 'ferry-no-such-container']);
    assert.notEqual(missing.code, 0, 'runc\'s own failure comes through');
  });

  it('unsupported flags are refused with one line, the container untouched', () => {
    for (const flag of [['--lazy-pages'], ['--page-server', '127.0.0.1:9999']]) {
      const r = rt(['--root', root, 'checkpoint', '--image-path', join(dir, 'nope'), ...flag, id]);
      assert.equal(r.code, 1, `${flag[0]}: ${r.err}`);
      assert.match(r.err, new RegExp(`^ferry-runtime checkpoint: ${flag[0]}.* not supported by ferry; nothing was done\\n$`));
      assert.equal(state()?.status, 'running');
    }
    assert.ok(!existsSync(join(dir, 'nope')), 'nothing written');
  });

  it('checkpoint with podman\'s argv writes the image, descriptors.json, inventory.img, dump.log and stats-dump', async () => {
    const init = state()!.pid;
    const stdout = readlinkSync(`/proc/${init}/fd/1`);
    const r = rt(['--root', root, 'checkpoint', '--image-path', join(bundle, 'checkpoint'), '--work-path', bundle, id]);
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out + r.err, '', 'quiet on success');
    assert.equal(state(), undefined, 'the container is gone from runc');
    const d = join(bundle, 'checkpoint');
    assert.ok(existsSync(join(d, 'ferry-image.tar')));
    const descriptors = JSON.parse(readFileSync(join(d, 'descriptors.json'), 'utf8')) as string[];
    assert.deepEqual(descriptors, ['/dev/null', stdout, stdout]);
    assert.match(stdout, /^pipe:\[\d+\]$/, 'conmon gives pipes');
    assert.equal(decodeInventory(readFileSync(join(d, 'inventory.img'))).imgVersion, 2);
    assert.match(readFileSync(join(bundle, 'dump.log'), 'utf8'), /"msg":"checkpointed"/);
    const raw = readFileSync(join(bundle, 'stats-dump'));
    assert.equal(raw.readUInt32LE(0), 0x55105940);
    assert.equal(raw.readUInt32LE(4), 0x57093306);
    assert.equal(raw.readUInt32LE(8), raw.length - 12);
    const stats = decodeStats(raw).dump!;
    assert.ok(stats.frozenTime > 0, `frozen_time ${stats.frozenTime} µs`);
    assert.ok(stats.pagesWritten > 0 && stats.pagesScanned >= stats.pagesWritten, `pages ${stats.pagesWritten}`);
    assert.equal(stats.pagesLazy, 0);
    await waitFor('the old stdout pipe to close', () => first!.ended);
  });

  it('restore with podman\'s argv under a subreaper: new pipe, counting on, re-parented, pid file', async () => {
    const pidFile = join(bundle, 'pidfile');
    const r = await underSubreaper([RUNTIME, '--root', root, 'restore', '--bundle', bundle, '--pid-file', pidFile, '--detach',
      '--image-path', join(bundle, 'checkpoint'), '--work-path', bundle, id]);
    assert.equal(r.code, 0, r.ticks.other.join('\n'));
    const st = state();
    assert.equal(st?.status, 'running');
    assert.equal(Number(readFileSync(pidFile, 'utf8')), st!.pid, 'the pid file holds the init\'s host pid');
    const ppid = Number(readFileSync(`/proc/${st!.pid}/stat`, 'utf8').replace(/^.*\) /s, '').split(' ')[1]);
    assert.equal(ppid, r.reaper.pid, 'the init is a child of the subreaper (conmon\'s place)');
    const last = first!.last!;
    await waitFor('ticks on the new pipe', () => r.ticks.seen.length >= 3);
    assert.equal(r.ticks.seen[0], last + 1, `counting on from tick ${last}: ${r.ticks.seen.slice(0, 5).join(', ')}`);
    r.ticks.seen.forEach((t, i) => assert.equal(t, last + 1 + i));
    const stats = decodeStats(readFileSync(join(bundle, 'stats-restore'))).restore!;
    assert.ok(stats.restoreTime > 0 && stats.pagesRestored > 0, JSON.stringify(stats));
    assert.match(readFileSync(join(bundle, 'restore.log'), 'utf8'), /"msg":"restored"/);
    first = r.ticks;
  });

  it('a second cycle with --leave-running, then without it', async () => {
    const ck = join(dir, 'second');
    const lr = rt(['--root', root, 'checkpoint', '--image-path', ck, '--work-path', ck, '--leave-running', '--leave-running', id]);
    assert.equal(lr.code, 0, lr.err);
    assert.equal(state()?.status, 'running', 'left running');
    const n = first!.seen.length;
    await waitFor('more ticks', () => first!.seen.length > n + 2);
    const cp = rt(['checkpoint', '--image-path', ck, '--work-path', ck, id], undefined);
    assert.notEqual(cp.code, 0, 'without --root runc does not know the container');
    const cp2 = rt(['--root', root, 'checkpoint', '--image-path', ck, '--work-path', ck, id]);
    assert.equal(cp2.code, 0, cp2.err);
    await waitFor('the pipe to close', () => first!.ended);
    const r = await underSubreaper([RUNTIME, '--root', root, 'restore', '--bundle', bundle, '--pid-file', join(ck, 'pid'), '--detach',
      '--image-path', ck, '--work-path', ck, id]);
    assert.equal(r.code, 0, r.ticks.other.join('\n'));
    const last = first!.last!;
    await waitFor('ticks after the second restore', () => r.ticks.seen.length >= 2);
    assert.equal(r.ticks.seen[0], last + 1);
    const del = rt(['--root', root, 'delete', '--force', id]);
    assert.equal(del.code, 0, del.err);
    await waitFor('the pipe to close after delete', () => r.ticks.ended);
  });

  it('restore of a directory without a ferry image fails with one line', () => {
    const empty = join(dir, 'empty');
    mkdirSync(empty);
    const r = rt(['--root', root, 'restore', '--bundle', bundle, '--detach', '--image-path', empty, '--work-path', empty, id]);
    assert.equal(r.code, 1);
    assert.match(r.err, /^ferry-runtime restore: \S+ holds no ferry checkpoint \(ferry-image\.tar is missing\).*\n$/);
    assert.equal(state(), undefined);
  });
});

describe('the criu stand-in (bin/criu swrk)', { skip: needs('build'), timeout: 60_000 }, () => {
  /** Sends each request to `criu swrk 3` over a SOCK_SEQPACKET pair; returns the answers. */
  const converse = async (requests: Buffer[]): Promise<{ answers: Buffer[]; code: number | null }> => {
    const n = native();
    const [mine, theirs] = n.unixSocketpair(5); // SOCK_SEQPACKET
    const child = spawn(CRIU, ['swrk', '3'], { env: {}, stdio: ['ignore', 'ignore', 'inherit', theirs] });
    n.closeFd(theirs);
    const answers: Buffer[] = [];
    try {
      for (const req of requests) {
        n.unixSend(mine, req);
        const buf = Buffer.alloc(4096);
        let got = -1;
        for (let i = 0; i < 1000 && got < 0; i++) {
          try {
            got = readSync(mine, buf, 0, buf.length, null);
          } catch (err) {
            if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
            await sleep(10);
          }
        }
        answers.push(buf.subarray(0, got));
      }
    } finally {
      n.closeFd(mine);
    }
    const code = await new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
    return { answers, code };
  };

  it('answers VERSION (>= 3.16, named ferry) and FEATURE_CHECK (memory tracking only); PRE_DUMP only for runc', async () => {
    const { answers, code } = await converse([
      encodeRequest(CriuReqType.VERSION),
      encodeRequest(CriuReqType.FEATURE_CHECK, { memTrack: true, lazyPages: true }),
      encodeRequest(CriuReqType.PRE_DUMP),
    ]);
    const [version, features, dump] = answers.map((a) => decodeResponse(a));
    assert.equal(version!.type, CriuReqType.VERSION);
    assert.equal(version!.success, true);
    assert.ok(version!.version!.major * 10000 + version!.version!.minor * 100 >= 31600);
    assert.deepEqual([version!.version!.major, version!.version!.minor], [REPORTED_VERSION.major, REPORTED_VERSION.minor]);
    assert.match(version!.version!.name!, /^ferry /);
    assert.deepEqual(features, { type: CriuReqType.FEATURE_CHECK, success: true, features: { memTrack: true, lazyPages: false } });
    assert.equal(dump!.type, CriuReqType.PRE_DUMP);
    assert.equal(dump!.success, false);
    assert.match(dump!.crErrmsg!, /^PRE_DUMP is served for 'checkpoint' of a runc-compatible runtime, but the caller \(pid \d+/);
    assert.equal(code, 1, 'a refused request makes the exit status 1');
  });

  it('stats files round-trip in CRIU\'s layout', () => {
    const s = { dump: { freezingTime: 0, frozenTime: 1, memdumpTime: 2, memwriteTime: 3, pagesScanned: 4, pagesSkippedParent: 0, pagesWritten: 4, pagesLazy: 0 } };
    assert.deepEqual(decodeStats(encodeStats(s)), s);
  });
});
