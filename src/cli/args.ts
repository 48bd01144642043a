/**
 * argv -> typed options. Pure: no I/O, no process state, so unit tests drive every case.
 *
 * Each command's argv (everything after the command word) is parsed strictly with
 * `node:util` parseArgs: unknown options, missing values and stray arguments are usage errors
 * (exit status 2) whose message names the option. Option names follow runc where one exists
 * (`--image-path`, `--leave-running`, `--pid-file`).
 */
import { parseMaxCreds, type CredsBound } from '../restore/bounds.js';
import { fstatSync } from 'node:fs';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { LOG_LEVELS, type LogLevel } from '../config/config.js';
import type { FileOptions } from '../files/types.js';
import type { CgroupMode } from '../cgroups/restore.js';
import { CONTAINER_ID, isSsh, parseHostPort, parseUrl, type Destination, type Endpoint } from '../migrate/endpoint.js';

/** A mistake in the command line of `command`: one line on stderr, exit status 2. */
export class UsageError extends Error {
  /** Code of every usage error (`--json` reports it as `error.code`). */
  readonly code = 'EUSAGE';
  /** The command whose line is wrong ('' for the top level); names its --help in the hint. */
  readonly command: string;

  constructor(command: string, message: string) {
    super(message);
    this.name = 'UsageError';
    this.command = command;
  }
}

/** The commands of `ferry`. */
export const COMMANDS = ['checkpoint', 'restore', 'migrate', 'receive', 'inspect', 'keygen', 'check', 'demo', 'version', 'help'] as const;

/** One of `COMMANDS`. */
export type Command = (typeof COMMANDS)[number];

/** Options every command accepts. */
export interface GlobalCliOptions {
  /**
   * --log-level: level of log records. With a log file, what is written there (overrides
   * log.level of the config); without one, records of this level go to stderr. Absent:
   * the config's level to the log file, nothing to stderr.
   */
  logLevel?: LogLevel;
  /** --log-file: append JSON log lines here (overrides log.file); "" = no log file. */
  logFile?: string;
  /** --config: read this TOML file (it must exist) instead of /etc/ferry/config.toml. */
  config?: string;
}

/** runc's flags that allow more than the defaults (checkpoint and restore take the same). */
export interface FileFlags {
  /** --tcp-established, --tcp-close, --ext-unix-sk, --shell-job, --file-locks. */
  files: CliFileFlags;
}

/** A container and the runtime that runs it (`ferry checkpoint/restore CONTAINER`). */
export interface ContainerCliOptions {
  /** The container id (the positional argument). */
  id: string;
  /** --runtime: 'runc' (default), 'crun' or a path. */
  runtime: string;
  /** --root: the runtime's state directory, if not its default. */
  root?: string;
}

/** `ferry checkpoint`. */
export interface CheckpointCliOptions extends GlobalCliOptions, FileFlags {
  /** --pid: the process to checkpoint (a process id, not a thread id); 0 with a container. */
  pid: number;
  /** CONTAINER: checkpoint this container instead of a process tree. */
  container?: ContainerCliOptions;
  /** --image (alias --image-path): image file to write; '-' streams it to stdout. */
  image: string;
  /** --leave-running: let the process run on after the checkpoint instead of killing it. */
  leaveRunning: boolean;
  /** --sign-key: sign the image with the Ed25519 private key in this PEM file (ferry keygen's PREFIX.key). */
  signKey?: string;
  /** --json: print the result as one JSON object instead of a sentence. */
  json: boolean;
}

/** `ferry restore`. */
export interface RestoreCliOptions extends GlobalCliOptions, FileFlags {
  /** CONTAINER: restore as this container (with --bundle, --detach). */
  container?: ContainerCliOptions & { bundle?: string; detach: boolean };
  /** --image (alias --image-path): image file to read; '-' reads it from stdin. */
  image: string;
  /** --pid-file: write the PID of the restored process to this file. */
  pidFile?: string;
  /**
   * --trust: restore only an image signed by a key of this file (one .pub) or directory
   * (every *.pub in it); overrides image.trust of the config.
   */
  trust?: string;
  /**
   * --max-creds SPEC: the most the restored processes may get (uids, gids, groups,
   * capabilities, no_new_privs, seccomp, securebits; src/restore/bounds.ts); plain restores
   * only (a container's bound is its bundle's config.json).
   */
  maxCreds?: CredsBound;
  /**
   * --inherit-fd fd[N]:KEY: the caller's descriptor N takes the place of the image's file KEY
   * (its link at checkpoint; one marked --external must be given).
   */
  inherit?: Record<string, number>;
  /**
   * --manage-cgroups[=MODE] (or runc's --manage-cgroups-mode MODE): ignore, soft (the mode of
   * a bare --manage-cgroups), full or strict; absent: ignore (src/cgroups/restore.ts).
   */
  manageCgroups?: CgroupMode;
  /** --json: print the result as one JSON object instead of a sentence. */
  json: boolean;
}

/** `ferry migrate` (docs/migration.md). */
export interface MigrateCliOptions extends GlobalCliOptions {
  /** --pid: the root of the process tree to move; 0 with a container. */
  pid: number;
  /** CONTAINER: move this container instead, and where the target makes it. */
  container?: ContainerCliOptions & {
    /** --target-id: its id on the target (default: the same). */
    targetId?: string;
    /** --target-bundle: the bundle on the target (default: the one the image names). */
    targetBundle?: string;
    /** --target-root: the target runtime's state directory (default: its own default). */
    targetRoot?: string;
  };
  /** --to tcp://HOST:PORT (where `ferry receive` listens) or ssh://[USER@]HOST[:PORT]. */
  to: Destination;
  /** --key: the pre-shared key file both nodes hold (root-only, at least 32 random bytes); tcp:// only. */
  key?: string;
  /** --ssh-config: an ssh configuration file for ssh:// (`ssh -F`). */
  sshConfig?: string;
  /** --sign-key: sign the image with this Ed25519 private key (the target trusts its .pub). */
  signKey?: string;
  /** The runc-style file flags, as checkpoint takes them; the target restores with the same. */
  files: CliFileFlags;
  /**
   * Pre-copy rounds at most: --max-rounds N (1..64, default 8); --no-pre-copy: 0 (stop and
   * copy). Absent: the library's default.
   */
  maxRounds?: number;
  /** --lazy: the target runs the tree before its memory is in, and serves it on first touch. */
  lazy?: boolean;
  /** --json: one JSON record per phase instead of a sentence at the end. */
  json: boolean;
}

/** `ferry receive` (docs/migration.md). */
export interface ReceiveCliOptions extends GlobalCliOptions {
  /** --listen HOST:PORT: where to take migrations (port 0: any free one, printed); absent with --stdio. */
  listen?: Endpoint;
  /** --key: the pre-shared key file both nodes hold; absent with --stdio. */
  key?: string;
  /** --stdio: serve one migration on standard input and output (run by the sender's ssh). */
  stdio: boolean;
  /** --runtime: what makes a migrated container here ('runc', 'crun' or a path). */
  runtime?: string;
  /** --once: take one authenticated migration, then exit with its outcome. */
  once: boolean;
  /** --trust: the senders' public keys (a .pub file or a directory); overrides image.trust. */
  trust?: string;
  /** --max-creds SPEC: the most a migrated process may get (as restore's). */
  maxCreds?: CredsBound;
  /** --json: one JSON record per phase instead of sentences. */
  json: boolean;
}

/** `ferry inspect`. */
export interface InspectCliOptions extends GlobalCliOptions {
  /** --image (alias --image-path): image file to read; '-' reads it from stdin. */
  image: string;
  /** --json: print the report as JSON instead of text. */
  json: boolean;
  /** --verbose: list every memory area in the text report, instead of a sum by kind. */
  verbose: boolean;
}

/** `ferry keygen`. */
export interface KeygenCliOptions extends GlobalCliOptions {
  /** --out: the key pair goes to PREFIX.key (private, mode 0600) and PREFIX.pub (public). */
  out: string;
  /** --json: print {"keyId", "privateKey", "publicKey"} instead of a sentence. */
  json: boolean;
}

/** `ferry check`. */
export interface CheckCliOptions extends GlobalCliOptions {
  /** --json: print {"ok", "checks": [{name, status, detail}]} instead of a line per check. */
  json: boolean;
}

/** `ferry demo`. */
export interface DemoCliOptions extends GlobalCliOptions {
  /** --json: print the outcome as one JSON object instead of the narrated run. */
  json: boolean;
}

/** `ferry version`. */
export interface VersionCliOptions extends GlobalCliOptions {
  /** --json: print {"version": "..."} instead of "ferry X.Y.Z". */
  json: boolean;
}

/** `ferry help [COMMAND]`. */
export interface HelpCliOptions extends GlobalCliOptions {
  /** The command whose page to show; absent (or 'help') = the overview page. */
  topic?: Command;
}

/** The largest PID Linux can hand out on 64-bit (PID_MAX_LIMIT, 4 * 1024 * 1024). */
export const PID_MAX_LIMIT = 4 * 1024 * 1024;

type OptionTable = NonNullable<ParseArgsConfig['options']>;
type Values = Record<string, string | boolean | string[] | undefined>;

const GLOBAL: OptionTable = {
  'log-level': { type: 'string' },
  'log-file': { type: 'string' },
  config: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
};
const JSON_OPT: OptionTable = { json: { type: 'boolean' } };
const IMAGE: OptionTable = { image: { type: 'string' }, 'image-path': { type: 'string' } };
const CONTAINER_OPTS: OptionTable = { runtime: { type: 'string' }, root: { type: 'string' } };
const FILE_FLAGS: OptionTable = {
  'tcp-established': { type: 'boolean' }, 'tcp-close': { type: 'boolean' }, 'ext-unix-sk': { type: 'boolean' },
  'shell-job': { type: 'boolean' }, 'file-locks': { type: 'boolean' },
};

/**
 * The file options that are runc flags (the rest come from the configuration);
 * `allowChangedFiles` (--allow-changed-files) is a restore flag, present only when given.
 */
export type CliFileFlags = Omit<FileOptions, 'deletedMaxBytes' | 'allowChangedFiles' | 'external' | 'skipInFlight' | 'dropQueuedEvents'>
  & { allowChangedFiles?: boolean; external?: string[]; skipInFlight?: boolean; dropQueuedEvents?: boolean };

/**
 * A descriptor's key as the leak error prints it (its link: `pipe:[123]`, `socket:[456]`, an
 * absolute path), also written `file:/path` or `unix:[456]`; the link it stands for, or a
 * usage error naming `option`.
 */
export function externalKey(command: Command, option: string, key: string): string {
  const m = /^(pipe|socket|unix):\[(\d{1,20})\]$/.exec(key);
  if (m) return `${m[1] === 'pipe' ? 'pipe' : 'socket'}:[${m[2]!}]`;
  const path = key.startsWith('file:') ? key.slice(5) : key;
  if (path.startsWith('/') && !path.includes('\0') && path.length <= 4096) return path;
  throw new UsageError(command, `${option} ${JSON.stringify(key)}: expected pipe:[INODE], socket:[INODE] (or unix:[INODE]) or an absolute path (or file:/PATH), as the leak error names it`);
}

/** The runc-style file flags of a parsed command line (`command` names --external's errors). */
function fileFlags(v: Values, command: Command = 'checkpoint'): CliFileFlags {
  const out: CliFileFlags = {
    tcpEstablished: v['tcp-established'] === true, tcpClose: v['tcp-close'] === true, extUnixSk: v['ext-unix-sk'] === true,
    shellJob: v['shell-job'] === true, fileLocks: v['file-locks'] === true,
  };
  if (v['skip-in-flight'] === true) out.skipInFlight = true;
  if (v['drop-queued-events'] === true) out.dropQueuedEvents = true;
  const external = v.external;
  if (Array.isArray(external) && external.length > 0) out.external = external.map((k) => externalKey(command, '--external', k));
  return out;
}

/** Each command's own options (the global ones are added to every table). */
const TABLES: Readonly<Record<Command, OptionTable>> = {
  checkpoint: {
    ...IMAGE, ...JSON_OPT, ...FILE_FLAGS, ...CONTAINER_OPTS, pid: { type: 'string' }, 'leave-running': { type: 'boolean' },
    'sign-key': { type: 'string' }, external: { type: 'string', multiple: true }, 'skip-in-flight': { type: 'boolean' },
    'drop-queued-events': { type: 'boolean' },
  },
  restore: {
    ...IMAGE, ...JSON_OPT, ...FILE_FLAGS, ...CONTAINER_OPTS, 'pid-file': { type: 'string' },
    bundle: { type: 'string' }, detach: { type: 'boolean', short: 'd' }, 'allow-changed-files': { type: 'boolean' },
    trust: { type: 'string' }, 'max-creds': { type: 'string' }, 'inherit-fd': { type: 'string', multiple: true },
    'manage-cgroups': { type: 'boolean' }, 'manage-cgroups-mode': { type: 'string' },
  },
  migrate: {
    ...JSON_OPT, ...CONTAINER_OPTS, pid: { type: 'string' }, to: { type: 'string' }, key: { type: 'string' }, 'sign-key': { type: 'string' },
    'ssh-config': { type: 'string' }, 'target-id': { type: 'string' }, 'target-bundle': { type: 'string' }, 'target-root': { type: 'string' },
    'pre-copy': { type: 'boolean' }, 'no-pre-copy': { type: 'boolean' }, 'max-rounds': { type: 'string' }, lazy: { type: 'boolean' },
    ...FILE_FLAGS, external: { type: 'string', multiple: true }, 'skip-in-flight': { type: 'boolean' },
  },
  receive: {
    ...JSON_OPT, listen: { type: 'string' }, key: { type: 'string' }, once: { type: 'boolean' }, stdio: { type: 'boolean' },
    trust: { type: 'string' }, 'max-creds': { type: 'string' }, runtime: { type: 'string' },
  },
  inspect: { ...IMAGE, ...JSON_OPT, verbose: { type: 'boolean' } },
  keygen: { ...JSON_OPT, out: { type: 'string' } },
  check: { ...JSON_OPT },
  demo: { ...JSON_OPT },
  version: { ...JSON_OPT },
  help: {},
};

/** Turns parseArgs' multi-line messages into one line naming the option. */
function usageMessage(err: unknown): string {
  const e = err as { code?: string; message?: string };
  const message = String(e.message ?? err);
  const name = /'([^' ]+)/.exec(message)?.[1] ?? '';
  switch (e.code) {
    case 'ERR_PARSE_ARGS_UNKNOWN_OPTION':
      return `unknown option ${name}`;
    case 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL':
      return `unexpected argument "${name}"`;
    case 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE':
      if (/does not take an argument/.test(message)) return `${name} takes no value`;
      if (/ambiguous/.test(message)) return `${name} needs a value (for a value that starts with "-", write ${name}=VALUE)`;
      return `${name} needs a value`;
    default:
      return message.split('\n')[0]!;
  }
}

/** The modes of --manage-cgroups (src/cgroups/restore.ts). */
const CGROUP_MODES: readonly CgroupMode[] = ['ignore', 'soft', 'full', 'strict'];

/**
 * parseArgs has no option with an optional value: `--manage-cgroups=MODE` is read as
 * `--manage-cgroups-mode=MODE` (before any `--`), and a bare `--manage-cgroups` stays a flag.
 */
function optionalValues(command: Command, argv: readonly string[]): string[] {
  if (TABLES[command]['manage-cgroups'] === undefined) return [...argv];
  const end = argv.indexOf('--');
  return argv.map((a, i) => ((end < 0 || i < end) && a.startsWith('--manage-cgroups=') ? `--manage-cgroups-mode=${a.slice(17)}` : a));
}

/** Strict parse of one command's argv; throws UsageError. */
function parse(command: Command, argv: readonly string[], allowPositionals = false): { values: Values; positionals: string[] } {
  try {
    const r = parseArgs({
      args: optionalValues(command, argv), options: { ...GLOBAL, ...TABLES[command] }, strict: true, allowPositionals,
    });
    return { values: r.values as Values, positionals: r.positionals };
  } catch (err) {
    throw new UsageError(command, usageMessage(err));
  }
}

/**
 * True when argv asks for the command's manual page (`-h`/`--help`). Help wins over every
 * other mistake on the line, so `ferry checkpoint --frob --help` shows the page.
 */
export function wantsHelp(command: Command, argv: readonly string[]): boolean {
  try {
    return parse(command, argv, command === 'help').values.help === true;
  } catch {
    const end = argv.indexOf('--');
    return (end < 0 ? argv : argv.slice(0, end)).some((a) => a === '--help' || a === '-h');
  }
}

/**
 * Where an error of this command line goes as JSON (besides its line on stderr): stdout (1)
 * when `--json` was asked for, stderr (2) for `checkpoint --image -` (stdout carries the image
 * then) and `receive --stdio` (it carries the migration), undefined without `--json`. Read from a line that may be wrong (the error may be a
 * usage error), so without parsing it strictly: every word before `--` counts. `command` ''
 * is the top level (no known command), where `--json` anywhere counts too.
 */
export function jsonErrorStream(command: Command | '', argv: readonly string[]): 1 | 2 | undefined {
  if (command !== '' && TABLES[command].json === undefined) return undefined;
  const end = argv.indexOf('--');
  const words = end < 0 ? argv : argv.slice(0, end);
  if (!words.includes('--json')) return undefined;
  // Standard output carries the migration protocol under receive --stdio.
  if (command === 'receive') return words.includes('--stdio') ? 2 : 1;
  if (command !== 'checkpoint') return 1;
  const toStdout = words.some((w, i) => w === '--image=-' || w === '--image-path=-'
    || ((w === '--image' || w === '--image-path') && words[i + 1] === '-'));
  return toStdout ? 2 : 1;
}

/** A non-empty string value of `--name`, or undefined when absent. */
function text(command: Command, v: Values, name: string, what: string): string | undefined {
  const value = v[name];
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || value === '') throw new UsageError(command, `--${name} needs ${what}, got ""`);
  return value;
}

function globals(command: Command, v: Values): GlobalCliOptions {
  const out: GlobalCliOptions = {};
  const level = v['log-level'];
  if (typeof level === 'string') {
    if (!(LOG_LEVELS as readonly string[]).includes(level)) {
      throw new UsageError(command, `--log-level needs one of ${LOG_LEVELS.join(', ')}, got "${level}"`);
    }
    out.logLevel = level as LogLevel;
  }
  if (typeof v['log-file'] === 'string') out.logFile = v['log-file'];
  const config = text(command, v, 'config', 'a file');
  if (config !== undefined) out.config = config;
  return out;
}

/** --image or its runc alias --image-path; required. */
function image(command: 'checkpoint' | 'restore' | 'inspect', v: Values): string {
  if (v.image !== undefined && v['image-path'] !== undefined) {
    throw new UsageError(command, '--image and --image-path are the same option: give one');
  }
  const name = v.image !== undefined ? 'image' : 'image-path';
  const stdio = command === 'checkpoint' ? 'standard output' : 'standard input';
  const path = text(command, v, name, `a path (or - for ${stdio})`);
  if (path === undefined) throw new UsageError(command, `--image is required (a path, or - for ${stdio})`);
  return path;
}

/** CONTAINER and its --runtime/--root, or undefined for the process form. */
function container(command: 'checkpoint' | 'restore', v: Values, positionals: string[]): ContainerCliOptions | undefined {
  if (positionals.length > 1) throw new UsageError(command, `unexpected argument "${positionals[1]}" (one container id at most)`);
  const id = positionals[0];
  if (id === undefined) {
    for (const o of ['runtime', 'root', 'bundle', 'detach']) {
      if (v[o] !== undefined) throw new UsageError(command, `--${o} needs a container id (ferry ${command} CONTAINER …)`);
    }
    return undefined;
  }
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(id)) throw new UsageError(command, `"${id}" is not a container id (letters, digits, _ . -)`);
  const out: ContainerCliOptions = { id, runtime: text(command, v, 'runtime', 'runc, crun or a path') ?? 'runc' };
  const root = text(command, v, 'root', 'a directory');
  if (root !== undefined) out.root = root;
  return out;
}

/** `ferry checkpoint (--pid PID | CONTAINER [--runtime R] [--root DIR]) --image PATH [--leave-running] [--json]` */
export function parseCheckpointArgs(argv: readonly string[]): CheckpointCliOptions {
  const { values: v, positionals } = parse('checkpoint', argv, true);
  const g = globals('checkpoint', v);
  const ctr = container('checkpoint', v, positionals);
  const signKey = text('checkpoint', v, 'sign-key', 'a private key file (ferry keygen writes one)');
  const sign = signKey !== undefined ? { signKey } : {};
  const pidText = v.pid;
  if (ctr) {
    if (pidText !== undefined) throw new UsageError('checkpoint', 'give --pid or a container id, not both');
    return {
      ...g, pid: 0, container: ctr, image: image('checkpoint', v), leaveRunning: v['leave-running'] === true,
      ...sign, json: v.json === true, files: fileFlags(v),
    };
  }
  if (pidText === undefined) throw new UsageError('checkpoint', '--pid is required (the process to checkpoint), or a container id');
  if (typeof pidText !== 'string' || !/^\d+$/.test(pidText) || Number(pidText) < 1) {
    throw new UsageError('checkpoint', `--pid needs a positive integer, got "${String(pidText)}"`);
  }
  const pid = Number(pidText);
  if (pid > PID_MAX_LIMIT) {
    throw new UsageError('checkpoint', `--pid ${pidText} is above the largest PID Linux allows (${PID_MAX_LIMIT})`);
  }
  return {
    ...g, pid, image: image('checkpoint', v), leaveRunning: v['leave-running'] === true, ...sign, json: v.json === true,
    files: fileFlags(v),
  };
}

/** `ferry restore --image PATH [--pid-file FILE] [--json]` */
export function parseRestoreArgs(argv: readonly string[]): RestoreCliOptions {
  const { values: v, positionals } = parse('restore', argv, true);
  const out: RestoreCliOptions = {
    ...globals('restore', v), image: image('restore', v), json: v.json === true, files: fileFlags(v),
  };
  if (v['allow-changed-files'] === true) out.files.allowChangedFiles = true;
  const ctr = container('restore', v, positionals);
  if (ctr) {
    out.container = { ...ctr, detach: v.detach === true };
    const bundle = text('restore', v, 'bundle', 'a directory');
    if (bundle !== undefined) out.container.bundle = bundle;
  }
  const pidFile = text('restore', v, 'pid-file', 'a file');
  if (pidFile !== undefined) out.pidFile = pidFile;
  const trust = text('restore', v, 'trust', 'a public key file or a directory of them');
  if (trust !== undefined) out.trust = trust;
  const inheritFds = v['inherit-fd'];
  if (Array.isArray(inheritFds) && inheritFds.length > 0) {
    out.inherit = {};
    for (const spec of inheritFds) {
      const m = /^fd\[(\d{1,5})\]:(.+)$/.exec(spec);
      if (!m) throw new UsageError('restore', `--inherit-fd ${JSON.stringify(spec)}: expected fd[N]:KEY, e.g. fd[3]:pipe:[12345]`);
      const fd = Number(m[1]);
      try {
        fstatSync(fd);
      } catch {
        throw new UsageError('restore', `--inherit-fd ${spec}: descriptor ${fd} is not open in this ferry (open it for ferry, e.g. ${fd}<FILE in the shell)`);
      }
      out.inherit[externalKey('restore', '--inherit-fd', m[2]!)] = fd;
    }
  }
  const mode = text('restore', v, 'manage-cgroups-mode', CGROUP_MODES.join(', '));
  if (mode !== undefined || v['manage-cgroups'] === true) {
    if (mode !== undefined && v['manage-cgroups'] === true) throw new UsageError('restore', 'give --manage-cgroups or --manage-cgroups=MODE once');
    if (mode !== undefined && !(CGROUP_MODES as readonly string[]).includes(mode)) {
      throw new UsageError('restore', `--manage-cgroups takes ${CGROUP_MODES.join(', ')}, got "${mode}"`);
    }
    if (out.container) throw new UsageError('restore', '--manage-cgroups is for a process tree: a container\'s cgroups are its runtime\'s');
    out.manageCgroups = (mode ?? 'soft') as CgroupMode;
  }
  const maxCreds = text('restore', v, 'max-creds', 'USER[:GROUP][,caps=CAP+CAP][,nnp][,seccomp][,securebits=BITS]');
  if (maxCreds !== undefined) {
    if (out.container) throw new UsageError('restore', '--max-creds is for a process: a container is bounded by its bundle\'s config.json');
    try {
      out.maxCreds = parseMaxCreds(maxCreds);
    } catch (err) {
      throw new UsageError('restore', err instanceof Error ? err.message : String(err));
    }
  }
  return out;
}

/** --pid of `command`: a positive integer within PID_MAX_LIMIT; required. */
function pidOption(command: 'migrate', v: Values, what: string): number {
  const text = v.pid;
  if (text === undefined) throw new UsageError(command, `--pid is required (${what})`);
  if (typeof text !== 'string' || !/^\d+$/.test(text) || Number(text) < 1) {
    throw new UsageError(command, `--pid needs a positive integer, got "${String(text)}"`);
  }
  if (Number(text) > PID_MAX_LIMIT) throw new UsageError(command, `--pid ${text} is above the largest PID Linux allows (${PID_MAX_LIMIT})`);
  return Number(text);
}

/** --max-creds of `command`, parsed (a usage error when it is wrong). */
function maxCredsOption(command: 'restore' | 'receive', text: string): CredsBound {
  try {
    return parseMaxCreds(text);
  } catch (err) {
    throw new UsageError(command, err instanceof Error ? err.message : String(err));
  }
}

/**
 * `ferry migrate (--pid PID | CONTAINER [--runtime R] [--root DIR] [--target-id ID]
 * [--target-bundle DIR] [--target-root DIR]) --to (tcp://HOST:PORT --key FILE |
 * ssh://[USER@]HOST[:PORT] [--ssh-config FILE]) [--sign-key FILE] [--pre-copy | --no-pre-copy]
 * [--max-rounds N] [--lazy] [--tcp-established] [--tcp-close] [--skip-in-flight] [--ext-unix-sk]
 * [--shell-job] [--file-locks] [--external KEY]... [--json]`
 */
export function parseMigrateArgs(argv: readonly string[]): MigrateCliOptions {
  const { values: v, positionals } = parse('migrate', argv, true);
  if (positionals.length > 1) throw new UsageError('migrate', `unexpected argument "${positionals[1]}" (one container id at most)`);
  const id = positionals[0];
  let pid = 0;
  let container: MigrateCliOptions['container'];
  if (id === undefined) {
    for (const o of ['runtime', 'root', 'target-id', 'target-bundle', 'target-root']) {
      if (v[o] !== undefined) throw new UsageError('migrate', `--${o} needs a container id (ferry migrate CONTAINER …)`);
    }
    pid = pidOption('migrate', v, 'the root of the process tree to move, or a container id');
  } else {
    if (v.pid !== undefined) throw new UsageError('migrate', 'give --pid or a container id, not both');
    if (!CONTAINER_ID.test(id)) throw new UsageError('migrate', `"${id}" is not a container id (letters, digits, _ + . -)`);
    container = { id, runtime: text('migrate', v, 'runtime', 'runc, crun or a path') ?? 'runc' };
    const root = text('migrate', v, 'root', 'a directory');
    if (root !== undefined) container.root = root;
    const targetId = text('migrate', v, 'target-id', 'a container id');
    if (targetId !== undefined) {
      if (!CONTAINER_ID.test(targetId)) throw new UsageError('migrate', `--target-id "${targetId}" is not a container id (letters, digits, _ + . -)`);
      container.targetId = targetId;
    }
    for (const [flag, field] of [['target-bundle', 'targetBundle'], ['target-root', 'targetRoot']] as const) {
      const path = text('migrate', v, flag, 'an absolute path on the target');
      if (path === undefined) continue;
      if (!path.startsWith('/')) throw new UsageError('migrate', `--${flag} needs an absolute path on the target, got "${path}"`);
      container[field] = path;
    }
  }
  const toText = text('migrate', v, 'to', 'tcp://HOST:PORT or ssh://[USER@]HOST[:PORT]');
  if (toText === undefined) throw new UsageError('migrate', '--to is required (tcp://HOST:PORT, where ferry receive listens, or ssh://[USER@]HOST[:PORT])');
  let to: Destination;
  try {
    to = parseUrl(toText);
  } catch (err) {
    throw new UsageError('migrate', `--to ${(err as Error).message}`);
  }
  const key = text('migrate', v, 'key', 'a key file');
  const sshConfig = text('migrate', v, 'ssh-config', 'an ssh configuration file');
  if (isSsh(to)) {
    if (key !== undefined) throw new UsageError('migrate', '--key is for tcp:// only: over ssh:// ssh authenticates both sides and encrypts');
  } else {
    if (key === undefined) throw new UsageError('migrate', '--key is required for tcp:// (the key file ferry receive was started with)');
    if (sshConfig !== undefined) throw new UsageError('migrate', '--ssh-config is for ssh:// only');
  }
  const out: MigrateCliOptions = { ...globals('migrate', v), pid, to, json: v.json === true, files: fileFlags(v, 'migrate') };
  if (container !== undefined) out.container = container;
  if (key !== undefined) out.key = key;
  if (sshConfig !== undefined) out.sshConfig = sshConfig;
  const signKey = text('migrate', v, 'sign-key', 'a private key file (ferry keygen writes one)');
  if (signKey !== undefined) out.signKey = signKey;
  if (v['pre-copy'] === true && v['no-pre-copy'] === true) throw new UsageError('migrate', '--pre-copy and --no-pre-copy contradict each other: give one');
  const rounds = v['max-rounds'];
  if (rounds !== undefined) {
    if (v['no-pre-copy'] === true) throw new UsageError('migrate', '--max-rounds counts pre-copy rounds, which --no-pre-copy turns off: give one');
    if (typeof rounds !== 'string' || !/^\d+$/.test(rounds) || Number(rounds) < 1 || Number(rounds) > MAX_ROUNDS) {
      throw new UsageError('migrate', `--max-rounds needs a number of rounds from 1 to ${MAX_ROUNDS}, got "${String(rounds)}"`);
    }
    out.maxRounds = Number(rounds);
  }
  if (v['no-pre-copy'] === true) out.maxRounds = 0;
  if (v.lazy === true) out.lazy = true;
  return out;
}

/** Most pre-copy rounds --max-rounds allows. */
const MAX_ROUNDS = 64;

/**
 * `ferry receive (--listen HOST:PORT --key FILE [--once] | --stdio) [--trust KEYS]
 * [--max-creds SPEC] [--runtime R] [--json]`
 */
export function parseReceiveArgs(argv: readonly string[]): ReceiveCliOptions {
  const { values: v } = parse('receive', argv);
  const at = text('receive', v, 'listen', 'HOST:PORT');
  const key = text('receive', v, 'key', 'a key file');
  const out: ReceiveCliOptions = { ...globals('receive', v), stdio: v.stdio === true, once: v.once === true, json: v.json === true };
  if (out.stdio) {
    if (at !== undefined) throw new UsageError('receive', '--stdio and --listen exclude each other (--stdio: the sender\'s ssh runs it)');
    if (key !== undefined) throw new UsageError('receive', '--key is for --listen only: under --stdio ssh authenticates the sender');
    out.once = true;
  } else {
    if (at === undefined) throw new UsageError('receive', '--listen is required (HOST:PORT to take migrations on, e.g. 10.0.0.2:7070), or --stdio under ssh');
    try {
      out.listen = parseHostPort(at, true);
    } catch (err) {
      throw new UsageError('receive', `--listen ${(err as Error).message}`);
    }
    if (key === undefined) throw new UsageError('receive', '--key is required (a root-only file of at least 32 random bytes, the same on both nodes): without it anyone could send this node an image');
    out.key = key;
  }
  const runtime = text('receive', v, 'runtime', 'runc, crun or a path');
  if (runtime !== undefined) out.runtime = runtime;
  const trust = text('receive', v, 'trust', 'a public key file or a directory of them');
  if (trust !== undefined) out.trust = trust;
  const maxCreds = text('receive', v, 'max-creds', 'USER[:GROUP][,caps=CAP+CAP][,nnp][,seccomp][,securebits=BITS]');
  if (maxCreds !== undefined) out.maxCreds = maxCredsOption('receive', maxCreds);
  return out;
}

/** `ferry inspect --image PATH [--json] [--verbose]` */
export function parseInspectArgs(argv: readonly string[]): InspectCliOptions {
  const { values: v } = parse('inspect', argv);
  return { ...globals('inspect', v), image: image('inspect', v), json: v.json === true, verbose: v.verbose === true };
}

/** `ferry keygen --out PREFIX [--json]` */
export function parseKeygenArgs(argv: readonly string[]): KeygenCliOptions {
  const { values: v } = parse('keygen', argv);
  const out = text('keygen', v, 'out', 'a path prefix (PREFIX.key and PREFIX.pub are written)');
  if (out === undefined) throw new UsageError('keygen', '--out is required (a path prefix: PREFIX.key and PREFIX.pub are written)');
  return { ...globals('keygen', v), out, json: v.json === true };
}

/** `ferry check [--json]` */
export function parseCheckArgs(argv: readonly string[]): CheckCliOptions {
  const { values: v } = parse('check', argv);
  return { ...globals('check', v), json: v.json === true };
}

/** `ferry demo [--json]` */
export function parseDemoArgs(argv: readonly string[]): DemoCliOptions {
  const { values: v } = parse('demo', argv);
  return { ...globals('demo', v), json: v.json === true };
}

/** `ferry version [--json]` */
export function parseVersionArgs(argv: readonly string[]): VersionCliOptions {
  const { values: v } = parse('version', argv);
  return { ...globals('version', v), json: v.json === true };
}

/** `ferry help [COMMAND]` */
export function parseHelpArgs(argv: readonly string[]): HelpCliOptions {
  const { values: v, positionals } = parse('help', argv, true);
  const out: HelpCliOptions = globals('help', v);
  if (positionals.length > 1) throw new UsageError('help', `takes one command, got ${positionals.length}: ${positionals.join(' ')}`);
  const topic = positionals[0];
  if (topic !== undefined) {
    if (!(COMMANDS as readonly string[]).includes(topic)) {
      throw new UsageError('help', `unknown command "${topic}"; the commands are ${COMMANDS.join(', ')}`);
    }
    out.topic = topic as Command;
  }
  return out;
}
