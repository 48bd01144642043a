/**
 * What both sides of a migration keep in image.work_dir, and the facts they exchange about
 * themselves.
 */
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { FerryError, describeCause } from '../errors.js';

/** One record of a migration's progress (`--json`: one line each). */
export interface PhaseRecord {
  phase: 'listen' | 'round' | 'checkpoint' | 'transfer' | 'restore' | 'done';
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
 * Removes the directories of `prefix` in `workDir` left by ferry processes that no longer exist
 * (SIGKILL leaves them), as the image writer does for its temporary files.
 */
export function removeStaleDirs(workDir: string, prefix: string): void {
  let names: string[];
  try {
    names = readdirSync(workDir);
  } catch {
    return;
  }
  for (const name of names) {
    if (!name.startsWith(prefix)) continue;
    const pid = Number(name.slice(prefix.length).split('-')[0]);
    if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && !existsSync(`/proc/${pid}`)) {
      rmSync(join(workDir, name), { recursive: true, force: true });
    }
  }
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

