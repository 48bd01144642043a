/**
 * No write access from the image (docs/security.md, "Confinement"): restore opens every file
 * as root, so an edited image could hand a process a descriptor open for writing on any file
 * of the host (/etc/shadow, a root-owned binary) that its own credentials could never open so.
 * For an image no trusted key signed, every file a process of a plain restore holds open for
 * writing by path (a regular file, a character device such as /dev/mem, a FIFO, a terminal)
 * must be one that a holder of it could open for writing as its recorded
 * credentials: its filesystem uid owns the file and the owner may write, or its filesystem
 * gid or a supplementary group is the file's group and the group may write, or others may,
 * or it holds CAP_DAC_OVERRIDE. (POSIX ACLs are not read: a file writable only through an
 * ACL entry is refused; a trusted image is not held to this.)
 *
 * The same holds for the directories a restore makes for a directory that was removed (a
 * working directory, restore/cwd.ts, or one held open): they are made in the nearest directory
 * that still exists, which the process must be able to write in.
 *
 * A trusted image is exempt: a daemon that opened its log as root and then dropped to
 * `nobody` holds it for writing legitimately, and its image says so truthfully.
 */
import type { BigIntStats } from 'node:fs';
import { FerryError } from '../errors.js';
import { big, type FileRecord, type TaskRecord } from '../image/records.js';
import { O_ACCMODE } from '../proc/fcntl.js';

const O_WRONLY = 1, O_RDWR = 2; // O_ACCMODE values
const CAP_DAC_OVERRIDE = 1n;
/** The kinds restore opens by a path the image gives (src/files/). */
const BY_PATH = new Set(['reg', 'chr', 'fifo', 'tty']);

/** What of a file the check needs, or undefined when it is not there. */
export type StatOf = (path: string) => Pick<BigIntStats, 'uid' | 'gid' | 'mode'> | undefined;

/** Whether the leader of `task` could open a file with `st` for writing, by its recorded credentials. */
function mayWrite(task: Pick<TaskRecord, 'creds'>, st: Pick<BigIntStats, 'uid' | 'gid' | 'mode'>): boolean {
  const c = task.creds.threads[0];
  if (!c) return false;
  if ((big(c.caps.effective) >> CAP_DAC_OVERRIDE) & 1n) return true;
  const fsuid = c.uids[3], fsgid = c.gids[3];
  const mode = Number(st.mode);
  if (BigInt(fsuid ?? -1) === BigInt(st.uid)) return (mode & 0o200) !== 0;
  if (BigInt(fsgid ?? -1) === BigInt(st.gid) || c.groups.some((g) => BigInt(g) === BigInt(st.gid))) return (mode & 0o020) !== 0;
  return (mode & 0o002) !== 0;
}

/**
 * Throws EPRIVILEGE, naming the first process, descriptor and file, when a regular file the
 * image opens for writing could not be opened so by any of its holders' recorded credentials
 * (`statOf` looks the file up as restore will open it). `label` names the image.
 */
export function checkWriteAccess(label: string, tasks: readonly Pick<TaskRecord, 'pid' | 'comm' | 'creds' | 'fds'>[],
  files: readonly FileRecord[], statOf: StatOf): void {
  for (const f of files) {
    if (!BY_PATH.has(f.kind) || typeof f.path !== 'string' || typeof f.flags !== 'number') continue;
    const access = f.flags & O_ACCMODE;
    if (access !== O_WRONLY && access !== O_RDWR) continue;
    const st = statOf(f.path);
    if (!st) continue; // restore's own check refuses a missing file
    const holders = tasks.filter((t) => t.fds.some((d) => d.file === f.id));
    if (holders.length === 0 || holders.some((t) => mayWrite(t, st))) continue;
    const t = holders[0]!;
    const fd = t.fds.find((d) => d.file === f.id)!.fd;
    const c = t.creds.threads[0]!;
    throw new FerryError('EPRIVILEGE', `image ${label}: pid ${t.pid} (${t.comm}) fd ${fd} would get ${JSON.stringify(f.path.slice(0, 256))} open for writing, which its `
      + `credentials (uid ${c.uids[3]}, gid ${c.gids[3]}, no CAP_DAC_OVERRIDE) could not open so (owner ${st.uid}:${st.gid}, mode `
      + `${(Number(st.mode) & 0o7777).toString(8)}): nothing was restored; sign the image and restore with --trust if it is genuine`,
    { pid: t.pid, fd, path: f.path });
  }
}

/**
 * Throws EPRIVILEGE when a directory that was removed would be made again (for a chdir or an
 * open, removed at once: files/confined.ts withRemovedDir) in a directory the recorded
 * credentials of the process needing it could not create anything in: a removed working
 * directory, or a removed directory held open (`statOf` looks paths up as restore will).
 */
export function checkRemovedDirs(label: string, tasks: readonly Pick<TaskRecord, 'pid' | 'comm' | 'creds' | 'cwd' | 'cwdDeleted' | 'fds'>[],
  files: readonly FileRecord[], statOf: StatOf): void {
  const wanted: Array<{ t: (typeof tasks)[number]; path: string; as: string }> = [];
  for (const t of tasks) if (t.cwdDeleted) wanted.push({ t, path: t.cwd, as: 'as its working directory' });
  for (const f of files) {
    if (f.kind !== 'reg' || f.removed === undefined || typeof f.path !== 'string') continue;
    const t = tasks.find((x) => x.fds.some((d) => d.file === f.id));
    if (t) wanted.push({ t, path: f.path, as: `open (fd ${t.fds.find((d) => d.file === f.id)!.fd})` });
  }
  for (const { t, path, as } of wanted) {
    let dir = path;
    let st: ReturnType<StatOf>;
    do {
      dir = dir.slice(0, Math.max(dir.lastIndexOf('/'), 0)) || '/';
      st = statOf(dir);
    } while (!st && dir !== '/');
    if (!st || mayWrite(t, st)) continue;
    const c = t.creds.threads[0]!;
    throw new FerryError('EPRIVILEGE', `image ${label}: pid ${t.pid} (${t.comm}) had the removed directory ${JSON.stringify(path.slice(0, 256))} ${as}; restore would make it again in ${JSON.stringify(dir.slice(0, 256))}, which its `
      + `credentials (uid ${c.uids[3]}, gid ${c.gids[3]}, no CAP_DAC_OVERRIDE) could not write in (owner ${st.uid}:${st.gid}, mode `
      + `${(Number(st.mode) & 0o7777).toString(8)}): nothing was restored; sign the image and restore with --trust if it is genuine`);
  }
}
