/**
 * A checkpoint hashes a big tree's pages on libuv's thread pool (HashPool in
 * src/image/writer.ts, native sha256Update), not on Node worker threads: starting a worker
 * (an isolate of its own) cost 40-90 ms of the checkpoint before the freeze, a third of a
 * 64 MiB checkpoint's time, and one more for the second core's hashing came up while the tree
 * was frozen. So a tree with more than 8 MiB of memory, which gets the hash pool, has ferry
 * run no more event loops when it pauses at `seized` (every thread of the tree stopped,
 * nothing read yet, src/fault.ts) than a tree under 8 MiB, which hashes on the JS thread.
 *
 * A Node worker is one more thread with an event loop of its own (its own epoll instance), so
 * it would show in /proc/PID/fd of ferry; libuv's thread pool adds threads but no epoll
 * instance.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs } from '../helpers/env.js';
import { askVerdict, cleanup, procState, startWorkload, waitFor } from '../helpers/processes.js';
import { abort, MEMCHECK, whilePaused, type Problems } from './helpers.js';

const skip = needs('root', 'build') || (existsSync(MEMCHECK) ? false : `needs ${MEMCHECK} ('npm run build')`);
after(cleanup);

/** What ferry (`pid`) runs: its threads and its epoll instances (one per event loop). */
function ferryShape(pid: number): { threads: number; eventpolls: number } {
  const fds = readdirSync(`/proc/${pid}/fd`).map((f) => { try { return readlinkSync(`/proc/${pid}/fd/${f}`); } catch { return ''; } });
  return { threads: readdirSync(`/proc/${pid}/task`).length, eventpolls: fds.filter((l) => l === 'anon_inode:[eventpoll]').length };
}

/** RssAnon of `pid` in bytes (what the checkpoint's estimate counts, with RssShmem and VmSwap). */
function rssAnon(pid: number): number {
  return Number(/^RssAnon:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) * 1024;
}

/**
 * Checkpoints a memcheck of `mib` MiB with ferry paused at `seized`, and returns what ferry runs
 * there; then ferry is stopped (SIGTERM) and the workload must run on intact.
 */
async function pausedAtSeized(mib: number): Promise<{ threads: number; eventpolls: number; rss: number }> {
  const w = await startWorkload(MEMCHECK, [String(mib), 'one']);
  const rss = rssAnon(w.pid);
  const p: Problems = [];
  let shape: { threads: number; eventpolls: number } | undefined;
  await whilePaused(p, ['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'image.tar')], 'seized', async (run) => {
    const st = procState(w.pid);
    assert.equal(st.tracer, run.pid, 'the tree is seized by ferry');
    assert.equal(st.state, 't', 'and stopped');
    shape = ferryShape(run.pid);
    await abort(p, run, 'SIGTERM');
  });
  assert.deepEqual(p, [], 'ferry paused at seized, and let the tree go when stopped');
  await waitFor('the tree to be let go', () => procState(w.pid).tracer === 0);
  assert.equal(await askVerdict(w.pid, w.text), 'PASS', 'the tree runs on intact');
  return { ...shape!, rss };
}

describe('the hash pool', { skip, timeout: 120_000 }, () => {
  it('starts no worker thread: a tree over 8 MiB frozen has ferry run no more event loops than a tree under', async () => {
    const small = await pausedAtSeized(2);
    const big = await pausedAtSeized(24);
    assert.ok(small.rss < 8 << 20, `the small tree is under 8 MiB (${small.rss} bytes)`);
    assert.ok(big.rss > 8 << 20, `the big tree is over 8 MiB (${big.rss} bytes)`);
    // A worker would be one more event loop (libuv's thread pool adds threads but no epoll
    // instance).
    assert.equal(big.eventpolls, small.eventpolls, `epoll instances of ferry at seized: ${small.eventpolls} and ${big.eventpolls}`);
  });
});
