/**
 * Dump side of the file engine: describe every descriptor of the tasks, find which share one
 * open file (cheap key, confirmed with kcmp(KCMP_FILE)), and dump each open file once.
 */
import { readlinkSync, statSync } from 'node:fs';
import { FerryError, errnoCode } from '../errors.js';
import type { FdRecord, FileRecord } from '../image/records.js';
import { native } from '../native/binding.js';
import { parseFdinfo } from '../proc/fdinfo.js';
import { fdCloexec } from '../proc/fdinfo.js';
import { listFds, readProcText } from '../proc/read.js';
import { kindOf } from './registry.js';
import type { FdDesc, FileKind } from './types.js';

/** kcmp(2) type comparing two descriptors' open file descriptions. */
const KCMP_FILE = 0;

/** Reads link, stat and fdinfo of every descriptor of `pid` (a descriptor closed meanwhile is skipped). */
export function describeFds(pid: number): FdDesc[] {
  const out: FdDesc[] = [];
  for (const fd of listFds(pid)) {
    const path = `/proc/${pid}/fd/${fd}`;
    try {
      const link = readlinkSync(path);
      const stat = statSync(path, { bigint: true });
      const fdinfo = parseFdinfo(readProcText(pid, `fdinfo/${fd}`));
      out.push({ pid, fd, link, stat, fdinfo });
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') continue;
      throw err;
    }
  }
  return out;
}

/** Throws the 'unsupported file' error for the first descriptor no module handles. */
export function checkSupported(descs: readonly FdDesc[]): void {
  for (const d of descs) kindOf(d);
}

/** Open files of the dumped tasks and each task's descriptor table. */
export interface CollectedFiles {
  files: FileRecord[];
  fds: Map<number, FdRecord[]>;
}

/** Groups descriptors into open files and dumps each open file once. */
export function collectFiles(descsByPid: ReadonlyMap<number, readonly FdDesc[]>): CollectedFiles {
  const files: FileRecord[] = [];
  const fds = new Map<number, FdRecord[]>();
  /** Representatives per cheap key: one descriptor per distinct open file seen so far. */
  const groups = new Map<string, Array<{ desc: FdDesc; id: number }>>();
  for (const [pid, descs] of descsByPid) {
    const table: FdRecord[] = [];
    for (const d of descs) {
      const kind: FileKind = kindOf(d);
      const key = kind.key(d);
      let reps = groups.get(key);
      if (!reps) groups.set(key, (reps = []));
      let id = reps.find((r) => sameFile(r.desc, d))?.id;
      if (id === undefined) {
        id = files.length + 1;
        files.push({ ...kind.dump(d), id, kind: kind.kind } as FileRecord);
        reps.push({ desc: d, id });
      }
      table.push({ fd: d.fd, file: id, cloexec: fdCloexec(d.fdinfo) });
    }
    fds.set(pid, table);
  }
  return { files, fds };
}

function sameFile(a: FdDesc, b: FdDesc): boolean {
  try {
    return native().kcmp(a.pid, b.pid, KCMP_FILE, a.fd, b.fd) === 0;
  } catch (err) {
    throw new FerryError('EKCMP', `cannot compare fd ${a.fd} of pid ${a.pid} with fd ${b.fd} of pid ${b.pid}: ${(err as Error).message}`, { cause: err });
  }
}
