/**
 * `ferry keygen`: makes an Ed25519 key pair to sign images with (checkpoint --sign-key) and
 * to trust them by (restore --trust): PREFIX.key (PKCS#8 PEM, mode 0600) and PREFIX.pub (SPKI
 * PEM). Neither file may exist yet: a key is never overwritten.
 */
import { closeSync, fsyncSync, lstatSync, openSync, rmSync, writeSync } from 'node:fs';
import { FerryError, describeCause } from '../errors.js';
import { generateSigningKey } from '../image/sign.js';
import type { KeygenCliOptions } from './args.js';
import type { RunContext } from './context.js';
import { printLine } from './output.js';

/** What `ferry keygen` made (its --json form). */
export interface KeygenResult {
  /** The key's fingerprint, `SHA256:…`: what restore and inspect name a signer by. */
  keyId: string;
  /** The private key file, PREFIX.key. */
  privateKey: string;
  /** The public key file, PREFIX.pub. */
  publicKey: string;
}

/** Creates `path` (which must not exist) with `text` and `mode`, flushed to disk. */
function createFile(path: string, text: string, mode: number): void {
  let fd: number;
  try {
    // O_EXCL: never overwrite a key, and never follow a symlink planted in its place.
    fd = openSync(path, 'wx', mode);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'EEXIST' ? 'it already exists (ferry never overwrites a key: choose another --out, or remove it)'
      : code === 'ENOENT' ? 'no such directory' : describeCause(err);
    throw new FerryError('EKEY', `cannot create ${path}: ${why}`, { cause: err, path });
  }
  try {
    const buf = Buffer.from(text);
    for (let off = 0; off < buf.length;) off += writeSync(fd, buf, off, buf.length - off);
    fsyncSync(fd);
  } catch (err) {
    closeSync(fd);
    rmSync(path, { force: true });
    throw new FerryError('EKEY', `cannot write ${path}: ${describeCause(err)}`, { cause: err, path });
  }
  closeSync(fd);
}

/** Whether anything (a file, a dangling symlink) is at `path`. */
function exists(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Writes a new key pair to `o.out`.key and `o.out`.pub and prints its fingerprint. */
export function runKeygen(o: KeygenCliOptions, ctx: RunContext): void {
  const result: KeygenResult = { keyId: '', privateKey: `${o.out}.key`, publicKey: `${o.out}.pub` };
  // Both are checked first, so a refusal leaves nothing behind.
  for (const path of [result.privateKey, result.publicKey]) {
    if (exists(path)) {
      throw new FerryError('EKEY', `cannot create ${path}: it already exists (ferry never overwrites a key: choose another --out, or remove it)`, { path });
    }
  }
  const key = generateSigningKey();
  result.keyId = key.keyId;
  // The umask may only take bits away: 0600 stays at most 0600.
  createFile(result.privateKey, key.privatePem, 0o600);
  try {
    createFile(result.publicKey, key.publicPem, 0o644);
  } catch (err) {
    rmSync(result.privateKey, { force: true });
    throw err;
  }
  ctx.logger.info({ keyId: key.keyId, privateKey: result.privateKey, publicKey: result.publicKey }, 'key pair made');
  printLine(1, o.json ? JSON.stringify(result)
    : `made key ${key.keyId}: private ${result.privateKey} (mode 0600, for --sign-key), public ${result.publicKey} (for --trust)`);
}
