/**
 * The host key (docs/security.md, "Images this machine made"): an Ed25519 key of this machine
 * that signs every image a checkpoint writes when no other key is given, so a restore here
 * can tell an image this machine made, unchanged, from any other.
 *
 * An image is trusted when a key the restore trusts signed it: the host key always, and the
 * keys of `--trust` / `image.trust`. A trusted image restores with the credentials it holds;
 * any other plain restore is held to the untrusted default (restore/bounds.ts,
 * `untrustedBound`) unless `--max-creds` gives a bound. Whoever can read the host key can
 * make images this machine trusts, so it must be root's alone: a regular file owned by root,
 * with no access for group or others, in a directory owned by root that no one else can
 * write. A host key that is not is refused, never used.
 *
 * The key is made by the first checkpoint that needs it (`image.host_key`, default
 * /var/lib/ferry/host.key; "" = none), written to a temporary file and linked into place, so
 * two checkpoints starting at once end up with the same key. A restore never makes one.
 */
import { createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto';
import { closeSync, constants, fstatSync, fsyncSync, linkSync, lstatSync, mkdirSync, openSync, readSync, unlinkSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { FerryError, describeCause } from '../errors.js';
import { fingerprint, newEd25519Key, type KeyId } from './sign.js';

/** Largest host key file read (a PEM Ed25519 key is 119 bytes). */
const MAX_KEY_FILE = 4096;

/** Where a host key may live: owned by root, writable by no one else. */
function checkDir(dir: string): void {
  let st;
  try {
    st = lstatSync(dir);
  } catch (err) {
    throw new FerryError('EKEY', `host key directory ${dir}: ${describeCause(err)}`, { cause: err, path: dir });
  }
  if (!st.isDirectory()) throw new FerryError('EKEY', `host key directory ${dir} is not a directory: fix image.host_key`, { path: dir });
  if (st.uid !== 0 || (st.mode & 0o022) !== 0) {
    throw new FerryError('EKEY', `host key directory ${dir} is owned by uid ${st.uid} with mode ${(st.mode & 0o7777).toString(8)}: `
      + 'it must be root\'s and writable by no one else (chown root, chmod go-w)', { path: dir });
  }
}

/**
 * Reads the host key at `path` (opened without following a symlink), or undefined when there
 * is none. FerryError 'EKEY' naming the file when it is not root's alone or not an Ed25519
 * private key in PEM.
 */
function readHostKey(path: string): KeyObject | undefined {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    const why = code === 'ELOOP' ? 'it is a symbolic link' : describeCause(err);
    throw new FerryError('EKEY', `cannot read host key ${path}: ${why} (fix or remove it; a checkpoint makes a new one)`, { cause: err, path });
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || st.uid !== 0 || (st.mode & 0o077) !== 0 || st.size > MAX_KEY_FILE) {
      throw new FerryError('EKEY', `host key ${path} must be a small regular file of root's with mode 600 `
        + `(it is uid ${st.uid}, mode ${(st.mode & 0o7777).toString(8)}, ${st.size} bytes): fix or remove it`, { path });
    }
    const buf = Buffer.alloc(st.size);
    let got = 0;
    while (got < buf.length) {
      const n = readSync(fd, buf, got, buf.length - got, got);
      if (n === 0) break;
      got += n;
    }
    let key: KeyObject;
    try {
      key = createPrivateKey({ key: buf.subarray(0, got), format: 'pem' });
    } catch (err) {
      throw new FerryError('EKEY', `host key ${path} is not a private key in PEM: remove it, and a checkpoint makes a new one`, { cause: err, path });
    }
    if (key.asymmetricKeyType !== 'ed25519') {
      throw new FerryError('EKEY', `host key ${path} is an ${key.asymmetricKeyType ?? 'unknown'} key, not Ed25519: remove it, and a checkpoint makes a new one`, { path });
    }
    return key;
  } finally {
    closeSync(fd);
  }
}

/**
 * The host key to sign with, made if there is none yet (`path` from image.host_key; ""
 * gives undefined). The directory is made root-only when missing.
 */
export function hostSigningKey(path: string): KeyObject | undefined {
  if (path === '') return undefined;
  const dir = dirname(path);
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new FerryError('EKEY', `cannot make host key directory ${dir}: ${describeCause(err)}`, { cause: err, path: dir });
  }
  checkDir(dir);
  const have = readHostKey(path);
  if (have) return have;
  const pem = newEd25519Key().export({ format: 'pem', type: 'pkcs8' }) as string;
  const tmp = `${path}.${process.pid}.tmp`;
  try {
    const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    try {
      writeSync(fd, pem);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    try {
      linkSync(tmp, path); // never replaces: a key made meanwhile by another checkpoint wins
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  } catch (err) {
    throw new FerryError('EKEY', `cannot make host key ${path}: ${describeCause(err)}`, { cause: err, path });
  } finally {
    try { unlinkSync(tmp); } catch { /* not made */ }
  }
  const key = readHostKey(path);
  if (!key) throw new FerryError('EKEY', `host key ${path} vanished while it was made: try again`, { path });
  return key;
}

/** The public half of a host key and its fingerprint. */
export interface HostPublicKey { keyId: KeyId; key: KeyObject }

/**
 * The public half of the host key at `path` and its fingerprint, if this machine has one (a
 * restore never makes one); undefined for "" or none. A host key that is not root's alone
 * fails (EKEY).
 */
export function hostPublicKey(path: string): HostPublicKey | undefined {
  if (path === '') return undefined;
  const key = readHostKey(path);
  if (!key) return undefined;
  checkDir(dirname(path));
  return { keyId: fingerprint(key), key: createPublicKey(key) };
}
