/**
 * Restore of an OCI container (DESIGN.md §5): the runtime builds the sandbox (namespaces,
 * cgroups, mounts, rootfs) from the bundle, with the restore stub as the container's init;
 * ferry then rebuilds the image's processes inside it with their pids of the container's pid
 * namespace, and lets them go. The runtime knows the container from then on: `state`, `kill`,
 * `delete` work as on any container.
 *
 * The bundle's config.json is given to `runc create` rewritten for the restore: the process
 * is the stub (passed as descriptor 3 and run as /proc/self/fd/3), root, with every capability
 * ferry has and no seccomp filter and no no_new_privs (each task's own credentials, filters
 * and flags are restored at the very end), and descriptor 4 is a pidfd of ferry, through which
 * each task pulls its files. The original config.json is put back right after `create`.
 * Before any of that, the image's credentials are held against the bundle's config.json
 * (restore/bounds.ts): an image cannot give its processes more than the runtime would.
 */
import { closeSync, existsSync, lstatSync, mkdtempSync, openSync, readFileSync, realpathSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, posix } from 'node:path';
import type { MadeRoot, RestoreOptions, RestoreResult } from '../api.js';
import { SYS } from '../arch/x86-64.js';
import { FerryError, describeCause } from '../errors.js';
import { faultPointSync } from '../fault.js';
import type { Image } from '../image/reader.js';
import { defaultStubPath, native } from '../native/binding.js';
import { parseMaps } from '../proc/maps.js';
import { readProcText } from '../proc/read.js';
import { parseStatus } from '../proc/status.js';
import { boundFromConfig, CAPABILITIES, type CredsBound } from '../restore/bounds.js';
import { restore } from '../restore/restore.js';
import { useStubGadget } from '../restore/address-space.js';
import { Tracee } from '../task/tracee.js';
import { readConfig, rootfsOf, type OciConfig } from './checkpoint.js';
import { DEVSHM_ENTRY, writeDevShm, type DevShmRecord } from './devshm.js';
import { applyRootfsChanges, ROOTFS_ENTRY, validateRootfs } from './rootfs.js';
import { CONTAINER_ENTRY, type ContainerRecord } from './record.js';
import { enterTimeNamespace, validateClocks } from './clocks.js';
import { Runtime } from './runtime.js';
import { armWatchdog } from '../watchdog.js';

/** A container's bound is its bundle's config.json, always: no other can be given. */
export interface ContainerRestoreOptions extends Omit<RestoreOptions, 'makeRoot' | 'bound'> {
  /** Container id to create (the checkpointed one's or a new one). */
  id: string;
  /** Bundle to build the sandbox from; default: the checkpointed container's. */
  bundle?: string;
  runtime: string;
  root?: string;
  /**
   * Awaited once the runtime has made the sandbox and its init runs the stub (seized), with
   * the init's host pid, before any process of the image is made: ferry's criu tells runc
   * "setup-namespaces" here. Rejecting fails the restore, which removes the sandbox.
   */
  onInit?: (pid: number) => Promise<void>;
}

const F_DUPFD_CLOEXEC = 1030;

/** Every capability in ferry's own bounding set, by OCI name. */
function ferryCapabilities(): string[] {
  const bnd = parseStatus(readProcText(process.pid, 'status')).capBnd;
  return CAPABILITIES.filter((_, i) => (bnd >> BigInt(i)) & 1n).map((n) => `CAP_${n}`);
}

/** config.json for the restore: the stub as a root, fully capable, unfiltered process. */
export function restoreConfig(config: OciConfig, bundle: string): OciConfig {
  const caps = ferryCapabilities();
  const { seccomp: _seccomp, ...linux } = config.linux ?? {};
  return {
    ...config,
    root: { ...config.root, path: rootfsOf(bundle, config) },
    process: {
      ...config.process,
      args: ['/proc/self/fd/3'],
      terminal: false,
      user: { uid: 0, gid: 0 },
      noNewPrivileges: false,
      capabilities: { bounding: caps, effective: caps, permitted: caps, inheritable: caps, ambient: caps },
    },
    linux,
  };
}

/** Restores container `o.id` from `o.image`. */
export async function restoreContainer(o: ContainerRestoreOptions): Promise<RestoreResult> {
  const rt = new Runtime(o.runtime, o.root);
  let exists = true;
  try {
    rt.state(o.id);
  } catch (err) {
    if (!(err instanceof FerryError && err.code === 'ENOCONTAINER')) throw err;
    exists = false;
  }
  if (exists) throw new FerryError('EEXIST', `container ${o.id} already exists in ${rt.name}: delete it first, or restore under another id`);
  return restore({
    ...o,
    bound: (image) => bundleBound(o, image),
    makeRoot: (image, maxFd) => makeInit(o, rt, image, maxFd),
  });
}

/**
 * The most the restored processes may get: what the runtime would give them from the
 * config.json of the bundle they are restored into (the stub itself runs with ferry's
 * capabilities, see restoreConfig). An image without a container record: makeInit refuses it.
 */
async function bundleBound(o: ContainerRestoreOptions, image: Image): Promise<CredsBound | undefined> {
  if (!image.manifest.entries.some((e) => e.name === CONTAINER_ENTRY)) return undefined;
  const bundle = bundleOf(o, await image.readJson(CONTAINER_ENTRY) as ContainerRecord);
  return boundFromConfig(readConfig(bundle, o.id), join(bundle, 'config.json'));
}

/** Longest bundle path taken from an image. */
const MAX_BUNDLE_PATH = 4096;
const S_ISVTX = 0o1000;

/**
 * The bundle to restore into: `--bundle` as given (the caller's choice), else the one the
 * image's container record names, which is untrusted: its config.json bounds the credentials
 * of the restored processes and runc builds the sandbox from it, so an image must not be able
 * to name a bundle someone else wrote. It must be an absolute, normalised path (no "." or ".."
 * part, no NUL, at most 4096 bytes) of an existing directory owned by root and not writable by
 * group or others, every directory above it likewise (or sticky, as /tmp: no one else can
 * rename what root made there), holding a regular config.json (not a symlink) owned by root
 * and not writable by group or others. Symlinks on the way are resolved once here and the
 * resolved path is used from then on. Otherwise: EBUNDLE, one line saying to pass --bundle.
 */
export function bundleOf(o: Pick<ContainerRestoreOptions, 'bundle'>, record: ContainerRecord): string {
  if (o.bundle !== undefined) return o.bundle;
  const raw: unknown = (record as { bundle?: unknown } | null)?.bundle;
  const refuse = (why: string): never => {
    const shownPath = typeof raw === 'string' ? JSON.stringify(raw.slice(0, 200)) + (raw.length > 200 ? '…' : '') : 'no bundle';
    throw new FerryError('EBUNDLE', `image: ${CONTAINER_ENTRY} names ${typeof raw === 'string' ? `bundle ${shownPath}` : shownPath}`
      + `${why}: not used; pass --bundle with the bundle to restore into`);
  };
  if (typeof raw !== 'string' || raw === '') return refuse('');
  if (raw.length > MAX_BUNDLE_PATH) return refuse(`, longer than ${MAX_BUNDLE_PATH} bytes`);
  if (raw.includes('\0')) return refuse(', which holds a NUL byte');
  if (!raw.startsWith('/')) return refuse(', which is not an absolute path');
  const trimmed = raw.length > 1 ? raw.replace(/\/+$/, '') : raw;
  if (posix.normalize(trimmed) !== trimmed || trimmed.split('/').includes('..')) return refuse(', which is not a normalised path (".", ".." or "//" in it)');
  let real: string;
  try {
    real = realpathSync(trimmed);
  } catch (err) {
    return refuse(`, which cannot be reached here (${describeCause(err)})`);
  }
  const safeDir = (dir: string, self: boolean): string | undefined => {
    const st = lstatSync(dir);
    if (!st.isDirectory()) return `${dir} is not a directory`;
    if (st.uid !== 0) return `${dir} is owned by uid ${st.uid}, not root`;
    if ((st.mode & 0o022) !== 0 && (self || (st.mode & S_ISVTX) === 0)) return `${dir} is writable by group or others`;
    return undefined;
  };
  try {
    for (let d = real, self = true; ; d = dirname(d), self = false) {
      const why = safeDir(d, self);
      if (why !== undefined) return refuse(`: ${why}`);
      if (d === '/') break;
    }
    const cfg = join(real, 'config.json');
    const st = lstatSync(cfg, { throwIfNoEntry: false });
    if (!st) return refuse(`: it holds no config.json`);
    if (!st.isFile()) return refuse(`: its config.json is not a regular file`);
    if (st.uid !== 0) return refuse(`: its config.json is owned by uid ${st.uid}, not root`);
    if ((st.mode & 0o022) !== 0) return refuse(': its config.json is writable by group or others');
  } catch (err) {
    if (err instanceof FerryError) throw err;
    return refuse(`, which cannot be checked here (${describeCause(err)})`);
  }
  return real;
}

/** Creates and starts the container with the stub as its init; seizes it. */
async function makeInit(o: ContainerRestoreOptions, rt: Runtime, image: Image, maxFd: number): Promise<MadeRoot> {
  if (!image.manifest.entries.some((e) => e.name === CONTAINER_ENTRY)) {
    throw new FerryError('EIMAGE', `image ${o.image} holds processes, not a container: restore it without a container id`);
  }
  const record = await image.readJson(CONTAINER_ENTRY) as ContainerRecord;
  const bundle = bundleOf(o, record);
  const config = readConfig(bundle, o.id);
  checkBundle(config, record, bundle);
  // The rootfs changes of the checkpointed container (a no-op where they already are).
  if (image.manifest.entries.some((e) => e.name === ROOTFS_ENTRY)) {
    applyRootfsChanges(rootfsOf(bundle, config), validateRootfs(await image.readJson(ROOTFS_ENTRY)));
  }
  const stubPath = o.config.restore.stub || defaultStubPath();
  const n = native();
  const work = mkdtempSync(join(tmpdir(), 'ferry-restore-'));
  const configPath = join(bundle, 'config.json');
  const original = readFileSync(configPath);
  const stubFd = openSync(stubPath, 'r');
  const pidfd = n.pidfdOpen(process.pid);
  const out = openSync(join(work, 'runtime.log'), 'w+');
  const nul = openSync('/dev/null', 'r+');
  let created = false;
  // config.json is swapped for the moment of `create` (below); its original waits beside it.
  const backup = `${configPath}.ferry-${process.pid}.orig`;
  // If ferry dies from here until the tree runs, the runtime must not keep the container, and
  // the bundle gets its config.json back if ferry was killed while it was swapped.
  const watchdog = await armWatchdog(['exec', '/bin/sh', '-c', 'b="$1"; c="$2"; shift 2; if [ -e "$b" ]; then mv -f -- "$b" "$c"; fi; exec "$@"',
    'sh', backup, configPath, rt.path, ...rt.args(['delete', '--force', o.id])], `container ${o.id}`);
  const destroy = (): void => {
    if (created) {
      created = false;
      try { rt.run(['delete', '--force', o.id], `container ${o.id}`); } catch { /* already gone */ }
    }
    watchdog.disarm();
  };
  try {
    // runc reads the config during create only: swap it in for that moment. Every file is
    // renamed into place, so config.json is always whole: the original or the restore's.
    const tmp = `${configPath}.ferry-${process.pid}`;
    writeFileSync(backup, original, { mode: statSync(configPath).mode & 0o7777, flag: 'w' });
    writeFileSync(tmp, JSON.stringify(restoreConfig(config, bundle)));
    renameSync(tmp, configPath);
    try {
      faultPointSync('configswap');
      rt.run(['create', '--bundle', bundle, '--pid-file', join(work, 'pid'), '--preserve-fds', '2', o.id], `container ${o.id}`,
        { stdio: [nul, out, out, stubFd, pidfd] });
      created = true;
    } catch (err) {
      throw new FerryError('ERUNTIME', `cannot create container ${o.id} from bundle ${bundle}: ${describeCause(err)}`
        + ` (${readFileSync(join(work, 'runtime.log'), 'utf8').trim().split('\n').at(-1) ?? ''})`, { cause: err });
    } finally {
      renameSync(backup, configPath);
    }
    rt.run(['start', o.id], `container ${o.id}`);
    const pid = Number(readFileSync(join(work, 'pid'), 'utf8').trim());
    const stub = await seizeStub(pid, o.id);
    // Its clocks go on from the checkpoint: a time namespace before any process exists.
    if (record.clocks !== undefined) enterTimeNamespace(stub, pid, 4, validateClocks(record.clocks), o.id);
    await o.onInit?.(pid);
    // POSIX shared memory the processes map by path must be there before they are rebuilt.
    if (image.manifest.entries.some((e) => e.name === DEVSHM_ENTRY)) {
      writeDevShm(pid, validateDevShm(await image.readJson(DEVSHM_ENTRY)));
    }
    // Move the pidfd above every descriptor of the image and close the rest (stdio, the stub).
    const top = maxFd + 1;
    const at = Number(stub.syscall(SYS.fcntl, 4, F_DUPFD_CLOEXEC, top));
    stub.syscall(SYS.close_range, 0, at - 1, 0);
    stub.close();
    return { pid, controllerPidfd: at, fileRoot: `/proc/${pid}/root`, destroy, running: () => watchdog.disarm() };
  } catch (err) {
    destroy();
    throw err;
  } finally {
    for (const fd of [stubFd, out, nul]) closeSync(fd);
    n.closeFd(pidfd);
    rmSync(work, { recursive: true, force: true });
  }
}

/** Seizes the container's init once it runs the stub (it waits in pause()). */
export async function seizeStub(pid: number, id: string): Promise<Tracee> {
  const n = native();
  // The runtime execs the stub right after `start`; wait until it really is the stub.
  for (let i = 0; i < 500 && !isStub(pid); i++) await new Promise((r) => setTimeout(r, 2));
  if (!isStub(pid)) throw new FerryError('ESPAWN', `container ${id}: its init ${pid} did not start the restore stub`);
  n.seize(pid, 0);
  n.interrupt(pid);
  const st = n.waitpid(pid);
  if (!st?.stopped) throw new FerryError('ESPAWN', `container ${id}: its init ${pid} died before it could be restored`);
  const t = new Tracee(pid, pid);
  useStubGadget(t, parseMaps(readProcText(pid, 'maps')));
  return t;
}

function isStub(pid: number): boolean {
  try {
    return parseMaps(readProcText(pid, 'maps')).some((v) => v.path.endsWith('/ferry-stub'));
  } catch {
    return false;
  }
}

/** Refuses a bundle that cannot hold the image's container. */
function checkBundle(config: OciConfig, record: ContainerRecord, bundle: string): void {
  const rootfs = rootfsOf(bundle, config);
  if (!existsSync(rootfs)) throw new FerryError('EBUNDLE', `bundle ${bundle}: its rootfs ${rootfs} does not exist`);
  const kinds = (c: OciConfig): string => (c.linux?.namespaces ?? []).map((x) => x.type).sort().join(',');
  if (kinds(config) !== kinds(record.config)) {
    throw new FerryError('EBUNDLE', `bundle ${bundle} does not match the image: namespaces ${kinds(config) || 'none'} here, ${kinds(record.config) || 'none'} in the image`);
  }
  const exe = (c: OciConfig): string => (c.process?.args ?? []).join(' ');
  if (exe(config) !== exe(record.config)) {
    throw new FerryError('EBUNDLE', `bundle ${bundle} does not match the image: it runs '${exe(config)}', the image's container ran '${exe(record.config)}'`);
  }
}

/** Shape check of the /dev/shm entry (the image is input). */
function validateDevShm(v: unknown): DevShmRecord {
  const files = (v as { files?: unknown })?.files;
  const ok = Array.isArray(files) && files.every((f) => typeof f === 'object' && f !== null
    && typeof (f as { path?: unknown }).path === 'string' && typeof (f as { dir?: unknown }).dir === 'boolean'
    && Number.isSafeInteger((f as { mode?: unknown }).mode) && Number.isSafeInteger((f as { uid?: unknown }).uid)
    && Number.isSafeInteger((f as { gid?: unknown }).gid));
  if (!ok) throw new FerryError('EIMAGE', `image entry ${DEVSHM_ENTRY} is invalid`);
  return v as DevShmRecord;
}
