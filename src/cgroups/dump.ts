/**
 * Checkpoint side of cgroups (cgroups/record.ts): which cgroup every process and thread of a
 * stopped tree is in, in every hierarchy, and the allow-listed settings of those cgroups and
 * their ancestors. Read from /proc and the cgroup file systems only: nothing is changed, so
 * nothing needs undoing. Membership is read in the frozen window (a stopped task cannot move
 * itself; another process could move it meanwhile, which no tool can prevent), one small read
 * per thread. The settings, a few reads per cgroup in each of a dozen hierarchies (0.5-2 ms
 * for one process here), are read before the freeze for the cgroups the root is in then
 * (readCgroupsAhead): they are an administrator's, which the freeze does not hold still
 * either; only a cgroup first met after the freeze is read in it.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { readProcText } from '../proc/read.js';
import {
  badPath, controlFilesOf, hostHierarchies, lineage, MAX_CGROUPS, MAX_VALUE, notCarried, parseCgroupFile, within,
  type CgroupRecord, type CgroupsRecord, type Hierarchy,
} from './record.js';

/** What readCgroupsAhead read before the freeze. */
export interface CgroupsAhead {
  /** The host's cgroup mounts (hostHierarchies). */
  mounts: Map<string, Hierarchy>;
  /** Settings by "hierarchy key:path", of the cgroups the root was in and their ancestors. */
  settings: Map<string, CgroupSettings>;
}

/**
 * Reads, while the tree still runs, the settings readCgroups would read in the frozen window:
 * those of every cgroup `pid` is in and of their ancestors. Undefined if `pid` cannot be read
 * (it exited): readCgroups then reads everything itself.
 */
export function readCgroupsAhead(pid: number): CgroupsAhead | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/cgroup`, 'utf8');
  } catch {
    return undefined;
  }
  const mounts = hostHierarchies();
  const settings = new Map<string, CgroupSettings>();
  for (const [key, path] of parseCgroupFile(text)) {
    if (badPath(path) !== undefined) continue;
    for (const p of lineage(path)) {
      if (p !== '/' && !settings.has(`${key}:${p}`)) settings.set(`${key}:${p}`, readSettings(mounts.get(key), p));
    }
  }
  return { mounts, settings };
}

/**
 * Reads the cgroups of every live process (`pid` with its thread ids, leader first); the
 * settings of a cgroup from `ahead` when it has them. `warn` gets one line per cgroup that has
 * settings no restore carries (the checkpoint's warnings); none with no `warn`.
 */
export function readCgroups(processes: ReadonlyArray<{ pid: number; tids: readonly number[] }>, ahead?: CgroupsAhead, warn?: (message: string) => void): CgroupsRecord {
  const hierarchies: string[] = [];
  const cgroups: CgroupRecord[] = [];
  const index = new Map<string, number>(); // "h:path" -> index
  let mounts: Map<string, Hierarchy> | undefined = ahead?.mounts; // read once a cgroup with settings is met
  const hierarchyOf = (key: string): number => {
    let h = hierarchies.indexOf(key);
    if (h < 0) h = hierarchies.push(key) - 1;
    return h;
  };
  const cgroupOf = (key: string, path: string): number => {
    const h = hierarchyOf(key);
    let last = -1;
    for (const p of lineage(path)) {
      const k = `${h}:${p}`;
      const known = index.get(k);
      if (known !== undefined) {
        last = known;
        continue;
      }
      if (cgroups.length >= MAX_CGROUPS) throw new Error(`the tree is in more than ${MAX_CGROUPS} cgroups`);
      if (p !== '/') mounts ??= hostHierarchies();
      const read = p === '/' ? { settings: {}, dropped: [] } : ahead?.settings.get(`${key}:${p}`) ?? readSettings(mounts!.get(key), p);
      if (read.dropped.length > 0) {
        warn?.(`cgroup ${p} of ${key === '' ? 'cgroup v2' : key} has ${read.dropped.join(', ')} set, which restore --manage-cgroups does not carry: `
          + 'the restored tree goes without (set them again after restore if it needs them)');
      }
      last = cgroups.push({ hierarchy: h, path: p, settings: read.settings }) - 1;
      index.set(k, last);
    }
    return last;
  };
  const read = (pid: number, file: string): Map<string, number> => {
    const out = new Map<string, number>();
    let text: string;
    try {
      text = readFileSync(`/proc/${pid}/${file}`, 'utf8'); // in the frozen window: the plain read
    } catch {
      text = readProcText(pid, file); // says why, as every /proc reader does
    }
    for (const [key, path] of parseCgroupFile(text)) {
      // A path the record could not hold (a name with a newline, far too deep) is left out:
      // restore then leaves that task where it puts it.
      if (badPath(path) === undefined) out.set(key, cgroupOf(key, path));
    }
    return out;
  };
  const rows: Array<{ pid: number; own: Map<string, number>; threads: Array<{ tid: number; own: Map<string, number> }> }> = [];
  for (const p of processes) {
    const own = read(p.pid, 'cgroup');
    const threads = p.tids.slice(1).map((tid) => ({ tid, own: read(p.pid, `task/${tid}/cgroup`) }));
    rows.push({ pid: p.pid, own, threads });
  }
  const vector = (own: Map<string, number>): number[] => hierarchies.map((key) => own.get(key) ?? -1);
  const tasks = rows.map((r) => {
    const mine = vector(r.own);
    const differ = r.threads.map((t) => ({ tid: t.tid, cgroups: vector(t.own) }))
      .filter((t) => t.cgroups.some((c, i) => c !== mine[i]));
    return { pid: r.pid, cgroups: mine, ...(differ.length > 0 ? { threads: differ } : {}) };
  });
  return { hierarchies, cgroups, tasks };
}

/** What readSettings read of one cgroup. */
export interface CgroupSettings {
  /** Its allow-listed control files that exist and read as printable text. */
  settings: Record<string, string>;
  /** The NOT_CARRIED files set to something other than their default (what the restore goes without). */
  dropped: string[];
}

/**
 * The allow-listed control files of cgroup `path` that exist and read as printable text, and
 * the files it has set that no restore carries (record.ts NOT_CARRIED).
 */
function readSettings(h: Hierarchy | undefined, path: string): CgroupSettings {
  const out: CgroupSettings = { settings: {}, dropped: [] };
  if (h === undefined || !within(path, h.mountRoot)) return out; // not mounted here: membership only
  const dir = join(h.mount, path.slice(h.mountRoot === '/' ? 0 : h.mountRoot.length));
  const lines = (file: string): string[] | undefined => {
    try {
      return readFileSync(join(dir, file), 'utf8').split('\n').map((l) => l.trim()).filter(Boolean);
    } catch {
      return undefined; // the controller is not enabled here (v2), or the kernel lacks the file
    }
  };
  // hugetlb's files are named by huge page size: the ones this cgroup has, listed once.
  const specs = controlFilesOf(h.key);
  let listing: string[] | undefined;
  const names = (name: string | RegExp): string[] => {
    if (typeof name === 'string') return [name];
    try {
      listing ??= readdirSync(dir);
    } catch {
      listing = [];
    }
    return listing.filter((f) => name.test(f)).sort();
  };
  for (const spec of specs) {
    for (const file of names(spec.name)) {
      const read = lines(file);
      if (read === undefined) continue;
      let value = read.join(' ');
      // A cgroup is a domain unless made threaded: only that is kept (the rest follows from it).
      if (file === 'cgroup.type' && value !== 'threaded') continue;
      // v1's OOM control reads "oom_kill_disable N", "under_oom N", "oom_kill N": only the first is a setting.
      if (file === 'memory.oom_control') value = /^oom_kill_disable ([01])$/.exec(read[0] ?? '')?.[1] ?? '';
      // v2's io weights: the "default N" line is the cgroup's weight; per-device lines are
      // NOT_CARRIED's (below).
      if (file === 'io.weight' || file === 'io.bfq.weight') value = read.find((l) => l.startsWith('default ')) ?? '';
      if (value.length <= MAX_VALUE && spec.value.test(value)) out.settings[file] = value;
    }
  }
  for (const { name, isDefault } of notCarried(h.key)) {
    const read = lines(name);
    if (read !== undefined && !isDefault(read)) out.dropped.push(name);
  }
  return out;
}
