/**
 * Configuration: a TOML file (smol-toml) -> a validated, deeply frozen `Config`.
 *
 * Every default lives in `DEFAULTS` below and nowhere else; config/ferry.toml documents the
 * same values key by key (a unit test checks that parsing it gives exactly `DEFAULTS`).
 * TOML keys are snake_case (`image.work_dir`), the TypeScript properties camelCase
 * (`config.image.workDir`). Unknown sections or keys and values of the wrong type are errors
 * naming the file and the key, so a typo never silently falls back to a default.
 */
import { existsSync, readFileSync } from 'node:fs';
import { isAbsolute } from 'node:path';
import { parse, TomlError } from 'smol-toml';
import { FerryError } from '../errors.js';

/** Log levels, least to most severe; `silent` logs nothing. */
export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;

/** One of `LOG_LEVELS`. */
export type LogLevel = (typeof LOG_LEVELS)[number];

/** Ferry's configuration, with every default applied. Frozen all the way down. */
export interface Config {
  /** `[log]`: where the details of a run go (the user sees one line; the log has the rest). */
  readonly log: {
    /** `level`: level of records written to the log file. */
    readonly level: LogLevel;
    /** `file`: append JSON log lines (pino) to this absolute path; "" = no log file. */
    readonly file: string;
  };
  /** `[image]`: reading and writing images. */
  readonly image: {
    /** `work_dir`: absolute directory where an image read from stdin is spooled for verification. */
    readonly workDir: string;
    /** `chunk_size`: bytes per I/O chunk of page data, a multiple of 4096 in 64 KiB..256 MiB. */
    readonly chunkSize: number;
    /**
     * `trust`: restore only images signed by these Ed25519 public keys: an absolute path of
     * one SPKI PEM file or of a directory whose `*.pub` files are the keys; "" = any image
     * (a signature present is still verified). `ferry restore --trust` overrides it.
     */
    readonly trust: string;
    /**
     * `sign_key`: Ed25519 private key (absolute path of a PKCS#8 PEM file, as `ferry keygen`
     * writes) that signs every image a checkpoint writes when no `--sign-key` is given; what
     * signs the images of ferry-runtime and the hook, whose callers pass no key. "" = unsigned.
     */
    readonly signKey: string;
    /**
     * `host_key`: this machine's own Ed25519 key (absolute path; made root-only by the first
     * checkpoint that needs it), which signs every image no other key signs. A restore here
     * trusts images it signed (src/image/host-key.ts, docs/security.md). "" = none: images
     * are unsigned unless a key is given, and restores of them are held to the untrusted
     * default bound.
     */
    readonly hostKey: string;
  };
  /** `[files]`: open files. */
  readonly files: {
    /** `deleted_max_bytes`: largest contents of a deleted-but-open file or a memfd stored in an image (bytes). */
    readonly deletedMaxBytes: number;
  };
  /** `[restore]`: restoring processes. */
  readonly restore: {
    /** `stub`: absolute path of the ferry-stub executable; "" = build/Release/ferry-stub of this package. */
    readonly stub: string;
  };
}

/** The built-in defaults: the one place they are written down. */
export const DEFAULTS: Config = deepFreeze({
  log: { level: 'warn', file: '' },
  image: { workDir: '/var/tmp', chunkSize: 8 * 1024 * 1024, trust: '', signKey: '', hostKey: '/var/lib/ferry/host.key' },
  files: { deletedMaxBytes: 64 * 1024 * 1024 },
  restore: { stub: '' },
});

/** The system configuration file, read when present and no other file is given. */
export const SYSTEM_CONFIG = '/etc/ferry/config.toml';

/** Smallest and largest `image.chunk_size`. */
const CHUNK_MIN = 64 * 1024;
const CHUNK_MAX = 256 * 1024 * 1024;
/** Page size of x86-64: page data is read and written in whole pages. */
const PAGE = 4096;

/**
 * Loads the configuration. With `path`, that file must exist; without, /etc/ferry/config.toml
 * is read if present, else the defaults are returned. Throws FerryError('ECONFIG') naming the
 * file and the key for anything wrong.
 */
export function loadConfig(options: { path?: string }): Config {
  const path = options.path ?? (existsSync(SYSTEM_CONFIG) ? SYSTEM_CONFIG : undefined);
  if (path === undefined) return DEFAULTS;
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'is a directory' : code ?? String(err);
    throw new FerryError('ECONFIG', `config ${path}: cannot read it: ${why}`, { cause: err });
  }
  return parseConfigText(text, path);
}

/** Parses and validates the text of a TOML config file; `where` names it in errors. */
export function parseConfigText(text: string, where: string): Config {
  let doc: Record<string, unknown>;
  try {
    doc = parse(text);
  } catch (err) {
    if (err instanceof TomlError) {
      const reason = err.message.split('\n')[0]!.replace(/^Invalid TOML document: /, '');
      throw new FerryError('ECONFIG', `config ${where}: not valid TOML at line ${err.line}, column ${err.column}: ${reason}`, { cause: err });
    }
    throw err;
  }
  return validateConfig(doc, where);
}

/** How a value of a key is checked; returns the value for the Config or throws a message. */
type Check = (value: unknown) => string | number;

/** One TOML key: its TS property and its check. */
interface KeySpec {
  readonly prop: string;
  readonly check: Check;
}

/** Thrown by checks; turned into a FerryError naming file and key. */
class Invalid extends Error {}

const describe = (v: unknown): string => {
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (Array.isArray(v)) return 'an array';
  if (v instanceof Date) return 'a date';
  return 'a table';
};

const string: Check = (v) => {
  if (typeof v !== 'string') throw new Invalid(`must be a string, got ${describe(v)}`);
  return v;
};

/** An absolute path, or "" when `emptyOk`. */
const path = (emptyOk: boolean): Check => (v) => {
  const s = string(v) as string;
  if (s === '' && emptyOk) return s;
  if (!isAbsolute(s)) throw new Invalid(`must be an absolute path${emptyOk ? ' or ""' : ''}, got ${describe(v)}`);
  return s;
};

const level: Check = (v) => {
  const s = string(v) as string;
  if (!(LOG_LEVELS as readonly string[]).includes(s)) throw new Invalid(`must be one of ${LOG_LEVELS.join(', ')}, got ${describe(v)}`);
  return s;
};

const chunk: Check = (v) => {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < CHUNK_MIN || v > CHUNK_MAX || v % PAGE !== 0) {
    throw new Invalid(`must be an integer multiple of ${PAGE} from ${CHUNK_MIN} to ${CHUNK_MAX} (64 KiB..256 MiB), got ${describe(v)}`);
  }
  return v;
};

const bytes: Check = (v) => {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new Invalid(`must be a number of bytes (an integer >= 0), got ${describe(v)}`);
  return v;
};

/** Every section and key: TOML name -> TS property and check. Defaults are in DEFAULTS. */
const SCHEMA: Readonly<Record<keyof Config, Readonly<Record<string, KeySpec>>>> = {
  log: {
    level: { prop: 'level', check: level },
    file: { prop: 'file', check: path(true) },
  },
  image: {
    work_dir: { prop: 'workDir', check: path(false) },
    chunk_size: { prop: 'chunkSize', check: chunk },
    trust: { prop: 'trust', check: path(true) },
    sign_key: { prop: 'signKey', check: path(true) },
    host_key: { prop: 'hostKey', check: path(true) },
  },
  files: {
    deleted_max_bytes: { prop: 'deletedMaxBytes', check: bytes },
  },
  restore: {
    stub: { prop: 'stub', check: path(true) },
  },
};

const isTable = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Date);

/**
 * Validates a parsed TOML document against the schema, applies the defaults and freezes the
 * result. `where` names the file in errors: `config /etc/ferry/config.toml: unknown key image.wrk_dir`.
 */
export function validateConfig(doc: Record<string, unknown>, where: string): Config {
  const fail = (what: string): never => {
    throw new FerryError('ECONFIG', `config ${where}: ${what}`);
  };
  const out: Record<string, Record<string, unknown>> = {};
  for (const [section, value] of Object.entries(doc)) {
    const keys = (SCHEMA as Record<string, Readonly<Record<string, KeySpec>> | undefined>)[section];
    if (keys === undefined) fail(isTable(value) ? `unknown section [${section}]` : `unknown key ${section}`);
    if (!isTable(value)) fail(`${section} must be a table ([${section}]), got ${describe(value)}`);
  }
  for (const [section, keys] of Object.entries(SCHEMA)) {
    const table = (doc[section] ?? {}) as Record<string, unknown>;
    const values: Record<string, unknown> = { ...(DEFAULTS as unknown as Record<string, Record<string, unknown>>)[section] };
    for (const [key, value] of Object.entries(table)) {
      const spec = keys[key];
      if (spec === undefined) fail(`unknown key ${section}.${key}`);
      try {
        values[spec!.prop] = spec!.check(value);
      } catch (err) {
        if (err instanceof Invalid) fail(`${section}.${key} ${err.message}`);
        throw err;
      }
    }
    out[section] = values;
  }
  return deepFreeze(out as unknown as Config);
}

/** Freezes an object and every object inside it. */
function deepFreeze<T>(o: T): T {
  if (typeof o === 'object' && o !== null && !Object.isFrozen(o)) {
    for (const v of Object.values(o)) deepFreeze(v);
    Object.freeze(o);
  }
  return o;
}
