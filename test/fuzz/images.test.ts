/**
 * Images are untrusted input (issue 14): a seeded fuzzer restores thousands of damaged and
 * edited variants of real images (test/fuzz/mutate.ts lists the families) and holds each to
 * the contract: a clean refusal (one line, a FerryError with a known code, never EINTERNAL
 * nor the engine's words) or a restore whose process is checked, killed and reaped; a canary
 * directory outside everything never changes; nothing is left running; nothing hangs.
 *
 * The fuzzer runs in a child (worker.ts), made a child subreaper (prctl PR_SET_CHILD_SUBREAPER,
 * which execve keeps) so that every process a restore makes, orphaned or not, comes back to
 * it to be reaped and counted. A restore runs synchronous native code: a hang there cannot be
 * timed out from inside, so this test watches the worker's progress lines and kills it when
 * one variant takes longer than VARIANT_S, naming the seed and the variant.
 *
 * FERRY_FUZZ_SEED=N replays a run, FERRY_FUZZ_ONLY=I,J… only some variants of it,
 * FERRY_FUZZ_COUNT=N runs more (default 3000, about two minutes), FERRY_FUZZ_HUGE=1 adds an
 * entry of 4 GiB (a hole; always on from 10000 variants: it takes a minute to hash thrice).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, PYTHON, ROOT } from '../helpers/env.js';

const skip = needs('root', 'build', 'python');
const WORKER = join(ROOT, 'dist', 'test', 'fuzz', 'worker.js');
/** A variant that takes longer than this is a hang (the worker times out async work at 20 s itself). */
const VARIANT_S = 30;
/** Making the base images (checkpointing five workloads). */
const SETUP_S = 120;
const count = Number(process.env.FERRY_FUZZ_COUNT ?? 3000);

/** Makes itself a child subreaper, then becomes node running the worker. */
const SUBREAPER = 'import ctypes, os, sys\n'
  + 'if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0: sys.exit("prctl(PR_SET_CHILD_SUBREAPER) failed")\n'
  + 'os.execv(sys.argv[1], sys.argv[1:])\n';

let workerPid = 0;
let killedWorker = 0;
let imagePids: number[] = [];
after(() => {
  // The worker kills what it made; if it had to be killed itself (a hang), what it had restored
  // is orphaned: a process at one of its images' pids, of one of its workloads, adopted by init.
  if (workerPid) {
    killedWorker = workerPid;
    try { process.kill(workerPid, 'SIGKILL'); } catch { /* gone */ }
  }
  if (!killedWorker) return;
  for (const p of imagePids) {
    const s = statOf(p);
    if (s && (s.ppid === 1 || s.ppid === killedWorker) && WORKLOADS.includes(s.comm)) try { process.kill(p, 'SIGKILL'); } catch { /* gone */ }
  }
});

const WORKLOADS = ['counter', 'threads', 'tree', 'anonfd', 'pipes', 'unixsk', 'events', 'ferry-stub'];

/** comm and parent of a pid, or undefined. */
function statOf(pid: number): { comm: string; ppid: number } | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const close = text.lastIndexOf(')');
    return { comm: text.slice(text.indexOf('(') + 1, close), ppid: Number(text.slice(close + 2).split(' ')[1]) };
  } catch {
    return undefined;
  }
}

interface Summary {
  seed: number; seconds: number; variants: number; restored: number; passed: number; failures: number; cliRuns: number; remade: number;
  refusedByCode: Record<string, number>;
  families: Record<string, { variants: number; restored: number; passed: number; refused: Record<string, number>; failures: number }>;
  lateRefusals: Record<string, number>;
  canaryUntouched: boolean;
}

describe('fuzzing restore with damaged and edited images', { skip, timeout: (SETUP_S + 300 + count / 2) * 1000 }, () => {
  it(`${count} variants: a clean refusal or a checked restore, canary untouched, nothing left, no hang`, async (t) => {
    assert.ok(existsSync(WORKER), 'the worker is built');
    const child = spawn(PYTHON, ['-c', SUBREAPER, process.execPath, WORKER], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, FERRY_FUZZ_WORKER: '1' } });
    workerPid = child.pid!;
    let buffered = '';
    let last = 'setup';
    let lastAt = Date.now();
    let seed = '?';
    let summary: Summary | undefined;
    const failures: string[] = [];
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => { stderr = (stderr + d.toString()).slice(-20_000); });
    const onLine = (line: string): void => {
      if (line.startsWith('@ ')) { last = line.slice(2); lastAt = Date.now(); }
      else if (line.startsWith('~ ')) lastAt = Date.now();
      else if (line.startsWith('! ')) { failures.push(line.slice(2)); t.diagnostic(`FAILURE ${line.slice(2)}`); }
      else if (line.startsWith('= ')) summary = JSON.parse(line.slice(2)) as Summary;
      else if (line.startsWith('pids ')) imagePids = line.slice(5).split(' ').map(Number);
      else if (line.startsWith('# ')) {
        const m = /^# seed (\d+)/.exec(line);
        if (m) seed = m[1]!;
        t.diagnostic(line.slice(2));
      }
    };
    child.stdout.on('data', (d: Buffer) => {
      buffered += d.toString();
      for (let nl = buffered.indexOf('\n'); nl >= 0; nl = buffered.indexOf('\n')) {
        onLine(buffered.slice(0, nl));
        buffered = buffered.slice(nl + 1);
      }
    });
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    let hang: string | undefined;
    const watchdog = setInterval(() => {
      const limit = (last === 'setup' ? SETUP_S : VARIANT_S) * 1000;
      if (Date.now() - lastAt > limit) {
        hang = `variant ${last} made no progress for ${limit / 1000} s (seed ${seed}: replay with FERRY_FUZZ_SEED=${seed} FERRY_FUZZ_ONLY=${last.split(' ')[0]})`;
        killedWorker = child.pid!;
        child.kill('SIGKILL');
      }
    }, 1000);
    const code = await exited;
    clearInterval(watchdog);
    workerPid = 0;
    assert.equal(hang, undefined, hang);
    assert.ok(summary, `the worker finished (exit ${code}): ${stderr.slice(-3000)}`);
    const s = summary;
    const families = Object.entries(s.families).map(([f, c]) => `${f.padEnd(18)} ${String(c.variants).padStart(5)} variants, `
      + `${String(c.restored).padStart(4)} restored (${c.passed} passed their check), refused ${Object.entries(c.refused).map(([k, n]) => `${k} ${n}`).join(' ')}`
      + `${c.failures ? `, ${c.failures} FAILURES` : ''}`);
    t.diagnostic(`seed ${s.seed}: ${s.variants} variants in ${s.seconds} s, ${s.restored} restored (${s.passed} passed their check), `
      + `${s.cliRuns} also through bin/ferry, ${s.failures} failures${s.remade ? `; ${s.remade} base(s) made again (their pid taken)` : ''}`);
    t.diagnostic(`refused by code: ${Object.entries(s.refusedByCode).sort((a, b) => b[1] - a[1]).map(([k, n]) => `${k} ${n}`).join(', ')}`);
    for (const line of families) t.diagnostic(line);
    for (const [msg, n] of Object.entries(s.lateRefusals)) t.diagnostic(`late refusal (ERESTORE) ×${n}: ${msg}`);
    assert.ok(s.canaryUntouched, 'the canary directory is as it was');
    assert.deepEqual(failures, [], `${failures.length} failures (seed ${s.seed}; replay with FERRY_FUZZ_SEED=${s.seed} FERRY_FUZZ_ONLY=<variant>)`);
    assert.equal(code, 0);
  });
});
