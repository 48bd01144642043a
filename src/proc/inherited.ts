/**
 * Descriptors this process inherited without close-on-exec, and keeping them from its children.
 *
 * A descriptor without FD_CLOEXEC survives execve(2) (fcntl(2), "File descriptor flags"), so a
 * shell that leaves one open (`exec 20>trace.log; npm test`, a CI agent's pipe) hands it to
 * npm, npm to node, node's test runner to each test process, and child_process.spawn to every
 * workload: libuv dup2(2)s only the stdio slots it was given and leaves every other descriptor
 * as the kernel found it. The workload then shares an open file with the shell, and checkpoint
 * refuses it as a leak (src/files/leaks.ts). Node itself helps only part of the way: at start-up
 * libuv's uv_disable_stdio_inheritance() sets FD_CLOEXEC on descriptors 0-15 and on those that
 * follow without a gap, and stops at the first closed one; descriptor 20 or 251 goes through.
 *
 * How inherited ones are told apart: /proc/self/fdinfo/N prints the open flags in octal with
 * O_CLOEXEC (02000000) for a close-on-exec descriptor (proc(5)). Everything Node, libuv and the
 * addon open carries O_CLOEXEC (they open with O_CLOEXEC, SOCK_CLOEXEC, EPOLL_CLOEXEC ...), so a
 * descriptor above 2 without it was inherited across execve.
 *
 * Why close rather than set FD_CLOEXEC: Node has no fcntl, and setting the flag would need a
 * native export for something `fs.closeSync` does. Closing is right for the programs that call
 * this (tests, benches, `ferry demo`): they take no descriptor from their caller beyond 0-2, so
 * nothing in them reads or writes an inherited one by number, and a number freed early cannot
 * be mistaken for another file later. Closing also lets go of the caller's file instead of
 * holding it for the life of the process (a pipe's reader sees end-of-file once the caller's own
 * copies are gone). The file itself is not lost: the caller still holds its descriptor, and
 * locks are not released (flock(2) and OFD locks belong to the open file the caller keeps; we
 * hold no POSIX locks of our own on it). Node's IPC channel (when the parent spawned us with
 * 'ipc') is inherited too and has no O_CLOEXEC, but Node uses it: it is always kept (Node
 * removes NODE_CHANNEL_FD from the environment at start-up; process.channel.fd names it), and
 * so still reaches children of a program started with one; the test runner, npm and a shell
 * start ours without.
 *
 * This is for programs, not for the library or the other commands: `ferry checkpoint`,
 * `ferry restore` and ferry-runtime may be given descriptors on purpose (runc passes the
 * criu swrk socket as fd 3, a restore may inherit a caller's pipe), so they must not call it.
 * Call it first thing, before anything of the program spawns a child.
 */
import { closeSync, readdirSync, readFileSync } from 'node:fs';
import { fdCloexec, parseFdinfo } from './fdinfo.js';

/**
 * Descriptors above 2 of this process without close-on-exec, in ascending order, except Node's
 * IPC channel.
 */
export function inheritedFds(): number[] {
  const channel = (process.channel as { fd?: number } | undefined)?.fd;
  const found: number[] = [];
  for (const name of readdirSync('/proc/self/fd')) {
    const fd = Number(name);
    if (fd <= 2 || fd === channel) continue;
    let text: string;
    try {
      text = readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
    } catch {
      continue; // the directory descriptor readdirSync used, closed since
    }
    if (!fdCloexec(parseFdinfo(text))) found.push(fd);
  }
  return found.sort((a, b) => a - b);
}

/**
 * Closes every descriptor above 2 this process inherited without close-on-exec (Node's IPC
 * channel excepted), so that the children it spawns start with descriptors 0-2 only and
 * what spawn gives them explicitly. Returns the descriptors closed.
 */
export function closeInheritedFds(): number[] {
  const fds = inheritedFds();
  for (const fd of fds) closeSync(fd);
  return fds;
}
