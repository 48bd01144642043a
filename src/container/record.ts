/** The container entry of an image (docs/image-format.md). */
import type { OciConfig } from './checkpoint.js';
import type { ContainerClocks } from './clocks.js';

/** Image entry describing the container the tree came from. */
export const CONTAINER_ENTRY = 'container.json';

export interface ContainerRecord {
  /** Container id at checkpoint. */
  id: string;
  /** Runtime name as given ('runc', 'crun' or a path). */
  runtime: string;
  /** Bundle directory and rootfs at checkpoint. */
  bundle: string;
  rootfs: string;
  /** The bundle's config.json at checkpoint. */
  config: OciConfig;
  /** Which freezer was used: 'v1' or 'v2'. */
  cgroup: 'v1' | 'v2';
  /**
   * CLOCK_MONOTONIC and CLOCK_BOOTTIME as the container saw them when it was frozen
   * (clocks.ts): restore gives it a time namespace that goes on from there. Absent without
   * time namespaces.
   */
  clocks?: ContainerClocks;
}
