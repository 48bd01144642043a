/** Images edited by hand, as an attacker or a careless hand would: for tests of bad input. */
import { createHash, type KeyObject } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import tar from 'tar-stream';
import { imageSigner, SIGNATURE_NAME } from '../../src/image/sign.js';

/** An edit of one entry: its text in, the new text out. */
export type Edit = (text: string) => string;

/**
 * Which entries to edit, and how: an object maps an entry's exact name to its edit; a list of
 * [name or pattern, edit] pairs also edits every entry whose name the pattern matches.
 */
export type Edits = Readonly<Record<string, Edit>> | ReadonlyArray<readonly [string | RegExp, Edit]>;

/**
 * Writes a copy of the image `src` to `dst` with some entries edited by hand (see Edits). The
 * manifest's sizes and sha256 are brought up to date before its own edit (if any), as a careful
 * hand would, so the edited records themselves are what restore and inspect meet. An edit that
 * matches no entry is an error: a test that edits nothing tests nothing. The copy is unsigned
 * (manifest.sig is dropped: only the key's holder could sign the edit) unless `opts.signKey`
 * signs it with that key (an image edited by a key's holder, or before it was signed).
 * Returns the names of the entries edited. `opts.drop` names entries to leave out.
 */
export async function editImage(src: string, dst: string, edits: Edits,
  opts: { drop?: readonly string[]; signKey?: KeyObject } = {}): Promise<string[]> {
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
  // A hand cannot sign again: the edited image is unsigned (it never carries the old
  // signature, which no longer matches), so restore holds it to the untrusted default bound
  // unless the test gives --max-creds (docs/security.md).
  const signed = entries.findIndex((e) => e.name === 'manifest.sig');
  if (signed >= 0) entries.splice(signed, 1);
  // Entries left out (`opts.drop`), as an image of an older version that had none would be.
  for (const name of opts.drop ?? []) {
    const at = entries.findIndex((e) => e.name === name);
    if (at < 1) throw new Error(`image ${src} has no entry ${name} to drop`);
    entries.splice(at, 1);
  }
  const rules = Array.isArray(edits) ? edits as ReadonlyArray<readonly [string | RegExp, Edit]> : Object.entries(edits);
  const matches = (rule: string | RegExp, name: string): boolean => (typeof rule === 'string' ? rule === name : rule.test(name));
  for (const [rule] of rules) {
    if (!entries.some((e) => matches(rule, e.name))) throw new Error(`image ${src} has no entry ${String(rule)} to edit`);
  }
  const edited: string[] = [];
  /** `e` with every matching edit applied to `text` (its body, or the manifest recomputed). */
  const apply = (e: { name: string; body: Buffer }, text?: string): Buffer => {
    const mine = rules.filter(([rule]) => matches(rule, e.name));
    if (mine.length === 0) return text === undefined ? e.body : Buffer.from(text); // binary entries stay as they are
    let body = text !== undefined ? Buffer.from(text) : e.body;
    for (const [, edit] of mine) {
      const raw = (edit as Edit & { bytes?: (b: Buffer) => Buffer }).bytes;
      body = raw !== undefined ? raw(body) : Buffer.from(edit(body.toString()));
    }
    edited.push(e.name);
    return body;
  };
  for (const e of entries.slice(1)) e.body = apply(e);
  const manifest = JSON.parse(entries[0]!.body.toString()) as { entries: Array<{ name: string; size: number; sha256: string }> };
  manifest.entries = entries.slice(1).map((e) => ({ name: e.name, size: e.body.length, sha256: createHash('sha256').update(e.body).digest('hex') }));
  entries[0]!.body = apply(entries[0]!, JSON.stringify(manifest));
  if (opts.signKey !== undefined) entries.splice(1, 0, { name: SIGNATURE_NAME, body: imageSigner(opts.signKey).sign(entries[0]!.body) });
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
  return edited;
}

/** A JSON edit: `change` gets the parsed record (typed as T) and changes it in place. */
export const json = <T = Record<string, any>>(change: (v: T) => void) => (text: string): string => { // eslint-disable-line @typescript-eslint/no-explicit-any
  const v = JSON.parse(text) as T;
  change(v);
  return JSON.stringify(v);
};

/** A binary edit (an entry that is not text): `change` gets the bytes and returns the new ones. */
export const bytes = (change: (b: Buffer) => Buffer): Edit => Object.assign((text: string): string => text, { bytes: change });
