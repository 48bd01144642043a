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

/** One control file a restore may write, and the shape a recorded value of it must have. */
export interface ControlFile {
  /** Its name; a pattern for hugetlb's, one per huge page size (`hugetlb.2MB.max`). */
  name: string | RegExp;
  /** What the value may be: the file's own syntax, numbers at most 20 digits (u64). */
  value: RegExp;
  /** The same in words, for an error. */
  what: string;
}

/** A value's shape, and how an error names it. */
interface Shape { re: RegExp; what: string }
const NUM: Shape = { re: /^[0-9]{1,20}$/, what: 'a number' };
const INT: Shape = { re: /^-?[0-9]{1,20}$/, what: 'a number or -1' };
const MAX_OR_NUM: Shape = { re: /^(max|[0-9]{1,20})$/, what: '"max" or a number' };
const FLAG: Shape = { re: /^[01]$/, what: '0 or 1' };
const CPU_LIST: Shape = { re: /^[0-9,-]*$/, what: 'a list of CPU or node numbers' };
const PERCENT: Shape = { re: /^(max|[0-9]{1,3}(\.[0-9]{1,2})?)$/, what: '"max" or a percentage' };
const DEFAULT_WEIGHT: Shape = { re: /^default [0-9]{1,5}$/, what: '"default N"' };
// A huge page size as the kernel names it in hugetlb's files (mm/hugetlb_cgroup.c: KB, MB, GB).
const HUGE = '[1-9][0-9]{0,5}[KMG]B';
const cf = (name: string | RegExp, shape: Shape): ControlFile => ({ name, value: shape.re, what: shape.what });

/**
 * The control files a restore may write, by controller, in the order they are written: limits
 * and weights, and flags that change how the cgroup uses its own resources (cpu.idle,
 * memory.oom.group, cpuset's memory spreading); nothing that names a device, a class id or a
 * freezer state, nothing outside the controller's own hierarchical resource. Each is
 * hierarchical (a child never gets more than its parent: memory, hugetlb, pids, cpu bandwidth
 * and rt time, uclamp, cpuset subsets; a weight only shares out what the parent gets) or
 * touches only the cgroup's own tasks, which is what makes writing them into a cgroup the
 * restore made under the restorer's own safe (docs/security.md). Within a controller a limit
 * comes after what it is bounded by (a period before its quota or runtime, the quota before its
 * burst, memory.limit_in_bytes before memsw's); restore tries a refused one again after the
 * others. What is left out on purpose, and warned about at checkpoint when set: NOT_CARRIED.
 */
export const CONTROL_FILES: Readonly<Record<string, readonly ControlFile[]>> = {
  // cgroup v1, by controller
  memory: [cf('memory.limit_in_bytes', NUM), cf('memory.memsw.limit_in_bytes', NUM), cf('memory.soft_limit_in_bytes', NUM),
    cf('memory.swappiness', NUM), cf('memory.kmem.tcp.limit_in_bytes', NUM),
    // Recorded as its one writable part, oom_kill_disable (dump.ts): the file reads three lines.
    cf('memory.oom_control', FLAG)],
  pids: [cf('pids.max', MAX_OR_NUM)],
  // The rt files exist only with CONFIG_RT_GROUP_SCHED; a SCHED_FIFO task cannot join a cgroup
  // whose rt_runtime_us is 0 there, so they are carried where they are.
  cpu: [cf('cpu.shares', NUM), cf('cpu.cfs_period_us', NUM), cf('cpu.cfs_quota_us', INT), cf('cpu.cfs_burst_us', NUM),
    cf('cpu.rt_period_us', NUM), cf('cpu.rt_runtime_us', INT), cf('cpu.idle', FLAG),
    cf('cpu.uclamp.min', PERCENT), cf('cpu.uclamp.max', PERCENT)],
  cpuset: [cf('cpuset.cpus', CPU_LIST), cf('cpuset.mems', CPU_LIST), cf('cpuset.mem_hardwall', FLAG), cf('cpuset.memory_migrate', FLAG),
    cf('cpuset.memory_spread_page', FLAG), cf('cpuset.memory_spread_slab', FLAG)],
  // v1 blkio's weights as one number (CFQ's blkio.weight, BFQ's blkio.bfq.weight); the
  // per-device ones (blkio.*weight_device) name devices.
  blkio: [cf('blkio.weight', NUM), cf('blkio.bfq.weight', NUM)],
  hugetlb: [cf(new RegExp(`^hugetlb\\.${HUGE}\\.limit_in_bytes$`), NUM), cf(new RegExp(`^hugetlb\\.${HUGE}\\.rsvd\\.limit_in_bytes$`), NUM)],
  // cgroup v2: every controller's files in the one hierarchy; the type first (a threaded
  // cgroup is made so before anything else: only threaded controllers go below it, and a
  // thread joins one apart from its process only there), subtree_control next (it makes the
  // controllers' files appear in the children). The type is recorded only when "threaded",
  // the one value written (dump.ts, restore.ts). io.weight and io.bfq.weight only as their
  // "default N" line: the others name devices (dump.ts).
  '': [cf('cgroup.type', { re: /^threaded$/, what: '"threaded"' }),
    cf('cgroup.subtree_control', { re: /^([a-z_]+( [a-z_]+)*)?$/, what: 'controller names' }),
    cf('cgroup.max.depth', MAX_OR_NUM), cf('cgroup.max.descendants', MAX_OR_NUM),
    cf('cpuset.cpus', CPU_LIST), cf('cpuset.mems', CPU_LIST),
    cf('cpu.weight', NUM), cf('cpu.max', { re: /^(max|[0-9]{1,20}) [0-9]{1,20}$/, what: '"QUOTA PERIOD"' }), cf('cpu.max.burst', NUM), cf('cpu.idle', FLAG),
    cf('cpu.uclamp.min', PERCENT), cf('cpu.uclamp.max', PERCENT),
    cf('pids.max', MAX_OR_NUM),
    cf('memory.min', MAX_OR_NUM), cf('memory.low', MAX_OR_NUM), cf('memory.high', MAX_OR_NUM), cf('memory.max', MAX_OR_NUM),
    cf('memory.swap.high', MAX_OR_NUM), cf('memory.swap.max', MAX_OR_NUM), cf('memory.zswap.max', MAX_OR_NUM),
    cf('memory.zswap.writeback', FLAG), cf('memory.oom.group', FLAG),
    cf('io.weight', DEFAULT_WEIGHT), cf('io.bfq.weight', DEFAULT_WEIGHT),
    cf(new RegExp(`^hugetlb\\.${HUGE}\\.max$`), MAX_OR_NUM), cf(new RegExp(`^hugetlb\\.${HUGE}\\.rsvd\\.max$`), MAX_OR_NUM)],
};

/** The control files of hierarchy `key` ('' = v2), in write order. */
export function controlFilesOf(key: string): ControlFile[] {
  if (key === '') return [...CONTROL_FILES['']!];
  return key.split(',').flatMap((c) => CONTROL_FILES[c] ?? []);
}

/** The names of the control files of hierarchy `key` ('' = v2), in write order; hugetlb's as patterns (`hugetlb.<size>.max`). */
export function controlFiles(key: string): string[] {
  return controlFilesOf(key).map((f) => (typeof f.name === 'string' ? f.name : f.name.source.replace(/^\^|\$$/g, '').replace(HUGE, '<size>').replace(/\\\./g, '.')));
}

/** Whether control file `file` is the one `f` names (hugetlb's: by pattern). */
const matchesFile = (f: ControlFile, file: string): boolean => (typeof f.name === 'string' ? f.name === file : f.name.test(file));

/** Where control file `file` of hierarchy `key` comes in write order, or -1 if it is not one restore writes. */
export function controlFileRank(key: string, file: string): number {
  return controlFilesOf(key).findIndex((f) => matchesFile(f, file));
}

/**
 * Control files ferry does not carry, by controller, with what each reads when nothing was set
 * (a new cgroup's value here): the ones that name a device (blkio's and io's per-device limits
 * and weights, rdma), a class id or priority map (net_cls, net_prio), a device list, a freezer
 * state, and the ones that reach beyond the cgroup (exclusive cpusets and partitions, which take
 * CPUs from siblings; load balancing domains; io.prio.class, which raises I/O priority). A
 * checkpoint warns about each that is set otherwise (dump.ts): the restored tree goes without it.
 * `isDefault` gets the file's lines, trimmed, empty ones left out.
 */
export const NOT_CARRIED: Readonly<Record<string, ReadonlyArray<{ name: string; isDefault: (lines: string[]) => boolean }>>> = (() => {
  const empty = (l: string[]): boolean => l.length === 0;
  const is = (v: string) => (l: string[]): boolean => l.length === 1 && l[0] === v;
  // "default N" (a weight for every device) is carried as the cgroup's weight; any other line names a device.
  const defaultOnly = (l: string[]): boolean => l.every((x) => /^default [0-9]+$/.test(x));
  // `NAME key=max key=max`, `RES max`: no limit.
  const unlimited = (l: string[]): boolean => l.every((x) => x.split(' ').slice(1).every((f) => f === 'max' || f.endsWith('=max')));
  const rdmaMisc = [{ name: 'rdma.max', isDefault: unlimited }, { name: 'misc.max', isDefault: unlimited }];
  return {
    blkio: ['blkio.throttle.read_bps_device', 'blkio.throttle.write_bps_device', 'blkio.throttle.read_iops_device',
      'blkio.throttle.write_iops_device', 'blkio.leaf_weight_device'].map((name) => ({ name, isDefault: empty }))
      .concat([{ name: 'blkio.weight_device', isDefault: defaultOnly }, { name: 'blkio.bfq.weight_device', isDefault: defaultOnly }]),
    // It lists what is allowed: a rule denied on top of the default "a *:* rwm" does not show,
    // so only a list of allowed devices (a container's) is seen and warned about.
    devices: [{ name: 'devices.list', isDefault: is('a *:* rwm') }],
    freezer: [{ name: 'freezer.state', isDefault: is('THAWED') }],
    net_cls: [{ name: 'net_cls.classid', isDefault: is('0') }],
    net_prio: [{ name: 'net_prio.ifpriomap', isDefault: (l) => l.every((x) => / 0$/.test(x)) }],
    cpuset: [{ name: 'cpuset.cpu_exclusive', isDefault: is('0') }, { name: 'cpuset.mem_exclusive', isDefault: is('0') },
      { name: 'cpuset.sched_load_balance', isDefault: is('1') }, { name: 'cpuset.sched_relax_domain_level', isDefault: is('-1') }],
    memory: [{ name: 'memory.move_charge_at_immigrate', isDefault: is('0') }],
    rdma: rdmaMisc.slice(0, 1),
    misc: rdmaMisc.slice(1),
    '': [{ name: 'io.max', isDefault: empty }, { name: 'io.latency', isDefault: empty }, { name: 'io.weight', isDefault: defaultOnly },
      { name: 'io.bfq.weight', isDefault: defaultOnly }, { name: 'io.prio.class', isDefault: is('no-change') },
      { name: 'cgroup.freeze', isDefault: is('0') }, { name: 'cpuset.cpus.partition', isDefault: is('member') },
      { name: 'cpuset.cpus.exclusive', isDefault: empty }, ...rdmaMisc],
  };
})();

/** The files of NOT_CARRIED for hierarchy `key` ('' = v2). */
export function notCarried(key: string): ReadonlyArray<{ name: string; isDefault: (lines: string[]) => boolean }> {
  if (key === '') return NOT_CARRIED['']!;
  return key.split(',').flatMap((c) => NOT_CARRIED[c] ?? []);
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
    const hkey = hierarchies[c.hierarchy as number] as string;
    const allowed = controlFilesOf(hkey);
    for (const [file, value] of Object.entries(c.settings)) {
      const spec = file.length <= 64 ? allowed.find((f) => matchesFile(f, file)) : undefined;
      if (spec === undefined) fail(`${at}.settings names ${shown(file)}, which is not a control file restore writes (${controlFiles(hkey).join(', ') || 'none in this hierarchy'})`);
      if (typeof value !== 'string' || value.length > MAX_VALUE || !/^[\x20-\x7e]*$/.test(value)) {
        fail(`${at}.settings[${file}] must be printable text of at most ${MAX_VALUE} characters, is ${shown(value)}`);
      }
      if (!spec.value.test(value)) fail(`${at}.settings[${file}] must be ${spec.what}, is ${shown(value)}`);
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
