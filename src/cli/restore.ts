/** `ferry restore`: typed options -> library restore -> one line (or JSON) of result. */
import { isatty } from 'node:tty';
import type { RestoreResult } from '../api.js';
import { restore } from '../index.js';
import { UsageError, type RestoreCliOptions } from './args.js';
import type { RunContext } from './context.js';
import { formatBytes, formatMs, printLine, progressLine } from './output.js';

/** Restores the image `o.image` and prints the result on stdout. */
export async function runRestore(o: RestoreCliOptions, ctx: RunContext): Promise<void> {
  if (o.image === '-' && isatty(0)) {
    throw new UsageError('restore', '--image - reads the image from standard input, which is a terminal: pipe or redirect the image in');
  }
  const progress = progressLine();
  let result: RestoreResult;
  try {
    result = await restore({
      image: o.image,
      files: o.files,
      config: ctx.config,
      logger: ctx.logger,
      ...(o.pidFile !== undefined ? { pidFile: o.pidFile } : {}),
      ...(progress.onProgress !== undefined ? { onProgress: progress.onProgress } : {}),
    });
  } finally {
    progress.clear();
  }
  printLine(1, o.json ? JSON.stringify(result) : formatRestore(result, o));
}

/** "restored pid 1234 from /tmp/x.tar: 12.3 MiB of memory, verify 5 ms, restore 9 ms, total 20 ms" */
export function formatRestore(r: RestoreResult, o: Pick<RestoreCliOptions, 'image'>): string {
  const tasks = r.pids.length > 1 ? ` (${r.pids.length} processes)` : '';
  const from = o.image === '-' ? 'stdin' : o.image;
  return `restored pid ${r.pid}${tasks} from ${from}: ${formatBytes(r.pagesBytes)} of memory, `
    + `verify ${formatMs(r.verifyMs)}, restore ${formatMs(r.restoreMs)}, total ${formatMs(r.totalMs)}`;
}
