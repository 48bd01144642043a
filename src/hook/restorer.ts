/**
 * The restore behind the OCI hook. The `poststart` hook runs while the runtime is still in
 * `create` (runc 1.1 runs it before `start` opens the exec fifo), so the init does not run the
 * stub yet and cannot until the hook has returned: the hook hands the work to this detached
 * restorer, which waits for the stub, adopts it (adopt.ts), and rebuilds the image's
 * processes in it with the core restore. The container's own stdio (the engine's pipes, a
 * log) replaces the stdio of the image's init: every descriptor that held the same pipe or
 * socket at checkpoint gets it.
 *
 * On failure the init is killed, so the container stops instead of sitting in the stub, and
 * one line goes to the container's stderr (what `podman logs` shows) and to the log.
 */
import { boundFromConfig, type BoundingConfig } from '../restore/bounds.js';
import { closeSync, mkdirSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { MadeRoot } from '../api.js';
import type { Config } from '../config/config.js';
import { CONTAINER_ENTRY, type ContainerRecord } from '../container/record.js';
import { validateClocks, type ContainerClocks } from '../container/clocks.js';
import { FerryError, describeCause } from '../errors.js';
import type { FilesRecord, TaskRecord } from '../image/records.js';
import { native } from '../native/binding.js';
import { restore } from '../restore/restore.js';
import { adoptStub, startTime, waitForStub } from './adopt.js';

/** Where the hook keeps what it knows about one container until `poststop`. */
export const RUN_DIR = '/run/ferry/hooks';

/** What the `poststart` hook hands the restorer (job.json in the container's run directory). */
export interface RestoreJob {
  /** Container id. */
  id: string;
  /** Host pid of its init, and that process's start time (/proc stat field 22). */
  pid: number;
  started: string;
  /** Image to restore from. */
  image: string;
  /** The original config's bounding parts (spec.ts BOUND_ANNOTATION), JSON; absent: no bound. */
  boundConfig?: string;
}

/** The run directory of container `id`. */
export function runDirOf(id: string): string {
  if (!/^[\w.-]+$/.test(id)) throw new FerryError('EUSAGE', `container id ${JSON.stringify(id)} cannot name a directory`);
  return join(RUN_DIR, id);
}

/** Writes the job of container `id`; returns its run directory. */
export function writeJob(job: RestoreJob): string {
  const dir = runDirOf(job.id);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  writeFileSync(join(dir, 'job.json'), JSON.stringify(job));
  return dir;
}

/** Reads the job in run directory `dir`. */
export function readJob(dir: string): RestoreJob {
  return JSON.parse(readFileSync(join(dir, 'job.json'), 'utf8')) as RestoreJob;
}

/**
 * The image's stdio to replace with the container's own (podman's pipes): every pipe or
 * socket the root held at descriptors 0..2 (files by path are reopened as they were).
 */
function stdioInherit(stdio: ReadonlyArray<number | undefined>): (image: { files: FilesRecord; root: TaskRecord }) => Record<string, number> {
  return ({ files, root }) => {
    const out: Record<string, number> = {};
    for (const fd of root.fds) {
      const mine = stdio[fd.fd];
      const link = files.files.find((f) => f.id === fd.file)?.link;
      if (mine !== undefined && typeof link === 'string' && !link.startsWith('/')) out[link] = mine;
    }
    return out;
  };
}

/** Restores container `job.id` from its image; throws after killing the init on failure. */
export async function runRestorer(job: RestoreJob, config: Config, logger: Logger, signal?: AbortSignal): Promise<void> {
  const log = logger.child({ container: job.id });
  if (!await waitForStub(job.pid, job.started)) {
    log.info({ targetPid: job.pid }, 'the init went away before it ran the stub: nothing to restore');
    return;
  }
  const n = native();
  const initPidfd = n.pidfdOpen(job.pid);
  const stdio = [0, 1, 2].map((fd) => {
    try { return n.pidfdGetfd(initPidfd, fd); } catch { return undefined; }
  });
  n.closeFd(initPidfd);
  try {
    const inherit = stdioInherit(stdio);
    const made = (maxFd: number, clocks?: ContainerClocks): Promise<MadeRoot> => adoptStub(job.pid, job.id, maxFd, clocks).then((controllerPidfd) => ({
      pid: job.pid,
      controllerPidfd,
      fileRoot: `/proc/${job.pid}/root`,
      destroy: () => killInit(job),
    }));
    // No privilege from the image: the processes get no more than the config.json the
    // container was created from, as precreate recorded it before its rewrite.
    const bound = job.boundConfig !== undefined
      ? boundFromConfig(JSON.parse(job.boundConfig) as BoundingConfig, `the config.json of container ${job.id} (as the hook's precreate found it)`)
      : undefined;
    if (bound === undefined) log.warn('no bound recorded by precreate: the restored processes are not held to the container\'s config.json');
    const r = await restore({ image: job.image, config, logger, inherit, ...(signal !== undefined ? { signal } : {}), ...(bound !== undefined ? { bound } : {}), makeRoot: async (image, maxFd) => {
      if (!image.has(CONTAINER_ENTRY)) throw new FerryError('EIMAGE', `image ${job.image} holds processes, not a container`);
      const record = await image.readJson(CONTAINER_ENTRY) as ContainerRecord;
      return made(maxFd, record.clocks !== undefined ? validateClocks(record.clocks) : undefined);
    } });
    log.info({ targetPid: r.pid, processes: r.pids.length, totalMs: r.totalMs }, 'restored');
  } catch (err) {
    // The line first: once the init is killed the runtime may stop reading the container's
    // output.
    const line = `ferry-hook: container ${job.id}: restore from ${job.image} failed: ${err instanceof FerryError ? err.message : describeCause(err)}\n`;
    log.error({ err }, line.trim());
    if (stdio[2] !== undefined) {
      try { writeSync(stdio[2], line); } catch { /* nobody reads it */ }
    }
    killInit(job);
    throw err;
  } finally {
    for (const fd of stdio) if (fd !== undefined) closeSync(fd);
  }
}

/** Kills the container's init (the stub, or what is restored of it) if it is still that process. */
function killInit(job: RestoreJob): void {
  if (startTime(job.pid) !== job.started) return;
  try { process.kill(job.pid, 'SIGKILL'); } catch { /* gone */ }
}

/**
 * `poststop`: stops a restorer still waiting for a container that never started, and removes
 * the container's run directory.
 */
export function cleanupContainer(id: string): void {
  const dir = runDirOf(id);
  try {
    const pid = Number(readFileSync(join(dir, 'restorer.pid'), 'utf8'));
    const started = readFileSync(join(dir, 'restorer.started'), 'utf8');
    if (pid > 0 && startTime(pid) === started) process.kill(pid, 'SIGKILL');
  } catch { /* no restorer, or it is gone */ }
  rmSync(dir, { recursive: true, force: true });
}
