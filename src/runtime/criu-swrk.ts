/**
 * DUMP and RESTORE of ferry's criu: what `runc checkpoint` and `runc restore` ask of
 * `criu swrk`, done with ferry's container checkpoint and restore (src/container/). The image
 * in the images dir is ferry's own (ferry-image.tar), not CRIU's; runc reads none of it (it
 * writes and reads descriptors.json itself). docs/runtime.md, "ferry's criu", says what is
 * supported and how a refusal looks.
 *
 * The caller. CRIU reaches the images and work dirs through the caller's descriptors
 * (/proc/PEER/fd/N, PEER being the process at the other end of the socket: runc, our parent).
 * Ferry's container engine works on a container by id through its runtime, so the caller's
 * command line (/proc/PEER/cmdline: runc's global flags, the verb, the id, restore's
 * --bundle) names the container, and its executable (/proc/PEER/exe) is the runtime.
 *
 * DUMP: the container is checkpointed as `ferry checkpoint` does (freeze, seize, dump; on any
 * failure it is thawed and let go as it was), but left in runc's state: runc deletes it after
 * the answer, unless --leave-running. Notifications "pre-dump", "network-lock" (with
 * --tcp-established) before, "post-dump" and, when it keeps running, "network-unlock" after.
 *
 * RESTORE: runc has made the container's cgroups and moved this process into them, and
 * expects criu to make the process tree in the namespaces of config.json. Ferry has runc make
 * them: a second runc, with a private --root, creates the sandbox from the bundle's
 * config.json (its hooks removed: runc runs them itself on "setup-namespaces"; cgroupsPath
 * "." so that it joins the cgroups this process is in) with ferry's restore stub as the init,
 * and ferry rebuilds the processes in it. runc is told "setup-namespaces" with the init's pid
 * once the sandbox exists, "post-restore" once the tree runs (runc records the container from
 * then on), and gets the init's pid in the answer. The private state is removed at the end: the
 * init's parent is runc (a child subreaper), as with CRIU's rst_sibling. A failure or a refused
 * notification removes the sandbox and everything in it; a watchdog does it if this process
 * dies first.
 */
import { existsSync, fstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, realpathSync, rmdirSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import type { Logger } from 'pino';
import type { CheckpointResult, RestoreResult } from '../api.js';
import type { Config } from '../config/config.js';
import { checkpointContainer, readConfig, rootfsOf, type OciConfig } from '../container/checkpoint.js';
import { restoreContainer } from '../container/restore.js';
import { Runtime } from '../container/runtime.js';
import { FerryError, describeCause, errnoCode } from '../errors.js';
import type { FileOptions } from '../files/types.js';
import { native } from '../native/binding.js';
import { armWatchdog } from '../watchdog.js';
import { parseCheckpoint, parseRestore, splitArgs, type RuntimeGlobals } from './args.js';
import { encodeInventory } from './criu-files.js';
import { refusal, type CriuOpts } from './criu-opts.js';
import { CriuReqType, typeName, type CriuRequest, type CriuResponse } from './criu-rpc.js';
import { checkpointAgainst, imageToRestore, initOf, preDump } from './criu-track.js';
import { dumpStats, IMAGE_FILE, INVENTORY_FILE, preDumpStats, restoreStats, runLogger } from './operations.js';

/** The socket to the caller, message by message. */
export interface Channel {
  /** Sends `r`, with descriptors `fds` attached (SCM_RIGHTS) if given. */
  send(r: CriuResponse, fds?: readonly number[]): void;
  /** The next request, or null when the caller closed the socket. */
  receive(): CriuRequest | null;
}

/** What a DUMP or RESTORE needs besides its request. */
export interface SwrkContext {
  channel: Channel;
  /** Pid of the caller (the other end of the socket). */
  peer: number;
  config: Config;
  signal?: AbortSignal;
}

/** Where the state of the second runc of a restore lives (a fresh directory each time). */
export const PRIVATE_STATE_PARENT = '/run/ferry-criu';

/** The caller's runtime invocation, from its command line. */
interface Caller {
  /** The runtime's executable (runc). */
  exe: string;
  globals: RuntimeGlobals;
  verb: string;
  id: string;
  /** restore: the bundle, absolute. */
  bundle?: string;
}

/** The pid at the other end of unix socket `fd`, if it is `candidate` (our parent). */
export function peerOf(fd: number, candidate: number = process.ppid): number {
  const ino = fstatSync(fd).ino;
  const peer = native().unixDiag(ino)?.peer ?? 0;
  const want = `socket:[${peer}]`;
  let fds: string[] = [];
  try {
    if (peer !== 0 && candidate > 1) fds = readdirSync(`/proc/${candidate}/fd`);
  } catch { /* gone */ }
  for (const d of fds) {
    try {
      if (readlinkSync(`/proc/${candidate}/fd/${d}`) === want) return candidate;
    } catch { /* closed meanwhile */ }
  }
  throw new FerryError('ECALLER', `the other end of socket ${fd} (socket:[${peer}]) is not held by the parent process ${candidate}:`
    + ' ferry\'s criu serves the runtime that started it (runc checkpoint/restore)');
}

/**
 * Writes `line` to the caller's stderr; false when it cannot. runc 1.1 prints only "criu
 * failed: type DUMP errno N" and the log file's name, not cr_errmsg, and gives criu /dev/null
 * as stderr for a dump, so ferry's line goes to runc's own descriptor 2, taken with
 * pidfd_getfd(2) so that it shares runc's file offset (a file runc writes to is not
 * overwritten).
 */
export function tellPeer(peer: number, line: string): boolean {
  const n = native();
  let pidfd = -1;
  let fd = -1;
  try {
    pidfd = n.pidfdOpen(peer);
    fd = n.pidfdGetfd(pidfd, 2);
    writeSync(fd, `${line}\n`);
    return true;
  } catch {
    return false;
  } finally {
    if (fd >= 0) n.closeFd(fd);
    if (pidfd >= 0) n.closeFd(pidfd);
  }
}

/** The directory behind the caller's descriptor `fd` (images_dir_fd, work_dir_fd). */
function callerDir(peer: number, fd: number, what: string): string {
  const link = `/proc/${peer}/fd/${fd}`;
  let dir: string;
  try {
    dir = realpathSync(link);
  } catch (err) {
    throw new FerryError('EIMAGE', `${what} ${fd} of the caller (pid ${peer}) cannot be reached: ${describeCause(err)}`, { cause: err });
  }
  if (!statSync(dir).isDirectory()) throw new FerryError('EIMAGE', `${what} ${fd} of the caller (pid ${peer}) is ${dir}, not a directory`);
  return dir;
}

/** The caller's runtime command (runc's flags), checked to be `verb`. */
function callerOf(peer: number, verb: 'checkpoint' | 'restore', type: string): Caller {
  let argv: string[];
  let exe: string;
  let cwd: string;
  try {
    argv = readFileSync(`/proc/${peer}/cmdline`, 'utf8').split('\0');
    if (argv.at(-1) === '') argv.pop();
    exe = readlinkSync(`/proc/${peer}/exe`).replace(/ \(deleted\)$/, '');
    cwd = readlinkSync(`/proc/${peer}/cwd`);
  } catch (err) {
    throw new FerryError('ECALLER', `cannot read the command line of the caller (pid ${peer}): ${describeCause(err)}`, { cause: err });
  }
  const wrong = (why: string): never => {
    throw new FerryError('ECALLER', `${type} is served for '${verb}' of a runc-compatible runtime, but the caller (pid ${peer}, ${exe}) ${why}`);
  };
  let split;
  try {
    split = splitArgs(argv.slice(1));
  } catch (err) {
    return wrong(`has a command line ferry cannot read (${(err as Error).message})`);
  }
  if (split.verb !== verb) return wrong(`runs '${split.verb ?? ''}'`);
  try {
    if (verb === 'checkpoint') return { exe, globals: split.globals, verb, id: parseCheckpoint(split.rest).id };
    const a = parseRestore(split.rest);
    return { exe, globals: split.globals, verb, id: a.id, bundle: resolve(cwd, a.bundle ?? '.') };
  } catch (err) {
    return wrong(`has a command line ferry cannot read (${(err as Error).message})`);
  }
}

/** Sends notification `script` (with `pid`, and descriptors `fds`) and waits for the caller's answer. */
function notify(ctx: SwrkContext, o: CriuOpts, script: string, log: Logger, pid?: number, fds?: readonly number[]): void {
  if (!o.notifyScripts) return;
  ctx.channel.send({ type: CriuReqType.NOTIFY, success: true, notify: { script, ...(pid !== undefined ? { pid } : {}) } }, fds);
  const ack = ctx.channel.receive();
  log.info({ script, notifyPid: pid, ack: ack === null ? 'closed' : { type: typeName(ack.type), success: ack.notifySuccess } }, 'notified');
  if (ack === null) throw new FerryError('ECALLER', `the caller closed the socket instead of answering notification "${script}"`);
  if (ack.type !== CriuReqType.NOTIFY || !ack.notifySuccess) {
    throw new FerryError('ECALLER', `the caller failed notification "${script}"${ack.type !== CriuReqType.NOTIFY ? ` (it sent ${typeName(ack.type)})` : ''}`);
  }
}

/** The images and work dirs and the run's logger. */
function dirs(ctx: SwrkContext, o: CriuOpts, defaultLog: string, bindings: Record<string, unknown>): { images: string; work: string; log: Logger } {
  if (o.imagesDirFd === undefined) throw new FerryError('EUSAGE', 'the request has no images_dir_fd: ferry\'s criu needs the images directory as a descriptor');
  const images = callerDir(ctx.peer, o.imagesDirFd, 'images_dir_fd');
  const work = o.workDirFd !== undefined ? callerDir(ctx.peer, o.workDirFd, 'work_dir_fd') : images;
  const name = o.logFile ?? defaultLog;
  if (name === '' || name.includes('/') || name === '.' || name === '..' || name.length > 255) {
    throw new FerryError('EUSAGE', `log_file ${JSON.stringify(name.slice(0, 100))} is not a plain file name (CRIU allows no directories in it)`);
  }
  const log = runLogger(join(work, name), (o.logLevel ?? 2) >= 4, bindings);
  return { images, work, log };
}

function fileOptions(o: CriuOpts): Partial<FileOptions> {
  return {
    tcpEstablished: o.tcpEstablished, extUnixSk: o.extUnixSk, shellJob: o.shellJob, fileLocks: o.fileLocks,
    tcpClose: o.tcpClose, skipInFlight: o.tcpSkipInFlight, orphanPts: o.orphanPtsMaster,
  };
}

/** Refuses what ferry cannot do, before anything is touched. */
function refuse(o: CriuOpts): void {
  const why = refusal(o);
  if (why !== undefined) throw new FerryError('EUNSUPPORTED', `${why}; nothing was done`);
}

/** The container runc's command names, checked against the request's pid. */
function containerOf(o: CriuOpts, caller: Caller, type: string): { pid: number; status: string } {
  const state = new Runtime(caller.exe, caller.globals.root).state(caller.id);
  if (o.pid !== undefined && o.pid !== state.pid) {
    throw new FerryError('ECALLER', `${type} asks for pid ${o.pid}, but container ${caller.id}'s init is ${state.pid}; nothing was done`);
  }
  return state;
}

/** A warning for the user: in the log, and on runc's stderr. */
function warner(ctx: SwrkContext, log: Logger): (line: string) => void {
  return (line) => {
    log.warn(line);
    tellPeer(ctx.peer, `criu (ferry): warning: ${line}`);
  };
}

/**
 * PRE_DUMP: copies the memory of the container whose init is `o.pid` while it runs (only
 * what changed since the parent, with parent_img) and leaves its memory tracked for the next
 * dump (criu-track.ts). The container is never stopped but for the brief holds of tracking.
 */
export async function servePreDump(o: CriuOpts, ctx: SwrkContext): Promise<CriuResponse> {
  refuse(o);
  const caller = callerOf(ctx.peer, 'checkpoint', 'PRE_DUMP');
  const { images, work, log } = dirs(ctx, o, 'dump.log', { command: 'criu pre-dump', container: caller.id });
  log.info({ images, work, caller, options: summary(o) }, 'start');
  try {
    const state = containerOf(o, caller, 'PRE_DUMP');
    if (state.status !== 'running') throw new FerryError('ENOTRUNNING', `container ${caller.id} is ${state.status}, not running: only a running container can be pre-dumped`);
    const t0 = performance.now();
    const r = await preDump(initOf(state.pid), images, o.parentImg, log, warner(ctx, log), ctx.signal);
    writeFileSync(join(work, 'stats-dump'), preDumpStats(r.pages, performance.now() - t0));
    log.info(r, 'pre-dumped');
    return { type: CriuReqType.PRE_DUMP, success: true, dump: { restored: false } };
  } catch (err) {
    log.error({ err }, 'pre-dump failed');
    throw err;
  }
}

/** DUMP: checkpoints the container whose init is `o.pid`. */
export async function serveDump(o: CriuOpts, ctx: SwrkContext): Promise<CriuResponse> {
  refuse(o);
  const caller = callerOf(ctx.peer, 'checkpoint', 'DUMP');
  const { images, work, log } = dirs(ctx, o, 'dump.log', { command: 'criu dump', container: caller.id });
  log.info({ images, work, caller, options: summary(o) }, 'start');
  try {
    const state = containerOf(o, caller, 'DUMP');
    if (o.freezeCgroup !== undefined && !inCgroup(o.freezeCgroup, state.pid)) {
      throw new FerryError('ECALLER', `DUMP asks to freeze ${o.freezeCgroup}, which does not hold container ${caller.id}'s init ${state.pid}; nothing was done`);
    }
    notify(ctx, o, 'pre-dump', log);
    if (o.tcpEstablished) notify(ctx, o, 'network-lock', log);
    let writeFrom: number | undefined;
    let writeTo: number | undefined;
    // Against a pre-dump (parent_img): a delta of it when its tracking goes on (criu-track.ts).
    const { result, skippedPages }: { result: CheckpointResult; skippedPages: number } = await checkpointAgainst(state.pid, images, o.parentImg, o.leaveRunning, log, warner(ctx, log),
      ({ image, beforeKill }) => checkpointContainer({
        id: caller.id, runtime: caller.exe, ...(caller.globals.root !== undefined ? { root: caller.globals.root } : {}),
        image, leaveRunning: o.leaveRunning, files: fileOptions(o), config: ctx.config, logger: log,
        keepInRuntime: true, ...(ctx.signal !== undefined ? { signal: ctx.signal } : {}), ...(beforeKill !== undefined ? { beforeKill } : {}),
        onProgress: (p) => {
          if (p.phase !== 'write') return;
          writeFrom ??= performance.now();
          writeTo = performance.now();
        },
      }));
    writeFileSync(join(images, INVENTORY_FILE), encodeInventory());
    writeFileSync(join(work, 'stats-dump'), dumpStats(result, writeFrom !== undefined && writeTo !== undefined ? writeTo - writeFrom : 0, skippedPages));
    log.info({ result }, 'checkpointed');
    notify(ctx, o, 'post-dump', log);
    if (o.tcpEstablished && o.leaveRunning) notify(ctx, o, 'network-unlock', log);
    return { type: CriuReqType.DUMP, success: true, dump: { restored: false } };
  } catch (err) {
    log.error({ err }, 'dump failed');
    throw err;
  }
}

/** inherit_fd entries that name a pipe, socket or anonymous file: the restore's stdio. */
function inheritOf(o: CriuOpts, log: Logger): Record<string, number> {
  const out: Record<string, number> = {};
  for (const { key, fd } of o.inheritFd) {
    if (!/^(pipe|socket):\[\d+\]$|^anon_inode:/.test(key)) {
      log.info({ key, fd }, 'inherit_fd not for a file of the image: left alone');
      continue;
    }
    try {
      fstatSync(fd);
    } catch {
      throw new FerryError('EUSAGE', `inherit_fd ${key} names descriptor ${fd}, which is not open in criu`);
    }
    out[key] ??= fd;
  }
  return out;
}

/**
 * The config.json the second runc builds the sandbox from: the caller's bundle's, without
 * hooks (runc runs them on "setup-namespaces"), with cgroupsPath "." (the cgroups this
 * process is in: runc's own for the container), an absolute root and absolute bind sources.
 */
export function sandboxConfig(config: OciConfig, bundle: string): OciConfig {
  const { hooks: _hooks, ...rest } = config;
  const mounts = Array.isArray(config.mounts)
    ? (config.mounts as Array<Record<string, unknown>>).map((m) => (typeof m.source === 'string' && m.source !== '' && !isAbsolute(m.source)
      && Array.isArray(m.options) && (m.options as unknown[]).some((x) => x === 'bind' || x === 'rbind')
      ? { ...m, source: join(bundle, m.source) } : m))
    : config.mounts;
  return {
    ...rest,
    ...(mounts !== undefined ? { mounts } : {}),
    root: { ...config.root, path: rootfsOf(bundle, config) },
    linux: { ...config.linux, cgroupsPath: '.' },
  };
}

/** RESTORE: makes the container's processes from ferry's image in the images dir. */
export async function serveRestore(o: CriuOpts, ctx: SwrkContext): Promise<CriuResponse> {
  refuse(o);
  const caller = callerOf(ctx.peer, 'restore', 'RESTORE');
  const { images, work, log } = dirs(ctx, o, 'restore.log', { command: 'criu restore', container: caller.id });
  const bundle = caller.bundle!;
  log.info({ images, work, caller, options: summary(o) }, 'start');
  let image = join(images, IMAGE_FILE);
  let assembled: { image: string; done(): void } | undefined;
  let priv: string | undefined;
  let watchdog: { disarm(): void } | undefined;
  let made = false;
  let rt: Runtime | undefined;
  // The container's terminal made again (files/tty.ts, role console): its new master, a copy
  // of ours, until runc has it ("orphan-pts-master", which runc passes on to its console
  // socket). Closed on every way out; if this process dies, the kernel closes it.
  const masters: number[] = [];
  try {
    // A dump against pre-dumps: its image rebuilt from them (verified as any by the restore).
    assembled = imageToRestore(images, work, log);
    image = assembled.image;
    if (!existsSync(image)) {
      throw new FerryError('EIMAGE', `${images} holds no ferry checkpoint (${IMAGE_FILE} is missing): ferry's criu restores only what it checkpointed`);
    }
    const config = readConfig(bundle, caller.id);
    const rootfs = rootfsOf(bundle, config);
    if (o.root !== undefined && !sameDir(o.root, rootfs)) {
      throw new FerryError('EBUNDLE', `RESTORE's root ${o.root} is not the rootfs ${rootfs} of bundle ${bundle}`);
    }
    const inherit = inheritOf(o, log);
    priv = privateDir();
    const state = join(priv, 'state');
    const sandbox = join(priv, 'bundle');
    mkdirSync(state, { mode: 0o700 });
    mkdirSync(sandbox, { mode: 0o700 });
    writeFileSync(join(sandbox, 'config.json'), JSON.stringify(sandboxConfig(config, bundle)), { mode: 0o600 });
    rt = new Runtime(caller.exe, state);
    // Until runc has the tree ("post-restore" answered), ferry's death must take it away.
    // The watchdog also removes the private state, and its parent if no other restore uses it
    // (sh: one program for these steps).
    watchdog = await armWatchdog(['exec', '/bin/sh', '-c', '"$1" --root "$2" delete --force "$3"; rm -rf -- "$4"; rmdir -- "${4%/*}" 2>/dev/null || true', 'sh',
      rt.path, state, caller.id, priv], `container ${caller.id}`);
    made = true;
    const result: RestoreResult = await restoreContainer({
      id: caller.id, runtime: caller.exe, root: state, bundle: sandbox, image, inherit,
      files: { ...fileOptions(o), ...(o.orphanPtsMaster && o.notifyScripts ? { onConsoleMaster: (m: number) => { masters.push(m); } } : {}) },
      config: ctx.config, logger: log, ...(ctx.signal !== undefined ? { signal: ctx.signal } : {}),
      onInit: async (pid) => { notify(ctx, o, 'setup-namespaces', log, pid); },
    });
    for (const m of masters) notify(ctx, o, 'orphan-pts-master', log, undefined, [m]);
    notify(ctx, o, 'post-restore', log, result.pid);
    if (o.tcpEstablished) notify(ctx, o, 'network-unlock', log);
    made = false;
    watchdog.disarm();
    writeFileSync(join(work, 'stats-restore'), restoreStats(result));
    log.info({ result }, 'restored');
    return { type: CriuReqType.RESTORE, success: true, restore: { pid: result.pid } };
  } catch (err) {
    log.error({ err }, 'restore failed');
    if (made && rt !== undefined) {
      try { rt.run(['delete', '--force', caller.id], `container ${caller.id}`); } catch { /* never made, or gone */ }
    }
    throw err;
  } finally {
    watchdog?.disarm();
    for (const m of masters) native().closeFd(m);
    if (priv !== undefined) {
      rmSync(priv, { recursive: true, force: true });
      // The parent goes too when no other restore uses it (ENOTEMPTY: one does).
      try { rmdirSync(PRIVATE_STATE_PARENT); } catch { /* in use, or gone */ }
    }
    assembled?.done();
  }
}

/**
 * A fresh private directory under PRIVATE_STATE_PARENT, which is made if missing (again, if a
 * restore that just ended removed it in between).
 */
function privateDir(): string {
  for (let attempt = 0; ; attempt++) {
    mkdirSync(PRIVATE_STATE_PARENT, { recursive: true, mode: 0o700 });
    try {
      return mkdtempSync(join(PRIVATE_STATE_PARENT, `${process.pid}-`));
    } catch (err) {
      if (errnoCode(err) !== 'ENOENT' || attempt >= 3) throw err;
    }
  }
}

/** Whether cgroup directory `dir` (an absolute path under /sys/fs/cgroup) holds process `pid`. */
function inCgroup(dir: string, pid: number): boolean {
  if (!dir.startsWith('/sys/fs/cgroup/') || dir.split('/').includes('..')) return false;
  try {
    return readFileSync(join(dir, 'cgroup.procs'), 'utf8').split('\n').includes(String(pid));
  } catch {
    return false;
  }
}

function sameDir(a: string, b: string): boolean {
  try {
    const x = statSync(a);
    const y = statSync(b);
    return x.dev === y.dev && x.ino === y.ino;
  } catch {
    return false;
  }
}

/** The options worth a log line. */
function summary(o: CriuOpts): Record<string, unknown> {
  const { fields: _fields, ...rest } = o;
  return { ...rest, extMnt: o.extMnt.length };
}
