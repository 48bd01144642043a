/**
 * Restore side of cgroups (`--manage-cgroups`, cgroups/record.ts): the tree's processes and
 * threads go back into the cgroups the image recorded, created if missing, with the recorded
 * settings where the mode says so (docs/cli.md, docs/security.md "Cgroups").
 *
 * Modes (RestoreOptions.manageCgroups):
 *   ignore  nothing (the default): the tree stays in the restorer's cgroups.
 *   soft    every process and thread into its recorded cgroup; a missing cgroup is created
 *           and given the recorded settings; existing cgroups keep theirs. What cannot be done
 *           (a hierarchy not mounted here, a setting the kernel refuses) is a warning.
 *   full    soft, and the recorded settings are written into existing cgroups too (trusted
 *           images only).
 *   strict  full, and anything soft would warn about fails the restore.
 *
 * Images are untrusted input. Every path is shape-checked (record.ts) and resolved by the
 * kernel beneath the hierarchy's mount with no symlink followed (files/confined.ts, 'beneath');
 * control files come from an allow-list; for an image no trusted key signed, every cgroup a
 * task goes into must be the restorer's own or below it (a child cgroup never gets more than
 * its parent from a hierarchical controller, so the tree gets no more than the restorer has),
 * settings are written only into cgroups this restore made (below the restorer's own, so
 * bounded by it), and `full`/`strict` are refused. All of it is decided by `planCgroups`
 * before anything is made.
 *
 * Undo: the cgroups a restore made are removed, deepest first, when it fails (its processes
 * are killed first: the undo is registered before the tree exists, so it runs after the kill);
 * if ferry dies instead, a watchdog (`exec /bin/sh -c …`, src/watchdog.ts) removes them once
 * the stubs, which die with ferry, have left them.
 */
import { closeSync, readFileSync, readSync, writeSync } from 'node:fs';
import type { Logger } from 'pino';
import { FerryError, describeCause, errnoCode } from '../errors.js';
import { ConfinedRoot, mkdirIn, openIn, statIn, unlinkIn } from '../files/confined.js';
import type { Session } from '../session.js';
import { startWatchdog, type StartingWatchdog, type Watchdog } from '../watchdog.js';
import { controlFileRank, hostHierarchies, lineage, parseCgroupFile, within, type CgroupsRecord, type Hierarchy } from './record.js';

/** What a restore does with the image's cgroups (see the module comment). */
export type CgroupMode = 'ignore' | 'soft' | 'full' | 'strict';
/** The modes, as `--manage-cgroups=MODE` takes them. */
export const CGROUP_MODES: readonly CgroupMode[] = ['ignore', 'soft', 'full', 'strict'];

const O_RDONLY = 0, O_WRONLY = 1;

/** One cgroup the restore needs, in one hierarchy available here. */
interface Target {
  key: string;
  hierarchy: Hierarchy;
  root: ConfinedRoot;
  /** Its path in the image. */
  path: string;
  /** Relative to the mount ('' for the mount's root). */
  rel: string;
  /** Recorded settings. */
  settings: Record<string, string>;
  exists: boolean;
}

/** The hierarchy key as people know it. */
const named = (key: string): string => (key === '' ? 'cgroup v2' : key);

/** A plan made before anything exists; `apply`, `placeProcess`, `placeThreads` carry it out. */
export class CgroupPlan {
  private readonly created: Target[] = [];
  private watchdog: StartingWatchdog | undefined;
  private armed: Watchdog | undefined;
  /** What could not be done (soft, full), one line each. */
  readonly warnings: string[] = [];

  private constructor(
    private readonly record: CgroupsRecord,
    private readonly mode: CgroupMode,
    private readonly trusted: boolean,
    /** Index in record.cgroups -> its target here (absent: hierarchy not mounted here). */
    private readonly targets: Map<number, Target>,
    /** Every target with its ancestors, parents first, by "key:path". */
    private readonly order: Target[],
    private readonly roots: ConfinedRoot[],
    /** The restorer's own cgroup in each hierarchy the tree goes into: its root, relative path. */
    private readonly own: ReadonlyArray<{ key: string; root: ConfinedRoot; rel: string }>,
    private readonly log: Logger,
  ) {}

  /**
   * Checks the image's cgroups against `mode` and the trust rule and finds what exists, before
   * anything is made; throws EPRIVILEGE or ECGROUP with one line. `image` names the image.
   */
  static make(record: CgroupsRecord, mode: CgroupMode, trusted: boolean, image: string, log: Logger): CgroupPlan {
    if (!trusted && mode !== 'soft') {
      throw new FerryError('EPRIVILEGE', `image ${image}: --manage-cgroups=${mode} writes the image's settings into existing cgroups, `
        + 'which only an image a trusted key signed may do: sign it and restore with --trust, or use --manage-cgroups=soft; nothing was restored');
    }
    const hosts = hostHierarchies();
    const own = parseCgroupFile(readFileSync('/proc/self/cgroup', 'utf8'));
    const roots = new Map<string, ConfinedRoot>();
    const targets = new Map<number, Target>();
    const byPath = new Map<string, Target>();
    const order: Target[] = [];
    const warnings: string[] = [];
    const members = new Set<number>();
    for (const t of record.tasks) {
      for (const c of t.cgroups) if (c >= 0) members.add(c);
      for (const th of t.threads ?? []) for (const c of th.cgroups) if (c >= 0) members.add(c);
    }
    const settingsOf = new Map(record.cgroups.map((c) => [`${c.hierarchy}:${c.path}`, c.settings]));
    try {
      for (const index of [...members].sort((a, b) => a - b)) {
        const c = record.cgroups[index]!;
        const key = record.hierarchies[c.hierarchy]!;
        const h = hosts.get(key);
        if (h === undefined || !within(c.path, h.mountRoot)) {
          warnings.push(`${named(key)} is not mounted here: the tree's tasks stay where the restore puts them in it`);
          continue;
        }
        // The trust rule: an untrusted image goes nowhere above or beside the restorer.
        const base = own.get(key) ?? '/';
        if (!trusted && !within(c.path, base)) {
          const pid = record.tasks.find((t) => t.cgroups.includes(index) || t.threads?.some((th) => th.cgroups.includes(index)))?.pid;
          throw new FerryError('EPRIVILEGE', `image ${image}: pid ${pid ?? '?'} would go into cgroup ${c.path} of ${named(key)}, outside the restorer's own (${base}), `
            + 'which an image no trusted key signed may not do: sign it and restore with --trust, or restore with --manage-cgroups=ignore; nothing was restored');
        }
        let root = roots.get(key);
        if (root === undefined) {
          root = new ConfinedRoot(h.mount, 'beneath');
          roots.set(key, root);
        }
        let last: Target | undefined;
        for (const p of lineage(c.path)) {
          const k = `${key}:${p}`;
          let t = byPath.get(k);
          if (t === undefined) {
            const rel = (h.mountRoot === '/' ? p : p.slice(h.mountRoot.length)).replace(/^\/+/, '');
            const st = statIn(root, rel, `image entry cgroups.json (cgroup ${p} of ${named(key)})`, true);
            if (st !== undefined && !st.isDirectory()) {
              throw new FerryError('ECGROUP', `cgroup ${p} of ${named(key)}: ${h.mount}/${rel} is not a directory: nothing was restored`);
            }
            t = { key, hierarchy: h, root, path: p, rel, settings: settingsOf.get(`${c.hierarchy}:${p}`) ?? {}, exists: st !== undefined };
            byPath.set(k, t);
            order.push(t);
          }
          last = t;
        }
        targets.set(index, last!);
      }
      if (mode === 'strict' && warnings.length > 0) {
        throw new FerryError('ECGROUP', `--manage-cgroups=strict: ${warnings[0]!}: nothing was restored`);
      }
    } catch (err) {
      for (const r of roots.values()) r.close();
      throw err;
    }
    const mine: Array<{ key: string; root: ConfinedRoot; rel: string }> = [];
    for (const [key, root] of roots) {
      const h = hosts.get(key)!;
      const path = own.get(key) ?? '/';
      // A restorer whose own cgroup is not below the mount (another cgroup namespace's) has
      // none to set aside into here.
      if (within(path, h.mountRoot)) mine.push({ key, root, rel: (h.mountRoot === '/' ? path : path.slice(h.mountRoot.length)).replace(/^\/+/, '') });
    }
    const plan = new CgroupPlan(record, mode, trusted, targets, order, [...roots.values()], mine, log);
    plan.warnings.push(...new Set(warnings));
    return plan;
  }

  /** The cgroups to be made, for the log. */
  get toCreate(): string[] {
    return this.order.filter((t) => !t.exists).map((t) => `${named(t.key)}:${t.path}`);
  }

  private problem(message: string, cause?: unknown): void {
    if (this.mode === 'strict') {
      throw new FerryError('ECGROUP', `--manage-cgroups=strict: ${message}: nothing was restored`, cause !== undefined ? { cause } : undefined);
    }
    this.warnings.push(message);
    this.log.warn(message);
  }

  /**
   * Arms the watchdog that removes the cgroups to be made if ferry dies (src/watchdog.ts):
   * before the first mkdir, so that no moment leaves one behind. Its stubs die with ferry
   * (PTRACE_O_EXITKILL) and leave the cgroups empty; it removes them deepest first, waiting
   * (bounded) for the dying stubs to leave, and skips any that is not there.
   */
  async arm(session: Session): Promise<void> {
    const dirs = this.order.filter((t) => !t.exists).map((t) => `${t.hierarchy.mount}/${t.rel}`).reverse();
    if (dirs.length === 0) return;
    const script = 'for d; do n=0; while [ -d "$d" ] && ! rmdir -- "$d" 2>/dev/null && [ $n -lt 100 ]; do sleep 0.05; n=$((n+1)); done; done';
    const w = (this.watchdog = startWatchdog(['exec', '/bin/sh', '-c', script, 'sh', ...dirs], 'the cgroups made for the tree'));
    session.onUndo('stop the cgroup watchdog', () => w.abandon());
    this.armed = await w.armed();
  }

  /**
   * Makes the missing cgroups (parents first) and writes settings where the mode says, before
   * any process exists (after `arm`). The undo (remove what was made) is registered with
   * `session` before the first mkdir.
   */
  apply(session: Session): void {
    const n = this.order.filter((t) => !t.exists).length;
    if (n > 0) {
      session.onUndo('remove the cgroups made for the tree', () => this.removeCreated());
      for (const t of this.order) {
        if (t.exists) continue;
        try {
          mkdirIn(t.root, t.rel, 0o755, `cgroup ${t.path} of ${named(t.key)}`);
        } catch (err) {
          if (errnoCode(err) !== 'EEXIST') throw err;
          t.exists = true; // made by someone else since the plan: theirs, kept as it is
          continue;
        }
        this.created.push(t);
      }
    }
    for (const t of this.order) {
      const made = this.created.includes(t);
      if (made && t.hierarchy.version === 1 && t.key.split(',').includes('cpuset')) this.inheritCpuset(t);
      if (made || (this.trusted && this.mode !== 'soft')) this.writeSettings(t, made);
    }
  }

  /** A new v1 cpuset cgroup has no CPUs and no memory nodes (a task cannot join it): its parent's. */
  private inheritCpuset(t: Target): void {
    const parent = t.rel.includes('/') ? t.rel.slice(0, t.rel.lastIndexOf('/')) : '';
    for (const file of ['cpuset.cpus', 'cpuset.mems']) {
      try {
        const value = this.readControl(t, parent, file);
        if (value !== '') this.writeControl(t, t.rel, file, value);
      } catch (err) {
        this.problem(`cgroup ${t.path} of ${named(t.key)}: cannot give it its parent's ${file}: ${describeCause(err)}`, err);
      }
    }
  }

  /**
   * Writes the recorded settings of `t` in allow-list order (not the image's: a period before
   * its quota, a limit before the one bounded by it); a refused one is tried once more
   * after the others (limits that depend on each other). `made`: this restore made `t`. A
   * cgroup that was there already is never made threaded: that cannot be undone, and it
   * changes it for every process in it.
   */
  private writeSettings(t: Target, made: boolean): void {
    let pending = Object.entries(t.settings).sort(([a], [b]) => controlFileRank(t.key, a) - controlFileRank(t.key, b));
    for (let pass = 0; pass < 2 && pending.length > 0; pass++) {
      const failed: Array<[string, string, unknown]> = [];
      for (const [file, value] of pending) {
        try {
          if (file === 'cgroup.type') {
            // Only "threaded" can be written (a domain is the default; "domain threaded" and
            // "domain invalid" follow from the cgroups below).
            if (value === 'threaded' && made) this.writeControl(t, t.rel, file, value);
          } else if (file === 'cgroup.subtree_control') {
            const ctrls = value.split(' ').filter(Boolean);
            if (ctrls.length > 0) this.writeControl(t, t.rel, file, ctrls.map((c) => `+${c}`).join(' '));
          } else {
            this.writeControl(t, t.rel, file, value);
          }
        } catch (err) {
          failed.push([file, value, err]);
        }
      }
      if (pass === 1 || failed.length === pending.length) {
        for (const [file, value, err] of failed) this.problem(`cgroup ${t.path} of ${named(t.key)}: ${file} ${JSON.stringify(value)} was refused: ${describeCause(err)}`, err);
        return;
      }
      pending = failed.map(([f, v]) => [f, v]);
    }
  }

  private readControl(t: Target, rel: string, file: string): string {
    const fd = openIn(t.root, rel === '' ? file : `${rel}/${file}`, O_RDONLY, `cgroup ${t.path} of ${named(t.key)}`);
    try {
      const buf = Buffer.alloc(4096);
      return buf.subarray(0, readSync(fd, buf, 0, buf.length, null)).toString().trim();
    } finally {
      closeSync(fd);
    }
  }

  private writeControl(t: Target, rel: string, file: string, value: string): void {
    const fd = openIn(t.root, rel === '' ? file : `${rel}/${file}`, O_WRONLY, `cgroup ${t.path} of ${named(t.key)}`);
    try {
      writeSync(fd, value);
    } finally {
      closeSync(fd);
    }
  }

  /**
   * Moves the process `pid` of the image (`hostPid` here) into its cgroups, before its memory
   * is rebuilt (it is charged there). One lookup: restore calls it once per process.
   */
  placeProcess(pid: number, hostPid: number): void {
    const task = this.byPid.get(pid);
    if (task !== undefined) this.place(hostPid, task.cgroups, 'cgroup.procs', `pid ${pid}`);
  }

  /**
   * Moves `hostPid`, a process the restore makes for a moment that is none of the image's (the
   * holder of a process group's id, restore/tree.ts holdGroup), into the restorer's own cgroups
   * in every hierarchy the tree goes into: forked by a process already in one of the tree's, it
   * would count against its pids.max. Moving in is never refused for a limit (pids, cgroup v1
   * and v2), and it has no memory of its own to charge anywhere.
   */
  setAside(hostPid: number): void {
    for (const { key, root, rel } of this.own) {
      try {
        const fd = openIn(root, rel === '' ? 'cgroup.procs' : `${rel}/cgroup.procs`, O_WRONLY, `the restorer's cgroup of ${named(key)}`);
        try {
          writeSync(fd, String(hostPid));
        } finally {
          closeSync(fd);
        }
      } catch (err) {
        if (err instanceof FerryError && err.code === 'ECONFINE') throw err;
        this.problem(`process ${hostPid}, holding a process group's id for a moment, could not be set aside into the restorer's cgroup of ${named(key)}: ${describeCause(err)}`, err);
      }
    }
  }

  /** The record's tasks by image pid. */
  private get byPid(): Map<number, CgroupsRecord['tasks'][number]> {
    return (this.tasksByPid ??= new Map(this.record.tasks.map((t) => [t.pid, t])));
  }

  private tasksByPid: Map<number, CgroupsRecord['tasks'][number]> | undefined;

  /** Moves the threads recorded apart from their process, once they exist (`hostTid` of an image tid). */
  placeThreads(hostTid: (tid: number) => number | undefined): void {
    for (const task of this.record.tasks) {
      for (const th of task.threads ?? []) {
        const tid = hostTid(th.tid);
        if (tid !== undefined) this.place(tid, th.cgroups, '', `thread ${th.tid} of pid ${task.pid}`);
      }
    }
  }

  /** `file` '' = per thread: v1 `tasks`, v2 `cgroup.threads` (a threaded cgroup). */
  private place(id: number, cgroups: readonly number[], file: string, who: string): void {
    for (const index of cgroups) {
      const t = index >= 0 ? this.targets.get(index) : undefined;
      if (t === undefined) continue;
      const f = file !== '' ? file : t.hierarchy.version === 1 ? 'tasks' : 'cgroup.threads';
      try {
        this.writeControl(t, t.rel, f, String(id));
      } catch (err) {
        if (err instanceof FerryError && err.code === 'ECONFINE') throw err;
        this.problem(`${who} could not join cgroup ${t.path} of ${named(t.key)}: ${describeCause(err)}`, err);
      }
    }
  }

  /** The tree runs in its cgroups: they stay; the watchdog goes. */
  running(): void {
    this.armed?.disarm();
    this.watchdog?.abandon();
    this.close();
  }

  close(): void {
    for (const r of this.roots) r.close();
  }

  /** Removes the cgroups this restore made, deepest first, waiting (bounded) for killed stubs to leave them. */
  private removeCreated(): void {
    for (const t of [...this.created].reverse()) {
      for (let i = 0; ; i++) {
        try {
          unlinkIn(t.root, t.rel, `cgroup ${t.path} of ${named(t.key)}`, true);
          break;
        } catch (err) {
          if (errnoCode(err) !== 'EBUSY') {
            this.log.warn({ err }, `cgroup ${t.path} of ${named(t.key)} could not be removed`);
            break;
          }
          if (i >= 200) {
            this.log.warn(`cgroup ${t.path} of ${named(t.key)} is still busy: left`);
            break;
          }
          Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10);
        }
      }
    }
    this.created.length = 0;
    this.close();
  }
}
