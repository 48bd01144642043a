/** Image format: manifest validation, writer/reader round trips, and every corruption case. */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, constants, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import tar from 'tar-stream';
import { chunkDigest, chunkDigestKnown, ChunkLoader, ChunkSource, knownDigests, pageDigests, type ImagePiece } from '../../src/image/chunks.js';
import { FEATURES, requiredFeatures, type FeatureProbe } from '../../src/image/features.js';
import { checkCompatibility, FORMAT_VERSION, isChunked, parseManifest, type ChunkedEntry, type Manifest, type ManifestHeader, type ManifestHost } from '../../src/image/manifest.js';
import type { FileRecord, TaskRecord, TreeRecord } from '../../src/image/records.js';
import { directBuffer, directReady, dropWarm, takeWarm, warmBuffers } from '../../src/image/direct.js';
import { openImage, warmChunkBuffers, type ImageOverlay } from '../../src/image/reader.js';
import { tarHeader, TarOut } from '../../src/image/tar-out.js';
import { CHUNK_BYTES, HashPool, PAGED_CHUNK_BYTES, writeImage, type HeldDigests, type ImageEntry } from '../../src/image/writer.js';
import { TAG_PAGES, TAG_RAW, TAG_REF } from '../../src/migrate/frames.js';
import { PreCopyReceiver } from '../../src/migrate/page-store.js';
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

/**
 * The image file at `path` holds the very bytes `writeImage('-')` streams, in another node, of
 * the entries module `mod` exports as `name` (header: the tests' `header`).
 */
function sameAsStreamed(path: string, mod: string, name: string): void {
  const w = spawnSync(process.execPath, ['--input-type=module', '-e', `
    import { writeImage } from '${join(process.cwd(), 'dist/src/image/writer.js')}';
    import { ${name} } from '${mod}';
    await writeImage('-', ${JSON.stringify(header)}, ${name}());`], { maxBuffer: 1 << 26 });
  assert.equal(w.status, 0, w.stderr.toString());
  const file = readFileSync(path);
  assert.equal(file.length, w.stdout.length, 'the same length');
  assert.ok(file.equals(w.stdout), 'the same bytes');
}

describe('image writer and reader', { timeout: 60_000 }, () => {
  it('hashes on the hash pool (libuv\'s threads) to the same digests as on the JS thread, a chunk cut across hashes and a big whole entry included', async () => {
    // Chunks of 3 MiB + 17 bytes cut every CHUNK_BYTES hash in two or three updates, which the
    // pool takes one after another per hash; 300 000 bytes whole are past INLINE_HASH_BYTES.
    const made = (): ImageEntry[] => [
      { ...entry('tasks/42/pages.bin', 2 * CHUNK_BYTES + 12_345, 3 * 1024 * 1024 + 17), chunked: true },
      entry('big.bin', 300_000, 70_000), entry('odd', 513),
    ];
    const inline = await writeImage(join(dir, 'inline.tar'), header, made());
    const pool = new HashPool(2);
    await pool.start();
    assert.ok(pool.running, 'the addon hashes here');
    const path = join(dir, 'pool.tar');
    try {
      const pooled = await writeImage(path, header, made(), { hashPool: pool });
      assert.deepEqual(pooled.manifest.entries, inline.manifest.entries);
      const chunks = pooled.manifest.entries.find((e) => e.name === 'tasks/42/pages.bin');
      assert.ok(chunks !== undefined && isChunked(chunks) && chunks.chunks.length === 3, 'three chunk digests');
      const last = Buffer.from(Array.from({ length: 12_345 }, (_, i) => (2 * CHUNK_BYTES + i) * 7 & 0xff));
      assert.equal(chunks.chunks[2], createHash('sha256').update(last).digest('hex'), 'the last chunk\'s digest is its bytes\' sha256');
    } finally {
      await pool.close();
    }
    const img = await openImage(path, { workDir: dir });
    assert.deepEqual(await img.read('big.bin'), expected(300_000), 'read back and verified');
    await img.close();
  });

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
    const { mix: make, fill } = await import(mod) as { mix: () => ImageEntry[]; fill: (b: Buffer, from: number) => Buffer };
    await writeImage(path, header, make());
    sameAsStreamed(path, mod, 'mix');
    const img = await openImage(path, { workDir: dir });
    assert.equal((await img.read('tasks/2/pages.bin')).length, (3 << 20) + 1513);
    // The data of every entry of 1 MiB or more starts on a 4 KiB boundary (O_DIRECT writes
    // and reads off one take the disk's slow path), in the file and the stream alike (the same
    // bytes, above), behind pax padding that tar itself ignores; smaller entries follow on.
    const located = ['a.json', 'tasks/1/pages.bin', 'tasks/2/pages.bin', 'empty', 'tasks/3/pages.bin'].map((n) => img.locate(n).offset);
    await img.close();
    assert.deepEqual(located.map((o, i) => i === 2 || i === 4 ? o % 4096 : -1), [-1, -1, 0, -1, 0]);
    assert.notEqual(located[1]! % 4096, 0, 'a small entry is not moved');
    const listed = spawnSync('tar', ['tvf', path], { encoding: 'utf8' });
    assert.equal(listed.status, 0, listed.stderr);
    assert.deepEqual(listed.stdout.trim().split('\n').map((l) => l.split(/\s+/).at(-1)),
      ['manifest.json', 'a.json', 'tasks/1/pages.bin', 'tasks/2/pages.bin', 'empty', 'tasks/3/pages.bin']);
    const extracted = join(dir, 'mix-x');
    mkdirSync(extracted);
    assert.equal(spawnSync('tar', ['xf', path, '-C', extracted]).status, 0);
    assert.ok(readFileSync(join(extracted, 'tasks/3/pages.bin')).equals(fill(Buffer.alloc((1 << 20) + 512), 0)));
  });

  it('gathers a small tar on an O_DIRECT file and writes it whole, zeros where a bigger one was before', async () => {
    // A tar of at most 1 MiB on a direct descriptor is gathered in the staging buffer the last
    // one left (tar-out.ts): the holes must read as zeros, whatever that one wrote there.
    const small = `
      const entry = (name, n, v) => ({ name, size: n, chunked: name.endsWith('.bin'), async produce(sink) { await sink(Buffer.alloc(n, v)); } });
      export const small = () => [entry('a.json', 3, 0x61), entry('tasks/1/pages.bin', 4096 * 3, 0x11), entry('b', 513, 0x62), entry('empty', 0, 0)];`;
    const mod = join(dir, 'small.mjs');
    writeFileSync(mod, small);
    const { small: make } = await import(mod) as { small: () => ImageEntry[] };
    await writeImage(join(dir, 'full.tar'), header, [{ name: 'full.bin', size: 900 * 1024, produce: async (sink) => { await sink(Buffer.alloc(900 * 1024, 0xab)); } }]);
    const path = join(dir, 'small.tar');
    await writeImage(path, header, make());
    sameAsStreamed(path, mod, 'small');
    const img = await openImage(path, { workDir: dir });
    assert.equal((await img.read('b')).toString(), 'b'.repeat(513));
    await img.close();
    // Gathered only while it fits the staging buffer, and only on a direct descriptor.
    const fd = openSync(join(dir, 'direct.tmp'), constants.O_WRONLY | constants.O_CREAT | constants.O_DIRECT, 0o600);
    try {
      const gathered = new TarOut(fd, true, true, 8192, undefined);
      assert.deepEqual([gathered.gathers, gathered.direct], [true, false]);
      gathered.releaseStaging();
      const big = new TarOut(fd, true, true, 2 << 20, undefined);
      assert.deepEqual([big.gathers, big.direct], [false, true]);
      big.releaseStaging();
      assert.equal(new TarOut(fd, true, false, 8192, undefined).gathers, false);
    } finally {
      closeSync(fd);
    }
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

  it('reads chunks into buffers faulted in ahead (warmChunkBuffers): the loader\'s slots are the warm ones, and what they hand out is verified as ever', async () => {
    const path = join(dir, 'chunked-warm.tar');
    await writeImage(path, header, chunkedEntries());
    warmChunkBuffers(CHUNK_BYTES);
    try {
      const img = await openImage(path, { workDir: dir, lazyChunks: true });
      // The loader (12 MiB of chunks: more than 8) took one warm buffer for each of the
      // image's four chunks, no more (a slot is faulted in whole: reader.ts); of the other
      // three one is a chunk source's own, for a restore that reads without the loader
      // (keepInPlace).
      for (let i = 0; i < 3; i++) {
        const left = takeWarm(CHUNK_BYTES);
        assert.ok(left !== undefined && left.length === CHUNK_BYTES && left.every((b) => b === 0), 'three warm buffers left, zeroed');
      }
      assert.equal(takeWarm(1), undefined, 'each warm buffer is taken once');
      const src = img.pages('tasks/42/pages.bin');
      const got = Buffer.alloc(big);
      for (let off = 0; off < big;) {
        const v = src.view(off, big);
        v.copy(got, off);
        off += v.length;
      }
      src.finish();
      assert.ok(got.equals(expected(big)));
      await img.close();
    } finally {
      dropWarm();
    }
  });

  it('takes buffers warmed ahead before it makes new ones: the smallest that holds the bytes, zeroed, aligned, each once; dropWarm lets go of the rest', () => {
    try {
      // Faulted in as they are made: 32 MiB of them are about 32 MiB more resident, where 32
      // MiB of new buffers are address space only (in a process of its own: this one's
      // collector frees tens of MiB at any time).
      const grown = (make: string): number => {
        const r = spawnSync(process.execPath, ['--input-type=module', '-e', `
          import { directBuffer, warmBuffers } from '${join(process.cwd(), 'dist/src/image/direct.js')}';
          const before = process.memoryUsage.rss();
          ${make};
          console.log(process.memoryUsage.rss() - before);`], { encoding: 'utf8', timeout: 30_000 });
        assert.equal(r.status, 0, r.stderr);
        return Number(r.stdout.trim());
      };
      const warmed = grown('warmBuffers(16, 2 << 20)');
      const fresh = grown('const keep = Array.from({ length: 16 }, () => directBuffer(2 << 20)); globalThis.keep = keep');
      assert.ok(warmed >= 24 << 20 && fresh < 8 << 20, `resident: ${warmed} bytes more warmed, ${fresh} new`);
      warmBuffers(2, 1 << 20);
      warmBuffers(1, 64 << 10);
      const small = directBuffer(4096);
      assert.equal(small.length, 4096);
      assert.equal(small.buffer.byteLength, 64 << 10, 'the 64 KiB one');
      assert.ok(directReady(small), 'aligned for O_DIRECT');
      const a = takeWarm(1 << 20)!, b = directBuffer(1 << 20);
      assert.equal(a.length, 1 << 20);
      assert.equal(b.length, 1 << 20);
      // Cut from one slab (huge pages can back it), side by side: none overlaps another.
      assert.equal(a.buffer, b.buffer, 'one slab for one warmBuffers call');
      assert.equal(Math.abs(a.byteOffset - b.byteOffset), 1 << 20);
      assert.ok(directReady(a) && directReady(b));
      assert.ok(a.every((x) => x === 0) && b.every((x) => x === 0));
      assert.equal(takeWarm(1), undefined);
      assert.equal(directBuffer(8192).buffer.byteLength, 64 << 10, 'a new one when none is left');
      warmBuffers(1, 4096);
      dropWarm();
      assert.equal(takeWarm(1), undefined);
    } finally {
      dropWarm();
    }
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

  it('reads an entry whose pages a migration\'s page store holds on the lanes, and hands out no page of the store that does not match', async () => {
    // A pre-copy spool (migrate/page-store.ts): pages of the entry sent in rounds are holes in
    // it, read from the store; runs that cross chunks and pages, one where a later round wrote
    // another page over the one the image has.
    const size = 3 * CHUNK_BYTES + 5 * 4096;
    const path = join(dir, 'overlay-src.tar');
    await writeImage(path, header, [entry('tree.json', 10), { ...entry('tasks/42/pages.bin', size, 65536), chunked: true, paged: true }, entry('odd', 513)]);
    const data = readFileSync(path);
    const src = await openImage(path, { workDir: dir });
    const { offset } = src.locate('tasks/42/pages.bin');
    const e = src.manifest.entries[1] as ChunkedEntry;
    await src.close();
    assert.equal(e.pageDigests, true);
    const runs: Array<[number, number]> = [[3, 5], [256, 700], [1020, 8], [1500, 600], [2200, 1]]; // [page of the entry, pages]
    // 'changed': a later round wrote page 1600 anew (its digest replaced with the page's);
    // 'tampered': something else wrote into page 1600 in the store after the rounds (its
    // digest, taken as it arrived, no longer says what is there: the store is no longer
    // intact and the pages are hashed as they are read).
    type Case = 'same' | 'changed' | 'tampered';
    const spoolOf = (how: Case): { spool: string; fd: number; overlay: ImageOverlay; early: Map<number, Uint8Array> } => {
      const changed = how === 'changed';
      const d = mkdtempSync(join(dir, 'overlay-'));
      const store = new PreCopyReceiver(d, 'the sender 10.0.0.1:5000');
      const spool = join(d, 'image.tar');
      const fd = openSync(spool, 'w+');
      let at = 0;
      const write = (b: Buffer): void => { writeSync(fd, b, 0, b.length, at); at += b.length; };
      const skip = (n: number): void => { at += n; };
      const addr = (page: number): bigint => 0x10000000n + BigInt(page) * 4096n;
      const frame = (tag: number, page: number, count: number, body = Buffer.alloc(0)): Buffer => {
        const h = Buffer.alloc(17);
        h.writeUInt8(tag, 0);
        h.writeUInt32BE(42, 1);
        h.writeBigUInt64BE(addr(page), 5);
        h.writeUInt32BE(count, 13);
        return Buffer.concat([h, body]);
      };
      // The rounds, in reverse (so the store's slots are not in the image's order).
      for (const [page, count] of [...runs].reverse()) {
        for (let p = 0; p < count; p += 64) {
          const n = Math.min(64, count - p);
          store.handle(frame(TAG_PAGES, page + p, n, data.subarray(offset + (page + p) * 4096, offset + (page + p + n) * 4096)), write, skip);
        }
      }
      if (changed) store.handle(frame(TAG_PAGES, 1600, 1, Buffer.alloc(4096, 0x5a)), write, skip); // chunk 6 (PAGED_CHUNK_BYTES)
      let done = 0;
      for (const [page, count] of runs) {
        store.handle(Buffer.concat([Buffer.from([TAG_RAW]), data.subarray(done, offset + page * 4096)]), write, skip);
        store.handle(frame(TAG_REF, page, count), write, skip);
        done = offset + (page + count) * 4096;
      }
      store.handle(Buffer.concat([Buffer.from([TAG_RAW]), data.subarray(done)]), write, skip);
      const overlay = store.overlay();
      overlay.adopt();
      store.close();
      assert.equal(overlay.intact!(), true, 'intact after its own writes and its unlink');
      const [p1600] = overlay.pieces!(fd, offset + 1600 * 4096, 4096);
      assert.ok(p1600 !== undefined && p1600.fd !== fd && p1600.digests !== undefined, 'page 1600 is in the store, with its digest');
      assert.ok(Buffer.from(p1600.digests).equals(createHash('sha256').update(changed ? Buffer.alloc(4096, 0x5a) : data.subarray(offset + 1600 * 4096, offset + 1601 * 4096)).digest()));
      // Each store page's digest as the store gave it before anything else wrote there.
      const early = new Map<number, Uint8Array>();
      for (let p = 0; p < size / 4096; p++) {
        const [q] = overlay.pieces!(fd, offset + p * 4096, 4096);
        if (q?.digests !== undefined) early.set(q.at, Buffer.from(q.digests));
      }
      if (how === 'tampered') {
        const w = openSync(`/proc/self/fd/${p1600.fd}`, 'r+');
        try {
          writeSync(w, Buffer.alloc(8, 0x5a), 0, 8, p1600.at + 100);
        } finally {
          closeSync(w);
        }
        assert.equal(overlay.intact!(), false);
        assert.equal(overlay.pieces!(fd, offset + 1600 * 4096, 4096)[0]!.digests, undefined, 'no digests once it is not intact');
      }
      return { spool, fd, overlay, early };
    };
    const body = expected(size);
    assert.equal(e.chunkSize, PAGED_CHUNK_BYTES);
    const PC = PAGED_CHUNK_BYTES; // the changed page, 1600, is in chunk 6
    const said = /is corrupt: entry (pages|tasks\/42\/pages.bin) chunk 6 has sha256 [0-9a-f]{12}… but the manifest says [0-9a-f]{12}…$/;
    // Through openImage: the loader's lanes read the store's pieces (once they run).
    for (const how of ['same', 'changed', 'tampered'] as const) {
      const changed = how !== 'same';
      const { spool, fd, overlay } = spoolOf(how);
      closeSync(fd);
      const img = await openImage(spool, { workDir: dir, lazyChunks: true, overlay });
      try {
        const pages = img.pages('tasks/42/pages.bin');
        const got = Buffer.alloc(size);
        const readAll = (): void => {
          for (let off = 0; off < size;) off += pages.view(off, size).copy(got, off);
        };
        if (changed) assert.throws(readAll, said);
        else {
          readAll();
          assert.ok(got.equals(body));
        }
        pages.finish();
      } finally {
        await img.close();
      }
    }
    // Straight on two lanes that run: every chunk read from its pieces there.
    const loader = new ChunkLoader(4, CHUNK_BYTES, 2, { pieces: 2 * (CHUNK_BYTES / 4096) + 3 });
    const twins = new Map<number, number>();
    const twin = (f: number): number => {
      if (!twins.has(f)) {
        try {
          twins.set(f, openSync(`/proc/self/fd/${f}`, constants.O_RDONLY | constants.O_DIRECT));
        } catch {
          twins.set(f, -1); // a file system without O_DIRECT: through the page cache
        }
      }
      return twins.get(f)!;
    };
    try {
      for (let i = 0; !loader.ready; i++) {
        assert.ok(i < 500, 'the lanes start');
        await new Promise((r) => setTimeout(r, 10));
      }
      for (const how of ['same', 'changed', 'tampered'] as const) {
        const changed = how !== 'same';
        const { fd, overlay, early } = spoolOf(how);
        // The digests handed out before the store was written to (as for a chunk asked for
        // just before: the check after its read must see the store changed and hash it whole).
        const withEarly = (p: ImagePiece): ImagePiece => {
          if (p.fd === fd || p.len % 4096 !== 0) return p;
          const d = Array.from({ length: p.len / 4096 }, (_, k) => early.get(p.at + k * 4096));
          return d.every((x) => x !== undefined) ? { ...p, digests: Buffer.concat(d) } : p;
        };
        const pieces = (pos: number, len: number): ImagePiece[] => overlay.pieces!(fd, pos, len).map((p) => ({ ...withEarly(p), direct: twin(p.fd) }));
        const at = { fd, offset, size, chunkSize: e.chunkSize, digests: e.chunks, paged: true, read: overlay.read, pieces, intact: overlay.intact!.bind(overlay) };
        const pages = new ChunkSource(at, loader, 'x.tar', 'pages', {});
        try {
          assert.ok(pages.view(0, PC).equals(body.subarray(0, PC)));
          if (changed) {
            assert.throws(() => pages.view(6 * PC, 1), said);
            assert.ok(pages.view(8 * PC + 3, size).equals(body.subarray(8 * PC + 3, 9 * PC)));
          } else {
            for (let off = CHUNK_BYTES; off < size;) {
              const v = pages.view(off, size);
              assert.ok(v.equals(body.subarray(off, off + v.length)), `at ${off}`);
              off += v.length;
            }
          }
        } finally {
          pages.finish();
          for (const [f, d] of twins) if (f !== fd && d >= 0) closeSync(d);
          twins.clear();
          overlay.close();
          closeSync(fd);
        }
      }
    } finally {
      await loader.close();
    }
  });

  it('gives each page\'s sha256, the last piece shorter, where it is asked (pageDigests: the addon, or JavaScript without it)', () => {
    const data = Buffer.from(new SharedArrayBuffer(3 * 4096 + 100)); // as a loader's slot is
    for (let i = 0; i < data.length; i++) data[i] = (i * 31) & 0xff;
    const want = Buffer.concat([0, 1, 2, 3].map((p) => createHash('sha256').update(data.subarray(p * 4096, (p + 1) * 4096)).digest()));
    assert.ok(pageDigests(data).equals(want));
    const out = Buffer.alloc(7 + want.length + 5, 0xcc);
    pageDigests(data, out, 7);
    assert.ok(out.subarray(7, 7 + want.length).equals(want));
    assert.ok(out.subarray(0, 7).every((b) => b === 0xcc) && out.subarray(7 + want.length).every((b) => b === 0xcc), 'nothing written around them');
    assert.equal(pageDigests(Buffer.alloc(0)).length, 0);
  });

  it('never uses a slot again once a lane did not answer in time: the chunks are read on the JS thread', async () => {
    const path = join(dir, 'chunk-stuck.tar');
    await writeImage(path, header, chunkedEntries());
    const img = await openImage(path, { workDir: dir });
    const { offset, size } = img.locate('tasks/42/pages.bin');
    const e = img.manifest.entries[1] as ChunkedEntry;
    await img.close();
    // A lane stuck in a read: read(2) of an empty FIFO (offset -1: at its position).
    const fifo = join(dir, 'stuck.fifo');
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
    const stuck = openSync(fifo, constants.O_RDWR);
    const fd = openSync(path, 'r');
    const loader = new ChunkLoader(2, CHUNK_BYTES, 1, { waitMs: 200 });
    try {
      for (let i = 0; !loader.ready; i++) {
        assert.ok(i < 500, 'the lane starts');
        await new Promise((r) => setTimeout(r, 10));
      }
      assert.ok(loader.submit(0, stuck, -1, 4096, -1));
      assert.throws(() => loader.take(0), /did not answer within 0.2 s/);
      assert.equal(loader.broken, true);
      assert.equal(loader.ready, false);
      assert.throws(() => loader.take(1), /stopped answering/);
      assert.throws(() => loader.submit(1, fd, offset, 4096, -1), /stopped answering/);
      const src = new ChunkSource({ fd, offset, size, chunkSize: e.chunkSize, digests: e.chunks }, loader, 'x.tar', 'pages', {});
      const v = src.view(5, 4096);
      assert.ok(v.equals(expected(4101).subarray(5)));
      // The lane goes on: it writes into slot 0, never into what was handed out.
      writeSync(stuck, Buffer.alloc(4096, 0xee));
      for (let i = 0; loader.slots[0]![0] !== 0xee; i++) {
        assert.ok(i < 500, 'the lane reads');
        await new Promise((r) => setTimeout(r, 10));
      }
      assert.ok(v.equals(expected(4101).subarray(5)));
      assert.notEqual(v.buffer, loader.slots[0]!.buffer);
      const got = Buffer.alloc(size);
      for (let off = 0; off < size;) off += src.view(off, size).copy(got, off);
      assert.ok(got.equals(expected(size)));
      src.finish();
    } finally {
      await loader.close();
      closeSync(fd);
      closeSync(stuck);
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

describe('a stream\'s writes (TarOut)', { timeout: 30_000 }, () => {
  it('a progress callback that throws fails that write and every later one; none is left waiting', async () => {
    const path = join(dir, 'tarout.fifo');
    spawnSync('mkfifo', [path]);
    const reader = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
    const fd = openSync(path, constants.O_WRONLY);
    let calls = 0;
    const out = new TarOut(fd, false, false, 4096, () => { if (++calls === 2) throw new Error('progress failed'); });
    // Queued in one turn: one writev(2) for the three, then the callbacks.
    const writes = [0, 1, 2].map((i) => out.write(Buffer.alloc(512, i), 0));
    const results = await Promise.allSettled(writes);
    assert.deepEqual(results.map((r) => r.status), ['fulfilled', 'rejected', 'rejected']);
    await assert.rejects(out.write(Buffer.alloc(512), 0), /progress failed/);
    await out.settled();
    closeSync(fd);
    closeSync(reader);
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
    const data = Buffer.alloc(PAGED_CHUNK_BYTES + 3 * 4096);
    for (let p = 0; p < data.length / 4096; p++) data.fill(p % 251, p * 4096, (p + 1) * 4096);
    const path = join(dir, 'paged.img');
    const { manifest } = await writeImage(path, header, [{ name: 'p', size: data.length, chunked: true, paged: true, produce: async (sink) => { await sink(data); } }]);
    assert.equal(manifest.formatVersion, 6);
    const e = manifest.entries[0] as ChunkedEntry;
    assert.equal(e.pageDigests, true);
    const pageSum = (b: Buffer): Buffer => createHash('sha256').update(b).digest();
    const want = (b: Buffer): string => createHash('sha256').update(Buffer.concat(
      Array.from({ length: b.length / 4096 }, (_, i) => pageSum(b.subarray(i * 4096, (i + 1) * 4096))))).digest('hex');
    assert.equal(e.chunkSize, PAGED_CHUNK_BYTES);
    assert.deepEqual(e.chunks, [want(data.subarray(0, PAGED_CHUNK_BYTES)), want(data.subarray(PAGED_CHUNK_BYTES))]);
    const img = await openImage(path, { workDir: dir, lazyChunks: true });
    const src = img.pages('p');
    for (let off = 0; off < data.length;) { const v = src.view(off, data.length - off); assert.deepEqual(v, data.subarray(off, off + v.length)); off += v.length; }
    src.finish();
    await img.close();
    // Any other image is still version 5.
    const plain = await writeImage(join(dir, 'plain.img'), header, [{ name: 'p', size: 4096, chunked: true, produce: async (sink) => { await sink(data.subarray(0, 4096)); } }]);
    assert.equal(plain.manifest.formatVersion, 5);
  });

  it('takes a paged entry\'s chunk digests from pages read and pages held alike, across batches of chunks (omitHeld, a stream)', async () => {
    // 130 chunks and 3 pages: more than one batch of chunk digests (writer.ts PAGED_BATCH),
    // the last chunk short; most pages named only by digest (held), some read (sink).
    const pages = 130 * (PAGED_CHUNK_BYTES / 4096) + 3;
    const pageSum = (b: Buffer): Buffer => createHash('sha256').update(b).digest();
    const read = (i: number): boolean => i % 97 === 0 || i === pages - 1;
    const page = (i: number): Buffer => Buffer.alloc(4096, i % 251);
    const heldSum = (i: number): Buffer => createHash('sha256').update(`page ${i}`).digest();
    const sums = Array.from({ length: pages }, (_, i) => (read(i) ? pageSum(page(i)) : heldSum(i)));
    const perChunk = PAGED_CHUNK_BYTES / 4096;
    const want = Array.from({ length: Math.ceil(pages / perChunk) }, (_, c) =>
      createHash('sha256').update(Buffer.concat(sums.slice(c * perChunk, (c + 1) * perChunk))).digest('hex'));
    const fifo = join(dir, 'paged-held.fifo');
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
    // The stream's reader, a process of its own (the writer's writes may take every thread of
    // libuv's pool): drains it; what it holds is not a tar until held pages are put back.
    const reader = spawn('wc', ['-c', fifo], { stdio: ['ignore', 'pipe', 'inherit'] });
    const drain = new Promise<number>((resolve, reject) => {
      let out = '';
      reader.stdout.on('data', (d: Buffer) => { out += d.toString(); });
      reader.on('error', reject).on('close', () => resolve(parseInt(out, 10)));
    });
    const { manifest } = await writeImage(fifo, header, [{
      name: 'p', size: pages * 4096, chunked: true, paged: true,
      produce: async (sink, held) => {
        assert.ok(held, 'a paged entry of a stream with omitHeld gets held');
        for (let i = 0; i < pages;) {
          let j = i + 1;
          while (j < pages && read(j) === read(i)) j++;
          if (read(i)) await sink(Buffer.concat(Array.from({ length: j - i }, (_, k) => page(i + k))));
          else await held(Buffer.concat(sums.slice(i, j)));
          i = j;
        }
      },
    }], { omitHeld: true });
    assert.ok(await drain > 0);
    const e = manifest.entries[0] as ChunkedEntry;
    assert.equal(e.pageDigests, true);
    assert.equal(e.chunks.length, 131);
    assert.deepEqual(e.chunks, want);
  });

  it('takes the digest a held set knows of a whole chunk of held pages as it is, asking only at chunk boundaries (omitHeld, a stream)', async () => {
    // 3 chunks and 10 pages; the first 10 read, the rest held in one run. The held set knows
    // chunk 1's digest (a stand-in, to see it taken as it is) and chunk 2's (the true one);
    // chunk 0 mixes read and held pages, chunk 3 is short: both hashed from the pages' digests.
    const perChunk = PAGED_CHUNK_BYTES / 4096;
    const pages = 3 * perChunk + 10;
    const page = (i: number): Buffer => Buffer.alloc(4096, i % 251);
    const pageSum = (b: Buffer): Buffer => createHash('sha256').update(b).digest();
    const heldSum = (i: number): Buffer => createHash('sha256').update(`page ${i}`).digest();
    const sums = Array.from({ length: pages }, (_, i) => (i < 10 ? pageSum(page(i)) : heldSum(i)));
    const want = (c: number): string => createHash('sha256').update(Buffer.concat(sums.slice(c * perChunk, (c + 1) * perChunk))).digest('hex');
    const standIn = 'ab'.repeat(32);
    const asked: number[] = [];
    const fifo = join(dir, 'paged-known.fifo');
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
    const reader = spawn('wc', ['-c', fifo], { stdio: ['ignore', 'pipe', 'inherit'] });
    const drained = new Promise<void>((resolve, reject) => { reader.on('error', reject).on('close', () => resolve()); });
    const { manifest } = await writeImage(fifo, header, [{
      name: 'p', size: pages * 4096, chunked: true, paged: true,
      produce: async (sink, held) => {
        await sink(Buffer.concat(Array.from({ length: 10 }, (_, i) => page(i))));
        const given: HeldDigests = {
          pages: pages - 10,
          copy: (from, n, out, at) => { Buffer.concat(sums.slice(10 + from, 10 + from + n)).copy(out, at); },
          chunkDigest: (from, n) => {
            asked.push(from);
            assert.equal(n, perChunk);
            const c = (10 + from) / perChunk;
            return c === 1 ? standIn : c === 2 ? want(2) : undefined;
          },
        };
        await held!(given);
      },
    }], { omitHeld: true });
    await drained;
    assert.deepEqual(asked, [perChunk - 10, 2 * perChunk - 10]);
    assert.deepEqual((manifest.entries[0] as ChunkedEntry).chunks, [want(0), standIn, want(2), want(3)]);
  });

  it('streams a paged entry\'s pages read as the first pass hashed them, without running its producer again (omitHeld)', async () => {
    // A producer that reuses one buffer (as memory.ts does) and would produce other bytes if
    // run again: the stream must carry the bytes the manifest's digests were taken of. Read
    // pages: one every 7; the rest held. Then the same above the bound of what the first
    // pass keeps (writer.ts KEPT_MAX_BYTES, 32 MiB): the producer runs again, as before.
    const run = async (pages: number, read: (i: number) => boolean): Promise<{ calls: number; tail: Buffer; want: Buffer; chunks: string[]; sums: string[] }> => {
      let calls = 0;
      const buf = Buffer.alloc(64 * 4096);
      const fill = (i: number, call: number): Buffer => Buffer.alloc(4096, (i * 7 + call * 101) % 251);
      const heldSum = (i: number): Buffer => createHash('sha256').update(`page ${i}`).digest();
      const fifo = join(dir, `kept-${pages}.fifo`);
      const copy = join(dir, `kept-${pages}.out`);
      assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
      const reader = spawn('sh', ['-c', 'cat "$1" > "$2"', 'sh', fifo, copy], { stdio: 'ignore' });
      const drained = new Promise<void>((resolve, reject) => { reader.on('error', reject).on('close', () => resolve()); });
      const { manifest } = await writeImage(fifo, header, [{
        name: 'p', size: pages * 4096, chunked: true, paged: true,
        produce: async (sink, held) => {
          const call = calls++;
          for (let i = 0; i < pages;) {
            let j = i + 1;
            while (j < pages && j - i < 64 && read(j) === read(i)) j++;
            if (read(i)) {
              for (let k = i; k < j; k++) fill(k, call).copy(buf, (k - i) * 4096);
              await sink(buf.subarray(0, (j - i) * 4096));
            } else {
              await held!(Buffer.concat(Array.from({ length: j - i }, (_, k) => heldSum(i + k))));
            }
            i = j;
          }
        },
      }], { omitHeld: true });
      await drained;
      const out = readFileSync(copy);
      const readPages = Array.from({ length: pages }, (_, i) => i).filter(read);
      const want = Buffer.concat(readPages.map((i) => fill(i, 0)));
      const perChunk = PAGED_CHUNK_BYTES / 4096;
      const sums = Array.from({ length: Math.ceil(pages / perChunk) }, (_, c) => createHash('sha256').update(Buffer.concat(
        Array.from({ length: Math.min(perChunk, pages - c * perChunk) }, (_, k) => c * perChunk + k)
          .map((i) => (read(i) ? createHash('sha256').update(fill(i, 0)).digest() : heldSum(i))))).digest('hex'));
      // The entry is the last: its bytes (held pages left out, no padding: whole pages) end
      // before the tar's two zero blocks.
      return { calls, tail: out.subarray(out.length - 1024 - want.length, out.length - 1024), want, chunks: (manifest.entries[0] as ChunkedEntry).chunks, sums };
    };
    const small = await run(2 * (PAGED_CHUNK_BYTES / 4096) + 5, (i) => i % 7 === 0);
    assert.equal(small.calls, 1, 'the producer runs once');
    assert.deepEqual(small.chunks, small.sums, 'the manifest\'s digests are of the first pass\'s bytes');
    assert.ok(small.tail.equals(small.want), 'the stream carries the first pass\'s bytes');
    const big = await run(33 * 256, (i) => i % 256 !== 0);
    assert.equal(big.calls, 2, 'above the bound the producer runs again');
    assert.deepEqual(big.chunks, big.sums);
  });

  it('takes required features it knows (version 7 on), refuses in one line one it does not know', () => {
    assert.equal(FORMAT_VERSION, 7);
    const v7 = (requires: unknown): Record<string, unknown> => ({ ...good(), formatVersion: 7, requires });
    assert.deepEqual(parse(v7(['thread-fs', 'removed-root'])).requires, ['thread-fs', 'removed-root']);
    assert.equal(parse({ ...good(), formatVersion: 7 }).requires, undefined, 'none required');
    // What a newer ferry may write: a feature this one does not know restores as something else.
    const unknown = (): Manifest => parse({ ...v7(['thread-fs', 'proc-file-target']), ferryVersion: '9.9.9' });
    assert.throws(unknown, (err: Error & { code?: string }) => {
      assert.equal(err.code, 'EFORMAT');
      assert.equal(err.message, 'manifest field requires names "proc-file-target" (written by ferry "9.9.9"), a feature this ferry does not know '
        + 'and would restore as something else: restore the image with the ferry version that wrote it, or a newer one');
      return true;
    });
    assert.throws(() => parse({ ...good(), formatVersion: 6, requires: ['thread-fs'] }), /manifest field requires may only be in an image of version 7 or later/);
    assert.throws(() => parse(v7([])), /requires must be a list of 1 to 256 feature names/);
    assert.throws(() => parse(v7('thread-fs')), /requires must be a list/);
    assert.throws(() => parse(v7(['thread-fs', 'thread-fs'])), /lists a feature twice/);
    assert.throws(() => parse(v7(['Thread_FS'])), /requires\[0\] is "Thread_FS", must be a feature name/);
    assert.throws(() => parse(v7(Array.from({ length: 257 }, (_, i) => `f${i}`))), /1 to 256/);
  });

  it('writes version 7 and the required features only when the image requires some', async () => {
    const entry = (): ImageEntry[] => [{ name: 'x', size: 1, produce: async (sink) => { await sink(Buffer.from('x')); } }];
    const req = await writeImage(join(dir, 'req.img'), { ...header, requires: ['removed-root'] }, entry());
    assert.equal(req.manifest.formatVersion, 7);
    assert.deepEqual(req.manifest.requires, ['removed-root']);
    const img = await openImage(join(dir, 'req.img'), { workDir: dir });
    assert.deepEqual(img.manifest.requires, ['removed-root'], 'read back');
    await img.close();
    const none = await writeImage(join(dir, 'none.img'), { ...header, requires: [] }, entry());
    assert.equal(none.manifest.formatVersion, 5);
    assert.equal('requires' in none.manifest, false);
  });

  it('finds each feature an image uses in its records, and none in a plain one', () => {
    const task = (extra: Record<string, unknown> = {}, thread: Record<string, unknown> = {}): TaskRecord =>
      ({ pid: 10, threads: [{ tid: 10 }, { tid: 11, ...thread }], vmas: [{ vmflags: ['ac'] }], fds: [], ...extra }) as unknown as TaskRecord;
    const tree: TreeRecord = { root: 10, processes: [{ pid: 10, ppid: 1, pgid: 10, sid: 10, zombie: null }] } as TreeRecord;
    const probe = (p: Partial<FeatureProbe>): FeatureProbe => ({ tree, tasks: [task()], files: [], extra: new Map(), ...p });
    assert.deepEqual(requiredFeatures(probe({})), []);
    const cases: Array<[string, FeatureProbe]> = [
      ['thread-fs', probe({ tasks: [task({}, { fs: { cwd: '/', umask: 18 } })] })],
      ['removed-root', probe({ tasks: [task({ root: '/jail', rootDeleted: { mode: 0o755, uid: 0, gid: 0 } })] })],
      ['shared-may-write', probe({ tasks: [task({ vmas: [{ vmflags: ['mw'] }] })] })],
      ['removed-device', probe({ files: [{ id: 1, kind: 'chr', removed: { mode: 0o600, uid: 0, gid: 0 } } as FileRecord] })],
      ['tty-exclusive', probe({ files: [{ id: 1, kind: 'tty', exclusive: true } as FileRecord] })],
      ['leaderless-group', probe({ tree: { root: 10, processes: [...tree.processes, { pid: 12, ppid: 10, pgid: 11, sid: 10, zombie: null }] } as TreeRecord })],
      ['proc-thread-file', probe({ files: [{ id: 1, kind: 'procfile', target: 10, thread: 11 } as FileRecord] })],
      ['tty-input-lines', probe({ files: [{ id: 1, kind: 'tty', inputLines: [{ length: 3, eof: false }] } as FileRecord] })],
      ['tty-unheld-foreground', probe({
        tree: { root: 10, processes: [...tree.processes, { pid: 12, ppid: 10, pgid: 12, sid: 10, zombie: null }] } as TreeRecord,
        files: [{ id: 1, kind: 'tty', ctty: { session: 10, foreground: 12 } } as FileRecord],
      })],
      ['thread-fds', probe({ tasks: [task({}, { fds: [{ fd: 3, file: 1, cloexec: false }] })] })],
      ['zombie-name', probe({ tree: { root: 10, processes: [...tree.processes, { pid: 11, ppid: 10, pgid: 10, sid: 10, zombie: { status: 0, comm: 'z' } }] } as TreeRecord })],
      ['thp-except-advised', probe({ tasks: [task({ thpDisabled: true, thpExceptAdvised: true })] })],
      // No process is in group 12 any more: the terminal's foreground is that group, empty (an
      // unheld terminal's foreground too).
      ['tty-empty-foreground', probe({ files: [{ id: 1, kind: 'tty', ctty: { session: 10, foreground: 12 } } as FileRecord] })],
      ['lent-through-ancestor', probe({ tasks: [task({ vmas: [{ vmflags: ['ac'], lent: [[0, 1]], lentThrough: 2 }] })] })],
      ['thread-removed-cwd', probe({ tasks: [task({}, { fs: { cwd: '/gone', umask: 18, cwdDeleted: { mode: 0o755, uid: 0, gid: 0, dev: '8', ino: '5' } } })] })],
      ['removed-exe', probe({ tasks: [task({ exe: '/usr/sbin/d (deleted)', exeGhost: '8:5', vmas: [{ vmflags: [], ghost: '8:5' }] })] })],
      ['guard-pages', probe({ tasks: [task({ vmas: [{ vmflags: ['ac'], guards: [[4, 4]] }] })] })],
    ];
    assert.deepEqual(cases.map(([n]) => n), FEATURES.map((f) => f.name), 'every feature has a case');
    for (const [name, p] of cases) {
      const also = name === 'tty-empty-foreground' ? ['tty-unheld-foreground'] : name === 'thread-removed-cwd' ? ['thread-fs'] : [];
      assert.deepEqual(requiredFeatures(p), [...also, name], name);
    }
    // A terminal a descriptor holds sets its foreground group as every older reader does.
    const held = task({ fds: [{ fd: 0, file: 1, cloexec: false }] });
    assert.deepEqual(requiredFeatures(probe({ tasks: [held], files: [{ id: 1, kind: 'tty', ctty: { session: 10, foreground: 12 } } as FileRecord] })), []);
    // A group led from outside the tree (not a session it leads) is no leaderless group.
    assert.deepEqual(requiredFeatures(probe({ tree: { root: 10, processes: [{ pid: 10, ppid: 1, pgid: 5, sid: 5, zombie: null }] } as TreeRecord })), []);
    // Pages inherited through a parent that maps nothing there (from the grandparent, the
    // parent relaying them) need lent-through-ancestor too; through a parent holding the area
    // for its children's lent pages (siblings), or from a parent mapping it, nothing.
    const at = (pid: number, vmas: Array<Record<string, unknown>>): TaskRecord => task({ pid, vmas: vmas.map((v) => ({ start: '0x1000', vmflags: ['ac'], ...v })) });
    const line = (...ppids: Array<[number, number]>): TreeRecord =>
      ({ root: 10, processes: ppids.map(([pid, ppid]) => ({ pid, ppid, pgid: 10, sid: 10, zombie: null })) }) as TreeRecord;
    assert.deepEqual(requiredFeatures(probe({ tree: line([10, 1], [11, 10], [12, 11]), tasks: [at(10, [{}]), at(11, []), at(12, [{ cow: [[0, 1]] }])] })),
      ['lent-through-ancestor']);
    assert.deepEqual(requiredFeatures(probe({ tree: line([10, 1], [11, 10], [12, 10]), tasks: [at(10, []), at(11, [{ lent: [[0, 1]] }]), at(12, [{ cow: [[0, 1]] }])] })), []);
    assert.deepEqual(requiredFeatures(probe({ tree: line([10, 1], [11, 10]), tasks: [at(10, [{}]), at(11, [{ cow: [[0, 1]] }])] })), []);
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

describe('a pageDigests chunk checked with known page digests (a page store\'s)', () => {
  // Pages 0-7: 0 and 7 from the image itself (no digests), 1-6 from a store piece carrying them.
  const data = Buffer.alloc(8 * 4096);
  for (let p = 0; p < 8; p++) data.fill(p + 1, p * 4096, (p + 1) * 4096);
  const sums = pageDigests(data);
  const pieces = (digests: Uint8Array | undefined): ImagePiece[] => [
    { fd: 3, at: 0, len: 4096 }, { fd: 4, at: 40960, len: 6 * 4096, ...(digests !== undefined ? { digests } : {}) }, { fd: 3, at: 4096, len: 4096 }];
  const check = (p: readonly ImagePiece[]): { any: boolean; sum: Buffer } => {
    const flags = new Uint8Array(8), digests = new Uint8Array(8 * 32);
    const any = knownDigests(p, flags, digests);
    return { any, sum: chunkDigestKnown(data, flags, digests) };
  };

  it('takes the digests the pieces carry, and hashes only the other pages', () => {
    const right = check(pieces(sums.subarray(32, 7 * 32)));
    assert.equal(right.any, true);
    assert.ok(right.sum.equals(chunkDigest(data, true)), 'the same chunk digest as hashing every page');
    // A wrong known digest changes the result: it was used, not hashed again.
    const wrong = Buffer.from(sums.subarray(32, 7 * 32));
    wrong[40] = (wrong[40]! + 1) & 0xff;
    assert.ok(!check(pieces(wrong)).sum.equals(chunkDigest(data, true)), 'a known digest is taken as given');
  });

  it('takes none from a piece that is not whole pages on a page boundary, or whose digests are not its pages\' count', () => {
    const short = check(pieces(sums.subarray(32, 6 * 32)));
    assert.equal(short.any, false);
    const odd: ImagePiece[] = [{ fd: 3, at: 0, len: 100 }, { fd: 4, at: 0, len: 4096, digests: sums.subarray(0, 32) }, { fd: 3, at: 100, len: 7 * 4096 - 100 }];
    const flags = new Uint8Array(8);
    assert.equal(knownDigests(odd, flags, new Uint8Array(8 * 32)), false, 'a piece starting inside a page');
    assert.deepEqual([...flags], [0, 0, 0, 0, 0, 0, 0, 0]);
    assert.ok(check(pieces(undefined)).sum.equals(chunkDigest(data, true)));
  });
});
