/**
 * The contract every file kind module implements (one module per kind, dump and open side by
 * side; DESIGN.md §4). The registry (registry.ts) maps descriptors to modules; collect.ts
 * groups descriptors into open files; install.ts is the restore scheduler.
 */
import type { BigIntStats } from 'node:fs';
import type { FileRecord } from '../image/records.js';
import type { Fdinfo } from '../proc/fdinfo.js';

/** What the engine knows about one descriptor of one task before asking a module. */
export interface FdDesc {
  /** Task (thread-group) id. */
  pid: number;
  fd: number;
  /** readlink(/proc/PID/fd/FD): a path, 'pipe:[123]', 'socket:[456]', 'anon_inode:[eventfd]'… */
  link: string;
  /** stat(/proc/PID/fd/FD): the file behind the descriptor. */
  stat: BigIntStats;
  /** Parsed /proc/PID/fdinfo/FD. */
  fdinfo: Fdinfo;
}

/** Returned by `open` when the file cannot be created yet (waits for another file). */
export const NOT_YET = Symbol('not-yet');

/** What a module's `open` gets from the restore scheduler. */
export interface OpenContext {
  /** Controller descriptor of a file already opened by the scheduler, if it is. */
  opened(fileId: number): number | undefined;
}

/** One file kind: `kind` is stored in the image and names the module on restore. */
export interface FileKind<R extends FileRecord = FileRecord> {
  /** Kind name, as the kernel names the object: 'reg', 'dir', 'chr', 'pipe', 'unix', 'eventfd'… */
  readonly kind: string;
  /** Whether this module handles the descriptor. */
  matches(fd: FdDesc): boolean;
  /**
   * A cheap identity key: descriptors with different keys are never the same open file;
   * equal keys are confirmed with kcmp(KCMP_FILE).
   */
  key(fd: FdDesc): string;
  /** Dumps the open file behind `fd` (every descriptor in its group shares it). */
  dump(fd: FdDesc): Omit<R, 'id' | 'kind'>;
  /**
   * Checks before any process is created that `record` can be opened here (file exists,
   * same device numbers…); throws a FerryError naming the file otherwise.
   */
  check?(record: R): void;
  /**
   * Creates the open file in the controller and returns its descriptor, or NOT_YET when it
   * depends on files not opened yet (the scheduler retries).
   */
  open(record: R, ctx: OpenContext): number | typeof NOT_YET;
}
