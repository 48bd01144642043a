/**
 * The library API shared by the CLI, the OCI hook and the runtime wrapper.
 * The library never reads argv or the environment: everything comes in through these options.
 */
import type { Logger } from 'pino';
import type { Config } from './config/config.js';
import type { FileOptions } from './files/types.js';

export type { FileOptions };

/** Progress of a long operation, for a progress line on a TTY or JSON events. */
export interface Progress {
  /** Phase name: 'freeze', 'collect', 'memory', 'write', 'verify', 'restore', ... */
  phase: string;
  /** Bytes (or items) done so far in this phase. */
  done: number;
  /** Total for this phase, when known. */
  total?: number;
}

/** Options shared by every operation. */
export interface CommonOptions {
  /** Validated configuration (defaults applied). */
  config: Config;
  /** Logger; operations derive child loggers from it. */
  logger: Logger;
  /** Called now and then during long work. */
  onProgress?: (p: Progress) => void;
}

export interface CheckpointOptions extends CommonOptions {
  /** Root of the process tree to checkpoint. */
  pid: number;
  /** Image path; '-' streams the tar to stdout. */
  image: string;
  /** Keep the process running after the dump instead of killing it. */
  leaveRunning: boolean;
  /** What file kinds may do beyond the defaults (runc's --tcp-established etc.); all off if absent. */
  files?: Partial<FileOptions>;
  /** Extra JSON entries for the image (a container's configuration), written after files.json. */
  extraEntries?: ReadonlyArray<{ name: string; value: unknown }>;
  /**
   * The pid namespace the tree may live in (a container's), as readlink(/proc/PID/ns/pid)
   * shows it; absent: ferry's own. Processes of the tree in any other one are refused.
   */
  pidNamespace?: string;
}

export interface CheckpointResult {
  /** PIDs of the dumped tasks, root first. */
  pids: number[];
  /** Bytes of the image written. */
  imageBytes: number;
  /** Bytes of memory pages stored. */
  pagesBytes: number;
  /** Time the tasks were stopped, milliseconds. */
  frozenMs: number;
  /** Whole checkpoint, milliseconds. */
  totalMs: number;
}

export interface RestoreOptions extends CommonOptions {
  /** Image path; '-' reads the tar from stdin. */
  image: string;
  /** Write the restored root's PID here. */
  pidFile?: string;
  /** What file kinds may do beyond the defaults; all off if absent. */
  files?: Partial<FileOptions>;
}

export interface RestoreResult {
  /** PID of the restored root (the original PID). */
  pid: number;
  /** PIDs of all restored tasks. */
  pids: number[];
  /** Bytes of memory pages written into the restored tasks. */
  pagesBytes: number;
  /** Verification of the image, milliseconds. */
  verifyMs: number;
  /** From the first process created to the tasks running, milliseconds. */
  restoreMs: number;
  /** Whole restore, milliseconds. */
  totalMs: number;
}

export interface InspectOptions extends CommonOptions {
  /** Image path; '-' reads the tar from stdin. */
  image: string;
}
