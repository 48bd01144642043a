/**
 * runc driven with ferry's criu first in PATH (test/integration/criu-swrk.test.ts,
 * test/faults/criu-swrk.test.ts): busybox bundles, a state directory of the test's own, and
 * runc started with pipes (pipe2) as its stdout and stderr, which a detached container keeps.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { Socket } from 'node:net';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { native } from '../../src/native/binding.js';
import { needs, ROOT } from './env.js';

export const CRIU = join(ROOT, 'bin', 'criu');
export const BUSYBOX = '/bin/busybox';
export const RUNC = ['/usr/sbin/runc', '/usr/bin/runc', '/usr/local/sbin/runc'].find((p) => existsSync(p));

/** Why a test of ferry's criu under runc cannot run here, or false. */
export const SKIP_RUNC_CRIU: string | false = needs('root', 'build')
  || (RUNC ? false : 'needs runc (apt-get install runc)')
  || (existsSync(BUSYBOX) ? false : `needs ${BUSYBOX} (apt-get install busybox-static)`);

/** The container's counter: one "tick N" line every 100 ms, N kept in the shell's memory. */
export const TICKS = 'i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done';

/** Lines "tick N" read from a stream. */
export class Ticks {
  readonly seen: number[] = [];
  readonly other: string[] = [];
  private partial = '';
  ended = false;

  constructor(stream: Readable) {
    stream.setEncoding('utf8');
    stream.on('data', (s: string) => {
      const lines = (this.partial + s).split('\n');
      this.partial = lines.pop() ?? '';
      for (const l of lines) {
        const m = /^tick (\d+)$/.exec(l);
        if (m) this.seen.push(Number(m[1]));
        else this.other.push(l);
      }
    });
    stream.on('end', () => { this.ended = true; });
  }

  get last(): number | undefined {
    return this.seen.at(-1);
  }
}

/**
 * A busybox bundle `name` in `dir` running `script` with sh; no network namespace when
 * `hostNet`; `bind`: a host directory bind-mounted at /data (runc hands it to criu as ext_mnt).
 */
export function makeBundle(dir: string, name: string, script: string, hostNet = false, bind?: string): string {
  const bundle = join(dir, name);
  const rootfs = join(bundle, 'rootfs');
  for (const d of ['bin', 'proc', 'dev', 'sys', 'tmp']) mkdirSync(join(rootfs, d), { recursive: true });
  copyFileSync(BUSYBOX, join(rootfs, 'bin', 'busybox'));
  chmodSync(join(rootfs, 'bin', 'busybox'), 0o755);
  for (const a of ['sh', 'sleep', 'echo', 'cat']) symlinkSync('busybox', join(rootfs, 'bin', a));
  const spec = spawnSync(RUNC!, ['spec'], { cwd: bundle, encoding: 'utf8' });
  assert.equal(spec.status, 0, spec.stderr);
  const config = JSON.parse(readFileSync(join(bundle, 'config.json'), 'utf8')) as {
    process: Record<string, unknown>; linux: { namespaces: Array<{ type: string }> }; mounts: Array<Record<string, unknown>>;
  };
  if (bind !== undefined) {
    mkdirSync(join(rootfs, 'data'));
    config.mounts.push({ destination: '/data', type: 'bind', source: bind, options: ['rbind', 'rw'] });
  }
  config.process.terminal = false;
  config.process.args = ['sh', '-c', script];
  if (hostNet) config.linux.namespaces = config.linux.namespaces.filter((n) => n.type !== 'network');
  writeFileSync(join(bundle, 'config.json'), JSON.stringify(config));
  return bundle;
}

/** A runc run by a test, its stdout read as ticks, its stderr gathered. */
export interface DetachedRun {
  child: ChildProcess;
  ticks: Ticks;
  err(): string;
  /** runc's exit status. */
  exited: Promise<number>;
}

/** runc with `--root state` and ferry's criu first in PATH, for one test file. */
export class RuncCriu {
  readonly env: NodeJS.ProcessEnv;
  private readonly children: ChildProcess[] = [];
  private readonly streams: Socket[] = [];
  private readonly ids = new Set<string>();

  /** `bin`: a directory to hold the `criu` symlink; `state`: runc's --root. */
  constructor(bin: string, readonly state: string, extraEnv: NodeJS.ProcessEnv = {}) {
    mkdirSync(bin, { recursive: true });
    symlinkSync(CRIU, join(bin, 'criu'));
    this.env = { PATH: `${bin}:${process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin'}`, ...extraEnv };
    const which = spawnSync('sh', ['-c', 'command -v criu'], { env: this.env, encoding: 'utf8' });
    assert.equal(which.stdout.trim(), join(bin, 'criu'), 'ferry\'s criu is first in PATH');
  }

  /** Marks container `id` for removal by cleanup(). */
  own(id: string): string {
    this.ids.add(id);
    return id;
  }

  /** runc, synchronous (for verbs that leave no pipe behind); `env` is added to the environment. */
  run(args: string[], env: NodeJS.ProcessEnv = {}): { code: number; out: string; err: string } {
    const r = spawnSync(RUNC!, ['--root', this.state, ...args], { env: { ...this.env, ...env }, encoding: 'utf8', timeout: 120_000 });
    return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
  }

  /**
   * runc whose stdout and stderr are new pipes (pipe2, as conmon gives them: node's own 'pipe'
   * is a socket pair), which a detached container keeps (run -d, restore -d).
   */
  start(args: string[], cwd: string, env: NodeJS.ProcessEnv = {}): DetachedRun {
    const n = native();
    const [outR, outW] = n.pipe2();
    const [errR, errW] = n.pipe2();
    const child = spawn(RUNC!, ['--root', this.state, ...args], { env: { ...this.env, ...env }, cwd, stdio: ['ignore', outW, errW] });
    n.closeFd(outW);
    n.closeFd(errW);
    this.children.push(child);
    const out = new Socket({ fd: outR, readable: true, writable: false });
    const errs = new Socket({ fd: errR, readable: true, writable: false });
    this.streams.push(out, errs);
    let err = '';
    errs.setEncoding('utf8');
    errs.on('data', (s: string) => { err += s; });
    const exited = new Promise<number>((r) => child.on('exit', (c, sig) => r(c ?? 128 + (sig === 'SIGKILL' ? 9 : 0))));
    return { child, ticks: new Ticks(out), err: () => err, exited };
  }

  /** `start`, resolved once runc has exited. */
  async detached(args: string[], cwd: string, env: NodeJS.ProcessEnv = {}): Promise<{ code: number; ticks: Ticks; err: () => string }> {
    const r = this.start(args, cwd, env);
    return { code: await r.exited, ticks: r.ticks, err: r.err };
  }

  /** runc's state of `id`, or undefined when it has none. */
  status(id: string): { status: string; pid: number } | undefined {
    const r = this.run(['state', id]);
    return r.code === 0 ? JSON.parse(r.out) as { status: string; pid: number } : undefined;
  }

  /** Deletes the test's containers, kills its runc processes, closes its pipes. */
  cleanup(): void {
    for (const s of this.streams) s.destroy();
    for (const id of this.ids) spawnSync(RUNC!, ['--root', this.state, 'delete', '--force', id]);
    for (const c of this.children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  }
}
