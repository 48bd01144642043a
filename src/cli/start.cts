/**
 * The start of the `ferry` command line that bin/ferry runs (docs/architecture.md,
 * "Start-up"): the whole command line bundled into one CommonJS file, `ferry.cjs`, compiled
 * with V8's code cache, `ferry.cjs.cache`, both next to this file in dist/bundle/ferry/ and
 * both made by `npm run build:bundle`.
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
 * node binary, other V8 flags) means a plain compile, about 20 ms slower. Without ferry.cjs
 * at all, the ES module bundle runs instead.
 */
import { isAscii } from 'node:buffer';
import { closeSync, fstatSync, openSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import Module = require('node:module');
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Script } from 'node:vm';

/** The CommonJS bundle of the command line (src/cli/main.ts and everything it imports). */
const BUNDLE = join(__dirname, 'ferry.cjs');
/** V8's code cache of BUNDLE, behind a header naming the bundle it was made from. */
const CACHE = `${BUNDLE}.cache`;
/** Bytes of the cache's header: the bundle's size and modification time (ns), u64 LE each. */
const HEADER_BYTES = 16;

/** What src/cli/main.ts exports. */
interface CommandLine {
  entryPoint(): void;
  main(argv: readonly string[]): Promise<number>;
}

/** The header for the bundle whose stat is `st`. */
function header(st: { size: bigint; mtimeNs: bigint }): Buffer {
  const h = Buffer.alloc(HEADER_BYTES);
  h.writeBigUInt64LE(st.size, 0);
  h.writeBigUInt64LE(st.mtimeNs, 8);
  return h;
}

/** The code cache if it was made from the bundle as it is now (`st`), else undefined. */
function readCache(st: { size: bigint; mtimeNs: bigint }): Buffer | undefined {
  let data: Buffer;
  try {
    data = readFileSync(CACHE);
  } catch {
    return undefined;
  }
  if (data.length <= HEADER_BYTES || !data.subarray(0, HEADER_BYTES).equals(header(st))) return undefined;
  return data.subarray(HEADER_BYTES);
}

/**
 * Compiles and runs the bundle as a CommonJS module (with the code cache unless `useCache` is
 * false); undefined when there is no bundle.
 */
function load(useCache: boolean): { script: Script; commandLine: CommandLine; stat: { size: bigint; mtimeNs: bigint } } | undefined {
  let fd: number;
  try {
    fd = openSync(BUNDLE, 'r');
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
  const cachedData = useCache ? readCache(stat) : undefined;
  const script = new Script(Module.wrap(source), { filename: BUNDLE, ...(cachedData !== undefined ? { cachedData } : {}) });
  const module = { exports: {} as CommandLine };
  (script.runInThisContext() as (...args: unknown[]) => void)(module.exports, Module.createRequire(BUNDLE), module, BUNDLE, __dirname);
  return { script, commandLine: module.exports, stat };
}

/** Runs the command line on the process's arguments. */
function start(): void {
  const loaded = load(true);
  if (loaded !== undefined) {
    loaded.commandLine.entryPoint();
    return;
  }
  // No CommonJS bundle (an older build): the ES module one.
  import(pathToFileURL(join(__dirname, 'ferry.js')).href).then((m: CommandLine) => m.entryPoint(), (err: unknown) => {
    process.stderr.write(`ferry: cannot load ${BUNDLE} nor ferry.js next to it (${String(err)}): run 'npm run build'\n`);
    process.exit(1);
  });
}

/**
 * What makeCodeCache runs, with the exit status each ends with: `--version` and `help`, and
 * the path of every command that works (the config, pino and the log, the error report)
 * through an inspect of an image that cannot exist (a path under the bundle file), logging to
 * /dev/null. Measured here (CPU time, medians): the inspect makes the cache 450 KB instead of
 * 240 KB, which costs `--version` about 2 ms and saves `inspect` of a small image 6-10 ms.
 */
const WARM_UP: ReadonlyArray<[string[], number]> = [
  [['--version'], 0],
  [['help'], 0],
  [['inspect', '--image', join(BUNDLE, 'missing.tar'), '--log-file', '/dev/null'], 1],
];

/**
 * Makes the code cache (npm run build:bundle): compiles the bundle without a cache, runs
 * WARM_UP (their output goes to stdout and stderr) so that the functions most commands go
 * through are compiled, and writes what V8 then holds, with the header, under a temporary
 * name renamed over the cache.
 */
export async function makeCodeCache(): Promise<void> {
  const loaded = load(false);
  if (loaded === undefined) throw new Error(`${BUNDLE} is missing: npm run build:bundle makes it`);
  for (const [argv, expected] of WARM_UP) {
    const status = await loaded.commandLine.main(argv);
    if (status !== expected) throw new Error(`ferry ${argv.join(' ')} exited with ${status}, not ${expected}, while making the code cache`);
  }
  const tmp = `${CACHE}.${process.pid}.tmp`;
  writeFileSync(tmp, Buffer.concat([header(loaded.stat), loaded.script.createCachedData()]));
  renameSync(tmp, CACHE);
}

if (require.main === module) start();
