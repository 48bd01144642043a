/**
 * `ferry migrate CONTAINER`: an OCI container moved to another node, through ferry's container
 * engine (src/container/) on both sides, over the same hand-over as a process tree (sender.ts,
 * receiver.ts; docs/migration.md, "Containers").
 *
 * The source. The container is checkpointed as `ferry checkpoint CONTAINER` does (cgroup
 * frozen, threads seized, tree dumped), held stopped until the target has the image whole and
 * checked, then killed; it stays in the runtime, stopped, until the target says it runs there,
 * and only then is it deleted (by a watchdog if ferry dies meanwhile). If the target fails
 * after the kill, the stopped record is deleted and the local copy restored here under the
 * same id, from the same bundle.
 *
 * The target. The hello names the container to make (`--target-id`, default the source's id),
 * the bundle to make it from (`--target-bundle`, default the one the image names) and the
 * runtime's state directory (`--target-root`). These come from the sender, i.e. from the
 * network: the bundle is held to the rules of a bundle an image names (root's own, nobody
 * else can write it or a directory above it: its config.json bounds what the restored
 * processes may get, container/restore.ts), and so is the state directory; an id already in
 * use there is refused. All of it before the first byte of the image is taken.
 *
 * Lazy pages (`--lazy`): the target lets the container run before its memory is written and
 * serves it from the image it holds (restore/lazy.ts); the source's killed record is deleted
 * once the target says every page is in.
 */
import { existsSync, lstatSync } from 'node:fs';
import { dirname, posix } from 'node:path';
import type { RestoreOptions, RestoreResult } from '../api.js';
import { checkpointContainer, readConfig } from '../container/checkpoint.js';
import type { ContainerRecord } from '../container/record.js';
import { bundleOf, restoreContainer } from '../container/restore.js';
import { Runtime } from '../container/runtime.js';
import { FerryError, describeCause } from '../errors.js';
import { armWatchdog } from '../watchdog.js';
import type { ContainerTarget } from './channel.js';
import { migrate, type MigrateOptions, type MigrateResult, type MigrateWorkload } from './sender.js';

export interface ContainerMigrateOptions extends Omit<MigrateOptions, 'pid' | 'workload'> {
  /** The container to move. */
  id: string;
  /** The source's runtime: 'runc', 'crun' or a path. */
  runtime: string;
  /** The source runtime's --root, if not its default. */
  root?: string;
  /** Where the target makes it (each absent: as described in ContainerTarget). */
  target: { id?: string; bundle?: string; root?: string };
}

/** Moves container `o.id` to `o.to`; resolves once it runs there and the source is deleted. */
export async function migrateContainer(o: ContainerMigrateOptions): Promise<MigrateResult> {
  const rt = new Runtime(o.runtime, o.root);
  const state = rt.state(o.id);
  if (state.status === 'paused') throw new FerryError('EPAUSED', `container ${o.id} is paused: resume it first ('${rt.name} resume ${o.id}')`);
  if (state.status !== 'running') throw new FerryError('ENOTRUNNING', `container ${o.id} is ${state.status}, not running: only a running container can be migrated`);
  const log = o.logger.child({ op: 'migrate', container: o.id });
  const deleteSource = (): void => {
    try {
      rt.run(['delete', '--force', o.id], `container ${o.id}`);
    } catch (err) {
      log.warn({ err }, `container ${o.id} was killed here, but ${rt.name} delete failed`);
    }
  };
  // A network namespace joined by path outlives the container: a kept lock is there.
  const netnsPath = readConfig(state.bundle, o.id).linux?.namespaces?.find((ns) => ns.type === 'network')?.path || undefined;
    const rootArg = o.root !== undefined ? ` --runtime ${o.runtime} --root ${o.root}` : ` --runtime ${o.runtime}`;
  const workload: MigrateWorkload = {
    container: {
      id: o.target.id ?? o.id,
      ...(o.target.bundle !== undefined ? { bundle: o.target.bundle } : {}),
      ...(o.target.root !== undefined ? { root: o.target.root } : {}),
    },
    // Its PIDs need not be free for the target (a new PID namespace there): "go" follows the kill.
    checkpoint: (c) => checkpointContainer({
      ...c, id: o.id, runtime: o.runtime, keepInRuntime: true, skipReapWait: true, ...(o.root !== undefined ? { root: o.root } : {}),
    }),
    restoreHere: async (r) => {
      // The kill did not wait for the reaping (above): runc removes the cgroup only once its
      // processes are gone, and the killed container's record holds the id.
      for (const end = Date.now() + 5000; existsSync(`/proc/${state.pid}`) && Date.now() < end;) await new Promise((res) => setTimeout(res, 5));
      deleteSource();
      return restoreContainer({ ...withoutBound(r), id: o.id, runtime: o.runtime, bundle: state.bundle, ...(o.root !== undefined ? { root: o.root } : {}) });
    },
    handedOver: deleteSource,
    // Detached, as the container ran (runc restore without it stays until the container stops).
    restoreCommand: `ferry restore ${o.id} --detach${rootArg} --bundle ${state.bundle}`,
    ...(netnsPath !== undefined ? { netnsPath } : {}),
  };
  const { target: _target, id: _id, runtime: _runtime, root: _root, ...common } = o;
  // If ferry dies after the kill and before the target's word, the killed container's record
  // would stay in the runtime: a watchdog deletes it then. Without --force, runc deletes only a
  // stopped (or created) container, never a running or paused one: armed from the start, it
  // cannot touch the container before the kill, nor after a restore here.
  const watchdog = await armWatchdog(['exec', rt.path, ...rt.args(['delete', o.id])], `container ${o.id}`);
  try {
    return await migrate({ ...common, pid: state.pid, workload });
  } finally {
    watchdog.disarm();
  }
}

/** A container's restore takes no --max-creds: its bundle's config.json bounds it. */
function withoutBound(r: RestoreOptions): Omit<RestoreOptions, 'bound' | 'makeRoot'> {
  const { bound: _bound, makeRoot: _makeRoot, ...rest } = r;
  return rest;
}

/**
 * The target's side: checks what the hello asks (the id is free in the runtime, the bundle
 * and state directory are safe to take from the network) and returns the restore to run on
 * "go". `runtime` is the target's own choice (`ferry receive --runtime`).
 */
export function containerRestorer(c: ContainerTarget, runtime: string): (r: RestoreOptions) => Promise<RestoreResult> {
  if (c.root !== undefined) checkStateDir(c.root);
  // The same rules as a bundle an image names (container/restore.ts): the sender is a peer.
  let bundle: string | undefined;
  try {
    bundle = c.bundle !== undefined ? bundleOf({}, { bundle: c.bundle } as ContainerRecord) : undefined;
  } catch (err) {
    // Its line speaks of an image's record; here the sender named the bundle.
    if (!(err instanceof FerryError)) throw err;
    throw new FerryError(err.code, err.message.replace(/^image: \S+ names bundle/, 'the sender names bundle')
      .replace(/pass --bundle with the bundle to restore into$/, 'migrate with --target-bundle naming a bundle of root\'s'), { cause: err });
  }
  const rt = new Runtime(runtime, c.root);
  let exists = true;
  try {
    rt.state(c.id);
  } catch (err) {
    if (!(err instanceof FerryError && err.code === 'ENOCONTAINER')) throw err;
    exists = false;
  }
  if (exists) throw new FerryError('EEXIST', `container ${c.id} already exists in ${rt.name} on the target${c.root !== undefined ? ` (--root ${c.root})` : ''}: delete it there first, or migrate with --target-id`);
  return (r) => restoreContainer({
    ...withoutBound(r), id: c.id, runtime,
    ...(bundle !== undefined ? { bundle } : {}), ...(c.root !== undefined ? { root: c.root } : {}),
  });
}

const S_ISVTX = 0o1000;

/**
 * A runtime state directory named by the sender: an absolute, normalised path whose existing
 * part (the directory itself, or the nearest directory above it, which the runtime makes it
 * in) and every directory above are root's and not writable by group or others (sticky ones,
 * as /tmp, excepted above the directory itself). Otherwise EBUNDLE, one line.
 */
export function checkStateDir(path: string): void {
  const refuse = (why: string): never => {
    throw new FerryError('EBUNDLE', `the sender names runtime state directory ${JSON.stringify(path.slice(0, 200))}${why}: not used; pass --target-root with a directory of root's`);
  };
  if (!path.startsWith('/')) refuse(', which is not an absolute path');
  const trimmed = path.length > 1 ? path.replace(/\/+$/, '') : path;
  if (posix.normalize(trimmed) !== trimmed || trimmed.split('/').includes('..')) refuse(', which is not a normalised path');
  let d = trimmed;
  let self = true;
  for (;;) {
    let st;
    try {
      st = lstatSync(d, { throwIfNoEntry: false });
    } catch (err) {
      return refuse(`, which cannot be checked here (${describeCause(err)})`);
    }
    if (st !== undefined) {
      if (!st.isDirectory()) refuse(`: ${d} is not a directory`);
      if (st.uid !== 0) refuse(`: ${d} is owned by uid ${st.uid}, not root`);
      if ((st.mode & 0o022) !== 0 && (self || (st.mode & S_ISVTX) === 0)) refuse(`: ${d} is writable by group or others`);
      self = false;
    }
    if (d === '/') return;
    d = dirname(d);
  }
}
