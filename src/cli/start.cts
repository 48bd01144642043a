/**
 * The start of ferry's programs that the launchers run (docs/architecture.md, "Start-up"):
 * `ferry` (bin/ferry), and with a first argument `--program=NAME` `ferry-runtime`, `criu` and
 * `ferry-hook`. Each program is bundled into one CommonJS file, `NAME.cjs`, compiled with V8's
 * code cache, `NAME.cjs.cache`, both next to this file in dist/bundle/ferry/ and both made by
 * `npm run build:bundle`.
 *
 * Node.js 20 keeps no compiled code for ES modules between runs (NODE_COMPILE_CACHE is 22.1+),
 * and its ESM loader costs a few milliseconds per module before any of ferry's code runs.
 * A CommonJS file compiled through vm.Script with `cachedData` skips both: V8 takes the
 * functions the build's own run compiled from the cache instead of parsing the megabyte of
 * source again. The modules of the bundle are still initialised only when their command
 * imports them (esbuild turns each `import()` into a call of the module's initialiser).
 *
 * The cache is only an accelerator, never needed: a missing or unreadable cache, one made for
 * another build of the bundle (its header records the bundle's size and modification time,
 * which V8's own check, on the source's length only, would not see), or one V8 refuses (another
 * node binary, other V8 flags) means a plain compile, about 20 ms slower. Without NAME.cjs
 * at all, the ES module bundle NAME.js runs instead.
 *
 * Even with its cache, the bundle costs some 50 ms to read, deserialise and run, which a
 * command that needs none of it should not pay: `ferry --version`, the manual pages and usage
 * errors of the command line's start are answered first by `ferry-light.cjs`, a bundle of
 * cli/light.ts alone (the very code main.ts runs for them), compiled the same way with its own
 * small cache, which hands the command line on when it needs the engine (mayBeLight: a line
 * that names a command that works goes to the engine's bundle at once).
 */
import { isAscii } from 'node:buffer';
import { closeSync, existsSync, fstatSync, mkdtempSync, openSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import Module = require('node:module');
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Script } from 'node:vm';

/** Bytes of the cache's header: the bundle's size and modification time (ns), u64 LE each. */
const HEADER_BYTES = 16;

/** What each program's module exports (src/cli/main.ts, runtime/main.ts, runtime/criu.ts, hook/main.ts). */
interface Program {
  /** Runs it on the process's arguments, and exits. */
  entryPoint(): void;
  /** Runs it on `argv` (and `env`, where it reads it); its exit status, where it has one. */
  main(argv: readonly string[], env?: NodeJS.ProcessEnv): Promise<number | void>;
  /** A real checkpoint and restore of a small process, for the cache (src/warm-up.ts). */
  warmUp?(): Promise<void>;
}

/**
 * The programs, with what makeCodeCache runs of each and the exit status each ends with.
 * ferry: `--version` and `help`, and the path of every command that works (the config, pino
 * and the log, the error report) through an inspect of an image that cannot exist (a path
 * under the bundle file), logging to /dev/null. Measured here (CPU time, medians): the
 * inspect makes the cache 450 KB instead of 240 KB, which costs `--version` about 2 ms and
 * saves `inspect` of a small image 6-10 ms. The others: their help, which leaves the
 * functions of their start compiled.
 * Then each program's `warmUp` (src/warm-up.ts): the demo's real checkpoint and restore of
 * a small process (about 2 s), which leaves the engine's functions compiled; without it each
 * command compiled them on their first call, much of it inside the frozen window. Measured
 * for `ferry` on a small process (CPU time of the whole command, medians of 9): checkpoint
 * 201 -> 174 ms, restore 168 -> 143 ms, the frozen window about 30 -> 20 ms; `--version` no
 * slower within the noise, the cache 500 -> 960 KB. It needs root and ptrace: a build
 * without them (a container image's) makes the caches without it.
 */
const PROGRAMS: Readonly<Record<string, ReadonlyArray<[string[], number | undefined]>>> = {
  'ferry': [
    [['--version'], 0],
    [['help'], 0],
    [['inspect', '--image', join(__dirname, 'ferry.cjs', 'missing.tar'), '--log-file', '/dev/null'], 1],
  ],
  'ferry-runtime': [[['checkpoint', '--help'], 0], [['restore', '--help'], 0]],
  'criu': [[['--version'], 0], [['--help'], 0]],
  'ferry-hook': [],
};

/**
 * The light bundle of each program that has one (cli/light.ts for ferry), which answers what
 * needs no engine or hands the command line on to the program's bundle, and the command
 * lines makeCodeCache runs through it, with their exit status: a version, pages and a usage
 * error of a command.
 */
const LIGHT: Readonly<Record<string, { bundle: string; lines: ReadonlyArray<[string[], number]> }>> = {
  'ferry': {
    bundle: 'ferry-light',
    lines: [[['--version'], 0], [['help'], 0], [['checkpoint', '--help'], 0], [['checkpoint', '--pid', 'x', '--image', 'y'], 2]],
  },
};

/** What a light bundle exports (src/cli/light.ts). */
interface Light {
  /** The exit status of a command line it answered (printed already), else what to hand on. */
  light(argv: readonly string[]): number | object;
}

/** The CommonJS bundle of `program`. */
const bundleOf = (program: string): string => join(__dirname, `${program}.cjs`);
/**
 * V8's code cache of that bundle, behind a header naming the bundle it was made from; with
 * `command`, the one of that command alone (COMMAND_CACHES).
 */
const cacheOf = (program: string, command?: string): string => `${bundleOf(program)}${command !== undefined ? `.${command}` : ''}.cache`;

/**
 * Commands of `ferry` with a code cache of their own, made in a process that ran that command
 * alone (makeCommandCaches): V8 deserialises a whole cache whatever the command uses, and the
 * program's, made after the demo and a migration, holds every command's engine (1.4 MB, the
 * commands' 826 and 884 KB; docs/architecture.md, "Start-up", has what it saves). Any other
 * command, or one whose cache is missing or stale, takes the program's.
 */
const COMMAND_CACHES: readonly string[] = ['checkpoint', 'restore'];

/** The header for the bundle whose stat is `st`. */
function header(st: { size: bigint; mtimeNs: bigint }): Buffer {
  const h = Buffer.alloc(HEADER_BYTES);
  h.writeBigUInt64LE(st.size, 0);
  h.writeBigUInt64LE(st.mtimeNs, 8);
  return h;
}

/**
 * The code cache of `program` if it was made from its bundle as it is now (`st`), else
 * undefined: `command`'s own if there is one, else the program's.
 */
function readCache(program: string, st: { size: bigint; mtimeNs: bigint }, command?: string): Buffer | undefined {
  for (const path of command !== undefined ? [cacheOf(program, command), cacheOf(program)] : [cacheOf(program)]) {
    let data: Buffer;
    try {
      data = readFileSync(path);
    } catch {
      continue;
    }
    if (data.length > HEADER_BYTES && data.subarray(0, HEADER_BYTES).equals(header(st))) return data.subarray(HEADER_BYTES);
  }
  return undefined;
}

/**
 * Compiles the bundle of `program` (with the code cache unless `useCache` is false, that of
 * `command` where it has one); undefined when there is no bundle.
 */
function compile(program: string, useCache: boolean, command?: string): { script: Script; stat: { size: bigint; mtimeNs: bigint }; cached: boolean } | undefined {
  const bundle = bundleOf(program);
  let fd: number;
  try {
    fd = openSync(bundle, 'r');
  } catch {
    return undefined;
  }
  let source: string;
  let stat: { size: bigint; mtimeNs: bigint };
  try {
    stat = fstatSync(fd, { bigint: true });
    // esbuild writes ASCII (it escapes the rest): decoded as latin1 it is a one-byte string
    // made without UTF-8 decoding, 3 ms less here; anything else is decoded as UTF-8.
    const bytes = readFileSync(fd);
    source = isAscii(bytes) ? bytes.toString('latin1') : bytes.toString('utf8');
  } finally {
    closeSync(fd);
  }
  const cachedData = useCache ? readCache(program, stat, command) : undefined;
  const script = new Script(Module.wrap(source), { filename: bundle, ...(cachedData !== undefined ? { cachedData } : {}) });
  return { script, stat, cached: cachedData !== undefined && script.cachedDataRejected !== true };
}

/**
 * Compiles and runs the bundle of `program` (or a light bundle) as a CommonJS module, with
 * the code cache unless `useCache` is false; undefined when there is no bundle.
 */
function load<T = Program>(program: string, useCache: boolean, command?: string): { script: Script; exports: T; stat: { size: bigint; mtimeNs: bigint } } | undefined {
  const compiled = compile(program, useCache, command);
  if (compiled === undefined) return undefined;
  const { script, stat } = compiled;
  const bundle = bundleOf(program);
  const module = { exports: {} as T };
  (script.runInThisContext() as (...args: unknown[]) => void)(module.exports, Module.createRequire(bundle), module, bundle, __dirname);
  return { script, exports: module.exports, stat };
}

/**
 * Writes what V8 holds of `loaded`'s script to the cache `path`, behind the header naming its
 * bundle: under a temporary name, renamed over it (a start never reads half a cache).
 */
function writeCache(path: string, loaded: { script: Script; stat: { size: bigint; mtimeNs: bigint } }): void {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, Buffer.concat([header(loaded.stat), loaded.script.createCachedData()]));
  renameSync(tmp, path);
}

/**
 * Whether V8 takes the code cache of `program` or a light bundle (compiled, not run). V8 checks a
 * cache against the flags it runs with: ask from a node started with the defaults, as ferry is
 * (the build's own process may have had them changed: gc.ts).
 */
export function cacheAccepted(program: string, command?: string): boolean {
  return compile(program, true, command)?.cached ?? false;
}

/**
 * Whether a command line may be one a light bundle answers whole: no command, an option or
 * `help` or `version` first, or a manual page asked for anywhere (a page wins over every
 * other mistake). Any other line most likely does work, and skips the light bundle (its
 * compile and run, some milliseconds); if it has a usage error instead (or an unknown
 * command), the program's bundle answers it from the same code (cli/light.ts), only later.
 */
function mayBeLight(argv: readonly string[]): boolean {
  const first = argv[0];
  return first === undefined || first.startsWith('-') || first === 'help' || first === 'version' || argv.includes('--help') || argv.includes('-h');
}

/**
 * The exit status of the process's command line when the light bundle of `program` answered
 * it, else undefined: there is none (an older build), or the line needs the program's bundle,
 * or answering it failed (the program's bundle then does it again, and reports the failure
 * as any other).
 */
function answerLight(program: string): number | undefined {
  const name = LIGHT[program]?.bundle;
  if (name === undefined || !mayBeLight(process.argv.slice(2))) return undefined;
  try {
    // Compiled as the program's bundle is, not by require(): no module resolution, no UTF-8
    // decoding, and V8's cache: a few milliseconds less.
    const answer = load<Light>(name, true)?.exports.light(process.argv.slice(2));
    return typeof answer === 'number' ? answer : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Runs the program on the process's arguments: `ferry`, or the one a first argument
 * `--program=NAME` names (taken out of process.argv before the program sees it).
 */
function start(): void {
  let program = 'ferry';
  const named = /^--program=(.*)$/.exec(process.argv[2] ?? '');
  if (named) {
    program = named[1]!;
    process.argv.splice(2, 1);
  }
  if (!Object.hasOwn(PROGRAMS, program)) {
    process.stderr.write(`ferry: start.cjs knows no program "${program}" (${Object.keys(PROGRAMS).join(', ')})\n`);
    process.exit(2);
  }
  const status = answerLight(program);
  if (status !== undefined) process.exit(status);
  // The command word first, as ferry's lines have it: its own cache if it has one.
  const word = process.argv[2];
  const loaded = load(program, true, program === 'ferry' && word !== undefined && COMMAND_CACHES.includes(word) ? word : undefined);
  if (loaded !== undefined) {
    loaded.exports.entryPoint();
    return;
  }
  // No CommonJS bundle (an older build): the ES module one. Its module does not run itself,
  // since node was started with this file (src/entry.ts isEntryPoint).
  const esm = join(__dirname, `${program}.js`);
  import(pathToFileURL(esm).href).then((m: Partial<Program>) => {
    if (typeof m.entryPoint !== 'function') throw new Error(`${program}.js exports no entryPoint`);
    m.entryPoint();
  }).catch((err: unknown) => {
    process.stderr.write(`${program}: cannot load ${bundleOf(program)} nor ${program}.js next to it (${String(err)}): run 'npm run build'\n`);
    process.exit(1);
  });
}

/**
 * Makes the code caches (npm run build:bundle): for each program, compiles its bundle without
 * a cache, runs what PROGRAMS lists (their output goes to stdout and stderr) so that the
 * functions most runs go through are compiled, and writes what V8 then holds, with the
 * header, under a temporary name renamed over the cache.
 */
export async function makeCodeCache(): Promise<void> {
  // The light bundles first, before any warm-up changes V8's flags (gc.ts): the functions
  // their command lines go through (their output goes to the build's log like the rest).
  for (const { bundle, lines } of Object.values(LIGHT)) {
    const loaded = load<Light>(bundle, false);
    if (loaded === undefined) throw new Error(`${bundleOf(bundle)} is missing: npm run build:bundle makes it`);
    for (const [argv, expected] of lines) {
      const status = loaded.exports.light(argv);
      if (status !== expected) throw new Error(`${bundle} answered ${argv.join(' ')} with ${JSON.stringify(status)}, not ${expected}, while making the code cache`);
    }
    writeCache(cacheOf(bundle), loaded);
  }
  for (const [program, warmUp] of Object.entries(PROGRAMS)) {
    const loaded = load(program, false);
    if (loaded === undefined) throw new Error(`${bundleOf(program)} is missing: npm run build:bundle makes it`);
    // ferry-runtime looks for runc before anything else; the help needs none.
    const env = { ...process.env, FERRY_RUNC: '/bin/true' };
    for (const [argv, expected] of warmUp) {
      const status = await loaded.exports.main(argv, env);
      if (status !== expected) throw new Error(`${program} ${argv.join(' ')} exited with ${String(status)}, not ${String(expected)}, while making the code cache`);
    }
    try {
      await loaded.exports.warmUp?.();
    } catch (err) {
      process.stdout.write(`${program}: the engine's warm-up did not run (${String(err)}): the cache holds what the commands above compiled\n`);
    }
    writeCache(cacheOf(program), loaded);
  }
  // child_process is required here only: every start pays for what this file loads.
  const { spawn, spawnSync } = require('node:child_process') as typeof import('node:child_process');
  // A child as ferry starts: no NODE_OPTIONS (flags there would be in the cache and the check
  // alike, not in a plain start).
  const env = { ...process.env };
  delete env['NODE_OPTIONS'];
  try {
    await makeCommandCaches(spawn, env);
  } catch (err) {
    for (const command of COMMAND_CACHES) rmSync(cacheOf('ferry', command), { force: true });
    process.stdout.write(`ferry: no code caches of its own for ${COMMAND_CACHES.join(', ')} (${String(err)}): they take the program's\n`);
  }
  // A cache V8 refuses costs nothing but the time it was for, silently: say so in the build's log
  // (dist/code-cache.log; test/unit/startup.test.ts checks it too), each answer behind a marker.
  const caches: Array<[string, string | undefined]> = [...Object.keys(PROGRAMS), ...Object.values(LIGHT).map((l) => l.bundle)].map((p) => [p, undefined]);
  for (const command of COMMAND_CACHES) if (existsSync(cacheOf('ferry', command))) caches.push(['ferry', command]);
  for (const [program, command] of caches) {
    const r = spawnSync(process.execPath, ['-e', `process.stdout.write('\\ncache-accepted=' + require(${JSON.stringify(__filename)}).cacheAccepted(${JSON.stringify(program)}${command !== undefined ? `, ${JSON.stringify(command)}` : ''}))`],
      { encoding: 'utf8', env });
    const answer = /\ncache-accepted=(true|false)$/.exec(r.stdout ?? '')?.[1];
    process.stdout.write(`${program}${command !== undefined ? ` ${command}` : ''}: code cache ${answer === 'true' ? 'accepted'
      : `NOT accepted by V8 (${answer ?? `no answer: ${String(r.error ?? '')} ${r.stderr ?? ''}`.trim()}): every start compiles the bundle`}\n`);
  }
}

/**
 * Makes the caches of COMMAND_CACHES, each in a node of its own that runs only that command
 * (makeCommandCache), on the demo's counter (build/workloads/counter): its checkpoint, which
 * kills it, then the restore of that image, whose process is killed after. Rejects when one
 * fails (not root, no ptrace, no counter): the caller removes what was made.
 */
async function makeCommandCaches(spawn: typeof import('node:child_process').spawn, env: NodeJS.ProcessEnv): Promise<void> {
  const counter = join(__dirname, '..', '..', '..', 'build', 'workloads', 'counter');
  if (!existsSync(counter)) throw new Error(`${counter} is missing`);
  const { tmpdir } = require('node:os') as typeof import('node:os'); // here only, as child_process
  const dir = mkdtempSync(join(tmpdir(), 'ferry-code-cache-'));
  const image = join(dir, 'counter.tar');
  // Descriptors 0-2 only (the demo's warm-up closed what the build leaked to this process).
  const child = spawn(counter, ['100'], { stdio: 'ignore', detached: true });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const pid = child.pid;
  const run = (argv: string[]): Promise<void> => new Promise((resolve, reject) => {
    const c = spawn(process.execPath, ['-e', `require(${JSON.stringify(__filename)}).makeCommandCache(${JSON.stringify(argv)})`
      + '.then(() => process.exit(0), (err) => { process.stderr.write(String(err) + "\\n"); process.exit(1); })'], { stdio: 'inherit', env });
    // A build never hangs on it: a command that has not ended in a minute is killed.
    const timer = setTimeout(() => c.kill('SIGKILL'), 60_000);
    c.once('error', reject);
    c.once('exit', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else reject(new Error(`ferry ${argv.join(' ')} ended with ${signal ?? code}`));
    });
  });
  try {
    if (pid === undefined) throw new Error(`cannot start ${counter}`);
    // Started once it runs the counter, not node's fork of it.
    const running = (): boolean => readFileSync(`/proc/${pid}/cmdline`, 'latin1').startsWith(counter);
    for (let i = 0; i < 200 && !running(); i++) await new Promise((r) => setTimeout(r, 10));
    if (!running()) throw new Error(`${counter} did not start in 2 s`);
    await run(['checkpoint', '--pid', String(pid), '--image', image, '--log-file', '/dev/null']);
    // Reaped by this process, its parent: its pid is free for the restore.
    await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
    await run(['restore', '--image', image, '--log-file', '/dev/null']);
  } finally {
    try {
      // The counter, or its restored self (not a process that took its pid meanwhile).
      if (pid !== undefined && readFileSync(`/proc/${pid}/cmdline`, 'latin1').startsWith(counter)) process.kill(pid, 'SIGKILL');
    } catch { /* gone */ }
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * In a node of its own (makeCommandCaches): compiles ferry's bundle without a cache, runs the
 * command line `argv` (a checkpoint or restore), which must succeed, and writes the cache of
 * its command (COMMAND_CACHES), holding the functions that one command compiled.
 */
export async function makeCommandCache(argv: string[]): Promise<void> {
  const loaded = load('ferry', false);
  if (loaded === undefined) throw new Error(`${bundleOf('ferry')} is missing`);
  const status = await loaded.exports.main(argv);
  if (status !== 0 && status !== undefined) throw new Error(`ferry ${argv.join(' ')} exited with ${String(status)}`);
  writeCache(cacheOf('ferry', argv[0]!), loaded);
}

if (require.main === module) start();
