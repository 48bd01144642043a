/**
 * Features an image may need that a reader must know to restore it as it was
 * (docs/image-format.md "Required features"): record fields an older ferry would pass over
 * without a word, restoring something else (a thread in its process's working directory, a
 * removed root entered as the directory now at its path, a file mapping that mprotect can no
 * longer make writable).
 *
 * Each such field is a row of FEATURES: a name, what it is, and whether an image uses it. The
 * checkpoint lists the names of the rows its image uses in the manifest's `requires`
 * (requiredFeatures), and writes that image as version REQUIRES_FORMAT_VERSION (7), which a
 * ferry from before `requires` refuses as too new; an image that uses none is written as
 * before, so older readers still take it. A reader refuses an image that requires a name it
 * does not know (manifest.ts parseManifest), in one line, before anything is read: the format
 * version stays 7 however many features come after it, and an image needs only what it uses.
 *
 * A new field that an older ferry would ignore registers itself by adding a row here (a name
 * never used before, kebab-case; `uses` reads the records only) and a line in
 * docs/image-format.md; nothing else changes. A field an older ferry already refuses (an
 * unknown file kind, a value its validation rejects) needs no row.
 */
import type { FileRecord, TaskRecord, TreeRecord } from './records.js';

/** The first format version whose manifest may hold `requires`. */
export const REQUIRES_FORMAT_VERSION = 7;

/** The records a feature is looked for in (as the checkpoint writes them). */
export interface FeatureProbe {
  tree: TreeRecord;
  /** Every live process's task.json. */
  tasks: readonly TaskRecord[];
  /** files.json's files. */
  files: readonly FileRecord[];
  /** Other JSON entries by name (a container's record…), as written. */
  extra: ReadonlyMap<string, unknown>;
}

/** One feature an image may require. */
export interface Feature {
  /** Its name in the manifest's `requires`: kebab-case, never reused for anything else. */
  name: string;
  /** What it is, for the refusal and docs/image-format.md. */
  what: string;
  /** Whether the image holds it. */
  uses(image: FeatureProbe): boolean;
}

/** Every feature this ferry knows, oldest first. */
export const FEATURES: readonly Feature[] = [
  {
    name: 'thread-fs',
    what: 'a thread with a working directory, root and umask of its own (task.json threads[].fs)',
    uses: ({ tasks }) => tasks.some((t) => t.threads.some((th) => th.fs !== undefined)),
  },
  {
    name: 'removed-root',
    what: 'a process whose root directory was removed (task.json rootDeleted)',
    uses: ({ tasks }) => tasks.some((t) => t.rootDeleted !== undefined),
  },
  {
    name: 'shared-may-write',
    what: 'a shared file mapping mprotect may make writable (vmflags "mw")',
    uses: ({ tasks }) => tasks.some((t) => t.vmas.some((v) => v.vmflags.includes('mw'))),
  },
  {
    name: 'removed-device',
    what: 'a device node whose name was removed (files.json chr removed)',
    uses: ({ files }) => files.some((f) => f.kind === 'chr' && f.removed !== undefined),
  },
  {
    name: 'tty-exclusive',
    what: 'a terminal in exclusive mode (files.json tty exclusive, masterExclusive)',
    uses: ({ files }) => files.some((f) => f.kind === 'tty' && (f.exclusive !== undefined || f.masterExclusive !== undefined)),
  },
  {
    name: 'leaderless-group',
    what: 'a process group whose leader had exited (tree.json)',
    uses: ({ tree }) => {
      const listed = new Set(tree.processes.map((p) => p.pid));
      return tree.processes.some((p) => p.pgid !== 0 && !listed.has(p.pgid) && listed.has(p.sid));
    },
  },
  {
    name: 'proc-thread-file',
    what: 'a /proc file of a thread other than its process\'s main one (files.json procfile thread)',
    uses: ({ files }) => files.some((f) => f.kind === 'procfile' && f.thread !== undefined),
  },
  {
    name: 'tty-input-lines',
    what: 'terminal input queued in canonical mode, line by line (files.json tty inputLines)',
    uses: ({ files }) => files.some((f) => f.kind === 'tty' && f.inputLines !== undefined),
  },
  {
    name: 'tty-unheld-foreground',
    what: 'a controlling terminal no process holds, with another group than its leader\'s in the foreground (files.json tty ctty.foreground)',
    uses: ({ tasks, files }) => {
      const held = new Set(tasks.flatMap((t) => t.fds.map((d) => d.file)));
      return files.some((f) => f.kind === 'tty' && !held.has(f.id)
        && ((f.ctty as { foreground?: unknown } | null | undefined)?.foreground ?? null) !== null);
    },
  },
  {
    name: 'thread-fds',
    what: 'a thread with a descriptor table of its own (task.json threads[].fds)',
    uses: ({ tasks }) => tasks.some((t) => t.threads.some((th) => th.fds !== undefined)),
  },
  {
    name: 'zombie-name',
    what: 'the name of a zombie (tree.json processes[].zombie.comm)',
    uses: ({ tree }) => tree.processes.some((p) => p.zombie?.comm !== undefined),
  },
  {
    name: 'thp-except-advised',
    what: 'huge pages disabled except where advised (task.json thpExceptAdvised: prctl PR_SET_THP_DISABLE with PR_THP_DISABLE_EXCEPT_ADVISED)',
    uses: ({ tasks }) => tasks.some((t) => t.thpExceptAdvised === true),
  },
  {
    name: 'tty-empty-foreground',
    what: 'a controlling terminal no process holds, with a group no process is in any more in the foreground (files.json tty ctty.foreground)',
    uses: ({ tree, tasks, files }) => {
      const groups = new Set(tree.processes.map((p) => p.pgid));
      const held = new Set(tasks.flatMap((t) => t.fds.map((d) => d.file)));
      return files.some((f) => f.kind === 'tty' && !held.has(f.id)
        && typeof (f.ctty as { foreground?: unknown } | null | undefined)?.foreground === 'number'
        && !groups.has((f.ctty as { foreground: number }).foreground));
    },
  },
  {
    name: 'lent-through-ancestor',
    what: 'pages lent through or inherited from a process further up than the parent (task.json vmas[].lentThrough, or vmas[].cow where the parent maps nothing)',
    uses: ({ tree, tasks }) => tasks.some((t) => t.vmas.some((v) => v.lentThrough !== undefined)) || relayedCow(tree, tasks),
  },
  {
    name: 'thread-removed-cwd',
    what: 'a thread whose own working directory was removed (task.json threads[].fs.cwdDeleted)',
    uses: ({ tasks }) => tasks.some((t) => t.threads.some((th) => th.fs?.cwdDeleted !== undefined)),
  },
  {
    name: 'removed-exe',
    what: 'a process whose executable was removed, set to the removed file its areas map (task.json exeGhost)',
    uses: ({ tasks }) => tasks.some((t) => t.exeGhost !== undefined),
  },
  {
    name: 'guard-pages',
    what: 'guard pages (madvise MADV_GUARD_INSTALL) in a memory area (task.json vmas[].guards)',
    uses: ({ tasks }) => tasks.some((t) => t.vmas.some((v) => (v.guards?.length ?? 0) > 0)),
  },
];

/**
 * Whether a process inherits pages (`cow`) through a parent that maps nothing at that area
 * and holds nothing there for lenders (image/cow.ts: from an ancestor further up, the parent
 * relaying it). A reader from before `lentThrough` would refuse it as an edited image.
 */
function relayedCow(tree: TreeRecord, tasks: readonly TaskRecord[]): boolean {
  const ppid = new Map(tree.processes.map((p) => [p.pid, p.ppid]));
  const starts = new Map(tasks.map((t) => [t.pid, new Set(t.vmas.map((v) => v.start))]));
  /** `${holder}:${start}` of every area lent through its parent (no `lentThrough`: those count above). */
  const held = new Set(tasks.flatMap((t) => t.vmas.filter((v) => (v.lent?.length ?? 0) > 0).map((v) => `${ppid.get(t.pid)}:${v.start}`)));
  return tasks.some((t) => t.vmas.some((v) => (v.cow?.length ?? 0) > 0
    && starts.get(ppid.get(t.pid)!)?.has(v.start) === false && !held.has(`${ppid.get(t.pid)}:${v.start}`)));
}

/** The names this ferry knows. */
export const KNOWN_FEATURES: ReadonlySet<string> = new Set(FEATURES.map((f) => f.name));

/** The names of the features `image` uses, in FEATURES order (the manifest's `requires`). */
export function requiredFeatures(image: FeatureProbe): string[] {
  return FEATURES.filter((f) => f.uses(image)).map((f) => f.name);
}
