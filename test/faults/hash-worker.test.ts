/**
 * The hash worker is started before the tree is frozen (src/dump/checkpoint.ts, HashPool in
 * src/image/writer.ts), and only for a tree with more than 8 MiB of memory: starting a thread
 * costs tens of milliseconds that would otherwise be spent with the tree stopped. writeImage
 * never starts one itself, so a worker that runs when ferry pauses at `seized` (every thread of
 * the tree stopped, nothing read yet, src/fault.ts) was started before the freeze.
 *
 * A Node worker is one more thread with an event loop of its own (its own epoll instance), so
 * it shows in /proc/PID/task and /proc/PID/fd of ferry. The control is the same workload under
 * 8 MiB, paused at the same point: the one more epoll instance is the worker (libuv's thread
 * pool, which only a big image's writes start, adds threads but no epoll instance).
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

describe('the hash worker', { skip, timeout: 120_000 }, () => {
  it('runs when the tree is frozen, for a tree over 8 MiB only: one more thread, with an event loop of its own, than for a tree under', async () => {
    const small = await pausedAtSeized(2);
    const big = await pausedAtSeized(24);
    assert.ok(small.rss < 8 << 20, `the small tree is under 8 MiB (${small.rss} bytes)`);
    assert.ok(big.rss > 8 << 20, `the big tree is over 8 MiB (${big.rss} bytes)`);
    // The worker is the one more event loop (libuv's thread pool, which a big image's writes
    // use and a small one's do not, adds threads but no epoll instance).
    assert.equal(big.eventpolls, small.eventpolls + 1, `epoll instances of ferry at seized: ${small.eventpolls} and ${big.eventpolls}`);
    assert.ok(big.threads >= small.threads + 1, `threads of ferry at seized: ${small.threads} for the small tree, ${big.threads} for the big one`);
  });
});
