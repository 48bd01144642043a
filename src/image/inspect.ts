/**
 * `inspect`: what an image holds, without restoring it. The report is plain JSON (for
 * `--json`); `formatInspect` renders it for people.
 */
import type { InspectOptions } from '../api.js';
import { PAGE_SIZE } from '../arch/x86-64.js';
import { validateFiles, validateTask, validateTree } from '../restore/validate.js';
import type { Manifest } from './manifest.js';
import { openImage } from './reader.js';
import { FILES_ENTRY, taskEntry, TREE_ENTRY, type FdRecord, type FileRecord } from './records.js';

/** One memory area as inspect shows it. */
export interface InspectVma {
  start: string;
  end: string;
  /** rwxp/rwxs as in /proc/PID/maps. */
  perms: string;
  kind: string;
  name: string;
  /** Bytes of stored pages. */
  storedBytes: number;
}

/** One descriptor as inspect shows it. */
export interface InspectFd {
  fd: number;
  file: number;
  kind: string;
  /** Path or description of the open file. */
  target: string;
  cloexec: boolean;
  /** Other descriptors (pid:fd, or pid/tid:fd in a thread's own table) sharing the same open file. */
  sharedWith: string[];
}

export interface InspectTask {
  pid: number;
  ppid: number;
  comm: string;
  exe: string;
  cwd: string;
  threads: number;
  pagesBytes: number;
  /** The main thread's credentials in one line: uids, gids, groups, capabilities, seccomp. */
  creds: string;
  vmas: InspectVma[];
  fds: InspectFd[];
  /** The descriptors of each thread with a table of its own (ThreadRecord.fds); absent: none. */
  threadFds?: Array<{ tid: number; fds: InspectFd[] }>;
}

/** Everything `ferry inspect` reports. */
export interface InspectReport {
  image: string;
  manifest: Omit<Manifest, 'entries'>;
  /** Fingerprint (`SHA256:…`) of the key that signed the image (signature verified); null: unsigned. */
  signer: string | null;
  entries: Array<{ name: string; size: number }>;
  totalBytes: number;
  tasks: InspectTask[];
  files: FileRecord[];
}

const perms = (prot: number, shared: boolean): string =>
  `${prot & 1 ? 'r' : '-'}${prot & 2 ? 'w' : '-'}${prot & 4 ? 'x' : '-'}${shared ? 's' : 'p'}`;

/** Reads and verifies an image and describes it. */
export async function inspect(o: InspectOptions): Promise<InspectReport> {
  const image = await openImage(o.image, { workDir: o.config.image.workDir });
  try {
    const { entries, ...manifest } = image.manifest;
    // Every record is checked as restore checks it, so an image inspect accepts is one restore can read.
    validateTree(await image.readJson(TREE_ENTRY), manifest.root.pid, manifest.tasks);
    const files = validateFiles(await image.readJson(FILES_ENTRY)).files;
    const holders = new Map<number, string[]>();
    const tasks: InspectTask[] = [];
    for (const pid of manifest.tasks) {
      const t = validateTask(await image.readJson(taskEntry(pid)), pid);
      for (const f of t.fds) holders.set(f.file, [...(holders.get(f.file) ?? []), `${pid}:${f.fd}`]);
      for (const th of t.threads) for (const f of th.fds ?? []) holders.set(f.file, [...(holders.get(f.file) ?? []), `${pid}/${th.tid}:${f.fd}`]);
      tasks.push({
        pid: t.pid, ppid: t.ppid, comm: t.comm, exe: t.exe, cwd: t.cwd, threads: t.threads.length,
        pagesBytes: t.pagesBytes,
        creds: ((c) => `uids ${c.uids.join('/')} gids ${c.gids.join('/')} groups [${c.groups.join(',')}] `
          + `caps eff ${c.caps.effective} prm ${c.caps.permitted} amb ${c.caps.ambient}`
          + `${c.noNewPrivs ? ' no_new_privs' : ''}, ${c.seccomp.length} seccomp filter(s)`)(t.creds.threads[0]!),
        vmas: t.vmas.map((v) => ({
          start: v.start, end: v.end, perms: perms(v.prot, v.shared), kind: v.kind, name: v.name,
          storedBytes: v.runs.reduce((s, [, n]) => s + n * PAGE_SIZE, 0),
        })),
        fds: [],
      });
    }
    for (const pid of manifest.tasks) {
      const t = validateTask(await image.readJson(taskEntry(pid)), pid);
      const out = tasks.find((x) => x.pid === pid)!;
      const describe = (f: FdRecord, self: string): InspectFd => {
        const file = files.find((x) => x.id === f.file);
        return {
          fd: f.fd, file: f.file, kind: file?.kind ?? '?', target: typeof file?.path === 'string' ? file.path : file?.kind ?? '?',
          cloexec: f.cloexec,
          sharedWith: (holders.get(f.file) ?? []).filter((h) => h !== self),
        };
      };
      out.fds = t.fds.map((f) => describe(f, `${pid}:${f.fd}`));
      const own = t.threads.filter((th) => th.fds !== undefined);
      if (own.length > 0) out.threadFds = own.map((th) => ({ tid: th.tid, fds: th.fds!.map((f) => describe(f, `${pid}/${th.tid}:${f.fd}`)) }));
    }
    return {
      image: o.image,
      manifest,
      signer: image.signer,
      entries: entries.map((e) => ({ name: e.name, size: e.size })),
      totalBytes: entries.reduce((s, e) => s + e.size, 0),
      tasks,
      files,
    };
  } finally {
    await image.close();
  }
}

const mib = (n: number): string => `${(n / 1048576).toFixed(1)} MiB`;

/** Human-readable rendering of an inspect report. */
/**
 * The report as text. Memory is summed up by kind (anonymous, file, shared…: areas, size and
 * bytes stored) unless `verbose`, which lists every area.
 */
export function formatInspect(r: InspectReport, verbose = false): string {
  const m = r.manifest;
  const lines = [
    `image      ${r.image}`,
    `format     ${m.format} v${m.formatVersion}, written by ferry ${m.ferryVersion} at ${m.createdAt}`,
    ...(m.requires !== undefined ? [`requires   ${m.requires.join(', ')}`] : []),
    `kernel     ${m.host.kernelRelease} (${m.host.arch}), xfeatures ${m.host.xfeatures}`,
    `signer     ${r.signer ?? 'unsigned'}`,
    `root pid   ${m.root.pid}`,
    `size       ${mib(r.totalBytes)} in ${r.entries.length} entries`,
  ];
  for (const t of r.tasks) {
    lines.push('', `task ${t.pid} (${t.comm}) parent ${t.ppid}, ${t.threads} thread(s)`,
      `  exe ${t.exe}`, `  cwd ${t.cwd}`, `  creds ${t.creds}`,
      `  memory: ${t.vmas.length} areas, ${mib(t.pagesBytes)} of pages stored`);
    if (verbose) {
      for (const v of t.vmas) {
        lines.push(`    ${v.start.padStart(14)}-${v.end.padEnd(14)} ${v.perms} ${v.kind.padEnd(11)} ${mib(v.storedBytes).padStart(10)}  ${v.name}`);
      }
    } else {
      const kinds = new Map<string, { areas: number; size: bigint; stored: number }>();
      for (const v of t.vmas) {
        const k = kinds.get(v.kind) ?? { areas: 0, size: 0n, stored: 0 };
        k.areas++;
        k.size += BigInt(v.end) - BigInt(v.start);
        k.stored += v.storedBytes;
        kinds.set(v.kind, k);
      }
      // By code unit, not localeCompare: its first call loads ICU's collation, 13 ms of `inspect`.
      for (const [kind, k] of [...kinds].sort((a, b) => b[1].stored - a[1].stored || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))) {
        lines.push(`    ${kind.padEnd(11)} ${String(k.areas).padStart(5)} area${k.areas === 1 ? ' ' : 's'} ${mib(Number(k.size)).padStart(10)} mapped ${mib(k.stored).padStart(10)} stored`);
      }
    }
    for (const [title, fds] of [['descriptors', t.fds] as const, ...(t.threadFds ?? []).map((th) => [`thread ${th.tid}'s own descriptors`, th.fds] as const)]) {
      lines.push(`  ${title}: ${fds.length}`);
      for (const f of fds) {
        const shared = f.sharedWith.length > 0 ? `  (shared with ${f.sharedWith.join(', ')})` : '';
        lines.push(`    fd ${String(f.fd).padStart(4)} ${f.kind.padEnd(5)} ${f.target}${f.cloexec ? '  [cloexec]' : ''}${shared}`);
      }
    }
  }
  return lines.join('\n');
}
