/**
 * Start-up (docs/architecture.md, "Start-up"): the launchers pick the bundle only while it is
 * newer than dist/src, and drop NODE_EXTRA_CA_CERTS; `--version`, `help` and a usage error load
 * neither pino nor tar-stream nor the native addon; the bundle has every file its code points
 * to. Nothing here needs root or the native addon.
 *
 * What a run of bin/ferry loaded is seen from outside ferry's code: a module preloaded through
 * NODE_OPTIONS registers a module `load` hook (module.register) that writes down every file
 * URL imported, and, at exit, the shared objects mapped (/proc/self/maps). A bundle chunk
 * holds a package when esbuild's comment naming one of its files is in the chunk.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  chmodSync, copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync,
  utimesSync, writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, describe, it } from 'node:test';

/** The package root: this file runs as <root>/dist/test/unit/startup.test.js. */
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const BUNDLE = join(ROOT, 'dist', 'bundle', 'ferry');

const dir = mkdtempSync(join(tmpdir(), 'ferry-startup-test-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** The source of the preloaded probe, writing what was loaded to the file `out`. */
function probe(out: string): string {
  const hooks = `import { appendFileSync } from 'node:fs';
export async function load(url, context, next) {
  if (url.startsWith('file:')) appendFileSync(${JSON.stringify(out)}, 'file ' + url + '\\n');
  return next(url, context);
}`;
  return `import { register } from 'node:module';
import { appendFileSync, readFileSync } from 'node:fs';
register(${JSON.stringify(`data:text/javascript,${encodeURIComponent(hooks)}`)});
process.on('exit', () => {
  const objects = readFileSync('/proc/self/maps', 'utf8').split('\\n').map((l) => l.split(/\\s+/)[5] ?? '').filter((p) => p.endsWith('.node'));
  appendFileSync(${JSON.stringify(out)}, [...new Set(objects)].map((p) => 'object ' + p + '\\n').join(''));
});`;
}

let runs = 0;

/** Runs `file args` with the probe; returns what it loaded: file paths, shared objects. */
function loaded(file: string, args: string[]): { files: string[]; objects: string[]; status: number | null } {
  const out = join(dir, `loaded-${runs++}.txt`);
  writeFileSync(out, '');
  const NODE_OPTIONS = `--import=data:text/javascript,${encodeURIComponent(probe(out))}`;
  const r = spawnSync(file, args, { encoding: 'utf8', input: '', timeout: 30_000, env: { ...process.env, NODE_OPTIONS } });
  const lines = readFileSync(out, 'utf8').split('\n');
  const files = lines.filter((l) => l.startsWith('file ')).map((l) => fileURLToPath(l.slice(5)));
  const objects = lines.filter((l) => l.startsWith('object ')).map((l) => l.slice(7));
  assert.ok(files.length > 0, `the probe saw nothing of ${file} ${args.join(' ')}: ${r.stderr}`);
  return { files, objects, status: r.status };
}

/**
 * Runs `file args` with a preloaded CommonJS probe (no module hooks, which load built-in
 * modules of their own); returns node's built-in modules it loaded (process.moduleLoadList).
 */
function builtinsOf(file: string, args: string[]): Set<string> {
  const out = join(dir, `builtins-${runs++}.txt`);
  const script = join(dir, 'builtins-probe.cjs');
  writeFileSync(script, `process.on('exit', () => require('node:fs').writeFileSync(${JSON.stringify(out)}, process.moduleLoadList.join('\\n')));\n`);
  const r = spawnSync(file, args, { encoding: 'utf8', input: '', timeout: 30_000, env: { ...process.env, NODE_OPTIONS: `--require=${script}` } });
  assert.ok(existsSync(out), `the probe saw nothing of ${file} ${args.join(' ')}: ${r.stderr}`);
  return new Set(readFileSync(out, 'utf8').split('\n').filter((m) => m.startsWith('NativeModule ')).map((m) => m.slice(13)));
}

/**
 * Runs `file args` with a preloaded CommonJS probe that has V8's debugger report every script
 * it compiles (node:inspector, in the process itself); returns their file paths. The bundles
 * that start.cjs compiles through vm.Script are among them, which no module hook sees.
 */
function scriptsOf(file: string, args: string[]): { scripts: string[]; status: number | null } {
  const out = join(dir, `scripts-${runs++}.txt`);
  const script = join(dir, 'scripts-probe.cjs');
  writeFileSync(script, `const session = new (require('node:inspector').Session)();
session.connect();
const urls = [];
session.on('Debugger.scriptParsed', (m) => { if (m.params.url.startsWith('file:')) urls.push(m.params.url); });
session.post('Debugger.enable');
process.on('exit', () => require('node:fs').writeFileSync(${JSON.stringify(out)}, urls.join('\\n')));
`);
  const r = spawnSync(file, args, { encoding: 'utf8', input: '', timeout: 30_000, env: { ...process.env, NODE_OPTIONS: `--require=${script}` } });
  assert.ok(existsSync(out), `the probe saw nothing of ${file} ${args.join(' ')}: ${r.stderr}`);
  return { scripts: readFileSync(out, 'utf8').split('\n').filter((u) => u !== '').map((u) => fileURLToPath(u)), status: r.status };
}

/** Whether this node has the inspector (a build --without-inspector has not). */
function hasInspector(): boolean {
  return spawnSync(process.execPath, ['-e', 'require("node:inspector")']).status === 0;
}

/** The packages of node_modules among `files`, by path or, for a bundle chunk, by esbuild's comments. */
function packagesOf(files: string[]): Set<string> {
  const found = new Set<string>();
  for (const f of files) {
    const direct = /\/node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(f);
    if (direct) found.add(direct[1]!);
    else if (f.startsWith(BUNDLE)) {
      for (const m of readFileSync(f, 'utf8').matchAll(/^\/\/ (?:\S*\/)?node_modules\/((?:@[^/]+\/)?[^/]+)\//gm)) found.add(m[1]!);
    }
  }
  return found;
}

describe('what a command loads', { timeout: 120_000 }, () => {
  const ferry = join(ROOT, 'bin', 'ferry');
  const light: string[][] = [['--version'], ['version', '--json'], ['help'], ['checkpoint', '--help'], ['checkpoint', '--pid', 'x', '--image', 'y']];

  // bin/ferry runs the one CommonJS bundle (cli/start.cts), whose modules the load hook does
  // not see: what it initialised shows in the built-in modules they need, which a light
  // command needs none of (pino: stream, worker_threads; tar-stream and the engine: stream).
  // Node's ESM loader needs node:stream itself, so for the ES module programs only
  // worker_threads tells.
  const HEAVY_BUILTINS = ['stream', 'worker_threads'];
  const programs: Array<[string, string, string[], string[]]> = [
    ['bin/ferry', ferry, [], HEAVY_BUILTINS],
    ['dist/src', process.execPath, [join(ROOT, 'dist', 'src', 'cli', 'main.js')], ['worker_threads']],
    ['the ES module bundle', process.execPath, [join(BUNDLE, 'ferry.js')], ['worker_threads']],
  ];

  it('--version, help and usage errors load neither pino, tar-stream nor the native addon', (t) => {
    if (!existsSync(join(BUNDLE, 'ferry.js'))) {
      t.skip(`${BUNDLE} is not built (npm run build:bundle)`);
      return;
    }
    for (const args of light) {
      for (const [name, file, before, heavyBuiltins] of programs) {
        const l = loaded(file, [...before, ...args]);
        const what = `${name} ${args.join(' ')}`;
        assert.ok(l.status === 0 || l.status === 2, `${what}: status ${l.status}`);
        const packages = packagesOf(l.files);
        for (const heavy of ['pino', 'tar-stream']) assert.ok(!packages.has(heavy), `${what} loaded ${heavy}: ${[...packages].join(', ')}`);
        const builtins = builtinsOf(file, [...before, ...args]);
        for (const heavy of heavyBuiltins) assert.ok(!builtins.has(heavy), `${what} loaded node:${heavy}`);
        assert.deepEqual(l.objects.filter((o) => o.includes('ferry_native')), [], `${what} loaded the native addon`);
      }
    }
  });

  // The engine's bundle, with its code cache, costs some 50 ms to read and deserialise even
  // when a command uses nothing of it: start.cjs answers these lines from ferry-light.cjs.
  it('bin/ferry answers them from the light bundle, without compiling the engine\'s bundle', (t) => {
    if (!existsSync(join(BUNDLE, 'start.cjs'))) {
      t.skip(`${BUNDLE} is not built (npm run build:bundle)`);
      return;
    }
    if (!hasInspector()) {
      t.skip('this node has no inspector (built --without-inspector), which the probe needs');
      return;
    }
    const engine = join(BUNDLE, 'ferry.cjs');
    // (A usage error of a command that works goes to the engine's bundle: start.cjs sends it
    // there at once, as it sends every line that names such a command without --help.)
    for (const args of [...light.filter((a) => a[0] !== 'checkpoint' || a.includes('--help')), ['help', 'inspect'], ['inspect', '-h'], [], ['--frob']]) {
      const r = scriptsOf(ferry, args);
      const what = `bin/ferry ${args.join(' ')}`;
      assert.ok(r.status === 0 || r.status === 2, `${what}: status ${r.status}`);
      assert.ok(r.scripts.includes(join(BUNDLE, 'ferry-light.cjs')), `${what} did not run the light bundle: ${r.scripts.join(', ')}`);
      assert.ok(!r.scripts.includes(engine), `${what} compiled the engine's bundle ${engine}`);
    }
    // A command that works: the light bundle hands it on, and the probe sees the engine's.
    const heavy = scriptsOf(ferry, ['inspect', '--image', join(dir, 'missing.tar')]);
    assert.equal(heavy.status, 1);
    assert.ok(heavy.scripts.includes(engine), `bin/ferry inspect did not compile ${engine}: ${heavy.scripts.join(', ')}`);
  });

  it('sees what a command that logs loads (the probe works)', () => {
    const logging = ['inspect', '--image', join(dir, 'missing.tar'), '--log-level', 'info'];
    for (const [name, file, before] of programs.filter(([n]) => n !== 'bin/ferry')) {
      const l = loaded(file, [...before, ...logging]);
      assert.equal(l.status, 1, name);
      assert.ok(packagesOf(l.files).has('pino'), `${name}: ${l.files.join('\n')}`);
    }
    const builtins = builtinsOf(ferry, logging);
    for (const heavy of HEAVY_BUILTINS) assert.ok(builtins.has(heavy), `bin/ferry inspect did not load node:${heavy}: ${[...builtins].join(', ')}`);
  });

  it('a command that logs nothing (no log file, no --log-level) does not load pino', () => {
    for (const [name, file, before] of programs.filter(([n]) => n !== 'bin/ferry')) {
      const l = loaded(file, [...before, 'inspect', '--image', join(dir, 'missing.tar')]);
      assert.equal(l.status, 1, name);
      assert.ok(!packagesOf(l.files).has('pino'), `${name} loaded pino: ${[...packagesOf(l.files)].join(', ')}`);
    }
  });

  it('sees the native addon once it is loaded (the probe works)', (t) => {
    const addon = join(ROOT, 'build', 'Release', 'ferry_native.node');
    if (!existsSync(addon)) {
      t.skip(`${addon} is not built`);
      return;
    }
    const script = join(dir, 'addon.mjs');
    writeFileSync(script, `import { createRequire } from 'node:module';\ncreateRequire(import.meta.url)(${JSON.stringify(addon)});\n`);
    assert.ok(loaded(process.execPath, [script]).objects.some((o) => o.endsWith('ferry_native.node')));
  });
});

describe('the bundle', () => {
  it('has every file its code points to with new URL(..., import.meta.url)', (t) => {
    if (!existsSync(BUNDLE)) {
      t.skip(`${BUNDLE} is not built (npm run build:bundle)`);
      return;
    }
    let seen = 0;
    // The CommonJS bundle's import.meta.url is __ferryUrl (its banner, package.json).
    for (const name of readdirSync(BUNDLE).filter((n) => n.endsWith('.js') || n.endsWith('.cjs'))) {
      for (const m of readFileSync(join(BUNDLE, name), 'utf8').matchAll(/new URL\(\s*["'`]([^"'`]+)["'`]\s*,\s*(?:import\.meta\.url|__ferryUrl)\s*\)/g)) {
        seen++;
        const target = fileURLToPath(new URL(m[1]!, `file://${join(BUNDLE, name)}`));
        assert.ok(existsSync(target), `${name} points to ${m[1]}, which the bundle does not have: add it as an entry of build:bundle`);
      }
    }
    assert.ok(seen > 0, 'no new URL(..., import.meta.url) found: the hash worker of src/image/writer.ts should be one');
  });
});

describe('the launchers', { timeout: 60_000 }, () => {
  /** A fake package with `launcher` and stand-ins printing which file ran and two variables. */
  function fakePackage(launcher: string, src: string, bundled: string): string {
    const root = mkdtempSync(join(dir, 'pkg-'));
    mkdirSync(join(root, dirname(launcher)), { recursive: true });
    copyFileSync(join(ROOT, launcher), join(root, launcher));
    chmodSync(join(root, launcher), 0o755);
    writeFileSync(join(root, 'package.json'), '{}\n');
    for (const [file, tag] of [[src, 'src'], [bundled, 'bundle']] as const) {
      mkdirSync(join(root, dirname(file)), { recursive: true });
      writeFileSync(join(root, file), `process.stdout.write(JSON.stringify({ ran: ${JSON.stringify(tag)}, ca: process.env.NODE_EXTRA_CA_CERTS ?? null, cache: process.env.NODE_COMPILE_CACHE ?? null, args: process.argv.slice(2) }));\n`);
    }
    return root;
  }

  // The launcher, dist/src's file, the bundle's start, the arguments, and the start's first
  // argument naming the program (none for ferry).
  const START = 'dist/bundle/ferry/start.cjs';
  const cases: Array<[string, string, string, string[], string[]]> = [
    ['bin/ferry', 'dist/src/cli/main.js', START, ['--version'], []],
    ['bin/criu', 'dist/src/runtime/criu.js', START, ['--version'], ['--program=criu']],
    ['hooks/ferry-hook', 'dist/src/hook/main.js', START, ['poststop'], ['--program=ferry-hook']],
    ['bin/ferry-runtime', 'dist/src/runtime/main.js', START, ['checkpoint', 'c1'], ['--program=ferry-runtime']],
  ];
  for (const [launcher, src, bundled, args, program] of cases) {
    it(`${launcher} runs the bundle while it is not older than dist/src, else dist/src`, () => {
      const root = fakePackage(launcher, src, bundled);
      const env: NodeJS.ProcessEnv = { ...process.env, NODE_EXTRA_CA_CERTS: '/nonexistent.pem', FERRY_RUNC: '/bin/true' };
      delete env.NODE_COMPILE_CACHE;
      const run = (file: string, cwd?: string): { ran: string; ca: string | null; cache: string | null; args: string[] } => {
        const r = spawnSync(file, args, { encoding: 'utf8', env, ...(cwd !== undefined ? { cwd } : {}) });
        assert.equal(r.status, 0, `${file}: ${r.stderr}`);
        return JSON.parse(r.stdout) as { ran: string; ca: string | null; cache: string | null; args: string[] };
      };
      const old = new Date(Date.now() - 3_600_000);
      utimesSync(join(root, src), old, old);
      const first = run(join(root, launcher));
      assert.deepEqual(first, { ran: 'bundle', ca: null, cache: join(root, 'dist', 'compile-cache'), args: [...program, ...args] });
      // Through a symlink and a relative path, the same package is found.
      const link = join(dir, `link-${statSync(root).ino}`);
      symlinkSync(join(root, launcher), link);
      assert.equal(run(link).ran, 'bundle');
      assert.equal(run(`./${launcher}`, root).ran, 'bundle');
      // tsc wrote dist/src after the bundle: the bundle is stale.
      const now = new Date();
      const older = new Date(now.getTime() - 60_000);
      utimesSync(join(root, bundled), older, older);
      utimesSync(join(root, src), now, now);
      assert.equal(run(join(root, launcher)).ran, 'src');
      rmSync(join(root, bundled));
      assert.equal(run(join(root, launcher)).ran, 'src');
    });
  }
});

/** A copy of the package's bundle and package.json; the copies have new modification times. */
function copyPackage(): string {
  const root = mkdtempSync(join(dir, 'cached-'));
  cpSync(BUNDLE, join(root, 'dist', 'bundle', 'ferry'), { recursive: true });
  copyFileSync(join(ROOT, 'package.json'), join(root, 'package.json'));
  return root;
}

describe('the code-cached start (cli/start.cts)', { timeout: 60_000 }, () => {
  const version = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;

  it('starts whatever state the code cache is in, and without the CommonJS bundle', (t) => {
    if (!existsSync(join(BUNDLE, 'start.cjs'))) {
      t.skip(`${BUNDLE} is not built (npm run build:bundle)`);
      return;
    }
    const root = copyPackage();
    const bundle = join(root, 'dist', 'bundle', 'ferry');
    // Without the light bundle, which would answer --version and a usage error itself (put
    // back while the caches are made: the build makes its cache too).
    const light = join(bundle, 'ferry-light.cjs');
    renameSync(light, `${light}.aside`);
    const run = (args: string[]): { status: number | null; stdout: string; stderr: string } =>
      spawnSync(process.execPath, [join(bundle, 'start.cjs'), ...args], { encoding: 'utf8', timeout: 30_000 });
    const check = (what: string): void => {
      const r = run(['--version']);
      assert.equal(r.status, 0, `${what}: ${r.stderr}`);
      assert.equal(r.stdout, `ferry ${version}\n`, what);
      const usage = run(['nonsense']);
      assert.equal(usage.status, 2, `${what}: ${usage.stderr}`);
      assert.match(usage.stderr, /^ferry: unknown command "nonsense"/, what);
    };
    // Copied: the cache names the bundle by its size and time, which the copy changed.
    check('a cache made for another bundle');
    // A cache of this bundle's size and time whose contents V8 refuses.
    const st = statSync(join(bundle, 'ferry.cjs'), { bigint: true });
    const header = Buffer.alloc(16);
    header.writeBigUInt64LE(st.size, 0);
    header.writeBigUInt64LE(st.mtimeNs, 8);
    writeFileSync(join(bundle, 'ferry.cjs.cache'), Buffer.concat([header, Buffer.alloc(4096, 0xa5)]));
    check('a cache V8 refuses');
    writeFileSync(join(bundle, 'ferry.cjs.cache'), header);
    check('a cache with a header only');
    rmSync(join(bundle, 'ferry.cjs.cache'));
    check('no cache');
    // Made again here: the functions compiled, with this bundle's header.
    renameSync(`${light}.aside`, light);
    const made = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(join(bundle, 'start.cjs'))}).makeCodeCache()`], { encoding: 'utf8', timeout: 30_000 });
    renameSync(light, `${light}.aside`);
    assert.equal(made.status, 0, made.stderr);
    assert.ok(readFileSync(join(bundle, 'ferry.cjs.cache')).subarray(0, 16).equals(header), 'the cache names the bundle it was made from');
    check('a cache made for this bundle');
    // No CommonJS bundle (an older build): the ES module bundle runs.
    rmSync(join(bundle, 'ferry.cjs'));
    check('no CommonJS bundle');
    // Neither: one line saying what to do.
    rmSync(join(bundle, 'ferry.js'));
    const none = run(['--version']);
    assert.equal(none.status, 1);
    assert.match(none.stderr, /^ferry: cannot load .*ferry\.cjs nor ferry\.js next to it .*: run 'npm run build'\n$/);
  });

  it('answers the light command lines as the engine\'s bundle does, and runs without the light bundle', (t) => {
    if (!existsSync(join(BUNDLE, 'start.cjs'))) {
      t.skip(`${BUNDLE} is not built (npm run build:bundle)`);
      return;
    }
    const root = copyPackage();
    const bundle = join(root, 'dist', 'bundle', 'ferry');
    const run = (args: string[]): { status: number | null; stdout: string; stderr: string } => {
      const r = spawnSync(process.execPath, [join(bundle, 'start.cjs'), ...args], { encoding: 'utf8', timeout: 30_000, input: '' });
      return { status: r.status, stdout: r.stdout, stderr: r.stderr };
    };
    const lines = [[], ['--version'], ['version', '--json'], ['help'], ['help', 'restore'], ['help', 'nonsense'], ['-h'], ['restore', '-h'],
      ['checkpoint', '--pid', 'x', '--image', 'y', '--json'], ['inspect', '--frob'], ['--json'], ['nonsense']];
    const light = lines.map(run);
    assert.deepEqual(light[1], { status: 0, stdout: `ferry ${version}\n`, stderr: '' });
    assert.equal(light[8]!.status, 2);
    assert.match(light[8]!.stdout, /^\{"error":\{"code":"EUSAGE","message":"--pid needs a positive integer, got \\"x\\""\}\}\n$/);
    // An older build has no light bundle: the engine's answers, the same.
    rmSync(join(bundle, 'ferry-light.cjs'));
    lines.forEach((args, i) => assert.deepEqual(run(args), light[i], `ferry ${args.join(' ')}`));
  });

  it('starts the other programs by name, each from its own cached bundle', (t) => {
    if (!existsSync(join(BUNDLE, 'start.cjs'))) {
      t.skip(`${BUNDLE} is not built (npm run build:bundle)`);
      return;
    }
    const start = join(BUNDLE, 'start.cjs');
    const run = (args: string[], env: NodeJS.ProcessEnv = process.env): { status: number | null; stdout: string; stderr: string } =>
      spawnSync(process.execPath, [start, ...args], { encoding: 'utf8', timeout: 30_000, input: '', env });
    for (const program of ['ferry-runtime', 'criu', 'ferry-hook']) {
      assert.ok(readFileSync(join(BUNDLE, `${program}.cjs.cache`)).length > 16, `${program} has a code cache`);
    }
    const criu = run(['--program=criu', '--version']);
    assert.equal(criu.status, 0, criu.stderr);
    assert.match(criu.stdout, /^Version: \d+\.\d+\ncriu \(ferry\): ferry /);
    // The program's own argv: runc's usage comes back from ferry-runtime, not ferry's.
    const runtime = run(['--program=ferry-runtime', 'checkpoint', '--help'], { ...process.env, FERRY_RUNC: '/bin/true' });
    assert.equal(runtime.status, 0, runtime.stderr);
    assert.match(runtime.stdout, /checkpoint/);
    // The hook reads its stdin: an empty one is not JSON, said in one line.
    const hook = run(['--program=ferry-hook']);
    assert.equal(hook.status, 1);
    assert.match(hook.stderr, /^ferry-hook: stdin is not JSON/);
    const unknown = run(['--program=nonsense', '--version']);
    assert.equal(unknown.status, 2);
    assert.match(unknown.stderr, /^ferry: start\.cjs knows no program "nonsense"/);
  });

  it('V8 takes every program\'s code cache the build made (a node started with the defaults, as ferry is)', (t) => {
    if (!existsSync(join(BUNDLE, 'start.cjs'))) {
      t.skip(`${BUNDLE} is not built (npm run build:bundle)`);
      return;
    }
    // The build's migration warm-up changes V8's flags (src/gc.ts), which V8 checks a cache
    // against: without restoreDefaultFlags every cache was refused, silently.
    for (const program of ['ferry', 'ferry-light', 'ferry-runtime', 'criu', 'ferry-hook']) {
      const env = { ...process.env };
      delete env['NODE_OPTIONS'];
      const r = spawnSync(process.execPath, ['-e', `process.stdout.write(String(require(${JSON.stringify(join(BUNDLE, 'start.cjs'))}).cacheAccepted(${JSON.stringify(program)})))`],
        { encoding: 'utf8', timeout: 30_000, env });
      assert.equal(r.stdout, 'true', `${program}: ${r.stderr}`);
    }
    assert.match(readFileSync(join(ROOT, 'dist', 'code-cache.log'), 'utf8'), /^ferry: code cache accepted$/m, 'the build says so in its log');
  });
});

// Its own suite: the caches are made in a copy of the package, the demo's and a migration's warm-up
// included (10-30 s).
describe('the commands\' own code caches (cli/start.cts)', { timeout: 240_000 }, () => {
  it('gives checkpoint and restore a code cache of their own, smaller than the program\'s, and falls back to the program\'s', (t) => {
    if (!existsSync(join(BUNDLE, 'start.cjs'))) {
      t.skip(`${BUNDLE} is not built (npm run build:bundle)`);
      return;
    }
    const log = readFileSync(join(ROOT, 'dist', 'code-cache.log'), 'utf8');
    if (/^ferry: no code caches of its own/m.test(log)) {
      t.skip('the build made none (it needs root and ptrace, as the demo does)');
      return;
    }
    const root = copyPackage();
    // The engine's addon and the demo's counter, which the caches' commands run.
    symlinkSync(join(ROOT, 'build'), join(root, 'build'));
    const bundle = join(root, 'dist', 'bundle', 'ferry');
    const env = { ...process.env };
    delete env['NODE_OPTIONS'];
    const accepted = (command?: string): string => spawnSync(process.execPath, ['-e',
      `process.stdout.write(String(require(${JSON.stringify(join(bundle, 'start.cjs'))}).cacheAccepted('ferry'${command !== undefined ? `, ${JSON.stringify(command)}` : ''})))`],
    { encoding: 'utf8', timeout: 30_000, env }).stdout;
    // Made for the copy's bundle (the copy changed its time): as the build makes them.
    const made = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(join(bundle, 'start.cjs'))}).makeCodeCache()`], { encoding: 'utf8', timeout: 120_000 });
    assert.equal(made.status, 0, made.stderr);
    assert.match(made.stdout, /^ferry checkpoint: code cache accepted$/m);
    assert.match(made.stdout, /^ferry restore: code cache accepted$/m);
    const program = statSync(join(bundle, 'ferry.cjs.cache')).size;
    for (const command of ['checkpoint', 'restore']) {
      const own = statSync(join(bundle, `ferry.cjs.${command}.cache`)).size;
      assert.ok(own < program * 0.8, `${command}'s cache holds that command alone: ${own} bytes, the program's ${program}`);
      assert.equal(accepted(command), 'true', command);
    }
    // Its own is the one read: one of this bundle's header whose contents V8 refuses is refused.
    const st = statSync(join(bundle, 'ferry.cjs'), { bigint: true });
    const header = Buffer.alloc(16);
    header.writeBigUInt64LE(st.size, 0);
    header.writeBigUInt64LE(st.mtimeNs, 8);
    writeFileSync(join(bundle, 'ferry.cjs.checkpoint.cache'), Buffer.concat([header, Buffer.alloc(4096, 0xa5)]));
    assert.equal(accepted('checkpoint'), 'false');
    assert.equal(accepted(), 'true');
    // Missing, or made for another bundle: the program's is taken.
    rmSync(join(bundle, 'ferry.cjs.checkpoint.cache'));
    assert.equal(accepted('checkpoint'), 'true');
    writeFileSync(join(bundle, 'ferry.cjs.restore.cache'), Buffer.concat([Buffer.alloc(16), Buffer.alloc(4096, 0xa5)]));
    assert.equal(accepted('restore'), 'true');
    // Which cache a start reads, seen by a spy on readFileSync preloaded with --require (a node
    // option, not a V8 flag: the caches stay acceptable): made again, a checkpoint line reads
    // its own and stops there; an inspect line, or one with an option first, the program's.
    const again = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(join(bundle, 'start.cjs'))}).makeCodeCache()`], { encoding: 'utf8', timeout: 120_000 });
    assert.equal(again.status, 0, again.stderr);
    const spy = join(root, 'spy.cjs');
    writeFileSync(spy, `const fs = require('node:fs'); const read = fs.readFileSync;
      fs.readFileSync = function (p, ...rest) { if (typeof p === 'string' && p.endsWith('.cache')) process.stderr.write('read ' + p + '\\n'); return read.call(this, p, ...rest); };\n`);
    const reads = (args: string[]): string[] => {
      const r = spawnSync(process.execPath, ['--require', spy, join(bundle, 'start.cjs'), ...args], { encoding: 'utf8', timeout: 30_000, env });
      // Usage errors (no process needed): answered by the engine's bundle.
      assert.equal(r.status, 2, r.stderr);
      return [...r.stderr.matchAll(/^read .*\/(ferry\.cjs[^/]*\.cache)$/gm)].map((m) => m[1]!);
    };
    assert.deepEqual(reads(['checkpoint', '--pid', '0', '--image', '/nonexistent/x']), ['ferry.cjs.checkpoint.cache']);
    assert.deepEqual(reads(['restore', '--frob']), ['ferry.cjs.restore.cache']);
    assert.deepEqual(reads(['inspect', '--frob']), ['ferry.cjs.cache']);
    rmSync(join(bundle, 'ferry.cjs.restore.cache'));
    assert.deepEqual(reads(['restore', '--frob']), ['ferry.cjs.restore.cache', 'ferry.cjs.cache'], 'missing: the program\'s');
  });
});
