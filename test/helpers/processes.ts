/**
 * Workloads under test: started detached with stdio on a regular log file, tracked by pid,
 * and killed at the end of the test file (also when a test fails). Only pids a test started
 * or restored are ever touched.
 *
 * Importing this module closes what the test process inherited without close-on-exec (a
 * leaky shell's or CI agent's descriptors), so that everything a test file spawns, here or
 * with its own spawn, starts with descriptors 0-2 and what it is given: checkpoint would
 * otherwise refuse the workload for sharing that file with the shell.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, copyFileSync, existsSync, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, realpathSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defaultStubPath } from '../../src/native/binding.js';
import { closeInheritedFds } from '../../src/proc/inherited.js';
import type { TaskRecord } from '../../src/image/records.js';
import { FERRY, ROOT } from './env.js';
import { editImage, json } from './images.js';

closeInheritedFds();

const owned = new Set<number>();
const dirs = new Set<string>();
/** Pids of the ferry runs of this test file: the network locks they kept are named after them. */
const ferries = new Set<number>();

/**
 * Deletes the network locks (nftables tables `ferry-lock-<ferry pid>-…`, src/files/tcp-lock.ts)
 * that this file's ferry runs kept and no restore removed (a test that failed half way), and
 * only those.
 */
function removeKeptLocks(): void {
  if (ferries.size === 0) return;
  const r = spawnSync('nft', ['list', 'tables'], { encoding: 'utf8', timeout: 10_000 });
  for (const m of (r.stdout ?? '').matchAll(/^table inet (ferry-lock-(\d+)-[0-9a-f]{8})$/gm)) {
    if (ferries.has(Number(m[2]))) spawnSync('nft', ['delete', 'table', 'inet', m[1]!], { timeout: 10_000 });
  }
  ferries.clear();
}

/** Kills every process the tests started or restored and removes their directories and kept locks. */
export function cleanup(): void {
  for (const pid of owned) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
  }
  owned.clear();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  dirs.clear();
  removeKeptLocks();
}
process.on('exit', cleanup);
// The test runner stops a file that outlives --test-timeout with SIGTERM, Ctrl-C sends SIGINT:
// the workloads, detached into sessions of their own, get neither, so kill them before going.
for (const [signal, number] of [['SIGTERM', 15], ['SIGINT', 2], ['SIGHUP', 1]] as const) {
  process.on(signal, () => {
    cleanup();
    process.exit(128 + number);
  });
}

/** Marks a pid as ours (e.g. a restored process). */
export function own(pid: number): void {
  owned.add(pid);
}

/** Forgets `pid`, owned before: it was reaped, and its number may be another process's by now. */
export function disown(pid: number): void {
  owned.delete(pid);
}

/** A fresh scratch directory, removed by cleanup(). */
export function scratchDir(prefix = 'ferry-test-'): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  dirs.add(d);
  return d;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Waits until `cond()` holds, or throws naming `what`. */
export async function waitFor(what: string, cond: () => boolean, timeoutMs = 10000, detail?: () => string): Promise<void> {
  for (const end = Date.now() + timeoutMs; Date.now() < end; await sleep(20)) if (cond()) return;
  throw new Error(`timed out waiting for ${what}${detail !== undefined ? `: ${detail()}` : ''}`);
}

export interface Workload {
  pid: number;
  dir: string;
  log: string;
  /** Full text of the log. */
  text(): string;
  /** Numbers of the "tick N" lines so far. */
  ticks(): number[];
  /** Resolves when the original process has exited and was reaped by us. */
  exited: Promise<void>;
}

/**
 * Starts `cmd args` (DIR in args is replaced by the scratch dir) and waits for "ready pid=".
 * It gets descriptors 0-2 only, and `extraFd` as its fd 3 when a test is about that one;
 * `readyTimeoutMs` for a workload whose setup waits on the network; `attached` for one that
 * stays in this process's session and group instead of a session of its own.
 */
export async function startWorkload(cmd: string, args: string[],
  opts: { stderr?: 'file' | 'pipe'; extraFd?: number; readyTimeoutMs?: number; attached?: boolean } = {}): Promise<Workload> {
  const dir = scratchDir();
  const log = join(dir, 'workload.log');
  // O_APPEND: a process restored from an older image appends instead of overwriting.
  const fd = openSync(log, 'a');
  const child = spawn(cmd, args.map((a) => (a === 'DIR' ? dir : a)), {
    stdio: ['ignore', fd, opts.stderr === 'pipe' ? 'pipe' : fd, ...(opts.extraFd !== undefined ? [opts.extraFd] : [])],
    detached: opts.attached !== true, cwd: dir,
  });
  closeSync(fd);
  const pid = child.pid!;
  owned.add(pid);
  const exited = new Promise<void>((r) => child.on('exit', () => r()));
  const text = (): string => readFileSync(log, 'utf8');
  // One that exits before it is ready (a setup step failed: `must`) is said at once, with what
  // it printed; one still setting up when the time is up, with what it printed so far.
  const ready = (): boolean => text().includes(`ready pid=${pid}`);
  const said = (): string => {
    const t = text().trim();
    return `${child.exitCode !== null || child.signalCode !== null ? `it ended (${child.signalCode ?? `status ${child.exitCode}`})` : 'it runs'}, `
      + `${t === '' ? 'having said nothing' : `having said: ${t.slice(-400)}`}`;
  };
  await waitFor(`${cmd} to get ready`, () => ready() || child.exitCode !== null || child.signalCode !== null, opts.readyTimeoutMs, said);
  if (!ready()) throw new Error(`${cmd} ${args.join(' ')} did not get ready: ${said()}`);
  return {
    pid, dir, log, text, exited,
    ticks: () => [...text().matchAll(/^tick (\d+)$/gm)].map((m) => Number(m[1])),
  };
}

/**
 * Asks a workload to verify itself (SIGUSR1) and returns its verdict lines (`timeoutMs`: for
 * a check that waits on the network, e.g. a retransmitted FIN).
 */
export async function verify(w: Workload, timeoutMs = 10000): Promise<string> {
  process.kill(w.pid, 'SIGUSR1');
  await waitFor(`pid ${w.pid} to verify itself`, () => /^(PASS|FAIL.*)$/m.test(w.text()), timeoutMs);
  return w.text().split('\n').filter((l) => l === 'PASS' || l.startsWith('FAIL')).join('\n');
}

const VERDICT = /^(PASS|FAIL.*)$/gm;

/**
 * Sends SIGUSR1 to `pid` and returns the next verdict line of `text` (a workload that keeps
 * running after its check: unlike verify, earlier verdicts do not count), or a description of
 * why none came (with the SigBlk the kernel shows, the usual reason).
 */
export async function askVerdict(pid: number, text: () => string, timeoutMs = 10000): Promise<string> {
  const before = [...text().matchAll(VERDICT)].length;
  try {
    process.kill(pid, 'SIGUSR1');
  } catch (err) {
    return `FAIL cannot signal pid ${pid}: ${(err as Error).message}`;
  }
  try {
    await waitFor(`a verdict from ${pid}`, () => [...text().matchAll(VERDICT)].length > before, timeoutMs);
  } catch {
    let st = 'gone';
    try {
      const s = readFileSync(`/proc/${pid}/status`, 'utf8');
      const f = (k: string): string => new RegExp(`^${k}:\\s+(.*)$`, 'm').exec(s)?.[1]?.trim() ?? '';
      st = `state ${f('State').slice(0, 1)}, tracer ${f('TracerPid')}, SigBlk ${BigInt(`0x${f('SigBlk') || '0'}`).toString(16)}`;
    } catch { /* gone */ }
    return `FAIL no verdict within ${timeoutMs / 1000} s (${st})`;
  }
  return [...text().matchAll(VERDICT)][before]![1]!;
}

/** Whether a pid exists. */
export function alive(pid: number): boolean {
  return existsSync(`/proc/${pid}`);
}

/** The restore stub of this checkout (native/helpers; src/native/binding.ts, defaultStubPath). */
const STUB = join(ROOT, 'build', 'Release', 'ferry-stub');

/**
 * Pids of ferry-stub processes of this checkout (the restore stub: none may be left behind by a
 * failed restore). The machine may run other checkouts' tests, whose restores make stubs of
 * their own at any time: a live stub counts when it runs this checkout's stub binary. A killed
 * stub can stay a zombie for a moment: when its parent stub died first it belongs to init, which
 * reaps lazily here. A zombie runs nothing, so only live stubs count, unless `zombies` asks for
 * those too; a zombie has no executable to tell whose it is, so only those this process is to
 * reap (stubs of a restore run in this process, through the library) count.
 */
export function stubs(opts: { zombies?: boolean } = {}): number[] {
  const stub = existsSync(STUB) ? realpathSync(STUB) : STUB; // what /proc/PID/exe shows
  return readdirSync('/proc').filter((d) => /^\d+$/.test(d)).filter((d) => {
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      if (!stat.includes(' (ferry-stub) ')) return false;
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (fields[0] === 'Z') return opts.zombies === true && Number(fields[1]) === process.pid;
      return readlinkSync(`/proc/${d}/exe`) === stub;
    } catch { return false; }
  }).map(Number);
}

/** State letter and tracer of a pid, from /proc/PID/status. */
export function procState(pid: number): { state: string; tracer: number; ppid: number } {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  return {
    state: /State:\s+(\S)/.exec(s)![1]!,
    tracer: Number(/TracerPid:\s+(\d+)/.exec(s)![1]),
    ppid: Number(/PPid:\s+(\d+)/.exec(s)![1]),
  };
}

export interface Run {
  code: number;
  stdout: Buffer;
  stderr: string;
}

/** Runs bin/ferry with `args` (synchronously, bounded in time); `env` is added to its environment. */
export function ferry(args: string[], opts: { input?: Buffer; timeoutMs?: number; env?: Record<string, string> } = {}): Run {
  const r = spawnSync(FERRY, args, {
    input: opts.input ?? Buffer.alloc(0), timeout: opts.timeoutMs ?? 120000, maxBuffer: 1 << 30,
    ...(opts.env ? { env: { ...process.env, ...opts.env } } : {}),
  });
  if (r.pid) ferries.add(r.pid);
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr.toString() };
}

/**
 * Checkpoints workload `w` into `image` the default way (the original is killed), asserting
 * that ferry exits 0 (`what` names the step in the message), and waits until its pid is free
 * for a restore (reaped by us, or by init when `w` is already a restored process).
 */
export async function checkpointFreed(w: Pick<Workload, 'pid' | 'exited'>, image: string, what = 'checkpoint'): Promise<void> {
  const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image]);
  assert.equal(cp.code, 0, `${what} failed: ${cp.stderr}`);
  await w.exited;
  await waitFor(`pid ${w.pid} to be free`, () => !alive(w.pid));
}

/** What a cycle of cycleThrough may do besides checkpoint and restore. */
export interface CycleOptions {
  /** Further pids of the tree (children), which must be free too before the restore. */
  tree?: number[];
  /** Options for the checkpoint only (e.g. --json), after `flags`. */
  checkpointFlags?: string[];
  /** Runs when the pids are free, before the restore (e.g. to read the image). */
  beforeRestore?: () => void;
}

/**
 * Cycle `i` (from 0) of checkpoint and restore of workload `w` through `image` with `flags`
 * (given to both): the checkpoint kills it (the first time our own child, reaped here), its
 * pid (and those of `opts.tree`) is free again, the restore brings it back, owned by the test.
 * Returns the checkpoint's run (its --json output, if asked for).
 */
export async function cycleThrough(w: Pick<Workload, 'pid' | 'exited'>, image: string, i: number, flags: string[] = [],
  opts: CycleOptions = {}): Promise<Run> {
  const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, ...flags, ...(opts.checkpointFlags ?? [])]);
  assert.equal(cp.code, 0, `checkpoint ${i + 1}: ${cp.stderr}`);
  if (i === 0) await w.exited;
  const tree = opts.tree ?? [];
  await waitFor(tree.length > 0 ? `every pid of the tree of ${w.pid} to be free` : `pid ${w.pid} to be free`,
    () => !alive(w.pid) && tree.every((p) => !alive(p)), tree.length > 0 ? 8000 : 5000);
  opts.beforeRestore?.();
  const rs = ferry(['restore', '--image', image, ...flags]);
  assert.equal(rs.code, 0, `restore ${i + 1}: ${rs.stderr}`);
  own(w.pid);
  return cp;
}

/** Every pid of workload `w`'s tree (it and its children), each owned: killed by cleanup(). */
export function ownTree(w: Pick<Workload, 'pid'>): number[] {
  const kids = readFileSync(`/proc/${w.pid}/task/${w.pid}/children`, 'utf8').split(/\s+/).filter(Boolean).map(Number);
  for (const k of kids) own(k);
  return [w.pid, ...kids];
}

/**
 * Checkpoints workload `w`'s tree into `image` the default way (the tree is killed), with the
 * further options `args`, asserting that ferry exits 0, and waits until every pid of the tree
 * is free. Returns the pids, `w`'s first.
 */
export async function checkpointTreeFreed(w: Pick<Workload, 'pid' | 'exited'>, image: string, args: string[] = []): Promise<number[]> {
  const pids = ownTree(w);
  const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, ...args]);
  assert.equal(cp.code, 0, cp.stderr);
  await w.exited;
  await waitFor('the tree to be free', () => pids.every((p) => !alive(p)), 5000);
  return pids;
}

/**
 * Runs a shell pipeline (for `ferry checkpoint --image - | ferry restore --image -`)
 * asynchronously, so this process can reap its children meanwhile.
 */
export function shell(script: string): Promise<Run> {
  return new Promise((resolve) => {
    const c = spawn('/bin/sh', ['-c', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    c.stdout.on('data', (d: Buffer) => out.push(d));
    c.stderr.on('data', (d: Buffer) => err.push(d));
    c.on('close', (code) => resolve({ code: code ?? -1, stdout: Buffer.concat(out), stderr: Buffer.concat(err).toString() }));
  });
}

/**
 * Checks run `r` of a `ferry checkpoint --image - | ferry restore --image -` pipeline (shell) of
 * workload `w`: both ends said what they did, and the restored copy (owned) counts on and
 * passes its check.
 */
export async function checkPipedRestore(w: Workload, r: Run): Promise<void> {
  own(w.pid);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /checkpointed pid \d+ to stdout/);
  assert.match(r.stdout.toString(), new RegExp(`restored pid ${w.pid}`));
  const n = w.ticks().length;
  await waitFor('ticks after restore', () => w.ticks().length >= n + 3);
  assert.equal(await verify(w), 'PASS');
}

/**
 * A process of ours whose root is `dir` (the static restore stub, chrooted there, pausing):
 * /proc/PID/root is then a root to confine into, like a container's init.
 */
export async function chrooted(dir: string): Promise<number> {
  copyFileSync(defaultStubPath(), join(dir, 'ferry-stub'));
  const c = spawn('chroot', [dir, '/ferry-stub'], { stdio: 'ignore', detached: true });
  const pid = c.pid!;
  own(pid);
  await waitFor('the chrooted stub', () => {
    try { return readlinkSync(`/proc/${pid}/root`) === dir; } catch { return false; }
  });
  return pid;
}

/**
 * Restores each edited copy of `image` (its task record `entry` (a name, or a pattern of names) changed by the case's edit):
 * each refused in one line matching the case, nothing left behind, and the original `w` intact.
 */
export async function refuseEdited(w: Workload, image: string, entry: string | RegExp, cases: Array<[string, (t: TaskRecord) => void, RegExp]>): Promise<void> {
  for (const [name, edit, message] of cases) {
    const edited = join(w.dir, name);
    await editImage(image, edited, [[entry, json<TaskRecord>(edit)]]);
    // Unsigned, so untrusted: --max-creds root lets its root process reach the check.
    const rs = ferry(['restore', '--image', edited, '--max-creds', 'root']);
    assert.equal(rs.code, 1, rs.stderr);
    assert.match(rs.stderr, message);
    assert.equal(rs.stderr.trimEnd().split('\n').length, 1, 'one line');
  }
  assert.deepEqual(stubs(), [], 'nothing left behind');
  assert.equal(await verify(w), 'PASS', w.text());
}
