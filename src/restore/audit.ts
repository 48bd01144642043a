/**
 * The audit login uid (audit(7), /proc/PID/loginuid) of a restored process (CredsRecord
 * `audit`). A process gets it from its parent at fork; a restored one would get ferry's. The
 * kernel lets a task set only its own (proc_loginuid_write() refuses any other writer), with
 * CAP_AUDIT_CONTROL, and not at all once set when loginuid_immutable is on; so the restored
 * task writes /proc/self/loginuid itself (injected openat + write + close) while it still runs
 * as root, before its threads exist (they inherit it). The session id cannot be chosen: the
 * kernel gives a new one with every loginuid set (audit_set_loginuid()). What can be kept is
 * which processes shared one: a child inherits its forker's at fork, so each stub is given its
 * login uid as soon as it exists, before it forks its children (keepAuditSession, from
 * restore/tree.ts), unless its forker's process had the same login uid and session, which it
 * then inherits; processes of one session come back in one new session.
 *
 * The login uid is what audit records attribute a process's actions to, so an image must not
 * forge it: one that no trusted key signed may only carry the restorer's own (which the stub
 * already inherits, so nothing is written); any other is refused before anything is made.
 */
import { readFileSync } from 'node:fs';
import { SYS } from '../arch/x86-64.js';
import { FerryError } from '../errors.js';
import type { TaskRecord } from '../image/records.js';
import { readProcText } from '../proc/read.js';
import type { Tracee } from '../task/tracee.js';
import type { AddressSpace } from './address-space.js';

const AT_FDCWD = -100, O_WRONLY = 1, O_CLOEXEC = 0o2000000;

/** ferry's own login uid (4294967295: unset), or undefined without audit support. */
function ownLoginuid(): number | undefined {
  try {
    return Number(readFileSync('/proc/self/loginuid', 'utf8').trim());
  } catch {
    return undefined;
  }
}

/**
 * Refuses (EPRIVILEGE, one line) an untrusted image whose processes would get another login
 * uid than the restorer's, before anything is made. `image` names the image.
 */
export function checkAuditTrust(image: string, tasks: readonly TaskRecord[], trusted: boolean): void {
  if (trusted) return;
  const own = ownLoginuid();
  const other = tasks.find((t) => t.creds.audit !== undefined && t.creds.audit.loginuid !== own);
  if (other === undefined) return;
  throw new FerryError('EPRIVILEGE', `image ${image}: pid ${other.pid} (${other.comm}) would get audit login uid ${other.creds.audit!.loginuid}, `
    + `not the restorer's (${own === undefined ? 'none: no audit support' : own === 4294967295 ? 'unset' : own}), which only an image a trusted key signed may set: `
    + 'sign it and restore with --trust; nothing was restored', { pid: other.pid });
}

/**
 * Gives the stub of `task`, just forked by the stub of `forker` (undefined: by ferry), its
 * login uid before it forks its children, unless it inherited it with its session from a
 * forker that had both (same loginuid and sessionid at checkpoint). One whose forker had the
 * same login uid in another session writes it again all the same: that gives it a new session
 * of its own, as it had. `put` places bytes in the stub's memory (their address).
 */
export function keepAuditSession(t: Tracee, task: TaskRecord, forker: TaskRecord | undefined, put: (data: Buffer) => bigint): void {
  const want = task.creds.audit;
  if (want === undefined) return;
  const from = forker?.creds.audit;
  if (from !== undefined && from.loginuid === want.loginuid && from.sessionid === want.sessionid) return;
  if (from === undefined && forker === undefined && ownLoginuid() === want.loginuid) return; // ferry's: restoreLoginuid's case
  const text = String(want.loginuid);
  const path = put(Buffer.from(`/proc/self/loginuid\0${text}\0`));
  writeLoginuid(t, task.pid, want.loginuid, path, path + 20n, text.length);
}

/** The injected open + write + close of /proc/self/loginuid (strings at `path`, `text`) in `t`. */
function writeLoginuid(t: Tracee, pid: number, want: number, path: bigint, text: bigint, length: number, now?: number): void {
  const fd = t.trySyscall(SYS.openat, AT_FDCWD, path, O_WRONLY | O_CLOEXEC, 0);
  if (fd < 0n) throw new FerryError('ESTATE', `cannot give pid ${pid} its audit login uid ${want}: open /proc/self/loginuid: errno ${-fd}`);
  const wrote = t.trySyscall(SYS.write, fd, text, length);
  t.trySyscall(SYS.close, fd);
  if (wrote !== BigInt(length)) {
    throw new FerryError('ESTATE', `cannot give pid ${pid} its audit login uid ${want}${now !== undefined ? ` (it is ${now})` : ''}: write /proc/self/loginuid: errno ${-wrote} `
      + '(without CAP_AUDIT_CONTROL, or with audit loginuid_immutable once set, the kernel refuses)');
  }
}

/** Gives the rebuilt main thread of `task` its recorded login uid, if it has another one now. */
export function restoreLoginuid(t: Tracee, as: AddressSpace, task: TaskRecord): void {
  const want = task.creds.audit?.loginuid;
  if (want === undefined) return;
  let now: number;
  try {
    now = Number(readProcText(t.pid, 'loginuid').trim());
  } catch {
    throw new FerryError('ESTATE', `pid ${task.pid} had audit login uid ${want}, but this kernel has no audit support (/proc/PID/loginuid): restore it on a kernel with CONFIG_AUDIT`);
  }
  if (now === want) return;
  as.scratch.reset();
  const path = as.scratch.putString('/proc/self/loginuid');
  const text = as.scratch.putString(String(want));
  writeLoginuid(t, task.pid, want, path, text, String(want).length, now);
}
