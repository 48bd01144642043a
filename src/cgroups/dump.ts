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
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { readProcText } from '../proc/read.js';
import {
  badPath, controlFiles, hostHierarchies, lineage, MAX_CGROUPS, MAX_VALUE, parseCgroupFile, within,
  type CgroupRecord, type CgroupsRecord, type Hierarchy,
} from './record.js';

/** What readCgroupsAhead read before the freeze. */
export interface CgroupsAhead {
  /** The host's cgroup mounts (hostHierarchies). */
  mounts: Map<string, Hierarchy>;
  /** Settings by "hierarchy key:path", of the cgroups the root was in and their ancestors. */
  settings: Map<string, Record<string, string>>;
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
  const settings = new Map<string, Record<string, string>>();
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
 * settings of a cgroup from `ahead` when it has them.
 */
export function readCgroups(processes: ReadonlyArray<{ pid: number; tids: readonly number[] }>, ahead?: CgroupsAhead): CgroupsRecord {
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
      const settings = p === '/' ? {} : ahead?.settings.get(`${key}:${p}`) ?? readSettings(mounts!.get(key), p);
      last = cgroups.push({ hierarchy: h, path: p, settings }) - 1;
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

/** The allow-listed control files of cgroup `path` that exist and read as printable text. */
function readSettings(h: Hierarchy | undefined, path: string): Record<string, string> {
  const out: Record<string, string> = {};
  if (h === undefined || !within(path, h.mountRoot)) return out; // not mounted here: membership only
  const dir = join(h.mount, path.slice(h.mountRoot === '/' ? 0 : h.mountRoot.length));
  for (const file of controlFiles(h.key)) {
    let value: string;
    try {
      value = readFileSync(join(dir, file), 'utf8').trim().replace(/\n/g, ' ');
    } catch {
      continue; // the controller is not enabled here (v2), or the kernel lacks the file
    }
    // A cgroup is a domain unless made threaded: only that is kept (the rest follows from it).
    if (file === 'cgroup.type' && value !== 'threaded') continue;
    if (value.length <= MAX_VALUE && /^[\x20-\x7e]*$/.test(value)) out[file] = value;
  }
  return out;
}
