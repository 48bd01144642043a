/**
 * runc driven with ferry's criu first in PATH (test/integration/criu-swrk.test.ts,
 * test/faults/criu-swrk.test.ts): busybox bundles, a state directory of the test's own, and
 * runc started with pipes (pipe2) as its stdout and stderr, which a detached container keeps;
 * and real podman, isolated, with ferry's criu (podmanHarness: test/integration/podman.test.ts,
 * test/integration/criu-podman.test.ts).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { appendFileSync, chmodSync, closeSync, copyFileSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { Socket } from 'node:net';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { native } from '../../src/native/binding.js';
import { needs, PYTHON, ROOT } from './env.js';
import { own, scratchDir, waitFor } from './processes.js';

export const CRIU = join(ROOT, 'bin', 'criu');
export const BUSYBOX = '/bin/busybox';
export const RUNC = ['/usr/sbin/runc', '/usr/bin/runc', '/usr/local/sbin/runc'].find((p) => existsSync(p));

/** Why a test of ferry's criu under runc cannot run here, or false. */
export const SKIP_RUNC_CRIU: string | false = needs('root', 'build')
  || (RUNC ? false : 'needs runc (apt-get install runc)')
  || (existsSync(BUSYBOX) ? false : `needs ${BUSYBOX} (apt-get install busybox-static)`);

/** The container's counter: one "tick N" line every 100 ms, N kept in the shell's memory. */
export const TICKS = 'i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done';

/** The numbers of the "tick N" lines of file `log` (a container's stdout). */
export const ticks = (log: string): number[] => [...readFileSync(log, 'utf8').matchAll(/^tick (\d+)$/gm)].map((m) => Number(m[1]));

/** The ticks of `log` so far are 1..N once each, and more keep coming. */
export async function countsOn(log: string): Promise<void> {
  const n = ticks(log).length;
  await waitFor('more ticks', () => ticks(log).length >= n + 3);
  const all = ticks(log);
  assert.deepEqual(all, all.map((_, i) => i + 1), 'every tick once, in order');
}

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
 * A busybox root filesystem at `rootfs`: /bin/busybox with `tools` linked to it, and the empty
 * directories `dirs` (mount points for a container's /proc, /sys, /dev, /tmp by default).
 */
export function busyboxRootfs(rootfs: string, tools = ['sh', 'sleep', 'echo', 'cat'], dirs = ['proc', 'sys', 'dev', 'tmp']): void {
  for (const d of ['bin', ...dirs]) mkdirSync(join(rootfs, d), { recursive: true });
  copyFileSync(BUSYBOX, join(rootfs, 'bin', 'busybox'));
  chmodSync(join(rootfs, 'bin', 'busybox'), 0o755);
  for (const a of tools) symlinkSync('busybox', join(rootfs, 'bin', a));
}

/**
 * A busybox bundle `name` in `dir` running `script` with sh; no network namespace when
 * `hostNet`; `bind`: a host directory bind-mounted at /data (runc hands it to criu as ext_mnt).
 */
export function makeBundle(dir: string, name: string, script: string, hostNet = false, bind?: string): string {
  const bundle = join(dir, name);
  const rootfs = join(bundle, 'rootfs');
  busyboxRootfs(rootfs);
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

/** `makeBundle` with `"terminal": true` and busybox's stty and tty in the rootfs. */
export function makeTerminalBundle(dir: string, name: string, script: string): string {
  const bundle = makeBundle(dir, name, script);
  for (const a of ['stty', 'tty']) symlinkSync('busybox', join(bundle, 'rootfs', 'bin', a));
  const config = JSON.parse(readFileSync(join(bundle, 'config.json'), 'utf8')) as { process: Record<string, unknown> };
  config.process.terminal = true;
  writeFileSync(join(bundle, 'config.json'), JSON.stringify(config));
  return bundle;
}

/**
 * The container's shell for terminal tests: sets its terminal (37 rows, 101 columns, echo
 * off), then every 100 ms prints a tick with what it sees of it (TERMINAL_SEEN when kept),
 * and answers a line of input with "got LINE".
 */
export const TERMINAL_SCRIPT = [
  'stty rows 37 cols 101 -echo',
  'i=0',
  'while true; do',
  '  i=$((i+1))',
  '  set -- $(stty size)',
  '  case "$(stty -a)" in *" -echo "*) e=off;; *) e=on;; esac',
  '  if (: </dev/tty) 2>/dev/null; then c=yes; else c=no; fi',
  '  echo "tick $i size=$1x$2 echo=$e tty=$(tty) ctty=$c"',
  '  if read -t 0.1 line; then echo "got $line"; fi',
  'done',
].join('\n');

/** What TERMINAL_SCRIPT prints after "tick N " while its terminal is as it set it. */
export const TERMINAL_SEEN = 'size=37x101 echo=off tty=/dev/pts/0 ctty=yes';

/**
 * The test's console-socket receiver (test/fixtures/scripts/console_receiver.py), started
 * (owned: killed by cleanup()): `socket` for --console-socket; `masters()` splits what it
 * logged at each new master into ticks of TERMINAL_SCRIPT and text; `input(s)` writes `s` to
 * the newest master.
 */
export async function consoleReceiver(dir: string): Promise<{
  socket: string; masters(): Array<{ ticks: Array<{ n: number; line: string }>; text: string }>; input(s: string): void;
}> {
  const socket = join(dir, 'console.sock');
  const log = join(dir, 'console.log');
  const child = spawn(PYTHON, [join(ROOT, 'test', 'fixtures', 'scripts', 'console_receiver.py'), socket, log], { stdio: 'ignore', detached: true });
  own(child.pid!);
  await waitFor('the console socket', () => existsSync(socket));
  return {
    socket,
    masters: () => (existsSync(log) ? readFileSync(log, 'utf8') : '').split(/\r?\nmaster \d+\r?\n/).slice(1).map((text) => ({
      text, ticks: [...text.matchAll(/^tick (\d+) (.*?)\r?$/gm)].map((m) => ({ n: Number(m[1]), line: m[2]! })),
    })),
    input: (s) => appendFileSync(`${log}.in`, s),
  };
}

/** Runs podman with a test's global flags: its exit code, stdout and stderr. */
export type Podman = (...args: string[]) => { code: number; out: string; err: string };

export const PODMAN = ['/usr/bin/podman', '/usr/local/bin/podman'].find((p) => existsSync(p));
export const CONMON = ['/usr/bin/conmon', '/usr/libexec/podman/conmon', '/usr/local/bin/conmon'].find((p) => existsSync(p));

/** Why a podman test cannot run here, or false. */
export const SKIP_PODMAN: string | false = needs('root', 'build')
  || (PODMAN ? false : 'needs podman (apt-get install podman)')
  || (CONMON ? false : 'needs conmon (apt-get install conmon)')
  || (existsSync(BUSYBOX) ? false : `needs ${BUSYBOX} (apt-get install busybox-static)`);

/** A podman of a test file's own, isolated, and its counting busybox container: see podmanHarness. */
export interface PodmanHarness {
  /** The scratch directory (storage, run and tmp dirs, a bin dir first in PATH), once set up. */
  readonly dir: string;
  podman: Podman;
  /** podman `args`, asserted to exit 0: its stdout. */
  ok: (...args: string[]) => string;
  /** The numbers of the "tick N" lines of `podman logs` of the container. */
  ticks: () => number[];
  /** The container's state (running, exited...). */
  status: () => string;
  /** Checks the container runs, its init's parent is conmon, and it counts on after `last`; returns its last tick. */
  countsOn: (last: number) => Promise<number>;
  /** Starts the container, detached, counting (TICKS), with --network none and ulimits within this host's hard limits. */
  runCounter: () => void;
  /** Makes the directories and imports the busybox image: call in before(). */
  setUp: () => void;
  /** Removes the container, the image and podman's state: call in after() (cleanup() stays the test's). */
  tearDown: () => void;
}

/**
 * Real podman, isolated: a private --root/--runroot/--tmpdir, the vfs storage driver, the
 * cgroupfs manager, the file events backend, and ferry's criu first in PATH (podman and runc
 * run `criu swrk` from PATH); image `image` is a busybox rootfs (sh, sleep, echo, stty, tty),
 * container `name` runs in it. `flags`: further global flags (--runtime); `env`: further
 * environment, given the scratch directory.
 */
export function podmanHarness(o: { prefix: string; image: string; name: string; flags?: string[]; env?: (dir: string) => NodeJS.ProcessEnv }): PodmanHarness {
  let dir = '';
  let global: string[] = [];
  let env: NodeJS.ProcessEnv = {};
  const podman: Podman = (...args) => {
    const r = spawnSync(PODMAN!, [...global, ...args], { encoding: 'utf8', env, timeout: 180000 });
    return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
  };
  const ok = (...args: string[]): string => {
    const r = podman(...args);
    assert.equal(r.code, 0, `podman ${args.join(' ')}: ${r.err}`);
    return r.out;
  };
  const ticks = (): number[] => [...podman('logs', o.name).out.matchAll(/^tick (\d+)$/gm)].map((m) => Number(m[1]));
  const status = (): string => podman('inspect', '--format', '{{.State.Status}}', o.name).out.trim();
  return {
    get dir() { return dir; },
    podman, ok, ticks, status,
    countsOn: async (last) => {
      assert.equal(status(), 'running');
      const pid = Number(ok('inspect', '--format', '{{.State.Pid}}', o.name).trim());
      const ppid = Number(readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /s, '').split(' ')[1]);
      assert.equal(readFileSync(`/proc/${ppid}/comm`, 'utf8').trim(), 'conmon', 'the restored init is a child of conmon');
      await waitFor(`ticks after ${last}`, () => (ticks().at(-1) ?? 0) > last + 2, 20000);
      const t = ticks();
      const after = t.slice(t.indexOf(last) + 1);
      after.forEach((n, i) => assert.equal(n, last + 1 + i, `counting on from ${last}: ${after.slice(0, 5).join(', ')}`));
      return t.at(-1)!;
    },
    runCounter: () => {
      ok('run', '-d', '--name', o.name, '--network', 'none',
        '--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=4096:4096', o.image, 'sh', '-c', TICKS);
    },
    setUp: () => {
      dir = scratchDir(o.prefix);
      const bin = join(dir, 'bin');
      mkdirSync(bin);
      symlinkSync(CRIU, join(bin, 'criu'));
      env = { PATH: `${bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`, ...o.env?.(dir) };
      global = ['--root', join(dir, 'storage'), '--runroot', join(dir, 'run'), '--tmpdir', join(dir, 'tmp'),
        '--storage-driver', 'vfs', '--cgroup-manager', 'cgroupfs', '--events-backend', 'file', ...(o.flags ?? [])];
      const rootfs = join(dir, 'rootfs');
      busyboxRootfs(rootfs, ['sh', 'sleep', 'echo', 'stty', 'tty'], []);
      const tar = spawnSync('tar', ['-C', rootfs, '-cf', join(dir, 'rootfs.tar'), '.']);
      assert.equal(tar.status, 0);
      ok('import', join(dir, 'rootfs.tar'), o.image);
    },
    tearDown: () => {
      if (global.length === 0) return;
      podman('rm', '-f', '-t', '0', o.name);
      podman('rmi', '-f', o.image);
      podman('system', 'reset', '-f');
    },
  };
}

/**
 * `podman run -d -t` of TERMINAL_SCRIPT in `image` as container `name` (removed at the end),
 * `container checkpoint`, `container restore`: conmon holds the terminal's master, and after
 * the restore the ticks in `podman logs` count on, each seeing TERMINAL_SEEN. `podman` runs
 * podman with the test's global flags.
 */
export async function podmanTerminalRoundTrip(podman: Podman, image: string, name: string): Promise<void> {
  const ok = (...args: string[]): string => {
    const r = podman(...args);
    assert.equal(r.code, 0, `podman ${args.join(' ')}: ${r.err}`);
    return r.out;
  };
  const lines = (): Array<{ n: number; rest: string }> => [...podman('logs', name).out.matchAll(/^tick (\d+) (.*?)\r?$/gm)]
    .map((m) => ({ n: Number(m[1]), rest: m[2]! }));
  try {
    ok('run', '-d', '-t', '--name', name, '--network', 'none', '--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=4096:4096',
      image, 'sh', '-c', TERMINAL_SCRIPT);
    await waitFor('first ticks', () => lines().length >= 3, 20000);
    ok('container', 'checkpoint', name);
    assert.equal(podman('inspect', '--format', '{{.State.Status}}', name).out.trim(), 'exited');
    const at = lines().at(-1)!.n;
    ok('container', 'restore', name);
    await waitFor(`ticks after ${at}`, () => (lines().at(-1)?.n ?? 0) > at + 2, 20000);
    const all = lines();
    const after = all.slice(all.findIndex((l) => l.n === at) + 1);
    after.forEach((l, i) => {
      assert.equal(l.n, at + 1 + i, `counting on from ${at}: ${after.slice(0, 5).map((x) => x.n).join(', ')}`);
      assert.equal(l.rest, TERMINAL_SEEN, `tick ${l.n}`);
    });
  } finally {
    podman('rm', '-f', '-t', '0', name);
  }
}

/** Pids whose parent is `ppid` and whose command line holds `word` (runc's `criu swrk`). */
export function childrenOf(ppid: number, word: string): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === ppid && readFileSync(`/proc/${d}/cmdline`, 'utf8').includes(word)) out.push(Number(d));
    } catch { /* gone */ }
  }
  return out;
}

/** Pids in a container's freezer cgroup (runc's default cgroupsPath: /ID), [] when it is gone. */
export function cgroupPids(id: string): number[] {
  const f = `/sys/fs/cgroup/freezer/${id}/cgroup.procs`;
  if (!existsSync(f)) return [];
  try {
    return readFileSync(f, 'utf8').split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
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

/** Why a test running the static `workload` in a busybox container under runc cannot run here, or false. */
export function runcWorkloadSkip(workload: string): string | false {
  return needs('root', 'build') || (RUNC ? (existsSync(BUSYBOX) ? false : `needs ${BUSYBOX} (apt-get install busybox-static)`) : 'needs runc (apt-get install runc)')
    || (existsSync(workload) ? false : `needs ${workload} (npm run build)`);
}

/** runc with its state under `state` (--root). */
export function runcAt(state: string, ...args: string[]): { code: number; out: string; err: string } {
  const r = spawnSync(RUNC!, ['--root', state, ...args], { encoding: 'utf8', timeout: 60000 });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

/** Container `id`'s status ('absent' when runc, its state under `state`, does not know it) and its init's host pid (0 then). */
export function runcState(state: string, id: string): { status: string; pid: number } {
  const r = runcAt(state, 'state', id);
  if (r.code !== 0) return { status: 'absent', pid: 0 };
  const s = JSON.parse(r.out) as { status: string; pid: number };
  return { status: s.status, pid: s.pid };
}

/**
 * A scratch directory (`prefix`, removed by cleanup()) for runc tests of one static
 * `workload` in a busybox container: runc's state goes under `state`, and `rootfs` has the
 * workload as /bin/`name`.
 */
export function runcScratch(prefix: string, workload: string, name: string): { dir: string; state: string; rootfs: string } {
  const dir = scratchDir(prefix);
  const rootfs = join(dir, 'rootfs');
  busyboxRootfs(rootfs);
  copyFileSync(workload, join(rootfs, 'bin', name));
  chmodSync(join(rootfs, 'bin', name), 0o755);
  return { dir, state: join(dir, 'state'), rootfs };
}

/**
 * Runs container `id` (runc root `state`) from a new bundle `bundle` on `rootfs` running
 * `args`, its output on `log` (`edit` changes runc's default config.json first), and waits
 * for its init to say "ready pid=1".
 */
export async function runReady(o: { state: string; bundle: string; rootfs: string; id: string; args: string[]; log: string;
  edit?: (config: Record<string, any>) => void }): Promise<void> { // eslint-disable-line @typescript-eslint/no-explicit-any
  mkdirSync(o.bundle);
  assert.equal(spawnSync(RUNC!, ['spec', '--bundle', o.bundle]).status, 0);
  const config = JSON.parse(readFileSync(join(o.bundle, 'config.json'), 'utf8')) as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
  config.root = { path: o.rootfs, readonly: false };
  config.process.terminal = false;
  config.process.args = o.args;
  o.edit?.(config);
  writeFileSync(join(o.bundle, 'config.json'), JSON.stringify(config));
  const fd = openSync(o.log, 'a');
  const r = spawnSync(RUNC!, ['--root', o.state, 'run', '-d', '--bundle', o.bundle, o.id], { stdio: ['ignore', fd, fd], timeout: 60000 });
  closeSync(fd);
  assert.equal(r.status, 0, `runc run ${o.id} failed: ${readFileSync(o.log, 'utf8')}`);
  await waitFor(`${o.id} to get ready`, () => readFileSync(o.log, 'utf8').includes('ready pid=1'));
}
