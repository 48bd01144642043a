/**
 * The watchdog (native/helpers/watchdog.c): a small detached process that undoes one step if
 * ferry dies before undoing or finishing it itself, for the steps the kernel does not undo —
 * a frozen cgroup (`write FILE VALUE`), a container created in a runtime (`exec runc delete`).
 * See docs/safety.md.
 */
import { spawn } from 'node:child_process';
import { closeSync, existsSync, writeSync } from 'node:fs';
import { FerryError } from './errors.js';
import { native, watchdogPath } from './native/binding.js';

/** An armed watchdog. */
export interface Watchdog {
  /** Tells it ferry dealt with the step itself: it exits without doing anything (idempotent). */
  disarm(): void;
}

/** A watchdog started but not yet known to be armed (startWatchdog). */
export interface StartingWatchdog {
  /**
   * Resolves once it is armed (it holds a pidfd of ferry, and what it needs to act), waiting
   * at most 5 s from this call: a caller that blocks the event loop meanwhile (a long
   * restore) is not held against it. FerryError EWATCHDOG otherwise, the watchdog killed.
   */
  armed(): Promise<Watchdog>;
  /** Stops it without acting (its step was undone another way): kills it. Idempotent. */
  abandon(): void;
}

/**
 * Starts a watchdog with `args` (`['write', FILE, VALUE]`, `['kill', PID...]` or
 * `['exec', PROGRAM, ...ARGS]`) and returns at once: its start-up overlaps the caller's work.
 * `what` names the step's object in an error. `hold`: descriptors of ferry's it keeps open
 * until it exits — a `kill` watchdog only after its victims are dead (lazy pages hand it
 * their userfaultfds, restore/lazy.ts).
 */
export function startWatchdog(args: readonly string[], what: string, hold: readonly number[] = []): StartingWatchdog {
  return spawnWatchdog(args, what, hold);
}

/** An armed watchdog that is told what to guard as ferry goes (the `sockets` mode). */
export interface FedWatchdog extends Watchdog {
  /**
   * Writes `line` (and a newline) on its stdin, synchronously: once this returns, the line is
   * the kernel's to deliver, even if ferry dies the next instant.
   */
  send(line: string): void;
}

/**
 * Starts a watchdog with `args` whose stdin is a pipe written synchronously (FedWatchdog.send)
 * rather than through the event loop, and resolves once it is armed.
 */
export async function armFedWatchdog(args: readonly string[], what: string): Promise<FedWatchdog> {
  const [readEnd, writeEnd] = native().pipe2();
  let starting: StartingWatchdog;
  try {
    starting = spawnWatchdog(args, what, [], readEnd, writeEnd);
  } catch (err) {
    closeSync(writeEnd);
    throw err;
  } finally {
    closeSync(readEnd);
  }
  return (await starting.armed()) as FedWatchdog;
}

/**
 * startWatchdog, with `stdin` (a pipe's read end, whose write end `feed` ferry keeps and
 * writes synchronously) instead of a pipe of the event loop's.
 */
function spawnWatchdog(args: readonly string[], what: string, hold: readonly number[], stdin?: number, feed?: number): StartingWatchdog {
  const path = watchdogPath();
  if (!existsSync(path)) throw new FerryError('ENOSTUB', `the watchdog ${path} is missing: run 'npm run build'`);
  // Detached: a Ctrl-C sent to ferry's process group must not reach it. `hold`: descriptors
  // it keeps open (as its 3, 4, …) until it exits.
  const child = spawn(path, args, { stdio: [stdin ?? 'pipe', 'pipe', 'pipe', ...hold], detached: true });
  let feedOpen = feed !== undefined;
  const closeFeed = (): void => {
    if (!feedOpen) return;
    feedOpen = false;
    closeSync(feed!);
  };
  let stderr = '';
  let out = '';
  let exited = false;
  let failure: Error | undefined;
  const waiters: Array<() => void> = [];
  const wake = (): void => { for (const w of waiters.splice(0)) w(); };
  child.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
  child.stdout!.on('data', (d: Buffer) => { out += d.toString(); wake(); });
  child.stdin?.on('error', () => { /* it exited: nothing to disarm */ });
  child.on('error', (err) => { failure = err; wake(); });
  child.on('exit', () => { exited = true; wake(); });
  return {
    async armed(): Promise<Watchdog> {
      try {
        await new Promise<void>((resolve, reject) => {
          const check = (): boolean => {
            if (out.includes('armed')) resolve();
            else if (failure) reject(failure);
            else if (exited) reject(new Error(stderr.trim() || 'it exited'));
            else return false;
            return true;
          };
          if (check()) return;
          const timer = setTimeout(() => reject(new Error('it did not arm within 5 s')), 5000);
          waiters.push(function again() {
            if (check()) clearTimeout(timer);
            else waiters.push(again);
          });
        });
      } catch (err) {
        child.kill('SIGKILL');
        closeFeed();
        throw new FerryError('EWATCHDOG', `cannot start the watchdog for ${what}: ${err instanceof Error ? err.message : String(err)}: nothing was touched`, { cause: err });
      }
      return feed !== undefined ? fedWatchdog(child, feed, closeFeed) : armedWatchdog(child);
    },
    abandon() {
      if (!exited) child.kill('SIGKILL');
      closeFeed();
    },
  };
}

/**
 * Starts a watchdog with `args` and resolves once it is armed; bounded to 5 s. `what` names
 * the step's object in an error.
 */
export async function armWatchdog(args: readonly string[], what: string): Promise<Watchdog> {
  return startWatchdog(args, what).armed();
}

/** The handle of an armed watchdog `child`. */
function armedWatchdog(child: ReturnType<typeof spawn>): Watchdog {
  child.stdout!.destroy();
  child.stderr!.destroy();
  child.unref();
  let disarmed = false;
  return {
    disarm() {
      if (disarmed) return;
      disarmed = true;
      child.stdin!.end('d');
    },
  };
}

/** The handle of an armed watchdog `child` whose stdin ferry writes through `feed`. */
function fedWatchdog(child: ReturnType<typeof spawn>, feed: number, closeFeed: () => void): FedWatchdog {
  child.stdout!.destroy();
  child.stderr!.destroy();
  child.unref();
  let disarmed = false;
  return {
    send(line: string) {
      if (disarmed) throw new Error('a line for a disarmed watchdog');
      try {
        writeSync(feed, `${line}\n`);
      } catch (err) {
        throw new FerryError('EWATCHDOG', `the watchdog exited before ferry was done (${err instanceof Error ? err.message : String(err)}): nothing more was changed`, { cause: err });
      }
    },
    disarm() {
      if (disarmed) return;
      disarmed = true;
      try {
        writeSync(feed, 'd\n');
      } catch { /* it is gone: nothing to disarm */ }
      closeFeed();
    },
  };
}
