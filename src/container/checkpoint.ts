/**
 * Checkpoint of an OCI container (DESIGN.md §5): find it through the runtime's state, freeze
 * its cgroup, seize every thread in the cgroup while it is frozen, thaw it under ptrace (the
 * threads stop in ptrace instead), then dump the tree under its init like any process tree,
 * with the container's configuration in the image. Without --leave-running the container is
 * killed and deleted from the runtime, as `runc checkpoint` does.
 *
 * On any failure the cgroup is thawed and every thread let go: the container keeps running.
 */
import { readFileSync, readlinkSync } from 'node:fs';
import { isAbsolute, join } from 'node:path';
import type { CheckpointOptions, CheckpointResult } from '../api.js';
import { DUMP_TRACE_OPTIONS } from '../arch/x86-64.js';
import { checkpoint } from '../dump/checkpoint.js';
import { FerryError, describeCause, errnoCode } from '../errors.js';
import { native } from '../native/binding.js';
import { armThawWatchdog, freezerOf, isFrozen } from './cgroup.js';
import { faultPoint } from '../fault.js';
import { Session } from '../session.js';
import { DEVSHM_ENTRY, readDevShm } from './devshm.js';
import { readRootfsChanges, ROOTFS_ENTRY } from './rootfs.js';
import { CONTAINER_ENTRY, type ContainerRecord } from './record.js';
import { readContainerClocks } from './clocks.js';
import { Runtime } from './runtime.js';

export interface ContainerCheckpointOptions extends Omit<CheckpointOptions, 'pid'> {
  /** Container id. */
  id: string;
  /** 'runc', 'crun' or a path. */
  runtime: string;
  /** The runtime's --root, if not its default. */
  root?: string;
  /**
   * Leave the killed container in the runtime's state (stopped) instead of running its
   * `delete`: for a caller that deletes it itself, the runtime (`runc checkpoint` through
   * ferry's criu) or a migration once the target runs the workload (src/migrate/container.ts).
   */
  keepInRuntime?: boolean;
}

/** Checkpoints container `o.id`. */
export async function checkpointContainer(o: ContainerCheckpointOptions): Promise<CheckpointResult> {
  const rt = new Runtime(o.runtime, o.root);
  const state = rt.state(o.id);
  if (state.status === 'paused') throw new FerryError('EPAUSED', `container ${o.id} is paused: resume it first ('${rt.name} resume ${o.id}')`);
  if (state.status !== 'running') throw new FerryError('ENOTRUNNING', `container ${o.id} is ${state.status}, not running: only a running container can be checkpointed`);
  const config = readConfig(state.bundle, o.id);
  for (const ns of config.linux?.namespaces ?? []) {
    if (ns.type === 'user' || ns.type === 'time') {
      throw new FerryError('EUNSUPPORTED', `container ${o.id} has its own ${ns.type} namespace: not supported yet`);
    }
  }
  const freezer = freezerOf(state.pid, o.id);
  if (isFrozen(freezer)) throw new FerryError('EPAUSED', `container ${o.id} is frozen (paused): resume it first`);

  const n = native();
  const preseized = new Set<number>();
  const log = o.logger.child({ op: 'checkpoint', container: o.id });
  // Every step of stop() registers its undo here; the tree's own checkpoint takes over the
  // threads once they are stopped, and lets them go itself on any way out.
  const session = new Session('container checkpoint', log);
  const record: ContainerRecord = {
    id: o.id,
    runtime: rt.name,
    bundle: state.bundle,
    rootfs: state.rootfs,
    config,
    cgroup: freezer.version,
  };
  /**
   * Freezes the cgroup, seizes every thread in it, thaws it under ptrace (each seized thread
   * goes into its ptrace stop instead of running), and reads what must be read while the
   * container is stopped. The checkpoint calls it once it has made ready everything that can
   * be before a freeze (its hash workers, chunk buffers, the host's descriptors), so that the
   * container is stopped no longer than a plain process of the same memory.
   */
  const stop = async (): Promise<{ preseized: ReadonlySet<number>; stoppedAt: number; extraEntries: Array<{ name: string; value: unknown }> }> => {
    // Armed before the freeze: if ferry dies while the cgroup is frozen, it thaws it.
    const watchdog = await armThawWatchdog(freezer, o.id);
    session.onUndo('disarm the freezer watchdog', () => watchdog.disarm());
    session.onUndo('let the container\'s threads go', () => {
      for (const tid of preseized) {
        try { n.detach(tid, 0); } catch { /* exited */ }
      }
    });
    const stoppedAt = performance.now();
    await freezer.freeze();
    const dropThaw = session.onUndo('thaw the container', () => freezer.thaw());
    const clocks = readContainerClocks(state.pid); // where its clocks stop
    if (clocks !== undefined) record.clocks = clocks;
    await faultPoint('frozen', o.signal);
    for (const tid of freezer.tids()) {
      try {
        n.seize(tid, DUMP_TRACE_OPTIONS);
      } catch (err) {
        if (errnoCode(err) === 'ESRCH') continue;
        throw new FerryError('ESEIZE', `cannot attach to thread ${tid} of container ${o.id}: ${describeCause(err)}`, { cause: err });
      }
      preseized.add(tid);
      n.interrupt(tid);
    }
    freezer.thaw();
    dropThaw();
    watchdog.disarm();
    for (const tid of preseized) {
      const st = n.waitpid(tid);
      if (!st?.stopped) preseized.delete(tid); // exited meanwhile
    }
    const tSeized = performance.now();
    // Read now: every thread of the container is stopped.
    const extraEntries = [
      { name: DEVSHM_ENTRY, value: readDevShm(state.pid, o.id, o.config.files.deletedMaxBytes) },
      { name: ROOTFS_ENTRY, value: readRootfsChanges(state.pid, o.id, o.config.files.deletedMaxBytes) },
    ];
    log.debug({ threads: preseized.size, seizeMs: tSeized - stoppedAt, readMs: performance.now() - tSeized }, 'container stopped');
    return { preseized, stoppedAt, extraEntries };
  };

  let result: CheckpointResult;
  try {
    result = await checkpoint({
      ...o,
      pid: state.pid,
      pidNamespace: readlinkSync(`/proc/${state.pid}/ns/pid`),
      netnsPersists: (config.linux?.namespaces ?? []).some((ns) => ns.type === 'network' && ns.path !== undefined && ns.path !== ''),
      stop,
      onKilled: () => {
        if (o.keepInRuntime) return;
        try {
          rt.run(['delete', '--force', o.id], `container ${o.id}`);
        } catch (err) {
          log.warn({ err }, `the container was checkpointed and killed, but ${rt.name} delete failed`);
        }
      },
      extraEntries: [{ name: CONTAINER_ENTRY, value: record }],
    });
  } catch (err) {
    // The tree's own release already let go the threads it took; the rest (threads it never
    // reached, a frozen cgroup, the watchdog) is undone here.
    session.unwind();
    if (o.signal?.aborted && err instanceof FerryError && err.code === 'EINTR') {
      throw new FerryError('EINTR', `checkpoint of container ${o.id} ${describeCause(o.signal.reason)}: it was thawed and let go as it was`, { cause: err });
    }
    throw err;
  }
  session.close();
  return result;
}

/** The bundle's config.json. */
export function readConfig(bundle: string, id: string): OciConfig {
  const path = join(bundle, 'config.json');
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as OciConfig;
  } catch (err) {
    throw new FerryError('EBUNDLE', `cannot read ${path} of container ${id}: ${describeCause(err)}`, { cause: err });
  }
}

/** The parts of an OCI runtime config.json ferry reads or rewrites. */
export interface OciConfig {
  root?: { path: string; readonly?: boolean };
  process?: {
    args?: string[];
    terminal?: boolean;
    user?: { uid: number; gid: number; additionalGids?: number[] };
    capabilities?: Record<string, string[]>;
    noNewPrivileges?: boolean;
    [key: string]: unknown;
  };
  linux?: { namespaces?: Array<{ type: string; path?: string }>; seccomp?: unknown; [key: string]: unknown };
  [key: string]: unknown;
}

/** The rootfs of a bundle, absolute. */
export function rootfsOf(bundle: string, config: OciConfig): string {
  const p = config.root?.path ?? 'rootfs';
  return isAbsolute(p) ? p : join(bundle, p);
}
