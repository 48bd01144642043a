/**
 * ferry-hook: the OCI hook that brings a container up restored from a ferry image when it
 * carries the annotation io.ferry.restore-from=<image> (docs/hooks.md). Run by podman or
 * CRI-O from hooks/ferry-restore.json, or by runc from a config.json's hooks:
 *
 *   precreate  (podman, CRI-O) config.json on stdin -> the restore config on stdout
 *   poststart  state JSON on stdin: starts the detached restorer, returns at once
 *   poststop   state JSON on stdin: stops a restorer still waiting, removes the run directory
 *
 * The stage is told by what stdin holds (a config, or a state with status "stopped" or not),
 * or given as the first argument. Quiet like any hook: the only output is precreate's config;
 * a failure is one line on stderr, the details go to the log.
 */
import { unwindAll } from '../session.js';
import { guardSignals } from '../signals.js';
import { spawn } from 'node:child_process';
import { openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { loadConfig, type Config } from '../config/config.js';
import type { OciConfig } from '../container/checkpoint.js';
import { isEntryPoint } from '../entry.js';
import { FerryError, describeCause, internalCause } from '../errors.js';
import { createLogger } from '../log.js';
import { defaultStubPath } from '../native/binding.js';
import { startTime } from './adopt.js';
import { cleanupContainer, readJob, runRestorer, writeJob } from './restorer.js';
import { boundConfigOf, hookRestoreConfig, restoreImageOf, stageOf, type HookState } from './spec.js';

const WORKER = 'restore-worker';

function loggerFor(config: Config, dir?: string): Logger {
  const file = config.log.file !== '' ? config.log.file : dir !== undefined ? join(dir, 'ferry.log') : '';
  return createLogger({ level: file === '' ? 'silent' : config.log.level, file }).child({ command: 'hook' });
}

export async function main(argv: readonly string[]): Promise<void> {
  const config = loadConfig({});
  if (argv[0] === WORKER) {
    const dir = argv[1]!;
    // SIGINT/SIGTERM abort the restore (the init is killed, nothing half-built runs).
    const guard = guardSignals('ferry-hook');
    try {
      await runRestorer(readJob(dir), config, loggerFor(config, dir), guard.signal);
    } finally {
      guard.dispose();
    }
    return;
  }
  const text = readFileSync(0, 'utf8');
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(text) as Record<string, unknown>;
  } catch (err) {
    throw new FerryError('EUSAGE', 'stdin is not JSON: a hook reads the container\'s config.json (precreate) or its state', { cause: err });
  }
  const stage = stageOf(doc, argv[0]);
  if (stage === 'precreate') {
    const c = doc as OciConfig;
    const ask = restoreImageOf(c.annotations as Record<string, string> | undefined);
    const out = ask === undefined ? c : hookRestoreConfig(c, config.restore.stub || defaultStubPath());
    process.stdout.write(JSON.stringify(out));
    return;
  }
  const state = doc as unknown as HookState;
  if (stage === 'poststop') {
    cleanupContainer(state.id);
    return;
  }
  const image = restoreImageOf(state.annotations);
  if (image === undefined) return;
  const pid = state.pid ?? 0;
  const started = pid > 0 ? startTime(pid) : undefined;
  if (started === undefined) throw new FerryError('ENOPROC', `container ${state.id} has no init process (pid ${pid})`);
  const boundConfig = boundConfigOf(state.annotations);
  const dir = writeJob({ id: state.id, pid, started, image, ...(boundConfig !== undefined ? { boundConfig } : {}) });
  const log = loggerFor(config, dir);
  // Detached, with no descriptor of the runtime's: runc waits for the hook's pipes to close.
  const out = openSync('/dev/null', 'r+');
  const worker = spawn(process.execPath, [fileURLToPath(import.meta.url), WORKER, dir], { detached: true, stdio: [out, out, out] });
  worker.unref();
  const wpid = worker.pid!;
  writeFileSync(join(dir, 'restorer.pid'), String(wpid));
  writeFileSync(join(dir, 'restorer.started'), startTime(wpid) ?? '');
  log.info({ container: state.id, targetPid: pid, image, restorer: wpid }, 'restorer started');
}

/**
 * The hook's one line for a failure (and exit status 1): ferry's own message, or, for a bug,
 * its class or failed call (describeCause: never the engine's words) and that it is one.
 */
function report(err: unknown): never {
  unwindAll(); // let go of whatever a restore holds (src/session.ts)
  const own = err instanceof FerryError ? err.message.replace(/\s*\n\s*/g, ' ').trim() : describeCause(err);
  const bug = internalCause(err) !== undefined ? '; this is a bug in ferry, please report it' : '';
  process.stderr.write(`ferry-hook: ${own}${bug}\n`);
  process.exit(1);
}

/** For the build's code cache (cli/start.cts): compiles the engine's functions (warm-up.ts). */
export { warmUpEngine as warmUp } from '../warm-up.js';

/**
 * Runs the hook as the program: `main` on the process's arguments, then exits. Called below
 * when this module is the one node was started with (the launcher's dist/src, or the restore
 * worker started from it), and by the code-cached start (cli/start.cts) of hooks/ferry-hook.
 */
export function entryPoint(): void {
  process.on('uncaughtException', report);
  process.on('unhandledRejection', report);
  main(process.argv.slice(2)).then(() => process.exit(0), report);
}

if (isEntryPoint(import.meta.url)) entryPoint();
