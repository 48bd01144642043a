/**
 * Cgroup membership of a plain process tree (image entry `cgroups.json`), shared by the
 * checkpoint (cgroups/dump.ts) and the restore (cgroups/restore.ts): the record, the
 * hierarchies of this host, the allow-list of control files a restore may write, and the
 * shape checks of an image's record (docs/image-format.md, docs/security.md "Cgroups").
 *
 * /proc/PID/task/TID/cgroup (cgroups(7)) lists one line per hierarchy the thread is in:
 * `ID:CONTROLLERS:PATH`, CONTROLLERS comma-separated for a v1 hierarchy (`cpu,cpuacct`,
 * `name=systemd` for a named one without controllers), empty with ID 0 for the v2 one. Hierarchy
 * ids are this boot's, so a hierarchy is recorded by its controllers ('' for v2), and found
 * at restore by the mount that has them (/proc/self/mountinfo). PATH is relative to the
 * reader's cgroup namespace root: ferry's, the host's here.
 */
import { readFileSync } from 'node:fs';
import { FerryError } from '../errors.js';
import { shown } from '../image/manifest.js';

/** The image entry that holds the tree's cgroups (absent in images of containers and older ones). */
export const CGROUPS_ENTRY = 'cgroups.json';

/** One cgroup of the tree (or an ancestor of one) in one hierarchy. */
export interface CgroupRecord {
  /** Index into CgroupsRecord.hierarchies. */
  hierarchy: number;
  /** Its path from the hierarchy's root: '/' or '/a/b', as /proc/PID/cgroup shows it. */
  path: string;
  /** Allow-listed control files (CONTROL_FILES) that existed, with what they read (trimmed). */
  settings: Record<string, string>;
}

/** cgroups.json */
export interface CgroupsRecord {
  /** Hierarchies: v1 by its controllers as /proc/PID/cgroup lists them ('cpu,cpuacct', 'name=systemd'), v2 as ''. */
  hierarchies: string[];
  /** Every cgroup a task is in, and every ancestor of one below the hierarchy root, parents first. */
  cgroups: CgroupRecord[];
  /**
   * Each live process: its cgroup in every hierarchy (indices into `cgroups`, one per entry of
   * `hierarchies`, -1 where it is in none), and the threads whose cgroups differ from it.
   */
  tasks: Array<{ pid: number; cgroups: number[]; threads?: Array<{ tid: number; cgroups: number[] }> }>;
}

/**
 * The control files a restore may write, by controller, in the order they are written: limits
 * and weights, nothing that names a device, a class id or a freezer state, nothing outside the
 * controller's own hierarchical resource. Each is hierarchical (a child never gets more than
 * its parent: memory, pids, cpu bandwidth, cpuset subsets), which is what makes writing them
 * into a cgroup the restore made under the restorer's own safe (docs/security.md).
 */
export const CONTROL_FILES: Readonly<Record<string, readonly string[]>> = {
  // cgroup v1, by controller
  memory: ['memory.limit_in_bytes', 'memory.memsw.limit_in_bytes', 'memory.soft_limit_in_bytes', 'memory.swappiness'],
  pids: ['pids.max'],
  cpu: ['cpu.shares', 'cpu.cfs_period_us', 'cpu.cfs_quota_us'],
  cpuset: ['cpuset.cpus', 'cpuset.mems'],
  // cgroup v2: every controller's files in the one hierarchy; the type first (a threaded
  // cgroup is made so before anything else: only threaded controllers go below it, and a
  // thread joins one apart from its process only there), subtree_control next (it makes the
  // controllers' files appear in the children). The type is recorded only when "threaded",
  // the one value written (dump.ts, restore.ts).
  '': ['cgroup.type', 'cgroup.subtree_control', 'cpuset.cpus', 'cpuset.mems', 'cpu.weight', 'cpu.max', 'pids.max',
    'memory.min', 'memory.low', 'memory.high', 'memory.max', 'memory.swap.max'],
};

/** The control files of hierarchy `key` ('' = v2), in write order. */
export function controlFiles(key: string): string[] {
  if (key === '') return [...CONTROL_FILES['']!];
  return key.split(',').flatMap((c) => CONTROL_FILES[c] ?? []);
}

/** Limits on what an image may hold (and what a checkpoint records). */
export const MAX_HIERARCHIES = 32;
export const MAX_CGROUPS = 4096;
export const MAX_PATH = 4096;
export const MAX_DEPTH = 64;
export const MAX_VALUE = 256;

/**
 * What is wrong with cgroup path `p`, or undefined: absolute, no empty, '.' or '..'
 * component, no NUL or control character, at most MAX_PATH characters and MAX_DEPTH deep,
 * each component a file name (at most 255 bytes). The kernel resolves it too, beneath the
 * hierarchy's mount with no symlink followed (cgroups/restore.ts): this is the image's shape.
 */
export function badPath(p: unknown): string | undefined {
  if (typeof p !== 'string' || p.length > MAX_PATH) return `a string of at most ${MAX_PATH} characters`;
  if (p === '/') return undefined;
  if (!p.startsWith('/')) return 'an absolute path';
  // eslint-disable-next-line no-control-regex
  if (/[\0-\x1f\x7f]/.test(p)) return 'a path without control characters';
  const parts = p.slice(1).split('/');
  if (parts.length > MAX_DEPTH) return `at most ${MAX_DEPTH} components deep`;
  if (parts.some((c) => c === '' || c === '.' || c === '..' || Buffer.byteLength(c) > 255)) {
    return 'a path without empty, "." or ".." components, each at most 255 bytes';
  }
  return undefined;
}

/** Whether `path` is `base` or lies under it. */
export function within(path: string, base: string): boolean {
  return base === '/' || path === base || path.startsWith(`${base}/`);
}

/** Every ancestor of `path` below the root, parents first, then `path` itself ('/' has none). */
export function lineage(path: string): string[] {
  if (path === '/') return ['/'];
  const parts = path.slice(1).split('/');
  return parts.map((_, i) => `/${parts.slice(0, i + 1).join('/')}`);
}

/** /proc/PID/cgroup text -> hierarchy key ('' for v2) -> path. */
export function parseCgroupFile(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const first = line.indexOf(':');
    const second = line.indexOf(':', first + 1);
    if (first < 0 || second < 0) continue;
    const id = line.slice(0, first);
    const key = line.slice(first + 1, second);
    if (id === '0' && key !== '') continue; // not a hierarchy line
    out.set(key, line.slice(second + 1));
  }
  return out;
}

/** A mounted hierarchy of this host. */
export interface Hierarchy {
  /** As in CgroupsRecord.hierarchies. */
  key: string;
  version: 1 | 2;
  /** Its mount point in ferry's mount namespace (the first one listed). */
  mount: string;
  /** The root of the mount inside the hierarchy ('/' unless a sub-tree is mounted). */
  mountRoot: string;
}

/**
 * The cgroup hierarchies mounted here, by key: v1 mounts by their controllers (the mount
 * options that are controllers or `name=…`, in the order /proc/PID/cgroup lists them, which
 * is the kernel's controller order, so the same set gives the same key) and the v2 mount as ''.
 */
export function hostHierarchies(): Map<string, Hierarchy> {
  const self = parseCgroupFile(readFileSync('/proc/self/cgroup', 'utf8'));
  const byControllers = new Map<string, string>(); // sorted controllers -> key as listed
  for (const key of self.keys()) byControllers.set(key.split(',').sort().join(','), key);
  const out = new Map<string, Hierarchy>();
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const [left, right] = line.split(' - ');
    if (!left || !right) continue;
    const [fstype, , options = ''] = right.split(' ');
    const f = left.split(' ');
    const mount = f[4];
    const mountRoot = f[3] ?? '/';
    if (mount === undefined) continue;
    if (fstype === 'cgroup2') {
      if (!out.has('')) out.set('', { key: '', version: 2, mount, mountRoot });
    } else if (fstype === 'cgroup') {
      const controllers = options.split(',').filter((o) => !['rw', 'ro', 'noprefix', 'clone_children', 'xattr', 'cpuset_v2_mode', 'favordynmods'].includes(o)
        && !o.startsWith('release_agent='));
      const key = byControllers.get(controllers.sort().join(','));
      if (key !== undefined && !out.has(key)) out.set(key, { key, version: 1, mount, mountRoot });
    }
  }
  return out;
}

function fail(what: string): never {
  throw new FerryError('EIMAGE', `image entry ${CGROUPS_ENTRY} is invalid: ${what} (edited, or written by another ferry version?)`);
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Shape checks of an image's cgroups.json against its tasks (`threads`: pid -> its thread ids):
 * bounded counts, hierarchy keys and paths well formed, each path once per hierarchy with its
 * parents before it, only allow-listed control files with bounded printable values, every
 * index in range, every pid and tid one of the image's. Returns the record, typed.
 */
export function validateCgroups(v: unknown, threads: ReadonlyMap<number, readonly number[]>): CgroupsRecord {
  if (!isObj(v)) fail(`it must be an object, is ${shown(v)}`);
  const { hierarchies, cgroups, tasks } = v;
  if (!Array.isArray(hierarchies) || hierarchies.length > MAX_HIERARCHIES) fail(`hierarchies must be a list of at most ${MAX_HIERARCHIES}`);
  hierarchies.forEach((h, i) => {
    if (typeof h !== 'string' || !/^(|[a-z0-9_]+(,[a-z0-9_]+)*|name=[A-Za-z0-9_.-]{1,64})$/.test(h) || h.length > 256) {
      fail(`hierarchies[${i}] must be '' or a list of controller names, is ${shown(h)}`);
    }
  });
  if (new Set(hierarchies).size !== hierarchies.length) fail('hierarchies lists one twice');
  if (!Array.isArray(cgroups) || cgroups.length > MAX_CGROUPS) fail(`cgroups must be a list of at most ${MAX_CGROUPS}`);
  const seen = new Set<string>();
  cgroups.forEach((c, i) => {
    const at = `cgroups[${i}]`;
    if (!isObj(c)) fail(`${at} must be an object`);
    if (!Number.isSafeInteger(c.hierarchy) || (c.hierarchy as number) < 0 || (c.hierarchy as number) >= hierarchies.length) {
      fail(`${at}.hierarchy must index hierarchies, is ${shown(c.hierarchy)}`);
    }
    const bad = badPath(c.path);
    if (bad !== undefined) fail(`${at}.path must be ${bad}, is ${shown(c.path)}`);
    const path = c.path as string;
    const key = `${c.hierarchy as number}:${path}`;
    if (seen.has(key)) fail(`${at}.path ${shown(path)} is listed twice`);
    const parent = path === '/' ? undefined : path.slice(0, path.lastIndexOf('/')) || '/';
    if (parent !== undefined && parent !== '/' && !seen.has(`${c.hierarchy as number}:${parent}`)) {
      fail(`${at}.path ${shown(path)} comes before its parent`);
    }
    seen.add(key);
    if (!isObj(c.settings)) fail(`${at}.settings must be an object`);
    const allowed = controlFiles(hierarchies[c.hierarchy as number] as string);
    for (const [file, value] of Object.entries(c.settings)) {
      if (!allowed.includes(file)) fail(`${at}.settings names ${shown(file)}, which is not a control file restore writes (${allowed.join(', ') || 'none in this hierarchy'})`);
      if (typeof value !== 'string' || value.length > MAX_VALUE || !/^[\x20-\x7e]*$/.test(value)) {
        fail(`${at}.settings[${file}] must be printable text of at most ${MAX_VALUE} characters, is ${shown(value)}`);
      }
    }
  });
  if (!Array.isArray(tasks) || tasks.length > threads.size) fail('tasks must list at most the image\'s processes');
  const indices = (list: unknown, at: string): void => {
    if (!Array.isArray(list) || list.length !== hierarchies.length) fail(`${at} must hold one index per hierarchy`);
    list.forEach((x, h) => {
      if (x === -1) return;
      if (!Number.isSafeInteger(x) || (x as number) < 0 || (x as number) >= cgroups.length) fail(`${at}[${h}] must index cgroups or be -1, is ${shown(x)}`);
      if ((cgroups[x as number] as CgroupRecord).hierarchy !== h) fail(`${at}[${h}] names a cgroup of another hierarchy`);
    });
  };
  const pids = new Set<number>();
  tasks.forEach((t, i) => {
    const at = `tasks[${i}]`;
    if (!isObj(t)) fail(`${at} must be an object`);
    const tids = threads.get(t.pid as number);
    if (tids === undefined || pids.has(t.pid as number)) fail(`${at}.pid ${shown(t.pid)} is not a process of the image (or is listed twice)`);
    pids.add(t.pid as number);
    indices(t.cgroups, `${at}.cgroups`);
    if (t.threads === undefined) return;
    if (!Array.isArray(t.threads) || t.threads.length > tids.length) fail(`${at}.threads must list at most the process's threads`);
    t.threads.forEach((th, j) => {
      if (!isObj(th) || !tids.includes(th.tid as number) || th.tid === t.pid) fail(`${at}.threads[${j}].tid ${shown(isObj(th) ? th.tid : th)} is not another thread of pid ${t.pid as number}`);
      indices(th.cgroups, `${at}.threads[${j}].cgroups`);
    });
  });
  return v as unknown as CgroupsRecord;
}
