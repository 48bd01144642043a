/** `ferry restore`: typed options -> library restore -> one line (or JSON) of result. */
import type { RestoreResult } from '../api.js';
import { restore } from '../restore/restore.js';
import { UsageError, type RestoreCliOptions } from './args.js';
import { Interrupted, type RunContext } from './context.js';
import { formatBytes, formatMs, isTerminal, printLine, progressLine, resultJson } from './output.js';

/** Restores the image `o.image` and prints the result on stdout. */
export async function runRestore(o: RestoreCliOptions, ctx: RunContext, signal?: AbortSignal): Promise<void> {
  if (o.image === '-' && isTerminal(0)) {
    throw new UsageError('restore', '--image - reads the image from standard input, which is a terminal: pipe or redirect the image in');
  }
  const progress = progressLine();
  let result: RestoreResult;
  try {
    const common = {
      image: o.image,
      files: o.files,
      config: ctx.config,
      logger: ctx.logger,
      ...(signal !== undefined ? { signal } : {}),
      ...(o.pidFile !== undefined ? { pidFile: o.pidFile } : {}),
      ...(o.trust !== undefined ? { trust: o.trust } : {}),
      ...(o.maxCreds !== undefined ? { bound: o.maxCreds } : {}),
      ...(o.inherit !== undefined ? { inherit: o.inherit } : {}),
      ...(o.manageCgroups !== undefined ? { manageCgroups: o.manageCgroups } : {}),
      ...(progress.onProgress !== undefined ? { onProgress: progress.onProgress } : {}),
    };
    const c = o.container;
    // The container's restore (and its runtime's modules) only for a container.
    result = c
      ? await (await import('../container/restore.js')).restoreContainer({
        ...common, id: c.id, runtime: c.runtime,
        ...(c.root !== undefined ? { root: c.root } : {}), ...(c.bundle !== undefined ? { bundle: c.bundle } : {}),
      })
      : await restore(common);
  } finally {
    progress.clear();
  }
  if (!o.json) for (const w of result.warnings ?? []) printLine(2, `warning: ${w}`);
  // runningAt is a moment on this process's clock, of use to a caller in it only.
  printLine(1, o.json ? resultJson({ ...result, runningAt: undefined }) : formatRestore(result, o));
  // Like runc restore without --detach: stay until the container stops.
  if (o.container && !o.container.detach) await waitStopped(o.container, signal);
}

/**
 * Polls the runtime until the container is stopped or gone. SIGINT/SIGTERM meanwhile is
 * passed on to the container's init, as `runc run` in the foreground does; ferry then exits
 * once the container has stopped (a second signal exits at once, leaving it running).
 */
async function waitStopped(c: NonNullable<RestoreCliOptions['container']>, signal?: AbortSignal): Promise<void> {
  const { Runtime } = await import('../container/runtime.js');
  const rt = new Runtime(c.runtime, c.root);
  signal?.addEventListener('abort', () => {
    const name = signal.reason instanceof Interrupted ? signal.reason.signalName : 'SIGTERM';
    try {
      rt.run(['kill', c.id, name], `pass ${name} on to container ${c.id}`);
    } catch { /* stopped meanwhile */ }
  }, { once: true });
  for (;;) {
    await new Promise((r) => setTimeout(r, 200));
    try {
      if (rt.state(c.id).status === 'stopped') return;
    } catch {
      return; // deleted
    }
  }
}

/** "restored pid 1234 from /tmp/x.tar: 12.3 MiB of memory, verify 5 ms, restore 9 ms, total 20 ms" */
export function formatRestore(r: RestoreResult, o: Pick<RestoreCliOptions, 'image' | 'container'>): string {
  const tasks = r.pids.length > 1 ? ` (${r.pids.length} processes)` : '';
  const from = o.image === '-' ? 'stdin' : o.image;
  const what = o.container ? `container ${o.container.id} (pid ${r.pid}${tasks})` : `pid ${r.pid}${tasks}`;
  return `restored ${what} from ${from}: ${formatBytes(r.pagesBytes)} of memory, `
    + `verify ${formatMs(r.verifyMs)}, restore ${formatMs(r.restoreMs)}, total ${formatMs(r.totalMs)}`;
}
