/**
 * Images are untrusted input (issue 14): the file kinds that name paths besides regular files
 * (character devices, FIFOs, terminals, inotify watches, fanotify marks, unix socket names)
 * resolve them inside the record's root (confined.ts), check the kind of what they find before
 * opening it for real, and never delete what is not a stale socket. Each case hands the file
 * engine edited records (the way restore does, through checkFiles/openFiles), or restores an
 * edited real image with bin/ferry, and checks the refusal (one line, naming the record and
 * the path) and that a canary directory outside is untouched.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync, chownSync, copyFileSync, existsSync, fstatSync, lstatSync, mkdirSync, readdirSync, readFileSync, readSync, rmSync, statSync, symlinkSync, writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { bundleOf } from '../../src/container/restore.js';
import type { ContainerRecord } from '../../src/container/record.js';
import { FerryError } from '../../src/errors.js';
import { checkFiles, closeFiles, openFiles } from '../../src/files/install.js';
import { DEFAULT_FILE_OPTIONS } from '../../src/files/types.js';
import type { FileRecord } from '../../src/image/records.js';
import { native } from '../../src/native/binding.js';
import { needs, WORKLOADS } from '../helpers/env.js';
import { editImage, json } from '../helpers/images.js';
import { alive, chrooted, cleanup, ferry, own, scratchDir, startWorkload, waitFor } from '../helpers/processes.js';

const skip = needs('root', 'build');
after(() => cleanup());

const O_RDONLY = 0, O_WRONLY = 0o1, O_RDWR = 0o2, O_CREAT = 0o100, O_TRUNC = 0o1000, O_NONBLOCK = 0o4000, O_LARGEFILE = 0o100000;
const IN_CREATE = 0x100;

/** A canary directory outside everything the records name, with one file, and what it holds. */
function canaryDir(): { dir: string; file: string; before: string } {
  const dir = scratchDir('ferry-canary-');
  const file = join(dir, 'canary');
  writeFileSync(file, 'canary: must never change\n'.repeat(40));
  return { dir, file, before: digest(dir) };
}

/** Names, kinds and contents of everything in `dir` (one level), as one string. */
function digest(dir: string): string {
  return readdirSync(dir).sort().map((n) => {
    const st = lstatSync(join(dir, n));
    const body = st.isFile() ? createHash('sha256').update(readFileSync(join(dir, n))).digest('hex').slice(0, 16) : '';
    return `${n}:${st.mode.toString(8)}:${st.size}:${body}`;
  }).join(' ');
}

function untouched(c: { dir: string; before: string }, why: string): void {
  assert.equal(digest(c.dir), c.before, `the canary directory was changed (${why})`);
}

/** The error `fn` throws (it must throw), checked to be one line of a FerryError. */
function refused(fn: () => unknown, code: string | RegExp, text?: RegExp): FerryError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof FerryError, `expected a FerryError, got ${String(caught)}`);
  const e = caught;
  assert.ok(typeof code === 'string' ? e.code === code : code.test(e.code), `code ${e.code}: ${e.message}`);
  assert.ok(!e.message.includes('\n'), `one line: ${e.message}`);
  if (text) assert.match(e.message, text);
  return e;
}

/** Opens `records` as restore does, hands each opened descriptor to `fn`, closes them. */
function opened(records: FileRecord[], fn: (fds: Map<number, number>) => void, taskRoot?: string, shellJob = false): void {
  checkFiles(records, taskRoot);
  const files = openFiles(records, { ...DEFAULT_FILE_OPTIONS, shellJob }, new Map(), taskRoot);
  try {
    fn(files.opened);
  } finally {
    closeFiles(files.opened);
  }
}

/** Both check and open refuse `records`. */
function bothRefuse(records: FileRecord[], code: string | RegExp, text?: RegExp, taskRoot?: string, shellJob = false): void {
  refused(() => checkFiles(records, taskRoot), code, text);
  refused(() => openFiles(records, { ...DEFAULT_FILE_OPTIONS, shellJob }, new Map(), taskRoot), code, text);
}


const chr = (id: number, path: string, flags: number, major = 1, minor = 3): FileRecord =>
  ({ id, kind: 'chr', path, flags, pos: '0', major, minor });
const fifo = (id: number, path: string, flags: number): FileRecord =>
  ({ id, kind: 'fifo', path, flags, dev: '0', ino: '0', size: 65536, data: '' });
const ttyExt = (id: number, path: string): FileRecord => ({ id, kind: 'tty', role: 'external', path, flags: O_RDWR });
const ttyDevice = (id: number, path: string, major: number, minor: number): FileRecord =>
  ({ id, kind: 'tty', role: 'device', path, flags: O_WRONLY, device: { major, minor } });
const TERMIOS = { iflag: 0, oflag: 0, cflag: 0o277, lflag: 0, line: 0, cc: new Array(19).fill(0), ispeed: 38400, ospeed: 38400 };
const ttyConsole = (id: number, index: number): FileRecord => ({
  id, kind: 'tty', role: 'console', path: `/dev/pts/${index}`, flags: O_RDWR, index, termios: TERMIOS, winsize: { row: 24, col: 80, xpixel: 0, ypixel: 0 },
});
const inotify = (id: number, path: string): FileRecord =>
  ({ id, kind: 'inotify', flags: O_NONBLOCK, watches: [{ wd: 7, mask: IN_CREATE, path, dev: '0:0', ino: '0' }] });
const fanotify = (id: number, path: string): FileRecord =>
  ({ id, kind: 'fanotify', flags: 0, initFlags: 0, eventFlags: 0, marks: [{ type: 'inode', path, mflags: 0, mask: 0x2, ignoredMask: 0 }] });
const OPTS = { passcred: 0, passsec: 0, passpidfd: 0, rcvbuf: 212992, sndbuf: 212992, peekOff: -1, rcvlowat: 1 };
const unixAt = (id: number, path: string, extra: Record<string, unknown> = {}): FileRecord => ({
  id, kind: 'unix', ino: '0', type: 'stream', flags: 0, role: 'unconnected', name: { path, file: { mode: 0o755, uid: 0, gid: 0 } },
  peer: null, listener: null, shutdown: 0, opts: OPTS, queue: null, ...extra,
});

describe('images are untrusted: every kind that names a path resolves it confined', { skip, timeout: 300_000 }, () => {
  it('character devices: the recorded device only, opened without creating or truncating; never a file a record calls a device', () => {
    const c = canaryDir();
    const magic = `/proc/${process.pid}/root/dev/null`;
    // A record that says "chr" at a regular file, write mode and O_TRUNC|O_CREAT: refused before any open.
    bothRefuse([chr(1, c.file, O_WRONLY | O_TRUNC | O_CREAT)], 'ECHANGED', /is not a character device/);
    bothRefuse([chr(2, magic, O_RDWR)], 'ECONFINE', /magic link/);
    bothRefuse([chr(3, '/dev/null', O_RDWR, 1, 5)], 'ECHANGED', /1:3, not 1:5/);
    bothRefuse([chr(4, join(c.dir, 'nothing'), O_RDWR | O_CREAT)], /^(ENOENT|EOPEN)$/, /does not exist|ENOENT/);
    untouched(c, 'device records');
    assert.ok(!existsSync(join(c.dir, 'nothing')), 'nothing created');
    opened([chr(5, '/dev/null', O_WRONLY | O_TRUNC | O_CREAT | O_LARGEFILE)], (fds) => {
      const fd = fds.get(5)!;
      assert.equal(fstatSync(fd).rdev, statSync('/dev/null').rdev);
      assert.equal(native().getFl(fd) & 0o3, O_WRONLY, 'the recorded access mode');
    });
  });

  it('FIFOs: a FIFO only, opened through the descriptor that was checked', () => {
    const c = canaryDir();
    const dir = scratchDir();
    const path = join(dir, 'fifo');
    assert.equal(spawnSync('mkfifo', ['-m', '600', path]).status, 0, 'mkfifo');
    bothRefuse([fifo(1, c.file, O_WRONLY)], /^(ENOENT|ECHANGED)$/, /no longer a FIFO/);
    bothRefuse([fifo(2, `/proc/self/root${path}`, O_RDONLY)], 'ECONFINE', /magic link/);
    untouched(c, 'FIFO records');
    opened([fifo(3, path, O_RDONLY)], (fds) => {
      assert.equal(fstatSync(fds.get(3)!).ino, statSync(path).ino);
    });
  });

  it('terminals outside the tree (--shell-job): a terminal only', () => {
    const c = canaryDir();
    bothRefuse([ttyExt(1, c.file)], /^(ENOENT|ECHANGED)$/, /is not a terminal here/, undefined, true);
    bothRefuse([ttyExt(2, `/proc/${process.pid}/root/dev/null`)], 'ECONFINE', /magic link/, undefined, true);
    bothRefuse([ttyExt(3, '/dev/null')], /^(ENOENT|ECHANGED)$/, /is not a terminal here/, undefined, true);
    untouched(c, 'terminal records');
  });

  it('terminals of the machine: the recorded console device only; a container\'s terminal only with a receiver for its master', () => {
    const c = canaryDir();
    // A device record must name /dev/console or a console or serial line...
    bothRefuse([ttyDevice(1, '/dev/null', 1, 3)], 'EIMAGE', /must be \/dev\/console \(5:1\) or a console or serial line/);
    // ...and its path must still be that very device.
    bothRefuse([ttyDevice(2, c.file, 5, 1)], /^(ENOENT|ECHANGED)$/, /is not the character device 5:1/);
    bothRefuse([ttyDevice(3, '/dev/null', 4, 1)], /^(ENOENT|ECHANGED)$/, /is not the character device 4:1/);
    bothRefuse([ttyDevice(4, `/proc/${process.pid}/root/dev/console`, 5, 1)], 'ECONFINE', /magic link/);
    untouched(c, 'console records');
    if (existsSync('/dev/console')) {
      opened([ttyDevice(5, '/dev/console', 5, 1)], (fds) => {
        assert.equal(fstatSync(fds.get(5)!).rdev, statSync('/dev/console').rdev);
        assert.equal(native().getFl(fds.get(5)!) & 0o3, O_WRONLY, 'the recorded access mode');
      });
    }
    // A container's terminal: shape checked; without a caller to hand its master to, refused.
    refused(() => checkFiles([{ ...ttyConsole(6, 0), index: 1 << 20 }]), 'EIMAGE', /no valid pts index/);
    refused(() => openFiles([ttyConsole(7, 0)], { ...DEFAULT_FILE_OPTIONS }, new Map()), 'EUNSUPPORTED', /container's terminal \/dev\/pts\/0.*--console-socket/);
  });

  it('inotify watches and fanotify marks: added through the confined descriptor, magic links refused', () => {
    const c = canaryDir();
    const dir = scratchDir();
    bothRefuse([inotify(1, `/proc/${process.pid}/root${c.dir}`)], 'ECONFINE', /magic link/);
    bothRefuse([fanotify(2, `/proc/${process.pid}/cwd/..${c.dir}`)], 'ECONFINE', /magic link/);
    // A watch restored through /proc/self/fd/N watches the directory itself (not the link).
    opened([inotify(3, dir)], (fds) => {
      writeFileSync(join(dir, 'new'), '');
      const buf = Buffer.alloc(4096);
      let n = 0;
      for (let i = 0; i < 100 && n <= 0; i++) n = readSyncNb(fds.get(3)!, buf);
      assert.ok(n >= 16, 'an event arrives');
      assert.equal(buf.readInt32LE(0), 7, 'on the recorded watch descriptor');
      assert.equal(buf.readUInt32LE(4) & IN_CREATE, IN_CREATE);
    });
    untouched(c, 'watch records');
  });

  it('unix socket names: only a stale socket is replaced; bound inside the root, with the recorded name', async () => {
    const c = canaryDir();
    const croot = scratchDir('ferry-croot-');
    mkdirSync(join(croot, 'run'));
    symlinkSync('/run', join(croot, 'link')); // absolute, as the process there sees it
    symlinkSync(c.dir, join(croot, 'esc')); // the canary's directory, as the host sees it
    const pid = await chrooted(croot);
    const taskRoot = `/proc/${pid}/root`;
    // A name at the canary file: not a socket, so never unlinked (it was, before: a delete primitive).
    refused(() => checkFiles([unixAt(1, c.file)]), 'EEXIST', /is not a socket/);
    refused(() => openFiles([unixAt(1, c.file)], DEFAULT_FILE_OPTIONS), 'EEXIST', /is not a socket/);
    bothRefuse([unixAt(2, `/proc/${process.pid}/root${c.dir}/x.sock`)], 'ECONFINE', /magic link/);
    untouched(c, 'unix names on the host');
    // Inside a root: a symlink to a host path stays inside, so nothing is made in the canary dir.
    const inRoot = (id: number, path: string): FileRecord => ({ ...unixAt(id, path), root: 'task' });
    refused(() => openFiles([inRoot(3, '/esc/x.sock')], DEFAULT_FILE_OPTIONS, new Map(), taskRoot), 'EOPEN', /does not exist here/);
    untouched(c, 'unix names in a root');
    // Through the root's own absolute symlink: bound in the root's /run, the name as recorded.
    writeFileSync(join(croot, 'run', 'plain'), 'not a socket');
    refused(() => openFiles([inRoot(4, '/link/plain')], DEFAULT_FILE_OPTIONS, new Map(), taskRoot), 'EEXIST');
    assert.equal(readFileSync(join(croot, 'run', 'plain'), 'utf8'), 'not a socket');
    opened([inRoot(5, '/link/app.sock')], (fds) => {
      const fd = fds.get(5)!;
      const st = lstatSync(join(croot, 'run', 'app.sock'));
      assert.ok(st.isSocket(), 'the socket file is in the root');
      const d = native().unixDiag(fstatSync(fd).ino);
      assert.equal(d?.name?.toString().replace(/\0+$/, ''), '/link/app.sock', 'the recorded name (getsockname)');
      assert.equal(d?.vfs?.ino, st.ino);
    }, taskRoot);
    // Bound again over its stale file (no one listens on it now).
    opened([inRoot(6, '/run/app.sock')], () => {
      assert.ok(lstatSync(join(croot, 'run', 'app.sock')).isSocket());
    }, taskRoot);
    untouched(c, 'unix names in a root');
  });

  it('an edited listener: connections it cannot hold, or one listed many times, are refused at once, not waited for', async (t) => {
    const w = await startWorkload(join(WORKLOADS, 'unixsk'), ['DIR']);
    const pids = [w.pid, ...readFileSync(`/proc/${w.pid}/task/${w.pid}/children`, 'utf8').split(' ').filter(Boolean).map(Number)];
    for (const p of pids) own(p);
    const c = canaryDir();
    const image = join(w.dir, 'unixsk.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image]);
    assert.equal(cp.code, 0, cp.stderr);
    await w.exited;
    await waitFor('every pid of the tree to be free', () => pids.every((p) => !alive(p)), 8000);
    const listener = (v: Record<string, any>): Record<string, any> => { // eslint-disable-line @typescript-eslint/no-explicit-any
      const l = (v.files as Array<Record<string, any>>).find((f) => f.kind === 'unix' && f.role === 'listener'); // eslint-disable-line @typescript-eslint/no-explicit-any
      assert.ok(l && l.embryos.length === 2, 'the listener with its two queued connections');
      return l;
    };
    const cases: Array<[string, (v: Record<string, any>) => void, RegExp]> = [ // eslint-disable-line @typescript-eslint/no-explicit-any
      // Backlog 0 holds one queued connection: a blocking connect(2) of the second waited forever.
      ['backlog 0', (v) => { listener(v).backlog = 0; }, /backlog is full/],
      // The fuzzer's edit (seed 1067107119, variant 138): the same queued connection 20 times.
      ['one embryo listed 20 times', (v) => { const l = listener(v); l.embryos = Array(20).fill(l.embryos[0]); }, /lists a connection twice/],
      ['a queued connection that is another socket', (v) => {
        const l = listener(v);
        const pair = (v.files as Array<Record<string, any>>).find((f) => f.kind === 'unix' && f.role === 'pair'); // eslint-disable-line @typescript-eslint/no-explicit-any
        l.embryos = [l.embryos[0], pair!.id];
      }, /lists file \d+ as a queued connection/],
    ];
    for (const [what, edit, text] of cases) {
      const bad = join(w.dir, 'bad.tar');
      await editImage(image, bad, { 'files.json': json(edit) });
      const started = Date.now();
      const r = ferry(['restore', '--image', bad, '--max-creds', 'root'], { timeoutMs: 30_000 });
      for (const p of pids) if (alive(p)) own(p);
      t.diagnostic(`${what}: ${r.stderr.trim()}`);
      assert.notEqual(r.code, -1, `${what}: restore did not hang (killed after 30 s)`);
      assert.notEqual(r.code, 0, `${what}: refused`);
      assert.equal(r.stderr.trimEnd().split('\n').length, 1, `${what}: one line: ${r.stderr}`);
      assert.match(r.stderr, text, what);
      assert.ok(Date.now() - started < 20_000, `${what}: refused at once`);
      await waitFor('nothing left of the refused restore', () => pids.every((p) => !alive(p)), 8000);
    }
    // The listener's name re-pointed at the canary: not a socket, so it is not unlinked to bind there.
    const bad = join(w.dir, 'name.tar');
    await editImage(image, bad, { 'files.json': json((v) => { listener(v).name.path = c.file; }) });
    const r = ferry(['restore', '--image', bad, '--max-creds', 'root'], { timeoutMs: 30_000 });
    for (const p of pids) if (alive(p)) own(p);
    t.diagnostic(`name at the canary: ${r.stderr.trim()}`);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /is not a socket/);
    untouched(c, r.stderr.trim());
  });
});

/** read(2) of a non-blocking descriptor: bytes read, or 0 when nothing is there yet. */
function readSyncNb(fd: number, buf: Buffer): number {
  try {
    return readSync(fd, buf);
  } catch (err) {
    if ((err as { code?: string }).code === 'EAGAIN') return 0;
    throw err;
  }
}

describe('images are untrusted: the bundle container.json names', { skip, timeout: 60_000 }, () => {
  it('is used only when it is root\'s own: absolute, normalised, a root-owned directory and config.json no one else can write', () => {
    const top = scratchDir('ferry-bundles-');
    chmodSync(top, 0o755);
    const make = (name: string, dirMode = 0o755, cfgMode = 0o644): string => {
      const b = join(top, name);
      mkdirSync(b);
      chmodSync(b, dirMode);
      writeFileSync(join(b, 'config.json'), '{}');
      chmodSync(join(b, 'config.json'), cfgMode);
      return b;
    };
    const rec = (bundle: unknown): ContainerRecord => ({ id: 'x', runtime: 'runc', bundle, rootfs: '', config: {}, cgroup: 'v2' }) as unknown as ContainerRecord;
    const good = make('good');
    assert.equal(bundleOf({}, rec(good)), good);
    assert.equal(bundleOf({}, rec(`${good}/`)), good, 'a trailing slash');
    symlinkSync(good, join(top, 'link'));
    assert.equal(bundleOf({}, rec(join(top, 'link'))), good, 'a symlink resolved once, the real path used');
    // --bundle is the caller's: used as given.
    assert.equal(bundleOf({ bundle: 'relative/whatever' }, rec('/etc')), 'relative/whatever');
    const groupWritable = make('gw', 0o775);
    const otherOwned = make('nobody');
    chownSync(otherOwned, 65534, 65534);
    const cfgWritable = make('cfgw', 0o755, 0o666);
    const cfgOwned = make('cfgnobody');
    chownSync(join(cfgOwned, 'config.json'), 65534, 65534);
    const cfgLink = make('cfglink');
    rmConfig(cfgLink);
    symlinkSync(join(good, 'config.json'), join(cfgLink, 'config.json'));
    const open = join(top, 'open');
    mkdirSync(open);
    chmodSync(open, 0o777); // writable by anyone, not sticky: whatever is under it can be swapped
    mkdirSync(join(open, 'b'));
    writeFileSync(join(open, 'b', 'config.json'), '{}');
    const cases: Array<[unknown, RegExp]> = [
      [undefined, /names no bundle/],
      [42, /names no bundle/],
      ['relative/bundle', /not an absolute path/],
      [`${good}/../good`, /not a normalised path/],
      [`${top}//good`, /not a normalised path/],
      [`${good}\0x`, /NUL/],
      [`/${'a'.repeat(5000)}`, /longer than 4096/],
      [join(top, 'absent'), /cannot be reached/],
      [groupWritable, /writable by group or others/],
      [otherOwned, /owned by uid 65534/],
      [cfgWritable, /config.json is writable/],
      [cfgOwned, /config.json is owned by uid 65534/],
      [cfgLink, /config.json is not a regular file/],
      [join(open, 'b'), /open is writable by group or others/],
      [join(top, 'nocfg'), /cannot be reached/],
    ];
    for (const [bundle, why] of cases) {
      const e = refused(() => bundleOf({}, rec(bundle)), 'EBUNDLE', why);
      assert.match(e.message, /pass --bundle/);
    }
    mkdirSync(join(top, 'nocfg'));
    refused(() => bundleOf({}, rec(join(top, 'nocfg'))), 'EBUNDLE', /holds no config.json/);
  });
});

function rmConfig(b: string): void {
  rmSync(join(b, 'config.json'));
}

const BUSYBOX = '/bin/busybox';
const RUNC = ['/usr/sbin/runc', '/usr/bin/runc'].find((p) => existsSync(p));
const skipContainer = skip || (RUNC && existsSync(BUSYBOX) ? false : `needs runc and ${BUSYBOX} (apt-get install runc busybox-static)`);

describe('a container\'s unix socket names are its own', { skip: skipContainer, timeout: 180_000 }, () => {
  const ids = new Set<string>();
  let state = '';
  after(() => {
    for (const id of ids) spawnSync(RUNC!, ['--root', state, 'delete', '--force', id], { timeout: 60_000 });
  });

  it('syslogd\'s /dev/log comes back inside the container, not on the host; the image\'s bundle is used only when it is root\'s', async () => {
    const dir = scratchDir('ferry-ctr-unix-');
    chmodSync(dir, 0o755);
    state = join(dir, 'state');
    const rootfs = join(dir, 'rootfs');
    for (const d of ['bin', 'proc', 'sys', 'dev', 'tmp']) mkdirSync(join(rootfs, d), { recursive: true });
    copyFileSync(BUSYBOX, join(rootfs, 'bin', 'busybox'));
    chmodSync(join(rootfs, 'bin', 'busybox'), 0o755);
    for (const a of ['sh', 'sleep', 'echo', 'syslogd', 'logger']) symlinkSync('busybox', join(rootfs, 'bin', a));
    const b = join(dir, 'bundle');
    mkdirSync(b);
    const spec = spawnSync(RUNC!, ['spec', '--bundle', b], { encoding: 'utf8' });
    assert.equal(spec.status, 0, spec.stderr);
    const config = JSON.parse(readFileSync(join(b, 'config.json'), 'utf8')) as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
    config.root = { path: rootfs, readonly: false };
    config.process.terminal = false;
    config.process.args = ['sh', '-c', 'syslogd -n -O /tmp/messages & i=0; while true; do i=$((i+1)); logger "tick $i"; sleep 0.05; done'];
    writeFileSync(join(b, 'config.json'), JSON.stringify(config));
    const log = join(rootfs, 'tmp', 'messages');
    const ticks = (): number => (existsSync(log) ? [...readFileSync(log, 'utf8').matchAll(/tick \d+/g)].length : 0);
    const hostLog = lstatSync('/dev/log', { throwIfNoEntry: false });
    const id = `ferry-cr-${process.pid}`;
    ids.add(id);
    const r = spawnSync(RUNC!, ['--root', state, 'run', '-d', '--bundle', b, id], { stdio: 'ignore', timeout: 60_000 });
    assert.equal(r.status, 0, 'runc run');
    await waitFor('syslogd to log', () => ticks() >= 3, 20_000);
    const image = join(dir, 'image.tar');
    const cp = ferry(['checkpoint', id, '--root', state, '--image', image]);
    assert.equal(cp.code, 0, cp.stderr);
    const files = JSON.parse(spawnSync('tar', ['-xOf', image, 'files.json'], { encoding: 'utf8' }).stdout) as { files: Array<Record<string, any>> }; // eslint-disable-line @typescript-eslint/no-explicit-any
    const devLog = files.files.find((f) => f.kind === 'unix' && f.name?.path === '/dev/log');
    assert.ok(devLog, 'syslogd\'s /dev/log is in the image');
    assert.equal(devLog.root, 'task', 'a name of the container\'s, resolved in its root on restore');
    assert.ok(devLog.name.file, 'its socket file was found in the container');

    // The image's bundle, moved to a directory anyone may write: not used.
    const bad = join(dir, 'bad.tar');
    const open = join(dir, 'open');
    mkdirSync(open);
    chmodSync(open, 0o777);
    await editImage(image, bad, { 'container.json': json((v) => { v.bundle = open; }) });
    const refusedRun = ferry(['restore', id, '--root', state, '--image', bad, '--detach']);
    assert.notEqual(refusedRun.code, 0);
    assert.equal(refusedRun.stderr.trimEnd().split('\n').length, 1, refusedRun.stderr);
    assert.match(refusedRun.stderr, /container.json names bundle .*writable by group or others.*pass --bundle/);

    // The image's own bundle (root's): used; /dev/log is bound in the new container's /dev.
    const rs = ferry(['restore', id, '--root', state, '--image', image, '--detach']);
    assert.equal(rs.code, 0, rs.stderr);
    const n = ticks();
    await waitFor('logger to reach the restored syslogd through /dev/log', () => ticks() >= n + 3, 20_000);
    const now = lstatSync('/dev/log', { throwIfNoEntry: false });
    assert.equal(now?.ino, hostLog?.ino, 'the host\'s /dev/log is as it was');
  });
});
