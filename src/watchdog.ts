/**
 * The watchdog (native/helpers/watchdog.c): a small detached process that undoes one step if
 * ferry dies before undoing or finishing it itself, for the steps the kernel does not undo —
 * a frozen cgroup (`write FILE VALUE`), a container created in a runtime (`exec runc delete`).
 * See docs/safety.md.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { FerryError } from './errors.js';
import { watchdogPath } from './native/binding.js';

/** An armed watchdog. */
export interface Watchdog {
  /** Tells it ferry dealt with the step itself: it exits without doing anything (idempotent). */
  disarm(): void;
}

/**
 * Starts a watchdog with `args` (`['write', FILE, VALUE]` or `['exec', PROGRAM, ...ARGS]`) and
 * resolves once it is armed (it holds a pidfd of ferry, and the control file open in write
 * mode); bounded to 5 s. `what` names the step's object in an error.
 */
export async function armWatchdog(args: readonly string[], what: string): Promise<Watchdog> {
  const path = watchdogPath();
  if (!existsSync(path)) throw new FerryError('ENOSTUB', `the watchdog ${path} is missing: run 'npm run build'`);
  // Detached: a Ctrl-C sent to ferry's process group must not reach it.
  const child = spawn(path, args, { stdio: ['pipe', 'pipe', 'pipe'], detached: true });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
  child.stdin.on('error', () => { /* it exited: nothing to disarm */ });
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('it did not arm within 5 s')), 5000);
      child.stdout.on('data', (d: Buffer) => {
        if (d.toString().includes('armed')) {
          clearTimeout(timer);
          resolve();
        }
      });
      child.on('error', (err) => { clearTimeout(timer); reject(err); });
      child.on('exit', () => { clearTimeout(timer); reject(new Error(stderr.trim() || 'it exited')); });
    });
  } catch (err) {
    child.kill('SIGKILL');
    throw new FerryError('EWATCHDOG', `cannot start the watchdog for ${what}: ${err instanceof Error ? err.message : String(err)}: nothing was touched`, { cause: err });
  }
  child.stdout.destroy();
  child.stderr.destroy();
  child.unref();
  let disarmed = false;
  return {
    disarm() {
      if (disarmed) return;
      disarmed = true;
      child.stdin.end('d');
    },
  };
}
