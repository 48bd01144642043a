/**
 * `checkpoint` and `restore` of the runtime wrapper: runc's command line and files around
 * ferry's container checkpoint and restore (src/container/). What is written where is
 * documented in docs/runtime.md:
 *
 * image path D: ferry-image.tar (ferry's image of the container), descriptors.json (the
 *   init's descriptors 0..2 as readlink shows them, read before the dump), inventory.img
 *   (marks a complete checkpoint for podman; criu-files.ts);
 * work path W: dump.log / restore.log (ferry's log of the run, JSON lines), stats-dump /
 *   stats-restore (CRIU's stats format; criu-files.ts).
 */
import { closeSync, existsSync, fstatSync, mkdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Logger } from 'pino';
import type { CheckpointResult, RestoreResult } from '../api.js';
import type { Config } from '../config/config.js';
import { checkpointContainer } from '../container/checkpoint.js';
import { restoreContainer } from '../container/restore.js';
import { Runtime } from '../container/runtime.js';
import { describeCause, FerryError } from '../errors.js';
import { native } from '../native/binding.js';
import { createLogger } from '../log.js';
import type { RuntimeCheckpointArgs, RuntimeGlobals, RuntimeRestoreArgs } from './args.js';
import { encodeInventory, encodeStats, micros } from './criu-files.js';
import { checkpointAgainst, DELTA_FILE, imageToRestore, initOf, preDump } from './criu-track.js';

/** ferry's image inside the image path. */
export const IMAGE_FILE = 'ferry-image.tar';
/** The init's stdio at dump, as runc writes it. */
export const DESCRIPTORS_FILE = 'descriptors.json';
export const INVENTORY_FILE = 'inventory.img';

const PAGE = 4096;

/** What every operation of the wrapper needs. */
export interface RuntimeContext {
  /** The real runc. */
  runc: string;
  globals: RuntimeGlobals;
  /** Relative paths on the command line are relative to this. */
  cwd: string;
  config: Config;
  /** Aborts the operation (SIGINT/SIGTERM, src/signals.ts). */
  signal?: AbortSignal;
}

/** The logger of one run, writing to `file` (emptied first, as CRIU's -o does). */
export function runLogger(file: string, debug: boolean, bindings: Record<string, unknown>): Logger {
  writeFileSync(file, '');
  return createLogger({ level: debug ? 'debug' : 'info', file }).child(bindings);
}

function refuseUnsupported(verb: string, unsupported: readonly string[]): void {
  const first = unsupported[0];
  if (first !== undefined) throw new FerryError('EUNSUPPORTED', `${first} is not supported by ferry; nothing was done`);
}

/** readlink of /proc/PID/fd/0..2; '' for a descriptor that is not open. */
export function stdioLinks(pid: number): string[] {
  return [0, 1, 2].map((fd) => {
    try {
      return readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      return '';
    }
  });
}

/**
 * stats-dump for a checkpoint that wrote its image in `writeMs`. Pages are read from the
 * frozen tasks while they are written, so memdump_time is 0 and memwrite_time is the write;
 * freezing_time is 0 (ferry seizes the threads of the frozen cgroup in the same step,
 * counted in frozen_time).
 */
export function dumpStats(result: CheckpointResult, writeMs: number, skippedParent = 0): Buffer {
  const pages = Math.ceil(result.pagesBytes / PAGE);
  return encodeStats({
    dump: {
      freezingTime: 0, frozenTime: micros(result.frozenMs), memdumpTime: 0, memwriteTime: micros(writeMs),
      pagesScanned: pages, pagesSkippedParent: skippedParent, pagesWritten: pages - skippedParent, pagesLazy: 0,
    },
  });
}

/** stats-dump for a pre-dump: the pages it copied; nothing was frozen. */
export function preDumpStats(pages: number, ms: number): Buffer {
  return encodeStats({
    dump: {
      freezingTime: 0, frozenTime: 0, memdumpTime: micros(ms), memwriteTime: 0,
      pagesScanned: pages, pagesSkippedParent: 0, pagesWritten: pages, pagesLazy: 0,
    },
  });
}

/** stats-restore for a restore. */
export function restoreStats(result: RestoreResult): Buffer {
  return encodeStats({
    restore: {
      pagesCompared: 0, pagesSkippedCow: 0, forkingTime: 0, restoreTime: micros(result.restoreMs),
      pagesRestored: Math.ceil(result.pagesBytes / PAGE),
    },
  });
}

/** `checkpoint`: dumps container `a.id`; without --leave-running it is killed and deleted. */
export async function runtimeCheckpoint(a: RuntimeCheckpointArgs, ctx: RuntimeContext): Promise<void> {
  refuseUnsupported('checkpoint', a.unsupported);
  const imagePath = resolve(ctx.cwd, a.imagePath ?? 'checkpoint');
  const workPath = a.workPath !== undefined ? resolve(ctx.cwd, a.workPath) : imagePath;
  mkdirSync(imagePath, { recursive: true, mode: 0o700 });
  mkdirSync(workPath, { recursive: true, mode: 0o700 });
  const log = runLogger(join(workPath, 'dump.log'), ctx.globals.debug, { command: 'runtime checkpoint', container: a.id });
  log.info({ imagePath, workPath, leaveRunning: a.leaveRunning, files: a.files, runc: ctx.runc, root: ctx.globals.root }, 'start');
  try {
    const rt = new Runtime(ctx.runc, ctx.globals.root);
    const state = rt.state(a.id);
    const warn = (line: string): void => {
      log.warn(line);
      process.stderr.write(`ferry-runtime checkpoint: warning: ${line}\n`);
    };
    if (a.preDump) {
      if (state.status !== 'running') throw new FerryError('ENOTRUNNING', `container ${a.id} is ${state.status}, not running: only a running container can be pre-dumped`);
      const t0 = performance.now();
      const r = await preDump(initOf(state.pid), imagePath, a.parentPath, log, warn, ctx.signal);
      writeFileSync(join(workPath, 'stats-dump'), preDumpStats(r.pages, performance.now() - t0));
      log.info(r, 'pre-dumped');
      return;
    }
    // runc writes the init's stdio before the dump; restore swaps the pipes among them for
    // the ones its caller (conmon) hands over.
    if (state.status === 'running') writeFileSync(join(imagePath, DESCRIPTORS_FILE), JSON.stringify(stdioLinks(state.pid)));
    let writeFrom: number | undefined;
    let writeTo: number | undefined;
    const { result, skippedPages } = await checkpointAgainst(state.pid, imagePath, a.parentPath, a.leaveRunning, log, warn, ({ image, beforeKill }) => checkpointContainer({
      id: a.id, runtime: ctx.runc, ...(ctx.globals.root !== undefined ? { root: ctx.globals.root } : {}),
      // A container run with a terminal keeps it (files/tty.ts, role console), as with runc's criu.
      image, leaveRunning: a.leaveRunning, files: { ...a.files, orphanPts: true }, config: ctx.config, logger: log,
      ...(ctx.signal !== undefined ? { signal: ctx.signal } : {}), ...(beforeKill !== undefined ? { beforeKill } : {}),
      onProgress: (p) => {
        if (p.phase !== 'write') return;
        writeFrom ??= performance.now();
        writeTo = performance.now();
      },
    }));
    writeFileSync(join(imagePath, INVENTORY_FILE), encodeInventory());
    writeFileSync(join(workPath, 'stats-dump'), dumpStats(result, writeFrom !== undefined && writeTo !== undefined ? writeTo - writeFrom : 0, skippedPages));
    log.info({ result }, 'checkpointed');
  } catch (err) {
    log.error({ err }, 'checkpoint failed');
    throw err;
  } finally {
    if (a.statusFd !== undefined) {
      try { closeSync(a.statusFd); } catch { /* not open */ }
    }
  }
}

/**
 * Files of the caller to use instead of the image's, from descriptors.json: the caller's
 * descriptor i replaces the image's file whose link text was descriptors[i], for the
 * anonymous ones (pipes, sockets) only, as runc does: a path is opened again by its name.
 */
export function stdioInherit(imagePath: string, isOpen: (fd: number) => boolean = openFd): Record<string, number> {
  const file = join(imagePath, DESCRIPTORS_FILE);
  if (!existsSync(file)) return {};
  let links: unknown;
  try {
    links = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new FerryError('EIMAGE', `${file} is not JSON: ${(err as Error).message}`, { cause: err });
  }
  if (!Array.isArray(links)) throw new FerryError('EIMAGE', `${file} is not a JSON array of link texts`);
  const out: Record<string, number> = {};
  links.slice(0, 3).forEach((link: unknown, fd) => {
    if (typeof link !== 'string' || link === '' || link.startsWith('/')) return;
    if (out[link] === undefined && isOpen(fd)) out[link] = fd;
  });
  return out;
}

function openFd(fd: number): boolean {
  try {
    fstatSync(fd);
    return true;
  } catch {
    return false;
  }
}

/**
 * `restore`: rebuilds container `a.id` from the image path with the bundle's config. With
 * --detach it returns once the container runs; else it waits until the container stops.
 */
export async function runtimeRestore(a: RuntimeRestoreArgs, ctx: RuntimeContext): Promise<void> {
  refuseUnsupported('restore', a.unsupported);
  if (ctx.globals.systemdCgroup) throw new FerryError('EUNSUPPORTED', '--systemd-cgroup is not supported for restore yet (use the cgroupfs manager); nothing was done');
  const bundle = resolve(ctx.cwd, a.bundle ?? '.');
  const imagePath = resolve(ctx.cwd, a.imagePath ?? 'checkpoint');
  const workPath = a.workPath !== undefined ? resolve(ctx.cwd, a.workPath) : imagePath;
  if (!existsSync(join(imagePath, IMAGE_FILE)) && !existsSync(join(imagePath, DELTA_FILE))) {
    throw new FerryError('EIMAGE', `${imagePath} holds no ferry checkpoint (${IMAGE_FILE} is missing): only checkpoints made by ferry-runtime can be restored`);
  }
  mkdirSync(workPath, { recursive: true, mode: 0o700 });
  const log = runLogger(join(workPath, 'restore.log'), ctx.globals.debug, { command: 'runtime restore', container: a.id });
  const inherit = stdioInherit(imagePath);
  log.info({ bundle, imagePath, workPath, detach: a.detach, pidFile: a.pidFile, inherit, files: a.files, runc: ctx.runc }, 'start');
  const rtOpts = { runtime: ctx.runc, ...(ctx.globals.root !== undefined ? { root: ctx.globals.root } : {}) };
  let assembled: { image: string; done(): void } | undefined;
  // --console-socket: connected before anything is made (a wrong path fails first); the new
  // master of the container's terminal goes to it once the container runs.
  const console = a.consoleSocket !== undefined ? connectConsole(resolve(ctx.cwd, a.consoleSocket)) : undefined;
  const masters: number[] = [];
  try {
    // A checkpoint against pre-dumps: its image rebuilt from them (verified as any).
    assembled = imageToRestore(imagePath, workPath, log);
    const image = assembled.image;
    const result = await restoreContainer({
      ...rtOpts, id: a.id, bundle, image, inherit, config: ctx.config, logger: log,
      files: { ...a.files, ...(console !== undefined ? { onConsoleMaster: (m: number) => { masters.push(m); } } : {}) },
      ...(ctx.signal !== undefined ? { signal: ctx.signal } : {}),
      ...(a.pidFile !== undefined ? { pidFile: resolve(ctx.cwd, a.pidFile) } : {}),
    });
    try {
      for (const m of masters) native().unixSend(console!, Buffer.from('orphan-pts-master'), null, [m]);
    } catch (err) {
      // The container runs without anyone on its terminal: take it away, as runc would.
      try { new Runtime(ctx.runc, ctx.globals.root).run(['delete', '--force', a.id], `container ${a.id}`); } catch { /* gone */ }
      throw new FerryError('ECONSOLE', `cannot send container ${a.id}'s terminal to the console socket ${a.consoleSocket}: ${describeCause(err)}; `
        + 'the restored container was removed', { cause: err });
    }
    writeFileSync(join(workPath, 'stats-restore'), restoreStats(result));
    log.info({ result }, 'restored');
  } catch (err) {
    log.error({ err }, 'restore failed');
    throw err;
  } finally {
    assembled?.done();
    for (const m of masters) native().closeFd(m);
    if (console !== undefined) native().closeFd(console);
  }
  if (!a.detach) await waitStopped(new Runtime(ctx.runc, ctx.globals.root), a.id);
}

const AF_UNIX = 1, SOCK_STREAM = 1;
/** Longest sun_path (unix(7)). */
const SUN_PATH_MAX = 107;

/** A unix stream socket connected to `path` (runc's --console-socket). */
function connectConsole(path: string): number {
  const n = native();
  const name = Buffer.from(path);
  if (name.length > SUN_PATH_MAX) {
    throw new FerryError('EUSAGE', `--console-socket ${path} is longer than a unix socket name may be (${SUN_PATH_MAX} bytes); nothing was done`);
  }
  const fd = n.socket(AF_UNIX, SOCK_STREAM);
  try {
    n.unixConnect(fd, name);
    return fd;
  } catch (err) {
    n.closeFd(fd);
    throw new FerryError('ECONSOLE', `cannot connect to the console socket ${path}: ${describeCause(err)}; nothing was done`, { cause: err });
  }
}

/** Polls the runtime until the container is stopped or gone. */
async function waitStopped(rt: Runtime, id: string): Promise<void> {
  for (;;) {
    await new Promise((r) => setTimeout(r, 200));
    try {
      if (rt.state(id).status === 'stopped') return;
    } catch {
      return; // deleted
    }
  }
}
