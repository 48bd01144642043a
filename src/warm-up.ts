/**
 * What the build runs in each program's bundle before it writes the bundle's code cache
 * (cli/start.cts makeCodeCache): the built-in demo, a real checkpoint and restore of a small
 * process (cli/demo.ts), so that the engine's functions are compiled and kept in the cache.
 * Without it every checkpoint or restore compiles them on their first call, inside its run
 * and much of it inside the frozen window. Each program bundles the engine on its own
 * (ferry, ferry-runtime, criu, the hook), so each runs it. The log goes nowhere; the demo's
 * narration goes to the build's log (dist/code-cache.log). It needs root and ptrace: without
 * them it fails, and the cache is made without it.
 *
 * The `ferry` program also migrates a small process to itself over loopback (warmUpMigration):
 * pre-copy, the frozen image with held pages, the receiver and a lazy restore are engine code
 * the demo does not run, and a long-lived `ferry receive` otherwise compiles them inside its
 * first migration's downtime (tens of ms).
 */
import { loadConfig } from './config/config.js';
import { silentLogger } from './log-silent.js';

/** Runs the demo in this process; rejects when it could not run (not root, no ptrace...). */
export async function warmUpEngine(): Promise<void> {
  const { runDemo } = await import('./cli/demo.js');
  await runDemo({ json: false }, { config: loadConfig({}), logger: silentLogger, logFile: '' }, () => undefined);
}

/** The migration's warm-up (warm-up-migration.ts), imported only when it runs. */
export async function warmUpMigration(): Promise<void> {
  const { migrateToSelf } = await import('./warm-up-migration.js');
  // Imported here: node:v8 loads node:stream, which a light command never needs.
  const { restoreDefaultFlags } = await import('./gc.js');
  try {
    await migrateToSelf();
  } finally {
    // The sender changed V8's flags (gc.ts), which the code cache written next is checked
    // against: every ferry would refuse it.
    restoreDefaultFlags();
  }
}
