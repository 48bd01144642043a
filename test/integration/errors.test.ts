/**
 * Bad input: each case gets one clear line on stderr naming the thing, a non-zero exit, no
 * stray process, and the original never left stopped or traced. With --json the same error is
 * also one JSON object on stdout (docs/cli.md, "Errors"); hand-edited images (wrong types,
 * huge numbers, missing fields, values nested 100000 deep) get one line naming the field.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { FERRY, needs, WORKLOADS } from '../helpers/env.js';
import { editImage, json } from '../helpers/images.js';
import { alive, cleanup, ferry, own, procState, scratchDir, shell, sleep, startWorkload, stubs, verify, waitFor } from '../helpers/processes.js';

const skip = needs('root', 'build');
after(cleanup);

/** stderr must be exactly one line. */
function oneLine(stderr: string): string {
  const lines = stderr.trimEnd().split('\n');
  assert.equal(lines.length, 1, `expected one line on stderr, got:\n${stderr}`);
  return lines[0]!;
}

/** What must never reach the user: the engine's or Node's own words, a stack, errno numbers. */
const RAW = /is not a function|Maximum call stack|Cannot read prop|is not iterable|undefined|\[object Object\]|NaN|TypeError|RangeError|errno \d|\bat \//;

/** The error object of a --json run: stdout is exactly one line, `{"error": {...}}`. */
function jsonError(stdout: Buffer | string): { code: string; message: string; pid?: number; fd?: number; path?: string } {
  const text = stdout.toString();
  assert.equal(text.split('\n').filter(Boolean).length, 1, `expected one JSON line on stdout, got:\n${text}`);
  const v = JSON.parse(text) as { error: { code: string; message: string } };
  assert.deepEqual(Object.keys(v), ['error']);
  return v.error;
}

/** The JSON text of a list nested `n` deep (JSON.stringify of one would overflow the stack). */
const deepText = (n: number): string => `${'['.repeat(n)}1${']'.repeat(n)}`;

function untouched(pid: number): void {
  assert.ok(alive(pid), 'still alive');
  const st = procState(pid);
  assert.equal(st.tracer, 0, 'not traced');
  assert.notEqual(st.state, 't', 'not stopped');
  assert.notEqual(st.state, 'T', 'not stopped');
}

/** A real image of a counter that was left running (the counter is killed afterwards). */
async function realImage(): Promise<{ image: string; pid: number; dir: string; exited: Promise<void> }> {
  const w = await startWorkload(join(WORKLOADS, 'counter'), ['50']);
  const image = join(w.dir, 'counter.tar');
  const r = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']);
  assert.equal(r.code, 0, r.stderr);
  return { image, pid: w.pid, dir: w.dir, exited: w.exited };
}

describe('bad input', { skip, timeout: 180_000 }, () => {
  it('a pid that does not exist', () => {
    const r = ferry(['checkpoint', '--pid', '4000000', '--image', '/tmp/never.tar']);
    assert.equal(r.code, 1);
    assert.match(oneLine(r.stderr), /no process with pid 4000000/);
    assert.ok(!existsSync('/tmp/never.tar'));
  });

  it('a kernel thread', () => {
    const r = ferry(['checkpoint', '--pid', '2', '--image', '/tmp/never.tar']);
    assert.equal(r.code, 1);
    assert.match(oneLine(r.stderr), /pid 2 \(kthreadd\) is a kernel thread/);
  });

  it('a usage error exits 2 and says how to get help', () => {
    const r = ferry(['checkpoint', '--pid', 'abc', '--image', 'x']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--pid needs a positive integer, got "abc"/);
    assert.match(r.stderr, /Try 'ferry checkpoint --help'/);
  });

  it('a child in another pid namespace is refused, and the tree left running', async () => {
    const dir = scratchDir();
    const child = spawn('unshare', ['--pid', '--fork', 'sleep', '100'], { stdio: 'ignore', detached: true, cwd: dir });
    own(child.pid!);
    const kids = (): string => readFileSync(`/proc/${child.pid}/task/${child.pid}/children`, 'utf8').trim();
    await waitFor('the child', () => kids() !== '');
    const kid = Number(kids());
    own(kid);
    const r = ferry(['checkpoint', '--pid', String(child.pid), '--image', join(dir, 'x.tar')]);
    assert.equal(r.code, 1);
    assert.match(oneLine(r.stderr), new RegExp(`pid ${kid} \\(in the tree of ${child.pid}\\) \\(sleep\\) runs in another pid namespace: not supported yet`));
    assert.ok(!existsSync(join(dir, 'x.tar')), 'no partial image');
    untouched(child.pid!);
    untouched(kid);
  });

  it('a pipe also held outside the tree is refused, naming both holders', async () => {
    const dir = scratchDir();
    // The parent keeps both ends of a pipe its child holds too, and stays outside the checkpoint.
    const script = 'import os, sys, time\nr, w = os.pipe()\npid = os.fork()\nif pid == 0:\n    time.sleep(1000)\nprint(pid, r, flush=True)\ntime.sleep(1000)\n';
    const parent = spawn('/usr/bin/python3', ['-c', script], { stdio: ['ignore', 'pipe', 'ignore'], detached: true, cwd: dir });
    own(parent.pid!);
    let out = '';
    parent.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    await waitFor('the workload to print its child', () => out.includes('\n'));
    const line = out.trim();
    const m = /(\d+)\s+(\d+)/.exec(line);
    assert.ok(m, `the workload printed its child and fd: ${line}`);
    const child = Number(m[1]);
    const rfd = Number(m[2]);
    own(child);
    const r = ferry(['checkpoint', '--pid', String(child), '--image', join(dir, 'x.tar')]);
    assert.equal(r.code, 1);
    assert.match(oneLine(r.stderr), new RegExp(`pid ${child} fd ${rfd} -> pipe:\\[\\d+\\] is also held outside the checkpointed tree, by pid ${parent.pid} \\(python3\\) fd \\d+: restoring would split it`));
    assert.ok(!existsSync(join(dir, 'x.tar')), 'no partial image');
    untouched(child);
  });

  it('an unsupported descriptor is refused before the process is touched', async () => {
    const w = await startWorkload(join(WORKLOADS, 'counter'), ['50'], { stderr: 'pipe' });
    const r = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'x.tar')]);
    assert.equal(r.code, 1);
    const line = oneLine(r.stderr);
    assert.match(line, new RegExp(`unsupported file: pid ${w.pid} fd 2 -> (pipe|socket):\\[\\d+\\]`));
    assert.ok(!existsSync(join(w.dir, 'x.tar')), 'no partial image');
    untouched(w.pid);
  });

  it('an unwritable image path leaves the original running', async () => {
    const w = await startWorkload(join(WORKLOADS, 'counter'), ['50']);
    const r = ferry(['checkpoint', '--pid', String(w.pid), '--image', '/nonexistent-dir/x.tar']);
    assert.equal(r.code, 1);
    assert.match(oneLine(r.stderr), /cannot write image \/nonexistent-dir\/x.tar: .*ENOENT/);
    untouched(w.pid);
    const n = w.ticks().length;
    await waitFor('ticks continue', () => w.ticks().length > n + 2);
    assert.equal(await verify(w), 'PASS');
  });

  it('a truncated image is refused and nothing is created', async () => {
    const { image, pid, dir, exited } = await realImage();
    process.kill(pid, 'SIGKILL');
    await exited;
    const data = readFileSync(image);
    const cut = join(dir, 'cut.tar');
    writeFileSync(cut, data.subarray(0, Math.floor(data.length / 2)));
    const before = stubs();
    const r = ferry(['restore', '--image', cut]);
    assert.equal(r.code, 1);
    assert.match(oneLine(r.stderr), /image .*cut.tar is truncated/);
    assert.ok(!alive(pid), 'no process was created');
    // Stubs of earlier tests' refused restores may still wait for PID 1 to reap them.
    assert.deepEqual(stubs().filter((p) => !before.includes(p)), [], 'no new restore stub');
  });

  it('a corrupted image is refused, naming the entry', async () => {
    const { image, pid, dir, exited } = await realImage();
    process.kill(pid, 'SIGKILL');
    await exited;
    const data = readFileSync(image);
    const at = data.length - 4096; // inside the last entry's data (pages)
    data[at] = data[at]! ^ 0x40;
    const bad = join(dir, 'bad.tar');
    writeFileSync(bad, data);
    const before = stubs();
    const r = ferry(['restore', '--image', bad]);
    assert.equal(r.code, 1);
    // Page data is verified chunk by chunk as restore writes it: refused then, the stub removed.
    assert.match(oneLine(r.stderr), /image .*bad.tar is corrupt: entry tasks\/\d+\/pages.bin chunk 0 has sha256 [0-9a-f]{12}… but the manifest says/);
    assert.ok(!alive(pid));
    assert.deepEqual(stubs().filter((p) => !before.includes(p)), [], 'no new restore stub');
  });

  it('a restore whose PID is taken leaves the running process alone', async () => {
    const { image, pid } = await realImage();
    const r = ferry(['restore', '--image', image]);
    assert.equal(r.code, 1);
    assert.match(oneLine(r.stderr), new RegExp(`pid ${pid} is in use by another process \\(counter\\)`));
    untouched(pid);
  });

  it('an image from another kernel build without its vDSO (an older ferry\'s) is refused', async () => {
    const { image, pid, dir, exited } = await realImage();
    process.kill(pid, 'SIGKILL');
    await exited;
    // Rewrite manifest.json's host.kernelRelease (the manifest carries no checksum of itself;
    // the edit drops the host key's signature, as any hand without the key would), and leave
    // out vdso.bin, which images carry since restore proxies another build's vDSO (vdso.test).
    const other = join(dir, 'other-kernel.tar');
    await editImage(image, other, { 'manifest.json': json((m) => { m.host.kernelRelease = '5.10.0-ancient'; }) }, { drop: ['vdso.bin'] });
    const r = ferry(['restore', '--image', other]);
    assert.equal(r.code, 1);
    assert.match(oneLine(r.stderr), /image was made on kernel 5.10.0-ancient .*needs the same kernel build/);
    assert.ok(!alive(pid));
  });

  it('not running as root is refused by the CLI', { skip: existsSync('/usr/bin/setpriv') ? false : 'needs setpriv (util-linux)' }, () => {
    const r = spawnSync('/usr/bin/setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', FERRY, 'checkpoint', '--pid', '1', '--image', '/tmp/never.tar']);
    assert.equal(r.status, 1);
    assert.match(oneLine(r.stderr.toString()), /must run as root/);
  });

  it('leaves no restore stub behind after all of the above', async () => {
    await sleep(100);
    assert.deepEqual(stubs(), []);
  });
});

describe('the error contract', { skip, timeout: 300_000 }, () => {
  it('pid 1 (init) is refused with what it is and what to do', () => {
    const r = ferry(['checkpoint', '--pid', '1', '--image', '/tmp/never.tar', '--json']);
    assert.equal(r.code, 1);
    const line = oneLine(r.stderr);
    assert.match(line, /^ferry checkpoint: pid 1 \(.+\) is the init process, the ancestor of every process, ferry included: it cannot be checkpointed; give the pid of the program to checkpoint/);
    assert.deepEqual(jsonError(r.stdout), { code: 'EINIT', message: line.replace('ferry checkpoint: ', ''), pid: 1 });
    assert.ok(!existsSync('/tmp/never.tar'));
  });

  it('with --image -, the JSON error goes to stderr after the line: stdout is the image\'s', async () => {
    const r = await shell(`"${FERRY}" checkpoint --pid 4000000 --image - --json | wc -c`);
    assert.equal(r.stdout.toString().trim(), '0', 'nothing on the image stream');
    const [line, obj, ...rest] = r.stderr.trimEnd().split('\n');
    assert.deepEqual(rest, [], r.stderr);
    assert.match(line!, /^ferry checkpoint: no process with pid 4000000/);
    assert.equal(jsonError(obj!).code, 'ENOPROC');
  });

  it('a tree that holds ferry itself is refused before anything is seized', () => {
    const dir = scratchDir();
    // The shell waits for ferry, its child: checkpointing the shell would have to stop ferry too.
    const r = spawnSync('/bin/sh', ['-c', `"${FERRY}" checkpoint --pid $$ --image "${dir}/x.tar" --json; echo "status $?"`], { timeout: 60_000 });
    const out = r.stdout.toString().trim().split('\n');
    assert.equal(out.at(-1), 'status 1', r.stderr.toString());
    const line = oneLine(r.stderr.toString());
    const m = /^ferry checkpoint: pid (\d+) \(sh\) is an ancestor of this ferry \(pid \d+\), so its tree holds ferry itself, which cannot stop itself: run ferry from outside that tree/.exec(line);
    assert.ok(m, line);
    assert.deepEqual(jsonError(out.slice(0, -1).join('\n')), { code: 'ESELF', message: line.replace('ferry checkpoint: ', ''), pid: Number(m[1]) });
    assert.equal(r.status, 0, 'the shell ran on to its end: it was never stopped');
    assert.ok(!existsSync(join(dir, 'x.tar')));
  });

  it('a mapped file that is gone at restore is named, with the pid and the address', async () => {
    const dir = scratchDir();
    const exe = join(dir, 'counter-copy');
    copyFileSync(join(WORKLOADS, 'counter'), exe);
    chmodSync(exe, 0o755);
    const w = await startWorkload(exe, ['50']);
    const image = join(w.dir, 'counter.tar');
    const c = ferry(['checkpoint', '--pid', String(w.pid), '--image', image]);
    assert.equal(c.code, 0, c.stderr);
    await w.exited;
    unlinkSync(exe);
    const r = ferry(['restore', '--image', image, '--json']);
    assert.equal(r.code, 1);
    const line = oneLine(r.stderr);
    assert.match(line, new RegExp(`^ferry restore: file ${exe} \\(mapped by pid ${w.pid} at 0x[0-9a-f]+\\) no longer exists: put it back where it was`));
    assert.deepEqual(jsonError(r.stdout), { code: 'ENOENT', message: line.replace('ferry restore: ', ''), pid: w.pid, path: exe });
    assert.ok(!alive(w.pid), 'nothing was created');
  });

  it('hand-edited images: one line naming the field, for inspect and restore, also as JSON', async () => {
    const { image, pid, dir, exited } = await realImage();
    process.kill(pid, 'SIGKILL');
    await exited;
    const task = `tasks/${pid}/task.json`;
    const cases: Array<[string, Record<string, (text: string) => string>, string, RegExp]> = [
      ['a file record nested 100000 deep', { 'files.json': json((v) => { v.files[0].path = '@DEEP@'; }) },
        'EIMAGE', /^image \S+: entry files\.json nests values more than 32 levels deep \(at files\[0\]\.path\[0\]/],
      ['a memory area of kind 7', { [task]: json((v) => { v.vmas[0].kind = 7; }) },
        'EIMAGE', new RegExp(`^image entry ${task} is invalid: vmas\\[0\\]\\.kind must be one of anon, file, vdso, vvar, vvar_vclock, vsyscall, aio, is 7`)],
      ['a descriptor that is null', { [task]: json((v) => { v.fds[0] = null; }) },
        'EIMAGE', /is invalid: fds\[0\] must be an object, is null/],
      ['no threads', { [task]: json((v) => { delete v.threads; }) },
        'EIMAGE', /is invalid: threads must be a list of 1 to 65536 items, is missing/],
      ['a umask of 1e300', { [task]: json((v) => { v.umask = 1e300; }) },
        'EIMAGE', /is invalid: umask must be an integer from 0 to 511, is 1e\+300/],
      ['a mapped file path that is a number', { [task]: json((v) => { v.vmas[0].file.path = 42; }) },
        'EIMAGE', /is invalid: vmas\[0\]\.file\.path must be a string of at most 8192 characters, is 42/],
      ['a pid that is a string in the tree', { 'tree.json': json((v) => { v.processes[0].pid = 'x'; }) },
        'EIMAGE', /^image entry tree\.json is invalid: processes\[0\]\.pid must be an integer from 1 to 4194304, is "x"/],
      ['a manifest whose tasks are an object', { 'manifest.json': json((v) => { v.tasks = {}; }) },
        'EIMAGE', /^image \S+ is corrupt: manifest field tasks must be a non-empty list of pids/],
      ['a manifest whose format is nested 100000 deep', { 'manifest.json': json((v) => { v.format = '@DEEP@'; }) },
        'EFORMAT', /^image \S+: manifest field format is a list, not "ferry-image": not a ferry image/],
      ['a manifest of another format version', { 'manifest.json': json((v) => { v.formatVersion = { v: 2 }; }) },
        'EFORMAT', /^image \S+: manifest field formatVersion is an object \(written by ferry "[^"]+"\); this ferry reads versions 1 to 7: use the ferry version that wrote the image/],
      ['a manifest that requires a feature this ferry does not know', { 'manifest.json': json((v) => { v.formatVersion = 7; v.requires = ['from-a-newer-ferry']; }) },
        'EFORMAT', /^image \S+: manifest field requires names "from-a-newer-ferry" \(written by ferry "[^"]+"\), a feature this ferry does not know and would restore as something else: restore the image with the ferry version that wrote it, or a newer one$/],
    ];
    for (const [what, edits, code, message] of cases) {
      const edited = join(dir, `${what.replace(/\W+/g, '-')}.tar`);
      const deep = Object.fromEntries(Object.entries(edits).map(([name, edit]) => [name, (t: string) => edit(t).replace('"@DEEP@"', deepText(100_000))]));
      await editImage(image, edited, deep);
      for (const args of [['inspect', '--image', edited], ['inspect', '--image', edited, '--json'], ['restore', '--image', edited, '--json']]) {
        const r = ferry(args);
        const where = `${what}: ferry ${args.join(' ')}`;
        assert.equal(r.code, 1, `${where}: ${r.stderr}`);
        const line = oneLine(r.stderr);
        assert.ok(line.startsWith(`ferry ${args[0]!}: `), `${where}: ${line}`);
        const text = line.slice(`ferry ${args[0]!}: `.length);
        assert.match(text, message, where);
        assert.doesNotMatch(text, RAW, where);
        if (args.includes('--json')) assert.deepEqual(jsonError(r.stdout), { code, message: text, path: edited }, where);
        else assert.equal(r.stdout.length, 0, where);
      }
      assert.ok(!alive(pid), `${what}: nothing was restored`);
    }
  });
});
