/** What the CLI prints on success: sizes, durations, the result lines and the progress line. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { formatCheckpoint } from '../../src/cli/checkpoint.js';
import { helpPage, HELP } from '../../src/cli/help.js';
import { formatBytes, formatMs, formatProgress, progressLine } from '../../src/cli/output.js';
import { formatRestore } from '../../src/cli/restore.js';
import { formatRound } from '../../src/cli/migrate.js';
import { CHECKPOINT_USAGE, RESTORE_USAGE } from '../../src/runtime/args.js';

describe('CLI output', { timeout: 30_000 }, () => {
  it('formats sizes and durations for people', () => {
    assert.equal(formatBytes(0), '0 bytes');
    assert.equal(formatBytes(1023), '1023 bytes');
    assert.equal(formatBytes(3584), '3.5 KiB');
    assert.equal(formatBytes(12.3 * 1048576), '12.3 MiB');
    assert.equal(formatBytes(1.25 * 1073741824), '1.25 GiB');
    assert.equal(formatMs(8.4), '8 ms');
    assert.equal(formatMs(39.6), '40 ms');
  });

  it('prints the checkpoint result as one sentence', () => {
    const r = { pids: [1234], imageBytes: 12.3 * 1048576, pagesBytes: 12 * 1048576, frozenMs: 8.2, totalMs: 40.4 };
    assert.equal(formatCheckpoint(r, { pid: 1234, image: '/tmp/x.tar', leaveRunning: false }),
      'checkpointed pid 1234 to /tmp/x.tar: 12.3 MiB, frozen 8 ms, total 40 ms');
    assert.equal(formatCheckpoint(r, { pid: 1234, image: '-', leaveRunning: true }),
      'checkpointed pid 1234 to stdout: 12.3 MiB, frozen 8 ms, total 40 ms; left running');
    assert.equal(formatCheckpoint({ ...r, pids: [1234, 1235, 1236] }, { pid: 1234, image: 'a', leaveRunning: false }),
      'checkpointed pid 1234 (3 processes) to a: 12.3 MiB, frozen 8 ms, total 40 ms');
    // The wait for the killed processes' reaping, named once it is worth it.
    assert.equal(formatCheckpoint({ ...r, reapWaitMs: 0.4 }, { pid: 1234, image: 'a', leaveRunning: false }),
      'checkpointed pid 1234 to a: 12.3 MiB, frozen 8 ms, total 40 ms');
    assert.equal(formatCheckpoint({ ...r, totalMs: 1540.2, reapWaitMs: 1498.6 }, { pid: 1234, image: 'a', leaveRunning: false }),
      'checkpointed pid 1234 to a: 12.3 MiB, frozen 8 ms, total 1540 ms (1499 ms of it waiting for the killed processes to be reaped)');
  });

  it('prints the restore result as one sentence', () => {
    const r = { pid: 1234, pids: [1234], hostPids: { 1234: 1234 }, pagesBytes: 12.3 * 1048576, verifyMs: 5, restoreMs: 9.4, totalMs: 20, runningAt: 1000 };
    assert.equal(formatRestore(r, { image: '/tmp/x.tar' }),
      'restored pid 1234 from /tmp/x.tar: 12.3 MiB of memory, verify 5 ms, restore 9 ms, total 20 ms');
    assert.equal(formatRestore(r, { image: '-' }),
      'restored pid 1234 from stdin: 12.3 MiB of memory, verify 5 ms, restore 9 ms, total 20 ms');
  });

  it('renders progress, and shows none when stderr is not a terminal', () => {
    assert.equal(formatProgress({ phase: 'write', done: 3 * 1048576, total: 12 * 1048576 }), 'write: 25% 3.0 MiB of 12.0 MiB');
    assert.equal(formatProgress({ phase: 'verify', done: 512 }), 'verify: 512 bytes');
    const off = progressLine(false);
    assert.equal(off.onProgress, undefined);
    off.clear();
  });

  it('shows a pre-copy round on the progress line, with the dirty rate and the predicted downtime', () => {
    assert.equal(formatRound({ round: 1, pages: 16384, bytes: 64 << 20, dirtyRate: 0, ms: 800 }, 0), 'pre-copy round 1: 64.0 MiB in 800 ms');
    assert.equal(formatRound({ round: 3, pages: 256, bytes: 1 << 20, dirtyRate: 10 << 20, ms: 40 }, (66 << 20) / 1000),
      'pre-copy round 3: 1.0 MiB in 40 ms, dirty 10.0 MiB/s, predicted downtime ~15 ms + the frozen dump');
    assert.equal(formatProgress({ phase: 'pre-copy', done: 1, text: 'pre-copy round 2: 1.0 MiB in 40 ms' }), 'pre-copy round 2: 1.0 MiB in 40 ms');
  });

  it('has a page for every command, and the overview for help', () => {
    for (const topic of ['checkpoint', 'restore', 'inspect', 'demo', 'version'] as const) {
      assert.equal(helpPage(topic), HELP[topic]);
      assert.match(helpPage(topic), new RegExp(`^NAME\\n {2}ferry ${topic} - `));
    }
    assert.equal(helpPage(undefined), HELP.ferry);
    assert.equal(helpPage('help'), HELP.ferry);
    // Every line fits an 80-column terminal.
    for (const [topic, page] of Object.entries(HELP)) {
      for (const line of page.split('\n')) assert.ok(line.length <= 80, `${topic}: ${line}`);
    }
    // ferry-runtime's pages too.
    for (const [topic, page] of Object.entries({ checkpoint: CHECKPOINT_USAGE, restore: RESTORE_USAGE })) {
      for (const line of page.split('\n')) assert.ok(line.length <= 80, `ferry-runtime ${topic}: ${line}`);
    }
  });
});
