/**
 * Ferry's library entry points. The CLI, the OCI hook and the runtime wrapper all call these.
 */
export type {
  CheckpointOptions, CheckpointResult, RestoreOptions, RestoreResult, InspectOptions, Progress,
} from './api.js';
export { checkpoint } from './dump/checkpoint.js';
export { restore } from './restore/restore.js';
export { inspect } from './image/inspect.js';
export { FerryError } from './errors.js';
