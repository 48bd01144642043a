/**
 * The freezer of a container's cgroup (DESIGN.md §5): cgroup v1's freezer controller
 * (freezer.state) or cgroup v2's cgroup.freeze, whichever the container's process is in. This
 * host has both: v1 controllers and a v2 hierarchy at /sys/fs/cgroup/unified; v1 is preferred
 * when the process has a freezer cgroup there.
 */
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FerryError } from '../errors.js';
import { armWatchdog, type Watchdog } from '../watchdog.js';

/** A cgroup that can be frozen and thawed, with every task in it (sub-cgroups included). */
export interface Freezer {
  /** 'v1' (freezer controller) or 'v2' (cgroup.freeze). */
  version: 'v1' | 'v2';
  /** The cgroup directory. */
  dir: string;
  /** The file that freezes and thaws it, and what thaws it (for the watchdog). */
  control: { file: string; thawed: string };
  /** Freezes and waits until every task is frozen (bounded); throws, thawed, if it cannot. */
  freeze(): Promise<void>;
  thaw(): void;
  /** Every thread id in the cgroup and its descendants. */
  tids(): number[];
}

/** Mount point of a hierarchy in ferry's mount namespace: v1 by controller, or the v2 one. */
function mountOf(match: (fstype: string, options: string) => boolean): string | undefined {
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const [left, right] = line.split(' - ');
    if (!left || !right) continue;
    const [fstype, , options] = right.split(' ');
    if (fstype !== undefined && match(fstype, options ?? '')) return left.split(' ')[4];
  }
  return undefined;
}

/** The freezer of the cgroup process `pid` is in. */
export function freezerOf(pid: number, id: string): Freezer {
  const lines = readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n');
  const v1 = lines.map((l) => l.split(':')).find((f) => f[1]?.split(',').includes('freezer'));
  const v1Mount = mountOf((t, opts) => t === 'cgroup' && opts.split(',').includes('freezer'));
  if (v1 && v1Mount) {
    const dir = join(v1Mount, v1[2] ?? '/');
    if (existsSync(join(dir, 'freezer.state'))) return v1Freezer(dir, id);
  }
  const v2 = lines.map((l) => l.split(':')).find((f) => f[0] === '0' && f[1] === '');
  const v2Mount = mountOf((t) => t === 'cgroup2');
  if (v2 && v2Mount) {
    const dir = join(v2Mount, v2[2] ?? '/');
    if (existsSync(join(dir, 'cgroup.freeze'))) return v2Freezer(dir, id);
  }
  throw new FerryError('ECGROUP', `container ${id} (pid ${pid}) is in no cgroup with a freezer (no v1 freezer controller, no v2 cgroup.freeze): cannot stop it consistently`);
}

/** Every thread in `dir` and its sub-cgroups, from the file `tasks` (v1) or `cgroup.threads` (v2). */
function allTids(dir: string, file: string): number[] {
  const out: number[] = [];
  const walk = (d: string): void => {
    out.push(...readFileSync(join(d, file), 'utf8').split('\n').filter(Boolean).map(Number));
    for (const e of readdirSync(d, { withFileTypes: true })) if (e.isDirectory()) walk(join(d, e.name));
  };
  walk(dir);
  return out;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function waitFor(cond: () => boolean, ms: number): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end; await sleep(2)) if (cond()) return true;
  return cond();
}

/** The freezer of cgroup directory `dir` (exported for tests that need a cgroup that cannot freeze). */
export function freezerAt(version: 'v1' | 'v2', dir: string, id: string): Freezer {
  return version === 'v1' ? v1Freezer(dir, id) : v2Freezer(dir, id);
}

function v1Freezer(dir: string, id: string): Freezer {
  const state = join(dir, 'freezer.state');
  const f: Freezer = {
    version: 'v1',
    dir,
    control: { file: state, thawed: 'THAWED' },
    async freeze() {
      writeFileSync(state, 'FROZEN');
      if (!await waitFor(() => readFileSync(state, 'utf8').trim() === 'FROZEN', 5000)) {
        f.thaw();
        throw new FerryError('EFREEZE', `cannot freeze container ${id} (${state} stays ${readFileSync(state, 'utf8').trim()}): it was thawed and keeps running`);
      }
    },
    thaw() {
      writeFileSync(state, 'THAWED');
    },
    tids: () => allTids(dir, 'tasks'),
  };
  return f;
}

function v2Freezer(dir: string, id: string): Freezer {
  const frozen = (): boolean => /^frozen 1$/m.test(readFileSync(join(dir, 'cgroup.events'), 'utf8'));
  const f: Freezer = {
    version: 'v2',
    dir,
    control: { file: join(dir, 'cgroup.freeze'), thawed: '0' },
    async freeze() {
      writeFileSync(join(dir, 'cgroup.freeze'), '1');
      if (!await waitFor(frozen, 5000)) {
        f.thaw();
        throw new FerryError('EFREEZE', `cannot freeze container ${id} (${dir}/cgroup.events never says frozen): it was thawed and keeps running`);
      }
    },
    thaw() {
      writeFileSync(join(dir, 'cgroup.freeze'), '0');
    },
    tids: () => allTids(dir, 'cgroup.threads'),
  };
  return f;
}

/** Whether the freezer says the cgroup is frozen now (a paused container). */
export function isFrozen(f: Freezer): boolean {
  if (f.version === 'v1') return readFileSync(join(f.dir, 'freezer.state'), 'utf8').trim() !== 'THAWED';
  return /^frozen 1$/m.test(readFileSync(join(f.dir, 'cgroup.events'), 'utf8'));
}

/**
 * Starts the watchdog that thaws `f` if ferry dies while the cgroup is frozen: nothing in the
 * kernel would thaw it for us (src/watchdog.ts).
 */
export function armThawWatchdog(f: Freezer, id: string): Promise<Watchdog> {
  return armWatchdog(['write', f.control.file, f.control.thawed], `the freezer of container ${id}`);
}
