/**
 * The dirtier workload (test/fixtures/workloads/dirtier.c), or a busybox shell, as a runc container's init, for the
 * migration tests of containers with lazy pages (test/integration/migrate-lazy-container.test.ts,
 * test/faults/lazy.test.ts): a busybox rootfs with the host's libraries and the built workloads
 * bind-mounted read-only (the same files on both nodes, as a restore needs them), one bundle
 * per node and container, the container's stdout and stderr on a log file.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, closeSync, copyFileSync, existsSync, mkdirSync, openSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { WORKLOADS } from './env.js';
import type { Node } from './nodes.js';
import { waitFor } from './processes.js';
import { BUSYBOX, RUNC } from './runc-criu.js';

/** Host directories the dynamically linked workloads need, bind-mounted read-only. */
const LIBS = ['/lib', '/lib64', '/usr/lib'].filter((d) => existsSync(d));

/** A rootfs in `dir` for the dirtier: busybox, mount points for /proc, /dev, the libraries and the workloads (/w). */
export function dirtierRootfs(dir: string): string {
  const rootfs = join(dir, 'rootfs');
  for (const d of ['bin', 'proc', 'sys', 'dev', 'tmp', 'w', ...LIBS.map((l) => l.slice(1))]) mkdirSync(join(rootfs, d), { recursive: true });
  copyFileSync(BUSYBOX, join(rootfs, 'bin', 'busybox'));
  chmodSync(join(rootfs, 'bin', 'busybox'), 0o755);
  for (const a of ['sh', 'sleep', 'echo']) symlinkSync('busybox', join(rootfs, 'bin', a));
  return rootfs;
}

/** A bundle `name` in node `n` whose init is `dirtier MIB RATE` on `rootfs`. */
export function dirtierBundle(n: Node, name: string, rootfs: string, mib: number, rate: number): string {
  return bundleOn(n, name, rootfs, ['/w/dirtier', String(mib), String(rate)]);
}

/** A bundle `name` in node `n` whose init runs `args` on `rootfs` (dirtierRootfs). */
export function bundleOn(n: Node, name: string, rootfs: string, args: string[]): string {
  const b = join(n.bundles, name);
  mkdirSync(b, { mode: 0o755 });
  const spec = spawnSync(RUNC!, ['spec', '--bundle', b], { encoding: 'utf8' });
  assert.equal(spec.status, 0, spec.stderr);
  const c = JSON.parse(readFileSync(join(b, 'config.json'), 'utf8')) as {
    root: unknown; process: Record<string, unknown>; mounts: Array<Record<string, unknown>>;
  };
  c.root = { path: rootfs, readonly: false };
  c.process.terminal = false;
  c.process.args = args;
  for (const l of LIBS) c.mounts.push({ destination: l, type: 'bind', source: l, options: ['rbind', 'ro'] });
  c.mounts.push({ destination: '/w', type: 'bind', source: WORKLOADS, options: ['rbind', 'ro'] });
  writeFileSync(join(b, 'config.json'), JSON.stringify(c, null, 1), { mode: 0o644 });
  return b;
}

/** runc `args` with node `n`'s --root. */
export function runcIn(n: Node, ...args: string[]): { code: number; out: string; err: string } {
  const r = spawnSync(RUNC!, ['--root', n.runcRoot, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

/** Container `id`'s status in node `n` ('absent' when runc does not know it) and its init's host pid. */
export function stateIn(n: Node, id: string): { status: string; pid: number } {
  const r = runcIn(n, 'state', id);
  return r.code === 0 ? JSON.parse(r.out) as { status: string; pid: number } : { status: 'absent', pid: 0 };
}

/** Runs container `id` from `bundle` in node `n`, its output on `log`; resolves once it writes. */
export async function runDirtier(n: Node, id: string, bundle: string, log: string): Promise<number> {
  const fd = openSync(log, 'a');
  const [cmd, args] = n.exec(RUNC!, ['--root', n.runcRoot, 'run', '-d', '--bundle', bundle, id]);
  const r = spawnSync(cmd, args, { stdio: ['ignore', fd, fd], timeout: 60_000 });
  closeSync(fd);
  assert.equal(r.status, 0, `runc run ${id} failed`);
  await waitFor('the container to write', () => ticksIn(log) >= 2);
  return stateIn(n, id).pid;
}

/** Asks the container's init (host pid `pid`, writing on `log`) to check every page: its verdict line. */
export async function verifyDirtier(pid: number, log: string): Promise<string> {
  const before = verdicts(log).length;
  process.kill(pid, 'SIGUSR1');
  await waitFor(`the dirtier ${pid} to check itself`, () => verdicts(log).length > before, 20_000);
  return verdicts(log).at(-1)!;
}

const verdicts = (log: string): string[] => readFileSync(log, 'utf8').split('\n').filter((l) => /^(PASS|FAIL)/.test(l));

/** "tick" lines the container wrote so far. */
export function ticksIn(log: string): number {
  return (readFileSync(log, 'utf8').match(/^tick /gm) ?? []).length;
}
