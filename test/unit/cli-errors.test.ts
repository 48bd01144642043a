/**
 * The error contract (docs/cli.md, "Errors") without a process: the line and JSON fields every
 * kind of error becomes, where --json sends them, and that edited image records give one
 * FerryError naming the field, never the engine's own words. Nothing here needs root or the
 * native addon.
 */
import assert from 'node:assert/strict';
import { readlinkSync } from 'node:fs';
import { describe, it } from 'node:test';
import { REG_NAMES } from '../../src/arch/x86-64.js';
import { jsonErrorStream, UsageError } from '../../src/cli/args.js';
import type { RunContext } from '../../src/cli/context.js';
import { INTERNAL_STATUS, outcome } from '../../src/cli/main.js';
import { errorObject } from '../../src/cli/output.js';
import { describeCause, FerryError, internalCause, isInternalError } from '../../src/errors.js';
import { parseManifest } from '../../src/image/manifest.js';
import { tooDeep } from '../../src/image/reader.js';
import { validateFiles, validateTask, validateTree } from '../../src/restore/validate.js';

/** What must never reach the user: the engine's or Node's own words, a stack. */
const RAW = /is not a function|Maximum call stack|Cannot read prop|is not iterable|Cannot convert|undefined|\[object Object\]|NaN|TypeError:|RangeError:|\n|\bat \//;

/** A caught error: what `fn` threw. */
function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  assert.fail('expected an error');
}

/** An fs error as Node makes it (code, errno, syscall, path). */
function fsError(): Error {
  return thrown(() => readlinkSync('/nonexistent-ferry-test/fd/0')) as Error;
}

describe('the line and JSON fields of each kind of error', { timeout: 30_000 }, () => {
  it('a usage error: status 2, EUSAGE', () => {
    const o = outcome(new UsageError('checkpoint', '--pid needs a positive integer, got "abc"'), {});
    assert.deepEqual(o, { status: 2, code: 'EUSAGE', message: '--pid needs a positive integer, got "abc"', context: {} });
  });

  it("one of ferry's own: status 1, its code, and what it is about", () => {
    const err = new FerryError('ELEAK', 'pid 42 fd 7 -> pipe:[1] is also held outside the checkpointed tree', { pid: 42, fd: 7, path: '/x' });
    assert.deepEqual(outcome(err, { doing: 'checkpointing pid 42' }),
      { status: 1, code: 'ELEAK', message: err.message, context: { pid: 42, fd: 7, path: '/x' } });
  });

  it('an image error that names no file is about the command\'s image', () => {
    assert.deepEqual(outcome(new FerryError('EIMAGE', 'image entry tree.json is invalid: …'), { image: '/a.tar' }).context, { path: '/a.tar' });
    assert.deepEqual(outcome(new FerryError('EKERNEL', 'image was made on kernel 5.10'), { image: '/a.tar' }).context, { path: '/a.tar' });
    assert.deepEqual(outcome(new FerryError('EIMAGE', 'cannot read image /b.tar', { path: '/b.tar' }), { image: '/a.tar' }).context, { path: '/b.tar' });
    assert.deepEqual(outcome(new FerryError('EPIDINUSE', 'pid 4 is in use', { pid: 4 }), { image: '/a.tar' }).context, { pid: 4 });
  });

  it('a message of several lines still makes one line', () => {
    assert.equal(outcome(new FerryError('EIMAGE', 'first\n  second'), {}).message, 'first second');
  });

  it('an engine error is a bug: named by class and what ferry was doing, never by its words', () => {
    const o = outcome(new TypeError('x.kind.padEnd is not a function'), { doing: 'inspecting /tmp/a.tar' });
    assert.equal(o.status, INTERNAL_STATUS);
    assert.equal(o.code, 'EINTERNAL');
    assert.equal(o.message, 'internal error (TypeError) while inspecting /tmp/a.tar; this is a bug in ferry: '
      + 'run it again with --log-file FILE for the details, and report it');
    const deep = outcome(new RangeError('Maximum call stack size exceeded'), {});
    assert.match(deep.message, /^internal error \(RangeError\); this is a bug in ferry/);
    assert.doesNotMatch(deep.message, RAW);
    assert.match(outcome('a string', {}).message, /^internal error \(a string\)/);
  });

  it('points to the log file when one has the details', () => {
    const ctx = { logFile: '/var/log/ferry.log', logger: { isLevelEnabled: () => true } } as unknown as RunContext;
    assert.match(outcome(new TypeError('boom'), { ctx }).message, /this is a bug in ferry: details are in \/var\/log\/ferry\.log$/);
  });

  it('a syscall ferry did not expect: which one, on what, errno; the file as path', () => {
    const o = outcome(fsError(), { doing: 'checkpointing pid 1' });
    assert.equal(o.status, INTERNAL_STATUS);
    assert.equal(o.code, 'EINTERNAL');
    assert.match(o.message, /^unexpected failure while checkpointing pid 1: readlink \/nonexistent-ferry-test\/fd\/0: ENOENT; this is a bug in ferry/);
    assert.deepEqual(o.context, { path: '/nonexistent-ferry-test/fd/0' });
  });

  it("one of ferry's own caused by a bug says so", () => {
    const err = new FerryError('ERESTORE', `restore of pid 7 failed: ${describeCause(new TypeError('a is not a function'))} (nothing was left running)`,
      { cause: new TypeError('a is not a function') });
    const o = outcome(err, {});
    assert.equal(o.status, 1);
    assert.equal(o.message, 'restore of pid 7 failed: internal error (TypeError) (nothing was left running); this is a bug in ferry: '
      + 'run it again with --log-file FILE for the details, and report it');
  });

  it('the JSON object: code and message first, then only the context there is', () => {
    assert.equal(JSON.stringify(errorObject('EIMAGE', 'm', { path: '/a.tar' })), '{"error":{"code":"EIMAGE","message":"m","path":"/a.tar"}}');
    assert.equal(JSON.stringify(errorObject('E', 'm', { fd: 3, pid: 9 })), '{"error":{"code":"E","message":"m","pid":9,"fd":3}}');
    assert.equal(JSON.stringify(errorObject('EUSAGE', 'm')), '{"error":{"code":"EUSAGE","message":"m"}}');
  });
});

describe('where an error goes as JSON', { timeout: 30_000 }, () => {
  it('stdout with --json, stderr for checkpoint --image -, nowhere without it', () => {
    assert.equal(jsonErrorStream('restore', ['--image', 'x', '--json']), 1);
    assert.equal(jsonErrorStream('inspect', ['--json', '--frob']), 1, 'even on a wrong line');
    assert.equal(jsonErrorStream('checkpoint', ['--pid', '1', '--image', 'x', '--json']), 1);
    assert.equal(jsonErrorStream('checkpoint', ['--pid', '1', '--image', '-', '--json']), 2);
    assert.equal(jsonErrorStream('checkpoint', ['--image=-', '--json']), 2);
    assert.equal(jsonErrorStream('checkpoint', ['--image-path', '-', '--json']), 2);
    assert.equal(jsonErrorStream('demo', ['--json']), 1);
    assert.equal(jsonErrorStream('version', ['--json']), 1);
    assert.equal(jsonErrorStream('restore', ['--image', 'x']), undefined);
    assert.equal(jsonErrorStream('restore', ['--', '--json']), undefined, 'not after --');
    assert.equal(jsonErrorStream('help', ['--json']), undefined, 'help has no --json');
    assert.equal(jsonErrorStream('', ['frob', '--json']), 1, 'the top level, before a command is known');
  });
});

describe('errors.ts', { timeout: 30_000 }, () => {
  it('FerryError keeps its constructor and carries pid, fd and path', () => {
    const plain = new FerryError('EX', 'm');
    assert.equal(plain.code, 'EX');
    assert.ok(!('cause' in plain) && !('pid' in plain) && !('fd' in plain) && !('path' in plain));
    const cause = new Error('c');
    const full = new FerryError('EX', 'm', { cause, pid: 1, fd: 2, path: '/p' });
    assert.equal(full.cause, cause);
    assert.deepEqual([full.pid, full.fd, full.path], [1, 2, '/p']);
  });

  it('describeCause: syscall and errno, ferry\'s own message, never the engine\'s words', () => {
    assert.equal(describeCause(fsError()), 'readlink: ENOENT');
    assert.equal(describeCause(new FerryError('E', 'own words')), 'own words');
    assert.equal(describeCause(new Error('short read of memory of pid 4\nmore')), 'short read of memory of pid 4');
    assert.equal(describeCause(new TypeError('x is not a function')), 'internal error (TypeError)');
    assert.equal(describeCause(thrown(() => JSON.parse('{'))), 'not valid JSON');
    assert.equal(describeCause(thrown(() => BigInt('zz'))), 'internal error (SyntaxError)');
  });

  it('internal errors are found along the cause chain', () => {
    assert.ok(isInternalError(new RangeError('x')));
    assert.ok(!isInternalError(new FerryError('E', 'x')));
    assert.ok(!isInternalError(fsError()));
    assert.ok(!isInternalError(thrown(() => JSON.parse('{'))), 'bad JSON is bad input');
    const bug = new TypeError('x');
    assert.equal(internalCause(new FerryError('E', 'a', { cause: new FerryError('E', 'b', { cause: bug }) })), bug);
    assert.equal(internalCause(new FerryError('E', 'a', { cause: fsError() })), undefined);
  });
});

/** A valid task record of pid 100 with one thread (the shape of src/image/records.ts). */
function task(): Record<string, unknown> {
  const pair = [0, 0];
  return {
    pid: 100, ppid: 1, pgid: 100, sid: 100, comm: 'w', exe: '/bin/w', umask: 18,
    // Chroot'ed into a removed root, in a removed working directory two below it (cwdBetween).
    cwd: '/srv/jail/a/sub', root: '/srv/jail', rootDeleted: { mode: 0o751, uid: 0, gid: 0, dev: '8', ino: '5' },
    cwdDeleted: { mode: 0o710, uid: 0, gid: 0, dev: '8', ino: '7' }, cwdBetween: [{ mode: 0o755, uid: 0, gid: 0, dev: '8', ino: '6' }],
    mm: {
      ...Object.fromEntries(['startCode', 'endCode', 'startData', 'endData', 'startBrk', 'brk', 'startStack', 'argStart',
        'argEnd', 'envStart', 'envEnd'].map((k) => [k, '0x1000'])),
      auxv: [['0x6', '0x1000'], ['0x0', '0x0']],
    },
    vmas: [
      { start: '0x1000', end: '0x3000', prot: 5, shared: false, kind: 'file', name: '/bin/w', vmflags: [], runs: [[0, 1]], pagesOffset: 0, cow: [[1, 1]],
        file: { path: '/bin/w', offset: '0x0', dev: '8:1', ino: '12', size: 8192, mtimeNs: '1700000000000000000' } },
      // Its page lent through the grandparent (image/cow.ts lentThrough).
      { start: '0x7000', end: '0x8000', prot: 3, shared: false, kind: 'anon', name: '[stack]', vmflags: ['gd'], runs: [[0, 1]], pagesOffset: 4096, lent: [[0, 1]], lentThrough: 2 },
      // An io_setup(2) ring of one page with one unreaped event.
      { start: '0x9000', end: '0xa000', prot: 3, shared: true, kind: 'aio', name: '/[aio]', vmflags: [], runs: [], pagesOffset: 8192,
        aio: { nr: 127, events: Buffer.alloc(32, 1).toString('base64') } },
    ],
    sigactions: [{ signo: 10, handler: '0x1', flags: '0x0', restorer: '0x0', mask: '0x0' }],
    sharedPending: [{ signo: 10, siginfo: Buffer.alloc(128).toString('base64') }],
    itimers: {
      real: { interval: pair, value: pair }, virtual: { interval: pair, value: pair }, prof: { interval: pair, value: pair },
      posix: [{ id: 0, clock: 1, notify: 'signal', thread: null, signo: 14, value: '0x0', interval: pair, remaining: pair, overrun: 0 }],
    },
    stopped: false,
    // The second thread has a root, working directory and umask of its own (unshare(CLONE_FS))
    // and a descriptor table of its own (unshare(CLONE_FILES)).
    threads: [100, 101].map((tid) => ({
      tid, regs: Object.fromEntries(REG_NAMES.map((r) => [r, '0x0'])), xstate: `tasks/100/xstate-${tid}.bin`, sigmask: '0x0',
      sigaltstack: { sp: '0x0', flags: 2, size: '0x0' }, rseq: null, robustList: { head: '0x0', len: 24 }, tidAddress: '0x0',
      comm: 'w', pending: [],
      ...(tid === 101 ? { fs: { cwd: '/tmp', root: '/srv', umask: 63 }, fds: [{ fd: 0, file: 1, cloexec: false }, { fd: 3, file: 1, cloexec: true }] } : {}),
    })),
    fds: [{ fd: 0, file: 1, cloexec: false }],
    pagesBytes: 8192,
    creds: {
      rlimits: Array.from({ length: 16 }, () => ['0x0', '0xffffffffffffffff']), oomScoreAdj: 0, dumpable: 1, childSubreaper: false,
      seccompFilters: [{ flags: 0, program: Buffer.alloc(8).toString('base64') }],
      threads: [100, 101].map((tid) => ({
        tid, uids: [0, 0, 0, 0], gids: [0, 0, 0, 0], groups: [], caps: Object.fromEntries(['effective', 'permitted', 'inheritable', 'bounding', 'ambient'].map((k) => [k, '0x0'])),
        securebits: 0, noNewPrivs: false, personality: 0, sched: { policy: 0, priority: 0, nice: 0, resetOnFork: false },
        affinity: [0], pdeathsig: 0, seccomp: [0],
      })),
    },
  };
}

const manifest = (): Record<string, unknown> => ({
  format: 'ferry-image', formatVersion: 1, ferryVersion: '0.1.0', createdAt: '2024-01-01T00:00:00.000Z',
  host: {
    kernelRelease: '6.1', kernelVersion: '#1', arch: 'x86_64', vdsoSha256: 'ab'.repeat(32),
    vdsoLayout: [{ name: '[vdso]', size: 8192 }], xfeatures: '0xe7', xstateSize: 2432,
  },
  root: { pid: 100 }, tasks: [100], entries: [{ name: 'tree.json', size: 1, sha256: 'a'.repeat(64) }],
});
const tree = (): Record<string, unknown> => ({ root: 100, processes: [{ pid: 100, ppid: 1, pgid: 100, sid: 100, zombie: null }] });
const files = (): Record<string, unknown> => ({ files: [{ id: 1, kind: 'chr', path: '/dev/null' }] });

/** Every path into `v` (the first two items of each list). */
function paths(v: unknown, at: Array<string | number> = [], out: Array<Array<string | number>> = []): Array<Array<string | number>> {
  if (at.length > 0) out.push(at);
  if (Array.isArray(v)) v.slice(0, 2).forEach((x, i) => paths(x, [...at, i], out));
  else if (typeof v === 'object' && v !== null) for (const [k, x] of Object.entries(v)) paths(x, [...at, k], out);
  return out;
}

/** `doc` with the value at `path` replaced by `value` (removed when undefined). */
function edit(doc: unknown, path: Array<string | number>, value: unknown): unknown {
  const copy = structuredClone(doc) as Record<string | number, unknown>;
  let o = copy;
  for (const k of path.slice(0, -1)) o = o[k] as Record<string | number, unknown>;
  const last = path.at(-1)!;
  if (value !== undefined) o[last] = value;
  else if (Array.isArray(o)) o.splice(last as number, 1);
  else delete o[last];
  return copy;
}

/** Stands for a list nested 100000 deep in ODD. */
const DEEP = '(nested 100000 deep)';

/** The JSON text of a list nested `n` deep (JSON.stringify would overflow the stack). */
const deepText = (n: number): string => `${'['.repeat(n)}1${']'.repeat(n)}`;

/** A list nested `n` deep. */
function nested(n: number): unknown {
  let v: unknown = 1;
  for (let i = 0; i < n; i++) v = [v];
  return v;
}

/** Wrong types, huge numbers, missing fields, deep nesting: what a hand-edited image holds. */
const ODD: Array<[string, unknown]> = [
  ['missing', undefined], ['null', null], ['a string', 'x'], ['1e300', 1e300], ['-1', -1], ['2^60', 2 ** 60],
  ['an object', {}], ['a list', []], ['true', true], ['1.5', 1.5], [DEEP, DEEP],
];

describe('edited image records give one line naming the field', { timeout: 120_000 }, () => {
  const cases: Array<[string, () => unknown, (v: unknown) => unknown]> = [
    ['tasks/100/task.json', task, (v) => validateTask(v, 100)],
    ['tree.json', tree, (v) => validateTree(v, 100, [100])],
    ['files.json', files, (v) => validateFiles(v)],
    // The manifest is parsed from its text; a nested value is spliced into it as text.
    ['manifest.json', manifest, (v) => parseManifest(Buffer.from(JSON.stringify(v).replace(`"${DEEP}"`, deepText(100_000))))],
  ];
  for (const [entry, make, check] of cases) {
    it(entry, () => {
      const base = make();
      check(base); // the unedited record is valid
      let refused = 0;
      for (const path of [[], ...paths(base)]) {
        for (const [what, value] of ODD) {
          if (path.length === 0 && value === undefined) continue;
          const odd = value === DEEP && entry !== 'manifest.json' ? nested(100_000) : value;
          const doc = path.length === 0 ? odd : edit(base, path, odd);
          const err = attempt(() => check(doc));
          if (err === undefined) continue;
          refused++;
          const where = `${path.join('.') || '(the whole record)'} = ${what}`;
          assert.ok(err instanceof FerryError, `${where}: ${String(err)}`);
          assert.match(err.code, /^E(IMAGE|FORMAT)$/, where);
          assert.doesNotMatch(err.message, RAW, where);
        }
      }
      assert.ok(refused > 0);
    });
  }

  it('task.json lentThrough: 2 to 1024 generations up, and only on an area that lends', () => {
    const withStack = (over: Record<string, unknown>): Record<string, unknown> => {
      const t = task();
      const vmas = t.vmas as Array<Record<string, unknown>>;
      vmas[1] = { ...vmas[1], ...over };
      return t;
    };
    const bad = (over: Record<string, unknown>, why: RegExp): void => {
      assert.throws(() => validateTask(withStack(over), 100), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'EIMAGE');
        assert.match(err.message, why);
        return true;
      });
    };
    validateTask(withStack({ lentThrough: 1024 }), 100);
    bad({ lent: undefined }, /vmas\[1\] names whom it lends pages through \(lentThrough\) but lends none/);
    bad({ lentThrough: 1 }, /lentThrough/);
    bad({ lentThrough: 1025 }, /lentThrough/);
  });

  it('task.json cwdBetween: one removed directory for each name of cwd between root and its last, each name one plain component', () => {
    const bad = (patch: Record<string, unknown>, why: RegExp): void => {
      assert.throws(() => validateTask({ ...task(), ...patch }, 100), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'EIMAGE');
        assert.match(err.message, /^image entry tasks\/100\/task.json is invalid: /);
        assert.match(err.message, why);
        return true;
      });
    };
    bad({ cwd: '/srv/jail/sub' }, /cwd "\/srv\/jail\/sub" has 1 names below root, where cwdBetween \(1 directories\) wants 2/);
    bad({ cwd: '/srv/jail/a/b/sub' }, /has 3 names below root, where cwdBetween \(1 directories\) wants 2/);
    bad({ cwd: '/srv/jail/../sub' }, /cwd "\/srv\/jail\/..\/sub" has ".." as a name below root, which is not one directory's name/);
    bad({ cwd: '/srv/jail/./sub' }, /has "." as a name below root/);
    bad({ cwd: '/srv/jail//sub' }, /has "" as a name below root/);
    bad({ cwd: `/srv/jail/${'x'.repeat(256)}/sub` }, /as a name below root, which is not one directory's name/);
    bad({ cwd: '/srv/other/a/sub' }, /cwdBetween is there but cwd "\/srv\/other\/a\/sub" is not below root "\/srv\/jail"/);
    bad({ cwdDeleted: undefined }, /cwdBetween is there but cwdDeleted \(with dev and ino\), root or rootDeleted is not/);
    bad({ rootDeleted: undefined }, /cwdBetween is there but cwdDeleted/);
    bad({ cwdBetween: [] }, /cwdBetween must be a list of 1 to 63 items/);
    bad({ cwdBetween: Array.from({ length: 64 }, (_, i) => ({ mode: 0o755, uid: 0, gid: 0, dev: '8', ino: String(10 + i) })) }, /cwdBetween must be a list of 1 to 63 items/);
    bad({ cwdBetween: [{ mode: 0o755, uid: 0, gid: 0 }] }, /cwdBetween\[0\]\.dev must be a string of at most 20 decimal digits/);
    validateTask({ ...task(), cwd: `/srv/jail/${'x'.repeat(255)}/sub` }, 100);
  });

  it('a value nested deeper than the reader allows is found without recursion', () => {
    assert.equal(tooDeep({ a: [1, { b: 2 }] }, 32), undefined);
    assert.equal(tooDeep({ files: [{ path: nested(100_000) }] }, 32)?.startsWith('files[0].path[0]'), true);
  });
});

/** What `fn` threw, or undefined when it returned. */
function attempt(fn: () => unknown): unknown {
  try {
    fn();
    return undefined;
  } catch (err) {
    return err;
  }
}
