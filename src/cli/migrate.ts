/** `ferry migrate`: typed options -> library migrate -> a sentence, or one JSON record per phase. */
import { migrate } from '../migrate/sender.js';
import { migrateContainer } from '../migrate/container.js';
import { readMigrationKey } from '../migrate/key.js';
import { formatUrl } from '../migrate/endpoint.js';
import type { MigrateCliOptions } from './args.js';
import type { RunContext } from './context.js';
import { formatBytes, formatMs, printLine, progressLine, resultJson } from './output.js';

/** Moves `o.pid` (or container `o.container`) to `o.to` and prints the outcome on stdout. */
export async function runMigrate(o: MigrateCliOptions, ctx: RunContext, signal?: AbortSignal): Promise<void> {
  // The key files are read (and checked) before anything is touched or connected.
  const key = o.key !== undefined ? readMigrationKey(o.key) : undefined;
  const progress = progressLine();
  const common = {
    to: o.to, config: ctx.config, logger: ctx.logger,
    ...(key !== undefined ? { key } : {}),
    ...(o.sshConfig !== undefined ? { ssh: { config: o.sshConfig } } : {}),
    ...(o.signKey !== undefined ? { signKey: o.signKey } : {}),
    ...(signal !== undefined ? { signal } : {}),
    ...(progress.onProgress !== undefined ? { onProgress: progress.onProgress } : {}),
    ...(o.json ? { onPhase: (r: object) => printLine(1, resultJson(r)) } : {}),
  };
  const c = o.container;
  let result;
  try {
    result = c === undefined ? await migrate({ ...common, pid: o.pid }) : await migrateContainer({
      ...common, id: c.id, runtime: c.runtime, ...(c.root !== undefined ? { root: c.root } : {}),
      target: {
        ...(c.targetId !== undefined ? { id: c.targetId } : {}),
        ...(c.targetBundle !== undefined ? { bundle: c.targetBundle } : {}),
        ...(c.targetRoot !== undefined ? { root: c.targetRoot } : {}),
      },
    });
  } finally {
    progress.clear();
  }
  if (!o.json) {
    const tasks = result.pids.length > 1 ? ` (${result.pids.length} processes)` : '';
    const what = c === undefined ? `pid ${result.pid}` : `container ${c.id}${c.targetId !== undefined && c.targetId !== c.id ? ` as ${c.targetId}` : ''}`;
    printLine(1, `migrated ${what}${tasks} to ${formatUrl(o.to)}: ${formatBytes(result.bytes)}, `
      + `downtime ${formatMs(result.downtimeMs)}, total ${formatMs(result.totalMs)}`);
  }
}
