/**
 * A lane of a ChunkLoader (chunks.ts), on a worker thread of its own, started with RingData
 * (workerData): it reads and hashes chunks of an image on requests from shared memory, blocked
 * in Atomics.wait between them, and takes no messages. (The image writer hashes on libuv's
 * thread pool instead: writer.ts HashPool.)
 */
import { workerData } from 'node:worker_threads';
import { serveRing, type RingData } from './chunks.js';

const ring = (workerData as Partial<RingData> | null)?.ring;
if (ring !== undefined) serveRing({ ring });
