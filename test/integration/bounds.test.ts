/**
 * No privilege from the image (src/restore/bounds.ts, docs/security.md). An image is edited
 * the way an attacker would — creds in task.json made root with every capability, the
 * manifest's sha256 recomputed so the image verifies — and restore under a bound refuses it
 * with one line before any process exists; the image as it was restores under the same
 * bound. For a plain process the bound is `parseMaxCreds('nobody')`, given through the
 * library (`RestoreOptions.bound`); for a runc container it is always the bundle's
 * config.json, here through the CLI.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import pino from 'pino';
import { loadConfig } from '../../src/config/config.js';
import { restore } from '../../src/index.js';
import { parseMaxCreds } from '../../src/restore/bounds.js';
import type { TaskRecord } from '../../src/image/records.js';
import { needs, WORKLOADS } from '../helpers/env.js';
import { editImage, json } from '../helpers/images.js';
import { alive, checkpointFreed, cleanup, ferry, own, scratchDir, sleep, startWorkload, stubs, verify, waitFor } from '../helpers/processes.js';

const skip = needs('root', 'build');
after(cleanup);

const config = loadConfig({});
const logger = pino({ level: 'silent' });
/** Every capability ferry may give (its own bounding set: a sandbox may hold back some). */
const ALL_CAPS = `0x${BigInt(`0x${/^CapBnd:\s*(\w+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))![1]!}`).toString(16)}`;

/** Every tasks/PID/task.json of an image: what an edit of creds changes (all of them, at least one). */
const TASKS = /^tasks\/\d+\/task\.json$/;

/** A /proc/PID/status line's value. */
const statusOf = (pid: number, key: string): string => new RegExp(`^${key}:\\s*(.*)$`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? '';

describe('no privilege from the image: a process', { skip, timeout: 120_000 }, () => {
  it('a nobody process edited into root with every capability: refused under --max-creds nobody and by the untrusted default, nothing made; the image as it was restores', async () => {
    const w = await startWorkload('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', join(WORKLOADS, 'counter')]);
    assert.match(statusOf(w.pid, 'Uid'), /^65534\s+65534\s+65534\s+65534$/);
    const image = join(w.dir, 'nobody.tar');
    await checkpointFreed(w, image);

    const edited = join(w.dir, 'edited.tar');
    await editImage(image, edited, [[TASKS, json<TaskRecord>((t) => {
      for (const c of t.creds.threads) {
        c.uids = [0, 0, 0, 0];
        c.gids = [0, 0, 0, 0];
        c.groups = [0];
        c.caps = { effective: ALL_CAPS, permitted: ALL_CAPS, inheritable: ALL_CAPS, bounding: ALL_CAPS, ambient: ALL_CAPS };
      }
    })]]);
    const bound = parseMaxCreds('nobody');
    const before = stubs({ zombies: true });
    await assert.rejects(restore({ image: edited, config, logger, bound }), (err: Error & { code?: string; pid?: number; path?: string }) => {
      assert.equal(err.code, 'EPRIVILEGE');
      assert.equal(err.pid, w.pid);
      assert.equal(err.path, edited);
      assert.equal(err.message.split('\n').length, 1);
      assert.equal(err.message, `image ${edited}: pid ${w.pid} (counter) would get uid 0 as its real, effective, saved and filesystem uid, `
        + 'beyond what --max-creds nobody allows (uid 65534) (and 6 more): nothing was restored');
      return true;
    });
    assert.ok(!alive(w.pid), 'no process made');
    assert.deepEqual(stubs({ zombies: true }), before, 'no stub left');

    // Without --max-creds the edited image (unsigned: the edit dropped its signature) gets the
    // untrusted default, which refuses root to any program.
    const dflt = ferry(['restore', '--image', edited]);
    assert.equal(dflt.code, 1);
    assert.equal(dflt.stderr, `ferry restore: image ${edited}: pid ${w.pid} (counter) would get uid 0 as its real, effective, saved and filesystem uid, `
      + "beyond what an image no trusted key signed allows (no root: an unsigned image's code is its own, whatever executable it names; "
      + 'sign it and restore with --trust, or allow it with --max-creds) (and 6 more): nothing was restored\n');
    assert.ok(!alive(w.pid), 'no process made');

    // What --max-creds root lets through: the edited image runs as root.
    const rs = ferry(['restore', '--image', edited, '--max-creds', 'root']);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.match(statusOf(w.pid, 'Uid'), /^0\s+0\s+0\s+0$/, 'unbounded, the edited image runs as root');
    assert.equal(BigInt(`0x${statusOf(w.pid, 'CapEff')}`), BigInt(ALL_CAPS), 'with every capability');
    process.kill(w.pid, 'SIGKILL');
    await waitFor(`pid ${w.pid} to be free`, () => !alive(w.pid));

    // The image as it was: within the bound.
    const ok = await restore({ image, config, logger, bound });
    own(ok.pid);
    assert.equal(ok.pid, w.pid);
    assert.match(statusOf(w.pid, 'Uid'), /^65534\s+65534\s+65534\s+65534$/);
    assert.equal(statusOf(w.pid, 'CapEff'), '0000000000000000');
    await sleep(200);
    assert.equal(await verify(w), 'PASS');
  });
});

const BUSYBOX = '/bin/busybox';
const RUNC = ['/usr/sbin/runc', '/usr/bin/runc'].find((p) => existsSync(p));
const skipRunc = skip || (RUNC ? (existsSync(BUSYBOX) ? false : `needs ${BUSYBOX} (apt-get install busybox-static)`) : 'needs runc (apt-get install runc)');

describe('no privilege from the image: a runc container, bounded by its bundle\'s config.json', { skip: skipRunc, timeout: 180_000 }, () => {
  let dir = '';
  let state = '';
  const ids = new Set<string>();
  const runc = (...args: string[]): { code: number; out: string } => {
    const r = spawnSync(RUNC!, ['--root', state, ...args], { encoding: 'utf8', timeout: 60000 });
    return { code: r.status ?? -1, out: r.stdout };
  };
  const status = (id: string): string => {
    const r = runc('state', id);
    return r.code === 0 ? (JSON.parse(r.out) as { status: string }).status : 'absent';
  };
  const ticks = (log: string): number => [...readFileSync(log, 'utf8').matchAll(/^tick \d+$/gm)].length;

  before(() => {
    dir = scratchDir('ferry-bounds-');
    state = join(dir, 'state');
    const rootfs = join(dir, 'rootfs');
    for (const d of ['bin', 'proc', 'sys', 'dev', 'tmp']) mkdirSync(join(rootfs, d), { recursive: true });
    spawnSync('cp', [BUSYBOX, join(rootfs, 'bin', 'busybox')]);
    for (const a of ['sh', 'sleep', 'echo']) symlinkSync('busybox', join(rootfs, 'bin', a));
  });
  after(() => {
    for (const id of ids) runc('delete', '--force', id);
  });

  it('an image edited to add CAP_SYS_ADMIN is refused naming process.capabilities.effective, no container made; the image as it was restores', async () => {
    const b = join(dir, 'bundle');
    mkdirSync(b);
    assert.equal(spawnSync(RUNC!, ['spec', '--bundle', b]).status, 0);
    const spec = JSON.parse(readFileSync(join(b, 'config.json'), 'utf8')) as { root: unknown; process: { terminal: boolean; args: string[] } };
    spec.root = { path: join(dir, 'rootfs'), readonly: false };
    spec.process.terminal = false;
    spec.process.args = ['sh', '-c', 'i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 0.05; done'];
    writeFileSync(join(b, 'config.json'), JSON.stringify(spec));
    const log = join(dir, 'ctr.log');
    const fd = openSync(log, 'a');
    const id = 'ferry-bounds-1';
    ids.add(id);
    const r = spawnSync(RUNC!, ['--root', state, 'run', '-d', '--bundle', b, id], { stdio: ['ignore', fd, fd], timeout: 60000 });
    closeSync(fd);
    assert.equal(r.status, 0, 'runc run');
    await waitFor('ticks', () => ticks(log) >= 3);

    const image = join(dir, 'ctr.tar');
    const cp = ferry(['checkpoint', id, '--root', state, '--image', image]);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(status(id), 'absent');
    const edited = join(dir, 'edited.tar');
    const SYS_ADMIN = 1n << 21n;
    await editImage(image, edited, [[TASKS, json<TaskRecord>((t) => {
      for (const c of t.creds.threads) {
        c.caps.effective = `0x${(BigInt(c.caps.effective) | SYS_ADMIN).toString(16)}`;
        c.caps.permitted = `0x${(BigInt(c.caps.permitted) | SYS_ADMIN).toString(16)}`;
      }
    })]]);
    const before = stubs({ zombies: true });
    const rs = ferry(['restore', id, '--root', state, '--image', edited, '--bundle', b, '--detach']);
    assert.equal(rs.code, 1, rs.stderr);
    const lines = rs.stderr.trimEnd().split('\n');
    assert.equal(lines.length, 1, rs.stderr);
    assert.match(lines[0]!, new RegExp(`^ferry restore: image ${edited}: pid 1 \\(sh\\) would get capability CAP_SYS_ADMIN in its effective set, `
      + `beyond what ${join(b, 'config.json')} allows \\(process\\.capabilities\\.effective\\) \\(and \\d+ more\\): nothing was restored$`));
    assert.equal(status(id), 'absent', 'no container made');
    assert.deepEqual(stubs({ zombies: true }), before, 'no stub left');
    assert.equal(readFileSync(join(b, 'config.json'), 'utf8'), JSON.stringify(spec), 'config.json untouched');

    const ok = ferry(['restore', id, '--root', state, '--image', image, '--bundle', b, '--detach']);
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(status(id), 'running');
    const n = ticks(log);
    await waitFor('more ticks', () => ticks(log) >= n + 3);
  });
});
