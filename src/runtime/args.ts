/**
 * runc's command line as the runtime wrapper reads it. Pure: no I/O.
 *
 * runc (urfave/cli) takes global flags before the verb and the verb's flags before the
 * container id; a flag may be written `-name` or `--name`, its value as the next word or after
 * `=`, and a boolean may be given `=true`/`=false`. Flags and verbs are runc 1.1's, listed in
 * ../shared/INTEGRATION.md.
 */

/** A mistake in the command line: one line on stderr, exit status 2. */
export class RuntimeUsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RuntimeUsageError';
  }
}

/** runc's global flags (before the verb). */
export interface RuntimeGlobals {
  /** --root: runc's state directory. */
  root?: string;
  /** --log: where runc (and the wrapper) write their log; absent: stderr only. */
  log?: string;
  /** --log-format: 'text' (default) or 'json'. */
  logFormat: 'text' | 'json';
  /** --systemd-cgroup: cgroups are systemd units. */
  systemdCgroup: boolean;
  /** --debug: verbose logs. */
  debug: boolean;
}

type Kind = 'bool' | 'string';

/** Global flags and the kind of each (only `root`, `log`, `log-format` take values we use). */
const GLOBAL_FLAGS: Readonly<Record<string, Kind>> = {
  root: 'string', log: 'string', 'log-format': 'string', criu: 'string', rootless: 'string',
  'systemd-cgroup': 'bool', debug: 'bool', help: 'bool', h: 'bool', version: 'bool', v: 'bool',
};

/** The flags of `runc checkpoint`. */
const CHECKPOINT_FLAGS: Readonly<Record<string, Kind>> = {
  'image-path': 'string', 'work-path': 'string', 'parent-path': 'string', 'leave-running': 'bool',
  'tcp-established': 'bool', 'ext-unix-sk': 'bool', 'shell-job': 'bool', 'lazy-pages': 'bool',
  'status-fd': 'string', 'page-server': 'string', 'file-locks': 'bool', 'pre-dump': 'bool',
  'manage-cgroups-mode': 'string', 'empty-ns': 'string', 'auto-dedup': 'bool', help: 'bool', h: 'bool',
};

/** The flags of `runc restore` (and --no-new-keyring, which conmon may add). */
const RESTORE_FLAGS: Readonly<Record<string, Kind>> = {
  'console-socket': 'string', 'image-path': 'string', 'work-path': 'string', 'tcp-established': 'bool',
  'ext-unix-sk': 'bool', 'shell-job': 'bool', 'file-locks': 'bool', 'manage-cgroups-mode': 'string',
  bundle: 'string', b: 'string', detach: 'bool', d: 'bool', 'pid-file': 'string', 'no-subreaper': 'bool',
  'no-pivot': 'bool', 'empty-ns': 'string', 'auto-dedup': 'bool', 'lazy-pages': 'bool',
  'lsm-profile': 'string', 'lsm-mount-context': 'string', 'no-new-keyring': 'bool', help: 'bool', h: 'bool',
};

type Values = Map<string, string | boolean>;

/**
 * Reads flags from `argv` starting at `from` until the first word that is not a flag.
 * Returns the values and the index of that word.
 */
function readFlags(argv: readonly string[], from: number, table: Readonly<Record<string, Kind>>, where: string): { values: Values; next: number } {
  const values: Values = new Map();
  let i = from;
  for (; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') { i++; break; }
    if (!a.startsWith('-') || a === '-') break;
    const body = a.replace(/^--?/, '');
    const eq = body.indexOf('=');
    const name = eq < 0 ? body : body.slice(0, eq);
    const inline = eq < 0 ? undefined : body.slice(eq + 1);
    const kind = table[name];
    if (kind === undefined) throw new RuntimeUsageError(`${where}: unknown flag ${a.split('=')[0]}`);
    if (kind === 'bool') {
      if (inline === undefined || inline === 'true') values.set(name, true);
      else if (inline === 'false') values.delete(name);
      else throw new RuntimeUsageError(`${where}: --${name} takes true or false, got "${inline}"`);
    } else if (inline !== undefined) {
      values.set(name, inline);
    } else {
      const v = argv[i + 1];
      if (v === undefined) throw new RuntimeUsageError(`${where}: --${name} needs a value`);
      values.set(name, v);
      i++;
    }
  }
  return { values, next: i };
}

/** The global flags, the verb and the words after it. */
export interface SplitArgs {
  globals: RuntimeGlobals;
  /** The verb; absent for `--version`, `--help` or an empty line. */
  verb?: string;
  /** Everything after the verb, unchanged. */
  rest: string[];
}

/** Splits argv into runc's global flags, the verb and its arguments. */
export function splitArgs(argv: readonly string[]): SplitArgs {
  const { values, next } = readFlags(argv, 0, GLOBAL_FLAGS, 'ferry-runtime');
  const format = values.get('log-format') ?? 'text';
  if (format !== 'text' && format !== 'json') throw new RuntimeUsageError(`ferry-runtime: --log-format takes text or json, got "${String(format)}"`);
  const globals: RuntimeGlobals = {
    logFormat: format, systemdCgroup: values.get('systemd-cgroup') === true, debug: values.get('debug') === true,
  };
  const root = values.get('root');
  if (typeof root === 'string' && root !== '') globals.root = root;
  const log = values.get('log');
  if (typeof log === 'string' && log !== '') globals.log = log;
  const verb = argv[next];
  return verb === undefined ? { globals, rest: [] } : { globals, verb, rest: argv.slice(next + 1) };
}

/** What `checkpoint` may do beyond the defaults (runc's flags of the same names). */
export interface RuntimeFileFlags {
  tcpEstablished: boolean;
  extUnixSk: boolean;
  shellJob: boolean;
  fileLocks: boolean;
}

/** `checkpoint [flags] ID`. */
export interface RuntimeCheckpointArgs {
  /** True for --help/-h: print the usage, exit 0 (podman probes support with it). */
  help: boolean;
  id: string;
  /** --image-path; default $PWD/checkpoint (made absolute by the caller). */
  imagePath?: string;
  /** --work-path; default the image path. */
  workPath?: string;
  leaveRunning: boolean;
  files: RuntimeFileFlags;
  /** --manage-cgroups-mode (checked: soft, full, strict or ignore); ferry leaves cgroups to the runtime. */
  manageCgroupsMode?: string;
  /** --empty-ns (only "network"): ferry does not dump network namespaces anyway. */
  emptyNs?: string;
  autoDedup: boolean;
  /** --pre-dump: copy the memory while the container runs and leave it tracked (docs/runtime.md, "Pre-dump"). */
  preDump: boolean;
  /** --parent-path: the pre-dump this checkpoint continues from, relative to the image path. */
  parentPath?: string;
  /** --status-fd N: closed once the dump is done. */
  statusFd?: number;
  /** Flags given that ferry cannot do (refused before anything is touched). */
  unsupported: string[];
}

/** `restore [flags] ID`. */
export interface RuntimeRestoreArgs {
  help: boolean;
  id: string;
  /** --bundle/-b; default the current directory. */
  bundle?: string;
  imagePath?: string;
  workPath?: string;
  detach: boolean;
  pidFile?: string;
  consoleSocket?: string;
  files: RuntimeFileFlags;
  manageCgroupsMode?: string;
  emptyNs?: string;
  noSubreaper: boolean;
  noPivot: boolean;
  noNewKeyring: boolean;
  lsmProfile?: string;
  lsmMountContext?: string;
  unsupported: string[];
}

const CGROUP_MODES = ['soft', 'full', 'strict', 'ignore'];

function str(v: Values, name: string): string | undefined {
  const x = v.get(name);
  return typeof x === 'string' ? x : undefined;
}

function fileFlags(v: Values): RuntimeFileFlags {
  return {
    tcpEstablished: v.get('tcp-established') === true, extUnixSk: v.get('ext-unix-sk') === true,
    shellJob: v.get('shell-job') === true, fileLocks: v.get('file-locks') === true,
  };
}

/** The container id after the flags; '' when --help was given without one. */
function containerId(verb: string, argv: readonly string[], next: number, help: boolean): string {
  const id = argv[next];
  if (id === undefined) {
    if (help) return '';
    throw new RuntimeUsageError(`${verb}: a container id is needed (ferry-runtime ${verb} [flags] ID)`);
  }
  if (!help && argv.length > next + 1) throw new RuntimeUsageError(`${verb}: unexpected argument "${argv[next + 1]}" after the container id ${id}`);
  if (!help && !/^[A-Za-z0-9][A-Za-z0-9_.+-]*$/.test(id)) throw new RuntimeUsageError(`${verb}: "${id}" is not a container id`);
  return id;
}

function common(v: Values, verb: string): { manageCgroupsMode?: string; emptyNs?: string } {
  const out: { manageCgroupsMode?: string; emptyNs?: string } = {};
  const mode = str(v, 'manage-cgroups-mode');
  if (mode !== undefined) {
    if (!CGROUP_MODES.includes(mode)) throw new RuntimeUsageError(`${verb}: --manage-cgroups-mode takes ${CGROUP_MODES.join(', ')}, got "${mode}"`);
    out.manageCgroupsMode = mode;
  }
  const ns = str(v, 'empty-ns');
  if (ns !== undefined) {
    if (ns !== 'network') throw new RuntimeUsageError(`${verb}: --empty-ns takes network only, got "${ns}"`);
    out.emptyNs = ns;
  }
  return out;
}

/** Parses the words after `checkpoint`. */
export function parseCheckpoint(argv: readonly string[]): RuntimeCheckpointArgs {
  const { values: v, next } = readFlags(argv, 0, CHECKPOINT_FLAGS, 'checkpoint');
  const help = v.get('help') === true || v.get('h') === true;
  const out: RuntimeCheckpointArgs = {
    help, id: containerId('checkpoint', argv, next, help), leaveRunning: v.get('leave-running') === true,
    files: fileFlags(v), autoDedup: v.get('auto-dedup') === true, preDump: v.get('pre-dump') === true, unsupported: [],
    ...common(v, 'checkpoint'),
  };
  const image = str(v, 'image-path');
  if (image !== undefined && image !== '') out.imagePath = image;
  const work = str(v, 'work-path');
  if (work !== undefined && work !== '') out.workPath = work;
  const fd = str(v, 'status-fd');
  if (fd !== undefined) {
    if (!/^\d+$/.test(fd)) throw new RuntimeUsageError(`checkpoint: --status-fd needs a descriptor number, got "${fd}"`);
    out.statusFd = Number(fd);
  }
  if (v.get('lazy-pages') === true) out.unsupported.push('--lazy-pages');
  if (str(v, 'page-server') !== undefined) out.unsupported.push('--page-server (write the image to a file and copy it)');
  const parent = str(v, 'parent-path');
  if (parent !== undefined && parent !== '') out.parentPath = parent;
  return out;
}

/** Parses the words after `restore`. */
export function parseRestore(argv: readonly string[]): RuntimeRestoreArgs {
  const { values: v, next } = readFlags(argv, 0, RESTORE_FLAGS, 'restore');
  const help = v.get('help') === true || v.get('h') === true;
  const out: RuntimeRestoreArgs = {
    help, id: containerId('restore', argv, next, help), detach: v.get('detach') === true || v.get('d') === true,
    files: fileFlags(v), noSubreaper: v.get('no-subreaper') === true, noPivot: v.get('no-pivot') === true,
    noNewKeyring: v.get('no-new-keyring') === true, unsupported: [], ...common(v, 'restore'),
  };
  const set = <K extends 'bundle' | 'imagePath' | 'workPath' | 'pidFile' | 'consoleSocket' | 'lsmProfile' | 'lsmMountContext'>(k: K, ...names: string[]): void => {
    for (const n of names) {
      const x = str(v, n);
      if (x !== undefined && x !== '') out[k] = x;
    }
  };
  set('bundle', 'bundle', 'b');
  set('imagePath', 'image-path');
  set('workPath', 'work-path');
  set('pidFile', 'pid-file');
  set('consoleSocket', 'console-socket');
  set('lsmProfile', 'lsm-profile');
  set('lsmMountContext', 'lsm-mount-context');
  if (v.get('lazy-pages') === true) out.unsupported.push('--lazy-pages');
  return out;
}

/** `checkpoint --help`. */
export const CHECKPOINT_USAGE = `NAME:
   ferry-runtime checkpoint - checkpoint a running container with ferry

USAGE:
   ferry-runtime [global options] checkpoint [command options] <container-id>

The container is checkpointed into ferry-image.tar in the image path (with
descriptors.json and inventory.img next to it); dump.log and stats-dump go to
the work path. Without --leave-running the container is killed and deleted.
--pre-dump copies its memory while it runs and keeps tracking its writes; a
checkpoint with --parent-path then writes only what changed since
(ferry-image.delta) and restore takes the rest from the parent.

OPTIONS:
   --image-path value          path for saving the image files
                               (default: ./checkpoint)
   --work-path value           path for saving the log and stats files
                               (default: the image path)
   --leave-running             leave the process running after the checkpoint
   --tcp-established           allow open tcp connections
   --ext-unix-sk               allow external unix sockets
   --shell-job                 allow shell jobs
   --file-locks                handle file locks
   --manage-cgroups-mode value accepted: soft, full, strict, ignore (the
                               runtime keeps cgroups)
   --empty-ns network          accepted (network namespaces are not dumped)
   --pre-dump                  copy memory, leave the container running, tracked
   --parent-path value         the pre-dump to continue from (relative to the
                               image path, e.g. ../pre)
   --auto-dedup                accepted (the parent is left as it is)
   --status-fd value           closed when the dump is done
   --lazy-pages, --page-server not supported: refused before the container is
                               touched
`;

/** `restore --help`. */
export const RESTORE_USAGE = `NAME:
   ferry-runtime restore - restore a container checkpointed by ferry-runtime

USAGE:
   ferry-runtime [global options] restore [command options] <container-id>

OPTIONS:
   --bundle value, -b value    path to the root of the bundle directory
                               (default: .)
   --image-path value          path of the checkpoint (default: ./checkpoint)
   --work-path value           path for the log and stats files
                               (default: the image path)
   --detach, -d                detach from the container's process
   --pid-file value            write the container's init pid (host pid) to
                               this file
   --tcp-established           allow open tcp connections
   --ext-unix-sk               allow external unix sockets
   --shell-job                 allow shell jobs
   --file-locks                handle file locks
   --manage-cgroups-mode value accepted: soft, full, strict, ignore
   --no-subreaper, --no-pivot, --no-new-keyring, --empty-ns network,
   --lsm-profile value, --lsm-mount-context value
                               accepted (see docs/runtime.md)
   --console-socket value      a container with a terminal: the new pty master
                               is sent to this unix socket (as runc does)
   --lazy-pages                not supported: refused before anything is made
`;
