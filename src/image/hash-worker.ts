/**
 * A worker thread that computes sha256 of entries whose chunks live in SharedArrayBuffers, so
 * hashing runs on the second core while the JS thread reads the next chunk and the libuv pool
 * writes the previous one. Messages are handled in order; each is answered when done. Once
 * its handler is installed it says so (`{ ready: true }`): HashPool.start() waits for that, so
 * a checkpoint can have the thread running before it stops the tree (writer.ts).
 *
 * Started with RingData (workerData), it is a lane of a ChunkLoader instead (chunks.ts): it
 * reads and hashes chunks of an image on requests from shared memory, blocked in Atomics.wait
 * between them, and takes no messages.
 */
import { createHash, type Hash } from 'node:crypto';
import { parentPort, workerData } from 'node:worker_threads';
import { serveRing, type RingData } from './chunks.js';

export type HashRequest =
  | { op: 'update'; seq: number; id: number; sab: SharedArrayBuffer; offset: number; length: number }
  | { op: 'digest'; seq: number; id: number };

const ring = (workerData as Partial<RingData> | null)?.ring;
const hashes = new Map<number, Hash>();
if (ring !== undefined) serveRing({ ring });
else parentPort?.on('message', (m: HashRequest) => {
  let h = hashes.get(m.id);
  if (!h) hashes.set(m.id, (h = createHash('sha256')));
  if (m.op === 'update') {
    h.update(new Uint8Array(m.sab, m.offset, m.length));
    parentPort!.postMessage({ seq: m.seq });
  } else {
    hashes.delete(m.id);
    parentPort!.postMessage({ seq: m.seq, digest: h.digest('hex') });
  }
});
if (ring === undefined) parentPort?.postMessage({ ready: true });
