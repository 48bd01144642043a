/** Reading /proc with errors that say which process went away. */
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';

/** A process (or one of its files) vanished while being read. */
export class ProcessGoneError extends Error {
  constructor(readonly targetPid: number, options?: { cause?: unknown }) {
    super(`process ${targetPid} is gone`, options);
    this.name = 'ProcessGoneError';
  }
}

/** /proc/PID/part/part… */
export function procPath(pid: number, ...parts: string[]): string {
  return ['/proc', String(pid), ...parts].join('/');
}

function gone(pid: number, err: unknown): never {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ENOENT' || code === 'ESRCH') throw new ProcessGoneError(pid, { cause: err });
  throw err;
}

/** Reads /proc/PID/FILE as text. */
export function readProcText(pid: number, file: string): string {
  try {
    return readFileSync(procPath(pid, file), 'utf8');
  } catch (err) {
    return gone(pid, err);
  }
}

/** readlink of /proc/PID/NAME (exe, cwd, root, fd/N). */
export function readProcLink(pid: number, name: string): string {
  try {
    return readlinkSync(procPath(pid, name));
  } catch (err) {
    return gone(pid, err);
  }
}

/** Descriptor numbers of a process, ascending. */
export function listFds(pid: number): number[] {
  try {
    return readdirSync(procPath(pid, 'fd')).map(Number).sort((a, b) => a - b);
  } catch (err) {
    return gone(pid, err);
  }
}

/** Thread ids of a process, ascending. */
export function listTids(pid: number): number[] {
  try {
    return readdirSync(procPath(pid, 'task')).map(Number).sort((a, b) => a - b);
  } catch (err) {
    return gone(pid, err);
  }
}

/** Whether `pid` lives in this process's mount namespace (its paths are ours; else a container's). */
export function inOwnMountNs(pid: number): boolean {
  return readlinkSync(procPath(pid, 'ns', 'mnt')) === readlinkSync('/proc/self/ns/mnt');
}

/**
 * Field 22 of /proc/PID/stat, the start time (clock ticks after boot), as its text: with the
 * pid it names one process for good (a reused pid has another). undefined: no such process.
 */
export function startTimeOf(pid: number): string | undefined {
  try {
    return readProcText(pid, 'stat').replace(/^.*\) /s, '').split(' ')[19];
  } catch {
    return undefined;
  }
}

/** Whether process `pid` exists and is not a zombie. */
export function isAlive(pid: number): boolean {
  try {
    return !/^\S+ \(.*\) [ZX]/s.test(readProcText(pid, 'stat'));
  } catch {
    return false;
  }
}
