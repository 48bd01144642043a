/** Configuration: defaults, config/ferry.toml, overrides, and every kind of mistake in a file. */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, describe, it } from 'node:test';
import {
  DEFAULTS, loadConfig, parseConfigText, SYSTEM_CONFIG, type Config,
} from '../../src/config/config.js';
import { FerryError } from '../../src/errors.js';

/** The package root: this file runs as <root>/dist/test/unit/config-load.test.js. */
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

const dir = mkdtempSync(join(tmpdir(), 'ferry-config-test-'));
after(() => rmSync(dir, { recursive: true, force: true }));

let n = 0;
/** Writes `text` to a fresh file and loads it. */
function load(text: string): Config {
  const f = join(dir, `c${n++}.toml`);
  writeFileSync(f, text);
  return loadConfig({ path: f });
}

/** Asserts that loading `text` fails with FerryError ECONFIG and exactly `message` after the file name. */
function rejects(text: string, message: string | RegExp): void {
  const f = join(dir, `c${n++}.toml`);
  writeFileSync(f, text);
  assert.throws(() => loadConfig({ path: f }), (err: unknown) => {
    assert.ok(err instanceof FerryError, String(err));
    assert.equal(err.code, 'ECONFIG');
    assert.ok(!err.message.includes('\n'), `one line: ${err.message}`);
    if (typeof message === 'string') assert.equal(err.message, `config ${f}: ${message}`);
    else assert.match(err.message, message);
    return true;
  });
}

describe('config defaults', { timeout: 30_000 }, () => {
  it('has the documented built-in values, frozen all the way down', () => {
    assert.deepEqual(DEFAULTS, {
      log: { level: 'warn', file: '' },
      image: { workDir: '/var/tmp', chunkSize: 8388608, trust: '', signKey: '', hostKey: '/var/lib/ferry/host.key' },
      files: { deletedMaxBytes: 67108864 },
      restore: { stub: '' },
    });
    assert.ok(Object.isFrozen(DEFAULTS) && Object.isFrozen(DEFAULTS.log) && Object.isFrozen(DEFAULTS.image)
      && Object.isFrozen(DEFAULTS.files) && Object.isFrozen(DEFAULTS.restore));
  });

  it('config/ferry.toml sets every key, to exactly the built-in defaults', () => {
    const path = join(ROOT, 'config', 'ferry.toml');
    assert.deepEqual(loadConfig({ path }), DEFAULTS);
    // Every key is written out (not just left to the defaults): each appears uncommented.
    const text = readFileSync(path, 'utf8');
    for (const key of ['level', 'file', 'work_dir', 'chunk_size', 'trust', 'sign_key', 'deleted_max_bytes', 'stub']) assert.match(text, new RegExp(`^${key} = `, 'm'), key);
    for (const section of ['log', 'image', 'files', 'restore']) assert.match(text, new RegExp(`^\\[${section}\\]$`, 'm'), section);
  });

  it('without a path, reads /etc/ferry/config.toml only when present', { skip: existsSync(SYSTEM_CONFIG) && `${SYSTEM_CONFIG} exists on this machine` }, () => {
    assert.equal(loadConfig({}), DEFAULTS);
  });
});

describe('config files', { timeout: 30_000 }, () => {
  it('reads every key, converting snake_case to camelCase, and keeps defaults for the rest', () => {
    const c = load('[log]\nlevel = "debug"\nfile = "/var/log/ferry.log"\n[image]\nwork_dir = "/srv/ferry"\nchunk_size = 1048576\ntrust = "/etc/ferry/trusted"\n[files]\ndeleted_max_bytes = 1024\n[restore]\nstub = "/opt/ferry/ferry-stub"\n');
    assert.deepEqual(c, {
      log: { level: 'debug', file: '/var/log/ferry.log' },
      image: { workDir: '/srv/ferry', chunkSize: 1048576, trust: '/etc/ferry/trusted', signKey: '', hostKey: '/var/lib/ferry/host.key' },
      files: { deletedMaxBytes: 1024 },
      restore: { stub: '/opt/ferry/ferry-stub' },
    });
    assert.ok(Object.isFrozen(c) && Object.isFrozen(c.image));
    assert.throws(() => { (c.image as { workDir: string }).workDir = '/x'; }, TypeError);

    const partial = load('[image]\nchunk_size = 65536\n');
    assert.equal(partial.image.chunkSize, 65536);
    assert.equal(partial.image.workDir, DEFAULTS.image.workDir);
    assert.deepEqual(partial.log, DEFAULTS.log);
    assert.deepEqual(load(''), DEFAULTS);
    assert.deepEqual(load('# only a comment\n[log]\n'), DEFAULTS);
  });

  it('accepts the limits of image.chunk_size', () => {
    assert.equal(load('[image]\nchunk_size = 268435456\n').image.chunkSize, 268435456);
    assert.equal(load('image.chunk_size = 65536\n').image.chunkSize, 65536);
  });

  it('names unknown keys and sections', () => {
    rejects('[image]\nwrk_dir = "/x"\n', 'unknown key image.wrk_dir');
    rejects('[log]\nlevel = "info"\nverbose = true\n', 'unknown key log.verbose');
    rejects('[logging]\nlevel = "info"\n', 'unknown section [logging]');
    rejects('level = "info"\n', 'unknown key level');
  });

  it('names wrong types and values out of range, with what was found', () => {
    rejects('[image]\nchunk_size = "big"\n', /^config .*: image\.chunk_size must be an integer multiple of 4096 from 65536 to 268435456 .*, got "big"$/);
    rejects('[image]\nchunk_size = 4096\n', /image\.chunk_size must be .*, got 4096$/);
    rejects('[image]\nchunk_size = 268439552\n', /image\.chunk_size must be .*, got 268439552$/);
    rejects('[image]\nchunk_size = 100000\n', /image\.chunk_size must be an integer multiple of 4096/);
    rejects('[image]\nchunk_size = 65536.5\n', /image\.chunk_size must be/);
    rejects('[log]\nlevel = "loud"\n', 'log.level must be one of trace, debug, info, warn, error, fatal, silent, got "loud"');
    rejects('[log]\nlevel = 3\n', 'log.level must be a string, got 3');
    rejects('[log]\nfile = "ferry.log"\n', 'log.file must be an absolute path or "", got "ferry.log"');
    rejects('[image]\nwork_dir = ""\n', 'image.work_dir must be an absolute path, got ""');
    rejects('[image]\nwork_dir = ["/a"]\n', 'image.work_dir must be a string, got an array');
    rejects('[restore]\nstub = true\n', 'restore.stub must be a string, got true');
    rejects('[image]\ntrust = "keys"\n', 'image.trust must be an absolute path or "", got "keys"');
    rejects('[image]\ntrust = ["/a.pub"]\n', 'image.trust must be a string, got an array');
    rejects('log = 3\n', 'log must be a table ([log]), got 3');
  });

  it('reports TOML syntax errors with line and column', () => {
    rejects('[log]\nlevel = "warn"\n[image\n', /^config .*: not valid TOML at line 3, column \d+: .+$/);
    rejects('[log]\nlevel = "warn"\nlevel = "info"\n', /not valid TOML at line 3/);
  });

  it('requires a file given explicitly to exist', () => {
    const missing = join(dir, 'missing.toml');
    assert.throws(() => loadConfig({ path: missing }), (err: unknown) =>
      err instanceof FerryError && err.code === 'ECONFIG' && err.message === `config ${missing}: cannot read it: no such file`);
    assert.throws(() => loadConfig({ path: dir }), /^FerryError: config .*: cannot read it: is a directory$/);
  });

  it('parses text directly, naming the source in errors', () => {
    assert.equal(parseConfigText('[log]\nlevel = "error"\n', 'inline').log.level, 'error');
    assert.throws(() => parseConfigText('[x]\n', 'inline'), /^FerryError: config inline: unknown section \[x\]$/);
  });
});
