/**
 * The fuzzer itself (test/fuzz/images.test.ts starts it as a child subreaper, so that every
 * process a restore makes comes back to it, and watches it for hangs).
 *
 * It makes real images once (a counter, the same signed with a key it trusts, a process with
 * threads, a process tree, a counter running as nobody, and the workloads holding open files of
 * every kind: anonfd, pipes, unixsk, events), then restores thousands of variants of them
 * (mutate.ts) through the library, in this process (inspect too), and every
 * FERRY_FUZZ_CLI_EVERY-th also through bin/ferry. Every variant must end in a clean refusal
 * (one line, a FerryError with a known code, never EINTERNAL nor the engine's words) or a
 * restore whose process is then checked (a variant that changed nothing must pass its own
 * check), killed and reaped; the canary directory must stay as it was, no System V segment may
 * be left, and nothing may be left running. A base whose pid another process took (pid_max is
 * small here) is made again.
 *
 * Environment: FERRY_FUZZ_SEED (replay; default a fixed seed, "random" for a new one), FERRY_FUZZ_COUNT (how many, default 3000),
 * FERRY_FUZZ_ONLY (comma-separated variant numbers: only those, as the same seed makes them),
 * FERRY_FUZZ_CLI_EVERY (default 50; 0: never), FERRY_FUZZ_HUGE, FERRY_FUZZ_VERBOSE (below).
 * The images of the first 30 failures are kept in /tmp/ferry-fuzz-failures-SEED/.
 *
 * Output, one line each, read by the test: `@ N FAMILY BASE` before variant N, `~ N` before its
 * restore, `! {failure}`, `= {summary}` at the end, `pids …` (every pid of the bases), `# text`
 * for people.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash, createPrivateKey, createPublicKey } from 'node:crypto';
import {
  chmodSync, chownSync, closeSync, copyFileSync, lstatSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync,
  rmSync, statSync, symlinkSync, writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import { loadConfig } from '../../src/config/config.js';
import { describeCause, FerryError, internalCause } from '../../src/errors.js';
import { formatInspect, inspect } from '../../src/image/inspect.js';
import { generateSigningKey, imageSigner } from '../../src/image/sign.js';
import { checkpoint, restore } from '../../src/index.js';
import { native } from '../../src/native/binding.js';
import { closeInheritedFds } from '../../src/proc/inherited.js';
import { parseMaxCreds } from '../../src/restore/bounds.js';
import type { RestoreOptions, RestoreResult } from '../../src/api.js';
import { FERRY, ROOT, WORKLOADS } from '../helpers/env.js';
import { hugeEntry, makeSweep, makeVariant, original, parseEntry, sweeps, type Base, type Targets, type Variant } from './mutate.js';
import { Rng, variantSeed } from './prng.js';
import { member, split } from './tar.js';

closeInheritedFds();

// A fixed default seed keeps CI deterministic; FERRY_FUZZ_SEED=random explores new variants.
const DEFAULT_SEED = 699030011;
const seedText = process.env.FERRY_FUZZ_SEED;
const seed = seedText === 'random' ? (Math.random() * 2 ** 32) >>> 0 : seedText !== undefined ? Number(seedText) >>> 0 : DEFAULT_SEED;
const count = Number(process.env.FERRY_FUZZ_COUNT ?? 3000);
const only = process.env.FERRY_FUZZ_ONLY ? new Set(process.env.FERRY_FUZZ_ONLY.split(',').map(Number)) : undefined;
const cliEvery = Number(process.env.FERRY_FUZZ_CLI_EVERY ?? 50);
/**
 * FERRY_FUZZ_HUGE=1 (and any run of 10000 variants or more): one variant whose image holds an
 * entry of over 4 GiB (a hole: no disk), its sha256 right, which no reader may allocate.
 * Hashing it takes seconds, three times (once here, once by inspect, once by restore).
 */
const huge = process.env.FERRY_FUZZ_HUGE === '1' || count >= 10_000;
/** FERRY_FUZZ_VERBOSE=1: every variant's outcome on a line (for replays). */
const verbose = process.env.FERRY_FUZZ_VERBOSE === '1';
/** How long a restore may take before it is a hang (the test's watchdog adds a margin). */
const VARIANT_MS = 20_000;
const WNOHANG = 1;
/** The huge entry: over 4 GiB, more than a Buffer can hold. */
const HUGE_BYTES = 4 * 2 ** 30 + 2 ** 24;

const say = (line: string): void => { process.stdout.write(`${line}\n`); };
// No host key: the bases are unsigned (the signed one is signed here, by a key the restore
// trusts), as images from elsewhere are; restores of root processes then give --max-creds root
// (an unsigned image gets the untrusted default otherwise), which leaves every other check.
const loaded = loadConfig({});
const config = { ...loaded, image: { ...loaded.image, hostKey: '' } };
const logger = pino({ level: 'silent' });
const me = process.pid;
const scratch = mkdtempSync('/tmp/ferry-fuzz-');
const failDir = `/tmp/ferry-fuzz-failures-${seed}`;

// ---------------------------------------------------------------- processes

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function statOf(pid: number): { state: string; ppid: number; comm: string } | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const close = text.lastIndexOf(')');
    const f = text.slice(close + 2).split(' ');
    return { state: f[0]!, ppid: Number(f[1]), comm: text.slice(text.indexOf('(') + 1, close) };
  } catch {
    return undefined;
  }
}

/** Every child of this process (of any of its threads: a subreaper's adopted orphans too). */
function myChildren(): number[] {
  const out: number[] = [];
  for (const tid of readdirSync('/proc/self/task')) {
    try {
      out.push(...readFileSync(`/proc/self/task/${tid}/children`, 'utf8').split(' ').filter(Boolean).map(Number));
    } catch { /* thread gone */ }
  }
  return out;
}

/** Pids of processes libuv spawned for us (workloads, bin/ferry): libuv reaps those, never us. */
const spawned = new Set<number>();

/**
 * Kills `pids` that are ours (children, or children of one of them) and reaps what becomes
 * ours, bounded; returns the ones still there.
 */
async function killAndReap(pids: readonly number[], ms = 8000): Promise<number[]> {
  const set = new Set(pids);
  for (const p of pids) {
    const s = statOf(p);
    if (s && (s.ppid === me || set.has(s.ppid))) {
      try { process.kill(p, 'SIGKILL'); } catch { /* gone */ }
    }
  }
  for (const end = Date.now() + ms; ;) {
    const left = pids.filter((p) => { const s = statOf(p); return s !== undefined && (s.ppid === me || set.has(s.ppid)); });
    for (const p of left) {
      if (statOf(p)?.ppid === me && !spawned.has(p)) {
        try { native().waitpid(p, WNOHANG); } catch { /* not ours after all */ }
      }
    }
    if (left.length === 0 || Date.now() > end) return left.filter((p) => statOf(p) !== undefined);
    await sleep(5);
  }
}

/**
 * Children still running once a variant is over. A failed restore kills what it made and
 * reaps its own children; the processes it made under them die as their orphans, and come to
 * us (the subreaper) as zombies: those are reaped here. Anything still alive after a grace
 * period (a process dying takes a moment) was left behind.
 */
async function strays(): Promise<number[]> {
  let left: number[] = [];
  for (const end = Date.now() + 2000; ;) {
    left = [];
    for (const p of myChildren().filter((c) => !spawned.has(c))) {
      if (statOf(p)?.state === 'Z') {
        // A zombie we cannot collect (a leader whose threads are unreaped zombies) stays: it is reported.
        try { if (native().waitpid(p, WNOHANG) !== null) continue; } catch { /* reported below if it stays */ }
      }
      left.push(p);
    }
    if (left.length === 0 || Date.now() > end) return left;
    await sleep(10);
  }
}

/**
 * System V segments created by one of `pids` (a restore makes a segment in the process that
 * attaches it first) that nothing holds: left behind by a refused restore. Removed, and returned.
 */
function leakedSegments(pids: readonly number[]): string[] {
  const out: string[] = [];
  for (const line of readFileSync('/proc/sysvipc/shm', 'utf8').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 7) continue;
    const [shmid, cpid, nattch] = [Number(f[1]), Number(f[4]), Number(f[6])];
    if (!pids.includes(cpid) || nattch !== 0) continue;
    out.push(`System V segment ${shmid} (made by pid ${cpid}, attached nowhere)`);
    spawnSync('ipcrm', ['-m', String(shmid)]);
  }
  return out;
}

/** Waits (bounded) for `pid`, our child, to exit; its exit code, or undefined when it did not. */
async function exitOf(pid: number, ms: number): Promise<number | undefined> {
  for (const end = Date.now() + ms; Date.now() < end; await sleep(5)) {
    let st;
    try {
      st = native().waitpid(pid, WNOHANG);
    } catch {
      return undefined;
    }
    if (st) return st.exited ? st.exitCode : 128 + st.termSig;
  }
  return undefined;
}

// ---------------------------------------------------------------- workloads and bases

/** Starts a workload detached, stdio on a log file, and waits for "ready pid=". */
async function startWorkload(name: string, args: string[], uid?: number): Promise<{ pid: number; dir: string; exited: Promise<void> }> {
  const dir = mkdtempSync(join(scratch, `${name}-`));
  const log = join(dir, 'workload.log');
  const fd = openSync(log, 'a');
  // A process running as another user writes a log of its own, in a directory it may search
  // (an unsigned image may hold open only what its credentials could open so:
  // restore/file-access.ts).
  if (uid !== undefined) {
    chownSync(log, uid, uid);
    chmodSync(dir, 0o755);
  }
  const child = spawn(join(WORKLOADS, name), args.map((a) => (a === 'DIR' ? dir : a)), {
    stdio: ['ignore', fd, fd], detached: true, cwd: dir, ...(uid !== undefined ? { uid, gid: uid } : {}),
  });
  closeSync(fd);
  const pid = child.pid!;
  spawned.add(pid);
  const exited = new Promise<void>((r) => child.on('exit', () => { spawned.delete(pid); r(); }));
  for (const end = Date.now() + 15000; !readFileSync(log, 'utf8').includes(`ready pid=${pid}`); await sleep(20)) {
    if (Date.now() > end) throw new Error(`${name} did not get ready: ${readFileSync(log, 'utf8').slice(0, 500)}`);
  }
  return { pid, dir, exited };
}

/** Checkpoints a workload (it dies) and returns its base. */
async function makeBase(name: string, workload: Base['workload'], args: string[], uid?: number): Promise<Base> {
  const w = await startWorkload(workload, args, uid);
  const image = join(w.dir, 'image.tar');
  await checkpoint({ pid: w.pid, image, leaveRunning: false, config, logger });
  await w.exited;
  const members = split(readFileSync(image));
  const manifest = JSON.parse(members[0]!.body.toString()) as Base['manifest'];
  const base: Base = { name, workload, members, manifest, root: manifest.root.pid, pids: [] };
  const pids = new Set<number>();
  for (const p of parseEntry(base, 'tree.json').processes as Array<{ pid: number }>) pids.add(p.pid);
  for (const t of manifest.tasks as number[]) {
    for (const th of parseEntry(base, `tasks/${t}/task.json`).threads as Array<{ tid: number }>) pids.add(th.tid);
  }
  base.pids = [...pids];
  // The workload's children (zombies among them) were orphaned to us by the checkpoint's kill.
  await killAndReap(base.pids);
  return base;
}

// ---------------------------------------------------------------- the canary

function makeTargets(): Targets & { snapshot: () => string } {
  const dir = mkdtempSync('/tmp/ferry-fuzz-canary-');
  writeFileSync(join(dir, 'canary'), 'canary: restore must never change this file\n'.repeat(30));
  writeFileSync(join(dir, 'workload.log'), 'a log that is not the workload\'s\n');
  writeFileSync(join(dir, 'secret'), 'secret\n', { mode: 0o600 });
  mkdirSync(join(dir, 'sub'));
  writeFileSync(join(dir, 'sub', 'deep'), 'deep\n');
  symlinkSync('canary', join(dir, 'link'));
  const trap = mkdtempSync('/tmp/ferry-fuzz-trap-');
  symlinkSync(dir, join(trap, 'esc'));
  symlinkSync(join(dir, 'canary'), join(trap, 'abs'));
  const st = statSync(join(dir, 'canary'), { bigint: true });
  const fd = openSync(join(dir, 'canary'), 'r');
  /** Every name under the directory, with its type, mode, owner, size and sha256 (or target). */
  const snapshot = (): string => {
    const out: string[] = [];
    const walk = (rel: string): void => {
      for (const name of readdirSync(join(dir, rel)).sort()) {
        const p = rel ? `${rel}/${name}` : name;
        const s = lstatSync(join(dir, p));
        const head = `${p} ${s.mode.toString(8)} ${s.uid}:${s.gid} ${s.size}`;
        if (s.isDirectory()) { out.push(head); walk(p); }
        else if (s.isSymbolicLink()) out.push(`${head} -> ${readlinkSync(join(dir, p))}`);
        else out.push(`${head} ${s.isFile() ? createHash('sha256').update(readFileSync(join(dir, p))).digest('hex').slice(0, 16) : ''}`);
      }
    };
    walk('');
    const root = lstatSync(dir);
    return `${root.mode.toString(8)} ${root.uid}\n${out.join('\n')}`;
  };
  return { dir, file: join(dir, 'canary'), sub: join(dir, 'sub'), trap, fd, size: st.size.toString(), mtimeNs: st.mtimeNs.toString(), snapshot };
}

// ---------------------------------------------------------------- the oracle

/** Every code ferry's sources can give a FerryError (a superset: errno names included). */
function knownCodes(): Set<string> {
  const codes = new Set<string>();
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(d, e.name));
      else if (e.name.endsWith('.js')) for (const m of readFileSync(join(d, e.name), 'utf8').matchAll(/'(E[A-Z0-9]{2,})'/g)) codes.add(m[1]!);
    }
  };
  walk(join(ROOT, 'dist', 'src'));
  codes.delete('EINTERNAL');
  return codes;
}
const KNOWN = knownCodes();

/** The engine's or Node's own words: never in a message for the user. */
const RAW = /is not a function|Maximum call stack|Cannot read prop|Cannot set prop|Cannot convert|is not iterable|is not defined|Invalid array length|Invalid string length|Invalid typed array|allocation failed|\[object Object\]|TypeError|RangeError|ReferenceError|\bNaN\b|\bundefined\b|internal error|ERR_[A-Z_]{3,}|out of memory|\bat .*\.js:\d/;

/**
 * A message without what it quotes of the image, and without what is known and left to
 * another change: src/image/sign.ts shows a signature's version as String() makes it
 * (`version undefined`, `version [object Object]`); a clean refusal all the same.
 */
const clean = (message: string, injected: string): string => message.replace(/"(?:[^"\\]|\\.)*"/g, '""')
  // A variant that put the string "NaN" or "undefined" in the image may see it named as it is.
  .replace(/\b(NaN|undefined)\b/g, (w) => (injected.includes(`"${w}`) ? '' : w))
  .replace(/its manifest\.sig has version .*?; this ferry reads version/, 'its manifest.sig has version (shown raw); this ferry reads version');

/** What is wrong with an error a restore or inspect threw, or undefined when it is a clean refusal. */
function badError(err: unknown, injected: string): string | undefined {
  if (!(err instanceof FerryError)) return `not a FerryError: ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`.slice(0, 400);
  if (internalCause(err) !== undefined) return `internal error inside: ${err.code} ${err.message}`.slice(0, 400);
  if (!KNOWN.has(err.code)) return `unknown code ${err.code}: ${err.message}`.slice(0, 400);
  // A line break the image put in a path may be named as it is (the CLI prints one line whatever
  // the message holds: cli/main.ts oneLine); any other is a message that is not one line.
  if (err.message.includes('\n') && !/\\n|\\u2028/.test(injected)) return `a message of ${err.message.split('\n').length} lines: ${err.message.slice(0, 300)}`;
  // A path of a record can be 8192 characters: a message naming it is long, but bounded.
  if (err.message.length > 20_000) return `a message of ${err.message.length} characters: ${err.message.slice(0, 200)}…`;
  // Values of the image are shown quoted (shown(), JSON.stringify): "NaN" there is the image's, not the engine's.
  if (RAW.test(clean(err.message, injected))) return `the engine's words: ${err.code} ${err.message.slice(0, 400)}`;
  return undefined;
}

interface Failure { i: number; seed: number; base: string; family: string; what: string; why: string; image?: string }

interface FamilyCount { variants: number; restored: number; passed: number; refused: Record<string, number>; failures: number; ms: number }

// ---------------------------------------------------------------- main

async function main(): Promise<void> {
  const t0 = performance.now();
  say(`# seed ${seed} (replay: FERRY_FUZZ_SEED=${seed}), ${count} variants, pid ${me}`);
  const targets = makeTargets();
  made.push(targets.dir, targets.trap);
  const canaryBefore = targets.snapshot();
  const signing = generateSigningKey();
  const signKey = createPrivateKey(signing.privatePem);
  const trusted = createPublicKey(signing.publicPem);
  const otherKey = createPrivateKey(generateSigningKey().privatePem);
  const pubFile = join(scratch, 'trusted.pub');
  writeFileSync(pubFile, signing.publicPem);
  const nobodyBound = parseMaxCreds('nobody');
  const rootBound = parseMaxCreds('root');

  // nobody must be able to run the counter: the scratch directory is the workload's cwd.
  spawnSync('chmod', ['0755', scratch]);
  /** The bases, by what makes them (the signed counter is the counter, signed). */
  const makers: Record<string, () => Promise<Base[]>> = {
    counter: async () => {
      const counter = await makeBase('counter', 'counter', ['20']);
      const sig = member('manifest.sig', imageSigner(signKey).sign(counter.members[0]!.body));
      return [counter, { ...counter, name: 'counter-signed', signKey, members: [counter.members[0]!, sig, ...counter.members.slice(1)] }];
    },
    threads: async () => [await makeBase('threads', 'threads', ['4'])],
    tree: async () => [await makeBase('tree', 'tree', [])],
    nobody: async () => [await makeBase('nobody', 'counter', ['20'], 65534)],
    // Open files of every kind, for the records of src/files/ (each checks itself on SIGUSR1).
    anonfd: async () => [await makeBase('anonfd', 'anonfd', ['DIR'])],
    pipes: async () => [await makeBase('pipes', 'pipes', ['DIR'])],
    unixsk: async () => [await makeBase('unixsk', 'unixsk', ['DIR'])],
    events: async () => [{ ...await makeBase('events', 'events', ['DIR']), repeatable: false }],
  };
  const bases: Base[] = [];
  for (const make of Object.values(makers)) bases.push(...await make());
  for (const b of bases) say(`# base ${b.name}: root ${b.root}, pids ${b.pids.join(' ')}, ${b.members.length} members`);
  say(`# bases made in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  say(`pids ${[...new Set(bases.flatMap((b) => b.pids))].join(' ')}`);
  /**
   * Another process (not ours: pid_max is small and the pids wrap) took a pid of base `b`:
   * every restore of it would be refused (EPIDINUSE, after waiting for it). Make it again.
   */
  let remade = 0;
  const freshen = async (b: Base): Promise<Base> => {
    const taken = b.pids.map((p) => ({ p, s: statOf(p) })).find(({ s }) => s !== undefined && s.ppid !== me);
    if (!taken) return b;
    say(`# pid ${taken.p} of base ${b.name} was taken by ${taken.s!.comm} (ppid ${taken.s!.ppid}): making the base again`);
    remade++;
    const fresh = await makers[b.name === 'counter-signed' ? 'counter' : b.name]!();
    for (const f of fresh) bases[bases.findIndex((x) => x.name === f.name)] = f;
    say(`pids ${[...new Set(bases.flatMap((x) => x.pids))].join(' ')}`);
    return fresh.find((f) => f.name === b.name)!;
  };

  const sweepRng = new Rng(seed ^ 0x5eed);
  const ctxBase = { bases, targets, otherKey, sweep: makeSweep(sweepRng, bases) };
  /** Where in the sweep each variant is: how many sweep variants come before it (so one replays alone). */
  const sweepAt: number[] = [];
  const isControl = (i: number): boolean => i < bases.length || i % 500 === 0;
  for (let i = 0, n = 0; i < count; i++) {
    sweepAt.push(n);
    if (!isControl(i) && sweeps(new Rng(variantSeed(seed, i)))) n++;
  }
  say(`# ${ctxBase.sweep.length} field classes to sweep`);
  const path = join(scratch, 'variant.tar');
  const families = new Map<string, FamilyCount>();
  const failures: Failure[] = [];
  const lateRefusals = new Map<string, number>();
  let restoredTotal = 0, passedTotal = 0, cliRuns = 0;
  const refusedByCode: Record<string, number> = {};
  let canaryNow = canaryBefore;

  const optionsFor = (b: Base, signal: AbortSignal): RestoreOptions => ({
    image: path, config, logger, signal,
    ...(b.name === 'tree' ? { files: { allowChangedFiles: true } } : {}),
    ...(b.name === 'nobody' ? { bound: nobodyBound } : b.signKey ? {} : { bound: rootBound }),
    ...(b.signKey ? { trust: [trusted] } : {}),
  });

  /** A restored tree: checked (bounded), then killed and reaped. The check's verdict. */
  const settle = async (b: Base, rs: { pid: number; pids: readonly number[] }): Promise<string> => {
    let verdict = 'no check';
    try {
      process.kill(rs.pid, 'SIGUSR1');
      const code = await exitOf(rs.pid, b.workload === 'counter' ? 2000 : b.workload === 'tree' ? 8000 : 4000);
      verdict = code === 0 ? 'PASS' : code === undefined ? 'no answer' : `exit ${code}`;
    } catch (err) {
      verdict = `cannot signal: ${(err as Error).message}`;
    }
    const left = await killAndReap([...new Set([...rs.pids, rs.pid, ...b.pids])]);
    if (left.length > 0) verdict += `; left running: ${left.join(' ')}`;
    return verdict;
  };

  for (let i = 0; i < count; i++) {
    if (only && !only.has(i)) continue;
    const rng = new Rng(variantSeed(seed, i));
    let v: Variant;
    for (const name of bases.map((x) => x.name)) await freshen(bases.find((x) => x.name === name)!);
    if (huge && i === bases.length) {
      say(`@ ${i} huge (hashing ${HUGE_BYTES} bytes of zeros first)`);
      const h = createHash('sha256');
      const zeros = Buffer.alloc(8 << 20);
      for (let left = HUGE_BYTES; left > 0; left -= zeros.length) h.update(left >= zeros.length ? zeros : zeros.subarray(0, left));
      v = hugeEntry(bases[0]!, HUGE_BYTES, h.digest('hex'));
    } else if (isControl(i)) {
      // Control variants: each base as it is, first and now and then.
      const b = bases[i % bases.length]!;
      v = { base: b.name, family: 'control', what: 'the image as it is', image: original(b), expect: 'same' };
    } else {
      v = makeVariant({ ...ctxBase, rng, sweepAt: { i: sweepAt[i]! } });
    }
    const b = bases.find((x) => x.name === v.base)!;
    say(`@ ${i} ${v.family} ${v.base}`);
    if (verbose) say(`# ${i} ${v.family} ${v.base}: ${v.what}`);
    const fam = families.get(v.family) ?? { variants: 0, restored: 0, passed: 0, refused: {}, failures: 0, ms: 0 };
    const tv = performance.now();
    families.set(v.family, fam);
    fam.variants++;
    if (v.write) v.write(path); else writeFileSync(path, v.image);
    const fail = (why: string): void => {
      let image: string | undefined;
      if (failures.length < 30) {
        mkdirSync(failDir, { recursive: true });
        image = join(failDir, `${i}-${v.family}.tar`);
        copyFileSync(path, image);
      }
      const f: Failure = { i, seed, base: v.base, family: v.family, what: v.what, why, ...(image ? { image } : {}) };
      failures.push(f);
      fam.failures++;
      say(`! ${JSON.stringify(f)}`);
    };

    // inspect reads the same records: it must refuse or describe, never crash.
    try {
      formatInspect(await inspect({ image: path, config, logger }));
    } catch (err) {
      const bad = badError(err, v.what);
      if (bad) fail(`inspect: ${bad}`);
    }

    // restore through the library, bounded in time (a line for the watchdog: inspect may have taken a while).
    say(`~ ${i}`);
    const ac = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    let outcome: { rs?: RestoreResult; err?: unknown; hung?: boolean };
    try {
      outcome = await Promise.race([
        restore(optionsFor(b, ac.signal)).then((rs) => ({ rs }), (err: unknown) => ({ err })),
        new Promise<{ hung: true }>((r) => { timer = setTimeout(() => r({ hung: true }), v.family === 'huge' ? 3 * VARIANT_MS : VARIANT_MS); }),
      ]);
    } finally {
      clearTimeout(timer);
    }
    let libCode = 'restored';
    if (outcome.hung) {
      ac.abort(new Error('timed out'));
      fail(`restore did not finish within ${VARIANT_MS / 1000} s`);
      libCode = 'hang';
    } else if (outcome.err !== undefined) {
      const err = outcome.err;
      const bad = badError(err, v.what);
      const code = err instanceof FerryError ? err.code : 'not a FerryError';
      libCode = code;
      if (verbose) say(`# ${i} ${v.what}: ${code} ${(err as Error).message.slice(0, 300)} <- ${describeCause((err as Error).cause).slice(0, 200)}`);
      if (bad) fail(`restore: ${bad}`);
      else {
        fam.refused[code] = (fam.refused[code] ?? 0) + 1;
        refusedByCode[code] = (refusedByCode[code] ?? 0) + 1;
        if (v.expect === 'refused' && v.codes && !v.codes.includes(code)) fail(`refused with ${code}, expected ${v.codes.join(' or ')}: ${(err as Error).message}`);
        if (v.family === 'control' && code !== 'EPIDINUSE') fail(`the image as it is was refused: ${code} ${(err as Error).message}`);
        if (code === 'EPIDINUSE') {
          const holders = b.pids.map((p) => ({ p, s: statOf(p) })).filter((x) => x.s).map((x) => `${x.p} ${x.s!.comm} ${x.s!.state} ppid ${x.s!.ppid}`);
          say(`# ${i}: ${(err as Error).message.slice(0, 200)} [${holders.join(', ')}]`);
        }
        if (code === 'ERESTORE') {
          const key = (err as Error).message.replace(/\d+/g, 'N').slice(0, 160);
          lateRefusals.set(key, (lateRefusals.get(key) ?? 0) + 1);
        }
      }
    } else {
      const rs = outcome.rs!;
      restoredTotal++;
      fam.restored++;
      const verdict = await settle(b, rs);
      if (verdict === 'PASS') { passedTotal++; fam.passed++; }
      if (v.expect === 'refused') fail(`restored (${verdict}), but must be refused${v.codes ? ` (${v.codes.join(' or ')})` : ''}`);
      else if (v.expect === 'same' && verdict !== 'PASS' && (b.repeatable !== false || verdict.includes('left running'))) fail(`nothing that matters changed, but the restored process did not pass its check: ${verdict}`);
      else if (verdict.includes('left running')) fail(verdict);
    }

    // bin/ferry on a sample: one line, the exit status, the JSON error.
    if (cliEvery > 0 && i % cliEvery === cliEvery - 1 && !outcome.hung) {
      cliRuns++;
      const args = ['restore', '--image', path, '--json'];
      if (b.signKey) args.push('--trust', pubFile);
      if (b.name === 'nobody') args.push('--max-creds', 'nobody');
      else if (!b.signKey) args.push('--max-creds', 'root');
      if (b.name === 'tree') args.push('--allow-changed-files');
      const r = spawnSync(FERRY, args, { input: Buffer.alloc(0), timeout: VARIANT_MS, maxBuffer: 1 << 26 });
      const stderr = r.stderr.toString();
      const stdout = r.stdout.toString();
      if (r.status === 0) {
        const verdict = await settle(b, { pid: b.root, pids: b.pids });
        if (libCode !== 'restored' && libCode !== 'EPIDINUSE') fail(`bin/ferry restored (${verdict}) what the library refused with ${libCode}`);
      } else if (r.status === 1) {
        const lines = stderr.trimEnd().split('\n');
        let code = '?';
        try { code = (JSON.parse(stdout) as { error: { code: string } }).error.code; } catch { /* below */ }
        if (lines.length !== 1 || !lines[0]!.startsWith('ferry restore: ')) fail(`bin/ferry: not one line on stderr: ${stderr.slice(0, 500)}`);
        else if (RAW.test(clean(lines[0]!, v.what))) fail(`bin/ferry: the engine's words: ${lines[0]!.slice(0, 400)}`);
        else if (!KNOWN.has(code) || stdout.trim().split('\n').length !== 1) fail(`bin/ferry: stdout is not one JSON error with a known code: ${stdout.slice(0, 300)}`);
        else if (code !== libCode && ![code, libCode].includes('EPIDINUSE')) fail(`bin/ferry refused with ${code}, the library with ${libCode}: ${lines[0]!.slice(0, 300)}`);
      } else {
        fail(`bin/ferry exited with ${r.status ?? r.signal}: ${stderr.slice(0, 500)}`);
      }
    }

    // Nothing left behind, the canary untouched.
    const kids = await strays();
    if (kids.length > 0) {
      const threads = (p: number): string => { try { return readdirSync(`/proc/${p}/task`).map((t) => `${t}:${statOf(Number(t))?.state ?? '?'}`).join(' '); } catch { return ''; } };
      fail(`left behind: ${kids.map((p) => `${p} (${statOf(p)?.comm ?? '?'} ${statOf(p)?.state ?? '?'}; threads ${threads(p)})`).join(', ')}`);
      await killAndReap(kids);
      // Zombie threads still traced by us (the restore's tracer): collected so the pid comes free.
      for (const p of kids) {
        try { for (const t of readdirSync(`/proc/${p}/task`)) native().waitpid(Number(t), WNOHANG); } catch { /* gone */ }
        try { native().waitpid(p, WNOHANG); } catch { /* gone */ }
      }
    }
    const segments = leakedSegments(b.pids);
    if (segments.length > 0) fail(`left behind: ${segments.join(', ')}`);
    const canary = targets.snapshot();
    if (canary !== canaryNow) {
      fail(`the canary directory changed:\n${canaryNow}\n->\n${canary}`.replace(/\n/g, ' | '));
      canaryNow = canary;
    }
    fam.ms += Math.round(performance.now() - tv);
  }

  const seconds = (performance.now() - t0) / 1000;
  const summary = {
    seed, count, seconds: Math.round(seconds), variants: [...families.values()].reduce((s, f) => s + f.variants, 0),
    restored: restoredTotal, passed: passedTotal, refusedByCode, cliRuns, failures: failures.length, remade,
    families: Object.fromEntries([...families.entries()].sort()),
    lateRefusals: Object.fromEntries([...lateRefusals.entries()].sort((a, z) => z[1] - a[1]).slice(0, 20)),
    canaryUntouched: targets.snapshot() === canaryBefore,
  };
  closeSync(targets.fd);
  rmSync(targets.dir, { recursive: true, force: true });
  rmSync(targets.trap, { recursive: true, force: true });
  say(`= ${JSON.stringify(summary)}`);
}

/** Directories to remove when the worker ends, however it ends (the canary's, the trap). */
const made: string[] = [];
let done = false;
const finish = (code: number): void => {
  if (done) return;
  done = true;
  // Whatever a restore made and is still ours (a run cut short): killed; it dies with us anyway as a tracee.
  for (const p of myChildren().filter((c) => !spawned.has(c))) try { process.kill(p, 'SIGKILL'); } catch { /* gone */ }
  for (const d of [scratch, ...made]) rmSync(d, { recursive: true, force: true });
  process.exit(code);
};
process.on('SIGTERM', () => finish(143));
// `node --test dist/test/` runs every file under test/ as a test file, this one too: the
// fuzzer runs only when images.test.ts starts it (as a subreaper's child, with this variable).
if (process.env['FERRY_FUZZ_WORKER'] !== '1') finish(0);
main().then(() => finish(0), (err: unknown) => {
  say(`# fuzzer error: ${err instanceof Error ? err.stack ?? err.message : String(err)}`);
  finish(1);
});
