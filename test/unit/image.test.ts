/** Image format: manifest validation, writer/reader round trips, and every corruption case. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import tar from 'tar-stream';
import { checkCompatibility, parseManifest, type Manifest, type ManifestHeader, type ManifestHost } from '../../src/image/manifest.js';
import { openImage } from '../../src/image/reader.js';
import { writeImage, type ImageEntry } from '../../src/image/writer.js';
import { closeInheritedFds } from '../../src/proc/inherited.js';

// What it spawns starts with descriptors 0-2 only, whatever the shell leaked (src/proc/inherited.ts).
closeInheritedFds();

const dir = mkdtempSync(join(tmpdir(), 'ferry-image-test-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const host: ManifestHost = {
  kernelRelease: '6.18.0', kernelVersion: '#1 SMP', arch: 'x86_64', vdsoSha256: 'ab'.repeat(32),
  vdsoLayout: [{ name: '[vdso]', size: 8192 }], xfeatures: '0xe7', xstateSize: 2432,
};
const header: ManifestHeader = { ferryVersion: '0.1.0', createdAt: new Date(0).toISOString(), host, root: { pid: 42 }, tasks: [42] };

/** An entry producing `size` deterministic bytes in chunks of `chunk`, reusing one buffer. */
function entry(name: string, size: number, chunk = 1000): ImageEntry {
  return {
    name, size,
    async produce(sink) {
      const buf = Buffer.alloc(chunk);
      for (let off = 0; off < size; off += chunk) {
        const n = Math.min(chunk, size - off);
        for (let i = 0; i < n; i++) buf[i] = (off + i) * 7 & 0xff;
        await sink(buf.subarray(0, n));
      }
    },
  };
}
const expected = (size: number): Buffer => Buffer.from(Array.from({ length: size }, (_, i) => i * 7 & 0xff));
const entries = (): ImageEntry[] => [entry('a.json', 0), entry('tasks/42/pages.bin', 100_003, 4096), entry('odd', 513)];

describe('image writer and reader', { timeout: 60_000 }, () => {
  it('round-trips through a file; the manifest comes first with every size and sha256', async () => {
    const path = join(dir, 'file.tar');
    const { manifest } = await writeImage(path, header, entries());
    assert.equal(manifest.entries.length, 3);
    const img = await openImage(path, { workDir: dir });
    assert.deepEqual(img.manifest.entries, manifest.entries);
    assert.deepEqual(await img.read('tasks/42/pages.bin'), expected(100_003));
    assert.deepEqual(await img.read('odd'), expected(513));
    assert.equal((await img.read('a.json')).length, 0);
    const loc = img.locate('odd');
    assert.equal(readFileSync(path).subarray(loc.offset, loc.offset + 3).toString('hex'), expected(3).toString('hex'));
    await img.close();
    // A standard tar reader agrees, and manifest.json is the first member.
    const names: string[] = [];
    const ex = tar.extract();
    ex.on('entry', (h, s, next) => { names.push(h.name); s.resume(); s.on('end', next); });
    await new Promise<void>((r) => { ex.on('finish', () => r()); ex.end(readFileSync(path)); });
    assert.deepEqual(names, ['manifest.json', 'a.json', 'tasks/42/pages.bin', 'odd']);
  });

  it('writes the same image to a pipe (two passes) and reads it back from stdin', async () => {
    const script = `
      import { writeImage } from '${join(process.cwd(), 'dist/src/image/writer.js')}';
      const mk = (name, size) => ({ name, size, async produce(sink) { const b = Buffer.alloc(size); for (let i = 0; i < size; i++) b[i] = i * 7 & 255; await sink(b); } });
      await writeImage('-', ${JSON.stringify(header)}, [mk('x', 5000), mk('y', 1)]);`;
    const w = spawnSync(process.execPath, ['--input-type=module', '-e', script], { maxBuffer: 1 << 24 });
    assert.equal(w.status, 0, w.stderr.toString());
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', `
      import { openImage } from '${join(process.cwd(), 'dist/src/image/reader.js')}';
      const img = await openImage('-', { workDir: '${dir}' });
      process.stdout.write(JSON.stringify({ names: img.manifest.entries.map((e) => e.name), x: (await img.read('x')).toString('hex') }));`], { input: w.stdout });
    assert.equal(r.status, 0, r.stderr.toString());
    const got = JSON.parse(r.stdout.toString()) as { names: string[]; x: string };
    assert.deepEqual(got.names, ['x', 'y']);
    assert.equal(got.x, expected(5000).toString('hex'));
  });

  it('refuses a flipped byte, naming the entry', async () => {
    const path = join(dir, 'flip.tar');
    await writeImage(path, header, entries());
    const data = readFileSync(path);
    const img = await openImage(path, { workDir: dir });
    const { offset } = img.locate('tasks/42/pages.bin');
    await img.close();
    data[offset + 5000] = data[offset + 5000]! ^ 1;
    writeFileSync(path, data);
    await assert.rejects(openImage(path, { workDir: dir }), /flip.tar is corrupt: entry tasks\/42\/pages.bin has sha256/);
  });

  it('refuses a truncated image at any cut', async () => {
    const path = join(dir, 'cut.tar');
    await writeImage(path, header, entries());
    const data = readFileSync(path);
    for (const cut of [100, 700, 5000, data.length - 2000]) {
      writeFileSync(path, data.subarray(0, cut));
      await assert.rejects(openImage(path, { workDir: dir }), /is (truncated|corrupt|not a ferry image)/, `cut at ${cut}`);
    }
  });

  it('refuses a producer that lies about its size and leaves no file', async () => {
    const path = join(dir, 'short.tar');
    await assert.rejects(writeImage(path, header, [{ ...entry('x', 10), size: 11 }]), /cannot write image .*produced 10 bytes, expected 11/);
    assert.ok(!existsSync(path));
  });

  it('reports an unwritable path in one line and leaves nothing', async () => {
    await assert.rejects(writeImage('/nonexistent-dir/x.tar', header, entries()), /cannot write image \/nonexistent-dir\/x.tar: .*ENOENT/);
  });

  it('refuses a missing image with a plain message', async () => {
    await assert.rejects(openImage(join(dir, 'nope.tar'), { workDir: dir }), /cannot read image .*nope.tar: no such file/);
  });
});

describe('manifest', { timeout: 30_000 }, () => {
  const good = (): Manifest => ({ format: 'ferry-image', formatVersion: 1, ...header, entries: [{ name: 'x', size: 1, sha256: 'a'.repeat(64) }] });
  const parse = (m: unknown): Manifest => parseManifest(Buffer.from(JSON.stringify(m)));

  it('accepts a good manifest and names the bad field otherwise', () => {
    assert.equal(parse(good()).root.pid, 42);
    assert.throws(() => parse({ ...good(), format: 'tar' }), /format .*not a ferry image/);
    assert.throws(() => parse({ ...good(), formatVersion: 9 }), /formatVersion is 9/);
    assert.throws(() => parse({ ...good(), root: { pid: -1 } }), /root.pid/);
    assert.throws(() => parse({ ...good(), entries: [{ name: '../etc/passwd', size: 1, sha256: 'a'.repeat(64) }] }), /not allowed/);
    assert.throws(() => parse({ ...good(), entries: [{ name: 'x', size: 1, sha256: 'zz' }] }), /entries\[0\]/);
    assert.throws(() => parseManifest(Buffer.from('{not json')), /not valid JSON/);
  });

  it('refuses another kernel build, another arch, missing CPU features', () => {
    const m = good();
    checkCompatibility(m, host);
    assert.throws(() => checkCompatibility(m, { ...host, kernelVersion: '#2 SMP' }), /restore needs the same kernel build/);
    assert.throws(() => checkCompatibility(m, { ...host, vdsoSha256: 'cd'.repeat(32) }), /same kernel build/);
    assert.throws(() => checkCompatibility(m, { ...host, arch: 'aarch64' }), /made on x86_64/);
    assert.throws(() => checkCompatibility(m, { ...host, xfeatures: '0x7' }), /XCR0 bits 5, 6, 7/);
    checkCompatibility({ ...m, host: { ...host, xfeatures: '0x7' } }, host); // fewer features: fine
  });
});
