/**
 * The watchdog (native/helpers/watchdog.c): a small detached process that undoes one step if
 * ferry dies before undoing or finishing it itself, for the steps the kernel does not undo —
 * a frozen cgroup (`write FILE VALUE`), a container created in a runtime (`exec runc delete`),
 * the TCP sockets a checkpoint reads in repair mode (`sockets`, fed as it goes: armFedWatchdog).
 * See docs/safety.md.
 */
import { closeSync, existsSync, readSync, writeSync } from 'node:fs';
import { describeCause, FerryError } from './errors.js';
import { native, watchdogPath, type NativeBinding } from './native/binding.js';

/** An armed watchdog. */
export interface Watchdog {
  /** Tells it ferry dealt with the step itself: it exits without doing anything (idempotent). */
  disarm(): void;
}

/** An armed watchdog that is told what to guard as ferry goes (the `sockets` mode). */
export interface FedWatchdog extends Watchdog {
  /**
   * Writes `line` (and a newline) on its stdin, synchronously: once this returns, the line is
   * the kernel's to deliver, even if ferry dies the next instant.
   */
  send(line: string): void;
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

const WNOHANG = 1;

/**
 * Collects the exit of the watchdog `pid` (ferry's child, which Node does not know: see
 * startWatchdog) once it comes, polling without holding the event loop open; a ferry that
 * exits first leaves it to init.
 */
function reap(pid: number): void {
  let tries = 0;
  const poll = (): boolean => {
    try {
      return native().waitpid(pid, WNOHANG) !== null;
    } catch {
      return true; // not ours any more, or collected
    }
  };
  if (poll()) return;
  const timer = setInterval(() => { if (poll() || ++tries > 6000) clearInterval(timer); }, 5);
  timer.unref();
}

/**
 * Starts a watchdog with `args` (`['write', FILE, VALUE]`, `['kill', PID...]` or
 * `['exec', PROGRAM, ...ARGS]`) and returns at once: its start-up overlaps the caller's work.
 * `what` names the step's object in an error. `hold`: descriptors of ferry's it keeps open
 * until it exits — a `kill` watchdog only after its victims are dead (lazy pages hand it
 * their userfaultfds, restore/lazy.ts).
 *
 * It is started by native spawnDetached (posix_spawn's way, in a session of its own, so a
 * Ctrl-C sent to ferry's process group does not reach it): a child_process spawn forks Node
 * whole, 1-5 ms here, the biggest single cost of restoring a small process. Its stdin is a
 * pipe whose only write end ferry holds (EOF: ferry died); it says "armed" (or why not) on
 * its stdout and stderr, one pipe, which ferry reads without blocking.
 */
export function startWatchdog(args: readonly string[], what: string, hold: readonly number[] = []): StartingWatchdog {
  const path = watchdogPath();
  if (!existsSync(path)) throw new FerryError('ENOSTUB', `the watchdog ${path} is missing: run 'npm run build'`);
  let child: ReturnType<NativeBinding['spawnDetached']>;
  try {
    child = native().spawnDetached(path, args, hold);
  } catch (err) {
    throw new FerryError('EWATCHDOG', `cannot start the watchdog for ${what}: ${describeCause(err)}: nothing was touched`, { cause: err });
  }
  let stdin = child.stdin;
  let stdout = child.stdout;
  let text = '';
  /** What it said so far: 'armed', 'exited' (its end of the pipe closed) or 'waiting'. */
  const state = (): 'armed' | 'exited' | 'waiting' => {
    const buf = Buffer.alloc(4096);
    for (;;) {
      let got: number;
      try {
        got = readSync(stdout, buf);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EAGAIN') break;
        throw err;
      }
      if (got === 0) return text.includes('armed') ? 'armed' : 'exited';
      text += buf.toString('utf8', 0, got);
    }
    return text.includes('armed') ? 'armed' : 'waiting';
  };
  const close = (): void => {
    if (stdout >= 0) closeSync(stdout);
    if (stdin >= 0) closeSync(stdin);
    stdout = stdin = -1;
  };
  const kill = (): void => {
    close();
    try { process.kill(child.pid, 'SIGKILL'); } catch { /* gone */ }
    reap(child.pid);
  };
  return {
    async armed(): Promise<Watchdog> {
      try {
        // Read without a stream (its set-up costs a first restore about 1 ms): by the time a
        // restore asks, it has said "armed" long ago; else polled every millisecond.
        for (const end = performance.now() + 5000; ;) {
          const s = state();
          if (s === 'armed') break;
          if (s === 'exited') throw new Error(text.trim() || 'it exited');
          if (performance.now() > end) throw new Error('it did not arm within 5 s');
          await new Promise((r) => setTimeout(r, 1));
        }
      } catch (err) {
        kill();
        throw new FerryError('EWATCHDOG', `cannot start the watchdog for ${what}: ${err instanceof Error ? err.message : String(err)}: nothing was touched`, { cause: err });
      }
      closeSync(stdout);
      stdout = -1;
      let disarmed = false;
      const armed: FedWatchdog = {
        // Only a watchdog that reads lines is sent any (armFedWatchdog): to the others any byte
        // but "d" means that ferry is gone.
        send(line: string) {
          if (disarmed) throw new Error('a line for a disarmed watchdog');
          try {
            writeSync(stdin, `${line}\n`);
          } catch (err) {
            throw new FerryError('EWATCHDOG', `the watchdog for ${what} exited before ferry was done (${describeCause(err)}): nothing more was changed`, { cause: err });
          }
        },
        disarm() {
          if (disarmed) return;
          disarmed = true;
          if (stdin < 0) return; // abandoned (killed) before
          try {
            writeSync(stdin, 'd');
          } catch { /* it exited: nothing to disarm */ }
          closeSync(stdin);
          stdin = -1;
          reap(child.pid);
        },
      };
      return armed;
    },
    abandon() {
      if (stdin >= 0) kill();
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

/**
 * Starts a watchdog that reads lines (`['sockets']`) and resolves once it is armed; bounded
 * to 5 s. Its stdin is written synchronously (FedWatchdog.send).
 */
export async function armFedWatchdog(args: readonly string[], what: string): Promise<FedWatchdog> {
  return (await startWatchdog(args, what).armed()) as FedWatchdog;
}
