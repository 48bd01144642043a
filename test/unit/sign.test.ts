/**
 * Signed images (src/image/sign.ts): keygen, signing in both writer modes, verification,
 * and every way an image can fail it: a manifest byte changed after signing, another key,
 * an unsigned or stripped image under trust, a malformed signature entry; trust checked
 * before anything else of the image is read.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import tar from 'tar-stream';
import { FerryError } from '../../src/errors.js';
import { parseManifest, type ManifestHeader, type WholeEntry } from '../../src/image/manifest.js';
import { openImage, type OpenOptions } from '../../src/image/reader.js';
import {
  fingerprint, generateSigningKey, imageSigner, loadTrust, restoreTrust, signingKey, SIGNATURE_NAME,
} from '../../src/image/sign.js';
import { writeImage, type ImageEntry } from '../../src/image/writer.js';
import { closeInheritedFds } from '../../src/proc/inherited.js';
import { FERRY } from '../helpers/env.js';

closeInheritedFds();

const dir = mkdtempSync(join(tmpdir(), 'ferry-sign-test-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const header: ManifestHeader = {
  ferryVersion: '0.1.0', createdAt: new Date(0).toISOString(),
  host: {
    kernelRelease: '6.18.0', kernelVersion: '#1 SMP', arch: 'x86_64', vdsoSha256: 'ab'.repeat(32),
    vdsoLayout: [{ name: '[vdso]', size: 8192 }], xfeatures: '0xe7', xstateSize: 2432,
  },
  root: { pid: 42 }, tasks: [42],
};

function entry(name: string, size: number): ImageEntry {
  return {
    name, size,
    async produce(sink) {
      const b = Buffer.alloc(size);
      for (let i = 0; i < size; i++) b[i] = i * 7 & 0xff;
      await sink(b);
    },
  };
}
const entries = (): ImageEntry[] => [entry('tree.json', 10), entry('tasks/42/pages.bin', 70_000), entry('odd', 513)];

let n = 0;
const fresh = (ext = 'tar'): string => join(dir, `f${n++}.${ext}`);

/** A key pair written as ferry keygen would: PREFIX.key, PREFIX.pub; returns them. */
function keyPair(prefix: string): { key: string; pub: string; keyId: string } {
  const k = generateSigningKey();
  writeFileSync(`${prefix}.key`, k.privatePem, { mode: 0o600 });
  writeFileSync(`${prefix}.pub`, k.publicPem);
  return { key: `${prefix}.key`, pub: `${prefix}.pub`, keyId: k.keyId };
}

const alice = keyPair(join(dir, 'alice'));
const bob = keyPair(join(dir, 'bob'));

/** A signed (or, without key, unsigned) image file of entries(). */
async function image(key?: string): Promise<string> {
  const path = fresh();
  await writeImage(path, header, entries(), key !== undefined ? { signKey: signingKey(key) } : {});
  return path;
}

/** The tar members of an image, in order. */
async function members(path: string): Promise<Array<{ name: string; data: Buffer }>> {
  const out: Array<{ name: string; data: Buffer }> = [];
  const ex = tar.extract();
  ex.on('entry', (h, s, next) => {
    const parts: Buffer[] = [];
    s.on('data', (d: unknown) => parts.push(d as Buffer));
    s.on('end', () => { out.push({ name: h.name, data: Buffer.concat(parts) }); next(); });
  });
  await new Promise<void>((r) => { ex.on('finish', () => r()); ex.end(readFileSync(path)); });
  return out;
}

/** Writes `list` as a tar (to rebuild an image with a member changed or left out). */
async function repack(list: Array<{ name: string; data: Buffer }>): Promise<string> {
  const path = fresh();
  const pack = tar.pack();
  for (const m of list) pack.entry({ name: m.name, size: m.data.length }, m.data);
  pack.finalize();
  const parts: Buffer[] = [];
  for await (const c of pack as AsyncIterable<Buffer>) parts.push(c);
  writeFileSync(path, Buffer.concat(parts));
  return path;
}

/** Opens and closes; returns the signer. */
async function open(path: string, options: Partial<OpenOptions> = {}): Promise<string | null> {
  const img = await openImage(path, { workDir: dir, ...options });
  await img.close();
  return img.signer;
}

/** Asserts a FerryError of `code` whose message is exactly `message` (or matches it). */
async function refused(p: Promise<unknown>, code: string, message: string | RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof FerryError, String(err));
    assert.equal(err.code, code, err.message);
    assert.ok(!err.message.includes('\n'));
    if (typeof message === 'string') assert.equal(err.message, message);
    else assert.match(err.message, message);
    return true;
  });
}

const ferry = (args: string[]): { status: number; stdout: string; stderr: string } => {
  const r = spawnSync(FERRY, args, { encoding: 'utf8', timeout: 30_000 });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
};

describe('ferry keygen', { timeout: 60_000 }, () => {
  it('writes PREFIX.key (PKCS#8, 0600) and PREFIX.pub (SPKI) and prints the fingerprint', () => {
    const prefix = join(dir, 'kg');
    const r = ferry(['keygen', '--out', prefix, '--json']);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stderr, '');
    const out = JSON.parse(r.stdout) as { keyId: string; privateKey: string; publicKey: string };
    assert.deepEqual(Object.keys(out), ['keyId', 'privateKey', 'publicKey']);
    assert.match(out.keyId, /^SHA256:[A-Za-z0-9+/]{43}$/);
    assert.equal(out.privateKey, `${prefix}.key`);
    assert.equal(out.publicKey, `${prefix}.pub`);
    assert.equal(statSync(out.privateKey).mode & 0o777, 0o600);
    assert.match(readFileSync(out.privateKey, 'utf8'), /^-----BEGIN PRIVATE KEY-----\n/);
    assert.match(readFileSync(out.publicKey, 'utf8'), /^-----BEGIN PUBLIC KEY-----\n/);
    // The fingerprint is the key's, from either half.
    assert.equal(fingerprint(signingKey(out.privateKey)), out.keyId);
    assert.deepEqual([...loadTrust(out.publicKey, '--trust').keys.keys()], [out.keyId]);
    // Text: one line.
    const t = ferry(['keygen', '--out', join(dir, 'kg2')]);
    assert.equal(t.status, 0, t.stderr);
    assert.match(t.stdout, /^made key SHA256:[A-Za-z0-9+/]{43}: private \S+kg2\.key \(mode 0600, for --sign-key\), public \S+kg2\.pub \(for --trust\)\n$/);
  });

  it('never overwrites a key, and leaves nothing when refused', () => {
    const prefix = join(dir, 'kg3');
    writeFileSync(`${prefix}.pub`, 'mine');
    const r = ferry(['keygen', '--out', prefix]);
    assert.equal(r.status, 1);
    assert.equal(r.stderr, `ferry keygen: cannot create ${prefix}.pub: it already exists (ferry never overwrites a key: choose another --out, or remove it)\n`);
    assert.ok(!existsSync(`${prefix}.key`));
    assert.equal(readFileSync(`${prefix}.pub`, 'utf8'), 'mine');
    const missing = ferry(['keygen', '--out', join(dir, 'no', 'such', 'k')]);
    assert.equal(missing.status, 1);
    assert.match(missing.stderr, /^ferry keygen: cannot create \S+k\.key: no such directory\n$/);
    const usage = ferry(['keygen']);
    assert.equal(usage.status, 2);
    assert.match(usage.stderr, /^ferry keygen: --out is required/);
  });
});

describe('signing and verifying images', { timeout: 60_000 }, () => {
  it('a signed image carries manifest.sig right after the manifest and opens with its signer', async () => {
    const path = await image(alice.key);
    const m = await members(path);
    assert.deepEqual(m.map((x) => x.name), ['manifest.json', SIGNATURE_NAME, 'tree.json', 'tasks/42/pages.bin', 'odd']);
    const sig = JSON.parse(m[1]!.data.toString()) as Record<string, unknown>;
    assert.deepEqual(Object.keys(sig), ['format', 'version', 'algorithm', 'keyId', 'publicKey', 'signature']);
    assert.equal(sig.keyId, alice.keyId);
    assert.equal(m[1]!.data.length, imageSigner(signingKey(alice.key)).placeholder.length);
    assert.equal(m[1]!.data.length, 286, 'the size docs/image-format.md gives');
    // The manifest lists the entries only, not the signature.
    assert.deepEqual(parseManifest(m[0]!.data).entries.map((e) => e.name), ['tree.json', 'tasks/42/pages.bin', 'odd']);
    assert.equal(await open(path), alice.keyId);
    assert.equal(await open(path, { trust: loadTrust(alice.pub, '--trust') }), alice.keyId);
    // A directory of keys: every *.pub in it.
    const keys = join(dir, 'keys');
    mkdirSync(keys);
    writeFileSync(join(keys, 'bob.pub'), readFileSync(bob.pub));
    writeFileSync(join(keys, 'alice.pub'), readFileSync(alice.pub));
    writeFileSync(join(keys, 'README'), 'not a key');
    assert.equal(await open(path, { trust: loadTrust(keys, '--trust') }), alice.keyId);
  });

  it('signs the same bytes through a pipe (two passes) as to a file', async () => {
    const file = await image(alice.key);
    const script = `
      import { writeImage } from '${join(process.cwd(), 'dist/src/image/writer.js')}';
      import { signingKey } from '${join(process.cwd(), 'dist/src/image/sign.js')}';
      const mk = ${entry.toString()};
      await writeImage('-', ${JSON.stringify(header)}, [mk('tree.json', 10), mk('tasks/42/pages.bin', 70000), mk('odd', 513)],
        { signKey: signingKey('${alice.key}') });`;
    const w = spawnSync(process.execPath, ['--input-type=module', '-e', script], { maxBuffer: 1 << 24 });
    assert.equal(w.status, 0, w.stderr.toString());
    // Ed25519 is deterministic: the same manifest gives the same signature, so the same image.
    assert.ok(w.stdout.equals(readFileSync(file)), 'pipe and file images are identical');
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', `
      import { openImage } from '${join(process.cwd(), 'dist/src/image/reader.js')}';
      import { loadTrust } from '${join(process.cwd(), 'dist/src/image/sign.js')}';
      const img = await openImage('-', { workDir: '${dir}', trust: loadTrust('${alice.pub}', '--trust') });
      process.stdout.write(String(img.signer));`], { input: w.stdout });
    assert.equal(r.status, 0, r.stderr.toString());
    assert.equal(r.stdout.toString(), alice.keyId);
  });

  it('refuses a manifest byte changed after signing, with or without trust', async () => {
    const path = await image(alice.key);
    const bytes = readFileSync(path);
    const at = bytes.indexOf('1970-01-01T00:00:00.000Z', 512);
    assert.ok(at > 0);
    bytes[at + 3] = '1'.charCodeAt(0); // 1971: still a valid manifest
    const edited = fresh();
    writeFileSync(edited, bytes);
    const msg = `image ${edited} is corrupt: its signature by ${alice.keyId} does not match its manifest (changed after it was signed)`;
    await refused(open(edited), 'EIMAGE', msg);
    await refused(open(edited, { trust: loadTrust(alice.pub, '--trust') }), 'EIMAGE', msg);
  });

  it('refuses an entry changed together with its sha256 in the manifest', async () => {
    const path = await image(alice.key);
    const m = await members(path);
    const odd = m.find((x) => x.name === 'odd')!;
    odd.data = Buffer.from(odd.data);
    odd.data[0] = odd.data[0]! ^ 0xff;
    const manifest = parseManifest(m[0]!.data);
    (manifest.entries.find((e) => e.name === 'odd') as WholeEntry).sha256 = createHash('sha256').update(odd.data).digest('hex');
    m[0]!.data = Buffer.from(JSON.stringify(manifest));
    const forged = await repack(m);
    await refused(open(forged), 'EIMAGE', /its signature by SHA256:\S+ does not match its manifest/);
  });

  it('refuses another key under trust, naming the signer and the setting', async () => {
    const path = await image(bob.key);
    await refused(open(path, { trust: loadTrust(alice.pub, '--trust') }), 'EUNTRUSTED',
      `image ${path} is signed by ${bob.keyId}, which is not trusted (--trust ${alice.pub})`);
    await refused(open(path, { trust: restoreTrust(undefined, alice.pub)! }), 'EUNTRUSTED',
      `image ${path} is signed by ${bob.keyId}, which is not trusted (image.trust ${alice.pub})`);
    // A forged signature entry naming alice's key but made with bob's is simply invalid.
    const m = await members(path);
    const sig = JSON.parse(m[1]!.data.toString()) as Record<string, string>;
    const alicePub = JSON.parse((await members(await image(alice.key)))[1]!.data.toString()) as Record<string, string>;
    m[1]!.data = Buffer.from(JSON.stringify({ ...sig, keyId: alice.keyId, publicKey: alicePub.publicKey }));
    await refused(open(await repack(m), { trust: loadTrust(alice.pub, '--trust') }), 'EIMAGE', /its signature by SHA256:\S+ does not match/);
  });

  it('accepts an unsigned image without trust, refuses it (and a stripped one) with trust', async () => {
    const unsigned = await image();
    assert.equal(await open(unsigned), null);
    assert.deepEqual((await members(unsigned)).map((x) => x.name)[1], 'tree.json');
    await refused(open(unsigned, { trust: loadTrust(alice.pub, '--trust') }), 'EUNTRUSTED',
      `image ${unsigned} is not signed, and --trust ${alice.pub} requires a signature`);
    const stripped = await repack((await members(await image(alice.key))).filter((x) => x.name !== SIGNATURE_NAME));
    assert.equal(await open(stripped), null);
    await refused(open(stripped, { trust: loadTrust(alice.pub, '--trust') }), 'EUNTRUSTED', /is not signed, and --trust \S+ requires a signature/);
  });

  it('checks trust before anything else: a broken manifest or entry of an untrusted image is never looked at', async () => {
    const m = await members(await image());
    m[0]!.data = Buffer.from('{"not json');
    m[2]!.data = Buffer.from('x'.repeat(m[2]!.data.length));
    const broken = await repack(m);
    await refused(open(broken), 'EIMAGE', /manifest.json is not valid JSON/);
    await refused(open(broken, { trust: loadTrust(alice.pub, '--trust') }), 'EUNTRUSTED', /is not signed, and --trust/);
  });

  it('refuses a malformed signature entry', async () => {
    const m = await members(await image(alice.key));
    const sig = JSON.parse(m[1]!.data.toString()) as Record<string, unknown>;
    const cases: Array<[unknown, RegExp]> = [
      ['{', /manifest.sig is not valid JSON/],
      [{ ...sig, format: 'x' }, /manifest.sig has format "x"/],
      [{ ...sig, version: 2 }, /manifest.sig has version 2/],
      [{ ...sig, algorithm: 'rsa' }, /manifest.sig has algorithm "rsa"/],
      [{ ...sig, signature: 'AAAA' }, /manifest.sig has no valid signature/],
      [{ ...sig, publicKey: 1 }, /manifest.sig has no valid publicKey/],
      [{ ...sig, keyId: bob.keyId }, /manifest.sig names key "SHA256:\S+", but its publicKey is SHA256:/],
      ['x'.repeat(2000), /manifest.sig is 2000 bytes, over the 1024 limit/],
    ];
    for (const [value, msg] of cases) {
      m[1]!.data = Buffer.from(typeof value === 'string' ? value : JSON.stringify(value));
      await refused(open(await repack(m)), 'EIMAGE', msg);
    }
  });

  it('refuses manifest.sig anywhere but right after the manifest, and as a listed entry', async () => {
    const m = await members(await image(alice.key));
    const moved = await repack([m[0]!, m[2]!, m[1]!, ...m.slice(3)]);
    await refused(open(moved), 'EIMAGE', /is corrupt: entry 2 is manifest.sig, the manifest says tasks\/42\/pages.bin/);
    assert.throws(() => parseManifest(Buffer.from(JSON.stringify({ ...parseManifest(m[0]!.data), entries: [{ name: SIGNATURE_NAME, size: 1, sha256: '0'.repeat(64) }] }))),
      /manifest field entries\[0\] uses the reserved name manifest.sig/);
    await assert.rejects(writeImage(fresh(), header, [entry(SIGNATURE_NAME, 1)]), /reserved/);
  });
});

describe('keys and trust', { timeout: 30_000 }, () => {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 1024 });
  const rsaKey = fresh('key');
  const rsaPub = fresh('pub');
  writeFileSync(rsaKey, rsa.privateKey.export({ format: 'pem', type: 'pkcs8' }));
  writeFileSync(rsaPub, rsa.publicKey.export({ format: 'pem', type: 'spki' }));

  const fails = (fn: () => unknown, code: string, message: RegExp): void => {
    assert.throws(fn, (err: unknown) => err instanceof FerryError && err.code === code && message.test(err.message) && !err.message.includes('\n'));
  };

  it('takes only an Ed25519 private key to sign with', () => {
    assert.equal(fingerprint(signingKey(alice.key)), alice.keyId);
    const ko: KeyObject = generateKeyPairSync('ed25519').privateKey;
    assert.equal(signingKey(ko), ko);
    fails(() => signingKey(alice.pub), 'EKEY', /^sign key \S+ is not a private key in PEM \(PKCS#8, unencrypted\), as ferry keygen writes PREFIX.key$/);
    fails(() => signingKey(rsaKey), 'EKEY', /^sign key \S+ is an rsa key: ferry signs with Ed25519 keys/);
    fails(() => signingKey(join(dir, 'nope.key')), 'EKEY', /^cannot read sign key \S+: no such file$/);
    fails(() => signingKey(generateKeyPairSync('ed25519').publicKey), 'EKEY', /must be an Ed25519 private key/);
  });

  it('takes only Ed25519 public keys to trust, and at least one', () => {
    const empty = join(dir, 'empty-trust');
    mkdirSync(empty);
    fails(() => loadTrust(empty, '--trust'), 'EKEY', /^--trust \S+: the directory holds no .pub file, so no image could be trusted$/);
    fails(() => loadTrust(join(dir, 'nope'), '--trust'), 'EKEY', /^--trust \S+: cannot read it: no such file or directory$/);
    fails(() => loadTrust(alice.key, '--trust'), 'EKEY', /^trusted key \S+ is not a public key in PEM \(SPKI\)/);
    fails(() => loadTrust(rsaPub, 'image.trust'), 'EKEY', /^trusted key \S+ is an rsa key/);
    const mixed = join(dir, 'mixed-trust');
    mkdirSync(mixed);
    writeFileSync(join(mixed, 'a.pub'), readFileSync(alice.pub));
    writeFileSync(join(mixed, 'z.pub'), 'garbage');
    fails(() => loadTrust(mixed, '--trust'), 'EKEY', /^trusted key \S+z\.pub is not a public key/);
    assert.equal(restoreTrust(undefined, ''), undefined);
    assert.equal(restoreTrust(alice.pub, bob.pub)!.label, `--trust ${alice.pub}`);
    assert.equal(restoreTrust(undefined, bob.pub)!.label, `image.trust ${bob.pub}`);
    assert.equal(restoreTrust([generateKeyPairSync('ed25519').publicKey], '')!.keys.size, 1);
  });
});
