/** `ferry migrate`: typed options -> library migrate -> a sentence, or one JSON record per phase. */
import { migrate } from '../migrate/sender.js';
import { readMigrationKey } from '../migrate/key.js';
import { formatUrl } from '../migrate/endpoint.js';
import type { MigrateCliOptions } from './args.js';
import type { RunContext } from './context.js';
import { formatBytes, formatMs, printLine, progressLine, resultJson } from './output.js';

/** Moves `o.pid` to `o.to` and prints the outcome on stdout. */
export async function runMigrate(o: MigrateCliOptions, ctx: RunContext, signal?: AbortSignal): Promise<void> {
  // Both key files are read (and checked) before anything is touched or connected.
  const key = readMigrationKey(o.key);
  const progress = progressLine();
  let result;
  try {
    result = await migrate({
      pid: o.pid, to: o.to, key, config: ctx.config, logger: ctx.logger,
      ...(o.signKey !== undefined ? { signKey: o.signKey } : {}),
      ...(signal !== undefined ? { signal } : {}),
      ...(progress.onProgress !== undefined ? { onProgress: progress.onProgress } : {}),
      ...(o.json ? { onPhase: (r: object) => printLine(1, resultJson(r)) } : {}),
    });
  } finally {
    progress.clear();
  }
  if (!o.json) {
    const tasks = result.pids.length > 1 ? ` (${result.pids.length} processes)` : '';
    printLine(1, `migrated pid ${result.pid}${tasks} to ${formatUrl(o.to)}: ${formatBytes(result.bytes)}, `
      + `downtime ${formatMs(result.downtimeMs)}, total ${formatMs(result.totalMs)}`);
  }
}
