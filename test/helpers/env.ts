/** Where things are, and what a test needs before it can run. */
import { existsSync } from 'node:fs';
import { release } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Repository root (tests run from <root>/dist/test/...). */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const FERRY = join(ROOT, 'bin', 'ferry');
export const WORKLOADS = join(ROOT, 'build', 'workloads');
export const PYTHON = '/usr/bin/python3';

/** A skip reason when the test cannot run here, else false. */
export function needs(...what: Array<'root' | 'build' | 'python'>): string | false {
  for (const w of what) {
    if (w === 'root' && process.getuid?.() !== 0) return 'needs root (ptrace, clone3 with a chosen PID)';
    if (w === 'build' && !existsSync(join(WORKLOADS, 'state'))) return "needs the native build ('npm run build')";
    if (w === 'python' && !existsSync(PYTHON)) return `needs ${PYTHON} (apt-get install python3)`;
  }
  return false;
}

/** A skip reason when the running kernel is older than MAJOR.MINOR (`what` needs it), else false. */
export function needsKernel(major: number, minor: number, what: string): string | false {
  const [have = 0, haveMinor = 0] = release().split('.').map(Number);
  return have > major || (have === major && haveMinor >= minor) ? false : `${what} needs Linux ${major}.${minor}`;
}
