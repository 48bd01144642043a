/**
 * Signed images end to end through bin/ferry, on a real counter: keygen, checkpoint
 * --sign-key, inspect's signer, restore --trust (a file, a directory, image.trust of the
 * config), and the refusals: another key, an unsigned image, a manifest edited after signing,
 * each before any process is made. Then a signed image through a pipe.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createPrivateKey } from 'node:crypto';
import { chmodSync, chownSync, closeSync, existsSync, mkdirSync, openSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, WORKLOADS } from '../helpers/env.js';
import {
  alive, checkPipedRestore, cleanup, ferry, own, procState, scratchDir, shell, startWorkload, verify, waitFor, type Workload,
} from '../helpers/processes.js';
import { fingerprint } from '../../src/image/sign.js';

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
    // Without a host key, an image given no key is unsigned.
    const noHostKey = join(dir, 'no-host-key.toml');
    writeFileSync(noHostKey, '[image]\nhost_key = ""\n');
    await checkpoint(w, unsigned, ['--config', noHostKey]);
    await w.exited;
    const config = join(dir, 'site.toml');
    writeFileSync(config, `[image]\ntrust = "${trusted}"\n`);
    refusedRestore(['--image', unsigned, '--trust', site!.pub],
      `image ${unsigned} is not signed, and --trust ${site!.pub} requires a signature`, w.pid);
    refusedRestore(['--image', unsigned, '--config', config],
      `image ${unsigned} is not signed, and image.trust ${trusted} requires a signature`, w.pid);
    assert.equal((JSON.parse(ferry(['inspect', '--image', unsigned, '--json']).stdout.toString()) as { signer: unknown }).signer, null);
    assert.match(ferry(['inspect', '--image', unsigned]).stdout.toString(), /^signer {5}unsigned$/m);

    // Without trust an unsigned image is restored, held to the untrusted default: this root
    // process needs --max-creds root.
    refusedRestore(['--image', unsigned], `image ${unsigned}: pid ${w.pid} (counter) would get uid 0 as its real, effective, saved `
      + 'and filesystem uid, beyond what an image no trusted key signed allows (no root: '
      + "an unsigned image's code is its own, whatever executable it names; sign it and restore with --trust, or allow it with --max-creds) "
      + '(and 3 more): nothing was restored', w.pid);
    const rs = ferry(['restore', '--image', unsigned, '--max-creds', 'root']);
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
    await checkPipedRestore(w, r);
  });
});

describe('the host key', { skip, timeout: 300_000 }, () => {
  const dir = scratchDir('ferry-hostkey-');
  const hostKey = join(dir, 'state', 'host.key');
  const config = join(dir, 'host.toml');
  writeFileSync(config, `[image]\nhost_key = "${hostKey}"\n`);

  /**
   * restore() of the library, in a process of its own (the restored tree outlives it), under
   * the config `cfg`, with `hostKey` null or read ahead from this describe's host key. Prints
   * the restored pid, or CODE MESSAGE of the error on stderr (status 1).
   */
  function apiRestore(image: string, cfg: string, hostKey: 'null' | 'read'): { status: number | null; stdout: string; stderr: string } {
    const src = join(process.cwd(), 'dist', 'src');
    const script = `
      import { restore } from '${join(src, 'restore', 'restore.js')}';
      import { loadConfig } from '${join(src, 'config', 'config.js')}';
      import { hostPublicKey } from '${join(src, 'image', 'host-key.js')}';
      import { silentLogger } from '${join(src, 'log-silent.js')}';
      try {
        const hostKey = ${hostKey === 'null' ? 'null' : `hostPublicKey(${JSON.stringify(join(dir, 'state', 'host.key'))})`};
        const r = await restore({ image: ${JSON.stringify(image)}, config: loadConfig({ path: ${JSON.stringify(cfg)} }), logger: silentLogger, hostKey });
        console.log(r.pid);
        process.exit(0);
      } catch (err) {
        console.error(err.code + ' ' + err.message);
        process.exit(1);
      }`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000, stdio: ['ignore', 'pipe', 'pipe'] });
    return { status: r.status, stdout: r.stdout, stderr: r.stderr };
  }
  const site = skip ? undefined : keygen(dir, 'site');

  it('is made root-only by the first checkpoint, signs an image given no key, and a restore here trusts it, also under --trust', async () => {
    const w = await counter();
    const image = join(w.dir, 'host.tar');
    await checkpoint(w, image, ['--config', config]);
    await w.exited;
    assert.equal(statSync(hostKey).mode & 0o777, 0o600);
    assert.equal(statSync(dirname(hostKey)).mode & 0o777, 0o700);
    const keyId = fingerprint(createPrivateKey(readFileSync(hostKey)));
    assert.equal((JSON.parse(ferry(['inspect', '--image', image, '--json']).stdout.toString()) as { signer: string }).signer, keyId);

    // Trusted keys configured for images from elsewhere: this machine's own still restore,
    // root process and all, with no --max-creds.
    const rs = ferry(['restore', '--image', image, '--config', config, '--trust', site!.pub]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    const n = w.ticks().length;
    await waitFor('ticks after restore', () => w.ticks().length >= n + 3);

    // A second checkpoint signs with the same key; without its host key, another machine
    // (here: a config with none) holds the image to the untrusted default.
    const again = join(w.dir, 'again.tar');
    await checkpoint(w, again, ['--config', config]);
    assert.equal((JSON.parse(ferry(['inspect', '--image', again, '--json']).stdout.toString()) as { signer: string }).signer, keyId);
    const elsewhere = join(dir, 'elsewhere.toml');
    writeFileSync(elsewhere, `[image]\nhost_key = "${join(dir, 'other-state', 'host.key')}"\n`);
    const r = ferry(['restore', '--image', again, '--config', elsewhere]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, new RegExp(`^ferry restore: image ${again}: pid ${w.pid} \\(counter\\) would get uid 0 .* no trusted key signed allows`));
    assert.ok(!existsSync(join(dir, 'other-state', 'host.key')), 'a restore never makes a host key');
    assert.ok(!alive(w.pid));
    // The library's restore takes the host key read ahead (RestoreOptions.hostKey, as a
    // migration's target reads it at the hello) instead of the config's: null, none here, so
    // the image is held to the untrusted default under the config that has the key.
    const refused = apiRestore(again, config, 'null');
    assert.equal(refused.status, 1, refused.stderr);
    assert.match(refused.stderr, new RegExp(`^EPRIVILEGE image ${again}: pid ${w.pid} \\(counter\\) would get uid 0 `));
    assert.ok(!alive(w.pid));
    // And the key read ahead is trusted under a config without one.
    const ahead = apiRestore(again, elsewhere, 'read');
    assert.equal(ahead.status, 0, ahead.stderr);
    assert.equal(ahead.stdout.trim(), String(w.pid));
    own(w.pid);
    const k = w.ticks().length;
    await waitFor('ticks after the library\'s restore', () => w.ticks().length >= k + 3);
    await checkpoint(w, again, ['--config', config]);
    const back = ferry(['restore', '--image', again, '--config', config]);
    assert.equal(back.code, 0, back.stderr);
    const m = w.ticks().length;
    await waitFor('ticks after the second restore', () => w.ticks().length >= m + 3);
    assert.equal(await verify(w), 'PASS');
  });

  it('a host key others can read is refused before the process is touched', async () => {
    const w = await counter();
    chmodSync(hostKey, 0o644);
    try {
      const image = join(w.dir, 'never.tar');
      const r = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--config', config]);
      assert.equal(r.code, 1);
      assert.equal(r.stderr, `ferry checkpoint: host key ${hostKey} must be a small regular file of root's with mode 600 `
        + `(it is uid 0, mode 644, ${statSync(hostKey).size} bytes): fix or remove it\n`);
      assert.ok(alive(w.pid) && procState(w.pid).tracer === 0, 'the process runs on, untraced');
      assert.ok(!existsSync(image));
    } finally {
      chmodSync(hostKey, 0o600);
    }
  });

  it('an unsigned image of a process running as nobody restores as nobody with no option', async () => {
    const w = await startWorkload('/usr/bin/setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', join(WORKLOADS, 'counter'), '50']);
    await waitFor('a few ticks', () => w.ticks().length >= 3);
    // Its log is its own, as a daemon's is, in a directory it may search: an unsigned image
    // holds open only what its process could open so (the next tests show the refusals).
    chownSync(w.log, 65534, 65534);
    chmodSync(w.dir, 0o755);
    const noHostKey = join(dir, 'none.toml');
    writeFileSync(noHostKey, '[image]\nhost_key = ""\n');
    const image = join(w.dir, 'nobody.tar');
    await checkpoint(w, image, ['--config', noHostKey]);
    await w.exited;
    const rs = ferry(['restore', '--image', image, '--config', noHostKey]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.match(readFileSync(`/proc/${w.pid}/status`, 'utf8'), /^Uid:\s+65534\s+65534\s+65534\s+65534$/m);
    const n = w.ticks().length;
    await waitFor('ticks after restore', () => w.ticks().length >= n + 3);
  });
});

describe('no access beyond its own from an untrusted image', { skip, timeout: 300_000 }, () => {
  const dir = scratchDir('ferry-writes-');
  const noHostKey = join(dir, 'none.toml');
  writeFileSync(noHostKey, '[image]\nhost_key = ""\n');

  /**
   * Two images of `w`: unsigned (it left running) and signed by a key of `name` (it killed),
   * with the signer's keys.
   */
  async function unsignedAndSigned(w: Awaited<ReturnType<typeof startWorkload>>, name: string): Promise<{ unsigned: string; signed: string; site: ReturnType<typeof keygen> }> {
    const site = keygen(dir, name);
    const unsigned = join(w.dir, 'unsigned.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', unsigned, '--config', noHostKey, '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    const signed = join(w.dir, 'signed.tar');
    await checkpoint(w, signed, ['--config', noHostKey, '--sign-key', site.key]);
    await w.exited;
    return { unsigned, signed, site };
  }

  /** Restores `signed`, trusting `pub`: `w` counts on. */
  async function restoresTrusted(w: Awaited<ReturnType<typeof startWorkload>>, signed: string, pub: string): Promise<void> {
    const rs = ferry(['restore', '--image', signed, '--config', noHostKey, '--trust', pub]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    const n = w.ticks().length;
    await waitFor('ticks after restore', () => w.ticks().length >= n + 3);
  }

  it('a nobody process holding a root-owned file open for writing: refused unless the image is trusted; the file untouched', async () => {
    const w = await startWorkload('/usr/bin/setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', join(WORKLOADS, 'counter'), '50']);
    await waitFor('a few ticks', () => w.ticks().length >= 3);
    // The log stays root's, mode 0644: nobody could not open it for writing itself.
    const { unsigned, signed, site } = await unsignedAndSigned(w, 'site');
    chmodSync(w.dir, 0o755); // the way to the log is open: the file itself is what is refused
    const before = readFileSync(w.log);
    const fd = 1; // stdout and stderr hold the log; the lowest is named
    refusedRestore(['--image', unsigned, '--config', noHostKey], `image ${unsigned}: pid ${w.pid} (counter) fd ${fd} would get ${JSON.stringify(w.log)} open for writing, `
      + 'which its credentials (uid 65534, gid 65534, no CAP_DAC_OVERRIDE) could not open so (owner 0:0, mode 644): nothing was restored; '
      + 'sign the image and restore with --trust if it is genuine', w.pid);
    assert.deepEqual(readFileSync(w.log), before, 'the log untouched');
    // Signed by a trusted key, the same state restores: a daemon may hold what it opened as root.
    await restoresTrusted(w, signed, site.pub);
  });

  it('a nobody process holding a root-only file open for reading: refused unless the image is trusted', async () => {
    const secret = join(dir, 'secret');
    writeFileSync(secret, 'root only\n', { mode: 0o600 });
    chmodSync(dir, 0o755);
    const fd3 = openSync(secret, 'r');
    let w: Awaited<ReturnType<typeof startWorkload>>;
    try {
      // A shell keeps the descriptor it was given (the C workloads close all but 0-2).
      w = await startWorkload('/usr/bin/setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', '/bin/sh', '-c',
        'echo ready pid=$$; i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.05; done'], { extraFd: fd3 });
    } finally {
      closeSync(fd3);
    }
    await waitFor('a few ticks', () => w.ticks().length >= 3);
    chownSync(w.log, 65534, 65534);
    chmodSync(w.dir, 0o755);
    const { unsigned, signed, site } = await unsignedAndSigned(w, 'reader');
    refusedRestore(['--image', unsigned, '--config', noHostKey], `image ${unsigned}: pid ${w.pid} (sh) fd 3 would get ${JSON.stringify(secret)} open for reading, `
      + 'which its credentials (uid 65534, gid 65534, no CAP_DAC_OVERRIDE) could not open so (owner 0:0, mode 600): nothing was restored; '
      + 'sign the image and restore with --trust if it is genuine', w.pid);
    await restoresTrusted(w, signed, site.pub);
    assert.equal(readFileSync(`/proc/${w.pid}/fdinfo/3`, 'utf8').match(/^flags:\s+(\d+)/m)?.[1]?.slice(-1), '0', 'fd 3 back, read-only');
  });
});
