/**
 * A process chroot'ed inside its container (src/dump/root-dir.ts, src/restore/root-dir.ts),
 * with real runc: build/workloads/ctrjail-static, the container's init, chroots into /jail of
 * its rootfs, a thread of it into /jail/inner with a root of its own, and a child inherits the
 * jail; on SIGUSR1 each checks its root (device and inode, a file only there, the container's
 * /bin not visible) and working directory. The root is recorded as the path inside the
 * container's root; the restored container's processes are back in the same directories, as
 * the host sees them too, twice in a row; --leave-running leaves them as they were. An edited
 * image whose root goes through a symlink of the rootfs pointing at a host directory is
 * resolved inside the container's root: refused in one line, no container left, the host
 * directory untouched; one whose root climbs with ".." stays at the container's root. An
 * edited image holding a /proc file of a thread is refused before any container is made; one
 * whose root is a directory of the rootfs its credentials cannot search (an untrusted image) is
 * refused before any of its processes is made, the container removed. A root removed inside
 * the container (`ctrjail removed`: /gone, the working directory the removed /a/b in it) comes
 * back removed, made inside the restored container's root and on its own mount, twice in a
 * row and with --leave-running; an edited image giving it two paths is refused in one line,
 * no container left.
 *
 * Descriptors of the container's / the init kept from before its chroot (ctrjail `rootfd`) come
 * back as the container's root, on its root mount (never the host's /), with --leave-running
 * and twice in a row; one of a file on a tmpfs unmounted lazily (`detached`), whose link reads
 * /etc/passwd, is refused at checkpoint, the container running on. An image no trusted key
 * signed names no file of the host for the container: the container's / edited into a host
 * path is refused before anything is made; unedited, with the host's log handed in
 * (--inherit-fd), it comes back confined.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chownSync, closeSync, fstatSync, mkdirSync, openSync, readFileSync, readlinkSync, readdirSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { FERRY, WORKLOADS } from '../helpers/env.js';
import { editImage, json } from '../helpers/images.js';
import { cleanup, ferry, procState, scratchDir, waitFor } from '../helpers/processes.js';
import { runcAt, runcScratch, runcState, runcWorkloadSkip, runReady } from '../helpers/runc-criu.js';

const JAILER = join(WORKLOADS, 'ctrjail-static');
const skip = runcWorkloadSkip(JAILER);

let dir = '';
let state = '';
let rootfs = '';
const ids = new Set<string>();

const runc = (...args: string[]): { code: number; out: string; err: string } => runcAt(state, ...args);

/**
 * `ferry restore` of container `id` from `image`, an image no trusted key signed (edited): the
 * container's stdout and stderr, `log`, a file of the host, handed in (--inherit-fd), as only a
 * signed image may name it.
 */
function restoreUnsigned(id: string, image: string, log: string): { code: number; stderr: string } {
  const fd = openSync(log, 'a');
  try {
    const r = spawnSync(FERRY, ['restore', id, '--root', state, '--image', image, '--detach', '--inherit-fd', `fd[3]:${log}`],
      { stdio: ['ignore', 'pipe', 'pipe', fd], timeout: 120_000, encoding: 'utf8' });
    return { code: r.status ?? -1, stderr: r.stderr };
  } finally {
    closeSync(fd);
  }
}

/** Container `id`'s status ('absent' when runc does not know it) and its init's host pid. */
const stateOf = (id: string): { status: string; pid: number } => runcState(state, id);

/**
 * Starts container `id` running the jailer with `mode`, its output on `log`: CAP_SYS_CHROOT
 * added to runc's defaults (and CAP_CHOWN, to give a directory it removes another owner), and
 * `caps`.
 */
async function start(id: string, log: string, mode: string[] = [], caps: string[] = []): Promise<void> {
  ids.add(id);
  await runReady({ state, bundle: join(dir, `bundle-${id}`), rootfs, id, args: ['/bin/ctrjail', ...mode], log, edit: (config) => {
    for (const set of Object.values(config.process.capabilities as Record<string, string[]>)) set.push('CAP_SYS_CHROOT', 'CAP_CHOWN', ...caps);
  } });
}

/** Asks the container's processes to check themselves; resolves once the init and the child answered. */
async function verdict(id: string, log: string): Promise<void> {
  const count = (re: RegExp): number => [...readFileSync(log, 'utf8').matchAll(re)].length;
  const passes = count(/^PASS$/gm), fails = count(/^FAIL/gm), children = count(/^child (passed|failed)$/gm);
  process.kill(stateOf(id).pid, 'SIGUSR1');
  await waitFor(`${id} to check itself`, () => (count(/^PASS$/gm) > passes || count(/^FAIL/gm) > fails) && count(/^child (passed|failed)$/gm) > children,
    10000, () => readFileSync(log, 'utf8'));
  const text = readFileSync(log, 'utf8');
  assert.deepEqual(text.split('\n').filter((l) => l.startsWith('FAIL') || l === 'child failed'), [], text);
  assert.equal(count(/^PASS$/gm), passes + 1, text);
}

/** The host's view: the init's root is the jail, one of its threads' /jail/inner. */
function jailedOnHost(id: string): void {
  const pid = stateOf(id).pid;
  const jail = statSync(join(rootfs, 'jail')), inner = statSync(join(rootfs, 'jail', 'inner'));
  const root = statSync(`/proc/${pid}/root`);
  assert.deepEqual([root.dev, root.ino], [jail.dev, jail.ino], 'the init\'s root is the jail');
  assert.equal(readlinkSync(`/proc/${pid}/root`), '/jail');
  const threads = readdirSync(`/proc/${pid}/task`).filter((t) => Number(t) !== pid);
  assert.equal(threads.length, 1);
  const th = statSync(`/proc/${pid}/task/${threads[0]!}/root`);
  assert.deepEqual([th.dev, th.ino], [inner.dev, inner.ino], 'the thread\'s root is /jail/inner');
}

/**
 * The host's view of a container whose init chroot'ed into /gone and removed it (`ctrjail
 * removed`): the init's and its child's root one removed directory, mode 0751 and 65534's,
 * their working directory the removed /a/b in it (0710), whose ".." is the removed /a (0750)
 * and whose "../.." is the root; the root's mount the container's own mount of its rootfs (its "/" as a
 * process run in it sees it); nothing at /gone in the rootfs or beside it.
 */
function goneOnHost(id: string, label: string): void {
  const pid = stateOf(id).pid;
  const kids = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').split(/\s+/).filter(Boolean).map(Number);
  assert.equal(kids.length, 1, `${label}: the init's child`);
  const seen = new Map<string, Set<string>>();
  for (const p of [pid, ...kids]) {
    assert.equal(readlinkSync(`/proc/${p}/root`), '/gone (deleted)', `${label}: pid ${p} root`);
    assert.equal(readlinkSync(`/proc/${p}/cwd`), '/gone/a/b (deleted)', `${label}: pid ${p} cwd`);
    for (const [at, mode, uid] of [['root', 0o751, 65534], ['cwd', 0o710, 0], ['cwd/..', 0o750, 0], ['cwd/../..', 0o751, 65534]] as const) {
      const st = statSync(`/proc/${p}/${at}`);
      assert.deepEqual([st.nlink, st.mode & 0o7777, st.uid], [0, mode, uid], `${label}: pid ${p} ${at}: removed, its mode and owner`);
      if (!seen.has(at)) seen.set(at, new Set());
      seen.get(at)!.add(`${st.dev}:${st.ino}`);
    }
  }
  for (const [at, ids] of seen) assert.equal(ids.size, 1, `${label}: one ${at} for the init and its child`);
  assert.deepEqual(seen.get('cwd/../..'), seen.get('root'), `${label}: the working directory's chain of ".." ends at the root`);
  // The mount its root is on, as a descriptor of it opened here shows (its own mountinfo lists
  // only the mounts below its root: none), and the container's own root mount, as a process
  // run in the container sees it ("/" in its mountinfo): one mount, not ferry's view of the rootfs.
  const fd = openSync(`/proc/${pid}/root`, 'r');
  let rootMount: string | undefined;
  try {
    rootMount = /^mnt_id:\s*(\d+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))?.[1];
  } finally {
    closeSync(fd);
  }
  const info = runc('exec', id, '/bin/cat', '/proc/self/mountinfo');
  assert.equal(info.code, 0, info.err);
  const top = info.out.split('\n').map((l) => l.split(' ')).find((f) => f[4] === '/')?.[0];
  assert.ok(rootMount !== undefined && rootMount === top, `${label}: the root is on mount ${rootMount}, the container's root on ${top}`);
  assert.deepEqual(readdirSync(rootfs).filter((n) => n.startsWith('gone')), [], `${label}: nothing at /gone in the rootfs or beside it`);
}

/** The mount id fdinfo shows for descriptor `fd` of `pid`. */
function mntId(pid: number | 'self', fd: number): number {
  const m = /^mnt_id:\s*(\d+)$/m.exec(readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8'));
  assert.ok(m, `fdinfo of fd ${fd} of ${pid} has a mnt_id`);
  return Number(m[1]);
}

/**
 * The host's view of ctrjail's `rootfd` mode: its descriptors 10 and 11 are the container's
 * root directory (the rootfs's device and inode, not the host's /), on the container's root
 * mount: the one its init's root leads to by ".." (its root is /jail on that mount).
 */
function rootFdsOnHost(id: string): void {
  const pid = stateOf(id).pid;
  const top = statSync(rootfs), host = statSync('/');
  const up = openSync(`/proc/${pid}/root/..`, 'r');
  try {
    const st = fstatSync(up);
    assert.deepEqual([st.dev, st.ino], [top.dev, top.ino], 'the init\'s root leads to the container\'s by ".."');
    for (const fd of [10, 11]) {
      const at = statSync(`/proc/${pid}/fd/${fd}`);
      assert.deepEqual([at.dev, at.ino], [top.dev, top.ino], `fd ${fd} is the container's root`);
      assert.notDeepEqual([at.dev, at.ino], [host.dev, host.ino], `fd ${fd} is not the host's /`);
      assert.equal(mntId(pid, fd), mntId('self', up), `fd ${fd} is on the container's root mount`);
    }
  } finally {
    closeSync(up);
  }
}

describe('a process chroot\'ed inside its container', { skip, timeout: 300_000 }, () => {
  before(() => {
    ({ dir, state, rootfs } = runcScratch('ferry-ctrjail-', JAILER, 'ctrjail'));
    mkdirSync(join(rootfs, 'jail'));
    writeFileSync(join(rootfs, 'jail', 'only-here'), 'jail\n');
  });
  after(() => {
    for (const id of ids) runc('delete', '--force', id);
    cleanup();
  });

  it('comes back in the same root, its thread in its own, twice in a row', async () => {
    const id = `ferry-jail-${process.pid}`;
    const log = join(dir, 'jail.log');
    await start(id, log);
    await verdict(id, log);
    const image = join(dir, 'jail.tar');
    for (let i = 0; i < 2; i++) {
      const cp = ferry(['checkpoint', id, '--root', state, '--image', image]);
      assert.equal(cp.code, 0, cp.stderr);
      assert.equal(stateOf(id).status, 'absent', 'checkpoint deletes the container');
      const task = JSON.parse(spawnSync('tar', ['-xOf', image, 'tasks/1/task.json'], { encoding: 'utf8' }).stdout) as { root?: string; threads: Array<{ fs?: { root?: string } }> };
      assert.equal(task.root, '/jail', 'the root as the path inside the container');
      assert.equal(task.threads[1]?.fs?.root, '/jail/inner', 'the thread\'s root as the path inside the container');
      const rs = ferry(['restore', id, '--root', state, '--image', image, '--detach']);
      assert.equal(rs.code, 0, rs.stderr);
      assert.equal(stateOf(id).status, 'running');
      jailedOnHost(id);
      await verdict(id, log);
    }
  });

  it('--leave-running leaves it in its root', async () => {
    const id = `ferry-jail-lr-${process.pid}`;
    const log = join(dir, 'jail-lr.log');
    await start(id, log);
    const cp = ferry(['checkpoint', id, '--root', state, '--image', join(dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(stateOf(id).status, 'running');
    jailedOnHost(id);
    await verdict(id, log);
  });

  it('a descriptor of the container\'s / held from before the chroot comes back as the container\'s root, not the host\'s', async () => {
    const id = `ferry-jail-fd-${process.pid}`;
    const log = join(dir, 'jail-fd.log');
    await start(id, log, ['rootfd']);
    await verdict(id, log);
    rootFdsOnHost(id);
    const image = join(dir, 'fd.tar');
    const lr = ferry(['checkpoint', id, '--root', state, '--image', image, '--leave-running']);
    assert.equal(lr.code, 0, lr.stderr);
    assert.equal(stateOf(id).status, 'running');
    rootFdsOnHost(id);
    await verdict(id, log);
    for (let i = 0; i < 2; i++) {
      const cp = ferry(['checkpoint', id, '--root', state, '--image', image]);
      assert.equal(cp.code, 0, cp.stderr);
      assert.equal(stateOf(id).status, 'absent', 'checkpoint deletes the container');
      const rs = ferry(['restore', id, '--root', state, '--image', image, '--detach']);
      assert.equal(rs.code, 0, rs.stderr);
      rootFdsOnHost(id);
      await verdict(id, log);
    }
  });

  it('a descriptor of a file on a mount of no namespace (unmounted lazily) is refused at checkpoint in one line; the container runs on', async () => {
    const id = `ferry-jail-dt-${process.pid}`;
    const log = join(dir, 'jail-dt.log');
    await start(id, log, ['detached'], ['CAP_SYS_ADMIN']);
    const pid = stateOf(id).pid;
    // Its link reads /etc/passwd: resolved on the host, it would be the host's.
    assert.equal(readlinkSync(`/proc/${pid}/fd/12`), '/etc/passwd');
    const cp = ferry(['checkpoint', id, '--root', state, '--image', join(dir, 'dt.tar')]);
    assert.equal(cp.code, 1, cp.stderr);
    assert.equal(cp.stderr.trim().split('\n').length, 1, cp.stderr);
    assert.match(cp.stderr, /unsupported file: pid \d+ fd 12 -> \/etc\/passwd is on a mount that the root of its mount namespace \(its container's\) does not lead to .*the tree was left running/);
    assert.equal(stateOf(id).status, 'running');
    assert.equal(stateOf(id).pid, pid);
    assert.equal(procState(pid).tracer, 0, 'the init untraced');
    assert.notEqual(procState(pid).state, 'T', 'the init not stopped');
    await verdict(id, log);
  });

  it('an edited root through a symlink to a host directory is resolved inside the container: refused, nothing left', async () => {
    const id = `ferry-jail-ed-${process.pid}`;
    const log = join(dir, 'jail-ed.log');
    await start(id, log);
    const image = join(dir, 'ed.tar');
    const cp = ferry(['checkpoint', id, '--root', state, '--image', image]);
    assert.equal(cp.code, 0, cp.stderr);
    // A host directory, and a symlink in the rootfs to it: followed from the host it would lead out.
    const outside = scratchDir('ferry-jail-outside-');
    mkdirSync(join(outside, 'inner'));
    symlinkSync(outside, join(rootfs, 'esc'));
    const edited = join(dir, 'ed-edited.tar');
    await editImage(image, edited, { 'tasks/1/task.json': json((v) => { v.root = '/esc'; }) });
    const rs = restoreUnsigned(id, edited, log);
    assert.equal(rs.code, 1, rs.stderr);
    assert.equal(rs.stderr.trim().split('\n').length, 1, rs.stderr);
    assert.match(rs.stderr, /cannot put pid 1 back into its root directory \/esc inside its container: openat2 failed with ENOENT/);
    assert.equal(stateOf(id).status, 'absent', 'no container left');
    assert.deepEqual(readdirSync(outside), ['inner'], 'the host directory untouched');
    // ".." stops at the container's root: the process comes back there, not in the host's.
    const up = join(dir, 'ed-up.tar');
    await editImage(image, up, { 'tasks/1/task.json': json((v) => { v.root = '/../../../..'; }) });
    const ru = restoreUnsigned(id, up, log);
    assert.equal(ru.code, 0, ru.stderr);
    const root = statSync(`/proc/${stateOf(id).pid}/root`), top = statSync(rootfs);
    assert.deepEqual([root.dev, root.ino], [top.dev, top.ino], 'the root is the container\'s');
    assert.equal(runc('delete', '--force', id).code, 0);
  });

  it('an edited image is judged before its processes are made: a thread\'s /proc file, a root its credentials cannot search', async () => {
    const id = `ferry-jail-tr-${process.pid}`;
    const log = join(dir, 'jail-tr.log');
    await start(id, log);
    const image = join(dir, 'tr.tar');
    const cp = ferry(['checkpoint', id, '--root', state, '--image', image]);
    assert.equal(cp.code, 0, cp.stderr);
    // A /proc file of the init's thread: installed through ferry's pid, which the container does not see.
    const proc = join(dir, 'tr-proc.tar');
    await editImage(image, proc, {
      'files.json': json<{ files: Array<Record<string, unknown>> }>((v) => {
        v.files.push({ id: Math.max(0, ...v.files.map((f) => f.id as number)) + 1, kind: 'procfile', target: 1, sub: '/stat', thread: 2, flags: 0, pos: '0' });
      }),
    });
    const rp = restoreUnsigned(id, proc, log);
    assert.equal(rp.code, 1, rp.stderr);
    assert.equal(rp.stderr.trim().split('\n').length, 1, rp.stderr);
    assert.match(rp.stderr, /file \d+ is a \/proc file of a thread in a container's image, which a checkpoint never records: refused \(an edited image\); nothing was restored/);
    assert.equal(stateOf(id).status, 'absent', 'no container made');
    // A root its uid cannot search (0700, another owner), the leader left only CAP_SYS_CHROOT:
    // chroot'ed there by restore, it would reach what is below by name.
    mkdirSync(join(rootfs, 'locked'), 0o700);
    chownSync(join(rootfs, 'locked'), 4242, 4242);
    mkdirSync(join(rootfs, 'locked', 'below'));
    const locked = join(dir, 'tr-locked.tar');
    await editImage(image, locked, {
      'tasks/1/task.json': json<{ root?: string; creds: { threads: Array<{ caps: { effective: string } }> } }>((v) => {
        v.root = '/locked';
        v.creds.threads[0]!.caps.effective = '0x40000'; // CAP_SYS_CHROOT
      }),
    });
    const rl = restoreUnsigned(id, locked, log);
    assert.equal(rl.code, 1, rl.stderr);
    assert.equal(rl.stderr.trim().split('\n').length, 1, rl.stderr);
    assert.match(rl.stderr, /pid 1 \(ctrjail\) has "\/locked" as its root directory, which its credentials \(uid 0, gid 0, no CAP_DAC_OVERRIDE or CAP_DAC_READ_SEARCH\) could not reach: "\/locked" is not searchable by them/);
    assert.equal(stateOf(id).status, 'absent', 'the container made for it removed');
    assert.deepEqual(readdirSync(join(rootfs, 'locked')), ['below'], 'the directory untouched');
  });
  it('a removed root, with a removed working directory two below it, comes back removed inside the container, on the container\'s own mount, twice in a row', async () => {
    const id = `ferry-gone-${process.pid}`;
    const log = join(dir, 'gone.log');
    await start(id, log, ['removed']);
    goneOnHost(id, 'before');
    await verdict(id, log);
    const image = join(dir, 'gone.tar');
    for (let i = 0; i < 2; i++) {
      const cp = ferry(['checkpoint', id, '--root', state, '--image', image]);
      assert.equal(cp.code, 0, cp.stderr);
      assert.equal(stateOf(id).status, 'absent', 'checkpoint deletes the container');
      const task = JSON.parse(spawnSync('tar', ['-xOf', image, 'tasks/1/task.json'], { encoding: 'utf8' }).stdout) as { root?: string; rootDeleted?: { mode: number; uid: number }; cwd: string; cwdBetween?: Array<{ mode: number }> };
      assert.equal(task.root, '/gone', 'the root as the path inside the container');
      assert.deepEqual([task.rootDeleted?.mode, task.rootDeleted?.uid], [0o751, 65534], 'recorded as removed');
      assert.deepEqual([task.cwd, task.cwdBetween?.map((d) => d.mode)], ['/gone/a/b', [0o750]], 'the working directory below it, with /a between');
      const rs = ferry(['restore', id, '--root', state, '--image', image, '--detach']);
      assert.equal(rs.code, 0, rs.stderr);
      assert.equal(stateOf(id).status, 'running');
      goneOnHost(id, `cycle ${i + 1}`);
      await verdict(id, log);
    }
  });

  it('--leave-running leaves a removed root as it was; an edited image giving it two paths is refused in one line, nothing made', async () => {
    const id = `ferry-gone-lr-${process.pid}`;
    const log = join(dir, 'gone-lr.log');
    await start(id, log, ['removed']);
    const pid = stateOf(id).pid;
    const before = statSync(`/proc/${pid}/root`).ino;
    const image = join(dir, 'gone-lr.tar');
    const cp = ferry(['checkpoint', id, '--root', state, '--image', image, '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(stateOf(id).status, 'running');
    goneOnHost(id, 'after');
    assert.equal(statSync(`/proc/${pid}/root`).ino, before, 'the very directory it had');
    await verdict(id, log);
    assert.equal(runc('delete', '--force', id).code, 0);
    // The child's record gives the one removed root another path.
    const child = JSON.parse(spawnSync('tar', ['-xOf', image, 'tree.json'], { encoding: 'utf8' }).stdout) as { processes: Array<{ pid: number }> };
    const other = child.processes.find((p) => p.pid !== 1)!.pid;
    const edited = join(dir, 'gone-edited.tar');
    await editImage(image, edited, { [`tasks/${other}/task.json`]: json((v) => { v.root = '/gone2'; v.cwd = '/gone2/a/b'; }) });
    const rs = ferry(['restore', id, '--root', state, '--image', edited, '--detach']);
    assert.equal(rs.code, 1, rs.stderr);
    assert.equal(rs.stderr.trim().split('\n').length, 1, rs.stderr);
    assert.match(rs.stderr, /pids 1 and \d+ have the same removed root directory \(device \d+, inode \d+\) with another path, mode or owner .*: refused \(an edited image\); nothing was restored/);
    assert.equal(stateOf(id).status, 'absent', 'no container left');
    assert.deepEqual(readdirSync(rootfs).filter((n) => n.startsWith('gone')), [], 'nothing made in the rootfs');
    // As checkpointed, it comes back.
    const ok = ferry(['restore', id, '--root', state, '--image', image, '--detach']);
    assert.equal(ok.code, 0, ok.stderr);
    goneOnHost(id, 'restored');
  });

  it('an image no trusted key signed names no file of the host for the container: refused; unedited, it comes back confined', async () => {
    const id = `ferry-jail-hf-${process.pid}`;
    const log = join(dir, 'jail-hf.log');
    await start(id, log, ['rootfd']);
    const image = join(dir, 'hf.tar');
    const cp = ferry(['checkpoint', id, '--root', state, '--image', image]);
    assert.equal(cp.code, 0, cp.stderr);
    type Files = { files: Array<Record<string, unknown>> };
    const files = JSON.parse(spawnSync('tar', ['-xOf', image, 'files.json'], { encoding: 'utf8' }).stdout) as Files;
    const top = files.files.filter((f) => f.kind === 'reg' && f.path === '/');
    assert.equal(top.length, 2, 'fds 10 and 11: two open files of the container\'s /');
    assert.ok(top.every((f) => f.root === 'task'), 'the container\'s / is recorded as the container\'s');
    // The container's / made a path of the host's (its record's `root` dropped): it would be the host's /.
    const host = join(dir, 'hf-host.tar');
    await editImage(image, host, { 'files.json': json<Files>((v) => { for (const f of v.files) if (f.path === '/') delete f.root; }) });
    // Without the log handed in, the log is refused first (a file of the host too); with it, the /.
    const runs = [{ r: ferry(['restore', id, '--root', state, '--image', host, '--detach']), path: '\\S+' }, { r: restoreUnsigned(id, host, log), path: '\\/' }];
    for (const { r, path } of runs) {
      assert.equal(r.code, 1, r.stderr);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.match(r.stderr, new RegExp(`file \\d+ \\(reg ${path}\\) of the container's processes is a file of the host, outside the container, which only an image `
        + 'signed by a trusted key may name: refused, nothing was restored; hand it in with --inherit-fd'));
      assert.equal(stateOf(id).status, 'absent', 'no container made');
    }
    // Nor any other word for where it resolves.
    const other = join(dir, 'hf-other.tar');
    await editImage(image, other, { 'files.json': json<Files>((v) => { for (const f of v.files) if (f.path === '/') f.root = 'host'; }) });
    const ro = restoreUnsigned(id, other, log);
    assert.equal(ro.code, 1, ro.stderr);
    assert.equal(ro.stderr.trim().split('\n').length, 1, ro.stderr);
    assert.match(ro.stderr, /root must be "task", is "host"/);
    assert.equal(stateOf(id).status, 'absent', 'no container made');
    // Unedited but unsigned: the host's log handed in, the rest resolved in the container.
    const plain = join(dir, 'hf-unsigned.tar');
    await editImage(image, plain, { 'files.json': json<Files>(() => { /* unchanged, the signature dropped */ }) });
    const rs = restoreUnsigned(id, plain, log);
    assert.equal(rs.code, 0, rs.stderr);
    rootFdsOnHost(id);
    await verdict(id, log);
  });
});
