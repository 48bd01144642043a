/** `ferry migrate`: typed options -> library migrate -> a sentence, or one JSON record per phase. */
import { migrate } from '../migrate/sender.js';
import { migrateContainer } from '../migrate/container.js';
import { readMigrationKey } from '../migrate/key.js';
import { formatUrl } from '../migrate/endpoint.js';
import type { RoundRecord } from '../migrate/precopy.js';
import type { MigrateCliOptions } from './args.js';
import type { RunContext } from './context.js';
import { formatBytes, formatMs, printLine, progressLine, resultJson } from './output.js';

/**
 * The progress line of a pre-copy round: what it sent, how fast the tree dirties its memory,
 * and the downtime the next round predicts (its dirty bytes at the rounds' rate of transfer).
 */
export function formatRound(r: RoundRecord, sentPerMs: number): string {
  const rate = r.round > 1 ? `, dirty ${formatBytes(r.dirtyRate)}/s` : '';
  const predict = r.round > 1 && sentPerMs > 0 ? `, predicted downtime ~${formatMs(r.bytes / sentPerMs)} + the frozen dump` : '';
  return `pre-copy round ${r.round}: ${formatBytes(r.bytes)} in ${formatMs(r.ms)}${rate}${predict}`;
}

/** Moves `o.pid` (or container `o.container`) to `o.to` and prints the outcome on stdout. */
export async function runMigrate(o: MigrateCliOptions, ctx: RunContext, signal?: AbortSignal): Promise<void> {
  // The key files are read (and checked) before anything is touched or connected.
  const key = o.key !== undefined ? readMigrationKey(o.key) : undefined;
  const progress = progressLine();
  let sent = 0, ms = 0;
  const common = {
    to: o.to, config: ctx.config, logger: ctx.logger, files: o.files,
    ...(key !== undefined ? { key } : {}),
    ...(o.sshConfig !== undefined ? { ssh: { config: o.sshConfig } } : {}),
    ...(o.signKey !== undefined ? { signKey: o.signKey } : {}),
    ...(o.maxRounds !== undefined ? { maxRounds: o.maxRounds } : {}),
    ...(o.lazy ? { lazy: true } : {}),
    ...(signal !== undefined ? { signal } : {}),
    ...(progress.onProgress !== undefined ? { onProgress: progress.onProgress } : {}),
    ...(progress.onProgress !== undefined ? {
      onRound: (r: RoundRecord) => {
        sent += r.bytes;
        ms += r.ms;
        progress.onProgress?.({ phase: 'pre-copy', done: sent, text: formatRound(r, ms > 0 ? sent / ms : 0) });
      },
    } : {}),
    ...(o.json ? { onPhase: (r: object) => printLine(1, resultJson(r)) } : {}),
    onWarning: (line: string) => { progress.clear(); printLine(2, `warning: ${line}`); },
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
    const rounds = (result.rounds ?? 0) > 0 ? `, ${result.rounds} pre-copy round${result.rounds > 1 ? 's' : ''} (${formatBytes(result.roundBytes)})` : '';
    const lazy = result.lazy !== undefined ? `, lazy pages: ${result.lazy.pages} served after the start (${result.lazy.faults} on touch) in ${formatMs(result.lazy.fillMs)}` : '';
    printLine(1, `migrated ${what}${tasks} to ${formatUrl(o.to)}: ${formatBytes(result.bytes)}${rounds}, `
      + `downtime ${formatMs(result.downtimeMs)}, total ${formatMs(result.totalMs)}${lazy}`);
  }
}
