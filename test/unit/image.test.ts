/** Image format: manifest validation, writer/reader round trips, and every corruption case. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, constants, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import tar from 'tar-stream';
import { ChunkLoader, ChunkSource } from '../../src/image/chunks.js';
import { checkCompatibility, isChunked, parseManifest, type ChunkedEntry, type Manifest, type ManifestHeader, type ManifestHost } from '../../src/image/manifest.js';
import { openImage } from '../../src/image/reader.js';
import { tarHeader } from '../../src/image/tar-out.js';
import { CHUNK_BYTES, writeImage, type ImageEntry } from '../../src/image/writer.js';
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

  it('writes a file (O_DIRECT, chunks at their offsets) byte for byte as a pipe gets it, aligned chunks or not', async () => {
    // Chunks of aligned memory go straight to the disk; others (and any after one of them in
    // the same entry) through the staging buffer: every mix must give the same tar.
    const mix = `
      import { directBuffer } from '${join(process.cwd(), 'dist/src/image/direct.js')}';
      export const fill = (b, from) => { for (let i = 0; i < b.length; i++) b[i] = (from + i) * 7 & 255; return b; };
      const entry = (name, sizes) => ({ name, size: sizes.reduce((s, [n]) => s + n, 0), chunked: name.endsWith('.bin'), async produce(sink) {
        let at = 0;
        for (const [n, aligned] of sizes) { await sink(fill(aligned ? directBuffer(n) : Buffer.alloc(n), at)); at += n; }
      } });
      export const mix = () => [
        entry('a.json', [[300, false]]),
        entry('tasks/1/pages.bin', [[8192, true], [4096, true], [4096, false], [8192, true]]),
        entry('tasks/2/pages.bin', [[3 << 20, true], [1000, false], [513, true]]),
        entry('empty', []),
        entry('tasks/3/pages.bin', [[(1 << 20) + 512, false]]),
      ];`;
    const mod = join(dir, 'mix.mjs');
    writeFileSync(mod, mix);
    const path = join(dir, 'mix.tar');
    const { mix: make } = await import(mod) as { mix: () => ImageEntry[] };
    await writeImage(path, header, make());
    const w = spawnSync(process.execPath, ['--input-type=module', '-e', `
      import { writeImage } from '${join(process.cwd(), 'dist/src/image/writer.js')}';
      import { mix } from '${mod}';
      await writeImage('-', ${JSON.stringify(header)}, mix());`], { maxBuffer: 1 << 26 });
    assert.equal(w.status, 0, w.stderr.toString());
    const file = readFileSync(path);
    assert.equal(file.length, w.stdout.length, 'the same length');
    assert.ok(file.equals(w.stdout), 'the same bytes');
    const img = await openImage(path, { workDir: dir });
    assert.equal((await img.read('tasks/2/pages.bin')).length, (3 << 20) + 1513);
    await img.close();
  });

  it('makes tar headers as tar-stream does', async () => {
    const mtime = new Date(1_700_000_000_000);
    const pack = tar.pack();
    pack.entry({ name: 'tasks/42/pages.bin', size: 5, mtime, mode: 0o600 }, Buffer.from('hello'));
    pack.finalize();
    const chunks: Buffer[] = [];
    for await (const c of pack as AsyncIterable<Buffer>) chunks.push(c);
    assert.ok(tarHeader('tasks/42/pages.bin', 5, mtime).equals(Buffer.concat(chunks).subarray(0, 512)));
    // Past 8 GiB - 1 the size is base-256, as GNU tar writes it and the reader takes it.
    const big = tarHeader('x', 2 ** 34 + 3, mtime);
    assert.equal(big[124], 0x80);
    assert.equal(big.readUIntBE(130, 6), 2 ** 34 + 3);
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

/** Rewrites the manifest of the image at `path`: a new first member, the others as they are. */
async function editManifest(path: string, edit: (m: Manifest) => void): Promise<void> {
  const data = readFileSync(path);
  const size = parseInt(data.toString('latin1', 124, 136).replace(/\0.*$/, '').trim(), 8);
  const m = JSON.parse(data.toString('utf8', 512, 512 + size)) as Manifest;
  edit(m);
  const pack = tar.pack();
  const parts: Buffer[] = [];
  pack.on('data', (c: unknown) => parts.push(c as Buffer));
  pack.entry({ name: 'manifest.json', mode: 0o600 }, Buffer.from(JSON.stringify(m)));
  await new Promise((r) => setImmediate(r));
  writeFileSync(path, Buffer.concat([...parts, data.subarray(512 + Math.ceil(size / 512) * 512)]));
}

describe('chunked entries (page data)', { timeout: 60_000 }, () => {
  // Three chunks and a bit, produced in pieces that do not line up with them.
  const big = 3 * CHUNK_BYTES + 12_345;
  const chunkedEntries = (): ImageEntry[] => [entry('tree.json', 10), { ...entry('tasks/42/pages.bin', big, 1_000_000), chunked: true }, entry('odd', 513)];

  it('lists a sha256 per chunk, reads back whole and chunk by chunk', async () => {
    const path = join(dir, 'chunked.tar');
    const { manifest } = await writeImage(path, header, chunkedEntries());
    const e = manifest.entries[1] as ChunkedEntry;
    assert.ok(isChunked(e));
    assert.equal(e.chunkSize, CHUNK_BYTES);
    assert.equal(e.chunks.length, 4);
    const data = readFileSync(path);
    for (const lazyChunks of [false, true]) {
      const img = await openImage(path, { workDir: dir, lazyChunks });
      assert.deepEqual(img.manifest.entries, manifest.entries);
      const want = expected(big);
      assert.ok((await img.read('tasks/42/pages.bin')).equals(want));
      const src = img.pages('tasks/42/pages.bin');
      const got = Buffer.alloc(big);
      for (let off = 0; off < big;) {
        const v = src.view(off, 3_000_000);
        assert.ok(v.length > 0 && v.length <= 3_000_000);
        v.copy(got, off);
        off += v.length;
      }
      src.finish();
      assert.ok(got.equals(want));
      await img.close();
    }
    // Written to a pipe, the same bytes.
    const { offset } = (await openImage(path, { workDir: dir })).locate('odd');
    assert.equal(data.subarray(offset, offset + 3).toString('hex'), expected(3).toString('hex'));
  });

  it('refuses a flipped byte naming the chunk: in openImage, or as the chunk is read (lazyChunks)', async () => {
    const path = join(dir, 'chunk-flip.tar');
    await writeImage(path, header, chunkedEntries());
    const img = await openImage(path, { workDir: dir });
    const { offset } = img.locate('tasks/42/pages.bin');
    await img.close();
    const data = readFileSync(path);
    const at = offset + 2 * CHUNK_BYTES + 777; // chunk 2
    data[at] = data[at]! ^ 0x10;
    writeFileSync(path, data);
    const said = /chunk-flip.tar is corrupt: entry tasks\/42\/pages.bin chunk 2 has sha256 [0-9a-f]{12}… but the manifest says [0-9a-f]{12}…$/;
    await assert.rejects(openImage(path, { workDir: dir }), said);
    const lazy = await openImage(path, { workDir: dir, lazyChunks: true });
    try {
      const src = lazy.pages('tasks/42/pages.bin');
      // Chunks 0 and 1 are good; chunk 2 is refused by the time the source is finished.
      assert.throws(() => {
        for (let off = 0; off < big;) off += src.view(off, big).length;
        src.finish();
      }, said);
      await assert.rejects(lazy.read('tasks/42/pages.bin'), said);
      await assert.rejects(lazy.stream('tasks/42/pages.bin', () => {}), said);
    } finally {
      await lazy.close();
    }
  });

  it('reads chunks ahead on two lanes, with O_DIRECT, and hands out none that does not match its sha256', async () => {
    const path = join(dir, 'chunk-lanes.tar');
    // Written with O_DIRECT where the file system takes it: not in the page cache.
    await writeImage(path, header, chunkedEntries());
    const img = await openImage(path, { workDir: dir });
    const { offset, size } = img.locate('tasks/42/pages.bin');
    const e = img.manifest.entries[1] as ChunkedEntry;
    await img.close();
    const loader = new ChunkLoader(4, CHUNK_BYTES, 2);
    const fd = openSync(path, 'r');
    let direct = -1;
    try {
      direct = openSync(path, constants.O_RDONLY | constants.O_DIRECT);
    } catch { /* a file system without O_DIRECT: the lanes read through the page cache */ }
    try {
      for (let i = 0; !loader.ready; i++) {
        assert.ok(i < 500, 'the lanes start');
        await new Promise((r) => setTimeout(r, 10));
      }
      const read = (digests: readonly string[]): Buffer => {
        const src = new ChunkSource({ fd, directFd: direct, offset, size, chunkSize: e.chunkSize, digests }, loader, 'x.tar', 'pages', {});
        const got = Buffer.alloc(size);
        try {
          for (let off = 0; off < size;) {
            const v = src.view(off, 3_000_000);
            v.copy(got, off);
            off += v.length;
          }
          // Asked again out of order: chunk 1 after 3, then 0.
          assert.ok(src.view(CHUNK_BYTES + 5, 10).equals(got.subarray(CHUNK_BYTES + 5, CHUNK_BYTES + 15)));
          assert.ok(src.view(7, 10).equals(got.subarray(7, 17)));
        } finally {
          src.finish();
        }
        return got;
      };
      assert.ok(read(e.chunks).equals(expected(big)));
      // Chunk 2 said to be something else: chunks 0 and 1 come out whole, chunk 2 never.
      const lie = [...e.chunks];
      lie[2] = 'ab'.repeat(32);
      const src = new ChunkSource({ fd, directFd: direct, offset, size, chunkSize: e.chunkSize, digests: lie }, loader, 'x.tar', 'pages', {});
      assert.ok(src.view(0, CHUNK_BYTES).equals(expected(CHUNK_BYTES)));
      assert.ok(src.view(CHUNK_BYTES, CHUNK_BYTES).equals(expected(2 * CHUNK_BYTES).subarray(CHUNK_BYTES)));
      assert.throws(() => src.view(2 * CHUNK_BYTES, 1), /x.tar is corrupt: entry pages chunk 2 has sha256 [0-9a-f]{12}… but the manifest says abababababab…$/);
      assert.throws(() => src.view(2 * CHUNK_BYTES + 100, 1), /chunk 2 has sha256/, 'and not later either');
      src.finish();
      // The image cut inside the entry: refused as truncated, from the lanes too.
      const cut = new ChunkSource({ fd, directFd: direct, offset, size: size + 2 * CHUNK_BYTES, chunkSize: e.chunkSize, digests: [...e.chunks, 'ab'.repeat(32), 'ab'.repeat(32)] },
        loader, 'x.tar', 'pages', {});
      assert.throws(() => { for (let off = 0; ;) off += cut.view(off, CHUNK_BYTES).length; }, /x.tar is truncated inside entry pages/);
      cut.finish();
    } finally {
      await loader.close();
      closeSync(fd);
      if (direct >= 0) closeSync(direct);
    }
  });

  it('refuses a chunk list that lies about the entry, before reading any of it', async () => {
    const path = join(dir, 'chunk-lie.tar');
    await writeImage(path, header, chunkedEntries());
    const clean = readFileSync(path);
    const cases: Array<[string, (e: Record<string, unknown>) => void, RegExp]> = [
      ['one chunk too few', (e) => { (e.chunks as string[]).pop(); }, /entries\[1\]\.chunks must be a list of 4 sha256 .*is a list of 3/],
      ['one chunk too many', (e) => { (e.chunks as string[]).push('0'.repeat(64)); }, /entries\[1\]\.chunks must be a list of 4 sha256/],
      ['a bigger chunk size', (e) => { e.chunkSize = CHUNK_BYTES * 2; }, /entries\[1\]\.chunks must be a list of 2 sha256/],
      ['a size the chunks do not cover', (e) => { e.size = (e.size as number) + CHUNK_BYTES; }, /entries\[1\]\.chunks must be a list of 5 sha256/],
      ['chunk size 0', (e) => { e.chunkSize = 0; }, /entries\[1\]\.chunkSize is 0, must be a multiple of 4096/],
      ['chunk size not whole pages', (e) => { e.chunkSize = CHUNK_BYTES + 1; }, /entries\[1\]\.chunkSize/],
      ['chunk size over the bound', (e) => { e.chunkSize = 2 ** 30; }, /entries\[1\]\.chunkSize is 1073741824/],
      ['chunk size a string', (e) => { e.chunkSize = '4194304'; }, /entries\[1\]\.chunkSize/],
      ['chunks not a list', (e) => { e.chunks = { length: 4 }; }, /entries\[1\]\.chunks must be a list of 4 sha256 .*is an object/],
      ['a digest that is not hex', (e) => { (e.chunks as string[])[1] = 'Z'.repeat(64); }, /entries\[1\]\.chunks\[1\] is "Z/],
      ['a digest as a number', (e) => { (e.chunks as unknown[])[3] = 1; }, /entries\[1\]\.chunks\[3\] is 1/],
      ['both sha256 and chunks', (e) => { e.sha256 = '0'.repeat(64); }, /entries\[1\] has both sha256 and chunks/],
      ['chunks without chunkSize', (e) => { delete e.chunkSize; }, /entries\[1\]\.chunkSize is missing/],
    ];
    for (const [what, edit, said] of cases) {
      writeFileSync(path, clean);
      await editManifest(path, (m) => edit(m.entries[1] as unknown as Record<string, unknown>));
      for (const lazyChunks of [false, true]) {
        await assert.rejects(openImage(path, { workDir: dir, lazyChunks }), (err: Error & { code?: string }) => {
          assert.equal(err.code, 'EIMAGE', what);
          assert.match(err.message, /^image .*chunk-lie.tar is corrupt: manifest field /, what);
          assert.match(err.message, said, what);
          assert.ok(!err.message.includes('\n'), what);
          return true;
        }, what);
      }
    }
  });

  it('reads chunks of any allowed size, the largest and the smallest', async () => {
    const path = join(dir, 'chunk-sizes.tar');
    await writeImage(path, header, chunkedEntries());
    const clean = readFileSync(path);
    const body = expected(big);
    for (const size of [16 << 20, 4096]) {
      writeFileSync(path, clean);
      await editManifest(path, (m) => {
        const e = m.entries[1] as ChunkedEntry;
        e.chunkSize = size;
        e.chunks = Array.from({ length: Math.ceil(big / size) }, (_, i) => createHash('sha256').update(body.subarray(i * size, (i + 1) * size)).digest('hex'));
      });
      for (const lazyChunks of [false, true]) {
        const img = await openImage(path, { workDir: dir, lazyChunks });
        assert.ok((await img.read('tasks/42/pages.bin')).equals(body), `chunks of ${size}, lazy ${lazyChunks}`);
        await img.close();
      }
    }
  });

  it('reads an image whose page data has one sha256 for the whole entry (written before chunks)', async () => {
    const path = join(dir, 'whole.tar');
    await writeImage(path, header, entries()); // no entry chunked
    for (const lazyChunks of [false, true]) {
      const img = await openImage(path, { workDir: dir, lazyChunks });
      const src = img.pages('tasks/42/pages.bin');
      assert.ok(Buffer.from(src.view(0, 100_003)).equals(expected(100_003)));
      src.finish();
      await img.close();
    }
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

  it('takes pageDigests only as true, only in a version 6 manifest', () => {
    const chunked = (v: number, extra: Record<string, unknown>): unknown => ({ ...good(), formatVersion: v,
      entries: [{ name: 'p', size: 4096, chunkSize: 4096, chunks: ['a'.repeat(64)], ...extra }] });
    assert.equal((parse(chunked(6, { pageDigests: true })).entries[0] as ChunkedEntry).pageDigests, true);
    assert.equal((parse(chunked(5, {})).entries[0] as ChunkedEntry).pageDigests, undefined);
    assert.throws(() => parse(chunked(5, { pageDigests: true })), /entries\[0\]\.pageDigests is true, may only be true, in an image of version 6/);
    assert.throws(() => parse(chunked(6, { pageDigests: 1 })), /entries\[0\]\.pageDigests is 1/);
  });

  it('writes a paged entry: chunk digests of page digests, version 6, and verifies it', async () => {
    const data = Buffer.alloc(CHUNK_BYTES + 3 * 4096);
    for (let p = 0; p < data.length / 4096; p++) data.fill(p % 251, p * 4096, (p + 1) * 4096);
    const path = join(dir, 'paged.img');
    const { manifest } = await writeImage(path, header, [{ name: 'p', size: data.length, chunked: true, paged: true, produce: async (sink) => { await sink(data); } }]);
    assert.equal(manifest.formatVersion, 6);
    const e = manifest.entries[0] as ChunkedEntry;
    assert.equal(e.pageDigests, true);
    const pageSum = (b: Buffer): Buffer => createHash('sha256').update(b).digest();
    const want = (b: Buffer): string => createHash('sha256').update(Buffer.concat(
      Array.from({ length: b.length / 4096 }, (_, i) => pageSum(b.subarray(i * 4096, (i + 1) * 4096))))).digest('hex');
    assert.deepEqual(e.chunks, [want(data.subarray(0, CHUNK_BYTES)), want(data.subarray(CHUNK_BYTES))]);
    const img = await openImage(path, { workDir: dir, lazyChunks: true });
    const src = img.pages('p');
    for (let off = 0; off < data.length;) { const v = src.view(off, data.length - off); assert.deepEqual(v, data.subarray(off, off + v.length)); off += v.length; }
    src.finish();
    await img.close();
    // Any other image is still version 5.
    const plain = await writeImage(join(dir, 'plain.img'), header, [{ name: 'p', size: 4096, chunked: true, produce: async (sink) => { await sink(data.subarray(0, 4096)); } }]);
    assert.equal(plain.manifest.formatVersion, 5);
  });

  it('refuses another arch, missing CPU features, and another kernel build for an image without its vDSO', () => {
    const m = good();
    checkCompatibility(m, host);
    assert.throws(() => checkCompatibility(m, { ...host, kernelVersion: '#2 SMP' }), /an image without its kernel's vDSO \(vdso\.bin: older ferry versions did not write it\) needs the same kernel build/);
    assert.throws(() => checkCompatibility(m, { ...host, vdsoSha256: 'cd'.repeat(32) }), /same kernel build/);
    // With vdso.bin, another build is restore's to proxy (restore/vdso.ts).
    const carried = { ...m, entries: [...m.entries, { name: 'vdso.bin', size: 8192, sha256: 'ef'.repeat(32) }] };
    checkCompatibility(carried, { ...host, kernelRelease: '6.19.0', kernelVersion: '#2 SMP', vdsoSha256: 'cd'.repeat(32) });
    assert.throws(() => checkCompatibility(carried, { ...host, arch: 'aarch64' }), /made on x86_64/);
    assert.throws(() => checkCompatibility(m, { ...host, arch: 'aarch64' }), /made on x86_64/);
    assert.throws(() => checkCompatibility(m, { ...host, xfeatures: '0x7' }), /XCR0 bits 5, 6, 7/);
    checkCompatibility({ ...m, host: { ...host, xfeatures: '0x7' } }, host); // fewer features: fine
  });
});
