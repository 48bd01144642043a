/** `ferry checkpoint`: typed options -> library checkpoint -> one line (or JSON) of result. */
import { isatty } from 'node:tty';
import type { CheckpointResult } from '../api.js';
import { checkpoint } from '../index.js';
import { checkpointContainer } from '../container/checkpoint.js';
import { signingKey } from '../image/sign.js';
import { UsageError, type CheckpointCliOptions } from './args.js';
import type { RunContext } from './context.js';
import { formatBytes, formatMs, printLine, progressLine, resultJson } from './output.js';

/**
 * Checkpoints `o.pid` into `o.image` and prints the result. With `--image -` the image owns
 * stdout, so the result goes to stderr.
 */
export async function runCheckpoint(o: CheckpointCliOptions, ctx: RunContext, signal?: AbortSignal): Promise<void> {
  if (o.image === '-' && isatty(1)) {
    throw new UsageError('checkpoint', '--image - writes the image to standard output, which is a terminal: redirect it to a file or a pipe');
  }
  // The key is read (and checked) before anything is touched; the library gets the key itself.
  const signKey = o.signKey !== undefined ? signingKey(o.signKey) : undefined;
  const progress = progressLine();
  let result: CheckpointResult;
  try {
    const common = {
      image: o.image,
      leaveRunning: o.leaveRunning,
      ...(signKey !== undefined ? { signKey } : {}),
      files: o.files,
      config: ctx.config,
      logger: ctx.logger,
      ...(signal !== undefined ? { signal } : {}),
      ...(progress.onProgress !== undefined ? { onProgress: progress.onProgress } : {}),
    };
    result = o.container
      ? await checkpointContainer({ ...common, id: o.container.id, runtime: o.container.runtime, ...(o.container.root !== undefined ? { root: o.container.root } : {}) })
      : await checkpoint({ ...common, pid: o.pid });
  } finally {
    progress.clear();
  }
  printLine(o.image === '-' ? 2 : 1, o.json ? resultJson(result) : formatCheckpoint(result, o));
  if (!o.json) for (const w of result.warnings ?? []) printLine(2, `warning: ${w}`);
}

/** A wait for the reaping at least this long is named in the summary line (formatCheckpoint). */
const REAP_WAIT_SHOWN_MS = 10;

/** "checkpointed pid 1234 to /tmp/x.tar: 12.3 MiB, frozen 8 ms, total 40 ms" */
export function formatCheckpoint(r: CheckpointResult, o: Pick<CheckpointCliOptions, 'pid' | 'image' | 'leaveRunning' | 'container'>): string {
  const root = r.pids[0] ?? o.pid;
  const tasks = r.pids.length > 1 ? ` (${r.pids.length} processes)` : '';
  const where = o.image === '-' ? 'stdout' : o.image;
  const what = o.container ? `container ${o.container.id} (pid ${root}${tasks})` : `pid ${root}${tasks}`;
  // The wait for the reaping, said only where it is a part worth naming of the total.
  const reaping = r.reapWaitMs !== undefined && r.reapWaitMs >= REAP_WAIT_SHOWN_MS ? ` (${formatMs(r.reapWaitMs)} of it waiting for the killed processes to be reaped)` : '';
  return `checkpointed ${what} to ${where}: ${formatBytes(r.imageBytes)}, `
    + `frozen ${formatMs(r.frozenMs)}, total ${formatMs(r.totalMs)}${reaping}${o.leaveRunning ? '; left running' : ''}`;
}
