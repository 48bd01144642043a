/**
 * A chroot'ed process's root directory (TaskRecord `root`, dump/root-dir.ts): the restored
 * process calls chroot(2) itself, injected while its stub still runs as root, after the last
 * injected call that names a host path (its working directory, /proc/self/loginuid) and
 * before its credentials. Its working directory stays where it was put, as chroot leaves it.
 * A process sharing its fs struct with one restored before it (CLONE_FS, image/sharing.ts)
 * has that root already.
 *
 * A chroot is no privilege in itself, but one the process could not have made itself is a way
 * to one: a setuid program run inside a root whose files its caller chose. So an image no
 * trusted key signed may give a process a root only if each of its threads could chroot(2)
 * itself (CAP_SYS_CHROOT effective) or can gain nothing by exec (no_new_privs).
 */
import { constants as osConstants } from 'node:os';
import { SYS } from '../arch/x86-64.js';
import { FerryError } from '../errors.js';
import { big, type TaskRecord } from '../image/records.js';
import type { Tracee } from '../task/tracee.js';
import type { AddressSpace } from './address-space.js';

const CAP_SYS_CHROOT = 18n;

/**
 * Refuses (EPRIVILEGE, one line) an untrusted image giving a process a root it could not make,
 * and (EIMAGE) any root in a container's image (`container`): checkpoint records none there.
 */
export function checkRootTrust(image: string, tasks: readonly TaskRecord[], trusted: boolean, container: boolean): void {
  const inContainer = container ? tasks.find((t) => t.root !== undefined) : undefined;
  if (inContainer !== undefined) {
    throw new FerryError('EIMAGE', `image ${image}: pid ${inContainer.pid} of a container's image has a root directory of its own (task.json root), which a checkpoint never records there: refused (an edited image); nothing was restored`, { pid: inContainer.pid });
  }
  if (trusted) return;
  for (const task of tasks) {
    if (task.root === undefined) continue;
    const unable = task.creds.threads.find((th) => !th.noNewPrivs && ((big(th.caps.effective) >> CAP_SYS_CHROOT) & 1n) === 0n);
    if (unable === undefined) continue;
    throw new FerryError('EPRIVILEGE', `image ${image}: pid ${task.pid} (${task.comm}) would be restored chroot'ed into ${task.root}, which its thread ${unable.tid} `
      + 'could not do itself (no CAP_SYS_CHROOT, no no_new_privs), and only an image a trusted key signed may give: sign it and restore with --trust; nothing was restored', { pid: task.pid });
  }
}

/** Puts the rebuilt process `t` into its recorded root directory (`sharesFs`: it has it already). */
export function enterRootDir(t: Tracee, as: AddressSpace, task: TaskRecord, sharesFs: boolean): void {
  if (task.root === undefined || sharesFs) return;
  as.scratch.reset();
  const r = t.trySyscall(SYS.chroot, as.scratch.putString(task.root));
  if (r < 0n) {
    const name = Object.entries(osConstants.errno).find(([, v]) => v === Number(-r))?.[0] ?? `errno ${-r}`;
    throw new FerryError('ESTATE', `cannot put pid ${task.pid} back into its root directory ${task.root}: chroot failed with ${name}; make that directory exist as it was`, { pid: task.pid });
  }
}
