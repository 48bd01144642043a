/**
 * Images are untrusted input (issue 14): someone who can edit an image (and recompute its
 * hashes) must not reach past what the image describes on the node that restores it. Each case
 * takes a real image, tampers with it the way an attacker would (tar-stream, one JSON entry
 * edited, the manifest's size and sha256 recomputed), restores it, and checks the refusal or
 * the confinement, and that a canary outside is untouched.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync, closeSync, copyFileSync, existsSync, fstatSync, linkSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, readlinkSync,
  renameSync, statSync, symlinkSync, writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { writeDevShm } from '../../src/container/devshm.js';
import { applyRootfsChanges, type RootfsRecord } from '../../src/container/rootfs.js';
import { FerryError } from '../../src/errors.js';
import { checkFiles, closeFiles, openFiles } from '../../src/files/install.js';
import { DEFAULT_FILE_OPTIONS } from '../../src/files/types.js';
import type { FileRecord, TaskRecord } from '../../src/image/records.js';
import { native } from '../../src/native/binding.js';
import { checkSharedFilePages, sharedExtents } from '../../src/restore/address-space.js';
import { FERRY, needs, WORKLOADS } from '../helpers/env.js';
import { editImage, json } from '../helpers/images.js';
import { alive, checkpointFreed, chrooted, cleanup, ferry, own, procState, scratchDir, startWorkload, verify, waitFor } from '../helpers/processes.js';

const skip = needs('root', 'build');
const RUNC = ['/usr/sbin/runc', '/usr/bin/runc'].find((p) => existsSync(p));
const BUSYBOX = '/bin/busybox';
const skipContainer = skip || (RUNC && existsSync(BUSYBOX) ? false : `needs runc and ${BUSYBOX} (apt-get install runc busybox-static)`);
const containers: Array<{ state: string; id: string }> = [];
after(() => {
  for (const c of containers) spawnSync(RUNC!, ['--root', c.state, 'delete', '--force', c.id], { timeout: 60000 });
  cleanup();
});

const O_RDONLY = 0, O_WRONLY = 0o1, O_RDWR = 0o2, O_CREAT = 0o100, O_TRUNC = 0o1000, O_APPEND = 0o2000, O_LARGEFILE = 0o100000;
const O_DIRECTORY = 0o200000, O_PATH = 0o10000000;
const RESOLVE_NO_MAGICLINKS = 0x02, RESOLVE_NO_SYMLINKS = 0x04, RESOLVE_BENEATH = 0x08, RESOLVE_IN_ROOT = 0x10;

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

/**
 * A files.json edit: the first regular file record (the log of `whose` workload) re-pointed with
 * `fields` (path, link, flags, ...). Its recorded size and mtime, the log's, are dropped unless
 * `keepStat`.
 */
function moveLog(whose: string, fields: Json, opts: { keepStat?: boolean } = {}): (text: string) => string {
  return json((v) => {
    const reg = (v.files as Json[]).find((f) => f.kind === 'reg');
    assert.ok(reg, `${whose} has its log open`);
    Object.assign(reg, fields);
    if (opts.keepStat) return;
    delete reg.size;
    delete reg.mtimeNs;
  });
}

/** A real image of a counter (checkpointed and killed, so its pid is free for the restore). */
async function counterImage(): Promise<{ image: string; pid: number; dir: string }> {
  const w = await startWorkload(join(WORKLOADS, 'counter'), ['50']);
  const image = join(w.dir, 'counter.tar');
  const r = ferry(['checkpoint', '--pid', String(w.pid), '--image', image]);
  assert.equal(r.code, 0, r.stderr);
  await w.exited;
  return { image, pid: w.pid, dir: w.dir };
}

/** A canary file outside everything the image names, and what it holds. */
function canaryFile(bytes: Buffer = Buffer.from('canary: must never change\n'.repeat(40))): { path: string; bytes: Buffer } {
  const path = join(scratchDir('ferry-canary-'), 'canary');
  writeFileSync(path, bytes);
  return { path, bytes };
}

/** Asserts that the canary holds what it did (its size and sha256, to keep the message short). */
function untouched(canary: { path: string; bytes: Buffer }, why: string): void {
  const now = readFileSync(canary.path);
  const digest = (b: Buffer): string => `${b.length} bytes, sha256 ${createHash('sha256').update(b).digest('hex').slice(0, 16)}`;
  assert.equal(digest(now), digest(canary.bytes), `the canary was changed (${why})`);
}

/** Everything under `dir`: relative path -> 'dir' | 'link:<target>' | file contents. */
function snapshot(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (rel: string): void => {
    for (const name of readdirSync(join(dir, rel)).sort()) {
      const p = rel ? `${rel}/${name}` : name;
      const st = lstatSync(join(dir, p));
      if (st.isDirectory()) {
        out.set(p, 'dir');
        walk(p);
      } else if (st.isSymbolicLink()) out.set(p, `link:${readlinkSync(join(dir, p))}`);
      else out.set(p, readFileSync(join(dir, p), 'utf8'));
    }
  };
  walk('');
  return out;
}

/** The error `fn` throws (it must throw). */
function thrown(fn: () => unknown): Error & { code?: string } {
  try {
    fn();
  } catch (err) {
    return err as Error & { code?: string };
  }
  assert.fail('expected an error');
}


/** The one line on stderr. */
function oneLine(stderr: string): string {
  const lines = stderr.trimEnd().split('\n');
  assert.equal(lines.length, 1, `expected one line on stderr, got:\n${stderr}`);
  return lines[0]!;
}

/**
 * A real image of a counter running as nobody (checkpointed and killed), whose own files (the
 * log its output goes to, in the test's root-only directory) nobody may then open.
 */
async function nobodyCounterImage(): Promise<{ image: string; pid: number; dir: string }> {
  const w = await startWorkload('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', join(WORKLOADS, 'counter')]);
  const image = join(w.dir, 'nobody.tar');
  await checkpointFreed(w, image);
  chmodSync(w.dir, 0o755);
  for (const name of readdirSync(w.dir).filter((n) => n.endsWith('.log'))) chmodSync(join(w.dir, name), 0o666);
  return { image, pid: w.pid, dir: w.dir };
}

/**
 * `base` (mode 755) holding `vault` (700, root's) with `notes` (644: readable, but only by
 * whoever may search the vault) and `link`, a symlink to it in a directory anyone may search.
 */
function vaultWithLink(): { base: string; vault: string; notes: { path: string; bytes: Buffer }; link: string } {
  const base = scratchDir('ferry-vault-');
  chmodSync(base, 0o755);
  const vault = join(base, 'vault');
  mkdirSync(vault, { mode: 0o700 });
  const notes = { path: join(vault, 'notes'), bytes: Buffer.alloc(4096, 'N') };
  writeFileSync(notes.path, notes.bytes, { mode: 0o644 });
  const link = join(base, 'link');
  symlinkSync(notes.path, link);
  return { base, vault, notes, link };
}

/** Runs `ferry restore args` paused after its checks (fault point 'verified'), runs `swap` then, and gives its exit code and stderr. */
async function restoreSwapped(args: string[], swap: () => void): Promise<{ code: number; stderr: string }> {
  const child = spawn(FERRY, ['restore', ...args], { env: { ...process.env, FERRY_TEST_PAUSE_AT: 'verified+2000' }, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => { stderr += b.toString(); });
  const exited = new Promise<number>((resolve) => child.on('exit', (code) => resolve(code ?? -1)));
  try {
    await waitFor('restore to pause after its checks', () => /paused at verified/.test(stderr) || child.exitCode !== null, 60_000, () => stderr);
    assert.match(stderr, /paused at verified/, 'every check passed before the swap');
    swap();
    const code = await Promise.race([exited, new Promise<number>((_, reject) => setTimeout(() => reject(new Error(`restore hangs: ${stderr}`)), 120_000).unref())]);
    return { code, stderr: stderr.split('\n').filter((l) => !l.startsWith('ferry-test:')).join('\n') };
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
  }
}


/** Where the edited images below map their one extra page: free in the counter. */
const EXTRA_AT = '0x200000000000';

/**
 * Writes to `out` the image `image` with one more area of pid `pid`: a page of the file `path`
 * mapped read-only at EXTRA_AT, shared (from a descriptor open for writing, as `mw` says) or
 * private (as a library's data would be).
 */
async function imageWithFileMapping(image: string, pid: number, out: string, path: string, shared: boolean): Promise<string> {
  await editImage(image, out, {
    [`tasks/${pid}/task.json`]: json((task) => {
      const vmas = task.vmas as Json[];
      assert.ok(vmas.every((m) => BigInt(m.end) <= BigInt(EXTRA_AT) || BigInt(m.start) >= BigInt(EXTRA_AT) + 4096n), `${EXTRA_AT} is free in the counter`);
      vmas.push({
        start: EXTRA_AT, end: '0x200000001000', prot: 1, shared, kind: 'file', name: path,
        vmflags: shared ? ['rd', 'sh', 'mr', 'mw', 'me', 'ms'] : ['rd', 'mr', 'mw', 'me'],
        runs: [], pagesOffset: 0, file: { path, offset: '0x0', dev: '0:0', ino: '0', size: 4096 },
      });
      vmas.sort((a, b) => (BigInt(a.start) < BigInt(b.start) ? -1 : 1));
    }),
  });
  return out;
}

describe('images are untrusted: confined file operations', { skip, timeout: 300_000 }, () => {
  // An edited image is unsigned: the untrusted default would refuse this root counter before any
  // file is touched. --max-creds root lets it through, and confinement must still hold.
  const ROOT_ALLOWED = ['--max-creds', 'root'];

  it('(a) a file record re-pointed at a canary with O_TRUNC: restore goes on, the canary keeps its content', async () => {
    const { image, pid, dir } = await counterImage();
    const canary = canaryFile();
    const bad = join(dir, 'trunc.tar');
    await editImage(image, bad, {
      // Read-only, so the restored counter cannot write into it either: only O_TRUNC could.
      'files.json': moveLog('the counter', { path: canary.path, link: canary.path, flags: O_TRUNC | O_LARGEFILE }),
    });
    const r = ferry(['restore', '--image', bad, ...ROOT_ALLOWED]);
    if (alive(pid)) own(pid);
    untouched(canary, `restore: ${r.code} ${r.stderr.trim()}`);
    assert.equal(r.code, 0, r.stderr);
  });

  it('(a) the same when the restore then fails: the canary keeps its content', async (t) => {
    const { image, pid, dir } = await counterImage();
    const canary = canaryFile();
    const bad = join(dir, 'trunc-fail.tar');
    await editImage(image, bad, {
      'files.json': moveLog('the counter', { path: canary.path, link: canary.path, flags: O_WRONLY | O_APPEND | O_TRUNC | O_LARGEFILE }, { keepStat: true }),
      // Fails once the files are open: the executable cannot be found.
      [`tasks/${pid}/task.json`]: json((t) => { t.exe = join(dir, 'no-such-executable'); }),
    });
    const r = ferry(['restore', '--image', bad, ...ROOT_ALLOWED]);
    if (alive(pid)) own(pid);
    assert.notEqual(r.code, 0, 'the restore fails');
    t.diagnostic(oneLine(r.stderr));
    assert.match(oneLine(r.stderr), /no-such-executable/);
    untouched(canary, r.stderr.trim());
  });

  it('(b) an area re-typed as a shared writable mapping of a canary, pages stored: refused, canary untouched', async (t) => {
    const { image, pid, dir } = await counterImage();
    const bad = join(dir, 'shared.tar');
    let area = '';
    let canary: { path: string; bytes: Buffer } | undefined;
    await editImage(image, bad, {
      [`tasks/${pid}/task.json`]: json((t) => {
        const v = (t.vmas as Json[]).find((m) => m.kind === 'anon' && !m.shared && m.runs.length > 0 && !m.vmflags.includes('gd'));
        assert.ok(v, 'an anonymous area with stored pages');
        const size = Number(BigInt(v.end) - BigInt(v.start));
        canary = canaryFile(Buffer.alloc(size, 'C'));
        Object.assign(v, {
          kind: 'file', shared: true, prot: 3, name: canary.path,
          file: { path: canary.path, offset: '0x0', dev: '0:0', ino: '0', size },
        });
        area = v.start as string;
      }),
    });
    const r = ferry(['restore', '--image', bad, ...ROOT_ALLOWED]);
    if (alive(pid)) own(pid);
    untouched(canary!, `restore: ${r.code} ${r.stderr.trim()}`);
    assert.notEqual(r.code, 0, 'refused');
    const line = oneLine(r.stderr);
    t.diagnostic(line);
    assert.match(line, new RegExp(`pid ${pid}\\b`));
    assert.ok(line.includes(area), `names the area ${area}: ${line}`);
    assert.ok(!alive(pid), 'nothing left running');
  });

  it('(b) a shared writable mapping whose path goes through a symlink: refused in one line, nothing left; the same file by its real path maps', async (t) => {
    const { image, pid, dir } = await counterImage();
    // The file the symlink leads to (a 0666 file behind a directory the image's process could
    // not search, or one swapped in after the check, in the attacks this stands for).
    const canary = canaryFile(Buffer.alloc(4096, 'C'));
    const link = join(scratchDir('ferry-maplink-'), 'link');
    symlinkSync(canary.path, link);
    const AT = EXTRA_AT;
    const withMapping = (path: string, name: string): Promise<string> => imageWithFileMapping(image, pid, join(dir, name), path, true);
    const bad = await withMapping(link, 'maplink.tar');
    const r = ferry(['restore', '--image', bad, ...ROOT_ALLOWED]);
    if (alive(pid)) own(pid);
    assert.notEqual(r.code, 0, 'refused');
    const line = oneLine(r.stderr);
    t.diagnostic(line);
    assert.match(line, new RegExp(`cannot open ${link} for writing, mapped shared from a descriptor open for writing .* by pid ${pid} at ${AT}: `
      + 'its path goes through a symbolic link, which a file an untrusted image maps for writing may not'));
    assert.ok(!alive(pid), 'nothing left running');
    untouched(canary, line);
    // The same area by the file's own path: opened (checked as opened) and mapped.
    const good = await withMapping(canary.path, 'mapreal.tar');
    const ok = ferry(['restore', '--image', good, ...ROOT_ALLOWED]);
    if (alive(pid)) own(pid);
    assert.equal(ok.code, 0, ok.stderr);
    const maps = readFileSync(`/proc/${pid}/maps`, 'utf8');
    assert.match(maps, new RegExp(`^200000000000-200000001000 r--s 00000000 \\S+ \\d+ +${canary.path}$`, 'm'), maps);
    untouched(canary, 'mapped, never written');
  });

  it('(b) a directory of a shared writable mapping\'s path swapped after the check: the file the task got is judged, refused in one line, nothing left', async (t) => {
    // A nobody counter, bounded to nobody: its credentials, not root's, decide.
    const w = await startWorkload('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', join(WORKLOADS, 'counter')]);
    const image = join(w.dir, 'nobody.tar');
    await checkpointFreed(w, image);
    // Its own files (the log its output goes to, in the test's root-only directory) it may open.
    chmodSync(w.dir, 0o755);
    for (const name of readdirSync(w.dir).filter((n) => n.endsWith('.log'))) chmodSync(join(w.dir, name), 0o666);
    const base = scratchDir('ferry-mapswap-');
    chmodSync(base, 0o755);
    mkdirSync(join(base, 'open'), { mode: 0o755 });
    writeFileSync(join(base, 'open', 'data'), Buffer.alloc(4096, 'D'), { mode: 0o666 });
    chmodSync(join(base, 'open', 'data'), 0o666);
    // What the swap brings in: a file of the same name nobody may not open for writing.
    mkdirSync(join(base, 'vault'), { mode: 0o755 });
    const secret = { path: join(base, 'vault', 'data'), bytes: Buffer.alloc(4096, 'S') };
    writeFileSync(secret.path, secret.bytes, { mode: 0o600 });
    const path = join(base, 'open', 'data');
    const AT = EXTRA_AT;
    const bad = join(w.dir, 'mapswap.tar');
    await editImage(image, bad, {
      [`tasks/${w.pid}/task.json`]: json((task) => {
        const vmas = task.vmas as Json[];
        assert.ok(vmas.every((m) => BigInt(m.end) <= BigInt(AT) || BigInt(m.start) >= BigInt(AT) + 4096n), `${AT} is free in the counter`);
        vmas.push({
          start: AT, end: '0x200000001000', prot: 3, shared: true, kind: 'file', name: path, vmflags: ['rd', 'wr', 'sh', 'mr', 'mw', 'me', 'ms'],
          runs: [], pagesOffset: 0, file: { path, offset: '0x0', dev: '0:0', ino: '0', size: 4096 },
        });
        vmas.sort((a, b) => (BigInt(a.start) < BigInt(b.start) ? -1 : 1));
      }),
    });
    // Restore pauses once every check has passed (fault point 'verified'), and the directory
    // is swapped for another then, with no symlink anywhere: only the open's own result can tell.
    const child = spawn(FERRY, ['restore', '--image', bad, '--max-creds', 'nobody'], {
      env: { ...process.env, FERRY_TEST_PAUSE_AT: 'verified+2000' }, stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (b: Buffer) => { stderr += b.toString(); });
    const exited = new Promise<number>((resolve) => child.on('exit', (code) => resolve(code ?? -1)));
    try {
      await waitFor('restore to pause after its checks', () => /paused at verified/.test(stderr) || child.exitCode !== null, 60_000, () => stderr);
      assert.match(stderr, /paused at verified/, 'every check passed before the swap');
      renameSync(join(base, 'open'), join(base, 'was-open'));
      renameSync(join(base, 'vault'), join(base, 'open'));
      const code = await Promise.race([exited, new Promise<number>((_, reject) => setTimeout(() => reject(new Error(`restore hangs: ${stderr}`)), 120_000).unref())]);
      if (alive(w.pid)) own(w.pid);
      assert.notEqual(code, 0, 'refused');
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
    const line = oneLine(stderr.split('\n').filter((l) => !l.startsWith('ferry-test:')).join('\n'));
    t.diagnostic(line);
    assert.match(line, new RegExp(`pid ${w.pid} \\(counter\\) maps "${path}" shared at ${AT} and writable, so restore would open it for writing, which its `
      + 'credentials \\(uid 65534, gid 65534, no CAP_DAC_OVERRIDE\\) could not open so \\(owner 0:0, mode 600\\): nothing was restored'));
    assert.ok(!alive(w.pid), 'nothing left running');
    untouched({ ...secret, path: join(base, 'open', 'data') }, line); // where the swap put it
  });

  it('(d) a file held open re-pointed at a symlink to a readable file under a directory its process could not search: refused in one line, nothing left', async (t) => {
    const { image, pid, dir } = await nobodyCounterImage();
    const { notes, link } = vaultWithLink();
    const bad = join(dir, 'fdlink.tar');
    await editImage(image, bad, { 'files.json': moveLog('the counter', { path: link, link, flags: O_RDONLY | O_LARGEFILE }) });
    const r = ferry(['restore', '--image', bad, '--max-creds', 'nobody']);
    if (alive(pid)) own(pid);
    assert.notEqual(r.code, 0, 'refused');
    const line = oneLine(r.stderr);
    t.diagnostic(line);
    assert.match(line, new RegExp(`image ${bad}: pid ${pid} \\(counter\\) fd \\d+ would get "${link}" through a symbolic link, which a file an untrusted `
      + 'image holds open may not go through .*: nothing was restored; sign the image and restore with --trust if it is genuine$'));
    assert.ok(!alive(pid), 'nothing left running');
    untouched(notes, line);
  });

  it('(d) a directory of a held file\'s path swapped after the check: the file opened is judged, refused in one line, nothing left', async (t) => {
    const { image, pid, dir } = await nobodyCounterImage();
    const base = scratchDir('ferry-fdswap-');
    chmodSync(base, 0o755);
    mkdirSync(join(base, 'open'), { mode: 0o755 });
    writeFileSync(join(base, 'open', 'log'), '', { mode: 0o666 });
    chmodSync(join(base, 'open', 'log'), 0o666);
    // What the swap brings in: a file of the same name nobody may not open for writing.
    mkdirSync(join(base, 'vault'), { mode: 0o755 });
    const secret = { path: join(base, 'vault', 'log'), bytes: Buffer.alloc(4096, 'S') };
    writeFileSync(secret.path, secret.bytes, { mode: 0o600 });
    const path = join(base, 'open', 'log');
    const bad = join(dir, 'fdswap.tar');
    await editImage(image, bad, { 'files.json': moveLog('the counter', { path, link: path }) });
    const r = await restoreSwapped(['--image', bad, '--max-creds', 'nobody'], () => {
      renameSync(join(base, 'open'), join(base, 'was-open'));
      renameSync(join(base, 'vault'), join(base, 'open'));
    });
    if (alive(pid)) own(pid);
    assert.notEqual(r.code, 0, 'refused');
    const line = oneLine(r.stderr);
    t.diagnostic(line);
    assert.match(line, new RegExp(`pid ${pid} \\(counter\\) fd \\d+ would get "${path}" open for writing, which its credentials \\(uid 65534, gid 65534, `
      + 'no CAP_DAC_OVERRIDE\\) could not open so \\(the file opened there: owner 0:0, mode 600\\): nothing was restored'));
    assert.ok(!alive(pid), 'nothing left running');
    untouched({ ...secret, path }, line); // where the swap put it
  });

  it('(e) a private mapping of a file its process could not read, or of a symlink to one it could not reach: refused in one line, nothing left', async (t) => {
    const { image, pid, dir } = await nobodyCounterImage();
    const { base, vault, notes, link } = vaultWithLink();
    const secret = { path: join(base, 'secret'), bytes: Buffer.alloc(4096, 'S') };
    writeFileSync(secret.path, secret.bytes, { mode: 0o600 });
    const AT = EXTRA_AT;
    const withMapping = (path: string, name: string): Promise<string> => imageWithFileMapping(image, pid, join(dir, name), path, false);
    // By its path, before anything is made.
    const unreadable = await withMapping(secret.path, 'mapsecret.tar');
    const r = ferry(['restore', '--image', unreadable, '--max-creds', 'nobody']);
    if (alive(pid)) own(pid);
    assert.notEqual(r.code, 0, 'refused');
    const line = oneLine(r.stderr);
    t.diagnostic(line);
    assert.match(line, new RegExp(`pid ${pid} \\(counter\\) maps "${secret.path}" privately at ${AT}, so restore would open it for reading, which its credentials `
      + '\\(uid 65534, gid 65534, no CAP_DAC_OVERRIDE or CAP_DAC_READ_SEARCH\\) could not read \\(owner 0:0, mode 600\\): nothing was restored'));
    assert.ok(!alive(pid), 'nothing left running');
    // Through a symlink whose own directories nobody may search: judged on where the open led.
    const linked = await withMapping(link, 'maplink.tar');
    const l = ferry(['restore', '--image', linked, '--max-creds', 'nobody']);
    if (alive(pid)) own(pid);
    assert.notEqual(l.code, 0, 'refused');
    const line2 = oneLine(l.stderr);
    t.diagnostic(line2);
    assert.match(line2, new RegExp(`pid ${pid} \\(counter\\) maps "${link}" \\(which leads to "${notes.path}"\\) privately at ${AT}, so restore would open it `
      + `for reading, which its credentials .* could not reach: the directory "${vault}" is not searchable by them \\(owner 0:0, mode 700\\): nothing was restored`));
    assert.ok(!alive(pid), 'nothing left running');
    untouched(secret, line);
    untouched(notes, line2);
  });

  it('(c) rootfs changes through a symlink to a directory outside: refused, nothing created or deleted outside', () => {
    const rootfs = scratchDir('ferry-rootfs-');
    const outside = scratchDir('ferry-canarydir-');
    writeFileSync(join(outside, 'victim'), 'victim\n');
    mkdirSync(join(outside, 'sub'));
    const before = snapshot(outside);
    const meta = { mode: 0o644, uid: 0, gid: 0 };
    const attacks: Array<[string, RootfsRecord['changes']]> = [
      ['a file through an absolute symlink', [
        { path: 'esc', type: 'symlink', target: outside, ...meta },
        { path: 'esc/pwned', type: 'file', data: Buffer.from('pwned\n').toString('base64'), ...meta }]],
      ['a deletion through an absolute symlink', [
        { path: 'esc', type: 'symlink', target: outside, ...meta },
        { path: 'esc/victim', type: 'whiteout', ...meta }]],
      ['a directory through a relative symlink', [
        { path: 'up', type: 'symlink', target: `../../../../../../..${outside}`, ...meta },
        { path: 'up/newdir', type: 'dir', ...meta, mode: 0o755 }]],
      ['an opaque directory replacing one outside', [
        { path: 'esc', type: 'symlink', target: outside, ...meta },
        { path: 'esc/sub', type: 'dir', opaque: true, ...meta, mode: 0o755 }]],
      ['a symlink made through a symlink', [
        { path: 'esc', type: 'symlink', target: outside, ...meta },
        { path: 'esc/link', type: 'symlink', target: '/etc/shadow', ...meta }]],
    ];
    for (const [what, changes] of attacks) {
      let err: unknown;
      try {
        applyRootfsChanges(rootfs, { kind: 'overlay', changes });
      } catch (e) {
        err = e;
      }
      assert.deepEqual(snapshot(outside), before, `${what}: nothing changed outside`);
      assert.ok(err instanceof FerryError, `${what}: refused (got ${String(err)})`);
    }
  });
  it('(c) rootfs changes through symlinks already in the bundle rootfs: refused by the kernel, nothing outside touched', () => {
    const rootfs = scratchDir('ferry-rootfs-');
    const outside = scratchDir('ferry-canarydir-');
    writeFileSync(join(outside, 'victim'), 'victim\n');
    mkdirSync(join(outside, 'sub'));
    writeFileSync(join(outside, 'sub', 'deep'), 'deep\n');
    symlinkSync(outside, join(rootfs, 'abs'));
    symlinkSync('../../../../../../../..' + outside, join(rootfs, 'rel'));
    mkdirSync(join(rootfs, 'd'));
    symlinkSync('../abs', join(rootfs, 'd', 'hop'));
    const before = snapshot(outside);
    const meta = { mode: 0o644, uid: 0, gid: 0 };
    const data = Buffer.from('pwned\n').toString('base64');
    const attacks: Array<[string, RootfsRecord['changes'][number]]> = [
      ['a file through an absolute symlink of the bundle', { path: 'abs/pwned', type: 'file', data, ...meta }],
      ['a deletion through a relative symlink of the bundle', { path: 'rel/victim', type: 'whiteout', ...meta }],
      ['a directory tree deleted through two symlinks', { path: 'd/hop/sub', type: 'whiteout', ...meta }],
      ['an opaque directory through a symlink', { path: 'abs/sub', type: 'dir', opaque: true, ...meta }],
      ['a symlink through a symlink', { path: 'abs/link', type: 'symlink', target: '/', ...meta }],
      ['an absolute path', { path: `${outside}/pwned`, type: 'file', data, ...meta }],
      ['a ".." path', { path: `../../../../../../..${outside}/pwned`, type: 'file', data, ...meta }],
    ];
    for (const [what, change] of attacks) {
      const err = thrown(() => applyRootfsChanges(rootfs, { kind: 'overlay', changes: [change] }));
      assert.deepEqual(snapshot(outside), before, `${what}: nothing changed outside`);
      assert.ok(err instanceof FerryError && err.code === 'ECONFINE', `${what}: refused with ECONFINE (got ${err.message})`);
      assert.match(err.message, /container\/rootfs-diff\.json/, `${what}: names the entry`);
    }
    // Whiteouts and replacements of the symlinks themselves remove the links, not their targets.
    applyRootfsChanges(rootfs, {
      kind: 'overlay', changes: [
        { path: 'abs', type: 'whiteout', ...meta },
        { path: 'rel', type: 'dir', opaque: true, ...meta, mode: 0o755 },
        { path: 'd/hop', type: 'file', data, ...meta },
      ],
    });
    assert.deepEqual(snapshot(outside), before, 'nothing changed outside');
    assert.ok(!existsSync(join(rootfs, 'abs')) && lstatSync(join(rootfs, 'rel')).isDirectory());
    assert.equal(readFileSync(join(rootfs, 'd', 'hop'), 'utf8'), 'pwned\n');
  });

  it('rootfs changes still apply: directories, files, symlinks (made, not followed), whiteouts, opaque directories', () => {
    const rootfs = scratchDir('ferry-rootfs-');
    const outside = canaryFile();
    mkdirSync(join(rootfs, 'etc'));
    mkdirSync(join(rootfs, 'old', 'deep'), { recursive: true });
    writeFileSync(join(rootfs, 'old', 'deep', 'f'), 'x');
    mkdirSync(join(rootfs, 'opq'));
    writeFileSync(join(rootfs, 'opq', 'hidden'), 'hidden');
    writeFileSync(join(rootfs, 'etc', 'conf'), 'old conf');
    linkSync(outside.path, join(rootfs, 'etc', 'hard')); // a hard link to a file outside (same file system)
    const b64 = (t: string): string => Buffer.from(t).toString('base64');
    applyRootfsChanges(rootfs, {
      kind: 'overlay', changes: [
        { path: 'etc', type: 'dir', mode: 0o750, uid: 0, gid: 0 },
        { path: 'etc/conf', type: 'file', data: b64('new conf'), mode: 0o640, uid: 1000, gid: 1000 },
        { path: 'etc/hard', type: 'file', data: b64('replaced'), mode: 0o600, uid: 0, gid: 0 },
        { path: 'etc/link', type: 'symlink', target: outside.path, mode: 0o777, uid: 0, gid: 0 },
        { path: 'new', type: 'dir', mode: 0o700, uid: 0, gid: 0 },
        { path: 'new/file', type: 'file', data: b64('hello'), mode: 0o4755, uid: 0, gid: 0 },
        { path: 'old', type: 'whiteout', mode: 0, uid: 0, gid: 0 },
        { path: 'opq', type: 'dir', opaque: true, mode: 0o755, uid: 0, gid: 0 },
        { path: 'opq/kept', type: 'file', data: b64('kept'), mode: 0o644, uid: 0, gid: 0 },
      ],
    });
    assert.equal(statSync(join(rootfs, 'etc')).mode & 0o7777, 0o750);
    assert.equal(readFileSync(join(rootfs, 'etc', 'conf'), 'utf8'), 'new conf');
    const conf = statSync(join(rootfs, 'etc', 'conf'));
    assert.deepEqual([conf.mode & 0o7777, conf.uid, conf.gid], [0o640, 1000, 1000]);
    assert.equal(readFileSync(join(rootfs, 'etc', 'hard'), 'utf8'), 'replaced');
    untouched(outside, 'a hard link to it was replaced, not written into');
    assert.equal(readlinkSync(join(rootfs, 'etc', 'link')), outside.path, 'the symlink is made as it is');
    assert.equal(statSync(join(rootfs, 'new', 'file')).mode & 0o7777, 0o4755);
    assert.ok(!existsSync(join(rootfs, 'old')), 'a whiteout removes the whole tree');
    assert.deepEqual(readdirSync(join(rootfs, 'opq')), ['kept'], 'an opaque directory hides what was there');
    assert.deepEqual(readdirSync(join(rootfs, 'etc')).filter((n) => n.startsWith('.ferry-')), [], 'no temporary file left');
    // Applied again (the node where the checkpoint was taken): the same result.
    applyRootfsChanges(rootfs, { kind: 'overlay', changes: [{ path: 'etc/conf', type: 'file', data: b64('new conf'), mode: 0o640, uid: 1000, gid: 1000 }] });
    assert.equal(readFileSync(join(rootfs, 'etc', 'conf'), 'utf8'), 'new conf');
  });

  it('openat2: the kernel semantics confined.ts relies on', () => {
    const n = native();
    const root = scratchDir('ferry-root-');
    const outside = scratchDir('ferry-canarydir-');
    writeFileSync(join(outside, 'f'), 'outside');
    mkdirSync(join(root, 'd'));
    writeFileSync(join(root, 'd', 'f'), 'inside');
    symlinkSync(outside, join(root, 'abs'));
    symlinkSync('/d', join(root, 'rooted'));
    const dirfd = n.openRaw(root, O_PATH | O_DIRECTORY);
    try {
      const read = (fd: number): string => {
        const b = readFileSync(`/proc/self/fd/${fd}`, 'utf8');
        n.closeFd(fd);
        return b;
      };
      assert.equal(thrown(() => n.openat2(dirfd, '../x', O_RDONLY, 0, RESOLVE_BENEATH)).code, 'EXDEV');
      assert.equal(thrown(() => n.openat2(dirfd, 'abs/f', O_RDONLY, 0, RESOLVE_BENEATH)).code, 'EXDEV');
      assert.equal(thrown(() => n.openat2(dirfd, 'rooted/f', O_RDONLY, 0, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)).code, 'ELOOP');
      // In root: "/" and ".." are the root's, an absolute symlink is read inside it.
      assert.equal(read(n.openat2(dirfd, '/../../d/f', O_RDONLY, 0, RESOLVE_IN_ROOT)), 'inside');
      assert.equal(read(n.openat2(dirfd, 'rooted/f', O_RDONLY, 0, RESOLVE_IN_ROOT)), 'inside');
      assert.equal(thrown(() => n.openat2(dirfd, 'abs/f', O_RDONLY, 0, RESOLVE_IN_ROOT)).code, 'ENOENT');
      // Magic links: refused.
      const self = `proc/${process.pid}/root${outside}/f`;
      const slash = n.openRaw('/', O_PATH | O_DIRECTORY);
      try {
        assert.equal(read(n.openat2(slash, self, O_RDONLY, 0, 0)), 'outside', 'followed without confinement');
        assert.equal(thrown(() => n.openat2(slash, self, O_RDONLY, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)).code, 'ELOOP');
      } finally {
        n.closeFd(slash);
      }
      // mode without O_CREAT is not passed (openat2 would refuse it); O_CREAT gets it.
      read(n.openat2(dirfd, 'd/f', O_RDONLY, 0o777, RESOLVE_BENEATH));
      n.closeFd(n.openat2(dirfd, 'd/new', O_RDWR | O_CREAT, 0o640, RESOLVE_BENEATH));
      assert.equal(statSync(join(root, 'd', 'new')).mode & 0o777, 0o640 & ~process.umask());
      assert.equal(thrown(() => n.openat2(dirfd, 'd/f\0x', O_RDONLY, 0, 0)).code, 'EINVAL');
      n.mkdirat(dirfd, 'd/sub', 0o755);
      n.symlinkat('/nowhere', dirfd, 'd/sub/l');
      n.fchownat(dirfd, 'd/sub/l', 1234, 1234, 0x100);
      assert.equal(lstatSync(join(root, 'd', 'sub', 'l')).uid, 1234);
      n.renameat2(dirfd, 'd/sub/l', dirfd, 'd/sub/m', 1);
      n.unlinkat(dirfd, 'd/sub/m', 0);
      n.unlinkat(dirfd, 'd/sub', 0x200);
      assert.ok(!existsSync(join(root, 'd', 'sub')));
    } finally {
      n.closeFd(dirfd);
    }
  });

  it('a container\'s files resolve inside its root: a symlink to a host path stays inside, a magic link is refused', async () => {
    const dir = scratchDir('ferry-croot-');
    const outside = canaryFile();
    mkdirSync(join(dir, 'data'));
    writeFileSync(join(dir, 'data', 'file'), 'inside\n');
    mkdirSync(join(dir, 'tmp'));
    symlinkSync('/data', join(dir, 'link')); // absolute, as the container sees it
    symlinkSync(join(outside.path, '..'), join(dir, 'esc')); // the canary's directory, as the host sees it
    const pid = await chrooted(dir);
    const taskRoot = `/proc/${pid}/root`;
    const reg = (id: number, path: string, flags: number): FileRecord => ({
      id, kind: 'reg', root: 'task', path, flags, pos: '0', dev: '0', ino: '0', directory: false,
    });
    // Through the container's own absolute symlink: its file, O_TRUNC dropped.
    const files = openFiles([reg(1, '/link/file', O_RDWR | O_TRUNC | O_LARGEFILE)], DEFAULT_FILE_OPTIONS, new Map(), taskRoot);
    try {
      const fd = files.opened.get(1)!;
      assert.equal(fstatSync(fd).ino, statSync(join(dir, 'data', 'file')).ino, 'the file inside the root');
      assert.equal(readFileSync(join(dir, 'data', 'file'), 'utf8'), 'inside\n', 'not truncated');
      assert.equal(native().getFl(fd) & 0o3, O_RDWR, 'the recorded access mode');
    } finally {
      closeFiles(files.opened);
    }
    // A symlink naming the canary's host path is resolved inside the root, where it is not.
    const escape = reg(2, `/esc/${'canary'}`, O_RDWR | O_TRUNC);
    const e1 = thrown(() => checkFiles([escape], taskRoot));
    assert.ok(e1 instanceof FerryError && e1.code === 'ENOENT', e1.message);
    const e2 = thrown(() => openFiles([escape], DEFAULT_FILE_OPTIONS, new Map(), taskRoot));
    assert.ok(e2 instanceof FerryError, e2.message);
    untouched(outside, 'through a symlink of the container');
    // A deleted file to be made again in a directory behind that symlink: nothing is made there.
    const ghost: FileRecord = {
      id: 3, kind: 'ghost', root: 'task', path: '/esc/ghost', flags: O_RDWR | O_LARGEFILE, pos: '0', mode: 0o644, uid: 0, gid: 0,
      ghost: '1:1', size: 0, extents: [], data: '',
    };
    assert.ok(thrown(() => checkFiles([ghost], taskRoot)) instanceof FerryError);
    assert.ok(thrown(() => openFiles([ghost], DEFAULT_FILE_OPTIONS, new Map(), taskRoot)) instanceof FerryError);
    assert.deepEqual(readdirSync(join(outside.path, '..')), ['canary'], 'nothing made outside');
    // A deleted file made again where the root says: inside, unlinked at once, with its contents.
    const inside: FileRecord = { ...ghost, path: '/tmp/ghost', ghost: '1:2', size: 5, extents: [[0, 5]], data: 'files/3-contents' };
    const made = openFiles([inside], DEFAULT_FILE_OPTIONS, new Map([['files/3-contents', Buffer.from('ghost')]]), taskRoot);
    try {
      const fd = made.opened.get(3)!;
      assert.equal(readFileSync(`/proc/self/fd/${fd}`, 'utf8'), 'ghost');
      assert.equal(readlinkSync(`/proc/self/fd/${fd}`), `${dir}/tmp/ghost (deleted)`);
      assert.deepEqual(readdirSync(join(dir, 'tmp')), []);
    } finally {
      closeFiles(made.opened);
    }
    // On the host ('/'), a /proc magic link is refused.
    const magic = { id: 4, kind: 'reg', path: `/proc/${process.pid}/root${outside.path}`, flags: O_RDWR | O_TRUNC, pos: '0', dev: '0', ino: '0', directory: false };
    const e3 = thrown(() => checkFiles([magic]));
    assert.ok(e3 instanceof FerryError && e3.code === 'ECONFINE', e3.message);
    assert.ok(thrown(() => openFiles([magic], DEFAULT_FILE_OPTIONS)) instanceof FerryError);
    untouched(outside, 'through a magic link');
  });

  it('a container\'s /dev/shm is written beneath it: a symlink there is not followed', async () => {
    const dir = scratchDir('ferry-croot-');
    const outside = scratchDir('ferry-canarydir-');
    writeFileSync(join(outside, 'victim'), 'victim\n');
    const before = snapshot(outside);
    mkdirSync(join(dir, 'dev', 'shm'), { recursive: true });
    symlinkSync(outside, join(dir, 'dev', 'shm', 'esc'));
    const pid = await chrooted(dir);
    const file = (path: string, data = 'pwned'): { path: string; dir: boolean; mode: number; uid: number; gid: number; data: string } => (
      { path, dir: false, mode: 0o600, uid: 0, gid: 0, data: Buffer.from(data).toString('base64') });
    for (const path of ['esc/pwned', 'esc/', '../../../..' + outside + '/pwned', `${outside}/pwned`]) {
      const err = thrown(() => writeDevShm(pid, { files: [file(path)] }));
      assert.ok(err instanceof FerryError && err.code === 'ECONFINE', `${path}: ${err.message}`);
      assert.match(err.message, /container\/devshm\.json/, 'names the entry');
      assert.deepEqual(snapshot(outside), before, `${path}: nothing changed outside`);
    }
    // A file at the symlink's own name replaces the symlink.
    writeDevShm(pid, { files: [file('esc', 'replaced')] });
    assert.equal(readFileSync(join(dir, 'dev', 'shm', 'esc'), 'utf8'), 'replaced');
    writeDevShm(pid, { files: [{ path: 'sub', dir: true, mode: 0o1777, uid: 0, gid: 0 }, file('sub/sem.x', 'data'), file('shm.y', 'more')] });
    assert.equal(readFileSync(join(dir, 'dev', 'shm', 'sub', 'sem.x'), 'utf8'), 'data');
    assert.equal(statSync(join(dir, 'dev', 'shm', 'sub')).mode & 0o7777, 0o1777);
    assert.equal(statSync(join(dir, 'dev', 'shm', 'shm.y')).mode & 0o7777, 0o600);
    assert.deepEqual(snapshot(outside), before);
  });

  it('an image storing pages of a shared file mapping is refused by a check alone', () => {
    const task = {
      pid: 4242,
      vmas: [
        { start: '0x1000', end: '0x3000', prot: 3, shared: false, kind: 'file', name: '/f', file: { path: '/f' }, runs: [[0, 1]] },
        { start: '0x4000', end: '0x5000', prot: 3, shared: true, kind: 'file', name: '/m', file: { path: '/memfd:x (deleted)' }, memfd: { id: '1' }, runs: [[0, 1]] },
        { start: '0x6000', end: '0x7000', prot: 1, shared: true, kind: 'file', name: '/ro', file: { path: '/ro' }, runs: [] },
      ],
    } as unknown as TaskRecord;
    checkSharedFilePages(task);
    (task.vmas as unknown as Json[]).push({ start: '0x8000', end: '0x9000', prot: 1, shared: true, kind: 'file', name: '/etc/x', file: { path: '/etc/x' }, runs: [[0, 1]] });
    const err = thrown(() => checkSharedFilePages(task));
    assert.match(err.message, /pid 4242 area 0x8000-0x9000 is a shared mapping of \/etc\/x/);
  });

  it('only shared anonymous memory may name a shared memory object (its windows are opened for writing through map_files), by a check alone', () => {
    const anon = { start: '0x1000', end: '0x2000', prot: 3, shared: true, kind: 'anon', name: '', runs: [], shmem: { id: '0:1:7', offset: '0x0' } };
    assert.deepEqual([...sharedExtents([{ pid: 4242, vmas: [anon, { ...anon, start: '0x3000', end: '0x5000', shmem: { id: '0:1:7', offset: '0x1000' } }] } as unknown as TaskRecord])],
      [['0:1:7', [0n, 0x3000n]]]);
    // A read-only shared mapping of a file, which the check of writable mappings lets by,
    // named as the object an anonymous writable window joins.
    const file = { ...anon, prot: 1, kind: 'file', name: '/etc/shadow', file: { path: '/etc/shadow', offset: '0x0' } };
    const err = thrown(() => sharedExtents([{ pid: 4242, vmas: [file, { ...anon, start: '0x3000', end: '0x4000' }] } as unknown as TaskRecord]));
    assert.equal(err.code, 'EIMAGE');
    assert.match(err.message, /^image: pid 4242 area 0x1000-0x2000 names shared memory 0:1:7 but is not a shared anonymous mapping: refused/);
    assert.equal(thrown(() => sharedExtents([{ pid: 1, vmas: [{ ...anon, shared: false }] } as unknown as TaskRecord])).code, 'EIMAGE');
    assert.equal(thrown(() => sharedExtents([{ pid: 1, vmas: [{ ...anon, sysv: { shmid: 1 } }] } as unknown as TaskRecord])).code, 'EIMAGE');
  });
  it('(c) end to end: a container image with rootfs changes through a symlink, or a file behind one, is refused; nothing outside touched', { skip: skipContainer }, async (t) => {
    const dir = scratchDir('ferry-ctr-');
    const state = join(dir, 'state');
    const rootfs = join(dir, 'rootfs');
    for (const d of ['bin', 'proc', 'sys', 'dev', 'tmp']) mkdirSync(join(rootfs, d), { recursive: true });
    copyFileSync(BUSYBOX, join(rootfs, 'bin', 'busybox'));
    for (const a of ['sh', 'sleep']) symlinkSync('busybox', join(rootfs, 'bin', a));
    const b = join(dir, 'bundle');
    mkdirSync(b);
    assert.equal(spawnSync(RUNC!, ['spec', '--bundle', b]).status, 0);
    const config = JSON.parse(readFileSync(join(b, 'config.json'), 'utf8')) as Json;
    config.root = { path: rootfs, readonly: false };
    config.process.terminal = false;
    config.process.args = ['sh', '-c', 'i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 0.05; done'];
    writeFileSync(join(b, 'config.json'), JSON.stringify(config));
    const outside = scratchDir('ferry-canarydir-');
    writeFileSync(join(outside, 'victim'), 'victim\n');
    writeFileSync(join(outside, 'canary'), 'canary\n');
    const before = snapshot(outside);
    const id = `ferry-confine-${process.pid}`;
    containers.push({ state, id });
    const log = join(dir, 'ctr.log');
    const fd = openSync(log, 'a');
    const r0 = spawnSync(RUNC!, ['--root', state, 'run', '-d', '--bundle', b, id], { stdio: ['ignore', fd, fd], timeout: 60000 });
    closeSync(fd);
    assert.equal(r0.status, 0, 'runc run');
    await waitFor('ticks', () => readFileSync(log, 'utf8').includes('tick 3'));
    const image = join(dir, 'ctr.tar');
    const cp = ferry(['checkpoint', id, '--root', state, '--image', image]);
    assert.equal(cp.code, 0, cp.stderr);
    const meta = { mode: 0o644, uid: 0, gid: 0 };
    const absent = (): boolean => spawnSync(RUNC!, ['--root', state, 'state', id]).status !== 0;

    // The changes make `esc` a symlink to a host directory, then write and delete through it.
    const bad1 = join(dir, 'rootfs-escape.tar');
    await editImage(image, bad1, {
      'container/rootfs-diff.json': json((v) => {
        v.kind = 'overlay';
        v.changes = [
          { path: 'esc', type: 'symlink', target: outside, ...meta },
          { path: 'esc/pwned', type: 'file', data: Buffer.from('pwned\n').toString('base64'), ...meta },
          { path: 'esc/victim', type: 'whiteout', ...meta },
        ];
      }),
    });
    // The container's stdout, a file of the host, handed in: an unsigned image may not name it (install.ts).
    const logFd = openSync(log, 'a');
    const r1x = spawnSync(FERRY, ['restore', id, '--root', state, '--image', bad1, '--detach', '--inherit-fd', `fd[3]:${log}`],
      { stdio: ['ignore', 'pipe', 'pipe', logFd], timeout: 120_000, encoding: 'utf8' });
    closeSync(logFd);
    const r1 = { code: r1x.status ?? -1, stderr: r1x.stderr };
    assert.notEqual(r1.code, 0, 'refused');
    t.diagnostic(oneLine(r1.stderr));
    assert.match(oneLine(r1.stderr), /rootfs-diff\.json.*esc/);
    assert.deepEqual(snapshot(outside), before, 'nothing created or deleted outside');
    assert.ok(!existsSync(join(rootfs, 'esc')), 'nothing applied');
    assert.ok(absent(), 'no container left');

    // Only the symlink (harmless in itself), and the log's file record moved behind it with O_TRUNC.
    const bad2 = join(dir, 'file-escape.tar');
    await editImage(image, bad2, {
      'container/rootfs-diff.json': json((v) => {
        v.kind = 'overlay';
        v.changes = [{ path: 'esc', type: 'symlink', target: outside, ...meta }];
      }),
      'files.json': moveLog('the container', { root: 'task', path: '/esc/canary', link: '/esc/canary', flags: O_RDWR | O_TRUNC | O_LARGEFILE }),
    });
    const r2 = ferry(['restore', id, '--root', state, '--image', bad2, '--detach']);
    assert.notEqual(r2.code, 0, 'refused');
    t.diagnostic(oneLine(r2.stderr));
    assert.match(oneLine(r2.stderr), /esc\/canary/);
    assert.deepEqual(snapshot(outside), before, 'the canary keeps its content');
    assert.equal(readlinkSync(join(rootfs, 'esc')), outside, 'the symlink was made as a symlink, inside the rootfs');
    assert.ok(absent(), 'no container left');
  });
});

describe('an untrusted image of a process running as nobody from a mode 711 binary, holding and mapping a file it opened through a symlink', { skip, timeout: 300_000 }, () => {
  /**
   * build/workloads/symlinked as nobody: copied to a mode 711 file (execve maps it with no read
   * permission), given DIR/link/data where DIR/link -> DIR/real; the files nobody may open.
   */
  async function start(): Promise<Awaited<ReturnType<typeof startWorkload>>> {
    const base = scratchDir('ferry-symlinked-');
    chmodSync(base, 0o755);
    mkdirSync(join(base, 'bin'), { mode: 0o755 });
    const exe = join(base, 'bin', 'symlinked');
    copyFileSync(join(WORKLOADS, 'symlinked'), exe);
    chmodSync(exe, 0o711);
    mkdirSync(join(base, 'real'), { mode: 0o755 });
    writeFileSync(join(base, 'real', 'data'), 'symlinked data, read through a link\n', { mode: 0o644 });
    symlinkSync(join(base, 'real'), join(base, 'link'));
    return startWorkload('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', exe, join(base, 'link', 'data')]);
  }

  it('comes back: the paths recorded are the real ones, its executable may be executable only', async () => {
    const w = await start();
    const image = join(w.dir, 'symlinked.tar');
    await checkpointFreed(w, image);
    chmodSync(w.dir, 0o755);
    for (const name of readdirSync(w.dir).filter((n) => n.endsWith('.log'))) chmodSync(join(w.dir, name), 0o666);
    // Unsigned, so the untrusted rules hold, bounded to nobody.
    const unsigned = join(w.dir, 'unsigned.tar');
    await editImage(image, unsigned, { 'files.json': json(() => undefined) });
    const rs = ferry(['restore', '--image', unsigned, '--max-creds', 'nobody']);
    if (alive(w.pid)) own(w.pid);
    assert.equal(rs.code, 0, rs.stderr);
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('--leave-running leaves it as it was', async () => {
    const w = await start();
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS', w.text());
  });
});

describe('an untrusted image may not carry a privilege the kernel checks only when a file is made or opened (restore/file-privilege.ts)', { skip, timeout: 300_000 }, () => {
  // One real image of a counter running as nobody; each case re-types its log's record (its
  // descriptor kept) and restores the edit with --max-creds nobody, which must refuse it before
  // any process exists.
  let made: Promise<{ image: string; pid: number; dir: string }> | undefined;
  const retyped = (fields: Json) => json((v) => {
    const reg = (v.files as Json[]).find((f) => f.kind === 'reg');
    assert.ok(reg, 'the counter has its log open');
    for (const k of Object.keys(reg)) if (k !== 'id') delete reg[k];
    Object.assign(reg, fields);
  });
  async function refusedEdit(name: string, edit: (text: string) => string, expect: RegExp): Promise<string> {
    const { image, pid, dir } = await (made ??= nobodyCounterImage());
    const bad = join(dir, `${name}.tar`);
    await editImage(image, bad, { 'files.json': edit });
    const r = ferry(['restore', '--image', bad, '--max-creds', 'nobody']);
    if (alive(pid)) own(pid);
    assert.notEqual(r.code, 0, 'refused');
    const line = oneLine(r.stderr);
    assert.match(line, new RegExp(`image ${bad}: pid ${pid} \\(counter\\) fd \\d+ would get ${expect.source}.*: nothing was restored; sign the image and restore with --trust if it is genuine$`));
    assert.ok(!alive(pid), 'nothing left running');
    return line;
  }

  it('a fanotify group reporting descriptors, with a mount mark on /, is refused to a process without CAP_SYS_ADMIN', async (t) => {
    t.diagnostic(await refusedEdit('fanotify', retyped({
      kind: 'fanotify', flags: O_RDONLY, initFlags: 0, eventFlags: O_RDWR | O_LARGEFILE, marks: [{ type: 'mount', path: '/', mflags: 0, mask: 0x20, ignoredMask: 0 }],
    }), /a fanotify group \(init flags 0x0, 1 marks\) that only CAP_SYS_ADMIN may make/));
  });

  it('an inotify watch on a directory its process could not reach is refused (its names would leak)', async (t) => {
    const { vault } = vaultWithLink();
    t.diagnostic(await refusedEdit('inotify', retyped({ kind: 'inotify', flags: O_RDONLY, watches: [{ wd: 1, mask: 0x100, path: '/root' }, { wd: 2, mask: 0x100, path: vault }] }),
      /an inotify watch on "\/root", which needs read permission on it/));
  });

  it('a timerfd on CLOCK_BOOTTIME_ALARM is refused without CAP_WAKE_ALARM', async (t) => {
    t.diagnostic(await refusedEdit('alarm', retyped({
      kind: 'timerfd', clock: 9, flags: O_RDONLY, settime: 0, value: [0, 0], interval: [0, 0], absolute: null, ticks: '0x0',
    }), /a timerfd on CLOCK_BOOTTIME_ALARM, which needs CAP_WAKE_ALARM/));
  });

  it('a file of /proc opened by path (root\'s view of kernel addresses) is refused, though its mode lets anyone read it', async (t) => {
    t.diagnostic(await refusedEdit('kallsyms', moveLog('the counter', { path: '/proc/kallsyms', link: '/proc/kallsyms', flags: O_RDONLY | O_LARGEFILE }),
      /"\/proc\/kallsyms", a file of the kernel's proc file system/));
  });

  it('a directory of a held file\'s path replaced by /proc after the check: the file opened is judged, refused in one line, nothing left', async (t) => {
    const { image, pid } = await (made ??= nobodyCounterImage());
    const base = scratchDir('ferry-procswap-');
    chmodSync(base, 0o755);
    mkdirSync(join(base, 'open'), { mode: 0o755 });
    // A plain file of the same name and mode as /proc/kallsyms, which the checks by path pass.
    writeFileSync(join(base, 'open', 'kallsyms'), '', { mode: 0o444 });
    const path = join(base, 'open', 'kallsyms');
    const bad = join(base, 'procswap.tar');
    await editImage(image, bad, { 'files.json': moveLog('the counter', { path, link: path, flags: O_RDONLY | O_LARGEFILE }) });
    let mounted = false;
    try {
      // A mount, not a symlink: the open that follows no symlink still crosses it.
      const r = await restoreSwapped(['--image', bad, '--max-creds', 'nobody'], () => {
        const m = spawnSync('mount', ['--bind', '/proc', join(base, 'open')], { encoding: 'utf8', timeout: 30_000 });
        assert.equal(m.status, 0, m.stderr);
        mounted = true;
      });
      if (alive(pid)) own(pid);
      assert.notEqual(r.code, 0, 'refused');
      const line = oneLine(r.stderr);
      t.diagnostic(line);
      assert.match(line, new RegExp(`pid ${pid} \\(counter\\) fd \\d+ would get "${path}", a file of the kernel's proc file system, .*: nothing was restored`));
      assert.ok(!alive(pid), 'nothing left running');
    } finally {
      if (mounted) spawnSync('umount', ['-l', join(base, 'open')], { timeout: 30_000 });
    }
  });

  it('a character device outside the allow-list is refused before its driver is opened', async (t) => {
    t.diagnostic(await refusedEdit('kmsg', retyped({ kind: 'chr', path: '/dev/kmsg', flags: O_RDONLY, pos: '0', major: 1, minor: 11 }),
      /the character device "\/dev\/kmsg" \(1:11\), which an untrusted image may not have opened/));
  });
});
