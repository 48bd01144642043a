/**
 * The real launcher, bin/ferry, as a child process: manual pages, version, exit statuses and
 * the one-line errors, logging to a file and to stderr, the root check. Nothing here needs
 * the native addon.
 */
import assert from 'node:assert/strict';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, describe, it } from 'node:test';
import { closeInheritedFds } from '../../src/proc/inherited.js';

// What it spawns starts with descriptors 0-2 only, whatever the shell leaked (src/proc/inherited.ts).
closeInheritedFds();

/** The package root: this file runs as <root>/dist/test/unit/cli-bin.test.js. */
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const FERRY = join(ROOT, 'bin', 'ferry');
const VERSION = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;

const dir = mkdtempSync(join(tmpdir(), 'ferry-cli-bin-test-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** Runs bin/ferry with `args` (stdin empty) and returns the result as text. */
function ferry(args: string[], options: { env?: NodeJS.ProcessEnv; uid?: number; gid?: number } = {}): SpawnSyncReturns<string> {
  return spawnSync(FERRY, args, { encoding: 'utf8', input: '', timeout: 30_000, ...options });
}

/** The lines of a stream's text, without the final newline. */
const lines = (text: string): string[] => text.replace(/\n$/, '').split('\n').filter((l, i, all) => l !== '' || all.length > 1);

const COMMAND_PAGES = ['checkpoint', 'restore', 'inspect', 'keygen', 'check', 'demo', 'version'];

describe('bin/ferry manual pages', { timeout: 60_000 }, () => {
  it('--help shows the overview page with every command', () => {
    for (const args of [['--help'], ['-h'], ['help'], ['help', 'help']]) {
      const r = ferry(args);
      assert.equal(r.status, 0, `${args.join(' ')}: ${r.stderr}`);
      assert.equal(r.stderr, '');
      for (const section of ['NAME', 'SYNOPSIS', 'DESCRIPTION', 'COMMANDS', 'GLOBAL OPTIONS', 'EXIT STATUS', 'EXAMPLES']) {
        assert.match(r.stdout, new RegExp(`^${section}$`, 'm'), `${args.join(' ')}: ${section}`);
      }
      assert.match(r.stdout, /^ {2}ferry checkpoint --pid PID --image PATH \[--leave-running\] \[--json\]$/m);
      assert.match(r.stdout, /^ {2}ferry restore --image PATH \[--pid-file FILE\] \[--json\]$/m);
    }
  });

  it('every command has a man-page-style page, the same through --help, -h and help COMMAND', () => {
    for (const cmd of COMMAND_PAGES) {
      const r = ferry([cmd, '--help']);
      assert.equal(r.status, 0, `${cmd}: ${r.stderr}`);
      for (const section of ['NAME', 'SYNOPSIS', 'DESCRIPTION', 'OPTIONS', 'GLOBAL OPTIONS', 'EXIT STATUS', 'EXAMPLES']) {
        assert.match(r.stdout, new RegExp(`^${section}$`, 'm'), `${cmd}: ${section}`);
      }
      assert.match(r.stdout, new RegExp(`^ {2}ferry ${cmd} - `, 'm'));
      for (const opt of ['--log-level LEVEL', '--log-file FILE', '--config FILE', '-h, --help']) assert.ok(r.stdout.includes(opt), `${cmd}: ${opt}`);
      assert.equal(ferry([cmd, '-h']).stdout, r.stdout);
      assert.equal(ferry(['help', cmd]).stdout, r.stdout);
    }
  });

  it('checkpoint --help documents its options, exit statuses and the stdout form', () => {
    const r = ferry(['checkpoint', '--help']);
    for (const text of ['--pid PID', '--image PATH, --image-path PATH', '--leave-running', '--json', '0    Success.', '1    The operation failed.', '2    Usage error', 'must run as root', '--image -']) {
      assert.ok(r.stdout.includes(text), text);
    }
  });

  it('--help wins over other mistakes on the line', () => {
    const r = ferry(['checkpoint', '--pid', 'abc', '--frob', '--help']);
    assert.equal(r.status, 0);
    assert.match(r.stdout, /ferry checkpoint - capture a running process/);
  });
});

describe('bin/ferry version', { timeout: 60_000 }, () => {
  it('prints the package version, also as JSON', () => {
    for (const args of [['version'], ['--version']]) {
      const r = ferry(args);
      assert.equal(r.status, 0);
      assert.equal(r.stdout, `ferry ${VERSION}\n`);
    }
    assert.deepEqual(JSON.parse(ferry(['version', '--json']).stdout), { version: VERSION });
  });

  it('works with an environment that has no PATH at all', () => {
    const r = ferry(['version'], { env: {} });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, `ferry ${VERSION}\n`);
  });

  it('finds its package from a relative path and through a symlink, and node in PATH first', () => {
    // A relative path is taken with the working directory, without readlink; a symlink is
    // resolved by it (/usr/local/bin/ferry).
    const link = join(dir, 'ferry-link');
    spawnSync('ln', ['-sf', FERRY, link]);
    for (const [cmd, cwd] of [['./bin/ferry', ROOT], ['bin/ferry', ROOT], ['./ferry', join(ROOT, 'bin')], [link, dir]] as const) {
      const r = spawnSync(cmd, ['--version'], { cwd, encoding: 'utf8', input: '', timeout: 30_000 });
      assert.equal(r.status, 0, `${cmd}: ${r.stderr}`);
      assert.equal(r.stdout, `ferry ${VERSION}\n`, cmd);
    }
    // The first node in PATH is the one run (looked for by the script itself), with the start
    // file and the arguments.
    const bin = join(dir, 'path-bin');
    spawnSync('mkdir', ['-p', join(bin, 'node.d'), join(dir, 'empty', 'node')]);
    writeFileSync(join(bin, 'node'), '#!/bin/sh\necho "fake node $*"\n', { mode: 0o755 });
    const r = ferry(['version'], { env: { PATH: `${join(dir, 'empty')}:/nonexistent:${bin}:/usr/bin` } });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^fake node \/.*\/dist\/(bundle\/ferry\/start\.cjs|src\/cli\/main\.js) version\n$/);
  });
});

describe('bin/ferry usage errors (exit status 2)', { timeout: 60_000 }, () => {
  const cases: Array<[string[], string, string]> = [
    [['checkpoint', '--pid', 'abc', '--image', 'x'], 'ferry checkpoint: --pid needs a positive integer, got "abc"', "Try 'ferry checkpoint --help'."],
    [['checkpoint', '--image', 'x'], 'ferry checkpoint: --pid is required (the process to checkpoint), or a container id', "Try 'ferry checkpoint --help'."],
    [['checkpoint', '--pid', '1', '--image', 'x', '--frob'], 'ferry checkpoint: unknown option --frob', "Try 'ferry checkpoint --help'."],
    [['restore'], 'ferry restore: --image is required (a path, or - for standard input)', "Try 'ferry restore --help'."],
    [['inspect', '--image', 'x', '--log-level', 'loud'], 'ferry inspect: --log-level needs one of trace, debug, info, warn, error, fatal, silent, got "loud"', "Try 'ferry inspect --help'."],
    [['help', 'frob'], 'ferry help: unknown command "frob"; the commands are checkpoint, restore, migrate, receive, inspect, keygen, check, demo, version, help', "Try 'ferry help --help'."],
    [[], 'ferry: a command is needed: checkpoint, restore, migrate, receive, inspect, keygen, check, demo, version, help', "Try 'ferry --help'."],
    [['frobnicate'], 'ferry: unknown command "frobnicate"; the commands are checkpoint, restore, migrate, receive, inspect, keygen, check, demo, version, help', "Try 'ferry --help'."],
    [['--log-level', 'debug', 'demo'], 'ferry: unknown option --log-level (options go after the command: ferry COMMAND [OPTIONS])', "Try 'ferry --help'."],
  ];
  for (const [args, first, hint] of cases) {
    it(`ferry ${args.join(' ')}`, () => {
      const r = ferry(args);
      assert.equal(r.status, 2, r.stderr);
      assert.equal(r.stdout, '');
      assert.deepEqual(lines(r.stderr), [first, hint]);
    });
  }
});

describe('bin/ferry failures (exit status 1)', { timeout: 60_000 }, () => {
  const missing = join(dir, 'missing.tar');

  it('prints exactly one line naming what failed', () => {
    const r = ferry(['inspect', '--image', missing]);
    assert.equal(r.status, 1);
    assert.equal(r.stdout, '');
    const err = lines(r.stderr);
    assert.equal(err.length, 1, r.stderr);
    assert.match(err[0]!, /^ferry inspect: .*missing\.tar/);
  });

  it('reports configuration errors with the file and the key', () => {
    const bad = join(dir, 'bad.toml');
    writeFileSync(bad, '[image]\nwrk_dir = "/x"\n');
    let r = ferry(['inspect', '--image', missing, '--config', bad]);
    assert.equal(r.status, 1);
    assert.deepEqual(lines(r.stderr), [`ferry inspect: config ${bad}: unknown key image.wrk_dir`]);
    r = ferry(['inspect', '--image', missing, '--config', join(dir, 'nope.toml')]);
    assert.equal(r.status, 1);
    assert.deepEqual(lines(r.stderr), [`ferry inspect: config ${join(dir, 'nope.toml')}: cannot read it: no such file`]);
  });

  it('writes the details to --log-file as JSON lines, with the cause chain', () => {
    const log = join(dir, 'logs', 'ferry.log');
    const r = ferry(['inspect', '--image', missing, '--log-file', log]);
    assert.equal(r.status, 1);
    assert.equal(lines(r.stderr).length, 1, r.stderr);
    const records = lines(readFileSync(log, 'utf8')).map((l) => JSON.parse(l) as Record<string, unknown>);
    const failure = records.find((rec) => rec.level === 50);
    assert.ok(failure, readFileSync(log, 'utf8'));
    assert.equal(failure.name, 'ferry');
    assert.equal(failure.command, 'inspect');
    const err = failure.err as { type: string; message: string; stack: string };
    assert.equal(err.type, 'FerryError');
    assert.match(err.stack, /\n {4}at /);
    assert.ok(lines(r.stderr)[0]!.endsWith(err.message));
    assert.equal(statSync(log).mode & 0o777, 0o640);
    // A second run appends.
    ferry(['inspect', '--image', missing, '--log-file', log]);
    assert.equal(lines(readFileSync(log, 'utf8')).filter((l) => (JSON.parse(l) as { level: number }).level === 50).length, 2);
  });

  it('logs to stderr only when --log-level is given and there is no log file', () => {
    const quiet = ferry(['inspect', '--image', missing, '--log-level', 'silent']);
    assert.equal(lines(quiet.stderr).length, 1);
    const r = ferry(['inspect', '--image', missing, '--log-level', 'debug']);
    assert.equal(r.status, 1);
    const err = lines(r.stderr);
    assert.match(err.at(-1)!, /^ferry inspect: /);
    const records = err.slice(0, -1).map((l) => JSON.parse(l) as { level: number; msg: string });
    assert.ok(records.some((rec) => rec.level === 20 && rec.msg === 'start'), r.stderr);
    assert.ok(records.some((rec) => rec.level === 50), r.stderr);
  });

  it('refuses to run checkpoint, restore and demo without root, before touching anything', {
    skip: process.getuid?.() !== 0 ? 'needs root to start a child as another user' : false,
  }, (t) => {
    // Run as nobody; the tree must be readable by it (a checkout under a private home is not).
    const probe = ferry(['version'], { uid: 65534, gid: 65534 });
    if (probe.status !== 0) {
      t.skip(`user nobody cannot run ${FERRY} here: ${probe.stderr.trim()}`);
      return;
    }
    for (const args of [['checkpoint', '--pid', '1', '--image', join(dir, 'x.tar')], ['restore', '--image', missing], ['demo']]) {
      const r = ferry(args, { uid: 65534, gid: 65534 });
      assert.equal(r.status, 1, r.stderr);
      assert.deepEqual(lines(r.stderr), [`ferry ${args[0]}: must run as root (ptrace and clone3 with a chosen PID need it)`]);
    }
    // Usage errors are still reported first, with status 2.
    assert.equal(ferry(['checkpoint', '--pid', 'x', '--image', 'y'], { uid: 65534, gid: 65534 }).status, 2);
  });
});

describe('bin/ferry errors as JSON (--json)', { timeout: 60_000 }, () => {
  const missing = join(dir, 'missing.tar');
  /** The one JSON line of `text`, parsed. */
  const json = (text: string): { error: Record<string, unknown> } => {
    assert.equal(lines(text).length, 1, text);
    return JSON.parse(lines(text)[0]!) as { error: Record<string, unknown> };
  };

  it('a failure: the line on stderr, the object on stdout, the same status', () => {
    const plain = ferry(['inspect', '--image', missing]);
    const r = ferry(['inspect', '--image', missing, '--json']);
    assert.equal(r.status, 1);
    assert.equal(r.status, plain.status);
    assert.deepEqual(lines(r.stderr), lines(plain.stderr));
    assert.deepEqual(json(r.stdout), {
      error: { code: 'EIMAGE', message: `cannot read image ${missing}: no such file`, path: missing },
    });
    assert.equal(`ferry inspect: ${json(r.stdout).error.message as string}`, lines(r.stderr)[0]);
  });

  it('a usage error, even on a line that is wrong: EUSAGE, status 2', () => {
    for (const [args, message] of [
      [['checkpoint', '--pid', 'abc', '--image', 'x', '--json'], '--pid needs a positive integer, got "abc"'],
      [['restore', '--json', '--frob'], 'unknown option --frob'],
      [['inspect', '--json'], '--image is required (a path, or - for standard input)'],
      [['version', '--json', 'extra'], 'unexpected argument "extra"'],
      [['frob', '--json'], 'unknown command "frob"; the commands are checkpoint, restore, migrate, receive, inspect, keygen, check, demo, version, help'],
    ] as Array<[string[], string]>) {
      const r = ferry(args);
      assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.deepEqual(json(r.stdout), { error: { code: 'EUSAGE', message } });
      assert.equal(lines(r.stderr).length, 2, r.stderr);
    }
  });

  it('no JSON without --json, nor for help, which has none', () => {
    assert.equal(ferry(['inspect', '--image', missing]).stdout, '');
    const r = ferry(['help', '--json']);
    assert.equal(r.status, 2);
    assert.equal(r.stdout, '');
  });

  it('a configuration error names the file', () => {
    const bad = join(dir, 'bad-json.toml');
    writeFileSync(bad, '[image]\nwrk_dir = "/x"\n');
    const r = ferry(['inspect', '--image', missing, '--config', bad, '--json']);
    assert.equal(r.status, 1);
    const e = json(r.stdout).error;
    assert.equal(e.code, 'ECONFIG');
    assert.equal(e.message, `config ${bad}: unknown key image.wrk_dir`);
  });
});
