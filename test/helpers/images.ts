/** Images edited by hand, as an attacker or a careless hand would: for tests of bad input. */
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import tar from 'tar-stream';

/**
 * Writes a copy of the image `src` to `dst` with some JSON entries edited by hand: `edits`
 * maps an entry name to a function from its text to the new text. The manifest's sizes and
 * sha256 are brought up to date before its own edit (if any), as a careful hand would, so the
 * edited records themselves are what restore and inspect meet.
 */
export async function editImage(src: string, dst: string, edits: Record<string, (text: string) => string>): Promise<void> {
  const entries: Array<{ name: string; body: Buffer }> = [];
  const extract = tar.extract();
  await new Promise<void>((resolve, reject) => {
    extract.on('entry', (header, stream, next) => {
      const parts: Buffer[] = [];
      stream.on('data', (c: unknown) => parts.push(c as Buffer));
      stream.on('end', () => {
        entries.push({ name: header.name, body: Buffer.concat(parts) });
        next();
      });
    });
    extract.on('finish', resolve);
    extract.on('error', reject);
    extract.end(readFileSync(src));
  });
  for (const e of entries.slice(1)) {
    const edit = edits[e.name];
    if (edit) e.body = Buffer.from(edit(e.body.toString()));
  }
  const manifest = JSON.parse(entries[0]!.body.toString()) as { entries: Array<{ name: string; size: number; sha256: string }> };
  manifest.entries = entries.slice(1).map((e) => ({ name: e.name, size: e.body.length, sha256: createHash('sha256').update(e.body).digest('hex') }));
  const text = JSON.stringify(manifest);
  entries[0]!.body = Buffer.from(edits['manifest.json']?.(text) ?? text);
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: unknown) => chunks.push(c as Buffer));
  const done = new Promise<void>((resolve) => pack.on('end', () => resolve()));
  for (const e of entries) {
    await new Promise<void>((resolve, reject) => pack.entry({ name: e.name, size: e.body.length }, e.body, (err) => (err ? reject(err) : resolve())));
  }
  pack.finalize();
  await done;
  writeFileSync(dst, Buffer.concat(chunks));
}

/** A JSON edit: `change` gets the parsed record and changes it in place. */
export const json = (change: (v: Record<string, any>) => void) => (text: string): string => { // eslint-disable-line @typescript-eslint/no-explicit-any
  const v = JSON.parse(text) as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
  change(v);
  return JSON.stringify(v);
};

