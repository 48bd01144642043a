/**
 * The real runc behind the wrapper. Container engines may start a runtime with an
 * environment that has no PATH, so after PATH the usual directories are searched; the wrapper
 * itself is skipped in case it was installed under the name `runc`. bin/ferry-runtime looks
 * the same way and passes what it found in FERRY_RUNC.
 */
import { accessSync, constants, realpathSync } from 'node:fs';
import { join } from 'node:path';
import { FerryError } from '../errors.js';

/** Searched after PATH. */
export const RUNC_DIRS = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];

function runnable(p: string): boolean {
  try {
    accessSync(p, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function real(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    return p;
  }
}

/**
 * The runc binary: FERRY_RUNC if set (an absolute path), else the first `runc` in PATH and
 * RUNC_DIRS that is not `self` (the wrapper's launcher). Throws one clear line if none.
 */
export function findRunc(env: NodeJS.ProcessEnv, self?: string): string {
  const given = env.FERRY_RUNC;
  if (given !== undefined && given !== '') {
    if (!runnable(given)) throw new FerryError('ENORUNTIME', `FERRY_RUNC=${given} is not an executable file`);
    return given;
  }
  const mine = self !== undefined ? real(self) : undefined;
  for (const d of [...(env.PATH ?? '').split(':').filter(Boolean), ...RUNC_DIRS]) {
    const p = join(d, 'runc');
    if (runnable(p) && real(p) !== mine) return p;
  }
  throw new FerryError('ENORUNTIME', `runc not found (looked in PATH and ${RUNC_DIRS.join(', ')}): install it (apt-get install runc) or set FERRY_RUNC`);
}
