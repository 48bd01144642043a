/**
 * Cgroups the tests make (test/integration/cgroups.test.ts, test/faults/cgroups.test.ts).
 */
import { existsSync, readdirSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import { sleep } from './processes.js';

/**
 * Removes cgroup `dir` and the cgroups under it (ones the test made), waiting up to about 2 s
 * for dying tasks to leave each (EBUSY meanwhile).
 */
export async function rmCgroupTree(dir: string): Promise<void> {
  if (!existsSync(dir)) return;
  for (const e of readdirSync(dir, { withFileTypes: true })) if (e.isDirectory()) await rmCgroupTree(join(dir, e.name));
  for (let i = 0; ; i++) {
    try {
      rmdirSync(dir);
      return;
    } catch (err) {
      if (i > 100 || (err as NodeJS.ErrnoException).code !== 'EBUSY') throw err;
      await sleep(20);
    }
  }
}
