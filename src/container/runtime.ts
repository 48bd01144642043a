/**
 * The OCI runtime (runc, crun) as ferry drives it: find the binary even without PATH, read a
 * container's state, and run create/start/delete with its --root. Every failure is one line
 * naming the runtime, the container and what it said.
 */
import { spawnSync, type SpawnSyncOptions } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { join } from 'node:path';
import { FerryError } from '../errors.js';

/** Where runtimes live when PATH does not say (hooks and runtimes may get no PATH). */
const FALLBACK_DIRS = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];

/** `runc state` output (the fields ferry uses). */
export interface ContainerState {
  id: string;
  pid: number;
  status: 'created' | 'running' | 'paused' | 'stopped' | string;
  bundle: string;
  rootfs: string;
}

/** A runtime binary and its state directory. */
export class Runtime {
  readonly path: string;

  /** `name`: 'runc', 'crun' or a path; `root`: its --root (state directory), if not the default. */
  constructor(readonly name: string, readonly root?: string) {
    this.path = resolveBinary(name);
  }

  /** The runtime's argv (after its path) for `verb`, with --root when set. */
  args(verb: string[]): string[] {
    return [...(this.root ? ['--root', this.root] : []), ...verb];
  }

  /** Runs the runtime; returns stdout; throws a FerryError with its stderr on failure. */
  run(verb: string[], what: string, opts: SpawnSyncOptions = {}): string {
    const r = spawnSync(this.path, this.args(verb), { encoding: 'utf8', timeout: 60000, ...opts });
    if (r.error) throw new FerryError('ERUNTIME', `${this.name} ${verb[0]} for ${what} failed to run: ${r.error.message}`, { cause: r.error });
    if (r.status !== 0) {
      const said = String(r.stderr ?? '').trim().split('\n').filter(Boolean).at(-1) ?? `exit status ${r.status}`;
      throw new FerryError('ERUNTIME', `${this.name} ${verb[0]} ${what}: ${said.replace(/^time="[^"]*" level=\w+ msg=/, '')}`);
    }
    return String(r.stdout ?? '');
  }

  /** The state of container `id`; a clear error when there is no such container. */
  state(id: string): ContainerState {
    let out: string;
    try {
      out = this.run(['state', id], `container ${id}`);
    } catch (err) {
      if (err instanceof FerryError && /does not exist|not exist|no such/i.test(err.message)) {
        throw new FerryError('ENOCONTAINER', `no container ${id} in ${this.name}${this.root ? ` (--root ${this.root})` : ''}: check the id (${this.name} list shows them)`);
      }
      throw err;
    }
    const s = JSON.parse(out) as ContainerState;
    return s;
  }
}

function executable(p: string): boolean {
  try {
    accessSync(p, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** The runtime binary for `name`: a path as is, else PATH then the usual directories. */
export function resolveBinary(name: string): string {
  if (name.includes('/')) {
    if (!executable(name)) throw new FerryError('ENORUNTIME', `container runtime ${name} is not an executable file`);
    return name;
  }
  const dirs = [...(process.env.PATH ?? '').split(':').filter(Boolean), ...FALLBACK_DIRS];
  for (const d of dirs) if (executable(join(d, name))) return join(d, name);
  throw new FerryError('ENORUNTIME', `container runtime ${name} not found (looked in PATH and ${FALLBACK_DIRS.join(', ')}): install it (apt-get install ${name}) or pass --runtime /path/to/it`);
}
