/**
 * A container's files that name something of the container, with real runc:
 * build/workloads/ctrwatch-static is the container's init (test/fixtures/workloads/ctrwatch.c).
 *
 * An inotify watch of a file inside the container is recorded from the container's root
 * (`root: 'task'`) and comes back on that file of the restored container: touched from the
 * host through the rootfs, the restored process reads the event (and the original, with
 * --leave-running). An edited image whose watch
 * names a host file (its absolute path, or one climbing with "..", the record's `root` taken
 * out), signed by a trusted key or not, has it resolved inside the container's root, never on
 * the host: refused in one line while the container holds no such file (no container left),
 * and once it does, the watch is on the container's copy: touching the host file gives no
 * event, touching the container's gives one.
 *
 * A /proc file of a child the container's init has reaped (a container's /proc is its own,
 * stored by path) is refused at checkpoint in one line, the container left running, and the
 * init finds the file still naming a dead task. So is one of another thread of the init
 * (/proc/self/task/<tid>/stat), which still reads that thread's stat after.
 *
 * /proc files a process of the container other than its init holds of live processes of it
 * (two children's status and maps, its own /proc/self/stat read past its start, the init's
 * status) come back naming the restored processes, on the restored container's own /proc,
 * with the offset kept (the holder checks itself), also after a --leave-running checkpoint.
 * Edited images (unsigned) whose record names the host's /proc, a file behind a magic link of
 * the process, or a process not restored are refused in one line, no container left.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createPrivateKey, type KeyObject } from 'node:crypto';
import { closeSync, mkdirSync, openSync, readFileSync, readlinkSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { FERRY, WORKLOADS } from '../helpers/env.js';
import { editImage, json } from '../helpers/images.js';
import { cleanup, ferry, procState, waitFor } from '../helpers/processes.js';
import { childrenOf, runcAt, runcScratch, runcState, runcWorkloadSkip, runReady } from '../helpers/runc-criu.js';

const WORKLOAD = join(WORKLOADS, 'ctrwatch-static');
const skip = runcWorkloadSkip(WORKLOAD);

let dir = '';
let state = '';
let rootfs = '';
const ids = new Set<string>();

const runc = (...args: string[]): { code: number; out: string; err: string } => runcAt(state, ...args);

/** Container `id`'s status ('absent' when runc does not know it) and its init's host pid. */
const stateOf = (id: string): { status: string; pid: number } => runcState(state, id);

/** Starts container `id` (removed by `after` whatever happens) running ctrwatch `args`, its output on `log`. */
async function start(id: string, log: string, args: string[]): Promise<void> {
  ids.add(id);
  await runReady({ state, bundle: join(dir, `bundle-${id}`), rootfs, id, args: ['/bin/ctrwatch', ...args], log });
}

/** The inode the inotify watch `wd` of fd 3 of `pid` is on, as fdinfo shows it. */
function watchedIno(pid: number, wd = 1): bigint {
  const m = new RegExp(`^inotify wd:${wd.toString(16)} ino:([0-9a-f]+) `, 'm').exec(readFileSync(`/proc/${pid}/fdinfo/3`, 'utf8'));
  assert.ok(m, `pid ${pid} fd 3 has watch ${wd}`);
  return BigInt(`0x${m[1]!}`);
}

/** How many events the log shows. */
const events = (log: string): number => [...readFileSync(log, 'utf8').matchAll(/^event wd=1 mask=0x4$/gm)].length;

/** Touches `path` (IN_ATTRIB) and says whether the container's watch saw it within a second. */
async function seen(path: string, log: string): Promise<boolean> {
  const before = events(log);
  const now = new Date();
  utimesSync(path, now, now);
  try {
    await waitFor(`an event for ${path}`, () => events(log) > before, 1000);
    return true;
  } catch {
    return false;
  }
}

/**
 * `ferry restore` of container `id` from `image` (detached): signed images with `trust`,
 * else unsigned, the container's stdout and stderr (`log`, a file of the host) handed in.
 */
function restore(id: string, image: string, log: string, trust?: string): { code: number; stderr: string } {
  const args = ['restore', id, '--root', state, '--image', image, '--detach'];
  if (trust !== undefined) {
    const r = ferry([...args, '--trust', trust]);
    return { code: r.code, stderr: r.stderr.toString() };
  }
  const fd = openSync(log, 'a');
  try {
    const r = spawnSync(FERRY, [...args, '--inherit-fd', `fd[3]:${log}`], { stdio: ['ignore', 'pipe', 'pipe', fd], timeout: 120_000, encoding: 'utf8' });
    return { code: r.status ?? -1, stderr: r.stderr };
  } finally {
    closeSync(fd);
  }
}

/** The inotify record of files.json, as a JSON edit of it. */
type InotifyFile = { kind: string; root?: string; watches: Array<{ path: string }> };
const inotifyOf = (v: { files: InotifyFile[] }): InotifyFile => v.files.find((f) => f.kind === 'inotify')!;

describe('a container\'s watched files and /proc files', { skip, timeout: 300_000 }, () => {
  let key: KeyObject | undefined;
  let pub = '';
  before(() => {
    ({ dir, state, rootfs } = runcScratch('ferry-ctrwatch-', WORKLOAD, 'ctrwatch'));
    const k = ferry(['keygen', '--out', join(dir, 'site'), '--json']);
    assert.equal(k.code, 0, k.stderr.toString());
    const made = JSON.parse(k.stdout.toString()) as { privateKey: string; publicKey: string };
    key = createPrivateKey(readFileSync(made.privateKey));
    pub = made.publicKey;
  });
  after(() => {
    for (const id of ids) runc('delete', '--force', id);
    cleanup();
  });

  it('a watch of a file inside the container comes back on it; an edited one naming a host file stays inside the container', async () => {
    const id = `ferry-ctrwatch-${process.pid}`;
    const log = join(dir, 'watch.log');
    const watched = join(rootfs, 'tmp', 'watched');
    await start(id, log, ['watch', '/tmp/watched']);
    assert.equal(watchedIno(stateOf(id).pid), statSync(watched, { bigint: true }).ino);
    const image = join(dir, 'watch.tar');
    const left = ferry(['checkpoint', id, '--root', state, '--image', image, '--leave-running']);
    assert.equal(left.code, 0, left.stderr.toString());
    assert.equal(stateOf(id).status, 'running', '--leave-running');
    assert.ok(await seen(watched, log), `the original left running reads the event: ${readFileSync(log, 'utf8')}`);
    const cp = ferry(['checkpoint', id, '--root', state, '--image', image]);
    assert.equal(cp.code, 0, cp.stderr.toString());
    const rec = inotifyOf(JSON.parse(ferry(['inspect', '--image', image, '--json']).stdout.toString()) as { files: InotifyFile[] });
    assert.deepEqual([rec.root, rec.watches.map((w) => w.path)], ['task', ['/tmp/watched']], 'recorded from the container\'s root');
    const plain = ferry(['restore', id, '--root', state, '--image', image, '--detach']);
    let r = { code: plain.code, stderr: plain.stderr.toString() };
    assert.equal(r.code, 0, r.stderr);
    assert.equal(watchedIno(stateOf(id).pid), statSync(watched, { bigint: true }).ino, 'the restored watch is on the container\'s file');
    assert.ok(await seen(watched, log), `the restored process reads the event: ${readFileSync(log, 'utf8')}`);
    assert.equal(runc('delete', '--force', id).code, 0);

    // Edited: the watch names a host file, the record's root taken out; signed by a trusted key.
    const host = join(dir, 'host-secret');
    writeFileSync(host, 'the host\'s\n');
    const hostBefore = statSync(host).mtimeMs;
    const edited = async (name: string, path: string, signed: boolean): Promise<string> => {
      const out = join(dir, name);
      await editImage(image, out, { 'files.json': json<{ files: InotifyFile[] }>((v) => {
        const rec = inotifyOf(v);
        delete rec.root;
        rec.watches[0]!.path = path;
      }) }, signed ? { signKey: key! } : {});
      return out;
    };
    const signedHost = await edited('host.tar', host, true);
    r = restore(id, signedHost, log, pub);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`^ferry restore: inotify watch 1 \\(file \\d+ of the image\\) watched ${host}, which no longer exists\\n$`));
    assert.equal(stateOf(id).status, 'absent', 'no container left');
    assert.equal(statSync(host).mtimeMs, hostBefore, 'the host file untouched');

    // Once the container holds a file at that path, the watch is on it, never on the host's.
    const inside = join(rootfs, host);
    mkdirSync(dirname(inside), { recursive: true });
    writeFileSync(inside, 'the container\'s\n');
    for (const [name, path, signed] of [['climb.tar', `/../../..${host}`, true], ['unsigned.tar', host, false]] as const) {
      r = restore(id, await edited(name, path, signed), log, signed ? pub : undefined);
      assert.equal(r.code, 0, `${name}: ${r.stderr}`);
      const pid = stateOf(id).pid;
      assert.equal(watchedIno(pid), statSync(inside, { bigint: true }).ino, `${name}: the watch is on the container's copy`);
      assert.ok(!(await seen(host, log)), `${name}: touching the host file gives no event`);
      assert.ok(await seen(inside, log), `${name}: touching the container's file gives one`);
      assert.equal(runc('delete', '--force', id).code, 0);
    }
  });

  it('a /proc file of a reaped child is refused at checkpoint, the container left running', async () => {
    const id = `ferry-ctrreap-${process.pid}`;
    const log = join(dir, 'reaped.log');
    await start(id, log, ['reaped']);
    const child = /^ready pid=1 child=(\d+)$/m.exec(readFileSync(log, 'utf8'))?.[1];
    assert.ok(child, readFileSync(log, 'utf8'));
    const pid = stateOf(id).pid;
    const cp = ferry(['checkpoint', id, '--root', state, '--image', join(dir, 'reaped.tar')]);
    assert.equal(cp.code, 1, cp.stderr.toString());
    assert.match(cp.stderr.toString(), new RegExp(`^ferry checkpoint: unsupported file: pid ${pid} fd 5 -> /proc/${child}/status is a /proc file of process ${child} of its container, which had exited and been reaped: .*the tree was left running\\n$`));
    assert.equal(stateOf(id).status, 'running');
    const st = procState(pid);
    assert.equal(st.tracer, 0, 'not traced');
    process.kill(pid, 'SIGUSR1');
    await waitFor('the init to check itself', () => /^(PASS|FAIL)/m.test(readFileSync(log, 'utf8')), 10000, () => readFileSync(log, 'utf8'));
    assert.match(readFileSync(log, 'utf8'), /^PASS$/m);
  });

  it('a /proc file of another thread is refused at checkpoint, the container left running', async () => {
    const id = `ferry-ctrthread-${process.pid}`;
    const log = join(dir, 'thread.log');
    await start(id, log, ['thread']);
    const tid = /^ready pid=1 tid=(\d+)$/m.exec(readFileSync(log, 'utf8'))?.[1];
    assert.ok(tid, readFileSync(log, 'utf8'));
    const pid = stateOf(id).pid;
    const cp = ferry(['checkpoint', id, '--root', state, '--image', join(dir, 'thread.tar')]);
    assert.equal(cp.code, 1, cp.stderr.toString());
    assert.match(cp.stderr.toString(), new RegExp(`^ferry checkpoint: unsupported file: pid ${pid} fd 5 -> /proc/1/task/${tid}/stat \\(a /proc file of thread ${tid} of pid 1 of its container, [^\\n]*\\n$`));
    assert.equal(stateOf(id).status, 'running');
    assert.equal(procState(pid).tracer, 0, 'not traced');
    process.kill(pid, 'SIGUSR1');
    await waitFor('the init to check itself', () => /^(PASS|FAIL)/m.test(readFileSync(log, 'utf8')), 10000, () => readFileSync(log, 'utf8'));
    assert.match(readFileSync(log, 'utf8'), /^PASS$/m);
  });

  it('/proc files a process of the container holds of live processes of it come back naming the restored ones', async () => {
    const id = `ferry-ctrprocs-${process.pid}`;
    const log = join(dir, 'procs.log');
    await start(id, log, ['procs']);
    const m = /^ready pid=1 holder=(\d+) b=(\d+) c=(\d+)$/m.exec(readFileSync(log, 'utf8'));
    assert.ok(m, readFileSync(log, 'utf8'));
    const [holder, b, c] = [m[1]!, m[2]!, m[3]!];
    const want = [`/proc/${b}/status`, `/proc/${holder}/stat`, `/proc/${c}/maps`, '/proc/1/status'];
    const hostHolder = (): number => {
      const [h] = childrenOf(stateOf(id).pid, 'ctrwatch');
      assert.ok(h, 'the holder runs');
      return h;
    };
    const links = (): string[] => [5, 6, 7, 8].map((fd) => readlinkSync(`/proc/${hostHolder()}/fd/${fd}`));
    assert.deepEqual(links(), want);
    const image = join(dir, 'procs.tar');
    const left = ferry(['checkpoint', id, '--root', state, '--image', image, '--leave-running']);
    assert.equal(left.code, 0, left.stderr.toString());
    assert.deepEqual(links(), want, 'left running as it was');
    const cp = ferry(['checkpoint', id, '--root', state, '--image', image]);
    assert.equal(cp.code, 0, cp.stderr.toString());
    // Edited (unsigned): b's status record made to name the host's /proc, a file reached
    // through a magic link of the process, a process not restored: each refused in one line,
    // no container left.
    type Procfile = { kind: string; target: number | null; sub: string; root?: string };
    const edits: Array<[string, (r: Procfile) => void, RegExp]> = [
      ['hostproc', (r) => { delete r.root; }, /file \d+ \(kind procfile\) names a file of the host's \/proc in a container's image/],
      ['magic', (r) => { r.sub = '/root/etc/passwd'; }, /goes through a \/proc magic link/],
      ['absent', (r) => { r.target = 99; }, /pid 99 is not a process restored here/],
    ];
    for (const [name, edit, why] of edits) {
      const out = join(dir, `procs-${name}.tar`);
      await editImage(image, out, { 'files.json': json<{ files: Procfile[] }>((v) => {
        const rec = v.files.find((f) => f.kind === 'procfile' && f.target === Number(b) && f.sub === '/status');
        assert.equal(rec?.root, 'task', 'the container\'s /proc, by its pids');
        edit(rec!);
      }) });
      const r = restore(id, out, log);
      assert.equal(r.code, 1, `${name}: ${r.stderr}`);
      assert.match(r.stderr, /^ferry restore: [^\n]*\n$/, name);
      assert.match(r.stderr, why, name);
      assert.equal(stateOf(id).status, 'absent', `${name}: no container left`);
    }
    const rs = ferry(['restore', id, '--root', state, '--image', image, '--detach']);
    assert.equal(rs.code, 0, rs.stderr.toString());
    assert.deepEqual(links(), want, 'the same paths in the restored container');
    process.kill(stateOf(id).pid, 'SIGUSR1');
    await waitFor('the holder to check itself', () => /^(PASS|FAIL)/m.test(readFileSync(log, 'utf8')), 10000, () => readFileSync(log, 'utf8'));
    const text = readFileSync(log, 'utf8');
    assert.deepEqual(text.split('\n').filter((l) => l.startsWith('FAIL')), [], text);
    assert.match(text, /^PASS$/m);
  });
});
