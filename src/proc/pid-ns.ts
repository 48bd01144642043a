/**
 * Pid namespaces, named as readlink(2) of /proc/PID/ns/pid names them ("pid:[4026531836]"):
 * the inode of the one nsfs, the same name in every process of the machine.
 */
import { closeSync, openSync, readlinkSync } from 'node:fs';
import { native } from '../native/binding.js';

/** The initial pid namespace's name (PROC_PID_INIT_INO, include/linux/proc_ns.h). */
export const INITIAL_PID_NS = 'pid:[4026531836]';

/** Nesting bound of pid namespaces (MAX_PID_NS_LEVEL, 32), with room. */
const MAX_DEPTH = 40;

/** This process's own pid namespace. */
export function ownPidNamespace(): string {
  return readlinkSync('/proc/self/ns/pid');
}

/**
 * The pid namespaces where process `pid` has a pid: its own and each ancestor of it, up to
 * the initial one (ioctl NS_GET_PARENT), its own first. Undefined when that line cannot be
 * read whole (the process gone, an ancestor out of reach).
 */
export function pidNamespaceLine(pid: number): string[] | undefined {
  let fd: number;
  try {
    fd = openSync(`/proc/${pid}/ns/pid`, 'r');
  } catch {
    return undefined;
  }
  const line: string[] = [];
  try {
    for (let depth = 0; depth < MAX_DEPTH; depth++) {
      const name = readlinkSync(`/proc/self/fd/${fd}`);
      line.push(name);
      if (name === INITIAL_PID_NS) return line;
      const parent = native().nsParent(fd);
      closeSync(fd);
      fd = parent;
    }
    return undefined;
  } catch {
    return undefined;
  } finally {
    closeSync(fd);
  }
}
