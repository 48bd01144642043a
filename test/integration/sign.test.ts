/**
 * Signed images end to end through bin/ferry, on a real counter: keygen, checkpoint
 * --sign-key, inspect's signer, restore --trust (a file, a directory, image.trust of the
 * config), and the refusals: another key, an unsigned image, a manifest edited after signing,
 * each before any process is made. Then a signed image through a pipe.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, WORKLOADS } from '../helpers/env.js';
import {
  alive, cleanup, ferry, own, procState, scratchDir, shell, startWorkload, verify, waitFor, type Workload,
} from '../helpers/processes.js';

const skip = needs('root', 'build');
after(cleanup);

/** `ferry keygen --out DIR/NAME --json`: the key pair's files and fingerprint. */
function keygen(dir: string, name: string): { key: string; pub: string; keyId: string } {
  const r = ferry(['keygen', '--out', join(dir, name), '--json']);
  assert.equal(r.code, 0, r.stderr);
  const k = JSON.parse(r.stdout.toString()) as { keyId: string; privateKey: string; publicKey: string };
  return { key: k.privateKey, pub: k.publicKey, keyId: k.keyId };
}

/** A counter that has ticked a few times. */
async function counter(): Promise<Workload> {
  const w = await startWorkload(join(WORKLOADS, 'counter'), ['50']);
  await waitFor('a few ticks', () => w.ticks().length >= 3);
  return w;
}

/** Checkpoints `w` (killing it) with `extra` options and waits until its pid is free. */
async function checkpoint(w: Workload, image: string, extra: string[]): Promise<void> {
  const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, ...extra]);
  assert.equal(cp.code, 0, cp.stderr);
  await waitFor(`pid ${w.pid} to be free`, () => !alive(w.pid));
}

/** Asserts a refused restore: status 1, exactly `line` on stderr, and no process made. */
function refusedRestore(args: string[], line: string, pid: number): void {
  const r = ferry(['restore', ...args]);
  assert.equal(r.code, 1, r.stderr);
  assert.equal(r.stderr, `ferry restore: ${line}\n`);
  assert.equal(r.stdout.length, 0);
  assert.ok(!alive(pid), `nothing was made: pid ${pid} does not exist`);
}

describe('signed images', { skip, timeout: 300_000 }, () => {
  const dir = scratchDir('ferry-sign-');
  const site = skip ? undefined : keygen(dir, 'site');
  const other = skip ? undefined : keygen(dir, 'other');
  const trusted = join(dir, 'trusted');

  it('checkpoint --sign-key, inspect shows the signer, restore --trust another key is refused, the right one restores', async () => {
    const w = await counter();
    const image = join(w.dir, 'signed.tar');
    await checkpoint(w, image, ['--sign-key', site!.key]);
    await w.exited;

    const text = ferry(['inspect', '--image', image]);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout.toString(), new RegExp(`^signer {5}${site!.keyId.replace(/[+/]/g, '\\$&')}$`, 'm'));
    const json = ferry(['inspect', '--image', image, '--json']);
    assert.equal((JSON.parse(json.stdout.toString()) as { signer: string }).signer, site!.keyId);

    refusedRestore(['--image', image, '--trust', other!.pub],
      `image ${image} is signed by ${site!.keyId}, which is not trusted (--trust ${other!.pub})`, w.pid);
    // The configuration's image.trust, named as such.
    const config = join(dir, 'other.toml');
    writeFileSync(config, `[image]\ntrust = "${other!.pub}"\n`);
    refusedRestore(['--image', image, '--config', config],
      `image ${image} is signed by ${site!.keyId}, which is not trusted (image.trust ${other!.pub})`, w.pid);
    const js = ferry(['restore', '--image', image, '--trust', other!.pub, '--json']);
    assert.equal(js.code, 1);
    assert.deepEqual(JSON.parse(js.stdout.toString()), {
      error: { code: 'EUNTRUSTED', message: `image ${image} is signed by ${site!.keyId}, which is not trusted (--trust ${other!.pub})`, path: image },
    });

    // A directory of trusted keys: every *.pub in it.
    mkdirSync(trusted);
    writeFileSync(join(trusted, 'other.pub'), readFileSync(other!.pub));
    writeFileSync(join(trusted, 'site.pub'), readFileSync(site!.pub));
    const n = w.ticks().length;
    const rs = ferry(['restore', '--image', image, '--trust', trusted]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.match(rs.stdout.toString(), new RegExp(`^restored pid ${w.pid} from `));
    await waitFor('ticks after restore', () => w.ticks().length >= n + 3);
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS');
  });

  it('refuses an unsigned image under trust, and an image whose manifest was edited after signing, with or without trust', async () => {
    const w = await counter();
    const unsigned = join(w.dir, 'unsigned.tar');
    await checkpoint(w, unsigned, []);
    await w.exited;
    const config = join(dir, 'site.toml');
    writeFileSync(config, `[image]\ntrust = "${trusted}"\n`);
    refusedRestore(['--image', unsigned, '--trust', site!.pub],
      `image ${unsigned} is not signed, and --trust ${site!.pub} requires a signature`, w.pid);
    refusedRestore(['--image', unsigned, '--config', config],
      `image ${unsigned} is not signed, and image.trust ${trusted} requires a signature`, w.pid);
    assert.equal((JSON.parse(ferry(['inspect', '--image', unsigned, '--json']).stdout.toString()) as { signer: unknown }).signer, null);
    assert.match(ferry(['inspect', '--image', unsigned]).stdout.toString(), /^signer {5}unsigned$/m);

    // Unsigned is fine without trust: restore it, then checkpoint it signed.
    const rs = ferry(['restore', '--image', unsigned]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    const signed = join(w.dir, 'signed.tar');
    await checkpoint(w, signed, ['--sign-key', site!.key]);

    // Edit the manifest (its root pid's task list stays; the creation time moves a year).
    const bytes = readFileSync(signed);
    const manifestEnd = bytes.indexOf(0, 512);
    const at = bytes.subarray(0, manifestEnd).indexOf('"createdAt":"', 512) + '"createdAt":"'.length + 3;
    bytes[at] = bytes[at] === 0x39 ? 0x38 : bytes[at]! + 1;
    const edited = join(w.dir, 'edited.tar');
    writeFileSync(edited, bytes);
    const line = `image ${edited} is corrupt: its signature by ${site!.keyId} does not match its manifest (changed after it was signed)`;
    refusedRestore(['--image', edited, '--trust', site!.pub], line, w.pid);
    refusedRestore(['--image', edited], line, w.pid);
    const ins = ferry(['inspect', '--image', edited]);
    assert.equal(ins.code, 1);
    assert.equal(ins.stderr, `ferry inspect: ${line}\n`);

    // The untouched image still restores under the config's trust.
    const ok = ferry(['restore', '--image', signed, '--config', config]);
    assert.equal(ok.code, 0, ok.stderr);
    const n = w.ticks().length;
    await waitFor('ticks after restore', () => w.ticks().length >= n + 3);
    assert.equal(await verify(w), 'PASS');
  });

  it('a bad --sign-key is refused before the process is touched', async () => {
    const w = await counter();
    const image = join(w.dir, 'never.tar');
    const r = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--sign-key', site!.pub]);
    assert.equal(r.code, 1);
    assert.equal(r.stderr, `ferry checkpoint: sign key ${site!.pub} is not a private key in PEM (PKCS#8, unencrypted), as ferry keygen writes PREFIX.key\n`);
    assert.ok(alive(w.pid) && procState(w.pid).tracer === 0, 'the process runs on, untraced');
    assert.ok(!existsSync(image));
    const n = w.ticks().length;
    await waitFor('ticks go on', () => w.ticks().length >= n + 2);
  });

  it('streams a signed image through a pipe: checkpoint --image - --sign-key | restore --image - --trust', async () => {
    const w = await counter();
    const bin = join(process.cwd(), 'bin', 'ferry');
    const refused = await shell(`'${bin}' checkpoint --pid ${w.pid} --image - --sign-key '${other!.key}' --leave-running | '${bin}' restore --image - --trust '${site!.pub}'`);
    assert.equal(refused.code, 1, refused.stderr);
    assert.match(refused.stderr, new RegExp(`^ferry restore: image \\(stdin\\) is signed by ${other!.keyId.replace(/[+/]/g, '\\$&')}, which is not trusted \\(--trust \\S+site\\.pub\\)$`, 'm'));
    assert.ok(alive(w.pid) && procState(w.pid).tracer === 0, 'left running, untraced');

    const r = await shell(`'${bin}' checkpoint --pid ${w.pid} --image - --sign-key '${site!.key}' | '${bin}' restore --image - --trust '${site!.pub}'`);
    own(w.pid);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /checkpointed pid \d+ to stdout/);
    assert.match(r.stdout.toString(), new RegExp(`restored pid ${w.pid}`));
    const n = w.ticks().length;
    await waitFor('ticks after restore', () => w.ticks().length >= n + 3);
    assert.equal(await verify(w), 'PASS');
  });
});
