/**
 * What the OCI hook reads and writes: the annotation that asks for a restore, the state JSON
 * the runtime gives a hook on stdin, and the `precreate` rewrite of a container's config.json
 * (docs/hooks.md).
 */
import { restoreConfig } from '../container/restore.js';
import type { OciConfig } from '../container/checkpoint.js';
import { FerryError } from '../errors.js';

/** The annotation naming the image a container is restored from (an absolute path). */
export const RESTORE_ANNOTATION = 'io.ferry.restore-from';

/**
 * Where the restore stub is bound inside the container: under the container's own /dev tmpfs,
 * so the mount point is made on that tmpfs and nothing is written into the rootfs. Restore
 * unmounts it and removes the mount point again once the stub runs.
 */
export const STUB_DIR_IN_CONTAINER = '/dev/.ferry';
export const STUB_IN_CONTAINER = `${STUB_DIR_IN_CONTAINER}/ferry-stub`;

/** The state of a container as the runtime hands it to a hook (OCI runtime spec, "State"). */
export interface HookState {
  ociVersion: string;
  id: string;
  status: string;
  /** Host pid of the container's init (absent or 0 once it is gone). */
  pid?: number;
  bundle: string;
  annotations?: Record<string, string>;
}

/**
 * The annotation in which precreate keeps what bounds the restored processes: the parts of the
 * original config.json that the rewrite replaces (process.user, capabilities, noNewPrivileges,
 * rlimits, oomScoreAdj; whether linux.seccomp was there). Poststart hands it to the restorer,
 * which holds every task of the image against it (src/restore/bounds.ts).
 */
export const BOUND_ANNOTATION = 'io.ferry.bound';

/** The original config's bounding parts, as precreate recorded them, or undefined. */
export function boundConfigOf(annotations: Readonly<Record<string, string>> | undefined): string | undefined {
  const text = annotations?.[BOUND_ANNOTATION];
  return text === undefined || text === '' ? undefined : text;
}

/** The image a container should be restored from, or undefined when it asks for none. */
export function restoreImageOf(annotations: Readonly<Record<string, string>> | undefined): string | undefined {
  const image = annotations?.[RESTORE_ANNOTATION];
  if (image === undefined || image === '') return undefined;
  if (!image.startsWith('/')) {
    throw new FerryError('EUSAGE', `annotation ${RESTORE_ANNOTATION}=${image}: the image must be an absolute path`);
  }
  return image;
}

/** The stage a hook runs in, told by what it got on stdin: a config (precreate) or a state. */
export type HookStage = 'precreate' | 'poststart' | 'poststop';

/** Which stage `doc` (stdin, parsed) belongs to; an explicit stage argument wins. */
export function stageOf(doc: Record<string, unknown>, explicit?: string): HookStage {
  if (explicit !== undefined) {
    if (explicit === 'precreate' || explicit === 'poststart' || explicit === 'poststop') return explicit;
    throw new FerryError('EUSAGE', `unknown hook stage ${explicit}: precreate, poststart or poststop`);
  }
  if (typeof doc.status === 'string' && typeof doc.id === 'string') return doc.status === 'stopped' ? 'poststop' : 'poststart';
  if (typeof doc.process === 'object' || typeof doc.root === 'object') return 'precreate';
  throw new FerryError('EUSAGE', 'stdin holds neither a container config (precreate) nor a container state (poststart, poststop)');
}

/**
 * config.json for a container restored by the hook: the process is the restore stub, bound
 * read-only at STUB_IN_CONTAINER, run as root with every capability ferry has, without
 * seccomp and no_new_privs (restoreConfig of the container library: each task gets its own
 * credentials and filters back at the very end). The terminal setting and everything else
 * stay as the engine made them.
 */
export function hookRestoreConfig(config: OciConfig, stubPath: string): OciConfig {
  const mounts = (config.mounts ?? []) as Array<{ destination?: string; type?: string }>;
  if (!mounts.some((m) => m.destination === '/dev' && m.type === 'tmpfs')) {
    throw new FerryError('EBUNDLE', 'the container has no tmpfs on /dev to bind the restore stub in: ferry restores only containers with the usual /dev tmpfs');
  }
  // restoreConfig resolves root.path against a bundle; the engine's own root is kept instead.
  const { root: _resolved, ...rewritten } = restoreConfig(config, '/');
  const p = config.process ?? {};
  const bounding = {
    process: { user: p.user, capabilities: p.capabilities, noNewPrivileges: p.noNewPrivileges, rlimits: p['rlimits'], oomScoreAdj: p['oomScoreAdj'] },
    linux: config.linux?.seccomp !== undefined && config.linux.seccomp !== null ? { seccomp: {} } : {},
  };
  const annotations = { ...(config['annotations'] as Record<string, string> | undefined), [BOUND_ANNOTATION]: JSON.stringify(bounding) };
  return {
    ...rewritten,
    ...(config.root ? { root: config.root } : {}),
    annotations,
    process: { ...rewritten.process, args: [STUB_IN_CONTAINER], terminal: config.process?.terminal ?? false },
    mounts: [...mounts, { destination: STUB_IN_CONTAINER, type: 'bind', source: stubPath, options: ['bind', 'ro', 'nosuid', 'nodev'] }],
  };
}
