/**
 * What both sides of a migration keep in image.work_dir, and the facts they exchange about
 * themselves.
 */
import { existsSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { FerryError, describeCause } from '../errors.js';
import { rebuildImage } from './precopy.js';

/** One record of a migration's progress (`--json`: one line each). */
export interface PhaseRecord {
  phase: 'listen' | 'round' | 'checkpoint' | 'transfer' | 'restore' | 'filled' | 'done';
  [field: string]: unknown;
}

/** Name of this node's running kernel: the same on both sides means the same machine and boot. */
export function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return '';
  }
}

/** Prefix of the private directories a migration makes in image.work_dir (`.ferry-migrate-PID-…`). */
export const SENDER_DIR = '.ferry-migrate-';
/** Prefix of the private directories a receiver makes there. */
export const RECEIVER_DIR = '.ferry-receive-';

/**
 * Name of the mark a sender leaves in its private directory once the target holds the image
 * and the tree is about to be killed: from then on its copy may be the workload's only one.
 */
export const HANDED_OVER = 'handed-over';

/**
 * A sender's copy under pre-copy, in its private directory: the frames it sent (precopy.ts
 * FrameLog), from which copyImage makes the image when it is needed.
 */
export const FRAME_LOG = 'image.frames';

/**
 * The sender's copy of the image in its private directory `dir` as a tar (`dir`/image.tar),
 * made from its FRAME_LOG first if it is kept as one (pre-copy). Throws what rebuildImage
 * throws.
 */
export function copyImage(dir: string): string {
  const tar = join(dir, 'image.tar');
  if (!existsSync(tar) && existsSync(join(dir, FRAME_LOG))) rebuildImage(join(dir, FRAME_LOG), dir, tar);
  return tar;
}

/**
 * Removes the directories of `prefix` in `workDir` left by ferry processes that no longer exist
 * (SIGKILL leaves them), as the image writer does for its temporary files. A sender's directory
 * marked HANDED_OVER is not thrown away: its sender died at the hand-over, so whether the
 * workload runs on the target is unknown, and its image is moved out of the directory (no sweep
 * removes it there) and named to `onKept` with the pid it holds.
 */
export function removeStaleDirs(workDir: string, prefix: string, onKept?: (image: string, pid: number) => void): void {
  let names: string[];
  try {
    names = readdirSync(workDir);
  } catch {
    return;
  }
  for (const name of names) {
    if (!name.startsWith(prefix)) continue;
    const pid = Number(name.slice(prefix.length).split('-')[0]);
    if (!(Number.isInteger(pid) && pid > 0 && pid !== process.pid && !existsSync(`/proc/${pid}`))) continue;
    const dir = join(workDir, name);
    const mark = join(dir, HANDED_OVER);
    if (existsSync(mark) && (existsSync(join(dir, 'image.tar')) || existsSync(join(dir, FRAME_LOG)))) {
      try {
        copyImage(dir);
      } catch {
        continue; // the frames stay where they are: never removed without a copy elsewhere
      }
      let of = 0;
      try {
        of = Number(JSON.parse(readFileSync(mark, 'utf8')).pid) || 0;
      } catch { /* unreadable: the pid stays unknown */ }
      const kept = join(workDir, `ferry-migrate-${of}-unknown-${name.slice(prefix.length)}.tar`);
      try {
        renameSync(join(dir, 'image.tar'), kept);
      } catch {
        continue; // kept where it is: never removed without a copy elsewhere
      }
      onKept?.(kept, of);
    }
    rmSync(dir, { recursive: true, force: true });
  }
}

/** removeStaleDirs' warning for a copy kept from a sender that died at the hand-over. */
export function keptCopyWarning(image: string, pid: number): string {
  return `a migration of pid ${pid} lost its sender at the hand-over, so whether it runs on its target is unknown: its image is kept in ${image}; `
    + `if pid ${pid} runs neither here nor there, restore it with: ferry restore --image ${image}`;
}

/** A private directory for this run in image.work_dir; FerryError naming the setting when it cannot be made. */
export function privateDir(workDir: string, prefix: string): string {
  try {
    if (!existsSync(workDir)) throw new Error('no such directory');
    return mkdtempSync(join(workDir, `${prefix}${process.pid}-`)); // mode 0700
  } catch (err) {
    throw new FerryError('EIMAGE', `cannot make a directory in ${workDir} (image.work_dir) for the image: ${describeCause(err)}: create it, or set image.work_dir in the configuration`, { cause: err, path: workDir });
  }
}

